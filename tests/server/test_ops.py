"""Operations: metrics, health endpoints, the Docker files and the documented privileges.

Everything runs against the real servers of conftest.py; faults come from the proxy in front
of the search server (a real cluster has no proxy, so those tests are skipped there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from indexsync import __version__
from indexsync.errors import ConfigError, DatabaseUnavailable
from indexsync.health import Health
from indexsync.httpserver import MetricsServer
from indexsync.metrics import (
    DEAD_LETTER,
    OTHER,
    RETRY_429,
    VERSION_CONFLICT,
    BatchCounts,
    Metrics,
    error_type,
)
from indexsync.monitor import Monitor
from indexsync.poller import StatusPoller
from indexsync.search import Search
from indexsync.settings import Settings
from indexsync.status import IndexStatus, collect
from indexsync.store import Store
from tests.support.env import Env, running, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"

# --- helpers -------------------------------------------------------------------------------

# Never route test requests through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, accept: str | None = None) -> tuple[int, bytes, str]:
    """Status, body and content type of a GET; error statuses are returned, not raised."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def readyz(server: MetricsServer) -> tuple[int, dict[str, Any]]:
    status, body, _ = http_get(server.url + "/readyz")
    return status, json.loads(body)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def articles(env: Env, rows: int = 0) -> str:
    """The sample table of docker/init.sql, plus `rows` more, bound as `articles`."""
    env.sql((DOCKER / "init.sql").read_text(encoding="utf-8"))
    if rows:
        env.sql(
            "INSERT INTO articles (title, published) SELECT 'row ' || i, true "
            "FROM generate_series(1, %s) i",
            (rows,),
        )
    alias = env.alias("articles")
    text = (DOCKER / "indexsync.toml").read_text(encoding="utf-8")
    env.bindings(text.replace("[indexes.articles]", f"[indexes.{alias}]"))
    env.mappings_dir.mkdir(exist_ok=True)
    shutil.copy(DOCKER / "mappings" / "articles.json", env.mappings_dir / f"{alias}.json")
    return alias


def backlog(env: Env) -> int:
    return int(env.sql("SELECT count(*) FROM indexsync.outbox")[0][0])


# --- Metrics --------------------------------------------------------------------------------


def test_metrics_count_batches_errors_and_reconnects() -> None:
    metrics = Metrics(indexes=["posts"])
    # Counters of a known index exist at zero before anything happens, for rate().
    assert value(metrics, "indexsync_documents_indexed_total", index="posts") == 0
    assert value(metrics, "indexsync_bulk_item_errors_total", index="posts", type=RETRY_429) == 0

    posts = BatchCounts(changes=5, indexed=3, deleted=1)
    posts.add_error(VERSION_CONFLICT)
    posts.add_error(DEAD_LETTER, 2)
    metrics.batch_done(0.042, {"posts": posts, "tags": BatchCounts(changes=1, deleted=1)})
    metrics.batch_done(1.5, {"posts": BatchCounts(changes=1, indexed=1)})
    metrics.count_errors("posts", "something new")  # an unknown type stays bounded: "other"
    metrics.reconnect("postgresql")
    metrics.reconnect("postgresql")
    metrics.reconnect("search")

    assert value(metrics, "indexsync_changes_total", index="posts") == 6
    assert value(metrics, "indexsync_documents_indexed_total", index="posts") == 4
    assert value(metrics, "indexsync_documents_deleted_total", index="posts") == 1
    assert value(metrics, "indexsync_documents_deleted_total", index="tags") == 1
    errors = partial(value, metrics, "indexsync_bulk_item_errors_total", index="posts")
    assert errors(type=VERSION_CONFLICT) == 1
    assert errors(type=DEAD_LETTER) == 2
    assert errors(type=OTHER) == 1
    assert value(metrics, "indexsync_batch_duration_seconds_count") == 2
    assert value(metrics, "indexsync_batch_duration_seconds_bucket", le="0.05") == 1
    assert value(metrics, "indexsync_batch_duration_seconds_bucket", le="30.0") == 2
    assert value(metrics, "indexsync_reconnects_total", server="postgresql") == 2
    assert value(metrics, "indexsync_reconnects_total", server="search") == 1
    assert value(metrics, "indexsync_last_success_timestamp_seconds", index="tags") is not None
    assert value(metrics, "indexsync_build_info", version=__version__) == 1

    # No global state: a second instance starts from zero.
    other = Metrics(CollectorRegistry(), process_metrics=False)
    assert value(other, "indexsync_reconnects_total", server="postgresql") == 0
    assert value(other, "indexsync_changes_total", index="posts") is None


