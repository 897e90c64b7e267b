"""The typed rows the store hands out: what one outbox row, dead letter or rebuild is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Outbox row kinds: a document id; a TRUNCATE marker (doc_id is NULL); the key of a row of
# the dependent table `source`, mapped to documents by the worker.
KIND_DOC = "d"
KIND_TRUNCATE = "t"
KIND_KEY = "k"


@dataclass(frozen=True)
class Change:
    """One claimed outbox row."""

    seq: int
    index_name: str
    doc_id: str | None
    kind: str
    source: str | None
    # The seq the change was first recorded with (a re-queued change keeps it), and when.
    origin: int = 0
    created_at: datetime | None = None
    # A routed document's routing before this change, when the change moved it elsewhere
    # or deleted it: its copy there is deleted.
    routing: str | None = None


@dataclass(frozen=True)
class BatchContext:
    """What a batch reads right after its claim: its version and the rebuilds in progress."""

    version: int
    # alias -> physical index being rebuilt beside it
    rebuilds: dict[str, str]
    # Whether any dead letter exists (if not, the batch has none to clear).
    dead_letters: bool = True
    # The installed bindings' version: a batch that sees a newer one adopts them first.
    bindings_version: int = 0


@dataclass(frozen=True)
class DeadLetter:
    """A document the search server refused for good, or PostgreSQL could not build."""

    index_name: str
    doc_id: str
    seq: int
    status: int | None
    error_type: str
    reason: str
    sqlstate: str | None = None
    # The origins of the changes the letter stands for (None from a scan: no change).
    changes: tuple[int, int] | None = None


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter as `indexsync deadletters` lists it."""

    id: int
    index_name: str
    doc_id: str
    seq: int
    status: int | None
    error_type: str | None
    reason: str | None
    failed_at: datetime
    sqlstate: str | None


@dataclass(frozen=True)
class InstalledBinding:
    """One binding as install recorded it in the database."""

    index_name: str
    spec: dict[str, Any]


@dataclass(frozen=True)
class DatabaseIdentity:
    """Who a database is, as indexes record their owner."""

    install_id: str
    database: str
    system_identifier: str | None


@dataclass(frozen=True)
class WorkerSeen:
    """A worker's last heartbeat."""

    worker_id: str
    host: str
    pid: int
    version: str
    started_at: datetime
    silent_seconds: float


@dataclass(frozen=True)
class Forgotten:
    """What install dropped with a removed binding."""

    changes: int
    dead_letters: int


@dataclass(frozen=True)
class Searchable:
    """How far one index is searchable, as the worker that refreshes it for waiters says."""

    index_name: str
    horizon: int
    generation: int
    refreshed_at: datetime | None


@dataclass(frozen=True)
class Waiting:
    """An index with waiters, and the smallest seq one of them waits for."""

    index_name: str
    target: int


@dataclass(frozen=True)
class PendingFloor:
    """The smallest seq still queued for an index (None: nothing is)."""

    index_name: str
    floor: int | None


@dataclass(frozen=True)
class Backlog:
    """Changes waiting for one index."""

    index_name: str
    changes: int
    oldest_seconds: float | None


@dataclass(frozen=True)
class BindingState:
    """Why an index is paused, and how far its refresh after a schema change is."""

    index_name: str
    paused_reason: str | None
    paused_at: datetime | None
    refreshing: bool
    refresh_done: int
    # Paused by an operator (`indexsync pause`): why, since when, and who said so.
    held_reason: str | None = None
    held_at: datetime | None = None
    held_by: str | None = None


@dataclass(frozen=True)
class Refresh:
    """A refreshing index claimed by this worker for its next chunk."""

    index_name: str
    refresh_after: str | None
    refresh_done: int


@dataclass(frozen=True)
class Rebuild:
    """A rebuild in progress."""

    alias: str
    target: str
    watermark: int | None
    in_place: bool
    last_key: str | None
    rows_done: int
    rows_total: int | None
    started_at: datetime
    updated_at: datetime
    # A backfill's floor: documents at this version or above were written by live sync.
    floor: int | None = None


@dataclass(frozen=True)
class Watermark:
    """A seq drawn now, and the transactions that were in progress at that moment."""

    watermark: int
    snapshot: str


@dataclass(frozen=True)
class Table:
    """A table found in the catalog."""

    oid: int
    schema: str
    name: str
    kind: str


@dataclass(frozen=True)
class Column:
    """A column of a table and its SQL type."""

    name: str
    type: str


@dataclass(frozen=True)
class InstalledTrigger:
    """A capture trigger found in the catalog."""

    name: str
    schema: str
    table: str
    function: str


@dataclass(frozen=True)
class Document:
    """One document as PostgreSQL renders it: its `_id` and its JSON text."""

    doc_id: str
    source: str
    # Where the document lives (the binding's `routing`), None without one.
    routing: str | None = None
