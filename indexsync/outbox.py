"""The durable change log: schema, capture triggers, claims and dead letters."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from indexsync.bindings import Binding

SCHEMA = "indexsync"
CHANNEL = "indexsync"
KIND_DOC = "d"
KIND_TRUNCATE = "t"
KIND_KEY = "k"


def _slug(name: str) -> str:
    # Identifiers are cut at 63 bytes; a readable prefix plus a hash keeps them unique.
    readable = re.sub(r"[^a-z0-9_]", "_", name.lower())[:32]
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{readable}_{digest}"


# One function per captured table and index. Root rows record their own key; a dependent
# table with `key` records the document id it holds; one with `sql` records its own key
# (kind 'k'), which the worker maps to document ids. {col} is the recorded column.
#
# The function is SECURITY DEFINER, and every name in it is schema-qualified (tables,
# types, operators, functions), so the caller's search_path cannot steer it. That replaces
# a `SET search_path` clause, which makes PostgreSQL save and restore the setting on every
# row written (`make bench-capture` compares the two).
# Ids are compared as text in the "C" collation: two ids are the same document exactly
# when their text is the same, whatever the key column's collation says.
_FUNCTION_BODY: LiteralString = """
-- indexsync capture, format 3 (security definer, qualified names)
DECLARE
    new_id pg_catalog.text;
    old_id pg_catalog.text;
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
        {on_truncate}
    ELSE
        IF TG_OP OPERATOR(pg_catalog.<>) 'DELETE' THEN
            new_id := {new_id};
            IF new_id IS NOT NULL THEN
                INSERT INTO indexsync.outbox (index_name, doc_id, kind, source)
                VALUES ({alias}, new_id, {kind}, {source});
            END IF;
        END IF;
        IF TG_OP OPERATOR(pg_catalog.<>) 'INSERT' THEN
            old_id := {old_id};
            IF old_id IS NOT NULL AND (new_id IS NULL
                    OR old_id COLLATE pg_catalog."C" OPERATOR(pg_catalog.<>) new_id) THEN
                INSERT INTO indexsync.outbox (index_name, doc_id, kind, source)
                VALUES ({alias}, old_id, {kind}, {source});
            END IF;
        END IF;
    END IF;{notify}
    RETURN NULL;
END
"""

_TRUNCATE_MARKER: LiteralString = (
    "INSERT INTO indexsync.outbox (index_name, doc_id, kind) VALUES ({alias}, NULL, 't');"
)
# A dependent table emptied: every document may have changed.
_TRUNCATE_ALL: LiteralString = (
    "INSERT INTO indexsync.outbox (index_name, doc_id) SELECT {alias}, {key} FROM {table};"
)

# Statement-level capture (`INDEXSYNC_CAPTURE=statement`): one call per statement, which
# appends the ids of its transition tables in one INSERT ... SELECT. UNION keeps an id once
# when an UPDATE did not change it, and records both ids when it did. {distinct} folds the
# rows of a dependent table that name the same document.
_STATEMENT_BODY: LiteralString = """
-- indexsync capture, format 3 (statement level, security definer, qualified names)
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
        {on_truncate}
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        INSERT INTO indexsync.outbox (index_name, doc_id, kind, source)
        SELECT {distinct}{alias}, u.id, {kind}, {source}
        FROM (SELECT {n_id} FROM indexsync_new n) AS u (id) WHERE u.id IS NOT NULL;
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        INSERT INTO indexsync.outbox (index_name, doc_id, kind, source)
        SELECT {distinct}{alias}, u.id, {kind}, {source}
        FROM (SELECT {o_id} FROM indexsync_old o) AS u (id) WHERE u.id IS NOT NULL;
    ELSE
        INSERT INTO indexsync.outbox (index_name, doc_id, kind, source)
        SELECT {alias}, u.id, {kind}, {source} FROM (
            SELECT {n_id} FROM indexsync_new n
            UNION SELECT {o_id} FROM indexsync_old o
        ) AS u (id)
        WHERE u.id IS NOT NULL;
    END IF;{notify}
    RETURN NULL;
