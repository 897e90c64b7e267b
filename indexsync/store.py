"""The storage boundary: PostgreSQL connections, named queries, typed rows, translated errors.

Everything indexsync asks of PostgreSQL goes through a `Store`. It runs the named queries of
`sql/queries.sql` and the statements that documents.py and capture.py compose from a
binding, returns the dataclasses of rows.py, and translates every driver error in one
place: `DatabaseUnavailable` for a lost or overloaded server (worth retrying), and
`QueryFailed`, with the SQLSTATE, for a statement PostgreSQL refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from indexsync import documents, queries
from indexsync.bindings import Binding, Dependency
from indexsync.errors import DatabaseError, DatabaseUnavailable, QueryFailed
from indexsync.keys import PINNED_SETTINGS, Key
from indexsync.logs import redact
from indexsync.rows import (
    Backlog,
    BatchContext,
    BindingState,
    Change,
    Column,
    DatabaseIdentity,
    DeadLetter,
    Document,
    Forgotten,
    InstalledBinding,
    InstalledTrigger,
    PendingFloor,
    Rebuild,
    Refresh,
    Searchable,
    StoredDeadLetter,
    Table,
    Waiting,
    Watermark,
    WorkerSeen,
)
from indexsync.settings import Settings

APPLICATION_NAME = "indexsync"
CHANNEL = "indexsync"

R = TypeVar("R")
Query = bytes | sql.SQL | sql.Composed


def describe_database_url(url: str) -> str:
    """Where a libpq URL or conninfo points (host, port, database, user), password masked."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(not a valid libpq URL or conninfo)"
    shown = [f"{key}={parts[key]}" for key in ("host", "port", "dbname", "user") if parts.get(key)]
    if parts.get("password"):
        shown.append("password=***")
    return " ".join(shown) or "(libpq defaults)"


def describe(exc: psycopg.Error) -> str:
    """A one-line, secret-free description of a driver error."""
    primary = exc.diag.message_primary if exc.diag else None
    text = primary or str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)


def translate(exc: psycopg.Error) -> DatabaseError:
    """Map a driver error onto indexsync's hierarchy (the only place that does)."""
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.AdminShutdown):
        return DatabaseUnavailable(f"lost PostgreSQL: {describe(exc)}")
    detail = describe(exc)
    return QueryFailed(f"PostgreSQL error: {detail}", sqlstate=exc.sqlstate or "?", detail=detail)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Translate driver errors raised inside the block."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc) from exc