def test_error_types_of_bulk_statuses() -> None:
    assert error_type(409) == VERSION_CONFLICT
    assert error_type(429) == RETRY_429
    assert error_type(503) == "retry_5xx"
    assert error_type(400) == DEAD_LETTER
    assert error_type(200) == OTHER


def test_status_gauges_follow_rebuilds_and_removed_indexes() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.observe_status(
        [
            IndexStatus("posts", backlog=7, oldest_pending_seconds=12.5, dead_letters=2),
            IndexStatus(
                "tags", rebuild_target="tags-2", rebuild_rows_done=10, rebuild_rows_total=40
            ),
        ]
    )
    assert value(metrics, "indexsync_backlog", index="posts") == 7
    assert value(metrics, "indexsync_lag_seconds", index="posts") == 12.5
    assert value(metrics, "indexsync_lag_seconds", index="tags") == 0
    assert value(metrics, "indexsync_dead_letters", index="posts") == 2
    assert value(metrics, "indexsync_reindex_rows_done", index="tags") == 10
    assert value(metrics, "indexsync_reindex_rows_total", index="tags") == 40
    # An empty backlog is a success; a waiting one is not.
    assert value(metrics, "indexsync_last_success_timestamp_seconds", index="tags") is not None
    assert value(metrics, "indexsync_last_success_timestamp_seconds", index="posts") is None

    # The rebuild ended and the posts binding went away: their series go, not freeze.
    metrics.observe_status([IndexStatus("tags")])
    assert value(metrics, "indexsync_reindex_rows_done", index="tags") is None
    assert value(metrics, "indexsync_reindex_rows_total", index="tags") is None
    assert value(metrics, "indexsync_backlog", index="posts") is None
    assert value(metrics, "indexsync_backlog", index="tags") == 0


def test_observe_status_reads_the_real_outbox(env: Env) -> None:
    alias = articles(env, rows=20)
    env.install("--no-backfill")
    env.sql("UPDATE articles SET title = title || '!'")  # 24 changes queued
    metrics = Metrics(process_metrics=False)
    with Store.connect(env.settings()) as store:
        metrics.observe_status(collect(store, [alias]))
        assert value(metrics, "indexsync_backlog", index=alias) == 24  # 4 sample rows + 20
        lag = value(metrics, "indexsync_lag_seconds", index=alias)
        assert lag is not None and lag >= 0
        env.sync()
        metrics.observe_status(collect(store, [alias]))
    assert value(metrics, "indexsync_backlog", index=alias) == 0
    assert value(metrics, "indexsync_lag_seconds", index=alias) == 0


# --- Health (a manual clock) ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_health_needs_both_servers_and_movement() -> None:
    clock = Clock()
    health = Health(stall_seconds=30, stale_after=20, clock=clock)
    state = health.readiness()
    assert not state.ready
    assert any("not checked yet" in r for r in state.reasons)

    health.database_ok(True)
    health.search_ok(True)
    health.progress(100)
    assert health.readiness().ready  # a backlog at start is not a stall

    clock.now += 31
    health.database_ok(True)
    health.search_ok(True)
    health.progress(100)
    state = health.readiness()
    assert not state.ready and state.backlog == 100
    assert state.reasons == ["stalled: backlog of 100 change(s) has not moved for 31s (limit 30s)"]

    health.batch_done()  # a batch landed although writers keep the backlog level
    assert health.readiness().ready
    clock.now += 31
    health.database_ok(True)
    health.search_ok(True)
    health.progress(90)  # it shrank
    assert health.readiness().ready
    clock.now += 31
    health.database_ok(True)
    health.search_ok(True)
    health.progress(0)  # empty is never a stall, however long it stays empty
    clock.now += 300
    health.database_ok(True)
    health.search_ok(True)
    assert health.readiness().ready

    health.search_ok(False, "cannot reach Elasticsearch: connection refused")
    assert health.readiness().reasons == [
        "search check failed: cannot reach Elasticsearch: connection refused"
    ]
    health.search_ok(True)
    clock.now += 21  # no check for a while: the poller hangs or died
    assert health.readiness().reasons == [
        "postgresql: last successful check 21s ago",
        "search: last successful check 21s ago",
    ]


