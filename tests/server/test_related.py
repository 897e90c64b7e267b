"""Documents built from related tables: a change in a child or lookup table re-indexes parents."""

from __future__ import annotations

import json
import random
import threading

import psycopg
import pytest

from tests.support.env import Env

SCHEMA = """
CREATE TABLE authors (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE tags (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE posts (
    id integer PRIMARY KEY,
    author_id integer REFERENCES authors (id) ON DELETE CASCADE,
    title text NOT NULL,
    draft boolean NOT NULL DEFAULT false
);
CREATE TABLE post_tags (
    id serial PRIMARY KEY,
    post_id integer NOT NULL,
    tag_id integer NOT NULL REFERENCES tags (id) ON DELETE CASCADE
);
"""

QUERY = """
SELECT p.id,
       jsonb_build_object(
           'title', p.title,
           'author', a.name,
           'tags', coalesce((SELECT jsonb_agg(t.name ORDER BY t.name)
                             FROM post_tags pt JOIN tags t ON t.id = pt.tag_id
                             WHERE pt.post_id = p.id), '[]')
       ) AS doc
FROM posts p JOIN authors a ON a.id = p.author_id
"""


def bindings(env: Env, *, watch: str = "") -> str:
    return f'''
[indexes.{env.alias("posts")}]
table = "public.posts"
where = "NOT draft"
query = """{QUERY}"""

[[indexes.{env.alias("posts")}.depends]]
table = "public.post_tags"
key = "post_id"

[[indexes.{env.alias("posts")}.depends]]
table = "public.authors"
sql = "SELECT id FROM posts WHERE author_id = ANY(%(keys)s)"
{watch}

[[indexes.{env.alias("posts")}.depends]]
table = "public.tags"
sql = "SELECT post_id FROM post_tags WHERE tag_id = ANY(%(keys)s)"
'''


EXPECTED = f"SELECT q.id, q.doc FROM ({QUERY}) q JOIN posts p ON p.id = q.id WHERE NOT p.draft"


@pytest.fixture
def blog(each_capture: Env) -> Env:
    """posts / authors / tags / post_tags with a query-built `posts` index, installed.

    Every test runs with both capture modes: row-level and statement-level triggers.
    """
    env = each_capture
    env.sql(SCHEMA)
    env.sql(
        "INSERT INTO authors VALUES (1, 'Ada'), (2, 'Grace');"
        "INSERT INTO tags VALUES (1, 'db'), (2, 'search'), (3, 'python');"
        "INSERT INTO posts (id, author_id, title) VALUES (10, 1, 'Outbox'), (11, 1, 'Versions'),"
        " (12, 2, 'Reindex');"
        "INSERT INTO post_tags (post_id, tag_id) VALUES (10, 1), (10, 2), (12, 3)"
    )
    env.bindings(bindings(env))
    env.install()
    env.sync()
    return env


def test_the_document_is_what_the_query_builds(blog: Env) -> None:
    docs = blog.docs("posts")
    assert docs == blog.expected(EXPECTED)
    assert docs["10"] == {"title": "Outbox", "author": "Ada", "tags": ["db", "search"]}


def test_adding_and_removing_a_tag_updates_the_post(blog: Env) -> None:
    blog.sql("INSERT INTO post_tags (post_id, tag_id) VALUES (11, 3)")
    blog.sync()
    assert blog.docs("posts")["11"]["tags"] == ["python"]
    blog.sql("DELETE FROM post_tags WHERE post_id = 10 AND tag_id = 1")
    blog.sync()
    assert blog.docs("posts")["10"]["tags"] == ["search"]
    assert blog.docs("posts") == blog.expected(EXPECTED)


def test_renaming_an_author_updates_every_post_by_that_author_with_one_outbox_row(
    blog: Env,
) -> None:
    blog.sql(
        "INSERT INTO posts (id, author_id, title) "
        "SELECT g, 1, 'bulk' FROM generate_series(100, 2099) g"
    )
    blog.sync()
    blog.sql("UPDATE authors SET name = 'Ada Lovelace' WHERE id = 1")
    # The writer paid for one outbox row, not one per post.
    assert blog.sql("SELECT kind, doc_id, source FROM indexsync.outbox") == [
        ("k", "1", "public.authors")
    ]
    blog.sync()
    docs = blog.docs("posts")
    assert sum(1 for d in docs.values() if d["author"] == "Ada Lovelace") == 2002
    assert docs["12"]["author"] == "Grace"
    assert docs == blog.expected(EXPECTED)


