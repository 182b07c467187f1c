"""Dockerfile builds (POST /api/images/{name}/build with a context tar): stages from the
loopback registry's images, RUN in sandboxes, COPY/ADD from the context, every step
cached; and the attempts to break out of the context or the sandbox."""

from __future__ import annotations

import contextlib
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
from ..registries import Registries, registry_server
from ..registry_client import push_image

Files = dict[str, "bytes | str | tuple[str, str]"]  # a symlink: ("symlink", target)


@pytest.fixture(scope="module")
def build_server(registries: Registries, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServerProcess]:
    push_image(registries.plain, "library/busybox", "1", busybox_image())
    root = tmp_path_factory.mktemp("build-server")
    with registry_server(registries, root, own_images=True) as srv:
        yield srv


@pytest.fixture
def made(build_server: ServerProcess) -> Iterator[Callable[..., Sandbox]]:
    with build_server.sandboxes() as make:
        yield make


def context_tar(files: Files) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tar.addfile(info)
                continue
            data = content.encode() if isinstance(content, str) else content
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def build(srv: ServerProcess, name: str, files: Files | bytes, **params: Any
          ) -> tuple[int, list[dict[str, Any]]]:
    """POST a build; (status, the NDJSON events or the error body as one event)."""
    body = files if isinstance(files, bytes) else context_tar(files)
    query = [(k, v) for k, vs in params.items()
             for v in (vs if isinstance(vs, list) else [vs])]
    with httpx.Client(base_url=srv.base_url, headers={"x-api-key": srv.api_key},
                      timeout=600) as api, api.stream(
            "POST", f"/api/images/{name}/build", params=query, content=body,
            headers={"content-type": "application/x-tar"}) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, [response.json()]
        return 200, [json.loads(line) for line in response.iter_lines() if line]


def built(srv: ServerProcess, name: str, files: Files, **params: Any) -> list[dict[str, Any]]:
    status, events = build(srv, name, files, **params)
    assert status == 200 and "image" in events[-1], events[-3:]
    return events


def steps(events: list[dict[str, Any]]) -> list[tuple[str, bool | None]]:
    return [(e["instruction"].split()[0], e.get("cached")) for e in events if "step" in e
            and "instruction" in e]


MULTI = """\
ARG BASE=busybox:1
FROM $BASE AS builder
ARG GREETING=hello
ENV OUT=/out
RUN mkdir -p $OUT && echo "$GREETING from $(id -u)" > $OUT/greeting && echo built-it
COPY app/ /src/
FROM busybox:1
LABEL org.example.kind=test
COPY --from=builder /out/greeting /srv/greeting
COPY --from=builder /src /srv/src
WORKDIR /srv
USER app
ENV WHO=me
CMD ["cat", "/srv/greeting"]
"""


def test_a_multi_stage_build_runs_and_copies_between_stages(
        build_server: ServerProcess, made: Callable[..., Sandbox]) -> None:
    files: Files = {"Dockerfile": MULTI, "app/main.sh": "echo main\n", "app/lib/x.txt": "x\n"}
    events = built(build_server, "multi:1", files, buildarg="GREETING=hi there")
    assert any(e.get("output", "").strip() == "built-it" for e in events), events
    image = events[-1]["image"]
    assert (image["name"], image["source"]) == ("multi:1", "built")
    assert image["workdir"] == "/srv" and image["user"] == "app"
    box = made(image="multi:1")
    seen = box.exec("cat /srv/greeting; ls /srv/src /srv/src/lib; pwd; id -un; echo $WHO")
    assert seen.stdout.split("\n")[:1] == ["hi there from 0"], seen
    assert "main.sh" in seen.stdout and "x.txt" in seen.stdout
    assert seen.stdout.strip().split("\n")[-3:] == ["/srv", "app", "me"]


