"""Status: backlog, lag, dead letters and rebuilds per index, read from the database."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from indexsync import outbox


@dataclass
class IndexStatus:
    """The health of one index as the database sees it."""

    index: str
    backlog: int = 0
    oldest_pending_seconds: float | None = None
    dead_letters: int = 0
    rebuild_target: str | None = None
    rebuild_rows_done: int | None = None
    rebuild_rows_total: int | None = None
    rebuild_started_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self)
        if self.rebuild_started_at is not None:
            data["rebuild_started_at"] = self.rebuild_started_at.isoformat()
        return data


def collect(conn: psycopg.Connection[Any], aliases: list[str]) -> list[IndexStatus]:
    """Status of every bound index (and of any index still in the outbox)."""
    found: dict[str, IndexStatus] = {alias: IndexStatus(alias) for alias in aliases}
    for name, count, age in conn.execute(outbox.BACKLOG).fetchall():
        item = found.setdefault(name, IndexStatus(name))
        item.backlog = count
        item.oldest_pending_seconds = round(age, 3) if age is not None else None
    for name, count in conn.execute(outbox.DEAD_LETTER_COUNTS).fetchall():
        found.setdefault(name, IndexStatus(name)).dead_letters = count
    for alias, target, _, _, done, total, started, _ in conn.execute(
        outbox.REBUILD_STATUS
    ).fetchall():
        item = found.setdefault(alias, IndexStatus(alias))
        item.rebuild_target = target
        item.rebuild_rows_done = done
        item.rebuild_rows_total = total
        item.rebuild_started_at = started
    return sorted(found.values(), key=lambda s: s.index)


def render_table(rows: list[IndexStatus]) -> str:
    """A readable table for a terminal."""
    header = ("index", "backlog", "lag (s)", "dead letters", "rebuild")
    lines = [header]
    for row in rows:
        rebuild = "-"
        if row.rebuild_target:
            total = f"/{row.rebuild_rows_total}" if row.rebuild_rows_total else ""
            rebuild = f"{row.rebuild_target} {row.rebuild_rows_done}{total} rows"
        lag = "-" if row.oldest_pending_seconds is None else f"{row.oldest_pending_seconds:.1f}"
        lines.append((row.index, str(row.backlog), lag, str(row.dead_letters), rebuild))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
