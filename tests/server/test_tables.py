"""Production tables: poison rows, broken bindings, composite keys, partitions, user SQL with %."""

from __future__ import annotations

import json
import random
import threading
import time

import psycopg
import pytest

from tests.support.env import Env, running, wait_for

ORDERS = """
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    code text NOT NULL,
    qty integer NOT NULL DEFAULT 1,
    archived boolean NOT NULL DEFAULT false
);
CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL);
"""


def dead_letters(env: Env) -> list[tuple[str, str, str | None]]:
    """(index, doc_id, sqlstate) of every dead letter."""
    return [
        (str(r[0]), str(r[1]), r[2])
        for r in env.sql(
            "SELECT index_name, doc_id, sqlstate FROM indexsync.dead_letters ORDER BY doc_id"
        )
    ]


def test_rows_whose_document_query_fails_are_dead_lettered_and_the_rest_land(env: Env) -> None:
    env.sql(ORDERS)
    env.bindings(
        f"""
        [indexes.{env.alias("orders")}]
        table = "orders"
        query = "SELECT o.id, jsonb_build_object('code', o.code::int) AS doc FROM orders o"
        """
    )
    env.install("--no-backfill")
    env.sql(
        "INSERT INTO orders (id, code) SELECT g, CASE WHEN g % 29 = 0 THEN 'n/a' ELSE g::text END "
        "FROM generate_series(1, 400) g"
    )
    env.sync()
    docs = env.docs("orders")
    bad = {str(i) for i in range(1, 401) if i % 29 == 0}
    assert set(docs) == {str(i) for i in range(1, 401)} - bad
    letters = dead_letters(env)
    assert {d for _, d, _ in letters} == bad
    assert {state for _, _, state in letters} == {"22P02"}
    listed = env.cli("deadletters")
    assert "invalid input syntax for type integer" in listed.stdout
    assert "SQLSTATE 22P02" in listed.stdout
    # A later change to a bad row retries it: fixed, it lands and its letter goes.
    env.sql("UPDATE orders SET code = '7' WHERE id = 29")
    env.sync()
    assert env.docs("orders")["29"] == {"code": 7}
    assert "29" not in {d for _, d, _ in dead_letters(env)}


def test_a_binding_broken_at_run_time_stops_only_its_own_index_until_mended(env: Env) -> None:
    env.sql(ORDERS)
    env.bindings(
        f"""
        [indexes.{env.alias("orders")}]
        table = "orders"
        where = "NOT archived"

        [indexes.{env.alias("notes")}]
        table = "notes"
        """
    )
    env.install()
    with running(env) as log:
        env.sql("INSERT INTO orders (id, code) VALUES (1, 'a')")
        wait_for(lambda: "1" in env.docs("orders"), what="first order indexed")
        env.sql("ALTER TABLE orders DROP COLUMN archived")
        env.sql("INSERT INTO orders (id, code) SELECT g, 'x' FROM generate_series(2, 50) g")
        env.sql("INSERT INTO notes (id, body) SELECT g, 'n' FROM generate_series(1, 200) g")
        wait_for(lambda: len(env.docs("notes")) == 200, what="the other index keeps syncing")
        status = env.cli("status", "--json")
        assert status.returncode == 1
        rows = {row["index"]: row for row in json.loads(status.stdout)["indexes"]}
        reason = rows[env.alias("orders")]["paused_reason"]
        assert "archived" in reason and "does not exist" in reason
        assert rows[env.alias("notes")]["paused_reason"] is None
        # The 49 inserts wait (and the first order too, when the refresh that the dropped
        # column starts queued it before the binding paused).
        assert rows[env.alias("orders")]["backlog"] in (49, 50)
        assert dead_letters(env) == []
        # Mended: the column comes back, and the index catches up with no manual step.
        env.sql("ALTER TABLE orders ADD COLUMN archived boolean NOT NULL DEFAULT false")
        wait_for(lambda: len(env.docs("orders")) == 50, what="the mended index catches up")
        assert env.cli("status").returncode == 0
    events = [json.loads(line)["event"] for line in log[0].splitlines() if line.startswith("{")]
    assert "binding.paused" in events and "binding.resumed" in events
    assert dead_letters(env) == []


