"""Everything the SDK does that is not I/O: building requests and reading answers.

``Sandbox`` and ``AsyncSandbox`` are thin shells that send a ``Call`` with httpx and hand
the answer back to ``Call.parse``; a request or a field name is written only here.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import SandportError, ValidationFailed, error_from_wire
from ..models import ExecResult, ExposedPort, ImageInfo, SandboxInfo, SandboxPage
from ..settings import ClientSettings

T = TypeVar("T")

# The first create with an image the server lacks builds it (~30-90 s for a built-in) or
# pulls it from its registry first (minutes for a large image on a slow link).
CREATE_TIMEOUT_S = 900.0
EXEC_GRACE_S = 15.0  # the HTTP wait beyond the command's own timeout
TOKEN_RENEW_S = 60.0  # a runtime token with less life left is renewed before a call


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one (loading CA certificates) costs ~20 ms,
    which every new HTTP client would otherwise pay. ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
    name the CAs to trust instead of certifi's (a server with a private CA's certificate,
    as OpenSSL's own clients read them)."""
    import certifi  # an httpx dependency

    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile or None, capath=capath or None)
    return ssl.create_default_context(cafile=certifi.where())


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    url: str
    parse_body: Callable[[Any], T]
    json_body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0

    def parse(self, status: int, content: bytes) -> T:
        try:
            body = json.loads(content) if content else None
        except ValueError:
            body = None
        if status >= 400:
            raise error_from_wire(status, body)
        if body is None:
            raise SandportError(f"the server sent an answer that is not JSON (HTTP {status})")
        return self.parse_body(body)


def _api_headers(settings: ClientSettings) -> dict[str, str]:
    if not settings.api_key:
        raise SandportError(
            "no API key: pass api_key=... or set SANDPORT_API_KEY (sandport serve prints one)"
        )
    return {"x-api-key": settings.api_key}


def create_call(
    settings: ClientSettings, image: str, *, timeout_minutes: int | None, vcpus: int | None,
    mem_mib: int | None, disk_size_mib: int | None, env: dict[str, str] | None,
    exposed_ports: dict[int, bool] | None = None, network: dict[str, Any] | None = None,
    on_timeout: str | None = None, auto_resume: bool | None = None,
    idle_timeout_s: int | None = None, on_idle: str | None = None,
    pids_limit: int | None = None, start_cmd: bool | str | None = None,
    ready_cmd: str | None = None, ready_timeout_s: float | None = None,
) -> Call[SandboxInfo]:
    body: dict[str, Any] = {"imageName": image}
    ports = None if exposed_ports is None else [
        {"port": port, "auth": auth} for port, auth in exposed_ports.items()]
    for key, value in (("timeoutMinutes", timeout_minutes), ("vcpus", vcpus),
                       ("memMiB", mem_mib), ("diskSizeMiB", disk_size_mib), ("env", env),
                       ("exposedPorts", ports), ("network", network),
                       ("onTimeout", on_timeout), ("autoResume", auto_resume),
                       ("idleTimeoutSeconds", idle_timeout_s), ("onIdle", on_idle),
                       ("pidsLimit", pids_limit), ("startCmd", start_cmd),
                       ("readyCmd", ready_cmd),
                       ("readyTimeoutMs", None if ready_timeout_s is None
                        else int(ready_timeout_s * 1000))):
        if value is not None:
            body[key] = value
    return Call("POST", f"{settings.base_url}/api/sandbox", SandboxInfo.from_wire, body,
                _api_headers(settings), CREATE_TIMEOUT_S)


def get_call(settings: ClientSettings, sandbox_id: str) -> Call[SandboxInfo]:
    return Call("GET", f"{settings.base_url}/api/sandbox/{sandbox_id}", SandboxInfo.from_wire,
                headers=_api_headers(settings))


def list_call(settings: ClientSettings, status: str | None, page: int,
              limit: int) -> Call[SandboxPage]:
    query = f"page={page}&limit={limit}" + (f"&status={status}" if status else "")
    return Call("GET", f"{settings.base_url}/api/sandboxes?{query}", SandboxPage.from_wire,
                headers=_api_headers(settings))


def verb_call(settings: ClientSettings, sandbox_id: str, verb: str) -> Call[SandboxInfo]:
    """``verb``: pause, resume, refresh (a new runtime token) or connect (resume if
    paused, and a new runtime token)."""
    return Call("POST", f"{settings.base_url}/api/sandbox/{sandbox_id}/{verb}",
                SandboxInfo.from_wire, headers=_api_headers(settings))


