"""The blocking images API: ``Images``."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

import httpx

from ..errors import TransportError
from ..models import ImageInfo, PushResult
from ..settings import ClientSettings
from . import _base
from . import _images as img
from ._sync import _new_client, _send

T = TypeVar("T")


class Images:
    """The images of a sandport server: the built-ins, and what was pulled, imported or
    pushed. Names are a team's own (``myapp``) or registry references (``node:22``,
    ``registry.example.com:5000/team/app:1``); a sandbox is created from any of them.
    As a context manager, its connections close on exit."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        self._settings = ClientSettings.load(base_url, api_key)
        self._client = _new_client()

    def _http(self) -> httpx.Client:
        if self._client.is_closed:
            self._client = _new_client()
        return self._client

    def list(self) -> list[ImageInfo]:
        return _send(self._http(), img.list_call(self._settings))

    def get(self, name: str) -> ImageInfo:
        """One image by its name (raises ImageNotFound)."""
        return _send(self._http(), img.get_call(self._settings, name))

    def pull(self, ref: str, *, on_progress: img.OnEvent | None = None) -> ImageInfo:
        """Pull ``ref`` from its registry (layers the server has are not fetched again).
        ``on_progress`` gets each event as the server sends it: ``{"status": "pulling",
        "layers": N, "totalBytes": B, ...}``, then per layer ``{"layer": digest,
        "status": "downloading" | "unpacking" | "done" | "exists", "done": n, "total": m}``.
        An unknown tag raises ImageNotFound, a registry's refusal RegistryFailure or
        RegistryAuthFailed, an unusable image ImageRejected."""
        return self._stream(img.pull_call(self._settings, ref), on_progress)

    def push(self, name: str, ref: str, *, on_progress: img.OnEvent | None = None
             ) -> PushResult:
        """Push image ``name`` to the registry reference ``ref``; events as ``pull``'s,
        per blob ``"exists"`` (the registry had it), ``"uploading"``, ``"done"``."""
        return self._stream(img.push_call(self._settings, name, ref), on_progress)

    def build(self, name: str, *, on_progress: img.OnEvent | None = None) -> ImageInfo:
        """Build a built-in image (base, python, node) again; events are
        ``{"progress": line}``."""
        return self._stream(img.build_call(self._settings, name), on_progress)

    def import_(self, name: str, source: img.Source, *,
                on_progress: img.OnUpload | None = None) -> ImageInfo:
        """Import a ``docker save`` or OCI-layout tar archive as image ``name``. ``source``
        is a path, bytes or a binary file (read in chunks, never whole);
        ``on_progress(sent, total)`` follows the upload (``total`` None when unknown)."""
        call = img.import_call(self._settings, name)
        with img.Upload(source, on_progress) as upload:
            try:
                response = self._http().request(
                    call.method, call.url, content=upload.chunks(),
                    headers={**call.headers, **upload.headers}, timeout=call.timeout_s)
            except httpx.HTTPError as exc:
                raise TransportError(f"the import to {call.url} failed after {upload.sent} "
                                     f"bytes: {exc}") from None
        return call.parse(response.status_code, response.content)

    def delete(self, name: str) -> None:
        """Remove image ``name``; its layers go too unless another image has them."""
        _send(self._http(), img.delete_call(self._settings, name))

    def _stream(self, call: _base.Call[T], on_progress: img.OnEvent | None) -> T:
        reader = img.ImageStream(call)
        try:
            with self._http().stream(call.method, call.url, json=call.json_body,
                                     headers=call.headers, timeout=call.timeout_s) as response:
                if response.status_code >= 400:
                    response.read()
                    call.parse(response.status_code, response.content)
                for line in response.iter_lines():
                    event = reader.feed(line)
                    if event is not None and on_progress is not None:
                        on_progress(event)
        except httpx.HTTPError as exc:
            raise TransportError(f"the answer from {call.url} broke off: {exc}") from None
        return reader.result()

    def close(self) -> None:
        """Release the HTTP connections."""
        self._client.close()

    def __enter__(self) -> Images:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Images(base_url={self._settings.base_url!r})"
