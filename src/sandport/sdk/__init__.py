"""The Python SDK: ``Sandbox`` (blocking) and ``AsyncSandbox`` (asyncio), same surface;
``Images`` and ``AsyncImages`` for the server's images."""

from ._async import AsyncSandbox
from ._async_images import AsyncImages
from ._sync import Sandbox
from ._sync_images import Images

__all__ = ["AsyncImages", "AsyncSandbox", "Images", "Sandbox"]
