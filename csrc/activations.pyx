# fastnn._kernels.activations: element-wise activation kernels, forward and backward.
#
# The kernel pattern (shared/DESIGN.md): the Python wrapper in fastnn/functional/activations.py
# validates and allocates; each function here takes fused float/double memoryviews, releases the
# GIL and runs the vectorizable span functions of fastnn_simd.h, over fixed-size chunks spread
# across OpenMP threads when the work pays for it, in one serial call below that.
# Element-wise results are independent of how the chunks are assigned to threads; the one
# reduction (the PReLU alpha gradient) sums fixed row blocks in a fixed order.
from cython cimport floating
from cython.parallel cimport prange
import numpy as np
from fastnn_openmp cimport (FNN_CHUNK, chunk_count, chunk_len, effective_threads,
                            fnn_note_parallel, fnn_parallel_seen)

from fastnn_ops cimport (FNN_IDENTITY, FNN_RELU, FNN_LEAKY, FNN_SIGMOID, FNN_TANH, FNN_PRELU,
                        act_fwd, act_bwd, act_fwd_rows, act_bwd_rows, prelu_alpha_acc_rows,
                        add_into_rows)

# Op codes (the same numbers the dense kernels use), for the Python wrappers.
IDENTITY = FNN_IDENTITY
RELU = FNN_RELU
LEAKY_RELU = FNN_LEAKY
SIGMOID = FNN_SIGMOID
TANH = FNN_TANH
PRELU = FNN_PRELU

# Elements per chunk handed to one thread at a time (fixed: never depends on thread count).
CHUNK = FNN_CHUNK

# Threading thresholds, in "work units" per thread (an element of ReLU = 1 unit).
# Measured with bench/threshold.py on the 2-core project machine: below ~2 * this many units a
# second thread costs more in start-up and synchronisation than it saves.
cdef Py_ssize_t MIN_WORK_PER_THREAD = 65536
# Relative cost of one element of each op, forward (bench/threshold.py: in cache, sigmoid and
# tanh cost ~3.5x a ReLU element, but both are memory-bound at the sizes where threads start;
# 2 puts their crossover at 65536 elements, ReLU's at 131072). Backward counts 1 per element.
cdef Py_ssize_t OP_COST[6]
OP_COST[:] = [1, 1, 1, 2, 2, 1]    # identity, relu, leaky, sigmoid, tanh, prelu

include "fastnn_sites.pxi"
include "fastnn_fastpath.pxi"

def min_work_per_thread():
    return MIN_WORK_PER_THREAD

def set_min_work_per_thread(Py_ssize_t units):
    """Tuning hook for bench/threshold.py (not public API)."""
    global MIN_WORK_PER_THREAD
    if units < 1:
        raise ValueError("units must be >= 1")
    MIN_WORK_PER_THREAD = units


def forward(int op, const floating[::1] x, floating[::1] out, double alpha, int n_threads):
    """out = act(x) element-wise; x and out are flat, contiguous, same length, no overlap."""
    cdef Py_ssize_t n = x.shape[0]
    if op < FNN_IDENTITY or op > FNN_TANH:
        raise ValueError(f"unknown activation op {op}")
    if out.shape[0] != n:
        raise ValueError("out must have as many elements as x")
    if n == 0:
        return
    _forward_call(op, &x[0], &out[0], n, alpha, n_threads)


cdef int _forward_call(int op, const floating *x, floating *out, Py_ssize_t n, double alpha,
                       int n_threads) except -1:
    """forward's kernel call on checked buffers (n >= 1; forward and forward_fast)."""
    cdef Py_ssize_t nchunks = chunk_count(n), c, start
    cdef int nt
    cdef GovCall gc
    n_threads = gov_begin(&gc, _sites, _dynamic, gov_key(0, op, n, sizeof(floating), 0), n_threads)
    nt = effective_threads(n * OP_COST[op], MIN_WORK_PER_THREAD, n_threads, nchunks)
    with nogil:
        if nt == 1:
            act_fwd(op, x, out, n, alpha, NULL)
        else:
            fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                start = c * FNN_CHUNK
                act_fwd(op, x + start, out + start, chunk_len(c, n), alpha, NULL)
    gov_end(&gc)
    return 0


