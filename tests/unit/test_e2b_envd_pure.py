"""The E2B face's in-sandbox API, its pure parts: Connect's framing, envd's messages as the
SDK's own protobuf classes read and write them (e2b's generated ``*_pb`` modules, not a
copy of their shapes), and the edge's routing of envd's hosts and headers."""

from __future__ import annotations

import base64
import hashlib
import json
import struct

import pytest
from e2b.envd.filesystem import filesystem_pb
from e2b.envd.process import process_pb
from e2b.sandbox.signature import get_signature
from protobuf import Oneof

from sandport.control.requests import parse_port
from sandport.e2b import connect, envd_wire
from sandport.e2b.connect import ConnectError
from sandport.errors import Conflict, NotFound, PayloadTooLarge, RuntimeFailure, ValidationFailed
from sandport.models import FileInfo
from sandport.proxy.decide import Answer, Edge, Forward, RequestHead
from sandport.proxy.routes import RouteTable, SandboxRoute
from sandport.proxy.urls import PublicUrls
from sandport.runtime_api.commands import EXEC_ARGV
from sandport.runtime_api.process_state import ProcessSession
from sandport.server.app import came_by_runtime_host

SID = "0123456789abcdef0123"
OTHER = "fedcba9876543210fedc"


def _json(message: object) -> dict[str, object]:
    decoded = json.loads(message.to_json())  # type: ignore[attr-defined]
    assert isinstance(decoded, dict)
    return decoded


# -- Connect ------------------------------------------------------------------------------
def test_envelopes_and_the_end_of_a_stream() -> None:
    framed = connect.envelope({"a": 1})
    assert framed[:5] == struct.pack(">BI", 0, len(b'{"a":1}')) and framed[5:] == b'{"a":1}'
    assert connect.end_stream() == b"\x02\x00\x00\x00\x02{}"
    error = connect.end_stream(ConnectError("not_found", "gone"))
    assert error[0] == 2 and json.loads(error[5:]) == {"error": {"code": "not_found",
                                                                 "message": "gone"}}
    assert connect.unwrap(connect.envelope({"x": "y"})) == {"x": "y"}


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00", b"\x00\x00\x00\x00\x05{}",
                                  b"\x00\x00\x00\x00\x02{}{}", b"\x04\x00\x00\x00\x02{}",
                                  b"\x00\x00\x00\x00\x02[]", b"\x00\x00\x00\x00\x02\xff\xfe"])
def test_broken_envelopes_are_refused(body: bytes) -> None:
    with pytest.raises(ConnectError) as refused:
        connect.unwrap(body)
    assert refused.value.code == "invalid_argument"


def test_compressed_messages_are_unimplemented() -> None:
    with pytest.raises(ConnectError) as refused:
        connect.unwrap(b"\x01\x00\x00\x00\x02{}")
    assert refused.value.code == "unimplemented"


def test_errors_map_as_connect_clients_read_them() -> None:
    assert ConnectError.of(NotFound("x")).code == "not_found"
    assert ConnectError.of(Conflict("x")).code == "failed_precondition"
    assert ConnectError.of(PayloadTooLarge("x")).code == "resource_exhausted"
    assert ConnectError.of(RuntimeFailure("x")).code == "internal"
    assert ConnectError("unauthenticated", "m").status == 401
    assert connect.timeout_ms(None) is None and connect.timeout_ms("0") is None
    assert connect.timeout_ms("1500") == 1500
    for bad in ("-1", "1.5", "12345678901", "x", "\u00b2", "\u0663"):
        with pytest.raises(ConnectError):
            connect.timeout_ms(bad)


