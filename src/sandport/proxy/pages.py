"""Answers the proxy writes itself (pure): errors as JSON or a small page, redirects.

Browsers (``Accept: text/html``) get a page a person can read; every other client gets
the JSON error shape of the whole API.
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote

_REASONS = {302: "Found", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            410: "Gone", 431: "Request Header Fields Too Large", 502: "Bad Gateway",
            504: "Gateway Timeout"}

NOT_FOUND = "no sandbox port answers at this address (unknown or stopped sandbox, or a " \
    "port that is not exposed)"
PAUSED = "this sandbox is paused: its ports answer again once it is resumed"
NEEDS_AUTH = "this port needs the sandbox's token: send Authorization: Bearer <token>, " \
    "or open the port's browserUrl (POST /api/sandbox/{id}/expose returns one)"
BROWSER_NEEDS_AUTH = "This port of the sandbox is private. Open it through its browser " \
    "link: the browserUrl that POST /api/sandbox/{id}/expose returns (sandbox.expose(port, " \
    "auth=True) in the SDK). The link works once and for a few minutes."


def response(status: int, head: list[tuple[str, str]], body: bytes, *, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in head]
    lines.append(f"content-length: {len(body)}")
    lines.append("cache-control: no-store")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error(status: int, code: str, message: str, *, browser: bool, close: bool,
          page_text: str | None = None) -> bytes:
    if browser:
        title = _REASONS.get(status, "Error")
        text = html.escape(page_text or message)
        body = (
            "<!doctype html><html><head><meta charset=utf-8>"
            f"<title>{status} {title}</title>"
            "<style>body{font:16px system-ui,sans-serif;max-width:40em;margin:4em auto;"
            "padding:0 1em;color:#222}</style></head>"
            f"<body><h1>{status} {title}</h1><p>{text}</p><p><small>sandport</small></p>"
            "</body></html>"
        ).encode()
        kind = "text/html; charset=utf-8"
    else:
        body = json.dumps({"error": code, "message": message}).encode()
        kind = "application/json"
    return response(status, [("content-type", kind)], body, close=close)


def redirect(path: str, set_cookie: str, *, close: bool) -> bytes:
    location = quote(path, safe="/?&=%:@!$'()*+,;~-._")
    return response(302, [("location", location), ("set-cookie", set_cookie),
                          ("content-type", "text/plain")], b"", close=close)


def session_cookie(name: str, value: str, max_age: int, *, secure: bool) -> str:
    cookie = f"{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
    return cookie + "; Secure" if secure else cookie
