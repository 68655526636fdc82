# fastnn._kernels.dense: fully connected layers, forward and backward, with fused epilogues.
#
# Products go to SciPy's BLAS (cython_blas sgemm/dgemm) without the GIL. Row-major operands are
# passed to the column-major BLAS by swapping them (C^T = B^T A^T), and transposes are BLAS flags:
# nothing is copied or transposed in memory.
#
# Determinism: the output of every product is cut into tiles whose sizes depend on the problem
# shape only; each tile is one BLAS call, with BLAS itself held to one thread, and the tiles are
# spread over OpenMP threads. A tile's result does not depend on which thread computes it, so
# outputs and gradients are bitwise identical for any thread count. (OpenBLAS's own threading is
# not: shared/PERFORMANCE.md.) The bias gradient sums fixed row blocks in a fixed order.
#
# Fusion: in forward, each tile's epilogue (bias, activation) runs right after the tile's product,
# while it is in cache. In backward one threaded pass computes dz = dout * act'(saved) together
# with the bias (and PReLU alpha) gradient partials; then the dx and dw products run as one list
# of tiles.
from cython cimport floating
from cython.parallel cimport prange
cimport scipy.linalg.cython_blas as blas
import numpy as np

from fastnn_openmp cimport effective_threads
from fastnn_ops cimport (FNN_IDENTITY, FNN_LEAKY, FNN_PRELU, bias_act_fwd, bias_act_keep,
                        act_bwd_acc, prelu_alpha_acc, add_into)

# ----------------------------------------------------------------------------- BLAS threads
ctypedef void (*set_threads_fn)(int) noexcept nogil
ctypedef int (*get_threads_fn)() noexcept nogil
cdef set_threads_fn _blas_set = NULL
cdef get_threads_fn _blas_get = NULL
cdef int _blas_users = 0
cdef int _blas_saved = 1


def register_blas_thread_control(size_t set_addr, size_t get_addr):
    """Give the kernels the BLAS library's set/get-num-threads functions (addresses found by
    fastnn._blas at import). While any fastnn product runs, the BLAS runs single-threaded:
    fastnn does the threading itself, over fixed tiles."""
    global _blas_set, _blas_get
    _blas_set = <set_threads_fn>set_addr
    _blas_get = <get_threads_fn>get_addr


def blas_thread_control():
    return _blas_set != NULL


cdef int _blas_enter() except -1:
    # Called with the GIL held, so the user count needs no other lock.
    global _blas_users, _blas_saved
    if _blas_set != NULL:
        if _blas_users == 0:
            _blas_saved = _blas_get()
            if _blas_saved != 1:
                _blas_set(1)
        _blas_users += 1
    return 0


cdef void _blas_exit() noexcept:
    global _blas_users
    if _blas_set != NULL:
        _blas_users -= 1
        if _blas_users == 0 and _blas_saved != 1:
            _blas_set(_blas_saved)


# ----------------------------------------------------------------------------- tiling
# Tile plan constants (bench/dense_tiles.py measures them): a tile is at least MIN_TILE_ROWS x
# MIN_TILE_COLS of output and about TILE_FLOPS of work; at most MAX_TILES per product.
cdef double TILE_FLOPS = 32.0e6
cdef Py_ssize_t MIN_TILE_ROWS = 64
cdef Py_ssize_t MIN_TILE_COLS = 64
cdef Py_ssize_t MAX_TILES = 64
# Products below this many flops run as one serial BLAS call.
cdef double SERIAL_FLOPS = 1.0e6
# Row block of the element-wise backward pass: about this many elements per block.
cdef Py_ssize_t ROW_BLOCK_ELEMS = 16384


def tile_params():
    return dict(tile_flops=TILE_FLOPS, min_tile_rows=MIN_TILE_ROWS, min_tile_cols=MIN_TILE_COLS,
                max_tiles=MAX_TILES, serial_flops=SERIAL_FLOPS)


def set_tile_params(tile_flops=None, min_tile_rows=None, min_tile_cols=None, max_tiles=None,
                    serial_flops=None):
    """Tuning hook for bench/ (not public API)."""
    global TILE_FLOPS, MIN_TILE_ROWS, MIN_TILE_COLS, MAX_TILES, SERIAL_FLOPS
    if tile_flops is not None:
        TILE_FLOPS = max(1.0, float(tile_flops))
    if min_tile_rows is not None:
        MIN_TILE_ROWS = max(1, int(min_tile_rows))
    if min_tile_cols is not None:
        MIN_TILE_COLS = max(1, int(min_tile_cols))
    if max_tiles is not None:
        MAX_TILES = max(1, int(max_tiles))
    if serial_flops is not None:
        SERIAL_FLOPS = float(serial_flops)


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline Py_ssize_t _round_up(Py_ssize_t a, Py_ssize_t m) noexcept nogil:
    return _cdiv(a, m) * m


