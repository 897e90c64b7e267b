"""What the capture triggers cost writers: pgbench TPS with and without them."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, LiteralString

from psycopg import sql

from bench.config import BenchConfig
from bench.console import say
from bench.recipe import RECIPE_TRIGGER
from bench.workload import Workspace

PLAIN_TABLE = "tps_plain"
SYNCED_TABLE = "tps_synced"
# The same table with the blog recipe's trigger (NOTIFY with the row as JSON) instead.
RECIPE_TABLE = "tps_recipe"
# The same table with the least an indexed outbox can do: its trigger appends the id to a
# log with a bigserial primary key. What indexsync's capture costs beyond that is its own.
# `make bench-capture` runs the same trigger as its `floor_indexed` variant.
FLOOR_TABLE = "tps_floor"
FLOOR_INDEXED_LOG = "floor_indexed_log"
FLOOR_INDEXED_TRIGGER: LiteralString = """
    CREATE TABLE floor_indexed_log (seq bigserial PRIMARY KEY, doc_id text);
    CREATE FUNCTION capture_floor_indexed() RETURNS trigger LANGUAGE plpgsql
        AS $$BEGIN
            INSERT INTO floor_indexed_log (doc_id) VALUES (NEW.id::text); RETURN NULL;
        END$$;
    CREATE TRIGGER capture_floor_indexed AFTER INSERT OR UPDATE OR DELETE ON {table}
        FOR EACH ROW EXECUTE FUNCTION capture_floor_indexed();
