"""Benchmarks of the gateway against a fast fake upstream: ``python -m bench`` (see bench/RESULTS.md)."""
