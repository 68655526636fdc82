"""pytest configuration for the micro-benchmarks in bench/ (pytest-benchmark).

The benchmarks are not part of the test suite: ``python3 -m pytest`` from the repository
root only collects ``tests/`` (``testpaths`` in pyproject.toml). They run when asked for:

    python3 -m pytest bench/ --benchmark-only --benchmark-group-by=param
    python3 -m pytest bench/ --benchmark-disable      # smoke run: every case once, no timing

If the collection reaches bench/ without bench/ being named on the command line and without
``--benchmark-only`` (``python3 -m pytest .``), the benchmark modules are not collected at all
(not even imported), so a broad run of the suite stays fast and never needs the extension.

Every benchmark's test id is the case (``relu-fwd-large``), the same for fastnn and NumPy,
and ``benchmark.group`` is set to it too, so both the default grouping and
``--benchmark-group-by=param`` print one comparison table per case.
"""
import os

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # the `bench` extra is not installed: nothing to collect here
    collect_ignore_glob = ["test_*.py"]

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

# Each benchmark runs for at most this long unless --benchmark-max-time is given (pytest-benchmark's
# default is 1 s): the ~115 activation benchmarks then take about 1.5 minutes instead of 3.
DEFAULT_MAX_TIME = 0.5


def pytest_configure(config):
    # fastnn's kernels on exactly the thread count set: the call governor's tries of other
    # counts (fastnn.set_dynamic) would fall into some rounds
    try:
        import fastnn
    except ImportError:   # (not built: the benchmark modules say so when they import it)
        pass
    else:
        fastnn.set_dynamic(False)
    # Runs before pytest-benchmark's own pytest_configure (trylast) reads the option, when bench/
    # is named on the command line; otherwise the plugin default stays.
    if not hasattr(config.option, "benchmark_max_time"):
        return
    given = any(str(a).startswith("--benchmark-max-time") for a in config.invocation_params.args)
    if not given:
        config.option.benchmark_max_time = DEFAULT_MAX_TIME


def _bench_named(config):
    """True when a command-line path points into bench/ (or is bench/ itself)."""
    for arg in config.args:
        path = os.path.abspath(os.path.join(str(config.invocation_params.dir), arg.split("::")[0]))
        if path == _BENCH_DIR or path.startswith(_BENCH_DIR + os.sep):
            return True
    return False


def _asked(config):
    return bool(config.getoption("benchmark_only", False)) or _bench_named(config)


def pytest_ignore_collect(collection_path, config):
    if collection_path.name.startswith("test_") and not _asked(config):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    bench_items = [it for it in items if str(it.path).startswith(_BENCH_DIR + os.sep)]
    if not bench_items:
        return
    # Run all implementations of one case back to back, in the order the module's
    # bench_sort_key gives (by size in test_bench_activations.py): the big inputs are built
    # once per case (see _data in the test_bench_*.py modules) and the numbers being compared
    # are taken close together in time on a noisy machine. Modules are kept apart (their sort
    # keys are only comparable within one module).
    position = {id(it): i for i, it in enumerate(items)}

    def key(it):
        sort_key = getattr(getattr(it, "module", None), "bench_sort_key", None)
        callspec = getattr(it, "callspec", None)
        if sort_key is None or callspec is None:
            return (1, (), position[id(it)])
        return (0, str(it.path), sort_key(callspec.id, it.originalname), position[id(it)])

    bench_ids = {id(it) for it in bench_items}
    others = [it for it in items if id(it) not in bench_ids]
    items[:] = others + sorted(bench_items, key=key)
