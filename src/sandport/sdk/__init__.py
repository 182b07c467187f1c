"""The Python SDK: ``Sandbox`` (blocking) and ``AsyncSandbox`` (asyncio), same surface."""

from ._async import AsyncSandbox
from ._sync import Sandbox

__all__ = ["AsyncSandbox", "Sandbox"]
