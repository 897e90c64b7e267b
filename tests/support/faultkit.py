"""Tools for the fault suite: seeded writers, worker processes, drift, and the figures report.

Nothing here mocks anything: writers are real psycopg connections, workers are real
`indexsync run` processes, and drift is measured by reading the index and the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import string
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import psycopg
from psycopg.types.json import Jsonb

from tests.support.env import EXPECTED_POSTS, Env, wait_for

SEED_ENV = "INDEXSYNC_FAULT_SEED"
REPORT_ENV = "INDEXSYNC_FAULT_REPORT"

WHERE = "deleted_at IS NULL"

# Counters of the proxy that are faults (the rest is traffic).
PROXY_FAULTS = (
    "bulk_items_rejected",
    "requests_failed_503",
    "resets_after_forward",
    "outage_refusals",
    "too_large",
    "upstream_errors",
)


def seed_for(scenario: str) -> int:
    """The scenario's seed: INDEXSYNC_FAULT_SEED when set, else a constant per scenario."""
    raw = os.environ.get(SEED_ENV)
    if raw:
        return int(raw)
    return zlib.crc32(scenario.encode()) % 100_000


def posts_binding(env: Env, name: str = "posts", where: str = WHERE) -> str:
    """The bindings text of the posts table with a `where` filter."""
    return f'[indexes.{env.alias(name)}]\ntable = "public.posts"\nwhere = "{where}"\n'


def seed_rows(env: Env, n: int, seed: int) -> None:
    """Insert rows 1..n with seeded content."""
    rng = random.Random(seed)
    rows = [_row(rng, i) for i in range(1, n + 1)]
    with psycopg.connect(env.database_url) as conn, conn.cursor() as cur:
        cur.executemany(_INSERT, rows)


# --- drift -----------------------------------------------------------------------------


@dataclass
class Drift:
    """How an index differs from what the database produces."""

    missing: list[str]
    extra: list[str]
    differing: list[str]
    expected: int
    actual: int

    @property
    def total(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.differing)

    def __str__(self) -> str:
        return (
            f"drift={self.total} (expected {self.expected} docs, index has {self.actual}): "
            f"missing={sorted(self.missing)[:10]} extra={sorted(self.extra)[:10]} "
            f"differing={sorted(self.differing)[:10]}"
        )


def compare(actual: dict[str, Any], expected: dict[str, Any]) -> Drift:
    """Missing, extra and differing documents of `actual` against `expected`."""
    return Drift(
        missing=[k for k in expected if k not in actual],
        extra=[k for k in actual if k not in expected],
        differing=[k for k in expected if k in actual and actual[k] != expected[k]],
        expected=len(expected),
        actual=len(actual),
    )


def drift(env: Env, name: str = "posts", expected_sql: str = EXPECTED_POSTS) -> Drift:
    """Compare the whole index with the documents the database produces now."""
    return compare(env.docs(name), env.expected(expected_sql))


def indexed(env: Env, doc_id: str, name: str = "posts") -> bool:
    """Whether one document is in the index (after a refresh)."""
    alias = env.alias(name)
    env.searcher.refresh(alias)
    return bool(env.http.request("HEAD", f"/{alias}/_doc/{doc_id}"))


@dataclass
class Backend:
    """One session of the test database, from pg_stat_activity."""

    pid: int
    application_name: str
    state: str | None
    wait_event_type: str | None
    wait_event: str | None
    query: str