def test_health_reasons_never_show_passwords() -> None:
    health = Health(clock=Clock())
    health.database_ok(False, "cannot connect to postgresql://app:s3cret@db/app")
    health.search_ok(True)
    assert "s3cret" not in json.dumps(health.readiness().as_json())


def test_health_is_thread_safe() -> None:
    health = Health(stall_seconds=60)
    errors: list[BaseException] = []

    def hammer(n: int) -> None:
        try:
            for i in range(2000):
                health.progress(i % 7 + n)
                health.batch_done()
                health.database_ok(i % 2 == 0)
                health.readiness()
        except BaseException as exc:  # pragma: no cover - a failure is reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# --- the HTTP server ---------------------------------------------------------------------------


def test_server_endpoints_and_content_types() -> None:
    metrics = Metrics(indexes=["posts"])
    health = Health()
    with MetricsServer(metrics, health, port=None) as server:
        assert server.port > 0
        status, body, content_type = http_get(server.url + "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        assert b'indexsync_documents_indexed_total{index="posts"} 0.0' in body
        assert b"process_resident_memory_bytes" in body
        status, body, content_type = http_get(
            server.url + "/metrics", accept="application/openmetrics-text; version=1.0.0"
        )
        assert status == 200 and content_type.startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
        assert http_get(server.url + "/healthz")[:2] == (200, b'{"alive": true}\n')
        status, body = readyz(server)
        assert status == 503 and body["ready"] is False
        assert http_get(server.url + "/nope")[0] == 404
    # Stopped means the port is free again.
    with socket.create_server(("127.0.0.1", server.port)):
        pass


def test_server_refuses_a_taken_port_and_port_zero() -> None:
    metrics, health = Metrics(process_metrics=False), Health()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = MetricsServer(metrics, health, port=port)
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            server.start()
    with pytest.raises(ValueError, match="port 0 disables"):
        MetricsServer(metrics, health, port=0)


def test_monitor_with_port_zero_serves_nothing() -> None:
    def connect() -> psycopg.Connection[Any]:
        raise AssertionError("a disabled monitor must not connect")

    with Monitor(connect=connect, aliases=["posts"], ping=lambda: None, port=0) as monitor:
        assert monitor.server is None
        monitor.metrics.batch_done(0.1, {"posts": BatchCounts(changes=1, indexed=1)})
    assert monitor.poller.checks == 0


# --- readiness against the real servers -------------------------------------------------------


def _connector(env: Env) -> Callable[[], Store]:
    settings = env.settings()
    return partial(Store.connect, settings, role="health")


@pytest.fixture
def search(env: Env) -> Iterator[Search]:
    client = Search.connect(env.settings())
    try:
        yield client
    finally:
        client.close()


def test_readyz_reports_a_stalled_backlog_until_the_worker_drains_it(
    env: Env, search: Search
) -> None:
    alias = articles(env, rows=10)
    env.install("--no-backfill")
    env.sql("UPDATE articles SET title = title || '!'")  # 14 changes queued
    with Monitor(
        connect=_connector(env),
        aliases=[alias],
        ping=partial(search.health_ping, 2.0),
        port=None,
        stall_seconds=1.0,
        interval=0.1,
    ) as monitor:
        assert monitor.server is not None
        server = monitor.server
        # Nothing drains the outbox: after stall_seconds readiness fails, saying why.
        _, body = wait_for(lambda: (r := readyz(server))[0] == 503 and "stalled" in str(r) and r)
        assert body["backlog"] == 14
        assert len(body["reasons"]) == 1
        assert body["reasons"][0].startswith("stalled: backlog of 14 change(s) has not moved")
        rendered = http_get(server.url + "/metrics")[1].decode()
        assert f'indexsync_backlog{{index="{alias}"}} 14.0' in rendered
        assert 'indexsync_server_up{server="search"} 1.0' in rendered

        env.sync()
        _, body = wait_for(lambda: (r := readyz(server))[0] == 200 and r)
        assert body == {"ready": True, "reasons": [], "backlog": 0}
        assert (
            f'indexsync_backlog{{index="{alias}"}} 0.0'
            in http_get(server.url + "/metrics")[1].decode()
        )


@pytest.mark.proxy
def test_readyz_follows_a_search_outage(env: Env, search: Search) -> None:
    proxy = env.search.proxy
    if proxy is None:
        pytest.skip("needs the fault-injecting proxy (not available against a real cluster)")
    alias = articles(env)
    env.install()
    env.sync()
    with Monitor(
        connect=_connector(env),
        aliases=[alias],
        ping=partial(search.health_ping, 1.0),
        port=None,
        stall_seconds=5.0,
        interval=0.1,
    ) as monitor:
        assert monitor.server is not None
        server = monitor.server
        wait_for(lambda: readyz(server)[0] == 200)
        proxy.faults.outage_on()
        try:
            _, body = wait_for(lambda: (r := readyz(server))[0] == 503 and r, timeout=10)
            assert [r.split(":")[0] for r in body["reasons"]] == ["search check failed"]
            assert (
                'indexsync_server_up{server="search"} 0.0'
                in http_get(server.url + "/metrics")[1].decode()
            )
        finally:
            proxy.faults.outage_off()
        wait_for(lambda: readyz(server)[0] == 200, timeout=10)


def test_poller_reconnects_after_losing_the_database(env: Env, search: Search) -> None:
    alias = articles(env)
    env.install()
    down = threading.Event()
    connect = _connector(env)

    def flaky_connect() -> psycopg.Connection[Any]:
        if down.is_set():
            raise DatabaseUnavailable("cannot connect to PostgreSQL: (test) connection refused")
        return connect()

    health = Health(stall_seconds=60)
    metrics = Metrics(process_metrics=False)
    poller = StatusPoller(
        connect=flaky_connect,
        aliases=[alias],
        health=health,
        ping=partial(search.health_ping, 2.0),
        metrics=metrics,
        interval=0.05,
    )
    with poller:
        wait_for(lambda: health.readiness().ready)
        # The server drops our session, and refuses new ones for a while.
        down.set()
        env.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'indexsync:health'"
        )
        state = wait_for(lambda: (s := health.readiness()) and not s.ready and s)
        assert state.reasons[0].startswith("postgresql check failed: ")
        assert value(metrics, "indexsync_server_up", server="postgresql") == 0
        down.clear()
        wait_for(lambda: health.readiness().ready)
        assert value(metrics, "indexsync_server_up", server="postgresql") == 1
    # stop() closed the poller's own connection.
    assert not env.sql("SELECT 1 FROM pg_stat_activity WHERE application_name = 'indexsync:health'")


