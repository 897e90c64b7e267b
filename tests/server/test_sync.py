"""Live sync: every kind of change reaches the index with the right content."""

from __future__ import annotations

import json
import signal
import time

import psycopg
import pytest

from tests.support.env import EXPECTED_POSTS, POSTS, Env, running, wait_for


@pytest.fixture
def posts(each_capture: Env) -> Env:
    """A posts table bound to the `posts` index with a `where` filter, installed.

    Every test runs with both capture modes: row-level and statement-level triggers.
    """
    env = each_capture
    env.sql(POSTS)
    env.bindings(
        f"""
        [indexes.{env.alias("posts")}]
        table = "public.posts"
        where = "deleted_at IS NULL"
        """
    )
    env.install()
    return env


def test_insert_update_delete_reach_the_index(posts: Env) -> None:
    posts.sql(
        "INSERT INTO posts (id, title, tags, meta) "
        "VALUES (1, 'one', '{a,b}', '{\"k\": 1}'), (2, 'two', NULL, NULL)"
    )
    posts.sync()
    assert posts.docs("posts") == posts.expected(EXPECTED_POSTS)
    assert posts.docs("posts")["1"]["tags"] == ["a", "b"]

    posts.sql("UPDATE posts SET title = 'uno', views = 7 WHERE id = 1")
    posts.sql("DELETE FROM posts WHERE id = 2")
    posts.sync()
    docs = posts.docs("posts")
    assert docs == posts.expected(EXPECTED_POSTS)
    assert docs["1"]["title"] == "uno" and "2" not in docs


