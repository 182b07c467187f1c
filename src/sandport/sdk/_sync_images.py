"""The blocking images API: ``Images``."""

from __future__ import annotations

from collections.abc import Mapping
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

    def build(self, name: str, context: img.BuildContext | None = None, *,
              dockerfile: str | None = None, build_args: Mapping[str, str] | None = None,
              network: str | None = None, target: str | None = None,
              start_command: str | None = None, ready_command: str | None = None,
              vcpus: int | None = None, mem_mib: int | None = None,
              on_progress: img.OnEvent | None = None,
              on_upload: img.OnUpload | None = None) -> ImageInfo:
        """Build image ``name`` from a Dockerfile, or without ``context`` build a built-in
        image (base, python, node) again.

        ``context`` is a directory (sent as a tar made while it is sent, honouring its
        ``.dockerignore``; symlinks stay symlinks), or a tar archive of one as a path, bytes
        or a binary file. ``dockerfile`` is its path inside the context (``Dockerfile``);
        ``build_args`` set its ``ARG`` values; ``network`` is ``"none"`` (the default) or
        ``"internet"`` for its ``RUN`` steps; ``target`` names the stage to build;
        ``start_command`` and ``ready_command`` are kept with the image for the sandboxes
        made from it; ``vcpus`` and ``mem_mib`` size each ``RUN`` step's sandbox (the
        server's defaults otherwise). ``on_upload(sent, total)`` follows the context's
        upload.

        ``on_progress`` gets each event as the server sends it: for each base image not
        held yet ``{"status": "pulling", "image": ref}`` then its pull's events (as
        ``pull``'s); ``{"status": "building", "steps": N}``; per step ``{"step": i, "of": N,
        "line": L, "instruction": "RUN make", "cached": bool}`` ("cached" for RUN, COPY and
        ADD), then a RUN's output as ``{"step": i, "stream": "stdout", "output": text}``
        chunks; at the end ``{"status": "built", "seconds": s, "cachedSteps": c, "steps":
        N}``. A built-in rebuild sends ``{"progress": line}`` events instead.
        A Dockerfile the server refuses raises ValidationFailed naming its line, a step
        that fails BuildFailed, an oversized context PayloadTooLarge."""
        call = img.build_call(
            self._settings, name, with_context=context is not None,
            dockerfile=img.dockerfile_param(context, dockerfile), build_args=build_args,
            network=network, target=target, start_command=start_command,
            ready_command=ready_command, vcpus=vcpus, mem_mib=mem_mib)
        if context is None:
            return self._stream(call, on_progress)
        with img.build_upload(context, dockerfile, on_upload) as upload:
            return self._stream(call, on_progress, upload)

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

    def _stream(self, call: _base.Call[T], on_progress: img.OnEvent | None,
                upload: img.Upload | None = None) -> T:
        reader = img.ImageStream(call)
        headers = call.headers if upload is None else {**call.headers, **upload.headers}
        content = None if upload is None else upload.chunks()
        try:
            with self._http().stream(call.method, call.url, json=call.json_body,
                                     content=content, headers=headers,
                                     timeout=call.timeout_s) as response:
                if response.status_code >= 400:
                    response.read()
                    call.parse(response.status_code, response.content)
                for line in response.iter_lines():
                    event = reader.feed(line)
                    if event is not None and on_progress is not None:
                        on_progress(event)
        except httpx.HTTPError as exc:
            sent = "" if upload is None else f" ({upload.sent} bytes of the context sent)"
            raise TransportError(f"the answer from {call.url} broke off{sent}: {exc}") from None
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
