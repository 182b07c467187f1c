"""The edge proxy's pure parts: URL templates, route decisions, auth, head rewriting."""

from __future__ import annotations

import pytest

from sandport.errors import ValidationFailed
from sandport.proxy import auth, pages
from sandport.proxy.decide import Answer, Edge, Forward, Redeem, RequestHead
from sandport.proxy.routes import RouteTable, SandboxRoute
from sandport.proxy.urls import PublicUrls, is_internal_path, split_path_route
from sandport.server.app import came_by_runtime_host

SID = "0123456789abcdef0123"
OTHER = "fedcba9876543210fedc"
SECRET = b"s" * 32
URLS = PublicUrls.parse("http://{port}-{id}.localhost:8080")


def test_template_builds_and_matches() -> None:
    assert URLS.url(SID, 3000) == f"http://3000-{SID}.localhost:8080/"
    assert URLS.runtime_base_url(SID) == f"http://4001-{SID}.localhost:8080"
    assert URLS.runtime_host(SID) == f"{SID}.localhost"
    assert URLS.match(f"3000-{SID}.localhost:8080") == (SID, 3000)
    assert URLS.match(f"3000-{SID}.LOCALHOST") == (SID, 3000)  # port and case ignored
    for host in (f"03000-{SID}.localhost", f"70000-{SID}.localhost", f"3000-{SID}.localhostx",
                 f"3000-{SID}x.localhost", f"x.3000-{SID}.localhost", "localhost:8080",
                 "[::1]:8080", f"3000-{SID[:-1]}.localhost"):
        assert URLS.match(host) is None, host


