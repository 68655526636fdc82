"""The thread count every fastnn kernel uses, and the CPU count its product tiles are sized for.

Thread count defaults, in order: ``FASTNN_NUM_THREADS``, then ``OMP_NUM_THREADS`` (its first
entry), then the number of CPUs this process may run on. Any positive int is honoured, also
above the core count. Results never depend on it: kernels split work into blocks fixed by the
problem shape and by ``FASTNN_TILE_CORES`` (default: the machine's CPU count, ``os.cpu_count()``,
read once at import; either way rounded down to a power of two, at most 16), which sizes the
products' tiles for the machine.

The count is a ceiling while ``dynamic`` is on (the default; ``FASTNN_DYNAMIC=0`` or
``set_dynamic(False)`` turns it off): each compiled training step of the layer API, and each
kind and shape of kernel call made one by one (fastnn.functional, the layers, the optimizers),
times itself and runs on fewer threads while fewer are measured to be faster, as they are when
other processes keep the cores busy (see csrc/fastnn_governor.pxd).
"""
import contextlib
import os
import re
import threading
import warnings

from fastnn._kernels import _config
from fastnn._kernels import activations as _activations
from fastnn._kernels import dense as _dense
from fastnn._kernels import dropout as _dropout
from fastnn._kernels import losses as _losses
from fastnn._kernels import network as _network
from fastnn._kernels import optim as _optim
from fastnn._validation import check_flag, check_int

__all__ = ["set_num_threads", "get_num_threads", "threads", "set_dynamic", "get_dynamic"]

_lock = threading.Lock()


def _cpu_count():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _decimal(value):
    """int(value) for plain ASCII decimal digits (an optional +), else None: Python's int()
    also takes 4_0 and non-ASCII digits, which the OpenMP runtime refuses."""
    return int(value) if re.fullmatch(r"\+?[0-9]+", value) else None


def _positive_env(name):
    """The positive int environment variable `name` holds, or None when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    parsed = _decimal(value)
    if parsed is None:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return check_int(parsed, name, below=2**31)


def _from_env():
    parsed = _positive_env("FASTNN_NUM_THREADS")
    if parsed is not None:
        return parsed
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value:
        # OpenMP allows a comma-separated list per nesting level; the first level is ours.
        # An invalid value is the OpenMP runtime's business; we fall back to the CPU count,
        # as the runtime does: a list with an entry that is not a positive int ("3," or
        # "3,,2", which libgomp refuses whole) is invalid too.
        levels = [_decimal(part.strip()) for part in value.split(",")]
        if (all(n is not None and n >= 1 for n in levels)
                and levels[0] <= 2**31 - 1):
            return levels[0]
    return _cpu_count()


_num_threads = _from_env()


def _switch_env(name, default):
    """The on/off environment variable `name` (1/0, true/false, yes/no, on/off), or `default`
    when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 0 or 1 (or off/on, false/true, no/yes), got {value!r}")


_dynamic = _switch_env("FASTNN_DYNAMIC", True)
# The modules whose kernel functions take a thread count, each with its call governor's switch
# (csrc/fastnn_sites.pxi); the network module's step gets the switch with every call.
_GOVERNED_MODULES = (_activations, _dense, _dropout, _losses, _optim)
for _m in _GOVERNED_MODULES:
    _m.set_dynamic(_dynamic)
del _m

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


