"""sandport: self-hosted sandboxes with public URLs.

    from sandport import Sandbox

    with Sandbox.create(image="python", timeout_minutes=10) as sb:
        print(sb.exec("python3 -c 'print(6*7)'").stdout)
"""

from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    ImageNotFound,
    NotFound,
    PayloadTooLarge,
    RuntimeFailure,
    SandboxNotFound,
    SandboxNotRunning,
    SandportError,
    TransportError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from .models import ExecResult, ExposedPort, ImageInfo, SandboxInfo, SandboxPage
from .sdk import AsyncSandbox, Sandbox

__version__ = "0.1.0"

__all__ = [
    "AsyncSandbox",
    "BadRequest",
    "Conflict",
    "ExecResult",
    "ExposedPort",
    "Forbidden",
    "ImageInfo",
    "ImageNotFound",
    "NotFound",
    "PayloadTooLarge",
    "RuntimeFailure",
    "Sandbox",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxNotRunning",
    "SandboxPage",
    "SandportError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
]
