"""An index belongs to one database: a second database pointed at the same cluster with the
same bindings is refused by every command that writes, until it deliberately takes over."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.support.env import Env

TABLE = "CREATE TABLE acc (id int PRIMARY KEY, v text NOT NULL)"


@pytest.fixture
def second(env: Env, pg_admin_url: str, template_db: str, tmp_path: Path) -> Iterator[Env]:
    """Another database (staging, a developer's copy) on the same search server."""
    name = f"indexsync_second_{os.getpid()}_{tmp_path.name[-12:]}".lower()
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    workdir = tmp_path / "second"
    workdir.mkdir()
    other = Env(psycopg.conninfo.make_conninfo(pg_admin_url, dbname=name), env.search, workdir)
    try:
        yield other
    finally:
        other.close()
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _setup(env: Env, rows: int) -> None:
    env.sql(TABLE)
    env.sql(
        f"INSERT INTO acc SELECT g, 'from ' || current_database() FROM generate_series(1, {rows}) g"
    )
    env.bindings(f'[indexes.{env.alias("acc")}]\ntable = "acc"\n')


def test_a_second_database_is_refused_by_every_command_and_the_first_index_is_untouched(
    env: Env, second: Env
) -> None:
    _setup(env, 200)
    env.install("--wait")
    before = env.docs("acc")
    assert len(before) == 200
    _setup(second, 1)

    refused = second.cli("install")
    assert refused.returncode == 2
    assert "mirrors database" in refused.stderr and "--take-over" in refused.stderr
    env_db = env.sql("SELECT current_database()")[0][0]
    second_db = second.sql("SELECT current_database()")[0][0]
    assert env_db in refused.stderr and second_db in refused.stderr
    # Nothing half-applied: no trigger, no installed binding.
    assert second.sql("SELECT to_regclass('indexsync.bindings') IS NULL")[0][0] or not second.sql(
        "SELECT * FROM indexsync.bindings"
    )
    triggers = (
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'acc'::regclass AND NOT tgisinternal"
    )
    assert second.sql(triggers)[0][0] == 0

    # Installed by hand (say --print-sql applied by a DBA), the rest must refuse as well.
    second.sql(second.cli("install", "--print-sql").stdout)
    for args in (("run", "--until-idle"), ("reindex", second.alias("acc")), ("verify", "--repair")):
        result = second.cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "mirrors database" in result.stderr, (args, result.stderr)
    check = second.cli("check")
    assert check.returncode != 0
    assert "mirrors database" in check.stdout

    assert env.docs("acc") == before


def test_take_over_hands_the_index_to_the_new_database_deliberately(env: Env, second: Env) -> None:
    _setup(env, 20)
    env.install("--wait")
    _setup(second, 3)
    taken = second.cli("install", "--take-over", "--wait")
    assert taken.returncode == 0, taken.stderr
    assert "took over index" in taken.stdout
    result = second.cli("reindex", second.alias("acc"))
    assert result.returncode == 0, result.stderr
    assert second.docs("acc") == second.expected("SELECT id, to_jsonb(a) FROM acc a")
    # Now the first database is the stranger.
    assert env.cli("run", "--until-idle").returncode == 2
