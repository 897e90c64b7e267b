"""A test-only HTTP proxy in front of osmem: it answers as a chosen engine and injects faults.

osmem-server is an in-memory OpenSearch 3.x. In front of it, ``CompatProxy`` makes it look,
at the HTTP level, like one of the engines indexsync supports:

- ``opensearch``: everything passes through unchanged; osmem itself refuses Elasticsearch's
  vendor media types with 406 and sends no ``X-Elastic-Product`` header, as OpenSearch does.
- ``elasticsearch-8`` and ``elasticsearch-9``: ``GET /`` answers as that Elasticsearch
  version, every response carries ``X-Elastic-Product: Elasticsearch`` (the header
  elasticsearch-py's product check wants), and the REST-compatibility media types
  (``application/vnd.elasticsearch+json; compatible-with=N``) are checked as the server
  checks them: Elasticsearch 8.x accepts N = 7 or 8 and answers anything else with 400
  ``media_type_header_exception`` (elasticsearch-py issues #2923 and #2927 quote that
  answer); 9.x accepts 8 and 9 (Elasticsearch's RestCompatibleVersionHelper allows the
  current major and the one before). Accepted types are rewritten to plain JSON upstream.

It also injects the failures a real cluster produces (429 item rejections, write blocks,
rejected credentials, 503s, resets, outages, 413s) so the worker's error handling can be
exercised deterministically. It never ships in the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import json
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import structlog

__all__ = ["CompatProxy", "Faults", "Stats"]

log = structlog.get_logger(__name__)

# StreamReader limit: bounds the size of a request/response head and of one chunk-size
# line; bodies are read with readexactly() so they are not limited by it.
_STREAM_LIMIT = 1 << 20
# Bodies we must discard (oversized requests) are drained in slices of this size so a
# huge upload never has to sit in memory.
_DRAIN_CHUNK = 1 << 20
# Bodies below this size are sent in the same write as their head.
_COALESCE_BYTES = 1 << 16
# Idle upstream connections kept for reuse; more than this are closed.
_MAX_IDLE_UPSTREAM = 64

# Headers that describe one hop only, or that the proxy recomputes itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "content-length",
    }
)
# Request headers also dropped upstream: the body is always sent decoded with a fresh
# Content-Length, and responses must come back uncompressed so bulk results can be
# spliced.
_REQUEST_DROP = _HOP_BY_HOP | {"host", "expect", "accept-encoding", "content-encoding"}

_COMPAT_MIME = re.compile(
    r"application/vnd\.elasticsearch\+([a-z0-9.+-]+)(?:\s*;\s*compatible-with\s*=\s*\d+)?",
    re.IGNORECASE,
)

_BULK_OPS_WITH_SOURCE = frozenset({"index", "create", "update"})

_ERROR_TYPES = {
    400: "parse_exception",
    413: "content_too_long_exception",
    429: "es_rejected_execution_exception",
    500: "internal_server_error",
    502: "bad_gateway_exception",
    503: "unavailable_shards_exception",
    504: "timeout_exception",
}

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    406: "Not Acceptable",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


ENGINES = ("opensearch", "elasticsearch-8", "elasticsearch-9")
# What each emulated Elasticsearch says on `GET /`, and the compatible-with majors it takes.
_ES_VERSIONS = {"elasticsearch-8": ("8.19.0", (7, 8)), "elasticsearch-9": ("9.2.0", (8, 9))}
_COMPAT_VERSION = re.compile(r"compatible-with\s*=\s*(\d+)", re.IGNORECASE)


def _es_info(number: str) -> bytes:
    """The body of `GET /` as Elasticsearch writes it."""
    return json.dumps(
        {
            "name": "indexsync-test",
            "cluster_name": "indexsync-test",
            "cluster_uuid": "AAAAAAAAAAAAAAAAAAAAAA",
            "version": {
                "number": number,
                "build_flavor": "default",
                "build_type": "docker",
                "lucene_version": "10.3.1",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0",
            },
            "tagline": "You Know, for Search",
        }
    ).encode()


def _media_type_error(header: str, value: str, accepted: tuple[int, ...]) -> _Response:
    """Elasticsearch's answer to a compatible-with version it does not take."""
    found = _COMPAT_VERSION.search(value)
    versions = " or ".join(str(v) for v in reversed(accepted))
    reason = (
        f"{header} version must be either version {versions}, but found "
        f"{found.group(1) if found else '?'}. {header}={value}"
    )
    body = {
        "error": {
            "root_cause": [
                {
                    "type": "media_type_header_exception",
                    "reason": "Invalid media-type value on headers [Accept, Content-Type]",
                }
            ],
            "type": "media_type_header_exception",
            "reason": "Invalid media-type value on headers [Accept, Content-Type]",
            "caused_by": {"type": "status_exception", "reason": reason},
        },
        "status": 400,
    }
    headers = [("Content-Type", "application/json")]
    return _Response(400, "Bad Request", headers, json.dumps(body).encode())


