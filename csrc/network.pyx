# fastnn._kernels.network: a whole training step of a dense network in one call.
#
# For a stack of Dense layers (each with a fused activation), a loss and an update rule, one
# call runs the forward pass, the loss, the backward pass and every parameter update without
# the GIL, on buffers allocated once per batch size. A small network's step then costs one
# Python-to-kernel crossing instead of a dozen. The layer machinery is the same as the one-layer
# kernels (fastnn_dense.pxd, fastnn_losses.pxd, fastnn_optim.pxd), so the results are the same
# numbers, and the same for any thread count.
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.stdint cimport uintptr_t, uint32_t
from libc.stdlib cimport calloc, free, qsort
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree
from libc.string cimport memset
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE,
                             PyBUF_C_CONTIGUOUS, PyBUF_STRIDES, PyBUF_FORMAT)
from cpython.ref cimport PyObject
from cpython.weakref cimport PyWeakref_GetObject
from cpython.dict cimport PyDict_Next
import sys

import numpy as np

from fastnn_openmp cimport (fnn_omp_get_thread_num, fnn_turn_wait, fnn_turn_pass,
                            fnn_note_parallel, fnn_parallel_seen, fnn_parallel_count,
                            fnn_wtime, fnn_count_add, fnn_wait_above,
                            fnn_omp_get_num_threads)
from fastnn_governor cimport Governor, gov_threads, gov_record, gov_reset, gov_set_current
from fastnn_ops cimport FNN_IDENTITY, FNN_LEAKY, FNN_PRELU, keeps_pre
from fastnn_dropout cimport fnn_noise_f32, fnn_noise_f64, reg_chunk, reg_threads
from fastnn_dense cimport (DenseConfig, DropMask, drop_rows, Plan, blas_enter, blas_exit, cdiv, dense_forward_raw,
                           dense_backward_raw, backward_blocks, bias_rows_per_block,
                           backward_pass1, backward_products, backward_block, dx_into_act,
                           dx_into_act_tile, dx_scratch_need, dx_tile_need, dx_tile_bound,
                           chunk_rows,
                           batch_chunk_rows, row_plan, forward_plan, forward_tile,
                           forward_ws_elems, wslot_elems, dw_chunk, dw_chunk_dst, dw_in_turns,
                           dw_sum_chunks, sum_block_partials)
from fastnn_losses cimport (LOSS_SOFTMAX, LOSS_SVM, LOSS_LOGISTIC, LOSS_BINARY_HINGE, LOSS_MSE,
                            loss_raw, loss_rows, loss_total, loss_groups, check_labels)
from fastnn_optim cimport RULE_SGD, RULE_ADAM, update_raw, all_finite_raw

from fastnn._kernels import dense as _dense_module
from fastnn._kernels.dropout import (keep_limit as _keep_limit, mask_key as _mask_key,
                                     noise_key as _noise_key)

cdef DenseConfig *_cfg = <DenseConfig *><size_t>_dense_module.config_address()


cdef struct Regularizer:
    # a parameterless layer the plan runs between two of its buffers: a Dropout (m: its mask)
    # or a GaussianNoise (m.lo, m.hi: its noise key's halves; m.scale: its std; m.limit unused)
    int kind             # RG_*
    DropMask m


cdef struct NetPlan:
    int n_layers
    Py_ssize_t N
    int loss_kind
    Py_ssize_t *fan_in
    Py_ssize_t *fan_out
    int *op
    # (rb, poff, woff, chunk and chunk_stride are set for each step by _size_buffers)
    Py_ssize_t *rb       # rows per block of each layer's bias-gradient sums
    Py_ssize_t *poff     # where each layer's partial sums start in partial
    Py_ssize_t *woff     # where each layer's dw chunk partials start in wslots
    Py_ssize_t chunk     # rows per chunk when the whole step runs in chunks
    Py_ssize_t chunk_stride   # a chunked step: each thread's scratch
    int *dw_turn         # a chunked step: per layer whose chunks take turns (dw_in_turns),
                         # the chunk whose turn it is to add its weight-gradient product to dW
    int *layer_done      # a step that updates in its chunks' region (_run_updating): per layer,
                         # the chunks done with its backward pass (their dW turn and dx)
    bint count_done      # _backward_chunk counts them (during such a step only)
    bint updated_in_chunks   # the last step ran its updates in its chunks' region
    bint updated_in_backward # the last step updated each layer's parameters in the fused
                             # backward pass, once the layer was done (_backward_fused)
    int update_next      # the next of the parameters to update (in p_order), taken one at a
                         # time by the threads (fnn_count_add)
    bint params_apart    # no two parameters' arrays (data, gradient, state) share memory
                         # (else one thread updates them all, one after the other)
    bint updates_ok      # the plan's side of _updates_in_chunks and of the fused backward's
                         # updates (beside params_apart): each parameter is the W or b of a
                         # layer, each of those once, and no layer is prelu (its slope
                         # gradient has partials of its own)
    int *p_layer         # the layer whose W or b parameter k is (-1: neither)
    int *p_bias          # 1 when parameter k is a bias (its gradient is summed from partials)
    int *p_order         # the parameters in the order they are taken: the last layer's first
    double *alpha
    void **W
    void **b
    void **dW
    void **db
    void **avec          # prelu slopes per unit (NULL otherwise)
    void **dalpha        # prelu slope gradients (NULL otherwise)
    void **act           # layer outputs, N x fan_out
    void **pre           # pre-activations for leaky relu / prelu (NULL otherwise)
    void **hin           # a Dropout between layers l and l + 1: its output, N x fan_out[l],
                         # which layer l + 1 reads (forward, and its weight gradient), else NULL
    Regularizer *reg     # the Dropout or GaussianNoise layer after layer l (its kind set at
                         # the build, its mask or noise with each step: StepPlan.step's drops)
    unsigned char *drop_on   # 1 where it drops this step (0: it passes act[l] on unchanged,
                             # as Dropout(p=0) does, and layer l + 1 reads act[l])
    Regularizer inl      # the plan's input layer (kind RG_NONE: none): a dropout or Gaussian
                         # noise over X, into xin, which the first layer reads (X itself is
                         # never written)
    void *xin            # N x fan_in[0] (NULL: no input layer)
    bint in_on           # it applies this step (else the first layer reads X)
    bint fused           # no prelu below the last layer: each layer's dz is written into its
                         # own activation buffer by the layer above (dx_into_act)
    void *dact0          # fused: N x C, the loss's dscores (the last layer's dz, in place;
                         # the scores' own buffer when the last layer's backward does not read
                         # its output: no activation, leaky relu, prelu).
    void *dact1          # Otherwise two N x max-width buffers, alternating down the layers:
                         # dscores go into dact0, each layer's dz is formed in place
    void *scratch        # fused: one dx tile per thread
    Py_ssize_t scratch_elems
    void *partial        # bias-gradient partial sums, per layer (each block zeroes its own row)
    void *apartial       # prelu slope partial sums (one layer at a time)
    void *wslots         # weight-gradient partials of layers in row chunks (wslot_elems);
                         # during the forward pass (which ends before any backward work
                         # starts), a deep layer's partial (forward_ws_elems, at offset 0)
    void *targets        # binary losses: the labels as floats, N (else NULL)
    double *groups       # the loss's sums of groups of rows (loss_groups(N), fastnn_losses.pxd)
    unsigned char *hits  # the groups' counts of right predictions (a step that counts them),
                         # else NULL
    int n_params
    void **p_data
    void **p_grad
    void **p_s1
    void **p_s2
    Py_ssize_t *p_n
    int *p_decay
    double *phase        # StepPlan.time_phases: seconds spent in each phase of the steps
                         # since it was switched on (phase slots, _PH_*), else NULL


cdef enum:
    RG_NONE = 0        # a plan's regularizing layer (Regularizer.kind): none,
    RG_DROPOUT = 1     # a Dropout,
    RG_NOISE = 2       # a GaussianNoise


# A chunked step (a small network on a batch of several row chunks) shares its chunks among
# threads from this much forward work (2 N sum(d_i d_i+1) flops); below it, one thread
cdef double CHUNK_PARALLEL_FLOPS = 1.0e5

# After a chunked step on several threads, each parameter's weight gradient was last written,
# and its weights read, by several cores; one thread updating every parameter then pulls
# each line across (64-64-64-10 (32), 2 threads: the SGD update 8% of perf's samples against
# 2.4% on one thread). From this many parameter elements in all, those updates run a
# parameter per task on the chunks' threads (_update_threads): 64-64-64-10 (32), 8970
# elements, 0.4-1.2 us less a step in quiet runs (2-5%; medians of paired interleaved rounds)
# and 4.4 us less beside a busy core; at batch 256 no gain when quiet, 3.6-5.3 us less when
# busy. Below the bound the parallel region costs more than it saves (2-100-3 (300), 603
# elements: 2 us more). Since the seventeenth session a network whose layers all take turns
# (64-64-64-10) runs those updates in its chunks' own parallel region instead of a second
# one, each beginning as soon as its layer is done (_run_updating): 1.0-1.1 us less again.
# The same element-wise update either way: the same numbers.
cdef Py_ssize_t _chunk_update_min_elems = 4096

# Tests only (hold_last_chunk): in a step that updates in its chunks' region, the last chunk
# waits before its backward pass until another thread has taken a parameter to update, so
# that _take_updates must wait for the layers (a missing wait would update with the gradients
# half summed on every such step, instead of on some).
cdef bint _hold_last_chunk = False


cdef enum:
    COMPLETED = -1   # _step's results other than the index of a bad label
    STOPPED = -2     # the guard stopped the step before any update


# StepPlan.time_phases: where a step's time goes, phase by phase, inside the compiled step
# (bench/step_parts.py shows it beside the same kernels called one by one). NetPlan.phase
# holds, for L layers: each layer's forward (slots 0 .. L-1), the loss (L), each layer's
# backward in parts (its bias sums, its weight-gradient product, its dx product with the
# activation derivative of the layer below), or whole on the buffers path (_ph_layer), then
# the step's other phases (_ph_other). Off (NULL), each mark costs one test.
cdef enum:
    _PH_FWD = 0      # per layer (_ph_layer)
    _PH_BIAS = 1
    _PH_DW = 2
    _PH_DX = 3
    _PH_BWD = 4
    _PH_CHUNKS = 0   # the others (_ph_other): a chunked step's parallel region(s)
    _PH_SUM = 1      # a chunked step's sums of the chunks' partials
    _PH_GUARD = 2    # the guard's finite checks of the gradients
    _PH_UPDATE = 3   # the parameter updates (outside the chunks' region)
    _PH_LABELS = 4   # the label check
    _PH_BLAS = 5     # the BLAS's thread count held at 1 for the step, and restored
    _PH_STEP = 6     # the whole step, from the label check to the last update
    _PH_OTHERS = 7


cdef inline Py_ssize_t _ph_layer(NetPlan *P, int kind, int l) noexcept nogil:
    """The slot of layer l's phase `kind` (_PH_FWD ... _PH_BWD)."""
    return l if kind == _PH_FWD else kind * P.n_layers + 1 + l


cdef inline Py_ssize_t _ph_loss(NetPlan *P) noexcept nogil:
    """The slot of the loss (after the forward passes)."""
    return P.n_layers


cdef inline Py_ssize_t _ph_other(NetPlan *P, int which) noexcept nogil:
    """The slot of the step's phase `which` (_PH_CHUNKS ... _PH_STEP; _PH_OTHERS: the number
    of slots)."""
    return 5 * P.n_layers + 1 + which


cdef inline double _ph_tick(NetPlan *P) noexcept nogil:
    """The clock when phases are timed (else 0)."""
    return fnn_wtime() if P.phase != NULL else 0.0


cdef inline double _ph_mark(NetPlan *P, Py_ssize_t slot, double t0) noexcept nogil:
    """Add the time since t0 to `slot` (when phases are timed); returns the clock."""
    cdef double t
    if P.phase == NULL:
        return 0.0
    t = fnn_wtime()
    P.phase[slot] += t - t0
    return t


