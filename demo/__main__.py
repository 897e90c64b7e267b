"""`make demo`: the whole product on an embedded PostgreSQL and the in-memory search server.

Not part of the package: it is run from a clone, with the repository's sample bindings and
mapping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from indexsync.embedded import EmbeddedPostgres, EmbeddedSearch
from indexsync.search import Search
from indexsync.settings import Settings

WORKDIR = Path(".demo")

SCHEMA = """
CREATE TABLE articles (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title text NOT NULL,
    body text NOT NULL,
    author text NOT NULL,
    tags text[] NOT NULL DEFAULT '{}',
    published boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""

# The demo uses the repository's own sample bindings and mapping.
BINDINGS_FILE = Path("indexsync.example.toml")
MAPPING_FILE = Path("mappings/articles.json")


def say(text: str) -> None:
    """A step heading."""
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def _hits(es: Search, body: dict[str, Any]) -> list[dict[str, Any]]:
    es.refresh("articles")
    found: list[dict[str, Any]] = es.rest.request("POST", "/articles/_search", body=body)["hits"][
        "hits"
    ]
    return found


def show(es: Search) -> dict[str, Any]:
    """Print the documents behind the alias."""
    hits = _hits(es, {"sort": ["_doc"], "size": 100, "version": True})
    if not hits:
        print("   (the index is empty)")
    for hit in sorted(hits, key=lambda h: int(h["_id"])):
        src = hit["_source"]
        print(
            f"   _id={hit['_id']:<3} v{hit['_version']:<4} {src['title']!r} "
            f"by {src['author']} {src['tags']}"
        )
    return {hit["_id"]: hit["_source"] for hit in hits}


def wait_until(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    """Wait for the worker to catch up."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while time.monotonic() < deadline:
        if check():
            print(f"   ({what} after {(time.monotonic() - started) * 1000:.0f} ms)")
            return
        time.sleep(0.05)
    raise SystemExit(f"demo failed: {what} did not happen within {timeout}s")


def ids(es: Search) -> set[str]:
    """Ids behind the alias right now."""
    return {hit["_id"] for hit in _hits(es, {"size": 100, "_source": False})}


def main() -> int:
    """Run the demo; exits by itself."""
    if not BINDINGS_FILE.exists() or not MAPPING_FILE.exists():
        raise SystemExit("run the demo from the repository's root: make demo")
    bindings = BINDINGS_FILE.read_text(encoding="utf-8")
    mapping = MAPPING_FILE.read_text(encoding="utf-8")
    if WORKDIR.exists():
        shutil.rmtree(WORKDIR)
    (WORKDIR / "mappings").mkdir(parents=True)
    (WORKDIR / "indexsync.toml").write_text(bindings)
    (WORKDIR / "mappings" / "articles.json").write_text(mapping)

    say("Starting an embedded PostgreSQL and the in-memory search server")
    with EmbeddedPostgres(WORKDIR / "pgdata") as pg, EmbeddedSearch() as search:
        env = {
            **os.environ,
            "INDEXSYNC_DATABASE_URL": pg.url,
            "INDEXSYNC_ELASTICSEARCH_URL": search.url,
            "INDEXSYNC_CONFIG": str(WORKDIR / "indexsync.toml"),
            "INDEXSYNC_MAPPINGS_DIR": str(WORKDIR / "mappings"),
            "INDEXSYNC_LOG_FORMAT": "json",
        }
        print(f"   PostgreSQL {pg.url}\n   search     {search.url}")
        cli = [sys.executable, "-m", "indexsync"]

        def run(*args: str) -> None:
            print(f"\n$ indexsync {' '.join(args)}", flush=True)
            result = subprocess.run([*cli, *args], env=env, text=True, capture_output=True)
            print("   " + result.stdout.strip().replace("\n", "\n   "))
            if result.returncode != 0:
                raise SystemExit(f"demo failed: exit {result.returncode}: {result.stderr}")

        say("A sample table, the bindings file and a mapping")
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute(
                "INSERT INTO articles (title, body, author, tags) VALUES "
                "('Hello PostgreSQL', 'Rows are the truth.', 'ada', '{postgres}')"
            )
        print("   " + bindings.strip().replace("\n", "\n   "))

        say("Install: schema, triggers, index articles-1 behind alias articles")
        run("install")
        run("install")  # idempotent

        say("Starting the worker in the background (logs in .demo/worker.log)")
        log_file = (WORKDIR / "worker.log").open("w")
        worker = subprocess.Popen([*cli, "run"], env=env, stderr=log_file, stdout=log_file)
        es = Search.connect(Settings(elasticsearch_url=[search.url]))
        try:
            wait_until("the existing row was backfilled", lambda: ids(es) == {"1"})
            show(es)
            conn = psycopg.connect(pg.url, autocommit=True)

            say("INSERT two articles")
            conn.execute(
                "INSERT INTO articles (title, body, author, tags) VALUES "
                "('Search that never drifts', 'Triggers record ids; the worker re-reads rows.', "
                "'grace', '{search,sync}'), "
                "('Versioned writes', 'A stale write comes back 409 and is dropped.', "
                "'alan', '{search}')"
            )
            wait_until("the inserts reached the index", lambda: ids(es) == {"1", "2", "3"})
            show(es)

            say("UPDATE one article 50 times in one transaction (one document write)")
            with conn.transaction():
                for i in range(50):
                    conn.execute(
                        "UPDATE articles SET title = %s WHERE id = 2",
                        (f"Search that never drifts (rev {i + 1})",),
                    )
            wait_until(
                "the last revision is indexed",
                lambda: show_quiet(es).get("2", {}).get("title", "").endswith("(rev 50)"),
            )
            show(es)

            say("Unpublish article 3 (it leaves the `where` filter) and DELETE article 1")
            conn.execute("UPDATE articles SET published = false WHERE id = 3")
            conn.execute("DELETE FROM articles WHERE id = 1")
            wait_until("both are gone from the index", lambda: ids(es) == {"2"})
            show(es)

            say("A transaction that rolls back leaves no trace")
            try:
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO articles (title, body, author) "
                        "VALUES ('Ghost', 'never', 'nobody')"
                    )
                    raise RuntimeError("rollback")
            except RuntimeError:
                pass
            time.sleep(0.5)
            show(es)

            say("Search the alias: full-text query for 'drifts'")
            hits = _hits(es, {"query": {"match": {"title": "drifts"}}})
            for hit in hits:
                print(f"   hit _id={hit['_id']} {hit['_source']['title']!r}")
            if not hits:
                raise SystemExit("demo failed: the search found nothing")

            conn.close()
            run("status")
            run("check")
        finally:
            say("Stopping the worker with SIGTERM: it finishes its batch and exits 0")
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=30)
            log_file.close()
            es.close()
            print(f"   worker exit code {code}")
            events = [
                json.loads(line).get("event")
                for line in (WORKDIR / "worker.log").read_text().splitlines()
                if line.startswith("{")
            ]
            print(f"   worker logged {events.count('batch.done')} batch.done events")
    say("Done: real PostgreSQL, real HTTP search server, the real CLI. Rerun with `make demo`.")
    return 0 if code == 0 else 1


def show_quiet(es: Search) -> dict[str, Any]:
    """The documents behind the alias, without printing."""
    hits = _hits(es, {"size": 100})
    return {hit["_id"]: hit["_source"] for hit in hits}


if __name__ == "__main__":
    raise SystemExit(main())
