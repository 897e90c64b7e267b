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


def plan(changes: Iterable[Change]) -> dict[str, IndexWork]:
    """Group a batch by index, deduplicating ids."""
    work: dict[str, IndexWork] = {}
    for change in changes:
        item = work.setdefault(change.index_name, IndexWork())
        if change.kind == KIND_TRUNCATE:
            item.truncate = True
        elif change.doc_id is None:
            continue
        elif change.kind == KIND_KEY and change.source is not None:
            item.keys.setdefault(change.source, set()).add(change.doc_id)
        else:
            item.ids.add(change.doc_id)
    return work
