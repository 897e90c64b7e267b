"""Read-your-writes, the worker's side: refresh the indexes that have waiters in
`indexsync.wait_for_search`, publish how far each is searchable, and wake its waiters.

The protocol is in migration 4 and docs/design.md. In short: waiters sleep on the advisory
lock of their index's current generation; one worker per index (the leader, elected by a
try-lock that dies with its session) holds that lock. Each round it reads the sequence (L),
then the smallest seq still queued for the index (m), refreshes the index, and publishes
the horizon min(L, m - 1) in a new generation, whose lock it took first; letting go of the
old generation's lock wakes the waiters, which compare the horizon with their own seq.

An index without waiters costs nothing here beyond one look at pg_locks per tick.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from indexsync.errors import IndexsyncError
from indexsync.logs import get_logger
from indexsync.search import Search
from indexsync.settings import Settings
from indexsync.store import Store
from indexsync.writer import backoff

log = get_logger(__name__)

# How often an idle worker looks for waiters; once it has seen some, it ticks at the
# refresh interval until none has been seen for _KEEP_FAST seconds.
_IDLE_TICK = 0.05
_KEEP_FAST = 1.0
# How often the indexes' own refresh intervals are read again (for the freshness bound).
_INTERVALS_EVERY = 60.0
# An index's refresh interval when its settings cannot be read (the engines' default).
_DEFAULT_REFRESH_INTERVAL = 1.0


def parse_interval(text: str | None) -> float | None:
    """Seconds of an Elasticsearch time value ("1s", "500ms", "-1"); None for "never"."""
    if text is None:
        return _DEFAULT_REFRESH_INTERVAL
    text = str(text).strip()
    if text.startswith("-"):
        return None
    units = (("ms", 0.001), ("micros", 1e-6), ("nanos", 1e-9), ("s", 1.0), ("m", 60.0))
    for suffix, scale in (*units, ("h", 3600.0), ("d", 86400.0)):
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * scale
            except ValueError:
                return _DEFAULT_REFRESH_INTERVAL
    try:
        return float(text) / 1000.0  # a bare number is milliseconds
    except ValueError:
        return _DEFAULT_REFRESH_INTERVAL


class Leadership:
    """The indexes this worker leads, and the generation whose lock it holds for each."""

    def __init__(self) -> None:
        self.generations: dict[str, int] = {}
        self.published: dict[str, int] = {}

    def __contains__(self, index: object) -> bool:
        return index in self.generations

    def forget(self) -> None:
        """The session is gone, and every lock with it."""
        self.generations.clear()
        self.published.clear()


class Waker:
    """A thread that serves `indexsync.wait_for_search` for the indexes this worker syncs."""

    def __init__(
        self,
        settings: Settings,
        search: Search,
        indexes: Callable[[], Sequence[str]],
    ) -> None:
        self.settings = settings
        self.search = search
        # The indexes this worker may lead: those it syncs now (bound and not paused).
        self.indexes = indexes
        self.interval = settings.wait_refresh_interval
        self._leading = Leadership()
        self._store: Store | None = None
        self._stop = threading.Event()
        self._tick_at = float("-inf")
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._waiters_seen_at = float("-inf")
        # When this process last refreshed each index for its waiters, and each index's own
        # refresh interval: together they bound how long a written document stays unseen.
        self._refreshed_at: dict[str, float] = {}
        self._intervals: dict[str, float | None] = {}
        self._intervals_at = float("-inf")
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Waker:
        """Start serving waiters in a thread of its own."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="waker", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop; closing the session lets go of every lock, which wakes the waiters (they
        find no leader, and wait for another worker's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._close()

    def __enter__(self) -> Waker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        self._leading.forget()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.tick()
                self._failures = 0
            except IndexsyncError as exc:
                self._failures += 1
                delay = backoff(self._failures, self.settings.retry_max_delay)
                log.warning("waker.failed", error=str(exc), retry_in=round(delay, 2))
                # Start again from a fresh session: its locks are gone with the old one.
                self._close()
                self._stop.wait(delay)
                continue
            self._pause(busy)
        self._close()

    def _pause(self, busy: bool) -> None:
        """Until the next tick: `interval` after the last one while waiters are about."""
        period = self.interval if busy else _IDLE_TICK
        self._stop.wait(max(self._tick_at + period - time.monotonic(), 0.0))

    # --- one round ------------------------------------------------------------------------

    def tick(self) -> bool:
        """Serve the waiters once; True while waiters have been seen lately."""
        if self._store is None or self._store.closed:
            self._store = Store.connect(self.settings, role="waker")
            self._leading.forget()
        store = self._store
        now = self._tick_at = time.monotonic()
        if now >= self._intervals_at + _INTERVALS_EVERY:
            self._read_intervals()
        mine = list(self.indexes())
        self._let_go(store, [index for index in self._leading.generations if index not in mine])
        waiting = store.waiting_indexes(mine) if mine else {}
        if waiting:
            self._waiters_seen_at = now
        for index in waiting:
            if index not in self._leading:
                self._try_lead(store, index)
        led = {index: target for index, target in waiting.items() if index in self._leading}
        if led:
            self._round(store, led)
        return now - self._waiters_seen_at < _KEEP_FAST

    def _try_lead(self, store: Store, index: str) -> None:
        generation = store.try_lead(index)
        if generation is None:
            return  # another worker leads it
        if not store.try_generation_lock(index, generation):
            # A leader that just died may still hold it for a moment: try again next tick.
            store.lead_unlock(index)
            return
        self._leading.generations[index] = generation
        self._leading.published[index] = -1
        log.info("waker.leading", index=index, generation=generation)

    def _let_go(self, store: Store, indexes: list[str]) -> None:
        for index in indexes:
            generation = self._leading.generations.pop(index)
            self._leading.published.pop(index, None)
            store.generation_unlock(index, generation)
            store.lead_unlock(index)
            log.info("waker.released", index=index)

    def _round(self, store: Store, targets: dict[str, int]) -> None:
        # The order is the proof (migration 4): the sequence first, then, in a later
        # snapshot, what is still queued, then the refresh, then the horizon.
        high = store.last_seq()
        floors = store.pending_floors(sorted(targets))
        horizons = {}
        for index, target in targets.items():
            floor = floors.get(index)
            horizon = high if floor is None else min(high, floor - 1)
            # Refresh and wake only when it answers a waiter: under a backlog that hides
            # every waiter's changes, the index and the waiters are left alone.
            if horizon >= target and horizon > self._leading.published.get(index, -1):
                horizons[index] = horizon
        if not horizons:
            return  # nobody can be answered yet: the waiters sleep on
        self.search.refresh(",".join(sorted(horizons)))
        refreshed_at = time.monotonic()
        for index, horizon in horizons.items():
            current = self._leading.generations[index]
            following = current + 1
            if not store.try_generation_lock(index, following):
                # Held by a waiter that leaked it, or a stale leader: skip a number.
                following += 1
                if not store.try_generation_lock(index, following):
                    log.warning("waker.generation_busy", index=index, generation=following)
                    continue
            store.publish_searchable(index, horizon, following)
            store.generation_unlock(index, current)
            self._leading.generations[index] = following
            self._leading.published[index] = horizon
            with self._lock:
                self._refreshed_at[index] = refreshed_at

    # --- the freshness bound ----------------------------------------------------------------

    def _read_intervals(self) -> None:
        self._intervals_at = time.monotonic()
        found: dict[str, float | None] = {}
        for index in self.indexes():
            try:
                found[index] = parse_interval(self.search.refresh_interval(index))
            except IndexsyncError:
                found[index] = _DEFAULT_REFRESH_INTERVAL
        with self._lock:
            self._intervals = found

    def refresh_bound(self, index: str) -> float | None:
        """How long a document written now may stay unseen by searches, at most: the
        waiters' refresh interval while this worker refreshes the index for them, else the
        index's own refresh interval (None when it never refreshes on its own)."""
        with self._lock:
            refreshed_at = self._refreshed_at.get(index)
            own = self._intervals.get(index, _DEFAULT_REFRESH_INTERVAL)
        if refreshed_at is not None and time.monotonic() - refreshed_at < _KEEP_FAST:
            return self.interval
        return own
