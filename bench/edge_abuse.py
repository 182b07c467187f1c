"""What hostile clients cost the edge (issue #13 items 5 and 7), as figures; run it with
PYTHONPATH pointing at an older src/ for the "before".

    .venv/bin/python bench/edge_abuse.py [--half-closed 2000] [--hoard 1200]

half-closed: N clients (spread over loopback source addresses) each send a request head
declaring a 1000-byte body to a sandbox's port (a server there that waits for whole
bodies), 10 bytes of it, then FIN; prints the server's open sockets before, 2 s after and
10 s after (each such exchange held a client and an upstream socket).
hoard: the server's open-files limit is lowered to --fd-limit (prlimit), one address opens
N idle connections; then a control request (GET /api/health) from another address is
timed, and so is one from the hoarding address.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandport import Sandbox  # noqa: E402
from tests._server import ServerProcess  # noqa: E402

WHOLE_BODIES = """
import asyncio
async def serve(reader, writer):
    try:
        head = await reader.readuntil(b"\\r\\n\\n")
        length = [h for h in head.lower().split(b"\\r\\n") if h.startswith(b"content-length")]
        await reader.readexactly(int(length[0].split(b":")[1]))
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
        await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(serve, "0.0.0.0", 3000, backlog=4096)
    await server.serve_forever()
asyncio.run(main())
"""


def connect(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def half_closed(srv: ServerProcess, n: int) -> None:
    sb = Sandbox.create(api_key=srv.api_key, base_url=srv.base_url, exposed_ports={3000: False})
    sb.processes.start(["python3", "-c", WHOLE_BODIES])
    host = f"3000-{sb.id}.localhost:{srv.port}".encode()
    time.sleep(1)
    before = srv.open_sockets()
    held = []
    for i in range(n):
        sock = connect(srv.port, f"127.0.{1 + i // 250}.{1 + i % 250}")
        sock.sendall(b"POST / HTTP/1.1\r\nHost: " + host + b"\r\n"
                     b"Content-Length: 1000\r\n\r\n0123456789")
        sock.shutdown(socket.SHUT_WR)
        held.append(sock)
    time.sleep(2)
    after_2s = srv.open_sockets()
    time.sleep(8)
    print(f"{n} clients that FIN mid-body: server sockets {before} before, "
          f"{after_2s} after 2 s, {srv.open_sockets()} after 10 s")
    for sock in held:
        sock.close()
    sb.stop()
    sb.close()


def timed_health(port: int, source: str) -> str:
    started = time.monotonic()
    try:
        sock = connect(port, source)
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close"
                     b"\r\n\r\n")
        line = sock.recv(100).split(b"\r\n")[0].decode() or "(closed)"
        sock.close()
    except OSError as exc:
        line = f"({exc.strerror or exc})"
    return f"{line} in {(time.monotonic() - started) * 1000:.1f} ms"


def hoard(srv: ServerProcess, pid: int, n: int, fd_limit: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
    time.sleep(1)  # the edge reads its limit again twice a second
    held = []
    for _ in range(n):
        try:
            held.append(connect(srv.port, "127.0.0.2"))
        except OSError:
            break
    time.sleep(0.5)
    print(f"one address holds {len(held)} connections (open-files limit {fd_limit}):")
    print(f"  control request from another address: {timed_health(srv.port, '127.0.0.3')}")
    print(f"  from the hoarding address: {timed_health(srv.port, '127.0.0.2')}")
    for sock in held:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half-closed", type=int, default=2000)
    parser.add_argument("--hoard", type=int, default=1200)
    parser.add_argument("--fd-limit", type=int, default=1024)
    args = parser.parse_args()
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="sandport-bench-")) / "data").start()
    assert srv.proc is not None
    try:
        half_closed(srv, args.half_closed)
        hoard(srv, srv.proc.pid, args.hoard, args.fd_limit)
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
