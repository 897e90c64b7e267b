"""The `indexsync` command line: resolves configuration once, then hands it down."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from pydantic import SecretStr

from indexsync import (
    __version__,
    installed,
    logs,
    migrations,
    ownership,
    pausing,
    resync,
    verify,
)
from indexsync.bindings import Binding, BindingsFile, load_bindings, load_mapping
from indexsync.catalog import resolve
from indexsync.check import check
from indexsync.errors import ConfigError, IndexsyncError, SearchUnavailable
from indexsync.install import install, print_sql, uninstall
from indexsync.installed import resolve_installed
from indexsync.monitor import Monitor
from indexsync.reindex import run_reindex
from indexsync.search import Search
from indexsync.settings import Settings, env_name, load_settings, unknown_variables
from indexsync.status import assess, collect, render_table
from indexsync.store import Store, describe_database_url
from indexsync.worker import Worker
from indexsync.writer import ITEMS_PER_REQUEST, BulkWriter

log = logs.get_logger(__name__)

Command = Callable[[Settings, argparse.Namespace], int]


def _bindings(settings: Settings) -> BindingsFile:
    return load_bindings(settings.config)


def _mappings(settings: Settings, spec: BindingsFile) -> dict[str, dict[str, Any]]:
    # Every mapping file is read here, once: nothing reads one half-way through a command.
    return {alias: load_mapping(settings.mappings_dir, alias) for alias in spec.indexes}


def _search(settings: Settings) -> Search:
    return Search.connect(settings)


def cmd_install(settings: Settings, args: argparse.Namespace) -> int:
    """Create schema, triggers and indexes."""
    spec = _bindings(settings)
    if args.print_sql:
        print_sql(settings, spec, sys.stdout.write)
        return 0
    mappings = _mappings(settings, spec)
    search = _search(settings)
    try:
        report = install(
            settings,
            spec,
            mappings,
            search,
            backfill=not args.no_backfill,
            wait=args.wait,
            take_over=args.take_over,
        )
    finally:
        search.close()
    if report.migrations:
        print(f"indexsync schema migrated to version {report.migrations[-1]}")
    for name in report.created_indexes:
        print(f"created index {name}")
    if report.statements:
        print(f"applied {report.statements} DDL statement(s)")
    for alias, rows in report.backfilled.items():
        print(f"backfilled {rows} existing row(s) of {alias!r} (lock-free scan)")
    for alias in report.backfills:
        if alias not in report.backfilled:
            print(
                f"existing rows of {alias!r}: running workers write them, beside live sync "
                "(`indexsync status` shows the progress)"
            )
    for alias in report.changed:
        print(
            f"binding {alias!r} changed: running workers adopt it within seconds and refresh "
            "every document of the index to it, at INDEXSYNC_REFRESH_RATE ids per second"
        )
    for alias, gone in report.removed.items():
        print(
            f"binding {alias!r} removed: its triggers are dropped, with {gone.changes} queued "
            f"change(s) and {gone.dead_letters} dead letter(s); the index {alias!r} stays on "
            "the search server (delete it there when no reader needs it)"
        )
    for index, previous in report.taken_over:
        print(f"took over index {index} from {previous}: this database owns it now")
    for note in report.notes:
        print(f"note: {note}")
    changed = report.changed or report.removed or report.recorded
    if not (
        report.statements
        or report.created_indexes
        or report.migrations
        or report.backfilled
        or changed
    ):
        print("indexsync is installed; nothing to change")
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the worker until SIGTERM/SIGINT (or until idle)."""
    # The database is the truth of what is installed; the file only says what install would do.
    with Store.connect(settings, role="cli") as store:
        migrations.require_current(store)
        bindings, broken = resolve_installed(store, settings.config)
        _warn_uninstalled(settings, store)
    for alias, reason in broken.items():
        log.error("binding.broken_at_start", index=alias, reason=reason)
    stop = threading.Event()

    def on_signal(signum: int, _: Any) -> None:
        log.info("worker.signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    search = _search(settings)
    monitor = Monitor(
        connect=partial(Store.connect, settings, role="health"),
        aliases=sorted({*bindings, *broken}),
        ping=partial(search.health_ping, min(settings.elasticsearch_request_timeout, 5.0)),
        port=settings.metrics_port,
        host=settings.metrics_host,
        stall_seconds=settings.stall_seconds,
        interval=settings.health_interval,
        max_lag=settings.ready_max_lag,
    )
    try:
        with (
            monitor,
            Worker(
                settings,
                bindings,
                search,
                stop,
                metrics=monitor.metrics,
                health=monitor.health,
                broken=broken,
                reload=partial(resolve_installed, source=settings.config),
            ) as worker,
        ):
            worker.run(until_idle=args.until_idle)
    finally:
        search.close()
    return 0


def _warn_uninstalled(settings: Settings, store: Store) -> None:
    """Say so when the bindings file asks for something install has not applied."""
    try:
        spec = load_bindings(settings.config)
    except ConfigError:
        return  # the worker needs no file: it follows what is installed
    for line in installed.differs(store, spec.indexes):
        log.warning("bindings.not_installed", difference=line, hint="run `indexsync install`")


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Show backlog, lag, dead letters and rebuilds per index."""
    spec = _bindings(settings)
    with Store.connect(settings, role="status") as store:
        version = migrations.require_current(store)
        rows = collect(store, list(spec.indexes))
        workers = store.workers()
    problems = assess(
        rows, workers, settings.stall_seconds, search_error=_search_unreachable(settings)
    )
    healthy = not problems and all(row.healthy for row in rows)
    alive = [w for w in workers if w.silent_seconds <= settings.stall_seconds]
    if args.json:
        print(
            json.dumps(
                {
                    "indexes": [row.as_json() for row in rows],
                    "healthy": healthy,
                    "problems": problems,
                    "workers_alive": len(alive),
                    "schema_version": version,
                },
                indent=2,
            )
        )
    else:
        print(render_table(rows))
        print(f"\nworkers alive: {len(alive)}")
        for problem in problems:
            print(f"PROBLEM: {problem}")
    return 0 if healthy else 1


def _search_unreachable(settings: Settings) -> str | None:
    """Why the search server does not answer a health ping, or None when it does."""
    try:
        search = _search(settings)
    except IndexsyncError as exc:
        return str(exc)
    try:
        search.health_ping(min(settings.elasticsearch_request_timeout, 5.0))
    except IndexsyncError as exc:
        return str(exc)
    finally:
        search.close()
    return None


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    """Validate configuration, database objects and indexes."""
    spec = _bindings(settings)
    mappings = _mappings(settings, spec)
    # An unreachable search server is one failed item: the rest of the checklist still runs.
    try:
        search: Search | SearchUnavailable = _search(settings)
    except SearchUnavailable as exc:
        search = exc
    try:
        result = check(settings, spec, mappings, search)
    finally:
        if isinstance(search, Search):
            search.close()
    for line in result.checked:
        print(f"ok      {line}")
    for line in result.warnings:
        print(f"WARNING {line}")
    for line in result.skipped:
        print(f"skipped {line}")
    for line in result.problems:
        print(f"FAILED  {line}")
    return result.exit_code


def cmd_uninstall(settings: Settings, args: argparse.Namespace) -> int:
    """Remove triggers and the indexsync schema."""
    if not args.yes:
        warning = (
            "uninstall drops the triggers and the indexsync schema, with every pending "
            "change and dead letter in it (the indexes stay)"
        )
        if not sys.stdin.isatty():
            raise ConfigError(f"{warning}; pass --yes to confirm when not at a terminal")
        answer = input(f"{warning}. Type 'yes' to go on: ")
        if answer.strip().lower() != "yes":
            print("nothing removed")
            return 1
    dropped = uninstall(settings)
    print(f"removed {len(dropped)} trigger(s) and the indexsync schema; indexes were left alone")
    return 0


def cmd_deadletters(settings: Settings, args: argparse.Namespace) -> int:
    """List dead letters, or move them back into the outbox."""
    with Store.connect(settings, role="deadletters") as store:
        migrations.require_current(store)
        if args.action == "retry":
            with store.transaction():
                n = store.retry_dead_letters(args.index, args.id or None)
            print(f"re-queued {n} document(s); a running worker picks them up")
            return 0
        rows = store.list_dead_letters(args.index, args.limit)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "index": r.index_name,
                        "doc_id": r.doc_id,
                        "seq": r.seq,
                        "status": r.status,
                        "error_type": r.error_type,
                        "reason": r.reason,
                        "failed_at": r.failed_at,
                        "sqlstate": r.sqlstate,
                    }
                    for r in rows
                ],
                default=str,
                indent=2,
            )
        )
    else:
        if rows:
            print("id\tindex\tdoc_id\tseq\terror\tfailed_at")
        for r in rows:
            code = r.status if r.status is not None else f"SQLSTATE {r.sqlstate}"
            print(
                f"{r.id}\t{r.index_name}\t{r.doc_id}\tseq={r.seq}\t{code} {r.error_type}: "
                f"{r.reason}\t{r.failed_at:%Y-%m-%d %H:%M:%S}"
            )
        if not rows:
            print("no dead letters")
    return 0


def cmd_wait(settings: Settings, args: argparse.Namespace) -> int:
    """Wait until every change committed before now is searchable (the CLI twin of
    `indexsync.wait_for_search`); exit 1 naming each index that is not, and why."""
    deadline = time.monotonic() + args.timeout
    with Store.connect(settings, role="wait") as store:
        migrations.require_current(store)
        every = installed.require(store, args.alias)
        late = []
        for alias in args.alias or every:
            left = max(deadline - time.monotonic(), 0.0)
            ok, said = store.wait_for_search(alias, left)
            if not ok:
                prefix = f"indexsync.wait_for_search({alias}): "
                why = "; ".join(m.removeprefix(prefix) for m in said) or "not searchable in time"
                late.append(alias)
                print(f"indexsync: index {alias!r} is not searchable: {why}", file=sys.stderr)
    if late:
        return 1
    print(f"searchable: {', '.join(args.alias or every) or 'no index is installed'}")
    return 0


def cmd_pause(settings: Settings, args: argparse.Namespace) -> int:
    """Stop the writes to one index; its changes stay queued."""
    with Store.connect(settings, role="pause") as store:
        migrations.require_current(store)
        done = pausing.pause(store, args.alias, args.reason, timeout=args.timeout)
    print(
        f"{done.index}: paused; no worker writes to it until `indexsync resume "
        f"{done.index}` ({done.queued} change(s) queued, none lost)"
    )
    return 0


def cmd_resume(settings: Settings, args: argparse.Namespace) -> int:
    """Let the writes to a paused index go on."""
    with Store.connect(settings, role="pause") as store:
        migrations.require_current(store)
        queued = pausing.resume(store, args.alias)
    print(f"{args.alias}: resumed; workers write its {queued} queued change(s) now")
    return 0


def cmd_resync(settings: Settings, args: argparse.Namespace) -> int:
    """Queue the chosen documents of one index again, at a bounded rate."""
    if args.where is not None and args.ids is not None:
        raise ConfigError("resync: give --where or --ids, not both")
    with Store.connect(settings, role="resync") as store:
        migrations.require_current(store)
        installed.require(store, [args.alias])
        bindings, broken = resolve_installed(store, settings.config)
        if args.alias in broken:
            raise ConfigError(f"index {args.alias!r}: its binding is broken: {broken[args.alias]}")
        binding = bindings[args.alias]
        ids = None
        if args.ids is not None:
            if args.ids == "-":
                lines = sys.stdin.read().splitlines()
            else:
                try:
                    with open(args.ids, encoding="utf-8") as handle:
                        lines = handle.read().splitlines()
                except OSError as exc:
                    raise ConfigError(f"--ids {args.ids}: {exc.strerror}") from exc
            ids = resync.read_ids(store, binding, lines)
        done = resync.resync(
            store,
            binding,
            where=args.where,
            ids=ids,
            after=args.after,
            rate=args.rate or settings.refresh_rate,
            stream=sys.stderr,
        )
    last = f"; the last id queued was {done.last_id}" if done.last_id is not None else ""
    print(
        f"{done.index}: queued {done.queued} document(s) in {done.seconds:.1f}s{last}; "
        "a running worker rewrites them (`indexsync wait` waits for that)"
    )
    return 0


def cmd_settings(settings: Settings, args: argparse.Namespace) -> int:
    """Print the effective settings, secrets masked."""
    rows = []
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if name == "database_url" and isinstance(value, SecretStr):
            # Where it points is no secret; only the password is.
            shown = describe_database_url(value.get_secret_value())
        elif isinstance(value, SecretStr):
            shown = "***"
        elif isinstance(value, list):
            shown = ",".join(logs.redact(str(v)) for v in value)
        else:
            shown = "" if value is None else logs.redact(str(value))
        default = field.default
        origin = "default" if value == default else "set"
        rows.append((env_name(name), shown, origin))
    if args.json:
        print(json.dumps({n: {"value": v, "origin": o} for n, v, o in rows}, indent=2))
    else:
        width = max(len(n) for n, _, _ in rows)
        for name, shown, origin in rows:
            print(f"{name.ljust(width)}  {shown or '-'}  ({origin})")
    return 0


def _selected(
    settings: Settings, aliases: list[str]
) -> tuple[dict[str, Binding], dict[str, Binding]]:
    """Every binding, and those named on the command line (all when none are)."""
    spec = _bindings(settings)
    unknown = [alias for alias in aliases if alias not in spec.indexes]
    if unknown:
        raise ConfigError(
            f"{settings.config}: no binding for index(es) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(spec.indexes)}"
        )
    with Store.connect(settings, role="cli") as store:
        migrations.require_current(store)
        # Like the worker: a listed column dropped by a migration is not an error here.
        bindings = resolve(store, spec, settings.config, strict=False)
    return bindings, {alias: b for alias, b in bindings.items() if not aliases or alias in aliases}


def cmd_reindex(settings: Settings, args: argparse.Namespace) -> int:
    """Rebuild indexes with zero downtime."""
    _, bindings = _selected(settings, args.alias)
    mappings = _mappings(settings, _bindings(settings))
    search = _search(settings)
    try:
        results = run_reindex(
            settings,
            bindings,
            search,
            mappings,
            in_place=args.in_place,
            restart=args.restart,
            keep_old=args.keep_old,
            chunk_size=args.chunk_size or settings.bulk_concurrency * ITEMS_PER_REQUEST,
        )
    finally:
        search.close()
    for r in results:
        where = "in place" if args.in_place else f"into {r.target}, alias swapped"
        extra = f", {r.deleted_stale} stale document(s) deleted" if args.in_place else ""
        print(
            f"{r.alias}: {r.rows} rows {where} in {r.seconds:.1f}s "
            f"({r.rows_per_s:,.0f} rows/s, watermark {r.watermark}{extra})"
        )
        if r.dead_letters:
            print(f"{r.alias}: {r.dead_letters} document(s) refused; see `indexsync deadletters`")
    return 0


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Compare indexes with the database; exit 1 on drift."""
    every, bindings = _selected(settings, args.alias)
    search = _search(settings)
    report = []
    drifted = False
    writer = BulkWriter.from_settings(search, settings)
    try:
        with Store.connect(settings, role="verify") as store:
            for binding in bindings.values():
                drift = verify.compare(store, search, binding)
                entry = drift.as_json()
                if drift.total and args.repair:
                    ownership.require_owned(search, binding.alias, ownership.this_database(store))
                    entry["queued_for_repair"] = verify.repair(
                        store, search, binding, drift, writer
                    )
                    # The worker needs every binding: it drains changes of all indexes.
                    with Worker(settings, every, search) as worker:
                        worker.run(until_idle=True)
                    after = verify.compare(store, search, binding)
                    entry["after_repair"] = after.as_json()
                    drifted |= after.total > 0
                else:
                    drifted |= drift.total > 0
                report.append(entry)
    finally:
        writer.close()
        search.close()
    if args.json:
        print(json.dumps({"indexes": report, "drift": drifted}, indent=2))
    else:
        for entry in report:
            _print_drift(entry)
    return 1 if drifted else 0


def _print_drift(entry: dict[str, Any]) -> None:
    name = entry["index"]
    counts = f"{entry['rows']} rows, {entry['documents']} documents"
    if not (entry["missing"] or entry["extra"] or entry["differing"] or entry["misplaced"]):
        print(f"{name}: in sync ({counts})")
        return
    # Misplaced copies exist only in routed indexes: said only when there are some.
    misplaced = f", {entry['misplaced']} misplaced" if entry["misplaced"] else ""
    print(
        f"{name}: DRIFT ({counts}): {entry['missing']} missing, {entry['extra']} extra, "
        f"{entry['differing']} differing{misplaced}"
    )
    if entry.get("unreadable"):
        print(
            f"  {entry['unreadable']} row(s) PostgreSQL cannot build: see `indexsync deadletters`"
        )
    for kind, ids in entry["examples"].items():
        if ids:
            print(f"  {kind}: {', '.join(ids)}")
    if "after_repair" in entry:
        after = entry["after_repair"]
        left = after["missing"] + after["extra"] + after["differing"] + after["misplaced"]
        print(f"  repaired {entry['queued_for_repair']} document(s); {left} still differ")


EPILOG = (
    "Settings come from INDEXSYNC_* environment variables (and .env); `indexsync settings` "
    "shows them all with their values."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="indexsync",
        description="Keep Elasticsearch and OpenSearch indexes equal to PostgreSQL tables.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"indexsync {__version__}")
    # Global options work before or after the command: each subcommand takes them too, and
    # SUPPRESS keeps a subcommand that did not see them from resetting the main parser's.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log at debug level and show tracebacks",
    )
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="the bindings file (default: INDEXSYNC_CONFIG, else indexsync.toml)",
    )
    for action in common._actions:
        parser._add_action(action)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help_: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"example:\n  {example}\n\n{EPILOG}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        p.set_defaults(func=func)
        return p

    p = add(
        "install",
        cmd_install,
        "Create the indexsync schema, the triggers and the indexes (idempotent).",
        "indexsync install",
    )
    p.add_argument("--print-sql", action="store_true", help="print the DDL instead of applying it")
    p.add_argument(
        "--no-backfill",
        action="store_true",
        help="do not write the existing rows of new indexes (a later `reindex` can)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="write the existing rows of new indexes before returning, instead of leaving "
        "them to the workers",
    )
    p.add_argument(
        "--take-over",
        action="store_true",
        help="make this database the owner of bound indexes another database owns (after a "
        "restore from that database's backup, or a rename); without it they are refused",
    )
    p = add(
        "run", cmd_run, "Run the sync worker until SIGTERM or SIGINT.", "indexsync run --until-idle"
    )
    p.add_argument("--until-idle", action="store_true", help="drain the backlog, then exit")
    p = add(
        "wait",
        cmd_wait,
        "Wait until every change committed before now is searchable (what an application "
        "does with `SELECT indexsync.wait_for_search(...)`); exit 1 on a timeout or a dead "
        "letter, naming the index and why.",
        "indexsync wait posts --timeout 10",
    )
    p.add_argument("alias", nargs="*", help="indexes to wait for (default: every installed one)")
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait at most, in all (default 30)"
    )
    p = add(
        "pause",
        cmd_pause,
        "Stop every worker's writes to one index (cluster maintenance, a mapping migration, "
        "an incident); its changes stay queued. Returns once no write is in flight.",
        'indexsync pause posts --reason "cluster upgrade"',
    )
    p.add_argument("alias", help="the index to pause")
    p.add_argument("--reason", default="paused by an operator", help="shown by status")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the writes in flight at most (default 120)",
    )
    p = add(
        "resume",
        cmd_resume,
        "Let the workers write to a paused index again, its queued changes first.",
        "indexsync resume posts",
    )
    p.add_argument("alias", help="the index to resume")
    p = add(
        "resync",
        cmd_resync,
        "Queue chosen documents of one index again through the outbox, at a bounded rate: "
        "the worker rewrites each from its row, never over a newer write. Lighter than "
        "reindex (no new index); run it again after an interruption.",
        "indexsync resync posts --where \"updated_at > now() - interval '1 day'\"",
    )
    p.add_argument("alias", help="the index")
    p.add_argument("--where", help="an SQL condition on the root table's rows (default: all)")
    p.add_argument("--ids", metavar="FILE", help="document ids, one per line ('-': stdin)")
    p.add_argument("--after", metavar="ID", help="start after this id (resume an interrupted run)")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="documents queued per second at most (default INDEXSYNC_REFRESH_RATE)",
    )
    p = add(
        "status",
        cmd_status,
        "Show backlog, lag, dead letters, last success and rebuilds per index; exit 1 when "
        "an index is unhealthy (a stalled backlog, dead letters).",
        "indexsync status --json",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "reindex",
        cmd_reindex,
        "Rebuild indexes from the database with zero downtime while live sync goes on.",
        "indexsync reindex posts",
    )
    p.add_argument("alias", nargs="*", help="indexes to rebuild (default: all)")
    p.add_argument("--in-place", action="store_true", help="rewrite the live index instead")
    p.add_argument("--restart", action="store_true", help="start an interrupted rebuild over")
    p.add_argument("--keep-old", action="store_true", help="keep the previous index")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="rows per scan page (default: 1000 per bulk request in flight)",
    )
    p = add(
        "verify",
        cmd_verify,
        "Compare indexes with the database: missing, extra and differing documents.",
        "indexsync verify posts --repair",
    )
    p.add_argument("alias", nargs="*", help="indexes to verify (default: all)")
    p.add_argument("--repair", action="store_true", help="rewrite exactly the drifted documents")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add(
        "check",
        cmd_check,
        "Validate configuration, database objects and indexes; change nothing.",
        "indexsync check",
    )
    p = add(
        "uninstall",
        cmd_uninstall,
        "Remove the triggers and the indexsync schema, with pending changes and dead "
        "letters; keep the indexes. Asks first, unless --yes.",
        "indexsync uninstall --yes",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p = add(
        "settings",
        cmd_settings,
        "Print the effective settings, from the environment and .env, secrets masked.",
        "indexsync settings",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "deadletters",
        cmd_deadletters,
        "List documents the search server refused or PostgreSQL could not build; retry them.",
        "indexsync deadletters retry --index posts",
    )
    p.add_argument("action", choices=["list", "retry"], nargs="?", default="list")
    p.add_argument("--index", help="only this index")
    p.add_argument("--id", type=int, action="append", help="only this dead letter id (repeatable)")
    p.add_argument("--limit", type=int, default=100, help="rows to list (default 100)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `indexsync` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    overrides: dict[str, Any] = {}
    if getattr(args, "config", None):
        overrides["config"] = args.config
    try:
        try:
            settings = load_settings(**overrides)
        except IndexsyncError:
            logs.configure(None, "info")
            raise
        logs.configure(settings.log_format, "debug" if debug else settings.log_level)
        for name, closest in unknown_variables(os.environ):
            log.warning(
                "settings.unknown_variable",
                variable=name,
                did_you_mean=closest,
                hint="indexsync ignores it",
            )
        return int(args.func(settings, args))
    except IndexsyncError as exc:
        if debug:
            traceback.print_exc()
        print(f"indexsync: error: {logs.redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `indexsync check | head -1`: the reader left, which is no error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not fail once more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
