"""Child processes: every one is tracked so that all of them stop on exit or failure."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import psutil  # type: ignore[import-untyped]

_STOP_TIMEOUT_S = 30.0
_RSS_SAMPLE_S = 0.1


class ProcessGroup:
    """The children the benchmark started; ``close`` ends whichever are still running."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def spawn(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        text: bool = True,
        new_session: bool = False,
    ) -> subprocess.Popen[Any]:
        """Start a child process and remember it (in a session of its own if asked, so that
        a signal can reach every process it starts)."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            list(args),
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=text,
            start_new_session=new_session,
        )
        self._procs.append(proc)
        return proc

    def stop(
        self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30.0
    ) -> int:
        """Send `sig`, wait for the exit, and kill the process if it does not come."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def close(self) -> None:
        """Stop every child still running, politely first."""
        for proc in reversed(self._procs):
            self.stop(proc, timeout=_STOP_TIMEOUT_S)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._procs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _peak_rss_bytes(pid: int) -> int | None:
    """The process's high-water mark of resident memory (VmHWM), or its current RSS."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    # Outside Linux there is no high-water mark; frequent samples of RSS approximate it.
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


class PeakMemory:
    """Samples a process's peak RSS until it exits (VmHWM vanishes with the process)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            value = _peak_rss_bytes(self.pid)
            if value is None:
                return
            self.peak_bytes = max(self.peak_bytes, value)
            self._stop.wait(_RSS_SAMPLE_S)

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        """Peak resident memory in MiB."""
        return self.peak_bytes / (1024 * 1024)


class Worker:
    """One `python -m indexsync run` subprocess with its JSON log file and peak memory."""

    def __init__(
        self,
        procs: ProcessGroup,
        python: str,
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        *,
        until_idle: bool = False,
    ) -> None:
        """Start the worker."""
        self.log_path = log_path
        self._procs = procs
        self._log = log_path.open("a", encoding="utf-8")
        # Several workers may share one log file; each reads only what it appended.
        self._log_offset = self._log.tell()
        args = [python, "-m", "indexsync", "run"]
        if until_idle:
            args.append("--until-idle")
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.proc = procs.spawn(args, env=env, cwd=cwd, stdout=self._log, stderr=self._log)
        self.memory = PeakMemory(self.proc.pid)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the worker logged `worker.started`; fail if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("event") == "worker.started" for e in self.events()):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"indexsync worker exited with {self.proc.returncode} before starting; "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        raise RuntimeError(f"indexsync worker did not start within {timeout}s; see {self.log_path}")

    def wait(self, timeout: float) -> int:
        """Wait for the worker to exit by itself; returns its exit code."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._finish()

    def stop(self) -> int:
        """SIGTERM: the worker finishes its batch and exits."""
        try:
            return self._procs.stop(self.proc, signal.SIGTERM)
        finally:
            self._finish()

    def kill(self) -> None:
        """SIGKILL: a crash in the middle of whatever the worker was doing."""
        self._procs.stop(self.proc, signal.SIGKILL)
        self._finish()

    def _finish(self) -> None:
        if self.proc.poll() is not None:
            self.memory.close()
            with contextlib.suppress(OSError):
                self._log.close()

    def events(self) -> list[dict[str, Any]]:
        """The JSON log events this worker wrote (other lines are skipped)."""
        events = []
        with self.log_path.open(encoding="utf-8", errors="replace") as f:
            f.seek(self._log_offset)
            for line in f:
                if line.startswith("{"):
                    with contextlib.suppress(json.JSONDecodeError):
                        events.append(json.loads(line))
        return events

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the log, for error messages."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


def run_checked(
    command: Sequence[str], *, env: dict[str, str], cwd: Path, what: str, timeout: float = 300
) -> str:
    """Run a command to its end; its stdout, or RuntimeError naming `what` with its output."""
    result = subprocess.run(
        list(command), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result.stdout


def python_executable() -> str:
    """The interpreter that runs the benchmark, which has indexsync installed."""
    return sys.executable


def bench_module(module: str) -> tuple[list[str], dict[str, str]]:
    """Command and environment that run one of our modules from any working directory."""
    # The bench package is not installed; the repository root must be on the path.
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return [python_executable(), "-m", module], env
