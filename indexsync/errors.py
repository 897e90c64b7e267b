"""The exception hierarchy: one root, and the exit code each kind maps to."""

from __future__ import annotations


class IndexsyncError(Exception):
    """Root of every error indexsync raises on purpose."""

    exit_code = 1


class ConfigError(IndexsyncError):
    """Settings, bindings or mappings are wrong; the user must fix them."""

    exit_code = 2


class DatabaseError(IndexsyncError):
    """PostgreSQL failed or could not be reached."""

    exit_code = 2


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL could not be reached; worth retrying later."""


class QueryFailed(DatabaseError):
    """PostgreSQL refused a statement: its SQL, its data or a privilege is at fault."""

    def __init__(self, message: str, *, sqlstate: str, detail: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        # The server's own words, without the "PostgreSQL error:" prefix.
        self.detail = detail


class SearchError(IndexsyncError):
    """The search server refused a request."""

    exit_code = 2


class SearchUnavailable(SearchError):
    """Elasticsearch could not be reached or is overloaded; worth retrying later."""


class CredentialsRejected(SearchError):
    """The search server refused the credentials (401)."""


class IndexMissing(ConfigError):
    """An index or alias that a binding needs does not exist."""


class SchemaVersionMismatch(ConfigError):
    """The indexsync schema in the database is not the version this release needs."""


class SequenceRegression(IndexsyncError):
    """The index holds versions newer than the database's change sequence."""

    exit_code = 2


class DriftFound(IndexsyncError):
    """The index differs from what the database produces."""

    exit_code = 1


class ForeignIndex(ConfigError):
    """An index records another database as its owner."""


class PauseNotSettled(IndexsyncError):
    """Writes to a paused index were still in flight when `pause` gave up waiting."""

    exit_code = 1
