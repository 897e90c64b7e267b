"""What `indexsync install` on a big table costs the application's writers.

A client updates single random rows of the table, one autocommit statement at a time, for
a few seconds with no install running, then while `indexsync install` creates the triggers
and backfills the new index. Its statement times during the install, against the same
client's times just before, say whether the install blocked writers (the old install held
the trigger lock while it queued every row: 6.8 s of blocked writes on 3 million rows).

Run alone with `python -m bench.install_wait`; `make bench` runs it too.
"""

from __future__ import annotations

import random
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
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute(update, (rng.randint(1, self.rows),))
                self.samples.append((started, time.monotonic() - started))

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
        time.sleep(0.5)
    finally:
        updater.stop.set()
        updater.thread.join()
    if result.returncode != 0:
        raise RuntimeError(f"install failed:\n{result.stderr[-2000:]}")
    before = updater.between(install_started - _BASELINE_S, install_started)
    during = updater.between(install_started, install_ended)
    found = {
        "rows": rows,
        "install_s": round(install_ended - install_started, 2),
        "writes_before": len(before),
        "writes_during": len(during),
        "before_p50_ms": round(statistics.median(before), 3),
        "before_p99_ms": round(_p(before, 0.99), 3),
        "during_p50_ms": round(statistics.median(during), 3),
        "during_p99_ms": round(_p(during, 0.99), 3),
        "during_max_ms": round(max(during), 1),
        "cli": result.stdout,
    }
    found["p99_ratio"] = round(found["during_p99_ms"] / max(found["before_p99_ms"], 1e-3), 2)
    say(
        f"install_wait: install took {found['install_s']}s; writes p99 "
        f"{found['before_p99_ms']} ms before, {found['during_p99_ms']} ms during "
        f"(max {found['during_max_ms']} ms, {len(during)} writes)"
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
