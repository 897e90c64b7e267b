"""Where the capture trigger's cost goes: `python -m bench.capture` (or `make bench-capture`).

The same pgbench single-row UPDATE as `make bench`'s write_tps_ratio, against identical
tables that differ only in their trigger, from no trigger at all up to indexsync's own
capture, in both of its modes (`INDEXSYNC_CAPTURE=row`, the default, and `statement`).
Every variant runs in the same rounds, alternating, so the ratios compare like with like.
The `floor` variant is the least any trigger-based outbox can do: one row, one column, no
index, no sequence. It shows what is left to win, and what is physics. Two other trigger
shapes run indexsync's work too: its body from a BEFORE trigger, and `split_when`, per-event
functions that branch on nothing because the trigger's WHEN clause picks the event. A second
part times batch jobs: one UPDATE of every row, and one INSERT of as many.

A third part (`python -m bench.capture skip` runs it alone) prices capturing only what the
index can see: a counter no document reads, and then a column the documents do read, are
updated on a table whose binding lists its columns (the trigger skips the first kind), on
one bound through a `query` without `root_columns` (every UPDATE recorded, as before the
skip existed), and on one without any trigger.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, LiteralString

from psycopg import sql

from bench.config import BenchConfig
from bench.console import say
from bench.procs import ProcessGroup
from bench.servers import started
from bench.workload import INSERT_RANGE, Workspace
from bench.writes import _SCRIPT, FLOOR_INDEXED_LOG, FLOOR_INDEXED_TRIGGER, Pgbench

RESULTS_PATH = Path(__file__).resolve().parent / "capture-results.json"
SKIP_RESULTS_PATH = Path(__file__).resolve().parent / "capture-skip-results.json"

# The same outbox rows as indexsync's row capture, from per-event functions that branch on
# nothing: the trigger's WHEN clause (evaluated in C) picks the event and skips NULL keys.
_SPLIT_INSERT: LiteralString = (
    "INSERT INTO indexsync.outbox (index_name, doc_id) VALUES ('split', {rec}.id::text); "
    "RETURN NULL;"
)
_SPLIT_WHEN: LiteralString = (
    """
    CREATE FUNCTION capture_split_new() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        AS $$BEGIN """
    + _SPLIT_INSERT.format(rec="NEW")
    + """ END$$;
    CREATE FUNCTION capture_split_old() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        AS $$BEGIN """
    + _SPLIT_INSERT.format(rec="OLD")
    + """ END$$;
    CREATE TRIGGER capture_split_new AFTER INSERT OR UPDATE ON {table}
        FOR EACH ROW WHEN (NEW.id IS NOT NULL) EXECUTE FUNCTION capture_split_new();
    CREATE TRIGGER capture_split_old AFTER DELETE ON {table}
        FOR EACH ROW WHEN (OLD.id IS NOT NULL) EXECUTE FUNCTION capture_split_old();
    CREATE TRIGGER capture_split_moved AFTER UPDATE ON {table}
        FOR EACH ROW WHEN (OLD.id IS NOT NULL AND OLD.id::text IS DISTINCT FROM NEW.id::text)
        EXECUTE FUNCTION capture_split_old();
