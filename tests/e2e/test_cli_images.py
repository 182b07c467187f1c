"""``sandport image ...`` as a user types it: against a real server and real registries on
loopback; progress in a log (one line per change of state) and on a terminal (redrawn in
place), results on stdout, refusals as one line without a traceback."""

from __future__ import annotations

import json
import os
import pty
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .._server import ServerProcess
from ..oci_images import Layer, big_image, busybox_image, docker_save_archive, sha256
from ..registries import Registries, registry_server
from ..registry_client import RegistryClient, push_image

ANSI = re.compile(r"\x1b\[")
LAYER_LINE = re.compile(r"^([0-9a-f]{12}): (downloading|unpacking|done|exists) \(")


@pytest.fixture(scope="module")
def image_server(registries: Registries,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that reaches the test registries, with an image store of its own."""
    with registry_server(registries, tmp_path_factory.mktemp("cli-images"),
                         own_images=True) as srv:
        yield srv


def user_env(server: ServerProcess) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDPORT_")}
    return {**env, "SANDPORT_BASE_URL": server.base_url, "SANDPORT_API_KEY": server.api_key}


def sandport(server: ServerProcess, *args: str,
             stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "sandport", *args], env=user_env(server),
                          input=stdin, capture_output=True, timeout=120)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    return last


def test_pull_shows_layer_states_then_list_inspect_rm(image_server: ServerProcess,
                                                      registries: Registries) -> None:
    # Two layers of a few MB, this run's own: each downloads in several chunks.
    image = big_image.__wrapped__(total_mb=6, layers=2, seed=secrets.randbelow(2**31))
    tag = secrets.token_hex(4)
    push_image(registries.plain, "tests/cli-pull", tag, image)
    ref = f"{registries.plain.host}/tests/cli-pull:{tag}"
    pulled = sandport(image_server, "image", "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout == ref + "\n"
    assert not ANSI.search(pulled.stderr) and "\r" not in pulled.stderr
    lines = pulled.stderr.splitlines()
    assert lines[0] == f"resolving {ref}"
    assert lines[1].startswith(f"pulling {ref} (") and "3 layers" in lines[1]
    assert lines[-1].startswith(f"pulled {ref} (") and "3 layers" in lines[-1]
    per_layer: dict[str, list[str]] = {}
    for line in lines[2:-1]:
        match = LAYER_LINE.match(line)
        assert match, line
        per_layer.setdefault(match[1], []).append(match[2])
    big = image.layers[1].digest.removeprefix("sha256:")[:12]
    # One line per state, however many chunks the download took.
    assert per_layer[big] == ["downloading", "unpacking", "done"]
    assert len(per_layer) == 3 and all(s[-1] in ("done", "exists") for s in per_layer.values())

    listed = sandport(image_server, "image", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "SOURCE", "SIZE", "LAYERS", "CREATED", "LAST", "USED"]
    row = next(r for r in rows if r.split()[0] == ref)
    assert row.split()[1] == "pulled" and row.split()[4] == "3"
    assert header.index("SOURCE") == row.index("pulled")  # columns line up

    inspected = sandport(image_server, "image", "inspect", ref)
    detail = json.loads(inspected.stdout)
    assert (detail["name"], detail["digest"], detail["layers"]) == (ref, image.digest, 3)

    removed = sandport(image_server, "image", "rm", ref)
    assert (removed.returncode, removed.stdout) == (0, ref + "\n")
    assert "not" in one_line_error(sandport(image_server, "image", "inspect", ref))


def test_pull_on_a_terminal_redraws_in_place(image_server: ServerProcess,
                                             registries: Registries) -> None:
    image = busybox_image(Layer.from_files({"etc/motd": secrets.token_bytes(300_000)}))
    push_image(registries.plain, "tests/cli-tty", "v1", image)
    ref = f"{registries.plain.host}/tests/cli-tty:v1"
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sandport", "image", "pull", ref],
                            env={**user_env(image_server), "TERM": "xterm", "COLUMNS": "100"},
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, shown
    assert out.decode() == ref + "\n"
    text = shown.decode()
    assert "\x1b[2K" in text and re.search(r"\x1b\[\d+F", text)  # cleared and redrawn
    assert "2/2 layers" in text and f"pulled {ref}" in text
    assert all(len(line) < 100 for line in re.split(r"\x1b\[2K|\r?\n", text))


def test_import_push_and_pull_back(image_server: ServerProcess, registries: Registries,
                                   tmp_path: Path) -> None:
    image = busybox_image(Layer.from_files({"etc/motd": secrets.token_bytes(3 << 20)}))
    archive = tmp_path / "saved.tar"
    archive.write_bytes(docker_save_archive(image, "example.com/app:1"))
    imported = sandport(image_server, "image", "import", "cli-import:1", str(archive))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == "cli-import:1\n"
    assert not ANSI.search(imported.stderr)
    assert "uploading saved.tar" in imported.stderr and "(100%)" in imported.stderr
    assert imported.stderr.splitlines()[-1].startswith("imported cli-import:1 (")
    assert len(imported.stderr.splitlines()) <= 8  # quarters, not one line per chunk

    piped = sandport(image_server, "image", "import", "-q", "cli-import:stdin", "-",
                     stdin=archive.read_bytes())
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, "cli-import:stdin\n", "")

    tag = secrets.token_hex(4)
    ref = f"{registries.plain.host}/tests/cli-pushed:{tag}"
    pushed = sandport(image_server, "image", "push", "cli-import:1", ref)
    assert pushed.returncode == 0, pushed.stderr
    where, _, digest = pushed.stdout.strip().partition("@")
    assert where == ref and digest.startswith("sha256:")
    assert pushed.stderr.startswith(f"pushing {ref}")
    with RegistryClient(registries.plain, None) as registry:
        manifest, _ = registry.get_manifest("tests/cli-pushed", tag)
    assert sha256(manifest) == digest
    assert json.loads(sandport(image_server, "image", "inspect", "cli-import:1").stdout)[
        "digest"] == digest
    removed = sandport(image_server, "image", "rm", "cli-import:1", "cli-import:stdin")
    assert removed.stdout.split() == ["cli-import:1", "cli-import:stdin"]


def test_refusals_are_one_line_without_traceback(image_server: ServerProcess,
                                                 registries: Registries,
                                                 tmp_path: Path) -> None:
    push_image(registries.plain, "tests/cli-errors", "v1", busybox_image())
    push_image(registries.basic, "tests/cli-private", "v1", busybox_image())
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an archive" * 1000)
    cases = {
        "not found": ("image", "pull", f"{registries.plain.host}/tests/cli-errors:nope"),
        registries.basic.host: ("image", "pull", f"{registries.basic.host}/tests/cli-private:v1"),
        "reference": ("image", "pull", "Not A Reference"),
        "cannot read": ("image", "import", "cli-x:1", str(tmp_path / "missing.tar")),
        "does not exist": ("image", "rm", "cli-nosuch:1"),
        "not an image name": ("image", "inspect", "a/../b"),
        "not a tar file": ("image", "import", "-q", "cli-x:1", str(junk)),
    }
    one_line_error(sandport(image_server, "image", "push", "cli-nosuch:1",
                            f"{registries.plain.host}/tests/x:1"))
    for expected, args in cases.items():
        result = sandport(image_server, *args)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert expected in one_line_error(result), (args, result.stderr)
