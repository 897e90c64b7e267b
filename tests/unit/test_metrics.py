"""Metrics: the status gauges follow the status rows (paused indexes and refreshes come and
go), and the freshness histogram counts each change once, in its bucket."""

from __future__ import annotations

import pytest

from indexsync.metrics import Metrics
from indexsync.status import IndexStatus


def sample(metrics: Metrics, name: str, index: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"index": index})


def test_a_refresh_is_reported_while_it_runs_and_a_paused_index_is_flagged() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.observe_status(
        [
            IndexStatus("orders", refreshing=True, refresh_done=1500),
            IndexStatus("notes", paused_reason="its SQL fails: column x does not exist"),
        ]
    )
    assert sample(metrics, "indexsync_refresh_queued", "orders") == 1500
    assert sample(metrics, "indexsync_binding_paused", "notes") == 1
    assert sample(metrics, "indexsync_binding_paused", "orders") == 0
    metrics.observe_status([IndexStatus("orders"), IndexStatus("notes")])
    assert sample(metrics, "indexsync_refresh_queued", "orders") is None
    assert sample(metrics, "indexsync_binding_paused", "notes") == 0


def test_commit_to_searchable_counts_each_change_in_its_bucket_cumulatively() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = Metrics(process_metrics=False)
    metrics.observe_freshness("posts", [0.01, 0.025, 0.3, 2.0, 4000.0])
    metrics.observe_freshness("posts", [0.2])
    (family,) = [
        f
        for f in text_string_to_metric_families(metrics.render().decode())
        if f.name == "indexsync_commit_to_searchable_seconds"
    ]
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    bucket = "indexsync_commit_to_searchable_seconds_bucket"
    assert samples[(bucket, "0.025")] == 2  # a change at the bound counts in it
    assert samples[(bucket, "0.25")] == 3
    assert samples[(bucket, "0.5")] == 4
    assert samples[(bucket, "900.0")] == 5
    assert samples[(bucket, "+Inf")] == 6
    assert samples[("indexsync_commit_to_searchable_seconds_count", None)] == 6
    assert samples[("indexsync_commit_to_searchable_seconds_sum", None)] == pytest.approx(4002.535)
