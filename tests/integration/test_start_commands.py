"""Start commands (runtime_api/startup.py): a create with ``startCmd`` runs what the image
starts and, with a ready check, returns only once it is up; a start that fails or never
gets ready fails the create and leaves no sandbox running."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from sandport import Sandbox
from sandport.errors import StartFailed, ValidationFailed

from .._server import ServerProcess
from ..oci_images import Layer, busybox_image
from ..registries import Registries, registry_server
from ..registry_client import push_image

FETCH = ("python3 -c \"import urllib.request; "
         "print(urllib.request.urlopen('http://127.0.0.1:8000/').read().decode())\"")


@pytest.fixture
def made(server: ServerProcess) -> Iterator[Callable[..., Sandbox]]:
    with server.sandboxes() as make:
        yield make


def _active(server: ServerProcess) -> set[str]:
    with server.client() as api:
        page = api.get("/api/sandboxes", params={"status": "active", "limit": 100}).json()
    return {s["id"] for s in page["sandboxes"]}


def test_a_snapshot_s_start_command_is_up_when_the_create_returns(
        server: ServerProcess, made: Callable[..., Sandbox]) -> None:
    """E2B's template flow: prepare a sandbox, snapshot it with its start and ready
    commands, and every sandbox made from it has the server up when it is handed over."""
    prepared = made(image="python")
    assert prepared.exec("mkdir /srv/site && echo 'served from the snapshot' > "
                         "/srv/site/index.html").exit_code == 0
    prepared.snapshot("web-ready", start_command="cd /srv/site && python3 -m http.server 8000",
                      ready_command=FETCH)
    try:
        sb = made(image="web-ready", start_cmd=True)
        got = sb.exec(FETCH)  # no retry: it must be serving already
        assert (got.exit_code, got.stdout.strip()) == (0, "served from the snapshot")
        running = [p for p in sb.processes.list() if p.status == "running"]
        assert any("http.server" in p.command for p in running), running
    finally:
        with server.client() as api:
            api.delete("/api/images/web-ready")


def test_a_start_line_with_a_ready_check(made: Callable[..., Sandbox]) -> None:
    sb = made(image="python", start_cmd="sleep 1; touch /tmp/ready; exec sleep 1000",
              ready_cmd="test -e /tmp/ready")
    assert sb.exec("test -e /tmp/ready && echo up").stdout == "up\n"


def test_a_start_command_that_ends_fails_the_create(server: ServerProcess) -> None:
    before = _active(server)
    with pytest.raises(StartFailed) as failed:
        Sandbox.create("python", start_cmd="echo boom >&2; exit 3", ready_cmd="false",
                       api_key=server.api_key, base_url=server.base_url)
    assert "exit code 3" in failed.value.message and "boom" in failed.value.message
    assert _active(server) == before  # stopped, not left running


def test_a_start_command_never_ready_fails_in_its_time(server: ServerProcess) -> None:
    before = _active(server)
    with pytest.raises(StartFailed, match="not ready .* after 1 s"):
        Sandbox.create("python", start_cmd="echo waiting; exec sleep 1000", ready_cmd="false",
                       ready_timeout=1, api_key=server.api_key, base_url=server.base_url)
    assert _active(server) == before


def test_the_image_s_own_cmd_starts(registries: Registries, tmp_path_factory: pytest.TempPathFactory
                                    ) -> None:
    """No startCommand recorded: Entrypoint + Cmd of the image's config (here busybox's
    httpd in the foreground), as its user."""
    site = Layer.from_files({"www/index.html": b"from the image's CMD\n"})
    push_image(registries.plain, "start/httpd", "1", busybox_image(
        site, entrypoint=["httpd", "-f"], cmd=["-p", "8080", "-h", "/www"]))
    ref = f"{registries.plain.host}/start/httpd:1"
    with registry_server(registries, tmp_path_factory.mktemp("start")) as srv, \
            srv.sandboxes() as make:
        sb = make(image=ref, start_cmd=True,
                  ready_cmd="wget -q -O /dev/null http://127.0.0.1:8080/")
        got = sb.exec("wget -q -O- http://127.0.0.1:8080/")
        assert got.stdout == "from the image's CMD\n", got.stderr


@pytest.mark.parametrize(("body", "says"), [
    ({"readyCmd": "true"}, "go with startCmd"),
    ({"readyTimeoutMs": 5}, "go with startCmd"),
    ({"startCmd": 5}, "startCmd"),
    ({"startCmd": "true", "readyTimeoutMs": 0}, "readyTimeoutMs"),
    ({"startCmd": "true", "readyCmd": ""}, "readyCmd"),
])
def test_bad_start_fields(server: ServerProcess, body: dict[str, object], says: str) -> None:
    before = _active(server)
    with httpx.Client(base_url=server.base_url, headers={"x-api-key": server.api_key},
                      timeout=60) as api:
        got = api.post("/api/sandbox", json={"imageName": "python", **body})
    assert (got.status_code, got.json()["error"]) == (400, "invalid_request"), got.text
    assert says in got.json()["message"]
    assert _active(server) == before
    with pytest.raises(ValidationFailed):
        Sandbox.create("python", ready_cmd="true", api_key=server.api_key,
                       base_url=server.base_url)
