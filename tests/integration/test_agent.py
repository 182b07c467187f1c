"""The agent itself, compiled and run on the host (not in a sandbox), driven over a real
socket: protocol v2 (interactive processes, ptys, signals, users) and v1 (exec)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from sandport.errors import ValidationFailed
from sandport.runtime.agent import protocol as p
from sandport.runtime.agent.build import ensure_agent
from sandport.runtime.agent.client import abort_connection, run_command

from .._server import free_port

ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "TERM=dumb", "LC_ALL=C"]
STEP_S = 20.0  # no single wait in these tests should come near this


def _bin(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found"
    return path


@pytest.fixture(scope="module")
def agent_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = ensure_agent(tmp_path_factory.mktemp("agent-bin"))
    port = free_port()
    proc = subprocess.Popen([str(binary), str(port), "127.0.0.1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, "the agent exited"
                assert time.monotonic() < deadline, "the agent is not listening"
                time.sleep(0.01)
        yield port
    finally:
        proc.kill()
        proc.wait()


class Run:
    """One connection to the agent: send client frames, read the agent's frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = p.FrameDecoder()
        self.frames: collections.deque[tuple[str, bytes]] = collections.deque()
        self.pid = 0

    async def frame(self) -> tuple[str, bytes] | None:
        """The next frame, or None at EOF."""
        while not self.frames:
            chunk = await asyncio.wait_for(self.reader.read(1 << 16), STEP_S)
            if not chunk:
                return None
            self.frames.extend(self.decoder.feed(chunk))
        return self.frames.popleft()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def output_until(self, needle: bytes, kind: str = "o") -> bytes:
        seen = b""
        while needle not in seen:
            frame = await self.frame()
            assert frame is not None and frame[0] in ("o", "e"), (frame, seen)
            if frame[0] == kind:
                seen += frame[1]
        return seen

    async def finish(self) -> tuple[tuple[int, int], bytes, bytes]:
        """Read to the exit frame: ((code, signal), stdout, stderr)."""
        out, err = bytearray(), bytearray()
        while True:
            frame = await self.frame()
            assert frame is not None, "connection closed before the exit frame"
            kind, payload = frame
            if kind == "x":
                assert await self.frame() is None  # the agent closes after the exit frame
                return p.decode_exit(payload), bytes(out), bytes(err)
            assert kind in ("o", "e"), frame
            (out if kind == "o" else err).extend(payload)

    def close(self) -> None:
        self.writer.close()


async def start(port: int, argv: list[str], **options: object) -> Run:
    """Start a v2 command and check its first frame is the pid."""
    run = await connect(port, p.encode_request_v2(argv, ENV, **options))  # type: ignore[arg-type]
    frame = await run.frame()
    assert frame is not None and frame[0] == "p", frame
    run.pid = p.decode_pid(frame[1])
    assert run.pid > 0
    return run


_runs: list[Run] = []  # this scenario's connections, closed at its end


async def connect(port: int, request: bytes) -> Run:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    _runs.append(Run(reader, writer))
    return _runs[-1]


