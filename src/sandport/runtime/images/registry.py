"""A Distribution API v2 client (the OCI distribution spec): manifests, blobs, pushes.

Spoken with httpx rather than by driving ``skopeo``: a pull here streams each blob through
its digest check into the layer store and reports bytes per layer as they arrive, shares
one download between concurrent creates, and unpacks each layer as it arrives; skopeo
would first copy the whole image to a directory (every byte written twice) and report
progress only as text. The README's dependency notes say the same; bench/images.py measures
it against ``skopeo copy``.

Auth: a 401 with ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` is answered by a
token from the realm (with the registry's credentials from the Docker-format auth file, if
it has any; anonymous otherwise), ``Basic`` by those credentials; tokens are cached per
registry and scope until they expire. TLS: the system CA store plus a CA per registry
(``registry_cas``); plain HTTP only for ``insecure_registries``. A mirrored registry
(``registry_mirrors``) is reached only through its mirror, so an air-gapped host never
tries the internet. A registry the operator did not name is reached only at internet
addresses (netguard).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ...errors import Forbidden, ImageNotFound, RegistryAuthFailed, RegistryFailure
from .netguard import internet_only
from .reference import DOCKER_HUB, Reference

log = logging.getLogger("sandport.registry")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
HUB_ENDPOINT = "https://registry-1.docker.io"
HUB_AUTH_KEY = "https://index.docker.io/v1/"
MAX_MANIFEST_BYTES = 4 * 2**20
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HELPER_TIMEOUT_S = 10
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    insecure: frozenset[str]
    cas: Mapping[str, Path]
    mirrors: Mapping[str, str]  # registry domain → the base URL that serves it
    auth_file: Path
    allowed: frozenset[str] = frozenset()  # empty: any registry

    @classmethod
    def from_settings(cls, settings: Any) -> RegistryConfig:
        def pairs(items: tuple[str, ...]) -> dict[str, str]:
            return dict(item.split("=", 1) for item in items)

        return cls(
            insecure=frozenset(settings.insecure_registries),
            cas={host: Path(path) for host, path in pairs(settings.registry_cas).items()},
            mirrors={host: url.rstrip("/") for host, url in
                     pairs(settings.registry_mirrors).items()},
            auth_file=settings.registry_auth_file,
            allowed=frozenset(h.lower() for h in settings.registries_allowed),
        )

    def _listed(self, domain: str) -> bool:
        host = domain.lower()
        return host in self.allowed or any(
            a.startswith("*.") and host.split(":")[0].endswith(a[1:]) for a in self.allowed)

    def check_allowed(self, domain: str) -> None:
        """Forbidden unless registry ``domain`` may be named here (``registries_allowed``)."""
        if not self.allowed or self._listed(domain):
            return
        raise Forbidden(f"registry {domain} is not one this server may use "
                        "(its operator lists them with --registry-allow)")

    def trusted(self, domain: str) -> bool:
        """Whether the operator named registry ``domain`` (so it, its token service and
        its redirects may be on any address; see netguard)."""
        host = domain.lower()
        return (host in self.mirrors or host in self.insecure or host in self.cas
                or host.rsplit(":", 1)[0] in self.cas)

    def endpoint(self, domain: str) -> str:
        """The base URL that serves registry ``domain``."""
        if domain in self.mirrors:
            return self.mirrors[domain]
        if domain == DOCKER_HUB:
            return HUB_ENDPOINT
        return ("http://" if domain in self.insecure else "https://") + domain

    def credentials(self, domain: str, endpoint: str) -> tuple[str, str] | None:
        """(user, password) for the registry, or None: as docker finds them in its
        config file, from the registry's ``credHelpers`` entry, else ``credsStore``, else
        ``auths`` (a helper with nothing for the registry falls through to ``auths``)."""
        try:
            config = json.loads(self.auth_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(config, dict):
            return None
        wanted = {_auth_key(endpoint), _auth_key(domain)}
        if domain == DOCKER_HUB:
            wanted |= {_auth_key(HUB_AUTH_KEY), "docker.io", "registry-1.docker.io"}
        helpers = config.get("credHelpers")
        helper = next((name for key, name in helpers.items() if _auth_key(str(key)) in wanted),
                      None) if isinstance(helpers, dict) else None
        helper = helper or config.get("credsStore")
        if isinstance(helper, str) and helper:
            found = credential_helper(helper, HUB_AUTH_KEY if domain == DOCKER_HUB else domain)
            if found:
                return found
        auths = config.get("auths")
        for key, entry in (auths.items() if isinstance(auths, dict) else ()):
            if _auth_key(str(key)) in wanted and isinstance(entry, dict):
                found = _decode_auth(entry)
                if found:
                    return found
        return None


def credential_helper(name: str, server: str) -> tuple[str, str] | None:
    """Ask ``docker-credential-NAME get`` for ``server``'s credentials (docker's credential
    helper protocol: the server on stdin, ``{"Username", "Secret"}`` on stdout); None when
    it has none. A helper that is missing, fails otherwise or hangs is a clear error."""
    if not _HELPER_NAME.fullmatch(name):
        raise RegistryAuthFailed(f"the auth file names a credential helper {name!r}, "
                                 "which is not a helper name")
    program = f"docker-credential-{name}"
    try:  # a session of its own, so a hung helper goes with everything it started
        helper = subprocess.Popen([program, "get"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  start_new_session=True)
    except FileNotFoundError:
        raise RegistryAuthFailed(f"the auth file names the credential helper {program}, "
                                 "which is not on this server's PATH") from None
    try:
        out, err = helper.communicate(server.encode(), timeout=HELPER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(helper.pid, signal.SIGKILL)
        helper.communicate()
        raise RegistryAuthFailed(f"the credential helper {program} gave no answer for "
                                 f"{server} in {HELPER_TIMEOUT_S} s") from None
    said = out.decode(errors="replace").strip()
    if helper.returncode != 0:
        if "credentials not found" in said.lower():
            return None
        raise RegistryAuthFailed(f"the credential helper {program} failed for {server}: "
                                 f"{(said or err.decode(errors='replace'))[:200]}")
    try:
        answer = json.loads(said)
        user, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise RegistryAuthFailed(f"the credential helper {program} gave no credentials "
                                 f"for {server} that docker's protocol describes") from None
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    return user, secret


def _auth_key(text: str) -> str:
    """Auth-file keys come as hosts or URLs ("https://host/v1/"); compare their hosts."""
    if "://" in text:
        text = urlsplit(text).netloc
    return text.split("/", 1)[0].lower()


def _decode_auth(entry: dict[str, Any]) -> tuple[str, str] | None:
    if isinstance(entry.get("auth"), str):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return (user, password) if user else None
        except (ValueError, UnicodeDecodeError):
            return None
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return entry["username"], entry["password"]
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` → ("bearer", {"realm": …, "service": …})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    body: bytes
    digest: str

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        if not isinstance(data, dict):
            raise ValueError("a manifest is a JSON object")
        return data


class RegistryClient:
    """One per server; connections and tokens are kept between pulls."""

    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        # per (host, guarded): a trusted registry's token service may be another's too
        self._clients: dict[tuple[str, bool], httpx.AsyncClient] = {}
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, url: str, guarded: bool) -> httpx.AsyncClient:
        host = urlsplit(url).netloc
        client = self._clients.get((host, guarded))
        if client is None:
            context = ssl.create_default_context()
            ca = self.config.cas.get(host) or self.config.cas.get(host.rsplit(":", 1)[0])
            if ca is not None:
                try:
                    context.load_verify_locations(cafile=str(ca))
                except (OSError, ssl.SSLError) as exc:
                    raise RegistryFailure(f"the CA file for registry {host} cannot be "
                                          f"read: {exc}") from None
            limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
            transport = httpx.AsyncHTTPTransport(verify=context, limits=limits,
                                                 trust_env=False)
            if guarded:
                transport = internet_only(transport, context, limits)
            client = httpx.AsyncClient(
                transport=transport, follow_redirects=True, trust_env=False,
                timeout=httpx.Timeout(30.0, connect=10.0), headers={"user-agent": "sandport"},
            )
            self._clients[(host, guarded)] = client
        return client

    # -- requests with the auth dance -------------------------------------------------
    @contextlib.asynccontextmanager
    async def request(self, ref: Reference, method: str, path: str, *,
                      push: bool = False, headers: Mapping[str, str] | None = None,
                      content: Any = None, absolute_url: str | None = None,
                      ) -> AsyncIterator[httpx.Response]:
        """A streamed request to ``/v2/<repo>/<path>`` of ``ref``'s registry, with
        credentials as the registry asks for them. The caller reads the response."""
        self.config.check_allowed(ref.domain)
        base = self.config.endpoint(ref.domain)
        url = absolute_url or f"{base}/v2/{ref.path}/{path}"
        scope = f"repository:{ref.path}:{'pull,push' if push else 'pull'}"
        guarded = not self.config.trusted(ref.domain)
        client = self._client(url, guarded)
        for attempt in range(2):
            auth = self._cached_auth(base, scope)
            sent = {**(headers or {}), **({"authorization": auth} if auth else {})}
            try:
                request = client.build_request(method, url, headers=sent, content=content)
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise RegistryFailure(f"registry {ref.domain} cannot be reached: "
                                      f"{_reason(exc)}") from None
            try:
                if response.status_code == 401 and attempt == 0:
                    challenge = response.headers.get("www-authenticate", "")
                    await response.aread()
                    await self._answer(ref, base, scope, challenge, guarded)
                    continue
                yield response
                return
            finally:
                await response.aclose()

    def _cached_auth(self, base: str, scope: str) -> str | None:
        token = self._tokens.get((base, scope))
        if token and token[1] > time.monotonic():
            return token[0]
        return None

    async def _answer(self, ref: Reference, base: str, scope: str, challenge: str,
                      guarded: bool) -> None:
        scheme, params = parse_challenge(challenge)
        creds = await asyncio.to_thread(self.config.credentials, ref.domain, base)
        if scheme == "basic":
            if creds is None:
                raise RegistryAuthFailed(f"registry {ref.domain} needs credentials and the "
                                         "auth file has none for it")
            raw = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            self._tokens[(base, scope)] = (f"Basic {raw}", time.monotonic() + 3600)
            return
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryAuthFailed(f"registry {ref.domain} asked for an unknown kind of "
                                     f"authentication ({scheme or 'none'})")
        query = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        realm = params["realm"]
        if not realm.startswith(("https://", "http://")):
            raise RegistryAuthFailed(f"registry {ref.domain} gave a token realm that is "
                                     "not a URL")
        auth = httpx.BasicAuth(*creds) if creds else None
        try:
            answer = await self._client(realm, guarded).get(realm, params=query, auth=auth)
        except httpx.HTTPError as exc:
            raise RegistryFailure(f"the token service of registry {ref.domain} cannot be "
                                  f"reached: {_reason(exc)}") from None
        if answer.status_code in (401, 403):
            raise RegistryAuthFailed(
                f"registry {ref.domain} refused the credentials for {ref.path}"
                if creds else f"registry {ref.domain} wants credentials for {ref.path}")
        if answer.status_code != 200:
            raise RegistryFailure(f"the token service of registry {ref.domain} answered "
                                  f"HTTP {answer.status_code}")
        try:
            body = answer.json()
            token = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryFailure(f"the token service of registry {ref.domain} gave no token")
        self._tokens[(base, scope)] = (f"Bearer {token}",
                                       time.monotonic() + max(10.0, lifetime - 10))

    # -- manifests and blobs ----------------------------------------------------------
    async def manifest(self, ref: Reference, reference: str | None = None) -> Manifest:
        """The manifest (or index) ``ref`` names; its digest is verified when pinned."""
        wanted = reference or ref.reference
        async with self.request(ref, "GET", f"manifests/{wanted}",
                                headers={"accept": ACCEPT}) as response:
            if response.status_code == 404:
                raise ImageNotFound(f"image {ref} was not found in registry {ref.domain}")
            await _raise_for(ref, response, "manifest")
            body = await _read_capped(response, MAX_MANIFEST_BYTES, f"the manifest of {ref}")
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
        digest = sha256_digest(body)
        if wanted.startswith("sha256:") and digest != wanted:
            raise RegistryFailure(f"registry {ref.domain} sent a manifest for {ref} whose "
                                  f"digest is {digest}, not {wanted}")
        try:
            declared = json.loads(body).get("mediaType")
        except (ValueError, AttributeError):
            raise RegistryFailure(f"the manifest of {ref} is not JSON") from None
        return Manifest(declared or media_type, body, digest)

    async def blob_bytes(self, ref: Reference, digest: str, cap: int) -> bytes:
        """A small blob (an image config), verified."""
        async with self.request(ref, "GET", f"blobs/{digest}") as response:
            if response.status_code == 404:
                raise RegistryFailure(f"registry {ref.domain} has no blob {digest} of {ref}")
            await _raise_for(ref, response, "blob")
            body = await _read_capped(response, cap, f"blob {digest}")
        if sha256_digest(body) != digest:
            raise RegistryFailure(f"blob {digest} of {ref} does not match its digest")
        return body

    @contextlib.asynccontextmanager
    async def blob(self, ref: Reference, digest: str) -> AsyncIterator[httpx.Response]:
        async with self.request(ref, "GET", f"blobs/{digest}") as response:
            if response.status_code == 404:
                raise RegistryFailure(f"registry {ref.domain} has no blob {digest} of {ref}")
            await _raise_for(ref, response, "blob")
            yield response

    # -- push -------------------------------------------------------------------------
    async def has_blob(self, ref: Reference, digest: str) -> bool:
        async with self.request(ref, "HEAD", f"blobs/{digest}", push=True) as response:
            if response.status_code == 404:
                return False
            await _raise_for(ref, response, "blob")
            return True

    async def upload_blob(self, ref: Reference, digest: str, path: Path, size: int) -> None:
        """A monolithic upload: POST a session, PUT the bytes with their digest."""
        async with self.request(ref, "POST", "blobs/uploads/", push=True) as response:
            await _raise_for(ref, response, "upload")
            location = response.headers.get("location")
        if not location:
            raise RegistryFailure(f"registry {ref.domain} gave no upload location")
        base = self.config.endpoint(ref.domain)
        url = location if "://" in location else base + location
        url += ("&" if "?" in url else "?") + f"digest={digest}"

        async def body() -> AsyncIterator[bytes]:
            with path.open("rb") as fh:
                while chunk := await asyncio.to_thread(fh.read, 1 << 20):
                    yield chunk

        async with self.request(ref, "PUT", "", push=True, absolute_url=url,
                                headers={"content-type": "application/octet-stream",
                                         "content-length": str(size)},
                                content=body()) as response:
            await _raise_for(ref, response, "upload")

    async def put_manifest(self, ref: Reference, media_type: str, body: bytes) -> str:
        async with self.request(ref, "PUT", f"manifests/{ref.reference}", push=True,
                                headers={"content-type": media_type},
                                content=body) as response:
            await _raise_for(ref, response, "manifest")
        return sha256_digest(body)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _read_capped(response: httpx.Response, cap: int, what: str) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > cap:
            raise RegistryFailure(f"{what} is larger than {cap} bytes")
    return bytes(body)


async def _raise_for(ref: Reference, response: httpx.Response, what: str) -> None:
    status = response.status_code
    if status < 300:
        return
    await response.aread()
    detail = _error_detail(response)
    if status in (401, 403):
        raise RegistryAuthFailed(f"registry {ref.domain} refused access to {ref.path}: the "
                                 "repository does not exist or needs credentials"
                                 + (f" ({detail})" if detail else ""))
    raise RegistryFailure(f"registry {ref.domain} answered HTTP {status} for the {what} of "
                          f"{ref}" + (f" ({detail})" if detail else ""))


def _error_detail(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}"[:200] for e in errors[:3])
    except (ValueError, AttributeError, TypeError):
        return ""


def _reason(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "its TLS certificate is not trusted (give its CA with --registry-ca)"
    return text[:200]
