"""The E2B face's wire shapes (pure): what the official ``e2b`` SDK sends to the control
API, parsed into the services' requests, and the records rendered as it reads them.

Names follow E2B's API: ``sandboxID``, ``templateID``, ``envVars``, ``timeout`` in
seconds, ``metadata``, ``state`` ``running``/``paused``, errors ``{code, message}``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import re
from typing import Any
from urllib.parse import parse_qsl, unquote

from ..control.requests import (
    MAX_TIMEOUT_MINUTES,
    CreateSandbox,
    NetworkPolicy,
    network_from_wire,
    parse_env,
    parse_network,
)
from ..errors import ValidationFailed
from ..models import iso
from ..runtime.images.layerstore import ImageRecord
from ..store import SandboxRecord

CLIENT_ID = "sandport"  # E2B's clientID names the node; one host here
# The in-sandbox API's version the SDK is told (e2b/envd/versions.py gates on it): every
# feature gated at or below it is served (stdin 0.3.0, the image's default user 0.4.0,
# closing stdin 0.5.2, octet-stream uploads 0.5.7); file metadata (0.6.2) is not yet.
ENVD_VERSION = "0.5.7"
DEFAULT_TIMEOUT_S = 300  # E2B's
MAX_TIMEOUT_S = 60 * MAX_TIMEOUT_MINUTES
MAX_METADATA = 64
MAX_PAGE = 100
DEFAULT_TEMPLATE = "base"  # E2B's; here the team's BASE_IMAGE (e2b/templates.py)
BASE_IMAGE = "e2b-base"
STATES = {"running": ("active", "creating"), "paused": ("paused",)}

_CREATE_FIELDS = {"templateID", "timeout", "metadata", "envVars", "autoPause",
                  "autoPauseMemory", "autoResume", "allow_internet_access", "network"}
_NETWORK_FIELDS = {"allowOut", "denyOut", "allowPublicTraffic", "maskRequestHost"}
_KEY = re.compile(r"[\w.\-:/]{1,256}")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationFailed(f"{what} must be a JSON object")
    return value


def _unsupported(fields: set[str], what: str) -> None:
    if fields:
        raise ValidationFailed(f"{what}: not supported by this server: "
                               f"{', '.join(sorted(fields))}")


def parse_metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    found = _object(value, "metadata")
    if len(found) > MAX_METADATA:
        raise ValidationFailed(f"metadata holds at most {MAX_METADATA} entries")
    for key, item in found.items():
        if not _KEY.fullmatch(key) or not isinstance(item, str) or len(item) > 1024:
            raise ValidationFailed(f"metadata[{key[:40]!r}]: keys are 1-256 letters, digits "
                                   "and ._-:/, values strings of at most 1024 characters")
    return dict(found)


def parse_timeout(value: Any, default: int | None = DEFAULT_TIMEOUT_S) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or \
            not 1 <= value <= MAX_TIMEOUT_S:
        raise ValidationFailed(f"timeout must be a number of seconds, 1 to {MAX_TIMEOUT_S}")
    return value


def _bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise ValidationFailed(f"{key} must be true or false")
    return value


def parse_network_fields(body: dict[str, Any]) -> NetworkPolicy:
    """E2B's ``network`` (with ``allow_internet_access`` beside it) as a policy. Every port
    answers without an expose, as on E2B; ``allowPublicTraffic: false`` (ports behind
    E2B's traffic token) makes them answer only with that token (or the sandbox's runtime
    token, as an ``auth: true`` port)."""
    network = _object(body.get("network") or {}, "network")
    _unsupported(set(network) - _NETWORK_FIELDS, "network")
    public = _bool(network, "allowPublicTraffic")
    base = {"openPorts": True, "openPortsAuth": public is False or None,
            "allowOut": network.get("allowOut"),
            "denyOut": network.get("denyOut"), "maskRequestHost": network.get("maskRequestHost")}
    internet = _bool(body, "allow_internet_access")
    if internet is not None:
        base["allowInternetAccess"] = internet
    return parse_network({k: v for k, v in base.items() if v is not None})


def parse_network_update(body: Any, current: NetworkPolicy) -> NetworkPolicy:
    """``PUT /sandboxes/{id}/network``: ``allowOut``, ``denyOut``, ``allow_internet_access``;
    the ones left out are cleared (the internet then goes back to the server's default)."""
    body = _object(body, "the request body")
    _unsupported(set(body) - {"allowOut", "denyOut", "allow_internet_access"}, "the request")
    policy = parse_network_fields({"network": {k: body[k] for k in ("allowOut", "denyOut")
                                               if body.get(k) is not None},
                                   "allow_internet_access": body.get("allow_internet_access")})
    return dataclasses.replace(policy, mask_request_host=current.mask_request_host,
                               allow_ports=current.allow_ports,
                               open_ports_auth=current.open_ports_auth)


def parse_new_sandbox(body: Any, base: CreateSandbox) -> CreateSandbox:
    """``POST /v2/sandboxes`` → the create, on ``base`` (the server's defaults)."""
    body = _object(body, "the request body")
    _unsupported(set(body) - _CREATE_FIELDS, "the request")
    template = body.get("templateID", DEFAULT_TEMPLATE)
    if not isinstance(template, str) or not template:
        raise ValidationFailed("templateID must name a template (an image of this server)")
    image = BASE_IMAGE if template == DEFAULT_TEMPLATE else template
    auto_pause = _bool(body, "autoPause")
    if _bool(body, "autoPauseMemory") is False:
        raise ValidationFailed("autoPauseMemory false (a filesystem-only pause) is not "
                               "supported: a pause here keeps the memory")
    resume = body.get("autoResume")
    if resume is not None:
        resume = _object(resume, "autoResume")
        _unsupported(set(resume) - {"enabled"}, "autoResume")
    resume_on = _bool(resume or {}, "enabled") or False
    seconds = parse_timeout(body.get("timeout"))
    network = parse_network_fields(body)
    return dataclasses.replace(
        base, image_name=image, timeout_minutes=max(1, -(-seconds // 60)), timeout_s=seconds,
        env=parse_env(body.get("envVars"), "envVars"), metadata=parse_metadata(
            body.get("metadata")), network=network,
        internet_asked=_bool(body, "allow_internet_access"),
        on_timeout="pause" if auto_pause else "stop", auto_resume=resume_on)


def parse_states(query: str | None) -> tuple[str, ...]:
    """``state=running,paused`` → the records' statuses (both when not said)."""
    names = [s for s in (query or "running,paused").split(",") if s]
    statuses: list[str] = []
    for name in names:
        if name not in STATES:
            raise ValidationFailed("state must be running and/or paused, comma-separated")
        statuses += STATES[name]
    return tuple(statuses)


def parse_metadata_query(query: str | None) -> dict[str, str]:
    """``metadata=k%3Dv%26k2%3Dv2`` (the SDK quotes each key and value, then encodes the
    pairs as a query string) → the pairs every listed sandbox must have."""
    if not query:
        return {}
    pairs = {unquote(k): unquote(v) for k, v in parse_qsl(query, keep_blank_values=True)}
    return parse_metadata(pairs)


def parse_template(query: str | None) -> str | None:
    """The image a ``template`` filter names (``base``: the team's base image, as at
    create)."""
    if query is None:
        return None
    return BASE_IMAGE if query == DEFAULT_TEMPLATE else query


def template_of(record: SandboxRecord) -> str:
    """The templateID the SDK is shown: ``base`` for the base image, as it asked."""
    return DEFAULT_TEMPLATE if record.image_name == BASE_IMAGE else record.image_name


def parse_time(query: str | None, what: str) -> float | None:
    """An ISO 8601 time with its offset → seconds since the epoch."""
    if query is None:
        return None
    try:
        when = datetime.datetime.fromisoformat(query)
    except ValueError:
        raise ValidationFailed(f"{what} must be an ISO 8601 time") from None
    if when.tzinfo is None:
        raise ValidationFailed(f"{what} must say its offset (Z or +hh:mm)")
    return when.timestamp()


def parse_limit(query: str | None) -> int:
    if query is None:
        return MAX_PAGE
    if not re.fullmatch(r"[0-9]{1,4}", query) or not 1 <= int(query) <= MAX_PAGE:
        raise ValidationFailed(f"limit must be 1 to {MAX_PAGE}")
    return int(query)


def next_token(record: SandboxRecord) -> str:
    """The page token after ``record`` (opaque to clients: where the next page starts)."""
    raw = json.dumps([record.created_at, record.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_next_token(token: str | None) -> tuple[float, str] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, sandbox_id = json.loads(raw)
        if isinstance(created, (int, float)) and isinstance(sandbox_id, str):
            return float(created), sandbox_id
    except (ValueError, binascii.Error, TypeError):
        pass
    raise ValidationFailed("nextToken is not a token this server gave")


def state(record: SandboxRecord) -> str:
    return "paused" if record.status == "paused" else "running"


def sandbox(record: SandboxRecord, domain: str | None, envd_token: str,
            traffic_token: str) -> dict[str, Any]:
    """The create and connect answer (E2B's ``Sandbox``), with the token its in-sandbox
    API wants, and the one its ports want when they are not public."""
    private = network_from_wire(record.network).open_ports_auth
    return {"sandboxID": record.id, "templateID": template_of(record), "clientID": CLIENT_ID,
            "envdVersion": ENVD_VERSION, "envdAccessToken": envd_token, "domain": domain,
            "trafficAccessToken": traffic_token if private else None}


def listed(record: SandboxRecord) -> dict[str, Any]:
    """One sandbox of a list (E2B's ``ListedSandbox``)."""
    return {"sandboxID": record.id, "templateID": template_of(record), "clientID": CLIENT_ID,
            "startedAt": iso(record.started_at or record.created_at),
            "endAt": iso(record.expires_at or record.created_at),
            "envdVersion": ENVD_VERSION, "cpuCount": record.vcpus,
            "memoryMB": record.mem_mib, "diskSizeMB": record.disk_size_mib,
            "state": state(record), "metadata": record.metadata}


def detail(record: SandboxRecord, domain: str | None) -> dict[str, Any]:
    """``GET /sandboxes/{id}`` (E2B's ``SandboxDetail``)."""
    policy = network_from_wire(record.network)
    network: dict[str, Any] = {"allowOut": [*policy.allow_out, *policy.allow_names],
                               "denyOut": list(policy.deny_out),
                               "allowPublicTraffic": not policy.open_ports_auth}
    if policy.mask_request_host:
        network["maskRequestHost"] = policy.mask_request_host
    return {**listed(record), "domain": domain,
            "allowInternetAccess": policy.allow_internet_access, "network": network,
            "lifecycle": {"autoResume": record.auto_resume,
                          "onTimeout": "pause" if record.on_timeout == "pause" else "kill"}}


def parse_unix(query: str | None, what: str) -> float | None:
    if query is None:
        return None
    if not re.fullmatch(r"[0-9]{1,12}", query):
        raise ValidationFailed(f"{what} must be a Unix time in seconds")
    return float(query)


def metric(record: SandboxRecord, at: float, cpus_used: float | None, memory: int | None,
           disk: tuple[int, int] | None) -> dict[str, Any]:
    """One sample (E2B's ``SandboxMetric``): CPU in percent of the sandbox's vCPUs."""
    pct = 0.0 if cpus_used is None else round(100 * cpus_used / max(1, record.vcpus), 2)
    used_disk, total_disk = disk or (0, record.disk_size_mib << 20)
    return {"timestamp": iso(at), "timestampUnix": int(at), "cpuCount": record.vcpus,
            "cpuUsedPct": min(100.0, max(0.0, pct)), "memUsed": memory or 0,
            "memTotal": record.mem_mib << 20, "memCache": 0, "diskUsed": used_disk,
            "diskTotal": total_disk}


SNAPSHOT_OF = "fromSandbox"  # the snapshot image's note of the sandbox it was made from


def snapshot(image: ImageRecord) -> dict[str, Any]:
    """E2B's ``SnapshotInfo``: its id is the image's name (a create's templateID)."""
    return {"snapshotID": image.name, "names": [image.name]}


def snapshot_token(image: ImageRecord) -> str:
    raw = json.dumps([image.created_at, image.name]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def error(status: int, message: str) -> dict[str, Any]:
    return {"code": status, "message": message}
