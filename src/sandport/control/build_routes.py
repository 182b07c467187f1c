"""POST /api/images/{name}/build with a build context: the query's options, then the build
(control/builder.py) streamed as NDJSON.

Query: ``dockerfile=PATH`` (in the context; default ``Dockerfile``), ``buildarg=K=V``
(repeatable), ``target=STAGE``, ``network=none|internet`` (RUN steps' egress; default
none), ``startCommand=LINE`` and ``readyCommand=LINE`` (kept with the image for a create
with ``startCmd: true``), ``memMiB=N`` and ``vcpus=N`` (each RUN step's sandbox).

Events: ``{"status": "pulling", "image": ref}`` and the pull's own events for each base
image not held yet, ``{"status": "building", "steps": N}``, then per step ``{"step": i,
"of": N, "line": L, "instruction": text}`` (with ``"cached": true|false`` for RUN, COPY
and ADD), a RUN's output as ``{"step": i, "stream": "stdout", "output": text}``, and
``{"status": "built", ...}``; the last line ``{"image": {...}}`` or an error object.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..errors import ValidationFailed
from ..runtime.images.pull import Listener
from .builder import Builder, BuildOptions
from .requests import MIN_MEM_MIB

_KNOWN = frozenset({"dockerfile", "buildarg", "target", "network", "startCommand",
                    "readyCommand", "memMiB", "vcpus"})
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_QUERY_VALUE = 64 * 1024

Streamer = Callable[[Callable[[Listener], Awaitable[dict[str, Any]]]], Awaitable[Response]]


def build_options(request: Request) -> BuildOptions:
    """The build's options from the query string; ValidationFailed naming a bad one."""
    ctx = request.app.state.ctx
    query = request.query_params
    unknown = sorted(set(query) - _KNOWN)
    if unknown:
        raise ValidationFailed(f"unknown build parameter(s): {', '.join(unknown)}; accepted: "
                               + ", ".join(sorted(_KNOWN)))
    for key, value in query.multi_items():
        if len(value) > MAX_QUERY_VALUE:
            raise ValidationFailed(f"{key} is longer than {MAX_QUERY_VALUE} characters")
        if "\0" in value:
            raise ValidationFailed(f"{key} holds a NUL character")
    args: dict[str, str] = {}
    for item in query.getlist("buildarg"):
        key, sep, value = item.partition("=")
        if not sep or not _ARG_NAME.fullmatch(key):
            raise ValidationFailed(f"buildarg {item[:80]!r} must be NAME=VALUE")
        args[key] = value
    network = query.get("network", "none")
    if network not in ("none", "internet"):
        raise ValidationFailed('network is "none" (no egress for RUN steps) or "internet"')
    for key in ("dockerfile", "target", "startCommand", "readyCommand"):
        if key in query and not query[key].strip():
            raise ValidationFailed(f"{key} must not be empty")
    limits = ctx.limits
    return BuildOptions(
        dockerfile=query.get("dockerfile", "Dockerfile"), build_args=args,
        internet=network == "internet", target=query.get("target"),
        start_command=query.get("startCommand"), ready_command=query.get("readyCommand"),
        vcpus=_int(query.get("vcpus"), "vcpus", 1, 1, limits.cpus),
        mem_mib=_int(query.get("memMiB"), "memMiB", min(1024, limits.mem_mib), MIN_MEM_MIB,
                     limits.mem_mib),
        timeout_s=ctx.settings.build_timeout_s,
        context_max_bytes=min(ctx.images.max_image_bytes,
                              ctx.settings.build_context_max_mib * 2**20))


def _int(text: str | None, key: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValidationFailed(f"{key} must be an integer from {low} to {high}")
    return int(text)


async def dockerfile_build(request: Request, team: str, name: str, context: Path,
                           stream: Streamer) -> Response:
    """Build ``name`` from the context tar at ``context`` (removed once read)."""
    ctx = request.app.state.ctx
    try:
        options = build_options(request)
    except BaseException:
        context.unlink(missing_ok=True)
        raise
    builder = Builder(ctx.images, ctx.sandboxes, ctx.runtime, ctx.builds)

    async def run(listen: Listener) -> dict[str, Any]:
        try:
            record = await builder.build(team, name, context, options, listen)
        finally:
            context.unlink(missing_ok=True)
        return {"image": ctx.images.info(record).to_wire()}

    return await stream(run)
