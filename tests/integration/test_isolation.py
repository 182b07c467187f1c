"""Isolation invariants (shared/DESIGN.md §6), each tried from inside a real sandbox."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sandport import Sandbox

from .._server import ServerProcess

MakeSandbox = Callable[..., Sandbox]


def _py(sb: Sandbox, code: str, timeout: float = 60) -> str:
    result = sb.exec(f"python3 - <<'PY'\n{code}\nPY", timeout=timeout)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def _sandbox_ip(sb: Sandbox) -> str:
    return _py(sb, "import socket; print(socket.gethostbyname(socket.gethostname()))").strip()


def _connect_from(sb: Sandbox, host: str, port: int) -> str:
    """'open', 'refused' or 'timeout': what a TCP connect from inside the sandbox gets."""
    return _py(sb, f"""
import socket
s = socket.socket(); s.settimeout(2)
try:
    s.connect(({host!r}, {port})); print("open")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("timeout")
""").strip()


def test_ps_sees_only_its_own_processes(make_sandbox: MakeSandbox) -> None:
    a, b = make_sandbox(), make_sandbox()
    b.exec("sleep 1234 > /dev/null 2>&1 &")
    listing = a.exec("ps -eo pid=,args=").stdout.splitlines()
    pids = [int(line.split(None, 1)[0]) for line in listing]
    commands = [line.split(None, 1)[1] for line in listing]
    assert pids[0] == 1 and commands[0].startswith("/dev/init -s -- /dev/sandport-agent")
    # the agent, its handler for this command, the shell and ps: nothing of b or the host
    assert {c.split()[0] for c in commands[1:]} == {"/dev/sandport-agent", "/bin/sh", "ps"}
    assert max(pids) < 100


def test_host_files_are_not_visible(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    marker = f"sandport-marker-{uuid.uuid4().hex}"
    host_files = [Path("/tmp") / marker, Path("/root") / marker, tmp_path / marker]
    for path in host_files:
        path.write_text("host secret")
    try:
        sb = make_sandbox()
        for path in host_files:
            assert sb.exec(f"cat {path}").exit_code != 0
        found = sb.exec(f"find / -xdev -name '{marker}' 2>/dev/null; true").stdout
        assert found == ""
        # and what the sandbox writes stays in its own root
        sb.exec(f"echo sandbox > /tmp/{marker}-in")
        assert not (Path("/tmp") / f"{marker}-in").exists()
    finally:
        for path in host_files:
            path.unlink()


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP service on all host addresses, like the control API bound to 0.0.0.0."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield port
    srv.close()


def test_host_ports_are_unreachable(make_sandbox: MakeSandbox, server: ServerProcess,
                                    host_listener: int) -> None:
    sb = make_sandbox()
    gateway = _py(sb, "print(open('/etc/hosts').read().split()[-2])").strip()
    # the host reaches its own service ...
    with socket.create_connection(("127.0.0.1", host_listener), timeout=2):
        pass
    # ... the sandbox does not: not on the host's veth address, nor any other host address
    assert _connect_from(sb, gateway, host_listener) == "timeout"
    assert _connect_from(sb, gateway, server.port) == "timeout"
    host_ips = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    for ip in [ip for ip in host_ips if "." in ip][:2]:
        assert _connect_from(sb, ip, host_listener) == "timeout"
    # the server's own loopback is the sandbox's loopback, where nothing listens
    assert _connect_from(sb, "127.0.0.1", server.port) == "refused"


def test_other_sandboxes_are_unreachable(make_sandbox: MakeSandbox) -> None:
    a, b = make_sandbox(), make_sandbox()
    b.exec("nohup python3 -m http.server 8000 --bind 0.0.0.0 > /dev/null 2>&1 &")
    b_ip = _sandbox_ip(b)
    for _ in range(50):  # until it is serving
        if _connect_from(b, "127.0.0.1", 8000) == "open":
            break
        time.sleep(0.1)
    assert _connect_from(b, "127.0.0.1", 8000) == "open"
    response = httpx.get(f"http://{b_ip}:8000/", timeout=5)  # and the host reaches it
    assert response.status_code == 200
    assert _connect_from(a, b_ip, 8000) == "timeout"
    assert _sandbox_ip(a) != b_ip


def test_memory_hog_is_killed_inside_its_limit(make_sandbox: MakeSandbox,
                                               server: ServerProcess) -> None:
    sb = make_sandbox(mem_mib=128)
    hog = sb.exec("python3 -c 'b = bytearray(512 * 2**20); print(len(b))'")
    assert hog.exit_code == 137  # SIGKILL from the OOM killer
    assert hog.stdout == ""
    assert httpx.get(f"{server.base_url}/api/health").status_code == 200
    small = sb.exec("python3 -c 'b = bytearray(32 * 2**20); print(len(b))'")
    assert small.stdout.strip() == str(32 * 2**20)  # the sandbox itself lives on
    limit = Path(f"/sys/fs/cgroup/memory/sandport/{sb.id}/memory.limit_in_bytes")
    if limit.exists():
        assert int(limit.read_text()) == 128 * 2**20


def test_fork_bomb_hits_the_pids_limit(make_sandbox: MakeSandbox, server: ServerProcess) -> None:
    sb = make_sandbox()
    out = _py(sb, """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        n += 1
