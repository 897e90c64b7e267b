"""Install, check and uninstall: the indexsync schema, the capture triggers and the indexes."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import psycopg
from psycopg import sql

from indexsync import db, documents, migrations, outbox, refresh
from indexsync.bindings import Binding, BindingsFile, load_mapping, resolve
from indexsync.errors import ConfigError, IndexsyncError, SearchError
from indexsync.logs import get_logger
from indexsync.search import Search
from indexsync.settings import Settings

log = get_logger(__name__)

_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '30s'"
_MAX_GENERATIONS = 1000


def physical_name(alias: str, generation: int) -> str:
    """The physical index of an alias's n-th generation."""
    return f"{alias}-{generation}"


def index_body(mapping: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The creation body: the user's mapping plus the tombstone lifetime versioning relies on."""
    body = {key: value for key, value in mapping.items()}
    index_settings = dict(body.get("settings") or {})
    nested = index_settings.get("index")
    user_set = (
        "index.gc_deletes" in index_settings
        or "gc_deletes" in index_settings
        or (isinstance(nested, dict) and "gc_deletes" in nested)
    )
    if not user_set:
        index_settings["index.gc_deletes"] = f"{settings.gc_deletes}s"
    body["settings"] = index_settings
    return body


def create_generation(
    search: Search, alias: str, body: dict[str, Any], *, attach_alias: bool, start: int = 1
) -> str:
    """Create the next free `<alias>-<n>` index; returns its name."""
    for generation in range(start, start + _MAX_GENERATIONS):
        name = physical_name(alias, generation)
        if search.exists(name):
            continue
        search.create_index(name, body, alias if attach_alias else None)
        return name
    raise ConfigError(
        f"index {alias!r}: no free physical index name after {_MAX_GENERATIONS} tries"
    )


@dataclass
class InstallReport:
    """What install did."""

    created_indexes: list[str] = field(default_factory=list)
    statements: int = 0
    backfilled: dict[str, int] = field(default_factory=dict)
    dropped_triggers: list[str] = field(default_factory=list)
    migrations: list[int] = field(default_factory=list)
    created_indexes_by: dict[str, str] = field(default_factory=dict)


def _mappings(settings: Settings, spec: BindingsFile) -> dict[str, dict[str, Any]]:
    return {alias: load_mapping(settings.mappings_dir, alias) for alias in spec.indexes}


def _desired_ddl(
    conn: psycopg.Connection[Any], bindings: dict[str, Binding], notify: bool, capture: str
) -> list[outbox.TriggerDDL]:
    return [
        item
        for binding in bindings.values()
        for item in outbox.trigger_ddl(conn, binding, notify, capture)
    ]


def _meta(settings: Settings) -> list[tuple[str, str]]:
    # What install decided, so that `check` compares against the same choices.
    return [("notify", str(settings.notify).lower()), ("capture", settings.capture)]


def print_sql(settings: Settings, spec: BindingsFile, write: Callable[[str], object]) -> None:
    """Write the DDL install would apply, for teams that run migrations themselves."""
    conn = db.connect(settings, autocommit=True, role="install")
    try:
        with db.translated(), conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            bindings = resolve(conn, spec, settings.config)
            ddl = _desired_ddl(conn, bindings, settings.notify, settings.capture)
            version = migrations.installed_version(conn)
            write("BEGIN;\n")
            write(f"{outbox.CREATE_SCHEMA_IF_MISSING};\n")
            write(migrations.script(conn, version))
            for key, value in _meta(settings):
                write(
                    sql.SQL(outbox.SET_META.replace("%s", "{}"))
                    .format(sql.Literal(key), sql.Literal(value))
                    .as_string(conn)
                    + ";\n"
                )
            for item in ddl:
                write(f"\n-- index {item.alias}\n")
                for statement in item.statements:
                    write(statement.as_string(conn) + ";\n")
            write("COMMIT;\n")
    finally:
        conn.close()


def install(
    settings: Settings,
    spec: BindingsFile,
    search: Search,
    *,
    backfill: bool = True,
    stream: TextIO | None = None,
) -> InstallReport:
    """Create what is missing, converge what differs; a second run changes nothing.

    The schema, the triggers and the indexes come in one short transaction. The existing
    rows of a new index are then written by the same lock-free keyset scan at a watermark
    that `reindex --in-place` uses: no lock is held while it runs, the application's writes
    go on, and a killed backfill resumes where it stopped on the next `install`.
    """
    mappings = _mappings(settings, spec)
    search.ping()
    report = InstallReport()
    conn = db.connect(settings, autocommit=True, role="install")
    try:
        try:
            with db.translated(), conn.transaction():
                conn.execute(_LOCK_TIMEOUT)
                # Only when missing: CREATE SCHEMA IF NOT EXISTS checks the CREATE right on
                # the database even when the schema exists, and a DBA may have made it.
                exists = conn.execute(outbox.SCHEMA_EXISTS).fetchone()
                if not exists or not exists[0]:
                    conn.execute(outbox.CREATE_SCHEMA)
                for step in migrations.apply_pending(conn):
                    report.migrations.append(step.number)
                    log.info("install.migrated", version=step.number, name=step.name)
                bindings = resolve(conn, spec, settings.config)
                new_aliases = _ensure_indexes(settings, search, bindings, mappings, report)
                _converge_triggers(conn, bindings, settings.notify, settings.capture, report)
                for key, value in _meta(settings):
                    conn.execute(outbox.SET_META, (key, value))
                for binding in bindings.values():
                    # A table changed since last seen: its documents are refreshed by workers.
                    refresh.observe(conn, binding)
                if backfill:
                    # Recorded with the triggers, so a backfill killed before its first page
                    # still resumes on the next run.
                    for alias in new_aliases:
                        conn.execute(
                            outbox.START_BACKFILL, (alias, report.created_indexes_by[alias])
                        )
                unfinished = {
                    str(row[0]) for row in conn.execute(outbox.UNFINISHED_BACKFILLS).fetchall()
                }
        except BaseException:
            # Nothing half-applied: the transaction rolled back, so drop the indexes we made.
            for name in report.created_indexes:
                try:
                    search.delete_index(name)
                except IndexsyncError:
                    log.warning("install.cleanup_failed", index=name)
            report.created_indexes.clear()
            raise
        if backfill:
            _backfill(settings, search, conn, bindings, unfinished, report, stream)
    finally:
        conn.close()
    log.info(
        "install.done",
        created_indexes=report.created_indexes,
        statements=report.statements,
        backfilled=report.backfilled,
        dropped_triggers=report.dropped_triggers,
    )
    return report


def _backfill(
    settings: Settings,
    search: Search,
    conn: psycopg.Connection[Any],
    bindings: dict[str, Binding],
    aliases: set[str],
    report: InstallReport,
    stream: TextIO | None,
) -> None:
    # Imported here: reindex builds on install's index helpers.
    from indexsync.reindex import Reindexer

    todo = [bindings[alias] for alias in sorted(aliases) if alias in bindings]
    if not todo:
        return
    reindexer = Reindexer(settings, search, stream=stream)
    try:
        with db.translated():
            for binding in todo:
                result = reindexer.reindex(conn, binding, in_place=True, restart=False)
                report.backfilled[binding.alias] = result.rows
    finally:
        reindexer.close()


def _ensure_indexes(
    settings: Settings,
    search: Search,
    bindings: dict[str, Binding],
    mappings: dict[str, dict[str, Any]],
    report: InstallReport,
) -> list[str]:
    created = []
    for alias in bindings:
        if search.alias_targets(alias):
            continue
        if search.exists(alias):
            raise ConfigError(
                f"{settings.config}: [indexes.{alias}]: {alias!r} is an existing physical index, "
                "not an alias; indexsync serves each index through an alias of that name. "
                "Rename the binding, or reindex that index into a new one and delete it."
            )
        body = index_body(mappings[alias], settings)
        try:
            name = create_generation(search, alias, body, attach_alias=True)
        except SearchError as exc:
            path = settings.mappings_dir / f"{alias}.json"
            raise ConfigError(f"{path}: Elasticsearch refused index {alias!r}: {exc}") from exc
        report.created_indexes.append(name)
        report.created_indexes_by[alias] = name
        created.append(alias)
        log.info("install.index_created", alias=alias, index=name)
    return created


def _converge_triggers(
    conn: psycopg.Connection[Any],
    bindings: dict[str, Binding],
    notify: bool,
    capture: str,
    report: InstallReport,
) -> None:
    functions = outbox.installed_functions(conn)
    triggers = outbox.installed_triggers(conn)
    present = {(t.name, t.schema, t.table) for t in triggers}
    wanted: set[tuple[str, str, str]] = set()
    desired = _desired_ddl(conn, bindings, notify, capture)
    for item in desired:
        if functions.get(item.function) != item.body:
            conn.execute(item.create_function)
            report.statements += 1
        for name, schema, table, statement in item.triggers:
            wanted.add((name, schema, table))
            if (name, schema, table) not in present:
                conn.execute(statement)
                report.statements += 1
    # Functions of removed bindings go with their triggers (a cascade, which needs no
    # ownership of the tables); triggers of an older definition of a kept one go by name.
    wanted_functions = {item.function for item in desired}
    for name in functions:
        if name.startswith("capture_") and name not in wanted_functions:
            conn.execute(outbox.drop_function(name))
            report.statements += 1
    for trigger in triggers:
        if (trigger.name, trigger.schema, trigger.table) in wanted:
            continue
        if trigger.function in wanted_functions:
            conn.execute(outbox.drop_trigger(trigger))
            report.statements += 1
        report.dropped_triggers.append(f"{trigger.schema}.{trigger.table}.{trigger.name}")


def uninstall(settings: Settings) -> list[str]:
    """Remove the capture triggers and the indexsync schema; the indexes stay."""
    conn = db.connect(settings, autocommit=True, role="install")
    try:
        with db.translated(), conn.transaction():
            conn.execute(_LOCK_TIMEOUT)
            exists = conn.execute(outbox.SCHEMA_EXISTS).fetchone()
            if not exists or not exists[0]:
                return []
            dropped = [f"{t.schema}.{t.table}.{t.name}" for t in outbox.installed_triggers(conn)]
            # The triggers depend on the schema's functions, so the cascade takes them too,
            # and the schema's owner needs no ownership of the tables.
            conn.execute(outbox.DROP_SCHEMA)
    finally:
        conn.close()
    log.info("uninstall.done", dropped_triggers=dropped)
    return dropped


@dataclass
class CheckResult:
    """The outcome of `check`: problems found, and what was looked at."""

    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems


def check(settings: Settings, spec: BindingsFile, search: Search) -> CheckResult:
    """Validate configuration, database objects and indexes without changing anything."""
    result = CheckResult()
    _mappings(settings, spec)  # raises on a mapping file that is not valid JSON
    result.checked.append(f"bindings file {settings.config}: {len(spec.indexes)} index(es)")
    conn = db.connect(settings, autocommit=True, role="check")
    try:
        with db.translated(), conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            bindings = resolve(conn, spec, settings.config)
            result.checked.append("tables, keys, columns and conditions exist in PostgreSQL")
            for binding in bindings.values():
                if binding.query is not None:
                    _check_plan(conn, binding, result)
            row = conn.execute(outbox.SCHEMA_EXISTS).fetchone()
            if not row or not row[0]:
                result.problems.append("schema 'indexsync' is missing: run `indexsync install`")
            else:
                _check_triggers(conn, bindings, result)
    finally:
        conn.close()
    search.ping()
    result.checked.append("Elasticsearch answers")
    for alias in bindings:
        targets = search.alias_targets(alias)
        if not targets:
            result.problems.append(f"index alias {alias!r} is missing: run `indexsync install`")
        elif len(targets) > 1:
            result.problems.append(f"alias {alias!r} points at several indexes: {targets}")
        else:
            result.checked.append(f"alias {alias!r} -> {targets[0]}")
    return result


def _check_plan(conn: psycopg.Connection[Any], binding: Binding, result: CheckResult) -> None:
    # With sequential scans priced out, a Seq Scan left on the root table means the id
    # filter cannot reach its key index: every batch would read the whole table.
    conn.execute("SET LOCAL enable_seqscan = off")
    plan = conn.execute(documents.id_filter_plan_query(binding), {"ids": ["0"]}).fetchall()
    conn.execute("RESET enable_seqscan")
    text = "\n".join(str(row[0]) for row in plan)
    if re.search(rf"Seq Scan on {re.escape(binding.table)}\b", text):
        result.warnings.append(
            f"index {binding.alias!r}: the id filter cannot reach the key index of "
            f"{binding.display} through the query (a LIMIT, OFFSET, DISTINCT or window "
            "function blocks it?): every batch will scan the whole table"
        )
    else:
        result.checked.append(f"index {binding.alias!r}: the query's id filter uses an index")


def _check_triggers(
    conn: psycopg.Connection[Any], bindings: dict[str, Binding], result: CheckResult
) -> None:
    meta = conn.execute(outbox.GET_META, ("notify",)).fetchone()
    notify = meta is not None and meta[0] == "true"
    meta = conn.execute(outbox.GET_META, ("capture",)).fetchone()
    capture = meta[0] if meta is not None else outbox.CAPTURE_ROW
    functions = outbox.installed_functions(conn)
    triggers = {(t.name, t.schema, t.table) for t in outbox.installed_triggers(conn)}
    for item in _desired_ddl(conn, bindings, notify, capture):
        if functions.get(item.function) != item.body:
            result.problems.append(
                f"index {item.alias!r}: capture function {item.function} is missing or "
                "outdated: run `indexsync install`"
            )
        for name, schema, table, _ in item.triggers:
            if (name, schema, table) not in triggers:
                result.problems.append(
                    f"index {item.alias!r}: trigger {name} on {schema}.{table} is missing or "
                    "outdated: run `indexsync install`"
                )
    result.checked.append("capture triggers installed")