# -- process messages ---------------------------------------------------------------------
def test_a_start_as_the_sdk_sends_it() -> None:
    sent = process_pb.StartRequest(
        process=process_pb.ProcessConfig(cmd="/bin/bash", args=["-l", "-c", "echo hi"],
                                         envs={"A": "b"}, cwd="/tmp"),
        stdin=False, tag="web")
    start, tag = envd_wire.parse_start(_json(sent), "root", 60_000)
    assert start.argv == (*EXEC_ARGV, "/bin/bash", "-l", "-c", "echo hi")
    assert (start.cwd, start.env, start.run_as, start.timeout_s) == ("/tmp", {"A": "b"},
                                                                     "root", 60.0)
    assert start.stdin is False and start.pty is None and tag == "web"
    terminal = process_pb.StartRequest(
        process=process_pb.ProcessConfig(cmd="/bin/bash", args=["-i", "-l"]),
        pty=process_pb.PTY(size=process_pb.PTY.Size(rows=30, cols=100)))
    start, _ = envd_wire.parse_start(_json(terminal), None, None)
    assert start.pty == (30, 100) and start.env["TERM"] == "xterm-256color"
    assert start.stdin is True and start.timeout_s is None
    forever, _ = envd_wire.parse_start(_json(terminal), None, 10 ** 10)
    assert forever.timeout_s == 7 * 24 * 3600  # the runtime API's longest


@pytest.mark.parametrize("message", [
    {}, {"process": {}}, {"process": {"cmd": ""}}, {"process": {"cmd": 5}},
    {"process": {"cmd": "x", "args": "no"}}, {"process": {"cmd": "x", "args": [1]}},
    {"process": {"cmd": "x\x00"}}, {"process": {"cmd": "x", "envs": {"A=B": "c"}}},
    {"process": {"cmd": "x", "envs": {"A": 1}}}, {"process": {"cmd": "x", "cwd": "rel"}},
    {"process": {"cmd": "x"}, "pty": {"size": {"rows": 5000, "cols": 1}}},
    {"process": {"cmd": "x"}, "stdin": "yes"}, {"process": {"cmd": "x" * 300_000}},
    {"process": {"cmd": "x", "envs": {f"V{i}": "v" for i in range(1000)}}},
    {"process": {"cmd": "x", "envs": {"BIG": "v" * (1 << 20)}}},
    {"process": {"cmd": "x"}, "pty": {"size": {"rows": "\u00b2", "cols": 1}}}])
def test_bad_starts_are_refused(message: dict[str, object]) -> None:
    with pytest.raises(ConnectError) as refused:
        envd_wire.parse_start(message, None, None)
    assert refused.value.code == "invalid_argument"


def test_selectors_input_and_signals() -> None:
    by_pid = process_pb.SendInputRequest(
        process=process_pb.ProcessSelector(selector=Oneof("pid", 42)),
        input=process_pb.ProcessInput(input=Oneof("stdin", b"\x00hi\xff")))
    assert envd_wire.parse_selector(_json(by_pid)) == ("pid", 42)
    assert envd_wire.parse_input(_json(by_pid)) == b"\x00hi\xff"
    by_tag = process_pb.ConnectRequest(process=process_pb.ProcessSelector(
        selector=Oneof("tag", "web")))
    assert envd_wire.parse_selector(_json(by_tag)) == ("tag", "web")
    for signal, number in ((process_pb.Signal.SIGKILL, 9), (process_pb.Signal.SIGTERM, 15)):
        sent = process_pb.SendSignalRequest(
            process=process_pb.ProcessSelector(selector=Oneof("pid", 1)), signal=signal)
        assert envd_wire.parse_signal(_json(sent)) == number
    for bad in ({"signal": "SIGNAL_UNSPECIFIED"}, {"signal": 2}, {}, {"signal": True}):
        with pytest.raises(ConnectError):
            envd_wire.parse_signal(bad)
    for bad_selector in ({}, {"process": {}}, {"process": {"pid": -1}},
                         {"process": {"pid": "x"}}):
        with pytest.raises(ConnectError):
            envd_wire.parse_selector(bad_selector)
    with pytest.raises(ConnectError):
        envd_wire.parse_input({"input": {"stdin": "not base64!"}})
    resize = process_pb.UpdateRequest(
        process=process_pb.ProcessSelector(selector=Oneof("pid", 1)),
        pty=process_pb.PTY(size=process_pb.PTY.Size(rows=40, cols=132)))
    assert envd_wire.parse_size(_json(resize)) == (40, 132)


