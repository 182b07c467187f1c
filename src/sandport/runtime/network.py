"""Per-sandbox networking: an address block, a network namespace and a veth pair.

Every sandbox owns slot ``n`` of the configured subnet: the /30 at ``subnet + 4n``, the
host end of the veth at ``.1`` of that block and the sandbox's ``eth0`` at ``.2``. Slots
are claimed with ``O_EXCL`` files under ``/run/sandport``, so several servers on one host
(tests run them side by side) never hand out the same block.

Host rules, installed once and idempotently: nothing that arrives from a sandbox veth is
delivered to the host except replies to connections the host opened (so the proxy can reach
sandboxes while sandboxes cannot reach host ports such as the control API); nothing is
forwarded into a sandbox but replies; and nothing from a sandbox is forwarded, except, for a
sandbox whose policy lets traffic out, to addresses outside the sandboxes' subnet (so
sandboxes never reach each other), masqueraded behind the host.

Egress policy, enforced in the sandbox's own namespace (where its processes, without
CAP_NET_ADMIN, cannot change it) by a filter table replaced atomically with
iptables-restore: replies to the host's connections (the proxy, the agent) pass; then
``allowOut`` passes; then ``denyOut``, link-local (cloud metadata), private, shared and
reserved ranges are refused; then the rest of the world passes only with
``allowInternetAccess``. Refusals are ICMP admin-prohibited, so a blocked connect fails at
once instead of hanging.

What stays on the host, and for how long: the host chains, their jumps and the subnet's
MASQUERADE rule stay while any sandport server runs or any sandbox exists on the host (a
sandbox's veth may appear at any moment, and must never be without them); the last server
to stop, with no sandbox left, removes them. ``ip_forward`` is set only while some sandbox
may go out, and put back as it was found (the value is recorded under ``/run/sandport``)
once none may. Servers hold ``servers.lock`` shared for their lifetime; the last one out
is the one that can take it exclusively.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import RuntimeFailure, Unavailable
from .refusals import nflog_rule

VETH_PREFIX = "spv"  # host-side veth names: spv + 12 hex = 15 characters, the kernel limit
NETNS_PREFIX = "sp-"
SLOTS_ROOT = Path("/run/sandport")
FILTER_CHAIN = "SANDPORT-IN"
FORWARD_CHAIN = "SANDPORT-FWD"  # from sandboxes: per-sandbox ACCEPT lines, then DROP
RETURN_CHAIN = "SANDPORT-RET"  # into sandboxes: replies only
GATE_CHAIN = "SANDPORT-GATE"  # nat, from sandboxes: each gated one's redirects (gate.py)
GATE_PORTS = (443, 80)  # what the name gate checks: TLS server names, HTTP Hosts
# Not "the internet": reachable only when named in allowOut.
NOT_INTERNET = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
                "224.0.0.0/4", "240.0.0.0/4")


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Where a sandbox may open connections; CIDRs are normalised IPv4 networks."""

    allow_internet: bool = False
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()
    never: tuple[str, ...] = ()  # the operator's --never-allow: refused before allowOut
    dns: bool | None = None  # a resolver (runtime/dns.py); None: whenever it lets out
    names: tuple[str, ...] = ()  # host names and *.wildcards of allowOut (netnames.py)
    public: bool = True  # the operator lets sandboxes reach public addresses at all

    @property
    def lets_out(self) -> bool:
        """Whether the host forwards any of its packets (the name gate is on the host)."""
        return self.allow_internet or bool(self.allow_out)

    @property
    def gated(self) -> bool:
        """Whether ports 80 and 443 go through the name gate (runtime/gate.py): names are
        allowed, and some destinations they may live at are otherwise closed."""
        return bool(self.names) and (not self.allow_internet or bool(self.deny_out))

    @property
    def names_only(self) -> bool:
        """Whether the names are the only way onto the internet: then names not allowed do
        not resolve (the resolver answers NXDOMAIN)."""
        return self.gated and (not self.allow_internet or "0.0.0.0/0" in self.deny_out)

    @property
    def serves_dns(self) -> bool:
        if self.gated:
            return self.dns is not False
        return self.lets_out if self.dns is None else self.dns and self.lets_out

    def to_json(self) -> dict[str, object]:
        return {"allowInternet": self.allow_internet, "allowOut": list(self.allow_out),
                "denyOut": list(self.deny_out), "never": list(self.never),
                "names": list(self.names), "public": self.public}

    @classmethod
    def from_json(cls, data: object) -> EgressPolicy | None:
        """What to_json wrote (the gate of a sandbox a restarted server finds), or None."""
        if not isinstance(data, dict):
            return None
        lists = {k: data.get(k) for k in ("allowOut", "denyOut", "never", "names")}
        if not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                   for v in lists.values()):
            return None
        return cls(data.get("allowInternet") is True, tuple(lists["allowOut"] or ()),
                   tuple(lists["denyOut"] or ()), tuple(lists["never"] or ()), None,
                   tuple(lists["names"] or ()), data.get("public") is not False)


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


