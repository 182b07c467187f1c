"""The images SDK (``Images``, ``AsyncImages``) against a real server and real registries on
loopback: what a user pulls, imports and pushes, sandboxes run, and every refusal arrives as
its own class, whether it came before the stream or in the middle of it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandport import (
    AsyncImages,
    ImageInfo,
    ImageNotFound,
    ImageRejected,
    Images,
    PushResult,
    RegistryAuthFailed,
    Sandbox,
    ValidationFailed,
)

from .._server import ServerProcess
from ..oci_images import (
    Image,
    Layer,
    build_image,
    busybox_image,
    busybox_layer,
    docker_save_archive,
    oci_layout_archive,
    sha256,
)
from ..registries import Registries, registry_server
from ..registry_client import RegistryClient, push_image


@pytest.fixture(scope="module")
def image_server(registries: Registries,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that reaches the test registries, with an image store of its own."""
    with registry_server(registries, tmp_path_factory.mktemp("sdk-images"),
                         own_images=True) as srv:
        yield srv


@pytest.fixture
def images(image_server: ServerProcess) -> Iterator[Images]:
    with Images(api_key=image_server.api_key, base_url=image_server.base_url) as made:
        yield made


def unique_image(text: str | None = None, **config: Any) -> tuple[Image, str]:
    """A busybox image with a layer no other test has (so it must be downloaded)."""
    text = text or secrets.token_hex(8)
    return busybox_image(Layer.from_files({"etc/motd": f"{text}\n".encode()}), **config), text


def motd(server: ServerProcess, image: str) -> str:
    with Sandbox.create(image, api_key=server.api_key, base_url=server.base_url) as sb:
        result = sb.exec("cat /etc/motd")
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def statuses(events: list[dict[str, Any]], digest: str) -> list[str]:
    return [e["status"] for e in events if e.get("layer") == digest]


def test_pull_lists_runs_and_pulls_again_from_what_is_held(
        image_server: ServerProcess, registries: Registries, images: Images) -> None:
    image, text = unique_image(workdir="/tmp", user="app")
    ref = f"{registries.plain.host}/tests/sdk-pull:{text}"
    push_image(registries.plain, "tests/sdk-pull", text, image)
    events: list[dict[str, Any]] = []
    pulled = images.pull(ref, on_progress=events.append)
    assert (pulled.name, pulled.source, pulled.digest, pulled.layers) == (
        ref, "pulled", image.digest, 2)
    assert (pulled.workdir, pulled.user, pulled.cmd) == ("/tmp", "app", ("sh",))
    assert [e["status"] for e in events if "layer" not in e] == ["resolving", "pulling"]
    announced = next(e for e in events if e.get("status") == "pulling")
    assert announced["layers"] == 2
    assert announced["totalBytes"] == sum(len(la.blob) for la in image.layers)
    top = image.layers[1].digest
    assert statuses(events, top) == ["downloading", "unpacking", "done"]
    assert images.get(ref) == pulled
    assert ref in [i.name for i in images.list()]
    assert motd(image_server, ref) == text

    again: list[dict[str, Any]] = []
    assert images.pull(ref, on_progress=again.append).digest == image.digest
    assert {e["status"] for e in again if "layer" in e} == {"exists"}


def test_a_sandbox_pulls_its_image_on_first_use(image_server: ServerProcess,
                                                registries: Registries,
                                                images: Images) -> None:
    image, text = unique_image()
    push_image(registries.plain, "tests/sdk-create", "v1", image)
    ref = f"{registries.plain.host}/tests/sdk-create:v1"
    with pytest.raises(ImageNotFound):
        images.get(ref)
    assert motd(image_server, ref) == text
    held = images.get(ref)
    assert held.source == "pulled" and held.digest == image.digest and held.last_used_at


def test_refusals_before_the_stream_have_their_classes(registries: Registries,
                                                       images: Images) -> None:
    push_image(registries.plain, "tests/sdk-errors", "v1", busybox_image())
    with pytest.raises(ImageNotFound, match="nope"):
        images.pull(f"{registries.plain.host}/tests/sdk-errors:nope")
    with pytest.raises(ValidationFailed):
        images.pull("Not A Reference")
    # This server has no credentials for the basic-auth registry.
    push_image(registries.basic, "tests/sdk-private", "v1", busybox_image())
    with pytest.raises(RegistryAuthFailed, match=registries.basic.host):
        images.pull(f"{registries.basic.host}/tests/sdk-private:v1")
    with pytest.raises(ImageNotFound):
        images.get("no-such-image:1")
    with pytest.raises(ImageNotFound):
        images.delete("no-such-image:1")
    with pytest.raises(ValidationFailed, match="not an image name"):
        images.get("../sandbox")