# --- docker-compose.yml and the Dockerfile ----------------------------------------------------


def _compose() -> dict[str, Any]:
    import yaml  # PyYAML: a test dependency

    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _settings_variables() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            names.update(str(choice) for choice in choices)
        else:
            names.add(f"INDEXSYNC_{name.upper()}")
    return names


def test_compose_has_a_profile_per_engine_with_healthchecks() -> None:
    services = _compose()["services"]
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:17" or postgres["image"].startswith("postgres:17.")
    # The host's own PostgreSQL keeps port 5432.
    assert not any(port.endswith(":5432:5432") for port in postgres["ports"])
    assert postgres["healthcheck"]["test"]
    engines = {
        "elasticsearch": ("es9", r"docker\.elastic\.co/elasticsearch/elasticsearch:9\.\d+\.\d+"),
        "elasticsearch8": ("es8", r"docker\.elastic\.co/elasticsearch/elasticsearch:8\.\d+\.\d+"),
        "opensearch": ("opensearch2", r"opensearchproject/opensearch:2\.\d+\.\d+"),
    }  # fmt: skip
    for name, (profile, image) in engines.items():
        service = services[name]
        assert service["profiles"] == [profile]
        assert re.fullmatch(image, service["image"])
        assert service["environment"]["discovery.type"] == "single-node"
        assert service["healthcheck"]["test"]
        assert service["networks"]["default"]["aliases"] == ["search"]
    for name in ("install", "worker"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        for engine in engines:
            assert depends[engine] == {"condition": "service_healthy", "required": False}
    assert services["install"]["command"] == ["install"]
    assert services["worker"]["command"] == ["run"]
    assert services["worker"]["depends_on"]["install"]["condition"] == (
        "service_completed_successfully"
    )
    # The files the containers mount exist.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_every_indexsync_variable_in_compose_and_dockerfile_is_a_setting() -> None:
    known = _settings_variables()
    used = set(re.findall(r"\bINDEXSYNC_[A-Z_]+\b", (ROOT / "docker-compose.yml").read_text()))
    used |= set(re.findall(r"\bINDEXSYNC_[A-Z_]+\b", (ROOT / "Dockerfile").read_text()))
    assert used, "compose should configure indexsync through INDEXSYNC_* variables"
    assert sorted(used - known) == []


def test_the_dockerfile_runs_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["indexsync"\]', text, re.M)
    assert re.search(r"^HEALTHCHECK ", text, re.M) and "/readyz" in text


def test_the_compose_samples_sync(env: Env) -> None:
    """docker/init.sql, docker/indexsync.toml and the mapping work together."""
    alias = articles(env)
    env.install()
    env.sync()
    assert sorted(env.docs("articles")) == ["1", "2", "3"]  # the draft is not published
    doc = env.docs("articles")["1"]
    assert doc["title"] == "Hello, indexsync" and doc["tags"] == ["intro"]
    assert "published" not in doc
    mapping = env.http.request("GET", f"/{alias}/_mapping")
    assert next(iter(mapping.values()))["mappings"]["properties"]["author"] == {"type": "keyword"}


# --- the documented privileges ----------------------------------------------------------------


def _documented_grants(marker: str) -> str:
    text = (ROOT / "docs" / "privileges.md").read_text(encoding="utf-8")
    start = text.index(f"<!-- grants:{marker} -->")
    match = re.compile(r"```sql\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no ```sql block after the {marker} marker"
    return match.group(1)


def test_documented_grants_are_enough_for_install_and_run(env: Env) -> None:
    """The roles of docs/privileges.md, with exactly the GRANTs written there, work."""
    suffix = f"{os.getpid()}_{threading.get_ident() % 10_000}"
    names = {
        "indexsync_installer": f"indexsync_installer_{suffix}",
        "indexsync_worker": f"indexsync_worker_{suffix}",
        "app_writer": f"app_writer_{suffix}",
    }
    dbname = psycopg.conninfo.conninfo_to_dict(env.database_url)["dbname"]

    def localise(block: str) -> str:
        # The docs' role and database names, made unique to this test run.
        for doc_name, real in names.items():
            block = re.sub(rf"\b{doc_name}\b", real, block)
        return re.sub(r"\bappdb\b", f'"{dbname}"', block)

    def url(role: str) -> str:
        return psycopg.conninfo.make_conninfo(
            env.database_url, user=names[role], password="change-me"
        )

    alias = articles(env)  # the table is owned by the superuser, not by any of the roles
    try:
        env.sql(localise(_documented_grants("before-install")))

        result = env.cli("install", INDEXSYNC_DATABASE_URL=url("indexsync_installer"))
        assert result.returncode == 0, result.stderr
        with psycopg.connect(url("indexsync_installer"), autocommit=True) as conn:
            conn.execute(localise(_documented_grants("after-install")))  # type: ignore[arg-type]

        # The application keeps writing; its writes go through the capture triggers.
        with psycopg.connect(url("app_writer"), autocommit=True) as conn:
            conn.execute("INSERT INTO articles (title, published) VALUES ('by the app', true)")
            conn.execute("UPDATE articles SET title = 'edited' WHERE id = 1")
            conn.execute("DELETE FROM articles WHERE id = 2")

        worker = url("indexsync_worker")
        result = env.cli("run", "--until-idle", INDEXSYNC_DATABASE_URL=worker)
        assert result.returncode == 0, result.stderr
        with running(env, INDEXSYNC_DATABASE_URL=worker) as log:
            # The application waits for its own writes with no more than the documented grant.
            with psycopg.connect(url("app_writer"), autocommit=True) as conn:
                conn.execute("UPDATE articles SET title = 'waited for' WHERE id = 1")
                waited = conn.execute(
                    "SELECT indexsync.wait_for_search(%s, timeout => '20 s')", (alias,)
                ).fetchone()
            assert waited == (True,)
        assert "waker.failed" not in log[0]
        docs = env.docs("articles")
        assert sorted(docs) == ["1", "3", "5"]
        assert docs["1"]["title"] == "waited for" and docs["5"]["title"] == "by the app"
        for command in (["status"], ["verify"], ["deadletters"]):
            result = env.cli(*command, INDEXSYNC_DATABASE_URL=worker)
            assert result.returncode == 0, (command, result.stderr)

        result = env.cli("reindex", INDEXSYNC_DATABASE_URL=url("indexsync_installer"))
        assert result.returncode == 0, result.stderr
        assert backlog(env) == 0
        assert env.search.prefix + "articles" == alias
    finally:
        # Roles belong to the cluster, not to the test's database: remove them.
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            for (name,) in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(names.values()),)
            ).fetchall():
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
