"""The agent's wire format (no I/O): requests encoded, response frames decoded.

request:  u32 length (big endian) + NUL-terminated strings:
          MAGIC, cwd, argc, argv..., envc, env...
response: frames of u8 kind + u32 length + payload; kinds: o(stdout) e(stderr)
          x(exit: u32 code) f(failed to start: message)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

MAGIC = "sandport-exec-1"
AGENT_PORT = 4001
MAX_REQUEST = 4 << 20
_HEAD = struct.Struct(">BI")


def encode_request(cwd: str, argv: Sequence[str], env: Sequence[str]) -> bytes:
    strings = [MAGIC, cwd, str(len(argv)), *argv, str(len(env)), *env]
    for s in strings:
        if "\x00" in s:
            raise ValueError("NUL byte in an exec request")
    body = b"".join(s.encode() + b"\x00" for s in strings)
    if len(body) > MAX_REQUEST:
        raise ValueError("exec request too large")
    return struct.pack(">I", len(body)) + body


class FrameDecoder:
    """Feed bytes as they arrive; get complete ``(kind, payload)`` frames back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= _HEAD.size:
            kind, length = _HEAD.unpack_from(self._buffer)
            end = _HEAD.size + length
            if len(self._buffer) < end:
                break
            frames.append((chr(kind), bytes(self._buffer[_HEAD.size:end])))
            del self._buffer[:end]
        return frames


def exit_code(payload: bytes) -> int:
    return int(struct.unpack(">I", payload)[0])
