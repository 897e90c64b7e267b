"""Elasticsearch: the client, index management, and bulk writes with every item classified."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import elastic_transport
import elasticsearch
from elasticsearch import Elasticsearch

from indexsync.errors import IndexMissing, IndexsyncError, SearchError, SearchUnavailable
from indexsync.logs import redact
from indexsync.settings import Settings

T = TypeVar("T")

_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


def make_client(settings: Settings) -> Elasticsearch:
    """A client configured from settings; retries are ours, not the transport's."""
    auth: dict[str, Any] = {}
    if settings.elasticsearch_api_key is not None:
        auth["api_key"] = settings.elasticsearch_api_key.get_secret_value()
    elif settings.elasticsearch_username is not None:
        password = settings.elasticsearch_password
        auth["basic_auth"] = (
            settings.elasticsearch_username,
            password.get_secret_value() if password is not None else "",
        )
    tls: dict[str, Any] = {}
    if any(url.startswith("https://") for url in settings.elasticsearch_url):
        tls["verify_certs"] = settings.elasticsearch_verify_certs
        if settings.elasticsearch_ca_certs is not None:
            tls["ca_certs"] = str(settings.elasticsearch_ca_certs)
    return Elasticsearch(
        settings.elasticsearch_url,
        request_timeout=settings.elasticsearch_request_timeout,
        max_retries=0,
        retry_on_timeout=False,
        connections_per_node=max(10, settings.bulk_concurrency * 2),
        **auth,
        **tls,
    )


class Outcome(enum.Enum):
    """What a bulk item's response means for its outbox row."""

    DONE = "done"
    RETRY = "retry"
    DEAD = "dead"
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
    if status == 409 or (status == 404 and action == "delete"):
        # 409: a newer version is already there. 404 on delete: nothing to delete.
        return ItemResult(Outcome.DONE, status, error_type, reason)
    if status in _RETRYABLE_STATUS or status >= 500:
        return ItemResult(Outcome.RETRY, status, error_type, reason)
    return ItemResult(Outcome.DEAD, status, error_type, reason)


class RequestTooLarge(SearchError):
    """The server refused a bulk body for its size (413)."""


def translate(exc: Exception) -> IndexsyncError:
    """Map a client exception onto indexsync's hierarchy, keeping secrets out of the message."""
    if isinstance(exc, elasticsearch.ApiError):
        status = exc.meta.status
        error = exc.body.get("error") if isinstance(exc.body, Mapping) else None
        error_type = error.get("type") if isinstance(error, Mapping) else None
        reason = error.get("reason") if isinstance(error, Mapping) else str(exc.body)[:300]
        message = redact(
            f"Elasticsearch answered {status}: {error_type or ''} {reason or ''}".strip()
        )
        if status == 413:
            return RequestTooLarge(message)
        if status in _RETRYABLE_STATUS or status >= 500:
            return SearchUnavailable(message)
        if error_type == "index_not_found_exception":
            return IndexMissing(message)
        if status in (401, 403):
            return SearchError(message + " (check the Elasticsearch credentials and privileges)")
        return SearchError(message)
    if isinstance(exc, elastic_transport.TransportError):
        return SearchUnavailable(redact(f"cannot reach Elasticsearch: {exc.message}"))
    if isinstance(exc, elasticsearch.UnsupportedProductError):
        return SearchError("the server at INDEXSYNC_ELASTICSEARCH_URL is not Elasticsearch")
    return SearchError(redact(f"Elasticsearch client failed: {exc}"))


def call(fn: Callable[[], T]) -> T:
    """Run one client call, translating its errors at this boundary."""
    try:
        return fn()
    except (
        elasticsearch.ApiError,
        elastic_transport.TransportError,
        elasticsearch.UnsupportedProductError,
    ) as exc:
        raise translate(exc) from exc


