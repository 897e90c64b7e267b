"""Prometheus metrics: every series indexsync exports, in a registry of its own.

Nothing here is global: a `Metrics` owns its `CollectorRegistry`, so a process (or a test)
can hold several. The worker reports batches and reconnects; the status poller sets the
backlog, lag, dead-letter, paused and rebuild gauges from the database.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from indexsync import __version__
from indexsync.health import SERVERS, Server
from indexsync.status import IndexStatus

# The `type` label of indexsync_bulk_item_errors_total. A closed set keeps the number of
# series bounded whatever the server answers; anything else is counted as "other".
VERSION_CONFLICT: Final = "version_conflict"  # 409: a newer version is already there (harmless)
RETRY_429: Final = "retry_429"  # rejected for load, retried
RETRY_5XX: Final = "retry_5xx"  # server error, retried
DEAD_LETTER: Final = "dead_letter"  # refused for good, recorded in indexsync.dead_letters
REQUEUED: Final = "requeued"  # still refused after the retries, put back in the outbox
BLOCKED: Final = "blocked"  # the index refuses writes (a block, a revoked privilege): paused
OTHER: Final = "other"
ERROR_TYPES: Final[tuple[str, ...]] = (
    VERSION_CONFLICT,
    RETRY_429,
    RETRY_5XX,
    DEAD_LETTER,
    REQUEUED,
    BLOCKED,
    OTHER,
)

# One batch takes from about a millisecond (a few small documents) to tens of seconds (a
# full batch against a struggling cluster, retries included).
BATCH_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

# Commit to searchable: the refresh interval (1 s by default) dominates without waiters,
# tens of milliseconds with them; a backlog stretches it to minutes.
FRESHNESS_BUCKETS: Final[tuple[float, ...]] = (
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip


def error_type(status: int) -> str:
    """The `type` label for a bulk item refused with this HTTP status."""
    if status == 409:
        return VERSION_CONFLICT
    if status == 429:
        return RETRY_429
    if status >= 500:
        return RETRY_5XX
    if 400 <= status < 500:
        return DEAD_LETTER
    return OTHER


@dataclass
class BatchCounts:
    """What one batch did for one index (live writes only, not a rebuild's second copy)."""

    changes: int = 0
    indexed: int = 0
    deleted: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def add_error(self, kind: str, count: int = 1) -> None:
        """Count `count` bulk items of this error type."""
        self.errors[kind] = self.errors.get(kind, 0) + count


class _FreshnessHistogram(Collector):
    """`indexsync_commit_to_searchable_seconds{index}`: observed once per change, so it is
    counted here in plain lists (a bisect and an increment per change), a fraction of what
    prometheus_client's Histogram costs per observation on the worker's hot path."""

    NAME = "indexsync_commit_to_searchable_seconds"
    HELP = (
        "Seconds from a change's transaction (the outbox row's created_at: the start of the "
        "transaction that recorded it, an upper bound of its commit) to its document being "
        "searchable, bounded from above: written, plus the index's refresh interval, or the "
        "waiters' refresh interval while indexsync refreshes it for waiters."
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # index -> (a count per bucket, the last one for +Inf; the sum)
        self._series: dict[str, tuple[list[int], list[float]]] = {}

    def observe_all(self, index: str, values: Iterable[float]) -> None:
        """Count many observations of one index at once."""
        with self._lock:
            counts, total = self._series.setdefault(
                index, ([0] * (len(FRESHNESS_BUCKETS) + 1), [0.0])
            )
            for value in values:
                counts[bisect.bisect_left(FRESHNESS_BUCKETS, value)] += 1
                total[0] += value

    def describe(self) -> Iterable[Metric]:
        """The family, even before any observation."""
        return [HistogramMetricFamily(self.NAME, self.HELP, labels=["index"])]

    def collect(self) -> Iterable[Metric]:
        """The cumulative buckets of every index."""
        family = HistogramMetricFamily(self.NAME, self.HELP, labels=["index"])
        with self._lock:
            series = {k: (list(c), t[0]) for k, (c, t) in self._series.items()}
        for index, (counts, total) in sorted(series.items()):
            running = 0
            buckets = []
            for bound, count in zip((*FRESHNESS_BUCKETS, float("inf")), counts, strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), running))
            family.add_metric([index], buckets, sum_value=total)
        return [family]


