"""Commit-to-searchable latency at a steady write rate, with a live worker (see METHOD)."""

from __future__ import annotations

import queue
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from elasticsearch import Elasticsearch
from psycopg import sql

from bench.config import BenchConfig
from bench.console import say
from bench.procs import Worker
from bench.throughput import batch_profile
from bench.workload import INSERT_ONE, Workspace
from indexsync.bulk import Op

METHOD = (
    "One writer inserts rows at a fixed rate, each in its own autocommit transaction, and "
    "notes the monotonic time at which COMMIT returned. A poller in the same process sends "
    "realtime multi-gets (_mget, which needs no refresh) for every id not yet seen, back to "
    "back; an id's acknowledgement time is the start of the first _mget that found it, so "
    "one sample's error is at most one poll cycle (recorded). The first warmup_s of writes "
    "are not counted. As a control, a probe thread sends a one-item bulk request to a "
    "separate index every 20 ms: stalls of the search server itself show up there too."
)
FLOOR_METHOD = (
    "The floor: the same writer, poller and probe, with no indexsync at all. The writer's "
    "INSERT returns the new row as JSON, and a sender thread in the same process posts every "
    "committed row to the index at once, in one _bulk request per wake-up with whatever has "
    "committed meanwhile. No change detection, no re-read: what is left is the search "
    "server's own latency at this write rate, which no sync tool can beat."
)

# Ids per _mget: bounds the request when the worker falls behind.
_MGET_MAX_IDS = 500
# A short pause between polls so the poller cannot starve the servers on two cores.
_POLL_PAUSE_S = 0.002
_ACK_TIMEOUT_S = 60.0
_PROBE_EVERY_S = 0.02
# The floor's INSERT: the same row as INSERT_ONE, returned as the document to index.
_INSERT_RETURNING_DOC = INSERT_ONE.replace(
    "RETURNING id",
    "RETURNING id, json_build_object('id', id, 'title', title, 'body', body, "
    "'author', author, 'tags', tags)::text",
)


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


class _Path(Protocol):
    """What carries a committed row into the index: indexsync's worker, or the floor."""

    query: sql.Composed

    def start(self) -> None:
        """Get ready; returns once the first write can be carried."""

    def committed(self, row: tuple[Any, ...]) -> None:
        """A row the writer has just committed (as `query` returned it)."""

    def stop(self) -> dict[str, Any]:
        """Stop, and describe the run."""


class _WorkerPath:
    """`indexsync run` as configured: the triggers fill the outbox and the worker drains it."""

    def __init__(self, ws: Workspace, *, notify: bool, poll_interval: float | None) -> None:
        ws.install(notify=notify)
        settings = {"poll_interval": str(poll_interval)} if poll_interval is not None else {}
        self.query = sql.SQL(INSERT_ONE).format(table=sql.Identifier(ws.table))
        self._worker: Worker = ws.worker(settings=settings)

    def start(self) -> None:
        """Wait until the worker is ready."""
        self._worker.wait_ready()

    def committed(self, row: tuple[Any, ...]) -> None:
        """Nothing to do: the trigger has recorded the change."""

    def stop(self) -> dict[str, Any]:
        """Stop the worker; its peak RSS and where its batches spent their time."""
        self._worker.stop()
        return {
            "worker_peak_rss_mb": round(self._worker.memory.peak_mb, 1),
            "worker": batch_profile(self._worker.events()),
        }


class _FloorPath:
    """No indexsync: every committed row goes straight to the search server (FLOOR_METHOD)."""

    def __init__(self, ws: Workspace) -> None:
        # The same index as the worker's; `uninstall` takes the triggers and leaves it.
        ws.install(notify=False)
        ws.cli("uninstall", "--yes")
        self.query = sql.SQL(_INSERT_RETURNING_DOC).format(table=sql.Identifier(ws.table))
        self._alias = ws.alias
        self._es = ws.servers.search_client()
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self._requests: list[int] = []
        self._error: BaseException | None = None
        self._sender = threading.Thread(target=self._send, name="floor-sender")

    def start(self) -> None:
        """Start the sender."""
        self._sender.start()

    def committed(self, row: tuple[Any, ...]) -> None:
        """Hand the row to the sender."""
        doc_id, source = row
        self._queue.put(Op(self._alias, self._alias, str(doc_id), 1, source, True))

    def _send(self) -> None:
        try:
            self._send_until_told()
        except BaseException as exc:
            # Kept for stop(): the writer would otherwise only see writes never acknowledged.
            self._error = exc

    def _send_until_told(self) -> None:
        while True:
            ops = [self._queue.get()]
            while not self._queue.empty():
                ops.append(self._queue.get_nowait())
            done = ops[-1] is None
            body = b"".join(op.encode() for op in ops if op is not None)
            if body:
                response = self._es.bulk(operations=body)  # type: ignore[arg-type]
                if response.body.get("errors"):
                    raise RuntimeError(f"latency floor: the server refused an item: {response}")
                self._requests.append(len(ops) - done)
            if done:
                return

    def stop(self) -> dict[str, Any]:
        """Stop the sender once it has sent everything; raise what stopped it early."""
        self._queue.put(None)
        if self._sender.ident is not None:
            self._sender.join()
        self._es.close()
        if self._error is not None:
            raise RuntimeError(f"latency floor: the sender failed: {self._error}") from self._error
        return {
            "requests": len(self._requests),
            "docs_per_request_median": statistics.median(self._requests or [0]),
        }


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
    """p50/p99 of commit → document readable by id, through `indexsync run`."""
    path = _WorkerPath(ws, notify=notify, poll_interval=poll_interval)
    return _measure(ws, cfg, path, f"notify={str(notify).lower()}")


def measure_floor(ws: Workspace, cfg: BenchConfig) -> dict[str, Any]:
    """p50/p99 of commit → document readable by id, with no sync tool (FLOOR_METHOD)."""
    return _measure(ws, cfg, _FloorPath(ws), "floor")


def _measure(ws: Workspace, cfg: BenchConfig, path: _Path, label: str) -> dict[str, Any]:
    """Drive `path` at `cfg.latency_rate` writes per second and time every write."""
    tracker = _Tracker()
    stop = threading.Event()
    es = ws.servers.search_client()
    poller = threading.Thread(target=_poll, args=(es, ws.alias, tracker, stop), name="poller")
    probe_es = ws.servers.search_client()
    probe_index = ws.servers.index_name(f"{ws.name}_probe")
    probe_ms: list[float] = []
    prober = threading.Thread(
        target=_probe, args=(probe_es, probe_index, probe_ms, stop), name="probe"
    )
    total = int(cfg.latency_rate * (cfg.latency_s + cfg.latency_warmup_s))
    warmup = int(cfg.latency_rate * cfg.latency_warmup_s)
    details: dict[str, Any] = {}
    try:
        path.start()
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
                row = conn.execute(path.query, prepare=True).fetchone()
                assert row is not None
                tracker.add(str(row[0]), time.monotonic(), counted=i >= warmup)
                path.committed(row)
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
        details = path.stop()
    if missing:
        raise RuntimeError(
            f"latency ({label}): {missing} of {total} writes never became readable in "
            f"{ws.alias!r} within {_ACK_TIMEOUT_S}s"
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
        **details,
        "server_probe": probe,
    }
    say(
        f"latency {label}: p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms over {len(samples)} writes "
        f"at {result['achieved_rate']}/s (poll cycle {result['poll_cycle_ms_median']} ms); "
        f"server probe p99 {probe['p99_ms']} ms, max {probe['max_ms']} ms"
    )
    return result
