"""Capture: the trigger functions and triggers that record changes, and their convergence.

Each binding gets one function per captured table, generated with its key columns compiled
in, and triggers that call it. `converge` brings the catalog to exactly what the bindings
ask for; `differences` says what is missing or outdated, for `check`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import LiteralString

from psycopg import sql

from indexsync.bindings import Binding
from indexsync.keys import PINNED_SETTINGS, setting_free
from indexsync.rows import KIND_DOC, KIND_KEY, InstalledTrigger
from indexsync.store import Store

SCHEMA = "indexsync"
CAPTURE_ROW = "row"
CAPTURE_STATEMENT = "statement"


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
_FUNCTION_BODY: LiteralString = """{conflict}
-- indexsync capture, format 4 (security definer, qualified names, notes the write)
DECLARE
    new_id pg_catalog.text;
    old_id pg_catalog.text;
    old_row pg_catalog.jsonb;
    new_row pg_catalog.jsonb;
    old_routing pg_catalog.text;
    new_routing pg_catalog.text;
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN{note}
        {on_truncate}
    ELSE{unchanged}{note}{routings}
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
                    OR old_id COLLATE pg_catalog."C" OPERATOR(pg_catalog.<>) new_id{moved}) THEN
                INSERT INTO indexsync.outbox (index_name, doc_id, kind, source, routing)
                VALUES ({alias}, old_id, {kind}, {source}, old_routing);
            END IF;
        END IF;
    END IF;{notify}
    RETURN NULL;
