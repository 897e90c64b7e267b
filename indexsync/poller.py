"""The status poller: a thread that feeds metrics and readiness from both servers.

It reads the backlog from PostgreSQL and pings the search server on its own connection,
so a slow scrape or a slow check never holds up a batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from indexsync.errors import IndexsyncError
from indexsync.health import Health, Server
from indexsync.logs import get_logger, redact
from indexsync.metrics import Metrics
from indexsync.status import IndexStatus, collect
from indexsync.store import Store

log = get_logger(__name__)


class StatusPoller:
    """A thread that feeds metrics and health from the database and Elasticsearch."""

    def __init__(
        self,
        *,
        connect: Callable[[], Store],
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
        self._store: Store | None = None
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
        except IndexsyncError as exc:
            reason = str(exc)
            # Whatever failed, start from a fresh connection next time.
            self._close()
            self.health.database_ok(False, reason)
            self._report("postgresql", reason)
            return
        if self.metrics is not None:
            self.metrics.observe_status(rows)
        for row in rows:
            row.judge(self.health.stall_seconds)
        self.health.set_index_problems({row.index: row.problems for row in rows})
        paused = {row.index: row.paused_reason for row in rows if row.paused_reason is not None}
        # An index an operator paused is neither a failure nor a stall: it waits on purpose.
        held = {row.index for row in rows if row.held_reason is not None}
        # A paused index's backlog waits for a fix, not for this worker: it is no stall.
        waiting = [row for row in rows if row.index not in paused and row.index not in held]
        self.health.progress(sum(row.backlog for row in waiting))
        self.health.set_paused(paused)
        # A paused index is said to be paused; its freshness is no second reason.
        self.health.set_freshness({row.index: row.freshness_seconds for row in waiting})
        self.health.database_ok(True)
        self._report("postgresql", None)

    def _status(self) -> list[IndexStatus]:
        if self._store is None or self._store.closed:
            store = self.connect()
            try:
                # A check that hangs is worse than one that fails: bound every query.
                store.set_statement_timeout(self.query_timeout)
            except BaseException:
                store.close()
                raise
            self._store = store
        return collect(self._store, self.aliases)

    def _check_search(self) -> None:
        try:
            self.ping()
        except Exception as exc:
            # The ping is whatever callable we were given: any failure means "not reachable".
            reason = str(exc) or type(exc).__name__
            self.health.search_ok(False, reason)
            self._report("search", reason)
            return
        self.health.search_ok(True)
        self._report("search", None)

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
        if self._store is not None:
            self._store.close()
            self._store = None
