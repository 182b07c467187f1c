"""Names in ``allowOut``, tried with real clients inside sandboxes against real HTTP and
HTTPS servers in a network namespace of the tests (tests/web_world.py), whose names the
tests' resolver answers: the name gate (runtime/gate.py) lets through only what an allowed
name asks for, to that name's own addresses, and the rest of the policy stays address
rules. No packet goes beyond the namespaces the tests made."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from sandport import Sandbox

from .._server import ServerProcess
from ..web_world import FETCH, WILD, WebWorld, fetch, trust, web_world
from ._world import MakeSandbox, reach

Servers = Callable[..., ServerProcess]
NOT_THE_INTERNET = "198.18.0.0/15"  # where the web is


@pytest.fixture(scope="module")
def web() -> Iterator[WebWorld]:
    world = web_world()
    yield world
    world.stop()


@pytest.fixture(autouse=True)
def _names(web: WebWorld) -> Iterator[None]:
    web.reset_names()  # a test may have pointed names elsewhere
    yield


def named(make: MakeSandbox, web: WebWorld, **network: object) -> Sandbox:
    sb = make(network=network)
    trust(sb, web)
    return sb


def answer(address: str, scheme: str, name: str, host: str | None = None,
           path: str = "/") -> str:
    """What the web says when ``name`` reached it on ``address``."""
    sni = name if scheme == "https" else None
    return f"web {address} sni={sni} host={host or name} path={path}"


def network_log(srv: ServerProcess, sb: Sandbox) -> list[dict[str, object]]:
    with srv.client() as api:
        got = api.get(f"/api/sandbox/{sb.id}/network/log")
        assert got.status_code == 200, got.text
        entries: list[dict[str, object]] = got.json()["entries"]
        return entries


def test_exact_and_wildcard_names_over_https_and_http(make_sandbox: MakeSandbox, web: WebWorld,
                                                      server: ServerProcess) -> None:
    sb = named(make_sandbox, web, allowOut=["allowed.web.test", f"*.{WILD}"])
    before = len(web.requests())
    assert fetch(sb, ("https", web.allowed, "allowed.web.test"),
                 ("http", web.allowed, "allowed.web.test"),
                 ("https", web.other, f"a.{WILD}"),
                 ("https", web.other, f"deep.b.{WILD}"),
                 ("http", web.other, f"a.{WILD}"),
                 ("https", web.other, WILD),  # *. matches below the name, not the name
                 ("https", web.denied, "denied.web.test"),
                 ("http", web.denied, "denied.web.test"),
                 ("http", web.allowed, "ALLOWED.web.test.")) == [
        answer(web.allowed, "https", "allowed.web.test"),
        answer(web.allowed, "http", "allowed.web.test"),
        answer(web.other, "https", f"a.{WILD}"),
        answer(web.other, "https", f"deep.b.{WILD}"),
        answer(web.other, "http", f"a.{WILD}"),
        "denied", "denied", "status 403",
        answer(web.allowed, "http", "ALLOWED.web.test."),
    ]
    seen = web.requests()[before:]
    assert len(seen) == 6 and not [r for r in seen if "denied" in r or f"={WILD} " in r]
    # only allowed names resolve
    assert sb.exec("getent hosts allowed.web.test").stdout.split()[0] == web.allowed
    assert sb.exec(f"getent hosts a.{WILD}").stdout.split()[0] == web.other
    for refused in ("denied.web.test", WILD, "allowed.test"):
        assert sb.exec(f"getent hosts {refused}").exit_code == 2, refused
    assert sb.exec("getent ahostsv6 allowed.web.test").stdout.strip() == ""  # no AAAA
    log = network_log(server, sb)
    kinds = {(e["kind"], e["name"], e["port"]) for e in log}
    assert {("connection", "denied.web.test", 443), ("connection", "denied.web.test", 80),
            ("connection", WILD, 443), ("lookup", "denied.web.test", 53)} <= kinds, log
    assert all(e["rule"] and e["at"] for e in log)


def test_an_allowed_name_never_reaches_the_address_dialled(make_sandbox: MakeSandbox,
                                                           web: WebWorld) -> None:
    """The sandbox dials an address it may not reach and names an allowed host: the gate
    connects to the name's own address instead, never to the one dialled."""
    sb = named(make_sandbox, web, allowOut=["allowed.web.test"])
    before = len(web.requests())
    assert fetch(sb, ("https", web.stray, "allowed.web.test"),
                 ("http", web.stray, "allowed.web.test"),
                 ("http", web.denied, "allowed.web.test"),
                 ("https", "169.254.169.254", "allowed.web.test")) == [
        answer(web.allowed, "https", "allowed.web.test"),
        answer(web.allowed, "http", "allowed.web.test"),
        answer(web.allowed, "http", "allowed.web.test"),
        "blocked 113",  # a never-allowed address is closed in the sandbox, before the gate
    ]
    seen = web.requests()[before:]
    assert len(seen) == 3 and all(r.startswith(f"{web.allowed} ") for r in seen), seen
    # nothing but 80 and 443 goes through the gate: the stray address stays closed
    assert reach(sb, web.stray, web.allowed, port=22) == ["blocked", "blocked"]


