"""Which search engine answers: Elasticsearch 8 or 9, OpenSearch 1-3, or Amazon's managed kinds.

The engine is read from `GET /` on first contact (`version.distribution` and
`version.number`), with a plain `application/json` request that every engine accepts. The
`INDEXSYNC_ENGINE` setting overrides detection, for clusters where `GET /` is not allowed
(OpenSearch Serverless never allows it). The engine decides which official client speaks
to the cluster; see clients.py.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

import urllib3

from indexsync.errors import ConfigError, SearchError, SearchUnavailable
from indexsync.logs import redact
from indexsync.settings import Settings

Distribution = Literal["elasticsearch", "opensearch"]

# The majors indexsync speaks to, with the client that speaks to them.
SUPPORTED = {"elasticsearch": (8, 9), "opensearch": (1, 2, 3)}


@dataclass(frozen=True)
class Engine:
    """A search engine kind and version."""

    distribution: Distribution
    version: str
    serverless: bool = False
    detected: bool = True

    @property
    def major(self) -> int:
        """The major version (0 when unknown)."""
        head = self.version.split(".", 1)[0]
        return int(head) if head.isdigit() else 0

    @property
    def label(self) -> str:
        """How messages name it: `Elasticsearch 8.19.0`, `OpenSearch Serverless`."""
        if self.serverless:
            return "Amazon OpenSearch Serverless"
        name = "Elasticsearch" if self.distribution == "elasticsearch" else "OpenSearch"
        return f"{name} {self.version}"

    @property
    def client(self) -> str:
        """The client path chosen for it, for `check`."""
        if self.distribution == "opensearch":
            return "opensearch-py (no product check, plain JSON media types)"
        return f"elasticsearch-py, REST compatibility with {self.compatible_with}"

    @property
    def compatible_with(self) -> int:
        """The `compatible-with` major Elasticsearch accepts from this client."""
        # An 8.x server accepts compatible-with 7 and 8 and refuses 9; 9.x accepts 8 and 9.
        return 8 if self.major <= 8 else 9


def from_setting(value: str) -> Engine | None:
    """The engine an `INDEXSYNC_ENGINE` value names, or None for `auto`."""
    if value == "auto":
        return None
    if value == "opensearch-serverless":
        return Engine("opensearch", "2", serverless=True, detected=False)
    name, _, major = value.rpartition("-")
    if name not in SUPPORTED or not major.isdigit() or int(major) not in SUPPORTED[name]:
        raise ConfigError(
            f"INDEXSYNC_ENGINE={value!r} is not one indexsync knows; use auto, "
            "elasticsearch-8, elasticsearch-9, opensearch-1, opensearch-2, opensearch-3 "
            "or opensearch-serverless"
        )
    distribution: Distribution = "elasticsearch" if name == "elasticsearch" else "opensearch"
    return Engine(distribution, major, detected=False)


def parse_info(body: Any, url: str) -> Engine:
    """The engine described by a `GET /` body."""
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, dict) or not isinstance(version.get("number"), str):
        raise SearchError(
            f"the server at {redact(url)} does not answer `GET /` like Elasticsearch or "
            "OpenSearch (no version.number); set INDEXSYNC_ENGINE if it hides it"
        )
    distribution: Distribution
    found = version.get("distribution") or "elasticsearch"
    if found == "opensearch":
        distribution = "opensearch"
    elif found == "elasticsearch":
        distribution = "elasticsearch"
    else:
        raise SearchError(
            f"the server at {redact(url)} is {found!r} {version['number']}; indexsync "
            "speaks to Elasticsearch and OpenSearch"
        )
    engine = Engine(distribution, version["number"])
    if engine.major not in SUPPORTED[distribution]:
        majors = ", ".join(str(m) for m in SUPPORTED[distribution])
        raise SearchError(
            f"the server at {redact(url)} is {engine.label}; indexsync supports "
            f"{distribution} {majors}"
        )
    return engine


def _auth_headers(settings: Settings) -> dict[str, str]:
    if settings.elasticsearch_api_key is not None:
        return {"authorization": f"ApiKey {settings.elasticsearch_api_key.get_secret_value()}"}
    if settings.elasticsearch_username is not None:
        password = settings.elasticsearch_password
        secret = password.get_secret_value() if password is not None else ""
        token = base64.b64encode(f"{settings.elasticsearch_username}:{secret}".encode()).decode()
        return {"authorization": f"Basic {token}"}
    return {}


def detect(settings: Settings) -> Engine:
    """The engine of the first node that answers `GET /`, unless the settings name one."""
    named = from_setting(settings.engine)
    if named is not None:
        return named
    if settings.aws_sigv4 is not None:
        # Amazon's managed domains run OpenSearch, and their `GET /` needs a signature.
        return Engine("opensearch", "2", serverless=settings.aws_sigv4 == "aoss", detected=False)
    failures = []
    headers = {"accept": "application/json", **_auth_headers(settings)}
    timeout = urllib3.Timeout(total=min(settings.elasticsearch_request_timeout, 10.0))
    for url in settings.elasticsearch_url:
        tls: dict[str, Any] = {}
        if url.startswith("https://"):
            tls["cert_reqs"] = (
                "CERT_REQUIRED" if settings.elasticsearch_verify_certs else "CERT_NONE"
            )
            if settings.elasticsearch_ca_certs is not None:
                tls["ca_certs"] = str(settings.elasticsearch_ca_certs)
        try:
            with urllib3.PoolManager(**tls) as pool:
                response = pool.request(
                    "GET", url.rstrip("/") + "/", headers=headers, timeout=timeout, retries=False
                )
        except urllib3.exceptions.HTTPError as exc:
            failures.append(f"{redact(url)}: {exc}")
            continue
        if response.status == 401:
            raise SearchError(
                f"the search server at {redact(url)} rejected the credentials (401): check "
                "INDEXSYNC_ELASTICSEARCH_API_KEY or ..._USERNAME/..._PASSWORD"
            )
        if response.status in (403, 404, 405):
            raise SearchError(
                f"the search server at {redact(url)} does not allow `GET /` ({response.status}); "
                "set INDEXSYNC_ENGINE to its kind (elasticsearch-8, opensearch-2, ...)"
            )
        if response.status >= 400:
            failures.append(f"{redact(url)}: answered {response.status}")
            continue
        try:
            body = json.loads(response.data)
        except ValueError:
            body = None
        return parse_info(body, url)
    raise SearchUnavailable("cannot reach the search server: " + "; ".join(failures))
