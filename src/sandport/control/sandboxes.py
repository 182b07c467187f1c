"""Sandbox services: create, get, list, stop, expire and reconcile. No HTTP types here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from .. import ids, tokens
from ..activity import Activity
from ..errors import (
    NotSupported,
    RuntimeFailure,
    SandboxNotFound,
    SandportError,
    ValidationFailed,
)
from ..ids import hash_secret
from ..models import ExposedPort, RuntimeTarget, SandboxInfo, iso, millis
from ..proxy.grants import Grants
from ..proxy.routes import RouteTable, SandboxRoute
from ..proxy.urls import PublicUrls
from ..runtime import EgressPolicy, Runtime, SandboxSpec
from ..runtime.images import ImageStore
from ..settings import ServerSettings
from ..store import RecordStatus, SandboxRecord, Store
from ..tokens import TokenSet
from . import lifecycle
from .requests import (
    MAX_TIMEOUT_MINUTES,
    CreateSandbox,
    ExposePort,
    ListSandboxes,
    NetworkPolicy,
    check_ingress,
    network_from_wire,
    parse_network_update,
)

log = logging.getLogger("sandport.control")


class SandboxLocks:
    """One lock per sandbox id, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, sandbox_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(sandbox_id) or (asyncio.Lock(), 0)
        self._locks[sandbox_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[sandbox_id]
            if users == 1:
                del self._locks[sandbox_id]
            else:
                self._locks[sandbox_id] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def egress_of(policy: NetworkPolicy) -> EgressPolicy:
    return EgressPolicy(policy.allow_internet_access, policy.allow_out, policy.deny_out)


def _known_id(sandbox_id: str) -> str:
    if not ids.is_sandbox_id(sandbox_id):
        raise SandboxNotFound(f"sandbox {sandbox_id} not found")
    return sandbox_id


class SandboxService:
    def __init__(
        self, settings: ServerSettings, store: Store, runtime: Runtime, images: ImageStore,
        routes: RouteTable, grants: Grants, clock: Callable[[], float] = time.time,
        activity: Activity | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self.images = images
        self.routes = routes
        self.grants = grants
        self.urls: PublicUrls = grants.urls
        self.clock = clock
        self.activity = activity or Activity()
        # One create/stop at a time per sandbox; different sandboxes never wait on each other.
        self._locks = SandboxLocks()
        self._waking: dict[str, asyncio.Future[bool]] = {}

    # -- views ------------------------------------------------------------------------
    def runtime_target(self, sandbox_id: str) -> RuntimeTarget:
        urls = self.urls
        return RuntimeTarget("regional_proxy", urls.runtime_host(sandbox_id),
                             urls.runtime_base_url(sandbox_id), urls.port_template(sandbox_id))

    def exposed(self, record: SandboxRecord) -> list[ExposedPort]:
        return [ExposedPort(port, auth, self.urls.url(record.id, port))
                for port, auth in sorted(record.exposed_ports.items())]

    def route_of(self, record: SandboxRecord, address: str) -> SandboxRoute:
        network = network_from_wire(record.network)
        return SandboxRoute(
            record.id, address, record.token, record.token_expires_at,
            dict(record.exposed_ports), network.open_ports,
            closed_ports=frozenset(record.closed_ports),
            allow_ports=None if network.allow_ports is None else frozenset(network.allow_ports),
            mask_host=network.mask_request_host, paused=record.status == "paused",
            auto_resume=record.auto_resume, older_tokens=record.older_tokens,
        )

    def identity_env(self, sandbox_id: str) -> dict[str, str]:
        """What a sandbox knows of itself: code inside can print its own preview link."""
        return {"SANDPORT_SANDBOX_ID": sandbox_id,
                "SANDPORT_PUBLIC_URL_TEMPLATE": self.urls.port_template(sandbox_id)}

    def _publish(self, record: SandboxRecord) -> None:
        address = self.runtime.address(record.id)
        if address is not None:
            self.routes.put(self.route_of(record, address))

    def to_info(self, record: SandboxRecord) -> SandboxInfo:
        return SandboxInfo(
            id=record.id,
            team_id=record.team_id,
            status=lifecycle.wire_status(record.status),
            image_name=record.image_name,
            created_at=iso(record.created_at) or "",
            updated_at=iso(record.updated_at) or "",
            start_time=millis(record.started_at),
            end_time=millis(record.ended_at),
            close_reason=record.close_reason,
            timeout_minutes=record.timeout_minutes,
            vcpus=record.vcpus,
            mem_mib=record.mem_mib,
            disk_size_mib=record.disk_size_mib,
            region=self.settings.region,
            session_url=f"{self.settings.base_url}/console/sandbox/{record.id}",
            runtime=self.runtime_target(record.id),
            exposed_ports=self.exposed(record),
            network=network_from_wire(record.network).to_wire(),
            token=record.token,
            token_expires_at=iso(record.token_expires_at),
            expires_at=iso(record.expires_at) if record.status in ("active", "paused") else None,
            on_timeout=record.on_timeout, auto_resume=record.auto_resume,
            idle_timeout_s=record.idle_timeout_s, on_idle=record.on_idle,
            suspended=record.suspended,
        )

    # -- verbs ------------------------------------------------------------------------
    async def create(self, team_id: str, request: CreateSandbox) -> SandboxRecord:
        self.images.check_name(request.image_name)
        await self.images.ensure(request.image_name, lambda line: log.info("%s", line))
        now = self.clock()
        first = tokens.issue(now, self.settings.token_ttl_s)
        record = SandboxRecord(
            id=ids.new_sandbox_id(), team_id=team_id, status="creating",
            image_name=request.image_name, vcpus=request.vcpus, mem_mib=request.mem_mib,
            disk_size_mib=request.disk_size_mib, timeout_minutes=request.timeout_minutes,
            token=first.token, token_expires_at=first.expires_at, created_at=now,
            updated_at=now, runtime=self.runtime.name, env=request.env,
            exposed_ports={p.port: p.auth for p in request.exposed_ports},
            network=request.network.to_wire(), on_timeout=request.on_timeout,
            auto_resume=request.auto_resume, idle_timeout_s=request.idle_timeout_s,
            on_idle=request.on_idle,
        )
        async with self._locks.hold(record.id):
            await self.store.insert_sandbox(record)
            spec = SandboxSpec(record.id, record.image_name, record.vcpus, record.mem_mib,
                               {**record.env, **self.identity_env(record.id)},
                               egress_of(request.network))
            try:
                await self.runtime.create(spec)
            except BaseException as exc:
                reason = exc.message if isinstance(exc, RuntimeFailure) else "create failed"
                await self._finish(record, "error", reason)
                raise
            started = self.clock()
            record = record.evolve(status="active", started_at=started, updated_at=started,
                                   expires_at=started + 60 * request.timeout_minutes,
                                   token_expires_at=started + self.settings.token_ttl_s)
            await self.store.update_sandbox(record)
            self._publish(record)
        log.info("sandbox %s created from %s", record.id, record.image_name)
        return record

    async def expose(self, team_id: str, sandbox_id: str,
                     request: ExposePort) -> ExposedPort:
        """Open a port's URL (again: idempotent, and ``auth`` may change)."""
        async with self._locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            lifecycle.ensure_running(record)
            check_ingress(network_from_wire(record.network), request.port)
            ports = {**record.exposed_ports, request.port: request.auth}
            closed = tuple(p for p in record.closed_ports if p != request.port)
            record = record.evolve(exposed_ports=ports, closed_ports=closed,
                                   updated_at=self.clock())
            await self.store.update_sandbox(record)
            self._publish(record)
        url = self.urls.url(sandbox_id, request.port)
        if not request.auth:
            return ExposedPort(request.port, False, url, url, None)
        browser_url, expires = await self.grants.mint(sandbox_id, request.port)
        return ExposedPort(request.port, True, url, browser_url, expires)

    async def unexpose(self, team_id: str, sandbox_id: str, port: int) -> None:
        """Close a port's URL; closing one that is not open is success. On an openPorts
        sandbox the port is remembered as closed: it does not fall back to open."""
        async with self._locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            lifecycle.ensure_running(record)
            ports = {p: a for p, a in record.exposed_ports.items() if p != port}
            closed = record.closed_ports
            if network_from_wire(record.network).open_ports and port not in closed:
                closed = tuple(sorted((*closed, port)))
            record = record.evolve(exposed_ports=ports, closed_ports=closed,
                                   updated_at=self.clock())
            await self.store.update_sandbox(record)
            self._publish(record)

    async def update_network(self, team_id: str, sandbox_id: str,
                             body: Any) -> SandboxRecord:
        """A new network policy for a running (or paused) sandbox: the fields given
        replace the current ones; egress rules change at once, in its namespace."""
        async with self._locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            if record.status not in ("active", "paused"):
                lifecycle.ensure_running(record)
            policy = parse_network_update(body, network_from_wire(record.network))
            for port in record.exposed_ports:
                check_ingress(policy, port)
            await self.runtime.set_egress(record.id, egress_of(policy))
            record = record.evolve(network=policy.to_wire(), updated_at=self.clock())
            await self.store.update_sandbox(record)
            self._publish(record)
        log.info("sandbox %s: network policy changed", sandbox_id)
        return record

    async def set_timeout(self, team_id: str, sandbox_id: str, minutes: int) -> SandboxRecord:
        """A new deadline, ``minutes`` from now (a sandbox paused by its timeout gets one
        too)."""
        if not 1 <= minutes <= MAX_TIMEOUT_MINUTES:
            raise ValidationFailed(f"timeoutMinutes must be between 1 and {MAX_TIMEOUT_MINUTES}")
        async with self._locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            if record.status not in ("active", "paused"):
                lifecycle.ensure_running(record)
            now = self.clock()
            record = record.evolve(timeout_minutes=minutes, expires_at=now + 60 * minutes,
                                   updated_at=now)
            await self.store.update_sandbox(record)
            self._publish(record)
        return record

    async def pause(self, team_id: str, sandbox_id: str) -> SandboxRecord:
        """Freeze the sandbox's processes (idempotent); its URLs answer 503 meanwhile."""
        return await self._freeze(team_id, sandbox_id, "paused")

    async def wake(self, sandbox_id: str) -> bool:
        """Resume a paused ``autoResume`` sandbox for a request to one of its URLs; the
        requests that arrive meanwhile share this one resume. True once it runs."""
        waking = self._waking.get(sandbox_id)
        if waking is None:
            waking = asyncio.ensure_future(self._wake(sandbox_id))
            self._waking[sandbox_id] = waking
            waking.add_done_callback(lambda _: self._waking.pop(sandbox_id, None))
        return await asyncio.shield(waking)

    async def _wake(self, sandbox_id: str) -> bool:
        record = await self.store.get_sandbox(sandbox_id)
        if record is None or not record.auto_resume:
            return False
        try:
            record = await self.resume(record.team_id, sandbox_id)
        except SandportError as exc:
            log.warning("sandbox %s: waking on a request failed: %s", sandbox_id, exc.message)
            return False
        log.info("sandbox %s woken by a request", sandbox_id)
        return record.status == "active"

    async def resume(self, team_id: str, sandbox_id: str) -> SandboxRecord:
        """Thaw a paused sandbox (idempotent): same URLs, processes where they were."""
        return await self._freeze(team_id, sandbox_id, "active")

    async def suspend(self, team_id: str, sandbox_id: str) -> SandboxRecord:
        """Suspend to disk (idempotent): a checkpoint takes its memory to disk and its
        processes end; status paused (``suspended``), URLs kept (503, or wake with
        autoResume); a resume restores it where it was. Connections to it and processes
        started through the API end. Where the host cannot, NotSupported says why."""
        async with self._locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            if record.suspended:
                return record
            if record.status not in ("active", "paused"):
                lifecycle.ensure_running(record)
            why = await self.runtime.suspend_support()
            if why is not None:
                raise NotSupported(why)
            self.routes.drop(record.id)  # cut its connections, end its API sessions
            try:
                await self.runtime.suspend(record.id)
            except BaseException:
                self._publish(record)
                raise
            record = record.evolve(status="paused", suspended=True, updated_at=self.clock())
            await self.store.update_sandbox(record)
            self._publish(record)
        log.info("sandbox %s suspended to disk", record.id)
        return record

    async def shown(self, team_id: str, sandbox_id: str) -> SandboxRecord:
        """The record for its detail: a running sandbox's current token is replaced first
        when little of its life is left, so a client that reads the detail (Hyperbrowser's
        SDK does, to renew) always gets one it can use; the old one keeps working."""
        record = await self.get(team_id, sandbox_id)
        if record.status in ("active", "paused") and \
                record.tokens.due(self.clock(), self.settings.token_ttl_s):
            return await self.refresh(team_id, sandbox_id)
        return record

    async def refresh(self, team_id: str, sandbox_id: str) -> SandboxRecord:
        """A new runtime token; the ones handed out before keep working until they expire."""
        return await self._retoken(team_id, sandbox_id,
                                   lambda t, now: t.rotated(now, self.settings.token_ttl_s))

    async def connect(self, team_id: str, sandbox_id: str) -> SandboxRecord:
        """Ready to use: resumed if paused, with a new runtime token."""
        record = await self.get(team_id, sandbox_id)
        if record.status == "paused":
            await self.resume(team_id, sandbox_id)
        return await self.refresh(team_id, sandbox_id)

    async def revoke(self, team_id: str, sandbox_id: str, token: str | None) -> SandboxRecord:
        """End one runtime token, or (None) all of them; a new current one is issued when
        the current one ends. Connections opened with them (runtime API streams and
        WebSockets, tunnels to auth ports) are cut."""
        ended: set[str] = set()

        def change(tokens: TokenSet, now: float) -> TokenSet:
            known = {hash_secret(tokens.token), *(h for h, _ in tokens.older)}
            if token is None:
                ended.update(known)
            elif tokens.knows(token):
                ended.add(hash_secret(token))
            return tokens.revoked(token, now, self.settings.token_ttl_s)

        record = await self._retoken(team_id, sandbox_id, change)
        self.routes.revoked(sandbox_id, frozenset(ended))
        return record

    async def _retoken(self, team_id: str, sandbox_id: str,
                       change: Callable[[tokens.TokenSet, float], tokens.TokenSet],
                       ) -> SandboxRecord:
        async with self._locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            if record.status not in ("active", "paused"):
                lifecycle.ensure_running(record)
            now = self.clock()
            record = record.with_tokens(change(record.tokens, now)).evolve(updated_at=now)
            await self.store.update_sandbox(record)
            self._publish(record)
        return record

    async def _freeze(self, team_id: str, sandbox_id: str,
                      target: RecordStatus) -> SandboxRecord:
        async with self._locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            if record.status == target:
                return record
            if record.status not in ("active", "paused"):
                lifecycle.ensure_running(record)
            if target == "paused":
                await self.runtime.pause(record.id)
            elif record.suspended:
                await self.runtime.restore(record.id)
            else:
                await self.runtime.resume(record.id)
            now = self.clock()
            record = record.evolve(status=target, updated_at=now, suspended=False)
            self.activity.touch(record.id)  # a resume starts a new idle period
            if target == "active" and record.expires_at is None:
                # Paused by its timeout: a resume starts a new timeoutMinutes period.
                record = record.evolve(expires_at=now + 60 * record.timeout_minutes)
            await self.store.update_sandbox(record)
            self._publish(record)
        log.info("sandbox %s %s", record.id, "paused" if target == "paused" else "resumed")
        return record

    async def get(self, team_id: str, sandbox_id: str) -> SandboxRecord:
        record = await self.store.get_sandbox(sandbox_id) if ids.is_sandbox_id(sandbox_id) else None
        if record is None or record.team_id != team_id:
            raise SandboxNotFound(f"sandbox {sandbox_id} not found")
        return record

    async def list(self, team_id: str, request: ListSandboxes) -> tuple[list[SandboxRecord], int]:
        offset = (request.page - 1) * request.limit
        return await self.store.list_sandboxes(team_id, request.statuses, offset, request.limit)

    async def stop(self, team_id: str, sandbox_id: str,
                   reason: str = lifecycle.CLOSE_REQUESTED) -> SandboxRecord:
        record = await self.get(team_id, sandbox_id)
        return await self._stop(record, reason)

    async def _stop(self, record: SandboxRecord, reason: str) -> SandboxRecord:
        async with self._locks.hold(record.id):
            current = await self.store.get_sandbox(record.id) or record
            if lifecycle.is_finished(current.status):
                return current  # stopping twice is success
            stopping = current.evolve(status="stopping", updated_at=self.clock())
            await self.store.update_sandbox(stopping)
            self.routes.drop(record.id)
            await self.runtime.destroy(record.id)
            done = await self._finish(stopping, "closed", reason)
            self.activity.forget(record.id)
        log.info("sandbox %s stopped: %s", record.id, reason)
        return done

    async def _finish(self, record: SandboxRecord, status: RecordStatus,
                      reason: str) -> SandboxRecord:
        now = self.clock()
        done = record.evolve(status=status, ended_at=now, updated_at=now,
                             close_reason=reason).with_tokens(record.tokens.ended(now))
        await self.store.update_sandbox(done)
        return done

    # -- housekeeping -----------------------------------------------------------------
    async def stop_expired(self) -> int:
        """Act on deadlines: stop, or pause (``onTimeout: "pause"``; a paused sandbox then
        has no deadline until it is given one again)."""
        due = await self.store.expired_sandboxes(self.clock())
        for record in due:
            if record.on_timeout == "pause":
                await self._pause_on_timeout(record)
            else:
                await self._stop(record, lifecycle.CLOSE_TIMEOUT)
        return len(due)

    async def act_on_idle(self) -> int:
        """Pause or stop (``onIdle``) running sandboxes with ``idleTimeoutSeconds`` that
        have shown no sign of life (see activity.py) for that long."""
        idle = [r for r in await self.store.idle_watched()
                if r.idle_timeout_s is not None
                and self.activity.idle_for(r.id) >= r.idle_timeout_s]
        for record in idle:
            if record.on_idle == "stop":
                await self._stop(record, lifecycle.CLOSE_IDLE)
                continue
            try:
                await self._freeze(record.team_id, record.id, "paused")
            except SandportError as exc:
                log.warning("sandbox %s: pausing when idle failed: %s", record.id, exc.message)
                continue
            log.info("sandbox %s paused: idle for %d s", record.id, record.idle_timeout_s)
        return len(idle)

    async def _pause_on_timeout(self, record: SandboxRecord) -> None:
        async with self._locks.hold(record.id):
            current = await self.store.get_sandbox(record.id) or record
            if current.status not in ("active", "paused"):
                return
            if current.status == "active":
                await self.runtime.pause(record.id)
            current = current.evolve(status="paused", expires_at=None, updated_at=self.clock())
            await self.store.update_sandbox(current)
            self._publish(current)
        log.info("sandbox %s paused: timeout", record.id)

    async def stop_exited(self) -> int:
        """Close active sandboxes whose container is gone (e.g. killed from outside)."""
        gone = [r for r in await self.store.sandboxes_in(("active", "paused"))
                if not self.runtime.is_running(r.id) and not r.suspended]
        for record in gone:
            await self._stop(record, lifecycle.CLOSE_EXITED)
        return len(gone)

    async def reconcile(self) -> dict[str, int]:
        """On boot: adopt running containers, close the lost, finish interrupted verbs,
        and remove runtime leftovers that no record owns."""
        counts = {"adopted": 0, "lost": 0, "interrupted": 0, "orphans": 0}
        for record in await self.store.sandboxes_in(("creating", "active", "paused",
                                                      "stopping")):
            if record.status in ("active", "paused") and (
                    self.runtime.is_running(record.id) or
                    (record.suspended and self.runtime.is_suspended(record.id))):
                counts["adopted"] += 1
                self._publish(record)
                continue
            await self.runtime.destroy(record.id)
            if record.status == "creating":
                counts["interrupted"] += 1
                await self._finish(record, "error", lifecycle.CLOSE_CREATE_INTERRUPTED)
            elif record.status == "stopping":
                counts["interrupted"] += 1
                await self._finish(record, "closed", record.close_reason or
                                   lifecycle.CLOSE_REQUESTED)
            else:
                counts["lost"] += 1
                await self._finish(record, "closed", lifecycle.CLOSE_LOST)
        for sandbox_id in self.runtime.sandbox_ids():
            owner = await self.store.get_sandbox(sandbox_id)
            if owner is None or lifecycle.is_finished(owner.status):
                counts["orphans"] += 1
                await self.runtime.destroy(sandbox_id)
        return counts
