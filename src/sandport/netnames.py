"""Host names in a sandbox's ``allowOut``: what is accepted, and what a pattern matches.

An entry is an exact name (``pypi.org``) or a leading-wildcard one (``*.npmjs.org``: every
name below ``npmjs.org``, one label or more, but not ``npmjs.org`` itself). Names are
ASCII host names, compared in lower case, a trailing dot dropped; an internationalised name
must be given in punycode (``xn--``). A wildcard's base has at least two labels (``*.com``
would be most of the web).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_NAME = 253
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class BadName(ValueError):
    pass


def normal_name(entry: str) -> str:
    """``entry`` as a pattern (lower case, no trailing dot), or BadName saying why."""
    name = entry.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise BadName("an empty name")
    if not name.isascii():
        raise BadName("not ASCII: give an internationalised name in punycode (xn--...)")
    wild = name.startswith("*.")
    base = name[2:] if wild else name
    if "*" in base:
        raise BadName("a wildcard is accepted only as a leading \"*.\"")
    if len(name) > MAX_NAME:
        raise BadName(f"longer than {MAX_NAME} characters")
    labels = base.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise BadName(f"{label!r} is not a host name label (letters, digits and '-', "
                          "at most 63, not starting or ending with '-')")
    if labels[-1].isdigit():
        raise BadName("looks like an address, not a name")
    if len(labels) < 2:
        raise BadName("a single label: name a host (pypi.org) or a domain (*.npmjs.org)")
    return name


def is_name_entry(entry: str) -> bool:
    """Whether an allowOut entry is meant as a name (it has a letter or a '*')."""
    return any(c.isalpha() or c == "*" for c in entry) and ":" not in entry


def matches(patterns: Iterable[str], host: str) -> str | None:
    """The first pattern that lets ``host`` by, or None (``host`` as a client sent it: any
    case, a trailing dot allowed; anything that is not a host name matches nothing)."""
    try:
        name = normal_name(host)
    except BadName:
        return None
    if name.startswith("*."):
        return None
    for pattern in patterns:
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
                return pattern
        elif name == pattern:
            return pattern
    return None


__all__ = ["BadName", "is_name_entry", "matches", "normal_name"]
