"""Numerical gradients by centered differences, with the course's gradient_check.py interface.

These perturb ``x`` IN PLACE (and restore it), exactly like the course helpers: that is how
they reach parameters that a model reads live from its arrays.

They call ``f`` as often and in the same order as the course's helpers, so an ``f`` that draws
random numbers (dropout without a seed) leaves ``np.random`` where the course's would:
``eval_numerical_gradient`` evaluates ``f(x)`` once at the unperturbed point first, as the
course does (its value is not used), then ``f(x + h)`` and ``f(x - h)`` per entry: 2n + 1 calls
for n entries; ``eval_numerical_gradient_array`` makes 2n calls and ``grad_check_sparse``
2 * num_checks, neither with a first call.
"""
from random import randrange

import numpy as np

from fastnn._validation import check_int, check_scalar, numeric_array

__all__ = ["eval_numerical_gradient", "eval_numerical_gradient_array", "grad_check_sparse", "rel_error"]


def rel_error(x, y):
    """Max relative error ``|x - y| / max(1e-8, |x| + |y|)`` (the course's definition); 0.0
    for two empty arrays."""
    x = numeric_array(x, "x").astype(np.float64, copy=False)   # (complex would lose its
    y = numeric_array(y, "y").astype(np.float64, copy=False)   # imaginary part: refused)
    try:
        np.broadcast_shapes(x.shape, y.shape)   # (NumPy's rule, as the course's x - y has it)
    except ValueError:
        raise ValueError(f"x and y must have the same shape (or shapes that broadcast), got "
                         f"{x.shape} and {y.shape}") from None
    err = np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))
    return float(np.max(err)) if err.size else 0.0


def _check_point(f, x, h):
    """f must be callable, x a float ndarray (it is perturbed in place: an int array would
    round x + h back to x) and h a positive finite step."""
    if not callable(f):
        raise TypeError(f"f must be a callable f(x), got {type(f).__name__}")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray (perturbed in place), got {type(x).__name__}")
    if x.dtype.kind != "f" or x.dtype.itemsize < 4:
        raise TypeError(f"x must be a float32 or float64 array, got dtype {x.dtype}")
    if not x.flags.writeable:
        raise ValueError("x must be writeable (it is perturbed in place)")
    return check_scalar(h, "h", lo=0.0, lo_open=True)


def _plus_minus(f, x, ix, h, as_array=False):
    """(f(x + h e_ix), f(x - h e_ix)), perturbing x[ix] in place and always restoring it."""
    old = x[ix]
    try:
        x[ix] = old + h
        pos = f(x)
        if as_array:
            pos = np.array(pos, copy=True)
        x[ix] = old - h
        neg = f(x)
        if as_array:
            neg = np.array(neg, copy=True)
    finally:
        x[ix] = old
    return pos, neg


def _difference(pos, neg):
    """pos - neg, in float64 when either is an integer or bool NumPy value (an unsigned
    difference wraps: f(x) = (x < 0) as uint8 gave the gradient +127.5 for -0.5, and NumPy
    refuses to subtract bools); float values as they are, as the course's helper does."""
    if (getattr(pos, "dtype", None) is not None and pos.dtype.kind in "biu") or (
            getattr(neg, "dtype", None) is not None and neg.dtype.kind in "biu"):
        return np.asarray(pos, dtype=np.float64) - np.asarray(neg, dtype=np.float64)
    return pos - neg


def _not_a_number(value, exc):
    """The TypeError for an f that returned `value`, not a number (a scalar loss)."""
    return TypeError(f"f must return a number (a scalar loss), got {type(value).__name__}: {exc}")


def eval_numerical_gradient(f, x, verbose=True, h=1e-5):
    """Gradient of the scalar function ``f(x)`` at ``x`` (an array changed in place and restored).
    ``f(x)`` is evaluated once first, as the course's helper does, then twice per entry. An empty
    x has an empty gradient (of x's shape and dtype; f is called that first time only)."""
    h = _check_point(f, x, h)
    f(x)  # the course's ``fx = f(x)``: unused, but it draws what f draws
    grad = np.zeros_like(x)
    if x.size == 0:  # np.nditer refuses zero-sized operands
        return grad
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        fxph, fxmh = _plus_minus(f, x, ix, h)
        try:
            grad[ix] = _difference(fxph, fxmh) / (2 * h)
        except (TypeError, ValueError) as exc:
            raise _not_a_number(fxph, exc) from None
        if verbose:
            print(ix, grad[ix])
        it.iternext()
    return grad


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Gradient of ``sum(f(x) * df)``: for a function returning an array with upstream ``df``
    of that array's shape, or a number (the course's helper takes one: the gradient of
    ``df * sum(f(x))``); a ValueError naming df for another shape (NumPy would broadcast a
    (1,) or (n, 1) one without a word), at the first evaluation. An empty x has an empty
    gradient (of x's shape and dtype; f is not called)."""
    h = _check_point(f, x, h)
    df = numeric_array(df, "df")
    grad = np.zeros_like(x)
    if x.size == 0:  # np.nditer refuses zero-sized operands
        return grad
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        pos, neg = _plus_minus(f, x, ix, h, as_array=True)
        for value in (pos, neg):
            if value.dtype.kind not in "biuf":
                raise TypeError(f"f must return an array of real numbers or a number, got "
                                f"{type(value.item()).__name__ if value.ndim == 0 else value.dtype}")
        if df.ndim and (pos.shape != df.shape or neg.shape != df.shape):   # (broadcasting would hide it)
            raise ValueError(f"df must have the shape of f(x) {pos.shape if pos.shape != df.shape else neg.shape}, "
                             f"got {df.shape}")
        grad[ix] = np.sum(_difference(pos, neg) * df) / (2 * h)
        it.iternext()
    return grad


def grad_check_sparse(f, x, analytic_grad, num_checks=10, h=1e-5):
    """Compare ``analytic_grad`` with centered differences at ``num_checks`` random entries;
    prints each comparison and returns the list of relative errors."""
    h = _check_point(f, x, h)
    num_checks = check_int(num_checks, "num_checks", minimum=0)
    if np.shape(analytic_grad) != x.shape:
        raise ValueError(f"analytic_grad must have the shape of x {x.shape}, got {np.shape(analytic_grad)}")
    if x.size == 0 and num_checks:
        raise ValueError("x is empty: there is no entry to check")
    # real numbers, as rel_error takes them (not complex, object or masked: their entries
    # would be compared as if they were plain floats)
    analytic_grad = numeric_array(analytic_grad, "analytic_grad")
    errors = []
    for _ in range(num_checks):
        ix = tuple(randrange(m) for m in x.shape)
        fxph, fxmh = _plus_minus(f, x, ix, h)
        try:
            numeric = _difference(fxph, fxmh) / (2 * h)
            if np.ndim(numeric) != 0:
                raise TypeError(f"an array of shape {np.shape(numeric)}")
            if np.iscomplexobj(numeric):   # (eval_numerical_gradient's float grad refuses it)
                raise TypeError("a complex number")
        except (TypeError, ValueError) as exc:
            raise _not_a_number(fxph, exc) from None
        analytic = analytic_grad[ix]
        err = abs(numeric - analytic) / max(1e-12, abs(numeric) + abs(analytic))
        errors.append(err)
        print(f"numerical: {numeric:f} analytic: {analytic:f}, relative error: {err:e}")
    return errors
