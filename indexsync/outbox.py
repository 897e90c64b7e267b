"""The durable change log: schema, capture triggers, claims and dead letters."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from indexsync.bindings import Binding

SCHEMA = "indexsync"
CHANNEL = "indexsync"
KIND_DOC = "d"
KIND_TRUNCATE = "t"


def schema_sql() -> str:
    """The idempotent DDL of the indexsync schema."""
    return resources.files("indexsync").joinpath("sql/schema.sql").read_text(encoding="utf-8")


def _slug(alias: str) -> str:
    # Identifiers are cut at 63 bytes; a readable prefix plus a hash keeps them unique.
    readable = re.sub(r"[^a-z0-9_]", "_", alias)[:36]
    digest = hashlib.sha1(alias.encode()).hexdigest()[:8]
    return f"{readable}_{digest}"


def function_name(alias: str) -> str:
    """The capture function of one binding, in the indexsync schema."""
    return f"capture_{_slug(alias)}"


def trigger_names(alias: str) -> tuple[str, str]:
    """The row trigger and the truncate trigger of one binding."""
    slug = _slug(alias)
    return f"indexsync_{slug}_row", f"indexsync_{slug}_truncate"


_FUNCTION_BODY: LiteralString = """
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO indexsync.outbox (index_name, doc_id, kind) VALUES ({alias}, NULL, 't');
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO indexsync.outbox (index_name, doc_id) VALUES ({alias}, NEW.{key}::text);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO indexsync.outbox (index_name, doc_id) VALUES ({alias}, OLD.{key}::text);
    ELSIF OLD.{key} IS DISTINCT FROM NEW.{key} THEN
        INSERT INTO indexsync.outbox (index_name, doc_id)
        VALUES ({alias}, OLD.{key}::text), ({alias}, NEW.{key}::text);
    ELSE
        INSERT INTO indexsync.outbox (index_name, doc_id) VALUES ({alias}, NEW.{key}::text);
    END IF;{notify}
    RETURN NULL;
END
"""

# A constant payload lets PostgreSQL fold every NOTIFY of a transaction into one.
_NOTIFY: LiteralString = "\n    PERFORM pg_notify('indexsync', '');"


def function_body(binding: Binding, notify: bool) -> sql.Composed:
    """The PL/pgSQL body of a binding's capture function."""
    return sql.SQL(_FUNCTION_BODY).format(
        alias=sql.Literal(binding.alias),
        key=sql.Identifier(binding.key),
        notify=sql.SQL(_NOTIFY if notify else ""),
    )


@dataclass(frozen=True)
class TriggerDDL:
    """The statements that install one binding's capture."""

    alias: str
    function: str
    body: str
    statements: tuple[sql.Composed, ...]


def trigger_ddl(conn: psycopg.Connection[Any], binding: Binding, notify: bool) -> TriggerDDL:
    """Build the function and trigger statements of one binding."""
    fn = function_name(binding.alias)
    row_trigger, truncate_trigger = trigger_names(binding.alias)
    body = function_body(binding, notify).as_string(conn)
    create_function = sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS {body}"
    ).format(fn=sql.Identifier(SCHEMA, fn), body=sql.Literal(body))
    create_row = sql.SQL(
        "CREATE OR REPLACE TRIGGER {name} AFTER INSERT OR UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION {fn}()"
    ).format(
        name=sql.Identifier(row_trigger), table=binding.table_ident, fn=sql.Identifier(SCHEMA, fn)
    )
    create_truncate = sql.SQL(
        "CREATE OR REPLACE TRIGGER {name} AFTER TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION {fn}()"
    ).format(
        name=sql.Identifier(truncate_trigger),
        table=binding.table_ident,
        fn=sql.Identifier(SCHEMA, fn),
    )
    return TriggerDDL(binding.alias, fn, body, (create_function, create_row, create_truncate))


_EXISTING_FUNCTIONS = """
SELECT p.proname, p.prosrc FROM pg_proc p
WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'indexsync')
"""

_EXISTING_TRIGGERS = """
SELECT t.tgname, n.nspname, c.relname, p.proname
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc p ON p.oid = t.tgfoid
WHERE NOT t.tgisinternal
  AND p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'indexsync')
"""


