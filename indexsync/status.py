"""Status: backlog, lag, dead letters, pauses and rebuilds per index, read from the database,
and the one definition of healthy that `status`, `check` and `/readyz` share.

Healthy means: PostgreSQL and the search server answer; a worker has been alive within
INDEXSYNC_STALL_SECONDS whenever work waits; and no index is paused, stalled (its oldest
change older than the stall window with nothing landed in it), fed by changes no installed
binding takes, or holding dead letters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from indexsync.rows import WorkerSeen
from indexsync.store import Store

# How a stalled index's problem starts (readiness has a stall clock of its own).
STALLED = "oldest pending change"


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
    rebuild_in_place: bool = False
    last_success_at: datetime | None = None
    paused_reason: str | None = None
    paused_since: datetime | None = None
    refreshing: bool = False
    refresh_done: int = 0
    # Paused by an operator (`indexsync pause`): no failure, its changes wait on purpose.
    held_reason: str | None = None
    held_since: datetime | None = None
    held_by: str | None = None
    # Whether `install` recorded a binding for this index (workers only sync those).
    installed: bool = True
    problems: list[str] = field(default_factory=list)

    @property
    def freshness_seconds(self) -> float:
        """The age of the oldest change not yet searchable, as far as the database knows:
        that of the oldest change not yet written (a written one becomes searchable within
        the index's refresh interval, or at once for a waiter in wait_for_search)."""
        return self.oldest_pending_seconds or 0.0

    @property
    def healthy(self) -> bool:
        """Whether nothing is wrong with this index."""
        return not self.problems

    def judge(self, stall_seconds: float, now: datetime | None = None) -> None:
        """Record what makes this index unhealthy.

        A backlog is a stall only when nothing of it has landed for `stall_seconds`: a large
        backlog drained at full speed has old changes, and is healthy.
        """
        now = now or datetime.now(UTC)
        recent = (
            self.last_success_at is not None
            and (now - self.last_success_at).total_seconds() <= stall_seconds
        )
        if not self.installed:
            waiting = f": {self.backlog} change(s) wait for it" if self.backlog else ""
            self.problems.append(
                f"no binding is installed for this index{waiting}; run `indexsync install` "
                "with its binding in the file (or without it, to drop them)"
            )
        elif self.paused_reason is not None:
            self.problems.append(f"paused: {self.paused_reason}")
        elif self.held_reason is not None:
            pass  # its backlog waits on purpose: neither a stall nor a failure
        elif (
            self.oldest_pending_seconds is not None
            and self.oldest_pending_seconds > stall_seconds
            and not recent
        ):
            self.problems.append(
                f"{STALLED} is {self.oldest_pending_seconds:.0f}s old "
                f"(more than INDEXSYNC_STALL_SECONDS={stall_seconds:g}): is a worker running?"
            )
        if self.dead_letters:
            self.problems.append(f"{self.dead_letters} dead letter(s): see `indexsync deadletters`")

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self)
        for key in ("rebuild_started_at", "last_success_at", "paused_since", "held_since"):
            value = getattr(self, key)
            data[key] = value.isoformat() if value is not None else None
        data["healthy"] = self.healthy
        data["freshness_seconds"] = self.freshness_seconds
        data["paused_by_operator"] = self.held_reason is not None
        return data


