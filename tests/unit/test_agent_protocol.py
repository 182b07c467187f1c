"""The agent's wire format, byte for byte (pure: no agent, no sockets)."""

from __future__ import annotations

import signal
import struct

import pytest

from sandport.runtime.agent import protocol as p


def _strings(request: bytes) -> list[str]:
    (length,) = struct.unpack(">I", request[:4])
    body = request[4:]
    assert len(body) == length and body.endswith(b"\x00")
    return body[:-1].decode().split("\x00")


def test_v1_request_is_unchanged() -> None:
    request = p.encode_request("/w", ["/bin/sh", "-c", "true"], ["A=1"])
    assert request == (b"\x00\x00\x00\x2bsandport-exec-1\x00/w\x003\x00/bin/sh\x00-c\x00true\x00"
                       b"1\x00A=1\x00")


@pytest.mark.parametrize(("kwargs", "options"), [
    ({"cwd": "/"}, ["cwd=/", "stdin=null"]),
    ({"cwd": "/a b", "stdin_pipe": True}, ["cwd=/a b", "stdin=pipe"]),
    ({"cwd": "/", "pty": (24, 80)}, ["cwd=/", "stdin=null", "pty=24x80"]),
    ({"cwd": "/", "uid": 1000, "gid": 100}, ["cwd=/", "stdin=null", "uid=1000", "gid=100"]),
    ({"cwd": "/", "uid": 0, "groups": [4, 27]}, ["cwd=/", "stdin=null", "uid=0", "groups=4,27"]),
    ({"cwd": "/", "groups": []}, ["cwd=/", "stdin=null", "groups="]),
    ({"cwd": "/", "stdin_pipe": True, "pty": (0, 65535), "uid": 4294967294, "gid": 0,
      "groups": [1]},
     ["cwd=/", "stdin=pipe", "pty=0x65535", "uid=4294967294", "gid=0", "groups=1"]),
])
def test_v2_request_options(kwargs: dict, options: list[str]) -> None:
    request = p.encode_request_v2(["/bin/cat", "-u"], ["A=1", "B=2"], **kwargs)
    assert _strings(request) == ["sandport-exec-2", "2", "/bin/cat", "-u", "2", "A=1", "B=2",
                                 *options]


def test_v2_request_exact_bytes() -> None:
    assert p.encode_request_v2(["/bin/true"], [], cwd="/") == (
        b"\x00\x00\x00\x2fsandport-exec-2\x001\x00/bin/true\x000\x00cwd=/\x00stdin=null\x00")


@pytest.mark.parametrize("kwargs", [
    {"argv": [], "env": [], "cwd": "/"},
    {"argv": ["/bin/a\x00b"], "env": [], "cwd": "/"},
    {"argv": ["/bin/a"], "env": ["X=\x00"], "cwd": "/"},
    {"argv": ["/bin/a"], "env": [], "cwd": "/\x00"},
    {"argv": ["/bin/a"], "env": [], "cwd": "/", "pty": (65536, 80)},
    {"argv": ["/bin/a"], "env": [], "cwd": "/", "pty": (24, -1)},
    {"argv": ["/bin/a"], "env": [], "cwd": "/", "uid": -1},
    {"argv": ["/bin/a"], "env": [], "cwd": "/", "uid": 0xFFFFFFFF},
    {"argv": ["/bin/a"], "env": [], "cwd": "/", "gid": True},
    {"argv": ["/bin/a"], "env": [], "cwd": "/", "groups": [0xFFFFFFFF]},
    {"argv": ["/bin/a"], "env": [], "cwd": "/", "groups": [0] * 65537},
    {"argv": ["/bin/a" * (1 << 20)], "env": [], "cwd": "/"},
])
def test_v2_request_rejects(kwargs: dict) -> None:
    argv, env = kwargs.pop("argv"), kwargs.pop("env")
    with pytest.raises(ValueError):
        p.encode_request_v2(argv, env, **kwargs)


