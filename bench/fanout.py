"""Fan-out: renaming a lookup row that 100,000 documents use costs the writer what one does."""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.console import say
from bench.workload import Workspace

SCHEMA = """
CREATE TABLE fan_authors (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE fan_posts (
    id integer PRIMARY KEY,
    author_id integer NOT NULL REFERENCES fan_authors (id),
    title text NOT NULL
);
CREATE INDEX ON fan_posts (author_id);
"""

QUERY = (
    "SELECT p.id, jsonb_build_object('title', p.title, 'author', a.name) AS doc "
    "FROM fan_posts p JOIN fan_authors a ON a.id = p.author_id"
)


def measure_fanout(ws: Workspace, posts: int, rounds: int) -> dict[str, Any]:
    """Median commit time of renaming an author of 1 post and one of `posts` posts."""
    ws.sql(SCHEMA)
    ws.sql("INSERT INTO fan_authors VALUES (1, 'one post'), (2, 'many posts')")
    ws.sql(
        "INSERT INTO fan_posts SELECT g, CASE WHEN g = 1 THEN 1 ELSE 2 END, 't' "
        "FROM generate_series(1, %(last)s) g",
        {"last": posts + 1},
    )
    (ws.root / "indexsync.toml").write_text(
        f'[indexes.{ws.alias}]\ntable = "public.fan_posts"\nquery = "{QUERY}"\n'  # noqa: S608
        f"[[indexes.{ws.alias}.depends]]\n"
        'table = "public.fan_authors"\n'
        'sql = "SELECT id FROM fan_posts WHERE author_id = ANY(%(keys)s)"\n',
        encoding="utf-8",
    )
    (ws.mappings_dir / f"{ws.alias}.json").unlink(missing_ok=True)
    ws.cli("install", "--no-backfill", notify="false")
    timings: dict[int, list[float]] = {1: [], 2: []}
    with ws.connect() as conn:
        for n in range(rounds):
            for author in (1, 2):  # alternate, so drift in machine load hits both alike
                started = time.perf_counter()
                conn.execute("UPDATE fan_authors SET name = %s WHERE id = %s", (f"n{n}", author))
                timings[author].append(time.perf_counter() - started)
    outbox = ws.outbox_count()
    one = statistics.median(timings[1]) * 1000
    many = statistics.median(timings[2]) * 1000
    say(
        f"fan-out: renaming an author of 1 post {one:.3f} ms, of {posts} posts {many:.3f} ms "
        f"(median of {rounds}); outbox rows written: {outbox} for {2 * rounds} updates"
    )
    return {
        "one_doc_ms": round(one, 3),
        "many_docs_ms": round(many, 3),
        "ratio": many / one,
        "outbox_rows": outbox,
        "updates": 2 * rounds,
    }
