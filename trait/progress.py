"""Progress of long single-process work as log lines: count, share, rate and time left.

A tqdm bar draws only on a terminal (``disable=None``), so a Slurm job's log or a pipeline's captured output would
show nothing for minutes; these lines reach every log. At most one line per ``interval_s`` seconds.
"""

from __future__ import annotations

import logging
import time


class ProgressLog:
    """``update(n)`` after each piece of work; a line such as ``embeddings: 2,048/14,971 texts (14%), 98.3 texts/s,
    21 s elapsed, ~131 s left`` is logged when ``interval_s`` has passed since the last (0: every update), and
    ``finish()`` logs the last one if any was logged before (a short job stays quiet)."""

    def __init__(self, logger: logging.Logger, what: str, total: int, unit: str, interval_s: float = 30.0):
        self.logger, self.what, self.total, self.unit, self.interval_s = logger, what, total, unit, interval_s
        self.done = 0
        self.started = self.last = time.monotonic()
        self.lines = 0
        self.logged_at = 0  # self.done at the last line

    def line(self, extra: str = "") -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = f", ~{(self.total - self.done) / rate:.0f} s left" if rate and self.done < self.total else ""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return (f"{self.what}: {self.done:,}/{self.total:,} {self.unit}{share}, {rate:,.2f} {self.unit}/s, "
                f"{elapsed:.0f} s elapsed{left}{extra}")

    def update(self, n: int, extra: str = "") -> None:
        """Count ``n`` more units done; ``extra`` is appended to the line (e.g. "; 10 valid so far")."""
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self.lines += 1
            self.logged_at = self.done
            self.logger.info(self.line(extra))

    def finish(self, extra: str = "") -> None:
        if self.lines and self.logged_at != self.done:
            self.logger.info(self.line(extra))
