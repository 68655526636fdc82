"""Find the BLAS behind scipy.linalg.cython_blas and hand its thread control to the kernels.

fastnn threads its products itself, over tiles fixed by the problem shape (and the machine's
CPU count, read once at import), and needs each
BLAS call to run on one thread: that is what makes results independent of the thread count
(OpenBLAS's own threading is not bitwise stable across thread counts). The dense kernels hold
the BLAS at one thread only while a fastnn product runs and restore its setting afterwards,
so SciPy's other users keep their BLAS threads. NumPy's BLAS is a different library and is
never touched.
"""
import ctypes
import os
import sys

_SET_NAMES = ("scipy_openblas_set_num_threads", "openblas_set_num_threads",
              "scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_")
_GET_NAMES = ("scipy_openblas_get_num_threads", "openblas_get_num_threads",
              "scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_")

_state = {"library": None, "controlled": False}


def _candidate_paths():
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS library)

    scipy_root = os.path.dirname(os.path.dirname(scipy.__file__))
    paths = []
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 6 and "blas" in os.path.basename(parts[-1]).lower():
                        paths.append(parts[-1])
        except OSError:
            pass
    try:  # other platforms (and a second opinion): threadpoolctl, if installed
        from threadpoolctl import threadpool_info
        paths += [p["filepath"] for p in threadpool_info() if p.get("user_api") == "blas"]
    except Exception:  # noqa: BLE001
        pass
    # SciPy's own copy first (NumPy ships a different one, which we leave alone).
    seen, ordered = set(), []
    for p in sorted(paths, key=lambda p: (not p.startswith(scipy_root) or "numpy" in p, p)):
        if p not in seen:
            seen.add(p)
            ordered.append(p)
    return ordered


def register():
    """Find SciPy's BLAS thread controls and give them to the dense kernels. Returns True if
    the BLAS thread count can be controlled."""
    from fastnn._kernels import dense

    for path in _candidate_paths():
        if "numpy" in path:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        set_fn = get_fn = None
        for name in _SET_NAMES:
            set_fn = getattr(lib, name, None)
            if set_fn is not None:
                break
        for name in _GET_NAMES:
            get_fn = getattr(lib, name, None)
            if get_fn is not None:
                break
        if set_fn is None or get_fn is None:
            continue
        set_addr = ctypes.cast(set_fn, ctypes.c_void_p).value
        get_addr = ctypes.cast(get_fn, ctypes.c_void_p).value
        dense.register_blas_thread_control(set_addr, get_addr)
        _state.update(library=path, controlled=True)
        return True
    return False


def info():
    return dict(_state)
