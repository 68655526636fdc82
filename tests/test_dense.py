"""The dense kernels (fastnn.functional.dense) against the NumPy reference
(fastnn.reference.dense): affine, every fused sandwich affine_<act>, and maxout; values, shapes,
layouts, dtypes, gradients, live parameters, thread invariance, argument checking.

Tolerances, and why they are what they are:

- A product is compared with a bound on its magnitude, not element by element: the "scale" of
  ``x @ w + b`` is ``max(|x| @ |w| + |b|)`` (times the activation's Lipschitz constant, and at least
  the largest output), the scale of ``dx = dz @ w.T`` is ``max(|dout| @ |w|.T)``, of ``dw``
  ``max(|x|.T @ |dout|)``, of ``db`` ``max(sum |dout|)``, of ``dalpha`` ``max(sum |dout * z|)``
  (times ``max(1, |alpha|)`` where the activation's slope enters). Both BLAS and NumPy round each
  of the K terms of a sum once, in different orders, so either is within about ``K * eps * scale``
  of the truth and usually within ``sqrt(K) * eps * scale``.
- float64: 1e-12 * scale. K is at most ~700 here, K * eps ~ 1.6e-13: a wide margin.
- float32: 1e-5 * scale (~ 80 eps); the typical error is ~ sqrt(K) * eps ~ 3e-6 * scale at K ~ 700.
- Kinks (ReLU family) and ties (maxout): where the pre-activation is within 1e-4 of its own scale
  of the kink, or two pieces within 1e-4 of the scale of each other, the two computations may
  legitimately take different branches; there ``dout`` is set to 0, so those elements contribute
  nothing to any gradient, and everything else is compared at the tolerances above.
- Numerical gradients (float64, central differences, h = 1e-5, data >= 0.05 away from kinks and
  ties): truncation ~h**2, rounding ~eps * |f| / h ~ 1e-10; rtol 1e-7, atol 1e-8 leave a wide
  margin while a wrong formula is off by O(1).
- Same kernel, different input layout or dtype conversion done by the caller: bitwise identical.
"""
import numpy as np
import pytest

import fastnn.functional as F
from fastnn._kernels import dense as _kd
from fastnn.reference import activations as RA
from fastnn.reference import dense as R

from conftest import (MANY_THREADS, assert_same_bits, assert_thread_invariant, numerical_gradient,
                      openmp_workers_started)
from kernel_specs import layer_api_dense


@pytest.fixture(autouse=True)
def _small_tiles():
    """Tiles of ~2 MFLOP (instead of the tuned ~4 GFLOP) so that test-sized products are cut into
    many ragged tiles and every tiling path runs, and the gemv path for thin products on
    whatever kernels the BLAS has (fastnn turns it off where it has small-matrix ones; the
    gemm_only fixture runs without it); restored after each test."""
    saved = _kd.tile_params()
    _kd.set_tile_params(tile_flops=2e6, min_tile_rows=16, min_tile_cols=16, serial_flops=1e6, thin=4)
    yield
    _kd.set_tile_params(**saved)

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
KINK_MARGIN = 1e-4
GRAD_RTOL, GRAD_ATOL = 1e-7, 1e-8


# ============================================================================ sandwich table
class Sandwich:
    """One fused layer: the functional forward/backward and the reference oracle.

    alpha: None (no parameter), a float (leaky_relu's alpha, prelu's scalar alpha), "vector"
    (prelu: one alpha per unit, drawn per test) or "shared" (prelu: one alpha of shape (1,)
    for every unit, drawn per test)."""

    def __init__(self, name, act, alpha=None, default_alpha=False):
        self.name = name
        self.act = act                    # None (plain affine), relu, leaky_relu, sigmoid, tanh, prelu
        self.alpha = alpha
        self.default_alpha = default_alpha  # leaky_relu called without alpha (default 0.01)

    @property
    def base(self):
        return "affine" if self.act is None else f"affine_{self.act}"

    @property
    def kinked(self):
        return self.act in ("relu", "leaky_relu", "prelu")

    def make_alpha(self, rng, m, dtype):
        if self.alpha == "vector":
            return rng.uniform(-0.5, 1.5, m).astype(dtype)
        if self.alpha == "shared":   # one slope for every unit, shape (1,)
            return rng.uniform(-0.5, 1.5, 1).astype(dtype)
        return self.alpha

    def args(self, alpha):
        if self.act == "prelu" or (self.act == "leaky_relu" and not self.default_alpha):
            return (alpha,)
        return ()

    def fwd(self, x, w, b, alpha=None):
        return getattr(F, self.base + "_forward")(x, w, b, *self.args(alpha))

    def bwd(self, dout, cache):
        return getattr(F, self.base + "_backward")(dout, cache)

    def fwd_chunked(self, x, w, b, alpha=None):
        """The forward as the layer API runs it: a small layer in row chunks. The cache it
        returns is the backward's (bwd_chunked)."""
        if self.act == "leaky_relu" and self.default_alpha:
            alpha = 0.01
        (out, _), backward = layer_api_dense(self.act, x, w, b, alpha)
        return out, backward

    def bwd_chunked(self, dout, cache):
        return cache(dout)

    def ref_fwd(self, x, w, b, alpha=None):
        if self.act == "leaky_relu" and self.default_alpha:
            alpha = 0.01
        return getattr(R, self.base + "_forward")(x, w, b, *(() if alpha is None else (alpha,)))

    def ref_bwd(self, dout, cache):
        return getattr(R, self.base + "_backward")(dout, cache)

    def slope(self, alpha):
        """An upper bound of |act'| (the Lipschitz constant)."""
        if alpha is None or self.act not in ("leaky_relu", "prelu"):
            return 1.0
        return max(1.0, float(np.max(np.abs(np.asarray(alpha, dtype=np.float64)), initial=0.0)))

    def __repr__(self):
        return self.name


SANDWICHES = [
    Sandwich("affine", None),
    Sandwich("relu", "relu"),
    Sandwich("leaky_relu_default", "leaky_relu", 0.01, default_alpha=True),
    Sandwich("leaky_relu_a0.2", "leaky_relu", 0.2),
    Sandwich("leaky_relu_a-0.3", "leaky_relu", -0.3),
    Sandwich("sigmoid", "sigmoid"),
    Sandwich("tanh", "tanh"),
    Sandwich("prelu_scalar", "prelu", 0.25),
    Sandwich("prelu_vector", "prelu", "vector"),
    Sandwich("prelu_shared", "prelu", "shared"),
]
SANDWICH_NAMES = [s.name for s in SANDWICHES]
BY_NAME = {s.name: s for s in SANDWICHES}

# (x shape, M): the course's 4-D x, 1x1x1, primes, N = 0, D = 0, M = 1, and multi-tile
SHAPES = [
    ((1, 1), 1),
    ((7, 13), 11),
    ((2, 3, 4, 5), 6),
    ((0, 3, 4), 5),
    ((4, 0), 3),
    ((4, 2, 0), 3),
    ((0, 0), 2),
    ((9, 17), 1),
    ((3, 5), 0),
    ((509, 5, 6, 10), 701),
    ((601, 3, 2), 7),
    ((83, 2111), 24),
]
LARGE = ((509, 5, 6, 10), 701)   # D = 300; every product is cut into ragged tiles (see below)
CHUNKED = ((601, 3, 2), 7)       # a small layer on a batch of 4 row chunks (see below)
DEEP = ((83, 2111), 24)          # a forward product in two parts of its inner dimension (below)


# ============================================================================ data and checks
def _problem(rng, x_shape, m, dtype):
    """Data in the scale of a real layer: x ~ N(0, 1), w ~ N(0, 1/D) (Xavier), b ~ N(0, 0.25)."""
    d = int(np.prod(x_shape[1:], dtype=np.int64))
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal((d, m)) / np.sqrt(max(d, 1))).astype(dtype)
    b = (0.5 * rng.standard_normal(m)).astype(dtype)
    dout = rng.standard_normal((x_shape[0], m)).astype(dtype)
    return x, w, b, dout


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _rows(x):
    """x as (N, D) (reshape(N, -1) is ambiguous for N = 0)."""
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))


def _pre_activation(x, w, b):
    """(z, zabs): x @ w + b in float64 and its magnitude bound |x| @ |w| + |b|."""
    x2 = _rows(_f64(x))
    return x2 @ _f64(w) + _f64(b), np.abs(x2) @ np.abs(_f64(w)) + np.abs(_f64(b))


def _mask_kinks(dout, z, zabs):
    """dout with 0 where the pre-activation is too close to 0 for both sides to agree."""
    dout = dout.copy()
    dout[np.abs(z) <= KINK_MARGIN * zabs] = 0
    return dout


def _max0(a):
    a = np.asarray(a, dtype=np.float64)
    return float(a.max()) if a.size else 0.0


def assert_scaled_close(got, ref, scale, dtype, what):
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    if got.size == 0:
        return
    assert not np.isnan(got).any(), f"{what}: NaN in the result"
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    tol = RTOL[np.dtype(dtype)] * scale
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g} (rtol {RTOL[np.dtype(dtype)]} x scale {scale:.3g})"


def check_forward(sw, out, ref_out, x, w, b, alpha, dtype):
    assert isinstance(out, np.ndarray) and out.dtype == dtype
    assert out.shape == (x.shape[0], w.shape[1])
    assert out.flags.c_contiguous
    _, zabs = _pre_activation(x, w, b)
    scale = max(_max0(zabs) * sw.slope(alpha), _max0(np.abs(ref_out)))
    assert_scaled_close(out, ref_out, scale, dtype, f"{sw} forward")


def check_backward(sw, grads, ref_grads, x, w, b, dout, alpha, dtype):
    """grads = (dx, dw, db[, dalpha]) against the reference's, scaled as the docstring says."""
    assert len(grads) == len(ref_grads) == (4 if sw.act == "prelu" else 3)
    dx, dw, db = grads[:3]
    for g, like, name in ((dx, x, "dx"), (dw, w, "dw"), (db, b, "db")):
        assert isinstance(g, np.ndarray), name
        assert g.dtype == dtype, f"{name} dtype {g.dtype}"
        assert g.shape == np.shape(like), f"{name} shape {g.shape} != {np.shape(like)}"
    s = sw.slope(alpha)
    ad = np.abs(_f64(dout))
    x2 = _rows(np.abs(_f64(x)))
    assert_scaled_close(dx, ref_grads[0], s * _max0(ad @ np.abs(_f64(w)).T), dtype, f"{sw} dx")
    assert_scaled_close(dw, ref_grads[1], s * _max0(x2.T @ ad), dtype, f"{sw} dw")
    assert_scaled_close(db, ref_grads[2], s * _max0(ad.sum(axis=0)), dtype, f"{sw} db")
    if sw.act == "prelu":
        dalpha = grads[3]
        assert np.shape(dalpha) == np.shape(alpha), f"dalpha shape {np.shape(dalpha)} != alpha {np.shape(alpha)}"
        assert np.asarray(dalpha).dtype == dtype
        _, zabs = _pre_activation(x, w, b)
        terms = (ad * zabs).sum(axis=0)
        scale = _max0(terms.sum() if np.ndim(alpha) == 0 else terms)
        assert_scaled_close(dalpha, ref_grads[3], scale, dtype, f"{sw} dalpha")


