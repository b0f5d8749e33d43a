"""Measurement scripts; each runs as `python benchmarks/NAME.py` from the repository root."""
