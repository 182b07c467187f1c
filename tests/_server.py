"""A real ``sandport serve`` process for tests: its own data directory and port.

Built-in images live in one directory shared by every test server (and kept between runs),
so the python image is built once per machine, as a user's first start builds it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from sandport import Sandbox

from .dns_world import dns_world

IMAGES_DIR = Path(os.environ.get("SANDPORT_TEST_IMAGES_DIR", "/var/tmp/sandport-test-images"))
API_KEY = "spk_test_" + os.urandom(8).hex()
START_TIMEOUT_S = 600  # a first start builds the python image
CLOSED_PORT = 9  # discard: nothing listens there on these machines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, data_dir: Path, port: int | None = None, api_key: str = API_KEY,
                 env: dict[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        """``tls``: (certificate chain, key, the CA that signed it): the edge serves HTTPS."""
        self.data_dir = data_dir
        self.tls = tls
        self.port = port or free_port()
        self.api_key = api_key
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return True if self.tls is None else ssl.create_default_context(cafile=self.tls[2])

    def start(self) -> ServerProcess:
        env = {**os.environ, "SANDPORT_API_KEY": self.api_key,
               "SANDPORT_IMAGES_DIR": str(IMAGES_DIR),
               # No test reaches Docker Hub: its names go to a loopback port that refuses,
               # unless a test mirrors docker.io to one of its own registries.
               "SANDPORT_REGISTRY_MIRRORS": f"docker.io=http://127.0.0.1:{CLOSED_PORT}",
               # Sandboxes' lookups go to the tests' own resolver, never the host's.
               "SANDPORT_DNS_UPSTREAMS": dns_world().address,
               # The tests' "worlds" are networks of this host: only the metadata address
               # stays closed (tests/integration/test_netcaps.py tries the default).
               "SANDPORT_NEVER_ALLOW": "169.254.169.254/32",
               **({} if self.tls is None else {"SANDPORT_TLS_CERT": str(self.tls[0]),
                                               "SANDPORT_TLS_KEY": str(self.tls[1])}),
               **self.env}
        env.pop("SANDPORT_BASE_URL", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sandport", "serve", "--data-dir", str(self.data_dir),
                 "--listen", f"127.0.0.1:{self.port}"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sandport serve exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/api/health", timeout=1,
                             verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"sandport serve did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def log_size(self) -> int:
        """Where the log ends now: ``assert_clean_log(since=...)`` looks only after it."""
        return self.log_path.stat().st_size

    def assert_clean_log(self, since: int = 0) -> None:
        """No traceback and no asyncio complaint in the log (all of it, or after ``since``)."""
        log = self.log_path.read_bytes()[since:].decode(errors="replace")
        for bad in ("Traceback", "was never retrieved", "unable to perform operation"):
            assert bad not in log, log[-3000:]

    def open_sockets(self) -> int:
        """Sockets the server process holds open now."""
        assert self.proc is not None
        count = 0
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            try:
                count += os.readlink(f"/proc/{self.proc.pid}/fd/{fd}").startswith("socket:")
            except FileNotFoundError:
                pass
        return count

    @contextlib.contextmanager
    def sandboxes(self) -> Iterator[Callable[..., Sandbox]]:
        """A factory of sandboxes on this server (``make(image=..., ...)``); all are
        stopped when the block ends."""
        made: list[Sandbox] = []

        def make(**kwargs: object) -> Sandbox:
            sb = Sandbox.create(api_key=self.api_key, base_url=self.base_url,
                                **kwargs)  # type: ignore[arg-type]
            made.append(sb)
            return sb

        try:
            yield make
        finally:
            for sb in made:
                sb.stop()
                sb.close()

    def stop_all_sandboxes(self) -> None:
        """What a careful user does before shutting down: sandboxes outlive the server."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with self.client() as c:
            for status in ("active", "paused"):
                while True:
                    page = c.get("/api/sandboxes",
                                 params={"status": status, "limit": 100}).json()
                    if not page["sandboxes"]:
                        break
                    for sb in page["sandboxes"]:
                        c.put(f"/api/sandbox/{sb['id']}/stop")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def crash(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut of the server process."""
        self.stop(signal.SIGKILL)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"x-api-key": self.api_key},
                            timeout=120, verify=self.verify)
