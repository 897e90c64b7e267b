"""The official clients, each behind the same small REST interface.

Elasticsearch is spoken to with elasticsearch-py, OpenSearch with opensearch-py (the
`opensearch` extra), and Amazon's managed OpenSearch with opensearch-py's own SigV4
signer and the standard AWS credential chain (the `aws` extra). Whatever the client, a
request is a method, a path, parameters and a body; the bulk body is the raw NDJSON built
from PostgreSQL's text. Failures come back as `HttpFailure` (the server answered) or
`SearchUnavailable` (it could not be reached), so search.py classifies them once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from indexsync.engines import Engine
from indexsync.errors import ConfigError, SearchUnavailable
from indexsync.logs import redact
from indexsync.settings import Settings

JSON = "application/json"
NDJSON = "application/x-ndjson"


@dataclass
class HttpFailure(Exception):
    """The server answered with an error status."""

    status: int
    body: Any


class Rest(Protocol):
    """What search.py needs from a client: one request at a time, and closing."""

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        ndjson: bool = False,
    ) -> Any:
        """The decoded body of a 2xx answer (HEAD: True, or False on 404)."""

    def with_timeout(self, timeout: float) -> Rest:
        """The same client with another request timeout."""

    def close(self) -> None:
        """Close its connections."""


# --- Elasticsearch ---------------------------------------------------------------------------

_COMPAT = re.compile(rb"compatible-with=\d+")


def _elasticsearch(settings: Settings, engine: Engine) -> Any:
    import elastic_transport
    from elastic_transport import HttpHeaders
    from elastic_transport._node import NodeApiResponse
    from elastic_transport.client_utils import DEFAULT, DefaultType
    from elasticsearch import Elasticsearch

    wanted = f"compatible-with={engine.compatible_with}".encode()

    class CompatNode(elastic_transport.Urllib3HttpNode):
        """Sends the REST-compatibility version the server's major accepts.

        elasticsearch-py 9 always asks for compatible-with=9, which an 8.x server refuses
        with 400 media_type_header_exception; 8.x accepts compatible-with=8, and the REST
        calls indexsync makes are the same in both (see the README's design notes).
        """

        def perform_request(
            self,
            method: str,
            target: str,
            body: bytes | None = None,
            headers: HttpHeaders | None = None,
            request_timeout: DefaultType | float | None = DEFAULT,
        ) -> NodeApiResponse:
            if headers is not None:
                headers = headers.copy()
                for name in ("accept", "content-type"):
                    value = headers.get(name)
                    if value:
                        headers[name] = _COMPAT.sub(wanted, value.encode()).decode()
            return super().perform_request(
                method, target, body=body, headers=headers, request_timeout=request_timeout
            )

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
        # Retries are indexsync's own (jittered, per item), never the transport's.
        max_retries=0,
        retry_on_timeout=False,
        connections_per_node=max(10, settings.bulk_concurrency * 2),
        node_class=CompatNode,
        **auth,
        **tls,
    )


class ElasticsearchRest:
    """REST over elasticsearch-py."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        ndjson: bool = False,
    ) -> Any:
        """See `Rest.request`."""
        import elastic_transport
        import elasticsearch

        headers = {"accept": JSON}
        if body is not None:
            headers["content-type"] = NDJSON if ndjson else JSON
        try:
            response = self._client.perform_request(
                method, path, params=dict(params or {}), headers=headers, body=body
            )
        except elasticsearch.ApiError as exc:
            raise HttpFailure(exc.meta.status, exc.body) from exc
        except elasticsearch.UnsupportedProductError as exc:
            raise ConfigError(
                "the server is not Elasticsearch (no X-Elastic-Product header); if it is "
                "OpenSearch, set INDEXSYNC_ENGINE=opensearch-<major>"
            ) from exc
        except elastic_transport.TransportError as exc:
            raise SearchUnavailable(
                redact(f"cannot reach the search server: {exc.message}")
            ) from exc
        if method == "HEAD":
            return 200 <= response.meta.status < 300
        return response.body

    def with_timeout(self, timeout: float) -> ElasticsearchRest:
        """See `Rest.with_timeout`."""
        return ElasticsearchRest(self._client.options(request_timeout=timeout))

    def close(self) -> None:
        """See `Rest.close`."""
        self._client.close()


# --- OpenSearch ------------------------------------------------------------------------------


