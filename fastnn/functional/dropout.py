"""Inverted dropout and Gaussian input noise, course conventions.

``dropout_forward(x, dropout_param) -> (out, cache)``: ``dropout_param['p']`` is the probability
of KEEPING a unit, ``mode`` is 'train' or 'test', and an optional ``seed`` makes the mask the same
call after call (what numerical gradient checks need). Without a seed each 'train' call draws a
fresh one from NumPy's global random state, so ``np.random.seed`` makes a run reproducible; a
'test' call draws nothing.

The mask comes from a counter-based hash of (seed, element index) computed in the kernel: the
same for any thread count, and regenerated in backward from the seed instead of stored. A
dropped unit is exactly 0, also where x (or dout) is Inf or NaN; the course's ``x * mask``
gives NaN there.

``gaussian_noise_forward(x, std, mode='train', seed=None) -> (out, cache)``: the noise is a
standard normal per element from the same hash of (seed, index), by Box-Muller, in the kernel.
"""
import numpy as np

from fastnn import _threads
from fastnn._kernels import dropout as _kd
from fastnn._validation import as_float_array, check_scalar, check_seed, common_dtype
from fastnn.functional._course import CourseTuple

__all__ = ["dropout_forward", "dropout_backward", "gaussian_noise_forward", "gaussian_noise_backward"]


class DropoutCache(CourseTuple):
    """What dropout_forward keeps: the settings and the seed, from which backward regenerates
    the mask. Course code that unpacks it (``dropout_param, mask = cache``) gets a
    dropout_param and the course's mask (the kept units' ``1 / p``, zeros elsewhere; None in
    'test' mode), the mask computed then."""

    __slots__ = ("mode", "p", "seed", "shape", "dtype")

    def __init__(self, mode, p, seed, shape, dtype):
        self.mode, self.p, self.seed, self.shape, self.dtype = mode, p, seed, shape, dtype

    _course_entries = ": dropout_param, mask"

    def _course_len(self):
        return 2

    def _course_item(self, i):
        p, mode, seed = _cache_params(self)
        if i == 0:
            # (a 'test' mode call without a seed drew none: its dropout_param had none)
            return {"p": p, "mode": mode} if seed is None else {"p": p, "mode": mode, "seed": seed}
        if mode == "test":
            return None
        mask = np.ones(self.shape, dtype=self.dtype)
        _kd.dropout_apply(mask.reshape(-1), mask.reshape(-1), p, seed, _threads._num_threads)
        return mask


def _cache_params(cache):
    """(p, mode, seed) of a DropoutCache, checked again (a cache can be edited)."""
    if cache.seed is None and cache.mode != "test":
        raise ValueError("cache is damaged: its seed is None")
    if not (isinstance(cache.shape, tuple) and all(type(n) is int for n in cache.shape)):
        raise ValueError(f"cache is damaged: its shape is {cache.shape!r}")
    try:
        return _params({"p": cache.p, "mode": cache.mode, "seed": cache.seed})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cache is damaged or not from dropout_forward: {exc}") from None


def _check_mode(mode, name):
    """'train' or 'test' (a str; an array or other object is refused, not compared)."""
    if not (isinstance(mode, str) and mode in ("train", "test")):
        raise ValueError(f"{name} must be 'train' or 'test', got {mode!r}")
    return str(mode)


# The smallest keep probability taken. The kernel keeps an element when its 32-bit hash is
# below ceil(p * 2**32), a keep rate within 2**-32 of p, and scales kept elements by 1 / p:
# the mean of the output is x times ceil(p * 2**32) / (p * 2**32), at most 1 + 2**-32 / p.
# From 2**-16 on that is within 1.6e-5 of x; below, the bias grew to 16% at p = 1e-9 and to
# 233x at 1e-12, and at p = 1e-300 the scale itself overflowed float32 (an Inf output).
MIN_KEEP = 2.0 ** -16


def _params(dropout_param):
    if not isinstance(dropout_param, dict):
        raise TypeError(f"dropout_param must be a dict, got {type(dropout_param).__name__}")
    if "p" not in dropout_param:
        raise ValueError("dropout_param must have a 'p' entry (the probability of keeping a unit)")
    p = check_scalar(dropout_param["p"], "dropout_param['p']")
    if not MIN_KEEP <= p <= 1.0:
        raise ValueError(f"dropout_param['p'] is the keep probability and must be in "
                         f"[2**-16, 1] (the mask's keep rate is exact to 2**-32 only), got {p}")
    mode = _check_mode(dropout_param.get("mode", "train"), "dropout_param['mode']")
    seed = dropout_param.get("seed")
    if seed is None:
        # one draw per 'train' call; 'test' mode uses no mask and draws nothing (as the
        # course's), so scoring a model does not move np.random
        if mode == "train":
            seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"dropout_param['seed'] must be an int, got {type(seed).__name__}")
    elif not 0 <= int(seed) < 2**64:
        raise ValueError(f"dropout_param['seed'] must be in [0, 2**64), got {seed}")
    return p, mode, None if seed is None else int(seed)


