"""The command line without traps: the mistakes a newcomer makes get a plain answer."""

from __future__ import annotations

import subprocess
import sys

from tests.support.env import Env

ITEMS = "CREATE TABLE items (id int PRIMARY KEY, title text)"


def items(env: Env) -> None:
    env.sql(ITEMS)
    env.bindings(f'[indexes.{env.alias("items")}]\ntable = "items"\n')


def test_global_options_work_before_or_after_the_command(env: Env) -> None:
    items(env)
    env.install()
    moved = env.config_path.rename(env.workdir / "elsewhere.toml")
    for args in (
        ("--config", str(moved), "status"),
        ("status", "--config", str(moved)),
        ("status", "--debug", "--config", str(moved)),
        ("--debug", "status", "--config", str(moved)),
    ):
        result = env.cli(*args)
        assert result.returncode == 0, (args, result.stderr)


def test_log_levels_are_case_insensitive(env: Env) -> None:
    items(env)
    env.install()
    assert env.cli("check", INDEXSYNC_LOG_LEVEL="INFO").returncode == 0
    assert env.cli("check", INDEXSYNC_LOG_LEVEL="Warning").returncode == 0


def test_a_misspelt_variable_gets_a_warning_with_the_closest_name(env: Env) -> None:
    items(env)
    (env.workdir / ".env").write_text("INDEXSYNC_DATABSE_URL=postgresql://x@y/z\n")
    result = env.cli("check", INDEXSYNC_BATCH_SIZ="10")
    assert "INDEXSYNC_DATABSE_URL" in result.stderr
    assert "INDEXSYNC_DATABASE_URL" in result.stderr
    assert "INDEXSYNC_BATCH_SIZ" in result.stderr and "INDEXSYNC_BATCH_SIZE" in result.stderr


def test_a_missing_bindings_file_names_the_folder_and_the_example(env: Env) -> None:
    (env.workdir / "indexsync.example.toml").write_text("# example\n")
    result = env.cli("check")
    assert result.returncode == 2
    assert str(env.workdir) in result.stderr
    assert "indexsync.example.toml" in result.stderr


def test_a_url_that_is_not_postgresql_is_explained_without_echoing_it(env: Env) -> None:
    items(env)
    result = env.cli("check", INDEXSYNC_DATABASE_URL="mysql://root:sekrit@db/app")
    assert result.returncode == 2
    assert "'mysql' is not PostgreSQL" in result.stderr
    assert "sekrit" not in result.stderr


def test_check_prints_the_whole_checklist_when_the_database_is_down(env: Env) -> None:
    items(env)
    result = env.cli("check", INDEXSYNC_DATABASE_URL="postgresql://u:pw@127.0.0.1:1/db")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("FAILED  PostgreSQL") for line in lines)
    assert any(line.startswith("skipped") for line in lines)
    assert any("search server answers" in line for line in lines)
    assert any("dynamic mapping" in line for line in lines)
    assert "pw" not in result.stdout.replace("pw@", "")


def test_settings_prints_the_effective_settings_with_secrets_masked(env: Env) -> None:
    result = env.cli(
        "settings",
        INDEXSYNC_ELASTICSEARCH_PASSWORD="hunter2",
        INDEXSYNC_BATCH_SIZE="250",
    )
    assert result.returncode == 0
    assert "hunter2" not in result.stdout
    assert "INDEXSYNC_ELASTICSEARCH_PASSWORD" in result.stdout and "***" in result.stdout
    assert any(
        line.startswith("INDEXSYNC_BATCH_SIZE") and "250" in line and "(set)" in line
        for line in result.stdout.splitlines()
    )


def test_uninstall_asks_first_and_refuses_without_a_terminal_or_yes(env: Env) -> None:
    items(env)
    env.install()
    refused = env.cli("uninstall")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert env.sql("SELECT to_regnamespace('indexsync') IS NOT NULL") == [(True,)]
    answered_no = subprocess.run(
        [sys.executable, "-c", _PTY_UNINSTALL, "no"],
        env=env.env_vars(),
        cwd=env.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Type 'yes'" in answered_no.stdout, answered_no.stderr
    assert env.sql("SELECT to_regnamespace('indexsync') IS NOT NULL") == [(True,)]
    assert env.cli("uninstall", "--yes").returncode == 0
    assert env.sql("SELECT to_regnamespace('indexsync') IS NOT NULL") == [(False,)]


# Runs `indexsync uninstall` on a pseudo-terminal and answers its question with argv[1].
_PTY_UNINSTALL = """
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.executable, [sys.executable, "-m", "indexsync", "uninstall"])
out = b""
deadline = time.monotonic() + 30
while b"Type 'yes'" not in out and time.monotonic() < deadline:
    out += os.read(fd, 1024)
os.write(fd, sys.argv[1].encode() + b"\\n")
try:
    while True:
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        out += chunk
except OSError:
    pass
os.waitpid(pid, 0)
print(out.decode(errors="replace"))
"""
