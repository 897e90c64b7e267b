"""A bench instrument: a search endpoint whose `_bulk` succeeds at no cost.

It answers every bulk item with success without indexing anything, and forwards every other
request (`GET /`, index creation, aliases, refreshes) to the real server behind it. With the
search side taken out, what a drain or a rebuild measures through it is indexsync and
PostgreSQL alone: the worker's own ceiling.

Never used by a test of behaviour: documents sent through it do not exist afterwards.
`GET /_null_sink/stats` (answered here) says how many requests and items it swallowed, so
the benchmark can check that every change really was sent.

Run as `python -m bench.null_sink UPSTREAM_URL`: prints one JSON line with its URL, then
serves until standard input closes or SIGTERM. It runs in its own process so that its
work never competes with the benchmark's (or the worker's) interpreter.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import urllib3

# Headers that describe one hop, or that we recompute.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.items = 0
        self.body_bytes = 0

    def add(self, items: int, body_bytes: int) -> None:
        with self.lock:
            self.requests += 1
            self.items += items
            self.body_bytes += body_bytes

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"requests": self.requests, "items": self.items, "body_bytes": self.body_bytes}


def _filtered(item: dict[str, Any], keep: set[str] | None) -> dict[str, Any]:
    return item if keep is None else {k: v for k, v in item.items() if k in keep}


_STATUS_ONLY = {"errors", "items.*.status", "items.*.error"}
_CREATED = {b"index": b'{"index":{"status":201}}', b"create": b'{"create":{"status":201}}'}


def _answer_status_only(body: bytes) -> tuple[bytes, int]:
    """The answer when the client only asks for statuses: no JSON parsing at all."""
    items: list[bytes] = []
    lines = [line for line in body.split(b"\n") if line.strip()]
    i = 0
    while i < len(lines):
        op = lines[i].split(b'"', 2)[1]
        if op == b"delete":
            items.append(b'{"delete":{"status":200}}')
            i += 1
        else:
            items.append(_CREATED.get(op, b'{"update":{"status":200}}'))
            i += 2
    return b'{"errors":false,"items":[' + b",".join(items) + b"]}", len(items)


def answer_bulk(body: bytes, filter_path: str | None = None) -> tuple[bytes, int]:
    """The response to a bulk body with every item a success, and the number of items.

    `filter_path` is honoured for the forms a bulk client uses (`errors,items.*.status`),
    so the client parses what a real server would send it.
    """
    if filter_path and {p.strip() for p in filter_path.split(",")} <= _STATUS_ONLY:
        # The worker's own request: kept cheap, so the sink takes little of the machine.
        return _answer_status_only(body)
    keep_top: set[str] | None = None
    keep_item: set[str] | None = None
    if filter_path:
        paths = [p.strip() for p in filter_path.split(",") if p.strip()]
        keep_top = {p.split(".", 1)[0] for p in paths}
        keep_item = {p.split(".", 2)[2] for p in paths if p.startswith("items.*.")} or None
    items: list[dict[str, Any]] = []
    lines = [line for line in body.split(b"\n") if line.strip()]
    i = 0
    while i < len(lines):
        action = json.loads(lines[i])
        ((op, meta),) = action.items()
        i += 1 if op == "delete" else 2
        version = meta.get("version", 1)
        if op == "delete":
            result = {"result": "deleted", "status": 200}
        else:
            result = {"result": "created", "status": 201}
        items.append(
            {
                op: _filtered(
                    {
                        "_index": meta.get("_index"),
                        "_id": meta.get("_id"),
                        "_version": version,
                        "_shards": {"total": 1, "successful": 1, "failed": 0},
                        "_seq_no": 0,
                        "_primary_term": 1,
                        **result,
                    },
                    keep_item,
                )
            }
        )
    answer = _filtered({"took": 0, "errors": False, "items": items}, keep_top)
    return json.dumps(answer, separators=(",", ":")).encode(), len(items)


def _is_bulk(path: str) -> bool:
    route = path.split("?", 1)[0].rstrip("/")
    return route == "/_bulk" or route.endswith("/_bulk")


def make_handler(upstream: str, counters: _Counters) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one upstream server."""
    pool = urllib3.PoolManager(maxsize=16, retries=False, timeout=urllib3.Timeout(300))
    base = upstream.rstrip("/")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the bench reads figures, not access logs."""

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                body = gzip.decompress(body)
            return body

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            body = self._body()
            if self.command in ("POST", "PUT") and _is_bulk(self.path):
                query = parse_qs(urlsplit(self.path).query)
                answer, items = answer_bulk(body, ",".join(query.get("filter_path", [])) or None)
                counters.add(items, len(body))
                # elasticsearch-py checks this header on every answer.
                headers = [
                    ("Content-Type", "application/json"),
                    ("X-Elastic-Product", "Elasticsearch"),
                ]
                self._send(200, headers, answer)
                return
            if self.command == "GET" and self.path.startswith("/_null_sink/stats"):
                self._send(
                    200,
                    [("Content-Type", "application/json")],
                    json.dumps(counters.snapshot()).encode(),
                )
                return
            forwarded = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in _HOP_BY_HOP | {"content-encoding", "content-length"}
            }
            response = pool.request(
                self.command,
                base + self.path,
                body=body or None,
                headers=forwarded,
                redirect=False,
                decode_content=True,
            )
            out = [(k, v) for k, v in response.headers.items() if k.lower() != "content-encoding"]
            self._send(response.status, out, response.data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Serve the null sink in front of the upstream URL given as the only argument."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.null_sink UPSTREAM_URL", file=sys.stderr)
        return 2
    counters = _Counters()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(args[0], counters))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        """Ask the main loop to stop."""
        stop.set()

    def wait_for_eof() -> None:
        """Stop when the parent closes our standard input (or dies)."""
        while os.read(0, 65536):
            pass
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=server.serve_forever, name="null-sink", daemon=True).start()
    threading.Thread(target=wait_for_eof, name="stdin-eof", daemon=True).start()
    print(json.dumps({"url": f"http://{host!s}:{port}"}), flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
