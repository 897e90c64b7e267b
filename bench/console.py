"""Progress lines, stamped with the time since the benchmark started."""

from __future__ import annotations

import sys
import time

_STARTED = time.monotonic()


def elapsed() -> float:
    """Seconds since the benchmark process imported this module."""
    return time.monotonic() - _STARTED


def say(text: str) -> None:
    """Print one progress line."""
    print(f"[{elapsed():7.1f}s] {text}", file=sys.stderr, flush=True)
