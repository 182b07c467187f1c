"""Per-port auth: tokens, browser links and cookies, and the attempts to get around them."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import InvalidStatus

from sandport import Sandbox

from .._server import ServerProcess
from .conftest import Site, make_site

CHROME = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_auth_port_needs_the_token(site: Site) -> None:
    r = httpx.get(site.url(3001, "/echo"), timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    page = httpx.get(site.url(3001, "/echo"), headers=CHROME, timeout=10)
    assert page.status_code == 401 and "browserUrl" in page.text
    assert page.headers["content-type"].startswith("text/html")
    wrong = httpx.get(site.url(3001, "/echo"), headers=_bearer("spt_wrong"), timeout=10)
    assert wrong.status_code == 401
    ok = httpx.get(site.url(3001, "/echo"), headers=_bearer(site.token), timeout=10)
    assert ok.status_code == 200


def test_token_is_not_passed_upstream_other_authorization_is(site: Site) -> None:
    echo = httpx.get(site.url(3000, "/echo"), headers=_bearer(site.token), timeout=10).json()
    assert not any(k.lower() == "authorization" for k, _ in echo["headers"])
    basic = httpx.get(site.url(3000, "/echo"), auth=("u", "p"), timeout=10).json()
    assert ["Authorization", "Basic dTpw"] in basic["headers"]


def test_token_of_another_sandbox_opens_nothing(site: Site, other_site: Site) -> None:
    r = httpx.get(site.url(3001, "/echo"), headers=_bearer(other_site.token), timeout=10)
    assert r.status_code == 401
    path = httpx.get(f"{site.runtime}/p/3001/echo", headers=_bearer(other_site.token),
                     timeout=10)
    assert path.status_code == 401
    ran = httpx.post(f"{site.runtime}/sandbox/exec", headers=_bearer(other_site.token),
                     json={"command": "true"}, timeout=10)
    assert ran.status_code == 401


def test_second_request_on_a_kept_alive_connection_is_checked_again(site: Site) -> None:
    host = urlsplit(site.url(3001)).netloc
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=10) as s:
        s.sendall(f"GET /echo HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: Bearer {site.token}\r\n\r\n".encode())
        first = _read_response(s)
        assert first.startswith(b"HTTP/1.1 200")
        s.sendall(f"GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        second = _read_response(s)
        assert second.startswith(b"HTTP/1.1 401"), second[:200]


def _read_response(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_browser_link_sets_a_cookie_once(site: Site) -> None:
    exposed = site.sb.expose(3001, auth=True)
    assert exposed.browser_url and exposed.browser_url_expires_at
    assert exposed.browser_url.startswith(site.url(3001, "/_sandport/auth?grant="))
    with httpx.Client(timeout=10) as browser:
        r = browser.get(exposed.browser_url, headers=CHROME)
        assert r.status_code == 302 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Domain" not in cookie
        assert "Secure" not in cookie  # http here; https templates add it
        page = browser.get(site.url(3001, "/echo"), headers=CHROME)
        assert page.status_code == 200
        seen = [v for k, v in page.json()["headers"] if k.lower() == "cookie"]
        assert not any("sandport_auth" in v for v in seen)  # our cookie stays with us
        again = httpx.get(exposed.browser_url, headers=CHROME, timeout=10)
        assert again.status_code == 403 and "already used" in again.text


def test_cookie_opens_only_its_own_sandbox_and_port(site: Site, other_site: Site) -> None:
    exposed = site.sb.expose(3001, auth=True)
    r = httpx.get(exposed.browser_url or "", timeout=10)
    name, _, value = r.headers["set-cookie"].split(";")[0].partition("=")
    assert name == "sandport_auth_3001"
    planted = {"Cookie": f"{name}={value}"}
    assert httpx.get(site.url(3001, "/echo"), headers=planted, timeout=10).status_code == 200
    # the same cookie sent to another sandbox's port 3001
    assert httpx.get(other_site.url(3001, "/echo"), headers=planted,
                     timeout=10).status_code == 401
    # renamed for another port of the same sandbox
    other_port = {"Cookie": f"sandport_auth_3002={value}"}
    site.sb.expose(3002, auth=True)
    assert httpx.get(site.url(3002), headers=other_port, timeout=10).status_code == 401
    # a forged signature
    forged = {"Cookie": f"{name}={value[:-4]}AAAA"}
    assert httpx.get(site.url(3001), headers=forged, timeout=10).status_code == 401
    site.sb.unexpose(3002)


def test_grant_of_one_host_does_not_work_on_another(site: Site, other_site: Site) -> None:
    exposed = site.sb.expose(3001, auth=True)
    query = (exposed.browser_url or "").split("?", 1)[1]
    r = httpx.get(other_site.url(3001, f"/_sandport/auth?{query}"), timeout=10)
    assert r.status_code == 403
    # shown on the wrong host, it is not used up: it still works where it belongs
    assert httpx.get(exposed.browser_url or "", timeout=10).status_code == 302


def test_head_does_not_use_up_a_browser_link(site: Site) -> None:
    link = site.sb.expose(3001, auth=True).browser_url or ""
    assert httpx.head(link, timeout=10).status_code == 405  # e.g. a link checker
    assert httpx.get(link, timeout=10).status_code == 302


@pytest.mark.parametrize("path", ["/runtime/{id}/sandbox/exec", "/%72untime/{id}/sandbox/exec",
                                  "//runtime/{id}/sandbox/exec", "/./runtime/{id}/sandbox/exec",
                                  "/api/../runtime/{id}/sandbox/exec",
                                  "/%2e/runtime/{id}/sandbox/exec"])
def test_runtime_routes_are_not_reachable_from_the_control_host(site: Site, path: str) -> None:
    """Only a sandbox's runtime host leads to its runtime API, however the path is spelled."""
    body = b'{"command": "true"}'
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=10) as s:
        s.sendall(f"POST {path.format(id=site.id)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: Bearer {site.token}\r\nX-Sandport-Runtime: {site.id}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                  "Connection: close\r\n\r\n".encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 404"), data[:300]


