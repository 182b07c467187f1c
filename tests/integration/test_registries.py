"""The test registries and images are real: what tests/registry_client.py pushes to each
distribution registry, skopeo (another client, written by others) reads back byte for byte,
and the registries' auth refuses what it must."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import ssl
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest

from ..oci_images import (
    Layer,
    Opaque,
    Whiteout,
    big_image,
    build_index,
    busybox_image,
    docker_save_archive,
    oci_layout_archive,
)
from ..registries import Credentials, Registries, Registry, server_env, write_auth_file
from ..registry_client import RegistryClient, push_image, push_index


@pytest.fixture(scope="module")
def cert_dir(registries: Registries, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA as skopeo (containers/image) takes it: a directory with ca.crt."""
    directory = tmp_path_factory.mktemp("certs")
    shutil.copy(registries.ca_file, directory / "ca.crt")
    return directory


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True,
                          text=True, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def access(registry: Registry, cert_dir: Path, creds: Credentials | None, prefix: str = ""
           ) -> list[str]:
    """skopeo's flags to reach ``registry`` as ``creds`` (None: anonymous)."""
    tls = ([f"--{prefix}tls-verify=false"] if registry.ca_file is None
           else [f"--{prefix}cert-dir", str(cert_dir)])
    who = [f"--{prefix}no-creds"] if creds is None else [f"--{prefix}creds", ":".join(creds)]
    return tls + who


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["plain", "basic", "token"])
def test_skopeo_reads_what_was_pushed(registries: Registries, cert_dir: Path, kind: str,
                                      tmp_path: Path) -> None:
    registry: Registry = getattr(registries, kind)
    image = busybox_image(Layer.from_files({"etc/motd": b"hello\n"}), user="app")
    assert push_image(registry, "tests/busybox", "v1", image) == image.digest
    ref = f"docker://{registry.host}/tests/busybox:v1"
    flags = access(registry, cert_dir, registry.credentials)
    raw = skopeo("inspect", "--raw", *flags, ref).stdout.encode()
    assert raw == image.manifest
    assert hashlib.sha256(raw).hexdigest() == image.digest.removeprefix("sha256:")
    described = json.loads(skopeo("inspect", *flags, ref).stdout)
    assert described["Layers"] == [layer.digest for layer in image.layers]
    assert described["Architecture"] == "amd64"

    flags = access(registry, cert_dir, registry.credentials, prefix="src-")
    skopeo("copy", *flags, ref, f"dir:{tmp_path / 'copy'}")
    for digest in image.blobs():
        hex_digest = digest.removeprefix("sha256:")
        assert sha256_file(tmp_path / "copy" / hex_digest) == hex_digest


