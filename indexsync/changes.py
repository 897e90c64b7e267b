"""A claimed batch grouped by index: which documents to re-read, which keys to map, TRUNCATEs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from indexsync.rows import KIND_KEY, KIND_TRUNCATE, Change


@dataclass
class IndexWork:
    """What a batch must do for one index."""

    ids: set[str] = field(default_factory=set)
    truncate: bool = False
    # Keys of changed rows of dependent tables, by table, to map to document ids.
    keys: dict[str, set[str]] = field(default_factory=dict)
    # The origins (first seqs) of the changes behind this index's documents: all of them,
    # and those that named each document by id. A waiter compares them with its own.
    first: int | None = None
    last: int | None = None
    by_doc: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Routed documents' routings before a change moved or deleted them: copies to delete.
    moved: dict[str, set[str]] = field(default_factory=dict)

    def span(self, doc_id: str) -> tuple[int, int]:
        """The origins of the changes that may stand behind one document of this batch."""
        if not (self.truncate or self.keys) and doc_id in self.by_doc:
            return self.by_doc[doc_id]
        # A document found through a dependent key or a TRUNCATE may stand for any change.
        assert self.first is not None and self.last is not None
        return self.first, self.last


def plan(changes: Iterable[Change]) -> dict[str, IndexWork]:
    """Group a batch by index, deduplicating ids."""
    work: dict[str, IndexWork] = {}
    for change in changes:
        item = work.setdefault(change.index_name, IndexWork())
        origin = change.origin
        item.first = origin if item.first is None else min(item.first, origin)
        item.last = origin if item.last is None else max(item.last, origin)
        if change.kind == KIND_TRUNCATE:
            item.truncate = True
        elif change.doc_id is None:
            continue
        elif change.kind == KIND_KEY and change.source is not None:
            item.keys.setdefault(change.source, set()).add(change.doc_id)
        else:
            item.ids.add(change.doc_id)
            if change.routing is not None:
                item.moved.setdefault(change.doc_id, set()).add(change.routing)
            low, high = item.by_doc.get(change.doc_id, (origin, origin))
            item.by_doc[change.doc_id] = (min(low, origin), max(high, origin))
    return work
