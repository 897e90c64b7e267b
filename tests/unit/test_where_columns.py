"""The columns a `where` reads, told from PostgreSQL's EXPLAIN VERBOSE (texts from PG 18)."""

from __future__ import annotations

from indexsync.catalog import columns_in_plan

COLUMNS = ["id", "views", "published", "Order"]


def test_a_plain_filter_names_its_column() -> None:
    plan = "Seq Scan on public.posts\n  Filter: posts.published"
    assert columns_in_plan(plan, "posts", COLUMNS) == ["published"]


def test_quoted_columns_and_index_conditions_count() -> None:
    plan = (
        "Bitmap Heap Scan on public.posts\n"
        "  Recheck Cond: (posts.id > 3)\n"
        "  Filter: (posts.\"Order\" = 'x'::text)\n"
        "  ->  Bitmap Index Scan on posts_pkey\n"
        "        Index Cond: (posts.id > 3)"
    )
    assert columns_in_plan(plan, "posts", COLUMNS) == ["id", "Order"]


def test_a_whole_row_reference_means_every_column() -> None:
    plan = "Seq Scan on public.posts\n  Filter: (length((posts.*)::text) > 0)"
    assert columns_in_plan(plan, "posts", COLUMNS) is None


def test_the_table_named_outside_a_column_reference_is_taken_as_the_whole_row() -> None:
    # A mention the parser cannot place (here inside a literal) errs towards capturing more.
    plan = "Seq Scan on public.posts\n  Filter: (posts.views > length('posts'::text))"
    assert columns_in_plan(plan, "posts", COLUMNS) is None


def test_a_condition_folded_away_reads_nothing() -> None:
    assert columns_in_plan("Seq Scan on public.posts", "posts", COLUMNS) == []
