# fastnn._kernels.dropout: inverted dropout with masks from a counter-based hash.
#
# Element i of a call is kept when hash(seed, i) falls below the keep probability, so the mask
# depends on the seed and the element's index only: identical for any thread count, and
# regenerated in backward from the seed instead of being stored.
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport ceil
from libc.stdint cimport uint32_t

from fastnn_openmp cimport FNN_CHUNK, chunk_count, chunk_len, effective_threads

cdef extern from "fastnn_simd.h" nogil:
    void fnn_dropout_f32(const float *x, float *y, Py_ssize_t n, uint32_t first,
                         uint32_t threshold, uint32_t seed_lo, uint32_t seed_hi, float scale)
    void fnn_dropout_f64(const double *x, double *y, Py_ssize_t n, uint32_t first,
                         uint32_t threshold, uint32_t seed_lo, uint32_t seed_hi, double scale)

cdef Py_ssize_t MIN_WORK_PER_THREAD = 65536   # ReLU-element units (bench/threshold.py)


cpdef uint32_t keep_threshold(double p) noexcept:
    """The 24-bit threshold for keep probability p in (0, 1]."""
    cdef double t = ceil(p * 16777216.0)
    if not (t > 0.0):
        return 0  # (the wrappers only pass p in (0, 1]; NaN or p <= 0 keep nothing)
    return 16777216 if t >= 16777216.0 else <uint32_t>t


def dropout_apply(const floating[::1] x, floating[::1] y, double p, unsigned long long seed,
                  int n_threads):
    """y = x * mask / p with mask from (seed, index). Works for forward (x = input) and backward
    (x = dout): both see the same mask. At most 2**32 elements per call."""
    cdef Py_ssize_t n = x.shape[0], c, start, m, nchunks
    cdef uint32_t threshold = keep_threshold(p)
    cdef uint32_t lo = <uint32_t>(seed & 0xffffffffu), hi = <uint32_t>(seed >> 32)
    cdef floating scale = <floating>(1.0 / p)
    cdef int nt
    if y.shape[0] != n:
        raise ValueError("dropout_apply: shape mismatch")
    if n > 4294967295:
        raise ValueError("dropout supports at most 2**32 - 1 elements per call")
    if n == 0:
        return
    nt = effective_threads(n * 2, MIN_WORK_PER_THREAD, n_threads)
    nchunks = chunk_count(n)
    with nogil:
        if nt <= 1:  # (the mask is a function of the element index: one span is the same)
            if floating is float:
                fnn_dropout_f32(&x[0], &y[0], n, 0, threshold, lo, hi, scale)
            else:
                fnn_dropout_f64(&x[0], &y[0], n, 0, threshold, lo, hi, scale)
        else:
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                start = c * FNN_CHUNK
                m = chunk_len(c, n)
                if floating is float:
                    fnn_dropout_f32(&x[start], &y[start], m, <uint32_t>start, threshold, lo, hi,
                                    scale)
                else:
                    fnn_dropout_f64(&x[start], &y[start], m, <uint32_t>start, threshold, lo, hi,
                                    scale)
