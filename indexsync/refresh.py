"""Schema changes under live sync: detect a table's new shape, and re-queue its documents.

A binding's fingerprint is a digest of the columns and types of its tables. When it
changes (`ALTER TABLE ... ADD/DROP/RENAME COLUMN`, `ALTER COLUMN ... TYPE`), rows that
change from then on are re-read in the new shape anyway; the rows that do not change are
re-queued here, a chunk at a time at a bounded rate, so live changes keep their latency.
The progress lives in `indexsync.binding_state`, so any worker may carry it on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from indexsync.bindings import Binding
from indexsync.logs import get_logger

log = get_logger(__name__)

_FINGERPRINT = """
SELECT md5(string_agg(
    c.oid::regclass::text || '.' || a.attname || ':' || format_type(a.atttypid, a.atttypmod),
    ',' ORDER BY u.n, a.attnum))
FROM unnest(%(schemas)s::text[], %(tables)s::text[]) WITH ORDINALITY AS u(s, t, n)
JOIN pg_class c ON c.oid = to_regclass(quote_ident(u.s) || '.' || quote_ident(u.t))
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
"""

# Returns the fingerprint seen before (NULL the first time) and whether it differed.
_OBSERVE = """
WITH old AS (
    SELECT fingerprint FROM indexsync.binding_state WHERE index_name = %(index)s FOR UPDATE
), up AS (
    INSERT INTO indexsync.binding_state AS b (index_name, fingerprint)
    VALUES (%(index)s, %(fingerprint)s)
    ON CONFLICT (index_name) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint, updated_at = now(),
        refreshing = b.refreshing OR b.fingerprint IS NOT NULL,
        refresh_after = CASE WHEN b.fingerprint IS NULL THEN b.refresh_after END,
        refresh_done = CASE WHEN b.fingerprint IS NULL THEN b.refresh_done ELSE 0 END,
        refresh_started_at = CASE WHEN b.fingerprint IS NULL THEN b.refresh_started_at
                                  ELSE now() END
    WHERE b.fingerprint IS DISTINCT FROM EXCLUDED.fingerprint
    RETURNING 1
)
SELECT (SELECT fingerprint FROM old), EXISTS (SELECT FROM up)
"""

_NEXT_REFRESH = """
SELECT index_name, refresh_after, refresh_done FROM indexsync.binding_state
WHERE refreshing AND index_name = ANY(%(indexes)s::text[])
ORDER BY updated_at LIMIT 1 FOR UPDATE SKIP LOCKED
"""

_ADVANCE = """
UPDATE indexsync.binding_state
SET refresh_after = %(after)s, refresh_done = refresh_done + %(count)s,
    refreshing = %(more)s, updated_at = now()
WHERE index_name = %(index)s
"""

_ENQUEUE = """
INSERT INTO indexsync.outbox (index_name, doc_id) SELECT %(index)s, unnest(%(ids)s::text[])
"""


def fingerprint(conn: psycopg.Connection[Any], binding: Binding) -> str:
    """A digest of the columns and types of the binding's tables."""
    tables = [(binding.schema, binding.table), *((d.schema, d.table) for d in binding.depends)]
    row = conn.execute(
        _FINGERPRINT,
        {"schemas": [s for s, _ in tables], "tables": [t for _, t in tables]},
        prepare=True,
    ).fetchone()
    return str(row[0]) if row and row[0] else ""


def observe(conn: psycopg.Connection[Any], binding: Binding) -> bool:
    """Record the binding's shape; True when it changed since last seen (a refresh starts)."""
    current = fingerprint(conn, binding)
    row = conn.execute(_OBSERVE, {"index": binding.alias, "fingerprint": current}).fetchone()
    assert row is not None
    before, updated = row
    changed = bool(updated) and before is not None
    if changed:
        log.info("binding.schema_changed", index=binding.alias, table=binding.display)
    return changed


def _page(binding: Binding, resume: bool) -> sql.Composed:
    key = binding.key
    s = sql.Identifier("s")
    slots = sql.SQL(", ").join(
        sql.SQL("t.{} AS {}").format(sql.Identifier(col), slot)
        for col, slot in zip(key.columns, key.slots(), strict=True)
    )
    return sql.SQL(
        "SELECT {id} FROM (SELECT {slots} FROM {table} AS t) AS s {after} "
        "ORDER BY {order} LIMIT %(limit)s"
    ).format(
        id=key.id_of_slots(s),
        slots=slots,
        table=binding.table_ident,
        after=sql.SQL("WHERE {}").format(key.after(s, sql.SQL("%(after)s")))
        if resume
        else sql.SQL(""),
        order=key.order(s),
    )


@dataclass(frozen=True)
class Step:
    """One chunk of a refresh: which index, how many ids, and whether it finished."""

    index: str
    queued: int
    done: bool


def step(conn: psycopg.Connection[Any], bindings: dict[str, Binding], limit: int) -> Step | None:
    """Re-queue the next chunk of one refreshing index, in the caller's transaction."""
    row = conn.execute(_NEXT_REFRESH, {"indexes": sorted(bindings)}).fetchone()
    if row is None:
        return None
    alias, after, done_before = row
    binding = bindings[alias]
    ids = [
        str(r[0])
        for r in conn.execute(
            _page(binding, after is not None), {"after": after, "limit": limit}, prepare=True
        ).fetchall()
    ]
    if ids:
        conn.execute(_ENQUEUE, {"index": alias, "ids": ids})
    more = len(ids) >= limit
    conn.execute(
        _ADVANCE,
        {"index": alias, "after": ids[-1] if ids else after, "count": len(ids), "more": more},
    )
    if not more:
        log.info("binding.refresh_done", index=alias, queued=done_before + len(ids))
    return Step(alias, len(ids), not more)
