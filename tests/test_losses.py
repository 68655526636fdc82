"""The loss kernels (fastnn.functional.losses) against the NumPy reference
(fastnn.reference.losses): values, return types, gradients, numerical stability, NaN, label
checking, thread invariance.

Tolerances, and why they are what they are:

- The loss is compared with ``rtol * scale`` where scale is ``1 + max|x|`` (``1 + max|x - y|**2``
  for MSE), or the loss's own magnitude where that is larger (a float32 result is rounded at
  eps * |loss|; the multiclass hinge sums up to C - 1 margins per row): every loss here is a mean of per-row terms whose rounding errors are a few eps
  relative to the magnitude of the scores involved (softmax: the shifted scores ``x - max``;
  hinge: the margins; logistic: |x|). rtol = 1e-12 in float64 (errors ~1e-16 * scale) and
  1e-5 in float32 (~80 eps; the float32 reference sums N rows in float32, pairwise).
- dx is compared with ``rtol * max|dx_ref|``: every entry is a probability or an indicator
  divided by N, computed with a few roundings.
- The float32 loss is also compared with the reference evaluated in float64 on the same
  (float32) inputs, i.e. with the truth, at the float32 tolerance.
- Numerical gradients (float64, central differences, h = 1e-5, data >= 0.05 away from hinge
  kinks): rtol 1e-7, atol 1e-9 (dx entries are O(1/N) ~ 0.1; rounding ~ eps * |loss| / h ~ 1e-11).
"""
import itertools
import math
import re
import warnings

import numpy as np
import pytest

import fastnn.functional as F
from fastnn.reference import losses as R

from conftest import assert_same_bits, assert_thread_invariant, numerical_gradient, openmp_workers_started

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
GRAD_RTOL, GRAD_ATOL = 1e-7, 1e-9


# ============================================================================ loss table
def _multiclass_labels(rng, n, c):
    return rng.integers(0, c, n)


class Loss:
    def __init__(self, name, kind):
        self.name = name
        self.kind = kind   # multiclass, binary01, binarypm, regression

    @property
    def fn(self):
        return getattr(F, self.name)

    @property
    def ref(self):
        return getattr(R, self.name)

    def data(self, rng, shape, dtype, scale=2.0):
        """(x, y) of the given x shape."""
        x = (scale * rng.standard_normal(shape)).astype(dtype)
        n = shape[0]
        if self.kind == "multiclass":
            y = rng.integers(0, shape[1], n)
        elif self.kind == "binary01":
            y = rng.integers(0, 2, n)
        elif self.kind == "binarypm":
            y = rng.choice([-1, 1], n)
        else:
            y = rng.standard_normal(shape).astype(dtype)
        return x, y

    def scale(self, x, y):
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "regression":
            return 1.0 + float(np.max((x - np.asarray(y, np.float64)) ** 2))
        return 1.0 + float(np.max(np.abs(x)))

    def __repr__(self):
        return self.name


LOSSES = [
    Loss("softmax_loss", "multiclass"),
    Loss("svm_loss", "multiclass"),
    Loss("logistic_loss", "binary01"),
    Loss("binary_svm_loss", "binarypm"),
    Loss("mse_loss", "regression"),
]
BY_NAME = {lo.name: lo for lo in LOSSES}
NAMES = list(BY_NAME)
MULTICLASS = [lo.name for lo in LOSSES if lo.kind == "multiclass"]
BINARY = [lo.name for lo in LOSSES if lo.kind.startswith("binary")]

SHAPES = {
    # (700, 3): the softmax kernel's row blocks (2048 // C rows) with a ragged last one;
    # (5, 3000): more classes than a block holds, one row per block
    # (9, 2), (300, 3), (64, 10): the softmax kernel's fixed-length loops for 2, 3 and 10 classes
    "multiclass": [(1, 1), (1, 5), (9, 2), (7, 13), (64, 10), (300, 3), (700, 3), (5, 3000)],
    "binary01": [(1,), (7,), (7, 1), (1000,), (1000, 1)],
    "binarypm": [(1,), (7,), (7, 1), (1000,), (1000, 1)],
    # (N, d1, ..., dk): rows flattened like the reference's sum over all axes
    "regression": [(1,), (7,), (1, 1), (7, 13), (300, 3), (4, 3, 5), (2, 3, 4, 5), (1, 1, 1)],
}
CASES = [(name, shape) for name in NAMES for shape in SHAPES[BY_NAME[name].kind]]


