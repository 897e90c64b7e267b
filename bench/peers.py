"""indexsync and PGSync side by side, in one run: `python -m bench.peers` (`make bench-peers`).

Both tools sync the same table (each in a database of its own, on one PostgreSQL with
`wal_level=logical`, as PGSync needs) into an index of their own on the same osmem server,
which both reach directly (PGSync in its OpenSearch mode, indexsync through opensearch-py).
Only one tool runs at a time, so neither pays for the other's work. The loads:

- `load`: LOAD_ROWS rows inserted in transactions of LOAD_TX_ROWS, as fast as one session
  can; docs/s = rows / seconds from the first insert until the index counts them all
  (polled every 0.1 s, with a refresh);
- `single`: SINGLE_TXNS single-row INSERT transactions from one session; seconds from the
  last commit until the index counts them all;
- `write_tps`: pgbench, 8 clients, single-row UPDATEs by random id, alternating rounds on a
  table without triggers and on each tool's table (no daemon running): TPS with each tool's
  triggers / TPS without;
- `restart`: rows inserted (10 per transaction) and updated at a steady rate while the tool
  runs; it is SIGKILLed a third of the way in and restarted a second later. After the load
  the index is compared with the table once it has settled (equal to it; or counting every
  row and unchanged for 5 s; or unchanged for 30 s; or 120 s passed): documents missing,
  stale (an older `n` or `title`), or extra, and the seconds from the load's start until
  the index was equal to the table.

PGSync runs with its defaults except one: `ELASTICSEARCH_TIMEOUT` is indexsync's own
request timeout (30 s) rather than PGSync's 10 s, which an osmem merge stall can exceed and
which then crashes its daemon mid-sync.

Writes bench/peers.json and prints a table. BENCH_SCALE shrinks every size.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
import structlog
from psycopg import sql

from bench import pgsync_peer
from bench.config import BenchConfig
from bench.console import say
from bench.procs import ProcessGroup, Worker, python_executable, run_checked
from bench.servers import PRODUCTION_DURABILITY, embedded_search
from bench.workload import INSERT_RANGE, MAPPING, TABLE, TABLE_DDL, clean_environment
from bench.writes import _SCRIPT, Pgbench
from indexsync.embedded import EmbeddedPostgres
from indexsync.search import Search
from indexsync.settings import Settings

RESULTS_PATH = Path(__file__).resolve().parent / "peers.json"
# PGSync's requirements (its README): logical decoding and a replication slot.
LOGICAL = {"wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10"}
COLUMNS = ["id", "n", "title", "body", "author", "tags", "written_at"]
_SETTLE_S = 5.0
_SETTLE_TIMEOUT_S = 120.0
# Unchanged this long while short of rows: what is missing will not come.
_STUCK_S = 30.0
_LOAD_TIMEOUT_S = 600.0
_UPDATE = "UPDATE {table} SET n = n + 1, title = 'Post ' || id || ' v' || (n + 1) WHERE id = %s"


@dataclass(frozen=True)
class PeersConfig:
    """Sizes of every load; BENCH_SCALE shrinks them together."""

    load_rows: int = 100_000
    load_tx_rows: int = 1_000
    single_txns: int = 5_000
    tps_clients: int = 8
    tps_rows: int = 100_000
    tps_rounds: int = 4
    tps_round_s: float = 4.0
    restart_s: float = 15.0
    restart_rate: float = 400.0

    @classmethod
    def from_env(cls) -> PeersConfig:
        """The configuration for BENCH_SCALE."""
        scale = BenchConfig.from_env().scale
        return cls(
            load_rows=max(2_000, int(100_000 * scale)),
            single_txns=max(200, int(5_000 * scale)),
            tps_rows=max(1_000, int(100_000 * scale)),
            tps_round_s=max(1.0, round(4.0 * scale, 2)),
            restart_s=max(4.0, round(15.0 * scale, 2)),
        )


class Tool(Protocol):
    """One sync tool, deployed on its own database and index."""

    name: str
    index: str
    database_url: str

    def start(self) -> None:
        """Run its daemon and wait until it is ready."""

    def stop(self) -> None:
        """Stop its daemon."""

    def kill(self) -> None:
        """SIGKILL its daemon."""

    def alive(self) -> bool:
        """Whether its daemon runs."""


class Osmem:
    """The search server, through plain JSON requests and indexsync's client."""

    def __init__(self, url: str) -> None:
        """A client of the server at `url`."""
        self.url = url.rstrip("/")
        self.search = Search.connect(Settings(elasticsearch_url=[self.url]))

    def _json(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}{path}", method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            return dict(json.loads(response.read()))

    def exists(self, index: str) -> bool:
        """Whether the index exists."""
        return self.search.exists(index)

    def count(self, index: str) -> int:
        """Documents searchable in the index now (after a refresh)."""
        if not self.exists(index):
            return 0
        self._json("POST", f"/{index}/_refresh")
        return int(self._json("GET", f"/{index}/_count")["count"])

    def documents(self, index: str) -> dict[str, dict[str, Any]]:
        """Every document of the index."""
        self._json("POST", f"/{index}/_refresh")
        return {str(hit["_id"]): dict(hit["_source"]) for hit in self.search.scan(index)}

    def delete(self, index: str) -> None:
        """Delete the index and what it points to."""
        for name in self.search.alias_targets(index) or [index]:
            with contextlib.suppress(Exception):
                self.search.delete_index(name)


