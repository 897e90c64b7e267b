"""The bindings as installed: what `install` recorded in the database, and reading it back.

The bindings file is what a user asks for; the database holds what `install` applied. A
running worker follows the database, so a binding added, changed or removed by `install`
reaches every worker without a restart, and a worker never acts on a file nobody installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from indexsync.bindings import Binding, IndexSpec
from indexsync.catalog import resolve_each
from indexsync.errors import ConfigError
from indexsync.store import Store


def spec_record(index: IndexSpec) -> dict[str, Any]:
    """A binding as it is stored: the validated `[indexes.<alias>]` table, as JSON."""
    return index.model_dump(mode="json", exclude_none=True)


def require(store: Store, aliases: list[str]) -> list[str]:
    """Every installed index, in order; a ConfigError naming any of `aliases` that no
    installed binding has (a typo, or a binding `install` has not applied yet)."""
    installed = sorted(row.index_name for row in store.installed_bindings())
    unknown = [alias for alias in aliases if alias not in installed]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ConfigError(
            f"no binding is installed for index {names}; installed: "
            f"{', '.join(installed) or 'none'}"
        )
    return installed


def read(store: Store) -> tuple[dict[str, IndexSpec], dict[str, str]]:
    """Every installed binding, and why any could not be read back (a newer release's)."""
    specs: dict[str, IndexSpec] = {}
    unreadable: dict[str, str] = {}
    for row in store.installed_bindings():
        try:
            specs[row.index_name] = IndexSpec.model_validate(row.spec)
        except ValidationError as exc:
            unreadable[row.index_name] = (
                f"index {row.index_name!r}: the installed binding cannot be read by this "
                f"release ({exc.error_count()} problem(s)); run `indexsync install` with this "
                "release"
            )
    return specs, unreadable


def differs(store: Store, wanted: Mapping[str, IndexSpec]) -> list[str]:
    """How the bindings file differs from what is installed, one line per index."""
    installed, unreadable = read(store)
    lines = []
    for alias in sorted(set(wanted) | set(installed) | set(unreadable)):
        if alias not in installed and alias not in unreadable:
            lines.append(f"index {alias!r} is in the bindings file but not installed")
        elif alias not in wanted:
            lines.append(f"index {alias!r} is installed but no longer in the bindings file")
        elif alias in unreadable or spec_record(wanted[alias]) != spec_record(installed[alias]):
            lines.append(f"index {alias!r}: the bindings file differs from the installed binding")
    return lines


def resolve_installed(store: Store, source: Path) -> tuple[dict[str, Binding], dict[str, str]]:
    """The installed bindings checked against the catalog, binding by binding.

    One broken binding (a dropped table, SQL that no longer runs) is reported, never fatal:
    the others sync on. `source` names the bindings file in messages.
    """
    specs, unreadable = read(store)
    good, broken = resolve_each(store, specs, source)
    return good, {**{alias: str(exc) for alias, exc in broken.items()}, **unreadable}