def egress_rules(lease: Lease, policy: EgressPolicy) -> str:
    """The sandbox namespace's whole filter table, for iptables-restore (pure)."""
    refuse = "-j REJECT --reject-with icmp-admin-prohibited"
    lines = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        "-A OUTPUT -o lo -j ACCEPT",
        # Replies on connections the host opened (proxy, agent); the host itself is never
        # a destination (its INPUT rules drop what a sandbox starts, whatever this says).
        f"-A OUTPUT -d {lease.host_ip}/32 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    ]

    def refused(match: str, rule: str) -> list[str]:  # logged first (runtime/refusals.py)
        return [nflog_rule(match, rule), f"{match} {refuse}"]

    if policy.serves_dns:  # its resolver, on the host's end of its veth (runtime/dns.py)
        lines += [f"-A OUTPUT -d {lease.host_ip}/32 -p {proto} --dport 53 -j ACCEPT"
                  for proto in ("udp", "tcp")]
    lines += refused(f"-A OUTPUT -d {lease.host_ip}/32", "the host")
    for cidr in policy.never:
        lines += refused(f"-A OUTPUT -d {cidr}", f"never allowed ({cidr})")
    lines += [f"-A OUTPUT -d {cidr} -j ACCEPT" for cidr in policy.allow_out]
    if policy.gated:  # the host takes them to the name gate, wherever they were going
        lines += ["-A OUTPUT -p tcp -m multiport --dports "
                  f"{','.join(map(str, GATE_PORTS))} -j ACCEPT"]
    for cidr in policy.deny_out:
        lines += refused(f"-A OUTPUT -d {cidr}", f"in denyOut ({cidr})")
    for cidr in NOT_INTERNET:
        lines += refused(f"-A OUTPUT -d {cidr}", f"not in allowOut (not the internet: {cidr})")
    if policy.allow_internet:
        lines += ["-A OUTPUT -j ACCEPT"]
    else:
        lines += refused("-A OUTPUT", "not in allowOut")
    lines += ["COMMIT", ""]
    return "\n".join(lines)


async def apply_egress(lease: Lease, policy: EgressPolicy, subnet: str) -> None:
    """Replace the sandbox's filter table, then open or close its way through the host."""
    await run_tool("ip", "netns", "exec", lease.netns, "iptables-restore", "-w",
                   stdin=egress_rules(lease, policy))
    await _way_out(lease, subnet, policy.lets_out, policy.serves_dns)


def gate_chains(lease: Lease) -> tuple[str, str]:
    """The sandbox's own chains for its gate: (nat redirects, filter accepts)."""
    tag = lease.veth.removeprefix(VETH_PREFIX)
    return "SPG-" + tag, "SPI-" + tag


