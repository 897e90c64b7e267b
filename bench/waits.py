"""Read-your-writes: what `indexsync.wait_for_search` takes, and what waiters cost writers."""

from __future__ import annotations

import threading
import time
from typing import Any

from psycopg import sql

from bench.config import BenchConfig
from bench.console import say
from bench.latency import _percentile
from bench.procs import Worker
from bench.workload import INSERT_ONE, Workspace
from bench.writes import Pgbench, tps_ratio

WAIT_METHOD = (
    "The latency phase's write load (single-row INSERTs, each its own autocommit "
    "transaction, at latency_rate per second, open loop), spread over `threads` application "
    "threads with a connection each. After each COMMIT the same connection calls "
    "indexsync.wait_for_search(alias, '30 s'); a sample is the time from COMMIT returning to "
    "the call returning. The first warmup_s are not counted. One `indexsync run` worker."
)
WAITERS_METHOD = (
    "pgbench single-row UPDATEs by random id of the bound table (8 clients, prepared), with "
    "one `indexsync run` worker draining; rounds alternate no waiter and `waiters` sessions "
    "that call indexsync.wait_for_search(alias, '1 s') back to back (a worker on these two "
    "cores falls behind pgbench's full speed, so many calls time out: each one still "
    "registers, sleeps on its lock and is woken); median TPS of each side."
)
_THREADS = 64
_WAITERS = 100
# The writes phase's clients.
_CLIENTS = 8
_UPDATE = "\\set id random(1, :rows)\nUPDATE {table} SET n = n + 1 WHERE id = :id;\n"


def measure_wait(ws: Workspace, cfg: BenchConfig) -> dict[str, Any]:
    """p50/p99 of COMMIT → wait_for_search returning, under the latency phase's load."""
    ws.install(notify=False)
    worker = ws.worker()
    worker.wait_ready()
    query = sql.SQL(INSERT_ONE).format(table=sql.Identifier(ws.table))
    total = int(cfg.latency_rate * (cfg.latency_s + cfg.latency_warmup_s))
    warmup = int(cfg.latency_rate * cfg.latency_warmup_s)
    samples: list[float] = []
    refused: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    started = time.monotonic() + 0.5

    def app(first: int) -> None:
        try:
            with ws.connect() as conn:
                for i in range(first, total, _THREADS):
                    delay = started + i / cfg.latency_rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    conn.execute(query, prepare=True)
                    committed = time.monotonic()
                    row = conn.execute(
                        "SELECT indexsync.wait_for_search(%s, '30 s')", (ws.alias,), prepare=True
                    ).fetchone()
                    waited = (time.monotonic() - committed) * 1000
                    with lock:
                        if i >= warmup:
                            samples.append(waited)
                        if not (row and row[0]):
                            refused.append(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=app, args=(j,), name=f"app{j}") for j in range(_THREADS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    finally:
        worker.stop()
    if errors:
        raise RuntimeError(f"wait_for_search: an application thread failed: {errors[0]}")
    if refused:
        raise RuntimeError(f"wait_for_search: {len(refused)} of {total} waits returned false")
    result = {
        "p50_ms": _percentile(samples, 0.50),
        "p99_ms": _percentile(samples, 0.99),
        "max_ms": max(samples),
        "samples": len(samples),
        "achieved_rate": round(total / elapsed, 1),
        "threads": _THREADS,
        "worker_peak_rss_mb": round(worker.memory.peak_mb, 1),
    }
    say(
        f"wait_for_search: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms over "
        f"{len(samples)} writes at {result['achieved_rate']}/s"
    )
    return result


class _Waiters:
    """`count` sessions calling wait_for_search back to back until stopped."""

    def __init__(self, ws: Workspace, count: int) -> None:
        self._ws = ws
        self._stop = threading.Event()
        self.calls = 0
        self.searchable = 0
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._wait, name=f"waiter{n}") for n in range(count)
        ]

    def __enter__(self) -> _Waiters:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        if self._errors:
            raise RuntimeError(f"a waiter failed: {self._errors[0]}")

    def _wait(self) -> None:
        try:
            with self._ws.connect() as conn:
                while not self._stop.is_set():
                    row = conn.execute(
                        "SELECT indexsync.wait_for_search(%s, '1 s')",
                        (self._ws.alias,),
                        prepare=True,
                    ).fetchone()
                    with self._lock:
                        self.calls += 1
                        self.searchable += bool(row and row[0])
        except BaseException as exc:
            self._errors.append(exc)


def measure_waiters_cost(ws: Workspace, cfg: BenchConfig, worker: Worker) -> dict[str, Any]:
    """pgbench TPS with `_WAITERS` concurrent waiters ÷ without, a worker draining both."""
    script = ws.root / "update_waits.sql"
    script.write_text(_UPDATE.format(table=ws.table), encoding="ascii")
    bench = Pgbench(ws.servers.pgbench, ws.database_url, cfg.tps_rows, _CLIENTS, cfg.tps_round_s)
    without: list[float] = []
    with_: list[float] = []
    calls: list[int] = []
    trues: list[int] = []
    for n in range(cfg.tps_rounds):
        without.append(bench.run(script))
        with _Waiters(ws, _WAITERS) as waiters:
            with_.append(bench.run(script))
            calls.append(waiters.calls)
            trues.append(waiters.searchable)
        say(
            f"  round {n + 1}/{cfg.tps_rounds}: no waiter {without[-1]:,.0f} tps, "
            f"{_WAITERS} waiters {with_[-1]:,.0f} tps ({calls[-1]} waits answered, "
            f"{trues[-1]} true)"
        )
    return {
        **tps_ratio(without, with_),
        "waits_answered_per_round": calls,
        "waits_true_per_round": trues,
        "waiters": _WAITERS,
    }


def prepare_waiters(ws: Workspace, rows: int) -> Worker:
    """The bound table filled, installed, and a worker draining it."""
    ws.insert_range(1, rows)
    ws.install(notify=False, backfill=False)
    worker = ws.worker()
    worker.wait_ready()
    return worker
