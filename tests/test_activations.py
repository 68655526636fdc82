"""The activation kernels (fastnn.functional.activations) against the NumPy reference
(fastnn.reference.activations): values, dtypes, shapes, layouts, special values, accuracy,
gradients, thread invariance, argument checking.

Tolerances, and why they are what they are:

- ReLU, Leaky ReLU, PReLU forward/dx and Maxout do one rounding at most, the same one as the
  reference: exact equality.
- float32 sigmoid/tanh: within 4 ulp of the float64-evaluated function rounded to float32
  (the contract in csrc/fastnn_simd.h: "within a few ulp of a correctly rounded result").
- float64 sigmoid/tanh: within 1e-15 relative (~4.5 eps) of the float64 reference.
- sigmoid/tanh backward compute ``dout * g(y)`` with ``g(y) = y(1-y)`` or ``(1-y)(1+y)`` in
  [0, 1] from the SAME saved ``y``. The reference's ``1 - y*y`` cancels near |y| = 1 (its
  absolute error is below eps), so against it the bound is ``eps * |dout| + 2 ulp(result)``;
  the kernel's own relative accuracy there is tested against the exact product (2 ulp).
- PReLU dalpha is a sum: the error bound of recursive summation, ``n * eps * sum(|terms|)``.
- numerical gradients (float64, central differences, h = 1e-5): truncation ~h**2 = 1e-10,
  rounding ~eps/h = 1e-11; rtol 1e-7 leaves a wide margin and any wrong formula is off by O(1).
"""
import warnings

import numpy as np
import pytest

import fastnn.functional as F
from fastnn._kernels import activations as _k
from fastnn.reference import activations as R

from conftest import (assert_same_bits, assert_thread_invariant, assert_ulp_close,
                      numerical_gradient, ulp_distance, ulp_of)

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]

SHAPES = [(), (0,), (0, 5), (5, 0), (1,), (1, 1), (7, 13), (3, 4, 5), (2, 3, 4, 5), (300_000,)]

LARGE = 400_001  # odd, not a multiple of the kernels' 16384-element chunk


# ============================================================================ op table
class Op:
    """One element-wise activation: functional forward/backward and the reference oracle."""

    def __init__(self, name, kind, exact, alpha=None):
        self.name = name          # test id
        self.kind = kind          # relu, leaky_relu, sigmoid, tanh
        self.exact = exact        # one rounding, the reference's: exact equality
        self.alpha = alpha        # leaky_relu only; None means the default (0.01)

    def fwd(self, x, **kw):
        f = getattr(F, self.kind + "_forward")
        if self.kind == "leaky_relu" and self.alpha is not None:
            return f(x, self.alpha, **kw)
        return f(x, **kw)

    def bwd(self, dout, cache, **kw):
        return getattr(F, self.kind + "_backward")(dout, cache, **kw)

    def ref_fwd(self, x):
        if self.kind == "leaky_relu":
            return R.leaky_relu_forward(x, 0.01 if self.alpha is None else self.alpha)[0]
        return getattr(R, self.kind + "_forward")(x)[0]

    def ref_bwd(self, dout, x, y):
        """Reference backward; the reference caches are x (relu/leaky) or y (sigmoid/tanh)."""
        if self.kind == "relu":
            return R.relu_backward(dout, x)
        if self.kind == "leaky_relu":
            return R.leaky_relu_backward(dout, (x, 0.01 if self.alpha is None else self.alpha))
        return getattr(R, self.kind + "_backward")(dout, y)

    def __repr__(self):
        return self.name


OPS = [
    Op("relu", "relu", True),
    Op("leaky_relu", "leaky_relu", True),               # default alpha=0.01
    Op("leaky_relu_a0.2", "leaky_relu", True, 0.2),
    Op("leaky_relu_a0", "leaky_relu", True, 0.0),
    Op("leaky_relu_a1.5", "leaky_relu", True, 1.5),
    Op("leaky_relu_a-0.3", "leaky_relu", True, -0.3),
    Op("sigmoid", "sigmoid", False),
    Op("tanh", "tanh", False),
]
KINDS = ["relu", "leaky_relu", "sigmoid", "tanh"]
OP_OF_KIND = {op.kind: op for op in OPS if op.alpha is None}
TRANSCENDENTAL = [op for op in OPS if not op.exact]

F32_MAXULP = 4
F64_RTOL = 1e-15


def _truth(op, x):
    """The op evaluated in float64 on the (exactly representable) inputs, rounded to x's dtype."""
    return op.ref_fwd(np.asarray(x, dtype=np.float64)).astype(np.asarray(x).dtype)


def assert_forward_close(op, got, x):
    x = np.asarray(x)
    assert got.dtype == x.dtype
    assert got.shape == x.shape
    if op.exact:
        np.testing.assert_array_equal(got, op.ref_fwd(x))
    elif x.dtype == np.float32:
        assert_ulp_close(got, _truth(op, x), F32_MAXULP, inputs=x, what=f"{op} float32")
    else:
        np.testing.assert_allclose(got, op.ref_fwd(x), rtol=F64_RTOL, atol=0)


def assert_backward_close(op, dx, dout, x, y):
    """dx against the reference backward fed the same x and saved y (see module docstring)."""
    dout = np.asarray(dout)
    assert dx.dtype == dout.dtype and dx.shape == dout.shape
    if op.exact:
        np.testing.assert_array_equal(dx, op.ref_bwd(dout, x, y))
        return
    dt = dout.dtype
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 in NaN/Inf tests
        ref = op.ref_bwd(dout.astype(np.float64), np.asarray(x, np.float64), np.asarray(y, np.float64))
    ref = ref.astype(dt)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(ref))
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(dx[~fin], ref[~fin])
    tol = np.finfo(dt).eps * np.abs(dout[fin]) + 2 * ulp_of(ref[fin])
    err = np.abs(dx[fin].astype(np.float64) - ref[fin].astype(np.float64))
    assert np.all(err <= tol), f"{op} backward: max err/tol {np.max(err / tol)}"


def _data(rng, shape, dtype, scale=3.0):
    """Normal data with some exact zeros (the kink of the ReLU family)."""
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    if x.size:
        x.reshape(-1)[:: 7] = 0
    return x