def test_a_worker_starts_when_one_binding_is_already_broken(env: Env) -> None:
    env.sql(ORDERS)
    env.bindings(
        f"""
        [indexes.{env.alias("orders")}]
        table = "orders"
        where = "NOT archived"

        [indexes.{env.alias("notes")}]
        table = "notes"
        """
    )
    env.install()
    env.sql("ALTER TABLE orders DROP COLUMN archived")
    env.sql("INSERT INTO orders (id, code) VALUES (1, 'a')")
    env.sql("INSERT INTO notes (id, body) VALUES (1, 'n')")
    with running(env):
        wait_for(lambda: "1" in env.docs("notes"), what="the healthy index syncs")
        assert env.docs("orders") == {}
    assert env.sql("SELECT count(*) FROM indexsync.outbox")[0][0] == 1


def test_percent_signs_in_where_query_and_depends_sql_are_plain_sql(env: Env) -> None:
    env.sql(ORDERS)
    env.bindings(
        f"""
        [indexes.{env.alias("orders")}]
        table = "orders"
        where = "code LIKE 'a%' AND id % 2 = 0"
        query = '''SELECT o.id, jsonb_build_object('code', o.code, 'odd', o.qty % 2) AS doc
                   FROM orders o'''

        [[indexes.{env.alias("orders")}.depends]]
        table = "notes"
        sql = "SELECT n.id FROM notes n WHERE n.id = ANY(%(keys)s) AND n.body NOT LIKE '%skip%'"
        """
    )
    env.install()
    env.sql(
        "INSERT INTO orders (id, code, qty) VALUES (1, 'ab', 3), (2, 'ab', 3), (4, 'b', 1), "
        "(6, 'a%', 4)"
    )
    env.sql("INSERT INTO notes (id, body) VALUES (2, 'keep'), (6, 'skip me')")
    env.sync()
    assert env.docs("orders") == {"2": {"code": "ab", "odd": 1}, "6": {"code": "a%", "odd": 0}}


def test_a_column_added_later_never_reaches_a_binding_that_lists_its_columns(env: Env) -> None:
    env.sql(ORDERS)
    env.bindings(f'[indexes.{env.alias("orders")}]\ntable = "orders"\ncolumns = ["id", "code"]\n')
    env.install()
    with running(env):
        env.sql("INSERT INTO orders (id, code) VALUES (1, 'a')")
        wait_for(lambda: env.docs("orders") == {"1": {"id": 1, "code": "a"}}, what="indexed")
        env.sql("ALTER TABLE orders ADD COLUMN secret text DEFAULT 'hash'")
        env.sql("INSERT INTO orders (id, code) VALUES (2, 'b')")
        env.sql("UPDATE orders SET code = 'c' WHERE id = 1")
        wait_for(
            lambda: (
                env.docs("orders") == {"1": {"id": 1, "code": "c"}, "2": {"id": 2, "code": "b"}}
            ),
            what="documents without the new column",
        )
        # A listed column dropped by a migration falls out of the documents; nothing stops.
        env.sql("ALTER TABLE orders DROP COLUMN code")
        env.sql("INSERT INTO orders (id) VALUES (3)")
        # Rows that did not change are refreshed to the new shape in the background.
        wait_for(
            lambda: env.docs("orders") == {str(i): {"id": i} for i in (1, 2, 3)},
            what="every document in the new shape",
        )
    assert env.cli("verify").returncode == 0


TENANT_USERS = """
CREATE TABLE tenant_users (
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    name text NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
"""


