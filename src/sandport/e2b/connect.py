"""The Connect protocol's wire (pure), as envd's clients speak it with the JSON codec.

Unary calls are ``POST /{package.Service}/{Method}`` with a JSON body; their errors are a
JSON body ``{"code": "not_found", "message": ...}`` under the HTTP status the code maps to.
Server streams send and answer ``application/connect+json``: each message an envelope of
one flag byte, a 4-byte big-endian length and the JSON, the last one flagged END_STREAM and
holding ``{}`` or ``{"error": {code, message}}`` (the HTTP status stays 200).

Written by hand rather than with a Connect server library: the framing is five bytes, the
messages are a few JSON shapes, and so the envd face stays one Starlette app with one auth
path and no generated code.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

from ..errors import SandportError

UNARY_TYPE = "application/json"
STREAM_TYPE = "application/connect+json"
END_STREAM = 0x02
COMPRESSED = 0x01
MAX_MESSAGE_BYTES = 16 << 20
DIGITS = re.compile(r"[0-9]{1,10}")  # (str.isdigit takes other scripts' digits too)

# Connect's codes and the HTTP status each is sent under (unary) or read from (a proxy's
# plain error).
HTTP_STATUS = {
    "canceled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504,
    "not_found": 404, "already_exists": 409, "permission_denied": 403,
    "resource_exhausted": 429, "failed_precondition": 400, "aborted": 409,
    "out_of_range": 400, "unimplemented": 501, "internal": 500, "unavailable": 503,
    "data_loss": 500, "unauthenticated": 401,
}
# A sandport error's status → the code a Connect client gets. 409 is a state the request
# does not fit (a process that has ended, a directory not empty); "exists" is said where
# it applies (MakeDir).
_CODE_OF_STATUS = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
                   404: "not_found", 408: "deadline_exceeded", 409: "failed_precondition",
                   413: "resource_exhausted", 422: "invalid_argument",
                   429: "resource_exhausted", 501: "unimplemented", 503: "unavailable",
                   504: "deadline_exceeded"}


class ConnectError(Exception):
    def __init__(self, code: str, message: str) -> None:
        assert code in HTTP_STATUS, code
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, exc: SandportError) -> ConnectError:
        return cls(_CODE_OF_STATUS.get(exc.status, "internal" if exc.status >= 500
                                       else "invalid_argument"), exc.message)

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def dumps(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    payload = dumps(message)
    return struct.pack(">BI", flags, len(payload)) + payload


def end_stream(error: ConnectError | None = None) -> bytes:
    return envelope({} if error is None else {"error": error.to_wire()}, END_STREAM)


def parse_message(payload: bytes) -> dict[str, Any]:
    """A request message: a JSON object (an empty body is the empty message)."""
    if not payload.strip():
        return {}
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise ConnectError("invalid_argument", "the message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ConnectError("invalid_argument", "the message must be a JSON object")
    return message


def unwrap(body: bytes) -> dict[str, Any]:
    """The one enveloped message a server-streaming call's request body holds."""
    if len(body) < 5:
        raise ConnectError("invalid_argument", "the request is not a Connect envelope")
    flags, length = struct.unpack(">BI", body[:5])
    if flags & COMPRESSED:
        raise ConnectError("unimplemented", "compressed messages are not supported")
    if flags & ~COMPRESSED:
        raise ConnectError("invalid_argument", f"unexpected envelope flags {flags:#x}")
    if len(body) != 5 + length:
        raise ConnectError("invalid_argument", "the envelope's length does not match the "
                           "body (one message expected)")
    return parse_message(body[5:])


def timeout_ms(value: str | None) -> int | None:
    """``Connect-Timeout-Ms``: None when absent or 0 (envd's "no limit"); junk refused."""
    if value is None:
        return None
    if not DIGITS.fullmatch(value):
        raise ConnectError("invalid_argument", "Connect-Timeout-Ms must be a positive "
                           "integer of at most 10 digits")
    return int(value) or None