def _run_both(sw, x, w, b, dout, alpha, chunked=False):
    out, cache = (sw.fwd_chunked if chunked else sw.fwd)(x, w, b, alpha)
    rout, rcache = sw.ref_fwd(x, w, b, alpha)
    return out, rout, (sw.bwd_chunked if chunked else sw.bwd)(dout, cache), sw.ref_bwd(dout, rcache)


# ============================================================================ values vs reference
def test_large_shape_is_multi_tile():
    """LARGE cuts the forward product and both backward products into several tiles, with
    ragged last tiles in both directions (so edge tiles are exercised)."""
    (n, *rest), m = LARGE
    d = int(np.prod(rest))
    for r, c, k in ((n, m, d), (n, d, m), (d, m, n)):          # forward, dx, dw
        tr, tc, nr, nc = _kd.plan(r, c, k)
        assert nr * nc >= 4, (r, c, k, nr, nc)
        assert nr >= 2 and nc >= 2
        assert r % tr != 0 and c % tc != 0, f"plan {(tr, tc)} for {(r, c)} has no ragged edge tile"
        assert (nr - 1) * tr < r <= nr * tr and (nc - 1) * tc < c <= nc * tc
    # maxout's product at LARGE_MAXOUT has M * k columns
    n2, d2, m2, k2 = LARGE_MAXOUT
    tr, tc, nr, nc = _kd.plan(n2, m2 * k2, d2)
    assert nr * nc >= 4 and n2 % tr and (m2 * k2) % tc


def test_deep_forward_runs_in_parts():
    """DEEP's forward (inner dimension far above both output sides) runs as two parts of its
    inner dimension, each over the whole output in ragged row tiles; LARGE's does not, nor a
    deep product too small for two tiles (the size below which layers run in row chunks),
    nor anything with k_split = 0 (which gives the ordinary plan)."""
    (n, d), m = DEEP
    tr, tc, nr, nc, kb, kd = _kd.forward_plan_of(n, m, d)
    assert kb == 2 and kd % 16 == 0 and 0 < kd < d, (kb, kd)
    assert nr * nc >= 2 and n % tr != 0
    assert d >= _kd.tile_params()["k_split"] * max(n, m)
    (n2, *rest), m2 = LARGE
    assert _kd.forward_plan_of(n2, m2, int(np.prod(rest)))[4] == 1
    assert 2.0 * 128 * 3 * 400 < _kd.tile_params()["serial_flops"] and _kd.layer_chunk_rows(128, 400, 3)
    assert _kd.forward_plan_of(128, 3, 400)[4] == 1
    assert _kd.forward_plan_of(128, 3, 400, chunks=False)[2:] == (1, 1, 1, 400)
    saved = _kd.tile_params()
    _kd.set_tile_params(k_split=0)
    try:
        assert _kd.forward_plan_of(n, m, d)[4:] == (1, d)
        assert _kd.forward_plan_of(n, m, d)[:4] == _kd.plan(n, m, d)
    finally:
        _kd.set_tile_params(**saved)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_deep_forward_in_parts_is_close_to_one_part(name, dtype, rng):
    """The parts change only the order of the inner sum: the forward is within rounding of
    the same product in one part (k_split = 0)."""
    sw = BY_NAME[name]
    (n, d), m = DEEP
    x, w, b, _ = _problem(rng, (n, d), m, dtype)
    alpha = sw.make_alpha(rng, m, dtype)
    out, _ = sw.fwd(x, w, b, alpha)
    saved = _kd.tile_params()
    _kd.set_tile_params(k_split=0)
    try:
        one, _ = sw.fwd(x, w, b, alpha)
    finally:
        _kd.set_tile_params(**saved)
    scale = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64) + np.abs(b)
    tol = 8 * d * np.finfo(dtype).eps
    assert np.all(np.abs(out.astype(np.float64) - one) <= tol * scale)
    assert not np.array_equal(out, one)   # the parts did run: the sums are not the same


# Forward products worth exactly two tiles under the tuned tiling of a 2-CPU machine, each
# inner dimension between k_split_pair and k_split times the larger output side: in parts by
# the lower bar only (784-512-512-10's first layer on 128 rows, and a smaller one)
PAIR = ((128, 784), 512)
PAIR_SMALL = ((96, 300), 130)


def test_forward_worth_two_tiles_runs_in_parts_from_the_lower_bar(two_core_tiles):
    """k_split_pair: on a 2-CPU plan a forward worth two tiles runs as two parts of its
    inner dimension, one tile each, once that dimension reaches k_split_pair times its larger
    output side; the same product worth four tiles (a 4-CPU plan) keeps its tiles, and so
    does one worth two tiles on a 1- or 16-CPU plan; k_split_pair = 0 (or a value not below
    k_split) leaves only k_split's bar, and k_split = 0 turns parts off."""
    p = _kd.tile_params()
    for (n, d), m in (PAIR, PAIR_SMALL):
        assert p["k_split_pair"] * max(n, m) <= d < p["k_split"] * max(n, m)
        tr, tc, nr, nc, kb, kd = _kd.forward_plan_of(n, m, d, chunks=False)
        assert (tr, tc, nr, nc, kb) == (n, m, 1, 1, 2) and kd == (d + 31) // 32 * 16, (n, m, d)
        assert _kd.forward_plan_of(n, m, d)[4] == 2   # (the layer API's plan too)
    (n, d), m = PAIR
    _kd.set_tile_params(tile_cores=4)
    tr, tc, nr, nc, kb, kd = _kd.forward_plan_of(n, m, d)
    assert kb == 1 and nr * nc == 4
    (n2, d2), m2 = PAIR_SMALL   # (two tiles' worth on any plan: 7.5 MFLOP)
    for cores in (1, 16):
        _kd.set_tile_params(tile_cores=cores)
        assert _kd.forward_plan_of(n2, m2, d2, chunks=False)[2:5] == (1, 2, 1), cores
    _kd.set_tile_params(tile_cores=2, k_split_pair=0)
    assert _kd.forward_plan_of(n, m, d)[4] == 1
    _kd.set_tile_params(k_split_pair=p["k_split"])
    assert _kd.forward_plan_of(n, m, d)[4] == 1
    _kd.set_tile_params(k_split_pair=p["k_split_pair"], k_split=0)
    assert _kd.forward_plan_of(n, m, d)[4] == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_forward_worth_two_tiles_in_parts_matches_reference(name, dtype, rng, two_core_tiles):
    """A forward in parts by k_split_pair: forward and backward against the reference, the
    forward the same bits on 1, 2 and 3 threads, and within rounding of (but not the same
    as) the product in one part (k_split_pair = 0)."""
    (n, d), m = PAIR_SMALL
    assert _kd.forward_plan_of(n, m, d, chunks=False)[4] == 2
    sw, (x, w, b, dout, alpha), out, _ = check_against_reference(name, dtype, PAIR_SMALL, rng)
    assert_thread_invariant(lambda: sw.fwd(x, w, b, alpha)[0])
    _kd.set_tile_params(k_split_pair=0)
    one, _ = sw.fwd(x, w, b, alpha)
    scale = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64) + np.abs(b)
    tol = 8 * d * np.finfo(dtype).eps
    assert np.all(np.abs(out.astype(np.float64) - one) <= tol * scale)
    assert not np.array_equal(out, one)


def test_thin_products_are_cut_under_the_small_matrix_bar(two_core_tiles):
    """small_mnk: a product with an output side of 16 or less and more multiply-adds than the
    bar gets tiles under it (rows or columns, whichever side is long), where the cut can get
    there; a product under the bar, a wider one, or one whose tiles cannot get under it keeps
    its plan; 0 turns it off."""
    _kd.set_tile_params(small_mnk=1e6)
    for (r, c, k), want in [((512, 10, 1024), (64, 10, 8, 1)), ((1024, 10, 512), (128, 10, 8, 1)),
                            ((10, 512, 1024), (10, 64, 1, 8)), ((512, 16, 512), (64, 16, 8, 1)),
                            ((1030, 10, 776), (72, 10, 15, 1))]:   # (the last: 8 tiles' rows,
        tr, tc, nr, nc = _kd.plan(r, c, k)                         # rounded to 8, are too many)
        assert (tr, tc, nr, nc) == want and tr * tc * k <= 1e6, (r, c, k)
    # forwards too, before a part split (a 2-CPU plan would put these in parts)
    assert _kd.forward_plan_of(1024, 10, 512)[:5] == (128, 10, 8, 1, 1)
    assert _kd.forward_plan_of(512, 10, 512)[:5] == (128, 10, 4, 1, 1)
    # kept: under the bar, 17 wide, out of reach with 64-row tiles, too small for two tiles
    # (below serial_flops), and dx products (the small-matrix path refuses their form)
    kept = [(128, 10, 512), (512, 10, 128), (512, 17, 512), (512, 16, 1024), (512, 10, 256),
            (1024, 512, 10)]
    cut = [_kd.plan(*a) for a in kept]
    dx = [_kd.plan(1024, 10, 512, dx=True), _kd.plan(16, 784, 512, dx=True)]
    parts = _kd.forward_plan_of(512, 10, 512)
    _kd.set_tile_params(max_tiles=6)   # (not a power of two: at most 4 tiles here)
    assert _kd.plan(1024, 10, 512) == (512, 10, 2, 1)
    _kd.set_tile_params(max_tiles=16, small_mnk=0)
    assert [_kd.plan(*a) for a in kept] == cut
    assert [_kd.plan(1024, 10, 512, dx=True), _kd.plan(16, 784, 512, dx=True)] == dx
    assert _kd.plan(512, 10, 1024) == (256, 10, 2, 1)
    assert _kd.forward_plan_of(512, 10, 512)[4] == 2 and parts[4] == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ["affine", "relu", "prelu_vector"])
def test_thin_products_under_the_small_matrix_bar_match_reference(name, dtype, rng, two_core_tiles):
    """A 10-output layer on 1024 rows with small_mnk set (its forward and weight gradient in
    eight tiles each): against the reference, and the same bits on 1, 2 and 3 threads."""
    _kd.set_tile_params(small_mnk=1e6)
    shape = ((1024, 512), 10)
    assert _kd.plan(512, 10, 1024)[2] == 8 and _kd.forward_plan_of(1024, 10, 512)[2] == 8
    sw, (x, w, b, dout, alpha), _, _ = check_against_reference(name, dtype, shape, rng)
    assert_thread_invariant(lambda: (sw.fwd(x, w, b, alpha)[0],) + tuple(sw.bwd(dout, sw.fwd(x, w, b, alpha)[1])))


# A weight gradient worth two row tiles on a 2-CPU plan, over a batch of at least
# dw_halves_rows rows: computed in halves of the batch (odd: halves of 300 and 301 rows)
HALVES = ((601, 200), 96)