def _session(**fields: object) -> ProcessSession:
    return ProcessSession("proc_x", SID, "/bin/bash", ["-l", "-c", "x"], "/", pid=7,
                          **fields)  # type: ignore[arg-type]


def test_events_as_the_sdk_reads_them() -> None:
    read = process_pb.StartResponse.from_json
    start = read(json.dumps(envd_wire.start_event(7)))
    assert start.event is not None and start.event.event == Oneof(
        "start", process_pb.ProcessEvent.StartEvent(pid=7))
    data = read(json.dumps(envd_wire.data_event("stderr", b"\xff\x00", False)))
    assert data.event is not None and data.event.event is not None
    assert data.event.event.field == "data"
    assert data.event.event.value.output == Oneof("stderr", b"\xff\x00")
    pty = read(json.dumps(envd_wire.data_event("stdout", b"ab", True)))
    assert pty.event.event.value.output == Oneof("pty", b"ab")  # type: ignore[union-attr]
    exited = read(json.dumps(envd_wire.end_event(_session(status="exited", exit_code=3))))
    end = exited.event.event.value  # type: ignore[union-attr]
    assert (end.exit_code, end.exited, end.status) == (3, True, "exit status 3")
    killed = read(json.dumps(envd_wire.end_event(_session(status="killed", signal=9))))
    end = killed.event.event.value  # type: ignore[union-attr]
    assert (end.exit_code, end.exited, end.status) == (-1, False, "signal: killed")
    assert read(json.dumps(envd_wire.KEEPALIVE)).event.event.field == "keepalive"  # type: ignore[union-attr]
    info = process_pb.ListResponse.from_json(json.dumps(
        {"processes": [envd_wire.process_info(_session(tag="web", envs={"A": "b"}))]}))
    assert info.processes[0].pid == 7 and info.processes[0].tag == "web"
    assert info.processes[0].config.args == ["-l", "-c", "x"]  # type: ignore[union-attr]
    assert info.processes[0].config.envs == {"A": "b"}  # type: ignore[union-attr]