END
"""

# A constant payload lets PostgreSQL fold every NOTIFY of a transaction into one.
_NOTIFY: LiteralString = "\n    PERFORM pg_catalog.pg_notify('indexsync', '');"
# A statement that changed no row has nothing to announce.
_NOTIFY_IF_FOUND: LiteralString = (
    "\n    IF FOUND THEN\n        PERFORM pg_catalog.pg_notify('indexsync', '');\n    END IF;"
)

CAPTURE_ROW = "row"
CAPTURE_STATEMENT = "statement"


@dataclass(frozen=True)
class Capture:
    """One captured table of one index: what its trigger function records."""

    alias: str
    schema: str
    table: str
    columns: tuple[str, ...]
    kind: str
    source: str | None
    watch: tuple[str, ...] | None

    def per_statement(self, mode: str) -> bool:
        """Whether this capture uses statement-level triggers under `mode`.

        Transition tables cannot go with `UPDATE OF` column lists, so a dependency that
        watches columns keeps row-level triggers.
        """
        return mode == CAPTURE_STATEMENT and self.watch is None

    @property
    def function(self) -> str:
        """The capture function's name in the indexsync schema."""
        name = self.alias if self.source is None else f"{self.alias}|{self.source}"
        return f"capture_{_slug(name)}"


def captures(binding: Binding) -> list[Capture]:
    """The root table's capture, then one per dependent table."""
    found = [
        Capture(
            binding.alias,
            binding.schema,
            binding.table,
            binding.key.columns,
            KIND_DOC,
            None,
            None,
        )
    ]
    for dep in binding.depends:
        columns, kind = (dep.key, KIND_DOC) if dep.key is not None else ((dep.pk,), KIND_KEY)
        found.append(
            Capture(binding.alias, dep.schema, dep.table, columns, kind, dep.source, dep.columns)
        )
    return found


def function_body(
    binding: Binding, capture: Capture, notify: bool, mode: str = CAPTURE_ROW
) -> sql.Composed:
    """The PL/pgSQL body of one capture function."""
    alias = sql.Literal(binding.alias)
    on_truncate = (
        sql.SQL(_TRUNCATE_MARKER).format(alias=alias)
        if capture.source is None
        else sql.SQL(_TRUNCATE_ALL).format(
            alias=alias,
            key=binding.key.id_of_columns(binding.table_ident, binding.key.columns),
            table=binding.table_ident,
        )
    )
    key = binding.key

    def row_id(rel: str) -> sql.Composable:
        return key.id_or_null(sql.SQL(rel), capture.columns)

    common: dict[str, sql.Composable] = {
        "on_truncate": on_truncate,
        "alias": alias,
        "new_id": row_id("NEW"),
        "old_id": row_id("OLD"),
        "n_id": row_id("n"),
        "o_id": row_id("o"),
        "kind": sql.Literal(capture.kind),
        "source": sql.Literal(capture.source),
    }
    if capture.per_statement(mode):
        return sql.SQL(_STATEMENT_BODY).format(
            **common,
            distinct=sql.SQL("DISTINCT " if capture.source is not None else ""),
            notify=sql.SQL(_NOTIFY_IF_FOUND if notify else ""),
        )
    return sql.SQL(_FUNCTION_BODY).format(**common, notify=sql.SQL(_NOTIFY if notify else ""))


@dataclass(frozen=True)
class TriggerDDL:
    """The statements that install one capture: its function, then its triggers."""

    alias: str
    function: str
    body: str
    create_function: sql.Composed
    # (trigger name, schema, table, statement); the name carries a digest of the
    # definition, so a changed definition shows up as a missing trigger.
    triggers: tuple[tuple[str, str, str, sql.Composed], ...]

    @property
    def statements(self) -> tuple[sql.Composed, ...]:
        """Every statement, in order."""
        return (self.create_function, *(t[3] for t in self.triggers))