def assert_loss_close(got, ref, scale, dtype, what):
    assert isinstance(got, float) and type(got) is float, f"{what}: loss is {type(got).__name__}, not float"
    err = abs(got - float(ref))
    tol = RTOL[np.dtype(dtype)] * scale
    assert err <= tol, f"{what}: loss {got!r} vs {float(ref)!r}: error {err:.3g} > {tol:.3g}"


def assert_dx_close(dx, ref_dx, x, dtype, what):
    assert isinstance(dx, np.ndarray)
    assert dx.dtype == dtype, f"{what}: dx dtype {dx.dtype}"
    assert dx.shape == np.shape(x), f"{what}: dx shape {dx.shape} != {np.shape(x)}"
    ref_dx = np.asarray(ref_dx)
    assert ref_dx.shape == dx.shape
    scale = float(np.max(np.abs(ref_dx.astype(np.float64)))) if ref_dx.size else 0.0
    err = float(np.max(np.abs(dx.astype(np.float64) - ref_dx.astype(np.float64))))
    tol = RTOL[np.dtype(dtype)] * scale
    assert err <= tol, f"{what}: dx error {err:.3g} > {tol:.3g}"


# ============================================================================ values vs reference
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_matches_reference(name, shape, dtype, rng):
    lo = BY_NAME[name]
    x, y = lo.data(rng, shape, dtype)
    loss, dx = lo.fn(x, y)
    ref_loss, ref_dx = lo.ref(x, y)
    # the truth: the same inputs evaluated in float64
    x64 = x.astype(np.float64)
    y64 = y.astype(np.float64) if lo.kind == "regression" else y
    true_loss, _ = lo.ref(x64, y64)
    # a float32 loss is rounded at eps * |loss|, and the hinge of C classes sums up to C - 1
    # margins, so with many classes |loss| outgrows the score scale (5 x 3000: ~6000 vs ~9)
    scale = max(lo.scale(x, y), abs(float(true_loss)))
    assert_loss_close(loss, ref_loss, scale, dtype, f"{name} vs reference")
    assert_dx_close(dx, ref_dx, x, dtype, name)
    assert_loss_close(loss, true_loss, scale, dtype, f"{name} vs float64 truth")


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_a_mean_over_rows(name, rng):
    """Averaged over N: a batch made of the same rows twice has the same loss and half the dx."""
    lo = BY_NAME[name]
    shape = {"multiclass": (9, 4), "binary01": (9,), "binarypm": (9,), "regression": (9, 3)}[lo.kind]
    x, y = lo.data(rng, shape, np.float64)
    loss, dx = lo.fn(x, y)
    loss2, dx2 = lo.fn(np.concatenate([x, x]), np.concatenate([y, y]))
    assert abs(loss2 - loss) <= 1e-12 * lo.scale(x, y)
    np.testing.assert_allclose(dx2[:9], dx / 2, rtol=1e-12, atol=0)
    np.testing.assert_allclose(dx2[9:], dx / 2, rtol=1e-12, atol=0)


def test_known_values_from_the_definitions():
    """Small cases worked out from the formulas (no reference code involved)."""
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y = np.array([2, 0])
    loss, _ = F.softmax_loss(x, y)
    e = np.exp([1.0, 2.0, 3.0])
    expected = (-np.log(e[2] / e.sum()) + np.log(3.0)) / 2
    assert abs(loss - expected) <= 1e-15 * 4
    loss, dx = F.svm_loss(x, y)
    # row 0: margins 1-3+1 = -1, 2-3+1 = 0 -> 0; row 1: 0-0+1 twice -> 2
    assert loss == 1.0
    np.testing.assert_array_equal(dx, [[0, 0, 0], [-1.0, 0.5, 0.5]])
    loss, dx = F.binary_svm_loss(np.array([0.5, 2.0, -0.25]), np.array([1, 1, -1]))
    assert abs(loss - (0.5 + 0.0 + 0.75) / 3) <= 1e-16
    np.testing.assert_allclose(dx, [-1 / 3, 0, 1 / 3], rtol=1e-15)
    loss, dx = F.logistic_loss(np.array([0.0, 0.0]), np.array([0, 1]))
    assert abs(loss - np.log(2.0)) <= 1e-15
    np.testing.assert_allclose(dx, [0.25, -0.25], rtol=1e-15)
    loss, dx = F.mse_loss(np.array([[1.0, 2.0], [3.0, 5.0]]), np.array([[0.0, 2.0], [3.0, 3.0]]))
    assert loss == 0.5 * (1 + 4) / 2
    np.testing.assert_array_equal(dx, [[0.5, 0.0], [0.0, 1.0]])