@pytest.mark.parametrize(("frame", "expected"), [
    (p.stdin_frame(b"hi\n"), b"i\x00\x00\x00\x03hi\n"),
    (p.stdin_frame(b""), b"i\x00\x00\x00\x00"),
    (p.close_stdin_frame(), b"c\x00\x00\x00\x00"),
    (p.signal_frame(15), b"s\x00\x00\x00\x04\x00\x00\x00\x0f"),
    (p.signal_frame(signal.SIGKILL), b"s\x00\x00\x00\x04\x00\x00\x00\x09"),
    (p.signal_frame(64), b"s\x00\x00\x00\x04\x00\x00\x00\x40"),
    (p.resize_frame(40, 100), b"w\x00\x00\x00\x04\x00\x28\x00\x64"),
    (p.resize_frame(65535, 0), b"w\x00\x00\x00\x04\xff\xff\x00\x00"),
])
def test_client_frames(frame: bytes, expected: bytes) -> None:
    assert frame == expected


def test_big_stdin_is_split_into_capped_frames() -> None:
    data = bytes(range(256)) * ((p.MAX_STDIN_FRAME * 2 + 10) // 256 + 1)
    frames = p.FrameDecoder().feed(p.stdin_frame(data))
    assert [kind for kind, _ in frames] == ["i", "i", "i"]
    assert all(len(payload) <= p.MAX_STDIN_FRAME for _, payload in frames)
    assert b"".join(payload for _, payload in frames) == data


@pytest.mark.parametrize("call", [
    lambda: p.signal_frame(0), lambda: p.signal_frame(65), lambda: p.signal_frame(-1),
    lambda: p.resize_frame(-1, 80), lambda: p.resize_frame(24, 65536),
])
def test_client_frames_reject(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(("payload", "decoded"), [
    (b"\x00\x00\x00\x00", (0, 0)),
    (b"\x00\x00\x00\x03", (3, 0)),
    (b"\x00\x00\x00\x8f\x00\x00\x00\x0f", (143, 15)),
    (b"\x00\x00\x00\x01\x00\x00\x00\x00", (1, 0)),
])
def test_decode_exit(payload: bytes, decoded: tuple[int, int]) -> None:
    assert p.decode_exit(payload) == decoded
    assert p.exit_code(payload) == decoded[0]


@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x00", b"\x00" * 5, b"\x00" * 9])
def test_decode_exit_rejects(payload: bytes) -> None:
    with pytest.raises(ValueError):
        p.decode_exit(payload)


def test_decode_pid() -> None:
    assert p.decode_pid(b"\x00\x01\x00\x02") == 65538
    with pytest.raises(ValueError):
        p.decode_pid(b"\x00\x01")


def test_frame_decoder_handles_any_split() -> None:
    stream = (p.encode_frame("p", b"\x00\x00\x00\x07") + p.encode_frame("o", b"out")
              + p.encode_frame("e", b"") + p.encode_frame("x", b"\x00" * 8))
    expected = [("p", b"\x00\x00\x00\x07"), ("o", b"out"), ("e", b""), ("x", b"\x00" * 8)]
    for cut in range(len(stream) + 1):
        decoder = p.FrameDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == expected
    decoder = p.FrameDecoder()
    assert [f for byte in stream for f in decoder.feed(bytes([byte]))] == expected


@pytest.mark.parametrize("frame", [
    struct.pack(">BI", ord("o"), p.MAX_FRAME + 1),        # a huge output frame
    struct.pack(">BI", ord("o"), 0xFFFF_FFF0) + b"x",     # nearly 4 GiB announced
    struct.pack(">BI", ord("p"), 5) + b"\0" * 5,          # a pid is 4 bytes
    struct.pack(">BI", ord("x"), 6) + b"\0" * 6,          # an exit is 4 or 8
])
def test_frames_no_agent_sends_are_refused(frame: bytes) -> None:
    with pytest.raises(p.FrameError):
        p.FrameDecoder().feed(frame)
