"""NumPy reference for the activation kernels (fastnn/_kernels/activations)."""
import numpy as np


def relu_forward(x):
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    x = cache
    return dout * (x > 0)


def leaky_relu_forward(x, alpha=0.01):
    a = x.dtype.type(alpha)
    return np.where(x > 0, x, a * x), (x, alpha)


def leaky_relu_backward(dout, cache):
    x, alpha = cache
    return dout * np.where(x > 0, x.dtype.type(1), x.dtype.type(alpha))


def sigmoid(x):
    """Numerically safe logistic function: no overflow for large |x|, accurate in both tails."""
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_naive(x, out=None):
    """The textbook one-liner ``1 / (1 + exp(-x))`` as in-place ufuncs (NumPy's fastest form)."""
    out = np.negative(x, out=out)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    np.add(out, 1, out=out)
    return np.reciprocal(out, out=out)


def sigmoid_forward(x):
    out = sigmoid(x)
    return out, out


def sigmoid_backward(dout, cache):
    s = cache
    return dout * s * (1 - s)


def tanh_forward(x):
    out = np.tanh(x)
    return out, out


def tanh_backward(dout, cache):
    t = cache
    return dout * (1 - t * t)


def _prelu_alpha(x, alpha):
    return np.asarray(alpha, dtype=x.dtype)


def prelu_forward(x, alpha):
    a = _prelu_alpha(x, alpha)
    return np.where(x > 0, x, a * x), (x, alpha)


def prelu_backward(dout, cache):
    x, alpha = cache
    a = _prelu_alpha(x, alpha)
    dx = dout * np.where(x > 0, x.dtype.type(1), a)
    contrib = dout * np.where(x > 0, x.dtype.type(0), x)
    if a.ndim == 0:
        dalpha = contrib.sum(dtype=x.dtype)
    elif a.shape == (1,):   # one slope shared by every feature (broadcast in forward)
        dalpha = contrib.sum(dtype=x.dtype).reshape(1)
    else:
        # rows x features, spelled out: reshape(-1, 0) is ambiguous, and a 0-d x is one
        # sample of one feature
        d = x.shape[-1] if x.ndim else 1
        rows = int(np.prod(x.shape[:-1])) if x.ndim else 1
        dalpha = contrib.reshape(rows, d).sum(axis=0).reshape(a.shape)
    return dx, dalpha


def maxout_reduce_forward(z):
    """Max over the last axis (the pieces); the winning index is kept for backward."""
    idx = np.argmax(z, axis=-1)
    out = np.take_along_axis(z, idx[..., None], axis=-1)[..., 0]
    return out, (idx, z.shape)


def maxout_reduce_backward(dout, cache):
    idx, shape = cache
    dz = np.zeros(shape, dtype=dout.dtype)
    np.put_along_axis(dz, idx[..., None], dout[..., None], axis=-1)
    return dz
