"""Health tells the truth: one definition of healthy, held by `status`, `check` and /readyz.

Healthy means both servers answer, a worker has been alive within the stall window whenever
work waits, and no index is paused, stalled, unbound or holding dead letters (see
indexsync/status.py, and docs/operations.md#health).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from tests.support.env import Env, running, wait_for

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing answers HTTP there


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _items(env: Env) -> None:
    env.sql("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL)")
    env.sql("INSERT INTO items SELECT g, g FROM generate_series(1, 20) g")
    env.bindings(f'[indexes.{env.alias("items")}]\ntable = "items"\n')


def test_status_and_check_fail_with_the_search_server_down_and_check_lists_everything(
    env: Env,
) -> None:
    _items(env)
    env.install("--wait")
    status = env.cli("status", "--json", INDEXSYNC_ELASTICSEARCH_URL=DEAD_URL)
    assert status.returncode == 1, status.stderr
    report = json.loads(status.stdout)
    assert not report["healthy"]
    assert any("search server is unreachable" in p for p in report["problems"])
    # One reason, once: not the client's "X caused by: X" chain, nor object addresses.
    assert "caused by" not in status.stdout and "object at 0x" not in status.stdout
    check = env.cli("check", INDEXSYNC_ELASTICSEARCH_URL=DEAD_URL)
    assert check.returncode == 1, check.stderr
    assert "ok      PostgreSQL answers" in check.stdout
    assert "ok      indexsync schema at version" in check.stdout
    assert "FAILED  search server" in check.stdout
    assert "skipped index aliases" in check.stdout
    assert "Traceback" not in check.stderr


def test_work_waiting_with_no_live_worker_is_a_problem_for_status_and_check(env: Env) -> None:
    _items(env)
    env.install("--wait")
    env.sql("UPDATE items SET n = n + 1 WHERE id <= 3")
    assert env.cli("status", INDEXSYNC_STALL_SECONDS="60").returncode == 0, "fresh work is fine"
    env.sql("UPDATE indexsync.outbox SET created_at = now() - interval '120 seconds'")
    status = env.cli("status", INDEXSYNC_STALL_SECONDS="60")
    assert status.returncode == 1
    assert "no worker has been alive" in status.stdout
    check = env.cli("check", INDEXSYNC_STALL_SECONDS="60")
    assert check.returncode == 1
    assert "no worker has been alive" in check.stdout
    with running(env, INDEXSYNC_STALL_SECONDS="60"):
        wait_for(lambda: env.cli("status").returncode == 0, what="a live worker drains it")
        workers = env.sql("SELECT count(*) FROM indexsync.workers")[0][0]
        assert workers == 1
    assert env.sql("SELECT count(*) FROM indexsync.workers")[0][0] == 0, "a clean stop says so"


def test_a_backfill_no_worker_ever_ran_is_not_ok(env: Env) -> None:
    _items(env)
    env.install()  # the backfill is left to workers, and none runs
    env.sql("UPDATE indexsync.rebuilds SET started_at = now() - interval '120 seconds'")
    status = env.cli("status", "--json", INDEXSYNC_STALL_SECONDS="60")
    assert status.returncode == 1
    assert any("no worker has been alive" in p for p in json.loads(status.stdout)["problems"])


def test_status_check_and_readyz_agree_on_a_dead_letter_and_on_health(env: Env) -> None:
    env.sql("CREATE TABLE things (id int PRIMARY KEY, n text)")
    env.sql("INSERT INTO things VALUES (1, '1'), (2, '2')")
    env.bindings(f'[indexes.{env.alias("things")}]\ntable = "things"\n')
    env.mapping("things", {"mappings": {"properties": {"n": {"type": "integer"}}}})
    env.install("--wait")
    port = _free_port()
    with running(env, INDEXSYNC_METRICS_PORT=str(port), INDEXSYNC_HEALTH_INTERVAL="0.2"):
        wait_for(lambda: readyz(port)[0] == 200, what="a ready worker")
        assert env.cli("status").returncode == 0
        env.sql("UPDATE things SET n = 'abc' WHERE id = 2")
        wait_for(
            lambda: env.sql("SELECT count(*) FROM indexsync.dead_letters")[0][0] == 1,
            what="the refused document's dead letter",
        )
        _code, body = wait_for(lambda: (r := readyz(port))[0] == 503 and r, what="not ready")
        assert any("dead letter" in reason for reason in body["reasons"]), body
        status = env.cli("status")
        assert status.returncode == 1 and "dead letter" in status.stdout
        env.sql("UPDATE things SET n = '2' WHERE id = 2")
        wait_for(lambda: readyz(port)[0] == 200, what="ready again once the row is mended")
        assert env.cli("status").returncode == 0
