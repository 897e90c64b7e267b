"""Document ids from primary keys: the encoding, and the SQL that matches, orders and pages them.

A single-column key's `_id` is the key's text form, as PostgreSQL casts it to text. A
composite key's `_id` is the JSON array of its values in key order, as PostgreSQL's jsonb
renders it: `(7, 'a-b')` becomes `[7, "a-b"]`. JSON quoting keeps it collision-free
(`('a-b','c')` and `('a','b-c')` differ), and it is reversible with any JSON parser.

An `_id` is a function of the row alone. The text of some types depends on the session
that renders it (a timestamptz on `TimeZone` and `DateStyle`, an interval on
`IntervalStyle`, a float on `extra_float_digits`, a bytea on `bytea_output`), and the
trigger renders ids in the application's session while the worker renders them in its own.
So both render in `PINNED_SETTINGS`: every indexsync session sets them when it connects, and
the capture function of a key whose text could depend on a setting carries them as its own
`SET` clauses (a key of only integers, text, uuids and the like skips that per-row cost).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from psycopg import sql

# The session settings every id and document is rendered in, whoever wrote the row.
PINNED_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}

# Key types whose text no session setting changes.
_SETTING_FREE = frozenset(
    {"smallint", "integer", "bigint", "text", "uuid", "boolean", "name", "oid", "citext"}
)
_SETTING_FREE_PREFIXES = ("character varying", "character", "numeric", "varchar", "bpchar")


def setting_free(types: tuple[str, ...]) -> bool:
    """Whether no session setting can change the text of keys of these types."""
    for type_ in types:
        base = type_.split("(")[0].strip().lower()
        if base not in _SETTING_FREE and not base.startswith(_SETTING_FREE_PREFIXES):
            return False
    return True


@dataclass(frozen=True)
class Key:
    """The primary key of a binding's root table: its columns and their SQL types."""

    columns: tuple[str, ...]
    types: tuple[str, ...]

    @property
    def composite(self) -> bool:
        """Whether the key has more than one column."""
        return len(self.columns) > 1

    @property
    def setting_free(self) -> bool:
        """Whether no session setting can change this key's `_id` text."""
        return setting_free(self.types)

    @property
    def display(self) -> str:
        """The key's columns for messages."""
        return ", ".join(self.columns)

    def slots(self) -> list[sql.Identifier]:
        """The names the key's columns take in a document query: `_k0`, `_k1`, ..."""
        return [sql.Identifier(f"_k{n}") for n in range(len(self.columns))]

    def id_of(self, values: list[sql.Composable]) -> sql.Composable:
        """The `_id` text of a row whose key values are the given expressions."""
        return text_id(values)

    def id_or_null(self, rel: sql.Composable, columns: tuple[str, ...]) -> sql.Composable:
        """Like `id_of_columns`, but NULL when any of the columns is NULL (a capture's test)."""
        refs: list[sql.Composable] = [
            sql.SQL("{}.{}").format(rel, sql.Identifier(c)) for c in columns
        ]
        if len(refs) == 1:
            return text_id(refs)
        return sql.SQL("CASE WHEN {} THEN NULL ELSE {} END").format(
            sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(r) for r in refs),
            text_id(refs),
        )

    def id_of_columns(self, rel: sql.Composable, columns: tuple[str, ...]) -> sql.Composable:
        """The `_id` text built from `columns` of the row `rel` (a table, NEW, OLD, ...)."""
        return self.id_of([sql.SQL("{}.{}").format(rel, sql.Identifier(c)) for c in columns])

    def id_of_slots(self, rel: sql.Composable) -> sql.Composable:
        """The `_id` text of a document-query row `rel`."""
        return self.id_of([sql.SQL("{}.{}").format(rel, slot) for slot in self.slots()])

    def _decoded(self, param: sql.Composable) -> sql.Composable:
        """The typed key values of each encoded id in the text[] `param`."""
        return sql.SQL("SELECT {} FROM pg_catalog.unnest({}::pg_catalog.jsonb[]) AS u(j)").format(
            sql.SQL(", ").join(
                sql.SQL("(u.j OPERATOR(pg_catalog.->>) {})::{}").format(
                    sql.Literal(n), sql.SQL(type_)
                )
                for n, type_ in enumerate(self.types)
            ),
            param,
        )

    def matches(self, rel: sql.Composable, param: sql.Composable) -> sql.Composable:
        """A condition: the key of `rel` (by slots) is one of the ids in the text[] `param`."""
        slots = [sql.SQL("{}.{}").format(rel, slot) for slot in self.slots()]
        if not self.composite:
            return sql.SQL("{} = ANY({}::pg_catalog.text[]::{}[])").format(
                slots[0], param, sql.SQL(self.types[0])
            )
        return sql.SQL("({}) IN ({})").format(sql.SQL(", ").join(slots), self._decoded(param))

    def after(self, rel: sql.Composable, param: sql.Composable) -> sql.Composable:
        """A condition: the key of `rel` (by slots) sorts after the id `param` (keyset paging)."""
        slots = [sql.SQL("{}.{}").format(rel, slot) for slot in self.slots()]
        if not self.composite:
            return sql.SQL("{} > {}::pg_catalog.text::{}").format(
                slots[0], param, sql.SQL(self.types[0])
            )
        return sql.SQL("({}) > ({})").format(
            sql.SQL(", ").join(slots),
            self._decoded(sql.SQL("ARRAY[{}::pg_catalog.text]").format(param)),
        )

    def order(self, rel: sql.Composable) -> sql.Composable:
        """The key's sort order, for keyset paging."""
        return sql.SQL(", ").join(sql.SQL("{}.{}").format(rel, slot) for slot in self.slots())

    def check(self) -> sql.Composed:
        """A query that fails with a data error when `%(ids)s` holds an invalid id."""
        if not self.composite:
            return sql.SQL("SELECT %(ids)s::pg_catalog.text[]::{}[]").format(sql.SQL(self.types[0]))
        return sql.SQL("SELECT count(*) FROM ({}) AS d").format(
            self._decoded(sql.SQL("%(ids)s::pg_catalog.text[]"))
        )


def text_id(values: list[sql.Composable]) -> sql.Composable:
    """The `_id` text of key values: the value's text, or the jsonb array of several."""
    if len(values) == 1:
        return sql.SQL("{}::pg_catalog.text").format(values[0])
    return sql.SQL("pg_catalog.jsonb_build_array({})::pg_catalog.text").format(
        sql.SQL(", ").join(values)
    )


def encode(values: list[Any]) -> str:
    """The `_id` of a composite key from Python values, as jsonb would render it."""
    return json.dumps(values, ensure_ascii=False, separators=(", ", ": "))


def decode(doc_id: str, columns: int) -> list[Any]:
    """The key values of an `_id`: one text value, or the items of the JSON array."""
    if columns == 1:
        return [doc_id]
    values = json.loads(doc_id)
    if not isinstance(values, list) or len(values) != columns:
        raise ValueError(f"not a JSON array of {columns} key values: {doc_id!r}")
    return values
