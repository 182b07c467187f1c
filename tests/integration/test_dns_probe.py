"""Attacks on the sandboxes' resolvers (runtime/dns.py) and the operator's network caps
(control/netcaps.py), kept as regression tests: each asserts what a user or an operator
would check, and passes once the weakness it found is fixed.

The upstream is the tests' dnsmasq (tests/dns_world.py), or a silent one of the test's own
on loopback; the "world" is the egress tests' namespace (tests/integration/_world.py)."""

from __future__ import annotations

import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from sandport import Sandbox

from .._server import ServerProcess
from ..dns_world import NAMES, dns_world
from ._world import World, reach

MakeSandbox = Callable[..., Sandbox]
Servers = Callable[..., ServerProcess]
OUT = {"allowInternetAccess": True}

# Helpers for scripts run inside a python sandbox: build queries, talk UDP and TCP.
LIB = r"""
import os, socket, struct, sys, time
def nameserver():
    return open("/etc/resolv.conf").read().split()[1]
def host_end():
    return [l.split()[0] for l in open("/etc/hosts") if "host.sandport.internal" in l][0]
def qname(name):
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
def query(name, qtype=1, ident=0x1234, ar=b"", arcount=0):
    return (struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, arcount) + qname(name)
            + struct.pack("!HH", qtype, 1) + ar)
def udp_ask(data, server=None, wait=2.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(wait)
    try:
        s.sendto(data, (server or nameserver(), 53))
        return s.recv(65535)
    except OSError:
        return None
    finally:
        s.close()
def framed(m):
    return struct.pack("!H", len(m)) + m
def read_framed(s):
    head = b""
    while len(head) < 2:
        c = s.recv(2 - len(head))
        if not c:
            return None
        head += c
    n = struct.unpack("!H", head)[0]; data = b""
    while len(data) < n:
        c = s.recv(n - len(data))
        if not c:
            return None
        data += c
    return data
def rcode(reply):
    return None if reply is None else reply[3] & 0xF
"""


def run_py(sb: Sandbox, code: str, timeout: float = 120) -> str:
    sb.files.write("/tmp/probe.py", LIB + code)
    ran = sb.exec("python3 /tmp/probe.py", timeout=timeout)
    assert ran.exit_code == 0, ran.stderr
    return ran.stdout


