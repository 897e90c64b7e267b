"""Verify: compare what each binding produces from the database with what its index holds."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from indexsync import documents, outbox
from indexsync.bindings import Binding
from indexsync.documents import Op
from indexsync.logs import get_logger
from indexsync.search import Search
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
            "truncated": self.truncated,
        }


def _pages(
    conn: psycopg.Connection[Any], binding: Binding, size: int
) -> Iterator[list[tuple[str, str]]]:
    first = documents.scan_query(binding, resume=False)
    following = documents.scan_query(binding, resume=True)
    last: str | None = None
    while True:
        query = first if last is None else following
        page = conn.execute(query, {"limit": size, "after": last}, prepare=True).fetchall()
        if not page:
            return
        yield page
        last = page[-1][0]


def compare(
    conn: psycopg.Connection[Any],
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
    for page in _pages(conn, binding, page_size):
        drift.rows += len(page)
        found = search.mget(binding.alias, [doc_id for doc_id, _ in page])
        for doc_id, text in page:
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
            _extras(conn, binding, batch, suspect)
            batch = []
    if batch:
        _extras(conn, binding, batch, suspect)
    if suspects:
        _recheck(conn, search, binding, suspects, settle, drift)
    return drift


def _extras(conn: psycopg.Connection[Any], binding: Binding, ids: list[str], suspect: Any) -> None:
    try:
        present = set(documents.fetch_documents(conn, binding, ids))
    except psycopg.errors.DataError:
        # Some id is not even a valid key (a document planted by hand): look one by one.
        present = set()
        for doc_id in ids:
            with contextlib.suppress(psycopg.errors.DataError):
                present.update(documents.fetch_documents(conn, binding, [doc_id]))
    for doc_id in ids:
        if doc_id not in present:
            suspect(doc_id, "extra")


def _recheck(
    conn: psycopg.Connection[Any],
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
        pending = conn.execute(outbox.PENDING_FOR_IDS, (binding.alias, ids)).fetchone()
        if not pending or not pending[0]:
            break
        time.sleep(0.05)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        rows = _rows(conn, binding, chunk)
        docs = search.mget(binding.alias, chunk)
        for doc_id in chunk:
            if doc_id in rows and doc_id not in docs:
                drift.missing.append(doc_id)
            elif doc_id not in rows and doc_id in docs:
                drift.extra.append(doc_id)
            elif doc_id in rows and docs[doc_id][1] != json.loads(rows[doc_id]):
                drift.differing.append(doc_id)


def _rows(conn: psycopg.Connection[Any], binding: Binding, ids: list[str]) -> dict[str, str]:
    try:
        return documents.fetch_documents(conn, binding, ids)
    except psycopg.errors.DataError:
        rows: dict[str, str] = {}
        for doc_id in ids:
            with contextlib.suppress(psycopg.errors.DataError):
                rows.update(documents.fetch_documents(conn, binding, [doc_id]))
        return rows


def repair(conn: psycopg.Connection[Any], search: Search, binding: Binding, drift: Drift) -> int:
    """Queue every drifted id; the normal versioned path then re-reads and rewrites it."""
    ids = [*drift.missing, *drift.differing]
    junk = []
    for doc_id in drift.extra:
        # An id that is not even a valid key cannot go through the outbox (the re-read would
        # fail on it); it gets the same versioned delete, with a seq drawn now.
        try:
            conn.execute(documents.key_check_query(binding), {"ids": [doc_id]})
            ids.append(doc_id)
        except psycopg.errors.DataError:
            junk.append(doc_id)
    if ids:
        conn.execute(outbox.ENQUEUE_IDS, (drift.alias, ids))
    if junk:
        row = conn.execute(outbox.NEXT_SEQ).fetchone()
        assert row is not None
        ops = [Op(binding.alias, binding.alias, doc_id, int(row[0]), None) for doc_id in junk]
        writer = BulkWriter(search, concurrency=1, max_bytes=8 << 20, max_read_age=60.0)
        try:
            writer.write(ops, time.monotonic())
        finally:
            writer.close()
    return len(ids) + len(junk)
