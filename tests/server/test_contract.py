"""The outside contract: bad input is refused clearly, with exit code 2 and nothing half-applied."""

from __future__ import annotations

import pytest

from tests.support.env import Env

TABLE = "CREATE TABLE items (id integer PRIMARY KEY, title text, attrs jsonb NOT NULL DEFAULT '{}')"


def assert_nothing_installed(env: Env, alias: str) -> None:
    assert env.sql("SELECT to_regnamespace('indexsync')") == [(None,)]
    assert env.sql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'indexsync%'") == [(0,)]
    assert not env.searcher.exists(f"{alias}-1")
    assert not bool(env.searcher.alias_targets(alias))


@pytest.fixture
def items(env: Env) -> Env:
    env.sql(TABLE)
    return env


@pytest.mark.parametrize(
    ("bindings", "expected"),
    [
        (
            'table = "public.nope"',
            ["indexsync.toml", "[indexes.items]", "'table'", "does not exist"],
        ),
        (
            'table = "items"\ncolumns = ["id", "colour"]',
            ["[indexes.items]", "'columns'", "'colour'"],
        ),
        ('table = "items"\ncolour = "red"', ["[indexes.items]", "colour", "unknown key"]),
        ('table = "items"\ncolumns = "id"', ["[indexes.items]", "columns"]),
        (
            'table = "items"\nwhere = "no_such_column > 1"',
            ["[indexes.items]", "'where'", "no_such_column"],
        ),
        ('table = "items"\nwhere = "true; DROP TABLE items"', ["[indexes.items]", "'where'"]),
        ('table = "items; DROP TABLE items"', ["[indexes.items]", "'table'"]),
    ],
)
def test_bad_bindings_are_refused_naming_file_index_and_key(
    items: Env, bindings: str, expected: list[str]
) -> None:
    items.bindings(f"[indexes.{items.alias('items')}]\n{bindings}\n")
    result = items.cli("install")
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.replace(items.alias("items"), "items")
    for fragment in expected:
        assert fragment in message
    assert "Traceback" not in result.stderr
    assert items.sql("SELECT to_regclass('items') IS NOT NULL") == [(True,)]
    assert_nothing_installed(items, items.alias("items"))


def test_a_table_without_primary_key_is_refused(env: Env) -> None:
    env.sql("CREATE TABLE logs (line text)")
    env.bindings(f'[indexes.{env.alias("logs")}]\ntable = "logs"\n')
    result = env.cli("install")
    assert result.returncode == 2
    assert "no primary key" in result.stderr and "'table'" in result.stderr
    assert_nothing_installed(env, env.alias("logs"))


def test_invalid_toml_is_refused(items: Env) -> None:
    items.bindings("[indexes.items\ntable = ")
    result = items.cli("install")
    assert result.returncode == 2
    assert "indexsync.toml" in result.stderr and "invalid TOML" in result.stderr


def test_a_bad_alias_is_refused(items: Env) -> None:
    items.bindings('[indexes.Items]\ntable = "items"\n')
    result = items.cli("check")
    assert result.returncode == 2
    assert "[indexes.Items]" in result.stderr and "lowercase" in result.stderr


def test_invalid_mapping_json_is_refused(items: Env) -> None:
    items.bindings(f'[indexes.{items.alias("items")}]\ntable = "items"\n')
    items.mapping("items", '{"mappings": {')
    result = items.cli("install")
    assert result.returncode == 2
    assert f"{items.alias('items')}.json" in result.stderr and "invalid JSON" in result.stderr
    assert_nothing_installed(items, items.alias("items"))


def test_a_mapping_the_server_rejects_is_refused_and_nothing_is_left(items: Env) -> None:
    items.sql("CREATE TABLE other (id integer PRIMARY KEY)")
    items.bindings(
        f'[indexes.{items.alias("other")}]\ntable = "other"\n'
        f'[indexes.{items.alias("items")}]\ntable = "items"\n'
    )
    items.mapping("items", {"mappings": {"properties": {"title": {"type": "no_such_type"}}}})
    result = items.cli("install")
    assert result.returncode == 2, result.stderr
    assert f"{items.alias('items')}.json" in result.stderr
    # The other index was created first, then removed again with everything else.
    assert_nothing_installed(items, items.alias("items"))
    assert not items.searcher.alias_targets(items.alias("other"))
    assert not items.searcher.exists(items.alias("other") + "-1")