class Probe:
    """One autocommit session for looking at the database while a scenario runs.

    Tests poll often; a new connection per poll would fork a backend each time and steal the
    CPU the scenario needs.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.url, autocommit=True, application_name="faultkit:probe", connect_timeout=5
            )
        return self._conn

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement; reconnects once if the session was lost (server restart)."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    cur.execute(query, params)
                    return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                if attempt == 2 or not (conn.broken or conn.closed):
                    raise
                self.close()
        raise AssertionError("unreachable")

    def outbox(self) -> int:
        """Changes not yet acknowledged (including those claimed by an open batch)."""
        return int(self.sql("SELECT count(*) FROM indexsync.outbox")[0][0])

    def wait_backlog_below(self, n: int, timeout: float) -> None:
        """Wait until fewer than `n` changes are pending."""
        wait_until(lambda: self.outbox() < n, timeout, 0.02, f"outbox < {n}")

    def claimable(self) -> int:
        """Outbox rows that no open batch holds (a SKIP LOCKED probe, rolled back)."""
        conn = self._connection()
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM (SELECT 1 FROM indexsync.outbox FOR UPDATE SKIP LOCKED) s"
            )
            row = cur.fetchone()
        assert row is not None
        return int(row[0])

    def backends(self, prefix: str = "indexsync") -> list[Backend]:
        """Sessions of this database whose application_name starts with `prefix`."""
        rows = self.sql(
            "SELECT pid, application_name, state, wait_event_type, wait_event, query "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND starts_with(application_name, %s) AND pid <> pg_backend_pid()",
            (prefix,),
        )
        return [Backend(*row) for row in rows]

    def terminate(self, pids: Sequence[int]) -> int:
        """pg_terminate_backend each pid; returns how many were signalled."""
        return sum(bool(self.sql("SELECT pg_terminate_backend(%s)", (pid,))[0][0]) for pid in pids)

    def dead_letters(self) -> list[tuple[Any, ...]]:
        """(doc_id, status, error_type, reason) of every dead letter."""
        return self.sql(
            "SELECT doc_id, status, error_type, reason FROM indexsync.dead_letters ORDER BY id"
        )

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None


# --- the figures report --------------------------------------------------------------------


def report(
    scenario: str,
    seed: int,
    *,
    commits: int,
    faults: dict[str, int],
    kills: int,
    drift_total: int,
    **extra: Any,
) -> None:
    """Append one JSON line to $INDEXSYNC_FAULT_REPORT (when set)."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    record = {
        "scenario": scenario,
        "seed": seed,
        "commits": commits,
        "faults_injected": faults,
        "kills": kills,
        "drift": drift_total,
        **extra,
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True, default=str) + "\n")


def proxy_faults(env: Env) -> dict[str, int]:
    """The proxy's fault counters (empty on a real cluster)."""
    proxy = env.search.proxy
    if proxy is None:
        return {}
    snapshot = proxy.stats.snapshot()
    return {key: snapshot[key] for key in PROXY_FAULTS}


# --- worker processes ----------------------------------------------------------------------


