"""Dockerfiles, parsed as docker reads them, for the image builder. Pure: no I/O.

``parse_dockerfile(text, build_args)`` returns the stages with every instruction checked and
its variables expanded where docker expands them (ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL
USER VOLUME WORKDIR, and ARG defaults), never in RUN, CMD, ENTRYPOINT, SHELL or HEALTHCHECK
(the shell does that). Anything wrong or not supported is ``ValidationFailed`` naming the line;
nothing is silently ignored.

Choices where docker leaves room, or where sandport does less:

* Variables: ENV wins over ARG; a stage starts with the env of its base. The parser cannot
  know a registry image's env (``ENV PATH=/x:$PATH``), so an unknown variable expands to
  empty unless the caller passes ``base_env={Stage.base: env}``; a first parse without it
  lists them exactly in ``external_images``, as FROM lines only see ARGs.
* ARG scoping as docker's: an ARG before the first FROM is usable only in FROM lines unless
  a stage declares it again (``ARG NAME``, which inherits the value). Build args override
  defaults; an unused one is listed in ``unused_build_args``, not an error. The automatic
  platform args (TARGETARCH, BUILDPLATFORM, ...) are the host's and cannot be overridden.
  RUN instructions carry ``build_env``: the ARGs in scope, which docker exports to the
  command, beneath the image's ENV (the builder lays ENV over it).
* ADD takes local sources only (a URL or git source is an error). Local tar archives are
  unpacked as docker does: such instructions have ``extract_archives=True``; docker decides
  by content, not name, so the builder sniffs each source file with ``archive_kind``.
* HEALTHCHECK is parsed: ``args`` is the config's ``Test`` (``["NONE"]``, ``["CMD", ...]``,
  ``["CMD-SHELL", text]``), ``flags`` its durations (``duration_ns``). VOLUME is recorded in
  the config only: no volume is made; later writes below it are kept, as BuildKit keeps them.
* COPY --from takes a stage number or name defined earlier, or else an image reference
  (``source_image``); a name or number of this or a later stage is an error.
* MAINTAINER becomes ``LABEL maintainer=...``. ONBUILD, heredocs, RUN --mount/--network/
  --security and every flag not in ``_FLAGS`` are rejected.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ...errors import ValidationFailed
from . import _dockerfile_words as words
from ._dockerfile_words import DockerfileError, archive_kind, duration_ns
from .reference import parse_reference

__all__ = ["Dockerfile", "Instruction", "Stage", "archive_kind", "duration_ns", "host_arch",
           "parse_dockerfile"]

PROXY_ARGS = frozenset({"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
                        "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"})
_FLAGS = {"FROM": {"platform"}, "COPY": {"from", "chown", "chmod"}, "ADD": {"chown", "chmod"},
          "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"}}
_WHY_NOT = {
    "mount": "cache, secret, ssh and bind mounts are not available in builds here",
    "network": "build steps always run with the server's build network",
    "security": "build steps never run privileged",
}
_STAGE_NAME = re.compile(r"[a-z][a-z0-9._-]*")
MAX_INSTRUCTIONS = 2000  # each is a step of the build (real Dockerfiles have tens)


@dataclass(frozen=True)
class Instruction:
    line: int  # where it starts, 1-based
    keyword: str  # upper case: "RUN"
    args: tuple[str, ...]  # expanded where docker expands; shell form: one string
    json_form: bool
    flags: dict[str, str]  # {"from": "builder", "chown": "1000:1000"}, values expanded
    original: str  # as written, continuations joined: the build-cache key
    pairs: tuple[tuple[str, str | None], ...] = ()  # ENV, LABEL, ARG (None: no value)
    build_env: dict[str, str] = field(default_factory=dict)  # RUN: ARGs in scope
    source_stage: int | None = None  # COPY --from an earlier stage
    source_image: str | None = None  # COPY --from an image reference, to pull
    extract_archives: bool = False  # ADD: unpack local tar archives


@dataclass(frozen=True)
class Stage:
    index: int
    name: str | None  # from ``AS name``, lower case
    base: str  # the FROM reference after ARG expansion ("scratch", a stage name, an image)
    instructions: tuple[Instruction, ...]
    line: int
    base_stage: int | None = None  # when ``base`` names an earlier stage


@dataclass(frozen=True)
class Dockerfile:
    stages: tuple[Stage, ...]
    global_args: dict[str, str | None]  # ARGs before the first FROM: their defaults
    unused_build_args: tuple[str, ...] = ()

    def stage(self, target: str | None = None) -> Stage:
        """The stage ``--target`` names (case-insensitive), or the last one."""
        if target is None:
            return self.stages[-1]
        for stage in self.stages:
            if stage.name == target.lower():
                return stage
        raise ValidationFailed(f"the Dockerfile has no stage named {target!r}")

    def needed_for(self, target: Stage) -> tuple[Stage, ...]:
        """The stages ``target`` depends on and itself, in build order; the rest are skipped."""
        needed, todo = set(), [target.index]
        while todo:
            index = todo.pop()
            if index not in needed:
                needed.add(index)
                stage = self.stages[index]
                todo += [i.source_stage for i in stage.instructions if i.source_stage is not None]
                todo += [stage.base_stage] if stage.base_stage is not None else []
        return tuple(s for s in self.stages if s.index in needed)

    @property
    def external_images(self) -> tuple[str, ...]:
        """Registry images the build needs: bases that are not stages, COPY --from images."""
        refs = [s.base for s in self.stages if s.base_stage is None and s.base != "scratch"]
        refs += [i.source_image for s in self.stages for i in s.instructions if i.source_image]
        return tuple(dict.fromkeys(refs))


def host_arch() -> str:
    """This machine as an OCI architecture: ``amd64``, ``arm64``."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def parse_dockerfile(text: str, build_args: Mapping[str, str], *,
                     base_env: Mapping[str, Mapping[str, str]] | None = None,
                     arch: str | None = None) -> Dockerfile:
    """The stages of ``text``, or ValidationFailed naming the line that is wrong."""
    if "\0" in text:
        raise ValidationFailed("the Dockerfile holds a NUL character")
    try:
        escape, lines = words.read_lines(text)
    except DockerfileError as error:
        raise ValidationFailed(f"Dockerfile {error}") from None
    if not lines:
        raise ValidationFailed("the Dockerfile is empty: it needs at least a FROM line")
    if len(lines) > MAX_INSTRUCTIONS:
        raise ValidationFailed(f"the Dockerfile has {len(lines)} instructions; at most "
                               f"{MAX_INSTRUCTIONS} are built here")
    parser = _Parser(escape, build_args, base_env or {}, arch or host_arch())
    for line, logical in lines:
        try:
            parser.instruction(line, logical)
        except DockerfileError as error:
            raise ValidationFailed(f"Dockerfile line {line}: {error}") from None
    return parser.finish(lines[-1][0])


