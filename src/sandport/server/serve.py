"""Startup → serve → shutdown of ``sandport serve``.

Startup: lock the data directory, open the store, prepare the host, make sure an API key
exists (printed once), build missing built-in images with visible progress, reconcile the
store with the runtime, then listen. One process, one loop: the edge proxy owns the
public listener and hands API requests to the control/runtime app (uvicorn) on a Unix
socket in the data directory. Shutdown leaves sandboxes running: they are found again on
the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import resource
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from .. import crashpoints
from ..activity import Activity, CpuProbe
from ..control.housekeeping import Housekeeping
from ..control.netcaps import caps_from
from ..control.sandboxes import SandboxService
from ..e2b.envd_wire import access_token, traffic_token
from ..errors import ValidationFailed
from ..ids import e2b_twin, hash_secret, new_api_key
from ..proxy.decide import Edge
from ..proxy.grants import Grants
from ..proxy.limits import EdgeLimits
from ..proxy.routes import RouteTable
from ..proxy.server import ProxyServer
from ..proxy.tls import EdgeTLS
from ..proxy.urls import PublicUrls
from ..runtime.images import ImageStore
from ..runtime.images.registry import RegistryConfig
from ..runtime.runc import RuncRuntime
from ..runtime_api.sessions import RuntimeSessions
from ..settings import ServerSettings
from ..store import Store
from ..store.sqlite import SqliteStore
from .app import build_app
from .context import AppContext, host_limits
from .reaper import run_reaper

log = logging.getLogger("sandport.server")


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def serve(settings: ServerSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvloop

    crashpoints.arm(settings.test_crash_at)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_fd = os.open(settings.data_dir / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(
            f"error: another sandport serve is using {settings.data_dir}"
        ) from None
    _raise_open_files_limit(settings.max_open_files)
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            tls = EdgeTLS(settings.tls_cert, settings.tls_key)
        except ValidationFailed as exc:
            raise SystemExit(f"error: {exc.message}") from None
    uvloop.run(_serve(settings, tls))


async def _serve(settings: ServerSettings, tls: EdgeTLS | None) -> None:
    store = SqliteStore(settings.data_dir / "sandport.db")
    store.open()
    try:
        images = ImageStore(
            settings.image_root, RegistryConfig.from_settings(settings),
            max_image_bytes=int(settings.image_max_gib * 2**30),
            max_total_bytes=(int(settings.images_max_gib * 2**30)
                             if settings.images_max_gib else None))
        images.prepare()
        runtime = RuncRuntime(settings, images)
        await runtime.prepare_host()
        await _ensure_api_key(settings, store)
        for name in settings.build_images:
            if not images.is_built(name):
                say(f"building image {name!r} (first start only; cached afterwards)")
                await images.build(name, say, only_if_missing=True)
        urls = PublicUrls.parse(settings.url_template)
        routes = RouteTable()
        secret = await store.secret("browser-session")
        grants = Grants(store, routes, urls, secret, settings.browser_url_ttl_s)
        activity = Activity()
        sandboxes = SandboxService(settings, store, runtime, images, routes, grants,
                                   activity=activity, caps=caps_from(settings))
        housekeeping = Housekeeping(sandboxes)
        counts = await housekeeping.reconcile()
        say("reconciled: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        limits = host_limits()
        envd_secret = await store.secret("envd-access")
        ctx = AppContext(settings, store, runtime, images, sandboxes, limits,
                         RuntimeSessions.for_server(settings.buffer_memory_mib, limits.mem_mib),
                         envd_secret=envd_secret)
        socket_path = settings.control_socket
        socket_path.parent.mkdir(mode=0o700, exist_ok=True)
        socket_path.unlink(missing_ok=True)
        config = uvicorn.Config(
            build_app(ctx), uds=str(socket_path), http="httptools", lifespan="off",
            access_log=False, log_level=settings.log_level, timeout_graceful_shutdown=5,
            proxy_headers=True, forwarded_allow_ips="*",  # only the edge proxy connects
        )
        api = _ApiServer(config)
        edge = Edge(urls, routes, str(socket_path), secret,
                    envd_token=functools.lru_cache(maxsize=4096)(
                        functools.partial(access_token, envd_secret)),
                    traffic_token=functools.lru_cache(maxsize=4096)(
                        functools.partial(traffic_token, envd_secret)))
        proxy = ProxyServer(edge, grants.redeem,
                            wake=sandboxes.wake, touch=activity.touch,
                            header_timeout_s=settings.header_timeout_s,
                            idle_timeout_s=settings.idle_timeout_s,
                            limits=EdgeLimits.from_settings(
                                settings.max_connections_per_address,
                                settings.trusted_proxies, settings.min_body_rate,
                                settings.min_body_rate_window_s,
                                resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
        activity.probes += [proxy.in_use, ctx.sessions.processes.any_running,
                            CpuProbe(runtime.cpu_seconds)]
        routes.watch(proxy.cut)
        routes.watch_revocations(proxy.cut_tokens)
        routes.watch(ctx.sessions.sandbox_gone)
        reaper = asyncio.ensure_future(run_reaper(housekeeping))
        listener: asyncio.Server | None = None
        try:
            listener = await _listen(proxy, settings, tls)
            if tls is not None:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload, tls)
            scheme = "http" if tls is None else "https"
            say(f"sandport serving on {scheme}://{settings.listen} "
                f"(data in {settings.data_dir})")
            say(f"sandbox ports at {urls.port_template('{id}')}")
            await api.serve()
        finally:
            if listener is not None:
                listener.close()
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            socket_path.unlink(missing_ok=True)
            await images.close()
            await runtime.release_host()
    finally:
        store.close()


def _raise_open_files_limit(cap: int | None) -> None:
    """Soft open-files limit up to the hard one (or ``cap``): every connection is a
    descriptor. The hard limit stays: sandboxes' rlimits are read from it (runtime/runc.py).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = 1 << 20 if hard == resource.RLIM_INFINITY else hard  # the kernel's nr_open
    wanted = ceiling if cap is None else min(ceiling, cap)
    if wanted != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class _ApiServer(uvicorn.Server):
    """uvicorn raises the stop signal again once it has shut down, which would end the
    process before sandport's own shutdown ran (the API socket, the host rules): the signal
    has done its work once uvicorn returns, so it is not raised again."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def _reload(tls: EdgeTLS) -> None:
    try:
        tls.reload()
    except ValidationFailed as exc:
        log.error("SIGHUP: the TLS certificate was not reloaded: %s", exc.message)
        return
    log.info("SIGHUP: reloaded the TLS certificate %s", tls.cert)


async def _listen(proxy: ProxyServer, settings: ServerSettings,
                  tls: EdgeTLS | None) -> asyncio.Server:
    try:
        return await proxy.listen(settings.host, settings.port,
                                  None if tls is None else tls.context)
    except OSError as exc:
        raise SystemExit(f"error: cannot listen on {settings.listen}: {exc.strerror}") from None


async def _ensure_api_key(settings: ServerSettings, store: Store) -> None:
    """The first key (made and printed on a first start), and the E2B-form twin of the
    server's keys (ids.e2b_twin), accepted wherever the key is."""
    team = await store.team_id()
    key_file = settings.data_dir / "api-key"
    twin_file = settings.data_dir / "api-key-e2b"
    if settings.api_key:
        await store.add_api_key(hash_secret(settings.api_key), team)
        await store.add_api_key(hash_secret(e2b_twin(settings.api_key)), team)
        return
    if await store.count_api_keys() > 0:
        if key_file.exists():
            key = key_file.read_text().strip()
            if key:  # (a server from before the twins gets its key's now)
                await store.add_api_key(hash_secret(e2b_twin(key)), team)
                _write_secret(twin_file, e2b_twin(key))
            say(f"API key: in {key_file} (its E2B form in {twin_file})")
        return
    key = new_api_key()
    await store.add_api_key(hash_secret(key), team)
    await store.add_api_key(hash_secret(e2b_twin(key)), team)
    _write_secret(key_file, key)
    _write_secret(twin_file, e2b_twin(key))
    say(f"API key: {key}")
    say(f"(also written to {key_file}; send it as the x-api-key header)")
    say(f"the same key in E2B's form: {e2b_twin(key)} (in {twin_file})")


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
