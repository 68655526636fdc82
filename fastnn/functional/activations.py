"""Activation layers, forward and backward, on the compiled element-wise kernels.

Every forward returns ``(out, cache)`` and every backward takes ``(dout, cache)``, as in the
course's ``layers.py``. Backward uses what forward saved instead of recomputing: the output
for sigmoid and tanh, the input for Leaky ReLU and PReLU, in small opaque caches; ReLU's
cache is its input array ``x`` itself, as the course's, when ``x`` is a C-contiguous float32
or float64 array (else its converted copy; the ReLU layer keeps the output instead, which
gives the same mask).

ReLU, Leaky ReLU, sigmoid and tanh take an optional keyword ``out=``: a C-contiguous array of
the result's shape and dtype, not overlapping the inputs, written instead of a new array (as
with NumPy's ufuncs; it saves the allocation and its page faults on large arrays).
"""
import math
import numbers

import numpy as np

from fastnn import _threads
from fastnn._kernels import activations as _k
from fastnn._validation import (as_float_array, check_scalar,
                                common_dtype, float_dtype_of, out_array)

__all__ = [
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
    "prelu_forward", "prelu_backward", "maxout_reduce_forward", "maxout_reduce_backward",
]


class ActivationCache:
    """What an activation's forward keeps for its backward (relu_forward's cache is its input
    itself, as the course's)."""

    __slots__ = ("kind", "saved", "alpha")

    def __init__(self, kind, saved, alpha=None):
        self.kind = kind
        self.saved = saved
        self.alpha = alpha

    def __repr__(self):
        return f"ActivationCache({self.kind!r}, saved shape {self.saved.shape}, dtype {self.saved.dtype})"

    def __array__(self, dtype=None, copy=None):
        # course code reading a cache it has no counterpart for (np.asarray would make a 0-d
        # object array of it, and the error would come later, naming nothing)
        raise TypeError(f"this {self.kind} cache is fastnn's own: pass it to "
                        f"fastnn.functional.{self.kind}_backward")


# Kernel op codes as plain ints (cheapest to pass to the kernel).
_RELU, _LEAKY, _SIGMOID, _TANH = _k.RELU, _k.LEAKY_RELU, _k.SIGMOID, _k.TANH


def _flat(a):
    return a.reshape(-1)


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _as_x(x, out):
    """``as_float_array(x, "x")``: x itself when it is a C-contiguous float32/float64 array
    (what as_float_array returns for it), else converted, with ``out`` checked first by
    out_array against x's shape and dtype (x's dtype named first, as its conversion names
    it) when x is an array: an out that the call refuses is refused before a huge broadcast
    view is copied. (A list x holds its data already; the overlap with the inputs is
    checked after the conversion, as before.)"""
    if type(x) is np.ndarray:
        dt = x.dtype
        if (dt is _F32 or dt is _F64) and x.flags.c_contiguous:
            return x
    if out is not None and isinstance(x, np.ndarray):
        out_array(out, x.shape, float_dtype_of(x, "x"))
    return as_float_array(x, "x")


def _forward(op, x, out=None, alpha=0.0, given=None):
    """op(x) into out (or a new array). ``given``: the caller's own x when x is a converted
    copy of it; out may overlap neither (refused as it is for an x used as it is)."""
    if out is None:
        y = _k.forward_fast(op, x, alpha, _threads._num_threads)
        if y is not None:
            return y   # (the common case, checked and run in compiled code: csrc/activations.pyx)
    arr = _as_x(x, out)
    out = out_array(out, arr.shape, arr.dtype, arr, x, given)
    _k.forward(op, _flat(arr), _flat(out), alpha, _threads._num_threads)
    return out


def _cache_array(cache, kind):
    if isinstance(cache, ActivationCache):
        if cache.kind != kind:
            raise ValueError(f"cache comes from {cache.kind}_forward, not {kind}_forward")
        return cache.saved
    raise TypeError(f"cache must be the cache returned by {kind}_forward, got {type(cache).__name__}")