def backward(int op, const floating[::1] dout, const floating[::1] saved, floating[::1] dx,
             double alpha, int n_threads):
    """dx = dout * act'(.) from the saved forward output (relu, sigmoid, tanh) or input (leaky)."""
    cdef Py_ssize_t n = dout.shape[0]
    if op < FNN_IDENTITY or op > FNN_TANH:
        raise ValueError(f"unknown activation op {op}")
    if saved.shape[0] != n or dx.shape[0] != n:
        raise ValueError("dout, saved and dx must have the same number of elements")
    if n == 0:
        return
    _backward_call(op, &dout[0], &saved[0], &dx[0], n, alpha, n_threads)


cdef int _backward_call(int op, const floating *dout, const floating *saved, floating *dx,
                        Py_ssize_t n, double alpha, int n_threads) except -1:
    """backward's kernel call on checked buffers (n >= 1; backward and backward_fast)."""
    cdef Py_ssize_t nchunks = chunk_count(n), c, start
    cdef int nt
    cdef GovCall gc
    n_threads = gov_begin(&gc, _sites, _dynamic, gov_key(1, op, n, sizeof(floating), 0), n_threads)
    nt = effective_threads(n, MIN_WORK_PER_THREAD, n_threads, nchunks)
    with nogil:
        if nt == 1:
            act_bwd(op, dout, saved, dx, n, alpha, NULL)
        else:
            fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                start = c * FNN_CHUNK
                act_bwd(op, dout + start, saved + start, dx + start, chunk_len(c, n), alpha, NULL)
    gov_end(&gc)
    return 0




def forward_fast(int op, x, double alpha, int n_threads):
    """An activation's forward on its common case, compiled: x a plain C-contiguous ndarray of
    a native float dtype (any shape), op identity to tanh. Returns act(x) as a new array of x's
    shape, with forward's numbers and governor site; or None, with nothing allocated, for any
    other call (fastnn/functional/activations.py's checked path converts, or names the
    problem). See dense.forward_fast."""
    cdef Views v
    cdef void *xp
    cdef Py_ssize_t n
    if op < FNN_IDENTITY or op > FNN_TANH:
        return None
    dt = plain_float_dtype(x)
    if dt is None:
        return None
    v.held = 0
    try:
        xp = take(&v, x, False)
        if xp == NULL:
            return None
        out = _empty((<object>x).shape, dtype=dt)
        n = v.view[0].len // v.view[0].itemsize
        if n > 0:
            if dt is _float32:
                _forward_call[float](op, <const float *>xp, <float *>take(&v, out, True), n,
                                     alpha, n_threads)
            else:
                _forward_call[double](op, <const double *>xp, <double *>take(&v, out, True), n,
                                      alpha, n_threads)
        return out
    finally:
        release_all(&v)


def backward_fast(int op, dout, saved, double alpha, int n_threads):
    """An activation's backward on its common case, compiled: dout and saved plain C-contiguous
    ndarrays of one native float dtype and one shape, op identity to tanh. Returns dx as a new
    array of that shape, with backward's numbers and governor site; or None, with nothing
    allocated, for any other call. See forward_fast."""
    cdef Views v
    cdef void *gp
    cdef void *sp
    cdef Py_ssize_t n
    if op < FNN_IDENTITY or op > FNN_TANH:
        return None
    dt = plain_float_dtype(dout)
    if (dt is None or plain_float_dtype(saved) is not dt
            or (<object>saved).shape != (<object>dout).shape):
        return None
    v.held = 0
    try:
        gp = take(&v, dout, False)
        sp = take(&v, saved, False) if gp != NULL else NULL
        if sp == NULL:
            return None
        dx = _empty((<object>dout).shape, dtype=dt)
        n = v.view[0].len // v.view[0].itemsize
        if n > 0:
            if dt is _float32:
                _backward_call[float](op, <const float *>gp, <const float *>sp,
                                      <float *>take(&v, dx, True), n, alpha, n_threads)
            else:
                _backward_call[double](op, <const double *>gp, <const double *>sp,
                                       <double *>take(&v, dx, True), n, alpha, n_threads)
        return dx
    finally:
        release_all(&v)


