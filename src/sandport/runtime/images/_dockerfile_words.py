"""The lexical half of the Dockerfile parser: lines, words, quotes, ``$VAR`` expansion.

Pure and line-agnostic: every error here is a ``DockerfileError`` whose message the parser
prefixes with the line it was reading (``read_lines`` names the line itself).

    read_lines     parser directives, comments, blank lines, ``\\`` continuations
    split_keyword  ``RUN  echo hi`` -> ("RUN", "echo hi")
    extract_flags  leading ``--name=value`` words, as docker takes them from every instruction
    split_words    whitespace-separated words; quotes and escapes kept for ``expand``
    expand         quote removal, escapes and ``$VAR`` / ``${VAR:-x}`` substitution
    json_list      the exec (JSON) form, or None for the shell form

and the checks of single values: ports, signals, durations, ADD sources, heredocs.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable

Lookup = Callable[[str], "str | None"]  # None: the variable is not set

_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*")
_KNOWN_DIRECTIVES = frozenset({"syntax", "escape", "check"})
_SPECIAL_PARAMS = frozenset("@*#?$!-")
_MAX_NESTING = 32
_REMOTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|git@")
_HEREDOC = re.compile(r"\d*<<-?[^<].*", re.DOTALL)
_PORT = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?(?:/(tcp|udp|sctp))?", re.IGNORECASE)
_SIGNALS = frozenset(s.name.removeprefix("SIG") for s in signal.Signals)
_SIGNAL_EXTRA = re.compile(r"RTMIN(\+\d+)?|RTMAX(-\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
                "h": 3600 * 10**9}


class DockerfileError(ValueError):
    """Something the user wrote is wrong; the message is for them."""


def read_lines(text: str) -> tuple[str, list[tuple[int, str]]]:
    """The escape character and the logical lines as (first line number, joined text).

    Directives are read only from the very top; the first line that is not a known
    directive ends them (an unknown one is a comment). Comment lines and blank lines inside
    a continuation are dropped, as docker does, so they never end the instruction.
    """
    physical = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    seen: set[str] = set()
    escape, index = "\\", 0
    while index < len(physical):
        match = _DIRECTIVE.fullmatch(physical[index].lstrip())
        if match is None or match[1].lower() not in _KNOWN_DIRECTIVES:
            break
        key, index = match[1].lower(), index + 1
        if key in seen:
            raise DockerfileError(f"line {index}: the parser directive {key!r} is given twice")
        seen.add(key)
        if key == "escape":
            if match[2] not in ("\\", "`"):
                raise DockerfileError(
                    f"line {index}: the escape directive takes \\ or ` , not {match[2]!r}")
            escape = match[2]
    # docker's rule: a trailing escape continues the line unless another escape precedes it
    continuation = re.compile(f"(?<!{re.escape(escape)}){re.escape(escape)}[ \t]*$")
    lines: list[tuple[int, str]] = []
    while index < len(physical):
        stripped = physical[index].lstrip()
        index += 1
        if not stripped or stripped.startswith("#"):
            continue
        start = index
        joined, more = _cut(stripped, continuation)
        while more and index < len(physical):
            raw = physical[index]
            index += 1
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            piece, more = _cut(raw, continuation)
            joined += piece
        lines.append((start, joined.strip()))
    return escape, lines


def _cut(line: str, continuation: re.Pattern[str]) -> tuple[str, bool]:
    match = continuation.search(line)
    return (line[: match.start()], True) if match else (line, False)


def split_keyword(text: str) -> tuple[str, str]:
    keyword, *rest = text.split(None, 1)
    return keyword, rest[0] if rest else ""


def _word_end(text: str, pos: int, escape: str) -> int:
    """Where the word starting at ``pos`` ends: whitespace outside quotes and escapes."""
    quote = ""
    while pos < len(text):
        char = text[pos]
        if char == escape and quote != "'":
            pos += 2
            continue
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char.isspace():
            break
        pos += 1
    return min(pos, len(text))


def split_words(text: str, escape: str) -> list[str]:
    words: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return words
        end = _word_end(text, pos, escape)
        words.append(text[pos:end])
        pos = end


def extract_flags(text: str, escape: str) -> tuple[list[tuple[str, str | None]], str]:
    """Leading ``--name[=value]`` words (values still quoted) and the text after them."""
    flags: list[tuple[str, str | None]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if not text.startswith("--", pos):
            return flags, text[pos:]
        end = _word_end(text, pos, escape)
        word, pos = text[pos:end], end
        if word == "--":  # docker's end-of-flags marker
            return flags, text[pos:].lstrip()
        name, equals, value = word[2:].partition("=")
        flags.append((name, value if equals else None))


def expand(word: str, lookup: Lookup | None, escape: str, *, quotes: bool = True) -> str:
    """``word`` as docker's shell-word rules read it, with ``lookup`` for variables.

    ``lookup=None`` removes quotes and escapes but leaves ``$`` alone; ``quotes=False``
    (the JSON form) keeps quote characters literally.
    """
    return _Expander(word, lookup, escape, quotes).word(stop="", depth=0)


class _Expander:
    def __init__(self, text: str, lookup: Lookup | None, escape: str, quotes: bool) -> None:
        self.text, self.lookup, self.escape, self.quotes = text, lookup, escape, quotes
        self.pos = 0

    def _next(self) -> str:
        char = self.text[self.pos]
        self.pos += 1
        return char

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def word(self, stop: str, depth: int) -> str:
        if depth > _MAX_NESTING:
            raise DockerfileError("variable substitutions are nested too deeply")
        out: list[str] = []
        while self.pos < len(self.text) and not (stop and self._peek() == stop):
            char = self._next()
            if char == self.escape:
                if self.pos < len(self.text):  # a lone escape at the end is dropped
                    out.append(self._next())
            elif char == "'" and self.quotes:
                out.append(self._single())
            elif char == '"' and self.quotes:
                out.append(self._double(depth))
            elif char == "$" and self.lookup is not None:
                out.append(self._dollar(depth))
            else:
                out.append(char)
        return "".join(out)

    def _single(self) -> str:
        end = self.text.find("'", self.pos)
        if end < 0:
            raise DockerfileError("a single quote (') is not closed")
        value, self.pos = self.text[self.pos:end], end + 1
        return value

    def _double(self, depth: int) -> str:
        out: list[str] = []
        while self.pos < len(self.text):
            char = self._next()
            if char == '"':
                return "".join(out)
            if char == self.escape and self._peek() in ('"', "$", self.escape):
                out.append(self._next())
            elif char == "$" and self.lookup is not None:
                out.append(self._dollar(depth))
            else:
                out.append(char)
        raise DockerfileError('a double quote (") is not closed')

    def _name(self) -> str:
        first = self._peek()
        if first.isdigit():  # a positional parameter: never set in a Dockerfile
            start = self.pos
            while self._peek().isdigit():
                self.pos += 1
            return self.text[start:self.pos]
        if first and first in _SPECIAL_PARAMS:
            return self._next()
        start = self.pos
        while self._peek() and (self._peek().isalnum() or self._peek() == "_"):
            self.pos += 1
        return self.text[start:self.pos]

    def _dollar(self, depth: int) -> str:
        assert self.lookup is not None
        if self._peek() == "{":
            self.pos += 1
            return self._braced(depth)
        name = self._name()
        return (self.lookup(name) or "") if name else "$"

    def _braced(self, depth: int) -> str:
        assert self.lookup is not None
        name = self._name()
        if not name:
            raise DockerfileError(f"bad substitution in {self.text!r}: no variable name")
        value = self.lookup(name)
        if self.pos >= len(self.text):
            raise DockerfileError(f"missing '}}' in {self.text!r}")
        op = self._next()
        if op == "}":
            return value or ""
        colon = op == ":"
        if colon:
            op = self._next() if self.pos < len(self.text) else ""
        if op not in ("-", "+", "?"):
            raise DockerfileError(
                f"unsupported substitution ${{{name}{':' if colon else ''}{op}...}} in "
                f"{self.text!r}: only ${{VAR}}, ${{VAR:-word}}, ${{VAR:+word}} and "
                "${VAR:?message} (and the forms without ':') are supported")
        alternative = self.word(stop="}", depth=depth + 1)
        if self._peek() != "}":
            raise DockerfileError(f"missing '}}' in {self.text!r}")
        self.pos += 1
        is_set = value is not None and (value != "" or not colon)
        if op == "-":
            return value if is_set and value is not None else alternative
        if op == "+":
            return alternative if is_set else ""
        if not is_set or value is None:
            raise DockerfileError(f"{name}: {alternative or 'is not set'}")
        return value


def json_list(text: str) -> list[str] | None:
    """The exec form's strings, or None when ``text`` is not JSON (so it is shell form).

    Valid JSON that is not a list of strings is an error rather than shell form, and so is
    text after the closing ``]`` (docker would silently drop it).
    """
    if not text.startswith("["):
        return None
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None  # such as `[ -f /etc/x ] && ...`: a shell command
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DockerfileError("the JSON (exec) form must be a list of strings, "
                              'such as ["executable", "arg"]')
    if text[end:].strip():
        raise DockerfileError(f"unexpected text after the JSON array: {text[end:].strip()!r}")
    return value


def duration_ns(text: str) -> int:
    """A Go duration (``30s``, ``1m30s``, ``500ms``) in nanoseconds, as HEALTHCHECK takes it."""
    if not text:
        raise DockerfileError("a duration must not be empty")
    if text == "0":
        return 0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise DockerfileError(f"{text!r} is not a duration such as 30s, 1m30s or 500ms")
        total += float(match[1]) * _DURATION_NS[match[2]]
        pos = match.end()
    return int(total)


def check_port(port: str) -> str:
    match = _PORT.fullmatch(port)
    low, high = (int(match[1]), int(match[2] or match[1])) if match else (0, -1)
    if not low <= high <= 65535:
        raise DockerfileError(f"EXPOSE {port!r}: a port is N, N/tcp, N/udp or a range N-M")
    return port


def check_signal(value: str) -> None:
    name = value.upper().removeprefix("SIG")
    if not ((value.isdigit() and 0 < int(value) < 65) or name in _SIGNALS
            or _SIGNAL_EXTRA.fullmatch(name)):
        raise DockerfileError(f"STOPSIGNAL {value!r} is not a signal such as SIGTERM or 15")


def check_local(source: str) -> None:
    if _REMOTE.match(source):
        raise DockerfileError(f"ADD {source}: only local sources are supported (no URLs or "
                              "git repositories); download remote files in a RUN step")


def no_heredoc(raw: list[str], keyword: str) -> None:
    if any(_HEREDOC.fullmatch(word) for word in raw):
        raise DockerfileError(f"heredocs (<<EOF) are not supported in {keyword}")


def archive_kind(head: bytes) -> str | None:
    """What ADD unpacks, judged from a file's first 512 bytes as docker judges it.

    "gzip", "bzip2" and "xz" still need a tar inside (else docker copies the file as is).
    """
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return "tar" if head[257:262] == b"ustar" else None
