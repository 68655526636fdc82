"""Inverted dropout and Gaussian noise (fastnn.functional.dropout) against the NumPy reference
(fastnn.reference.dropout), which recomputes the kernel's counter-based hash mask: outputs and
gradients must be bitwise identical to it.

Statistics: the kept fraction of n draws has standard deviation sqrt(p (1 - p) / n); the sample
mean and standard deviation of n Gaussian draws have standard errors std / sqrt(n) and about
std / sqrt(2 n). Every statistical check allows 5 standard errors (a false alarm about once in
1.7 million runs; the seeds are fixed anyway, so the tests are deterministic).
"""
import numpy as np
import pytest

import fastnn
import fastnn.functional as F
from fastnn import _threads
from fastnn.reference import dropout as R

from conftest import assert_same_bits, assert_thread_invariant, numerical_gradient, openmp_workers_started

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]
SHAPES = [(0,), (1,), (7, 13), (3, 4, 5), (100_001,), (2, 16384 + 3)]
SEEDS = [0, 1, 12345, 2**32 - 1, 2**32, 2**63 + 17, 2**64 - 1]


def _param(p, seed=None, mode="train"):
    d = {"p": p, "mode": mode}
    if seed is not None:
        d["seed"] = seed
    return d


# ============================================================================ vs reference
# keep probabilities whose float32 scale float32(1 / p) is not 1 / float32(p): the kernel must
# round the scale as the reference does, once, from float64
P_SCALE_ROUNDS_APART = (0.29, 0.55)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1.0, 1 / 3, *P_SCALE_ROUNDS_APART])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_reference_bitwise(dtype, shape, p, rng):
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    out, cache = F.dropout_forward(x, _param(p, seed=2024))
    rout, mask = R.dropout_forward(x, p, 2024)
    assert out.dtype == dtype and out.shape == shape
    assert_same_bits(out, rout, what="dropout forward vs reference")
    dx = F.dropout_backward(dout, cache)
    assert dx.dtype == dtype and dx.shape == shape
    assert_same_bits(dx, R.dropout_backward(dout, p, mask), what="dropout backward vs reference")


def test_the_scale_rounding_cases_are_what_they_claim():
    for p in P_SCALE_ROUNDS_APART:
        assert np.float32(1.0 / p) != np.float32(1.0) / np.float32(p)


@pytest.mark.parametrize("seed", [123, 5 + (7 << 32)])
def test_keep_decision_at_the_limit_is_the_references(seed):
    """An element whose hash h is exactly the keep limit is kept (p = (h + 1) / 2**32), and
    dropped one step below it (p = h / 2**32), as the reference decides: each element's
    hash, taken from the reference, set on the limit in turn."""
    n = 8
    x = np.ones(n)
    for i, h in enumerate(R.mask_hashes(n, seed).tolist()):
        for p, kept in (((h + 1) / 2**32, True), (h / 2**32, False)):
            if p == 0.0:
                continue
            mask = R.keep_mask(n, p, seed)
            assert mask[i] == kept   # (the case is on the limit: the reference says so)
            out, _ = F.dropout_forward(x, {"p": p, "seed": seed})
            assert np.array_equal(out != 0, mask), (i, p)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_seed_bit_matters_like_the_reference(seed, rng):
    x = rng.standard_normal(40_000)
    out, _ = F.dropout_forward(x, _param(0.5, seed=seed))
    assert_same_bits(out, R.dropout_forward(x, 0.5, seed)[0])
    # the high and the low half of the seed both change the mask
    for other in {seed ^ 1, seed ^ (1 << 40)} - {seed}:
        if other < 2**64:
            assert not np.array_equal(out != 0, F.dropout_forward(x, _param(0.5, seed=other))[0] != 0)


def test_numpy_integer_seeds(rng):
    x = rng.standard_normal(1000)
    ref = F.dropout_forward(x, _param(0.4, seed=77))[0]
    for seed in (np.int64(77), np.uint64(77), np.int32(77), np.uint8(77)):
        assert_same_bits(F.dropout_forward(x, _param(0.4, seed=seed))[0], ref)


