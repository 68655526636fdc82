"""``python -m fastnn bench``: one training step, side by side, on this machine.

For each network it times, interleaved in one process (medians of several rounds, each
implementation after a pause in which the previous one's worker threads stop spinning):

- ``fastnn``: the layer API (``Sequential.train_step``: one kernel call per step);
- ``functional``: a course-style step written with ``fastnn.functional`` and ``fastnn.optim``;
- ``numpy``: the same course-style step in plain NumPy (``fastnn.reference``);
- ``numpy_same``: that NumPy step without the first layer's input gradient, which the course's
  affine_relu_backward computes and throws away: the work the layer API and PyTorch do;
- ``torch``: PyTorch (CPU, same thread count), when it is installed.

A step is forward, softmax loss, backward and a plain SGD update; every implementation starts
from the same weights, and their first losses are checked to agree. NumPy's BLAS runs on the
same thread count (threadpoolctl, when installed). The table gives each time, the speedups of
fastnn over the course-style NumPy step, over the NumPy step of the same work and over
PyTorch, and the fraction of the GEMM roofline reached: the layer API's products (6 N
sum(d_i d_i+1) flops less the first layer's input gradient, 2 N d_0 d_1) at the matmul rate
NumPy reaches in the same run (the best of its rounds), and the memory the layer API's step
holds as a fraction of what it must hold (parameters, gradients and the activations backward
reads; see ``step_memory``). A row where some implementation's rounds spread by more than a
quarter of their median (with 3 rounds or more) is marked ``unsteady`` with that
implementation's name (see ``unsteady``): the machine was busy during part of it.
"""
import argparse
import contextlib
import errno
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Iterable, Sequence

import numpy as np

import fastnn
from fastnn import _config as _fastnn_config
from fastnn import _threads
from fastnn import functional as F
from fastnn import optim as O
from fastnn._files import atomic_write, check_writable
from fastnn._kernels import dense as _kd
from fastnn._validation import check_float_dtype, check_int, check_scalar
from fastnn.reference import dense as RD
from fastnn.reference import losses as RL

NETWORKS = [
    ((2, 100, 3), 300),
    ((64, 64, 64, 10), 32),
    ((3072, 100, 10), 200),
    ((784, 512, 512, 10), 128),
    ((784, 512, 512, 10), 1024),
    ((4096, 4096, 4096, 1000), 256),
]


def _params(dims, dtype, seed):
    rng = np.random.default_rng(seed)
    p = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        p[f"W{i}"] = (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(dtype)
        p[f"b{i}"] = np.zeros(b, dtype)
    return p


def _course_step(mod_dense, mod_loss, update, p, X, y, n_layers, lr, first_dx=True,
                 hidden_mask=None):
    """A course-style step: affine_relu layers, affine scores, softmax loss, SGD. With
    first_dx=False (plain NumPy only) the first layer's backward skips its input gradient.
    hidden_mask: a function of a hidden layer's output giving the mask it is multiplied by
    (dropout after each hidden layer: the kept units' 1 / keep, zeros elsewhere)."""
    caches, masks, h = [], [], X
    for i in range(n_layers - 1):
        h, c = mod_dense.affine_relu_forward(h, p[f"W{i}"], p[f"b{i}"])
        caches.append(c)
        if hidden_mask is not None:
            masks.append(hidden_mask(h))
            h = h * masks[-1]
    s, c = mod_dense.affine_forward(h, p[f"W{n_layers - 1}"], p[f"b{n_layers - 1}"])
    loss, d = mod_loss.softmax_loss(s, y)
    d, dw, db = mod_dense.affine_backward(d, c)
    grads = {f"W{n_layers - 1}": dw, f"b{n_layers - 1}": db}
    for i in reversed(range(n_layers - 1)):
        if masks:
            d = d * masks[i]
        if i == 0 and not first_dx:
            (x, _, _), a = caches[0]   # the reference's (fc_cache, relu_cache = a)
            da = d * (a > 0)
            grads["W0"], grads["b0"] = x.T @ da, da.sum(axis=0)
            break
        d, dw, db = mod_dense.affine_relu_backward(d, caches[i])
        grads[f"W{i}"], grads[f"b{i}"] = dw, db
    update(p, grads, lr)
    return loss


def _numpy_update(p, grads, lr):
    for k in p:
        p[k] -= lr * grads[k]


def _fastnn_update(p, grads, lr):
    cfg = {"learning_rate": lr}
    for k in p:
        p[k], _ = O.sgd(p[k], grads[k], cfg)


def torch_layers(torch, dims, start, dtype, dropout=0.0):
    """PyTorch's Linear layers (ReLU between them, then nn.Dropout(dropout) when > 0) of a
    dims network, from the weights and biases `start` (_params' dict), in dtype: the modules
    of the benchmarks' torch step."""
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    mods = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        lin = torch.nn.Linear(a, b).to(tdt)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(start[f"W{i}"].T.copy()))
            lin.bias.copy_(torch.from_numpy(start[f"b{i}"]))
        mods.append(lin)
        if i < len(dims) - 2:
            mods.append(torch.nn.ReLU())
            if dropout > 0:
                mods.append(torch.nn.Dropout(dropout))
    return mods


