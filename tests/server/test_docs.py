"""The documentation stays true to the code."""

from __future__ import annotations

from pathlib import Path

from indexsync.settings import settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_the_settings_table_matches_the_settings_class() -> None:
    readme = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    start = readme.index("<!-- settings-table:start -->") + len("<!-- settings-table:start -->")
    end = readme.index("<!-- settings-table:end -->")
    assert readme[start:end].strip() == settings_table(), (
        "the settings table of docs/configuration.md is stale; regenerate it with "
        "python -c 'from indexsync.settings import settings_table; print(settings_table())'"
    )