def test_other_ports_and_quic_fall_back_to_address_rules(make_sandbox: MakeSandbox,
                                                         web: WebWorld,
                                                         server: ServerProcess) -> None:
    sb = named(make_sandbox, web, allowOut=["allowed.web.test", f"{web.other}/32"])
    assert reach(sb, web.allowed, web.other, port=22) == ["blocked", f"ssh {web.other}"]
    quic = sb.exec(f"""python3 - <<'PY'
import socket
for address in ("{web.allowed}", "{web.other}"):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
    try:
        u.sendto(b"initial", (address, 443)); print(u.recv(100).decode())
    except OSError as e:
        print("no answer", type(e).__name__)
PY""")
    # UDP 443 (QUIC) to the allowed name's address is refused; the CIDR's is let through
    lines = quic.stdout.splitlines()
    assert lines[0].startswith("no answer") and lines[1] == "echo initial", quic
    # an allowed CIDR is an address rule: any name there, on 443 too
    assert fetch(sb, ("https", web.other, "other.web.test"),
                 ("https", web.other, "denied.web.test")) == [
        answer(web.other, "https", "other.web.test"),
        answer(web.other, "https", "denied.web.test")]
    # what the sandbox's own filter refused is in its network log too
    refused = {(e["address"], e["port"], e["rule"]) for e in network_log(server, sb)
               if e["kind"] == "connection" and e["name"] is None}
    not_allowed = f"not in allowOut (not the internet: {NOT_THE_INTERNET})"
    assert {(web.allowed, 22, not_allowed), (web.allowed, 443, f"{not_allowed} (udp)")} \
        <= refused, refused


def test_rebinding_an_allowed_name_reaches_nothing(make_sandbox: MakeSandbox, web: WebWorld,
                                                   server: ServerProcess) -> None:
    sb = named(make_sandbox, web, allowOut=["allowed.web.test"])
    other = make_sandbox()
    host_end = sb.exec("getent hosts host.sandport.internal").stdout.split()[0]
    other_ip = other.exec("hostname -i").stdout.strip()
    refusals = []
    for target in ("169.254.169.254", host_end, "127.0.0.1", other_ip, "224.0.0.1"):
        web.point("allowed.web.test", target)
        assert fetch(sb, ("https", web.allowed, "allowed.web.test"),
                     ("http", web.allowed, "allowed.web.test")) == ["denied", "status 403"], target
        refusals.append(target)
    log = [e for e in network_log(server, sb) if e["kind"] == "connection"]
    assert len(log) >= 2 * len(refusals)
    assert any("never" in str(e["rule"]) for e in log), log
    web.point("allowed.web.test", web.allowed)  # and back: the same sandbox gets through
    assert fetch(sb, ("https", web.allowed, "allowed.web.test")) == [
        answer(web.allowed, "https", "allowed.web.test")]


def test_never_allow_beats_an_allowed_name(fresh_server: Servers, web: WebWorld) -> None:
    srv = fresh_server(env={"SANDPORT_NEVER_ALLOW": f"169.254.169.254/32,{web.allowed}/32"})
    with srv.sandboxes() as make:
        sb = named(make, web, allowOut=["allowed.web.test", "other.web.test"])
        # dialled, the closed address is refused in the sandbox; named, by the gate
        assert fetch(sb, ("https", web.allowed, "allowed.web.test"),
                     ("https", web.stray, "allowed.web.test"),
                     ("https", web.other, "other.web.test")) == [
            "blocked 113", "denied", answer(web.other, "https", "other.web.test")]
        # an allowed name that moves into the closed range is closed too
        web.point("other.web.test", web.allowed)
        assert fetch(sb, ("http", web.other, "other.web.test")) == ["status 403"]
        with srv.client() as api:
            refused = api.put(f"/api/sandbox/{sb.id}/network",
                              json={"allowOut": [f"{web.allowed}/32"]})
            assert refused.status_code == 403 and "allowOut[0]" in refused.json()["message"]


