"""The worker: wake on NOTIFY or a timer, claim outbox rows, re-read rows, write versioned bulks."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from indexsync import __version__, migrations, ownership, refresh, reread, versions
from indexsync import changes as batches
from indexsync.bindings import Binding
from indexsync.bulk import Op, build_ops
from indexsync.errors import (
    CredentialsRejected,
    DatabaseUnavailable,
    IndexsyncError,
    SearchUnavailable,
)
from indexsync.health import Health
from indexsync.indexes import missing_alias
from indexsync.logs import get_logger
from indexsync.metrics import DEAD_LETTER, REQUEUED, BatchCounts, Metrics
from indexsync.reindex import Interrupted, Reindexer
from indexsync.rows import Change, DeadLetter
from indexsync.search import Search
from indexsync.settings import Settings
from indexsync.store import Store
from indexsync.waker import Waker
from indexsync.writer import BulkWriter, StaleRead, WriteResult, backoff

log = get_logger(__name__)


# Longest uninterrupted wait for a notification.
_WAIT_SLICE = 0.25
# How often the index learns the sequence's high-water mark (see versions.py), and the
# database when each index last had a batch land (for `status`).
_RECORD_EVERY = 5.0
# When each index last had a batch land is written at most this often, from the batch.
_PROGRESS_EVERY = 1.0


@dataclass
class Totals:
    """Counters over the worker's life, for logs and tests."""

    batches: int = 0
    changes: int = 0
    indexed: int = 0
    deleted: int = 0
    conflicts: int = 0
    dead: int = 0
    retries: int = 0
    reconnects: int = 0
    by_index: dict[str, int] = field(default_factory=dict)


Reload = Callable[[Store], tuple[dict[str, Binding], dict[str, str]]]

# A paused binding is probed again after this long at most.
_PAUSE_MAX_DELAY = 5.0
# How often a worker looks for a new index's backfill to run, and the longest wait after a
# backfill failed.
_BACKFILL_EVERY = 2.0
_BACKFILL_MAX_DELAY = 30.0
# A drain that never runs dry still starts backfills and advances refreshes this often.
_HOUSEKEEP_EVERY = 1.0
# How often the shape of the bound tables is compared with the one last seen, and the
# installed bindings' version with the one this worker follows.
_OBSERVE_EVERY = 2.0
# How often a worker records that it is alive (status calls it gone after STALL_SECONDS).
_HEARTBEAT_EVERY = 5.0
# How often changes that no binding of this worker takes are reported.
_UNBOUND_LOG_EVERY = 30.0


@dataclass
class Paused:
    """An index stopped on its own, and when to try it again.

    Either its binding is broken (its SQL fails), or the index refuses writes (`blocked`).
    """

    reason: str
    failures: int = 0
    retry_at: float = 0.0
    blocked: bool = False


def _settled(ops: Sequence[Op], written: WriteResult) -> dict[tuple[str, str], int]:
    """Documents this batch settled (written, deleted or dead-lettered anew), by version."""
    deferred = {(op.alias, op.doc_id) for op in (*written.deferred, *written.blocked)}
    return {
        (op.alias, op.doc_id): op.version for op in ops if (op.alias, op.doc_id) not in deferred
    }


