"""PostgreSQL's own floor under a drain and a rebuild: indexsync's statements run by pgbench.

The worker's batch is, on the database's side, one transaction: the claim (a DELETE ...
RETURNING of the oldest `batch_size` changes), the draw of the batch's version, and the
re-read of the claimed ids inside a savepoint. A rebuild is a sequence of keyset pages.
Here pgbench runs exactly those statements, rendered from the same binding by the same code
the worker uses, prepared, with the same batch (or page) size and the same number of
sessions, and no Python in the loop. What it reaches is the most any worker could get out
of this database; the worker's rate over it is how much of that the worker keeps.

The only liberty: pgbench cannot hand a result set from one statement to the next, so the
claim is wrapped in `WITH claimed AS (...) SELECT array_agg(doc_id)` and `\\gset` carries
the ids to the re-read. That sends the server one array instead of a thousand rows, which
makes the floor, if anything, a little faster than the worker's own claim.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.cpu import measured
from bench.workload import Workspace
from indexsync import documents, queries
from indexsync.bindings import load_bindings
from indexsync.catalog import resolve
from indexsync.store import Store

_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_IDS_OF_CLAIMED = "SELECT coalesce(array_agg(doc_id), '{}') AS ids FROM claimed"
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


def _pg_params(text: str, names: dict[str, str]) -> str:
    """psycopg's `%(name)s` placeholders as pgbench variables, `%%` back to `%`."""
    for name, variable in names.items():
        text = text.replace(f"%({name})s", variable)
    if "%(" in text:
        raise RuntimeError(f"a placeholder is left in a floor statement: {text}")
    return text.replace("%%", "%")


def _one_line(text: str) -> str:
    # pgbench reads one SQL command up to its ';', across lines; comments would be sent too.
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return " ".join(" ".join(lines).split()).rstrip(";")


def _rendered(ws: Workspace) -> dict[str, str]:
    """The worker's statements for this workspace's binding, as SQL text."""
    config = ws.root / "indexsync.toml"
    with ws.connect() as conn, Store(conn) as store:
        binding = resolve(store, load_bindings(config), config)[ws.alias]
        fetch = documents.fetch_by_ids_query(binding).as_string(conn)
        scan = documents.scan_query(binding, resume=True).as_string(conn)
    return {
        "claim": _one_line(queries.get("claim").decode()),
        "batch_context": _one_line(queries.get("batch_context").decode()),
        "fetch": _one_line(fetch),
        "scan": _one_line(scan),
    }


def sync_script(ws: Workspace) -> str:
    """One worker batch, on the database's side, as a pgbench script."""
    found = _rendered(ws)
    claim = _pg_params(found["claim"], {"limit": ":batch", "active": ":active"})
    fetch = _pg_params(found["fetch"], {"ids": ":ids"})
    lines = [
        "BEGIN;",
        # The benchmark's own statements into a script file: nothing here comes from input.
        " ".join(["WITH claimed AS (", claim, ")", _IDS_OF_CLAIMED]),
        "\\gset",
        f"{found['batch_context']};",
        "SAVEPOINT reread;",
        f"{fetch};",
        "RELEASE SAVEPOINT reread;",
        "COMMIT;",
    ]
    return "\n".join(lines) + "\n"


def scan_script(ws: Workspace) -> str:
    """One keyset page of a rebuild as a pgbench script; the page's last id is kept for the
    next (`\\aset` keeps the last row's values)."""
    found = _rendered(ws)
    scan = _pg_params(found["scan"], {"after": ":doc_id", "limit": ":page"})
    return f"{scan}\n\\aset\n"


def _run(ws: Workspace, script: str, args: list[str], name: str) -> dict[str, Any]:
    path = ws.root / f"{name}.pgbench"
    path.write_text(script, encoding="utf-8")
    command = [
        str(ws.servers.pgbench),
        "--no-vacuum",
        "--protocol=prepared",
        *args,
        f"--file={path}",
        ws.database_url,
    ]
    with measured(ws.servers.postmaster) as cpu:
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"pgbench ({name}) exited {result.returncode}:\n{result.stderr[-2000:]}")
    failed = _FAILED.search(result.stdout)
    if failed is not None and int(failed.group(1)):
        raise RuntimeError(f"pgbench ({name}): {failed.group(1)} transactions failed")
    processed = _PROCESSED.search(result.stdout)
    return {
        "seconds": seconds,
        "transactions": int(processed.group(1)) if processed else None,
        "pgbench_cpu_s": cpu.children_s,
        "db_cpu_s": cpu.server_s,
        "script": str(path),
    }


def measure_sync_floor(ws: Workspace, changes: int, batch: int, sessions: int) -> dict[str, Any]:
    """Drain the outbox's `changes` with the worker's batch statements; rows per second."""
    per_session = math.ceil(changes / batch / sessions)
    found = _run(
        ws,
        sync_script(ws),
        [
            f"--client={sessions}",
            f"--jobs={min(2, sessions)}",
            f"--transactions={per_session}",
            f"--define=batch={batch}",
            # The worker claims the changes of the indexes it syncs: this one.
            f"--define=active={{{ws.alias}}}",
        ],
        "sync_floor",
    )
    left = ws.outbox_count()
    drained = changes - left
    found.update(
        changes=drained,
        left_in_outbox=left,
        sessions=sessions,
        batch_size=batch,
        docs_per_s=drained / found["seconds"],
    )
    return found


def measure_scan_floor(ws: Workspace, rows: int, page: int) -> dict[str, Any]:
    """Page through the table as a rebuild does, in one session; rows per second."""
    pages = math.ceil(rows / page)
    found = _run(
        ws,
        scan_script(ws),
        [
            "--client=1",
            f"--transactions={pages}",
            f"--define=page={page}",
            # Below every id of the bench table, whose ids start at 1.
            "--define=doc_id=0",
        ],
        "scan_floor",
    )
    found.update(rows=rows, pages=pages, page_size=page, rows_per_s=rows / found["seconds"])
    return found


def script_text(path: str) -> str:
    """A floor's pgbench script, for the results' details."""
    return Path(path).read_text(encoding="utf-8")