def test_args_and_env_as_docker_scopes_them(build_server: ServerProcess,
                                            made: Callable[..., Sandbox]) -> None:
    """ARG values reach RUN but not the image; ENV wins over an ARG of the same name; a
    build arg overrides a default; USER is who RUN runs as and who owns what it writes."""
    dockerfile = """\
FROM busybox:1
ARG ONLY_ARG=default
ARG BOTH=from-arg
ENV BOTH=from-env
ARG GIVEN=unset
RUN echo "$ONLY_ARG $BOTH $GIVEN" > /args.txt
USER app
WORKDIR /home/app/work
RUN id -u > uid.txt && touch mine
"""
    built(build_server, "scopes:1", {"Dockerfile": dockerfile}, buildarg="GIVEN=given")
    box = made(image="scopes:1")
    assert box.exec("cat /args.txt").stdout == "default from-env given\n"
    assert box.exec("cat /home/app/work/uid.txt").stdout == "1000\n"
    assert box.exec("stat -c %u /home/app/work/mine").stdout == "1000\n"
    env = box.exec("env").stdout
    assert "BOTH=from-env" in env and "ONLY_ARG" not in env and "GIVEN" not in env


def test_dockerignore_keeps_files_out_of_the_context(build_server: ServerProcess,
                                                     made: Callable[..., Sandbox]) -> None:
    files: Files = {
        "Dockerfile": "FROM busybox:1\nCOPY . /ctx/\n",
        ".dockerignore": "# secrets stay home\nsecret.txt\n*.log\n!keep.log\nnode_modules\n",
        "secret.txt": "s3cr3t", "debug.log": "x", "keep.log": "kept", "app.js": "js",
        "node_modules/big/index.js": "big", "src/a.txt": "a",
    }
    built(build_server, "ignored:1", files)
    box = made(image="ignored:1")
    listing = box.exec("cd /ctx && find . | sort").stdout.split()
    assert listing == [".", "./.dockerignore", "./Dockerfile", "./app.js", "./keep.log",
                       "./src", "./src/a.txt"]
    files[".dockerignore"] += "Dockerfile\n.dockerignore\n"  # still read, never copied
    built(build_server, "ignored:2", files)
    assert made(image="ignored:2").exec("ls -A /ctx").stdout.split() == \
        ["app.js", "keep.log", "src"]


CACHED = """\
FROM busybox:1
RUN echo one > /one && cat /proc/sys/kernel/random/uuid > /one.stamp
COPY a.txt /a.txt
RUN cat /a.txt > /two && cat /proc/sys/kernel/random/uuid > /two.stamp
COPY b.txt /b.txt
RUN cat /b.txt > /three && cat /proc/sys/kernel/random/uuid > /three.stamp
"""


def test_an_unchanged_rebuild_runs_nothing_and_a_change_reruns_what_follows_it(
        build_server: ServerProcess, made: Callable[..., Sandbox]) -> None:
    files: Files = {"Dockerfile": CACHED, "a.txt": "a1\n", "b.txt": "b1\n"}
    first = built(build_server, "cached:1", files)
    assert [c for _, c in steps(first) if c is not None] == [False] * 5
    started = time.monotonic()
    again = built(build_server, "cached:1", files)
    took = time.monotonic() - started
    assert [c for _, c in steps(again) if c is not None] == [True] * 5
    assert not any("output" in e for e in again)
    assert again[-1]["image"]["digest"] == first[-1]["image"]["digest"]
    print(f"unchanged rebuild: {took:.3f} s")
    stamps = made(image="cached:1").exec("cat /one.stamp /two.stamp /three.stamp").stdout

    files["b.txt"] = "b2\n"
    changed = built(build_server, "cached:2", files)
    assert [c for _, c in steps(changed) if c is not None] == [True, True, True, False, False]
    box = made(image="cached:2")
    after = box.exec("cat /one.stamp /two.stamp /three.stamp").stdout.split()
    assert after[:2] == stamps.split()[:2] and after[2] != stamps.split()[2]
    assert box.exec("cat /three").stdout == "b2\n"


def _active(srv: ServerProcess) -> list[dict[str, Any]]:
    with srv.client() as api:
        listed = api.get("/api/sandboxes", params={"status": "active"}).json()
    return [s for s in listed["sandboxes"] if s["status"] == "active"]


