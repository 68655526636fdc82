"""Small synthetic data sets like those of the course demos, generated from a seed.

- :func:`spiral`: K interleaved spiral arms in the plane, one class per arm;
- :func:`circle`: a ring around a smaller ring (or around a filled disk), two classes;
- :func:`regression_1d`: a noisy smooth function of one variable (``sin`` by default).

Every function takes ``seed``: an int gives the same data on every call; ``None`` draws the
generator's seed from NumPy's global random state, so ``np.random.seed(...)`` earlier in a script
also makes the data reproducible. A ``np.random.Generator`` may be passed as well and is used
as it is. Features come as ``dtype`` (float32 by default, or float64); class labels are int64.
Samples are returned grouped by class, not shuffled.
"""
import numbers

import numpy as np

from fastnn._validation import check_float_dtype, check_int, check_scalar, check_seed

__all__ = ["spiral", "circle", "regression_1d"]


def _generator(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng(np.random.randint(0, 2**63 - 1, dtype=np.int64))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None, a non-negative int or a np.random.Generator, "
                        f"got {type(seed).__name__}")
    return np.random.default_rng(check_seed(seed))


def spiral(n_per_class=100, n_classes=3, noise=0.2, seed=None, dtype=np.float32):
    """Points on ``n_classes`` spiral arms, ``n_per_class`` per arm: ``(X (N, 2), y (N,))``.

    Along arm k the radius grows evenly from 0 to 1 while the angle turns through 4 radians,
    starting at ``2 * pi * k / n_classes`` so that the arms are spread evenly around the origin;
    ``noise`` is the standard deviation of a normal perturbation of each point's angle.
    ``y`` holds the arm index (int64, in ``[0, n_classes)``)."""
    n_per_class = check_int(n_per_class, "n_per_class", below=2**31)
    n_classes = check_int(n_classes, "n_classes", below=2**31)
    if n_per_class * n_classes >= 2**31:
        raise ValueError(f"n_per_class * n_classes must be below 2**31 points, got "
                         f"{n_per_class} * {n_classes}")
    noise = check_scalar(noise, "noise", lo=0.0)
    dtype = check_float_dtype(dtype)
    rng = _generator(seed)

    radius = np.linspace(0.0, 1.0, n_per_class)
    X = np.empty((n_per_class * n_classes, 2), dtype=np.float64)
    y = np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class)
    for k in range(n_classes):
        start = 2.0 * np.pi * k / n_classes
        with np.errstate(over="ignore", invalid="ignore"):   # (_in_range names noise)
            angle = start + np.linspace(0.0, 4.0, n_per_class) + noise * rng.standard_normal(n_per_class)
            rows = slice(k * n_per_class, (k + 1) * n_per_class)
            X[rows, 0] = radius * np.sin(angle)
            X[rows, 1] = radius * np.cos(angle)
    return _in_range(X, dtype, f"noise = {noise} takes points to NaN or"), y


def circle(n=300, noise=0.1, factor=0.5, seed=None, dtype=np.float32, inner="ring"):
    """Two classes in the plane: ``(X (N, 2), y (N,))`` with ``N = n``.

    Class 0 is the unit circle (``n - n // 2`` points at evenly spaced angles); class 1
    (``n // 2`` points) is the circle of radius ``factor`` when ``inner='ring'``, or the disk of
    radius ``factor``, filled uniformly at random, when ``inner='disk'``. ``noise`` is the
    standard deviation of normal noise added to both coordinates. ``0 < factor < 1``."""
    n = check_int(n, "n", minimum=2, below=2**31)
    noise = check_scalar(noise, "noise", lo=0.0)
    factor = check_scalar(factor, "factor")
    if not 0.0 < factor < 1.0:
        raise ValueError(f"factor (the inner radius relative to the outer one) must be in (0, 1), got {factor}")
    if not isinstance(inner, str) or inner not in ("ring", "disk"):
        raise ValueError(f"inner must be 'ring' or 'disk', got {inner!r}")
    dtype = check_float_dtype(dtype)
    rng = _generator(seed)

    n_in = n // 2
    n_out = n - n_in
    t_out = np.linspace(0.0, 2.0 * np.pi, n_out, endpoint=False)
    outer = np.stack([np.cos(t_out), np.sin(t_out)], axis=1)
    if inner == "ring":
        t_in = np.linspace(0.0, 2.0 * np.pi, n_in, endpoint=False)
        r_in = np.full(n_in, factor)
    else:
        t_in = rng.uniform(0.0, 2.0 * np.pi, n_in)
        r_in = factor * np.sqrt(rng.uniform(0.0, 1.0, n_in))  # sqrt: uniform over the area
    inside = np.stack([r_in * np.cos(t_in), r_in * np.sin(t_in)], axis=1)

    X = np.concatenate([outer, inside])
    with np.errstate(over="ignore"):
        X += noise * rng.standard_normal(X.shape)
    y = np.concatenate([np.zeros(n_out, dtype=np.int64), np.ones(n_in, dtype=np.int64)])
    return _in_range(X, dtype, f"noise = {noise} takes points to NaN or"), y


def _in_range(values, dtype, what):
    """`values` (float64) in `dtype`, or a ValueError "<what> beyond the range of <dtype>" when
    one is not finite there (noise that took a point to NaN, the sine of an infinite angle, or
    past float32's range; fn's values past it)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = values.astype(dtype)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{what} beyond the range of {np.dtype(dtype).name}")
    return out


def regression_1d(n=200, noise=0.1, seed=None, dtype=np.float32, fn=None):
    """A noisy 1-D regression problem: ``(X (N, 1), y (N, 1))``.

    ``X`` holds ``n`` points drawn uniformly from ``[-pi, pi]`` and sorted; ``y = fn(X) + noise *
    N(0, 1)``. ``fn`` (default ``np.sin``) receives a float64 array of shape (N, 1) and must
    return N finite values (shape (N,) or (N, 1))."""
    n = check_int(n, "n", below=2**31)
    noise = check_scalar(noise, "noise", lo=0.0)
    dtype = check_float_dtype(dtype)
    if fn is None:
        fn = np.sin
    elif not callable(fn):
        raise TypeError(f"fn must be a callable taking an array of shape (N, 1), got {type(fn).__name__}")
    rng = _generator(seed)

    X = np.sort(rng.uniform(-np.pi, np.pi, n))[:, None]
    raw = np.asarray(fn(X.copy()))
    if raw.dtype.kind == "c":   # (a cast would drop the imaginary part)
        raise TypeError(f"fn must return real numbers, got dtype {raw.dtype}")
    try:   # (real numbers in an object or string array convert)
        target = raw.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"fn must return real numbers, got dtype {raw.dtype}: {exc}") from None
    if target.shape not in ((n,), (n, 1)):
        raise ValueError(f"fn must return {n} values, shape ({n},) or ({n}, 1); got shape {target.shape}")
    if not np.all(np.isfinite(target)):
        raise ValueError("fn returned values that are not finite")
    with np.errstate(over="ignore"):
        y = target.reshape(n, 1) + noise * rng.standard_normal((n, 1))
    return X.astype(dtype), _in_range(y, dtype, "fn returned values")
