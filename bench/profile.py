"""Where a worker's CPU goes while it drains a backlog: `python -m bench.profile`.

The same backlog as `make bench`'s sync figure (BENCH_SCALE applies), drained into the
null sink (bench/null_sink.py, so that only the worker's own work shows) by one
`indexsync run --until-idle` that runs under py-spy, sampling every thread 200 times a
second without pausing it. Only the thread holding the GIL is sampled (`--gil`): psycopg's
C waits look busy to py-spy's idle detection, so without it a lane waiting for PostgreSQL
counts as work. The samples add up to the worker's Python time: set against the wall time
of the drain, they say how far the worker itself is from being the bottleneck. The collapsed
stacks are kept in bench/profile.txt (any flame graph tool reads them); the summary lists
the frames with the most samples, on their own and with what they call.
"""

from __future__ import annotations

import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.config import BenchConfig
from bench.console import say
from bench.procs import ProcessGroup, python_executable
from bench.servers import null_sink, started
from bench.throughput import prepare_backlog
from bench.workload import Workspace

STACKS_PATH = Path(__file__).resolve().parent / "profile.txt"
_RATE_HZ = 200
_TOP = 15
_TIMEOUT_S = 900.0


def _py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(python_executable()).parent))
    if found is None:
        raise SystemExit("bench.profile: py-spy is missing; `make profile` installs it")
    return found


def _summary(stacks: Path, wall_s: float, docs: int) -> str:
    """The sampled active time against the wall time, and the busiest frames."""
    own: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            under[frame] += n
    active_s = total / _RATE_HZ
    lines = [
        f"{docs:,} changes drained in {wall_s:.1f} s ({docs / wall_s:,.0f} docs/s); "
        f"the worker held the GIL for {active_s:.1f} s of it ({active_s / wall_s:.0%} of one core)",
        "",
        f"frames with the most samples of their own (of {total:,}):",
    ]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(_TOP)]
    lines += ["", "indexsync's frames, with what they call:"]
    ours = [(f, n) for f, n in under.most_common() if "indexsync/" in f]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in ours[:_TOP]]
    return "\n".join(lines)


def main() -> int:
    """Profile one worker draining the sync backlog; print the summary."""
    cfg = BenchConfig.from_env()
    spy = _py_spy()
    workdir = Path(tempfile.mkdtemp(prefix="indexsync-profile-"))
    try:
        with ProcessGroup() as procs, started(procs, workdir) as servers:
            ws = Workspace.create("profile", servers, procs, workdir)
            prepare_backlog(ws, cfg.sync_rows)
            log = (ws.root / "worker.log").open("w", encoding="utf-8")
            command = [
                spy,
                "record",
                f"--rate={_RATE_HZ}",
                "--threads",
                "--nonblocking",
                "--gil",
                "--format=raw",
                f"--output={STACKS_PATH}",
                "--",
                python_executable(),
                "-m",
                "indexsync",
                "run",
                "--until-idle",
            ]
            with null_sink(procs, workdir, servers.search_url) as sink:
                begun = time.monotonic()
                env = ws.env(elasticsearch_url=sink.url)
                proc = procs.spawn(command, env=env, cwd=ws.root, stdout=log, stderr=log)
                code = proc.wait(_TIMEOUT_S)
                wall_s = time.monotonic() - begun
            log.close()
            if code != 0:
                tail = (ws.root / "worker.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"py-spy or the worker exited {code}:\n{tail}")
            left = ws.outbox_count()
            if left:
                raise RuntimeError(f"the worker exited with {left} changes left in the outbox")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(_summary(STACKS_PATH, wall_s, cfg.sync_rows))
    say(f"wrote {STACKS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
