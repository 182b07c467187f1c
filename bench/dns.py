"""DNS figures: a lookup through a sandbox's resolver (runtime/dns.py) against the same
lookup sent by the same sandbox straight to the upstream (the peer, same run).

    .venv/bin/python bench/dns.py [--queries 200]

All on this machine: the upstream is the tests' dnsmasq in a network namespace of its own
(tests/dns_world.py), the server a fresh ``sandport serve`` pointed at it. Inside one
sandbox that may go out, a Python loop times one UDP query at a time, alternating the two
servers, and prints each one's p50 and p90.
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
from tests.dns_world import dns_world  # noqa: E402

TIMING = r"""
import json, socket, struct, sys, time
resolver, upstream, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
def query(ident):
    q = b"\x07allowed\x04test\x00"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
times = {"resolver": [], "upstream": []}
for i in range(count * 2):
    which = "resolver" if i % 2 == 0 else "upstream"
    start = time.perf_counter()
    s.sendto(query(i), (resolver if which == "resolver" else upstream, 53))
    while s.recv(4096)[:2] != struct.pack("!H", i):
        pass
    times[which].append((time.perf_counter() - start) * 1e6)
print(json.dumps(times))
"""


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    world = dns_world()
    with tempfile.TemporaryDirectory(prefix="sandport-bench-dns-") as tmp:
        server = ServerProcess(Path(tmp) / "data").start()
        try:
            with Sandbox.create("python", api_key=server.api_key, base_url=server.base_url,
                                network={"allowInternetAccess": True}) as sb:
                resolver = sb.exec("cat /etc/resolv.conf").stdout.split()[1]
                sb.files.write("/tmp/timing.py", TIMING)
                done = sb.exec(f"python3 /tmp/timing.py {resolver} {world.address} "
                               f"{args.queries}")
                if done.exit_code != 0:
                    raise RuntimeError(done.stderr)
                times = json.loads(done.stdout)
        finally:
            server.stop_all_sandboxes()
            server.stop()
    print(f"\none UDP lookup from a sandbox, {args.queries} each, alternating (µs)")
    for which, label in (("resolver", "through its resolver"), ("upstream", "to the upstream")):
        print(f"  {label:22} p50 {p(times[which], 0.5):7.0f}   p90 {p(times[which], 0.9):7.0f}")
    print(f"  ratio resolver / upstream (p50): "
          f"{p(times['resolver'], 0.5) / p(times['upstream'], 0.5):.2f}")


if __name__ == "__main__":
    main()
