"""Attacks on the Dockerfile builder (control/builder.py, runtime/images/buildcopy.py): a
hostile context, Dockerfile, build args and RUN steps must not reach the host or another
team, and every failure must end as an error the client reads, with nothing left behind
(no overlay mounted on the host, no staging directory, no sandbox)."""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandport import Sandbox

from .._server import ServerProcess
from ..oci_images import busybox_image
from ..registries import Registries, registry_server, server_env
from ..registry_client import push_image
from .test_build import build, context_tar

HOST_PATHS = ("/var/", "/tmp/", "/work/", "/proc/self")


@pytest.fixture(scope="module")
def srv(registries: Registries, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[ServerProcess]:
    push_image(registries.plain, "library/busybox", "1", busybox_image())
    root = tmp_path_factory.mktemp("probe-server")
    with registry_server(registries, root, own_images=True) as server:
        yield server


@pytest.fixture
def made(srv: ServerProcess) -> Iterator[Callable[..., Sandbox]]:
    with srv.sandboxes() as make:
        yield make


def images_dir(srv: ServerProcess) -> Path:
    return Path(srv.env["SANDPORT_IMAGES_DIR"])


def leftovers(srv: ServerProcess) -> tuple[list[str], list[str], list[str]]:
    """(overlays mounted under the image store, its tmp/ entries, active sandboxes)."""
    store = str(images_dir(srv))
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if len(line.split()) > 1 and line.split()[1].startswith(store)]
    tmp = sorted(p.name for p in (images_dir(srv) / "tmp").iterdir())
    with srv.client() as api:
        listed = api.get("/api/sandboxes", params={"status": "active"}).json()
    active = [s["id"] for s in listed["sandboxes"] if s["status"] == "active"]
    return mounts, tmp, active


def assert_nothing_left(srv: ServerProcess, *, sandboxes: bool = True) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = leftovers(srv)
        if not sandboxes:
            found = (found[0], found[1], [])
        if found == ([], [], []):
            return
        time.sleep(0.2)
    assert found == ([], [], []), found


def build_or_cut(srv: ServerProcess, name: str, body: bytes, **params: Any
                 ) -> tuple[int, list[dict[str, Any]]]:
    """build(), with a stream the server cut short as a last event saying so."""
    try:
        return build(srv, name, body, **params)
    except httpx.RemoteProtocolError:
        return 200, [{"cut": "the server ended the stream without an error object"}]


def tar_of(*entries: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tuple):
                info, data = entry
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(entry)
    return out.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    made = tarfile.TarInfo(name)
    made.type, made.linkname, made.mode, made.mtime = kind, link, 0o644, 1_700_000_000
    return made


def dockerfile(text: str) -> tuple[tarfile.TarInfo, bytes]:
    return info("Dockerfile"), text.encode()


def failed(events: list[dict[str, Any]], quoted: str = "") -> dict[str, Any]:
    """The build's last line: an error object (the stream ended as the API says), naming
    no host path (``quoted``: the user's own text it may repeat)."""
    last = events[-1]
    assert "error" in last and "message" in last, events[-3:]
    for host in HOST_PATHS:
        assert host not in last["message"].replace(quoted or "\0", ""), last
    return last


# -- the context ------------------------------------------------------------------------

def test_a_hard_link_through_a_symlinked_directory_reads_no_host_file(
        srv: ServerProcess, made: Callable[..., Sandbox]) -> None:
    body = tar_of(dockerfile("FROM busybox:1\nCOPY x /x\n"),
                  info("out", tarfile.SYMTYPE, "/etc"),
                  info("x", tarfile.LNKTYPE, "out/hostname"))
    status, events = build(srv, "probe-hl:1", body)
    if status == 200 and "image" in events[-1]:
        host = Path("/etc/hostname").read_text()
        assert made(image="probe-hl:1").exec("cat /x").stdout != host
    else:
        assert status in (200, 400, 422), events
    assert_nothing_left(srv)


