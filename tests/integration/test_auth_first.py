"""Credentials are checked before anything else: every route of the control and runtime
APIs (walked from the route tables themselves) answers 401 to a request without them, or
with wrong ones, whatever its body and query — never 400, 413, 422 or 500."""

from __future__ import annotations

import base64
import os
import re
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.routing import Route, WebSocketRoute

from sandport.control.routes import routes as control_routes
from sandport.e2b.envd import STREAMS, UNARY
from sandport.e2b.envd import routes as envd_routes
from sandport.e2b.routes import routes as e2b_routes
from sandport.runtime_api.routes import routes as runtime_routes

from .._server import ServerProcess

PUBLIC = {"/api/openapi.json", "/api/health"}
BODIES = [None, b"[" * 5000, rb'{"path": "\ud800", "command": "\ud800"}', b"\xff\xfe",
          b"{not json", b'{"port": "x", "colour": 1}']
BIG = 64 << 20  # declared, never sent: more than any route takes
QUERY = "?path=%00&depth=deep&status=nope&limit=-1&cursor=x&from_seq=y"


def _fill(path: str, sandbox_id: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: sandbox_id if m.group(1) == "id" else
                  ("python" if m.group(1) == "name" else "proc_0123456789abcdef"), path)


def _http_routes(table: list) -> list[tuple[str, str]]:
    return sorted((method, route.path) for route in table if isinstance(route, Route)
                  for method in route.methods or () if method != "HEAD")


def _ask(url: str, method: str, headers: dict[str, str], body: bytes | None = None,
         declared: int | None = None) -> tuple[int, bytes]:
    """(status, body) of one request on its own connection, sent in one write (a server
    that answers before reading a body may close on the rest of it: not what is tested).
    With ``declared``, the head announces a body too big to take and none is sent: the
    answer must not wait for it, nor judge its size first."""
    parts = urlsplit(url)
    length = declared if declared is not None else len(body or b"")
    lines = [f"{method} {parts.path}?{parts.query} HTTP/1.1", f"Host: {parts.netloc}",
             f"Content-Length: {length}", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if declared else body or b"")
    with socket.create_connection(("127.0.0.1", parts.port or 80), timeout=30) as s:
        s.sendall(data)
        answer = b""
        while got := s.recv(65536):  # to the end: the request said Connection: close
            answer += got
    assert answer, f"{method} {url}: closed without an answer"
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), content


def _assert_401(answer: tuple[int, bytes], what: str) -> None:
    status, content = answer
    assert status == 401, f"{what}: {status} {content[:200]!r}"
    assert b'"error":"unauthorized"' in content.replace(b" ", b""), what


@pytest.mark.parametrize("method, path", _http_routes(control_routes))
def test_control_routes_check_the_key_first(server: ServerProcess, detail: dict, method: str,
                                            path: str) -> None:
    if path in PUBLIC:
        return
    url = server.base_url + _fill(path, detail["id"])
    for key in (None, "spk_wrong"):
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["x-api-key"] = key
        for body in BODIES:
            _assert_401(_ask(url + QUERY, method, headers, body),
                        f"{method} {path} key={key} body={(body or b'')[:20]!r}")
        assert _ask(url + QUERY, method, headers, declared=BIG)[0] == 401, path


@pytest.mark.parametrize("method, path", _http_routes(e2b_routes))
def test_e2b_control_routes_check_the_key_first(server: ServerProcess, detail: dict,
                                                method: str, path: str) -> None:
    """The E2B face: its {code, message} 401, whatever the body."""
    url = server.base_url + _fill(path, detail["id"])
    for key in (None, "e2b_" + "0" * 40):
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["x-api-key"] = key
        for body in BODIES:
            status, content = _ask(url + QUERY, method, headers, body)
            assert status == 401 and b'"code":401' in content.replace(b" ", b""), (path, body)
        assert _ask(url + QUERY, method, headers, declared=BIG)[0] == 401, path