def _opensearch(settings: Settings, engine: Engine) -> Any:
    try:
        import opensearchpy
    except ImportError:
        raise ConfigError(
            f"the search server is {engine.label}: install the OpenSearch client with "
            "`pip install '.[opensearch]'` in your indexsync clone (or `pip install "
            "opensearch-py` beside indexsync)"
        ) from None
    options: dict[str, Any] = {}
    if settings.aws_sigv4 is not None:
        options.update(_aws_auth(settings))
    elif settings.elasticsearch_api_key is not None:
        options["headers"] = {
            "authorization": f"ApiKey {settings.elasticsearch_api_key.get_secret_value()}"
        }
    elif settings.elasticsearch_username is not None:
        password = settings.elasticsearch_password
        options["http_auth"] = (
            settings.elasticsearch_username,
            password.get_secret_value() if password is not None else "",
        )
    if any(url.startswith("https://") for url in settings.elasticsearch_url):
        options["use_ssl"] = True
        options["verify_certs"] = settings.elasticsearch_verify_certs
        if not settings.elasticsearch_verify_certs:
            options["ssl_show_warn"] = False
        if settings.elasticsearch_ca_certs is not None:
            options["ca_certs"] = str(settings.elasticsearch_ca_certs)
    return opensearchpy.OpenSearch(
        settings.elasticsearch_url,
        timeout=settings.elasticsearch_request_timeout,
        max_retries=0,
        retry_on_timeout=False,
        pool_maxsize=max(10, settings.bulk_concurrency * 2),
        **options,
    )


def _aws_auth(settings: Settings) -> dict[str, Any]:
    try:
        import boto3
        from opensearchpy import Urllib3AWSV4SignerAuth, Urllib3HttpConnection
    except ImportError:
        raise ConfigError(
            "INDEXSYNC_AWS_SIGV4 needs the AWS credential chain: "
            "`pip install '.[opensearch,aws]'` in your indexsync clone (or `pip install "
            "opensearch-py boto3` beside indexsync)"
        ) from None
    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise ConfigError(
            "INDEXSYNC_AWS_SIGV4 is set but the AWS credential chain found no credentials "
            "(environment, shared config, instance or task role)"
        )
    region = settings.aws_region or session.region_name
    if not region:
        raise ConfigError("INDEXSYNC_AWS_SIGV4 needs a region: set INDEXSYNC_AWS_REGION")
    return {
        "http_auth": Urllib3AWSV4SignerAuth(credentials, region, settings.aws_sigv4 or "es"),
        "connection_class": Urllib3HttpConnection,
    }


class OpenSearchRest:
    """REST over opensearch-py."""

    def __init__(self, client: Any, timeout: float | None = None) -> None:
        self._client = client
        self._timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        ndjson: bool = False,
    ) -> Any:
        """See `Rest.request`."""
        import opensearchpy

        headers = {"content-type": NDJSON if ndjson else JSON} if body is not None else None
        query = {k: _param(v) for k, v in (params or {}).items()}
        try:
            return self._client.transport.perform_request(
                method, path, params=query, body=body, headers=headers, timeout=self._timeout
            )
        except opensearchpy.ConnectionError as exc:
            raise SearchUnavailable(
                redact(f"cannot reach the search server: {_root_cause(exc)}")
            ) from exc
        except opensearchpy.TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else 502
            raise HttpFailure(status, exc.info) from exc

    def with_timeout(self, timeout: float) -> OpenSearchRest:
        """See `Rest.with_timeout`."""
        return OpenSearchRest(self._client, timeout)

    def close(self) -> None:
        """See `Rest.close`."""
        self._client.close()


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*")


def _root_cause(exc: Exception) -> str:
    """One reason for a failed connection, not the client's 'X caused by: X' chain."""
    cause = getattr(exc, "info", None)
    text = str(cause) if isinstance(cause, BaseException) else str(exc)
    return _OBJECT_REPR.sub("", text).strip() or type(exc).__name__


def _param(value: Any) -> Any:
    # opensearch-py sends query parameters as given; JSON spells booleans in lower case.
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def connect(settings: Settings, engine: Engine) -> Rest:
    """The client for `engine`, configured from the settings."""
    if engine.distribution == "opensearch":
        return OpenSearchRest(_opensearch(settings, engine))
    if settings.aws_sigv4 is not None:
        raise ConfigError("INDEXSYNC_AWS_SIGV4 is for Amazon OpenSearch, not Elasticsearch")
    return ElasticsearchRest(_elasticsearch(settings, engine))
