"""`indexsync pause` and `resume`: an operator stops the writes to one index, and lets them go.

A pause is recorded in `indexsync.binding_state`. Every worker's next claim skips the
index's changes, which stay queued: nothing is lost, and `resume` lets them be written in
order. `pause` returns only once no write to the index is still in flight: the batches that
claimed its changes before the pause have ended, and no backfill is writing its rows.
"""

from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass

from indexsync import installed
from indexsync.errors import ConfigError, PauseNotSettled
from indexsync.logs import get_logger
from indexsync.store import Store

log = get_logger(__name__)

# How long `pause` waits for the writes in flight at most, and how often it looks.
_SETTLE_TIMEOUT = 120.0
_SETTLE_EVERY = 0.05


@dataclass(frozen=True)
class Paused:
    """What `pause` did."""

    index: str
    queued: int
    waited_seconds: float


def pause(store: Store, index: str, reason: str, timeout: float = _SETTLE_TIMEOUT) -> Paused:
    """Pause `index` and wait until nothing writes to it any more."""
    installed.require(store, [index])
    started = time.monotonic()
    by = f"{getpass.getuser()}@{socket.gethostname()}"
    with store.transaction():
        store.hold(index, reason, by)
    # Every batch that could still write to the index began before that commit, and holds a
    # transaction id from its claim: once the transactions running now have ended, none is
    # left (a later claim skips the index).
    snapshot = store.current_snapshot()
    while store.in_progress(snapshot) or store.backfill_running(index):
        if time.monotonic() - started > timeout:
            raise PauseNotSettled(
                f"index {index!r} is paused, but writes to it were still in flight after "
                f"{timeout:.0f}s (a long transaction, or a backfill page): check "
                "`indexsync status` before relying on it"
            )
        time.sleep(_SETTLE_EVERY)
    waited = time.monotonic() - started
    log.info("index.paused_by_operator", index=index, reason=reason, by=by)
    return Paused(index, store.queued_changes(index), waited)


def resume(store: Store, index: str) -> int:
    """Resume `index`; returns the changes queued meanwhile, which workers write now."""
    installed.require(store, [index])
    with store.transaction():
        was_paused = store.release(index)
    if not was_paused:
        raise ConfigError(f"index {index!r} is not paused")
    log.info("index.resumed_by_operator", index=index)
    return store.queued_changes(index)
