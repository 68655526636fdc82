"""Fully connected layers on the fused dense kernels.

``affine_forward(x, w, b) -> (out, cache)`` with x of shape (N, d1, ..., dk) flattened row-wise
to (N, D), w (D, M), b (M,); ``affine_backward(dout, cache) -> (dx, dw, db)`` with dx in x's
shape. The sandwiches ``affine_<act>_forward/backward`` (relu, leaky_relu, sigmoid, tanh, prelu)
run the product and the whole epilogue in one call; ``maxout_forward(x, w, b)`` with w (D, M, k)
and b (M, k) runs one product for all pieces.

Caches hold references, not copies, where no conversion was needed: as in the course code,
``w`` (always the caller's array) is read when backward runs; ``x`` and ``b`` are kept as given
when they are C-contiguous arrays of the dtype the call computes in, else as their converted
copies.
"""
import math

import numpy as np

from fastnn import _threads
from fastnn._kernels import activations as _ka
from fastnn._kernels import dense as _kd
from fastnn._validation import as_float_array, check_scalar, common_dtype
from fastnn.functional._course import CourseTuple
from fastnn.functional.activations import (_check_slope, _prelu_vector, _slope_gradient, maxout_reduce_backward,
                                           maxout_reduce_forward)

__all__ = [
    "affine_forward", "affine_backward",
    "affine_relu_forward", "affine_relu_backward",
    "affine_leaky_relu_forward", "affine_leaky_relu_backward",
    "affine_sigmoid_forward", "affine_sigmoid_backward",
    "affine_tanh_forward", "affine_tanh_backward",
    "affine_prelu_forward", "affine_prelu_backward",
    "maxout_forward", "maxout_backward",
]

_INT32_MAX = 2**31 - 1


_LEAKY = _ka.LEAKY_RELU


class DenseCache(CourseTuple):
    """What a dense forward keeps for its backward."""

    __slots__ = ("op", "x2", "x_shape", "w", "b", "saved", "alpha", "avec", "alpha_shape", "extra",
                 "alpha_src", "chunks", "m")

    def __init__(self, op, x2, x_shape, w, b, saved, alpha=0.0, avec=None, alpha_shape=None, extra=None):
        self.op = op
        self.x2 = x2
        self.x_shape = x_shape
        self.w = w
        self.m = w.shape[-1]   # the outputs at forward: w is read live, and may have changed
        self.b = b
        self.saved = saved
        self.alpha = alpha
        self.avec = avec
        self.alpha_shape = alpha_shape
        self.extra = extra
        self.alpha_src = None
        self.chunks = 0   # 1: the forward cut its products as the step kernel does (the layer
                          # API: small layers in row chunks, bounded dx tiles); 2: also, the
                          # layer below takes dx straight in (its larger bound: dense.pyx)

    # Course code takes caches apart: ``x, w, b = cache`` in its affine_backward and
    # ``fc_cache, relu_cache = cache`` in its affine_relu_backward (or cache[0], cache[1]).
    # The caches of affine_forward and affine_relu_forward unpack and index the same way (x in
    # its original shape), so the course's backward functions take them. relu_cache is the
    # pre-activation ``x @ w + b``, which the fused kernel does not keep: it is computed with
    # NumPy, as the course's affine_forward computes it (a product, paid only by code that asks
    # for it). The other caches have no course counterpart. (CourseTuple does the rest.)
    def _course_len(self):
        if self.extra is None and self.x2 is not None:
            if self.op == _ka.IDENTITY:
                return 3
            if self.op == _ka.RELU:
                return 2
        raise TypeError("this cache is fastnn's own (only affine_forward's and "
                        "affine_relu_forward's unpack like the course's): pass it to the "
                        "matching fastnn.functional backward")

    def _course_item(self, i):
        fc = (self.x2.reshape(self.x_shape), self.w, self.b)
        if self.op == _ka.IDENTITY:
            return fc[i]
        return fc if i == 0 else self.x2.dot(np.asarray(self.w)) + np.asarray(self.b)