def snapshot_call(settings: ClientSettings, sandbox_id: str, name: str,
                  start_command: str | None = None,
                  ready_command: str | None = None) -> Call[ImageInfo]:
    body = {"name": name, **({"startCommand": start_command} if start_command else {}),
            **({"readyCommand": ready_command} if ready_command else {})}
    return Call("POST", f"{settings.base_url}/api/sandbox/{sandbox_id}/snapshot",
                lambda body: ImageInfo.from_wire(body["image"]), body,
                headers=_api_headers(settings), timeout_s=900.0)  # a copy of all it changed


def revoke_call(settings: ClientSettings, sandbox_id: str,
                token: str | None) -> Call[SandboxInfo]:
    return Call("POST", f"{settings.base_url}/api/sandbox/{sandbox_id}/revoke",
                SandboxInfo.from_wire, {} if token is None else {"token": token},
                _api_headers(settings))


def renewable(call: Call[Any], info: SandboxInfo) -> bool:
    """Whether a 401 to ``call`` may be cured by a new runtime token: it is a runtime call
    with the sandbox's token, and the sandbox runs."""
    return call.headers.get("authorization") == f"Bearer {info.token}" and \
        info.status in ("active", "paused")


def with_token(call: Call[T], info: SandboxInfo) -> Call[T]:
    return replace(call, headers={**call.headers, "authorization": f"Bearer {info.token}"})


def token_due(info: SandboxInfo, now: float) -> bool:
    """Whether the runtime token runs out within TOKEN_RENEW_S (and can be renewed: the
    sandbox runs or is paused)."""
    if info.status not in ("active", "paused") or not info.token_expires_at:
        return False
    try:
        expires = datetime.fromisoformat(info.token_expires_at).timestamp()
    except ValueError:
        return False
    return expires - now < TOKEN_RENEW_S


def timeout_call(settings: ClientSettings, sandbox_id: str,
                 minutes: int) -> Call[SandboxInfo]:
    return Call("POST", f"{settings.base_url}/api/sandbox/{sandbox_id}/timeout",
                SandboxInfo.from_wire, {"timeoutMinutes": minutes}, _api_headers(settings))


def stop_call(settings: ClientSettings, sandbox_id: str) -> Call[SandboxInfo]:
    return Call("PUT", f"{settings.base_url}/api/sandbox/{sandbox_id}/stop",
                SandboxInfo.from_wire, headers=_api_headers(settings))


def addressed(settings: ClientSettings, url: str) -> tuple[str, dict[str, str]]:
    """The URL to connect to, and the Host to send, for a sandbox URL.

    ``*.localhost`` names are loopback by definition (RFC 6761) but glibc resolves them
    only with nss-myhostname; such URLs are sent to the server's own address instead,
    with the Host header naming the sandbox, so the SDK works on any system.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "http" or not host.endswith(".localhost"):
        return url, {}
    server = urlsplit(settings.base_url)
    return urlunsplit(parts._replace(netloc=server.netloc)), {"host": parts.netloc}


def exec_call(settings: ClientSettings, info: SandboxInfo, command: str, *, cwd: str | None,
              env: dict[str, str] | None, timeout_s: float) -> Call[ExecResult]:
    body: dict[str, Any] = {"command": command, "timeoutMs": max(1, int(timeout_s * 1000))}
    if cwd is not None:
        body["cwd"] = cwd
    if env:
        body["env"] = env
    url, host = addressed(settings, f"{info.runtime.base_url}/sandbox/exec")
    return Call("POST", url, ExecResult.from_wire, body,
                {"authorization": f"Bearer {info.token}", **host}, timeout_s + EXEC_GRACE_S)


def expose_call(settings: ClientSettings, sandbox_id: str, port: int,
                auth: bool) -> Call[ExposedPort]:
    return Call("POST", f"{settings.base_url}/api/sandbox/{sandbox_id}/expose",
                ExposedPort.from_wire, {"port": port, "auth": auth}, _api_headers(settings))


def unexpose_call(settings: ClientSettings, sandbox_id: str, port: int) -> Call[None]:
    return Call("POST", f"{settings.base_url}/api/sandbox/{sandbox_id}/unexpose",
                lambda body: None, {"port": port}, _api_headers(settings))


def exposed_url(info: SandboxInfo, port: int) -> str:
    """A port's public URL, derived locally (the server's template, or Hyperbrowser's
    ``{port}-{runtime.host}`` rule when the server did not send one)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValidationFailed(f"port must be an integer between 1 and 65535, got {port!r}")
    template = info.runtime.url_template
    if template:
        return template.replace("{port}", str(port))
    base = urlsplit(info.runtime.base_url)
    netloc = f"{port}-{info.runtime.host}" + (f":{base.port}" if base.port else "")
    return urlunsplit((base.scheme, netloc, "/", "", ""))

