"""Prometheus metrics, readiness, and the HTTP server of `/metrics`, `/healthz` and `/readyz`.

Nothing here is global: a `Metrics` owns its `CollectorRegistry`, a `Health` its state, so a
process (or a test) can hold several. The worker reports batches and reconnects; a
`StatusPoller` thread reads the outbox's backlog from PostgreSQL and pings Elasticsearch on
its own connections, so a slow scrape or a slow check never holds up a batch.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Literal

import psycopg
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
from prometheus_client.exposition import choose_encoder

from indexsync import __version__, db
from indexsync.errors import ConfigError, IndexsyncError
from indexsync.logs import get_logger, redact
from indexsync.search import Search, call
from indexsync.status import IndexStatus, collect

log = get_logger(__name__)

Server = Literal["postgresql", "elasticsearch"]
SERVERS: Final[tuple[Server, ...]] = ("postgresql", "elasticsearch")

# The `type` label of indexsync_bulk_item_errors_total. A closed set keeps the number of
# series bounded whatever the server answers; anything else is counted as "other".
VERSION_CONFLICT: Final = "version_conflict"  # 409: a newer version is already there (harmless)
RETRY_429: Final = "retry_429"  # rejected for load, retried
RETRY_5XX: Final = "retry_5xx"  # server error, retried
DEAD_LETTER: Final = "dead_letter"  # refused for good, recorded in indexsync.dead_letters
REQUEUED: Final = "requeued"  # still refused after the retries, put back in the outbox
OTHER: Final = "other"
ERROR_TYPES: Final[tuple[str, ...]] = (
    VERSION_CONFLICT,
    RETRY_429,
    RETRY_5XX,
    DEAD_LETTER,
    REQUEUED,
    OTHER,
)

# One batch takes from about a millisecond (a few small documents) to tens of seconds (a
# full batch against a struggling cluster, retries included).
BATCH_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
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
            "Documents Elasticsearch refused for good, waiting in indexsync.dead_letters.",
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
            "retry_5xx, dead_letter, requeued, other.",
            ["index", "type"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "indexsync_batch_duration_seconds",
            "Wall time of one batch: claim, re-read, bulk write, acknowledge.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
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
        self.paused = Gauge(
            "indexsync_binding_paused",
            "1 while the index is paused because its binding's SQL fails, else 0.",
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
                for gauge in (self.backlog, self.lag, self.dead_letters, self.paused):
                    with contextlib.suppress(KeyError):
                        gauge.remove(gone)
            self._status_indexes = seen
            rebuilding: set[str] = set()
            for row in rows:
                self.backlog.labels(row.index).set(row.backlog)
                self.lag.labels(row.index).set(row.oldest_pending_seconds or 0.0)
                self.dead_letters.labels(row.index).set(row.dead_letters)
                self.paused.labels(row.index).set(1 if row.paused_reason is not None else 0)
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stall_seconds <= 0:
            raise ValueError("stall_seconds must be positive")
        self.stall_seconds = stall_seconds
        self.stale_after = stale_after
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        # Starting with a backlog is not a stall: the clock starts at construction.
        self._moved_at = now
        self._started_at = now
        self._backlog: int | None = None
        self._paused: dict[str, str] = {}
        # server -> (ok, reason, when checked); absent until the first check.
        self._servers: dict[Server, tuple[bool, str, float]] = {}

    def database_ok(self, ok: bool, reason: str = "") -> None:
        """Record whether PostgreSQL answered the last check."""
        self._set("postgresql", ok, reason)

    def search_ok(self, ok: bool, reason: str = "") -> None:
        """Record whether Elasticsearch answered the last check."""
        self._set("elasticsearch", ok, reason)

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
                reasons.append(f"index {index!r} paused: {why}")
            stalled_for = now - self._moved_at
            if self._backlog and stalled_for > self.stall_seconds:
                reasons.append(
                    f"stalled: backlog of {self._backlog} change(s) has not moved for "
                    f"{stalled_for:.0f}s (limit {self.stall_seconds:g}s)"
                )
            return Readiness(not reasons, [redact(r) for r in reasons], self._backlog)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # A scrape of a dead process must fail fast rather than queue.
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], metrics: Metrics, health: Health) -> None:
        self.metrics = metrics
        self.health = health
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    # Idle or slow clients cannot pin a thread for long.
    timeout = 10
    server_version = f"indexsync/{__version__}"

    def do_GET(self) -> None:
        """Serve /metrics, /healthz and /readyz."""
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(HTTPStatus.OK, encoder(self.server.metrics.registry), content_type)
        elif path == "/healthz":
            self._json(HTTPStatus.OK, {"alive": True})
        elif path == "/readyz":
            state = self.server.health.readiness()
            status = HTTPStatus.OK if state.ready else HTTPStatus.SERVICE_UNAVAILABLE
            self._json(status, state.as_json())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found", "paths": list(_PATHS)})

    def _json(self, status: HTTPStatus, body: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(body).encode() + b"\n", "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Route the access log to debug: a scrape every few seconds is noise."""
        log.debug("metrics.request", client=self.client_address[0], line=format % args)


