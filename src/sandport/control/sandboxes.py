"""Sandbox services: create, get, list, stop, expire and reconcile. No HTTP types here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from .. import ids, tokens
from ..activity import Activity
from ..crashpoints import crash_point
from ..errors import (
    Conflict,
    ImageNotFound,
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
from ..runtime._files import remove_tree
from ..runtime.images import ImageStore
from ..runtime.images.layerstore import ImageRecord, snapshot_id
from ..runtime.images.reference import check_local_name
from ..settings import ServerSettings
from ..store import RecordStatus, SandboxRecord, Store
from ..tokens import TokenSet
from . import lifecycle
from .admission import Admission, Ask, HostProbe
from .netcaps import NetworkCaps
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


# The crash point between a verb's runtime step and the record that says it is done.
_DONE_POINT = {"pause": "pause.after_freeze", "resume": "resume.after_thaw",
               "restore": "restore.after_restore"}


def egress_of(policy: NetworkPolicy, caps: NetworkCaps | None = None) -> EgressPolicy:
    """The runtime's policy. A resolver goes with the internet, with names (it resolves
    only those, then), or with allowOut alone where the operator lets sandboxes onto the
    internet at all (names resolved out of a capped sandbox would be a way out of the
    cap)."""
    caps = caps or NetworkCaps()
    return EgressPolicy(policy.allow_internet_access, policy.allow_out, policy.deny_out,
                        caps.never,
                        policy.allow_internet_access or caps.internet or bool(policy.allow_names),
                        policy.allow_names, caps.internet)


def _known_id(sandbox_id: str) -> str:
    if not ids.is_sandbox_id(sandbox_id):
        raise SandboxNotFound(f"sandbox {sandbox_id} not found")
    return sandbox_id


class SandboxService:
    def __init__(
        self, settings: ServerSettings, store: Store, runtime: Runtime, images: ImageStore,
        routes: RouteTable, grants: Grants, clock: Callable[[], float] = time.time,
        activity: Activity | None = None, caps: NetworkCaps | None = None,
    ) -> None:
        self.settings = settings
        self.caps = caps or NetworkCaps()  # the operator's (control/netcaps.py)
        self.store = store
        self.runtime = runtime
        self.images = images
        self.routes = routes
        self.grants = grants
        self.urls: PublicUrls = grants.urls
        self.clock = clock
        self.activity = activity or Activity()
        # One create/stop at a time per sandbox; different sandboxes never wait on each other.
        self.locks = SandboxLocks()
        self._waking: dict[str, asyncio.Future[bool]] = {}
        self.admission = Admission(store, HostProbe(settings))  # host-wide room (503)

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
            open_ports_auth=network.open_ports_auth,
            mask_host=network.mask_request_host, paused=record.status == "paused",
            auto_resume=record.auto_resume, older_tokens=record.older_tokens,
            port_generation=record.port_generation,
        )

    def identity_env(self, sandbox_id: str) -> dict[str, str]:
        """What a sandbox knows of itself: code inside can print its own preview link."""
        return {"SANDPORT_SANDBOX_ID": sandbox_id,
                "SANDPORT_PUBLIC_URL_TEMPLATE": self.urls.port_template(sandbox_id)}

    def publish(self, record: SandboxRecord) -> None:
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
            files_kept_until=iso(record.retain_until) if record.retain_until else None,
            pids_limit=record.pids_limit,
        )

    def _check_snapshot(self, team_id: str, name: str, wanted_id: str | None) -> None:
        found = self.images.layers.get(team_id, name)
        if found is None or found.source != "snapshot" or (
                wanted_id is not None and snapshot_id(found) != wanted_id):
            raise ImageNotFound(f"snapshot {name!r}" + (f" with id {wanted_id!r}" if wanted_id
                                                        else "") + " does not exist")

    # -- verbs ------------------------------------------------------------------------
    async def create(self, team_id: str, request: CreateSandbox) -> SandboxRecord:
        await self.admission.admit(Ask(request.mem_mib, request.disk_size_mib))  # or 503
        if request.snapshot is not None:
            self._check_snapshot(team_id, *request.snapshot)
        network = self.caps.apply(request.network, request.internet_asked)  # or 403
        held = await self.images.ensure(team_id, request.image_name, _log_pull)
        image = self.images.image(held)
        self.images.used(held)
        now = self.clock()
        first = tokens.issue(now, self.settings.token_ttl_s)
        record = SandboxRecord(
            id=ids.new_sandbox_id(), team_id=team_id, status="creating",
            image_name=request.image_name, vcpus=request.vcpus, mem_mib=request.mem_mib,
            disk_size_mib=request.disk_size_mib, timeout_minutes=request.timeout_minutes,
            token=first.token, token_expires_at=first.expires_at, created_at=now,
            updated_at=now, runtime=self.runtime.name, env=request.env,
            exposed_ports={p.port: p.auth for p in request.exposed_ports},
            network=network.to_wire(), on_timeout=request.on_timeout,
            auto_resume=request.auto_resume, idle_timeout_s=request.idle_timeout_s,
            on_idle=request.on_idle, pids_limit=request.pids_limit, metadata=request.metadata,
        )
        async with self.locks.hold(record.id):
            await self.store.insert_sandbox(record)
            crash_point("create.after_insert")
            spec = SandboxSpec(record.id, image, record.vcpus, record.mem_mib,
                               {**record.env, **self.identity_env(record.id)},
                               egress_of(network, self.caps), pids_limit=record.pids_limit,
                               disk_mib=record.disk_size_mib)
            try:
                await self.runtime.create(spec)
            except BaseException as exc:
                reason = exc.message if isinstance(exc, RuntimeFailure) else "create failed"
                await self.finish(record, "error", reason)
                raise
            crash_point("create.after_start")
            started = self.clock()
            record = record.evolve(status="active", started_at=started, updated_at=started,
                                   expires_at=started + (request.timeout_s or
                                                         60 * request.timeout_minutes),
                                   token_expires_at=started + self.settings.token_ttl_s)
            await self.store.update_sandbox(record)
            self.publish(record)
        log.info("sandbox %s created from %s", record.id, record.image_name)
        return record

    async def expose(self, team_id: str, sandbox_id: str,
                     request: ExposePort) -> ExposedPort:
        """Open a port's URL (again: idempotent, and ``auth`` may change)."""
        async with self.locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            lifecycle.ensure_running(record)
            check_ingress(network_from_wire(record.network), request.port)
            ports = {**record.exposed_ports, request.port: request.auth}
            closed = tuple(p for p in record.closed_ports if p != request.port)
            # Public made private again: the browser cookies from before open nothing.
            private_again = request.auth and record.exposed_ports.get(request.port) is False
            record = record.evolve(exposed_ports=ports, closed_ports=closed,
                                   port_generation=record.port_generation + int(private_again),
                                   updated_at=self.clock())
            await self.store.update_sandbox(record)
            self.publish(record)
        url = self.urls.url(sandbox_id, request.port)
        if not request.auth:
            return ExposedPort(request.port, False, url, url, None)
        browser_url, expires = await self.grants.mint(sandbox_id, request.port)
        return ExposedPort(request.port, True, url, browser_url, expires)

    async def unexpose(self, team_id: str, sandbox_id: str, port: int) -> None:
        """Close a port's URL; closing one that is not open is success. On an openPorts
        sandbox the port is remembered as closed: it does not fall back to open."""
        async with self.locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            lifecycle.ensure_running(record)
            ports = {p: a for p, a in record.exposed_ports.items() if p != port}
            closed = record.closed_ports
            if network_from_wire(record.network).open_ports and port not in closed:
                closed = tuple(sorted((*closed, port)))
            # Its browser cookies end (all the sandbox's: a cookie names one generation).
            was_exposed = port in record.exposed_ports
            record = record.evolve(exposed_ports=ports, closed_ports=closed,
                                   port_generation=record.port_generation + int(was_exposed),
                                   updated_at=self.clock())
            await self.store.update_sandbox(record)
            self.publish(record)

    async def update_network(self, team_id: str, sandbox_id: str,
                             body: Any) -> SandboxRecord:
        """A new network policy for a running (or paused) sandbox: the fields given
        replace the current ones; egress rules change at once, in its namespace."""
        record = await self.get(team_id, sandbox_id)
        current = network_from_wire(record.network)
        policy = parse_network_update(body, current)
        asked = body.get("allowInternetAccess") if isinstance(body, dict) else None
        if not isinstance(asked, bool):  # not changed: what it asked for before
            asked = current.allow_internet_access or current.internet_capped
        return await self.set_network(team_id, sandbox_id, policy, asked)

    async def set_network(self, team_id: str, sandbox_id: str, policy: NetworkPolicy,
                          asked: bool | None) -> SandboxRecord:
        """``policy`` for a running (or paused) sandbox, under the caps (``asked``: whether
        it asks for the internet; None: the server's default)."""
        async with self.locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            if record.status not in ("active", "paused"):
                lifecycle.ensure_running(record)
            policy = self.caps.apply(policy, asked)
            for port in record.exposed_ports:
                check_ingress(policy, port)
            await self.runtime.set_egress(record.id, egress_of(policy, self.caps))
            record = record.evolve(network=policy.to_wire(), updated_at=self.clock())
            await self.store.update_sandbox(record)
            self.publish(record)
        log.info("sandbox %s: network policy changed", sandbox_id)
        return record

    async def reapply_caps(self, record: SandboxRecord) -> SandboxRecord:
        """On boot, for a sandbox that kept running: its policy under today's caps (the
        server may have been started with others), in its filter and its record. The
        caller holds its lock."""
        current = network_from_wire(record.network)
        policy = self.caps.reapply(current)
        await self.runtime.set_egress(record.id, egress_of(policy, self.caps))
        if policy != current:
            log.info("sandbox %s: its network policy narrowed to this server's caps",
                     record.id)
            record = record.evolve(network=policy.to_wire())
        return record

    async def set_timeout(self, team_id: str, sandbox_id: str, minutes: int) -> SandboxRecord:
        """A new deadline, ``minutes`` from now (a sandbox paused by its timeout gets one
        too)."""
        if not 1 <= minutes <= MAX_TIMEOUT_MINUTES:
            raise ValidationFailed(f"timeoutMinutes must be between 1 and {MAX_TIMEOUT_MINUTES}")
        return await self.set_deadline(team_id, sandbox_id, 60 * minutes)

    async def set_deadline(self, team_id: str, sandbox_id: str, seconds: int,
                           extend_only: bool = False) -> SandboxRecord:
        """The deadline ``seconds`` from now (with ``extend_only``, never earlier than it
        was); ``timeout_minutes`` rounds it up."""
        async with self.locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            if record.status not in ("active", "paused"):
                lifecycle.ensure_running(record)
            now = self.clock()
            deadline = now + seconds
            if extend_only and record.expires_at is not None:
                deadline = max(deadline, record.expires_at)
            record = record.evolve(timeout_minutes=max(1, -(-round(deadline - now) // 60)),
                                   expires_at=deadline, updated_at=now)
            await self.store.update_sandbox(record)
            self.publish(record)
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
        async with self.locks.hold(_known_id(sandbox_id)):
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
                await self._under_intent(record, "suspend", self.runtime.suspend)
            finally:
                self.publish(record)
            crash_point("suspend.after_checkpoint")
            record = record.evolve(status="paused", suspended=True, intent=None,
                                   updated_at=self.clock())
            await self.store.update_sandbox(record)
            self.publish(record)
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
        WebSockets, tunnels to auth ports) are cut. Revoking all of them also ends the
        browser cookies of its auth ports and the browser links not yet used (the port
        generation moves on, first: no moment where the cookies outlive the tokens)."""
        if token is None:
            async with self.locks.hold(_known_id(sandbox_id)):
                record = await self.get(team_id, sandbox_id)
                if record.status not in ("active", "paused"):
                    lifecycle.ensure_running(record)
                record = record.evolve(port_generation=record.port_generation + 1)
                await self.store.update_sandbox(record)
                self.publish(record)
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
        async with self.locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            if record.status not in ("active", "paused"):
                lifecycle.ensure_running(record)
            now = self.clock()
            record = record.with_tokens(change(record.tokens, now)).evolve(updated_at=now)
            await self.store.update_sandbox(record)
            self.publish(record)
        return record

    async def snapshot(self, team_id: str, sandbox_id: str, name: str,
                       commands: dict[str, str] | None = None) -> ImageRecord:
        """An image ``name`` of the caller's team from the sandbox's files as they are now
        (its changes become a layer over its image). It goes on running: frozen only for
        the copy of its changes, its status stays what it was."""
        name = check_local_name(name)
        async with self.locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            if record.status not in ("active", "paused") or record.suspended:
                raise Conflict(f"sandbox {record.id} is "
                               f"{'suspended' if record.suspended else record.status}: only "
                               "a running or paused sandbox can be snapshot")
            staging = self.images.layers.staging("snapshot-copy")
            try:
                source = await self.runtime.copy_changes(record.id, staging / "upper",
                                                         self.images.max_image_bytes)
            except BaseException:
                await asyncio.to_thread(remove_tree, staging)
                raise
        try:
            image = await asyncio.to_thread(self.images.snapshot, record.team_id, name,
                                            source.image_digest, list(source.diff_ids),
                                            staging / "upper", commands or {})
        finally:
            await asyncio.to_thread(remove_tree, staging)
        log.info("sandbox %s: snapshot %s (%s), frozen %.0f ms", record.id, name,
                 image.digest, source.frozen_s * 1000)
        return image

    async def _freeze(self, team_id: str, sandbox_id: str,
                      target: RecordStatus) -> SandboxRecord:
        async with self.locks.hold(_known_id(sandbox_id)):
            record = await self.get(team_id, sandbox_id)
            if record.status not in ("active", "paused"):
                lifecycle.ensure_running(record)
            record = await self.freeze_locked(record, target)
        log.info("sandbox %s %s", record.id, "paused" if target == "paused" else "resumed")
        return record

    async def freeze_locked(self, record: SandboxRecord,
                             target: RecordStatus) -> SandboxRecord:
        """Pause or resume (a restore, if it is on disk) under the sandbox's lock. The
        runtime looks at the freezer itself, so asking again what the record already says
        still mends a sandbox a crash left frozen or thawed against it."""
        if target == "paused" and record.suspended:
            return record
        if target == "paused":
            verb, step = "pause", self.runtime.pause
        elif record.suspended:
            verb, step = "restore", self.runtime.restore
        else:
            verb, step = "resume", self.runtime.resume
        if record.status == target:
            await step(record.id)  # idempotent in the runtime; the record stays as it is
            return record
        if verb == "restore":  # its memory comes back: it counts again (or 503)
            await self.admission.admit(Ask(record.mem_mib, 0))
        await self._under_intent(record, verb, step)
        crash_point(_DONE_POINT[verb])
        now = self.clock()
        record = record.evolve(status=target, updated_at=now, suspended=False, intent=None)
        self.activity.touch(record.id)  # a resume starts a new idle period
        if target == "active" and record.expires_at is None:
            # Paused by its timeout: a resume starts a new timeoutMinutes period.
            record = record.evolve(expires_at=now + 60 * record.timeout_minutes)
        await self.store.update_sandbox(record)
        self.publish(record)
        return record

    async def _under_intent(self, record: SandboxRecord, verb: str,
                            step: Callable[[str], Awaitable[None]]) -> None:
        """Run a runtime step of ``verb`` with the intent in the store first, so that a
        crash in the middle is finished or undone on the next boot (housekeeping.py);
        a step that fails takes the intent back."""
        await self.store.update_sandbox(record.evolve(intent=verb))
        crash_point(f"{verb}.after_intent")
        try:
            await step(record.id)
        except BaseException:
            await self.store.update_sandbox(record.evolve(intent=None))
            raise

    async def get(self, team_id: str, sandbox_id: str) -> SandboxRecord:
        record = await self.store.get_sandbox(sandbox_id) if ids.is_sandbox_id(sandbox_id) else None
        if record is None or record.team_id != team_id:
            raise SandboxNotFound(f"sandbox {sandbox_id} not found")
        return record

    async def page(self, team_id: str, statuses: tuple[str, ...], metadata: dict[str, str],
                   after: tuple[float, str] | None, limit: int, image: str | None = None,
                   started_after: float | None = None) -> list[SandboxRecord]:
        """Newest first, after a page's last (created_at, id): keyset paging."""
        return await self.store.sandboxes_after(team_id, statuses, metadata, after, limit,
                                                image, started_after)

    async def list(self, team_id: str, request: ListSandboxes) -> tuple[list[SandboxRecord], int]:
        offset = (request.page - 1) * request.limit
        return await self.store.list_sandboxes(team_id, request.statuses, offset, request.limit)

    async def stop(self, team_id: str, sandbox_id: str,
                   reason: str = lifecycle.CLOSE_REQUESTED) -> SandboxRecord:
        record = await self.get(team_id, sandbox_id)
        return await self._stop(record, reason)

    async def _stop(self, record: SandboxRecord, reason: str) -> SandboxRecord:
        async with self.locks.hold(record.id):
            return await self.end_locked(record, reason)

    async def end_locked(self, record: SandboxRecord, reason: str, *,
                         keep_files: bool = False) -> SandboxRecord:
        """Close the sandbox (under its lock): stopped, timed out, or (``keep_files``)
        found dead without anyone asking, when its files stay for ``retain_ended_h``."""
        current = await self.store.get_sandbox(record.id) or record
        if lifecycle.is_finished(current.status):
            return current  # stopping twice is success
        # What the end is and whether the files stay, so that a boot after a crash in the
        # middle finishes it the same way (housekeeping.reconcile).
        stopping = current.evolve(status="stopping", close_reason=reason,
                                  retain_until=self.keep_files_until() if keep_files else None,
                                  updated_at=self.clock())
        await self.store.update_sandbox(stopping)
        crash_point("stop.after_mark")
        self.routes.drop(record.id)
        await self.runtime.destroy(record.id, keep_files=keep_files)
        done = await self.finish(stopping, "closed", reason, keep_files=keep_files)
        self.activity.forget(record.id)
        log.info("sandbox %s stopped: %s", record.id, reason)
        return done

    def keep_files_until(self) -> float:
        return self.clock() + 3600 * self.settings.retain_ended_h

    async def finish(self, record: SandboxRecord, status: RecordStatus, reason: str, *,
                     keep_files: bool = False) -> SandboxRecord:
        now = self.clock()
        kept = (record.retain_until or self.keep_files_until()) if keep_files else None
        done = record.evolve(status=status, ended_at=now, updated_at=now, close_reason=reason,
                             intent=None, retain_until=kept,
                             ).with_tokens(record.tokens.ended(now))
        await self.store.update_sandbox(done)
        return done


def _log_pull(event: dict[str, Any]) -> None:
    """A create's pull or build, in the server log: its steps, not every megabyte."""
    if "progress" in event:
        log.info("%s", event["progress"])
    elif event.get("status") in ("resolving", "pulling"):
        log.info("image %s: %s", event.get("ref"), event["status"])
