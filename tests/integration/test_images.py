"""The built-in images: built from Debian packages, cached, and usable by name."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import httpx

from sandport import Sandbox
from sandport.runtime.images.layerstore import LayerStore, hex_of

from .._server import IMAGES_DIR, ServerProcess


def test_image_list(server: ServerProcess) -> None:
    with server.client() as api:
        images = {i["imageName"]: i for i in api.get("/api/images").json()["images"]}
    assert {"base", "python", "node"} <= set(images)
    assert images["python"]["built"] is True
    assert images["python"]["sizeBytes"] > 50 * 2**20


def test_built_in_images_live_in_the_layer_store(server: ServerProcess) -> None:
    """A built-in image is an OCI image in the one layer store: its manifest and config
    are blobs named by their digests, its layer a directory keyed by its diff_id."""
    record = LayerStore(IMAGES_DIR).get("", "python")
    assert record is not None and record.source == "builtin"
    manifest = (IMAGES_DIR / "blobs" / "sha256" / hex_of(record.digest)).read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == record.digest
    config_digest = json.loads(manifest)["config"]["digest"]
    config = json.loads((IMAGES_DIR / "blobs" / "sha256" / hex_of(config_digest)).read_text())
    assert config["os"] == "linux" and "Env" in config["config"]
    assert config["rootfs"]["diff_ids"] == record.diff_ids
    (layer,) = record.diff_ids
    assert (LayerStore(IMAGES_DIR).layer_path(layer) / "usr" / "bin" / "python3").exists()
    assert not (IMAGES_DIR / "python").exists()  # no tree of an older server is left


def test_node_image_builds_on_first_use(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(image="node")
    result = sb.exec("node -e 'console.log(6 * 7)' && npm --version")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == "42"


def test_base_image_build_streams_progress(server: ServerProcess,
                                          make_sandbox: Callable[..., Sandbox]) -> None:
    lines = []
    with httpx.stream("POST", f"{server.base_url}/api/images/base/build",
                      headers={"x-api-key": server.api_key}, timeout=600) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert sum("progress" in line for line in lines) > 3
    assert lines[-1]["image"]["imageName"] == "base" and lines[-1]["image"]["built"]
    sb = make_sandbox(image="base")
    assert sb.exec("cat /etc/debian_version").exit_code == 0
    assert sb.exec("command -v python3").exit_code != 0  # base has no python
