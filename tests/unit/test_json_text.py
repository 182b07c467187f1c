"""The faces' JSON body check (pure): usable text, bounded depth, the field named."""

from __future__ import annotations

import pytest

from sandport.control.json_text import MAX_DEPTH, field_name, parse_json, usable_text
from sandport.errors import BadRequest, ValidationFailed


def _nested(levels: int) -> list[object]:
    value: list[object] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize("body, value", [
    (b'{"command": "echo hi"}', {"command": "echo hi"}),
    (rb'{"a": "\u00e9\ud83d\ude00"}', {"a": "\u00e9\U0001f600"}),  # a surrogate pair is fine
    (rb'{"data": "x\u0000y"}', {"data": "x\x00y"}),  # NUL is the field parsers' to judge
    (rb'{"a": "\\ud800"}', {"a": "\\ud800"}),  # an escaped backslash, then text
    ("{\"a\": \"\u00e9\"}".encode(), {"a": "\u00e9"}),
    (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, _nested(MAX_DEPTH)),
    (b"[1, 2, 3]", [1, 2, 3]),
])
def test_usable_bodies_parse(body: bytes, value: object) -> None:
    assert parse_json(body) == value
    assert parse_json(bytearray(body)) == value


@pytest.mark.parametrize("body, error, mentions", [
    (rb'{"env": {"A": "\ud800"}}', ValidationFailed, "env.A: the text"),
    (rb'{"env": {"\udfff": "x"}}', ValidationFailed, "env: a field name"),
    (rb'{"files": [{"path": "/a"}, {"data": "\udc00x"}]}', ValidationFailed, "files[1].data"),
    (rb'{"args": ["ok", "\ud800\ud800"]}', ValidationFailed, "args[1]"),
    (rb'{"\ud800": {"b": "\ud800"}}', ValidationFailed, "the request body: a field name"),
    (rb'"\ud800"', ValidationFailed, "the request body: the text"),
    (b"[" * 5000, BadRequest, "nested too deeply"),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), BadRequest, "nested too deeply"),
    (b'{"a": ' * 40 + b"1" + b"}" * 40, BadRequest, "nested too deeply"),
    (b'{"a": NaN}', BadRequest, "not valid JSON"),
    (b'{"a": -Infinity}', BadRequest, "not valid JSON"),
    (b"\xff\xfe", BadRequest, "not valid JSON"),
    (b'{"a": 1' + b"0" * 5000 + b"}", BadRequest, "not valid JSON"),  # int digit limit
    (b"{", BadRequest, "not valid JSON"),
    # UTF-16/32 bodies (which json.loads alone would take): a surrogate must not hide there
    ('{"env": {"A": "\\ud800"}}'.encode("utf-16"), BadRequest, "not valid JSON"),
    ('{"env": {}}'.encode("utf-32-le"), BadRequest, "not valid JSON"),
])
def test_unusable_bodies_are_refused(body: bytes, error: type[BadRequest],
                                     mentions: str) -> None:
    with pytest.raises(error) as raised:
        parse_json(body)
    assert type(raised.value) is error
    assert mentions in raised.value.message


@pytest.mark.parametrize("path, name", [
    ((), ""), (("env", "A"), "env.A"), (("files", 0, "data"), "files[0].data"),
    ((3,), "[3]"), (("a\ud800",), "a\\ud800"),
])
def test_field_names(path: tuple[str | int, ...], name: str) -> None:
    assert field_name(path) == name


def test_usable_text() -> None:
    assert usable_text("plain") and usable_text("\U0001f600") and usable_text("\x00")
    assert not usable_text("\ud800") and not usable_text("a\udfffb")