def test_a_fifo_as_dockerfile_or_source_fails_at_once(srv: ServerProcess) -> None:
    fifo = info("Dockerfile", tarfile.FIFOTYPE)
    started = time.monotonic()
    status, events = build(srv, "probe-fifo:1", tar_of(fifo))
    assert status == 400 and "not a file" in events[0]["message"], events
    status, events = build(srv, "probe-fifo:2", tar_of(
        dockerfile("FROM busybox:1\nCOPY pipe /pipe\n"), info("pipe", tarfile.FIFOTYPE)))
    assert status == 200
    failed(events)
    status, events = build(srv, "probe-fifo:3", tar_of(
        dockerfile("FROM busybox:1\nCOPY . /ctx/\n"), info("d/pipe", tarfile.FIFOTYPE)))
    assert status == 200 and "image" in events[-1], events[-2:]
    assert time.monotonic() - started < 120
    assert_nothing_left(srv)


def test_a_dockerignore_fifo_or_symlink_out_does_not_hang_or_leak(srv: ServerProcess) -> None:
    status, events = build(srv, "probe-ign:1", tar_of(
        dockerfile("FROM busybox:1\n"), info(".dockerignore", tarfile.FIFOTYPE)))
    assert status == 400, events
    status, events = build(srv, "probe-ign:2", tar_of(
        dockerfile("FROM busybox:1\n"), info(".dockerignore", tarfile.SYMTYPE, "/etc/passwd")))
    assert status == 200 and "image" in events[-1], events[-2:]
    assert_nothing_left(srv)


# -- destinations through the image's own symlinks --------------------------------------

def test_copy_through_symlinks_a_run_made_stays_in_the_image(
        srv: ServerProcess, made: Callable[..., Sandbox]) -> None:
    token = f"probe-{os.urandom(5).hex()}"
    text = f"""\
FROM busybox:1
RUN ln -s /proc/self/root/tmp /viaproc && ln -s /tmp/{token}-abs /abs && \\
    ln -s ../../../../../../tmp /rel && mkdir -p /d && ln -s /tmp /d/up
COPY f /viaproc/{token}-p
COPY f /abs/
COPY f /rel/{token}-r
COPY f /d/up/{token}-d
COPY dir/ /abs/sub/
"""
    body = context_tar({"Dockerfile": text, "f": "payload", "dir/g": "g"})
    status, events = build(srv, "probe-dest:1", body)
    assert status == 200 and "image" in events[-1], events[-3:]
    for name in (f"{token}-p", f"{token}-abs", f"{token}-r", f"{token}-d"):
        assert not Path("/tmp", name).exists()
        assert not (Path("/") / name).exists()
    box = made(image="probe-dest:1")
    seen = box.exec(f"cat /tmp/{token}-abs/f /tmp/{token}-r /tmp/{token}-d "
                    f"/tmp/{token}-abs/sub/g")
    assert seen.stdout == "payloadpayloadpayloadg", seen
    assert_nothing_left(srv, sandboxes=False)


@pytest.mark.parametrize("links", [
    "ln -s /loop /loop",
    "ln -s /b /a && ln -s /a /b",
    "mkdir /m && ln -s ../m/../l /l",
    "ln -s x/../l /l",
])
def test_a_symlink_loop_as_destination_is_an_error_the_client_reads(
        srv: ServerProcess, links: str) -> None:
    name = links.split()[-1].strip("/")
    body = context_tar({"Dockerfile": f"FROM busybox:1\nRUN {links}\nCOPY f /{name}/\n",
                        "f": "x"})
    status, events = build_or_cut(srv, "probe-loop:1", body)
    assert_nothing_left(srv)
    assert status == 200
    failed(events)


def test_copy_from_a_stage_whose_links_point_out_copies_links_only(
        srv: ServerProcess, made: Callable[..., Sandbox]) -> None:
    text = """\
FROM busybox:1 AS evil
RUN mkdir /src && ln -s /etc/shadow /src/shadow && ln -s /etc /src/etc && \\
    ln -s /etc/hostname /top
FROM busybox:1
COPY --from=evil /src /copied
COPY --from=evil /top /top-copied
COPY --from=evil /src/etc/hostname /h
"""
    status, events = build(srv, "probe-from:1", context_tar({"Dockerfile": text}))
    assert status == 200
    # /top is followed inside the stage (busybox has no /etc/hostname): nothing named
    message = failed(events)["message"]
    assert "names nothing" in message
    text = text.replace("COPY --from=evil /top /top-copied\n", "").replace(
        "COPY --from=evil /src/etc/hostname /h\n", "")
    status, events = build(srv, "probe-from:2", context_tar({"Dockerfile": text}))
    assert status == 200 and "image" in events[-1], events[-3:]
    box = made(image="probe-from:2")
    seen = box.exec("readlink /copied/shadow; readlink /copied/etc").stdout
    assert seen == "/etc/shadow\n/etc\n"
    assert_nothing_left(srv, sandboxes=False)


