"""Public URLs (pure): build them from the template and read them back from a request.

A template such as ``http://{port}-{id}.localhost:8080`` names one host per (sandbox,
port). The host form is matched on the hostname only, so the proxy may sit behind a TLS
terminator on another port. Path forms on the runtime host (``/p/{port}/...`` and
``/sb/p/{port}/...``) reach the same ports for clients that cannot choose a Host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urlsplit

from ..errors import ValidationFailed

RUNTIME_PORT = 4001  # the runtime API's host; never a sandbox port
# Set by the proxy, and only by it, on requests it maps from a sandbox's runtime host to
# the internal ``/runtime/<id>/...`` routes; its value is the sandbox id. The app refuses
# ``/runtime/`` requests without it (server/app.py), so no spelling of that path on the
# control host reaches them.
RUNTIME_HEADER = b"x-sandport-runtime"
ENVD_PORT = 49983  # the E2B face's in-sandbox API (envd's port on E2B); never a sandbox port
# As RUNTIME_HEADER, for ``/envd/<id>/...`` (e2b/envd.py).
ENVD_HEADER = b"x-sandport-envd"
_PATH_ROUTE = re.compile(rb"^(?:/sb)?/p/([0-9]{1,5})(?=/|\?|$)")


@dataclass(frozen=True, slots=True)
class PublicUrls:
    scheme: str
    netloc: str  # with {port} and {id}, e.g. "{port}-{id}.localhost:8080"
    pattern: re.Pattern[str]

    @classmethod
    def parse(cls, template: str) -> PublicUrls:
        parts = urlsplit(template)
        if parts.scheme not in ("http", "https") or parts.path not in ("", "/") \
                or parts.query or parts.fragment or "@" in parts.netloc:
            raise ValidationFailed(
                "public_url_template must look like http(s)://{port}-{id}.example.com[:port]"
            )
        host, _, port = parts.netloc.lower().partition(":")
        if host.count("{port}") != 1 or host.count("{id}") != 1:
            raise ValidationFailed("public_url_template's host must hold {port} and {id} once")
        if port and not port.isdigit():
            raise ValidationFailed("public_url_template's port must be a number")
        rest = re.split(r"(\{port\}|\{id\})", host)
        if not all(re.fullmatch(r"[a-z0-9.-]*", piece) for piece in rest[::2]):
            raise ValidationFailed("public_url_template's host may hold only a-z, 0-9, '.', '-'")
        regex = "".join(
            "(?P<port>[0-9]{1,5})" if piece == "{port}" else
            "(?P<id>[0-9a-f]{20})" if piece == "{id}" else re.escape(piece)
            for piece in rest
        )
        return cls(parts.scheme, parts.netloc.lower(), re.compile(regex))

    @property
    def secure(self) -> bool:
        return self.scheme == "https"

    def netloc_for(self, sandbox_id: str, port: int) -> str:
        return self.netloc.replace("{port}", str(port)).replace("{id}", sandbox_id)

    def url(self, sandbox_id: str, port: int) -> str:
        """The URL of one port, ending in '/'."""
        return f"{self.scheme}://{self.netloc_for(sandbox_id, port)}/"

    def port_template(self, sandbox_id: str) -> str:
        """The sandbox's port URLs with ``{port}`` left in."""
        return f"{self.scheme}://{self.netloc.replace('{id}', sandbox_id)}/"

    def runtime_base_url(self, sandbox_id: str) -> str:
        return self.url(sandbox_id, RUNTIME_PORT).rstrip("/")

    def runtime_host(self, sandbox_id: str) -> str:
        """The sandbox's host without a port prefix: ``<id>.<domain>``.

        Hyperbrowser clients derive port URLs as ``{port}-{runtime.host}``, so the
        default template's form keeps their ``get_exposed_url`` right.
        """
        host = self.netloc.partition(":")[0]
        return host.replace("{port}-", "", 1).replace("{port}", "").replace("{id}", sandbox_id)

    def match(self, host_header: str) -> tuple[str, int] | None:
        """(sandbox id, port) of a Host header in host form, or None."""
        host = host_header.lower()
        if host.endswith("]") or host.startswith("["):
            return None
        name, colon, port = host.rpartition(":")
        if colon and port.isdigit():
            host = name
        found = self.pattern.fullmatch(host)
        if found is None:
            return None
        number = int(found["port"])
        if not 0 < number < 65536 or found["port"].startswith("0"):
            return None
        return found["id"], number


def split_path_route(target: bytes) -> tuple[int, bytes] | None:
    """``/p/3000/rest?q`` or ``/sb/p/3000/rest?q`` → (3000, b"/rest?q"); else None."""
    found = _PATH_ROUTE.match(target)
    if found is None:
        return None
    rest = target[found.end():]
    if not rest.startswith(b"/"):
        rest = b"/" + rest
    return int(found[1]), rest


def is_internal_path(target: bytes) -> bool:
    """Whether a request target names the internal ``/runtime/...`` (or ``/envd/...``)
    routes, however it is spelled: percent-encoded, with empty or dot segments (the API
    server decodes the path once before routing)."""
    segments: list[bytes] = []
    for segment in unquote_to_bytes(target.partition(b"?")[0]).split(b"/"):
        if segment == b"..":
            if segments:
                segments.pop()
        elif segment not in (b"", b"."):
            segments.append(segment)
    return bool(segments) and segments[0].lower() in (b"runtime", b"envd")
