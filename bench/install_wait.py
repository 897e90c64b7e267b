"""What `indexsync install` on a big table costs the application's writers.

A client updates single random rows of the table, one autocommit statement at a time, for
a few seconds with nothing else running, then while `indexsync install` creates the
triggers and the index, then while a worker (`indexsync run`) writes the existing rows
beside live sync, until the backfill is done. Its statement times in each phase, against the same
client's times just before, say whether anything blocked writers (the old install held
the trigger lock while it queued every row: 6.8 s of blocked writes on 3 million rows).

Run alone with `python -m bench.install_wait`; `make bench` runs it too.
"""

from __future__ import annotations

import random
import signal
import statistics
import subprocess
import threading
import time
from typing import Any

from psycopg import sql

from bench.console import say
from bench.procs import python_executable
from bench.workload import Workspace

_BASELINE_S = 3.0
# The application's steady write rate: below what the search server takes, as a cluster
# that keeps up would have it (a flood of writes would only measure the server's backlog).
_WRITES_PER_S = 500.0


class Updater:
    """One session updating random rows, recording each statement's wall time."""

    def __init__(self, ws: Workspace, rows: int) -> None:
        self.ws = ws
        self.rows = rows
        self.samples: list[tuple[float, float]] = []  # (started, seconds)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(1)
        update = sql.SQL("UPDATE {} SET n = n + 1 WHERE id = %s").format(
            sql.Identifier(self.ws.table)
        )
        with self.ws.connect() as conn:
            conn.execute("SET lock_timeout = '60s'")
            next_at = time.monotonic()
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute(update, (rng.randint(1, self.rows),))
                self.samples.append((started, time.monotonic() - started))
                next_at += 1 / _WRITES_PER_S
                time.sleep(max(0.0, next_at - time.monotonic()))

    def between(self, start: float, end: float) -> list[float]:
        """Statement times (ms) of statements started in [start, end)."""
        return [s * 1000 for t, s in self.samples if start <= t < end]


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def measure_install_wait(ws: Workspace, rows: int) -> dict[str, Any]:
    """Writers' statement times before and during `indexsync install` on `rows` rows."""
    load_s = ws.insert_range(1, rows, tx_rows=50_000)
    ws.sql(sql.SQL("ANALYZE {}").format(sql.Identifier(ws.table)))
    say(f"install_wait: {rows} rows loaded in {load_s:.1f}s; writer starts")
    updater = Updater(ws, rows)
    updater.thread.start()
    try:
        time.sleep(_BASELINE_S)
        install_started = time.monotonic()
        result = subprocess.run(
            [python_executable(), "-m", "indexsync", "install"],
            env=ws.env(),
            cwd=ws.root,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        install_ended = time.monotonic()
        if result.returncode != 0:
            raise RuntimeError(f"install failed:\n{result.stderr[-2000:]}")
        worker = subprocess.Popen(
            [python_executable(), "-m", "indexsync", "run"],
            env=ws.env(),
            cwd=ws.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 3600
            while ws.sql("SELECT count(*) FROM indexsync.rebuilds")[0][0]:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the worker's backfill did not finish")
                time.sleep(0.2)
            backfill_ended = time.monotonic()
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    finally:
        updater.stop.set()
        updater.thread.join()
    before = updater.between(install_started - _BASELINE_S, install_started)
    during = updater.between(install_started, install_ended)
    filling = updater.between(install_ended, backfill_ended)
    found: dict[str, Any] = {
        "rows": rows,
        "install_s": round(install_ended - install_started, 2),
        "backfill_s": round(backfill_ended - install_ended, 2),
        "writes_before": len(before),
        "writes_during_install": len(during),
        "writes_during_backfill": len(filling),
        "cli": result.stdout,
    }
    for name, values in (("before", before), ("install", during), ("backfill", filling)):
        found[f"{name}_p50_ms"] = round(statistics.median(values), 3)
        found[f"{name}_p99_ms"] = round(_p(values, 0.99), 3)
        found[f"{name}_max_ms"] = round(max(values), 1)
    base = max(found["before_p99_ms"], 1e-3)
    found["install_p99_ratio"] = round(found["install_p99_ms"] / base, 2)
    found["backfill_p99_ratio"] = round(found["backfill_p99_ms"] / base, 2)
    say(
        f"install_wait: install {found['install_s']}s, backfill {found['backfill_s']}s; "
        f"writes p99 {found['before_p99_ms']} ms before, {found['install_p99_ms']} ms during "
        f"install (max {found['install_max_ms']}), {found['backfill_p99_ms']} ms during the "
        f"backfill (max {found['backfill_max_ms']})"
    )
    return found


def main() -> int:
    """Measure alone, on the embedded servers (or those the environment names)."""
    import argparse
    import json
    import tempfile
    from pathlib import Path

    from bench.procs import ProcessGroup
    from bench.servers import started

    parser = argparse.ArgumentParser(prog="python -m bench.install_wait")
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="indexsync-install-wait-") as tmp,
        ProcessGroup() as procs,
        started(procs, Path(tmp)) as servers,
    ):
        ws = Workspace.create("install_wait", servers, procs, Path(tmp))
        found = measure_install_wait(ws, args.rows)
    found.pop("cli")
    print(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