cdef inline Py_ssize_t _rows_per_block(Py_ssize_t d) noexcept nogil:
    # Fixed by the row length only: about CHUNK elements per block.
    cdef Py_ssize_t rb = FNN_CHUNK // (d if d > 0 else 1)
    return rb if rb > 0 else 1


def prelu_forward(const floating[:, ::1] x, const floating[::1] alpha, floating[:, ::1] out,
                  int n_threads):
    """out[i, j] = x[i, j] if x[i, j] > 0 else alpha[j] * x[i, j]."""
    cdef Py_ssize_t rows = x.shape[0], d = x.shape[1]
    cdef Py_ssize_t rb, nblocks, b, i0, i1
    cdef int nt
    cdef GovCall gc
    if alpha.shape[0] != d or out.shape[0] != rows or out.shape[1] != d:
        raise ValueError("prelu_forward: shape mismatch")
    if rows == 0 or d == 0:
        return
    rb = _rows_per_block(d)
    nblocks = (rows + rb - 1) // rb
    n_threads = gov_begin(&gc, _sites, _dynamic,
                          gov_key(2, rows, d, sizeof(floating), 0), n_threads)
    nt = effective_threads(rows * d, MIN_WORK_PER_THREAD, n_threads, nblocks)
    with nogil:
        if nt > 1:
            fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for b in prange(nblocks, num_threads=nt, schedule="static"):
            i0 = b * rb
            i1 = i0 + rb
            if i1 > rows:
                i1 = rows
            act_fwd_rows(FNN_PRELU, &x[i0, 0], &out[i0, 0], d, i1 - i0, d, 0.0, &alpha[0])
    gov_end(&gc)


def prelu_backward(const floating[:, ::1] dout, const floating[:, ::1] x,
                   const floating[::1] alpha, floating[:, ::1] dx, floating[::1] dalpha,
                   int n_threads):
    """dx = dout * (1 if x > 0 else alpha[j]); dalpha[j] = sum_i dout[i, j] * min(x[i, j], 0)
    (x > 0 contributes 0). The sum runs over fixed row blocks in a fixed order, so it is the
    same for any thread count."""
    cdef Py_ssize_t rows = x.shape[0], d = x.shape[1]
    cdef Py_ssize_t rb, nblocks, b, i0, i1
    cdef int nt
    cdef GovCall gc
    cdef floating[:, ::1] partial
    if (dout.shape[0] != rows or dout.shape[1] != d or alpha.shape[0] != d
            or dx.shape[0] != rows or dx.shape[1] != d or dalpha.shape[0] != d):
        raise ValueError("prelu_backward: shape mismatch")
    dalpha[:] = 0
    if rows == 0 or d == 0:
        return
    rb = _rows_per_block(d)
    nblocks = (rows + rb - 1) // rb
    partial = np.zeros((nblocks, d), dtype=np.float32 if floating is float else np.float64)
    n_threads = gov_begin(&gc, _sites, _dynamic,
                          gov_key(3, rows, d, sizeof(floating), 0), n_threads)
    nt = effective_threads(rows * d * 2, MIN_WORK_PER_THREAD, n_threads, nblocks)
    with nogil:
        if nt > 1:
            fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for b in prange(nblocks, num_threads=nt, schedule="static"):
            i0 = b * rb
            i1 = i0 + rb
            if i1 > rows:
                i1 = rows
            act_bwd_rows(FNN_PRELU, &dout[i0, 0], d, &x[i0, 0], &dx[i0, 0], d, i1 - i0, d, 0.0,
                         &alpha[0])
            prelu_alpha_acc_rows(&dout[i0, 0], &x[i0, 0], d, i1 - i0, d, &partial[b, 0])
        add_into_rows(&partial[0, 0], d, nblocks, &dalpha[0], d)
    gov_end(&gc)


cdef extern from "fastnn_simd.h" nogil:
    void fnn_maxout_fwd_f32(const float *z, float *out, signed char *am, Py_ssize_t n, Py_ssize_t k)
    void fnn_maxout_fwd_f64(const double *z, double *out, signed char *am, Py_ssize_t n, Py_ssize_t k)
    void fnn_maxout_bwd_f32(const float *g, const signed char *am, float *dz, Py_ssize_t n, Py_ssize_t k)
    void fnn_maxout_bwd_f64(const double *g, const signed char *am, double *dz, Py_ssize_t n, Py_ssize_t k)