"""
)
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
    "floor_indexed": FLOOR_INDEXED_TRIGGER,
    "split_when": _SPLIT_WHEN,
}
_LOGS = ("indexsync.outbox", "floor_log", FLOOR_INDEXED_LOG)
# name: (function options, trigger timing)
_BODY_VARIANTS: dict[str, tuple[LiteralString, LiteralString]] = {
    "indexsync_invoker": ("", "AFTER"),
    "indexsync_set_search_path": (
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp",
        "AFTER",
    ),
    # A BEFORE trigger skips the after-trigger queue; it must hand the row back.
    "indexsync_before": ("SECURITY DEFINER", "BEFORE"),
}
_BEFORE_RETURN = "IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN RETURN OLD; END IF; RETURN NEW;"
_ROUNDS = 5
_BULK_ROUNDS = 3


def _measure(ws: Workspace, per_statement: Workspace, cfg: BenchConfig) -> dict[str, Any]:
    ws.install(notify=False)
    # indexsync's statement-level capture needs its own database: the mode is per install.
    per_statement.cli("install", "--no-backfill", notify="false", capture="statement")
    tables = {"none": "capture_none", "indexsync": ws.table}
    for name, ddl in _VARIANTS.items():
        table = f"capture_{name}"
        ws.create_table(table)
        ws.sql(sql.SQL(ddl).format(table=sql.Identifier(table)))
        tables[name] = table
    ws.create_table(tables["none"])
    # indexsync's own row capture body, called three other ways: without SECURITY DEFINER,
    # with the `SET search_path` clause it used before its names were qualified, and from
    # a BEFORE trigger.
    (body,) = ws.sql(
        "SELECT prosrc FROM pg_proc WHERE pronamespace = 'indexsync'::regnamespace "
        "AND proname LIKE 'capture%'"
    )[0]
    for name, (options, timing) in _BODY_VARIANTS.items():
        table = f"capture_{name}"
        ws.create_table(table)
        ws.sql(
            sql.SQL(
                "CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql {options} AS {body}; "
                "CREATE TRIGGER {fn} {timing} INSERT OR UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION {fn}()"
            ).format(
                fn=sql.Identifier(table),
                options=sql.SQL(options),
                timing=sql.SQL(timing),
                body=sql.Literal(
                    body.replace("RETURN NULL;", _BEFORE_RETURN) if timing == "BEFORE" else body
                ),
                table=sql.Identifier(table),
            )
        )
        tables[name] = table
    spaces = {name: ws for name in tables}
    tables["indexsync_statement"] = per_statement.table
    spaces["indexsync_statement"] = per_statement
    scripts = {}
    for name, table in tables.items():
        spaces[name].insert_range(1, cfg.tps_rows, table=table)
        spaces[name].sql(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
        path = ws.root / f"update_{name}.sql"
        path.write_text(_SCRIPT.format(table=table), encoding="ascii")
        scripts[name] = path
    _empty_logs(ws, per_statement)
    found: dict[str, Any] = {}
    for mode in ("durable", "async_commit"):
        benches = {}
        for name in tables:
            bench = Pgbench(
                ws.servers.pgbench,
                spaces[name].database_url,
                cfg.tps_rows,
                cfg.tps_clients,
                cfg.tps_round_s,
            )
            benches[name] = (
                bench if mode == "durable" else bench.with_session(synchronous_commit="off")
            )
        tps: dict[str, list[float]] = {name: [] for name in tables}
        for n in range(_ROUNDS):
            for name in tables:
                tps[name].append(benches[name].run(scripts[name]))
                _empty_logs(ws, per_statement)
            say(
                f"  {mode} round {n + 1}/{_ROUNDS}: "
                + ", ".join(f"{name} {values[-1]:,.0f}" for name, values in tps.items())
            )
        found[mode] = _medians(tps, "none")
    found["bulk_statements"] = _bulk(spaces, tables, cfg.tps_rows)
    return found


def _medians(tps: dict[str, list[float]], base_name: str) -> dict[str, dict[str, Any]]:
    """Each variant's median TPS, its ratio to `base_name`'s, and its rounds."""
    base = statistics.median(tps[base_name])
    return {
        name: {
            "tps": round(statistics.median(values)),
            "ratio": round(statistics.median(values) / base, 3),
            "rounds": [round(v) for v in values],
        }
        for name, values in tps.items()
    }


def _empty_logs(ws: Workspace, per_statement: Workspace) -> None:
    ws.sql(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.SQL, _LOGS))))
    per_statement.sql("TRUNCATE indexsync.outbox")


def _timed(ws: Workspace, statement: sql.Composed, params: dict[str, Any] | None = None) -> float:
    """Seconds one statement takes, its commit included."""
    with ws.connect() as conn:
        started = time.monotonic()
        conn.execute(statement, params)
        conn.commit()
        return time.monotonic() - started


def _bulk(spaces: dict[str, Workspace], tables: dict[str, str], rows: int) -> dict[str, Any]:
    """Batch jobs: one statement that updates every row, and one that inserts as many."""
    seconds: dict[str, dict[str, list[float]]] = {
        name: {"update": [], "insert": []} for name in tables
    }
    names = list(tables)
    for n in range(_BULK_ROUNDS):
        # Each round starts with another variant: no variant always follows the same one.
        for name in names[n % len(names) :] + names[: n % len(names)]:
            table, ws = tables[name], spaces[name]
            ident = sql.Identifier(table)
            update = sql.SQL("UPDATE {} SET n = n + 1").format(ident)
            seconds[name]["update"].append(_timed(ws, update))
            insert = sql.SQL(INSERT_RANGE).format(table=ident)
            params = {"first": rows + 1, "last": 2 * rows}
            seconds[name]["insert"].append(_timed(ws, insert, params))
            ws.sql(sql.SQL("DELETE FROM {} WHERE id > %(rows)s").format(ident), {"rows": rows})
            _empty_logs(spaces["none"], spaces["indexsync_statement"])
            ws.sql(sql.SQL("VACUUM {}").format(ident))
        say(f"  bulk round {n + 1}/{_BULK_ROUNDS}")
    result: dict[str, Any] = {"rows_per_statement": rows}
    for kind in ("update", "insert"):
        base = statistics.median(seconds["none"][kind])
        result[kind] = {
            name: {
                "seconds": round(statistics.median(values[kind]), 3),
                "slowdown": round(statistics.median(values[kind]) / base, 2),
            }
            for name, values in seconds.items()
        }
    return result


# Bound tables of the skip part: (binding, what an UPDATE of an unread column costs it).
_SKIP_COLUMNS = ["id", "title", "body", "author", "tags"]
_SKIP_TABLES = {
    "skip_none": None,
    "skip_columns": f"columns = {json.dumps(_SKIP_COLUMNS)}",
    "skip_query_every_update": (
        "query = \"SELECT t.id, jsonb_build_object('title', t.title, 'body', t.body) AS doc "
        'FROM {table} t"'
    ),
}
_SKIP_SCRIPTS = {
    # A counter no document reads: the columns binding skips it.
    "unread_column": _SCRIPT,
    # A column the documents read: both bindings record it; the skip's check is extra work.
    "read_column": (
        "\\set id random(1, :rows)\n"
        "UPDATE {table} SET title = 'Post ' || :id || ' ' || md5(random()::text) WHERE id = :id;\n"
    ),
}


def _measure_skip(ws: Workspace, cfg: BenchConfig) -> dict[str, Any]:
    """pgbench UPDATEs of an unread and of a read column, with and without the skip."""
    lines = []
    for table, spec in _SKIP_TABLES.items():
        ws.create_table(table)
        if spec is not None:
            alias = ws.servers.index_name(table)
            lines += [f"[indexes.{alias}]", f'table = "{table}"', spec.format(table=table), ""]
    (ws.root / "indexsync.toml").write_text("\n".join(lines), encoding="utf-8")
    ws.cli("install", "--no-backfill", notify="false")
    found: dict[str, Any] = {}
    for table in _SKIP_TABLES:
        ws.insert_range(1, cfg.tps_rows, table=table)
        ws.sql(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
    for script_name, script in _SKIP_SCRIPTS.items():
        tps: dict[str, list[float]] = {table: [] for table in _SKIP_TABLES}
        recorded: dict[str, list[int]] = {table: [] for table in _SKIP_TABLES}
        bench = Pgbench(
            ws.servers.pgbench, ws.database_url, cfg.tps_rows, cfg.tps_clients, cfg.tps_round_s
        )
        for n in range(_ROUNDS):
            for table in _SKIP_TABLES:
                path = ws.root / f"{script_name}_{table}.sql"
                path.write_text(script.format(table=table), encoding="ascii")
                ws.sql("TRUNCATE indexsync.outbox")
                tps[table].append(bench.run(path))
                recorded[table].append(int(ws.sql("SELECT count(*) FROM indexsync.outbox")[0][0]))
            say(
                f"  skip {script_name} round {n + 1}/{_ROUNDS}: "
                + ", ".join(f"{t} {v[-1]:,.0f}" for t, v in tps.items())
            )
        found[script_name] = _medians(tps, "skip_none")
        for table, values in tps.items():
            # pgbench runs whole seconds; its TPS times them is the UPDATEs it ran.
            found[script_name][table]["outbox_rows_per_update"] = round(
                statistics.median(
                    rows / (v * max(1, round(cfg.tps_round_s)))
                    for rows, v in zip(recorded[table], values, strict=True)
                ),
                3,
            )
    found["script"] = {name: s.format(table="<table>") for name, s in _SKIP_SCRIPTS.items()}
    found["bindings"] = {t: spec for t, spec in _SKIP_TABLES.items()}
    return found


def _print_skip(found: dict[str, Any]) -> None:
    print(f"{'update of':<16} {'table':<26} {'tps':>8} {'ratio':>6} {'outbox rows/update':>19}")
    for script_name in _SKIP_SCRIPTS:
        for table, row in found[script_name].items():
            print(
                f"{script_name:<16} {table:<26} {row['tps']:>8,} {row['ratio']:>6.3f}"
                f" {row['outbox_rows_per_update']:>19.2f}"
            )


def main() -> int:
    """Measure every variant in both commit modes; print a table, write capture-results.json."""
    cfg = BenchConfig.from_env()
    only_skip = sys.argv[1:] == ["skip"]
    workdir = Path(tempfile.mkdtemp(prefix="indexsync-capture-"))
    try:
        with ProcessGroup() as procs, started(procs, workdir) as servers:
            skip_ws = Workspace.create("capture_skip", servers, procs, workdir)
            skip = _measure_skip(skip_ws, cfg)
            if only_skip:
                _print_skip(skip)
                SKIP_RESULTS_PATH.write_text(json.dumps(skip, indent=2) + "\n", encoding="utf-8")
                print(f"wrote {SKIP_RESULTS_PATH}", file=sys.stderr)
                return 0
            ws = Workspace.create("capture", servers, procs, workdir)
            per_statement = Workspace.create("capture_statement", servers, procs, workdir)
            found = _measure(ws, per_statement, cfg)
            found["skip_unseen_updates"] = skip
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
    bulk = found["bulk_statements"]
    print(
        f"{'variant':<26} {'durable tps':>11} {'ratio':>6} {'async tps':>10} {'ratio':>6}"
        f"   {'bulk UPDATE':>11} {'bulk INSERT':>11}"
    )
    for name in found["durable"]:
        d, a = found["durable"][name], found["async_commit"][name]
        up, ins = bulk["update"][name], bulk["insert"][name]
        print(
            f"{name:<26} {d['tps']:>11,} {d['ratio']:>6.3f} {a['tps']:>10,} {a['ratio']:>6.3f}"
            f"   {up['seconds']:>6.2f}s x{up['slowdown']:<4}"
            f" {ins['seconds']:>6.2f}s x{ins['slowdown']}"
        )
    print(f"bulk: one statement over {bulk['rows_per_statement']:,} rows, median of {_BULK_ROUNDS}")
    print()
    _print_skip(found["skip_unseen_updates"])
    print(f"wrote {RESULTS_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