def _check_dim(value, what):
    if value > _INT32_MAX:
        raise ValueError(f"{what} is {value}, above the BLAS limit of 2**31 - 1")


def _operands(x, w, b, w_ndim=2, alpha=None):
    """Validated (x2, x_shape, w, b, dtype): x flattened to (N, D), all one float dtype (a
    per-unit PReLU ``alpha`` array takes part in the promotion)."""
    named = [("x", x), ("w", w), ("b", b)]
    if isinstance(alpha, np.ndarray) and alpha.ndim > 0:
        named.append(("alpha", alpha))
    dt = common_dtype(*named)
    # Shapes first, conversions after: a broadcast or strided view of a huge shape must be
    # refused before it is copied. (Lists are converted here: they already hold their data.)
    x = x if isinstance(x, np.ndarray) else as_float_array(x, "x", dt)
    w = w if isinstance(w, np.ndarray) else as_float_array(w, "w", dt)
    b = b if isinstance(b, np.ndarray) else as_float_array(b, "b", dt)
    if x.ndim < 1:
        raise ValueError(f"x must have a batch axis: shape (N, d1, ..., dk), got shape {x.shape}")
    n = x.shape[0]
    d = int(np.prod(x.shape[1:], dtype=np.int64))
    if w.ndim != w_ndim:
        raise ValueError(f"w must be {w_ndim}-D, got shape {w.shape}")
    if w.shape[0] != d:
        raise ValueError(
            f"w must have {d} rows (the product of x.shape[1:] = {x.shape[1:]}), got shape {w.shape}"
        )
    if b.shape != w.shape[1:]:
        raise ValueError(f"b must have shape {w.shape[1:]}, got {b.shape}")
    m = int(np.prod(w.shape[1:], dtype=np.int64))
    for value, what in ((n, "N (x's batch size)"), (d, "D (x's features per row: the product of "
                        "x.shape[1:])"), (m, "the number of outputs (of w)")):
        _check_dim(value, what)
    x = as_float_array(x, "x", dt)
    w = as_float_array(w, "w", dt)
    b = as_float_array(b, "b", dt)
    return x.reshape(n, d), x.shape, w, b, dt


def _live(arg, converted):
    """What a cache keeps of a parameter: the caller's own array (backward converts it again),
    so that in-place changes between forward and backward are seen, as in the course code, also
    for a non-contiguous w or one of another float dtype."""
    return arg if isinstance(arg, np.ndarray) else converted


def _forward(op, x, w, b, alpha=0.0, prelu_alpha=None, chunks=False):
    """chunks: 1 or 2 cut the products as the step kernel does (the layer API: small layers in
    row chunks, bounded dx tiles; 2 when the layer below takes dx straight in; see
    _kd.dense_forward)."""
    if op != _ka.PRELU:
        res = _kd.forward_fast(op, x, w, b, alpha, _threads._num_threads, chunks)
        if res is not None:
            # (the common case, checked and run in compiled code: csrc/dense.pyx)
            y, z = res
            cache = DenseCache(op, x, x.shape, w, b, y if z is None else z, alpha)
            cache.chunks = chunks
            return y, cache
    w_arg = w
    x2, x_shape, w, b, dt = _operands(x, w, b, alpha=prelu_alpha)
    n, m = x2.shape[0], w.shape[1]
    avec = alpha_shape = None
    if op == _ka.PRELU:
        avec, alpha_shape = _prelu_vector(prelu_alpha, m, dt, per="unit")
    keep = op in (_ka.LEAKY_RELU, _ka.PRELU)
    y = np.empty((n, m), dtype=dt)
    z = np.empty((n, m), dtype=dt) if keep else None
    if x2.shape[1] == 0:
        # No inputs: every unit sees only its bias.
        pre = np.broadcast_to(b, (n, m))
        if keep:
            z[...] = pre
        pre = np.ascontiguousarray(pre)
        if op == _ka.PRELU:
            _ka.prelu_forward(pre, avec, y, _threads._num_threads)
        else:
            _ka.forward(op, pre.reshape(-1), y.reshape(-1), alpha, _threads._num_threads)
    else:
        _kd.dense_forward(op, x2, w, b, y, z, alpha, avec, _threads._num_threads, chunks)
    saved = z if keep else y
    cache = DenseCache(op, x2, x_shape, _live(w_arg, w), b, saved, alpha, avec, alpha_shape)
    cache.alpha_src = prelu_alpha
    cache.chunks = chunks
    return y, cache