def test_upserts_merge_and_copy_reach_the_index(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    posts.sql(
        "INSERT INTO posts (id, title) VALUES (1, 'uno'), (4, 'four') "
        "ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title"
    )
    posts.sql(
        "MERGE INTO posts p USING (VALUES (2, 'dos'), (3, NULL), (5, 'five')) AS v (id, title) "
        "ON p.id = v.id "
        "WHEN MATCHED AND v.title IS NULL THEN DELETE "
        "WHEN MATCHED THEN UPDATE SET title = v.title "
        "WHEN NOT MATCHED THEN INSERT (id, title) VALUES (v.id, v.title)"
    )
    with (
        psycopg.connect(posts.database_url) as conn,
        conn.cursor() as cur,
        cur.copy("COPY posts (id, title) FROM STDIN") as copy,
    ):
        copy.write_row((6, "copied"))
    posts.sync()
    docs = posts.docs("posts")
    assert docs == posts.expected(EXPECTED_POSTS)
    assert {k: v["title"] for k, v in docs.items()} == {
        "1": "uno",
        "2": "dos",
        "4": "four",
        "5": "five",
        "6": "copied",
    }


def test_the_document_is_postgres_own_json(posts: Env) -> None:
    posts.sql(
        "INSERT INTO posts (id, title, body) "
        "VALUES (1, 'quote \" and é and \\ and \n', repeat('x', 20000))"
    )
    posts.sync()
    assert posts.docs("posts") == posts.expected(EXPECTED_POSTS)
    assert posts.docs("posts")["1"]["published_at"] == "2026-01-02T03:04:05+00:00"


def test_an_update_moves_a_row_out_of_where_and_back_in(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) VALUES (1, 'one'), (2, 'two')")
    posts.sync()
    posts.sql("UPDATE posts SET deleted_at = now() WHERE id = 1")
    posts.sync()
    assert set(posts.docs("posts")) == {"2"}
    posts.sql("UPDATE posts SET deleted_at = NULL, title = 'back' WHERE id = 1")
    posts.sync()
    assert posts.docs("posts") == posts.expected(EXPECTED_POSTS)
    assert posts.docs("posts")["1"]["title"] == "back"


def test_a_key_change_removes_the_old_id_and_writes_the_new_one(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) VALUES (1, 'one')")
    posts.sync()
    posts.sql("UPDATE posts SET id = 10 WHERE id = 1")
    posts.sync()
    assert posts.docs("posts") == posts.expected(EXPECTED_POSTS)
    assert set(posts.docs("posts")) == {"10"}


def test_many_updates_of_one_row_in_one_transaction_end_in_the_last_state(posts: Env) -> None:
    statements = ["BEGIN", "INSERT INTO posts (id, title) VALUES (1, 'v0')"]
    statements += [
        f"UPDATE posts SET title = 'v{i}', views = {i} WHERE id = 1" for i in range(1, 200)
    ]
    statements.append("COMMIT")
    posts.sql(";".join(statements))
    (newest_change,) = posts.sql("SELECT max(seq) FROM indexsync.outbox")[0]
    totals = posts.sync()
    assert totals.changes == 200
    assert posts.docs("posts") == posts.expected(EXPECTED_POSTS)
    assert posts.docs("posts")["1"]["title"] == "v199"
    # The document carries a version above every change of it, so any older write is refused.
    assert posts.versions("posts")["1"] > newest_change


def test_a_multi_row_statement_syncs_every_row(posts: Env) -> None:
    posts.sql(
        "INSERT INTO posts (id, title) SELECT g, 'post ' || g FROM generate_series(1, 2500) g"
    )
    posts.sync(batch_size=300)
    assert posts.docs("posts") == posts.expected(EXPECTED_POSTS)
    posts.sql("UPDATE posts SET views = id * 2 WHERE id % 2 = 0")
    posts.sql("DELETE FROM posts WHERE id % 5 = 0")
    posts.sync(batch_size=300)
    docs = posts.docs("posts")
    assert len(docs) == 2000
    assert docs == posts.expected(EXPECTED_POSTS)


@pytest.mark.parametrize("bulk_concurrency", [1, 2])
def test_a_backlog_of_many_batches_drains_whatever_the_bulk_concurrency(
    posts: Env, bulk_concurrency: int
) -> None:
    # One bulk slot means no parallel lanes: the drain must still loop until the outbox
    # is empty, or `run --until-idle` exits with a backlog left behind.
    posts.sql(
        "INSERT INTO posts (id, title) SELECT g, 'post ' || g FROM generate_series(1, 1000) g"
    )
    totals = posts.sync(batch_size=150, bulk_concurrency=bulk_concurrency)
    assert totals.changes == 1000
    assert posts.sql("SELECT count(*) FROM indexsync.outbox") == [(0,)]
    assert posts.docs("posts") == posts.expected(EXPECTED_POSTS)


def test_truncate_empties_the_index_but_keeps_later_rows(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) SELECT g, 't' FROM generate_series(1, 50) g")
    posts.sync()
    assert len(posts.docs("posts")) == 50
    posts.sql("TRUNCATE posts; INSERT INTO posts (id, title) VALUES (7, 'after')")
    posts.sync()
    assert posts.docs("posts") == posts.expected(EXPECTED_POSTS)
    assert set(posts.docs("posts")) == {"7"}


def test_a_truncate_that_lands_after_a_later_insert_keeps_that_row(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) SELECT g, 't' FROM generate_series(1, 5) g")
    posts.sync()
    posts.sql("TRUNCATE posts")
    posts.sql("INSERT INTO posts (id, title) VALUES (7, 'after')")
    # Another worker (here: a plain session) holds the marker, so the insert lands first,
    # at a smaller version than the batch that later handles the marker.
    with psycopg.connect(posts.database_url) as holder:
        holder.execute("SELECT 1 FROM indexsync.outbox WHERE kind = 't' FOR UPDATE")
        posts.sync()
        assert "7" in posts.docs("posts")
    posts.sync()
    assert posts.sql("SELECT count(*) FROM indexsync.outbox") == [(0,)]
    assert posts.docs("posts") == posts.expected(EXPECTED_POSTS)
    assert set(posts.docs("posts")) == {"7"}


# Every name a capture function could look up, shadowed by one that fails loudly.
SHADOWS = """
CREATE SCHEMA shadow;
CREATE FUNCTION shadow.hijacked(text, text) RETURNS boolean LANGUAGE plpgsql
    AS $$BEGIN RAISE EXCEPTION 'hijacked'; END$$;
CREATE OPERATOR shadow.= (LEFTARG = text, RIGHTARG = text, FUNCTION = shadow.hijacked);
CREATE OPERATOR shadow.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = shadow.hijacked);
CREATE FUNCTION shadow.pg_notify(text, text) RETURNS void LANGUAGE plpgsql
    AS $$BEGIN RAISE EXCEPTION 'hijacked'; END$$;
CREATE DOMAIN shadow.text AS pg_catalog.text CHECK (false);
CREATE TABLE shadow.outbox (LIKE indexsync.outbox);
"""


def test_the_callers_search_path_cannot_steer_the_capture_function(posts: Env) -> None:
    posts.sql(SHADOWS)
    with psycopg.connect(posts.database_url, autocommit=True) as conn:
        # pg_catalog listed after the caller's schema: its names no longer come first.
        conn.execute("SET search_path = shadow, pg_catalog, public")
        conn.execute("INSERT INTO public.posts (id, title) VALUES (1, 'a'), (2, 'b')")
        conn.execute("UPDATE public.posts SET id = 3 WHERE id = 2")
        conn.execute("DELETE FROM public.posts WHERE id = 1")
    assert posts.sql("SELECT count(*) FROM shadow.outbox") == [(0,)]
    assert sorted(posts.sql("SELECT doc_id FROM indexsync.outbox")) == [
        ("1",),
        ("1",),
        ("2",),
        ("2",),
        ("3",),
    ]
    posts.sync()
    assert set(posts.docs("posts")) == {"3"}


def test_a_rolled_back_transaction_leaves_no_trace(posts: Env) -> None:
    posts.sql("BEGIN; INSERT INTO posts (id, title) VALUES (1, 'ghost'); ROLLBACK")
    assert posts.sql("SELECT count(*) FROM indexsync.outbox") == [(0,)]
    posts.sync()
    assert posts.docs("posts") == {}


def test_changes_made_while_no_worker_runs_are_synced_when_one_starts(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'offline' FROM generate_series(1, 300) g")
    posts.sql("UPDATE posts SET deleted_at = now() WHERE id <= 10")
    with running(posts) as log:
        wait_for(lambda: posts.docs("posts") == posts.expected(EXPECTED_POSTS), timeout=30)
        # And live changes keep flowing while it runs (a poll finds them).
        posts.sql("INSERT INTO posts (id, title) VALUES (1000, 'live')")
        wait_for(lambda: "1000" in posts.docs("posts"), timeout=15)
    events = [json.loads(line)["event"] for line in log[0].splitlines() if line.startswith("{")]
    assert "worker.signal" in events and events[-1] == "worker.stopped"


def test_sigterm_during_a_backlog_finishes_the_batch_and_loses_nothing(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'x' FROM generate_series(1, 20000) g")
    worker = posts.spawn("run", INDEXSYNC_BATCH_SIZE="200")
    wait_for(
        lambda: posts.sql("SELECT count(*) < 20000 FROM indexsync.outbox")[0][0],
        timeout=30,
        interval=0.02,
    )
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    (left,) = posts.sql("SELECT count(*) FROM indexsync.outbox")[0]
    # Every claimed change either landed or went back to the outbox.
    assert len(posts.docs("posts")) + left >= 20000
    posts.sync()
    assert posts.docs("posts") == posts.expected(EXPECTED_POSTS)


def test_with_notify_an_idle_worker_wakes_long_before_its_poll(posts: Env) -> None:
    posts.overrides["notify"] = "true"
    posts.install()
    assert "pg_notify" in posts.cli("install", "--print-sql").stdout
    with running(posts, INDEXSYNC_POLL_INTERVAL="600"):
        posts.sql("INSERT INTO posts (id, title) VALUES (1, 'first')")
        wait_for(lambda: "1" in posts.docs("posts"), timeout=20)
        posts.sql("INSERT INTO posts (id, title) VALUES (2, 'woken')")
        wait_for(lambda: "2" in posts.docs("posts"), timeout=20)


def test_without_notify_the_worker_polls(env: Env) -> None:
    env.overrides["notify"] = "false"
    env.sql(POSTS)
    env.bindings(f'[indexes.{env.alias("posts")}]\ntable = "posts"\n')
    env.install()
    assert "pg_notify" not in env.cli("install", "--print-sql").stdout
    worker = env.spawn("run")
    try:
        env.sql("INSERT INTO posts (id, title) VALUES (1, 'polled')")
        wait_for(lambda: "1" in env.docs("posts"), timeout=15)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    assert worker.returncode == 0


def test_a_stale_write_never_overwrites_a_newer_document(posts: Env) -> None:
    from indexsync.bulk import Op
    from indexsync.search import Outcome

    posts.sql("INSERT INTO posts (id, title) VALUES (1, 'old')")
    posts.sync()
    old_version = posts.versions("posts")["1"]
    posts.sql("UPDATE posts SET title = 'new' WHERE id = 1")
    posts.sync()
    # A worker that read the row before the update wakes up late and sends what it read.
    late = Op(
        posts.alias("posts"),
        posts.alias("posts"),
        "1",
        old_version,
        '{"id": 1, "title": "old"}',
        True,
    )
    late_delete = Op(posts.alias("posts"), posts.alias("posts"), "1", old_version, None)
    results = posts.searcher.bulk(late.encode() + late_delete.encode())
    assert [r.outcome for r in results] == [Outcome.DONE, Outcome.DONE]
    assert [r.status for r in results] == [409, 409]
    assert posts.docs("posts")["1"]["title"] == "new"


def test_a_deleted_document_is_not_resurrected_by_a_late_write(posts: Env) -> None:
    from indexsync.bulk import Op

    posts.sql("INSERT INTO posts (id, title) VALUES (1, 'doomed')")
    posts.sync()
    old_version = posts.versions("posts")["1"]
    posts.sql("DELETE FROM posts WHERE id = 1")
    posts.sync()
    late = Op(posts.alias("posts"), posts.alias("posts"), "1", old_version, '{"id": 1}', True)
    (result,) = posts.searcher.bulk(late.encode())
    assert result.status == 409
    assert posts.docs("posts") == {}


@pytest.mark.parametrize(
    ("key_type", "values"),
    [
        ("integer", ["1", "2", "-3"]),
        ("bigint", ["9007199254740993", "2"]),
        ("uuid", ["2b6f0cc9-04c4-4bd4-9d6b-1f0f3f9b1e01", "00000000-0000-0000-0000-000000000000"]),
        ("text", ["plain", "with space", 'quote"s', "slash/and?query", "日本語"]),
    ],
)
def test_primary_keys_of_common_types_become_the_id(
    env: Env, key_type: str, values: list[str]
) -> None:
    env.sql(f"CREATE TABLE things (k {key_type} PRIMARY KEY, label text)")
    env.bindings(f'[indexes.{env.alias("things")}]\ntable = "things"\n')
    env.install()
    for value in values:
        env.sql("INSERT INTO things VALUES (%s, 'x')", (value,))
    env.sync()
    assert set(env.docs("things")) == set(values)
    env.sql("DELETE FROM things WHERE k = %s", (values[0],))
    env.sync()
    assert set(env.docs("things")) == set(values[1:])


def test_a_column_list_cuts_the_document(env: Env) -> None:
    env.sql(POSTS)
    env.bindings(f'[indexes.{env.alias("posts")}]\ntable = "posts"\ncolumns = ["id", "title"]\n')
    env.install()
    env.sql("INSERT INTO posts (id, title, body) VALUES (1, 't', 'secret body')")
    env.sync()
    assert env.docs("posts") == {"1": {"id": 1, "title": "t"}}


def test_existing_rows_are_backfilled_at_install(env: Env) -> None:
    env.sql(POSTS)
    env.sql(
        "INSERT INTO posts (id, title) SELECT g, 'before install' FROM generate_series(1, 100) g"
    )
    env.bindings(f'[indexes.{env.alias("posts")}]\ntable = "posts"\n')
    result = env.install()
    assert "running workers write them" in result.stdout
    env.sync()
    assert len(env.docs("posts")) == 100


TRIGGERS = """
SELECT t.tgname, (t.tgtype & 1) = 1 AS per_row, t.tgoldtable, t.tgnewtable
FROM pg_trigger t WHERE t.tgrelid = 'public.posts'::regclass AND NOT t.tgisinternal
ORDER BY t.tgname
"""


def test_a_statement_that_changes_no_row_queues_nothing(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) VALUES (1, 'a')")
    posts.sql("TRUNCATE indexsync.outbox")
    posts.sql("UPDATE posts SET views = views + 1 WHERE id = 42")
    posts.sql("DELETE FROM posts WHERE id = 42")
    posts.sql("INSERT INTO posts (id, title) SELECT 1, 'dup' WHERE false")
    assert posts.sql("SELECT count(*) FROM indexsync.outbox") == [(0,)]


def test_switching_the_capture_mode_converges_the_triggers(env: Env) -> None:
    env.sql(POSTS)
    env.bindings(f'[indexes.{env.alias("posts")}]\ntable = "public.posts"\n')
    env.install()
    per_row = env.sql(TRIGGERS)
    assert [row[1:] for row in per_row] == [(True, None, None), (False, None, None)]

    env.overrides["capture"] = "statement"
    env.install()
    per_statement = env.sql(TRIGGERS)
    # INSERT, UPDATE and DELETE each get their own trigger with transition tables, since
    # PostgreSQL allows transition tables only on single-event triggers; TRUNCATE is kept.
    assert {row[1:] for row in per_statement} == {
        (False, None, "indexsync_new"),
        (False, "indexsync_old", "indexsync_new"),
        (False, "indexsync_old", None),
        (False, None, None),
    }
    assert per_row[1] in per_statement
    assert "nothing to change" in env.install().stdout
    assert env.cli("check").returncode == 0

    env.sql("INSERT INTO posts (id, title) SELECT g, 'p' FROM generate_series(1, 50) g")
    env.sql("UPDATE posts SET id = id + 1000 WHERE id <= 10")
    env.sync()
    assert env.docs("posts") == env.expected("SELECT id, to_jsonb(p) FROM posts p")

    env.overrides["capture"] = "row"
    env.install()
    assert env.sql(TRIGGERS) == per_row


FUNCTIONS = (
    "SELECT p.proname, md5(p.prosrc), p.xmin::text FROM pg_proc p "
    "WHERE pronamespace = 'indexsync'::regnamespace ORDER BY 1"
)


def test_install_twice_changes_nothing_the_second_time(posts: Env) -> None:
    before = posts.sql(FUNCTIONS)
    triggers = posts.sql(
        "SELECT tgname, xmin::text FROM pg_trigger WHERE tgname LIKE 'indexsync%' ORDER BY 1"
    )
    second = posts.install()
    assert "nothing to change" in second.stdout
    assert posts.sql(FUNCTIONS) == before
    assert (
        posts.sql(
            "SELECT tgname, xmin::text FROM pg_trigger WHERE tgname LIKE 'indexsync%' ORDER BY 1"
        )
        == triggers
    )
    assert set(posts.searcher.alias_targets(posts.alias("posts"))) == {posts.alias("posts") + "-1"}


def test_print_sql_is_the_ddl_that_install_applies(env: Env) -> None:
    env.sql(POSTS)
    env.bindings(f'[indexes.{env.alias("posts")}]\ntable = "posts"\n')
    ddl = env.cli("install", "--print-sql")
    assert ddl.returncode == 0, ddl.stderr
    assert env.sql("SELECT to_regnamespace('indexsync')") == [(None,)], (
        "print-sql must not change anything"
    )
    env.sql(ddl.stdout)
    env.sql("INSERT INTO posts (id, title) VALUES (1, 'x')")
    assert env.sql("SELECT index_name, doc_id FROM indexsync.outbox") == [(env.alias("posts"), "1")]
    # The indexes are still missing, so check reports that and only that.
    check = env.cli("check")
    assert check.returncode == 1
    assert "capture" not in check.stdout.split("FAILED", 1)[1]
    assert "does not exist on the search server" in check.stdout


def test_check_passes_after_install(posts: Env) -> None:
    result = posts.cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_uninstall_removes_triggers_and_schema_but_keeps_the_index(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) VALUES (1, 'kept')")
    posts.sync()
    result = posts.cli("uninstall", "--yes")
    assert result.returncode == 0, result.stderr
    assert posts.sql("SELECT to_regnamespace('indexsync')") == [(None,)]
    assert posts.sql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'indexsync%'") == [(0,)]
    posts.sql("INSERT INTO posts (id, title) VALUES (2, 'writes still work')")
    assert set(posts.docs("posts")) == {"1"}


def test_status_reports_backlog_and_lag(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'x' FROM generate_series(1, 5) g")
    time.sleep(0.2)
    result = posts.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["indexes"]
    assert row["index"] == posts.alias("posts") and row["backlog"] == 5
    # The lag counts from the oldest pending change, inserted 0.2 s before.
    lag = row["oldest_pending_seconds"]
    assert lag is not None and lag >= 0.2
    posts.sync()
    after = posts.cli("status", "--json")
    assert after.returncode == 0
    (row,) = json.loads(after.stdout)["indexes"]
    assert row["backlog"] == 0 and row["oldest_pending_seconds"] is None
    assert row["last_success_at"] is not None and row["healthy"] is True
    assert posts.alias("posts") in posts.cli("status").stdout


def test_status_exits_1_when_the_backlog_is_stalled(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) VALUES (1, 'x')")
    time.sleep(1.2)
    result = posts.cli("status", INDEXSYNC_STALL_SECONDS="1", INDEXSYNC_HEALTH_INTERVAL="0.5")
    assert result.returncode == 1
    assert "is a worker running?" in result.stdout
