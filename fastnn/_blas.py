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

_CORENAME_NAMES = ("scipy_openblas_get_corename", "openblas_get_corename",
                   "scipy_openblas_get_corename64_", "openblas_get_corename64_")

# OpenBLAS kernel sets with a small-matrix sgemm/dgemm path (no packing for small products:
# SMALL_MATRIX_OPT, the SKYLAKEX kernels, which COOPERLAKE and SAPPHIRERAPIDS reuse). With
# them a packing-free gemm beats one gemv per output row or column on thin products, so the
# dense kernels' gemv path (`thin`) is turned off. Measured on Zen 4 with the SkylakeX kernels
# (bench/tile_params.py thin --values 0,4): 2-100-3 (300) 18.6 -> 15.8 us per step, 2-100-3
# (1000) 48.6 -> 41.2; with the Haswell kernels the gemv path wins (50 -> 30 us).
_SMALL_GEMM_CORES = ("skylakex", "cooperlake", "sapphirerapids")

_state = {"library": None, "controlled": False, "corename": None}


def _is_numpys_copy(path):
    """Whether a BLAS library file is the one NumPy's wheel bundles (in ``numpy.libs``, or
    inside the numpy package as on macOS), not SciPy's: a folder name, not any "numpy" in
    the path (a virtual environment can live in ~/numpy-course)."""
    import numpy

    numpy_dir = os.path.dirname(os.path.abspath(numpy.__file__))
    full = os.path.abspath(path)
    return (os.path.basename(os.path.dirname(full)) == "numpy.libs"
            or full.startswith(numpy_dir + os.sep))


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
    for p in sorted(paths, key=lambda p: (not p.startswith(scipy_root) or _is_numpys_copy(p), p)):
        if p not in seen:
            seen.add(p)
            ordered.append(p)
    return ordered


def register():
    """Find SciPy's BLAS thread controls and give them to the dense kernels. Returns True if
    the BLAS thread count can be controlled."""
    from fastnn._kernels import dense

    for path in _candidate_paths():
        if _is_numpys_copy(path):
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
        corename = _corename(lib)
        _state.update(library=path, controlled=True, corename=corename)
        dense.set_tile_params(thin=thin_products_for(corename),
                              small_mnk=small_products_for(corename))
        return True
    return False


def _corename(lib):
    """The kernel set OpenBLAS chose when it loaded (or OPENBLAS_CORETYPE named), or None."""
    for name in _CORENAME_NAMES:
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            fn.argtypes = []
            value = fn()
            return value.decode("ascii", "replace").strip() if value else None
    return None


def thin_products_for(corename):
    """The dense kernels' `thin` setting (largest output row or column count that runs as
    gemv calls; 0: never) for SciPy's OpenBLAS with kernel set `corename`."""
    if corename is not None and corename.lower() in _SMALL_GEMM_CORES:
        return 0
    return 4


def small_products_for(corename):
    """The dense kernels' `small_mnk` setting (thin products are cut into tiles of at most
    this many multiply-adds, which the small-matrix kernels take; 0: never) for SciPy's
    OpenBLAS with kernel set `corename`: its small-matrix bar, 1e6 (SMALL_MATRIX_OPT's permit
    for sgemm and dgemm in the forms of the forward and weight-gradient products, measured on
    the Intel Xeon kind: 96 x 10 with inner 1024 took the small-matrix path, 104 x 10 the
    packing one; the dx products' form is refused above 1200 outputs, so those are not cut)."""
    if corename is not None and corename.lower() in _SMALL_GEMM_CORES:
        return 1e6
    return 0.0


def info():
    return dict(_state)
