"""Bulk items: versioned index and delete actions as NDJSON, and request bodies cut from them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from indexsync.rows import Document


@dataclass(slots=True)
class Op:
    """One bulk item: index `source` (or delete when it is None) at an external version."""

    alias: str
    index: str
    doc_id: str
    version: int
    source: str | None
    require_alias: bool = False
    # The binding's routing of this document (for a delete: where the copy to delete is).
    routing: str | None = None
    # The ingest pipeline an index write goes through.
    pipeline: str | None = None
    # A strictly newer version only ("external"): the delete of a moved document's old copy,
    # which must never remove the write of the same batch (two routings may name one shard,
    # where they are one document, and a retried delete may come after the write).
    strict: bool = False

    def encode(self) -> bytes:
        """The NDJSON lines of this item; the source passes through untouched."""
        kind = "external" if self.strict else "external_gte"
        meta = (
            f'"_index":{json.dumps(self.index)},"_id":{json.dumps(self.doc_id)},'
            f'"version":{self.version},"version_type":"{kind}"'
        )
        if self.routing is not None:
            meta += f',"routing":{json.dumps(self.routing)}'
        if self.source is None:
            return f'{{"delete":{{{meta}}}}}\n'.encode()
        if self.require_alias:
            meta += ',"require_alias":true'
        if self.pipeline is not None:
            meta += f',"pipeline":{json.dumps(self.pipeline)}'
        return f'{{"index":{{{meta}}}}}\n{self.source}\n'.encode()


def build_ops(
    alias: str,
    targets: Sequence[tuple[str, bool]],
    ids: Iterable[str],
    documents: Mapping[str, Document],
    version: int,
    *,
    elsewhere: Mapping[str, Iterable[str]] | None = None,
    pipeline: str | None = None,
) -> list[Op]:
    """Bulk items for every changed id of an index, for every target (alias, rebuild).

    A routed document is written at its routing, and deleted wherever else it may be
    (`elsewhere`: the routings it had before this batch's changes moved or deleted it).
    """
    ops = []
    for doc_id in sorted(ids):
        doc = documents.get(doc_id)
        here = doc.routing if doc is not None else None
        for target, is_alias in targets:
            # Moved to another routing, or deleted: its copy under the old one goes. Two
            # routings may name the same shard, where they are one document: beside a write,
            # the delete needs a strictly older copy, so it never removes the write.
            for old in sorted(set((elsewhere or {}).get(doc_id, ())) - {here}):
                moved = doc is not None
                ops.append(Op(alias, target, doc_id, version, None, is_alias, old, strict=moved))
            if doc is not None or not elsewhere or not elsewhere.get(doc_id):
                source = doc.source if doc is not None else None
                ops.append(Op(alias, target, doc_id, version, source, is_alias, here, pipeline))
    return ops


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
