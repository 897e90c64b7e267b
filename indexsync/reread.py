"""Re-reading one index's documents, in a batch or page by page, with failures isolated.

A row whose document query fails (a bad cast, a division by zero, a function that raises)
is found by bisecting the ids, and only that row is dead-lettered. A binding whose SQL
fails as a whole (a dropped column, a revoked grant) is reported as broken, so that only its
own index stops. Each attempt runs in a savepoint, so the batch's claim survives it. A lost
connection is not isolated: it fails the batch, which is retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from indexsync import documents
from indexsync.bindings import Binding
from indexsync.errors import IndexsyncError, QueryFailed
from indexsync.logs import get_logger
from indexsync.rows import DeadLetter, Document
from indexsync.store import Store

log = get_logger(__name__)


@dataclass(frozen=True)
class RowFailure:
    """A document PostgreSQL could not build, with its error."""

    doc_id: str
    sqlstate: str
    message: str

    def letter(self, alias: str, version: int) -> DeadLetter:
        """The dead letter of this row, with PostgreSQL's text and SQLSTATE."""
        return DeadLetter(
            alias, self.doc_id, version, None, "document_query_failed", self.message, self.sqlstate
        )


class BindingBroken(IndexsyncError):
    """The binding's SQL fails whatever the rows: its index must pause."""

    exit_code = 2

    def __init__(self, alias: str, sqlstate: str, message: str) -> None:
        super().__init__(f"index {alias!r}: its SQL fails: {message} (SQLSTATE {sqlstate})")
        self.alias = alias
        self.sqlstate = sqlstate
        self.message = message


@dataclass
class Reread:
    """The documents that could be read, and the rows that could not."""

    docs: dict[str, Document] = field(default_factory=dict)
    failures: list[RowFailure] = field(default_factory=list)


def probe(store: Store, binding: Binding) -> None:
    """Run every query of the binding on no rows; raise BindingBroken if one fails."""
    try:
        store.probe(documents.fetch_by_ids_query(binding), {"ids": []})
        for dep in binding.depends:
            if dep.expand is not None:
                store.probe(documents.expand_query(binding.key, dep), {"keys": []})
    except QueryFailed as exc:
        raise BindingBroken(binding.alias, exc.sqlstate, exc.detail) from exc


def expand(store: Store, binding: Binding, source: str, keys: set[str]) -> set[str] | None:
    """Document ids of changed dependent rows, or None when the dependency is unknown."""
    dep = binding.dependency(source)
    if dep is None or dep.expand is None:
        return None
    try:
        with store.transaction():
            return store.expand_dependency(binding.key, dep, keys)
    except QueryFailed as exc:
        raise BindingBroken(binding.alias, exc.sqlstate, exc.detail) from exc


def read(store: Store, binding: Binding, ids: Sequence[str]) -> Reread:
    """The documents of `ids`; rows that fail are bisected out and returned as failures."""
    result = Reread()
    try:
        with store.transaction():
            result.docs = store.fetch_documents(binding, ids)
        return result
    except QueryFailed:
        pass
    # Fails on no rows at all: the binding is broken, not a row.
    probe(store, binding)
    _bisect(store, binding, list(ids), result)
    return result


def _bisect(store: Store, binding: Binding, ids: list[str], result: Reread) -> None:
    middle = len(ids) // 2
    for part in (ids[:middle], ids[middle:]):
        if not part:
            continue
        try:
            with store.transaction():
                result.docs.update(store.fetch_documents(binding, part))
        except QueryFailed as exc:
            if len(part) == 1:
                result.failures.append(RowFailure(part[0], exc.sqlstate, exc.detail))
            else:
                _bisect(store, binding, part, result)


def dead_letters(
    alias: str, version: int, failures: Sequence[RowFailure], event: str
) -> list[DeadLetter]:
    """The dead letters of rows PostgreSQL could not build, each logged as `event`."""
    for failure in failures:
        log.warning(
            event,
            index=alias,
            doc_id=failure.doc_id,
            sqlstate=failure.sqlstate,
            error=failure.message,
        )
    return [failure.letter(alias, version) for failure in failures]


@dataclass(frozen=True)
class Page:
    """One page of a key-order scan: the documents built, the rows that failed, and the
    last key the page covered (where the next page starts)."""

    docs: list[Document]
    failures: list[RowFailure]
    last_key: str


def scan_page(store: Store, binding: Binding, after: str | None, size: int) -> Page | None:
    """The next page of documents after the key `after`, or None at the end.

    One statement builds the page. When a row fails it, the page's keys are read alone and
    its documents bisected, so one bad row costs its own document, never the scan: the
    backfill, `reindex` and `verify` isolate bad rows exactly as live sync does.
    """
    try:
        docs = store.scan_page(binding, after, size)
    except QueryFailed:
        ids = store.key_page(binding, after, size)
        if not ids:
            return None
        found = read(store, binding, ids)
        built = [found.docs[i] for i in ids if i in found.docs]
        return Page(built, found.failures, ids[-1])
    if not docs:
        return None
    return Page(docs, [], docs[-1].doc_id)