def test_a_failing_run_says_why_and_keeps_nothing(build_server: ServerProcess) -> None:
    before = len(_active(build_server))
    status, events = build(build_server, "failing:1", {
        "Dockerfile": "FROM busybox:1\nRUN echo about to fail && echo oops >&2 && exit 3\n"})
    assert status == 200
    last = events[-1]
    assert last["error"] == "build_failed", last
    assert "exit code 3" in last["message"] and "line 2" in last["message"]
    assert "oops" in last["message"] and "about to fail" in last["message"]
    with build_server.client() as api:
        assert api.get("/api/images/failing:1").status_code == 404
    assert len(_active(build_server)) == before


@pytest.mark.parametrize("line, says", [
    ("RUN --mount=type=cache,target=/root/.cache true", "line 2"),
    ("ONBUILD RUN true", "line 2"),
    ("ADD https://example.com/file /file", "line 2"),
    ("RUN <<EOF\necho hi\nEOF", "line 2"),
    ("FROBNICATE now", "line 2"),
])
def test_what_is_not_supported_is_refused_naming_the_line(
        build_server: ServerProcess, line: str, says: str) -> None:
    status, events = build(build_server, "unsupported:1",
                           {"Dockerfile": f"FROM busybox:1\n{line}\n"})
    assert status == 400, events
    assert events[0]["error"] == "invalid_request" and says in events[0]["message"]


def test_bad_requests(build_server: ServerProcess) -> None:
    tar = context_tar({"Dockerfile": "FROM busybox:1\n"})
    for params, message in [({"network": "host"}, "network"),
                            ({"buildarg": "no-equals"}, "NAME=VALUE"),
                            ({"frobnicate": "1"}, "unknown build parameter"),
                            ({"target": "nope"}, "no stage named"),
                            ({"dockerfile": "other/Dockerfile"}, "no 'other/Dockerfile'")]:
        status, events = build(build_server, "bad:1", tar, **params)
        assert status == 400 and message in events[0]["message"], (params, events)
    status, events = build(build_server, "../evil", tar)
    assert status in (400, 404), events
    status, events = build(build_server, "notbuiltin", b"")
    assert status == 400 and "build context" in events[0]["message"]


def test_the_context_cannot_be_left(build_server: ServerProcess,
                                    made: Callable[..., Sandbox], tmp_path: Path) -> None:
    """COPY of ../../etc/passwd, of a symlink pointing out of the context, through a
    symlinked directory; a context tar with .., absolute and linked entries: the host's
    files are never read or written."""
    token = f"escaped-{os.urandom(6).hex()}"
    links: Files = {"Dockerfile": "", "out": ("symlink", "/etc"),
                    "up": ("symlink", "../../../../../../etc/passwd"), "real.txt": "real"}
    for copy in ["COPY ../../etc/passwd /x", "COPY out/passwd /x", "COPY up /x",
                 "COPY out/hostname /x", "COPY /etc/passwd /x"]:
        links["Dockerfile"] = f"FROM busybox:1\n{copy}\n"
        status, events = build(build_server, "escape:1", links)
        assert status == 200 and events[-1].get("error") == "invalid_request", (copy, events)
        assert "names nothing" in events[-1]["message"]
    # a dangling symlink's target is made inside the image, never on the host
    links["Dockerfile"] = f"FROM busybox:1\nRUN ln -s /{token}-dir /link\nCOPY real.txt /link/\n"
    built(build_server, "escape:2", links)
    assert made(image="escape:2").exec(f"cat /{token}-dir/real.txt").stdout == "real"
    assert not Path(f"/{token}-dir").exists()

    def hostile(name: str, **kw: Any) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            docker = b"FROM busybox:1\nCOPY . /ctx/\n"
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(docker)
            tar.addfile(info, io.BytesIO(docker))
            evil = tarfile.TarInfo(name)
            for key, value in kw.items():
                setattr(evil, key, value)
            evil.size = 0 if kw else 4
            tar.addfile(evil, None if kw else io.BytesIO(b"evil"))
        return out.getvalue()

    for body in [hostile(f"../../../tmp/{token}"), hostile(f"a/../../{token}"),
                 hostile(f"/tmp/{token}"),
                 hostile("ln", type=tarfile.LNKTYPE, linkname="/etc/passwd")]:
        status, events = build(build_server, "escape:3", body)
        assert status in (200, 400, 422), events
    for place in (Path("/tmp"), Path("/"), tmp_path.parent):
        assert not (place / token).exists()