_PATHS = ("/metrics", "/healthz", "/readyz")


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """`/metrics`, `/healthz` and `/readyz` over HTTP, served from a daemon thread."""

    def __init__(
        self, metrics: Metrics, health: Health, *, host: str = "127.0.0.1", port: int | None
    ) -> None:
        if port == 0:
            # 0 is the setting that turns the server off; None asks for any free port.
            raise ValueError("port 0 disables the server: do not start one (None: any free port)")
        self.metrics = metrics
        self.health = health
        self.host = host
        self._requested_port = port or 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when started with port=None)."""
        if self._httpd is None:
            return self._requested_port
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:9740."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        """Bind and serve; raises ConfigError when the address cannot be bound."""
        if self._httpd is not None:
            return self
        try:
            cls = _HTTPServer6 if ":" in self.host else _HTTPServer
            self._httpd = cls((self.host, self._requested_port), self.metrics, self.health)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.host}:{self._requested_port}: "
                f"{exc.strerror or exc}; set INDEXSYNC_METRICS_PORT to a free port "
                "(or 0 to turn the server off) and INDEXSYNC_METRICS_HOST to a local address"
            ) from None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="indexsync-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics.listening", url=self.url, paths=list(_PATHS))
        return self

    def stop(self) -> None:
        """Stop serving and release the socket."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None
        self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def ping_search(search: Search, timeout: float) -> Callable[[], object]:
    """A health ping of Elasticsearch with its own short timeout (errors translated)."""
    client = search.client.options(request_timeout=timeout)
    return lambda: call(lambda: client.info())


class StatusPoller:
    """A thread that feeds metrics and health from the database and Elasticsearch."""

    def __init__(
        self,
        *,
        connect: Callable[[], psycopg.Connection[Any]],
        aliases: Sequence[str],
        health: Health,
        ping: Callable[[], object],
        metrics: Metrics | None = None,
        interval: float = 5.0,
        query_timeout: float = 10.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.connect = connect
        self.aliases = list(aliases)
        self.health = health
        self.ping = ping
        self.metrics = metrics
        self.interval = interval
        self.query_timeout = query_timeout
        self.checks = 0
        self._up: dict[Server, bool] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StatusPoller:
        """Start checking every `interval` seconds, the first check at once."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="indexsync-health", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close its connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._close()

    def __enter__(self) -> StatusPoller:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:
                # A bug here must not end the checks silently; readiness would go stale.
                log.exception("health.check_failed")
            # A fixed cadence: the check's own duration counts towards the interval.
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(next_at - time.monotonic())
        self._close()

    def check(self) -> None:
        """Run one round of checks now (the thread calls this; tests may too)."""
        self._check_database()
        self._check_search()
        self.checks += 1

    def _check_database(self) -> None:
        try:
            rows = self._status()
        except (psycopg.Error, IndexsyncError) as exc:
            reason = str(db.translate(exc) if isinstance(exc, psycopg.Error) else exc)
            # Whatever failed, start from a fresh connection next time.
            self._close()
            self.health.database_ok(False, reason)
            self._report("postgresql", reason)
            return
        if self.metrics is not None:
            self.metrics.observe_status(rows)
        paused = {row.index: row.paused_reason for row in rows if row.paused_reason is not None}
        # A paused index's backlog waits for a fix, not for this worker: it is no stall.
        self.health.progress(sum(row.backlog for row in rows if row.index not in paused))
        self.health.set_paused(paused)
        self.health.database_ok(True)
        self._report("postgresql", None)

    def _status(self) -> list[IndexStatus]:
        if self._conn is None or self._conn.closed:
            conn = self.connect()
            try:
                # A check that hangs is worse than one that fails: bound every query.
                conn.execute(
                    "SELECT set_config('statement_timeout', %s, false)",
                    (f"{int(self.query_timeout * 1000)}ms",),
                )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return collect(self._conn, self.aliases)

    def _check_search(self) -> None:
        try:
            self.ping()
        except Exception as exc:
            # The ping is whatever callable we were given: any failure means "not reachable".
            reason = str(exc) or type(exc).__name__
            self.health.search_ok(False, reason)
            self._report("elasticsearch", reason)
            return
        self.health.search_ok(True)
        self._report("elasticsearch", None)

    def _report(self, server: Server, failure: str | None) -> None:
        if self.metrics is not None:
            self.metrics.set_server_up(server, failure is None)
        # Log changes of state only: an outage must not write a line every few seconds.
        was_up = self._up.get(server)
        self._up[server] = failure is None
        if failure is not None and was_up is not False:
            log.warning("health.server_down", server=server, error=redact(failure))
        elif failure is None and was_up is False:
            log.info("health.server_up", server=server)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


class Monitor:
    """Metrics, health, the status poller and the HTTP server of one worker, together."""

    def __init__(
        self,
        *,
        connect: Callable[[], psycopg.Connection[Any]],
        aliases: Sequence[str],
        ping: Callable[[], object],
        port: int | None,
        host: str = "127.0.0.1",
        stall_seconds: float = 60.0,
        interval: float = 5.0,
        query_timeout: float = 10.0,
        stale_after: float | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.metrics = Metrics(registry, indexes=aliases)
        # A last good check older than a few rounds (plus time for a connect, a query and a
        # ping to time out) means the poller is stuck: stop claiming readiness.
        if stale_after is None:
            stale_after = 3 * interval + 3 * query_timeout
        self.health = Health(stall_seconds, stale_after=stale_after)
        self.enabled = port != 0
        self.poller = StatusPoller(
            connect=connect,
            aliases=aliases,
            health=self.health,
            ping=ping,
            metrics=self.metrics,
            interval=interval,
            query_timeout=query_timeout,
        )
        self.server = (
            MetricsServer(self.metrics, self.health, host=host, port=port) if self.enabled else None
        )

    def start(self) -> Monitor:
        """Bind the server (ConfigError when the port is taken), then start the checks."""
        if self.server is not None:
            self.server.start()
            self.poller.start()
        return self

    def close(self) -> None:
        """Stop the checks and the server."""
        self.poller.stop()
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