class Store:
    """One PostgreSQL session of indexsync, and every question indexsync asks of it."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @classmethod
    def connect(cls, settings: Settings, *, role: str = "", autocommit: bool = True) -> Store:
        """Open a session, or raise DatabaseUnavailable (or DatabaseError for a bad URL)."""
        url = settings.require_database_url()
        try:
            conn = psycopg.connect(
                url,
                autocommit=autocommit,
                connect_timeout=settings.connect_timeout,
                application_name=f"{APPLICATION_NAME}{':' + role if role else ''}",
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {describe(exc)}") from exc
        except psycopg.ProgrammingError as exc:
            raise DatabaseError(f"invalid INDEXSYNC_DATABASE_URL: {describe(exc)}") from exc
        store = cls(conn)
        try:
            store.pin_settings()
        except BaseException:
            store.close()
            raise
        return store

    def pin_settings(self) -> None:
        """Render ids and documents the same whatever the host's or role's defaults.

        Set after connecting, not as startup options, so that `session_defaults` still
        tells what the session would have used (see keys.PINNED_SETTINGS).
        """
        self._execute(
            sql.SQL("SELECT {}").format(
                sql.SQL(", ").join(
                    sql.SQL("pg_catalog.set_config({}, {}, false)").format(
                        sql.Literal(name), sql.Literal(value)
                    )
                    for name, value in PINNED_SETTINGS.items()
                )
            )
        )

    def session_defaults(self) -> dict[str, str]:
        """The pinned settings' values as this session would have had them unpinned."""
        rows = self._tuples(
            queries.get("session_defaults"), {"names": [n.lower() for n in PINNED_SETTINGS]}
        )
        return {str(name): str(value) for name, value in rows}

    # --- the session ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the session; errors while closing do not matter."""
        with contextlib.suppress(psycopg.Error):
            self._conn.close()

    @property
    def closed(self) -> bool:
        """Whether the session is closed or broken."""
        return self._conn.closed or self._conn.broken

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction, or a savepoint inside one; rolled back when the block raises."""
        with translated(), self._conn.transaction():
            yield

    # Statements of the hot path are prepared once per session (`prepare=True`).

    def _execute(
        self, query: Query, params: Mapping[str, Any] | None = None, prepare: bool = False
    ) -> None:
        with translated():
            self._conn.execute(query, params, prepare=prepare)

    def _rows(
        self, query: Query, params: Mapping[str, Any] | None, row: type[R], prepare: bool = False
    ) -> list[R]:
        with translated(), self._conn.cursor(row_factory=class_row(row)) as cur:
            cur.execute(query, params, prepare=prepare)
            return cur.fetchall()

    def _tuples(
        self, query: Query, params: Mapping[str, Any] | None = None, prepare: bool = False
    ) -> list[Any]:
        with translated(), self._conn.cursor() as cur:
            cur.execute(query, params, prepare=prepare)
            return cur.fetchall() if cur.description else []

    def _value(
        self, query: Query, params: Mapping[str, Any] | None = None, prepare: bool = False
    ) -> Any:
        rows = self._tuples(query, params, prepare)
        return rows[0][0] if rows else None

    # Named queries always get parameters (even none), so `%` is read the same way in all.

    def _named(
        self, name: str, params: Mapping[str, Any] | None = None, prepare: bool = False
    ) -> None:
        self._execute(queries.get(name), params if params is not None else {}, prepare)

    def _named_rows(
        self,
        name: str,
        row: type[R],
        params: Mapping[str, Any] | None = None,
        prepare: bool = False,
    ) -> list[R]:
        return self._rows(queries.get(name), params if params is not None else {}, row, prepare)

    def _named_value(
        self, name: str, params: Mapping[str, Any] | None = None, prepare: bool = False
    ) -> Any:
        return self._value(queries.get(name), params if params is not None else {}, prepare)

    def listen(self) -> None:
        """Subscribe this session to the wake-up channel."""
        self._execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))

    def notified(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a notification; True when one came."""
        with translated():
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                return True
        return False

    def run_script(self, text: bytes) -> None:
        """Run several statements at once (a migration)."""
        self._execute(text)

    def run(self, statement: sql.Composed) -> None:
        """Run one composed statement (DDL from capture.py)."""
        self._execute(statement)

    def render(self, statement: sql.Composable) -> str:
        """A composed statement as SQL text, quoted as this server would."""
        return statement.as_string(self._conn)

    def render_named(self, name: str, params: Mapping[str, Any]) -> str:
        """A named query with its parameters bound client-side, for `install --print-sql`."""
        # A dict is a JSON document here, as it is wherever Store takes one.
        bound = {k: Jsonb(v) if isinstance(v, dict) else v for k, v in params.items()}
        with translated(), psycopg.ClientCursor(self._conn) as cur:
            return cur.mogrify(queries.get(name).decode(), bound)

    # --- the schema ----------------------------------------------------------------------

    def schema_exists(self) -> bool:
        """Whether the indexsync schema exists."""
        return bool(self._named_value("schema_exists"))

    def create_schema(self) -> None:
        """Create the (empty) indexsync schema."""
        self._named("create_schema")

    def drop_schema(self) -> None:
        """Drop the indexsync schema and, by cascade, the capture triggers."""
        self._named("drop_schema")

    def lock_timeout(self) -> None:
        """Bound how long this transaction's DDL waits for a table lock."""
        self._named("lock_timeout")

    def read_only(self) -> None:
        """Make this transaction read-only."""
        self._named("read_only")

    def migrations_lock(self) -> None:
        """Take the lock that serialises migrations, until the transaction ends."""
        self._named_value("migrations_lock")

    def meta_exists(self) -> bool:
        """Whether the meta table exists."""
        return bool(self._named_value("meta_exists"))

    def get_meta(self, key: str) -> str | None:
        """One install-time fact, or None."""
        value = self._named_value("get_meta", {"key": key})
        return str(value) if value is not None else None

    def set_meta(self, key: str, value: str) -> None:
        """Record one install-time fact."""
        self._named("set_meta", {"key": key, "value": value})

    def set_statement_timeout(self, seconds: float) -> None:
        """Bound every later statement of this session."""
        self._named_value("statement_timeout", {"timeout": f"{int(seconds * 1000)}ms"})

    # --- the catalog ---------------------------------------------------------------------

    def resolve_table(self, name: str) -> Table | None:
        """The table `name` resolves to, or None; QueryFailed when it is not a valid name."""
        found = self._named_rows("resolve_table", Table, {"name": name})
        return found[0] if found else None

    def table_columns(self, oid: int) -> list[Column]:
        """The live columns of a table, in order."""
        return self._named_rows("table_columns", Column, {"oid": oid})

    def virtual_columns(self, oid: int) -> dict[str, tuple[str, ...]]:
        """Virtual generated columns of a table, and the columns each is computed from."""
        rows = self._tuples(queries.get("virtual_columns"), {"oid": oid})
        return {str(name): tuple(base) for name, base in rows}

    def primary_key(self, oid: int) -> list[Column]:
        """The primary key's columns, in key order (empty: no primary key)."""
        return self._named_rows("primary_key", Column, {"oid": oid})

    def capture_functions(self) -> dict[str, str]:
        """Functions of the indexsync schema, by name, with their source."""
        return {name: source for name, source in self._tuples(queries.get("capture_functions"))}

    def capture_triggers(self) -> list[InstalledTrigger]:
        """Every trigger that calls a function of the indexsync schema."""
        return self._named_rows("capture_triggers", InstalledTrigger)

    def fingerprint(self, tables: Sequence[tuple[str, str]]) -> str:
        """A digest of the columns and types of the (schema, table) pairs."""
        value = self._named_value(
            "fingerprint",
            {"schemas": [s for s, _ in tables], "tables": [t for _, t in tables]},
        )
        return str(value) if value else ""

    def probe(self, query: sql.Composed, params: Mapping[str, Any]) -> list[str]:
        """Run a query in a savepoint, on no rows; returns its column names."""
        with translated(), self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute(query, params)
            cur.fetchall()
            return [col.name for col in cur.description or []]

    def probe_plain(self, query: sql.Composed) -> list[str]:
        """Like `probe`, for user SQL that takes no parameters (its `%` stay as they are)."""
        with translated(), self._conn.transaction(), self._conn.cursor() as cur:
            # Prepared, so a ';' cannot smuggle in a second statement.
            cur.execute(query, prepare=True)
            return [col.name for col in cur.description or []]

    def plan_text(self, query: sql.Composed) -> str:
        """EXPLAIN (VERBOSE) of user SQL that takes no parameters, as text."""
        explain = sql.SQL("EXPLAIN (VERBOSE, COSTS OFF) {}").format(query)
        with translated(), self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute(explain, prepare=True)
            return "\n".join(str(row[0]) for row in cur.fetchall())

    def explain_reread(self, binding: Binding) -> str:
        """The plan of the live re-read with sequential scans priced out."""
        with self.transaction():
            self._execute(sql.SQL("SET LOCAL enable_seqscan = off"))
            plan = self._tuples(documents.id_filter_plan_query(binding), {"ids": ["0"]})
            self._execute(sql.SQL("RESET enable_seqscan"))
        return "\n".join(str(row[0]) for row in plan)

    # --- documents -----------------------------------------------------------------------

    def fetch_documents(self, binding: Binding, ids: Sequence[str]) -> dict[str, Document]:
        """Each id's document (its JSON text as PostgreSQL wrote it, and its routing);
        an id that is absent has no row: its document is deleted."""
        rows = self._rows(
            documents.fetch_by_ids_query(binding), {"ids": list(ids)}, Document, prepare=True
        )
        return {row.doc_id: row for row in rows}

    def scan_page(self, binding: Binding, after: str | None, limit: int) -> list[Document]:
        """One keyset page of documents in key order."""
        query = documents.scan_query(binding, resume=after is not None)
        return self._rows(query, {"limit": limit, "after": after}, Document, prepare=True)

    def count_documents(self, binding: Binding) -> int:
        """How many documents the binding produces."""
        return int(self._value(documents.count_query(binding), {}) or 0)

    def check_ids(self, binding: Binding, ids: Sequence[str]) -> None:
        """Raise QueryFailed when an id is not a valid key of the binding's table."""
        self._tuples(documents.key_check_query(binding), {"ids": list(ids)})

    def expand_dependency(self, key: Key, dep: Dependency, keys: Iterable[str]) -> set[str]:
        """Document ids that changed rows of a dependent table map to, through its `sql`."""
        rows = self._tuples(
            documents.expand_query(key, dep),
            {"keys": documents.typed_keys(dep.pk_type, keys)},
            prepare=True,
        )
        return {str(row[0]) for row in rows if row[0] is not None}

    def key_page(
        self, binding: Binding, after: str | None, limit: int, where: str | None = None
    ) -> list[str]:
        """The next `limit` document ids of the root table in key order (refresh and resync
        paging), of the rows that match `where` if given (an operator's SQL condition)."""
        query = documents.key_page_query(binding, resume=after is not None, where=where)
        return [str(row[0]) for row in self._tuples(query, {"after": after, "limit": limit})]

    # --- the outbox ----------------------------------------------------------------------

    def claim(self, limit: int, active: Sequence[str]) -> list[Change]:
        """Claim (and tentatively delete) the oldest `limit` changes of the `active` indexes."""
        return self._named_rows(
            "claim", Change, {"limit": limit, "active": list(active)}, prepare=True
        )

    def has_pending(self, active: Sequence[str]) -> bool:
        """Whether the outbox holds a change of one of the `active` indexes."""
        return bool(self._named_value("has_pending", {"active": list(active)}, prepare=True))

    def unbound_backlog(self, known: Sequence[str]) -> list[Backlog]:
        """Changes waiting for indexes that none of `known` names."""
        return self._named_rows("unbound_backlog", Backlog, {"known": list(known)})

    def batch_context(self) -> BatchContext:
        """The version of this batch's writes, and the rebuild target of each alias."""
        rows = self._tuples(queries.get("batch_context"), {}, prepare=True)
        version, aliases, targets, dead_letters, bindings_version = rows[0]
        return BatchContext(
            int(version),
            dict(zip(aliases, targets, strict=True)),
            bool(dead_letters),
            int(bindings_version or 0),
        )

    # --- installed bindings --------------------------------------------------------------

    def installed_bindings(self) -> list[InstalledBinding]:
        """Every binding install recorded, by alias."""
        return self._named_rows("installed_bindings", InstalledBinding)

    def bindings_version(self) -> int:
        """The installed bindings' version (bumped by every install that changed them)."""
        return int(self._named_value("bindings_version") or 0)

    def put_binding(self, index: str, spec: Mapping[str, Any]) -> str | None:
        """Record a binding: 'added', 'changed', or None when it was recorded as it is."""
        rows = self._tuples(queries.get("put_binding"), {"index": index, "spec": Jsonb(spec)})
        if not rows:
            return None
        return "added" if rows[0][0] else "changed"

    def bump_bindings_version(self) -> None:
        """Tell running workers that the installed bindings changed."""
        self._named("bump_bindings_version")

    def forget_binding(self, index: str) -> Forgotten:
        """Drop the queued changes and state of an index whose binding was removed."""
        return self._named_rows("forget_binding", Forgotten, {"index": index})[0]

    def heartbeat(self, worker: str, host: str, pid: int, version: str) -> None:
        """Record that a worker is alive."""
        self._named("heartbeat", {"worker": worker, "host": host, "pid": pid, "version": version})

    def worker_stopped(self, worker: str) -> None:
        """Remove a worker that stops cleanly."""
        self._named("worker_stopped", {"worker": worker})

    def workers(self) -> list[WorkerSeen]:
        """Every worker seen lately, most recent first."""
        return self._named_rows("workers", WorkerSeen)

    def database_identity(self) -> DatabaseIdentity:
        """Who this database is (see ownership.py)."""
        return self._named_rows("database_identity", DatabaseIdentity)[0]

    def start_refresh(self, index: str) -> None:
        """Re-queue every document of an index, at the refresh's bounded rate."""
        self._named("start_refresh", {"index": index})

    def requeue_changes(self, changes: Sequence[Change]) -> None:
        """Put claimed changes back unchanged (their claim is being acknowledged)."""
        if changes:
            self._named(
                "requeue_changes",
                {
                    "indexes": [c.index_name for c in changes],
                    "ids": [c.doc_id for c in changes],
                    "kinds": [c.kind for c in changes],
                    "sources": [c.source for c in changes],
                    "origins": [c.origin or None for c in changes],
                    "routings": [c.routing for c in changes],
                },
            )

    def enqueue_ids(self, index: str, ids: Sequence[str]) -> None:
        """Queue documents of one index for the worker."""
        if ids:
            self._named("enqueue_ids", {"index": index, "ids": list(ids)})

    def enqueue_moved(self, index: str, copies: Sequence[tuple[str, str]]) -> None:
        """Queue copies of routed documents under a routing they no longer have, as
        (id, routing): the worker deletes each there, and writes the document where it
        belongs."""
        if copies:
            self._named(
                "enqueue_moved",
                {"index": index, "ids": [c[0] for c in copies], "routings": [c[1] for c in copies]},
            )

    def requeue(self, items: Mapping[tuple[str, str, str | None], int]) -> None:
        """Queue (index, id, routing) items again (refused for too long, or by a blocked
        index), each with the origin of the oldest change behind it; a routing is that of
        a copy to delete."""
        if items:
            keys = sorted(items, key=lambda k: (k[0], k[1], k[2] or ""))
            self._named(
                "requeue_documents",
                {
                    "indexes": [k[0] for k in keys],
                    "ids": [k[1] for k in keys],
                    "routings": [k[2] for k in keys],
                    "origins": [items[k] or None for k in keys],
                },
            )

    def pending_for_ids(self, index: str, ids: Sequence[str]) -> bool:
        """Whether a change of any of these documents still waits in the outbox."""
        return bool(self._named_value("pending_for_ids", {"index": index, "ids": list(ids)}))

    def next_seq(self) -> int:
        """A version drawn now."""
        return int(self._named_value("next_seq"))

    def last_seq(self) -> int:
        """The change sequence's high-water mark."""
        value = self._named_value("last_seq")
        return int(value) if value is not None else 0

    # --- pauses an operator asks for ---------------------------------------------------

    def hold(self, index: str, reason: str, by: str) -> None:
        """Pause an index: no worker claims its changes from the next claim on."""
        self._named("hold", {"index": index, "reason": reason, "by": by})

    def release(self, index: str) -> bool:
        """Resume an index; whether it was paused."""
        return bool(self._tuples(queries.get("release"), {"index": index}))

    def held_indexes(self) -> set[str]:
        """Every index an operator paused."""
        return {row[0] for row in self._tuples(queries.get("held_indexes"))}

    def backfill_running(self, alias: str) -> bool:
        """Whether a worker is writing an index's existing rows right now."""
        return bool(self._named_value("backfill_running", {"alias": alias}))

    def queued_changes(self, index: str) -> int:
        """How many changes wait for one index."""
        return int(self._named_value("queued_changes", {"index": index}) or 0)

    # --- read-your-writes ----------------------------------------------------------------

    def waiting_indexes(self, indexes: Sequence[str]) -> dict[str, int]:
        """Which of these indexes have waiters in `indexsync.wait_for_search` right now, and
        the smallest seq one of them waits for."""
        rows = self._named_rows("waiting_indexes", Waiting, {"indexes": list(indexes)})
        return {row.index_name: row.target for row in rows}

    def try_lead(self, index: str) -> int | None:
        """Lead an index's refreshes for its waiters: the generation published, or None
        when another session leads it."""
        value = self._named_value("try_lead", {"index": index})
        return int(value) if value is not None else None

    def try_generation_lock(self, index: str, generation: int) -> bool:
        """Hold a generation's lock (its waiters sleep on it)."""
        params = {"index": index, "generation": generation}
        return bool(self._named_value("try_generation_lock", params))

    def generation_unlock(self, index: str, generation: int) -> None:
        """Wake the waiters of a generation."""
        self._named("generation_unlock", {"index": index, "generation": generation})

    def lead_unlock(self, index: str) -> None:
        """Stop leading an index's refreshes."""
        self._named("lead_unlock", {"index": index})

    def pending_floors(self, indexes: Sequence[str]) -> dict[str, int | None]:
        """The smallest seq still queued for each index (None: nothing is)."""
        rows = self._named_rows("pending_floors", PendingFloor, {"indexes": list(indexes)})
        return {row.index_name: row.floor for row in rows}

    def publish_searchable(self, index: str, horizon: int, generation: int) -> None:
        """Say how far an index is searchable, in a new generation."""
        params = {"index": index, "horizon": horizon, "generation": generation}
        self._named("publish_searchable", params)

    def searchable(self) -> dict[str, Searchable]:
        """How far each index is searchable."""
        return {row.index_name: row for row in self._named_rows("searchable", Searchable)}

    def wait_for_search(self, index: str, timeout: float) -> tuple[bool, list[str]]:
        """`indexsync.wait_for_search` in this session: its answer, and what it warned."""
        said: list[str] = []

        def notice(diag: psycopg.errors.Diagnostic) -> None:
            if diag.message_primary:
                said.append(redact(diag.message_primary))

        self._conn.add_notice_handler(notice)
        try:
            answer = self._named_value("wait_for_search", {"index": index, "timeout": timeout})
        finally:
            self._conn.remove_notice_handler(notice)
        return bool(answer), said

    def record_progress(self, landed: Mapping[str, datetime]) -> None:
        """Record when each index last had a batch land."""
        if landed:
            self._named(
                "record_progress", {"indexes": list(landed), "times": list(landed.values())}
            )

    # --- dead letters --------------------------------------------------------------------

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Record refused or unbuildable documents."""
        if letters:
            self._named(
                "add_dead_letters",
                {
                    "indexes": [d.index_name for d in letters],
                    "ids": [d.doc_id for d in letters],
                    "seqs": [d.seq for d in letters],
                    "statuses": [d.status for d in letters],
                    "types": [d.error_type for d in letters],
                    "reasons": [d.reason for d in letters],
                    "sqlstates": [d.sqlstate for d in letters],
                    "firsts": [d.changes[0] if d.changes else None for d in letters],
                    "lasts": [d.changes[1] if d.changes else None for d in letters],
                },
            )

    def clear_dead_letters(self, landed: Mapping[tuple[str, str], int]) -> None:
        """Forget dead letters of documents that have since been settled at a newer version."""
        if landed:
            keys = list(landed)
            self._named(
                "clear_dead_letters",
                {
                    "indexes": [k[0] for k in keys],
                    "ids": [k[1] for k in keys],
                    "versions": [landed[k] for k in keys],
                },
                prepare=True,
            )

    def list_dead_letters(self, index: str | None, limit: int) -> list[StoredDeadLetter]:
        """Dead letters, oldest first."""
        return self._named_rows(
            "list_dead_letters", StoredDeadLetter, {"index": index, "limit": limit}
        )

    def retry_dead_letters(self, index: str | None, ids: Iterable[int] | None) -> int:
        """Move dead letters back into the outbox; returns how many documents were queued."""
        with translated(), self._conn.cursor() as cur:
            cur.execute(
                queries.get("retry_dead_letters"),
                {"index": index, "ids": list(ids) if ids is not None else None},
            )
            return cur.rowcount

    # --- status --------------------------------------------------------------------------

    def backlog(self) -> list[Backlog]:
        """Changes waiting per index."""
        return self._named_rows("backlog", Backlog)

    def progress(self) -> dict[str, datetime]:
        """When each index last had a batch land."""
        return {name: at for name, at in self._tuples(queries.get("progress"), {})}

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters per index."""
        return {name: int(n) for name, n in self._tuples(queries.get("dead_letter_counts"), {})}

    def binding_states(self) -> list[BindingState]:
        """Paused indexes and refreshes."""
        return self._named_rows("binding_states", BindingState)

    def rebuilds(self) -> list[Rebuild]:
        """Every rebuild in progress."""
        return self._named_rows("rebuilds", Rebuild)

    # --- paused bindings and schema changes ----------------------------------------------

    def set_paused(self, index: str, reason: str | None) -> None:
        """Record why an index is paused (None: it is not)."""
        if reason is None:
            self._named("clear_paused", {"index": index})
        else:
            self._named("set_paused", {"index": index, "reason": reason})

    def observe_fingerprint(self, index: str, fingerprint: str) -> tuple[str | None, bool]:
        """Record a binding's shape: the one seen before, and whether it changed."""
        rows = self._tuples(
            queries.get("observe_fingerprint"), {"index": index, "fingerprint": fingerprint}
        )
        before, changed = rows[0]
        return before, bool(changed)

    def next_refresh(self, indexes: Sequence[str]) -> Refresh | None:
        """Lock one refreshing index for this transaction, if one is free."""
        found = self._named_rows("next_refresh", Refresh, {"indexes": list(indexes)})
        return found[0] if found else None

    def advance_refresh(self, index: str, after: str | None, count: int, more: bool) -> None:
        """Record a refresh's progress."""
        self._named(
            "advance_refresh", {"index": index, "after": after, "count": count, "more": more}
        )

    # --- rebuilds ------------------------------------------------------------------------

    def get_rebuild(self, alias: str) -> Rebuild | None:
        """The rebuild of `alias` in progress, if any."""
        found = self._named_rows("get_rebuild", Rebuild, {"alias": alias})
        return found[0] if found else None

    def start_rebuild(self, alias: str, target: str, in_place: bool, total: int | None) -> None:
        """Record a rebuild: workers write to `target` too from this commit on."""
        self._named(
            "start_rebuild",
            {"alias": alias, "target": target, "in_place": in_place, "total": total},
        )

    def start_backfill(self, alias: str, target: str) -> None:
        """Record install's backfill of a new index (an in-place rebuild)."""
        self._named("start_backfill", {"alias": alias, "target": target})

    def try_backfill_lock(self, alias: str) -> bool:
        """Take the session lock that lets one worker at a time backfill `alias`."""
        return bool(self._named_value("try_backfill_lock", {"alias": alias}))

    def backfill_unlock(self, alias: str) -> None:
        """Release that lock."""
        self._named_value("backfill_unlock", {"alias": alias})

    def unfinished_backfills(self) -> list[str]:
        """In-place rebuilds left unfinished."""
        return [str(r[0]) for r in self._tuples(queries.get("unfinished_backfills"), {})]

    def set_watermark(self, alias: str, watermark: int, total: int | None = None) -> None:
        """Record a rebuild's V0 (and the rows it expects to write, when counted)."""
        self._named("set_watermark", {"alias": alias, "watermark": watermark, "total": total})

    def rebuild_progress(self, alias: str, last_key: str, rows_done: int) -> None:
        """Record the last key whose page has landed."""
        self._named(
            "rebuild_progress", {"alias": alias, "last_key": last_key, "rows_done": rows_done}
        )

    def end_rebuild(self, alias: str) -> None:
        """Forget a rebuild (dual writes stop)."""
        self._named("end_rebuild", {"alias": alias})

    def draw_watermark(self) -> Watermark:
        """A seq drawn now and the snapshot of transactions in progress."""
        return self._named_rows("draw_watermark", Watermark)[0]

    def in_progress(self, snapshot: str) -> int:
        """How many transactions of `snapshot` are still running."""
        return int(self._named_value("in_progress", {"snapshot": snapshot}) or 0)

    def current_snapshot(self) -> str:
        """The transactions running now."""
        return str(self._named_value("current_snapshot"))
