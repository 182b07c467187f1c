"""The runtime API's live state on this server: processes, terminals and watches.

None of it is stored: it is the state of things running now. When a sandbox stops, its
sessions end (``sandbox_gone``, told by the route table).
"""

from __future__ import annotations

from .buffers import BufferBudget, budget_bytes
from .process_state import ProcessRegistry
from .watches import WatchRegistry


class RuntimeSessions:
    def __init__(self, buffer_limit: int | None = None) -> None:
        self.watches = WatchRegistry()
        # Processes and terminals; their kept output is bounded server-wide.
        self.processes = ProcessRegistry(BufferBudget(buffer_limit))

    @classmethod
    def for_server(cls, configured_mib: int | None, mem_total_mib: int) -> RuntimeSessions:
        return cls(budget_bytes(configured_mib, mem_total_mib))

    def sandbox_gone(self, sandbox_id: str, port: int | None = None) -> None:
        if port is None:
            self.watches.sandbox_gone(sandbox_id)
            self.processes.sandbox_gone(sandbox_id)