def test_kept_values_are_scaled_by_one_over_p(rng):
    x = rng.standard_normal(10_000)
    p = 0.3
    out, _ = F.dropout_forward(x, _param(p, seed=5))
    kept = out != 0
    np.testing.assert_array_equal(out[kept], x[kept] * (1 / p))
    # inverted dropout keeps the expectation: mean(out) ~ mean(x) is checked statistically below


# ============================================================================ statistics
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_is_p(p):
    """p is the probability of KEEPING a unit (the current course convention)."""
    n = 1_000_000
    out, _ = F.dropout_forward(np.ones(n, dtype=np.float32), _param(p, seed=99))
    frac = np.count_nonzero(out) / n
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(frac - p) <= 5 * sigma, f"kept fraction {frac} for p={p} (sigma {sigma:.2g})"
    # and in each 16384-element chunk the kernel hands to a thread, roughly p as well
    chunks = (out[: (n // 16384) * 16384] != 0).reshape(-1, 16384).mean(axis=1)
    assert np.all(np.abs(chunks - p) <= 5 * np.sqrt(p * (1 - p) / 16384))


def test_mean_is_preserved(rng):
    n = 1_000_000
    x = np.ones(n)
    p = 0.25
    out, _ = F.dropout_forward(x, _param(p, seed=3))
    # out / (1/p) is Bernoulli(p): mean 1, standard error sqrt((1 - p) / (p n))
    assert abs(out.mean() - 1.0) <= 5 * np.sqrt((1 - p) / (p * n))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_p_one_keeps_everything(dtype, rng):
    x = rng.standard_normal((50, 31)).astype(dtype)
    out, cache = F.dropout_forward(x, _param(1.0, seed=8))
    assert_same_bits(out, x)
    dout = rng.standard_normal(x.shape).astype(dtype)
    assert_same_bits(F.dropout_backward(dout, cache), dout)
    out, _ = F.dropout_forward(x, _param(1))  # an int p, no seed
    assert_same_bits(out, x)


# ============================================================================ modes and seeds
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_test_mode_is_identity(dtype, rng):
    x = rng.standard_normal((20, 9)).astype(dtype)
    x0 = x.copy()
    out, cache = F.dropout_forward(x, _param(0.3, mode="test"))
    assert out is x   # (the course's `out = x`: no copy)
    assert_same_bits(out, x0)
    dout = rng.standard_normal(x.shape).astype(dtype)
    assert_same_bits(F.dropout_backward(dout, cache), dout)
    # seed or not, p or not: test mode never drops
    out, _ = F.dropout_forward(x, {"p": 0.01, "mode": "test", "seed": 1})
    assert_same_bits(out, x0)
    assert_same_bits(x, x0)


def test_default_mode_is_train(rng):
    x = rng.standard_normal(1000)
    out, _ = F.dropout_forward(x, {"p": 0.5, "seed": 4})
    assert_same_bits(out, F.dropout_forward(x, _param(0.5, seed=4))[0])
    assert np.count_nonzero(out == 0) > 300


def test_seed_gives_the_same_mask_every_call(rng):
    x = rng.standard_normal((64, 33))
    param = _param(0.5, seed=31337)
    first, cache = F.dropout_forward(x, param)
    for _ in range(3):
        again, _ = F.dropout_forward(x, param)
        assert_same_bits(again, first)
    assert param == _param(0.5, seed=31337), "dropout_param must not be modified"
    other, _ = F.dropout_forward(x, _param(0.5, seed=31338))
    assert not np.array_equal(other != 0, first != 0)


def test_np_random_seed_controls_unseeded_masks(rng):
    x = rng.standard_normal((100, 50))
    param = _param(0.5)

    def mask(s):
        np.random.seed(s)
        out, cache = F.dropout_forward(x, param)
        return out != 0, out, cache

    a, out_a, cache_a = mask(0)
    b, _, _ = mask(0)
    c, _, _ = mask(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # without reseeding, each call draws a fresh mask
    np.random.seed(0)
    first = F.dropout_forward(x, param)[0] != 0
    second = F.dropout_forward(x, param)[0] != 0
    assert not np.array_equal(first, second)
    assert "seed" not in param
    # the backward of an unseeded forward uses that forward's mask
    dx = F.dropout_backward(np.ones_like(x), cache_a)
    np.testing.assert_array_equal(dx != 0, a)


def test_test_mode_without_a_seed_draws_nothing_from_np_random(rng):
    """The course's test-mode dropout uses no random numbers; fastnn's drew a seed it never
    used, so scoring a model with dropout (Solver's check_accuracy) moved np.random and the
    minibatch draws after it were no longer the course's. Its cache's dropout_param is the
    call's own (no seed), and its backward passes dout through."""
    x = rng.standard_normal((5, 4))
    np.random.seed(3)
    want = np.random.rand()
    np.random.seed(3)
    out, cache = F.dropout_forward(x, {"p": 0.5, "mode": "test"})
    assert np.random.rand() == want
    assert out is x
    param, mask = cache
    assert param == {"p": 0.5, "mode": "test"} and mask is None
    assert_same_bits(F.dropout_backward(2 * x, cache), 2 * x)


def test_scoring_a_course_model_with_dropout_leaves_np_random_alone():
    from fastnn.models import FullyConnectedNet

    model = FullyConnectedNet([5, 5], input_dim=4, num_classes=3, dropout_keep_ratio=0.5)
    X = np.random.default_rng(0).standard_normal((6, 4))
    np.random.seed(0)
    want = np.random.rand()
    np.random.seed(0)
    model.loss(X)
    assert np.random.rand() == want


def test_a_dropped_unit_is_zero_even_where_the_input_is_inf_or_nan():
    """As documented (the course's x * mask gives NaN there): the kernel selects, it does not
    multiply by a zero, in forward and in backward; kept units pass Inf and NaN on, scaled."""
    x = np.array([np.inf, np.nan, -np.inf, 1.0] * 50)
    param = {"p": 0.5, "seed": 3}
    out, cache = F.dropout_forward(x, param)
    kept = F.dropout_forward(np.ones_like(x), param)[0] != 0
    assert 0 < kept.sum() < len(x)
    assert np.all(out[~kept] == 0) and not np.any(np.signbit(out[~kept]))
    np.testing.assert_array_equal(out[kept], x[kept] / 0.5)
    dx = F.dropout_backward(np.full_like(x, np.nan), cache)
    assert np.all(dx[~kept] == 0) and np.all(np.isnan(dx[kept]))


def test_backward_uses_forward_mask(rng):
    x = rng.standard_normal((30, 40))
    dout = rng.standard_normal(x.shape)
    out, cache = F.dropout_forward(x, _param(0.6, seed=11))
    dx = F.dropout_backward(dout, cache)
    np.testing.assert_array_equal(dx != 0, out != 0)
    np.testing.assert_array_equal(dx[out != 0], dout[out != 0] * (1 / 0.6))


# ============================================================================ gradients, layouts, inputs
def test_numerical_gradient(rng):
    x = rng.standard_normal((12, 7))
    dout = rng.standard_normal(x.shape)
    param = _param(0.7, seed=123)
    _, cache = F.dropout_forward(x, param)
    dx = F.dropout_backward(dout, cache)
    num = numerical_gradient(lambda v: F.dropout_forward(v, param)[0], x.copy(), dout)
    np.testing.assert_allclose(dx, num, rtol=1e-7, atol=1e-9)
    assert np.count_nonzero(dx) > 0 and np.count_nonzero(dx == 0) > 0


def test_noncontiguous_and_inputs_unmodified(rng):
    base = rng.standard_normal((40, 30))
    x = base[::-2, ::3]
    x0 = x.copy()
    dout = np.asfortranarray(rng.standard_normal(x.shape))
    dout0 = dout.copy()
    out, cache = F.dropout_forward(x, _param(0.5, seed=6))
    assert_same_bits(out, R.dropout_forward(np.ascontiguousarray(x), 0.5, 6)[0])
    dx = F.dropout_backward(dout, cache)
    assert_same_bits(dx, F.dropout_backward(np.ascontiguousarray(dout), cache))
    assert_same_bits(x, x0)
    assert_same_bits(dout, dout0)


def test_int_input_is_float64():
    out, _ = F.dropout_forward(np.arange(10), _param(1.0, seed=0))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.arange(10.0))


# ============================================================================ threads
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_threads_bitwise_identical(dtype, rng):
    x = rng.standard_normal(1_000_003).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)

    def run():
        out, cache = F.dropout_forward(x, _param(0.5, seed=77))
        return out, F.dropout_backward(dout, cache)

    out, _ = assert_thread_invariant(run)
    assert_same_bits(out, R.dropout_forward(x, 0.5, 77)[0])


def test_large_array_runs_parallel():
    started = openmp_workers_started("x = np.ones(1_000_003)", "F.dropout_forward(x, {'p': 0.5, 'seed': 1})")
    if started is None:
        pytest.skip("OpenMP worker threads cannot be observed here")
    assert started == 2


# ============================================================================ errors
@pytest.mark.parametrize("p", [0, 0.0, -0.1, 1.5, 1.0000001, np.nan, np.inf])
def test_bad_p_value(p):
    with pytest.raises(ValueError, match="p"):
        F.dropout_forward(np.ones(5), {"p": p, "mode": "train"})


@pytest.mark.parametrize("p", ["a", "0.5", None, [0.5], True, 1j])
def test_bad_p_type(p):
    with pytest.raises(TypeError, match=r"\['p'\]"):
        F.dropout_forward(np.ones(5), {"p": p, "mode": "train"})


@pytest.mark.parametrize("mode", ["eval", "Train", "", None, 1])
def test_bad_mode(mode):
    with pytest.raises(ValueError, match="mode"):
        F.dropout_forward(np.ones(5), {"p": 0.5, "mode": mode})


@pytest.mark.parametrize("seed", [1.5, 1.0, "1", [1], True, np.float64(2.0)])
def test_bad_seed_type(seed):
    with pytest.raises(TypeError, match="seed"):
        F.dropout_forward(np.ones(5), {"p": 0.5, "mode": "train", "seed": seed})


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_out_of_range(seed):
    with pytest.raises(ValueError, match="seed"):
        F.dropout_forward(np.ones(5), {"p": 0.5, "mode": "train", "seed": seed})


def test_bad_param_dict_and_x():
    with pytest.raises(ValueError, match="'p'"):
        F.dropout_forward(np.ones(5), {"mode": "train"})
    with pytest.raises(TypeError, match="dropout_param"):
        F.dropout_forward(np.ones(5), None)
    with pytest.raises(TypeError, match=r"\bx\b"):
        F.dropout_forward(np.ones(5, complex), {"p": 0.5})


def test_backward_errors():
    _, cache = F.dropout_forward(np.ones((3, 4)), _param(0.5, seed=1))
    with pytest.raises(ValueError, match="dout"):
        F.dropout_backward(np.ones((4, 3)), cache)
    with pytest.raises(TypeError, match="dout"):
        F.dropout_backward(np.ones((3, 4), complex), cache)
    for garbage in [None, (np.ones((3, 4)), {"p": 0.5}), "cache", np.ones((3, 4))]:
        with pytest.raises(TypeError, match="cache"):
            F.dropout_backward(np.ones((3, 4)), garbage)


# ============================================================================ Gaussian noise
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("std", [0.5, 2.0])
def test_gaussian_noise_statistics(std, dtype):
    n = 1_000_000
    x = np.full(n, 3.0, dtype=dtype)
    out, _ = F.gaussian_noise_forward(x, std, seed=42)
    assert out.dtype == dtype and out.shape == x.shape
    noise = out.astype(np.float64) - 3.0
    assert abs(noise.mean()) <= 5 * std / np.sqrt(n)
    assert abs(noise.std() - std) <= 5 * std / np.sqrt(2 * n)
    # Gaussian, not uniform: about 68.27% within one std, 95.45% within two
    for k, share in ((1, 0.682689), (2, 0.954500)):
        frac = np.mean(np.abs(noise) <= k * std)
        assert abs(frac - share) <= 5 * np.sqrt(share * (1 - share) / n)


def test_gaussian_noise_is_additive_and_seeded(rng):
    x = rng.standard_normal((300, 20))
    out1, _ = F.gaussian_noise_forward(x, 0.1, seed=5)
    out2, _ = F.gaussian_noise_forward(x, 0.1, seed=5)
    assert_same_bits(out1, out2)
    out3, _ = F.gaussian_noise_forward(x, 0.1, seed=6)
    assert not np.any(out3 == out1)
    zero, _ = F.gaussian_noise_forward(np.zeros_like(x), 0.1, seed=5)
    # (noise + x) - x: two roundings, each within eps * (|x| + |noise|)
    bound = 2 * np.finfo(np.float64).eps * np.max(np.abs(x) + np.abs(zero))
    np.testing.assert_allclose(out1 - x, zero, rtol=0, atol=bound)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gaussian_noise_test_mode_and_zero_std_are_identity(dtype, rng):
    x = rng.standard_normal((30, 4)).astype(dtype)
    x0 = x.copy()
    for kwargs in ({"mode": "test"}, {"mode": "test", "seed": 1}):
        out, cache = F.gaussian_noise_forward(x, 0.7, **kwargs)
        assert_same_bits(out, x0)
    out, _ = F.gaussian_noise_forward(x, 0.0, seed=1)
    assert_same_bits(out, x0)
    out, _ = F.gaussian_noise_forward(x, 0.7, seed=1)
    assert not np.any(out == x0)
    assert_same_bits(x, x0)


def test_gaussian_noise_without_a_seed_follows_numpys_global_state(rng):
    """Without a seed the noise's seed is drawn from np.random, so np.random.seed makes a run
    reproducible (as dropout's mask); the draw moves the global state on."""
    x = rng.standard_normal((6, 5))
    np.random.seed(3)
    a, _ = F.gaussian_noise_forward(x, 0.5)
    b, _ = F.gaussian_noise_forward(x, 0.5)
    np.random.seed(3)
    assert_same_bits(F.gaussian_noise_forward(x, 0.5)[0], a)
    assert_same_bits(F.gaussian_noise_forward(x, 0.5)[0], b)
    assert not np.array_equal(a, b)


def test_gaussian_noise_backward_passes_gradient(rng):
    x = rng.standard_normal((5, 6))
    dout = rng.standard_normal((5, 6))
    for mode in ("train", "test"):
        _, cache = F.gaussian_noise_forward(x, 0.3, mode=mode, seed=2)
        assert_same_bits(F.gaussian_noise_backward(dout, cache), dout)
    num = numerical_gradient(lambda v: F.gaussian_noise_forward(v, 0.3, seed=2)[0], x.copy(), dout)
    np.testing.assert_allclose(num, dout, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="dout"):
        F.gaussian_noise_backward(np.ones((6, 5)), cache)
    for garbage in [None, ("dropout", (5, 6)), "cache"]:
        with pytest.raises(TypeError, match="cache"):
            F.gaussian_noise_backward(dout, garbage)


def test_gaussian_noise_argument_errors():
    x = np.ones(4)
    for std in (-1, -1e-12, np.nan, np.inf):
        with pytest.raises(ValueError, match="std"):
            F.gaussian_noise_forward(x, std)
    for std in ("0.1", None, [0.1]):
        with pytest.raises(TypeError, match="std"):
            F.gaussian_noise_forward(x, std)
    with pytest.raises(ValueError, match="mode"):
        F.gaussian_noise_forward(x, 0.1, mode="eval")
    # the kernel's seed is 64 bits (as dropout_param['seed']): a larger one is refused, not cut
    F.gaussian_noise_forward(x, 0.1, seed=2**64 - 1)
    with pytest.raises(ValueError, match="seed"):
        F.gaussian_noise_forward(x, 0.1, seed=2**64)


# ---------------------------------------------------------------------------- the noise kernel
def _noise_tolerance(x, std, ref):
    """Within a few ulp of the reference: the kernel's log, sin and cos are polynomials (a few
    1e-16 from libm's, relative), and its float32 product std * z, rounded once, can land an
    ulp apart; then the sum rounds once more."""
    eps = np.finfo(x.dtype).eps
    noise = np.abs(ref.astype(np.float64) - x)
    return 4 * eps * (np.abs(x) + noise) + 8e-15 * std * (1 + np.abs(noise) / max(std, 1e-300))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gaussian_noise_matches_reference(dtype, shape, seed, rng):
    """x + std * z with z of the reference's Box-Muller pairs (each pair of elements from the
    hashes of its two counters), for every seed width and odd sizes across the kernel's
    chunks of 16384; x is left as it was."""
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    x0 = x.copy()
    out, cache = F.gaussian_noise_forward(x, 0.7, seed=seed)
    ref = R.gaussian_noise_forward(x, 0.7, seed)
    assert out.dtype == dtype and out.shape == shape and ref.dtype == dtype
    err = np.abs(out.astype(np.float64) - ref) - _noise_tolerance(x, 0.7, ref)
    assert not np.any(err > 0), f"{np.sum(err > 0)} elements beyond the tolerance, worst by {err.max()}"
    assert_same_bits(x, x0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gaussian_noise_is_the_same_for_any_thread_count(dtype, rng):
    """Each element's draw depends on (seed, index) only: 1, 2, 3 and 16 threads, which cut
    the array into different spans, give the same bits."""
    x = rng.standard_normal(5 * 16384 + 3).astype(dtype)
    assert_thread_invariant(lambda: F.gaussian_noise_forward(x, 1.5, seed=77)[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("size", [8191, 8192, 8193, 12289, 16385, 24577])
def test_gaussian_noise_threads_from_two_of_its_chunks(size, dtype, rng):
    """Noise costs ~16 ReLU elements an element, and threaded it runs in chunks of 4096
    elements (NOISE_CHUNK, not the 16384 of the other element-wise kernels): a call of 8192
    elements or more takes a second thread, fewer do not; and whatever the cut, at 1, 2, 3
    and 16 threads, a call of an odd size (its chunks starting inside Box-Muller pairs) and
    a part of it from an odd counter give the bits of the whole on one thread."""
    from fastnn._kernels import _config
    from fastnn._kernels import dropout as kd

    x = rng.standard_normal(size + 3).astype(dtype)
    whole = np.empty_like(x)
    kd.noise_apply(x, whole, 0.6, 99, 1)
    with _threads._dynamic_set(False):
        before = kd.parallel_regions()
        out = np.empty(size, dtype)
        kd.noise_apply(x[:size], out, 0.6, 99, 2)
        started = kd.parallel_regions() - before
    assert started == (1 if size >= 8192 and _config.openmp_enabled() else 0)
    assert_same_bits(out, whole[:size])

    def part():
        y = np.empty(size, dtype)
        kd.noise_apply(x[3:], y, 0.6, 99, fastnn.get_num_threads(), 3)
        return y

    assert_same_bits(assert_thread_invariant(part), whole[3:])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("first", [1, 2, 16383, 16385])
def test_gaussian_noise_of_a_part_is_that_part_of_the_whole(first, dtype, rng):
    """noise_apply with x[0] at counter `first` (odd: the span starts inside a pair, which takes
    its sine half; its chunks then start inside pairs too) gives the same bits as the same
    elements of the whole array's noise, on one thread and on several."""
    from fastnn._kernels import dropout as kd

    x = rng.standard_normal(first + 3 * 16384 + 5).astype(dtype)
    whole = np.empty_like(x)
    kd.noise_apply(x, whole, 0.9, 2024, 1)
    for threads in (1, 3):
        part = np.empty_like(x[first:])
        kd.noise_apply(x[first:], part, 0.9, 2024, threads, first)
        assert_same_bits(part, whole[first:])
    with pytest.raises(ValueError, match="2\\*\\*32"):
        kd.noise_apply(x, whole, 0.9, 2024, 1, 2**32 - x.size + 1)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        kd.noise_apply(x, whole, 0.9, 2024, 1, -1)
    with pytest.raises(ValueError, match="2\\*\\*32"):   # (n + first wrapped: accepted, counters from 0)
        kd.noise_apply(x, whole, 0.9, 2024, 1, 2**63 - 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gaussian_noise_cut_into_short_spans_is_the_whole(dtype, rng):
    """The whole array's noise, bitwise, from spans of 1 to 9 elements starting anywhere:
    thousands of spans that start or end inside a pair (the kernel's scalar branches beside
    its vectorized loop). The compiler once fused a multiply-add in those branches and not
    in the loop, or the other way round: in float64 about one element in 250 of such a cut
    came out an ulp apart (a model's row chunks over an odd width cut its noise so)."""
    from fastnn._kernels import dropout as kd

    x = rng.standard_normal(20011).astype(dtype)
    whole = np.empty_like(x)
    kd.noise_apply(x, whole, 0.7, 31337, 1)
    cut = np.empty_like(x)
    lengths = np.random.default_rng(5).integers(1, 10, x.size)
    start = 0
    for n in lengths:
        if start >= x.size:
            break
        kd.noise_apply(x[start:start + n], cut[start:start + n], 0.7, 31337, 1, start)
        start += n
    assert_same_bits(cut, whole)


@pytest.mark.parametrize("seed", [0, 123, 2**63 + 5])
def test_gaussian_noise_is_unrelated_to_a_dropout_mask_of_the_same_seed(seed):
    """A Dropout and a GaussianNoise layer seeded alike draw the same seeds, and course code
    passes one seed to both functions: the noise has a key of its own (noise_key), else it was
    the mask's hash again (with keep probability 0.5, every kept odd element got positive
    noise, and the noise of kept units averaged +0.39). On kept and on dropped units, even and
    odd elements: mean 0 and half positive, within 5 standard errors."""
    n = 1_000_000
    z = F.gaussian_noise_forward(np.zeros(n), 1.0, seed=seed)[0]
    kept = R.keep_mask(n, 0.5, seed)
    for part in (kept, ~kept):
        for parity in (0, 1):
            sel = z[parity::2][part[parity::2]]
            assert abs(sel.mean()) <= 5 / np.sqrt(len(sel)), (parity, sel.mean())
            assert abs(np.mean(sel > 0) - 0.5) <= 5 * 0.5 / np.sqrt(len(sel))
    from fastnn import Dropout, GaussianNoise

    drop, noise = Dropout(0.5, seed=7), GaussianNoise(0.5, seed=7)
    out = drop.forward(noise.forward(np.ones((2000, 50), np.float32)))
    assert abs(out.mean() - 1.0) <= 5 * np.std(out) / np.sqrt(out.size)


def test_gaussian_noise_draws_are_independent_normals():
    """Beyond the mean and spread (test_gaussian_noise_statistics): the normal's CDF at several
    points including the tails, and no correlation within a Box-Muller pair (z[2k] and
    z[2k + 1]: R cos and R sin of one angle) or between neighbouring pairs; 5 standard
    errors each. A rule-of-thumb uniform or a shared radius would fail these."""
    from math import erf, sqrt

    n = 2_000_000
    z = F.gaussian_noise_forward(np.zeros(n), 1.0, seed=99)[0]
    for t in (-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0):
        share = 0.5 * (1 + erf(t / sqrt(2)))
        assert abs(np.mean(z <= t) - share) <= 5 * sqrt(share * (1 - share) / n), t
    m = n // 2
    for a, b in ((z[0::2], z[1::2]), (z[1::2][:-1], z[2::2]), (z[0::2][:-1], z[2::2])):
        assert abs(np.mean(a * b)) <= 5 / sqrt(len(a))
        # squares: the pair's radius is shared, but cos^2 and sin^2 of a uniform angle cancel it
        assert abs(np.corrcoef(a * a, b * b)[0, 1]) <= 5 / sqrt(len(a))
    assert np.max(np.abs(z)) <= sqrt(64 * np.log(2))   # u1 >= 2**-32
    assert m == len(z[0::2])


@pytest.mark.parametrize("p", [2.0**-30, 1e-7, 1e-6, 3e-4, 0.3, 0.5, 1 - 1e-9, 1.0])
def test_keep_rate_is_p_to_32_bits(p):
    """A unit is kept when its 32-bit hash is at most keep_limit(p): the keep rate
    (limit + 1) / 2**32 is p rounded up to a multiple of 2**-32, so the 1 / p scale keeps the
    mean unbiased to 2**-32 / p relative (a 24-bit threshold kept 19% too many units at
    p = 1e-7, and 4 of 2**26 at p = 2**-30 where 0.06 were due); the reference agrees."""
    from fastnn._kernels import dropout as kd

    limit = kd.keep_limit(p)
    assert p <= (limit + 1) / 2**32 < p + 2**-32
    # the kernel and the reference keep exactly the units whose hash is at most the limit
    # (the kernel's own call: the public functions refuse keep probabilities below 2**-16)
    x = np.ones(1 << 16, np.float32)
    out = np.empty_like(x)
    kd.dropout_apply(x, out, p, 99, _threads._num_threads)
    assert_same_bits(out != 0, R.keep_mask(x.size, p, 99))
    if p >= 2.0**-16:
        assert_same_bits(F.dropout_forward(x, {"p": p, "mode": "train", "seed": 99})[0], out)


@pytest.mark.parametrize("p", [0.0, -0.5, 1.5, float("nan")])
def test_dropout_kernel_refuses_p_outside_unit_interval(p):
    """The compiled kernel checks p itself (the public functions check it first, naming p)."""
    from fastnn._kernels import dropout as kd

    x = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="p must be in"):
        kd.dropout_apply(x, np.empty_like(x), p, 0, 1)


def test_keep_probabilities_below_the_masks_resolution_are_refused():
    """The mask keeps an element when its 32-bit hash is below ceil(p * 2**32), and kept
    elements are scaled by 1 / p: the output's mean is x * ceil(p * 2**32) / (p * 2**32).
    A reviewer measured 1.164x at p = 1e-9, 233x at 1e-12, and an Inf at p = 1e-300 (the
    scale beyond float32). Keep probabilities from 2**-16 (bias at most 2**-16) are taken,
    smaller ones refused naming p; the layer's drop probability likewise up to 1 - 2**-16."""
    x = np.ones(4096, np.float32)
    for p in (1e-300, 1e-12, 1e-9, 1e-7, 2.0**-16 * 0.999):
        with pytest.raises(ValueError, match=r"dropout_param\['p'\] is the keep probability "
                                             r"and must be in \[2\*\*-16, 1\]"):
            F.dropout_forward(x, {"p": p, "mode": "train", "seed": 0})
        with pytest.raises(ValueError, match=r"^p is the drop probability and must be in "
                                             r"\[0, 1 - 2\*\*-16\]"):
            fastnn.Dropout(1.0 - p if p > 1e-12 else 1.0)
    out, cache = F.dropout_forward(x, {"p": 2.0**-16, "mode": "train", "seed": 0})
    assert np.isfinite(out).all() and set(np.unique(out)) <= {0.0, 65536.0}
    layer = fastnn.Dropout(1.0 - 2.0**-16, seed=0)
    assert np.isfinite(layer.forward(x, training=True)).all()
    with pytest.raises(ValueError, match=r"dropout_keep_ratio .* must be in \[2\*\*-16, 1\]"):
        fastnn.FullyConnectedNet([10], dropout_keep_ratio=1e-6)


@pytest.mark.parametrize("seed,other,shift", [
    (5, 5 + 0x9E3779B9, 1), (5, (5 + 7 * 0x9E3779B9) % 2**32, 7),
    (5, (5 + 1000 * 0x9E3779B9) % 2**32, 1000), (0, 227, 732539)])
def test_related_seeds_do_not_give_shifted_copies_of_one_mask(seed, other, shift):
    """The hash takes its key's low word plus the element index times 0x9E3779B9: with the
    seed itself as the key, two seeds of one high word whose low words differ by
    k * 0x9E3779B9 gave the same mask shifted by k elements (all 1e5 positions alike; seeds 0
    and 227 by 732,539 elements). Masks take the seed through a mixer (mask_key) now: shifted
    or not, two such masks agree on about half of the elements, as unrelated ones do."""
    n = 100_000 + shift
    a = F.dropout_forward(np.ones(n), {"p": 0.5, "seed": seed})[0] != 0
    b = F.dropout_forward(np.ones(n), {"p": 0.5, "seed": other})[0] != 0
    tol = 5 * 0.5 / np.sqrt(n - shift)
    assert abs(np.mean(b[:n - shift] == a[shift:]) - 0.5) <= tol
    assert abs(np.mean(b[shift:] == a[:n - shift]) - 0.5) <= tol
    assert abs(np.mean(a == b) - 0.5) <= 5 * 0.5 / np.sqrt(n)
    assert_same_bits(a, R.keep_mask(n, 0.5, seed))
