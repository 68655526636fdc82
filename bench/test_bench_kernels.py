"""Micro-benchmarks: the dense, loss, update-rule and dropout kernels, fastnn vs NumPy.

    python3 -m pytest bench/test_bench_kernels.py --benchmark-only --benchmark-group-by=param
    python3 -m pytest bench/test_bench_kernels.py --benchmark-only --benchmark-group-by=param -k course
    FASTNN_BENCH_HUGE=1 python3 -m pytest bench/test_bench_kernels.py --benchmark-only -k huge

One table per case; the case id is ``<kernel>[-<fwd|bwd>]-<size>-<shape>[-f64]`` (float32
unless it ends in ``-f64``). Its rows are the implementations:

    test_fastnn           fastnn.functional / fastnn.optim
    test_fastnn_unfused   the fused dense sandwiches (affine_<act>_*) run as two fastnn calls,
                          affine_forward then <act>_forward (backward: <act>_backward then
                          affine_backward), the way the NumPy reference composes them
    test_numpy_ref        the NumPy reference of the same name in fastnn/reference/
    test_numpy_naive      dropout and noise only: for dropout the course's textbook mask,
                          ``(rng.random(shape) < p) / p`` (float32), then ``x * mask``; for
                          noise NumPy's ``rng.standard_normal`` (below)

Cases (``size`` is the scale of the network the shape comes from):

    dense    affine, affine_relu, affine_leaky_relu (alpha 0.01), affine_sigmoid, affine_tanh,
             affine_prelu (one alpha per unit): fwd and bwd; shape NxDxM (batch x in x out)
               small  32x64x64
               course 200x3072x100, 200x100x10        (the CIFAR-10 3072-100-10 net, batch 200)
               large  128x784x512, 128x512x512, 1024x784x512, 1024x512x512  (784-512-512-10)
               huge   256x4096x4096, only with FASTNN_BENCH_HUGE=1 (skipped otherwise)
             maxout (2 pieces): fwd and bwd at course 200x3072x100x2
             affine_relu fwd/bwd also in float64 at course 200x3072x100
    losses   softmax_loss, svm_loss, mse_loss on (N, C): small 32x10, course 200x10,
             large 4096x1000; logistic_loss, binary_svm_loss on (N,): small 32, course 200,
             large 4096000 (the element count of 4096x1000). softmax_loss also float64 at course.
             Each call returns the loss and dx (there is no separate backward).
    optim    sgd, sgd_momentum, nesterov_momentum, rmsprop, adam (course defaults) on a
             parameter of small 64x64, course 3072x100, large 4096x4096; adam also float64
             at course
    noise    Gaussian input noise (gaussian_noise_forward, std 0.1, fixed seed) on the inputs
             of the course 200x3072 and the large 1024x784; its naive row is
             ``x + std * rng.standard_normal(x.shape, dtype)`` (NumPy's Generator, float32)
    dropout  fwd and bwd, train mode, p = 0.5 (KEEP probability), fixed seed: course 200x100,
             large 1024x512 and 4096x4096

Setup, outside the timed region, once per case (the items of a case run back to back, see
bench/conftest.py, and share one set of inputs): the inputs are drawn from a seeded generator,
every backward gets a cache from one forward done here, and every implementation of the case
is run once on the same inputs and its outputs compared with the NumPy reference's
(``np.testing.assert_allclose``, rtol 1e-4 and atol 1e-4 * max|reference| in float32, 1e-10
in float64), so a table never compares different work. That run is also the warm-up.

Update rules work IN PLACE in fastnn and return new arrays in the reference. Both keep one
parameter and one ``config`` dict for the whole case, created in setup and advanced by the
agreement step (which also allocates the state: velocity, cache, m, v), so every timed round
is one steady-state step of a training loop: fastnn ``rule(w, dw, config)`` updating w and the
state in place, the reference ``w, config = rule(w, dw, config)`` as the course's Solver does.

Dropout: fastnn and the reference compute the same counter-based mask (equal outputs); the
naive row draws its mask from NumPy's generator instead, so it is checked for the keep
fraction and for ``out == x / p`` where kept, not for equality.

fastnn runs with its default thread count (fastnn.get_num_threads()); the reference's matrix
products use NumPy's BLAS with its own thread count, its element-wise ufuncs one thread.
"""
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest

