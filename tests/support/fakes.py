"""In-memory stand-ins for indexsync's own interfaces, for the unit layer.

`FakeSearch` implements the one `Search` method the bulk writer uses. It is a fake of
indexsync's interface, never a mock of a client library: real clients are only ever
exercised against real servers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from indexsync.search import ItemResult, Outcome


@dataclass
class SentItem:
    """One bulk item as the fake received it."""

    action: str
    index: str
    doc_id: str
    version: int
    source: str | None


Answer = Callable[[SentItem, int], ItemResult | None]


def parse_body(body: bytes) -> list[SentItem]:
    """The items of an NDJSON bulk body."""
    lines = body.decode().splitlines()
    items = []
    i = 0
    while i < len(lines):
        ((action, meta),) = json.loads(lines[i]).items()
        source = None
        if action == "index":
            i += 1
            source = lines[i]
        items.append(SentItem(action, meta["_index"], meta["_id"], meta["version"], source))
        i += 1
    return items


@dataclass
class FakeSearch:
    """Answers bulk requests from a script: `answer(item, attempt)`, None meaning success.

    `attempt` counts how many times that (index, id) was sent before. A request may instead
    raise, through `fail_request(items)`. It records every request and the most requests
    ever in flight at once.
    """

    answer: Answer = field(default=lambda item, attempt: None)
    fail_request: Callable[[list[SentItem]], None] = field(default=lambda items: None)
    delay: float = 0.0
    requests: list[list[SentItem]] = field(default_factory=list)
    in_flight_max: int = 0
    _in_flight: int = 0
    _attempts: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def bulk(self, body: bytes) -> list[ItemResult]:
        """Classify every item of `body` as the script says."""
        items = parse_body(body)
        with self._lock:
            self._in_flight += 1
            self.in_flight_max = max(self.in_flight_max, self._in_flight)
            self.requests.append(items)
        try:
            if self.delay:
                time.sleep(self.delay)
            self.fail_request(items)
            results = []
            for item in items:
                with self._lock:
                    key = (item.index, item.doc_id)
                    attempt = self._attempts.get(key, 0)
                    self._attempts[key] = attempt + 1
                result = self.answer(item, attempt)
                results.append(result or ItemResult(Outcome.DONE, 200, "", ""))
            return results
        finally:
            with self._lock:
                self._in_flight -= 1