def _backward(op, dout, saved, out=None, alpha=0.0):
    if out is None:
        dx = _k.backward_fast(op, dout, saved, alpha, _threads._num_threads)
        if dx is not None:
            return dx   # (the common case, compiled: csrc/activations.pyx)
    dt = common_dtype(("dout", dout), ("cache", saved))
    given = (dout, saved)   # (out may overlap neither, converted or not)
    # (shapes before conversions: dout's is checked before dout is converted, and before
    # saved is, which for the course's cache is its x, maybe a huge broadcast view; a list
    # is converted first, as it holds its data already)
    if not isinstance(saved, np.ndarray):
        saved = as_float_array(saved, "cache", dt)
    dout = as_float_array(dout, "dout", dt, shape=saved.shape,
                          shape_text=f"the shape of the forward output {saved.shape}")
    saved = as_float_array(saved, "cache", dt)
    dx = out_array(out, dout.shape, dt, dout, saved, *given)
    _k.backward(op, _flat(dout), _flat(saved), _flat(dx), alpha, _threads._num_threads)
    return dx


# ----------------------------------------------------------------------------- ReLU
def relu_forward(x, *, out=None):
    """ReLU, ``max(x, 0)`` element-wise (NaN propagates, as ``np.maximum``)."""
    given, x = x, _as_x(x, out)
    out = _forward(_RELU, x, out, given=given)
    # The cache is x itself, as the course's (``cache = x``): every way course code writes its
    # relu_backward works on it (``dout * (x > 0)``, ``dx[x <= 0] = 0``, ``x.shape``, ...), and
    # relu_backward's mask x > 0 is exactly relu(x) > 0 (NaN: neither).
    return out, x


def relu_backward(dout, cache, *, out=None):
    """``dout * (x > 0)``; ``cache`` is relu_forward's cache: the input ``x`` itself, as the
    course's (the ReLU layer keeps its output instead: x > 0 exactly where relu(x) > 0)."""
    if isinstance(cache, ActivationCache):
        saved = _cache_array(cache, "relu")
    elif isinstance(cache, np.ndarray):
        saved = cache
    else:
        raise TypeError(f"cache must be relu_forward's cache (the input array), got {type(cache).__name__}")
    return _backward(_RELU, dout, saved, out)


# ----------------------------------------------------------------------------- Leaky ReLU
def leaky_relu_forward(x, alpha=0.01, *, out=None):
    """``x if x > 0 else alpha * x``."""
    alpha = check_scalar(alpha, "alpha")
    given, x = x, _as_x(x, out)
    out = _forward(_LEAKY, x, out, alpha, given=given)
    return out, ActivationCache("leaky_relu", x, alpha)


def leaky_relu_backward(dout, cache, *, out=None):
    """``dout`` where ``x > 0``, ``alpha * dout`` elsewhere, from leaky_relu_forward's cache."""
    x = _cache_array(cache, "leaky_relu")
    _check_slope(cache, "leaky_relu")
    return _backward(_LEAKY, dout, x, out, cache.alpha)


def _check_slope(cache, name):
    """ValueError unless the leaky slope a cache holds (``cache.alpha``) is a finite real
    number, not a bool: a damaged cache, named as not from ``name``_forward."""
    a = cache.alpha
    try:
        finite = isinstance(a, numbers.Real) and not isinstance(a, bool) and math.isfinite(a)
    except OverflowError:   # (an int beyond float's range)
        finite = False
    if not finite:
        raise ValueError(f"cache is damaged or not from {name}_forward: its slope is {a!r}, "
                         "not a finite number")


# ----------------------------------------------------------------------------- sigmoid, tanh
def sigmoid_forward(x, *, out=None):
    """The logistic function ``1 / (1 + exp(-x))``, overflow-free and accurate in both tails."""
    out = _forward(_SIGMOID, x, out)
    return out, ActivationCache("sigmoid", out)