import fastnn
from fastnn import bench as _fb
from fastnn import functional as F
from fastnn import optim as O
from fastnn.reference import dense as RD
from fastnn.reference import dropout as RDO
from fastnn.reference import losses as RL
from fastnn.reference import optim as RO

HUGE = os.environ.get("FASTNN_BENCH_HUGE", "") not in ("", "0")
_HUGE_MARK = pytest.mark.skipif(not HUGE, reason="huge case: set FASTNN_BENCH_HUGE=1")

ALPHA = 0.01          # affine_leaky_relu
PIECES = 2            # maxout
KEEP = 0.5            # dropout keep probability
SEED = 2024           # dropout seed
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}

SANDWICH_ACTS = ("relu", "leaky_relu", "sigmoid", "tanh", "prelu")
DENSE_KERNELS = ("affine",) + tuple(f"affine_{a}" for a in SANDWICH_ACTS)
DENSE_SHAPES = {
    "small": [(32, 64, 64)],
    "course": [(200, 3072, 100), (200, 100, 10)],
    "large": [(128, 784, 512), (128, 512, 512), (1024, 784, 512), (1024, 512, 512)],
    "huge": [(256, 4096, 4096)],
}
MAXOUT_SHAPES = {"course": [(200, 3072, 100)]}
LOSS_KERNELS = ("softmax_loss", "svm_loss", "logistic_loss", "binary_svm_loss", "mse_loss")
BINARY_LOSSES = ("logistic_loss", "binary_svm_loss")
LOSS_SHAPES = {"small": (32, 10), "course": (200, 10), "large": (4096, 1000)}
BINARY_SHAPES = {"small": (32,), "course": (200,), "large": (4096 * 1000,)}  # x of shape (N,)
OPTIM_RULES = ("sgd", "sgd_momentum", "nesterov_momentum", "rmsprop", "adam")
OPTIM_STATE = {"sgd": (), "sgd_momentum": ("velocity",), "nesterov_momentum": ("velocity",),
               "rmsprop": ("cache",), "adam": ("m", "v")}
OPTIM_SHAPES = {"small": (64, 64), "course": (3072, 100), "large": (4096, 4096)}
DROPOUT_SHAPES = {"course": [(200, 100)], "large": [(1024, 512), (4096, 4096)]}
NOISE_SHAPES = {"course": (200, 3072), "large": (1024, 784)}
NOISE_STD = 0.1
DIRECTIONS = ("fwd", "bwd")

IMPL_ORDER = ("fastnn", "fastnn_unfused", "numpy_ref", "numpy_naive")


# ----------------------------------------------------------------------------- the cases
class Case:
    def __init__(self, family, kernel, direction, size, shape, dtype=np.float32):
        self.family, self.kernel, self.direction = family, kernel, direction
        self.size, self.shape, self.dtype = size, tuple(shape), np.dtype(dtype)
        parts = [kernel] + ([direction] if direction else []) + [size, "x".join(map(str, shape))]
        if self.dtype == np.float64:
            parts.append("f64")
        self.id = "-".join(parts)
        self.impls = ("fastnn", "numpy_ref")
        if family == "dense" and kernel.startswith("affine_"):
            self.impls = ("fastnn", "fastnn_unfused", "numpy_ref")
        elif family in ("dropout", "noise"):
            self.impls = ("fastnn", "numpy_ref", "numpy_naive")


def _all_cases():
    cases = []
    for size, shapes in DENSE_SHAPES.items():
        for shape in shapes:
            for kernel in DENSE_KERNELS:
                for direction in DIRECTIONS:
                    cases.append(Case("dense", kernel, direction, size, shape))
        for shape in MAXOUT_SHAPES.get(size, ()):
            for direction in DIRECTIONS:
                cases.append(Case("dense", "maxout", direction, size, shape + (PIECES,)))
        if size == "course":
            for direction in DIRECTIONS:
                cases.append(Case("dense", "affine_relu", direction, size, shapes[0], np.float64))
    for size, (n, c) in LOSS_SHAPES.items():
        for kernel in LOSS_KERNELS:
            cases.append(Case("losses", kernel, None, size, BINARY_SHAPES[size] if kernel in BINARY_LOSSES else (n, c)))
        if size == "course":
            cases.append(Case("losses", "softmax_loss", None, size, (n, c), np.float64))
    for size, shape in OPTIM_SHAPES.items():
        for rule in OPTIM_RULES:
            cases.append(Case("optim", rule, None, size, shape))
        if size == "course":
            cases.append(Case("optim", "adam", None, size, shape, np.float64))
    for size, shapes in DROPOUT_SHAPES.items():
        for shape in shapes:
            for direction in DIRECTIONS:
                cases.append(Case("dropout", "dropout", direction, size, shape))
    for size, shape in NOISE_SHAPES.items():
        cases.append(Case("noise", "gaussian_noise", "fwd", size, shape))
    return cases


