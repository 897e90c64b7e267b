"""Where the no-op test of a whole-row capture belongs: `python -m bench.capture_when`.

indexsync's row capture returns early when an UPDATE left the row as it was (`OLD *= NEW`).
The test could sit in the trigger's WHEN clause instead, evaluated before the function is
called. pgbench's single-row UPDATE (8 clients, a real change every time) runs in
alternating rounds on identical tables that differ only in that:
- `none`: no trigger;
- `in_function`: indexsync's installed trigger, the test in the function;
- `in_when`: the same function without the test, behind `WHEN (NOT (OLD *= NEW))`;
- `no_test`: the same function without the test, no WHEN clause.
Prints the median TPS of each and its ratio to `none` (BENCH_SCALE and BENCH_CAPTURE_ROUNDS
apply).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from pathlib import Path

from psycopg import sql

from bench.config import BenchConfig
from bench.console import say
from bench.procs import ProcessGroup
from bench.servers import started
from bench.workload import Workspace
from bench.writes import _SCRIPT, Pgbench

_TEST = (
    "\n        IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' AND OLD OPERATOR(pg_catalog.*=) NEW THEN"
    "\n            RETURN NULL;\n        END IF;"
)
_TRIGGERS = {
    "in_when": (
        "CREATE TRIGGER t1 AFTER INSERT OR DELETE ON {table} FOR EACH ROW "
        "EXECUTE FUNCTION indexsync.capture_untested(); "
        "CREATE TRIGGER t2 AFTER UPDATE ON {table} FOR EACH ROW "
        "WHEN (NOT (OLD OPERATOR(pg_catalog.*=) NEW)) "
        "EXECUTE FUNCTION indexsync.capture_untested()"
    ),
    "no_test": (
        "CREATE TRIGGER t1 AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW "
        "EXECUTE FUNCTION indexsync.capture_untested()"
    ),
}


def main() -> int:
    """Run the rounds and print the medians."""
    cfg = BenchConfig.from_env()
    rounds = int(os.environ.get("BENCH_CAPTURE_ROUNDS", "6"))
    workdir = Path(tempfile.mkdtemp(prefix="indexsync-capture-when-"))
    try:
        with ProcessGroup() as procs, started(procs, workdir) as servers:
            ws = Workspace.create("capture_when", servers, procs, workdir)
            ws.install(notify=False)
            ((body,),) = ws.sql(
                "SELECT prosrc FROM pg_proc WHERE pronamespace = 'indexsync'::regnamespace "
                "AND proname LIKE 'capture%'"
            )
            if _TEST not in body:
                raise RuntimeError("the installed capture function has no whole-row test")
            ws.sql(
                sql.SQL(
                    "CREATE FUNCTION indexsync.capture_untested() RETURNS trigger "
                    "LANGUAGE plpgsql SECURITY DEFINER AS {}"
                ).format(sql.Literal(body.replace(_TEST, "")))
            )
            tables = {"none": "t_none", "in_function": ws.table, "in_when": "t_when"}
            tables["no_test"] = "t_no_test"
            for name, table in tables.items():
                if table != ws.table:
                    ws.create_table(table)
                if name in _TRIGGERS:
                    ws.sql(sql.SQL(_TRIGGERS[name]).format(table=sql.Identifier(table)))
                ws.insert_range(1, cfg.tps_rows, table=table)
                ws.sql(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
            bench = Pgbench(
                servers.pgbench, ws.database_url, cfg.tps_rows, cfg.tps_clients, cfg.tps_round_s
            )
            tps: dict[str, list[float]] = {name: [] for name in tables}
            names = list(tables)
            for n in range(rounds):
                for name in names[n % len(names) :] + names[: n % len(names)]:
                    script = workdir / f"{name}.sql"
                    script.write_text(_SCRIPT.format(table=tables[name]), encoding="ascii")
                    tps[name].append(bench.run(script))
                    ws.sql("TRUNCATE indexsync.outbox")
                say(
                    f"round {n + 1}/{rounds}: "
                    + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in tps.items())
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = statistics.median(tps["none"])
    for name, values in tps.items():
        median = statistics.median(values)
        print(f"{name:<12} {median:>9,.0f} tps  {median / base:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
