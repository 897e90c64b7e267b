"""The search engine's own failure modes and versioning rules, produced by the engine itself.

No proxy here: every block, refusal and version conflict below is the server's own answer,
so on a real OpenSearch node (`make test-engine`) these are Lucene's and OpenSearch's rules,
not an emulation of them. They run on osmem too, where it implements the same rule.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from indexsync.clients import HttpFailure
from tests.support.env import Env, running, wait_for

ITEMS = "CREATE TABLE items (id bigint PRIMARY KEY, title text NOT NULL, n int NOT NULL)"
EXPECTED = "SELECT id, to_jsonb(i) FROM items i"


def items(env: Env, name: str = "items", rows: int = 200) -> str:
    env.sql(ITEMS.replace("items", name))
    env.sql(f"INSERT INTO {name} SELECT g, 't' || g, g FROM generate_series(1, {rows}) g")
    return f'[indexes.{env.alias(name)}]\ntable = "{name}"\n'


def settle(env: Env, name: str) -> bool:
    """Whether `name`'s index equals its table and none of its changes wait."""
    alias = env.alias(name)
    pending = env.sql("SELECT count(*) FROM indexsync.outbox WHERE index_name = %s", (alias,))
    expected = env.expected(EXPECTED.replace("items", name))
    return pending[0][0] == 0 and env.docs(name) == expected


def put_settings(env: Env, name: str, settings: dict[str, Any]) -> None:
    env.http.request("PUT", f"/{env.alias(name)}/_settings", body=settings)


def status_of(env: Env, method: str, path: str, body: Any = None) -> int:
    """The HTTP status of a request: 200 for any success, else the error's own status."""
    try:
        env.http.request(method, path, body=body)
    except HttpFailure as exc:
        return exc.status
    return 200


@pytest.mark.parametrize(
    "block",
    ["index.blocks.write", "index.blocks.read_only_allow_delete"],
    ids=["write-block", "flood-stage-block"],
)
def test_a_blocked_index_pauses_keeps_its_changes_and_the_others_go_on(
    env: Env, block: str
) -> None:
    env.bindings(items(env) + items(env, "notes"))
    env.install("--wait")
    put_settings(env, "items", {block: True})
    try:
        with running(env, INDEXSYNC_RETRY_MAX_DELAY="1") as log:
            env.sql("UPDATE items SET n = n + 1 WHERE id <= 50")
            env.sql("UPDATE notes SET n = n + 1")
            wait_for(lambda: settle(env, "notes"), what="the unblocked index syncs")
            waiting = env.sql("SELECT count(*) FROM indexsync.outbox")[0][0]
            assert waiting >= 50, "the blocked index's changes wait in the outbox"
            status = json.loads(env.cli("status", "--json").stdout)
            paused = {row["index"]: row["paused_reason"] for row in status["indexes"]}
            assert "cluster_block_exception" in (paused[env.alias("items")] or ""), paused
            put_settings(env, "items", {block: None})
            wait_for(lambda: settle(env, "items"), what="the unblocked index catches up")
    finally:
        put_settings(env, "items", {block: None})
    assert env.sql("SELECT count(*) FROM indexsync.dead_letters")[0][0] == 0
    events = [json.loads(line)["event"] for line in log[0].splitlines() if line.startswith("{")]
    assert "index.blocked" in events


@pytest.mark.parametrize(
    ("mapping", "row", "field"),
    [
        ({"properties": {"n": {"type": "long"}}}, "UPDATE items SET title = 'x'", None),
        (
            {"dynamic": "strict", "properties": {"id": {"type": "long"}, "n": {"type": "long"}}},
            None,
            "title",
        ),
        ({"properties": {"title": {"type": "long"}}}, None, "title"),
    ],
    ids=["control", "dynamic-strict", "text-into-long"],
)
def test_documents_the_mapping_refuses_are_dead_lettered_naming_the_field(
    env: Env, mapping: dict[str, Any], row: str | None, field: str | None
) -> None:
    env.bindings(items(env))
    env.mapping("items", {"mappings": mapping})
    env.install("--wait")
    if row:
        env.sql(row)
        env.sync()
    letters = env.sql("SELECT reason FROM indexsync.dead_letters")
    if field is None:
        assert letters == []
        assert settle(env, "items")
        return
    assert len(letters) == 200, "every row the mapping refuses has its letter"
    assert all(field in reason for (reason,) in letters), letters[:2]
    assert env.docs("items") == {}