def test_a_run_is_a_sandbox(build_server: ServerProcess) -> None:
    """A RUN writes its own root only, sees its own processes, has no network by
    default, and cannot reach the host's filesystem."""
    token = f"host-{os.urandom(6).hex()}"
    events = built(build_server, "contained:1", {"Dockerfile": f"""\
FROM busybox:1
RUN touch /{token} && ls /proc | grep -c '^[0-9]' > /procs && \\
    (wget -q -T 3 -O- http://1.1.1.1/ >/dev/null 2>&1 && echo online || echo offline) \\
    > /net && cat /net
"""})
    assert any(e.get("output", "").strip() == "offline" for e in events), events
    assert not Path(f"/{token}").exists()


def test_limits_bound_a_build(registries: Registries, tmp_path: Path) -> None:
    """A build past --build-timeout-s is stopped with its sandbox; a context over
    --build-context-max-mib is refused before anything is built."""
    push_image(registries.plain, "library/busybox", "1", busybox_image())
    with registry_server(registries, tmp_path, own_images=True) as srv:
        srv.stop()
        srv.env |= {"SANDPORT_BUILD_TIMEOUT_S": "4", "SANDPORT_BUILD_CONTEXT_MAX_MIB": "1"}
        srv.start()
        started = time.monotonic()
        status, events = build(srv, "forever:1",
                               {"Dockerfile": "FROM busybox:1\nRUN sleep 600\n"})
        assert status == 200 and events[-1]["error"] == "build_failed", events[-2:]
        assert "4 s" in events[-1]["message"]
        assert time.monotonic() - started < 60
        assert _active(srv) == []
        status, events = build(srv, "huge:1", {"Dockerfile": "FROM busybox:1\n",
                                               "big.bin": os.urandom(2 << 20)})
        assert status == 413, events


def test_add_unpacks_archives_and_copy_sets_owners_and_modes(
        build_server: ServerProcess, made: Callable[..., Sandbox]) -> None:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        data = b"from the archive\n"
        info = tarfile.TarInfo("pkg/readme.txt")
        info.size, info.uid, info.gid = len(data), 7, 8
        tar.addfile(info, io.BytesIO(data))
    built(build_server, "owners:1", {
        "Dockerfile": "FROM busybox:1\nADD bundle.tgz /opt/\nADD plain.txt /opt/plain.txt\n"
                      "COPY --chown=app:app --chmod=0750 tool.sh /usr/local/bin/\n"
                      "COPY --chown=1234 conf/ /etc/app/\n",
        "bundle.tgz": inner.getvalue(), "plain.txt": "plain\n", "tool.sh": "echo tool\n",
        "conf/a.conf": "a=1\n"})
    box = made(image="owners:1")
    out = box.exec("cat /opt/pkg/readme.txt /opt/plain.txt; stat -c '%u:%g' "
                   "/opt/pkg/readme.txt; stat -c '%U:%G %a' /usr/local/bin/tool.sh; "
                   "stat -c '%u:%g' /etc/app/a.conf; tool.sh").stdout.splitlines()
    assert out == ["from the archive", "plain", "7:8", "app:app 750", "1234:1234", "tool"]


def test_a_start_command_given_at_build_serves_once_the_create_returns(
        build_server: ServerProcess, made: Callable[..., Sandbox]) -> None:
    built(build_server, "started:1", {"Dockerfile": """\
FROM busybox:1
RUN mkdir -p /www && echo served > /www/index.html
CMD ["httpd", "-f", "-p", "8000", "-h", "/www"]
"""}, readyCommand="wget -q -O- http://127.0.0.1:8000/ | grep -q served")
    box = made(image="started:1", start_cmd=True)
    assert box.exec("wget -q -O- http://127.0.0.1:8000/").stdout == "served\n"
    with build_server.client() as api:
        image = api.get("/api/images/started:1").json()
    assert image["cmd"] == ["httpd", "-f", "-p", "8000", "-h", "/www"]


