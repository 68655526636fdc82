# fastnn._kernels.losses: classification and regression losses, loss and gradient in one pass.
#
# Every loss is averaged over the N rows and returns (loss, dx). Rows are independent, so they
# are spread over threads; each row's loss goes to its own slot and the slots are summed in row
# order afterwards (in double precision), so the loss is the same for any thread count.
# Labels are validated by the Python wrappers (fastnn/functional/losses.py) before any call.
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport log, log1p, exp, fabs
import numpy as np

from fastnn_openmp cimport effective_threads
from fastnn_ops cimport exp_shift, scale

cdef Py_ssize_t MIN_WORK_PER_THREAD = 32768


cdef double _sum(const double[::1] v) noexcept nogil:
    cdef double s = 0.0
    cdef Py_ssize_t i
    for i in range(v.shape[0]):
        s += v[i]
    return s


cdef inline double _softmax_row(const floating *x, floating *d, Py_ssize_t C, Py_ssize_t label,
                                floating inv_n) noexcept nogil:
    """Cross-entropy of one row; d receives (softmax - onehot) / N."""
    cdef floating m = x[0]
    cdef double s = 0.0
    cdef Py_ssize_t j
    for j in range(1, C):
        if x[j] > m or x[j] != x[j]:
            m = x[j]
    exp_shift(x, d, C, m)              # exp(x - max): no overflow, the max term is 1
    for j in range(C):
        s += d[j]
    scale(d, C, <floating>(inv_n / s))
    d[label] -= inv_n
    return log(s) - (<double>x[label] - <double>m)


def softmax_loss(const floating[:, ::1] x, const Py_ssize_t[::1] y, floating[:, ::1] dx,
                 int n_threads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], i
    cdef double[::1] losses = np.empty(N, dtype=np.float64)
    cdef floating inv_n = <floating>(1.0 / N)
    cdef int nt = effective_threads(N * C * 4, MIN_WORK_PER_THREAD, n_threads)
    with nogil:
        for i in prange(N, num_threads=nt, schedule="static"):
            losses[i] = _softmax_row(&x[i, 0], &dx[i, 0], C, y[i], inv_n)
    return _sum(losses) / N


def svm_loss(const floating[:, ::1] x, const Py_ssize_t[::1] y, floating[:, ::1] dx,
             int n_threads):
    """Multiclass hinge with margin 1: sum_j!=y max(0, x_j - x_y + 1), averaged over rows."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], i, j, label, count
    cdef double[::1] losses = np.empty(N, dtype=np.float64)
    cdef floating inv_n = <floating>(1.0 / N)
    cdef floating correct, margin
    cdef double row
    cdef int nt = effective_threads(N * C, MIN_WORK_PER_THREAD, n_threads)
    with nogil:
        for i in prange(N, num_threads=nt, schedule="static"):
            label = y[i]
            correct = x[i, label]
            row = 0.0
            count = 0
            for j in range(C):
                margin = x[i, j] - correct + 1
                if j != label and margin > 0:
                    row = row + margin
                    dx[i, j] = inv_n
                    count = count + 1
                elif j != label and margin != margin:
                    row = row + margin     # NaN propagates into the loss
                    dx[i, j] = margin
                else:
                    dx[i, j] = 0
            dx[i, label] = -count * inv_n
            if correct != correct:
                dx[i, label] = correct
            losses[i] = row
    return _sum(losses) / N


def logistic_loss(const floating[::1] x, const floating[::1] y, floating[::1] dx, int n_threads):
    """Binary softmax classifier (one sigmoid neuron), y in {0, 1}:
    loss = mean(log(1 + exp(-|x|)) + max(x, 0) - x * y), dx = (sigmoid(x) - y) / N."""
    cdef Py_ssize_t N = x.shape[0], i
    cdef double[::1] losses = np.empty(N, dtype=np.float64)
    cdef double v, e, s, inv_n = 1.0 / N
    cdef int nt = effective_threads(N * 8, MIN_WORK_PER_THREAD, n_threads)
    with nogil:
        for i in prange(N, num_threads=nt, schedule="static"):
            v = x[i]
            e = exp(-fabs(v))
            losses[i] = log1p(e) + (v if v > 0 else 0.0) - v * y[i]
            s = 1.0 / (1.0 + e) if v >= 0 else e / (1.0 + e)
            if v != v:
                s = v
            dx[i] = <floating>((s - y[i]) * inv_n)
    return _sum(losses) / N


def binary_svm_loss(const floating[::1] x, const floating[::1] y, floating[::1] dx,
                    int n_threads):
    """Binary hinge, y in {-1, +1}: loss = mean(max(0, 1 - y x)), dx = -y [1 - y x > 0] / N."""
    cdef Py_ssize_t N = x.shape[0], i
    cdef double[::1] losses = np.empty(N, dtype=np.float64)
    cdef double m, inv_n = 1.0 / N
    cdef int nt = effective_threads(N * 2, MIN_WORK_PER_THREAD, n_threads)
    with nogil:
        for i in prange(N, num_threads=nt, schedule="static"):
            m = 1.0 - <double>y[i] * x[i]
            if m > 0:
                losses[i] = m
                dx[i] = <floating>(-y[i] * inv_n)
            elif m != m:
                losses[i] = m
                dx[i] = <floating>m
            else:
                losses[i] = 0.0
                dx[i] = 0
    return _sum(losses) / N


def mse_loss(const floating[:, ::1] x, const floating[:, ::1] y, floating[:, ::1] dx,
             int n_threads):
    """loss = 0.5 * sum((x - y)**2) / N, dx = (x - y) / N; x, y of shape (N, D)."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], i, j
    cdef double[::1] losses = np.empty(N, dtype=np.float64)
    cdef double diff, row, inv_n = 1.0 / N
    cdef int nt = effective_threads(N * D, MIN_WORK_PER_THREAD, n_threads)
    with nogil:
        for i in prange(N, num_threads=nt, schedule="static"):
            row = 0.0
            for j in range(D):
                diff = <double>x[i, j] - <double>y[i, j]
                row = row + diff * diff
                dx[i, j] = <floating>(diff * inv_n)
            losses[i] = row
    return 0.5 * _sum(losses) / N
