"""OCI runtime config for one sandbox: a pure function of the sandbox's spec.

What a sandbox gets, and why (shared/DESIGN.md §5, §6):
- its own pid, ipc, uts, mount and cgroup namespaces, and the network namespace the node
  runtime prepared (veth + address) at ``/run/netns/<name>``;
- a reaping init (Debian's static tini, bind-mounted read-only) as PID 1;
- Docker's default capabilities minus NET_RAW: raw and packet sockets would bypass the
  host's netfilter rules that keep sandboxes away from host ports and from each other;
- noNewPrivileges, a Docker-equivalent seccomp profile, masked and read-only /proc paths;
- memory (swap included), CPU and pids limits in its own cgroup, under a parent whose
  pids.max caps all sandboxes together (pidcap.py);
- rlimits no higher than the host's hard limits (a higher value fails with EPERM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap", "/sys/kernel/debug",
)

READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)

INIT_PATH = "/dev/init"  # on the /dev tmpfs, so the image's own files are untouched
AGENT_PATH = "/dev/sandport-agent"
AGENT_PORT = 4001
CPU_PERIOD_US = 100_000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    sandbox_id: str
    rootfs: Path
    hostname: str
    netns_path: str
    hosts_file: Path
    resolv_file: Path
    hostname_file: Path
    init_binary: Path
    agent_binary: Path
    agent_peer: str  # the only address the agent accepts connections from (the host's)
    vcpus: int
    mem_mib: int
    pids_limit: int
    nofile_limit: int
    image_env: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    cgroup_parent: str = "sandport"  # whose pids.max caps all sandboxes together


def merge_env(*layers: dict[str, str] | tuple[str, ...]) -> list[str]:
    """KEY=VALUE list where later layers win; accepts dicts or KEY=VALUE tuples."""
    merged: dict[str, str] = {}
    for layer in layers:
        pairs = layer.items() if isinstance(layer, dict) else (
            tuple(item.split("=", 1)) for item in layer if "=" in item
        )
        for key, value in pairs:
            merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def _bind(source: Path | str, dest: str, *, readonly: bool = True) -> dict[str, Any]:
    options = ["rbind", "nosuid", "nodev"] + (["ro"] if readonly else ["rw"])
    return {"destination": dest, "type": "bind", "source": str(source), "options": options}


def process_env(spec: ContainerSpec) -> list[str]:
    """The environment of every process in the sandbox, before per-command additions."""
    return merge_env(
        {"PATH": DEFAULT_PATH, "HOME": "/root", "TERM": "xterm"},
        spec.image_env,
        {"HOSTNAME": spec.hostname},
        spec.env,
    )


def container_config(spec: ContainerSpec, seccomp: dict[str, Any] | None) -> dict[str, Any]:
    caps = list(DEFAULT_CAPS)
    env = process_env(spec)
    mem_bytes = spec.mem_mib * 1024 * 1024
    linux: dict[str, Any] = {
        "namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "cgroup"}, {"type": "network", "path": spec.netns_path},
        ],
        "cgroupsPath": f"/{spec.cgroup_parent}/{spec.sandbox_id}",
        "resources": {
            "devices": [{"allow": False, "access": "rwm"}],
            "memory": {"limit": mem_bytes, "swap": mem_bytes},
            "cpu": {"quota": spec.vcpus * CPU_PERIOD_US, "period": CPU_PERIOD_US},
            "pids": {"limit": spec.pids_limit},
        },
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
        # No IPv6 inside: the host-side filter rules are IPv4, and a link-local v6 address
        # would otherwise reach host services listening on [::].
        "sysctl": {
            "net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1",
        },
    }
    if seccomp is not None:
        linux["seccomp"] = seccomp
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [INIT_PATH, "-s", "--", AGENT_PATH, str(AGENT_PORT), spec.agent_peer],
            "env": env,
            "cwd": spec.workdir,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": spec.nofile_limit, "soft": spec.nofile_limit},
            ],
            "noNewPrivileges": True,
        },
        "root": {"path": str(spec.rootfs), "readonly": False},
        "hostname": spec.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            _bind(spec.init_binary, INIT_PATH),
            _bind(spec.agent_binary, AGENT_PATH),
            _bind(spec.hosts_file, "/etc/hosts"),
            _bind(spec.resolv_file, "/etc/resolv.conf"),
            _bind(spec.hostname_file, "/etc/hostname"),
        ],
        "linux": linux,
    }
