"""Loss kernels (csrc/losses.pyx). Private: use fastnn.functional.

Each returns the mean loss and writes its gradient into ``dx`` (C-contiguous, x's dtype)."""
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Float = NDArray[np.floating[Any]]

SOFTMAX: int
SVM: int
LOGISTIC: int
BINARY_HINGE: int
MSE: int

def class_loss(kind: int, x: _Float, y: NDArray[np.intp], dx: _Float, n_threads: int) -> float: ...
def binary_targets(kind: int, y: NDArray[np.intp], t: _Float) -> int: ...
def target_loss(kind: int, x: _Float, t: _Float, dx: _Float, n_threads: int) -> float: ...


def parallel_seen() -> bool: ...