# ============================================================================ gradients
def _hinge_safe(rng, lo, shape):
    """float64 data with every hinge margin at least 0.05 away from its kink."""
    for _ in range(500):
        x, y = lo.data(rng, shape, np.float64, scale=1.0)
        if lo.name == "svm_loss":
            n = shape[0]
            margins = x - x[np.arange(n), y][:, None] + 1
            margins[np.arange(n), y] = 1.0
            ok = np.all(np.abs(margins) >= 0.05)
        elif lo.name == "binary_svm_loss":
            ok = np.all(np.abs(1 - y * x.reshape(-1)) >= 0.05)
        else:
            ok = True
        if ok:
            return x, y
    raise AssertionError("could not draw kink-free data")


@pytest.mark.parametrize("name", NAMES)
def test_numerical_gradient(name, rng):
    lo = BY_NAME[name]
    shape = {"multiclass": (6, 5), "binary01": (7,), "binarypm": (7, 1), "regression": (5, 3)}[lo.kind]
    x, y = _hinge_safe(rng, lo, shape)
    loss, dx = lo.fn(x, y)
    num = numerical_gradient(lambda v: np.array(lo.fn(v, y)[0]), x.copy(), 1.0)
    np.testing.assert_allclose(dx, num, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert np.max(np.abs(dx)) > 1e-3  # a gradient that is not trivially zero


# ============================================================================ stability
def _huge(lo, dtype):
    """Scores of +-1e4 (exp overflows in both float32 and float64)."""
    if lo.kind == "multiclass":
        x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0], [1e4, 1e4, -1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
        return x, np.array([1, 1, 2, 0])
    if lo.kind == "binary01":
        return np.array([1e4, -1e4, 1e4, -1e4], dtype=dtype), np.array([0, 1, 1, 0])
    if lo.kind == "binarypm":
        return np.array([1e4, -1e4, 1e4, -1e4], dtype=dtype), np.array([-1, 1, 1, -1])
    return (np.array([[1e4, -1e4], [-1e4, 1e4]], dtype=dtype),
            np.array([[-1e4, 1e4], [-1e4, 1e4]], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_huge_scores_are_finite_and_silent(name, dtype):
    lo = BY_NAME[name]
    x, y = _huge(lo, dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        loss, dx = lo.fn(x, y)
    assert np.isfinite(loss)
    assert np.all(np.isfinite(dx))
    # the exact values, from a reference evaluated in float64 (the reference is stable too)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        ref_loss, ref_dx = lo.ref(x64, y.astype(np.float64) if lo.kind == "regression" else y)
    assert_loss_close(loss, ref_loss, lo.scale(x, y), dtype, f"{name} huge scores")
    assert_dx_close(dx, ref_dx.astype(dtype), x, dtype, f"{name} huge scores")


def test_huge_scores_known_answers():
    """log-sum-exp of (1e4, -1e4, 0) is 1e4 (the other terms vanish): the loss of label 1 is
    2e4 exactly in float64, and the probabilities are exactly one-hot."""
    loss, dx = F.softmax_loss(np.array([[1e4, -1e4, 0.0]]), np.array([1]))
    assert loss == 2e4
    np.testing.assert_array_equal(dx, [[1.0, -1.0, 0.0]])
    loss, dx = F.logistic_loss(np.array([1e4, -1e4]), np.array([0, 1]))
    assert loss == 1e4
    np.testing.assert_array_equal(dx, [0.5, -0.5])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_loss_of_tied_rows_is_the_log_of_the_ties(dtype):
    """A row whose k top scores tie, the others far below (their exponentials are exactly 0),
    has the loss log(k) for a label on a top score: the kernel's own logarithm, within an ulp
    of math.log, for k across binades (2^j - 1, 2^j, 2^j + 1, and around sqrt(2) 2^j, where its
    reduction moves to the next exponent), through the 2-, 3- and 10-class loops and the
    general one."""
    ks = set(range(1, 41))
    for j in range(1, 13):
        r = math.sqrt(2) * 2**j
        ks |= {2**j - 1, 2**j, 2**j + 1, math.floor(r), math.ceil(r)}
    checked = []
    for C in (2, 3, 10, 4099):
        for k in sorted(k for k in ks if k <= C):
            x = np.full((1, C), -1e4, dtype=dtype)
            x[0, :k] = 0.5
            loss, dx = F.softmax_loss(x, np.array([k - 1]))
            want = math.log(k)
            assert abs(loss - want) <= np.spacing(want), f"C={C}, {k} ties: loss {loss!r}, log {want!r}"
            # the softmax of a top score, 1/k, rounded to the dtype (0 for a lone top score: it
            # is the label's, p - 1)
            assert dx[0, 0] == (np.dtype(dtype).type(1 / k) if k > 1 else 0.0), (C, k, dx[0, 0])
            checked.append(k)
    assert max(checked) == 4097 and len(checked) == len(set(checked)) + 2 + 3 + 10



@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_gradient_of_confident_scores_keeps_its_digits(dtype):
    """The gradient for label 1 is sigmoid(v) - 1 = -sigmoid(-v), computed as the latter:
    as a difference it cancels for a confidently right positive (1e-3 relative error at
    v = 30, and 0 from v = 37 on, where the true value is still a normal number), and for
    label 0 sigmoid(v) itself is exact. Compared with sigmoid(-v) computed in long double
    (80-bit on x86-64; where long double is float64, it is still the non-cancelling form)."""
    v = np.array([-40.0, -5.0, 0.0, 5.0, 20.0, 30.0, 37.0, 50.0, 80.0, 700.0])
    if dtype == np.float32:
        v = v[v < 80]   # (float32's smallest normal is 1.2e-38: exp(-80) is below it)
    x = v.astype(dtype)
    n = x.shape[0]
    v = x.astype(np.float64)
    e = np.exp(-np.abs(v.astype(np.longdouble)))
    sig_minus = np.where(v >= 0, e / (1 + e), 1 / (1 + e))   # sigmoid(-v)
    sig = np.where(v >= 0, 1 / (1 + e), e / (1 + e))         # sigmoid(v)
    for label, want in ((1, -sig_minus), (0, sig)):
        _, dx = F.logistic_loss(x, np.full(n, label))
        _, rdx = R.logistic_loss(x, np.full(n, label))
        want = (want / n).astype(np.float64)
        for got, what in ((dx, "fastnn"), (rdx, "reference")):
            rel = np.abs(got.astype(np.float64) - want) / np.abs(want)
            assert rel.max() <= 4 * np.finfo(dtype).eps, (what, label, v[rel.argmax()], rel.max())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_logistic_loss_of_confident_scores_keeps_its_digits(dtype):
    """The loss of a confidently right score is log1p(exp(-|v|)), tiny but not 0: computed as
    log(1 + exp(-|v|)) it rounds to 0 from |v| ~ 37 on. Compared, per row, with log1p of
    exp(-|v|) in long double."""
    v = np.array([5.0, 20.0, 37.0, 40.0, 50.0, 80.0])
    if dtype == np.float32:
        v = v[v < 80]
    for sign, label in ((1.0, 1), (-1.0, 0)):
        x = (sign * v).astype(dtype)
        want = np.log1p(np.exp(-np.abs(x.astype(np.longdouble)))).astype(np.float64)
        for k in range(len(v)):   # (one row at a time: the mean of a batch would hide the tail)
            loss, _ = F.logistic_loss(x[k:k + 1], np.array([label]))
            assert abs(loss - want[k]) <= 1e-12 * want[k], (v[k], label, loss, want[k])


def test_mse_float32_forms_the_difference_in_double(rng):
    """float32 mse_loss subtracts in double: dx is float32((x - y) / N) rounded once from the
    double difference, and the loss is the double formula's (x and y of different magnitudes,
    where a float32 difference rounds)."""
    x = (rng.standard_normal((64, 7)) * 1e3).astype(np.float32)
    y = (rng.standard_normal((64, 7)) * 1e-2).astype(np.float32)
    loss, dx = F.mse_loss(x, y)
    d = x.astype(np.float64) - y.astype(np.float64)
    assert_same_bits(dx, (d / 64).astype(np.float32))
    assert abs(loss - 0.5 * (d * d).sum() / 64) <= 1e-12 * loss


@pytest.mark.parametrize("name", NAMES)
def test_x_and_y_not_modified(name, rng):
    """The course's numerical gradient check breaks if a loss shifts x in place."""
    lo = BY_NAME[name]
    shape = {"multiclass": (20, 6), "binary01": (20,), "binarypm": (20, 1), "regression": (20, 2)}[lo.kind]
    x, y = lo.data(rng, shape, np.float64, scale=30.0)
    x0, y0 = x.copy(), y.copy()
    lo.fn(x, y)
    assert_same_bits(x, x0, what="x after the loss")
    assert_same_bits(y, y0, what="y after the loss")


@pytest.mark.parametrize("name", NAMES)
def test_nan_scores_propagate(name, rng):
    lo = BY_NAME[name]
    # (5, 2), (5, 3), (5, 10): the softmax kernel's fixed-length loops; (5, 1): one class,
    # where the hinge has no margin to carry a NaN (its loss was 0 beside a NaN gradient)
    shapes = {"multiclass": [(5, 4), (5, 2), (5, 3), (5, 10), (5, 1)], "binary01": [(5,)],
              "binarypm": [(5,)], "regression": [(5, 2)]}[lo.kind]
    for dtype, shape in itertools.product(DTYPES, shapes):
        x, y = lo.data(rng, shape, dtype)
        x.reshape(-1)[3] = np.nan
        if lo.kind == "multiclass":
            # a NaN off the label in one row, at the label in another (the hinge's gradient row
            # is NaN either way: only the second made it NaN before)
            C = shape[1]
            x[0] = np.arange(C)
            x[0, (y[0] + 1) % C] = np.nan
            x[2, y[2]] = np.nan
        loss, dx = lo.fn(x, y)
        assert isinstance(loss, float)
        assert np.isnan(loss), f"{name}: a NaN score gave loss {loss}"
        assert dx.dtype == dtype and dx.shape == x.shape
        # the gradient of the sample with the NaN score is NaN (its whole row for the multiclass
        # losses, which couple a row's scores), every other entry is a number. (The NumPy
        # reference's hinge losses give 0 there instead: NaN > 0 is False.)
        nan_x = np.isnan(x)
        want = np.broadcast_to(nan_x.any(axis=1, keepdims=True), x.shape) if lo.kind == "multiclass" else nan_x
        np.testing.assert_array_equal(np.isnan(dx), want, err_msg=f"{name}: where dx is NaN")
        if lo.kind == "multiclass":
            # each of those rows alone: a NaN loss too, whether the NaN is its label's score
            # or another (then only the NaN in the row's sum of exponentials carries it)
            for i in (0, 2):
                row_loss, _ = lo.fn(x[i:i + 1], y[i:i + 1])
                assert np.isnan(row_loss), f"{name}, {shape}: row {i} alone gave loss {row_loss}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_svm_margin_of_inf_minus_inf_is_a_nan_row(dtype):
    """Two infinite scores, one the correct class's, make a NaN margin (inf - inf): the loss
    is NaN and so is the row's whole gradient (it had a NaN beside finite entries); other rows
    are what the reference gives."""
    x = np.array([[np.inf, np.inf, 1.0], [0.5, 1.0, 2.0]], dtype)
    y = np.array([0, 1])
    loss, dx = F.svm_loss(x, y)
    assert np.isnan(loss) and np.isnan(dx[0]).all()
    np.testing.assert_array_equal(dx[1], R.svm_loss(x[1:], y[1:])[1][0] / 2)


@pytest.mark.parametrize("name", NAMES)
def test_noncontiguous_scores(name, rng):
    lo = BY_NAME[name]
    shape = {"multiclass": (30, 7), "binary01": (30,), "binarypm": (30,), "regression": (30, 4)}[lo.kind]
    x, y = lo.data(rng, shape, np.float64)
    xv = np.asfortranarray(x) if x.ndim == 2 else np.flip(np.flip(x).copy())
    assert not xv.flags.c_contiguous
    loss, dx = lo.fn(xv, y)
    loss_c, dx_c = lo.fn(x, y)
    assert loss == loss_c
    assert_same_bits(dx, dx_c)


# ============================================================================ labels
@pytest.mark.parametrize("name", MULTICLASS)
def test_multiclass_label_errors(name):
    fn = BY_NAME[name].fn
    x = np.zeros((4, 3))
    fn(x, np.array([0, 1, 2, 2]))
    fn(x, np.array([0, 1, 2, 2], dtype=np.uint8))
    fn(x, [0, 1, 2, 2])
    with pytest.raises(TypeError, match=r"\by\b"):
        fn(x, np.array([0.0, 1.0, 2.0, 2.0]))
    with pytest.raises(TypeError, match=r"\by\b"):
        fn(x, None)
    with pytest.raises(TypeError, match=r"\by\b"):
        fn(x, np.array(["a", "b", "c", "d"]))
    # the first label out of range, with its index (not the smallest or largest label)
    with pytest.raises(ValueError, match=r"\by\b.*got -1 \(at index 1\)"):
        fn(x, np.array([0, -1, 2, -2]))
    with pytest.raises(ValueError, match=r"\by\b.*got 3 \(at index 2\)"):
        fn(x, np.array([0, 1, 3, 7]))
    with pytest.raises(ValueError, match=r"\by\b.*got 9 \(at index 0\)"):
        fn(x, np.array([9, 1, 3, 2], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\by\b"):
        fn(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\by\b"):
        fn(x, np.array([0, 1, 2, 2, 0]))
    with pytest.raises(ValueError, match=r"\by\b"):
        fn(x, np.array([[0], [1], [2], [2]]))
    with pytest.raises(ValueError, match=r"\by\b"):
        fn(x, np.array(1))


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_raises(name):
    lo = BY_NAME[name]
    if lo.kind == "multiclass":
        args = (np.zeros((0, 3)), np.zeros(0, dtype=int))
    elif lo.kind == "regression":
        args = (np.zeros((0, 2)), np.zeros((0, 2)))
    else:
        args = (np.zeros(0), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="empty"):
        lo.fn(*args)


@pytest.mark.parametrize("name", MULTICLASS)
def test_scores_shape_errors(name):
    fn = BY_NAME[name].fn
    with pytest.raises(ValueError, match=r"\bx\b"):
        fn(np.zeros(4), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"\bx\b"):
        fn(np.zeros((4, 0)), np.zeros(4, dtype=int))
    with pytest.raises(TypeError, match=r"\bx\b"):
        fn(np.zeros((4, 3), complex), np.zeros(4, dtype=int))


def test_logistic_labels_only_0_1():
    x = np.zeros(4)
    F.logistic_loss(x, np.array([0, 1, 1, 0]))
    F.logistic_loss(x, np.array([False, True, True, False]))
    for bad, i in (([0, 1, 2, 0], 2), ([0, -1, 1, 3], 1)):
        with pytest.raises(ValueError, match=rf"\by\b.*got {bad[i]} \(at index {i}\)"):
            F.logistic_loss(x, np.array(bad))
    with pytest.raises(TypeError, match=r"\by\b"):
        F.logistic_loss(x, np.array([0j, 1, 1, 0]))
    with pytest.raises(ValueError, match=r"\by\b"):
        F.logistic_loss(x, np.array([0, 1, 1]))


@pytest.mark.parametrize("name, labels", [("logistic", [0, 1, 1, 0, 1]),
                                          ("binary_svm", [-1, 1, 1, -1, 1])])
@pytest.mark.parametrize("ldtype", [np.float64, np.float32, np.float16])
def test_binary_losses_take_float_labels_that_are_whole_numbers(name, labels, ldtype, rng):
    """0.0 / 1.0 targets (PyTorch's BCE takes only floats; the NumPy reference computes with
    them) give the integer labels' numbers; a float that is no label is named."""
    fn, ref = getattr(F, name + "_loss"), getattr(R, name + "_loss")
    x = rng.standard_normal(5)
    want = fn(x, np.array(labels))
    for y in (np.array(labels, dtype=ldtype), np.array(labels, dtype=ldtype).reshape(-1, 1)):
        got = fn(x, y)
        assert got[0] == want[0]
        np.testing.assert_array_equal(got[1], want[1])
        r = ref(x, np.array(labels, dtype=ldtype))
        np.testing.assert_allclose(got[0], r[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], r[1], rtol=1e-12)
    for bad, shown in ((0.5, "0.5"), (np.nan, "nan"), (np.inf, "inf"), (2.0, "2"), (1e300, "1e+300")):
        y = np.array(labels, dtype=np.float64)
        y[3] = bad
        with pytest.raises(ValueError, match=rf"\by\b.*{re.escape(shown)}"):
            fn(x, y)


def test_binary_svm_labels_only_minus1_plus1():
    x = np.zeros(4)
    F.binary_svm_loss(x, np.array([-1, 1, 1, -1]))
    for bad, i in (([1, 0, 1, 0], 1), ([-1, 1, 2, -1], 2), ([-2, 1, 1, 5], 0)):
        with pytest.raises(ValueError, match=rf"\by\b.*got {bad[i]} \(at index {i}\)"):
            F.binary_svm_loss(x, np.array(bad))
    with pytest.raises(TypeError, match=r"\by\b"):
        F.binary_svm_loss(x, np.array(["-1", "1", "1", "-1"]))
    with pytest.raises(ValueError, match=r"\by\b"):
        F.binary_svm_loss(x, np.array([-1, 1, 1, -1, 1]))


@pytest.mark.parametrize("name", BINARY)
def test_binary_x_shapes(name, rng):
    lo = BY_NAME[name]
    x, y = lo.data(rng, (11,), np.float64)
    loss1, dx1 = lo.fn(x, y)
    loss2, dx2 = lo.fn(x[:, None], y)
    loss3, dx3 = lo.fn(x[:, None], y[:, None])
    assert dx1.shape == (11,) and dx2.shape == (11, 1) and dx3.shape == (11, 1)
    assert loss1 == loss2 == loss3
    assert_same_bits(dx2[:, 0], dx1)
    assert_same_bits(dx3, dx2)
    for bad in (np.zeros((11, 2)), np.zeros((11, 1, 1)), np.float64(1.0)):
        with pytest.raises(ValueError, match=r"\bx\b"):
            lo.fn(bad, y)
    with pytest.raises(ValueError, match=r"\by\b"):
        lo.fn(x, np.stack([y, y], axis=1))


def test_mse_shapes():
    with pytest.raises(ValueError, match=r"\by\b"):
        F.mse_loss(np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match=r"\by\b"):
        F.mse_loss(np.ones((3, 2)), np.ones((2, 3)))
    loss, dx = F.mse_loss(np.ones((3, 2), np.float32), np.zeros((3, 2), np.float64))
    assert dx.dtype == np.float64 and loss == 1.0
    # x of any ndim >= 1, y of x's shape exactly (not merely the same size)
    for x_shape, y_shape in [((3, 2, 2), (3, 4)), ((3, 4), (3, 2, 2)), ((3, 2, 2), (3, 2, 2, 1)),
                             ((3, 2, 2), (3, 2))]:
        with pytest.raises(ValueError, match=r"\by\b"):
            F.mse_loss(np.ones(x_shape), np.ones(y_shape))
        with pytest.raises(ValueError, match=r"\by\b"):   # as lists too (checked after conversion)
            F.mse_loss(np.ones(x_shape).tolist(), np.ones(y_shape).tolist())
    for bad in (np.float64(1.0), np.ones(()), 2.0):
        with pytest.raises(ValueError, match=r"\bx\b"):
            F.mse_loss(bad, bad)
    with pytest.raises(ValueError, match=r"\bx\b"):     # an empty batch, as in 2-D
        F.mse_loss(np.ones((0, 2, 3)), np.ones((0, 2, 3)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_mse_any_ndim(dtype, rng):
    """x (N, d1, ..., dk) as the reference takes it: loss and dx (in x's shape) against the
    reference, bitwise the result of the same rows flattened to (N, D); non-contiguous input,
    inputs untouched, no outputs per row (D = 0: loss 0.0, as the reference's empty sum)."""
    lo = BY_NAME["mse_loss"]
    for shape in [(5, 3, 4), (2, 3, 1, 4), (6, 1, 7)]:
        x, y = lo.data(rng, shape, dtype)
        x0, y0 = x.copy(), y.copy()
        loss, dx = F.mse_loss(x, y)
        ref_loss, ref_dx = R.mse_loss(x, y)
        assert dx.shape == shape and dx.dtype == dtype
        assert_loss_close(loss, ref_loss, lo.scale(x, y), dtype, f"mse_loss {shape} vs reference")
        assert_dx_close(dx, ref_dx, x, dtype, f"mse_loss {shape}")
        flat_loss, flat_dx = F.mse_loss(x.reshape(shape[0], -1), y.reshape(shape[0], -1))
        assert loss == flat_loss
        assert_same_bits(dx.reshape(shape[0], -1), flat_dx, what=f"mse_loss {shape} dx vs flattened")
        assert_same_bits(x, x0, what="x")
        assert_same_bits(y, y0, what="y")
    # non-contiguous 3-D views (a transpose and a step slice)
    base_x, base_y = lo.data(rng, (4, 6, 5), dtype)
    for view in (lambda a: a.transpose(0, 2, 1), lambda a: a[:, ::2, ::-1]):
        x, y = view(base_x), view(base_y)
        loss, dx = F.mse_loss(x, y)
        ref_loss, ref_dx = R.mse_loss(x, y)
        assert dx.shape == x.shape
        assert_loss_close(loss, ref_loss, lo.scale(x, y), dtype, "mse_loss non-contiguous 3-D")
        assert_dx_close(dx, ref_dx, x, dtype, "mse_loss non-contiguous 3-D")
    x = np.ones((3, 0, 2), dtype)
    loss, dx = F.mse_loss(x, x)
    ref_loss, ref_dx = R.mse_loss(x, x)
    assert loss == float(ref_loss) == 0.0 and type(loss) is float
    assert dx.shape == ref_dx.shape == (3, 0, 2) and dx.dtype == dtype


def test_mse_any_ndim_gradient_and_threads(rng):
    """The 3-D dx is the numerical gradient of the loss, and bitwise the same for any thread
    count on a batch big enough for the kernel's threads."""
    lo = BY_NAME["mse_loss"]
    x, y = lo.data(rng, (4, 3, 2), np.float64)
    _, dx = F.mse_loss(x, y)
    num = numerical_gradient(lambda v: np.array(F.mse_loss(v, y)[0]), x, np.array(1.0))
    np.testing.assert_allclose(dx, num, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    x, y = lo.data(rng, (5000, 10, 10), np.float32, scale=5.0)
    assert_thread_invariant(lambda: F.mse_loss(x, y))


# ============================================================================ threads
BIG = {
    "softmax_loss": ((5000, 100), "x = rng.standard_normal((5000, 100)); y = rng.integers(0, 100, 5000)"),
    "svm_loss": ((5000, 100), "x = rng.standard_normal((5000, 100)); y = rng.integers(0, 100, 5000)"),
    "logistic_loss": ((100_000,), "x = rng.standard_normal(100_000); y = rng.integers(0, 2, 100_000)"),
    "binary_svm_loss": ((100_000,), "x = rng.standard_normal(100_000); y = rng.choice([-1, 1], 100_000)"),
    "mse_loss": ((5000, 100), "x = rng.standard_normal((5000, 100)); y = rng.standard_normal((5000, 100))"),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_threads_bitwise_identical(name, dtype, rng):
    lo = BY_NAME[name]
    x, y = lo.data(rng, BIG[name][0], dtype, scale=5.0)
    assert_thread_invariant(lambda: lo.fn(x, y))


@pytest.mark.parametrize("name", NAMES)
def test_big_batch_runs_parallel(name):
    """The batches of test_threads_bitwise_identical are large enough for the kernel to use
    every thread it is given (otherwise that test would compare serial runs only)."""
    started = openmp_workers_started("rng = np.random.default_rng(0)\n" + BIG[name][1], f"F.{name}(x, y)")
    if started is None:
        pytest.skip("OpenMP worker threads cannot be observed here")
    assert started == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_class_loss_fast_takes_only_plain_calls_with_the_kernels_numbers(dtype):
    """softmax_loss and svm_loss run their common case through losses.class_loss_fast: the
    loss and the bits of class_loss, and None (nothing computed) for every call the checked
    path must convert or refuse, a label out of range among them."""
    from fastnn._kernels import losses as kl
    rng = np.random.default_rng(13)
    for kind in (kl.SOFTMAX, kl.SVM):
        for n, c in [(1, 1), (1, 7), (13, 3), (300, 3), (1000, 10), (37, 129)]:
            x = (rng.standard_normal((n, c)) * 5).astype(dtype)
            y = rng.integers(0, c, n).astype(np.intp)
            dx = np.empty_like(x)
            want = kl.class_loss(kind, x, y, dx, 2)
            got = kl.class_loss_fast(kind, x, y, 2)
            assert got is not None
            assert got[0] == want
            assert_same_bits(got[1], dx)
    x = rng.standard_normal((6, 4)).astype(dtype)
    y = np.array([0, 3, 1, 2, 2, 0], dtype=np.intp)
    declined = [
        (kl.MSE, x, y), (kl.LOGISTIC, x, y),
        (kl.SOFTMAX, x.tolist(), y), (kl.SOFTMAX, x, y.tolist()),
        (kl.SOFTMAX, x.astype(np.float16), y), (kl.SOFTMAX, x.astype(x.dtype.newbyteorder()), y),
        (kl.SOFTMAX, x.reshape(6, 2, 2), y), (kl.SOFTMAX, x.reshape(-1), y),
        (kl.SOFTMAX, x[:0], y[:0]), (kl.SOFTMAX, x[:, :0], y),
        (kl.SOFTMAX, np.asfortranarray(x), y), (kl.SOFTMAX, x[::2], y[:3]),
        (kl.SOFTMAX, np.ma.MaskedArray(x), y),
        (kl.SOFTMAX, x, y.astype(np.int32)), (kl.SOFTMAX, x, y.astype(np.uint64)),
        (kl.SOFTMAX, x, y[:5]), (kl.SOFTMAX, x, y.reshape(6, 1)), (kl.SOFTMAX, x, y.repeat(2)[::2]),
        (kl.SOFTMAX, x, np.array([0, 3, 1, 4, 2, 0], dtype=np.intp)),    # == C
        (kl.SVM, x, np.array([0, 3, 1, 2, 2, -1], dtype=np.intp)),       # negative
    ]
    for kind, x_, y_ in declined:
        assert kl.class_loss_fast(kind, x_, y_, 2) is None