def sigmoid_backward(dout, cache, *, out=None):
    """``dout * s * (1 - s)`` from the saved output ``s``."""
    return _backward(_SIGMOID, dout, _cache_array(cache, "sigmoid"), out)


def tanh_forward(x, *, out=None):
    """``tanh(x)``; the output is kept for backward."""
    out = _forward(_TANH, x, out)
    return out, ActivationCache("tanh", out)


def tanh_backward(dout, cache, *, out=None):
    """``dout * (1 - t**2)`` from the saved output ``t``, computed as ``(1 - t) * (1 + t)``
    (accurate where ``|t|`` is near 1)."""
    return _backward(_TANH, dout, _cache_array(cache, "tanh"), out)


# ----------------------------------------------------------------------------- PReLU
def _rows(a):
    """View a C-contiguous array as (rows, features), features = the last axis."""
    if a.ndim == 0:
        return a.reshape(1, 1)
    d = a.shape[-1]
    return a.reshape(math.prod(a.shape[:-1]), d)


def _prelu_vector(alpha, d, dtype, per="feature"):
    """PReLU's alpha (a scalar, or one value per feature / unit) as a vector of d slopes;
    returns (vector, the shape to give dalpha: () for a scalar alpha). An alpha of shape (1,)
    is one slope shared by every feature (the shape of PyTorch's ``nn.PReLU()`` weight; NumPy
    would broadcast it); its dalpha has shape (1,)."""
    if isinstance(alpha, (list, tuple)) or (isinstance(alpha, np.ndarray) and alpha.ndim > 0):
        # (as the losses check x: an array's shape before it is converted, so that a huge
        # broadcast view is refused, not copied; a list is converted first)
        if not isinstance(alpha, np.ndarray):
            alpha = as_float_array(alpha, "alpha", dtype)
        if alpha.shape not in ((1,), (d,)):
            raise ValueError(f"alpha must be a scalar, one shared slope (shape (1,)), or have one "
                             f"entry per {per} (shape ({d},)), got shape {alpha.shape}")
        a = as_float_array(alpha, "alpha", dtype)
        if a.shape == (1,) and d != 1:
            return np.full(d, a[0], dtype=dtype), (1,)
        return a, a.shape
    # (a learnable parameter, as w: NaN and Inf flow through, as they do in a slope array)
    return np.full(d, check_scalar(alpha, "alpha", allow_nan=True), dtype=dtype), ()


def _slope_gradient(dalpha, ashape, dt):
    """The kernel's per-feature (per-unit) slope partials as the gradient of a slope of shape
    ``ashape``: summed in a fixed order for a scalar () or a shared (1,) slope."""
    if dalpha.shape == ashape:
        return dalpha
    return dalpha.sum(dtype=dt, keepdims=ashape == (1,))


def prelu_forward(x, alpha):
    """Parametric ReLU: ``x if x > 0 else alpha * x`` with a learnable ``alpha``, a scalar,
    one value per feature (the last axis of ``x``), or shape (1,): one slope shared by all."""
    if isinstance(alpha, np.ndarray) and alpha.ndim > 0:
        dt = common_dtype(("x", x), ("alpha", alpha))
    else:
        dt = float_dtype_of(x, "x")
    if not isinstance(x, np.ndarray):
        x = as_float_array(x, "x", dt)   # (a list holds its data already)
    # alpha checked against x's features before x is converted, so that a huge broadcast
    # view of x is refused, not copied
    a, ashape = _prelu_vector(alpha, x.shape[-1] if x.ndim else 1, dt)
    x = as_float_array(x, "x", dt)
    out = np.empty_like(x)
    _k.prelu_forward(_rows(x), a, _rows(out), _threads._num_threads)
    # The caller's slope array is kept as it is, whatever its dtype and layout: backward
    # converts it again, so that it reads the slopes as they are then (the course's code
    # does; an in-place update between forward and backward is seen). A converted copy kept
    # here missed it for a slope of another float dtype or with strides.
    if isinstance(alpha, np.ndarray):
        live = alpha
    else:
        live = a if a.shape == ashape else as_float_array(alpha, "alpha", dt)
    return out, ActivationCache("prelu", x, (live, ashape))


