"""Fault suite: once faults stop and the backlog drains, each index equals the database.

Every scenario runs real servers and real `indexsync run` processes, is seeded
(INDEXSYNC_FAULT_SEED overrides the per-scenario default) and bounded in time. Each one
measures drift (missing + extra + differing documents) by reading the whole index and the
documents the database produces now, rather than trusting the worker, checks that the
outbox is empty (nothing lost) and that dead letters hold only invalid documents, and
appends one JSON line of figures per scenario to $INDEXSYNC_FAULT_REPORT when that is set:
{"scenario", "seed", "commits", "faults_injected", "kills", "drift", ...}.

Scenarios: Elasticsearch faults (item 429s, 503s, 429s, resets after forwarding, an outage,
latency) under live writers; pg_terminate_backend of the worker's sessions; SIGKILL in the
middle of a batch; three workers on one backlog; a paused worker that wakes up late (within
and beyond the stale-read bound); PostgreSQL restarts under writers; documents Elasticsearch
refuses (bad date, NaN, Infinity, 1 MB text, a document over the server's request limit).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support import faultkit as fk
from tests.support.env import POSTS, Env, SearchServer

# Every scenario here injects faults through the test proxy.
pytestmark = pytest.mark.proxy


@pytest.fixture
def workers(env: Env) -> Iterator[fk.Workers]:
    """Worker processes of one test; whatever is still running at the end is killed."""
    pool = fk.Workers(env)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def probe(env: Env) -> Iterator[fk.Probe]:
    """One session for watching the database while a scenario runs."""
    watcher = fk.Probe(env.database_url)
    try:
        yield watcher
    finally:
        watcher.close()


def posts_env(env: Env, rows: int, seed: int, where: str = fk.WHERE) -> Env:
    """posts with `rows` seeded rows, bound with a `where` filter, installed, every row queued.

    The scenarios need a backlog for the worker to be caught in the middle of, so the rows
    are queued through the triggers rather than backfilled by install's own scan.
    """
    env.sql(POSTS)
    fk.seed_rows(env, rows, seed)
    env.bindings(fk.posts_binding(env, where=where))
    env.install("--no-backfill")
    env.sql("UPDATE posts SET views = views + 1")
    return env


def finish(
    env: Env,
    probe: fk.Probe,
    scenario: str,
    seed: int,
    *,
    started: float,
    commits: int,
    running: Sequence[fk.WorkerProcess] = (),
    kills: int = 0,
    faults: dict[str, int] | None = None,
    timeout: float = 40,
    **extra: Any,
) -> fk.Drift:
    """Wait for the backlog to drain, measure drift, record the figures, then assert.

    `running` are the workers expected to drain it: if they all die, fail at once.
    """

    def settled() -> bool:
        return probe.outbox() == 0 or (bool(running) and not any(w.alive() for w in running))

    with contextlib.suppress(AssertionError):
        fk.wait_until(settled, timeout, what="outbox empty")
    left = probe.outbox()
    result = fk.drift(env)
    letters = probe.dead_letters()
    fk.report(
        scenario,
        seed,
        commits=commits,
        faults={**fk.proxy_faults(env), **(faults or {})},
        kills=kills,
        drift_total=result.total,
        outbox_left=left,
        dead_letters=len(letters),
        seconds=round(time.monotonic() - started, 1),
        **extra,
    )
    dead = [w for w in running if not w.alive()]
    assert not dead, "\n".join(f"worker {w.name} died:\n{w.log_tail()}" for w in dead)
    assert left == 0, f"seed={seed}: {left} changes still pending after {timeout}s"
    assert result.total == 0, f"seed={seed}: {result}"
    assert letters == [], f"seed={seed}: valid documents were dead-lettered: {letters[:5]}"
    return result


def stop_cleanly(*procs: fk.WorkerProcess, timeout: float = 30) -> None:
    """SIGTERM each worker; each must still be alive then, and exit 0."""
    for proc in procs:
        assert proc.alive(), f"worker {proc.name} died:\n{proc.log_tail()}"
        try:
            code = proc.terminate(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {proc.name} still running {timeout}s after SIGTERM (killed)")
        assert code == 0, f"worker {proc.name} exited {code}:\n{proc.log_tail()}"


# --- 1. Elasticsearch faults under live writers ---------------------------------------------


@pytest.mark.slow
def test_es_faults_under_live_writers_end_in_zero_drift(
    env: Env, workers: fk.Workers, probe: fk.Probe
) -> None:
    scenario = "es_faults_live_writers"
    seed = fk.seed_for(scenario)
    proxy = env.search.proxy
    if proxy is None:
        pytest.skip("needs the fault-injecting proxy (osmem)")
    started = time.monotonic()
    posts_env(env, 500, seed)
    proxy.faults.seed = seed
    proxy.faults.reset()
    # Small batches: under these writers they fill up, so several are in flight at once.
    worker = workers.spawn("w1", INDEXSYNC_BATCH_SIZE="100")
    fk.wait_until(lambda: probe.outbox() == 0, 30, what="backfill synced")
    writers = fk.Writers(env.database_url, seed, pause=(0.01, 0.04)).start()
    try:
        writers.wait_commits(20)
        proxy.faults.bulk_item_429_rate = 0.3
        time.sleep(2)
        fk.wait_until(lambda: proxy.stats.bulk_items_rejected >= 20, 10, what="429s injected")
        proxy.faults.bulk_item_429_rate = 0.0
        proxy.faults.fail_next_requests(3)
        fk.wait_until(lambda: proxy.stats.requests_failed_503 >= 3, 15, what="503s consumed")
        proxy.faults.fail_next_requests(2, status=429)
        fk.wait_until(lambda: proxy.stats.requests_failed_503 >= 5, 15, what="429s consumed")
        proxy.faults.reset_after_forward_next(3)
        fk.wait_until(lambda: proxy.stats.resets_after_forward >= 3, 15, what="resets consumed")
        proxy.faults.outage(3)
        time.sleep(3.5)
        assert proxy.stats.outage_refusals > 0
        proxy.faults.latency_s = 0.2
        time.sleep(2)
        assert worker.alive(), worker.log_tail()
    finally:
        proxy.faults.reset()
        stats = writers.stop()
    assert stats.commits > 0
    finish(
        env,
        probe,
        scenario,
        seed,
        started=started,
        running=[worker],
        commits=stats.commits,
        writer_ops=stats.ops,
        worker_events=fk.event_counts([worker]),
    )
    stop_cleanly(worker)


# --- 2. the database terminates the worker's sessions -------------------------------------


@pytest.mark.slow
def test_terminated_sessions_reconnect_and_listen_again(
    env: Env, workers: fk.Workers, probe: fk.Probe
) -> None:
    scenario = "pg_terminate_backend"
    seed = fk.seed_for(scenario)
    started = time.monotonic()
    env.overrides["notify"] = "true"
    posts_env(env, 2500, seed)
    # A long poll interval: while the worker idles, a change can only arrive quickly through
    # NOTIFY (or through the drain that follows a reconnect).
    worker = workers.spawn("w1", INDEXSYNC_BATCH_SIZE="100", INDEXSYNC_POLL_INTERVAL="60")
    terminated: list[int] = []

    def sessions() -> list[fk.Backend]:
        return [b for b in probe.backends("indexsync:") if b.pid not in terminated]

    with fk.Writers(env.database_url, seed, threads=2, pause=(0.01, 0.05)) as writers:
        for left in (2000, 1400, 800):
            probe.wait_backlog_below(left, 30)
            # Both sessions (batch and listener) die at once, in the middle of the backlog.
            pids = [b.pid for b in fk.wait_until(sessions, 15, 0.02, "new worker sessions")]
            assert probe.terminate(pids) >= 1
            terminated += pids
    finish(
        env,
        probe,
        scenario,
        seed,
        started=started,
        running=[worker],
        commits=writers.stats.commits,
        faults={"pg_terminate_backend": len(terminated)},
        worker_events=fk.event_counts([worker]),
    )
    assert worker.alive(), worker.log_tail()

    # Idle now. Kill only the listener: the worker must notice and LISTEN again ...
    def listening() -> list[fk.Backend]:
        return [b for b in sessions() if b.query.upper().startswith("LISTEN")]

    old = fk.wait_until(listening, 15, what="a listening session")
    probe.terminate([b.pid for b in old])
    terminated += [b.pid for b in old]
    fk.wait_until(listening, 15, what="a new listening session after termination")
    # ... and a live change then arrives long before the 60 s poll would find it.
    env.sql("INSERT INTO posts (id, title) VALUES (900001, 'after the listener died')")
    fk.wait_until(lambda: fk.indexed(env, "900001"), 15, 0.1, "live change indexed")
    # Kill the batch session while the worker idles: the next change still arrives.
    probe.terminate([b.pid for b in probe.backends("indexsync:worker")])
    env.sql("INSERT INTO posts (id, title) VALUES (900002, 'after the batch session died')")
    fk.wait_until(lambda: fk.indexed(env, "900002"), 15, 0.1, "second live change indexed")
    assert fk.drift(env).total == 0
    stop_cleanly(worker)


# --- 3. SIGKILL in the middle of a batch ---------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart_loses_nothing(
    env: Env, workers: fk.Workers, probe: fk.Probe
) -> None:
    scenario = "sigkill_mid_batch"
    seed = fk.seed_for(scenario)
    started = time.monotonic()
    posts_env(env, 2500, seed)
    if env.search.proxy is not None:
        # Each bulk spends a while in flight: a kill then lands between "written" and
        # "acknowledged", which is the window that matters.
        env.search.proxy.faults.latency_s = 0.05
    kills = 0
    with fk.Writers(env.database_url, seed, threads=2, pause=(0.01, 0.05)) as writers:
        for n, left in enumerate((1900, 1000)):
            worker = workers.spawn(f"w{n}", INDEXSYNC_BATCH_SIZE="100")
            probe.wait_backlog_below(left, 30)
            # Kill while its batch transaction is open: claimed, read, bulk in flight.
            fk.wait_until(
                lambda: any(
                    b.state == "idle in transaction" for b in probe.backends("indexsync:worker")
                ),
                10,
                0.002,
                "a batch in flight",
            )
            worker.kill()
            kills += 1
            # Its session dies with it, and the claims go back to the outbox.
            fk.wait_until(lambda: not probe.backends("indexsync:"), 15, what="sessions gone")
        survivor = workers.spawn("survivor", INDEXSYNC_BATCH_SIZE="100")
        writers.wait_commits(writers.stats.commits + 50)
    if env.search.proxy is not None:
        env.search.proxy.faults.latency_s = 0.0
    finish(
        env,
        probe,
        scenario,
        seed,
        started=started,
        running=[survivor],
        commits=writers.stats.commits,
        kills=kills,
        faults={"sigkill": kills},
    )
    stop_cleanly(survivor)


# --- 4. three workers on one backlog -------------------------------------------------------


@pytest.mark.slow
def test_three_workers_share_a_backlog_exactly_once(
    env: Env, workers: fk.Workers, probe: fk.Probe
) -> None:
    scenario = "three_workers"
    seed = fk.seed_for(scenario)
    started = time.monotonic()
    posts_env(env, 2000, seed)
    env.sql("UPDATE posts SET views = views + 1 WHERE id % 3 = 0")
    env.sql("DELETE FROM posts WHERE id % 7 = 0")
    queued = probe.outbox()
    trio = [workers.spawn(f"w{n}", INDEXSYNC_BATCH_SIZE="100") for n in range(3)]
    with fk.Writers(env.database_url, seed, threads=2, pause=(0.005, 0.03)) as writers:
        fk.wait_until(lambda: probe.outbox() < queued // 2, 30, what="half the backlog")
        writers.wait_commits(writers.stats.commits + 100)
    stats = writers.stats
    finish(env, probe, scenario, seed, started=started, commits=stats.commits, running=trio)
    stop_cleanly(*trio)
    # batch.done is logged after each commit, so the sum is what was acknowledged: every
    # change once, none twice (SKIP LOCKED), none forgotten.
    per_worker = [sum(e["changes"] for e in fk.events_named([w], "batch.done")) for w in trio]
    assert stats.in_doubt == 0
    assert sum(per_worker) == queued + stats.outbox_rows, per_worker
    assert sum(1 for n in per_worker if n) >= 2, f"only one worker did anything: {per_worker}"


# --- 5. a paused worker wakes up late ------------------------------------------------------

GATE_KEY = 7177
# A test-only switch in the binding's `where` clause: the worker's re-read waits on it, after
# the statement's snapshot is taken. That freezes a worker between "read" and "send" exactly.
GATE = f"""
CREATE FUNCTION faultkit_gate() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({GATE_KEY});
    RETURN true;
