"""Image references, registry auth challenges, platform choice: the pure rules."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from sandport.errors import Forbidden, ImageRejected, RegistryAuthFailed, ValidationFailed
from sandport.runtime.images import registry
from sandport.runtime.images.layerstore import hex_of, record_key
from sandport.runtime.images.pull import choose_platform, parse_config, parse_image_manifest
from sandport.runtime.images.reference import Reference, check_local_name, parse_reference
from sandport.runtime.images.registry import Manifest, RegistryConfig, parse_challenge

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "canonical"), [
    ("node:22", "docker.io/library/node:22"),
    ("ubuntu", "docker.io/library/ubuntu:latest"),
    ("docker.io/library/python:3.12-slim", "docker.io/library/python:3.12-slim"),
    ("index.docker.io/library/python:3", "docker.io/library/python:3"),
    ("team/app", "docker.io/team/app:latest"),
    ("ghcr.io/org/app:tag", "ghcr.io/org/app:tag"),
    ("registry.example.com:5000/team/app@" + D, "registry.example.com:5000/team/app@" + D),
    ("127.0.0.1:5000/a/b/c:1.0", "127.0.0.1:5000/a/b/c:1.0"),
    ("localhost/app", "localhost/app:latest"),
    ("[::1]:5000/app:v1", "[::1]:5000/app:v1"),
    ("my_app-x/sub__part.v2:V_1.2-rc", "docker.io/my_app-x/sub__part.v2:V_1.2-rc"),
    ("my.registry/x", "my.registry/x:latest"),  # a dot makes the first part a host
    ("app:1@" + D, "docker.io/library/app:1@" + D),
])
def test_references_resolve_as_docker_does(text: str, canonical: str) -> None:
    assert str(parse_reference(text)) == canonical


def test_reference_parts() -> None:
    ref = parse_reference("registry.local:5000/team/app@" + D)
    assert ref == Reference("registry.local:5000", "team/app", None, D)
    assert ref.reference == D
    assert parse_reference("node:22").reference == "22"


@pytest.mark.parametrize("text", [
    "", " node", "Node:22", "node:", "node:-bad", "../etc", "a/../b", "a//b", "/abs",
    "node@sha256:short", "node@md5:" + "0" * 32, "a" * 300, "reg.io/" + "a" * 260,
    "bad host:1/x", "x/.hidden", "node:22\n", "a..b/c", "-lead/x",
])
def test_bad_references_say_so(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_reference(text)


@pytest.mark.parametrize("name", ["myapp", "my-app.v2", "app:1", "app:v1.2_rc-3"])
def test_local_names(name: str) -> None:
    assert check_local_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "App", ".hidden", "x:", "a..b", "x" * 70])
def test_bad_local_names(name: str) -> None:
    with pytest.raises(ValidationFailed):
        check_local_name(name)


def test_digests_that_name_files_are_checked() -> None:
    assert hex_of(D) == "ab" * 32
    for bad in ("sha256:../../etc/passwd", "sha256:" + "AB" * 32, "md5:00", D + "0"):
        with pytest.raises(ValueError):
            hex_of(bad)
    assert record_key("t1", "app") != record_key("t2", "app")


def test_bearer_and_basic_challenges() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:library/node:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "registry.example",
                      "scope": "repository:library/node:pull,push"}
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic",
                                                                {"realm": "Registry Realm"})


def test_credentials_from_a_docker_auth_file(tmp_path: Path) -> None:
    auth = tmp_path / "config.json"
    encode = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    auth.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": encode("hubuser:hubpw")},
        "reg.example:5000": {"auth": encode("u:p:with:colons")},
        "https://ghcr.io": {"username": "gh", "password": "tok"},
    }}))
    config = RegistryConfig(frozenset({"reg.example:5000"}), {},
                            {"docker.io": "http://127.0.0.1:9"}, auth)
    assert config.credentials("docker.io", "https://registry-1.docker.io") == (
        "hubuser", "hubpw")
    assert config.credentials("reg.example:5000", "http://reg.example:5000") == (
        "u", "p:with:colons")
    assert config.credentials("ghcr.io", "https://ghcr.io") == ("gh", "tok")
    assert config.credentials("quay.io", "https://quay.io") is None
    assert config.endpoint("docker.io") == "http://127.0.0.1:9"  # the mirror only
    assert config.endpoint("reg.example:5000") == "http://reg.example:5000"
    assert config.endpoint("ghcr.io") == "https://ghcr.io"
    missing = RegistryConfig(frozenset(), {}, {}, tmp_path / "none.json")
    assert missing.credentials("ghcr.io", "https://ghcr.io") is None


HELPER = """#!/bin/sh
# docker's credential helper protocol: "get", the server on stdin, JSON on stdout
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> "$(dirname "$0")/asked"
case "$server" in
  ghcr.io) echo '{"ServerURL": "ghcr.io", "Username": "from-helper", "Secret": "s1"}' ;;
  https://index.docker.io/v1/) echo '{"Username": "hub-helper", "Secret": "s2"}' ;;
  slow.example) sleep 30 ;;
  odd.example) echo 'not json' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def test_credentials_from_docker_credential_helpers(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """credHelpers for its registry, else credsStore, else auths, as docker reads them;
    the helpers are real programs speaking docker's protocol."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sandporttest", "sandportstore"):
        helper = bin_dir / f"docker-credential-{name}"
        helper.write_text(HELPER)
        helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(registry, "HELPER_TIMEOUT_S", 1)
    auth = tmp_path / "config.json"
    encode = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    auth.write_text(json.dumps({
        "credHelpers": {"ghcr.io": "sandporttest", "gone.example": "nosuchhelper",
                        "slow.example": "sandporttest", "odd.example": "sandporttest",
                        "bad.example": "../../bin/sh"},
        "credsStore": "sandportstore",
        "auths": {"quay.io": {"auth": encode("from:auths")}, "ghcr.io": {"auth": encode("x:y")}},
    }))
    config = RegistryConfig(frozenset(), {}, {}, auth)
    assert config.credentials("ghcr.io", "https://ghcr.io") == ("from-helper", "s1")
    assert config.credentials("docker.io", "https://registry-1.docker.io") == (
        "hub-helper", "s2")  # through credsStore, asked for Docker Hub's key
    assert config.credentials("quay.io", "https://quay.io") == ("from", "auths")  # none there
    assert config.credentials("other.example", "https://other.example") is None
    assert (bin_dir / "asked").read_text().split() == [
        "ghcr.io", "https://index.docker.io/v1/", "quay.io", "other.example"]
    for host, says in [("gone.example", "not on this server's PATH"),
                       ("slow.example", "gave no answer"), ("odd.example", "protocol"),
                       ("bad.example", "not a helper name")]:
        with pytest.raises(RegistryAuthFailed, match=says):
            config.credentials(host, f"https://{host}")


INDEX = {"manifests": [
    {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "arm64",
                                                  "variant": "v8"}},
    {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:" + "3" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
    {"digest": "sha256:" + "4" * 64, "platform": {"os": "windows", "architecture": "amd64"}},
]}
REF = parse_reference("node:22")


def test_the_hosts_platform_is_chosen_from_an_index() -> None:
    assert choose_platform(INDEX, REF, ("linux", "amd64", None)) == "sha256:" + "2" * 64
    assert choose_platform(INDEX, REF, ("linux", "arm64", "v8")) == "sha256:" + "1" * 64
    with pytest.raises(ImageRejected, match="linux/s390x.*linux/arm64/v8, linux/amd64"):
        choose_platform(INDEX, REF, ("linux", "s390x", None))


def _manifest(layers: list[dict[str, object]], media: str = "application/vnd.oci.image."
              "manifest.v1+json") -> Manifest:
    body = json.dumps({"schemaVersion": 2, "mediaType": media,
                       "config": {"digest": D, "size": 10, "mediaType": "x"},
                       "layers": layers}).encode()
    return Manifest(media, body, D)


def test_manifests_name_supported_layers_only() -> None:
    ok = {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": D, "size": 5}
    config, layers = parse_image_manifest(_manifest([ok]), REF)
    assert config.digest == D and layers[0].size == 5
    foreign = {**ok, "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"}
    with pytest.raises(ImageRejected, match="foreign"):
        parse_image_manifest(_manifest([foreign]), REF)
    with pytest.raises(ImageRejected, match="schema 1"):
        parse_image_manifest(Manifest(
            "application/vnd.docker.distribution.manifest.v1+prettyjws", b"{}", D), REF)


def test_config_must_name_as_many_layers_as_the_manifest() -> None:
    body = json.dumps({"rootfs": {"type": "layers", "diff_ids": [D]}}).encode()
    assert parse_config(body, REF, 1)[1] == [D]
    with pytest.raises(ImageRejected, match="names 1 layers, its manifest 2"):
        parse_config(body, REF, 2)
    with pytest.raises(ImageRejected):
        parse_config(b"not json", REF, 1)


def test_an_allow_list_limits_the_registries(tmp_path: Path) -> None:
    config = RegistryConfig(frozenset(), {}, {}, tmp_path / "a.json",
                            frozenset({"docker.io", "reg.local:5000", "*.corp.example"}))
    for ok in ("docker.io", "reg.local:5000", "a.corp.example", "b.a.corp.example:443"):
        config.check_allowed(ok)
    for refused in ("reg.local:5001", "127.0.0.1:5000", "corp.example", "evilcorp.example",
                    "ghcr.io"):
        with pytest.raises(Forbidden, match=refused):
            config.check_allowed(refused)
    RegistryConfig(frozenset(), {}, {}, tmp_path / "a.json").check_allowed("10.0.0.1:6379")
