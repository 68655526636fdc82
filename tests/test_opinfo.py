"""An OpInfo-style matrix (after PyTorch's OpInfo tests): every kernel x {float32, float64} x
{C, Fortran, strided, negative stride, read-only} x {empty, 1-element, prime sizes, large} x
{1, 2, 3 threads}, against the NumPy reference (fastnn.reference).

The kernels and their tolerances are in kernel_specs.py (the same tolerances as the per-kernel test
files). Each case checks, beyond the reference:

- the result is bitwise identical to the C-contiguous, single-threaded run on the same values
  (layout and thread count never change a bit);
- no input is written (update rules write ``w`` and their state arrays in place exactly when
  they are C-contiguous, writeable and of w's dtype; otherwise they are left alone);
- losses refuse an empty batch with a ValueError naming x.

The default run takes a deterministic cover of the product: for every kernel, each layout, size,
dtype and thread count appears at least once (5 cases per kernel, cycled so that different kernels
pair the axes differently) plus one large, multi-threaded case. The full product (2,880 cases)
is marked ``slow``: ``python -m pytest tests/test_opinfo.py --run-slow``.
"""
import zlib

import numpy as np
import pytest

import fastnn
from fastnn._kernels import dense as _kd

from conftest import assert_same_bits
from kernel_specs import BY_NAME, LAYOUTS, SPECS, apply_layout, fresh

# Tiles of ~2 MFLOP (the tuned ones keep ~4 GFLOP) so that the "large" products (8.5 MFLOP) are cut
# into 4 or more tiles, one per thread and more, as in test_dense.py; restored after each test.
SMALL_TILES = dict(tile_flops=2e6, min_tile_rows=16, min_tile_cols=16, serial_flops=1e6)


@pytest.fixture(autouse=True)
def _small_tiles():
    saved = _kd.tile_params()
    _kd.set_tile_params(**SMALL_TILES)
    yield
    _kd.set_tile_params(**saved)


DTYPES = (np.float32, np.float64)
SIZES = ("empty", "one", "prime", "large")
THREADS = (1, 2, 3)

FULL = [(s.name, dt, layout, size, nt) for s in SPECS for dt in DTYPES for layout in LAYOUTS
        for size in SIZES for nt in THREADS]


def _default_cases():
    cases = []
    for i, s in enumerate(SPECS):
        for j, layout in enumerate(LAYOUTS):
            cases.append((s.name, DTYPES[(i + j) % 2], layout, SIZES[(i + j) % 4], THREADS[(i + j) % 3]))
        cases.append((s.name, DTYPES[i % 2], LAYOUTS[(i + 2) % 5], "large", THREADS[1 + i % 2]))
    return list(dict.fromkeys(cases))


DEFAULT = _default_cases()


def _id(case):
    name, dt, layout, size, nt = case
    return f"{name}-{np.dtype(dt).name}-{layout}-{size}-t{nt}"


def _inplace(arr, dtype):
    return (isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.flags.c_contiguous
            and arr.flags.writeable)


def run_case(name, dtype, layout, size, threads):
    spec = BY_NAME[name]
    dtype = np.dtype(dtype)
    # the same values for every layout and thread count of a kernel, dtype and size
    rng = np.random.default_rng(zlib.crc32(f"{name}-{dtype.name}-{size}".encode()))
    inp = spec.prepare(spec.make(rng, dtype, size))
    laid = apply_layout(spec, inp, layout)
    before = {k: np.array(laid[k], copy=True) for k in spec.arrays if isinstance(laid.get(k), np.ndarray)}

    if spec.family == "loss" and size == "empty":
        with fastnn.threads(threads), pytest.raises(ValueError, match="x must hold at least one"):
            spec.run(laid)
        return

    with fastnn.threads(threads):
        out = spec.run(laid)
    spec.check(inp, out)

    with fastnn.threads(1):
        base = spec.run(fresh(inp))
    assert set(base) == set(out)
    for k in out:
        assert_same_bits(out[k], base[k], what=f"{name} {k}: {layout} with {threads} threads vs C with 1")

    written = set()
    if spec.family == "optim":
        # w is updated in place exactly when it can be (see fastnn/optim.py); the caller's
        # state is copied on first use, never written (the check of every input below)
        w_inplace = _inplace(laid["w"], dtype)
        assert (out["w"] is laid["w"]) == w_inplace, f"{name}: w in place? expected {w_inplace}"
        if w_inplace:
            written.add("w")
        for k in spec.state:
            assert out[k] is not laid[k], f"{name}: the caller's {k} was returned, not a copy"
    for k, v in before.items():
        if k not in written:
            assert_same_bits(laid[k], v, what=f"{name}: input {k} was modified ({layout})")


@pytest.mark.parametrize("case", DEFAULT, ids=_id)
def test_opinfo(case):
    run_case(*case)


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL, ids=_id)
def test_opinfo_full(case):
    run_case(*case)


def test_default_cover_is_complete():
    """The default subset touches every value of every axis for every kernel, and has a large
    multi-threaded case for each."""
    for s in SPECS:
        mine = [c for c in DEFAULT if c[0] == s.name]
        for axis, values in ((1, DTYPES), (2, LAYOUTS), (3, SIZES), (4, THREADS)):
            assert {c[axis] for c in mine} == set(values), (s.name, axis)
        assert any(c[3] == "large" and c[4] > 1 for c in mine), s.name
    assert len(FULL) == len(SPECS) * 2 * 5 * 4 * 3
    assert set(DEFAULT) <= set(FULL)


PARALLEL_PROBES = [
    ("relu_forward", "x = np.ones((521, 509))", "F.relu_forward(x)"),
    ("svm_loss", "x = np.ones((2053, 127)); y = np.arange(2053) % 127", "F.svm_loss(x, y)"),
    ("sgd", "w = np.ones((521, 509)); g = np.ones((521, 509))", "fastnn.optim.sgd(w, g)"),
    ("affine_forward", "from fastnn._kernels import dense as _kd\n_kd.set_tile_params(**%r)\n"
     "x = np.ones((257, 131)); w = np.ones((131, 127)); b = np.zeros(127)" % (SMALL_TILES,),
     "F.affine_forward(x, w, b)"),
]


@pytest.mark.parametrize("name,setup,call", PARALLEL_PROBES, ids=[p[0] for p in PARALLEL_PROBES])
def test_large_cases_use_three_threads(name, setup, call):
    """The "large" sizes are large enough for every thread the matrix gives them, so its
    3-thread cases compare really parallel runs with the single-threaded one."""
    from conftest import openmp_workers_started

    started = openmp_workers_started("import fastnn.optim\n" + setup, call, threads=3)
    if started is None:
        pytest.skip("OpenMP worker threads cannot be observed here")
    assert started == 2, f"{name}: {started} workers started with 3 threads"