except OSError as e:
    print(n, e.errno)
""")
    forked, errno = (int(x) for x in out.split())
    assert errno == 11  # EAGAIN: the pids cgroup said no
    assert 900 <= forked <= 1024
    assert httpx.get(f"{server.base_url}/api/health").status_code == 200
    sb.stop()  # and the sandbox full of processes still stops cleanly
    assert not list(Path("/sys/fs/cgroup").glob(f"*/sandport/{sb.id}"))


def test_privileged_operations_fail(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox()
    out = json.loads(_py(sb, """
import ctypes, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(rc):
    return 0 if rc == 0 else ctypes.get_errno()
res = {}
os.makedirs("/mnt/x", exist_ok=True)
res["mount"] = errno_of(libc.mount(b"tmpfs", b"/mnt/x", b"tmpfs", 0, None))
res["reboot"] = errno_of(libc.reboot(0x01234567))
res["init_module"] = errno_of(libc.syscall(175, None, 0, b""))   # x86_64 init_module
res["finit_module"] = errno_of(libc.syscall(313, 0, b"", 0))     # x86_64 finit_module
res["sethostname"] = errno_of(libc.sethostname(b"x", 1))
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); res["raw"] = 0
except PermissionError as e:
    res["raw"] = e.errno
status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines()
              if ":\\t" in l)
res["nonewprivs"] = status["NoNewPrivs"].strip()
res["seccomp"] = status["Seccomp"].strip()
res["capbnd"] = status["CapBnd"].strip()
res["kcore"] = os.path.getsize("/proc/kcore") if os.path.exists("/proc/kcore") else -1
try:
    open("/proc/sys/kernel/domainname", "w").write("x"); res["procsys"] = 0
except OSError as e:
    res["procsys"] = e.errno
print(json.dumps(res))
"""))
    assert out["mount"] == 1  # EPERM
    assert out["reboot"] == 1
    assert out["init_module"] == 1 and out["finit_module"] == 1
    assert out["sethostname"] == 1
    assert out["raw"] == 1  # no CAP_NET_RAW
    assert out["nonewprivs"] == "1" and out["seccomp"] == "2"
    caps = int(out["capbnd"], 16)
    assert not caps & (1 << 21)  # CAP_SYS_ADMIN
    assert not caps & (1 << 16)  # CAP_SYS_MODULE
    assert out["kcore"] in (0, -1)  # masked
    assert out["procsys"] in (13, 30)  # /proc/sys is read-only


def test_each_sandbox_has_its_own_hostname_and_hosts(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox()
    assert sb.exec("hostname").stdout.strip() == sb.id
    hosts = sb.exec("cat /etc/hosts").stdout
    assert sb.id in hosts and "localhost" in hosts
    assert sb.exec("cat /etc/resolv.conf").stdout.startswith("nameserver 127.0.0.1")
    assert os.uname().nodename != sb.id


def test_agent_serves_only_the_host(make_sandbox: MakeSandbox) -> None:
    """A process in the sandbox cannot drive the in-sandbox agent (it would run as root)."""
    sb = make_sandbox()
    ip = _sandbox_ip(sb)
    out = _py(sb, f"""
import socket, struct
strings = ["sandport-exec-1", "/", "3", "/bin/sh", "-c", "touch /tmp/pwned", "0"]
body = b"".join(s.encode() + b"\\0" for s in strings)
for host in ("127.0.0.1", {ip!r}):
    s = socket.create_connection((host, 4001), timeout=5)
    s.sendall(struct.pack(">I", len(body)) + body)
    try:
        print(host, "answer" if s.recv(100) else "closed")
    except ConnectionResetError:
        print(host, "closed")
""")
    assert out.split() == ["127.0.0.1", "closed", ip, "closed"]
    assert sb.exec("test -e /tmp/pwned").exit_code == 1


def test_container_stdio_is_not_a_host_file(make_sandbox: MakeSandbox) -> None:
    """The init's and the agent's stdio: a host file there could be written (and grown
    without a quota) from inside through /proc/<pid>/fd."""
    sb = make_sandbox()
    out = sb.exec("for p in $(pgrep -f '^/dev/(init|sandport-agent)'); do"
                  " readlink /proc/$p/fd/0 /proc/$p/fd/1 /proc/$p/fd/2; done").stdout.split()
    assert out and set(out) == {"/dev/null"}, out
