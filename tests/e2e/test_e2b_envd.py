"""The official E2B SDK's in-sandbox calls (commands and files: E2B's envd) against a real
``sandport serve``, unchanged, pointed at it by the environment only: ``E2B_API_URL`` and
``E2B_API_KEY``, and ``E2B_SANDBOX_URL`` (one plain-HTTP address for every sandbox, which
the SDK names in ``E2b-Sandbox-Id`` / ``E2b-Sandbox-Port``; the ``49983-{id}`` host form is
tried with a plain HTTP client, as the SDK reaches it only over TLS).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import gzip
import json
import secrets
import struct
import time
from collections.abc import Iterator

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    PtySize,
    Sandbox,
    SandboxQuery,
    SandboxState,
)
from e2b.exceptions import (
    FileNotFoundException,
    InvalidArgumentException,
    SandboxException,
)
from e2b.sandbox.filesystem.filesystem import FileType

from sandport import Sandbox as Ours

from .._server import ServerProcess


@pytest.fixture
def e2b_sandbox(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    monkeypatch.setenv("E2B_API_URL", server.base_url)
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    monkeypatch.setenv("E2B_SANDBOX_URL", server.base_url)
    run = secrets.token_hex(4)
    sb = Sandbox.create(template="python", timeout=300, metadata={"run": run})
    yield sb
    for listed in Sandbox.list(query=SandboxQuery(metadata={"run": run}),
                               api_key=server.api_key).next_items():
        Sandbox.kill(listed.sandbox_id, api_key=server.api_key)


def _envd(server: ServerProcess, sb: Sandbox, path: str, token: str | None = None,
          **kwargs: object) -> httpx.Response:
    """A plain HTTP request to the sandbox's envd host (``49983-{id}``), on the edge."""
    headers = {"host": f"49983-{sb.sandbox_id}.localhost:{server.port}",
               **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    if token is not None:
        headers["x-access-token"] = token
    return httpx.request(str(kwargs.pop("method", "POST")), server.base_url + path,
                         headers=headers, **kwargs)  # type: ignore[arg-type]


def _stream_body(message: dict[str, object]) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(payload)) + payload


def _frames(body: bytes) -> list[tuple[int, dict[str, object]]]:
    found = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        found.append((flags, json.loads(body[5:5 + length])))
        body = body[5 + length:]
    return found


def test_commands_run_in_the_sandbox(e2b_sandbox: Sandbox) -> None:
    sb = e2b_sandbox
    done = sb.commands.run("echo out; echo err >&2; printf '%s' \"$GREETING\"",
                           envs={"GREETING": "hé"})
    assert (done.exit_code, done.stdout, done.stderr) == (0, "out\nhé", "err\n")
    with pytest.raises(CommandExitException) as failed:
        sb.commands.run("echo before; exit 3")
    assert failed.value.exit_code == 3 and failed.value.stdout == "before\n"
    assert sb.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sb.commands.run("whoami", user="root").stdout == "root\n"
    seen: list[str] = []
    sb.commands.run("for i in 1 2 3; do echo $i; sleep 0.2; done", on_stdout=seen.append)
    assert "".join(seen) == "1\n2\n3\n"
    with pytest.raises(InvalidArgumentException):  # the cwd is not there
        sb.commands.run("true", cwd="/no/such/dir")


def test_background_commands_list_connect_stdin_and_kill(e2b_sandbox: Sandbox,
                                                         server: ServerProcess) -> None:
    sb = e2b_sandbox
    handle = sb.commands.run("read line; echo got:$line > /tmp/got; sleep 600",
                             background=True, stdin=True)
    listed = {p.pid: p for p in sb.commands.list()}
    assert handle.pid in listed and listed[handle.pid].args == ["-l", "-c", listed[
        handle.pid].args[2]] and "sleep 600" in listed[handle.pid].args[2]
    sb.commands.send_stdin(handle.pid, "hello\n")
    deadline = time.monotonic() + 10
    while not sb.files.exists("/tmp/got") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sb.files.read("/tmp/got") == "got:hello\n"
    attached = sb.commands.connect(handle.pid)
    assert sb.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as killed:
        attached.wait()
    assert killed.value.exit_code == -1
    assert sb.commands.kill(handle.pid) is False  # gone: envd's not_found
    assert handle.pid not in {p.pid for p in sb.commands.list()}
    # the same process through the other face, while it ran: one registry
    more = sb.commands.run("sleep 300", background=True)
    ours = Ours.connect(sb.sandbox_id, api_key=server.api_key, base_url=server.base_url)
    try:
        pids = {p.pid for p in ours.processes.list()}
        assert more.pid in pids
    finally:
        ours.close()
    more.kill()


