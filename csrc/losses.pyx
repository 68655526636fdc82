# fastnn._kernels.losses: classification and regression losses, loss and gradient in one pass.
#
# The per-row work is in fastnn_losses.pxd (shared with the network step kernel). Labels and
# shapes are validated before any loss runs: class labels and shapes by the Python wrappers
# (fastnn/functional/losses.py), binary labels by binary_targets here, in one pass.
from cython cimport floating
from libc.stdlib cimport free, malloc

from fastnn_openmp cimport fnn_parallel_seen
import numpy as np

from fastnn_losses cimport (LOSS_SOFTMAX, LOSS_SVM, LOSS_LOGISTIC, LOSS_BINARY_HINGE, LOSS_MSE,
                            loss_raw, loss_groups, check_labels)
from fastnn_dense cimport DenseConfig, batch_chunk_rows

from fastnn._kernels import dense as _dense_module

# the dense machinery's configuration: a batch's row chunks (which the loss's tasks never cross,
# as the step kernel's chunk-by-chunk loss)
cdef DenseConfig *_cfg = <DenseConfig *><size_t>_dense_module.config_address()

SOFTMAX = LOSS_SOFTMAX
SVM = LOSS_SVM
LOGISTIC = LOSS_LOGISTIC
BINARY_HINGE = LOSS_BINARY_HINGE
MSE = LOSS_MSE

include "fastnn_sites.pxi"
include "fastnn_fastpath.pxi"


def class_loss(int kind, const floating[:, ::1] x, const Py_ssize_t[::1] y, floating[:, ::1] dx,
               int n_threads):
    """softmax (kind SOFTMAX) or multiclass hinge (SVM) on scores x (N, C), labels y (N,)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef double[::1] groups = np.empty(max(loss_groups(N), 1), dtype=np.float64)
    cdef Py_ssize_t bad
    if kind != LOSS_SOFTMAX and kind != LOSS_SVM:
        raise ValueError("class_loss: kind must be SOFTMAX or SVM")
    if y.shape[0] != N or dx.shape[0] != N or dx.shape[1] != C or N < 1 or C < 1:
        raise ValueError("class_loss: shape mismatch")
    # the kernel indexes the scores with the labels: never trust them (the public losses
    # check them first, with messages that name y; this is the backstop, O(N))
    bad = check_labels(kind, &y[0], N, C, <floating *>NULL)
    if bad >= 0:
        raise ValueError(f"class_loss: y[{bad}] = {y[bad]} is not in [0, {C})")
    return _class_call(kind, &x[0, 0], N, C, &y[0], &dx[0, 0], &groups[0], n_threads)


cdef double _class_call(int kind, const floating *x, Py_ssize_t N, Py_ssize_t C,
                        const Py_ssize_t *y, floating *dx, double *groups,
                        int n_threads) except? -1.0:
    """class_loss's call of the kernel on checked buffers (labels in range, N, C >= 1; groups:
    loss_groups(N) slots), with the call governor (class_loss and class_loss_fast)."""
    cdef double out
    cdef GovCall gc
    n_threads = gov_begin(&gc, _sites, _dynamic,
                          gov_key(0, kind, N, C, sizeof(floating)), n_threads)
    with nogil:
        out = loss_raw(kind, x, N, C, y, <const floating *>NULL, dx, groups, NULL,
                       batch_chunk_rows(_cfg, N), n_threads)
    gov_end(&gc)
    return out


def class_loss_fast(int kind, x, y, int n_threads):
    """softmax_loss and svm_loss (kind SOFTMAX or SVM) on their common case, checked and run in
    compiled code: x (N, C) a plain C-contiguous ndarray of a native float dtype, N, C >= 1,
    y a plain C-contiguous intp array of N labels, all in [0, C). Returns (loss, dx), dx a new
    array, with class_loss's numbers and governor site; or None, with nothing computed, for
    any other call (fastnn/functional/losses.py's checked path converts, or names the
    problem). See dense.forward_fast."""
    cdef Views v
    cdef Py_ssize_t N, C
    cdef bint f32
    cdef void *xp
    cdef void *dxp
    cdef const Py_ssize_t *yp
    cdef double *groups
    cdef double out
    if (kind != LOSS_SOFTMAX and kind != LOSS_SVM) or type(y) is not _ndarray:
        return None
    dt = plain_float_dtype(x)
    if dt is None:
        return None
    f32 = dt is _float32
    xs = (<object>x).shape
    if len(<tuple>xs) != 2:
        return None
    N = xs[0]
    C = xs[1]
    if N == 0 or C == 0 or not plain_intp_dtype((<object>y).dtype) or (<object>y).shape != (N,):
        return None
    v.held = 0
    try:
        xp = take(&v, x, False)
        yp = <const Py_ssize_t *>take(&v, y, False) if xp != NULL else NULL
        if yp == NULL or check_labels[float](kind, yp, N, C, <float *>NULL) >= 0:
            return None
        dx = _empty((N, C), dtype=dt)
        dxp = take(&v, dx, True)
        groups = <double *>malloc(loss_groups(N) * sizeof(double))
        if groups == NULL:
            raise MemoryError()
        try:
            if f32:
                out = _class_call[float](kind, <const float *>xp, N, C, yp, <float *>dxp,
                                         groups, n_threads)
            else:
                out = _class_call[double](kind, <const double *>xp, N, C, yp, <double *>dxp,
                                          groups, n_threads)
        finally:
            free(groups)
        return (out, dx)
    finally:
        release_all(&v)


def target_loss(int kind, const floating[:, ::1] x, const floating[:, ::1] t, floating[:, ::1] dx,
                int n_threads):
    """logistic (LOGISTIC) or binary hinge (BINARY_HINGE) on x (N, 1) with targets t (N, 1), or
    mean squared error (MSE) on x (N, D) with targets t (N, D)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef double[::1] groups = np.empty(max(loss_groups(N), 1), dtype=np.float64)
    cdef double out
    cdef GovCall gc
    if kind != LOSS_LOGISTIC and kind != LOSS_BINARY_HINGE and kind != LOSS_MSE:
        raise ValueError("target_loss: kind must be LOGISTIC, BINARY_HINGE or MSE")
    if kind != LOSS_MSE and C != 1:
        raise ValueError("target_loss: binary losses take one score per row")
    if (t.shape[0] != N or t.shape[1] != C or dx.shape[0] != N or dx.shape[1] != C
            or N < 1 or C < 1):
        raise ValueError("target_loss: shape mismatch")
    n_threads = gov_begin(&gc, _sites, _dynamic,
                          gov_key(1, kind, N, C, sizeof(floating)), n_threads)
    with nogil:
        out = loss_raw(kind, &x[0, 0], N, C, <const Py_ssize_t *>NULL, &t[0, 0], &dx[0, 0],
                       &groups[0], NULL, batch_chunk_rows(_cfg, N), n_threads)
    gov_end(&gc)
    return out