END
$$
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        # A pause well within the stale-read bound: the zombie sends, versions refuse it.
        "fenced_by_versions",
        # A pause longer than the bound and than the tombstones' life (compressed: 1 s bound,
        # 2 s gc_deletes, the same ratio as the defaults' 120 s and 3600 s): it must re-read.
        "past_max_read_age",
    ],
)
def test_a_paused_worker_cannot_write_stale_documents(
    env: Env, workers: fk.Workers, probe: fk.Probe, case: str
) -> None:
    scenario = f"zombie_{case}"
    seed = fk.seed_for(scenario)
    started = time.monotonic()
    long_pause = case == "past_max_read_age"
    settings = {"INDEXSYNC_MAX_READ_AGE": "1"} if long_pause else {}
    if long_pause:
        env.mapping("posts", {"settings": {"index.gc_deletes": "2s"}})
    env.sql(GATE)
    rows = 200
    posts_env(env, rows, seed, where=f"{fk.WHERE} AND faultkit_gate()")
    env.sync()
    # One pending change per row; the zombie, alone, claims them all in one batch.
    env.sql("UPDATE posts SET views = views + 1")
    gate = psycopg.connect(env.database_url, autocommit=True)
    try:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE_KEY,))
        zombie = workers.spawn("zombie", **settings)
        (session,) = fk.wait_until(
            lambda: [b for b in probe.backends("indexsync:") if b.wait_event == "advisory"],
            20,
            0.02,
            "the zombie's read waiting at the gate",
        )
        assert probe.claimable() == 0, "the zombie should hold every pending change"
        zombie.pause()
        paused_at = time.monotonic()
        # Its read completes on the server; the answer waits, unread, in its socket.
        gate.execute("SELECT pg_advisory_unlock(%s)", (GATE_KEY,))
    finally:
        gate.close()
    fk.wait_until(
        lambda: (
            [b.state for b in probe.backends("indexsync:") if b.pid == session.pid]
            == ["idle in transaction"]
        ),
        10,
        what="the zombie's read done",
    )
    # The world moves on: every row the zombie read changes again (deletes, soft deletes and
    # key changes included) while writers keep updating the same rows ...
    kinds = fk.churn(env.database_url, range(1, rows + 1), seed)
    ops = {"update": 50, "toggle": 20, "delete": 10, "rekey": 10, "upsert": 10}
    with fk.Writers(env.database_url, seed, threads=2, ids=range(1, rows + 1), ops=ops) as w:
        w.wait_commits(100)
    # ... and another worker syncs all of it, skipping the changes the zombie holds.
    other = workers.spawn("other", **settings)
    fk.wait_until(
        lambda: probe.claimable() == 0 and probe.outbox() == rows,
        20,
        what="the other worker caught up",
    )
    before = fk.drift(env)
    assert before.total == 0, f"before the zombie wakes: {before}"
    if long_pause:
        # Let the delete tombstones the other worker wrote expire (gc_deletes = 2 s).
        time.sleep(3)
    paused = time.monotonic() - paused_at
    zombie.resume()
    result = finish(
        env,
        probe,
        scenario,
        seed,
        started=started,
        running=[zombie, other],
        commits=w.stats.commits + -(-rows // 10),
        faults={"sigstop": 1},
        paused_seconds=round(paused, 1),
        churn=kinds,
    )
    assert result.total == 0
    stop_cleanly(zombie, other)
    if not long_pause:
        # It did send its stale batch (and acknowledged it once it was refused).
        sent = [e["changes"] for e in fk.events_named([zombie], "batch.done")]
        assert rows in sent, f"the zombie never completed its stale batch: {sent}"


# --- 6. PostgreSQL restarts while writers keep going ---------------------------------------


@pytest.fixture(scope="module")
def restartable_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private PostgreSQL this module may restart (the session's one is shared)."""
    if os.environ.get("INDEXSYNC_TEST_DATABASE_URL"):
        pytest.skip("restarting needs the embedded PostgreSQL, not INDEXSYNC_TEST_DATABASE_URL")
    from indexsync.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg-restart") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def restart_env(
    restartable_pg: Any, search_server: SearchServer, tmp_path: Path
) -> Iterator[tuple[Env, Any]]:
    name = f"faults_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(restartable_pg.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    world = Env(restartable_pg.url_for(name), search_server, tmp_path)
    try:
        yield world, restartable_pg
    finally:
        world.close()


@pytest.mark.slow
def test_postgres_restarts_under_writers(restart_env: tuple[Env, Any]) -> None:
    env, server = restart_env
    scenario = "pg_restart"
    seed = fk.seed_for(scenario)
    started = time.monotonic()
    posts_env(env, 2000, seed)
    pool = fk.Workers(env)
    probe = fk.Probe(env.database_url)
    restarts = 0
    try:
        worker = pool.spawn("w1", INDEXSYNC_BATCH_SIZE="100")
        with fk.Writers(env.database_url, seed, pause=(0.005, 0.03)) as writers:
            for left in (1500, 800):
                # In the middle of the backlog, with batches and writers in flight.
                probe.wait_backlog_below(left, 30)
                server.restart()
                restarts += 1
            writers.wait_commits(writers.stats.commits + 100)
        stats = writers.stats
        assert stats.in_doubt > 0 or stats.reconnects > 0, "the writers never saw a restart"
        finish(
            env,
            probe,
            scenario,
            seed,
            started=started,
            running=[worker],
            commits=stats.commits,
            faults={"pg_restart": restarts},
            writer_in_doubt=stats.in_doubt,
            worker_events=fk.event_counts([worker]),
        )
        env.sql("INSERT INTO posts (id, title) VALUES (900001, 'after the restarts')")
        fk.wait_until(lambda: fk.indexed(env, "900001"), 15, 0.1, "live change indexed")
        stop_cleanly(worker)
    finally:
        probe.close()
        pool.close()


# --- 7. documents Elasticsearch refuses ----------------------------------------------------

ITEMS = """
CREATE TABLE items (
    id integer PRIMARY KEY,
    title text NOT NULL,
    happened_at timestamptz DEFAULT '2026-03-04 05:06:07+00',
    score numeric DEFAULT 1.5,
    body text
)
"""
ITEMS_MAPPING = {
    "mappings": {
        "properties": {
            "id": {"type": "integer"},
            "title": {"type": "text"},
            "happened_at": {"type": "date"},
            "score": {"type": "double"},
            "body": {"type": "text"},
        }
    }
}


def test_refused_documents_are_dead_lettered_without_blocking_the_batch(
    env: Env, probe: fk.Probe
) -> None:
    scenario = "dead_letters"
    seed = fk.seed_for(scenario)
    started = time.monotonic()
    alias = env.alias("items")
    env.sql(ITEMS)
    env.bindings(f'[indexes.{alias}]\ntable = "items"\n')
    env.mapping("items", ITEMS_MAPPING)
    env.install()
    one_mb = 1024 * 1024
    # One batch: valid rows around values no mapping can take, and a 1 MB text (fine).
    probe.sql(
        "INSERT INTO items (id, title) SELECT g, 'fine ' || g FROM generate_series(1, 50) g;"
        "INSERT INTO items (id, title, happened_at) VALUES (101, 'forever', 'infinity');"
        "INSERT INTO items (id, title, score) VALUES (102, 'not a number', 'NaN');"
        "INSERT INTO items (id, title, score) VALUES (104, 'too big', 'Infinity');"
        "INSERT INTO items (id, title, body) VALUES (103, 'a megabyte', repeat('x', 1048576))"
    )
    commits = 1
    totals = env.sync()
    invalid = {"101": "happened_at", "102": "score", "104": "score"}
    letters = {row[0]: row[1:] for row in probe.dead_letters()}
    assert set(letters) == set(invalid), letters
    for doc_id, column in invalid.items():
        status, error_type, reason = letters[doc_id]
        assert status == 400 and error_type == "mapper_parsing_exception", letters[doc_id]
        assert column in reason, reason
    docs = env.docs("items")
    assert len(docs["103"]["body"]) == one_mb
    expected_sql = "SELECT id, to_jsonb(i) FROM items i WHERE id::text <> ALL(%s)"

    def items_drift(dead: set[str]) -> fk.Drift:
        expected = {str(r[0]): r[1] for r in probe.sql(expected_sql, (list(dead),))}
        return fk.compare(env.docs("items"), expected)

    assert items_drift(set(invalid)).total == 0
    assert probe.outbox() == 0

    # A document larger than the server takes (413) is split out and dead-lettered alone.
    proxy = env.search.proxy
    too_large = 0
    if proxy is not None:
        proxy.faults.max_body_bytes = 200_000
        probe.sql(
            "INSERT INTO items (id, title) SELECT g, 'fine ' || g FROM generate_series(51, 80) g;"
            "INSERT INTO items (id, title, body) VALUES (201, 'too long', repeat('y', 300000));"
            "INSERT INTO items (id, title) SELECT g, 'fine ' || g FROM generate_series(81, 90) g"
        )
        commits += 1
        env.sync()
        too_large = proxy.stats.too_large
        proxy.faults.reset()
        letters = {row[0]: row[1:] for row in probe.dead_letters()}
        assert set(letters) == {*invalid, "201"}, letters
        status, error_type, reason = letters["201"]
        assert status == 413 and "larger than the server accepts" in reason, letters["201"]
        assert items_drift({*invalid, "201"}).total == 0
        # Once the limit is lifted, retrying that one dead letter lands it.
        (letter_id,) = env.sql("SELECT id FROM indexsync.dead_letters WHERE doc_id = '201'")[0]
        retried = env.cli("deadletters", "retry", "--id", str(letter_id))
        assert retried.returncode == 0, retried.stderr
        env.sync()
    final = items_drift(set(invalid))
    fk.report(
        scenario,
        seed,
        commits=commits,
        faults={**fk.proxy_faults(env), "invalid_documents": len(invalid) + (proxy is not None)},
        kills=0,
        drift_total=final.total,
        dead_letters=len(probe.dead_letters()),
        seconds=round(time.monotonic() - started, 1),
        first_batch_dead=totals.dead,
        too_large_responses=too_large,
    )
    assert final.total == 0, final
    assert {row[0] for row in probe.dead_letters()} == set(invalid)
    assert probe.outbox() == 0


# --- liveness findings -------------------------------------------------------------------


def test_sigterm_while_idle_exits_without_waiting_for_the_poll(
    env: Env, workers: fk.Workers, probe: fk.Probe
) -> None:
    """An idle worker with a long poll interval must still stop promptly on SIGTERM."""
    posts_env(env, 10, fk.seed_for("sigterm_idle"))
    worker = workers.spawn("w1", INDEXSYNC_POLL_INTERVAL="60")
    fk.wait_until(lambda: probe.outbox() == 0, 20, what="backfill synced")
    fk.wait_until(
        lambda: any(b.query.upper().startswith("LISTEN") for b in probe.backends("indexsync:")),
        10,
        what="listening",
    )
    # A process manager gives a few seconds (Kubernetes: 30 s) before SIGKILL.
    stop_cleanly(worker, timeout=10)


@pytest.mark.slow
def test_sustained_item_rejections_still_make_progress(
    env: Env, workers: fk.Workers, probe: fk.Probe
) -> None:
    """30 % of bulk items answered 429 for as long as it takes: the backlog must still drain."""
    scenario = "sustained_429"
    seed = fk.seed_for(scenario)
    proxy = env.search.proxy
    if proxy is None:
        pytest.skip("needs the fault-injecting proxy (osmem)")
    started = time.monotonic()
    posts_env(env, 2000, seed)
    proxy.faults.seed = seed
    proxy.faults.reset()
    proxy.faults.bulk_item_429_rate = 0.3
    worker = workers.spawn("w1")
    # Wait with the faults on: the backlog must drain while 30 % of items are refused
    # (finish() then records the figures and reports what is left, if anything).
    with contextlib.suppress(AssertionError):
        fk.wait_until(lambda: probe.outbox() == 0, 20, 0.2, "backlog drained under 429s")
    proxy.faults.reset()
    finish(
        env,
        probe,
        scenario,
        seed,
        started=started,
        commits=0,
        running=[worker],
        timeout=0.1,
        worker_events=fk.event_counts([worker]),
    )
    stop_cleanly(worker)


def test_a_fixed_or_deleted_row_leaves_the_dead_letters(env: Env, probe: fk.Probe) -> None:
    """Dead letters hold only documents that are invalid now, not ones fixed since."""
    scenario = "dead_letters_after_fix"
    seed = fk.seed_for(scenario)
    started = time.monotonic()
    alias = env.alias("items")
    env.sql(ITEMS)
    env.bindings(f'[indexes.{alias}]\ntable = "items"\n')
    env.mapping("items", ITEMS_MAPPING)
    env.install()
    probe.sql(
        "INSERT INTO items (id, title) SELECT g, 'fine ' || g FROM generate_series(1, 10) g;"
        "INSERT INTO items (id, title, happened_at) VALUES (101, 'forever', 'infinity');"
        "INSERT INTO items (id, title, score) VALUES (102, 'not a number', 'NaN')"
    )
    env.sync()
    assert {row[0] for row in probe.dead_letters()} == {"101", "102"}
    # The user fixes one row and deletes the other; both changes sync without error.
    probe.sql("UPDATE items SET happened_at = '2026-01-01' WHERE id = 101")
    probe.sql("DELETE FROM items WHERE id = 102")
    env.sync()
    result = fk.compare(env.docs("items"), env.expected("SELECT id, to_jsonb(i) FROM items i"))
    letters = probe.dead_letters()
    fk.report(
        scenario,
        seed,
        commits=3,
        faults={"invalid_documents": 2},
        kills=0,
        drift_total=result.total,
        dead_letters=len(letters),
        seconds=round(time.monotonic() - started, 1),
    )
    assert result.total == 0, result
    assert letters == [], f"dead letters of documents that are fine now: {letters}"
