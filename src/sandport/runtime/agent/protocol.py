"""The agent's wire format (no I/O): requests and client frames encoded, frames decoded.

Integers are big endian; a frame is u8 kind + u32 length + payload. agent.c's header
comment is the reference; in short:

request v1: u32 length + NUL-terminated strings: MAGIC, cwd, argc, argv..., envc, env...
request v2: u32 length + NUL-terminated strings: MAGIC_V2, argc, argv..., envc, env...,
            then options "key=value": cwd= (required), stdin=pipe|null, pty=ROWSxCOLS,
            uid=N, gid=N, groups=A,B,... (see encode_request_v2)
agent -> server: p(v2: u32 pid, once, before any output) o(stdout) e(stderr)
                 x(exit: u32 code, 128+N if killed by signal N; v2 adds u32 signal or 0)
                 f(failed to start: message)
server -> agent (v2): i(stdin bytes, <= 1 MiB) c(close stdin; VEOF on a pty)
                      s(u32 signal, to the process group) w(u16 rows, u16 cols: pty size)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

MAGIC = "sandport-exec-1"
MAGIC_V2 = "sandport-exec-2"
AGENT_PORT = 4001
MAX_REQUEST = 4 << 20
MAX_STDIN_FRAME = 1 << 20  # the agent refuses bigger 'i' frames (and ends the command)
MAX_ID = 0xFFFF_FFFE  # (uid_t)-1 means "unchanged" to setuid and friends
MAX_GROUPS = 65536
_HEAD = struct.Struct(">BI")
_U32 = struct.Struct(">I")


def _encode_strings(strings: Sequence[str]) -> bytes:
    for s in strings:
        if "\x00" in s:
            raise ValueError("NUL byte in an exec request")
    body = b"".join(s.encode() + b"\x00" for s in strings)
    if len(body) > MAX_REQUEST:
        raise ValueError("exec request too large")
    return _U32.pack(len(body)) + body


def encode_request(cwd: str, argv: Sequence[str], env: Sequence[str]) -> bytes:
    """A v1 request: run to completion, stdin /dev/null, 4-byte exit payload."""
    return _encode_strings([MAGIC, cwd, str(len(argv)), *argv, str(len(env)), *env])


def encode_request_v2(
    argv: Sequence[str], env: Sequence[str], *, cwd: str, stdin_pipe: bool = False,
    pty: tuple[int, int] | None = None, uid: int | None = None, gid: int | None = None,
    groups: Sequence[int] | None = None,
) -> bytes:
    """A v2 request. ``pty=(rows, cols)`` runs the command on a new terminal (stdout and
    stderr both arrive as 'o'; ``stdin_pipe`` is then moot: input goes to the terminal).
    ``uid``/``gid``/``groups`` switch user in the child (setgroups, setgid, setuid); when
    uid or gid is given without ``groups``, the supplementary groups are emptied."""
    if not argv:
        raise ValueError("empty argv")
    options = [f"cwd={cwd}", f"stdin={'pipe' if stdin_pipe else 'null'}"]
    if pty is not None:
        rows, cols = pty
        _check_range("pty rows", rows, 0xFFFF)
        _check_range("pty cols", cols, 0xFFFF)
        options.append(f"pty={rows}x{cols}")
    if uid is not None:
        _check_range("uid", uid, MAX_ID)
        options.append(f"uid={uid}")
    if gid is not None:
        _check_range("gid", gid, MAX_ID)
        options.append(f"gid={gid}")
    if groups is not None:
        if len(groups) > MAX_GROUPS:
            raise ValueError("too many groups")
        for group in groups:
            _check_range("group", group, MAX_ID)
        options.append("groups=" + ",".join(str(g) for g in groups))
    return _encode_strings([MAGIC_V2, str(len(argv)), *argv, str(len(env)), *env, *options])


def _check_range(what: str, value: int, top: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise ValueError(f"{what} out of range: {value!r}")


def encode_frame(kind: str, payload: bytes = b"") -> bytes:
    return _HEAD.pack(ord(kind), len(payload)) + payload


def stdin_frame(data: bytes) -> bytes:
    """Bytes for the process's stdin (or its terminal), as one 'i' frame, or several
    back to back when longer than MAX_STDIN_FRAME."""
    if len(data) <= MAX_STDIN_FRAME:
        return encode_frame("i", bytes(data))
    view = memoryview(data)
    return b"".join(encode_frame("i", bytes(view[i:i + MAX_STDIN_FRAME]))
                    for i in range(0, len(data), MAX_STDIN_FRAME))


def close_stdin_frame() -> bytes:
    """Close the process's stdin; on a pty, send the terminal's VEOF (^D) once instead."""
    return encode_frame("c")


def signal_frame(signum: int) -> bytes:
    """Send a signal (1-64) to the process's group (or the process if it has none)."""
    _check_range("signal", signum, 64)
    if signum == 0:
        raise ValueError("signal out of range: 0")
    return encode_frame("s", _U32.pack(int(signum)))


def resize_frame(rows: int, cols: int) -> bytes:
    """Set the pty's size (the agent ignores it without a pty)."""
    _check_range("rows", rows, 0xFFFF)
    _check_range("cols", cols, 0xFFFF)
    return encode_frame("w", struct.pack(">HH", rows, cols))


MAX_FRAME = 1 << 20  # the agent sends output in frames of at most 64 KiB
_FIXED_LENGTHS = {ord("p"): (4,), ord("x"): (4, 8)}


class FrameError(ValueError):
    """The peer sent a frame no agent sends: the connection is to be dropped."""


class FrameDecoder:
    """Feed bytes as they arrive; get complete ``(kind, payload)`` frames back. A frame
    longer than MAX_FRAME, or a pid/exit frame of the wrong size, raises FrameError: the
    connection is in the sandbox, and code there must not make the server buffer at will."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= _HEAD.size:
            kind, length = _HEAD.unpack_from(self._buffer)
            if length > MAX_FRAME or length not in _FIXED_LENGTHS.get(kind, (length,)):
                raise FrameError(f"frame {chr(kind)!r} of {length} bytes")
            end = _HEAD.size + length
            if len(self._buffer) < end:
                break
            frames.append((chr(kind), bytes(self._buffer[_HEAD.size:end])))
            del self._buffer[:end]
        return frames


def decode_exit(payload: bytes) -> tuple[int, int]:
    """An 'x' payload as ``(code, signal)``: signal is 0 for a normal exit, and always 0
    for a v1 (4-byte) payload, which does not carry it."""
    if len(payload) == 8:
        code, signum = struct.unpack(">II", payload)
        return int(code), int(signum)
    if len(payload) == 4:
        return int(_U32.unpack(payload)[0]), 0
    raise ValueError(f"bad exit payload length {len(payload)}")


def exit_code(payload: bytes) -> int:
    return decode_exit(payload)[0]


def decode_pid(payload: bytes) -> int:
    """A 'p' payload: the command's pid (in the sandbox's pid namespace)."""
    if len(payload) != 4:
        raise ValueError(f"bad pid payload length {len(payload)}")
    return int(_U32.unpack(payload)[0])
