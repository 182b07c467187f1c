"""Dockerfile builds from the client side: the context tar the SDK makes from a real
directory, the request a build sends (to a loopback server that records it and answers
NDJSON), and the ``sandport image build`` command."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sandport import AsyncImages, ImageInfo, Images, SandportError, ValidationFailed
from sandport.cli._build_progress import BuildDisplay
from sandport.errors import BuildFailed, PayloadTooLarge
from sandport.sdk import _images as img
from sandport.sdk._context import ContextTar

ROOT = Path(__file__).resolve().parents[2]
KEY = "spk_test"
MTIME = 1_600_000_000


def read_tar(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {member.name: member for member in tar.getmembers()}


def tar_of(directory: Path, dockerfile: str | None = None) -> bytes:
    with img.build_upload(directory, dockerfile) as upload:
        data = b"".join(upload.chunks())
    assert len(data) == upload.total
    return data


def make_context(root: Path, files: dict[str, str], ignore: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in {"Dockerfile": "FROM base\n", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    if ignore is not None:
        (root / ".dockerignore").write_text(ignore)
    return root


# --- the context tar ----------------------------------------------------------------------

def test_dockerignore_is_honoured_but_the_dockerfile_and_dockerignore_always_go(
        tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {
        "app.py": "print(1)\n", "debug.log": "x", "logs/a.log": "x", "src/main.log": "x",
        "node_modules/left/index.js": "x", "secret/key": "x", "secret/keep.txt": "kept",
        "docs/readme.md": "x", "docs/api/keep.md": "x",
    }, ignore="# comment\n*.log\n**/*.log\nnode_modules\nsecret\n!secret/keep.txt\n"
              "docs/**\n!docs/api/keep.md\nDockerfile\n.dockerignore\n")
    names = read_tar(tar_of(ctx))
    assert set(names) == {"Dockerfile", ".dockerignore", "app.py", "logs", "src",
                          "secret", "secret/keep.txt", "docs", "docs/api", "docs/api/keep.md"}
    with tarfile.open(fileobj=io.BytesIO(tar_of(ctx))) as tar:
        assert tar.extractfile("secret/keep.txt").read() == b"kept"  # type: ignore[union-attr]
        assert tar.extractfile("Dockerfile").read() == b"FROM base\n"  # type: ignore[union-attr]


def test_a_dockerfile_elsewhere_goes_even_from_an_excluded_directory(tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"build/Dockerfile.dev": "FROM python\n",
                                          "build/other": "x", "app.py": "x"},
                       ignore="build\n")
    names = read_tar(tar_of(ctx, "build/Dockerfile.dev"))
    assert set(names) == {"Dockerfile", ".dockerignore", "app.py", "build",
                          "build/Dockerfile.dev"}
    assert names["build"].isdir()


def test_nested_directories_come_parents_first_with_modes_and_mtimes(tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"a/b/c/deep.txt": "deep", "a/run.sh": "#!/bin/sh\n"})
    (ctx / "empty").mkdir()
    os.chmod(ctx / "a/run.sh", 0o755)
    os.chmod(ctx / "a/b/c/deep.txt", 0o640)
    os.chmod(ctx / "a/b", 0o700)
    os.utime(ctx / "a/run.sh", (MTIME, MTIME))
    data = tar_of(ctx)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        order = tar.getnames()
    assert order == ["Dockerfile", "a", "a/b", "a/b/c", "a/b/c/deep.txt", "a/run.sh", "empty"]
    names = read_tar(data)
    assert names["a/run.sh"].mode == 0o755 and names["a/run.sh"].mtime == MTIME
    assert names["a/b/c/deep.txt"].mode == 0o640 and names["a/b/c/deep.txt"].size == 4
    assert names["a/b"].isdir() and names["a/b"].mode == 0o700 and names["empty"].isdir()
    assert all((m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in names.values())


def test_symlinks_stay_symlinks_and_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    ctx = make_context(tmp_path / "ctx", {"real/file": "x"})
    (ctx / "to-outside-dir").symlink_to(outside)
    (ctx / "to-outside-file").symlink_to(outside / "secret")
    (ctx / "to-real").symlink_to("real")
    (ctx / "dangling").symlink_to("no/such/thing")
    names = read_tar(tar_of(ctx))
    assert set(names) == {"Dockerfile", "real", "real/file", "to-outside-dir",
                          "to-outside-file", "to-real", "dangling"}
    links = {name: names[name].linkname for name in names if names[name].issym()}
    assert links == {"to-outside-dir": str(outside), "to-outside-file": str(outside / "secret"),
                     "to-real": "real", "dangling": "no/such/thing"}
    assert b"host file" not in tar_of(ctx)


def test_sockets_and_fifos_are_left_out(tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "c", {"kept": "x"})
    os.mkfifo(ctx / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(ctx / "sock"))
        assert set(read_tar(tar_of(ctx))) == {"Dockerfile", "kept"}


def test_a_big_file_streams_in_chunks_of_bounded_size(tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {})
    blob = os.urandom(3 * img.UPLOAD_CHUNK + 777)
    (ctx / "blob.bin").write_bytes(blob)
    sizes: list[int] = []
    with img.build_upload(ctx) as upload:
        chunks = list(upload.chunks())
    sizes = [len(c) for c in chunks]
    assert len(sizes) >= 4 and max(sizes) <= img.UPLOAD_CHUNK
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        assert tar.extractfile("blob.bin").read() == blob  # type: ignore[union-attr]


def test_a_file_that_shrinks_while_sent_is_an_error_not_a_bad_archive(tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"file.txt": "0123456789"})
    stream = ContextTar(ctx)
    (ctx / "file.txt").write_text("01")
    with pytest.raises(SandportError, match="shrank"):
        stream.read()
    stream.close()


@pytest.mark.parametrize(("files", "dockerfile", "message"), [
    ({}, "Other.dockerfile", "no Dockerfile at"),
    ({}, "../Dockerfile", "inside the build context"),
    ({}, "/etc/Dockerfile", "inside the build context"),
    ({"sub/x": "x"}, "sub", "no Dockerfile at"),
])
def test_a_dockerfile_that_is_not_in_the_context_is_refused(
        tmp_path: Path, files: dict[str, str], dockerfile: str, message: str) -> None:
    ctx = make_context(tmp_path / "ctx", files)
    with pytest.raises(ValidationFailed, match=message):
        img.build_upload(ctx, dockerfile)


def test_a_bad_dockerignore_or_context_is_refused(tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {}, ignore="ok\n[z-a]\n")
    with pytest.raises(ValidationFailed, match="line 2"):
        img.build_upload(ctx)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValidationFailed, match="no Dockerfile"):
        img.build_upload(tmp_path / "none")
    with pytest.raises(ValidationFailed, match="cannot read"):
        img.build_upload(tmp_path / "missing")
    with pytest.raises(ValidationFailed, match="empty"):
        img.build_upload(b"")


# --- the request, against a loopback server ------------------------------------------------

def wire_image(name: str) -> dict[str, Any]:
    return ImageInfo(name, True, "2024-01-01T00:00:00Z", 5 << 20, "built",
                     digest="sha256:" + "d" * 64, layers=3).to_wire()


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeServer:
    """Records each request whole and answers ``status`` with ``lines`` as NDJSON."""

    url: str = ""
    status: int = 200
    lines: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)


def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while size := int(handler.rfile.readline().split(b";")[0], 16):
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
        handler.rfile.readline()
        return b"".join(parts)
    return handler.rfile.read(int(handler.headers.get("content-length") or 0))


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            split = urlsplit(self.path)
            fake.requests.append(Recorded(
                "POST", split.path, parse_qs(split.query, keep_blank_values=True),
                {k.lower(): v for k, v in self.headers.items()}, _read_body(self)))
            body = b"".join(json.dumps(line).encode() + b"\n" for line in fake.lines)
            self.send_response(fake.status)
            self.send_header("content-type", "application/x-ndjson" if fake.status == 200
                             else "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


# As the server sends them: base images pulled first, then the steps.
BUILD_EVENTS: list[dict[str, Any]] = [
    {"status": "pulling", "image": "docker.io/library/debian:12"},
    {"status": "resolving", "ref": "docker.io/library/debian:12"},
    {"layer": "sha256:" + "a" * 64, "status": "exists", "done": 10, "total": 10},
    {"status": "building", "steps": 3},
    {"step": 1, "of": 3, "line": 1, "instruction": "FROM debian:12"},
    {"step": 2, "of": 3, "line": 3, "instruction": "RUN make", "cached": False},
    {"step": 2, "stream": "stdout", "output": "cc -o app"},
    {"step": 2, "stream": "stdout", "output": " app.c\nok\n"},
    {"step": 3, "of": 3, "line": 4, "instruction": "COPY . /app", "cached": True},
    {"status": "built", "seconds": 2.345, "cachedSteps": 1, "steps": 3},
]


def test_a_build_sends_the_context_tar_and_the_options_in_the_query(
        tmp_path: Path, server: FakeServer) -> None:
    ctx = make_context(tmp_path / "ctx", {"sub/Dockerfile": "FROM base\nRUN make\n",
                                          "app.c": "int main(){}"})
    server.lines = [*BUILD_EVENTS, {"image": wire_image("team/app:1")}]
    events: list[dict[str, Any]] = []
    uploads: list[tuple[int, int | None]] = []
    with Images(api_key=KEY, base_url=server.url) as images:
        image = images.build(
            "team/app:1", ctx, dockerfile="./sub/Dockerfile",
            build_args={"VERSION": "1.2", "FLAGS": "-O2 -g=x&y"}, network="internet",
            target="final", start_command="python -m http.server 8000",
            ready_command="curl -fs localhost:8000", vcpus=2, mem_mib=2048,
            on_progress=events.append,
            on_upload=lambda sent, total: uploads.append((sent, total)))
    assert image.name == "team/app:1" and image.layers == 3
    assert events == BUILD_EVENTS
    [request] = server.requests
    assert request.path == "/api/images/team/app:1/build"
    assert request.query == {
        "dockerfile": ["sub/Dockerfile"], "buildarg": ["VERSION=1.2", "FLAGS=-O2 -g=x&y"],
        "network": ["internet"], "target": ["final"],
        "startCommand": ["python -m http.server 8000"],
        "readyCommand": ["curl -fs localhost:8000"], "vcpus": ["2"], "memMiB": ["2048"]}
    assert request.headers["x-api-key"] == KEY
    assert request.headers["content-type"] == "application/x-tar"
    assert int(request.headers["content-length"]) == len(request.body)
    assert uploads[-1] == (len(request.body), len(request.body))
    assert set(read_tar(request.body)) == {"Dockerfile", "app.c", "sub", "sub/Dockerfile"}


def test_without_a_context_a_built_in_is_built_again_as_before(server: FakeServer) -> None:
    server.lines = [{"progress": "mmdebstrap: fetching"}, {"image": wire_image("python")}]
    events: list[dict[str, Any]] = []
    with Images(api_key=KEY, base_url=server.url) as images:
        assert images.build("python", on_progress=events.append).name == "python"
        with pytest.raises(ValidationFailed, match="need a build context"):
            images.build("python", target="x")
    assert events == [{"progress": "mmdebstrap: fetching"}]
    [request] = server.requests
    assert (request.path, request.query, request.body) == ("/api/images/python/build", {}, b"")
    assert "x-tar" not in request.headers.get("content-type", "")


def test_a_tar_archive_as_bytes_a_path_or_a_file_goes_as_it_is(
        tmp_path: Path, server: FakeServer) -> None:
    archive = tar_of(make_context(tmp_path / "ctx", {"x": "y"}))
    (tmp_path / "ctx.tar").write_bytes(archive)
    server.lines = [{"image": wire_image("app")}]
    with Images(api_key=KEY, base_url=server.url) as images, \
            open(tmp_path / "ctx.tar", "rb") as fh:
        for context in (archive, tmp_path / "ctx.tar", str(tmp_path / "ctx.tar"), fh):
            images.build("app", context, dockerfile="Dockerfile")
    assert [r.body for r in server.requests] == [archive] * 4
    assert all(r.query == {"dockerfile": ["Dockerfile"]} for r in server.requests)


def test_async_builds_send_the_same_request(tmp_path: Path, server: FakeServer) -> None:
    ctx = make_context(tmp_path / "ctx", {"a/b": "c"})
    server.lines = [*BUILD_EVENTS, {"image": wire_image("app")}]
    events: list[dict[str, Any]] = []

    async def build() -> ImageInfo:
        async with AsyncImages(api_key=KEY, base_url=server.url) as images:
            return await images.build("app", ctx, build_args={"A": "1", "B": "2"},
                                      on_progress=events.append)

    assert asyncio.run(build()).name == "app"
    assert events == BUILD_EVENTS
    [request] = server.requests
    assert request.query == {"buildarg": ["A=1", "B=2"]}
    assert set(read_tar(request.body)) == {"Dockerfile", "a", "a/b"}


@pytest.mark.parametrize(("status", "lines", "cls", "message"), [
    (200, [{"step": 1, "of": 1, "line": 2, "instruction": "RUN false"},
           {"error": "build_failed", "message": "step 1 (line 2) exited 1"}],
     BuildFailed, "exited 1"),
    (400, [{"error": "invalid_request", "message": "Dockerfile line 3: unknown FRM"}],
     ValidationFailed, "line 3"),
    (413, [{"error": "payload_too_large", "message": "the context is over 1 GiB"}],
     PayloadTooLarge, "1 GiB"),
    (422, [{"error": "build_failed", "message": "no FROM"}], BuildFailed, "no FROM"),
    (200, [{"status": "building", "steps": 1}], SandportError, "ended before its result"),
])
def test_build_errors_raise_their_class(tmp_path: Path, server: FakeServer, status: int,
                                        lines: list[dict[str, Any]], cls: type,
                                        message: str) -> None:
    ctx = make_context(tmp_path / "ctx", {})
    server.status = status
    # An error answer before the stream is one JSON object, not NDJSON.
    server.lines = lines
    with Images(api_key=KEY, base_url=server.url) as images, pytest.raises(cls, match=message):
        images.build("app", ctx)


def test_bad_build_args_are_refused_before_sending(tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {})
    with Images(api_key=KEY, base_url="http://127.0.0.1:9") as images:
        for bad in ({"": "x"}, {"A=B": "x"}, {"A": 1}):
            with pytest.raises(ValidationFailed, match="build arg"):
                images.build("app", ctx, build_args=bad)  # type: ignore[arg-type]


# --- the command --------------------------------------------------------------------------

def sandport(*args: str, url: str = "http://127.0.0.1:9",
             stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDPORT_")}
    done = subprocess.run(
        [sys.executable, "-m", "sandport", "image", "build", *args, "--base-url", url,
         "--api-key", KEY], capture_output=True, timeout=60, env=env, input=stdin)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


def test_the_command_shows_steps_and_output_and_prints_the_name(
        tmp_path: Path, server: FakeServer) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile.dev": "FROM base\n"})
    server.lines = [*BUILD_EVENTS, {"image": wire_image("app:1")}]
    done = sandport("app:1", str(ctx), "-f", "Dockerfile.dev", "--build-arg", "A=1",
                    "--build-arg", "B=x=y", "--network", "internet", "--target", "t",
                    "--start-command", "sleep 1", "--ready-command", "true", "--vcpus", "1",
                    "--mem-mib", "512", url=server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "app:1\n"
    lines = done.stderr.splitlines()
    steps = [i for i, line in enumerate(lines) if line.startswith("Step ")]
    assert [lines[i] for i in steps] == ["Step 1/3 (line 1): FROM debian:12",
                                         "Step 2/3 (line 3): RUN make",
                                         "Step 3/3 (line 4): COPY . /app (cached)"]
    assert lines[steps[1] + 1:steps[2]] == ["cc -o app app.c", "ok"]
    assert "built app:1" in done.stderr
    [request] = server.requests
    assert request.query == {"dockerfile": ["Dockerfile.dev"], "buildarg": ["A=1", "B=x=y"],
                             "network": ["internet"], "target": ["t"],
                             "startCommand": ["sleep 1"], "readyCommand": ["true"],
                             "vcpus": ["1"], "memMiB": ["512"]}


def test_the_command_takes_docker_style_dockerfile_paths(
        tmp_path: Path, server: FakeServer) -> None:
    ctx = make_context(tmp_path / "ctx", {"deploy/Dockerfile": "FROM base\n"})
    server.lines = [{"image": wire_image("app")}]
    for given in (str(ctx / "deploy/Dockerfile"), "deploy/Dockerfile"):
        assert sandport("app", str(ctx), "-f", given, "-q", url=server.url).stdout == "app\n"
    assert [r.query for r in server.requests] == [{"dockerfile": ["deploy/Dockerfile"]}] * 2


def test_the_command_sends_a_tar_from_stdin_as_it_is(tmp_path: Path, server: FakeServer) -> None:
    archive = tar_of(make_context(tmp_path / "ctx", {"bin": "\x00\xff\r\n"}))
    server.lines = [{"image": wire_image("app")}]
    done = sandport("app", "-", "-f", "Dockerfile", url=server.url, stdin=archive)
    assert (done.returncode, done.stdout) == (0, "app\n"), done.stderr
    assert server.requests[0].body == archive
    assert server.requests[0].query == {"dockerfile": ["Dockerfile"]}


def test_the_command_builds_a_built_in_without_dir(server: FakeServer) -> None:
    server.lines = [{"progress": "fetching packages"}, {"image": wire_image("node")}]
    done = sandport("node", url=server.url)
    assert (done.returncode, done.stdout) == (0, "node\n")
    assert "fetching packages" in done.stderr
    assert server.requests[0].body == b""


def test_the_command_reports_a_failing_step_without_a_traceback(
        tmp_path: Path, server: FakeServer) -> None:
    ctx = make_context(tmp_path / "ctx", {})
    server.lines = [{"step": 1, "of": 1, "line": 1, "instruction": "RUN false"},
                    {"step": 1, "output": "no newline at the end"},
                    {"error": "build_failed", "message": "step 1 (line 1): exit status 1"}]
    done = sandport("app", str(ctx), url=server.url)
    assert done.returncode == 1 and done.stdout == ""
    assert "no newline at the end\nerror: step 1 (line 1): exit status 1\n" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    (["app", "{ctx}", "--build-arg", "NOEQUALS"], 2, "'NOEQUALS' is not NAME=VALUE"),
    (["app", "{ctx}", "--network", "host"], 2, "invalid choice: 'host'"),
    (["app", "{tmp}/missing"], 1, "error: the build context {tmp}/missing is not a directory"),
    (["app", "{ctx}", "-f", "../Dockerfile"], 1, "is outside the build context"),
    (["app", "{ctx}", "-f", "{tmp}/elsewhere/Dockerfile"], 1, "is outside the build context"),
    (["app", "{ctx}", "-f", "Nope"], 1, "error: there is no Dockerfile at {ctx}/Nope"),
    (["app", "--target", "x"], 1, "need a DIR"),
    (["app", "-f", "Dockerfile"], 1, "need a DIR"),
    (["app", "--vcpus", "2"], 1, "need a DIR"),
    (["app", "{ctx}", "--vcpus", "two"], 2, "invalid int value: 'two'"),
])
def test_bad_input_gives_a_message_and_no_traceback(
        tmp_path: Path, args: list[str], code: int, message: str) -> None:
    ctx = make_context(tmp_path / "ctx", {})
    make_context(tmp_path / "elsewhere", {})
    (tmp_path / "Dockerfile").write_text("FROM base\n")
    fill = {"ctx": str(ctx), "tmp": str(tmp_path)}
    done = sandport(*(a.format(**fill) for a in args))
    assert done.returncode == code
    assert message.format(**fill) in done.stderr
    assert "Traceback" not in done.stderr


def test_build_display_interleaves_pulls_steps_and_output() -> None:
    out = io.StringIO()
    display = BuildDisplay(out, live=False)
    for event in BUILD_EVENTS + [{"step": 3, "output": "tail"}]:
        display(event)
    display.finish()
    assert out.getvalue().splitlines() == [
        "pulling the base image docker.io/library/debian:12",
        "resolving docker.io/library/debian:12", "aaaaaaaaaaaa: exists (10 B)",
        "Step 1/3 (line 1): FROM debian:12",
        "Step 2/3 (line 3): RUN make", "cc -o app app.c", "ok",
        "Step 3/3 (line 4): COPY . /app (cached)", "built in 2.3 s, 1 of 3 steps cached",
        "tail"]
    assert out.getvalue().endswith("tail\n")
