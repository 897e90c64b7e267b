"""The worker's own ceiling: drains and rebuilds into the null sink, next to pgbench's floor.

With the search side answered at no cost (bench/null_sink.py), a drain measures indexsync
and PostgreSQL alone. Each round restores the same backlog, drains it once with one
`indexsync run --until-idle` and once with pgbench running the worker's own statements
(bench/pg_floor.py), alternating, so that the machine's drift hits both alike.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from typing import Any

from psycopg import sql

from bench import pg_floor, throughput
from bench.console import say
from bench.cpu import measured, process_cpu_s
from bench.procs import Worker, python_executable
from bench.servers import NullSink
from bench.workload import Workspace

_TIMEOUT_S = 1800.0
_STASH = "bench_outbox_stash"


def _stash_backlog(ws: Workspace) -> int:
    """Keep a copy of the outbox, so every round starts from the very same changes."""
    ws.sql(sql.SQL("CREATE TABLE {} AS TABLE indexsync.outbox").format(sql.Identifier(_STASH)))
    return ws.outbox_count()


def _restore_backlog(ws: Workspace, changes: int) -> None:
    """Put the stashed changes back, vacuumed and analysed, as a fresh backlog would be."""
    ws.sql("TRUNCATE indexsync.outbox")
    ws.sql(sql.SQL("INSERT INTO indexsync.outbox TABLE {}").format(sql.Identifier(_STASH)))
    ws.sql("VACUUM (ANALYZE) indexsync.outbox")
    ws.sql("CHECKPOINT")
    if ws.outbox_count() != changes:
        raise RuntimeError("the backlog was not restored")


def _started_at(worker: Worker) -> float:
    for event in worker.events():
        if event.get("event") == "worker.started":
            at = throughput.event_time(event)
            if at is not None:
                return at
    raise RuntimeError(f"the worker logged no worker.started:\n{worker.log_tail()}")


def drain_into_sink(ws: Workspace, sink: NullSink, changes: int) -> dict[str, Any]:
    """One worker drains the backlog into the null sink; its rate and both sides' CPU."""
    sent_before = sink.stats()["items"]
    sink_cpu = sink.cpu_s()
    with measured(ws.servers.postmaster) as cpu:
        worker = ws.worker(until_idle=True, settings={"elasticsearch_url": sink.url})
        worker.wait_ready()
        startup_cpu = process_cpu_s(worker.proc.pid)
        code = worker.wait(_TIMEOUT_S)
        ended = time.time()
    if code != 0:
        raise RuntimeError(f"indexsync run --until-idle exited {code}:\n{worker.log_tail()}")
    left = ws.outbox_count()
    sent = sink.stats()["items"] - sent_before
    sink_cpu = sink.cpu_s() - sink_cpu
    if left or sent < changes:
        raise RuntimeError(f"drain incomplete: {left} changes left, {sent} items sent")
    seconds = ended - _started_at(worker)
    spawn_to_exit = ended - worker.started_wall
    drain_cpu = cpu.children_s - (startup_cpu or 0.0)
    profile = throughput.batch_profile(worker.events())
    return {
        "docs_per_s": changes / seconds,
        "seconds": seconds,
        "spawn_to_exit_s": spawn_to_exit,
        "items_sent": sent,
        "worker_cpu_s": cpu.children_s,
        "worker_startup_cpu_s": startup_cpu,
        "worker_drain_cpu_s": drain_cpu,
        "db_cpu_s": cpu.server_s,
        "sink_cpu_s": sink_cpu,
        "batches": profile.get("batches"),
    }