class Indexsync:
    """indexsync deployed as its README says: bindings, mapping, install, run."""

    name = "indexsync"

    def __init__(self, procs: ProcessGroup, root: Path, database_url: str, search: str) -> None:
        """Write the bindings and the mapping, and install."""
        self._procs = procs
        self.root = root
        self.database_url = database_url
        self.index = "peers_indexsync"
        (root / "mappings").mkdir(parents=True, exist_ok=True)
        (root / "indexsync.toml").write_text(
            f'[indexes.{self.index}]\ntable = "public.{TABLE}"\n', encoding="utf-8"
        )
        (root / "mappings" / f"{self.index}.json").write_text(json.dumps(MAPPING), "utf-8")
        self.env = clean_environment()
        self.env.update(
            INDEXSYNC_DATABASE_URL=database_url,
            INDEXSYNC_ELASTICSEARCH_URL=search,
            INDEXSYNC_CONFIG=str(root / "indexsync.toml"),
            INDEXSYNC_MAPPINGS_DIR=str(root / "mappings"),
            INDEXSYNC_LOG_FORMAT="json",
        )
        self.worker: Worker | None = None

    def install(self) -> None:
        """`indexsync install` (the table is empty: nothing to backfill)."""
        command = [python_executable(), "-m", "indexsync", "install"]
        run_checked(command, env=self.env, cwd=self.root, what="indexsync install")

    def start(self) -> None:
        """`indexsync run` in the background, ready when it logs worker.started."""
        self.worker = Worker(
            self._procs, python_executable(), self.env, self.root, self.root / "worker.log"
        )
        self.worker.wait_ready()

    def stop(self) -> None:
        """SIGTERM: it finishes its batch and exits."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def kill(self) -> None:
        """SIGKILL, mid-batch."""
        if self.worker is not None:
            self.worker.kill()
            self.worker = None

    def alive(self) -> bool:
        """Whether the worker runs."""
        return self.worker is not None and self.worker.proc.poll() is None


class PgSyncTool:
    """PGSync deployed as its README says: schema file, bootstrap, daemon."""

    name = "pgsync"

    def __init__(self, peer: pgsync_peer.PgSync, database_url: str, osmem: Osmem) -> None:
        """Wrap a bootstrapped PGSync."""
        self.peer = peer
        self.index = peer.index
        self.database_url = database_url
        self._osmem = osmem

    def start(self) -> None:
        """`pgsync --daemon`, ready once its index exists and it has logged a sync line."""
        self.peer.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not self.peer.alive():
                raise RuntimeError(f"PGSync exited at start:\n{self.peer.log_tail()}")
            if self._osmem.exists(self.index) and "Sync " in self.peer.log_tail(500):
                return
            time.sleep(0.1)
        raise RuntimeError(f"PGSync did not get ready:\n{self.peer.log_tail()}")

    def stop(self) -> None:
        """SIGTERM."""
        self.peer.stop()

    def kill(self) -> None:
        """SIGKILL, with whatever it started."""
        self.peer.kill()

    def alive(self) -> bool:
        """Whether the daemon runs."""
        return self.peer.alive()


@dataclass
class Results:
    """Every figure of both tools, and how it was measured."""

    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, load: str, tool: str, value: float | int) -> None:
        """Record one tool's figure for one load."""
        self.figures.setdefault(load, {})[tool] = (
            round(value, 3) if isinstance(value, float) else value
        )


