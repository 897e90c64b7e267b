"""The HTTP server of `/metrics`, `/healthz` and `/readyz`."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from prometheus_client.exposition import choose_encoder

from indexsync import __version__
from indexsync.errors import ConfigError
from indexsync.health import Health
from indexsync.logs import get_logger
from indexsync.metrics import Metrics

log = get_logger(__name__)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # A scrape of a dead process must fail fast rather than queue.
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], metrics: Metrics, health: Health) -> None:
        self.metrics = metrics
        self.health = health
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    # Idle or slow clients cannot pin a thread for long.
    timeout = 10
    server_version = f"indexsync/{__version__}"

    def do_GET(self) -> None:
        """Serve /metrics, /healthz and /readyz."""
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(HTTPStatus.OK, encoder(self.server.metrics.registry), content_type)
        elif path == "/healthz":
            self._json(HTTPStatus.OK, {"alive": True})
        elif path == "/readyz":
            state = self.server.health.readiness()
            status = HTTPStatus.OK if state.ready else HTTPStatus.SERVICE_UNAVAILABLE
            self._json(status, state.as_json())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found", "paths": list(PATHS)})

    def _json(self, status: HTTPStatus, body: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(body).encode() + b"\n", "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Route the access log to debug: a scrape every few seconds is noise."""
        log.debug("metrics.request", client=self.client_address[0], line=format % args)


# The paths served; the Kubernetes probes ask for two of them.
PATHS = ("/metrics", "/healthz", "/readyz")


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """`/metrics`, `/healthz` and `/readyz` over HTTP, served from a daemon thread."""

    def __init__(
        self, metrics: Metrics, health: Health, *, host: str = "127.0.0.1", port: int | None
    ) -> None:
        if port == 0:
            # 0 is the setting that turns the server off; None asks for any free port.
            raise ValueError("port 0 disables the server: do not start one (None: any free port)")
        self.metrics = metrics
        self.health = health
        self.host = host
        self._requested_port = port or 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when started with port=None)."""
        if self._httpd is None:
            return self._requested_port
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:9740."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        """Bind and serve; raises ConfigError when the address cannot be bound."""
        if self._httpd is not None:
            return self
        try:
            cls = _HTTPServer6 if ":" in self.host else _HTTPServer
            self._httpd = cls((self.host, self._requested_port), self.metrics, self.health)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.host}:{self._requested_port}: "
                f"{exc.strerror or exc}; set INDEXSYNC_METRICS_PORT to a free port "
                "(or 0 to turn the server off) and INDEXSYNC_METRICS_HOST to a local address"
            ) from None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="indexsync-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics.listening", url=self.url, paths=list(PATHS))
        return self

    def stop(self) -> None:
        """Stop serving and release the socket."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None
        self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