cdef struct Plan:
    Py_ssize_t tr       # tile rows
    Py_ssize_t tc       # tile cols
    Py_ssize_t nr       # tiles down
    Py_ssize_t nc       # tiles across


cdef Plan _plan(Py_ssize_t r, Py_ssize_t c, Py_ssize_t k) noexcept nogil:
    """Tiles for an (r x c) output with inner dimension k. Depends on the shape only.

    About one tile per TILE_FLOPS of work (at most MAX_TILES), made by repeatedly halving
    the longer tile side while it stays at least MIN_TILE_ROWS / MIN_TILE_COLS: near-square
    tiles keep BLAS's packing cost (one pass over each operand panel per tile) small."""
    cdef Plan p
    cdef double flops = 2.0 * r * c * k
    cdef Py_ssize_t target = <Py_ssize_t>(flops / TILE_FLOPS)
    cdef Py_ssize_t rb = 1, cb = 1
    cdef bint can_r, can_c
    if flops < SERIAL_FLOPS or target < 1:
        target = 1
    if target > MAX_TILES:
        target = MAX_TILES
    while rb * cb < target:
        can_r = r // (rb + 1) >= MIN_TILE_ROWS
        can_c = c // (cb + 1) >= MIN_TILE_COLS
        if can_r and (not can_c or r * cb >= c * rb):
            rb += 1
        elif can_c:
            cb += 1
        else:
            break
    p.tr = _cdiv(r, rb)
    if rb > 1:
        p.tr = _round_up(p.tr, 8)
    p.tc = _cdiv(c, cb)
    if cb > 1:
        p.tc = _round_up(p.tc, 16)
    if p.tr < 1:
        p.tr = 1
    if p.tc < 1:
        p.tc = 1
    p.nr = _cdiv(r, p.tr)
    p.nc = _cdiv(c, p.tc)
    return p


def plan(Py_ssize_t r, Py_ssize_t c, Py_ssize_t k):
    """(tile_rows, tile_cols, tiles_down, tiles_across) for an r x c x k product (for tests)."""
    cdef Plan p = _plan(r, c, k)
    return (p.tr, p.tc, p.nr, p.nc)


# ----------------------------------------------------------------------------- one GEMM tile
cdef void _gemm(bint trans_a, bint trans_b, Py_ssize_t r, Py_ssize_t c, Py_ssize_t k,
                const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                floating *C, Py_ssize_t ldc) noexcept nogil:
    """Row-major C (r x c) = op(A) (r x k) @ op(B) (k x c), as the column-major product
    C^T = op(B)^T op(A)^T. r, c, k >= 1."""
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    cdef int m_ = <int>c, n_ = <int>r, k_ = <int>k
    cdef int lda_ = <int>ldb, ldb_ = <int>lda, ldc_ = <int>ldc
    cdef floating one = 1, zero = 0
    if floating is float:
        blas.sgemm(&ta, &tb, &m_, &n_, &k_, &one, <float *>B, &lda_, <float *>A, &ldb_,
                   &zero, C, &ldc_)
    else:
        blas.dgemm(&ta, &tb, &m_, &n_, &k_, &one, <double *>B, &lda_, <double *>A, &ldb_,
                   &zero, C, &ldc_)