END
"""

# A routed index (the binding's `routing`): the routing of the row before and after, so that
# a change that moves a document to another routing, or deletes it, records where its copy
# was. The expression is the user's, over the row's columns: it runs with the search path
# pinned (see trigger_ddl), and `use_column` makes a column named like a variable the column.
_ROUTED_CONFLICT: LiteralString = "\n#variable_conflict use_column"
_ROUTINGS: LiteralString = """
        IF TG_OP OPERATOR(pg_catalog.<>) 'INSERT' THEN
            old_routing := (SELECT ({routing})::pg_catalog.text
                            FROM (SELECT OLD.*) AS indexsync_row);
        END IF;
        IF TG_OP OPERATOR(pg_catalog.<>) 'DELETE' THEN
            new_routing := (SELECT ({routing})::pg_catalog.text
                            FROM (SELECT NEW.*) AS indexsync_row);
        END IF;"""
_MOVED: LiteralString = "\n                    OR old_routing IS DISTINCT FROM new_routing"

# An UPDATE that changed nothing the index reads records nothing. `*=` compares the rows'
# binary images, which works for every type (json has no `=`) and names no column. Watched
# columns are looked up by name in the rows' JSON rather than as OLD.col: a PL/pgSQL
# reference to a column would fail every write once the column is dropped, and one in a
# trigger's WHEN clause would forbid dropping it or changing its type (a WHEN clause on
# whole rows names none, but costs single-row writers more than the same test in the
# function: `python -m bench.capture_when`).
# A dropped column reads as NULL on both sides. Values are compared as text, so that
# 1.0 -> 1.00 still counts as a change.
_UNCHANGED: LiteralString = """
        IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' AND OLD OPERATOR(pg_catalog.*=) NEW THEN
            RETURN NULL;
        END IF;"""
# After the whole-row test; each row is turned into JSON once, however many columns.
_UNCHANGED_COLUMNS: LiteralString = """
        IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
            old_row := pg_catalog.to_jsonb(OLD);
            new_row := pg_catalog.to_jsonb(NEW);
            IF ARRAY[{old}] OPERATOR(pg_catalog.=) ARRAY[{new}] THEN
                RETURN NULL;
            END IF;
        END IF;"""

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
-- indexsync capture, format 4 (statement level, security definer, qualified names, notes the write)
BEGIN{note}
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

# Where the session's latest writing transaction began, for `indexsync.wait_for_search`:
# a waiter counts the dead letters of changes from there on as its own. Set once per
# transaction (the first row costs two set_config calls, the others one comparison); a
# session setting, so it outlives the commit, and a rollback takes it back.
_NOTE_WRITE: LiteralString = """
        IF NOT COALESCE(pg_catalog.current_setting('indexsync.write_xact', true)
                OPERATOR(pg_catalog.=) pg_catalog.pg_current_xact_id()::pg_catalog.text, false) THEN
            PERFORM pg_catalog.set_config('indexsync.write_from',
                (SELECT s.last_value FROM indexsync.change_seq s)::pg_catalog.text, false);
            PERFORM pg_catalog.set_config('indexsync.write_xact',
                pg_catalog.pg_current_xact_id()::pg_catalog.text, false);
        END IF;"""

# A constant payload lets PostgreSQL fold every NOTIFY of a transaction into one.
_NOTIFY: LiteralString = "\n    PERFORM pg_catalog.pg_notify('indexsync', '');"
# A statement that changed no row has nothing to announce.
_NOTIFY_IF_FOUND: LiteralString = (
    "\n    IF FOUND THEN\n        PERFORM pg_catalog.pg_notify('indexsync', '');\n    END IF;"
)


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
    # Which UPDATEs are worth recording (Binding.watch): None every one, () those that change
    # the row, otherwise those that change one of these columns.
    changes: tuple[str, ...] | None = None
    # The root table's routing expression of a routed index (None: not routed).
    routing: str | None = None

    def per_statement(self, mode: str) -> bool:
        """Whether this capture uses statement-level triggers under `mode`.

        Transition tables cannot go with `UPDATE OF` column lists, so a dependency that
        watches columns keeps row-level triggers.
        """
        # A routed capture compares each row's routing before and after: row by row.
        return mode == CAPTURE_STATEMENT and self.watch is None and self.routing is None

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
            binding.watch,
            binding.routing,
        )
    ]
    for dep in binding.depends:
        columns, kind = (dep.key, KIND_DOC) if dep.key is not None else ((dep.pk,), KIND_KEY)
        found.append(
            Capture(binding.alias, dep.schema, dep.table, columns, kind, dep.source, dep.columns)
        )
    return found


def _renders_the_same_everywhere(binding: Binding, capture: Capture) -> bool:
    """Whether every id this capture renders is free of session settings."""
    types = binding.key.types
    dep = binding.dependency(capture.source) if capture.source is not None else None
    if dep is not None and capture.kind == KIND_KEY:
        types = (*types, dep.pk_type)
    return setting_free(types)


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
            note=sql.SQL(_NOTE_WRITE),
        )
    unchanged: sql.Composable = sql.SQL("")
    if capture.changes is not None:
        unchanged = sql.SQL(_UNCHANGED)
    if capture.changes:

        def values(row: str) -> sql.Composable:
            return sql.SQL(", ").join(
                sql.SQL("({} OPERATOR(pg_catalog.->) {})::pg_catalog.text").format(
                    sql.SQL(row), sql.Literal(col)
                )
                for col in capture.changes or ()
            )

        columns = sql.SQL(_UNCHANGED_COLUMNS).format(old=values("old_row"), new=values("new_row"))
        unchanged = sql.Composed([unchanged, columns])
    routed = capture.routing is not None
    return sql.SQL(_FUNCTION_BODY).format(
        **common,
        unchanged=unchanged,
        notify=sql.SQL(_NOTIFY if notify else ""),
        note=sql.SQL(_NOTE_WRITE),
        conflict=sql.SQL(_ROUTED_CONFLICT if routed else ""),
        routings=sql.SQL(_ROUTINGS).format(routing=sql.SQL(capture.routing or ""))
        if routed
        else sql.SQL(""),
        moved=sql.SQL(_MOVED if routed else ""),
    )


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
    store: Store, binding: Binding, notify: bool, mode: str = CAPTURE_ROW
) -> list[TriggerDDL]:
    """Build the function and trigger statements of every capture of one binding."""
    result = []
    for capture in captures(binding):
        fn = sql.Identifier(SCHEMA, capture.function)
        table = sql.Identifier(capture.schema, capture.table)
        body = store.render(function_body(binding, capture, notify, mode))
        pinned: sql.Composable = sql.SQL("")
        if not _renders_the_same_everywhere(binding, capture):
            # The application's session must not change the id's text (see keys.py); the
            # marker in the body makes an install converge older functions to this one.
            settings = ", ".join(f"{k}={v}" for k, v in PINNED_SETTINGS.items())
            body = f"\n-- settings pinned: {settings}{body}"
            pinned = sql.SQL("").join(
                sql.SQL(" SET {} = {}").format(sql.SQL(name), sql.Literal(value))
                for name, value in PINNED_SETTINGS.items()
            )
        if capture.routing is not None:
            # The routing expression is the user's: a caller's search path must not steer it.
            pinned = sql.Composed(
                [pinned, sql.SQL(" SET search_path = pg_catalog, {}").format(
                    sql.Identifier(capture.schema)
                )]
            )  # fmt: skip
        create_function = sql.SQL(
            # SECURITY DEFINER: roles that write the tables need no rights on the indexsync
            # schema. The body names everything with its schema (see _FUNCTION_BODY).
            "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql "
            "SECURITY DEFINER{pinned} AS {body}"
        ).format(fn=fn, pinned=pinned, body=sql.Literal(body))
        triggers = []
        for level, each, what, referencing in _trigger_events(capture, mode):
            definition = sql.SQL(
                "AFTER {what} ON {table} {referencing}FOR EACH {each} EXECUTE FUNCTION {fn}()"
            ).format(
                what=what, table=table, referencing=sql.SQL(referencing), each=sql.SQL(each), fn=fn
            )
            text = store.render(definition)
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


def drop_trigger(trigger: InstalledTrigger) -> sql.Composed:
    """The statement that removes one capture trigger."""
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
        sql.Identifier(trigger.name), sql.Identifier(trigger.schema, trigger.table)
    )


def drop_function(name: str) -> sql.Composed:
    """The statement that removes one capture function."""
    return sql.SQL("DROP FUNCTION IF EXISTS {}() CASCADE").format(sql.Identifier(SCHEMA, name))


def desired(
    store: Store, bindings: dict[str, Binding], notify: bool, mode: str
) -> list[TriggerDDL]:
    """Every function and trigger the bindings ask for."""
    return [
        item for binding in bindings.values() for item in trigger_ddl(store, binding, notify, mode)
    ]


@dataclass
class Convergence:
    """What `converge` changed."""

    statements: int = 0
    dropped_triggers: list[str] = field(default_factory=list)


def converge(store: Store, bindings: dict[str, Binding], notify: bool, mode: str) -> Convergence:
    """Create what is missing, replace what differs, drop what no binding asks for."""
    done = Convergence()
    functions = store.capture_functions()
    triggers = store.capture_triggers()
    present = {(t.name, t.schema, t.table) for t in triggers}
    wanted: set[tuple[str, str, str]] = set()
    wanted_ddl = desired(store, bindings, notify, mode)
    for item in wanted_ddl:
        if functions.get(item.function) != item.body:
            store.run(item.create_function)
            done.statements += 1
        for name, schema, table, statement in item.triggers:
            wanted.add((name, schema, table))
            if (name, schema, table) not in present:
                store.run(statement)
                done.statements += 1
    # Functions of removed bindings go with their triggers (a cascade, which needs no
    # ownership of the tables); triggers of an older definition of a kept one go by name.
    wanted_functions = {item.function for item in wanted_ddl}
    for name in functions:
        if name.startswith("capture_") and name not in wanted_functions:
            store.run(drop_function(name))
            done.statements += 1
    for trigger in triggers:
        if (trigger.name, trigger.schema, trigger.table) in wanted:
            continue
        if trigger.function in wanted_functions:
            store.run(drop_trigger(trigger))
            done.statements += 1
        done.dropped_triggers.append(f"{trigger.schema}.{trigger.table}.{trigger.name}")
    return done


def differences(store: Store, bindings: dict[str, Binding]) -> list[str]:
    """What is missing or outdated in the catalog, as install's recorded choices expect it."""
    notify = store.get_meta("notify") == "true"
    mode = store.get_meta("capture") or CAPTURE_ROW
    functions = store.capture_functions()
    triggers = {(t.name, t.schema, t.table) for t in store.capture_triggers()}
    problems = []
    for item in desired(store, bindings, notify, mode):
        if functions.get(item.function) != item.body:
            problems.append(
                f"index {item.alias!r}: capture function {item.function} is missing or "
                "outdated: run `indexsync install`"
            )
        for name, schema, table, _ in item.triggers:
            if (name, schema, table) not in triggers:
                problems.append(
                    f"index {item.alias!r}: trigger {name} on {schema}.{table} is missing or "
                    "outdated: run `indexsync install`"
                )
    return problems