def _check_cache(cache, op, name):
    if not isinstance(cache, DenseCache):
        raise TypeError(f"cache must be the cache returned by {name}_forward, got {type(cache).__name__}")
    try:
        bad = cache.op != op or cache.extra is not None
    except AttributeError:   # (a DenseCache made without __init__, by __new__: no fields)
        bad = True
    if bad:
        raise ValueError(f"cache does not come from {name}_forward")


def _check_cache_arrays(cache, op, name):
    """The arrays a dense cache holds have the shapes its forward gave them (a cache is an
    opaque object, but a damaged one must be an error, not a kernel call on bad buffers).
    Returns (n, d, m)."""
    x2, w = cache.x2, cache.w
    if not isinstance(x2, np.ndarray) or x2.ndim != 2 or x2.dtype.kind != "f":
        raise ValueError(f"cache is damaged or not from {name}_forward: its input is "
                         f"{type(x2).__name__ if not isinstance(x2, np.ndarray) else x2.shape}")
    n, d = x2.shape
    m = cache.m
    if not isinstance(w, np.ndarray) or w.shape != (d, m):
        raise ValueError(f"w changed shape since forward: expected {(d, m)}, got "
                         f"{np.shape(w) if isinstance(w, np.ndarray) else type(w).__name__}")
    if op == _LEAKY or type(cache.alpha) is not float:
        # (the kernels take the slope as a C double, whichever activation: a damaged one must
        # not be an OverflowError or a TypeError that names nothing)
        _check_slope(cache, name)
    chunks = cache.chunks
    if type(chunks) not in (int, bool) or not 0 <= chunks <= 2:   # (the forward's: False or 0..2)
        raise ValueError(f"cache is damaged or not from {name}_forward: its cut of the products "
                         f"is {chunks!r}")
    xs = cache.x_shape
    if not (isinstance(xs, tuple) and len(xs) >= 1 and xs[0] == n and math.prod(xs[1:]) == d
            and (len(xs) == 2 and type(xs[0]) is int and type(xs[1]) is int   # (x2's own)
                 or all(type(v) is int and v >= 0 for v in xs))):
        raise ValueError(f"cache is damaged or not from {name}_forward: input shape {xs!r} "
                         f"does not match its flattened input {x2.shape}")
    if op != _ka.IDENTITY:
        saved = cache.saved
        if not isinstance(saved, np.ndarray) or saved.shape != (n, m):
            raise ValueError(f"cache is damaged or not from {name}_forward: its saved activations "
                             f"have shape {np.shape(saved) if isinstance(saved, np.ndarray) else None}, "
                             f"expected {(n, m)}")
    if op == _ka.PRELU:
        avec = cache.avec
        if not isinstance(avec, np.ndarray) or avec.shape != (m,):
            raise ValueError(f"cache is damaged or not from {name}_forward: its slopes have shape "
                             f"{np.shape(avec) if isinstance(avec, np.ndarray) else None}, expected {(m,)}")
    return n, d, m


