"""Benchmarks of indexsync: sync throughput, write overhead, latency, and the blog recipe.

Run with ``python -m bench`` (or ``make bench``); ``BENCH_SCALE`` shrinks every size.
"""