def prelu_backward(dout, cache):
    """Returns ``(dx, dalpha)``; ``dalpha`` has the shape of the alpha given to forward
    (a NumPy scalar for a scalar alpha)."""
    x = _cache_array(cache, "prelu")
    dt = common_dtype(("dout", dout), ("cache", x))
    x = as_float_array(x, "cache", dt)
    dout = as_float_array(dout, "dout", dt, shape=x.shape,
                          shape_text=f"the shape of the forward input {x.shape}")
    d = x.shape[-1] if x.ndim else 1
    ok = isinstance(cache.alpha, tuple) and len(cache.alpha) == 2
    a, ashape = cache.alpha if ok else (None, None)
    if isinstance(a, np.ndarray) and ((ashape == () and a.ndim == 0)
                                      or (ashape == (1,) and a.shape == (1,))):
        a = _prelu_vector(a, d, dt)[0]   # the caller's 0-d or shared slope array, as it is now
    if not (ok and isinstance(a, np.ndarray) and a.shape == (d,) and ashape in ((), (d,), (1,))):
        raise ValueError(f"cache is damaged or not from prelu_forward: its slopes do not match the "
                         f"{d} features of its input")
    a = as_float_array(a, "cache", dt)
    dx = np.empty_like(dout)
    dalpha = np.empty(a.shape[0], dtype=dt)
    _k.prelu_backward(_rows(dout), _rows(x), a, _rows(dx), dalpha, _threads._num_threads)
    return dx, _slope_gradient(dalpha, ashape, dt)


# ----------------------------------------------------------------------------- Maxout (element-wise part)
def maxout_reduce_forward(z):
    """The element-wise part of Maxout: ``out[n, m] = max_p z[n, m, p]`` over the last axis
    (the ``k`` pieces). The winning piece is kept for backward; NaN wins, like ``np.max``."""
    if not isinstance(z, np.ndarray):   # (as the losses: an array checked before it is
        z = as_float_array(z, "z")      # converted, so a huge broadcast view is not copied)
    if z.ndim != 3:
        raise ValueError(f"z must be 3-D (N, units, pieces), got shape {z.shape}")
    if not 1 <= z.shape[2] <= 127:
        raise ValueError(f"z must have 1 to 127 pieces on its last axis, got {z.shape[2]}")
    z = as_float_array(z, "z")
    out = np.empty(z.shape[:2], dtype=z.dtype)
    argmax = np.empty(z.shape[:2], dtype=np.int8)
    _k.maxout_reduce_forward(z, out, argmax, _threads._num_threads)
    return out, ActivationCache("maxout_reduce", argmax, z.shape)


def _maxout_reduce_cache(cache):
    """(argmax, (N, units, pieces)) of a maxout_reduce_forward cache, or ValueError (TypeError
    for what is not an activation cache) for a damaged one."""
    argmax = _cache_array(cache, "maxout_reduce")
    shape = cache.alpha
    if not (isinstance(argmax, np.ndarray) and argmax.dtype == np.int8 and isinstance(shape, tuple)
            and len(shape) == 3 and all(type(s) is int for s in shape)
            and argmax.shape == shape[:2] and 1 <= shape[2] <= 127 and argmax.flags.c_contiguous):
        raise ValueError("cache is damaged or not from maxout_reduce_forward")
    return argmax, shape


def maxout_reduce_backward(dout, cache):
    """``dz`` of shape (N, units, pieces): ``dout[n, m]`` at the piece that won in forward,
    zero at the others."""
    argmax, shape = _maxout_reduce_cache(cache)
    dout = as_float_array(dout, "dout", shape=shape[:2])
    dz = np.empty(shape, dtype=dout.dtype)
    _k.maxout_reduce_backward(dout, argmax, dz, _threads._num_threads)
    return dz