# -- ADD of hostile archives ----------------------------------------------------------

@pytest.mark.parametrize("entries", ["dotdot", "abs-link", "rel-link", "hardlink-out"])
def test_add_of_a_hostile_archive_writes_nothing_on_the_host(
        srv: ServerProcess, entries: str) -> None:
    token = f"probe-{os.urandom(5).hex()}"
    inner = {
        "dotdot": tar_of((info(f"../../../../tmp/{token}"), b"evil")),
        "abs-link": tar_of(info("l", tarfile.SYMTYPE, "/tmp"), (info(f"l/{token}"), b"evil")),
        "rel-link": tar_of(info("l", tarfile.SYMTYPE, "../../../../../tmp"),
                           (info(f"l/{token}"), b"evil")),
        "hardlink-out": tar_of(info("l", tarfile.SYMTYPE, "/etc"),
                               info(token, tarfile.LNKTYPE, "l/hostname")),
    }[entries]
    body = context_tar({"Dockerfile": "FROM busybox:1\nADD a.tar.gz /opt/\n",
                        "a.tar.gz": gzip.compress(inner)})
    status, events = build_or_cut(srv, "probe-add:1", body)
    assert status == 200, events
    if "image" not in events[-1]:
        failed(events, quoted=f"../../../../tmp/{token}")
    for place in (Path("/tmp"), Path("/"), Path("/opt")):
        assert not (place / token).exists()
    assert_nothing_left(srv)


# -- flags and the query --------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--chown=99999999999999999999", "--chown=1:99999999999",
                                  "--chown=4294967295", "--chmod=77777"])
def test_out_of_range_chown_and_chmod_are_errors_the_client_reads(
        srv: ServerProcess, flag: str) -> None:
    body = context_tar({"Dockerfile": f"FROM busybox:1\nCOPY {flag} f /f\n", "f": "x"})
    status, events = build_or_cut(srv, "probe-chown:1", body)
    assert_nothing_left(srv)
    if status == 400:
        assert "error" in events[0]
    else:
        assert status == 200
        failed(events)
    assert_nothing_left(srv)


@pytest.mark.parametrize("dockerfile_text, arg", [
    ("FROM busybox:1\nARG A\nRUN echo \"$A\"\n", "A=x\x00y"),
    ('FROM busybox:1\nRUN ["/bin/sh\\u0000", "-c", "true"]\n', None),
    ('FROM busybox:1\nENV A="x\\u0000"\nRUN true\n', None),
])
def test_nul_in_build_args_and_run_argv_is_an_error_the_client_reads(
        srv: ServerProcess, dockerfile_text: str, arg: str | None) -> None:
    body = context_tar({"Dockerfile": dockerfile_text})
    status, events = build_or_cut(srv, "probe-nul:1", body,
                                  **({"buildarg": arg} if arg else {}))
    assert_nothing_left(srv)
    assert status in (200, 400), events
    if status == 200 and "image" not in events[-1]:
        failed(events)


@pytest.mark.parametrize("params, says", [
    ({"memMiB": "lots"}, "memMiB"), ({"vcpus": "0"}, "vcpus"), ({"vcpus": "-1"}, "vcpus"),
    ({"buildarg": "=x"}, "NAME=VALUE"), ({"target": " "}, "target"),
])
def test_bad_query_parameters_are_400_with_a_clear_message(
        srv: ServerProcess, params: dict[str, str], says: str) -> None:
    status, events = build(srv, "probe-q:1", context_tar({"Dockerfile": "FROM busybox:1\n"}),
                           **params)
    assert status == 400 and says in events[0]["message"], (status, events)