def _make_runners(dims, n, dtype, torch, seed=0):
    rng = np.random.default_rng(seed + 1)
    X = rng.standard_normal((n, dims[0])).astype(dtype)
    y = rng.integers(0, dims[-1], n)
    L = len(dims) - 1
    lr = 1e-3
    runners = {}

    layers = []
    start = _params(dims, dtype, seed)   # every implementation starts from these weights
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layer = fastnn.Dense(a, b, activation="relu" if i < L - 1 else None, dtype=dtype, seed=seed + i)
        layer.params["W"][...] = start[f"W{i}"]
        layer.params["b"][...] = start[f"b{i}"]
        layers.append(layer)
    model = fastnn.Sequential(*layers)
    opt = fastnn.SGD(model.parameters(), lr=lr)
    loss = fastnn.SoftmaxCrossEntropy()
    runners["fastnn"] = lambda: model.train_step(X, y, loss, opt)
    # (each runner's parameters now, W0, b0, W1, ... as (in, out) and (out,) arrays, for
    # _check_same_start to compare the updates)
    runners["fastnn"].params = lambda: [a for layer in layers for a in (layer.params["W"],
                                                                        layer.params["b"])]

    def course(p, *args, **kw):
        run = lambda: _course_step(*args[:3], p, X, y, L, lr, **kw)   # noqa: E731
        run.params = lambda: [p[f"{k}{i}"] for i in range(L) for k in "Wb"]
        return run
    runners["functional"] = course({k: v.copy() for k, v in start.items()}, F, F, _fastnn_update)
    runners["numpy"] = course({k: v.copy() for k, v in start.items()}, RD, RL, _numpy_update)
    runners["numpy_same"] = course({k: v.copy() for k, v in start.items()}, RD, RL,
                                   _numpy_update, first_dx=False)

    if torch is not None:
        tmodel = torch.nn.Sequential(*torch_layers(torch, dims, start, dtype))
        topt = torch.optim.SGD(tmodel.parameters(), lr=lr)
        tX = torch.from_numpy(X)
        ty = torch.from_numpy(y)
        lossfn = torch.nn.CrossEntropyLoss()

        def torch_step():
            # (PyTorch's default: the gradients go, and backward hands over new ones. With
            # set_to_none=False it cleared every gradient and added the new one into it, work
            # fastnn's step, which writes its gradients, does not do: 2-6% of its step on the
            # middle networks, measured by a reviewer)
            topt.zero_grad()
            out = lossfn(tmodel(tX), ty)
            out.backward()
            topt.step()
            return out.item()

        linears = [m for m in tmodel if isinstance(m, torch.nn.Linear)]
        torch_step.params = lambda: [a for m in linears for a in (m.weight.detach().numpy().T,
                                                                   m.bias.detach().numpy())]
        runners["torch"] = torch_step
    return runners, model, X, y, opt, loss


