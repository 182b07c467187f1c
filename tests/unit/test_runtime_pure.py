"""The runtime's pure parts: OCI config, seccomp conversion, address leases, image command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandport.errors import Unavailable
from sandport.runtime import oci, seccomp
from sandport.runtime.images import mmdebstrap_command
from sandport.runtime.network import SlotRegistry, lease_for, slot_count


def _spec(**over: object) -> oci.ContainerSpec:
    base = dict(sandbox_id="ab" * 10, rootfs=Path("/r"), hostname="h",
                netns_path="/run/netns/sp-x", hosts_file=Path("/b/hosts"),
                resolv_file=Path("/b/resolv.conf"), hostname_file=Path("/b/hostname"),
                init_binary=Path("/usr/bin/tini-static"), agent_binary=Path("/b/agent"),
                agent_peer="10.77.0.1", vcpus=2, mem_mib=256,
                pids_limit=100, nofile_limit=1024)
    base.update(over)
    return oci.ContainerSpec(**base)  # type: ignore[arg-type]


def test_container_config_limits_and_namespaces() -> None:
    cfg = oci.container_config(_spec(), {"defaultAction": "SCMP_ACT_ERRNO"})
    linux = cfg["linux"]
    kinds = {ns["type"] for ns in linux["namespaces"]}
    assert kinds == {"pid", "ipc", "uts", "mount", "cgroup", "network"}
    net = next(ns for ns in linux["namespaces"] if ns["type"] == "network")
    assert net["path"] == "/run/netns/sp-x"
    res = linux["resources"]
    assert res["memory"] == {"limit": 256 * 2**20, "swap": 256 * 2**20}
    assert res["cpu"]["quota"] == 2 * res["cpu"]["period"]
    assert res["pids"]["limit"] == 100
    assert linux["cgroupsPath"] == "/sandport/" + "ab" * 10
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    assert linux["seccomp"] == {"defaultAction": "SCMP_ACT_ERRNO"}


def test_container_process_is_hardened() -> None:
    proc = oci.container_config(_spec(), None)["process"]
    assert proc["noNewPrivileges"] is True
    assert proc["args"] == [oci.INIT_PATH, "-s", "--", oci.AGENT_PATH, "4001", "10.77.0.1"]
    caps = set(proc["capabilities"]["bounding"])
    assert "CAP_SYS_ADMIN" not in caps and "CAP_NET_RAW" not in caps
    assert "CAP_SYS_MODULE" not in caps and "CAP_CHOWN" in caps
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]


def test_container_mounts_bind_files_read_only() -> None:
    mounts = {m["destination"]: m for m in oci.container_config(_spec(), None)["mounts"]}
    for dest in (oci.INIT_PATH, oci.AGENT_PATH, "/etc/hosts", "/etc/resolv.conf", "/etc/hostname"):
        assert "ro" in mounts[dest]["options"]
    assert "ro" in mounts["/sys"]["options"]


def test_env_layers() -> None:
    env = oci.merge_env({"A": "1", "B": "1"}, ("B=2", "C=2", "junk"), {"C": "3"})
    assert env == ["A=1", "B=2", "C=3"]
    cfg = oci.container_config(_spec(env={"PATH": "/x"}, image_env=("LANG=C.UTF-8",)), None)
    assert "PATH=/x" in cfg["process"]["env"] and "LANG=C.UTF-8" in cfg["process"]["env"]


PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                 "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
         "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
         "includes": {"arches": ["amd64"]}},
        {"names": ["s390_only"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "excludes": {"caps": ["CAP_SYS_ADMIN"]},
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["newer"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "9.0"}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
    ],
}


def test_seccomp_resolves_includes_and_excludes() -> None:
    out = seccomp.to_oci(PROFILE, caps=oci.DEFAULT_CAPS, arch="amd64", kernel="6.1.0")
    names = [n for rule in out["syscalls"] for n in rule["names"]]
    assert names == ["read", "arch_prctl", "clone", "ptrace"]
    assert out["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert out["defaultErrnoRet"] == 1
    clone = out["syscalls"][2]
    assert clone["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    assert out["syscalls"][3]["errnoRet"] == 38
    with_admin = seccomp.to_oci(PROFILE, caps=["CAP_SYS_ADMIN"], arch="amd64", kernel="9.1")
    admin_names = [n for rule in with_admin["syscalls"] for n in rule["names"]]
    assert "mount" in admin_names and "clone" not in admin_names and "newer" in admin_names


def test_seccomp_converts_the_debian_profile() -> None:
    source = Path("/usr/share/containers/seccomp.json")  # golang-github-containers-common
    out = seccomp.to_oci(json.loads(source.read_text()), caps=oci.DEFAULT_CAPS, arch="amd64",
                         kernel="6.1.0")
    allowed = {n for r in out["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert {"read", "write", "clone3", "execve"} <= allowed
    assert not {"mount", "reboot", "init_module", "kexec_load", "unshare", "setns"} & allowed
    eperm = {n for r in out["syscalls"] if r.get("errnoRet") == 1 for n in r["names"]}
    assert {"mount", "reboot", "unshare"} <= eperm  # refused as Docker refuses them


@pytest.mark.parametrize("subnet, slot, host_ip, sandbox_ip", [
    ("10.77.0.0/16", 0, "10.77.0.1", "10.77.0.2"),
    ("10.77.0.0/16", 1, "10.77.0.5", "10.77.0.6"),
    ("10.77.0.0/16", 64, "10.77.1.1", "10.77.1.2"),
    ("10.77.0.0/16", 16383, "10.77.255.253", "10.77.255.254"),
    ("192.168.5.0/24", 3, "192.168.5.13", "192.168.5.14"),
])
def test_leases(subnet: str, slot: int, host_ip: str, sandbox_ip: str) -> None:
    lease = lease_for(subnet, slot, "0123456789abcdef0123")
    assert (lease.host_ip, lease.sandbox_ip) == (host_ip, sandbox_ip)
    assert lease.veth == "spv0123456789ab" and len(lease.veth) <= 15
    assert lease.netns_path == "/run/netns/sp-0123456789abcdef0123"


def test_lease_outside_subnet() -> None:
    assert slot_count("10.77.0.0/16") == 16384
    with pytest.raises(ValueError):
        lease_for("192.168.5.0/24", 64, "x" * 20)


def test_slot_registry(tmp_path: Path) -> None:
    slots = SlotRegistry("10.9.9.0/28", root=tmp_path)  # 4 slots
    other_server = SlotRegistry("10.9.9.0/28", root=tmp_path)
    got = [slots.claim("a"), other_server.claim("b"), slots.claim("c"), slots.claim("d")]
    assert sorted(got) == [0, 1, 2, 3]
    with pytest.raises(Unavailable):
        slots.claim("e")
    other_server.release(got[0], "not-the-owner")  # only the owner releases
    assert slots.owner(got[0]) == "a"
    slots.release(got[1], "b")
    assert slots.claim("e") == got[1]


def test_image_build_command_uses_debian_packages() -> None:
    cmd = mmdebstrap_command("node", "-", "bookworm", ["/etc/apt/x.sources"])
    assert cmd[0] == "mmdebstrap" and "--variant=minbase" in cmd
    assert "--include=procps,ca-certificates,nodejs,npm" in cmd
    assert "--format=tar" in cmd  # one tar on stdout, unpacked into the layer store
    assert cmd[-3:] == ["bookworm", "-", "/etc/apt/x.sources"]
