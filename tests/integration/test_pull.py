"""Images pulled from real registries on loopback (tests/registries.py): every kind of
registry and auth, both manifest formats, indexes, zstd, the image config honoured inside
the sandbox, shared pulls, and the errors a user meets."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sandport import Sandbox

from .._server import IMAGES_DIR, ServerProcess
from ..oci_images import Layer, Symlink, Whiteout, busybox_image, busybox_layer
from ..registries import Registries, registry_server, server_env, write_auth_file
from ..registry_client import push_image, push_index


@pytest.fixture(scope="module")
def reg_server(registries: Registries, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[ServerProcess]:
    """A server that reaches the session's registries (docker.io mirrored to the plain
    one) with credentials for the basic and token ones."""
    root = tmp_path_factory.mktemp("pull-server")
    auth = write_auth_file(root / "pull-auth.json", registries.credentials())
    with registry_server(registries, root, auth_file=auth) as srv:
        yield srv


@pytest.fixture
def sandbox_on(reg_server: ServerProcess) -> Iterator[Callable[..., Sandbox]]:
    with reg_server.sandboxes() as make:
        yield lambda image, **kwargs: make(image=image, **kwargs)


def _api(srv: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=srv.base_url, headers={"x-api-key": srv.api_key},
                        timeout=120)


def _pull(srv: ServerProcess, ref: str) -> tuple[int, list[dict[str, object]]]:
    with _api(srv) as api, api.stream("POST", "/api/images/pull", json={"ref": ref}) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, [r.json()]
        return 200, [json.loads(line) for line in r.iter_lines() if line.strip()]


APP = Layer.from_files({
    "etc/motd": b"hello from the app layer\n",
    "srv/app/run.sh": b"#!/bin/sh\necho running\n",
    "bin/gone": Symlink("busybox"),
})
APP_TOP = Layer.from_files({"bin/gone": Whiteout(), "srv/app/VERSION": b"1\n"})


def test_an_image_from_a_plain_registry_runs_with_its_config(
        registries: Registries, reg_server: ServerProcess,
        sandbox_on: Callable[..., Sandbox]) -> None:
    image = busybox_image(APP, APP_TOP, env={"PATH": "/bin", "GREETING": "hi there"},
                          workdir="/srv/app", user="app", entrypoint=["/bin/sh"],
                          cmd=["run.sh"])
    digest = push_image(registries.plain, "team/app", "1", image)
    sb = sandbox_on(f"{registries.plain.host}/team/app:1")
    out = sb.exec("cat /etc/motd; echo $GREETING; pwd; id -un; id -u; cat VERSION; "
                  "test -e /bin/gone && echo still-there || echo whited-out")
    assert out.exit_code == 0, out.stderr
    assert out.stdout.splitlines() == ["hello from the app layer", "hi there", "/srv/app",
                                       "app", "1000", "1", "whited-out"]
    as_root = sb.processes.start("id -u", user="root").wait()
    assert as_root.stdout.strip() == "0"
    with _api(reg_server) as api:
        listed = {i["name"]: i for i in api.get("/api/images").json()["images"]}
    shown = listed[f"{registries.plain.host}/team/app:1"]
    assert shown["source"] == "pulled" and shown["digest"] == digest
    assert shown["layers"] == 3 and shown["user"] == "app" and shown["workdir"] == "/srv/app"
    assert shown["entrypoint"] == ["/bin/sh"] and shown["cmd"] == ["run.sh"]
    assert "GREETING=hi there" in shown["env"] and shown["lastUsedAt"]


def test_docker_hub_names_come_through_the_mirror(
        registries: Registries, sandbox_on: Callable[..., Sandbox]) -> None:
    marker = Layer.from_files({"etc/node-version": b"v22-test\n"})
    push_image(registries.plain, "library/node", "22", busybox_image(marker))
    sb = sandbox_on("node:22")
    assert sb.exec("cat /etc/node-version").stdout == "v22-test\n"
    sb2 = sandbox_on("docker.io/library/node:22")  # the same image, held now
    assert sb2.exec("cat /etc/node-version").stdout == "v22-test\n"


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_registries_with_credentials(kind: str, registries: Registries,
                                     sandbox_on: Callable[..., Sandbox]) -> None:
    registry = getattr(registries, kind)
    marker = Layer.from_files({"etc/where": f"{kind}\n".encode()})
    push_image(registry, f"private/{kind}", "v1", busybox_image(marker, media="docker"))
    sb = sandbox_on(f"{registry.host}/private/{kind}:v1")
    assert sb.exec("cat /etc/where").stdout == f"{kind}\n"


def test_a_multi_platform_index_gives_this_hosts_image(
        registries: Registries, sandbox_on: Callable[..., Sandbox]) -> None:
    amd = busybox_image(Layer.from_files({"etc/arch": b"amd64\n"}))
    arm = busybox_image(Layer.from_files({"etc/arch": b"arm64\n"}), arch="arm64",
                        variant="v8")
    push_index(registries.plain, "multi/app", "1", {("linux", "arm64", "v8"): arm,
                                                     ("linux", "amd64"): amd})
    sb = sandbox_on(f"{registries.plain.host}/multi/app:1")
    assert sb.exec("cat /etc/arch").stdout == "amd64\n"


def test_an_index_without_this_platform_is_refused(registries: Registries,
                                                   reg_server: ServerProcess) -> None:
    arm = busybox_image(arch="arm64")
    push_index(registries.plain, "multi/armonly", "1", {("linux", "arm64"): arm},
               media="docker")
    status, body = _pull(reg_server, f"{registries.plain.host}/multi/armonly:1")
    assert status == 422 and body[0]["error"] == "image_rejected"
    assert "linux/amd64" in str(body[0]["message"]) and "linux/arm64" in str(body[0]["message"])


def test_zstd_layers(registries: Registries, sandbox_on: Callable[..., Sandbox]) -> None:
    top = Layer.from_files({"etc/compressed": b"zstd\n"}, compression="zstd")
    image = busybox_image(top, compression="zstd")
    push_image(registries.plain, "zstd/app", "1", image)
    assert sandbox_on(f"{registries.plain.host}/zstd/app:1").exec(
        "cat /etc/compressed").stdout == "zstd\n"


def test_pull_streams_progress_and_ends_with_the_image(registries: Registries,
                                                       reg_server: ServerProcess) -> None:
    big = Layer.from_files({"opt/blob": bytes(range(256)) * 16384})  # 4 MiB
    image = busybox_image(big)
    digest = push_image(registries.plain, "progress/app", "1", image)
    status, lines = _pull(reg_server, f"{registries.plain.host}/progress/app:1")
    assert status == 200
    assert lines[0]["status"] == "resolving"
    per_layer = [line for line in lines if "layer" in line]
    assert {line["layer"] for line in per_layer} >= {big.digest}
    done = [line for line in per_layer if line["layer"] == big.digest and
            line["status"] in ("done", "exists")]
    assert done and done[-1]["done"] == done[-1]["total"] == len(big.blob)
    final = lines[-1]["image"]
    assert isinstance(final, dict) and final["digest"] == digest
    again = _pull(reg_server, f"{registries.plain.host}/progress/app:1")[1]
    assert all(line.get("status") != "downloading" for line in again)  # held: nothing moves


def test_creates_of_one_reference_share_one_pull(registries: Registries,
                                                 reg_server: ServerProcess) -> None:
    layer = Layer.from_files({"opt/shared": b"x" * (2 << 20)})
    push_image(registries.plain, "shared/app", "1", busybox_image(layer))
    ref = f"{registries.plain.host}/shared/app:1"
    before = registries.plain.log().count(f"/v2/shared/app/blobs/{layer.digest}")
    made: list[Sandbox] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            made.append(Sandbox.create(ref, api_key=reg_server.api_key,
                                       base_url=reg_server.base_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert [sb.exec("wc -c < /opt/shared").stdout.strip() for sb in made] == [
            str(2 << 20)] * 3
        log = (registries.plain.log_path.read_text(errors="replace"))
        gets = log.count(f"GET /v2/shared/app/blobs/{layer.digest}") - before
        assert gets <= 1, f"the layer was fetched {gets} times"
    finally:
        for sb in made:
            sb.stop()
            sb.close()


@pytest.mark.parametrize(("ref", "status", "code", "says"), [
    ("{plain}/nothing/here:1", 404, "image_not_found", "nothing/here:1"),
    ("{plain}/team/app:no-such-tag", 404, "image_not_found", "no-such-tag"),
    ("127.0.0.1:9/closed/port:1", 502, "registry_error", "127.0.0.1:9"),
    ("Bad..Ref", 400, "invalid_request", "Bad..Ref"),
])
def test_pull_errors_name_the_cause(registries: Registries, reg_server: ServerProcess,
                                    ref: str, status: int, code: str, says: str) -> None:
    ref = ref.replace("{plain}", registries.plain.host)
    got, body = _pull(reg_server, ref)
    assert (got, body[0]["error"]) == (status, code), body
    assert says in str(body[0]["message"])
    with _api(reg_server) as api:
        created = api.post("/api/sandbox", json={"imageName": ref})
    assert created.status_code == status and created.json()["error"] == code


@pytest.mark.parametrize("named", [
    "localhost:{plain_port}",  # the plain registry itself, under a name the operator did not give
    "127.0.0.2:5000", "10.1.2.3:5000", "192.168.0.1", "169.254.169.254", "[::1]:5000",
    "[::ffff:7f00:1]:{plain_port}", "[fd00::1]:5000", "100.64.0.1:5000",
])
def test_registries_the_operator_did_not_name_are_reached_only_on_the_internet(
        registries: Registries, reg_server: ServerProcess, named: str) -> None:
    """A caller naming a registry must not make the server connect to the host's own
    services, the sandboxes' network or a metadata address: 403, and nothing is sent."""
    named = named.replace("{plain_port}", registries.plain.host.rsplit(":", 1)[1])
    ref = f"{named}/team/app:1"
    push_image(registries.plain, "team/app", "1", busybox_image())
    before = registries.plain.log_path.read_text(errors="replace").count("/v2/team/app/")
    got, body = _pull(reg_server, ref)
    assert (got, body[0]["error"]) == (403, "forbidden"), body
    assert "loopback, private, link-local" in str(body[0]["message"])
    with _api(reg_server) as api:
        created = api.post("/api/sandbox", json={"imageName": ref})
    assert (created.status_code, created.json()["error"]) == (403, "forbidden")
    after = registries.plain.log_path.read_text(errors="replace").count("/v2/team/app/")
    assert after == before  # never reached