def _wait_count(osmem: Osmem, index: str, target: int, timeout: float, poll: float) -> float:
    """Poll until the index counts `target` documents; returns monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if osmem.count(index) >= target:
            return time.monotonic()
        time.sleep(poll)
    raise RuntimeError(
        f"{index}: {osmem.count(index)} documents after {timeout:.0f}s, not {target}"
    )


def _rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE))
        ).fetchone()
        return int(row[0]) if row else 0


def measure_load(tool: Tool, osmem: Osmem, cfg: PeersConfig, first_id: int) -> float:
    """Rows inserted in big transactions; docs/s until all are searchable."""
    before = osmem.count(tool.index)
    insert = sql.SQL(INSERT_RANGE).format(table=sql.Identifier(TABLE))
    last = first_id + cfg.load_rows - 1
    with psycopg.connect(tool.database_url, autocommit=True) as conn:
        started = time.monotonic()
        for start in range(first_id, last + 1, cfg.load_tx_rows):
            conn.execute(insert, {"first": start, "last": min(last, start + cfg.load_tx_rows - 1)})
        written = time.monotonic()
    seen = _wait_count(osmem, tool.index, before + cfg.load_rows, _LOAD_TIMEOUT_S, 0.1)
    say(
        f"peers {tool.name}: {cfg.load_rows:,} rows inserted in {written - started:.1f}s, "
        f"all searchable after {seen - started:.1f}s"
    )
    return cfg.load_rows / (seen - started)


def measure_single(tool: Tool, osmem: Osmem, cfg: PeersConfig, first_id: int) -> float:
    """Single-row transactions; seconds from the last commit until all are searchable."""
    before = osmem.count(tool.index)
    insert = sql.SQL(INSERT_RANGE).format(table=sql.Identifier(TABLE))
    with psycopg.connect(tool.database_url, autocommit=True) as conn:
        for n in range(first_id, first_id + cfg.single_txns):
            conn.execute(insert, {"first": n, "last": n}, prepare=True)
        committed = time.monotonic()
    seen = _wait_count(osmem, tool.index, before + cfg.single_txns, _LOAD_TIMEOUT_S, 0.02)
    say(
        f"peers {tool.name}: {cfg.single_txns:,} single-row transactions searchable "
        f"{seen - committed:.2f}s after the last commit"
    )
    return seen - committed


def _restart_load(url: str, first_id: int, cfg: PeersConfig, stop_at: float) -> int:
    """Inserts (10 rows per transaction) and updates of random earlier rows, at a steady
    rate; returns the last id inserted."""
    insert = sql.SQL(INSERT_RANGE).format(table=sql.Identifier(TABLE))
    update = sql.SQL(_UPDATE).format(table=sql.Identifier(TABLE))
    rng = random.Random(7)
    next_id = first_id
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        i = 0
        while True:
            slot = started + i * 20 / cfg.restart_rate
            if slot >= stop_at:
                return next_id - 1
            delay = slot - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with conn.transaction():
                conn.execute(insert, {"first": next_id, "last": next_id + 9}, prepare=True)
            next_id += 10
            for _ in range(10):
                conn.execute(update, (rng.randint(1, next_id - 1),), prepare=True)
            i += 1


def _compare(osmem: Osmem, tool: Tool) -> dict[str, int]:
    """Documents missing, stale or extra against the table."""
    with psycopg.connect(tool.database_url) as conn:
        rows = {
            str(r[0]): (int(r[1]), str(r[2]))
            for r in conn.execute(
                sql.SQL("SELECT id, n, title FROM {}").format(sql.Identifier(TABLE))
            )
        }
    docs = osmem.documents(tool.index)
    missing = sum(1 for k in rows if k not in docs)
    extra = sum(1 for k in docs if k not in rows)
    stale = sum(
        1
        for k, (n, title) in rows.items()
        if k in docs and (int(docs[k].get("n", -1)) != n or docs[k].get("title") != title)
    )
    return {"rows": len(rows), "missing": missing, "stale": stale, "extra": extra}


def _settled(state: dict[str, int], still_s: float, count: int, rows: int) -> bool:
    """In sync, or counting every row and unchanged for a while (a tool that stopped)."""
    in_sync = state["missing"] == state["stale"] == state["extra"] == 0
    return in_sync or (still_s >= _SETTLE_S and count >= rows) or still_s >= _STUCK_S


def measure_restart(tool: Tool, osmem: Osmem, cfg: PeersConfig, first_id: int) -> dict[str, Any]:
    """SIGKILL mid-load, restart a second later; what is missing or stale once settled."""
    started = time.monotonic()
    stop_at = started + cfg.restart_s
    done: list[int] = []
    writer = threading.Thread(
        target=lambda: done.append(_restart_load(tool.database_url, first_id, cfg, stop_at))
    )
    writer.start()
    time.sleep(cfg.restart_s / 3)
    tool.kill()
    killed_at = time.monotonic() - started
    time.sleep(1.0)
    tool.start()
    writer.join()
    rows = _rows(tool.database_url)
    deadline = time.monotonic() + _SETTLE_TIMEOUT_S
    last_change, last = time.monotonic(), None
    while time.monotonic() < deadline:
        state = _compare(osmem, tool)
        if state != last:
            last, last_change = state, time.monotonic()
        elif _settled(state, time.monotonic() - last_change, osmem.count(tool.index), rows):
            break
        time.sleep(1.0)
    compared = _compare(osmem, tool)
    found: dict[str, Any] = dict(compared)
    found["killed_at_s"] = round(killed_at, 1)
    found["running_at_the_end"] = tool.alive()
    found["settled_after_s"] = round(time.monotonic() - started, 1)
    say(f"peers {tool.name}: after SIGKILL and restart: {found}")
    return found


def measure_write_tps(
    servers_pgbench: Path, tools: list[Tool], plain_url: str, cfg: PeersConfig
) -> dict[str, Any]:
    """pgbench single-row UPDATEs: each tool's table against one without triggers."""
    urls = {"none": plain_url, **{t.name: t.database_url for t in tools}}
    for url in urls.values():
        with psycopg.connect(url, autocommit=True) as conn:
            have = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE))
            ).fetchone()
            if have and int(have[0]) < cfg.tps_rows:
                conn.execute(
                    sql.SQL(INSERT_RANGE + " ON CONFLICT DO NOTHING").format(
                        table=sql.Identifier(TABLE)
                    ),
                    {"first": 1, "last": cfg.tps_rows},
                )
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(TABLE)))
    script = Path(tempfile.mkdtemp(prefix="indexsync-peers-tps-")) / "update.sql"
    script.write_text(_SCRIPT.format(table=TABLE), encoding="ascii")
    tps: dict[str, list[float]] = {name: [] for name in urls}
    for n in range(cfg.tps_rounds):
        # Each round starts with another table, so none always follows the same one.
        names = list(urls)
        names = names[n % len(names) :] + names[: n % len(names)]
        for name in names:
            bench = Pgbench(
                servers_pgbench, urls[name], cfg.tps_rows, cfg.tps_clients, cfg.tps_round_s
            )
            tps[name].append(bench.run(script))
        say(
            f"peers write tps round {n + 1}/{cfg.tps_rounds}: "
            + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in tps.items())
        )
    shutil.rmtree(script.parent, ignore_errors=True)
    base = statistics.median(tps["none"])
    return {
        name: {
            "tps": round(statistics.median(v)),
            "ratio": round(statistics.median(v) / base, 3),
            "rounds": [round(x) for x in v],
        }
        for name, v in tps.items()
    }