def test_a_refusal_in_the_middle_of_the_stream_raises_its_class(registries: Registries,
                                                                images: Images) -> None:
    """The config names other layer contents than the layer has: found on unpacking, after
    the 200 and the first events, so it arrives as an error line."""
    layer = Layer.from_files({"etc/motd": secrets.token_hex(8).encode()})
    lying = Layer(layer.blob, layer.compression, layer.digest, diff_id=sha256(b"other"))
    image = build_image([busybox_layer(), lying], cmd=["sh"])
    push_image(registries.plain, "tests/sdk-lying", "v1", image)
    ref = f"{registries.plain.host}/tests/sdk-lying:v1"
    events: list[dict[str, Any]] = []
    with pytest.raises(ImageRejected, match="unpacks to"):
        images.pull(ref, on_progress=events.append)
    assert any(e.get("status") == "pulling" for e in events)
    with pytest.raises(ImageNotFound):
        images.get(ref)


def test_import_from_a_path_bytes_and_a_file(image_server: ServerProcess, images: Images,
                                             tmp_path: Path) -> None:
    image, text = unique_image()
    archive = tmp_path / "saved.tar"
    archive.write_bytes(docker_save_archive(image, "example.com/app:1"))
    sent: list[tuple[int, int | None]] = []
    from_path = images.import_("sdk-import:path", archive,
                               on_progress=lambda done, total: sent.append((done, total)))
    size = archive.stat().st_size
    assert sent[-1] == (size, size) and all(total == size for _, total in sent)
    assert (from_path.name, from_path.source, from_path.layers) == ("sdk-import:path",
                                                                    "imported", 2)
    from_bytes = images.import_("sdk-import:oci", oci_layout_archive(image))
    with archive.open("rb") as fh:
        from_file = images.import_("sdk-import:file", fh)
    assert from_bytes.layers == 2 and from_file.digest == from_path.digest
    assert motd(image_server, "sdk-import:file") == text
    with pytest.raises(ImageRejected):
        images.import_("sdk-import:junk", b"this is not a tar archive" * 100)
    with pytest.raises(ValidationFailed):
        images.import_("Bad/Name", archive)
    for name in ("sdk-import:path", "sdk-import:oci", "sdk-import:file"):
        images.delete(name)


def test_push_then_pull_back(registries: Registries, images: Images, tmp_path: Path) -> None:
    image, text = unique_image()
    held = images.import_("sdk-push:1", oci_layout_archive(image))
    ref = f"{registries.plain.host}/tests/sdk-pushed:{text}"
    events: list[dict[str, Any]] = []
    pushed = images.push("sdk-push:1", ref, on_progress=events.append)
    assert pushed == PushResult(ref, held.digest)  # the image as the server holds it
    assert events[0]["status"] == "pushing"
    assert {e["status"] for e in events if "layer" in e} == {"uploading", "done"}
    with RegistryClient(registries.plain, None) as registry:
        manifest, _ = registry.get_manifest("tests/sdk-pushed", text)
    assert sha256(manifest) == pushed.digest

    again: list[dict[str, Any]] = []
    images.push("sdk-push:1", ref, on_progress=again.append)
    assert {e["status"] for e in again if "layer" in e} == {"exists"}
    assert images.pull(ref).digest == pushed.digest
    images.delete("sdk-push:1")


def test_delete(registries: Registries, images: Images) -> None:
    image, _ = unique_image()
    push_image(registries.plain, "tests/sdk-delete", "v1", image)
    ref = f"{registries.plain.host}/tests/sdk-delete:v1"
    images.pull(ref)
    images.delete(ref)
    with pytest.raises(ImageNotFound):
        images.get(ref)
    assert ref not in [i.name for i in images.list()]
    with pytest.raises(ImageNotFound):
        images.delete(ref)


def test_async_images(image_server: ServerProcess, registries: Registries,
                      tmp_path: Path) -> None:
    image, _ = unique_image()
    push_image(registries.plain, "tests/sdk-async", "v1", image)
    ref = f"{registries.plain.host}/tests/sdk-async:v1"
    archive = tmp_path / "layout.tar"
    archive.write_bytes(oci_layout_archive(image))

    async def main() -> tuple[ImageInfo, ImageInfo, list[ImageInfo], PushResult, int]:
        events: list[dict[str, Any]] = []
        sent: list[int] = []
        async with AsyncImages(api_key=image_server.api_key,
                               base_url=image_server.base_url) as images:
            pulled = await images.pull(ref, on_progress=events.append)
            imported = await images.import_("sdk-async:1", archive,
                                            on_progress=lambda done, _t: sent.append(done))
            listed = await images.list()
            pushed = await images.push("sdk-async:1",
                                       f"{registries.plain.host}/tests/sdk-async:back")
            assert (await images.get(ref)).digest == pulled.digest
            await images.delete("sdk-async:1")
            with pytest.raises(ImageNotFound):
                await images.get("sdk-async:1")
        assert any(e.get("status") == "done" for e in events)
        return pulled, imported, listed, pushed, sent[-1]

    pulled, imported, listed, pushed, sent = asyncio.run(main())
    assert pulled.digest == image.digest and pushed.digest == imported.digest
    assert {ref, "sdk-async:1"} <= {i.name for i in listed}
    assert sent == archive.stat().st_size