HOLD = r"""
import socket, sys, time
exec(open("/tmp/fetch.py").read())
kind, name, address, out = sys.argv[1:5]
s, why = connect(address, 443 if kind == "https" else 80)
if kind == "https":
    s = ctx.wrap_socket(s, server_hostname=name)
s.settimeout(30)
def ask():
    s.sendall(f"GET /kept HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    return answer(s)
with open(out, "a") as f:
    print(ask(), file=f, flush=True)
    while not __import__("os").path.exists(out + ".go"):
        time.sleep(0.05)
    print(ask(), file=f, flush=True)
"""


def hold(sb: Sandbox, kind: str, name: str, address: str) -> str:
    """Open a kept-alive connection from ``sb``, ask once; it asks again when told
    (``go``). The file it writes its answers to."""
    out = f"/tmp/held-{kind}-{name}"
    sb.exec(f"setsid python3 /tmp/hold.py {kind} {name} {address} {out} >/dev/null 2>&1 &")
    return out


def lines(sb: Sandbox, path: str, count: int) -> list[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = sb.exec(f"cat {path} 2>/dev/null").stdout.splitlines()
        if len(got) >= count:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{path}: {got}")


def test_tightening_a_policy_closes_the_relays_it_now_forbids(make_sandbox: MakeSandbox,
                                                              web: WebWorld,
                                                              server: ServerProcess) -> None:
    mark = server.log_size()
    sb = named(make_sandbox, web, allowOut=["allowed.web.test", "other.web.test",
                                            f"{web.denied}/32"])
    sb.files.write("/tmp/fetch.py", FETCH)
    sb.files.write("/tmp/hold.py", HOLD)
    held = [hold(sb, "https", "allowed.web.test", web.allowed),  # through the gate
            hold(sb, "http", "allowed.web.test", web.allowed),
            hold(sb, "https", "denied.web.test", web.denied),  # by address, not the gate
            hold(sb, "http", "denied.web.test", web.denied),
            hold(sb, "https", "other.web.test", web.other)]
    for path in held:
        assert lines(sb, path, 1)[0].startswith("web "), path
    with server.client() as api:
        changed = api.put(f"/api/sandbox/{sb.id}/network", json={"allowOut": ["other.web.test"]})
        assert changed.status_code == 200, changed.text
        assert changed.json()["network"]["allowOut"] == ["other.web.test"]
    for path in held:
        sb.exec(f"touch {path}.go")
    *cut, kept = (lines(sb, path, 2)[1] for path in held)
    # a flow the address rules let by is now the gate's, which never saw it: cut too
    assert [c.split(" ")[0] for c in cut] == ["closed"] * 4, cut
    assert kept == answer(web.other, "https", "other.web.test", path="/kept")
    assert fetch(sb, ("https", web.allowed, "allowed.web.test")) == ["denied"]
    server.assert_clean_log(since=mark)


def test_every_request_head_on_port_80_is_checked(make_sandbox: MakeSandbox,
                                                  web: WebWorld) -> None:
    sb = named(make_sandbox, web, allowOut=["allowed.web.test"])
    before = len(web.requests())
    said = sb.exec(f"""python3 - <<'PY'
import socket
def head(host, extra=""):
    return f"GET /{{host}} HTTP/1.1\\r\\nHost: {{host}}\\r\\n{{extra}}\\r\\n".encode()
def talk(*sends):
    s = socket.create_connection(("{web.allowed}", 80), timeout=5)
    out = []
    for data in sends:
        try:
            s.sendall(data)
            got = s.recv(65536)
        except OSError:
            got = b""
        out.append(got.split(b"\\r\\n")[0].decode() if got else "closed")
    return out
# kept alive: the second request names a denied host
print(talk(head("allowed.web.test"), head("denied.web.test")))
# both in one write
print(talk(head("allowed.web.test") + head("denied.web.test")))
# an upgrade first: after its 101 the bytes are the application's, echoed
print(talk(head("allowed.web.test", "Upgrade: echo\\r\\nConnection: Upgrade\\r\\n"),
           head("denied.web.test")))
# an upgrade as a later request is refused
print(talk(head("allowed.web.test"),
           head("allowed.web.test", "Upgrade: echo\\r\\nConnection: Upgrade\\r\\n")))
# CONNECT is no request a web server needs
print(talk(b"CONNECT denied.web.test:443 HTTP/1.1\\r\\nHost: allowed.web.test\\r\\n\\r\\n"))
PY""")
    assert said.exit_code == 0, said.stderr
    assert said.stdout.splitlines() == [
        "['HTTP/1.1 200 OK', 'closed']",
        "['HTTP/1.1 403 Forbidden']",
        "['HTTP/1.1 101 Switching Protocols', 'GET /denied.web.test HTTP/1.1']",
        "['HTTP/1.1 200 OK', 'closed']",
        "['HTTP/1.1 403 Forbidden']",
    ], said.stdout
    seen = web.requests()[before:]
    assert [r.split(" ", 3)[3] for r in seen] == [
        "host=allowed.web.test /allowed.web.test"] * 3, seen


def test_names_with_the_internet_open_and_everything_denied(make_sandbox: MakeSandbox,
                                                            web: WebWorld) -> None:
    """The e2b SDK's way of saying "only these names": internet access on, 0.0.0.0/0 in
    denyOut, the names in allowOut."""
    sb = named(make_sandbox, web, allowInternetAccess=True, denyOut=["0.0.0.0/0"],
               allowOut=["allowed.web.test"])
    assert fetch(sb, ("https", web.allowed, "allowed.web.test"),
                 ("https", web.other, "other.web.test"),
                 ("http", web.stray, "other.web.test")) == [
        answer(web.allowed, "https", "allowed.web.test"), "denied", "status 403"]
    assert reach(sb, web.allowed, port=22) == ["blocked"]
    assert sb.exec("getent hosts other.web.test").exit_code == 2


def test_the_gate_survives_a_server_restart(fresh_server: Servers, web: WebWorld) -> None:
    srv = fresh_server()
    with srv.sandboxes() as make:
        sb = named(make, web, allowOut=["allowed.web.test"])
        asks = (("https", web.allowed, "allowed.web.test"), ("http", web.stray, "allowed.web.test"),
                ("https", web.other, "other.web.test"))
        expected = [answer(web.allowed, "https", "allowed.web.test"),
                    answer(web.allowed, "http", "allowed.web.test"), "denied"]
        assert fetch(sb, *asks) == expected
        srv.stop()
        srv.start()
        assert fetch(sb, *asks) == expected
        assert sb.exec("getent hosts other.web.test").exit_code == 2
        srv.crash()
        srv.start()
        assert fetch(sb, *asks) == expected
    srv.assert_clean_log()


# -- what a hostile sandbox tries -------------------------------------------------------------
FLOOD = r"""
import socket, sys, time
target, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
held = []
for i in range(count):
    s = socket.socket(); s.setblocking(False)
    s.connect_ex((target, 443 if i % 2 else 80))
    held.append(s)
open(out, "w").write("opened\n")
time.sleep(60)
"""


def test_a_sandbox_flooding_the_gate_gets_its_share_and_no_more(
        make_sandbox: MakeSandbox, web: WebWorld, server: ServerProcess) -> None:
    from sandport.runtime.gate import MAX_CONNECTIONS
    flooder = named(make_sandbox, web, allowOut=["allowed.web.test"])
    other = named(make_sandbox, web, allowOut=["allowed.web.test"])
    base = server.open_sockets()
    flooder.files.write("/tmp/flood.py", FLOOD)
    flooder.exec(f"ulimit -n 4096; setsid python3 /tmp/flood.py {web.denied} 900 "
                 "/tmp/flood.out >/dev/null 2>&1 &")
    assert lines(flooder, "/tmp/flood.out", 1) == ["opened"]
    time.sleep(1)
    held = server.open_sockets() - base
    # its connections beyond its share were closed at once; the others are served
    assert held <= MAX_CONNECTIONS + 20, held
    assert fetch(other, ("https", web.allowed, "allowed.web.test")) == [
        answer(web.allowed, "https", "allowed.web.test")]
    with server.client() as api:
        assert api.get("/api/health").status_code == 200
    flooder.exec("pkill -f flood.py")


def test_the_gate_never_reaches_the_host_nor_other_servers_sandboxes(
        make_sandbox: MakeSandbox, web: WebWorld, server: ServerProcess,
        fresh_server: Servers) -> None:
    import socket
    import threading
    listener = socket.socket()  # a service of the host's own, on the web's veth
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((web.gateway, 80))
    listener.listen(8)
    reached: list[object] = []
    threading.Thread(target=lambda: reached.append(listener.accept()), daemon=True).start()
    neighbour = fresh_server(env={"SANDPORT_SUBNET": "10.78.0.0/16"})
    try:
        with neighbour.sandboxes() as make:
            victim = make(network={"allowInternetAccess": True})
            victim.exec("setsid python3 -m http.server 80 >/dev/null 2>&1 &")
            victim_ip = victim.exec("hostname -i").stdout.strip()
            sb = named(make_sandbox, web, allowOut=["allowed.web.test"])
            for target in (web.gateway, victim_ip):
                web.point("allowed.web.test", target)
                assert fetch(sb, ("http", web.stray, "allowed.web.test"),
                             ("https", web.stray, "allowed.web.test")) == [
                    "status 403", "denied"], target
            rules = {e["rule"] for e in network_log(server, sb) if e["kind"] == "connection"}
            assert {"never allowed (this host)", "never allowed (sandboxes: 10.78.0.0/16)"} \
                <= rules, rules
    finally:
        listener.close()
    assert reached == []


def test_a_later_request_head_that_never_ends_is_cut(make_sandbox: MakeSandbox,
                                                     web: WebWorld) -> None:
    sb = named(make_sandbox, web, allowOut=["allowed.web.test"])
    before = len(web.requests())
    said = sb.exec(f"""python3 - <<'PY'
import socket
s = socket.create_connection(("{web.allowed}", 80), timeout=10)
s.sendall(b"GET /first HTTP/1.1\\r\\nHost: allowed.web.test\\r\\n\\r\\n")
print(s.recv(65536).split(b"\\r\\n")[0].decode())
s.sendall(b"GET / HTTP/1.1\\r\\nHost: allowed.web.test\\r\\nX-Big: ")
try:
    for _ in range(100):
        s.sendall(b"a" * 4096)
    print("closed" if s.recv(100) == b"" else "answered")
except OSError:
    print("closed")
PY""")
    assert said.stdout.splitlines() == ["HTTP/1.1 200 OK", "closed"], said
    assert len(web.requests()) - before == 1


def test_a_gate_that_stops_with_connections_waiting_logs_no_error(
        make_sandbox: MakeSandbox, web: WebWorld, server: ServerProcess) -> None:
    mark = server.log_size()
    sb = named(make_sandbox, web, allowOut=["allowed.web.test"])
    sb.files.write("/tmp/flood.py", FLOOD)
    sb.exec(f"setsid python3 /tmp/flood.py {web.denied} 40 /tmp/flood.out >/dev/null 2>&1 &")
    assert lines(sb, "/tmp/flood.out", 1) == ["opened"]
    time.sleep(0.5)
    with server.client() as api:  # no name left: the gate stops, its connections with it
        changed = api.put(f"/api/sandbox/{sb.id}/network", json={"allowOut": [web.other]})
        assert changed.status_code == 200
    sb.exec("pkill -f flood.py")
    server.assert_clean_log(since=mark)


def test_the_gates_lookups_are_rate_limited(make_sandbox: MakeSandbox, web: WebWorld,
                                            server: ServerProcess) -> None:
    from sandport.runtime.gate import LOOKUP_BURST, LOOKUP_RATE

    from ..dns_world import dns_world
    sb = named(make_sandbox, web, allowOut=[f"*.{WILD}"])
    asked_before = len(dns_world().queries())
    started = time.monotonic()
    said = sb.exec(f"""python3 - <<'PY'
import socket, ssl
ctx = ssl.create_default_context(); denied = 0
for i in range(300):
    s = socket.create_connection(("{web.other}", 443), timeout=5)
    try:
        ctx.wrap_socket(s, server_hostname=f"r{{i}}.{WILD}")
    except OSError:
        denied += 1
    s.close()
print(denied)
PY""")
    elapsed = time.monotonic() - started
    assert said.stdout.strip() == "300", said
    upstream = [q for q in dns_world().queries()[asked_before:]
                if q.endswith(f".{WILD}") and q.startswith("r")]
    assert len(upstream) <= LOOKUP_BURST + LOOKUP_RATE * elapsed + 10, len(upstream)
    assert any("too many names" in str(e["rule"]) for e in network_log(server, sb))