CASES = {c.id: c for c in _all_cases()}
assert len(CASES) == len(_all_cases()), "duplicate case ids"
_ORDER = {cid: i for i, cid in enumerate(CASES)}


def bench_sort_key(case, func_name):
    """Used by bench/conftest.py: all implementations of one case back to back, in case order."""
    return (_ORDER[case], IMPL_ORDER.index(func_name[len("test_"):]))


# ----------------------------------------------------------------------------- agreement
def _agree(got, ref, dtype, what):
    """got matches the reference: same shape (and dtype, for arrays) and values within
    rtol * |ref| + rtol * max|ref| (rtol from RTOL for the computation dtype)."""
    rtol = RTOL[np.dtype(dtype)]
    if isinstance(ref, np.ndarray):
        assert isinstance(got, np.ndarray), f"{what}: {type(got).__name__}, not an array"
        assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
        assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype} != reference {ref.dtype}"
    ref = np.asarray(ref)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


def _agree_all(outs, ref_outs, dtype, what, names):
    outs = outs if isinstance(outs, tuple) else (outs,)
    ref_outs = ref_outs if isinstance(ref_outs, tuple) else (ref_outs,)
    assert len(outs) == len(ref_outs), f"{what}: {len(outs)} results, reference {len(ref_outs)}"
    for name, got, ref in zip(names, outs, ref_outs):
        _agree(got, ref, dtype, f"{what}: {name}")


# ----------------------------------------------------------------------------- setup per family
def _dense(case, rng):
    dt = case.dtype
    kernel, fwd = case.kernel, case.direction == "fwd"
    if kernel == "maxout":
        n, d, m, k = case.shape
        x = rng.standard_normal((n, d), dtype=dt)
        w = rng.standard_normal((d, m, k), dtype=dt) * dt.type(np.sqrt(2.0 / d))
        b = rng.standard_normal((m, k), dtype=dt) * dt.type(0.1)
        dout = rng.standard_normal((n, m), dtype=dt)
        f_fwd, r_fwd = (lambda: F.maxout_forward(x, w, b)), (lambda: RD.maxout_forward(x, w, b))
        f_bwd, r_bwd = F.maxout_backward, RD.maxout_backward
        u_fwd = u_bwd = None
        names = ("dx", "dw", "db")
    else:
        n, d, m = case.shape
        x = rng.standard_normal((n, d), dtype=dt)
        w = rng.standard_normal((d, m), dtype=dt) * dt.type(np.sqrt(2.0 / d))
        b = rng.standard_normal(m, dtype=dt) * dt.type(0.1)
        dout = rng.standard_normal((n, m), dtype=dt)
        act = kernel[len("affine_"):] if kernel != "affine" else None
        args = ()
        if act == "leaky_relu":
            args = (ALPHA,)
        elif act == "prelu":
            args = (np.linspace(0.05, 0.3, m, dtype=dt),)
        f_fwd_fn, r_fwd_fn = getattr(F, f"{kernel}_forward"), getattr(RD, f"{kernel}_forward")
        f_fwd, r_fwd = (lambda: f_fwd_fn(x, w, b, *args)), (lambda: r_fwd_fn(x, w, b, *args))
        f_bwd, r_bwd = getattr(F, f"{kernel}_backward"), getattr(RD, f"{kernel}_backward")
        names = ("dx", "dw", "db", "dalpha")
        if act is None:
            u_fwd = u_bwd = None
        else:
            # fastnn's unfused pair: affine then the activation, composed as the course does
            u_fwd_fn, u_bwd = RD.compose_sandwich(F.affine_forward, F.affine_backward,
                                                  getattr(F, f"{act}_forward"), getattr(F, f"{act}_backward"))

            def u_fwd():
                return u_fwd_fn(x, w, b, *args)

    fwds = {"fastnn": f_fwd, "fastnn_unfused": u_fwd, "numpy_ref": r_fwd}
    bwds = {"fastnn": f_bwd, "fastnn_unfused": u_bwd, "numpy_ref": r_bwd}
    impls = {}
    ref_out, ref_cache = r_fwd()
    if fwd:
        for impl in case.impls:
            impls[impl] = fwds[impl]
            if impl != "numpy_ref":
                _agree(fwds[impl]()[0], ref_out, dt, f"{case.id} {impl}: out")
    else:
        ref_grads = r_bwd(dout, ref_cache)
        for impl in case.impls:
            cache = ref_cache if impl == "numpy_ref" else fwds[impl]()[1]
            impls[impl] = (lambda bwd, cache: lambda: bwd(dout, cache))(bwds[impl], cache)
            if impl != "numpy_ref":
                _agree_all(bwds[impl](dout, cache), ref_grads, dt, f"{case.id} {impl}", names)
    mult = 2 if fwd else 4  # backward: dx and dw products
    flops = mult * int(np.prod(case.shape))
    return impls, {"flops": flops}


