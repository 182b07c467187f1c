"""Runtime API routes. The edge proxy maps ``{runtime.baseUrl}/<path>`` (the sandbox's
runtime host) to ``/runtime/{id}/<path>`` here; that prefix is not reachable from outside."""

from __future__ import annotations

from starlette.routing import Route, WebSocketRoute

from . import files, processes, terminals, watches
from .exec import exec_command

P = "/runtime/{id}/sandbox"

routes = [
    Route(f"{P}/exec", exec_command, methods=["POST"]),
    Route(f"{P}/processes", processes.start_process, methods=["POST"]),
    Route(f"{P}/processes", processes.list_processes, methods=["GET"]),
    Route(f"{P}/processes/{{process_id}}", processes.get_process, methods=["GET"]),
    Route(f"{P}/processes/{{process_id}}", processes.kill_process, methods=["DELETE"]),
    Route(f"{P}/processes/{{process_id}}/wait", processes.wait_process, methods=["POST"]),
    Route(f"{P}/processes/{{process_id}}/stream", processes.stream_process, methods=["GET"]),
    Route(f"{P}/processes/{{process_id}}/stdin", processes.write_stdin, methods=["POST"]),
    Route(f"{P}/processes/{{process_id}}/signal", processes.signal_process, methods=["POST"]),
    Route(f"{P}/pty", terminals.create_terminal, methods=["POST"]),
    Route(f"{P}/pty/{{pty_id}}", terminals.get_terminal, methods=["GET"]),
    Route(f"{P}/pty/{{pty_id}}/wait", terminals.wait_terminal, methods=["POST"]),
    Route(f"{P}/pty/{{pty_id}}/kill", terminals.kill_terminal, methods=["POST"]),
    Route(f"{P}/pty/{{pty_id}}/resize", terminals.resize_terminal, methods=["POST"]),
    WebSocketRoute(f"{P}/pty/{{pty_id}}/ws", terminals.attach_terminal),
    Route(f"{P}/files", files.list_files, methods=["GET"]),
    Route(f"{P}/files/stat", files.stat_file, methods=["GET"]),
    Route(f"{P}/files/read", files.read_file, methods=["POST"]),
    Route(f"{P}/files/write", files.write_files, methods=["POST"]),
    Route(f"{P}/files/upload", files.upload_file, methods=["PUT", "POST"]),
    Route(f"{P}/files/download", files.download_file, methods=["GET"]),
    Route(f"{P}/files/mkdir", files.make_dir, methods=["POST"]),
    Route(f"{P}/files/move", files.move_file, methods=["POST"]),
    Route(f"{P}/files/copy", files.copy_file, methods=["POST"]),
    Route(f"{P}/files/delete", files.delete_file, methods=["POST"]),
    Route(f"{P}/files/chmod", files.chmod_file, methods=["POST"]),
    Route(f"{P}/files/chown", files.chown_file, methods=["POST"]),
    Route(f"{P}/files/watch", watches.create_watch, methods=["POST"]),
    Route(f"{P}/files/watch/{{watch_id}}", watches.get_watch, methods=["GET"]),
    Route(f"{P}/files/watch/{{watch_id}}", watches.delete_watch, methods=["DELETE"]),
    WebSocketRoute(f"{P}/files/watch/{{watch_id}}/ws", watches.stream_watch),
    WebSocketRoute(f"{P}/files/watch/{{watch_id}}/stream", watches.stream_watch),
]