def _check_same_start(runners, dtype):
    """Each implementation's first two steps, from the same weights, give the same losses: the
    first checks the forward pass and the loss, and the change from the first to the second
    (one SGD update apart) the backward pass, the learning rate and the update; and after the
    two steps every weight and bias has moved by what NumPy's moved it (a runner's `params`,
    when it has one: the loss alone let a step that never updated a bias through, whose
    share of the change is 0.2-1.6% here). Raises otherwise. Called once per network: it
    also takes each implementation's first (warm-up) steps. Returns the first losses."""
    starts = {k: [a.copy() for a in fn.params()] for k, fn in runners.items()
              if hasattr(fn, "params")}
    first = {k: float(fn()) for k, fn in runners.items()}
    ref = first["numpy"]
    tol = 1e-3 if dtype == np.float32 else 1e-9
    bad = {k: v for k, v in first.items() if not abs(v - ref) <= tol * max(1.0, abs(ref))}
    if bad:
        raise RuntimeError(f"first-step losses differ from NumPy's {ref!r}: {bad}")
    # the change is ~lr * |grad|^2: 0.1-2% of the loss on the benchmark's networks, where the
    # implementations' changes agreed within 3e-5 of it in float32 and 1e-13 in float64. A 1%
    # gap is refused, beyond the losses' own rounding (float32: ~1e-7 of the loss)
    moved = {k: v - float(runners[k]()) for k, v in first.items()}
    ref_moved = moved["numpy"]
    slack = (1e-5 if dtype == np.float32 else 1e-12) * max(1.0, abs(ref))
    bad = {k: v for k, v in moved.items() if not abs(v - ref_moved) <= 0.01 * abs(ref_moved) + slack}
    if bad:
        raise RuntimeError(f"the second step's loss moved by {ref_moved!r} from the first in "
                           f"NumPy's step, by other amounts in {bad}: the steps compared do not "
                           "update the same way")
    if "numpy" in starts:
        # each parameter's move over the two steps against NumPy's: within 1% of its largest
        # entry (the float32 implementations' moves agreed within ~1e-4 of it)
        ref = [a - s for a, s in zip(runners["numpy"].params(), starts["numpy"])]
        for k, s0 in starts.items():
            for i, (a, s, r) in enumerate(zip(runners[k].params(), s0, ref)):
                d = np.asarray(a, np.float64) - s
                if d.shape != r.shape or not (np.max(np.abs(d - r), initial=0.0)
                                              <= 0.01 * np.max(np.abs(r), initial=0.0) + 1e-30):
                    name = ("W", "b")[i % 2] + str(i // 2)
                    raise RuntimeError(f"{k}'s step moved {name} otherwise than NumPy's: the "
                                       "steps compared do not update the same way")
    return first


# Seconds to wait before timing each implementation: a library's worker threads keep spinning
# for a while after its last parallel call and take a core from whatever runs next (measured
# here: NumPy's OpenBLAS ~0.1 s of one core's time after a matmul, PyTorch's ~0.01 s). Without
# the pause, the implementation timed after NumPy lost part of its 2-core machine.
SETTLE = 0.15

# A row whose rounds of one implementation spread by more than this fraction of their median
# (fastest to slowest, with at least UNSTEADY_MIN_ROUNDS rounds) is marked unsteady: on a
# shared machine a busy stretch can cover several rounds and move a median (measured here: a
# 1024^2 matmul timed every 0.3 s took twice its usual time in 8% of the samples, and whole
# rows of a run were slow).
UNSTEADY_SPREAD = 0.25
UNSTEADY_MIN_ROUNDS = 3

# The memory column is the median of this many builds of the step's plan (at most the run's
# rounds): CPython keeps some of the small objects a step makes and drops for reuse, which
# tracemalloc counts as held, and how many depends on what ran before (step_memory).
MEMORY_ROUNDS = 5


# A row during which other processes (or the hypervisor: steal time) kept at least this much
# of a core busy on average is marked busy. Its rounds may all be slow alike, which the unsteady
# mark cannot see (measured here: beside one CPU-bound process, fastnn's two-thread small steps
# took 12-16 ms in every round instead of 0.02 ms, with no spread).
BUSY_CORES = 0.25


def _busy_jiffies():
    """Clock ticks the machine's CPUs spent busy (all but idle and iowait, steal included)
    since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(v) < 4:
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v[:8]) - idle


class OtherLoad:
    """CPU time used by OTHER processes while the block runs, in cores (0.0 = quiet machine,
    1.0 = one core busy elsewhere): the machine's busy time less this process's own. Linux
    only; ``cores`` is None elsewhere."""

    def __enter__(self):
        self._j0, self._t0, self._w0 = _busy_jiffies(), os.times(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        j1, t1, w1 = _busy_jiffies(), os.times(), time.perf_counter()
        if self._j0 is None or j1 is None or w1 <= self._w0:
            self.cores = None
            return False
        hz = os.sysconf("SC_CLK_TCK")
        total = (j1 - self._j0) / hz
        own = (t1.user - self._t0.user) + (t1.system - self._t0.system)
        self.cores = max(0.0, (total - own) / (w1 - self._w0))
        return False

    def describe(self):
        c = getattr(self, "cores", None)
        return "n/a" if c is None else f"{c:.2f} cores"


def unsteady(times):
    """The implementations (keys of `times`, each a list of per-round times) whose rounds
    spread by more than UNSTEADY_SPREAD of their median; none below UNSTEADY_MIN_ROUNDS
    rounds. Returns (names in key order, {name: spread})."""
    spread = {}
    for k, v in times.items():
        med = float(np.median(v)) if len(v) else 0.0
        spread[k] = (max(v) - min(v)) / med if med > 0 else 0.0
    flagged = [k for k, v in times.items()
               if len(v) >= UNSTEADY_MIN_ROUNDS and spread[k] > UNSTEADY_SPREAD]
    return flagged, spread


def _time(fn, min_time):
    """Seconds per call: repeat until at least min_time has passed."""
    fn()
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / count


def matmul_rate(dtype, size=2048, rounds=5):
    """GFLOP/s of NumPy's matmul on size x size matrices (median of rounds; run() takes the
    best over its network rounds)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    a @ b
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2.0 * size**3 / float(np.median(ts)) / 1e9


