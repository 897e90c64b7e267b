"""indexsync's own schema: versioned migrations, upgrades under load, and what ships."""

from __future__ import annotations

import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import psycopg
import pytest

from indexsync import migrations
from tests.support.env import Env, running, wait_for

ROOT = Path(__file__).resolve().parents[2]

# What releases before numbered migrations left in a database: migration 1's objects, no
# schema version, no binding state, no SQLSTATE on dead letters.
DOWNGRADE_TO_UNVERSIONED = """
DROP FUNCTION indexsync.wait_for_search(text, interval);
DROP FUNCTION indexsync.wait_key(text);
DROP FUNCTION indexsync.lead_key(text);
DROP FUNCTION indexsync.generation_key(text, bigint);
DROP TABLE indexsync.searchable;
ALTER TABLE indexsync.outbox DROP COLUMN origin, DROP COLUMN routing;
ALTER TABLE indexsync.dead_letters DROP COLUMN first_change, DROP COLUMN last_change;
DROP TABLE indexsync.bindings;
DROP TABLE indexsync.workers;
ALTER TABLE indexsync.rebuilds DROP COLUMN floor;
DELETE FROM indexsync.meta WHERE key IN ('bindings_version', 'install_id');
DROP TABLE indexsync.binding_state;
ALTER TABLE indexsync.dead_letters DROP COLUMN sqlstate;
DELETE FROM indexsync.meta WHERE key = 'schema_version';
"""


def test_an_unversioned_install_is_upgraded_under_load_and_keeps_every_queued_change(
    env: Env,
) -> None:
    env.sql("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)")
    env.bindings(f'[indexes.{env.alias("notes")}]\ntable = "notes"\n')
    env.install()
    env.sql(DOWNGRADE_TO_UNVERSIONED)
    # Releases before schema 3 recorded no owner in the index either.
    env.http.request("PUT", f"/{env.alias('notes')}/_mapping", body={"_meta": {}})
    env.sql("INSERT INTO notes SELECT g, 'before the upgrade' FROM generate_series(1, 500) g")
    assert env.sql("SELECT count(*) FROM indexsync.outbox")[0][0] == 500

    # A worker of this release refuses the old schema, naming both versions and the fix.
    refused = env.cli("run", "--until-idle")
    assert refused.returncode == 2
    assert "version 0" in refused.stderr and f"({migrations.latest()})" in refused.stderr
    assert "indexsync install" in refused.stderr
    status = env.cli("status")
    assert status.returncode == 2 and "indexsync install" in status.stderr

    stop = threading.Event()
    written = []

    def write() -> None:
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            n = 1000
            while not stop.is_set():
                n += 1
                conn.execute("INSERT INTO notes VALUES (%s, 'during the upgrade')", (n,))
                written.append(n)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(lambda: len(written) > 50, what="writes before the upgrade")
        upgraded = env.install()
        assert f"migrated to version {migrations.latest()}" in upgraded.stdout
        with running(env):
            after = len(written)
            wait_for(lambda: len(written) > after + 100, what="writes after the upgrade")
            stop.set()
            writer.join()
            wait_for(
                lambda: env.sql("SELECT count(*) FROM indexsync.outbox")[0][0] == 0,
                what="the backlog drained by the upgraded worker",
            )
    finally:
        stop.set()
        writer.join()
    expected = env.expected("SELECT id, to_jsonb(n) FROM notes n")
    assert len(expected) == 500 + len(written)
    assert env.docs("notes") == expected
    assert env.sql("SELECT value FROM indexsync.meta WHERE key = 'schema_version'") == [
        (str(migrations.latest()),)
    ]
    check = env.cli("check")
    assert f"indexsync schema at version {migrations.latest()}" in check.stdout


def test_a_schema_newer_than_the_release_is_refused_by_the_worker_and_install(env: Env) -> None:
    env.sql("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)")
    env.bindings(f'[indexes.{env.alias("notes")}]\ntable = "notes"\n')
    env.install()
    env.sql("UPDATE indexsync.meta SET value = '99' WHERE key = 'schema_version'")
    for command in ("run", "install"):
        result = env.cli(command, "--until-idle") if command == "run" else env.cli(command)
        assert result.returncode == 2
        assert "version 99" in result.stderr and "upgrade indexsync" in result.stderr


def test_print_sql_carries_the_migrations_and_records_the_version(env: Env) -> None:
    env.sql("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)")
    env.bindings(f'[indexes.{env.alias("notes")}]\ntable = "notes"\n')
    printed = env.cli("install", "--print-sql")
    assert printed.returncode == 0
    for step in migrations.migrations():
        assert f"-- migration {step.number}: {step.name}" in printed.stdout
    assert "'schema_version'" in printed.stdout


@pytest.mark.slow
def test_the_wheel_holds_only_the_product_and_imports_without_extras(tmp_path: Path) -> None:
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    subprocess.run([*pip_wheel, "-w", str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("indexsync-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top <= {"indexsync", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    modules = sorted(n for n in names if n.startswith("indexsync/") and n.endswith(".py"))
    for tool in ("esproxy", "faultkit", "demo", "conftest", "fakes"):
        assert not any(tool in name for name in names), tool
    assert "indexsync/sql/queries.sql" in names
    assert any(n.startswith("indexsync/sql/migrations/0001_") for n in names)
    # A production install, without the test, embedded or opensearch extras: every module
    # imports.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)], check=True)
    imports = "; ".join(
        f"import {name[:-3].replace('/', '.')}" for name in modules if not name.endswith("__.py")
    )
    probe = subprocess.run(
        [python, "-c", f"{imports}; import osmem_server"], capture_output=True, text=True
    )
    assert "No module named 'osmem_server'" in probe.stderr, probe.stderr
    subprocess.run([python, "-c", imports], check=True)
