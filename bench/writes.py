"""What the capture triggers cost writers: pgbench TPS with and without them."""

from __future__ import annotations

import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from bench.config import BenchConfig
from bench.console import say
from bench.workload import Workspace

PLAIN_TABLE = "tps_plain"
SYNCED_TABLE = "tps_synced"

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
        result = subprocess.run(
            self.command(script),
            capture_output=True,
            text=True,
            timeout=self.seconds + 120,
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
    """Two identical tables; only `tps_synced` is bound, so only it has triggers."""
    ws.create_table(PLAIN_TABLE)
    for table in (PLAIN_TABLE, SYNCED_TABLE):
        ws.insert_range(1, rows, table=table)
        ws.sql(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
    scripts = {}
    for table in (PLAIN_TABLE, SYNCED_TABLE):
        path = ws.root / f"update_{table}.sql"
        path.write_text(_SCRIPT.format(table=table), encoding="ascii")
        scripts[table] = path
    return scripts


def _rounds(ws: Workspace, bench: Pgbench, scripts: dict[str, Path], rounds: int) -> dict[str, Any]:
    without: list[float] = []
    with_: list[float] = []
    for n in range(rounds):
        # Alternating spreads the machine's drift over both sides instead of one.
        without.append(bench.run(scripts[PLAIN_TABLE]))
        ws.sql("TRUNCATE indexsync.outbox")
        with_.append(bench.run(scripts[SYNCED_TABLE]))
        ws.sql("TRUNCATE indexsync.outbox")
        say(f"  round {n + 1}/{rounds}: without {without[-1]:,.0f} tps, with {with_[-1]:,.0f} tps")
    return {
        "tps_without": statistics.median(without),
        "tps_with": statistics.median(with_),
        "ratio": statistics.median(with_) / statistics.median(without),
        "rounds_without": [round(t) for t in without],
        "rounds_with": [round(t) for t in with_],
    }


def measure_write_tps(ws: Workspace, cfg: BenchConfig) -> dict[str, Any]:
    """TPS with triggers ÷ TPS without, in no-NOTIFY mode and in NOTIFY mode."""
    scripts = prepare(ws, cfg.tps_rows)
    bench = Pgbench(
        ws.servers.pgbench, ws.database_url, cfg.tps_rows, cfg.tps_clients, cfg.tps_round_s
    )
    results: dict[str, Any] = {}
    for notify in (False, True):
        # `install` converges the capture function to the mode; no worker runs meanwhile.
        ws.install(notify=notify)
        say(f"write TPS, notify={str(notify).lower()}: {cfg.tps_rounds} rounds of each")
        results["notify" if notify else "no_notify"] = _rounds(ws, bench, scripts, cfg.tps_rounds)
    results["command"] = " ".join([*bench.command(Path("SCRIPT.sql"))[:-1], "DATABASE_URL"])
    results["script"] = _SCRIPT.format(table="<table>")
    return results
