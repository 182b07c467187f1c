"""Background processes and terminals through our SDK, against real sandboxes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandport import AsyncSandbox, Sandbox
from sandport.errors import BadRequest, Conflict, NotFound, RequestTimeout

from .._server import ServerProcess


def test_start_stream_wait(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    proc = sb.processes.start("for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.05; done;"
                              " exit 5")
    assert proc.pid and proc.info.status == "running"
    chunks = list(proc)  # iterating a process is streaming its output
    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
    assert "".join(c.text for c in chunks if c.stream == "stdout") == "out1\nout2\nout3\n"
    assert "".join(c.text for c in chunks if c.stream == "stderr") == "err1\nerr2\nerr3\n"
    result = proc.wait()
    assert (result.info.status, result.exit_code) == ("exited", 5)
    assert result.stdout == "out1\nout2\nout3\n" and not result.output_truncated
    argv = sb.processes.start(["printf", "%s|", "a b", "$HOME", "'q'"]).wait()
    assert argv.stdout == "a b|$HOME|'q'|"  # an argv list reaches the program untouched


def test_stdin_round_trip(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    proc = sb.processes.start("cat; echo '<eof>'")
    proc.write_stdin("first line\n")
    stream = proc.stream()
    assert next(stream).text == "first line\n"  # echoed back while stdin is still open
    proc.write_stdin(b"\x00\xffbinary\n")
    proc.close_stdin()
    rest = b"".join(c.data for c in stream)
    assert rest == b"\x00\xffbinary\n<eof>\n"
    assert proc.wait().exit_code == 0
    with pytest.raises(Conflict):
        proc.write_stdin("too late")
    quiet = sb.processes.start("cat", stdin=False)  # /dev/null: ends at once
    assert quiet.wait(10).stdout == ""


def test_signals_and_kill(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    trapped = sb.processes.start("trap 'echo got USR1; exit 7' USR1; echo ready;"
                                 " while :; do sleep 0.05; done")
    assert next(trapped.stream()).text == "ready\n"
    trapped.signal("USR1")
    result = trapped.wait(10)
    assert (result.exit_code, result.stdout) == (7, "ready\ngot USR1\n")
    sleeper = sb.processes.start("sleep 100")
    sleeper.signal("SIGTERM")
    assert (sleeper.wait(10).info.status, sleeper.info.exit_code) == ("killed", 143)
    # The whole group goes: a child of the shell does not survive a kill.
    tree = sb.processes.start("sleep 300 & sleep 301; wait")
    time.sleep(0.2)
    assert tree.kill().info.status == "killed"
    assert sb.exec("ps -eo args | grep -c '^sleep 30[01]'").stdout.strip() == "0"
    with pytest.raises(BadRequest):
        sb.processes.start("sleep 1").signal("SIGNOPE")


def test_reconnect_misses_nothing_and_process_outlives_clients(
        make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    proc = sb.processes.start("for i in $(seq 1 40); do echo $i; sleep 0.02; done")
    seen: list[str] = []
    last = 0
    for chunk in proc.stream():
        seen.append(chunk.text)
        last = chunk.seq
        if len(seen) == 3:
            break  # the client goes away; the process does not
    time.sleep(0.3)
    assert proc.refresh().status == "running"
    for chunk in proc.stream(from_seq=last + 1):
        assert chunk.seq == last + 1, "a gap or a repeat after reconnecting"
        last = chunk.seq
        seen.append(chunk.text)
    assert "".join(seen).split() == [str(i) for i in range(1, 41)]
    unattended = sb.processes.start("sleep 0.3; echo made > /tmp/unattended; echo said")
    assert unattended.wait(10).stdout == "said\n"
    assert sb.files.read("/tmp/unattended") == "made\n"
    assert [c.text for c in unattended.stream()] == ["said\n"]  # kept for a late reader


def test_output_buffer_is_bounded(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    proc = sb.processes.start("head -c 10000000 /dev/zero | tr '\\0' x", buffer_bytes=1 << 20)
    result = proc.wait(60)
    assert result.exit_code == 0 and result.output_truncated
    assert (1 << 20) - (256 << 10) <= len(result.stdout) <= 1 << 20  # newest MiB, whole chunks
    replay = b"".join(c.data for c in proc.stream())
    assert replay == b"x" * len(replay) and len(replay) == len(result.stdout)


def test_hundred_megabytes_stream_with_bounded_memory(
        make_sandbox: Callable[..., Sandbox], server: ServerProcess) -> None:
    sb = make_sandbox()
    warm_up = sb.processes.start("head -c 10000000 /dev/urandom")
    assert sum(len(c.data) for c in warm_up.stream()) == 10_000_000
    before = _hwm_kib(server)  # after the first stream's one-time costs (threads, arenas)
    proc = sb.processes.start("head -c 100000000 /dev/urandom")
    total = sum(len(c.data) for c in proc.stream())
    assert total == 100_000_000
    grown = (_hwm_kib(server) - before) / 1024
    assert grown < 32, f"server memory grew {grown:.0f} MiB streaming 100 MB"
    assert proc.wait(30).exit_code == 0


def test_many_concurrent_processes_list_and_timeout(
        make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    procs = [sb.processes.start(f"sleep 0.5; echo n{i}") for i in range(20)]
    running = {p.id for p in sb.processes.list() if p.status == "running"}
    assert {p.id for p in procs} <= running
    assert [p.wait(30).stdout for p in procs] == [f"n{i}\n" for i in range(20)]
    slow = sb.processes.start("sleep 30", timeout=0.5)
    with pytest.raises(RequestTimeout):
        slow.wait(0.1)
    assert slow.wait(10).info.status == "timed_out"
    assert sb.processes.get(slow.id).info.status == "timed_out"


def test_user_cwd_env_and_clear_errors(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    as_nobody = sb.processes.start("id -u; echo $HOME", user="nobody").wait(10)
    assert as_nobody.stdout.split()[0] == "65534"
    here = sb.processes.start("pwd; echo $X", cwd="/tmp", env={"X": "y"}).wait(10)
    assert here.stdout == "/tmp\ny\n"
    itself = sb.exec("echo $SANDPORT_SANDBOX_ID; echo $SANDPORT_PUBLIC_URL_TEMPLATE").stdout
    template = itself.split()[1]
    assert itself.split()[0] == sb.id and "{port}" in template
    assert template.replace("{port}", "3000") == sb.get_exposed_url(3000)
    with pytest.raises(BadRequest):
        sb.processes.start("true", cwd="/does/not/exist")
    with pytest.raises(BadRequest):
        sb.processes.start("true", user="no-such-user")
    with pytest.raises(NotFound):
        sb.processes.get("proc_0000000000000000")


def test_terminal_drives_bash(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    term = sb.terminal.create("bash", rows=24, cols=80)
    assert term.info.running
    with term.connect() as session:
        session.send("echo $((6*7)); stty size\n")
        screen = _read_until(session, b"24 80")
        assert b"42\r\n" in screen
        assert b"# " in screen or b"$ " in screen  # a prompt
        term.resize(40, 100)
        session.send("stty size\n")
        assert b"40 100" in _read_until(session, b"40 100")
        session.resize(50, 120)
        session.send("stty size\n")
        _read_until(session, b"50 120")
        session.send("exit 3\n")
        while session.read(10) is not None:
            pass
    done = term.wait(10)
    assert (done.running, done.exit_code) == (False, 3)
    other = sb.terminal.create("bash")
    assert other.kill().running is False


def test_async_twins(server: ServerProcess) -> None:
    async def main() -> None:
        async with await AsyncSandbox.create(api_key=server.api_key,
                                             base_url=server.base_url) as sb:
            proc = await sb.processes.start("cat")
            await proc.write_stdin("async\n")
            await proc.close_stdin()
            assert [c.text async for c in proc] == ["async\n"]
            assert (await proc.wait()).exit_code == 0
            term = await sb.terminal.create("bash")
            session = await term.connect()
            await session.send("echo $((7*6))\n")
            screen = b""
            while b"42\r\n" not in screen:
                chunk = await session.read(10)
                assert chunk, screen
                screen += chunk
            await session.close()
            await term.kill()

    asyncio.run(main())


def _read_until(session: object, marker: bytes, timeout_s: float = 10) -> bytes:
    screen = b""
    deadline = time.monotonic() + timeout_s
    while marker not in screen:
        assert time.monotonic() < deadline, screen
        chunk = session.read(1)  # type: ignore[attr-defined]
        assert chunk is not None, screen
        screen += chunk
    return screen


def _hwm_kib(server: ServerProcess) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")
