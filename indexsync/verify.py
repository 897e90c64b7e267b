"""Verify: compare what each binding produces from the database with what its index holds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from indexsync import reread
from indexsync.bindings import Binding
from indexsync.bulk import Op
from indexsync.errors import QueryFailed
from indexsync.logs import get_logger
from indexsync.rows import Document
from indexsync.search import Search
from indexsync.store import Store
from indexsync.writer import BulkWriter

log = get_logger(__name__)

EXAMPLES = 5
# Suspects are re-checked once at the end, so changes in flight during the pass are not drift.
_MAX_SUSPECTS = 100_000


@dataclass
class Drift:
    """Differences between one index and its binding."""

    alias: str
    rows: int = 0
    documents: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    # Copies of a routed document under a routing it no longer has: (id, that routing).
    misplaced: list[tuple[str, str]] = field(default_factory=list)
    # Rows whose document PostgreSQL cannot build (see `indexsync deadletters`): not drift.
    unreadable: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def total(self) -> int:
        """Documents that differ in any way."""
        return len(self.missing) + len(self.extra) + len(self.differing) + len(self.misplaced)

    def as_json(self) -> dict[str, Any]:
        """Counts plus a few example ids."""
        return {
            "index": self.alias,
            "rows": self.rows,
            "documents": self.documents,
            "missing": len(self.missing),
            "extra": len(self.extra),
            "differing": len(self.differing),
            "misplaced": len(self.misplaced),
            "examples": {
                "misplaced": [f"{d} (routing {r})" for d, r in self.misplaced[:EXAMPLES]],
                "missing": self.missing[:EXAMPLES],
                "extra": self.extra[:EXAMPLES],
                "differing": self.differing[:EXAMPLES],
            },
            "unreadable": len(self.unreadable),
            "truncated": self.truncated,
        }


def _pages(store: Store, binding: Binding, size: int, drift: Drift) -> Iterator[list[Document]]:
    last: str | None = None
    while (page := reread.scan_page(store, binding, last, size)) is not None:
        drift.unreadable.extend(f.doc_id for f in page.failures)
        yield page.docs
        last = page.last_key


def compare(
    store: Store,
    search: Search,
    binding: Binding,
    *,
    page_size: int = 2000,
    settle: float = 1.0,
) -> Drift:
    """Stream both sides in bounded memory and return the differences."""
    drift = Drift(binding.alias)
    suspects: dict[str, str] = {}
    search.refresh(binding.alias)

    def suspect(doc_id: str, kind: str) -> None:
        if len(suspects) < _MAX_SUSPECTS:
            suspects[doc_id] = kind
        else:
            drift.truncated = True

    # Pass 1: every row's document must be in the index, equal, at its routing.
    for page in _pages(store, binding, page_size, drift):
        drift.rows += len(page)
        found = search.mget(
            binding.alias, [d.doc_id for d in page], {d.doc_id: d.routing for d in page}
        )
        for doc in page:
            if doc.doc_id not in found:
                suspect(doc.doc_id, "missing")
            elif not _same(binding, found[doc.doc_id][1], doc.source):
                suspect(doc.doc_id, "differing")
    # Pass 2: every document must have a row, and live under the row's routing.
    misplaced: list[tuple[str, str]] = []
    batch: list[dict[str, Any]] = []
    for hit in search.scan(binding.alias, source=False, page=page_size):
        drift.documents += 1
        batch.append(hit)
        if len(batch) >= page_size:
            _extras(store, binding, batch, suspect, misplaced)
            batch = []
    if batch:
        _extras(store, binding, batch, suspect, misplaced)
    if suspects:
        _recheck(store, search, binding, suspects, settle, drift)
    if misplaced:
        _recheck_misplaced(store, search, binding, misplaced, drift)
    return drift


def _same(binding: Binding, indexed: dict[str, Any], source: str) -> bool:
    expected = json.loads(source)
    if binding.pipeline is not None:
        # An ingest pipeline adds fields (an embedding, say): those the database renders
        # must be equal, the pipeline's own are its business.
        indexed = {key: value for key, value in indexed.items() if key in expected}
    return bool(indexed == expected)


def _extras(
    store: Store,
    binding: Binding,
    hits: list[dict[str, Any]],
    suspect: Any,
    misplaced: list[tuple[str, str]],
) -> None:
    rows = _rows(store, binding, [hit["_id"] for hit in hits])
    for hit in hits:
        doc_id = hit["_id"]
        if doc_id not in rows:
            suspect(doc_id, "extra")
        elif binding.routing is not None and hit.get("_routing") != rows[doc_id].routing:
            misplaced.append((doc_id, str(hit.get("_routing"))))


def _recheck_misplaced(
    store: Store,
    search: Search,
    binding: Binding,
    misplaced: list[tuple[str, str]],
    drift: Drift,
) -> None:
    # Still there, and still not the row's routing, once no change of it is pending.
    ids = sorted({doc_id for doc_id, _ in misplaced})
    if store.pending_for_ids(binding.alias, ids):
        time.sleep(1.0)
    rows = _rows(store, binding, ids)
    for doc_id, routing in misplaced:
        row = rows.get(doc_id)
        if row is None or row.routing == routing:
            continue
        if doc_id in search.mget(binding.alias, [doc_id], {doc_id: routing}):
            drift.misplaced.append((doc_id, routing))


def _recheck(
    store: Store,
    search: Search,
    binding: Binding,
    suspects: dict[str, str],
    settle: float,
    drift: Drift,
) -> None:
    # A live worker may have been mid-batch: wait until no change for these ids is pending.
    deadline = time.monotonic() + settle
    ids = list(suspects)
    while time.monotonic() < deadline:
        if not store.pending_for_ids(binding.alias, ids):
            break
        time.sleep(0.05)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        rows = _rows(store, binding, chunk)
        docs = search.mget(binding.alias, chunk, {i: r.routing for i, r in rows.items()})
        extras = [i for i in chunk if i not in rows]
        if binding.routing is not None and extras:
            # A routed extra is found under whatever routing it has.
            found = search.routings(binding.alias, extras)
            docs.update({i: (0, {}) for i in found})
        for doc_id in chunk:
            if doc_id in rows and doc_id not in docs:
                drift.missing.append(doc_id)
            elif doc_id not in rows and doc_id in docs:
                drift.extra.append(doc_id)
            elif doc_id in rows and not _same(binding, docs[doc_id][1], rows[doc_id].source):
                drift.differing.append(doc_id)


def _routings_or_none(found: set[str] | None) -> list[str | None]:
    # An unrouted document is deleted without a routing.
    return [*sorted(found)] if found else [None]


def _rows(store: Store, binding: Binding, ids: list[str]) -> dict[str, Document]:
    # An id that is not even a valid key (a document planted by hand) or a row whose
    # document fails is bisected out: it has no readable row.
    return reread.read(store, binding, ids).docs


def repair(store: Store, search: Search, binding: Binding, drift: Drift, writer: BulkWriter) -> int:
    """Queue every drifted id; the normal versioned path then re-reads and rewrites it."""
    # A misplaced copy is queued with the routing it is under: the worker deletes it there
    # (and writes the document at its own routing), as for a row that moved.
    store.enqueue_moved(drift.alias, drift.misplaced)
    ids = [*drift.missing, *drift.differing]
    junk = []
    for doc_id in drift.extra:
        # An id that is not even a valid key cannot go through the outbox (the re-read would
        # fail on it); it gets the same versioned delete, with a seq drawn now.
        try:
            store.check_ids(binding, [doc_id])
            ids.append(doc_id)
        except QueryFailed:
            junk.append(doc_id)
    store.enqueue_ids(drift.alias, ids)
    if junk:
        version = store.next_seq()
        routed = search.routings(binding.alias, junk) if binding.routing is not None else {}
        ops = [
            Op(binding.alias, binding.alias, doc_id, version, None, routing=routing)
            for doc_id in junk
            for routing in _routings_or_none(routed.get(doc_id))
        ]
        writer.write(ops, time.monotonic())
    return len(ids) + len(junk) + len(drift.misplaced)
