"""fastnn: fast fully connected neural networks for NumPy users.

Cython + OpenMP kernels under a thin Python API:

- ``fastnn.functional``, ``fastnn.optim`` and ``fastnn.gradcheck``: drop-ins for CS231n-style
  NumPy code (``out, cache = affine_relu_forward(x, w, b)`` ...);
- layers, ``Sequential``, losses and optimizers in the style of Keras/PyTorch.
"""
__version__ = "0.1.0"


def _check_built():
    """A clear error for the common mistake: importing fastnn from a source checkout whose
    compiled modules were never built in place (``pip install .`` builds them elsewhere, and
    ``python -m fastnn ...`` run in the checkout's root imports the checkout first)."""
    try:
        from fastnn._kernels import _config  # noqa: F401
    except ImportError as exc:
        import os
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "csrc")):
            raise ImportError(
                f"fastnn was imported from its source folder {root}, where its compiled modules "
                "are not built. Run Python from another folder (to use an installed fastnn), or "
                "build in place: python3 -m pip install -e ."
            ) from exc
        raise


_check_built()

from fastnn._threads import (get_dynamic, get_num_threads, set_dynamic,  # noqa: E402
                             set_num_threads, threads)
from fastnn import _blas  # noqa: E402

_blas.register()

from fastnn._config import show_config  # noqa: E402
from fastnn import functional, gradcheck, init, optim  # noqa: E402,F401
from fastnn.layers import (Dense, Dropout, GaussianNoise, Layer, LeakyReLU, Maxout,  # noqa: E402
                           Parameter, PReLU, ReLU, Sigmoid, Tanh)
from fastnn.losses import (BinaryCrossEntropy, BinaryHinge, MeanSquaredError,  # noqa: E402
                           MulticlassHinge, SoftmaxCrossEntropy)
from fastnn.model import Sequential, load_model  # noqa: E402
from fastnn.optimizers import SGD, Adam, RMSProp  # noqa: E402
from fastnn import datasets, models  # noqa: E402,F401
from fastnn.models import FullyConnectedNet, TwoLayerNet  # noqa: E402
from fastnn.solver import Solver, load_checkpoint  # noqa: E402

__all__ = [
    "__version__", "set_num_threads", "get_num_threads", "threads", "set_dynamic",
    "get_dynamic", "show_config",
    "functional", "optim", "gradcheck", "init",
    "Layer", "Parameter", "Dense", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "PReLU", "Maxout",
    "Dropout", "GaussianNoise",
    "SoftmaxCrossEntropy", "MulticlassHinge", "BinaryCrossEntropy", "BinaryHinge", "MeanSquaredError",
    "Sequential", "load_model", "SGD", "RMSProp", "Adam",
    "datasets", "models", "TwoLayerNet", "FullyConnectedNet", "Solver", "load_checkpoint",
]
