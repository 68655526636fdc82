"""Plain-NumPy implementations of every fastnn kernel.

These are the oracle the tests compare against and the baseline the benchmarks measure.
They are written for clarity and numerical safety, the way a careful NumPy user would, and
follow the same names and conventions as ``fastnn.functional``.
"""
from fastnn.reference import activations  # noqa: F401
