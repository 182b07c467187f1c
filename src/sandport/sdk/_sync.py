"""The blocking SDK: ``Sandbox``."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, TypeVar

import httpx

from ..errors import TransportError, Unauthorized
from ..models import ExecResult, ExposedPort, ImageInfo, SandboxInfo, SandboxPage
from ..settings import ClientSettings
from . import _base
from ._sync_runtime import Files, Processes, Terminal

T = TypeVar("T")


def _new_client() -> httpx.Client:
    return httpx.Client(verify=_base.ssl_context())


def _send(client: httpx.Client, call: _base.Call[T]) -> T:
    try:
        response = client.request(call.method, call.url, json=call.json_body,
                                  headers=call.headers, timeout=call.timeout_s)
    except httpx.HTTPError as exc:
        raise TransportError(f"cannot reach sandport at {call.url}: {exc}") from None
    return call.parse(response.status_code, response.content)


class Sandbox:
    """A sandbox on a sandport server; used in a ``with`` block, it stops on exit."""

    def __init__(self, info: SandboxInfo, settings: ClientSettings,
                 client: httpx.Client | None = None) -> None:
        self.info = info
        self._settings = settings
        self._client = client or _new_client()
        self.files = Files(self)
        self.processes = Processes(self)
        self.terminal = Terminal(self)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        return self.info.status

    def _http(self) -> httpx.Client:
        # Reopened on demand: a stopped sandbox can still be inspected after its block.
        if self._client.is_closed:
            self._client = _new_client()
        return self._client

    def _send(self, call: _base.Call[T]) -> T:
        """Send ``call``; a runtime call refused for its token (revoked, or replaced too
        often) is sent once more with a new one."""
        try:
            return _send(self._http(), call)
        except Unauthorized:
            if not _base.renewable(call, self.info):
                raise
        self.refresh_token()
        return _send(self._http(), _base.with_token(call, self.info))

    def _rt(self) -> SandboxInfo:
        """The sandbox as a runtime call needs it: with a runtime token renewed first when
        it is about to run out (the one it replaces stays valid until its own expiry)."""
        if _base.token_due(self.info, time.time()):
            self.refresh_token()
        return self.info

    @classmethod
    def create(
        cls, image: str = "python", *, timeout_minutes: int | None = None,
        vcpus: int | None = None, mem_mib: int | None = None, disk_size_mib: int | None = None,
        env: dict[str, str] | None = None, exposed_ports: dict[int, bool] | None = None,
        network: dict[str, Any] | None = None, on_timeout: str | None = None,
        auto_resume: bool | None = None, idle_timeout_s: int | None = None,
        on_idle: str | None = None, pids_limit: int | None = None,
        start_cmd: bool | str | None = None, ready_cmd: str | None = None,
        ready_timeout: float | None = None, api_key: str | None = None,
        base_url: str | None = None,
    ) -> Sandbox:
        """A new sandbox. ``exposed_ports`` maps port → auth (see ``expose``);
        ``network`` is the policy in its JSON form, e.g. ``{"maskRequestHost":
        "localhost:${PORT}", "ingress": {"allowPorts": [3000]}, "openPorts": False}``;
        ``on_timeout="pause"`` pauses at the deadline instead of stopping;
        ``auto_resume=True`` lets a request to a paused sandbox's URL resume it;
        ``idle_timeout_s`` pauses it (or stops it: ``on_idle="stop"``) after that many
        seconds without traffic, API calls, running API processes or CPU use;
        ``pids_limit`` caps its processes and threads (default 1024);
        ``start_cmd=True`` runs the image's start command (or ``start_cmd="npm run dev"``
        that line) as a listed process, and with ``ready_cmd`` (or the image's ready
        command) returns only once that shell line succeeds, within ``ready_timeout``
        seconds (default 60; else StartFailed, the sandbox stopped)."""
        settings = ClientSettings.load(base_url, api_key)
        client = _new_client()  # kept by the sandbox: its exec calls reuse the connection
        try:
            info = _send(client, _base.create_call(
                settings, image, timeout_minutes=timeout_minutes, vcpus=vcpus, mem_mib=mem_mib,
                disk_size_mib=disk_size_mib, env=env, exposed_ports=exposed_ports,
                network=network, on_timeout=on_timeout, auto_resume=auto_resume,
                idle_timeout_s=idle_timeout_s, on_idle=on_idle, pids_limit=pids_limit,
                start_cmd=start_cmd, ready_cmd=ready_cmd, ready_timeout_s=ready_timeout))
        except BaseException:
            client.close()
            raise
        return cls(info, settings, client)

    @classmethod
    def get(cls, sandbox_id: str, *, api_key: str | None = None,
            base_url: str | None = None) -> Sandbox:
        settings = ClientSettings.load(base_url, api_key)
        client = _new_client()
        try:
            return cls(_send(client, _base.get_call(settings, sandbox_id)), settings, client)
        except BaseException:
            client.close()
            raise

    @classmethod
    def list(cls, *, status: str | None = None, page: int = 1, limit: int = 10,
             api_key: str | None = None, base_url: str | None = None) -> SandboxPage:
        settings = ClientSettings.load(base_url, api_key)
        with _new_client() as client:
            return _send(client, _base.list_call(settings, status, page, limit))

    @classmethod
    def connect(cls, sandbox_id: str, *, api_key: str | None = None,
                base_url: str | None = None) -> Sandbox:
        """An existing sandbox, ready to use: resumed if it was paused, with a new runtime
        token."""
        settings = ClientSettings.load(base_url, api_key)
        client = _new_client()
        try:
            info = _send(client, _base.verb_call(settings, sandbox_id, "connect"))
            return cls(info, settings, client)
        except BaseException:
            client.close()
            raise

    def refresh(self) -> SandboxInfo:
        self.info = _send(self._http(), _base.get_call(self._settings, self.id))
        return self.info

    def refresh_token(self) -> SandboxInfo:
        """A new runtime token now (calls renew it by themselves shortly before it runs
        out); tokens handed out before keep working until their own expiry."""
        self.info = _send(self._http(), _base.verb_call(self._settings, self.id, "refresh"))
        return self.info

    def revoke_token(self, token: str | None = None) -> SandboxInfo:
        """End ``token`` at once, or every runtime token of the sandbox when None; the
        sandbox gets a new current token when its current one ends."""
        self.info = _send(self._http(), _base.revoke_call(self._settings, self.id, token))
        return self.info

    def exec(
        self, command: str, *, cwd: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> ExecResult:
        """Run ``command`` through ``/bin/sh -c`` in the sandbox and wait for it."""
        call = _base.exec_call(self._settings, self._rt(), command, cwd=cwd, env=env,
                               timeout_s=timeout)
        return self._send(call)

    def expose(self, port: int, *, auth: bool = False) -> ExposedPort:
        """Give ``port`` a public URL (again: idempotent; ``auth`` may change). With
        ``auth=True`` requests need the sandbox's token, and ``browser_url`` is a
        one-time link that lets a browser in."""
        exposed = _send(self._http(), _base.expose_call(self._settings, self.id, port, auth))
        self.info = _send(self._http(), _base.get_call(self._settings, self.id))
        return exposed

    def unexpose(self, port: int) -> None:
        """Close ``port``'s public URL; it answers 404 from then on."""
        _send(self._http(), _base.unexpose_call(self._settings, self.id, port))
        self.info = _send(self._http(), _base.get_call(self._settings, self.id))

    def get_exposed_url(self, port: int) -> str:
        """``port``'s public URL, derived locally (it answers once the port is exposed)."""
        return _base.exposed_url(self.info, port)

    def set_timeout(self, minutes: int) -> SandboxInfo:
        """A new deadline, ``minutes`` from now (``info.expires_at`` shows it)."""
        self.info = _send(self._http(), _base.timeout_call(self._settings, self.id, minutes))
        return self.info

    def pause(self) -> SandboxInfo:
        """Freeze every process of the sandbox, memory kept; its URLs answer 503 and its
        runtime API 409 until ``resume()``."""
        self.info = _send(self._http(), _base.verb_call(self._settings, self.id, "pause"))
        return self.info

    def resume(self) -> SandboxInfo:
        """Thaw it: same URLs, processes continue where they were."""
        self.info = _send(self._http(), _base.verb_call(self._settings, self.id, "resume"))
        return self.info

    def snapshot(self, name: str, *, start_command: str | None = None,
                 ready_command: str | None = None) -> ImageInfo:
        """Make image ``name`` (``myapp`` or ``myapp:v2``, the team's own) of this
        sandbox's files as they are now; it goes on running (frozen only while its changes
        are copied). ``Sandbox.create(name)`` then starts from it; with ``start_command``
        (and ``ready_command``) recorded, ``create(name, start_cmd=True)`` starts it."""
        return _send(self._http(), _base.snapshot_call(self._settings, self.id, name,
                                                       start_command, ready_command))

    def suspend(self) -> SandboxInfo:
        """Suspend to disk: its memory goes to disk and its processes end until
        ``resume()`` restores them where they were (same URLs); connections to it and
        processes started through the API end. Raises NotSupported, saying why, where the
        host cannot checkpoint (see the README)."""
        self.info = _send(self._http(), _base.verb_call(self._settings, self.id, "suspend"))
        return self.info

    def stop(self) -> SandboxInfo:
        self.info = _send(self._http(), _base.stop_call(self._settings, self.id))
        return self.info

    def close(self) -> None:
        """Release the HTTP connections (the sandbox keeps running)."""
        self._client.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, status={self.status!r})"
