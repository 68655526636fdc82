"""fastnn.show_config(): what this build of fastnn is and how it runs here."""
import io
import os
import sys

import numpy as np

from fastnn import _threads
from fastnn._kernels import _config
from fastnn._kernels import dense as _dense


def _blas_pools():
    """threadpoolctl's record of each BLAS loaded in this process, SciPy's (the one fastnn
    calls) first where its file tells it apart (a wheel's scipy.libs), the others in the order
    they loaded (which depends on what was imported first); None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS so threadpoolctl can see it)
    try:
        pools = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
        return sorted(pools, key=lambda pool: _blas_owner(pool.get("filepath")) != "SciPy")
    except Exception:  # noqa: BLE001  (a report must not fail on threadpoolctl's introspection)
        return None


def _blas_info():
    """Describe the BLAS that SciPy's cython_blas (and so fastnn's dense kernels) calls."""
    import scipy

    lines = [f"{pool.get('internal_api')} {pool.get('version')} ({pool.get('architecture')}), "
             f"{pool.get('num_threads')} threads, {pool.get('filepath')}"
             for pool in _blas_pools() or ()]
    if not lines:
        lines.append(f"SciPy {scipy.__version__} cython_blas (install threadpoolctl for details)")
    return lines


def _blas_owner(path):
    """Which package a BLAS library file came with, from the wheel's folder of bundled
    libraries (``scipy.libs``, ``numpy.libs``), else the file's name."""
    parts = os.path.normpath(path or "").split(os.sep)
    for part in reversed(parts[:-1]):
        if part.endswith(".libs"):
            return {"scipy.libs": "SciPy", "numpy.libs": "NumPy"}.get(part, part[:-5])
    return os.path.basename(path or "") or "BLAS"


def blas_kernels():
    """One line on the kernels each BLAS in this process runs: OpenBLAS picks them for the CPU
    when it loads, unless ``OPENBLAS_CORETYPE`` names others. fastnn's products run on SciPy's,
    the NumPy reference's on NumPy's, and step times depend on the choice (see the README)."""
    from fastnn import _blas

    parts = [f"{_blas_owner(pool.get('filepath'))}'s {pool.get('internal_api')} {pool.get('version')}"
             + (f" ({pool['architecture']} kernels)" if pool.get("architecture") else "")
             for pool in _blas_pools() or ()]
    if not parts:
        corename = _blas.info()["corename"]
        parts.append(f"SciPy's OpenBLAS ({corename} kernels)" if corename else
                     "kernels unknown (install threadpoolctl to see them)")
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    if coretype is not None:
        parts.append(f"OPENBLAS_CORETYPE={coretype} set")
    return "; ".join(parts)


def config_dict():
    import fastnn
    tiles = _dense.tile_params()
    return {
        "version": fastnn.__version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "compiler": _config.compiler(),
        "openmp": _config.openmp_enabled(),
        "openmp_version": _config.openmp_version(),
        "simd_path": _config.simd_path(),
        "simd_runtime_dispatch": _config.simd_runtime_dispatch(),
        "num_threads": _threads.get_num_threads(),
        "dynamic": _threads.get_dynamic(),
        "tile_cores": tiles["tile_cores"],
        "thin": tiles["thin"],
        "small_mnk": tiles["small_mnk"],
        "blas": _blas_info(),
        "blas_kernels": blas_kernels(),
    }


def show_config(file=None):
    """Print version, OpenMP on/off and runtime, BLAS in use, SIMD path and threads.
    Returns the same information as a dict."""
    info = config_dict()
    omp = (f"on (OpenMP {info['openmp_version']})" if info["openmp"]
           else "off (serial kernels: built without OpenMP)")
    text = [
        f"fastnn {info['version']}",
        f"  python      {info['python']}, numpy {info['numpy']}",
        f"  compiler    {info['compiler']}",
        f"  openmp      {omp}",
        f"  threads     {info['num_threads']}",
        "  dynamic     " + ("on: the training step and the kernel calls may run on fewer "
                             "threads while that is faster (set_dynamic, FASTNN_DYNAMIC)"
                             if info["dynamic"] else
                             "off: the training step and the kernel calls run on every thread "
                             "(set_dynamic, FASTNN_DYNAMIC)"),
        f"  tiles       sized for {info['tile_cores']} CPUs (FASTNN_TILE_CORES); "
        + (f"products with at most {info['thin']} output rows or columns as gemv calls"
           if info["thin"] else "no gemv path (the BLAS has small-matrix kernels)")
        + (f"; thin products cut into tiles of at most {info['small_mnk']:g} multiply-adds"
           if info["small_mnk"] else ""),
        f"  simd        {info['simd_path']}"
        + (" [runtime dispatch]" if info["simd_runtime_dispatch"] else ""),
    ]
    for i, line in enumerate(info["blas"]):
        text.append(f"  {'blas' if i == 0 else ''}{' ' * (8 if i == 0 else 12)}{line}")
    text.append(f"  kernels     {info['blas_kernels']}")
    if file is not None and not callable(getattr(file, "write", None)):
        raise TypeError(f"file must be a text stream with a write() method (as print's), got "
                        f"{type(file).__name__}")
    if isinstance(file, (io.RawIOBase, io.BufferedIOBase)):   # (io.BytesIO, open(..., "wb"))
        raise TypeError(f"file must be a text stream (as print's), got the binary stream "
                        f"{type(file).__name__}")
    print("\n".join(text), file=file or sys.stdout)
    return info
