"""Request parsing for the control API: pure functions from JSON to typed requests.

Every rule a client can break lives here, with the message it gets back; route handlers
only call these and the services.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from .. import netnames
from ..errors import Forbidden, ValidationFailed
from ..models import SANDBOX_STATUSES
from ..runtime.images.reference import parse_reference

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_TIMEOUT_MINUTES = 7 * 24 * 60
MIN_MEM_MIB = 64
DISK_RANGE_MIB = (256, 1024 * 1024)
MAX_ENV_VARS = 256
MAX_ENV_BYTES = 128 * 1024
MAX_LIST_LIMIT = 100
MAX_CIDRS = 256
MIN_IDLE_S = 5
DEFAULT_PIDS_LIMIT = 1024  # processes and threads of one sandbox (pidsLimit)
MIN_PIDS_LIMIT = 32  # its init, agent and a shell or two
EGRESS_FIELDS = ("allowInternetAccess", "allowOut", "denyOut")

EXPOSABLE_PORTS = (1024, 65535)
RUNTIME_PORT = 4001  # the runtime API's; never exposed
ENVD_PORT = 49983  # the E2B face's in-sandbox API's; never exposed either
_MASK_RE = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")

# Accepted for compatibility with Hyperbrowser clients, which send them (usually null).
_IGNORED_WHEN_NULL = ("snapshotName", "snapshotId", "region")


@dataclass(frozen=True, slots=True)
class HostLimits:
    cpus: int
    mem_mib: int
    pids: int = 32768  # the host's pid_max: no sandbox may ask for more processes


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """Ingress (what the proxy lets in) and egress (what the sandbox's packet filter lets
    out) of one sandbox."""

    allow_ports: tuple[int, ...] | None = None  # ingress: only these may be exposed
    mask_request_host: str | None = None  # e.g. "localhost:${PORT}"
    open_ports: bool = False  # every listening port answers without an expose
    allow_internet_access: bool = False  # egress to public addresses
    allow_out: tuple[str, ...] = ()  # CIDRs always reachable (even link-local, private)
    deny_out: tuple[str, ...] = ()  # CIDRs never reachable (unless in allow_out)
    internet_capped: bool = False  # asked for the internet, which the operator's cap denies
    allow_names: tuple[str, ...] = ()  # host names and *.wildcards in allowOut (netnames.py)
    # open ports answer only with a credential of the sandbox (E2B's allowPublicTraffic
    # false: its traffic token), as auth: true ports do
    open_ports_auth: bool = False

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"openPorts": self.open_ports,
                                "allowInternetAccess": self.allow_internet_access,
                                "allowOut": [*self.allow_out, *self.allow_names],
                                "denyOut": list(self.deny_out)}
        if self.allow_ports is not None:
            wire["ingress"] = {"allowPorts": list(self.allow_ports)}
        if self.mask_request_host is not None:
            wire["maskRequestHost"] = self.mask_request_host
        if self.internet_capped:
            wire["internetAccessCapped"] = True
        if self.open_ports_auth:
            wire["openPortsAuth"] = True
        return wire

    def allows(self, port: int) -> bool:
        return self.allow_ports is None or port in self.allow_ports


@dataclass(frozen=True, slots=True)
class ExposePort:
    port: int
    auth: bool = False


@dataclass(frozen=True, slots=True)
class CreateSandbox:
    image_name: str
    timeout_minutes: int
    vcpus: int
    mem_mib: int
    disk_size_mib: int
    env: dict[str, str] = field(default_factory=dict)
    exposed_ports: tuple[ExposePort, ...] = ()
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    on_timeout: str = "stop"
    auto_resume: bool = False
    idle_timeout_s: int | None = None
    on_idle: str = "pause"
    pids_limit: int = DEFAULT_PIDS_LIMIT
    snapshot: tuple[str, str | None] | None = None  # (snapshotName, snapshotId): from it
    internet_asked: bool | None = None  # allowInternetAccess as given; None: not said
    metadata: dict[str, str] = field(default_factory=dict)
    timeout_s: int | None = None  # the deadline to the second (else timeout_minutes)


@dataclass(frozen=True, slots=True)
class ListSandboxes:
    statuses: tuple[str, ...] | None
    page: int
    limit: int


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed(f"{what} must be a JSON object")
    return body


def _int(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(f"{key} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValidationFailed(f"{key} must be between {low} and {high}, got {value}")
    return value


def parse_env(value: Any, key: str = "env") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailed(f"{key} must be an object of string values")
    if len(value) > MAX_ENV_VARS:
        raise ValidationFailed(f"{key} has more than {MAX_ENV_VARS} variables")
    size = 0
    for name, text in value.items():
        if not ENV_NAME_RE.fullmatch(name):  # match() would let "A\n" through ($)
            raise ValidationFailed(f"{key}: {name!r} is not a valid variable name")
        if not isinstance(text, str) or "\x00" in text:
            raise ValidationFailed(f"{key}.{name} must be a string without NUL bytes")
        size += len(name) + len(text)
    if size > MAX_ENV_BYTES:
        raise ValidationFailed(f"{key} is larger than {MAX_ENV_BYTES} bytes")
    return dict(value)


_LOCAL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}(?::[\w][\w.-]{0,127})?")


def parse_create(body: Any, limits: HostLimits, default_image: str,
                 default_timeout: int) -> CreateSandbox:
    body = _object(body, "the request body")
    known = {"imageName", "timeoutMinutes", "vcpus", "memMiB", "diskSizeMiB", "env",
             "exposedPorts", "network", "onTimeout", "autoResume", "idleTimeoutSeconds",
             "onIdle", "pidsLimit", "startCmd", "readyCmd", "readyTimeoutMs", *EGRESS_FIELDS,
             *_IGNORED_WHEN_NULL}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValidationFailed(
            f"unknown field(s): {', '.join(unknown)}; accepted: {', '.join(sorted(known))}"
        )
    snapshot, snapshot_id = body.get("snapshotName"), body.get("snapshotId")
    if snapshot is not None and (not isinstance(snapshot, str) or not _LOCAL_NAME.fullmatch(
            snapshot)):
        raise ValidationFailed("snapshotName must name a snapshot of this team, such as "
                               "'myapp-ready'")
    if snapshot_id is not None and (not isinstance(snapshot_id, str) or snapshot is None):
        raise ValidationFailed("snapshotId goes with snapshotName and is a string")
    if snapshot is not None and body.get("imageName") is not None:
        raise ValidationFailed("give imageName or snapshotName, not both")
    if body.get("region") is not None and not isinstance(body["region"], str):
        raise ValidationFailed("region must be a string")
    # Hyperbrowser sends the egress fields at the top level; they may also be in network.
    egress = {k: body[k] for k in EGRESS_FIELDS if body.get(k) is not None}
    given = _object(body.get("network") or {}, "network")
    _not_capped_by_user(given)
    network = parse_network({**given, **egress})
    exposed = body.get("exposedPorts")
    if exposed is None:
        exposed = []
    if not isinstance(exposed, list):
        raise ValidationFailed("exposedPorts must be a list of {port, auth} objects")
    ports = tuple(parse_expose(item, f"exposedPorts[{i}]") for i, item in enumerate(exposed))
    if len({p.port for p in ports}) != len(ports):
        raise ValidationFailed("exposedPorts lists a port twice")
    for item in ports:
        check_ingress(network, item.port)
    image = body.get("imageName")
    if image is None:
        image = snapshot or default_image
    if not isinstance(image, str):
        raise ValidationFailed("imageName must be an image name such as 'python' or a "
                               "reference such as 'node:22'")
    if not _LOCAL_NAME.fullmatch(image):
        try:
            parse_reference(image)  # anything else must be a valid registry reference
        except ValidationFailed as exc:
            raise ValidationFailed(f"imageName: {exc.message}") from None
    return CreateSandbox(
        image_name=image,
        timeout_minutes=_int(body, "timeoutMinutes", default_timeout, 1, MAX_TIMEOUT_MINUTES),
        vcpus=_int(body, "vcpus", 1, 1, limits.cpus),
        mem_mib=_int(body, "memMiB", min(512, limits.mem_mib), MIN_MEM_MIB, limits.mem_mib),
        disk_size_mib=_int(body, "diskSizeMiB", 4096, *DISK_RANGE_MIB),
        env=parse_env(body.get("env")),
        exposed_ports=ports,
        network=network,
        on_timeout=parse_on_timeout(body.get("onTimeout")),
        auto_resume=_bool(body, "autoResume"),
        idle_timeout_s=_optional_int(body, "idleTimeoutSeconds", MIN_IDLE_S,
                                     60 * MAX_TIMEOUT_MINUTES),
        on_idle=parse_on_timeout(body.get("onIdle"), "onIdle", "pause"),
        pids_limit=_int(body, "pidsLimit", min(DEFAULT_PIDS_LIMIT, limits.pids),
                        MIN_PIDS_LIMIT, limits.pids),
        snapshot=(snapshot, snapshot_id) if snapshot is not None else None,
        internet_asked=internet_asked(body),
    )


def internet_asked(body: dict[str, Any]) -> bool | None:
    """``allowInternetAccess`` as a create gave it, at the top level or in ``network``
    (None: not given, or null); parse_network has checked it is a boolean."""
    network = body.get("network")
    for source in (body, network if isinstance(network, dict) else {}):
        if isinstance(source.get("allowInternetAccess"), bool):
            return bool(source["allowInternetAccess"])
    return None


def _optional_int(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    return None if body.get(key) is None else _int(body, key, 0, low, high)


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValidationFailed(f"{key} must be true or false")
    return value


def parse_on_timeout(value: Any, key: str = "onTimeout", default: str = "stop") -> str:
    if value is None:
        return default
    if value not in ("stop", "pause"):
        raise ValidationFailed(f'{key} must be "stop" or "pause"')
    return str(value)


def parse_set_timeout(body: Any) -> int:
    """``{"timeoutMinutes": N}``: the new deadline is N minutes from now."""
    body = _object(body, "the request body")
    unknown = sorted(set(body) - {"timeoutMinutes"})
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(unknown)}")
    if "timeoutMinutes" not in body:
        raise ValidationFailed("timeoutMinutes is required")
    return _int(body, "timeoutMinutes", 1, 1, MAX_TIMEOUT_MINUTES)


def parse_revoke(body: Any) -> str | None:
    """``{"token": "..."}``: that token; ``{}``: every token of the sandbox."""
    body = _object(body, "the request body")
    unknown = sorted(set(body) - {"token"})
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(unknown)}")
    token = body.get("token")
    if token is None:
        return None
    if not isinstance(token, str) or not token:
        raise ValidationFailed("token must be a non-empty string")
    return token


def parse_port(value: Any, key: str = "port") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(f"{key} must be an integer")
    if value in (RUNTIME_PORT, ENVD_PORT):
        raise ValidationFailed(f"{key}: {value} is reserved for the runtime API"
                               + (" (E2B's envd)" if value == ENVD_PORT else ""))
    low, high = EXPOSABLE_PORTS
    if not low <= value <= high:
        raise ValidationFailed(f"{key} must be between {low} and {high}, got {value}")
    return value


def parse_expose(body: Any, what: str = "the request body") -> ExposePort:
    body = _object(body, what)
    unknown = sorted(set(body) - {"port", "auth"})
    if unknown:
        raise ValidationFailed(f"{what}: unknown field(s): {', '.join(unknown)}")
    auth = body.get("auth", False)
    if auth is None:
        auth = False
    if not isinstance(auth, bool):
        raise ValidationFailed(f"{what}: auth must be true or false")
    return ExposePort(parse_port(body.get("port"), f"{what}: port"), auth)


def parse_unexpose(body: Any) -> int:
    body = _object(body, "the request body")
    unknown = sorted(set(body) - {"port"})
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(unknown)}")
    return parse_port(body.get("port"))


def check_ingress(network: NetworkPolicy, port: int) -> None:
    if not network.allows(port):
        allowed = ", ".join(str(p) for p in network.allow_ports or ())
        raise Forbidden(
            f"port {port} is not in this sandbox's network.ingress.allowPorts ({allowed})"
        )


def parse_network(value: Any) -> NetworkPolicy:
    if value is None:
        return NetworkPolicy()
    body = _object(value, "network")
    unknown = sorted(set(body) - {"ingress", "maskRequestHost", "openPorts",
                                  "openPortsAuth", "internetAccessCapped", *EGRESS_FIELDS})
    if unknown:
        raise ValidationFailed(f"network: unknown field(s): {', '.join(unknown)}")
    allow: tuple[int, ...] | None = None
    ingress = body.get("ingress")
    if ingress is not None:
        ingress = _object(ingress, "network.ingress")
        if set(ingress) - {"allowPorts"}:
            raise ValidationFailed("network.ingress accepts only allowPorts")
        ports = ingress.get("allowPorts")
        if ports is not None:
            if not isinstance(ports, list) or len(ports) > 256:
                raise ValidationFailed("network.ingress.allowPorts must be a list of ports")
            allow = tuple(sorted({parse_port(p, "network.ingress.allowPorts") for p in ports}))
    mask = body.get("maskRequestHost")
    if mask is not None and (not isinstance(mask, str) or
                             not _MASK_RE.match(mask.replace("${PORT}", "1"))):
        raise ValidationFailed(
            "network.maskRequestHost must be a host[:port], e.g. \"localhost:${PORT}\""
        )
    open_ports = body.get("openPorts", False)
    if not isinstance(open_ports, bool):
        raise ValidationFailed("network.openPorts must be true or false")
    open_ports_auth = body.get("openPortsAuth", False)
    if not isinstance(open_ports_auth, bool):
        raise ValidationFailed("network.openPortsAuth must be true or false")
    internet = body.get("allowInternetAccess", False)
    if internet is None:
        internet = False
    if not isinstance(internet, bool):
        raise ValidationFailed("allowInternetAccess must be true or false")
    allow_cidrs, names = _destinations(body.get("allowOut"), "allowOut", names=True)
    deny_cidrs, _ = _destinations(body.get("denyOut"), "denyOut", names=False)
    return NetworkPolicy(allow, mask, open_ports, internet, allow_cidrs, deny_cidrs,
                         # as stored; the caps say it anew for every policy asked for
                         body.get("internetAccessCapped") is True, names,
                         open_ports_auth=open_ports_auth)


def parse_network_update(body: Any, current: NetworkPolicy) -> NetworkPolicy:
    """``PUT /api/sandbox/{id}/network``: the fields given replace the current ones."""
    body = _object(body, "the request body")
    _not_capped_by_user(body)
    return parse_network({**current.to_wire(), **body})


def _not_capped_by_user(body: dict[str, Any]) -> None:
    if "internetAccessCapped" in body:
        raise ValidationFailed("network.internetAccessCapped is what the server says of a "
                               "policy (its --internet-access cap), not a field to send")


def _destinations(value: Any, field: str, names: bool
                  ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IPv4 networks, normalised ("10.1.2.3/8" → "10.0.0.0/8") and sorted; host names and
    ``*.`` wildcards, lower case, in the order given), at most MAX_CIDRS entries together;
    a bad entry is a 400 naming its index."""
    if value is None:
        return (), ()
    if not isinstance(value, list) or len(value) > MAX_CIDRS:
        what = "IPv4 addresses, CIDRs and host names" if names else "IPv4 addresses or CIDRs"
        raise ValidationFailed(f"{field} must be a list of at most {MAX_CIDRS} {what}")
    nets: set[ipaddress.IPv4Network] = set()
    found: dict[str, None] = {}
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(item, str):
            raise ValidationFailed(f"{where}: {item!r} is not an IPv4 address, CIDR or name")
        if netnames.is_name_entry(item):
            if not names:
                raise ValidationFailed(
                    f"{where}: {item!r} is a host name; {field} takes addresses and CIDRs "
                    "only (a name can change address after it is checked)")
            try:
                found[netnames.normal_name(item)] = None
            except netnames.BadName as exc:
                raise ValidationFailed(f"{where}: {item!r} is not a host name: {exc}"
                                       ) from None
            continue
        try:
            net = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ValidationFailed(f"{where}: {item!r} is not an IPv4 address or CIDR"
                                   ) from None
        if not isinstance(net, ipaddress.IPv4Network):
            raise ValidationFailed(f"{where}: {item!r}: sandboxes have IPv4 only")
        nets.add(net)
    return tuple(str(n) for n in sorted(nets)), tuple(found)


