"""Where the benchmark runs: embedded servers, or the database and cluster named by the environment.

INDEXSYNC_TEST_DATABASE_URL (a superuser URL) and INDEXSYNC_TEST_ELASTICSEARCH_URL are the
same variables the tests honour; whichever is unset is replaced by an embedded server.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from elasticsearch import Elasticsearch
from psycopg import sql

from bench.console import say
from bench.cpu import postmaster_pid, process_cpu_s
from bench.procs import ProcessGroup, bench_module
from indexsync.embedded import EmbeddedPostgres

DATABASE_ENV = "INDEXSYNC_TEST_DATABASE_URL"
SEARCH_ENV = "INDEXSYNC_TEST_ELASTICSEARCH_URL"

# Server settings worth knowing when reading a write-throughput figure.
_PG_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "max_connections",
)
_SEARCH_START_TIMEOUT_S = 60
# The bench measures what users run: PostgreSQL's own defaults, not the test suite's
# throw-away cluster without durability. (The write-TPS figure also reports a run with
# asynchronous commit, where the database is bound by CPU alone.)
PRODUCTION_DURABILITY = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


@dataclass
class Servers:
    """A running PostgreSQL and search server, plus what the results must say about them."""

    pg_admin_url: str
    search_url: str
    pg_kind: str
    search_kind: str
    search_version: str
    pg_settings: dict[str, str]
    pgbench: Path
    # The embedded server's postmaster, whose CPU /proc shows; None for an external server.
    postmaster: int | None
    # Every database and index of this run starts with it, so a shared cluster stays tidy.
    prefix: str
    _databases: list[str] = field(default_factory=list)
    _aliases: list[str] = field(default_factory=list)

    def create_database(self, name: str) -> str:
        """Create an empty database for one figure; returns its URL."""
        dbname = f"{self.prefix}{name}"
        with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        self._databases.append(dbname)
        return psycopg.conninfo.make_conninfo(self.pg_admin_url, dbname=dbname)

    def index_name(self, name: str) -> str:
        """The name of an index or alias of this run, remembered for cleanup."""
        full = f"{self.prefix}{name}"
        self._aliases.append(full)
        return full

    def search_client(self) -> Elasticsearch:
        """A plain client of the search server, for looking at indexes."""
        return Elasticsearch(self.search_url, request_timeout=120)

    def drop_indexes(self) -> None:
        """Delete every index of this run so far, so the next figure starts on an idle server.

        The in-memory server slows down as it fills (by the latency figure it would hold
        well over a million documents from earlier figures), and a real cluster should not
        keep a benchmark's data either.
        """
        with contextlib.suppress(Exception), self.search_client() as es:
            for name in self._aliases:
                # Resolve aliases to physical names: wildcard deletes may be forbidden.
                found = es.options(ignore_status=404).indices.get(index=name)
                if found.meta.status == 200:
                    for index in found.body:
                        es.options(ignore_status=404).indices.delete(index=index)
        self._aliases.clear()

    def cleanup(self) -> None:
        """Drop this run's databases and indexes (the embedded servers vanish anyway)."""
        self.drop_indexes()
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.pg_admin_url, autocommit=True) as conn,
        ):
            for dbname in self._databases:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    )
                )

    def describe(self) -> dict[str, Any]:
        """The servers as recorded in results.json."""
        return {
            "postgresql": {"kind": self.pg_kind, "settings": self.pg_settings},
            "search": {"kind": self.search_kind, "version": self.search_version},
            "pgbench": str(self.pgbench),
        }


def _pg_settings(url: str) -> dict[str, str]:
    values = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name in _PG_SETTINGS:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            values[name] = str(row[0]) if row else "?"
    return values


# The server behind each compat proxy we started: what it really is, not what the proxy says.
_UPSTREAMS: dict[str, str] = {}


def _search_kind(url: str) -> tuple[str, str]:
    upstream = _UPSTREAMS.get(url)
    if upstream is not None and upstream != url:
        # Through the proxy GET / answers as Elasticsearch 9; ask the server itself.
        with urllib.request.urlopen(upstream, timeout=10) as response:
            version = json.loads(response.read())["version"]
        kind = "osmem" if version.get("build_hash") == "osmem" else version["distribution"]
        return f"{kind} (behind the Elasticsearch 9 compat proxy)", str(version["number"])
    with Elasticsearch(url) as es:
        version = es.info().body["version"]
    if version.get("build_hash") == "osmem":
        return "osmem", str(version.get("number"))
    return str(version.get("distribution") or "elasticsearch"), str(version.get("number"))