"""
_EMPTY_LOGS = f"TRUNCATE indexsync.outbox, {FLOOR_INDEXED_LOG}"

_SCRIPT = "\\set id random(1, :rows)\nUPDATE {table} SET n = n + 1 WHERE id = :id;\n"
_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
# pgbench's own worker threads: one per core is enough to drive 8 clients here.
_PGBENCH_THREADS = 2


@dataclass(frozen=True)
class Pgbench:
    """How pgbench is run; the same for every round."""

    binary: Path
    database_url: str
    rows: int
    clients: int
    seconds: float
    # Extra server settings for pgbench's sessions (PGOPTIONS), e.g. asynchronous commit.
    session: tuple[tuple[str, str], ...] = ()

    def with_session(self, **settings: str) -> Pgbench:
        """The same runs with these settings in every pgbench session."""
        return Pgbench(
            self.binary,
            self.database_url,
            self.rows,
            self.clients,
            self.seconds,
            tuple(settings.items()),
        )

    def command(self, script: Path) -> list[str]:
        """The command line of one round."""
        return [
            str(self.binary),
            "--no-vacuum",
            f"--client={self.clients}",
            f"--jobs={min(_PGBENCH_THREADS, self.clients)}",
            f"--time={max(1, round(self.seconds))}",
            "--protocol=prepared",
            f"--define=rows={self.rows}",
            f"--file={script}",
            self.database_url,
        ]

    def run(self, script: Path) -> float:
        """One round; returns its TPS."""
        env = dict(os.environ)
        if self.session:
            env["PGOPTIONS"] = " ".join(f"-c {key}={value}" for key, value in self.session)
        result = subprocess.run(
            self.command(script),
            capture_output=True,
            text=True,
            timeout=self.seconds + 120,
            env=env,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pgbench exited {result.returncode}:\n{result.stderr[-2000:]}")
        tps = _TPS.search(result.stdout)
        failed = _FAILED.search(result.stdout)
        if tps is None:
            raise RuntimeError(f"no TPS in pgbench's output:\n{result.stdout[-2000:]}")
        if failed is not None and int(failed.group(1)):
            raise RuntimeError(f"pgbench: {failed.group(1)} transactions failed")
        return float(tps.group(1))


def prepare(ws: Workspace, rows: int) -> dict[str, Path]:
    """Identical tables: only `tps_synced` is bound; the recipe and the floor have triggers."""
    ws.create_table(PLAIN_TABLE)
    ws.create_table(RECIPE_TABLE)
    ws.sql(
        sql.SQL(RECIPE_TRIGGER).format(
            channel=sql.Literal("tps_recipe"), table=sql.Identifier(RECIPE_TABLE)
        )
    )
    ws.create_table(FLOOR_TABLE)
    ws.sql(sql.SQL(FLOOR_INDEXED_TRIGGER).format(table=sql.Identifier(FLOOR_TABLE)))
    tables = (PLAIN_TABLE, SYNCED_TABLE, RECIPE_TABLE, FLOOR_TABLE)
    for table in tables:
        ws.insert_range(1, rows, table=table)
        ws.sql(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
    scripts = {}
    for table in tables:
        path = ws.root / f"update_{table}.sql"
        path.write_text(_SCRIPT.format(table=table), encoding="ascii")
        scripts[table] = path
    return scripts


def _rounds(
    ws: Workspace, bench: Pgbench, scripts: dict[str, Path], rounds: int, table: str
) -> dict[str, Any]:
    without: list[float] = []
    with_: list[float] = []
    for n in range(rounds):
        # Alternating spreads the machine's drift over both sides instead of one.
        without.append(bench.run(scripts[PLAIN_TABLE]))
        ws.sql(_EMPTY_LOGS)
        with_.append(bench.run(scripts[table]))
        ws.sql(_EMPTY_LOGS)
        say(f"  round {n + 1}/{rounds}: without {without[-1]:,.0f} tps, with {with_[-1]:,.0f} tps")
    return tps_ratio(without, with_)


def tps_ratio(without: list[float], with_: list[float]) -> dict[str, Any]:
    """The medians of alternating rounds without and with something, and their ratio."""
    return {
        "tps_without": statistics.median(without),
        "tps_with": statistics.median(with_),
        "ratio": statistics.median(with_) / statistics.median(without),
        "rounds_without": [round(t) for t in without],
        "rounds_with": [round(t) for t in with_],
    }


def measure_write_tps(ws: Workspace, cfg: BenchConfig) -> dict[str, Any]:
    """TPS with triggers ÷ TPS without, with and without NOTIFY, in both commit modes.

    `durable` is the server's own commit mode (PostgreSQL's defaults in the embedded run):
    each commit waits for its WAL flush, as in production. `async_commit` sets
    synchronous_commit=off for pgbench's sessions: commits stop waiting for the disk, the
    database is bound by CPU alone, and the trigger's own work shows in full.
    """
    scripts = prepare(ws, cfg.tps_rows)
    durable = Pgbench(
        ws.servers.pgbench, ws.database_url, cfg.tps_rows, cfg.tps_clients, cfg.tps_round_s
    )
    modes = {"durable": durable, "async_commit": durable.with_session(synchronous_commit="off")}
    results: dict[str, Any] = {}
    for notify in (False, True):
        # `install` converges the capture function to the mode; no worker runs meanwhile.
        ws.install(notify=notify)
        for mode, bench in modes.items():
            key = f"{'notify' if notify else 'no_notify'}_{mode}"
            say(f"write TPS, notify={str(notify).lower()}, {mode}: {cfg.tps_rounds} rounds")
            results[key] = _rounds(ws, bench, scripts, cfg.tps_rounds, SYNCED_TABLE)
    say(f"write TPS, the blog recipe's trigger, durable: {cfg.tps_rounds} rounds")
    results["recipe_durable"] = _rounds(ws, durable, scripts, cfg.tps_rounds, RECIPE_TABLE)
    say(f"write TPS, the floor (an indexed one-column log), durable: {cfg.tps_rounds} rounds")
    results["floor_durable"] = _rounds(ws, durable, scripts, cfg.tps_rounds, FLOOR_TABLE)
    results["command"] = " ".join([*durable.command(Path("SCRIPT.sql"))[:-1], "DATABASE_URL"])
    results["async_commit_env"] = "PGOPTIONS='-c synchronous_commit=off'"
    results["script"] = _SCRIPT.format(table="<table>")
    return results