def test_credentials_refused(registries: Registries, fresh_server: Callable[..., ServerProcess],
                             tmp_path: Path) -> None:
    push_image(registries.basic, "private/refused", "1", busybox_image())
    push_image(registries.token, "private/refused", "1", busybox_image())
    wrong = write_auth_file(tmp_path / "wrong.json", {
        registries.basic.host: ("basic-user", "wrong"),
        registries.token.host: ("token-user", "wrong")})
    srv = fresh_server(env=server_env(registries, wrong))
    for registry in (registries.basic, registries.token):
        status, body = _pull(srv, f"{registry.host}/private/refused:1")
        assert (status, body[0]["error"]) == (502, "registry_auth_failed"), body
        assert registry.host in str(body[0]["message"])
    nobody = fresh_server(env=server_env(registries))  # no auth file at all
    status, body = _pull(nobody, f"{registries.basic.host}/private/refused:1")
    assert (status, body[0]["error"]) == (502, "registry_auth_failed"), body


def test_credentials_from_a_docker_credential_helper(
        registries: Registries, fresh_server: Callable[..., ServerProcess],
        tmp_path: Path) -> None:
    """An auth file that names a credential helper (as Docker Desktop, gcloud and ecr
    write them): the server runs ``docker-credential-NAME get`` for the registry."""
    basic = registries.basic
    assert basic.credentials is not None
    push_image(basic, "private/helper", "1", busybox_image())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-sandportci"
    user, password = basic.credentials
    helper.write_text(f"""#!/bin/sh
read -r server
echo "$server" > {tmp_path}/asked
[ "$server" = "{basic.host}" ] || {{ echo "credentials not found"; exit 1; }}
echo '{{"Username": "{user}", "Secret": "{password}"}}'
""")
    helper.chmod(0o755)
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"credHelpers": {basic.host: "sandportci"}}))
    srv = fresh_server(env=server_env(registries, auth)
                       | {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    status, body = _pull(srv, f"{basic.host}/private/helper:1")
    assert status == 200 and "image" in body[-1], body
    assert (tmp_path / "asked").read_text().strip() == basic.host


def _registry_blob(storage: Path, digest: str) -> Path:
    hex_ = digest.removeprefix("sha256:")
    return storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_blob_that_is_not_what_its_digest_says_is_refused(
        damage: str, registries: Registries, reg_server: ServerProcess) -> None:
    layer = Layer.from_files({f"opt/{damage}": damage.encode() * 100000})
    push_image(registries.plain, f"damaged/{damage}", "1", busybox_image(layer))
    blob = _registry_blob(registries.plain.storage, layer.digest)
    data = bytearray(blob.read_bytes())
    if damage == "flipped":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    blob.write_bytes(bytes(data))
    layers_before = set((IMAGES_DIR / "layers").iterdir())
    status, lines = _pull(reg_server, f"{registries.plain.host}/damaged/{damage}:1")
    last = lines[-1]
    assert last.get("error") == "registry_error", lines
    assert layer.digest in str(last["message"])
    assert not (IMAGES_DIR / "blobs" / "sha256" / layer.digest[7:]).exists()
    assert not (IMAGES_DIR / "layers" / layer.diff_id[7:]).exists()
    assert set((IMAGES_DIR / "layers").iterdir()) <= layers_before | {
        IMAGES_DIR / "layers" / busybox_layer().diff_id[7:]}
    with _api(reg_server) as api:
        names = [i["name"] for i in api.get("/api/images").json()["images"]]
    assert f"{registries.plain.host}/damaged/{damage}:1" not in names


def test_an_operator_allow_list_of_registries(registries: Registries,
                                              fresh_server: Callable[..., ServerProcess]) -> None:
    push_image(registries.plain, "library/allowed", "1", busybox_image())
    push_image(registries.plain, "listed/not", "1", busybox_image())
    srv = fresh_server(env={**server_env(registries), "SANDPORT_REGISTRIES_ALLOWED": "docker.io"})
    status, body = _pull(srv, "allowed:1")  # docker.io, through its (loopback) mirror
    assert status == 200 and "image" in body[-1], body
    refused = f"{registries.plain.host}/listed/not:1"
    status, body = _pull(srv, refused)
    assert (status, body[0]["error"]) == (403, "forbidden"), body
    assert registries.plain.host in str(body[0]["message"])
    with _api(srv) as api:
        created = api.post("/api/sandbox", json={"imageName": refused})
        assert created.status_code == 403
        pushed = api.post("/api/images/python/push", json={"ref": refused})
        assert pushed.status_code == 403, pushed.text


def test_a_server_killed_mid_pull_leaves_nothing_half_stored(
        registries: Registries, fresh_server: Callable[..., ServerProcess],
        tmp_path: Path) -> None:
    layers = [Layer.from_files({f"opt/part{n}": bytes([n]) * (1 << 20)}) for n in range(3)]
    push_image(registries.plain, "crash/mid-pull", "1", busybox_image(*layers))
    ref = f"{registries.plain.host}/crash/mid-pull:1"
    images = tmp_path / "images"
    env = {**server_env(registries), "SANDPORT_IMAGES_DIR": str(images),
           "SANDPORT_BUILD_IMAGES": ","}
    doomed = fresh_server(env={**env, "SANDPORT_TEST_CRASH_AT": "pull.layer_published"})
    with pytest.raises(httpx.HTTPError):
        _pull(doomed, ref)  # the server dies after its first layer is in place
    assert doomed.proc is not None and doomed.proc.wait(timeout=30) == 137
    again = fresh_server(data_dir=doomed.data_dir, env=env)
    with _api(again) as api:
        assert ref not in [i["name"] for i in api.get("/api/images").json()["images"]]
    for layer in (images / "layers").iterdir():  # what is in place is whole
        assert (layer / "fs").is_dir() and (layer / "layer.json").is_file(), layer
    status, lines = _pull(again, ref)
    assert status == 200 and "image" in lines[-1], lines
    with again.sandboxes() as make:
        sb = make(image=ref)
        assert sb.exec("wc -c < /opt/part2").stdout.strip() == str(1 << 20)


def test_a_pull_goes_on_when_its_client_reads_nothing_and_leaves(
        registries: Registries, fresh_server: Callable[..., ServerProcess],
        tmp_path: Path) -> None:
    """A client that sends the pull, reads not one byte of its progress and hangs up: the
    pull is the server's, not the connection's; it finishes and the image is there, and
    the server answers others meanwhile."""
    layers = [Layer.from_files({f"opt/big{n}": os.urandom(6 << 20)}) for n in range(3)]
    push_image(registries.plain, "silent/client", "1", busybox_image(*layers))
    ref = f"{registries.plain.host}/silent/client:1"
    srv = fresh_server(env={**server_env(registries), "SANDPORT_IMAGES_DIR":
                            str(tmp_path / "images"), "SANDPORT_BUILD_IMAGES": ","})
    host, port = srv.base_url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"ref": ref}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /api/images/pull HTTP/1.1\r\nHost: " + host.encode()
                     + b"\r\nx-api-key: " + srv.api_key.encode()
                     + b"\r\ncontent-type: application/json\r\ncontent-length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        with _api(srv) as api:  # others are answered while it is under way
            assert api.get("/api/images").status_code == 200
    deadline = time.monotonic() + 60
    names: list[object] = []
    while time.monotonic() < deadline:
        with _api(srv) as api:
            names = [i["name"] for i in api.get("/api/images").json()["images"]]
        if ref in names:
            break
        time.sleep(0.2)
    assert ref in names, names
    with srv.sandboxes() as make:
        assert make(image=ref).exec("wc -c < /opt/big2").stdout.strip() == str(6 << 20)