# -- filesystem messages ------------------------------------------------------------------
def test_entries_as_the_sdk_reads_them() -> None:
    info = FileInfo("/tmp/a link", "a link", "symlink", 5, 0o777, "lrwxrwxrwx", "root", "root",
                    1_700_000_000_123, symlink_target="/etc/hosts")
    entry = filesystem_pb.StatResponse.from_json(json.dumps({"entry": envd_wire.entry(info)}))
    assert entry.entry is not None
    got = entry.entry
    assert (got.name, got.path, got.size, got.mode) == ("a link", "/tmp/a link", 5, 0o777)
    assert got.type == filesystem_pb.FileType.SYMLINK and got.symlink_target == "/etc/hosts"
    assert got.modified_time is not None
    assert got.modified_time.seconds == 1_700_000_000
    far = envd_wire.entry(FileInfo("/f", "f", "file", 0, 0o644, "-rw-r--r--", "a", "b",
                                   10 ** 18))  # (a sandbox may set any mtime)
    assert far["modifiedTime"] == "9999-12-31T23:59:59.999Z"
    assert envd_wire.entry(FileInfo("/f", "f", "file", 0, 0o644, "-rw-r--r--", "a", "b",
                                    -10 ** 15))["modifiedTime"] == "1970-01-01T00:00:00.000Z"
    listing = filesystem_pb.ListDirResponse.from_json(json.dumps({"entries": [
        envd_wire.entry(FileInfo("/d", "d", "dir", 4096, 0o755, "drwxr-xr-x", "a", "b", 0))]}))
    assert listing.entries[0].type == filesystem_pb.FileType.DIRECTORY
    sent = filesystem_pb.ListDirRequest(path="/x", depth=3)
    assert envd_wire.path_of(_json(sent)) == "/x" and envd_wire.depth_of(_json(sent)) == 3
    assert envd_wire.depth_of({"path": "/x"}) == 1
    moved = filesystem_pb.MoveRequest(source="/a", destination="/b")
    assert (envd_wire.path_of(_json(moved), "source"),
            envd_wire.path_of(_json(moved), "destination")) == ("/a", "/b")
    watch = filesystem_pb.CreateWatcherRequest(path="/w", recursive=True)
    assert envd_wire.watch_request(_json(watch)) == ("/w", True)
    newer = filesystem_pb.CreateWatcherRequest(path="/w", include_entry=True)
    with pytest.raises(ConnectError):
        envd_wire.watch_request(_json(newer))
    got_id = filesystem_pb.GetWatcherEventsRequest(watcher_id="w_1")
    assert envd_wire.watcher_id(_json(got_id)) == "w_1"
    events = filesystem_pb.GetWatcherEventsResponse.from_json(json.dumps({"events": [
        envd_wire.fs_event("/w", {"path": "/w/sub/f", "op": "CREATE"})]}))
    assert (events.events[0].name, events.events[0].type) == (
        "sub/f", filesystem_pb.EventType.CREATE)


def test_tokens_and_signatures() -> None:
    token = envd_wire.access_token(b"k" * 32, SID)
    assert token == envd_wire.access_token(b"k" * 32, SID)
    assert token not in (envd_wire.access_token(b"k" * 32, OTHER),
                         envd_wire.access_token(b"j" * 32, SID))
    for user, expiration in ((None, None), ("root", 1_900_000_000)):
        # what the SDK's own signing gives (e2b.sandbox.signature)
        raw = f"/tmp/f:read:{user or ''}:{token}" + (f":{expiration}" if expiration else "")
        digest = base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=")
        assert envd_wire.file_signature("/tmp/f", "read", user or "", token,
                                        expiration) == "v1_" + digest.decode()
    signed = get_signature("/tmp/f", "write", "user", token)
    assert envd_wire.file_signature("/tmp/f", "write", "user", token,
                                    None) == signed["signature"]


# -- the edge -----------------------------------------------------------------------------
ENVD_SECRET = b"e" * 32


def _edge() -> Edge:
    table = RouteTable()
    table.put(SandboxRoute(SID, "10.77.0.2", "spt_tok", 2e9, {}, open_ports=True))
    return Edge(PublicUrls.parse("http://{port}-{id}.localhost:8080"), table,
                "/run/api.sock", b"s" * 32, clock=lambda: 1e9,
                envd_token=lambda sid: envd_wire.access_token(ENVD_SECRET, sid))


def _req(host: str, target: bytes, *headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"POST", target, b"1.1", [(b"Host", host.encode()), *headers],
                       "192.0.2.7")


def _status(decision: object) -> int:
    assert isinstance(decision, Answer)
    return int(decision.render(False).split(b" ", 2)[1])


def test_the_envd_host_goes_to_the_app_marked() -> None:
    edge = _edge()
    forged = (b"X-Sandport-Envd", OTHER.encode())
    envd = edge.decide(_req(f"49983-{SID}.localhost:8080", b"/process.Process/Start", forged))
    assert isinstance(envd, Forward) and envd.key == ("unix", "/run/api.sock")
    assert envd.head.startswith(f"POST /envd/{SID}/process.Process/Start HTTP/1.1".encode())
    assert f"\r\nx-sandport-envd: {SID}\r\n".encode() in envd.head
    assert OTHER.encode() not in envd.head  # the client's own mark is dropped
    # an open-ports sandbox still never opens 49983 (nor 4001) to its own servers
    port = edge.decide(_req(f"3000-{SID}.localhost:8080", b"/", forged))
    assert isinstance(port, Forward) and port.key == ("tcp", "10.77.0.2", "3000")
    assert b"sandport-envd" not in port.head.lower()
    assert _status(edge.decide(_req("localhost:8080", b"/envd/" + SID.encode() + b"/x"))) == 404
    assert _status(edge.decide(_req("localhost:8080", b"/%65nvd/x"))) == 404


