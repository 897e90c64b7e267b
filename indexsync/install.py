"""Install and uninstall: the indexsync schema, the capture triggers, the indexes, the backfill."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from indexsync import capture, installed, migrations, ownership, refresh
from indexsync.bindings import Binding, BindingsFile, IndexSpec
from indexsync.catalog import resolve
from indexsync.errors import ConfigError, IndexsyncError, SearchError
from indexsync.indexes import create_generation, index_body
from indexsync.keys import PINNED_SETTINGS
from indexsync.logs import get_logger
from indexsync.rows import Forgotten
from indexsync.search import Search
from indexsync.settings import Settings
from indexsync.store import Store

log = get_logger(__name__)


@dataclass
class InstallReport:
    """What install did."""

    created_indexes: list[str] = field(default_factory=list)
    statements: int = 0
    backfilled: dict[str, int] = field(default_factory=dict)
    dropped_triggers: list[str] = field(default_factory=list)
    migrations: list[int] = field(default_factory=list)
    created_by_alias: dict[str, str] = field(default_factory=dict)
    # New indexes whose existing rows a worker will write.
    backfills: list[str] = field(default_factory=list)
    # Bindings recorded in the database for the first time (new, or installed by a release
    # that did not record them).
    recorded: list[str] = field(default_factory=list)
    # Bindings whose definition changed: workers adopt them and refresh every document.
    changed: list[str] = field(default_factory=list)
    # Bindings removed from the file: what went with them.
    removed: dict[str, Forgotten] = field(default_factory=dict)
    # Things the user should know that install does not do by itself.
    notes: list[str] = field(default_factory=list)
    # Indexes another database owned, handed to this one by --take-over: (index, owner).
    taken_over: list[tuple[str, str]] = field(default_factory=list)


def _meta(settings: Settings) -> list[tuple[str, str]]:
    # What install decided, so that `check` compares against the same choices.
    return [("notify", str(settings.notify).lower()), ("capture", settings.capture)]


def print_sql(settings: Settings, spec: BindingsFile, write: Callable[[str], object]) -> None:
    """Write the DDL install would apply, for teams that run migrations themselves."""
    with Store.connect(settings, role="install") as store, store.transaction():
        store.read_only()
        bindings = resolve(store, spec, settings.config)
        version = migrations.installed_version(store)
        ddl = capture.desired(store, bindings, settings.notify, settings.capture)
        write("BEGIN;\n")
        write("CREATE SCHEMA IF NOT EXISTS indexsync;\n")
        write(migrations.script(store, version))
        for key, value in _meta(settings):
            write(store.render_named("set_meta", {"key": key, "value": value}) + ";\n")
        for item in ddl:
            write(f"\n-- index {item.alias}\n")
            for statement in item.statements:
                write(store.render(statement) + ";\n")
        # The bindings as installed, which running workers follow (see installed.py).
        before = installed.read(store)[0] if version is not None and version >= 3 else {}
        write("\n-- the installed bindings\n")
        for alias, index in spec.indexes.items():
            params = {"index": alias, "spec": installed.spec_record(index)}
            write(store.render_named("put_binding", params) + ";\n")
            if alias in before and before[alias] != index:
                write(store.render_named("start_refresh", {"index": alias}) + ";\n")
        for alias in sorted(set(before) - set(spec.indexes)):
            write(store.render_named("forget_binding", {"index": alias}) + ";\n")
        write(store.render_named("bump_bindings_version", {}) + ";\n")
        write("COMMIT;\n")


def install(
    settings: Settings,
    spec: BindingsFile,
    mappings: Mapping[str, dict[str, Any]],
    search: Search,
    *,
    backfill: bool = True,
    wait: bool = False,
    take_over: bool = False,
    stream: TextIO | None = None,
) -> InstallReport:
    """Create what is missing, converge what differs; a second run changes nothing.

    The schema, the triggers and the indexes come in one short transaction, with a
    backfill recorded for each new index. A worker then writes the existing rows with the
    same lock-free keyset scan at a watermark that `reindex --in-place` uses, beside live
    sync: no lock is held while it runs, the application's writes go on, `status` shows its
    progress, and a killed worker's backfill resumes where it stopped. With `wait`, install
    runs the backfill itself before returning.
    """
    search.ping()
    report = InstallReport()
    with Store.connect(settings, role="install") as store:
        try:
            with store.transaction():
                store.lock_timeout()
                # Only when missing: CREATE SCHEMA IF NOT EXISTS checks the CREATE right on
                # the database even when the schema exists, and a DBA may have made it.
                if not store.schema_exists():
                    store.create_schema()
                before = migrations.installed_version(store)
                applied = migrations.apply_pending(store)
                report.migrations += [step.number for step in applied]
                bindings = resolve(store, spec, settings.config)
                if before is not None and before < _PINNED_SINCE:
                    _ids_that_may_change(store, bindings, report)
                # Before anything is created: another database's index is never adopted.
                owner = ownership.this_database(store)
                report.taken_over = _check_owners(search, bindings, owner, take_over)
                new_aliases = _ensure_indexes(settings, search, bindings, mappings, report)
                done = capture.converge(store, bindings, settings.notify, settings.capture)
                report.statements += done.statements
                report.dropped_triggers += done.dropped_triggers
                for key, value in _meta(settings):
                    store.set_meta(key, value)
                _record_bindings(store, spec.indexes, report)
                for binding in bindings.values():
                    # A table changed since last seen: its documents are refreshed by workers.
                    refresh.observe(store, binding)
                if backfill:
                    # Recorded with the triggers: whoever runs it (a worker, or install with
                    # --wait), a killed backfill resumes from its last page.
                    for alias in new_aliases:
                        store.start_backfill(alias, report.created_by_alias[alias])
                        report.backfills.append(alias)
                unfinished = set(store.unfinished_backfills())
        except BaseException:
            # Nothing half-applied: the transaction rolled back, so drop the indexes we made.
            for name in report.created_indexes:
                try:
                    search.delete_index(name)
                except IndexsyncError:
                    log.warning("install.cleanup_failed", index=name)
            report.created_indexes.clear()
            raise
        # Logged once committed: a rolled-back install migrated nothing.
        for step in applied:
            log.info("install.migrated", version=step.number, name=step.name)
        if report.recorded or report.changed or report.removed:
            log.info(
                "install.bindings_recorded",
                added=report.recorded,
                changed=report.changed,
                removed=sorted(report.removed),
            )
        for alias in bindings:
            for index in search.alias_targets(alias):
                ownership.claim(search, index, owner)
        if backfill and wait:
            _backfill(settings, search, store, bindings, mappings, unfinished, report, stream)
    log.info(
        "install.done",
        created_indexes=report.created_indexes,
        statements=report.statements,
        backfilled=report.backfilled,
        dropped_triggers=report.dropped_triggers,
    )
    return report


# The schema version of the first release that rendered ids in pinned settings.
_PINNED_SINCE = 3
_UTC = {"utc", "etc/utc", "gmt", "etc/gmt", "zulu", "universal", "etc/universal", "uct"}


def _ids_that_may_change(store: Store, bindings: dict[str, Binding], report: InstallReport) -> None:
    """Say which indexes may hold ids that releases before pinning rendered differently.

    Those releases rendered a key in whatever settings the session had. Where this
    database's defaults equal the pinned settings, nothing changes, and nothing is said.
    """
    pinned = {name.lower(): value for name, value in PINNED_SETTINGS.items()}
    differing = {
        name: value
        for name, value in store.session_defaults().items()
        if value != pinned.get(name)
        and not (name == "timezone" and value.lower() in _UTC)
        and not (name == "datestyle" and value.replace(" ", "").upper().startswith("ISO"))
    }
    if not differing:
        return
    shown = ", ".join(f"{name}={value}" for name, value in sorted(differing.items()))
    for alias, binding in sorted(bindings.items()):
        if binding.key.setting_free:
            continue
        report.notes.append(
            f"index {alias!r}: its key ({', '.join(binding.key.types)}) is now rendered as "
            f"`_id` in fixed settings, not in this database's defaults ({shown}); documents "
            f"written by an earlier release may carry other ids: run `indexsync reindex "
            f"{alias}` to replace them"
        )


def _check_owners(
    search: Search, bindings: dict[str, Binding], owner: ownership.Owner, take_over: bool
) -> list[tuple[str, str]]:
    """Refuse an alias another database owns, unless told to take it over."""
    taken = []
    for alias in bindings:
        for index in search.alias_targets(alias):
            recorded = ownership.owner_of(search, index)
            if recorded is None or recorded.same_as(owner):
                continue
            if not take_over:
                raise ownership.foreign(alias, index, recorded, owner)
            taken.append((index, recorded.describe()))
            log.warning("install.taking_over", index=index, previous_owner=recorded.describe())
    return taken


def _record_bindings(store: Store, wanted: dict[str, IndexSpec], report: InstallReport) -> None:
    """Make the installed bindings those of the file; running workers follow within seconds.

    A changed binding refreshes every document of its index (at the refresh's bounded
    rate), since any of them may read differently now. A removed binding takes its queued
    changes with it: its triggers are gone, and no worker will ever write them.
    """
    before, _ = installed.read(store)
    for alias, index in wanted.items():
        outcome = store.put_binding(alias, installed.spec_record(index))
        if outcome == "added":
            report.recorded.append(alias)
        elif outcome == "changed":
            report.changed.append(alias)
            store.start_refresh(alias)
            old = before.get(alias)
            if old is not None and old.table != index.table:
                report.notes.append(
                    f"index {alias!r} now reads {index.table} instead of {old.table}: "
                    f"documents of {old.table}'s rows stay until `indexsync reindex {alias}`"
                )
    for alias in sorted(set(before) - set(wanted)):
        report.removed[alias] = store.forget_binding(alias)
    if report.recorded or report.changed or report.removed:
        store.bump_bindings_version()


def _backfill(
    settings: Settings,
    search: Search,
    store: Store,
    bindings: dict[str, Binding],
    mappings: Mapping[str, dict[str, Any]],
    aliases: set[str],
    report: InstallReport,
    stream: TextIO | None,
) -> None:
    # Imported here: the rebuild machinery is only needed when there is something to fill.
    from indexsync.reindex import Reindexer

    todo = [bindings[alias] for alias in sorted(aliases) if alias in bindings]
    if not todo:
        return
    reindexer = Reindexer(settings, search, mappings, stream=stream)
    try:
        for binding in todo:
            result = reindexer.reindex(store, binding, in_place=True, restart=False)
            report.backfilled[binding.alias] = result.rows
    finally:
        reindexer.close()


def _ensure_indexes(
    settings: Settings,
    search: Search,
    bindings: dict[str, Binding],
    mappings: Mapping[str, dict[str, Any]],
    report: InstallReport,
) -> list[str]:
    created = []
    for alias in bindings:
        if search.alias_targets(alias):
            continue
        if search.exists(alias):
            raise ConfigError(
                f"{settings.config}: [indexes.{alias}]: {alias!r} is an existing physical index, "
                "not an alias; indexsync serves each index through an alias of that name. "
                "Rename the binding, or reindex that index into a new one and delete it."
            )
        body = index_body(mappings.get(alias, {}), settings)
        try:
            name = create_generation(search, alias, body, attach_alias=True)
        except SearchError as exc:
            path = settings.mappings_dir / f"{alias}.json"
            raise ConfigError(f"{path}: the search server refused index {alias!r}: {exc}") from exc
        report.created_indexes.append(name)
        report.created_by_alias[alias] = name
        created.append(alias)
        log.info("install.index_created", alias=alias, index=name)
    return created


def uninstall(settings: Settings) -> list[str]:
    """Remove the capture triggers and the indexsync schema; the indexes stay."""
    with Store.connect(settings, role="install") as store, store.transaction():
        store.lock_timeout()
        if not store.schema_exists():
            return []
        dropped = [f"{t.schema}.{t.table}.{t.name}" for t in store.capture_triggers()]
        # The triggers depend on the schema's functions, so the cascade takes them too,
        # and the schema's owner needs no ownership of the tables.
        store.drop_schema()
    log.info("uninstall.done", dropped_triggers=dropped)
    return dropped
