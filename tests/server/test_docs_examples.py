"""Command output shown in the docs is what the commands print today.

A block that follows `<!-- checked: SETUP -->` holds `$ indexsync ...` lines (optionally
prefixed with `VAR=value` settings) and the output each prints. This test prepares SETUP,
runs every command and compares its output, with ports, dates and temporary paths
normalised. `INDEXSYNC_DOCS_WRITE=1 make test PYTEST_ARGS=tests/server/test_docs_examples.py`
rewrites the blocks from the real output instead.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import Env

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(
    r"<!-- checked: (?P<setup>[a-z-]+) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S
)
DOCS = sorted((ROOT / "docs").glob("*.md"))


def blocks() -> list[tuple[Path, str, str]]:
    found = []
    for path in DOCS:
        for match in MARKER.finditer(path.read_text(encoding="utf-8")):
            found.append((path, match["setup"], match["body"]))
    return found


ARTICLES = (ROOT / "docker" / "init.sql").read_text(encoding="utf-8")


# The broken files the troubleshooting page runs `check` on.
BAD_BINDINGS = {
    "syntax.toml": '[indexes.articles\ntable = "articles"\n',
    "key.toml": '[indexes.articles]\ntable = "articles"\ncolumn = ["id"]\n',
    "table.toml": '[indexes.articles]\ntable = "public.article"\n',
    "nokey.toml": '[indexes.nokey]\ntable = "nokey"\n',
    "column.toml": '[indexes.articles]\ntable = "public.articles"\ncolumns = ["id", "titel"]\n',
    "where.toml": '[indexes.articles]\ntable = "public.articles"\nwhere = "publised"\n',
    "upper.toml": '[indexes.Articles]\ntable = "public.articles"\n',
    "suffix.toml": '[indexes.articles-2]\ntable = "public.articles"\n',
}
BAD_MAPPINGS = {
    "badjson": '{"settings": {}, "mappings": {"properties": {title: 1}}}',
    "badkeys": '{"aliases": {}, "mappings": {}}',
    "badtype": '{"mappings": {"properties": {"title": {"type": "txt"}}}}',
}


def prepare(env: Env, setup: str) -> None:
    env.sql(ARTICLES)
    env.bindings(f'[indexes.{env.alias("articles")}]\ntable = "public.articles"\n')
    if setup == "bad-files":
        env.sql("CREATE TABLE nokey (x int)")
        for name, text in BAD_BINDINGS.items():
            (env.workdir / name).write_text(text, encoding="utf-8")
        for folder, text in BAD_MAPPINGS.items():
            (env.workdir / folder).mkdir()
            (env.workdir / folder / "articles.json").write_text(text, encoding="utf-8")
    if setup == "dead-letter":
        env.sql("CREATE TABLE things (id int PRIMARY KEY, n text)")
        env.bindings(f'[indexes.{env.alias("things")}]\ntable = "things"\n')
        env.mapping("things", {"mappings": {"properties": {"n": {"type": "integer"}}}})
        env.install()
        env.sql("INSERT INTO things VALUES (1, '7'), (2, 'abc')")
        env.sync()
    if setup in ("installed", "synced"):
        env.install()
    if setup == "synced":
        env.sync()


def normalise(text: str, env: Env) -> str:
    """Output with what changes from run to run replaced; command lines stay as written."""
    return "\n".join(
        line if line.startswith("$ ") else _normalise_line(line, env)
        for line in text.strip().splitlines()
    )


def _normalise_line(text: str, env: Env) -> str:
    text = text.replace(str(env.workdir) + "/", "").replace(str(env.workdir), ".")
    text = re.sub(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b", "2026-12-01 12:00:00", text)
    text = re.sub(r"port=\d+|port \d+|127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
    text = re.sub(r"seq=\d+", "seq=N", text)
    text = re.sub(r"^\d+\t", "N\t", text)  # a dead letter's id
    return text.rstrip()


def run(env: Env, body: str) -> str:
    out = []
    for line in body.splitlines():
        if not line.startswith("$ "):
            continue
        words = shlex.split(line[2:])
        settings = {}
        while words and "=" in words[0] and not words[0].startswith("-"):
            name, _, value = words.pop(0).partition("=")
            settings[name] = value
        assert words[0] == "indexsync", line
        variables = env.env_vars(**settings)
        for name, value in settings.items():
            if not value:  # `VAR= indexsync ...`: the variable is not set at all
                del variables[name]
        result = subprocess.run(
            [sys.executable, "-m", "indexsync", *words[1:]],
            env=variables,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=env.workdir,
        )
        out.append(line)
        # Structured log lines (JSON on stderr) are left out: the docs show what a reader
        # acts on, the output and the error.
        printed = (result.stdout + result.stderr).strip().splitlines()
        out.extend(text for text in printed if not text.startswith("{"))
        out.append("")
    # The temporary folder reads as the current one; everything else is kept as printed.
    text = "\n".join(out).strip()
    return text.replace(str(env.workdir) + "/", "").replace(str(env.workdir), ".")


@pytest.mark.parametrize(
    ("path", "setup", "body"),
    [pytest.param(*b, id=f"{b[0].name}:{b[1]}:{n}") for n, b in enumerate(blocks())],
)
def test_documented_output_is_what_the_command_prints(
    env: Env, path: Path, setup: str, body: str
) -> None:
    prepare(env, setup)
    actual = run(env, body)
    if os.environ.get("INDEXSYNC_DOCS_WRITE"):
        text = path.read_text(encoding="utf-8")
        written = "\n".join(line.rstrip() for line in actual.splitlines())
        path.write_text(text.replace(body, written + "\n", 1), encoding="utf-8")
        return
    assert normalise(actual, env) == normalise(body, env)


def test_some_blocks_are_checked() -> None:
    assert len(blocks()) >= 4