def network_from_wire(wire: dict[str, Any]) -> NetworkPolicy:
    """The stored policy (written by NetworkPolicy.to_wire) back as a value."""
    return parse_network(wire) if wire else NetworkPolicy()


def parse_list(query: dict[str, str]) -> ListSandboxes:
    unknown = sorted(set(query) - {"status", "page", "limit"})
    if unknown:
        raise ValidationFailed(f"unknown query parameter(s): {', '.join(unknown)}")
    status = query.get("status") or None
    if status is not None and status not in SANDBOX_STATUSES:
        raise ValidationFailed(f"status must be one of {', '.join(SANDBOX_STATUSES)}")
    numbers = {}
    for key, default, high in (("page", 1, 1_000_000), ("limit", 10, MAX_LIST_LIMIT)):
        raw = query.get(key)
        if raw is None or raw == "":
            numbers[key] = default
        elif not re.fullmatch(r"[0-9]{1,9}", raw) or not 1 <= int(raw) <= high:
            raise ValidationFailed(f"{key} must be an integer between 1 and {high}")
        else:
            numbers[key] = int(raw)
    return ListSandboxes(
        statuses=_record_statuses(status), page=numbers["page"], limit=numbers["limit"]
    )


def _record_statuses(wire_status: str | None) -> tuple[str, ...] | None:
    """Store statuses shown on the wire as ``wire_status`` (see lifecycle.wire_status)."""
    if wire_status is None:
        return None
    return {"active": ("creating", "active", "stopping"), "paused": ("paused",),
            "closed": ("closed",),
            "error": ("error",)}[wire_status]
