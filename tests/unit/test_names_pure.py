"""Egress by name, its pure parts: the names allowOut accepts (netnames.py), what a pattern
matches, the TLS server name and HTTP Host the gate reads (runtime/gate.py), the rules that
send ports 80 and 443 to it (runtime/network.py), and the resolver's answers under a name
policy (runtime/dns.py)."""

from __future__ import annotations

import ipaddress
import ssl
import struct
from pathlib import Path

import pytest

from sandport.control.requests import parse_network
from sandport.errors import ValidationFailed
from sandport.netnames import BadName, matches, normal_name
from sandport.runtime.dns import (
    NOERROR,
    NXDOMAIN,
    SandboxResolver,
    a_query,
    a_records,
    read_query,
)
from sandport.runtime.gate import (
    BadHello,
    Bucket,
    HostAddresses,
    _Heads,
    hello_needs,
    host_of,
    server_name,
)
from sandport.runtime.network import (
    NOT_INTERNET,
    EgressPolicy,
    egress_rules,
    flows_to_cut,
    gate_rules,
    lease_for,
    sent_to_gate,
)
from sandport.runtime.refusals import Refused, nflog_rule, parse

LEASE = lease_for("10.77.0.0/16", 3, "sb1234567890abcdef")


# -- names ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("entry", "normal"), [
    ("PyPI.org", "pypi.org"), ("pypi.org.", "pypi.org"), ("*.npmjs.org", "*.npmjs.org"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"), ("a-b.c0.test", "a-b.c0.test"),
])
def test_names_accepted(entry: str, normal: str) -> None:
    assert normal_name(entry) == normal


@pytest.mark.parametrize(("entry", "why"), [
    ("bücher.example", "punycode"), ("a.*.test", "leading"), ("*a.test", "leading"),
    ("**.test", "leading"), ("*.com", "single label"), ("localhost", "single label"),
    ("-a.test", "label"), ("a-.test", "label"), ("a..test", "label"), ("a_b.test", "label"),
    ("x" * 64 + ".test", "label"), (".".join(["abcdefgh"] * 30), "longer than 253"),
    ("", "empty"), ("1.2.3.4a.5", "an address"),
])
def test_bad_names_say_why(entry: str, why: str) -> None:
    with pytest.raises(BadName, match=why):
        normal_name(entry)


def test_patterns_match_exact_names_and_names_below_a_wildcard() -> None:
    patterns = ("allowed.test", "*.wild.test")
    assert matches(patterns, "Allowed.Test.") == "allowed.test"
    assert matches(patterns, "a.wild.test") == "*.wild.test"
    assert matches(patterns, "a.b.wild.test") == "*.wild.test"
    for host in ("wild.test", "xwild.test", "allowed.test.evil", "evil.allowed.test",
                 "a.wild.test\x00.evil", "*.wild.test", "a wild.test", ""):
        assert matches(patterns, host) is None, host


def test_allow_out_takes_names_and_deny_out_does_not() -> None:
    policy = parse_network({"allowOut": ["10.1.2.3/8", "PyPI.org", "*.npmjs.org",
                                         "pypi.org"], "denyOut": ["0.0.0.0/0"]})
    assert policy.allow_out == ("10.0.0.0/8",)
    assert policy.allow_names == ("pypi.org", "*.npmjs.org")
    assert policy.to_wire()["allowOut"] == ["10.0.0.0/8", "pypi.org", "*.npmjs.org"]
    assert parse_network(policy.to_wire()) == policy  # as stored, so as read back
    for body, words in (({"denyOut": ["1.2.3.4", "pypi.org"]}, r"denyOut\[1\].*addresses"),
                        ({"allowOut": ["ok.test", "a.*.test"]}, r"allowOut\[1\].*leading"),
                        ({"allowOut": ["bücher.de"]}, r"allowOut\[0\].*punycode"),
                        ({"allowOut": ["x.test"] * 257}, "at most 256"),
                        ({"allowOut": ["::1"]}, r"allowOut\[0\].*IPv4 only")):
        with pytest.raises(ValidationFailed, match=words):
            parse_network(body)