@pytest.mark.parametrize("size", [70_000, 1 << 20])
def test_a_huge_build_arg_is_refused_and_the_server_lives(srv: ServerProcess,
                                                          size: int) -> None:
    """httpx refuses such a URL itself: sent with http.client, which does not."""
    import http.client

    body = context_tar({"Dockerfile": "FROM busybox:1\nARG A\nRUN echo ${#A}\n"})
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    try:
        conn.request("POST", "/api/images/probe-q:2/build?buildarg=A=" + "x" * size, body,
                     {"x-api-key": srv.api_key, "content-type": "application/x-tar"})
        response = conn.getresponse()
        status, text = response.status, response.read().decode(errors="replace")
    except (ConnectionError, http.client.HTTPException) as exc:
        status, text = -1, repr(exc)
    finally:
        conn.close()
    print(f"a {size} byte build arg: {status} {text[:200]}")
    # 431, or (the head still being sent when the server answered and closed) a reset
    cut = status == -1 and ("Reset" in text or "BrokenPipe" in text)
    assert status in (400, 413, 414, 431) or cut, (status, text[:300])
    with srv.client() as api:
        assert api.get("/api/health").status_code == 200


# -- the store, the cache and teams ---------------------------------------------------

def _cache_names(srv: ServerProcess, created_by: str) -> list[str]:
    names = []
    for path in (images_dir(srv) / "images").glob("*.json"):
        record = json.loads(path.read_text())
        history = record.get("config", {}).get("history") or [{}]
        if record["name"].startswith("@build/") and \
                history[-1].get("created_by") == created_by:
            names.append(record["name"])
    return names


def test_a_user_image_cannot_take_the_name_of_a_cache_record(
        srv: ServerProcess, made: Callable[..., Sandbox]) -> None:
    good = context_tar({"Dockerfile": "FROM busybox:1\nRUN echo good > /f\n"})
    status, events = build(srv, "probe-good:1", good)
    assert status == 200 and "image" in events[-1], events[-3:]
    (key,) = _cache_names(srv, "RUN echo good > /f")
    evil = context_tar({"Dockerfile": "FROM busybox:1\nRUN echo evil > /f\n"})
    status, events = build(srv, key, evil)  # a name the user computes, as the server does
    assert status in (400, 404, 405), events[-2:]
    status, events = build(srv, "probe-good:2", good)
    assert status == 200 and "image" in events[-1], events[-3:]
    assert made(image="probe-good:2").exec("cat /f").stdout == "good\n", \
        f"the build cache was poisoned through an image named {key}"


def test_another_team_sees_neither_the_cache_nor_its_images(
        srv: ServerProcess, registries: Registries, tmp_path: Path) -> None:
    status, events = build(srv, "probe-team:1", context_tar(
        {"Dockerfile": "FROM busybox:1\nRUN echo team-a > /owner\n"}))
    assert status == 200 and "image" in events[-1]
    (key,) = _cache_names(srv, "RUN echo team-a > /owner")
    env = server_env(registries) | {"SANDPORT_IMAGES_DIR": str(images_dir(srv)),
                                    "SANDPORT_BUILD_IMAGES": ","}
    other = ServerProcess(tmp_path / "data", env=env).start()
    try:
        with other.client() as api:
            for name in (key, "probe-team:1"):
                made = api.post("/api/sandbox", json={"imageName": name})
                assert made.status_code in (400, 404), (name, made.text)
                assert api.get(f"/api/images/{name}").status_code == 404
        status, events = build(other, "mine:1", context_tar(
            {"Dockerfile": "FROM busybox:1\nRUN echo team-a > /owner\n"}))
        assert [e.get("cached") for e in events if "cached" in e] == [False], events
    finally:
        other.stop_all_sandboxes()
        other.stop()


# -- resources ------------------------------------------------------------------------

def test_a_gzip_context_bomb_is_bounded_by_the_context_cap(
        srv: ServerProcess, registries: Registries, tmp_path: Path) -> None:
    env = server_env(registries) | {"SANDPORT_IMAGES_DIR": str(images_dir(srv)),
                                    "SANDPORT_BUILD_IMAGES": ",",
                                    "SANDPORT_BUILD_CONTEXT_MAX_MIB": "1"}
    other = ServerProcess(tmp_path / "data", env=env).start()
    try:
        bomb = gzip.compress(tar_of(dockerfile("FROM busybox:1\n"),
                                    (info("zeros"), bytes(256 << 20))), 9)
        assert len(bomb) < 1 << 20
        status, events = build(other, "bomb:1", bomb)
        assert status in (400, 413) or "error" in events[-1], \
            f"a {len(bomb)} byte context unpacked to 256 MiB past a 1 MiB cap"
    finally:
        other.stop()


