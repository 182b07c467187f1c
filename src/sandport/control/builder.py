"""Dockerfile builds: each step's result a layer in the one layer store, RUN in sandboxes.

A build gets its context as a tar (unpacked here by the layer unpacker, with its checks on
names, links and sizes; then ``.dockerignore``'s exclusions removed), reads the Dockerfile
from it (runtime/images/dockerfile.py parses it), pulls or finds the images its stages
start from, and goes through the steps of the stages the target needs:

* ENV, LABEL, USER, WORKDIR, CMD, ENTRYPOINT, EXPOSE, ... change the config only.
* RUN starts a sandbox from the image so far (same isolation, limits and egress policy as
  any sandbox; no network unless the build asks for ``internet``), runs the command as the
  image's user in its working directory with the build's ARGs beneath its ENV, and, if it
  exits 0, copies the sandbox's changes (runtime.copy_changes) into a new layer.
* COPY and ADD mount an overlay of the image so far on the host and copy into it
  (runtime/images/buildcopy.py); its upper directory is the new layer.

Every layer step is cached: its key is the image it starts from (layers and config), the
instruction, and what it reads (the ARGs a RUN sees, a digest of the files a COPY copies),
and its result is recorded as an image of the team's build cache (source "cache", not
listed; reclaimed like any image). An unchanged rebuild therefore only hashes its
context. A step that fails raises BuildFailed with its output; the build's sandboxes are
stopped and nothing of the failed step is kept.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import hashlib
import json
import logging
import os
import posixpath
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..dockerignore import Ignore, parse_dockerignore
from ..errors import BuildFailed, NotFound, PayloadTooLarge, SandportError, ValidationFailed
from ..runtime import CommandRequest, Runtime
from ..runtime._files import remove_tree
from ..runtime.agent.channel import CommandListener
from ..runtime.images import ImageStore, buildcopy
from ..runtime.images.dockerfile import Dockerfile, Instruction, Stage, host_arch, parse_dockerfile
from ..runtime.images.layerstore import ImageRecord, LayerBlob
from ..runtime.images.pull import Listener
from ..runtime.images.store import DEFAULT_ENV
from ..runtime.images.unpack import UnpackLimits, unpack_layer
from ..runtime.mounts import mount_overlay, unmount
from ..runtime.safepath import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2
from ..runtime.sandboxfs import MAX_ID, ROOT, SandboxFS, User
from .requests import CreateSandbox, NetworkPolicy
from .sandboxes import SandboxService

log = logging.getLogger("sandport.build")
T = TypeVar("T")

# + the cache key's hex: a build cache image's name. No name a user can give (a local
# name or a registry reference) starts with "@": the API cannot reach or make one.
CACHE_PREFIX = "@build/"
BUILD_STEP_IMAGE = CACHE_PREFIX + "run-"  # what a RUN step's sandbox is made from
MAX_DOCKERFILE_BYTES = 1 << 20
OUTPUT_TAIL = 3000
DEFAULT_SHELL = ("/bin/sh", "-c")
EXEC_ARGV = ("/bin/sh", "-c", 'exec "$0" "$@"')
LAYER_STEPS = frozenset({"RUN", "COPY", "ADD"})
CLEANUP_GRACE_S = 60.0  # past the build's time: for stopping its sandbox, removing staging


@dataclass(frozen=True, slots=True)
class BuildOptions:
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str] = field(default_factory=dict)
    internet: bool = False
    target: str | None = None
    start_command: str | None = None
    ready_command: str | None = None
    vcpus: int = 1
    mem_mib: int = 1024
    disk_mib: int = 8192
    timeout_s: float = 3600.0
    context_max_bytes: int = 2 << 30


@dataclass(slots=True)
class State:
    """The image a step starts from: its layers, their blobs, its config (and SHELL)."""

    diff_ids: list[str]
    blobs: list[LayerBlob]
    config: dict[str, Any]
    shell: tuple[str, ...] = DEFAULT_SHELL
    size: int = 0  # the layers' bytes

    @classmethod
    def of(cls, record: ImageRecord) -> State:
        config = json.loads(json.dumps(record.config))
        shell = tuple(record.extra.get("shell") or DEFAULT_SHELL)
        return cls(list(record.diff_ids), list(record.blobs), config, shell,
                   record.size_bytes)

    @classmethod
    def scratch(cls) -> State:
        return cls([], [], {"architecture": host_arch(), "os": "linux",
                            "config": {"Env": [DEFAULT_ENV[0]]},
                            "rootfs": {"type": "layers", "diff_ids": []}, "history": []})

    @property
    def inner(self) -> dict[str, Any]:
        inner: dict[str, Any] = self.config.setdefault("config", {})
        return inner

    @property
    def key(self) -> str:
        body = json.dumps({"layers": self.diff_ids, "config": self.inner,
                           "shell": list(self.shell)}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def env(self) -> dict[str, str]:
        return dict(item.partition("=")[::2] for item in self.inner.get("Env") or [])

    def set_env(self, values: dict[str, str]) -> None:
        self.inner["Env"] = [f"{k}={v}" for k, v in values.items()]

    def workdir(self) -> str:
        return str(self.inner.get("WorkingDir") or "/")

    def note(self, created_by: str) -> None:
        """A history entry for a step that makes no layer."""
        self.config.setdefault("history", []).append(
            {"created": _now(), "created_by": created_by, "empty_layer": True})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class BuildSlots:
    """What builds share on one server: at most ``PER_TEAM`` at once per team (the rest
    wait their turn), and threads of their own for copying and hashing, so that a big
    context does not take the threads every other request runs on."""

    PER_TEAM = 2
    THREADS = 4

    def __init__(self) -> None:
        self._teams: dict[str, asyncio.Semaphore] = {}
        self.pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="build")

    def team(self, team: str) -> asyncio.Semaphore:
        return self._teams.setdefault(team, asyncio.Semaphore(self.PER_TEAM))


class Builder:
    def __init__(self, images: ImageStore, sandboxes: SandboxService, runtime: Runtime,
                 slots: BuildSlots) -> None:
        self.images = images
        self.sandboxes = sandboxes
        self.runtime = runtime
        self.slots = slots

    # -- the build ------------------------------------------------------------------------
    async def build(self, team: str, name: str, context_tar: Path, options: BuildOptions,
                    listen: Listener) -> ImageRecord:
        """Build ``name`` of ``team``; within ``options.timeout_s`` (a RUN still going then
        is stopped with its sandbox), with a grace for the clean-up after it."""
        slot = self.slots.team(team)
        if slot.locked():
            listen({"status": "queued"})
        async with slot:
            deadline = time.monotonic() + options.timeout_s
            try:
                return await asyncio.wait_for(
                    self._build(team, name, context_tar, options, listen, deadline),
                    options.timeout_s + CLEANUP_GRACE_S)
            except TimeoutError:
                raise _timed_out(options) from None

    async def _build(self, team: str, name: str, context_tar: Path, options: BuildOptions,
                     listen: Listener, deadline: float) -> ImageRecord:
        started = time.monotonic()
        staging = self.images.layers.staging("build")
        run = _Run(team, options, listen, deadline, staging, staging / "context", 0,
                   self.slots.pool)
        try:
            text = await run.blocking(self._receive, context_tar, run.context, options)
            parsed = await run.blocking(parse_dockerfile, text, options.build_args)
            needed = parsed.needed_for(parsed.stage(options.target))
            images: dict[str, ImageRecord] = {}
            for ref in _external(parsed, needed):
                listen({"status": "pulling", "image": ref})
                images[ref] = await self.images.ensure(team, ref, listen)
            parsed = await run.blocking(parse_dockerfile, text, options.build_args, base_env={
                ref: State.of(record).env() for ref, record in images.items()})
            target = parsed.stage(options.target)
            needed = parsed.needed_for(target)
            total = run.total = sum(1 + len(stage.instructions) for stage in needed)
            listen({"status": "building", "steps": total})
            states: dict[int, State] = {}
            for stage in needed:
                states[stage.index] = await self._stage(run, stage, images, states)
            final = states[target.index]
            extra: dict[str, Any] = {"shell": list(final.shell)}
            if options.start_command:
                extra["startCommand"] = options.start_command
            if options.ready_command:
                extra["readyCommand"] = options.ready_command
            final.config["created"] = _now()
            record = await run.blocking(self.images.record_image, team, name, "built",
                                        final.config, final.blobs, extra)
        finally:
            await run.settle()  # a step's thread still copying into staging, say
            await asyncio.to_thread(remove_tree, staging)
        await self.images.reclaim()
        listen({"status": "built", "seconds": round(time.monotonic() - started, 3),
                "cachedSteps": run.cached, "steps": total})
        log.info("team %s built %s (%s): %d steps, %d cached, %.2f s", team or "-", name,
                 record.digest, total, run.cached, time.monotonic() - started)
        return record

    def _receive(self, tar: Path, context: Path, options: BuildOptions) -> str:
        """Unpack the context, read its Dockerfile, drop what .dockerignore excludes."""
        context.mkdir(mode=0o700)
        dockerfile = options.dockerfile
        if tar.stat().st_size:
            with tar.open("rb") as fh:  # the cap holds for what it unpacks to, too
                unpack_layer(fh, context, (), UnpackLimits(max_bytes=options.context_max_bytes))
        text = _read_text(context, dockerfile, "the Dockerfile")
        if text is None:
            raise ValidationFailed(f"the build context has no {dockerfile!r} (send the "
                                   "context with the Dockerfile in it, or name it with "
                                   "?dockerfile=)")
        ignore_text = _read_text(context, ".dockerignore", ".dockerignore")
        if ignore_text:
            _apply_ignore(context, parse_dockerignore(ignore_text))
        return text

    async def _stage(self, run: _Run, stage: Stage, images: dict[str, ImageRecord],
                     states: dict[int, State]) -> State:
        if stage.base_stage is not None:
            state = _copy_state(states[stage.base_stage])
        elif stage.base == "scratch":
            state = State.scratch()
        else:
            state = State.of(images[stage.base])
        run.step(stage.line, f"FROM {stage.base}" + (f" AS {stage.name}" if stage.name else ""),
                 None)
        for ins in stage.instructions:
            if ins.keyword in LAYER_STEPS:
                state = await self._layer_step(run, state, ins, states, images)
            else:
                run.step(ins.line, ins.original, None)
                _configure(state, ins)
        return state

    # -- layer steps ------------------------------------------------------------------------
    async def _layer_step(self, run: _Run, state: State, ins: Instruction,
                          states: dict[int, State], images: dict[str, ImageRecord]) -> State:
        source_state = states[ins.source_stage] if ins.source_stage is not None else (
            State.of(images[ins.source_image]) if ins.source_image else None)
        inputs: dict[str, Any] = {}
        if ins.keyword == "RUN":
            inputs = {"env": ins.build_env, "shell": list(state.shell)}
        key = _cache_key(state, ins, inputs)
        if ins.keyword != "RUN":
            # what a COPY reads is part of its key: hash it (this needs the source mounted)
            digest = await run.blocking(self._sources_digest, run, ins, source_state)
            key = _cache_key(state, ins, {"sources": digest, "key": key})
        cached = self.images.layers.get(run.team, CACHE_PREFIX + key)
        if cached is not None and all(self.images.layers.has_layer(d)
                                      for d in cached.diff_ids):
            run.step(ins.line, ins.original, True)
            self.images.used(cached)
            return State.of(cached)
        run.step(ins.line, ins.original, False)
        changes = run.staging / f"changes-{run.count}"
        try:
            room = min(self.images.max_image_bytes - state.size, run.options.disk_mib << 20)
            if ins.keyword == "RUN":
                await self._run_step(run, state, ins)
                await self._collect_run(run, changes, max(room, 0))
            else:
                try:
                    await run.blocking(self._copy_step, run, state, ins, source_state,
                                       changes, room)
                except OSError as exc:  # what the image's own files made impossible
                    raise BuildFailed(f"line {ins.line}: {ins.original}: "
                                      f"{exc.strerror or exc}") from None
            record = await run.blocking(
                self.images.commit_layer, run.team, CACHE_PREFIX + key, "cache",
                state.config, state.blobs, state.diff_ids, changes / "upper",
                ins.original, {"shell": list(state.shell)})
        finally:
            await run.settle()
            await asyncio.to_thread(remove_tree, changes)
        if record.size_bytes > self.images.max_image_bytes:
            raise PayloadTooLarge(f"line {ins.line}: the image would be {record.size_bytes} "
                                  f"bytes, over this server's cap of "
                                  f"{self.images.max_image_bytes}")
        return State.of(record)

    async def _run_step(self, run: _Run, state: State, ins: Instruction) -> None:
        """Run the RUN in a new sandbox of the image so far; keep it for _collect_run."""
        # The sandbox starts in / (the step's command gets the working directory): runc
        # would make a missing one as root, where the step makes it as the image's user.
        config = json.loads(json.dumps(state.config))
        config["config"]["WorkingDir"] = "/"
        base = await run.blocking(self.images.record_image, run.team,
                                       BUILD_STEP_IMAGE + state.key, "cache", config,
                                       state.blobs, {"shell": list(state.shell)})
        request = CreateSandbox(
            image_name=base.name, timeout_minutes=max(1, int(run.options.timeout_s // 60) + 1),
            vcpus=run.options.vcpus, mem_mib=run.options.mem_mib,
            disk_size_mib=run.options.disk_mib,
            network=NetworkPolicy(allow_internet_access=run.options.internet))
        creating = asyncio.ensure_future(self.sandboxes.create(run.team, request))
        try:
            record = await asyncio.shield(creating)
        except asyncio.CancelledError:  # the build was given up: the sandbox is not kept
            with contextlib.suppress(Exception):
                made = await creating
                await self.sandboxes.stop(run.team, made.id, "build step ended")
            raise
        run.sandbox = record.id
        try:
            await self._run_in(run, record.id, state, ins)
        except BaseException:
            await self._end_sandbox(run)
            raise

    async def _run_in(self, run: _Run, sandbox_id: str, state: State, ins: Instruction
                      ) -> None:
        user = await run.blocking(self._user_and_workdir, sandbox_id, state)
        env = {k: v for k, v in ins.build_env.items() if k not in state.env()}
        if "HOME" not in state.env():
            env["HOME"] = user.home
        argv = tuple(ins.args) if ins.json_form else (*state.shell, ins.args[0])
        if ins.json_form and "/" not in argv[0]:
            argv = (*EXEC_ARGV, *argv)
        if any("\0" in word for word in (*argv, *env, *env.values())):
            raise ValidationFailed(f"line {ins.line}: the command or its environment holds "
                                   "a NUL character")
        output = _Output(run)
        try:
            channel = await self.runtime.start_command(sandbox_id, CommandRequest(
                argv=argv, env=env, cwd=state.workdir(), stdin=False, uid=user.uid,
                gid=user.gid, groups=user.groups), output)
        except SandportError as exc:
            raise BuildFailed(f"line {ins.line}: {ins.original}: could not start: "
                              f"{exc.message}") from None
        try:
            code = await asyncio.wait_for(asyncio.shield(output.done),
                                          max(0.1, run.deadline - time.monotonic()))
        except TimeoutError:
            channel.close()
            raise _timed_out(run.options) from None
        except BaseException:
            channel.close()
            raise
        if code != 0:
            raise BuildFailed(f"line {ins.line}: {ins.original!r} failed with exit code "
                              f"{code}" + output.tail())

    def _user_and_workdir(self, sandbox_id: str, state: State) -> User:
        """The image's user as the sandbox's files say; the working directory made if it
        is missing (as BuildKit makes it: owned by that user)."""
        root = self.runtime.open_root(sandbox_id)
        try:
            fs = SandboxFS(root)
            spec = str(state.inner.get("User") or "")
            user = fs.image_user(spec) if spec not in ("", "root", "0") else ROOT
            if state.workdir() != "/" and fs.mkdir(state.workdir(), parents=True):
                fs.chown(state.workdir(), user.uid, user.gid)
            return user
        finally:
            os.close(root)

    async def _collect_run(self, run: _Run, changes: Path, room: int) -> None:
        """The step's changes (at most ``room`` bytes, sparse files at their length: the
        sandbox's disk size, or what is left of the image cap) into ``changes/upper``."""
        assert run.sandbox is not None
        changes.mkdir(mode=0o700)
        try:
            await self.runtime.copy_changes(run.sandbox, changes / "upper", room)
        finally:
            await self._end_sandbox(run)

    async def _end_sandbox(self, run: _Run) -> None:
        if run.sandbox is None:
            return
        sandbox, run.sandbox = run.sandbox, None
        try:
            await asyncio.shield(self.sandboxes.stop(run.team, sandbox, "build step ended"))
        except NotFound:
            pass

    # -- COPY and ADD ---------------------------------------------------------------------------
    def _sources_digest(self, run: _Run, ins: Instruction, source: State | None) -> str:
        with self._source_root(run, source, "digest") as root:
            paths = buildcopy.find_sources(root, ins.args[:-1], _where(ins))
            return buildcopy.sources_digest(root, paths)

    def _copy_step(self, run: _Run, state: State, ins: Instruction, source: State | None,
                   changes: Path, room: int) -> None:
        changes.mkdir(mode=0o700)
        with self._source_root(run, source, "source") as src, \
                _Overlay(self.images, state.diff_ids, changes) as dst:
            patterns, dest = ins.args[:-1], ins.args[-1]
            paths = buildcopy.find_sources(src, patterns, _where(ins))
            into_dir = dest.endswith("/") or len(paths) > 1 or any(
                buildcopy.has_wildcard(p) for p in patterns)
            absolute = posixpath.normpath(posixpath.join(state.workdir(), dest))
            owner = _owner(dst, ins.flags["chown"]) if "chown" in ins.flags else None
            mode = int(ins.flags["chmod"], 8) if "chmod" in ins.flags else None
            buildcopy.copy_sources(
                src, paths, dst, absolute, into_dir=into_dir, owner=owner, mode=mode,
                extract=ins.extract_archives, staging=changes / "archive",
                budget=buildcopy.CopyBudget(room))

    def _source_root(self, run: _Run, source: State | None, label: str) -> _Root:
        if source is None:
            return _Root(os.open(run.context, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        scratch = run.staging / f"{label}-{run.count}"
        scratch.mkdir(mode=0o700)
        overlay = _Overlay(self.images, source.diff_ids, scratch)
        return _Root(overlay.__enter__(), overlay)


@dataclass(slots=True)
class _Run:
    team: str
    options: BuildOptions
    listen: Listener
    deadline: float
    staging: Path
    context: Path
    total: int
    pool: ThreadPoolExecutor
    count: int = 0
    cached: int = 0
    sandbox: str | None = None
    working: set[asyncio.Future[Any]] = field(default_factory=set)

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` on the builds' threads; the build waits for it (settle) before it
        removes what the thread may still be writing into."""
        future = asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(fn, *args, **kwargs))
        self.working.add(future)
        future.add_done_callback(self.working.discard)
        return await asyncio.shield(future)

    async def settle(self) -> None:
        if self.working:
            await asyncio.wait(set(self.working))

    def step(self, line: int, text: str, cached: bool | None) -> None:
        self.count += 1
        event: dict[str, Any] = {"step": self.count, "of": self.total, "line": line,
                                 "instruction": text}
        if cached is not None:
            event["cached"] = cached
            self.cached += cached
        self.listen(event)


class _Output(CommandListener):
    """A RUN's output, streamed to the build's listener; its tail kept for an error."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        # a step given up on (the build's time ran out) never reads its end
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")("replace")
                          for s in ("stdout", "stderr")}
        self._tail = ""

    def on_output(self, stream: str, data: bytes) -> None:
        text = self._decoders.get(stream, self._decoders["stdout"]).decode(data)
        if text:
            self._tail = (self._tail + text)[-OUTPUT_TAIL:]
            self.run.listen({"step": self.run.count, "stream": stream, "output": text})

    def on_exit(self, code: int, signum: int) -> None:
        if not self.done.done():
            self.done.set_result(code if not signum else 128 + signum)

    def on_failed(self, message: str) -> None:
        if not self.done.done():
            self.done.set_exception(BuildFailed(f"the step could not run: {message}"))

    def on_lost(self) -> None:
        if not self.done.done():
            self.done.set_exception(BuildFailed("the step's sandbox stopped before the "
                                                "command ended" + self.tail()))

    def tail(self) -> str:
        return f"; its last output:\n{self._tail}" if self._tail.strip() else ""


class _Overlay:
    """An overlay of ``diff_ids`` mounted on the host under ``scratch``; entered, a
    descriptor of its root. Its upper directory (``scratch/upper``) is what was changed."""

    def __init__(self, images: ImageStore, diff_ids: list[str], scratch: Path) -> None:
        self.lowers = [images.layers.layer_path(d) for d in reversed(diff_ids)]
        self.scratch = scratch
        self.fd = -1

    def __enter__(self) -> int:
        for part in ("upper", "work", "root", "empty"):
            (self.scratch / part).mkdir(mode=0o755, exist_ok=True)
        lowers = self.lowers or [self.scratch / "empty"]
        mount_overlay(lowers, self.scratch / "upper", self.scratch / "work",
                      self.scratch / "root")
        try:
            self.fd = os.open(self.scratch / "root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            unmount(self.scratch / "root")
            raise
        return self.fd

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        unmount(self.scratch / "root")
        remove_tree(self.scratch / "work")


class _Root:
    """A root descriptor (the context's, or an overlay's) closed or unmounted on exit."""

    def __init__(self, fd: int, overlay: _Overlay | None = None) -> None:
        self.fd = fd
        self.overlay = overlay

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        if self.overlay is not None:
            self.overlay.__exit__()
        else:
            os.close(self.fd)


# -- pure helpers ----------------------------------------------------------------------------

def _timed_out(options: BuildOptions) -> BuildFailed:
    return BuildFailed(f"the build did not finish within {options.timeout_s:g} s (the "
                       "server's --build-timeout-s)")


def _external(parsed: Dockerfile, needed: tuple[Stage, ...]) -> list[str]:
    refs = [s.base for s in needed if s.base_stage is None and s.base != "scratch"]
    refs += [i.source_image for s in needed for i in s.instructions if i.source_image]
    return list(dict.fromkeys(refs))


def _copy_state(state: State) -> State:
    return State(list(state.diff_ids), list(state.blobs),
                 json.loads(json.dumps(state.config)), state.shell, state.size)


def _cache_key(state: State, ins: Instruction, inputs: dict[str, Any]) -> str:
    body = json.dumps({"from": state.key, "keyword": ins.keyword, "args": list(ins.args),
                       "json": ins.json_form, "flags": ins.flags, "inputs": inputs},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _where(ins: Instruction) -> str:
    if ins.source_stage is not None or ins.source_image:
        return f"line {ins.line} (COPY --from={ins.flags.get('from')})"
    return f"the build context (line {ins.line}: {ins.keyword})"


def _configure(state: State, ins: Instruction) -> None:
    """Apply a step that changes only the config."""
    inner, kw = state.inner, ins.keyword
    if kw == "ENV":
        env = state.env()
        env.update({k: v or "" for k, v in ins.pairs})
        state.set_env(env)
    elif kw == "LABEL":
        inner.setdefault("Labels", {}).update({k: v or "" for k, v in ins.pairs})
    elif kw == "WORKDIR":
        inner["WorkingDir"] = posixpath.normpath(posixpath.join(state.workdir(), ins.args[0]))
    elif kw == "USER":
        inner["User"] = ins.args[0]
    elif kw in ("CMD", "ENTRYPOINT"):
        value = list(ins.args) if ins.json_form else [*state.shell, ins.args[0]]
        if kw == "ENTRYPOINT":
            inner["Entrypoint"] = value or None
            inner.pop("Cmd", None)  # as docker: a new ENTRYPOINT drops the base's CMD
        else:
            inner["Cmd"] = value or None
    elif kw == "EXPOSE":
        ports = dict(inner.get("ExposedPorts") or {})
        ports.update({p if "/" in p else f"{p}/tcp": {} for p in ins.args})
        inner["ExposedPorts"] = ports
    elif kw == "VOLUME":
        inner["Volumes"] = {**(inner.get("Volumes") or {}), **{p: {} for p in ins.args}}
    elif kw == "STOPSIGNAL":
        inner["StopSignal"] = ins.args[0]
    elif kw == "SHELL":
        state.shell = tuple(ins.args)
    elif kw == "HEALTHCHECK":
        inner["Healthcheck"] = {"Test": list(ins.args), **{
            k.title().replace("-", ""): v for k, v in ins.flags.items()}}
    elif kw == "ARG":
        return
    else:  # the parser lets nothing else through
        raise ValidationFailed(f"line {ins.line}: {kw} is not supported here")
    state.note(ins.original)


def _owner(root: int, spec: str) -> buildcopy.Owner:
    """``--chown=user[:group]`` resolved in the image's own /etc/passwd and /etc/group."""
    who, _, group = spec.partition(":")
    fs = SandboxFS(root)
    for part in (who, group):
        if part.isdigit() and int(part) > MAX_ID:
            raise ValidationFailed(f"--chown={spec}: an id is at most {MAX_ID}")
    if who.isdigit():
        uid, gid = int(who), int(who)
    else:
        user = fs.user_named(who)
        uid, gid = user.uid, user.gid
    if group:
        gid = int(group) if group.isdigit() else fs.image_user(f"{uid}:{group}").gid
    return buildcopy.Owner(uid, gid)


def _read_text(context: Path, path: str, what: str) -> str | None:
    """A file of the context, inside it (a symlink cannot point out), or None."""
    root = os.open(context, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        found = openat2(root, buildcopy.clean(path) or ".", os.O_PATH,
                        resolve=RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    except FileNotFoundError:
        return None
    except OSError:
        raise ValidationFailed(f"{what} ({path!r}) cannot be read from the context") from None
    finally:
        os.close(root)
    try:
        if not stat.S_ISREG(os.fstat(found).st_mode):  # a FIFO would block the open
            raise ValidationFailed(f"{what} ({path!r}) is not a file")
        fd = os.open(f"/proc/self/fd/{found}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(found)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_DOCKERFILE_BYTES + 1)
    if len(data) > MAX_DOCKERFILE_BYTES:
        raise PayloadTooLarge(f"{what} is larger than {MAX_DOCKERFILE_BYTES} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ValidationFailed(f"{what} is not UTF-8 text") from None


def _apply_ignore(context: Path, ignore: Ignore) -> None:
    """Remove what .dockerignore excludes from the unpacked context (its directories
    are walked only where an exception may bring something back)."""
    kept_dirs: list[str] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        directory = context / rel if rel else context
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if ignore.excluded(path):
                if is_dir and ignore.may_descend(path):
                    kept_dirs.append(path)
                    pending.append(path)
                elif is_dir:
                    remove_tree(entry.path)
                else:
                    os.unlink(entry.path)
            elif is_dir:
                pending.append(path)
    for path in reversed(kept_dirs):  # excluded directories nothing was brought back into
        try:
            os.rmdir(context / path)
        except OSError:
            pass


__all__ = ["BUILD_STEP_IMAGE", "CACHE_PREFIX", "BuildOptions", "BuildSlots", "Builder"]