# -- the TLS server name --------------------------------------------------------------------
def client_hello(name: str | None) -> bytes:
    """The first flight of a real TLS client (Python's ssl) naming ``name``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_the_server_name_of_a_real_client_hello() -> None:
    hello = client_hello("Allowed.Test")
    assert server_name(hello) == (True, "Allowed.Test")
    for cut in (0, 3, 5, 40, len(hello) - 1):  # not all there yet
        assert server_name(hello[:cut]) == (False, None)
    assert server_name(client_hello(None)) == (True, None)  # no SNI


def test_a_client_hello_split_over_records_is_read_whole() -> None:
    hello = client_hello("allowed.test")
    body = hello[5:]
    records = b"".join(b"\x16\x03\x01" + struct.pack("!H", len(part)) + part
                       for part in (body[:10], body[10:100], body[100:]))
    assert server_name(records) == (True, "allowed.test")


def test_a_client_hello_in_many_tiny_records_is_refused_and_parsed_only_as_they_end() -> None:
    body = client_hello("allowed.test")[5:]

    def split(sizes: list[int]) -> bytes:
        out, pos = b"", 0
        for size in [*sizes, len(body)]:
            part = body[pos:pos + size]
            if part:
                out += b"\x16\x03\x01" + struct.pack("!H", len(part)) + part
            pos += len(part)
        return out
    assert server_name(split([20] * 7)) == (True, "allowed.test")  # 8 records: fine
    with pytest.raises(BadHello, match="more than 8 records"):
        server_name(split([1] * 20))
    records = split([10, 90])
    assert hello_needs(records[:3]) == 5  # a header first
    assert hello_needs(records[:7]) == 15  # then the end of that record
    assert hello_needs(records[:15]) == 20  # then the next header
    assert hello_needs(split([1] * 20)) == len(split([1] * 20)) + 1


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n", b"\x17\x03\x03\x00\x05hello",  # not a handshake
    b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
    b"\x16\x03\x01\x00\x00",  # an empty record
    b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00",  # truncated inside
    b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # a length past the limit
])
def test_what_is_not_a_client_hello_is_refused(data: bytes) -> None:
    with pytest.raises(BadHello):
        server_name(data)


def test_two_server_names_or_a_repeated_extension_are_refused() -> None:
    hello = bytearray(client_hello("allowed.test"))
    at = hello.find(b"allowed.test")
    # the server_name extension: type 0, size, list size, (kind, size, name)
    ext_start = at - 9
    assert hello[ext_start:ext_start + 2] == b"\x00\x00"
    ext = bytes(hello[ext_start:at + len("allowed.test")])
    doubled = bytes(hello[:at + 12]) + ext + bytes(hello[at + 12:])
    body_len = int.from_bytes(doubled[6:9]) + len(ext)
    ext_total_at = None  # the extensions' length: fix up record, handshake and list sizes
    fixed = bytearray(doubled)
    fixed[3:5] = (int.from_bytes(doubled[3:5]) + len(ext)).to_bytes(2, "big")
    fixed[6:9] = body_len.to_bytes(3, "big")
    pos = 9 + 2 + 32
    pos += 1 + fixed[pos]
    pos += 2 + int.from_bytes(fixed[pos:pos + 2])
    pos += 1 + fixed[pos]
    ext_total_at = pos
    total = int.from_bytes(fixed[ext_total_at:ext_total_at + 2]) + len(ext)
    fixed[ext_total_at:ext_total_at + 2] = total.to_bytes(2, "big")
    with pytest.raises(BadHello, match="repeated"):
        server_name(bytes(fixed))


# -- HTTP heads -------------------------------------------------------------------------------
def test_hosts_of_headers() -> None:
    assert host_of(b"allowed.test:8080") == "allowed.test"
    assert host_of(b" allowed.test ") == "allowed.test"
    assert host_of(b"allowed.test:x") is None and host_of(b"") is None


def test_every_request_head_on_a_connection_is_seen() -> None:
    heads = _Heads()
    heads.feed(b"POST /a HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 36\r\n\r\n"
               b"GET / HTTP/1.1\r\nHost: other.test\r\n")  # a body that looks like a head
    assert heads.hosts == ["allowed.test"] and heads.problem is None
    heads.feed(b"\r\nGET /b HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert heads.hosts == ["allowed.test", "other.test"]
    chunked = _Heads()
    chunked.feed(b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: b.test\r\n\r\n")
    assert chunked.hosts == ["a.test", "b.test"]


@pytest.mark.parametrize(("data", "problem"), [
    (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", "not one Host"),
    (b"GET / HTTP/1.0\r\n\r\n", "not one Host"),
    (b"GET http://evil.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "another host"),
    (b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test\r\n\r\n", "CONNECT"),
    (b"\x16\x03\x01\x00\x10garbage", "not HTTP"),
    (b"GET / HTTP/1.1\r\nHost: a.test:99999x\r\n\r\n", "bad Host"),
])
def test_heads_the_gate_refuses(data: bytes, problem: str) -> None:
    heads = _Heads()
    heads.feed(data)
    assert heads.problem is not None and problem in heads.problem


def test_a_later_head_that_never_ends_is_refused() -> None:
    heads = _Heads()
    heads.feed(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
    heads.feed(b"GET / HTTP/1.1\r\nHost: allowed.test\r\nX-Big: ")
    for _ in range(20):
        heads.feed(b"a" * 4096)
    assert heads.problem == "a request head over 64 KiB"
    long_url = _Heads()
    long_url.feed(b"GET /" + b"a" * 70000)
    assert long_url.problem == "a request target over 64 KiB"
    body = _Heads()  # a big body is no head
    body.feed(b"POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 200000\r\n\r\n")
    for _ in range(40):
        body.feed(b"a" * 5000)
    assert body.problem is None and body.hosts == ["allowed.test"]


def test_buckets_let_a_burst_then_the_rate() -> None:
    bucket = Bucket(rate=0.0, burst=3)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_the_hosts_own_addresses_and_every_servers_sandboxes_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "slots-10.78.0.0_16").mkdir()
    (tmp_path / "slots-junk").mkdir()
    monkeypatch.setattr("sandport.runtime.gate.SLOTS_ROOT", tmp_path)
    host = HostAddresses("10.77.0.0/16")
    assert host.refusal("10.78.3.4") == "never allowed (sandboxes: 10.78.0.0/16)"
    assert host.refusal("10.77.0.9") == "never allowed (sandboxes: 10.77.0.0/16)"
    assert host.refusal("127.0.0.1") == "never allowed (this host)"
    assert host.refusal("198.51.100.200") is None


def test_a_label_holding_a_dot_is_no_name() -> None:
    def query(*labels: bytes) -> bytes:
        name = b"".join(bytes([len(x)]) + x for x in labels) + b"\0"
        return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + name + b"\0\1\0\1"
    assert read_query(query(b"allowed", b"test")) is not None
    assert read_query(query(b"allowed.test")) is None
    assert read_query(query(b"allowed\xff", b"test")) is None
    assert read_query(query(b"_http", b"_tcp", b"allowed", b"test")) is not None


def test_an_upgrade_is_seen_with_what_follows_its_head() -> None:
    heads = _Heads()
    heads.feed(b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\n"
               b"Upgrade: websocket\r\n\r\nframes")
    assert heads.hosts == ["a.test"] and heads.upgrade == b"frames"
    assert heads.problem is None


# -- rules ----------------------------------------------------------------------------------
def test_a_name_policy_sends_web_ports_to_the_gate_and_keeps_the_rest_closed() -> None:
    policy = EgressPolicy(False, ("192.0.2.0/24",), (), ("169.254.0.0/16",), None,
                          ("allowed.test",))
    assert policy.gated and policy.names_only and policy.serves_dns and policy.lets_out
    names_only = EgressPolicy(False, (), (), (), None, ("allowed.test",))
    assert names_only.serves_dns and not names_only.lets_out  # nothing is forwarded
    lines = egress_rules(LEASE, policy).splitlines()
    never = lines.index("-A OUTPUT -d 169.254.0.0/16 -j REJECT --reject-with "
                        "icmp-admin-prohibited")
    allowed = lines.index("-A OUTPUT -d 192.0.2.0/24 -j ACCEPT")
    web = lines.index("-A OUTPUT -p tcp -m multiport --dports 443,80 -j ACCEPT")
    assert never < allowed < web < lines.index("-A OUTPUT -j REJECT --reject-with "
                                               "icmp-admin-prohibited")
    assert not any("udp" in line and "443" in line for line in lines)  # QUIC: refused
    nat = gate_rules(LEASE, policy, {443: 40443, 80: 40080}).splitlines()
    chain = "SPG-" + LEASE.veth[3:]
    assert nat.index(f"-A {chain} -d 192.0.2.0/24 -j RETURN") < nat.index(
        f"-A {chain} -p tcp --dport 443 -j REDIRECT --to-ports 40443")
    assert f"-A SPI-{LEASE.veth[3:]} -d {LEASE.host_ip}/32 -p tcp --dport 40080 -j ACCEPT" \
        in nat


def test_names_with_the_internet_open_go_to_the_gate_only_where_it_is_closed() -> None:
    open_world = EgressPolicy(True, (), (), (), None, ("allowed.test",))
    assert not open_world.gated  # every name is let by anyway
    fronted = EgressPolicy(True, (), ("0.0.0.0/0",), (), None, ("allowed.test",))
    assert fronted.gated and fronted.names_only  # the e2b SDK's "deny all, allow names"
    partly = EgressPolicy(True, (), ("203.0.113.0/24",), (), None, ("allowed.test",))
    assert partly.gated and not partly.names_only
    rules = gate_rules(LEASE, partly, {443: 1, 80: 2})
    assert "-d 203.0.113.0/24 -p tcp --dport 443 -j REDIRECT --to-ports 1" in rules
    assert "-d 10.0.0.0/8 -p tcp --dport 80 -j REDIRECT --to-ports 2" in rules
    assert "-A SPG-" + LEASE.veth[3:] + " -p tcp --dport 443" not in rules


def test_the_flows_a_tighter_policy_cuts() -> None:
    """Only the sandbox's own, un-redirected flows to 80/443 that the gate would now take."""
    me, host = LEASE.sandbox_ip, LEASE.host_ip
    listing = "\n".join([
        f"tcp 6 431999 ESTABLISHED src={me} dst=198.18.1.12 sport=40000 dport=443 "
        f"src=198.18.1.12 dst={me} sport=443 dport=40000 [ASSURED] mark=0 use=1",
        # through the gate already (the reply comes from its listener): left alone
        f"tcp 6 431999 ESTABLISHED src={me} dst=198.18.1.10 sport=40001 dport=443 "
        f"src={host} dst={me} sport=40443 dport=40001 [ASSURED] mark=0 use=1",
        f"tcp 6 431999 ESTABLISHED src={me} dst=198.18.1.12 sport=40002 dport=22 "
        f"src=198.18.1.12 dst={me} sport=22 dport=40002 [ASSURED] mark=0 use=1",  # not web
        f"tcp 6 431999 ESTABLISHED src={me} dst=198.18.1.11 sport=40003 dport=80 "
        f"src=198.18.1.11 dst={me} sport=80 dport=40003 [ASSURED] mark=0 use=1",  # allowed
        "tcp 6 100 TIME_WAIT src=10.9.9.9 dst=198.18.1.12 sport=1 dport=443 "
        "src=198.18.1.12 dst=10.9.9.9 sport=443 dport=1 mark=0 use=1",  # another's
        "conntrack v1.4.7 (conntrack-tools): 5 flow entries have been shown.",
    ])
    tight = EgressPolicy(False, ("198.18.1.11/32",), (), (), None, ("allowed.test",))
    assert flows_to_cut(listing, LEASE, tight) == [(me, "40000", "198.18.1.12", "443")]
    assert flows_to_cut(listing, LEASE, EgressPolicy(False, ("198.18.1.11/32",))) == []
    # with the internet open, only the closed part of it goes to the gate
    fronted = EgressPolicy(True, (), ("198.18.1.0/24",), (), None, ("allowed.test",))
    assert sent_to_gate(fronted, "198.18.1.11") and not sent_to_gate(fronted, "198.51.100.1")
    assert len(flows_to_cut(listing, LEASE, fronted)) == 2


