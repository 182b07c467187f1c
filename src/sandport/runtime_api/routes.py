"""Runtime API routes. The edge proxy maps ``{runtime.baseUrl}/<path>`` (the sandbox's
runtime host) to ``/runtime/{id}/<path>`` here; that prefix is not reachable from outside.

Every HTTP route checks the sandbox's runtime token before it reads its body or query
(``tokened``); the WebSocket routes check it before they accept.
"""

from __future__ import annotations

from starlette.routing import Route, WebSocketRoute

from ..control.http import Handler
from . import files, processes, terminals, watches
from ._common import tokened
from .exec import exec_command

P = "/runtime/{id}/sandbox"


def _route(path: str, handler: Handler, method: str) -> Route:
    return Route(f"{P}{path}", tokened(handler), methods=[method])


routes = [
    _route("/exec", exec_command, "POST"),
    _route("/processes", processes.start_process, "POST"),
    _route("/processes", processes.list_processes, "GET"),
    _route("/processes/{process_id}", processes.get_process, "GET"),
    _route("/processes/{process_id}", processes.kill_process, "DELETE"),
    _route("/processes/{process_id}/wait", processes.wait_process, "POST"),
    _route("/processes/{process_id}/stream", processes.stream_process, "GET"),
    _route("/processes/{process_id}/stdin", processes.write_stdin, "POST"),
    _route("/processes/{process_id}/signal", processes.signal_process, "POST"),
    _route("/pty", terminals.create_terminal, "POST"),
    _route("/pty/{pty_id}", terminals.get_terminal, "GET"),
    _route("/pty/{pty_id}/wait", terminals.wait_terminal, "POST"),
    _route("/pty/{pty_id}/kill", terminals.kill_terminal, "POST"),
    _route("/pty/{pty_id}/resize", terminals.resize_terminal, "POST"),
    WebSocketRoute(f"{P}/pty/{{pty_id}}/ws", terminals.attach_terminal),
    _route("/files", files.list_files, "GET"),
    _route("/files/stat", files.stat_file, "GET"),
    _route("/files/read", files.read_file, "POST"),
    _route("/files/write", files.write_files, "POST"),
    _route("/files/upload", files.upload_file, "PUT"),
    _route("/files/upload", files.upload_file, "POST"),
    _route("/files/download", files.download_file, "GET"),
    _route("/files/mkdir", files.make_dir, "POST"),
    _route("/files/move", files.move_file, "POST"),
    _route("/files/copy", files.copy_file, "POST"),
    _route("/files/delete", files.delete_file, "POST"),
    _route("/files/chmod", files.chmod_file, "POST"),
    _route("/files/chown", files.chown_file, "POST"),
    _route("/files/watch", watches.create_watch, "POST"),
    _route("/files/watch/{watch_id}", watches.get_watch, "GET"),
    _route("/files/watch/{watch_id}", watches.delete_watch, "DELETE"),
    WebSocketRoute(f"{P}/files/watch/{{watch_id}}/ws", watches.stream_watch),
    WebSocketRoute(f"{P}/files/watch/{{watch_id}}/stream", watches.stream_watch),
]
