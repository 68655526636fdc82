"""Shared fixtures and helpers for the fastnn test suite.

Helpers (import them with ``from conftest import ...``; pytest puts tests/ on sys.path):

- ``ulp_distance(a, b)``: element-wise distance in units in the last place (float32/float64).
- ``assert_ulp_close(actual, desired, maxulp)``: ulp comparison with a useful failure message.
- ``assert_same_bits(a, b)``: bitwise equality (dtype, shape and every bit, NaN payload included).
- ``assert_thread_invariant(fn, threads=(1, 2, 3, 16))``: runs ``fn()`` under ``fastnn.threads(n)``
  for each n and asserts bitwise-identical outputs; returns the first result.
- ``numerical_gradient(f, x, dout, h=1e-5)``: central differences of ``sum(f(x) * dout)`` with
  respect to ``x`` (perturbed IN PLACE, as the course's ``eval_numerical_gradient_array``).
- ``result_leaves(result, skip_other=False)``: the arrays and numbers of a (nested) result.
- ``ulp_of(x)``: the spacing of floats at ``x`` (``np.spacing(|x|)``).
- ``run_child(env_set, code)``: ``code`` in a fresh interpreter importing the fastnn under test,
  with fastnn's and OpenMP's thread settings removed from the environment, then ``env_set``.
- ``LayerPathIdentity(dtype=None)``: an identity layer (Dropout(0) by a subclass, which the
  whole-step kernel does not take): inserted between a model's layers, it puts the model on the
  layer path, for a twin to compare the kernel with.
- ``openmp_workers_started(setup, call)``: how many OpenMP workers a call starts (run in a fresh
  interpreter), to show that a thread-invariance test really runs the parallel path.
"""
import numbers
import sys
import threading

import numpy as np
import pytest

import fastnn
from fastnn import _threads

# 16: more threads than a small machine's CPUs, and often more than a problem has blocks or
# tiles (the whole suite takes ~2 s longer with it on 2 CPUs)
THREAD_COUNTS = (1, 2, 3, 16)
# what a many-core machine runs (the plans for one come from the many_core_tiles fixture)
MANY_THREADS = (1, 4, 7, 16)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def rng():
    """A fresh, seeded generator per test (tests are reproducible and order-independent)."""
    return np.random.default_rng(20240607)


@pytest.fixture(autouse=True)
def _restore_num_threads():
    """No test may leak a thread-count change into the next one."""
    before = fastnn.get_num_threads()
    yield
    if fastnn.get_num_threads() != before:
        fastnn.set_num_threads(before)


# the tuned tiling as fastnn set it at import, before any test file's fixtures shrink the tiles
_TUNED_TILES = fastnn._kernels.dense.tile_params()


def _tuned_tiles_for(cores):
    """The tuned tiles sized for a machine of `cores` CPUs (FASTNN_TILE_CORES), whatever this
    one has and whatever tile sizes the test file's own fixtures set, restored afterwards;
    yields fastnn._kernels.dense."""
    from fastnn._kernels import dense as _kd

    saved = _kd.tile_params()
    _kd.set_tile_params(**dict(_TUNED_TILES, tile_cores=cores))
    try:
        yield _kd
    finally:
        _kd.set_tile_params(**saved)


@pytest.fixture
def many_core_tiles():
    """The tuned tiles of a 16-CPU machine (_tuned_tiles_for)."""
    yield from _tuned_tiles_for(16)


@pytest.fixture
def two_core_tiles():
    """The tuned tiles of a 2-CPU machine (_tuned_tiles_for)."""
    yield from _tuned_tiles_for(2)


@pytest.fixture(autouse=True)
def _restore_dynamic():
    """Nor a change of the dynamic thread count (fastnn.set_dynamic)."""
    before = fastnn.get_dynamic()
    yield
    fastnn.set_dynamic(before)


@pytest.fixture(autouse=True)
def _small_matmul_rate(monkeypatch):
    """bench.run's roofline rate from 256 x 256 matrices instead of 2048 x 2048 (about a
    second of each run on 2 cores, and what ``python -m fastnn bench`` in CI still measures):
    the tests check the table's rows and columns, none the rate's value (a test of
    matmul_rate itself passes its size)."""
    from fastnn import bench

    real = bench.matmul_rate
    monkeypatch.setattr(bench, "matmul_rate",
                        lambda dtype, size=256, rounds=5: real(dtype, size, rounds))