def trigger_ddl(
    conn: psycopg.Connection[Any], binding: Binding, notify: bool, mode: str = CAPTURE_ROW
) -> list[TriggerDDL]:
    """Build the function and trigger statements of every capture of one binding."""
    result = []
    for capture in captures(binding):
        fn = sql.Identifier(SCHEMA, capture.function)
        table = sql.Identifier(capture.schema, capture.table)
        body = function_body(binding, capture, notify, mode).as_string(conn)
        create_function = sql.SQL(
            # SECURITY DEFINER: roles that write the tables need no rights on the indexsync
            # schema. The body names everything with its schema (see _FUNCTION_BODY).
            "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql "
            "SECURITY DEFINER AS {body}"
        ).format(fn=fn, body=sql.Literal(body))
        triggers = []
        for level, each, what, referencing in _trigger_events(capture, mode):
            definition = sql.SQL(
                "AFTER {what} ON {table} {referencing}FOR EACH {each} EXECUTE FUNCTION {fn}()"
            ).format(
                what=what, table=table, referencing=sql.SQL(referencing), each=sql.SQL(each), fn=fn
            )
            text = definition.as_string(conn)
            # At most 63 bytes, or PostgreSQL would cut the name and never match it again.
            readable = re.sub(r"[^a-z0-9_]", "_", capture.table.lower())[:20]
            name = f"indexsync_{readable}_{_digest(capture.function)}_{level}_{_digest(text)}"
            statement = sql.SQL("CREATE OR REPLACE TRIGGER {} {}").format(
                sql.Identifier(name), definition
            )
            triggers.append((name, capture.schema, capture.table, statement))
        result.append(
            TriggerDDL(binding.alias, capture.function, body, create_function, tuple(triggers))
        )
    return result


def _trigger_events(
    capture: Capture, mode: str
) -> list[tuple[str, str, sql.Composable, LiteralString]]:
    """(name tag, ROW or STATEMENT, events, transition tables) of each trigger."""
    truncate = ("t", "STATEMENT", sql.SQL("TRUNCATE"), "")
    if capture.per_statement(mode):
        return [
            ("i", "STATEMENT", sql.SQL("INSERT"), "REFERENCING NEW TABLE AS indexsync_new "),
            (
                "u",
                "STATEMENT",
                sql.SQL("UPDATE"),
                "REFERENCING OLD TABLE AS indexsync_old NEW TABLE AS indexsync_new ",
            ),
            ("d", "STATEMENT", sql.SQL("DELETE"), "REFERENCING OLD TABLE AS indexsync_old "),
            truncate,
        ]
    events: sql.Composable = sql.SQL("INSERT OR UPDATE OR DELETE")
    if capture.watch is not None:
        events = sql.SQL("INSERT OR DELETE OR UPDATE OF {}").format(
            sql.SQL(", ").join(map(sql.Identifier, capture.watch))
        )
    return [("r", "ROW", events, ""), truncate]


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


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
    return sql.SQL("DROP FUNCTION IF EXISTS {}() CASCADE").format(sql.Identifier(SCHEMA, name))


BACKFILL = sql.SQL(
    "INSERT INTO indexsync.outbox (index_name, doc_id) SELECT {alias}, {key} FROM {table}"
)


def backfill(binding: Binding) -> sql.Composed:
    """Enqueue every current row of a binding, so a new index starts complete."""
    return BACKFILL.format(
        alias=sql.Literal(binding.alias),
        key=binding.key.id_of_columns(binding.table_ident, binding.key.columns),
        table=binding.table_ident,
    )