# ============================================================================ values vs reference
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_forward_matches_reference(op, dtype, shape, rng):
    x = _data(rng, shape, dtype)
    out, cache = op.fwd(x)
    assert isinstance(out, np.ndarray)
    assert_forward_close(op, out, x)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_backward_matches_reference(op, dtype, shape, rng):
    x = _data(rng, shape, dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    y, cache = op.fwd(x)
    dx = op.bwd(dout, cache)
    assert isinstance(dx, np.ndarray)
    assert_backward_close(op, dx, dout, x, y)


def _layouts(rng, dtype):
    """Non-contiguous and negative-stride views (name, array)."""
    base2 = _data(rng, (23, 31), dtype)
    base3 = _data(rng, (6, 7, 8), dtype)
    return {
        "step": _data(rng, (101,), dtype)[::2],
        "negative": _data(rng, (101,), dtype)[::-1],
        "negative_step": _data(rng, (101,), dtype)[-2::-3],
        "cols_step": base2[:, ::3],
        "rows_step": base2[::2, :],
        "transposed": base2.T,
        "fortran": np.asfortranarray(base2),
        "both_negative": base2[::-2, ::-1],
        "swapaxes3d": base3.transpose(2, 0, 1),
        "broadcast_zero_stride": np.broadcast_to(_data(rng, (13,), dtype), (5, 13)),
    }


LAYOUT_NAMES = list(_layouts(np.random.default_rng(0), np.float64))


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_noncontiguous_inputs(op, dtype, layout, rng):
    x = _layouts(rng, dtype)[layout]
    assert not x.flags.c_contiguous
    dout = _layouts(np.random.default_rng(1), dtype)[layout]
    y, cache = op.fwd(x)
    assert y.flags.c_contiguous
    # the layout must not change a single bit of the result...
    y_c, cache_c = op.fwd(np.ascontiguousarray(x))
    assert_same_bits(y, y_c, what="forward, non-contiguous vs contiguous input")
    assert_forward_close(op, y, x)
    # ... forward or backward
    dx = op.bwd(dout, cache)
    dx_c = op.bwd(np.ascontiguousarray(dout), cache_c)
    assert_same_bits(dx, dx_c, what="backward, non-contiguous vs contiguous dout")
    assert_backward_close(op, dx, dout, x, y)


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_relu_backward_raw_cache_noncontiguous(layout, rng):
    x = _layouts(rng, np.float64)[layout]
    dout = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(F.relu_backward(dout, x), R.relu_backward(dout, x))


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_readonly_inputs_accepted(op, rng):
    x = _data(rng, (40, 3), np.float64)
    dout = rng.standard_normal(x.shape)
    x.flags.writeable = False
    dout.flags.writeable = False
    y, cache = op.fwd(x)
    assert_forward_close(op, y, x)
    assert_backward_close(op, op.bwd(dout, cache), dout, x, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_non_native_byte_order(op, dtype, rng):
    x = _data(rng, (50,), dtype)
    x_be = x.astype(x.dtype.newbyteorder("S"))
    y, cache = op.fwd(x_be)
    assert y.dtype == np.dtype(dtype)  # native order, same precision
    assert_same_bits(y, op.fwd(x)[0])


# ============================================================================ dtype conversion
@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: np.arange(-6, 6).reshape(3, 4), id="int64"),
        pytest.param(lambda: np.arange(-6, 6, dtype=np.int8), id="int8"),
        pytest.param(lambda: np.arange(12, dtype=np.uint16), id="uint16"),
        pytest.param(lambda: np.array([True, False, True]), id="bool"),
        pytest.param(lambda: [[-2, -1, 0], [1, 2, 3]], id="list_int"),
        pytest.param(lambda: [-1.5, 0.0, 2.5], id="list_float"),
        pytest.param(lambda: [True, False], id="list_bool"),
    ],
)
def test_int_bool_list_inputs_are_float64(op, make):
    x = make()
    y, cache = op.fwd(x)
    x64 = np.asarray(x).astype(np.float64)
    assert y.dtype == np.float64
    assert y.shape == x64.shape
    assert_same_bits(y, op.fwd(x64)[0])
    # backward with an int dout computes in float64 too
    dout = np.ones(x64.shape, dtype=np.int32)
    dx = op.bwd(dout, cache)
    assert dx.dtype == np.float64
    assert_same_bits(dx, op.bwd(dout.astype(np.float64), op.fwd(x64)[1]))


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("value", [-2.5, 0.0, 3, np.float64(1.25), np.float32(-0.5)], ids=repr)
def test_scalar_input_keeps_0d_shape(op, value):
    y, cache = op.fwd(value)
    assert y.shape == ()
    expected_dtype = np.float32 if isinstance(value, np.float32) else np.float64
    assert y.dtype == expected_dtype
    assert_forward_close(op, y, np.asarray(value, dtype=expected_dtype))
    dout = np.asarray(2.0, dtype=expected_dtype)
    dx = op.bwd(dout, cache)
    assert dx.shape == ()
    assert_backward_close(op, dx, dout, np.asarray(value, dtype=expected_dtype), y)


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_mixed_precision_backward_promotes_to_float64(op, rng):
    x = _data(rng, (30,), np.float32)
    y, cache = op.fwd(x)
    dout = rng.standard_normal(30)  # float64
    dx = op.bwd(dout, cache)
    assert dx.dtype == np.float64  # np.result_type(float32, float64)
    expected = op.ref_bwd(dout, x.astype(np.float64), y.astype(np.float64))
    if op.exact:
        np.testing.assert_array_equal(dx, expected)
    else:
        np.testing.assert_allclose(dx, expected, rtol=4 * np.finfo(np.float64).eps, atol=0)


# ============================================================================ special values
def _specials(dtype):
    fi = np.finfo(dtype)
    return np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, fi.max, -fi.max, fi.tiny, -fi.tiny,
         fi.smallest_subnormal, -fi.smallest_subnormal],
        dtype=dtype,
    )