cdef inline void _gemm_tile(Plan p, Py_ssize_t t, bint trans_a, bint trans_b,
                            Py_ssize_t r, Py_ssize_t c, Py_ssize_t k,
                            const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                            floating *C, Py_ssize_t ldc) noexcept nogil:
    cdef Py_ssize_t i0 = (t // p.nc) * p.tr
    cdef Py_ssize_t j0 = (t % p.nc) * p.tc
    cdef Py_ssize_t ti = r - i0
    cdef Py_ssize_t tj = c - j0
    if ti > p.tr:
        ti = p.tr
    if tj > p.tc:
        tj = p.tc
    _gemm(trans_a, trans_b, ti, tj, k,
          A + (i0 if trans_a else i0 * lda), lda,
          B + (j0 * ldb if trans_b else j0), ldb,
          C + i0 * ldc + j0, ldc)


cdef void _forward_tile(Plan p, Py_ssize_t t, int op, bint keep, Py_ssize_t N, Py_ssize_t M,
                        Py_ssize_t D, const floating *x, const floating *w, const floating *b,
                        floating *dst, floating *y, double alpha,
                        const floating *ap) noexcept nogil:
    """One output tile: its product into dst (y, or z when the pre-activation is kept), then the
    bias + activation epilogue on the tile's rows while they are in cache."""
    cdef Py_ssize_t i0 = (t // p.nc) * p.tr
    cdef Py_ssize_t j0 = (t % p.nc) * p.tc
    cdef Py_ssize_t i1 = i0 + p.tr
    cdef Py_ssize_t tj = M - j0
    cdef Py_ssize_t i
    if i1 > N:
        i1 = N
    if tj > p.tc:
        tj = p.tc
    _gemm_tile(p, t, False, False, N, M, D, x, D, w, M, dst, M)
    for i in range(i0, i1):
        if keep:
            bias_act_keep(op, dst + i * M + j0, b + j0, y + i * M + j0, tj, alpha,
                          (ap + j0) if ap != NULL else NULL)
        else:
            bias_act_fwd(op, y + i * M + j0, b + j0, tj, alpha, NULL)


# ----------------------------------------------------------------------------- forward
def dense_forward(int op, const floating[:, ::1] x, const floating[:, ::1] w,
                  const floating[::1] b, floating[:, ::1] y, floating[:, ::1] z,
                  double alpha, const floating[::1] avec, int n_threads):
    """y = act(x @ w + b). For leaky relu and prelu (which need the pre-activation in backward)
    z receives x @ w + b; otherwise z may be None. avec: prelu's per-unit alpha, else None.
    x (N, D), w (D, M), b (M,), y and z (N, M); D >= 1."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], M = w.shape[1]
    cdef Py_ssize_t t, ntiles
    cdef bint keep = op == FNN_LEAKY or op == FNN_PRELU
    cdef floating *dst
    cdef const floating *ap = NULL
    cdef Plan p
    cdef int nt
    if w.shape[0] != D or b.shape[0] != M or y.shape[0] != N or y.shape[1] != M:
        raise ValueError("dense_forward: shape mismatch")
    if keep and (z is None or z.shape[0] != N or z.shape[1] != M):
        raise ValueError("dense_forward: z is required for this activation")
    if op == FNN_PRELU:
        if avec is None or avec.shape[0] != M:
            raise ValueError("dense_forward: prelu needs one alpha per unit")
        ap = &avec[0]
    if N == 0 or M == 0:
        return
    if D == 0:
        raise ValueError("dense_forward: D must be >= 1 (the wrapper handles D == 0)")
    dst = &z[0, 0] if keep else &y[0, 0]
    p = _plan(N, M, D)
    ntiles = p.nr * p.nc
    nt = n_threads if n_threads < ntiles else <int>ntiles
    _blas_enter()
    try:
        with nogil:
            if nt <= 1:
                for t in range(ntiles):
                    _forward_tile(p, t, op, keep, N, M, D, &x[0, 0], &w[0, 0], &b[0], dst,
                                  &y[0, 0], alpha, ap)
            else:
                for t in prange(ntiles, num_threads=nt, schedule="dynamic"):
                    _forward_tile(p, t, op, keep, N, M, D, &x[0, 0], &w[0, 0], &b[0], dst,
                                  &y[0, 0], alpha, ap)
    finally:
        _blas_exit()


cdef inline void _backward_tile(Plan px, Plan pw, Py_ssize_t t, Py_ssize_t ntx, Py_ssize_t N,
                                Py_ssize_t D, Py_ssize_t M, const floating *g, const floating *x,
                                const floating *w, floating *dx, floating *dw) noexcept nogil:
    """Tile t of the backward products: the first ntx tiles are dx = g @ w.T, the rest dw = x.T @ g."""
    if t < ntx:
        _gemm_tile(px, t, False, True, N, D, M, g, M, w, M, dx, D)
    else:
        _gemm_tile(pw, t - ntx, True, False, D, M, N, x, D, g, M, dw, M)


# ----------------------------------------------------------------------------- backward
def dense_backward(int op, const floating[:, ::1] dout, const floating[:, ::1] saved,
                   const floating[:, ::1] x, const floating[:, ::1] w,
                   floating[:, ::1] dx, floating[:, ::1] dw, floating[::1] db,
                   floating[:, ::1] dz, double alpha, const floating[::1] avec,
                   floating[::1] dalpha, int n_threads):
    """Gradients of y = act(x @ w + b):
        dz = dout * act'(saved)          (dz may be None for the identity: dz = dout)
        db = sum_rows dz, dalpha = sum_rows dout * min(pre, 0) (prelu only)
        dx = dz @ w.T (skipped when dx is None), dw = x.T @ dz
    `saved` is the forward output (relu, sigmoid, tanh) or pre-activation (leaky, prelu)."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], M = w.shape[1]
    cdef Py_ssize_t rb, nblocks, blk, i, i0, i1, j, t, ntx, ntw
    cdef bint ident = op == FNN_IDENTITY
    cdef bint want_dx = dx is not None
    cdef const floating *g
    cdef const floating *ap = NULL
    cdef floating[:, ::1] partial
    cdef floating[:, ::1] apartial
    cdef Plan px, pw
    cdef int nt
    dt = np.float32 if floating is float else np.float64
    if (dout.shape[0] != N or dout.shape[1] != M or w.shape[0] != D or dw.shape[0] != D
            or dw.shape[1] != M or db.shape[0] != M):
        raise ValueError("dense_backward: shape mismatch")
    if want_dx and (dx.shape[0] != N or dx.shape[1] != D):
        raise ValueError("dense_backward: dx shape mismatch")
    if not ident:
        if saved is None or saved.shape[0] != N or saved.shape[1] != M:
            raise ValueError("dense_backward: saved shape mismatch")
        if dz is None or dz.shape[0] != N or dz.shape[1] != M:
            raise ValueError("dense_backward: dz is required for this activation")
    if op == FNN_PRELU:
        if avec is None or avec.shape[0] != M or dalpha is None or dalpha.shape[0] != M:
            raise ValueError("dense_backward: prelu needs alpha and dalpha per unit")
        ap = &avec[0]
    db[:] = 0
    if op == FNN_PRELU:
        dalpha[:] = 0
    if N == 0 or M == 0:
        # Empty batch or no units: every gradient is a sum over nothing.
        dw[:, :] = 0
        if want_dx:
            dx[:, :] = 0
        return

    # Pass 1: dz and the per-block partial sums, over fixed row blocks.
    rb = ROW_BLOCK_ELEMS // M
    if rb < 1:
        rb = 1
    nblocks = _cdiv(N, rb)
    partial = np.zeros((nblocks, M), dtype=dt)
    apartial = np.zeros((nblocks if op == FNN_PRELU else 1, M), dtype=dt)
    nt = effective_threads(N * M * 2, ROW_BLOCK_ELEMS, n_threads)
    with nogil:
        for blk in prange(nblocks, num_threads=nt, schedule="static"):
            i0 = blk * rb
            i1 = i0 + rb
            if i1 > N:
                i1 = N
            for i in range(i0, i1):
                if ident:
                    add_into(&dout[i, 0], &partial[blk, 0], M)
                else:
                    act_bwd_acc(op, &dout[i, 0], &saved[i, 0], &dz[i, 0], M, alpha, ap,
                                &partial[blk, 0])
                    if op == FNN_PRELU:
                        prelu_alpha_acc(&dout[i, 0], &saved[i, 0], M, &apartial[blk, 0])
        for blk in range(nblocks):
            add_into(&partial[blk, 0], &db[0], M)
            if op == FNN_PRELU:
                add_into(&apartial[blk, 0], &dalpha[0], M)
    if D == 0:
        return  # dx and dw are empty

    # Pass 2: dx = G @ w.T (N x D, inner M) and dw = x.T @ G (D x M, inner N), one tile list.
    g = &dout[0, 0] if ident else &dz[0, 0]
    px = _plan(N, D, M)
    pw = _plan(D, M, N)
    ntx = px.nr * px.nc if want_dx else 0
    ntw = pw.nr * pw.nc
    nt = n_threads if n_threads < ntx + ntw else <int>(ntx + ntw)
    if 2.0 * N * M * D * (2 if want_dx else 1) < 2 * SERIAL_FLOPS:
        nt = 1
    _blas_enter()
    try:
        with nogil:
            if nt <= 1:
                for t in range(ntx + ntw):
                    _backward_tile(px, pw, t, ntx, N, D, M, g, &x[0, 0], &w[0, 0],
                                   &dx[0, 0] if want_dx else NULL, &dw[0, 0])
            else:
                for t in prange(ntx + ntw, num_threads=nt, schedule="dynamic"):
                    _backward_tile(px, pw, t, ntx, N, D, M, g, &x[0, 0], &w[0, 0],
                                   &dx[0, 0] if want_dx else NULL, &dw[0, 0])
    finally:
        _blas_exit()
