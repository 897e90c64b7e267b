"""BulkWriter: retries, splits, deferral, blocks and its concurrency bound, against a fake."""

from __future__ import annotations

import time

import pytest

from indexsync.bulk import Op
from indexsync.errors import SearchUnavailable
from indexsync.search import CircuitBroken, ItemResult, Outcome, RequestTooLarge
from indexsync.writer import BulkWriter, StaleRead
from tests.support.fakes import FakeSearch, SentItem

RETRY = ItemResult(Outcome.RETRY, 429, "es_rejected_execution_exception", "busy")
DEAD = ItemResult(Outcome.DEAD, 400, "mapper_parsing_exception", "failed to parse [n]")
BLOCK = ItemResult(Outcome.BLOCKED, 403, "cluster_block_exception", "FORBIDDEN/8/index write")


def ops(n: int, alias: str = "items", source: str = '{"n":1}') -> list[Op]:
    return [Op(alias, alias, str(i), 7, source, True) for i in range(n)]


def writer(fake: FakeSearch, concurrency: int = 2, max_bytes: int = 1 << 20) -> BulkWriter:
    return BulkWriter(fake, concurrency=concurrency, max_bytes=max_bytes, max_read_age=60)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    # The writer's backoff sleeps; the unit layer has no time to wait for it.
    monkeypatch.setattr("indexsync.writer.backoff", lambda attempt, cap: 0.0)


def test_items_refused_for_load_are_retried_until_they_land() -> None:
    fake = FakeSearch(answer=lambda item, attempt: RETRY if attempt < 2 else None)
    with_writer = writer(fake)
    result = with_writer.write(ops(5), time.monotonic())
    assert result.dead == [] and result.deferred == []
    assert len(fake.requests) == 3
    assert result.errors[("items", "retry_429")] == 10


def test_a_document_the_server_refuses_becomes_a_dead_letter_and_the_rest_land() -> None:
    fake = FakeSearch(answer=lambda item, attempt: DEAD if item.doc_id == "3" else None)
    result = writer(fake).write(ops(5), time.monotonic())
    assert [(d.doc_id, d.status, d.error_type) for d in result.dead] == [
        ("3", 400, "mapper_parsing_exception")
    ]
    assert len(fake.requests) == 1


def test_with_defer_items_still_refused_after_the_retries_come_back_instead_of_failing() -> None:
    fake = FakeSearch(answer=lambda item, attempt: RETRY if item.doc_id == "0" else None)
    result = writer(fake).write(ops(3), time.monotonic(), defer=True)
    assert [op.doc_id for op in result.deferred] == ["0"]
    with pytest.raises(SearchUnavailable):
        writer(fake).write(ops(3), time.monotonic())


def test_items_of_a_blocked_index_are_returned_with_the_reason_and_never_dead_lettered() -> None:
    fake = FakeSearch(answer=lambda item, attempt: BLOCK if item.index == "items" else None)
    mixed = [*ops(2, "items"), *ops(2, "notes")]
    result = writer(fake).write(mixed, time.monotonic(), defer=True)
    assert {(op.alias, op.doc_id) for op in result.blocked} == {("items", "0"), ("items", "1")}
    assert result.dead == []
    assert "cluster_block_exception" in result.block_reasons["items"]
    assert "notes" not in result.block_reasons
    # Without defer (a rebuild) nothing may be left behind: it stops, to be resumed.
    with pytest.raises(SearchUnavailable, match="refuses writes"):
        writer(fake).write(mixed, time.monotonic())


def test_a_body_too_large_is_split_until_each_part_passes() -> None:
    def too_large(items: list[SentItem]) -> None:
        if len(items) > 2:
            raise RequestTooLarge("413")

    fake = FakeSearch(fail_request=too_large)
    result = writer(fake).write(ops(8), time.monotonic())
    assert result.dead == []
    assert sorted(len(r) for r in fake.requests if len(r) <= 2) == [2, 2, 2, 2]


def test_a_single_item_too_large_for_the_server_is_a_dead_letter() -> None:
    def too_large(items: list[SentItem]) -> None:
        raise RequestTooLarge("413")

    result = writer(FakeSearch(fail_request=too_large)).write(ops(1), time.monotonic())
    assert [(d.status, d.error_type) for d in result.dead] == [(413, "request_too_large")]


def test_a_circuit_broken_request_is_split_in_halves() -> None:
    def breaker(items: list[SentItem]) -> None:
        if len(items) > 3:
            raise CircuitBroken("[parent] Data too large")

    fake = FakeSearch(fail_request=breaker)
    result = writer(fake).write(ops(12), time.monotonic())
    assert result.dead == [] and result.deferred == []
    assert sorted(len(r) for r in fake.requests) == [3, 3, 3, 3, 6, 6, 12]


def test_the_body_is_cut_by_bytes_and_an_item_is_never_split() -> None:
    big = '{"text":"' + "x" * 400 + '"}'
    fake = FakeSearch()
    item_bytes = len(ops(1, source=big)[0].encode())
    writer(fake, max_bytes=2 * item_bytes + 10).write(ops(6, source=big), time.monotonic())
    assert [len(r) for r in fake.requests] == [2, 2, 2]
    assert all(item.source == big for r in fake.requests for item in r)


def test_bulk_concurrency_bounds_the_requests_in_flight_whatever_thread_sends() -> None:
    from concurrent.futures import ThreadPoolExecutor

    fake = FakeSearch(delay=0.02)
    shared = writer(fake, concurrency=2, max_bytes=200)
    # Four lanes at once, as a worker's lanes do, each with a batch of several requests.
    with ThreadPoolExecutor(4) as lanes:
        for future in [lanes.submit(shared.write, ops(6), time.monotonic()) for _ in range(4)]:
            future.result()
    assert fake.in_flight_max == 2


def test_documents_read_too_long_ago_are_never_sent() -> None:
    fake = FakeSearch()
    with pytest.raises(StaleRead):
        writer(fake).write(ops(2), time.monotonic() - 61)
    assert fake.requests == []
