"""A newcomer's first steps, as the README gives them, have no traps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import Env

ROOT = Path(__file__).resolve().parents[2]


def _readme_block(language: str, contains: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL):
        if contains in block:
            return "\n".join(line.strip() for line in block.splitlines())
    raise AssertionError(f"no ```{language} block with {contains!r} in the README")


def test_the_readme_table_and_the_example_bindings_install_and_check_clean(env: Env) -> None:
    env.sql(_readme_block("sql", "CREATE TABLE articles"))
    example = (ROOT / "indexsync.example.toml").read_text(encoding="utf-8")
    assert _readme_block("toml", "[indexes.articles]") in example
    env.bindings(example.replace("[indexes.articles]", f"[indexes.{env.alias('articles')}]"))
    env.install("--wait")
    check = env.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_top_level_mappings_folder_holds_no_mapping_of_the_demo() -> None:
    assert not list((ROOT / "mappings").glob("*.json"))


@pytest.mark.parametrize(
    "args", [("verify",), ("deadletters",), ("deadletters", "retry"), ("reindex",)]
)
def test_commands_before_install_say_to_run_it(env: Env, args: tuple[str, ...]) -> None:
    env.sql("CREATE TABLE t (id int PRIMARY KEY)")
    env.bindings(f'[indexes.{env.alias("t")}]\ntable = "t"\n')
    result = env.cli(*args)
    assert result.returncode == 2
    assert "not installed in this database: run `indexsync install`" in result.stderr
    assert "does not exist" not in result.stderr


@pytest.mark.parametrize("args", [("check",), ("settings",), ("settings", "--json")])
def test_output_cut_short_by_a_pipe_ends_quietly(env: Env, args: tuple[str, ...]) -> None:
    env.sql("CREATE TABLE t (id int PRIMARY KEY)")
    env.bindings(f'[indexes.{env.alias("t")}]\ntable = "t"\n')
    command = " ".join([sys.executable, "-m", "indexsync", *args]) + " | head -1"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        env=env.env_vars(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=env.workdir,
    )
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr


def test_settings_show_where_the_database_is_and_hide_only_the_password(env: Env) -> None:
    url = "postgresql://app_user:hunter2secret@db.internal:6543/shop"
    result = env.cli("settings", INDEXSYNC_DATABASE_URL=url)
    assert result.returncode == 0
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("INDEXSYNC_DATABASE_URL"))
    assert "host=db.internal port=6543 dbname=shop user=app_user password=***" in line
    assert "hunter2secret" not in result.stdout


def test_the_repository_tracks_no_link_pointing_outside_it() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    links = [line.split("\t", 1)[1] for line in listed.splitlines() if line.startswith("120000")]
    for link in links:
        target = (ROOT / link).parent / os.readlink(ROOT / link)
        assert target.resolve().is_relative_to(ROOT), f"{link} points outside the clone"


def test_a_deleted_alias_gets_one_message_with_the_fix_that_keeps_the_index(env: Env) -> None:
    env.sql("CREATE TABLE t (id int PRIMARY KEY)")
    env.bindings(f'[indexes.{env.alias("t")}]\ntable = "t"\n')
    env.install()
    alias, index = env.alias("t"), f"{env.alias('t')}-1"
    env.http.request(
        "POST", "/_aliases", body={"actions": [{"remove": {"index": index, "alias": alias}}]}
    )
    run, check = env.cli("run", "--until-idle"), env.cli("check")
    assert run.returncode == 2 and check.returncode == 1
    advice = f"but its index {index} does: put the alias back with POST /_aliases"
    assert advice in run.stderr and advice in check.stdout
    env.http.request("DELETE", f"/{index}")
    run = env.cli("run", "--until-idle")
    assert "does not exist on the search server; run `indexsync install`" in run.stderr
