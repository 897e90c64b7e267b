"""Commit-to-searchable latency at a steady write rate, with a live worker (see METHOD)."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import Elasticsearch
from psycopg import sql

from bench.config import BenchConfig
from bench.console import say
from bench.throughput import batch_profile
from bench.workload import INSERT_ONE, Workspace

METHOD = (
    "One writer inserts rows at a fixed rate, each in its own autocommit transaction, and "
    "notes the monotonic time at which COMMIT returned. A poller in the same process sends "
    "realtime multi-gets (_mget, which needs no refresh) for every id not yet seen, back to "
    "back; an id's acknowledgement time is the start of the first _mget that found it, so "
    "one sample's error is at most one poll cycle (recorded). The first warmup_s of writes "
    "are not counted. As a control, a probe thread sends a one-item bulk request to a "
    "separate index every 20 ms: stalls of the search server itself show up there too."
)

# Ids per _mget: bounds the request when the worker falls behind.
_MGET_MAX_IDS = 500
# A short pause between polls so the poller cannot starve the servers on two cores.
_POLL_PAUSE_S = 0.002
_ACK_TIMEOUT_S = 60.0
_PROBE_EVERY_S = 0.02


@dataclass
class _Tracker:
    """Ids written and not yet seen, and the latency of those seen."""

    pending: dict[str, tuple[float, bool]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    poll_cycles_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, doc_id: str, committed: float, counted: bool) -> None:
        """Note a committed write; `counted` is false during the warm-up."""
        with self.lock:
            self.pending[doc_id] = (committed, counted)

    def batch(self) -> list[str]:
        """The oldest ids not yet seen, as many as one _mget takes."""
        with self.lock:
            return list(self.pending)[:_MGET_MAX_IDS]

    def seen(self, ids: list[str], at: float) -> None:
        """Record that these ids were readable at `at`."""
        with self.lock:
            for doc_id in ids:
                committed, counted = self.pending.pop(doc_id)
                if counted:
                    self.latencies_ms.append((at - committed) * 1000)

    def left(self) -> int:
        """How many writes are not readable yet."""
        with self.lock:
            return len(self.pending)


def _poll(es: Elasticsearch, index: str, tracker: _Tracker, stop: threading.Event) -> None:
    while not stop.is_set():
        ids = tracker.batch()
        if not ids:
            time.sleep(_POLL_PAUSE_S)
            continue
        started = time.monotonic()
        docs = es.mget(index=index, ids=ids, source=False, realtime=True).body["docs"]
        tracker.seen([d["_id"] for d in docs if d.get("found")], started)
        tracker.poll_cycles_ms.append((time.monotonic() - started) * 1000)
        time.sleep(_POLL_PAUSE_S)


def _probe(es: Elasticsearch, index: str, durations_ms: list[float], stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        started = time.monotonic()
        es.bulk(operations=[{"index": {"_index": index, "_id": str(n)}}, {"n": n}])
        durations_ms.append((time.monotonic() - started) * 1000)
        n += 1
        stop.wait(_PROBE_EVERY_S)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    # Nearest-rank: the smallest value with at least q of the samples at or below it.
    rank = max(1, int(-(-q * len(ordered) // 1)))
    return ordered[rank - 1]


def measure_latency(
    ws: Workspace, cfg: BenchConfig, *, notify: bool, poll_interval: float | None
) -> dict[str, Any]:
    """p50/p99 of commit → document readable by id, at `cfg.latency_rate` writes per second."""
    ws.install(notify=notify)
    settings = {"poll_interval": str(poll_interval)} if poll_interval is not None else {}
    worker = ws.worker(settings=settings)
    tracker = _Tracker()
    stop = threading.Event()
    es = ws.servers.search_client()
    poller = threading.Thread(target=_poll, args=(es, ws.alias, tracker, stop), name="poller")
    probe_es = ws.servers.search_client()
    probe_index = ws.servers.index_name(f"{ws.name}_probe_{'notify' if notify else 'poll'}")
    probe_ms: list[float] = []
    prober = threading.Thread(
        target=_probe, args=(probe_es, probe_index, probe_ms, stop), name="probe"
    )
    total = int(cfg.latency_rate * (cfg.latency_s + cfg.latency_warmup_s))
    warmup = int(cfg.latency_rate * cfg.latency_warmup_s)
    query = sql.SQL(INSERT_ONE).format(table=sql.Identifier(ws.table))
    try:
        worker.wait_ready()
        probe_es.indices.create(index=probe_index)
        poller.start()
        prober.start()
        with ws.connect() as conn:
            started = time.monotonic()
            for i in range(total):
                # Open loop: each write has its slot; a late writer catches up, never skips.
                delay = started + i / cfg.latency_rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                row = conn.execute(query, prepare=True).fetchone()
                assert row is not None
                tracker.add(str(row[0]), time.monotonic(), counted=i >= warmup)
            write_s = time.monotonic() - started
        deadline = time.monotonic() + _ACK_TIMEOUT_S
        while tracker.left() and time.monotonic() < deadline:
            time.sleep(0.05)
        missing = tracker.left()
    finally:
        stop.set()
        for thread in (poller, prober):
            if thread.is_alive():
                thread.join()
        es.close()
        probe_es.close()
        worker.stop()
    if missing:
        raise RuntimeError(
            f"latency: {missing} of {total} writes never became readable in {ws.alias!r} "
            f"within {_ACK_TIMEOUT_S}s"
        )
    samples = tracker.latencies_ms
    probe = {
        "requests": len(probe_ms),
        "p50_ms": round(_percentile(probe_ms, 0.50), 2),
        "p99_ms": round(_percentile(probe_ms, 0.99), 2),
        "max_ms": round(max(probe_ms), 2),
    }
    result: dict[str, Any] = {
        "p50_ms": _percentile(samples, 0.50),
        "p99_ms": _percentile(samples, 0.99),
        "max_ms": max(samples),
        "samples": len(samples),
        "achieved_rate": round(total / write_s, 1),
        "poll_cycle_ms_median": round(statistics.median(tracker.poll_cycles_ms), 2),
        "worker_peak_rss_mb": round(worker.memory.peak_mb, 1),
        "worker": batch_profile(worker.events()),
        "server_probe": probe,
    }
    say(
        f"latency notify={str(notify).lower()}: p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms over {len(samples)} writes "
        f"at {result['achieved_rate']}/s (poll cycle {result['poll_cycle_ms_median']} ms); "
        f"server probe p99 {probe['p99_ms']} ms, max {probe['max_ms']} ms"
    )
    return result
