"""Settings from environment variables (and `.env`), resolved once at the entry point."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from indexsync.errors import ConfigError

PREFIX = "INDEXSYNC_"


class Settings(BaseSettings):
    """Everything indexsync reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("INDEXSYNC_DATABASE_URL", "DATABASE_URL"),
        description="libpq URI or conninfo of the source database; libpq options such as "
        "`sslmode` pass through.",
    )
    elasticsearch_url: Annotated[list[str], NoDecode] = Field(
        default=["http://localhost:9200"],
        validation_alias=AliasChoices("INDEXSYNC_ELASTICSEARCH_URL", "ELASTICSEARCH_URL"),
        description="One or more Elasticsearch node URLs, comma-separated.",
    )
    elasticsearch_api_key: SecretStr | None = Field(
        default=None, description="API key (the encoded form); wins over username/password."
    )
    elasticsearch_username: str | None = Field(default=None, description="Basic-auth user.")
    elasticsearch_password: SecretStr | None = Field(
        default=None, description="Basic-auth password."
    )
    elasticsearch_ca_certs: Path | None = Field(
        default=None, description="PEM file of the CA that signed the cluster's certificate."
    )
    elasticsearch_verify_certs: bool = Field(
        default=True, description="Verify TLS certificates (keep on outside a laboratory)."
    )
    elasticsearch_request_timeout: float = Field(
        default=30.0, gt=0, description="Seconds before one request to the search server gives up."
    )
    engine: Literal[
        "auto",
        "elasticsearch-8",
        "elasticsearch-9",
        "opensearch-1",
        "opensearch-2",
        "opensearch-3",
        "opensearch-serverless",
    ] = Field(
        default="auto",
        description="The search engine; `auto` reads it from `GET /` on first contact. Name it "
        "where `GET /` is not allowed.",
    )
    aws_sigv4: Literal["es", "aoss"] | None = Field(
        default=None,
        description="Sign requests with AWS SigV4 for Amazon OpenSearch Service (`es`) or "
        "OpenSearch Serverless (`aoss`), with the standard AWS credential chain (the `aws` "
        "extra).",
    )
    aws_region: str | None = Field(
        default=None, description="AWS region for SigV4; default: the credential chain's."
    )
    config: Path = Field(default=Path("indexsync.toml"), description="The bindings file.")
    mappings_dir: Path = Field(
        default=Path("mappings"), description="Folder of `<alias>.json` index bodies."
    )
    log_format: Literal["json", "console"] | None = Field(
        default=None, description="`json` or `console`; default console on a TTY, else json."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged."
    )
    batch_size: int = Field(
        default=1000, ge=1, le=100_000, description="Outbox rows claimed per batch."
    )
    poll_interval: float = Field(
        default=0.025,
        gt=0,
        description="Seconds between outbox polls of an idle worker; half of it is the "
        "typical wait before a change is picked up when NOTIFY is off.",
    )
    notify: bool = Field(
        default=False,
        description="Triggers send NOTIFY on commit, waking idle workers at once (read by "
        "`install`). Off by default: its lock serialises committing writers, which cut "
        "8-client single-row write throughput to about a third in `make bench`.",
    )
    refresh_rate: int = Field(
        default=2000,
        ge=1,
        description="Documents per second re-queued in the background after a bound table's "
        "columns change, so unchanged rows reach the new shape while live changes keep "
        "their latency.",
    )
    capture: Literal["row", "statement"] = Field(
        default="row",
        description="`row`: a trigger call per changed row, the cheapest for single-row "
        "writes. `statement`: a call per statement that reads its transition tables, "
        "about a third cheaper for statements changing many rows (read by `install`).",
    )
    bulk_concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Bulk requests in flight at once. With a backlog the worker runs one "
        "batch more than this in parallel, each with its own connection, so the next batch "
        "is read while the requests are in flight (with 1, batches run one after another); "
        "reindex keeps two pages in flight.",
    )
    bulk_max_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest body of one bulk request."
    )
    max_read_age: float = Field(
        default=120.0,
        gt=0,
        description="Seconds after which a batch's documents are re-read rather than sent.",
    )
    gc_deletes: int = Field(
        default=3600,
        ge=60,
        description="Seconds Elasticsearch keeps delete tombstones (`index.gc_deletes` of the "
        "indexes indexsync creates); must exceed twice `max_read_age`.",
    )
    retry_max_delay: float = Field(
        default=30.0, gt=0, description="Longest pause between retries of a failing server."
    )
    connect_timeout: int = Field(
        default=10, ge=1, description="Seconds to wait when connecting to PostgreSQL."
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the `/metrics`, `/healthz` and `/readyz` HTTP server of "
        "`indexsync run`; 0 turns it off. The Docker image uses 9740.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the metrics server listens on; `0.0.0.0` to be reachable from "
        "other hosts (the Docker image sets it).",
    )
    stall_seconds: float = Field(
        default=60.0,
        gt=0,
        description="`/readyz` fails when the backlog has neither emptied, shrunk, nor had a "
        "batch complete for this long.",
    )
    health_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between the checks behind `/readyz` and the backlog metrics.",
    )
    ready_max_lag: float | None = Field(
        default=None,
        gt=0,
        description="`/readyz` fails when an index's oldest change not yet written is older "
        "than this many seconds (its freshness). Unset: only a stall fails it.",
    )
    wait_refresh_interval: float = Field(
        default=0.02,
        gt=0,
        le=5,
        description="Seconds between the refreshes of an index that has waiters in "
        "`indexsync.wait_for_search` (only such indexes are refreshed).",
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        # INFO, Info and info are the same level to a human.
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url", mode="after")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        text = value.get_secret_value().strip()
        scheme, sep, _ = text.partition("://")
        if sep and scheme.lower() not in ("postgresql", "postgres"):
            # Never echo the URL: it may carry a password.
            raise ValueError(
                f"the URL scheme {scheme!r} is not PostgreSQL; indexsync reads from "
                "PostgreSQL only: use postgresql://user:password@host:5432/dbname"
            )
        return value

    @field_validator("elasticsearch_url", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            urls = [part.strip() for part in value.split(",") if part.strip()]
            if not urls:
                raise ValueError("no URL given")
            return urls
        return value

    @field_validator("elasticsearch_url")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError("each URL must start with http:// or https://")
        return value

    def require_database_url(self) -> str:
        """The database URL, or a ConfigError saying which variable to set."""
        if self.database_url is None:
            raise ConfigError(
                "no database configured: set INDEXSYNC_DATABASE_URL (or DATABASE_URL)"
            )
        return self.database_url.get_secret_value()

    def check_consistency(self) -> None:
        """Refuse combinations that would break the correctness model."""
        if self.max_read_age * 2 > self.gc_deletes:
            raise ConfigError(
                "INDEXSYNC_MAX_READ_AGE must be at most half of INDEXSYNC_GC_DELETES, so that "
                "delete tombstones outlive every read that could be sent"
            )
        if self.stall_seconds < 2 * self.health_interval:
            raise ConfigError(
                "INDEXSYNC_STALL_SECONDS must be at least twice INDEXSYNC_HEALTH_INTERVAL, "
                "so that a stall is seen over more than one check"
            )


def env_name(field: str) -> str:
    """The environment variable that sets a field."""
    return PREFIX + field.upper()


def unknown_variables(
    environ: Mapping[str, str], env_file: Path | None = Path(".env")
) -> list[tuple[str, str | None]]:
    """`INDEXSYNC_*` names that no setting reads, each with the closest known name."""
    known = {env_name(name) for name in Settings.model_fields}
    known |= {"INDEXSYNC_TEST_DATABASE_URL", "INDEXSYNC_TEST_ELASTICSEARCH_URL"}
    names = {name for name in environ if name.startswith(PREFIX)}
    if env_file is not None and env_file.is_file():
        for line in env_file.read_text(encoding="utf-8", errors="replace").splitlines():
            name = line.split("=", 1)[0].strip().removeprefix("export ").strip()
            if name.startswith(PREFIX):
                names.add(name)
    return [
        (name, next(iter(difflib.get_close_matches(name, sorted(known), n=1)), None))
        for name in sorted(names - known)
    ]


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, turning validation errors into ConfigError."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            name = field if field.isupper() else env_name(field)
            # The input is left out on purpose: it may be a password or a URL with one.
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    settings.check_consistency()
    return settings


def settings_table() -> str:
    """The README's settings table, generated from this class so that it cannot go stale."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = list(alias.choices) if isinstance(alias, AliasChoices) else [env_name(name)]
        variable = " or ".join(f"`{n}`" for n in names)
        default = field.default
        if isinstance(default, list):
            default = ",".join(default)
        shown = (
            "(none)"
            if default is None
            else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        )
        rows.append(f"| {variable} | {shown} | {field.description or ''} |")
    return "\n".join(rows)
