"""Request bodies as JSON values that can be used (pure): the one check both faces' body
reader applies before any handler sees a value.

JSON can spell what nothing downstream can take: ``"\\ud800"`` (a lone surrogate: not
UTF-8, so every later ``encode()`` fails), ``NaN``, and nesting deep enough to exhaust the
parser's recursion. These become a 400 naming the field (``env.A``, ``files[0].data``).
NUL is refused by the field parsers where the kernel forbids it (argv, env, paths): in
file data or stdin it is an ordinary byte.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import BadRequest, ValidationFailed

__all__ = ["MAX_DEPTH", "field_name", "parse_json", "usable_text"]

MAX_DEPTH = 32  # the deepest of our shapes is 4 (network.ingress.allowPorts[i])


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes | bytearray) -> Any:
    """The value of a JSON body whose every string is valid Unicode text, nested at most
    ``MAX_DEPTH`` deep; else BadRequest/ValidationFailed saying what and where."""
    try:
        # UTF-8 only (RFC 8259 §8.1): json.loads would take UTF-16/32 bytes too, where a
        # "\u" escape has other bytes and would slip past the check below.
        value = json.loads(bytes(body).decode("utf-8"), parse_constant=_no_constants)
    except RecursionError:
        raise BadRequest(f"request body is nested too deeply (at most {MAX_DEPTH} levels)") \
            from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    # Bytes that decoded as UTF-8 hold no surrogate: only a \u escape makes one; and a
    # body with few brackets cannot nest deeply. Most bodies need no walk.
    if b"\\u" in body or body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        _check(value)
    return value


def _check(value: Any) -> None:
    """Walk the value (iteratively: depth is what is being checked)."""
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            _text(item, path)
            continue
        if isinstance(item, dict | list) and len(path) >= MAX_DEPTH:  # the 33rd bracket
            raise BadRequest(f"request body is nested too deeply (at most {MAX_DEPTH} "
                             "levels)")
        if isinstance(item, dict):
            for key, child in item.items():
                _text(key, path, key=True)
                pending.append((child, (*path, key)))
        elif isinstance(item, list):
            pending.extend((child, (*path, i)) for i, child in enumerate(item))


def usable_text(text: str) -> bool:
    """Whether ``text`` is Unicode scalars only (no lone surrogate): it encodes as UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _text(text: str, path: tuple[str | int, ...], key: bool = False) -> None:
    if usable_text(text):
        return
    where = field_name(path) or "the request body"
    what = "a field name" if key else "the text"
    raise ValidationFailed(f"{where}: {what} is not valid Unicode (a lone surrogate "
                           "such as \\ud800 cannot be encoded as UTF-8)")


def field_name(path: tuple[str | int, ...]) -> str:
    """``("env", "A")`` → ``env.A``; ``("files", 0, "data")`` → ``files[0].data``. Names
    that were themselves unusable are shown escaped."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if usable_text(part) else part.encode("utf-8", "backslashreplace") \
                .decode()
            out += f".{shown}" if out else shown
    return out
