"""Reindex throughput: `indexsync reindex` of a table loaded behind the outbox's back."""

from __future__ import annotations

import time
from typing import Any

from psycopg import sql

from bench.console import say
from bench.workload import Workspace

# Far beyond any rebuild seen here (200-300 s for a million rows): past it, it is stuck.
_REINDEX_TIMEOUT_S = 1800.0


def measure_reindex(ws: Workspace, rows: int) -> tuple[float, dict[str, Any]]:
    """Load `rows` with triggers disabled (like a restore), then time a full rebuild."""
    ws.install(notify=False)
    table = sql.Identifier(ws.table)
    ws.sql(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(table))
    load_s = ws.insert_range(1, rows, tx_rows=50_000)
    ws.sql(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(table))
    ws.sql(sql.SQL("ANALYZE {}").format(table))
    say(f"reindex: {rows} rows loaded in {load_s:.1f}s with triggers disabled")
    started = time.monotonic()
    out = ws.cli("reindex", timeout=_REINDEX_TIMEOUT_S)
    seconds = time.monotonic() - started
    with ws.servers.search_client() as es:
        indexed = ws.index_count(es)
    if indexed != rows:
        raise RuntimeError(f"reindex incomplete: {indexed} documents for {rows} rows")
    say(f"reindex: {rows} rows rebuilt in {seconds:.1f}s = {rows / seconds:,.0f} rows/s")
    return rows / seconds, {"seconds": round(seconds, 2), "load_s": round(load_s, 2), "cli": out}