cdef enum:
    CHUNK_FORWARD = 1    # what _run_chunks runs of each chunk: forward and loss,
    CHUNK_BACKWARD = 2   # backward,
    CHUNK_BOTH = 3       # or both in one parallel region


cdef Py_ssize_t _step(NetPlan *P, const DenseConfig *cfg, const floating *X, const Py_ssize_t *labels,
                      const floating *reg_targets, int rule, double lr, double h1, double h2,
                      double eps, double c1, double c2, double wd, int nt,
                      bint guard, double *loss_out) noexcept nogil:
    cdef int L = P.n_layers, l, k, ut
    cdef Py_ssize_t N = P.N, C = P.fan_out[P.n_layers - 1], bad
    cdef bint chunked, early
    cdef const floating *inp
    cdef const floating *targets
    cdef double t = _ph_tick(P)
    P.updated_in_chunks = False
    P.updated_in_backward = False
    # labels first: nothing is computed for a batch with a bad label
    if P.loss_kind == LOSS_MSE:
        targets = reg_targets
    else:
        bad = check_labels(P.loss_kind, labels, N, C, <floating *>P.targets)
        if bad >= 0:
            return bad
        targets = <const floating *>P.targets
    t = _ph_mark(P, _ph_other(P, _PH_LABELS), t)
    # a small network runs forward, loss and backward chunk by chunk, then the bias sums (the
    # scratch check cannot fail after _size_buffers; the other path gives the same numbers).
    # Under the guard the chunks' backward waits, in a second parallel region, until the loss
    # is known to be finite: their weight gradients go straight into dW.
    chunked = P.chunk > 0 and P.scratch_elems >= P.chunk_stride
    P.updated_in_chunks = chunked and not guard and _updates_in_chunks(P, nt)
    if P.updated_in_chunks:
        # forward, loss, backward and the updates in one parallel region (_run_updating)
        loss_out[0] = _run_updating(P, cfg, X, labels, targets, P.chunk_stride, nt, rule, lr,
                                    h1, h2, eps, c1, c2, wd)
        _ph_mark(P, _ph_other(P, _PH_CHUNKS), t)
        return COMPLETED
    if chunked:
        loss_out[0] = _run_chunks(P, cfg, X, labels, targets, P.chunk_stride, nt,
                                  CHUNK_FORWARD if guard else CHUNK_BOTH)
        t = _ph_mark(P, _ph_other(P, _PH_CHUNKS), t)
    else:
        if P.in_on:
            _reg_forward(&P.inl, X, <floating *>P.xin, N * P.fan_in[0], nt)
        inp = _input_of(P, X, 0)
        for l in range(L):
            dense_forward_raw(cfg, P.op[l], inp, <const floating *>P.W[l],
                              <const floating *>P.b[l], <floating *>P.act[l],
                              <floating *>P.pre[l], N, P.fan_in[l], P.fan_out[l], P.alpha[l],
                              <const floating *>P.avec[l], <floating *>P.wslots, nt)
            if P.drop_on[l]:
                _reg_forward(&P.reg[l], <const floating *>P.act[l], <floating *>P.hin[l],
                             N * P.fan_out[l], nt)
            inp = _input_of(P, X, l + 1)
            t = _ph_mark(P, _ph_layer(P, _PH_FWD, l), t)
        loss_out[0] = loss_raw(P.loss_kind, inp, N, C, labels, targets, <floating *>P.dact0,
                               P.groups, P.hits, batch_chunk_rows(cfg, N), nt)
        t = _ph_mark(P, _ph_loss(P), t)
    if guard and not (loss_out[0] - loss_out[0] == 0):
        # non-finite loss: leave gradients and parameters as they are (nothing was written)
        return STOPPED
    if chunked:
        if guard:
            _run_chunks(P, cfg, X, labels, targets, P.chunk_stride, nt, CHUNK_BACKWARD)
            t = _ph_mark(P, _ph_other(P, _PH_CHUNKS), t)
        _sum_chunks(P, X)
        t = _ph_mark(P, _ph_other(P, _PH_SUM), t)
    elif P.fused:
        # each layer's parameters are updated as soon as the backward pass is done with them
        # (after its dx product, the last to read W, and its dW product), while W and dW are
        # still in cache: where each parameter is one layer's W or b and none shares memory
        # with another, and not under the guard (which must see every gradient first). The
        # same element-wise updates as below: the same numbers. On a 2-core Xeon (2 MB of L2
        # a core) the update phase of 784-512-512-10 went from 0.087-0.096 to 0.073 ms at
        # batch 128 and from 0.26-0.28 to 0.24 ms at 1024 (the first layer's W, which no dx
        # reads, is as cold as before), less than the noise of the step's own time.
        early = not guard and P.updates_ok and P.params_apart
        _backward_fused(P, cfg, X, nt, early, rule, lr, h1, h2, eps, c1, c2, wd)
        t = _ph_tick(P)
        if early:
            P.updated_in_backward = True
            return COMPLETED
    else:
        _backward_buffers(P, cfg, X, nt)
        t = _ph_tick(P)
    if guard:
        # a finite loss can still give non-finite gradients (an Inf input that the activation
        # maps to a finite value, then inf * 0 in x.T @ dz): stop before they reach a parameter
        for k in range(P.n_params):
            if not all_finite_raw(<const floating *>P.p_grad[k], P.p_n[k], nt):
                return STOPPED
        t = _ph_mark(P, _ph_other(P, _PH_GUARD), t)
    # updates
    ut = _update_threads(P, nt) if chunked else 1
    if ut > 1:
        fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for k in prange(P.n_params, num_threads=ut, schedule="dynamic", chunksize=1):
            _update_param(P, X, k, rule, lr, h1, h2, eps, c1, c2, wd, 1)
    else:
        for k in range(P.n_params):
            _update_param(P, X, k, rule, lr, h1, h2, eps, c1, c2, wd, nt)
    _ph_mark(P, _ph_other(P, _PH_UPDATE), t)
    return COMPLETED


cdef inline void _update_param(NetPlan *P, const floating *X, int k, int rule, double lr,
                               double h1, double h2, double eps, double c1, double c2,
                               double wd, int nt) noexcept nogil:
    """Parameter k's update (weight decay only where the parameter takes it), on nt threads
    (update_raw's own rule). (X only picks the dtype.)"""
    update_raw(rule, <floating *>P.p_data[k], <const floating *>P.p_grad[k],
               <floating *>P.p_s1[k], <floating *>P.p_s2[k], P.p_n[k], lr, h1, h2, eps, c1,
               c2, wd if P.p_decay[k] else 0.0, nt)


cdef inline void *_saved(NetPlan *P, int l) noexcept nogil:
    """What layer l's activation backward reads: its pre-activation or its output."""
    return P.pre[l] if keeps_pre(P.op[l]) else P.act[l]


cdef inline void *_below_pre(NetPlan *P, int l) noexcept nogil:
    """For the fused backward's dx_into_act over layer l's activations: its pre-activation
    for leaky relu (prelu never sits below the last layer there), NULL when the derivative
    reads the output itself."""
    return P.pre[l] if P.op[l] == FNN_LEAKY else NULL


cdef inline const floating *_input_of(NetPlan *P, const floating *X, int l) noexcept nogil:
    """What layer l reads (its forward's input and its weight gradient's left operand): X
    for the first layer (through the plan's input layer when it applies this step), else
    the output of the layer below, through the dropout between them when it drops this
    step."""
    if l == 0:
        return <const floating *>P.xin if P.in_on else X
    if P.drop_on[l - 1]:
        return <const floating *>P.hin[l - 1]
    return <const floating *>P.act[l - 1]


cdef inline const DropMask *_drop_below(NetPlan *P, int l) noexcept nogil:
    """The mask of the dropout between layers l - 1 and l when it drops this step (layer
    l's dx goes through its backward), else NULL (none, or Gaussian noise: its backward
    passes dx on as it is)."""
    if P.drop_on[l - 1] and P.reg[l - 1].kind == RG_DROPOUT:
        return &P.reg[l - 1].m
    return NULL


cdef inline void _reg_rows(const Regularizer *r, const floating *x, Py_ssize_t ldx,
                           floating *y, Py_ssize_t ldy, Py_ssize_t rows, Py_ssize_t n,
                           Py_ssize_t first, Py_ssize_t ld_index) noexcept nogil:
    """y = the layer r over `rows` rows of n elements of x (y is not x), row i's element j
    being element first + i * ld_index + j of the layer's call over the whole array (below
    2**32: the plan checks its size): each element's value comes from its index and the
    seed (fastnn.functional's dropout and noise), so any cut gives the same numbers."""
    cdef Py_ssize_t i
    if ldx == n and ldy == n and ld_index == n:   # (whole rows: one span of them, one call)
        n = rows * n
        rows = 1
    if r.kind == RG_DROPOUT:
        drop_rows(&r.m, x, ldx, y, ldy, rows, n, first, ld_index)
        return
    for i in range(rows):
        if floating is float:
            fnn_noise_f32(x + i * ldx, y + i * ldy, n, <uint32_t>(first + i * ld_index),
                          r.m.scale, r.m.lo, r.m.hi)
        else:
            fnn_noise_f64(x + i * ldx, y + i * ldy, n, <uint32_t>(first + i * ld_index),
                          r.m.scale, r.m.lo, r.m.hi)


cdef void _reg_forward(const Regularizer *r, const floating *x, floating *y, Py_ssize_t n,
                       int nt) noexcept nogil:
    """y = the layer r over the n elements of x, in the fixed element chunks and on the
    threads of the dropout module's functions (element-wise from the index: the same numbers
    on any thread count, any cut)."""
    cdef bint noise = r.kind == RG_NOISE
    cdef Py_ssize_t c, start, size = reg_chunk(noise)
    cdef Py_ssize_t nch = cdiv(n, size)
    cdef int threads = reg_threads(n, noise, nt)
    if threads <= 1:
        _reg_rows(r, x, n, y, n, 1, n, 0, n)
    else:
        fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for c in prange(nch, num_threads=threads, schedule="static"):
            start = c * size
            _reg_rows(r, x + start, 0, y + start, 0, 1, min(size, n - start), start, 0)


cdef inline int _update_threads(NetPlan *P, int nt) noexcept nogil:
    """Threads for a chunked step's parameter updates: the chunks' threads, one parameter per
    task, when the parameters hold _chunk_update_min_elems elements or more in all and no two
    share memory (tied weights, updated one after the other); else 1 (update_raw's own rule,
    serial for every parameter of a chunked network)."""
    cdef Py_ssize_t total = 0, k
    cdef int ut = _chunk_threads(P, cdiv(P.N, P.chunk), nt)
    if ut <= 1 or P.n_params < 2 or not P.params_apart:
        return 1
    for k in range(P.n_params):
        total += P.p_n[k]
    if total < _chunk_update_min_elems:
        return 1
    return ut if ut < P.n_params else <int>P.n_params


cdef inline int _chunk_threads(NetPlan *P, Py_ssize_t nch, int nt) noexcept nogil:
    """Threads for a chunked step: one per chunk at most; one when the whole step is too
    small to share (its forward products below CHUNK_PARALLEL_FLOPS)."""
    cdef double flops = 0
    cdef int l
    for l in range(P.n_layers):
        flops += 2.0 * P.N * P.fan_in[l] * P.fan_out[l]
    if nt <= 1 or nch <= 1 or flops < CHUNK_PARALLEL_FLOPS:
        return 1
    return nt if nt < nch else <int>nch


cdef Py_ssize_t _chunk_tile_elems(NetPlan *P, const DenseConfig *cfg,
                                  Py_ssize_t itemsize) noexcept nogil:
    """The largest dx tile scratch of a chunked step (dx_tile_need, at least 1): each
    thread's scratch."""
    cdef Py_ssize_t need = 1
    cdef int l
    for l in range(1, P.n_layers):
        need = max(need, dx_tile_need(cfg, P.N, P.fan_in[l], P.fan_out[l], P.op[l - 1],
                                      itemsize))
    return need