def dropout_forward(x, dropout_param):
    """Returns ``(out, cache)``; in 'test' mode ``out`` is ``x`` itself (no copy)."""
    p, mode, seed = _params(dropout_param)
    x = as_float_array(x, "x")
    if mode == "test":
        return x, DropoutCache(mode, p, seed, x.shape, x.dtype)
    out = np.empty_like(x)
    _kd.dropout_apply(x.reshape(-1), out.reshape(-1), p, seed, _threads._num_threads)
    return out, DropoutCache(mode, p, seed, x.shape, x.dtype)


def dropout_backward(dout, cache):
    """``dout`` times the forward's mask ('train'), or ``dout`` itself ('test'). ``cache`` is
    dropout_forward's, or the course's ``(dropout_param, mask)``."""
    if type(cache) is tuple:
        return _course_backward(dout, cache)
    if not isinstance(cache, DropoutCache):
        raise TypeError(f"cache must be the cache returned by dropout_forward, got {type(cache).__name__}")
    # the fields the kernel reads, as dropout_forward checked them (a cache can be edited)
    p, mode, seed = _cache_params(cache)
    dout = as_float_array(dout, "dout", shape=cache.shape)
    if mode == "test":
        return dout
    dx = np.empty_like(dout)
    _kd.dropout_apply(dout.reshape(-1), dx.reshape(-1), p, seed, _threads._num_threads)
    return dx


def _course_backward(dout, cache):
    """The course's dropout_backward, for the course's cache ``(dropout_param, mask)``."""
    if len(cache) != 2 or not isinstance(cache[0], dict):
        raise TypeError("cache must be the cache returned by dropout_forward, or the course's "
                        "(dropout_param, mask)")
    dropout_param, mask = cache
    mode = _check_mode(dropout_param.get("mode", "train"), "cache's dropout_param['mode']")
    if mode == "test":
        return as_float_array(dout, "dout")
    try:
        kind = np.asarray(mask).dtype.kind if mask is not None else None
    except ValueError as exc:   # (a ragged list: NumPy's "inhomogeneous shape")
        raise ValueError(f"cache's mask must be an array of dout's shape: {exc}") from None
    if kind in ("b", "i", "u"):
        # the course's mask is float, 1 / p where a unit is kept; a bool or integer 0/1 mask
        # leaves the scaling to the code that made it, which fastnn cannot know
        raise TypeError(f"cache's mask is {'bool' if kind == 'b' else 'integer'}: the course's "
                        f"mask is (rand < p) / p, a float array holding the kept units' scale "
                        f"1 / p (multiply yours by 1 / p)")
    dt = common_dtype(("dout", dout), ("cache's mask", mask))
    # shapes first, conversions after: a huge broadcast view of the wrong shape is refused
    # before it is copied (lists are converted first: they already hold their data)
    mask = mask if isinstance(mask, np.ndarray) else as_float_array(mask, "cache's mask", dt)
    dout = as_float_array(dout, "dout", dt, shape=mask.shape,
                          shape_text=f"the shape of the cache's mask {mask.shape}")
    mask = as_float_array(mask, "cache's mask", dt)
    return dout * mask


def gaussian_noise_forward(x, std, mode="train", seed=None):
    """Input noise: ``x + std * N(0, 1)`` in 'train' mode, ``x`` in 'test' mode. Returns
    ``(out, cache)``. The noise is a counter-based draw from ``seed`` (an int in [0, 2**64)) and
    each element's index, made in the kernel: the same for any thread count. Without a seed,
    one is drawn from NumPy's global random state (so ``np.random.seed`` makes a run
    reproducible, as for dropout); a 'test' call draws nothing."""
    std = check_scalar(std, "std", lo=0.0)
    mode = _check_mode(mode, "mode")
    seed = check_seed(seed)
    if seed is not None and seed >= 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    x = as_float_array(x, "x")
    if mode == "test" or std == 0.0:
        return x, ("gaussian_noise", x.shape)
    if seed is None:
        seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
    return _noise(x, std, seed), ("gaussian_noise", x.shape)


def _noise(x, std, seed):
    """x + std * z for a C-contiguous float array x, z standard normal from (seed, index) by
    Box-Muller in the kernel (fastnn_simd.h, fnn_normal_pair; fastnn/reference/dropout.py has
    the same in NumPy). Also the GaussianNoise layer's, with a seed drawn from its generator."""
    out = np.empty_like(x)
    _kd.noise_apply(x.reshape(-1), out.reshape(-1), std, seed, _threads._num_threads)
    return out


def gaussian_noise_backward(dout, cache):
    """Additive noise passes the gradient through unchanged."""
    if not (isinstance(cache, tuple) and len(cache) == 2 and isinstance(cache[0], str)
            and cache[0] == "gaussian_noise"
            and isinstance(cache[1], tuple)):
        raise TypeError("cache must be the cache returned by gaussian_noise_forward")
    return as_float_array(dout, "dout", shape=cache[1])