def _losses(case, rng):
    dt = case.dtype
    x = rng.standard_normal(case.shape, dtype=dt)
    n = case.shape[0]
    if case.kernel in ("softmax_loss", "svm_loss"):
        y = rng.integers(0, case.shape[1], size=n)
    elif case.kernel == "logistic_loss":
        y = rng.integers(0, 2, size=n)
    elif case.kernel == "binary_svm_loss":
        y = 2 * rng.integers(0, 2, size=n) - 1
    else:  # mse_loss: regression targets of x's shape
        y = rng.standard_normal(case.shape, dtype=dt)
    f, r = getattr(F, case.kernel), getattr(RL, case.kernel)
    impls = {"fastnn": lambda: f(x, y), "numpy_ref": lambda: r(x, y)}
    _agree_all(impls["fastnn"](), impls["numpy_ref"](), dt, f"{case.id} fastnn", ("loss", "dx"))
    return impls, {}


def _optim(case, rng):
    dt = case.dtype
    w = rng.standard_normal(case.shape, dtype=dt) * dt.type(0.05)
    dw = rng.standard_normal(case.shape, dtype=dt) * dt.type(0.01)
    f, r = getattr(O, case.kernel), getattr(RO, case.kernel)
    state = SimpleNamespace(wf=w.copy(), cf={}, wr=w, cr={})
    # The agreement step: the first step of both from the same w, dw and an empty config; it
    # also allocates the state every timed round then reads and updates.
    next_wf, state.cf = f(state.wf, dw, state.cf)
    assert next_wf is state.wf, "fastnn update rule did not update w in place"
    state.wr, state.cr = r(state.wr, dw, state.cr)
    _agree(state.wf, state.wr, dt, f"{case.id} fastnn: next_w")
    for key in OPTIM_STATE[case.kernel]:
        _agree(state.cf[key], state.cr[key], dt, f"{case.id} fastnn: config[{key!r}]")
    if case.kernel == "adam":
        assert state.cf["t"] == state.cr["t"] == 1

    def fastnn_step():
        return f(state.wf, dw, state.cf)  # in place: w and the config's state arrays

    def numpy_step():
        state.wr, state.cr = r(state.wr, dw, state.cr)

    return {"fastnn": fastnn_step, "numpy_ref": numpy_step}, {}


def _naive_dropout_forward(x, p, rng):
    """The course's textbook inverted dropout (float32 mask)."""
    mask = (rng.random(x.shape, dtype=x.dtype) < p) / x.dtype.type(p)
    return x * mask, mask