def test_every_refusal_of_the_filter_is_logged_first_at_a_limited_rate() -> None:
    policy = EgressPolicy(False, ("192.0.2.0/24",), ("192.0.2.7/32",), ("169.254.0.0/16",),
                          None, ("allowed.test",))
    lines = egress_rules(LEASE, policy).splitlines()
    rejects = [i for i, line in enumerate(lines) if "-j REJECT" in line]
    assert len(rejects) == 1 + 1 + 1 + len(NOT_INTERNET) + 1  # host, never, deny, ..., rest
    for i in rejects:
        match = lines[i].split(" -j REJECT")[0]
        assert lines[i - 1].startswith(f"{match} -m limit --limit 5/sec --limit-burst 10 "
                                       "-j NFLOG --nflog-group 1 --nflog-prefix "), lines[i - 1]
    assert '--nflog-prefix "in denyOut (192.0.2.7/32)"' in lines[rejects[2] - 1]
    long = nflog_rule("-A OUTPUT", 'a "quoted" ' + "x" * 100)
    assert '"a quoted xxx' in long and len(long.split('"')[1]) == 63


def nflog_packet(prefix: bytes, packet: bytes) -> bytes:
    def attr(kind: int, value: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(value), kind) + value
        return raw + b"\0" * (-len(raw) % 4)
    body = struct.pack("!BBH", 2, 0, 1) + attr(1, b"\x08\x00\x03\x00") + attr(10, prefix) \
        + attr(9, packet)
    return struct.pack("=IHHII", 16 + len(body), (4 << 8) | 0, 0, 0, 0) + body


