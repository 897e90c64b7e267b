"""The Grafana dashboard of deploy/grafana queries only metrics a running worker exports,
and shows per index everything an operator asks first: backlog and the oldest change,
freshness, throughput, batch duration, dead letters, conflicts and retries, pauses and
rebuild progress."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.env import Env, running, wait_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "indexsync.json"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# What a histogram's or a counter's series add to the family's name.
_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _family(series: str) -> str:
    for suffix in _SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def test_every_metric_the_dashboard_queries_is_exported_by_a_running_worker(env: Env) -> None:
    env.sql("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL)")
    env.sql("INSERT INTO items SELECT g, g FROM generate_series(1, 50) g")
    env.bindings(f'[indexes.{env.alias("items")}]\ntable = "items"\n')
    env.install("--wait")
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    named = {name for expr in _queries(dashboard) for name in re.findall(r"indexsync_\w+", expr)}
    wanted = {_family(name) for name in named}
    port = _free_port()
    with running(env, INDEXSYNC_METRICS_PORT=str(port), INDEXSYNC_HEALTH_INTERVAL="0.5"):
        env.sql("UPDATE items SET n = n + 1 WHERE id <= 10")
        assert env.cli("wait", "--timeout", "30").returncode == 0

        def scrape() -> set[str]:
            with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                text = response.read().decode()
            return {family.name for family in text_string_to_metric_families(text)}

        exported = wait_for(lambda: scrape() if "indexsync_backlog" in scrape() else None)
    # A series is its family's name plus a suffix, or a family of its own (a gauge named
    # `..._total` is one).
    missing = sorted(
        name for name in named if name not in exported and _family(name) not in exported
    )
    assert not missing, f"the dashboard queries metrics no worker exports: {missing}"
    # What the operator asks first is all there.
    for family in (
        "indexsync_backlog",
        "indexsync_lag_seconds",
        "indexsync_commit_to_searchable_seconds",
        "indexsync_changes",
        "indexsync_batch_duration_seconds",
        "indexsync_dead_letters",
        "indexsync_bulk_item_errors",
        "indexsync_paused_by_operator",
        "indexsync_reindex_rows_done",
    ):
        assert family in wanted | named, f"the dashboard does not show {family}"


def test_the_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "index"} <= variables
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            # Per index: every query of an index's series is filtered by the variable.
            if "index" in target["legendFormat"]:
                assert 'index=~"$index"' in target["expr"], target["expr"]
