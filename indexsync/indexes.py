"""Physical indexes behind aliases: their names, their creation body, the next generation."""

from __future__ import annotations

from typing import Any

from indexsync.errors import ConfigError, IndexMissing
from indexsync.search import Search
from indexsync.settings import Settings

_MAX_GENERATIONS = 1000


def physical_name(alias: str, generation: int) -> str:
    """The physical index of an alias's n-th generation."""
    return f"{alias}-{generation}"


def index_body(mapping: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The creation body: the user's mapping plus the tombstone lifetime versioning relies on."""
    body = {key: value for key, value in mapping.items()}
    index_settings = dict(body.get("settings") or {})
    nested = index_settings.get("index")
    user_set = (
        "index.gc_deletes" in index_settings
        or "gc_deletes" in index_settings
        or (isinstance(nested, dict) and "gc_deletes" in nested)
    )
    if not user_set:
        index_settings["index.gc_deletes"] = f"{settings.gc_deletes}s"
    body["settings"] = index_settings
    return body


def missing_alias(search: Search, alias: str) -> IndexMissing:
    """The error for an alias that is gone, with the fix that keeps what is left.

    When a physical index of the alias is still there, putting the alias back keeps its
    documents; `install` would build a new generation from scratch beside it.
    """
    left = search.generations(alias)
    if left:
        newest = left[-1]
        return IndexMissing(
            f"index alias {alias!r} does not exist on the search server, but its index "
            f"{newest} does: put the alias back with POST /_aliases "
            f'{{"actions": [{{"add": {{"index": "{newest}", "alias": "{alias}"}}}}]}} '
            f"(`indexsync install` would build a new index from scratch beside it)"
        )
    return IndexMissing(
        f"index alias {alias!r} does not exist on the search server; run `indexsync install`"
    )


def create_generation(
    search: Search, alias: str, body: dict[str, Any], *, attach_alias: bool, start: int = 1
) -> str:
    """Create the next free `<alias>-<n>` index; returns its name."""
    for generation in range(start, start + _MAX_GENERATIONS):
        name = physical_name(alias, generation)
        if search.exists(name):
            continue
        search.create_index(name, body, alias if attach_alias else None)
        return name
    raise ConfigError(
        f"index {alias!r}: no free physical index name after {_MAX_GENERATIONS} tries"
    )
