"""The runtime API's pure parts: request parsing, output buffering, wire helpers."""

from __future__ import annotations

import asyncio
import signal

import pytest

from sandport.errors import Conflict, Unavailable, ValidationFailed
from sandport.runtime.fswatch import (
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    op_name,
)
from sandport.runtime.safepath import relative, split
from sandport.runtime_api._common import mode_field
from sandport.runtime_api.commands import (
    EXEC_ARGV,
    command_argv,
    parse_signal,
    parse_start,
    parse_terminal,
)
from sandport.runtime_api.process_state import (
    FINISHED_BUFFER_BUDGET,
    MAX_RUNNING,
    MAX_STDIN_BACKLOG,
    RUNNING_BUFFER_BUDGET,
    Chunk,
    ProcessRegistry,
    ProcessSession,
)
from sandport.runtime_api.processes import output_event
from sandport.sdk._runtime import EventStreamParser


@pytest.mark.parametrize("value, expected", [
    ("SIGTERM", 15), ("term", 15), ("Kill", 9), (2, 2), ("15", 15), ("SIGUSR1", 10)])
def test_signal_names(value: object, expected: int) -> None:
    assert parse_signal(value) == expected


@pytest.mark.parametrize("value", ["SIGNOPE", "", 0, -1, 999, True, None, "SIG_DFL", 1.5])
def test_bad_signals(value: object) -> None:
    with pytest.raises(ValidationFailed):
        parse_signal(value)


def test_signal_default() -> None:
    assert parse_signal(None, default=signal.SIGKILL) == 9


def test_command_shapes() -> None:
    assert command_argv("echo $HOME", None, None) == ("/bin/sh", "-c", "echo $HOME")
    assert command_argv("echo", ["a b", "$x"], None) == ("/bin/sh", "-c", "echo 'a b' '$x'")
    assert command_argv("echo", ["a b"], False) == (*EXEC_ARGV, "echo", "a b")


def test_parse_start() -> None:
    start = parse_start({"command": "ls", "cwd": "/tmp", "env": {"A": "1"}, "timeout_sec": 3,
                         "runAs": "alice", "stdin": False, "outputBufferBytes": 1024})
    assert (start.argv, start.cwd, start.env, start.timeout_s, start.run_as, start.stdin,
            start.buffer_bytes) == (("/bin/sh", "-c", "ls"), "/tmp", {"A": "1"}, 3.0, "alice",
                                    False, 1024)
    assert parse_start({"command": "ls", "timeoutMs": 1500}).timeout_s == 1.5
    assert parse_start({"command": "ls"}).timeout_s is None


@pytest.mark.parametrize("body", [
    {}, {"command": ""}, {"command": "x", "cwd": "rel"}, {"command": "x", "args": "a"},
    {"command": "x", "bogus": 1}, {"command": "x", "timeoutMs": -1},
    {"command": "x", "outputBufferBytes": 1 << 40}, {"command": "x", "useShell": "yes"},
    {"command": "a\x00b"}, [], "ls"])
def test_parse_start_refuses(body: object) -> None:
    with pytest.raises(ValidationFailed):
        parse_start(body)


def test_parse_terminal() -> None:
    term = parse_terminal({"command": "bash", "rows": 40, "cols": 100})
    assert (term.argv, term.pty, term.env["TERM"]) == ((*EXEC_ARGV, "bash"), (40, 100),
                                                       "xterm-256color")
    assert parse_terminal({"command": "bash"}).pty == (24, 80)
    with pytest.raises(ValidationFailed):
        parse_terminal({"command": "bash", "rows": 0})


@pytest.mark.parametrize("value, expected", [
    ("644", 0o644), ("0755", 0o755), ("0o700", 0o700), (0o600, 0o600), (None, None)])
def test_modes(value: object, expected: int | None) -> None:
    assert mode_field({"mode": value}) == expected


@pytest.mark.parametrize("value", ["9", "rwx", "", "17777", -1, 0o10000, True])
def test_bad_modes(value: object) -> None:
    with pytest.raises(ValidationFailed):
        mode_field({"mode": value})


@pytest.mark.parametrize("path, parent, name", [
    ("/a/b/c", "a/b", "c"), ("a", ".", "a"), ("/../../etc/x", "etc", "x"),
    ("//a//b/", "a", "b"), ("/a/./b/../c", "a", "c")])
def test_split_stays_under_the_root(path: str, parent: str, name: str) -> None:
    assert split(path) == (parent, name)


def test_root_cannot_be_a_target() -> None:
    for path in ("/", "/..", "", "/a/.."):
        with pytest.raises(IsADirectoryError):
            split(path)
    assert relative("/") == "." and relative("/../x") == "x"


@pytest.mark.parametrize("mask, op", [
    (IN_CREATE, "CREATE"), (IN_CREATE | IN_ISDIR, "CREATE"), (IN_MOVED_TO, "CREATE"),
    (IN_DELETE, "REMOVE"), (IN_MOVED_FROM, "RENAME"), (IN_MODIFY, "WRITE"),
    (IN_ATTRIB, "CHMOD"), (0, None)])
def test_watch_op_names(mask: int, op: str | None) -> None:
    assert op_name(mask) == op


