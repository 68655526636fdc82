"""Helpers shared by the standalone benchmark scripts in bench/ (not collected by pytest)."""
import datetime
import os
import platform
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)  # run from a source checkout without installing


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def optional_torch():
    """PyTorch when it is installed, else None (the scripts then skip its columns)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def simd_path():
    try:
        from fastnn._kernels import _config
        return _config.simd_path()
    except Exception:
        return "unknown"


from fastnn.bench import OtherLoad  # noqa: E402,F401  (the scripts' measure of other processes' load)


def now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def header_lines(extra=(), started=None):
    """Header of a benchmark report; `started` is the now() string taken when measuring began."""
    import numpy as np

    import fastnn
    from fastnn._config import blas_kernels
    lines = [
        f"date: {started or now()}",
        f"CPU: {cpu_model()}, {cpus()} CPUs available to this process",
        f"fastnn {fastnn.__version__}: {fastnn.get_num_threads()} threads, SIMD {simd_path()}; "
        f"NumPy {np.__version__} (element-wise ufuncs single-threaded); Python {platform.python_version()}",
        f"BLAS: {blas_kernels()}",   # (step times follow the kernels: README, OPENBLAS_CORETYPE)
    ]
    lines.extend(extra)
    return lines
