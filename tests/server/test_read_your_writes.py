"""Read-your-writes: `indexsync.wait_for_search(index, timeout)` returns true only once every
change committed before the call is searchable, false (with a WARNING saying why) when the
timeout passes first or one of the caller's changes was dead-lettered, and never hangs
without a reason. `indexsync wait` is its command-line twin.

The indexes here never refresh on their own (`refresh_interval: -1`): a document is
searchable only once somebody refreshes the index, so a `true` that came before the
refresh would fail these tests.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.env import Env, running, wait_for
from tests.support.waiting import search_ids, writer_and_waiter

MAPPING = {
    "settings": {"index": {"refresh_interval": "-1"}},
    "mappings": {"properties": {"n": {"type": "integer"}, "title": {"type": "text"}}},
}


POSTS_QUERY = (
    "SELECT p.id, jsonb_build_object('author', a.name) AS doc "
    "FROM posts p JOIN authors a ON a.id = p.author_id"
)


@pytest.fixture
def items(env: Env) -> Env:
    env.sql("CREATE TABLE items (id int PRIMARY KEY, n text NOT NULL, title text)")
    env.sql("INSERT INTO items SELECT g, g::text, 'row ' || g FROM generate_series(1, 20) g")
    env.mapping("items", MAPPING)
    env.bindings(f'[indexes.{env.alias("items")}]\ntable = "items"\n')
    env.install("--wait")
    return env


@pytest.fixture
def worker(items: Env) -> Iterator[list[str]]:
    with running(items, INDEXSYNC_STALL_SECONDS="30") as log:
        yield log


def test_every_writer_finds_its_own_write_the_moment_the_call_returns_true(
    items: Env, worker: list[str]
) -> None:
    alias = items.alias("items")
    failures: list[str] = []

    def one(i: int) -> None:
        with writer_and_waiter(items.database_url) as (conn, waiter):
            conn.execute("INSERT INTO items VALUES (%s, %s, %s)", (1000 + i, str(i), f"new {i}"))
            conn.commit()
            answer = waiter.wait(alias, "10 s")
            found = search_ids(items, alias, [str(1000 + i)])
            if not answer.ok:
                failures.append(f"{i}: false ({answer.warnings})")
            elif str(1000 + i) not in found:
                failures.append(f"{i}: true, yet the search did not find the document")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


def test_an_update_is_searchable_with_its_new_value(items: Env, worker: list[str]) -> None:
    alias = items.alias("items")
    with writer_and_waiter(items.database_url) as (conn, waiter):
        for round_ in range(5):
            conn.execute("UPDATE items SET title = %s WHERE id = 7", (f"edition{round_}",))
            conn.commit()
            assert waiter.wait(alias, "10 s").ok
            hits = items.http.request(
                "POST",
                f"/{alias}/_search",
                body={"query": {"match": {"title": f"edition{round_}"}}},
            )
            assert [h["_id"] for h in hits["hits"]["hits"]] == ["7"]


def test_a_change_to_a_related_table_counts_for_the_documents_it_touches(env: Env) -> None:
    env.sql("CREATE TABLE authors (id int PRIMARY KEY, name text NOT NULL)")
    env.sql("CREATE TABLE posts (id int PRIMARY KEY, author_id int REFERENCES authors)")
    env.sql("INSERT INTO authors VALUES (1, 'ann'), (2, 'bob')")
    env.sql("INSERT INTO posts SELECT g, 1 + g % 2 FROM generate_series(1, 10) g")
    alias = env.alias("posts")
    env.mapping("posts", {"settings": {"index": {"refresh_interval": "-1"}}})
    env.bindings(
        f"""
[indexes.{alias}]
table = "posts"
query = "{POSTS_QUERY}"