def test_an_enormous_dockerfile_is_refused_or_done_quickly(srv: ServerProcess) -> None:
    lines = "".join(f"LABEL l{i}=v\n" for i in range(70_000))
    assert len(lines) < 1 << 20
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        running = pool.submit(build, srv, "probe-big:1", context_tar(
            {"Dockerfile": "FROM busybox:1\n" + lines}))
        slowest = 0.0
        with httpx.Client(base_url=srv.base_url, timeout=120) as api:
            while not running.done():  # another team's request meanwhile
                asked = time.monotonic()
                api.get("/api/health")
                slowest = max(slowest, time.monotonic() - asked)
                time.sleep(0.05)
        status, events = running.result()
    took = time.monotonic() - started
    print(f"70000 LABEL steps: {took:.1f} s, status {status}; slowest health {slowest:.2f} s")
    assert took < 60
    assert slowest < 1.0, f"the server answered nothing else for {slowest:.1f} s"
    status, events = build(srv, "probe-big:2", context_tar(
        {"Dockerfile": "FROM busybox:1\n" + "#" * (1 << 20) + "\n"}))
    assert status == 413, events


def test_concurrent_builds_all_end_and_leave_nothing(srv: ServerProcess) -> None:
    def one(i: int) -> tuple[int, list[dict[str, Any]]]:
        return build(srv, f"probe-conc:{i}", context_tar({
            "Dockerfile": f"FROM busybox:1\nRUN echo {i} > /i && sleep 1\nCOPY f /f\n",
            "f": str(i)}))

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    print(f"12 concurrent builds: {time.monotonic() - started:.1f} s")
    for status, events in results:
        assert status == 200 and ("image" in events[-1] or failed(events)), events[-2:]
    assert_nothing_left(srv)


def test_a_sparse_file_a_run_makes_is_bounded_by_the_sandbox_disk(srv: ServerProcess) -> None:
    """A sparse file takes no room in the step's sandbox but its whole length in a layer:
    one longer than the sandbox's disk (8 GiB for a build step) is refused, not stored."""
    layers = images_dir(srv) / "layers"
    before = sum(p.stat().st_blocks for p in layers.rglob("*") if not p.is_symlink())
    status, events = build(srv, "probe-sparse:1", context_tar({
        "Dockerfile": "FROM busybox:1\nRUN truncate -s 20G /sparse && du -k /sparse\n"}))
    assert events[-1].get("error") == "image_rejected", events[-2:]
    after = sum(p.stat().st_blocks for p in layers.rglob("*") if not p.is_symlink())
    grown = (after - before) * 512
    print(f"a 2 GiB sparse file in a RUN: layers grew {grown / 2**20:.0f} MiB, "
          f"{events[-1].get('error') or 'built'}")
    assert grown < 256 << 20, f"layers grew {grown >> 20} MiB on the host"
    assert_nothing_left(srv)


def test_failing_steps_leave_no_overlay_staging_or_sandbox(srv: ServerProcess) -> None:
    for text in ["FROM busybox:1\nCOPY missing /x\n",
                 "FROM busybox:1\nRUN exit 1\n",
                 "FROM busybox:1 AS a\nRUN true\nFROM busybox:1\nCOPY --from=a /nope /x\n",
                 "FROM busybox:1\nRUN touch /file\nCOPY f /file/sub/\n",
                 "FROM busybox:1\nCOPY --chown=nobody-here f /f\n",
                 "FROM busybox:1\nADD bad.tar.gz /x/\n"]:
        status, events = build(srv, "probe-fail:1", context_tar({
            "Dockerfile": text, "f": "x",
            "bad.tar.gz": gzip.compress(tar_of((info("../x"), b"x")))}))
        assert status == 200, (text, events)
        failed(events)
        assert_nothing_left(srv)
