"""Sizes and durations of every figure, shrunk together by BENCH_SCALE."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

SCALE_ENV = "BENCH_SCALE"
ONLY_ENV = "BENCH_ONLY"
# The parts of `make bench`, in the order they run.
PARTS = (
    "sync",
    "ceiling",
    "reindex",
    "install_wait",
    "writes",
    "fanout",
    "latency",
    "waits",
    "recipe",
)


class BenchConfigError(ValueError):
    """BENCH_SCALE (or another knob) has a value the benchmark cannot use."""


def _scaled(full: float, scale: float, minimum: float) -> float:
    # A floor keeps tiny scales meaningful: a percentile over ten samples says nothing.
    return max(minimum, full * scale)


@dataclass(frozen=True)
class BenchConfig:
    """Every size the benchmark uses; the defaults are the full-scale run."""

    scale: float = 1.0
    # The parts to run (BENCH_ONLY=ceiling,reindex); all of them by default.
    only: tuple[str, ...] = PARTS
    # Backlog drained by one worker, and the documents of the bulk ceiling.
    sync_rows: int = 200_000
    # Rounds of the null-sink drain and rebuild, each alternated with pgbench's floor.
    ceiling_rounds: int = 3
    # A full rebuild of this many rows.
    reindex_rows: int = 1_000_000
    # A lookup row used by this many documents, renamed this many times.
    fanout_docs: int = 100_000
    fanout_rounds: int = 200
    # pgbench: table size, clients, alternating rounds per mode, seconds per round.
    tps_rows: int = 100_000
    tps_clients: int = 8
    tps_rounds: int = 4
    tps_round_s: float = 4.0
    # Latency: a steady write rate for a duration, the first seconds discarded.
    latency_rate: float = 500.0
    latency_s: float = 20.0
    latency_warmup_s: float = 1.0
    # Blog recipe: rows of the burst, and the restart scenario's load. The restart load
    # (250 rows/s) stays below what the recipe sustains here, so that what it loses is
    # the restart's doing, not a backlog it could never have caught up with.
    recipe_rows: int = 10_000
    restart_rows: int = 3_000
    restart_load_s: float = 12.0
    restart_down_s: float = 1.0
    # `indexsync install` on a table this big while a client updates single rows.
    install_wait_rows: int = 50_000
    # Rows per transaction when loading: many small commits, like an application.
    load_tx_rows: int = 10

    @classmethod
    def from_env(cls) -> BenchConfig:
        """The configuration for BENCH_SCALE (default 1.0)."""
        raw = os.environ.get(SCALE_ENV, "1")
        try:
            scale = float(raw)
        except ValueError:
            raise BenchConfigError(f"{SCALE_ENV}={raw!r} is not a number") from None
        if not 0 < scale <= 10:
            raise BenchConfigError(f"{SCALE_ENV}={raw!r} must be in (0, 10]")
        only = tuple(p.strip() for p in os.environ.get(ONLY_ENV, "").split(",") if p.strip())
        unknown = sorted(set(only) - set(PARTS))
        if unknown:
            raise BenchConfigError(
                f"{ONLY_ENV}: unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}"
            )
        full = cls()
        return cls(
            scale=scale,
            only=only or PARTS,
            sync_rows=int(_scaled(full.sync_rows, scale, 2_000)),
            reindex_rows=int(_scaled(full.reindex_rows, scale, 5_000)),
            install_wait_rows=int(_scaled(full.install_wait_rows, scale, 20_000)),
            fanout_docs=int(_scaled(full.fanout_docs, scale, 5_000)),
            tps_rows=int(_scaled(full.tps_rows, scale, 1_000)),
            tps_round_s=round(_scaled(full.tps_round_s, scale, 1.0), 2),
            latency_s=round(_scaled(full.latency_s, scale, 3.0), 2),
            recipe_rows=int(_scaled(full.recipe_rows, scale, 500)),
            restart_rows=int(_scaled(full.restart_rows, scale, 500)),
            restart_load_s=round(_scaled(full.restart_load_s, scale, 3.0), 2),
        )

    def runs(self, part: str) -> bool:
        """Whether this run measures `part`."""
        return part in self.only

    def as_json(self) -> dict[str, Any]:
        """The configuration as recorded in results.json."""
        return asdict(self)