SET_META = """
INSERT INTO indexsync.meta (key, value) VALUES (%s, %s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
WHERE meta.value IS DISTINCT FROM EXCLUDED.value
"""
GET_META = "SELECT value FROM indexsync.meta WHERE key = %s"
CREATE_SCHEMA = "CREATE SCHEMA indexsync"
CREATE_SCHEMA_IF_MISSING = "CREATE SCHEMA IF NOT EXISTS indexsync"
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
    source: str | None


# Claim and acknowledge in one round trip: the rows are deleted now, but the delete only
# becomes visible at commit. A rollback hands them back; SKIP LOCKED lets other workers
# take the rest meanwhile.
# Changes of paused indexes (a broken binding, a blocked index) stay where they are.
CLAIM = """
DELETE FROM indexsync.outbox
WHERE seq IN (
    SELECT seq FROM indexsync.outbox
    WHERE index_name <> ALL(%(paused)s::text[])
    ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
RETURNING seq, index_name, doc_id, kind, source
"""


def claim(conn: psycopg.Connection[Any], limit: int, paused: Sequence[str] = ()) -> list[Change]:
    """Claim (and tentatively delete) up to `limit` changes, oldest first."""
    with conn.cursor() as cur:
        cur.execute(CLAIM, {"limit": limit, "paused": list(paused)}, prepare=True)
        return [Change(*row) for row in cur.fetchall()]


HAS_PENDING = """
SELECT EXISTS (SELECT FROM indexsync.outbox WHERE index_name <> ALL(%(paused)s::text[]))
"""


def has_pending(conn: psycopg.Connection[Any], paused: Sequence[str] = ()) -> bool:
    """Whether the outbox holds any row of an unpaused index, claimed by another worker or not."""
    with conn.cursor() as cur:
        cur.execute(HAS_PENDING, {"paused": list(paused)}, prepare=True)
        row = cur.fetchone()
        return bool(row and row[0])


# A claimed change handed back as it was: its kind and source matter (a dependent key, a
# TRUNCATE marker), its seq does not (the version is drawn per batch).
REQUEUE_CHANGES = """
INSERT INTO indexsync.outbox (index_name, doc_id, kind, source)
SELECT * FROM unnest(%s::text[], %s::text[], %s::"char"[], %s::text[])
"""


def requeue_changes(conn: psycopg.Connection[Any], changes: Sequence[Change]) -> None:
    """Put claimed changes back in the outbox unchanged (their claim is being acknowledged)."""
    if changes:
        conn.execute(
            REQUEUE_CHANGES,
            (
                [c.index_name for c in changes],
                [c.doc_id for c in changes],
                [c.kind for c in changes],
                [c.source for c in changes],
            ),
        )


SET_PAUSED = """
INSERT INTO indexsync.binding_state AS b (index_name, paused_reason, paused_at)
VALUES (%(index)s, %(reason)s, now())
ON CONFLICT (index_name) DO UPDATE
SET paused_reason = EXCLUDED.paused_reason, updated_at = now(),
    paused_at = CASE WHEN b.paused_reason IS NULL THEN now() ELSE b.paused_at END
WHERE b.paused_reason IS DISTINCT FROM EXCLUDED.paused_reason
"""
CLEAR_PAUSED = """
UPDATE indexsync.binding_state SET paused_reason = NULL, paused_at = NULL, updated_at = now()
WHERE index_name = %(index)s AND paused_reason IS NOT NULL
"""


def set_paused(conn: psycopg.Connection[Any], index: str, reason: str | None) -> None:
    """Record why an index is paused (None: it is not)."""
    if reason is None:
        conn.execute(CLEAR_PAUSED, {"index": index})
    else:
        conn.execute(SET_PAUSED, {"index": index, "reason": reason})


# The batch's version, drawn after its claim and before its re-read, and the rebuilds in
# progress (in-place rebuilds write through the alias already, so they need no second target).
BATCH_CONTEXT = """
SELECT nextval('indexsync.change_seq'),
       ARRAY(SELECT alias FROM indexsync.rebuilds WHERE NOT in_place ORDER BY alias),
       ARRAY(SELECT target FROM indexsync.rebuilds WHERE NOT in_place ORDER BY alias)
"""


