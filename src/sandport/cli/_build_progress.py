"""A Dockerfile build's progress as a log: a line per step, the step's output as it comes,
a base image's pull drawn as ``image pull`` draws it.

    Step 2/7 (line 3): RUN make
    <what make prints>
    Step 3/7 (line 5): COPY . /app (cached)
    built in 12.5 s, 1 of 7 steps cached
"""

from __future__ import annotations

from typing import Any, TextIO

from ._progress import TransferDisplay


def step_line(event: dict[str, Any]) -> str:
    where = f" (line {event['line']})" if event.get("line") is not None else ""
    of = f"/{event['of']}" if event.get("of") is not None else ""
    cached = " (cached)" if event.get("cached") else ""
    return f"Step {event['step']}{of}{where}: {event.get('instruction', '')}{cached}"


def built_line(event: dict[str, Any]) -> str:
    took = f" in {event['seconds']:.1f} s" if isinstance(event.get("seconds"), int | float) \
        else ""
    cached = event.get("cachedSteps")
    steps = event.get("steps")
    of = f", {cached} of {steps} steps cached" if isinstance(cached, int) and steps else ""
    return f"built{took}{of}"


class BuildDisplay:
    """Shows a build's events on ``stream`` (``__call__`` is an on_progress)."""

    def __init__(self, stream: TextIO, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._pull: TransferDisplay | None = None
        self._mid_line = False  # the last output did not end its line

    def __call__(self, event: dict[str, Any]) -> None:
        if "step" in event and "output" in event:
            text = str(event["output"])
            if text:
                self.stream.write(text)
                self.stream.flush()
                self._mid_line = not text.endswith("\n")
        elif "step" in event:
            self._line(step_line(event))
        elif "progress" in event:  # a built-in image's build
            self._line(str(event["progress"]))
        elif event.get("status") == "building":
            pass  # the step lines count the steps
        elif event.get("status") == "built":
            self._line(built_line(event))
        elif event.get("status") == "pulling" and isinstance(event.get("image"), str):
            self._line(f"pulling the base image {event['image']}")  # its own events follow
        else:  # a base image being pulled
            self._end_output()
            if self._pull is None:
                self._pull = TransferDisplay(self.stream, self.live)
            self._pull(event)

    def _line(self, line: str) -> None:
        self._end_output()
        print(line, file=self.stream, flush=True)

    def _end_output(self) -> None:
        if self._pull is not None:
            # Done with this pull: its live view must not redraw over the lines after it.
            self._pull.finish()
            self._pull = None
        if self._mid_line:
            self.stream.write("\n")
            self._mid_line = False

    def finish(self) -> None:
        self._end_output()
