"""The whole training step of a dense Sequential in one call (csrc/network.pyx). Private: used
by fastnn.model."""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from numpy.typing import DTypeLike, NDArray

_Float = NDArray[np.floating[Any]]

class StepPlan:
    @property
    def is_double(self) -> bool: ...
    @property
    def rule(self) -> int: ...
    @property
    def scores(self) -> _Float: ...
    @property
    def batch(self) -> int: ...
    @property
    def stopped(self) -> bool: ...
    @property
    def fused_backward(self) -> bool: ...
    def __init__(self, dtype: DTypeLike, N: int, loss_kind: int, layers: List[Dict[str, Any]],
                 params: List[Sequence[Any]], rule: int) -> None: ...
    def step(self, X: _Float, labels: Optional[NDArray[np.intp]], targets: Optional[_Float],
             lr: float, h1: float, h2: float, eps: float, c1: float, c2: float, wd: float,
             n_threads: int, guard: bool = False) -> float: ...
