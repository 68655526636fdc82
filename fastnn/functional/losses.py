"""Losses with the course's conventions: ``loss, dx = softmax_loss(x, y)``.

All are averaged over the N rows, with no regularization inside; the loss is a Python float
and dx has x's shape, in the dtype the call computes in (x's for float32 and float64;
float16 in float32, integers in float64, mixed float32/float64 in float64, NumPy's
promotion). Labels are checked (in range, one per row; integers, and for the binary losses
also bools and whole-number floats) before any kernel runs; an empty batch is an error (the
mean over no rows is undefined).
"""
import numpy as np

from fastnn import _threads
from fastnn._kernels import losses as _kl
from fastnn._validation import (as_float_array, binary_targets, check_rows, class_labels, common_dtype,
                                float_dtype_of)

__all__ = ["softmax_loss", "svm_loss", "logistic_loss", "binary_svm_loss", "mse_loss"]


def _check_scores(shape):
    if len(shape) != 2:
        raise ValueError(f"x must be 2-D scores of shape (N, C), got shape {shape}")
    check_rows(shape[0], "x")
    if shape[1] == 0:
        raise ValueError("x must have at least one class column, got shape (N, 0)")


def _class_loss(kind, x, y):
    res = _kl.class_loss_fast(kind, x, y, _threads._num_threads)
    if res is not None:
        return res   # (the common case, checked and run in compiled code: csrc/losses.pyx)
    # x's dtype and shape, then the labels, before an array x is converted: a broadcast view
    # of a huge shape with the wrong labels is refused, not copied (a list is converted
    # first: it already holds its data)
    if not isinstance(x, np.ndarray):
        x = as_float_array(x, "x")
    dt = float_dtype_of(x, "x")
    _check_scores(x.shape)
    y = class_labels(y, x.shape[0], x.shape[1])
    x = as_float_array(x, "x", dt)
    dx = np.empty_like(x)
    loss = _kl.class_loss(kind, x, y, dx, _threads._num_threads)
    return loss, dx


def softmax_loss(x, y):
    """Softmax cross-entropy. x (N, C) scores, y (N,) integer labels in [0, C)."""
    return _class_loss(_kl.SOFTMAX, x, y)


def svm_loss(x, y):
    """Multiclass SVM (hinge, margin 1). x (N, C) scores, y (N,) integer labels in [0, C)."""
    return _class_loss(_kl.SVM, x, y)


def _check_binary_scores(shape):
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise ValueError(f"x must have shape (N,) or (N, 1), got {shape}")
    check_rows(shape[0], "x", "score")


def _binary_loss(kind, allowed, x, y):
    if not isinstance(x, np.ndarray):   # (as in _class_loss)
        x = as_float_array(x, "x")
    dt = float_dtype_of(x, "x")
    _check_binary_scores(x.shape)
    t = binary_targets(y, x.shape[0], allowed, dt)
    x = as_float_array(x, "x", dt)
    dx = np.empty_like(x)
    loss = _kl.target_loss(kind, x.reshape(-1, 1), t.reshape(-1, 1), dx.reshape(-1, 1), _threads._num_threads)
    return loss, dx


def logistic_loss(x, y):
    """The binary softmax classifier: one sigmoid neuron with cross-entropy. x (N,) or (N, 1)
    scores (logits), y labels in {0, 1} (integers, bools or whole-number floats)."""
    return _binary_loss(_kl.LOGISTIC, (0, 1), x, y)


def binary_svm_loss(x, y):
    """The binary SVM: hinge loss max(0, 1 - y x). x (N,) or (N, 1), y labels in {-1, +1}."""
    return _binary_loss(_kl.BINARY_HINGE, (-1, 1), x, y)


def mse_loss(x, y):
    """Regression: loss = 0.5 * sum((x - y)**2) / N, dx = (x - y) / N. x is (N,) or
    (N, d1, ..., dk) (rows flattened for the kernel, dx in x's shape); y has x's shape."""
    dt = common_dtype(("x", x), ("y", y))
    # Shapes first, conversions after: a broadcast view of a huge shape must be refused before
    # it is copied. (Lists are converted here: they already hold their data.)
    x = x if isinstance(x, np.ndarray) else as_float_array(x, "x", dt)
    if x.ndim == 0:
        raise ValueError("x must have shape (N,) or (N, d1, ..., dk), got a 0-d array")
    y = as_float_array(y, "y", dt, shape=x.shape, shape_text=f"the shape of x {x.shape}")
    x = as_float_array(x, "x", dt)
    check_rows(x.shape[0], "x")
    x2 = x.reshape(x.shape[0], -1)
    dx = np.empty_like(x)
    if x2.shape[1] == 0:
        return 0.0, dx   # no outputs: nothing to miss (the reference's empty sum)
    loss = _kl.target_loss(_kl.MSE, x2, y.reshape(x2.shape), dx.reshape(x2.shape), _threads._num_threads)
    return loss, dx
