"""Sandboxes' resolvers (runtime/dns.py): a sandbox that may go out resolves names through
the resolver the server serves on its veth's host end, which forwards to the tests' own
upstream (tests/dns_world.py: dnsmasq in a namespace of the tests); one that may not fails
at once. Queries are untrusted: malformed ones are dropped, a flood is refused without
reaching the upstream or starving another sandbox, reverse lookups of the sandbox subnet
never leave the host."""

from __future__ import annotations

import time
from collections.abc import Callable

from sandport import Sandbox

from .._server import ServerProcess
from ..dns_world import NAMES, WILD, dns_world

MakeSandbox = Callable[..., Sandbox]
OUT = {"allowInternetAccess": True}

# A query of our own from inside the sandbox, over UDP, with python's socket module.
ASK = r"""
import os, socket, struct, sys
server = open("/etc/resolv.conf").read().split()[1]
def query(name, qtype=1, ident=0x1234):
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
def ask(data):
    s.sendto(data, (server, 53))
    try:
        return s.recv(4096)
    except socket.timeout:
        return None
"""


def rcode(reply: str) -> str:
    return reply.strip()


def test_a_sandbox_that_may_go_out_resolves_names(make_sandbox: MakeSandbox,
                                                  server: ServerProcess) -> None:
    sb = make_sandbox(network=OUT)
    resolv = sb.exec("cat /etc/resolv.conf").stdout
    assert resolv.split()[:2] == ["nameserver", sb.exec(
        "ip route | awk '/default/ {print $3}'").stdout.strip() or resolv.split()[1]]
    for name, address in (*NAMES.items(), (f"a.b.{WILD[0]}", WILD[1])):
        found = sb.exec(f"getent hosts {name}")
        assert found.exit_code == 0 and found.stdout.split()[0] == address, (name, found)
    missing = sb.exec("getent hosts nothing-here.test")
    assert missing.exit_code == 2
    assert "allowed.test" in dns_world().queries()


