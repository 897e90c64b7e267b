"""An `_id` is a function of the row alone: writers' and workers' session settings never
change it, for any key type whose text depends on a setting.

The application's sessions below run in other time zones, date and interval styles, float
precision and bytea output than the worker; every write must still reach its document,
every update replace it, and every delete remove it.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.support.env import Env

# Every setting that changes the text of some key type, set unlike the worker's.
APP_SESSION = (
    "SET TimeZone = 'Europe/London'; SET DateStyle = 'SQL, DMY'; "
    "SET IntervalStyle = 'sql_standard'; SET extra_float_digits = 0; "
    "SET bytea_output = 'escape'"
)

KEYS = {
    "timestamptz": ("timestamptz", "'2024-07-01 12:00+00'::timestamptz + g * interval '1 hour'"),
    "date": ("date", "date '2024-07-01' + g"),
    "timestamp": ("timestamp", "timestamp '2024-07-01 12:00' + g * interval '1 minute'"),
    "interval": ("interval", "g * interval '1 day 2 hours'"),
    "float8": ("float8", "g / 3.0::float8"),
    "bytea": ("bytea", "decode(lpad(to_hex(g), 4, '0'), 'hex')"),
}


def app_writes(env: Env, statements: list[str]) -> None:
    """Run statements in one application session with other settings than the worker's."""
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(APP_SESSION)
        for statement in statements:
            conn.execute(statement)


def verify_clean(env: Env) -> None:
    result = env.cli("verify")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", list(KEYS))
def test_a_single_column_key_gets_the_same_id_from_any_session(
    each_capture: Env, kind: str
) -> None:
    env = each_capture
    type_, value = KEYS[kind]
    env.sql(f"CREATE TABLE k (id {type_} PRIMARY KEY, n int NOT NULL)")
    env.bindings(f'[indexes.{env.alias("k")}]\ntable = "k"\n')
    env.install("--wait")
    app_writes(
        env,
        [
            f"INSERT INTO k SELECT {value}, g FROM generate_series(1, 20) g",
            "DELETE FROM k WHERE n > 15",
            "UPDATE k SET n = n * 10 WHERE n <= 5",
        ],
    )
    env.sync()
    docs = env.docs("k")
    assert len(docs) == 15
    assert sorted(doc["n"] for doc in docs.values()) == sorted(
        [n * 10 for n in range(1, 6)] + list(range(6, 16))
    )
    verify_clean(env)


def test_a_partitioned_table_keyed_by_time_syncs_writes_from_another_time_zone(
    each_capture: Env,
) -> None:
    env = each_capture
    env.sql(
        "CREATE TABLE payments (payment_id int, payment_date timestamptz, amount numeric(5,2),"
        " PRIMARY KEY (payment_date, payment_id)) PARTITION BY RANGE (payment_date);"
        "CREATE TABLE payments_2024 PARTITION OF payments"
        " FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
    )
    env.bindings(f'[indexes.{env.alias("payments")}]\ntable = "public.payments"\n')
    env.install("--wait")
    app_writes(
        env,
        [
            "INSERT INTO payments VALUES (1, '2024-07-01 12:00+00', 4.99)",
            "INSERT INTO payments VALUES (2, '2024-07-01 13:00+00', 1.99)",
            "INSERT INTO payments VALUES (3, '2024-12-31 23:30+00', 2.99)",
            "UPDATE payments SET amount = 9.99 WHERE payment_id = 2",
            "DELETE FROM payments WHERE payment_id = 3",
        ],
    )
    env.sync()
    docs = env.docs("payments")
    assert docs == {
        '["2024-07-01T12:00:00+00:00", 1]': {
            "payment_id": 1,
            "payment_date": "2024-07-01T12:00:00+00:00",
            "amount": 4.99,
        },
        '["2024-07-01T13:00:00+00:00", 2]': {
            "payment_id": 2,
            "payment_date": "2024-07-01T13:00:00+00:00",
            "amount": 9.99,
        },
    }
    verify_clean(env)


def test_workers_on_differently_configured_hosts_write_identical_documents(env: Env) -> None:
    env.sql("CREATE TABLE ev (id int PRIMARY KEY, at timestamptz, took interval, x float8)")
    env.sql(
        "INSERT INTO ev SELECT g, '2024-07-01 12:00+00', g * interval '90 minutes', g / 7.0 "
        "FROM generate_series(1, 10) g"
    )
    env.bindings(f'[indexes.{env.alias("ev")}]\ntable = "ev"\n')
    env.install("--wait")
    first = env.docs("ev")
    # A host whose libpq sends another time zone and date style (PGTZ, PGDATESTYLE).
    env.sql("UPDATE ev SET id = id")  # a no-op update is not captured; requeue by hand
    env.sql("INSERT INTO indexsync.outbox (index_name, doc_id) SELECT %s, id::text FROM ev",
            (env.alias("ev"),))  # fmt: skip
    result = env.cli("run", "--until-idle", PGTZ="Asia/Kolkata", PGDATESTYLE="German")
    assert result.returncode == 0, result.stderr
    assert env.docs("ev") == first
    assert first["1"]["at"] == "2024-07-01T12:00:00+00:00"