def test_weight_gradient_in_halves_of_the_batch_plan(two_core_tiles):
    """dw_in_halves: a weight gradient planned as exactly two row tiles runs in halves of the
    batch from dw_halves_rows rows and up to dw_halves_elems elements, in fastnn.functional
    and in the layer API alike; not below either bar, nor with dw_halves_rows = 0, nor as two
    column tiles, nor on a 4-CPU plan (four tiles), nor for a 10-output layer."""
    _kd = two_core_tiles
    p = _kd.tile_params()
    (n, d), m = HALVES
    assert _kd.plan(d, m, n)[2:] == (2, 1) and n >= p["dw_halves_rows"] > 0
    assert _kd.dw_halves_of(n, d, m) and _kd.dw_halves_of(n, d, m, chunks=False)
    assert _kd.dw_halves_of(1024, 784, 512) and _kd.dw_halves_of(1024, 512, 512)
    assert not _kd.dw_halves_of(128, 784, 512)   # (784-512-512-10's batch of 128)
    assert not _kd.dw_halves_of(p["dw_halves_rows"] - 1, d, m)
    assert _kd.plan(m, d, n)[2:] == (1, 2) and not _kd.dw_halves_of(n, m, d)
    _kd.set_tile_params(small_mnk=0)   # (else the small-matrix cut takes this one first)
    assert _kd.plan(512, 10, 1024)[2:] == (2, 1) and not _kd.dw_halves_of(1024, 512, 10)
    _kd.set_tile_params(small_mnk=p["small_mnk"])
    assert _kd.plan(2048, 1100, 512)[2:] == (2, 1) and not _kd.dw_halves_of(512, 2048, 1100)
    _kd.set_tile_params(dw_halves_elems=d * m - 1)
    assert not _kd.dw_halves_of(n, d, m)
    _kd.set_tile_params(dw_halves_elems=d * m, dw_halves_rows=0)
    assert not _kd.dw_halves_of(n, d, m)
    _kd.set_tile_params(dw_halves_rows=p["dw_halves_rows"], dw_halves_elems=p["dw_halves_elems"],
                        tile_cores=4)
    assert np.prod(_kd.plan(784, 512, 1024)[2:]) == 4 and not _kd.dw_halves_of(1024, 784, 512)
    _kd.set_tile_params(tile_cores=2)
    assert _kd.dw_halves_of(1024, 784, 512)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_weight_gradient_in_halves_matches_reference(name, dtype, rng, two_core_tiles):
    """A weight gradient in halves of the batch: forward and backward against the reference,
    the backward the same bits on 1, 2 and 3 threads, its dw within rounding of (but not the
    same as) the two row tiles' (dw_halves_rows = 0), and dx and db the same bits as there."""
    _kd = two_core_tiles
    (n, d), m = HALVES
    assert _kd.dw_halves_of(n, d, m, chunks=False)
    sw, (x, w, b, dout, alpha), _, grads = check_against_reference(name, dtype, HALVES, rng)
    _, cache = sw.fwd(x, w, b, alpha)
    assert_thread_invariant(lambda: tuple(sw.bwd(dout, cache)))
    _kd.set_tile_params(dw_halves_rows=0)
    tiles = sw.bwd(dout, cache)
    dw, dw_tiles = grads[1].astype(np.float64), tiles[1]
    scale = np.abs(x).T.astype(np.float64) @ np.abs(dout).astype(np.float64)
    assert np.all(np.abs(dw - dw_tiles) <= 8 * n * np.finfo(dtype).eps * scale)
    assert not np.array_equal(grads[1], tiles[1])   # the halves did run: other sums
    for i in [0] + list(range(2, len(grads))):
        assert_same_bits(grads[i], tiles[i])


