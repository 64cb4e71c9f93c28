"""A progress display for long CLI runs: a live bar on a terminal, plain lines otherwise.

On a TTY the line is redrawn in place (``\\r``) at most every `TTY_EVERY_S`; in a log or a pipe a
plain line is written every `PLAIN_EVERY_S`, so CI logs stay short and readable.
"""
from __future__ import annotations

import time
from typing import Optional, TextIO

TTY_EVERY_S = 0.1
PLAIN_EVERY_S = 1.0
WIDTH = 30


class Progress:
    def __init__(self, total: int, out: TextIO, label: str = "handled") -> None:
        self._total = total
        self._out = out
        self._label = label
        self._tty = bool(getattr(out, "isatty", lambda: False)())
        self._every = TTY_EVERY_S if self._tty else PLAIN_EVERY_S
        self._started = time.monotonic()
        self._shown_at: Optional[float] = None

    def show(self, done: int, final: bool = False) -> None:
        """Report `done` of the total, unless the last report is too recent (`final`: always)."""
        now = time.monotonic()
        if not final and self._shown_at is not None and now - self._shown_at < self._every:
            return
        self._shown_at = now
        elapsed = now - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self._total - done) / rate if rate > 0 else float("inf")
        eta = f"{left:4.1f} s left" if left != float("inf") else "      "
        if self._tty:
            filled = WIDTH * done // self._total if self._total else WIDTH
            bar = "#" * filled + "-" * (WIDTH - filled)
            self._out.write(f"\r[{bar}] {done:>9,}/{self._total:,} {self._label}  "
                            f"{rate:>9,.0f}/s  {eta if not final else ' ' * 11}")
            if final:
                self._out.write("\n")
        else:
            self._out.write(f"{self._label} {done:,}/{self._total:,} ({rate:,.0f}/s)\n")
        self._out.flush()
