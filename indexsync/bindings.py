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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from indexsync.errors import ConfigError
from indexsync.keys import Key

# Elasticsearch's rules for index names, which aliases share; `-<n>` is added for physical names.
_FORBIDDEN = set('\\/*?"<>| ,#:')
_MAX_ALIAS_BYTES = 200


class DependSpec(BaseModel):
    """One `[[indexes.<alias>.depends]]` entry: a table whose changes re-index documents."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str = Field(min_length=1)
    # One column holding the document id; for a root table with a composite key, a list of
    # columns holding the root's key values, in the root key's order.
    key: str | list[str] | None = Field(default=None, min_length=1)
    sql: str | None = Field(default=None, min_length=1)
    columns: list[str] | None = None

    @property
    def key_columns(self) -> list[str] | None:
        """`key` as a list of columns."""
        if self.key is None:
            return None
        return [self.key] if isinstance(self.key, str) else list(self.key)

    @model_validator(mode="after")
    def _key_or_sql(self) -> DependSpec:
        if (self.key is None) == (self.sql is None):
            raise ValueError(
                "give exactly one of 'key' (a column holding the document id) "
                "or 'sql' (a query mapping %(keys)s to document ids)"
            )
        if self.sql is not None and "%(keys)s" not in self.sql:
            raise ValueError("'sql' must use the %(keys)s placeholder")
        return self


class IndexSpec(BaseModel):
    """One `[indexes.<alias>]` table of the bindings file, as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str = Field(min_length=1)
    columns: list[str] | None = None
    where: str | None = None
    query: str | None = Field(default=None, min_length=1)
    depends: list[DependSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _query_or_columns(self) -> IndexSpec:
        if self.query is not None and self.columns is not None:
            raise ValueError("'query' replaces 'columns': give one or the other")
        return self

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
            rest = loc[2:]
            if rest[:1] == ["depends"] and len(rest) >= 2 and rest[1].isdigit():
                # Name the n-th [[depends]] entry the way the file shows it (from 1).
                rest = [f"depends[{int(rest[1]) + 1}]", *rest[2:]]
            where = f"[indexes.{loc[1]}]" + (f" key {'.'.join(rest)!r}" if rest else "")
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
class Dependency:
    """A dependent table checked against the catalog."""

    schema: str
    table: str
    # The columns that hold the root's key (the document id), or None with `expand`.
    key: tuple[str, ...] | None
    expand: str | None
    pk: str
    pk_type: str
    columns: tuple[str, ...] | None

    @property
    def source(self) -> str:
        """The name outbox rows of this dependency carry."""
        return f"{self.schema}.{self.table}"

    @property
    def table_ident(self) -> sql.Identifier:
        """The table as a quoted, schema-qualified identifier."""
        return sql.Identifier(self.schema, self.table)


@dataclass(frozen=True)
class Binding:
    """A binding checked against the database: everything SQL generation needs."""

    alias: str
    schema: str
    table: str
    key: Key
    # The listed columns that the table has now (None: the whole row). A column added
    # later is never in it; one dropped since install falls out of it (see `resolve`).
    columns: tuple[str, ...] | None
    where: str | None
    query: str | None = None
    depends: tuple[Dependency, ...] = ()

    def dependency(self, source: str) -> Dependency | None:
        """The dependency whose outbox rows carry `source`."""
        return next((d for d in self.depends if d.source == source), None)

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


def resolve(
    conn: psycopg.Connection[Any], spec: BindingsFile, source: Path, *, strict: bool = True
) -> dict[str, Binding]:
    """Check every binding against the catalog and return what SQL generation needs.

    With `strict` off, a listed column the table no longer has is left out of the documents
    (as a running worker does) instead of being an error.
    """
    return {
        alias: _resolve_one(conn, alias, index, source, strict=strict)
        for alias, index in spec.indexes.items()
    }


def resolve_each(
    conn: psycopg.Connection[Any], spec: BindingsFile, source: Path
) -> tuple[dict[str, Binding], dict[str, ConfigError]]:
    """Resolve bindings one by one, as a running worker must: one broken binding is not fatal.

    A listed column that the table no longer has is left out of the documents instead of
    failing the binding, so a migration that drops it does not stop the index.
    """
    good: dict[str, Binding] = {}
    broken: dict[str, ConfigError] = {}
    for alias, index in spec.indexes.items():
        try:
            # A savepoint: a failed probe must not abort the caller's transaction.
            with conn.transaction():
                good[alias] = _resolve_one(conn, alias, index, source, strict=False)
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


def _table(conn: psycopg.Connection[Any], name: str, ctx: str) -> _Table:
    """Resolve a table name through the catalog; `ctx` names the key in messages."""
    with conn.cursor() as cur:
        try:
            cur.execute(_RESOLVE_TABLE, {"name": name})
        except psycopg.Error:
            raise ConfigError(f"{ctx}: {name!r} is not a valid table name") from None
        row = cur.fetchone()
        if row is None:
            raise ConfigError(f"{ctx}: table {name!r} does not exist")
        oid, schema, table, relkind = row
        if relkind not in ("r", "p"):
            raise ConfigError(f"{ctx}: {name!r} is not an ordinary table")
        cur.execute(_PRIMARY_KEY, {"oid": oid})
        key = cur.fetchall()
        if not key:
            raise ConfigError(
                f"{ctx}: table {name!r} has no primary key; indexsync uses it as the document _id"
            )
        cur.execute(_TABLE_COLUMNS, {"oid": oid})
        columns = {col: type_ for col, type_ in cur.fetchall()}
    return _Table(
        schema, table, tuple(col for col, _ in key), tuple(type_ for _, type_ in key), columns
    )


def _unknown(columns: list[str], table: _Table, ctx: str) -> None:
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise ConfigError(
            f"{ctx}: unknown column(s) {', '.join(map(repr, unknown))} "
            f"in table {table.schema}.{table.table}"
        )


def _resolve_one(
    conn: psycopg.Connection[Any], alias: str, spec: IndexSpec, source: Path, *, strict: bool
) -> Binding:
    here = f"{source}: [indexes.{alias}]"
    root = _table(conn, spec.table, f"{here} key 'table'")
    key = Key(root.key, root.key_types)
    columns: tuple[str, ...] | None = None
    if spec.columns is not None:
        if strict:
            _unknown(spec.columns, root, f"{here} key 'columns'")
        columns = tuple(c for c in spec.columns if c in root.columns)
    depends = []
    for n, dep_spec in enumerate(spec.depends, start=1):
        ctx = f"{here} key 'depends[{n}]"
        table = _table(conn, dep_spec.table, f"{ctx}.table'")
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
        watched = dep_spec.columns
        if watched is not None and dep_key is not None:
            # Moving a child to another parent must always be seen.
            watched = [*watched, *(c for c in dep_key if c not in watched)]
        dep = Dependency(
            table.schema,
            table.table,
            tuple(dep_key) if dep_key is not None else None,
            _escaped_keys_sql(dep_spec.sql) if dep_spec.sql is not None else None,
            table.key[0],
            table.key_types[0],
            tuple(watched) if watched is not None else None,
        )
        if dep.expand is not None:
            _check_depend_sql(conn, dep, len(key.columns), f"{ctx}.sql'")
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
    )
    if spec.where is not None:
        _check_where(conn, binding, here)
    if spec.query is not None:
        _check_query(conn, binding, here)
    return binding


