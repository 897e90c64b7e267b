"""Sync throughput of one worker, next to the search server's own bulk ceiling."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from elasticsearch import Elasticsearch
from psycopg import sql

from bench.console import say
from bench.workload import Workspace
from indexsync.bindings import load_bindings, load_mapping
from indexsync.bulk import Op
from indexsync.catalog import resolve
from indexsync.indexes import index_body
from indexsync.search import Outcome, Search
from indexsync.settings import Settings
from indexsync.store import Store

# A drained backlog of this size should never take longer; past it the worker is stuck.
_SYNC_TIMEOUT_S = 1800
_FETCH_CHUNK = 10_000


def worker_defaults() -> Settings:
    """The worker's default settings, untouched by the caller's environment."""
    return Settings.model_construct()


def prepare_backlog(ws: Workspace, rows: int) -> dict[str, Any]:
    """Install without backfill, then insert `rows` rows: the triggers fill the outbox."""
    ws.install(notify=False)
    seconds = ws.insert_range(1, rows)
    ws.sql(sql.SQL("ANALYZE {}").format(sql.Identifier(ws.table)))
    ws.sql("ANALYZE indexsync.outbox")
    backlog = ws.outbox_count()
    if backlog != rows:
        raise RuntimeError(f"expected {rows} outbox rows after the inserts, found {backlog}")
    say(f"sync: {rows} rows inserted in {seconds:.1f}s; outbox holds {backlog} changes")
    return {"rows": rows, "insert_s": round(seconds, 2)}


def _load_bodies(ws: Workspace, index: str, per_request: int) -> tuple[list[bytes], int]:
    """The sync's documents and action lines, as the worker encodes them, per request."""
    config = ws.root / "indexsync.toml"
    with ws.connect() as conn, Store(conn) as store:
        binding = resolve(store, load_bindings(config), config)[ws.alias]
        versions = conn.execute(
            "SELECT doc_id, max(seq) FROM indexsync.outbox WHERE index_name = %s "
            "GROUP BY doc_id ORDER BY min(seq)",
            (ws.alias,),
        ).fetchall()
        ops: list[Op] = []
        for start in range(0, len(versions), _FETCH_CHUNK):
            chunk = versions[start : start + _FETCH_CHUNK]
            docs = store.fetch_documents(binding, [doc_id for doc_id, _ in chunk])
            # Same Op as the worker's: external_gte version, require_alias, source untouched.
            ops.extend(
                Op(ws.alias, index, doc_id, int(seq), docs[doc_id].source, True)
                for doc_id, seq in chunk
            )
    bodies = [
        b"".join(op.encode() for op in ops[start : start + per_request])
        for start in range(0, len(ops), per_request)
    ]
    return bodies, len(ops)


@dataclass
class Ceiling:
    """The bulk ceiling measured for one request size."""

    docs_per_s: float
    docs: int
    seconds: float
    per_request: int
    concurrency: int
    body_bytes_median: int


def measure_ceiling(ws: Workspace, es: Elasticsearch, per_request: int) -> Ceiling:
    """Send the sync's documents with a plain loop: `bulk_concurrency` requests in flight."""
    defaults = worker_defaults()
    concurrency = defaults.bulk_concurrency
    alias = ws.servers.index_name("ceiling")
    search = Search.connect(Settings(elasticsearch_url=[ws.servers.search_url]))
    try:
        # A fresh index with the body `indexsync install` gives the sync's index.
        body = index_body(load_mapping(ws.mappings_dir, ws.alias), defaults)
        search.delete_index(f"{alias}-1")
        search.create_index(f"{alias}-1", body, alias)
        bodies, docs = _load_bodies(ws, alias, per_request)

        def send(payload: bytes) -> None:
            """One bulk request; any refused item makes the ceiling meaningless."""
            bad = [item for item in search.bulk(payload) if item.outcome is not Outcome.DONE]
            if bad:
                raise RuntimeError(f"bulk ceiling: the server refused an item: {bad[0]}")

        started = time.monotonic()
        with ThreadPoolExecutor(concurrency, thread_name_prefix="ceiling") as pool:
            for _ in pool.map(send, bodies):
                pass
        seconds = time.monotonic() - started
        indexed = ws.index_count(es, alias)
        if indexed != docs:
            raise RuntimeError(f"bulk ceiling: {indexed} documents in the index, {docs} sent")
    finally:
        search.delete_index(f"{alias}-1")
        search.close()
    result = Ceiling(
        docs_per_s=docs / seconds,
        docs=docs,
        seconds=seconds,
        per_request=per_request,
        concurrency=concurrency,
        body_bytes_median=int(statistics.median(len(b) for b in bodies)),
    )
    say(
        f"ceiling: {docs} docs in {seconds:.1f}s = {result.docs_per_s:,.0f} docs/s "
        f"({per_request}/request, {concurrency} in flight)"
    )
    return result


def event_time(event: dict[str, Any]) -> float | None:
    """When a worker's JSON log event was written (epoch seconds), if it says."""
    raw = event.get("timestamp")
    if not isinstance(raw, str):
        return None
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


def batch_profile(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a worker's time went, from its `batch.done` log events."""
    batches = [e for e in events if e.get("event") == "batch.done"]
    if not batches:
        return {"batches": 0}
    read = [float(e.get("read_ms", 0)) for e in batches]
    write = [float(e.get("write_ms", 0)) for e in batches]
    changes = [int(e.get("changes", 0)) for e in batches]
    return {
        "batches": len(batches),
        "changes_per_batch_median": statistics.median(changes),
        # Sums over batches: they exceed wall time when batches run in parallel.
        "read_ms_sum": round(sum(read)),
        "write_ms_sum": round(sum(write)),
        "read_ms_median": round(statistics.median(read), 1),
        "write_ms_median": round(statistics.median(write), 1),
        "write_ms_max": round(max(write), 1),
    }


def measure_sync(
    ws: Workspace, rows: int, settings: dict[str, str] | None = None
) -> tuple[float, dict[str, Any]]:
    """Drain the backlog with one `indexsync run --until-idle`; time from start to exit."""
    worker = ws.worker(until_idle=True, settings=settings)
    code = worker.wait(_SYNC_TIMEOUT_S)
    seconds = time.monotonic() - worker.started
    if code != 0:
        raise RuntimeError(f"indexsync run --until-idle exited {code}:\n{worker.log_tail()}")
    with ws.servers.search_client() as es:
        indexed = ws.index_count(es)
    expected = ws.row_count()
    left = ws.outbox_count()
    if indexed != expected or left:
        raise RuntimeError(
            f"sync incomplete: {indexed} documents in {ws.alias!r} for {expected} rows, "
            f"{left} changes left in the outbox"
        )
    events = worker.events()
    profile = batch_profile(events)
    started = next((e for e in events if e.get("event") == "worker.started"), None)
    started_at = event_time(started) if started else None
    if started_at is not None:
        # Interpreter start, imports and config: part of the figure, shown for context.
        profile["startup_s"] = round(started_at - worker.started_wall, 2)
    profile["worker_peak_rss_mb"] = round(worker.memory.peak_mb, 1)
    say(
        f"sync: {rows} changes drained in {seconds:.1f}s = {rows / seconds:,.0f} docs/s "
        f"({profile.get('batches')} batches; index holds {indexed})"
    )
    return rows / seconds, {"seconds": round(seconds, 2), **profile}
