"""Micro-benchmarks: every activation kernel, forward and backward, fastnn vs NumPy (float32).

    python3 -m pytest bench/test_bench_activations.py --benchmark-only --benchmark-group-by=param

One table per case ``<kernel>-<fwd|bwd>-<size>``; its rows are the implementations:

    test_fastnn           fastnn.functional, allocating the result
    test_fastnn_out       fastnn.functional with a preallocated ``out=`` (relu, leaky_relu,
                          sigmoid, tanh)
    test_numpy_ref        the NumPy reference, fastnn/reference/activations.py
    test_numpy_out        NumPy ufuncs writing preallocated buffers (relu, tanh)
    test_numpy_naive      sigmoid forward as the textbook 4 ufuncs, ``sigmoid_naive(x)``
    test_numpy_naive_out  the same into a preallocated buffer, ``sigmoid_naive(x, out=buf)``

Sizes: small 32x64, medium 256x1024, large 4096x4096 (16M elements). Maxout's input z has the
same number of elements, (rows, cols // PIECES, PIECES); PReLU has one alpha per feature.
fastnn runs with its default thread count (fastnn.get_num_threads()); NumPy's element-wise
ufuncs are single-threaded. For interleaved medians and GB/s see bench/activations_table.py.
"""
import numpy as np
import pytest

import fastnn
from fastnn import functional as F
from fastnn.reference import activations as R

SIZES = {"small": (32, 64), "medium": (256, 1024), "large": (4096, 4096)}
KERNELS = ("relu", "leaky_relu", "sigmoid", "tanh", "prelu", "maxout_reduce")
DIRECTIONS = ("fwd", "bwd")
ALPHA = 0.01          # leaky_relu
PIECES = 2            # maxout pieces
DTYPE = np.float32


