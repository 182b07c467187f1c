"""The runtime API's live state on this server: processes, terminals and watches.

None of it is stored: it is the state of things running now. When a sandbox stops, its
sessions end (``sandbox_gone``, told by the route table).
"""

from __future__ import annotations

from .process_state import ProcessRegistry
from .watches import WatchRegistry


class RuntimeSessions:
    def __init__(self) -> None:
        self.watches = WatchRegistry()
        self.processes = ProcessRegistry()  # processes and terminals

    def sandbox_gone(self, sandbox_id: str, port: int | None = None) -> None:
        if port is None:
            self.watches.sandbox_gone(sandbox_id)
            self.processes.sandbox_gone(sandbox_id)