def batch_context(conn: psycopg.Connection[Any]) -> tuple[int, dict[str, str]]:
    """The version of this batch's writes, and the rebuild target of each alias."""
    with conn.cursor() as cur:
        cur.execute(BATCH_CONTEXT, prepare=True)
        row = cur.fetchone()
        assert row is not None
        return int(row[0]), dict(zip(row[1], row[2], strict=True))


INSERT_DEAD_LETTER = """
INSERT INTO indexsync.dead_letters (index_name, doc_id, seq, status, error_type, reason, sqlstate)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""


@dataclass(frozen=True)
class DeadLetter:
    """A document the search server refused for good, or PostgreSQL could not build."""

    index_name: str
    doc_id: str
    seq: int
    status: int | None
    error_type: str
    reason: str
    sqlstate: str | None = None


def add_dead_letters(conn: psycopg.Connection[Any], letters: Sequence[DeadLetter]) -> None:
    """Record refused documents."""
    if letters:
        with conn.cursor() as cur:
            cur.executemany(
                INSERT_DEAD_LETTER,
                [
                    (d.index_name, d.doc_id, d.seq, d.status, d.error_type, d.reason, d.sqlstate)
                    for d in letters
                ],
            )


LIST_DEAD_LETTERS = """
SELECT id, index_name, doc_id, seq, status, error_type, reason, failed_at, sqlstate
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
PROGRESS = "SELECT index_name, last_success_at FROM indexsync.progress"
RECORD_PROGRESS = """
INSERT INTO indexsync.progress (index_name, last_success_at)
SELECT * FROM unnest(%s::text[], %s::timestamptz[])
ON CONFLICT (index_name) DO UPDATE SET last_success_at = EXCLUDED.last_success_at
WHERE progress.last_success_at < EXCLUDED.last_success_at
"""
DEAD_LETTER_COUNTS = "SELECT index_name, count(*) FROM indexsync.dead_letters GROUP BY index_name"
BINDING_STATUS = """
SELECT index_name, paused_reason, paused_at, refreshing, refresh_done FROM indexsync.binding_state
"""
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
# install's backfill of a new index: an in-place rebuild whose watermark is drawn later.
START_BACKFILL = """
INSERT INTO indexsync.rebuilds (alias, target, in_place) VALUES (%s, %s, true)
ON CONFLICT (alias) DO NOTHING
"""
UNFINISHED_BACKFILLS = "SELECT alias FROM indexsync.rebuilds WHERE in_place"

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
INSERT INTO indexsync.outbox (index_name, doc_id) SELECT * FROM unnest(%s::text[], %s::text[])
"""

# A document that landed at version v no longer needs the dead letters of older versions.
CLEAR_DEAD_LETTERS = """
DELETE FROM indexsync.dead_letters d
USING unnest(%s::text[], %s::text[], %s::bigint[]) AS u(index_name, doc_id, version)
WHERE d.index_name = u.index_name AND d.doc_id = u.doc_id AND d.seq < u.version
"""


def requeue(conn: psycopg.Connection[Any], items: set[tuple[str, str]]) -> None:
    """Put documents back in the outbox (their claim is being acknowledged)."""
    if items:
        keys = sorted(items)
        conn.execute(REQUEUE, ([k[0] for k in keys], [k[1] for k in keys]))


def clear_dead_letters(conn: psycopg.Connection[Any], landed: dict[tuple[str, str], int]) -> None:
    """Forget dead letters of documents that have since been written or deleted."""
    if landed:
        keys = list(landed)
        conn.execute(
            CLEAR_DEAD_LETTERS,
            ([k[0] for k in keys], [k[1] for k in keys], [landed[k] for k in keys]),
            prepare=True,
        )