def collect(store: Store, aliases: list[str]) -> list[IndexStatus]:
    """Status of every bound index (and of any index still in the outbox)."""
    installed = {row.index_name for row in store.installed_bindings()}
    found: dict[str, IndexStatus] = {alias: IndexStatus(alias) for alias in (*aliases, *installed)}
    for waiting in store.backlog():
        item = found.setdefault(waiting.index_name, IndexStatus(waiting.index_name))
        item.backlog = waiting.changes
        age = waiting.oldest_seconds
        item.oldest_pending_seconds = round(age, 3) if age is not None else None
    for name, at in store.progress().items():
        found.setdefault(name, IndexStatus(name)).last_success_at = at
    for name, count in store.dead_letter_counts().items():
        found.setdefault(name, IndexStatus(name)).dead_letters = count
    for rebuild in store.rebuilds():
        item = found.setdefault(rebuild.alias, IndexStatus(rebuild.alias))
        item.rebuild_target = rebuild.target
        item.rebuild_rows_done = rebuild.rows_done
        item.rebuild_rows_total = rebuild.rows_total
        item.rebuild_started_at = rebuild.started_at
        item.rebuild_in_place = rebuild.in_place
    for state in store.binding_states():
        item = found.setdefault(state.index_name, IndexStatus(state.index_name))
        item.paused_reason = state.paused_reason
        item.paused_since = state.paused_at
        item.refreshing = state.refreshing
        item.refresh_done = state.refresh_done
        item.held_reason = state.held_reason
        item.held_since = state.held_at
        item.held_by = state.held_by
    for item in found.values():
        item.installed = item.index in installed
    return sorted(found.values(), key=lambda s: s.index)


def waiting_work(rows: list[IndexStatus], stall_seconds: float, now: datetime) -> bool:
    """Whether an installed, unpaused index has had work only a worker does (changes, or
    the backfill of its existing rows) waiting for longer than the stall window."""
    for row in rows:
        if not row.installed or row.paused_reason is not None or row.held_reason is not None:
            continue
        if (row.oldest_pending_seconds or 0.0) > stall_seconds:
            return True
        started = row.rebuild_started_at
        if (
            row.rebuild_in_place
            and started is not None
            and (now - started).total_seconds() > stall_seconds
        ):
            return True
    return False


def assess(
    rows: list[IndexStatus],
    workers: list[WorkerSeen],
    stall_seconds: float,
    *,
    search_error: str | None = None,
) -> list[str]:
    """What is wrong beyond single indexes: an unreachable search server, or work waiting
    with no live worker. Each row is judged too (its problems stay on the row)."""
    for row in rows:
        if not row.problems:
            row.judge(stall_seconds)
    problems = []
    if search_error is not None:
        problems.append(f"the search server is unreachable: {search_error}")
    alive = [w for w in workers if w.silent_seconds <= stall_seconds]
    if waiting_work(rows, stall_seconds, datetime.now(UTC)) and not alive:
        last = (
            f"the last one was seen {min(w.silent_seconds for w in workers):.0f}s ago"
            if workers
            else "none has run since the last hour"
        )
        problems.append(
            f"no worker has been alive for {stall_seconds:g}s (INDEXSYNC_STALL_SECONDS) while "
            f"work waits; {last}: start `indexsync run`"
        )
    return problems


def render_table(rows: list[IndexStatus]) -> str:
    """A readable table for a terminal."""
    header = (
        "index", "backlog", "freshness (s)", "dead letters", "last success", "rebuild", "health"
    )  # fmt: skip
    lines = [header]
    for row in rows:
        rebuild = "-"
        if row.rebuild_target:
            total = f"/{row.rebuild_rows_total}" if row.rebuild_rows_total else ""
            rebuild = f"{row.rebuild_target} {row.rebuild_rows_done}{total} rows"
        elif row.refreshing:
            rebuild = f"refresh after schema change: {row.refresh_done} queued"
        lag = f"{row.freshness_seconds:.1f}"
        last = f"{row.last_success_at:%Y-%m-%d %H:%M:%S}" if row.last_success_at else "-"
        health = "ok" if row.healthy else "; ".join(row.problems)
        if row.held_reason is not None:
            since = f" since {row.held_since:%Y-%m-%d %H:%M:%S}" if row.held_since else ""
            health = f"{health} (paused by an operator{since}: {row.held_reason})"
        lines.append(
            (row.index, str(row.backlog), lag, str(row.dead_letters), last, rebuild, health)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
