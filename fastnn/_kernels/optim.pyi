"""Fused parameter-update kernels (csrc/optim.pyx). Private: use fastnn.optim or the
optimizers."""
from typing import Any, Dict, List, Optional

import numpy as np
from numpy.typing import NDArray

_Float = NDArray[np.floating[Any]]

SGD: int
MOMENTUM: int
NESTEROV: int
RMSPROP: int
ADAM: int

def update(rule: int, w: _Float, dw: _Float, s1: Optional[_Float], s2: Optional[_Float],
           lr: float, h1: float, h2: float, eps: float, c1: float, c2: float, wd: float,
           n_threads: int) -> None: ...
def all_finite(x: _Float, n_threads: int = 1) -> bool: ...


def parallel_seen() -> bool: ...

# the call governor (csrc/fastnn_sites.pxi)
def set_dynamic(on: bool) -> None: ...
def governed_sites() -> List[Dict[str, Any]]: ...
def clear_sites() -> None: ...
def set_sites_current(count: int) -> None: ...
def site_record(key: int, used: int, seconds: float) -> bool: ...
def parallel_regions() -> int: ...
