"""The operator's kit: `pause` and `resume` stop and restart the writes to one index without
losing a change, and `resync` rewrites chosen documents through the outbox, never over a
newer write."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.support.env import Env, running, wait_for

ROWS = 600


@pytest.fixture
def items(env: Env) -> Env:
    env.sql("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, tenant text NOT NULL)")
    env.sql(f"INSERT INTO items SELECT g, 0, 't' || (g % 5) FROM generate_series(1, {ROWS}) g")
    env.bindings(f'[indexes.{env.alias("items")}]\ntable = "items"\n')
    env.install("--wait")
    return env


class Writers:
    """Application sessions updating random rows until stopped."""

    def __init__(self, env: Env, count: int = 2) -> None:
        self.env = env
        self.stop = threading.Event()
        self.writes = 0
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(count)]

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        with psycopg.connect(self.env.database_url, autocommit=True) as conn:
            while not self.stop.is_set():
                conn.execute("UPDATE items SET n = n + 1 WHERE id = %s", (rng.randint(1, ROWS),))
                self.writes += 1
                time.sleep(0.002)

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


@pytest.fixture
def worker(items: Env) -> Iterator[list[str]]:
    with running(items) as log:
        yield log


def _verify_in_sync(env: Env) -> None:
    assert env.cli("wait", "--timeout", "60").returncode == 0
    result = env.cli("verify")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_paused_index_receives_no_write_and_loses_no_change(
    items: Env, worker: list[str]
) -> None:
    alias = items.alias("items")
    with Writers(items) as writers:
        wait_for(lambda: writers.writes > 200, what="writes under way")
        paused = items.cli("pause", alias, "--reason", "cluster upgrade")
        assert paused.returncode == 0, paused.stderr
        assert "paused" in paused.stdout
        # From the moment `pause` returns, the index does not change, whatever the writers do.
        before = items.versions("items")
        writes_before = writers.writes
        time.sleep(2.0)
        assert writers.writes > writes_before + 100
        assert items.versions("items") == before
        report = json.loads(items.cli("status", "--json").stdout)
        (row,) = [r for r in report["indexes"] if r["index"] == alias]
        assert row["paused_by_operator"] and row["held_reason"] == "cluster upgrade"
        assert row["backlog"] > 0
        # A pause is no failure: status stays healthy and says why the backlog waits.
        status = items.cli("status")
        assert status.returncode == 0, status.stdout
        assert "paused by an operator" in status.stdout
        resumed = items.cli("resume", alias)
        assert resumed.returncode == 0, resumed.stderr
    _verify_in_sync(items)


def test_a_waiter_on_a_paused_index_is_told_why(items: Env, worker: list[str]) -> None:
    alias = items.alias("items")
    assert items.cli("pause", alias, "--reason", "mapping migration").returncode == 0
    items.sql("UPDATE items SET n = n + 1 WHERE id = 1")
    result = items.cli("wait", alias, "--timeout", "1")
    assert result.returncode == 1
    assert "paused by an operator: mapping migration" in result.stderr
    assert items.cli("resume", alias).returncode == 0
    assert items.cli("wait", alias, "--timeout", "30").returncode == 0


def test_pause_and_resume_refuse_what_they_cannot_do(items: Env) -> None:
    alias = items.alias("items")
    unknown = items.cli("pause", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr
    not_paused = items.cli("resume", alias)
    assert not_paused.returncode == 2 and "not paused" in not_paused.stderr


def test_resync_of_a_filtered_subset_under_writers_repairs_it_and_overwrites_nothing_newer(
    items: Env, worker: list[str]
) -> None:
    alias = items.alias("items")
    # Drift inside the subset: documents deleted behind indexsync's back.
    lost = ["5", "10", "15"]
    for doc_id in lost:
        items.delete_doc("items", doc_id)
    with Writers(items) as writers:
        wait_for(lambda: writers.writes > 100, what="writes under way")
        result = items.cli("resync", alias, "--where", "id % 5 = 0", "--rate", "2000")
        assert result.returncode == 0, result.stderr
        assert f"queued {ROWS // 5} document(s)" in result.stdout
    assert set(lost) <= set(items.docs("items"))
    # Every document equals its row: a resync's rewrite never went over a newer write.
    _verify_in_sync(items)


def test_resync_queues_evenly_at_its_rate(items: Env) -> None:
    result = items.cli("resync", items.alias("items"), "--rate", "200")
    assert result.returncode == 0, result.stderr
    assert f"queued {ROWS} document(s)" in result.stdout
    # Pages of 20, each its own transaction, the next one no sooner than its rate allows:
    # the queue fills over about (600 - 20) / 200 = 2.9 s (less the first page's own start),
    # never in one burst.
    ((pages, spread),) = items.sql(
        "SELECT count(DISTINCT created_at), "
        "extract(epoch FROM max(created_at) - min(created_at))::float8 FROM indexsync.outbox"
    )
    assert pages == ROWS // 20
    assert spread >= 0.9 * (ROWS - 20) / 200


def test_resync_by_ids_checks_every_id_before_queueing_any(items: Env) -> None:
    alias = items.alias("items")
    good = items.cli("resync", alias, "--ids", "-", input="3\n4\n\n7\n")
    assert good.returncode == 0, good.stderr
    assert "queued 3 document(s)" in good.stdout
    items.sql("DELETE FROM indexsync.outbox")
    bad = items.cli("resync", alias, "--ids", "-", input="3\nnot-a-number\n7\n")
    assert bad.returncode == 2
    assert "id 2 ('not-a-number')" in bad.stderr
    assert items.sql("SELECT count(*) FROM indexsync.outbox")[0][0] == 0


def test_resync_names_a_bad_condition(items: Env) -> None:
    result = items.cli("resync", items.alias("items"), "--where", "no_such_column = 1")
    assert result.returncode == 2
    assert "--where" in result.stderr and "no_such_column" in result.stderr
