# Loss and gradient in one pass, on raw pointers: shared by fastnn._kernels.losses (one loss
# per call) and fastnn._kernels.network (the loss inside a whole training step).
#
# Every loss is averaged over the N rows. Rows are independent, so they are spread over threads.
# The rows' losses are summed in double precision in fixed groups of LOSS_GROUP_ROWS rows, each
# group in row order into its own slot, and the slots in group order: the groups depend on N
# only, so the loss is the same for any thread count, and its workspace is ceil(N / 8) doubles
# rather than N.
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport log, log1p, exp, fabs, NAN

from fastnn_openmp cimport effective_threads, fnn_note_parallel
from fastnn_ops cimport softmax_rows, fnn_load_label

cdef enum LossKind:
    LOSS_SOFTMAX = 0
    LOSS_SVM = 1
    LOSS_LOGISTIC = 2
    LOSS_BINARY_HINGE = 3
    LOSS_MSE = 4

cdef enum:
    # in ReLU-element units, as the activation kernels (bench/threshold.py)
    LOSS_MIN_WORK_PER_THREAD = 65536
    SOFTMAX_BLOCK_ELEMS = 2048       # loss_raw's softmax tasks hold about this many scores
    LOSS_GROUP_ROWS = 8              # rows per slot of the loss's sum (see above)
    LOSS_PASS_ROWS = 64              # rows per pass of loss_rows (their losses on the stack)


cdef inline Py_ssize_t loss_groups(Py_ssize_t N) noexcept nogil:
    """Slots of the loss's workspace for N rows: one per group of LOSS_GROUP_ROWS rows."""
    return (N + LOSS_GROUP_ROWS - 1) // LOSS_GROUP_ROWS


cdef inline Py_ssize_t check_labels(int kind, const Py_ssize_t *y, Py_ssize_t N, Py_ssize_t C,
                                    floating *targets) noexcept nogil:
    """-1 if every label is valid for the loss, else the index of the first bad one. Binary
    labels are converted to float targets on the way."""
    cdef Py_ssize_t i, v
    for i in range(N):
        v = y[i]
        if kind == LOSS_SOFTMAX or kind == LOSS_SVM:
            if v < 0 or v >= C:
                return i
        elif kind == LOSS_LOGISTIC:
            if v != 0 and v != 1:
                return i
            targets[i] = <floating>v
        elif kind == LOSS_BINARY_HINGE:
            if v != -1 and v != 1:
                return i
            targets[i] = <floating>v
    return -1


