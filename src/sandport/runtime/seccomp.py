"""Convert a containers-common seccomp profile into the OCI runtime-spec form.

Debian's ``golang-github-containers-common`` ships ``/usr/share/containers/seccomp.json``,
the profile Docker and Podman apply by default. Its rules carry ``includes``/``excludes``
conditions on architecture, capabilities and kernel version that a runtime resolves for
one container; the OCI form has none of those, so we resolve them here.

Debian's copy is the Podman flavour, which allows some syscalls (mount, umount2, reboot,
unshare, ...) to every container and relies on capabilities to refuse them. Docker's
default profile only allows those to containers holding the capability that guards them;
``CAP_GATED`` restores that second layer, so a kernel bug in a capability check is not
enough to reach them.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

# Go's GOARCH names (used in the profile's conditions) for the machines we run on.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}
_SCMP_ARCH = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64",
              "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X"}


# Syscalls Docker's default profile allows only with the capability named.
CAP_GATED: dict[str, frozenset[str]] = {
    "CAP_SYS_ADMIN": frozenset({
        "bpf", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
        "mount", "mount_setattr", "move_mount", "name_to_handle_at", "open_tree",
        "perf_event_open", "pivot_root", "quotactl", "quotactl_fd", "setdomainname",
        "sethostname", "setns", "swapoff", "swapon", "syslog", "umount", "umount2", "unshare",
    }),
    "CAP_SYS_BOOT": frozenset({"reboot"}),
    "CAP_SYS_MODULE": frozenset({"delete_module", "init_module", "finit_module"}),
    "CAP_SYS_PACCT": frozenset({"acct"}),
    "CAP_SYS_RAWIO": frozenset({"iopl", "ioperm"}),
    "CAP_SYS_TIME": frozenset({"settimeofday", "stime", "clock_settime", "clock_settime64",
                               "adjtimex", "clock_adjtime", "clock_adjtime64"}),
    "CAP_SYS_TTY_CONFIG": frozenset({"vhangup"}),
    "CAP_SYS_NICE": frozenset({"get_mempolicy", "mbind", "set_mempolicy",
                               "set_mempolicy_home_node"}),
    "CAP_DAC_READ_SEARCH": frozenset({"open_by_handle_at"}),
}
# Never allowed by Docker's default profile, whatever the capabilities.
NEVER_ALLOWED: frozenset[str] = frozenset({
    "add_key", "keyctl", "request_key", "userfaultfd", "kexec_load", "kexec_file_load",
    "create_module", "get_kernel_syms", "query_module", "nfsservctl", "uselib", "ustat",
    "sysfs", "_sysctl", "vm86", "vm86old",
})


def _forbidden(caps: set[str]) -> frozenset[str]:
    gated = [names for cap, names in CAP_GATED.items() if cap not in caps]
    return NEVER_ALLOWED.union(*gated)


def host_goarch() -> str:
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


def _kernel_at_least(kernel: str, wanted: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("-")[0].split(".")[:2] if p.isdigit())

    return parts(kernel) >= parts(wanted)


def _applies(rule: dict[str, Any], arch: str, caps: set[str], kernel: str) -> bool:
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("minKernel") and not _kernel_at_least(kernel, inc["minKernel"]):
        return False
    if exc.get("arches") and arch in exc["arches"]:
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    return True


def to_oci(
    profile: dict[str, Any], *, caps: Iterable[str], arch: str | None = None, kernel: str = ""
) -> dict[str, Any]:
    """The ``linux.seccomp`` section of an OCI config for a container holding ``caps``."""
    arch = arch or host_goarch()
    cap_set = set(caps)
    kernel = kernel or platform.release()
    architectures: list[str] = []
    for entry in profile.get("archMap") or []:
        if entry["architecture"] == _SCMP_ARCH.get(arch):
            architectures = [entry["architecture"], *entry.get("subArchitectures", [])]
    forbidden = _forbidden(cap_set)
    refused: set[str] = set()
    syscalls = []
    for rule in profile.get("syscalls") or []:
        if not _applies(rule, arch, cap_set, kernel):
            continue
        names = list(rule["names"])
        if rule["action"] == "SCMP_ACT_ALLOW":
            refused.update(n for n in names if n in forbidden)
            names = [n for n in names if n not in forbidden]
            if not names:
                continue
        out: dict[str, Any] = {"names": names, "action": rule["action"]}
        if rule.get("args"):
            out["args"] = [
                {k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a}
                for a in rule["args"]
            ]
        if rule.get("errnoRet") is not None:
            out["errnoRet"] = rule["errnoRet"]
        syscalls.append(out)
    if refused:  # EPERM, as Docker answers, rather than the profile's default ENOSYS
        syscalls.append({"names": sorted(refused), "action": "SCMP_ACT_ERRNO", "errnoRet": 1})
    section: dict[str, Any] = {
        "defaultAction": profile["defaultAction"],
        "architectures": architectures,
        "syscalls": syscalls,
    }
    if profile.get("defaultErrnoRet") is not None:
        section["defaultErrnoRet"] = profile["defaultErrnoRet"]
    return section
