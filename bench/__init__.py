"""Benchmarks: `make bench`. They print ratio tables and write bench/results/latest.json."""
