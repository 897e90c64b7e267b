"""Bindings checked against the catalog: tables, keys, columns and user SQL that must exist."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from psycopg import sql

from indexsync.bindings import (
    Binding,
    BindingsFile,
    Dependency,
    IndexSpec,
    escaped_keys_sql,
    query_key_columns,
)
from indexsync.errors import ConfigError, QueryFailed
from indexsync.keys import Key
from indexsync.store import Store


def resolve(
    store: Store, spec: BindingsFile, source: Path, *, strict: bool = True
) -> dict[str, Binding]:
    """Check every binding against the catalog and return what SQL generation needs.

    With `strict` off, a listed column the table no longer has is left out of the documents
    (as a running worker does) instead of being an error.
    """
    return {
        alias: _resolve_one(store, alias, index, source, strict=strict)
        for alias, index in spec.indexes.items()
    }


def resolve_each(
    store: Store, indexes: Mapping[str, IndexSpec], source: Path
) -> tuple[dict[str, Binding], dict[str, ConfigError]]:
    """Resolve bindings one by one, as a running worker must: one broken binding is not fatal.

    A listed column that the table no longer has is left out of the documents instead of
    failing the binding, so a migration that drops it does not stop the index.
    """
    good: dict[str, Binding] = {}
    broken: dict[str, ConfigError] = {}
    for alias, index in indexes.items():
        try:
            # A savepoint: a failed probe must not abort the caller's transaction.
            with store.transaction():
                good[alias] = _resolve_one(store, alias, index, source, strict=False)
        except ConfigError as exc:
            broken[alias] = exc
    return good, broken


@dataclass(frozen=True)
class _Table:
    schema: str
    table: str
    key: tuple[str, ...]
    key_types: tuple[str, ...]
    columns: dict[str, str]
    # Virtual generated columns (PostgreSQL 18) and the columns each is computed from.
    virtual: dict[str, tuple[str, ...]]

    def watchable(self, columns: list[str]) -> list[str]:
        """`columns` as a capture can watch them: inside a row trigger a virtual generated
        column reads as NULL, so its change shows only in the columns it is computed from."""
        found: list[str] = []
        for column in columns:
            found.extend(self.virtual.get(column, (column,)))
        return list(dict.fromkeys(found))


def _table(store: Store, name: str, ctx: str) -> _Table:
    """Resolve a table name through the catalog; `ctx` names the key in messages."""
    try:
        with store.transaction():
            found = store.resolve_table(name)
    except QueryFailed:
        raise ConfigError(f"{ctx}: {name!r} is not a valid table name") from None
    if found is None:
        raise ConfigError(f"{ctx}: table {name!r} does not exist")
    if found.kind not in ("r", "p"):
        raise ConfigError(f"{ctx}: {name!r} is not an ordinary table")
    key = store.primary_key(found.oid)
    if not key:
        raise ConfigError(
            f"{ctx}: table {name!r} has no primary key; indexsync uses it as the document _id"
        )
    columns = {col.name: col.type for col in store.table_columns(found.oid)}
    return _Table(
        found.schema,
        found.name,
        tuple(col.name for col in key),
        tuple(col.type for col in key),
        columns,
        store.virtual_columns(found.oid),
    )


def _unknown(columns: list[str], table: _Table, ctx: str) -> None:
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise ConfigError(
            f"{ctx}: unknown column(s) {', '.join(map(repr, unknown))} "
            f"in table {table.schema}.{table.table}"
        )


def _resolve_one(
    store: Store, alias: str, spec: IndexSpec, source: Path, *, strict: bool
) -> Binding:
    here = f"{source}: [indexes.{alias}]"
    root = _table(store, spec.table, f"{here} key 'table'")
    key = Key(root.key, root.key_types)
    columns: tuple[str, ...] | None = None
    if spec.columns is not None:
        if strict:
            _unknown(spec.columns, root, f"{here} key 'columns'")
        columns = tuple(c for c in spec.columns if c in root.columns)
    depends = []
    for n, dep_spec in enumerate(spec.depends, start=1):
        ctx = f"{here} key 'depends[{n}]"
        table = _table(store, dep_spec.table, f"{ctx}.table'")
        dep_key = dep_spec.key_columns
        if dep_key is not None:
            _unknown(dep_key, table, f"{ctx}.key'")
            if len(dep_key) != len(key.columns):
                raise ConfigError(
                    f"{ctx}.key': names {len(dep_key)} column(s), but the key of "
                    f"{root.schema}.{root.table} has {len(key.columns)} ({key.display}); "
                    "list the columns that hold its values, in that order"
                )
        elif len(table.key) > 1:
            raise ConfigError(
                f"{ctx}.sql': table {dep_spec.table!r} has a composite primary key "
                f"({', '.join(table.key)}); a dependency through 'sql' needs a single-column "
                "key. Give 'key' instead: the columns that hold the document's key"
            )
        if dep_spec.columns is not None:
            _unknown(dep_spec.columns, table, f"{ctx}.columns'")
        watched = table.watchable(dep_spec.columns) if dep_spec.columns is not None else None
        if watched is not None and dep_key is not None:
            # Moving a child to another parent must always be seen.
            watched = [*watched, *(c for c in dep_key if c not in watched)]
        dep = Dependency(
            table.schema,
            table.table,
            tuple(dep_key) if dep_key is not None else None,
            escaped_keys_sql(dep_spec.sql) if dep_spec.sql is not None else None,
            table.key[0],
            table.key_types[0],
            tuple(watched) if watched is not None else None,
        )
        if dep.expand is not None:
            _check_depend_sql(store, dep, len(key.columns), f"{ctx}.sql'")
        depends.append(dep)
    binding = Binding(
        alias=alias,
        schema=root.schema,
        table=root.table,
        key=key,
        columns=columns,
        where=spec.where,
        query=spec.query,
        depends=tuple(depends),
        routing=spec.routing,
        pipeline=spec.pipeline,
    )
    if spec.where is not None:
        _check_where(store, binding, here)
    if spec.routing is not None:
        _check_routing(store, binding, here)
    if spec.query is not None:
        _check_query(store, binding, here)
    if spec.root_columns is not None:
        if strict:
            _unknown(spec.root_columns, root, f"{here} key 'root_columns'")
        read = [c for c in spec.root_columns if c in root.columns]
        return replace(binding, watch=_watched(store, binding, root, read))
    if spec.query is None:
        listed = list(columns) if columns is not None else None
        return replace(binding, watch=_watched(store, binding, root, listed))
    return binding


def _watched(
    store: Store, binding: Binding, root: _Table, read: list[str] | None
) -> tuple[str, ...]:
    """The root columns whose change the index can see; () for any change of the row.

    `read` is what the documents read (None: the whole row). The key always counts, and so
    does every column `where` reads, or the whole row when that cannot be told for sure.
    """
    if read is None:
        return ()
    found = [*binding.key.columns, *read]
    conditions = [binding.where] if binding.where is not None else []
    if binding.routing is not None:
        conditions.append(f"(({binding.routing})::pg_catalog.text IS NOT NULL)")
    for condition in conditions:
        # A change of what the condition or the routing reads drops or moves a document.
        in_it = _expression_columns(store, binding, root, condition)
        if in_it is None:
            return ()
        found += in_it
    return tuple(root.watchable(found))


def _quoted_forms(name: str) -> set[str]:
    # EXPLAIN prints a name bare or double-quoted (keywords, capitals); either may be it.
    return {name, '"' + name.replace('"', '""') + '"'}


def _expression_columns(
    store: Store, binding: Binding, root: _Table, condition: str
) -> list[str] | None:
    """The root columns a condition (`where`, or one made of `routing`) reads, from
    PostgreSQL's own plan of it, where a filter names them with their table; None when
    unsure.

    Unsure means a whole-row reference (a function given the row) or a plan that cannot be
    read: the capture then compares whole rows, which never misses a change.
    """
    query = sql.SQL("SELECT FROM {} WHERE ({})").format(binding.table_ident, sql.SQL(condition))
    try:
        plan = store.plan_text(query)
    except QueryFailed:
        return None
    return columns_in_plan(plan, root.table, list(root.columns))


def columns_in_plan(plan: str, table: str, columns: list[str]) -> list[str] | None:
    """The columns of `table` an EXPLAIN VERBOSE text reads; None for a whole-row use."""
    # Expressions follow "Filter: ", "Index Cond: " and the like; node titles have no colon.
    exprs = "\n".join(line.split(": ", 1)[1] for line in plan.splitlines() if ": " in line)
    for rel in _quoted_forms(table):
        refs = re.finditer(rf'(?<![\w"$.]){re.escape(rel)}(?![\w"$])(\.(\*)?)?', exprs)
        for ref in refs:
            if ref.group(1) is None or ref.group(2) is not None:
                return None  # the whole row
    found = []
    for column in columns:
        forms = {f"{r}.{c}" for r in _quoted_forms(table) for c in _quoted_forms(column)}
        if any(form in exprs for form in forms):
            found.append(column)
    return found


def _check_query(store: Store, binding: Binding, where: str) -> None:
    assert binding.query is not None
    probe = sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(sql.SQL(binding.query))
    try:
        names = store.probe_plain(probe)
    except QueryFailed as exc:
        raise ConfigError(f"{where} key 'query': the query fails: {exc.detail}") from None
    wanted = [*query_key_columns(binding), "doc"]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise ConfigError(
            f"{where} key 'query': it must yield columns "
            f"{', '.join(map(repr, wanted[:-1]))} and {wanted[-1]!r} "
            f"(missing: {', '.join(missing)}; it yields: {', '.join(names) or 'nothing'})"
        )


def _check_depend_sql(store: Store, dep: Dependency, width: int, where: str) -> None:
    assert dep.expand is not None
    probe = sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(sql.SQL(dep.expand))
    try:
        got = len(store.probe(probe, {"keys": []}))
    except QueryFailed as exc:
        raise ConfigError(f"{where}: the query fails: {exc.detail}") from None
    if got != width:
        raise ConfigError(
            f"{where}: it must yield exactly {width} column(s), the document's key"
            + (" (one per key column, in key order)" if width > 1 else " (the document id)")
        )


def _check_routing(store: Store, binding: Binding, where: str) -> None:
    assert binding.routing is not None
    query = sql.SQL("EXPLAIN SELECT ({})::pg_catalog.text FROM {}").format(
        sql.SQL(binding.routing), binding.table_ident
    )
    try:
        store.probe_plain(query)
    except QueryFailed as exc:
        raise ConfigError(f"{where} key 'routing': invalid expression: {exc.detail}") from None


def _check_where(store: Store, binding: Binding, where: str) -> None:
    assert binding.where is not None
    query = sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(
        binding.table_ident,
        sql.SQL(binding.where),
    )
    try:
        store.probe_plain(query)
    except QueryFailed as exc:
        raise ConfigError(f"{where} key 'where': invalid condition: {exc.detail}") from None