def test_the_sandbox_url_headers_name_the_sandbox() -> None:
    edge = _edge()
    named = edge.decide(_req("localhost:8080", b"/files?path=/x", (b"E2b-Sandbox-Id",
                                                                    SID.encode()),
                             (b"E2b-Sandbox-Port", b"49983")))
    assert isinstance(named, Forward) and named.head.startswith(
        f"POST /envd/{SID}/files?path=/x HTTP/1.1".encode())
    port = edge.decide(_req("localhost:8080", b"/", (b"e2b-sandbox-id", SID.encode()),
                            (b"e2b-sandbox-port", b"3000")))
    assert isinstance(port, Forward) and port.key == ("tcp", "10.77.0.2", "3000")
    assert _status(edge.decide(_req("localhost:8080", b"/", (b"e2b-sandbox-id", b"nope"),
                                    (b"e2b-sandbox-port", b"49983")))) == 404
    for bad_port in (b"", b"0", b"65536", b"49983x", b"123456"):
        assert _status(edge.decide(_req("localhost:8080", b"/",
                                        (b"e2b-sandbox-id", SID.encode()),
                                        (b"e2b-sandbox-port", bad_port)))) == 400, bad_port
    assert _status(edge.decide(_req("localhost:8080", b"/", (b"e2b-sandbox-id",
                                                             SID.encode())))) == 400
    # the headers change nothing on a sandbox's own host
    own = edge.decide(_req(f"3000-{SID}.localhost:8080", b"/", (b"e2b-sandbox-id", OTHER.encode()),
                           (b"e2b-sandbox-port", b"49983")))
    assert isinstance(own, Forward) and own.key == ("tcp", "10.77.0.2", "3000")
    # a browser link is redeemed on the port's own host only: its cookie is that host's
    redeem = edge.decide(_req("localhost:8080", b"/_sandport/auth?grant=g",
                              (b"e2b-sandbox-id", SID.encode()), (b"e2b-sandbox-port", b"3000")))
    assert _status(redeem) == 404


def test_the_envd_token_never_reaches_the_sandbox() -> None:
    token = envd_wire.access_token(ENVD_SECRET, SID)
    theirs = envd_wire.access_token(ENVD_SECRET, OTHER)
    for host, extra in ((f"3000-{SID}.localhost:8080", ()),
                        ("localhost:8080", ((b"e2b-sandbox-id", SID.encode()),
                                            (b"e2b-sandbox-port", b"3000")))):
        port = edge_decide(host, (b"X-Access-Token", token.encode()), *extra)
        assert isinstance(port, Forward) and token.encode() not in port.head
        other = edge_decide(host, (b"x-access-token", theirs.encode()), *extra)
        assert isinstance(other, Forward) and theirs.encode() in other.head  # not ours: kept


def edge_decide(host: str, *headers: tuple[bytes, bytes]) -> object:
    return _edge().decide(_req(host, b"/", *headers))


