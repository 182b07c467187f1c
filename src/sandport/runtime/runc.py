"""The runc runtime: overlay rootfs + netns/veth + OCI bundle, driven through runc's CLI.

Per sandbox, under ``<data_dir>/sandboxes/<id>/``: ``runtime.json`` (what destroy needs to
undo, written first), ``upper``/``work``/``rootfs`` (the overlay), the generated
``/etc/hosts``, ``resolv.conf`` and ``hostname``, and ``config.json`` for runc. runc keeps
its own state under ``<data_dir>/runc``. Containers run detached: they outlive a server
restart, and the server, as child subreaper, reaps their inits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from ..crashpoints import crash_point
from ..errors import (
    Conflict,
    ImageNotFound,
    ImageRejected,
    InsufficientCapacity,
    NotSupported,
    RuntimeFailure,
    SandboxNotRunning,
    SandportError,
)
from ..models import ExecResult
from ..settings import ServerSettings
from . import (
    CommandRequest,
    ExecRequest,
    RealState,
    SandboxSpec,
    SnapshotSource,
    criu,
    dns,
    gate,
    network,
    oci,
    seccomp,
)
from ._files import read_json, remove_tree, write_json
from .agent.build import ensure_agent
from .agent.channel import CommandChannel, CommandListener, CommandSpec, start_command
from .agent.client import run_command
from .cgroups import freezer_state, remove_cgroups, thaw
from .disks import SandboxDisks
from .images import Image, ImageStore
from .inflight import run_recorded, settle
from .mounts import mount_overlay, unmount, unmount_below
from .network import EgressPolicy, Lease, SlotRegistry, lease_for
from .pidcap import cap_pids, host_pids_total
from .refusals import Refusals

log = logging.getLogger("sandport.runtime")

AGENT_PROTOCOL = 2  # what this server speaks to the agents of the sandboxes it creates
OUTPUT_CAP = 16 * 1024 * 1024  # per stream; the rest is read and dropped
PR_SET_CHILD_SUBREAPER = 36


SNAPSHOT_COPY_TIMEOUT_S = 600.0  # a snapshot's copy: the sandbox is frozen meanwhile


async def _du_bytes(path: Path) -> int:
    """Bytes the tree's files hold, sparse ones at their full length, as a layer made of
    them will (du --apparent-size: one pass of stats, no reads)."""
    proc = await asyncio.create_subprocess_exec(
        "du", "-s", "-x", "-B1", "--apparent-size", "--", str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    try:
        return int(out.split()[0])
    except (IndexError, ValueError):
        raise RuntimeFailure("the sandbox's changes could not be measured") from None


async def _copy_tree(source: Path, dest: Path, timeout_s: float) -> None:
    """``cp -a`` (it keeps whiteouts, trusted.overlay.* attributes, owners, hard links),
    killed past ``timeout_s``; errors say nothing of host paths."""
    proc = await asyncio.create_subprocess_exec(
        "cp", "-a", "--", str(source), str(dest), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise RuntimeFailure(f"copying the sandbox's changes took over {timeout_s:g} s"
                             ) from None
    if proc.returncode != 0:
        log.error("snapshot copy of %s failed: %s", source, err.decode(errors="replace"))
        raise RuntimeFailure("the sandbox's changes could not be copied")


class RuncRuntime:
    name = "runc"

    def __init__(self, settings: ServerSettings, images: ImageStore) -> None:
        self.settings = settings
        self.images = images
        self.state_root = settings.data_dir / "runc"
        self.bundles = settings.data_dir / "sandboxes"
        self.retained = settings.data_dir / "retained"  # files of sandboxes that ended
        self.disks = SandboxDisks(settings.data_dir / "disks", settings.disk_limits)
        self.slots = SlotRegistry(settings.subnet)
        self._copying: dict[str, asyncio.Event] = {}  # snapshots' copies under way (frozen)
        self.host_rules = network.HostRules(settings.subnet)
        self.resolvers = dns.Resolvers(settings.dns_upstreams, settings.subnet)
        self.gates = gate.Gates(settings.subnet, self.resolvers.upstreams)
        self.netlogs: dict[str, gate.NetworkLog] = {}
        self.refusals = Refusals()
        self.nofile = min(1 << 20, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        self._seccomp: dict[str, Any] | None = None
        self._criu: tuple[str | None, str | None] | None = None  # (binary, why not)
        self.agent_binary = settings.data_dir / "bin" / "sandport-agent"

    # -- host -------------------------------------------------------------------------
    async def prepare_host(self) -> None:
        for tool in (self.settings.runc, "ip", "iptables", "conntrack"):
            if shutil.which(tool) is None:
                raise RuntimeFailure(f"{tool} is not installed (see the README's setup command)")
        if not self.settings.init_binary.exists():
            raise RuntimeFailure(
                f"init binary {self.settings.init_binary} is missing (apt install tini)"
            )
        try:
            profile = json.loads(self.settings.seccomp_source.read_text())
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(
                f"cannot read seccomp profile {self.settings.seccomp_source}: {exc}"
                " (apt install golang-github-containers-common)"
            ) from None
        self._seccomp = seccomp.to_oci(profile, caps=oci.DEFAULT_CAPS)
        self.agent_binary = await asyncio.to_thread(ensure_agent, self.settings.data_dir / "bin")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise RuntimeFailure("cannot become child subreaper")
        self.state_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.bundles.mkdir(parents=True, exist_ok=True, mode=0o700)
        named = {(str(m["image"]), str(m["imageVersion"])) for m in
                 (read_json(p) for p in self.bundles.glob("*/runtime.json"))
                 if m.get("imageVersion") and m.get("image")}  # made by an older server
        await asyncio.to_thread(self.images.forget_old_trees, named)
        await self.disks.prepare()
        await self.host_rules.hold()
        # All sandboxes together get at most this many processes and threads: the kernel
        # enforces it on their parent cgroup, whatever their own limits add up to.
        total = host_pids_total(self.settings.max_pids_total)
        try:
            cap_pids(self.settings.cgroup_parent, total)
        except OSError as exc:
            raise RuntimeFailure(f"cannot cap the sandboxes' processes at {total} on their "
                                 f"parent cgroup: {exc.strerror}") from None
        for meta_path in self.bundles.glob("*/runtime.json"):  # sandboxes a crash left
            meta = read_json(meta_path)
            egress = EgressPolicy.from_json(meta.get("egress"))
            if egress is not None:
                await self._serve_names(meta_path.parent.name, egress)
            elif meta.get("dns"):  # made by a server before the name gate
                await self._serve_names(meta_path.parent.name, EgressPolicy(True))

    async def release_host(self) -> None:
        await self.resolvers.stop_all()
        await self.gates.stop_all()
        self.refusals.stop_all()
        await self.disks.close()
        if await self.host_rules.release():
            log.info("no sandbox and no other server left: host rules removed")

    # -- create -----------------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> None:
        image = spec.image
        bundle = self.bundles / spec.sandbox_id
        bundle.mkdir(mode=0o700)
        try:
            self._hold_layers(spec.sandbox_id, image)
            slot = self.slots.claim(spec.sandbox_id)
            lease = lease_for(self.settings.subnet, slot, spec.sandbox_id)
            container = self._container_spec(spec, bundle, lease, image.env, image.workdir)
            write_json(bundle / "runtime.json", {
                "slot": slot, "image": image.name, "imageDigest": image.digest,
                "layers": list(image.diff_ids), "workdir": image.workdir,
                "user": image.user, "sandboxIp": lease.sandbox_ip,
                "agentProtocol": AGENT_PROTOCOL,
                "env": oci.process_env(container), "dns": spec.egress.serves_dns,
            })
            for sub in ("upper", "work", "rootfs"):
                (bundle / sub).mkdir()
            await self.disks.attach(spec.sandbox_id, bundle, spec.disk_mib)
            mount_overlay(image.lowers, bundle / "upper", bundle / "work", bundle / "rootfs")
            await network.create_network(lease)
            self._write_bundle(container, lease, spec.egress.serves_dns)
            await self._serve_names(spec.sandbox_id, spec.egress)
            # The filter is in place before create returns, so before any command runs;
            # the container starts meanwhile (its init runs only the agent).
            done = await asyncio.gather(
                network.apply_egress(lease, spec.egress, self.settings.subnet),
                self._runc_run(spec.sandbox_id, bundle), return_exceptions=True)
            for outcome in done:
                if isinstance(outcome, BaseException):
                    raise outcome
        except BaseException as exc:
            await asyncio.shield(self.destroy(spec.sandbox_id))
            if isinstance(exc, OSError):
                log.error("sandbox %s: create failed: %s", spec.sandbox_id, exc)
                raise RuntimeFailure("the sandbox could not be created") from None
            raise

    def _hold_layers(self, sandbox_id: str, image: Image) -> None:
        """Lease the image's layers to the sandbox: it keeps them until it is destroyed,
        whatever happens to its image meanwhile (a delete, a newer pull of its tag)."""
        layers = self.images.layers
        with layers.writing():
            if not all(layers.has_layer(d) for d in image.diff_ids):
                raise ImageNotFound(f"image {image.name!r} was removed while the sandbox was "
                                    "being created; create it again")
            layers.lease(sandbox_id, list(image.diff_ids), self.bundles / sandbox_id)

    def _container_spec(
        self, spec: SandboxSpec, bundle: Path, lease: Lease, image_env: tuple[str, ...],
        workdir: str,
    ) -> oci.ContainerSpec:
        return oci.ContainerSpec(
            sandbox_id=spec.sandbox_id, rootfs=bundle / "rootfs", hostname=spec.sandbox_id,
            netns_path=lease.netns_path, hosts_file=bundle / "hosts",
            resolv_file=bundle / "resolv.conf", hostname_file=bundle / "hostname",
            init_binary=self.settings.init_binary, agent_binary=self.agent_binary,
            agent_peer=lease.host_ip, vcpus=spec.vcpus, mem_mib=spec.mem_mib,
            pids_limit=spec.pids_limit, nofile_limit=self.nofile, image_env=image_env,
            cgroup_parent=self.settings.cgroup_parent,
            env=spec.env, workdir=workdir,
        )

    def _write_bundle(self, container: oci.ContainerSpec, lease: Lease, lets_out: bool
                      ) -> None:
        bundle = container.rootfs.parent
        (bundle / "hostname").write_text(container.hostname + "\n")
        (bundle / "hosts").write_text(
            "127.0.0.1\tlocalhost\n"
            f"{lease.sandbox_ip}\t{container.hostname}\n"
            f"{lease.host_ip}\thost.sandport.internal\n"
        )
        # Its resolver if it may go out; else one that fails at once instead of making
        # every lookup wait for a timeout.
        (bundle / "resolv.conf").write_text(dns.resolv_conf(lease.host_ip if lets_out
                                                            else None))
        write_json(bundle / "config.json", oci.container_config(container, self._seccomp))

    async def _runc_run(self, sandbox_id: str, bundle: Path) -> None:
        # The detached container inherits runc's stdio: /dev/null, never a host file (the
        # sandbox could write it through /proc/1/fd/2) nor a pipe (never at EOF). runc's
        # own complaints go to its log file.
        log_file = bundle / "runc.log"
        code = await run_recorded(bundle, "create", [
            self.settings.runc, "--root", str(self.state_root), "--log", str(log_file),
            "run", "-d", "--bundle", str(bundle), sandbox_id])
        if code != 0:
            try:
                detail = log_file.read_text(errors="replace").strip()[-2000:]
            except OSError:
                detail = f"exit status {code}"
            log.error("sandbox %s: runc run failed: %s", sandbox_id, detail)
            raise RuntimeFailure("the sandbox's container failed to start")

    def _runc(self, *args: str) -> list[str]:
        return [self.settings.runc, "--root", str(self.state_root), *args]

    # -- exec -------------------------------------------------------------------------
    def agent_protocol(self, sandbox_id: str) -> int:
        version = read_json(self.bundles / sandbox_id / "runtime.json").get("agentProtocol", 1)
        return version if isinstance(version, int) else 1

    async def exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        """Run ``/bin/sh -c command`` through the sandbox's agent, protocol v1: the exec of
        sandboxes made by a sandport before v2 (see runtime_api/exec)."""
        await self._ensure_thawed(sandbox_id)
        meta = read_json(self.bundles / sandbox_id / "runtime.json")
        return await run_command(
            meta["sandboxIp"], request.cwd or meta.get("workdir") or "/",
            ["/bin/sh", "-c", request.command], oci.merge_env(tuple(meta["env"]), request.env),
            request.timeout_s, OUTPUT_CAP,
        )

    async def start_command(self, sandbox_id: str, request: CommandRequest,
                            listener: CommandListener) -> CommandChannel:
        await self._ensure_thawed(sandbox_id)
        meta = read_json(self.bundles / sandbox_id / "runtime.json")
        if meta.get("agentProtocol", 1) < AGENT_PROTOCOL:
            raise Conflict(f"sandbox {sandbox_id} was created by an older sandport: it can "
                           "exec, but processes and terminals need a new sandbox")
        spec = CommandSpec(
            argv=request.argv, env=oci.merge_env(tuple(meta["env"]), request.env),
            cwd=request.cwd or meta.get("workdir") or "/", stdin=request.stdin, pty=request.pty,
            uid=request.uid, gid=request.gid, groups=request.groups,
        )
        return await start_command(meta["sandboxIp"], spec, listener)

    async def _ensure_thawed(self, sandbox_id: str) -> None:
        """The agent of a frozen sandbox cannot answer: say so at once instead of hanging
        (the store may not know yet, e.g. while a pause is being finished after a crash).
        Frozen for a snapshot's copy, it is thawed in a moment: wait for that."""
        copying = self._copying.get(sandbox_id)
        if copying is not None:
            await copying.wait()
        if not self.is_running(sandbox_id):
            raise SandboxNotRunning(f"sandbox {sandbox_id} is not running")
        if self._frozen(sandbox_id):
            raise SandboxNotRunning(f"sandbox {sandbox_id} is paused")

    def _frozen(self, sandbox_id: str) -> bool:
        return freezer_state(sandbox_id, self.settings.cgroup_parent) == "frozen"

    # -- state ------------------------------------------------------------------------
    def real_state(self, sandbox_id: str) -> RealState:
        if self.is_running(sandbox_id):
            return "frozen" if self._frozen(sandbox_id) else "running"
        return "suspended" if self.is_suspended(sandbox_id) else "gone"

    async def settle(self, sandbox_id: str) -> RealState:
        """Let a runc verb left running by a crashed server end, tidy what it left half
        done, and say what the sandbox is now."""
        bundle = self.bundles / sandbox_id
        verb = await settle(bundle, (str(self.state_root), sandbox_id))
        if verb is not None:
            log.info("sandbox %s: a %s was under way when the last server stopped",
                     sandbox_id, verb)
        if verb in ("suspend", "restore"):  # a CRIU ended half way leaves its mounts
            for directory in (bundle / "checkpoint-work", self.state_root / sandbox_id):
                unmount_below(directory)
        state = self.real_state(sandbox_id)
        # ... and its network lock, which only a suspended sandbox keeps (peers' packets are
        # dropped, not refused, until the restore takes its connections back).
        if verb in ("suspend", "restore") and state in ("running", "frozen") and \
                await network.remove_criu_lock(self._lease(sandbox_id)):
            log.warning("sandbox %s: CRIU's network lock removed", sandbox_id)
        if verb == "restore" and state == "running" and self._has_checkpoint(sandbox_id) and \
                not await self._agent_answers(sandbox_id):
            # A restore ended half way may leave processes that are there but do not run
            # (stopped when their tracer, CRIU, died). The checkpoint is whole: back to it;
            # the next resume restores it again.
            log.warning("sandbox %s: a restore ended half way: back to its checkpoint",
                        sandbox_id)
            await self._end_container(sandbox_id)
            state = self.real_state(sandbox_id)
        if state in ("running", "frozen"):
            # A checkpoint that did not finish, or a restore that did: its files are stale.
            for name in ("checkpoint", "checkpoint-work"):
                remove_tree(bundle / name)
        elif state == "suspended":
            # A restore that failed half way leaves runc's state of a container that is not
            # there (maybe no more than CRIU's root); the next restore needs the name free.
            await self._quiet("delete", "-f", sandbox_id)
            remove_tree(self.state_root / sandbox_id)
            await remove_cgroups(sandbox_id)
        return state

    def _has_checkpoint(self, sandbox_id: str) -> bool:
        return (self.bundles / sandbox_id / "checkpoint" / "inventory.img").exists()

    async def _agent_answers(self, sandbox_id: str) -> bool:
        """Whether the sandbox's agent starts a command (``true``) within seconds."""
        address = self.address(sandbox_id)
        if address is None:
            return False
        try:
            if self.agent_protocol(sandbox_id) < AGENT_PROTOCOL:
                done = await run_command(address, "/", ["true"], (), 5.0, 1024)
                return not done.timed_out
            channel = await asyncio.wait_for(start_command(
                address, CommandSpec(argv=("true",), env=(), cwd="/", stdin=False),
                CommandListener()), 8.0)
        except (TimeoutError, OSError):
            return False
        except SandportError as exc:  # an answer, unless it is the lack of one
            return "agent" not in exc.message
        channel.close()
        return True

    async def _end_container(self, sandbox_id: str) -> None:
        """Kill the container's processes and forget it in runc, keeping its bundle,
        network and overlay (for a restore)."""
        init_pid = read_json(self.state_root / sandbox_id / "state.json").get("init_process_pid")
        await self._quiet("kill", sandbox_id, "KILL")
        if isinstance(init_pid, int) and init_pid > 0:
            await _wait_gone(init_pid)
        await self._quiet("delete", "-f", sandbox_id)
        await remove_cgroups(sandbox_id)
        unmount_below(self.state_root / sandbox_id)
        remove_tree(self.state_root / sandbox_id)

    def address(self, sandbox_id: str) -> str | None:
        address = read_json(self.bundles / sandbox_id / "runtime.json").get("sandboxIp")
        return address if isinstance(address, str) else None

    def open_root(self, sandbox_id: str) -> int:
        """An ``O_PATH`` descriptor of the sandbox's root directory as its processes see it
        (with its own mounts), for safepath; the caller closes it."""
        pid = self.init_pid(sandbox_id)
        if pid is None:
            raise SandboxNotRunning(f"sandbox {sandbox_id} is not running")
        fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if self.init_pid(sandbox_id) != pid:  # the pid was reused between the two looks
            os.close(fd)
            raise SandboxNotRunning(f"sandbox {sandbox_id} is not running")
        return fd

    def default_user(self, sandbox_id: str) -> str:
        """The image's ``User``: who commands run as when the caller names nobody."""
        user = read_json(self.bundles / sandbox_id / "runtime.json").get("user")
        return user if isinstance(user, str) else ""

    def workdir(self, sandbox_id: str) -> str:
        workdir = read_json(self.bundles / sandbox_id / "runtime.json").get("workdir")
        return workdir if isinstance(workdir, str) and workdir.startswith("/") else "/"

    def init_pid(self, sandbox_id: str) -> int | None:
        state = read_json(self.state_root / sandbox_id / "state.json")
        pid, start = state.get("init_process_pid"), state.get("init_process_start")
        if not isinstance(pid, int) or pid <= 0:
            return None
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X") or int(stat[19]) != start:
            return None
        return pid

    def is_running(self, sandbox_id: str) -> bool:
        return self.init_pid(sandbox_id) is not None

    def sandbox_ids(self) -> set[str]:
        found: set[str] = set()
        for directory in (self.bundles, self.state_root):
            if directory.exists():
                found.update(p.name for p in directory.iterdir() if p.is_dir())
        found.update(self.disks.sandbox_ids())
        return found

    def cpu_seconds(self, sandbox_id: str) -> float | None:
        """CPU time the sandbox's processes have used, from its cgroup (v1 or v2)."""
        parent = self.settings.cgroup_parent
        try:
            ns = Path(f"/sys/fs/cgroup/cpuacct/{parent}/{sandbox_id}/cpuacct.usage").read_text()
            return int(ns) / 1e9
        except (OSError, ValueError):
            pass
        try:
            stat = Path(f"/sys/fs/cgroup/{parent}/{sandbox_id}/cpu.stat").read_text()
        except OSError:
            return None
        for line in stat.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec" and value.strip().isdigit():
                return int(value) / 1e6
        return None

    def memory_bytes(self, sandbox_id: str) -> int | None:
        """Memory charged to the sandbox's cgroup now (v1 or v2)."""
        parent = self.settings.cgroup_parent
        for path in (f"/sys/fs/cgroup/memory/{parent}/{sandbox_id}/memory.usage_in_bytes",
                     f"/sys/fs/cgroup/{parent}/{sandbox_id}/memory.current"):
            try:
                return int(Path(path).read_text())
            except (OSError, ValueError):
                continue
        return None

    # -- suspend to disk ---------------------------------------------------------------
    async def suspend_support(self) -> str | None:
        if self._criu is None:
            self._criu = await criu.find()
        return self._criu[1]

    async def suspend(self, sandbox_id: str) -> None:
        """Checkpoint the container to disk (runc + CRIU; a frozen one too): its processes
        end and their memory is in ``checkpoint/``; its network, overlay and bundle stay
        for the restore, so its address and URLs do not change."""
        binary = await self._criu_binary()
        bundle = self.bundles / sandbox_id
        image, work = bundle / "checkpoint", bundle / "checkpoint-work"
        for directory in (image, work):
            remove_tree(directory)
            directory.mkdir(mode=0o700)
        if not self.is_running(sandbox_id):
            raise SandboxNotRunning(f"sandbox {sandbox_id} is not running")
        code, detail = await self._runc_logged(
            bundle, "suspend", "--criu", binary, "checkpoint", "--image-path", str(image),
            "--work-path", str(work), "--tcp-established", sandbox_id)
        # What counts is what the host holds: a sandbox that still runs was not suspended
        # (its partial image goes); one that is gone with a complete image was, whatever
        # runc said afterwards (deleting that image would lose its memory).
        if self.is_running(sandbox_id) or not self.is_suspended(sandbox_id):
            if self.is_running(sandbox_id):
                remove_tree(image)
            log.error("sandbox %s: checkpoint failed: %s %s", sandbox_id, detail,
                      criu.last_error(work / "dump.log"))
            raise RuntimeFailure("the sandbox could not be suspended: "
                                 + (criu.last_error(work / "dump.log") or "runc checkpoint failed"))
        if code != 0:
            log.warning("sandbox %s: runc checkpoint failed after a complete dump: %s",
                        sandbox_id, detail)
        await remove_cgroups(sandbox_id)

    async def restore(self, sandbox_id: str) -> None:
        """Start a suspended sandbox again from its checkpoint, where it was."""
        binary = await self._criu_binary()
        bundle = self.bundles / sandbox_id
        image, work = bundle / "checkpoint", bundle / "checkpoint-work"
        if not self.is_suspended(sandbox_id):
            raise SandboxNotRunning(f"sandbox {sandbox_id} has no checkpoint to restore")
        code, detail = await self._runc_logged(
            bundle, "restore", "--criu", binary, "restore", "-d", "--image-path", str(image),
            "--work-path", str(work), "--tcp-established", "--bundle", str(bundle), sandbox_id)
        if code != 0 or not self.is_running(sandbox_id):
            log.error("sandbox %s: restore failed: %s %s", sandbox_id, detail,
                      criu.last_error(work / "restore.log"))
            raise RuntimeFailure("the sandbox could not be restored: "
                                 + (criu.last_error(work / "restore.log") or "runc restore failed"))
        remove_tree(image)
        remove_tree(work)

    def is_suspended(self, sandbox_id: str) -> bool:
        return (self.bundles / sandbox_id / "checkpoint" / "inventory.img").exists()

    async def _criu_binary(self) -> str:
        why = await self.suspend_support()
        if why is not None or self._criu is None or self._criu[0] is None:
            raise NotSupported(why or "suspend to disk is not available")
        return self._criu[0]

    async def _runc_logged(self, bundle: Path, verb: str, *args: str) -> tuple[int, str]:
        """Run runc with /dev/null for stdio (a restored container inherits it) and its
        complaints in runc.log, recorded as ``verb`` while it runs (inflight.py); (exit
        code, the log's tail)."""
        log_file = bundle / "runc.log"
        code = await run_recorded(bundle, verb, [
            self.settings.runc, "--root", str(self.state_root), "--log", str(log_file), *args])
        try:
            detail = log_file.read_text(errors="replace").strip()[-1000:]
        except OSError:
            detail = ""
        return code, detail

    # -- network ----------------------------------------------------------------------
    def _lease(self, sandbox_id: str) -> Lease:
        slot = read_json(self.bundles / sandbox_id / "runtime.json").get("slot")
        return lease_for(self.settings.subnet, slot if isinstance(slot, int) else 0, sandbox_id)

    async def set_egress(self, sandbox_id: str, egress: EgressPolicy) -> None:
        slot = read_json(self.bundles / sandbox_id / "runtime.json").get("slot")
        lease = self._lease(sandbox_id)
        if not isinstance(slot, int) or not Path(lease.netns_path).exists():
            raise SandboxNotRunning(f"sandbox {sandbox_id} is not running")
        # The host sends ports 80 and 443 to the gate before the sandbox's filter lets them
        # out, and takes them back after it stops: never, meanwhile, on to where they went.
        if egress.gated:
            await self._serve_names(sandbox_id, egress)
            await network.apply_egress(lease, egress, self.settings.subnet)
            await network.cut_flows(lease, egress)
        else:
            await network.apply_egress(lease, egress, self.settings.subnet)
            await self._serve_names(sandbox_id, egress)

    def network_log(self, sandbox_id: str) -> list[dict[str, object]]:
        found = self.netlogs.get(sandbox_id)
        return list(found.entries) if found is not None else []

    def _netlog(self, sandbox_id: str) -> gate.NetworkLog:
        return self.netlogs.setdefault(sandbox_id, gate.NetworkLog())

    async def _serve_names(self, sandbox_id: str, egress: EgressPolicy) -> None:
        """Start, change or stop the sandbox's resolver (runtime/dns.py) and name gate
        (runtime/gate.py), and say so in its resolv.conf (rewritten in place: the sandbox
        sees the bind-mounted file change) and its runtime.json (a restarted server serves
        it again)."""
        bundle = self.bundles / sandbox_id
        meta = read_json(bundle / "runtime.json")
        lease = self._lease(sandbox_id)
        running = Path(lease.netns_path).exists()
        serve = egress.serves_dns and running
        netlog = self._netlog(sandbox_id)
        if serve:
            try:
                await self.resolvers.start(sandbox_id, lease.host_ip, lease.sandbox_ip,
                                           egress.names if egress.names_only else None,
                                           netlog.lookup)
            except OSError as exc:  # then its port 53 is closed again: nothing else answers
                log.error("sandbox %s: its resolver could not start: %s (%s)", sandbox_id,
                          exc, exc.__cause__ or exc.errno)
                await network.set_dns_rules(lease, False)
                serve = False
        else:
            await self.resolvers.stop(sandbox_id)
        ports = None
        if egress.gated and running:
            try:
                ports = await self.gates.start(sandbox_id, lease.host_ip, lease.sandbox_ip,
                                               egress, netlog.connection,
                                               _ports(meta.get("gatePorts")))
                await network.set_gate_rules(lease, egress, ports)
            except OSError as exc:  # its ports 80 and 443 then stay closed
                log.error("sandbox %s: its name gate could not start: %s", sandbox_id, exc)
                await self.gates.stop(sandbox_id)
                ports = None
        if ports is None:
            await self.gates.stop(sandbox_id)
            await network.set_gate_rules(lease, None)
        if running:
            await self.refusals.watch(sandbox_id, lease.netns_path, netlog.connection)
        else:
            self.refusals.stop(sandbox_id)
        wanted_meta = {**meta, "dns": serve, "egress": egress.to_json(),
                       "gatePorts": {str(k): v for k, v in (ports or {}).items()}}
        if meta and meta != wanted_meta:
            write_json(bundle / "runtime.json", wanted_meta)
        wanted = dns.resolv_conf(lease.host_ip if serve else None)
        with contextlib.suppress(OSError), (bundle / "resolv.conf").open("r+") as fh:
            if fh.read() != wanted:  # (a sandbox could read it half written)
                fh.seek(0)
                fh.truncate(0)
                fh.write(wanted)

    # -- pause --------------------------------------------------------------------------
    # Both read the freezer itself, not runc's idea of it: each does what it says whatever
    # state a crash left (pausing a frozen sandbox or resuming a thawed one is success).
    async def pause(self, sandbox_id: str) -> None:
        if not self.is_running(sandbox_id):
            raise SandboxNotRunning(f"sandbox {sandbox_id} is not running")
        if not self._frozen(sandbox_id):
            await self._freezer_verb("pause", sandbox_id, want="frozen")

    async def resume(self, sandbox_id: str) -> None:
        if not self.is_running(sandbox_id):
            raise SandboxNotRunning(f"sandbox {sandbox_id} is not running")
        if self._frozen(sandbox_id):
            await self._freezer_verb("resume", sandbox_id, want="thawed")

    # -- snapshot -----------------------------------------------------------------------
    async def copy_changes(self, sandbox_id: str, dest: Path,
                           max_bytes: int) -> SnapshotSource:
        """Freeze (unless it is paused already), ``cp -a`` the upper directory to ``dest``
        (it keeps whiteouts, trusted.overlay.* attributes, owners, hard links), thaw. A
        command started meanwhile waits for the thaw (``_ensure_thawed``); a crash in
        between leaves it frozen with its record active, which the next boot thaws."""
        if not self.is_running(sandbox_id):
            raise SandboxNotRunning(f"sandbox {sandbox_id} is not running")
        meta = read_json(self.bundles / sandbox_id / "runtime.json")
        layers, digest = meta.get("layers"), meta.get("imageDigest")
        if not isinstance(layers, list) or not isinstance(digest, str):
            raise Conflict(f"sandbox {sandbox_id} was created by an older sandport, before "
                           "the layer store: it cannot be snapshot")
        upper = (self.bundles / sandbox_id / "upper").resolve()
        changed = await _du_bytes(upper)  # before the freeze: a big tree is refused at once
        if changed > max_bytes:
            raise ImageRejected(f"the sandbox's changes are {changed} bytes, over this "
                                f"server's cap of {max_bytes} bytes per image")
        free = shutil.disk_usage(dest.parent).free
        if changed + (256 << 20) > free:
            raise InsufficientCapacity(f"no room for a copy of the sandbox's changes "
                                       f"({changed} bytes; {free} free)")
        thawed = asyncio.Event()
        self._copying[sandbox_id] = thawed
        was_frozen = self._frozen(sandbox_id)
        started = time.monotonic()
        try:
            try:
                if not was_frozen:
                    await self._freezer_verb("pause", sandbox_id, want="frozen")
                await _copy_tree(upper, dest, SNAPSHOT_COPY_TIMEOUT_S)
                crash_point("snapshot.copied")  # frozen, record active: boot thaws it
            finally:
                if not was_frozen:
                    try:
                        await self._freezer_verb("resume", sandbox_id, want="thawed")
                    finally:
                        if self._frozen(sandbox_id):  # runc failed: the freezer itself
                            with contextlib.suppress(OSError):
                                thaw(sandbox_id)
            frozen_s = time.monotonic() - started
        finally:
            del self._copying[sandbox_id]
            thawed.set()
        return SnapshotSource(digest, tuple(str(d) for d in layers), frozen_s)

    async def _freezer_verb(self, verb: str, sandbox_id: str, want: str) -> None:
        code, detail = await self._runc_logged(self.bundles / sandbox_id, verb, verb,
                                               sandbox_id)
        if want == "thawed" and self._frozen(sandbox_id):
            # runc saw it otherwise (a freezer left half way by a crash): thaw it anyway
            with contextlib.suppress(OSError):
                thaw(sandbox_id)
        if self._frozen(sandbox_id) != (want == "frozen"):
            log.error("sandbox %s: runc %s failed (%s): %s", sandbox_id, verb, code, detail)
            raise RuntimeFailure(f"the sandbox could not be {verb}d")

    # -- destroy ----------------------------------------------------------------------
    async def destroy(self, sandbox_id: str, keep_files: bool = False) -> None:
        """Remove the container and all it holds on the host; with ``keep_files`` its
        files (the overlay's upper directory: what the sandbox changed) move to
        ``retained/<id>/`` first, for ``discard_files`` later. Safe to repeat."""
        bundle = self.bundles / sandbox_id
        meta = read_json(bundle / "runtime.json")
        state = read_json(self.state_root / sandbox_id / "state.json")
        init_pid = state.get("init_process_pid")
        await self.resolvers.stop(sandbox_id)
        await self.gates.stop(sandbox_id)
        self.refusals.stop(sandbox_id)
        self.netlogs.pop(sandbox_id, None)
        with contextlib.suppress(OSError):
            thaw(sandbox_id)  # frozen processes would not die of KILL
        await self._quiet("kill", sandbox_id, "KILL")
        if isinstance(init_pid, int) and init_pid > 0:
            await _wait_gone(init_pid)
        await self._quiet("delete", "-f", sandbox_id)
        await remove_cgroups(sandbox_id)
        with contextlib.suppress(OSError):
            unmount(bundle / "rootfs")
        if keep_files and ((bundle / "upper").is_dir() or (bundle / "upper").is_symlink()):
            kept = self.retained / sandbox_id
            kept.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not (kept / "upper").exists():
                await self.disks.move_upper(bundle, kept / "upper")  # off its own disk
            write_json(kept / "image.json", {"image": meta.get("image"),
                                             "imageDigest": meta.get("imageDigest"),
                                             "layers": meta.get("layers")})
            layers = meta.get("layers")
            if isinstance(layers, list) and layers:  # the kept files need them now
                self.images.layers.lease(sandbox_id, [str(d) for d in layers], kept)
            crash_point("lost.files_moved")
        slot = meta.get("slot")
        lease = lease_for(self.settings.subnet, slot if isinstance(slot, int) else 0, sandbox_id)
        await network.delete_network(lease, self.settings.subnet)
        if isinstance(slot, int):
            self.slots.release(slot, sandbox_id)
        crash_point("stop.runtime_half_done")
        for directory in (bundle, self.state_root / sandbox_id):
            unmount_below(directory)  # after a CRIU that died half way (the rootfs is gone)
        await self.disks.release(sandbox_id)
        remove_tree(bundle)
        remove_tree(self.state_root / sandbox_id)
        if not (self.retained / sandbox_id / "upper").is_dir():
            self.images.layers.release(sandbox_id)  # retained files keep their layers
            await asyncio.to_thread(self.images.layers.collect)  # what a deleted image left

    def discard_files(self, sandbox_id: str) -> None:
        remove_tree(self.retained / sandbox_id)
        self.images.layers.release(sandbox_id)
        self.images.layers.collect()

    def retained_ids(self) -> set[str]:
        if not self.retained.exists():
            return set()
        return {p.name for p in self.retained.iterdir() if p.is_dir()}

    async def _quiet(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self._runc(*args), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()


async def _read_capped(stream: asyncio.StreamReader, kept: bytearray) -> None:
    """Read to EOF into ``kept`` (up to OUTPUT_CAP); what was read survives cancellation."""
    while chunk := await stream.read(65536):
        room = OUTPUT_CAP - len(kept)
        if room > 0:
            kept += chunk[:room]


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], starttime [19])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rpartition(")")[2].split()


async def _wait_gone(pid: int, timeout_s: float = 5.0) -> None:
    """Wait for a container init to die and reap it if it is our child (we are subreaper)."""
    for _ in range(int(timeout_s / 0.01)):
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
            if reaped == pid:
                return
        except ChildProcessError:
            stat = _proc_stat(pid)
            if stat is None or stat[0] in ("Z", "X"):
                return
        await asyncio.sleep(0.01)


def _ports(value: object) -> dict[int, int] | None:
    """The gate's ports as runtime.json keeps them ({"443": port, "80": port})."""
    if not isinstance(value, dict):
        return None
    found = {int(k): v for k, v in value.items()
             if str(k).isdigit() and isinstance(v, int) and 0 < v < 65536}
    return found or None