def _median(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(values) if values else None


def measure_sync_ceiling(
    ws: Workspace, sink: NullSink, changes: int, rounds: int
) -> dict[str, Any]:
    """Alternate worker drains into the sink with pgbench floors of the same backlog."""
    defaults = throughput.worker_defaults()
    sessions = defaults.bulk_concurrency + 1
    throughput.prepare_backlog(ws, changes)
    total = _stash_backlog(ws)
    worker_rounds: list[dict[str, Any]] = []
    floor_rounds: list[dict[str, Any]] = []
    for n in range(rounds):
        _restore_backlog(ws, total)
        drained = drain_into_sink(ws, sink, total)
        worker_rounds.append(drained)
        _restore_backlog(ws, total)
        floor = pg_floor.measure_sync_floor(ws, total, defaults.batch_size, sessions)
        floor_rounds.append(floor)
        say(
            f"ceiling round {n + 1}/{rounds}: worker {drained['docs_per_s']:,.0f} docs/s into "
            f"the null sink, pgbench floor {floor['docs_per_s']:,.0f} docs/s"
        )
    worker_rate = _median(worker_rounds, "docs_per_s") or 0.0
    floor_rate = _median(floor_rounds, "docs_per_s") or 0.0
    per_1k = 1000.0 / total
    worker_cpu = _median(worker_rounds, "worker_drain_cpu_s")
    db_cpu = _median(worker_rounds, "db_cpu_s")
    sink_cpu = _median(worker_rounds, "sink_cpu_s")
    floor_db_cpu = _median(floor_rounds, "db_cpu_s")
    return {
        "changes": total,
        "sessions": sessions,
        "batch_size": defaults.batch_size,
        "sync_null_docs_per_s": worker_rate,
        "pg_floor_docs_per_s": floor_rate,
        "ratio": worker_rate / floor_rate if floor_rate else None,
        "worker_cpu_ms_per_1k": worker_cpu * 1000 * per_1k if worker_cpu is not None else None,
        "db_cpu_ms_per_1k": db_cpu * 1000 * per_1k if db_cpu is not None else None,
        "floor_db_cpu_ms_per_1k": floor_db_cpu * 1000 * per_1k if floor_db_cpu else None,
        "sink_cpu_ms_per_1k": sink_cpu * 1000 * per_1k if sink_cpu is not None else None,
        "worker_rounds": worker_rounds,
        "floor_rounds": floor_rounds,
        "floor_script": pg_floor.script_text(floor_rounds[0]["script"]),
    }


def reindex_into_sink(ws: Workspace, sink: NullSink, rows: int) -> dict[str, Any]:
    """One `indexsync reindex` into the null sink; the rebuild's rate as it reports it."""
    sent_before = sink.stats()["items"]
    sink_cpu = sink.cpu_s()
    with measured(ws.servers.postmaster) as cpu:
        started = time.monotonic()
        result = subprocess.run(
            [python_executable(), "-m", "indexsync", "reindex"],
            env=ws.env(elasticsearch_url=sink.url),
            cwd=ws.root,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
        )
        spawn_to_exit = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"indexsync reindex exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
    sent = sink.stats()["items"] - sent_before
    sink_cpu = sink.cpu_s() - sink_cpu
    if sent < rows:
        raise RuntimeError(f"reindex into the null sink sent {sent} items for {rows} rows")
    done = _last_event(result.stderr, "reindex.done")
    seconds = float(done["seconds"])
    return {
        "rows_per_s": rows / seconds,
        "seconds": seconds,
        "spawn_to_exit_s": spawn_to_exit,
        "items_sent": sent,
        "cli_cpu_s": cpu.children_s,
        "db_cpu_s": cpu.server_s,
        "sink_cpu_s": sink_cpu,
    }


def _last_event(log: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] | None = None
    for line in log.splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            found = json.loads(line)
    if found is None:
        raise RuntimeError(f"no {name} event logged")
    return found


def measure_reindex_ceiling(
    ws: Workspace, sink: NullSink, rows: int, rounds: int, chunk_size: int
) -> dict[str, Any]:
    """Alternate rebuilds into the sink with pgbench paging through the same table."""
    rebuilds: list[dict[str, Any]] = []
    scans: list[dict[str, Any]] = []
    for n in range(rounds):
        rebuilds.append(reindex_into_sink(ws, sink, rows))
        scans.append(pg_floor.measure_scan_floor(ws, rows, chunk_size))
        say(
            f"reindex ceiling round {n + 1}/{rounds}: {rebuilds[-1]['rows_per_s']:,.0f} rows/s "
            f"into the null sink, pgbench scan floor {scans[-1]['rows_per_s']:,.0f} rows/s"
        )
    rate = _median(rebuilds, "rows_per_s") or 0.0
    floor = _median(scans, "rows_per_s") or 0.0
    return {
        "rows": rows,
        "page_size": chunk_size,
        "reindex_null_rows_per_s": rate,
        "pg_scan_floor_rows_per_s": floor,
        "ratio": rate / floor if floor else None,
        "rebuild_rounds": rebuilds,
        "scan_rounds": scans,
        "scan_script": pg_floor.script_text(scans[0]["script"]),
    }