def test_too_many_fields_are_dead_lettered_and_the_rest_land(env: Env) -> None:
    env.sql("CREATE TABLE wide (id int PRIMARY KEY, extra jsonb)")
    env.sql(
        "INSERT INTO wide SELECT g, CASE WHEN g = 7 THEN "
        "(SELECT jsonb_object_agg('f' || i, i) FROM generate_series(1, 40) i) END "
        "FROM generate_series(1, 20) g"
    )
    env.bindings(f'[indexes.{env.alias("wide")}]\ntable = "wide"\n')
    env.mapping("wide", {"settings": {"index.mapping.total_fields.limit": 20}})
    env.install("--wait")
    letters = env.sql("SELECT doc_id, reason FROM indexsync.dead_letters")
    assert [doc_id for doc_id, _ in letters] == ["7"]
    assert "limit of total fields [20]" in letters[0][1].lower(), letters
    assert sorted(env.docs("wide"), key=int) == [str(i) for i in range(1, 21) if i != 7]


# --- versioning, on the engine's own rules ------------------------------------------------


def _doc(env: Env, name: str, doc_id: str, version: int, body: dict[str, Any]) -> int:
    path = f"/{env.alias(name)}/_doc/{doc_id}?version={version}&version_type=external_gte"
    return status_of(env, "PUT", path, body)


def _delete(env: Env, name: str, doc_id: str, version: int) -> int:
    path = f"/{env.alias(name)}/_doc/{doc_id}?version={version}&version_type=external_gte"
    return status_of(env, "DELETE", path)


@pytest.mark.parametrize("refresh_interval", ["1s", "-1"], ids=["refresh-on", "refresh-off"])
def test_an_older_external_version_never_overwrites_a_newer_one(
    env: Env, refresh_interval: str
) -> None:
    env.bindings(items(env, rows=1))
    env.mapping("items", {"settings": {"refresh_interval": refresh_interval}})
    env.install("--no-backfill")
    assert _doc(env, "items", "a", 10, {"v": "new"}) == 200
    assert _doc(env, "items", "a", 9, {"v": "stale"}) == 409
    assert _doc(env, "items", "a", 10, {"v": "same version"}) == 200
    assert env.docs("items")["a"] == {"v": "same version"}


@pytest.mark.parametrize("refresh_interval", ["1s", "-1"], ids=["refresh-on", "refresh-off"])
def test_a_versioned_delete_leaves_a_tombstone_that_refuses_a_stale_write(
    env: Env, refresh_interval: str
) -> None:
    env.bindings(items(env, rows=1))
    env.mapping("items", {"settings": {"refresh_interval": refresh_interval}})
    env.install("--no-backfill")
    assert _doc(env, "items", "a", 5, {"v": "first"}) == 200
    assert _delete(env, "items", "a", 8) == 200
    # Within index.gc_deletes, the tombstone remembers version 8.
    assert _doc(env, "items", "a", 7, {"v": "resurrected"}) == 409
    assert "a" not in env.docs("items")
    assert _doc(env, "items", "a", 9, {"v": "newer"}) == 200


def test_after_gc_deletes_expires_a_stale_write_is_accepted_as_documented(env: Env) -> None:
    """What docs/engines.md says about an expired tombstone, measured on the engine."""
    env.bindings(items(env, rows=1))
    env.mapping("items", {"settings": {"index.gc_deletes": "0s", "refresh_interval": "-1"}})
    env.install("--no-backfill")
    assert _doc(env, "items", "a", 5, {"v": "first"}) == 200
    assert _delete(env, "items", "a", 8) == 200

    # The engine prunes an expired tombstone on a later refresh (its clock ticks every
    # 200 ms): from then on nothing remembers the delete, and a stale write resurrects the
    # document. This is why indexsync never sends a batch whose read is older than
    # INDEXSYNC_MAX_READ_AGE, kept well below the gc_deletes it gives its indexes.
    def resurrected() -> bool:
        env.searcher.refresh(env.alias("items"))
        return _doc(env, "items", "a", 7, {"v": "resurrected"}) == 200

    wait_for(resurrected, timeout=10, interval=0.25, what="the expired tombstone pruned")
    assert env.docs("items")["a"] == {"v": "resurrected"}


# --- reindex on the engine ----------------------------------------------------------------


def test_reindex_swaps_the_alias_under_live_writes_and_no_search_sees_a_gap(env: Env) -> None:
    env.bindings(items(env, rows=2000))
    env.install("--wait")
    alias = env.alias("items")
    seen: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(env.http.request("GET", f"/{alias}/_count")["count"])
            except Exception as exc:  # a failed search is what this test looks for
                errors.append(repr(exc))
            time.sleep(0.01)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        with running(env):
            env.sql("INSERT INTO items SELECT g, 'live', g FROM generate_series(2001, 2100) g")
            result = env.cli("reindex", alias, timeout=240)
            assert result.returncode == 0, result.stderr
            env.sql("UPDATE items SET n = n + 1 WHERE id <= 100")
            wait_for(lambda: settle(env, "items"), what="the rebuilt index equal to the table")
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert seen and min(seen) >= 2000, f"a search saw {min(seen)} documents"
    assert set(env.http.request("GET", f"/_alias/{alias}")) == {f"{alias}-2"}
