"""The blog-post recipe indexsync replaces: LISTEN for row JSON, index one document per request.

Run as ``python -m bench.recipe_listener DATABASE_URL SEARCH_URL INDEX``; it prints
``listening`` once subscribed, so the benchmark knows when changes start to count.
"""

from __future__ import annotations

import json
import sys

import psycopg
from elasticsearch import Elasticsearch

CHANNEL = "recipe"


def main(argv: list[str] | None = None) -> int:
    """Index every notification's row until killed."""
    database_url, search_url, index = argv or sys.argv[1:]
    es = Elasticsearch(search_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        print("listening", flush=True)
        for notification in conn.notifies():
            row = json.loads(notification.payload)
            es.index(index=index, id=str(row["id"]), document=row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