def test_runtime_routes_refuse_requests_the_proxy_did_not_map(site: Site) -> None:
    """Even on the API's own socket, a /runtime/ request without the proxy's mark is 404."""
    socket_path = site.server.data_dir / "run" / "api.sock"
    transport = httpx.HTTPTransport(uds=str(socket_path))
    with httpx.Client(transport=transport, base_url="http://api", timeout=10) as api:
        url = f"/runtime/{site.id}/sandbox/exec"
        auth = _bearer(site.token)
        assert api.post(url, headers=auth, json={"command": "true"}).status_code == 404
        marked = api.post(url, json={"command": "true"},
                          headers={**auth, "X-Sandport-Runtime": site.id})
        assert marked.status_code == 200, marked.text
    via_host = httpx.post(f"{site.runtime}/sandbox/exec", headers=_bearer(site.token),
                          json={"command": "true"}, timeout=30)
    assert via_host.status_code == 200


def test_open_redirects_are_refused(site: Site) -> None:
    for bad in ("//evil.example/", "https://evil.example/", "%2F%2Fevil.example",
                "/\\evil.example", "javascript:alert(1)", "%0d%0aSet-Cookie:x=1"):
        exposed = site.sb.expose(3001, auth=True)
        url = (exposed.browser_url or "").replace("next=%2F", f"next={bad}")
        r = httpx.get(url, timeout=10)
        assert r.status_code == 400, (bad, r.status_code, r.headers.get("location"))
    exposed = site.sb.expose(3001, auth=True)
    url = (exposed.browser_url or "").replace("next=%2F", "next=%2Fdeep%2Fpath%3Fx%3D1")
    r = httpx.get(url, timeout=10)
    assert r.status_code == 302 and r.headers["location"] == "/deep/path?x=1"


def test_websocket_upgrades_need_auth_too(site: Site) -> None:
    url = site.url(3001, "/ws").replace("http://", "ws://")
    try:
        ws_client.connect(url, open_timeout=10).close()
        raise AssertionError("an auth port let a WebSocket in without a token")
    except InvalidStatus as exc:
        assert exc.response.status_code == 401
    with ws_client.connect(url, open_timeout=10,
                           additional_headers=_bearer(site.token)) as ws:
        ws.send("in")
        assert ws.recv(timeout=5) == "in"


def test_expired_grant_fails_with_a_clear_page(fresh_server) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProcess = fresh_server(env={"SANDPORT_BROWSER_URL_TTL_S": "1"})
    with Sandbox.create(api_key=srv.api_key, base_url=srv.base_url) as sb:
        exposed = sb.expose(3001, auth=True)
        time.sleep(1.5)
        r = httpx.get(exposed.browser_url or "", headers=CHROME, timeout=10)
        assert r.status_code == 403 and "expired" in r.text


def test_stopped_sandbox_cookie_and_token_open_nothing(server: ServerProcess) -> None:
    gone = make_site(server)
    r = httpx.get(gone.sb.expose(3001, auth=True).browser_url or "", timeout=10)
    cookie = r.headers["set-cookie"].split(";")[0]
    gone.sb.stop()
    gone.sb.close()
    for headers in ({"Cookie": cookie}, _bearer(gone.token), {}):
        r = httpx.get(gone.url(3001, "/echo"), headers=headers, timeout=10)
        assert r.status_code == 404
        assert httpx.get(gone.url(3000), timeout=10).status_code == 404