def test_event_stream_parser() -> None:
    parser = EventStreamParser()
    lines = ["event: started", 'data: {"id": 1}', "", ": keepalive", "", "event: output",
             'data: {"a":', 'data: 2}', ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert events == [("started", {"id": 1}), ("output", {"a": 2})]


def test_output_event_encoding() -> None:
    text = output_event(Chunk(1, "stdout", "héllo\n".encode(), 5))
    assert (text["data"], text["encoding"]) == ("héllo\n", "utf8")
    assert output_event(Chunk(2, "stdout", b"\xff\xfe", 5))["encoding"] == "base64"
    assert output_event(Chunk(3, "stdout", b"\x00" * 100, 5))["encoding"] == "base64"


class FakeChannel:
    """Stands in for the agent connection: records what the session asks of it."""

    def __init__(self) -> None:
        self.paused = False
        self.sent: list[tuple[str, object]] = []

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def write_stdin(self, data: bytes) -> None:
        self.sent.append(("stdin", data))

    def backlog(self) -> int:
        return sum(len(d) for kind, d in self.sent if kind == "stdin")  # type: ignore[arg-type]

    def close_stdin(self) -> None:
        self.sent.append(("eof", None))

    def signal(self, signum: int) -> None:
        self.sent.append(("signal", signum))

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def close(self) -> None:
        self.sent.append(("close", None))


def _session(buffer: int) -> tuple[ProcessSession, FakeChannel]:
    session = ProcessSession("p", "sb", "cmd", None, "/", buffer_bytes=buffer)
    channel = FakeChannel()
    session.channel = channel  # type: ignore[assignment]
    return session, channel


def test_buffer_keeps_the_newest_output_when_nobody_follows() -> None:
    session, channel = _session(100)
    for i in range(50):
        session.on_output("stdout", bytes([65 + i % 26]) * 10)
    assert session.buffered <= 100 and session.dropped and not channel.paused
    assert session.chunks[-1].seq == session.last_seq


def test_a_slow_follower_pauses_the_command_and_misses_nothing() -> None:
    async def main() -> None:
        session, channel = _session(100)
        follower = session.follow(0)
        got: list[bytes] = []
        session.on_output("stdout", b"a" * 60)
        first = await follower.__anext__()  # registers, takes seq 1
        assert first is not None and first.data == b"a" * 60
        got.append(first.data)  # not yet handed back: the session may not drop it
        for _ in range(10):
            session.on_output("stdout", b"b" * 60)
        assert channel.paused  # 540 bytes wait for the follower: reading stops
        while sum(map(len, got)) < 660:
            chunk = await follower.__anext__()
            assert chunk is not None
            got.append(chunk.data)
        assert b"".join(got) == b"a" * 60 + b"b" * 600
        assert not channel.paused
        session.on_exit(0, 0)
        with pytest.raises(StopAsyncIteration):
            await follower.__anext__()
        assert session.status == "exited" and ("close", None) in channel.sent

    asyncio.run(main())


def test_control_after_exit_is_a_conflict() -> None:
    session, channel = _session(100)
    session.write_stdin(b"x")
    session.close_stdin()
    with pytest.raises(Conflict):
        session.write_stdin(b"y")
    session.on_exit(137, 9)
    assert (session.status, session.exit_code) == ("killed", 137)
    with pytest.raises(Conflict):
        session.send_signal(15)
    assert channel.sent[:2] == [("stdin", b"x"), ("eof", None)]


def test_stdin_that_is_not_read_is_refused_not_buffered() -> None:
    session, channel = _session(100)
    session.write_stdin(b"x" * (MAX_STDIN_BACKLOG - 1))
    with pytest.raises(Unavailable):
        session.write_stdin(b"yy")
    assert len(channel.sent) == 1


def test_timeout_status() -> None:
    async def main() -> None:
        session, channel = _session(100)
        session.set_timeout(0.01)
        await asyncio.sleep(0.05)
        assert ("signal", signal.SIGKILL) in channel.sent
        session.on_exit(137, 9)
        assert session.status == "timed_out"

    asyncio.run(main())



def test_registry_limits_running_processes_and_buffers() -> None:
    registry = ProcessRegistry()
    for i in range(MAX_RUNNING):
        registry.add(ProcessSession(f"p{i}", "sb", "cmd", None, "/", buffer_bytes=1))
    with pytest.raises(Conflict):
        registry.admit("sb", 1)
    registry.admit("other", 1)  # limits are per sandbox
    with pytest.raises(Conflict):
        registry.admit("other", RUNNING_BUFFER_BUDGET + 1)


def test_registry_bounds_the_output_kept_of_finished_processes() -> None:
    registry = ProcessRegistry()
    sessions = []
    for i in range(4):
        session = ProcessSession(f"p{i}", "sb", "cmd", None, "/", buffer_bytes=40 << 20)
        session.started_at = i
        session.on_output("stdout", b"x" * (30 << 20))
        session.on_exit(0, 0)
        registry.add(session)
        sessions.append(session)
    kept = [s.buffered for s in sessions]
    assert sum(kept) <= FINISHED_BUFFER_BUDGET and kept[-1] == 30 << 20
    assert sessions[0].dropped and sessions[0].result(with_output=True)["output_truncated"]
