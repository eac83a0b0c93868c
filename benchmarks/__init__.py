"""Benchmarks that print numbers (tests check behaviour; speed is measured here, never asserted).

``python -m benchmarks [--json]`` (or ``python -m study bench``) runs ``benchmarks.throughput``.
"""
