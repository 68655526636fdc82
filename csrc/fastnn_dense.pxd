# The dense-layer machinery shared by fastnn._kernels.dense (one layer per call) and
# fastnn._kernels.network (a whole training step per call): BLAS thread control, the shape-only
# tiling of products, and the fused forward/backward of one layer on raw pointers.
#
# One DenseConfig lives in the dense module; the network module reaches the same one through
# its address, so the BLAS-users count and the tiling parameters exist exactly once.
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport uint32_t
from libc.string cimport memset
cimport scipy.linalg.cython_blas as blas

from fastnn_openmp cimport effective_threads, fnn_omp_get_thread_num, fnn_note_parallel
from fastnn_ops cimport (FNN_IDENTITY, FNN_RELU, FNN_LEAKY, FNN_PRELU, keeps_pre,
                        bias_act_fwd_rows, bias_act_keep_rows, add_into_rows,
                        act_bwd_into_saved_rows, act_bwd_inplace_rows, act_bwd_acc_rows,
                        act_bwd_acc_inplace_rows, prelu_alpha_acc_rows, relu_mask_rows,
                        relu_bwd_mask_rows)

from fastnn_dropout cimport (fnn_dropout_f32, fnn_dropout_f64, fnn_dropout_inplace_f32,
                             fnn_dropout_inplace_f64)

ctypedef void (*set_threads_fn)(int) noexcept nogil
ctypedef int (*get_threads_fn)() noexcept nogil


cdef struct DenseConfig:
    set_threads_fn blas_set      # the BLAS's set/get-num-threads (NULL: not controllable)
    get_threads_fn blas_get
    int blas_users               # fastnn calls now running products (GIL-protected)
    int blas_saved               # the BLAS thread count to restore when they are done
    double tile_flops            # tiles beyond tile_cores only while each keeps this much work
    Py_ssize_t min_tile_rows
    Py_ssize_t min_tile_cols
    Py_ssize_t max_tiles
    Py_ssize_t tile_cores        # the CPUs the tiles are sized for (a power of two): set once at
                                 # import from the machine, never from the thread count
    Py_ssize_t max_tile_elems    # dx tiles are split further while they hold more outputs
                                 # (the layer API and the step kernel, for its per-thread dx
                                 # scratch; 0 in fastnn.functional's snapshot: no bound)
    Py_ssize_t max_tile_elems_direct   # the same bound for a dx that the layer below takes
                                 # straight in (dx_direct: no float scratch tile; dx_tile_bound)
    double serial_flops          # products below this run as one serial BLAS call
    Py_ssize_t row_block_elems   # element-wise backward pass: elements per row block
    Py_ssize_t thin              # products with at most this many output rows or columns
                                 # run as one matrix-vector product (gemv) per row/column
    Py_ssize_t chunk_min_rows    # small layers run in two row chunks of at least this many
                                 # rows (0, or max_chunks < 2: never; see chunk_rows),
    Py_ssize_t chunk_rows_more   # in more chunks while each keeps at least this many rows,
    Py_ssize_t max_chunks        # up to this many (a power of two)
    double k_split               # a forward product whose inner dimension is at least this
                                 # many times its larger output side, worth two tiles or
                                 # more, runs in two parts of that dimension (0: never; see
                                 # forward_plan)
    double small_mnk             # a thin forward or weight-gradient product (an output side
                                 # of at most 16) of more multiply-adds than this is cut into
                                 # tiles of at most this many, which the BLAS's small-matrix
                                 # kernels take (0: never; small_cut, fastnn/_blas.py)
    double k_split_pair          # a lower bar for a product worth two tiles on a 2-CPU plan
                                 # (tile_cores 2; 0, or a value not below k_split: only
                                 # k_split applies; never parts when k_split is 0)
    Py_ssize_t dw_halves_rows    # a weight gradient planned as two row tiles runs as two
                                 # halves of a batch of at least this many rows instead (0:
                                 # never; dw_in_halves) ...
    Py_ssize_t dw_halves_elems   # ... when it has at most this many elements


# Which thread runs which product tile: a static schedule (each thread a contiguous run of tiles
# in row-major order, the same on every call), not first come, first served. A step's phases
# then give each thread the same rows of the batch where their cuts line up: the rows of its
# forward tiles are those its dx tiles write back over and its bias-gradient blocks (static too)
# read; a weight-gradient tile of whole rows is the span its thread's share of the update
# (update_raw, static) covers; and from one step to the next a thread keeps its tiles of the
# weights. First come, first served, those lines moved from core to core on most phases.
# 784-512-512-10 (1024), 2 threads (bench/NOTES.md, *Static tile schedule*): the dx products
# 0.33-0.51 ms a step faster, the step 2-4% in quiet stretches and up to 9% in slow ones. The
# cost: a thread that the OS pauses (a busy core) is waited for instead of having its tiles
# taken, which the thread governors avoid by dropping a thread. The layer API's backward lists
# (backward_products with dx: dx tiles and weight-gradient tiles of other sizes) stay first
# come, first served, but for a weight gradient in halves of the batch (dw_in_halves), whose
# dx tiles are static too. Which thread runs a tile never changes its numbers.
cdef struct Plan:
    Py_ssize_t tr       # tile rows
    Py_ssize_t tc       # tile cols
    Py_ssize_t nr       # tiles down
    Py_ssize_t nc       # tiles across
    Py_ssize_t thin     # DenseConfig.thin, for gemm()
    Py_ssize_t kb       # parts of the inner dimension (forward_plan: 1 or 2; 1 elsewhere),
    Py_ssize_t kd       # each kd deep but the last; the tiles above are those of one part


cdef inline int blas_enter(DenseConfig *g) except -1:
    """Hold the BLAS at one thread while a fastnn product runs. Call with the GIL held."""
    if g.blas_set != NULL:
        if g.blas_users == 0:
            g.blas_saved = g.blas_get()
            if g.blas_saved != 1:
                g.blas_set(1)
        g.blas_users += 1
    return 0


cdef inline void blas_exit(DenseConfig *g) noexcept:
    if g.blas_set != NULL:
        g.blas_users -= 1
        if g.blas_users == 0 and g.blas_saved != 1:
            g.blas_set(g.blas_saved)


cdef inline Py_ssize_t cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline Py_ssize_t batch_chunk_rows(const DenseConfig *g, Py_ssize_t N) noexcept nogil:
    """Rows per chunk of a batch of N rows (0: too few rows to cut): two chunks of at least
    chunk_min_rows rows, or a power of two of them up to max_chunks while each keeps
    chunk_rows_more rows (more chunks cost more calls and partial sums: bench/tile_params.py).
    N only: the layers that run in chunks (chunk_rows) and the losses (loss_raw's tasks never
    cross a chunk boundary) cut a batch the same way. A multiple of 8 rows: the loss sums its
    rows in groups of 8 (fastnn_losses.pxd), which must not straddle two chunks."""
    cdef Py_ssize_t nch = 2
    if g.chunk_min_rows <= 0 or g.max_chunks < 2 or N < 2 * g.chunk_min_rows:
        return 0
    while nch * 2 <= g.max_chunks and N // (nch * 2) >= g.chunk_rows_more:
        nch *= 2
    return cdiv(cdiv(N, nch), 8) * 8


