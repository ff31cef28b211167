"""Progress of a compile: structured events for the Python API, lines on stderr for the CLI."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Event:
    """One step of a compile, as ``compile_model(progress=...)`` receives it."""

    stage: str  # "import", "calibrate", "plan", "encode", "offload", "build", "timing", "write"
    message: str
    elapsed: float  # seconds since the compile started
    index: int | None = None  # of a per-layer step: its position, from 1
    total: int | None = None  # of a per-layer step: how many there are
    seconds_left: float | None = None  # of a per-layer step after the first: the estimate for the rest


class Reporter:
    """Sends :class:`Event` s to ``callback`` (None: nowhere), timed from the reporter's creation."""

    def __init__(self, callback: Callable[[Event], None] | None = None):
        self.callback = callback
        self.started = time.perf_counter()
        self._series_start = 0.0  # when the first step of the current per-layer series began

    def __call__(self, stage: str, message: str, index: int | None = None, total: int | None = None) -> None:
        if self.callback is None:
            return
        elapsed = time.perf_counter() - self.started
        left = None
        if index is not None:
            if index == 1:
                self._series_start = elapsed
            elif total is not None:
                left = (elapsed - self._series_start) / (index - 1) * (total - index + 1)
        self.callback(Event(stage, message, elapsed, index, total, left))


def print_progress(event: Event, stream=None) -> None:
    """An event as a line on stderr; per-layer steps as ``[i/N]`` with the time left, which on a terminal
    overwrite each other until the last."""
    stream = stream or sys.stderr
    left = f", ~{event.seconds_left:.0f} s left" if event.seconds_left is not None else ""
    timing = f"{event.elapsed:.1f} s{left}"
    counter = f"[{event.index}/{event.total}] " if event.index is not None else ""
    line = f"[bie-compiler] {counter}{event.message} ({timing})"
    if not stream.isatty():
        print(line, file=stream, flush=True)
        return
    series_goes_on = event.index is not None and event.index != event.total
    stream.write("\r\x1b[K" + line + ("" if series_goes_on else "\n"))
    stream.flush()
