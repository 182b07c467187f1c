"""Image references, parsed as docker does: ``node:22`` is ``docker.io/library/node:22``.

    [DOMAIN[:PORT]/]PATH[:TAG][@DIGEST]

The first component is a registry host only if it has a ``.`` or a ``:`` or is
``localhost`` (``team/app`` is a Docker Hub repository, ``registry.local/team/app`` is not);
a Docker Hub path of one component gets ``library/``; no tag and no digest means
``latest``. Pure: the unit suite reads every rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import ValidationFailed

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class Reference:
    domain: str  # "docker.io", "ghcr.io", "127.0.0.1:5000"
    path: str  # "library/node", "org/app"
    tag: str | None  # None only when a digest is given
    digest: str | None

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def reference(self) -> str:
        """What the manifest endpoint is asked for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, self.tag, digest)


def parse_reference(text: str) -> Reference:
    """The reference ``text`` names, or ValidationFailed saying what is wrong with it."""
    if not isinstance(text, str) or not text or len(text) > 512 or text != text.strip():
        raise ValidationFailed("an image reference must be a non-empty string such as "
                               "'node:22' or 'registry.example.com/team/app:1'")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise ValidationFailed(f"image reference {text!r}: the digest must be "
                                   "sha256:<64 hex> (or sha512:<128 hex>)")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise ValidationFailed(f"image reference {text!r}: {tag!r} is not a valid tag")
    parts = rest.split("/")
    domain = DOCKER_HUB
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"
                           or parts[0].startswith("[")):
        domain, parts = parts[0], parts[1:]
        if not _DOMAIN.fullmatch(domain):
            raise ValidationFailed(f"image reference {text!r}: {domain!r} is not a "
                                   "registry host")
        if domain.lower() in _HUB_ALIASES:
            domain = DOCKER_HUB
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            raise ValidationFailed(
                f"image reference {text!r}: {part!r} is not a valid repository name "
                "component (lower-case letters, digits and single separators . _ -)")
    if domain == DOCKER_HUB and len(parts) == 1:
        parts = ["library", *parts]
    path = "/".join(parts)
    if len(domain) + 1 + len(path) > MAX_NAME:
        raise ValidationFailed(f"image reference {text!r} is longer than {MAX_NAME} characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(domain, path, tag, digest)


_LOCAL = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}(?::[\w][\w.-]{0,127})?")


def check_local_name(name: str) -> str:
    """An image name given to import (or later build): ``app`` or ``app:1``, no path tricks."""
    if not isinstance(name, str) or not _LOCAL.fullmatch(name) or ".." in name:
        raise ValidationFailed(
            "an image name is lower-case letters, digits, '.', '_' and '-' (up to 64), "
            "optionally ':' and a tag, such as 'myapp' or 'myapp:1'")
    return name
