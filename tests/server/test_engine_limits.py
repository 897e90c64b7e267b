"""The engine's own limits, on a real OpenSearch node started with them: real 429s from a
write thread pool too small for the load, a real 413 from `http.max_content_length`, and a
real `circuit_breaking_exception` from the in-flight requests breaker. Nothing is lost, and
nothing is dead-lettered.

These need node settings fixed at start, so they get a node of their own; they run with
`make test-engine` (INDEXSYNC_TEST_ENGINE=opensearch) and skip elsewhere.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexsync.clients import HttpFailure
from tests.support.env import Env, SearchServer
from tests.support.opensearch_node import OpenSearchNode

_counter = itertools.count()
MAX_CONTENT = 256 * 1024
LIMITS = {
    # One write thread and a one-slot queue: concurrent bulks are rejected with 429.
    "thread_pool.write.size": "1",
    "thread_pool.write.queue_size": "1",
    "http.max_content_length": f"{MAX_CONTENT}b",
}


@pytest.fixture(scope="module")
def limited_node() -> Iterator[OpenSearchNode]:
    if os.environ.get("INDEXSYNC_TEST_ENGINE") != "opensearch":
        pytest.skip("needs a real OpenSearch node: `make test-engine`")
    node = OpenSearchNode(settings=LIMITS).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def limited(limited_node: OpenSearchNode, database_url: str, tmp_path: Path) -> Iterator[Env]:
    prefix = f"lim{os.getpid()}x{next(_counter)}-"
    world = Env(database_url, SearchServer(limited_node.url, prefix, None), tmp_path)
    try:
        yield world
    finally:
        world.http.request("DELETE", f"/{world.search.prefix}*", params={"expand_wildcards": "all"})
        world.close()


def _docs(env: Env, rows: int, width: int) -> None:
    env.sql("CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL, n int NOT NULL)")
    env.sql(f"INSERT INTO docs SELECT g, repeat('x', {width}), 0 FROM generate_series(1, {rows}) g")
    env.bindings(f'[indexes.{env.alias("docs")}]\ntable = "docs"\n')
    env.install("--no-backfill")
    env.sql("UPDATE docs SET n = 1")


def _settled(env: Env) -> None:
    assert env.sql("SELECT count(*) FROM indexsync.outbox")[0][0] == 0
    assert env.sql("SELECT count(*) FROM indexsync.dead_letters")[0][0] == 0
    assert env.docs("docs") == env.expected("SELECT id, to_jsonb(d) FROM docs d")


def test_real_429s_from_a_full_write_queue_are_retried_and_nothing_is_lost(limited: Env) -> None:
    _docs(limited, 6000, 10)
    totals = limited.sync(bulk_concurrency=6, batch_size=500)
    _settled(limited)
    assert totals.retries > 0, "the node rejected nothing: the write pool is not that small"


def test_a_real_413_splits_the_request_and_every_document_lands(limited: Env) -> None:
    _docs(limited, 600, 2000)  # about 1.2 MB of documents
    body = b'{"index":{}}\n' + b'{"x":"' + b"y" * MAX_CONTENT + b'"}\n'
    with pytest.raises(HttpFailure) as refused:
        limited.http.request("POST", "/_bulk", body=body, ndjson=True)
    assert refused.value.status == 413, "the node's own limit is live"
    limited.sync(bulk_max_bytes=8 * 1024 * 1024)
    _settled(limited)


def test_a_real_circuit_breaking_exception_splits_the_request(limited: Env) -> None:
    _docs(limited, 600, 1000)
    limit = {"network.breaker.inflight_requests.limit": "100kb"}
    limited.http.request("PUT", "/_cluster/settings", body={"transient": limit})
    try:
        body = b'{"index":{"_index":"probe"}}\n' + b'{"x":"' + b"y" * 200_000 + b'"}\n'
        with pytest.raises(HttpFailure) as refused:
            limited.http.request("POST", "/_bulk", body=body, ndjson=True)
        assert refused.value.status == 429
        assert "circuit_breaking_exception" in str(refused.value.body)
        limited.sync()
    finally:
        reset = {"network.breaker.inflight_requests.limit": None}
        limited.http.request("PUT", "/_cluster/settings", body={"transient": reset})
    _settled(limited)