def test_renaming_a_tag_updates_the_posts_that_carry_it(blog: Env) -> None:
    blog.sql("UPDATE tags SET name = 'databases' WHERE id = 1")
    blog.sync()
    assert blog.docs("posts")["10"]["tags"] == ["databases", "search"]


def test_moving_a_post_tags_row_to_another_post_updates_both(blog: Env) -> None:
    blog.sql("UPDATE post_tags SET post_id = 11 WHERE post_id = 10 AND tag_id = 2")
    blog.sync()
    docs = blog.docs("posts")
    assert docs["10"]["tags"] == ["db"] and docs["11"]["tags"] == ["search"]
    assert docs == blog.expected(EXPECTED)


def test_deleting_an_author_behaves_as_the_query_says(blog: Env) -> None:
    # Without the cascade, posts of a deleted author drop out of the inner join.
    blog.sql("ALTER TABLE posts DROP CONSTRAINT posts_author_id_fkey")
    blog.sql("DELETE FROM authors WHERE id = 1")
    blog.sync()
    assert set(blog.docs("posts")) == {"12"}
    assert blog.docs("posts") == blog.expected(EXPECTED)


def test_where_still_applies_to_the_root_table(blog: Env) -> None:
    blog.sql("UPDATE posts SET draft = true WHERE id = 10")
    blog.sync()
    assert set(blog.docs("posts")) == {"11", "12"}


def test_watched_columns_make_unrelated_updates_free(each_capture: Env) -> None:
    # Transition tables cannot go with `UPDATE OF` column lists: a watching dependency
    # keeps its row-level trigger in both modes.
    env = each_capture
    env.sql(SCHEMA)
    env.sql("ALTER TABLE authors ADD COLUMN last_login timestamptz")
    env.sql("INSERT INTO authors VALUES (1, 'Ada'); INSERT INTO posts VALUES (10, 1, 'x')")
    env.bindings(bindings(env, watch='columns = ["name"]'))
    env.install()
    env.sync()
    env.sql("UPDATE authors SET last_login = now() WHERE id = 1")
    assert env.sql("SELECT count(*) FROM indexsync.outbox") == [(0,)]
    env.sql("UPDATE authors SET name = 'Ada L.' WHERE id = 1")
    assert env.sql("SELECT count(*) FROM indexsync.outbox") == [(1,)]


def test_per_statement_a_document_is_queued_once_per_statement(env: Env) -> None:
    env.overrides["capture"] = "statement"
    env.sql(SCHEMA)
    env.sql("INSERT INTO authors VALUES (1, 'Ada'); INSERT INTO tags VALUES (1, 'a'), (2, 'b')")
    env.sql("INSERT INTO posts (id, author_id, title) VALUES (10, 1, 'x'), (11, 1, 'y')")
    env.bindings(bindings(env))
    env.install()
    env.sync()
    # 200 tag rows for two posts, in one statement: one outbox row per post.
    env.sql(
        "INSERT INTO post_tags (post_id, tag_id) "
        "SELECT 10 + g % 2, 1 + g % 2 FROM generate_series(1, 200) g"
    )
    assert sorted(env.sql("SELECT doc_id FROM indexsync.outbox")) == [("10",), ("11",)]
    # Moving every tag of post 10 to post 11 touches both, once each.
    env.sync()
    env.sql("UPDATE post_tags SET post_id = 11 WHERE post_id = 10")
    assert sorted(env.sql("SELECT doc_id FROM indexsync.outbox")) == [("10",), ("11",)]
    env.sync()
    assert env.docs("posts") == env.expected(EXPECTED)
    assert env.docs("posts")["10"]["tags"] == []


def test_reindex_and_verify_work_for_query_based_indexes(blog: Env) -> None:
    blog.sql(
        "INSERT INTO posts (id, author_id, title) "
        "SELECT g, 2, 'more' FROM generate_series(200, 1500) g"
    )
    blog.sql("TRUNCATE indexsync.outbox")
    verify = blog.cli("verify", "--json")
    assert verify.returncode == 1
    (entry,) = json.loads(verify.stdout)["indexes"]
    assert entry["missing"] == 1301
    result = blog.cli("reindex", "--chunk-size", "300")
    assert result.returncode == 0, result.stderr
    assert blog.docs("posts") == blog.expected(EXPECTED)
    assert blog.cli("verify").returncode == 0


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("SELECT p.id FROM posts p", "must yield columns 'id' and 'doc'"),
        ("SELECT p.id, p.title AS document FROM posts p", "missing: doc"),
        ("SELECT id, doc FROM no_such_table", "the query fails"),
    ],
)
def test_a_bad_query_is_refused_by_check_and_install(env: Env, query: str, fragment: str) -> None:
    env.sql(SCHEMA)
    env.bindings(f'[indexes.{env.alias("posts")}]\ntable = "posts"\nquery = "{query}"\n')
    for command in ("check", "install"):
        result = env.cli(command)
        assert result.returncode == 2, result.stderr
        # check prints it in its checklist; install stops with it.
        said = result.stdout if command == "check" else result.stderr
        assert "key 'query'" in said and fragment in said
    assert env.sql("SELECT to_regnamespace('indexsync')") == [(None,)]


