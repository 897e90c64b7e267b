"""Routing and ingest pipelines per binding: every write and delete of a routed index carries
the row's routing, a row whose routing changes moves its document (deleted under the old
routing, written under the new), `verify`, `reindex` and repair honour the routing, and
index writes of a binding with a pipeline go through it."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import psycopg
import pytest

from indexsync.clients import HttpFailure
from tests.support.env import Env, running

ROWS = 300
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli"]
# Several shards, and a routing every write must give: a write or delete without one fails.
ROUTED = {
    "settings": {"number_of_shards": 3},
    "mappings": {
        "_routing": {"required": True},
        "properties": {"tenant": {"type": "keyword"}, "n": {"type": "integer"}},
    },
}


@pytest.fixture
def tenants(env: Env) -> Env:
    env.sql("CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, n int NOT NULL)")
    env.sql(
        f"INSERT INTO items SELECT g, (ARRAY{TENANTS})[1 + g % 5], 0 "
        f"FROM generate_series(1, {ROWS}) g"
    )
    env.mapping("items", ROUTED)
    env.bindings(f'[indexes.{env.alias("items")}]\ntable = "items"\nrouting = "tenant"\n')
    env.install("--wait")
    return env


def copies(env: Env) -> dict[str, list[str]]:
    """Every copy of every document in the index: id -> the routings it is found under."""
    alias = env.alias("items")
    env.http.request("POST", f"/{alias}/_refresh")
    found: dict[str, list[str]] = {}
    for hit in env.searcher.scan(alias, source=False):
        found.setdefault(hit["_id"], []).append(hit.get("_routing"))
    return found


def expected(env: Env) -> dict[str, list[str]]:
    return {str(i): [t] for i, t in env.sql("SELECT id, tenant FROM items")}


def test_every_document_lives_under_its_rows_routing_after_the_backfill(tenants: Env) -> None:
    assert copies(tenants) == expected(tenants)
    assert tenants.cli("verify").returncode == 0


def test_tenants_changing_under_writers_move_documents_and_leave_no_copy_behind(
    tenants: Env,
) -> None:
    stop = threading.Event()

    def write(seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(tenants.database_url, autocommit=True) as conn:
            next_id = ROWS + 1 + seed * 100_000
            while not stop.is_set():
                roll = rng.random()
                row = rng.randint(1, ROWS)
                if roll < 0.5:
                    conn.execute(
                        "UPDATE items SET tenant = %s, n = n + 1 WHERE id = %s",
                        (rng.choice(TENANTS), row),
                    )
                elif roll < 0.8:
                    conn.execute("UPDATE items SET n = n + 1 WHERE id = %s", (row,))
                elif roll < 0.9:
                    conn.execute("DELETE FROM items WHERE id = %s", (row,))
                else:
                    conn.execute(
                        "INSERT INTO items VALUES (%s, %s, 0)", (next_id, rng.choice(TENANTS))
                    )
                    next_id += 1
                time.sleep(0.002)

    with running(tenants):
        writers = [threading.Thread(target=write, args=(n,)) for n in range(2)]
        for w in writers:
            w.start()
        time.sleep(4)
        stop.set()
        for w in writers:
            w.join()
        assert tenants.cli("wait", "--timeout", "60").returncode == 0
    # One copy per row, under the row's tenant: every move deleted the old copy.
    assert copies(tenants) == expected(tenants)
    result = tenants.cli("verify")
    assert result.returncode == 0, result.stdout


def test_verify_finds_a_copy_under_a_wrong_routing_and_repair_removes_it(tenants: Env) -> None:
    alias = tenants.alias("items")
    ((tenant,),) = tenants.sql("SELECT tenant FROM items WHERE id = 7")
    stray = "nowhere"
    tenants.http.request(
        "PUT", f"/{alias}/_doc/7", params={"routing": stray}, body={"tenant": stray, "n": -1}
    )
    result = tenants.cli("verify", "--json")
    assert result.returncode == 1
    (report,) = json.loads(result.stdout)["indexes"]
    assert report["misplaced"] == 1
    assert report["examples"]["misplaced"] == [f"7 (routing {stray})"]
    repaired = tenants.cli("verify", "--repair")
    assert repaired.returncode in (0, 1), repaired.stderr
    tenants.cli("run", "--until-idle")
    assert copies(tenants)["7"] == [tenant]
    assert tenants.cli("verify").returncode == 0


def test_reindex_writes_every_document_under_its_routing(tenants: Env) -> None:
    tenants.sql("UPDATE items SET tenant = 'acme' WHERE id <= 20")
    result = tenants.cli("reindex")
    assert result.returncode == 0, result.stderr
    tenants.cli("run", "--until-idle")
    assert copies(tenants) == expected(tenants)
    assert tenants.cli("verify").returncode == 0


def test_a_bad_routing_expression_is_named_at_install(env: Env) -> None:
    env.sql("CREATE TABLE items (id int PRIMARY KEY, tenant text)")
    env.bindings(f'[indexes.{env.alias("items")}]\ntable = "items"\nrouting = "no_such_column"\n')
    result = env.cli("install")
    assert result.returncode == 2
    assert "key 'routing'" in result.stderr and "no_such_column" in result.stderr


def _pipeline(env: Env, name: str) -> None:
    body: dict[str, Any] = {
        "description": "what an enrichment (an embedding, say) would add",
        "processors": [{"set": {"field": "enriched", "value": True}}],
    }
    try:
        env.http.request("PUT", f"/_ingest/pipeline/{name}", body=body)
    except HttpFailure as exc:
        # osmem, the in-memory stand-in, serves no ingest API; the real engines do.
        if exc.status == 400 and "no handler" in str(exc):
            pytest.skip("this search server has no ingest pipelines: `make test-engine`")
        raise


def test_writes_go_through_the_bindings_ingest_pipeline(env: Env) -> None:
    name = env.alias("enrich")
    _pipeline(env, name)
    try:
        env.sql("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL)")
        env.sql("INSERT INTO items SELECT g, g FROM generate_series(1, 20) g")
        env.bindings(f'[indexes.{env.alias("items")}]\ntable = "items"\npipeline = "{name}"\n')
        check = env.cli("check")
        assert f"ingest pipeline {name!r}" in check.stdout, check.stdout
        env.install("--wait")
        env.sql("UPDATE items SET n = n + 100 WHERE id <= 5")
        env.cli("run", "--until-idle")
        docs = env.docs("items")
        assert len(docs) == 20 and all(doc["enriched"] is True for doc in docs.values())
        assert docs["1"]["n"] == 101
        # The fields the pipeline adds are the pipeline's business: no drift.
        assert env.cli("verify").returncode == 0
    finally:
        env.http.request("DELETE", f"/_ingest/pipeline/{name}")


def test_check_fails_when_the_pipeline_does_not_exist(env: Env) -> None:
    env.sql("CREATE TABLE items (id int PRIMARY KEY)")
    env.bindings(f'[indexes.{env.alias("items")}]\ntable = "items"\npipeline = "no-such-pipe"\n')
    result = env.cli("check")
    assert result.returncode == 1
    # "does not exist" on the engines; a server without an ingest API cannot find it either.
    assert "ingest pipeline 'no-such-pipe'" in result.stdout, result.stdout
