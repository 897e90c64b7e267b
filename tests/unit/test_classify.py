"""What each answer of the search server means: bulk items and whole requests."""

from __future__ import annotations

import pytest

from indexsync.clients import HttpFailure
from indexsync.errors import CredentialsRejected, IndexMissing, SearchError, SearchUnavailable
from indexsync.search import (
    CircuitBroken,
    Outcome,
    RequestBlocked,
    RequestTooLarge,
    classify,
    translate,
)


def item(status: int, error_type: str = "", reason: str = "", action: str = "index") -> dict:
    body: dict = {"status": status}
    if error_type:
        body["error"] = {"type": error_type, "reason": reason}
    return {action: body}


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (item(201), Outcome.DONE),
        (item(409, "version_conflict_engine_exception"), Outcome.DONE),
        (item(404, "", "", "delete"), Outcome.DONE),
        (item(429, "es_rejected_execution_exception"), Outcome.RETRY),
        (item(429, "circuit_breaking_exception"), Outcome.RETRY),
        (item(503, "unavailable_shards_exception"), Outcome.RETRY),
        (item(400, "mapper_parsing_exception"), Outcome.DEAD),
        (item(400, "illegal_argument_exception",
              "Limit of total fields [1000] has been exceeded"), Outcome.DEAD),
        (item(403, "cluster_block_exception", "blocked by: [FORBIDDEN/8/index write (api)]"),
         Outcome.BLOCKED),
        (item(403, "cluster_block_exception", "blocked by: [FORBIDDEN/5/index read-only (api)]"),
         Outcome.BLOCKED),
        (item(429, "cluster_block_exception",
              "blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark]"),
         Outcome.BLOCKED),
        (item(403, "security_exception", "action [indices:data/write/bulk[s]] is unauthorized"),
         Outcome.BLOCKED),
        (item(404, "index_not_found_exception"), Outcome.MISSING_INDEX),
    ],
)  # fmt: skip
def test_every_bulk_item_answer_has_one_meaning(answer: dict, outcome: Outcome) -> None:
    assert classify(answer).outcome is outcome


def failure(status: int, error_type: str, reason: str = "r") -> HttpFailure:
    return HttpFailure(status, {"error": {"type": error_type, "reason": reason}, "status": status})


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (failure(401, "security_exception"), CredentialsRejected),
        (failure(413, "content_too_long_exception"), RequestTooLarge),
        (failure(429, "circuit_breaking_exception"), CircuitBroken),
        (failure(429, "es_rejected_execution_exception"), SearchUnavailable),
        (failure(403, "cluster_block_exception"), RequestBlocked),
        (failure(503, "unavailable_shards_exception"), SearchUnavailable),
        (failure(404, "index_not_found_exception"), IndexMissing),
        (failure(400, "illegal_argument_exception"), SearchError),
    ],
)
def test_every_request_failure_maps_to_one_error(answer: HttpFailure, error: type) -> None:
    assert type(translate(answer)) is error


def test_a_secret_in_an_error_never_reaches_the_message() -> None:
    leaked = failure(400, "x", "cannot reach http://elastic:s3cret@host:9200/")
    assert "s3cret" not in str(translate(leaked))
