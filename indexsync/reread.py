"""Re-reading one index's documents inside a batch, with failures isolated.

A row whose document query fails (a bad cast, a division by zero, a function that raises)
is found by bisecting the ids, and only that row is dead-lettered. A binding whose SQL
fails as a whole (a dropped column, a revoked grant) is reported as broken, so that only its
own index stops. Each attempt runs in a savepoint, so the batch's claim survives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from indexsync import documents
from indexsync.bindings import Binding
from indexsync.db import describe
from indexsync.keys import Key


@dataclass(frozen=True)
class RowFailure:
    """A document PostgreSQL could not build, with its error."""

    doc_id: str
    sqlstate: str
    message: str


class BindingBroken(Exception):
    """The binding's SQL fails whatever the rows: its index must pause."""

    def __init__(self, alias: str, sqlstate: str, message: str) -> None:
        super().__init__(f"index {alias!r}: its SQL fails: {message} (SQLSTATE {sqlstate})")
        self.alias = alias
        self.sqlstate = sqlstate
        self.message = message


@dataclass
class Reread:
    """The documents that could be read, and the rows that could not."""

    docs: dict[str, str] = field(default_factory=dict)
    failures: list[RowFailure] = field(default_factory=list)


def transient(exc: psycopg.Error) -> bool:
    """Whether an error is about the connection or the moment, not the binding or a row.

    Those (a lost connection, a deadlock, a cancelled statement) fail the whole batch,
    which is then retried; everything else is about this index's SQL or data.
    """
    return isinstance(exc, psycopg.OperationalError)


def _state(exc: psycopg.Error) -> tuple[str, str]:
    return exc.sqlstate or "?", describe(exc)


def probe(conn: psycopg.Connection[Any], binding: Binding) -> None:
    """Run every query of the binding on no rows; raise BindingBroken if one fails."""
    queries: list[tuple[Any, dict[str, Any]]] = [
        (documents.fetch_by_ids_query(binding), {"ids": []})
    ]
    queries += [
        (documents.expand_query(binding.key, dep), {"keys": []})
        for dep in binding.depends
        if dep.expand is not None
    ]
    for query, params in queries:
        try:
            with conn.transaction():
                conn.execute(query, params, prepare=True).fetchall()
        except psycopg.Error as exc:
            if transient(exc):
                raise
            raise BindingBroken(binding.alias, *_state(exc)) from exc


def expand(
    conn: psycopg.Connection[Any], key: Key, binding: Binding, source: str, keys: set[str]
) -> set[str] | None:
    """Document ids of changed dependent rows, or None when the dependency is unknown."""
    dep = binding.dependency(source)
    if dep is None or dep.expand is None:
        return None
    try:
        with conn.transaction():
            return documents.expand_dependency(conn, key, dep, keys)
    except psycopg.Error as exc:
        if transient(exc):
            raise
        raise BindingBroken(binding.alias, *_state(exc)) from exc


def read(conn: psycopg.Connection[Any], binding: Binding, ids: Sequence[str]) -> Reread:
    """The documents of `ids`; rows that fail are bisected out and returned as failures."""
    result = Reread()
    try:
        with conn.transaction():
            result.docs = documents.fetch_documents(conn, binding, ids)
        return result
    except psycopg.Error as exc:
        if transient(exc):
            raise
    # Fails on no rows at all: the binding is broken, not a row.
    probe(conn, binding)
    _bisect(conn, binding, list(ids), result)
    return result


def _bisect(
    conn: psycopg.Connection[Any], binding: Binding, ids: list[str], result: Reread
) -> None:
    middle = len(ids) // 2
    for part in (ids[:middle], ids[middle:]):
        if not part:
            continue
        try:
            with conn.transaction():
                result.docs.update(documents.fetch_documents(conn, binding, part))
        except psycopg.Error as exc:
            if transient(exc):
                raise
            if len(part) == 1:
                result.failures.append(RowFailure(part[0], *_state(exc)))
            else:
                _bisect(conn, binding, part, result)
