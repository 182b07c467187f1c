"""One layer store for every image: imports, pushes, shared layers, deletes and reclaiming,
team ownership, and hostile layers that arrive through a real registry."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sandport import Sandbox
from sandport.runtime.images import ImageStore
from sandport.runtime.mounts import mount_overlay, unmount

from .._server import IMAGES_DIR, ServerProcess
from ..oci_images import (
    Hardlink,
    Layer,
    Symlink,
    busybox_image,
    busybox_layer,
    docker_save_archive,
    make_tar,
    oci_layout_archive,
    sha256,
)
from ..registries import Registries, registry_server, server_env
from ..registry_client import RegistryClient, push_image


@pytest.fixture(scope="module")
def store_server(registries: Registries, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServerProcess]:
    with registry_server(registries, tmp_path_factory.mktemp("store-server")) as srv:
        yield srv


def _api(srv: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=srv.base_url, headers={"x-api-key": srv.api_key},
                        timeout=120)


def _create(srv: ServerProcess, image: str) -> Sandbox:
    return Sandbox.create(image, api_key=srv.api_key, base_url=srv.base_url)


def _ndjson(response: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in response.iter_lines() if line.strip()]


def _layer_dir(diff_id: str) -> Path:
    return IMAGES_DIR / "layers" / diff_id.removeprefix("sha256:")


def _du_bytes(*paths: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", "-c", *map(str, paths)], capture_output=True,
                         text=True, check=True).stdout
    return int(out.splitlines()[-1].split()[0])


@pytest.mark.parametrize("form", ["docker-save", "oci-layout"])
def test_import_an_archive_and_create_from_it(form: str, store_server: ServerProcess) -> None:
    extra = Layer.from_files({"etc/imported": f"{form}\n".encode()})
    image = busybox_image(extra, workdir="/etc", env={"PATH": "/bin", "FROM": form})
    archive = (docker_save_archive(image, f"imp-{form}:1") if form == "docker-save"
               else oci_layout_archive(image))
    name = f"imported-{form}:v1"
    with _api(store_server) as api:
        answer = api.post(f"/api/images/{name}/import", content=archive)
        assert answer.status_code == 200, answer.text
        shown = answer.json()["image"]
    assert shown["name"] == name and shown["source"] == "imported" and shown["layers"] == 2
    with _create(store_server, name) as sb:
        out = sb.exec("cat imported; echo $FROM")
        assert out.stdout.splitlines() == [form, form]


def test_imports_that_are_not_images(store_server: ServerProcess) -> None:
    with _api(store_server) as api:
        for body, says in ((b"not a tar at all" * 100, "tar"),
                           (make_tar({"hello.txt": b"hi"}), "neither")):
            answer = api.post("/api/images/junk/import", content=body)
            assert answer.status_code == 422, answer.text
            assert says in answer.json()["message"]
        for bad in ("%2E%2E", "UPPER", "a/b", "x%2F..%2Fy", "-lead", "a" * 70):
            answer = api.post(f"/api/images/{bad}/import", content=b"x")
            assert answer.status_code in (400, 404), (bad, answer.text)
        listed = [i["name"] for i in api.get("/api/images").json()["images"]]
    assert "junk" not in listed


def test_push_then_pull_back(registries: Registries, store_server: ServerProcess) -> None:
    extra = Layer.from_files({"etc/pushed": b"round trip\n"})
    archive = docker_save_archive(busybox_image(extra), "push-me:1")
    target = f"{registries.plain.host}/pushed/app:1"
    with _api(store_server) as api:
        assert api.post("/api/images/push-me/import", content=archive).status_code == 200
        with api.stream("POST", "/api/images/push-me/push", json={"ref": target}) as r:
            assert r.status_code == 200
            lines = _ndjson(r)
        pushed = lines[-1]["pushed"]
        assert isinstance(pushed, dict) and pushed["ref"] == target
    with RegistryClient(registries.plain, None) as client:
        manifest, _media_type = client.get_manifest("pushed/app", "1")
    assert sha256(manifest) == pushed["digest"]
    with _create(store_server, target) as sb:
        assert sb.exec("cat /etc/pushed").stdout == "round trip\n"


def test_a_builtin_image_can_be_pushed_and_pulled_back(registries: Registries,
                                                       store_server: ServerProcess) -> None:
    target = f"{registries.plain.host}/builtin/python:1"
    with _api(store_server) as api, api.stream(
            "POST", "/api/images/python/push", json={"ref": target}) as r:
        assert r.status_code == 200
        last = _ndjson(r)[-1]
    assert "pushed" in last, last
    with RegistryClient(registries.plain, None) as client:
        manifest = json.loads(client.get_manifest("builtin/python", "1")[0])
    assert manifest["layers"][0]["mediaType"].endswith("tar+zstd")
    with _create(store_server, target) as sb:
        assert sb.exec("python3 -c 'print(6*7)'").stdout == "42\n"


def test_two_images_on_one_base_store_it_once(registries: Registries,
                                              store_server: ServerProcess) -> None:
    base = Layer.from_files({"opt/base.bin": os.urandom(3 << 20)})  # incompressible 3 MiB
    one = busybox_image(base, Layer.from_files({"etc/which": b"one\n"}))
    two = busybox_image(base, Layer.from_files({"etc/which": b"two\n"}))
    push_image(registries.plain, "shared/one", "1", one)
    push_image(registries.plain, "shared/two", "1", two)
    with _api(store_server) as api:
        for repo in ("one", "two"):
            with api.stream("POST", "/api/images/pull",
                            json={"ref": f"{registries.plain.host}/shared/{repo}:1"}) as r:
                assert "image" in _ndjson(r)[-1]
        sizes = {i["name"]: i["sizeBytes"] for i in api.get("/api/images").json()["images"]}
    images = [sizes[f"{registries.plain.host}/shared/{n}:1"] for n in ("one", "two")]
    assert all(size > 3 << 20 for size in images)  # each image counts the base
    dirs = [_layer_dir(la.diff_id) for la in (*one.layers, two.layers[-1])]
    assert all(d.is_dir() for d in dirs)
    on_disk = _du_bytes(*dirs)
    assert on_disk < sum(images) - (2 << 20), (on_disk, images)  # the base is there once
    with _create(store_server, f"{registries.plain.host}/shared/two:1") as sb:
        assert sb.exec("cat /etc/which; wc -c < /opt/base.bin").stdout.split() == [
            "two", str(3 << 20)]


def test_delete_keeps_running_sandboxes_and_reclaims_after(registries: Registries,
                                                           store_server: ServerProcess) -> None:
    own = Layer.from_files({"opt/only-here": os.urandom(1 << 20)})
    image = busybox_image(own)
    ref = f"{registries.plain.host}/delete/me:1"
    push_image(registries.plain, "delete/me", "1", image)
    sb = _create(store_server, ref)
    try:
        with _api(store_server) as api:
            assert api.delete(f"/api/images/{ref}").status_code == 200
            listed = [i["name"] for i in api.get("/api/images").json()["images"]]
            assert ref not in listed
            assert api.delete(f"/api/images/{ref}").status_code == 404
            assert api.delete("/api/images/python").status_code == 400  # a built-in
        assert _layer_dir(own.diff_id).is_dir()  # the sandbox still holds it
        assert sb.exec("wc -c < /opt/only-here").stdout.strip() == str(1 << 20)
    finally:
        sb.stop()
        sb.close()
    assert not _layer_dir(own.diff_id).exists()  # nothing uses it now
    assert _layer_dir(busybox_layer().diff_id).is_dir()  # other images still use this


def test_another_team_neither_sees_nor_uses_an_image(
        store_server: ServerProcess, fresh_server: Callable[..., ServerProcess]) -> None:
    archive = docker_save_archive(busybox_image(), "mine:1")
    with _api(store_server) as api:
        assert api.post("/api/images/team-private/import", content=archive).status_code == 200
    other = fresh_server()  # its own team, the same images directory
    with _api(other) as api:
        names = [i["name"] for i in api.get("/api/images").json()["images"]]
        assert "team-private" not in names and "python" in names
        created = api.post("/api/sandbox", json={"imageName": "team-private"})
        assert created.status_code in (404, 502), created.text
        assert api.delete("/api/images/team-private").status_code == 404
        assert api.post("/api/images/team-private/push",
                        json={"ref": "127.0.0.1:9/x:1"}).status_code == 404


def test_images_over_the_cap_are_reclaimed_least_recently_used_first(
        registries: Registries, fresh_server: Callable[..., ServerProcess],
        tmp_path: Path) -> None:
    # An images directory of its own (a shared one holds every other test's images): each
    # image is ~60 MiB on disk (a 30 MiB uncompressed layer and its blob); two fit, not three.
    srv = fresh_server(env={**server_env(registries), "SANDPORT_IMAGES_MAX_GIB": "0.15",
                            "SANDPORT_IMAGES_DIR": str(tmp_path / "images"),
                            "SANDPORT_BUILD_IMAGES": " "})
    refs = []
    for n in range(3):
        layer = Layer.from_files({"opt/fill": os.urandom(30 << 20)}, compression="none")
        push_image(registries.plain, f"cap/img{n}", "1", busybox_image(layer))
        refs.append(f"{registries.plain.host}/cap/img{n}:1")

    def pull(ref: str) -> None:
        with _api(srv) as api, api.stream("POST", "/api/images/pull", json={"ref": ref}) as r:
            assert "image" in _ndjson(r)[-1]

    pull(refs[0])
    pull(refs[1])
    with _create(srv, refs[0]) as sb:  # img0 is used after img1 was pulled
        assert sb.exec("true").exit_code == 0
    pull(refs[2])
    with _api(srv) as api:
        names = [i["name"] for i in api.get("/api/images").json()["images"]]
    assert refs[0] in names and refs[2] in names and refs[1] not in names


HOSTILE = {
    "dotdot": {"../../../../tmp/sandport-escaped": b"x"},
    "absolute-through-symlink": {"etc/link": Symlink("/tmp"),
                                 "etc/link/sandport-escaped": b"x"},
    "hardlink-to-host": {"etc/hl": Hardlink("../../../../../../etc/passwd")},
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_from_a_registry_touch_nothing_outside(
        case: str, registries: Registries, store_server: ServerProcess) -> None:
    hostile = Layer.from_tar(make_tar(HOSTILE[case]))  # type: ignore[arg-type]
    push_image(registries.plain, f"hostile/{case}", "1", busybox_image(hostile))
    before = set(os.listdir("/tmp"))
    passwd = os.stat("/etc/passwd")
    with _api(store_server) as api, api.stream(
            "POST", "/api/images/pull",
            json={"ref": f"{registries.plain.host}/hostile/{case}:1"}) as r:
        lines = _ndjson(r) if r.status_code == 200 else [json.loads(r.read())]
    last = lines[-1]
    assert set(os.listdir("/tmp")) - before <= {p for p in set(os.listdir("/tmp")) - before
                                                if not p.startswith("sandport-escaped")}
    assert not Path("/tmp/sandport-escaped").exists()
    assert os.stat("/etc/passwd").st_nlink == passwd.st_nlink
    if "error" in last:
        assert last["error"] == "image_rejected", last
        assert not _layer_dir(hostile.diff_id).exists()  # nothing half stored
    else:  # confined: the entry stayed inside the layer
        layer = _layer_dir(hostile.diff_id) / "fs"
        assert layer.is_dir()


def test_a_start_removes_the_image_trees_of_an_older_server(tmp_path: Path) -> None:
    """Servers before the layer store kept a tree per built-in image and version. A start
    removes them, except a version an overlay still mounts (a sandbox of the older server
    that is still running) or a sandbox's runtime.json still names."""
    images = tmp_path / "images"
    for name, version in [("base", "20260101T000000"), ("base", "20260102T000000"),
                          ("python", "20260101T000000"), ("node", "20260101T000000")]:
        rootfs = images / name / version / "rootfs"
        (rootfs / "etc").mkdir(parents=True)
        (rootfs / "etc" / "os-release").write_text(f"{name} {version}\n")
    (images / "base" / "current").symlink_to("20260102T000000")
    mounted = images / "python" / "20260101T000000" / "rootfs"
    bundle = tmp_path / "bundle"
    for sub in ("upper", "work", "rootfs"):
        (bundle / sub).mkdir(parents=True)
    mount_overlay([mounted], bundle / "upper", bundle / "work", bundle / "rootfs")
    try:
        store = ImageStore(images)
        store.prepare()
        moved = store.forget_old_trees({("node", "20260101T000000")})
        assert sorted(p.name.rsplit("-", 1)[0] for p in moved) == [  # -<pid> after it
            "old-base-20260101T000000", "old-base-20260102T000000"]
        assert not (images / "base").exists()
        assert (bundle / "rootfs" / "etc" / "os-release").read_text() == \
            "python 20260101T000000\n"  # the running sandbox's files are all there
        assert (images / "node" / "20260101T000000" / "rootfs").is_dir()
        deadline = time.monotonic() + 30
        while any(p.exists() for p in moved) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(p.exists() for p in moved)
    finally:
        unmount(bundle / "rootfs")
    ImageStore(images).forget_old_trees(set())  # nothing holds them now
    assert not (images / "python").exists() and not (images / "node").exists()


def test_the_server_start_forgets_old_trees(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "base" / "20260101T000000" / "rootfs").mkdir(parents=True)
    srv = ServerProcess(tmp_path / "data", env={"SANDPORT_IMAGES_DIR": str(images),
                                                "SANDPORT_BUILD_IMAGES": " "}).start()
    try:
        assert not (images / "base").exists()
        assert (images / "layers").is_dir()
    finally:
        srv.stop()