def _from_course(op, cache, name):
    """The course's own caches, as its layers.py and layer_utils.py make them: ``(x, w, b)``
    from affine_forward, ``((x, w, b), a)`` from affine_relu_forward (a, the pre-activation, is
    its relu_cache), as fastnn's, so that fastnn's backward follows a course forward. Anything
    else is returned as it is (for _check_cache to name)."""
    if type(cache) is not tuple:
        return cache
    shape = "(x, w, b)" if op == _ka.IDENTITY else "(fc_cache, relu_cache)"
    bad = TypeError(f"cache must be the cache returned by {name}_forward, or the course's "
                    f"{shape}: got a tuple of {len(cache)} entries")
    pre = None
    if op == _ka.IDENTITY:
        if len(cache) != 3:
            raise bad
        fc = cache
    else:
        if len(cache) != 2:
            raise bad
        fc, pre = cache
        if isinstance(fc, DenseCache):
            # fastnn's affine_forward cache (course code that builds the sandwich from
            # fastnn's pieces): its (x, w, b), checked as affine_backward checks it
            if getattr(fc, "op", None) != _ka.IDENTITY or getattr(fc, "extra", None) is not None:
                raise TypeError("cache's fc_cache must be the course's (x, w, b) or "
                                "affine_forward's cache, got another fastnn cache")
            _check_cache_arrays(fc, _ka.IDENTITY, "affine")
            fc = tuple(fc)
        if type(fc) is not tuple:
            raise TypeError(f"cache's fc_cache must be the course's (x, w, b) or "
                            f"affine_forward's cache, got {type(fc).__name__}")
    if len(fc) != 3:
        raise TypeError(f"cache's (x, w, b) must have 3 entries, got {len(fc)}")
    w_arg = fc[1]
    try:
        x2, x_shape, w, b, dt = _operands(*fc)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"cache (the course's (x, w, b)): {exc}") from None
    saved = None
    if pre is not None:
        want = (x2.shape[0], w.shape[1])
        # (the shape is checked before an array is converted: a huge broadcast view of the
        # wrong shape is refused, not copied)
        a = as_float_array(pre, "cache's relu_cache", shape=want,
                           shape_text=f"shape {want} (x @ w + b)")
        # the derivative reads only where the saved values are > 0: the mask itself, exact
        # whatever the dtypes (a float64 a below float32's range stays > 0)
        saved = (a > 0).astype(dt)
    return DenseCache(op, x2, x_shape, _live(w_arg, w), b, saved)


