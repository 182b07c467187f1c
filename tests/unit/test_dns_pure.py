"""The resolver's pure parts (runtime/dns.py): what a query must look like to be
forwarded, the answers made here, the rate bucket, upstream addresses."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from sandport.runtime.dns import (
    NXDOMAIN,
    REFUSED,
    Bucket,
    answer,
    host_upstreams,
    is_local_reverse,
    read_query,
    resolv_conf,
)
from sandport.runtime.network import EgressPolicy, egress_rules, lease_for
from sandport.settings import parse_upstream

SUBNET = ipaddress.IPv4Network("10.77.0.0/16")


def query(name: str, qtype: int = 1, *, flags: int = 0x0100, qdcount: int = 1,
          ident: int = 0xBEEF) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"
    return struct.pack("!HHHHHH", ident, flags, qdcount, 0, 0, 0) + labels + \
        struct.pack("!HH", qtype, 1)


def test_a_standard_query_is_read() -> None:
    q = read_query(query("Allowed.Test", 28))
    assert q is not None and (q.id, q.name, q.qtype) == (0xBEEF, "allowed.test", 28)
    assert q.end == len(query("allowed.test"))


@pytest.mark.parametrize("data", [
    b"", b"\x00" * 11,
    query("a.test", flags=0x8100),  # a response
    query("a.test", flags=0x2100),  # opcode UPDATE
    query("a.test", qdcount=2),
    query("a.test")[:-2],  # no type and class
    query("a.test")[:12] + b"\x40" + b"a" * 64 + b"\0\0\1\0\1",  # a label over 63
    query("a.test")[:12] + b"\xc0\x0c\0\1\0\1",  # a compression pointer in the question
    query("a.test")[:12] + b"\x05ab",  # runs out
    query(".".join(["a" * 63] * 5)),  # a name over 255
    query("a.test") + b"\0" * 5000,  # over MAX_QUERY
])
def test_what_is_not_a_plain_query_is_dropped(data: bytes) -> None:
    assert read_query(data) is None


def test_answers_made_here_echo_the_question() -> None:
    data = query("2.0.77.10.in-addr.arpa", 12)
    q = read_query(data)
    assert q is not None
    reply = answer(data, q, NXDOMAIN)
    ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply[:12])
    assert (ident, flags & 0x8000, flags & 0xF, flags & 0x0100, qd, an, ns, ar) == \
        (0xBEEF, 0x8000, NXDOMAIN, 0x0100, 1, 0, 0, 0)
    assert reply[12:] == data[12:]
    assert answer(data, q, REFUSED)[3] & 0xF == REFUSED


@pytest.mark.parametrize("name, local", [
    ("2.0.77.10.in-addr.arpa", True), ("77.10.in-addr.arpa", True),
    ("10.in-addr.arpa", True), ("5.1.78.10.in-addr.arpa", False),
    ("1.1.1.1.in-addr.arpa", False), ("1.1.1.in-addr.arpa", False),
    # anything in the subnet's reverse zone, whatever is below the address part
    ("x.77.10.in-addr.arpa", True), ("300.77.10.in-addr.arpa", True),
    ("_x._tcp.2.0.77.10.in-addr.arpa", True), ("2.0.77.10.IN-ADDR.ARPA".lower(), True),
    ("in-addr.arpa", False), ("allowed.test", False),
])
def test_reverse_names_of_the_sandbox_subnet(name: str, local: bool) -> None:
    assert is_local_reverse(name, SUBNET) is local


def test_the_bucket_refuses_past_its_burst_then_refills() -> None:
    bucket = Bucket(rate=1000.0, burst=5)
    taken = [bucket.take() for _ in range(5)]
    assert taken == [True] * 5 and not bucket.take()
    bucket.stamp -= 0.01  # 10 ms later: 10 more tokens, capped at the burst
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]


def test_upstreams() -> None:
    assert parse_upstream("203.0.113.2") == ("203.0.113.2", 53)
    assert parse_upstream("203.0.113.2:5353") == ("203.0.113.2", 5353)
    assert parse_upstream("[2001:db8::1]:53") == ("2001:db8::1", 53)
    assert parse_upstream("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("resolver.example", "1.2.3.4:0", "1.2.3.4:99999", "1.2.3.4:x", ""):
        with pytest.raises(ValueError):
            parse_upstream(bad)
    text = "# comment\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\n" \
        "search example\n"
    assert host_upstreams(text) == [("127.0.0.53", 53), ("fe80::1", 53)]


def test_resolv_conf_and_egress_rules_name_the_resolver_only_with_a_way_out() -> None:
    lease = lease_for("10.77.0.0/16", 3, "abcdef0123456789abcd")
    assert resolv_conf(lease.host_ip).split()[:2] == ["nameserver", "10.77.0.13"]
    assert resolv_conf(None).split()[:2] == ["nameserver", "127.0.0.1"]
    out = egress_rules(lease, EgressPolicy(True))
    dns = f"-A OUTPUT -d {lease.host_ip}/32 -p udp --dport 53 -j ACCEPT"
    refuse = f"-A OUTPUT -d {lease.host_ip}/32 -j REJECT"
    assert dns in out and out.index(dns) < out.index(refuse)
    assert "--dport 53" not in egress_rules(lease, EgressPolicy(False))
