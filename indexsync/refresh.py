"""Schema changes under live sync: detect a table's new shape, and re-queue its documents.

A binding's fingerprint is a digest of the columns and types of its tables. When it
changes (`ALTER TABLE ... ADD/DROP/RENAME COLUMN`, `ALTER COLUMN ... TYPE`), rows that
change from then on are re-read in the new shape anyway; the rows that do not change are
re-queued here, a chunk at a time at a bounded rate, so live changes keep their latency.
The progress lives in `indexsync.binding_state`, so any worker may carry it on.
"""

from __future__ import annotations

from dataclasses import dataclass

from indexsync.bindings import Binding
from indexsync.logs import get_logger
from indexsync.store import Store

log = get_logger(__name__)


def fingerprint(store: Store, binding: Binding) -> str:
    """A digest of the columns and types of the binding's tables."""
    return store.fingerprint(
        [(binding.schema, binding.table), *((d.schema, d.table) for d in binding.depends)]
    )


def observe(store: Store, binding: Binding) -> bool:
    """Record the binding's shape; True when it changed since last seen (a refresh starts)."""
    before, updated = store.observe_fingerprint(binding.alias, fingerprint(store, binding))
    changed = updated and before is not None
    if changed:
        log.info("binding.schema_changed", index=binding.alias, table=binding.display)
    return changed


@dataclass(frozen=True)
class Step:
    """One chunk of a refresh: which index, how many ids, and whether it finished."""

    index: str
    queued: int
    done: bool


def step(store: Store, bindings: dict[str, Binding], limit: int) -> Step | None:
    """Re-queue the next chunk of one refreshing index, in the caller's transaction."""
    refresh = store.next_refresh(sorted(bindings))
    if refresh is None:
        return None
    binding = bindings[refresh.index_name]
    ids = store.key_page(binding, refresh.refresh_after, limit)
    store.enqueue_ids(binding.alias, ids)
    more = len(ids) >= limit
    store.advance_refresh(binding.alias, ids[-1] if ids else refresh.refresh_after, len(ids), more)
    if not more:
        log.info(
            "binding.refresh_done", index=binding.alias, queued=refresh.refresh_done + len(ids)
        )
    return Step(binding.alias, len(ids), not more)