def _compat_mime(value: str) -> str:
    """Map ES compatibility media types to the plain ones osmem accepts."""
    return _COMPAT_MIME.sub(r"application/\1", value)


class _AbortConnection(Exception):
    """Raised inside a handler to drop the client connection without a response."""


class _BadRequest(Exception):
    """Raised when a client sends something that is not parseable HTTP/1.1."""


class _UpstreamError(Exception):
    """Raised when the upstream server cannot be reached or answers garbage."""


@dataclass
class Stats:
    """Counters of traffic and of injected faults; updated only on the proxy loop."""

    requests: int = 0
    # Accepted client connections: stays small when clients use keep-alive.
    connections: int = 0
    bulk_items_rejected: int = 0
    # Every fail_next_requests injection, whatever status was asked for.
    requests_failed_503: int = 0
    resets_after_forward: int = 0
    # Requests refused, and open connections dropped, because of an outage.
    outage_refusals: int = 0
    too_large: int = 0
    # Upstream unreachable or broken; the client got a 502.
    upstream_errors: int = 0
    # _bulk requests being answered right now, and the most there ever were at once.
    bulk_in_flight: int = 0
    bulk_in_flight_max: int = 0

    def reset(self) -> None:
        """Zero all counters."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, 0)

    def snapshot(self) -> dict[str, int]:
        """Return a copy of the counters as a dict."""
        return dataclasses.asdict(self)


@dataclass
class Faults:
    """Thread-safe fault-injection settings shared by test code and the proxy loop."""

    seed: int = 0
    latency_s: float = 0.0
    bulk_item_429_rate: float = 0.0
    max_body_bytes: int | None = None
    # Every bulk item answered with this (status, type, reason) while set.
    bulk_item_error: tuple[int, str, str] | None = None
    # Only the items of this index get `bulk_item_error` (None: every item).
    block_only_index: str | None = None
    # Every _bulk request answered with this (status, type, reason) while set...
    bulk_request_error: tuple[int, str, str] | None = None
    # ... or only those with more items than this, as a memory circuit breaker would.
    bulk_request_error_max_items: int | None = None
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _fail_remaining: int = field(default=0, init=False)
    _fail_status: int = field(default=503, init=False)
    _reset_remaining: int = field(default=0, init=False)
    _outage_until: float = field(default=0.0, init=False)
    _outage_manual: bool = field(default=False, init=False)
    _outage_listeners: list[Callable[[], None]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        """Seed the RNG so injected faults are repeatable."""
        self._rng = random.Random(self.seed)

    def fail_next_requests(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status`` without forwarding them."""
        with self._lock:
            self._fail_remaining = n
            self._fail_status = status
        log.info("proxy.fault.fail_next", n=n, status=status)

    def reset_after_forward_next(self, n: int) -> None:
        """Forward the next ``n`` requests, then drop the client connection unanswered."""
        with self._lock:
            self._reset_remaining = n
        log.info("proxy.fault.reset_after_forward", n=n)

    def outage(self, seconds: float) -> None:
        """Refuse every request for ``seconds``, as if the server were down."""
        with self._lock:
            self._outage_until = time.monotonic() + seconds
        log.info("proxy.fault.outage", seconds=seconds)
        self._notify_outage()

    def outage_on(self) -> None:
        """Start an outage that lasts until ``outage_off``."""
        with self._lock:
            self._outage_manual = True
        log.info("proxy.fault.outage_on")
        self._notify_outage()

    def outage_off(self) -> None:
        """End any outage, manual or timed."""
        with self._lock:
            self._outage_manual = False
            self._outage_until = 0.0
        log.info("proxy.fault.outage_off")

    def in_outage(self) -> bool:
        """Tell whether requests are currently being refused."""
        with self._lock:
            return self._outage_manual or time.monotonic() < self._outage_until

    def reset(self) -> None:
        """Clear every fault and reseed the RNG."""
        with self._lock:
            self.latency_s = 0.0
            self.bulk_item_429_rate = 0.0
            self.max_body_bytes = None
            self.bulk_item_error = None
            self.block_only_index = None
            self.bulk_request_error = None
            self.bulk_request_error_max_items = None
            self._fail_remaining = 0
            self._fail_status = 503
            self._reset_remaining = 0
            self._outage_until = 0.0
            self._outage_manual = False
            self._rng = random.Random(self.seed)

    def _add_outage_listener(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._outage_listeners.append(callback)

    def _notify_outage(self) -> None:
        with self._lock:
            listeners = list(self._outage_listeners)
        # Called outside the lock: listeners hop onto the proxy's loop thread.
        for callback in listeners:
            callback()

    def _take_failure(self) -> int | None:
        with self._lock:
            if self._fail_remaining <= 0:
                return None
            self._fail_remaining -= 1
            return self._fail_status

    def _take_reset(self) -> bool:
        with self._lock:
            if self._reset_remaining <= 0:
                return False
            self._reset_remaining -= 1
            return True

    def _pick_rejections(self, items: list[_BulkItem]) -> list[bool]:
        n = len(items)
        with self._lock:
            if self.bulk_item_error is not None:
                only = self.block_only_index
                return [only is None or item.index == only for item in items]
            rate = self.bulk_item_429_rate
            if rate <= 0:
                return [False] * n
            return [self._rng.random() < rate for _ in range(n)]


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class _Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


@dataclass
class _BulkItem:
    op: str
    index: str | None
    doc_id: str | None
    lines: list[bytes]


@dataclass
class _BulkPlan:
    items: list[_BulkItem]
    rejected: list[bool]
    error: tuple[int, str, str] = (
        429,
        "es_rejected_execution_exception",
        "rejected execution (injected by proxy)",
    )

    @property
    def all_rejected(self) -> bool:
        return all(self.rejected)

    def forwarded_body(self) -> bytes:
        kept = [
            line
            for item, rej in zip(self.items, self.rejected, strict=True)
            if not rej
            for line in item.lines
        ]
        return b"\n".join(kept) + b"\n"

    def merge(self, upstream: _Response | None) -> _Response:
        """Splice rejected items back into the upstream result at their positions."""
        if upstream is not None and upstream.status != 200:
            # The whole request failed; the client will retry every item anyway.
            return upstream
        kept_count = self.rejected.count(False)
        upstream_items: list[Any] = []
        doc: dict[str, Any] = {"took": 0, "errors": True}
        headers: list[tuple[str, str]] = [("Content-Type", "application/json; charset=UTF-8")]
        if upstream is not None:
            try:
                parsed = json.loads(upstream.body)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict) or not isinstance(parsed.get("items"), list):
                return _error_response(502, "upstream bulk response is not valid JSON")
            upstream_items = parsed["items"]
            doc = parsed
            headers = upstream.headers
        if len(upstream_items) != kept_count:
            # Never hide a mismatch: the client would believe rejected items succeeded.
            return _error_response(502, "upstream bulk response has an unexpected item count")
        source = iter(upstream_items)
        merged: list[Any] = []
        for item, rej in zip(self.items, self.rejected, strict=True):
            if rej:
                merged.append(
                    {
                        item.op: {
                            "_index": item.index,
                            "_id": item.doc_id,
                            "status": self.error[0],
                            "error": {"type": self.error[1], "reason": self.error[2]},
                        }
                    }
                )
            else:
                merged.append(next(source))
        doc["items"] = merged
        doc["errors"] = True
        body = json.dumps(doc, separators=(",", ":")).encode()
        return _Response(200, "OK", headers, body)


