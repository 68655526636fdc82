# fastnn._kernels.optim: the update rules, each one fused pass over the parameter, in place.
#
# g = dw + weight_decay * w is the gradient with L2 weight decay. Element-wise only, so the
# result is the same for any thread count.
from cython cimport floating
from cython.parallel cimport prange

from fastnn_openmp cimport effective_threads

cdef extern from "fastnn_simd.h" nogil:
    void fnn_sgd_f32(float *w, const float *dw, Py_ssize_t n, float lr, float wd)
    void fnn_sgd_f64(double *w, const double *dw, Py_ssize_t n, double lr, double wd)
    void fnn_momentum_f32(float *w, const float *dw, float *v, Py_ssize_t n, float lr, float mu, float wd)
    void fnn_momentum_f64(double *w, const double *dw, double *v, Py_ssize_t n, double lr, double mu, double wd)
    void fnn_nesterov_f32(float *w, const float *dw, float *v, Py_ssize_t n, float lr, float mu, float wd)
    void fnn_nesterov_f64(double *w, const double *dw, double *v, Py_ssize_t n, double lr, double mu, double wd)
    void fnn_rmsprop_f32(float *w, const float *dw, float *c, Py_ssize_t n, float lr, float decay, float eps, float wd)
    void fnn_rmsprop_f64(double *w, const double *dw, double *c, Py_ssize_t n, double lr, double decay, double eps, double wd)
    void fnn_adam_f32(float *w, const float *dw, float *m, float *v, Py_ssize_t n, float lr, float b1, float b2,
                      float eps, float c1, float c2, float wd)
    void fnn_adam_f64(double *w, const double *dw, double *m, double *v, Py_ssize_t n, double lr, double b1,
                      double b2, double eps, double c1, double c2, double wd)

cdef enum Rule:
    RULE_SGD = 0
    RULE_MOMENTUM = 1
    RULE_NESTEROV = 2
    RULE_RMSPROP = 3
    RULE_ADAM = 4

# Rule codes for the Python wrappers.
SGD = RULE_SGD
MOMENTUM = RULE_MOMENTUM
NESTEROV = RULE_NESTEROV
RMSPROP = RULE_RMSPROP
ADAM = RULE_ADAM

cdef enum:
    CHUNK = 16384
cdef Py_ssize_t MIN_WORK_PER_THREAD = 32768


cdef inline void _span(int rule, floating *w, const floating *dw, floating *s1, floating *s2,
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
            fnn_rmsprop_f32(w, dw, s1, n, <float>lr, <float>h1, <float>eps, <float>wd)
        else:
            fnn_adam_f32(w, dw, s1, s2, n, <float>lr, <float>h1, <float>h2, <float>eps,
                         <float>c1, <float>c2, <float>wd)
    else:
        if rule == RULE_SGD:
            fnn_sgd_f64(w, dw, n, lr, wd)
        elif rule == RULE_MOMENTUM:
            fnn_momentum_f64(w, dw, s1, n, lr, h1, wd)
        elif rule == RULE_NESTEROV:
            fnn_nesterov_f64(w, dw, s1, n, lr, h1, wd)
        elif rule == RULE_RMSPROP:
            fnn_rmsprop_f64(w, dw, s1, n, lr, h1, eps, wd)
        else:
            fnn_adam_f64(w, dw, s1, s2, n, lr, h1, h2, eps, c1, c2, wd)


def update(int rule, floating[::1] w, const floating[::1] dw, floating[::1] s1,
           floating[::1] s2, double lr, double h1, double h2, double eps, double c1, double c2,
           double wd, int n_threads):
    """One update of w in place. s1: velocity (momentum, nesterov), cache (rmsprop) or m (adam);
    s2: v (adam). h1: momentum / decay_rate / beta1; h2: beta2. c1, c2: Adam's bias corrections
    1 - beta1**t and 1 - beta2**t."""
    cdef Py_ssize_t n = w.shape[0], c, start, m, nchunks
    cdef floating *p1 = NULL
    cdef floating *p2 = NULL
    cdef int nt
    if dw.shape[0] != n:
        raise ValueError("update: dw must match w")
    if rule != RULE_SGD:
        if s1 is None or s1.shape[0] != n:
            raise ValueError("update: state must match w")
    if rule == RULE_ADAM and (s2 is None or s2.shape[0] != n):
        raise ValueError("update: state must match w")
    if n == 0:
        return
    if rule != RULE_SGD:
        p1 = &s1[0]
    if rule == RULE_ADAM:
        p2 = &s2[0]
    nt = effective_threads(n * 3, MIN_WORK_PER_THREAD, n_threads)
    nchunks = (n + CHUNK - 1) // CHUNK
    with nogil:
        for c in prange(nchunks, num_threads=nt, schedule="static"):
            start = c * CHUNK
            m = n - start
            if m > CHUNK:
                m = CHUNK
            _span(rule, &w[start], &dw[start], (p1 + start) if p1 != NULL else NULL,
                  (p2 + start) if p2 != NULL else NULL, m, lr, h1, h2, eps, c1, c2, wd)
