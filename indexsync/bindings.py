"""The bindings file: which table feeds which index, as written and as resolved."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    # With `query`: the root table's columns the query reads. An UPDATE that changes none of
    # them (nor the key) is then not captured; without it every UPDATE is.
    root_columns: list[str] | None = None
    depends: list[DependSpec] = Field(default_factory=list)
    # Every write and delete of the index carries this routing value: a column of the root
    # table, or an SQL expression over its columns (`tenant_id`, `lower(region)`).
    routing: str | None = None
    # Index writes go through this ingest pipeline (one that computes embeddings, say).
    pipeline: str | None = None

    @model_validator(mode="after")
    def _query_or_columns(self) -> IndexSpec:
        if self.query is not None and self.columns is not None:
            raise ValueError("'query' replaces 'columns': give one or the other")
        if self.root_columns is not None and self.query is None:
            raise ValueError(
                "'root_columns' only goes with 'query' (with 'columns' or the whole row, "
                "indexsync knows which columns a document reads)"
            )
        return self

    @field_validator("columns", "root_columns")
    @classmethod
    def _columns_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("must name at least one column (or be left out)")
            if len(set(value)) != len(value):
                raise ValueError("names a column twice")
        return value

    @field_validator("where", "routing", "pipeline")
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
        folder = path.resolve().parent
        hint = (
            f"; start from the example: cp {folder / 'indexsync.example.toml'} {path}"
            if (folder / "indexsync.example.toml").exists()
            else "; indexsync.example.toml in the repository shows the format"
        )
        raise ConfigError(
            f"{path}: bindings file not found in {folder} (set INDEXSYNC_CONFIG or pass "
            f"--config){hint}"
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
    # Which UPDATEs of the root table the index can see: None, every one (a `query` that did
    # not declare its root columns); () any that changes the row at all; otherwise one that
    # changes one of these columns (the key, the listed columns and those `where` reads).
    watch: tuple[str, ...] | None = None
    # The routing of every write and delete: an SQL expression over the root table's columns.
    routing: str | None = None
    # The ingest pipeline index writes go through.
    pipeline: str | None = None

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


def query_key_columns(binding: Binding) -> list[str]:
    """The columns a `query` yields the root key in: `id`, or each key column by name."""
    return list(binding.key.columns) if binding.key.composite else ["id"]


def user_sql(text: str) -> sql.SQL:
    """SQL from the bindings file, to run with parameters: a `%` in it stays a `%`."""
    return sql.SQL(text.replace("%", "%%"))


def escaped_keys_sql(text: str) -> str:
    # Every % is literal except the one placeholder the contract defines.
    return text.replace("%", "%%").replace("%%(keys)s", "%(keys)s")
