"""Benchmarks of stratopt (run as modules, e.g. ``uv run python -m benchmarks.optimize_latency``)."""