def _create_database(admin_url: str, pg: EmbeddedPostgres, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = pg.url_for(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL(TABLE_DDL).format(table=sql.Identifier(TABLE)))
    return url


@contextlib.contextmanager
def _servers(procs: ProcessGroup, workdir: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    settings = {**PRODUCTION_DURABILITY, **LOGICAL}
    with (
        EmbeddedPostgres(workdir / "pgdata", settings=settings) as pg,
        embedded_search(procs, workdir, direct=True) as search_url,
    ):
        yield pg, search_url


def run(cfg: PeersConfig, workdir: Path) -> dict[str, Any]:
    """Deploy both tools, run every load through each, and collect the figures."""
    binaries = pgsync_peer.venv_bin()
    results = Results()
    with ProcessGroup() as procs, _servers(procs, workdir) as (pg, search_url):
        osmem = Osmem(search_url)
        redis = pgsync_peer.Redis(procs, binaries, workdir)
        try:
            ours_url = _create_database(pg.url, pg, "peers_indexsync")
            theirs_url = _create_database(pg.url, pg, "peers_pgsync")
            plain_url = _create_database(pg.url, pg, "peers_plain")
            ours = Indexsync(procs, workdir / "indexsync", ours_url, search_url)
            ours.install()
            peer = pgsync_peer.PgSync(
                procs,
                binaries,
                workdir / "pgsync",
                theirs_url,
                search_url,
                redis.port,
                table=TABLE,
                index="peers_pgsync",
                columns=COLUMNS,
                request_timeout=Settings.model_construct().elasticsearch_request_timeout,
            )
            peer.bootstrap()
            theirs = PgSyncTool(peer, theirs_url, osmem)
            tools: list[Tool] = [ours, theirs]
            next_id = 1
            for tool in tools:
                tool.start()
                try:
                    results.add("load_docs_per_s", tool.name, measure_load(tool, osmem, cfg, 1))
                    first = 1 + cfg.load_rows
                    results.add(
                        "single_txn_seconds_to_searchable",
                        tool.name,
                        measure_single(tool, osmem, cfg, first),
                    )
                    next_id = first + cfg.single_txns
                    restart = measure_restart(tool, osmem, cfg, next_id)
                    results.add("restart_missing", tool.name, restart["missing"])
                    results.add("restart_stale", tool.name, restart["stale"])
                    results.add("restart_extra", tool.name, restart["extra"])
                    results.add(
                        "restart_seconds_until_in_sync", tool.name, restart["settled_after_s"]
                    )
                    results.details.setdefault("restart", {})[tool.name] = restart
                finally:
                    tool.stop()
            tps = measure_write_tps(pg.bin_dir / "pgbench", tools, plain_url, cfg)
            for tool in tools:
                results.add("write_tps_ratio", tool.name, tps[tool.name]["ratio"])
            results.details["write_tps"] = tps
            results.details["pgsync_version"] = pgsync_peer.installed_version(binaries)
            results.details["pgsync_log_tail"] = peer.log_tail(1500)
            results.details["pgsync_tracebacks_in_log"] = peer.crashes()
            with contextlib.suppress(RuntimeError):
                peer.teardown()
        finally:
            redis.close()
    return {"figures": results.figures, "details": results.details}


# Which way is better, for the verdict of each figure.
_HIGHER_IS_BETTER = {
    "load_docs_per_s": True,
    "single_txn_seconds_to_searchable": False,
    "write_tps_ratio": True,
    "restart_missing": False,
    "restart_stale": False,
    "restart_extra": False,
    "restart_seconds_until_in_sync": False,
}


def verdicts(figures: dict[str, dict[str, Any]]) -> dict[str, str]:
    """For each figure: `indexsync` or `pgsync` (the better), or `tie`."""
    found = {}
    for name, values in figures.items():
        ours, theirs = values.get("indexsync"), values.get("pgsync")
        if ours is None or theirs is None or ours == theirs:
            found[name] = "tie"
        elif (ours > theirs) == _HIGHER_IS_BETTER.get(name, True):
            found[name] = "indexsync"
        else:
            found[name] = "pgsync"
    return found


def main() -> int:
    """Run both tools through every load; print the table; write bench/peers.json."""
    cfg = PeersConfig.from_env()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    workdir = Path(tempfile.mkdtemp(prefix="indexsync-peers-"))
    say(f"peers: work directory {workdir}")
    started = time.monotonic()
    try:
        found = run(cfg, workdir)
    except BaseException:
        say(f"FAILED; logs kept in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "runtime_s": round(time.monotonic() - started, 1),
        "config": cfg.__dict__,
        "load_average_at_end": os.getloadavg(),
        "method": __doc__,
        **found,
        "better": verdicts(found["figures"]),
    }
    RESULTS_PATH.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{'figure':<36} {'indexsync':>12} {'pgsync':>12}  better")
    for name, values in found["figures"].items():
        print(
            f"{name:<36} {values.get('indexsync', '-'):>12} {values.get('pgsync', '-'):>12}  "
            f"{report['better'][name]}"
        )
    say(f"wrote {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
