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
    # Rows whose document PostgreSQL cannot build (see `indexsync deadletters`): not drift.
    unreadable: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def total(self) -> int:
        """Documents that differ in any way."""
        return len(self.missing) + len(self.extra) + len(self.differing)

    def as_json(self) -> dict[str, Any]:
        """Counts plus a few example ids."""
        return {
            "index": self.alias,
            "rows": self.rows,
            "documents": self.documents,
            "missing": len(self.missing),
            "extra": len(self.extra),
            "differing": len(self.differing),
            "examples": {
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

    # Pass 1: every row's document must be in the index, equal.
    for page in _pages(store, binding, page_size, drift):
        drift.rows += len(page)
        found = search.mget(binding.alias, [d.doc_id for d in page])
        for doc_id, text in ((d.doc_id, d.source) for d in page):
            if doc_id not in found:
                suspect(doc_id, "missing")
            elif found[doc_id][1] != json.loads(text):
                suspect(doc_id, "differing")
    # Pass 2: every document must have a row.
    batch: list[str] = []
    for hit in search.scan(binding.alias, source=False, page=page_size):
        drift.documents += 1
        batch.append(hit["_id"])
        if len(batch) >= page_size:
            _extras(store, binding, batch, suspect)
            batch = []
    if batch:
        _extras(store, binding, batch, suspect)
    if suspects:
        _recheck(store, search, binding, suspects, settle, drift)
    return drift


def _extras(store: Store, binding: Binding, ids: list[str], suspect: Any) -> None:
    present = set(_rows(store, binding, ids))
    for doc_id in ids:
        if doc_id not in present:
            suspect(doc_id, "extra")


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
        docs = search.mget(binding.alias, chunk)
        for doc_id in chunk:
            if doc_id in rows and doc_id not in docs:
                drift.missing.append(doc_id)
            elif doc_id not in rows and doc_id in docs:
                drift.extra.append(doc_id)
            elif doc_id in rows and docs[doc_id][1] != json.loads(rows[doc_id]):
                drift.differing.append(doc_id)


def _rows(store: Store, binding: Binding, ids: list[str]) -> dict[str, str]:
    # An id that is not even a valid key (a document planted by hand) or a row whose
    # document fails is bisected out: it has no readable row.
    return reread.read(store, binding, ids).docs


def repair(store: Store, search: Search, binding: Binding, drift: Drift, writer: BulkWriter) -> int:
    """Queue every drifted id; the normal versioned path then re-reads and rewrites it."""
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
        ops = [Op(binding.alias, binding.alias, doc_id, version, None) for doc_id in junk]
        writer.write(ops, time.monotonic())
    return len(ids) + len(junk)