class Search:
    """The operations indexsync needs from Elasticsearch."""

    def __init__(self, client: Elasticsearch) -> None:
        self.client = client

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def ping(self) -> dict[str, Any]:
        """Cluster info; raises when the server is unreachable or not Elasticsearch."""
        return dict(call(lambda: self.client.info()).body)

    def health_ping(self, timeout: float) -> None:
        """A cheap liveness check with its own short timeout, for `/readyz`."""
        client = self.client.options(request_timeout=timeout)
        call(lambda: client.info())

    def alias_targets(self, alias: str) -> list[str]:
        """Physical indexes behind an alias (empty when the alias does not exist)."""
        if not call(lambda: self.client.indices.exists_alias(name=alias)).body:
            return []
        response = call(lambda: self.client.indices.get_alias(name=alias))
        return sorted(response.body)

    def exists(self, name: str) -> bool:
        """Whether an index or alias of this name exists."""
        return bool(call(lambda: self.client.indices.exists(index=name)).body)

    def is_physical_index(self, name: str) -> bool:
        """Whether `name` is a concrete index (not an alias)."""
        if not self.exists(name):
            return False
        return not self.alias_targets(name)

    def create_index(self, name: str, body: Mapping[str, Any], alias: str | None = None) -> None:
        """Create a physical index, optionally behind an alias in the same call."""
        settings = body.get("settings")
        mappings = body.get("mappings")
        aliases: dict[str, Any] | None = {alias: {}} if alias is not None else None
        call(
            lambda: self.client.indices.create(
                index=name, settings=settings, mappings=mappings, aliases=aliases
            )
        )

    def delete_index(self, name: str) -> None:
        """Delete a physical index; a missing one is fine."""
        with contextlib.suppress(IndexMissing):
            call(lambda: self.client.indices.delete(index=name))

    def refresh(self, name: str) -> None:
        """Make recent writes visible to search."""
        call(lambda: self.client.indices.refresh(index=name))

    def put_settings(self, name: str, settings: Mapping[str, Any]) -> None:
        """Change dynamic index settings."""
        call(lambda: self.client.indices.put_settings(index=name, settings=dict(settings)))

    def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        """Apply alias actions atomically, in one `_aliases` call."""
        call(lambda: self.client.indices.update_aliases(actions=actions))

    def get_meta(self, index: str) -> dict[str, Any]:
        """The `_meta` of an index's mapping."""
        response = call(lambda: self.client.indices.get_mapping(index=index))
        for body in response.body.values():
            meta = body.get("mappings", {}).get("_meta")
            return dict(meta) if isinstance(meta, Mapping) else {}
        return {}

    def put_meta(self, index: str, values: Mapping[str, Any]) -> None:
        """Merge keys into the `_meta` of an index's mapping."""
        meta = {**self.get_meta(index), **values}
        call(lambda: self.client.indices.put_mapping(index=index, meta=meta))

    def mget(self, index: str, ids: list[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        """Version and source of each id found (realtime, no refresh needed)."""
        response = call(lambda: self.client.mget(index=index, ids=ids))
        return {
            doc["_id"]: (int(doc["_version"]), doc["_source"])
            for doc in response.body["docs"]
            if doc.get("found")
        }

    def bulk(self, body: bytes) -> list[ItemResult]:
        """Send one NDJSON body and classify every item, in order."""
        response = call(
            lambda: self.client.bulk(
                operations=body,  # type: ignore[arg-type]
                # Only what classification reads: items shrink from ~190 bytes to ~30.
                filter_path="errors,items.*.status,items.*.error",
            )
        )
        return [classify(item) for item in response.body["items"]]

    def scan(
        self, index: str, *, source: bool = True, page: int = 1000, keep_alive: str = "2m"
    ) -> Iterator[dict[str, Any]]:
        """Every hit of an index in `_doc` order, with its version, through a scroll."""
        response = call(
            lambda: self.client.search(
                index=index,
                scroll=keep_alive,
                size=page,
                sort=["_doc"],
                version=True,
                source=source,
            )
        )
        scroll_id = response.body.get("_scroll_id")
        try:
            while True:
                hits = response.body["hits"]["hits"]
                if not hits:
                    return
                yield from hits
                if scroll_id is None:
                    return
                response = call(partial(self.client.scroll, scroll_id=scroll_id, scroll=keep_alive))
                scroll_id = response.body.get("_scroll_id", scroll_id)
        finally:
            if scroll_id is not None:
                # A scroll that cannot be cleared expires on its own.
                with contextlib.suppress(elasticsearch.ApiError, elastic_transport.TransportError):
                    self.client.clear_scroll(scroll_id=scroll_id)