def scenario(coro: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        try:
            await asyncio.wait_for(coro(), 60)
        finally:
            for run in _runs:
                run.writer.close()
                with contextlib.suppress(OSError):
                    await run.writer.wait_closed()
            _runs.clear()
    asyncio.run(main())


async def wait_gone(pid: int) -> None:
    """Wait for a process to be gone (reaped, not merely a zombie)."""
    deadline = time.monotonic() + STEP_S
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"process {pid} is still there"
        await asyncio.sleep(0.01)


def test_cat_round_trip_and_close(agent_port: int) -> None:
    async def body() -> None:
        run = await start(agent_port, [_bin("cat")], cwd="/", stdin_pipe=True)
        assert Path(f"/proc/{run.pid}/cmdline").read_bytes().startswith(_bin("cat").encode())
        for i in range(5):
            line = f"line {i}\n".encode()
            run.send(p.stdin_frame(line))
            assert await run.output_until(line) == line
        run.send(p.close_stdin_frame())
        assert await run.finish() == ((0, 0), b"", b"")
    scenario(body)


def test_stdout_and_stderr_frames(agent_port: int) -> None:
    async def body() -> None:
        run = await start(agent_port, ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
                          cwd="/tmp")
        assert await run.finish() == ((3, 0), b"out\n", b"err\n")
    scenario(body)


def test_big_input_and_output_flow_together(agent_port: int) -> None:
    """5 MB through cat while its output is read: neither direction starves the other."""
    data = os.urandom(5 << 20)

    async def body() -> None:
        run = await start(agent_port, [_bin("cat")], cwd="/", stdin_pipe=True)

        async def feed() -> None:
            for i in range(0, len(data), 100_000):
                run.send(p.stdin_frame(data[i:i + 100_000]))
                await run.writer.drain()
            run.send(p.close_stdin_frame())
            await run.writer.drain()

        feeder = asyncio.create_task(feed())
        status, out, err = await run.finish()
        await feeder
        assert status == (0, 0) and err == b"" and out == data
    scenario(body)


def test_signal_reaches_the_process_group(agent_port: int) -> None:
    async def body() -> None:
        run = await start(agent_port, [_bin("sleep"), "100"], cwd="/")
        run.send(p.signal_frame(15))
        assert await run.finish() == ((143, 15), b"", b"")
        await wait_gone(run.pid)

        # A background child is in the same group: it gets the signal too.
        run = await start(agent_port, ["/bin/sh", "-c", "sleep 100 & echo $!; wait"], cwd="/")
        child = int(await run.output_until(b"\n"))
        run.send(p.signal_frame(15))
        assert (await run.finish())[0] == (143, 15)
        await wait_gone(child)
    scenario(body)


def test_pty_shell(agent_port: int) -> None:
    async def body() -> None:
        run = await start(agent_port, ["/bin/sh", "-i"], cwd="/", pty=(24, 80))
        run.send(p.stdin_frame(b"echo $((6*7))\n"))
        await run.output_until(b"42\r\n")
        run.send(p.stdin_frame(b"stty size\n"))
        await run.output_until(b"24 80\r\n")
        run.send(p.resize_frame(40, 100))
        run.send(p.stdin_frame(b"stty size; tty\n"))
        seen = await run.output_until(b"40 100\r\n/dev/pts/")
        assert b"not a tty" not in seen
        run.send(p.stdin_frame(b"exit 5\n"))
        status, _, err = await run.finish()
        assert status == (5, 0) and err == b""  # on a pty everything comes as 'o'
    scenario(body)


def test_pty_close_sends_eof(agent_port: int) -> None:
    async def body() -> None:
        run = await start(agent_port, [_bin("cat")], cwd="/", pty=(24, 80))
        run.send(p.stdin_frame(b"abc\n"))
        await run.output_until(b"abc\r\nabc\r\n")  # the terminal's echo, then cat's copy
        run.send(p.close_stdin_frame())
        assert (await run.finish())[0] == (0, 0)
    scenario(body)


def test_client_disconnect_kills_the_process(agent_port: int) -> None:
    async def body() -> None:
        run = await start(agent_port, [_bin("sleep"), "100"], cwd="/")
        run.close()
        await wait_gone(run.pid)

        run = await start(agent_port, ["/bin/sh", "-i"], cwd="/", pty=(24, 80))
        run.close()
        await wait_gone(run.pid)
    scenario(body)


def test_disconnect_with_stalled_input_kills(agent_port: int) -> None:
    """The process does not read its stdin, so input backs up and the agent stops reading
    the socket; it still notices the client leaving: by a FIN that got through, or by a
    reset (abort_connection) when the FIN is stuck behind unsent input."""
    async def body() -> None:
        for size, end in ((100_000, "close"), (8 << 20, "reset"), (0, "reset")):
            run = await start(agent_port, [_bin("sleep"), "100"], cwd="/", stdin_pipe=True)
            run.send(p.stdin_frame(b"x" * size))
            await asyncio.sleep(0.2)
            if end == "close":
                await run.writer.drain()
                run.close()
            else:
                abort_connection(run.writer)
            await wait_gone(run.pid)
    scenario(body)


def test_input_after_stdin_closed_is_dropped(agent_port: int) -> None:
    async def body() -> None:
        run = await start(agent_port, ["/bin/sh", "-c", "exec 0<&-; sleep 0.3; echo done"],
                          cwd="/", stdin_pipe=True)
        run.send(p.stdin_frame(b"ignored\n" * 1000))
        run.send(p.close_stdin_frame())
        run.send(p.stdin_frame(b"after close\n"))
        assert await run.finish() == ((0, 0), b"done\n", b"")

        # Without a stdin pipe, input and close are dropped; stdin is /dev/null.
        run = await start(agent_port, [_bin("cat")], cwd="/")
        run.send(p.stdin_frame(b"nobody reads this"))
        run.send(p.close_stdin_frame())
        assert await run.finish() == ((0, 0), b"", b"")
    scenario(body)


def test_large_output_arrives_complete(agent_port: int) -> None:
    async def body() -> None:
        run = await start(agent_port, [_bin("head"), "-c", "20000000", "/dev/zero"], cwd="/")
        status, out, err = await run.finish()
        assert status == (0, 0) and err == b""
        assert len(out) == 20_000_000 and out.count(0) == 20_000_000
    scenario(body)


def test_run_as_another_user(agent_port: int) -> None:
    script = "id -u; id -g; id -G; pwd"

    async def body() -> None:
        run = await start(agent_port, ["/bin/sh", "-c", script], cwd="/tmp",
                          uid=65534, gid=65534)
        assert await run.finish() == ((0, 0), b"65534\n65534\n65534\n/tmp\n", b"")

        run = await start(agent_port, ["/bin/sh", "-c", script], cwd="/",
                          uid=65534, gid=65534, groups=[100, 65534])
        status, out, _ = await run.finish()
        assert status == (0, 0) and out.split(b"\n")[:3] == [b"65534", b"65534", b"65534 100"]

        # The working directory is entered as the new user.
        private = f"/tmp/sandport-agent-test-{os.getpid()}"
        os.mkdir(private, 0o700)
        try:
            run = await connect(agent_port, p.encode_request_v2(
                [_bin("true")], ENV, cwd=private, uid=65534, gid=65534))
            assert await run.frame() == ("f", b"chdir: Permission denied")
        finally:
            os.rmdir(private)
    scenario(body)


@pytest.mark.parametrize(("request_bytes", "message"), [
    (p.encode_request_v2(["/bin/true"], [], cwd="/nonexistent"),
     b"chdir: No such file or directory"),
    (p.encode_request_v2(["/nonexistent"], [], cwd="/"), b"exec: No such file or directory"),
    (p._encode_strings(["sandport-exec-2", "1", "/bin/true", "0", "cwd=/", "bogus=1"]),
     b"bad request"),
    (p._encode_strings(["sandport-exec-2", "1", "/bin/true", "0"]), b"bad request"),  # no cwd
    (p._encode_strings(["sandport-exec-2", "1", "/bin/true", "0", "cwd=/", "cwd=/"]),
     b"bad request"),
    (p._encode_strings(["sandport-exec-2", "1", "/bin/true", "0", "cwd=/", "stdin=tty"]),
     b"bad request"),
    (p._encode_strings(["sandport-exec-2", "1", "/bin/true", "0", "cwd=/", "pty=24"]),
     b"bad request"),
    (p._encode_strings(["sandport-exec-2", "1", "/bin/true", "0", "cwd=/", "uid=-1"]),
     b"bad request"),
    (p._encode_strings(["sandport-exec-2", "1", "/bin/true", "0", "cwd=/", "groups=1,,2"]),
     b"bad request"),
    (p._encode_strings(["sandport-exec-2", "2", "/bin/true", "0", "cwd=/"]), b"bad request"),
    (p._encode_strings(["sandport-exec-9", "1", "/bin/true", "0"]),
     b"bad request: Protocol error"),
])
def test_start_failures(agent_port: int, request_bytes: bytes, message: bytes) -> None:
    async def body() -> None:
        run = await connect(agent_port, request_bytes)
        assert await run.frame() == ("f", message)
        assert await run.frame() is None
    scenario(body)


@pytest.mark.parametrize("bad_frame", [
    p.encode_frame("z", b""),
    p.encode_frame("s", b"\x00\x0f"),
    p.encode_frame("w", b"\x00" * 5),
    p.encode_frame("c", b"x"),
    b"i" + (p.MAX_STDIN_FRAME + 1).to_bytes(4, "big"),
])
def test_protocol_errors_end_the_command(agent_port: int, bad_frame: bytes) -> None:
    async def body() -> None:
        run = await start(agent_port, [_bin("sleep"), "100"], cwd="/", stdin_pipe=True)
        run.send(p.resize_frame(10, 10) + p.signal_frame(28) + bad_frame)  # first two: fine
        try:  # closed without an exit frame (reset if the bad frame's payload was unread)
            assert await run.frame() is None
        except ConnectionResetError:
            pass
        await wait_gone(run.pid)
    scenario(body)


def test_v1_exec_still_works(agent_port: int) -> None:
    async def body() -> None:
        result = await run_command(
            "127.0.0.1", "/tmp", ["/bin/sh", "-c", "pwd; echo err >&2; read x; exit 3"], ENV,
            10, 1 << 20, port=agent_port)
        assert (result.stdout, result.stderr, result.exit_code) == ("/tmp\n", "err\n", 3)
        assert not result.timed_out

        result = await run_command("127.0.0.1", "/", ["/bin/sh", "-c", "kill -9 $$"], ENV,
                                   10, 1 << 20, port=agent_port)
        assert result.exit_code == 137

        with pytest.raises(ValidationFailed, match="/nonexistent"):
            await run_command("127.0.0.1", "/nonexistent", ["/bin/true"], [], 10, 1 << 20,
                              port=agent_port)

        # A v1 exit frame is 4 bytes, and there is no pid frame.
        run = await connect(agent_port, p.encode_request("/", ["/bin/sh", "-c", "exit 7"], []))
        assert await run.frame() == ("x", b"\x00\x00\x00\x07")

        # The timeout closes the connection, which kills the command.
        marker = f"sandport-v1-timeout-{os.getpid()}"
        result = await run_command("127.0.0.1", "/", ["/bin/sh", "-c", f"sleep 100 # {marker}"],
                                   ENV, 0.5, 1 << 20, port=agent_port)
        assert result.timed_out and result.exit_code == 124
        deadline = time.monotonic() + STEP_S
        while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "the timed-out command survived"
            await asyncio.sleep(0.02)
    scenario(body)


def test_last_frame_survives_unread_input(agent_port: int) -> None:
    """Input the agent never read (the command ended first) must not cost the client the
    exit or failure frame: the agent half-closes and drains instead of resetting."""
    async def body() -> None:
        for _ in range(5):
            run = await connect(agent_port, p.encode_request_v2(
                [_bin("true")], ENV, cwd="/", stdin_pipe=True) + p.stdin_frame(b"y" * 3_000_000))
            await asyncio.sleep(0.1)  # let the exit and the close happen before we read
            kinds = []
            while (frame := await run.frame()) is not None:
                kinds.append(frame[0])
            assert kinds == ["p", "x"]

            run = await connect(agent_port, p.encode_request_v2(
                [_bin("true")], ENV, cwd="/nonexistent", stdin_pipe=True)
                + p.stdin_frame(b"y" * 3_000_000))
            await asyncio.sleep(0.1)
            assert await run.frame() == ("f", b"chdir: No such file or directory")
            assert await run.frame() is None
    scenario(body)
