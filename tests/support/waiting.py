"""Helpers for read-your-writes tests: an application session that writes, then waits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.support.env import Env


@dataclass
class Answer:
    """What `indexsync.wait_for_search` said: its result, and the WARNINGs that came with it."""

    ok: bool
    warnings: list[str] = field(default_factory=list)


class Waiter:
    """Calls `indexsync.wait_for_search` on an application's connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._notices: list[str] = []
        conn.add_notice_handler(self._notice)

    def _notice(self, diag: psycopg.errors.Diagnostic) -> None:
        self._notices.append(f"{diag.severity}: {diag.message_primary}")

    def wait(self, index: str, timeout: str) -> Answer:
        """Wait after the session's last commit, as an application would."""
        self._notices.clear()
        row = self.conn.execute(
            "SELECT indexsync.wait_for_search(%s, timeout => %s::interval)", (index, timeout)
        ).fetchone()
        self.conn.commit()
        assert row is not None
        return Answer(bool(row[0]), list(self._notices))


@contextlib.contextmanager
def writer_and_waiter(url: str) -> Iterator[tuple[psycopg.Connection[Any], Waiter]]:
    """One application session: it writes and commits, then waits on the same connection."""
    with psycopg.connect(url) as conn:
        yield conn, Waiter(conn)


def search_ids(env: Env, alias: str, ids: list[str]) -> set[str]:
    """Which of these ids a search finds now, without refreshing (what an application sees)."""
    body = {"query": {"ids": {"values": ids}}, "size": len(ids)}
    hits = env.http.request("POST", f"/{alias}/_search", body=body)
    return {hit["_id"] for hit in hits["hits"]["hits"]}