cdef inline Py_ssize_t softmax_block_rows(Py_ssize_t C) noexcept nogil:
    """Rows per softmax task of loss_raw: fixed by C, so the blocking never depends on the
    thread count, and whole groups of the loss's sum (each row's arithmetic does not depend on
    its block anyway)."""
    cdef Py_ssize_t rb = (SOFTMAX_BLOCK_ELEMS // C) // LOSS_GROUP_ROWS * LOSS_GROUP_ROWS
    return rb if rb > 0 else LOSS_GROUP_ROWS


cdef inline double svm_row(const floating *x, floating *d, Py_ssize_t C, Py_ssize_t label,
                           floating inv_n) noexcept nogil:
    """Multiclass hinge (margin 1) of one row: sum_j!=y max(0, x_j - x_y + 1). A NaN margin (a
    NaN score, or inf - inf) makes the row's loss NaN and its whole gradient row NaN, as
    softmax's is: the scores of a row are coupled through the correct class's, whose gradient
    counts the positive margins, and that count is undefined with a NaN among them."""
    cdef floating correct, margin
    cdef double row = 0.0
    cdef Py_ssize_t j, count = 0
    if <size_t>label >= <size_t>C:
        # (checked before the call, but read again at its use: another thread may have
        # written it meanwhile; never an index outside the row, a NaN row instead)
        for j in range(C):
            d[j] = <floating>NAN
        return NAN
    correct = x[label]
    for j in range(C):
        margin = x[j] - correct + 1
        if j != label and margin > 0:
            row += margin
            d[j] = inv_n
            count += 1
        elif j != label and margin != margin:
            row += margin              # NaN propagates into the loss
            d[j] = margin
        else:
            d[j] = 0
    d[label] = -count * inv_n
    if correct != correct:
        # (with other classes every margin is NaN already; with none, C == 1, the row's loss
        # would be 0 beside a NaN gradient: NaN, as a NaN score makes softmax's)
        row = NAN
    if row != row:   # a NaN margin was summed (only positive and NaN margins are): the row's
        for j in range(C):   # whole gradient is NaN, found after the loop, which stays as lean
            d[j] = <floating>row   # as it was for the finite rows
    return row


cdef inline double logistic_elem(floating v, floating t, floating *d, double inv_n) noexcept nogil:
    """One sigmoid neuron with cross-entropy, t in {0, 1}:
    log(1 + exp(-|v|)) + max(v, 0) - v t, gradient (sigmoid(v) - t) / N. For t = 1 the
    gradient is -sigmoid(-v), computed as such: sigmoid(v) - 1 cancels for a confidently
    right positive (1e-3 relative error at v = 30, 0 instead of -exp(-v) from v = 37 on)."""
    cdef double e = exp(-fabs(v)), g
    if t > 0.5:
        g = -(e / (1.0 + e)) if v >= 0 else -(1.0 / (1.0 + e))
    else:
        g = 1.0 / (1.0 + e) if v >= 0 else e / (1.0 + e)
    if v != v:
        g = v
    d[0] = <floating>(g * inv_n)
    # max(v, 0) - v t, written per label so that v = +-inf gives inf or 0, never inf - inf
    if t > 0.5:
        return log1p(e) + (-<double>v if v < 0 else 0.0)
    return log1p(e) + (<double>v if v > 0 else 0.0)


cdef inline double hinge_elem(floating v, floating t, floating *d, double inv_n) noexcept nogil:
    """Binary SVM, t in {-1, +1}: max(0, 1 - t v), gradient -t [1 - t v > 0] / N."""
    cdef double m = 1.0 - <double>t * v
    if m > 0:
        d[0] = <floating>(-t * inv_n)
        return m
    if m != m:
        d[0] = <floating>m
        return m
    d[0] = 0
    return 0.0


cdef inline double mse_row(const floating *x, const floating *y, floating *d, Py_ssize_t C,
                           double inv_n) noexcept nogil:
    """0.5 * sum((x - y)**2) for one row (the 0.5 is applied once, at the end); d = (x - y) / N."""
    cdef double diff, row = 0.0
    cdef Py_ssize_t j
    for j in range(C):
        diff = <double>x[j] - <double>y[j]
        row += diff * diff
        d[j] = <floating>(diff * inv_n)
    return row


cdef inline double loss_row(int kind, Py_ssize_t i, const floating *x, Py_ssize_t C,
                            const Py_ssize_t *labels, const floating *targets, floating *dx,
                            double inv_n) noexcept nogil:
    if kind == LOSS_SVM:   # (the label read once: svm_row checks it, then indexes with it)
        return svm_row(x + i * C, dx + i * C, C, fnn_load_label(labels + i), <floating>inv_n)
    if kind == LOSS_LOGISTIC:
        return logistic_elem(x[i], targets[i], dx + i, inv_n)
    if kind == LOSS_BINARY_HINGE:
        return hinge_elem(x[i], targets[i], dx + i, inv_n)
    return mse_row(x + i * C, targets + i * C, dx + i * C, C, inv_n)


cdef inline bint label_hit(int kind, Py_ssize_t i, const floating *x, Py_ssize_t C,
                          const Py_ssize_t *labels) noexcept nogil:
    """Whether row i's scores predict its label as Loss.predict_labels does: np.argmax (the
    first NaN, else the first largest score) for softmax and svm, score > 0 for the binary
    losses (1, else 0 for logistic, -1 for the binary hinge)."""
    cdef const floating *r
    cdef Py_ssize_t j, best = 0
    if kind == LOSS_SOFTMAX or kind == LOSS_SVM:
        r = x + i * C
        if r[0] == r[0]:
            for j in range(1, C):
                if r[j] != r[j]:
                    best = j
                    break
                if r[j] > r[best]:
                    best = j
        return best == labels[i]
    if kind == LOSS_LOGISTIC:
        return (1 if x[i] > 0 else 0) == labels[i]
    if kind == LOSS_BINARY_HINGE:
        return (1 if x[i] > 0 else -1) == labels[i]
    return False


cdef inline void loss_rows(int kind, Py_ssize_t r0, Py_ssize_t r1, const floating *x,
                           Py_ssize_t N, Py_ssize_t C, const Py_ssize_t *labels,
                           const floating *targets, floating *dx, double *groups,
                           unsigned char *hits) noexcept nogil:
    """Rows [r0, r1) of the loss over N rows (r0 a multiple of LOSS_GROUP_ROWS, and r1 too
    unless it is N): each row's gradient into dx, and each group's rows' losses, summed in row
    order, into its slot of groups (loss_groups(N) of them). hits (unless NULL; classification
    losses) gets each group's count of rows whose scores predict their label (label_hit).
    dx may be x itself: the step kernel writes dscores over the scores (each row is read
    before it is written, and the hits are counted first). Any cut of the batch into such
    runs of rows gives the same numbers, so a chunked step that calls this on each chunk of
    rows (batch_chunk_rows, a multiple of 8) gets loss_raw's."""
    cdef double row[LOSS_PASS_ROWS]
    cdef double sums[LOSS_PASS_ROWS]   # (softmax_rows' workspace)
    cdef double s
    cdef Py_ssize_t i, k, g, ng, rows, end
    cdef unsigned char h
    cdef double inv_n = 1.0 / N
    i = r0
    while i < r1:
        rows = min(<Py_ssize_t>LOSS_PASS_ROWS, r1 - i)
        ng = loss_groups(rows)
        if hits != NULL:
            for g in range(ng):
                end = min((g + 1) * LOSS_GROUP_ROWS, rows)
                h = 0
                for k in range(g * LOSS_GROUP_ROWS, end):
                    h += label_hit(kind, i + k, x, C, labels)
                hits[i // LOSS_GROUP_ROWS + g] = h
        if kind == LOSS_SOFTMAX:
            softmax_rows(x + i * C, dx + i * C, rows, C, labels + i, <floating>inv_n, row, sums)
        else:
            for k in range(rows):
                row[k] = loss_row(kind, i + k, x, C, labels, targets, dx, inv_n)
        for g in range(ng):
            end = min((g + 1) * LOSS_GROUP_ROWS, rows)
            s = row[g * LOSS_GROUP_ROWS]
            for k in range(g * LOSS_GROUP_ROWS + 1, end):
                s += row[k]
            groups[i // LOSS_GROUP_ROWS + g] = s
        i += rows


cdef inline double loss_total(int kind, Py_ssize_t N, const double *groups) noexcept nogil:
    """The mean loss from the groups' sums (loss_rows), added in group order."""
    cdef double total = 0.0
    cdef Py_ssize_t i
    for i in range(loss_groups(N)):
        total += groups[i]
    if kind == LOSS_MSE:
        total *= 0.5
    return total / N


cdef inline void loss_task(int kind, Py_ssize_t t, Py_ssize_t ch, Py_ssize_t bpc, Py_ssize_t rb,
                           const floating *x, Py_ssize_t N, Py_ssize_t C,
                           const Py_ssize_t *labels, const floating *targets, floating *dx,
                           double *groups, unsigned char *hits) noexcept nogil:
    """Task t of loss_raw: block t % bpc (of rb rows) of chunk t // bpc (of ch rows)."""
    cdef Py_ssize_t r0 = (t // bpc) * ch + (t % bpc) * rb
    cdef Py_ssize_t r1 = min(min(r0 + rb, (t // bpc + 1) * ch), N)
    if r0 < r1:
        loss_rows(kind, r0, r1, x, N, C, labels, targets, dx, groups, hits)


cdef inline double loss_raw(int kind, const floating *x, Py_ssize_t N, Py_ssize_t C,
                            const Py_ssize_t *labels, const floating *targets, floating *dx,
                            double *groups, unsigned char *hits, Py_ssize_t chunk,
                            int n_threads) noexcept nogil:
    """Mean loss over N >= 1 rows; dx (shaped like x, or x itself) receives its gradient.
    Class labels (softmax, svm) come in `labels`; binary targets (C == 1) and regression
    targets (shaped like x) in `targets`. `groups` is a workspace of loss_groups(N) doubles;
    hits, unless NULL, receives each group's count of right predictions (loss_rows). chunk:
    the batch's rows per chunk (batch_chunk_rows, a multiple of 8; 0: one chunk): tasks never
    cross a chunk, as the step kernel's chunks do not."""
    cdef Py_ssize_t t, ch = chunk if chunk > 0 else N
    cdef Py_ssize_t rb = softmax_block_rows(C) if kind == LOSS_SOFTMAX else 256
    cdef Py_ssize_t bpc = (ch + rb - 1) // rb
    cdef Py_ssize_t ntasks = ((N + ch - 1) // ch) * bpc
    cdef int nt = effective_threads(N * C * (2 if kind == LOSS_SOFTMAX else 1) + N * 4,
                                    LOSS_MIN_WORK_PER_THREAD, n_threads, ntasks)
    if nt <= 1:
        for t in range(ntasks):
            loss_task(kind, t, ch, bpc, rb, x, N, C, labels, targets, dx, groups, hits)
    else:
        fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for t in prange(ntasks, num_threads=nt, schedule="static"):
            loss_task(kind, t, ch, bpc, rb, x, N, C, labels, targets, dx, groups, hits)
    return loss_total(kind, N, groups)
