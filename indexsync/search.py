"""The search adapter: the operations indexsync needs, whatever the engine, and what answers mean.

Every engine is reached through the same `Rest` interface (clients.py) and the same REST
calls; the differences between engines live in the client, and every failure is
classified here, once: items of a bulk response by `classify`, requests by `translate`.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from indexsync import clients, engines
from indexsync.clients import HttpFailure, Rest
from indexsync.engines import Engine
from indexsync.errors import (
    CredentialsRejected,
    IndexMissing,
    IndexsyncError,
    SearchError,
    SearchUnavailable,
)
from indexsync.logs import redact
from indexsync.settings import Settings

_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


class Outcome(enum.Enum):
    """What a bulk item's response means for its outbox row."""

    DONE = "done"
    RETRY = "retry"
    DEAD = "dead"
    # The index refuses writes for now (a write block, a flood-stage disk, a privilege that
    # was revoked): pause it and keep its changes; it is not the document's fault.
    BLOCKED = "blocked"
    MISSING_INDEX = "missing_index"


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The classified response to one bulk item."""

    outcome: Outcome
    status: int
    error_type: str
    reason: str


_DONE = ItemResult(Outcome.DONE, 200, "", "")


def classify(item: Mapping[str, Any]) -> ItemResult:
    """Classify one entry of a bulk response's `items`."""
    ((action, body),) = item.items()
    status = int(body.get("status", 500))
    error = body.get("error")
    if error is None and status < 300:
        return _DONE
    error_type = reason = ""
    if isinstance(error, Mapping):
        error_type = str(error.get("type", ""))
        reason = str(error.get("reason", ""))
    elif error is not None:
        reason = str(error)
    if error_type == "index_not_found_exception":
        return ItemResult(Outcome.MISSING_INDEX, status, error_type, reason)
    if _blocks(status, error_type):
        return ItemResult(Outcome.BLOCKED, status, error_type, reason)
    if status == 409 or (status == 404 and action == "delete"):
        # 409: a newer version is already there. 404 on delete: nothing to delete.
        return ItemResult(Outcome.DONE, status, error_type, reason)
    if status in _RETRYABLE_STATUS or status >= 500:
        return ItemResult(Outcome.RETRY, status, error_type, reason)
    return ItemResult(Outcome.DEAD, status, error_type, reason)


def _blocks(status: int, error_type: str) -> bool:
    """Whether an error says the index refuses writes for now, rather than the document."""
    # cluster_block_exception: index.blocks.write or read_only ("FORBIDDEN/8/index write
    # (api)", "FORBIDDEN/5/index read-only (api)") with 403, and the flood-stage disk
    # watermark ("TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark") with 429,
    # on Elasticsearch and OpenSearch alike. security_exception: a privilege missing on the
    # index (403) or credentials refused (401).
    if error_type == "cluster_block_exception" and status in (403, 429):
        return True
    return error_type == "security_exception" and status in (401, 403)


def _error(body: Any) -> tuple[str, str]:
    """The error type and reason of an error answer."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        return str(error.get("type") or ""), str(error.get("reason") or "")
    if error is not None:
        return "", str(error)[:300]
    return "", str(body)[:300] if body else ""


class RequestTooLarge(SearchError):
    """The server refused a bulk body for its size (413)."""


class CircuitBroken(SearchUnavailable):
    """The server refused a whole request for memory (429 circuit_breaking_exception)."""


class RequestBlocked(SearchUnavailable):
    """The server refused a whole request because the target refuses writes (403/429 block)."""


def translate(failure: HttpFailure) -> IndexsyncError:
    """Map an error answer onto indexsync's hierarchy, keeping secrets out of the message."""
    status = failure.status
    error_type, reason = _error(failure.body)
    message = redact(f"the search server answered {status}: {error_type} {reason}".strip())
    if status == 401:
        return CredentialsRejected(
            message + " (check INDEXSYNC_ELASTICSEARCH_API_KEY or ..._USERNAME/..._PASSWORD, "
            "or the AWS credentials)"
        )
    if status == 413:
        return RequestTooLarge(message + " (lower INDEXSYNC_BULK_MAX_BYTES)")
    if status == 429 and error_type == "circuit_breaking_exception":
        return CircuitBroken(message)
    if _blocks(status, error_type):
        return RequestBlocked(message)
    if status in _RETRYABLE_STATUS or status >= 500:
        return SearchUnavailable(message)
    if error_type == "index_not_found_exception" or status == 404:
        return IndexMissing(message)
    if status == 403:
        return SearchError(message + " (check the privileges of the search credentials)")
    return SearchError(message)


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(part, safe=",*") for part in parts)