class _Parser:
    def __init__(self, escape: str, build_args: Mapping[str, str],
                 base_env: Mapping[str, Mapping[str, str]], arch: str) -> None:
        self.escape, self.build_args, self.base_env, self.arch = escape, build_args, base_env, arch
        target = {"PLATFORM": f"linux/{arch}", "OS": "linux", "ARCH": arch, "VARIANT": ""}
        self.auto = {f"{side}{k}": v for side in ("TARGET", "BUILD") for k, v in target.items()}
        self.global_defaults: dict[str, str | None] = {}
        self.global_values: dict[str, str | None] = {}
        self.declared: set[str] = set()
        self.stages: list[Stage] = []
        self.names: dict[str, int] = {}
        self.final_env: list[dict[str, str]] = []
        self.later_refs: list[tuple[int, int, str, str]] = []  # line, stage, name, what
        self.header: Stage | None = None
        self.env: dict[str, str] = {}
        self.args: dict[str, str | None] = {}
        self.body: list[Instruction] = []

    # -- scopes ---------------------------------------------------------------------------
    def global_lookup(self, name: str) -> str | None:
        return self.global_values[name] if name in self.global_values else self.auto.get(name)

    def stage_lookup(self, name: str) -> str | None:
        return self.env[name] if name in self.env else self.args.get(name)

    def lookup(self) -> Callable[[str], str | None]:
        return self.stage_lookup if self.header else self.global_lookup

    def expand(self, word: str, *, quotes: bool = True) -> str:
        return words.expand(word, self.lookup(), self.escape, quotes=quotes)

    # -- the walk -------------------------------------------------------------------------
    def instruction(self, line: int, text: str) -> None:
        keyword, rest = words.split_keyword(text)
        kw = keyword.upper()
        handler = _HANDLERS.get(kw)
        if handler is None:
            if kw == "ONBUILD":
                raise DockerfileError("ONBUILD is not supported: write the steps out here")
            raise DockerfileError(f"unknown instruction {keyword!r}")
        if self.header is None and kw not in ("ARG", "FROM"):
            raise DockerfileError(f"{kw} comes before the first FROM (only ARG may)")
        raw_flags, rest = words.extract_flags(rest, self.escape)
        flags = self.check_flags(kw, raw_flags)
        if not rest:
            raise DockerfileError(f"{kw} needs arguments")
        handler(self, _Line(line, kw, flags, rest, text))

    def check_flags(self, kw: str, raw: list[tuple[str, str | None]]) -> dict[str, str]:
        flags: dict[str, str] = {}
        for name, value in raw:
            if kw == "RUN" and name in _WHY_NOT:
                raise DockerfileError(f"RUN --{name} is not supported: {_WHY_NOT[name]}")
            if name not in _FLAGS.get(kw, ()):
                raise DockerfileError(f"{kw} --{name} is not supported")
            if name in flags:
                raise DockerfileError(f"--{name} is given twice")
            if value is None:
                raise DockerfileError(f"--{name} needs a value: --{name}=...")
            flags[name] = value
        return flags

    def emit(self, at: _Line, args: tuple[str, ...], *, json_form: bool = False,
             pairs: tuple[tuple[str, str | None], ...] = (),
             build_env: dict[str, str] | None = None,
             source_stage: int | None = None, source_image: str | None = None,
             extract_archives: bool = False) -> None:
        self.body.append(Instruction(at.line, at.kw, args, json_form, at.flags, at.original,
                                     pairs, build_env or {}, source_stage, source_image,
                                     extract_archives))

    def close_stage(self) -> None:
        if self.header is not None:
            stage = self.header
            self.stages.append(Stage(stage.index, stage.name, stage.base, tuple(self.body),
                                     stage.line, stage.base_stage))
            self.final_env.append(self.env)

    def finish(self, last_line: int) -> Dockerfile:
        if self.header is None:
            raise ValidationFailed(f"Dockerfile line {last_line}: there is no FROM instruction")
        self.close_stage()
        for line, stage, name, what in self.later_refs:
            if self.names.get(name, -1) > stage:
                raise ValidationFailed(f"Dockerfile line {line}: {what} names the stage "
                                       f"{name!r}, which is defined later")
        unused = sorted(set(self.build_args) - self.declared - PROXY_ARGS)
        return Dockerfile(tuple(self.stages), dict(self.global_defaults), tuple(unused))

    # -- instructions ---------------------------------------------------------------------
    def from_(self, at: _Line) -> None:
        parts = words.split_words(at.rest, self.escape)
        if len(parts) not in (1, 3) or (len(parts) == 3 and parts[1].upper() != "AS"):
            raise DockerfileError("FROM takes an image and optionally AS name")
        self.close_stage()
        self.header = None  # FROM lines see the global ARGs only
        if "platform" in at.flags:
            wanted = self.expand(at.flags["platform"]).lower()
            if wanted.removesuffix("/v8" if self.arch == "arm64" else "") != f"linux/{self.arch}":
                raise DockerfileError(f"--platform={wanted} is not supported: this server "
                                      f"builds linux/{self.arch} images only")
        base = self.expand(parts[0])
        if not base:
            raise DockerfileError(f"FROM {parts[0]} is empty after variable expansion")
        name = parts[2].lower() if len(parts) == 3 else None
        if name is not None and not _STAGE_NAME.fullmatch(name) or name in ("scratch", "context"):
            raise DockerfileError(f"{parts[2]!r} is not a stage name (a-z, 0-9, . _ -, "
                                  "starting with a letter; not scratch or context)")
        if name in self.names:
            raise DockerfileError(f"the stage name {name!r} is used twice")
        index = len(self.stages)
        base_stage = self.names.get(base.lower())
        if base_stage is not None:
            env = dict(self.final_env[base_stage])
        else:
            if base.lower() != "scratch":
                image_reference(base, "FROM")
                self.later_refs.append((at.line, index, base.lower(), "FROM"))
            env = dict(self.base_env.get(base, {}))
        self.header = Stage(index, name, "scratch" if base.lower() == "scratch" else base, (),
                            at.line, base_stage)
        if name is not None:
            self.names[name] = index
        self.env, self.args, self.body = env, {}, []

    def arg(self, at: _Line) -> None:
        pairs: list[tuple[str, str | None]] = []
        for word in words.split_words(at.rest, self.escape):
            raw_name, equals, raw_default = word.partition("=")
            name = self.expand(raw_name)
            default = self.expand(raw_default) if equals else None
            if not name:
                raise DockerfileError(f"ARG {word!r} has no name")
            self.declared.add(name)
            if self.header is None:
                self.global_defaults[name] = default
                self.global_values[name] = self.arg_value(name, default, self.auto.get(name))
            else:  # a stage's `ARG NAME` inherits the global value
                pairs.append((name, self.arg_value(name, default, self.global_lookup(name))))
        if self.header is not None:
            self.args.update(pairs)
            self.emit(at, tuple(n if v is None else f"{n}={v}" for n, v in pairs),
                      pairs=tuple(pairs))

    def arg_value(self, name: str, default: str | None, inherited: str | None) -> str | None:
        if name in self.build_args and name not in self.auto:
            return self.build_args[name]
        return default if default is not None else inherited

    def env_or_label(self, at: _Line) -> None:
        pairs = [(self.expand(k), self.expand(v)) for k, v in self.raw_pairs(at)]
        if at.kw == "ENV":
            self.env.update(pairs)  # after expanding: `ENV a=1 b=$a` sees the old $a
        self.emit(at, tuple(f"{k}={v}" for k, v in pairs), pairs=tuple(pairs))

    def raw_pairs(self, at: _Line) -> list[tuple[str, str]]:
        parts = words.split_words(at.rest, self.escape)
        if "=" not in parts[0]:  # the legacy `ENV key value with spaces`
            key, *rest = at.rest.split(None, 1)
            if not rest:
                raise DockerfileError(f"{at.kw} {key} needs a value: {at.kw} {key}=value")
            return [(key, rest[0])]
        pairs = []
        for word in parts:
            key, equals, value = word.partition("=")
            if not equals or not key:
                raise DockerfileError(f"{at.kw} takes name=value pairs, not {word!r}")
            pairs.append((key, value))
        return pairs

    def maintainer(self, at: _Line) -> None:
        self.body.append(Instruction(at.line, "LABEL", (f"maintainer={at.rest}",), False, {},
                                     at.original, pairs=(("maintainer", at.rest),)))

    def run(self, at: _Line) -> None:
        exec_form = words.json_list(at.rest)
        if exec_form is None:
            words.no_heredoc(words.split_words(at.rest, self.escape), "RUN")
        elif not exec_form:
            raise DockerfileError("RUN needs a command")
        env = {k: v for k, v in self.args.items() if v is not None}
        env.update({k: v for k, v in self.build_args.items() if k in PROXY_ARGS})
        self.emit(at, tuple(exec_form) if exec_form is not None else (at.rest,),
                  json_form=exec_form is not None, build_env=env)

    def command(self, at: _Line) -> None:  # CMD, ENTRYPOINT: an empty list clears them
        exec_form = words.json_list(at.rest)
        self.emit(at, tuple(exec_form) if exec_form is not None else (at.rest,),
                  json_form=exec_form is not None)

    def shell(self, at: _Line) -> None:
        exec_form = words.json_list(at.rest)
        if not exec_form:
            raise DockerfileError('SHELL takes a JSON list such as ["/bin/bash", "-c"]')
        self.emit(at, tuple(exec_form), json_form=True)

    def paths(self, at: _Line) -> tuple[tuple[str, ...], bool]:
        """COPY, ADD, VOLUME: a JSON list or words, expanded; and whether it was JSON."""
        exec_form = words.json_list(at.rest)
        raw = exec_form if exec_form is not None else words.split_words(at.rest, self.escape)
        words.no_heredoc(raw, at.kw)
        paths = tuple(self.expand(w, quotes=exec_form is None) for w in raw)
        return paths, exec_form is not None

    def copy(self, at: _Line) -> None:
        paths, json_form = self.paths(at)
        if len(paths) < 2:
            raise DockerfileError(f"{at.kw} needs at least one source and a destination")
        if not all(paths):
            raise DockerfileError(f"{at.kw}: a path is empty after variable expansion")
        if len(paths) > 2 and not paths[-1].endswith("/"):
            raise DockerfileError(f"{at.kw} with several sources needs a destination ending /")
        for name in ("chown", "chmod"):
            if name in at.flags:
                at.flags[name] = self.expand(at.flags[name])
        if "chmod" in at.flags and not re.fullmatch(r"[0-7]{3,4}", at.flags["chmod"]):
            raise DockerfileError(f"--chmod={at.flags['chmod']} must be octal, such as 0755")
        if at.kw == "ADD":
            for source in paths[:-1]:
                words.check_local(source)
            self.emit(at, paths, json_form=json_form, extract_archives=True)
            return
        stage, image = self.copy_source(at) if "from" in at.flags else (None, None)
        self.emit(at, paths, json_form=json_form, source_stage=stage, source_image=image)

    def copy_source(self, at: _Line) -> tuple[int | None, str | None]:
        source = at.flags["from"] = self.expand(at.flags["from"])
        assert self.header is not None
        current = self.header.index
        if source.isascii() and source.isdigit():
            if int(source) >= current:
                raise DockerfileError(f"COPY --from={source}: stage {source} is not defined "
                                      "before this one (stages count from 0)")
            return int(source), None
        if source.lower() in self.names:
            if self.names[source.lower()] == current:
                raise DockerfileError(f"COPY --from={source}: a stage cannot copy from itself")
            return self.names[source.lower()], None
        image_reference(source, "COPY --from")
        self.later_refs.append((at.line, current, source.lower(), "COPY --from"))
        return None, source

    def single(self, at: _Line) -> None:  # WORKDIR, USER, STOPSIGNAL
        value = self.expand(at.rest)
        if not value:
            raise DockerfileError(f"{at.kw} is empty after variable expansion")
        if at.kw == "STOPSIGNAL":
            words.check_signal(value)
        self.emit(at, (value,))

    def expose(self, at: _Line) -> None:
        ports = tuple(self.expand(w) for w in words.split_words(at.rest, self.escape))
        self.emit(at, tuple(words.check_port(port) for port in ports))

    def volume(self, at: _Line) -> None:
        paths, json_form = self.paths(at)
        if not paths or not all(paths):
            raise DockerfileError("VOLUME needs a path")
        self.emit(at, paths, json_form=json_form)

    def healthcheck(self, at: _Line) -> None:
        for name in at.flags:
            value = at.flags[name] = words.expand(at.flags[name], None, self.escape)
            if name == "retries" and not value.isdigit():
                raise DockerfileError(f"--retries={value} must be a whole number")
            if name != "retries":
                duration_ns(value)
        kind, *more = at.rest.split(None, 1)
        command = more[0] if more else ""
        if kind.upper() == "NONE" and not command and not at.flags:
            self.emit(at, ("NONE",))
            return
        if kind.upper() != "CMD" or not command:
            raise DockerfileError("HEALTHCHECK takes [flags] CMD command, or NONE alone")
        exec_form = words.json_list(command)
        if exec_form == []:
            raise DockerfileError("HEALTHCHECK CMD needs a command")
        args = ("CMD", *exec_form) if exec_form is not None else ("CMD-SHELL", command)
        self.emit(at, args, json_form=exec_form is not None)


@dataclass
class _Line:
    line: int
    kw: str
    flags: dict[str, str]
    rest: str
    original: str


def image_reference(text: str, what: str) -> None:
    try:
        parse_reference(text)
    except ValidationFailed as error:
        raise DockerfileError(f"{what} {text!r} is not a stage or an image: "
                              f"{error.message}") from None


_HANDLERS: dict[str, Callable[[_Parser, _Line], None]] = {
    "FROM": _Parser.from_, "ARG": _Parser.arg, "ENV": _Parser.env_or_label,
    "LABEL": _Parser.env_or_label, "MAINTAINER": _Parser.maintainer, "RUN": _Parser.run,
    "CMD": _Parser.command, "ENTRYPOINT": _Parser.command, "SHELL": _Parser.shell,
    "COPY": _Parser.copy, "ADD": _Parser.copy, "WORKDIR": _Parser.single,
    "USER": _Parser.single, "STOPSIGNAL": _Parser.single, "EXPOSE": _Parser.expose,
    "VOLUME": _Parser.volume, "HEALTHCHECK": _Parser.healthcheck,
}
