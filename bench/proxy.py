"""Edge proxy figures, against one upstream inside a sandbox, reached three ways in one run:
directly (host → sandbox address), through nginx as a reverse proxy, through sandport.

    .venv/bin/python bench/proxy.py [--seconds 5]

Installs its peers from Debian packages if missing (nginx, wrk). nginx runs with one
worker, as sandport is one process. Prints, for each path: small GETs with wrk at 1 and
50 connections (req/s, p50 latency), proxy CPU per request, a 1 GiB download (GB/s),
SSE first-event latency and WebSocket round trip (p50), and the ratios the budgets in
shared/DESIGN.md §7 are written in.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websockets.sync.client as ws_client  # noqa: E402

from sandport import Sandbox  # noqa: E402
from tests._server import ServerProcess, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
UP_PORT = 3000

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream sandbox {{ server {address}:{port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://sandbox;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def ensure_packages() -> None:
    missing = [p for p, exe in (("nginx", "/usr/sbin/nginx"), ("wrk", "/usr/bin/wrk"))
               if not os.path.exists(exe)]
    if missing:
        print(f"installing {', '.join(missing)} from Debian packages", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                       check=True, env=env, stdout=subprocess.DEVNULL)


class Path_:
    def __init__(self, name: str, address: str, port: int, host: str) -> None:
        self.name, self.address, self.port, self.host = name, address, port, host

    @property
    def base(self) -> str:
        return f"http://{self.address}:{self.port}"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(path: Path_, conns: int, seconds: int, pid: int | None) -> tuple[float, float, float]:
    """(requests/s, p50 latency µs, CPU µs per request of ``pid`` or 0)."""
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        ["wrk", "-t", "1" if conns == 1 else "2", "-c", str(conns), "-d", f"{seconds}s",
         "--latency", "-H", f"Host: {path.host}", path.base + "/"],
        capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before if pid else 0.0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    value, unit = re.search(r"\s50%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p50 = float(value) * {"us": 1, "ms": 1000, "s": 1e6}[unit]
    return rps, p50, (used / total * 1e6 if pid else 0.0)


def download(path: Path_, size: int) -> float:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}",
         "-H", f"Host: {path.host}", f"{path.base}/big?n={size}"],
        capture_output=True, text=True, check=True).stdout.split()
    assert int(out[1]) == size, out
    return float(out[0]) / 1e9


def sse_first_event(path: Path_, n: int) -> float:
    samples = []
    with socket.create_connection((path.address, path.port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = f"GET /sse HTTP/1.1\r\nHost: {path.host}\r\n\r\n".encode()
        for _ in range(n):
            start = time.perf_counter()
            s.sendall(request)
            data = b""
            while b"data: first" not in data:
                data += s.recv(65536)
            samples.append((time.perf_counter() - start) * 1e6)
            while not data.endswith(b"0\r\n\r\n"):  # the rest of this response
                data += s.recv(65536)
    return statistics.median(samples)


def ws_round_trip(path: Path_, n: int) -> float:
    samples = []
    sock = socket.create_connection((path.address, path.port))
    with ws_client.connect(f"ws://{path.host}/ws", sock=sock) as ws:
        for _ in range(n):
            start = time.perf_counter()
            ws.send("ping-pong")
            ws.recv()
            samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def start_upstream(sb: Sandbox) -> str:
    """bench/proxy_upstream.py serving UP_PORT in the sandbox; its address."""
    code = (HERE / "proxy_upstream.py").read_bytes()
    sb.exec(f"echo {base64.b64encode(code).decode()} | base64 -d > /srv/up.py")
    sb.exec(f"setsid python3 /srv/up.py {UP_PORT} >/tmp/up.log 2>&1 &")
    address: str = sb.exec("hostname -I").stdout.split()[0]
    for _ in range(100):
        try:
            socket.create_connection((address, UP_PORT), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return address


def start_nginx(prefix: Path, conf: str) -> tuple[subprocess.Popen[bytes], int]:
    """nginx with ``conf`` in ``prefix``: the process and its one worker's pid."""
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(conf)
    nginx = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
    time.sleep(0.5)
    worker = int(subprocess.run(["pgrep", "-P", str(nginx.pid)], capture_output=True,
                                text=True).stdout.split()[0])
    return nginx, worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--big-mib", type=int, default=1024)
    args = parser.parse_args()
    ensure_packages()
    with tempfile.TemporaryDirectory(prefix="sandport-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "data").start()
        nginx: subprocess.Popen[bytes] | None = None
        try:
            with Sandbox.create(api_key=server.api_key, base_url=server.base_url,
                                exposed_ports={UP_PORT: False}, vcpus=1) as sb:
                address = start_upstream(sb)
                listen = free_port()
                nginx, nginx_worker = start_nginx(Path(tmp) / "nginx", NGINX_CONF.format(
                    prefix=Path(tmp) / "nginx", address=address, port=UP_PORT, listen=listen))
                host = sb.get_exposed_url(UP_PORT).split("//")[1].rstrip("/")
                paths = [Path_("direct", address, UP_PORT, f"{address}:{UP_PORT}"),
                         Path_("nginx", "127.0.0.1", listen, host),
                         Path_("sandport", "127.0.0.1", server.port, host)]
                pids = {"direct": None, "nginx": nginx_worker,
                        "sandport": server.proc.pid if server.proc else None}
                results: dict[str, dict[str, float]] = {}
                for path in paths:
                    wrk(path, 50, 1, pids[path.name])  # warm up
                    r1, lat1, _ = wrk(path, 1, args.seconds, pids[path.name])
                    r50, lat50, cpu = wrk(path, 50, args.seconds, pids[path.name])
                    results[path.name] = {
                        "rps1": r1, "p50_1": lat1, "rps50": r50, "p50_50": lat50, "cpu": cpu,
                        "gbps": download(path, args.big_mib << 20),
                        "sse": sse_first_event(path, 300), "ws": ws_round_trip(path, 2000)}
                report(results)
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait()
            server.stop_all_sandboxes()
            server.stop()


def report(results: dict[str, dict[str, float]]) -> None:
    print(f"\n{'path':9} {'c=1 req/s':>10} {'c=1 p50':>9} {'c=50 req/s':>11} "
          f"{'c=50 p50':>9} {'CPU/req':>8} {'1GiB GB/s':>10} {'SSE 1st':>8} {'WS rtt':>8}")
    for name, r in results.items():
        cpu = f"{r['cpu']:6.1f}µs" if r["cpu"] else "       -"
        print(f"{name:9} {r['rps1']:10.0f} {r['p50_1']:7.0f}µs {r['rps50']:11.0f} "
              f"{r['p50_50']:7.0f}µs {cpu:>8} {r['gbps']:10.2f} {r['sse']:6.0f}µs "
              f"{r['ws']:6.0f}µs")
    d, n, s = results["direct"], results["nginx"], results["sandport"]
    print("\nsandport vs nginx (same upstream, same run):")
    print(f"  throughput c=50: {s['rps50'] / n['rps50']:.2f}× nginx (budget ≥ 0.80)")
    print(f"  overhead over direct, p50 c=1: sandport +{s['p50_1'] - d['p50_1']:.0f} µs, "
          f"nginx +{n['p50_1'] - d['p50_1']:.0f} µs (budget ≤ 50 µs)")
    print(f"  CPU per request: sandport {s['cpu']:.1f} µs, nginx {n['cpu']:.1f} µs "
          "(budget ≤ 30 µs)")
    print(f"  WebSocket rtt overhead: sandport +{s['ws'] - d['ws']:.0f} µs, "
          f"nginx +{n['ws'] - d['ws']:.0f} µs (budget ≤ 50 µs)")
    print(f"  SSE first event: sandport {s['sse']:.0f} µs, nginx {n['sse']:.0f} µs, "
          f"direct {d['sse']:.0f} µs")
    print(f"  1 GiB download: sandport {s['gbps']:.2f} GB/s, nginx {n['gbps']:.2f} GB/s, "
          f"direct {d['gbps']:.2f} GB/s (budget ≥ 1 GB/s)")
    print(f"  (machine: {os.cpu_count()} cores; wrk, proxy and upstream share them)")


if __name__ == "__main__":
    main()