def first_bad_class_label(const Py_ssize_t[::1] y, Py_ssize_t num_classes):
    """Index of the first label of y outside [0, num_classes), or -1: the range check of
    class_labels (fastnn/_validation.py) for labels that are already a contiguous intp array,
    in one pass where ``y.min()`` and ``y.max()`` are two NumPy reductions (~2 us a call, and
    ~15 us right after a large product has pushed their code out of the caches)."""
    cdef Py_ssize_t bad = -1, n = y.shape[0]
    if n > 0:
        with nogil:
            bad = check_labels[float](LOSS_SOFTMAX, &y[0], n, num_classes, <float *>NULL)
    return bad


def binary_targets(int kind, const Py_ssize_t[::1] y, floating[::1] t):
    """t = y as floats if every label is valid for the binary loss `kind` (LOGISTIC: 0 or 1,
    BINARY_HINGE: -1 or +1). Returns -1, or the index of the first invalid label."""
    cdef Py_ssize_t bad = -1
    if kind != LOSS_LOGISTIC and kind != LOSS_BINARY_HINGE:
        raise ValueError("binary_targets: kind must be LOGISTIC or BINARY_HINGE")
    if t.shape[0] != y.shape[0]:
        raise ValueError("binary_targets: shape mismatch")
    if y.shape[0] > 0:
        with nogil:
            bad = check_labels(kind, &y[0], y.shape[0], 1, &t[0])
    return bad


def parallel_seen():
    """Whether this module ran a parallel region with more than one thread (fork safety:
    fastnn/_threads.py)."""
    return fnn_parallel_seen() != 0
