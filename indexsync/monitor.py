"""The monitor: metrics, readiness, the status poller and the HTTP server of one worker."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType

from prometheus_client import CollectorRegistry

from indexsync.health import Health
from indexsync.httpserver import MetricsServer
from indexsync.metrics import Metrics
from indexsync.poller import StatusPoller
from indexsync.store import Store


class Monitor:
    """Metrics, health, the status poller and the HTTP server of one worker, together."""

    def __init__(
        self,
        *,
        connect: Callable[[], Store],
        aliases: Sequence[str],
        ping: Callable[[], object],
        port: int | None,
        host: str = "127.0.0.1",
        stall_seconds: float = 60.0,
        interval: float = 5.0,
        query_timeout: float = 10.0,
        stale_after: float | None = None,
        max_lag: float | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.metrics = Metrics(registry, indexes=aliases)
        # A last good check older than a few rounds (plus time for a connect, a query and a
        # ping to time out) means the poller is stuck: stop claiming readiness.
        if stale_after is None:
            stale_after = 3 * interval + 3 * query_timeout
        self.health = Health(stall_seconds, stale_after=stale_after, max_lag=max_lag)
        self.enabled = port != 0
        self.poller = StatusPoller(
            connect=connect,
            aliases=aliases,
            health=self.health,
            ping=ping,
            metrics=self.metrics,
            interval=interval,
            query_timeout=query_timeout,
        )
        self.server = (
            MetricsServer(self.metrics, self.health, host=host, port=port) if self.enabled else None
        )

    def start(self) -> Monitor:
        """Bind the server (ConfigError when the port is taken), then start the checks."""
        if self.server is not None:
            self.server.start()
            self.poller.start()
        return self

    def close(self) -> None:
        """Stop the checks and the server."""
        self.poller.stop()
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