def _mget_body(ids: list[str], routings: Mapping[str, str | None] | None) -> dict[str, Any]:
    # A routed document is only found on the shard its routing names.
    if not routings or not any(routings.values()):
        return {"ids": ids}
    docs = []
    for doc_id in ids:
        routing = routings.get(doc_id)
        docs.append({"_id": doc_id, "routing": routing} if routing is not None else {"_id": doc_id})
    return {"docs": docs}


class Search:
    """The operations indexsync needs from the search server."""

    def __init__(self, rest: Rest, engine: Engine) -> None:
        self.rest = rest
        self.engine = engine

    @classmethod
    def connect(cls, settings: Settings) -> Search:
        """Detect the engine (unless the settings name it) and open its official client."""
        engine = engines.detect(settings)
        return cls(clients.connect(settings, engine), engine)

    def close(self) -> None:
        """Close the client's connections."""
        self.rest.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        ndjson: bool = False,
        rest: Rest | None = None,
    ) -> Any:
        try:
            return (rest or self.rest).request(
                method, path, params=params, body=body, ndjson=ndjson
            )
        except HttpFailure as failure:
            raise translate(failure) from failure

    def ping(self) -> dict[str, Any]:
        """Cluster info (`GET /`); raises when the server cannot be reached."""
        if self.engine.serverless:
            # Serverless collections do not serve `GET /`.
            return {"version": {"distribution": "opensearch", "number": "serverless"}}
        return dict(self._call("GET", "/"))

    def health_ping(self, timeout: float) -> None:
        """A cheap liveness check with its own short timeout, for `/readyz`."""
        if self.engine.serverless:
            self._call("GET", "/_cat/indices", params={"format": "json"},
                       rest=self.rest.with_timeout(timeout))  # fmt: skip
            return
        self._call("GET", "/", rest=self.rest.with_timeout(timeout))

    def alias_targets(self, alias: str) -> list[str]:
        """Physical indexes behind an alias (empty when the alias does not exist)."""
        if not self._call("HEAD", _path("_alias", alias)):
            return []
        return sorted(self._call("GET", _path("_alias", alias)))

    def generations(self, alias: str) -> list[str]:
        """The physical indexes named like the alias's generations (`<alias>-<n>`)."""
        found = self._call("GET", _path(f"{alias}-*", "_alias"))
        prefix = f"{alias}-"
        return sorted(
            name for name in found if name.startswith(prefix) and name[len(prefix) :].isdigit()
        )

    def exists(self, name: str) -> bool:
        """Whether an index or alias of this name exists."""
        return bool(self._call("HEAD", _path(name)))

    def is_physical_index(self, name: str) -> bool:
        """Whether `name` is a concrete index (not an alias)."""
        if not self.exists(name):
            return False
        return not self.alias_targets(name)

    def create_index(self, name: str, body: Mapping[str, Any], alias: str | None = None) -> None:
        """Create a physical index, optionally behind an alias in the same call."""
        payload = {k: v for k, v in body.items() if k in ("settings", "mappings") and v}
        if alias is not None:
            payload["aliases"] = {alias: {}}
        self._call("PUT", _path(name), body=payload)

    def delete_index(self, name: str) -> None:
        """Delete a physical index; a missing one is fine."""
        with contextlib.suppress(IndexMissing):
            self._call("DELETE", _path(name))

    def refresh(self, name: str) -> None:
        """Make recent writes visible to search."""
        self._call("POST", _path(name, "_refresh"))

    def pipeline_exists(self, name: str) -> bool:
        """Whether an ingest pipeline of this name exists."""
        try:
            return bool(self._call("GET", _path("_ingest", "pipeline", name)))
        except IndexMissing:
            return False

    def refresh_interval(self, name: str) -> str | None:
        """The index's `refresh_interval` as set, or the engine's default ("1s" when the
        answer names none)."""
        response = self._call(
            "GET",
            _path(name, "_settings", "index.refresh_interval"),
            params={"include_defaults": "true"},
        )
        for body in response.values():
            for part in ("settings", "defaults"):
                value = body.get(part, {}).get("index", {}).get("refresh_interval")
                if value is not None:
                    return str(value)
        return None

    def put_settings(self, name: str, settings: Mapping[str, Any]) -> None:
        """Change dynamic index settings."""
        self._call("PUT", _path(name, "_settings"), body=dict(settings))

    def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        """Apply alias actions atomically, in one `_aliases` call."""
        self._call("POST", "/_aliases", body={"actions": actions})

    def get_meta(self, index: str) -> dict[str, Any]:
        """The `_meta` of an index's mapping."""
        response = self._call("GET", _path(index, "_mapping"))
        for body in response.values():
            meta = body.get("mappings", {}).get("_meta")
            return dict(meta) if isinstance(meta, Mapping) else {}
        return {}

    def put_meta(self, index: str, values: Mapping[str, Any]) -> None:
        """Merge keys into the `_meta` of an index's mapping."""
        meta = {**self.get_meta(index), **values}
        self._call("PUT", _path(index, "_mapping"), body={"_meta": meta})

    def mget(
        self, index: str, ids: list[str], routings: Mapping[str, str | None] | None = None
    ) -> dict[str, tuple[int, dict[str, Any]]]:
        """Version and source of each id found (realtime, no refresh needed), each looked
        for at its routing when `routings` names one."""
        response = self._call("POST", _path(index, "_mget"), body=_mget_body(ids, routings))
        return {
            doc["_id"]: (int(doc["_version"]), doc["_source"])
            for doc in response["docs"]
            if doc.get("found")
        }

    def routings(self, index: str, ids: list[str]) -> dict[str, set[str]]:
        """The routings under which documents of these ids are found (as of the last
        refresh: a search, since a realtime get needs the routing it is looking for)."""
        found: dict[str, set[str]] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            body = {"query": {"ids": {"values": chunk}}, "_source": False, "size": 10 * len(chunk)}
            response = self._call("POST", _path(index, "_search"), body=body)
            for hit in response["hits"]["hits"]:
                routing = hit.get("_routing")
                if routing is not None:
                    found.setdefault(hit["_id"], set()).add(str(routing))
        return found

    def versions(
        self, index: str, ids: list[str], routings: Mapping[str, str | None] | None = None
    ) -> dict[str, int]:
        """The version of each id found, without its source (realtime, no refresh needed)."""
        response = self._call(
            "POST",
            _path(index, "_mget"),
            body=_mget_body(ids, routings),
            params={"_source": "false"},
        )
        return {doc["_id"]: int(doc["_version"]) for doc in response["docs"] if doc.get("found")}

    def bulk(self, body: bytes) -> list[ItemResult]:
        """Send one NDJSON body and classify every item, in order."""
        response = self._call(
            "POST",
            "/_bulk",
            # Only what classification reads: items shrink from ~190 bytes to ~30.
            params={"filter_path": "errors,items.*.status,items.*.error"},
            body=body,
            ndjson=True,
        )
        return [classify(item) for item in response["items"]]

    def scan(
        self, index: str, *, source: bool = True, page: int = 1000, keep_alive: str = "2m"
    ) -> Iterator[dict[str, Any]]:
        """Every hit of an index in `_doc` order, with its version, through a scroll."""
        response = self._call(
            "POST",
            _path(index, "_search"),
            params={"scroll": keep_alive},
            body={"size": page, "sort": ["_doc"], "version": True, "_source": source},
        )
        scroll_id = response.get("_scroll_id")
        try:
            while True:
                hits = response["hits"]["hits"]
                if not hits:
                    return
                yield from hits
                if scroll_id is None:
                    return
                response = self._call(
                    "POST",
                    "/_search/scroll",
                    body={"scroll": keep_alive, "scroll_id": scroll_id},
                )
                scroll_id = response.get("_scroll_id", scroll_id)
        finally:
            if scroll_id is not None:
                # A scroll that cannot be cleared expires on its own.
                with contextlib.suppress(IndexsyncError):
                    self._call("DELETE", "/_search/scroll", body={"scroll_id": [scroll_id]})
