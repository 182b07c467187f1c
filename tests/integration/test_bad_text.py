"""Text that cannot be used (lone surrogates, NUL where the kernel forbids it, JSON nested
beyond reason) gets a 400 naming the field, on both faces' routes, and is never stored."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import websockets.sync.client as ws_client

from .._server import ServerProcess

DEEP = b"[" * 5000


def _assert_400(response: httpx.Response, mentions: str | None = None) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["message"]
    if mentions is not None:
        assert mentions in body["message"], body["message"]


def _runtime(detail: dict, path: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{detail['runtime']['baseUrl']}{path}", content=body, timeout=30,
                      headers={"Authorization": f"Bearer {detail['token']}",
                               "content-type": "application/json"})


@pytest.mark.parametrize("body, mentions", [
    (rb'{"env": {"A": "\ud800"}}', "env.A"),
    (rb'{"env": {"\udfff": "x"}}', "env"),
    (rb'{"env": {"A\n": "x"}}', "env"),
    (rb'{"env": {"A": "x\u0000y"}}', "env.A"),
    (rb'{"imageName": "py\ud800"}', "imageName"),
    (rb'{"network": {"allowOut": ["\ud800"]}}', "network.allowOut[0]"),
    (rb'{"vcpus": NaN}', None),
    (DEEP, "nested"),
    (b'{"env": ' * 80 + b"1" + b"}" * 80, "nested"),
])
def test_create_refuses_unusable_text(server: ServerProcess, body: bytes,
                                      mentions: str | None) -> None:
    with server.client() as api:
        before = api.get("/api/sandboxes").json()["totalCount"]
        _assert_400(api.post("/api/sandbox", content=body,
                             headers={"content-type": "application/json"}), mentions)
        assert api.get("/api/sandboxes").json()["totalCount"] == before  # nothing stored


@pytest.mark.parametrize("verb, body, mentions", [
    ("revoke", rb'{"token": "\ud800"}', "token"),
    ("revoke", DEEP, "nested"),
    ("expose", DEEP, "nested"),
    ("expose", rb'{"port": "\ud800"}', "port"),
    ("unexpose", rb'{"port": 3000, "\ud800": 1}', None),
    ("timeout", DEEP, "nested"),
    ("network", rb'{"maskRequestHost": "\ud800"}', "maskRequestHost"),
    ("network", DEEP, "nested"),
])
def test_control_verbs_refuse_unusable_text(server: ServerProcess, detail: dict, verb: str,
                                            body: bytes, mentions: str | None) -> None:
    with server.client() as api:
        r = api.post(f"/api/sandbox/{detail['id']}/{verb}", content=body,
                     headers={"content-type": "application/json"})
        _assert_400(r, mentions)
        assert api.get(f"/api/sandbox/{detail['id']}").json()["status"] == "active"


@pytest.mark.parametrize("path, body, mentions", [
    ("/sandbox/exec", rb'{"command": "\ud800"}', "command"),
    ("/sandbox/exec", rb'{"command": "true", "env": {"A": "\ud800"}}', "env.A"),
    ("/sandbox/exec", rb'{"command": "true", "args": ["\udc00"]}', "args[0]"),
    ("/sandbox/exec", rb'{"command": "true", "cwd": "/tmp/\ud800"}', "cwd"),
    ("/sandbox/exec", DEEP, "nested"),
    ("/sandbox/processes", rb'{"command": "echo", "args": ["a", "\ud800"]}', "args[1]"),
    ("/sandbox/processes", rb'{"command": "echo", "args": ["a\u0000b"]}', "args"),
    ("/sandbox/processes", rb'{"command": "true", "env": {"A": "\ud800"}}', "env.A"),
    ("/sandbox/processes", DEEP, "nested"),
    ("/sandbox/pty", rb'{"command": "/bin/sh\ud800"}', "command"),
    ("/sandbox/pty", rb'{"command": "/bin/sh", "env": {"B": "\ud800"}}', "env.B"),
    ("/sandbox/files/write", rb'{"path": "/tmp/\ud800", "data": "x"}', "path"),
    ("/sandbox/files/write", rb'{"path": "/tmp/x", "data": "\ud800"}', "data"),
    ("/sandbox/files/write", rb'{"files": [{"path": "/tmp/x", "data": "\udbff"}]}',
     "files[0].data"),
    ("/sandbox/files/write", DEEP, "nested"),
    ("/sandbox/files/move", rb'{"from": "/tmp/a\u0000", "to": "/tmp/b"}', "from"),
    ("/sandbox/files/copy", rb'{"from": "/tmp/a", "to": "/tmp/\u0000b"}', "to"),
    ("/sandbox/files/move", rb'{"from": "/tmp/\ud800", "to": "/tmp/b"}', "from"),
    ("/sandbox/files/read", rb'{"path": "/tmp/\ud800"}', "path"),
    ("/sandbox/files/mkdir", rb'{"path": "/tmp/\ud800"}', "path"),
    ("/sandbox/files/watch", rb'{"path": "/tmp/\ud800"}', "path"),
    ("/sandbox/files/delete", rb'{"path": "/tmp/x", "runAs": "\ud800"}', "runAs"),
])
def test_runtime_routes_refuse_unusable_text(detail: dict, path: str, body: bytes,
                                             mentions: str) -> None:
    _assert_400(_runtime(detail, path, body), mentions)


def test_sandbox_keeps_working_after_bad_text(server: ServerProcess, detail: dict) -> None:
    for body in (rb'{"command": "\ud800"}', DEEP, rb'{"command": "true", "env": {"A": "\ud800"}}'):
        _runtime(detail, "/sandbox/exec", body)
    ran = _runtime(detail, "/sandbox/exec", b'{"command": "echo ok"}')
    assert ran.status_code == 200 and ran.json()["result"]["stdout"] == "ok\n"
    # Text that is fine, though not ASCII, still goes through (surrogate pairs included).
    ran = _runtime(detail, "/sandbox/exec", rb'{"command": "echo \ud83d\ude00 \u00e9"}')
    assert ran.status_code == 200, ran.text
    assert ran.json()["result"]["stdout"] == "\U0001f600 \u00e9\n"


def test_terminal_messages_with_unusable_text_get_an_error(detail: dict) -> None:
    """On a terminal's WebSocket, a bad message is answered with an error message, and
    the terminal goes on."""
    made = _runtime(detail, "/sandbox/pty", b'{"command": "/bin/sh"}')
    assert made.status_code == 200, made.text
    url = (detail["runtime"]["baseUrl"].replace("http", "ws", 1).rstrip("/")
           + f"/sandbox/pty/{made.json()['pty']['id']}/ws")
    with ws_client.connect(url, open_timeout=10, ping_interval=None,
                           additional_headers={"authorization": f"Bearer {detail['token']}"},
                           ) as ws:
        for bad in (r'{"type": "input", "data": "\ud800"}', "[" * 5000,
                    r'{"type": "resize", "rows": "\udfff", "cols": 80}'):
            ws.send(bad)
            reply = _next_non_output(ws)
            assert reply["type"] == "error" and reply["error"] in ("invalid_request",
                                                                    "bad_request"), reply
        ws.send(json.dumps({"type": "input", "data": "echo al''ive\n"}))
        seen = b""
        while b"alive" not in seen:
            message = json.loads(ws.recv(timeout=10))
            if message["type"] == "output":
                seen += base64.b64decode(message["data"])


def _next_non_output(ws: ws_client.ClientConnection) -> dict:
    while True:
        message = json.loads(ws.recv(timeout=10))
        if message["type"] != "output":
            return message


@pytest.mark.parametrize("query, status", [
    ("path=/tmp/%ED%A0%80", 404),  # a surrogate's bytes: not UTF-8, read as U+FFFD
    ("path=/tmp/%FF", 404), ("path=/tmp/a%00b", 400), ("path=%00", 400),
    ("path=/tmp&runAs=%00", 400),
])
def test_query_text_is_never_a_500(detail: dict, query: str, status: int) -> None:
    r = httpx.get(f"{detail['runtime']['baseUrl'].rstrip('/')}/sandbox/files/stat?{query}",
                  headers={"Authorization": f"Bearer {detail['token']}"}, timeout=30)
    assert r.status_code == status, r.text
