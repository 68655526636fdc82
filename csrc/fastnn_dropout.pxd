# The dropout mask and Gaussian noise kernels of fastnn_simd.h (a counter-based hash of the
# seed and the element index): fastnn._kernels.dropout's functions and the whole-step kernel's
# dropout between layers (fastnn_dense.pxd drop_rows) and on its input call the same ones.
from libc.stdint cimport uint32_t

cdef enum:
    # the dropout and noise functions' rule for threads (effective_threads), wherever they run
    DROP_MIN_WORK_PER_THREAD = 65536   # ReLU-element units (bench/threshold.py)
    DROP_COST = 2    # a dropout element's cost in ReLU-element units
    NOISE_COST = 8   # a noise element's (its kernel's rate; an estimate, not measured)

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
