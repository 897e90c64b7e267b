"""Runs osmem and the test proxy (answering as Elasticsearch 9) in their own process.

The bench drives the server with elasticsearch-py, which needs the proxy's media-type
rewriting; indexsync itself detects the engine through it like any other server. The proxy
is Python on an asyncio thread; hosted inside the benchmark process it would compete for
the GIL with the load generators and distort every figure.
Prints one JSON line with the URL, then runs until standard input closes or SIGTERM. With
`--direct`, osmem is served as it is (an OpenSearch server), without the proxy. With
BENCH_ENGINE=opensearch, a real OpenSearch node takes osmem's place.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from types import FrameType

import structlog

from tests.support.esproxy import CompatProxy
from tests.support.opensearch_node import search_engine


def main() -> int:
    """Start the search server, print its URL, and serve until told to stop."""
    # stdout carries the JSON line; logs must stay off it.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        """Ask the main loop to stop."""
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def wait_for_eof() -> None:
        """Stop when the parent closes our standard input (or dies)."""
        while os.read(0, 65536):
            pass
        stop.set()

    with search_engine(os.environ.get("BENCH_ENGINE", "osmem"), "BENCH_ENGINE") as search:
        if "--direct" in sys.argv[1:]:
            # As an OpenSearch server: what a peer tool in OpenSearch mode talks to.
            print(json.dumps({"url": search.url, "upstream_url": search.url}), flush=True)
            threading.Thread(target=wait_for_eof, name="stdin-eof", daemon=True).start()
            while not stop.wait(0.5):
                pass
            return 0
        with CompatProxy(search.url, engine="elasticsearch-9") as proxy:
            print(json.dumps({"url": proxy.url, "upstream_url": search.url}), flush=True)
            threading.Thread(target=wait_for_eof, name="stdin-eof", daemon=True).start()
            # A timed wait keeps the main thread responsive to signals.
            while not stop.wait(0.5):
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
