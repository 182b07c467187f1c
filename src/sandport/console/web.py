"""What every console route uses: pages, sessions, forms and the headers they go out with."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ..errors import PayloadTooLarge, SandportError, ValidationFailed
from . import session as sessions

HERE = Path(__file__).parent
MAX_FORM_BYTES = 64 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# xterm.js sizes and colours its cells with style attributes: the terminal's page allows
# inline styles (never inline scripts).
CSP_TERMINAL = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on form
    # posts, and the origin check needs the real one; other sites still get no Referer.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
_templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                autoescape=True, undefined=jinja2.StrictUndefined)


async def console_secret(request: HTTPConnection) -> bytes:
    state = request.app.state
    secret = getattr(state, "console_secret", None)
    if secret is None:
        secret = await state.ctx.store.secret("console-session")
        state.console_secret = secret
    return bytes(secret)


async def form_fields(request: Request) -> dict[str, str]:
    """A form's fields (application/x-www-form-urlencoded, at most MAX_FORM_BYTES)."""
    cached: dict[str, str] | None = getattr(request.state, "fields", None)
    if cached is not None:
        return cached
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"a console form is at most {MAX_FORM_BYTES} bytes")
    fields: dict[str, str] = {}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        fields = {k: v[0] for k, v in parse_qs(body.decode(errors="replace"),
                                               keep_blank_values=True).items()}
    request.state.fields = fields
    return fields


def render(name: str, code: int = 200, csp: str = CSP, **values: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(**values)
    return HTMLResponse(html, status_code=code,
                        headers={**HEADERS, "content-security-policy": csp})


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=HEADERS)


class Signed:
    """The caller's session: team, its cookie, and the CSRF token its forms carry."""

    def __init__(self, team: str, value: str, csrf: str) -> None:
        self.team = team
        self.value = value
        self.csrf = csrf


def _secure(conn: HTTPConnection) -> bool:
    return conn.url.scheme in ("https", "wss")


def cookie_name(conn: HTTPConnection) -> str:
    return sessions.HOST_COOKIE if _secure(conn) else sessions.COOKIE


def set_session(response: Response, conn: HTTPConnection, value: str) -> None:
    secure = _secure(conn)
    response.set_cookie(cookie_name(conn), value, max_age=sessions.SESSION_TTL_S,
                        path="/" if secure else "/console", httponly=True,
                        samesite="strict", secure=secure)


def clear_session(response: Response, conn: HTTPConnection) -> None:
    response.delete_cookie(cookie_name(conn), path="/" if _secure(conn) else "/console")


def session_value(conn: HTTPConnection) -> str | None:
    """The session cookie, if the request carries exactly one (two: one was planted)."""
    name = cookie_name(conn).encode()
    found = [value.strip() for header, raw in conn.scope["headers"] if header == b"cookie"
             for key, eq, value in (pair.strip().partition(b"=") for pair in raw.split(b";"))
             if eq and key == name]
    return found[0].decode("latin-1") if len(found) == 1 else None


def same_origin(conn: HTTPConnection) -> bool:
    """A browser's request from the console's own pages (browsers always send Origin on
    POST, PUT and WebSocket handshakes; a client that sends none is not a browser)."""
    origin = conn.headers.get("origin")
    scheme = "https" if _secure(conn) else "http"
    return origin is None or origin == f"{scheme}://{conn.headers.get('host', '')}"


async def signed_in(conn: HTTPConnection) -> Signed | None:
    secret = await console_secret(conn)
    value = session_value(conn)
    team = sessions.session_team(secret, value, time.time())
    if team is None or value is None:
        return None
    if await conn.app.state.ctx.store.signed_out(sessions.nonce_and_expiry(value)[0]):
        return None
    return Signed(team, value, sessions.csrf_token(secret, value))


def refused() -> HTMLResponse:
    return render("message.html", 403, title="Refused",
                  message="This form is out of date or did not come from this console. "
                          "Reload the page and try again.")


def number(value: Any, name: str, low: int = 0, high: int = 10**9) -> int:
    text = str(value or "").strip()
    if not re.fullmatch(r"[0-9]{1,10}", text) or not low <= int(text) <= high:
        raise ValidationFailed(f"{name} must be a whole number from {low} to {high}")
    return int(text)


Handler = Callable[[Request, Signed], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A GET: signed in, or sent to the sign-in page."""

    async def run(request: Request) -> Response:
        signed = await signed_in(request)
        if signed is None:
            return see_other("/console/login?next=" + quote(request.url.path))
        return await handler(request, signed)

    return run


def form(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A POST: signed in and carrying the session's CSRF token, else 403."""

    async def run(request: Request) -> Response:
        signed = await signed_in(request)
        if signed is None:  # refused before its body is read or judged
            return refused()
        try:
            fields = await form_fields(request)
        except SandportError as exc:
            return render("message.html", exc.status, title="Refused", message=exc.message)
        if not same_origin(request) or not sessions.csrf_ok(
                await console_secret(request), signed.value, str(fields.get("csrf") or "")):
            return refused()
        return await handler(request, signed)

    return run


def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A JSON GET the pages poll: signed in (else 401), errors as JSON for the script."""

    async def run(request: Request) -> Response:
        signed = await signed_in(request)
        if signed is None:
            return JSONResponse({"error": "unauthorized", "message": "sign in again"}, 401,
                                headers=HEADERS)
        try:
            return await handler(request, signed)
        except SandportError as exc:
            return JSONResponse(exc.to_wire(), exc.status, headers=HEADERS)

    return run
