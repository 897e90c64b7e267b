"""The bindings file: which table feeds which index, parsed and then checked against the catalog."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from indexsync.errors import ConfigError

# Elasticsearch's rules for index names, which aliases share; `-<n>` is added for physical names.
_FORBIDDEN = set('\\/*?"<>| ,#:')
_MAX_ALIAS_BYTES = 200


class IndexSpec(BaseModel):
    """One `[indexes.<alias>]` table of the bindings file, as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str = Field(min_length=1)
    columns: list[str] | None = None
    where: str | None = None

    @field_validator("columns")
    @classmethod
    def _columns_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("must name at least one column (or be left out)")
            if len(set(value)) != len(value):
                raise ValueError("names a column twice")
        return value

    @field_validator("where")
    @classmethod
    def _where_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty")
        return value


class BindingsFile(BaseModel):
    """The whole bindings file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    indexes: dict[str, IndexSpec] = Field(min_length=1)


def check_alias(alias: str) -> str | None:
    """Why `alias` is not a usable Elasticsearch alias, or None when it is."""
    if not alias:
        return "is empty"
    if alias != alias.lower():
        return "must be lowercase"
    if alias[0] in "-_+." or alias in {".", ".."}:
        return "must not start with '-', '_', '+' or '.'"
    bad = sorted(_FORBIDDEN.intersection(alias))
    if bad:
        return f"must not contain {' '.join(repr(c) for c in bad)}"
    if len(alias.encode()) > _MAX_ALIAS_BYTES:
        return f"is longer than {_MAX_ALIAS_BYTES} bytes"
    if re.search(r"-\d+$", alias):
        return "must not end in -<number>, which indexsync uses for physical index names"
    return None


def load_bindings(path: Path) -> BindingsFile:
    """Parse and validate the bindings file, naming the file, index and key on error."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: bindings file not found (set INDEXSYNC_CONFIG to its path)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read bindings file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        bindings = BindingsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + _describe(exc)) from None
    for alias in bindings.indexes:
        problem = check_alias(alias)
        if problem:
            raise ConfigError(f"{path}: [indexes.{alias}]: the alias {problem}")
    return bindings


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if loc[:1] == ["indexes"] and len(loc) >= 2:
            where = f"[indexes.{loc[1]}]" + (f" key {'.'.join(loc[2:])!r}" if loc[2:] else "")
        else:
            where = f"key {'.'.join(loc)!r}" if loc else "top level"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def load_mapping(mappings_dir: Path, alias: str) -> dict[str, Any]:
    """The index-creation body for `alias` from `<mappings_dir>/<alias>.json`, or {}."""
    path = mappings_dir / f"{alias}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read mapping: {exc}") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON for index {alias!r}: {exc}") from None
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: index {alias!r}: expected a JSON object")
    unknown = sorted(set(body) - {"settings", "mappings"})
    if unknown:
        raise ConfigError(
            f"{path}: index {alias!r}: unknown key(s) {', '.join(unknown)}; "
            "only 'settings' and 'mappings' belong here (aliases are managed by indexsync)"
        )
    for key in ("settings", "mappings"):
        if key in body and not isinstance(body[key], dict):
            raise ConfigError(f"{path}: index {alias!r}: {key!r} must be a JSON object")
    return body


@dataclass(frozen=True)
class Binding:
    """A binding checked against the database: everything SQL generation needs."""

    alias: str
    schema: str
    table: str
    key: str
    key_type: str
    columns: tuple[str, ...] | None
    excluded: tuple[str, ...]
    where: str | None

    @property
    def table_ident(self) -> sql.Identifier:
        """The table as a quoted, schema-qualified identifier."""
        return sql.Identifier(self.schema, self.table)

    @property
    def display(self) -> str:
        """The table for messages."""
        return f"{self.schema}.{self.table}"


_RESOLVE_TABLE = """
SELECT c.oid, n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%(name)s)
"""

_TABLE_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_PRIMARY_KEY = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %(oid)s AND i.indisprimary
ORDER BY array_position(i.indkey, a.attnum)
"""


def resolve(conn: psycopg.Connection[Any], spec: BindingsFile, source: Path) -> dict[str, Binding]:
    """Check every binding against the catalog and return what SQL generation needs."""
    return {
        alias: _resolve_one(conn, alias, index, source) for alias, index in spec.indexes.items()
    }


def _resolve_one(
    conn: psycopg.Connection[Any], alias: str, spec: IndexSpec, source: Path
) -> Binding:
    where = f"{source}: [indexes.{alias}]"
    with conn.cursor() as cur:
        try:
            cur.execute(_RESOLVE_TABLE, {"name": spec.table})
        except psycopg.Error:
            raise ConfigError(
                f"{where} key 'table': {spec.table!r} is not a valid table name"
            ) from None
        row = cur.fetchone()
        if row is None:
            raise ConfigError(f"{where} key 'table': table {spec.table!r} does not exist")
        oid, schema, table, relkind = row
        if relkind not in ("r", "p"):
            raise ConfigError(f"{where} key 'table': {spec.table!r} is not an ordinary table")
        cur.execute(_PRIMARY_KEY, {"oid": oid})
        key = cur.fetchall()
        if not key:
            raise ConfigError(
                f"{where} key 'table': table {spec.table!r} has no primary key; "
                "indexsync uses it as the document _id"
            )
        if len(key) > 1:
            names = ", ".join(name for name, _ in key)
            raise ConfigError(
                f"{where} key 'table': table {spec.table!r} has a composite primary key "
                f"({names}); only single-column keys are supported"
            )
        cur.execute(_TABLE_COLUMNS, {"oid": oid})
        existing = [name for name, _ in cur.fetchall()]
    if spec.columns is not None:
        unknown = [c for c in spec.columns if c not in existing]
        if unknown:
            raise ConfigError(
                f"{where} key 'columns': unknown column(s) {', '.join(map(repr, unknown))} "
                f"in table {schema}.{table}"
            )
    binding = Binding(
        alias=alias,
        schema=schema,
        table=table,
        key=key[0][0],
        key_type=key[0][1],
        columns=tuple(spec.columns) if spec.columns is not None else None,
        excluded=tuple(c for c in existing if spec.columns is not None and c not in spec.columns),
        where=spec.where,
    )
    if spec.where is not None:
        _check_where(conn, binding, where)
    return binding


def _check_where(conn: psycopg.Connection[Any], binding: Binding, where: str) -> None:
    assert binding.where is not None
    query = sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(
        binding.table_ident,
        sql.SQL(binding.where),
    )
    try:
        # Sent with the extended protocol (prepare) so a ';' cannot smuggle a second statement.
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(query, prepare=True)
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        raise ConfigError(f"{where} key 'where': invalid condition: {message}") from None
