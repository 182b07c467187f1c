"""Real image registries for tests: Debian's CNCF distribution 2.8 (/usr/bin/docker-registry)
on loopback, one process per kind, each with its own config, storage and log.

- ``plain``: HTTP, no auth (what ``SANDPORT_INSECURE_REGISTRIES`` is for).
- ``basic``: HTTPS with a certificate from the session's test CA, htpasswd (bcrypt) users.
- ``token``: HTTPS, ``auth: token``: clients get a bearer JWT from tests/token_server.py
  (its policy: the user gets what it asks, anonymous gets pull on ``public/...`` only).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import bcrypt
import httpx

from ._ca import TestCA
from ._server import ServerProcess, free_port
from .token_server import ISSUER, SERVICE, TokenServer

REGISTRY_BIN = "/usr/bin/docker-registry"
START_TIMEOUT_S = 15

Credentials = tuple[str, str]
Kind = Literal["plain", "basic", "token"]


@dataclass
class Registry:
    """One running registry. ``url`` is its base (``/v2/`` is under it)."""

    host: str
    url: str
    ca_file: Path | None
    username: str | None
    password: str | None
    kind: Kind
    storage: Path
    log_path: Path
    proc: subprocess.Popen[bytes] = field(repr=False)
    token_server: TokenServer | None = field(default=None, repr=False)

    @property
    def credentials(self) -> Credentials | None:
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.token_server is not None:
            self.token_server.stop()


def start_registry(directory: Path, kind: Kind, ca: TestCA,
                   credentials: Credentials | None = None) -> Registry:
    """Start one distribution process of ``kind`` with its files under ``directory``."""
    directory.mkdir(parents=True)
    storage = directory / "storage"
    log_path = directory / "registry.log"
    token_server = None
    auth: dict[str, object] = {}
    if kind != "plain" and credentials is None:
        raise ValueError(f"a {kind} registry needs credentials")
    if kind == "basic" and credentials is not None:
        htpasswd = directory / "htpasswd"
        hashed = bcrypt.hashpw(credentials[1].encode(), bcrypt.gensalt(rounds=5)).decode()
        htpasswd.write_text(f"{credentials[0]}:{hashed}\n")
        auth = {"htpasswd": {"realm": "sandport-test", "path": str(htpasswd)}}
    elif kind == "token" and credentials is not None:
        token_server = TokenServer(ca, {credentials[0]: credentials[1]},
                                   directory / "token-server.log")
        auth = {"token": {"realm": token_server.realm, "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(ca.ca_file)}}
    tls = None if kind == "plain" else ca.issue(f"registry-{kind}")[:2]
    try:
        proc, host = _run_distribution(directory, storage, log_path, auth, tls)
    except BaseException:
        if token_server is not None:
            token_server.stop()
        raise
    scheme = "http" if tls is None else "https"
    return Registry(host=host, url=f"{scheme}://{host}", ca_file=None if tls is None else
                    ca.ca_file, username=credentials[0] if credentials else None,
                    password=credentials[1] if credentials else None, kind=kind,
                    storage=storage, log_path=log_path, proc=proc, token_server=token_server)


def _run_distribution(directory: Path, storage: Path, log_path: Path,
                      auth: dict[str, object], tls: tuple[Path, Path] | None,
                      ) -> tuple[subprocess.Popen[bytes], str]:
    """Start distribution on a free port (another one if a racing process took it) and wait
    until /v2/ answers."""
    for _attempt in range(5):
        host = f"127.0.0.1:{free_port()}"
        http: dict[str, object] = {"addr": host, "secret": secrets.token_hex(16)}
        if tls is not None:
            http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        config = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text"},
            "storage": {"filesystem": {"rootdirectory": str(storage)},
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": http,
            "health": {"storagedriver": {"enabled": False}},
            **({"auth": auth} if auth else {}),
        }
        config_path = directory / "config.yml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        # REGISTRY_* variables override the config file: none may leak in from the caller.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config_path)], env=env,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        if _wait_ready(proc, host, tls is not None):
            return proc, host
        if "address already in use" not in log_path.read_text(errors="replace"):
            break
    raise RuntimeError(f"docker-registry did not start:\n{log_path.read_text()[-5000:]}")


def _wait_ready(proc: subprocess.Popen[bytes], host: str, https: bool) -> bool:
    url = f"{'https' if https else 'http'}://{host}/v2/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            # Any answer (200, or 401 for an auth registry) means it serves; TLS is checked
            # by the tests' own clients, not here.
            httpx.get(url, verify=False, timeout=1)
            return True
        except httpx.HTTPError:
            time.sleep(0.02)
    proc.kill()
    proc.wait()
    return False


class Registries:
    """The session's registries and their CA; each registry starts when first used."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._started: list[Registry] = []

    @functools.cached_property
    def ca(self) -> TestCA:
        (self.directory / "ca").mkdir(parents=True, exist_ok=True)
        return TestCA(self.directory / "ca")

    @property
    def ca_file(self) -> Path:
        return self.ca.ca_file

    @functools.cached_property
    def plain(self) -> Registry:
        return self._start("plain", None)

    @functools.cached_property
    def basic(self) -> Registry:
        return self._start("basic", ("basic-user", secrets.token_urlsafe(12)))

    @functools.cached_property
    def token(self) -> Registry:
        return self._start("token", ("token-user", secrets.token_urlsafe(12)))

    def credentials(self) -> dict[str, Credentials]:
        """host → (user, password) of the registries that need them, for write_auth_file."""
        return {r.host: r.credentials for r in (self.basic, self.token)
                if r.credentials is not None}

    def _start(self, kind: Kind, credentials: Credentials | None) -> Registry:
        registry = start_registry(self.directory / kind, kind, self.ca, credentials)
        self._started.append(registry)
        return registry

    def stop(self) -> None:
        for registry in self._started:
            registry.stop()


