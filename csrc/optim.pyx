# fastnn._kernels.optim: the update rules, each one fused pass over the parameter, in place.
#
# g = dw + weight_decay * w is the gradient with L2 weight decay. Element-wise only, so the
# result is the same for any thread count. The spans live in fastnn_optim.pxd (shared with the
# network step kernel).
from cython cimport floating
from libc.math cimport isfinite

from fastnn_buffers cimport Views, take, release_all

from fastnn_openmp cimport fnn_parallel_seen
import numpy as np

from fastnn_optim cimport (RULE_SGD, RULE_MOMENTUM, RULE_NESTEROV, RULE_RMSPROP, RULE_ADAM,
                           update_raw, all_finite_raw)

# Rule codes for the Python wrappers.
SGD = RULE_SGD
MOMENTUM = RULE_MOMENTUM
NESTEROV = RULE_NESTEROV
RMSPROP = RULE_RMSPROP
ADAM = RULE_ADAM

include "fastnn_sites.pxi"


def update(int rule, floating[::1] w, const floating[::1] dw, floating[::1] s1,
           floating[::1] s2, double lr, double h1, double h2, double eps, double c1, double c2,
           double wd, int n_threads):
    """One update of w in place. s1: velocity (momentum, nesterov), cache (rmsprop) or m (adam);
    s2: v (adam). h1: momentum / decay_rate / beta1; h2: beta2. c1, c2: Adam's bias corrections
    1 - beta1**t and 1 - beta2**t."""
    cdef Py_ssize_t n = w.shape[0]
    cdef floating *p1 = NULL
    cdef floating *p2 = NULL
    cdef GovCall gc
    if rule < RULE_SGD or rule > RULE_ADAM:
        raise ValueError(f"unknown update rule {rule}")
    if dw.shape[0] != n:
        raise ValueError("update: dw must match w")
    if rule != RULE_SGD and (s1 is None or s1.shape[0] != n):
        raise ValueError("update: state must match w")
    if rule == RULE_ADAM and (s2 is None or s2.shape[0] != n):
        raise ValueError("update: state must match w")
    if n == 0:
        return
    if rule != RULE_SGD:
        p1 = &s1[0]
    if rule == RULE_ADAM:
        p2 = &s2[0]
    n_threads = gov_begin(&gc, _sites, _dynamic,
                          gov_key(0, rule, n, sizeof(floating), 0), n_threads)
    with nogil:
        update_raw(rule, &w[0], &dw[0], p1, p2, n, lr, h1, h2, eps, c1, c2, wd, n_threads)
    gov_end(&gc)


cdef object _ndarray = np.ndarray
cdef object _float32 = np.dtype(np.float32)
cdef object _float64 = np.dtype(np.float64)


def sgd_fast(w, dw, config, int n_threads):
    """fastnn.optim.sgd's common case, compiled: w and dw plain C-contiguous ndarrays of one
    native float dtype and shape, w writeable, the two not overlapping, and config a dict with a
    float learning_rate that is finite and >= 0 and no weight_decay key. Then w is updated in
    place and True returned, with exactly the numbers and governor site of update(SGD, ...);
    otherwise False and nothing is touched (fastnn/optim.py's checked path, which converts,
    copies or names the problem, does the call). The Python wrapper's half a dozen calls cost
    more than the update of a small parameter (bench/NOTES.md, forty-second session)."""
    cdef Views v
    cdef double lr
    cdef Py_ssize_t n, nbytes
    cdef char *wp
    cdef char *gp
    cdef bint f32
    cdef GovCall gc
    if type(w) is not _ndarray or type(dw) is not _ndarray or type(config) is not dict:
        return False
    dt = (<object>w).dtype
    if dt is _float32:
        f32 = True
    elif dt is _float64:
        f32 = False
    else:
        return False
    if (<object>dw).dtype is not dt or (<object>dw).shape != (<object>w).shape:
        return False
    value = (<dict>config).get("learning_rate")
    if type(value) is not float or "weight_decay" in <dict>config:
        return False
    lr = <double>value
    if not isfinite(lr) or lr < 0.0:
        return False
    v.held = 0
    try:
        wp = <char *>take(&v, w, True)
        gp = <char *>take(&v, dw, False) if wp != NULL else NULL
        if gp == NULL:
            return False
        nbytes = v.view[0].len
        n = nbytes // v.view[0].itemsize
        if nbytes > 0 and wp < gp + nbytes and gp < wp + nbytes:
            return False   # (overlapping: the checked path copies dw first)
        if n == 0:
            return True
        n_threads = gov_begin(&gc, _sites, _dynamic,
                              gov_key(0, RULE_SGD, n, 4 if f32 else 8, 0), n_threads)
        with nogil:
            if f32:
                update_raw[float](RULE_SGD, <float *>wp, <const float *>gp, NULL, NULL, n,
                                  lr, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, n_threads)
            else:
                update_raw[double](RULE_SGD, <double *>wp, <const double *>gp, NULL, NULL, n,
                                   lr, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, n_threads)
        gov_end(&gc)
        return True
    finally:
        release_all(&v)


def all_finite(const floating[::1] x, int n_threads=1):
    """True if x holds no Inf or NaN: fit's guard before an update, on up to n_threads
    threads for a large x (the same answer on any count; the call governor picks the count,
    as for update)."""
    cdef bint ok = True
    cdef Py_ssize_t n = x.shape[0]
    cdef GovCall gc
    if n > 0:
        n_threads = gov_begin(&gc, _sites, _dynamic, gov_key(1, n, sizeof(floating), 0, 0),
                              n_threads)
        with nogil:
            ok = all_finite_raw(&x[0], n, n_threads)
        gov_end(&gc)
    return ok


def parallel_seen():
    """Whether this module ran a parallel region with more than one thread (fork safety:
    fastnn/_threads.py)."""
    return fnn_parallel_seen() != 0