def test_the_sdks_and_the_cli_build_a_directory(build_server: ServerProcess,
                                                 made: Callable[..., Sandbox],
                                                 tmp_path: Path) -> None:
    import asyncio
    import subprocess
    import sys

    from sandport import AsyncImages, Images

    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "hello.txt").write_text("hello from the sdk\n")
    (tmp_path / "app" / "skip.tmp").write_text("not sent\n")
    (tmp_path / ".dockerignore").write_text("**/*.tmp\n")
    (tmp_path / "build.Dockerfile").write_text(
        "FROM busybox:1\nARG WHO\nCOPY app /app\nRUN echo \"$WHO\" > /app/who\n")
    events: list[dict[str, Any]] = []
    with Images(api_key=build_server.api_key, base_url=build_server.base_url) as images:
        info = images.build("sdk:1", tmp_path, dockerfile="build.Dockerfile",
                            build_args={"WHO": "sync"}, on_progress=events.append)
    assert info.name == "sdk:1" and any(e.get("instruction", "").startswith("RUN")
                                        for e in events)

    async def build_async() -> str:
        async with AsyncImages(api_key=build_server.api_key,
                               base_url=build_server.base_url) as images:
            return (await images.build("sdk:2", tmp_path, dockerfile="build.Dockerfile",
                                       build_args={"WHO": "async"})).name
    assert asyncio.run(build_async()) == "sdk:2"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDPORT_")}
    env |= {"SANDPORT_BASE_URL": build_server.base_url, "SANDPORT_API_KEY": build_server.api_key}
    cli = subprocess.run([sys.executable, "-m", "sandport", "image", "build", "sdk:3",
                          str(tmp_path), "-f", "build.Dockerfile", "--build-arg", "WHO=cli"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == "sdk:3" and "Step 3/4" in cli.stderr
    for name, who in (("sdk:1", "sync"), ("sdk:2", "async"), ("sdk:3", "cli")):
        box = made(image=name)
        assert box.exec("cat /app/hello.txt /app/who; ls /app").stdout.split("\n") == [
            "hello from the sdk", who, "hello.txt", "who", ""]


def test_a_build_step_does_not_outlive_a_crashed_server(registries: Registries,
                                                        tmp_path: Path) -> None:
    """The server dies mid-RUN: on its next start the step's sandbox is stopped (its
    build is gone), and nothing of the build is listed."""
    import threading
    push_image(registries.plain, "library/busybox", "1", busybox_image())
    with registry_server(registries, tmp_path, own_images=True) as srv:
        seen: list[dict[str, Any]] = []

        def run() -> None:
            with contextlib.suppress(httpx.HTTPError):
                seen.extend(build(srv, "crashed:1", {
                    "Dockerfile": "FROM busybox:1\nRUN echo started && sleep 600\n"})[1])
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while not _active(srv) and time.monotonic() < deadline:
            time.sleep(0.1)
        step = _active(srv)
        assert len(step) == 1
        srv.crash()
        worker.join(30)
        srv.start()
        assert _active(srv) == []
        with srv.client() as api:
            detail = api.get(f"/api/sandbox/{step[0]['id']}").json()
            names = [i["name"] for i in api.get("/api/images").json()["images"]]
        assert detail["status"] == "closed", detail
        assert "crashed:1" not in names and not any(n.startswith("sandport-build")
                                                    for n in names)


def test_a_stage_starts_from_an_image_of_the_team(build_server: ServerProcess,
                                                  made: Callable[..., Sandbox]) -> None:
    """FROM names an image built (or pulled, imported, snapshot) here as well as a
    registry reference: the team's own image wins, as for a create."""
    built(build_server, "teambase:1", {
        "Dockerfile": "FROM busybox:1\nENV FROM_BASE=yes\nRUN echo base > /base.txt\n"})
    built(build_server, "ontop:1", {
        "Dockerfile": "FROM teambase:1\nRUN cat /base.txt > /seen && echo $FROM_BASE >> /seen\n"})
    assert made(image="ontop:1").exec("cat /seen").stdout == "base\nyes\n"