def _backward(op, dout, cache, name, need_dx=True, dw=None, db=None):
    """Gradients for a dense cache. The layer API passes need_dx=False for a network's first
    layer (its dx product is skipped) and its own gradient arrays as dw/db, filled in place."""
    _check_cache(cache, op, name)
    _check_cache_arrays(cache, op, name)
    x2, w = cache.x2, cache.w
    if op != _ka.PRELU and dw is None and db is None:
        res = _kd.backward_fast(op, dout, cache.saved, x2, w, need_dx, cache.alpha,
                                _threads._num_threads, cache.chunks)
        if res is not None:
            # (the common case, checked and run in compiled code: csrc/dense.pyx)
            dx = res[0]
            if dx is not None and len(cache.x_shape) != 2:
                dx = dx.reshape(cache.x_shape)
            return dx, res[1], res[2]
    if op != _ka.PRELU and type(dout) is np.ndarray and type(w) is np.ndarray:
        # Fast path (the layer API's own dw and db): everything already in one float dtype
        # and C order (as dense.forward_fast takes a forward).
        dt = x2.dtype
        if dout.dtype is dt and w.dtype is dt and dout.ndim == 2:
            n, d = x2.shape
            m = w.shape[-1]
            if dw is None or dw.dtype is not dt:
                dw = np.empty((d, m), dtype=dt)
            if db is None or db.dtype is not dt:
                db = np.empty(m, dtype=dt)
            dx = np.empty((n, d), dtype=dt) if need_dx else None
            dz = None if op == _ka.IDENTITY else np.empty((n, m), dtype=dt)
            try:
                _kd.dense_backward(op, dout, cache.saved, x2, w, dx, dw, db, dz, cache.alpha,
                                   None, None, _threads._num_threads, cache.chunks)
            except (ValueError, TypeError, BufferError):
                pass  # the checked path below redoes it, or names the problem
            else:
                if dx is not None and len(cache.x_shape) != 2:
                    dx = dx.reshape(cache.x_shape)
                return dx, dw, db
    dt = common_dtype(("dout", dout), ("cache", x2), ("w", w))
    n, d = x2.shape
    m = cache.m   # (w's shape is checked against it: _check_cache_arrays)
    dout = as_float_array(dout, "dout", dt, shape=(n, m))
    x2 = as_float_array(x2, "cache", dt)
    w = as_float_array(w, "w", dt)
    saved = None if op == _ka.IDENTITY else as_float_array(cache.saved, "cache", dt)
    avec = None
    if cache.avec is not None:
        # Read the slopes live, as w: the caller's alpha array as it is now.
        src = cache.alpha_src
        avec = (_prelu_vector(src, m, dt, per="unit")[0] if isinstance(src, np.ndarray)
                else as_float_array(cache.avec, "cache", dt))
    dx = np.empty((n, d), dtype=dt) if need_dx else None
    if dw is None or dw.dtype != dt:
        dw = np.empty((d, m), dtype=dt)
    if db is None or db.dtype != dt:
        db = np.empty(m, dtype=dt)
    dz = None if op == _ka.IDENTITY else np.empty((n, m), dtype=dt)
    dalpha = np.empty(m, dtype=dt) if op == _ka.PRELU else None
    _kd.dense_backward(op, dout, saved, x2, w, dx, dw, db, dz, cache.alpha, avec, dalpha,
                       _threads._num_threads, cache.chunks)
    if dx is not None:
        dx = dx.reshape(cache.x_shape)
    if op == _ka.PRELU:
        return dx, dw, db, _slope_gradient(dalpha, cache.alpha_shape, dt)
    return dx, dw, db


# ----------------------------------------------------------------------------- public API
def affine_forward(x, w, b):
    """``out = x.reshape(N, -1) @ w + b``. Returns ``(out, cache)``."""
    return _forward(_ka.IDENTITY, x, w, b)


def affine_backward(dout, cache):
    """Returns ``(dx, dw, db)``, dx in x's original shape. ``cache`` is affine_forward's, or
    the course's ``(x, w, b)``."""
    return _backward(_ka.IDENTITY, dout, _from_course(_ka.IDENTITY, cache, "affine"), "affine")


def affine_relu_forward(x, w, b):
    """``relu(x @ w + b)`` in one call: product, bias and ReLU fused per tile."""
    return _forward(_ka.RELU, x, w, b)


def affine_relu_backward(dout, cache):
    """Returns ``(dx, dw, db)``. ``cache`` is affine_relu_forward's, or the course's
    ``(fc_cache, relu_cache)`` (fc_cache the course's ``(x, w, b)`` or affine_forward's cache,
    relu_cache the pre-activation). Taken apart by course code, affine_relu_forward's cache
    gives a relu_cache computed then from x, w and b as they are at that moment (the kernel
    keeps no pre-activation): change them in place between forward and backward and it is not
    the forward's, while this function's mask is (it reads the forward's output)."""
    return _backward(_ka.RELU, dout, _from_course(_ka.RELU, cache, "affine_relu"), "affine_relu")


def affine_leaky_relu_forward(x, w, b, alpha=0.01):
    """``leaky_relu(x @ w + b, alpha)`` in one call: product, bias and activation fused per tile."""
    return _forward(_ka.LEAKY_RELU, x, w, b, check_scalar(alpha, "alpha"))


def affine_leaky_relu_backward(dout, cache):
    """Returns ``(dx, dw, db)`` from affine_leaky_relu_forward's cache; dx in x's shape."""
    return _backward(_ka.LEAKY_RELU, dout, cache, "affine_leaky_relu")


