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
    ImageRejected,
    NotFound,
    PayloadTooLarge,
    RegistryAuthFailed,
    RegistryFailure,
    RuntimeFailure,
    SandboxNotFound,
    SandboxNotRunning,
    SandportError,
    TransportError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from .models import ExecResult, ExposedPort, ImageInfo, PushResult, SandboxInfo, SandboxPage
from .sdk import AsyncImages, AsyncSandbox, Images, Sandbox

__version__ = "0.1.0"

__all__ = [
    "AsyncImages",
    "AsyncSandbox",
    "BadRequest",
    "Conflict",
    "ExecResult",
    "ExposedPort",
    "Forbidden",
    "ImageInfo",
    "ImageNotFound",
    "ImageRejected",
    "Images",
    "NotFound",
    "PayloadTooLarge",
    "PushResult",
    "RegistryAuthFailed",
    "RegistryFailure",
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