def _dropout(case, rng):
    dt = case.dtype
    x = rng.standard_normal(case.shape, dtype=dt)
    dout = rng.standard_normal(case.shape, dtype=dt)
    param = {"mode": "train", "p": KEEP, "seed": SEED}
    out_f, cache_f = F.dropout_forward(x, param)
    out_r, mask_r = RDO.dropout_forward(x, KEEP, SEED)
    naive_rng = np.random.default_rng(SEED)
    out_n, mask_n = _naive_dropout_forward(x, KEEP, naive_rng)
    _agree(out_f, out_r, dt, f"{case.id} fastnn: out")
    # The naive mask is a different random draw: check what it computes, not equality.
    assert out_n.dtype == dt and mask_n.dtype == dt
    kept = mask_n != 0
    np.testing.assert_array_equal(out_n[kept], x[kept] * dt.type(1 / KEEP))
    assert not out_n[~kept].any()
    frac = kept.mean()
    assert abs(frac - KEEP) <= 6 * np.sqrt(KEEP * (1 - KEEP) / x.size), f"keep fraction {frac}"
    if case.direction == "fwd":
        impls = {
            "fastnn": lambda: F.dropout_forward(x, param),
            "numpy_ref": lambda: RDO.dropout_forward(x, KEEP, SEED),
            "numpy_naive": lambda: _naive_dropout_forward(x, KEEP, naive_rng),
        }
    else:
        impls = {
            "fastnn": lambda: F.dropout_backward(dout, cache_f),
            "numpy_ref": lambda: RDO.dropout_backward(dout, KEEP, mask_r),
            "numpy_naive": lambda: dout * mask_n,
        }
        _agree(impls["fastnn"](), impls["numpy_ref"](), dt, f"{case.id} fastnn: dx")
    return impls, {}


def _noise(case, rng):
    dt = case.dtype
    x = rng.standard_normal(case.shape, dtype=dt)
    out_f, _ = F.gaussian_noise_forward(x, NOISE_STD, seed=SEED)
    out_r = RDO.gaussian_noise_forward(x, NOISE_STD, SEED)
    _agree(out_f, out_r, dt, f"{case.id} fastnn: out")
    naive_rng = np.random.default_rng(SEED)

    def naive():
        return x + dt.type(NOISE_STD) * naive_rng.standard_normal(x.shape, dtype=dt)

    # another draw: checked for its spread, not for equality
    spread = float(np.std(naive() - x))
    assert abs(spread - NOISE_STD) <= 6 * NOISE_STD / np.sqrt(2 * x.size), spread
    return {"fastnn": lambda: F.gaussian_noise_forward(x, NOISE_STD, seed=SEED),
            "numpy_ref": lambda: RDO.gaussian_noise_forward(x, NOISE_STD, SEED),
            "numpy_naive": naive}, {}


_SETUP = {"dense": _dense, "losses": _losses, "optim": _optim, "dropout": _dropout,
          "noise": _noise}
_current = {}


def _data(case):
    """(impls, extra_info) of a case, built and checked once; one case's arrays alive at a time
    (large: up to a few hundred MB)."""
    if case.id not in _current:
        _current.clear()
        _current[case.id] = _SETUP[case.family](case, np.random.default_rng(12345))
    return _current[case.id]


# ----------------------------------------------------------------------------- the benchmarks
def _run(benchmark, impl, case_id):
    case = CASES[case_id]
    impls, extra = _data(case)
    fn = impls[impl]
    benchmark.group = case_id
    benchmark.extra_info.update(
        impl=impl, family=case.family, kernel=case.kernel, direction=case.direction or "",
        size=case.size, shape="x".join(map(str, case.shape)), dtype=case.dtype.name,
        fastnn_threads=fastnn.get_num_threads(), **extra,
    )
    if not benchmark.disabled:
        # every implementation timed after the same pause: the case's setup and the previous
        # benchmark's NumPy products leave NumPy's OpenBLAS threads spinning for ~0.1 s, in
        # which the first implementation of each case (fastnn's) was timed (a reviewer
        # measured F.affine_relu_forward 128x784x512 at a mean of 1.16 ms right after NumPy,
        # 0.59 ms after a pause): fastnn.bench's SETTLE
        time.sleep(_fb.SETTLE)
    benchmark(fn)


def _params(impl):
    return [pytest.param(c.id, marks=_HUGE_MARK) if c.size == "huge" else c.id
            for c in CASES.values() if impl in c.impls]


@pytest.mark.parametrize("case", _params("fastnn"))
def test_fastnn(benchmark, case):
    _run(benchmark, "fastnn", case)


@pytest.mark.parametrize("case", _params("fastnn_unfused"))
def test_fastnn_unfused(benchmark, case):
    _run(benchmark, "fastnn_unfused", case)


@pytest.mark.parametrize("case", _params("numpy_ref"))
def test_numpy_ref(benchmark, case):
    _run(benchmark, "numpy_ref", case)


@pytest.mark.parametrize("case", _params("numpy_naive"))
def test_numpy_naive(benchmark, case):
    _run(benchmark, "numpy_naive", case)
