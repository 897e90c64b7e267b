"""A soak: is one worker flat over a long run? `python -m bench.soak` (`make bench-soak`).

A queue table in PostgreSQL bloats when deletes outrun vacuum; claims then slow down and
lag creeps up. Here writers update random single rows of a bound table at a steady rate
(open loop: each write has its time slot) for SOAK_MINUTES (default 10) while one
`indexsync run` syncs them. Every second the lag (age of the oldest outbox row) is read;
every SOAK_SAMPLE_S (default 10) seconds the outbox's total size, live and dead tuples, and
the worker's claim and batch times from its `batch.done` events. At the end the writers
stop, the worker drains, and `indexsync verify` must find the index equal to the table.

The table is loaded after `install`, as a data import would be: its rows reach the outbox,
and the new index's backfill (recorded by `install`) runs beside the soak's writes once
the worker starts; `backfill_events` in the results says what it wrote and skipped.

Settings (environment): SOAK_MINUTES, SOAK_RATE (writes/s, default 1000), SOAK_ROWS (table
size, default 100000), SOAK_SAMPLE_S, SOAK_SINK (`server`, the default: the search server
itself; `null`: bench/null_sink.py, to take the search server's own pace out), and
BENCH_ENGINE=opensearch for a real OpenSearch node instead of osmem.
Writes bench/soak-results.json.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from psycopg import sql

from bench.console import say
from bench.procs import ProcessGroup, Worker
from bench.servers import null_sink, started
from bench.throughput import event_time
from bench.workload import Workspace

RESULTS_PATH = Path(__file__).resolve().parent / "soak-results.json"
_WRITERS = 4
_UPDATE = "UPDATE {table} SET n = n + 1, title = 'Post ' || %(id)s || ' ' || md5(random()::text) "
_LAG = (
    "SELECT coalesce(extract(epoch FROM clock_timestamp() - created_at), 0) "
    "FROM indexsync.outbox ORDER BY seq LIMIT 1"
)
_TABLE_STATS = """
SELECT pg_total_relation_size('indexsync.outbox'), s.n_live_tup, s.n_dead_tup,
       s.autovacuum_count, s.vacuum_count
