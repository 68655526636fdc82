# The dropout mask and Gaussian noise kernels of fastnn_simd.h (a counter-based hash of the
# seed and the element index): fastnn._kernels.dropout's functions and the whole-step kernel's
# dropout between layers (fastnn_dense.pxd drop_rows) and on its input call the same ones.
from libc.stdint cimport uint32_t

from fastnn_openmp cimport FNN_CHUNK, effective_threads

cdef enum:
    # the dropout and noise functions' rule for threads (effective_threads), wherever they run
    DROP_MIN_WORK_PER_THREAD = 65536   # ReLU-element units (bench/threshold.py)
    DROP_COST = 2    # a dropout element's cost in ReLU-element units
    # A noise element's: 14.5-19 ReLU elements on one thread, 16K-256K float32 elements in
    # cache (2026-12-02, AMD EPYC Zen 3, AVX2: 4.3-4.5 ns against 0.23-0.31; dropout 2.6-3.0)
    NOISE_COST = 16
    # Threaded, noise runs in chunks of NOISE_CHUNK elements, not the FNN_CHUNK (16,384) of
    # the other element-wise kernels: a chunk of noise is ~70 us of work, and two of them were
    # the least a call could split into. Each value comes from its element's index and the
    # seed (the same bits for any cut: fnn_noise_*), so the chunk size changes no number.
    NOISE_CHUNK = 4096


cdef inline Py_ssize_t reg_chunk(bint noise) noexcept nogil:
    """Elements per chunk when a dropout (noise False) or a noise call over an array runs
    threaded: FNN_CHUNK or NOISE_CHUNK."""
    return NOISE_CHUNK if noise else FNN_CHUNK


cdef inline int reg_threads(Py_ssize_t n, bint noise, int n_threads) noexcept nogil:
    """Threads for a dropout or noise call over n elements: the rule above (DROP_COST or
    NOISE_COST a value), never more than its chunks (reg_chunk)."""
    cdef Py_ssize_t size = reg_chunk(noise)
    return effective_threads(n * (NOISE_COST if noise else DROP_COST), DROP_MIN_WORK_PER_THREAD,
                             n_threads, (n + size - 1) // size)

cdef extern from "fastnn_simd.h" nogil:
    # y = x * scale where hash(seed, first + i) <= limit, else 0 (x and y must not alias)
    void fnn_dropout_f32(const float *x, float *y, Py_ssize_t n, uint32_t first,
                         uint32_t limit, uint32_t seed_lo, uint32_t seed_hi, float scale)
    void fnn_dropout_f64(const double *x, double *y, Py_ssize_t n, uint32_t first,
                         uint32_t limit, uint32_t seed_lo, uint32_t seed_hi, double scale)
    # the same over y in place
    void fnn_dropout_inplace_f32(float *y, Py_ssize_t n, uint32_t first, uint32_t limit,
                                 uint32_t seed_lo, uint32_t seed_hi, float scale)
    void fnn_dropout_inplace_f64(double *y, Py_ssize_t n, uint32_t first, uint32_t limit,
                                 uint32_t seed_lo, uint32_t seed_hi, double scale)
    # y = x + std * z, z standard normal from the hash of (key, first + i) (key: the seed
    # through dropout.pyx's noise_key)
    void fnn_noise_f32(const float *x, float *y, Py_ssize_t n, uint32_t first, double std,
                       uint32_t seed_lo, uint32_t seed_hi)
    void fnn_noise_f64(const double *x, double *y, Py_ssize_t n, uint32_t first, double std,
                       uint32_t seed_lo, uint32_t seed_hi)
