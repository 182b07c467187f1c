"""The tests' own registry client: pushes tests/oci_images.py's images through the
distribution HTTP API and reads manifests and blobs back. Small on purpose (monolithic blob
uploads, no resumption), and independent of sandport's client, which it is there to test.

Auth follows the registry's 401 challenge: ``Basic`` gets the credentials, ``Bearer`` sends
them to the realm for a token of the challenged scope (cached per scope).
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Mapping
from types import TracebackType

import httpx

from .oci_images import Image, Index, Media, Platform, build_index, sha256
from .registries import Credentials, Registry

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="r",service="s"' → ("bearer", {"realm": "r", "service": "s"})."""
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def basic_authorization(credentials: Credentials) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


class RegistryClient:
    """One registry, one identity: ``auth=None`` is anonymous."""

    def __init__(self, registry: Registry, auth: Credentials | None) -> None:
        self.registry = registry
        self.auth = auth
        verify = (ssl.create_default_context(cafile=registry.ca_file) if registry.ca_file
                  else True)
        self.http = httpx.Client(verify=verify, timeout=60)
        self._tokens: dict[str, str] = {}

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.http.close()

    def request(self, method: str, url: str, content: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> httpx.Response:
        """One call, made once more with credentials if the registry asks for them; raises
        httpx.HTTPStatusError for an error answer."""
        if url.startswith("/"):
            url = self.registry.url + url
        headers = dict(headers or {})
        response = self.http.request(method, url, content=content, headers=headers,
                                     follow_redirects=True)
        if response.status_code == 401 and "www-authenticate" in response.headers:
            headers["Authorization"] = self._authorization(response.headers["www-authenticate"])
            response = self.http.request(method, url, content=content, headers=headers,
                                         follow_redirects=True)
        response.raise_for_status()
        return response

    def _authorization(self, challenge: str) -> str:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            return basic_authorization(self.auth) if self.auth else ""
        scope = params.get("scope", "")
        if scope not in self._tokens:
            query = {"service": params.get("service", "")} | ({"scope": scope} if scope else {})
            answer = self.http.get(params["realm"], params=query, headers=(
                {"Authorization": basic_authorization(self.auth)} if self.auth else {}))
            answer.raise_for_status()
            body = answer.json()
            self._tokens[scope] = body.get("token") or body["access_token"]
        return f"Bearer {self._tokens[scope]}"

    # --- push ---

    def push_blob(self, repo: str, digest: str, data: bytes) -> None:
        """Upload a blob unless the repository has it (POST then PUT ?digest=)."""
        try:
            self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
            return
        except httpx.HTTPStatusError as error:
            if error.response.status_code != 404:
                raise
        started = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        location = httpx.URL(self.registry.url).join(started.headers["location"])
        self.request("PUT", str(location.copy_merge_params({"digest": digest})), content=data,
                     headers={"Content-Type": "application/octet-stream"})

    def put_manifest(self, repo: str, reference: str, manifest: bytes, media_type: str) -> str:
        answer = self.request("PUT", f"/v2/{repo}/manifests/{reference}", content=manifest,
                              headers={"Content-Type": media_type})
        digest = str(answer.headers.get("docker-content-digest", sha256(manifest)))
        assert digest == sha256(manifest), (digest, sha256(manifest))
        return digest

    def push_image(self, repo: str, reference: str, image: Image) -> str:
        for digest, data in image.blobs().items():
            self.push_blob(repo, digest, data)
        return self.put_manifest(repo, reference, image.manifest, image.media_type)

    # --- pull ---

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str]:
        """(manifest bytes, media type)."""
        answer = self.request("GET", f"/v2/{repo}/manifests/{reference}",
                              headers={"Accept": MANIFEST_TYPES})
        return answer.content, answer.headers["content-type"]

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}").content

    def tags(self, repo: str) -> list[str]:
        return list(self.request("GET", f"/v2/{repo}/tags/list").json()["tags"] or [])


def push_image(registry: Registry, repo: str, tag: str, image: Image,
               auth: Credentials | None = None) -> str:
    """Push ``image`` as repo:tag with ``auth`` (default: the registry's own credentials);
    returns the manifest digest the registry answered."""
    with RegistryClient(registry, auth or registry.credentials) as client:
        return client.push_image(repo, tag, image)


def push_index(registry: Registry, repo: str, tag: str, images: Mapping[Platform, Image] | Index,
               media: Media = "oci", auth: Credentials | None = None) -> str:
    """Push each image by digest, then an index (or Docker manifest list) of them as
    repo:tag; returns the index digest."""
    index = images if isinstance(images, Index) else build_index(images, media)
    with RegistryClient(registry, auth or registry.credentials) as client:
        for image in index.images:
            client.push_image(repo, image.digest, image)
        return client.put_manifest(repo, tag, index.manifest, index.media_type)