def step_memory(model, X, y, opt, loss, rounds=1):
    """Memory of the layer API's training step, in bytes: (held, need, per_step).

    held: what the step holds while it runs: parameters and gradients, plus everything NumPy
    allocates during the first step (the whole-step kernel's buffers: activations, gradient
    buffers, partial sums) at its peak. need: what any implementation must hold: parameters,
    gradients and the activations the backward pass reads. per_step: the peak allocation
    during a later step of the same shape (buffers are reused, so only small Python objects).
    One step runs before the measurement: what a process allocates once, on its first step of
    any model (lazy imports, the thread governor, caches), is not this step's.

    With rounds > 1 the plan is built and measured that many times: held is the median of
    the rounds' (of an even number, the mean of the middle two, in whole bytes) and per_step
    the largest (step_memory_rounds also gives every round's held). tracemalloc
    counts a small Python object (a tuple, a float) the step made and dropped as held when
    CPython keeps it for reuse, and how many it keeps depends on what ran before: a small
    network's held moves by up to ~2 KB from one measurement to the next."""
    held, need, per_step, _ = step_memory_rounds(model, X, y, opt, loss, rounds)
    return held, need, per_step


def step_memory_rounds(model, X, y, opt, loss, rounds):
    """step_memory, with the list of every round's held as a fourth value."""
    rounds = check_int(rounds, "rounds")   # (an int >= 1)
    model.train_step(X, y, loss, opt)
    params = sum(p.data.nbytes + p.grad.nbytes for p in model.parameters())
    acts = sum(X.shape[0] * layer.out_features * X.itemsize for layer in model.layers)
    helds, per_step = [], 0
    for _ in range(rounds):
        model._compiled.clear()  # so that the first step below builds (and counts) its buffers
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            model.train_step(X, y, loss, opt)
            current, first_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            model.train_step(X, y, loss, opt)
            per_step = max(per_step, tracemalloc.get_traced_memory()[1] - current)
        finally:
            tracemalloc.stop()
        helds.append(params + (first_peak - base))
    return int(np.median(helds)), params + acts, per_step, helds


