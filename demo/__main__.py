"""`make demo`: the whole product on an embedded PostgreSQL and the in-memory search server.

Not part of the package: it is run from a clone, with the repository's sample bindings and
mapping. Besides the happy path it shows what sets indexsync apart: a worker killed in the
middle of a stream of writes, a search server that drops off the network, a document the
server refuses, a rebuild under live writes, and `verify` proving zero drift at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from indexsync.embedded import EmbeddedPostgres
from indexsync.search import Search
from indexsync.settings import Settings

# A test tool, outside the package: osmem, or the same real node the engine suites run on.
from tests.support.opensearch_node import search_engine

WORKDIR = Path(".demo")
BINDINGS_FILE = Path(__file__).parent / "indexsync.toml"
MAPPING_FILE = Path(__file__).parent / "mappings" / "articles.json"

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

INSERT = "INSERT INTO articles (title, body, author, tags) VALUES (%s, %s, %s, %s)"


def say(text: str) -> None:
    """A step heading."""
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def note(text: str) -> None:
    """A line under a step."""
    print(f"   {text}", flush=True)


class Relay:
    """A TCP relay to the search server whose network can be cut, like a flaky link."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.down_until = 0.0
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, seconds: float) -> None:
        """Drop every connection and refuse new ones for `seconds`."""
        self.down_until = time.monotonic() + seconds
        with self.lock:
            for conn in self.conns:
                with _quiet():
                    conn.shutdown(socket.SHUT_RDWR)
            self.conns.clear()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            if time.monotonic() < self.down_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with _quiet():
            while data := source.recv(65536):
                sink.sendall(data)
        with _quiet():
            sink.shutdown(socket.SHUT_WR)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


class Writer:
    """An application inserting articles, one per transaction, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                self.count += 1
                conn.execute(INSERT, (f"Live {self.count}", "streamed", "app", ["live"]))
                time.sleep(0.01)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def hits(es: Search, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Search the alias (after a refresh)."""
    es.refresh("articles")
    found: list[dict[str, Any]] = es.rest.request("POST", "/articles/_search", body=body)["hits"][
        "hits"
    ]
    return found


def count(es: Search) -> int:
    """Documents behind the alias."""
    es.refresh("articles")
    return int(es.rest.request("GET", "/articles/_count")["count"])


def rows(url: str) -> int:
    """Published rows in the table."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM articles WHERE published").fetchone()
    return int(row[0]) if row else 0


def show(es: Search) -> None:
    """Print the first documents behind the alias."""
    found = hits(es, {"sort": ["_doc"], "size": 5, "version": True})
    for hit in sorted(found, key=lambda h: int(h["_id"])):
        src = hit["_source"]
        note(f"_id={hit['_id']:<4} v{hit['_version']:<6} {src['title']!r} by {src['author']}")


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for the worker to catch up."""
    started = time.monotonic()
    while time.monotonic() < started + timeout:
        if check():
            note(f"({what} after {(time.monotonic() - started) * 1000:.0f} ms)")
            return
        time.sleep(0.05)
    raise SystemExit(f"demo failed: {what} did not happen within {timeout}s")


