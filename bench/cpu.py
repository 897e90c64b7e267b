"""CPU seconds from /proc: a child process's, and a whole PostgreSQL server's."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def server_cpu_s(postmaster: int) -> float | None:
    """CPU seconds used so far by a PostgreSQL server: the postmaster, its live children
    (backends, autovacuum, WAL writer) and every child it has already reaped."""
    fields = _stat_fields(postmaster)
    if fields is None:
        return None
    # Fields 14-17 of stat (utime, stime, cutime, cstime), counted after pid and comm.
    total = sum(int(v) for v in fields[11:15])
    for child in _children(postmaster):
        child_fields = _stat_fields(child)
        if child_fields is not None:
            total += int(child_fields[11]) + int(child_fields[12])
    return total / _TICKS


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds a live process has used so far (None once it is gone)."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICKS


def postmaster_pid(data_dir: Path) -> int | None:
    """The server's pid from its data directory's postmaster.pid, if it runs here."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data_dir / "postmaster.pid").read_text(encoding="ascii").split()[0])
    return None


@dataclass
class CpuWindow:
    """CPU seconds spent inside a `with` block, by reaped children and by the server."""

    children_s: float = 0.0
    server_s: float | None = None


@contextlib.contextmanager
def measured(postmaster: int | None) -> Iterator[CpuWindow]:
    """Measure the CPU of the children reaped in the block and of the PostgreSQL server.

    Children count once they have been waited for, so the block must wait for the process
    it measures (a worker run to its exit, pgbench) and for no other.
    """
    window = CpuWindow()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = server_cpu_s(postmaster) if postmaster else None
    yield window
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_after = server_cpu_s(postmaster) if postmaster else None
    window.children_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if server_before is not None and server_after is not None:
        window.server_s = server_after - server_before
