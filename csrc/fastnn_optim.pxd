# The update rules' span functions (fastnn_simd.h), shared by fastnn._kernels.optim (one
# parameter per call) and fastnn._kernels.network (every parameter at the end of a step).
from cython cimport floating
from cython.parallel cimport prange

from fastnn_openmp cimport FNN_CHUNK, chunk_count, chunk_len, effective_threads, fnn_note_parallel

cdef extern from "fastnn_simd.h" nogil:
    void fnn_sgd_f32(float *w, const float *dw, Py_ssize_t n, float lr, float wd)
    void fnn_sgd_f64(double *w, const double *dw, Py_ssize_t n, double lr, double wd)
    void fnn_momentum_f32(float *w, const float *dw, float *v, Py_ssize_t n, float lr, float mu, float wd)
    void fnn_momentum_f64(double *w, const double *dw, double *v, Py_ssize_t n, double lr, double mu, double wd)
    void fnn_nesterov_f32(float *w, const float *dw, float *v, Py_ssize_t n, float lr, float mu, float wd)
    void fnn_nesterov_f64(double *w, const double *dw, double *v, Py_ssize_t n, double lr, double mu, double wd)
    void fnn_rmsprop_f32(float *w, const float *dw, float *c, Py_ssize_t n, float lr, float decay,
                         float one_m_decay, float eps, float wd)
    void fnn_rmsprop_f64(double *w, const double *dw, double *c, Py_ssize_t n, double lr, double decay,
                         double one_m_decay, double eps, double wd)
    void fnn_adam_f32(float *w, const float *dw, float *m, float *v, Py_ssize_t n, float lr, float b1,
                      float one_m_b1, float b2, float one_m_b2, float eps, float c1, float c2, float wd)
    void fnn_adam_f64(double *w, const double *dw, double *m, double *v, Py_ssize_t n, double lr, double b1,
                      double one_m_b1, double b2, double one_m_b2, double eps, double c1, double c2, double wd)
    int fnn_all_finite_f32(const float *x, Py_ssize_t n)
    int fnn_all_finite_f64(const double *x, Py_ssize_t n)

cdef enum Rule:
    RULE_SGD = 0
    RULE_MOMENTUM = 1
    RULE_NESTEROV = 2
    RULE_RMSPROP = 3
    RULE_ADAM = 4

cdef enum:
    UPDATE_MIN_WORK_PER_THREAD = 65536   # threads from 131072 elements (bench/threshold.py)


cdef inline void update_span(int rule, floating *w, const floating *dw, floating *s1, floating *s2,
                             Py_ssize_t n, double lr, double h1, double h2, double eps, double c1,
                             double c2, double wd) noexcept nogil:
    if floating is float:
        if rule == RULE_SGD:
            fnn_sgd_f32(w, dw, n, <float>lr, <float>wd)
        elif rule == RULE_MOMENTUM:
            fnn_momentum_f32(w, dw, s1, n, <float>lr, <float>h1, <float>wd)
        elif rule == RULE_NESTEROV:
            fnn_nesterov_f32(w, dw, s1, n, <float>lr, <float>h1, <float>wd)
        elif rule == RULE_RMSPROP:
            fnn_rmsprop_f32(w, dw, s1, n, <float>lr, <float>h1, <float>(1.0 - h1), <float>eps,
                            <float>wd)
        else:
            fnn_adam_f32(w, dw, s1, s2, n, <float>lr, <float>h1, <float>(1.0 - h1), <float>h2,
                         <float>(1.0 - h2), <float>eps, <float>c1, <float>c2, <float>wd)
    else:
        if rule == RULE_SGD:
            fnn_sgd_f64(w, dw, n, lr, wd)
        elif rule == RULE_MOMENTUM:
            fnn_momentum_f64(w, dw, s1, n, lr, h1, wd)
        elif rule == RULE_NESTEROV:
            fnn_nesterov_f64(w, dw, s1, n, lr, h1, wd)
        elif rule == RULE_RMSPROP:
            fnn_rmsprop_f64(w, dw, s1, n, lr, h1, 1.0 - h1, eps, wd)
        else:
            fnn_adam_f64(w, dw, s1, s2, n, lr, h1, 1.0 - h1, h2, 1.0 - h2, eps, c1, c2, wd)


cdef inline void update_chunk(Py_ssize_t c, int rule, floating *w, const floating *dw,
                              floating *s1, floating *s2, Py_ssize_t n, double lr, double h1,
                              double h2, double eps, double c1, double c2,
                              double wd) noexcept nogil:
    cdef Py_ssize_t start = c * FNN_CHUNK
    cdef Py_ssize_t m = chunk_len(c, n)
    update_span(rule, w + start, dw + start, (s1 + start) if s1 != NULL else NULL,
                (s2 + start) if s2 != NULL else NULL, m, lr, h1, h2, eps, c1, c2, wd)


cdef inline void update_raw(int rule, floating *w, const floating *dw, floating *s1, floating *s2,
                            Py_ssize_t n, double lr, double h1, double h2, double eps, double c1,
                            double c2, double wd, int n_threads) noexcept nogil:
    """One in-place update of w (n elements), over fixed chunks spread across threads when the
    parameter is large enough. s1: velocity / cache / Adam's m; s2: Adam's v."""
    cdef Py_ssize_t c, nchunks = chunk_count(n)
    cdef int nt = effective_threads(n, UPDATE_MIN_WORK_PER_THREAD, n_threads)
    if nt <= 1:
        update_span(rule, w, dw, s1, s2, n, lr, h1, h2, eps, c1, c2, wd)
    else:
        fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for c in prange(nchunks, num_threads=nt, schedule="static"):
            update_chunk(c, rule, w, dw, s1, s2, n, lr, h1, h2, eps, c1, c2, wd)


cdef inline bint all_finite(const floating *x, Py_ssize_t n) noexcept nogil:
    """True if none of the n elements is Inf or NaN (fit's guard before an update)."""
    if floating is float:
        return fnn_all_finite_f32(x, n) != 0
    else:
        return fnn_all_finite_f64(x, n) != 0


cdef inline bint all_finite_raw(const floating *x, Py_ssize_t n, int n_threads) noexcept nogil:
    """all_finite over update_raw's fixed chunks, spread across threads as update_raw spreads
    them (each thread reads the chunks an update of the same array would give it): a yes or
    no, the same on any thread count. It takes the update's threshold for threads: parallel
    only for large parameters."""
    cdef Py_ssize_t c, nchunks = chunk_count(n)
    cdef int nt = effective_threads(n, UPDATE_MIN_WORK_PER_THREAD, n_threads)
    cdef Py_ssize_t bad = 0
    if nt <= 1:
        return all_finite(x, n)
    fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
    for c in prange(nchunks, num_threads=nt, schedule="static"):
        if not all_finite(x + c * FNN_CHUNK, chunk_len(c, n)):
            bad += 1
    return bad == 0