def free_port() -> int:
    """A TCP port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> int:
    """Run the demo; exits by itself."""
    if not BINDINGS_FILE.exists() or not MAPPING_FILE.exists():
        raise SystemExit("run the demo from the repository's root: make demo")
    bindings = BINDINGS_FILE.read_text(encoding="utf-8")
    if WORKDIR.exists():
        shutil.rmtree(WORKDIR)
    (WORKDIR / "mappings").mkdir(parents=True)
    (WORKDIR / "indexsync.toml").write_text(bindings)
    shutil.copy(MAPPING_FILE, WORKDIR / "mappings" / "articles.json")

    engine = os.environ.get("ENGINE", "osmem")
    if engine == "opensearch":
        say("Starting an embedded PostgreSQL and a real OpenSearch node (Java, Maven jars)")
    else:
        say("Starting an embedded PostgreSQL and osmem, an in-memory OpenSearch")
    with EmbeddedPostgres(WORKDIR / "pgdata") as pg, search_engine(engine) as search:
        relay = Relay(search.url)
        metrics_port = free_port()
        env = {
            **os.environ,
            "INDEXSYNC_DATABASE_URL": pg.url,
            "INDEXSYNC_ELASTICSEARCH_URL": relay.url,
            "INDEXSYNC_CONFIG": str(WORKDIR / "indexsync.toml"),
            "INDEXSYNC_MAPPINGS_DIR": str(WORKDIR / "mappings"),
            "INDEXSYNC_LOG_FORMAT": "json",
            "INDEXSYNC_METRICS_PORT": str(metrics_port),
            "INDEXSYNC_RETRY_MAX_DELAY": "1",
        }
        note(f"PostgreSQL {pg.url}")
        note(f"search     {search.url} (the worker goes through a relay we can cut)")
        cli = [sys.executable, "-m", "indexsync"]

        def run(*args: str, show_output: bool = True) -> subprocess.CompletedProcess[str]:
            print(f"\n$ indexsync {' '.join(args)}", flush=True)
            result = subprocess.run([*cli, *args], env=env, text=True, capture_output=True)
            if show_output and result.stdout.strip():
                note(result.stdout.strip().replace("\n", "\n   "))
            if result.returncode != 0:
                raise SystemExit(f"demo failed: exit {result.returncode}: {result.stderr}")
            return result

        logs: list[Path] = []

        def start_worker() -> subprocess.Popen[str]:
            log = WORKDIR / f"worker-{len(logs) + 1}.log"
            logs.append(log)
            handle = log.open("w")
            return subprocess.Popen([*cli, "run"], env=env, stderr=handle, stdout=handle, text=True)

        say("A sample table with 200 articles, the bindings file")
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute(
                "INSERT INTO articles (title, body, author, tags) "
                "SELECT 'Article ' || g, 'Rows are the truth.', 'ada', '{postgres}' "
                "FROM generate_series(1, 200) g"
            )
        note(bindings.strip().replace("\n", "\n   "))

        say("install: schema, triggers, index articles-1 behind alias articles")
        run("install")
        run("check")

        es = Search.connect(Settings(elasticsearch_url=[search.url]))
        worker = start_worker()
        try:
            say("The worker writes the 200 existing rows; the application writes a stream")
            with Writer(pg.url) as writer:
                wait_until("the worker keeps up", lambda: count(es) >= 200 + 20)

                say("SIGKILL the worker in the middle of the stream, then restart it")
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                killed_at = writer.count
                time.sleep(1.0)
                note(f"{writer.count - killed_at} rows were written while no worker ran")
                worker = start_worker()
                wait_until(
                    "the restarted worker caught up", lambda: count(es) >= 200 + killed_at + 30
                )

                say("The search server drops off the network for 3 seconds")
                relay.cut(3.0)
                cut_at = writer.count
                time.sleep(3.5)
                note(
                    f"{writer.count - cut_at} rows were written meanwhile; they wait in the outbox"
                )
                wait_until(
                    "the worker caught up after the outage", lambda: count(es) >= 200 + cut_at + 30
                )
                note("every row written during the outage is in the index (verify checks all)")

                say("A rebuild into a new index while the application keeps writing")
                run("reindex")
            wait_until("every row is in the index", lambda: count(es) == rows(pg.url))
            show(es)

            say("A document the server refuses goes to the dead letters")
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO articles (title, body, author, updated_at) "
                    "VALUES ('From the far future', 'x', 'bob', 'infinity')"
                )
                wait_until(
                    "the refusal is recorded",
                    lambda: (
                        conn.execute("SELECT count(*) FROM indexsync.dead_letters").fetchone()
                        == (1,)
                    ),
                )
                run("deadletters")
                say("Fix the row: its next change retries it, and its dead letter goes")
                conn.execute("UPDATE articles SET updated_at = now() WHERE updated_at = 'infinity'")
            # `indexsync wait` instead of a sleep: every change committed so far is searchable.
            run("wait", "articles", "--timeout", "30")
            if count(es) != rows(pg.url):
                raise SystemExit("demo failed: the fixed row is not in the index")
            run("deadletters")

            say("Read-your-writes: commit, wait_for_search, then search at once (no refresh)")
            with psycopg.connect(pg.url) as conn:
                conn.execute(INSERT, ("Read your writes", "searchable now", "app", ["ryw"]))
                conn.commit()
                started = time.monotonic()
                answer = conn.execute(
                    "SELECT indexsync.wait_for_search('articles', timeout => '5 s')"
                ).fetchone()
                conn.commit()
                waited_ms = (time.monotonic() - started) * 1000
            note("SELECT indexsync.wait_for_search('articles', timeout => '5 s')")
            note(f"-> {answer[0] if answer else None} after {waited_ms:.0f} ms")
            body = {"query": {"match_phrase": {"title": "read your writes"}}}
            found = es.rest.request("POST", "/articles/_search", body=body)["hits"]["hits"]
            note(f"a search sent at once finds it: {[h['_source']['title'] for h in found]}")
            if not (answer and answer[0]) or not found:
                raise SystemExit("demo failed: the application did not read its own write")

            say("Pause the index for maintenance: changes wait in the outbox, none is lost")
            run("pause", "articles", "--reason", "demo maintenance")
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(INSERT, ("Written while paused", "waits", "app", ["paused"]))
            run("status")
            run("resume", "articles")
            run("wait", "articles", "--timeout", "30")
            if count(es) != rows(pg.url):
                raise SystemExit("demo failed: the change made while paused was lost")

            say("Resync a subset through the outbox: rewritten from the rows, rate-bounded")
            run("resync", "articles", "--where", "id <= 50")
            run("wait", "articles", "--timeout", "30")

            say("/metrics and /readyz of the worker")
            base = f"http://127.0.0.1:{metrics_port}"
            with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                note(f"/readyz -> {response.status} {response.read().decode()}")
            note("counters count this worker process only, since it was restarted above")
            with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith(("indexsync_documents_indexed_total", "indexsync_backlog",
                                        "indexsync_reconnects_total")):  # fmt: skip
                        note(line)

            say("Search the alias: full-text query for 'truth'")
            found = hits(es, {"query": {"match": {"body": "truth"}}, "size": 3})
            for hit in found:
                note(f"hit _id={hit['_id']} {hit['_source']['title']!r}")
            if not found:
                raise SystemExit("demo failed: the search found nothing")

            run("status")
            say("verify: the database and the index, compared document by document")
            run("verify")
        finally:
            say("SIGTERM: the worker finishes its batch and exits 0")
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=30)
            es.close()
            note(f"worker exit code {code}")
            events = [
                json.loads(line).get("event")
                for log in logs
                for line in log.read_text().splitlines()
                if line.startswith("{")
            ]
            note(
                f"the workers logged {events.count('batch.done')} batches and "
                f"{events.count('worker.search_unavailable')} search outage retries "
                f"(logs in {WORKDIR}/worker-*.log)"
            )
    say("Done: a real PostgreSQL, a real HTTP search server, the real CLI.")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