def _check_query(conn: psycopg.Connection[Any], binding: Binding, where: str) -> None:
    assert binding.query is not None
    probe = sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(sql.SQL(binding.query))
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(probe, prepare=True)
            names = [col.name for col in cur.description or []]
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        raise ConfigError(f"{where} key 'query': the query fails: {message}") from None
    wanted = [*query_key_columns(binding), "doc"]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise ConfigError(
            f"{where} key 'query': it must yield columns "
            f"{', '.join(map(repr, wanted[:-1]))} and {wanted[-1]!r} "
            f"(missing: {', '.join(missing)}; it yields: {', '.join(names) or 'nothing'})"
        )


def query_key_columns(binding: Binding) -> list[str]:
    """The columns a `query` yields the root key in: `id`, or each key column by name."""
    return list(binding.key.columns) if binding.key.composite else ["id"]


def user_sql(text: str) -> sql.SQL:
    """SQL from the bindings file, to run with parameters: a `%` in it stays a `%`."""
    return sql.SQL(text.replace("%", "%%"))


def _escaped_keys_sql(text: str) -> str:
    # Every % is literal except the one placeholder the contract defines.
    return text.replace("%", "%%").replace("%%(keys)s", "%(keys)s")


def _check_depend_sql(
    conn: psycopg.Connection[Any], dep: Dependency, width: int, where: str
) -> None:
    assert dep.expand is not None
    probe = sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(sql.SQL(dep.expand))
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(probe, {"keys": []}, prepare=True)
            got = len(cur.description or [])
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        raise ConfigError(f"{where}: the query fails: {message}") from None
    if got != width:
        raise ConfigError(
            f"{where}: it must yield exactly {width} column(s), the document's key"
            + (" (one per key column, in key order)" if width > 1 else " (the document id)")
        )


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