def test_a_bad_dependency_is_refused(env: Env) -> None:
    env.sql(SCHEMA)
    alias = env.alias("posts")
    env.bindings(
        f'[indexes.{alias}]\ntable = "posts"\n'
        'query = "SELECT id, to_jsonb(p) AS doc FROM posts p"\n'
        f'[[indexes.{alias}.depends]]\ntable = "authors"\n'
        'sql = "SELECT nope FROM posts WHERE author_id = ANY(%(keys)s)"\n'
    )
    result = env.cli("install")
    assert result.returncode == 2
    assert "depends[1].sql" in result.stderr
    env.bindings(
        f'[indexes.{alias}]\ntable = "posts"\n'
        f'[[indexes.{alias}.depends]]\ntable = "authors"\nkey = "id"\nsql = "SELECT 1"\n'
    )
    result = env.cli("install")
    assert result.returncode == 2 and "exactly one of 'key'" in result.stderr


def test_root_child_and_lookup_changes_under_concurrent_writers_leave_zero_drift(
    blog: Env,
) -> None:
    blog.sql(
        "INSERT INTO posts (id, author_id, title) "
        "SELECT g, 1 + g % 2, 't' FROM generate_series(20, 300) g"
    )
    blog.sql("INSERT INTO authors SELECT g, 'author ' || g FROM generate_series(3, 20) g")
    worker = blog.spawn("run")
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(blog.database_url, autocommit=True) as conn:
                while not stop.is_set():
                    post, author, tag = rng.randint(10, 300), rng.randint(1, 20), rng.randint(1, 3)
                    op = rng.random()
                    try:
                        if op < 0.3:
                            conn.execute(
                                "UPDATE posts SET title = %s, author_id = %s WHERE id = %s",
                                (f"t{rng.random():.4f}", author, post),
                            )
                        elif op < 0.5:
                            conn.execute(
                                "UPDATE authors SET name = %s WHERE id = %s",
                                (f"a{rng.random():.4f}", author),
                            )
                        elif op < 0.7:
                            conn.execute(
                                "INSERT INTO post_tags (post_id, tag_id) VALUES (%s, %s)",
                                (post, tag),
                            )
                        elif op < 0.8:
                            conn.execute(
                                "DELETE FROM post_tags WHERE id = "
                                "(SELECT min(id) FROM post_tags WHERE post_id = %s)",
                                (post,),
                            )
                        elif op < 0.9:
                            conn.execute(
                                "UPDATE tags SET name = %s WHERE id = %s",
                                (f"tag{rng.randint(0, 99)}", tag),
                            )
                        else:
                            with conn.transaction():
                                conn.execute(
                                    "UPDATE authors SET name = 'rolled back' WHERE id = %s",
                                    (author,),
                                )
                                conn.execute(
                                    "UPDATE posts SET title = 'rolled back' WHERE id = %s", (post,)
                                )
                                raise _Rollback
                    except _Rollback:
                        pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in (1, 2, 3)]
    for thread in threads:
        thread.start()
    try:
        stop.wait(6)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    try:
        from tests.support.env import wait_for

        wait_for(lambda: blog.sql("SELECT count(*) = 0 FROM indexsync.outbox")[0][0], timeout=60)
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
    assert not errors, errors
    assert blog.docs("posts") == blog.expected(EXPECTED)
    assert blog.cli("verify").returncode == 0


class _Rollback(Exception):
    pass


def test_check_warns_when_the_id_filter_cannot_reach_the_key_index(blog: Env) -> None:
    good = blog.cli("check")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "the query's id filter uses an index" in good.stdout and "WARNING" not in good.stdout
    # OFFSET 0 fences the subquery: the filter is applied after a full scan.
    blog.bindings(
        bindings(blog).replace(
            "JOIN authors a ON a.id = p.author_id", "JOIN authors a ON a.id = p.author_id OFFSET 0"
        )
    )
    blog.install()
    warned = blog.cli("check")
    assert warned.returncode == 0
    assert "WARNING" in warned.stdout and "cannot reach the key index" in warned.stdout
