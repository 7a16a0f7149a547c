"""Training progress on the terminal: a bar with the losses and the time left when stderr is a terminal, else one
line per epoch (logs and CI stay readable). Never reads from the terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24
REDRAW_SECONDS = 0.1


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class Progress:
    """Reports epochs and steps. `mode`: "bar", "lines", "none", or "auto" (a bar on a terminal, else lines)."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, warnings: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.warnings = warnings
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self.epochs = self.steps = 0
        self.start = self.last_draw = 0.0
        self.line = ""

    def begin(self, what: str, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps = epochs, max(1, steps_per_epoch)
        self.start = time.perf_counter()
        self.note(what)

    def note(self, text: str) -> None:
        """A line of its own (the bar, if any, is redrawn below it)."""
        if self.mode == "none":
            return
        self._clear()
        print(text, file=self.stream, flush=True)

    def warn(self, text: str) -> None:
        """A warning: printed whatever the mode (except on the other ranks of a multi-process run)."""
        if self.mode == "none" and not self.warnings:
            return
        self._clear()
        print(f"warning: {text}", file=self.stream, flush=True)

    def _left(self, done_steps: int) -> str:
        elapsed = time.perf_counter() - self.start
        total = self.epochs * self.steps
        if done_steps <= 0:
            return duration(elapsed)
        left = elapsed / done_steps * (total - done_steps)
        return f"{duration(elapsed)}, <= {duration(left)} left"

    def step(self, epoch: int, step: int, loss: float, status: str) -> None:
        """After each batch: redraws the bar (at most every 0.1 s)."""
        if self.mode != "bar":
            return
        now = time.perf_counter()
        if now - self.last_draw < REDRAW_SECONDS:
            return
        self.last_draw = now
        done = epoch * self.steps + step + 1
        filled = round(BAR_WIDTH * done / (self.epochs * self.steps))
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        self.line = (
            f"epoch {epoch + 1}/{self.epochs} [{bar}] loss {loss:.4g} {status} | {self._left(done)} "
            "(early stopping may end sooner)"
        )
        self.stream.write("\r" + self.line + "\x1b[K")
        self.stream.flush()

    def epoch(self, epoch: int, train_loss: float, val_loss: float, status: str) -> None:
        """After each epoch: one line in "lines" mode."""
        if self.mode != "lines":
            return
        done = (epoch + 1) * self.steps
        print(
            f"epoch {epoch + 1}/{self.epochs}  train {train_loss:.4g}  val {val_loss:.4g}  {status}  "
            f"{self._left(done)}",
            file=self.stream,
            flush=True,
        )

    def _clear(self) -> None:
        if self.mode == "bar" and self.line:
            self.stream.write("\r\x1b[K")
            self.line = ""

    def end(self, text: str) -> None:
        self.note(text)
