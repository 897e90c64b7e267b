"""The blog recipe (NOTIFY with the row, one index request per change) against indexsync.

Both go through the same restart: the process that writes to the index is SIGKILLed a
third of the way into a steady load and started again a second later; rows missing from
the index at the end are changes lost.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

from elasticsearch import Elasticsearch
from psycopg import sql

from bench.config import BenchConfig
from bench.console import say
from bench.procs import Worker, bench_module
from bench.recipe_listener import CHANNEL
from bench.workload import INSERT_RANGE, Workspace
from indexsync.bindings import load_mapping
from indexsync.indexes import index_body
from indexsync.settings import Settings

RECIPE_TABLE = "recipe_rows"

# The trigger of the blog posts: the whole row travels in the notification.
RECIPE_TRIGGER: LiteralString = """
CREATE FUNCTION recipe_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({channel}, row_to_json(NEW)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER recipe_notify AFTER INSERT OR UPDATE ON {table}
    FOR EACH ROW EXECUTE FUNCTION recipe_notify();
"""

# Seconds without progress after which the index is taken as final.
_QUIET_S = 3.0
_SETTLE_TIMEOUT_S = 180.0
_COUNT_EVERY_S = 0.25


class Listener:
    """One run of the recipe's listener process."""

    def __init__(self, ws: Workspace, index: str) -> None:
        """Start the listener; `wait_ready` blocks until it has subscribed."""
        self._ws = ws
        command, env = bench_module("bench.recipe_listener")
        self._log = (ws.root / "listener.log").open("a", encoding="utf-8")
        self.proc = ws.procs.spawn(
            [*command, ws.database_url, ws.servers.search_url, index],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ws.root,
        )

    def wait_ready(self) -> None:
        """Block until the listener printed `listening`."""
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "listening":
            code = self.proc.wait()
            raise RuntimeError(f"the recipe listener failed (exit {code}); see {self._log.name}")

    def kill(self) -> None:
        """SIGKILL, like a crash or an OOM kill."""
        self._ws.procs.stop(self.proc, sig=signal.SIGKILL)
        self._log.close()


def _install_recipe(ws: Workspace) -> None:
    ws.sql(
        sql.SQL(RECIPE_TRIGGER).format(
            channel=sql.Literal(CHANNEL), table=sql.Identifier(RECIPE_TABLE)
        )
    )


def _create_index(ws: Workspace, es: Elasticsearch, index: str) -> None:
    # Same body as the indexes indexsync creates, so the two recipes write alike.
    body = index_body(load_mapping(ws.mappings_dir, ws.alias), Settings.model_construct())
    es.options(ignore_status=404).indices.delete(index=index)
    es.indices.create(index=index, settings=body["settings"], mappings=body["mappings"])


def _load(
    ws: Workspace,
    table: str,
    first: int,
    rows: int,
    tx_rows: int,
    seconds: float,
    events: Sequence[tuple[float, Callable[[], None]]] = (),
) -> float:
    """Insert rows in small transactions spread evenly over `seconds` (0: as fast as possible).

    `events` run at their offsets into the load, between two transactions.
    """
    query = sql.SQL(INSERT_RANGE).format(table=sql.Identifier(table))
    pending = sorted(events, key=lambda e: e[0])
    starts = list(range(first, first + rows, tx_rows))
    started = time.monotonic()
    with ws.connect() as conn:
        for n, start in enumerate(starts):
            slot = started + seconds * n / len(starts)
            while pending and time.monotonic() - started >= pending[0][0]:
                pending.pop(0)[1]()
            delay = slot - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conn.execute(
                query, {"first": start, "last": min(first + rows - 1, start + tx_rows - 1)}
            )
    for _, event in pending:
        event()
    return time.monotonic() - started


def _settle(
    count: Callable[[], int], expected: int, done: Callable[[], bool] = lambda: True
) -> tuple[int, float]:
    """Poll until the index holds `expected` documents or stops moving; (count, when)."""
    deadline = time.monotonic() + _SETTLE_TIMEOUT_S
    last, last_change = count(), time.monotonic()
    while last < expected and time.monotonic() < deadline:
        time.sleep(_COUNT_EVERY_S)
        now = count()
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > _QUIET_S and done():
            break
    return last, last_change


@dataclass
class _Restart:
    """Kills the writer of the index at one offset and starts it again at another."""

    kill: Callable[[], None]
    start: Callable[[], None]
    kill_at: float
    down_s: float

    def events(self) -> list[tuple[float, Callable[[], None]]]:
        """The kill and the restart as (offset, action) pairs for `_load`."""
        return [(self.kill_at, self.kill), (self.kill_at + self.down_s, self.start)]


def measure_recipe(ws: Workspace, cfg: BenchConfig) -> dict[str, Any]:
    """The recipe's docs/s over a burst, and the changes it loses across a restart."""
    es = ws.servers.search_client()
    listeners: list[Listener] = []
    try:
        rate_index = ws.servers.index_name("recipe_burst")
        _install_recipe(ws)
        _create_index(ws, es, rate_index)
        listeners.append(Listener(ws, rate_index))
        listeners[-1].wait_ready()
        n = cfg.recipe_rows
        started = time.monotonic()
        _load(ws, RECIPE_TABLE, 1, n, cfg.load_tx_rows, 0)
        indexed, finished = _settle(lambda: ws.index_count(es, rate_index), n)
        rate = indexed / (finished - started)
        listeners[-1].kill()
        say(f"recipe: {indexed}/{n} rows indexed at {rate:,.0f} docs/s (one request per row)")

        lost_index = ws.servers.index_name("recipe_restart")
        _create_index(ws, es, lost_index)
        listeners.append(Listener(ws, lost_index))
        listeners[-1].wait_ready()

        def restart() -> None:
            """Start a new listener after the crash."""
            listeners.append(Listener(ws, lost_index))

        m = cfg.restart_rows
        plan = _Restart(listeners[-1].kill, restart, cfg.restart_load_s / 3, cfg.restart_down_s)
        _load(ws, RECIPE_TABLE, n + 1, m, cfg.load_tx_rows, cfg.restart_load_s, plan.events())
        survived, _ = _settle(lambda: ws.index_count(es, lost_index), m)
        say(f"recipe across a restart: {m - survived} of {m} changes lost")
    finally:
        for listener in listeners:
            listener.kill()
        es.close()
    return {
        "docs_per_s": rate,
        "burst_rows": n,
        "burst_indexed": indexed,
        "lost": m - survived,
        "restart_rows": m,
    }


def measure_indexsync_restart(ws: Workspace, cfg: BenchConfig) -> dict[str, Any]:
    """The same load and the same SIGKILL/restart, with `indexsync run` as the writer."""
    ws.install(notify=False)
    workers = [ws.worker()]
    workers[0].wait_ready()

    def restart() -> None:
        """Start a new worker after the crash."""
        workers.append(ws.worker())

    m = cfg.restart_rows
    plan = _Restart(workers[0].kill, restart, cfg.restart_load_s / 3, cfg.restart_down_s)
    es = ws.servers.search_client()
    try:
        _load(ws, ws.table, 1, m, cfg.load_tx_rows, cfg.restart_load_s, plan.events())
        survived, _ = _settle(lambda: ws.index_count(es), m, lambda: ws.outbox_count() == 0)
    finally:
        es.close()
        for worker in workers:
            worker.stop()
    say(f"indexsync across a restart: {m - survived} of {m} changes lost")
    return {"lost": m - survived, "restart_rows": m, "peak_rss_mb": _peak(workers)}


def _peak(workers: list[Worker]) -> float:
    return round(max(w.memory.peak_mb for w in workers), 1)
