"""Fused dense-layer kernels over SciPy's BLAS (csrc/dense.pyx). Private: use fastnn.functional.

Array arguments are C-contiguous float32 or float64 arrays, all of one dtype per call; outputs
are written in place. Arguments typed ``... | None`` may be None (see the docstrings)."""
from typing import Any, Dict, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

_Float = NDArray[np.floating[Any]]

def config_address() -> int: ...
def register_blas_thread_control(set_addr: int, get_addr: int) -> None: ...
def blas_thread_control() -> bool: ...
def tile_params() -> Dict[str, Any]: ...
def set_tile_params(tile_flops: Optional[float] = None, min_tile_rows: Optional[int] = None,
                    min_tile_cols: Optional[int] = None, max_tiles: Optional[int] = None,
                    serial_flops: Optional[float] = None,
                    row_block_elems: Optional[int] = None,
                    thin: Optional[int] = None,
                    max_tile_elems: Optional[int] = None,
                    chunk_min_rows: Optional[int] = None,
                    chunk_rows_more: Optional[int] = None,
                    max_chunks: Optional[int] = None,
                    tile_cores: Optional[int] = None,
                    k_split: Optional[float] = None) -> None: ...
def plan(r: int, c: int, k: int, dx: bool = False, batch: bool = False,
         chunks: bool = True) -> Tuple[int, int, int, int]: ...
def forward_plan_of(N: int, M: int, D: int, chunks: bool = True) -> Tuple[int, int, int, int, int, int]: ...
def layer_chunk_rows(N: int, D: int, M: int) -> int: ...
def gemm_seconds(r: int, c: int, k: int, trans_a: bool = False, trans_b: bool = False,
                 reps: int = 1, dtype: Any = ..., accumulate: bool = False,
                 concurrent: int = 1) -> Tuple[float, _Float, _Float, _Float]: ...
def dense_forward(op: int, x: _Float, w: _Float, b: _Float, y: _Float, z: Optional[_Float],
                  alpha: float, avec: Optional[_Float], n_threads: int, chunks: bool = False) -> None: ...
def dense_backward(op: int, dout: _Float, saved: _Float, x: _Float, w: _Float,
                   dx: Optional[_Float], dw: _Float, db: _Float, dz: Optional[_Float],
                   alpha: float, avec: Optional[_Float], dalpha: Optional[_Float],
                   n_threads: int, chunks: bool = False) -> None: ...


def parallel_seen() -> bool: ...
