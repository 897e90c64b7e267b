"""The worker: wake on NOTIFY or a timer, claim outbox rows, re-read rows, write versioned bulks."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from indexsync import db, documents, outbox
from indexsync.bindings import Binding
from indexsync.documents import Op
from indexsync.errors import (
    DatabaseUnavailable,
    IndexMissing,
    IndexsyncError,
    SearchUnavailable,
)
from indexsync.logs import get_logger
from indexsync.outbox import DeadLetter
from indexsync.search import ItemResult, Outcome, RequestTooLarge, Search
from indexsync.settings import Settings

log = get_logger(__name__)

# Per-item 429s are retried inside the batch a few times; after that the batch is rolled back
# so that no transaction stays open while Elasticsearch recovers.
_ITEM_RETRIES = 4
# Below this many items a batch goes out as one request: splitting costs more than it saves.
_MIN_PARALLEL_ITEMS = 200


class StaleRead(IndexsyncError):
    """A batch's documents were read too long ago to be sent safely (see max_read_age)."""


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


def backoff(attempt: int, cap: float) -> float:
    """Jittered exponential delay for the n-th consecutive failure."""
    base: float = min(cap, 0.2 * 2 ** min(attempt, 16))
    return base * random.uniform(0.5, 1.0)


class Worker:
    """One worker process's loop; several may run against the same database."""

    def __init__(
        self,
        settings: Settings,
        bindings: dict[str, Binding],
        search: Search,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.bindings = bindings
        self.search = search
        self.stop = stop or threading.Event()
        self.totals = Totals()
        self._conn: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self._pool = ThreadPoolExecutor(settings.bulk_concurrency, thread_name_prefix="bulk")

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Release connections and threads."""
        self._disconnect()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _disconnect(self) -> None:
        for conn in (self._conn, self._listener):
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self._conn = self._listener = None

    def _connect(self, listen: bool) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.settings, autocommit=True, role="worker")
        if listen and (self._listener is None or self._listener.closed):
            # LISTEN gets its own autocommit connection that never sits in a transaction.
            self._listener = db.connect(self.settings, autocommit=True, role="listener")
            with db.translated():
                self._listener.execute(f"LISTEN {outbox.CHANNEL}")
        return self._conn

    def check_indexes(self) -> None:
        """Fail fast when an alias the bindings need is missing."""
        for alias in self.bindings:
            if not self.search.alias_targets(alias):
                raise IndexMissing(
                    f"index alias {alias!r} does not exist in Elasticsearch; "
                    "run `indexsync install`"
                )

    def run(self, *, until_idle: bool = False) -> Totals:
        """Sync until stopped (or, with until_idle, until nothing is left to claim)."""
        self.check_indexes()
        failures = 0
        log.info("worker.started", indexes=sorted(self.bindings), until_idle=until_idle)
        while not self.stop.is_set():
            try:
                self._connect(listen=not until_idle)
                # Drain first: notifications sent while we were away are lost, the outbox is not.
                self.drain()
                failures = 0
                if until_idle:
                    break
                self._wait()
            except DatabaseUnavailable as exc:
                failures += 1
                self.totals.reconnects += 1
                self._disconnect()
                delay = backoff(failures, self.settings.retry_max_delay)
                log.warning("worker.database_unavailable", error=str(exc), retry_in=round(delay, 2))
                self.stop.wait(delay)
            except (SearchUnavailable, StaleRead) as exc:
                failures += 1
                delay = backoff(failures, self.settings.retry_max_delay)
                log.warning("worker.search_unavailable", error=str(exc), retry_in=round(delay, 2))
                self.stop.wait(delay)
        log.info("worker.stopped", batches=self.totals.batches, changes=self.totals.changes)
        return self.totals

    def _wait(self) -> None:
        assert self._listener is not None
        with db.translated():
            for _ in self._listener.notifies(timeout=self.settings.poll_interval, stop_after=1):
                pass

    def drain(self) -> int:
        """Process batches until the outbox has nothing left to claim (or stop is set)."""
        done = 0
        while not self.stop.is_set():
            n = self.process_batch()
            done += n
            if n < self.settings.batch_size:
                break
        return done

    # --- one batch ------------------------------------------------------------------------

    def process_batch(self) -> int:
        """Claim, re-read, write and acknowledge one batch; returns the changes claimed."""
        conn = self._connect(listen=False)
        started = time.monotonic()
        try:
            with conn.transaction():
                targets = outbox.rebuild_targets(conn)
                changes = outbox.claim(conn, self.settings.batch_size)
                if not changes:
                    return 0
                ops = self._build_ops(conn, changes, targets)
                read_at = time.monotonic()
                dead = self._send(ops, read_at)
                outbox.add_dead_letters(conn, dead)
        except psycopg.Error as exc:
            raise db.translate(exc) from exc
        self._count(changes, ops, dead, started, read_at)
        return len(changes)

    def _build_ops(
        self,
        conn: psycopg.Connection[Any],
        changes: Sequence[outbox.Change],
        rebuilds: dict[str, str],
    ) -> list[Op]:
        ops: list[Op] = []
        for alias, work in documents.plan(changes).items():
            binding = self.bindings.get(alias)
            if binding is None:
                # A binding removed from the file: its changes have nowhere to go.
                log.warning("outbox.unbound_index", index=alias, changes=len(work.versions))
                continue
            targets = [(alias, True)]
            if alias in rebuilds:
                targets.append((rebuilds[alias], False))
            if work.versions:
                docs = documents.fetch_documents(conn, binding, list(work.versions))
                ops.extend(documents.build_ops(alias, targets, work.versions, docs))
            if work.truncate_seq is not None:
                ops.extend(self._truncate_ops(alias, targets, work.truncate_seq))
        return ops

    def _truncate_ops(self, alias: str, targets: list[tuple[str, bool]], seq: int) -> list[Op]:
        # Versioned deletes at the marker's seq: anything written after the TRUNCATE has a
        # larger version and refuses the delete with a 409.
        ops = []
        for target, _ in targets:
            for hit in self.search.scan(target, source=False):
                if int(hit.get("_version", 0)) < seq:
                    ops.append(Op(alias, target, hit["_id"], seq, None))
        log.info("batch.truncate", index=alias, seq=seq, deletes=len(ops))
        return ops

    def _send(self, ops: list[Op], read_at: float) -> list[DeadLetter]:
        pending = ops
        dead: dict[tuple[str, str], DeadLetter] = {}
        attempt = 0
        while pending:
            if time.monotonic() - read_at > self.settings.max_read_age:
                raise StaleRead(
                    f"documents read over {self.settings.max_read_age:.0f}s ago were not sent; "
                    "re-reading them"
                )
            retry: list[Op] = []
            for op, result in self._bulk(pending):
                if result.outcome is Outcome.DONE:
                    if result.status == 409:
                        self.totals.conflicts += 1
                elif result.outcome is Outcome.RETRY:
                    retry.append(op)
                elif result.outcome is Outcome.DEAD:
                    letter = DeadLetter(
                        op.alias,
                        op.doc_id,
                        op.version,
                        result.status,
                        result.error_type,
                        result.reason[:4000],
                    )
                    if (op.alias, op.doc_id) not in dead:
                        log.warning(
                            "batch.dead_letter",
                            index=op.alias,
                            doc_id=op.doc_id,
                            status=result.status,
                            error_type=result.error_type,
                            reason=result.reason[:500],
                        )
                    dead[(op.alias, op.doc_id)] = letter
                else:
                    raise IndexMissing(
                        f"index {op.index!r} (of alias {op.alias!r}) does not exist in "
                        "Elasticsearch; run `indexsync install` or `indexsync reindex`"
                    )
            pending = retry
            if pending:
                attempt += 1
                self.totals.retries += len(pending)
                if attempt > _ITEM_RETRIES:
                    raise SearchUnavailable(
                        f"{len(pending)} bulk items still rejected after {_ITEM_RETRIES} retries"
                    )
                delay = backoff(attempt, 2.0)
                log.info("batch.retry_items", items=len(pending), retry_in=round(delay, 3))
                time.sleep(delay)
        return list(dead.values())

    def _bulk(self, ops: list[Op]) -> list[tuple[Op, ItemResult]]:
        parts = self.settings.bulk_concurrency if len(ops) >= _MIN_PARALLEL_ITEMS else 1
        chunks = list(documents.chunk_bodies(ops, self.settings.bulk_max_bytes, parts))
        if len(chunks) == 1:
            return self._send_chunk(*chunks[0])
        futures = [self._pool.submit(self._send_chunk, chunk, body) for chunk, body in chunks]
        results: list[tuple[Op, ItemResult]] = []
        for future in futures:
            results.extend(future.result())
        return results

    def _send_chunk(self, ops: list[Op], body: bytes) -> list[tuple[Op, ItemResult]]:
        try:
            items = self.search.bulk(body)
        except RequestTooLarge:
            if len(ops) == 1:
                reason = f"bulk body of {len(body)} bytes is larger than the server accepts"
                return [(ops[0], ItemResult(Outcome.DEAD, 413, "request_too_large", reason))]
            half = len(ops) // 2
            return [
                *self._send_chunk(ops[:half], b"".join(op.encode() for op in ops[:half])),
                *self._send_chunk(ops[half:], b"".join(op.encode() for op in ops[half:])),
            ]
        if len(items) != len(ops):
            raise SearchUnavailable(f"bulk response has {len(items)} items for {len(ops)} sent")
        return list(zip(ops, items, strict=True))

    def _count(
        self,
        changes: Sequence[outbox.Change],
        ops: Sequence[Op],
        dead: Sequence[DeadLetter],
        started: float,
        read_at: float,
    ) -> None:
        t = self.totals
        t.batches += 1
        t.changes += len(changes)
        indexed = sum(1 for op in ops if op.source is not None)
        t.indexed += indexed
        t.deleted += len(ops) - indexed
        t.dead += len(dead)
        now = time.monotonic()
        log.info(
            "batch.done",
            changes=len(changes),
            indexed=indexed,
            deleted=len(ops) - indexed,
            dead_letters=len(dead),
            read_ms=round((read_at - started) * 1000, 1),
            write_ms=round((now - read_at) * 1000, 1),
        )