cdef inline void _maxout_fwd_chunk(Py_ssize_t c, Py_ssize_t n, Py_ssize_t k, const floating *z,
                                   floating *out, signed char *am) noexcept nogil:
    cdef Py_ssize_t start = c * FNN_CHUNK, m = chunk_len(c, n)
    if floating is float:
        fnn_maxout_fwd_f32(z + start * k, out + start, am + start, m, k)
    else:
        fnn_maxout_fwd_f64(z + start * k, out + start, am + start, m, k)


cdef inline void _maxout_bwd_chunk(Py_ssize_t c, Py_ssize_t n, Py_ssize_t k, const floating *g,
                                   const signed char *am, floating *dz) noexcept nogil:
    cdef Py_ssize_t start = c * FNN_CHUNK, m = chunk_len(c, n)
    if floating is float:
        fnn_maxout_bwd_f32(g + start, am + start, dz + start * k, m, k)
    else:
        fnn_maxout_bwd_f64(g + start, am + start, dz + start * k, m, k)


def maxout_reduce_forward(const floating[:, :, ::1] z, floating[:, ::1] out,
                          signed char[:, ::1] argmax, int n_threads):
    """out[n, m] = max_p z[n, m, p]; argmax keeps the winning piece. NaN wins (like np.max),
    and among equal maxima the first piece wins (like np.argmax)."""
    cdef Py_ssize_t rows = z.shape[0], units = z.shape[1], k = z.shape[2]
    cdef Py_ssize_t n = rows * units, c, nchunks
    cdef int nt
    cdef GovCall gc
    if k < 1 or k > 127:
        raise ValueError("maxout needs 1 to 127 pieces")
    if out.shape[0] != rows or out.shape[1] != units or argmax.shape[0] != rows or argmax.shape[1] != units:
        raise ValueError("maxout_reduce_forward: shape mismatch")
    if n == 0:
        return
    n_threads = gov_begin(&gc, _sites, _dynamic, gov_key(4, n, k, sizeof(floating), 0), n_threads)
    nchunks = chunk_count(n)
    nt = effective_threads(n * k, MIN_WORK_PER_THREAD, n_threads, nchunks)
    with nogil:
        if nt == 1:
            for c in range(nchunks):
                _maxout_fwd_chunk(c, n, k, &z[0, 0, 0], &out[0, 0], &argmax[0, 0])
        else:
            fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                _maxout_fwd_chunk(c, n, k, &z[0, 0, 0], &out[0, 0], &argmax[0, 0])
    gov_end(&gc)


def maxout_reduce_backward(const floating[:, ::1] dout, const signed char[:, ::1] argmax,
                           floating[:, :, ::1] dz, int n_threads):
    """dz[n, m, p] = dout[n, m] where p is the forward's winner, 0 elsewhere."""
    cdef Py_ssize_t rows = dz.shape[0], units = dz.shape[1], k = dz.shape[2]
    cdef Py_ssize_t n = rows * units, c, nchunks
    cdef int nt
    cdef GovCall gc
    if dout.shape[0] != rows or dout.shape[1] != units or argmax.shape[0] != rows or argmax.shape[1] != units:
        raise ValueError("maxout_reduce_backward: shape mismatch")
    if n == 0:
        return
    n_threads = gov_begin(&gc, _sites, _dynamic, gov_key(5, n, k, sizeof(floating), 0), n_threads)
    nchunks = chunk_count(n)
    nt = effective_threads(n * k, MIN_WORK_PER_THREAD, n_threads, nchunks)
    with nogil:
        if nt == 1:
            for c in range(nchunks):
                _maxout_bwd_chunk(c, n, k, &dout[0, 0], &argmax[0, 0], &dz[0, 0, 0])
        else:
            fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                _maxout_bwd_chunk(c, n, k, &dout[0, 0], &argmax[0, 0], &dz[0, 0, 0])
    gov_end(&gc)


def parallel_seen():
    """Whether this module ran a parallel region with more than one thread (fork safety:
    fastnn/_threads.py)."""
    return fnn_parallel_seen() != 0