def test_the_refused_packets_nflog_hands_over() -> None:
    tcp = bytes([0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0]) + bytes([10, 77, 0, 2]) \
        + bytes([203, 0, 113, 9]) + struct.pack("!HH", 40000, 22) + b"\0" * 4
    udp = bytes([0x46, 0, 0, 60, 0, 0, 0x40, 0, 64, 17, 0, 0]) + bytes([10, 77, 0, 2]) \
        + bytes([198, 18, 0, 1]) + b"\0" * 4 + struct.pack("!HH", 5000, 443)  # IP options
    icmp = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0]) + bytes([10, 77, 0, 2, 1, 1, 1, 1])
    got = parse(nflog_packet(b"not in allowOut\0", tcp) + nflog_packet(b"the host\0", udp)
                + nflog_packet(b"x\0", icmp) + nflog_packet(b"short\0", tcp[:10])
                + b"\xff" * 7)
    assert got == [Refused("203.0.113.9", 22, "tcp", "not in allowOut"),
                   Refused("198.18.0.1", 443, "udp", "the host"),
                   Refused("1.1.1.1", None, "icmp", "x")]
    assert parse(b"") == [] and parse(b"\x00" * 40) == []


def test_the_policy_a_restarted_server_reads_back() -> None:
    policy = EgressPolicy(True, ("10.0.0.0/8",), ("0.0.0.0/0",), ("169.254.0.0/16",), None,
                          ("allowed.test", "*.wild.test"), False)
    assert EgressPolicy.from_json(policy.to_json()) == policy
    assert EgressPolicy.from_json({"names": "x"}) is None
    assert EgressPolicy.from_json(None) is None