def test_stdin_closed_ends_a_reader(e2b_sandbox: Sandbox) -> None:
    sb = e2b_sandbox
    handle = sb.commands.run("cat", background=True, stdin=True)
    sb.commands.send_stdin(handle.pid, b"bytes \x00\x01 in\n")
    sb.commands.close_stdin(handle.pid)
    result = handle.wait()
    assert result.exit_code == 0 and result.stdout == "bytes \x00\x01 in\n"


def test_a_command_timeout_kills_it(e2b_sandbox: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises((CommandExitException, SandboxException)):
        e2b_sandbox.commands.run("sleep 60", timeout=2)
    assert time.monotonic() - started < 15

    def sleeping() -> list[object]:
        return [p for p in e2b_sandbox.commands.list() if "sleep 60" in " ".join(p.args)]

    while sleeping() and time.monotonic() - started < 15:  # (the kill is on its way)
        time.sleep(0.1)
    assert not sleeping()


def test_files_through_the_sdk(e2b_sandbox: Sandbox) -> None:
    sb = e2b_sandbox
    info = sb.files.write("/tmp/e2b/a/hello.txt", "hi there")
    assert (info.path, info.name) == ("/tmp/e2b/a/hello.txt", "hello.txt")
    assert sb.files.read("/tmp/e2b/a/hello.txt") == "hi there"
    blob = secrets.token_bytes(3 << 20)
    sb.files.write("/tmp/e2b/blob.bin", blob, use_octet_stream=True)
    assert bytes(sb.files.read("/tmp/e2b/blob.bin", format="bytes")) == blob
    sb.files.write("/tmp/e2b/zipped.txt", "z" * 100_000, gzip=True)
    assert sb.files.read("/tmp/e2b/zipped.txt", gzip=True) == "z" * 100_000
    many = sb.files.write_files([{"path": "/tmp/e2b/m/1", "data": "one"},
                                 {"path": "/tmp/e2b/m/2", "data": b"two"}])
    assert [w.path for w in many] == ["/tmp/e2b/m/1", "/tmp/e2b/m/2"]
    assert sb.commands.run("cat /tmp/e2b/m/1 /tmp/e2b/m/2").stdout == "onetwo"
    entries = sb.files.list("/tmp/e2b")
    assert {(e.name, e.type) for e in entries} >= {("a", FileType.DIR),
                                                   ("blob.bin", FileType.FILE)}
    deep = {e.path for e in sb.files.list("/tmp/e2b", depth=2)}
    assert "/tmp/e2b/a/hello.txt" in deep
    stat = sb.files.get_info("/tmp/e2b/blob.bin")
    assert stat.size == len(blob) and stat.type == FileType.FILE
    assert sb.files.exists("/tmp/e2b/a") is True
    assert sb.files.exists("/tmp/e2b/nothing") is False
    assert sb.files.make_dir("/tmp/e2b/new/deep") is True
    assert sb.files.make_dir("/tmp/e2b/new/deep") is False  # there already
    moved = sb.files.rename("/tmp/e2b/a/hello.txt", "/tmp/e2b/new/hello.txt")
    assert moved.path == "/tmp/e2b/new/hello.txt"
    sb.files.remove("/tmp/e2b/new")
    assert sb.files.exists("/tmp/e2b/new") is False
    with pytest.raises(FileNotFoundException):
        sb.files.read("/tmp/e2b/new/hello.txt")
    relative = sb.files.write("rel.txt", "home", user="root")  # from the user's home
    assert relative.path == "/root/rel.txt"


def test_signed_urls_and_the_host_form(e2b_sandbox: Sandbox, server: ServerProcess) -> None:
    sb = e2b_sandbox
    token = sb._envd_access_token
    assert token
    sb.files.write("/tmp/signed.txt", "signed content")
    # (E2B_SANDBOX_URL's one address does not name the sandbox: a URL, alone, goes to the
    # sandbox's own envd host, where E2B_DOMAIN's form would send it)
    url = sb.download_url("/tmp/signed.txt", use_signature_expiration=60)
    url = url.removeprefix(server.base_url)
    octets = {"content-type": "application/octet-stream"}
    assert _envd(server, sb, url, method="GET").text == "signed content"  # no token needed
    assert _envd(server, sb, url.replace("signed.txt", "other.txt"),
                 method="GET").status_code == 401
    assert _envd(server, sb, url.replace("=60", "=61") if "=60" in url else url + "0",
                 method="GET").status_code == 401
    upload = sb.upload_url("/tmp/up.txt").removeprefix(server.base_url)
    assert _envd(server, sb, upload, content=b"via url", headers=octets).status_code == 200
    assert sb.files.read("/tmp/up.txt") == "via url"
    # a read signature does not write
    assert _envd(server, sb, url, content=b"x", headers=octets).status_code == 401
    expired = sb.download_url("/tmp/signed.txt", use_signature_expiration=-5)
    assert _envd(server, sb, expired.removeprefix(server.base_url),
                 method="GET").status_code == 401
    # the 49983-{id} host on the edge: health open, the rest behind the token
    assert _envd(server, sb, "/health", method="GET").status_code == 204
    # gzip for what it shrinks; random bytes go as they are, with their length
    sb.files.write("/tmp/text.txt", "words " * 50_000)
    sb.files.write("/tmp/random.bin", secrets.token_bytes(200_000))
    wants = {"accept-encoding": "gzip"}
    text = _envd(server, sb, "/files?path=/tmp/text.txt", token, method="GET", headers=wants)
    assert text.headers["content-encoding"] == "gzip" and text.text == "words " * 50_000
    noise = _envd(server, sb, "/files?path=/tmp/random.bin", token, method="GET",
                  headers=wants)
    assert "content-encoding" not in noise.headers
    assert noise.headers["content-length"] == "200000" and len(noise.content) == 200_000
    stat = _envd(server, sb, "/filesystem.Filesystem/Stat", token, json={"path": "/tmp"},
                 headers={"content-type": "application/json"})
    assert stat.status_code == 200 and stat.json()["entry"]["type"] == "FILE_TYPE_DIRECTORY"
    body = _stream_body({"process": {"cmd": "/bin/echo", "args": ["a b"]}})
    ran = _envd(server, sb, "/process.Process/Start", token, content=body,
                headers={"content-type": "application/connect+json"})
    frames = _frames(ran.content)
    assert ran.headers["content-type"] == "application/connect+json"
    assert "start" in frames[0][1]["event"]  # type: ignore[operator]
    out = b"".join(base64.b64decode(f["event"]["data"]["stdout"])  # type: ignore[index]
                   for _, f in frames if "data" in f.get("event", {}))  # type: ignore[operator]
    assert out == b"a b\n"
    assert frames[-1] == (2, {}) and frames[-2][1]["event"]["end"]["exitCode"] == 0  # type: ignore[index]


def test_tokens_and_bad_calls_are_refused(e2b_sandbox: Sandbox, server: ServerProcess) -> None:
    sb = e2b_sandbox
    other = Sandbox.create(template="python", timeout=60,
                           metadata={"run": sb.get_info().metadata["run"]},
                           lifecycle={"on_timeout": "pause", "auto_resume": True})
    token, theirs = sb._envd_access_token, other._envd_access_token
    assert token and theirs and token != theirs
    json_type = {"content-type": "application/json"}
    for given in (None, "", "wrong", theirs):  # another sandbox's token opens nothing here
        answer = _envd(server, sb, "/filesystem.Filesystem/Stat", given,
                       json={"path": "/"}, headers=json_type)
        assert answer.status_code == 401 and answer.json()["code"] == "unauthenticated"
        files = _envd(server, sb, "/files?path=/etc/hostname", given, method="GET")
        assert files.status_code == 401
    # the marker of internal routes cannot be sent from outside
    forged = httpx.post(f"{server.base_url}/envd/{sb.sandbox_id}/filesystem.Filesystem/Stat",
                        json={"path": "/"}, headers={"x-access-token": token or "",
                                                     "x-sandport-envd": sb.sandbox_id})
    assert forged.status_code == 404
    calls = [("/filesystem.Filesystem/Stat", b"{not json", json_type, 400, "invalid_argument"),
             ("/filesystem.Filesystem/Stat", b"[]", json_type, 400, "invalid_argument"),
             ("/filesystem.Filesystem/Stat", b'{"path": 5}', json_type, 400,
              "invalid_argument"),
             ("/filesystem.Filesystem/Stat", b'{"path": "/x"}', {"content-type": "text/plain"},
              400, "invalid_argument"),
             ("/filesystem.Filesystem/Nope", b"{}", json_type, 501, "unimplemented"),
             ("/process.Process/SendSignal", b'{"process": {"pid": 1}, "signal": "SIGNAL_X"}',
              json_type, 400, "invalid_argument"),
             ("/process.Process/SendSignal",
              b'{"process": {"pid": 4000000}, "signal": "SIGNAL_SIGKILL"}', json_type, 404,
              "not_found"),
             ("/filesystem.Filesystem/Stat", b'{"path": "/nonexistent"}', json_type, 404,
              "not_found")]
    for path, content, headers, status, code in calls:
        answer = _envd(server, sb, path, token, content=content, headers=headers)
        assert (answer.status_code, answer.json()["code"]) == (status, code), (path, content)
        assert answer.json()["message"]
    stream_type = {"content-type": "application/connect+json"}
    for broken in (b"", b"\x00\x00\x00", b"\x00\x00\x00\x00\x09{}",
                   b"\x01\x00\x00\x00\x02{}", _stream_body({"process": {}})):
        answer = _envd(server, sb, "/process.Process/Start", token, content=broken,
                       headers=stream_type)
        frames = _frames(answer.content)
        assert answer.status_code == 200 and len(frames) == 1 and frames[0][0] == 2, broken
        assert frames[0][1]["error"]["code"] in ("invalid_argument", "unimplemented")  # type: ignore[index]
    # a gzip bomb's lie and a truncated body are refused, not half-written silently
    gzipped = {"content-type": "application/octet-stream", "content-encoding": "gzip"}
    for bad in (gzip.compress(b"x" * 1000)[:-6], gzip.compress(b"x") + b"\x00" * 100_000,
                gzip.compress(b"x") + b"junk", b"not gzip at all"):
        refused = _envd(server, sb, "/files?path=/tmp/bad.txt", token, content=bad,
                        headers=gzipped)
        assert refused.status_code == 400 and refused.json()["code"] == 400, bad[:20]
    two = _envd(server, sb, "/files?path=/tmp/two.txt", token, headers=gzipped,
                content=gzip.compress(b"one ") + gzip.compress(b"two"))  # gzip's members
    assert two.status_code == 200 and sb.files.read("/tmp/two.txt") == "one two"
    odd = _envd(server, sb, "/files?path=/tmp/x&signature=v1_x&signature_expiration=%C2%B2",
                method="GET")
    assert odd.status_code == 400  # (a digit of another script is no Unix time)
    # paths are the sandbox's: no way out of its root
    escape = sb.files.write("/../../../../tmp/escaped-e2b.txt", "inside")
    assert escape.path == "/tmp/escaped-e2b.txt"
    assert sb.files.read("/tmp/escaped-e2b.txt") == "inside"
    with pytest.raises(InvalidArgumentException):
        Sandbox.connect(other.sandbox_id).files.read("/etc/hostname", user="nobody-here")
    # /health answers anyone, and so wakes nothing: a paused autoResume sandbox stays paused
    assert other.pause() is True
    paused = _envd(server, other, "/health", method="GET")
    assert paused.status_code == 502 and "paused" in paused.json()["message"]
    assert other.get_info().state == SandboxState.PAUSED
    # with the token, a call resumes it (autoResume), as a request to its port does
    assert _envd(server, other, "/filesystem.Filesystem/Stat", theirs, json={"path": "/"},
                 headers=json_type).status_code == 200
    assert other.get_info().state == SandboxState.RUNNING
    other.kill()
    gone = _envd(server, other, "/health", method="GET")
    assert gone.status_code == 502 and "was not found" in gone.json()["message"]


def test_a_terminal(e2b_sandbox: Sandbox) -> None:
    sb = e2b_sandbox
    terminal = sb.pty.create(PtySize(rows=30, cols=100), timeout=30)
    sb.pty.resize(terminal.pid, PtySize(rows=40, cols=132))
    sb.pty.send_stdin(terminal.pid, b"stty size; echo tty:$TERM; exit 7\n")
    seen = bytearray()
    with pytest.raises(CommandExitException) as ended:
        terminal.wait(on_pty=seen.extend)
    assert ended.value.exit_code == 7
    assert b"40 132" in seen and b"tty:xterm-256color" in seen


def test_watching_a_directory(e2b_sandbox: Sandbox) -> None:
    sb = e2b_sandbox
    sb.files.make_dir("/tmp/watched/sub")
    watcher = sb.files.watch_dir("/tmp/watched", recursive=True)
    sb.files.write("/tmp/watched/new.txt", "x")
    sb.files.write("/tmp/watched/sub/deep.txt", "y")
    sb.files.remove("/tmp/watched/new.txt")
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not {("new.txt", "remove"),
                                               ("sub/deep.txt", "create")} <= seen:
        seen |= {(e.name, e.type.value) for e in watcher.get_new_events()}
        time.sleep(0.1)
    assert {("new.txt", "create"), ("new.txt", "remove"), ("sub/deep.txt", "create")} <= seen
    assert watcher.get_new_events() == []  # each event once
    watcher.stop()
    with pytest.raises(SandboxException):
        watcher.get_new_events()  # stopped


def test_the_async_sdk(e2b_sandbox: Sandbox) -> None:
    """AsyncSandbox: the same calls, and a watch as one stream (WatchDir)."""

    async def main() -> None:
        sb = await AsyncSandbox.connect(e2b_sandbox.sandbox_id)
        done = await sb.commands.run("echo async")
        assert done.stdout == "async\n"
        await sb.files.make_dir("/tmp/awatch")
        events: list[tuple[str, str]] = []
        watch = await sb.files.watch_dir("/tmp/awatch",
                                         on_event=lambda e: events.append((e.name,
                                                                           e.type.value)))
        await sb.files.write("/tmp/awatch/f.txt", "x")
        for _ in range(100):
            if ("f.txt", "create") in events:
                break
            await asyncio.sleep(0.1)
        await watch.stop()
        assert ("f.txt", "create") in events
        assert await sb.files.read("/tmp/awatch/f.txt") == "x"

    asyncio.run(main())


def test_metrics(e2b_sandbox: Sandbox, server: ServerProcess) -> None:
    """get_metrics: one sample, measured when asked (this server keeps no series)."""
    sb = e2b_sandbox
    busy = sb.commands.run("sha256sum /dev/zero", background=True)
    sb.commands.run("head -c 50000000 /dev/urandom > /tmp/fill.bin")
    try:
        samples = sb.get_metrics()
    finally:
        busy.kill()
    assert len(samples) == 1
    got = samples[0]
    with server.client() as api:
        detail = api.get(f"/api/sandbox/{sb.sandbox_id}").json()
    assert got.cpu_count == detail["vcpus"] and got.cpu_used_pct > 5  # (a busy loop)
    assert got.mem_total == detail["memMiB"] << 20 and 0 < got.mem_used <= got.mem_total
    assert 50_000_000 <= got.disk_used <= got.disk_total
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    assert sb.get_metrics(start=later) == []  # a window of no sample


def test_snapshots(e2b_sandbox: Sandbox) -> None:
    """create_snapshot → a template a create names; listed per sandbox; deleted."""
    sb = e2b_sandbox
    sb.files.write("/srv/state.txt", "kept in the snapshot")
    info = sb.create_snapshot()
    named = sb.create_snapshot(name="e2b-snap:v1")
    assert named.snapshot_id == "e2b-snap:v1" and info.snapshot_id != named.snapshot_id
    pages = Sandbox.list_snapshots(sandbox_id=sb.sandbox_id, limit=1)
    first = pages.next_items()
    assert pages.has_next and len(first) == 1
    seen = {s.snapshot_id for s in first + pages.next_items()}
    assert seen == {info.snapshot_id, named.snapshot_id}
    started = Sandbox.create(template=named.snapshot_id, timeout=60,
                             metadata=sb.get_info().metadata)
    assert started.files.read("/srv/state.txt") == "kept in the snapshot"
    started.kill()
    assert Sandbox.delete_snapshot(named.snapshot_id) is True
    assert Sandbox.delete_snapshot(named.snapshot_id) is False  # gone: 404
    assert {s.snapshot_id for s in Sandbox.list_snapshots(
        sandbox_id=sb.sandbox_id).next_items()} == {info.snapshot_id}
    assert Sandbox.delete_snapshot(info.snapshot_id) is True
    assert Sandbox.delete_snapshot("python") is False  # a built-in image is no snapshot


def test_private_ports_want_the_traffic_token(e2b_sandbox: Sandbox,
                                              server: ServerProcess) -> None:
    """network.allow_public_traffic False: every port answers only with the sandbox's
    trafficAccessToken in e2b-traffic-access-token (which its server never sees)."""
    run = e2b_sandbox.get_info().metadata["run"]
    sb = Sandbox.create(template="python", timeout=60, metadata={"run": run},
                        network={"allow_public_traffic": False})
    token = sb.traffic_access_token
    assert token and e2b_sandbox.traffic_access_token is None  # (that one's are public)
    sb.files.write("/tmp/www/echo.py", (
        "import http.server, json\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = json.dumps(dict(self.headers)).encode()\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
        "http.server.HTTPServer(('0.0.0.0', 8000), H).serve_forever()\n"))
    sb.commands.run("python3 /tmp/www/echo.py", background=True)
    url = f"{server.base_url}/"
    host = {"host": sb.get_host(8000)}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and httpx.get(url, headers={
            **host, "e2b-traffic-access-token": token}).status_code != 200:
        time.sleep(0.1)
    opened = httpx.get(url, headers={**host, "e2b-traffic-access-token": token})
    assert opened.status_code == 200
    assert "e2b-traffic-access-token" not in {k.lower() for k in opened.json()}
    for wrong in (None, "wrong", sb._envd_access_token):
        headers = host if wrong is None else {**host, "e2b-traffic-access-token": wrong}
        assert httpx.get(url, headers=headers).status_code == 401
    other = {"host": e2b_sandbox.get_host(8000), "e2b-traffic-access-token": token}
    assert httpx.get(url, headers=other).status_code == 502  # public, nothing listens
    with server.client() as api:
        assert api.get(f"/api/sandbox/{sb.sandbox_id}").json()["network"][
            "openPortsAuth"] is True
    assert Sandbox.connect(sb.sandbox_id).traffic_access_token == token
    sb.kill()


def test_the_base_template_has_e2b_s_user(e2b_sandbox: Sandbox) -> None:
    """Sandbox.create() with no template: E2B's base, here the default image with user
    ``user`` and /home/user (built once per team, then found)."""
    run = e2b_sandbox.get_info().metadata["run"]
    sb = Sandbox.create(timeout=60, metadata={"run": run})
    assert sb.get_info().template_id == "base"
    assert sb.commands.run("whoami; pwd").stdout == "user\n/home/user\n"
    assert sb.commands.run("whoami", user="root").stdout == "root\n"
    written = sb.files.write("hello.txt", "hi")  # relative: from the user's home
    assert written.path == "/home/user/hello.txt"
    info = sb.files.get_info("/home/user/hello.txt")
    assert (info.owner, info.group) == ("user", "user")
    assert sb.commands.run("python3 -c 'print(open(\"hello.txt\").read())'").stdout == "hi\n"
    started = time.monotonic()
    again = Sandbox.create(timeout=60, metadata={"run": run})  # the image is there now
    assert time.monotonic() - started < 20
    assert again.commands.run("whoami").stdout == "user\n"
    listed = Sandbox.list(query=SandboxQuery(metadata={"run": run}, template="base"))
    assert {s.sandbox_id for s in listed.next_items()} == {sb.sandbox_id, again.sandbox_id}
