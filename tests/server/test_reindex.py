"""Reindex and verify: rebuild with zero downtime under live writes, and prove equality."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

import psycopg
import pytest

from indexsync import clients
from tests.support.env import Env, wait_for

TABLE = """
CREATE TABLE posts (
    id integer PRIMARY KEY,
    title text NOT NULL,
    views integer NOT NULL DEFAULT 0,
    hidden boolean NOT NULL DEFAULT false
)
"""
EXPECTED = "SELECT id, to_jsonb(p) FROM posts p WHERE NOT hidden"


@pytest.fixture
def posts(env: Env) -> Env:
    """A `posts` index with a `where` filter, installed, with rows and a live worker."""
    env.sql(TABLE)
    env.bindings(f'[indexes.{env.alias("posts")}]\ntable = "posts"\nwhere = "NOT hidden"\n')
    env.install("--no-backfill")
    return env


class Writers:
    """Background clients committing random inserts, updates, deletes and key changes."""

    def __init__(self, url: str, seed: int, clients: int = 2, max_id: int = 3000) -> None:
        self.url = url
        self.stop = threading.Event()
        self.commits = 0
        self.errors: list[BaseException] = []
        self.max_id = max_id
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._loop, args=(seed + i,), daemon=True)
            for i in range(clients)
        ]

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not self.errors, self.errors

    def _loop(self, seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self.stop.is_set():
                    self._one(conn, rng)
        except BaseException as exc:  # surfaced in __exit__
            self.errors.append(exc)

    def _one(self, conn: psycopg.Connection[object], rng: random.Random) -> None:
        a, b = rng.randint(1, self.max_id), rng.randint(1, self.max_id)
        op = rng.random()
        try:
            with conn.transaction():
                if op < 0.35:
                    conn.execute(
                        "INSERT INTO posts (id, title) VALUES (%s, %s) ON CONFLICT (id) "
                        "DO UPDATE SET title = EXCLUDED.title",
                        (a, f"t{rng.random():.6f}"),
                    )
                elif op < 0.65:
                    conn.execute(
                        "UPDATE posts SET views = views + 1, hidden = %s WHERE id = %s",
                        (rng.random() < 0.1, a),
                    )
                elif op < 0.8:
                    conn.execute("DELETE FROM posts WHERE id = %s", (a,))
                elif op < 0.9:
                    conn.execute("UPDATE posts SET id = %s WHERE id = %s", (b, a))
                else:
                    conn.execute("INSERT INTO posts (id, title) VALUES (%s, 'rolled back')", (b,))
                    raise _Rollback
            with self._lock:
                self.commits += 1
        except (_Rollback, psycopg.errors.UniqueViolation):
            pass


class _Rollback(Exception):
    pass


class Readers:
    """Clients querying the alias all along; every query must get an answer."""

    def __init__(self, env: Env, alias: str) -> None:
        # A client of its own, as readers of the index would have: the engine's official one.
        self.client = clients.connect(env.settings(), env.engine())
        self.alias = alias
        self.stop = threading.Event()
        self.answers = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Readers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.client.close()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.client.request(
                    "POST", f"/{self.alias}/_search", body={"query": {"match_all": {}}, "size": 1}
                )
                self.answers += 1
            except Exception as exc:
                self.failures.append(repr(exc))
            time.sleep(0.01)


def verify(env: Env, *args: str) -> tuple[int, dict[str, object]]:
    result = env.cli("verify", "--json", *args, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_a_rebuild_under_live_writes_leaves_zero_drift_and_readers_never_fail(posts: Env) -> None:
    alias = posts.alias("posts")
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'seed' FROM generate_series(1, 3000) g")
    worker = posts.spawn("run")
    try:
        wait_for(lambda: len(posts.docs("posts")) >= 2900, timeout=60)
        with Readers(posts, alias) as readers, Writers(posts.database_url, seed=7):
            result = posts.cli("reindex", "--chunk-size", "200", timeout=180)
            assert result.returncode == 0, result.stderr
            assert f"into {alias}-2, alias swapped" in result.stdout
            time.sleep(0.5)
        assert readers.answers > 10 and readers.failures == []
        wait_for(lambda: posts.sql("SELECT count(*) = 0 FROM indexsync.outbox")[0][0], timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    assert set(posts.searcher.alias_targets(alias)) == {f"{alias}-2"}
    assert not posts.searcher.exists(f"{alias}-1"), "old index dropped"
    code, report = verify(posts)
    assert code == 0, json.dumps(report)
    assert posts.docs("posts") == posts.expected(EXPECTED)


def test_the_rebuilt_index_gets_the_mapping_settings_back(posts: Env) -> None:
    alias = posts.alias("posts")
    posts.mapping("posts", {"settings": {"index": {"refresh_interval": "2s"}}})
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'x' FROM generate_series(1, 10) g")
    assert posts.cli("reindex").returncode == 0
    settings = posts.http.request("GET", f"/{f'{alias}-2'}/_settings")[f"{alias}-2"]["settings"]
    assert settings["index"]["refresh_interval"] == "2s"
    assert settings["index"]["gc_deletes"] == "3600s"
    assert len(posts.docs("posts")) == 10


def test_first_backfill_without_install_backfill_uses_reindex(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'x' FROM generate_series(1, 500) g")
    assert posts.docs("posts") == {}
    posts.sql("TRUNCATE indexsync.outbox")  # the rows arrived "before install", say
    result = posts.cli("reindex", "--in-place")
    assert result.returncode == 0, result.stderr
    assert posts.docs("posts") == posts.expected(EXPECTED)


def test_in_place_reindex_removes_documents_deleted_behind_the_outbox(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'x' FROM generate_series(1, 100) g")
    posts.sync()
    posts.sql(
        "ALTER TABLE posts DISABLE TRIGGER USER; DELETE FROM posts WHERE id <= 30; "
        "UPDATE posts SET title = 'changed quietly' WHERE id = 50; "
        "ALTER TABLE posts ENABLE TRIGGER USER"
    )
    code, report = verify(posts)
    assert code == 1
    (entry,) = report["indexes"]  # type: ignore[misc]
    assert (entry["extra"], entry["differing"], entry["missing"]) == (30, 1, 0)
    result = posts.cli("reindex", "--in-place", "--chunk-size", "25")
    assert result.returncode == 0, result.stderr
    assert "30 stale document(s) deleted" in result.stdout
    assert posts.docs("posts") == posts.expected(EXPECTED)
    assert verify(posts)[0] == 0


def test_a_killed_rebuild_never_swaps_and_resumes_on_rerun(posts: Env) -> None:
    alias = posts.alias("posts")
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'x' FROM generate_series(1, 40000) g")
    posts.sql("TRUNCATE indexsync.outbox")
    posts.sql("INSERT INTO posts (id, title) VALUES (0, 'already indexed')")
    posts.sync()
    proc = posts.spawn("reindex", "--chunk-size", "500")
    try:
        wait_for(
            lambda: (posts.sql("SELECT rows_done FROM indexsync.rebuilds") or [(0,)])[0][0] > 2000,
            timeout=60,
            interval=0.01,
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    # The alias still serves the old, complete index.
    assert set(posts.searcher.alias_targets(alias)) == {f"{alias}-1"}
    assert set(posts.docs("posts")) == {"0"}
    (done,) = posts.sql("SELECT rows_done FROM indexsync.rebuilds")[0]
    assert 0 < done < 40001
    rerun = posts.cli("reindex", "--chunk-size", "500", timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    events = [json.loads(line) for line in rerun.stderr.splitlines() if line.startswith("{")]
    resumed = [e for e in events if e["event"] == "reindex.resumed"]
    assert resumed and resumed[0]["rows"] == done
    assert set(posts.searcher.alias_targets(alias)) == {f"{alias}-2"}
    assert verify(posts)[0] == 0


def test_restart_starts_an_interrupted_rebuild_over(posts: Env) -> None:
    alias = posts.alias("posts")
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'x' FROM generate_series(1, 100) g")
    posts.sql(
        "INSERT INTO indexsync.rebuilds (alias, target, watermark, last_key, rows_done) "
        "VALUES (%s, %s, 1, '50', 50)",
        (alias, f"{alias}-7"),
    )
    posts.searcher.create_index(f"{alias}-7", {})
    result = posts.cli("reindex", "--restart")
    assert result.returncode == 0, result.stderr
    assert not posts.searcher.exists(f"{alias}-7")
    assert len(posts.docs("posts")) == 100


def test_verify_finds_planted_drift_and_repair_fixes_exactly_that(posts: Env) -> None:
    alias = posts.alias("posts")
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'x' FROM generate_series(1, 50) g")
    posts.sync()
    assert verify(posts)[0] == 0
    versions_before = posts.versions("posts")
    posts.http.request("DELETE", f"/{alias}/_doc/3")
    posts.http.request("PUT", f"/{alias}/_doc/4", body={"id": 4, "title": "tampered"})
    posts.http.request("PUT", f"/{alias}/_doc/ghost", body={"title": "no such row"})
    posts.searcher.refresh(alias)
    code, report = verify(posts)
    assert code == 1
    (entry,) = report["indexes"]  # type: ignore[misc]
    assert (entry["missing"], entry["differing"], entry["extra"]) == (1, 1, 1)
    assert entry["examples"] == {
        "missing": ["3"],
        "differing": ["4"],
        "extra": ["ghost"],
        "misplaced": [],  # only a routed index can have copies under a wrong routing
    }
    text = posts.cli("verify")
    assert text.returncode == 1 and "DRIFT" in text.stdout and "missing: 3" in text.stdout

    code, report = verify(posts, "--repair")
    assert code == 0, report
    assert posts.docs("posts") == posts.expected(EXPECTED)
    # Only the drifted documents were rewritten.
    after = posts.versions("posts")
    untouched = {k: v for k, v in after.items() if k not in {"3", "4"}}
    assert untouched == {k: v for k, v in versions_before.items() if k not in {"3", "4"}}
    assert verify(posts)[0] == 0


def test_repair_never_undoes_a_newer_live_write(posts: Env) -> None:
    alias = posts.alias("posts")
    posts.sql("INSERT INTO posts (id, title) VALUES (1, 'first')")
    posts.sync()
    posts.http.request("PUT", f"/{alias}/_doc/1", body={"id": 1, "title": "tampered"})
    posts.sql("UPDATE posts SET title = 'newest' WHERE id = 1")
    code, _ = verify(posts, "--repair")
    assert code == 0
    assert posts.docs("posts")["1"]["title"] == "newest"


def test_a_database_whose_sequence_went_backwards_is_detected(posts: Env) -> None:
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'x' FROM generate_series(1, 20) g")
    posts.sync()
    # A restore from an older backup: the sequence is behind the versions in the index.
    posts.sql("ALTER SEQUENCE indexsync.change_seq RESTART WITH 5")
    posts.sql("INSERT INTO posts (id, title) VALUES (100, 'after restore')")
    result = posts.cli("run", "--until-idle")
    assert result.returncode == 2
    assert "went back in time" in result.stderr and "indexsync reindex" in result.stderr
    in_place = posts.cli("reindex", "--in-place")
    assert in_place.returncode == 2 and "cannot fix" in in_place.stderr
    fixed = posts.cli("reindex")
    assert fixed.returncode == 0, fixed.stderr
    again = posts.cli("run", "--until-idle")
    assert again.returncode == 0, again.stderr
    posts.sql("UPDATE posts SET title = 'live again' WHERE id = 1")
    assert posts.cli("run", "--until-idle").returncode == 0
    assert posts.docs("posts") == posts.expected(EXPECTED)


def test_unknown_alias_on_the_command_line_is_a_usage_error(posts: Env) -> None:
    result = posts.cli("reindex", "nope")
    assert result.returncode == 2 and "'nope'" in result.stderr


def test_keep_old_keeps_the_previous_index_and_progress_is_reported(posts: Env) -> None:
    alias = posts.alias("posts")
    posts.sql("INSERT INTO posts (id, title) SELECT g, 'x' FROM generate_series(1, 300) g")
    result = posts.cli("reindex", "--keep-old", "--chunk-size", "100")
    assert result.returncode == 0, result.stderr
    assert posts.searcher.exists(f"{alias}-1")
    assert set(posts.searcher.alias_targets(alias)) == {f"{alias}-2"}
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "reindex.progress"]
    assert progress and progress[-1]["rows_done"] == 300 and progress[-1]["rows_total"] == 300
    assert "rows_per_s" in progress[-1]


def _poisoned(env: Env) -> str:
    """A `query` binding over 300 existing rows, one of which its cast refuses."""
    env.sql("CREATE TABLE raw (id int PRIMARY KEY, n text NOT NULL)")
    env.sql("INSERT INTO raw SELECT g, g::text FROM generate_series(1, 300) g")
    env.sql("UPDATE raw SET n = 'n/a' WHERE id = 150")
    alias = env.alias("raw")
    env.bindings(
        f'[indexes.{alias}]\ntable = "raw"\n'
        "query = \"SELECT id, jsonb_build_object('n', n::int) AS doc FROM raw\"\n"
    )
    return alias


def _only_the_bad_row_is_dead_lettered(env: Env) -> None:
    letters = env.sql("SELECT doc_id, sqlstate, reason FROM indexsync.dead_letters")
    assert [(d, s) for d, s, _ in letters] == [("150", "22P02")]
    assert "n/a" in letters[0][2]
    docs = env.docs("raw")
    assert len(docs) == 299 and "150" not in docs and docs["300"] == {"n": 300}


@pytest.mark.parametrize("how", ["install-wait", "worker-backfill", "reindex"])
def test_a_poison_row_among_existing_rows_costs_only_its_own_document(env: Env, how: str) -> None:
    alias = _poisoned(env)
    if how == "install-wait":
        env.install("--wait")
    elif how == "worker-backfill":
        env.install()
        result = env.cli("run", "--until-idle")
        assert result.returncode == 0, result.stderr
        assert "backfill.failed" not in result.stderr
    else:
        env.install("--no-backfill")
        result = env.cli("reindex", alias)
        assert result.returncode == 0, result.stderr
    _only_the_bad_row_is_dead_lettered(env)
    # Mended, the row comes back through a retry of its dead letter.
    env.sql("UPDATE raw SET n = '150' WHERE id = 150")
    assert env.cli("deadletters", "retry").returncode == 0
    env.sync()
    assert env.docs("raw")["150"] == {"n": 150}
    assert env.sql("SELECT count(*) FROM indexsync.dead_letters")[0][0] == 0
