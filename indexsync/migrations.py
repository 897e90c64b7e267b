"""Numbered migrations of indexsync's own schema, and the version a database holds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from indexsync.errors import SchemaVersionMismatch
from indexsync.store import Store

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
VERSION_KEY = "schema_version"


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


def installed_version(store: Store) -> int | None:
    """The version a database holds: None when not installed, 0 for an unversioned install."""
    if not store.schema_exists():
        return None
    if not store.meta_exists():
        return 0
    value = store.get_meta(VERSION_KEY)
    # Releases before numbered migrations never wrote a version: their schema is migration 1's.
    return int(value) if value is not None else 0


def pending(version: int | None) -> tuple[Migration, ...]:
    """The migrations a database at `version` still needs."""
    start = version or 0
    return tuple(m for m in migrations() if m.number > start)


def apply_pending(store: Store) -> list[Migration]:
    """Apply what is missing, inside the caller's transaction; returns what was applied."""
    store.migrations_lock()
    version = installed_version(store)
    if version is not None and version > latest():
        raise too_new(version)
    steps = pending(version)
    for step in steps:
        store.run_script(step.text.encode())
    if steps:
        store.set_meta(VERSION_KEY, str(steps[-1].number))
    return list(steps)


def script(store: Store, version: int | None) -> str:
    """The SQL of the pending migrations, for `install --print-sql`."""
    parts = [f"-- migration {m.number}: {m.name}\n{m.text}" for m in pending(version)]
    if parts:
        record = store.render_named("set_meta", {"key": VERSION_KEY, "value": str(latest())})
        parts.append(record + ";\n")
    return "\n".join(parts)


def too_new(version: int) -> SchemaVersionMismatch:
    """The error for a database migrated by a newer release."""
    return SchemaVersionMismatch(
        f"the indexsync schema in this database is at version {version}, newer than this "
        f"release understands ({latest()}): upgrade indexsync on this machine"
    )


def require_current(store: Store) -> int:
    """Refuse to work against a schema this release does not match; returns its version."""
    version = installed_version(store)
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