cdef inline Py_ssize_t chunk_rows(const DenseConfig *g, Py_ssize_t N, Py_ssize_t D,
                                  Py_ssize_t M) noexcept nogil:
    """Rows per chunk when a layer (N rows, D inputs, M outputs) runs in row chunks; 0 when it
    does not. A small layer (its forward product below serial_flops, so it would otherwise be
    one serial tile) computes its forward, its dx and its bias gradient chunk by chunk
    (batch_chunk_rows), and its weight gradient as the sum, in chunk order, of one product
    per chunk. Every layer that chunks cuts the batch the same way, so the step kernel can
    run a small network's whole step chunk by chunk, a chunk per thread, with the layer
    path's numbers (network.pyx)."""
    if 2.0 * N * D * M >= g.serial_flops:
        return 0
    return batch_chunk_rows(g, N)


cdef inline Py_ssize_t tile_target(const DenseConfig *g, double flops) noexcept nogil:
    """How many tiles a product of `flops` is worth (make_plan): 1 below serial_flops, else a
    power of two from 2, up to tile_cores while each keeps serial_flops, and beyond that up
    to max_tiles while each keeps tile_flops (set high: one tile per core but for products of
    many GFLOP, dense.pyx)."""
    cdef Py_ssize_t target = 1
    if flops >= g.serial_flops:
        target = 2
        while target * 2 <= g.max_tiles and target * 2 * g.tile_flops <= flops:
            target *= 2
        while (target * 2 <= g.max_tiles and target * 2 <= g.tile_cores
               and target * 2 * g.serial_flops <= flops):
            target *= 2
    return target


cdef inline Plan tile_plan(const DenseConfig *g, Py_ssize_t r, Py_ssize_t c, Py_ssize_t target,
                           Py_ssize_t max_elems) noexcept nogil:
    """An r x c output cut into about `target` tiles (make_plan's rules; kb = 1, kd unset)."""
    cdef Plan p
    cdef Py_ssize_t rb = 1, cb = 1
    cdef bint can_r, can_c
    p.thin = g.thin
    p.kb = 1
    # (a dx product with a small inner dimension has few flops but many outputs: its tiles are
    # also bounded, so that the step kernel's per-thread dx tile stays small)
    while rb * cb < target or (max_elems > 0 and cdiv(r, rb) * cdiv(c, cb) > max_elems):
        can_r = r // (rb * 2) >= g.min_tile_rows
        can_c = c // (cb * 2) >= g.min_tile_cols
        if can_r and (not can_c or r * cb >= c * rb):
            rb *= 2
        elif can_c:
            cb *= 2
        else:
            break
    p.tr = cdiv(r, rb)
    if rb > 1:
        p.tr = cdiv(p.tr, 8) * 8
    p.tc = cdiv(c, cb)
    if cb > 1:
        p.tc = cdiv(p.tc, 16) * 16
    if p.tr < 1:
        p.tr = 1
    if p.tc < 1:
        p.tc = 1
    p.nr = cdiv(r, p.tr)
    p.nc = cdiv(c, p.tc)
    return p


cdef inline bint small_cut(const DenseConfig *g, Py_ssize_t r, Py_ssize_t c, Py_ssize_t k,
                           Py_ssize_t max_elems, Plan *out) noexcept nogil:
    """The cut of a thin product (an output side of at most 16, worth two tiles or more) of
    more than small_mnk multiply-adds into tiles of at most small_mnk each (a power of two of
    them, up to max_tiles), into *out; False where there is no such cut (then make_plan's
    usual one). OpenBLAS's small-matrix kernels (SkylakeX) multiply such a tile without
    packing either operand, and a thin tile's packing is most of its time (512 x 10 with
    inner 1024, one thread: 313 us as one call, 100 us as eight of 64 rows; bench/NOTES.md).
    For the forward (NN) and weight-gradient (NT) products only: OpenBLAS refuses that path
    to the dx products' form (TN) above 1200 outputs a tile, so their plans never take it."""
    cdef double mnk = <double>r * <double>c * <double>k
    cdef Py_ssize_t target
    if g.small_mnk <= 0 or min(r, c) > 16 or mnk <= g.small_mnk:
        return False
    target = tile_target(g, 2.0 * mnk)
    if target < 2:
        return False   # (below serial_flops: one serial call, as every product there)
    while True:
        out[0] = tile_plan(g, r, c, target, max_elems)
        if <double>out[0].tr * <double>out[0].tc * <double>k <= g.small_mnk:
            out[0].kd = k
            return True
        if target * 2 > g.max_tiles:
            return False
        target *= 2


