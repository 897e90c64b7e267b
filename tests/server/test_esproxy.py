"""The test proxy against a real osmem-server, driven by the real clients.

The proxy is a test tool (tests/support/esproxy.py); these tests keep it honest, since the
engine and fault scenarios elsewhere rely on what it claims to do.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from elasticsearch import ApiError, Elasticsearch, helpers
from elasticsearch import ConnectionError as ESConnectionError

from indexsync.embedded import EmbeddedPostgres, EmbeddedSearch
from tests.support.esproxy import CompatProxy


@pytest.fixture(scope="module")
def search() -> Iterator[EmbeddedSearch]:
    """One osmem for the whole module; tests use distinct index names."""
    with EmbeddedSearch() as s:
        yield s


@pytest.fixture(scope="module")
def shared_proxy(search: EmbeddedSearch) -> Iterator[CompatProxy]:
    """One proxy answering as Elasticsearch 9 in front of it."""
    with CompatProxy(search.url, seed=1234, engine="elasticsearch-9") as proxy:
        yield proxy


@pytest.fixture
def proxy(shared_proxy: CompatProxy) -> Iterator[CompatProxy]:
    """The shared proxy with faults and counters cleared around each test."""
    shared_proxy.faults.reset()
    shared_proxy.stats.reset()
    yield shared_proxy
    shared_proxy.faults.reset()


@pytest.fixture
def es(proxy: CompatProxy) -> Iterator[Elasticsearch]:
    """A client that does not retry, so every injected fault is visible."""
    client = Elasticsearch(proxy.url, max_retries=0, request_timeout=30)
    yield client
    client.close()


def _docs(index: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"_index": index, "_id": str(i), "n": i} for i in range(start, start + n)]


def _existing_ids(es: Elasticsearch, index: str, ids: list[str]) -> set[str]:
    found = es.mget(index=index, ids=ids)["docs"]
    return {d["_id"] for d in found if d.get("found")}


def test_client_works_through_proxy(es: Elasticsearch, proxy: CompatProxy) -> None:
    assert es.info()["version"]["number"]
    es.indices.create(index="basic", mappings={"properties": {"n": {"type": "integer"}}})
    assert es.indices.exists(index="basic")
    ok, errors = helpers.bulk(es, _docs("basic", 50), refresh=True)
    assert (ok, errors) == (50, [])
    res = es.search(index="basic", query={"range": {"n": {"gte": 45}}})
    assert res["hits"]["total"]["value"] == 5
    assert es.get(index="basic", id="7")["_source"] == {"n": 7}
    assert proxy.stats.requests >= 6


def test_keep_alive_with_parallel_bulk(es: Elasticsearch, proxy: CompatProxy) -> None:
    es.indices.create(index="parallel")

    def send(batch: int) -> bool:
        ops: list[dict[str, Any]] = []
        for doc in _docs("parallel", 25, start=batch * 25):
            ops += [{"index": {"_index": doc["_index"], "_id": doc["_id"]}}, {"n": doc["n"]}]
        return bool(es.bulk(operations=ops)["errors"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        errors = list(pool.map(send, range(48)))
    assert not any(errors)
    es.indices.refresh(index="parallel")
    assert es.count(index="parallel")["count"] == 48 * 25
    # urllib3 keeps at most 10 connections per node; without keep-alive there would
    # be one connection per request.
    assert proxy.stats.requests >= 50
    assert proxy.stats.connections <= 10


def test_chunked_request_and_connection_close(proxy: CompatProxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        body = [b'{"index":{"_id":"1"}}\n', b'{"n":1}\n']
        headers = {"Content-Type": "application/vnd.elasticsearch+x-ndjson; compatible-with=9"}
        conn.request(
            "POST", "/chunked/_bulk", body=iter(body), headers=headers, encode_chunked=True
        )
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        assert resp.status == 200, payload
        assert payload["items"][0]["index"]["status"] == 201
        assert resp.getheader("X-Elastic-Product") == "Elasticsearch"
        assert resp.getheader("Connection") is None
        # Same connection again, now asking the proxy to close it.
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        assert resp.getheader("Connection") == "close"
    finally:
        conn.close()
    assert proxy.stats.connections == 1


def test_bulk_item_429_withholds_items(es: Elasticsearch, proxy: CompatProxy) -> None:
    index = "rejects"
    es.indices.create(index=index)
    helpers.bulk(es, _docs(index, 20), refresh=True)  # ids 0..19 exist with n == id

    proxy.faults.bulk_item_429_rate = 0.5
    ops: list[dict[str, Any]] = []
    expected: list[tuple[str, str]] = []
    for i in range(20):  # update the existing docs
        ops += [{"update": {"_id": str(i)}}, {"doc": {"n": 1000 + i}}]
        expected.append(("update", str(i)))
    for i in range(20, 40):  # index new docs; in the path-less form the action names the index
        ops += [{"index": {"_index": index, "_id": str(i)}}, {"n": i}]
        expected.append(("index", str(i)))
    for i in range(10):  # delete some of the originals
        ops.append({"delete": {"_id": f"{i}"}})
        expected.append(("delete", str(i)))
    # Put the deletes first so the updates of the same ids cannot race with them.
    ops = ops[80:] + ops[:80]
    expected = expected[40:] + expected[:40]

    res = es.bulk(index=index, operations=ops, refresh=True)
    assert res["errors"] is True
    items = res["items"]
    assert len(items) == len(expected)
    rejected = []
    for pos, (item, (op, doc_id)) in enumerate(zip(items, expected, strict=True)):
        assert list(item) == [op]
        body = item[op]
        assert body["_id"] == doc_id
        assert body["_index"] == index
        if body["status"] == 429:
            assert body["error"]["type"] == "es_rejected_execution_exception"
            rejected.append(pos)
    assert 0 < len(rejected) < len(expected)
    assert proxy.stats.bulk_items_rejected == len(rejected)

    proxy.faults.bulk_item_429_rate = 0.0
    docs = {d["_id"]: d for d in es.mget(index=index, ids=[str(i) for i in range(40)])["docs"]}
    for pos, (op, doc_id) in enumerate(expected):
        doc = docs[doc_id]
        applied = pos not in rejected
        if op == "delete":
            deleted_by_this = not doc["found"]
            # A rejected delete must leave the doc in place.
            assert deleted_by_this == applied, (op, doc_id)
        elif op == "index":
            assert doc["found"] == applied, (op, doc_id)
        elif doc["found"]:  # update of a doc that the delete did not remove
            assert (doc["_source"]["n"] == 1000 + int(doc_id)) == applied, (op, doc_id)


def test_bulk_all_items_rejected_is_not_forwarded(es: Elasticsearch, proxy: CompatProxy) -> None:
    es.indices.create(index="allrejected")
    before = proxy.stats.requests
    proxy.faults.bulk_item_429_rate = 1.0
    ops: list[dict[str, Any]] = [{"create": {"_id": "a"}}, {"n": 1}, {"delete": {"_id": "b"}}]
    res = es.bulk(index="allrejected", operations=ops)
    assert res["errors"] is True
    assert [next(iter(i)) for i in res["items"]] == ["create", "delete"]
    assert all(i[op]["status"] == 429 for i in res["items"] for op in i)
    proxy.faults.bulk_item_429_rate = 0.0
    assert es.count(index="allrejected")["count"] == 0
    assert proxy.stats.requests - before == 2


def test_fail_next_requests(es: Elasticsearch, proxy: CompatProxy) -> None:
    proxy.faults.fail_next_requests(1)
    with pytest.raises(ApiError) as info:
        es.info()
    assert info.value.meta.status == 503
    assert es.info()["version"]["number"]
    assert proxy.stats.requests_failed_503 == 1

    # The client retries 503s by default, so two failures are absorbed by its retries.
    proxy.faults.fail_next_requests(2)
    retrying = Elasticsearch(proxy.url, max_retries=3)
    try:
        assert retrying.info()["version"]["number"]
    finally:
        retrying.close()
    assert proxy.stats.requests_failed_503 == 3

    proxy.faults.fail_next_requests(1, status=429)
    with pytest.raises(ApiError) as info:
        es.info()
    assert info.value.meta.status == 429


def test_reset_after_forward_applies_the_write(es: Elasticsearch, proxy: CompatProxy) -> None:
    es.indices.create(index="resets")
    proxy.faults.reset_after_forward_next(1)
    with pytest.raises(ESConnectionError):
        es.index(index="resets", id="1", document={"n": 1}, refresh=True)
    assert proxy.stats.resets_after_forward == 1
    assert es.get(index="resets", id="1")["_source"] == {"n": 1}


def test_outage(es: Elasticsearch, proxy: CompatProxy) -> None:
    assert es.info()  # open a keep-alive connection the outage must break
    proxy.faults.outage(0.5)
    with pytest.raises(ESConnectionError):
        es.info()
    assert proxy.stats.outage_refusals >= 1
    time.sleep(0.6)
    assert es.info()

    proxy.faults.outage_on()
    with pytest.raises(ESConnectionError):
        es.info()
    proxy.faults.outage_off()
    assert es.info()


def test_latency(es: Elasticsearch, proxy: CompatProxy) -> None:
    proxy.faults.latency_s = 0.2
    started = time.monotonic()
    es.info()
    assert time.monotonic() - started >= 0.2


def test_max_body_bytes(es: Elasticsearch, proxy: CompatProxy) -> None:
    es.indices.create(index="toolarge")
    proxy.faults.max_body_bytes = 1000
    ops: list[dict[str, Any]] = []
    for i in range(50):
        ops += [{"index": {"_id": str(i)}}, {"pad": "x" * 100}]
    with pytest.raises(ApiError) as info:
        es.bulk(index="toolarge", operations=ops)
    assert info.value.meta.status == 413
    assert proxy.stats.too_large == 1
    # The connection survives the 413 and small requests still pass.
    es.index(index="toolarge", id="small", document={"n": 1}, refresh=True)
    assert es.count(index="toolarge")["count"] == 1


def _raw(url: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    """One GET with exactly these headers, as a client of any engine would send it."""
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(body)
    finally:
        conn.close()


VENDOR = "application/vnd.elasticsearch+json; compatible-with={}"


@pytest.mark.parametrize(
    ("engine", "number", "accepted", "refused"),
    [("elasticsearch-8", "8.19.0", (7, 8), 9), ("elasticsearch-9", "9.2.0", (8, 9), 7)],
)
def test_the_proxy_answers_as_elasticsearch(
    search: EmbeddedSearch, engine: str, number: str, accepted: tuple[int, ...], refused: int
) -> None:
    with CompatProxy(search.url, engine=engine) as proxy:
        status, headers, body = _raw(proxy.url, "/", {"accept": "application/json"})
        assert status == 200 and body["version"]["number"] == number
        assert "distribution" not in body["version"]
        assert headers["x-elastic-product"] == "Elasticsearch"
        for version in accepted:
            status, _, _ = _raw(
                proxy.url, "/_cat/indices?format=json", {"accept": VENDOR.format(version)}
            )
            assert status == 200
        status, _, body = _raw(proxy.url, "/", {"accept": VENDOR.format(refused)})
        assert status == 400 and body["error"]["type"] == "media_type_header_exception"
        assert f"but found {refused}" in body["error"]["caused_by"]["reason"]


def test_the_proxy_passes_opensearch_through_unchanged(search: EmbeddedSearch) -> None:
    with CompatProxy(search.url, engine="opensearch") as proxy:
        status, headers, body = _raw(proxy.url, "/", {"accept": "application/json"})
        assert status == 200 and body["version"]["distribution"] == "opensearch"
        assert "x-elastic-product" not in headers
        # As OpenSearch does: a body in Elasticsearch's vendor media type is refused.
        conn = http.client.HTTPConnection(proxy.url.removeprefix("http://"), timeout=10)
        try:
            conn.request("PUT", "/vendor", body=b"{}", headers={"content-type": VENDOR.format(9)})
            assert conn.getresponse().status == 406
        finally:
            conn.close()


def test_embedded_postgres_tcp_and_restart(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg", settings={"max_connections": "50"}) as pg:
        assert pg.port > 0
        assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        assert (pg.bin_dir / "pg_ctl").exists()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            assert conn.execute("SHOW max_connections").fetchone() == ("50",)
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
            conn.execute("CREATE DATABASE other")
            conn.execute("CREATE TABLE t (id int)")
            conn.execute("INSERT INTO t VALUES (1)")
        port = pg.port
        pg.restart()
        assert pg.port == port
        with psycopg.connect(pg.url_for("other")) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("other",)
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT id FROM t").fetchall() == [(1,)]
    assert not pg.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.url, connect_timeout=2).close()