def test_an_alias_that_collides_with_a_physical_index_is_refused(items: Env) -> None:
    items.searcher.create_index(items.alias("items"), {})
    items.bindings(f'[indexes.{items.alias("items")}]\ntable = "items"\n')
    result = items.cli("install")
    assert result.returncode == 2
    assert "existing physical index" in result.stderr
    assert items.sql("SELECT to_regnamespace('indexsync')") == [(None,)]


def test_an_unreachable_database_fails_fast_without_leaking_the_password(items: Env) -> None:
    items.bindings(f'[indexes.{items.alias("items")}]\ntable = "items"\n')
    # A hang would raise subprocess.TimeoutExpired: the failure must come, not just be right.
    result = items.cli(
        "install",
        timeout=30,
        INDEXSYNC_DATABASE_URL="postgresql://admin:hunter2-secret@127.0.0.1:1/db",
    )
    assert result.returncode == 2
    assert "cannot connect to PostgreSQL" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_an_unreachable_search_server_fails_fast_without_leaking_secrets(items: Env) -> None:
    items.bindings(f'[indexes.{items.alias("items")}]\ntable = "items"\n')
    result = items.cli(
        "install",
        INDEXSYNC_ELASTICSEARCH_URL="http://127.0.0.1:1",
        INDEXSYNC_ELASTICSEARCH_USERNAME="elastic",
        INDEXSYNC_ELASTICSEARCH_PASSWORD="es-pass-secret",
    )
    assert result.returncode == 2
    assert "cannot reach the search server" in result.stderr
    assert "es-pass-secret" not in result.stderr + result.stdout
    assert items.sql("SELECT to_regnamespace('indexsync')") == [(None,)]


def test_settings_of_the_wrong_type_name_the_variable(items: Env) -> None:
    items.bindings(f'[indexes.{items.alias("items")}]\ntable = "items"\n')
    result = items.cli("check", INDEXSYNC_BATCH_SIZE="lots")
    assert result.returncode == 2
    assert "INDEXSYNC_BATCH_SIZE" in result.stderr


def test_a_missing_database_url_is_a_usage_error(items: Env) -> None:
    items.bindings(f'[indexes.{items.alias("items")}]\ntable = "items"\n')
    env = items.env_vars()
    del env["INDEXSYNC_DATABASE_URL"]
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "indexsync", "check"],
        env=env,
        capture_output=True,
        text=True,
        cwd=items.workdir,
        timeout=60,
    )
    assert result.returncode == 2
    assert "INDEXSYNC_DATABASE_URL" in result.stderr


def test_a_document_the_server_rejects_is_dead_lettered_and_retried_after_the_fix(
    items: Env,
) -> None:
    alias = items.alias("items")
    items.bindings(f'[indexes.{alias}]\ntable = "items"\n')
    items.mapping(
        "items",
        {
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "id": {"type": "integer"},
                    "title": {"type": "text"},
                    "attrs": {"type": "object", "dynamic": "strict", "properties": {}},
                },
            }
        },
    )
    items.install()
    items.sql("INSERT INTO items (id, title) SELECT g, 'fine' FROM generate_series(1, 20) g")
    items.sql("""INSERT INTO items (id, title, attrs) VALUES (99, 'bad', '{"colour": "red"}')""")
    items.sync()
    assert set(items.docs("items")) == {str(i) for i in range(1, 21)}
    assert items.sql("SELECT count(*) FROM indexsync.outbox") == [(0,)]
    letters = items.sql(
        "SELECT index_name, doc_id, status, error_type, reason FROM indexsync.dead_letters"
    )
    assert len(letters) == 1
    index_name, doc_id, status, error_type, reason = letters[0]
    assert (index_name, doc_id, status) == (alias, "99", 400)
    assert "strict" in error_type and "colour" in reason
    listing = items.cli("deadletters")
    assert "99" in listing.stdout and "strict" in listing.stdout
    unhealthy = items.cli("status")
    assert unhealthy.returncode == 1 and "1 dead letter(s)" in unhealthy.stdout

    items.http.request(
        "PUT",
        f"/{alias}/_mapping",
        body={
            "properties": {
                "attrs": {"type": "object", "properties": {"colour": {"type": "keyword"}}}
            }
        },
    )
    retried = items.cli("deadletters", "retry", "--index", alias)
    assert retried.returncode == 0 and "re-queued 1" in retried.stdout
    items.sync()
    assert items.docs("items")["99"]["attrs"] == {"colour": "red"}
    assert items.sql("SELECT count(*) FROM indexsync.dead_letters") == [(0,)]


