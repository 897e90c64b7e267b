"""The named queries of `sql/queries.sql`, loaded once and looked up by name."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, bytes]:
    """Split a queries file into its named queries (the statement, without comments)."""
    found: dict[str, bytes] = {}
    parts = _HEADER.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise ValueError(f"query {name!r} is defined twice")
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        statement = "\n".join(lines).strip().rstrip(";").strip()
        if not statement:
            raise ValueError(f"query {name!r} is empty")
        found[name] = statement.encode()
    return found


@cache
def _all() -> dict[str, bytes]:
    text = resources.files("indexsync").joinpath("sql/queries.sql").read_text(encoding="utf-8")
    return parse(text)


def get(name: str) -> bytes:
    """The statement named `name`; bytes, as psycopg takes SQL that is not a literal."""
    return _all()[name]


def names() -> list[str]:
    """Every query name, for tests."""
    return sorted(_all())
