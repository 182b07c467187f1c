"""Name gate figures (runtime/gate.py): what going through the gate costs a sandbox whose
``allowOut`` names a host, against a direct connection to an address its ``allowOut`` lets
by (the peer, same run, same sandbox, the same servers).

    .venv/bin/python bench/names.py [--handshakes 60] [--mib 256] [--rounds 3]

All on this machine: the web is tests/web_world.py (HTTP and HTTPS in a network namespace
of the tests), the resolver the tests' dnsmasq, the server a fresh ``sandport serve``. In
one sandbox with ``allowOut: ["allowed.web.test", "<other's address>/32"]``:

- TLS: connect and handshake, one at a time, alternating allowed.web.test (through the
  gate: its SNI read, the name resolved, the address checked, then a relay) and
  other.web.test at its allowed address (straight out); p50 and p90 of each.
- Download: ``GET /big`` of N MiB over plain HTTP (so the figure is the relay's, not
  Python's TLS), through the gate and direct, alternating; the best of each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandport import Sandbox  # noqa: E402
from tests._server import ServerProcess  # noqa: E402
from tests.web_world import web_world  # noqa: E402

TIMING = r"""
import json, socket, ssl, sys, time
gated, direct = sys.argv[1:3]
count, mib, rounds = map(int, sys.argv[3:6])
ctx = ssl.create_default_context(cafile="/tmp/web-ca.pem")
ways = {"gate": (gated, "allowed.web.test"), "direct": (direct, "other.web.test")}
shakes = {"gate": [], "direct": []}
for i in range(count * 2):
    way = "gate" if i % 2 == 0 else "direct"
    address, name = ways[way]
    start = time.perf_counter()
    s = ctx.wrap_socket(socket.create_connection((address, 443), timeout=10),
                        server_hostname=name)
    shakes[way].append((time.perf_counter() - start) * 1e6)
    s.close()
size = mib << 20
whole = size + len(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n")  # the web's head
buf = bytearray(1 << 20)
view = memoryview(buf)
rates = {"gate": [], "direct": []}
for i in range(rounds * 2):
    way = "gate" if i % 2 == 0 else "direct"
    address, name = ways[way]
    s = socket.create_connection((address, 80), timeout=30)
    start = time.perf_counter()
    s.sendall(f"GET /big?bytes={size} HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    got = 0
    while True:
        n = s.recv_into(view)
        got += n
        if not n or got >= whole:
            break
    rates[way].append(got / (time.perf_counter() - start) / 2**20)
    s.close()
print(json.dumps({"shakes": shakes, "rates": rates}))
"""


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    # (the tests' resolver answers with TTL 0, so each connection through the gate is a
    # lookup upstream, which the gate allows 20 a second after a burst of 100)
    parser.add_argument("--handshakes", type=int, default=60)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    web = web_world()
    try:
        with tempfile.TemporaryDirectory(prefix="sandport-bench-names-") as tmp:
            server = ServerProcess(Path(tmp) / "data").start()
            try:
                with Sandbox.create("python", api_key=server.api_key,
                                    base_url=server.base_url,
                                    network={"allowOut": ["allowed.web.test",
                                                          f"{web.other}/32"]}) as sb:
                    sb.files.write("/tmp/web-ca.pem", web.ca_pem)
                    sb.files.write("/tmp/timing.py", TIMING)
                    done = sb.exec(f"python3 /tmp/timing.py {web.allowed} {web.other} "
                                   f"{args.handshakes} {args.mib} {args.rounds}", timeout=1800)
                    if done.exit_code != 0:  # (what the gate refused, if it did)
                        with server.client() as api:
                            print(api.get(f"/api/sandbox/{sb.id}/network/log").text[:3000])
                        raise RuntimeError(done.stderr[-500:])
                    figures = json.loads(done.stdout)
            finally:
                server.stop_all_sandboxes()
                server.stop()
    finally:
        web.stop()
    shakes, rates = figures["shakes"], figures["rates"]
    print(f"\nTLS connect + handshake from a sandbox, {args.handshakes} each, alternating (µs)")
    for way, label in (("gate", "through the name gate"), ("direct", "direct (allowed CIDR)")):
        print(f"  {label:24} p50 {p(shakes[way], 0.5):7.0f}   p90 {p(shakes[way], 0.9):7.0f}")
    added = p(shakes["gate"], 0.5) - p(shakes["direct"], 0.5)
    print(f"  added by the gate (p50): {added:.0f} µs; ratio gate / direct (p50): "
          f"{p(shakes['gate'], 0.5) / p(shakes['direct'], 0.5):.2f}")
    print(f"\none {args.mib} MiB download over HTTP, best of {args.rounds} (MiB/s)")
    print(f"  through the name gate    {max(rates['gate']):8.0f}")
    print(f"  direct (allowed CIDR)    {max(rates['direct']):8.0f}")
    print(f"  ratio gate / direct: {max(rates['gate']) / max(rates['direct']):.2f}")


if __name__ == "__main__":
    main()
