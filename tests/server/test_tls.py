"""TLS to Elasticsearch: verified by default, with a CA file, or knowingly switched off."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.env import Env


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and a server certificate for 127.0.0.1 that it signed."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("tls")
    key = ["-newkey", "rsa:2048", "-nodes"]
    _openssl("req", "-x509", *key, "-days", "2", "-subj", "/CN=indexsync test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    _openssl("req", *key, "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf",
             "-out", "server.pem", cwd=d)  # fmt: skip
    return d


class TlsFront:
    """Terminates TLS on a local port and pipes the bytes to a plain HTTP server."""

    def __init__(self, upstream: str, certs: Path) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certs / "server.pem", certs / "server.key")
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TlsFront:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        )
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            self.loop.run_until_complete(server.wait_closed())
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
def tls(env: Env, certificates: Path) -> Iterator[TlsFront]:
    """The test's search server behind TLS."""
    if env.search.upstream_url is None:
        pytest.skip("runs against the embedded search server")
    env.sql("CREATE TABLE items (id integer PRIMARY KEY, title text)")
    env.bindings(f'[indexes.{env.alias("items")}]\ntable = "items"\n')
    with TlsFront(env.search.url, certificates) as front:
        yield front


def test_a_private_ca_is_trusted_through_ca_certs(
    env: Env, tls: TlsFront, certificates: Path
) -> None:
    result = env.cli(
        "install",
        INDEXSYNC_ELASTICSEARCH_URL=tls.url,
        INDEXSYNC_ELASTICSEARCH_CA_CERTS=str(certificates / "ca.pem"),
    )
    assert result.returncode == 0, result.stderr
    env.sql("INSERT INTO items VALUES (1, 'over tls')")
    run = env.cli(
        "run",
        "--until-idle",
        INDEXSYNC_ELASTICSEARCH_URL=tls.url,
        INDEXSYNC_ELASTICSEARCH_CA_CERTS=str(certificates / "ca.pem"),
    )
    assert run.returncode == 0, run.stderr
    assert env.docs("items") == {"1": {"id": 1, "title": "over tls"}}


def test_certificates_are_verified_by_default(env: Env, tls: TlsFront) -> None:
    result = env.cli("install", INDEXSYNC_ELASTICSEARCH_URL=tls.url)
    assert result.returncode == 2
    assert "certificate" in result.stderr.lower()
    assert env.sql("SELECT to_regnamespace('indexsync')") == [(None,)]


def test_verification_can_be_switched_off_knowingly(env: Env, tls: TlsFront) -> None:
    result = env.cli(
        "install", INDEXSYNC_ELASTICSEARCH_URL=tls.url, INDEXSYNC_ELASTICSEARCH_VERIFY_CERTS="false"
    )
    assert result.returncode == 0, result.stderr