def _blas_threads(n):
    """NumPy's (and SciPy's) BLAS held to n threads for the block, when threadpoolctl is
    installed (else left as it is); yields the count it set, or None."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(None)

    @contextlib.contextmanager
    def limited():
        with threadpool_limits(limits=n, user_api="blas"):
            yield n
    return limited()


@contextlib.contextmanager
def every_library_on(n, torch=None):
    """fastnn (its governor off: no dynamic thread count), NumPy's (and SciPy's) BLAS (when
    threadpoolctl is installed) and PyTorch (the module, when given) on n threads for the
    block; each count is back afterwards. Yields (the count fastnn runs: 1 whatever n is in a
    build without OpenMP or a child forked after parallel kernels ran, the count the BLAS
    was held to or None)."""
    before = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None:
            torch.set_num_threads(n)
        with _threads.threads(n) as own, _threads._dynamic_set(False), _blas_threads(n) as blas:
            yield own, blas
    finally:
        if torch is not None:
            torch.set_num_threads(before)


def _float_dtype(d):
    """Whether `d` names float32 or float64 (a bench dtype; None, which NumPy reads as float64,
    does not)."""
    try:
        return d is not None and check_float_dtype(d) is not None
    except TypeError:
        return False


def _check_networks(networks):
    """run's ``networks``: a non-empty sequence of ``(widths, batch)`` pairs, widths a sequence
    of at least two positive ints (input, ..., classes) and batch a positive int, as a list of
    (tuple of ints, int); else a TypeError or ValueError naming ``networks`` (before anything
    is timed)."""
    if isinstance(networks, (str, bytes)) or not isinstance(networks, Iterable):
        raise TypeError(f"networks must be a sequence of (widths, batch) pairs, got "
                        f"{type(networks).__name__}")
    checked = []
    for i, pair in enumerate(networks):
        what = f"networks[{i}]"
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"{what} must be a (widths, batch) pair, got {pair!r}")
        dims, n = pair
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Iterable):
            raise TypeError(f"{what}: widths must be a sequence of layer widths (input, ..., "
                            f"classes), got {type(dims).__name__}")
        dims = tuple(check_int(d, f"{what} widths[{j}]") for j, d in enumerate(dims))
        if len(dims) < 2:
            raise ValueError(f"{what}: widths must be at least two layer widths (input, ..., "
                             f"classes), got {dims}")
        checked.append((dims, check_int(n, f"{what} batch")))
    if not checked:
        raise ValueError("networks must name at least one network (None: the default list)")
    return checked


def run(networks=None, dtypes=("float32",), rounds=5, min_time=0.2, threads=None, use_torch=True,
        stream=None, skip_large=False):
    stream = sys.stdout if stream is None else stream   # (the one at call time: capsys, redirects)
    rounds = check_int(rounds, "rounds")
    min_time = check_scalar(min_time, "min_time", lo=0.0, lo_open=True)   # (seconds)
    if not isinstance(dtypes, (str, bytes)):
        dtypes = tuple(dtypes)   # (a generator is read once: here)
    if isinstance(dtypes, (str, bytes)) or not all(map(_float_dtype, dtypes)):
        raise ValueError(f"dtypes must be a sequence of float32 / float64, got {dtypes!r}")
    nthreads = fastnn.get_num_threads() if threads is None else check_int(threads, "threads",
                                                                          below=2**31)
    networks = NETWORKS if networks is None else _check_networks(networks)
    torch = None
    if use_torch:
        try:
            import torch
        except ImportError:
            torch = None
    # every library on exactly nthreads: fastnn's step too (no dynamic thread count; its
    # governor's probes would fall into some rounds of a large network; bench/contention.py
    # measures the governor, busy machine and quiet); the caller's counts are back afterwards
    with every_library_on(nthreads, torch) as (fastnn_threads, blas_threads):
        return _run(networks, dtypes, rounds, min_time, nthreads, torch, stream,
                    skip_large, blas_threads, fastnn_threads,
                    "PyTorch not installed (skipped)" if use_torch else
                    "PyTorch skipped (use_torch=False, --no-torch)")


def _run(networks, dtypes, rounds, min_time, nthreads, torch, stream, skip_large, blas_threads,
         fastnn_threads, no_torch):
    results = []
    any_unsteady = any_busy = False
    tiles = _kd.tile_params()
    date = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    own = "" if fastnn_threads == nthreads else f" (fastnn runs {fastnn_threads} here)"
    print(f"fastnn {fastnn.__version__}, {nthreads} threads{own}, fixed (tiles for "
          f"{tiles['tile_cores']} CPUs), "
          f"{'PyTorch ' + torch.__version__ if torch else no_torch}, "
          f"{date}", file=stream)
    kernels = _fastnn_config.blas_kernels()
    print(f"BLAS: {kernels}; NumPy's BLAS threads: "
          f"{blas_threads if blas_threads else 'as set (threadpoolctl not installed)'}", file=stream)
    print("numpy: the course-style step; numpy=: the same without the first layer's input "
          "gradient (the work fastnn's layer API and PyTorch do)", file=stream)
    for dt in dtypes:
        dtype = np.dtype(dt)
        start_rate = matmul_rate(dtype)
        print(f"\n{dtype.name}: NumPy matmul 2048^2 at {start_rate:.0f} GFLOP/s (a row's "
              "roofline rate: the best of this and one measurement per round of the row)",
              file=stream)
        head = f"{'network (batch)':<28}{'fastnn':>10}{'functional':>12}{'numpy':>10}{'numpy=':>10}"
        head += f"{'torch':>10}" if torch else ""
        head += f"{'vs numpy':>10}{'vs numpy=':>10}" + (f"{'vs torch':>10}" if torch else "")
        head += f"{'func vs np':>11}{'roofline':>10}{'memory':>9}"
        print(head + "   (ms per step)", file=stream)
        for dims, n in networks:
            if skip_large and max(dims) >= 4096:
                continue
            runners, model, X, y, opt, loss = _make_runners(dims, n, dtype, torch)
            first = _check_same_start(runners, dtype)
            times = {k: [] for k in runners}
            # (the row's own rates: measured beside its steps, in the same minutes; a rate
            # from another row's minutes would move its roofline with the machine's drift)
            rates = [start_rate]
            with OtherLoad() as other:
                for _ in range(rounds):
                    for k, fn in runners.items():
                        time.sleep(SETTLE)
                        times[k].append(_time(fn, min_time))
                    rates.append(matmul_rate(dtype, rounds=1))
            busy = other.cores is not None and other.cores >= BUSY_CORES
            rate = max(rates)
            med = {k: float(np.median(v)) for k, v in times.items()}
            flagged, spread = unsteady(times)
            # the layer API's products: every layer's forward, weight gradient and input
            # gradient, less the first layer's input gradient (never computed)
            flops = 6.0 * n * sum(a * b for a, b in zip(dims[:-1], dims[1:])) - 2.0 * n * dims[0] * dims[1]
            roof = flops / (rate * 1e9) / med["fastnn"]
            held, need, per_step, helds = step_memory_rounds(model, X, y, opt, loss,
                                                             min(rounds, MEMORY_ROUNDS))
            row = {"network": "-".join(map(str, dims)), "batch": n, "dtype": dtype.name,
                   "threads": nthreads, "fastnn_threads": fastnn_threads,
                   "numpy_blas_threads": blas_threads,
                   "tile_cores": tiles["tile_cores"],
                   "blas_kernels": kernels, "thin": tiles["thin"], "date": date,
                   "fastnn_version": fastnn.__version__,
                   "torch_version": torch.__version__ if torch else None,
                   "rounds": rounds, "min_time": min_time,
                   "ms": {k: v * 1e3 for k, v in med.items()},
                   "ms_rounds": {k: [t * 1e3 for t in v] for k, v in times.items()},
                   "first_step_loss": first,
                   "speedup_vs_numpy": med["numpy"] / med["fastnn"],
                   "speedup_vs_numpy_same_work": med["numpy_same"] / med["fastnn"],
                   "functional_vs_numpy": med["numpy"] / med["functional"],
                   "roofline_fraction": roof, "roofline_flops": flops, "matmul_gflops": rate,
                   "held_bytes": held, "params_grads_acts_bytes": need,
                   "memory_fraction": held / need, "held_bytes_rounds": helds,
                   "per_step_alloc_bytes": per_step,
                   "round_spread": spread, "unsteady": flagged,
                   "other_load_cores": other.cores, "busy": busy}
            if torch:
                row["speedup_vs_torch"] = med["torch"] / med["fastnn"]
            results.append(row)
            line = f"{row['network'] + ' (' + str(n) + ')':<28}"
            line += f"{med['fastnn'] * 1e3:>10.3f}{med['functional'] * 1e3:>12.3f}"
            line += f"{med['numpy'] * 1e3:>10.3f}{med['numpy_same'] * 1e3:>10.3f}"
            if torch:
                line += f"{med['torch'] * 1e3:>10.3f}"
            line += f"{row['speedup_vs_numpy']:>9.2f}x{row['speedup_vs_numpy_same_work']:>9.2f}x"
            if torch:
                line += f"{row['speedup_vs_torch']:>9.2f}x"
            line += f"{row['functional_vs_numpy']:>10.2f}x{roof:>9.0%}{held / need:>9.0%}"
            if flagged:
                any_unsteady = True
                line += f"   unsteady: {', '.join(flagged)}"
            if busy:
                any_busy = True
                line += f"   busy: {other.describe()} elsewhere"
            print(line, file=stream, flush=True)
    if any_busy:
        print(f"\nbusy: other processes (or the hypervisor) kept at least {BUSY_CORES:g} of a core "
              "busy on average during the row, which slows multi-threaded steps in every round "
              "alike; rerun it on a quiet machine", file=stream)
    if any_unsteady:
        print(f"\nunsteady: that implementation's rounds spread by more than "
              f"{UNSTEADY_SPREAD:.0%} of their median (fastest to slowest): the machine was "
              "busy during part of the row, so its ratios may be off; rerun it", file=stream)
    return results


def _argtype(name, convert, ok, expected):
    """An argparse type: `convert(text)`, refused (a usage error saying `expected`) when it
    fails or when `ok(value)` is not true."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = name
    return parse


