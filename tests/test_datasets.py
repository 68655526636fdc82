"""fastnn.datasets: the course demos' toy data, generated from a seed."""
import numpy as np
import pytest

from fastnn.datasets import circle, regression_1d, spiral


# ----------------------------------------------------------------------------- spiral
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_per_class, n_classes", [(100, 3), (7, 5), (1, 1)])
def test_spiral_shapes_dtypes_labels(n_per_class, n_classes, dtype):
    X, y = spiral(n_per_class, n_classes, seed=0, dtype=dtype)
    N = n_per_class * n_classes
    assert X.shape == (N, 2) and X.dtype == dtype
    assert y.shape == (N,) and y.dtype == np.int64
    assert y.min() == 0 and y.max() == n_classes - 1
    assert np.array_equal(np.bincount(y, minlength=n_classes), np.full(n_classes, n_per_class))
    assert np.isfinite(X).all()


def test_spiral_default_is_three_arms_of_one_hundred():
    X, y = spiral(seed=1)
    assert X.shape == (300, 2) and X.dtype == np.float32
    assert np.array_equal(np.bincount(y), [100, 100, 100])


def test_spiral_geometry():
    n, k = 50, 4
    X, y = spiral(n, k, noise=0.0, seed=0, dtype=np.float64)
    radius = np.linspace(0.0, 1.0, n)
    for c in range(k):
        pts = X[y == c]
        # the radius grows evenly from 0 to 1 along each arm (noise only moves the angle)
        np.testing.assert_allclose(np.hypot(pts[:, 0], pts[:, 1]), radius, atol=1e-15)
        # without noise the angle turns evenly through 4 radians from the arm's start
        angle = np.unwrap(np.arctan2(pts[1:, 0], pts[1:, 1]))  # x = r sin(a), y = r cos(a)
        turn = angle - angle[0]
        np.testing.assert_allclose(turn, np.linspace(0.0, 4.0, n)[1:] - 4.0 / (n - 1), atol=1e-12)
        start = angle[0] - 4.0 / (n - 1)
        np.testing.assert_allclose(np.angle(np.exp(1j * (start - 2 * np.pi * c / k))), 0.0, atol=1e-12)

    # noise perturbs the angle only: radii are unchanged, angles move
    Xn, _ = spiral(n, k, noise=0.3, seed=0, dtype=np.float64)
    np.testing.assert_allclose(np.hypot(Xn[:, 0], Xn[:, 1]), np.tile(radius, k), atol=1e-15)
    assert np.abs(Xn - X).max() > 0.05


# ----------------------------------------------------------------------------- circle
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [300, 7, 2])
@pytest.mark.parametrize("inner", ["ring", "disk"])
def test_circle_shapes_dtypes_labels(n, dtype, inner):
    X, y = circle(n, seed=0, dtype=dtype, inner=inner)
    assert X.shape == (n, 2) and X.dtype == dtype
    assert y.shape == (n,) and y.dtype == np.int64
    assert set(np.unique(y)) == {0, 1}
    assert np.count_nonzero(y == 1) == n // 2
    assert np.count_nonzero(y == 0) == n - n // 2


def test_circle_geometry():
    factor = 0.3
    X, y = circle(401, noise=0.0, factor=factor, seed=0, dtype=np.float64)
    r = np.hypot(X[:, 0], X[:, 1])
    np.testing.assert_allclose(r[y == 0], 1.0, atol=1e-15)
    np.testing.assert_allclose(r[y == 1], factor, atol=1e-15)

    X, y = circle(4000, noise=0.0, factor=factor, seed=0, dtype=np.float64, inner="disk")
    r = np.hypot(X[:, 0], X[:, 1])
    np.testing.assert_allclose(r[y == 0], 1.0, atol=1e-15)
    inside = r[y == 1]
    assert inside.max() <= factor
    # uniform over the disk: the fraction within radius s * factor is s**2
    assert np.mean(inside < 0.5 * factor) == pytest.approx(0.25, abs=0.03)

    noise = 0.05
    Xn, yn = circle(4000, noise=noise, factor=factor, seed=0, dtype=np.float64)
    X0, _ = circle(4000, noise=0.0, factor=factor, seed=0, dtype=np.float64)
    assert np.std(Xn - X0) == pytest.approx(noise, rel=0.05)


# ----------------------------------------------------------------------------- regression
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [200, 1])
def test_regression_shapes_and_dtypes(n, dtype):
    X, y = regression_1d(n, seed=0, dtype=dtype)
    assert X.shape == (n, 1) and y.shape == (n, 1)
    assert X.dtype == dtype and y.dtype == dtype
    assert (X >= -np.pi).all() and (X <= np.pi).all()
    assert np.all(np.diff(X[:, 0]) >= 0)


def test_regression_default_is_sine_and_fn_is_used():
    X, y = regression_1d(500, noise=0.0, seed=3, dtype=np.float64)
    np.testing.assert_array_equal(y, np.sin(X))
    assert X.min() < -2.5 and X.max() > 2.5  # spread over [-pi, pi]

    X2, y2 = regression_1d(500, noise=0.0, seed=3, dtype=np.float64, fn=lambda x: x ** 2)
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, X ** 2)
    # a function returning shape (N,) is accepted too
    _, y3 = regression_1d(500, noise=0.0, seed=3, dtype=np.float64, fn=lambda x: np.cos(x[:, 0]))
    np.testing.assert_array_equal(y3, np.cos(X))