def _error_response(status: int, reason: str, err_type: str | None = None) -> _Response:
    """Build an Elasticsearch-style error response."""
    err_type = err_type or _ERROR_TYPES.get(status, "proxy_injected_exception")
    cause = {"type": err_type, "reason": reason}
    body = json.dumps({"error": {"root_cause": [cause], **cause}, "status": status}).encode()
    headers = [("Content-Type", "application/json; charset=UTF-8")]
    return _Response(status, _REASONS.get(status, "Error"), headers, body)


def _parse_head_lines(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    """Split an HTTP head into its first line and header pairs."""
    lines = head.decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(f"malformed header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _parse_request_head(head: bytes) -> _Request:
    """Parse the request line and headers."""
    first, headers = _parse_head_lines(head)
    parts = first.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest(f"malformed request line {first!r}")
    return _Request(parts[0].upper(), parts[1], parts[2], headers)


def _tokens(value: str | None) -> set[str]:
    """Split a comma-separated header into lowercase tokens."""
    if not value:
        return set()
    return {t.strip().lower() for t in value.split(",")}


def _client_keep_alive(req: _Request) -> bool:
    """Tell whether the client wants the connection kept open after this request."""
    tokens = _tokens(req.header("connection"))
    if req.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _is_chunked(value: str | None) -> bool:
    return "chunked" in _tokens(value)


async def _read_chunked(reader: asyncio.StreamReader, limit: int | None) -> tuple[bytes, int]:
    """Decode a chunked body; beyond ``limit`` bytes the data is discarded but counted."""
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _BadRequest("malformed chunk size") from exc
        if size == 0:
            # Trailers end with an empty line; they carry nothing we need.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            break
        total += size
        if limit is not None and total > limit:
            parts.clear()
            await _drain(reader, size)
        else:
            parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    return b"".join(parts), total


async def _drain(reader: asyncio.StreamReader, n: int) -> None:
    """Read and discard ``n`` bytes without holding them all in memory."""
    while n > 0:
        chunk = await reader.readexactly(min(n, _DRAIN_CHUNK))
        n -= len(chunk)


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[_Response, bool]:
    """Read one upstream response; also return whether the connection can be reused."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        first, headers = _parse_head_lines(head)
        parts = first.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise _UpstreamError(f"malformed status line {first!r}")
        status = int(parts[1])
        # Interim 1xx responses are not forwarded: the proxy never sends Expect upstream.
        if not 100 <= status < 200:
            break
    resp = _Response(status, parts[2] if len(parts) > 2 else "", headers, b"")
    tokens = _tokens(resp.header("connection"))
    reusable = "close" not in tokens and (parts[0] != "HTTP/1.0" or "keep-alive" in tokens)
    length = resp.header("content-length")
    if method == "HEAD" or status in (204, 304):
        pass
    elif _is_chunked(resp.header("transfer-encoding")):
        resp.body, _ = await _read_chunked(reader, None)
    elif length is not None:
        resp.body = await reader.readexactly(int(length))
    else:
        resp.body = await reader.read()
        reusable = False
    return resp, reusable


def _parse_bulk(body: bytes, default_index: str | None) -> list[_BulkItem] | None:
    """Split an NDJSON bulk body into items; None if it is not something we understand."""
    lines = body.split(b"\n")
    items: list[_BulkItem] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        try:
            action = json.loads(line)
        except ValueError:
            return None
        if not isinstance(action, dict) or len(action) != 1:
            return None
        ((op, meta),) = action.items()
        if not isinstance(meta, dict):
            return None
        if op in _BULK_OPS_WITH_SOURCE:
            if i >= n:
                return None
            item_lines = [line, lines[i]]
            i += 1
        elif op == "delete":
            item_lines = [line]
        else:
            return None
        index = meta.get("_index", default_index)
        doc_id = meta.get("_id")
        items.append(
            _BulkItem(
                op,
                None if index is None else str(index),
                None if doc_id is None else str(doc_id),
                item_lines,
            )
        )
    return items


def _bulk_default_index(path: str) -> str | None:
    """Return the index named in a ``/{index}/_bulk`` path, if any."""
    segments = [s for s in path.split("/") if s]
    if len(segments) >= 2 and segments[-1] == "_bulk":
        return unquote(segments[-2])
    return None


def _is_bulk(req: _Request) -> bool:
    return req.method in ("POST", "PUT") and req.path.rstrip("/").endswith("/_bulk")


def _write_message(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
    """Queue an HTTP message head and body on ``writer``."""
    if len(body) < _COALESCE_BYTES:
        # One write, one segment: head and body never wait on each other.
        writer.write(head + body)
    else:
        # Copying tens of MB just to save a write call is not worth it.
        writer.write(head)
        writer.write(body)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close the connection so the peer sees a reset rather than a clean EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class _UpstreamConn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


class CompatProxy:
    """HTTP proxy making osmem-server answer as a chosen engine, with fault injection."""

    def __init__(
        self,
        upstream: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        seed: int = 0,
        engine: str = "elasticsearch-9",
    ) -> None:
        """Configure the proxy; nothing listens until ``start``."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self._up_host = parts.hostname
        self._up_port = parts.port or 80
        self._host = host
        self._port = port
        self.faults = Faults(seed=seed)
        self.stats = Stats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._clients: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._idle_upstream: list[_UpstreamConn] = []
        self.faults._add_outage_listener(self._outage_started)

    @property
    def port(self) -> int:
        """The port the proxy listens on (known after ``start``)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL clients should use."""
        return f"http://{self._host}:{self._port}"

    def start(self) -> Self:
        """Start listening on a background thread; return once the port is bound."""
        if self._thread is not None:
            return self
        # A stopped proxy may be started again; it then binds the same port.
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(
            target=self._run, name=f"esproxy-{self._up_port}", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        log.info("proxy.started", url=self.url, upstream=self.upstream)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and all connections, then end the loop thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        self._thread = None
        log.info("proxy.stopped", url=self.url, **self.stats.snapshot())

    def __enter__(self) -> Self:
        """Start the proxy."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the proxy."""
        self.stop()

    # -- loop thread -------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
            else:
                log.exception("proxy.crashed", url=self.url)
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._handle_client, self._host, self._port, limit=_STREAM_LIMIT, backlog=1024
        )
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            tasks = list(self._clients)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for conn in self._idle_upstream:
                conn.writer.close()
            self._idle_upstream.clear()
            await server.wait_closed()
            # Transports close their sockets on a later loop iteration; let that happen
            # before the loop is closed so no socket leaks a ResourceWarning.
            for _ in range(3):
                await asyncio.sleep(0)

    def _outage_started(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._abort_all_clients)

    def _abort_all_clients(self) -> None:
        # A crashed server drops every connection, idle keep-alive ones included.
        for task, writer in list(self._clients.items()):
            self.stats.outage_refusals += 1
            _abort_with_rst(writer)
            task.cancel()

    async def _handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        self.stats.connections += 1
        abort = False
        try:
            if self.faults.in_outage():
                self.stats.outage_refusals += 1
                abort = True
                return
            while await self._serve_one(reader, writer):
                pass
        except _AbortConnection:
            abort = True
        except asyncio.CancelledError:
            abort = True
        except _BadRequest as exc:
            with contextlib.suppress(ConnectionError):
                await self._send(
                    writer, _error_response(400, str(exc)), keep_alive=False, head=False
                )
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            # The client went away or sent an oversized head; nothing useful to say.
            pass
        except Exception:
            log.exception("proxy.client_error")
        finally:
            self._clients.pop(task, None)
            if abort:
                _abort_with_rst(writer)
            else:
                writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Handle one request; return whether the connection stays open."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return False  # clean close between requests
            raise
        req = _parse_request_head(head)
        self.stats.requests += 1
        if not _is_bulk(req):
            return await self._serve_request(reader, writer, req)
        self.stats.bulk_in_flight += 1
        self.stats.bulk_in_flight_max = max(
            self.stats.bulk_in_flight_max, self.stats.bulk_in_flight
        )
        try:
            return await self._serve_request(reader, writer, req)
        finally:
            self.stats.bulk_in_flight -= 1

    async def _serve_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: _Request
    ) -> bool:
        """Answer one parsed request; return whether the connection stays open."""
        faults = self.faults
        if faults.in_outage():
            self.stats.outage_refusals += 1
            raise _AbortConnection
        keep_alive = _client_keep_alive(req)
        is_head = req.method == "HEAD"
        if "100-continue" in _tokens(req.header("expect")):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        too_large = await self._read_body(reader, req, faults.max_body_bytes)
        if too_large:
            self.stats.too_large += 1
            resp = _error_response(413, f"request body exceeds {faults.max_body_bytes} bytes")
            await self._send(writer, resp, keep_alive, is_head)
            return keep_alive

        status = faults._take_failure()
        if status is not None:
            self.stats.requests_failed_503 += 1
            resp = _error_response(status, "request failed (injected by proxy)")
            await self._send(writer, resp, keep_alive, is_head)
            return keep_alive

        if faults.latency_s > 0:
            await asyncio.sleep(faults.latency_s)
            if faults.in_outage():
                self.stats.outage_refusals += 1
                raise _AbortConnection

        local = self._as_engine(req)
        if local is not None:
            await self._send(writer, local, keep_alive, is_head)
            return keep_alive

        plan: _BulkPlan | None = None
        body = req.body
        request_error = faults.bulk_request_error
        limit = faults.bulk_request_error_max_items
        if request_error is not None and limit is not None and _is_bulk(req):
            parsed = _parse_bulk(body, _bulk_default_index(req.path)) or []
            if len(parsed) <= limit:
                request_error = None
        if request_error is not None and _is_bulk(req):
            status, err_type, reason = request_error
            self.stats.requests_failed_503 += 1
            resp = _error_response(status, reason, err_type)
            await self._send(writer, resp, keep_alive, is_head)
            return keep_alive
        item_error = faults.bulk_item_error
        if (faults.bulk_item_429_rate > 0 or item_error is not None) and _is_bulk(req):
            items = _parse_bulk(body, _bulk_default_index(req.path))
            if items:
                rejected = faults._pick_rejections(items)
                if any(rejected):
                    plan = _BulkPlan(items, rejected)
                    if item_error is not None:
                        plan.error = item_error
                    self.stats.bulk_items_rejected += rejected.count(True)
                    body = plan.forwarded_body()

        reset = faults._take_reset()
        if plan is not None and plan.all_rejected:
            resp = plan.merge(None)
        else:
            resp = await self._forward(req, body)
            if plan is not None:
                resp = plan.merge(resp)

        if reset:
            self.stats.resets_after_forward += 1
            raise _AbortConnection
        await self._send(writer, resp, keep_alive, is_head)
        return keep_alive

    def _as_engine(self, req: _Request) -> _Response | None:
        """The emulated engine's own answer to a request, or None to forward it."""
        if self.engine not in _ES_VERSIONS:
            return None
        number, accepted = _ES_VERSIONS[self.engine]
        for header in ("Accept", "Content-Type"):
            value = req.header(header.lower())
            found = _COMPAT_VERSION.search(value or "")
            if found and int(found.group(1)) not in accepted:
                return _media_type_error(header, value or "", accepted)
        if req.method in ("GET", "HEAD") and req.path == "/":
            return _Response(200, "OK", [("Content-Type", "application/json")], _es_info(number))
        return None

    async def _read_body(
        self, reader: asyncio.StreamReader, req: _Request, limit: int | None
    ) -> bool:
        """Read the request body into ``req``; return True if it exceeded ``limit``."""
        if _is_chunked(req.header("transfer-encoding")):
            req.body, total = await _read_chunked(reader, limit)
            too_large = limit is not None and total > limit
        else:
            raw_length = req.header("content-length")
            try:
                length = int(raw_length) if raw_length is not None else 0
            except ValueError as exc:
                raise _BadRequest("invalid Content-Length") from exc
            if length < 0:
                raise _BadRequest("invalid Content-Length")
            if limit is not None and length > limit:
                # Drain rather than close: closing with unread data makes the kernel
                # send RST and the client would never see the 413.
                await _drain(reader, length)
                return True
            req.body = await reader.readexactly(length) if length else b""
            too_large = False
        if too_large:
            req.body = b""
            return True
        if "gzip" in _tokens(req.header("content-encoding")):
            try:
                req.body = gzip.decompress(req.body)
            except (OSError, EOFError) as exc:
                raise _BadRequest("invalid gzip body") from exc
        return False

    async def _upstream_conn(self) -> tuple[_UpstreamConn, bool]:
        """Return an idle upstream connection or a new one, and whether it was reused."""
        while self._idle_upstream:
            conn = self._idle_upstream.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn, True
            conn.writer.close()
        reader, writer = await asyncio.open_connection(
            self._up_host, self._up_port, limit=_STREAM_LIMIT
        )
        return _UpstreamConn(reader, writer), False

    async def _forward(self, req: _Request, body: bytes) -> _Response:
        """Send the request upstream and return its fully-read response."""
        lines = [f"{req.method} {req.target} HTTP/1.1", f"Host: {self._up_host}:{self._up_port}"]
        for name, value in req.headers:
            lower = name.lower()
            if lower in _REQUEST_DROP:
                continue
            if lower in ("content-type", "accept") and self.engine != "opensearch":
                value = _compat_mime(value)
            lines.append(f"{name}: {value}")
        if body or req.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        for attempt in range(2):
            try:
                conn, reused = await self._upstream_conn()
            except OSError as exc:
                return self._upstream_failed(req, exc)
            keep = False
            try:
                _write_message(conn.writer, head, body)
                await conn.writer.drain()
                resp, keep = await _read_response(conn.reader, req.method)
                return resp
            except asyncio.IncompleteReadError as exc:
                # A pooled connection the upstream closed while idle fails before any
                # byte of the response; only then is a resend safe.
                if reused and attempt == 0 and not exc.partial:
                    continue
                return self._upstream_failed(req, exc)
            except (OSError, _UpstreamError, ValueError, asyncio.LimitOverrunError) as exc:
                if reused and attempt == 0 and isinstance(exc, ConnectionError):
                    continue
                return self._upstream_failed(req, exc)
            finally:
                if keep and len(self._idle_upstream) < _MAX_IDLE_UPSTREAM:
                    self._idle_upstream.append(conn)
                else:
                    conn.writer.close()
        raise AssertionError("unreachable")

    def _upstream_failed(self, req: _Request, exc: BaseException) -> _Response:
        self.stats.upstream_errors += 1
        log.warning("proxy.upstream_error", method=req.method, path=req.path, error=repr(exc))
        return _error_response(502, f"upstream unavailable: {exc!r}")

    async def _send(
        self, writer: asyncio.StreamWriter, resp: _Response, keep_alive: bool, head: bool
    ) -> None:
        """Write a response with a correct Content-Length and keep-alive semantics."""
        lines = [f"HTTP/1.1 {resp.status} {resp.reason or _REASONS.get(resp.status, '')}"]
        has_product = False
        for name, value in resp.headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP:
                continue
            if lower == "x-elastic-product":
                if self.engine == "opensearch":
                    # osmem sends it; OpenSearch never does.
                    continue
                has_product = True
            lines.append(f"{name}: {value}")
        if not has_product and self.engine != "opensearch":
            lines.append("X-Elastic-Product: Elasticsearch")
        if head:
            # A HEAD answer describes the GET body it omits; pass upstream's length on.
            length = resp.header("content-length")
            if length is not None:
                lines.append(f"Content-Length: {length}")
        else:
            lines.append(f"Content-Length: {len(resp.body)}")
        if not keep_alive:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        _write_message(writer, data, b"" if head else resp.body)
        await writer.drain()