# ----------------------------------------------------------------------------- ulp helpers
_INT_OF = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def _ordered_ints(a):
    """Map floats to integers that are monotonic in the float value (+0 and -0 both map to 0)."""
    a = np.ascontiguousarray(a)
    it = _INT_OF[a.dtype]
    i = a.view(it).astype(np.int64) if it is np.int32 else a.view(it).copy()
    sign_mask = np.int64(0x7FFFFFFF) if it is np.int32 else np.int64(0x7FFFFFFFFFFFFFFF)
    return np.where(i < 0, -(i & sign_mask), i)


def ulp_distance(a, b):
    """How many representable floats lie between ``a`` and ``b`` (element-wise, int64 array).

    Both arguments must have the same float dtype (float32 or float64). Two NaNs are at distance
    0; a NaN and a number are at the maximal distance."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != b.dtype or a.dtype not in _INT_OF:
        raise TypeError(f"ulp_distance needs two float32 or two float64 arrays, got {a.dtype}, {b.dtype}")
    a, b = np.broadcast_arrays(a, b)
    ia = _ordered_ints(a)
    ib = _ordered_ints(b)
    same_side = (ia < 0) == (ib < 0)
    d = np.abs(np.where(same_side, ia - ib, 0))  # cannot overflow on the same side of zero
    across = np.abs(ia).astype(np.uint64) + np.abs(ib).astype(np.uint64)  # < 2**64
    across = np.minimum(across, np.uint64(np.iinfo(np.int64).max)).astype(np.int64)
    d = np.where(same_side, d, across)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    d = np.where(nan_a & nan_b, 0, d)
    d = np.where(nan_a ^ nan_b, np.iinfo(np.int64).max, d)
    return d


def assert_ulp_close(actual, desired, maxulp, inputs=None, what=""):
    """Every element of ``actual`` within ``maxulp`` ulp of ``desired`` (same dtype)."""
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    assert actual.dtype == desired.dtype, (actual.dtype, desired.dtype)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    if actual.size == 0:
        return
    d = ulp_distance(actual, desired)
    worst = int(np.argmax(d))
    if d.flat[worst] > maxulp:
        at = "" if inputs is None else f" at input {np.asarray(inputs).flat[worst]!r}"
        raise AssertionError(
            f"{what}: {int(np.count_nonzero(d > maxulp))} elements more than {maxulp} ulp away; "
            f"worst {int(d.flat[worst])} ulp{at}: got {actual.flat[worst]!r}, "
            f"expected {desired.flat[worst]!r}"
        )


def ulp_of(x):
    return np.spacing(np.abs(np.asarray(x)))


class LayerPathIdentity(fastnn.Dropout):
    """Dropout(0): passes its input on. The whole-step kernel takes fastnn's own layer types
    only (a Dropout(0) between two Dense layers runs inside it), so a model holding this one
    trains layer by layer."""

    def __init__(self, dtype=None):
        super().__init__(0.0, dtype=dtype)


def assert_same_bits(a, b, what=""):
    """dtype, shape and every bit equal (stronger than ==: distinguishes -0.0 and NaN payloads)."""
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    if a.tobytes() != b.tobytes():
        ua = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        ub = np.ascontiguousarray(b).view(np.uint8).reshape(-1)
        first = int(np.argmax(ua != ub)) // max(a.itemsize, 1)
        raise AssertionError(
            f"{what}: not bitwise identical; first difference at flat index {first}: "
            f"{a.reshape(-1)[first]!r} vs {b.reshape(-1)[first]!r}"
        )


# ----------------------------------------------------------------------------- threads
def result_leaves(result, skip_other=False):
    """The arrays and numbers of a result, in order: tuples and lists item by item, dicts by key.
    Anything else (a cache object) is skipped with ``skip_other``, else an error."""
    if isinstance(result, (tuple, list)):
        return [leaf for r in result for leaf in result_leaves(r, skip_other)]
    if isinstance(result, dict):
        return [leaf for k in sorted(result, key=str) for leaf in result_leaves(result[k], skip_other)]
    if isinstance(result, (np.ndarray, np.generic, numbers.Number)):
        return [np.asarray(result)]
    if skip_other:
        return []
    raise TypeError(f"a result to compare holds a {type(result).__name__}, not arrays or numbers")


def assert_thread_invariant(fn, threads=THREAD_COUNTS):
    """Run ``fn()`` with each thread count and assert every output is bitwise identical.

    ``fn`` must return an array, a scalar or a (nested) tuple/list of them; it must build its
    own outputs (fresh arrays) on every call. Returns the result of the first run."""
    from fastnn._kernels import _config

    results = []
    # every call on exactly n threads: the governors (fastnn.set_dynamic) would now and then
    # try fewer, and the runs compared would not all be the counts they say
    with _threads._dynamic_set(False):
        for n in threads:
            with fastnn.threads(n):
                # a serial build (FASTNN_OPENMP=0) runs on one thread whatever it is asked for
                assert fastnn.get_num_threads() == (n if _config.openmp_enabled() else 1)
                results.append(fn())
    first = result_leaves(results[0])
    for n, res in zip(threads[1:], results[1:]):
        leaves = result_leaves(res)
        assert len(leaves) == len(first)
        for i, (a, b) in enumerate(zip(first, leaves)):
            assert_same_bits(b, a, what=f"output {i} with {n} threads vs {threads[0]}")
    return results[0]


# ----------------------------------------------------------------------------- gradients
def numerical_gradient(f, x, dout, h=1e-5):
    """Central-difference gradient of ``sum(f(x) * dout)`` with respect to ``x``.

    ``x`` must be a writeable float64 array (0-d allowed); it is perturbed IN PLACE one element
    at a time and restored, so ``f`` may also read it through a closure (the way a model reads
    its parameters live). ``f(x)`` returns an array broadcastable against ``dout``."""
    x = np.asarray(x)
    if x.dtype != np.float64 or not x.flags.writeable:
        raise TypeError("numerical_gradient needs a writeable float64 array")
    dout = np.asarray(dout, dtype=np.float64)
    grad = np.zeros(x.shape, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        fp = np.array(f(x), dtype=np.float64, copy=True)
        x[idx] = old - h
        fm = np.array(f(x), dtype=np.float64, copy=True)
        x[idx] = old
        grad[idx] = np.sum((fp - fm) * dout) / (2 * h)
    return grad


# ----------------------------------------------------------------------------- OpenMP use
def openmp_workers_started(setup, call, threads=3):
    """How many OpenMP worker threads one ``call`` starts, in a fresh interpreter (Linux only).

    ``setup`` and ``call`` are Python source: ``setup`` builds the inputs (``np``, ``fastnn`` and
    ``F`` = fastnn.functional are imported; it runs with 1 thread), ``call`` is run once with 1
    thread and then once with ``threads`` threads; the result is the growth of /proc/self/task
    across the second run
    (the OpenMP runtime keeps its workers, so a parallel region leaves them behind). 0 means
    the call ran serial; ``threads - 1`` means it used every thread it was given. Returns None
    where this cannot be measured (no /proc); skips the calling test in a build without OpenMP."""
    import os
    import subprocess
    import sys
    import textwrap

    if not os.path.isdir("/proc/self/task"):
        return None
    from fastnn._kernels import _config
    if not _config.openmp_enabled():
        pytest.skip("built without OpenMP (FASTNN_OPENMP=0): serial kernels start no workers")
    code = "\n".join([
        "import os",
        "import numpy as np",
        "import fastnn",
        "import fastnn.functional as F",
        "def tasks():",
        "    return len(os.listdir('/proc/self/task'))",
        "fastnn.set_num_threads(1)",   # the setup may call kernels too: serial
        textwrap.dedent(setup).strip(),
        call,
        "before = tasks()",
        f"with fastnn.threads({int(threads)}):",
        "    " + call,
        "print(tasks() - before)",
    ])
    env = dict(os.environ)
    # the child imports the same fastnn as this process: the checkout or an installed wheel
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, cwd=root)
    if res.returncode != 0:
        raise AssertionError(f"subprocess failed:\n{res.stderr}")
    return int(res.stdout.strip().splitlines()[-1])


# The environment variables that set fastnn's threads and tiles: run_child leaves them out.
_THREAD_ENV = ("FASTNN_NUM_THREADS", "OMP_NUM_THREADS", "FASTNN_TILE_CORES", "FASTNN_DYNAMIC")


def run_child(env_set, code):
    """Run ``code`` in a fresh interpreter with the variables of _THREAD_ENV removed and then
    ``env_set`` applied; it imports the same fastnn as this process (PYTHONPATH kept, the
    directory fastnn was imported from added first and used as the working directory)."""
    import os
    import subprocess
    import textwrap

    root = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_ENV}
    paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(env_set)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=root)


# ----------------------------------------------------------------------------- slow tests
# Tests marked ``slow`` (the full OpInfo product, long timing checks) are deselected unless asked
# for: ``python -m pytest --run-slow`` or FASTNN_RUN_SLOW=1. The hypothesis example counts are a
# separate switch (profiles below).
def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="run the tests marked slow (also: FASTNN_RUN_SLOW=1)")


def _run_slow(config):
    import os

    return config.getoption("--run-slow") or os.environ.get("FASTNN_RUN_SLOW", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if _run_slow(config):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


# ----------------------------------------------------------------------------- hypothesis
# Profiles for the property tests (tests/test_properties.py): "fastnn-default" (few examples,
# the default run) and "slow" (10,000 examples per property). Select with
# ``--hypothesis-profile=slow`` or the environment variable FASTNN_HYPOTHESIS_PROFILE=slow.
try:
    from hypothesis import HealthCheck, settings as _hyp_settings
except ImportError:  # hypothesis is in the test extra; test_properties.py skips without it
    pass
else:
    import os as _os

    _hyp_settings.register_profile("fastnn-default", max_examples=25, deadline=None, derandomize=True,
                                   print_blob=True,
                                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    _hyp_settings.register_profile("slow", max_examples=10_000, deadline=None, print_blob=True,
                                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                          HealthCheck.filter_too_much])
    _hyp_settings.load_profile(_os.environ.get("FASTNN_HYPOTHESIS_PROFILE", "fastnn-default"))


def run_at_once(calls):
    """Run each call in its own Python thread, released together, with a switch interval short
    enough for Python code to interleave at almost any bytecode; returns their results in order
    (re-raising the first exception)."""
    barrier = threading.Barrier(len(calls))
    results, errors = [None] * len(calls), []

    def target(i):
        try:
            barrier.wait()
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=target, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


def course_optim_rules():
    """The course's optim.py update rules, in plain NumPy, config mutated in place as the course's
    do (fastnn/reference/optim.py copies its config): {name: rule} (test_optim, test_solver)."""
    def sgd(w, dw, config=None):
        if config is None:
            config = {}
        config.setdefault("learning_rate", 1e-2)
        w -= config["learning_rate"] * dw
        return w, config

    def sgd_momentum(w, dw, config=None):
        if config is None:
            config = {}
        config.setdefault("learning_rate", 1e-2)
        config.setdefault("momentum", 0.9)
        v = config.get("velocity", np.zeros_like(w))
        v = config["momentum"] * v - config["learning_rate"] * dw
        config["velocity"] = v
        return w + v, config

    def rmsprop(w, dw, config=None):
        if config is None:
            config = {}
        config.setdefault("learning_rate", 1e-2)
        config.setdefault("decay_rate", 0.99)
        config.setdefault("epsilon", 1e-8)
        config.setdefault("cache", np.zeros_like(w))
        config["cache"] = config["decay_rate"] * config["cache"] + (1 - config["decay_rate"]) * dw**2
        return w - config["learning_rate"] * dw / (np.sqrt(config["cache"]) + config["epsilon"]), config

    def adam(w, dw, config=None):
        if config is None:
            config = {}
        config.setdefault("learning_rate", 1e-3)
        config.setdefault("beta1", 0.9)
        config.setdefault("beta2", 0.999)
        config.setdefault("epsilon", 1e-8)
        config.setdefault("m", np.zeros_like(w))
        config.setdefault("v", np.zeros_like(w))
        config.setdefault("t", 0)
        config["t"] += 1
        config["m"] = config["beta1"] * config["m"] + (1 - config["beta1"]) * dw
        mt = config["m"] / (1 - config["beta1"] ** config["t"])
        config["v"] = config["beta2"] * config["v"] + (1 - config["beta2"]) * (dw**2)
        vt = config["v"] / (1 - config["beta2"] ** config["t"])
        return w - config["learning_rate"] * mt / (np.sqrt(vt) + config["epsilon"]), config

    # nesterov_momentum is not in the course's optim.py; it keeps sgd_momentum's keys
    return {"sgd": sgd, "sgd_momentum": sgd_momentum, "nesterov_momentum": sgd_momentum,
            "rmsprop": rmsprop, "adam": adam}