class Metrics:
    """Every indexsync metric, in a registry of its own."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        indexes: Iterable[str] = (),
        process_metrics: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._lock = threading.Lock()
        r = self.registry
        if process_metrics:
            # process_* (CPU, memory, open fds) and python_info, scoped to this registry.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        Info("indexsync_build", "The running indexsync.", registry=r).info({"version": __version__})
        self.backlog = Gauge(
            "indexsync_backlog", "Changes waiting in the outbox.", ["index"], registry=r
        )
        self.lag = Gauge(
            "indexsync_lag_seconds",
            "Age of the oldest change waiting in the outbox (0 when none waits).",
            ["index"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "indexsync_dead_letters",
            "Documents refused for good (or unbuildable), waiting in indexsync.dead_letters.",
            ["index"],
            registry=r,
        )
        self.changes = Counter(
            "indexsync_changes",
            "Outbox rows claimed and acknowledged by this process.",
            ["index"],
            registry=r,
        )
        self.indexed = Counter(
            "indexsync_documents_indexed",
            "Documents written (or refused as stale with a 409) by this process.",
            ["index"],
            registry=r,
        )
        self.deleted = Counter(
            "indexsync_documents_deleted",
            "Documents deleted by this process.",
            ["index"],
            registry=r,
        )
        self.item_errors = Counter(
            "indexsync_bulk_item_errors",
            "Bulk items not simply accepted, by type: version_conflict (harmless), retry_429, "
            "retry_5xx, dead_letter, requeued, blocked, other.",
            ["index", "type"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "indexsync_batch_duration_seconds",
            "Wall time of one batch: claim, re-read, bulk write, acknowledge.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.commit_to_searchable = _FreshnessHistogram()
        r.register(self.commit_to_searchable)
        self.reconnects = Counter(
            "indexsync_reconnects",
            "Times the worker lost a server and backed off before retrying.",
            ["server"],
            registry=r,
        )
        self.server_up = Gauge(
            "indexsync_server_up",
            "1 when the last health check reached the server, else 0.",
            ["server"],
            registry=r,
        )
        self.rebuild_done = Gauge(
            "indexsync_reindex_rows_done",
            "Rows written by the rebuild in progress (absent when none runs).",
            ["index"],
            registry=r,
        )
        self.rebuild_total = Gauge(
            "indexsync_reindex_rows_total",
            "Rows the rebuild in progress expects to write (absent when none runs).",
            ["index"],
            registry=r,
        )
        self.last_success = Gauge(
            "indexsync_last_success_timestamp_seconds",
            "Unix time when a batch of this index last landed, or its backlog was last seen empty.",
            ["index"],
            registry=r,
        )
        self.refresh_queued = Gauge(
            "indexsync_refresh_queued",
            "Documents re-queued so far by the refresh after a schema change (absent when none "
            "runs).",
            ["index"],
            registry=r,
        )
        self.paused = Gauge(
            "indexsync_binding_paused",
            "1 while the index is paused because its binding's SQL fails, else 0.",
            ["index"],
            registry=r,
        )
        self.operator_paused = Gauge(
            "indexsync_paused_by_operator",
            "1 while an operator has paused the index (`indexsync pause`): its changes wait "
            "on purpose, which is no failure; else 0.",
            ["index"],
            registry=r,
        )
        # Label values the status gauges were set for, so that an index that disappears
        # (binding removed, rebuild finished) loses its series instead of freezing them.
        self._status_indexes: set[str] = set()
        self._rebuilding: set[str] = set()
        for server in SERVERS:
            self.reconnects.labels(server)
        for index in indexes:
            self.add_index(index)

    def add_index(self, index: str) -> None:
        """Create the index's counters at zero, so that rate() sees their first increase."""
        self.changes.labels(index)
        self.indexed.labels(index)
        self.deleted.labels(index)
        for kind in ERROR_TYPES:
            self.item_errors.labels(index, kind)

    def batch_done(self, seconds: float, by_index: Mapping[str, BatchCounts]) -> None:
        """Record one acknowledged batch (its duration, and what it did per index)."""
        self.batch_seconds.observe(seconds)
        now = self._clock()
        for index, counts in by_index.items():
            if counts.changes:
                self.changes.labels(index).inc(counts.changes)
            if counts.indexed:
                self.indexed.labels(index).inc(counts.indexed)
            if counts.deleted:
                self.deleted.labels(index).inc(counts.deleted)
            for kind, count in counts.errors.items():
                self.count_errors(index, kind, count)
            self.last_success.labels(index).set(now)

    def observe_freshness(self, index: str, seconds: Iterable[float]) -> None:
        """Record how long after their commit changes of one index became searchable."""
        self.commit_to_searchable.observe_all(index, seconds)

    def count_errors(self, index: str, kind: str, count: int = 1) -> None:
        """Count bulk items of one error type (unknown types are counted as `other`)."""
        if count > 0:
            self.item_errors.labels(index, kind if kind in ERROR_TYPES else OTHER).inc(count)

    def reconnect(self, server: Server) -> None:
        """Count one loss of a server (the worker backs off, then reconnects)."""
        self.reconnects.labels(server).inc()

    def set_server_up(self, server: Server, up: bool) -> None:
        """Record whether the last health check reached a server."""
        self.server_up.labels(server).set(1 if up else 0)

    def observe_status(self, rows: Sequence[IndexStatus]) -> None:
        """Set backlog, lag, dead letters and rebuild progress from `status.collect()`."""
        now = self._clock()
        with self._lock:
            seen = {row.index for row in rows}
            for gone in self._status_indexes - seen:
                for gauge in (
                    self.backlog, self.lag, self.dead_letters, self.paused, self.operator_paused
                ):  # fmt: skip
                    with contextlib.suppress(KeyError):
                        gauge.remove(gone)
            self._status_indexes = seen
            rebuilding: set[str] = set()
            for row in rows:
                self.backlog.labels(row.index).set(row.backlog)
                self.lag.labels(row.index).set(row.oldest_pending_seconds or 0.0)
                self.dead_letters.labels(row.index).set(row.dead_letters)
                self.paused.labels(row.index).set(1 if row.paused_reason is not None else 0)
                self.operator_paused.labels(row.index).set(1 if row.held_reason is not None else 0)
                if row.refreshing:
                    self.refresh_queued.labels(row.index).set(row.refresh_done)
                else:
                    with contextlib.suppress(KeyError):
                        self.refresh_queued.remove(row.index)
                if row.backlog == 0:
                    self.last_success.labels(row.index).set(now)
                if row.rebuild_target is not None:
                    rebuilding.add(row.index)
                    self.rebuild_done.labels(row.index).set(row.rebuild_rows_done or 0)
                    if row.rebuild_rows_total is not None:
                        self.rebuild_total.labels(row.index).set(row.rebuild_rows_total)
                    else:
                        with contextlib.suppress(KeyError):
                            self.rebuild_total.remove(row.index)
            for done in self._rebuilding - rebuilding:
                for gauge in (self.rebuild_done, self.rebuild_total):
                    with contextlib.suppress(KeyError):
                        gauge.remove(done)
            self._rebuilding = rebuilding

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)
