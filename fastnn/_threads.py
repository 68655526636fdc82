"""The thread count every fastnn kernel uses, and the CPU count its product tiles are sized for.

Thread count defaults, in order: ``FASTNN_NUM_THREADS``, then ``OMP_NUM_THREADS`` (its first
entry), then the number of CPUs this process may run on. Any positive int is honoured, also
above the core count. Results never depend on it: kernels split work into blocks fixed by the
problem shape and by ``FASTNN_TILE_CORES`` (default: the machine's CPU count, ``os.cpu_count()``,
read once at import; at most 16), which sizes the products' tiles for the machine.
"""
import contextlib
import os
import threading

from fastnn._kernels import _config
from fastnn._kernels import dense as _dense
from fastnn._validation import check_int

__all__ = ["set_num_threads", "get_num_threads", "threads"]

_lock = threading.Lock()


def _cpu_count():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _positive_env(name):
    """The positive int environment variable `name` holds, or None when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        parsed = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a positive int, got {value!r}") from None
    return check_int(parsed, name, below=2**31)


def _from_env():
    parsed = _positive_env("FASTNN_NUM_THREADS")
    if parsed is not None:
        return parsed
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value:
        # OpenMP allows a comma-separated list per nesting level; the first level is ours.
        # An invalid value is the OpenMP runtime's business; we fall back to the CPU count.
        try:
            parsed = int(value.split(",")[0])
            if 1 <= parsed <= 2**31 - 1:
                return parsed
        except ValueError:
            pass
    return _cpu_count()


_num_threads = _from_env()
# The machine's CPU count, never the thread count, sizes the tiles (rounded down to a power of
# two, at most max_tiles = 16): many cores get more, smaller tiles, the same for any thread
# count. os.cpu_count(), not the affinity mask: taskset, OMP_PROC_BIND or OMP_PLACES (libgomp
# pins the importing thread) would otherwise change the tiles, and with them the bits.
_tile_cores = _positive_env("FASTNN_TILE_CORES")
if _tile_cores is None:
    _tile_cores = max(1, os.cpu_count() or 1)
_dense.set_tile_params(tile_cores=min(_tile_cores, _dense.tile_params()["max_tiles"]))
if not _config.openmp_enabled():
    _num_threads = 1
else:
    _config.omp_set_num_threads(_num_threads)


def set_num_threads(n):
    """Use ``n`` threads in every kernel (1 without OpenMP). Returns the previous value."""
    global _num_threads
    n = check_int(n, "n", below=2**31)
    with _lock:
        previous = _num_threads
        _num_threads = n if _config.openmp_enabled() else 1
        # Keep the OpenMP runtime's own setting in step, so threadpoolctl reports it.
        _config.omp_set_num_threads(_num_threads)
    return previous


def get_num_threads():
    """The number of threads kernels use (large inputs; small ones run serial)."""
    return _num_threads


@contextlib.contextmanager
def threads(n):
    """Context manager: ``with fastnn.threads(1): ...`` runs the block with ``n`` threads."""
    previous = set_num_threads(n)
    try:
        yield get_num_threads()
    finally:
        set_num_threads(previous)