def test_a_dropped_index_stops_the_worker_with_a_configuration_error(items: Env) -> None:
    alias = items.alias("items")
    items.bindings(f'[indexes.{alias}]\ntable = "items"\n')
    items.install()
    items.searcher.delete_index(f"{alias}-1")
    items.sql("INSERT INTO items (id, title) VALUES (1, 'x')")
    result = items.cli("run", timeout=30)
    assert result.returncode == 2
    assert "run `indexsync install`" in result.stderr
    # Nothing was lost: the change waits in the outbox.
    assert items.sql("SELECT count(*) FROM indexsync.outbox") == [(1,)]


def test_quoted_capitalised_spaced_and_non_ascii_identifiers_work(env: Env) -> None:
    env.sql(
        'CREATE SCHEMA "Ünïcode Schema";'
        'CREATE TABLE "Ünïcode Schema"."Odd ""Name"" Tab" ('
        '  "Key ID" integer PRIMARY KEY, "Title Ç" text, "select" text, "x;DROP" text)'
    )
    alias = env.alias("odd")
    env.bindings(
        f"[indexes.{alias}]\n"
        'table = \'"Ünïcode Schema"."Odd ""Name"" Tab"\'\n'
        'columns = ["Key ID", "Title Ç", "select", "x;DROP"]\n'
        "where = '\"Title Ç\" IS NOT NULL'\n"
    )
    env.install()
    env.sql(
        'INSERT INTO "Ünïcode Schema"."Odd ""Name"" Tab" '
        "VALUES (1, 'é', 's', 'd'), (2, NULL, 's', 'd')"
    )
    env.sync()
    assert env.docs("odd") == {"1": {"Key ID": 1, "Title Ç": "é", "select": "s", "x;DROP": "d"}}
    env.sql('UPDATE "Ünïcode Schema"."Odd ""Name"" Tab" SET "Key ID" = 3 WHERE "Key ID" = 1')
    env.sync()
    assert set(env.docs("odd")) == {"3"}
    assert env.cli("verify").returncode == 0


def test_secrets_never_appear_in_logs_or_errors(items: Env) -> None:
    alias = items.alias("items")
    items.bindings(f'[indexes.{alias}]\ntable = "items"\n')
    items.install()
    items.sql("INSERT INTO items (id, title) VALUES (1, 'x')")
    # Embedded PostgreSQL trusts local connections, so a password in the URL is accepted
    # and carried through every connection the worker makes.
    url = psycopg_url_with_password(items.database_url, "pg-secret-password")
    secrets = {
        "INDEXSYNC_DATABASE_URL": url,
        "INDEXSYNC_ELASTICSEARCH_API_KEY": "es-secret-api-key",
    }
    outputs = []
    for args in (("--debug", "run", "--until-idle"), ("--debug", "status"), ("check",)):
        result = items.cli(*args, **secrets)
        outputs.append(result.stdout + result.stderr)
    # And the failure paths: a database that refuses, a search server that is down.
    for extra in (
        {"INDEXSYNC_DATABASE_URL": url.replace("127.0.0.1", "127.0.0.1:1", 1)},
        {"INDEXSYNC_ELASTICSEARCH_URL": "http://127.0.0.1:1"},
    ):
        result = items.cli("--debug", "run", "--until-idle", **{**secrets, **extra})
        assert result.returncode == 2
        outputs.append(result.stdout + result.stderr)
    text = "\n".join(outputs)
    assert "batch.done" in text  # the worker really ran and logged
    assert "pg-secret-password" not in text
    assert "es-secret-api-key" not in text


def psycopg_url_with_password(url: str, password: str) -> str:
    import psycopg

    return psycopg.conninfo.make_conninfo(url, password=password)


def test_a_dependency_that_cannot_name_a_composite_key_is_refused_clearly(env: Env) -> None:
    env.sql("CREATE TABLE pairs (a integer, b integer, PRIMARY KEY (a, b))")
    env.sql("CREATE TABLE links (id int PRIMARY KEY, a integer, b integer)")
    env.bindings(
        f"""
        [indexes.{env.alias("pairs")}]
        table = "pairs"

        [[indexes.{env.alias("pairs")}.depends]]
        table = "links"
        key = "a"
        """
    )
    result = env.cli("install")
    assert result.returncode == 2
    assert "'depends[1].key'" in result.stderr
    assert "names 1 column(s), but the key of public.pairs has 2 (a, b)" in result.stderr
    assert_nothing_installed(env, env.alias("pairs"))
