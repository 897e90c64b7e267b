"""Pure logic: ids from keys, bulk items, batch planning, engines, named queries, migrations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from indexsync import capture, keys, migrations, queries
from indexsync.bindings import Binding, Dependency
from indexsync.bulk import Op, chunk_bodies
from indexsync.changes import plan
from indexsync.engines import Engine, from_setting, parse_info
from indexsync.errors import ConfigError, SearchError
from indexsync.keys import Key
from indexsync.rows import KIND_DOC, KIND_KEY, KIND_TRUNCATE, Change


def test_composite_ids_are_json_arrays_that_cannot_collide_and_read_back() -> None:
    a, b = keys.encode(["a-b", "c"]), keys.encode(["a", "b-c"])
    assert a == '["a-b", "c"]' and b == '["a", "b-c"]' and a != b
    assert keys.decode(a, 2) == ["a-b", "c"]
    assert keys.encode([7, 'q"ü']) == '[7, "q\\"ü"]'
    assert keys.decode("42", 1) == ["42"]
    with pytest.raises(ValueError):
        keys.decode("[1]", 2)


def test_an_index_item_carries_its_version_and_the_source_untouched() -> None:
    source = '{"title": "caf\\u00e9", "n": 1.50}'
    lines = Op("posts", "posts-2", "7", 42, source, True).encode().decode().splitlines()
    assert json.loads(lines[0]) == {
        "index": {
            "_index": "posts-2",
            "_id": "7",
            "version": 42,
            "version_type": "external_gte",
            "require_alias": True,
        }
    }
    assert lines[1] == source
    delete = json.loads(Op("posts", "posts", '["a", 1]', 9, None).encode())
    assert delete == {
        "delete": {
            "_index": "posts",
            "_id": '["a", 1]',
            "version": 9,
            "version_type": "external_gte",
        }
    }


def test_bodies_respect_both_limits_and_keep_item_order() -> None:
    items = [Op("a", "a", str(i), 1, '{"x":1}') for i in range(10)]
    bodies = list(chunk_bodies(items, max_bytes=10_000, max_items=4))
    assert [len(batch) for batch, _ in bodies] == [4, 4, 2]
    assert [op.doc_id for batch, _ in bodies for op in batch] == [str(i) for i in range(10)]
    one_each = list(chunk_bodies(items, max_bytes=1, max_items=100))
    assert len(one_each) == 10


def test_a_batch_is_grouped_by_index_with_ids_once_truncates_and_dependent_keys() -> None:
    work = plan(
        [
            Change(1, "posts", "1", KIND_DOC, None),
            Change(2, "posts", "1", KIND_DOC, None),
            Change(3, "posts", None, KIND_TRUNCATE, None),
            Change(4, "posts", "9", KIND_KEY, "public.tags"),
            Change(5, "users", "2", KIND_DOC, None),
        ]
    )
    assert work["posts"].ids == {"1"} and work["posts"].truncate
    assert work["posts"].keys == {"public.tags": {"9"}}
    assert work["users"].ids == {"2"} and not work["users"].truncate


@pytest.mark.parametrize(
    ("body", "label", "compat"),
    [
        ({"version": {"number": "8.19.0"}}, "Elasticsearch 8.19.0", 8),
        ({"version": {"number": "9.2.0", "build_flavor": "default"}}, "Elasticsearch 9.2.0", 9),
        ({"version": {"number": "2.19.1", "distribution": "opensearch"}}, "OpenSearch 2.19.1", 9),
    ],
)
def test_the_engine_is_read_from_get_root(body: dict, label: str, compat: int) -> None:
    engine = parse_info(body, "http://x")
    assert engine.label == label
    if engine.distribution == "elasticsearch":
        assert engine.compatible_with == compat


@pytest.mark.parametrize(
    "body",
    [
        {"version": {"number": "7.17.0"}},
        {"version": {"number": "0.9", "distribution": "solr"}},
        {"tagline": "no version"},
    ],
)
def test_an_engine_indexsync_does_not_speak_to_is_refused(body: dict) -> None:
    with pytest.raises(SearchError):
        parse_info(body, "http://x")


def test_the_engine_setting_names_an_engine_or_leaves_it_to_detection() -> None:
    assert from_setting("auto") is None
    assert from_setting("elasticsearch-8") == Engine("elasticsearch", "8", detected=False)
    serverless = from_setting("opensearch-serverless")
    assert serverless is not None and serverless.serverless
    with pytest.raises(ConfigError):
        from_setting("elasticsearch-7")


def test_every_named_query_the_store_runs_exists() -> None:
    source = Path(__file__).parents[2].joinpath("indexsync/store.py").read_text()
    used = set(re.findall(r'_named(?:_rows|_value)?\(\s*"(\w+)"', source))
    used |= set(re.findall(r'queries\.get\("(\w+)"\)', source))
    assert used and used <= set(queries.names())


def test_named_queries_are_parsed_without_their_comments() -> None:
    parsed = queries.parse(
        "-- header\n-- name: one\n-- what it does\nSELECT 1;\n-- name: two\nSELECT 2"
    )
    assert parsed == {"one": b"SELECT 1", "two": b"SELECT 2"}
    with pytest.raises(ValueError):
        queries.parse("-- name: one\nSELECT 1\n-- name: one\nSELECT 2")


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    numbers = [m.number for m in migrations.migrations()]
    assert numbers == list(range(1, migrations.latest() + 1))
    assert [m.number for m in migrations.pending(1)] == numbers[1:]
    assert migrations.pending(migrations.latest()) == ()


def binding(key: Key, depends: tuple[Dependency, ...] = ()) -> Binding:
    return Binding("a" * 120, "public", "t" * 60, key, None, None, None, depends)


def test_capture_functions_get_short_stable_names_for_any_alias() -> None:
    dep = Dependency("public", "tags", ("tenant", "post"), None, "id", "integer", None)
    found = capture.captures(binding(Key(("tenant", "id"), ("int", "int")), (dep,)))
    names = [c.function for c in found]
    assert len(set(names)) == 2 and all(len(n.encode()) <= 63 for n in names)
    assert found[0].columns == ("tenant", "id") and found[1].columns == ("tenant", "post")
    again = capture.captures(binding(Key(("tenant", "id"), ("int", "int")), (dep,)))
    assert [c.function for c in again] == names


def test_a_moved_document_is_deleted_strictly_under_its_old_routing_then_written() -> None:
    from indexsync.bulk import build_ops
    from indexsync.rows import Document

    docs = {"7": Document("7", '{"t": "b"}', "b")}
    ops = build_ops("posts", [("posts", True)], ["7", "8"], docs, 42, elsewhere={"7": {"a", "b"}})
    lines = [json.loads(line) for op in ops for line in op.encode().splitlines()]
    assert lines == [
        # The old copy goes first, and only if strictly older: where "a" and "b" name one
        # shard, they are one document, and this batch's write must win.
        {"delete": {"_index": "posts", "_id": "7", "version": 42, "version_type": "external",
                    "routing": "a"}},
        {"index": {"_index": "posts", "_id": "7", "version": 42,
                   "version_type": "external_gte", "routing": "b", "require_alias": True}},
        {"t": "b"},
        # No row and no routing known: a plain delete (an unrouted index).
        {"delete": {"_index": "posts", "_id": "8", "version": 42,
                    "version_type": "external_gte"}},
    ]  # fmt: skip


def test_a_deleted_routed_document_is_deleted_under_each_routing_it_had() -> None:
    from indexsync.bulk import build_ops

    ops = build_ops("posts", [("posts", True)], ["7"], {}, 42, elsewhere={"7": {"a"}})
    assert [(op.source, op.routing, op.strict) for op in ops] == [(None, "a", False)]


def test_writes_through_a_pipeline_name_it_and_deletes_do_not() -> None:
    from indexsync.bulk import build_ops
    from indexsync.rows import Document

    docs = {"1": Document("1", "{}")}
    ops = build_ops("posts", [("posts", True)], ["1", "2"], docs, 5, pipeline="embed")
    assert json.loads(ops[0].encode().splitlines()[0])["index"]["pipeline"] == "embed"
    assert "pipeline" not in json.loads(ops[1].encode())["delete"]
