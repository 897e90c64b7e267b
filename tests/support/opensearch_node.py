"""A real OpenSearch node in its own JVM, started and stopped the way EmbeddedPostgres is.

Built only from Maven Central artifacts (see opensearch/pom.xml): the first start resolves
the classpath into Maven's local cache and compiles the small launcher; later starts reuse
both. Each node gets a temporary home, a port the node picked itself, and a bounded heap.
It runs in a process group of its own and stops when its standard input closes, so a test
run that ends, fails or is SIGKILLed leaves no JVM behind.

A test and benchmark tool, never part of the indexsync wheel. By hand:

    python -m tests.support.opensearch_node     # prints the URL; Ctrl-C stops it
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

HERE = Path(__file__).resolve().parent / "opensearch"
POM = HERE / "pom.xml"
LAUNCHER = HERE / "EngineNode.java"
DEFAULT_VERSION = "2.19.6"
DEFAULT_HEAP = "768m"
# Resolving and compiling take seconds with a warm Maven cache, and a minute or two cold.
START_TIMEOUT = 240.0

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EngineUnavailable(RuntimeError):
    """No real node can run here (no Java, no Maven, or the artifacts did not resolve)."""


def _tool(name: str) -> str:
    home = os.environ.get("JAVA_HOME")
    if name in ("java", "javac") and home and (Path(home) / "bin" / name).exists():
        return str(Path(home) / "bin" / name)
    found = shutil.which(name)
    if found is None:
        raise EngineUnavailable(f"{name} is not on PATH (a real OpenSearch node needs Java 17+)")
    return found


def _cache_dir(version: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    digest = hashlib.sha256(POM.read_bytes() + LAUNCHER.read_bytes()).hexdigest()[:12]
    return root / "indexsync" / f"opensearch-{version}-{digest}"


def prepare(version: str = DEFAULT_VERSION) -> tuple[Path, str]:
    """Resolve the node's classpath and compile its launcher, once; (classes, classpath)."""
    cache = _cache_dir(version)
    classpath_file = cache / "classpath.txt"
    classes = cache / "classes"
    if not (classes / "EngineNode.class").exists() or not classpath_file.exists():
        cache.mkdir(parents=True, exist_ok=True)
        resolved = subprocess.run(
            [
                _tool("mvn"),
                "-q",
                "-B",
                "-f",
                str(POM),
                f"-Dopensearch.version={version}",
                "dependency:build-classpath",
                f"-Dmdep.outputFile={classpath_file}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if resolved.returncode != 0:
            tail = (resolved.stdout + resolved.stderr).strip().splitlines()[-15:]
            raise EngineUnavailable(
                f"Maven could not resolve OpenSearch {version}:\n" + "\n".join(tail)
            )
        classes.mkdir(exist_ok=True)
        compiled = subprocess.run(
            [
                _tool("javac"),
                "-d",
                str(classes),
                "-cp",
                classpath_file.read_text().strip(),
                str(LAUNCHER),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if compiled.returncode != 0:
            raise EngineUnavailable(f"the node launcher did not compile:\n{compiled.stderr}")
    return classes, classpath_file.read_text().strip()


_HOME_PREFIX = "indexsync-opensearch-"


def _sweep_abandoned_homes() -> None:
    """Remove the homes of nodes whose run was SIGKILLed (their JVM ended with its stdin)."""
    for home in Path(tempfile.gettempdir()).glob(f"{_HOME_PREFIX}*"):
        try:
            pid = int((home / "node.pid").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            shutil.rmtree(home, ignore_errors=True)


class OpenSearchNode:
    """One single-node OpenSearch cluster on 127.0.0.1."""

    def __init__(
        self,
        *,
        version: str = DEFAULT_VERSION,
        heap: str = DEFAULT_HEAP,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.version = version
        self.heap = heap
        self.settings = dict(settings or {})
        self.home: Path | None = None
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Start the node and wait for yellow health; EngineUnavailable if it cannot run."""
        started = time.monotonic()
        classes, classpath = prepare(self.version)
        _sweep_abandoned_homes()
        self.home = Path(tempfile.mkdtemp(prefix=_HOME_PREFIX))
        (self.home / "config").mkdir()
        (self.home / "tmp").mkdir()
        (self.home / "logs").mkdir()
        self._log = (self.home / "node.log").open("wb")
        command = [
            _tool("java"),
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseSerialGC",
            "-Xss1m",
            "-Dlog4j2.disable.jmx=true",
            f"-Djava.io.tmpdir={self.home / 'tmp'}",
            "-cp",
            f"{classes}{os.pathsep}{classpath}",
            "EngineNode",
            str(self.home),
            *(f"{k}={v}" for k, v in self.settings.items()),
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        (self.home / "node.pid").write_text(str(self._process.pid))
        atexit.register(self.stop)
        try:
            self.url = self._wait_for_port(started + timeout)
            self._wait_for_health(started + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_port(self, deadline: float) -> str:
        assert self.home is not None and self._process is not None
        ports = self.home / "logs" / "http.ports"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EngineUnavailable(
                    f"the OpenSearch node exited with {self._process.returncode}:\n"
                    + self.log_tail()
                )
            with contextlib.suppress(FileNotFoundError):
                lines = ports.read_text().split()
                if lines:
                    return f"http://{lines[0]}"
            time.sleep(0.2)
        raise EngineUnavailable(
            "the OpenSearch node did not bind HTTP in time:\n" + self.log_tail()
        )

    def _wait_for_health(self, deadline: float) -> None:
        last: object = None
        while time.monotonic() < deadline:
            try:
                health = self.request("GET", "/_cluster/health?wait_for_status=yellow&timeout=5s")
                if health.get("status") in ("yellow", "green"):
                    return
                last = health
            except (OSError, urllib.error.URLError) as exc:
                last = exc
            time.sleep(0.2)
        raise EngineUnavailable(f"the OpenSearch node never became yellow (last: {last!r})")

    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """A JSON request to the node; HTTP errors come back as their JSON body."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with _OPENER.open(request, timeout=30) as response:
                answer: dict[str, Any] = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            with exc:
                answer = json.loads(exc.read() or b"{}")
        return answer

    def log_tail(self, lines: int = 20) -> str:
        """The end of the node's own log."""
        if self.home is None:
            return ""
        with contextlib.suppress(OSError):
            text = (self.home / "node.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Stop the node (its shutdown hook closes it cleanly) and remove its home."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def search_engine(name: str, variable: str = "ENGINE") -> Iterator[Any]:
    """A running search server by name: `osmem` (the pure-pip default) or `opensearch` (a
    real node); the object has `url`. `variable` names the setting in the error."""
    if name == "osmem":
        from indexsync.embedded import EmbeddedSearch

        with EmbeddedSearch() as search:
            yield search
        return
    if name != "opensearch":
        raise SystemExit(f"{variable}={name!r}: expected 'osmem' or 'opensearch'")
    with OpenSearchNode() as node:
        yield node


def main() -> int:
    """Start a node by hand, print its URL, and stop it on Ctrl-C or SIGTERM.

    With `--probe`, print what the node answers on `GET /` and stop it at once (CI's log
    shows which engine its suites ran on).
    """
    version = os.environ.get("OPENSEARCH_VERSION", DEFAULT_VERSION)
    began = time.monotonic()
    try:
        node = OpenSearchNode(version=version).start()
    except EngineUnavailable as exc:
        print(f"cannot start OpenSearch {version}: {exc}", file=sys.stderr)
        return 1
    info = node.request("GET", "/")
    if "--probe" in sys.argv[1:]:
        pid = node._process.pid if node._process is not None else None
        print(f"GET {node.url}/ answered, from the JVM of pid {pid}:")
        print(json.dumps(info, indent=2), flush=True)
        node.stop()
        return 0
    print(
        f"OpenSearch {info['version']['number']} is up at {node.url} "
        f"(started in {time.monotonic() - began:.1f}s; home {node.home}); Ctrl-C stops it",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
