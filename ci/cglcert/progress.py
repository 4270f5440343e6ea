"""Progress of a long command: one status line on a terminal, plain lines otherwise.

``Progress(total)`` numbers the steps: ``step("building modules")`` starts one,
``note("...")`` adds a detail (shown as the live status on a terminal, as a line
otherwise), ``done()``/``fail()`` closes the step with its time. With
``quiet=True`` (``--json``) nothing is printed: machines read the final JSON.
Everything goes to *stream* (stderr by default), so stdout stays for results.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Step-numbered progress on *stream*; a live line when it is a terminal."""

    def __init__(self, total: int, *, stream: TextIO | None = None, quiet: bool = False,
                 tty: bool | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty() if tty is None else tty
        self.index = 0
        self.title = ""
        self.started = time.monotonic()
        self._live = False
        self.steps: list[dict[str, object]] = []

    def _write(self, text: str) -> None:
        if self.quiet:
            return
        self.stream.write(text)
        self.stream.flush()

    def _clear(self) -> None:
        if self._live:
            self._write("\r\033[K")
            self._live = False

    def step(self, title: str) -> None:
        """Start the next step."""
        self.index += 1
        self.title = title
        self.started = time.monotonic()
        self._clear()
        self._write(f"[{self.index}/{self.total}] {title}" + ("" if self.tty else "\n"))
        self._live = self.tty

    def note(self, text: str) -> None:
        """A detail of the current step."""
        if self.tty:
            self._clear()
            self._write(f"[{self.index}/{self.total}] {self.title}: {text}")
            self._live = True
        else:
            self._write(f"      {text}\n")

    def _close(self, status: str, detail: str) -> None:
        took = time.monotonic() - self.started
        self.steps.append({"step": self.title, "status": status, "seconds": round(took, 1),
                           "detail": detail})
        self._clear()
        line = f"[{self.index}/{self.total}] {self.title}: {status} ({took:.0f} s)"
        self._write(line + (f": {detail}" if detail else "") + "\n")

    def done(self, detail: str = "") -> None:
        """The current step succeeded."""
        self._close("ok", detail)

    def fail(self, detail: str) -> None:
        """The current step failed (the run may go on: the reason is kept)."""
        self._close("failed", detail)

    def line(self, text: str) -> None:
        """A line outside the steps (the verdict, file names)."""
        self._clear()
        self._write(text + "\n")
