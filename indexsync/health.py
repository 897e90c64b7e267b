"""Readiness: both servers reachable at the last check, no index paused, and the backlog moving."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from indexsync.logs import redact
from indexsync.status import STALLED

Server = Literal["postgresql", "search"]
SERVERS: Final[tuple[Server, ...]] = ("postgresql", "search")


@dataclass(frozen=True)
class Readiness:
    """The answer of `/readyz`."""

    ready: bool
    reasons: list[str]
    backlog: int | None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"ready": self.ready, "reasons": self.reasons, "backlog": self.backlog}


class Health:
    """Readiness: both servers reachable at the last check, and the pipeline moving."""

    def __init__(
        self,
        stall_seconds: float = 60.0,
        *,
        stale_after: float | None = None,
        max_lag: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stall_seconds <= 0:
            raise ValueError("stall_seconds must be positive")
        self.stall_seconds = stall_seconds
        self.stale_after = stale_after
        # INDEXSYNC_READY_MAX_LAG: the oldest change not yet searchable may be this old.
        self.max_lag = max_lag
        self._freshness: dict[str, float] = {}
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        # Starting with a backlog is not a stall: the clock starts at construction.
        self._moved_at = now
        self._started_at = now
        self._backlog: int | None = None
        self._paused: dict[str, str] = {}
        # index -> what makes it unhealthy, by status.py's one definition.
        self._index_problems: dict[str, list[str]] = {}
        # server -> (ok, reason, when checked); absent until the first check.
        self._servers: dict[Server, tuple[bool, str, float]] = {}

    def database_ok(self, ok: bool, reason: str = "") -> None:
        """Record whether PostgreSQL answered the last check."""
        self._set("postgresql", ok, reason)

    def search_ok(self, ok: bool, reason: str = "") -> None:
        """Record whether the search server answered the last check."""
        self._set("search", ok, reason)

    def _set(self, server: Server, ok: bool, reason: str) -> None:
        with self._lock:
            self._servers[server] = (ok, reason, self._clock())

    def progress(self, backlog: int) -> None:
        """Record the total backlog; an empty or shrinking backlog counts as movement."""
        with self._lock:
            if backlog == 0 or (self._backlog is not None and backlog < self._backlog):
                self._moved_at = self._clock()
            self._backlog = backlog

    def set_paused(self, paused: Mapping[str, str]) -> None:
        """Record which indexes are paused, and why."""
        with self._lock:
            self._paused = dict(paused)

    def set_index_problems(self, problems: Mapping[str, list[str]]) -> None:
        """Record what the shared definition of healthy finds wrong with each index."""
        with self._lock:
            self._index_problems = {k: list(v) for k, v in problems.items() if v}

    def set_freshness(self, freshness: Mapping[str, float]) -> None:
        """Record each syncing index's freshness: the age of its oldest unwritten change."""
        with self._lock:
            self._freshness = dict(freshness)

    def batch_done(self) -> None:
        """Record that a batch was acknowledged (movement even while writers outpace us)."""
        with self._lock:
            self._moved_at = self._clock()

    def readiness(self) -> Readiness:
        """Whether this worker is ready, and if not, why."""
        with self._lock:
            now = self._clock()
            reasons = []
            for server in SERVERS:
                state = self._servers.get(server)
                if state is None:
                    waited = now - self._started_at
                    reasons.append(f"{server}: not checked yet ({waited:.0f}s since start)")
                    continue
                ok, reason, checked_at = state
                if not ok:
                    reasons.append(f"{server} check failed: {reason or 'no answer'}")
                elif self.stale_after is not None and now - checked_at > self.stale_after:
                    # The checks themselves hang or died: what we know is too old to trust.
                    reasons.append(f"{server}: last successful check {now - checked_at:.0f}s ago")
            for index, why in sorted(self._paused.items()):
                if index not in self._index_problems:
                    reasons.append(f"index {index!r} paused: {why}")
            if self.max_lag is not None:
                for index, age in sorted(self._freshness.items()):
                    if age > self.max_lag:
                        reasons.append(
                            f"index {index!r}: its oldest change not yet searchable is "
                            f"{age:.0f}s old (INDEXSYNC_READY_MAX_LAG={self.max_lag:g})"
                        )
            stalled_for = now - self._moved_at
            stalled = bool(self._backlog) and stalled_for > self.stall_seconds
            for index, problems in sorted(self._index_problems.items()):
                reasons.extend(
                    f"index {index!r}: {problem}"
                    for problem in problems
                    # The pipeline's own stall below says it once, for every index.
                    if not (stalled and problem.startswith(STALLED))
                )
            if stalled:
                reasons.append(
                    f"stalled: backlog of {self._backlog} change(s) has not moved for "
                    f"{stalled_for:.0f}s (limit {self.stall_seconds:g}s)"
                )
            return Readiness(not reasons, [redact(r) for r in reasons], self._backlog)