class Worker:
    """One worker process's loop; several may run against the same database."""

    def __init__(
        self,
        settings: Settings,
        bindings: dict[str, Binding],
        search: Search,
        stop: threading.Event | None = None,
        *,
        metrics: Metrics | None = None,
        health: Health | None = None,
        broken: dict[str, str] | None = None,
        reload: Reload | None = None,
    ) -> None:
        self.settings = settings
        self.bindings = dict(bindings)
        # Re-resolves the bindings file against the catalog, for a paused binding's retry.
        self._reload = reload
        self._paused: dict[str, Paused] = {
            alias: Paused(reason) for alias, reason in (broken or {}).items()
        }
        self.search = search
        self.stop = stop or threading.Event()
        self.metrics = metrics
        self.health = health
        self.totals = Totals()
        self._recorded_at = time.monotonic()
        self._lock = threading.Lock()
        self._drained_at = time.monotonic()
        self._succeeded: dict[str, datetime] = {}
        self._lane_stores: list[Store] = []
        self._lanes = (
            ThreadPoolExecutor(settings.bulk_concurrency + 1, thread_name_prefix="lane")
            if settings.bulk_concurrency > 1
            else None
        )
        self._recorded_seq = 0
        self._observed_at = float("-inf")
        self._backfilling: threading.Thread | None = None
        self._backfilling_alias: str | None = None
        # Indexes an operator paused (`indexsync pause`): claims skip them in SQL; this is
        # for the backfills, which must not write to them either.
        self._held: set[str] = set()
        self._backfill_stop = threading.Event()
        self._backfill_at = float("-inf")
        self._backfill_failures = 0
        self._housekept_at = time.monotonic()
        self._until_idle = False
        # Who this worker is in `indexsync.workers`, and when it last said it is alive.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._heartbeat_at = float("-inf")
        self._progress_at = time.monotonic()
        # Consecutive blocked batches per index, for its backoff; a batch that lands resets it.
        self._block_failures: dict[str, int] = {}
        self._landed_once: set[str] = set()
        self._recorded_pauses: set[str] = set()
        self._refreshed_at = float("-inf")
        # The installed bindings' version this worker follows (None: not read yet), and one
        # lane at a time adopts a newer one.
        self._bindings_version: int | None = None
        self._adopting = threading.Lock()
        self._unbound_logged_at = float("-inf")
        self._store: Store | None = None
        self._listener: Store | None = None
        self.writer = BulkWriter.from_settings(search, settings)
        # Serves `indexsync.wait_for_search` for the indexes this worker syncs.
        self.waker = Waker(settings, search, self.active)

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Release connections and threads."""
        self.waker.stop()
        if self._backfilling is not None:
            # The scan stops at its next page; its progress is kept for whoever resumes it.
            self._backfill_stop.set()
            self._backfilling.join()
        self._disconnect()
        if self._lanes is not None:
            self._lanes.shutdown(wait=True)
        self.writer.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _disconnect(self) -> None:
        for store in (self._store, self._listener, *self._lane_stores):
            if store is not None:
                store.close()
        self._store = self._listener = None
        self._lane_stores = []

    def _connect(self, listen: bool) -> Store:
        if self._store is None or self._store.closed:
            self._store = Store.connect(self.settings, role="worker")
        if listen and (self._listener is None or self._listener.closed):
            # LISTEN gets its own autocommit connection that never sits in a transaction.
            self._listener = Store.connect(self.settings, role="listener")
            self._listener.listen()
        return self._store

    def check_schema(self) -> None:
        """Refuse to start against a schema version this release does not match."""
        migrations.require_current(self._connect(listen=False))

    def check_indexes(self) -> None:
        """Fail fast when an alias the bindings need is missing."""
        for alias in self.bindings:
            if not self.search.alias_targets(alias):
                raise missing_alias(self.search, alias)

    def check_versions(self) -> None:
        """Refuse to start on an index another database owns, or one ahead of the database's
        sequence (a restore)."""
        store = self._connect(listen=False)
        owner = ownership.this_database(store)
        for alias in self.bindings:
            ownership.require_owned(self.search, alias, owner)
            versions.check_sequence(store, self.search, alias)

    def _record_progress(self, force: bool = False) -> None:
        # The sequence's current value bounds every version written so far; keeping it in
        # the index lets a later start notice a database that went back in time.
        now = time.monotonic()
        if self._store is None or (not force and now - self._recorded_at < _RECORD_EVERY):
            return
        self._recorded_at = now
        self._flush_progress(self._store)
        # Pauses this worker recorded and has since lifted: batches of parallel lanes may
        # have committed a pause after the batch that landed, so settle it from memory.
        with self._lock:
            # A blocked index being retried is not lifted until one of its batches lands.
            lifted = self._recorded_pauses - set(self._paused) - set(self._block_failures)
            self._recorded_pauses -= lifted
        for alias in sorted(lifted):
            self._store.set_paused(alias, None)
        seq = self._store.last_seq()
        if seq <= self._recorded_seq:
            return
        for alias in self.bindings:
            versions.record_max_seq(self.search, alias, seq)
        self._recorded_seq = seq

    def _flush_progress(self, store: Store) -> None:
        """Write when each index last had a batch land (for `status`)."""
        with self._lock:
            succeeded, self._succeeded = self._succeeded, {}
            self._progress_at = time.monotonic()
        store.record_progress(succeeded)

    def run(self, *, until_idle: bool = False) -> Totals:
        """Sync until stopped (or, with until_idle, until nothing is left to claim)."""
        self._until_idle = until_idle
        self.check_schema()
        self.check_indexes()
        self.check_versions()
        if self._reload is not None:
            # Bindings installed after the caller resolved them are adopted before any claim.
            store = self._connect(listen=False)
            self._adopt(store, store.bindings_version())
        self.waker.start()
        failures = 0
        log.info(
            "worker.started",
            indexes=sorted(self.bindings),
            paused=sorted(self._paused),
            until_idle=until_idle,
        )
        # Drain first: notifications sent while we were away are lost, the outbox is not.
        must_drain = True
        while not self.stop.is_set():
            try:
                store = self._connect(listen=not until_idle)
                self._drained_at = time.monotonic()
                self._retry_paused(store)
                self._maintain(store)
                # An idle poll is one autocommit probe, not a claim transaction: a third of
                # the round trips, since most polls of an idle worker find nothing.
                pending = must_drain or store.has_pending(self.active())
                if pending:
                    self.drain()
                # With until_idle, a backfill runs here and the loop drains again after it.
                backfilled = self._backfill(inline=until_idle)
                failures = 0
                self._record_progress(force=until_idle)
                if until_idle:
                    if not backfilled:
                        break
                    must_drain = True
                    continue
                must_drain = self._wait()
            except DatabaseUnavailable as exc:
                must_drain = True
                failures += 1
                self.totals.reconnects += 1
                if self.metrics is not None:
                    self.metrics.reconnect("postgresql")
                self._disconnect()
                delay = backoff(failures, self.settings.retry_max_delay)
                log.warning("worker.database_unavailable", error=str(exc), retry_in=round(delay, 2))
                self.stop.wait(delay)
            except CredentialsRejected as exc:
                # Keys get rotated and revoked: keep every change queued and retry, loudly
                # (the log, /readyz and the reconnect metric all say so), instead of exiting
                # into a supervisor's restart loop. A bad key at start still exits 2.
                failures += 1
                if self.metrics is not None:
                    self.metrics.reconnect("search")
                delay = backoff(failures, self.settings.retry_max_delay)
                log.error("worker.credentials_rejected", error=str(exc), retry_in=round(delay, 2))
                self.stop.wait(delay)
            except (SearchUnavailable, StaleRead) as exc:
                failures += 1
                if self.metrics is not None and isinstance(exc, SearchUnavailable):
                    self.metrics.reconnect("search")
                delay = backoff(failures, self.settings.retry_max_delay)
                log.warning("worker.search_unavailable", error=str(exc), retry_in=round(delay, 2))
                self.stop.wait(delay)
        with contextlib.suppress(IndexsyncError):
            self._record_progress(force=True)
            if self._store is not None:
                self._store.worker_stopped(self.worker_id)
        log.info("worker.stopped", batches=self.totals.batches, changes=self.totals.changes)
        return self.totals

    def _housekeep(self, store: Store) -> None:
        """Between batches of a drain that never runs dry (a busy database never gives an
        idle moment): start a waiting backfill, and advance refreshes and adoptions."""
        now = time.monotonic()
        if now < self._housekept_at + _HOUSEKEEP_EVERY:
            return
        self._housekept_at = now
        self._maintain(store)
        if not self._until_idle:
            # --until-idle runs its backfills inline, between drains.
            self._backfill(inline=False)

    # --- backfills ---------------------------------------------------------------------------

    def _backfill(self, *, inline: bool) -> bool:
        """Start (or, inline, run) the backfill of a new index, if one waits; True if it ran."""
        if self._backfilling is not None:
            if self._backfilling.is_alive():
                return False
            self._backfilling = None
        now = time.monotonic()
        if not inline and now < self._backfill_at:
            return False
        self._backfill_at = max(self._backfill_at, now + _BACKFILL_EVERY)
        store = self._connect(listen=False)
        with self._lock:
            candidates = [
                alias
                for alias in store.unfinished_backfills()
                if alias in self.bindings and alias not in self._paused and alias not in self._held
            ]
        for alias in candidates:
            session = Store.connect(self.settings, role="backfill")
            if not session.try_backfill_lock(alias):
                session.close()  # another worker has it
                continue
            if alias in session.held_indexes():
                # Paused since the list was read: `pause` saw no backfill holding the lock,
                # so none may start now (it checks after its own commit, this after the lock).
                session.backfill_unlock(alias)
                session.close()
                continue
            binding = self.bindings[alias]
            if inline:
                # A failed backfill is not retried in this loop: --until-idle must end.
                return self._run_backfill(session, binding)
            self._backfill_stop.clear()
            self._backfilling_alias = alias
            self._backfilling = threading.Thread(
                target=self._run_backfill, args=(session, binding), name="backfill", daemon=True
            )
            self._backfilling.start()
            return False
        return False

    def _run_backfill(self, session: Store, binding: Binding) -> bool:
        """Write an index's existing rows beside live sync, resumably (an in-place rebuild)."""
        # A writer of its own, with half the bulk slots (at least one): sharing the live
        # writer's slots let a busy live sync starve the backfill past its read age.
        writer = BulkWriter(
            self.search,
            concurrency=max(1, self.settings.bulk_concurrency // 2),
            max_bytes=self.settings.bulk_max_bytes,
            max_read_age=self.settings.max_read_age,
        )
        reindexer = Reindexer(
            self.settings,
            self.search,
            {},
            writer=writer,
            stop=self._backfill_stop,
            # Progress goes to the log (reindex.progress), never as a bar among the logs.
            stream=io.StringIO(),
        )
        try:
            log.info("backfill.started", index=binding.alias)
            result = reindexer.reindex(session, binding, in_place=True, restart=False)
            log.info("backfill.done", index=binding.alias, rows=result.rows, skipped=result.skipped)
            self._backfill_failures = 0
            return True
        except Interrupted:
            log.info("backfill.interrupted", index=binding.alias)
            return False
        except IndexsyncError as exc:
            # Left as it was: a later round resumes from the last page that landed, after a
            # backoff, busy database or not (the drain calls in between its batches).
            self._backfill_failures += 1
            delay = backoff(self._backfill_failures, _BACKFILL_MAX_DELAY)
            self._backfill_at = time.monotonic() + delay
            log.warning(
                "backfill.failed", index=binding.alias, error=str(exc), retry_in=round(delay, 2)
            )
            return False
        finally:
            reindexer.close()
            writer.close()
            with contextlib.suppress(IndexsyncError):
                session.backfill_unlock(binding.alias)
            session.close()

    # --- schema changes ---------------------------------------------------------------------

    def _maintain(self, store: Store) -> None:
        """Say this worker is alive, notice installs and schema changes, and re-queue a
        refreshing index's next chunk."""
        now = time.monotonic()
        if now >= self._heartbeat_at + _HEARTBEAT_EVERY:
            self._heartbeat_at = now
            store.heartbeat(self.worker_id, socket.gethostname(), os.getpid(), __version__)
        if now >= self._observed_at + _OBSERVE_EVERY:
            self._observed_at = now
            self._held = store.held_indexes()
            backfilling = self._backfilling
            if (
                backfilling is not None
                and backfilling.is_alive()
                and self._backfilling_alias in self._held
            ):
                # Paused by an operator: the backfill stops at its next page, and resumes
                # from there after `indexsync resume`.
                self._backfill_stop.set()
            if self._reload is not None:
                version = store.bindings_version()
                if version != self._bindings_version:
                    with store.transaction():
                        self._adopt(store, version)
            if now >= self._unbound_logged_at + _UNBOUND_LOG_EVERY:
                self._report_unbound(store)
            with self._lock:
                live = {a: b for a, b in self.bindings.items() if a not in self._paused}
            for alias, binding in live.items():
                with store.transaction():
                    changed = refresh.observe(store, binding)
                if changed and self._reload is not None:
                    # A listed column may be gone: resolve the binding again.
                    good, _ = self._reload(store)
                    if alias in good:
                        with self._lock:
                            self.bindings[alias] = good[alias]
        if now >= self._refreshed_at + 1.0:
            self._refreshed_at = now
            with self._lock:
                live = {a: b for a, b in self.bindings.items() if a not in self._paused}
            with store.transaction():
                refresh.step(store, live, self.settings.refresh_rate)

    # --- installed bindings ---------------------------------------------------------------

    def _adopt(self, store: Store, version: int) -> None:
        """Follow the bindings as installed now: sync new ones, re-read changed ones, and
        stop removed ones (whose queued changes `install` dropped with their triggers)."""
        assert self._reload is not None
        with self._adopting:
            if version == self._bindings_version:
                return  # another lane adopted it meanwhile
            good, broken = self._reload(store)
            with self._lock:
                known = set(self.bindings) | set(self._paused)
                before = dict(self.bindings)
            for alias in sorted(known - set(good) - set(broken)):
                with self._lock:
                    self.bindings.pop(alias, None)
                    self._paused.pop(alias, None)
                    self._recorded_pauses.discard(alias)
                log.info("binding.removed", index=alias)
            for alias, binding in sorted(good.items()):
                if alias not in known:
                    problem = self._cannot_sync(store, alias)
                    if problem is not None:
                        with self._lock:
                            self.bindings[alias] = binding
                        self._pause(store, alias, problem)
                        continue
                    log.info("binding.adopted", index=alias, table=binding.display)
                elif before.get(alias) not in (None, binding):
                    log.info("binding.updated", index=alias, table=binding.display)
                with self._lock:
                    self.bindings[alias] = binding
            for alias, reason in sorted(broken.items()):
                with self._lock:
                    self.bindings.pop(alias, None)
                    already = alias in self._paused
                if not already:
                    self._pause(store, alias, reason)
            self._bindings_version = version

    def _cannot_sync(self, store: Store, alias: str) -> str | None:
        """Why a newly installed index cannot be written yet, or None."""
        try:
            if not self.search.alias_targets(alias):
                return str(missing_alias(self.search, alias))
            ownership.require_owned(self.search, alias, ownership.this_database(store))
            versions.check_sequence(store, self.search, alias)
        except IndexsyncError as exc:
            return str(exc)
        return None

    def _report_unbound(self, store: Store) -> None:
        """Say which queued changes no binding of this worker will take: they wait."""
        self._unbound_logged_at = time.monotonic()
        with self._lock:
            known = sorted(set(self.bindings) | set(self._paused))
        for waiting in store.unbound_backlog(known):
            log.warning(
                "outbox.unbound_index",
                index=waiting.index_name,
                changes=waiting.changes,
                oldest_seconds=round(waiting.oldest_seconds or 0.0, 1),
                hint="the changes stay queued until a binding for this index is installed",
            )

    # --- paused bindings ------------------------------------------------------------------

    def active(self) -> list[str]:
        """The indexes this worker claims changes of right now: bound and not paused."""
        with self._lock:
            return sorted(set(self.bindings) - set(self._paused))

    def paused(self) -> list[str]:
        """The indexes whose binding is broken, and why, right now."""
        with self._lock:
            return sorted(self._paused)

    def _pause(self, store: Store, alias: str, reason: str, *, blocked: bool = False) -> None:
        """Stop one index (inside the batch's transaction); the others go on."""
        with self._lock:
            state = self._paused.get(alias)
            if state is None:
                state = self._paused[alias] = Paused(reason, blocked=blocked)
                if blocked:
                    state.failures = self._block_failures.get(alias, 0) + 1
                    self._block_failures[alias] = state.failures
                    state.retry_at = time.monotonic() + backoff(
                        state.failures, self.settings.retry_max_delay
                    )
                    log.warning("index.blocked", index=alias, reason=reason)
                else:
                    # The first retry is at once: a binding broken by a dropped listed
                    # column heals as soon as the bindings are resolved again.
                    state.retry_at = time.monotonic()
                    log.error("binding.paused", index=alias, reason=reason)
            state.reason = reason
        self._record_pause(store, alias, reason)

    def _record_pause(self, store: Store, alias: str, reason: str) -> None:
        """Write why an index is paused, for status and /readyz; remembered for settling."""
        store.set_paused(alias, reason)
        with self._lock:
            self._recorded_pauses.add(alias)

    def _retry_paused(self, store: Store) -> None:
        now = time.monotonic()
        with self._lock:
            due = [alias for alias, p in self._paused.items() if p.retry_at <= now]
        if not due:
            return
        for alias in [a for a in due if self._paused[a].blocked]:
            # Nothing to probe: the next batch tells whether the block has lifted.
            with self._lock:
                state = self._paused.pop(alias)
            log.info("index.retrying", index=alias, after_failures=state.failures)
        due = [alias for alias in due if alias in self._paused]
        if not due:
            return
        if self._reload is not None:
            good, broken = self._reload(store)
        else:
            good, broken = dict(self.bindings), {}
        for alias in due:
            state = self._paused[alias]
            binding = good.get(alias)
            reason = broken.get(alias)
            if binding is not None:
                try:
                    with store.transaction():
                        reread.probe(store, binding)
                except reread.BindingBroken as exc:
                    reason = str(exc)
            if reason is not None or binding is None:
                state.reason = reason or f"index {alias!r}: its binding is no longer installed"
                state.failures += 1
                state.retry_at = now + backoff(state.failures, _PAUSE_MAX_DELAY)
                if alias not in self._recorded_pauses:
                    self._record_pause(store, alias, state.reason)
                    log.error("binding.paused", index=alias, reason=state.reason)
                continue
            with self._lock:
                self.bindings[alias] = binding
                del self._paused[alias]
                self._recorded_pauses.discard(alias)
            store.set_paused(alias, None)
            log.info("binding.resumed", index=alias, after_failures=state.failures)

    def _wait(self) -> bool:
        """Sleep until the next poll is due; True when a notification cut it short."""
        assert self._listener is not None
        # Polls keep a fixed cadence: the drain's own duration counts towards the interval.
        deadline = self._drained_at + self.settings.poll_interval
        # Short slices, so that a SIGTERM is honoured promptly even with a long interval.
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._listener.notified(min(left, _WAIT_SLICE)):
                return True
        return False

    def drain(self) -> int:
        """Process batches until the outbox has nothing left to claim (or stop is set)."""
        first = self.process_batch(self._connect(listen=False))
        if first < self.settings.batch_size or self.stop.is_set():
            return first
        if self._lanes is None:
            # One bulk slot: the worker's own connection is the only lane, and it runs
            # batches until one comes back short, like every lane of a parallel drain.
            return first + self._lane(self._connect(listen=False), threading.Event())
        # A backlog: several batches in flight, each in its own transaction and connection,
        # coordinated like separate workers (SKIP LOCKED claims, versioned writes).
        # One lane more than bulk slots: while every slot has a request in flight, the spare
        # lane claims and reads its next batch, then waits for a slot in the writer's pool.
        while len(self._lane_stores) < self.settings.bulk_concurrency:
            self._lane_stores.append(Store.connect(self.settings, role="worker"))
        stores = [self._connect(listen=False), *self._lane_stores]
        failed = threading.Event()
        futures = [self._lanes.submit(self._lane, store, failed) for store in stores]
        # Every lane ends before this returns or raises: a connection is never shared by
        # two threads, and a reconnect never closes one that a lane still uses.
        wait(futures)
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
        return first + sum(future.result() for future in futures)

    def _lane(self, store: Store, failed: threading.Event) -> int:
        done = 0
        try:
            while not (self.stop.is_set() or failed.is_set()):
                n = self.process_batch(store)
                done += n
                if n < self.settings.batch_size:
                    break
                if store is self._store:
                    self._housekeep(store)
        except BaseException:
            failed.set()
            raise
        return done

    # --- one batch ------------------------------------------------------------------------

    def process_batch(self, store: Store) -> int:
        """Claim, re-read, write and acknowledge one batch; returns the changes claimed."""
        started = time.monotonic()
        with store.transaction():
            changes = store.claim(self.settings.batch_size, self.active())
            if not changes:
                return 0
            claimed_at = time.monotonic()
            # Drawn after the claim and before the re-read, so a larger version always
            # carries a newer read (see the README's design notes). Rebuilds are read
            # here too, never before the claim: the claim gave this transaction an xid,
            # so a rebuild recorded after this read waits for the batch to end.
            context = store.batch_context()
            version, rebuilds = context.version, context.rebuilds
            if self._reload is not None and context.bindings_version != self._bindings_version:
                # An install committed since this worker last looked: never build a document
                # from a definition older than the one installed when this batch began.
                self._adopt(store, context.bindings_version)
            # Taken before the re-read is sent: a pause while its answer is in flight
            # must count towards the read's age (see max_read_age).
            read_at = time.monotonic()
            work = batches.plan(changes)
            ops, unbuilt, stopped = self._build_ops(store, changes, work, rebuilds, version)
            written = self.writer.write(ops, read_at, defer=True)
            written.dead.extend(unbuilt)
            # Each letter names the changes it stands for: a waiter tells its own by them.
            written.dead[:] = [
                replace(d, changes=work[d.index_name].span(d.doc_id)) for d in written.dead
            ]
            # Older dead letters of these documents are obsolete: they landed since, or
            # failed again and get a fresh letter just below.
            if context.dead_letters:
                settled = _settled(ops, written)
                settled.update({(d.index_name, d.doc_id): version for d in unbuilt})
                store.clear_dead_letters(settled)
            store.add_dead_letters(written.dead)
            # Items refused for too long go back into the outbox for a later batch.
            # Items an index refuses for now (a write block, a revoked privilege) wait in the
            # outbox too, and that index pauses: no dead letters, the other indexes go on.
            # Each keeps the origin of its oldest change, for the waiters of that change.
            store.requeue(
                {
                    # A delete of a routed copy keeps the routing it must be deleted under.
                    (op.alias, op.doc_id, op.routing if op.source is None else None): work[
                        op.alias
                    ].span(op.doc_id)[0]
                    for op in (*written.deferred, *written.blocked)
                }
            )
            for alias, reason in written.block_reasons.items():
                self._pause(store, alias, reason, blocked=True)
        landed_at = datetime.now(UTC)
        # Neither a blocked index nor one whose binding broke in this batch landed anything.
        landed = {change.index_name for change in changes} - set(written.block_reasons) - stopped
        unblocked: list[str] = []
        settle: list[str] = []
        with self._lock:
            for alias in sorted(landed):
                self._succeeded[alias] = landed_at
                if self._block_failures.pop(alias, None) is not None:
                    unblocked.append(alias)
                elif alias not in self._landed_once:
                    # A pause recorded by a worker before this one (one that stopped while
                    # the index was blocked or broken) ends with this worker's first landing.
                    settle.append(alias)
                self._landed_once.add(alias)
        for alias in [*unblocked, *settle]:
            store.set_paused(alias, None)
        for alias in unblocked:
            log.info("index.unblocked", index=alias)
        if time.monotonic() - self._progress_at >= _PROGRESS_EVERY:
            # From the batch, not only between drains: a long drain shows its progress.
            self._flush_progress(store)
        self._account(changes, ops, written, started, claimed_at, read_at)
        if self.metrics is not None:
            self._observe_freshness(changes, landed, landed_at)
        return len(changes)

    def _observe_freshness(
        self, changes: Sequence[Change], landed: set[str], landed_at: datetime
    ) -> None:
        """Each landed change's commit-to-searchable time, bounded from above (see metrics)."""
        assert self.metrics is not None
        by_index: dict[str, list[float]] = {}
        bounds = {alias: self.waker.refresh_bound(alias) for alias in landed}
        for change in changes:
            bound = bounds.get(change.index_name)
            if change.created_at is None or bound is None:
                continue  # not landed, or an index that only refreshes when asked
            seconds = (landed_at - change.created_at).total_seconds() + bound
            by_index.setdefault(change.index_name, []).append(seconds)
        for alias, values in by_index.items():
            self.metrics.observe_freshness(alias, values)

    def _build_ops(
        self,
        store: Store,
        changes: Sequence[Change],
        plan: dict[str, batches.IndexWork],
        rebuilds: dict[str, str],
        version: int,
    ) -> tuple[list[Op], list[DeadLetter], set[str]]:
        """The bulk items of a batch, the documents PostgreSQL could not build, and the
        indexes whose binding broke (their changes went back to the outbox)."""
        ops: list[Op] = []
        unbuilt: list[DeadLetter] = []
        stopped: set[str] = set()
        for alias, work in plan.items():
            with self._lock:
                binding = self.bindings.get(alias)
                paused = alias in self._paused
            if binding is None and not paused:
                # Claimed before its binding was removed, or by an older claim list: such a
                # change is never acknowledged here; it waits for a binding to take it.
                store.requeue_changes([c for c in changes if c.index_name == alias])
                stopped.add(alias)
                continue
            try:
                if binding is None:
                    raise reread.BindingBroken(alias, "-", self._paused[alias].reason)
                ops.extend(self._index_ops(store, binding, work, rebuilds, version, unbuilt))
            except reread.BindingBroken as exc:
                # Only this index stops; its changes go back to wait for the fix.
                store.requeue_changes([c for c in changes if c.index_name == alias])
                self._pause(store, alias, str(exc))
                stopped.add(alias)
        return ops, unbuilt, stopped

    def _index_ops(
        self,
        store: Store,
        binding: Binding,
        work: batches.IndexWork,
        rebuilds: dict[str, str],
        version: int,
        unbuilt: list[DeadLetter],
    ) -> list[Op]:
        alias = binding.alias
        targets = [(alias, True)]
        if alias in rebuilds:
            targets.append((rebuilds[alias], False))
        ids = set(work.ids)
        for source, keys in work.keys.items():
            found = reread.expand(store, binding, source, keys)
            if found is None:
                log.warning("outbox.unbound_dependency", index=alias, table=source)
                continue
            ids |= found
        if work.truncate:
            ids |= self._indexed_ids(alias, targets, version)
        if not ids:
            return []
        result = reread.read(store, binding, sorted(ids))
        # No item for these ids: their documents stay as they were until the rows can be read.
        ids.difference_update(failure.doc_id for failure in result.failures)
        unbuilt.extend(reread.dead_letters(alias, version, result.failures, "batch.row_unreadable"))
        elsewhere: dict[str, set[str]] = {k: set(v) for k, v in work.moved.items()}
        if binding.routing is not None:
            # A routed document whose row is gone, with no routing recorded by its change (a
            # resync, a repair, a TRUNCATE): the index says where its copies are.
            unknown = [i for i in ids if i not in result.docs and i not in elsewhere]
            if unknown:
                for doc_id, routings in self.search.routings(alias, unknown).items():
                    elsewhere[doc_id] = routings
        return build_ops(
            alias,
            targets,
            ids,
            result.docs,
            version,
            elsewhere=elsewhere,
            pipeline=binding.pipeline,
        )

    def _indexed_ids(self, alias: str, targets: list[tuple[str, bool]], version: int) -> set[str]:
        # After a TRUNCATE every indexed document is suspect. Re-reading them like any other
        # change is what keeps a row inserted after the TRUNCATE: its own batch may have
        # drawn a smaller version than this one, so a blind versioned delete would win over
        # it. Documents already at this version or above were read after this batch's draw.
        found: set[str] = set()
        for target, _ in targets:
            for hit in self.search.scan(target, source=False):
                if int(hit.get("_version", 0)) < version:
                    found.add(hit["_id"])
        log.info("batch.truncate", index=alias, version=version, suspects=len(found))
        return found

    def _account(
        self,
        changes: Sequence[Change],
        ops: Sequence[Op],
        written: WriteResult,
        started: float,
        claimed_at: float,
        read_at: float,
    ) -> None:
        """One pass over the batch for the totals, the `batch.done` event and the metrics."""
        counts: dict[str, BatchCounts] = {}
        for change in changes:
            counts.setdefault(change.index_name, BatchCounts()).changes += 1
        refused = {(d.index_name, d.doc_id) for d in written.dead}
        refused |= {(op.alias, op.doc_id) for op in (*written.deferred, *written.blocked)}
        for op in ops:
            if op.index != op.alias or (op.alias, op.doc_id) in refused:
                continue  # a rebuild's second copy, or not landed
            item = counts.setdefault(op.alias, BatchCounts())
            if op.source is not None:
                item.indexed += 1
            else:
                item.deleted += 1
        for letter in written.dead:
            counts.setdefault(letter.index_name, BatchCounts()).add_error(DEAD_LETTER)
        for op in written.deferred:
            counts.setdefault(op.alias, BatchCounts()).add_error(REQUEUED)
        for (alias, kind), n in written.errors.items():
            counts.setdefault(alias, BatchCounts()).add_error(kind, n)
        indexed = sum(c.indexed for c in counts.values())
        deleted = sum(c.deleted for c in counts.values())
        now = time.monotonic()
        with self._lock:
            t = self.totals
            t.batches += 1
            t.changes += len(changes)
            t.indexed += indexed
            t.deleted += deleted
            t.dead += len(written.dead)
            t.conflicts += written.conflicts
            t.retries += written.retried
        log.info(
            "batch.done",
            changes=len(changes),
            indexed=indexed,
            deleted=deleted,
            dead_letters=len(written.dead),
            requeued=len(written.deferred),
            # The claim alone: a bloated outbox shows here first.
            claim_ms=round((claimed_at - started) * 1000, 1),
            read_ms=round((read_at - started) * 1000, 1),
            write_ms=round((now - read_at) * 1000, 1),
        )
        if self.health is not None:
            self.health.batch_done()
        if self.metrics is not None:
            self.metrics.batch_done(now - started, counts)