ENVD_CALLS = [("POST", f"/{name}") for name in sorted({*STREAMS, *UNARY})] + [
    (method, route.path.removeprefix("/envd/{id}")) for route in envd_routes
    if isinstance(route, Route) and "{service}" not in route.path
    and not route.path.endswith("/health") for method in route.methods or ()
    if method != "HEAD"]


@pytest.mark.parametrize("method, path", ENVD_CALLS)
def test_envd_calls_check_the_access_token_first(server: ServerProcess, detail: dict,
                                                 method: str, path: str) -> None:
    """Every envd call, on the sandbox's 49983 host and by E2B_SANDBOX_URL's headers, with
    no token, a wrong one, or another sandbox's: 401 before its body or query is judged."""
    host = f"49983-{detail['id']}.localhost:{server.port}"
    theirs = "0" * 64  # (a well-formed token of no sandbox: derived tokens are 64 hex)
    for token in (None, "", "wrong", theirs):
        for content_type in ("application/json", "application/connect+json",
                             "application/octet-stream", "multipart/form-data; boundary=x"):
            headers = {"content-type": content_type}
            if token is not None:
                headers["x-access-token"] = token
            for body in BODIES:
                status, content = _ask(f"http://{host}{path}" + QUERY, method, headers, body)
                if status == 200:  # a stream's error is in its end frame, under a 200
                    assert b'"unauthenticated"' in content, (path, token, content[:200])
                else:
                    assert status == 401, (path, token, status, content[:200])
            by_headers = {**headers, "e2b-sandbox-id": detail["id"],
                          "e2b-sandbox-port": "49983"}
            status, content = _ask(server.base_url + path + QUERY, method, by_headers,
                                   declared=BIG)
            assert status in (200, 401) and (b"unauthenticated" in content or b'"code":401'
                                             in content.replace(b" ", b"")), (path, status)


@pytest.mark.parametrize("method, path", _http_routes(runtime_routes))
def test_runtime_routes_check_the_token_first(detail: dict, method: str, path: str) -> None:
    base = detail["runtime"]["baseUrl"].rstrip("/")
    url = base + _fill(path, detail["id"])[len(f"/runtime/{detail['id']}"):]
    for auth in (None, "Bearer spt_wrong", f"Basic {detail['token']}"):
        headers = {"content-type": "application/json"}
        if auth is not None:
            headers["authorization"] = auth
        for body in BODIES:
            _assert_401(_ask(url + QUERY, method, headers, body),
                        f"{method} {path} auth={auth} body={(body or b'')[:20]!r}")
        assert _ask(url + QUERY, method, headers, declared=BIG)[0] == 401, path


@pytest.mark.parametrize("path", sorted(r.path for r in runtime_routes
                                        if isinstance(r, WebSocketRoute)))
def test_runtime_websockets_check_the_token_first(detail: dict, path: str) -> None:
    base = detail["runtime"]["baseUrl"].rstrip("/")
    url = base + _fill(path, detail["id"])[len(f"/runtime/{detail['id']}"):]
    upgrade = {"connection": "upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
               "sec-websocket-key": base64.b64encode(os.urandom(16)).decode()}
    _assert_401(_ask(url + QUERY, "GET", upgrade), path)


def test_a_valid_token_still_reaches_the_validation(detail: dict) -> None:
    """The other side of it: with the token, a bad query is the 400 it always was."""
    r = httpx.get(f"{detail['runtime']['baseUrl'].rstrip('/')}/sandbox/files",
                  headers={"authorization": f"Bearer {detail['token']}"}, timeout=30)
    assert r.status_code == 400 and "path" in r.json()["message"]


@pytest.mark.parametrize("path", ["/console/sandboxes", "/console/logout",
                                  "/console/sandbox/0123456789abcdef0123/stop"])
def test_console_forms_check_the_session_first(server: ServerProcess, path: str) -> None:
    """Without a session a console form is refused (403) before its body is read: too
    big a body gets the same answer, not a 413."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    for body in (b"csrf=x", b"a=" + b"x" * (128 << 10)):
        status, content = _ask(server.base_url + path, "POST", form, body)
        assert status == 403, (path, status, content[:200])
