"""Documents: the SQL that builds each binding's documents as JSON, composed from the binding."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from psycopg import sql

from indexsync.bindings import Binding, Dependency, query_key_columns, user_sql
from indexsync.keys import Key

# jsonb_build_object takes at most 100 arguments: 50 columns per call, joined with ||.
_PAIRS_PER_CALL = 50


def document_expr(binding: Binding, rel: sql.Composable) -> sql.Composable:
    """PostgreSQL's own JSON rendering of a row, or of just the binding's listed columns.

    Listed columns are an allow-list built column by column, so a column added to the table
    later can never reach a document, whenever the worker last started.
    """
    if binding.columns is None:
        return sql.SQL("pg_catalog.to_jsonb({}.*)").format(rel)
    if not binding.columns:
        return sql.SQL("'{}'::pg_catalog.jsonb")
    calls = []
    for start in range(0, len(binding.columns), _PAIRS_PER_CALL):
        pairs = binding.columns[start : start + _PAIRS_PER_CALL]
        calls.append(
            sql.SQL("pg_catalog.jsonb_build_object({})").format(
                sql.SQL(", ").join(
                    sql.SQL("{}, {}.{}").format(sql.Literal(c), rel, sql.Identifier(c))
                    for c in pairs
                )
            )
        )
    return sql.SQL(" OPERATOR(pg_catalog.||) ").join(calls)


def _filters(binding: Binding) -> sql.Composable:
    if binding.where is None:
        return sql.SQL("")
    return sql.SQL(" AND ({})").format(user_sql(binding.where))


def source_query(binding: Binding) -> sql.Composable:
    """Every document the binding produces: the typed key slots `_k0`... and the JSON `_doc`."""
    table, key = binding.table_ident, binding.key
    if binding.query is None:
        slots = sql.SQL(", ").join(
            sql.SQL("{}.{} AS {}").format(table, sql.Identifier(col), slot)
            for col, slot in zip(key.columns, key.slots(), strict=True)
        )
        routing = (
            sql.SQL("({})::pg_catalog.text").format(user_sql(binding.routing))
            if binding.routing is not None
            else sql.SQL("NULL::pg_catalog.text")
        )
        return sql.SQL(
            "SELECT {slots}, {doc} AS _doc, {routing} AS _routing FROM {table} WHERE true{f}"
        ).format(
            slots=slots,
            table=table,
            doc=document_expr(binding, table),
            routing=routing,
            f=_filters(binding),
        )
    yielded = query_key_columns(binding)
    # `where` is about the root table, whatever the query joins.
    root_filter = (
        sql.SQL(" AND EXISTS (SELECT 1 FROM {table} WHERE {match}{f})").format(
            table=table,
            match=sql.SQL(" AND ").join(
                sql.SQL("{}.{} = q.{}").format(table, sql.Identifier(col), sql.Identifier(out))
                for col, out in zip(key.columns, yielded, strict=True)
            ),
            f=_filters(binding),
        )
        if binding.where is not None
        else sql.SQL("")
    )
    slots = sql.SQL(", ").join(
        sql.SQL("q.{} AS {}").format(sql.Identifier(out), slot)
        for out, slot in zip(yielded, key.slots(), strict=True)
    )
    # The routing is an expression over the root table's row of the document.
    routing = (
        sql.SQL("(SELECT ({r})::pg_catalog.text FROM {table} WHERE {match})").format(
            r=user_sql(binding.routing),
            table=table,
            match=sql.SQL(" AND ").join(
                sql.SQL("{}.{} = q.{}").format(table, sql.Identifier(col), sql.Identifier(out))
                for col, out in zip(key.columns, yielded, strict=True)
            ),
        )
        if binding.routing is not None
        else sql.SQL("NULL::pg_catalog.text")
    )
    return sql.SQL(
        "SELECT {slots}, q.doc AS _doc, {routing} AS _routing FROM ({query}) AS q WHERE true{f}"
    ).format(slots=slots, query=user_sql(binding.query), routing=routing, f=root_filter)


_S = sql.Identifier("s")


def fetch_by_ids_query(binding: Binding) -> sql.Composed:
    """Re-read the documents of the given ids; a missing id means delete."""
    # PostgreSQL flattens the subquery, so the id filter reaches the root table's key index.
    return sql.SQL(
        "SELECT {id} AS doc_id, s._doc::pg_catalog.text AS source, s._routing AS routing "
        "FROM ({source}) AS s WHERE {match}"
    ).format(
        id=binding.key.id_of_slots(_S),
        source=source_query(binding),
        match=binding.key.matches(_S, sql.SQL("%(ids)s")),
    )


def scan_query(binding: Binding, *, resume: bool) -> sql.Composed:
    """One keyset page of documents in key order, after `%(after)s` when resuming."""
    after = (
        sql.SQL("WHERE {}").format(binding.key.after(_S, sql.SQL("%(after)s")))
        if resume
        else sql.SQL("")
    )
    return sql.SQL(
        "SELECT {id} AS doc_id, s._doc::pg_catalog.text AS source, s._routing AS routing "
        "FROM ({source}) AS s {after} ORDER BY {order} LIMIT %(limit)s"
    ).format(
        id=binding.key.id_of_slots(_S),
        source=source_query(binding),
        after=after,
        order=binding.key.order(_S),
    )


def key_page_query(binding: Binding, *, resume: bool, where: str | None = None) -> sql.Composed:
    """The next `%(limit)s` ids of the root table in key order, after `%(after)s` if resuming,
    of the rows that match `where` (an operator's condition on the root table) if given."""
    key = binding.key
    slots = sql.SQL(", ").join(
        sql.SQL("t.{} AS {}").format(sql.Identifier(col), slot)
        for col, slot in zip(key.columns, key.slots(), strict=True)
    )
    return sql.SQL(
        "SELECT {id} FROM (SELECT {slots} FROM {table} AS t{where}) AS s {after} "
        "ORDER BY {order} LIMIT %(limit)s"
    ).format(
        id=key.id_of_slots(_S),
        slots=slots,
        table=binding.table_ident,
        where=sql.SQL(" WHERE ({})").format(user_sql(where)) if where is not None else sql.SQL(""),
        after=sql.SQL("WHERE {}").format(key.after(_S, sql.SQL("%(after)s")))
        if resume
        else sql.SQL(""),
        order=key.order(_S),
    )


def id_filter_plan_query(binding: Binding) -> sql.Composed:
    """EXPLAIN of the live re-read, to see whether the id filter reaches an index."""
    return sql.SQL("EXPLAIN {}").format(fetch_by_ids_query(binding))


def key_check_query(binding: Binding) -> sql.Composed:
    """Fails with a DataError when `%(ids)s` holds an id that is not a valid key."""
    return binding.key.check()


def count_query(binding: Binding) -> sql.Composed:
    """How many documents the binding produces (run it with parameters, even empty ones)."""
    return sql.SQL("SELECT count(*) FROM ({}) AS s").format(source_query(binding))


_INT_TYPES = frozenset({"smallint", "integer", "bigint"})


def typed_keys(pk_type: str, keys: Iterable[str]) -> list[Any]:
    """Keys as Python values of their column's type, so `= ANY(%(keys)s)` needs no cast."""
    if pk_type in _INT_TYPES:
        return [int(k) for k in keys]
    if pk_type == "uuid":
        return [uuid.UUID(k) for k in keys]
    return list(keys)


def expand_query(key: Key, dep: Dependency) -> sql.Composed:
    """The dependency's `sql`, its columns renamed by position to the key's slots."""
    assert dep.expand is not None
    return sql.SQL("SELECT {id} FROM ({user}) AS e({slots}) WHERE e._k0 IS NOT NULL").format(
        id=key.id_of_slots(sql.Identifier("e")),
        user=sql.SQL(dep.expand),
        slots=sql.SQL(", ").join(key.slots()),
    )