def _expected_special_forward(op, x):
    """What NumPy's own formulas give, written out (no kernel, no reference code)."""
    dt = x.dtype.type
    if op.kind == "relu":
        return np.maximum(x, dt(0))
    if op.kind == "leaky_relu":
        a = dt(0.01 if op.alpha is None else op.alpha)
        with np.errstate(invalid="ignore", over="ignore"):
            return np.where(x > 0, x, a * x)
    if op.kind == "tanh":
        return np.tanh(x)  # tanh of a special value is exact: nan, +-1, +-0, x for tiny x
    # sigmoid, element by element for _specials: nan, +inf, -inf, 0, -0, 1, -1, max, -max,
    # then tiny, -tiny and the two smallest subnormals (all 0.5 exactly)
    e = np.exp(-1.0)
    return np.array([np.nan, 1, 0, 0.5, 0.5, 1 / (1 + e), e / (1 + e), 1, 0, 0.5, 0.5, 0.5, 0.5],
                    dtype=np.float64).astype(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_nan_inf_forward_like_numpy(op, dtype):
    x = _specials(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, _ = op.fwd(x)
    expected = _expected_special_forward(op, x)
    finite_or_special = [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12]  # all but +-1 (rounded values)
    np.testing.assert_array_equal(y[finite_or_special], expected[finite_or_special])
    assert np.isnan(y[0]), "NaN must propagate"
    if op.exact:
        np.testing.assert_array_equal(y, expected)
    else:
        # +-1: expected is the float64 formula (rounded to float32: the float32 truth)
        if dtype == np.float32:
            assert_ulp_close(y[[5, 6]], expected[[5, 6]], F32_MAXULP)
        else:
            np.testing.assert_allclose(y[[5, 6]], expected[[5, 6]], rtol=F64_RTOL, atol=0)
    if op.kind == "tanh":
        assert np.signbit(y[4]) and not np.signbit(y[3]), "tanh(-0.0) is -0.0 like np.tanh"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_nan_inf_backward_like_numpy(op, dtype):
    x = np.repeat(_specials(dtype), 4)
    dout = np.tile(np.array([1.0, np.nan, np.inf, -2.0], dtype=dtype), x.size // 4)
    y, cache = op.fwd(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dx = op.bwd(dout, cache)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = op.ref_bwd(dout, x, y)
    # NaN exactly where NumPy's formula gives NaN (e.g. inf * 0), infinities with their sign
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(expected))
    assert np.isnan(dx[1::4]).all(), "a NaN in dout must propagate"
    inf = np.isinf(expected)
    np.testing.assert_array_equal(dx[inf], expected[inf])
    if op.exact:
        np.testing.assert_array_equal(dx, expected)
    else:
        assert_backward_close(op, dx, dout, x, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_relu_nan_is_nan_like_np_maximum(dtype):
    x = np.array([np.nan, -np.nan, 1.0, -1.0], dtype=dtype)
    y, cache = F.relu_forward(x)
    assert np.isnan(y[0]) and np.isnan(y[1])
    assert np.isnan(np.maximum(x, 0)[:2]).all()
    # backward: the mask of NaN is "not > 0", so a finite dout gives 0 there, as dout * (x > 0)
    dx = F.relu_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(dx, [0, 0, 1, 0])
    np.testing.assert_array_equal(F.relu_backward(np.ones_like(x), x), [0, 0, 1, 0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", [3, 7, 1000])
def test_relu_of_negative_zero_is_positive_zero_like_np_maximum(dtype, n):
    """np.maximum(-0.0, 0) is +0.0: relu, standalone and fused after a product, gives the same
    bits (the scalar tail and the vector body alike), and NaN stays NaN."""
    x = np.full(n, -0.0, dtype=dtype)
    x[::3] = np.nan
    x[1::3] = 2.5
    want = np.maximum(x, 0)
    assert_same_bits(F.relu_forward(x)[0], want)
    assert_same_bits(F.relu_forward(x.reshape(1, n))[0], want.reshape(1, n))
    # affine_relu: a pre-activation of exactly -0.0 (x @ 0 = +0.0, plus a bias of -0.0)
    xa = np.ones((n, 2), dtype=dtype)
    out, _ = F.affine_relu_forward(xa, np.zeros((2, 3), dtype), np.full(3, -0.0, dtype))
    assert_same_bits(out, np.maximum(xa @ np.zeros((2, 3), dtype) + np.full(3, -0.0, dtype), 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_saturation_exact_and_silent(dtype):
    x = np.array([-1000, -200, -110, 110, 200, 1000, -np.finfo(dtype).max, np.finfo(dtype).max], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        s, sc = F.sigmoid_forward(x)
        t, tc = F.tanh_forward(x)
        ds = F.sigmoid_backward(np.ones_like(x), sc)
        dt_ = F.tanh_backward(np.ones_like(x), tc)
        lk, _ = F.leaky_relu_forward(x)
    np.testing.assert_array_equal(s, [0, 0, 0, 1, 1, 1, 0, 1] if dtype == np.float32
                                  else [0, s[1], s[2], 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(t, [-1, -1, -1, 1, 1, 1, -1, 1])
    np.testing.assert_array_equal(dt_, np.zeros(8))
    assert not np.isnan(ds).any() and np.all(ds >= 0)
    np.testing.assert_array_equal(ds[[0, 3, 4, 5, 6, 7]], np.zeros(6))
    assert np.all(np.isfinite(lk))
    if dtype == np.float64:
        # exp(-200), exp(-110) are normal doubles: no clipping of the tail
        np.testing.assert_allclose(s[[1, 2]], np.exp([-200.0, -110.0]), rtol=F64_RTOL)


@pytest.mark.parametrize(
    "dtype,x",
    [(np.float32, -100.0), (np.float32, -90.0), (np.float32, -103.0),
     (np.float64, -740.0), (np.float64, -720.0), (np.float64, -744.0)],
)
def test_sigmoid_subnormal_results_are_produced(dtype, x):
    xs = np.array([x], dtype=dtype)
    s, _ = F.sigmoid_forward(xs)
    # sigmoid(x) = e / (1 + e) rounds to e = exp(x) here; exp in extended precision, rounded
    truth = np.asarray(np.exp(np.longdouble(x))).astype(dtype)
    assert 0 < truth[()] < np.finfo(dtype).tiny
    assert s[0] > 0, "subnormal result flushed to zero"
    assert ulp_distance(s, np.array([truth], dtype=dtype))[0] <= F32_MAXULP


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_tiny_and_subnormal_inputs(dtype):
    fi = np.finfo(dtype)
    x = np.array([fi.smallest_subnormal, -fi.smallest_subnormal, fi.tiny, 1e-30, -1e-30,
                  fi.smallest_subnormal * 1000], dtype=dtype)
    t, _ = F.tanh_forward(x)
    assert_same_bits(t, x)  # tanh(x) == x below sqrt(eps)
    s, _ = F.sigmoid_forward(x)
    np.testing.assert_array_equal(s, np.full(x.shape, 0.5, dtype=dtype))


# ============================================================================ accuracy
def _wide_float32_inputs(rng):
    parts = [
        rng.uniform(-120, 120, 200_000),
        rng.uniform(-12, 12, 200_000),
        rng.uniform(-1, 1, 100_000),
        np.logspace(-45, -20, 2_000),        # subnormal and tiny (1e-30)
        -np.logspace(-45, -20, 2_000),
        np.logspace(-20, 2.1, 20_000),
        -np.logspace(-20, 2.1, 20_000),       # down to -126: subnormal and zero sigmoid
        [-100.0, -87.5, -88.7, -103.9, -104.0, 1e-30, -1e-30, 0.5, -0.5, 8.0, 9.0, 15.0, 17.0],
    ]
    x = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]).astype(np.float32)
    # plus a systematic sweep of float32 bit patterns from 2**-14 to 32, both signs
    lo = np.array(2.0 ** -14, np.float32).view(np.int32)
    hi = np.array(32.0, np.float32).view(np.int32)
    sweep = np.arange(lo, hi, 31, dtype=np.int32).view(np.float32)
    return np.concatenate([x, sweep, -sweep])


@pytest.mark.parametrize("op", TRANSCENDENTAL, ids=repr)
def test_float32_accuracy_within_4ulp_of_truth(op, rng):
    x = _wide_float32_inputs(rng)
    y, _ = op.fwd(x)
    assert y.dtype == np.float32
    assert_ulp_close(y, _truth(op, x), F32_MAXULP, inputs=x, what=f"{op} float32 vs float64 truth")


def test_float32_tanh_close_to_numpy_float32(rng):
    """The triangle inequality: our 4 ulp to the truth, plus however far NumPy's own float32
    tanh is from the truth on these inputs (measured here, typically 1 ulp)."""
    x = _wide_float32_inputs(rng)
    y, _ = F.tanh_forward(x)
    np_y = np.tanh(x)
    truth = np.tanh(x.astype(np.float64)).astype(np.float32)
    numpy_err = int(ulp_distance(np_y, truth).max())
    assert_ulp_close(y, np_y, F32_MAXULP + numpy_err, inputs=x, what="tanh vs np.tanh float32")


@pytest.mark.parametrize("op", TRANSCENDENTAL, ids=repr)
def test_float64_accuracy(op, rng):
    x = np.concatenate([
        rng.uniform(-700, 700, 100_000),
        rng.uniform(-20, 20, 100_000),
        rng.uniform(-1e-3, 1e-3, 10_000),
        np.logspace(-300, 2.8, 5_000),
        -np.logspace(-300, 2.8, 5_000),
    ])
    y, _ = op.fwd(x)
    expected = np.tanh(x) if op.kind == "tanh" else R.sigmoid(x)
    np.testing.assert_allclose(y, expected, rtol=F64_RTOL, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_backward_relative_accuracy_near_saturation(dtype, rng):
    """tanh's derivative from a saved output t close to +-1 is (1 - t)(1 + t), which cancels
    if computed as 1 - t*t without a fused multiply-add (the baseline, non-AVX2 path: hundreds
    of ulp in float32). Within 2 ulp of the exact dout (1 - t)(1 + t) of the same t, on the
    standalone kernel and the fused affine_tanh backward, on every SIMD path."""
    hi = 8.0 if dtype == np.float32 else 18.0  # below where tanh(x) rounds to 1
    x = (rng.uniform(1.0, hi, 4096) * rng.choice([-1.0, 1.0], 4096)).astype(dtype)
    dout = rng.uniform(0.5, 2.0, x.shape).astype(dtype)
    t, cache = F.tanh_forward(x)
    wide = np.longdouble
    one = wide(1)
    exact = dout.astype(wide) * ((one - t.astype(wide)) * (one + t.astype(wide)))
    exact = exact.astype(dtype)
    assert np.all(np.abs(t) < 1)  # no case saturated (there the derivative is exactly 0)
    assert_ulp_close(F.tanh_backward(dout, cache), exact, 2, inputs=t, what="tanh_backward")

    # the fused dense backward: one row through an identity layer, so the pre-activation is x
    # itself and db (a sum over that one row) is the derivative times dout, element by element
    n = 257
    x1, g1 = x[None, :n], dout[None, :n]
    out1, c1 = F.affine_tanh_forward(x1, np.eye(n, dtype=dtype), np.zeros(n, dtype=dtype))
    _, _, db1 = F.affine_tanh_backward(g1, c1)
    ex1 = g1[0].astype(wide) * ((one - out1[0].astype(wide)) * (one + out1[0].astype(wide)))
    assert_ulp_close(db1, ex1.astype(dtype), 2, inputs=out1[0], what="affine_tanh_backward db")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_backward_is_the_product_form_bit_for_bit(dtype, rng):
    """The kernel computes dout * ((1 - t) * (1 + t)): no multiply feeds an add, so no CPU path
    can fuse anything and every path gives NumPy's bits for the same expression (the former
    1 - t*t did not: its FMA on the AVX2/AVX-512 paths rounded differently from NumPy and from
    the baseline path)."""
    x = (rng.standard_normal(50_003) * 4).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    t, cache = F.tanh_forward(x)
    one = dtype(1)
    assert_same_bits(F.tanh_backward(dout, cache), dout * ((one - t) * (one + t)), "tanh_backward")


# ============================================================================ gradients
def _away_from_kinks(rng, shape):
    """float64 data with |x| >= 0.1, so a 1e-5 step never crosses the ReLU kink."""
    return rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 2), (6,)], ids=str)
def test_backward_numerical_gradient(op, shape, rng):
    x = _away_from_kinks(rng, shape) * (2.0 if op.kind in ("sigmoid", "tanh") else 1.0)
    dout = rng.standard_normal(shape)
    _, cache = op.fwd(x)
    dx = op.bwd(dout, cache)
    num = numerical_gradient(lambda v: op.fwd(v)[0], x.copy(), dout)
    np.testing.assert_allclose(dx, num, rtol=1e-7, atol=1e-10)


def test_relu_backward_from_the_input_or_the_output(rng):
    """relu_forward's cache is x itself (the course's layers.py caches x); the ReLU layer's is
    the output, in an ActivationCache: the same mask, x > 0 exactly where relu(x) > 0, also at
    NaN, +-inf and +-0."""
    from fastnn.functional.activations import ActivationCache

    for dtype in DTYPES:
        x = _data(rng, (9, 11), dtype)
        x[0, :6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, np.finfo(dtype).tiny / 4]
        dout = rng.standard_normal((9, 11)).astype(dtype)
        y, cache = F.relu_forward(x)
        assert cache is x
        dx = F.relu_backward(dout, x)
        assert dx.dtype == dtype
        np.testing.assert_array_equal(dx, R.relu_backward(dout, x))
        assert_same_bits(dx, F.relu_backward(dout, ActivationCache("relu", y)))


@pytest.mark.parametrize("bad", [np.ones(3, complex), np.array([1.0, None, 2.0], dtype=object),
                                 np.array(["a", "b", "c"])], ids=["complex", "object", "str"])
def test_relu_backward_bad_raw_cache_names_cache(bad):
    with pytest.raises(TypeError, match="cache"):
        F.relu_backward(np.ones(3), bad)


def test_relu_backward_raw_cache_shape_mismatch():
    with pytest.raises(ValueError, match="dout"):
        F.relu_backward(np.ones((2, 3)), np.ones((3, 2)))


# ============================================================================ inputs left alone
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_inputs_not_modified(op, rng):
    x = _data(rng, (50, 7), np.float64)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    dout = rng.standard_normal(x.shape)
    x0, dout0 = x.copy(), dout.copy()
    y, cache = op.fwd(x)
    y0 = y.copy()
    op.bwd(dout, cache)
    assert_same_bits(x, x0, what="x after forward/backward")
    assert_same_bits(dout, dout0, what="dout after backward")
    assert_same_bits(y, y0, what="forward output after backward")
    if op.kind == "relu":
        F.relu_backward(dout, x)
        assert_same_bits(x, x0, what="raw cache after relu_backward")


# ============================================================================ out=
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_out_keyword_forward_and_backward(op, dtype, rng):
    x = _data(rng, (17, 5), dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    expected_y, expected_cache = op.fwd(x)
    expected_dx = op.bwd(dout, expected_cache)

    buf = np.full(x.shape, 123.0, dtype=dtype)
    y, cache = op.fwd(x, out=buf)
    assert y is buf
    assert_same_bits(buf, expected_y)

    dbuf = np.full(x.shape, -7.0, dtype=dtype)
    dx = op.bwd(dout, cache, out=dbuf)
    assert dx is dbuf
    assert_same_bits(dbuf, expected_dx)


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_out_keyword_errors(op, rng):
    x = _data(rng, (6, 4), np.float64)
    dout = rng.standard_normal(x.shape)
    _, cache = op.fwd(x)
    bad = {
        "shape": (ValueError, np.empty((4, 6))),
        "size": (ValueError, np.empty(24)),
        "dtype": (TypeError, np.empty((6, 4), np.float32)),
        "int": (TypeError, np.empty((6, 4), np.int64)),
        "noncontig": (ValueError, np.empty((6, 8))[:, ::2]),
        "fortran": (ValueError, np.empty((6, 4), order="F")),
        "list": (TypeError, [[0.0] * 4] * 6),
    }
    for name, (exc, out) in bad.items():
        with pytest.raises(exc, match="out"):
            op.fwd(x, out=out)
        with pytest.raises(exc, match="out"):
            op.bwd(dout, cache, out=out)
    ro = np.empty((6, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        op.fwd(x, out=ro)
    # overlapping the inputs: out=x, a view of x, out=dout
    with pytest.raises(ValueError, match="overlap"):
        op.fwd(x, out=x)
    big = _data(rng, (12, 4), np.float64)
    with pytest.raises(ValueError, match="overlap"):
        op.fwd(big[:6], out=big[:6])
    with pytest.raises(ValueError, match="overlap"):
        op.bwd(dout, cache, out=dout)
    # the same when the overlapped input is one that is converted (copied) first: it was
    # accepted then, and the call wrote into the caller's input
    strided = np.zeros((6, 8))
    with pytest.raises(ValueError, match="overlap"):
        op.fwd(strided[:, ::2], out=strided.reshape(-1)[:24].reshape(6, 4))
    with pytest.raises(ValueError, match="overlap"):
        op.bwd(strided[:, ::2], cache, out=strided.reshape(-1)[:24].reshape(6, 4))
    assert not strided.any()
    # a strided input whose bounds take in out, without sharing a byte with it, is fine
    rows = _data(rng, (13, 4), np.float64)
    x2 = rows[0::12]   # (rows 0 and 12; out is rows 1-2)
    want = op.fwd(x2.copy())[0]
    got, _ = op.fwd(x2, out=rows[1:3])
    assert np.shares_memory(got, rows)   # (written into out)
    assert_same_bits(rows[1:3], want)
    x_unchanged = x.copy()
    with pytest.raises(ValueError):
        op.fwd(x, out=x)
    assert_same_bits(x, x_unchanged)


def test_out_of_zero_size():
    for op in OPS:
        buf = np.empty((0, 3))
        y, cache = op.fwd(np.empty((0, 3)), out=buf)
        assert y is buf
        assert op.bwd(np.empty((0, 3)), cache).shape == (0, 3)


# ============================================================================ threads
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_threads_bitwise_identical_elementwise(op, dtype, rng):
    # big enough that 3 threads all get work (2 * threshold per thread; sigmoid/tanh cost more)
    assert LARGE >= 2 * 3 * _k.min_work_per_thread()
    x = _data(rng, (LARGE,), dtype, scale=5.0)
    dout = rng.standard_normal(LARGE).astype(dtype)

    def run():
        y, cache = op.fwd(x)
        return y, op.bwd(dout, cache)

    y, dx = assert_thread_invariant(run)
    assert_forward_close(op, y, x)
    assert_backward_close(op, dx, dout, x, y)


def test_threads_above_core_count_bitwise_identical(rng):
    x = _data(rng, (LARGE,), np.float32)
    assert_thread_invariant(lambda: F.sigmoid_forward(x)[0], threads=(1, 7, 64))


# ============================================================================ bad arguments
BAD_ARRAYS = [
    pytest.param(np.array([1 + 2j, 3j]), id="complex"),
    pytest.param(np.array([1.0, None], dtype=object), id="object"),
    pytest.param(np.array(["a", "b"]), id="str_array"),
    pytest.param("abc", id="str"),
    pytest.param(np.array(["2020-01-01"], dtype="M8[D]"), id="datetime"),
    pytest.param(None, id="None"),
    pytest.param([[1.0, 2.0], [3.0]], id="ragged"),
]


@pytest.mark.parametrize("bad", BAD_ARRAYS)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_bad_x_raises_typeerror_naming_x(op, bad):
    with pytest.raises(TypeError, match=r"\bx\b"):
        op.fwd(bad)


@pytest.mark.parametrize("bad", BAD_ARRAYS)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_bad_dout_raises_typeerror_naming_dout(op, bad):
    _, cache = op.fwd(np.ones(2))
    with pytest.raises(TypeError, match=r"\bdout\b"):
        op.bwd(bad, cache)


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_dout_shape_mismatch(op):
    _, cache = op.fwd(np.ones((3, 4)))
    with pytest.raises(ValueError, match="dout"):
        op.bwd(np.ones((4, 3)), cache)
    with pytest.raises(ValueError, match="dout"):
        op.bwd(np.ones(12), cache)


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_caches(kind):
    bwd = getattr(F, kind + "_backward")
    dout = np.ones((2, 3))
    others = [k for k in KINDS if k != kind] + ["prelu", "maxout_reduce"]
    for other in others:
        if other == "prelu":
            _, c = F.prelu_forward(np.ones((2, 3)), 0.1)
        elif other == "maxout_reduce":
            _, c = F.maxout_reduce_forward(np.ones((2, 3, 2)))
        else:
            _, c = getattr(F, other + "_forward")(np.ones((2, 3)))
        if other == "relu":
            # relu_forward's cache is its input (the course's): a plain array, which only
            # relu_backward takes
            assert isinstance(c, np.ndarray)
            with pytest.raises(TypeError, match="cache"):
                bwd(dout, c)
            continue
        with pytest.raises(ValueError, match=f"{other}_forward"):
            bwd(dout, c)
    garbage = [None, (np.ones((2, 3)),), (np.ones((2, 3)), 0.01), "cache", {"x": 1}, 3.0]
    if kind != "relu":
        garbage.append(np.ones((2, 3)))  # only relu takes the raw input array
    for g in garbage:
        with pytest.raises(TypeError, match="cache"):
            bwd(dout, g)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_leaky_relu_nonfinite_alpha_rejected(bad):
    with pytest.raises(ValueError, match="alpha"):
        F.leaky_relu_forward(np.ones(3), bad)


@pytest.mark.parametrize("bad", ["0.1", None, 1j, [0.1], True])
def test_leaky_relu_bad_alpha_type(bad):
    with pytest.raises(TypeError, match="alpha"):
        F.leaky_relu_forward(np.ones(3), bad)


@pytest.mark.parametrize("alpha", [0.2, np.float32(0.2), np.float64(0.3), 1, np.array(0.25)], ids=repr)
def test_leaky_relu_alpha_kinds(alpha, rng):
    x = _data(rng, (20,), np.float32)
    y, cache = F.leaky_relu_forward(x, alpha)
    a = float(np.asarray(alpha))
    np.testing.assert_array_equal(y, R.leaky_relu_forward(x, a)[0])
    dout = rng.standard_normal(20).astype(np.float32)
    np.testing.assert_array_equal(F.leaky_relu_backward(dout, cache), R.leaky_relu_backward(dout, (x, a)))


# ============================================================================ PReLU
PRELU_SHAPES = [(), (0,), (0, 5), (5, 0), (1,), (1, 1), (7,), (7, 13), (3, 4, 5), (2, 3, 4, 5), (3000, 100)]


def _prelu_alpha(rng, shape, kind, dtype):
    d = shape[-1] if len(shape) else 1
    if kind == "scalar":
        return 0.25
    if kind == "vector":
        return rng.uniform(-0.5, 1.5, d).astype(dtype)
    if kind == "list":
        return [float(v) for v in rng.uniform(0, 1, d)]
    if kind == "shared":   # one slope for every feature, shape (1,) (PyTorch's nn.PReLU())
        return rng.uniform(-0.5, 1.5, 1).astype(dtype)
    raise AssertionError(kind)


def _sum_bound(terms, dtype, axis=None):
    """Worst-case error of summing ``terms`` in ``dtype``: n * eps * sum(|terms|) (+ the
    rounding of each product term)."""
    t = np.abs(np.asarray(terms, dtype=np.float64))
    n = t.size if axis is None else (t.shape[0] if t.ndim else 1)
    s = t.sum() if axis is None else t.sum(axis=0)
    return (n + 1) * np.finfo(dtype).eps * s


@pytest.mark.parametrize("alpha_kind", ["scalar", "vector", "list", "shared"])
@pytest.mark.parametrize("shape", PRELU_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_prelu_matches_reference(dtype, shape, alpha_kind, rng):
    x = _data(rng, shape, dtype)
    alpha = _prelu_alpha(rng, shape, alpha_kind, dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    y, cache = F.prelu_forward(x, alpha)
    assert y.dtype == dtype and y.shape == x.shape
    ry, rcache = R.prelu_forward(x, alpha)
    np.testing.assert_array_equal(y, ry)

    dx, dalpha = F.prelu_backward(dout, cache)
    rdx, rdalpha = R.prelu_backward(dout, rcache)
    assert dx.dtype == dtype and dx.shape == x.shape
    np.testing.assert_array_equal(dx, rdx)
    dalpha_arr = np.asarray(dalpha)
    assert dalpha_arr.dtype == dtype
    assert dalpha_arr.shape == np.shape(alpha)
    # the truth: exact products (float32 * float32 fits a double), summed in float64
    terms = dout.astype(np.float64) * np.where(x > 0, 0.0, x.astype(np.float64))
    d = shape[-1] if len(shape) else 1
    rows = terms.reshape(-1, d) if terms.size else np.zeros((0, d))
    if alpha_kind == "scalar":
        truth = rows.sum()
        bound = _sum_bound(rows, dtype)
    elif alpha_kind == "shared":
        truth = rows.sum().reshape(1)
        bound = _sum_bound(rows, dtype)
    else:
        truth = rows.sum(axis=0)
        bound = _sum_bound(rows, dtype, axis=0)
    err = np.abs(dalpha_arr.astype(np.float64) - truth)
    assert np.all(err <= bound), f"dalpha error {np.max(err)} > bound {np.max(bound)}"
    # and the reference, which sums in a different order, is within the same bound of the truth
    assert np.all(np.abs(np.asarray(rdalpha, np.float64) - truth) <= bound)


@pytest.mark.parametrize("alpha_kind", ["scalar", "vector", "shared"])
@pytest.mark.parametrize("shape", [(4, 5), (3, 2, 4), (6,)], ids=str)
def test_prelu_numerical_gradients(shape, alpha_kind, rng):
    x = _away_from_kinks(rng, shape)
    dout = rng.standard_normal(shape)
    alpha = (np.array(0.3) if alpha_kind == "scalar" else np.array([0.3]) if alpha_kind == "shared"
             else rng.uniform(-0.5, 1.5, shape[-1]))
    _, cache = F.prelu_forward(x, alpha)
    dx, dalpha = F.prelu_backward(dout, cache)
    num_dx = numerical_gradient(lambda v: F.prelu_forward(v, alpha)[0], x.copy(), dout)
    np.testing.assert_allclose(dx, num_dx, rtol=1e-7, atol=1e-10)
    # alpha is read live from the array the numerical gradient perturbs in place
    num_da = numerical_gradient(lambda a: F.prelu_forward(x, a)[0], alpha, dout)
    assert np.shape(dalpha) == np.shape(alpha)
    np.testing.assert_allclose(dalpha, num_da, rtol=1e-7, atol=1e-10)


def test_prelu_reads_alpha_live(rng):
    x = -np.abs(rng.standard_normal((3, 4))) - 0.1
    alpha = np.full(4, 0.5)
    y1, _ = F.prelu_forward(x, alpha)
    alpha[2] = 2.0
    y2, _ = F.prelu_forward(x, alpha)
    np.testing.assert_array_equal(y1[:, 2] * 4, y2[:, 2])
    np.testing.assert_array_equal(y1[:, [0, 1, 3]], y2[:, [0, 1, 3]])


@pytest.mark.parametrize("layout", ["same", "other-dtype", "strided", "0-d", "shared"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_prelu_backward_reads_the_slopes_as_they_are_then(layout, dtype, rng):
    """prelu_backward uses the slope array as it is when backward runs (a step that updates
    it in place between forward and backward is seen, as in the course's code), whatever the
    array's dtype and layout: a slope of the other float dtype, or strided, was converted in
    forward and the copy kept, so backward used the old slopes."""
    x = rng.standard_normal((5, 4)).astype(dtype)
    x[:, :] = -np.abs(x) - 0.1   # (every entry on the slope's side)
    dout = rng.standard_normal((5, 4)).astype(dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    alpha = {"same": np.full(4, 0.5, dtype), "other-dtype": np.full(4, 0.5, other),
             "strided": np.full(8, 0.5, dtype)[::2], "0-d": np.array(0.5, dtype),
             "shared": np.full(1, 0.5, dtype)}[layout]
    _, cache = F.prelu_forward(x, alpha)
    alpha[...] = 0.25
    dx, dalpha = F.prelu_backward(dout, cache)
    want_dx, want_dalpha = R.prelu_backward(dout, (x, alpha))
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6)
    np.testing.assert_allclose(dx, 0.25 * dout, rtol=1e-6)
    assert np.shape(dalpha) == alpha.shape
    np.testing.assert_allclose(dalpha, want_dalpha, rtol=1e-5)


@pytest.mark.parametrize("alpha_kind", ["scalar", "vector", "shared"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_prelu_threads_bitwise_identical(dtype, alpha_kind, rng):
    shape = (4001, 100)  # ~25 row blocks of the fixed dalpha blocking
    assert shape[0] * shape[1] >= 2 * 3 * _k.min_work_per_thread()
    x = _data(rng, shape, dtype)
    alpha = _prelu_alpha(rng, shape, alpha_kind, dtype)
    dout = rng.standard_normal(shape).astype(dtype)

    def run():
        y, cache = F.prelu_forward(x, alpha)
        dx, dalpha = F.prelu_backward(dout, cache)
        return y, dx, dalpha

    assert_thread_invariant(run)


@pytest.fixture
def force_parallel():
    """Make every kernel go parallel even on tiny inputs (a tuning hook, not public API)."""
    old = _k.min_work_per_thread()
    _k.set_min_work_per_thread(1)
    yield
    _k.set_min_work_per_thread(old)


@pytest.mark.parametrize("shape", [(2, 3), (50, 1000), (37, 16385), (1, 40000)], ids=str)
def test_prelu_small_inputs_forced_parallel(shape, rng, force_parallel):
    x = _data(rng, shape, np.float32)
    alpha = rng.uniform(0, 1, shape[-1]).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)

    def run():
        y, cache = F.prelu_forward(x, alpha)
        return (y,) + F.prelu_backward(dout, cache) + F.prelu_backward(dout, F.prelu_forward(x, 0.1)[1])

    y, dx, *_ = assert_thread_invariant(run, threads=(1, 2, 3, 5))
    np.testing.assert_array_equal(y, R.prelu_forward(x, alpha)[0])
    np.testing.assert_array_equal(dx, R.prelu_backward(dout, (x, alpha))[0])


def test_prelu_inputs_not_modified(rng):
    x = _data(rng, (20, 6), np.float32)
    alpha = rng.uniform(0, 1, 6).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    copies = [a.copy() for a in (x, alpha, dout)]
    _, cache = F.prelu_forward(x, alpha)
    F.prelu_backward(dout, cache)
    for a, c in zip((x, alpha, dout), copies):
        assert_same_bits(a, c)


def test_prelu_argument_errors():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="alpha"):
        F.prelu_forward(x, np.ones(4))
    with pytest.raises(ValueError, match="alpha"):
        F.prelu_forward(x, np.ones((1, 3)))
    with pytest.raises(ValueError, match="alpha"):
        F.prelu_forward(x, np.ones(2))
    for bad in [np.array([1j, 2j, 3j]), "0.1", None, np.array(["a", "b", "c"])]:
        with pytest.raises(TypeError, match="alpha"):
            F.prelu_forward(x, bad)
    for bad in [np.array([1j]), np.array([None], dtype=object), "x"]:
        with pytest.raises(TypeError, match=r"\bx\b"):
            F.prelu_forward(bad, 0.1)
    _, cache = F.prelu_forward(x, 0.1)
    with pytest.raises(ValueError, match="dout"):
        F.prelu_backward(np.ones((3, 4)), cache)
    with pytest.raises(TypeError, match="dout"):
        F.prelu_backward(np.ones((4, 3), complex), cache)
    for g in [None, (x, 0.1), "cache"]:
        with pytest.raises(TypeError, match="cache"):
            F.prelu_backward(np.ones((4, 3)), g)
    with pytest.raises(TypeError, match="cache"):   # (relu_forward's cache is its input array)
        F.prelu_backward(np.ones((4, 3)), F.relu_forward(x)[1])


def test_prelu_mixed_precision_follows_numpy_promotion(rng):
    x = _data(rng, (5, 3), np.float32)
    alpha = np.array([0.1, 0.2, 0.3])  # float64
    y, cache = F.prelu_forward(x, alpha)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, np.where(x > 0, x.astype(np.float64), alpha * x.astype(np.float64)))
    # a Python-float or list alpha does not promote
    assert F.prelu_forward(x, 0.1)[0].dtype == np.float32
    assert F.prelu_forward(x, [0.1, 0.2, 0.3])[0].dtype == np.float32


# ============================================================================ Maxout
MAXOUT_SHAPES = [(0, 3, 2), (4, 0, 2), (1, 1, 1), (5, 3, 1), (7, 13, 3), (2, 3, 127), (4, 5, 2), (2000, 50, 4)]


@pytest.mark.parametrize("shape", MAXOUT_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_maxout_matches_reference(dtype, shape, rng):
    z = rng.standard_normal(shape).astype(dtype)
    if z.size:
        # ties (the first piece wins, like np.argmax), NaN (wins, like np.max), infinities
        z.reshape(-1, shape[2])[::5] = 1.0
        z.reshape(-1)[::11] = np.nan
        z.reshape(-1)[3::13] = np.inf
        z.reshape(-1)[5::17] = -np.inf
    dout = rng.standard_normal(shape[:2]).astype(dtype)
    out, cache = F.maxout_reduce_forward(z)
    rout, rcache = R.maxout_reduce_forward(z)
    assert out.dtype == dtype and out.shape == shape[:2]
    np.testing.assert_array_equal(out, rout)
    if z.size:
        np.testing.assert_array_equal(out, np.max(z, axis=-1))
    dz = F.maxout_reduce_backward(dout, cache)
    assert dz.dtype == dtype and dz.shape == shape
    assert_same_bits(dz, R.maxout_reduce_backward(dout, rcache))


def test_maxout_ties_nan_and_infinities_pick_like_argmax():
    z = np.array([[[1.0, 1.0, 0.5], [np.nan, 2.0, np.nan], [0.0, np.nan, 5.0],
                   [-np.inf, -np.inf, -np.inf], [np.inf, np.inf, 1.0], [-1.0, -0.5, -0.5]]])
    out, cache = F.maxout_reduce_forward(z)
    dz = F.maxout_reduce_backward(np.arange(1.0, 7.0)[None], cache)
    winners = np.argmax(dz != 0, axis=-1)[0]
    np.testing.assert_array_equal(winners, np.argmax(z, axis=-1)[0])
    np.testing.assert_array_equal(winners, [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(out[0], [1.0, np.nan, np.nan, -np.inf, np.inf, -0.5])
    assert np.count_nonzero(dz) == 6


@pytest.mark.parametrize("k", [1, 2, 5])
def test_maxout_numerical_gradient(k, rng):
    n, m = 4, 3
    # pieces well separated (>= 0.05 apart) so a 1e-5 step never changes the winner
    offsets = np.stack([rng.permutation(k) for _ in range(n * m)]).reshape(n, m, k) * 0.1
    z = rng.standard_normal((n, m, 1)) + offsets + rng.uniform(0, 0.04, (n, m, k))
    dout = rng.standard_normal((n, m))
    _, cache = F.maxout_reduce_forward(z)
    dz = F.maxout_reduce_backward(dout, cache)
    num = numerical_gradient(lambda v: F.maxout_reduce_forward(v)[0], z.copy(), dout)
    np.testing.assert_allclose(dz, num, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_maxout_threads_bitwise_identical(dtype, rng):
    shape = (2001, 50, 4)
    assert np.prod(shape) >= 2 * 3 * _k.min_work_per_thread()
    z = rng.standard_normal(shape).astype(dtype)
    z.reshape(-1)[::9] = np.nan
    dout = rng.standard_normal(shape[:2]).astype(dtype)

    def run():
        out, cache = F.maxout_reduce_forward(z)
        return out, F.maxout_reduce_backward(dout, cache)

    assert_thread_invariant(run)


def test_maxout_small_inputs_forced_parallel(rng, force_parallel):
    # 35,000 units: three 16384-unit chunks (the last one ragged), so there is something to share
    z = rng.standard_normal((7, 5000, 3))
    dout = rng.standard_normal((7, 5000))
    out, _ = assert_thread_invariant(
        lambda: (F.maxout_reduce_forward(z)[0], F.maxout_reduce_backward(dout, F.maxout_reduce_forward(z)[1])),
        threads=(1, 2, 3, 8))
    np.testing.assert_array_equal(out, z.max(axis=-1))


def test_maxout_noncontiguous_and_inputs_unmodified(rng):
    base = rng.standard_normal((6, 8, 5))
    z = base[::2, ::-1, 1:4]
    z0 = z.copy()
    dout = rng.standard_normal((3, 16))[:, ::2]  # (3, 8), non-contiguous like z
    dout0 = dout.copy()
    out, cache = F.maxout_reduce_forward(z)
    np.testing.assert_array_equal(out, z.max(axis=-1))
    dz = F.maxout_reduce_backward(dout, cache)
    assert_same_bits(dz, R.maxout_reduce_backward(np.ascontiguousarray(dout), R.maxout_reduce_forward(z)[1]))
    assert_same_bits(z, z0)
    assert_same_bits(dout, dout0)


def test_maxout_argument_errors():
    with pytest.raises(ValueError, match="3-D"):
        F.maxout_reduce_forward(np.ones((4, 6)))
    with pytest.raises(ValueError, match="3-D"):
        F.maxout_reduce_forward(np.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="pieces"):
        F.maxout_reduce_forward(np.ones((2, 3, 0)))
    with pytest.raises(ValueError, match="pieces"):
        F.maxout_reduce_forward(np.ones((2, 3, 128)))
    for bad in [np.ones((2, 3, 2), complex), np.array([[["a"]]]), None]:
        with pytest.raises(TypeError, match=r"\bz\b"):
            F.maxout_reduce_forward(bad)
    _, cache = F.maxout_reduce_forward(np.ones((2, 3, 2)))
    with pytest.raises(ValueError, match="dout"):
        F.maxout_reduce_backward(np.ones((3, 2)), cache)
    with pytest.raises(ValueError, match="dout"):
        F.maxout_reduce_backward(np.ones((2, 3, 2)), cache)
    with pytest.raises(TypeError, match="dout"):
        F.maxout_reduce_backward(np.ones((2, 3), complex), cache)
    for g in [None, (np.zeros((2, 3), int), (2, 3, 2)), "cache"]:
        with pytest.raises(TypeError, match="cache"):
            F.maxout_reduce_backward(np.ones((2, 3)), g)
    with pytest.raises(ValueError, match="tanh_forward"):
        F.maxout_reduce_backward(np.ones((2, 3)), F.tanh_forward(np.ones((2, 3)))[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_fast_paths_take_only_plain_calls_with_the_kernels_numbers(monkeypatch, dtype):
    """relu, leaky relu, sigmoid and tanh run their common case (a plain C-contiguous float
    array, no out=) through activations.forward_fast / backward_fast: the bits of the kernels'
    forward / backward, None (nothing computed) for every call the checked path must take, and
    the public functions reach the memoryview entry points only for such calls."""
    import fastnn.functional.activations as FA
    from fastnn._kernels import activations as ka
    rng = np.random.default_rng(21)
    ops = [ka.IDENTITY, ka.RELU, ka.LEAKY_RELU, ka.SIGMOID, ka.TANH]
    for shape in [(0,), (1,), (5, 7), (3, 4, 5), (200003,)]:
        x = (rng.standard_normal(shape) * 4).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        for op in ops:
            want = np.empty_like(x)
            ka.forward(op, x.reshape(-1), want.reshape(-1), 0.07, 2)
            got = ka.forward_fast(op, x, 0.07, 2)
            assert got.shape == shape and got.dtype == dtype
            assert_same_bits(got, want)
            ka.backward(op, g.reshape(-1), x.reshape(-1), want.reshape(-1), 0.07, 2)
            got = ka.backward_fast(op, g, x, 0.07, 2)
            assert got.shape == shape and got.dtype == dtype
            assert_same_bits(got, want)
    x = rng.standard_normal((6, 4)).astype(dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    for bad in (ka.PRELU, -1, 99):
        assert ka.forward_fast(bad, x, 0.0, 2) is None and ka.backward_fast(bad, x, x, 0.0, 2) is None
    for x_ in (x.tolist(), x[:, ::2], np.asfortranarray(x), x.astype(np.float16),
               x.astype(x.dtype.newbyteorder()), np.ma.MaskedArray(x), np.float32(1.0)):
        assert ka.forward_fast(ka.RELU, x_, 0.0, 2) is None
        assert ka.backward_fast(ka.RELU, x_, x, 0.0, 2) is None
        assert ka.backward_fast(ka.RELU, x, x_, 0.0, 2) is None
    for s_ in (x.astype(other), x.reshape(4, 6), x.reshape(-1), x[:5]):
        assert ka.backward_fast(ka.RELU, x, s_, 0.0, 2) is None
    # the wiring
    calls = {"forward": 0, "backward": 0}

    class Counting:
        def __getattr__(self, name):
            real = getattr(ka, name)
            if name not in calls:
                return real

            def counted(*args):
                calls[name] += 1
                return real(*args)
            return counted
    monkeypatch.setattr(FA, "_k", Counting())
    for fwd, bwd in ((F.relu_forward, F.relu_backward), (F.sigmoid_forward, F.sigmoid_backward),
                     (F.tanh_forward, F.tanh_backward), (F.leaky_relu_forward, F.leaky_relu_backward)):
        out, cache = fwd(x)
        bwd(x, cache)
    assert calls == {"forward": 0, "backward": 0}
    # (a Fortran-ordered x is converted to a C-ordered copy first, which then goes compiled;
    # out= takes the checked path)
    out, cache = F.relu_forward(np.asfortranarray(x))
    assert calls == {"forward": 0, "backward": 0}
    out2, _ = F.relu_forward(x, out=np.empty_like(x))
    assert_same_bits(out2, out)
    assert_same_bits(F.relu_backward(np.asfortranarray(x), cache), F.relu_backward(x, x))
    assert calls == {"forward": 1, "backward": 1}
