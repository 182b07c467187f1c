"""E2B's default template, ``base``: the server's default image with E2B's user, ``user``
(uid 1000, its home ``/home/user`` the working directory), as E2B's own base template has,
so code that writes to /home/user or expects ``whoami`` to say ``user`` runs unchanged
(``user="root"`` still runs as root). Built once per team, by the Dockerfile builder, on
the first create that names it (a few seconds; later ones find it, cached like any build).
"""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

from ..control.builder import Builder, BuildOptions
from ..errors import SandportError
from ..server.context import AppContext
from .wire import BASE_IMAGE

IMAGE = BASE_IMAGE  # the team's image E2B's default template, "base", stands for
DOCKERFILE = """FROM {image}
RUN id -u user >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --uid 1000 user
USER user
WORKDIR /home/user
"""
FAILED_S = 60.0  # a build that failed is not tried again for this long (its error is)
_building: dict[str, asyncio.Lock] = {}  # per team: one build, the others wait for it
_failed: dict[str, tuple[float, SandportError]] = {}


async def base_image(ctx: AppContext, team: str) -> str:
    """The team's ``e2b-base`` image, built from the default image if it has none."""
    if ctx.images.lookup(team, IMAGE) is not None:
        return IMAGE
    async with _building.setdefault(team, asyncio.Lock()):
        if ctx.images.lookup(team, IMAGE) is None:
            failed = _failed.get(team)
            if failed is not None and time.monotonic() - failed[0] < FAILED_S:
                raise failed[1]
            try:
                await _build(ctx, team)
            except SandportError as exc:
                _failed[team] = time.monotonic(), exc
                raise
            _failed.pop(team, None)
    return IMAGE


async def _build(ctx: AppContext, team: str) -> None:
    data = DOCKERFILE.format(image=ctx.settings.default_image).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        entry = tarfile.TarInfo("Dockerfile")
        entry.size, entry.mode = len(data), 0o644
        tar.addfile(entry, io.BytesIO(data))
    fd, name = tempfile.mkstemp(prefix="e2b-base-", suffix=".tar", dir=ctx.settings.data_dir)
    options = BuildOptions(mem_mib=min(1024, ctx.limits.mem_mib),
                           timeout_s=min(600.0, ctx.settings.build_timeout_s),
                           context_max_bytes=1 << 20)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(context.getvalue())
        await Builder(ctx.images, ctx.sandboxes, ctx.runtime, ctx.builds).build(
            team, IMAGE, Path(name), options, lambda event: None)
    finally:
        os.unlink(name)