def test_a_composite_key_becomes_a_json_array_id_that_cannot_collide(each_capture: Env) -> None:
    env = each_capture
    env.sql(TENANT_USERS)
    env.bindings(f'[indexes.{env.alias("users")}]\ntable = "tenant_users"\n')
    env.sql("INSERT INTO tenant_users VALUES ('a-b', 'c', 'first'), ('a', 'b-c', 'second')")
    env.install()
    env.sync()
    docs = env.docs("users")
    assert set(docs) == {'["a-b", "c"]', '["a", "b-c"]'}
    assert docs['["a", "b-c"]']["name"] == "second"
    # A key change in either column moves the document; a tenant move too.
    env.sql("UPDATE tenant_users SET user_id = 'z' WHERE tenant_id = 'a-b'")
    env.sql("UPDATE tenant_users SET tenant_id = 'other' WHERE user_id = 'b-c'")
    env.sql("INSERT INTO tenant_users VALUES ('t\"q', 'ü', 'quoted')")
    env.sync()
    assert set(env.docs("users")) == {'["a-b", "z"]', '["other", "b-c"]', '["t\\"q", "ü"]'}
    env.sql("DELETE FROM tenant_users WHERE tenant_id = 'other'")
    env.sync()
    assert set(env.docs("users")) == {'["a-b", "z"]', '["t\\"q", "ü"]'}
    assert env.cli("verify").returncode == 0


