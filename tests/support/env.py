"""What the tests share: one test's world (`Env`), waiting, and a running worker.

Tests import these from here, never from conftest.py or from another test module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from indexsync import clients, engines
from indexsync.bindings import Binding, load_bindings
from indexsync.catalog import resolve
from indexsync.clients import Rest
from indexsync.engines import Engine
from indexsync.search import Search
from indexsync.settings import Settings, load_settings
from indexsync.store import Store
from indexsync.worker import Totals, Worker
from tests.support.esproxy import CompatProxy

POSTS = """
CREATE TABLE posts (
    id bigint PRIMARY KEY,
    title text NOT NULL,
    body text,
    views integer NOT NULL DEFAULT 0,
    tags text[],
    meta jsonb,
    published_at timestamptz DEFAULT '2026-01-02 03:04:05+00',
    deleted_at timestamptz
);
"""

EXPECTED_POSTS = "SELECT id, to_jsonb(p) FROM posts p WHERE deleted_at IS NULL"


@dataclass
class SearchServer:
    """Where a test's search server is, and the test proxy in front of it, if any."""

    url: str
    prefix: str
    proxy: CompatProxy | None
    # The server itself, bypassing the proxy and its faults.
    upstream_url: str | None = None


@dataclass
class Env:
    """One test's world: a database, a search server, a bindings file, and helpers."""

    database_url: str
    search: SearchServer
    workdir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    _rest: Rest | None = None
    _search: Search | None = None

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

    def cli(
        self, *args: str, timeout: float = 60, input: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run `indexsync ARGS` in a subprocess, as a user would (`input` on its stdin)."""
        return subprocess.run(
            [sys.executable, "-m", "indexsync", *args],
            env=self.env_vars(**env),
            capture_output=True,
            text=True,
            input=input,
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

    def engine(self) -> Engine:
        """The engine behind the search URL, as indexsync detects it."""
        return engines.detect(self.settings())

    @property
    def http(self) -> Rest:
        """A raw client of the search server, for looking at it as any user could."""
        if self._rest is None:
            self._rest = clients.connect(self.settings(), self.engine())
        return self._rest

    def resolved(self, **overrides: Any) -> dict[str, Binding]:
        """The bindings as the worker sees them."""
        settings = self.settings(**overrides)
        with Store.connect(settings) as store:
            return resolve(store, load_bindings(settings.config), settings.config)

    def sync(self, **overrides: Any) -> Totals:
        """Run one in-process worker until the outbox is empty."""
        settings = self.settings(**overrides)
        search = Search.connect(settings)
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
    def searcher(self) -> Search:
        """indexsync's own adapter on the test's search server."""
        if self._search is None:
            self._search = Search.connect(self.settings())
        return self._search

    def docs(self, name: str) -> dict[str, dict[str, Any]]:
        """Every document behind an alias, by _id."""
        alias = self.alias(name)
        self.searcher.refresh(alias)
        return {hit["_id"]: hit["_source"] for hit in self.searcher.scan(alias)}

    def versions(self, name: str) -> dict[str, int]:
        """The external version of every document behind an alias."""
        alias = self.alias(name)
        self.searcher.refresh(alias)
        return {hit["_id"]: hit["_version"] for hit in self.searcher.scan(alias, source=False)}

    def put_doc(self, name: str, doc_id: str, doc: dict[str, Any]) -> None:
        """Write a document behind indexsync's back (a hand edit, a stray writer)."""
        self.http.request("PUT", f"/{self.alias(name)}/_doc/{quote(doc_id, safe='')}", body=doc)

    def delete_doc(self, name: str, doc_id: str) -> None:
        """Delete a document behind indexsync's back."""
        self.http.request("DELETE", f"/{self.alias(name)}/_doc/{quote(doc_id, safe='')}")

    def expected(self, query: str) -> dict[str, dict[str, Any]]:
        """What the index should hold: `query` yields (id, jsonb document)."""
        return {str(row[0]): row[1] for row in self.sql(query)}

    def close(self) -> None:
        """Close the clients the test opened."""
        if self._rest is not None:
            self._rest.close()
        if self._search is not None:
            self._search.close()


@contextlib.contextmanager
def running(env: Env, **settings: str) -> Iterator[list[str]]:
    """`indexsync run` for the block; then SIGTERM, which must end it with exit 0.

    Yields a list that receives the worker's stderr once it has stopped.
    """
    worker = env.spawn("run", **settings)
    log: list[str] = []

    def started() -> bool:
        # Its first session means its signal handlers are in place: a SIGTERM sent before
        # that would kill it mid-import, which is not what a test means to check.
        sessions = env.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'indexsync:worker'"
        )[0][0]
        return worker.poll() is not None or sessions > 0

    try:
        wait_for(started, what="the worker's first session")
        yield log
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
        log.append(err)
    assert worker.returncode == 0, err


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
