"""Every engine users run, and the search side's real failure modes.

The engines are emulated at the HTTP level by the test proxy in front of osmem (see
tests/support/esproxy.py for what each answers, and where that is documented); the
in-memory server is also used directly, as the OpenSearch it is.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.support.env import Env, running, wait_for

ITEMS = "CREATE TABLE items (id bigint PRIMARY KEY, title text NOT NULL, n int NOT NULL)"
EXPECTED = "SELECT id, to_jsonb(i) FROM items i"


def items(env: Env) -> str:
    env.sql(ITEMS)
    env.sql("INSERT INTO items SELECT g, 't' || g, g FROM generate_series(1, 300) g")
    env.bindings(f'[indexes.{env.alias("items")}]\ntable = "items"\n')
    return env.alias("items")


class Load:
    """Single-row writes from two sessions until stopped: inserts, updates and deletes."""

    def __init__(self, env: Env) -> None:
        self.url = env.database_url
        self.stop = threading.Event()
        self.writes = 0
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(2)]

    def _run(self, n: int) -> None:
        i = 0
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                i += 1
                key = 1000 + n * 100_000 + i
                conn.execute("INSERT INTO items VALUES (%s, 'live', %s)", (key, i))
                conn.execute("UPDATE items SET n = n + 1 WHERE id = %s", (1 + (key % 300),))
                if i % 7 == 0:
                    conn.execute("DELETE FROM items WHERE id = %s", (key - 3,))
                self.writes += 3
                time.sleep(0.002)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def settled(env: Env) -> bool:
    """Whether the index equals the table and nothing waits in the outbox."""
    pending = env.sql("SELECT count(*) FROM indexsync.outbox")[0][0]
    return pending == 0 and env.docs("items") == env.expected(EXPECTED)


ENGINES = [
    pytest.param("elasticsearch-8", id="elasticsearch-8.19",
                 marks=pytest.mark.proxy(engine="elasticsearch-8")),
    pytest.param("elasticsearch-9", id="elasticsearch-9.2",
                 marks=pytest.mark.proxy(engine="elasticsearch-9")),
    pytest.param("opensearch", id="opensearch", marks=pytest.mark.proxy(engine="opensearch")),
    pytest.param("direct", id="osmem-direct"),
]  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_is_detected_and_ends_in_zero_drift(env: Env, engine: str) -> None:
    if env.search.upstream_url is None:
        pytest.skip("the engines are emulated in front of the embedded server")
    items(env)
    check_before = env.cli("check")
    assert "search server answers" in check_before.stdout
    env.install()
    with running(env), Load(env) as load:
        time.sleep(1.5)
    assert load.writes > 0
    env.sync()
    assert settled(env)
    assert env.sql("SELECT count(*) FROM indexsync.dead_letters")[0][0] == 0
    assert env.cli("verify").returncode == 0
    check = env.cli("check")
    assert check.returncode == 0, check.stdout
    if engine.startswith("elasticsearch"):
        major = engine[-1]
        assert f"Elasticsearch {major}." in check.stdout
        assert f"REST compatibility with {major}" in check.stdout
    else:
        assert "OpenSearch 3." in check.stdout and "opensearch-py" in check.stdout


@pytest.mark.proxy(engine="elasticsearch-8")
def test_the_engine_setting_overrides_detection(env: Env) -> None:
    items(env)
    # Told it is Elasticsearch 9, indexsync asks for compatible-with=9, which 8.x refuses:
    # proof that the setting is used, and that the proxy answers as 8.x does.
    refused = env.cli("install", INDEXSYNC_ENGINE="elasticsearch-9")
    assert refused.returncode == 2
    assert "media_type_header_exception" in refused.stderr
    env.install()  # detected: 8.x, compatible-with=8
    assert env.cli("install", INDEXSYNC_ENGINE="elasticsearch-8").returncode == 0


def test_an_unknown_engine_setting_is_refused_clearly(env: Env) -> None:
    items(env)
    result = env.cli("check", INDEXSYNC_ENGINE="solr-9")
    assert result.returncode == 2
    assert "INDEXSYNC_ENGINE" in result.stderr


# --- the search side's failure modes ---------------------------------------------------------

WRITE_BLOCK = (
    403,
    "cluster_block_exception",
    "index [items-1] blocked by: [FORBIDDEN/8/index write (api)];",
)
FLOOD_STAGE = (
    429,
    "cluster_block_exception",
    "index [items-1] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage "
    "watermark, index has read-only-allow-delete block];",
)
NO_PRIVILEGE = (
    403,
    "security_exception",
    "action [indices:data/write/bulk[s]] is unauthorized for API key id [k] of user [u] "
    "on indices [items-1], this action is granted by the index privileges [create_doc,write,all]",
)
BAD_CREDENTIALS = (
    401,
    "security_exception",
    "unable to authenticate with provided credentials and anonymous access is not allowed",
)  # fmt: skip


@pytest.fixture
def blocked_env(env: Env) -> Iterator[Env]:
    if env.search.proxy is None:
        pytest.skip("injecting faults needs the test proxy")
    items(env)
    env.install()
    yield env
    env.search.proxy.faults.reset()


@pytest.mark.proxy(engine="elasticsearch-9")
@pytest.mark.parametrize(
    ("kind", "error"),
    [("items", WRITE_BLOCK), ("items", FLOOD_STAGE), ("items", NO_PRIVILEGE),
     ("request", BAD_CREDENTIALS), ("request", WRITE_BLOCK)],
    ids=["write-block", "flood-stage", "missing-privilege", "bad-credentials", "request-block"],
)  # fmt: skip
def test_an_index_that_refuses_writes_pauses_and_catches_up_without_dead_letters(
    blocked_env: Env, kind: str, error: tuple[int, str, str]
) -> None:
    env = blocked_env
    proxy = env.search.proxy
    assert proxy is not None
    with running(env, INDEXSYNC_RETRY_MAX_DELAY="1") as log, Load(env):
        time.sleep(0.5)
        if kind == "items":
            proxy.faults.bulk_item_error = error
        else:
            proxy.faults.bulk_request_error = error
        wait_for(lambda: proxy.stats.requests_failed_503 + proxy.stats.bulk_items_rejected > 20,
                 what="writes refused")  # fmt: skip
        if kind == "items":
            status = json.loads(env.cli("status", "--json").stdout)
            paused = {row["index"]: row["paused_reason"] for row in status["indexes"]}
            assert error[1] in (paused[env.alias("items")] or ""), paused
        time.sleep(2)
        proxy.faults.bulk_item_error = None
        proxy.faults.bulk_request_error = None
        time.sleep(1)
    assert env.sql("SELECT count(*) FROM indexsync.dead_letters")[0][0] == 0
    env.sync()
    assert settled(env)
    events = [json.loads(line)["event"] for line in log[0].splitlines() if line.startswith("{")]
    expected = "index.blocked" if kind == "items" else (
        "worker.credentials_rejected" if error[0] == 401 else "worker.search_unavailable"
    )  # fmt: skip
    assert expected in events
    assert env.cli("status").returncode == 0


@pytest.mark.proxy(engine="elasticsearch-9")
def test_a_blocked_index_does_not_hold_up_the_others(env: Env) -> None:
    proxy = env.search.proxy
    assert proxy is not None
    items(env)
    env.sql("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    env.bindings(
        f'[indexes.{env.alias("items")}]\ntable = "items"\n'
        f'[indexes.{env.alias("notes")}]\ntable = "notes"\n'
    )
    env.install()
    with running(env, INDEXSYNC_RETRY_MAX_DELAY="1"):
        # Only the items index refuses: the proxy answers its items alone with the block.
        proxy.faults.bulk_item_error = WRITE_BLOCK
        proxy.faults.block_only_index = env.alias("items")
        env.sql("UPDATE items SET n = n + 1")
        env.sql("INSERT INTO notes SELECT g, 'n' FROM generate_series(1, 100) g")
        wait_for(lambda: len(env.docs("notes")) == 100, what="the other index syncs")
        proxy.faults.bulk_item_error = None
        wait_for(lambda: settled(env), what="the blocked index catches up")
    assert env.sql("SELECT count(*) FROM indexsync.dead_letters")[0][0] == 0


@pytest.mark.proxy(engine="opensearch")
def test_a_circuit_broken_request_is_split_and_retried(env: Env) -> None:
    proxy = env.search.proxy
    assert proxy is not None
    items(env)
    env.install("--no-backfill")
    env.sql("UPDATE items SET n = n + 1")
    proxy.faults.bulk_request_error = (
        429, "circuit_breaking_exception",
        "[parent] Data too large, data for [<http_request>] would be larger than limit",
    )  # fmt: skip
    proxy.faults.bulk_request_error_max_items = 100
    env.sync()
    assert settled(env)
    assert proxy.stats.requests_failed_503 > 0


@pytest.mark.proxy(engine="opensearch")
def test_bulk_concurrency_is_an_upper_bound_on_requests_in_flight(env: Env) -> None:
    proxy = env.search.proxy
    assert proxy is not None
    items(env)
    env.install()
    env.sql("INSERT INTO items SELECT g, 'x', g FROM generate_series(1000, 12000) g")
    proxy.faults.latency_s = 0.05
    env.sync(batch_size=500, bulk_concurrency=2)
    assert settled(env)
    assert proxy.stats.bulk_in_flight_max == 2
