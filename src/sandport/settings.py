"""Settings value objects, parsed once per process from flags, ``SANDPORT_*`` and a file.

Precedence: command-line flag > environment > config file (TOML) > default. Nothing else
in the package reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ValidationFailed
from .proxy.urls import PublicUrls

Upstream = tuple[str, int]


def parse_upstream(text: str) -> Upstream:
    """``ADDR`` or ``ADDR:PORT`` (``[v6]:PORT``): an upstream resolver's address."""
    host, port = text.strip(), 53
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif host.count(":") == 1:
        host, _, given = host.partition(":")
        port = int(given)
    ipaddress.ip_address(host)  # ValueError unless an address
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return host, port

DEFAULT_BASE_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What the SDK and CLI client need: where the server is and which key to send."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    timeout_s: float = 60.0

    @classmethod
    def load(
        cls,
        base_url: str | None = None,
        api_key: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ClientSettings:
        env = os.environ if environ is None else environ
        return cls(
            base_url=(base_url or env.get("SANDPORT_BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
            api_key=api_key or env.get("SANDPORT_API_KEY") or None,
        )


@dataclass(frozen=True, slots=True)
class ServerSettings:
    data_dir: Path = Path("/var/lib/sandport")
    listen: str = "127.0.0.1:8080"
    images_dir: Path | None = None  # default: <data_dir>/images
    api_key: str | None = None  # the first API key, instead of a generated one
    build_images: tuple[str, ...] = ("python",)  # built at start when missing
    default_image: str = "python"
    # Registries (runtime/images/registry.py). Credentials: a Docker-format auth file (default
    # <data_dir>/registry-auth.json; Docker Hub's under "https://index.docker.io/v1/").
    registry_auth: Path | None = None
    registry_cas: tuple[str, ...] = ()  # "HOST[:PORT]=FILE": a CA trusted for that registry
    insecure_registries: tuple[str, ...] = ()  # "HOST:PORT" spoken to over plain HTTP
    registry_mirrors: tuple[str, ...] = ()  # "docker.io=URL": reached only through URL
    # "HOST[:PORT]" or "*.example.com": when given, the only registries pulls and pushes
    # may name (a caller could otherwise make the server connect to any host and port).
    registries_allowed: tuple[str, ...] = ()
    images_max_gib: float | None = None  # unused images beyond this are reclaimed, LRU first
    image_max_gib: float = 32.0  # one image's unpacked size, at most
    # Dockerfile builds (control/builder.py): a build, all its steps, ends within this; its
    # context (the tar sent) may be this large.
    build_timeout_s: float = 3600.0
    build_context_max_mib: int = 2048
    subnet: str = "10.77.0.0/16"  # sandboxes' private addresses, one /30 each
    # Where sandboxes' resolvers send their queries ("ADDR" or "ADDR:PORT"); default: the
    # host's own resolvers (the nameserver lines of /etc/resolv.conf).
    dns_upstreams: tuple[str, ...] = ()
    # Caps on every sandbox's network (control/netcaps.py): the most any may have
    # ("allow" | "deny" the internet), what a create that says nothing gets, and CIDRs no
    # policy opens (None: link-local and this host's own addresses and networks).
    internet_access: str = "allow"
    default_internet_access: bool = False
    never_allow: tuple[str, ...] | None = None
    runc: str = "runc"
    init_binary: Path = Path("/usr/bin/tini-static")
    seccomp_source: Path = Path("/usr/share/containers/seccomp.json")
    public_url: str | None = None  # the control API's URL; default: http(s)://<listen>
    # Sandbox ports' URLs; default: http(s)://{port}-{id}.localhost:<listen port>
    public_url_template: str | None = None
    # The edge serves HTTPS with this certificate chain and key (PEM; SIGHUP reloads them);
    # without, plain HTTP (a TLS terminator in front may still make the URLs https).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    browser_url_ttl_s: int = 600  # how long a browserUrl grant can be redeemed
    token_ttl_s: int = 3600  # how long a runtime token opens its sandbox (refresh for more)
    header_timeout_s: float = 15.0  # a request head must arrive within this
    # An idle kept-alive client connection is closed after this; so is a request, response or
    # tunnel through which no byte has moved for this long (see proxy/server.py).
    idle_timeout_s: float = 75.0
    # Edge connection limits (proxy/limits.py). Open connections per client address; the
    # address is a PROXY protocol header's or X-Forwarded-For's only from these CIDRs.
    max_connections_per_address: int = 512
    trusted_proxies: tuple[str, ...] = ()
    # A request body averaging under this many bytes/s over any window of this length is
    # cut with 408 (a gap-between-reads timeout alone lets a trickle through).
    min_body_rate: int = 256
    min_body_rate_window_s: float = 60.0
    # The open-files limit is raised to the hard limit at start; this caps it lower.
    max_open_files: int | None = None
    # Host-wide limits (control/admission.py). None: derived from the host at start.
    # Every sandbox's processes and threads together, enforced on the parent cgroup
    # (default: 3/4 of the host's pid_max / threads-max, the rest kept for the host).
    max_pids_total: int | None = None
    cgroup_parent: str = "sandport"  # sandboxes' cgroups are <parent>/<id>
    # memMiB of running and paused sandboxes may add up to (MemTotal − reserve) × this.
    memory_overcommit: float = 1.5
    memory_reserve_mib: int | None = None  # default: a tenth of MemTotal, at least 1 GiB
    # Output kept for processes, server-wide (default: an eighth of MemTotal, ≤ 512 MiB).
    buffer_memory_mib: int | None = None
    region: str = "us"
    default_timeout_minutes: int = 5
    # A sandbox that ended without a stop request (a crash, a host reboot) keeps its files
    # this long, then they are reclaimed.
    retain_ended_h: float = 24.0
    # diskSizeMiB enforced by a filesystem per sandbox (runtime/disks.py): "auto" where the
    # host can (else a warning, and sizes are only checked at create), "on" (refuse to
    # start without), "off".
    disk_limits: str = "auto"
    log_level: str = "info"
    test_crash_at: str | None = None  # tests only: a crash point (see crashpoints.py)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def image_root(self) -> Path:
        return self.images_dir or self.data_dir / "images"

    @property
    def registry_auth_file(self) -> Path:
        return self.registry_auth or self.data_dir / "registry-auth.json"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"{self._scheme}://{self.listen}").rstrip("/")

    @property
    def url_template(self) -> str:
        return self.public_url_template or \
            f"{self._scheme}://{{port}}-{{id}}.localhost:{self.port}"

    @property
    def _scheme(self) -> str:
        return "http" if self.tls_cert is None else "https"

    @property
    def control_socket(self) -> Path:
        """Where the control/runtime API listens for the edge proxy (not public)."""
        return self.data_dir / "run" / "api.sock"

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ServerSettings:
        """Merge the sources; raise ValidationFailed naming the bad setting."""
        env = os.environ if environ is None else environ
        given = {k: v for k, v in (flags or {}).items() if v is not None}
        config_path = given.pop("config", None) or env.get("SANDPORT_CONFIG")
        merged: dict[str, Any] = _read_config(Path(config_path)) if config_path else {}
        for f in fields(cls):
            from_env = env.get("SANDPORT_" + f.name.upper())
            if from_env:
                merged[f.name] = from_env
        merged.update(given)
        unknown = set(merged) - {f.name for f in fields(cls)}
        if unknown:
            raise ValidationFailed(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**{k: _coerce(k, v) for k, v in merged.items()})._checked()

    def _checked(self) -> ServerSettings:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValidationFailed(f"listen must be HOST:PORT, got {self.listen!r}")
        try:
            net = ipaddress.ip_network(self.subnet)
        except ValueError as exc:
            raise ValidationFailed(f"subnet: {exc}") from None
        if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 24:
            raise ValidationFailed("subnet must be an IPv4 network of /24 or larger")
        if self.default_timeout_minutes < 1:
            raise ValidationFailed("default_timeout_minutes must be at least 1")
        PublicUrls.parse(self.url_template)
        for name in ("browser_url_ttl_s", "token_ttl_s", "header_timeout_s", "idle_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValidationFailed(f"{name} must be positive")
        if self.retain_ended_h < 0:
            raise ValidationFailed("retain_ended_h must not be negative")
        if self.disk_limits not in ("auto", "on", "off"):
            raise ValidationFailed("disk_limits must be auto, on or off")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValidationFailed("tls_cert and tls_key go together")
        _check_limits(self)
        _check_edge_limits(self)
        _check_registries(self)
        return self


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ValidationFailed(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationFailed(f"config file {path}: {exc}") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


_CGROUP_PARENT_RE = re.compile(r"sandport(-[a-z0-9]{1,32})?")
_LIMIT_INTS = ("max_pids_total", "memory_reserve_mib", "buffer_memory_mib")


def _check_limits(settings: ServerSettings) -> None:
    # Cleanup finds sandboxes' cgroups as /sys/fs/cgroup/*/sandport*/<id>.
    if not _CGROUP_PARENT_RE.fullmatch(settings.cgroup_parent):
        raise ValidationFailed("cgroup_parent must be sandport or sandport-<a-z0-9>")
    if settings.max_pids_total is not None and settings.max_pids_total < 64:
        raise ValidationFailed("max_pids_total must be at least 64")
    if not 0 < settings.memory_overcommit <= 100:
        raise ValidationFailed("memory_overcommit must be a number above 0 (1.5: 50 % more)")
    for name in ("memory_reserve_mib", "buffer_memory_mib"):
        if (getattr(settings, name) or 0) < 0:
            raise ValidationFailed(f"{name} must not be negative")


def _check_registries(settings: ServerSettings) -> None:
    for name in ("registry_cas", "registry_mirrors"):
        for item in getattr(settings, name):
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise ValidationFailed(f"{name}: {item!r} must be HOST=VALUE")
    for item in settings.registry_mirrors:
        if not item.partition("=")[2].startswith(("http://", "https://")):
            raise ValidationFailed(f"registry_mirrors: {item!r}: the mirror must be a URL")
    if settings.images_max_gib is not None and settings.images_max_gib <= 0:
        raise ValidationFailed("images_max_gib must be positive")
    if settings.image_max_gib <= 0:
        raise ValidationFailed("image_max_gib must be positive")
    if settings.internet_access not in ("allow", "deny"):
        raise ValidationFailed("internet_access must be allow or deny")
    for cidr in settings.never_allow or ():
        if cidr in ("link-local", "host"):
            continue
        try:
            ipaddress.IPv4Network(cidr, strict=False)
        except ValueError:
            raise ValidationFailed(f"never_allow: {cidr!r} is not an IPv4 address or "
                                   "CIDR") from None
    for upstream in settings.dns_upstreams:
        try:
            parse_upstream(upstream)
        except ValueError:
            raise ValidationFailed(f"dns_upstreams: {upstream!r} must be an address, or "
                                   "ADDRESS:PORT") from None
    if settings.build_timeout_s <= 0 or settings.build_context_max_mib <= 0:
        raise ValidationFailed("build_timeout_s and build_context_max_mib must be positive")


_EDGE_INTS = ("max_connections_per_address", "min_body_rate", "max_open_files",
              "build_context_max_mib")


def _check_edge_limits(settings: ServerSettings) -> None:
    if settings.max_connections_per_address < 1:
        raise ValidationFailed("max_connections_per_address must be at least 1")
    if settings.min_body_rate < 0:
        raise ValidationFailed("min_body_rate must not be negative (0: no minimum)")
    if settings.min_body_rate_window_s <= 0:
        raise ValidationFailed("min_body_rate_window_s must be positive")
    if settings.max_open_files is not None and settings.max_open_files < 256:
        raise ValidationFailed("max_open_files must be at least 256")
    for cidr in settings.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ValidationFailed(f"trusted_proxies: {exc}") from None


def _coerce(name: str, value: Any) -> Any:
    if name in ("data_dir", "images_dir", "init_binary", "seccomp_source", "registry_auth",
                "tls_cert", "tls_key"):
        return Path(value)
    if name in _EDGE_INTS:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValidationFailed(f"{name} must be an integer") from None
    if name == "min_body_rate_window_s":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValidationFailed(f"{name} must be a number") from None
    if name in ("trusted_proxies", "registry_cas", "insecure_registries", "registry_mirrors",
                "registries_allowed", "dns_upstreams", "never_allow"):
        if isinstance(value, str):
            return tuple(v for v in value.replace(",", " ").split() if v)
        return tuple(value)
    if name in _LIMIT_INTS or name == "memory_overcommit":
        try:
            return int(value) if name in _LIMIT_INTS else float(value)
        except (TypeError, ValueError):
            raise ValidationFailed(f"{name} must be a number") from None
    if name == "default_internet_access" and isinstance(value, str):
        if value.lower() not in ("on", "off", "true", "false", "1", "0"):
            raise ValidationFailed("default_internet_access must be on or off")
        return value.lower() in ("on", "true", "1")
    if name == "build_images":
        if isinstance(value, str):
            return tuple(v for v in value.replace(",", " ").split() if v)
        return tuple(value)
    if name in ("default_timeout_minutes", "browser_url_ttl_s", "token_ttl_s"):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValidationFailed(f"{name} must be an integer") from None
    if name in ("header_timeout_s", "idle_timeout_s", "retain_ended_h", "images_max_gib",
                "image_max_gib", "build_timeout_s"):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValidationFailed(f"{name} must be a number") from None
    return value
