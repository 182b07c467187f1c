"""Runtime API routes. The edge proxy maps ``{runtime.baseUrl}/<path>`` (the sandbox's
runtime host) to ``/runtime/{id}/<path>`` here; that prefix is not reachable from outside."""

from __future__ import annotations

from starlette.routing import Route

from .exec import exec_command

routes = [
    Route("/runtime/{id}/sandbox/exec", exec_command, methods=["POST"]),
]
