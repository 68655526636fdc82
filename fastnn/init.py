"""Weight initializers: He (ReLU family), Xavier/Glorot (the rest), and the course's
``weight_scale * randn``. Each takes ``(shape, rng, dtype=np.float32)``: the weight's shape
(fan_in is ``shape[0]``, fan_out the product of the rest), a numpy Generator and the dtype.
``scaled_normal(weight_scale)`` returns such an initializer."""
import numbers

import numpy as np

from fastnn._validation import check_int, check_scalar, too_many_entries

__all__ = ["he_normal", "xavier_normal", "glorot_normal", "scaled_normal", "get_initializer", "default_for"]


def _check_rng(rng):
    if not isinstance(rng, (np.random.Generator, np.random.RandomState)):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _check_args(shape, rng, dtype):
    """shape as a tuple of ints >= 0 (what NumPy takes as a size: an int, a sequence or 1-D
    array of ints), rng a NumPy random source, dtype a float32 or float64 dtype (either byte
    order); TypeError / ValueError naming the bad one."""
    _check_rng(rng)
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    elif isinstance(shape, np.ndarray) and shape.ndim == 1:
        shape = tuple(shape.tolist())
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be an int or a tuple of ints, got {type(shape).__name__}")
    shape = tuple(check_int(n, "shape", minimum=0) for n in shape)
    if too_many_entries(shape):   # (NumPy's own "array is too big" named nothing)
        raise ValueError(f"shape {shape} has more entries than an array can hold")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt.kind != "f" or dt.itemsize not in (4, 8):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return shape, dt


# float64 normals drawn at once by scaled_draws (8 MiB)
_DRAW_BLOCK = 1 << 20


def scaled_draws(standard_normal, shape, scale, dtype):
    """``(standard_normal(shape) * scale).astype(dtype)``, the same numbers, drawn in blocks of
    _DRAW_BLOCK values: ``standard_normal(n)`` gives the next n float64 draws, and NumPy's
    generators (Generator and the legacy RandomState alike) give the same stream however it
    is split. So the float64 draw never holds more than a block: drawn whole, the draw and
    the float32 result held 3x the weight's size at once (48 MiB for a 2048 x 2048 weight;
    24 MiB in blocks)."""
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)
    for start in range(0, flat.size, _DRAW_BLOCK):
        block = standard_normal(min(_DRAW_BLOCK, flat.size - start))
        block *= scale
        flat[start:start + block.size] = block
        del block   # (before the next block is drawn)
    return out


def he_normal(shape, rng, dtype=np.float32):
    """N(0, 2 / fan_in): keeps the variance of ReLU activations constant across layers."""
    shape, dtype = _check_args(shape, rng, dtype)
    fan_in = shape[0] if shape else 1
    return scaled_draws(rng.standard_normal, shape, np.sqrt(2.0 / max(1, fan_in)), dtype)


def xavier_normal(shape, rng, dtype=np.float32):
    """N(0, 2 / (fan_in + fan_out)) (Glorot and Bengio), for tanh/sigmoid/linear units."""
    shape, dtype = _check_args(shape, rng, dtype)
    fan_in, fan_out = (shape[0] if shape else 1), int(np.prod(shape[1:]))
    return scaled_draws(rng.standard_normal, shape, np.sqrt(2.0 / max(1, fan_in + fan_out)), dtype)


glorot_normal = xavier_normal


def scaled_normal(weight_scale):
    """The course's ``weight_scale * randn(...)``."""
    weight_scale = check_scalar(weight_scale, "weight_scale", lo=0.0)

    def init(shape, rng, dtype=np.float32):
        shape, dtype = _check_args(shape, rng, dtype)
        with np.errstate(over="ignore"):   # (refused below, naming weight_scale)
            w = scaled_draws(rng.standard_normal, shape, weight_scale, dtype)
        if weight_scale * 40.0 > float(np.finfo(dtype).max) and not np.isfinite(w).all():
            # (a scale near the dtype's largest value: a draw times it can overflow; a normal
            # draw is below 40 in magnitude, so smaller scales never do and skip the pass)
            raise ValueError(f"weight_scale {weight_scale} times a normal draw overflows {dtype}")
        return w

    init.__name__ = f"scaled_normal({weight_scale})"
    init.spec = ("scaled_normal", float(weight_scale))
    return init


_BY_NAME = {"he": he_normal, "he_normal": he_normal, "xavier": xavier_normal,
            "xavier_normal": xavier_normal, "glorot": xavier_normal, "glorot_normal": xavier_normal}


def default_for(activation):
    """He for the ReLU family, Xavier/Glorot otherwise (linear outputs included)."""
    return he_normal if activation in ("relu", "leaky_relu", "prelu") else xavier_normal


def get_initializer(spec, activation=None):
    """An initializer from a name ('he', 'xavier', 'glorot'), a number (the course's
    weight_scale), a callable ``f(shape, rng, dtype)``, or None (the default for the activation)."""
    if spec is None:
        return default_for(activation)
    if isinstance(spec, str):
        try:
            return _BY_NAME[spec.lower()]
        except KeyError:
            raise ValueError(f"weight_init must be one of {sorted(_BY_NAME)}, a number or a callable, got {spec!r}") from None
    if isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        try:
            return scaled_normal(spec)
        except ValueError as exc:   # (named as this function's argument)
            raise ValueError(f"weight_init: {exc}") from None
    if callable(spec):
        return spec
    raise TypeError(f"weight_init must be a name, a number or a callable, got {type(spec).__name__}")
