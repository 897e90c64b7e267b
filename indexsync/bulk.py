"""Bulk items: versioned index and delete actions as NDJSON, and request bodies cut from them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class Op:
    """One bulk item: index `source` (or delete when it is None) at an external version."""

    alias: str
    index: str
    doc_id: str
    version: int
    source: str | None
    require_alias: bool = False

    def encode(self) -> bytes:
        """The NDJSON lines of this item; the source passes through untouched."""
        meta = (
            f'"_index":{json.dumps(self.index)},"_id":{json.dumps(self.doc_id)},'
            f'"version":{self.version},"version_type":"external_gte"'
        )
        if self.source is None:
            return f'{{"delete":{{{meta}}}}}\n'.encode()
        if self.require_alias:
            meta += ',"require_alias":true'
        return f'{{"index":{{{meta}}}}}\n{self.source}\n'.encode()


def build_ops(
    alias: str,
    targets: Sequence[tuple[str, bool]],
    ids: Iterable[str],
    documents: dict[str, str],
    version: int,
) -> list[Op]:
    """Bulk items for every changed id of an index, for every target (alias, rebuild)."""
    ids = sorted(ids)
    return [
        Op(alias, target, doc_id, version, documents.get(doc_id), is_alias)
        for target, is_alias in targets
        for doc_id in ids
    ]


def chunk_bodies(
    ops: Sequence[Op], max_bytes: int, max_items: int
) -> Iterator[tuple[list[Op], bytes]]:
    """Split items into bodies of at most `max_items` and `max_bytes`; an item never splits."""
    batch: list[Op] = []
    lines: list[bytes] = []
    size = 0
    for op in ops:
        line = op.encode()
        if batch and (size + len(line) > max_bytes or len(batch) >= max_items):
            yield batch, b"".join(lines)
            batch, lines, size = [], [], 0
        batch.append(op)
        lines.append(line)
        size += len(line)
    if batch:
        yield batch, b"".join(lines)
