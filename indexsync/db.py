"""PostgreSQL connections, with driver errors translated at this boundary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from indexsync.errors import DatabaseError, DatabaseUnavailable
from indexsync.logs import redact
from indexsync.settings import Settings

APPLICATION_NAME = "indexsync"


def connect(
    settings: Settings, *, autocommit: bool = False, role: str = ""
) -> psycopg.Connection[Any]:
    """Open a connection to the source database, or raise a DatabaseUnavailable."""
    url = settings.require_database_url()
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=settings.connect_timeout,
            application_name=f"{APPLICATION_NAME}{':' + role if role else ''}",
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {describe(exc)}") from exc
    except psycopg.ProgrammingError as exc:
        raise DatabaseError(f"invalid INDEXSYNC_DATABASE_URL: {describe(exc)}") from exc


def describe(exc: psycopg.Error) -> str:
    """A one-line, secret-free description of a driver error."""
    primary = exc.diag.message_primary if exc.diag else None
    text = primary or str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)


def translate(exc: psycopg.Error) -> DatabaseError:
    """Map a driver error onto indexsync's hierarchy."""
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.AdminShutdown):
        return DatabaseUnavailable(f"lost PostgreSQL: {describe(exc)}")
    return DatabaseError(f"PostgreSQL error: {describe(exc)}")


@contextmanager
def translated() -> Iterator[None]:
    """Translate driver errors raised inside the block."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc) from exc
