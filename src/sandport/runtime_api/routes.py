"""Runtime API routes, mounted under ``/runtime/{id}`` until the edge proxy serves them."""

from __future__ import annotations

from starlette.routing import Route

from .exec import exec_command

routes = [
    Route("/runtime/{id}/sandbox/exec", exec_command, methods=["POST"]),
]
