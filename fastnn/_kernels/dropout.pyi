"""Inverted dropout with counter-based masks (csrc/dropout.pyx). Private: use
fastnn.functional."""
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Float = NDArray[np.floating[Any]]

def keep_limit(p: float) -> int: ...
def dropout_apply(x: _Float, y: _Float, p: float, seed: int, n_threads: int) -> None: ...


def parallel_seen() -> bool: ...