def _uses_libgomp():
    """GCC's OpenMP runtime is loaded (Linux: its name in this process's memory map)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return False


# GCC's OpenMP runtime (libgomp) is not fork-safe: once a parallel region has run with more
# than one thread, a child made by fork() (multiprocessing's default start method on Linux
# before Python 3.14) waits forever in its first parallel region for worker threads that were
# not copied into it. So in such a child every kernel runs on one thread (the same numbers, as
# for any thread count). Every kernel module notes when it starts a parallel region of more
# than one thread (parallel_seen): a child of a process that never did, and other OpenMP
# runtimes (LLVM's libomp restarts its pool in the child), are left alone.
_forked = False   # this process is such a child
# (imported here, not in the fork hook: nothing to import in a child that may have been forked
# while another thread held the import lock)
_KERNEL_MODULES = (_activations, _dense, _dropout, _losses, _network, _optim)
_gomp = _config.openmp_enabled() and _uses_libgomp()


def _parallel_seen():
    """Whether any kernel module of this process ran a parallel region of several threads."""
    return any(m.parallel_seen() for m in _KERNEL_MODULES)


def _after_fork_in_child():
    global _lock, _num_threads, _forked
    _lock = threading.Lock()   # (another thread of the parent may have held it)
    _dense.blas_after_fork()   # (products other threads of the parent were running)
    if _gomp and _parallel_seen():
        _forked = True
        _num_threads = 1
        _config.omp_set_num_threads(1)
    # the threads() blocks of the parent's other threads never close here (those threads were
    # not copied): close them now, as blocks closing out of order
    me = threading.get_ident()
    for i in reversed(range(len(_open_blocks))):
        if _open_blocks[i][2] != me:
            _close_block(i)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_num_threads(n):
    """Use ``n`` threads in every kernel (1 without OpenMP); while ``get_dynamic()``, the
    training step and the kernel calls use at most ``n``, fewer while that is faster (see
    set_dynamic). Returns the previous value."""
    n = check_int(n, "n", below=2**31)
    with _lock:
        return _set_locked(n, warn_at=3)


def _set_locked(n, warn_at=None):
    """Set the count (the caller holds _lock); returns the previous one. In a forked child
    (see _after_fork_in_child) it stays 1, with a warning at stack level `warn_at` when given
    (a count the user asked for, not one a closing block restores)."""
    global _num_threads
    previous = _num_threads
    if _forked and n > 1:
        if warn_at is not None:
            warnings.warn(
                f"fastnn runs on 1 thread, not {n}: this process was forked from one that "
                "had started OpenMP threads, and GCC's OpenMP runtime cannot start threads in "
                "a forked child (it would hang). Start child processes with multiprocessing's "
                "'spawn' or 'forkserver' method to use threads in them.", RuntimeWarning,
                stacklevel=warn_at)
        n = 1
    _num_threads = n if _config.openmp_enabled() else 1
    # Keep the OpenMP runtime's own setting in step, so threadpoolctl reports it.
    _config.omp_set_num_threads(_num_threads)
    return previous


def get_num_threads():
    """The number of threads kernels use (large inputs; small ones run serial)."""
    return _num_threads


def set_dynamic(enabled):
    """With ``enabled`` (the default), the layer API's compiled training step, and every kernel
    call made one by one (fastnn.functional, the layers' forward and backward, the optimizers'
    step), may run on fewer threads than ``get_num_threads()`` while its own timings show that
    fewer are faster: when other processes keep the cores busy, a parallel call waits for a
    thread the scheduler has paused. (Like MKL_DYNAMIC, a permission to use fewer threads; not
    OpenMP's omp_set_dynamic, which fastnn leaves alone.) The numbers never depend on it. What
    it learned is per compiled step (one per batch size) or per kind and shape of call, and
    starts afresh when the thread count changes. ``False``: every call runs the full count, as
    thread-scaling measurements need. ``enabled``: a bool, or the int 0 or 1. Returns the
    previous setting."""
    global _dynamic
    enabled = check_flag(enabled, "enabled")
    previous, _dynamic = _dynamic, enabled
    for m in _GOVERNED_MODULES:
        m.set_dynamic(enabled)
    return previous


@contextlib.contextmanager
def _dynamic_set(enabled):
    """Context manager: the block runs with set_dynamic(enabled), the previous setting restored
    after it (benchmarks and tests that need every call on exactly the thread count set)."""
    previous = set_dynamic(enabled)
    try:
        yield
    finally:
        set_dynamic(previous)


def get_dynamic():
    """Whether the training step and the kernel calls may use fewer threads than set (see
    set_dynamic)."""
    return _dynamic


# The open `threads` blocks, oldest first, as [token, the count to restore when it closes, the
# ident of the Python thread that opened it].
# The count is one for the process (the OpenMP runtime's, threadpoolctl's and PyTorch's are
# too), so blocks open in several Python threads at once set it in turn, the latest winning;
# when one closes out of order, the block opened after it inherits what it was to restore, so
# the count ends where it was before the first block opened (a save-and-restore per block left
# it at an inner block's value for good).
_open_blocks = []


@contextlib.contextmanager
def threads(n):
    """Context manager: ``with fastnn.threads(1): ...`` runs the block with ``n`` threads
    and restores the count when it closes. The count is process-wide, as set_num_threads':
    blocks open in several Python threads at once set it in turn, the latest winning, and
    when they close, in any order, the count ends where it was before the first opened."""
    n = check_int(n, "n", below=2**31)
    block = [object(), None, threading.get_ident()]
    try:
        # recorded and set at once (a block closing meanwhile sees both or neither), and
        # recorded first, with the count to restore: an interrupt (KeyboardInterrupt) from
        # here on finds the block in the finally below, which restores the count (one that
        # came once the count was set, before the block was recorded, left it set for good)
        with _lock:
            block[1] = _num_threads
            _open_blocks.append(block)
            _set_locked(n, warn_at=4)
        yield get_num_threads()
    finally:
        with _lock:
            for k, other in enumerate(_open_blocks):
                if other is block:
                    _close_block(k)
                    break


def _close_block(i):
    """Close _open_blocks[i] (the caller holds _lock): the block opened after it, if any, takes
    over what it was to restore; else the count is restored."""
    restore = _open_blocks.pop(i)[1]
    if i < len(_open_blocks):   # a block opened after this one is still open
        _open_blocks[i][1] = restore
    else:
        _set_locked(restore)