class WorkerProcess:
    """`indexsync run` in a subprocess, logging to a file (a pipe could fill up and block it)."""

    def __init__(self, env: Env, name: str, *args: str, **env_vars: str) -> None:
        self.name = name
        self.log_path = env.workdir / f"worker-{name}.log"
        self._log: IO[str] = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "indexsync", "run", *args],
            env=env.env_vars(**env_vars),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=env.workdir,
        )
        self.stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far."""
        found = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def kill(self) -> None:
        """SIGKILL, then reap."""
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._log.close()

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM (the graceful stop), wait, and return the exit code."""
        if self.stopped:
            self.resume()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.alive():
                self.proc.kill()
                self.proc.wait(timeout=30)
            self._log.close()
        return code

    def close(self) -> None:
        """Make sure the process is gone and reaped (cleanup after a failure)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        self._log.close()


class Workers:
    """Every worker a test started; closes them all at the end."""

    def __init__(self, env: Env, **env_vars: str) -> None:
        self.env = env
        self.env_vars = {"INDEXSYNC_RETRY_MAX_DELAY": "2", **env_vars}
        self.all: list[WorkerProcess] = []

    def spawn(self, name: str, *args: str, **env_vars: str) -> WorkerProcess:
        worker = WorkerProcess(self.env, name, *args, **{**self.env_vars, **env_vars})
        self.all.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.all:
            worker.close()


def events_named(workers: Sequence[WorkerProcess], event: str) -> list[dict[str, Any]]:
    return [e for w in workers for e in w.events() if e.get("event") == event]


# --- writers -------------------------------------------------------------------------------

_INSERT = (
    "INSERT INTO posts (id, title, body, views, tags, meta, published_at, deleted_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_UPSERT = (
    _INSERT + " ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, body = EXCLUDED.body, "
    "views = posts.views + 1, deleted_at = NULL"
)


_ALPHABET = string.ascii_letters + '  éü"\\/\n\t日本'


def _text(rng: random.Random, low: int, high: int) -> str:
    alphabet = string.ascii_letters + '  éü"\\/\n\t日本'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def _row(rng: random.Random, doc_id: int) -> tuple[Any, ...]:
    body = _text(rng, 0, 300) if rng.random() < 0.95 else _text(rng, 3000, 6000)
    tags = [_text(rng, 1, 8) for _ in range(rng.randint(0, 3))] if rng.random() < 0.8 else None
    meta = (
        Jsonb({"n": rng.randint(-1000, 1000), "f": round(rng.uniform(-1e6, 1e6), 3), "s": "x"})
        if rng.random() < 0.7
        else None
    )
    published = f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 10:00:00+00"
    deleted = "2026-06-01 00:00:00+00" if rng.random() < 0.1 else None
    return (doc_id, _text(rng, 1, 40), body, rng.randint(0, 10_000), tags, meta, published, deleted)


@dataclass
class WriterStats:
    """What the writers did; only committed transactions count."""

    commits: int = 0
    rollbacks: int = 0  # transactions the writer chose to roll back
    aborted: int = 0  # deadlocks, lock timeouts: rolled back by the server
    in_doubt: int = 0  # connection lost during the transaction (commit fate unknown)
    reconnects: int = 0
    # Outbox rows written by committed transactions (one per row, two per key change).
    outbox_rows: int = 0
    ops: dict[str, int] = field(default_factory=dict)


class Writers:
    """Threads that each run seeded random transactions on `posts` with their own connection."""

    def __init__(
        self,
        url: str,
        seed: int,
        *,
        threads: int = 3,
        ids: Sequence[int] = range(1, 501),
        pause: tuple[float, float] = (0.002, 0.02),
        ops: Mapping[str, float] | None = None,
    ) -> None:
        self.url = url
        self.seed = seed
        self.threads = threads
        self.ids = list(ids)
        self.pause = pause
        self.weights = ops or {
            "insert": 12,
            "upsert": 8,
            "update": 35,
            "toggle": 10,
            "delete": 10,
            "rekey": 10,
            "range": 5,
        }
        self.stats = WriterStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def start(self) -> Writers:
        for n in range(self.threads):
            thread = threading.Thread(target=self._guard, args=(n,), name=f"writer-{n}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> WriterStats:
        """Stop and join every thread; re-raise the first unexpected error."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        alive = [t.name for t in self._threads if t.is_alive()]
        self._threads.clear()
        if self._errors:
            raise self._errors[0]
        assert not alive, f"writer threads did not stop: {alive}"
        return self.stats

    def __enter__(self) -> Writers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_commits(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.stats.commits < n and time.monotonic() < deadline and not self._errors:
            time.sleep(0.02)

    def _guard(self, n: int) -> None:
        try:
            self._run(n)
        except BaseException as exc:  # reported by stop()
            self._errors.append(exc)

    def _connect(self, n: int) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.url, application_name=f"faultkit:writer{n}", connect_timeout=5)
        conn.execute("SET lock_timeout = '2s'")
        conn.commit()
        return conn

    def _run(self, n: int) -> None:
        rng = random.Random(f"{self.seed}:{n}")
        known = list(self.ids)
        fresh = iter(range(10_000_000 * (n + 1), 10_000_000 * (n + 2)))
        names = list(self.weights)
        weights = [self.weights[k] for k in names]
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self._stop.is_set():
                if conn is None or conn.closed:
                    try:
                        conn = self._connect(n)
                    except psycopg.OperationalError:
                        self._stop.wait(0.1)
                        continue
                rows = 0
                done: dict[str, int] = {}
                try:
                    for _ in range(rng.randint(1, 4)):
                        op = rng.choices(names, weights)[0]
                        rows += self._op(conn, rng, op, known, fresh)
                        done[op] = done.get(op, 0) + 1
                    if rng.random() < 0.1:
                        conn.rollback()
                        with self._lock:
                            self.stats.rollbacks += 1
                    else:
                        conn.commit()
                        with self._lock:
                            self.stats.commits += 1
                            self.stats.outbox_rows += rows
                            for op, count in done.items():
                                self.stats.ops[op] = self.stats.ops.get(op, 0) + count
                except psycopg.Error:
                    if conn.broken or conn.closed:
                        # Lost the server (restart, termination): the fate of a COMMIT in
                        # flight is unknown, so it is not counted; reconnect and go on.
                        with self._lock:
                            self.stats.in_doubt += 1
                            self.stats.reconnects += 1
                        with contextlib.suppress(psycopg.Error):
                            conn.close()
                        conn = None
                        continue
                    # Deadlock, lock timeout: the server rolled it back; that is fine.
                    conn.rollback()
                    with self._lock:
                        self.stats.aborted += 1
                self._stop.wait(rng.uniform(*self.pause))
        finally:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()

    def _op(
        self,
        conn: psycopg.Connection[Any],
        rng: random.Random,
        op: str,
        known: list[int],
        fresh: Iterator[int],
    ) -> int:
        """Run one statement; returns the outbox rows it writes if committed."""
        target = rng.choice(known) if known else 1
        with conn.cursor() as cur:
            if op == "insert":
                new = next(fresh)
                cur.execute(_INSERT, _row(rng, new))
                known.append(new)
            elif op == "upsert":
                cur.execute(_UPSERT, _row(rng, target))
            elif op == "update":
                cur.execute(
                    "UPDATE posts SET title = %s, views = views + 1, meta = %s WHERE id = %s",
                    (_text(rng, 1, 40), Jsonb({"rev": rng.randint(0, 10**6)}), target),
                )
            elif op == "toggle":
                cur.execute(
                    "UPDATE posts SET deleted_at = CASE WHEN deleted_at IS NULL "
                    "THEN now() END WHERE id = %s",
                    (target,),
                )
            elif op == "delete":
                cur.execute("DELETE FROM posts WHERE id = %s", (target,))
            elif op == "rekey":
                new = next(fresh)
                cur.execute("UPDATE posts SET id = %s WHERE id = %s", (new, target))
                if cur.rowcount:
                    known[known.index(target)] = new
                return cur.rowcount * 2
            elif op == "range":
                low = rng.choice(self.ids)
                cur.execute(
                    "UPDATE posts SET views = views + 1 WHERE id BETWEEN %s AND %s",
                    (low, low + 9),
                )
            else:
                raise ValueError(op)
            return cur.rowcount