def gate_rules(lease: Lease, policy: EgressPolicy, ports: dict[int, int]) -> str:
    """The sandbox's gate chains, for iptables-restore --noflush (pure; naming a chain
    empties it, so each is replaced whole): its connections to ports 80 and 443 go to the
    gate's listeners (``ports``: dialled port → listening port) unless its address rules
    let them by; the host accepts them there."""
    nat, accept = gate_chains(lease)
    lines = ["*nat", f":{nat} - [0:0]"]
    lines += [f"-A {nat} -d {cidr} -j RETURN" for cidr in policy.allow_out]
    # With the internet open, only the closed part of it goes through the gate.
    where = [f"-d {c} " for c in (*policy.deny_out, *NOT_INTERNET)] \
        if policy.allow_internet else [""]
    lines += [f"-A {nat} {d}-p tcp --dport {dialled} -j REDIRECT --to-ports {ports[dialled]}"
              for d in where for dialled in GATE_PORTS]
    lines += ["COMMIT", "*filter", f":{accept} - [0:0]"]
    lines += [f"-A {accept} -d {lease.host_ip}/32 -p tcp --dport {ports[d]} -j ACCEPT"
              for d in GATE_PORTS]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def sent_to_gate(policy: EgressPolicy, address: str) -> bool:
    """Whether gate_rules send a TCP connection to ``address`` on port 80 or 443 to the
    gate (pure)."""
    if not policy.gated:
        return False
    ip = ipaddress.IPv4Address(address)
    if any(ip in ipaddress.IPv4Network(c) for c in policy.allow_out):
        return False
    return not policy.allow_internet or any(
        ip in ipaddress.IPv4Network(c) for c in (*policy.deny_out, *NOT_INTERNET))


def flows_to_cut(listing: str, lease: Lease, policy: EgressPolicy
                 ) -> list[tuple[str, str, str, str]]:
    """From ``conntrack -L -p tcp`` output, the sandbox's flows to ports 80 and 443 that
    its address rules let by (not redirected) and that ``policy`` would now send to the
    gate: (source, source port, destination, destination port) each (pure). The sandbox's
    filter re-checks every packet, but the host's NAT decides a flow's way once, at its
    first packet: these would go on to where the gate never looked."""
    cut = []
    for line in listing.splitlines():
        fields = [f.split("=", 1) for f in line.split() if "=" in f]
        values = [v for k, v in fields if k in ("src", "dst", "sport", "dport")]
        if len(values) < 8:
            continue
        src, dst, sport, dport, reply_src = values[:5]
        if (src == lease.sandbox_ip and dport in {str(p) for p in GATE_PORTS}
                and reply_src == dst and sent_to_gate(policy, dst)):
            cut.append((src, sport, dst, dport))
    return cut