cdef void _forward_chunk(NetPlan *P, const DenseConfig *cfg, const floating *X,
                         Py_ssize_t c) noexcept nogil:
    """The forward pass of chunk c's rows through every layer: the tiles of row c of each
    layer's plan (forward_plan: for a layer in row chunks, never in parts of its inner
    dimension), exactly as dense_forward_raw computes them, each layer's through the dropout
    above it when there is one (those rows of _reg_forward's); the input layer first."""
    cdef int l
    cdef Py_ssize_t j, N = P.N, M, r0
    cdef const floating *inp = X
    cdef Plan p
    if P.in_on:   # (the input layer over the chunk's rows: those of the first layer's plan)
        p = forward_plan(cfg, N, P.fan_out[0], P.fan_in[0])
        r0 = c * p.tr
        _reg_rows(&P.inl, X + r0 * P.fan_in[0], 0, <floating *>P.xin + r0 * P.fan_in[0], 0,
                  1, min(p.tr, N - r0) * P.fan_in[0], r0 * P.fan_in[0], 0)
        inp = _input_of(P, X, 0)
    for l in range(P.n_layers):
        M = P.fan_out[l]
        p = forward_plan(cfg, N, M, P.fan_in[l])
        for j in range(p.nc):
            forward_tile(p, c * p.nc + j, P.op[l], keeps_pre(P.op[l]), N, M,
                         P.fan_in[l], inp, <const floating *>P.W[l], <const floating *>P.b[l],
                         <floating *>_saved(P, l), <floating *>P.act[l], P.alpha[l],
                         <const floating *>P.avec[l])
        if P.drop_on[l]:
            r0 = c * p.tr
            _reg_rows(&P.reg[l], <const floating *>P.act[l] + r0 * M, M,
                      <floating *>P.hin[l] + r0 * M, M, min(p.tr, N - r0), M, r0 * M, M)
        inp = _input_of(P, X, l + 1)


cdef void _backward_chunk(NetPlan *P, const DenseConfig *cfg, const floating *X, Py_ssize_t c,
                          floating *scratch) noexcept nogil:
    """The backward pass of chunk c's rows through every layer, as _backward_fused computes
    them for the whole batch: the same blocks (the chunks) of each layer's bias-gradient
    sums, the same per-chunk weight-gradient products, the same dx tiles (row c of each
    plan) through this thread's scratch into the activations below. Chunk 0's weight
    gradient goes into dW, the other chunks' into their partials (summed by _sum_chunks),
    or, for a layer whose chunks take turns (dw_in_turns), added into dW in chunk order as
    on the layer path: chunk c waits for its turn (chunk c - 1 has added its product) and
    passes it on. Each thread runs its chunks in increasing order and a chunk only waits
    for earlier ones, so the turns cannot deadlock (_run_chunks). In a step that updates in
    its chunks' region (count_done), the chunk then counts itself done with each layer in
    layer_done (_take_updates waits for those counts)."""
    cdef int L = P.n_layers, l
    cdef Py_ssize_t j, N = P.N, ch = P.chunk, D, M
    cdef floating *g
    cdef bint turns
    cdef Plan px
    if (_hold_last_chunk and P.count_done and c == cdiv(N, ch) - 1
            and fnn_omp_get_num_threads() > 1):
        fnn_wait_above(&P.update_next, 0)   # (tests: _hold_last_chunk; a team of one thread,
                                            # which OpenMP may give, would wait forever)
    for l in range(L - 1, -1, -1):
        D = P.fan_in[l]
        M = P.fan_out[l]
        if l == L - 1:
            g = <floating *>P.dact0
            backward_block(c, ch, P.op[l], g, <const floating *>_saved(P, l), g, P.alpha[l],
                           <const floating *>P.avec[l], <floating *>P.partial + P.poff[l],
                           <floating *>P.apartial, N, M)
        else:
            g = <floating *>P.act[l]   # dz, written there by the layer above
            backward_block(c, ch, FNN_IDENTITY, g, <const floating *>NULL, <floating *>NULL,
                           0.0, <const floating *>NULL, <floating *>P.partial + P.poff[l],
                           <floating *>NULL, N, M)
        turns = dw_in_turns(ch, D)
        if turns:
            fnn_turn_wait(&P.dw_turn[l], <int>c)
        dw_chunk(c, ch, N, D, M, g, _input_of(P, X, l),
                 dw_chunk_dst(c, ch, D, M, <floating *>P.dW[l],
                              <floating *>P.wslots + P.woff[l]), cfg.thin, turns and c > 0)
        if turns:
            fnn_turn_pass(&P.dw_turn[l], <int>(c + 1))
        if l > 0:
            px = row_plan(cfg, N, D, M, dx_tile_bound(cfg, P.op[l - 1]))
            for j in range(px.nc):
                dx_into_act_tile(px, c * px.nc + j, N, D, M, g, <const floating *>P.W[l],
                                 scratch, P.op[l - 1], <floating *>P.act[l - 1],
                                 <const floating *>_below_pre(P, l - 1), P.alpha[l - 1],
                                 _drop_below(P, l))
        if P.count_done:
            fnn_count_add(&P.layer_done[l])   # (_run_updating: chunk c is done with layer l)


cdef void _chunk(NetPlan *P, const DenseConfig *cfg, const floating *X, const Py_ssize_t *labels,
                 const floating *targets, Py_ssize_t c, floating *scratch,
                 int part) noexcept nogil:
    """Chunk c's rows through the whole step but the bias sums: forward and loss (loss_rows:
    the rows' losses, hits and dscores), backward, or both (part: CHUNK_*)."""
    cdef Py_ssize_t r0 = c * P.chunk
    if part & CHUNK_FORWARD:
        _forward_chunk(P, cfg, X, c)
        loss_rows(P.loss_kind, r0, min(r0 + P.chunk, P.N),
                  <const floating *>P.act[P.n_layers - 1], P.N, P.fan_out[P.n_layers - 1],
                  labels, targets, <floating *>P.dact0, P.groups, P.hits)
    if part & CHUNK_BACKWARD:
        _backward_chunk(P, cfg, X, c, scratch)


