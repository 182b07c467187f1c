"""Snapshots (POST /api/sandbox/{id}/snapshot): an image of a running sandbox's files,
made in the one layer store, that new sandboxes start from and a registry takes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sandport import Sandbox
from sandport.errors import Conflict, ImageRejected, ValidationFailed

from .._server import IMAGES_DIR, ServerProcess
from ..registries import Registries, registry_server

# What the sandbox does to its files before the snapshot: new files, a changed and a
# deleted file of the image, a directory replaced by a new one (opaque), a hard link, a
# symlink, owners and modes, a file with a name that is not UTF-8, a deleted-then-made file.
PREPARE = r"""
set -e
mkdir -p /srv/app/data
printf 'hello\n' > /srv/app/hello.txt
head -c 3000000 /dev/urandom > /srv/app/data/blob
sha256sum /srv/app/data/blob | cut -d' ' -f1 > /srv/app/data/blob.sha
ln /srv/app/hello.txt /srv/app/hello-link
ln -s hello.txt /srv/app/hello-sym
chown 1234:2345 /srv/app/data
chmod 0750 /srv/app/data
echo changed >> /etc/debian_version
rm /etc/issue
rm -rf /etc/apt && mkdir /etc/apt && echo only > /etc/apt/new
touch "/srv/app/$(printf 'caf\351')"
mkfifo /srv/app/pipe
"""

CHECK = r"""
set -e
cat /srv/app/hello.txt /srv/app/hello-link
readlink /srv/app/hello-sym
test "$(stat -c %i /srv/app/hello.txt)" = "$(stat -c %i /srv/app/hello-link)"
test "$(sha256sum /srv/app/data/blob | cut -d' ' -f1)" = "$(cat /srv/app/data/blob.sha)"
stat -c '%u:%g %a' /srv/app/data
tail -1 /etc/debian_version
test ! -e /etc/issue && echo issue-gone
ls /etc/apt
test -p /srv/app/pipe && echo fifo
ls /srv/app | od -c | grep -c '351' || true
"""

EXPECTED = ["hello", "hello", "hello.txt", "1234:2345 750", "changed", "issue-gone", "new",
            "fifo"]


def _api(srv: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=srv.base_url, headers={"x-api-key": srv.api_key},
                        timeout=300)


@pytest.fixture
def made(server: ServerProcess) -> Iterator[Callable[..., Sandbox]]:
    with server.sandboxes() as make:
        yield make


def _delete_image(srv: ServerProcess, name: str) -> None:
    with _api(srv) as api:
        api.delete(f"/api/images/{name}")


def test_a_snapshot_starts_new_sandboxes_with_the_files_as_they_were(
        server: ServerProcess, made: Callable[..., Sandbox]) -> None:
    original = made(image="base")
    prepared = original.exec(PREPARE)
    assert prepared.exit_code == 0, prepared.stderr
    # a process that goes on through the snapshot: it counts, and the count must go on
    counter = original.processes.start(
        "sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done'")
    try:
        image = original.snapshot("snap-files:v1")
        assert (image.source, image.name) == ("snapshot", "snap-files:v1")
        assert original.refresh().status == "active"
        first = int(original.exec("cat /tmp/count").stdout)
        time.sleep(0.3)
        assert int(original.exec("cat /tmp/count").stdout) > first  # still running

        copy = made(image="snap-files:v1")
        checked = copy.exec(CHECK)
        assert checked.exit_code == 0, checked.stderr
        lines = checked.stdout.splitlines()
        assert lines[:len(EXPECTED)] == EXPECTED
        assert lines[-1] == "1"  # the non-UTF-8 name came through as its bytes
        # sandport's own files are the new sandbox's, not the snapshot's
        assert copy.exec("cat /etc/hostname").stdout.strip() == copy.id
        with _api(server) as api:
            listed = {i["name"]: i for i in api.get("/api/images").json()["images"]}
            base_layers = listed["base"]["layers"]
        assert listed["snap-files:v1"]["layers"] == base_layers + 1
        assert listed["snap-files:v1"]["source"] == "snapshot"
    finally:
        counter.kill()
        _delete_image(server, "snap-files:v1")


def test_commands_during_the_copy_wait_instead_of_failing(
        server: ServerProcess, made: Callable[..., Sandbox]) -> None:
    """Frozen only for the copy of its changes, and an exec sent meanwhile waits for it
    (it does not answer 409 as for a paused sandbox)."""
    sb = made(image="base")
    assert sb.exec("head -c 200000000 /dev/zero > /big && sync").exit_code == 0
    failures: list[BaseException] = []
    done = threading.Event()
    count = [0]

    def execs() -> None:
        other = Sandbox.get(sb.id, api_key=server.api_key, base_url=server.base_url)
        try:  # (not a with block: leaving one stops the sandbox)
            while not done.is_set():
                try:
                    assert other.exec("true").exit_code == 0
                    count[0] += 1
                except BaseException as exc:  # noqa: BLE001 - reported below
                    failures.append(exc)
                    return
        finally:
            other.close()

    thread = threading.Thread(target=execs)
    thread.start()
    try:
        sb.snapshot("snap-busy")
    finally:
        done.set()
        thread.join()
        _delete_image(server, "snap-busy")
    assert not failures, failures
    assert count[0] > 0
    assert sb.refresh().status == "active"


def test_snapshot_refusals(server: ServerProcess, made: Callable[..., Sandbox]) -> None:
    sb = made(image="base")
    for name in ("../etc", "UPPER", "", "a/b", "x" * 200):
        with pytest.raises(ValidationFailed):
            sb.snapshot(name)
    with _api(server) as api:
        for body in ({"name": 1}, {"name": "ok", "more": 1}, [],
                     {"name": "a", "snapshotName": "b"}):
            got = api.post(f"/api/sandbox/{sb.id}/snapshot", json=body)
            assert (got.status_code, got.json()["error"]) == (400, "invalid_request")
        missing = api.post("/api/sandbox/no-such-sandbox/snapshot", json={"name": "x"})
        assert missing.status_code == 404
    sb.stop()
    with pytest.raises(Conflict):
        sb.snapshot("snap-stopped")


def test_a_paused_sandbox_is_snapshot_and_stays_paused(
        server: ServerProcess, made: Callable[..., Sandbox]) -> None:
    sb = made(image="base")
    assert sb.exec("echo paused-then > /marker").exit_code == 0
    sb.pause()
    try:
        sb.snapshot("snap-paused")
        assert sb.refresh().status == "paused"
        copy = made(image="snap-paused")
        assert copy.exec("cat /marker").stdout == "paused-then\n"
    finally:
        sb.resume()
        _delete_image(server, "snap-paused")


def test_a_snapshot_goes_to_a_registry_and_back(
        registries: Registries, tmp_path: Path) -> None:
    """Pushed, its layer is an OCI layer (whiteouts in .wh. form): pulled into a server
    of its own it gives the same files."""
    ref = f"{registries.plain.host}/snap/files:1"
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    with registry_server(registries, tmp_path / "one") as one, one.sandboxes() as make:
        sb = make(image="base")
        assert sb.exec(PREPARE).exit_code == 0
        sb.snapshot("files")
        with _api(one) as api, api.stream("POST", "/api/images/files/push",
                                          json={"ref": ref}) as r:
            assert r.status_code == 200
            last = json.loads([line for line in r.iter_lines() if line.strip()][-1])
        assert last["pushed"]["ref"] == ref, last
    with registry_server(registries, tmp_path / "two", own_images=True) as two, \
            two.sandboxes() as make:
        with _api(two) as api, api.stream("POST", "/api/images/pull",
                                          json={"ref": ref}) as r:
            assert r.status_code == 200
            r.read()
        copy = make(image=ref)
        checked = copy.exec(CHECK)
        assert checked.exit_code == 0, checked.stderr
        assert checked.stdout.splitlines()[:len(EXPECTED)] == EXPECTED


def test_changes_over_the_image_cap_are_refused_before_any_freeze(
        fresh_server: Callable[..., ServerProcess]) -> None:
    """A sandbox that wrote more than one image may hold: 422 before anything is frozen
    or copied, and it goes on as it was."""
    srv = fresh_server(env={"SANDPORT_IMAGE_MAX_GIB": "0.01"})  # 10.7 MB
    with srv.sandboxes() as make:
        sb = make(image="base")
        assert sb.exec("head -c 20000000 /dev/urandom > /big").exit_code == 0
        with pytest.raises(ImageRejected, match="over this server's cap"):
            sb.snapshot("too-big")
        assert sb.refresh().status == "active" and sb.exec("true").exit_code == 0
        with _api(srv) as api:
            assert "too-big" not in {i["name"] for i in api.get("/api/images").json()["images"]}


def test_a_tree_deeper_than_python_recursion_is_snapshot_and_removed(
        server: ServerProcess, made: Callable[..., Sandbox]) -> None:
    """A sandbox may nest directories past Python's recursion limit (shutil.rmtree and
    os.walk recurse on Python 3.11): the snapshot holds the tree, and deleting the image
    removes its layer from disk all the same."""
    layers = IMAGES_DIR / "layers"
    before = set(layers.iterdir())
    original = made(image="base")
    nested = original.exec(
        "set -e; cd /srv; for i in $(seq 1500); do mkdir d; cd d; done; echo deep > bottom")
    assert nested.exit_code == 0, nested.stderr
    original.snapshot("snap-deep:v1")
    try:
        added = set(layers.iterdir()) - before
        assert len(added) == 1
        copy = made(image="snap-deep:v1")
        bottom = "/srv/" + "d/" * 1500 + "bottom"
        assert copy.exec(f"cat {bottom}").stdout == "deep\n"
        copy.stop()
    finally:
        _delete_image(server, "snap-deep:v1")
    assert not added & set(layers.iterdir())
