"""The E2B face's figures, each against a peer measured in the same run:

- TLS on the edge (``--tls-cert``) against nginx terminating TLS with the same certificate
  in front of the same sandbox port: small GETs with wrk at 1 and 50 connections (req/s,
  p50, proxy CPU per request) and a download (GB/s);
- envd against the runtime API, both served by the same server on the same sandbox:
  ``commands.run("true")`` with the official e2b SDK against sandport's own ``exec``, and a
  file written and read back through each.

    .venv/bin/python bench/e2b_face.py [--seconds 5] [--runs 50] [--file-mib 16]

Installs nginx and wrk from Debian packages if missing (bench/proxy.py).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import (  # noqa: E402
    NGINX_CONF,
    UP_PORT,
    Path_,
    ensure_packages,
    start_nginx,
    start_upstream,
    wrk,
)

from sandport import Sandbox  # noqa: E402
from tests._ca import TestCA  # noqa: E402
from tests._server import ServerProcess, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent

# bench/proxy.py's nginx, terminating TLS with the edge's certificate
NGINX_TLS = NGINX_CONF.replace(
    "listen 127.0.0.1:{listen};",
    "listen 127.0.0.1:{listen} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; "
    "ssl_protocols TLSv1.2 TLSv1.3;")
assert NGINX_TLS != NGINX_CONF


class TlsPath(Path_):
    @property
    def base(self) -> str:
        return f"https://{self.address}:{self.port}"


def download(path: Path_, size: int, ca: Path) -> float:
    out = subprocess.run(
        ["curl", "-s", "--cacert", str(ca), "-o", "/dev/null", "-w",
         "%{speed_download} %{size_download}", "-H", f"Host: {path.host}",
         f"{path.base}/big?n={size}"], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[1]) == size, out
    return float(out[0]) / 1e9


def p50_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def tls_figures(tmp: Path, seconds: int, big: int) -> None:
    ca = TestCA(tmp)
    # (*.localhost names resolve to loopback here: nss-myhostname; a wildcard needs two labels)
    cert, key, _ = ca.issue("edge", dns_names=("*.sb.localhost",), ips=("127.0.0.1",))
    port = free_port()
    server = ServerProcess(tmp / "data", port, tls=(cert, key, ca.ca_file), env={
        "SANDPORT_PUBLIC_URL_TEMPLATE": f"https://{{port}}-{{id}}.sb.localhost:{port}"}).start()
    os.environ["SSL_CERT_FILE"] = str(ca.ca_file)  # (the SDK trusts the test CA)
    nginx: subprocess.Popen[bytes] | None = None
    try:
        with Sandbox.create(api_key=server.api_key, base_url=server.base_url,
                            exposed_ports={UP_PORT: False}, vcpus=1) as sb:
            address = start_upstream(sb)
            listen = free_port()
            nginx, worker = start_nginx(tmp / "nginx", NGINX_TLS.format(
                prefix=tmp / "nginx", address=address, port=UP_PORT, listen=listen, cert=cert,
                key=key))
            host = f"{UP_PORT}-{sb.id}.sb.localhost:{server.port}"
            paths = {"nginx+TLS": (TlsPath("nginx", "127.0.0.1", listen, host), worker),
                     "sandport+TLS": (TlsPath("sandport", "127.0.0.1", server.port, host),
                                      server.proc.pid if server.proc else None)}
            results = {}
            for name, (path, pid) in paths.items():
                wrk(path, 50, 1, pid)  # warm up
                r1, lat1, _ = wrk(path, 1, seconds, pid)
                r50, lat50, cpu = wrk(path, 50, seconds, pid)
                results[name] = (r1, lat1, r50, lat50, cpu, download(path, big, ca.ca_file))
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait()
        server.stop_all_sandboxes()
        server.stop()
    print(f"\n{'TLS path':13} {'c=1 req/s':>10} {'c=1 p50':>9} {'c=50 req/s':>11} "
          f"{'c=50 p50':>9} {'CPU/req':>8} {big >> 20} MiB GB/s")
    for name, (r1, lat1, r50, lat50, cpu, gbps) in results.items():
        print(f"{name:13} {r1:10.0f} {lat1:7.0f}µs {r50:11.0f} {lat50:7.0f}µs "
              f"{cpu:6.1f}µs {gbps:10.2f}")
    n, s = results["nginx+TLS"], results["sandport+TLS"]
    print(f"  sandport+TLS vs nginx+TLS: c=50 {s[2] / n[2]:.2f}×, c=1 {s[0] / n[0]:.2f}×, "
          f"download {s[5] / n[5]:.2f}×, CPU/req {s[4]:.0f} vs {n[4]:.0f} µs")


def envd_figures(tmp: Path, runs: int, file_mib: int) -> None:
    from e2b import Sandbox as E2BSandbox

    os.environ.pop("SSL_CERT_FILE", None)
    server = ServerProcess(tmp / "data-envd").start()
    os.environ.update(E2B_API_URL=server.base_url, E2B_SANDBOX_URL=server.base_url,
                      E2B_API_KEY=server.api_key)
    try:
        e2b = E2BSandbox.create(template="python", timeout=600)
        ours = Sandbox.connect(e2b.sandbox_id, api_key=server.api_key,
                               base_url=server.base_url)
        blob = secrets.token_bytes(file_mib << 20)
        figures = {
            "run true": (p50_ms(lambda: e2b.commands.run("true"), runs),
                         p50_ms(lambda: ours.exec("true"), runs)),
            # the same command as the e2b SDK runs it: a login shell (bash -l -c)
            "run bash -l": (p50_ms(lambda: e2b.commands.run("true"), runs),
                            p50_ms(lambda: ours.exec("bash -l -c true"), runs)),
            f"write {file_mib} MiB": (
                p50_ms(lambda: e2b.files.write("/tmp/a.bin", blob), 5),
                p50_ms(lambda: ours.files.upload("/tmp/b.bin", blob), 5)),
            f"read {file_mib} MiB": (
                p50_ms(lambda: e2b.files.read("/tmp/a.bin", format="bytes"), 5),
                p50_ms(lambda: ours.files.download("/tmp/b.bin"), 5)),
        }
        ours.close()
        e2b.kill()
    finally:
        server.stop_all_sandboxes()
        server.stop()
    print(f"\n{'same sandbox':16} {'e2b SDK → envd':>15} {'sandport SDK → runtime API':>27}")
    for name, (theirs, mine) in figures.items():
        print(f"{name:16} {theirs:12.1f} ms {mine:24.1f} ms   ({theirs / mine:.2f}×)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--file-mib", type=int, default=16)
    parser.add_argument("--big-mib", type=int, default=256)
    args = parser.parse_args()
    ensure_packages()
    with tempfile.TemporaryDirectory(prefix="sandport-bench-") as tmp:
        tls_figures(Path(tmp), args.seconds, args.big_mib << 20)
        envd_figures(Path(tmp), args.runs, args.file_mib)
    print(f"(machine: {os.cpu_count()} cores; clients, proxies and upstream share them)")


if __name__ == "__main__":
    main()
