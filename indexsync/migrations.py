"""Numbered migrations of indexsync's own schema, and the version a database holds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from indexsync.errors import SchemaVersionMismatch

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Serialises concurrent installs: two would otherwise race to apply the same migration.
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('indexsync.migrations'))"
_SCHEMA_EXISTS = "SELECT to_regnamespace('indexsync') IS NOT NULL"
_META_EXISTS = "SELECT to_regclass('indexsync.meta') IS NOT NULL"
_GET_VERSION = "SELECT value FROM indexsync.meta WHERE key = 'schema_version'"
_SET_VERSION = """
INSERT INTO indexsync.meta (key, value) VALUES ('schema_version', %s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
"""


@dataclass(frozen=True)
class Migration:
    """One numbered step of the schema."""

    number: int
    name: str
    text: str


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with this release, in order."""
    folder = resources.files("indexsync").joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.number)
    numbers = [m.number for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n without gaps: {numbers}")
    return tuple(found)


def latest() -> int:
    """The schema version this release reads and writes."""
    return migrations()[-1].number


def installed_version(conn: psycopg.Connection[Any]) -> int | None:
    """The version a database holds: None when not installed, 0 for an unversioned install."""
    row = conn.execute(_SCHEMA_EXISTS).fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute(_META_EXISTS).fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute(_GET_VERSION).fetchone()
    # Releases before numbered migrations never wrote a version: their schema is migration 1's.
    return int(row[0]) if row else 0


def pending(version: int | None) -> tuple[Migration, ...]:
    """The migrations a database at `version` still needs."""
    start = version or 0
    return tuple(m for m in migrations() if m.number > start)


def apply_pending(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply what is missing, inside the caller's transaction; returns what was applied."""
    conn.execute(_LOCK)
    version = installed_version(conn)
    if version is not None and version > latest():
        raise too_new(version)
    steps = pending(version)
    for step in steps:
        conn.execute(step.text.encode())
    if steps:
        conn.execute(_SET_VERSION, (str(steps[-1].number),))
    return list(steps)


def script(conn: psycopg.Connection[Any], version: int | None) -> str:
    """The SQL of the pending migrations, for `install --print-sql`."""
    parts = [f"-- migration {m.number}: {m.name}\n{m.text}" for m in pending(version)]
    if parts:
        record = sql.SQL(_SET_VERSION.replace("%s", "{}")).format(sql.Literal(str(latest())))
        parts.append(record.as_string(conn).strip() + ";\n")
    return "\n".join(parts)


def too_new(version: int) -> SchemaVersionMismatch:
    """The error for a database migrated by a newer release."""
    return SchemaVersionMismatch(
        f"the indexsync schema in this database is at version {version}, newer than this "
        f"release understands ({latest()}): upgrade indexsync on this machine"
    )


def require_current(conn: psycopg.Connection[Any]) -> int:
    """Refuse to work against a schema this release does not match; returns its version."""
    version = installed_version(conn)
    if version is None:
        raise SchemaVersionMismatch(
            "indexsync is not installed in this database: run `indexsync install`"
        )
    if version > latest():
        raise too_new(version)
    if version < latest():
        raise SchemaVersionMismatch(
            f"the indexsync schema in this database is at version {version}, older than "
            f"this release needs ({latest()}): run `indexsync install` to upgrade it"
        )
    return version
