"""The status gauges follow the status rows: paused indexes and refreshes come and go."""

from __future__ import annotations

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