def test_the_busybox_base_runs_as_root_and_as_app(registries: Registries, cert_dir: Path,
                                                  tmp_path: Path) -> None:
    """The base layer, as skopeo fetched it and GNU tar unpacks it, is a working root."""
    image = busybox_image()
    push_image(registries.plain, "tests/base", "v1", image)
    skopeo("copy", "--src-tls-verify=false", f"docker://{registries.plain.host}/tests/base:v1",
           f"dir:{tmp_path / 'copy'}")
    root = tmp_path / "root"
    root.mkdir()
    layer = tmp_path / "copy" / image.layers[0].digest.removeprefix("sha256:")
    subprocess.run(["tar", "-xzpf", str(layer), "--numeric-owner", "-C", str(root)], check=True)
    done = subprocess.run(["/usr/sbin/chroot", str(root), "/bin/sh", "-c",
                           "id app; stat -c '%a %u' /tmp /home/app; echo $PATH; /usr/bin/env true"],
                          capture_output=True, text=True, env={"PATH": "/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["uid=1000(app) gid=1000(app) groups=1000(app)",
                                        "1777 0", "755 1000", "/bin"]


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_wrong_and_missing_credentials_are_refused(registries: Registries, cert_dir: Path,
                                                   kind: str) -> None:
    registry: Registry = getattr(registries, kind)
    image = busybox_image()
    push_image(registry, "tests/private", "v1", image)
    ref = f"docker://{registry.host}/tests/private:v1"
    assert registry.username is not None
    for creds in [(registry.username, "wrong-password"), None]:
        done = skopeo("inspect", "--raw", *access(registry, cert_dir, creds), ref, check=False)
        assert done.returncode != 0
        assert "unauthorized" in done.stderr.lower() or "401" in done.stderr, done.stderr
    with pytest.raises(httpx.HTTPStatusError) as refused:
        push_image(registry, "tests/private", "v2", image, auth=(registry.username, "nope"))
    assert refused.value.response.status_code == 401
    if registry.token_server is not None:
        assert any(user is None for user, _ in registry.token_server.requests)


def test_token_registry_anonymous_pull_of_a_public_repository(registries: Registries,
                                                              cert_dir: Path) -> None:
    """As on Docker Hub: no credentials still earn pull on public repositories, not push."""
    registry = registries.token
    assert registry.token_server is not None
    image = busybox_image()
    push_image(registry, "public/busybox", "v1", image)
    ref = f"docker://{registry.host}/public/busybox:v1"
    raw = skopeo("inspect", "--raw", *access(registry, cert_dir, None), ref).stdout.encode()
    assert raw == image.manifest
    assert ("", ["repository:public/busybox:pull"]) in registry.token_server.requests
    with RegistryClient(registry, auth=None) as anonymous:
        assert anonymous.get_manifest("public/busybox", "v1")[0] == image.manifest
        with pytest.raises(httpx.HTTPStatusError) as refused:
            anonymous.push_image("public/busybox", "v2", image)
    assert refused.value.response.status_code == 401


def test_auth_file_is_docker_config_json(registries: Registries, cert_dir: Path,
                                         tmp_path: Path) -> None:
    """skopeo logs in to both auth registries from write_auth_file's file alone."""
    auth_file = write_auth_file(tmp_path / "config.json", registries.credentials())
    image = busybox_image()
    for registry in (registries.basic, registries.token):
        push_image(registry, "tests/authfile", "v1", image)
        raw = skopeo("inspect", "--raw", "--cert-dir", str(cert_dir), "--authfile",
                     str(auth_file), f"docker://{registry.host}/tests/authfile:v1").stdout
        assert raw.encode() == image.manifest
    env = server_env(registries, auth_file)
    assert env["SANDPORT_REGISTRY_AUTH"] == str(auth_file)
    assert registries.plain.host in env["SANDPORT_INSECURE_REGISTRIES"].split(",")


@pytest.mark.parametrize(("kind", "media"), [("plain", "oci"), ("basic", "docker")])
def test_multi_platform_index(registries: Registries, cert_dir: Path, kind: str,
                              media: str) -> None:
    registry: Registry = getattr(registries, kind)
    amd64 = busybox_image(media=media)  # type: ignore[arg-type]
    arm64 = busybox_image(arch="arm64", variant="v8", media=media)  # type: ignore[arg-type]
    digest = push_index(registry, "tests/multi", "v1", {("linux", "amd64"): amd64,
                                                         ("linux", "arm64", "v8"): arm64},
                        media=media)  # type: ignore[arg-type]
    ref = f"docker://{registry.host}/tests/multi:v1"
    flags = access(registry, cert_dir, registry.credentials)
    index = skopeo("inspect", "--raw", *flags, ref).stdout.encode()
    assert hashlib.sha256(index).hexdigest() == digest.removeprefix("sha256:")
    assert [m["digest"] for m in json.loads(index)["manifests"]] == [amd64.digest, arm64.digest]
    for arch, image in (("amd64", amd64), ("arm64", arm64)):
        config = skopeo("--override-arch", arch, "--override-variant", "v8", "inspect",
                        "--config", "--raw", *flags, ref).stdout.encode()
        assert config == image.config


def test_zstd_layers_and_whiteouts(registries: Registries, cert_dir: Path,
                                   tmp_path: Path) -> None:
    upper = Layer.from_files({"etc/motd": b"zstd\n", "bin/ls": Whiteout(), "home": Opaque()},
                             compression="zstd")
    image = busybox_image(upper, compression="zstd")
    registry = registries.token
    push_image(registry, "tests/zstd", "v1", image)
    flags = access(registry, cert_dir, registry.credentials, prefix="src-")
    skopeo("copy", *flags, f"docker://{registry.host}/tests/zstd:v1", f"dir:{tmp_path / 'z'}")
    manifest = json.loads((tmp_path / "z" / "manifest.json").read_bytes())
    assert {la["mediaType"] for la in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"}
    blob = (tmp_path / "z" / upper.digest.removeprefix("sha256:")).read_bytes()
    assert blob == upper.blob
    with tarfile.open(fileobj=io.BytesIO(upper.tar())) as tar:
        assert tar.getnames() == ["bin", "bin/.wh.ls", "etc", "etc/motd", "home",
                                  "home/.wh..wh..opq"]


def test_archives_are_read_by_skopeo(tmp_path: Path) -> None:
    image = busybox_image(Layer.from_files({"etc/motd": b"archived\n"}), cmd=["cat", "/etc/motd"])
    saved = tmp_path / "saved.tar"
    saved.write_bytes(docker_save_archive(image, "example.com/tests/saved:v3"))
    tagged = f"docker-archive:{saved}:example.com/tests/saved:v3"  # found by its RepoTags
    described = json.loads(skopeo("inspect", tagged).stdout)
    assert described["Layers"] == [layer.diff_id for layer in image.layers]  # uncompressed
    assert skopeo("inspect", "--config", "--raw", tagged).stdout.encode() == image.config
    assert skopeo("inspect", f"{tagged[:-1]}4", check=False).returncode != 0

    layout = tmp_path / "layout.tar"
    layout.write_bytes(oci_layout_archive(image, ref="v3"))
    raw = skopeo("inspect", "--raw", f"oci-archive:{layout}:v3").stdout
    assert raw.encode() == image.manifest
    skopeo("copy", f"oci-archive:{layout}:v3", f"dir:{tmp_path / 'out'}")
    for digest in image.blobs():
        hex_digest = digest.removeprefix("sha256:")
        assert sha256_file(tmp_path / "out" / hex_digest) == hex_digest

    arm64 = busybox_image(arch="arm64", variant="v8")
    index = build_index({("linux", "amd64"): image, ("linux", "arm64", "v8"): arm64})
    layout.write_bytes(oci_layout_archive(index, ref="multi"))
    assert skopeo("inspect", "--raw", f"oci-archive:{layout}:multi").stdout.encode() == (
        index.manifest)
    config = skopeo("--override-arch", "arm64", "--override-variant", "v8", "inspect",
                    "--config", "--raw", f"oci-archive:{layout}:multi").stdout
    assert config.encode() == arm64.config


def test_big_image_is_deterministic_and_pushable(registries: Registries) -> None:
    small = big_image.__wrapped__(total_mb=6, layers=2, seed=7)
    assert small == big_image.__wrapped__(total_mb=6, layers=2, seed=7)
    assert small.digest != big_image.__wrapped__(total_mb=6, layers=2, seed=8).digest
    data = sum(len(layer.tar()) for layer in small.layers[1:])
    assert 6 * 2**20 <= data < 7 * 2**20
    compressed = sum(len(layer.blob) for layer in small.layers[1:])
    assert 0.3 * data < compressed < 0.9 * data  # some incompressible, some text
    push_image(registries.plain, "tests/big", "v1", small)
    described = json.loads(skopeo("inspect", "--tls-verify=false",
                                  f"docker://{registries.plain.host}/tests/big:v1").stdout)
    assert described["Layers"] == [layer.digest for layer in small.layers]


def test_token_server_oauth_password_grant(registries: Registries) -> None:
    """containerd's way to a token (POST, form) also earns one the registry honours."""
    registry = registries.token
    assert registry.token_server is not None and registry.username and registry.password
    image = busybox_image()
    push_image(registry, "tests/oauth", "v1", image)
    verify = ssl.create_default_context(cafile=registries.ca_file)
    form = {"grant_type": "password", "service": "sandport-test-registry",
            "scope": "repository:tests/oauth:pull", "client_id": "tests",
            "username": registry.username, "password": registry.password}
    with httpx.Client(verify=verify) as http:
        token = http.post(registry.token_server.realm, data=form).json()["access_token"]
        answer = http.get(f"{registry.url}/v2/tests/oauth/manifests/v1",
                          headers={"Authorization": f"Bearer {token}",
                                   "Accept": image.media_type})
        assert answer.content == image.manifest
        refused = http.post(registry.token_server.realm, data={**form, "password": "wrong"})
        assert refused.status_code == 401