@pytest.mark.parametrize("template", [
    "ftp://{port}-{id}.x", "http://{id}.x", "http://{port}-{port}-{id}.x", "http://{port}-{id}.x/p",
    "http://{port}-{id}.x:port", "http://u@{port}-{id}.x", "http://{port}-{id}.x_y"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValidationFailed):
        PublicUrls.parse(template)


def test_path_routes() -> None:
    assert split_path_route(b"/p/3000/a/b?x=1") == (3000, b"/a/b?x=1")
    assert split_path_route(b"/sb/p/3000") == (3000, b"/")
    assert split_path_route(b"/p/3000?x") == (3000, b"/?x")
    assert split_path_route(b"/p/3000x/") is None
    assert split_path_route(b"/sandbox/exec") is None


def _edge(**route: object) -> Edge:
    table = RouteTable()
    table.put(SandboxRoute(SID, "10.77.0.2", "spt_tok", 2e9, {3000: False, 3001: True},
                           **route))  # type: ignore[arg-type]
    table.put(SandboxRoute(OTHER, "10.77.0.6", "spt_other", 2e9, {3001: True}))
    return Edge(URLS, table, "/run/api.sock", SECRET, clock=lambda: 1e9)


def _req(host: str, target: bytes = b"/", *headers: tuple[bytes, bytes],
         method: bytes = b"GET") -> RequestHead:
    return RequestHead(method, target, b"1.1", [(b"Host", host.encode()), *headers],
                       "192.0.2.7")


def _status(decision: object) -> int:
    assert isinstance(decision, Answer)
    return int(decision.render(False).split(b" ", 2)[1])


def test_routing_by_host() -> None:
    edge = _edge()
    control = edge.decide(_req("localhost:8080", b"/api/health"))
    assert isinstance(control, Forward) and control.key == ("unix", "/run/api.sock")
    runtime = edge.decide(_req(f"4001-{SID}.localhost:8080", b"/sandbox/exec"))
    assert isinstance(runtime, Forward) and runtime.head.startswith(
        f"GET /runtime/{SID}/sandbox/exec HTTP/1.1".encode())
    port = edge.decide(_req(f"3000-{SID}.localhost:8080", b"/x?y"))
    assert isinstance(port, Forward) and port.key == ("tcp", "10.77.0.2", "3000")
    assert port.head.startswith(b"GET /x?y HTTP/1.1\r\n")
    assert _status(edge.decide(_req("localhost", b"/runtime/" + SID.encode()))) == 404


def test_absent_and_closed_ports_answer_the_same_404() -> None:
    edge = _edge()
    answers = [edge.decide(_req(h)) for h in (
        f"3002-{SID}.localhost", f"3000-{'1' * 20}.localhost", f"4001-{SID}.localhost:1")]
    answers[2] = edge.decide(_req(f"4001-{SID}.localhost", b"/p/4001/"))
    bodies = {a.render(False) for a in answers if isinstance(a, Answer)}
    assert len(bodies) == 1 and b" 404 " in next(iter(bodies))


def test_auth_by_token_and_cookie() -> None:
    edge = _edge()
    host = f"3001-{SID}.localhost"
    assert _status(edge.decide(_req(host))) == 401
    assert _status(edge.decide(_req(host, b"/", (b"Authorization", b"Bearer spt_other")))) == 401
    ok = edge.decide(_req(host, b"/", (b"Authorization", b"Bearer spt_tok")))
    assert isinstance(ok, Forward) and b"spt_tok" not in ok.head
    good = auth.sign_session(SECRET, SID, 3001, int(2e9), generation=0)
    cookie = f"a=1; sandport_auth_3001={good}; b=2".encode()
    via_cookie = edge.decide(_req(host, b"/", (b"Cookie", cookie)))
    assert isinstance(via_cookie, Forward)
    assert b"Cookie: a=1; b=2\r\n" in via_cookie.head
    for value in (auth.sign_session(SECRET, OTHER, 3001, int(2e9), generation=0),
                  auth.sign_session(SECRET, SID, 3000, int(2e9), generation=0),
                  auth.sign_session(SECRET, SID, 3001, 5, generation=0),  # expired
                  auth.sign_session(SECRET, SID, 3001, int(2e9), generation=1),  # another
                  auth.sign_session(b"x" * 32, SID, 3001, int(2e9), generation=0),
                  good.replace(".3001.0.", ".3001.1."),  # the generation changed
                  ".".join(good.split(".")[:2] + good.split(".")[3:])):  # the old format
        planted = (b"Cookie", f"sandport_auth_3001={value}".encode())
        assert _status(edge.decide(_req(host, b"/", planted))) == 401


def test_expired_token_opens_nothing() -> None:
    table = RouteTable()
    table.put(SandboxRoute(SID, "10.77.0.2", "spt_tok", 10.0, {3001: True}))
    edge = Edge(URLS, table, "/s", SECRET, clock=lambda: 11.0)
    assert _status(edge.decide(_req(f"3001-{SID}.localhost", b"/",
                                    (b"Authorization", b"Bearer spt_tok")))) == 401


def test_forwarded_headers_and_masking() -> None:
    edge = _edge(mask_host="localhost:${PORT}")
    decision = edge.decide(_req(f"3000-{SID}.localhost:8080", b"/",
                                (b"X-Forwarded-For", b"6.6.6.6"), (b"x-real-ip", b"6.6.6.6")))
    assert isinstance(decision, Forward)
    head = decision.head
    assert b"6.6.6.6" not in head
    assert b"Host: localhost:3000\r\n" in head
    assert f"x-forwarded-host: 3000-{SID}.localhost:8080\r\n".encode() in head
    assert b"x-forwarded-for: 192.0.2.7\r\nx-real-ip: 192.0.2.7\r\n\r\n" in head


def test_bad_heads() -> None:
    edge = _edge()
    two_hosts = RequestHead(b"GET", b"/", b"1.1", [(b"Host", b"a"), (b"Host", b"b")], "x")
    assert _status(edge.decide(two_hosts)) == 400
    assert _status(edge.decide(RequestHead(b"GET", b"/", b"1.1", [], "x"))) == 400
    assert _status(edge.decide(_req("localhost", b"http://evil/"))) == 400
    assert _status(edge.decide(_req("localhost", b"x:443", method=b"CONNECT"))) == 405


def test_grant_redemption_requests() -> None:
    edge = _edge()
    host = f"3001-{SID}.localhost"
    redeem = edge.decide(_req(host, b"/_sandport/auth?grant=g1&next=%2Fa%3Fb%3D1"))
    assert isinstance(redeem, Redeem) and redeem.grant == "g1" and redeem.next_path == "/a?b=1"
    assert (redeem.sandbox_id, redeem.port) == (SID, 3001)
    assert _status(edge.decide(_req(host, b"/_sandport/auth?grant=g&next=%2F%2Fevil"))) == 400
    assert _status(edge.decide(_req(host, b"/_sandport/auth?next=%2F"))) == 400
    assert _status(edge.decide(_req(host, b"/_sandport/auth?grant=g", method=b"POST"))) == 405
    # link checkers send HEAD: it must not use up the one-time grant
    assert _status(edge.decide(_req(host, b"/_sandport/auth?grant=g", method=b"HEAD"))) == 405
    passthrough = edge.decide(_req(f"3000-{SID}.localhost", b"/_sandport/authx"))
    assert isinstance(passthrough, Forward)


@pytest.mark.parametrize("value, safe", [
    ("/", "/"), ("/a/b?c=d", "/a/b?c=d"), ("//evil", None), ("https://evil", None),
    ("/\\evil", None), ("evil", None), ("/a\r\nSet-Cookie: x", None),
    ("/%2F%2Fevil", "/%2F%2Fevil"),
])
def test_safe_next(value: str, safe: str | None) -> None:
    assert auth.safe_next(value) == safe


def test_cookie_stripping_and_pages() -> None:
    assert auth.without_our_cookies(b"sandport_auth_3000=x") == b""
    assert auth.without_our_cookies(b"a=1;sandport_auth_1=y; b=2") == b"a=1; b=2"
    assert auth.without_our_cookies(b"xsandport_auth_1=y") == b"xsandport_auth_1=y"
    assert auth.without_our_cookies(b"sandport_console=s; keep=1") == b"keep=1"
    assert auth.without_our_cookies(b"__Host-sandport_console=s; keep=1") == b"keep=1"
    page = pages.redirect("/a b", "c=1", close=True)
    assert b"location: /a%20b\r\n" in page and b"connection: close" in page
    assert pages.session_cookie("n", "v", 60, secure=True).endswith("; Secure")


def test_route_table_tells_watchers_what_closed() -> None:
    table, told = RouteTable(), []
    table.watch(lambda sid, port: told.append((sid, port)))
    table.put(SandboxRoute(SID, "a", "t", 1.0, {3000: False, 3001: False}))
    table.put(SandboxRoute(SID, "a", "t", 1.0, {3000: False, 3001: True}))  # now private
    table.put(SandboxRoute(SID, "a", "t", 1.0, {3001: True}))  # 3000 closed
    table.drop(SID)
    assert told == [(SID, 3001), (SID, 3000), (SID, None)]


@pytest.mark.parametrize("target", [
    b"/runtime/" + SID.encode() + b"/sandbox/exec", b"/%72untime/" + SID.encode() + b"/x",
    b"//runtime/" + SID.encode() + b"/sandbox/exec", b"/./runtime/" + SID.encode() + b"/x",
    b"/api/../runtime/x", b"/%2Fruntime/x", b"/%2e/runtime/x?q=1", b"/RUNTIME/x", b"/runtime",
])
def test_internal_runtime_paths_are_refused_on_the_control_host(target: bytes) -> None:
    assert is_internal_path(target)
    assert _status(_edge().decide(_req("localhost:8080", target, method=b"POST"))) == 404


@pytest.mark.parametrize("target", [b"/api/health", b"/runtimes", b"/api/runtime/x", b"*",
                                    b"/?next=/runtime/x"])
def test_other_control_paths_pass(target: bytes) -> None:
    assert not is_internal_path(target)
    assert isinstance(_edge().decide(_req("localhost:8080", target)), Forward)


def test_only_the_proxy_marks_runtime_requests() -> None:
    edge = _edge()
    forged = [(b"X-Sandport-Runtime", OTHER.encode()), (b"x_sandport_runtime", OTHER.encode()),
              (b"X-SANDPORT-RUNTIME", OTHER.encode())]
    runtime = edge.decide(_req(f"4001-{SID}.localhost", b"/sandbox/exec", *forged))
    assert isinstance(runtime, Forward)
    assert OTHER.encode() not in runtime.head
    assert f"\r\nx-sandport-runtime: {SID}\r\n".encode() in runtime.head
    for host in ("localhost:8080", f"3000-{SID}.localhost", f"4001-{SID}.localhost"):
        target = b"/p/3000/" if host.startswith("4001") else b"/api/health"
        decision = edge.decide(_req(host, target, *forged))
        assert isinstance(decision, Forward)
        assert b"sandport-runtime" not in decision.head.lower(), host
        assert b"sandport_runtime" not in decision.head.lower(), host


def test_app_serves_runtime_routes_only_to_marked_requests() -> None:
    mark = [(b"x-sandport-runtime", SID.encode())]
    assert came_by_runtime_host(f"/runtime/{SID}/sandbox/exec", mark)
    assert not came_by_runtime_host(f"/runtime/{SID}/sandbox/exec", [])
    assert not came_by_runtime_host(f"/runtime/{OTHER}/sandbox/exec", mark)  # another id
    assert not came_by_runtime_host(f"/runtime/{SID}/sandbox/exec",
                                    [(b"x_sandport_runtime", SID.encode())])
    assert came_by_runtime_host("/api/health", [])


def test_hop_by_hop_and_forwarded_headers_are_not_passed_on() -> None:
    edge = _edge()
    decision = edge.decide(_req(
        f"3000-{SID}.localhost", b"/",
        (b"Connection", b"keep-alive, X-Hop, Upgrade, content-length"), (b"X-Hop", b"secret"),
        (b"Keep-Alive", b"timeout=5"), (b"Upgrade", b"websocket"), (b"Content-Length", b"0"),
        (b"Forwarded", b"for=6.6.6.6"), (b"X_Forwarded_For", b"6.6.6.6"),
        (b"x_real_ip", b"6.6.6.6"), (b"X-Forwarded-Host", b"evil"), (b"X-Kept", b"1"),
        method=b"POST"))
    assert isinstance(decision, Forward)
    head = decision.head
    for gone in (b"\r\nX-Hop:", b"\r\nKeep-Alive:", b"\r\nForwarded:", b"\r\nX_Forwarded",
                 b"\r\nx_real_ip:", b"evil", b"6.6.6.6"):
        assert gone not in head, gone
    for kept in (b"Connection: keep-alive, upgrade\r\n",  # rebuilt: names no header
                 b"Upgrade: websocket\r\n", b"Content-Length: 0\r\n", b"X-Kept: 1\r\n"):
        assert kept in head, kept
    plain = edge.decide(_req(f"3000-{SID}.localhost", b"/", (b"Connection", b"close"),
                             (b"X-Hop", b"kept")))
    assert isinstance(plain, Forward) and b"X-Hop: kept\r\n" in plain.head


@pytest.mark.parametrize("connection, upstream", [
    (b"x-forwarded-for, x-real-ip", None),
    (b"close, X-Forwarded-For", b"close"),
    (b"Upgrade, x-real-ip, host", b"upgrade"),
    (b"keep-alive, content-length", b"keep-alive"),
    (b"Upgrade", b"Upgrade"),  # already clean: verbatim
])
def test_connection_header_never_names_the_proxy_s_headers(connection: bytes,
                                                            upstream: bytes | None) -> None:
    """An upstream honouring hop-by-hop would drop what the Connection header names:
    the proxy's own forwarded headers, the Host or the framing must never be named."""
    edge = _edge()
    for host in ("localhost:8080", f"3000-{SID}.localhost", f"4001-{SID}.localhost"):
        decision = edge.decide(_req(host, b"/", (b"Connection", connection)))
        assert isinstance(decision, Forward)
        lines = decision.head.split(b"\r\n")
        sent = [line.partition(b": ")[2] for line in lines
                if line.lower().startswith(b"connection:")]
        assert sent == ([] if upstream is None else [upstream]), (host, sent)
        assert b"x-forwarded-for: 192.0.2.7" in decision.head


_PROXY_MEANINGFUL = [b"X-Forwarded-Port", b"X-Forwarded-Prefix", b"X-Original-URL",
                     b"X-Rewrite-URL", b"X-Forwarded-Server", b"X-Forwarded-Scheme",
                     b"X-Forwarded-Ssl", b"X-Original-Host", b"X-Client-IP",
                     b"True-Client-IP", b"X-Forwarded-Uri", b"X-Original-Uri",
                     b"x_original_url", b"X_Forwarded_Prefix"]


@pytest.mark.parametrize("host, target, api_key_kept", [
    ("localhost:8080", b"/api/sandboxes", True),  # the control host needs the key
    (f"3000-{SID}.localhost", b"/", False),
    (f"4001-{SID}.localhost", b"/sandbox/exec", False),  # the runtime API
    (f"4001-{SID}.localhost", b"/p/3000/x", False),  # a sandbox port by path
])
def test_proxy_meaningful_headers_and_the_api_key_are_stripped(
        host: str, target: bytes, api_key_kept: bool) -> None:
    edge = _edge()
    sent = [(name, b"/evil") for name in _PROXY_MEANINGFUL]
    decision = edge.decide(_req(host, target, *sent, (b"x-api-key", b"spk_secret"),
                                (b"X_Api_Key", b"spk_secret2"), (b"X-Kept", b"1")))
    assert isinstance(decision, Forward)
    head = decision.head
    assert b"/evil" not in head, head
    assert b"X-Kept: 1\r\n" in head
    assert (b"x-api-key: spk_secret\r\n" in head) is api_key_kept, head
    assert b"spk_secret2" not in head  # other spellings never count as the key


def test_ports_unexposed_in_open_mode_stay_closed() -> None:
    table, told = RouteTable(), []
    table.watch(lambda sid, port: told.append((sid, port)))
    table.put(SandboxRoute(SID, "a", "t", 1.0, {3001: True}, open_ports=True))
    route = table.get(SID)
    assert route is not None and route.port_auth(3333) is False and route.port_auth(3001)
    table.put(SandboxRoute(SID, "a", "t", 1.0, {}, open_ports=True,
                           closed_ports=frozenset({3001, 3333})))
    route = table.get(SID)
    assert route is not None
    assert route.port_auth(3001) is None and route.port_auth(3333) is None
    assert route.port_auth(3000) is False
    assert sorted(told) == [(SID, 3001), (SID, 3333)]  # open connections to them are cut
