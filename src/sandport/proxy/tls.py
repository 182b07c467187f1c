"""TLS on the edge: one certificate chain and key (PEM), for every host the edge serves,
so a wildcard for the sandbox hosts' domain (``*.sandbox.example.com`` covers its ``api.``
and every ``{port}-{id}.`` host). ALPN offers HTTP/1.1 only: the edge speaks that, and
clients that prefer HTTP/2 (the e2b SDK's) fall back to it.

``reload`` (on SIGHUP) reads the files again into a scratch context first, so a renewed
certificate takes effect for new handshakes and a broken one leaves the served one as it
was.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import ValidationFailed


class EdgeTLS:
    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.context = self._loaded()

    def _loaded(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        try:
            context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            raise ValidationFailed(f"tls: {self.cert} and {self.key} are not a certificate "
                                   f"chain and its key in PEM ({exc.reason or exc})") from None
        except OSError as exc:
            raise ValidationFailed(f"tls: cannot read {exc.filename}: {exc.strerror}") from None
        return context

    def reload(self) -> None:
        """The files again, for new handshakes; raises ValidationFailed (and keeps what is
        served) if they do not load."""
        self._loaded()
        self.context.load_cert_chain(self.cert, self.key)