FROM pg_stat_user_tables s WHERE s.relid = 'indexsync.outbox'::regclass
"""


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"bench.soak: {name}={raw!r} is not a number") from None
    if value <= 0:
        raise SystemExit(f"bench.soak: {name}={raw!r} must be positive")
    return value


def _writer(ws: Workspace, rows: int, rate: float, until: float, done: list[int]) -> None:
    """Update random rows at `rate` per second until `until` (monotonic)."""
    query = sql.SQL(_UPDATE + "WHERE id = %(id)s").format(table=sql.Identifier(ws.table))
    rng = random.Random()
    with ws.connect() as conn:
        started = time.monotonic()
        i = 0
        while True:
            slot = started + i / rate
            if slot >= until:
                return
            delay = slot - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conn.execute(query, {"id": rng.randint(1, rows)}, prepare=True)
            done[0] += 1
            i += 1


def _batches(worker: Worker, since: float, until: float) -> list[dict[str, Any]]:
    found = []
    for event in worker.events():
        if event.get("event") != "batch.done":
            continue
        at = event_time(event)
        if at is not None and since <= at < until:
            found.append(event)
    return found


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _per_change_us(batches: list[dict[str, Any]]) -> float | None:
    """Median claim time per change claimed, in microseconds."""
    return _median(
        [1000 * float(e["claim_ms"]) / int(e["changes"]) for e in batches if int(e["changes"])]
    )


def _slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def soak(
    ws: Workspace, sink_url: str | None, minutes: float, rate: float, rows: int, sample_s: float
) -> dict[str, Any]:
    """Run the writers and one worker for `minutes`; every sample and the figures."""
    # With a backfill, as `install` records one for a new index; the import comes after.
    ws.install(notify=False, backfill=True)
    ws.insert_range(1, rows)
    ws.sql(sql.SQL("ANALYZE {}").format(sql.Identifier(ws.table)))
    settings = {"elasticsearch_url": sink_url} if sink_url else None
    worker = ws.worker(settings=settings)
    worker.wait_ready()
    # The initial load reaches the index first; the soak starts from an empty outbox.
    deadline = time.monotonic() + 600
    while ws.outbox_count() and time.monotonic() < deadline:
        time.sleep(0.5)
    # The initial load's dead outbox rows are the setup's, not the soak's: the first minute
    # must not be slowed by them, or it would hide a claim that grows over the run.
    ws.sql("VACUUM (ANALYZE) indexsync.outbox")
    say(f"soak: {rows:,} rows indexed; writing {rate:,.0f} rows/s for {minutes:g} min")
    duration = minutes * 60
    begun_wall, begun = time.time(), time.monotonic()
    until = begun + duration
    counts = [[0] for _ in range(_WRITERS)]
    writers = [
        threading.Thread(
            target=_writer, args=(ws, rows, rate / _WRITERS, until, counts[n]), daemon=True
        )
        for n in range(_WRITERS)
    ]
    for thread in writers:
        thread.start()
    lags: list[tuple[float, float]] = []
    samples: list[dict[str, Any]] = []
    with ws.connect() as conn:
        next_sample = begun + sample_s
        while time.monotonic() < until:
            time.sleep(1.0 - (time.monotonic() - begun) % 1.0)
            now = time.monotonic() - begun
            row = conn.execute(_LAG).fetchone()
            lags.append((now, float(row[0]) if row else 0.0))
            if time.monotonic() >= next_sample:
                next_sample += sample_s
                size, live, dead, autovacuums, vacuums = conn.execute(_TABLE_STATS).fetchone() or (
                    0,
                    0,
                    0,
                    0,
                    0,
                )
                window = _batches(worker, begun_wall + now - sample_s, begun_wall + now)
                samples.append(
                    {
                        "t_s": round(now, 1),
                        "writes": sum(c[0] for c in counts),
                        "lag_s": round(lags[-1][1], 3),
                        "outbox_mb": round(size / 1e6, 3),
                        "live_tuples": live,
                        "dead_tuples": dead,
                        "autovacuums": autovacuums + vacuums,
                        "batches": len(window),
                        "changes_per_batch_median": _median([float(e["changes"]) for e in window]),
                        "claim_ms_median": _median([float(e["claim_ms"]) for e in window]),
                        "claim_us_per_change_median": _per_change_us(window),
                        "write_ms_median": _median([float(e["write_ms"]) for e in window]),
                        "batch_ms_median": _median(
                            [float(e["read_ms"]) + float(e["write_ms"]) for e in window]
                        ),
                    }
                )
                s = samples[-1]
                say(
                    f"soak {now / 60:5.1f} min: lag {s['lag_s']:.2f}s, outbox "
                    f"{s['outbox_mb']:.1f} MB ({s['live_tuples']} live, {s['dead_tuples']} dead), "
                    f"claim {s['claim_ms_median']} ms, batch {s['batch_ms_median']} ms"
                )
    for thread in writers:
        thread.join()
    written = sum(c[0] for c in counts)
    drain_deadline = time.monotonic() + 600
    while ws.outbox_count() and time.monotonic() < drain_deadline:
        time.sleep(0.5)
    left = ws.outbox_count()
    worker.stop()
    # The null sink keeps no document: there is nothing to verify against.
    verify = (
        ws.cli("verify", timeout=600)
        if sink_url is None
        else "not run: the null sink keeps no documents"
    )
    minute = 60.0
    first = _batches(worker, begun_wall, begun_wall + minute)
    last = _batches(worker, begun_wall + duration - minute, begun_wall + duration)
    lag_values = [v for _, v in lags]
    # The new index's backfill runs beside the soak's writes; it skips what live sync wrote.
    backfill = [
        {k: e.get(k) for k in ("event", "rows", "skipped", "error", "timestamp")}
        for e in worker.events()
        if str(e.get("event", "")).startswith("backfill.")
    ]
    return {
        "figures": {
            "soak_lag_p99_s": round(_percentile(lag_values, 0.99), 3),
            "soak_lag_max_s": round(max(lag_values), 3),
            "soak_lag_slope": round(_slope_per_minute(lags), 4),
            "soak_outbox_mb_max": max(s["outbox_mb"] for s in samples),
            "soak_outbox_mb_slope": round(
                _slope_per_minute([(s["t_s"], s["outbox_mb"]) for s in samples]), 4
            ),
            "soak_dead_tuples_max": max(s["dead_tuples"] for s in samples),
            "soak_claim_ms_first_minute": _median([float(e["claim_ms"]) for e in first]),
            "soak_claim_ms_last_minute": _median([float(e["claim_ms"]) for e in last]),
            # A slower search server makes batches bigger, and a bigger claim takes longer:
            # per change claimed is what would show a bloated outbox.
            "soak_claim_us_per_change_first_minute": _per_change_us(first),
            "soak_claim_us_per_change_last_minute": _per_change_us(last),
            "soak_write_ms_first_minute": _median([float(e["write_ms"]) for e in first]),
            "soak_write_ms_last_minute": _median([float(e["write_ms"]) for e in last]),
            "soak_writes_per_s": round(written / duration, 1),
        },
        "inputs": {
            "minutes": minutes,
            "rate_per_s": rate,
            "rows": rows,
            "writers": _WRITERS,
            "sample_s": sample_s,
            "sink": "null" if sink_url else "server",
            "write": _UPDATE + "WHERE id = <random id>",
            "lag": _LAG,
            "method": __doc__,
        },
        "backfill_events": backfill,
        "left_in_outbox_after_drain": left,
        "verify": verify.strip().splitlines()[-1] if verify.strip() else "",
        "samples": samples,
        "lag_per_second": [round(v, 3) for _, v in lags],
    }


def main() -> int:
    """Run the soak; print every sample and the figures; write bench/soak-results.json."""
    minutes = _env_number("SOAK_MINUTES", 10)
    rate = _env_number("SOAK_RATE", 1000)
    rows = int(_env_number("SOAK_ROWS", 100_000))
    sample_s = _env_number("SOAK_SAMPLE_S", 10)
    sink_kind = os.environ.get("SOAK_SINK", "server")
    if sink_kind not in ("server", "null"):
        raise SystemExit(f"bench.soak: SOAK_SINK={sink_kind!r} must be 'server' or 'null'")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    workdir = Path(tempfile.mkdtemp(prefix="indexsync-soak-"))
    try:
        with ProcessGroup() as procs, started(procs, workdir) as servers:
            ws = Workspace.create("soak", servers, procs, workdir)
            if sink_kind == "null":
                with null_sink(procs, workdir, servers.search_url) as sink:
                    found = soak(ws, sink.url, minutes, rate, rows, sample_s)
            else:
                found = soak(ws, None, minutes, rate, rows, sample_s)
            found["inputs"]["postgresql_settings"] = servers.pg_settings
            found["inputs"]["search_server"] = f"{servers.search_kind} {servers.search_version}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS_PATH.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    for name, value in found["figures"].items():
        print(f"{name:<30} {value}")
    print(
        f"verify: {found['verify']}; left in the outbox after the drain: "
        f"{found['left_in_outbox_after_drain']}"
    )
    print(f"wrote {RESULTS_PATH}", file=sys.stderr)
    return 0 if not found["left_in_outbox_after_drain"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
