"""Run inside a network + mount namespace of its own (test_tidy.py starts it so): a whole
host in a box, with its own iptables, ip_forward and /run, where this server is the only
one, so what the last server out removes can be checked without touching the real host.
Prints one line per check; exits non-zero at the first that fails."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from .._server import ServerProcess

FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def rules() -> str:
    filt = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    nat = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True,
                         text=True).stdout
    return filt + nat


def check(what: str, ok: bool) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        sys.exit(1)


def main() -> None:
    for point in ("/run/sandport", "/run/netns"):
        Path(point).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", point], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    FORWARD.write_text("0")
    data = Path(tempfile.mkdtemp()) / "data"
    srv = ServerProcess(data).start()
    check("the host chains are installed at start", "SANDPORT-FWD" in rules())
    with srv.client() as api:
        out = api.post("/api/sandbox", json={"allowInternetAccess": True}).json()
        check("forwarding is on while a sandbox may go out", FORWARD.read_text() == "1\n")
        api.put(f"/api/sandbox/{out['id']}/stop")
        check("forwarding is put back once none may", FORWARD.read_text() == "0\n")
        kept = api.post("/api/sandbox", json={}).json()
    srv.stop()
    check("the API socket goes with a clean stop", not (data / "run" / "api.sock").exists())
    check("a sandbox outlives the server: its guards stay", "SANDPORT-IN" in rules())
    srv = ServerProcess(data, srv.port).start()
    with srv.client() as api:
        api.put(f"/api/sandbox/{kept['id']}/stop")
    srv.crash()
    check("kill -9 leaves the socket", (data / "run" / "api.sock").exists())
    srv = ServerProcess(data, srv.port).start()  # a stale socket is no obstacle
    other = ServerProcess(data.parent / "other", env={"SANDPORT_SUBNET": "10.79.0.0/16"})
    other.start().stop()
    check("a server that is not the last out leaves the guards",
          "SANDPORT-IN" in rules() and "10.79.0.0/16" in rules())
    srv.stop()
    left = rules()
    check("the last server out removes the chains and MASQUERADE",
          "SANDPORT" not in left and "MASQUERADE" not in left)
    check("forwarding is as it was found", FORWARD.read_text() == "0\n")


if __name__ == "__main__":
    main()
