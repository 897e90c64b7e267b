"""`indexsync resync`: queue chosen documents of one index through the outbox again.

The documents are those of the root table's rows that match `--where`, the ids of
`--ids`, or every row. Their ids are queued like any change, so the worker re-reads each
row and writes it with a new version: a resync can never undo a newer write, and a row
that no longer qualifies has its document deleted. Ids are queued in key order, one page
per transaction, no faster than `rate` a second, so live changes keep their latency.

Lighter than `reindex` for a subset, or for a whole index whose mapping has not changed:
no new index, no alias swap. An interrupted resync is simply run again (a document queued
twice is only written again); `--after` starts after the last id it reported.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

from indexsync.bindings import Binding
from indexsync.errors import ConfigError, QueryFailed
from indexsync.logs import get_logger
from indexsync.progress import Progress
from indexsync.store import Store

log = get_logger(__name__)

# Ids per page at most; a slow rate takes smaller pages, about ten a second, so that the
# queue fills evenly rather than in bursts.
_PAGE = 1000


def page_size(rate: float) -> int:
    """Ids per page at `rate` ids a second."""
    return max(1, min(_PAGE, int(rate / 10)))


@dataclass(frozen=True)
class Resynced:
    """What a resync queued, and the last id (an interrupted run resumes after it)."""

    index: str
    queued: int
    last_id: str | None
    seconds: float


class Pacer:
    """Keeps a job at `rate` items a second at most, measured from its start."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.started = time.monotonic()
        self.done = 0

    def add(self, count: int) -> None:
        """`count` more items went; sleep until the rate allows the next ones."""
        self.done += count
        ahead = self.started + self.done / self.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def _pages_of_rows(
    store: Store, binding: Binding, where: str | None, after: str | None, size: int
) -> Iterator[list[str]]:
    while True:
        try:
            page = store.key_page(binding, after, size, where)
        except QueryFailed as exc:
            if where is None:
                raise
            raise ConfigError(f"--where {where!r} on {binding.display}: {exc}") from exc
        if not page:
            return
        yield page
        after = page[-1]


def read_ids(store: Store, binding: Binding, lines: Iterable[str]) -> list[str]:
    """The ids of `--ids`, one per line, each checked against the key's type before anything
    is queued: a bad line is named, and nothing is half-applied."""
    found = [line.strip() for line in lines]
    found = [doc_id for doc_id in found if doc_id]
    for start in range(0, len(found), _PAGE):
        page = found[start : start + _PAGE]
        try:
            store.check_ids(binding, page)
        except QueryFailed:
            for n, doc_id in enumerate(page, start + 1):
                try:
                    store.check_ids(binding, [doc_id])
                except QueryFailed as exc:
                    raise ConfigError(
                        f"--ids: id {n} ({doc_id!r}) is not a key of {binding.display}: "
                        f"{exc.detail}"
                    ) from exc
            raise
    return found


def resync(
    store: Store,
    binding: Binding,
    *,
    where: str | None = None,
    ids: list[str] | None = None,
    after: str | None = None,
    rate: float,
    stream: TextIO,
) -> Resynced:
    """Queue the chosen documents of `binding`'s index, `rate` a second at most."""
    started = time.monotonic()
    pages: Iterable[list[str]]
    size = page_size(rate)
    if ids is not None:
        chosen = list(ids)
        total: int | None = len(chosen)
        pages = [chosen[i : i + size] for i in range(0, len(chosen), size)]
    else:
        whole = where is None and after is None
        total = store.count_documents(binding) if whole else None
        pages = _pages_of_rows(store, binding, where, after, size)
    progress = Progress(binding.alias, total, 0, stream, event="resync.progress", unit="docs")
    pacer = Pacer(rate)
    queued = 0
    last: str | None = None
    log.info("resync.started", index=binding.alias, where=where, ids=ids is not None)
    try:
        for page in pages:
            with store.transaction():
                store.enqueue_ids(binding.alias, page)
            queued += len(page)
            last = page[-1]
            progress.advance(len(page))
            pacer.add(len(page))
    except KeyboardInterrupt:
        progress.finish()
        log.warning(
            "resync.interrupted", index=binding.alias, queued=queued, last_id=last,
            hint="run it again; --after LAST_ID skips what was queued",
        )  # fmt: skip
        raise
    progress.finish()
    seconds = time.monotonic() - started
    log.info("resync.done", index=binding.alias, queued=queued, seconds=round(seconds, 2))
    return Resynced(binding.alias, queued, last, seconds)
