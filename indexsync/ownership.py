"""Which database an index mirrors: recorded in its `_meta`, checked by every command that
writes, and handed over only when told to.

A second database pointed at the same cluster (staging, a developer's copy, a restore
elsewhere) with the same bindings would otherwise adopt the first database's aliases and
overwrite its documents. The owner is the database's identity: the cluster's system
identifier (when the role may read it), the database's name, and an id made once by the
first `install`. A physical restore of the same cluster keeps all three, and is the same
owner; a copy into another cluster or under another name is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from indexsync.errors import ForeignIndex
from indexsync.search import Search
from indexsync.store import Store

META_KEY = "indexsync_owner"
TAKE_OVER_FLAG = "--take-over"


@dataclass(frozen=True)
class Owner:
    """A database's identity, as indexes record it."""

    install_id: str
    database: str
    system_identifier: str | None = None

    def same_as(self, other: Owner) -> bool:
        """Whether both are the same database (a system identifier counts when both have one)."""
        if (self.install_id, self.database) != (other.install_id, other.database):
            return False
        return (
            self.system_identifier is None
            or other.system_identifier is None
            or self.system_identifier == other.system_identifier
        )

    def describe(self) -> str:
        """The owner for messages."""
        cluster = f"cluster {self.system_identifier}, " if self.system_identifier else ""
        return f"database {self.database!r} ({cluster}install {self.install_id[:8]})"

    def as_meta(self) -> dict[str, Any]:
        """The owner as the index's `_meta` holds it."""
        meta: dict[str, Any] = {"install_id": self.install_id, "database": self.database}
        if self.system_identifier is not None:
            meta["system_identifier"] = self.system_identifier
        return meta

    @classmethod
    def from_meta(cls, meta: Any) -> Owner | None:
        """The owner an index's `_meta` records, or None (an index of an earlier release)."""
        if not isinstance(meta, dict):
            return None
        install_id, database = meta.get("install_id"), meta.get("database")
        if not isinstance(install_id, str) or not isinstance(database, str):
            return None
        system = meta.get("system_identifier")
        return cls(install_id, database, system if isinstance(system, str) else None)


def this_database(store: Store) -> Owner:
    """The identity of the database `store` is connected to."""
    identity = store.database_identity()
    return Owner(identity.install_id, identity.database, identity.system_identifier)


def owner_of(search: Search, index: str) -> Owner | None:
    """The database an index records as its owner, if any."""
    return Owner.from_meta(search.get_meta(index).get(META_KEY))


def require_owned(search: Search, alias: str, owner: Owner) -> None:
    """Refuse an alias whose indexes another database owns; an unrecorded owner is fine."""
    for index in search.alias_targets(alias):
        recorded = owner_of(search, index)
        if recorded is not None and not recorded.same_as(owner):
            raise foreign(alias, index, recorded, owner)


def foreign(alias: str, index: str, recorded: Owner, owner: Owner) -> ForeignIndex:
    """The error for an index another database owns, naming both and the way out."""
    return ForeignIndex(
        f"index {alias!r} ({index}) mirrors {recorded.describe()}, not this "
        f"{owner.describe()}: indexsync will not write another database's index. Point this "
        "database at another cluster, or give its bindings other aliases. If this database "
        "really replaces that one (restored from its backup, or renamed), run "
        f"`indexsync install {TAKE_OVER_FLAG}` once to make it the owner"
    )


def claim(search: Search, index: str, owner: Owner) -> None:
    """Record `owner` in the index's `_meta`."""
    search.put_meta(index, {META_KEY: owner.as_meta()})
