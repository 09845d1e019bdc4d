"""Benchmarks: `python -m benchmarks` runs them all and writes benchmarks/latest.json."""
