"""Per-sandbox networking: an address block, a network namespace and a veth pair.

Every sandbox owns slot ``n`` of the configured subnet: the /30 at ``subnet + 4n``, the
host end of the veth at ``.1`` of that block and the sandbox's ``eth0`` at ``.2``. Slots
are claimed with ``O_EXCL`` files under ``/run/sandport``, so several servers on one host
(tests run them side by side) never hand out the same block.

Host rules, installed once and idempotently: nothing that arrives from a sandbox veth is
delivered to the host except replies to connections the host opened (so the proxy can reach
sandboxes while sandboxes cannot reach host ports such as the control API), and nothing from
a sandbox is forwarded (so sandboxes cannot reach each other or leave the host).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import RuntimeFailure, Unavailable

VETH_PREFIX = "spv"  # host-side veth names: spv + 12 hex = 15 characters, the kernel limit
NETNS_PREFIX = "sp-"
SLOTS_ROOT = Path("/run/sandport")
FILTER_CHAIN = "SANDPORT-IN"


@dataclass(frozen=True, slots=True)
class Lease:
    slot: int
    netns: str
    veth: str
    host_ip: str
    sandbox_ip: str
    prefix: int = 30

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"


def lease_for(subnet: str, slot: int, sandbox_id: str) -> Lease:
    """The addresses and names of ``slot``: a pure function, tested in the unit suite."""
    net = ipaddress.IPv4Network(subnet)
    if not 0 <= slot < slot_count(subnet):
        raise ValueError(f"slot {slot} is outside {subnet}")
    block = int(net.network_address) + 4 * slot
    return Lease(
        slot=slot,
        netns=NETNS_PREFIX + sandbox_id,
        veth=VETH_PREFIX + sandbox_id[:12],
        host_ip=str(ipaddress.IPv4Address(block + 1)),
        sandbox_ip=str(ipaddress.IPv4Address(block + 2)),
    )


def slot_count(subnet: str) -> int:
    return ipaddress.IPv4Network(subnet).num_addresses // 4


class SlotRegistry:
    """Host-wide claims on address blocks, shared by every server using ``subnet``."""

    def __init__(self, subnet: str, root: Path = SLOTS_ROOT) -> None:
        self.subnet = subnet
        self.dir = root / ("slots-" + subnet.replace("/", "_"))

    def claim(self, sandbox_id: str) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        taken = {int(n) for n in os.listdir(self.dir) if n.isdigit()}
        for slot in range(slot_count(self.subnet)):
            if slot in taken:
                continue
            try:
                fd = os.open(self.dir / str(slot), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(sandbox_id)
            return slot
        raise Unavailable("no free sandbox addresses left on this host")

    def owner(self, slot: int) -> str | None:
        try:
            return (self.dir / str(slot)).read_text()
        except FileNotFoundError:
            return None

    def release(self, slot: int, sandbox_id: str) -> None:
        if self.owner(slot) == sandbox_id:
            (self.dir / str(slot)).unlink(missing_ok=True)


async def run_tool(*args: str, stdin: str | None = None, check: bool = True) -> tuple[int, str]:
    """Run a host tool (ip, iptables); return (exit code, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    text = err.decode(errors="replace").strip()
    if check and proc.returncode != 0:
        raise RuntimeFailure(f"{args[0]} failed: {text}")
    return proc.returncode or 0, text


async def create_network(lease: Lease) -> None:
    await run_tool("ip", "netns", "add", lease.netns)
    try:
        # The peer is created directly inside the namespace as eth0: no rename, no move.
        await run_tool("ip", "-batch", "-", stdin=(
            f"link add {lease.veth} type veth peer name eth0 netns {lease.netns}\n"
            f"addr add {lease.host_ip}/{lease.prefix} dev {lease.veth}\n"
            f"link set {lease.veth} up\n"
        ))
        _disable_ipv6(lease.veth)
        await run_tool("ip", "-n", lease.netns, "-batch", "-", stdin=(
            "link set lo up\n"
            f"addr add {lease.sandbox_ip}/{lease.prefix} dev eth0\n"
            "link set eth0 up\n"
            f"route add default via {lease.host_ip}\n"
        ))
    except BaseException:
        await delete_network(lease)
        raise


def _disable_ipv6(ifname: str) -> None:
    try:
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")
    except OSError as exc:  # a host without IPv6 has nothing to disable
        if exc.errno not in (errno.ENOENT, errno.EACCES):
            raise


async def delete_network(lease: Lease) -> None:
    """Remove the namespace (its eth0 and the veth peer go with it); safe to repeat."""
    if Path(lease.netns_path).exists():
        await run_tool("ip", "netns", "del", lease.netns, check=False)
    if Path(f"/sys/class/net/{lease.veth}").exists():
        await run_tool("ip", "link", "del", lease.veth, check=False)


async def install_host_rules() -> None:
    """Idempotent: several servers on one host share the same rules."""
    match = ["-i", VETH_PREFIX + "+"]
    await run_tool("iptables", "-w", "-N", FILTER_CHAIN, check=False)
    rules = [
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-j", "DROP"],
    ]
    for rule in rules:
        code, _ = await run_tool("iptables", "-w", "-C", FILTER_CHAIN, *rule, check=False)
        if code != 0:
            await run_tool("iptables", "-w", "-A", FILTER_CHAIN, *rule)
    for chain, target in (("INPUT", FILTER_CHAIN), ("FORWARD", "DROP")):
        code, _ = await run_tool("iptables", "-w", "-C", chain, *match, "-j", target, check=False)
        if code != 0:
            await run_tool("iptables", "-w", "-I", chain, "1", *match, "-j", target)