cdef inline int _chunk_team(NetPlan *P, Py_ssize_t nch, int nt, Py_ssize_t stride,
                            bint backward) noexcept nogil:
    """The threads of a chunked step's parallel region (_chunk_threads, as many as the scratch
    holds tiles of `stride` elements for), with the turns of its backward pass reset (the
    region's start orders these stores)."""
    cdef int threads = _chunk_threads(P, nch, nt), l
    if backward:
        for l in range(P.n_layers):
            P.dw_turn[l] = 0
    if threads > P.scratch_elems // stride:
        threads = <int>(P.scratch_elems // stride)   # never write past the scratch (_step
                                                     # checked that it holds one tile)
    return threads


cdef double _run_chunks(NetPlan *P, const DenseConfig *cfg, const floating *X,
                        const Py_ssize_t *labels, const floating *targets, Py_ssize_t stride,
                        int nt, int part) noexcept nogil:
    """`part` (CHUNK_*) of every chunk (_chunk), a chunk per thread (each with `stride`
    elements of the scratch, _chunk_tile_elems), in one parallel region; returns the mean
    loss (when the forward part ran)."""
    cdef Py_ssize_t c, nch = cdiv(P.N, P.chunk)
    cdef int threads = _chunk_team(P, nch, nt, stride, part & CHUNK_BACKWARD)
    if threads <= 1:
        for c in range(nch):
            _chunk(P, cfg, X, labels, targets, c, <floating *>P.scratch, part)
    else:
        # static, one chunk at a time: each thread runs its chunks in increasing order (a
        # monotonic schedule), which the turns of _backward_chunk rely on: the lowest
        # unfinished chunk never waits, so there is no deadlock (a nonmonotonic dynamic
        # schedule, e.g. libomp's work stealing, would still finish, but could run turns
        # nearly serially)
        fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for c in prange(nch, num_threads=threads, schedule="static", chunksize=1):
            _chunk(P, cfg, X, labels, targets, c,
                   <floating *>P.scratch + fnn_omp_get_thread_num() * stride, part)
    return loss_total(P.loss_kind, P.N, P.groups) if part & CHUNK_FORWARD else 0.0


cdef inline bint _updates_in_chunks(NetPlan *P, int nt) noexcept nogil:
    """Whether a chunked step (unguarded: fit's guard checks every gradient before any update)
    runs its updates in its chunks' parallel region (_run_updating): when they are shared at
    all (_update_threads), the plan allows it (updates_ok), the scratch holds a tile for two
    threads or more, and every layer's chunks take turns (dw_in_turns), so that a layer's
    weight gradient is complete once its chunks are done with it (a layer that keeps
    partials needs _sum_chunks, after the region)."""
    cdef int l
    if not P.updates_ok or _update_threads(P, nt) <= 1 or P.scratch_elems < 2 * P.chunk_stride:
        return False
    for l in range(P.n_layers):
        if not dw_in_turns(P.chunk, P.fan_in[l]):
            return False
    return True


cdef double _run_updating(NetPlan *P, const DenseConfig *cfg, const floating *X,
                          const Py_ssize_t *labels, const floating *targets, Py_ssize_t stride,
                          int nt, int rule, double lr, double h1, double h2, double eps,
                          double c1, double c2, double wd) noexcept nogil:
    """Every chunk's forward, loss and backward (_run_chunks' CHUNK_BOTH), then the parameter
    updates, in one parallel region: each thread, done with its chunks, takes parameters to
    update (_take_updates) while the others finish theirs. The backward pass ends with the
    first layer, so the last layers' updates run beside the last chunk's final weight-gradient
    turns, which used to leave the other threads idle; the updates no longer wait for a second
    parallel region (64-64-64-10 (32), 2 threads: 1.0-1.1 us less a step on a quiet machine
    in paired interleaved rounds and process pairs, 3-4 us less with a busy core; batch 256:
    no change in quiet rounds, 3.9 us less in a noisy run of process pairs). The same
    element-wise updates and bias sums as _sum_chunks and the update loop of _step: the same
    numbers. Returns the mean loss."""
    cdef Py_ssize_t c, nch = cdiv(P.N, P.chunk)
    cdef int threads = _chunk_team(P, nch, nt, stride, True), l   # (2 or more:
                                                                  # _updates_in_chunks)
    for l in range(P.n_layers):
        P.layer_done[l] = 0
    P.update_next = 0
    P.count_done = True
    fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
    with parallel(num_threads=threads):
        # (static, one chunk at a time, each thread's chunks in increasing order: as in
        # _run_chunks, for the turns. Cython ends a prange inside a parallel block without a
        # barrier: each thread goes on to the updates as soon as its own chunks are done.)
        for c in prange(nch, schedule="static", chunksize=1):
            _chunk(P, cfg, X, labels, targets, c,
                   <floating *>P.scratch + fnn_omp_get_thread_num() * stride, CHUNK_BOTH)
        _take_updates(P, X, <int>nch, rule, lr, h1, h2, eps, c1, c2, wd)
    P.count_done = False
    return loss_total(P.loss_kind, P.N, P.groups)


cdef void _take_updates(NetPlan *P, const floating *X, int nch, int rule, double lr, double h1,
                        double h2, double eps, double c1, double c2, double wd) noexcept nogil:
    """A thread of _run_updating done with its chunks: it takes the parameters one at a time
    (p_order: the last layer's first, the order the backward pass finishes them), waits until
    every chunk is done with the parameter's layer (its weight gradient complete, its weights
    read for the last time by the chunks' dx products; its bias partials written), sums a
    bias's gradient from the chunks' partials in chunk order (as _sum_chunks), and updates the
    parameter. Only threads done with all their chunks wait here, and a chunk waits only for
    earlier chunks' turns (or, held for tests, for a thread here to take a parameter, in a
    team of several), so every count reaches nch: no deadlock."""
    cdef int t, k, l
    while True:
        t = fnn_count_add(&P.update_next)
        if t >= P.n_params:
            return
        k = P.p_order[t]
        l = P.p_layer[k]
        fnn_turn_wait(&P.layer_done[l], nch)
        if P.p_bias[k]:
            _sum_bias(P, X, l, nch)
        _update_param(P, X, k, rule, lr, h1, h2, eps, c1, c2, wd, 1)


cdef inline void _sum_bias(NetPlan *P, const floating *X, int l, Py_ssize_t nch) noexcept nogil:
    """Layer l's bias gradient (and prelu slope gradient) from its nch chunks' partial sums, in
    chunk order. (The layers below the last summed their dz as the identity's: see
    _backward_chunk. X only picks the dtype.)"""
    sum_block_partials(P.op[l] if l == P.n_layers - 1 else FNN_IDENTITY, <floating *>P.db[l],
                       <floating *>P.dalpha[l], <floating *>P.partial + P.poff[l],
                       <floating *>P.apartial, nch, P.fan_out[l])


cdef void _sum_chunks(NetPlan *P, const floating *X) noexcept nogil:
    """Each layer's gradients from its chunks' partials, summed in chunk order as
    backward_pass1 (bias, prelu slope) and backward_products (weights) sum them (weights
    whose chunks took turns are summed already). (X only picks the dtype.)"""
    cdef int L = P.n_layers, l
    cdef Py_ssize_t nch = cdiv(P.N, P.chunk)
    for l in range(L):
        _sum_bias(P, X, l, nch)
        dw_sum_chunks(nch, P.chunk, P.fan_in[l], P.fan_out[l], <floating *>P.dW[l],
                      <floating *>P.wslots + P.woff[l])


cdef void _backward_fused(NetPlan *P, const DenseConfig *cfg, const floating *X,
                          int nt, bint early, int rule, double lr, double h1, double h2,
                          double eps, double c1, double c2, double wd) noexcept nogil:
    """The backward pass without an N x width gradient buffer: dscores (dact0) are the last
    layer's dz; every layer l >= 1 computes dw = act[l-1].T @ dz first, then its dx tile by
    tile into a scratch tile and from there, times the activation derivative of layer l-1,
    over act[l-1] (which dw no longer needs): that is layer l-1's dz, and its bias gradient
    is its column sums. The same tiles and element-wise formulas as _backward_buffers: the
    same numbers. With `early`, each layer's parameters are updated (rule and
    hyperparameters) once its dx is done, the last layer's first: the caller has checked
    that each parameter is one layer's W or b and that none shares memory with another."""
    cdef int L = P.n_layers, l, k
    cdef Py_ssize_t N = P.N
    cdef floating *g
    cdef double t = _ph_tick(P)
    for l in range(L - 1, -1, -1):
        if l == L - 1:
            g = <floating *>P.dact0
            backward_pass1(P.op[l], g, <const floating *>_saved(P, l), g,
                           P.alpha[l], <const floating *>P.avec[l], <floating *>P.db[l],
                           <floating *>P.dalpha[l], <floating *>P.partial + P.poff[l],
                           <floating *>P.apartial, P.rb[l], N, P.fan_out[l], nt)
        else:
            g = <floating *>P.act[l]   # dz, written there by the layer above
            backward_pass1(FNN_IDENTITY, g, <const floating *>NULL, <floating *>NULL, 0.0,
                           <const floating *>NULL, <floating *>P.db[l], <floating *>NULL,
                           <floating *>P.partial + P.poff[l], <floating *>P.apartial, P.rb[l],
                           N, P.fan_out[l], nt)
        t = _ph_mark(P, _ph_layer(P, _PH_BIAS, l), t)
        backward_products(cfg, g, _input_of(P, X, l),
                          <const floating *>P.W[l], <floating *>NULL, <floating *>P.dW[l],
                          <floating *>P.wslots + P.woff[l], N, P.fan_in[l], P.fan_out[l], nt)
        t = _ph_mark(P, _ph_layer(P, _PH_DW, l), t)
        if l > 0:
            dx_into_act(cfg, N, P.fan_in[l], P.fan_out[l], g, <const floating *>P.W[l],
                        <floating *>P.scratch, P.scratch_elems, P.op[l - 1],
                        <floating *>P.act[l - 1], <const floating *>_below_pre(P, l - 1),
                        P.alpha[l - 1], nt, _drop_below(P, l))
            t = _ph_mark(P, _ph_layer(P, _PH_DX, l), t)
        if early:
            for k in range(P.n_params):
                if P.p_layer[P.p_order[k]] == l:
                    _update_param(P, X, P.p_order[k], rule, lr, h1, h2, eps, c1, c2, wd, nt)
            t = _ph_mark(P, _ph_other(P, _PH_UPDATE), t)


cdef void _backward_buffers(NetPlan *P, const DenseConfig *cfg, const floating *X,
                            int nt) noexcept nogil:
    """The backward pass through two alternating N x width gradient buffers, for networks
    with a prelu layer below the last (its slope gradient needs the incoming gradient itself,
    which the fused pass never keeps)."""
    cdef int L = P.n_layers, l
    cdef Py_ssize_t N = P.N
    cdef const floating *saved
    cdef floating *dout
    cdef floating *dx
    cdef floating *spare
    cdef double t = _ph_tick(P)
    cdef DenseConfig lc = cfg[0]   # (each layer's dx tiles bounded as the layer path's:
                                   # by the activation of the layer below, dx_tile_bound)
    dout = <floating *>P.dact0
    dx = <floating *>P.dact1
    spare = <floating *>P.dact0
    for l in range(L - 1, -1, -1):
        saved = <const floating *>_saved(P, l)
        if l > 0:
            lc.max_tile_elems = dx_tile_bound(cfg, P.op[l - 1])
        dense_backward_raw(&lc, P.op[l], dout, saved, _input_of(P, X, l),
                           <const floating *>P.W[l], dx if l > 0 else NULL,
                           <floating *>P.dW[l], <floating *>P.db[l], dout,
                           P.alpha[l], <const floating *>P.avec[l], <floating *>P.dalpha[l],
                           <floating *>P.partial + P.poff[l], <floating *>P.apartial,
                           <floating *>P.wslots + P.woff[l], P.rb[l],
                           N, P.fan_in[l], P.fan_out[l], nt)
        t = _ph_mark(P, _ph_layer(P, _PH_BWD, l), t)
        dout = dx
        dx = spare
        spare = dout


cdef void *_ptr(object arr):
    return NULL if arr is None else <void *><size_t>arr.ctypes.data


class ArraysChanged(ValueError):
    """An array users can reach (a parameter, gradient or optimizer state) that the plan would
    write is read-only (StepPlan.__init__), or is no longer writeable, C-contiguous, or of the
    shape, dtype or memory it had when the plan was built (StepPlan.step: nothing was
    computed). fastnn.model then builds again from the arrays as they are now, or runs the
    layer path, whose checks name the array."""


cdef struct Watched:
    PyObject *arr     # (a reference held by StepPlan._refs)
    PyObject *dtype   # its dtype at build time (a reference held by StepPlan._watched_dtypes)
    void *data
    size_t nbytes
    int ndim
    Py_ssize_t shape[2]


class InputOverlaps(Exception):
    """StepPlan.step's X, labels or targets share memory with an array the plan reads or writes
    (a parameter, gradient or optimizer state: training on the model's own weights): nothing
    was computed. fastnn.model steps again on copies, as NumPy copies overlapping operands."""


cdef inline bint _spans_meet(const char *a, size_t na, const char *b, size_t nb) noexcept nogil:
    # (compared as integers: the arrays may be different objects)
    cdef uintptr_t pa = <uintptr_t>a, pb = <uintptr_t>b
    return na > 0 and nb > 0 and pa < pb + nb and pb < pa + na


# a '<' format prefix (little-endian, standard sizes) is native on this machine
cdef bint _LITTLE_ENDIAN = sys.byteorder == "little"


cdef bint _format_is(const char *fmt, char code) noexcept:
    """Whether a buffer's struct format is one item of `code` in native byte order: 'f'
    (float32), 'd' (float64), or 'n' (a signed integer; the caller checks its size)."""
    if fmt == NULL:
        return False
    if fmt[0] == b'@' or fmt[0] == b'=' or (fmt[0] == b'<' and _LITTLE_ENDIAN):
        fmt += 1
    if fmt[0] == 0 or fmt[1] != 0:
        return False
    if code == b'n':
        return fmt[0] in b'bhilqn'
    return fmt[0] == code


cdef int _input_buffer(object obj, Py_buffer *v, char code, Py_ssize_t itemsize, int ndim,
                       str name, str what) except -1:
    """Take obj's buffer for a step to read (held until PyBuffer_Release(v)): C-contiguous,
    `ndim` dimensions, items of `code` (_format_is) and `itemsize` bytes, else a TypeError or
    ValueError naming `name`, with nothing held. The buffer protocol allocates nothing, where a
    typed memoryview is a Python object of ~200 bytes made on every step (and ~0.1 us)."""
    cdef char fmt[16]
    cdef int k, dims
    try:
        PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {type(obj).__name__}") from None
    except (BufferError, ValueError) as exc:
        # (not C-contiguous, or a dtype NumPy exports no buffer for: its own words say which)
        raise ValueError(f"{name} must be a C-contiguous array ({what}): {exc}") from None
    if v.ndim == ndim and v.itemsize == itemsize and _format_is(v.format, code):
        return 0
    # refused: copy what the message needs and release before anything allocates
    dims = v.ndim
    fmt[0] = 0
    if v.format != NULL:
        k = 0
        while k < 15 and v.format[k] != 0:
            fmt[k] = v.format[k]
            k += 1
        fmt[k] = 0
    PyBuffer_Release(v)
    raise ValueError(f"{name} must be {what}, got {dims} dimension(s) of items "
                     f"{(<bytes>fmt).decode('ascii', 'replace')!r}")


cdef bint _byte_span(object a, const char **lo, size_t *n) except -1:
    """The bytes array `a` (any strides) spans: [lo, lo + n); False when `a` exports no buffer."""
    cdef Py_buffer v
    cdef Py_ssize_t d, low = 0, high = 0
    try:
        PyObject_GetBuffer(a, &v, PyBUF_STRIDES)
    except (BufferError, ValueError, TypeError):
        return False
    try:
        n[0] = 0
        lo[0] = <const char *>v.buf
        for d in range(v.ndim):
            if v.shape[d] == 0:
                return True
            if v.strides[d] < 0:
                low += v.strides[d] * (v.shape[d] - 1)
            else:
                high += v.strides[d] * (v.shape[d] - 1)
        lo[0] = <const char *>v.buf + low
        n[0] = <size_t>(high - low + v.itemsize)
        return True
    finally:
        PyBuffer_Release(&v)


def meeting(list arrays, list others):
    """The indexes k of `arrays` whose bytes meet those of any of `others` (by extents, like
    shares_bytes; ~25 ns an array): Optimizer.step's check that no gradient is (part of) a
    parameter it updates."""
    cdef Py_ssize_t n = len(others), k, j
    cdef const char *p
    cdef size_t m
    cdef const char **lo = <const char **>calloc(max(n, 1), sizeof(char *))
    cdef size_t *size = <size_t *>calloc(max(n, 1), sizeof(size_t))
    cdef list out = []
    if lo == NULL or size == NULL:
        free(lo)
        free(size)
        raise MemoryError()
    try:
        for j in range(n):
            if not _byte_span(others[j], &lo[j], &size[j]):
                size[j] = 0
        for k in range(len(arrays)):
            if _byte_span(arrays[k], &p, &m):
                for j in range(n):
                    if _spans_meet(p, m, lo[j], size[j]):
                        out.append(k)
                        break
    finally:
        free(lo)
        free(size)
    return out


cdef struct _Span:
    uintptr_t lo
    uintptr_t hi
    Py_ssize_t k


cdef int _span_order(const void *a, const void *b) noexcept nogil:
    cdef uintptr_t x = (<const _Span *>a).lo, y = (<const _Span *>b).lo
    cdef Py_ssize_t i = (<const _Span *>a).k, j = (<const _Span *>b).k
    if x != y:
        return -1 if x < y else 1
    return -1 if i < j else (1 if i > j else 0)


def meeting_pair(list arrays, list flagged):
    """A pair (i, j), i < j, of `arrays` whose bytes meet (by extents, like shares_bytes) with
    flagged[i] or flagged[j] true, or None: Optimizer.step's check that no state array (the
    flagged ones) shares memory with another array of the step. Arrays that export no buffer,
    or hold no bytes, meet nothing. By a sort of the extents, O(n log n) for arrays that are
    apart (each array is compared with those that start inside it)."""
    cdef Py_ssize_t n = len(arrays), m = 0, a, b
    cdef const char *lo
    cdef size_t size
    cdef _Span *spans
    if len(flagged) != n:
        raise ValueError("meeting_pair: flagged must have one entry per array")
    spans = <_Span *>calloc(max(n, 1), sizeof(_Span))
    if spans == NULL:
        raise MemoryError()
    try:
        for a in range(n):
            if _byte_span(arrays[a], &lo, &size) and size > 0:
                spans[m].lo = <uintptr_t>lo
                spans[m].hi = <uintptr_t>lo + size
                spans[m].k = a
                m += 1
        qsort(spans, m, sizeof(_Span), _span_order)
        for a in range(m):
            b = a + 1
            while b < m and spans[b].lo < spans[a].hi:
                if flagged[spans[a].k] or flagged[spans[b].k]:
                    return (min(spans[a].k, spans[b].k), max(spans[a].k, spans[b].k))
                b += 1
        return None
    finally:
        free(spans)


def shares_bytes(X, arrays):
    """Whether array X's bytes meet those of any array in `arrays` (None entries skipped; by
    their extents, like np.may_share_memory, at ~30 ns an array): the layer path's check that
    a training step's input is none of the gradients it writes."""
    cdef const char *xp
    cdef const char *ap
    cdef size_t xn, an
    if not _byte_span(X, &xp, &xn) or xn == 0:
        return False
    for a in arrays:
        if a is not None and _byte_span(a, &ap, &an) and _spans_meet(xp, xn, ap, an):
            return True
    return False


cdef class ThreadGovernor:
    """The training step's thread governor (fastnn_governor.pxd). A StepPlan's `governor` is
    driven by the plan's measured step times; from Python, by the caller's (tests)."""
    cdef Governor g

    def threads(self, int limit):
        """The thread count for the next step, at most `limit` (>= 1)."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return gov_threads(&self.g, limit)

    def record(self, int used, double seconds):
        """Report that a step run with `used` threads took `seconds`."""
        gov_record(&self.g, used, seconds)

    def set_current(self, int count):
        """Run `count` threads (1 to the limit) from now on, measured afresh as by a new
        limit (a first window, a probe after the second) but keeping the probe count and the
        backoff (tests)."""
        if not 1 <= count <= self.g.limit:
            raise ValueError(f"count must be in [1, {self.g.limit}], got {count}")
        gov_set_current(&self.g, count)

    def reset(self, int limit):
        """Start afresh for `limit` threads."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        gov_reset(&self.g, limit)

    @property
    def current(self):
        """The count in use between probes."""
        return self.g.cur

    @property
    def probe(self):
        """The count being probed (0: none; see `phase`)."""
        return self.g.probe

    @property
    def phase(self):
        """"idle", "try" (the first probe window), "back" (cur between the probe windows) or
        "again" (the second probe window)."""
        return ("idle", "try", "back", "again")[self.g.phase]

    @property
    def probes(self):
        """Probes started since the last reset."""
        return self.g.probes

    @property
    def backoff(self):
        """What the spacing of probes is multiplied by (1 to 8; doubles after each loss)."""
        return self.g.backoff

    @property
    def scale(self):
        """How many times 10 ms a window spans at least (1 to 16)."""
        return self.g.scale


cdef void _set_layer(Regularizer *r, tuple t):
    """A regularizing layer's settings of one step (StepPlan._parse_layer's tuple)."""
    r.m.limit = t[0]
    r.m.lo = t[1]
    r.m.hi = t[2]
    r.m.scale = t[3]


cdef class StepPlan:
    """The compiled training step of one network for one batch size (see fastnn/model.py)."""

    cdef NetPlan P
    cdef readonly bint is_double
    cdef readonly int rule
    cdef list _refs
    cdef object _scratch         # fused backward: the per-thread dx tiles (grown on demand)
    cdef object _partial         # the workspaces of _size_buffers (grown on demand)
    cdef object _apartial
    cdef object _wslots
    cdef Py_ssize_t _partial_elems, _apartial_elems, _wslots_elems   # their sizes (0: none yet;
                                 # read in C on every step, not as Python shape tuples)
    cdef object _hits            # the groups' counts of right predictions (made on demand)
    cdef unsigned char *_hits_at # its data (taken once: ndarray.ctypes costs ~1 us a step)
    cdef readonly tuple score_shape   # (N, outputs of the last layer)
    cdef readonly bint scores_in_place   # dscores are written over the scores
    cdef readonly Py_ssize_t correct  # the last step's count of right predictions (-1: not
                                      # counted)
    cdef readonly bint stopped   # the last step's guard stopped it before any update
    cdef readonly Py_ssize_t updates   # steps that updated the parameters, counted as the
                                       # kernel returns (model.py: what an interrupt left)
    cdef readonly int step_threads   # the thread count the last step ran with (n_threads, or
                                     # fewer the governor chose; 0: no step yet)
    cdef readonly bint updates_in_chunks   # the last step ran its updates in its chunks'
                                           # parallel region (_run_updating)
    cdef readonly bint updates_in_backward   # the last step updated each layer's parameters
                                             # in the fused backward pass (_backward_fused)
    cdef readonly ThreadGovernor governor   # picks the thread count when step's `dynamic`
    cdef bint _busy              # a step is running (its buffers are in use)
    cdef bint _ready             # __init__ completed (a plan whose __init__ raised or never
                                 # ran has NULL buffers: step refuses it)
    cdef Watched *_watched       # the parameters, gradients and optimizer state (arrays users
    cdef int _n_watched          # can reach) as they were at build time, checked every step
    cdef list _watched_dtypes
    cdef list _drop_layers       # the layers a Dropout or GaussianNoise follows (hin), bottom up
    cdef object _phases          # time_phases: the seconds of each phase (P.phase), or None
    cdef Py_ssize_t _phase_steps # the steps timed since

    cdef int _check_ready(self) except -1:
        """A RuntimeError unless __init__ completed: a plan whose __init__ raised or never ran
        has NULL buffers and no layer count (step, time_phases)."""
        if not self._ready:
            raise RuntimeError("StepPlan was not initialized (its __init__ never ran or failed)")
        return 0

    def __cinit__(self):
        memset(&self.P, 0, sizeof(NetPlan))
        self.governor = ThreadGovernor()

    def __init__(self, dtype, Py_ssize_t N, int loss_kind, list layers, list params, int rule,
                 int input_kind=RG_NONE):
        """layers: dicts with W, b, op, alpha, avec, dalpha, dW, db (arrays of `dtype`), and
        dropout or noise (optional, true: a Dropout or a GaussianNoise follows the layer,
        below the next one; its settings and seed come with each step); params: (data, grad,
        s1, s2, decay) for every parameter, in update order; input_kind: 1 for a Dropout, 2
        for a GaussianNoise layer over X (its settings and seed come with each step), 0 for
        none."""
        cdef int L = len(layers), l, k
        cdef Py_ssize_t width = 0, m
        dt = np.dtype(dtype)
        if dt != np.float32 and dt != np.float64:
            raise TypeError("StepPlan: dtype must be float32 or float64")
        if L < 1 or N < 1:
            raise ValueError("StepPlan: need at least one layer and one row")
        if rule < RULE_SGD or rule > RULE_ADAM:
            raise ValueError("StepPlan: unknown rule")
        if loss_kind < LOSS_SOFTMAX or loss_kind > LOSS_MSE:
            raise ValueError("StepPlan: unknown loss")
        if N > 2**31 - 1:
            raise ValueError("StepPlan: the batch must have fewer than 2**31 rows")
        if self.P.fan_in != NULL:
            raise RuntimeError("StepPlan is already initialized")
        if input_kind < RG_NONE or input_kind > RG_NOISE:
            raise ValueError("StepPlan: unknown input layer")
        self.is_double = dt == np.float64
        self.rule = rule
        self._refs = []
        P = &self.P
        P.n_layers = L
        P.N = N
        P.loss_kind = loss_kind
        # (the plan's descriptors from Python's raw allocator, which tracemalloc traces, so
        # that the benchmark's memory column counts them: ~1 KB at 2-100-3; freed in
        # __dealloc__)
        P.fan_in = <Py_ssize_t *>PyMem_RawCalloc(L, sizeof(Py_ssize_t))
        P.fan_out = <Py_ssize_t *>PyMem_RawCalloc(L, sizeof(Py_ssize_t))
        P.op = <int *>PyMem_RawCalloc(L, sizeof(int))
        P.rb = <Py_ssize_t *>PyMem_RawCalloc(L, sizeof(Py_ssize_t))
        P.poff = <Py_ssize_t *>PyMem_RawCalloc(L, sizeof(Py_ssize_t))
        P.woff = <Py_ssize_t *>PyMem_RawCalloc(L, sizeof(Py_ssize_t))
        P.dw_turn = <int *>PyMem_RawCalloc(L, sizeof(int))
        P.layer_done = <int *>PyMem_RawCalloc(L, sizeof(int))
        P.alpha = <double *>PyMem_RawCalloc(L, sizeof(double))
        P.W = <void **>PyMem_RawCalloc(L, sizeof(void *))
        P.b = <void **>PyMem_RawCalloc(L, sizeof(void *))
        P.dW = <void **>PyMem_RawCalloc(L, sizeof(void *))
        P.db = <void **>PyMem_RawCalloc(L, sizeof(void *))
        P.avec = <void **>PyMem_RawCalloc(L, sizeof(void *))
        P.dalpha = <void **>PyMem_RawCalloc(L, sizeof(void *))
        P.act = <void **>PyMem_RawCalloc(L, sizeof(void *))
        P.pre = <void **>PyMem_RawCalloc(L, sizeof(void *))
        P.hin = <void **>PyMem_RawCalloc(L, sizeof(void *))
        P.reg = <Regularizer *>PyMem_RawCalloc(L, sizeof(Regularizer))
        P.drop_on = <unsigned char *>PyMem_RawCalloc(L, sizeof(unsigned char))
        self._drop_layers = []
        n = len(params)
        P.n_params = n
        P.p_data = <void **>PyMem_RawCalloc(max(n, 1), sizeof(void *))
        P.p_grad = <void **>PyMem_RawCalloc(max(n, 1), sizeof(void *))
        P.p_s1 = <void **>PyMem_RawCalloc(max(n, 1), sizeof(void *))
        P.p_s2 = <void **>PyMem_RawCalloc(max(n, 1), sizeof(void *))
        P.p_n = <Py_ssize_t *>PyMem_RawCalloc(max(n, 1), sizeof(Py_ssize_t))
        P.p_decay = <int *>PyMem_RawCalloc(max(n, 1), sizeof(int))
        P.p_layer = <int *>PyMem_RawCalloc(max(n, 1), sizeof(int))
        P.p_bias = <int *>PyMem_RawCalloc(max(n, 1), sizeof(int))
        P.p_order = <int *>PyMem_RawCalloc(max(n, 1), sizeof(int))
        if (P.fan_in == NULL or P.fan_out == NULL or P.op == NULL or P.rb == NULL or P.poff == NULL
                or P.woff == NULL or P.dw_turn == NULL or P.layer_done == NULL
                or P.p_layer == NULL or P.p_bias == NULL or P.p_order == NULL
                or P.alpha == NULL or P.W == NULL
                or P.b == NULL or P.dW == NULL or P.db == NULL or P.avec == NULL or P.dalpha == NULL
                or P.act == NULL or P.pre == NULL or P.hin == NULL or P.reg == NULL
                or P.drop_on == NULL or P.p_data == NULL
                or P.p_grad == NULL or P.p_s1 == NULL or P.p_s2 == NULL or P.p_n == NULL
                or P.p_decay == NULL):
            raise MemoryError()

        def keep(a, shape=None, dtype=dt, required=False):
            if a is None and required:   # (b, dW, db, a parameter and its gradient: the kernels
                                         # read or write them on every step)
                raise ValueError("StepPlan: an array every step uses is None")
            if a is not None:
                if type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous:
                    raise ValueError("StepPlan: arrays must be C-contiguous and of the plan's dtype")
                if not a.flags.writeable:
                    raise ArraysChanged("StepPlan: arrays must be writeable")
                if shape is not None and a.shape != shape:
                    raise ValueError(f"StepPlan: an array has shape {a.shape}, expected {shape}")
                self._refs.append(a)
            return a

        for l, spec in enumerate(layers):
            W = spec["W"]
            if type(W) is not np.ndarray or W.ndim != 2 or W.shape[0] < 1 or W.shape[1] < 1:
                raise ValueError("StepPlan: W must be a 2-D array with both dimensions >= 1")
            if W.shape[0] > 2**31 - 1 or W.shape[1] > 2**31 - 1:
                raise ValueError("StepPlan: layer widths must be below 2**31")
            keep(W)
            m = W.shape[1]
            P.fan_in[l] = W.shape[0]
            P.fan_out[l] = m
            if l > 0 and P.fan_in[l] != P.fan_out[l - 1]:
                raise ValueError("StepPlan: layer widths do not chain")
            P.op[l] = spec["op"]
            P.alpha[l] = spec["alpha"]
            P.W[l] = _ptr(W)
            P.b[l] = _ptr(keep(spec["b"], (m,), required=True))
            P.dW[l] = _ptr(keep(spec["dW"], W.shape, required=True))
            P.db[l] = _ptr(keep(spec["db"], (m,), required=True))
            P.avec[l] = _ptr(keep(spec.get("avec"), (m,)))
            P.dalpha[l] = _ptr(keep(spec.get("dalpha"), (m,)))
            if P.op[l] == FNN_PRELU and (P.avec[l] == NULL or P.dalpha[l] == NULL):
                raise ValueError("StepPlan: prelu layers need avec and dalpha")
            out = keep(np.empty((N, m), dtype=dt))
            P.act[l] = _ptr(out)
            if l == L - 1:
                self.score_shape = (N, m)
            if keeps_pre(P.op[l]):
                P.pre[l] = _ptr(keep(np.empty((N, m), dtype=dt)))
            if spec.get("dropout") or spec.get("noise"):
                if spec.get("dropout") and spec.get("noise"):
                    raise ValueError("StepPlan: a layer has a dropout or a noise above it, not both")
                if l == L - 1:
                    raise ValueError("StepPlan: a dropout or noise must be below another layer")
                if N * m > 4294967295:
                    raise ValueError("dropout and noise support at most 2**32 - 1 elements per call")
                P.hin[l] = _ptr(keep(np.empty((N, m), dtype=dt)))
                P.reg[l].kind = RG_DROPOUT if spec.get("dropout") else RG_NOISE
                self._drop_layers.append(l)
            width = max(width, m)     # every layer's output gradient; inputs of layers >= 1
        if input_kind != RG_NONE:
            if N * P.fan_in[0] > 4294967295:
                raise ValueError("dropout and noise support at most 2**32 - 1 elements per call")
            P.inl.kind = input_kind
            P.xin = _ptr(keep(np.empty((N, P.fan_in[0]), dtype=dt)))
        if (loss_kind == LOSS_LOGISTIC or loss_kind == LOSS_BINARY_HINGE) and P.fan_out[L - 1] != 1:
            raise ValueError("StepPlan: binary losses need one output unit")
        P.fused = True
        for l in range(L - 1):
            if P.op[l] == FNN_PRELU:
                P.fused = False
        if self._drop_layers and not P.fused:
            # (the buffers path has no dropout backward: such a model trains layer by layer)
            raise ValueError("StepPlan: dropout and noise between layers need the fused "
                             "backward (no prelu hidden layer)")
        if P.fused and (P.op[L - 1] == FNN_IDENTITY or keeps_pre(P.op[L - 1])):
            # the last layer's backward reads its pre-activation or nothing, so the loss
            # writes dscores over the scores: fit counts its right predictions in the loss
            # pass (loss_rows) instead of reading the scores afterwards
            P.dact0 = P.act[L - 1]
            self.scores_in_place = True
        elif P.fused:
            P.dact0 = _ptr(keep(np.empty(N * P.fan_out[L - 1], dtype=dt)))
        else:
            P.dact0 = _ptr(keep(np.empty(N * width, dtype=dt)))
            P.dact1 = _ptr(keep(np.empty(N * width, dtype=dt)))
        if loss_kind == LOSS_LOGISTIC or loss_kind == LOSS_BINARY_HINGE:
            P.targets = _ptr(keep(np.zeros(N, dtype=dt)))   # the labels as floats (else NULL)
        # the loss's group sums (a NumPy array, so that tracemalloc counts it in
        # bench.step_memory as it counts every other buffer)
        P.groups = <double *><void *>_ptr(keep(np.zeros(loss_groups(N), dtype=np.float64), None,
                                               np.float64))
        self.correct = -1
        for k, (data, grad, s1, s2, decay) in enumerate(params):
            keep(data, required=True)
            keep(grad, required=True)
            if grad.shape != data.shape or (s1 is not None and s1.shape != data.shape) or (
                    s2 is not None and s2.shape != data.shape):
                raise ValueError("StepPlan: parameter, gradient and state shapes differ")
            if (rule != RULE_SGD and s1 is None) or (rule == RULE_ADAM and s2 is None):
                raise ValueError("StepPlan: the update rule needs its state arrays")
            P.p_data[k] = _ptr(data)
            P.p_grad[k] = _ptr(grad)
            P.p_s1[k] = _ptr(keep(s1))
            P.p_s2[k] = _ptr(keep(s2))
            P.p_n[k] = data.size
            P.p_decay[k] = 1 if decay else 0
        self._map_updates(params)
        self._watch([a for spec in layers for a in (spec["W"], spec["b"], spec["dW"], spec["db"],
                                                    spec.get("avec"), spec.get("dalpha"))]
                    + [a for prm in params for a in prm[:4]])
        self._ready = True

    cdef _map_updates(self, list params):
        """params_apart, p_layer, p_bias, p_order and updates_ok (see NetPlan) from the
        parameters (their pointers, once the arrays are checked)."""
        cdef NetPlan *P = &self.P
        cdef int L = P.n_layers, n = P.n_params, l, k
        cdef list seen = [0] * (2 * L)   # how often each layer's W and b is a parameter
        # tied weights (Parameters may share memory: they are only read) must be updated one
        # after the other: two threads taking both at once would race. Likewise any array an
        # update writes or reads (data, gradient, state) shared with another parameter's.
        # (The arrays are C-contiguous, checked by keep(): each is one span of bytes. A sweep
        # over the spans by their start, each against the earlier ones it starts inside.)
        cdef list spans = sorted((<size_t>_ptr(a), <size_t>_ptr(a) + <size_t>a.nbytes, k)
                                 for k in range(n) for a in params[k][:4]
                                 if a is not None and a.nbytes > 0)
        cdef list open_spans = []
        P.params_apart = True
        for start, end, k in spans:
            open_spans = [(e, o) for e, o in open_spans if e > start]
            if any(o != k for e, o in open_spans):
                P.params_apart = False
            open_spans.append((end, k))
        P.updates_ok = True   # (and params_apart: _update_threads)
        for l in range(L):
            if P.op[l] == FNN_PRELU:
                P.updates_ok = False
        for k in range(n):
            P.p_layer[k] = -1
            for l in range(L):
                if P.p_grad[k] == P.dW[l] and P.p_data[k] == P.W[l]:
                    P.p_layer[k] = l
                    seen[2 * l] += 1
                elif P.p_grad[k] == P.db[l] and P.p_data[k] == P.b[l]:
                    P.p_layer[k] = l
                    P.p_bias[k] = 1
                    seen[2 * l + 1] += 1
            if P.p_layer[k] < 0:
                P.updates_ok = False
        if any(count != 1 for count in seen):
            P.updates_ok = False
        layer_of = [P.p_layer[k] for k in range(n)]
        for k, idx in enumerate(sorted(range(n), key=layer_of.__getitem__, reverse=True)):
            P.p_order[k] = idx

    cdef _watch(self, list arrays):
        """Record the arrays users can reach (each once) as they are now, for _check_watched."""
        cdef list seen = []
        cdef Watched *w
        for a in arrays:
            if a is not None and not any(a is b for b in seen):
                seen.append(a)
        self._watched = <Watched *>PyMem_RawCalloc(max(len(seen), 1), sizeof(Watched))
        if self._watched == NULL:
            raise MemoryError()
        self._watched_dtypes = [a.dtype for a in seen]
        for k, a in enumerate(seen):
            if a.ndim > 2:
                raise ValueError("StepPlan: arrays must have at most 2 dimensions")
            w = &self._watched[self._n_watched]
            w.arr = <PyObject *>a        # (kept alive by self._refs: keep() took every one)
            w.dtype = <PyObject *>self._watched_dtypes[k]
            w.data = _ptr(a)
            w.nbytes = a.nbytes
            w.ndim = a.ndim
            for d in range(a.ndim):
                w.shape[d] = a.shape[d]
            self._n_watched += 1

    cdef bint _meets_watched(self, const char *p, size_t n) noexcept:
        """Whether bytes [p, p + n) meet any watched array's."""
        cdef int k
        for k in range(self._n_watched):
            if _spans_meet(p, n, <const char *>self._watched[k].data, self._watched[k].nbytes):
                return True
        return False

    cdef int _check_watched(self) except -1:
        """Raise ArraysChanged unless every watched array is still writeable, C-contiguous, at
        the same memory, of the same shape and dtype: what the plan writes through its
        pointers. (~20-25 ns an array: the buffer protocol, without NumPy's C API, and the
        dtype by identity.)"""
        cdef Py_buffer v
        cdef Watched *w
        cdef int k, d
        cdef bint same
        for k in range(self._n_watched):
            w = &self._watched[k]
            try:
                PyObject_GetBuffer(<object>w.arr, &v, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
            except (BufferError, ValueError, TypeError):
                raise ArraysChanged("StepPlan: an array it was built on is no longer "
                                    "writeable and C-contiguous")
            same = v.buf == w.data and v.ndim == w.ndim   # (the dtype, below, fixes the item size)
            if same:
                for d in range(w.ndim):
                    same = same and v.shape[d] == w.shape[d]
            PyBuffer_Release(&v)
            if same:
                dt = (<object>w.arr).dtype   # (an in-place view as another type of this size)
                same = dt is <object>w.dtype or dt == <object>w.dtype
            if not same:
                raise ArraysChanged("StepPlan: an array it was built on changed its shape, "
                                    "dtype or memory")
        return 0

    def __dealloc__(self):
        P = &self.P
        PyMem_RawFree(P.fan_in); PyMem_RawFree(P.fan_out); PyMem_RawFree(P.op)
        PyMem_RawFree(P.rb); PyMem_RawFree(P.poff); PyMem_RawFree(P.woff)
        PyMem_RawFree(P.dw_turn); PyMem_RawFree(P.layer_done)
        PyMem_RawFree(P.p_layer); PyMem_RawFree(P.p_bias); PyMem_RawFree(P.p_order)
        PyMem_RawFree(P.alpha)
        PyMem_RawFree(P.W); PyMem_RawFree(P.b); PyMem_RawFree(P.dW); PyMem_RawFree(P.db)
        PyMem_RawFree(P.avec); PyMem_RawFree(P.dalpha)
        PyMem_RawFree(P.act); PyMem_RawFree(P.pre); PyMem_RawFree(P.hin); PyMem_RawFree(P.reg)
        PyMem_RawFree(P.drop_on)
        PyMem_RawFree(P.p_data); PyMem_RawFree(P.p_grad); PyMem_RawFree(P.p_s1)
        PyMem_RawFree(P.p_s2); PyMem_RawFree(P.p_n); PyMem_RawFree(P.p_decay)
        PyMem_RawFree(self._watched)

    @property
    def batch(self):
        return self.P.N

    def time_phases(self, bint on):
        """Time the phases of this plan's steps from now on, from zero (on), or stop timing
        them (off; phase_times still reads what was timed). A diagnostic (bench/step_parts.py):
        a few clock reads a step while on, one test per phase while off, the same numbers."""
        self._check_ready()
        if self._busy:
            raise RuntimeError("StepPlan.time_phases: a step is running on this plan")
        if on:
            # (the layer count is fixed once _ready: __init__ runs once)
            self._phases = np.zeros(_ph_other(&self.P, _PH_OTHERS), dtype=np.float64)
            self._phase_steps = 0
            self.P.phase = <double *><void *>_ptr(self._phases)
        else:
            self.P.phase = NULL

    def phase_times(self):
        """Seconds per phase, summed over the steps timed (time_phases), as a dict, or None
        when none were: "fwd1" ... each layer's forward and "loss"; on a step over the whole
        batch, each layer's backward as "bias1" ... (its bias sums, and on the last layer the
        loss's gradient through its activation), "dw1" ... (the weight-gradient product) and
        "dx2" ... (the input-gradient product, through the activation derivative of the layer
        below), or "bwd1" ... whole (a prelu hidden layer's backward through buffers);
        "chunks" (a step run chunk by chunk: its parallel region(s), forward to backward, and
        its updates when they run there), "sum" (its sums of the chunks' partials), "guard",
        "update", "labels" (the label check), "blas" (the BLAS held at one thread for the step
        and restored), "step" (all of it but "blas", from the label check to the last update),
        and "steps", the number of steps timed: every step that got past its argument checks,
        also those a bad label or the guard stopped early (with the phases they ran). Read
        while a step runs in another thread, the sums may be mid-step. Without OpenMP there is
        no clock: every time is 0."""
        if self._phases is None:
            return None
        cdef int L = self.P.n_layers, l
        v = [float(x) for x in self._phases]
        out = {f"fwd{l + 1}": v[l] for l in range(L)}
        out["loss"] = v[_ph_loss(&self.P)]
        for kind, name in ((_PH_BIAS, "bias"), (_PH_DW, "dw"), (_PH_DX, "dx"), (_PH_BWD, "bwd")):
            for l in range(1 if kind == _PH_DX else 0, L):
                out[f"{name}{l + 1}"] = v[_ph_layer(&self.P, kind, l)]
        for which, name in ((_PH_CHUNKS, "chunks"), (_PH_SUM, "sum"), (_PH_GUARD, "guard"),
                            (_PH_UPDATE, "update"), (_PH_LABELS, "labels"), (_PH_BLAS, "blas"),
                            (_PH_STEP, "step")):
            out[name] = v[_ph_other(&self.P, which)]
        out["steps"] = self._phase_steps
        return out

    @property
    def chunk_rows(self):
        """Rows per chunk when the last step ran the whole network chunk by chunk (a small
        network on a batch of several chunks; see chunk_rows in fastnn_dense.pxd), else 0."""
        return self.P.chunk

    @property
    def params_apart(self):
        """True when no two parameters' arrays (data, gradient, state) share memory: only then
        may a chunked step's threads update parameters side by side (_update_threads)."""
        return bool(self.P.params_apart)

    @property
    def fused_backward(self):
        """True when the backward pass writes each layer's dz into its activation buffer
        (no N x width gradient buffers; every network without a prelu hidden layer)."""
        return bool(self.P.fused)

    cdef int _size_buffers(self, const DenseConfig *cfg, int n_threads) except -1:
        """Lay out the workspaces for the tiling in cfg (the snapshot the step runs with) and
        grow them where they are too small: each layer's bias-gradient blocks and partial
        sums, its weight-gradient chunk partials, whether the whole step runs in row chunks,
        and the scratch of one dx tile per thread the backward pass can start. The forward
        pass of a deep layer (forward_plan) keeps its partial in the weight-gradient
        workspace, which the backward pass only uses later."""
        cdef NetPlan *P = &self.P
        cdef Py_ssize_t need = 1, psum = 0, amax = 1, wsum = 0, fws = 0, blocks, D, M, itemsize
        cdef int l, threads
        cdef bint chunked = P.fused
        for l in range(P.n_layers):
            if chunk_rows(cfg, P.N, P.fan_in[l], P.fan_out[l]) == 0:
                chunked = False
        P.chunk = chunk_rows(cfg, P.N, P.fan_in[0], P.fan_out[0]) if chunked else 0
        for l in range(P.n_layers):
            D = P.fan_in[l]
            M = P.fan_out[l]
            P.rb[l] = bias_rows_per_block(cfg, P.N, D, M)
            blocks = backward_blocks(P.N, P.rb[l]) * M
            P.poff[l] = psum
            psum += blocks
            if P.op[l] == FNN_PRELU:
                amax = max(amax, blocks)   # slope partial sums: prelu layers only
            P.woff[l] = wsum
            wsum += wslot_elems(cfg, P.N, D, M)
            fws = max(fws, forward_ws_elems(cfg, P.N, D, M))
        wsum = max(wsum, fws)
        itemsize = sizeof(double) if self.is_double else sizeof(float)
        P.chunk_stride = _chunk_tile_elems(P, cfg, itemsize) if P.chunk > 0 else 0
        if P.chunk > 0:
            threads = _chunk_threads(P, cdiv(P.N, P.chunk), n_threads)
            need = P.chunk_stride * threads
        elif P.fused:
            for l in range(1, P.n_layers):
                need = max(need, dx_scratch_need(cfg, P.N, P.fan_in[l], P.fan_out[l],
                                                 P.op[l - 1], itemsize, n_threads))
        wsum = max(wsum, 1)
        if P.scratch_elems < need or self._partial_elems < psum or self._apartial_elems < amax \
                or self._wslots_elems < wsum:
            self._grow_buffers(need, psum, amax, wsum)
        return 0

    cdef int _grow_buffers(self, Py_ssize_t need, Py_ssize_t psum, Py_ssize_t amax,
                           Py_ssize_t wsum) except -1:
        """_size_buffers' allocations: each workspace smaller than asked is made anew."""
        cdef NetPlan *P = &self.P
        dt = np.float64 if self.is_double else np.float32
        if P.scratch_elems < need:
            self._scratch = np.empty(need, dtype=dt)
            P.scratch = _ptr(self._scratch)
            P.scratch_elems = need
        if self._partial_elems < psum:
            self._partial = np.empty(psum, dtype=dt)
            P.partial = _ptr(self._partial)
            self._partial_elems = psum
        if self._apartial_elems < amax:
            self._apartial = np.empty(amax, dtype=dt)
            P.apartial = _ptr(self._apartial)
            self._apartial_elems = amax
        if self._wslots_elems < wsum:
            self._wslots = np.empty(wsum, dtype=dt)
            P.wslots = _ptr(self._wslots)
            self._wslots_elems = wsum
        return 0

    def check_arrays(self):
        """Raise ArraysChanged where step would, before it reads anything: an array the plan
        was built on that is no longer writeable, C-contiguous, at the same memory or of the
        same shape and dtype. (Sequential._step asks before its front layers draw.)"""
        self._check_watched()

    @property
    def input_kind(self):
        """The input layer over X: 0 none, 1 a dropout, 2 Gaussian noise (step's front)."""
        return self.P.inl.kind

    @property
    def dropout_layers(self):
        """The layers a Dropout or a GaussianNoise follows (indices, bottom up): step's
        drops, one each."""
        return tuple(self._drop_layers)

    @property
    def hidden_kinds(self):
        """What follows each of dropout_layers: 1 a Dropout, 2 a GaussianNoise."""
        return tuple(self.P.reg[l].kind for l in self._drop_layers)

    @staticmethod
    def _parse_layer(int kind, entry, str what):
        """One layer's settings of a step, (keep probability, seed) of a dropout or (std,
        seed) of a noise, as (limit or 0, low, high, scale or std) for _set_layer, or None."""
        cdef double v
        if entry is None:
            return None
        if not isinstance(entry, tuple) or len(entry) != 2:
            raise TypeError(f"{what} must be None or (keep or std, seed)")
        if isinstance(entry[0], bool) or not isinstance(entry[0], (int, float, np.integer,
                                                                   np.floating)):
            raise TypeError(f"{what}: keep or std must be a real number, got "
                            f"{type(entry[0]).__name__}")
        v = entry[0]
        if kind == RG_DROPOUT and not (0.0 < v <= 1.0):
            raise ValueError(f"{what}: keep probability must be in (0, 1], got {v}")
        if kind == RG_NOISE and not (0.0 < v < float("inf")):
            raise ValueError(f"{what}: std must be finite and > 0, got {v}")
        if isinstance(entry[1], bool) or not isinstance(entry[1], (int, np.integer)):
            raise TypeError(f"{what}: seed must be an int, got {type(entry[1]).__name__}")
        seed = int(entry[1])
        if not 0 <= seed < 2**64:
            raise ValueError(f"{what}: seed must be in [0, 2**64), got {seed}")
        if kind == RG_DROPOUT:
            key = _mask_key(seed)
            return (_keep_limit(v), key & 0xffffffff, key >> 32, 1.0 / v)
        key = _noise_key(seed)
        return (0, key & 0xffffffff, key >> 32, v)

    cdef tuple _parse_front(self, front):
        """step's front as _parse_layer's tuple, or None."""
        if front is None:
            return None
        if self.P.inl.kind == RG_NONE:
            raise ValueError("front: this plan has no input layer")
        return StepPlan._parse_layer(self.P.inl.kind, front, "front")

    cdef list _parse_drops(self, drops):
        """step's drops as _parse_layer's tuple or None per layer of dropout_layers, or None
        for a plan without any."""
        cdef Py_ssize_t n = len(self._drop_layers), k
        if n == 0 and drops is None:
            return None
        if drops is None:
            return [None] * n
        drops = list(drops)
        if len(drops) != n:
            raise ValueError(f"drops must have {n} entries (one per dropout or noise), "
                             f"got {len(drops)}")
        return [StepPlan._parse_layer(self.P.reg[<int>self._drop_layers[k]].kind, drops[k],
                                      f"drops[{k}]")
                for k in range(n)]

    cdef void _set_layers(self, list drops, tuple front):
        """This step's settings (_parse_drops', _parse_front's) into the plan (the step holds
        _busy)."""
        cdef NetPlan *P = &self.P
        cdef Py_ssize_t k
        cdef int l
        P.in_on = front is not None
        if front is not None:
            _set_layer(&P.inl, front)
        if drops is None:
            return
        for k in range(len(self._drop_layers)):
            l = self._drop_layers[k]
            P.drop_on[l] = drops[k] is not None
            if drops[k] is not None:
                _set_layer(&P.reg[l], drops[k])

    def step(self, X, labels, targets, double lr, double h1, double h2,
             double eps, double c1, double c2, double wd, int n_threads, bint guard=False,
             bint count=False, bint dynamic=False, drops=None, front=None):
        """One training step on X (N, fan_in[0], C-contiguous, the plan's dtype). labels: class
        or binary labels (intp, N, C-contiguous) for classification losses, which do not read
        `targets`; for MSE, float `targets` (N, C, C-contiguous, the plan's dtype), and labels
        are not read. Returns the mean loss (before the update). With `guard`, a non-finite
        loss or gradient stops the step before any update, and `stopped` is then True. With
        `count` (a classification loss), `correct` is then the number of rows whose scores
        predict their label (as the loss's predict_labels), else -1. With `dynamic`, the plan's
        governor (fastnn_governor.pxd) picks the thread count, at most n_threads, from the
        times of the steps before; else the step runs n_threads. `step_threads` tells which.
        drops: for a plan with dropout or noise layers (dropout_layers, hidden_kinds), one
        entry each, bottom up: a dropout's (keep probability, seed), the mask of
        fastnn.functional.dropout_forward with that p and seed over the layer's N x width
        output, a noise's (std, seed), fastnn.functional.gaussian_noise_forward's, or None
        (it passes its input on, as Dropout(p=0)); drops None: none applies this step.
        front: for a plan with an input layer (input_kind), (keep probability, seed) of its
        dropout or (std, seed) of its noise over X (fastnn.functional's; X is never
        written), or None: X goes in as it is."""
        cdef Py_buffer xv, lv, tv
        cdef bint has_x = False, has_l = False, has_t = False
        cdef char code = b'd' if self.is_double else b'f'   # X's and the targets' items
        cdef Py_ssize_t size = 8 if self.is_double else 4
        cdef list parsed
        cdef tuple parsed_front
        P = &self.P
        self._check_ready()
        self._check_watched()
        parsed = self._parse_drops(drops)
        parsed_front = self._parse_front(front)
        # the inputs through the buffer protocol, held until the step returns: typed
        # memoryviews would make ~0.4 KB of Python objects a step (tracemalloc's per-step
        # peak of a small network's step, which allocates nothing else)
        try:
            if self.P.loss_kind == LOSS_MSE:
                if targets is None:
                    raise ValueError("y must hold regression targets")
                _input_buffer(targets, &tv, code, size, 2, "targets",
                              "a 2-d array of the plan's dtype")
                has_t = True
            else:
                if labels is None:
                    raise ValueError(f"y must have {P.N} labels")
                _input_buffer(labels, &lv, b'n', sizeof(Py_ssize_t), 1, "labels",
                              "a 1-d intp array")
                has_l = True
                if lv.shape[0] != P.N:
                    raise ValueError(f"y must have {P.N} labels")
            _input_buffer(X, &xv, code, size, 2, "X", "a 2-d array of the plan's dtype")
            has_x = True
            return self._step_on(X, &xv, &lv if has_l else NULL, &tv if has_t else NULL,
                                 lr, h1, h2, eps, c1, c2, wd, n_threads, guard, count, dynamic,
                                 parsed, parsed_front)
        finally:
            if has_x:
                PyBuffer_Release(&xv)
            if has_l:
                PyBuffer_Release(&lv)
            if has_t:
                PyBuffer_Release(&tv)

    cdef double _step_on(self, X, Py_buffer *xv, Py_buffer *lv, Py_buffer *tv, double lr,
                         double h1, double h2, double eps, double c1, double c2, double wd,
                         int n_threads, bint guard, bint count, bint dynamic,
                         list drops, tuple front) except? -1.0:
        """step's work on the buffers it holds: X's, and the labels' or the targets' (NULL for
        the other), with the dropout masks `drops` (_parse_drops) and the input layer's
        `front` (_parse_front)."""
        cdef double loss = 0.0, t0 = 0.0
        cdef int used
        cdef Py_ssize_t bad = -1, k, hits = 0
        cdef const Py_ssize_t *lp = NULL
        cdef const char *xb = <const char *>xv.buf
        cdef const char *tb = NULL
        cdef Py_ssize_t C
        cdef Py_ssize_t xr = xv.shape[0], xc = xv.shape[1], tr = 0, tc = 0
        cdef size_t item = 8 if self.is_double else 4
        cdef bint entered
        cdef DenseConfig cfg = _cfg[0]   # one snapshot of the tiling for the whole step
        P = &self.P
        C = P.fan_out[P.n_layers - 1]
        if lv != NULL:
            lp = <const Py_ssize_t *>lv.buf
        if xr != P.N or xc != P.fan_in[0]:
            raise ValueError(f"X must have shape ({P.N}, {P.fan_in[0]}), got {np.shape(X)}")
        if tv != NULL:
            tb = <const char *>tv.buf
            tr, tc = tv.shape[0], tv.shape[1]
            if tr != P.N or tc != C:
                raise ValueError(f"targets must have shape ({P.N}, {C}), got ({tr}, {tc})")
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        # X and the targets are read until the step's last product, after gradients (and, with
        # the updates in the chunks' region, parameters and state) are written
        # (the labels too: a chunked step's loss reads a chunk's labels after earlier chunks
        # wrote their weight gradients, which labels aliasing them would have become)
        if self._meets_watched(xb, xr * xc * item) or (
                tb != NULL and self._meets_watched(tb, tr * tc * item)) or (
                lp != NULL and self._meets_watched(<const char *>lp, P.N * sizeof(Py_ssize_t))):
            raise InputOverlaps("X, the labels or the targets share memory with an array the "
                                "step writes")
        if self._busy:
            raise RuntimeError("StepPlan.step is already running on this plan in another thread")
        # busy from here: growing the buffers allocates, which may run the collector and let
        # another thread in; that thread's step must find this one running, not swap the
        # buffers it is about to write
        self._busy = True
        entered = False
        try:
            self._set_layers(drops, front)
            self._size_buffers(&cfg, n_threads)    # (sized for n_threads: any count below fits)
            used = gov_threads(&self.governor.g, n_threads) if dynamic else n_threads
            self.stopped = False
            self.correct = -1
            P.hits = NULL
            if count and P.loss_kind != LOSS_MSE:
                if self._hits is None:
                    self._hits = np.zeros(loss_groups(P.N), dtype=np.uint8)
                    self._hits_at = <unsigned char *><void *>_ptr(self._hits)
                P.hits = self._hits_at
            t0 = _ph_tick(P)
            blas_enter(_cfg)
            entered = True
            _ph_mark(P, _ph_other(P, _PH_BLAS), t0)
            with nogil:
                t0 = fnn_wtime()
                if self.is_double:
                    bad = _step(P, &cfg, <const double *>xb, lp, <const double *>tb, self.rule,
                                lr, h1, h2, eps, c1, c2, wd, used, guard, &loss)
                else:
                    bad = _step(P, &cfg, <const float *>xb, lp, <const float *>tb, self.rule,
                                lr, h1, h2, eps, c1, c2, wd, used, guard, &loss)
                if bad == COMPLETED:
                    self.updates += 1
                    if dynamic:
                        gov_record(&self.governor.g, used, fnn_wtime() - t0)
                _ph_mark(P, _ph_other(P, _PH_STEP), t0)
            self.step_threads = used
            self.updates_in_chunks = P.updated_in_chunks
            self.updates_in_backward = P.updated_in_backward
            if P.phase != NULL:
                self._phase_steps += 1
        finally:
            if entered:
                t0 = _ph_tick(P)
                blas_exit(_cfg)
                _ph_mark(P, _ph_other(P, _PH_BLAS), t0)
            self._busy = False
        if bad >= 0:
            # (the words of Sequential._check_targets, which fit's check of all of y gives)
            valid = ("{0, 1}" if P.loss_kind == LOSS_LOGISTIC else
                     "{-1, 1}" if P.loss_kind == LOSS_BINARY_HINGE else
                     f"[0, {P.fan_out[P.n_layers - 1]})")
            raise ValueError(f"y[{bad}] = {lp[bad]} is not a valid label for this loss "
                             f"(labels must be in {valid})")
        self.stopped = bad == STOPPED
        if P.hits != NULL:
            for k in range(loss_groups(P.N)):
                hits += P.hits[k]
            self.correct = hits
        return loss


cdef inline bint _same_objects(list sig, Py_ssize_t *i, values) except -1:
    """Whether the objects in `values` are, in order, the ones sig holds from i on (advances i
    past them)."""
    for v in values:
        if not _next_is(sig, i, <PyObject *>v):
            return False
    return True


cdef inline bint _next_is(list sig, Py_ssize_t *i, PyObject *v) except -1:
    """Whether sig's slot i holds v itself (then i advances past it)."""
    if i[0] >= len(sig):
        return False
    x = sig[i[0]]
    # (None is what signature_of gives a layer without a slope, never an array: a None
    # where an array is due is a change)
    if <PyObject *>x != v or x is None:
        return False
    i[0] += 1
    return True


cdef inline bint _same_values(list sig, Py_ssize_t *i, d) except -1:
    """_same_objects over the values of d, a dict (PyDict_Next: no view or iterator object; no
    Python code runs while it walks the dict), or else any mapping."""
    cdef Py_ssize_t pos = 0
    cdef PyObject *key
    cdef PyObject *value
    if type(d) is not dict:
        return _same_objects(sig, i, d.values())
    while PyDict_Next(d, &pos, &key, &value):
        if not _next_is(sig, i, value):
            return False
    return True


cdef inline bint _same_slope(object x, object alpha) except -1:
    """Whether a signature's slope slot x still gives the layer's slope `alpha`: the same
    object, or numbers of the same value. Anything else in the slot (an array, where a params
    or grads dict lost an entry and the slots after it shifted) is a change: an array compared
    with == would give an array, whose truth NumPy refuses."""
    if x is alpha:
        return True
    return isinstance(x, (float, int)) and isinstance(alpha, (float, int)) and x == alpha


def signature_matches(list sig, layers, optimizer, int rule):
    """Whether fastnn.model._CompiledStep.signature_of(model, optimizer) would give `sig`
    (the same objects, the same slopes; layers: model.layers; rule: the optimizer's update
    rule now), without building that list:
    the check each compiled step makes (0.36 us for a 3-layer network on the seventeenth
    session's machine, 0.72 before it walked the dicts with PyDict_Next; ~1.5 us in Python)."""
    cdef Py_ssize_t i = 1
    if not sig or sig[0] != rule:
        return False
    for layer in layers:
        if not (_same_values(sig, &i, layer.params)
                and _same_values(sig, &i, layer.grads)):
            return False
        alpha = getattr(layer, "alpha", None)
        if i >= len(sig) or not _same_slope(sig[i], alpha):
            return False
        i += 1
    for st in optimizer.state.values():
        if not _same_objects(sig, &i, st):
            return False
    return _same_objects(sig, &i, optimizer.params) and i == len(sig)


def trained_arrays(units):
    """The arrays the kernels read and write in a training step of these units (a model's
    forward plan): of each unit's layer, and of a fused activation with parameters, every
    params entry and its grads entry, in order. (For Sequential._check_arrays, after each
    layer's check_arrays found them arrays: a new list, compared with arrays_unchanged.)"""
    cdef list out = []
    for unit in units:
        for layer in (unit.layer, unit.act):
            if layer is None:
                continue
            grads = layer.grads
            for name, value in layer.params.items():
                out.append(value)
                out.append(grads[name])
    return out


cdef inline bint _layer_unchanged(list refs, Py_ssize_t *i, layer) except -1:
    """Whether layer's params / grads arrays are the ones refs holds from i on (advances i)."""
    cdef Py_ssize_t n = len(refs)
    if layer is None:
        return True
    grads = layer.grads
    for name, value in layer.params.items():
        if (i[0] + 1 >= n
                or PyWeakref_GetObject(refs[i[0]]) != <PyObject *>value
                or PyWeakref_GetObject(refs[i[0] + 1]) != <PyObject *>grads[name]):
            return False
        i[0] += 2
    return True


def arrays_unchanged(list refs, units):
    """Whether trained_arrays(units) would be, in order, the arrays `refs` (weak references)
    point to: the check each layer-path step makes (~0.3 us for three layers, against ~3 us to
    build that list in Python and compare)."""
    cdef Py_ssize_t i = 0
    for unit in units:
        if not (_layer_unchanged(refs, &i, unit.layer) and _layer_unchanged(refs, &i, unit.act)):
            return False
    return i == len(refs)


def chunk_update_min_elems(value=None):
    """The parameter elements from which a chunked step shares its updates among its threads;
    with `value` (an int >= 0), set it and return the previous one (tests, bench/)."""
    global _chunk_update_min_elems
    cdef Py_ssize_t old = _chunk_update_min_elems
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"chunk_update_min_elems: expected an int >= 0, got {value!r}")
        _chunk_update_min_elems = value
    return old


def hold_last_chunk(value=None):
    """Tests only: with `value` (a bool), make the last chunk of a step that updates in its
    chunks' region wait until another thread takes a parameter (see _hold_last_chunk); returns
    the previous setting."""
    global _hold_last_chunk
    cdef bint old = _hold_last_chunk
    if value is not None:
        if not isinstance(value, bool):
            raise ValueError(f"hold_last_chunk: expected a bool, got {value!r}")
        _hold_last_chunk = value
    return old


def parallel_regions():
    """Parallel regions this module has started (tests)."""
    return fnn_parallel_count()


def parallel_seen():
    """Whether this module ran a parallel region with more than one thread (fork safety:
    fastnn/_threads.py)."""
    return fnn_parallel_seen() != 0