def fields(out: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def host_end(sb: Sandbox) -> str:
    hosts = sb.exec("cat /etc/hosts").stdout
    return next(line.split()[0] for line in hosts.splitlines()
                if "host.sandport.internal" in line)


def input_rules() -> str:
    return subprocess.run(["iptables", "-w", "-S", "SANDPORT-IN"], capture_output=True,
                          text=True, check=True).stdout


# -- reaching what is not its own resolver --------------------------------------------------

def test_no_other_host_port_and_no_other_resolver(make_sandbox: MakeSandbox,
                                                  server: ServerProcess) -> None:
    """Through its gateway a sandbox reaches port 53 only (its resolver), even with the
    gateway in its allowOut; another sandbox's resolver answers neither UDP nor TCP."""
    other = make_sandbox(network=OUT)
    theirs = host_end(other)
    prober = make_sandbox(network={**OUT, "allowOut": ["10.77.0.0/16"]})
    gateway = host_end(prober)
    # Listeners of "the host" on the prober's gateway address (other ports than 53).
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((gateway, 0))
    tcp.listen(8)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((gateway, 0))
    udp.settimeout(0.5)
    try:
        out = run_py(prober, f"""
import errno
def tcp(host, port):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); return "open"
    except OSError as e:
        return "closed:" + str(e.errno)
print("gw-tcp", tcp("{gateway}", {tcp.getsockname()[1]}))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"hello", ("{gateway}", {udp.getsockname()[1]}))
    print("gw-udp", "sent")
except OSError as e:
    print("gw-udp", "refused:" + str(e.errno))
# A spoofed source (IP_FREEBIND needs no capability): the resolver must never answer it.
f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
f.setsockopt(socket.SOL_IP, 15, 1)
try:
    f.bind(("198.51.100.77", 0)); f.sendto(query("allowed.test"), ("{gateway}", 53))
    print("spoof", "sent")
except OSError as e:
    print("spoof", "refused:" + str(e.errno))
print("theirs-udp", rcode(udp_ask(query("allowed.test"), "{theirs}")))
print("theirs-tcp", tcp("{theirs}", 53))
print("own-tcp", tcp("{gateway}", 53))
""")
        print(out)
        got = fields(out)
        assert got["gw-tcp"].startswith("closed"), out
        assert got["theirs-udp"] == "None" and got["theirs-tcp"].startswith("closed"), out
        assert got["own-tcp"] == "open", out
        with pytest.raises(TimeoutError):
            udp.recvfrom(100)
    finally:
        tcp.close()
        udp.close()
    server.assert_clean_log()


def test_resolv_conf_cannot_be_changed_from_inside(make_sandbox: MakeSandbox,
                                                   server: ServerProcess) -> None:
    sb = make_sandbox(network=OUT)
    before = sb.exec("cat /etc/resolv.conf").stdout
    for attack in ("echo nameserver 192.0.2.1 > /etc/resolv.conf",
                   "mount -o remount,rw /etc/resolv.conf",
                   "umount /etc/resolv.conf",
                   "head -c 1000000 /dev/zero >> /etc/resolv.conf"):
        assert sb.exec(attack).exit_code != 0, attack
    assert sb.exec("cat /etc/resolv.conf").stdout == before
    on_host = (server.data_dir / "sandboxes" / sb.id / "resolv.conf").read_text()
    assert on_host == before


# -- malformed and hostile queries ----------------------------------------------------------

def test_hostile_udp_queries_are_survived(make_sandbox: MakeSandbox,
                                          server: ServerProcess) -> None:
    sb = make_sandbox(network=OUT)
    out = run_py(sb, r"""
def hdr(ident, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)
opt = lambda size, rdata=b"": b"\0" + struct.pack("!HHIH", 41, size, 0, len(rdata)) + rdata
cases = {
    "empty": b"",
    "eleven": b"\0" * 11,
    "qd0": hdr(1, qd=0),
    "update": hdr(2, flags=0x2800) + qname("allowed.test") + b"\0\1\0\1",
    "pointer-self": hdr(3) + b"\xc0\x0c\0\1\0\1",
    "pointer-forward": hdr(4) + b"\x01a\xc0\x20\0\1\0\1" + b"\0" * 40,
    "label64": hdr(5) + b"\x40" + b"a" * 64 + b"\0\0\1\0\1",
    "name300": hdr(6) + (b"\x3f" + b"a" * 63) * 5 + b"\0\0\1\0\1",
    "no-type": hdr(7) + qname("allowed.test"),
    "over-max": query("allowed.test") + b"\0" * 5000,
    "answers": hdr(8, an=1) + qname("allowed.test") + b"\0\1\0\1",
}
for name, data in cases.items():
    print(name, rcode(udp_ask(data, wait=1)))
# Accepted but odd: EDNS with a 64 KiB payload and a big option, a bogus additional
# section, trailing junk, ANY; each is forwarded and some answer comes back.
big_opt = query("allowed.test", ident=9, ar=opt(65535, b"\0\x0a\x0b\xb8" + b"x" * 3000), arcount=1)
# (the upstream may ignore one: the resolver says SERVFAIL after its 2 s, so wait longer)
print("edns-huge", rcode(udp_ask(big_opt, wait=6)))
print("bogus-ar", rcode(udp_ask(query("allowed.test", ident=10, ar=b"\xff" * 20, arcount=3),
                                wait=6)))
print("trailing", rcode(udp_ask(query("allowed.test", ident=11) + b"junk", wait=6)))
print("any", rcode(udp_ask(query("allowed.test", qtype=255, ident=12), wait=6)))
good = udp_ask(query("allowed.test", ident=13))
print("good", rcode(good), good[:2] == b"\0\x0d")
""")
    got = fields(out)
    dropped = ("empty", "eleven", "qd0", "update", "pointer-self", "pointer-forward",
               "label64", "name300", "no-type", "over-max", "answers")
    assert {k: got[k] for k in dropped} == dict.fromkeys(dropped, "None"), out
    for k in ("edns-huge", "bogus-ar", "trailing", "any"):
        assert got[k] != "None", out  # answered (whatever the upstream said), not hung
    assert got["good"] == "0 True", out
    assert sb.exec("getent hosts allowed.test").stdout.split()[0] == NAMES["allowed.test"]
    server.assert_clean_log()


def test_reverse_names_of_the_subnet_never_go_upstream_whatever_the_type(
        make_sandbox: MakeSandbox) -> None:
    """Not only PTR: an ANY or TXT query for a sandbox's reverse name, or a name under it,
    leaks the sandbox subnet to the upstream just the same."""
    sb = make_sandbox(network=OUT)
    before = len(dns_world().queries())
    out = run_py(sb, r"""
ip = [l.split()[0] for l in open("/etc/hosts") if l.strip().endswith(socket.gethostname())][0]
rev = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
for label, name, qtype in (("ptr", rev, 12), ("any", rev, 255), ("txt", rev, 16),
                           ("under", "_x._tcp." + rev, 12), ("upper", rev.upper(), 12)):
    print(label, rcode(udp_ask(query(name, qtype=qtype))))
""")
    leaked = [q for q in dns_world().queries()[before:] if q.lower().endswith(".in-addr.arpa")]
    assert leaked == [], (leaked, out)


# -- DNS over TCP ---------------------------------------------------------------------------

def test_tcp_abuse_leaves_the_resolver_serving(fresh_server: Servers) -> None:
    srv = fresh_server()
    sb = Sandbox.create("python", api_key=srv.api_key, base_url=srv.base_url, network=OUT)
    try:
        base = srv.open_sockets()
        out = run_py(sb, r"""
server = nameserver()
held, refused = [], 0
for i in range(40):  # many connections: a per-sandbox limit
    s = socket.create_connection((server, 53), timeout=2)
    held.append(s)
time.sleep(0.5)
for s in held:
    s.settimeout(0.2)
    try:
        refused += s.recv(1) == b""
    except socket.timeout:
        pass
    except OSError:
        refused += 1
print("refused", refused)
for s in held:
    s.close()
time.sleep(0.5)
def conn():
    return socket.create_connection((server, 53), timeout=15)
s = conn(); s.sendall(b"\xff\xff" + b"x" * 100); s.close()  # huge prefix, then gone
s = conn(); s.sendall(b"\0\0"); s.settimeout(3)
print("zero", s.recv(10) == b"")
s = conn(); s.sendall(framed(b"\0\1\1\0\0\1\0\0\0\0\0\0\xc0\x0c\0\1\0\1")); s.settimeout(3)
print("pointer", s.recv(10) == b"")
s = conn()  # pipelined: three queries in one segment, three answers in order
s.sendall(b"".join(framed(query("allowed.test", ident=i)) for i in (21, 22, 23)))
print("pipelined", [r[:2] for r in (read_framed(s) for _ in range(3))]
      == [b"\0\x15", b"\0\x16", b"\0\x17"])
s.close()
s = conn(); s.sendall(b"\0")  # slowloris: one byte of a length, then nothing
start = time.monotonic(); s.settimeout(30)
try:
    gone = s.recv(10) == b""
except OSError:
    gone = True
print("slow", gone, round(time.monotonic() - start) <= 12)
s = conn(); s.sendall(framed(query("other.test", ident=31)))
print("after", rcode(read_framed(s)))
""")
        got = fields(out)
        assert int(got["refused"]) >= 40 - 16, out
        assert got["zero"] == "True" and got["pointer"] == "True", out
        assert got["pipelined"] == "True" and got["slow"] == "True True", out
        assert got["after"] == "0", out
        deadline = time.monotonic() + 15
        while srv.open_sockets() > base + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert srv.open_sockets() <= base + 2
    finally:
        sb.stop()
        sb.close()
    srv.assert_clean_log()


def test_closing_the_way_out_ends_an_open_dns_over_tcp_connection(
        make_sandbox: MakeSandbox, server: ServerProcess) -> None:
    """A connection to the resolver opened while the sandbox could go out must not go on
    resolving names (a DNS tunnel to the world) once its policy says no way out."""
    sb = make_sandbox(network=OUT)
    after = f"after-cut-{secrets.token_hex(4)}.test"
    sb.files.write("/tmp/held.py", LIB + f"""
s = socket.create_connection((nameserver(), 53), timeout=5)
s.sendall(framed(query("allowed.test", ident=1)))
print("first", rcode(read_framed(s)), flush=True)
open("/tmp/first", "w").close()
n = 2
while not os.path.exists("/tmp/go"):  # keep it alive (the idle limit is 10 s)
    time.sleep(2)
    s.sendall(framed(query("allowed.test", ident=n))); read_framed(s); n += 1
try:
    s.sendall(framed(query("{after}", ident=99)))
    reply = read_framed(s)
    print("second", "answered" if reply else "closed", flush=True)
except OSError as exc:
    print("second", "cut", type(exc).__name__, flush=True)
""")
    held = sb.processes.start("python3 -u /tmp/held.py")
    deadline = time.monotonic() + 20
    while sb.exec("test -e /tmp/first").exit_code != 0 and time.monotonic() < deadline:
        time.sleep(0.3)
    with server.client() as api:
        changed = api.put(f"/api/sandbox/{sb.id}/network", json={"allowInternetAccess": False})
        assert changed.status_code == 200
    sb.files.write("/tmp/go", "1")
    out = held.wait(timeout=40).stdout
    reached = after in dns_world().queries()
    print(out, "reached upstream:", reached)
    assert "first 0" in out, out
    assert "second answered" not in out and not reached, out


# -- a dead upstream, a flood ---------------------------------------------------------------

@pytest.fixture
def silent_upstream() -> Iterator[str]:
    """An upstream on loopback that takes queries (UDP and TCP) and never answers."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", port))
    tcp.listen(1)
    yield f"127.0.0.1:{port}"
    udp.close()
    tcp.close()


FLOOD = r"""
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server = nameserver()
for batch in range(20):  # 2000 queries in about two seconds
    for i in range(100):
        s.sendto(query("flood%d.test" % (batch * 100 + i), ident=batch * 100 + i),
                 (server, 53))
    time.sleep(0.1)
print("sent")
"""


def test_a_dead_upstream_does_not_pile_up_sockets(
        fresh_server: Servers, silent_upstream: str) -> None:
    srv = fresh_server(env={"SANDPORT_DNS_UPSTREAMS": silent_upstream})
    sb = Sandbox.create("python", api_key=srv.api_key, base_url=srv.base_url, network=OUT)
    try:
        base = srv.open_sockets()
        sb.files.write("/tmp/flood.py", LIB + FLOOD)
        flood = sb.processes.start("python3 /tmp/flood.py")
        peak, slowest = base, 0.0
        until = time.monotonic() + 6
        with srv.client() as api:
            while time.monotonic() < until:
                peak = max(peak, srv.open_sockets())
                started = time.monotonic()
                api.get("/api/health")
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.05)
        flood.wait(timeout=30)
        deadline = time.monotonic() + 10
        while srv.open_sockets() > base + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = srv.open_sockets()
        print(f"sockets: base {base}, peak {peak}, after {after}; "
              f"slowest health {slowest:.3f}s")
        # A bounded number of queries in flight per sandbox, whatever the upstream does.
        assert peak - base <= 100, (base, peak)
        assert slowest < 1.0
        assert after <= base + 2
    finally:
        sb.stop()
        sb.close()
    srv.assert_clean_log()


JUNK = r"""
import multiprocessing
def blast(seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server, n, end = nameserver(), 0, time.monotonic() + seconds
    q = query("allowed.test")
    while time.monotonic() < end:
        try:
            s.sendto(q, (server, 53)); n += 1
        except OSError:
            pass
    return n
with multiprocessing.Pool(2) as pool:
    print("sent", sum(pool.map(blast, [6, 6])))
"""


def test_a_flat_out_flood_does_not_stall_the_server(make_sandbox: MakeSandbox,
                                                    server: ServerProcess) -> None:
    """One sandbox sending queries as fast as it can (all refused by its rate limit):
    the API and another sandbox's lookups stay quick."""
    flooder = make_sandbox(network=OUT, vcpus=2)
    other = make_sandbox(network=OUT)
    flooder.files.write("/tmp/junk.py", LIB + JUNK)
    blast = flooder.processes.start("python3 /tmp/junk.py")
    time.sleep(1)
    slowest, lookups = 0.0, []
    with server.client() as api:
        until = time.monotonic() + 4
        while time.monotonic() < until:
            started = time.monotonic()
            api.get("/api/health")
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
    for _ in range(3):
        started = time.monotonic()
        found = other.exec("getent hosts allowed.test")
        lookups.append((found.exit_code, round(time.monotonic() - started, 2)))
    sent = blast.wait(timeout=60).stdout
    print(f"flood {sent.strip()}; slowest health {slowest:.3f}s; other's lookups {lookups}")
    assert slowest < 1.0, slowest
    assert all(code == 0 and took < 2.0 for code, took in lookups), lookups


# -- the resolver's address must be the resolver --------------------------------------------

def test_port_53_of_the_gateway_is_open_only_while_the_resolver_serves_it(
        make_sandbox: MakeSandbox, server: ServerProcess) -> None:
    """If the resolver cannot start (here: something else holds the address's port 53,
    as a host DNS server listening on every address would), the host must not open port
    53 from the sandbox to whatever listens there."""
    sb = make_sandbox()  # no way out: no resolver yet
    gateway = host_end(sb)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind((gateway, 53))
    squatter.settimeout(1)
    try:
        with server.client() as api:
            changed = api.put(f"/api/sandbox/{sb.id}/network", json=OUT)
        run_py(sb, f'udp_ask(query("allowed.test"), "{gateway}", wait=1)')
        try:
            data, _ = squatter.recvfrom(4096)
        except TimeoutError:
            data = b""
        assert data == b"", f"a host process on {gateway}:53 got the sandbox's query " \
                            f"(PUT said {changed.status_code})"
    finally:
        squatter.close()
    veth = "spv" + sb.id[:12]
    served = sb.exec("cat /etc/resolv.conf").stdout.split()[1] == gateway
    assert served or veth not in input_rules()


# -- policy changes racing, restarts --------------------------------------------------------

def test_racing_policy_changes_end_consistent(make_sandbox: MakeSandbox,
                                              server: ServerProcess) -> None:
    sb = make_sandbox(network=OUT)
    url = f"{server.base_url}/api/sandbox/{sb.id}/network"
    codes: list[int] = []

    def flip(n: int) -> None:
        with httpx.Client(headers={"x-api-key": server.api_key}, timeout=60) as c:
            for i in range(4):
                codes.append(c.put(url, json={"allowInternetAccess": (n + i) % 2 == 0})
                             .status_code)

    threads = [threading.Thread(target=flip, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(codes) == {200}, codes
    veth = "spv" + sb.id[:12]
    with server.client() as api:
        assert api.put(url, json=OUT).status_code == 200
        assert sb.exec("getent hosts allowed.test").exit_code == 0
        assert input_rules().count(veth) == 2
        assert api.put(url, json={"allowInternetAccess": False}).status_code == 200
    assert sb.exec("cat /etc/resolv.conf").stdout.split()[1] == "127.0.0.1"
    assert veth not in input_rules()
    server.assert_clean_log()


def test_a_gracefully_restarted_server_serves_the_resolver_again(
        fresh_server: Servers) -> None:
    first = fresh_server()
    with first.client() as api:
        made = api.post("/api/sandbox", json={"imageName": "python", "network": OUT}).json()
    first.stop()  # SIGTERM: the resolvers stop with the server, the sandbox goes on
    again = fresh_server(first.data_dir, first.port)
    sb = Sandbox.connect(made["id"], api_key=again.api_key, base_url=again.base_url)
    try:
        assert sb.exec("getent hosts other.test").stdout.split()[0] == NAMES["other.test"]
        with again.client() as api:
            url = f"/api/sandbox/{sb.id}/network"
            assert api.put(url, json={"allowInternetAccess": False}).status_code == 200
            assert api.put(url, json=OUT).status_code == 200
        assert sb.exec("getent hosts allowed.test").exit_code == 0
    finally:
        sb.stop()
        sb.close()
    again.assert_clean_log()


# -- the operator's caps --------------------------------------------------------------------

def _create(srv: ServerProcess, network: dict[str, object]) -> httpx.Response:
    with srv.client() as api:
        return api.post("/api/sandbox", json={"imageName": "python", "network": network})


def _connect(srv: ServerProcess, made: httpx.Response) -> Sandbox:
    return Sandbox.connect(made.json()["id"], api_key=srv.api_key, base_url=srv.base_url)


@pytest.mark.parametrize("allow_out", [["0.0.0.0/0"], ["0.0.0.0/1", "128.0.0.0/1"]])
def test_the_internet_cap_is_not_undone_by_a_wide_allow_out(
        fresh_server: Servers, world: World, allow_out: list[str]) -> None:
    """Under --internet-access deny, allowOut 0.0.0.0/0 is the internet by another name:
    refused (403), or taken without the public part."""
    srv = fresh_server(env={"SANDPORT_INTERNET_ACCESS": "deny"})
    made = _create(srv, {"allowOut": allow_out})
    if made.status_code == 403:
        assert "internet" in made.json()["message"]
        return
    assert made.is_success, made.text
    sb = _connect(srv, made)
    try:
        assert reach(sb, world.first) == ["blocked"]
    finally:
        sb.stop()
        sb.close()


def test_under_the_internet_cap_names_do_not_go_out(fresh_server: Servers) -> None:
    """A capped sandbox that may reach one address gets no recursive resolver to the
    world: every name it looks up would otherwise reach the upstream (and, through it,
    any domain's servers: a tunnel out past the cap)."""
    srv = fresh_server(env={"SANDPORT_INTERNET_ACCESS": "deny"})
    made = _create(srv, {"allowInternetAccess": True, "allowOut": ["198.51.100.250/32"]})
    assert made.json()["network"]["internetAccessCapped"] is True
    sb = _connect(srv, made)
    name = f"leak-{secrets.token_hex(4)}.test"
    try:
        sb.exec(f"getent hosts {name}")
    finally:
        sb.stop()
        sb.close()
    assert name not in dns_world().queries()


def test_tricky_allow_out_against_never_allow(
        fresh_server: Servers, world: World) -> None:
    srv = fresh_server(env={"SANDPORT_NEVER_ALLOW": f"link-local,{world.second}/32"})
    for entry, inside in (("169.254.0.0/17", "169.254.0.0/16"),
                          (world.second, f"{world.second}/32"),
                          (f" {world.second}/32 ", f"{world.second}/32")):
        refused = _create(srv, {"allowOut": [entry]})
        assert refused.status_code == 403, refused.text
        assert inside in refused.json()["message"] and "--never-allow" in \
            refused.json()["message"]
    made = _create(srv, {"allowOut": ["128.0.0.0/1", "169.254.0.0/15"],
                         "denyOut": [f"{world.second}/32"]})
    assert made.is_success, made.text
    sb = _connect(srv, made)
    try:
        assert reach(sb, world.first, world.second, world.link_local) == [
            f"world {world.first}", "blocked", "blocked"]
        with srv.client() as api:
            url = f"/api/sandbox/{sb.id}/network"
            # denyOut of the never range is harmless; the never range stays closed
            # whatever denyOut and allowOut say
            assert api.put(url, json={"allowOut": [], "denyOut": [],
                                      "allowInternetAccess": True}).status_code == 200
        assert reach(sb, world.first, world.second, world.link_local) == [
            f"world {world.first}", "blocked", "blocked"]
    finally:
        sb.stop()
        sb.close()
    srv.assert_clean_log()


def test_internet_access_capped_is_not_the_users_to_say(
        fresh_server: Servers, server: ServerProcess) -> None:
    """internetAccessCapped is the server's to say: a create or a PUT sending it gets a
    400 naming it, and changes nothing."""
    for srv in (server, fresh_server(env={"SANDPORT_INTERNET_ACCESS": "deny"})):
        refused = _create(srv, {"allowInternetAccess": True, "internetAccessCapped": False})
        assert refused.status_code == 400, refused.text
        assert "internetAccessCapped" in refused.json()["message"]
    made = _create(srv, {"allowInternetAccess": True})
    assert made.json()["network"]["internetAccessCapped"] is True
    assert made.json()["network"]["allowInternetAccess"] is False
    with srv.client() as api:
        url = f"/api/sandbox/{made.json()['id']}/network"
        for body in ({"internetAccessCapped": False}, {"internetAccessCapped": "yes"}):
            put = api.put(url, json=body)
            assert put.status_code == 400 and "internetAccessCapped" in put.text, put.text
        # a PUT without allowInternetAccess (or with null) keeps asking for it
        for body in ({"allowOut": ["198.51.100.9"]}, {"allowInternetAccess": None}):
            put = api.put(url, json=body)
            assert put.status_code == 200, put.text
            assert put.json()["network"]["allowInternetAccess"] is False
            assert put.json()["network"]["internetAccessCapped"] is True, body
        dropped = api.put(url, json={"allowInternetAccess": False}).json()["network"]
        assert "internetAccessCapped" not in dropped
        api.put(f"/api/sandbox/{made.json()['id']}/stop")
    srv.assert_clean_log()


def test_bad_network_bodies_get_clear_4xx(make_sandbox: MakeSandbox,
                                          server: ServerProcess) -> None:
    sb = make_sandbox()
    with server.client() as api:
        url = f"/api/sandbox/{sb.id}/network"
        for body, status, words in (
                ({"allowOut": ["::1"]}, 400, "IPv4"),
                ({"allowOut": "10.0.0.0/8"}, 400, "list"),
                ({"allowOut": ["10.0.0.0/33"]}, 400, "allowOut"),
                ({"denyOut": ["example.com"]}, 400, "denyOut[0]"),
                ({"allowOut": ["ok.test", "bücher.test"]}, 400, "allowOut[1]"),
                ({"allowOut": [7]}, 400, "allowOut"),
                ({"allowOut": ["1.2.3.4"] * 5000}, 400, "at most"),
                ({"denyOut": [None]}, 400, "denyOut"),
                ({"allowInternetAccess": "yes"}, 400, "allowInternetAccess"),
                ({"allowOut": ["169.254.169.254"]}, 403, "--never-allow"),
                ({"bogus": 1}, 400, "bogus"),
                ([], 400, "")):
            got = api.put(url, json=body)
            assert got.status_code == status, (body, got.text)
            assert words in got.json()["message"], (body, got.text)
        assert api.put("/api/sandbox/nosuchsandbox/network", json=OUT).status_code == 404
    server.assert_clean_log()


def test_a_dead_upstream_and_a_flood_leave_the_api_its_descriptors(
        fresh_server: Servers, silent_upstream: str) -> None:
    """With a modest open-files limit (--max-open-files), sandboxes' lookups to a dead
    upstream must not take the descriptors the API and the other sandboxes need."""
    srv = fresh_server(env={"SANDPORT_DNS_UPSTREAMS": silent_upstream,
                            "SANDPORT_MAX_OPEN_FILES": "512"})
    made = [Sandbox.create("python", api_key=srv.api_key, base_url=srv.base_url, network=OUT)
            for _ in range(2)]
    try:
        floods = []
        for sb in made:
            sb.files.write("/tmp/flood.py", LIB + FLOOD.replace("range(20)", "range(40)"))
            floods.append(sb.processes.start("python3 /tmp/flood.py"))
        time.sleep(2.5)
        failures: list[int | str] = []
        peak = 0
        with srv.client() as api:
            for _ in range(20):
                peak = max(peak, srv.open_sockets())
                try:
                    got = api.get("/api/sandboxes", timeout=5)
                    if got.status_code != 200:
                        failures.append(got.status_code)
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                time.sleep(0.05)
            other = api.post("/api/sandbox", json={"imageName": "python"}, timeout=60)
            if other.is_success:
                api.put(f"/api/sandbox/{other.json()['id']}/stop")
        for flood in floods:
            flood.wait(timeout=60)
        print(f"peak sockets {peak}; failures {failures}; create {other.status_code}")
        assert failures == [], failures
        assert other.is_success, other.text
    finally:
        for sb in made:
            sb.stop()
            sb.close()
    srv.assert_clean_log()


def test_a_tcp_client_that_never_reads_is_let_go_with_its_sandbox(
        fresh_server: Servers) -> None:
    srv = fresh_server()
    base = srv.open_sockets()
    sb = Sandbox.create("python", api_key=srv.api_key, base_url=srv.base_url, network=OUT)
    try:
        out = run_py(sb, r"""
server = nameserver()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(400):  # empty the bucket: what follows is refused at once
    u.sendto(query("x.test", ident=i), (server, 53))
long = ".".join(["a" * 60] * 4)
conns = []
for c in range(16):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((server, 53)); s.setblocking(False)
    conns.append(s)
sent = 0
for round_ in range(200):
    for s in conns:
        try:
            sent += s.send(b"".join(framed(query(long, ident=i)) for i in range(20)))
        except BlockingIOError:
            pass
print("sent", sent)
""")
        print(out)
        held = srv.open_sockets()
    finally:
        sb.stop()
        sb.close()
    deadline = time.monotonic() + 30
    while srv.open_sockets() > base + 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"sockets: base {base}, while held {held}, after stop {srv.open_sockets()}")
    assert srv.open_sockets() <= base + 2
    srv.assert_clean_log()
