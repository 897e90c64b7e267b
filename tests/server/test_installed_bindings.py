"""Bindings installed under running workers: the database, not the file a worker read at
start, is the truth of what is installed, and no change is ever dropped on the way.

Each scenario runs a real `indexsync run` in a subprocess, changes the bindings file, runs
`indexsync install` beside it, and writes while that happens; nothing restarts the worker.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.env import Env, running, wait_for

TABLES = """
CREATE TABLE acc_a (id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE acc_b (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO acc_a SELECT g, 0 FROM generate_series(1, 100) g;
INSERT INTO acc_b SELECT g, 0 FROM generate_series(1, 200) g;
"""


def _binding(env: Env, name: str, body: str = "") -> str:
    return f'[indexes.{env.alias(name)}]\ntable = "public.{name}"\n{body}'


def _expected(env: Env, table: str, where: str = "true", columns: str = "id, v") -> dict:
    return env.expected(
        f"SELECT id, to_jsonb(t) FROM (SELECT {columns} FROM {table} t) t WHERE {where}"
    )


def _equal(env: Env, name: str, expected: dict) -> bool:
    return env.docs(name) == expected


@contextmanager
def writing(env: Env, tables: tuple[str, ...]) -> Iterator[list[int]]:
    """Single-row updates across `tables` until the block ends; yields the count so far."""
    stop = threading.Event()
    done = [0]

    def load() -> None:
        import psycopg

        with psycopg.connect(env.database_url, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                table = tables[n % len(tables)]
                conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (n % 100 + 1,))
                n += 1
                done[0] = n
                stop.wait(0.005)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join()


def test_a_binding_installed_under_a_running_worker_is_synced_and_backfilled(env: Env) -> None:
    env.sql(TABLES)
    env.bindings(_binding(env, "acc_a"))
    env.install("--wait")
    with running(env) as log:
        with writing(env, ("acc_a", "acc_b")) as done:
            wait_for(lambda: done[0] > 50, what="writes before the new binding")
            env.bindings(_binding(env, "acc_a") + "\n" + _binding(env, "acc_b"))
            result = env.install()
            assert "running workers write them" in result.stdout
            wait_for(lambda: done[0] > 600, timeout=60, what="600 writes across both tables")
        wait_for(
            lambda: (
                _equal(env, "acc_b", _expected(env, "acc_b"))
                and _equal(env, "acc_a", _expected(env, "acc_a"))
            ),
            timeout=60,
            what="both indexes equal to their tables, without a restart",
        )
        assert env.sql("SELECT count(*) FROM indexsync.outbox")[0][0] == 0
    events = [json.loads(line)["event"] for line in log[0].splitlines() if line.startswith("{")]
    assert "binding.adopted" in events
    assert "outbox.unbound_index" not in events


def test_a_changed_binding_is_adopted_and_its_documents_refreshed(env: Env) -> None:
    env.sql("CREATE TABLE acc (id int PRIMARY KEY, v int NOT NULL)")
    env.sql("INSERT INTO acc SELECT g, g FROM generate_series(1, 200) g")
    env.bindings(_binding(env, "acc", 'columns = ["id", "v"]'))
    env.install("--wait")
    with running(env):
        with writing(env, ("acc",)):
            env.sql("ALTER TABLE acc ADD COLUMN w text DEFAULT 'new'")
            env.bindings(_binding(env, "acc", 'columns = ["id", "v", "w"]\nwhere = "id <= 150"'))
            result = env.install()
            assert f"binding {env.alias('acc')!r} changed" in result.stdout
        wait_for(
            lambda: _equal(env, "acc", _expected(env, "acc", "id <= 150", "id, v, w")),
            timeout=60,
            what="every document in the new shape, and none outside the new where",
        )


def test_a_removed_binding_is_uninstalled_by_install_with_its_queued_changes(env: Env) -> None:
    env.sql(TABLES)
    env.bindings(_binding(env, "acc_a") + "\n" + _binding(env, "acc_b"))
    env.install("--wait", "--no-backfill")
    env.sql("UPDATE acc_b SET v = 7 WHERE id <= 5")
    env.bindings(_binding(env, "acc_a"))
    result = env.install()
    assert f"binding {env.alias('acc_b')!r} removed" in result.stdout
    assert "5 queued change(s)" in result.stdout
    assert env.sql("SELECT count(*) FROM indexsync.outbox")[0][0] == 0
    triggers = env.sql(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'acc_b'::regclass AND NOT tgisinternal"
    )
    assert triggers[0][0] == 0
    env.sql("UPDATE acc_b SET v = 8 WHERE id = 1")
    assert env.sql("SELECT count(*) FROM indexsync.outbox")[0][0] == 0


def test_a_change_for_an_index_no_worker_knows_stays_queued_and_status_says_so(
    env: Env,
) -> None:
    env.sql(TABLES)
    env.bindings(_binding(env, "acc_a"))
    env.install("--wait")
    env.sql("INSERT INTO indexsync.outbox (index_name, doc_id) VALUES ('ghost', '1')")
    env.sql("UPDATE acc_a SET v = 1 WHERE id = 1")
    result = env.cli("run", "--until-idle")
    assert result.returncode == 0, result.stderr
    assert env.sql("SELECT index_name FROM indexsync.outbox") == [("ghost",)]
    assert env.docs("acc_a")["1"]["v"] == 1
    status = env.cli("status", "--json")
    assert status.returncode == 1
    rows = {row["index"]: row for row in json.loads(status.stdout)["indexes"]}
    assert rows["ghost"]["backlog"] == 1
    assert "no binding is installed" in rows["ghost"]["problems"][0]
    assert rows[env.alias("acc_a")]["healthy"]


def test_a_worker_follows_the_installed_bindings_not_the_file(env: Env) -> None:
    env.sql(TABLES)
    env.bindings(_binding(env, "acc_a"))
    env.install("--wait")
    # An edit nobody installed: the worker warns and keeps syncing what is installed.
    env.bindings(_binding(env, "acc_b"))
    env.sql("UPDATE acc_a SET v = 3 WHERE id = 2")
    result = env.cli("run", "--until-idle")
    assert result.returncode == 0, result.stderr
    assert env.docs("acc_a")["2"]["v"] == 3
    assert "bindings.not_installed" in result.stderr