# The shared poller, under the name the fault scenarios use.
wait_until = wait_for


def event_counts(workers: Sequence[WorkerProcess]) -> dict[str, int]:
    """How often each of indexsync's own warning-or-worse events was logged, over workers."""
    counts: dict[str, int] = {}
    for worker in workers:
        for event in worker.events():
            name = str(event.get("event", ""))
            if event.get("level") in ("warning", "error", "critical") and name[:1].islower():
                counts[name] = counts.get(name, 0) + 1
    return counts


def churn(url: str, ids: Sequence[int], seed: int) -> dict[str, int]:
    """Change every row of `ids` once more, each in a seeded way; returns counts per kind.

    Deletes, soft deletes (the row leaves the `where` filter) and key changes are included,
    so that a stale write of the old state would resurrect or revive something.
    """
    rng = random.Random(f"{seed}:churn")
    statements = {
        "update": "UPDATE posts SET title = title || ' (again)', views = views + 1 WHERE id = %s",
        "soft_delete": "UPDATE posts SET deleted_at = now() WHERE id = %s",
        "delete": "DELETE FROM posts WHERE id = %s",
        "rekey": "UPDATE posts SET id = id + 50000000 WHERE id = %s",
    }
    kinds = ["update", "update", "soft_delete", "delete", "rekey"]
    counts: dict[str, int] = {}
    ordered = list(ids)
    with psycopg.connect(url, autocommit=True, application_name="faultkit:churn") as conn:
        for start in range(0, len(ordered), 10):
            with conn.transaction(), conn.cursor() as cur:
                for doc_id in ordered[start : start + 10]:
                    kind = rng.choice(kinds)
                    cur.execute(statements[kind], (doc_id,))
                    counts[kind] = counts.get(kind, 0) + 1
    return counts
