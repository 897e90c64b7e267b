"""Reindex: rebuild an index under a watermark while live sync goes on, then swap the alias."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

from indexsync import ownership, reread
from indexsync.bindings import Binding
from indexsync.bulk import Op
from indexsync.errors import ConfigError, IndexsyncError, SequenceRegression
from indexsync.indexes import create_generation, index_body
from indexsync.logs import get_logger
from indexsync.progress import Progress
from indexsync.rows import Document
from indexsync.search import Search
from indexsync.settings import Settings
from indexsync.store import Store
from indexsync.versions import check_sequence, record_max_seq
from indexsync.writer import BulkWriter, WriteResult

log = get_logger(__name__)

# A page that takes longer than this to write is a sign of a server under stress.
_SLOW_PAGE_S = 2.0

_WAIT_POLL = 0.05
_PAGES_IN_FLIGHT = 2


def wait_for_snapshot(store: Store, snapshot: str, timeout: float) -> None:
    """Wait until every transaction in progress in `snapshot` has ended."""
    deadline = time.monotonic() + timeout
    logged = False
    while True:
        running = store.in_progress(snapshot)
        if running == 0:
            return
        if not logged:
            log.info("reindex.waiting_for_transactions", in_progress=running)
            logged = True
        if time.monotonic() > deadline:
            raise IndexsyncError(
                f"{running} transaction(s) older than the rebuild are still open after "
                f"{timeout:.0f}s; end them (see pg_stat_activity) and rerun to resume"
            )
        time.sleep(_WAIT_POLL)


def draw_watermark(store: Store, timeout: float) -> int:
    """V0: a seq such that every change below it has committed or aborted."""
    drawn = store.draw_watermark()
    wait_for_snapshot(store, drawn.snapshot, timeout)
    return drawn.watermark


def wait_for_batches(store: Store, timeout: float) -> None:
    """Wait for every transaction running now (worker batches in flight) to end."""
    wait_for_snapshot(store, store.current_snapshot(), timeout)


class Interrupted(IndexsyncError):
    """A rebuild was asked to stop; its progress is kept for a resume."""


@dataclass
class ReindexResult:
    """What one rebuild did."""

    alias: str
    target: str
    previous: list[str]
    watermark: int
    rows: int
    seconds: float
    deleted_stale: int = 0
    dead_letters: int = 0
    # Rows a backfill left to live sync, which had written them since its floor.
    skipped: int = 0

    @property
    def rows_per_s(self) -> float:
        """Scan throughput."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class Reindexer:
    """Rebuilds the indexes of bindings; one instance per command."""

    def __init__(
        self,
        settings: Settings,
        search: Search,
        mappings: Mapping[str, dict[str, Any]],
        *,
        chunk_size: int = 5000,
        keep_old: bool = False,
        stream: TextIO | None = None,
        wait_timeout: float = 600.0,
        on_chunk: Callable[[int], None] | None = None,
        writer: BulkWriter | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.search = search
        # Loaded at the entry point: a rebuild never reads a file half-way through.
        self.mappings = mappings
        self.chunk_size = chunk_size
        self.keep_old = keep_old
        self.stream = stream if stream is not None else sys.stderr
        self.wait_timeout = wait_timeout
        self.on_chunk = on_chunk
        # A worker's backfill shares the worker's writer, so that its requests count against
        # the same bound of requests in flight.
        self.stop = stop
        self._owns_writer = writer is None
        self.writer = writer or BulkWriter.from_settings(search, settings)
        # Pages are filtered on the scan's sender threads.
        self._skipped = 0
        self._skipped_lock = threading.Lock()

    def close(self) -> None:
        """Release threads."""
        if self._owns_writer:
            self.writer.close()

    def reindex(
        self, store: Store, binding: Binding, *, in_place: bool, restart: bool
    ) -> ReindexResult:
        """Rebuild one index (resuming an interrupted rebuild unless `restart`)."""
        alias = binding.alias
        owner = ownership.this_database(store)
        ownership.require_owned(self.search, alias, owner)
        previous = self.search.alias_targets(alias)
        state = store.get_rebuild(alias)
        if state is not None and (restart or state.in_place != in_place):
            self._abandon(store, alias, state.target, previous)
            state = None
        started = time.monotonic()
        if in_place:
            if len(previous) != 1:
                raise ConfigError(
                    f"index {alias!r}: an in-place reindex needs the alias on exactly one "
                    f"index (found {previous or 'none'}); run `indexsync reindex {alias}`"
                )
            self._check_versions(store, alias, previous[0], in_place=True)
            target = previous[0]
        elif state is not None and self.search.exists(state.target):
            target = state.target
        else:
            if state is not None:
                store.end_rebuild(alias)
            state = None
            target = self._create_target(binding, previous)
            ownership.claim(self.search, target, owner)
        floor: int | None = None
        if state is None:
            store.start_rebuild(alias, target, in_place, store.count_documents(binding))
            # Dual writes are on from this commit; the watermark waits for older batches.
            watermark = draw_watermark(store, self.wait_timeout)
            store.set_watermark(alias, watermark)
            last_key: str | None = None
            done = 0
            log.info("reindex.started", index=alias, target=target, watermark=watermark)
        else:
            floor = state.floor
            drawn = state.watermark
            if drawn is None:
                # A backfill recorded by install: counted and started here.
                drawn = draw_watermark(store, self.wait_timeout)
                store.set_watermark(alias, drawn, store.count_documents(binding))
            watermark = drawn
            last_key, done = state.last_key, state.rows_done
            log.info("reindex.resumed", index=alias, target=target, after_key=last_key, rows=done)
        progress = Progress(alias, store.count_documents(binding), done, self.stream)
        self._skipped = 0
        rows, dead = self._scan(store, binding, target, watermark, last_key, progress, floor)
        progress.finish()
        result = ReindexResult(
            alias,
            target,
            previous,
            watermark,
            rows,
            time.monotonic() - started,
            dead_letters=dead,
            skipped=self._skipped,
        )
        if in_place:
            # A backfill skipped what live sync wrote since its floor: only documents below
            # it went unwritten by both (see _scan).
            bound = floor if floor is not None else watermark
            result.deleted_stale = self._delete_below(alias, target, bound)
            store.end_rebuild(alias)
        else:
            self._swap(store, binding, target, previous, watermark)
        result.seconds = time.monotonic() - started
        log.info(
            "reindex.done",
            index=alias,
            target=target,
            rows=result.rows,
            rows_per_s=round(result.rows_per_s),
            deleted_stale=result.deleted_stale,
            dead_letters=dead,
            skipped=result.skipped,
            seconds=round(result.seconds, 2),
        )
        return result

    # --- phases ---------------------------------------------------------------------------

    def _create_target(self, binding: Binding, previous: list[str]) -> str:
        body = index_body(self.mappings.get(binding.alias, {}), self.settings)
        index_settings = dict(body["settings"])
        # Bulk-load settings; the mapping's own values (or the defaults) come back at the end.
        index_settings["index.refresh_interval"] = "-1"
        index_settings["index.number_of_replicas"] = 0
        for key in ("refresh_interval", "number_of_replicas"):
            index_settings.pop(key, None)
            nested = index_settings.get("index")
            if isinstance(nested, dict):
                index_settings["index"] = {k: v for k, v in nested.items() if k != key}
        body["settings"] = index_settings
        generations = [_generation(binding.alias, name) for name in previous]
        start = max(generations, default=0) + 1
        target = create_generation(
            self.search, binding.alias, body, attach_alias=False, start=start
        )
        log.info("reindex.index_created", index=binding.alias, target=target)
        return target

    def _scan(
        self,
        store: Store,
        binding: Binding,
        target: str,
        watermark: int,
        last_key: str | None,
        progress: Progress,
        floor: int | None = None,
    ) -> tuple[int, int]:
        rows = dead = 0
        # Pages are read while earlier ones are written, and two pages are in flight: the
        # second keeps every bulk slot busy while the first waits for its slowest request.
        # Pages land (and progress is recorded) in key order, so a resume never skips one.
        in_flight: deque[tuple[Future[WriteResult], str, int]] = deque()
        with ThreadPoolExecutor(_PAGES_IN_FLIGHT, thread_name_prefix="scan") as sender:
            while True:
                if self.stop is not None and self.stop.is_set():
                    raise Interrupted(f"rebuild of {binding.alias!r} stopped; it resumes later")
                # One short statement per page: nothing holds back vacuum during a long scan.
                page = reread.scan_page(store, binding, last_key, self.chunk_size)
                while in_flight and (
                    page is None or len(in_flight) >= _PAGES_IN_FLIGHT or in_flight[0][0].done()
                ):
                    landed = in_flight.popleft()
                    dead += self._landed(store, binding.alias, progress, *landed)
                    rows += landed[2]
                if page is None:
                    return rows, dead
                if page.failures:
                    dead += self._unreadable(store, binding.alias, watermark, page.failures)
                docs = page.docs
                if floor is not None and docs:
                    docs = self._not_written_since(target, floor, docs)
                ops = [
                    Op(
                        binding.alias, target, d.doc_id, watermark, d.source,
                        routing=d.routing, pipeline=binding.pipeline,
                    )
                    for d in docs
                ]  # fmt: skip
                last_key = page.last_key
                future = sender.submit(self._paced_write, ops)
                in_flight.append((future, last_key, len(page.docs) + len(page.failures)))

    def _not_written_since(self, index: str, floor: int, docs: list[Document]) -> list[Document]:
        """The documents of a page that live sync has not written since the backfill's floor.

        A document at the floor's version or above was written by a batch that claimed a
        change made after install and read the row after it; any later change is in the
        outbox too. Rewriting it (a large import reaches the outbox as well as the scan)
        would only double the load on the search server while live changes wait.
        """
        written = self.search.versions(
            index, [d.doc_id for d in docs], {d.doc_id: d.routing for d in docs}
        )
        todo = [d for d in docs if written.get(d.doc_id, 0) < floor]
        with self._skipped_lock:
            self._skipped += len(docs) - len(todo)
        return todo

    def _paced_write(self, ops: list[Op]) -> WriteResult:
        """Write a page, then yield to live sync when the server shows stress.

        A page that met 429s, or took longer than _SLOW_PAGE_S, is followed by a pause as
        long as the page took: under stress the rebuild takes at most about half of the
        server's time, and live changes keep their latency.
        """
        started = time.monotonic()
        written = self.writer.write(ops, started)
        took = time.monotonic() - started
        if written.retried or took > _SLOW_PAGE_S:
            log.info("reindex.yielding", pause_s=round(took, 2), retried=written.retried)
            (self.stop or threading.Event()).wait(took)
        return written

    def _unreadable(
        self, store: Store, alias: str, watermark: int, failures: list[reread.RowFailure]
    ) -> int:
        """Dead-letter the rows whose document PostgreSQL could not build; the scan goes on.

        A later change of the row, or `deadletters retry`, brings it back through live sync.
        """
        letters = reread.dead_letters(alias, watermark, failures, "reindex.row_unreadable")
        with store.transaction():
            store.add_dead_letters(letters)
        return len(letters)

    def _landed(
        self,
        store: Store,
        alias: str,
        progress: Progress,
        future: Future[WriteResult],
        last_key: str,
        count: int,
    ) -> int:
        # A StaleRead or an outage propagates: the rerun resumes after the last landed page.
        written = future.result()
        if written.dead:
            with store.transaction():
                store.add_dead_letters(written.dead)
        store.rebuild_progress(alias, last_key, progress.done + count)
        progress.advance(count)
        if self.on_chunk is not None:
            self.on_chunk(progress.done)
        return len(written.dead)

    def _delete_below(self, alias: str, index: str, watermark: int) -> int:
        # Neither the scan nor any later change wrote these: their rows are gone. The delete
        # is versioned at V0, so a newer write that lands first refuses it.
        self.search.refresh(index)
        batch: list[Op] = []
        deleted = 0
        for hit in self.search.scan(index, source=False):
            if int(hit.get("_version", 0)) < watermark:
                # At the routing it was found under: a routed document moved since the last
                # rebuild leaves its old copy here, below the watermark too.
                batch.append(
                    Op(alias, index, hit["_id"], watermark, None, routing=hit.get("_routing"))
                )
            if len(batch) >= self.chunk_size:
                self.writer.write(batch, time.monotonic())
                deleted += len(batch)
                batch = []
        if batch:
            self.writer.write(batch, time.monotonic())
            deleted += len(batch)
        return deleted

    def _swap(
        self,
        store: Store,
        binding: Binding,
        target: str,
        previous: list[str],
        watermark: int,
    ) -> None:
        restored = _restored_settings(self.mappings.get(binding.alias, {}))
        self.search.put_settings(target, restored)
        self.search.refresh(target)
        record_max_seq(self.search, target, watermark)
        actions: list[dict[str, Any]] = [
            {"remove": {"index": name, "alias": binding.alias}} for name in previous
        ]
        actions.append({"add": {"index": target, "alias": binding.alias}})
        self.search.update_aliases(actions)
        log.info("reindex.alias_swapped", index=binding.alias, target=target, previous=previous)
        store.end_rebuild(binding.alias)
        if previous and not self.keep_old:
            # Batches that began before the swap may still be writing to the old index.
            wait_for_batches(store, self.wait_timeout)
            for name in previous:
                self.search.delete_index(name)
                log.info("reindex.old_index_dropped", index=binding.alias, dropped=name)

    def _abandon(self, store: Store, alias: str, target: str, live: list[str]) -> None:
        store.end_rebuild(alias)
        if target not in live:
            wait_for_batches(store, self.wait_timeout)
            self.search.delete_index(target)
        log.info("reindex.abandoned", index=alias, target=target)

    def _check_versions(self, store: Store, alias: str, index: str, *, in_place: bool) -> None:
        try:
            check_sequence(store, self.search, alias)
        except SequenceRegression as exc:
            if in_place:
                raise SequenceRegression(
                    f"{exc}; an in-place reindex cannot fix this, run `indexsync reindex {alias}`"
                ) from None


def _generation(alias: str, name: str) -> int:
    suffix = name[len(alias) + 1 :] if name.startswith(alias + "-") else ""
    return int(suffix) if suffix.isdigit() else 0


def _restored_settings(mapping: dict[str, Any]) -> dict[str, Any]:
    """The mapping's own refresh and replica settings, or null (the server default)."""
    user: dict[str, Any] = mapping.get("settings") or {}
    index = user.get("index")
    nested: dict[str, Any] = index if isinstance(index, dict) else {}
    restored: dict[str, Any] = {}
    for key in ("refresh_interval", "number_of_replicas"):
        value = user.get(f"index.{key}", user.get(key, nested.get(key)))
        restored[f"index.{key}"] = value
    return restored


def run_reindex(
    settings: Settings,
    bindings: dict[str, Binding],
    search: Search,
    mappings: Mapping[str, dict[str, Any]],
    *,
    in_place: bool = False,
    restart: bool = False,
    keep_old: bool = False,
    chunk_size: int = 5000,
) -> list[ReindexResult]:
    """Rebuild the given bindings one after another."""
    reindexer = Reindexer(settings, search, mappings, chunk_size=chunk_size, keep_old=keep_old)
    try:
        with Store.connect(settings, role="reindex") as store:
            return [
                reindexer.reindex(store, binding, in_place=in_place, restart=restart)
                for binding in bindings.values()
            ]
    finally:
        reindexer.close()
