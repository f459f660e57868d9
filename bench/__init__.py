"""Benchmark suite of cdc-agent (python -m bench)."""