@contextlib.contextmanager
def embedded_search(procs: ProcessGroup, workdir: Path, *, direct: bool = False) -> Iterator[str]:
    """Run osmem in its own process (behind the Elasticsearch proxy unless `direct`)."""
    log = (workdir / "search-server.log").open("w", encoding="utf-8")
    command, env = bench_module("bench.search_server")
    proc = procs.spawn(
        [*command, "--direct"] if direct else command,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(_SEARCH_START_TIMEOUT_S)
            raise RuntimeError(
                f"the embedded search server failed to start (exit {proc.returncode}); "
                f"see {workdir / 'search-server.log'}"
            )
        endpoints = json.loads(line)
        _UPSTREAMS[str(endpoints["url"])] = str(endpoints["upstream_url"])
        yield str(endpoints["url"])
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # end of input is its signal to stop
        procs.stop(proc, timeout=30)
        log.close()


@contextlib.contextmanager
def null_sink(procs: ProcessGroup, workdir: Path, upstream: str) -> Iterator[NullSink]:
    """Run the null sink (bench/null_sink.py) in front of `upstream`."""
    log = (workdir / "null-sink.log").open("w", encoding="utf-8")
    command, env = bench_module("bench.null_sink")
    proc = procs.spawn(
        [*command, upstream], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(_SEARCH_START_TIMEOUT_S)
            raise RuntimeError(f"the null sink failed to start; see {workdir / 'null-sink.log'}")
        yield NullSink(str(json.loads(line)["url"]), proc.pid)
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        procs.stop(proc, timeout=30)
        log.close()


@dataclass(frozen=True)
class NullSink:
    """A running null sink: its URL, and its process (whose CPU is part of a drain's cost)."""

    url: str
    pid: int

    def stats(self) -> dict[str, int]:
        """How many bulk requests and items it has swallowed so far."""
        with urllib.request.urlopen(f"{self.url}/_null_sink/stats", timeout=10) as response:
            return dict(json.loads(response.read()))

    def cpu_s(self) -> float:
        """CPU seconds it has used so far."""
        return process_cpu_s(self.pid) or 0.0


@contextlib.contextmanager
def started(procs: ProcessGroup, workdir: Path) -> Iterator[Servers]:
    """Start (or connect to) PostgreSQL and the search server for one benchmark run."""
    pgbench = EmbeddedPostgres(workdir / "pgdata").bin_dir / "pgbench"
    if not pgbench.exists():
        found = shutil.which("pgbench")
        if found is None:
            raise RuntimeError("pgbench not found: install the embedded extra or PostgreSQL")
        pgbench = Path(found)
    external_pg = os.environ.get(DATABASE_ENV)
    external_search = os.environ.get(SEARCH_ENV)
    # On shared servers the names carry the pid, so concurrent runs never collide.
    prefix = f"isbench{os.getpid()}_" if external_pg or external_search else "bench_"
    with contextlib.ExitStack() as stack:
        if external_pg:
            pg_url, pg_kind = external_pg, "external"
            postmaster = None
            say("PostgreSQL: using INDEXSYNC_TEST_DATABASE_URL")
        else:
            pg = stack.enter_context(
                EmbeddedPostgres(workdir / "pgdata", settings=PRODUCTION_DURABILITY)
            )
            pg_url, pg_kind = pg.url, "embedded"
            postmaster = postmaster_pid(pg.data_dir)
            say(f"PostgreSQL: embedded, {pg.url}")
        if external_search:
            search_url = external_search
            say("search: using INDEXSYNC_TEST_ELASTICSEARCH_URL")
        else:
            search_url = stack.enter_context(embedded_search(procs, workdir))
            engine = os.environ.get("BENCH_ENGINE", "osmem")
            what = "a real OpenSearch node" if engine == "opensearch" else "embedded osmem"
            say(f"search: {what} behind the compat proxy, {search_url}")
        kind, version = _search_kind(search_url)
        servers = Servers(
            pg_admin_url=pg_url,
            search_url=search_url,
            pg_kind=pg_kind,
            search_kind=kind,
            search_version=version,
            pg_settings=_pg_settings(pg_url),
            pgbench=pgbench,
            postmaster=postmaster,
            prefix=prefix,
        )
        try:
            yield servers
        finally:
            servers.cleanup()


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_mb": _memory_mb(),
    }


def _memory_mb() -> int | None:
    with contextlib.suppress(Exception):
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().total / (1024 * 1024))
    return None
