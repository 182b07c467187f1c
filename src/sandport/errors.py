"""The one error tree of sandport, shared by the server (rendering) and the SDK (raising).

    SandportError                      500 internal_error
    ├── BadRequest                     400 bad_request
    │   └── ValidationFailed           400 invalid_request
    ├── Unauthorized                   401 unauthorized
    ├── Forbidden                      403 forbidden
    ├── NotFound                       404 not_found
    │   ├── SandboxNotFound            404 sandbox_not_found
    │   └── ImageNotFound              404 image_not_found
    ├── Conflict                       409 conflict
    │   └── SandboxNotRunning          409 sandbox_not_running
    ├── RequestTimeout                 408 timeout
    ├── PayloadTooLarge                413 payload_too_large
    ├── ImageRejected                  422 image_rejected
    ├── StartFailed                    422 start_failed
    ├── BuildFailed                    422 build_failed
    ├── RuntimeFailure                 500 runtime_error
    ├── RegistryFailure                502 registry_error
    │   └── RegistryAuthFailed         502 registry_auth_failed
    ├── Unavailable                    503 unavailable
    │   └── InsufficientCapacity       503 insufficient_capacity
    └── TransportError                 (SDK only: the server could not be reached)

On the wire an error is ``{"error": code, "message": text}`` with the leaf's status.
Messages are written for the client: they never carry host paths or internals.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "BuildFailed",
    "Conflict",
    "Forbidden",
    "ImageNotFound",
    "ImageRejected",
    "InsufficientCapacity",
    "NotFound",
    "PayloadTooLarge",
    "RegistryAuthFailed",
    "RegistryFailure",
    "RequestTimeout",
    "RuntimeFailure",
    "SandboxNotFound",
    "SandboxNotRunning",
    "SandportError",
    "StartFailed",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "error_from_code",
    "error_from_wire",
]


class SandportError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class BadRequest(SandportError):
    status, code = 400, "bad_request"


class ValidationFailed(BadRequest):
    code = "invalid_request"


class Unauthorized(SandportError):
    status, code = 401, "unauthorized"


class Forbidden(SandportError):
    status, code = 403, "forbidden"


class NotFound(SandportError):
    status, code = 404, "not_found"


class SandboxNotFound(NotFound):
    code = "sandbox_not_found"


class ImageNotFound(NotFound):
    code = "image_not_found"


class Conflict(SandportError):
    status, code = 409, "conflict"


class SandboxNotRunning(Conflict):
    code = "sandbox_not_running"


class RequestTimeout(SandportError):
    """What was waited for did not happen in the time given (a process still running)."""

    status, code = 408, "timeout"


class PayloadTooLarge(SandportError):
    status, code = 413, "payload_too_large"


class ImageRejected(SandportError):
    """An image or archive that is refused as it is: a hostile or malformed layer, over the
    size cap, no manifest for this host's platform. The message says which and why."""

    status, code = 422, "image_rejected"


class StartFailed(SandportError):
    """A create's start command ended, or its ready check did not pass in time; the
    sandbox was stopped. The message carries the command's last output."""

    status, code = 422, "start_failed"


class BuildFailed(SandportError):
    """A Dockerfile build step failed (a RUN that exited non-zero, a build past its time
    limit); nothing was kept. The message names the step and carries its last output."""

    status, code = 422, "build_failed"


class RuntimeFailure(SandportError):
    status, code = 500, "runtime_error"


class RegistryFailure(SandportError):
    """A registry could not give what was asked: unreachable, an error answer, a blob whose
    digest or length is not what its manifest says. The message names the registry."""

    status, code = 502, "registry_error"


class RegistryAuthFailed(RegistryFailure):
    """The registry refused the credentials sandport has for it (or asked for some)."""

    code = "registry_auth_failed"


class NotSupported(SandportError):
    """What this host (or this server) cannot do; the message says why."""

    status, code = 501, "not_supported"


class Unavailable(SandportError):
    status, code = 503, "unavailable"


class InsufficientCapacity(Unavailable):
    """The host has no room for what was asked (memory, disk, processes); the message
    says what is left."""

    code = "insufficient_capacity"


class TransportError(SandportError):
    """Raised by the SDK when no HTTP answer came back (refused, reset, timed out)."""

    status, code = 0, "transport_error"


def _leaves(cls: type[SandportError]) -> list[type[SandportError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_leaves(sub))
    return found


_BY_CODE: dict[str, type[SandportError]] = {c.code: c for c in _leaves(SandportError)}
_BY_STATUS: dict[int, type[SandportError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 408: RequestTimeout,
    409: Conflict, 413: PayloadTooLarge, 422: ImageRejected, 501: NotSupported,
    503: Unavailable,
}


def error_from_wire(status: int, body: Any) -> SandportError:
    """The SDK side of the status table: an HTTP error answer becomes the matching class."""
    code = body.get("error") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None or cls.status != status:
        cls = _BY_STATUS.get(status, SandportError)
    return cls(str(message or f"HTTP {status}"))


def error_from_code(body: Any) -> SandportError:
    """An error that came with no HTTP status of its own (a line of a streamed answer,
    after the 200): the class its code names, else the root of the tree."""
    code = body.get("error") if isinstance(body, dict) else None
    cls = _BY_CODE.get(code, SandportError) if isinstance(code, str) else SandportError
    if cls is TransportError:  # the server never sends it; it means no answer came
        cls = SandportError
    message = body.get("message") if isinstance(body, dict) else None
    return cls(str(message or code or "the server reported an error"))
