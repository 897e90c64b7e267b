"""Documents: the SQL that re-reads rows as JSON, and the bulk items built from them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from indexsync.bindings import Binding
from indexsync.outbox import KIND_TRUNCATE, Change


def document_expr(binding: Binding) -> sql.Composable:
    """PostgreSQL's own JSON rendering of a row, cut to the binding's columns."""
    row = sql.SQL("to_jsonb({}.*)").format(sql.Identifier(binding.table))
    if not binding.excluded:
        return row
    return sql.SQL("({} - {}::text[])").format(row, sql.Literal(list(binding.excluded)))


def _filters(binding: Binding) -> sql.Composable:
    if binding.where is None:
        return sql.SQL("")
    return sql.SQL(" AND ({})").format(sql.SQL(binding.where))


def fetch_by_ids_query(binding: Binding) -> sql.Composed:
    """Re-read the documents of the given ids; a missing id means delete."""
    return sql.SQL(
        "SELECT {key}::text AS _id, {doc}::text AS _doc FROM {table} "
        "WHERE {key} = ANY(%(ids)s::text[]::{key_type}[]){filters}"
    ).format(
        key=sql.Identifier(binding.key),
        doc=document_expr(binding),
        table=binding.table_ident,
        key_type=sql.SQL(binding.key_type),
        filters=_filters(binding),
    )


def fetch_documents(
    conn: psycopg.Connection[Any], binding: Binding, ids: Sequence[str]
) -> dict[str, str]:
    """The JSON text of each id's document, as PostgreSQL wrote it."""
    with conn.cursor() as cur:
        cur.execute(fetch_by_ids_query(binding), {"ids": list(ids)}, prepare=True)
        return {doc_id: doc for doc_id, doc in cur.fetchall()}


@dataclass
class IndexWork:
    """What a batch must do for one index: the newest seq per id, and any truncate."""

    versions: dict[str, int] = field(default_factory=dict)
    truncate_seq: int | None = None


def plan(changes: Iterable[Change]) -> dict[str, IndexWork]:
    """Group a batch by index and keep the largest seq per id (it becomes the version)."""
    work: dict[str, IndexWork] = {}
    for change in changes:
        item = work.setdefault(change.index_name, IndexWork())
        if change.kind == KIND_TRUNCATE:
            item.truncate_seq = max(item.truncate_seq or 0, change.seq)
        elif change.doc_id is not None and change.seq > item.versions.get(change.doc_id, 0):
            item.versions[change.doc_id] = change.seq
    return work


@dataclass(slots=True)
class Op:
    """One bulk item: index `source` (or delete when it is None) at an external version."""

    alias: str
    index: str
    doc_id: str
    version: int
    source: str | None
    require_alias: bool = False

    def encode(self) -> bytes:
        """The NDJSON lines of this item; the source passes through untouched."""
        meta = (
            f'"_index":{json.dumps(self.index)},"_id":{json.dumps(self.doc_id)},'
            f'"version":{self.version},"version_type":"external_gte"'
        )
        if self.source is None:
            return f'{{"delete":{{{meta}}}}}\n'.encode()
        if self.require_alias:
            meta += ',"require_alias":true'
        return f'{{"index":{{{meta}}}}}\n{self.source}\n'.encode()


def build_ops(
    alias: str,
    targets: Sequence[tuple[str, bool]],
    versions: dict[str, int],
    documents: dict[str, str],
) -> list[Op]:
    """Bulk items for every changed id of an index, for every target (alias, rebuild)."""
    ops = []
    for target, is_alias in targets:
        for doc_id, version in versions.items():
            ops.append(Op(alias, target, doc_id, version, documents.get(doc_id), is_alias))
    return ops


def chunk_bodies(
    ops: Sequence[Op], max_bytes: int, max_items: int
) -> Iterator[tuple[list[Op], bytes]]:
    """Split items into bodies of at most `max_items` and `max_bytes`; an item never splits."""
    batch: list[Op] = []
    lines: list[bytes] = []
    size = 0
    for op in ops:
        line = op.encode()
        if batch and (size + len(line) > max_bytes or len(batch) >= max_items):
            yield batch, b"".join(lines)
            batch, lines, size = [], [], 0
        batch.append(op)
        lines.append(line)
        size += len(line)
    if batch:
        yield batch, b"".join(lines)


def scan_query(binding: Binding, *, resume: bool) -> sql.Composed:
    """One keyset page of documents in key order, after `%(after)s` when resuming."""
    after = (
        sql.SQL(" AND {key} > %(after)s::text::{key_type}").format(
            key=sql.Identifier(binding.key), key_type=sql.SQL(binding.key_type)
        )
        if resume
        else sql.SQL("")
    )
    return sql.SQL(
        "SELECT {key}::text AS _id, {doc}::text AS _doc FROM {table} WHERE true{filters}{after} "
        # Qualified: a bare name would sort by the output column, the key's text form.
        "ORDER BY {table}.{key} LIMIT %(limit)s"
    ).format(
        key=sql.Identifier(binding.key),
        doc=document_expr(binding),
        table=binding.table_ident,
        filters=_filters(binding),
        after=after,
    )


def key_check_query(binding: Binding) -> sql.Composed:
    """Fails with a DataError when `%s` is not a valid key of the table."""
    return sql.SQL("SELECT %s::text::{}").format(sql.SQL(binding.key_type))


def count_query(binding: Binding) -> sql.Composed:
    """An estimate-free row count of what the binding indexes."""
    return sql.SQL("SELECT count(*) FROM {table} WHERE true{filters}").format(
        table=binding.table_ident, filters=_filters(binding)
    )
