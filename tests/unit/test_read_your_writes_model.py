"""The pure parts of read-your-writes: which changes a document stands for, how long a
written document may stay unseen, and the freshness bound of /readyz."""

from __future__ import annotations

import pytest

from indexsync.changes import plan
from indexsync.health import Health
from indexsync.rows import KIND_DOC, KIND_KEY, KIND_TRUNCATE, Change
from indexsync.waker import parse_interval


def change(seq: int, doc: str | None, kind: str = KIND_DOC, origin: int | None = None) -> Change:
    source = "public.tags" if kind == KIND_KEY else None
    return Change(seq, "posts", doc, kind, source, origin if origin is not None else seq)


def test_a_document_named_by_id_stands_for_exactly_the_changes_that_named_it() -> None:
    work = plan([change(5, "1"), change(9, "2"), change(7, "1")])["posts"]
    assert work.span("1") == (5, 7)
    assert work.span("2") == (9, 9)


def test_a_requeued_change_keeps_the_origin_it_was_first_recorded_with() -> None:
    work = plan([change(40, "1", origin=3), change(41, "2")])["posts"]
    assert work.span("1") == (3, 3)
    assert (work.first, work.last) == (3, 41)


@pytest.mark.parametrize("kind", [KIND_KEY, KIND_TRUNCATE])
def test_a_document_found_through_a_key_or_a_truncate_may_stand_for_any_change(kind: str) -> None:
    work = plan([change(5, "1"), change(8, "9" if kind == KIND_KEY else None, kind)])["posts"]
    assert work.span("1") == (5, 8)
    assert work.span("77") == (5, 8)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("-1", None), (None, 1.0)],
)
def test_refresh_intervals_read_as_elasticsearch_writes_them(
    text: str | None, seconds: float | None
) -> None:
    assert parse_interval(text) == seconds


def test_readiness_fails_past_the_freshness_bound_and_names_the_index() -> None:
    now = [0.0]
    health = Health(60.0, max_lag=5.0, clock=lambda: now[0])
    health.database_ok(True)
    health.search_ok(True)
    health.progress(0)
    health.set_freshness({"posts": 4.0, "tags": 0.0})
    assert health.readiness().ready
    health.set_freshness({"posts": 12.0, "tags": 0.0})
    ready = health.readiness()
    assert not ready.ready
    assert ready.reasons == [
        "index 'posts': its oldest change not yet searchable is 12s old (INDEXSYNC_READY_MAX_LAG=5)"
    ]


def test_without_a_bound_freshness_alone_never_fails_readiness() -> None:
    health = Health(60.0, clock=lambda: 0.0)
    health.database_ok(True)
    health.search_ok(True)
    health.progress(0)
    health.set_freshness({"posts": 3600.0})
    assert health.readiness().ready