@dataclass(frozen=True)
class InstalledTrigger:
    """A capture trigger found in the catalog."""

    name: str
    schema: str
    table: str
    function: str


def installed_functions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Capture functions in the catalog, by name, with their source."""
    with conn.cursor() as cur:
        cur.execute(_EXISTING_FUNCTIONS)
        return {name: src for name, src in cur.fetchall()}


def installed_triggers(conn: psycopg.Connection[Any]) -> list[InstalledTrigger]:
    """Every trigger that calls a function of the indexsync schema."""
    with conn.cursor() as cur:
        cur.execute(_EXISTING_TRIGGERS)
        return [InstalledTrigger(*row) for row in cur.fetchall()]


def drop_trigger(trigger: InstalledTrigger) -> sql.Composed:
    """The statement that removes one capture trigger."""
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
        sql.Identifier(trigger.name), sql.Identifier(trigger.schema, trigger.table)
    )


def drop_function(name: str) -> sql.Composed:
    """The statement that removes one capture function."""
    return sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(SCHEMA, name))


BACKFILL = sql.SQL(
    "INSERT INTO indexsync.outbox (index_name, doc_id) SELECT {alias}, {key}::text FROM {table}"
)


def backfill(binding: Binding) -> sql.Composed:
    """Enqueue every current row of a binding, so a new index starts complete."""
    return BACKFILL.format(
        alias=sql.Literal(binding.alias), key=sql.Identifier(binding.key), table=binding.table_ident
    )


SET_META = """
INSERT INTO indexsync.meta (key, value) VALUES (%s, %s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
WHERE meta.value IS DISTINCT FROM EXCLUDED.value
"""
GET_META = "SELECT value FROM indexsync.meta WHERE key = %s"
SCHEMA_EXISTS = "SELECT to_regnamespace('indexsync') IS NOT NULL"
DROP_SCHEMA = "DROP SCHEMA IF EXISTS indexsync CASCADE"


# --- the worker's side -------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One claimed outbox row."""

    seq: int
    index_name: str
    doc_id: str | None
    kind: str


# Claim and acknowledge in one round trip: the rows are deleted now, but the delete only
# becomes visible at commit. A rollback hands them back; SKIP LOCKED lets other workers
# take the rest meanwhile.
CLAIM = """
DELETE FROM indexsync.outbox
WHERE seq IN (
    SELECT seq FROM indexsync.outbox ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
RETURNING seq, index_name, doc_id, kind
"""


def claim(conn: psycopg.Connection[Any], limit: int) -> list[Change]:
    """Claim (and tentatively delete) up to `limit` changes, oldest first."""
    with conn.cursor() as cur:
        cur.execute(CLAIM, {"limit": limit}, prepare=True)
        return [Change(*row) for row in cur.fetchall()]


# In-place rebuilds write through the alias already, so they need no second target.
REBUILDS = "SELECT alias, target, watermark FROM indexsync.rebuilds WHERE NOT in_place"


def rebuild_targets(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Physical indexes being rebuilt, by alias: workers write changes to them too."""
    with conn.cursor() as cur:
        cur.execute(REBUILDS, prepare=True)
        return {alias: target for alias, target, _ in cur.fetchall()}


INSERT_DEAD_LETTER = """
INSERT INTO indexsync.dead_letters (index_name, doc_id, seq, status, error_type, reason)
VALUES (%s, %s, %s, %s, %s, %s)
"""


@dataclass(frozen=True)
class DeadLetter:
    """A document Elasticsearch refused for good."""

    index_name: str
    doc_id: str
    seq: int
    status: int
    error_type: str
    reason: str


def add_dead_letters(conn: psycopg.Connection[Any], letters: Sequence[DeadLetter]) -> None:
    """Record refused documents."""
    if letters:
        with conn.cursor() as cur:
            cur.executemany(
                INSERT_DEAD_LETTER,
                [
                    (d.index_name, d.doc_id, d.seq, d.status, d.error_type, d.reason)
                    for d in letters
                ],
            )


LIST_DEAD_LETTERS = """
SELECT id, index_name, doc_id, seq, status, error_type, reason, failed_at
FROM indexsync.dead_letters
WHERE (%(index)s::text IS NULL OR index_name = %(index)s)
ORDER BY id
LIMIT %(limit)s
"""

# Retrying re-enqueues the ids with a fresh seq: the worker re-reads the row as it is now.
RETRY_DEAD_LETTERS = """
WITH gone AS (
    DELETE FROM indexsync.dead_letters
    WHERE (%(index)s::text IS NULL OR index_name = %(index)s)
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
    RETURNING index_name, doc_id
)
INSERT INTO indexsync.outbox (index_name, doc_id)
SELECT DISTINCT index_name, doc_id FROM gone
"""


def retry_dead_letters(
    conn: psycopg.Connection[Any], index: str | None, ids: Iterable[int] | None
) -> int:
    """Move dead letters back into the outbox; returns how many documents were re-enqueued."""
    with conn.cursor() as cur:
        cur.execute(
            RETRY_DEAD_LETTERS, {"index": index, "ids": list(ids) if ids is not None else None}
        )
        return cur.rowcount


BACKLOG = """
SELECT index_name, count(*), extract(epoch FROM now() - min(created_at))::float8
FROM indexsync.outbox GROUP BY index_name
"""
DEAD_LETTER_COUNTS = "SELECT index_name, count(*) FROM indexsync.dead_letters GROUP BY index_name"
REBUILD_STATUS = """
SELECT alias, target, watermark, in_place, rows_done, rows_total, started_at, updated_at
FROM indexsync.rebuilds
"""

# --- rebuilds --------------------------------------------------------------------------------

GET_REBUILD = """
SELECT target, watermark, in_place, last_key, rows_done FROM indexsync.rebuilds WHERE alias = %s
"""
START_REBUILD = """
INSERT INTO indexsync.rebuilds (alias, target, in_place, rows_total) VALUES (%s, %s, %s, %s)
"""
SET_WATERMARK = "UPDATE indexsync.rebuilds SET watermark = %s, updated_at = now() WHERE alias = %s"
REBUILD_PROGRESS = """
UPDATE indexsync.rebuilds SET last_key = %s, rows_done = %s, updated_at = now() WHERE alias = %s
"""
END_REBUILD = "DELETE FROM indexsync.rebuilds WHERE alias = %s"

# The watermark: a seq drawn now, and the transactions in progress at that moment.
DRAW_WATERMARK = "SELECT nextval('indexsync.change_seq'), pg_current_snapshot()::text"
IN_PROGRESS = """
SELECT count(*) FROM pg_snapshot_xip(%s::pg_snapshot) AS x WHERE pg_xact_status(x) = 'in progress'
"""
CURRENT_SNAPSHOT = "SELECT pg_current_snapshot()::text"
LAST_SEQ = "SELECT last_value FROM indexsync.change_seq"
ENQUEUE_IDS = """
INSERT INTO indexsync.outbox (index_name, doc_id) SELECT %s, unnest(%s::text[])
"""
PENDING_FOR_IDS = """
SELECT EXISTS (SELECT 1 FROM indexsync.outbox WHERE index_name = %s AND doc_id = ANY(%s::text[]))
"""
NEXT_SEQ = "SELECT nextval('indexsync.change_seq')"

REQUEUE = """
INSERT INTO indexsync.outbox (seq, index_name, doc_id)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[])
"""

# A document that landed at version v no longer needs the dead letters of older versions.
CLEAR_DEAD_LETTERS = """
DELETE FROM indexsync.dead_letters d
USING unnest(%s::text[], %s::text[], %s::bigint[]) AS u(index_name, doc_id, version)
WHERE d.index_name = u.index_name AND d.doc_id = u.doc_id AND d.seq < u.version
"""


def requeue(conn: psycopg.Connection[Any], items: dict[tuple[str, str], int]) -> None:
    """Put claimed changes back under their own seq (their claim is being acknowledged)."""
    if items:
        keys = list(items)
        conn.execute(
            REQUEUE,
            ([items[k] for k in keys], [k[0] for k in keys], [k[1] for k in keys]),
        )


def clear_dead_letters(conn: psycopg.Connection[Any], landed: dict[tuple[str, str], int]) -> None:
    """Forget dead letters of documents that have since been written or deleted."""
    if landed:
        keys = list(landed)
        conn.execute(
            CLEAR_DEAD_LETTERS,
            ([k[0] for k in keys], [k[1] for k in keys], [landed[k] for k in keys]),
            prepare=True,
        )
