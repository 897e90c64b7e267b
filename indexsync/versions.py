"""Version bookkeeping: an index's highest version against the database's change sequence."""

from __future__ import annotations

from typing import Any

import psycopg

from indexsync import outbox
from indexsync.errors import SequenceRegression
from indexsync.search import Search

META_KEY = "indexsync"


def record_max_seq(search: Search, index: str, seq: int) -> None:
    """Remember in the index's `_meta` the largest version written, to detect restores."""
    search.put_meta(index, {META_KEY: {"max_seq": seq}})


def check_sequence(conn: psycopg.Connection[Any], search: Search, alias: str) -> None:
    """Refuse an index that holds versions beyond the database's change sequence."""
    row = conn.execute(outbox.LAST_SEQ).fetchone()
    last = int(row[0]) if row else 0
    for index in search.alias_targets(alias):
        meta = search.get_meta(index).get(META_KEY) or {}
        high = meta.get("max_seq") if isinstance(meta, dict) else None
        if isinstance(high, int) and high > last:
            raise SequenceRegression(
                f"index {alias!r} ({index}) holds versions up to {high}, but the database's "
                f"change sequence is at {last}: the database went back in time (restored from "
                f"a backup?) and every write would be refused as stale. "
                f"Run `indexsync reindex {alias}`"
            )
