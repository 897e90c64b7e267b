"""How the worker's defaults were chosen: `python -m bench.tune` (or `make bench-tune`).

Three sweeps, each changing one setting from its default and keeping the others:
- INDEXSYNC_BATCH_SIZE and INDEXSYNC_BULK_CONCURRENCY: one worker drains the same backlog
  as `make bench`'s sync figure (half of it), into a fresh index each time. Every setting
  runs twice, in alternating passes, and the faster run counts.
- INDEXSYNC_POLL_INTERVAL: commit-to-readable latency at 500 writes/s, as `make bench`
  measures it but for 10 s each. An idle worker then runs for 5 s, and its own CPU time
  and that of its database sessions are sampled. That is what a short interval costs when
  nothing happens.

Results go to bench/tune-results.json; BENCH_SCALE shrinks every size.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench import latency, throughput
from bench.config import BenchConfig
from bench.console import say
from bench.procs import ProcessGroup, Worker
from bench.servers import Servers, started
from bench.workload import Workspace

RESULTS_PATH = Path(__file__).resolve().parent / "tune-results.json"
_BATCH_SIZES = (250, 500, 1000, 2000)
_CONCURRENCIES = (1, 2, 4, 8)
_POLL_INTERVALS = (0.01, 0.025, 0.05, 0.1)
_PASSES = 2
_LATENCY_S = 10.0
_IDLE_S = 5.0


def _sync(
    servers: Servers,
    procs: ProcessGroup,
    workdir: Path,
    name: str,
    rows: int,
    settings: dict[str, str],
) -> float:
    """Docs per second of one worker draining `rows` changes with these settings."""
    ws = Workspace.create(name, servers, procs, workdir)
    try:
        throughput.prepare_backlog(ws, rows)
        docs_per_s, _ = throughput.measure_sync(ws, rows, settings)
        return docs_per_s
    finally:
        servers.drop_indexes()


def _sweep_sync(
    servers: Servers, procs: ProcessGroup, workdir: Path, rows: int
) -> dict[str, list[dict[str, Any]]]:
    defaults = throughput.worker_defaults()
    grids = {
        "batch_size": [
            {"batch_size": str(n), "bulk_concurrency": str(defaults.bulk_concurrency)}
            for n in _BATCH_SIZES
        ],
        "bulk_concurrency": [
            {"batch_size": str(defaults.batch_size), "bulk_concurrency": str(n)}
            for n in _CONCURRENCIES
        ],
    }
    found: dict[str, list[dict[str, Any]]] = {}
    for name, grid in grids.items():
        runs: list[list[float]] = [[] for _ in grid]
        for n in range(_PASSES):
            # Alternate the order, so no setting always runs on a warmer server.
            order = list(range(len(grid)))[:: 1 if n % 2 == 0 else -1]
            for i in order:
                label = f"tune_{name}_{grid[i][name]}_{n}"
                runs[i].append(_sync(servers, procs, workdir, label, rows, grid[i]))
                say(f"  {name} {grid[i][name]}: {runs[i][-1]:,.0f} docs/s")
        found[name] = [
            {
                "value": int(settings[name]),
                "docs_per_s": round(max(values)),
                "runs": [round(v) for v in values],
            }
            for settings, values in zip(grid, runs, strict=True)
        ]
    return found


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _idle_cost(ws: Workspace, interval: float) -> dict[str, float | None]:
    """CPU share of an idle worker and of its database sessions, over _IDLE_S."""
    worker: Worker = ws.worker(settings={"poll_interval": str(interval)})
    try:
        worker.wait_ready()
        time.sleep(1.0)
        # The worker's sessions are the only ones on its database besides this query's.
        rows = ws.sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        # Their CPU time is only readable when the database runs on this machine.
        backends = [int(r[0]) for r in rows] if ws.servers.pg_kind == "embedded" else []
        before = (_cpu_seconds([worker.proc.pid]), _cpu_seconds(backends))
        time.sleep(_IDLE_S)
        after = (_cpu_seconds([worker.proc.pid]), _cpu_seconds(backends))
    finally:
        worker.stop()
    return {
        "worker_cpu_pct": round(100 * (after[0] - before[0]) / _IDLE_S, 2),
        "database_cpu_pct": (
            round(100 * (after[1] - before[1]) / _IDLE_S, 2) if backends else None
        ),
    }


def _sweep_poll(
    servers: Servers, procs: ProcessGroup, workdir: Path, cfg: BenchConfig
) -> list[dict[str, Any]]:
    short = dataclasses.replace(cfg, latency_s=min(cfg.latency_s, _LATENCY_S))
    found = []
    for interval in _POLL_INTERVALS:
        ws = Workspace.create(f"tune_poll_{int(interval * 1000)}", servers, procs, workdir)
        measured = latency.measure_latency(ws, short, notify=False, poll_interval=interval)
        idle = _idle_cost(ws, interval)
        servers.drop_indexes()
        found.append(
            {
                "poll_interval_s": interval,
                "latency_p50_ms": round(measured["p50_ms"], 1),
                "latency_p99_ms": round(measured["p99_ms"], 1),
                "changes_per_batch_median": measured["worker"].get("changes_per_batch_median"),
                "idle_worker_cpu_pct": idle["worker_cpu_pct"],
                "idle_database_cpu_pct": idle["database_cpu_pct"],
            }
        )
        say(f"  poll_interval {interval}: {found[-1]}")
    return found


def main() -> int:
    """Run the three sweeps; print them and write tune-results.json."""
    cfg = BenchConfig.from_env()
    rows = max(2_000, cfg.sync_rows // 2)
    workdir = Path(tempfile.mkdtemp(prefix="indexsync-tune-"))
    try:
        with ProcessGroup() as procs, started(procs, workdir) as servers:
            say(f"sync sweeps: {rows:,} changes per drain, {_PASSES} passes")
            sync = _sweep_sync(servers, procs, workdir, rows)
            say(f"poll sweep: {cfg.latency_rate:.0f} writes/s for {_LATENCY_S:.0f} s each")
            poll = _sweep_poll(servers, procs, workdir, cfg)
            described = servers.describe()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    defaults = throughput.worker_defaults()
    report = {
        "method": __doc__,
        "rows_per_drain": rows,
        "defaults": {
            "batch_size": defaults.batch_size,
            "bulk_concurrency": defaults.bulk_concurrency,
            "poll_interval": defaults.poll_interval,
        },
        "servers": described,
        "sync": sync,
        "poll_interval": poll,
    }
    RESULTS_PATH.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    for name, values in sync.items():
        line = ", ".join(f"{v['value']}: {v['docs_per_s']:,}" for v in values)
        print(f"{name:<17} docs/s  {line}")
    print(f"{'poll_interval':<17} p50 ms / idle worker CPU % / idle database CPU %")
    for p in poll:
        print(
            f"  {p['poll_interval_s']:<6} {p['latency_p50_ms']:>6} / "
            f"{p['idle_worker_cpu_pct']} / {p['idle_database_cpu_pct']}"
        )
    print(f"wrote {RESULTS_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
