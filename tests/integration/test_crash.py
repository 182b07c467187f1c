"""A server killed in the middle of a transition loses nothing and leaves no wrong state.

Each test arms one named crash point (``SANDPORT_TEST_CRASH_AT``, crashpoints.py): the
server ends there with ``os._exit(137)`` as if killed, leaving whatever it had spawned
(runc, CRIU) running. A new server on the same data directory must then finish or undo the
transition, the sandbox's files must be there, every route must answer (none may hang on
a frozen sandbox), and the one invariant checker must find the records and the host in
agreement.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sandport.runtime.agent.protocol import AGENT_PORT

from .._server import ServerProcess
from ._host import sandbox_traces
from ._invariants import assert_invariants

Start = Callable[..., ServerProcess]
# Counts in /root/n, replaced whole each time (a reader never sees it half written).
COUNTER = ("nohup python3 -c 'import os, time\nn=0\nwhile True:\n n+=1\n "
           "open(\"/root/n.new\",\"w\").write(str(n))\n os.replace(\"/root/n.new\", "
           "\"/root/n\")\n time.sleep(0.05)' >/dev/null 2>&1 &")


def _exec(detail: dict, command: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{detail['runtime']['baseUrl']}/sandbox/exec",
                      headers={"Authorization": f"Bearer {detail['token']}"},
                      json={"command": command}, timeout=timeout)


def _stdout(detail: dict, command: str) -> str:
    r = _exec(detail, command)
    assert r.status_code == 200, r.text
    return str(r.json()["result"]["stdout"])


def _crash_during(srv: ServerProcess, method: str, path: str, **kwargs: object) -> None:
    """Send the request that reaches the armed crash point; the server dies answering."""
    with srv.client() as api:
        try:
            r = api.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError:
            pass
        else:
            pytest.fail(f"the server answered {r.status_code} instead of crashing: {r.text}")
    assert srv.proc is not None
    assert srv.proc.wait(timeout=30) == 137, srv.log()
    assert "crash point" in srv.log()


def _restart(start: Start, srv: ServerProcess,
             env: dict[str, str] | None = None) -> ServerProcess:
    again = start(srv.data_dir, srv.port, env=env)
    assert_invariants(again.data_dir)
    return again


def _armed(start: Start, point: str) -> ServerProcess:
    return start(env={"SANDPORT_TEST_CRASH_AT": point})


def _new_sandbox(srv: ServerProcess) -> dict:
    with srv.client() as api:
        detail = api.post("/api/sandbox", json={}).json()
    _stdout(detail, "echo mine > /root/keep; " + COUNTER)
    return detail


def _counter(detail: dict) -> int:
    return int(_stdout(detail, "cat /root/n") or 0)


@pytest.mark.parametrize("point", ["suspend.after_intent", "suspend.runc_started",
                                   "suspend.after_checkpoint"])
def test_crash_mid_suspend_keeps_the_sandbox(fresh_server: Start, point: str) -> None:
    srv = _armed(fresh_server, point)
    detail = _new_sandbox(srv)
    _crash_during(srv, "POST", f"/api/sandbox/{detail['id']}/suspend")
    srv = _restart(fresh_server, srv)
    with srv.client() as api:
        record = api.get(f"/api/sandbox/{detail['id']}").json()
        # Not finished: still running. Finished (the checkpoint ran on by itself while no
        # server was up): suspended, and a resume restores it.
        expected = "active" if point == "suspend.after_intent" else "paused"
        assert record["status"] == expected, record
        assert record["suspended"] is (expected == "paused")
        if expected == "paused":
            assert api.post(f"/api/sandbox/{detail['id']}/resume").status_code == 200
            assert_invariants(srv.data_dir)
    assert _stdout(detail, "cat /root/keep") == "mine\n"
    before = _counter(detail)
    time.sleep(0.3)
    assert _counter(detail) > before  # its processes run (restored where they were)
    with srv.client() as api:  # and it can be suspended again
        assert api.post(f"/api/sandbox/{detail['id']}/suspend").json()["suspended"] is True
        assert api.post(f"/api/sandbox/{detail['id']}/resume").json()["status"] == "active"
    assert _stdout(detail, "cat /root/keep") == "mine\n"
    assert_invariants(srv.data_dir)


@pytest.mark.parametrize("point", ["restore.after_intent", "restore.runc_started",
                                   "restore.after_restore"])
def test_crash_mid_restore(fresh_server: Start, point: str) -> None:
    srv = _armed(fresh_server, point)
    detail = _new_sandbox(srv)
    with srv.client() as api:
        assert api.post(f"/api/sandbox/{detail['id']}/suspend").status_code == 200
    _crash_during(srv, "POST", f"/api/sandbox/{detail['id']}/resume")
    srv = _restart(fresh_server, srv)
    with srv.client() as api:
        record = api.get(f"/api/sandbox/{detail['id']}").json()
        assert record["status"] == ("paused" if point == "restore.after_intent" else "active")
        assert api.post(f"/api/sandbox/{detail['id']}/resume").json()["status"] == "active"
    assert _stdout(detail, "cat /root/keep") == "mine\n"
    assert_invariants(srv.data_dir)


@pytest.mark.parametrize("point", ["pause.after_intent", "pause.runc_started",
                                   "pause.after_freeze"])
def test_crash_mid_pause_leaves_no_frozen_active_sandbox(fresh_server: Start,
                                                         point: str) -> None:
    srv = _armed(fresh_server, point)
    detail = _new_sandbox(srv)
    _crash_during(srv, "POST", f"/api/sandbox/{detail['id']}/pause")
    srv = _restart(fresh_server, srv)  # the checker: record paused ⇔ freezer FROZEN
    sid = detail["id"]
    with srv.client() as api:
        # The pause that was asked for is finished, wherever it stopped.
        assert api.get(f"/api/sandbox/{sid}").json()["status"] == "paused"
        # Every verb answers, at once, and does what it says.
        assert api.post(f"/api/sandbox/{sid}/pause").json()["status"] == "paused"
        t0 = time.monotonic()
        refused = _exec(detail, "true", timeout=5)
        assert refused.status_code == 409 and time.monotonic() - t0 < 3
        assert api.post(f"/api/sandbox/{sid}/resume").json()["status"] == "active"
    assert _stdout(detail, "cat /root/keep") == "mine\n"
    assert_invariants(srv.data_dir)


@pytest.mark.parametrize("point", ["resume.after_intent", "resume.runc_started",
                                   "resume.after_thaw"])
def test_crash_mid_resume(fresh_server: Start, point: str) -> None:
    srv = _armed(fresh_server, point)
    detail = _new_sandbox(srv)
    with srv.client() as api:
        assert api.post(f"/api/sandbox/{detail['id']}/pause").status_code == 200
    _crash_during(srv, "POST", f"/api/sandbox/{detail['id']}/resume")
    srv = _restart(fresh_server, srv)
    with srv.client() as api:  # the resume that was asked for is finished
        assert api.get(f"/api/sandbox/{detail['id']}").json()["status"] == "active"
    assert _stdout(detail, "cat /root/keep") == "mine\n"


def test_frozen_behind_the_records_back_is_thawed(fresh_server: Start) -> None:
    """The freezer says FROZEN while the record says active (a pause that crashed before
    it wrote anything, or a hand on runc): boot thaws it; under a running server no route
    hangs, and resume thaws whatever the freezer says."""
    srv = fresh_server()
    detail = _new_sandbox(srv)
    runc = ["runc", "--root", str(srv.data_dir / "runc")]
    srv.crash()
    subprocess.run([*runc, "pause", detail["id"]], check=True)
    srv = _restart(fresh_server, srv)
    assert _stdout(detail, "cat /root/keep") == "mine\n"
    subprocess.run([*runc, "pause", detail["id"]], check=True)
    t0 = time.monotonic()
    assert _exec(detail, "true", timeout=10).status_code == 409
    assert time.monotonic() - t0 < 3
    with srv.client() as api:
        assert api.post(f"/api/sandbox/{detail['id']}/resume").json()["status"] == "active"
        assert _stdout(detail, "cat /root/keep") == "mine\n"
        subprocess.run([*runc, "pause", detail["id"]], check=True)
        assert api.post(f"/api/sandbox/{detail['id']}/pause").json()["status"] == "paused"
        assert api.post(f"/api/sandbox/{detail['id']}/resume").json()["status"] == "active"
    assert _stdout(detail, "true") == ""
    assert_invariants(srv.data_dir)


def test_crash_while_a_snapshot_holds_the_sandbox_frozen(fresh_server: Start) -> None:
    """The server dies with the sandbox frozen for a snapshot's copy: the record says
    active and the next boot thaws it; the half-made snapshot is no image."""
    srv = _armed(fresh_server, "snapshot.copied")
    detail = _new_sandbox(srv)
    before = _counter(detail)
    _crash_during(srv, "POST", f"/api/sandbox/{detail['id']}/snapshot", json={"name": "half"})
    srv = _restart(fresh_server, srv)
    with srv.client() as api:
        assert api.get(f"/api/sandbox/{detail['id']}").json()["status"] == "active"
        assert "half" not in {i["name"] for i in api.get("/api/images").json()["images"]}
    assert _stdout(detail, "cat /root/keep") == "mine\n"
    time.sleep(1.5)
    assert _counter(detail) > before  # thawed: its processes run again


@pytest.mark.parametrize("point", ["create.after_insert", "create.runc_started",
                                   "create.after_start"])
def test_crash_mid_create(fresh_server: Start, point: str) -> None:
    srv = _armed(fresh_server, point)
    _crash_during(srv, "POST", "/api/sandbox", json={})
    srv = _restart(fresh_server, srv)
    with srv.client() as api:
        [record] = api.get("/api/sandboxes").json()["sandboxes"]
        assert record["status"] == "error"
        assert "being created" in record["closeReason"]
        assert api.post("/api/sandbox", json={}).status_code == 200  # and the next one works
    assert sandbox_traces(srv.data_dir, record["id"]) == []


@pytest.mark.parametrize("point", ["stop.after_mark", "stop.runtime_half_done"])
def test_crash_mid_stop_finishes_the_stop(fresh_server: Start, point: str) -> None:
    srv = _armed(fresh_server, point)
    detail = _new_sandbox(srv)
    _crash_during(srv, "PUT", f"/api/sandbox/{detail['id']}/stop")
    srv = _restart(fresh_server, srv)
    with srv.client() as api:
        record = api.get(f"/api/sandbox/{detail['id']}").json()
        assert record["status"] == "closed"
        assert record["closeReason"] == "stopped by request"
        assert record["filesKeptUntil"] is None  # asked for: nothing is kept
    assert sandbox_traces(srv.data_dir, detail["id"]) == []


def _kept_file(srv: ServerProcess, sandbox_id: str) -> Path:
    return srv.data_dir / "retained" / sandbox_id / "upper" / "root" / "keep"


def test_a_sandbox_that_died_unasked_keeps_its_files(fresh_server: Start) -> None:
    """Lost while the server was down, or killed under a running one: closed, its files
    kept for retain_ended_h (then reclaimed), nothing else left."""
    keep = {"SANDPORT_RETAIN_ENDED_H": "0.002"}  # 7.2 s
    srv = fresh_server(env=keep)
    lost, killed = _new_sandbox(srv), _new_sandbox(srv)
    runc = ["runc", "--root", str(srv.data_dir / "runc")]
    srv.crash()
    subprocess.run([*runc, "kill", lost["id"], "KILL"], check=True)
    srv = _restart(fresh_server, srv, keep)
    subprocess.run([*runc, "kill", killed["id"], "KILL"], check=True)
    with srv.client() as api:
        record = api.get(f"/api/sandbox/{lost['id']}").json()
        assert record["status"] == "closed"
        assert record["closeReason"] == "container exited while the server was down"
        assert record["filesKeptUntil"] is not None
        for _ in range(100):
            record = api.get(f"/api/sandbox/{killed['id']}").json()
            if record["status"] == "closed":
                break
            time.sleep(0.1)
        assert record["closeReason"] == "container exited"
        assert record["filesKeptUntil"] is not None
    for sandbox in (lost, killed):
        assert _kept_file(srv, sandbox["id"]).read_text() == "mine\n"
        assert sandbox_traces(srv.data_dir, sandbox["id"]) == []
    assert_invariants(srv.data_dir)
    deadline = time.monotonic() + 30
    while _kept_file(srv, lost["id"]).exists() or _kept_file(srv, killed["id"]).exists():
        assert time.monotonic() < deadline, "kept files were not reclaimed"
        time.sleep(0.5)
    with srv.client() as api:
        assert api.get(f"/api/sandbox/{lost['id']}").json()["filesKeptUntil"] is None
    assert_invariants(srv.data_dir)


def test_crash_while_keeping_files(fresh_server: Start) -> None:
    srv = _armed(fresh_server, "lost.files_moved")
    detail = _new_sandbox(srv)
    runc = ["runc", "--root", str(srv.data_dir / "runc")]
    subprocess.run([*runc, "kill", detail["id"], "KILL"], check=True)
    assert srv.proc is not None
    assert srv.proc.wait(timeout=30) == 137  # the reaper found it dead and crashed
    srv = _restart(fresh_server, srv)
    with srv.client() as api:
        assert api.get(f"/api/sandbox/{detail['id']}").json()["status"] == "closed"
    assert _kept_file(srv, detail["id"]).read_text() == "mine\n"


def _runc_checkpointing(sandbox_id: str) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"checkpoint" in argv and sandbox_id.encode() in argv:
            return True
    return False


def test_kill_9_while_runc_checkpoints(fresh_server: Start) -> None:
    """The probe's case, with no crash point: SIGKILL while the checkpoint runs (seen by
    its runc process, not by a timing guess); the runc goes on alone."""
    srv = fresh_server()
    detail = _new_sandbox(srv)
    with srv.client() as api:
        sent = threading.Thread(target=lambda: _quietly(
            api.post, f"/api/sandbox/{detail['id']}/suspend"))
        sent.start()
        deadline = time.monotonic() + 20
        while not _runc_checkpointing(detail["id"]):
            assert time.monotonic() < deadline, "no runc checkpoint seen"
            time.sleep(0.001)
        srv.crash()
        sent.join()
    srv = _restart(fresh_server, srv)
    with srv.client() as api:
        record = api.get(f"/api/sandbox/{detail['id']}").json()
        assert record["status"] in ("active", "paused"), record
        assert api.post(f"/api/sandbox/{detail['id']}/resume").json()["status"] == "active"
    assert _stdout(detail, "cat /root/keep") == "mine\n"
    assert_invariants(srv.data_dir)


def _quietly(call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except httpx.HTTPError:
        pass


MEMORY = "nohup python3 -c 'import time\nb=bytearray(300<<20)\ntime.sleep(3600)' >/dev/null 2>&1 &"


def _session(srv: ServerProcess, sandbox_id: str, verb: str) -> int | None:
    """The session of the runc doing ``verb`` on the sandbox now (inflight.json)."""
    try:
        record = json.loads(
            (srv.data_dir / "sandboxes" / sandbox_id / "inflight.json").read_text())
    except (OSError, ValueError):
        return None
    return record.get("session") if record.get("verb") == verb else None


def _in_session(session: int) -> dict[int, str]:
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[3]) == session:
            found[int(pid)] = stat.partition("(")[2].rpartition(")")[0]
    return found


def _criu_at_work(srv: ServerProcess, sandbox_id: str, verb: str,
                  late: bool = False) -> int | None:
    """The runc session once its CRIU is dumping (its network lock is in the sandbox's
    namespace) or restoring (CRIU runs; ``late``: and runc knows the restored init, which
    CRIU tells it before it lets the processes run)."""
    session = _session(srv, sandbox_id, verb)
    if session is None or "criu" not in _in_session(session).values():
        return None
    if verb == "suspend" and subprocess.run(
            ["ip", "netns", "exec", f"sp-{sandbox_id}", "iptables", "-w", "-n", "-L", "CRIU"],
            capture_output=True).returncode != 0:
        return None
    if late:
        try:
            state = json.loads((srv.data_dir / "runc" / sandbox_id / "state.json").read_text())
        except (OSError, ValueError):
            return None
        if not state.get("init_process_pid"):
            return None
    return session


def _kill_runc_and_criu(srv: ServerProcess, session: int) -> None:
    """SIGKILL the server and the runc (and its CRIU) working on the sandbox: what a kill
    of the server's whole cgroup does, or the boot's own end to a runc that ran too long."""
    srv.crash()
    for pid, name in _in_session(session).items():
        if name.startswith(("runc", "criu")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("verb", ["suspend", "resume", "resume-late"])
def test_criu_killed_with_the_server(fresh_server: Start, verb: str) -> None:
    """CRIU killed mid-checkpoint left the sandbox's network locked (active, unreachable),
    mid-restore its mounts and runc state (the sandbox could never be restored again)."""
    srv = fresh_server()
    detail = _new_sandbox(srv)
    _stdout(detail, MEMORY)
    sid = detail["id"]
    with srv.client() as api:
        if verb != "suspend":
            assert api.post(f"/api/sandbox/{sid}/suspend").status_code == 200
        path = f"/api/sandbox/{sid}/{verb.partition('-')[0]}"
        sent = threading.Thread(target=lambda: _quietly(api.post, path))
        sent.start()
        deadline = time.monotonic() + 30
        while (session := _criu_at_work(srv, sid, "suspend" if verb == "suspend"
                                        else "restore", late=verb == "resume-late")) is None:
            assert time.monotonic() < deadline, "CRIU was never seen at work"
            time.sleep(0.002)
        _kill_runc_and_criu(srv, session)
        sent.join()
    srv = _restart(fresh_server, srv)  # the checker: no lock left, no runc state, mounts
    with srv.client() as api:
        record = api.get(f"/api/sandbox/{sid}").json()
        if record["status"] == "paused":
            assert api.post(f"/api/sandbox/{sid}/resume").json()["status"] == "active"
    t0 = time.monotonic()
    assert _stdout(detail, "cat /root/keep") == "mine\n"
    assert time.monotonic() - t0 < 10
    with srv.client() as api:  # and it suspends and restores again
        assert api.post(f"/api/sandbox/{sid}/suspend").json()["suspended"] is True
        assert api.post(f"/api/sandbox/{sid}/resume").json()["status"] == "active"
    assert _stdout(detail, "cat /root/keep") == "mine\n"
    assert_invariants(srv.data_dir)


def test_an_agent_that_cannot_be_reached_fails_fast(fresh_server: Start) -> None:
    """Packets to the agent dropped (as by a network lock a CRIU left): exec fails within
    seconds, it does not wait out the kernel's two minutes of connect retries."""
    srv = fresh_server()
    detail = _new_sandbox(srv)
    rule = ["INPUT", "-p", "tcp", "--dport", str(AGENT_PORT), "-j", "DROP"]
    ns = ["ip", "netns", "exec", f"sp-{detail['id']}", "iptables", "-w"]
    subprocess.run([*ns, "-I", *rule], check=True)
    try:
        t0 = time.monotonic()
        answer = _exec(detail, "true", timeout=60)
        assert time.monotonic() - t0 < 8
        assert answer.status_code >= 500 and "not answering" in answer.json()["message"]
    finally:
        subprocess.run([*ns, "-D", *rule], check=True)
    assert _stdout(detail, "cat /root/keep") == "mine\n"