# a count of rounds
positive_int = _argtype("positive_int", int, lambda v: v >= 1, "a positive int")
# a thread count for a benchmark: up to 256 (as bench/ceiling.py and step_parts.py take),
# since OpenMP starts fewer threads than asked for far beyond the cores, and the header would
# name a count that never ran
thread_count = _argtype("thread_count", int, lambda v: 1 <= v <= 256,
                        "a thread count from 1 to 256")
# a margin, a gap, a share of a core
nonnegative_float = _argtype("nonnegative_float", float, lambda v: 0.0 <= v < float("inf"),
                             "a finite number >= 0")
# a measurement repeats until that much time has passed: NaN or Inf would never end it
positive_seconds = _argtype("positive_seconds", float, lambda v: 0.0 < v < float("inf"),
                            "finite seconds > 0")


def int_list(minimum, below=None):
    """argparse type: comma-separated ints, each >= minimum (thread counts: 1; values: 0) and
    below `below` when given (thread counts: 2**31)."""
    def parse(text):
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
        if not values or min(values) < minimum or (below is not None and max(values) >= below):
            within = f">= {minimum}" + (f" and < {below}" if below is not None else "")
            raise argparse.ArgumentTypeError(f"expected comma-separated ints {within}, got {text!r}")
        return values
    return parse


