"""The OpenAPI document served at /api/openapi.json (hand-written: the routes are few)."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_SANDBOX = {"$ref": "#/components/schemas/SandboxDetail"}
_EXPOSE = {"$ref": "#/components/schemas/ExposePort"}
# The runtime API is served on each sandbox's runtime host, not on the control API's.
_RUNTIME_SERVER = {"url": "{runtimeBaseUrl}", "variables": {"runtimeBaseUrl": {
    "default": "http://4001-SANDBOXID.localhost:8080",
    "description": "the sandbox's runtime.baseUrl"}}}


_REF = {"type": "object", "required": ["ref"], "properties": {"ref": {
    "type": "string", "description": "an image reference, e.g. node:22 or host:5000/team/app:1"}}}


def _op(summary: str, ok: dict[str, Any], *, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": ok}}},
            "4XX": {"description": "client error",
                    "content": {"application/json": {"schema": _ERROR}}},
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "sandport control API", "version": "0.1.0"},
    "components": {
        "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "message"], "properties": {
                "error": {"type": "string"}, "message": {"type": "string"}}},
            "CreateSandbox": {"type": "object", "additionalProperties": False, "properties": {
                "imageName": {"type": "string"},
                "timeoutMinutes": {"type": "integer", "minimum": 1},
                "onTimeout": {"type": "string", "enum": ["stop", "pause"]},
                "vcpus": {"type": "integer", "minimum": 1},
                "memMiB": {"type": "integer", "minimum": 64},
                "diskSizeMiB": {"type": "integer", "minimum": 256},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "exposedPorts": {"type": "array", "items": _EXPOSE},
                "snapshotName": {"type": "string"}, "snapshotId": {"type": "string"},
                "startCmd": {"oneOf": [{"type": "boolean"}, {"type": "string"}]},
                "readyCmd": {"type": "string"},
                "readyTimeoutMs": {"type": "integer", "minimum": 1, "maximum": 600000},
                "network": {"type": "object", "additionalProperties": False, "properties": {
                    "ingress": {"type": "object", "properties": {"allowPorts": {
                        "type": "array", "items": {"type": "integer"}}}},
                    "maskRequestHost": {"type": "string"},
                    "openPorts": {"type": "boolean"}}}}},
            "ExposePort": {"type": "object", "required": ["port"], "properties": {
                "port": {"type": "integer", "minimum": 1024, "maximum": 65535},
                "auth": {"type": "boolean", "default": False}}},
            "ExposedPort": {"type": "object", "properties": {
                "port": {"type": "integer"}, "auth": {"type": "boolean"},
                "url": {"type": "string"}, "browserUrl": {"type": "string", "nullable": True},
                "browserUrlExpiresAt": {"type": "string", "nullable": True}}},
            "SandboxDetail": {"type": "object", "properties": {
                "id": {"type": "string"}, "teamId": {"type": "string"},
                "status": {"type": "string", "enum": ["active", "paused", "closed", "error"]},
                "imageName": {"type": "string"}, "createdAt": {"type": "string"},
                "updatedAt": {"type": "string"},
                "startTime": {"type": "integer", "nullable": True},
                "endTime": {"type": "integer", "nullable": True},
                "closeReason": {"type": "string", "nullable": True},
                "timeoutMinutes": {"type": "integer"}, "vcpus": {"type": "integer"},
                "memMiB": {"type": "integer"}, "diskSizeMiB": {"type": "integer"},
                "runtime": {"type": "object", "properties": {
                    "transport": {"type": "string"}, "host": {"type": "string"},
                    "baseUrl": {"type": "string"}, "urlTemplate": {"type": "string"}}},
                "token": {"type": "string"}, "tokenExpiresAt": {"type": "string"},
                "exposedPorts": {"type": "array",
                                 "items": {"$ref": "#/components/schemas/ExposedPort"}},
                "network": {"type": "object"}}},
            "SandboxList": {"type": "object", "properties": {
                "sandboxes": {"type": "array", "items": _SANDBOX},
                "totalCount": {"type": "integer"}, "page": {"type": "integer"},
                "perPage": {"type": "integer"}}},
            "ExecRequest": {"type": "object", "required": ["command"], "properties": {
                "command": {"type": "string"}, "cwd": {"type": "string"},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "timeoutMs": {"type": "integer", "minimum": 1}}},
            "ExecResult": {"type": "object", "properties": {"result": {"type": "object",
                "properties": {"stdout": {"type": "string"}, "stderr": {"type": "string"},
                               "exitCode": {"type": "integer"}}}}},
        },
    },
    "security": [{"apiKey": []}],
    "paths": {
        "/api/sandbox": {"post": _op(
            "Create a sandbox", _SANDBOX,
            body={"$ref": "#/components/schemas/CreateSandbox"})},
        "/api/sandbox/{id}": {"get": _op("Get a sandbox", _SANDBOX,
                                         params=[_path_param("id")])},
        "/api/sandbox/{id}/stop": {"put": _op("Stop a sandbox (idempotent)", _SANDBOX,
                                              params=[_path_param("id")])},
        "/api/sandbox/{id}/pause": {"post": _op(
            "Freeze the sandbox's processes (idempotent); its URLs answer 503", _SANDBOX,
            params=[_path_param("id")])},
        "/api/sandbox/{id}/timeout": {"post": _op(
            "A new deadline, timeoutMinutes from now", _SANDBOX,
            body={"type": "object", "required": ["timeoutMinutes"], "properties": {
                "timeoutMinutes": {"type": "integer", "minimum": 1}}},
            params=[_path_param("id")])},
        "/api/sandbox/{id}/resume": {"post": _op(
            "Thaw a paused sandbox (idempotent)", _SANDBOX, params=[_path_param("id")])},
        "/api/sandbox/{id}/network": {m: _op(
            "Change the network policy of a running sandbox (fields given replace the "
            "current ones; egress is packet filtering in its namespace)",
            {"type": "object", "properties": {"network": {"type": "object"}}},
            body={"type": "object", "properties": {
                "allowInternetAccess": {"type": "boolean"},
                "allowOut": {"type": "array", "items": {"type": "string"}},
                "denyOut": {"type": "array", "items": {"type": "string"}}}},
            params=[_path_param("id")]) for m in ("put", "post")},
        "/api/sandbox/{id}/network/log": {"get": _op(
            "The sandbox's last 100 refused lookups and connections, oldest first",
            {"type": "object", "properties": {"entries": {"type": "array", "items": {
                "type": "object", "properties": {
                    "at": {"type": "string"}, "kind": {"enum": ["lookup", "connection"]},
                    "name": {"type": ["string", "null"]},
                    "address": {"type": ["string", "null"]},
                    "port": {"type": ["integer", "null"]}, "rule": {"type": "string"}}}}}},
            params=[_path_param("id")])},
        "/api/sandbox/{id}/suspend": {"post": _op(
            "Suspend to disk (checkpoint/restore); 501 with the reason where the host "
            "cannot", _SANDBOX, params=[_path_param("id")])},
        "/api/sandbox/{id}/snapshot": {"post": _op(
            "An image of the sandbox's files as they are now (its changes a layer over its "
            "image); it goes on running, frozen only for the copy",
            {"type": "object", "properties": {"snapshotName": {"type": "string"},
                                              "snapshotId": {"type": "string"},
                                              "image": {"type": "object"}}},
            body={"type": "object", "properties": {"name": {"type": "string"},
                                                   "snapshotName": {"type": "string"}}},
            params=[_path_param("id")])},
        "/api/snapshots": {"get": _op(
            "The team's snapshots, newest first (?imageName=&search=&page=&limit=)",
            {"type": "object", "properties": {"snapshots": {"type": "array"}}})},
        "/api/snapshots/{key}": {
            "get": _op("One snapshot, by name or id", {"type": "object"},
                       params=[_path_param("key")]),
            "delete": _op("Delete a snapshot (its image)", {"type": "object"},
                          params=[_path_param("key")])},
        "/api/sandbox/{id}/refresh": {"post": _op(
            "A new runtime token; earlier ones work until their own expiry", _SANDBOX,
            params=[_path_param("id")])},
        "/api/sandbox/{id}/connect": {"post": _op(
            "Resume if paused, and a new runtime token", _SANDBOX,
            params=[_path_param("id")])},
        "/api/sandbox/{id}/revoke": {"post": _op(
            "End one runtime token ({token}) or all of them ({}); a new current one is issued",
            _SANDBOX, body={"type": "object", "properties": {"token": {"type": "string"}}},
            params=[_path_param("id")])},
        "/api/sandbox/{id}/expose": {"post": _op(
            "Give a port a public URL (idempotent; auth may change)",
            {"$ref": "#/components/schemas/ExposedPort"}, body=_EXPOSE,
            params=[_path_param("id")])},
        "/api/sandbox/{id}/unexpose": {"post": _op(
            "Close a port's public URL", {"type": "object", "properties": {
                "port": {"type": "integer"}, "exposed": {"type": "boolean"}}},
            body={"type": "object", "required": ["port"],
                  "properties": {"port": {"type": "integer"}}},
            params=[_path_param("id")])},
        "/api/sandboxes": {"get": _op(
            "List sandboxes", {"$ref": "#/components/schemas/SandboxList"},
            params=[_query("status", {"type": "string", "enum": ["active", "closed", "error"]}),
                    _query("page", {"type": "integer", "minimum": 1}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100})])},
        "/api/images": {"get": _op("List the images the caller's team can use",
                                   {"type": "object"})},
        "/api/images/pull": {"post": _op(
            "Pull an image (NDJSON progress, last line {image} or an error)",
            {"type": "object"}, body=_REF)},
        "/api/images/{name}": {
            "get": _op("One image", {"type": "object"}, params=[_path_param("name")]),
            "delete": _op("Forget an image (sandboxes made from it keep running)",
                          {"type": "object"}, params=[_path_param("name")])},
        "/api/images/{name}/import": {"post": {
            **_op("Import a docker save or OCI-layout tar (the body)", {"type": "object"},
                  params=[_path_param("name")]),
            "requestBody": {"required": True, "content": {
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}}},
        "/api/images/{name}/push": {"post": _op(
            "Push an image to a registry (NDJSON progress, last line {pushed, image})",
            {"type": "object"}, body=_REF, params=[_path_param("name")])},
        "/api/images/{name}/build": {"post": _op(
            "Rebuild a built-in image (NDJSON progress)", {"type": "object"},
            params=[_path_param("name")])},
        "/sandbox/exec": {"servers": [_RUNTIME_SERVER], "post": {
            **_op("Run a shell command in the sandbox (runtime token as Bearer; served on "
                  "the sandbox's runtime host, not under /api)",
                  {"$ref": "#/components/schemas/ExecResult"},
                  body={"$ref": "#/components/schemas/ExecRequest"}),
            "security": [{"runtimeToken": []}]}},
    },
}
OPENAPI["components"]["securitySchemes"]["runtimeToken"] = {"type": "http", "scheme": "bearer"}


def _runtime_op(summary: str, *, body: bool, params: list[str]) -> dict[str, Any]:
    op = _op(summary + " (runtime host; Bearer runtime token)", {"type": "object"},
             body={"type": "object"} if body else None,
             params=[_path_param(p) for p in params])
    return {**op, "security": [{"runtimeToken": []}]}


# The rest of the runtime API (shapes: README, "Processes, files and terminals").
_RUNTIME_ROUTES = [
    ("/sandbox/processes", "post", "Start a process (SSE with Accept: text/event-stream)"),
    ("/sandbox/processes", "get", "List processes"),
    ("/sandbox/processes/{processId}", "get", "Get a process"),
    ("/sandbox/processes/{processId}", "delete", "Kill a process (SIGKILL)"),
    ("/sandbox/processes/{processId}/wait", "post", "Wait for a process (408 if running)"),
    ("/sandbox/processes/{processId}/stream", "get", "A process's output as SSE"),
    ("/sandbox/processes/{processId}/stdin", "post", "Write or close a process's stdin"),
    ("/sandbox/processes/{processId}/signal", "post", "Signal a process's group"),
    ("/sandbox/files", "get", "List a directory (?path=&depth=)"),
    ("/sandbox/files/stat", "get", "Describe a path (?path=)"),
    ("/sandbox/files/read", "post", "Read a file (JSON)"),
    ("/sandbox/files/write", "post", "Write files (JSON)"),
    ("/sandbox/files/upload", "put", "Upload raw bytes (?path=), streamed"),
    ("/sandbox/files/download", "get", "Download raw bytes (?path=), streamed"),
    ("/sandbox/files/mkdir", "post", "Make a directory"),
    ("/sandbox/files/move", "post", "Move or rename"),
    ("/sandbox/files/copy", "post", "Copy"),
    ("/sandbox/files/delete", "post", "Delete"),
    ("/sandbox/files/chmod", "post", "Change mode"),
    ("/sandbox/files/chown", "post", "Change owner"),
    ("/sandbox/files/watch", "post", "Watch a directory"),
    ("/sandbox/files/watch/{watchId}", "get", "Get a watch"),
    ("/sandbox/files/watch/{watchId}", "delete", "Stop a watch"),
    ("/sandbox/pty", "post", "Start a terminal"),
    ("/sandbox/pty/{ptyId}", "get", "Get a terminal"),
    ("/sandbox/pty/{ptyId}/wait", "post", "Wait for a terminal's program"),
    ("/sandbox/pty/{ptyId}/kill", "post", "Signal a terminal's program"),
    ("/sandbox/pty/{ptyId}/resize", "post", "Resize a terminal"),
]
for _path, _method, _summary in _RUNTIME_ROUTES:
    _entry = OPENAPI["paths"].setdefault(_path, {"servers": [_RUNTIME_SERVER]})
    _entry[_method] = _runtime_op(
        _summary, body=_method in ("post", "put") and not _path.endswith("upload"),
        params=[p.strip("{}") for p in _path.split("/") if p.startswith("{")])