def test_composite_keys_work_with_query_depends_reindex_and_verify(env: Env) -> None:
    env.sql(
        """
        CREATE TABLE accounts (tenant int, id int, name text, PRIMARY KEY (tenant, id));
        CREATE TABLE tags (id serial PRIMARY KEY, tenant int, account int, tag text);
        """
    )
    env.bindings(
        f"""
        [indexes.{env.alias("accounts")}]
        table = "accounts"
        query = '''
            SELECT a.tenant, a.id, jsonb_build_object(
                'name', a.name,
                'tags', (SELECT coalesce(jsonb_agg(t.tag ORDER BY t.tag), '[]') FROM tags t
                         WHERE t.tenant = a.tenant AND t.account = a.id)) AS doc
            FROM accounts a'''

        [[indexes.{env.alias("accounts")}.depends]]
        table = "tags"
        key = ["tenant", "account"]
        """
    )
    env.sql("INSERT INTO accounts SELECT g % 3, g, 'n' || g FROM generate_series(1, 30) g")
    env.install()
    env.sync()
    assert len(env.docs("accounts")) == 30
    env.sql("INSERT INTO tags (tenant, account, tag) VALUES (1, 1, 'x'), (1, 1, 'a')")
    env.sync()
    assert env.docs("accounts")["[1, 1]"] == {"name": "n1", "tags": ["a", "x"]}
    # Moving a tag to another account re-indexes both.
    env.sql("UPDATE tags SET tenant = 2, account = 2 WHERE tag = 'x'")
    env.sync()
    docs = env.docs("accounts")
    assert docs["[1, 1]"]["tags"] == ["a"] and docs["[2, 2]"]["tags"] == ["x"]
    reindex = env.cli("reindex", "--chunk-size", "7")
    assert reindex.returncode == 0, reindex.stderr
    assert len(env.docs("accounts")) == 30
    assert env.cli("verify").returncode == 0
    env.sql("DELETE FROM accounts WHERE id = 5")
    env.put_doc("accounts", "[9, 99]", {"name": "planted"})
    env.put_doc("accounts", "not json", {"name": "planted"})
    assert env.cli("verify").returncode == 1
    repaired = env.cli("verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert len(env.docs("accounts")) == 29


def test_a_list_partitioned_table_with_a_composite_key_moves_rows_between_partitions(
    each_capture: Env,
) -> None:
    env = each_capture
    env.sql(
        """
        CREATE TABLE events (
            region text NOT NULL, id bigint NOT NULL, payload text,
            PRIMARY KEY (region, id)
        ) PARTITION BY LIST (region);
        CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
        CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
        """
    )
    env.bindings(f'[indexes.{env.alias("events")}]\ntable = "events"\n')
    env.sql("INSERT INTO events SELECT 'eu', g, 'p' FROM generate_series(1, 20) g")
    env.install()
    env.sql("CREATE TABLE events_ap PARTITION OF events FOR VALUES IN ('ap')")
    env.sql("INSERT INTO events SELECT 'ap', g, 'late' FROM generate_series(1, 5) g")
    env.sql("UPDATE events SET region = 'us' WHERE id <= 10 AND region = 'eu'")
    env.sync()
    docs = env.docs("events")
    expected = {f'["{r}", {i}]' for r, i in env.sql("SELECT region, id FROM events")}
    assert set(docs) == expected and len(expected) == 25
    assert env.cli("verify").returncode == 0


def test_a_range_partitioned_table_keeps_rows_moving_between_partitions(env: Env) -> None:
    env.sql(
        """
        CREATE TABLE readings (id bigint PRIMARY KEY, v int) PARTITION BY RANGE (id);
        CREATE TABLE readings_1 PARTITION OF readings FOR VALUES FROM (0) TO (100);
        CREATE TABLE readings_2 PARTITION OF readings FOR VALUES FROM (100) TO (200);
        """
    )
    env.bindings(f'[indexes.{env.alias("readings")}]\ntable = "readings"\n')
    env.install()
    env.sql("INSERT INTO readings SELECT g, g FROM generate_series(0, 150) g")
    env.sql("CREATE TABLE readings_3 PARTITION OF readings FOR VALUES FROM (200) TO (300)")
    env.sql("UPDATE readings SET id = id + 150 WHERE id BETWEEN 90 AND 120")
    env.sync()
    assert set(env.docs("readings")) == {str(r[0]) for r in env.sql("SELECT id FROM readings")}
    # Detaching or dropping a partition fires no row trigger: verify --repair mends it.
    env.sql("ALTER TABLE readings DETACH PARTITION readings_1")
    assert env.cli("verify").returncode == 1
    repaired = env.cli("verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert set(env.docs("readings")) == {str(r[0]) for r in env.sql("SELECT id FROM readings")}
    time.sleep(0)


@pytest.mark.proxy
def test_install_backfills_a_big_table_lock_free_and_a_killed_backfill_resumes(env: Env) -> None:
    if env.search.proxy is None:
        pytest.skip("slowing the backfill down needs the fault proxy")
    env.sql(ORDERS)
    env.sql("INSERT INTO orders (id, code) SELECT g, 'c' || g FROM generate_series(1, 30000) g")
    env.bindings(f'[indexes.{env.alias("orders")}]\ntable = "orders"\n')
    # install itself is short: the triggers, the index, and the backfill recorded.
    installed = env.install()
    assert "running workers write them" in installed.stdout
    assert env.sql("SELECT count(*) FROM indexsync.outbox")[0][0] == 0
    env.search.proxy.faults.latency_s = 0.2
    worker = env.spawn("run")
    try:
        wait_for(
            lambda: env.sql("SELECT coalesce(max(rows_done), 0) FROM indexsync.rebuilds")[0][0],
            what="the backfill writing pages",
        )
        # Mid-backfill: the triggers capture, and nothing holds a lock a writer waits for.
        locks = env.sql(
            "SELECT l.mode FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE a.application_name LIKE 'indexsync:%' "
            "AND l.relation = 'public.orders'::regclass"
        )
        assert {mode for (mode,) in locks} <= {"AccessShareLock"}
        with psycopg.connect(env.database_url, autocommit=True) as writer:
            writer.execute("SET lock_timeout = '500ms'")
            writer.execute("UPDATE orders SET code = 'during' WHERE id = 29999")
            writer.execute("INSERT INTO orders (id, code) VALUES (30001, 'new')")
        status = json.loads(env.cli("status", "--json").stdout)
        (row,) = status["indexes"]
        assert row["rebuild_rows_total"] == 30001 or row["rebuild_rows_total"] == 30000
    finally:
        worker.kill()
        worker.communicate()
    done_before = env.sql("SELECT rows_done FROM indexsync.rebuilds")[0][0]
    assert 0 < done_before < 30000
    env.search.proxy.faults.latency_s = 0.0
    env.sql("DELETE FROM orders WHERE id = 2")
    env.sync()  # a new worker resumes the backfill from its last page
    assert env.sql("SELECT count(*) FROM indexsync.rebuilds")[0][0] == 0
    expected = env.expected("SELECT id, to_jsonb(o) FROM orders o")
    assert env.docs("orders") == expected
    assert env.cli("verify").returncode == 0


def test_ddl_under_live_writes_ends_in_the_new_shape_with_no_manual_step(
    each_capture: Env,
) -> None:
    env = each_capture
    env.sql(ORDERS)
    env.sql("ALTER TABLE orders ALTER COLUMN code SET DEFAULT 'w'")
    env.sql("INSERT INTO orders (id) SELECT g FROM generate_series(1, 3000) g")
    env.bindings(
        f"""
        [indexes.{env.alias("orders")}]
        table = "orders"

        [indexes.{env.alias("narrow")}]
        table = "orders"
        columns = ["id", "code", "qty"]
        """
    )
    env.install()
    stop = threading.Event()
    written = [0]

    def write() -> None:
        rng = random.Random(7)
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            while not stop.is_set():
                i = rng.randint(1, 3500)
                conn.execute(
                    "INSERT INTO orders (id) VALUES (%s) "
                    "ON CONFLICT (id) DO UPDATE SET qty = orders.qty + 1",
                    (i,),
                )
                written[0] += 1

    writer = threading.Thread(target=write)
    with running(env, INDEXSYNC_REFRESH_RATE="20000"):
        writer.start()
        try:
            for ddl in (
                "ALTER TABLE orders ADD COLUMN channel text DEFAULT 'web'",
                "ALTER TABLE orders RENAME COLUMN code TO sku",
                "ALTER TABLE orders ALTER COLUMN qty TYPE numeric(12, 2)",
                "ALTER TABLE orders DROP COLUMN archived",
            ):
                time.sleep(0.5)
                env.sql(ddl)
            time.sleep(0.5)
        finally:
            stop.set()
            writer.join()
        whole = "SELECT id, to_jsonb(o) FROM orders o"
        narrow = "SELECT id, jsonb_build_object('id', id, 'qty', qty) FROM orders"
        wait_for(lambda: env.docs("orders") == env.expected(whole), 60, what="whole rows")
        wait_for(lambda: env.docs("narrow") == env.expected(narrow), 60, what="listed columns")
    assert written[0] > 0
    assert env.sql("SELECT count(*) FROM indexsync.dead_letters")[0][0] == 0
    assert env.cli("verify").returncode == 0


TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE everything (
    id serial PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
    num numeric, big numeric(40, 10), huge numeric,
    txt text, vc varchar(10), ch char(4), by bytea, bo boolean,
    d date, t time, tz timetz, ts timestamp, tstz timestamptz, iv interval,
    u uuid, j json, jb jsonb, arr int[], arr2 text[][],
    m mood, p positive, ip inet, net cidr, mac macaddr, r int4range,
    tv tsvector, bits bit(4), vbits varbit(8), cash money,
    gen bigint GENERATED ALWAYS AS (i8 * 2) STORED
);
"""

TYPE_ROW = """
INSERT INTO everything (
    i2, i4, i8, f4, f8, num, big, huge, txt, vc, ch, by, bo, d, t, tz, ts, tstz, iv, u, j, jb,
    arr, arr2, m, p, ip, net, mac, r, tv, bits, vbits, cash
) VALUES (
    -32768, 2147483647, 21, 1.5, 2.25, 12.345,
    123456789012345678901234567890.0123456789, 1e30, 'text ✓', 'short', 'ab', '\\xdeadbeef',
    true, '2026-12-01', '13:14:15.5', '13:14:15+02', '2026-12-01 13:14:15.123456',
    '2026-12-01 13:14:15+00', '1 year 2 mons 3 days 04:05:06', gen_random_uuid(),
    '{"a": [1, 2]}', '{"b": {"c": null}}', '{1,2,NULL}', '{{"a","b"},{"c","d"}}', 'happy',
    7, '192.168.1.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '[1,10)',
    'fat cat sat', B'1010', B'101', 12.34
), (
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL
)
"""


def test_every_common_type_reaches_the_document_as_postgres_renders_it(env: Env) -> None:
    env.sql(TYPES)
    env.sql(TYPE_ROW)
    env.bindings(f'[indexes.{env.alias("everything")}]\ntable = "everything"\n')
    # A dynamic mapping guesses `long` for a whole numeric, which 1e30 overflows: numerics
    # beyond 64 bits need a mapping (the README's type table says which).
    env.mapping(
        "everything",
        {"mappings": {"properties": {"big": {"type": "double"}, "huge": {"type": "double"}}}},
    )
    env.install()
    env.sql(TYPE_ROW)
    env.sql("UPDATE everything SET txt = 'changed', arr = '{}' WHERE id = 1")
    env.sync()
    expected = env.expected("SELECT id, to_jsonb(e) FROM everything e")
    assert len(expected) == 4
    assert env.docs("everything") == expected
    doc = env.docs("everything")["3"]
    assert doc["big"] == 123456789012345678901234567890.0123456789
    assert doc["cash"] == "$12.34" and doc["by"] == "\\xdeadbeef" and doc["gen"] == 42
    # Values JSON cannot hold are dead-lettered, naming the field; the rest goes on.
    env.sql("INSERT INTO everything (f8, txt) VALUES ('NaN', 'nan'), (1, 'fine')")
    env.sync()
    letters = env.sql("SELECT doc_id, reason FROM indexsync.dead_letters")
    assert [doc_id for doc_id, _ in letters] == ["5"]
    assert "6" in env.docs("everything")


def test_a_broken_binding_mended_by_editing_the_file_and_installing_resumes(env: Env) -> None:
    env.sql(ORDERS)
    env.bindings(f'[indexes.{env.alias("orders")}]\ntable = "orders"\nwhere = "NOT archived"\n')
    env.install()
    with running(env):
        env.sql("ALTER TABLE orders DROP COLUMN archived")
        env.sql("INSERT INTO orders (id, code) SELECT g, 'x' FROM generate_series(1, 40) g")
        wait_for(
            lambda: env.sql("SELECT count(*) FROM indexsync.binding_state "
                            "WHERE paused_reason IS NOT NULL")[0][0] == 1,
            what="the binding paused",
        )  # fmt: skip
        # The team edits the binding to the new schema and reruns install; no restart.
        env.bindings(f'[indexes.{env.alias("orders")}]\ntable = "orders"\nwhere = "qty > 0"\n')
        env.install()
        wait_for(lambda: len(env.docs("orders")) == 40, what="the mended binding catches up")
    assert env.cli("status").returncode == 0
    assert env.sql("SELECT count(*) FROM indexsync.dead_letters")[0][0] == 0


def test_a_backfill_leaves_to_live_sync_the_rows_it_has_written_since_install(env: Env) -> None:
    # A data import after install reaches the outbox: the backfill must not write it again.
    env.sql("CREATE TABLE imported (id int PRIMARY KEY, v text)")
    env.sql("INSERT INTO imported SELECT g, 'before' FROM generate_series(1, 100) g")
    env.bindings(f'[indexes.{env.alias("imported")}]\ntable = "imported"\n')
    env.install()
    env.sql("INSERT INTO imported SELECT g, 'imported' FROM generate_series(101, 3100) g")
    result = env.cli("run", "--until-idle")
    assert result.returncode == 0, result.stderr
    done = [json.loads(line) for line in result.stderr.splitlines() if '"backfill.done"' in line]
    assert len(done) == 1
    assert done[0]["rows"] == 3100
    assert done[0]["skipped"] == 3000, "live sync wrote the imported rows; the scan skips them"
    assert env.docs("imported") == env.expected("SELECT id, to_jsonb(t) FROM imported t")