class JsonOut:
    """Where --json goes. A file is written when the run is done (not opened before: a
    refused, failed or interrupted run leaves an earlier results file as it was), to a
    temporary file renamed over it once complete (atomic_write: a full disk or an interrupt
    while it is written leaves the earlier file too); a stream (/dev/stdout, a FIFO) is
    opened once, up front, and written at the end."""

    def __init__(self, path, stream=None):
        self.path, self.stream = path, stream

    def dump(self, obj, indent):
        if self.stream is not None:
            with self.stream as f:
                json.dump(obj, f, indent=indent)
            return
        with atomic_write(self.path, text=True) as f:   # (an error names the path)
            json.dump(obj, f, indent=indent)


def open_json(parser, path):
    """A JsonOut for --json, or None without one. The path is checked before anything is
    measured, without writing to it, so a path that cannot be written is a usage error now,
    not after the run (check_writable): an existing file must be a writable regular file,
    and the folder, of a new file or an existing one, must take a new file (one is made and
    removed there: JsonOut writes a temporary file there and renames it)."""
    if path is None:
        return None
    if not path:
        parser.error("--json: expected a file path, got ''")
    try:
        if os.path.isdir(path) or path.endswith(("/", os.sep)):   # ("x/" names a folder)
            raise IsADirectoryError(errno.EISDIR, "is a folder", path)
        if os.path.exists(path):
            if not os.path.isfile(path):   # a stream: opened once (a FIFO's reader sees one)
                return JsonOut(path, open(path, "w"))
        # (also an existing file: the results are written to a file made in its folder and
        # renamed over it, so that folder must take a new file)
        check_writable(path)
    except OSError as exc:
        parser.error(f"--json: cannot write {path}: {exc}")
    return JsonOut(path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnn bench", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="thread count of every implementation (default: fastnn's)")
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="float32")
    parser.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds (median reported)")
    parser.add_argument("--min-time", type=positive_seconds, default=0.2, help="seconds per measurement")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--skip-large", action="store_true", help="skip the 4096-wide network")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    out = open_json(parser, args.json)
    results = run(dtypes=dtypes, rounds=args.rounds, min_time=args.min_time,
                  threads=args.threads, use_torch=not args.no_torch, skip_large=args.skip_large)
    if out is not None:
        out.dump(results, indent=2)
    return 0
