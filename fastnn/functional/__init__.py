"""fastnn.functional: a drop-in for CS231n-style NumPy layer code, on compiled kernels.

Same names, argument order, return values and defaults as the course modules, e.g.
``out, cache = relu_forward(x)`` and ``dx = relu_backward(dout, cache)``.
"""
from fastnn.functional.activations import (  # noqa: F401
    leaky_relu_backward,
    leaky_relu_forward,
    maxout_reduce_backward,
    maxout_reduce_forward,
    prelu_backward,
    prelu_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    tanh_backward,
    tanh_forward,
)
from fastnn.functional.dense import (  # noqa: F401,E402
    affine_backward,
    affine_forward,
    affine_leaky_relu_backward,
    affine_leaky_relu_forward,
    affine_prelu_backward,
    affine_prelu_forward,
    affine_relu_backward,
    affine_relu_forward,
    affine_sigmoid_backward,
    affine_sigmoid_forward,
    affine_tanh_backward,
    affine_tanh_forward,
    maxout_backward,
    maxout_forward,
)
from fastnn.functional.losses import (  # noqa: F401,E402
    binary_svm_loss,
    logistic_loss,
    mse_loss,
    softmax_loss,
    svm_loss,
)
from fastnn.functional.dropout import (  # noqa: F401,E402
    dropout_backward,
    dropout_forward,
    gaussian_noise_backward,
    gaussian_noise_forward,
)

from fastnn.functional import activations as _a, dense as _d, dropout as _dr, losses as _l  # noqa: E402

# What ``from fastnn.functional import *`` binds: the functions, not the submodules (course code
# may have modules of its own named activations, dense, dropout or losses)
__all__ = [*_a.__all__, *_d.__all__, *_l.__all__, *_dr.__all__]
del _a, _d, _dr, _l
