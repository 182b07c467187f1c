"""Progress of pulls, pushes and uploads on a terminal, or as plain lines in a log.

``Transfer`` folds a pull's or push's events into what has happened so far (no I/O);
``TransferDisplay`` and ``UploadDisplay`` draw it: on a terminal redrawn in place (one line
per layer, ANSI cursor moves, no dependency), elsewhere one line per change of state,
never one per chunk.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

FINISHED = ("done", "exists")
REDRAW_S = 0.1  # a terminal is redrawn at most this often while only bytes move
UPLOAD_STEPS = 4  # plain output: a line each quarter of an upload


def format_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def short_digest(digest: str) -> str:
    """``sha256:0123456789abcdef…`` → ``0123456789ab``, as docker shows layers."""
    return digest.partition(":")[2][:12] or digest[:12]


def bar(done: int, total: int | None, width: int) -> str:
    if width <= 2:
        return ""
    inner = width - 2
    if not total:
        return "[" + " " * inner + "]"
    filled = min(inner, inner * done // total)
    head = ">" if 0 < filled < inner else ""
    return "[" + "=" * (filled - len(head)) + head + " " * (inner - filled) + "]"


@dataclass
class Layer:
    digest: str
    status: str
    done: int = 0
    total: int | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class Transfer:
    """A pull or push as its events tell it; ``update`` returns a line worth printing when
    something changed state (the phase, a layer's status) and None when only bytes moved."""

    def __init__(self) -> None:
        self.ref: str | None = None
        self.digest: str | None = None
        self.phase = ""
        self.expected_layers: int | None = None
        self.total_bytes: int | None = None
        self.layers: dict[str, Layer] = {}

    def update(self, event: dict[str, Any]) -> str | None:
        if "layer" in event:
            return self._layer(event)
        status = str(event.get("status", ""))
        self.ref = str(event.get("ref") or self.ref or "") or None
        self.digest = event.get("digest") or self.digest
        if isinstance(event.get("layers"), int):
            self.expected_layers = event["layers"]
        if isinstance(event.get("totalBytes"), int):
            self.total_bytes = event["totalBytes"]
        if not status or status == self.phase:
            return None
        self.phase = status
        return self.headline()

    def _layer(self, event: dict[str, Any]) -> str | None:
        digest, status = str(event["layer"]), str(event.get("status", ""))
        layer = self.layers.get(digest)
        if layer is None:
            layer = self.layers[digest] = Layer(digest, "")
        if isinstance(event.get("total"), int):
            layer.total = event["total"]
        if isinstance(event.get("done"), int):
            layer.done = event["done"]
        if status == layer.status:
            return None
        layer.status = status
        size = f" ({format_bytes(layer.total)})" if layer.total is not None else ""
        return f"{short_digest(digest)}: {status}{size}"

    def headline(self) -> str:
        parts = [self.phase, self.ref or ""]
        details = []
        if self.digest:
            details.append(short_digest(self.digest))
        if self.expected_layers is not None:
            details.append(f"{self.expected_layers} layers")
        if self.total_bytes is not None:
            details.append(format_bytes(self.total_bytes))
        line = " ".join(p for p in parts if p)
        return f"{line} ({', '.join(details)})" if details else line

    @property
    def done_bytes(self) -> int:
        return sum((layer.total or layer.done) if layer.finished else layer.done
                   for layer in self.layers.values())

    @property
    def known_bytes(self) -> int | None:
        """The whole transfer's size: the pull's announcement, else the layers' sum."""
        if self.total_bytes is not None:
            return self.total_bytes
        totals = [layer.total for layer in self.layers.values()]
        return sum(t for t in totals if t is not None) if totals else None

    @property
    def finished_layers(self) -> int:
        return sum(layer.finished for layer in self.layers.values())

    def lines(self, width: int) -> list[str]:
        """The live view: the headline, one line per layer, an overall line; each fits
        ``width`` (a wrapped line would break the redraw's cursor moves)."""
        out = [self.headline()]
        for layer in self.layers.values():
            amount = f"{format_bytes(layer.done)}/{format_bytes(layer.total)}"
            if layer.finished:
                amount = format_bytes(layer.total or layer.done)
            text = f"  {short_digest(layer.digest)}  {layer.status:<11} "
            room = width - len(text) - len(amount) - 2
            out.append(text + (bar(layer.done, layer.total, min(room, 30)) + " "
                               if room >= 10 else "") + amount)
        # A push announces its layers but reports its config blob too: count what came.
        count = max(self.expected_layers or 0, len(self.layers))
        total = self.known_bytes
        out.append(f"  {self.finished_layers}/{count} layers, {format_bytes(self.done_bytes)}"
                   f" of {format_bytes(total)}")
        return [line[:max(1, width - 1)] for line in out]


class TransferDisplay:
    """Shows a Transfer on ``stream`` as events arrive (``__call__`` is an on_progress)."""

    def __init__(self, stream: TextIO, live: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.live = live
        self.transfer = Transfer()
        self._clock = clock
        self._drawn = 0  # lines of the last live drawing, to move back over
        self._last_draw = float("-inf")

    def __call__(self, event: dict[str, Any]) -> None:
        changed = self.transfer.update(event)
        if not self.live:
            if changed is not None:
                print(changed, file=self.stream, flush=True)
            return
        now = self._clock()
        if changed is not None or now - self._last_draw >= REDRAW_S:
            self._draw()
            self._last_draw = now

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        lines = self.transfer.lines(width)
        # Back to the first line drawn, then each line cleared and written anew.
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    def finish(self) -> None:
        """The final state, drawn once more (a live view may lag by up to REDRAW_S)."""
        if self.live and self._drawn:
            self._draw()


class UploadDisplay:
    """An upload's bytes sent (``__call__`` is an on_progress(sent, total))."""

    def __init__(self, stream: TextIO, live: bool, label: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.live = live
        self.label = label
        self._clock = clock
        self._last_draw = float("-inf")
        self._step = -1
        self.sent = 0
        self.total: int | None = None

    def __call__(self, sent: int, total: int | None) -> None:
        self.sent, self.total = sent, total
        if self.live:
            now = self._clock()
            if now - self._last_draw >= REDRAW_S or sent == total:
                self._last_draw = now
                self.stream.write("\r\x1b[2K" + self.line(shutil.get_terminal_size().columns))
                self.stream.flush()
            return
        step = sent * UPLOAD_STEPS // total if total else 0
        if step != self._step:
            self._step = step
            print(self.line(200), file=self.stream, flush=True)

    def line(self, width: int) -> str:
        amount = f"{format_bytes(self.sent)} of {format_bytes(self.total)}"
        if self.total:
            amount += f" ({100 * self.sent // self.total}%)"
        room = width - len(self.label) - len(amount) - 3
        shown = f"{self.label} {bar(self.sent, self.total, min(room, 40))} {amount}" \
            if room >= 10 else f"{self.label} {amount}"
        return shown[:max(1, width - 1)]

    def finish(self, then: str) -> None:
        """End the upload's line; ``then`` says what the server does next."""
        if self.live and self._last_draw != float("-inf"):
            self.stream.write("\n")
        print(then, file=self.stream, flush=True)
