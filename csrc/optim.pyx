# fastnn._kernels.optim: the update rules, each one fused pass over the parameter, in place.
#
# g = dw + weight_decay * w is the gradient with L2 weight decay. Element-wise only, so the
# result is the same for any thread count. The spans live in fastnn_optim.pxd (shared with the
# network step kernel).
from cython cimport floating
from libc.math cimport INFINITY, isfinite, pow


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
include "fastnn_fastpath.pxi"


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




cdef inline bint _hyper(dict config, str key, double lo, double hi, double *out) except -1:
    """config[key] into out when it is a float (exactly: no int, bool, NumPy scalar or 0-d
    array, which the checked path converts or names) that is finite and in [lo, hi]."""
    value = config.get(key)
    if type(value) is not float:
        return False
    out[0] = <double>value
    return isfinite(out[0]) and lo <= out[0] <= hi


cdef inline bint _apart(const Py_buffer *a, const Py_buffer *b) noexcept:
    """Two held buffers share no byte."""
    cdef const char *pa = <const char *>a.buf
    cdef const char *pb = <const char *>b.buf
    return a.len == 0 or b.len == 0 or pa + a.len <= pb or pb + b.len <= pa


def rule_fast(int rule, w, dw, config, s1, s2, int n_threads):
    """An update rule of fastnn.optim on its common case, compiled: w, dw and the rule's state
    arrays s1 (velocity, cache or Adam's m) and s2 (Adam's v), as config holds them (the wrapper
    has checked that fastnn allocated them: its registry), plain C-contiguous ndarrays of one
    native float dtype and shape, all but dw writeable, no two of them sharing a byte; config a
    dict whose hyperparameters are all there as floats in their ranges (learning_rate,
    momentum and epsilon >= 0, decay_rate, beta1 and beta2 in [0, 1]), Adam's t an int >= 0
    whose bias corrections are not 0, and no weight_decay key. Then w and the state are
    updated in place (Adam's config['t'] counted) and True returned, with the numbers and
    governor site of update(rule, ...) as the checked path calls it; otherwise False and
    nothing is touched (fastnn/optim.py's checked path, which fills in defaults, allocates or
    copies state, converts, or names the problem, does the call). The Python wrapper's calls
    cost more than the update of a small parameter (bench/NOTES.md, forty-second session)."""
    cdef Views v
    cdef double lr, h1 = 0.0, h2 = 0.0, eps = 0.0, c1 = 1.0, c2 = 1.0
    cdef Py_ssize_t n, k, j, ns = 0, t = 0
    cdef void *p[4]
    cdef bint f32
    cdef GovCall gc
    if rule < RULE_SGD or rule > RULE_ADAM or type(config) is not dict:
        return False
    if rule != RULE_SGD:
        ns = 2 if rule == RULE_ADAM else 1
    dt = plain_float_dtype(w)
    if dt is None:
        return False
    f32 = dt is _float32
    shape = (<object>w).shape
    for a in ((dw, s1, s2)[:ns + 1]):
        if plain_float_dtype(a) is not dt or (<object>a).shape != shape:
            return False
    if "weight_decay" in <dict>config or not _hyper(config, "learning_rate", 0.0, INFINITY, &lr):
        return False
    if rule == RULE_MOMENTUM or rule == RULE_NESTEROV:
        if not _hyper(config, "momentum", 0.0, INFINITY, &h1):
            return False
    elif rule == RULE_RMSPROP:
        if (not _hyper(config, "decay_rate", 0.0, 1.0, &h1)
                or not _hyper(config, "epsilon", 0.0, INFINITY, &eps)):
            return False
    elif rule == RULE_ADAM:
        if (not _hyper(config, "beta1", 0.0, 1.0, &h1) or not _hyper(config, "beta2", 0.0, 1.0, &h2)
                or not _hyper(config, "epsilon", 0.0, INFINITY, &eps)):
            return False
        count = (<dict>config).get("t")
        if type(count) is not int or not (0 <= count < 2**53):
            return False
        t = <Py_ssize_t>count + 1
        # (the checked path's 1.0 - beta1 ** t: a float to an int power is C's pow of the two
        # as doubles)
        c1 = 1.0 - pow(h1, <double>t)
        c2 = 1.0 - pow(h2, <double>t)
        if c1 == 0.0 or c2 == 0.0:
            return False
    v.held = 0
    try:
        p[0] = take(&v, w, True)
        p[1] = take(&v, dw, False) if p[0] != NULL else NULL
        p[2] = take(&v, s1, True) if ns >= 1 and p[1] != NULL else NULL
        p[3] = take(&v, s2, True) if ns == 2 and p[2] != NULL else NULL
        if v.held != ns + 2:
            return False
        for k in range(v.held):
            for j in range(k):
                if not _apart(&v.view[k], &v.view[j]):
                    return False   # (the checked path copies dw or the state first)
        n = v.view[0].len // v.view[0].itemsize
        if n > 0:
            n_threads = gov_begin(&gc, _sites, _dynamic,
                                  gov_key(0, rule, n, 4 if f32 else 8, 0), n_threads)
            with nogil:
                if f32:
                    update_raw[float](rule, <float *>p[0], <const float *>p[1], <float *>p[2],
                                      <float *>p[3], n, lr, h1, h2, eps, c1, c2, 0.0, n_threads)
                else:
                    update_raw[double](rule, <double *>p[0], <const double *>p[1],
                                       <double *>p[2], <double *>p[3], n, lr, h1, h2, eps, c1,
                                       c2, 0.0, n_threads)
            gov_end(&gc)
    finally:
        release_all(&v)
    if rule == RULE_ADAM:
        (<dict>config)["t"] = t
    return True


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