def test_regression_noise_level():
    X, y = regression_1d(20000, noise=0.2, seed=5, dtype=np.float64)
    resid = y - np.sin(X)
    assert np.std(resid) == pytest.approx(0.2, rel=0.03)
    assert abs(np.mean(resid)) < 0.01


# ----------------------------------------------------------------------------- seeds
_MAKERS = {
    "spiral": lambda **kw: spiral(20, 3, **kw),
    "circle": lambda **kw: circle(60, **kw),
    "disk": lambda **kw: circle(60, inner="disk", **kw),
    "regression": lambda **kw: regression_1d(60, **kw),
}


@pytest.mark.parametrize("name", sorted(_MAKERS))
def test_same_seed_same_data(name):
    make = _MAKERS[name]
    (Xa, ya), (Xb, yb), (Xc, _) = make(seed=4), make(seed=4), make(seed=5)
    np.testing.assert_array_equal(Xa, Xb)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(Xa, Xc)


@pytest.mark.parametrize("name", sorted(_MAKERS))
def test_seed_none_follows_global_numpy_state(name):
    make = _MAKERS[name]
    np.random.seed(8)
    Xa, _ = make()
    Xb, _ = make()
    np.random.seed(8)
    Xc, _ = make()
    np.testing.assert_array_equal(Xa, Xc)
    assert not np.array_equal(Xa, Xb)


def test_generator_accepted_as_seed():
    Xa, _ = spiral(10, 2, seed=np.random.default_rng(3))
    Xb, _ = spiral(10, 2, seed=np.random.default_rng(3))
    np.testing.assert_array_equal(Xa, Xb)


def test_float32_is_float64_rounded():
    for make in _MAKERS.values():
        X32, y32 = make(seed=2)
        X64, y64 = make(seed=2, dtype=np.float64)
        np.testing.assert_array_equal(X32, X64.astype(np.float32))
        np.testing.assert_array_equal(y32, y64 if y64.dtype.kind == "i" else y64.astype(np.float32))


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "call, exc, word",
    [
        (lambda: spiral(0), ValueError, "n_per_class"),
        (lambda: spiral(-5), ValueError, "n_per_class"),
        (lambda: spiral(2.5), TypeError, "n_per_class"),
        (lambda: spiral(True), TypeError, "n_per_class"),
        (lambda: spiral(10, 0), ValueError, "n_classes"),
        (lambda: spiral(10, "3"), TypeError, "n_classes"),
        (lambda: spiral(noise=-0.1), ValueError, "noise"),
        (lambda: spiral(noise=float("nan")), ValueError, "noise"),
        (lambda: spiral(noise="a"), TypeError, "noise"),
        (lambda: spiral(dtype=np.int32), TypeError, "dtype"),
        (lambda: spiral(dtype=np.float16), TypeError, "dtype"),
        (lambda: spiral(seed=-1), ValueError, "seed"),
        (lambda: spiral(seed=1.5), TypeError, "seed"),
        (lambda: circle(1), ValueError, "^n "),
        (lambda: circle(0), ValueError, "^n "),
        (lambda: circle(10.0), TypeError, "^n "),
        (lambda: circle(noise=-1), ValueError, "noise"),
        (lambda: circle(factor=1.0), ValueError, "factor"),
        (lambda: circle(factor=0.0), ValueError, "factor"),
        (lambda: circle(factor=None), TypeError, "factor"),
        (lambda: circle(inner="square"), ValueError, "inner"),
        (lambda: circle(dtype="int64"), TypeError, "dtype"),
        (lambda: regression_1d(0), ValueError, "^n "),
        (lambda: regression_1d(None), TypeError, "^n "),
        (lambda: regression_1d(noise=-0.5), ValueError, "noise"),
        (lambda: regression_1d(noise=float("inf")), ValueError, "noise"),
        (lambda: regression_1d(fn=3), TypeError, "fn"),
        (lambda: regression_1d(10, fn=lambda x: x[:5]), ValueError, "fn"),
        (lambda: regression_1d(10, fn=lambda x: np.log(x)), ValueError, "fn"),
        (lambda: regression_1d(10, fn=lambda x: x * 1j), TypeError, "fn"),
        (lambda: regression_1d(10, fn=lambda x: np.array(["a"] * 10)), TypeError, "fn"),
        (lambda: regression_1d(10, fn=lambda x: [None] * 10), ValueError, "fn"),   # NaN
        # finite in float64, beyond float32: the targets came back as inf
        (lambda: regression_1d(10, fn=lambda x: x * 1e300), ValueError, "fn"),
        (lambda: regression_1d(dtype=complex), TypeError, "dtype"),
    ],
)
def test_argument_validation(call, exc, word):
    with np.errstate(invalid="ignore", divide="ignore"):
        with pytest.raises(exc, match=word):
            call()


def test_regression_fn_may_return_real_numbers_in_any_array():
    _, ref = regression_1d(20, noise=0.0, seed=1, dtype=np.float64)
    for fn in (lambda x: np.sin(x).astype(str), lambda x: np.array(list(np.sin(x[:, 0])), dtype=object),
               lambda x: np.sin(x).tolist()):
        _, y = regression_1d(20, noise=0.0, seed=1, dtype=np.float64, fn=fn)
        np.testing.assert_allclose(y, ref, rtol=1e-15)
