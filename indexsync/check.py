"""`check`: configuration, database objects and indexes validated without changing anything.

Every item of the checklist is reported, whatever fails first: with the database down, the
search side and the mapping files are still checked, and what could not be checked says why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from indexsync import capture, migrations, ownership, versions
from indexsync.bindings import Binding, BindingsFile
from indexsync.catalog import resolve
from indexsync.errors import ConfigError, DatabaseUnavailable, IndexsyncError, SearchUnavailable
from indexsync.indexes import missing_alias
from indexsync.search import Search
from indexsync.settings import Settings
from indexsync.status import assess, collect
from indexsync.store import Store


@dataclass
class CheckResult:
    """The outcome of `check`: problems found, and what was looked at."""

    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # A problem in the configuration itself (the bindings or the settings) rather than in
    # the state of a server: the exit code says so.
    config_error: bool = False

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    @property
    def exit_code(self) -> int:
        """0 when all is well, 2 for a configuration error, 1 for any other problem."""
        if self.config_error:
            return 2
        return 0 if self.ok else 1


def check(
    settings: Settings,
    spec: BindingsFile,
    mappings: Mapping[str, dict[str, Any]],
    search: Search | SearchUnavailable,
) -> CheckResult:
    """Validate configuration, database objects and indexes without changing anything.

    `search` is the connected server, or why it could not be reached.
    """
    result = CheckResult()
    result.checked.append(f"bindings file {settings.config}: {len(spec.indexes)} index(es)")
    for alias in spec.indexes:
        if mappings.get(alias):
            result.checked.append(f"mapping of {alias!r}: {settings.mappings_dir / alias}.json")
        else:
            result.checked.append(
                f"mapping of {alias!r}: no file {settings.mappings_dir / alias}.json, so a "
                "dynamic mapping"
            )
    installed = _check_database(settings, spec, result)
    reachable = _check_search(search, list(spec.indexes), result)
    if reachable and isinstance(search, Search):
        _check_pipelines(search, spec, result)
    if installed is not None and reachable and isinstance(search, Search):
        _check_what_run_checks(settings, list(spec.indexes), search, result)
    else:
        result.skipped.append(
            "index owners and versions against the change sequence: "
            + (
                "the search server is unreachable"
                if installed is not None
                else "the database cannot be checked"
            )
        )
    return result


def _check_what_run_checks(
    settings: Settings, aliases: list[str], search: Search, result: CheckResult
) -> None:
    """What makes `run` refuse to start makes `check` fail first: owners and versions."""
    try:
        with Store.connect(settings, role="check") as store:
            try:
                migrations.require_current(store)
            except IndexsyncError:
                result.skipped.append("index owners and versions: indexsync is not installed")
                return
            owner = ownership.this_database(store)
            for alias in aliases:
                if not search.alias_targets(alias):
                    continue
                try:
                    ownership.require_owned(search, alias, owner)
                    versions.check_sequence(store, search, alias)
                except IndexsyncError as exc:
                    result.problems.append(str(exc))
                else:
                    result.checked.append(
                        f"index {alias!r} belongs to this database and its versions are "
                        "behind the change sequence"
                    )
            rows = collect(store, aliases)
            problems = assess(rows, store.workers(), settings.stall_seconds)
            result.problems.extend(problems)
            if not problems:
                result.checked.append("a worker is alive, or no work waits for one")
    except IndexsyncError as exc:
        result.problems.append(f"index owners and versions: {exc}")


def _check_database(
    settings: Settings, spec: BindingsFile, result: CheckResult
) -> dict[str, Binding] | None:
    try:
        store = Store.connect(settings, role="check")
    except DatabaseUnavailable as exc:
        # A missing or malformed URL is a usage error and stops here; a server that does
        # not answer is one item of the checklist.
        result.problems.append(f"PostgreSQL: {exc}")
        result.skipped.append("tables, keys, columns and conditions: PostgreSQL is unreachable")
        result.skipped.append("indexsync schema and capture triggers: PostgreSQL is unreachable")
        return None
    try:
        with store.transaction():
            store.read_only()
            result.checked.append("PostgreSQL answers")
            try:
                bindings = resolve(store, spec, settings.config)
            except IndexsyncError as exc:
                result.problems.append(str(exc))
                result.config_error = isinstance(exc, ConfigError)
                result.skipped.append("capture triggers: a binding does not resolve")
                return None
            result.checked.append("tables, keys, columns and conditions exist in PostgreSQL")
            for binding in bindings.values():
                if binding.query is not None:
                    _check_plan(store, binding, result)
            version = migrations.installed_version(store)
            if version is None:
                result.problems.append("schema 'indexsync' is missing: run `indexsync install`")
                result.skipped.append("capture triggers: indexsync is not installed")
            else:
                try:
                    migrations.require_current(store)
                    result.checked.append(f"indexsync schema at version {version}")
                except IndexsyncError as exc:
                    result.problems.append(str(exc))
                result.problems.extend(capture.differences(store, bindings))
                result.checked.append("capture triggers installed")
                for state in store.binding_states():
                    if state.paused_reason is not None:
                        result.problems.append(
                            f"index {state.index_name!r} is paused: {state.paused_reason}. "
                            "Fix the cause (the table, the binding and `indexsync install`, "
                            "a grant, or the index's write block): the worker resumes by itself"
                        )
            return bindings
    finally:
        store.close()


def _check_search(
    search: Search | SearchUnavailable, aliases: list[str], result: CheckResult
) -> bool:
    """Check the search side; False when the server cannot be reached."""
    try:
        if isinstance(search, SearchUnavailable):
            raise search
        info = search.ping()
    except IndexsyncError as exc:
        result.problems.append(f"search server: {exc}")
        result.skipped.append("index aliases: the search server is unreachable")
        return False
    engine = search.engine
    how = "detected from GET /" if engine.detected else "named by INDEXSYNC_ENGINE"
    version = info.get("version", {}) if isinstance(info, dict) else {}
    result.checked.append(
        f"search server answers: {engine.label} ({how}; "
        f"{version.get('distribution', 'elasticsearch')} {version.get('number', '?')})"
    )
    result.checked.append(f"client: {engine.client}")
    if engine.serverless:
        result.problems.append(
            "Amazon OpenSearch Serverless: indexsync needs versioned bulk writes "
            "(version_type=external_gte), custom document ids, the _refresh API and scrolls; "
            "Serverless allows custom ids only in search collections and does not document "
            "the others as supported, so indexsync does not support Serverless collections "
            "yet. Use an Amazon OpenSearch Service domain (INDEXSYNC_AWS_SIGV4=es)."
        )
    for alias in aliases:
        targets = search.alias_targets(alias)
        if not targets:
            result.problems.append(str(missing_alias(search, alias)))
        elif len(targets) > 1:
            result.problems.append(f"alias {alias!r} points at several indexes: {targets}")
        else:
            result.checked.append(f"alias {alias!r} -> {targets[0]}")
    return True


def _check_pipelines(search: Search, spec: BindingsFile, result: CheckResult) -> None:
    """Every ingest pipeline a binding names exists: writes through a missing one fail."""
    for alias, index in spec.indexes.items():
        if index.pipeline is None:
            continue
        try:
            exists = search.pipeline_exists(index.pipeline)
        except IndexsyncError as exc:
            result.problems.append(
                f"index {alias!r}: ingest pipeline {index.pipeline!r} cannot be looked up: {exc}"
            )
            continue
        if exists:
            result.checked.append(f"ingest pipeline {index.pipeline!r} of {alias!r} exists")
        else:
            result.problems.append(
                f"index {alias!r}: ingest pipeline {index.pipeline!r} does not exist: create it "
                f"(PUT _ingest/pipeline/{index.pipeline}) before the workers write through it"
            )


def _check_plan(store: Store, binding: Binding, result: CheckResult) -> None:
    # With sequential scans priced out, a Seq Scan left on the root table means the id
    # filter cannot reach its key index: every batch would read the whole table.
    text = store.explain_reread(binding)
    if re.search(rf"Seq Scan on {re.escape(binding.table)}\b", text):
        result.warnings.append(
            f"index {binding.alias!r}: the id filter cannot reach the key index of "
            f"{binding.display} through the query (a LIMIT, OFFSET, DISTINCT or window "
            "function blocks it?): every batch will scan the whole table"
        )
    else:
        result.checked.append(f"index {binding.alias!r}: the query's id filter uses an index")