def test_a_sandbox_with_no_way_out_fails_at_once(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox()
    assert sb.exec("cat /etc/resolv.conf").stdout.split()[:2] == ["nameserver", "127.0.0.1"]
    started = time.monotonic()
    assert sb.exec("getent hosts allowed.test").exit_code == 2
    assert time.monotonic() - started < 3


def test_opening_and_closing_the_way_out_turns_the_resolver_on_and_off(
        make_sandbox: MakeSandbox, server: ServerProcess) -> None:
    sb = make_sandbox()
    with server.client() as api:
        url = f"/api/sandbox/{sb.id}/network"
        assert api.put(url, json=OUT).status_code == 200
        assert sb.exec("getent hosts allowed.test").stdout.split()[0] == NAMES["allowed.test"]
        assert api.put(url, json={"allowInternetAccess": False}).status_code == 200
    assert sb.exec("cat /etc/resolv.conf").stdout.split()[1] == "127.0.0.1"
    gateway = sb.exec("ip route | awk '/default/ {print $3}'").stdout.strip()
    asked = sb.exec(f"nslookup -timeout=1 allowed.test {gateway} || true").stdout
    assert NAMES["allowed.test"] not in asked


def test_bad_queries_are_dropped_and_the_resolver_goes_on(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(image="python", network=OUT)
    script = ASK + r"""
print("short", ask(b"\x12\x34\x01"))
print("response", ask(struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\0\0\1\0\1"))
print("two", ask(struct.pack("!HHHHHH", 2, 0x0100, 2, 0, 0, 0) + b"\0\0\1\0\1" * 2))
print("huge", ask(query("a" * 60 + ".test")[:12] + b"\x3f" + b"a" * 5000))
print("loop", ask(struct.pack("!HHHHHH", 3, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1"))
good = ask(query("allowed.test"))
print("good", good is not None and good[:2] == b"\x12\x34" and good[3] & 0xF == 0)
"""
    out = sb.exec(f"python3 -c '{script}'")
    assert out.exit_code == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert {k: v for k, v in lines.items() if k != "good"} == {
        "short": "None", "response": "None", "two": "None", "huge": "None", "loop": "None"}
    assert lines["good"] == "True"


def test_reverse_lookups_of_sandboxes_stay_on_the_host(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(image="python", network=OUT)
    before = len(dns_world().queries())
    script = ASK + r"""
ip = [l.split()[0] for l in open("/etc/hosts") if l.strip().endswith(socket.gethostname())][0]
name = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
reply = ask(query(name, qtype=12))
print(reply[3] & 0xF)
"""
    out = sb.exec(f"python3 -c '{script}'")
    assert out.stdout.strip() == "3", out  # NXDOMAIN, answered here
    assert not any(q.endswith(".in-addr.arpa") for q in dns_world().queries()[before:])


def test_a_flood_from_one_sandbox_leaves_another_served(make_sandbox: MakeSandbox) -> None:
    flooder = make_sandbox(image="python", network=OUT)
    other = make_sandbox(network=OUT)
    before = len(dns_world().queries())
    script = ASK + r"""
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.settimeout(1)
refused = answered = 0
def drain(wait):
    global refused, answered
    s.settimeout(wait)
    while True:
        try:
            reply = s.recv(4096)
        except (socket.timeout, BlockingIOError):
            return
        if reply[3] & 0xF == 5:
            refused += 1
        else:
            answered += 1
for batch in range(15):  # 1500 queries in about a second
    for i in range(100):
        s.sendto(query("flood%d.test" % (batch * 100 + i), ident=batch * 100 + i),
                 (server, 53))
    drain(0.05)
drain(2)
print(refused, answered)
"""
    out = flooder.exec(f"python3 -c '{script}'")
    refused, answered = map(int, out.stdout.split())
    assert refused > 900 and answered < 500, out.stdout
    assert len(dns_world().queries()) - before < 500  # the refused never went upstream
    found = other.exec("getent hosts allowed.test")
    assert found.stdout.split()[0] == NAMES["allowed.test"]


def test_the_resolver_comes_back_with_a_restarted_server(
        fresh_server: Callable[..., ServerProcess]) -> None:
    first = fresh_server()
    with first.client() as api:
        made = api.post("/api/sandbox", json={"imageName": "python", "network": OUT}).json()
    sb = Sandbox.connect(made["id"], api_key=first.api_key, base_url=first.base_url)
    try:
        assert sb.exec("getent hosts allowed.test").exit_code == 0
    finally:
        sb.close()  # (its connections; the sandbox goes on)
    first.crash()
    again = fresh_server(first.data_dir, first.port)
    sb = Sandbox.connect(made["id"], api_key=again.api_key, base_url=again.base_url)
    try:
        found = sb.exec("getent hosts other.test")
    finally:
        sb.close()
    assert found.exit_code == 0 and found.stdout.split()[0] == NAMES["other.test"]


def _input_rules() -> str:
    import subprocess
    return subprocess.run(["iptables", "-w", "-S", "SANDPORT-IN"], capture_output=True,
                          text=True, check=True).stdout


def test_a_sandbox_reaches_its_own_resolver_only(make_sandbox: MakeSandbox) -> None:
    """Even with the sandbox subnet in its allowOut, a sandbox gets no answer from another
    sandbox's resolver; the host's rules for a resolver go with the sandbox."""
    other = make_sandbox(network=OUT)
    theirs = other.exec("cat /etc/resolv.conf").stdout.split()[1]
    veth = "spv" + other.id[:12]
    assert _input_rules().count(veth) == 2
    prober = make_sandbox(image="python", network={**OUT, "allowOut": ["10.77.0.0/16"]})
    script = ASK + f"""
s.settimeout(2)
s.sendto(query("allowed.test"), ("{theirs}", 53))
try:
    print("answered", s.recv(4096)[:2])
except OSError as exc:
    print("nothing", type(exc).__name__)
"""
    out = prober.exec(f"python3 -c '{script}'")
    assert out.stdout.startswith("nothing"), out
    other.stop()
    assert veth not in _input_rules()
