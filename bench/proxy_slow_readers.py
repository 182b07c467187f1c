"""What clients that stop reading cost the edge proxy: N clients each ask for a 1 GiB
response through sandport and read nothing; the server's RSS is printed before, while they
are held (once it stops growing), and after they are gone.

    .venv/bin/python bench/proxy_slow_readers.py [--clients 50] [--size-mib 1024]

Budget (issue #13 item 6): a client that stops reading costs at most 256 KiB of user-space
memory in the proxy; after the load, RSS is within 50 MiB of its value before.
"""

from __future__ import annotations

import argparse
import base64
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandport import Sandbox  # noqa: E402
from tests._server import ServerProcess  # noqa: E402

HERE = Path(__file__).resolve().parent
UP_PORT = 3000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settled_rss(pid: int, quiet_s: float = 1.5, limit_s: float = 30.0) -> int:
    """RSS once it has not grown for ``quiet_s``."""
    started = last_change = time.monotonic()
    value = rss_kib(pid)
    while time.monotonic() - last_change < quiet_s and time.monotonic() - started < limit_s:
        time.sleep(0.1)
        now = rss_kib(pid)
        if now > value:
            value, last_change = now, time.monotonic()
    return value


def stalled_clients(port: int, host: str, n: int, size: int) -> list[socket.socket]:
    held = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET /big?n={size} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        held.append(s)
    return held


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sandport-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "data").start()
        assert server.proc is not None
        pid = server.proc.pid
        try:
            with Sandbox.create(api_key=server.api_key, base_url=server.base_url,
                                exposed_ports={UP_PORT: False}) as sb:
                code = (HERE / "proxy_upstream.py").read_bytes()
                sb.exec(f"echo {base64.b64encode(code).decode()} | base64 -d > /srv/up.py")
                sb.exec(f"setsid python3 /srv/up.py {UP_PORT} >/tmp/up.log 2>&1 &")
                time.sleep(0.5)
                host = sb.get_exposed_url(UP_PORT).split("//")[1].rstrip("/")
                before = settled_rss(pid)
                held = stalled_clients(server.port, host, args.clients, args.size_mib << 20)
                during = settled_rss(pid, quiet_s=3.0)
                for s in held:
                    s.close()
                time.sleep(2.0)
                after = rss_kib(pid)
        finally:
            server.stop_all_sandboxes()
            server.stop()
    per_client = (during - before) / args.clients
    print(f"{args.clients} clients not reading a {args.size_mib} MiB response each:")
    print(f"  server RSS before {before / 1024:.1f} MiB, held {during / 1024:.1f} MiB, "
          f"after {after / 1024:.1f} MiB")
    print(f"  per stalled client: {per_client:.0f} KiB (budget ≤ 256 KiB); "
          f"after − before: {(after - before) / 1024:+.1f} MiB (budget ≤ 50 MiB)")


if __name__ == "__main__":
    main()