# (x shape, M) at the edges of the parts: one row, one output (the gemv path), a depth just
# above the first part's 16 (kd = 16, the second part one deep), depths 2 and 3 (kd = 1 and 2)
DEEP_EDGES = [((1, 40), 3), ((5, 37), 1), ((3, 17), 2), ((1, 2), 1), ((2, 3), 1), ((4, 2, 9), 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_deep_forward_edges_in_parts(name, dtype, rng):
    """With every product worth tiles and a low k_split, tiny deep products run in parts at
    their edges (one row, one output, the shortest depths), against the reference, and
    the same for 1, 2, 3 and 16 threads."""
    saved = _kd.tile_params()
    _kd.set_tile_params(serial_flops=1, tile_flops=1, min_tile_rows=1, min_tile_cols=1, k_split=0.5)
    try:
        for shape in DEEP_EDGES:
            (n, *rest), m = shape
            assert _kd.forward_plan_of(n, m, int(np.prod(rest)), chunks=False)[4] == 2, shape
            sw, (x, w, b, dout, alpha), _, _ = check_against_reference(name, dtype, shape, rng)
            assert_thread_invariant(lambda: sw.fwd(x, w, b, alpha)[0])
    finally:
        _kd.set_tile_params(**saved)


def check_against_reference(name, dtype, shape, rng, chunked=False):
    """One layer's forward and backward against the reference on a fresh problem of shape
    (x shape, M), dout masked at the kinks; returns (sw, problem, out, grads). chunked: as
    the layer API runs it (a small layer in row chunks)."""
    sw = BY_NAME[name]
    x_shape, m = shape
    x, w, b, dout = _problem(rng, x_shape, m, dtype)
    alpha = sw.make_alpha(rng, m, dtype)
    if sw.kinked:
        dout = _mask_kinks(dout, *_pre_activation(x, w, b)).astype(dtype)
    out, rout, grads, rgrads = _run_both(sw, x, w, b, dout, alpha, chunked)
    check_forward(sw, out, rout, x, w, b, alpha, dtype)
    check_backward(sw, grads, rgrads, x, w, b, dout, alpha, dtype)
    return sw, (x, w, b, dout, alpha), out, grads


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_matches_reference(name, dtype, shape, rng):
    _, _, _, grads = check_against_reference(name, dtype, shape, rng)
    assert grads[0].shape == shape[0]  # dx in x's original shape (course convention)


# A layer of at most 64 outputs (32 where the copy is plain loops) computes its dx product
# untransposed, on panels of its weights' rows copied transposed, each at most 4,096 elements
# (dx_gemm in csrc/fastnn_dense.pxd; the copy in blocks of 8 x 8 floats or 4 x 4 doubles where
# the CPU has AVX, plain loops for what is left over, csrc/fastnn_transpose.h): one panel,
# several (the last one short: 130 columns of 32 in panels of 128 and 2; 70 of 64 in 64 and
# 6; 1,400 of 3 in 1,365 and 35; 4,097 of 1), a panel whose sides are not whole blocks
# (45 x 13), and a layer just above the bar (65 outputs: the transposed form).
DX_PANEL_SHAPES = [((9, 130), 32), ((6, 70), 64), ((7, 1400), 3), ((5, 4097), 1),
                   ((11, 45), 13), ((3, 40), 10), ((4, 50), 65)]


@pytest.mark.parametrize("shape", DX_PANEL_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_dx_products_on_transposed_panels_match_reference(name, dtype, shape, rng):
    check_against_reference(name, dtype, shape, rng)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_no_inputs_output_is_activation_of_bias(name, dtype, rng):
    """D = 0: every unit sees only its bias; dx and dw are empty, db is the usual sum."""
    sw = BY_NAME[name]
    x = np.zeros((5, 2, 0), dtype=dtype)
    w = np.zeros((0, 4), dtype=dtype)
    b = np.array([-1.5, -0.25, 0.5, 2.0], dtype=dtype)
    alpha = sw.make_alpha(rng, 4, dtype)
    out, cache = sw.fwd(x, w, b, alpha)
    rb = np.broadcast_to(b, (5, 4)).copy()
    if sw.act is None:
        expected = rb
    elif sw.act == "prelu":
        expected = RA.prelu_forward(rb, alpha)[0]
    elif sw.act == "leaky_relu":
        expected = RA.leaky_relu_forward(rb, sw.alpha)[0]
    else:
        expected = getattr(RA, sw.act + "_forward")(rb)[0]
    check_forward(sw, out, expected, x, w, b, alpha, dtype)
    dout = rng.standard_normal((5, 4)).astype(dtype)
    grads = sw.bwd(dout, cache)
    assert grads[0].shape == x.shape and grads[1].shape == w.shape
    rgrads = sw.ref_bwd(dout, sw.ref_fwd(x, w, b, alpha)[1])
    check_backward(sw, grads, rgrads, x, w, b, dout, alpha, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_empty_batch_gradients_are_zero(name, dtype, rng):
    sw = BY_NAME[name]
    x, w, b, dout = _problem(rng, (0, 3, 2), 4, dtype)
    alpha = sw.make_alpha(rng, 4, dtype)
    out, cache = sw.fwd(x, w, b, alpha)
    assert out.shape == (0, 4) and out.dtype == dtype
    grads = sw.bwd(dout, cache)
    assert grads[0].shape == (0, 3, 2)
    np.testing.assert_array_equal(grads[1], np.zeros((6, 4), dtype))
    np.testing.assert_array_equal(grads[2], np.zeros(4, dtype))
    if sw.act == "prelu":
        np.testing.assert_array_equal(grads[3], np.zeros(np.shape(alpha), dtype))


# ============================================================================ layouts and dtypes
def _layout_variants(x, w, b):
    """(name, x', w', b') with the same values in non-contiguous / negative-stride layouts."""
    def rev_copy(a, axis):
        """A negative-stride view (along axis, an int or a tuple) holding a's values."""
        return np.flip(np.flip(a, axis).copy(), axis)

    def strided(a, axis):
        """A view with a step of 2 along axis holding a's values."""
        shape = list(a.shape)
        shape[axis] *= 2
        big = np.zeros(shape, dtype=a.dtype)
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(None, None, 2)
        big[tuple(sl)] = a
        return big[tuple(sl)]

    return [
        ("x_rows_step", strided(x, 0), w, b),
        ("x_negative_strides", rev_copy(x, (0, x.ndim - 1)), w, b),
        ("x_fortran", np.asfortranarray(x), w, b),
        ("w_fortran", x, np.asfortranarray(w), b),
        ("w_transposed_view", x, np.ascontiguousarray(w.T).T, b),
        ("w_negative_strides", x, rev_copy(w, (0, 1)), b),
        ("w_cols_step", x, strided(w, 1), b),
        ("b_step", x, w, strided(b, 0)),
        ("b_negative", x, w, rev_copy(b, 0)),
        ("all", np.asfortranarray(x), rev_copy(w, 1), strided(b, 0)),
    ]


LAYOUT_NAMES = [v[0] for v in _layout_variants(np.zeros((2, 3, 4)), np.zeros((12, 5)), np.zeros(5))]


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_noncontiguous_operands(name, dtype, layout, rng):
    sw = BY_NAME[name]
    x, w, b, dout = _problem(rng, (37, 3, 4, 5), 29, dtype)
    alpha = sw.make_alpha(rng, 29, dtype)
    variant = {v[0]: v[1:] for v in _layout_variants(x, w, b)}[layout]
    xv, wv, bv = variant
    np.testing.assert_array_equal(xv, x)
    np.testing.assert_array_equal(wv, w)
    np.testing.assert_array_equal(bv, b)
    assert not (xv.flags.c_contiguous and wv.flags.c_contiguous and bv.flags.c_contiguous)
    copies = [a.copy() for a in (xv, wv, bv)]
    dout_nc = np.asfortranarray(dout)
    out, cache = sw.fwd(xv, wv, bv, alpha)
    grads = sw.bwd(dout_nc, cache)
    out_c, cache_c = sw.fwd(x, w, b, alpha)
    grads_c = sw.bwd(dout, cache_c)
    # the layout must not change a single bit...
    assert_same_bits(out, out_c, what=f"{layout} forward")
    for i, (g, gc) in enumerate(zip(grads, grads_c)):
        assert_same_bits(g, gc, what=f"{layout} gradient {i}")
    # ...nor touch the operands
    for a, c in zip((xv, wv, bv), copies):
        assert_same_bits(a, c, what="operand after forward/backward")
    # and the values are right
    if sw.kinked:
        dout = _mask_kinks(dout, *_pre_activation(x, w, b)).astype(dtype)
    out, rout, grads, rgrads = _run_both(sw, xv, wv, bv, dout, alpha)
    check_forward(sw, out, rout, x, w, b, alpha, dtype)
    check_backward(sw, grads, rgrads, x, w, b, dout, alpha, dtype)


MIXES = [
    pytest.param((np.float32, np.float64, np.float32), id="x32_w64_b32"),
    pytest.param((np.float64, np.float32, np.float32), id="x64_w32_b32"),
    pytest.param((np.float32, np.float32, np.float64), id="x32_w32_b64"),
]


@pytest.mark.parametrize("dtypes", MIXES)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_mixed_precision_computes_in_float64(name, dtypes, rng):
    """float32 and float64 operands in one call compute in float64 (np.result_type): bitwise what
    the same call gives on float64 copies, for forward and backward (dout float32 too)."""
    sw = BY_NAME[name]
    x, w, b, dout = _problem(rng, (11, 2, 3), 7, np.float64)
    x, w, b = (a.astype(dt) for a, dt in zip((x, w, b), dtypes))
    alpha = sw.make_alpha(rng, 7, np.float64)
    out, cache = sw.fwd(x, w, b, alpha)
    assert out.dtype == np.float64
    out64, cache64 = sw.fwd(_f64(x), _f64(w), _f64(b), alpha)
    assert_same_bits(out, out64, what="mixed forward vs float64")
    dout32 = dout.astype(np.float32)
    grads = sw.bwd(dout32, cache)
    grads64 = sw.bwd(_f64(dout32), cache64)
    for i, (g, g64) in enumerate(zip(grads, grads64)):
        assert np.asarray(g).dtype == np.float64
        assert_same_bits(g, g64, what=f"mixed gradient {i}")


def test_float64_dout_on_float32_affine_cache(rng):
    """A float64 dout on an all-float32 affine forward computes the gradients in float64."""
    x, w, b, dout = _problem(rng, (13, 4, 3), 9, np.float32)
    _, cache = F.affine_forward(x, w, b)
    dout64 = rng.standard_normal((13, 9))
    dx, dw, db = F.affine_backward(dout64, cache)
    assert dx.dtype == dw.dtype == db.dtype == np.float64
    _, cache64 = F.affine_forward(_f64(x), _f64(w), _f64(b))
    for g, g64 in zip((dx, dw, db), F.affine_backward(dout64, cache64)):
        assert_same_bits(g, g64)


@pytest.mark.parametrize("make", [
    pytest.param(lambda a: a.astype(np.int64), id="int64"),
    pytest.param(lambda a: a.astype(np.int32).tolist(), id="list"),
])
def test_int_and_list_operands_are_float64(make, rng):
    x = rng.integers(-3, 4, (6, 5)).astype(np.float64)
    w = rng.integers(-3, 4, (5, 4)).astype(np.float64)
    b = rng.integers(-3, 4, 4).astype(np.float64)
    out, cache = F.affine_relu_forward(make(x), make(w), make(b))
    assert out.dtype == np.float64
    # small integers: every product and sum is exact, whatever the order
    np.testing.assert_array_equal(out, np.maximum(x @ w + b, 0))
    dout = rng.integers(-3, 4, (6, 4)).astype(np.float64)
    dx, dw, db = F.affine_relu_backward(dout, cache)
    dz = dout * (x @ w + b > 0)
    np.testing.assert_array_equal(dx, dz @ w.T)
    np.testing.assert_array_equal(dw, x.T @ dz)
    np.testing.assert_array_equal(db, dz.sum(axis=0))


# ============================================================================ gradients
def _kink_free_problem(rng, x_shape, m, margin=0.05, tries=200):
    """float64 data whose pre-activations are all at least `margin` away from 0."""
    for _ in range(tries):
        x, w, b, dout = _problem(rng, x_shape, m, np.float64)
        z, _ = _pre_activation(x, w, b)
        if np.all(np.abs(z) >= margin):
            return x, w, b, dout
    raise AssertionError("could not draw kink-free data")


@pytest.mark.parametrize("x_shape", [(4, 6), (3, 2, 3)], ids=str)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_numerical_gradients(name, x_shape, rng):
    sw = BY_NAME[name]
    m = 5
    x, w, b, dout = _kink_free_problem(rng, x_shape, m)
    alpha = sw.make_alpha(rng, m, np.float64)
    if sw.act == "prelu":
        alpha = np.array(alpha, dtype=np.float64)   # 0-d or (M,): perturbed in place below
    _, cache = sw.fwd(x, w, b, alpha)
    grads = sw.bwd(dout, cache)
    num = [
        numerical_gradient(lambda v: sw.fwd(v, w, b, alpha)[0], x.copy(), dout),
        numerical_gradient(lambda v: sw.fwd(x, v, b, alpha)[0], w.copy(), dout),
        numerical_gradient(lambda v: sw.fwd(x, w, v, alpha)[0], b.copy(), dout),
    ]
    if sw.act == "prelu":
        num.append(numerical_gradient(lambda v: sw.fwd(x, w, b, v)[0], alpha.copy(), dout))
    assert len(grads) == len(num)
    for g, n_, what in zip(grads, num, ["dx", "dw", "db", "dalpha"]):
        assert np.shape(g) == n_.shape, what
        np.testing.assert_allclose(g, n_, rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=f"{sw} {what}")


def test_chunked_shape_runs_in_chunks():
    """CHUNKED is a layer small enough to run in row chunks when the layer API asks for them
    (its forward and dx a row of tiles per chunk, its weight gradient the sum of one product
    per chunk, in chunk order), with more than two chunks and a shorter last one."""
    (n, *rest), m = CHUNKED
    d = int(np.prod(rest))
    ch = _kd.layer_chunk_rows(n, d, m)
    assert ch > 0 and -(-n // ch) >= 3 and n % ch != 0
    assert _kd.plan(n, m, d, batch=True)[0::2] == (ch, -(-n // ch))
    assert _kd.layer_chunk_rows(*LARGE[0][:1], 300, LARGE[1]) == 0


@pytest.mark.parametrize("settings", [{}, {"chunk_min_rows": 1, "chunk_rows_more": 1},
                                      {"chunk_min_rows": 3, "chunk_rows_more": 5, "max_chunks": 64}],
                         ids=["default", "smallest", "odd"])
def test_row_chunks_are_whole_groups_of_the_loss(settings):
    """Row chunks are a multiple of 8 rows for any N and chunk settings: the loss sums its rows
    in groups of 8 (fastnn_losses.pxd), and a chunk of the step kernel writes whole groups, so
    no group is shared between two threads."""
    saved = _kd.tile_params()
    _kd.set_tile_params(**settings)
    try:
        chunks = [_kd.layer_chunk_rows(n, 2, 3) for n in range(1, 2050)]
        low = 2 * _kd.tile_params()["chunk_min_rows"]   # (the fewest rows that are cut)
    finally:
        _kd.set_tile_params(**saved)
    assert all(ch % 8 == 0 for ch in chunks)
    assert all((ch > 0) == (n >= low) for n, ch in zip(range(1, 2050), chunks))
    assert sum(ch > 0 for ch in chunks) > 1900


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_row_chunks_match_reference(name, dtype, rng):
    """A layer in row chunks (the layer API's way) against the reference. fastnn.functional
    itself does not cut: its results are those of the kernels with chunks turned off (and
    dx tiles unbounded, which changes nothing at this size: N x D < max_tile_elems)."""
    sw, (x, w, b, dout, alpha), _, _ = check_against_reference(name, dtype, CHUNKED, rng, chunked=True)
    fout, fcache = sw.fwd(x, w, b, alpha)
    fgrads = sw.bwd(dout, fcache)
    saved = _kd.tile_params()
    _kd.set_tile_params(chunk_min_rows=0)
    try:
        nout, ncache = sw.fwd_chunked(x, w, b, alpha)
        ngrads = sw.bwd_chunked(dout, ncache)
    finally:
        _kd.set_tile_params(**saved)
    assert_same_bits(fout, nout)
    for a, b_ in zip(fgrads, ngrads):
        assert_same_bits(a, b_)


@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_numerical_gradients_in_row_chunks(name, rng):
    """The parameter gradients of a layer in row chunks (CHUNKED): summed over the chunks,
    against central differences (dx is row by row, checked at the small shapes above)."""
    sw = BY_NAME[name]
    x_shape, m = CHUNKED
    x, w, b, dout = _problem(rng, x_shape, m, np.float64)
    # no output within 0.05 of a kink carries a gradient (a perturbation of w or b moves the
    # pre-activations by ~1e-5 * |x| at most: none crosses a kink where dout is not 0)
    dout[np.abs(_pre_activation(x, w, b)[0]) < 0.05] = 0
    alpha = sw.make_alpha(rng, m, np.float64)
    if sw.act == "prelu":
        alpha = np.array(alpha, dtype=np.float64)
    _, cache = sw.fwd_chunked(x, w, b, alpha)
    grads = sw.bwd_chunked(dout, cache)
    num = [numerical_gradient(lambda v: sw.fwd_chunked(x, v, b, alpha)[0], w.copy(), dout),
           numerical_gradient(lambda v: sw.fwd_chunked(x, w, v, alpha)[0], b.copy(), dout)]
    if sw.act == "prelu":
        num.append(numerical_gradient(lambda v: sw.fwd_chunked(x, w, b, v)[0], alpha.copy(), dout))
    for g, n_, what in zip(grads[1:], num, ["dw", "db", "dalpha"]):
        np.testing.assert_allclose(g, n_, rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=f"{sw} {what}")


def test_numerical_gradient_reads_w_in_place(rng):
    """The course's check: eval_numerical_gradient_array perturbs w in place and calls the
    forward with the same array object each time."""
    x, w, b, dout = _kink_free_problem(rng, (3, 4), 2)
    num_dw = numerical_gradient(lambda _: F.affine_relu_forward(x, w, b)[0], w, dout)
    _, cache = F.affine_relu_forward(x, w, b)
    np.testing.assert_allclose(F.affine_relu_backward(dout, cache)[1], num_dw, rtol=GRAD_RTOL, atol=GRAD_ATOL)


# ============================================================================ inputs and live parameters
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_inputs_not_modified(name, rng):
    sw = BY_NAME[name]
    x, w, b, dout = _problem(rng, (20, 2, 3), 7, np.float64)
    alpha = sw.make_alpha(rng, 7, np.float64)
    args = [x, w, b, dout] + ([alpha] if isinstance(alpha, np.ndarray) else [])
    copies = [a.copy() for a in args]
    out, cache = sw.fwd(x, w, b, alpha)
    out0 = out.copy()
    sw.bwd(dout, cache)
    sw.bwd(dout, cache)  # a second backward on the same cache is allowed and changes nothing
    for a, c in zip(args, copies):
        assert_same_bits(a, c, what="input after forward/backward")
    assert_same_bits(out, out0, what="forward output after backward")


@pytest.mark.parametrize("w_kind", ["c_contiguous", "fortran", "float32_w_float64_x"])
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_backward_reads_current_w(name, w_kind, rng):
    """As in the course code, the cache refers to w: changing w in place between forward and
    backward changes dx (the reference, whose cache holds w itself, does the same)."""
    sw = BY_NAME[name]
    x, w, b, dout = _problem(rng, (8, 3, 2), 5, np.float64)
    if w_kind == "fortran":
        w = np.asfortranarray(w)
    elif w_kind == "float32_w_float64_x":
        w = w.astype(np.float32)
    alpha = sw.make_alpha(rng, 5, np.float64)
    if sw.kinked:
        dout = _mask_kinks(dout, *_pre_activation(x, w, b))
    _, cache = sw.fwd(x, w, b, alpha)
    _, rcache = sw.ref_fwd(x, w, b, alpha)
    before = sw.bwd(dout, cache)
    w *= -2.0
    w += 0.5
    grads = sw.bwd(dout, cache)
    rgrads = sw.ref_bwd(dout, rcache)
    check_backward(sw, grads, rgrads, x, w, b, dout, alpha, np.float64)
    assert np.max(np.abs(grads[0] - before[0])) > 0.1, "backward did not see the new w"


# ============================================================================ thin products
# Products with at most DenseConfig.thin (4) output rows or columns run as one gemv per row or
# column instead of one gemm. (x shape, M), with the products each one makes thin:
THIN_SHAPES = [
    ((300, 2), 100),   # dx (300 x 2): columns, w transposed; dw (2 x 100): rows, x transposed
    ((300, 100), 3),   # forward (300 x 3): columns; dw (100 x 3): columns, x transposed
    ((3, 50), 40),     # forward (3 x 40): rows; dx (3 x 50): rows, w transposed
    ((2, 3), 4),       # everything thin, rows and columns as small as each other
    ((1, 7), 1),       # one row, one unit
    ((31, 500), 34),   # two 32-column forward tiles: the second, 2 wide, is thin
]


def test_thin_shapes_cover_every_gemv_case():
    """THIN_SHAPES, and THIN_THREADED tile by tile, reach the gemv path by columns and by rows,
    with and without each operand transposed (forward: neither; dx: w; dw: x); THIN_SHAPES also
    through a ragged edge tile."""
    thin = _kd.tile_params()["thin"]
    assert thin >= 3
    every = {(k, how) for k in ("forward", "dx", "dw") for how in ("columns", "rows")}
    for shapes, tiled in ((THIN_SHAPES, False), (THIN_THREADED, True)):
        cases = set()
        for (x_shape, m) in shapes:
            n, d = x_shape[0], int(np.prod(x_shape[1:]))
            for kind, (r, c, k) in zip(("forward", "dx", "dw"), ((n, m, d), (n, d, m), (d, m, n))):
                tr, tc, nr, nc = _kd.plan(r, c, k, dx=kind == "dx")
                if min(tr, tc, r, c) <= thin and (nr * nc >= 2 or not tiled):
                    cases.add((kind, "columns" if min(tc, c) <= min(tr, r) else "rows"))
        assert cases >= every, (tiled, cases)
    tr, tc, nr, nc = _kd.plan(31, 34, 500)
    assert nc == 2 and 34 - tc <= thin < tc


@pytest.fixture
def gemm_only():
    """A function that runs f with the thin-product path off (every product one gemm)."""
    def run(f):
        saved = _kd.tile_params()
        _kd.set_tile_params(thin=0)
        try:
            return f()
        finally:
            _kd.set_tile_params(**saved)
    return run


@pytest.mark.parametrize("shape", THIN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_thin_products_match_reference_and_gemm(name, dtype, shape, rng, gemm_only):
    """The gemv path against the NumPy reference, and against the same layer computed with
    gemm only (at the same tolerance: the two sum in different orders)."""
    sw, (x, w, b, dout, alpha), out, grads = check_against_reference(name, dtype, shape, rng)
    gout, _, ggrads, _ = gemm_only(lambda: _run_both(sw, x, w, b, dout, alpha))
    check_forward(sw, out, gout, x, w, b, alpha, dtype)
    check_backward(sw, grads, ggrads, x, w, b, dout, alpha, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_thin_products_ignore_what_the_output_held(dtype, rng):
    """gemv with beta = 0 must not read y; the kernel clears y itself, so NaN garbage in an
    output buffer (np.empty can hold any bits) never reaches the result."""
    x, w, b, _ = _problem(rng, (300, 100), 3, dtype)
    y = np.full((300, 3), np.nan, dtype)
    _kd.dense_forward(0, x, w, b, y, None, 0.0, None, 1)
    ref = _f64(x) @ _f64(w) + _f64(b)
    assert_scaled_close(y, ref, _max0(np.abs(_f64(x)) @ np.abs(_f64(w)) + np.abs(_f64(b))), dtype,
                        "forward into a NaN-filled buffer")
    dout = rng.standard_normal((300, 3)).astype(dtype)
    dx = np.full((300, 100), np.nan, dtype)
    dw = np.full((100, 3), np.nan, dtype)
    db = np.full(3, np.nan, dtype)
    _kd.dense_backward(0, dout, y, x, w, dx, dw, db, None, 0.0, None, None, 1)
    assert_scaled_close(dw, _f64(x).T @ _f64(dout), _max0(np.abs(_f64(x)).T @ np.abs(_f64(dout))), dtype, "dw")
    assert_scaled_close(dx, _f64(dout) @ _f64(w).T, _max0(np.abs(_f64(dout)) @ np.abs(_f64(w)).T), dtype, "dx")


# Thin products over a long inner dimension, which the kernel sums in blocks (THIN_K_BLOCK =
# 4096 in csrc/fastnn_dense.pxd), each block through a cleared buffer added into the result.
THIN_LONG = [
    ("dw, by rows", (2**20, 2), 3),       # dw (2 x 3): x transposed, the batch inside
    ("dw, by columns", (2**20, 5), 1),    # dw (5 x 1): sgemv's 'N' form
    ("forward", (3, 2**17), 2),           # y (3 x 2): the features inside
    ("dx", (3, 2), 2**17),                # dx (3 x 2): w transposed, the outputs inside
]


@pytest.mark.parametrize("what, x_shape, m", THIN_LONG, ids=[t[0] for t in THIN_LONG])
def test_thin_products_over_a_long_inner_dimension_stay_accurate(what, x_shape, m):
    """float32, terms of one sign. One gemv over the whole batch of 2**20 rows was 1400-1560
    eps off (relative); blocks added into C by the gemv itself (beta = 1) were still 66 eps
    off for the (5, 1) product, whose sgemv 'N' adds into y in small steps; through the
    buffer, 2-3 eps (NumPy here: 11 eps for (2, 3), 1557 for (5, 1), which it computes as one
    gemv). The forward and dx cases run the blocks over the other operands' offsets (the old
    code was accurate there: they check that the blocks cover the inner dimension once)."""
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 1, x_shape).astype(np.float32)
    w = rng.uniform(0, 1, (x_shape[1], m)).astype(np.float32)
    dout = rng.uniform(0, 1, (x_shape[0], m)).astype(np.float32)
    out, cache = F.affine_forward(x, w, np.zeros(m, np.float32))
    dx, dw, _ = F.affine_backward(dout, cache)
    if what == "forward":
        got, want = out, _f64(x) @ _f64(w)
    elif what == "dx":
        got, want = dx, _f64(dout) @ _f64(w).T
    else:
        got, want = dw, _f64(x).T @ _f64(dout)
    err = float(np.max(np.abs(got - want) / want)) / np.finfo(np.float32).eps
    assert err < 16, f"{what}: relative error {err:.1f} eps"


# Big enough (with this module's small tiles) for the thin products to be cut into tiles that
# threads share: every gemv case (rows and columns; plain, w transposed, x transposed) runs in
# parallel across these three.
THIN_THREADED = [((6000, 2), 100), ((6000, 100), 3), ((3, 20000), 40)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", THIN_THREADED, ids=str)
def test_thin_products_threads_bitwise_identical(shape, dtype, rng):
    x, w, b, dout = _problem(rng, *shape, dtype)

    def run():
        out, cache = F.affine_relu_forward(x, w, b)
        return (out,) + tuple(F.affine_relu_backward(dout, cache))

    assert_thread_invariant(run)


GEMM_TIMED = [(16, 64, 64), (7, 5, 3), (300, 3, 100), (2, 40, 9), (1, 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False),
                                             (True, True)])
@pytest.mark.parametrize("shape", GEMM_TIMED, ids=str)
def test_gemm_seconds_times_the_kernels_product(shape, trans_a, trans_b, dtype):
    """bench/ceiling.py's timer runs the kernels' own product (thin shapes: the gemv path):
    C = op(A) @ op(B) against NumPy, with A and B as returned (stored transposed for a flag);
    with accumulate, C is reps times the product, so every one of the reps calls ran."""
    r, c, k = shape
    t, C, A, B = _kd.gemm_seconds(r, c, k, trans_a, trans_b, reps=3, dtype=dtype)
    assert t > 0
    assert A.shape == ((k, r) if trans_a else (r, k)) and B.shape == ((c, k) if trans_b else (k, c))
    assert C.shape == (r, c) and C.dtype == dtype and A.dtype == dtype and B.dtype == dtype
    ref = (A.T if trans_a else A).astype(np.float64) @ (B.T if trans_b else B).astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(C, ref, rtol=tol, atol=tol * np.sqrt(k))
    assert not np.array_equal(C, 0)
    _, C3, _, _ = _kd.gemm_seconds(r, c, k, trans_a, trans_b, reps=3, dtype=dtype,
                                   accumulate=True)
    np.testing.assert_allclose(C3, 3 * ref, rtol=3 * tol, atol=3 * tol * np.sqrt(k))


@pytest.mark.parametrize("shape", GEMM_TIMED, ids=str)
def test_gemm_seconds_concurrent_calls(shape):
    """concurrent threads each compute the product into their own C, all the same bits (one
    tile computed by any thread), each after all of its own reps calls."""
    r, c, k = shape
    _, C, A, B = _kd.gemm_seconds(r, c, k, False, True, reps=4, concurrent=3, accumulate=True)
    assert C.shape == (3, r, c)
    ref = A.astype(np.float64) @ B.T.astype(np.float64)
    np.testing.assert_allclose(C[0], 4 * ref, rtol=4e-5, atol=4e-5 * np.sqrt(k))
    assert_same_bits(C[1], C[0])
    assert_same_bits(C[2], C[0])


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(r=0), ValueError, "^r must"), (dict(c=-1), ValueError, "^c must"),
    (dict(k=0), ValueError, "^k must"), (dict(reps=0), ValueError, "^reps must"),
    (dict(reps=2**70), ValueError, "^reps must"),
    (dict(concurrent=0), ValueError, "^concurrent must"),
    (dict(concurrent=1000), ValueError, "^concurrent must"),
    (dict(r=2.0), TypeError, "^r must"), (dict(reps=True), TypeError, "^reps must"),
    (dict(k=np.bool_(True)), TypeError, "^k must"), (dict(c="3"), TypeError, "^c must"),
    (dict(dtype=np.int32), TypeError, "^dtype must"), (dict(dtype="foo"), TypeError, "^dtype must"),
    (dict(dtype=None), TypeError, "^dtype must"),
    (dict(trans_a="no"), TypeError, "^trans_a must"), (dict(trans_b=1), TypeError, "^trans_b must"),
    (dict(accumulate=np.zeros(2)), TypeError, "^accumulate must"),
    (dict(r=2**16, c=2**16), ValueError, "more than 2"),
    # NumPy integers whose products would wrap around in their own type
    (dict(r=np.int32(2**16), c=np.int32(2**16)), ValueError, "more than 2"),
    (dict(r=np.int32(2**16), c=np.int32(2**15), concurrent=2), ValueError, "more than 2"),
], ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(map(str, v)))
def test_gemm_seconds_rejects_bad_arguments(kw, exc, msg):
    args = dict(r=2, c=3, k=4)
    args.update(kw)
    with pytest.raises(exc, match=msg):
        _kd.gemm_seconds(**args)


# ============================================================================ threads
@pytest.mark.parametrize("shape", [LARGE, DEEP], ids=["large", "deep"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", SANDWICH_NAMES)
def test_threads_bitwise_identical(name, dtype, shape, rng):
    sw = BY_NAME[name]
    x_shape, m = shape
    x, w, b, dout = _problem(rng, x_shape, m, dtype)
    alpha = sw.make_alpha(rng, m, dtype)

    def run():
        out, cache = sw.fwd(x, w, b, alpha)
        return (out,) + tuple(sw.bwd(dout, cache))

    assert_thread_invariant(run)


def _functional_tiles(n, m, d):
    """How fastnn.functional cuts the forward product n x m (inner d), and its dx and dw
    products: (tiles down, tiles across) of each."""
    return (_kd.forward_plan_of(n, m, d, chunks=False)[2:4], _kd.plan(n, d, m, dx=True, chunks=False)[2:],
            _kd.plan(d, m, n, chunks=False)[2:])


def _assert_many_core_plan(n, m, d):
    """Under many_core_tiles: the layer n x m (inner d) gets 16 forward tiles, and a plan unlike
    a 2-CPU machine's."""
    many = _functional_tiles(n, m, d)
    assert many[0][0] * many[0][1] == 16
    _kd.set_tile_params(tile_cores=2)
    assert _functional_tiles(n, m, d) != many
    _kd.set_tile_params(tile_cores=16)


@pytest.mark.parametrize("shape", [LARGE, ((1024, 784), 512)], ids=["large", "784-512"])
@pytest.mark.parametrize("name", ["affine", "relu", "prelu_vector"])
def test_many_core_tiles_and_threads_bitwise_identical(name, shape, rng, many_core_tiles):
    """A 16-CPU machine's plan (the tuned tile sizes, not this file's small ones: 16 tiles a
    forward product where a 2-CPU machine cuts 2) on the thread counts it runs: 4, 7 (the
    tiles shared unevenly) and 16 give one thread's bits."""
    sw = BY_NAME[name]
    x_shape, m = shape
    _assert_many_core_plan(x_shape[0], m, int(np.prod(x_shape[1:])))
    x, w, b, dout = _problem(rng, x_shape, m, np.float32)
    alpha = sw.make_alpha(rng, m, np.float32)

    def run():
        out, cache = sw.fwd(x, w, b, alpha)
        return (out,) + tuple(sw.bwd(dout, cache))

    assert_thread_invariant(run, threads=MANY_THREADS)


@pytest.mark.parametrize("shape", THIN_THREADED, ids=str)
def test_thin_threaded_shapes_run_parallel(shape):
    """test_thin_products_threads_bitwise_identical compares really parallel runs."""
    (n, d), m = shape
    setup = ("from fastnn._kernels import dense as _kd\n"
             "_kd.set_tile_params(tile_flops=2e6, min_tile_rows=16, min_tile_cols=16, serial_flops=1e6,"
             " thin=4)\n"
             f"rng = np.random.default_rng(0)\nx = rng.standard_normal(({n}, {d}))\n"
             f"w = rng.standard_normal(({d}, {m}))\nb = np.zeros({m})\ndout = np.ones(({n}, {m}))\n"
             "_, c = F.affine_forward(x, w, b)")
    for call in ("F.affine_forward(x, w, b)", "F.affine_backward(dout, c)"):
        started = openmp_workers_started(setup, call)
        if started is None:
            pytest.skip("OpenMP worker threads cannot be observed here")
        assert started >= 1, call


@pytest.mark.parametrize("shape", [LARGE, DEEP], ids=["large", "deep"])
def test_large_shape_runs_parallel(shape):
    """test_threads_bitwise_identical compares really parallel runs: the LARGE and DEEP
    products have enough tiles (or parts) for every thread they are given (forward and
    backward)."""
    (n, *rest), m = shape
    setup = ("from fastnn._kernels import dense as _kd\n"
             "_kd.set_tile_params(tile_flops=2e6, min_tile_rows=16, min_tile_cols=16, serial_flops=1e6)\n"
             f"rng = np.random.default_rng(0)\nx = rng.standard_normal(({n}, {int(np.prod(rest))}))\n"
             f"w = rng.standard_normal(({int(np.prod(rest))}, {m}))\nb = np.zeros({m})\n"
             f"dout = np.ones(({n}, {m}))")
    for call in ("F.affine_relu_forward(x, w, b)",
                 "F.affine_relu_backward(dout, c)"):
        pre = setup + ("\n_, c = F.affine_relu_forward(x, w, b)" if "backward" in call else "")
        started = openmp_workers_started(pre, call)
        if started is None:
            pytest.skip("OpenMP worker threads cannot be observed here")
        assert started == 2, call


# ============================================================================ maxout
# (N, D, M, k)
MAXOUT_SHAPES = [
    (1, 1, 1, 1),
    (7, 13, 11, 3),
    (5, 6, 4, 1),
    (0, 6, 4, 2),
    (4, 0, 3, 2),
    (9, 17, 1, 2),
    (6, 5, 3, 127),
]
LARGE_MAXOUT = (509, 300, 350, 2)


def _maxout_problem(rng, n, d, m, k, dtype, x_shape=None):
    x = rng.standard_normal(x_shape or (n, d)).astype(dtype)
    w = (rng.standard_normal((d, m, k)) / np.sqrt(max(d, 1))).astype(dtype)
    b = (0.5 * rng.standard_normal((m, k))).astype(dtype)
    dout = rng.standard_normal((n, m)).astype(dtype)
    return x, w, b, dout


def _maxout_z(x, w, b):
    x2 = _rows(_f64(x))
    z = np.einsum("nd,dmk->nmk", x2, _f64(w)) + _f64(b)
    zabs = np.einsum("nd,dmk->nmk", np.abs(x2), np.abs(_f64(w))) + np.abs(_f64(b))
    return z, zabs


def _mask_ties(dout, z, zabs):
    """dout with 0 where the best two pieces are too close for both computations to agree."""
    dout = dout.copy()
    if z.shape[2] > 1 and z.size:
        top2 = np.sort(z, axis=2)[:, :, -2:]
        dout[(top2[:, :, 1] - top2[:, :, 0]) <= KINK_MARGIN * zabs.max(axis=2)] = 0
    return dout


def check_maxout(out, grads, rout, rgrads, x, w, b, dout, dtype):
    n = x.shape[0]
    m = w.shape[1]
    assert out.dtype == dtype and out.shape == (n, m)
    dx, dw, db = grads
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    assert dx.dtype == dw.dtype == db.dtype == dtype
    _, zabs = _maxout_z(x, w, b)
    ad = np.abs(_f64(dout))
    aw = np.abs(_f64(w))
    x2 = _rows(np.abs(_f64(x)))
    assert_scaled_close(out, rout, max(_max0(zabs), _max0(np.abs(rout))), dtype, "maxout forward")
    # dz holds dout at one piece per unit: |dx| <= |dout| @ max_p |w[:, :, p]|.T, and so on
    assert_scaled_close(dx, rgrads[0], _max0(ad @ aw.max(axis=2).T), dtype, "maxout dx")
    assert_scaled_close(dw, rgrads[1], _max0(x2.T @ ad), dtype, "maxout dw")
    assert_scaled_close(db, rgrads[2], _max0(ad.sum(axis=0)), dtype, "maxout db")


@pytest.mark.parametrize("shape", MAXOUT_SHAPES + [LARGE_MAXOUT], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_maxout_matches_reference(dtype, shape, rng):
    x, w, b, dout = _maxout_problem(rng, *shape, dtype)
    dout = _mask_ties(dout, *_maxout_z(x, w, b)).astype(dtype)
    out, cache = F.maxout_forward(x, w, b)
    rout, rcache = R.maxout_forward(x, w, b)
    grads = F.maxout_backward(dout, cache)
    rgrads = R.maxout_backward(dout, rcache)
    check_maxout(out, grads, rout, rgrads, x, w, b, dout, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_maxout_4d_input_and_layouts(dtype, rng):
    x, w, b, dout = _maxout_problem(rng, 2, 60, 6, 3, dtype, x_shape=(2, 3, 4, 5))
    dout = _mask_ties(dout, *_maxout_z(x, w, b)).astype(dtype)
    out, cache = F.maxout_forward(x, w, b)
    grads = F.maxout_backward(dout, cache)
    assert grads[0].shape == (2, 3, 4, 5)
    check_maxout(out, grads, *[R.maxout_forward(x, w, b)[0]],
                 R.maxout_backward(dout, R.maxout_forward(x, w, b)[1]), x, w, b, dout, dtype)
    # non-contiguous, negative-stride operands: bitwise the same
    xv = np.asfortranarray(x)
    wv = np.flip(np.flip(w, 1).copy(), 1)
    bv = np.asfortranarray(b)
    assert not wv.flags.c_contiguous and not bv.flags.c_contiguous
    out2, cache2 = F.maxout_forward(xv, wv, bv)
    assert_same_bits(out2, out)
    for g2, g in zip(F.maxout_backward(np.asfortranarray(dout), cache2), grads):
        assert_same_bits(g2, g)


def test_maxout_no_inputs_is_max_of_bias(rng):
    b = rng.standard_normal((3, 4))
    out, cache = F.maxout_forward(np.zeros((5, 0)), np.zeros((0, 3, 4)), b)
    np.testing.assert_array_equal(out, np.broadcast_to(b.max(axis=1), (5, 3)))
    dout = rng.standard_normal((5, 3))
    dx, dw, db = F.maxout_backward(dout, cache)
    expected_db = np.zeros((3, 4))
    expected_db[np.arange(3), b.argmax(axis=1)] = dout.sum(axis=0)
    np.testing.assert_allclose(db, expected_db, rtol=1e-12, atol=0)
    assert dx.shape == (5, 0) and dw.shape == (0, 3, 4)


def _tie_free_maxout(rng, n, d, m, k, margin=0.05, tries=200):
    for _ in range(tries):
        x, w, b, dout = _maxout_problem(rng, n, d, m, k, np.float64)
        z, _ = _maxout_z(x, w, b)
        top2 = np.sort(z, axis=2)[:, :, -2:]
        if np.all(top2[:, :, 1] - top2[:, :, 0] >= margin):
            return x, w, b, dout
    raise AssertionError("could not draw tie-free data")


@pytest.mark.parametrize("k", [2, 3])
def test_maxout_numerical_gradients(k, rng):
    x, w, b, dout = _tie_free_maxout(rng, 4, 5, 3, k)
    _, cache = F.maxout_forward(x, w, b)
    dx, dw, db = F.maxout_backward(dout, cache)
    np.testing.assert_allclose(dx, numerical_gradient(lambda v: F.maxout_forward(v, w, b)[0], x.copy(), dout),
                               rtol=GRAD_RTOL, atol=GRAD_ATOL)
    np.testing.assert_allclose(dw, numerical_gradient(lambda v: F.maxout_forward(x, v, b)[0], w.copy(), dout),
                               rtol=GRAD_RTOL, atol=GRAD_ATOL)
    np.testing.assert_allclose(db, numerical_gradient(lambda v: F.maxout_forward(x, w, v)[0], b.copy(), dout),
                               rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize("w_kind", ["c_contiguous", "fortran"])
def test_maxout_backward_reads_current_w_and_leaves_inputs(w_kind, rng):
    x, w, b, dout = _maxout_problem(rng, 6, 5, 4, 3, np.float64)
    if w_kind == "fortran":
        w = np.asfortranarray(w)
    dout = _mask_ties(dout, *_maxout_z(x, w, b))
    x0, b0, dout0 = x.copy(), b.copy(), dout.copy()
    out, cache = F.maxout_forward(x, w, b)
    rout, rcache = R.maxout_forward(x, w, b)
    w0 = w.copy()
    F.maxout_backward(dout, cache)
    assert_same_bits(w, w0)
    w *= 3.0
    grads = F.maxout_backward(dout, cache)
    rgrads = R.maxout_backward(dout, rcache)
    check_maxout(out, grads, rout, rgrads, x, w, b, dout, np.float64)
    for a, c in ((x, x0), (b, b0), (dout, dout0)):
        assert_same_bits(a, c)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_maxout_threads_bitwise_identical(dtype, rng):
    x, w, b, dout = _maxout_problem(rng, *LARGE_MAXOUT, dtype)

    def run():
        out, cache = F.maxout_forward(x, w, b)
        return (out,) + tuple(F.maxout_backward(dout, cache))

    assert_thread_invariant(run)


def test_maxout_on_many_core_tiles_and_threads(rng, many_core_tiles):
    """Maxout's one product for all pieces, on a 16-CPU machine's tiles (the tuned sizes: 16
    tiles where a 2-CPU machine cuts 2), at 4, 7 and 16 threads."""
    n, d, m, k = LARGE_MAXOUT
    _assert_many_core_plan(n, m * k, d)
    x, w, b, dout = _maxout_problem(rng, *LARGE_MAXOUT, np.float32)

    def run():
        out, cache = F.maxout_forward(x, w, b)
        return (out,) + tuple(F.maxout_backward(dout, cache))

    assert_thread_invariant(run, threads=MANY_THREADS)


# ============================================================================ argument errors
FORWARDS = SANDWICH_NAMES


@pytest.mark.parametrize("name", FORWARDS)
def test_wrong_shapes_name_the_argument(name, rng):
    sw = BY_NAME[name]
    x = np.ones((4, 2, 3))
    alpha = sw.make_alpha(rng, 5, np.float64)
    with pytest.raises(ValueError, match=r"\bw\b.*6 rows"):
        sw.fwd(x, np.ones((5, 5)), np.ones(5), alpha)
    with pytest.raises(ValueError, match=r"\bb\b"):
        sw.fwd(x, np.ones((6, 5)), np.ones(4), alpha)
    with pytest.raises(ValueError, match=r"\bb\b"):
        sw.fwd(x, np.ones((6, 5)), np.ones((1, 5)), alpha)
    with pytest.raises(ValueError, match=r"\bw\b.*2-D"):
        sw.fwd(x, np.ones(6), np.ones(5), alpha)
    with pytest.raises(ValueError, match=r"\bw\b.*2-D"):
        sw.fwd(x, np.ones((6, 5, 1)), np.ones(5), alpha)
    with pytest.raises(ValueError, match=r"\bx\b"):
        sw.fwd(np.float64(3.0), np.ones((1, 5)), np.ones(5), alpha)
    for arg in range(3):
        ops = [x, np.ones((6, 5)), np.ones(5)]
        ops[arg] = ops[arg].astype(complex)
        with pytest.raises(TypeError, match=r"\b%s\b" % "xwb"[arg]):
            sw.fwd(*ops, alpha)


def test_prelu_alpha_shape_errors():
    x, w, b = np.ones((4, 3)), np.ones((3, 5)), np.ones(5)
    with pytest.raises(ValueError, match="alpha"):
        F.affine_prelu_forward(x, w, b, np.ones(4))
    with pytest.raises(ValueError, match="alpha"):
        F.affine_prelu_forward(x, w, b, np.ones((1, 5)))
    with pytest.raises(TypeError, match="alpha"):
        F.affine_prelu_forward(x, w, b, "0.1")
    with pytest.raises(ValueError, match="alpha"):
        F.affine_leaky_relu_forward(x, w, b, np.nan)


def test_maxout_wrong_shapes():
    x = np.ones((4, 6))
    with pytest.raises(ValueError, match=r"\bw\b.*3-D"):
        F.maxout_forward(x, np.ones((6, 5)), np.ones(5))
    with pytest.raises(ValueError, match=r"\bw\b.*3-D"):
        F.maxout_forward(x, np.ones((6, 5, 2, 1)), np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"\bw\b.*6 rows"):
        F.maxout_forward(x, np.ones((5, 5, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"\bb\b"):
        F.maxout_forward(x, np.ones((6, 5, 2)), np.ones(5))
    with pytest.raises(ValueError, match=r"\bb\b"):
        F.maxout_forward(x, np.ones((6, 5, 2)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="pieces"):
        F.maxout_forward(x, np.ones((6, 5, 0)), np.ones((5, 0)))


def _caches(rng):
    """One cache from every forward, by name."""
    x, w, b = np.ones((4, 2, 3)), np.ones((6, 5)), np.ones(5)
    caches = {}
    for sw in SANDWICHES:
        caches[sw.base] = sw.fwd(x, w, b, sw.make_alpha(rng, 5, np.float64))[1]
    caches["maxout"] = F.maxout_forward(x, np.ones((6, 5, 2)), np.ones((5, 2)))[1]
    return caches


BACKWARDS = ["affine", "affine_relu", "affine_leaky_relu", "affine_sigmoid", "affine_tanh",
             "affine_prelu", "maxout"]


@pytest.mark.parametrize("base", BACKWARDS)
def test_garbage_and_foreign_caches(base, rng):
    bwd = getattr(F, base + "_backward")
    caches = _caches(rng)
    dout = np.ones((4, 5))
    bwd(dout, caches[base])  # its own cache works
    for other, cache in caches.items():
        if other == base:
            continue
        with pytest.raises((TypeError, ValueError), match="cache"):
            bwd(dout, cache)
    x, w, b = np.ones((4, 6)), np.ones((6, 5)), np.ones(5)
    course = [(x, w, b), R.affine_forward(x, w, b)[1]]   # the course's affine cache
    if base == "affine":
        # affine_backward takes it (tests/test_course_interop.py): the numbers of its own cache
        for c in course:
            for got, want in zip(bwd(dout, c), bwd(dout, F.affine_forward(x, w, b)[1])):
                np.testing.assert_array_equal(got, want)
        course = []
    for garbage in [None, *course, "cache", {"x": x}, 3.0, x, [x, w, b]]:
        with pytest.raises(TypeError, match="cache"):
            bwd(dout, garbage)


@pytest.mark.parametrize("base", BACKWARDS)
def test_dout_errors(base, rng):
    bwd = getattr(F, base + "_backward")
    cache = _caches(rng)[base]
    for bad in [np.ones((5, 4)), np.ones(20), np.ones((4, 5, 1)), np.ones((3, 5))]:
        with pytest.raises(ValueError, match="dout"):
            bwd(bad, cache)
    with pytest.raises(TypeError, match="dout"):
        bwd(np.ones((4, 5), complex), cache)
    with pytest.raises(TypeError, match="dout"):
        bwd(None, cache)


@pytest.mark.parametrize("bad,exc", [
    ({"max_tiles": 1.5}, TypeError), ({"tile_flops": float("nan")}, ValueError),
    ({"serial_flops": "abc"}, TypeError), ({"k_split": float("inf")}, ValueError), ({"k_split_pair": float("nan")}, ValueError), ({"small_mnk": float("inf")}, ValueError), ({"max_tile_elems_direct": 2.5}, TypeError),
    ({"thin": True}, TypeError), ({"dw_halves_rows": 512.0}, TypeError),
    ({"dw_halves_elems": "big"}, TypeError),
])
def test_set_tile_params_checks_everything_before_setting_anything(bad, exc):
    """The tuning hook refuses a bad value by name and sets none of the values of that call
    (it used to apply the ones before it, then fail with an OverflowError naming nothing)."""
    from fastnn._kernels import dense as kd

    saved = kd.tile_params()
    try:
        with pytest.raises(exc, match=next(iter(bad))):
            kd.set_tile_params(min_tile_rows=saved["min_tile_rows"] + 3, **bad)
        assert kd.tile_params() == saved
        kd.set_tile_params(max_tiles=2**70)   # ints are clamped, not overflowed
        assert kd.tile_params()["max_tiles"] == 2**30
    finally:
        kd.set_tile_params(**saved)
    assert kd.tile_params() == saved


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_fast_takes_only_plain_calls_with_the_kernels_numbers(dtype):
    """fastnn.functional's forward runs its common case through dense.forward_fast (compiled
    checks, buffers instead of fused dispatch). It must give dense_forward's bits on every
    activation and cut, and decline (None, nothing computed) every call that the checked path
    has to convert or refuse."""
    from fastnn._kernels import activations as ka
    rng = np.random.default_rng(11)
    ops = [ka.IDENTITY, ka.RELU, ka.SIGMOID, ka.TANH, ka.LEAKY_RELU]
    for n, d, m in [(1, 1, 1), (7, 13, 5), (64, 40, 3), (200, 300, 17), (0, 4, 3), (3, 4, 0)]:
        x = rng.standard_normal((n, d)).astype(dtype)
        w = rng.standard_normal((d, m)).astype(dtype)
        b = rng.standard_normal(m).astype(dtype)
        for op in ops:
            for chunks in (0, 1, 2):
                y = np.empty((n, m), dtype)
                z = np.empty((n, m), dtype) if op == ka.LEAKY_RELU else None
                _kd.dense_forward(op, x, w, b, y, z, 0.03, None, 2, chunks)
                got = _kd.forward_fast(op, x, w, b, 0.03, 2, chunks)
                assert got is not None, (n, d, m, op, chunks)
                assert got[0].shape == (n, m) and got[0].dtype == dtype
                if n and m:
                    assert_same_bits(got[0], y)
                if op == ka.LEAKY_RELU:
                    assert got[1].shape == (n, m)
                    if n and m:
                        assert_same_bits(got[1], z)
                else:
                    assert got[1] is None
    x = rng.standard_normal((6, 4)).astype(dtype)
    w = rng.standard_normal((4, 3)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    declined = [
        (ka.PRELU, x, w, b, 0),
        (ka.RELU, x, w, b, 3), (ka.RELU, x, w, b, -1),
        (ka.RELU, x.tolist(), w, b, 0), (ka.RELU, x, w.tolist(), b, 0), (ka.RELU, x, w, list(b), 0),
        (ka.RELU, x.astype(other), w, b, 0), (ka.RELU, x, w.astype(other), b, 0),
        (ka.RELU, x, w, b.astype(other), 0),
        (ka.RELU, x.astype(np.float16), w.astype(np.float16), b.astype(np.float16), 0),
        (ka.RELU, x.astype(x.dtype.newbyteorder()), w, b, 0),
        (ka.RELU, x.reshape(6, 2, 2), w, b, 0),                   # (N, d1, d2): flattened there
        (ka.RELU, x[:, :0], w[:0], b, 0),                         # D == 0
        (ka.RELU, x, w[:3], b, 0), (ka.RELU, x, w, b[:2], 0), (ka.RELU, x, w, b.reshape(1, 3), 0),
        (ka.RELU, np.asfortranarray(x), w, b, 0), (ka.RELU, x, np.asfortranarray(w), b, 0),
        (ka.RELU, x, w, np.repeat(b, 2)[::2], 0),
        (ka.RELU, x[::2], w, b, 0),
        (ka.RELU, np.ma.MaskedArray(x), w, b, 0),
    ]
    for op, x_, w_, b_, chunks in declined:
        assert _kd.forward_fast(op, x_, w_, b_, 0.0, 2, chunks) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_fast_takes_only_plain_calls_with_the_kernels_numbers(dtype):
    """fastnn.functional's backward runs its common case through dense.backward_fast: the
    bits of dense_backward on every activation, cut and with or without dx, and None (nothing
    computed) for every call the wrapper's other paths must take."""
    from fastnn._kernels import activations as ka
    rng = np.random.default_rng(12)
    ops = [ka.IDENTITY, ka.RELU, ka.SIGMOID, ka.TANH, ka.LEAKY_RELU]
    for n, d, m in [(1, 1, 1), (7, 13, 5), (64, 40, 3), (200, 300, 17), (130, 64, 64)]:
        x = rng.standard_normal((n, d)).astype(dtype)
        w = rng.standard_normal((d, m)).astype(dtype)
        g = rng.standard_normal((n, m)).astype(dtype)
        saved = rng.standard_normal((n, m)).astype(dtype)
        for op in ops:
            for chunks in (0, 1, 2):
                for need_dx in (True, False):
                    dx = np.empty((n, d), dtype) if need_dx else None
                    dw, db = np.empty((d, m), dtype), np.empty(m, dtype)
                    dz = None if op == ka.IDENTITY else np.empty((n, m), dtype)
                    _kd.dense_backward(op, g, saved, x, w, dx, dw, db, dz, 0.03, None, None, 2,
                                       chunks)
                    got = _kd.backward_fast(op, g, None if op == ka.IDENTITY else saved, x, w,
                                            need_dx, 0.03, 2, chunks)
                    assert got is not None, (n, d, m, op, chunks, need_dx)
                    if need_dx:
                        assert_same_bits(got[0], dx)
                    else:
                        assert got[0] is None
                    assert_same_bits(got[1], dw)
                    assert_same_bits(got[2], db)
    x = rng.standard_normal((6, 4)).astype(dtype)
    w = rng.standard_normal((4, 3)).astype(dtype)
    g = rng.standard_normal((6, 3)).astype(dtype)
    s = rng.standard_normal((6, 3)).astype(dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    R_ = ka.RELU
    declined = [
        (ka.PRELU, g, s, x, w, 0), (R_, g, s, x, w, 3), (R_, g, s, x, w, -1),
        (R_, g.tolist(), s, x, w, 0), (R_, g, None, x, w, 0), (R_, g, s.tolist(), x, w, 0),
        (R_, g, s, x.tolist(), w, 0), (R_, g, s, x, w.tolist(), 0),
        (R_, g.astype(other), s, x, w, 0), (R_, g, s.astype(other), x, w, 0),
        (R_, g, s, x.astype(other), w, 0), (R_, g, s, x, w.astype(other), 0),
        (R_, g.astype(np.float16), s.astype(np.float16), x.astype(np.float16),
         w.astype(np.float16), 0),
        (R_, g, s, x.astype(x.dtype.newbyteorder()), w, 0),
        (R_, g[:5], s, x, w, 0), (R_, g, s[:5], x, w, 0), (R_, g, s, x[:5], w, 0),
        (R_, g, s, x, w[:3], 0), (R_, g[:, :2], s, x, w, 0), (R_, g.reshape(3, 6), s, x, w, 0),
        (R_, g, s, x.reshape(6, 2, 2), w, 0), (R_, g, s, x, w.reshape(4, 3, 1), 0),
        (R_, g[:0], s[:0], x[:0], w, 0), (R_, g, s, x[:, :0], w[:0], 0),
        (R_, g[:, :0], s[:, :0], x, w[:, :0], 0),
        (R_, np.asfortranarray(g), s, x, w, 0), (R_, g, np.asfortranarray(s), x, w, 0),
        (R_, g, s, np.asfortranarray(x), w, 0), (R_, g, s, x, np.asfortranarray(w), 0),
        (R_, np.ma.MaskedArray(g), s, x, w, 0),
    ]
    for op, g_, s_, x_, w_, chunks in declined:
        assert _kd.backward_fast(op, g_, s_, x_, w_, True, 0.0, 2, chunks) is None


class _Counting:
    """A kernel module whose named entry points count their calls (the rest pass through)."""

    def __init__(self, module, names):
        self._module = module
        self.calls = {n: 0 for n in names}

    def __getattr__(self, name):
        real = getattr(self._module, name)
        if name not in self.calls:
            return real

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return real(*args, **kwargs)
        return counted


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plain_functional_calls_take_the_compiled_paths(monkeypatch, dtype):
    """The wiring: a plain course-style call of a dense forward, backward or class loss never
    reaches the kernels' memoryview entry points (it runs compiled: forward_fast,
    backward_fast, class_loss_fast), while a call the fast paths decline (a strided x) does,
    with the same numbers. A wrapper that always declined would pass every other test."""
    import fastnn.functional.dense as FD
    import fastnn.functional.losses as FL
    from fastnn._kernels import losses as _kl
    kd_count = _Counting(_kd, ["dense_forward", "dense_backward"])
    kl_count = _Counting(_kl, ["class_loss"])
    monkeypatch.setattr(FD, "_kd", kd_count)
    monkeypatch.setattr(FL, "_kl", kl_count)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 7)).astype(dtype)
    w = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    y = rng.integers(0, 5, 9)
    plain = []
    for fwd, bwd in ((F.affine_forward, F.affine_backward),
                     (F.affine_relu_forward, F.affine_relu_backward),
                     (F.affine_sigmoid_forward, F.affine_sigmoid_backward),
                     (F.affine_tanh_forward, F.affine_tanh_backward),
                     (F.affine_leaky_relu_forward, F.affine_leaky_relu_backward)):
        out, cache = fwd(x, w, b)
        loss, dout = F.softmax_loss(out, y)
        plain.append((out, F.svm_loss(out, y)[1], loss, dout) + tuple(bwd(dout, cache)))
    assert kd_count.calls == {"dense_forward": 0, "dense_backward": 0}
    assert kl_count.calls == {"class_loss": 0}
    # declined calls reach them, with the same numbers
    xs = np.repeat(x, 2, axis=1)[:, ::2]
    out, cache = F.affine_relu_forward(xs, w, b)
    assert_same_bits(out, plain[1][0])
    assert kd_count.calls == {"dense_forward": 1, "dense_backward": 0}
    # (the forward kept a contiguous copy of x, so a plain dout still goes compiled; a
    # Fortran-ordered one does not)
    assert_same_bits(F.affine_relu_backward(plain[1][3], cache)[1], plain[1][5])
    assert kd_count.calls["dense_backward"] == 0
    assert_same_bits(F.affine_relu_backward(np.asfortranarray(plain[1][3]), cache)[1], plain[1][5])
    assert kd_count.calls["dense_backward"] >= 1
    loss, dout = F.softmax_loss(np.asfortranarray(plain[1][0]), y)
    assert loss == plain[1][2]
    assert_same_bits(dout, plain[1][3])
    assert kl_count.calls == {"class_loss": 1}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unpickled_arrays_take_the_compiled_paths(monkeypatch, dtype):
    """Arrays that pickle.loads built (as multiprocessing passes them) hold a dtype object
    equal to NumPy's own but not the same object; the fast paths take them too (a plain call
    must not slow down for how its arrays were made), with the same bits as the arrays they
    were pickled from, and leave them unchanged. A big-endian copy is still declined."""
    import pickle
    import fastnn.functional.dense as FD
    import fastnn.functional.losses as FL
    import fastnn.optim as O
    from fastnn._kernels import losses as _kl
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 7)).astype(dtype)
    w = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    y = rng.integers(0, 5, 9)
    xp, wp, bp = (pickle.loads(pickle.dumps(a)) for a in (x, w, b))
    assert xp.dtype is not x.dtype and xp.dtype == x.dtype   # (what the test is about)
    out, cache = F.affine_relu_forward(x, w, b)
    loss, dout = F.softmax_loss(out, y)
    dx, dw, db = F.affine_relu_backward(dout, cache)
    dout_p = pickle.loads(pickle.dumps(dout))
    kd_count = _Counting(_kd, ["dense_forward", "dense_backward"])
    kl_count = _Counting(_kl, ["class_loss"])
    monkeypatch.setattr(FD, "_kd", kd_count)
    monkeypatch.setattr(FL, "_kl", kl_count)
    out_p, cache_p = F.affine_relu_forward(xp, wp, bp)
    y_p = pickle.loads(pickle.dumps(y))
    assert y_p.dtype is not y.dtype
    loss_p, dout_pp = F.softmax_loss(pickle.loads(pickle.dumps(out)), y_p)
    dx_p, dw_p, db_p = F.affine_relu_backward(dout_p, cache_p)
    assert kd_count.calls == {"dense_forward": 0, "dense_backward": 0}
    assert kl_count.calls == {"class_loss": 0}
    for got, want in ((out_p, out), (dout_pp, dout), (dx_p, dx), (dw_p, dw), (db_p, db)):
        assert_same_bits(got, want)
        assert got.dtype == want.dtype
    assert loss_p == loss
    for a, orig in ((xp, x), (wp, w), (bp, b), (dout_p, dout), (y_p, y)):
        assert_same_bits(a, orig)
    # the update rule's fast path takes them as well: same bits as on NumPy's own dtype
    calls = []
    real = O._ko.update
    monkeypatch.setattr(O._ko, "update", lambda *a: calls.append(a[0]) or real(*a))
    cfg = {"learning_rate": 0.1}
    w_next, _ = O.sgd(w.copy(), dw, dict(cfg))
    wp2 = pickle.loads(pickle.dumps(w))
    w_next_p, _ = O.sgd(wp2, pickle.loads(pickle.dumps(dw)), dict(cfg))
    assert calls == []
    assert w_next_p is wp2                               # (in place, as on NumPy's dtype)
    assert_same_bits(w_next_p, w_next)
    # another byte order is not the kernels' layout: declined, the checked path's numbers
    xb = x.astype(x.dtype.newbyteorder(">"))
    assert_same_bits(F.affine_relu_forward(xb, w, b)[0], out)
    assert kd_count.calls["dense_forward"] == 1
