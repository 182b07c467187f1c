""".dockerignore, matched as docker matches it. Pure: no I/O.

``parse_dockerignore(text)`` reads the file the way docker does: a line whose first character
is ``#`` is a comment; others are trimmed, blank ones dropped; a leading ``!`` makes an
exception; each pattern is cleaned like Go's ``filepath.Clean`` and loses a leading ``/``
(the context root is both the working and the root directory).

Patterns use Go's ``filepath.Match`` syntax (``*`` and ``?`` never match ``/``; ``[a-z]``,
``[^abc]`` classes; ``\\`` escapes) plus ``**``, which matches any number of directories,
none included (``**/*.go`` matches ``main.go`` and ``a/b/main.go``). A pattern that matches
a directory excludes everything below it. The last pattern that matches a path, or any
directory above it, decides: an exception re-includes (``!keep/me`` under an excluded
``keep``). A pattern that is not valid Match syntax is ``ValidationFailed`` naming the line.

Docker still sends the Dockerfile and ``.dockerignore`` to the builder even when they are
excluded (COPY and ADD then do not see them); that is the caller's rule to apply, not this
module's. A walker asks ``may_descend(dir)`` to skip directories no exception can reach, and
keeps the parents of any file it includes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ValidationFailed

__all__ = ["Ignore", "clean", "parse_dockerignore"]


@dataclass(frozen=True)
class _Pattern:
    text: str  # cleaned, without the "!"
    exception: bool
    regex: re.Pattern[str]
    parts: tuple[re.Pattern[str] | None, ...]  # one per component; None: "**" or unsure

    def matches(self, path: str) -> bool:
        """``path`` itself or one of the directories above it matches."""
        if self.regex.fullmatch(path):
            return True
        slash = path.find("/")
        while slash >= 0:
            if self.regex.fullmatch(path[:slash]):
                return True
            slash = path.find("/", slash + 1)
        return False

    def may_match_below(self, directory: str) -> bool:
        """Whether some path strictly below ``directory`` could match (erring towards yes)."""
        names = directory.split("/")
        for index, name in enumerate(names):
            if index >= len(self.parts):
                return False
            part = self.parts[index]
            if part is None:
                return True
            if not part.fullmatch(name):
                return False
        return len(self.parts) > len(names)


@dataclass(frozen=True)
class Ignore:
    patterns: tuple[_Pattern, ...]

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative to the context root, "/"-separated) is left out."""
        path = _relative(path)
        excluded = False
        for pattern in self.patterns:
            # Only a pattern that would change the answer needs matching; the last one wins.
            if pattern.exception == excluded and pattern.matches(path):
                excluded = not pattern.exception
        return excluded

    def may_descend(self, directory: str) -> bool:
        """False when ``directory`` and everything below it is excluded, so a walker can skip it.

        Only an exception after the last pattern excluding the directory can re-include
        something below it: every pattern matching the directory matches its contents too.
        """
        directory = _relative(directory)
        last = None
        for index, pattern in enumerate(self.patterns):
            if pattern.matches(directory):
                last = index
        if last is None or self.patterns[last].exception:
            return True
        return any(p.exception and p.may_match_below(directory)
                   for p in self.patterns[last + 1:])


def parse_dockerignore(text: str) -> Ignore:
    patterns = []
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        if line.startswith("#"):
            continue
        line = line.strip()
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
            if not line:
                raise ValidationFailed(f".dockerignore line {number}: '!' needs a pattern")
        if not line:
            continue
        line = clean(line)
        if len(line) > 1 and line.startswith("/"):
            line = line[1:]
        try:
            patterns.append(_compile(line, exception))
        except ValueError as error:
            raise ValidationFailed(f".dockerignore line {number}: {line!r}: {error}") from None
    return Ignore(tuple(patterns))


def clean(path: str) -> str:
    """Go's ``filepath.Clean``: one slash, no ``.``, ``..`` folded, no trailing slash."""
    rooted = path.startswith("/")
    names: list[str] = []
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == ".." and names and names[-1] != "..":
            names.pop()
        elif name != ".." or not rooted:
            names.append(name)
    joined = "/".join(names)
    return ("/" + joined) if rooted else (joined or ".")


def _relative(path: str) -> str:
    cleaned = clean(path).lstrip("/")
    return cleaned or "."


def _compile(pattern: str, exception: bool) -> _Pattern:
    regex, unsure = _translate(pattern)
    parts: list[re.Pattern[str] | None] = []
    for name in pattern.split("/"):
        if "**" in name or unsure:
            parts.append(None)
        else:
            parts.append(re.compile(_translate(name)[0]))
    return _Pattern(pattern, exception, re.compile(regex, re.DOTALL), tuple(parts))


def _translate(pattern: str) -> tuple[str, bool]:
    """A regex for ``pattern``, and whether one match may span a "/" outside ``**``.

    ``[^a]`` and ``\\/`` can match a "/", so per-component reasoning would be unsure.
    """
    out: list[str] = []
    unsure, pos = False, 0
    while pos < len(pattern):
        char = pattern[pos]
        pos += 1
        if char == "*" and pattern.startswith("*", pos):
            pos += 1
            if pattern.startswith("/", pos):
                pos += 1  # "**/" is "**": any number of directories, none included
            out.append(".*" if pos >= len(pattern) else "(?:.*/)?")
        elif char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            body, pos, spans = _char_class(pattern, pos)
            out.append(body)
            unsure = unsure or spans
        elif char == "\\":
            if pos >= len(pattern):
                raise ValueError("a pattern cannot end with \\")
            unsure = unsure or pattern[pos] == "/"
            out.append(re.escape(pattern[pos]))
            pos += 1
        else:
            out.append(re.escape(char))
    return "".join(out), unsure


def _char_class(pattern: str, pos: int) -> tuple[str, int, bool]:
    """``[...]`` from just after the ``[``: (regex, position after ``]``, may match "/")."""
    negated = pattern.startswith("^", pos)
    pos += negated
    ranges: list[tuple[str, str]] = []
    while True:
        if pattern.startswith("]", pos) and ranges:
            pos += 1
            break
        low, pos = _class_char(pattern, pos)
        high = low
        if pattern.startswith("-", pos):
            high, pos = _class_char(pattern, pos + 1)
        if high < low:  # docker's regexp refuses it, so say so here
            raise ValueError(f"the range {low}-{high} in [...] is reversed")
        ranges.append((low, high))
    body = "".join(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
                   for lo, hi in ranges)
    slash = any(lo <= "/" <= hi for lo, hi in ranges)
    return f"[{'^' if negated else ''}{body}]", pos, negated or slash


def _class_char(pattern: str, pos: int) -> tuple[str, int]:
    """One character of a class, as Go's ``filepath.Match`` accepts it."""
    if pos >= len(pattern) or pattern[pos] in "-]":
        raise ValueError("a character class [...] is malformed")
    if pattern[pos] == "\\":
        pos += 1
        if pos >= len(pattern):
            raise ValueError("a character class [...] is malformed")
    if pos + 1 >= len(pattern):
        raise ValueError("a character class [...] is not closed")
    return pattern[pos], pos + 1
