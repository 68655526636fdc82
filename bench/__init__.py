"""Benchmarks (pytest-benchmark) and standalone benchmark scripts; see bench/conftest.py.

A package so that bench/conftest.py is imported as ``bench.conftest`` and never shadows
tests/conftest.py (the tests do ``from conftest import ...``) when both directories are
collected in one run.
"""
