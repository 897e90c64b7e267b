"""Where the capture trigger's cost goes: `python -m bench.capture` (or `make bench-capture`).

The same pgbench single-row UPDATE as `make bench`'s write_tps_ratio, against identical
tables that differ only in their trigger, from no trigger at all up to indexsync's own
capture. Every variant runs in the same rounds, alternating, so the ratios compare like
with like. The `floor` variant is the least any trigger-based outbox can do: one row, one
column, no index, no sequence. It shows what is left to win, and what is physics.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, LiteralString

from psycopg import sql

from bench.config import BenchConfig
from bench.console import say
from bench.procs import ProcessGroup
from bench.servers import started
from bench.workload import Workspace
from bench.writes import _SCRIPT, Pgbench

RESULTS_PATH = Path(__file__).resolve().parent / "capture-results.json"

# Extra variants beside `none` (no trigger) and `indexsync` (the bound table).
_VARIANTS: dict[str, LiteralString] = {
    "empty_trigger": """
        CREATE FUNCTION capture_empty() RETURNS trigger LANGUAGE plpgsql
            AS $$BEGIN RETURN NULL; END$$;
        CREATE TRIGGER capture_empty AFTER INSERT OR UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION capture_empty();
    """,
    "floor": """
        CREATE TABLE floor_log (doc_id text);
        CREATE FUNCTION capture_floor() RETURNS trigger LANGUAGE plpgsql
            AS $$BEGIN INSERT INTO floor_log VALUES (NEW.id::text); RETURN NULL; END$$;
        CREATE TRIGGER capture_floor AFTER INSERT OR UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION capture_floor();
    """,
    "floor_indexed": """
        CREATE TABLE floor_indexed_log (seq bigserial PRIMARY KEY, doc_id text);
        CREATE FUNCTION capture_floor_indexed() RETURNS trigger LANGUAGE plpgsql
            AS $$BEGIN
                INSERT INTO floor_indexed_log (doc_id) VALUES (NEW.id::text); RETURN NULL;
            END$$;
        CREATE TRIGGER capture_floor_indexed AFTER INSERT OR UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION capture_floor_indexed();
    """,
}
_LOGS = ("indexsync.outbox", "floor_log", "floor_indexed_log")
_ROUNDS = 5


def _measure(ws: Workspace, cfg: BenchConfig) -> dict[str, Any]:
    ws.install(notify=False)
    tables = {"none": "capture_none", "indexsync": ws.table}
    for name, ddl in _VARIANTS.items():
        table = f"capture_{name}"
        ws.create_table(table)
        ws.sql(sql.SQL(ddl).format(table=sql.Identifier(table)))
        tables[name] = table
    ws.create_table(tables["none"])
    scripts = {}
    for name, table in tables.items():
        ws.insert_range(1, cfg.tps_rows, table=table)
        ws.sql(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
        path = ws.root / f"update_{table}.sql"
        path.write_text(_SCRIPT.format(table=table), encoding="ascii")
        scripts[name] = path
    ws.sql("TRUNCATE indexsync.outbox, floor_log, floor_indexed_log")
    durable = Pgbench(
        ws.servers.pgbench, ws.database_url, cfg.tps_rows, cfg.tps_clients, cfg.tps_round_s
    )
    modes = {"durable": durable, "async_commit": durable.with_session(synchronous_commit="off")}
    found: dict[str, Any] = {}
    for mode, bench in modes.items():
        tps: dict[str, list[float]] = {name: [] for name in tables}
        for n in range(_ROUNDS):
            for name in tables:
                tps[name].append(bench.run(scripts[name]))
                ws.sql(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.SQL, _LOGS))))
            say(
                f"  {mode} round {n + 1}/{_ROUNDS}: "
                + ", ".join(f"{name} {values[-1]:,.0f}" for name, values in tps.items())
            )
        base = statistics.median(tps["none"])
        found[mode] = {
            name: {
                "tps": round(statistics.median(values)),
                "ratio": round(statistics.median(values) / base, 3),
                "rounds": [round(v) for v in values],
            }
            for name, values in tps.items()
        }
    return found


def main() -> int:
    """Measure every variant in both commit modes; print a table, write capture-results.json."""
    cfg = BenchConfig.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="indexsync-capture-"))
    try:
        with ProcessGroup() as procs, started(procs, workdir) as servers:
            ws = Workspace.create("capture", servers, procs, workdir)
            found = _measure(ws, cfg)
            settings = servers.pg_settings
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "method": __doc__,
        "pgbench": " ".join(
            Pgbench(Path("pgbench"), "URL", cfg.tps_rows, cfg.tps_clients, cfg.tps_round_s).command(
                Path("SCRIPT.sql")
            )
        ),
        "script": _SCRIPT.format(table="<table>"),
        "rounds": _ROUNDS,
        "postgresql_settings": settings,
        "results": found,
    }
    RESULTS_PATH.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{'variant':<15} {'durable tps':>12} {'ratio':>6} {'async tps':>10} {'ratio':>6}")
    for name in found["durable"]:
        d, a = found["durable"][name], found["async_commit"][name]
        print(f"{name:<15} {d['tps']:>12,} {d['ratio']:>6.3f} {a['tps']:>10,} {a['ratio']:>6.3f}")
    print(f"wrote {RESULTS_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
