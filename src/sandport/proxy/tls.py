"""TLS on the edge: one certificate chain and key (PEM), for every host the edge serves,
so a wildcard for the sandbox hosts' domain (``*.sandbox.example.com`` covers its ``api.``
and every ``{port}-{id}.`` host). ALPN offers HTTP/1.1 only: the edge speaks that, and
clients that prefer HTTP/2 (the e2b SDK's) fall back to it.

The listening context hands every handshake to the newest loaded context (its SNI
callback, which OpenSSL calls with or without a server name), so ``reload`` (on SIGHUP)
loads the files into a new context and only then makes it the one served: a renewed
certificate takes effect for new handshakes, and one that does not load leaves the served
one as it was. An encrypted key is refused, never prompted for.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import ValidationFailed


class EdgeTLS:
    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.current = self._loaded()  # what handshakes are served with
        self.context = self._loaded()  # the listening one: hands each to ``current``
        self.context.sni_callback = self._serve_current

    def _serve_current(self, ssl_object: ssl.SSLObject, name: str | None,
                       context: ssl.SSLContext) -> None:
        ssl_object.context = self.current

    def _loaded(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_RENEGOTIATION  # (TLS 1.2's CPU-costly renegotiation)
        context.set_alpn_protocols(["http/1.1"])
        try:
            context.load_cert_chain(self.cert, self.key, password=_no_password)
        except ssl.SSLError as exc:
            raise ValidationFailed(f"tls: {self.cert} and {self.key} are not a certificate "
                                   f"chain and its key in PEM ({exc.reason or exc})") from None
        except OSError as exc:
            raise ValidationFailed(f"tls: cannot read {exc.filename}: {exc.strerror}") from None
        return context

    def reload(self) -> None:
        """The files again, for new handshakes; raises ValidationFailed (and keeps what is
        served) if they do not load."""
        self.current = self._loaded()


def _no_password() -> bytes:
    raise ValidationFailed("the key is encrypted: give an unencrypted key (readable by "
                           "root only)")
