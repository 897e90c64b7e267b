"""Progress of a long job (a rebuild, a resync): a bar on a TTY, structured events otherwise."""

from __future__ import annotations

import time
from typing import TextIO

from indexsync.logs import get_logger

log = get_logger(__name__)

# How often a job without a TTY logs its progress.
_PROGRESS_EVERY = 5.0


class Progress:
    """A progress bar on a TTY, periodic structured events otherwise."""

    def __init__(
        self,
        alias: str,
        total: int | None,
        done: int,
        stream: TextIO,
        *,
        event: str = "reindex.progress",
        unit: str = "rows",
    ) -> None:
        self.alias = alias
        self.event = event
        self.unit = unit
        self.total = total
        self.done = done
        self.start_done = done
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def advance(self, rows: int) -> None:
        """Count rows written and report if it is time."""
        self.done += rows
        now = time.monotonic()
        if self.tty and now - self.last >= 0.2:
            self.last = now
            self.stream.write("\r" + self._line())
            self.stream.flush()
        elif not self.tty and now - self.last >= _PROGRESS_EVERY:
            self.last = now
            self._log()

    def rate(self) -> float:
        """Rows per second since this run started."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return (self.done - self.start_done) / elapsed

    def _line(self) -> str:
        rate = self.rate()
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            eta = (self.total - self.done) / rate if rate > 0 else 0
            return (
                f"{self.alias} [{bar:<30}] {self.done}/{self.total} {self.unit} "
                f"{rate:,.0f} {self.unit}/s ETA {eta:,.0f}s "
            )
        return f"{self.alias} {self.done} {self.unit} {rate:,.0f} {self.unit}/s "

    def finish(self) -> None:
        """End the bar, or log the final count."""
        if self.tty:
            self.stream.write("\r" + self._line() + "\n")
            self.stream.flush()
        else:
            self._log()

    def _log(self) -> None:
        log.info(
            self.event,
            index=self.alias,
            **{
                f"{self.unit}_done": self.done,
                f"{self.unit}_total": self.total,
                f"{self.unit}_per_s": round(self.rate()),
            },
        )
