"""Element-wise activation kernels (csrc/activations.pyx). Private: use fastnn.functional.

Array arguments are C-contiguous float32 or float64 arrays, all of one dtype per call (Cython
fused memoryviews); outputs are written in place."""
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Float = NDArray[np.floating[Any]]

CHUNK: int  # elements per fixed chunk of element-wise work
IDENTITY: int
RELU: int
LEAKY_RELU: int
SIGMOID: int
TANH: int
PRELU: int

def min_work_per_thread() -> int: ...
def set_min_work_per_thread(units: int) -> None: ...
def forward(op: int, x: _Float, out: _Float, alpha: float, n_threads: int) -> None: ...
def backward(op: int, dout: _Float, saved: _Float, dx: _Float, alpha: float,
             n_threads: int) -> None: ...
def prelu_forward(x: _Float, alpha: _Float, out: _Float, n_threads: int) -> None: ...
def prelu_backward(dout: _Float, x: _Float, alpha: _Float, dx: _Float, dalpha: _Float,
                   n_threads: int) -> None: ...
def maxout_reduce_forward(z: _Float, out: _Float, argmax: NDArray[np.int8],
                          n_threads: int) -> None: ...
def maxout_reduce_backward(dout: _Float, argmax: NDArray[np.int8], dz: _Float,
                           n_threads: int) -> None: ...


def parallel_seen() -> bool: ...
