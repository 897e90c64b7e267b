"""Version bookkeeping: an index's highest version against the database's change sequence."""

from __future__ import annotations

from indexsync.errors import SequenceRegression
from indexsync.search import Search
from indexsync.store import Store

META_KEY = "indexsync"


def record_max_seq(search: Search, index: str, seq: int) -> None:
    """Remember in the index's `_meta` the largest version written, to detect restores."""
    search.put_meta(index, {META_KEY: {"max_seq": seq}})


def check_sequence(store: Store, search: Search, alias: str) -> None:
    """Refuse an index that holds versions beyond the database's change sequence."""
    last = store.last_seq()
    for index in search.alias_targets(alias):
        meta = search.get_meta(index).get(META_KEY) or {}
        high = meta.get("max_seq") if isinstance(meta, dict) else None
        if isinstance(high, int) and high > last:
            raise SequenceRegression(
                f"index {alias!r} ({index}) holds versions up to {high}, but the database's "
                f"change sequence is at {last}: the database went back in time (restored from "
                f"a backup?) and every write would be refused as stale. If this is that "
                f"database, restored, run `indexsync reindex {alias}` to rebuild the index "
                "from it. If it is another database pointed at the same cluster, do not: the "
                "index is that database's; give this one's bindings other aliases"
            )