cdef inline Plan make_plan(const DenseConfig *g, Py_ssize_t r, Py_ssize_t c, Py_ssize_t k,
                           Py_ssize_t max_elems=0, Py_ssize_t chunk=0,
                           bint small=True) noexcept nogil:
    """Tiles for an (r x c) output with inner dimension k. Depends on the shape and on
    tile_cores (set once at import from the machine), never on the thread count.

    A power of two of tiles (so that 2, 4, 8 or 16 threads share them evenly), tile_target's:
    2 once the product is worth two threads, up to tile_cores (the machine's CPUs) while each
    tile keeps serial_flops of work, more (up to max_tiles) only while each keeps tile_flops;
    and more where a tile would hold more than max_elems outputs (when > 0: the dx
    products, whose tiles the step kernel passes through a per-thread scratch tile). Each
    doubling halves the longer tile side while it stays at least min_tile_rows /
    min_tile_cols: near-square tiles keep BLAS's packing cost (one pass over each operand
    panel per tile) small.

    chunk > 0 (a layer that runs in row chunks, chunk_rows): one row of tiles per chunk of
    rows, split across only while a dx tile would hold more than max_elems outputs.

    small (not for dx products): a thin product cut for the small-matrix kernels where it
    can be (small_cut)."""
    cdef Plan p
    cdef Py_ssize_t cb = 1
    if chunk > 0:
        while (max_elems > 0 and chunk * cdiv(c, cb) > max_elems
               and c // (cb * 2) >= g.min_tile_cols):
            cb *= 2
        p.thin = g.thin
        p.kb = 1
        p.kd = k
        p.tr = chunk
        p.tc = cdiv(c, cb) if cb == 1 else cdiv(cdiv(c, cb), 16) * 16
        p.nr = cdiv(r, p.tr)
        p.nc = cdiv(c, p.tc)
        return p
    if small and small_cut(g, r, c, k, max_elems, &p):
        return p
    p = tile_plan(g, r, c, tile_target(g, 2.0 * r * c * k), max_elems)
    p.kd = k
    return p


cdef inline Plan row_plan(const DenseConfig *g, Py_ssize_t N, Py_ssize_t c, Py_ssize_t k,
                          Py_ssize_t max_elems=0) noexcept nogil:
    """The plan of a dx product (N x D with inner M; its rows are the batch): in row chunks
    when the layer runs in chunks, never the small-matrix cut (small_cut)."""
    return make_plan(g, N, c, k, max_elems, chunk_rows(g, N, c, k), False)


cdef inline Plan forward_plan(const DenseConfig *g, Py_ssize_t N, Py_ssize_t M,
                              Py_ssize_t D) noexcept nogil:
    """The plan of a forward product (N x M, inner D): make_plan's (in row chunks when the
    layer runs in chunks; a thin one cut for the small-matrix kernels first), except for a
    deep product (D at least k_split times the larger of N and M, or k_split_pair times when
    the product is worth two tiles on a 2-CPU plan; worth two tiles or more, hence never a
    layer in row chunks), which runs in kb = 2 parts of its inner dimension, each over the
    whole output cut into half the tiles: x[:, :kd] @ w[:kd] and x[:, kd:] @ w[kd:] (kd a
    multiple of 16), added in that order (forward_parts_rows). Row or column tiles of such a
    product would each pack the whole of its deep operand panel again (3072-100-10, batch
    200: two 104-row tiles each pack all of W, 1.2 MB); two parts of one tile each (a 2-CPU
    plan) pack each operand once, for one N x M partial (forward_ws_elems) and one pass
    over the output. On a 2-CPU plan (tile_cores 2) a product worth two tiles has the lower
    bar k_split_pair: its two parts, one a thread, are W's two halves of rows, the rows that
    thread updated last (update_raw and the weight-gradient tiles cut W by rows,
    statically), where two column tiles would each read half of their W from the other
    core (784-512-512-10 (128) on an Intel Xeon: the first two forwards 0.05 and 0.03 ms
    faster, dense.pyx). With more tile_cores a thread's share is no longer those rows, and
    with one the parts only add a partial: not there (not measured). Shape and tile_cores
    only, like every plan."""
    cdef Py_ssize_t ch = chunk_rows(g, N, D, M), target
    cdef Plan p
    cdef double bar = g.k_split
    if ch == 0 and small_cut(g, N, M, D, 0, &p):
        return p   # (a thin forward: tiles for the small-matrix kernels before any parts)
    if ch == 0 and D >= 2 and bar > 0:
        target = tile_target(g, 2.0 * N * M * D)
        if target == 2 and g.tile_cores == 2 and 0 < g.k_split_pair < bar:
            bar = g.k_split_pair
        if target >= 2 and D >= bar * max(N, M):
            p = tile_plan(g, N, M, target // 2, 0)
            p.kb = 2
            p.kd = min(cdiv(cdiv(D, 2), 16) * 16, D - 1)
            return p
    return make_plan(g, N, M, D, 0, ch)


cdef inline Py_ssize_t forward_ws_elems(const DenseConfig *g, Py_ssize_t N, Py_ssize_t D,
                                        Py_ssize_t M) noexcept nogil:
    """Workspace elements of a forward product (dense_forward_raw's ws): an N x M partial per
    part of the inner dimension after the first (forward_plan)."""
    cdef Plan p = forward_plan(g, N, M, D)
    return (p.kb - 1) * N * M


cdef inline void gemv(bint trans, Py_ssize_t m, Py_ssize_t n, const floating *A, Py_ssize_t lda,
                      const floating *x, Py_ssize_t incx, floating *y, Py_ssize_t incy,
                      floating beta) noexcept nogil:
    """Column-major y = op(A) x + beta y, A (m x n) with leading dimension lda."""
    cdef char t = b'T' if trans else b'N'
    cdef int m_ = <int>m, n_ = <int>n, lda_ = <int>lda, incx_ = <int>incx, incy_ = <int>incy
    cdef floating one = 1
    if floating is float:
        blas.sgemv(&t, &m_, &n_, &one, <float *>A, &lda_, <float *>x, &incx_, &beta, y, &incy_)
    else:
        blas.dgemv(&t, &m_, &n_, &one, <double *>A, &lda_, <double *>x, &incx_, &beta, y, &incy_)


# A thin product's inner dimension runs in blocks of THIN_K_BLOCK (the last may be
# shorter). One gemv over the whole of a long inner dimension (a thin layer's weight gradient
# over a batch of 10**6 rows) sums it in a few float32 lanes, or, for sgemv's 'N' form (a
# product with one output column), adds into y in many small steps; either way the error
# grows with the length (1.7e-4 relative at 10**6 rows against 6e-7 for sgemm, which also
# blocks its inner dimension). Each block's gemv sums into a cleared stack buffer of THIN_TMP
# elements (C's long side in pieces that fit), which is then added into C once: one rounding
# per block. Shapes only: thread-count independent.
cdef enum:
    THIN_K_BLOCK = 4096
    THIN_TMP = 1024


cdef inline void thin_product(bint trans_a, bint trans_b, Py_ssize_t r, Py_ssize_t c,
                              Py_ssize_t k, const floating *A, Py_ssize_t lda,
                              const floating *B, Py_ssize_t ldb, floating *C, Py_ssize_t ldc,
                              floating beta) noexcept nogil:
    """gemm's thin case for one block of the inner dimension: one gemv per column or row of
    C (the shorter side), C = product + beta C."""
    cdef Py_ssize_t i, j
    if c <= r:
        # column j of C: op(A) @ op(B)[:, j]; row-major A (r x k) is column-major A^T
        for j in range(c):
            gemv(not trans_a, r if trans_a else k, k if trans_a else r, A, lda,
                 B + (j * ldb if trans_b else j), 1 if trans_b else ldb, C + j, ldc, beta)
    else:
        # row i of C: op(B)^T @ op(A)[i, :]; row-major B (k x c) is column-major B^T
        for i in range(r):
            gemv(trans_b, k if trans_b else c, c if trans_b else k, B, ldb,
                 A + (i if trans_a else i * lda), lda if trans_a else 1, C + i * ldc, 1,
                 beta)


cdef inline void thin_blocked(bint trans_a, bint trans_b, Py_ssize_t r, Py_ssize_t c,
                              Py_ssize_t k, const floating *A, Py_ssize_t lda,
                              const floating *B, Py_ssize_t ldb, floating *C,
                              Py_ssize_t ldc) noexcept nogil:
    """C += op(A) @ op(B) for a thin product whose inner dimension k is longer than
    THIN_K_BLOCK and whose short side fits THIN_TMP: C's long side in pieces of
    THIN_TMP // (short side); for each piece, each block of the inner dimension goes through
    the cleared buffer (thin_product, beta = 0) and is added into C."""
    cdef floating tmp[THIN_TMP]
    cdef bint by_rows = c <= r          # pieces of C's rows (else of its columns)
    cdef Py_ssize_t short = c if by_rows else r, long_ = r if by_rows else c
    cdef Py_ssize_t piece = THIN_TMP // short, p0 = 0, pl, k0, kb, i, j
    while p0 < long_:
        pl = min(piece, long_ - p0)
        k0 = 0
        while k0 < k:
            kb = min(<Py_ssize_t>THIN_K_BLOCK, k - k0)
            memset(tmp, 0, pl * short * sizeof(floating))
            if by_rows:
                # rows p0 .. p0 + pl of C: those of op(A); tmp is pl x c
                thin_product(trans_a, trans_b, pl, c, kb,
                             A + (k0 * lda + p0 if trans_a else p0 * lda + k0), lda,
                             B + (k0 if trans_b else k0 * ldb), ldb, tmp, c, 0)
                for i in range(pl):
                    for j in range(c):
                        C[(p0 + i) * ldc + j] += tmp[i * c + j]
            else:
                # columns p0 .. p0 + pl of C: those of op(B); tmp is r x pl
                thin_product(trans_a, trans_b, r, pl, kb,
                             A + (k0 * lda if trans_a else k0), lda,
                             B + (p0 * ldb + k0 if trans_b else k0 * ldb + p0), ldb, tmp, pl, 0)
                for i in range(r):
                    for j in range(pl):
                        C[i * ldc + p0 + j] += tmp[i * pl + j]
            k0 += THIN_K_BLOCK
        p0 += piece


cdef inline void gemm(bint trans_a, bint trans_b, Py_ssize_t r, Py_ssize_t c, Py_ssize_t k,
                      const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                      floating *C, Py_ssize_t ldc, Py_ssize_t thin, bint acc) noexcept nogil:
    """Row-major C (r x c) = op(A) (r x k) @ op(B) (k x c), as the column-major product
    C^T = op(B)^T op(A)^T: operands swapped, transposes as flags, nothing copied. r, c, k >= 1.
    acc: C += the product instead (beta = 1).

    A thin product (c or r at most `thin`: a layer with one to a few outputs, or the weight
    gradient of one with a few inputs) is one gemv per output column or row instead: sgemm
    packs both operands for its blocked kernel, which costs more than the product itself at
    these shapes (2-100-3, batch 300: 11 us for the 100x3 weight gradient, 3.6 us as three
    gemv), a long inner dimension in blocks (thin_blocked). The choice depends on the shape
    only, so results stay thread-count independent."""
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    cdef int m_ = <int>c, n_ = <int>r, k_ = <int>k
    cdef int lda_ = <int>ldb, ldb_ = <int>lda, ldc_ = <int>ldc
    cdef floating one = 1
    cdef floating beta = 1 if acc else 0
    cdef Py_ssize_t i, j
    if c <= thin or r <= thin:
        # y = 0 first (unless accumulating): with beta = 0 the BLAS need not read y, but not
        # every OpenBLAS release got that right (0 * NaN garbage), and C may be uninitialized
        if not acc:
            for i in range(r):
                for j in range(c):
                    C[i * ldc + j] = 0
        if k > THIN_K_BLOCK and min(r, c) <= THIN_TMP:
            thin_blocked(trans_a, trans_b, r, c, k, A, lda, B, ldb, C, ldc)
        else:
            # (a short inner dimension; or both sides above THIN_TMP, which only a `thin`
            # set that high reaches: one gemv per column or row over all of k)
            thin_product(trans_a, trans_b, r, c, k, A, lda, B, ldb, C, ldc, beta)
        return
    if floating is float:
        blas.sgemm(&ta, &tb, &m_, &n_, &k_, &one, <float *>B, &lda_, <float *>A, &ldb_,
                   &beta, C, &ldc_)
    else:
        blas.dgemm(&ta, &tb, &m_, &n_, &k_, &one, <double *>B, &lda_, <double *>A, &ldb_,
                   &beta, C, &ldc_)


cdef struct Tile:
    Py_ssize_t i0       # first row
    Py_ssize_t j0       # first column
    Py_ssize_t ti       # rows (the last tile down may be short)
    Py_ssize_t tj       # columns


cdef inline Tile tile_of(Plan p, Py_ssize_t t, Py_ssize_t r, Py_ssize_t c) noexcept nogil:
    """Tile t (row-major order over the plan) of an r x c output."""
    cdef Tile q
    q.i0 = (t // p.nc) * p.tr
    q.j0 = (t % p.nc) * p.tc
    q.ti = min(r - q.i0, p.tr)
    q.tj = min(c - q.j0, p.tc)
    return q


# A dx product, dx = g @ w.T (inner dimension M, the layer's output width), has both operands
# with that dimension contiguous: as a column-major BLAS call, op(A) = T. OpenBLAS's
# small-matrix kernels take that form only up to 1,200 outputs a call (on the kinds that have
# them), and its general kernel packs both operands for it; the untransposed form ran 1.3-2.2x
# faster at narrow layers' shapes (bench/NOTES.md, *dx products untransposed*). For a layer
# of at most DX_WT_MAX_K outputs (DX_WT_MAX_K_PLAIN where the copy is plain loops, which cost
# as much as the gain at 64 outputs: fastnn_transpose.h), dx_gemm copies the tile's rows of w
# transposed, in panels of at most DX_WT_ELEMS elements on the stack (M x the panel's
# columns), and runs each panel's product untransposed. A rule of the shape (and the machine)
# only, the same in every dx product (the layer path's, the functional API's and the
# whole-step kernel's): their numbers stay the same as each other's for any thread count.
cdef enum:
    DX_WT_MAX_K = 64
    DX_WT_MAX_K_PLAIN = 32
    DX_WT_ELEMS = 4096


cdef extern from "fastnn_transpose.h" nogil:
    void fnn_transpose_f32(const float *src, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lds,
                           float *dst, Py_ssize_t ldd)
    void fnn_transpose_f64(const double *src, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lds,
                           double *dst, Py_ssize_t ldd)
    int fnn_transpose_fast()


cdef inline void dx_gemm(Py_ssize_t ti, Py_ssize_t tj, Py_ssize_t M, const floating *g,
                         const floating *w, floating *C, Py_ssize_t ldc,
                         Py_ssize_t thin) noexcept nogil:
    """C (ti x tj, rows ldc apart) = g (ti x M, rows M apart) @ w.T, w the tile's tj rows of
    the weights (rows M apart). ti, tj, M >= 1."""
    cdef floating wt[DX_WT_ELEMS]
    cdef Py_ssize_t j0 = 0, tw, panel
    if M > (DX_WT_MAX_K if fnn_transpose_fast() else DX_WT_MAX_K_PLAIN):
        gemm(False, True, ti, tj, M, g, M, w, M, C, ldc, thin, False)
        return
    panel = DX_WT_ELEMS // M
    while j0 < tj:
        tw = tj - j0
        if tw > panel:
            tw = panel
        if floating is float:
            fnn_transpose_f32(w + j0 * M, tw, M, M, wt, tw)
        else:
            fnn_transpose_f64(w + j0 * M, tw, M, M, wt, tw)
        gemm(False, False, ti, tw, M, g, M, wt, tw, C + j0, ldc, thin, False)
        j0 += tw


cdef inline void gemm_tile(Plan p, Py_ssize_t t, bint trans_a, bint trans_b,
                           Py_ssize_t r, Py_ssize_t c, Py_ssize_t k,
                           const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                           floating *C, Py_ssize_t ldc) noexcept nogil:
    """Tile t (row-major order over the plan) of the product C = op(A) @ op(B)."""
    cdef Tile q = tile_of(p, t, r, c)
    gemm(trans_a, trans_b, q.ti, q.tj, k,
         A + (q.i0 if trans_a else q.i0 * lda), lda,
         B + (q.j0 * ldb if trans_b else q.j0), ldb,
         C + q.i0 * ldc + q.j0, ldc, p.thin, False)


cdef inline void forward_tile(Plan p, Py_ssize_t t, int op, bint keep, Py_ssize_t N,
                              Py_ssize_t M, Py_ssize_t D, const floating *x, const floating *w,
                              const floating *b, floating *dst, floating *y, double alpha,
                              const floating *ap) noexcept nogil:
    """One output tile: its product into dst (y, or z when the pre-activation is kept), then the
    bias + activation epilogue on the tile's rows while they are in cache."""
    cdef Tile q = tile_of(p, t, N, M)
    gemm_tile(p, t, False, False, N, M, D, x, D, w, M, dst, M)
    if keep:
        bias_act_keep_rows(op, dst + q.i0 * M + q.j0, b + q.j0, y + q.i0 * M + q.j0, M, q.ti, q.tj,
                           alpha, (ap + q.j0) if ap != NULL else NULL)
    else:
        bias_act_fwd_rows(op, y + q.i0 * M + q.j0, M, q.ti, b + q.j0, q.tj, alpha, NULL)


cdef inline void forward_part_tile(Plan p, Py_ssize_t t, Py_ssize_t N, Py_ssize_t M,
                                   Py_ssize_t D, const floating *x, const floating *w,
                                   floating *dst, floating *ws) noexcept nogil:
    """Task t of a forward product in parts of its inner dimension (forward_plan, kb > 1):
    tile t % (nr nc) of part t // (nr nc), into dst (part 0) or the part's N x M slot of ws."""
    cdef Py_ssize_t per = p.nr * p.nc, part = t // per
    cdef Py_ssize_t k0 = part * p.kd
    cdef floating *out = dst if part == 0 else ws + (part - 1) * N * M
    gemm_tile(p, t % per, False, False, N, M, p.kd if part < p.kb - 1 else D - k0,
              x + k0, D, w + k0 * M, M, out, M)


cdef inline void forward_parts_rows(Plan p, Py_ssize_t i0, Py_ssize_t rows, int op, bint keep,
                                    Py_ssize_t N, Py_ssize_t M, const floating *b,
                                    floating *dst, floating *y, const floating *ws,
                                    double alpha, const floating *ap) noexcept nogil:
    """Rows i0 .. i0 + rows of a forward product in parts: dst += each later part, in part
    order, then forward_tile's epilogue (bias, activation) on those rows. (The rows are
    contiguous: one element-wise add of rows * M elements per part.)"""
    cdef Py_ssize_t part
    for part in range(1, p.kb):
        add_into_rows(ws + (part - 1) * N * M + i0 * M, rows * M, 1, dst + i0 * M, rows * M)
    if keep:
        bias_act_keep_rows(op, dst + i0 * M, b, y + i0 * M, M, rows, M, alpha, ap)
    else:
        bias_act_fwd_rows(op, y + i0 * M, M, rows, b, M, alpha, NULL)


cdef inline Py_ssize_t rows_per_block(const DenseConfig *g, Py_ssize_t M) noexcept nogil:
    """Rows per block of an element-wise pass over rows of M elements (row_block_elems)."""
    cdef Py_ssize_t rb = g.row_block_elems // (M if M > 0 else 1)
    return rb if rb > 0 else 1


cdef inline void forward_in_parts(const DenseConfig *g, Plan p, int op, bint keep,
                                  const floating *x, const floating *w, const floating *b,
                                  floating *dst, floating *y, floating *ws, Py_ssize_t N,
                                  Py_ssize_t D, Py_ssize_t M, double alpha,
                                  const floating *avec, int n_threads) noexcept nogil:
    """dense_forward_raw for a plan with kb > 1 parts: every part's tiles as one task list,
    then the sum of the parts and the epilogue over fixed row blocks (element-wise: any
    thread may take any block)."""
    cdef Py_ssize_t t, ntasks = p.kb * p.nr * p.nc
    cdef Py_ssize_t rb = rows_per_block(g, M), blk, nblocks = cdiv(N, rb)
    cdef int nt = n_threads if n_threads < ntasks else <int>ntasks
    if nt <= 1:
        for t in range(ntasks):
            forward_part_tile(p, t, N, M, D, x, w, dst, ws)
    else:
        fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for t in prange(ntasks, num_threads=nt, schedule="static"):   # (see Plan)
            forward_part_tile(p, t, N, M, D, x, w, dst, ws)
    nt = effective_threads(N * M, 65536, n_threads)
    if nt <= 1 or nblocks <= 1:
        for blk in range(nblocks):
            forward_parts_rows(p, blk * rb, min(rb, N - blk * rb), op, keep, N, M, b, dst, y,
                               ws, alpha, avec)
    else:
        fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for blk in prange(nblocks, num_threads=nt, schedule="static"):
            forward_parts_rows(p, blk * rb, min(rb, N - blk * rb), op, keep, N, M, b, dst, y,
                               ws, alpha, avec)


cdef inline void dense_forward_raw(const DenseConfig *g, int op, const floating *x,
                                   const floating *w, const floating *b, floating *y,
                                   floating *z, Py_ssize_t N, Py_ssize_t D, Py_ssize_t M,
                                   double alpha, const floating *avec, floating *ws,
                                   int n_threads) noexcept nogil:
    """y = act(x @ w + b) (z = x @ w + b kept for leaky relu / prelu). N, M, D >= 1.
    ws: forward_ws_elems(N, D, M) elements (a deep product's partial; may be NULL when that
    is 0: without it a deep product runs in one part, which gives other numbers than the
    layer path's). The caller holds the BLAS single-threaded (blas_enter)."""
    cdef bint keep = keeps_pre(op)
    cdef floating *dst = z if keep else y
    cdef Plan p = forward_plan(g, N, M, D)
    cdef Py_ssize_t t, ntiles = p.nr * p.nc
    cdef int nt = n_threads if n_threads < ntiles else <int>ntiles
    if p.kb > 1:
        if ws != NULL:
            forward_in_parts(g, p, op, keep, x, w, b, dst, y, ws, N, D, M, alpha, avec,
                             n_threads)
            return
        # (cannot happen when ws is sized by forward_ws_elems: never write through NULL)
        p = make_plan(g, N, M, D)
        ntiles = p.nr * p.nc
        nt = n_threads if n_threads < ntiles else <int>ntiles
    if chunk_rows(g, N, D, M) > 0:
        nt = 1   # a small layer's chunks: not worth a parallel region of their own
    if nt <= 1:
        for t in range(ntiles):
            forward_tile(p, t, op, keep, N, M, D, x, w, b, dst, y, alpha, avec)
    else:
        fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for t in prange(ntiles, num_threads=nt, schedule="static"):   # (see Plan)
            forward_tile(p, t, op, keep, N, M, D, x, w, b, dst, y, alpha, avec)


cdef inline Py_ssize_t backward_blocks(Py_ssize_t N, Py_ssize_t rb) noexcept nogil:
    """How many (M,) partial-sum rows dense_backward_raw needs for N rows in blocks of rb."""
    return cdiv(N, rb) if N > 0 else 1


cdef inline Py_ssize_t bias_rows_per_block(const DenseConfig *g, Py_ssize_t N, Py_ssize_t D,
                                           Py_ssize_t M) noexcept nogil:
    """Rows per block of a layer's bias-gradient sums: its chunks when it runs in chunks (so
    the blocks are the chunks), else rows_per_block."""
    cdef Py_ssize_t ch = chunk_rows(g, N, D, M)
    return ch if ch > 0 else rows_per_block(g, M)


cdef inline bint dw_in_turns(Py_ssize_t ch, Py_ssize_t D) noexcept nogil:
    """Whether a layer in row chunks of ch rows with D inputs adds its chunks' weight-gradient
    products into dw one after another, in chunk order (beta = 1), rather than each into a
    partial of its own, summed afterwards: when such a partial (D x M) would be larger than
    the chunk's share of the layer's outputs (ch x M). Those products are short (ch rows),
    so the step kernel's threads lose little waiting for their turn (network.pyx); the
    longer ones keep their partials and run side by side. Shape only, like the chunks."""
    return D > ch


cdef inline Py_ssize_t wslot_elems(const DenseConfig *g, Py_ssize_t N, Py_ssize_t D,
                                   Py_ssize_t M) noexcept nogil:
    """Elements of the weight-gradient workspace of a layer that runs in chunks: one D x M
    partial per chunk after the first (the first goes to dw itself), unless its chunks take
    turns (dw_in_turns). 0 otherwise."""
    cdef Py_ssize_t ch = chunk_rows(g, N, D, M)
    return (cdiv(N, ch) - 1) * D * M if ch > 0 and not dw_in_turns(ch, D) else 0


cdef inline void dw_chunk(Py_ssize_t c, Py_ssize_t ch, Py_ssize_t N, Py_ssize_t D, Py_ssize_t M,
                          const floating *g, const floating *x, floating *dst,
                          Py_ssize_t thin, bint acc) noexcept nogil:
    """Chunk c's weight-gradient product x[rows].T @ g[rows] (D x M) into dst (acc: added to
    it)."""
    cdef Py_ssize_t r0 = c * ch
    cdef Py_ssize_t rows = min(ch, N - r0)
    gemm(True, False, D, M, rows, x + r0 * D, D, g + r0 * M, M, dst, M, thin, acc)


cdef inline floating *dw_chunk_dst(Py_ssize_t c, Py_ssize_t ch, Py_ssize_t D, Py_ssize_t M,
                                   floating *dw, floating *wslots) noexcept nogil:
    """Where chunk c's weight-gradient product goes: dw itself for chunk 0 or when the chunks
    take turns (dw_in_turns, chunks after the first adding to it), else its partial."""
    if c == 0 or dw_in_turns(ch, D):
        return dw
    return wslots + (c - 1) * D * M


cdef inline void dw_sum_chunks(Py_ssize_t nch, Py_ssize_t ch, Py_ssize_t D, Py_ssize_t M,
                               floating *dw, const floating *wslots) noexcept nogil:
    """dw = ((dw + partial 1) + partial 2) + ...: the chunks' products in chunk order (nothing
    to do when they took turns)."""
    if nch > 1 and not dw_in_turns(ch, D):
        add_into_rows(wslots, D * M, nch - 1, dw, D * M)


cdef inline void backward_tile(Plan px, Plan pw, Py_ssize_t t, Py_ssize_t ntx, Py_ssize_t ch,
                               Py_ssize_t N, Py_ssize_t D, Py_ssize_t M, const floating *g,
                               const floating *x, const floating *w, floating *dx, floating *dw,
                               floating *wslots) noexcept nogil:
    """Task t of the backward products: the first ntx are dx = g @ w.T tiles, the rest dw =
    x.T @ g tiles (or, for a layer in chunks of ch rows, its chunks' products: one task per
    chunk, or one for all when they take turns, dw_in_turns)."""
    cdef Py_ssize_t c
    cdef Tile q
    if t < ntx:
        q = tile_of(px, t, N, D)
        dx_gemm(q.ti, q.tj, M, g + q.i0 * M, w + q.j0 * M, dx + q.i0 * D + q.j0, D, px.thin)
    elif ch > 0 and dw_in_turns(ch, D):
        for c in range(cdiv(N, ch)):
            dw_chunk(c, ch, N, D, M, g, x, dw, pw.thin, c > 0)
    elif ch > 0:
        c = t - ntx
        dw_chunk(c, ch, N, D, M, g, x, dw_chunk_dst(c, ch, D, M, dw, wslots), pw.thin, False)
    else:
        gemm_tile(pw, t - ntx, True, False, D, M, N, x, D, g, M, dw, M)


cdef inline void backward_block(Py_ssize_t blk, Py_ssize_t rb, int op, const floating *dout,
                                const floating *saved, floating *dz, double alpha,
                                const floating *avec, floating *partial, floating *apartial,
                                Py_ssize_t N, Py_ssize_t M) noexcept nogil:
    """Rows of block blk: dz = dout * act'(saved), summed into the block's own partial-sum
    row (zeroed here first: callers pass workspaces of any content)."""
    cdef Py_ssize_t i0 = blk * rb, rows = rb
    cdef floating *acc = partial + blk * M
    if i0 + rows > N:
        rows = N - i0
    memset(acc, 0, M * sizeof(floating))
    if op == FNN_IDENTITY:
        add_into_rows(dout + i0 * M, M, rows, acc, M)
        return
    if op == FNN_PRELU:
        # the slope partial reads dout first: with dz == dout it is overwritten next
        memset(apartial + blk * M, 0, M * sizeof(floating))
        prelu_alpha_acc_rows(dout + i0 * M, saved + i0 * M, M, rows, M, apartial + blk * M)
    if <const floating *>dz == dout:
        act_bwd_acc_inplace_rows(op, dz + i0 * M, saved + i0 * M, M, rows, M, alpha, avec, acc)
    else:
        act_bwd_acc_rows(op, dout + i0 * M, saved + i0 * M, dz + i0 * M, M, rows, M, alpha,
                         avec, acc)


cdef inline void sum_block_partials(int op, floating *db, floating *dalpha,
                                    const floating *partial, const floating *apartial,
                                    Py_ssize_t nblocks, Py_ssize_t M) noexcept nogil:
    """db = the blocks' partial-sum rows added in block order (and dalpha from the slope
    partials, prelu): the one reduction of backward_block's partials, whoever ran the blocks."""
    cdef Py_ssize_t j
    for j in range(M):
        db[j] = 0
    add_into_rows(partial, M, nblocks, db, M)
    if op == FNN_PRELU:
        for j in range(M):
            dalpha[j] = 0
        add_into_rows(apartial, M, nblocks, dalpha, M)


cdef inline void backward_pass1(int op, const floating *dout, const floating *saved,
                                floating *dz, double alpha, const floating *avec, floating *db,
                                floating *dalpha, floating *partial, floating *apartial,
                                Py_ssize_t rb, Py_ssize_t N, Py_ssize_t M,
                                int n_threads) noexcept nogil:
    """The element-wise pass of a layer's backward: dz = dout * act'(saved) (identity: nothing
    is written, dz is dout), and db = sum_rows dz, dalpha = sum_rows dout * min(pre, 0)
    (prelu), over fixed blocks of rb rows summed in order. See dense_backward_raw."""
    cdef Py_ssize_t nblocks = cdiv(N, rb)
    cdef Py_ssize_t blk
    # threads from 131072 elements (bench/threshold.py's backward crossover)
    cdef int nt = effective_threads(N * M, 65536, n_threads)
    if nt <= 1:
        for blk in range(nblocks):
            backward_block(blk, rb, op, dout, saved, dz, alpha, avec, partial, apartial, N, M)
    else:
        fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for blk in prange(nblocks, num_threads=nt, schedule="static"):
            backward_block(blk, rb, op, dout, saved, dz, alpha, avec, partial, apartial, N, M)
    sum_block_partials(op, db, dalpha, partial, apartial, nblocks, M)


cdef inline bint dw_in_halves(const DenseConfig *cfg, Plan pw, Py_ssize_t ch, Py_ssize_t N,
                              Py_ssize_t D, Py_ssize_t M) noexcept nogil:
    """Whether the weight gradient dw = x.T @ g (D x M, inner N), planned as pw, runs as two
    halves of the batch (dw_half_task) instead of as pw's two row tiles: where pw is exactly
    two row tiles (a 2-CPU plan), the batch has at least dw_halves_rows rows, dw at most
    dw_halves_elems elements, and the layer is neither in row chunks nor thin (M > 16).

    Each row tile reads the whole of g, half of it just written by the other thread (the
    rows of dz that thread's blocks of the backward pass or its dx tiles wrote); each half
    reads only its own rows of x and g. On an Intel Xeon (2 CPUs, AVX-512; bench/NOTES.md,
    *The weight gradient in halves of the batch*), 784-512-512-10 (1024): the weight
    gradients 0.2-0.3 ms faster each, the step 2-4%; no gain at 256 rows or below, and a
    loss for dw of 4096 x 4096 (each half adds into the whole of dw once more). Shape and
    tile parameters only, like every plan: the same bits on any thread count."""
    return (ch == 0 and cfg.dw_halves_rows > 0 and N >= cfg.dw_halves_rows and N >= 2
            and pw.nr == 2 and pw.nc == 1 and M > 16
            and <double>D * <double>M <= <double>cfg.dw_halves_elems)


cdef inline void dw_half_task(Plan pw, int phase, Py_ssize_t t, Py_ssize_t N, Py_ssize_t D,
                              Py_ssize_t M, const floating *g, const floating *x,
                              floating *dw) noexcept nogil:
    """Task t (0 or 1) of phase 0 or 1 of a weight gradient in halves (dw_in_halves): the
    product over the batch's half t (rows [0, N // 2) of x and g, or [N // 2, N)) for one of
    dw's two row blocks (pw's row tiles): in phase 0 block 1 - t (written), in phase 1
    block t (added). Every element of dw is thus the sum of the two halves' products in a
    fixed order (block 0: half 1's, then half 0's added; block 1: half 0's, then half 1's;
    the order shows in the bits where a half spans several of the BLAS's inner blocks),
    and a thread that runs task t of both phases reads only its half of the batch and ends
    holding block t, the rows its share of the update covers (update_raw is static)."""
    cdef Py_ssize_t h = N // 2
    cdef Py_ssize_t r0 = 0 if t == 0 else h
    cdef Py_ssize_t rows = h if t == 0 else N - h
    cdef Py_ssize_t blk = (1 - t) if phase == 0 else t
    cdef Py_ssize_t i0 = 0 if blk == 0 else pw.tr
    cdef Py_ssize_t ti = pw.tr if blk == 0 else D - pw.tr
    gemm(True, False, ti, M, rows, x + r0 * D + i0, D, g + r0 * M, M, dw + i0 * M, M, pw.thin,
         phase == 1)


cdef inline void backward_in_halves(Plan px, Plan pw, Py_ssize_t ntx,
                                    const floating *g, const floating *x, const floating *w,
                                    floating *dx, floating *dw, Py_ssize_t N, Py_ssize_t D,
                                    Py_ssize_t M, int nt) noexcept nogil:
    """backward_products for a weight gradient in halves (dw_in_halves): the dx tiles (if
    any) shared statically, so that a thread multiplies the rows of g its blocks of the
    backward pass wrote, then the halves' two phases, a task a thread."""
    cdef Py_ssize_t t
    cdef int phase
    if ntx > 0:
        if nt <= 1:
            for t in range(ntx):
                backward_tile(px, pw, t, ntx, 0, N, D, M, g, x, w, dx, dw, NULL)
        else:
            fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
            for t in prange(ntx, num_threads=nt, schedule="static"):   # (see Plan)
                backward_tile(px, pw, t, ntx, 0, N, D, M, g, x, w, dx, dw, NULL)
    for phase in range(2):
        if nt <= 1:
            for t in range(2):
                dw_half_task(pw, phase, t, N, D, M, g, x, dw)
        else:
            fnn_note_parallel()
            for t in prange(2, num_threads=2, schedule="static"):
                dw_half_task(pw, phase, t, N, D, M, g, x, dw)


cdef inline int product_threads(const DenseConfig *cfg, Py_ssize_t ntiles, double flops,
                                int n_threads) noexcept nogil:
    """Threads for a list of ntiles product tiles worth `flops` in all: one below the serial
    threshold, never more than there are tiles."""
    if ntiles <= 1 or n_threads < 1 or flops < 2 * cfg.serial_flops:
        return 1
    return n_threads if n_threads < ntiles else <int>ntiles


cdef inline void backward_products(const DenseConfig *cfg, const floating *g, const floating *x,
                                   const floating *w, floating *dx, floating *dw,
                                   floating *wslots, Py_ssize_t N, Py_ssize_t D, Py_ssize_t M,
                                   int n_threads) noexcept nogil:
    """dx = g @ w.T (N x D, inner M; skipped when dx is NULL) and dw = x.T @ g (D x M, inner
    N), as one list of shape-fixed tasks. D >= 1. wslots: wslot_elems(N, D, M) elements (a
    layer in row chunks may sum its chunks' dw products there)."""
    cdef Py_ssize_t ch = chunk_rows(cfg, N, D, M)
    cdef Plan px = row_plan(cfg, N, D, M, cfg.max_tile_elems)
    cdef Plan pw = make_plan(cfg, D, M, N)
    cdef Py_ssize_t t, ntx = px.nr * px.nc if dx != NULL else 0
    cdef Py_ssize_t ntw = ((1 if dw_in_turns(ch, D) else cdiv(N, ch)) if ch > 0
                           else pw.nr * pw.nc)
    cdef int nt = product_threads(cfg, ntx + ntw, 2.0 * N * M * D * (2 if dx != NULL else 1),
                                  n_threads)
    if dw_in_halves(cfg, pw, ch, N, D, M):
        backward_in_halves(px, pw, ntx, g, x, w, dx, dw, N, D, M, nt)
        return
    if nt <= 1:
        for t in range(ntx + ntw):
            backward_tile(px, pw, t, ntx, ch, N, D, M, g, x, w, dx, dw, wslots)
    elif ntx > 0:
        # dx tiles and dw tiles (or chunks) of other sizes in one list: first come, first served
        fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for t in prange(ntx + ntw, num_threads=nt, schedule="dynamic"):
            backward_tile(px, pw, t, ntx, ch, N, D, M, g, x, w, dx, dw, wslots)
    else:
        fnn_note_parallel()
        for t in prange(ntw, num_threads=nt, schedule="static"):   # (see Plan)
            backward_tile(px, pw, t, 0, ch, N, D, M, g, x, w, dx, dw, wslots)
    if ch > 0:
        dw_sum_chunks(cdiv(N, ch), ch, D, M, dw, wslots)


cdef inline void dense_backward_raw(const DenseConfig *cfg, int op, const floating *dout,
                                    const floating *saved, const floating *x, const floating *w,
                                    floating *dx, floating *dw, floating *db, floating *dz,
                                    double alpha, const floating *avec, floating *dalpha,
                                    floating *partial, floating *apartial, floating *wslots,
                                    Py_ssize_t rb, Py_ssize_t N, Py_ssize_t D, Py_ssize_t M,
                                    int n_threads) noexcept nogil:
    """Gradients of y = act(x @ w + b), N, M >= 1, D >= 0 (x, w, dx, dw unused when D == 0):
        dz = dout * act'(saved)          (identity: dz is dout, the dz buffer is not used;
                                          dz == dout: computed in place, dout is overwritten)
        db = sum_rows dz, dalpha = sum_rows dout * min(pre, 0) (prelu only)
        dx = dz @ w.T (skipped when dx is NULL), dw = x.T @ dz
    partial (and apartial for prelu) are workspaces (of any content) of backward_blocks(N, rb)
    x M, rb the rows per block the caller sized them with (bias_rows_per_block when it
    allocated);
    wslots has wslot_elems(N, D, M) elements.
    Sums run over fixed row blocks, then over the blocks in order: thread-count independent.
    The caller holds the BLAS single-threaded (blas_enter)."""
    backward_pass1(op, dout, saved, dz, alpha, avec, db, dalpha, partial, apartial, rb, N, M,
                   n_threads)
    if D == 0:
        return  # no inputs: dx and dw are empty, only the bias gradients exist
    backward_products(cfg, dout if op == FNN_IDENTITY else dz, x, w, dx, dw, wslots, N, D, M,
                      n_threads)


cdef inline bint dx_direct(int op) noexcept nogil:
    """Whether dx_into_act writes a dx tile straight over the activations below (no float
    scratch tile): their derivative needs nothing of that output (identity), reads the kept
    pre-activation (leaky relu), or only its sign, kept as bits (relu). Sigmoid and tanh
    read the output's value, so their dx tile goes through the scratch."""
    return op == FNN_IDENTITY or op == FNN_RELU or op == FNN_LEAKY


cdef inline Py_ssize_t dx_tile_bound(const DenseConfig *cfg, int op_below) noexcept nogil:
    """The most outputs a dx tile may hold (make_plan's max_elems; 0: no bound, fastnn.functional's
    snapshot) when the layer below has activation op_below: max_tile_elems, or the larger
    max_tile_elems_direct where that layer takes the tile straight in (dx_direct), since
    only sigmoid's and tanh's tiles pass through a per-thread float scratch tile of their
    size. The layer path cuts its dx products by the same rule (dense.pyx: _snapshot), so
    that both give the same bits. Shape, op and tile parameters only: never the thread
    count."""
    if cfg.max_tile_elems <= 0:
        return 0
    if dx_direct(op_below) and cfg.max_tile_elems_direct > cfg.max_tile_elems:
        return cfg.max_tile_elems_direct
    return cfg.max_tile_elems


cdef inline Py_ssize_t dx_tile_scratch(int op, Py_ssize_t tr, Py_ssize_t tc,
                                       Py_ssize_t itemsize) noexcept nogil:
    """Scratch elements (of itemsize bytes) of one dx tile of tr x tc over activations of
    `op` (dx_into_act_tile): the tile itself, relu's sign bits (a word of the element's width
    per column and 8 * itemsize rows, see fnn_relu_mask_rows), or nothing."""
    if not dx_direct(op):
        return tr * tc
    if op == FNN_RELU:
        return cdiv(tr, 8 * itemsize) * tc
    return 0


cdef struct DropMask:
    # the mask of one dropout call (fastnn._kernels.dropout.dropout_apply's): element i of
    # the call's array is kept when hash(seed, i) <= limit, and kept elements are scaled
    uint32_t limit       # keep_limit(keep probability)
    uint32_t lo          # the seed's low and high 32 bits
    uint32_t hi
    double scale         # 1 / keep probability (rounded to the element type, as dropout_apply)


cdef inline void drop_rows(const DropMask *dm, const floating *x, Py_ssize_t ldx, floating *y,
                           Py_ssize_t ldy, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t first,
                           Py_ssize_t ld_index) noexcept nogil:
    """y = x * mask * scale over `rows` rows of n elements (x may be y), row i's element j
    being element first + i * ld_index + j of the dropout call's array (below 2**32: the
    caller checks its size), so any cut of that array into tiles or chunks gives the same
    numbers as dropout_apply over the whole of it."""
    cdef Py_ssize_t i
    cdef uint32_t f
    for i in range(rows):
        f = <uint32_t>(first + i * ld_index)
        if <const void *>x == <const void *>y and ldx == ldy:   # (in place: no aliasing
            if floating is float:                                # restrict pointers)
                fnn_dropout_inplace_f32(y + i * ldy, n, f, dm.limit, dm.lo, dm.hi,
                                        <float>dm.scale)
            else:
                fnn_dropout_inplace_f64(y + i * ldy, n, f, dm.limit, dm.lo, dm.hi, dm.scale)
        elif floating is float:
            fnn_dropout_f32(x + i * ldx, y + i * ldy, n, f, dm.limit, dm.lo, dm.hi,
                            <float>dm.scale)
        else:
            fnn_dropout_f64(x + i * ldx, y + i * ldy, n, f, dm.limit, dm.lo, dm.hi, dm.scale)


cdef inline void dx_into_act_tile(Plan px, Py_ssize_t t, Py_ssize_t N, Py_ssize_t D,
                                  Py_ssize_t M, const floating *g, const floating *w,
                                  floating *scratch, int op, floating *act,
                                  const floating *pre, double alpha,
                                  const DropMask *dm=NULL) noexcept nogil:
    """Tile t of dx = g @ w.T, turned into the layer below's dz over that layer's output:
    act = dx * act'(saved), saved = act itself (identity, relu, sigmoid, tanh) or pre (leaky
    relu). Where the derivative needs nothing of the output but its sign (dx_direct), the
    product goes straight into act (relu's signs kept as bits in scratch first); otherwise
    into the scratch tile, and from there times the derivative into act. The same tiles and
    element-wise formula as dense_backward_raw's dx and the next backward_pass1's dz: the
    same numbers. With dm (a dropout between the two layers, over act's N x D), the dx tile
    goes through the dropout's backward before the derivative, as on the layer path."""
    cdef Tile q = tile_of(px, t, N, D)
    cdef floating *a = act + q.i0 * D + q.j0
    if dx_direct(op):
        if op == FNN_RELU:
            relu_mask_rows(<const floating *>a, D, q.ti, q.tj, <void *>scratch)
        dx_gemm(q.ti, q.tj, M, g + q.i0 * M, w + q.j0 * M, a, D, px.thin)
        if dm != NULL:
            drop_rows(dm, a, D, a, D, q.ti, q.tj, q.i0 * D + q.j0, D)
        if op == FNN_RELU:
            relu_bwd_mask_rows(a, D, q.ti, q.tj, <const void *>scratch)
        elif op == FNN_LEAKY:
            act_bwd_inplace_rows(op, a, D, pre + q.i0 * D + q.j0, D, q.ti, q.tj, alpha, NULL)
        return
    dx_gemm(q.ti, q.tj, M, g + q.i0 * M, w + q.j0 * M, scratch, q.tj, px.thin)
    if dm != NULL:
        drop_rows(dm, scratch, q.tj, scratch, q.tj, q.ti, q.tj, q.i0 * D + q.j0, D)
    act_bwd_into_saved_rows(op, scratch, q.tj, a, D, q.ti, q.tj, alpha, NULL)


cdef inline Py_ssize_t dx_tile_need(const DenseConfig *cfg, Py_ssize_t N, Py_ssize_t D,
                                    Py_ssize_t M, int op, Py_ssize_t itemsize) noexcept nogil:
    """Scratch elements of one tile of the dx = g @ w.T product (N x D, inner M) over
    activations of `op` (dx_tile_scratch of the tiles dx_into_act cuts)."""
    cdef Plan px = row_plan(cfg, N, D, M, dx_tile_bound(cfg, op))
    return dx_tile_scratch(op, px.tr, px.tc, itemsize)


cdef inline Py_ssize_t dx_scratch_need(const DenseConfig *cfg, Py_ssize_t N, Py_ssize_t D,
                                       Py_ssize_t M, int op, Py_ssize_t itemsize,
                                       int n_threads) noexcept nogil:
    """Scratch elements dx_into_act needs for these arguments: one tile's (dx_tile_scratch)
    per thread."""
    cdef Plan px = row_plan(cfg, N, D, M, dx_tile_bound(cfg, op))
    cdef int nt = product_threads(cfg, px.nr * px.nc, 2.0 * N * M * D, n_threads)
    return dx_tile_scratch(op, px.tr, px.tc, itemsize) * nt


cdef inline void dx_into_act(const DenseConfig *cfg, Py_ssize_t N, Py_ssize_t D, Py_ssize_t M,
                             const floating *g, const floating *w, floating *scratch,
                             Py_ssize_t scratch_elems, int op, floating *act,
                             const floating *pre, double alpha, int n_threads,
                             const DropMask *dm=NULL) noexcept nogil:
    """dx = g @ w.T, tile by tile, turned into the layer below's dz in that layer's own
    activation buffer (dx_into_act_tile; through a dropout's backward first with dm). The full N x D dx never exists. scratch holds
    scratch_elems >= dx_scratch_need (fewer threads run if it holds less). D >= 1; the
    caller has already used act as an input (dw = act.T @ g)."""
    cdef Plan px = row_plan(cfg, N, D, M, dx_tile_bound(cfg, op))
    cdef Py_ssize_t t, ntiles = px.nr * px.nc
    cdef Py_ssize_t stride = dx_tile_scratch(op, px.tr, px.tc, sizeof(floating))
    cdef int nt = product_threads(cfg, ntiles, 2.0 * N * M * D, n_threads)
    if scratch_elems < stride:
        return  # cannot happen when sized by dx_scratch_need; never write past the scratch
    if stride > 0 and nt > scratch_elems // stride:
        nt = <int>(scratch_elems // stride)
    if nt <= 1:
        for t in range(ntiles):
            dx_into_act_tile(px, t, N, D, M, g, w, scratch, op, act, pre, alpha, dm)
    else:
        fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
        for t in prange(ntiles, num_threads=nt, schedule="static"):   # (see Plan)
            dx_into_act_tile(px, t, N, D, M, g, w, scratch + fnn_omp_get_thread_num() * stride,
                             op, act, pre, alpha, dm)