[[indexes.{alias}.depends]]
table = "authors"
sql = "SELECT p.id FROM posts p WHERE p.author_id = ANY(%(keys)s)"
"""
    )
    env.install("--wait")
    with running(env), writer_and_waiter(env.database_url) as (conn, waiter):
        conn.execute("UPDATE authors SET name = 'carol' WHERE id = 2")
        conn.commit()
        assert waiter.wait(alias, "10 s").ok
        hits = env.http.request(
            "POST", f"/{alias}/_search", body={"query": {"match": {"author": "carol"}}, "size": 20}
        )
        assert sorted(int(h["_id"]) for h in hits["hits"]["hits"]) == [1, 3, 5, 7, 9]


def test_a_dead_lettered_change_is_answered_false_at_once_with_the_reason(
    items: Env, worker: list[str]
) -> None:
    alias = items.alias("items")
    with writer_and_waiter(items.database_url) as (conn, waiter):
        # `n` is an integer in the index: this row is refused for good, and dead-lettered.
        conn.execute("UPDATE items SET n = 'not a number' WHERE id = 3")
        conn.commit()
        started = time.monotonic()
        answer = waiter.wait(alias, "20 s")
        assert not answer.ok
        assert time.monotonic() - started < 10, "answered, not left to time out"
        assert any("dead-lettered" in w and "3" in w for w in answer.warnings), answer.warnings
    # Another session's good write is not held up by that dead letter.
    with writer_and_waiter(items.database_url) as (conn, waiter):
        conn.execute("UPDATE items SET title = 'fine' WHERE id = 4")
        conn.commit()
        assert waiter.wait(alias, "10 s").ok
        assert "4" in search_ids(items, alias, ["4"])


def test_without_a_worker_the_call_times_out_false_and_says_why(items: Env) -> None:
    alias = items.alias("items")
    with writer_and_waiter(items.database_url) as (conn, waiter):
        conn.execute("UPDATE items SET title = 'waiting' WHERE id = 5")
        conn.commit()
        started = time.monotonic()
        answer = waiter.wait(alias, "700 ms")
        waited = time.monotonic() - started
    assert not answer.ok
    assert 0.6 < waited < 5
    assert any("no indexsync worker" in w for w in answer.warnings), answer.warnings


def test_a_blocked_index_keeps_its_waiters_waiting_and_says_it_is_paused(
    items: Env, worker: list[str]
) -> None:
    alias = items.alias("items")
    target = items.searcher.alias_targets(alias)[0]
    items.http.request("PUT", f"/{target}/_settings", body={"index.blocks.write": True})
    try:
        with writer_and_waiter(items.database_url) as (conn, waiter):
            conn.execute("UPDATE items SET title = 'blocked' WHERE id = 6")
            conn.commit()
            answer = waiter.wait(alias, "3 s")
            assert not answer.ok, "a refused write is not searchable"
            assert any("paused" in w or "wait" in w for w in answer.warnings), answer.warnings
    finally:
        items.http.request("PUT", f"/{target}/_settings", body={"index.blocks.write": False})
    # The re-queued change kept its place: a waiter that comes later waits for it too.
    with writer_and_waiter(items.database_url) as (_, waiter):
        assert waiter.wait(alias, "30 s").ok
    assert search_ids(items, alias, ["6"]) == {"6"}
    hits = items.http.request(
        "POST", f"/{alias}/_search", body={"query": {"match": {"title": "blocked"}}}
    )
    assert [h["_id"] for h in hits["hits"]["hits"]] == ["6"]


def test_misuse_is_an_error_that_names_the_mistake(items: Env) -> None:
    alias = items.alias("items")
    with psycopg.connect(items.database_url) as conn:
        with pytest.raises(psycopg.errors.UndefinedObject, match="no binding is installed"):
            conn.execute("SELECT indexsync.wait_for_search('no_such_index')")
        conn.rollback()
        conn.execute("UPDATE items SET title = 'uncommitted' WHERE id = 1")
        with pytest.raises(psycopg.errors.InvalidTransactionState, match="not committed yet"):
            conn.execute("SELECT indexsync.wait_for_search(%s)", (alias,))
        conn.rollback()
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(psycopg.errors.InvalidTransactionState, match="REPEATABLE READ"):
            conn.execute("SELECT indexsync.wait_for_search(%s)", (alias,))
        conn.rollback()
        # A cancelled wait lets go of its lock: no worker would see a waiter that is gone.
        conn.execute("SET statement_timeout = '200ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT indexsync.wait_for_search(%s, timeout => '5 s')", (alias,))
        conn.rollback()
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ).fetchone()
        assert held == (0,)


def test_waiters_survive_their_leading_worker_being_killed(items: Env) -> None:
    alias = items.alias("items")
    # The first worker leads the index's refreshes: it is the only one when waiters come.
    first = items.spawn("run")
    second = None
    answers: list[bool] = []
    lock = threading.Lock()
    stop = threading.Event()

    def one(i: int) -> None:
        with writer_and_waiter(items.database_url) as (conn, waiter):
            while not stop.is_set():
                conn.execute("UPDATE items SET title = %s WHERE id = %s", (f"t{i}", i))
                conn.commit()
                answer = waiter.wait(alias, "30 s")
                found = search_ids(items, alias, [str(i)]) if answer.ok else set()
                with lock:
                    answers.append(answer.ok and found == {str(i)})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, 11)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: len(answers) >= 20, what="waiters answered by the first worker")
        second = items.spawn("run")
        wait_for(
            lambda: items.sql("SELECT count(*) FROM indexsync.workers")[0][0] == 2,
            what="two live workers",
        )
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        before = len(answers)
        wait_for(lambda: len(answers) >= before + 40, timeout=60, what="answers after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=30)
    assert all(answers), f"{answers.count(False)} of {len(answers)} waits failed"


def test_the_cli_twin_waits_for_everything_committed_before_it(
    items: Env, worker: list[str]
) -> None:
    alias = items.alias("items")
    items.sql("UPDATE items SET title = 'from the cli' WHERE id = 9")
    result = items.cli("wait", alias, "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert search_ids(items, alias, ["9"]) == {"9"}
    hits = items.http.request(
        "POST", f"/{alias}/_search", body={"query": {"match": {"title": "cli"}}}
    )
    assert [h["_id"] for h in hits["hits"]["hits"]] == ["9"]


def test_the_cli_twin_fails_naming_the_index_and_why(items: Env) -> None:
    alias = items.alias("items")
    items.sql("UPDATE items SET title = 'nobody syncs this' WHERE id = 9")
    result = items.cli("wait", "--timeout", "0.5")
    assert result.returncode == 1
    assert alias in result.stderr and "no indexsync worker" in result.stderr
    unknown = items.cli("wait", "nope")
    assert unknown.returncode == 2
    assert "nope" in unknown.stderr


def test_status_shows_each_index_freshness(items: Env) -> None:
    items.sql("UPDATE items SET title = 'stale' WHERE id = 2")
    items.sql("UPDATE indexsync.outbox SET created_at = now() - interval '42 seconds'")
    report: dict[str, Any] = json.loads(items.cli("status", "--json").stdout)
    (row,) = [r for r in report["indexes"] if r["index"] == items.alias("items")]
    assert row["freshness_seconds"] >= 42
    assert "freshness" in items.cli("status").stdout