def affine_sigmoid_forward(x, w, b):
    """``sigmoid(x @ w + b)`` in one call: product, bias and activation fused per tile."""
    return _forward(_ka.SIGMOID, x, w, b)


def affine_sigmoid_backward(dout, cache):
    """Returns ``(dx, dw, db)`` from affine_sigmoid_forward's cache; dx in x's shape."""
    return _backward(_ka.SIGMOID, dout, cache, "affine_sigmoid")


def affine_tanh_forward(x, w, b):
    """``tanh(x @ w + b)`` in one call: product, bias and activation fused per tile."""
    return _forward(_ka.TANH, x, w, b)


def affine_tanh_backward(dout, cache):
    """Returns ``(dx, dw, db)`` from affine_tanh_forward's cache; dx in x's shape."""
    return _backward(_ka.TANH, dout, cache, "affine_tanh")


def affine_prelu_forward(x, w, b, alpha):
    """``prelu(x @ w + b, alpha)``, alpha a scalar, one value per unit, or shape (1,): one
    slope shared by every unit."""
    return _forward(_ka.PRELU, x, w, b, prelu_alpha=alpha)


def affine_prelu_backward(dout, cache):
    """Returns ``(dx, dw, db, dalpha)``, dalpha shaped like the alpha given to forward."""
    return _backward(_ka.PRELU, dout, cache, "affine_prelu")


def maxout_forward(x, w, b):
    """Maxout units: ``out[n, m] = max_p (x[n] @ w[:, m, p] + b[m, p])`` with w (D, M, k) and
    b (M, k): one product for all pieces, then the max over pieces."""
    w_arg = w
    x2, x_shape, w, b, dt = _operands(x, w, b, w_ndim=3)
    n, d = x2.shape
    _, m, k = w.shape
    if not 1 <= k <= 127:
        raise ValueError(f"w must have 1 to 127 pieces on its last axis, got {k}")
    w2 = w.reshape(d, m * k)
    z, lin_cache = _forward(_ka.IDENTITY, x2, w2, b.reshape(m * k))
    out, red_cache = maxout_reduce_forward(z.reshape(n, m, k))
    cache = DenseCache(_ka.IDENTITY, x2, x_shape, w2, b, None, extra=(red_cache, _live(w_arg, w)))
    return out, cache


def maxout_backward(dout, cache):
    """Returns ``(dx, dw, db)`` with dw (D, M, k) and db (M, k)."""
    return _maxout_backward(dout, cache)


def _maxout_backward(dout, cache, need_dx=True, dw=None, db=None):
    """maxout_backward; the layer API passes need_dx=False for a network's first layer and its
    own gradient arrays as dw/db, filled in place (as _backward)."""
    if not isinstance(cache, DenseCache) or getattr(cache, "extra", None) is None:
        raise TypeError("cache must be the cache returned by maxout_forward")
    if not (isinstance(cache.extra, tuple) and len(cache.extra) == 2):
        raise ValueError("cache is damaged or not from maxout_forward")
    red_cache, w3 = cache.extra
    dz = maxout_reduce_backward(dout, red_cache)
    n, m, k = dz.shape
    if not isinstance(w3, np.ndarray) or w3.ndim != 3 or w3.shape[1:] != (m, k):
        raise ValueError(f"w changed shape since forward: expected (D, {m}, {k}), got "
                         f"{np.shape(w3) if isinstance(w3, np.ndarray) else type(w3).__name__}")
    lin = DenseCache(_ka.IDENTITY, cache.x2, cache.x_shape, w3.reshape(w3.shape[0], m * k), cache.b, None)
    dx, dw, db = _backward(_ka.IDENTITY, dz.reshape(n, m * k), lin, "maxout", need_dx=need_dx,
                           dw=None if dw is None else dw.reshape(w3.shape[0], m * k),
                           db=None if db is None else db.reshape(m * k))
    return dx, dw.reshape(w3.shape), db.reshape(m, k)