def write_auth_file(path: Path, credentials: Mapping[str, Credentials]) -> Path:
    """A Docker-format config.json: {"auths": {host: {"auth": base64("user:password")}}}."""
    auths = {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
             for host, (user, password) in credentials.items()}
    path.write_text(json.dumps({"auths": auths}, indent=2))
    return path


DOWN_REGISTRY = "127.0.0.1:9"


def server_env(registries: Registries, auth_file: Path | None = None) -> dict[str, str]:
    """What a test ``sandport serve`` needs to pull from the session's registries.

    The token registry's realm is on a host of its own (the token server), so the CA is
    listed for that host too. Docker Hub names (docker.io/...) go to the plain registry.
    127.0.0.1:9 (nothing listens there) stands for a registry the operator named that is
    down; any other loopback registry is one the server refuses to reach."""
    plain, basic, token = registries.plain, registries.basic, registries.token
    assert token.token_server is not None
    ca = str(registries.ca_file)
    cas = [f"{host}={ca}" for host in (basic.host, token.host, token.token_server.host)]
    env = {
        "SANDPORT_INSECURE_REGISTRIES": f"{plain.host},{DOWN_REGISTRY}",
        "SANDPORT_REGISTRY_CAS": ",".join(cas),
        "SANDPORT_REGISTRY_MIRRORS": f"docker.io={plain.url}",
    }
    if auth_file is not None:
        env["SANDPORT_REGISTRY_AUTH"] = str(auth_file)
    return env


@contextlib.contextmanager
def registry_server(registries: Registries, root: Path, *, own_images: bool = False,
                    auth_file: Path | None = None) -> Iterator[ServerProcess]:
    """A ``sandport serve`` that reaches the session's registries; with ``own_images`` an
    image store of its own (a first pull downloads) and no built-in image built at start.
    Its sandboxes are stopped and its log checked when the block ends."""
    env = server_env(registries, auth_file)
    if own_images:
        env |= {"SANDPORT_IMAGES_DIR": str(root / "images"), "SANDPORT_BUILD_IMAGES": ","}
    srv = ServerProcess(root / "data", env=env).start()
    try:
        yield srv
    finally:
        srv.stop_all_sandboxes()
        srv.stop()
    srv.assert_clean_log()
