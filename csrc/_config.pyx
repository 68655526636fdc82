# fastnn._kernels._config: what this build is (OpenMP, SIMD path) and the OpenMP pool.
from fastnn_openmp cimport (FNN_HAVE_OPENMP, fnn_omp_get_max_threads,
                            fnn_omp_set_num_threads, fnn_omp_version)

cdef extern from "fastnn_simd.h" nogil:
    const char *fnn_simd_path()
    int FNN_SIMD_DISPATCH

cdef extern from *:
    """
    #ifndef FASTNN_BUILT_WITH_OPENMP
    #define FASTNN_BUILT_WITH_OPENMP 0
    #endif
    #if defined(__clang__)
    #define FNN_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define FNN_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_VER)
    #define FNN_COMPILER "msvc"
    #else
    #define FNN_COMPILER "unknown"
    #endif
    """
    const char *FNN_COMPILER


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(FNN_HAVE_OPENMP)


def openmp_version():
    """The _OPENMP date macro of the build (e.g. 201511), 0 without OpenMP."""
    return fnn_omp_version()


def omp_max_threads():
    """omp_get_max_threads() of the calling thread (1 without OpenMP)."""
    return fnn_omp_get_max_threads()


def omp_set_num_threads(int n):
    """Set the OpenMP runtime's thread count (the value threadpoolctl reports)."""
    fnn_omp_set_num_threads(n)


def simd_path():
    """The SIMD code path the element-wise kernels run on this CPU."""
    return fnn_simd_path().decode("ascii")


def simd_runtime_dispatch():
    return bool(FNN_SIMD_DISPATCH)


def compiler():
    return FNN_COMPILER.decode("ascii", "replace")
