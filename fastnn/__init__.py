"""fastnn: fast fully connected neural networks for NumPy users.

Cython + OpenMP kernels under a thin Python API; ``fastnn.functional``, ``fastnn.optim`` and
``fastnn.gradcheck`` are drop-ins for CS231n-style NumPy code.
"""
__version__ = "0.1.0"

from fastnn._threads import get_num_threads, set_num_threads, threads  # noqa: E402
from fastnn import _blas  # noqa: E402

_blas.register()

from fastnn._config import show_config  # noqa: E402
from fastnn import functional, gradcheck, optim  # noqa: E402,F401

__all__ = [
    "__version__", "set_num_threads", "get_num_threads", "threads", "show_config",
    "functional", "optim", "gradcheck",
]