def test_the_traffic_token_opens_private_ports_and_stays_at_the_edge() -> None:
    table = RouteTable()
    table.put(SandboxRoute(SID, "10.77.0.2", "spt_tok", 2e9, {}, open_ports=True,
                           open_ports_auth=True))
    table.put(SandboxRoute(OTHER, "10.77.0.6", "spt_other", 2e9, {}, open_ports=True,
                           open_ports_auth=True))
    edge = Edge(PublicUrls.parse("http://{port}-{id}.localhost:8080"), table,
                "/run/api.sock", b"s" * 32, clock=lambda: 1e9,
                traffic_token=lambda sid: envd_wire.traffic_token(ENVD_SECRET, sid))
    token = envd_wire.traffic_token(ENVD_SECRET, SID).encode()
    host = f"3000-{SID}.localhost:8080"
    assert _status(edge.decide(_req(host, b"/"))) == 401
    for wrong in (b"", b"nope", envd_wire.traffic_token(ENVD_SECRET, OTHER).encode(),
                  envd_wire.access_token(ENVD_SECRET, SID).encode()):
        assert _status(edge.decide(_req(host, b"/", (b"e2b-traffic-access-token",
                                                     wrong)))) == 401, wrong
    opened = edge.decide(_req(host, b"/x", (b"E2B-Traffic-Access-Token", token)))
    assert isinstance(opened, Forward) and opened.key == ("tcp", "10.77.0.2", "3000")
    assert token not in opened.head  # the sandbox's code never sees it
    bearer = edge.decide(_req(host, b"/", (b"authorization", b"Bearer spt_tok")))
    assert isinstance(bearer, Forward)  # the runtime token opens them too
    theirs = edge.decide(_req(f"3000-{OTHER}.localhost:8080", b"/",
                              (b"e2b-traffic-access-token", token)))
    assert _status(theirs) == 401  # one sandbox's token opens no other's
    underscored = edge.decide(_req(host, b"/", (b"authorization", b"Bearer spt_tok"),
                                   (b"E2B_Traffic_Access_Token", token),
                                   (b"x_access_token",
                                    envd_wire.access_token(ENVD_SECRET, SID).encode())))
    assert isinstance(underscored, Forward) and token not in underscored.head
    # an auth: true port of a sandbox whose ports are public wants its runtime token
    table.put(SandboxRoute(SID, "10.77.0.2", "spt_tok", 2e9, {3001: True}))
    assert _status(edge.decide(_req(f"3001-{SID}.localhost:8080", b"/",
                                    (b"e2b-traffic-access-token", token)))) == 401


def test_open_ports_turning_private_cut_their_connections() -> None:
    told: list[tuple[str, int | None]] = []
    table = RouteTable()
    table.watch(lambda sid, port: told.append((sid, port)))
    table.put(SandboxRoute(SID, "a", "t", 2e9, {}, open_ports=True))
    table.put(SandboxRoute(SID, "a", "t", 2e9, {}, open_ports=True))  # the same: nothing
    assert told == []
    table.put(SandboxRoute(SID, "a", "t", 2e9, {}, open_ports=True, open_ports_auth=True))
    assert told == [(SID, None)]
    table.put(SandboxRoute(SID, "a", "t", 2e9, {}, open_ports=True))  # public again: no cut
    table.put(SandboxRoute(SID, "a", "t", 2e9, {}, open_ports=False))
    assert told == [(SID, None), (SID, None)]


def test_the_app_serves_envd_routes_only_to_marked_requests() -> None:
    mark = [(b"x-sandport-envd", SID.encode())]
    assert came_by_runtime_host(f"/envd/{SID}/files", mark)
    assert not came_by_runtime_host(f"/envd/{SID}/files", [])
    assert not came_by_runtime_host(f"/envd/{OTHER}/files", mark)
    assert not came_by_runtime_host(f"/envd/{SID}/files", [(b"x-sandport-runtime",
                                                            SID.encode())])
    assert not came_by_runtime_host(f"/runtime/{SID}/x", mark)


def test_the_internal_ports_cannot_be_exposed() -> None:
    for port in (4001, 49983):
        with pytest.raises(ValidationFailed) as refused:
            parse_port(port)
        assert "reserved" in refused.value.message
    assert parse_port(49982) == 49982
