"""The kernel's refusals in a sandbox's network log: what its own packet filter turned away
(a port-22 connection to an address its policy does not allow, QUIC, a resolver of its
own choosing), next to what the name gate and its resolver refused.

Each REJECT rule of the sandbox's filter (network.egress_rules) is preceded by an NFLOG
rule, rate-limited, whose prefix says which rule it is. A netfilter-log netlink socket
opened in the sandbox's network namespace (nflog groups are per namespace) receives the
first bytes of each such packet; its destination, port and the prefix become an entry.
The socket is read on the server's event loop; a sandbox that floods gets at most the
limit's entries, and the rest of its packets are still refused, only not logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("sandport.refusals")

GROUP = 1  # the nflog group of every sandbox's filter (each namespace has its own groups)
COPY = 64  # bytes of each packet: its IPv4 header and the ports
PREFIX_MAX = 63
NETLINK_NETFILTER = 12
CLONE_NEWNET = 0x40000000
_ULOG = 4 << 8  # NFNL_SUBSYS_ULOG
MSG_PACKET, MSG_CONFIG = _ULOG | 0, _ULOG | 1
CFG_CMD, CFG_MODE, CFG_QTHRESH = 1, 2, 5
CMD_BIND, CMD_PF_UNBIND, CMD_PF_BIND = 1, 4, 3
COPY_PACKET = 2
ATTR_PAYLOAD, ATTR_PREFIX = 9, 10
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}

Refusal = Callable[[str, str, int | None, str], None]  # (name or "", address, port, rule)


def nflog_rule(match: str, prefix: str) -> str:
    """The iptables-restore line that logs what ``match`` (say ``-A OUTPUT -d X``) is about
    to refuse, at most 5 a second (bursts of 10), under ``prefix``."""
    text = prefix.replace('"', "")[:PREFIX_MAX]
    return (f'{match} -m limit --limit 5/sec --limit-burst 10 -j NFLOG --nflog-group {GROUP} '
            f'--nflog-prefix "{text}" --nflog-size {COPY}')


@dataclass(frozen=True)
class Refused:
    address: str
    port: int | None
    protocol: str
    rule: str


def _attrs(data: bytes) -> dict[int, bytes]:
    found, pos = {}, 0
    while pos + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, pos)
        if size < 4:
            break
        found[kind & 0x3FFF] = data[pos + 4:pos + size]
        pos += (size + 3) & ~3
    return found


def parse(data: bytes) -> list[Refused]:
    """The refused packets in what one recv() of the socket returned (pure)."""
    out, pos = [], 0
    while pos + 16 <= len(data):
        size, kind = struct.unpack_from("=IH", data, pos)
        if size < 16 or pos + size > len(data):
            break
        if kind == MSG_PACKET:
            attrs = _attrs(data[pos + 20:pos + size])  # after nlmsghdr and nfgenmsg
            packet = attrs.get(ATTR_PAYLOAD, b"")
            rule = attrs.get(ATTR_PREFIX, b"").split(b"\0", 1)[0].decode(errors="replace")
            if len(packet) >= 20 and packet[0] >> 4 == 4:
                header = (packet[0] & 0xF) * 4
                protocol = PROTOCOLS.get(packet[9], str(packet[9]))
                port = (int.from_bytes(packet[header + 2:header + 4])
                        if protocol in ("tcp", "udp") and len(packet) >= header + 4 else None)
                out.append(Refused(socket.inet_ntoa(packet[16:20]), port, protocol,
                                   rule or "refused"))
        pos += (size + 3) & ~3
    return out


def _config(family: int, group: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("!BBH", family, 0, group) + attrs
    return struct.pack("=IHHII", 16 + len(body), MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq,
                       0) + body


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _command(sock: socket.socket, family: int, group: int, attrs: bytes, seq: int,
             allowed: tuple[int, ...] = ()) -> None:
    sock.send(_config(family, group, attrs, seq))
    reply = sock.recv(4096)
    size, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR and len(reply) >= 20:
        code = -struct.unpack_from("=i", reply, 16)[0]
        if code and code not in allowed:
            raise OSError(code, f"nflog configuration: {os.strerror(code)}")


def _open_here() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        sock.settimeout(2)
        # (kernels before 3.17 want the family bound; later ones ignore it)
        _command(sock, socket.AF_INET, 0, _attr(CFG_CMD, bytes([CMD_PF_UNBIND])), 1,
                 allowed=(errno.EINVAL, errno.ENOENT))
        _command(sock, socket.AF_INET, 0, _attr(CFG_CMD, bytes([CMD_PF_BIND])), 2,
                 allowed=(errno.EEXIST,))
        _command(sock, socket.AF_UNSPEC, GROUP, _attr(CFG_CMD, bytes([CMD_BIND])), 3)
        _command(sock, socket.AF_UNSPEC, GROUP,
                 _attr(CFG_MODE, struct.pack("!IBB", COPY, COPY_PACKET, 0)), 4)
        # each packet at once (by default the kernel holds up to 100, or a second)
        _command(sock, socket.AF_UNSPEC, GROUP, _attr(CFG_QTHRESH, struct.pack("!I", 1)), 5)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def open_in(netns_path: str) -> socket.socket:
    """The nflog socket, opened in the namespace at ``netns_path`` by a thread of its own
    (setns changes only the calling thread, which then ends)."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[socket.socket | BaseException] = []

    def inside() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns: {os.strerror(code)}")
            finally:
                os.close(fd)
            result.append(_open_here())
        except BaseException as exc:  # handed to the caller
            result.append(exc)

    thread = threading.Thread(target=inside, name="sandport-nflog", daemon=True)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class Refusals:
    """The nflog sockets of this server's running sandboxes."""

    def __init__(self) -> None:
        self._watched: dict[str, tuple[int, socket.socket, Refusal]] = {}

    async def watch(self, sandbox_id: str, netns_path: str, on_refused: Refusal) -> None:
        """Log the sandbox's refused packets (again, if its namespace is a new one)."""
        try:
            inode = os.stat(netns_path).st_ino
        except OSError:
            return
        found = self._watched.get(sandbox_id)
        if found is not None and found[0] == inode:
            self._watched[sandbox_id] = (inode, found[1], on_refused)
            return
        self.stop(sandbox_id)
        try:
            sock = await asyncio.to_thread(open_in, netns_path)
        except OSError as exc:
            log.warning("sandbox %s: its refused packets will not be logged: %s", sandbox_id,
                        exc)
            return
        self._watched[sandbox_id] = (inode, sock, on_refused)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read, sandbox_id)

    def _read(self, sandbox_id: str) -> None:
        found = self._watched.get(sandbox_id)
        if found is None:
            return
        _, sock, on_refused = found
        for _ in range(64):  # then the loop's other work, and back here
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped some: go on
                    continue
                log.warning("sandbox %s: its nflog socket failed: %s", sandbox_id, exc)
                self.stop(sandbox_id)
                return
            for refused in parse(data):
                rule = refused.rule if refused.protocol == "tcp" else \
                    f"{refused.rule} ({refused.protocol})"
                on_refused("", refused.address, refused.port, rule)

    def stop(self, sandbox_id: str) -> None:
        found = self._watched.pop(sandbox_id, None)
        if found is not None:
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                asyncio.get_running_loop().remove_reader(found[1].fileno())
            found[1].close()

    def stop_all(self) -> None:
        for sandbox_id in list(self._watched):
            self.stop(sandbox_id)