# ----------------------------------------------------------------------------- inputs
class _Data:
    """Inputs, caches and output buffers for one (kernel, size); built once, reused by every
    implementation of the case (the items are ordered so that they run back to back)."""

    def __init__(self, kernel, shape):
        rng = np.random.default_rng(12345)
        self.shape = shape
        if kernel == "maxout_reduce":
            zshape = (shape[0], shape[1] // PIECES, PIECES)
            self.z = rng.standard_normal(zshape, dtype=DTYPE)
            self.dout = rng.standard_normal(zshape[:2], dtype=DTYPE)
            _, self.fcache = F.maxout_reduce_forward(self.z)
            _, self.rcache = R.maxout_reduce_forward(self.z)
            return
        self.x = rng.standard_normal(shape, dtype=DTYPE)
        self.dout = rng.standard_normal(shape, dtype=DTYPE)
        self.buf = np.empty(shape, DTYPE)
        self.buf2 = np.empty(shape, DTYPE)
        self.mask = np.empty(shape, np.bool_)
        if kernel == "relu":
            self.y, self.fcache = F.relu_forward(self.x)
            _, self.rcache = R.relu_forward(self.x)
        elif kernel == "leaky_relu":
            _, self.fcache = F.leaky_relu_forward(self.x, ALPHA)
            _, self.rcache = R.leaky_relu_forward(self.x, ALPHA)
        elif kernel == "sigmoid":
            self.y, self.fcache = F.sigmoid_forward(self.x)
            _, self.rcache = R.sigmoid_forward(self.x)
        elif kernel == "tanh":
            self.y, self.fcache = F.tanh_forward(self.x)
            _, self.rcache = R.tanh_forward(self.x)
        elif kernel == "prelu":
            self.alpha = np.linspace(0.05, 0.3, shape[1], dtype=DTYPE)
            _, self.fcache = F.prelu_forward(self.x, self.alpha)
            _, self.rcache = R.prelu_forward(self.x, self.alpha)


_current = {}


def _data(kernel, size):
    key = (kernel, size)
    if key not in _current:
        _current.clear()  # keep one case's arrays alive at a time (large: ~64 MB each)
        _current[key] = _Data(kernel, SIZES[size])
    return _current[key]


# ----------------------------------------------------------------------------- implementations
def _tanh_bwd_out(d):
    t, dout, buf = d.y, d.dout, d.buf

    def run():
        np.multiply(t, t, out=buf)
        np.subtract(1, buf, out=buf)
        return np.multiply(dout, buf, out=buf)
    return run


# IMPLS[(kernel, direction)][implementation] = factory(data) -> zero-argument callable
IMPLS = {
    ("relu", "fwd"): {
        "fastnn": lambda d: lambda: F.relu_forward(d.x),
        "fastnn_out": lambda d: lambda: F.relu_forward(d.x, out=d.buf),
        "numpy_ref": lambda d: lambda: R.relu_forward(d.x),
        "numpy_out": lambda d: lambda: np.maximum(d.x, 0, out=d.buf),
    },
    ("relu", "bwd"): {
        "fastnn": lambda d: lambda: F.relu_backward(d.dout, d.fcache),
        "fastnn_out": lambda d: lambda: F.relu_backward(d.dout, d.fcache, out=d.buf),
        "numpy_ref": lambda d: lambda: R.relu_backward(d.dout, d.rcache),
        "numpy_out": lambda d: lambda: np.multiply(d.dout, np.greater(d.y, 0, out=d.mask), out=d.buf),
    },
    ("leaky_relu", "fwd"): {
        "fastnn": lambda d: lambda: F.leaky_relu_forward(d.x, ALPHA),
        "fastnn_out": lambda d: lambda: F.leaky_relu_forward(d.x, ALPHA, out=d.buf),
        "numpy_ref": lambda d: lambda: R.leaky_relu_forward(d.x, ALPHA),
    },
    ("leaky_relu", "bwd"): {
        "fastnn": lambda d: lambda: F.leaky_relu_backward(d.dout, d.fcache),
        "fastnn_out": lambda d: lambda: F.leaky_relu_backward(d.dout, d.fcache, out=d.buf),
        "numpy_ref": lambda d: lambda: R.leaky_relu_backward(d.dout, d.rcache),
    },
    ("sigmoid", "fwd"): {
        "fastnn": lambda d: lambda: F.sigmoid_forward(d.x),
        "fastnn_out": lambda d: lambda: F.sigmoid_forward(d.x, out=d.buf),
        "numpy_ref": lambda d: lambda: R.sigmoid_forward(d.x),
        "numpy_naive": lambda d: lambda: R.sigmoid_naive(d.x),
        "numpy_naive_out": lambda d: lambda: R.sigmoid_naive(d.x, out=d.buf),
    },
    ("sigmoid", "bwd"): {
        "fastnn": lambda d: lambda: F.sigmoid_backward(d.dout, d.fcache),
        "fastnn_out": lambda d: lambda: F.sigmoid_backward(d.dout, d.fcache, out=d.buf),
        "numpy_ref": lambda d: lambda: R.sigmoid_backward(d.dout, d.rcache),
    },
    ("tanh", "fwd"): {
        "fastnn": lambda d: lambda: F.tanh_forward(d.x),
        "fastnn_out": lambda d: lambda: F.tanh_forward(d.x, out=d.buf),
        "numpy_ref": lambda d: lambda: R.tanh_forward(d.x),
        "numpy_out": lambda d: lambda: np.tanh(d.x, out=d.buf),
    },
    ("tanh", "bwd"): {
        "fastnn": lambda d: lambda: F.tanh_backward(d.dout, d.fcache),
        "fastnn_out": lambda d: lambda: F.tanh_backward(d.dout, d.fcache, out=d.buf),
        "numpy_ref": lambda d: lambda: R.tanh_backward(d.dout, d.rcache),
        "numpy_out": _tanh_bwd_out,
    },
    ("prelu", "fwd"): {
        "fastnn": lambda d: lambda: F.prelu_forward(d.x, d.alpha),
        "numpy_ref": lambda d: lambda: R.prelu_forward(d.x, d.alpha),
    },
    ("prelu", "bwd"): {
        "fastnn": lambda d: lambda: F.prelu_backward(d.dout, d.fcache),
        "numpy_ref": lambda d: lambda: R.prelu_backward(d.dout, d.rcache),
    },
    ("maxout_reduce", "fwd"): {
        "fastnn": lambda d: lambda: F.maxout_reduce_forward(d.z),
        "numpy_ref": lambda d: lambda: R.maxout_reduce_forward(d.z),
    },
    ("maxout_reduce", "bwd"): {
        "fastnn": lambda d: lambda: F.maxout_reduce_backward(d.dout, d.fcache),
        "numpy_ref": lambda d: lambda: R.maxout_reduce_backward(d.dout, d.rcache),
    },
}

IMPL_ORDER = ("fastnn", "fastnn_out", "numpy_ref", "numpy_out", "numpy_naive", "numpy_naive_out")


def _cases(impl):
    return [f"{k}-{dr}-{s}" for s in SIZES for k in KERNELS for dr in DIRECTIONS
            if impl in IMPLS[(k, dr)]]


def bench_sort_key(case, func_name):
    """Used by bench/conftest.py: all implementations of one case back to back, by size."""
    kernel, direction, size = case.split("-")
    impl = func_name[len("test_"):]
    return (list(SIZES).index(size), KERNELS.index(kernel), DIRECTIONS.index(direction),
            IMPL_ORDER.index(impl))


def _nbytes(kernel, direction, shape):
    """Bytes the ideal kernel reads + writes (float32; maxout's argmax as int8)."""
    n = shape[0] * shape[1]
    if kernel == "maxout_reduce":
        units = n // PIECES
        return 4 * n + 5 * units  # fwd: read z, write out + argmax; bwd: read dout + argmax, write dz
    return (8 if direction == "fwd" else 12) * n


def _arrays(result, direction):
    """The output arrays of a call: the array it returns, out of a forward's (out, cache) (a
    cache is not an output, whatever its type), or every array of a backward's (dx, dalpha)."""
    if not isinstance(result, tuple):
        return [np.asarray(result)]
    if direction == "fwd":
        return [np.asarray(result[0])]
    return [np.asarray(r) for r in result]


def _run(benchmark, impl, case):
    kernel, direction, size = case.split("-")
    data = _data(kernel, size)
    fn = IMPLS[(kernel, direction)][impl](data)
    got = [np.array(a) for a in _arrays(fn(), direction)]  # warm-up (first touch of buffers, lazy
    if impl != "numpy_ref":                     # imports), and the check that this
        # implementation computes the same outputs (all of them: prelu's dalpha too)
        wants = _arrays(IMPLS[(kernel, direction)]["numpy_ref"](data)(), direction)
        assert len(got) == len(wants), f"{case} {impl}: {len(got)} outputs, the reference {len(wants)}"
        for g, want in zip(got, wants):
            scale = float(np.max(np.abs(want))) if want.size else 0.0
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6 * scale, err_msg=f"{case} {impl}")
    benchmark.group = case
    benchmark.extra_info.update(
        impl=impl, kernel=kernel, direction=direction, shape="x".join(map(str, SIZES[size])),
        dtype="float32", bytes=_nbytes(kernel, direction, SIZES[size]),
        fastnn_threads=fastnn.get_num_threads(),
    )
    benchmark(fn)


@pytest.mark.parametrize("case", _cases("fastnn"))
def test_fastnn(benchmark, case):
    _run(benchmark, "fastnn", case)


@pytest.mark.parametrize("case", _cases("fastnn_out"))
def test_fastnn_out(benchmark, case):
    _run(benchmark, "fastnn_out", case)


@pytest.mark.parametrize("case", _cases("numpy_ref"))
def test_numpy_ref(benchmark, case):
    _run(benchmark, "numpy_ref", case)


@pytest.mark.parametrize("case", _cases("numpy_out"))
def test_numpy_out(benchmark, case):
    _run(benchmark, "numpy_out", case)


@pytest.mark.parametrize("case", _cases("numpy_naive"))
def test_numpy_naive(benchmark, case):
    _run(benchmark, "numpy_naive", case)


@pytest.mark.parametrize("case", _cases("numpy_naive_out"))
def test_numpy_naive_out(benchmark, case):
    _run(benchmark, "numpy_naive_out", case)
