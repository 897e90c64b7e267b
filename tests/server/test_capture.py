"""Capture records only the UPDATEs an index can see, and never holds back a migration."""

from __future__ import annotations

import pytest

from tests.support.env import Env

POSTS = """
CREATE TABLE posts (
    id bigint PRIMARY KEY,
    title text NOT NULL,
    views integer NOT NULL DEFAULT 0,
    touched_at timestamptz NOT NULL DEFAULT now(),
    published boolean NOT NULL DEFAULT true,
    meta json
);
INSERT INTO posts (id, title) SELECT g, 'post ' || g FROM generate_series(1, 3) g;
"""


def queued(env: Env) -> list[str]:
    """The document ids waiting in the outbox, in order."""
    return [str(r[0]) for r in env.sql("SELECT doc_id FROM indexsync.outbox ORDER BY seq")]


def drained(env: Env) -> None:
    """Sync, so the outbox starts empty."""
    env.sync()
    assert queued(env) == []


def test_a_binding_with_columns_records_only_updates_of_what_its_documents_read(
    env: Env,
) -> None:
    env.sql(POSTS)
    env.bindings(
        f"""
        [indexes.{env.alias("posts")}]
        table = "posts"
        columns = ["id", "title"]
        where = "published"
        """
    )
    env.install()
    drained(env)
    env.sql("UPDATE posts SET views = views + 1, touched_at = now() WHERE id = 1")
    env.sql("UPDATE posts SET title = title WHERE id = 1")
    env.sql("UPDATE posts SET meta = '{\"a\": 1}' WHERE id = 1")
    assert queued(env) == []
    env.sql("UPDATE posts SET title = 'renamed' WHERE id = 2")
    # `where` reads `published`: hiding a post must reach the index.
    env.sql("UPDATE posts SET published = false WHERE id = 3")
    # A key change is always seen, under both ids.
    env.sql("UPDATE posts SET id = 10 WHERE id = 1")
    assert queued(env) == ["2", "3", "10", "1"]
    env.sync()
    assert env.docs("posts") == {
        "2": {"id": 2, "title": "renamed"},
        "10": {"id": 10, "title": "post 1"},
    }


def test_a_binding_of_the_whole_row_skips_updates_that_change_nothing(env: Env) -> None:
    env.sql(POSTS)
    env.bindings(f'[indexes.{env.alias("posts")}]\ntable = "posts"\n')
    env.install()
    drained(env)
    # json has no equality operator; the binary image of the row still tells.
    env.sql("UPDATE posts SET meta = '{\"a\": 1}' WHERE id = 1")
    drained(env)
    env.sql("UPDATE posts SET title = title, meta = meta WHERE id = 1")
    assert queued(env) == []
    env.sql("UPDATE posts SET views = 5 WHERE id = 1")
    assert queued(env) == ["1"]
    env.sync()
    assert env.docs("posts")["1"]["views"] == 5


def test_a_query_binding_records_every_update_unless_it_declares_its_root_columns(
    env: Env,
) -> None:
    env.sql(POSTS)
    query = "SELECT p.id, jsonb_build_object('title', p.title) AS doc FROM posts p"
    env.bindings(
        f"""
        [indexes.{env.alias("every")}]
        table = "posts"
        query = "{query}"

        [indexes.{env.alias("declared")}]
        table = "posts"
        query = "{query}"
        root_columns = ["title"]
        """
    )
    env.install()
    drained(env)
    env.sql("UPDATE posts SET views = 7 WHERE id = 1")
    assert env.sql("SELECT index_name, doc_id FROM indexsync.outbox") == [(env.alias("every"), "1")]
    drained(env)
    env.sql("UPDATE posts SET title = 'new' WHERE id = 1")
    assert sorted(env.sql("SELECT index_name FROM indexsync.outbox")) == sorted(
        [(env.alias("every"),), (env.alias("declared"),)]
    )
    env.sync()
    assert env.docs("declared")["1"] == {"title": "new"}


def test_root_columns_needs_a_query_and_must_exist(env: Env) -> None:
    env.sql(POSTS)
    env.bindings(f'[indexes.{env.alias("posts")}]\ntable = "posts"\nroot_columns = ["title"]\n')
    result = env.cli("check")
    assert result.returncode != 0
    assert "'root_columns' only goes with 'query'" in result.stdout + result.stderr
    env.bindings(
        f"""
        [indexes.{env.alias("posts")}]
        table = "posts"
        query = "SELECT p.id, to_jsonb(p) AS doc FROM posts p"
        root_columns = ["title", "nope"]
        """
    )
    result = env.cli("install")
    assert result.returncode != 0
    assert "'nope'" in result.stderr and "root_columns" in result.stderr


@pytest.mark.parametrize(
    ("where", "unrelated_update"),
    [
        # A function given the whole row may read any column: every change counts.
        ("pg_catalog.length(posts::text) > 0", "UPDATE posts SET views = 9 WHERE id = 1"),
        # Columns read inside a subquery of the condition count too.
        (
            "EXISTS (SELECT 1 WHERE posts.views < 100)",
            "UPDATE posts SET views = 100 WHERE id = 1",
        ),
    ],
)
def test_a_where_that_reads_more_than_it_names_is_never_missed(
    env: Env, where: str, unrelated_update: str
) -> None:
    env.sql(POSTS)
    env.bindings(
        f"""
        [indexes.{env.alias("posts")}]
        table = "posts"
        columns = ["id", "title"]
        where = "{where}"
        """
    )
    env.install()
    drained(env)
    env.sql(unrelated_update)
    assert queued(env) == ["1"]
    env.sync()
    assert env.cli("verify").returncode == 0


def test_watched_columns_can_still_be_dropped_or_retyped_by_a_migration(env: Env) -> None:
    env.sql(POSTS)
    env.bindings(
        f"""
        [indexes.{env.alias("posts")}]
        table = "posts"
        columns = ["id", "title", "views"]
        where = "published"
        """
    )
    env.install()
    drained(env)
    # Neither the trigger's WHEN clause nor its function names a column: no dependency.
    env.sql("ALTER TABLE posts ALTER COLUMN views TYPE bigint")
    env.sql("ALTER TABLE posts DROP COLUMN title")
    # Application writes keep working; a change of a column still listed is still seen.
    env.sql("UPDATE posts SET views = 3 WHERE id = 2")
    env.sql("UPDATE posts SET touched_at = now() WHERE id = 3")
    assert queued(env) == ["2"]


def test_a_watched_virtual_generated_column_is_seen_through_its_base_columns(env: Env) -> None:
    # PostgreSQL 18: inside a row trigger a VIRTUAL column reads as NULL in OLD and NEW.
    if env.sql("SHOW server_version_num")[0][0] < "180000":
        pytest.skip("virtual generated columns need PostgreSQL 18")
    env.sql(
        "CREATE TABLE film (film_id int PRIMARY KEY, title text, length smallint, "
        "length_hours numeric(4,2) GENERATED ALWAYS AS (round(length / 60.0, 2)) VIRTUAL)"
    )
    env.sql("INSERT INTO film VALUES (1, 'a', 90), (2, 'b', 100)")
    env.bindings(
        f'[indexes.{env.alias("film")}]\ntable = "film"\n'
        'columns = ["film_id", "title", "length_hours"]\n'
    )
    env.install("--wait")
    env.sql("UPDATE film SET length = 120 WHERE film_id = 1")
    assert env.sql("SELECT count(*) FROM indexsync.outbox")[0][0] == 1
    env.sync()
    assert env.docs("film")["1"]["length_hours"] == 2.0
    assert env.cli("verify").returncode == 0