# -- the resolver under a name policy ---------------------------------------------------------
def test_only_allowed_names_resolve_and_only_to_ipv4() -> None:
    refused: list[tuple[str, str]] = []
    resolver = SandboxResolver("sb", "10.77.0.1", "10.77.0.2", [], ipaddress.IPv4Network(
        "10.77.0.0/16"), ("allowed.test", "*.wild.test"), lambda n, r: refused.append((n, r)))

    def rcode(name: str, qtype: int = 1) -> int | None:
        _, made = resolver.local(struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"".join(
            bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
            + struct.pack("!HH", qtype, 1))
        return None if made is None else made[3] & 0xF

    assert rcode("allowed.test") is None and rcode("a.wild.test") is None  # asked upstream
    assert rcode("other.test") == NXDOMAIN and rcode("wild.test") == NXDOMAIN
    assert rcode("allowed.test", 28) == NOERROR  # AAAA: no records
    assert rcode("allowed.test", 65) == NOERROR  # HTTPS records neither
    assert refused == [("other.test", "not in allowOut"), ("wild.test", "not in allowOut")]


def test_a_records_of_an_answer() -> None:
    query = a_query("allowed.test")
    name = query[12:-4]
    answer = (query[:2] + struct.pack("!HHHHH", 0x8180, 1, 3, 0, 0) + name
              + struct.pack("!HH", 1, 1)
              + b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, 4) + b"\x01x\xc0\x0c"  # CNAME
              + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + bytes([192, 0, 2, 9])
              + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 10]))
    assert a_records(answer, query) == (["192.0.2.9", "192.0.2.10"], 30)
    with pytest.raises(ValueError):
        a_records(answer[:-3], query)
    with pytest.raises(ValueError):
        a_records(b"\x00\x00" + answer[2:], query)  # another id