async def cut_flows(lease: Lease, policy: EgressPolicy) -> int:
    """Delete the conntrack entries of flows_to_cut: their next packet is a new flow, which
    goes to the gate, and is reset there. How many."""
    if not policy.gated:
        return 0
    proc = await asyncio.create_subprocess_exec(
        "conntrack", "-L", "-p", "tcp", "-s", lease.sandbox_ip,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    listing, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeFailure(f"conntrack failed: {err.decode(errors='replace').strip()}")
    flows = flows_to_cut(listing.decode(errors="replace"), lease, policy)
    for src, sport, dst, dport in flows:
        await run_tool("conntrack", "-D", "-p", "tcp", "-s", src, "--sport", sport, "-d", dst,
                       "--dport", dport, check=False)  # (it may have ended meanwhile)
    return len(flows)


async def set_gate_rules(lease: Lease, policy: EgressPolicy | None,
                         ports: dict[int, int] | None = None) -> None:
    """Send the sandbox's ports 80 and 443 to its gate (listening at ``ports``), or, with
    no policy, stop (safe to repeat)."""
    nat, accept = gate_chains(lease)
    jumps = (["-t", "nat", GATE_CHAIN, "-i", lease.veth, "-j", nat],
             [FILTER_CHAIN, "-i", lease.veth, "-j", accept])
    async with _host_lock("forward.lock"):
        if policy is not None and ports is not None:
            await run_tool("iptables-restore", "-w", "--noflush",
                           stdin=gate_rules(lease, policy, ports))
            for jump in jumps:
                await _toggle(jump, True)
            return
        for jump in jumps:
            await _toggle(jump, False)
        for table, chain in (("nat", nat), ("filter", accept)):
            await run_tool("iptables", "-w", "-t", table, "-F", chain, check=False)
            await run_tool("iptables", "-w", "-t", table, "-X", chain, check=False)


async def set_dns_rules(lease: Lease, present: bool) -> None:
    """Open or close the host's port 53 for the sandbox (closed: its resolver is gone)."""
    async with _host_lock("forward.lock"):
        for rule in _dns_rules(lease):
            await _toggle(rule, present)


async def _way_out(lease: Lease, subnet: str, open_it: bool, dns: bool = False) -> None:
    """Open or close the host's way out for one sandbox, and its resolver's port (a name
    policy has the one without the other); forwarding is on exactly while some sandbox on
    the host has a way out (one host-wide lock orders the servers)."""
    async with _host_lock("forward.lock"):
        for rule in _dns_rules(lease):
            await _toggle(rule, dns)
        if open_it:
            _enable_forwarding()
            await _host_rule("-I", lease, subnet)
            return
        await _host_rule("-D", lease, subnet)
        chain = (await _listing("iptables", "-w", "-S", FORWARD_CHAIN)).splitlines()
        if not any(line.endswith("-j ACCEPT") for line in chain):
            _restore_forwarding()


async def _host_rule(action: str, lease: Lease, subnet: str) -> None:
    """The host's per-sandbox way out: present once ("-I" is idempotent), absent after
    "-D" (as often as it was added)."""
    # Never out through another sandbox veth, of this server or another one on the host
    # (whose subnet may differ): sandboxes reach no sandbox.
    rule = [FORWARD_CHAIN, "-i", lease.veth, "!", "-o", VETH_PREFIX + "+", "!", "-d", subnet,
            "-j", "ACCEPT"]
    present = (await run_tool("iptables", "-w", "-C", *rule, check=False))[0] == 0
    if action == "-I" and not present:
        await run_tool("iptables", "-w", "-I", *rule[:1], "1", *rule[1:])
    while action == "-D" and present:
        await run_tool("iptables", "-w", "-D", *rule, check=False)
        present = (await run_tool("iptables", "-w", "-C", *rule, check=False))[0] == 0


def _dns_rules(lease: Lease) -> list[list[str]]:
    """The host lets a sandbox that may go out reach its resolver (runtime/dns.py): port
    53 of its own veth's host address, from that veth only."""
    return [[FILTER_CHAIN, "-i", lease.veth, "-d", f"{lease.host_ip}/32", "-p", proto,
             "--dport", "53", "-j", "ACCEPT"] for proto in ("udp", "tcp")]


async def _toggle(rule: list[str], present: bool) -> None:
    """Insert ``rule`` (``-t table`` first, if not filter's) at the top of its chain once,
    or delete every copy of it."""
    table, rule = (rule[:2], rule[2:]) if rule[0] == "-t" else ([], rule)
    there = (await run_tool("iptables", "-w", *table, "-C", *rule, check=False))[0] == 0
    if present and not there:
        await run_tool("iptables", "-w", *table, "-I", rule[0], "1", *rule[1:])
    while not present and there:
        await run_tool("iptables", "-w", *table, "-D", *rule, check=False)
        there = (await run_tool("iptables", "-w", *table, "-C", *rule,
                                check=False))[0] == 0


IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
FORWARD_FOUND = SLOTS_ROOT / "ip_forward.found"  # what it was before sandport set it


def _enable_forwarding() -> None:
    """The host routes for sandboxes that may go out (only what the FORWARD rules let by:
    nothing else is forwarded between a sandbox and anything)."""
    found = IP_FORWARD.read_text().strip()
    if found != "1":
        if not FORWARD_FOUND.exists():
            FORWARD_FOUND.write_text(found)
        IP_FORWARD.write_text("1")


def _restore_forwarding() -> None:
    """Put ip_forward back as sandport found it, if sandport changed it."""
    try:
        found = FORWARD_FOUND.read_text().strip()
    except FileNotFoundError:
        return
    if found in ("0", "1"):
        IP_FORWARD.write_text(found)
    FORWARD_FOUND.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def _host_lock(name: str) -> AsyncIterator[None]:
    """A host-wide exclusive lock shared with the other servers (waited for off the loop)."""
    SLOTS_ROOT.mkdir(parents=True, exist_ok=True)
    fd = os.open(SLOTS_ROOT / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


async def _listing(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return out.decode(errors="replace")


def _disable_ipv6(ifname: str) -> None:
    try:
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")
    except OSError as exc:  # a host without IPv6 has nothing to disable
        if exc.errno not in (errno.ENOENT, errno.EACCES):
            raise


CRIU_LOCK_CHAIN = "CRIU"  # what CRIU's iptables network lock adds in the sandbox's netns


async def remove_criu_lock(lease: Lease) -> bool:
    """Take away the network lock a CRIU killed half way through a checkpoint or restore
    left in the sandbox's namespace (a chain that drops all but CRIU's own packets, jumped
    to from INPUT and OUTPUT, for IPv4 and IPv6); whether there was one."""
    if not Path(lease.netns_path).exists():
        return False
    found = False
    for tool in ("iptables", "ip6tables"):
        ns = ("ip", "netns", "exec", lease.netns, tool, "-w")
        if (await run_tool(*ns, "-n", "-L", CRIU_LOCK_CHAIN, check=False))[0] != 0:
            continue
        found = True
        for chain in ("INPUT", "OUTPUT"):
            while (await run_tool(*ns, "-D", chain, "-j", CRIU_LOCK_CHAIN,
                                  check=False))[0] == 0:
                pass
        await run_tool(*ns, "-F", CRIU_LOCK_CHAIN, check=False)
        await run_tool(*ns, "-X", CRIU_LOCK_CHAIN, check=False)
    return found


async def delete_network(lease: Lease, subnet: str | None = None) -> None:
    """Remove the namespace (its eth0 and the veth peer go with it) and the host's way out
    for it (the rule names ``subnet``); safe to repeat."""
    if subnet is not None:
        await _way_out(lease, subnet, False)
        await set_gate_rules(lease, None)
    if Path(lease.netns_path).exists():
        await run_tool("ip", "netns", "del", lease.netns, check=False)
    if Path(f"/sys/class/net/{lease.veth}").exists():
        await run_tool("ip", "link", "del", lease.veth, check=False)


class HostRules:
    """This server's hold on the host rules: installed at start (idempotent: several
    servers share them), removed at stop by the last server out if no sandbox is left."""

    def __init__(self, subnet: str) -> None:
        self.subnet = subnet
        self._fd: int | None = None

    async def hold(self) -> None:
        SLOTS_ROOT.mkdir(parents=True, exist_ok=True)
        fd = os.open(SLOTS_ROOT / "servers.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_SH)  # waits for a teardown
        self._fd = fd
        SlotRegistry(self.subnet).dir.mkdir(exist_ok=True)  # the subnet's rules are known
        await install_host_rules(self.subnet)

    async def release(self) -> bool:
        """At stop; whether the rules were removed (this was the last server out)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another server runs
            slot_dirs = list(SLOTS_ROOT.glob("slots-*"))
            if any(n.isdigit() for d in slot_dirs for n in os.listdir(d)):
                return False  # sandboxes outlive their server: their guards stay
            # Every subnet a server used on this host has its slots directory: servers that
            # stopped before this one (not last) left their MASQUERADE rules to it.
            used = {d.name.removeprefix("slots-").replace("_", "/") for d in slot_dirs}
            await remove_host_rules(sorted(used | {self.subnet}))
            return True
        finally:
            os.close(fd)


async def remove_host_rules(subnets: list[str]) -> None:
    veths = VETH_PREFIX + "+"
    for chain, rule in (("FORWARD", ["-o", veths, "-j", RETURN_CHAIN]),
                        ("FORWARD", ["-i", veths, "-j", FORWARD_CHAIN]),
                        ("INPUT", ["-i", veths, "-j", FILTER_CHAIN])):
        while (await run_tool("iptables", "-w", "-D", chain, *rule, check=False))[0] == 0:
            pass
    for chain in (FILTER_CHAIN, FORWARD_CHAIN, RETURN_CHAIN):
        await run_tool("iptables", "-w", "-F", chain, check=False)
        await run_tool("iptables", "-w", "-X", chain, check=False)
    nat = ("iptables", "-w", "-t", "nat")
    while (await run_tool(*nat, "-D", "PREROUTING", "-i", veths, "-j", GATE_CHAIN,
                          check=False))[0] == 0:
        pass
    await run_tool(*nat, "-F", GATE_CHAIN, check=False)
    await run_tool(*nat, "-X", GATE_CHAIN, check=False)
    for subnet in subnets:
        masquerade = ["POSTROUTING", "-s", subnet, "!", "-d", subnet, "-j", "MASQUERADE"]
        while (await run_tool("iptables", "-w", "-t", "nat", "-D", *masquerade,
                              check=False))[0] == 0:
            pass
    async with _host_lock("forward.lock"):
        _restore_forwarding()


async def install_host_rules(subnet: str) -> None:
    """Idempotent: several servers on one host share the same rules."""
    replies = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
    chains = {FILTER_CHAIN: [replies, ["-j", "DROP"]], FORWARD_CHAIN: [["-j", "DROP"]],
              RETURN_CHAIN: [replies, ["-j", "DROP"]]}
    for chain, rules in chains.items():
        await run_tool("iptables", "-w", "-N", chain, check=False)
        for rule in rules:
            await _ensure("iptables", "-w", "-A", chain, *rule)
    veths = VETH_PREFIX + "+"
    # Inserted at the top in reverse (so the -i jump comes first: from a sandbox, whatever
    # the destination); the old blanket FORWARD DROP (before egress) goes.
    await run_tool("iptables", "-w", "-D", "FORWARD", "-i", veths, "-j", "DROP", check=False)
    for chain, rule in (("FORWARD", ["-o", veths, "-j", RETURN_CHAIN]),
                        ("FORWARD", ["-i", veths, "-j", FORWARD_CHAIN]),
                        ("INPUT", ["-i", veths, "-j", FILTER_CHAIN])):
        await _ensure("iptables", "-w", "-I", chain, "1", *rule)
    await _ensure("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", subnet, "!", "-d",
                  subnet, "-j", "MASQUERADE")
    await run_tool("iptables", "-w", "-t", "nat", "-N", GATE_CHAIN, check=False)
    await _ensure("iptables", "-w", "-t", "nat", "-I", "PREROUTING", "1", "-i", veths, "-j",
                  GATE_CHAIN)


async def _ensure(tool: str, wait: str, *args: str) -> None:
    """Add a rule unless it is there: ``args`` is (-t table)? -A|-I chain [position] rule."""
    table = list(args[:2]) if args[0] == "-t" else []
    verb, chain, *rule = args[len(table):]
    check = rule[1:] if verb == "-I" and rule and rule[0].isdigit() else rule
    if (await run_tool(tool, wait, *table, "-C", chain, *check, check=False))[0] != 0:
        await run_tool(tool, wait, *args)
