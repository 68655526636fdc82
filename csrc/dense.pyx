# fastnn._kernels.dense: fully connected layers, forward and backward, with fused epilogues.
#
# Products go to SciPy's BLAS (cython_blas sgemm/dgemm) without the GIL. Row-major operands are
# passed to the column-major BLAS by swapping them (C^T = B^T A^T), and transposes are BLAS flags:
# nothing is copied or transposed in memory.
#
# Determinism: the output of every product is cut into tiles whose sizes depend on the problem
# shape and on the machine's CPU count read at import (tile_cores), never on the thread count;
# each tile is one BLAS call, with BLAS itself held to one thread, and the tiles are spread over
# OpenMP threads. A tile's result does not depend on which thread computes it, so
# outputs and gradients are bitwise identical for any thread count. (OpenBLAS's own threading is
# not: shared/PERFORMANCE.md.) The bias gradient sums fixed row blocks in a fixed order.
#
# Fusion: in forward, each tile's epilogue (bias, activation) runs right after the tile's product,
# while it is in cache (a deep product, in two parts of its inner dimension, gets it in a second
# pass, after the parts are added: forward_plan). In backward one threaded pass computes
# dz = dout * act'(saved) together with the bias (and PReLU alpha) gradient partials; then the dx
# and dw products run as one list of tiles. The machinery itself is in fastnn_dense.pxd, shared
# with the network step kernel.
from cython cimport floating

from fastnn_openmp cimport fnn_note_parallel, fnn_parallel_seen
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc
import operator
import time

import numpy as np

from fastnn_ops cimport FNN_IDENTITY, FNN_PRELU, FNN_RELU, keeps_pre
from fastnn_dense cimport (DenseConfig, Plan, set_threads_fn, get_threads_fn, blas_enter,
                           blas_exit, make_plan, row_plan, forward_plan, forward_ws_elems,
                           chunk_rows, dense_forward_raw, gemm,
                           dense_backward_raw, backward_blocks, bias_rows_per_block,
                           wslot_elems, dx_tile_bound, dx_scratch_need, dx_direct,
                           dw_in_halves)

include "fastnn_sites.pxi"
include "fastnn_fastpath.pxi"

# The one configuration of the dense machinery in the process (the network module uses it too,
# through config_address()). The tiling constants were measured with sgemm per tile against
# whole-matrix products (bench/NOTES.md); `thin` with bench/tile_params.py thin.
cdef DenseConfig _cfg
_cfg.blas_set = NULL
_cfg.blas_get = NULL
_cfg.blas_users = 0
_cfg.blas_saved = 1
# More tiles than tile_cores only for products of at least 2 * tile_cores * tile_flops (16
# GFLOP on 2 cores, 64 on 8; never on 16, max_tiles): every tile packs its panels of both
# operands again, and on 2 cores fewer, bigger tiles ran faster at every size measured
# (float32, 2 threads, F.affine_forward, GFLOP/s, SkylakeX / Haswell kernels): 1024x784 @
# 784x512 as 8 tiles 190 / 183, as 2 tiles 199-202 / 192-197 (NumPy's matmul 204 / 212);
# 256x4096 @ 4096x4096 as 16 tiles 157-158 / 182-184, 8 tiles 169 / 188, 4 tiles 179 / 191,
# 2 tiles 181 / 198 (NumPy's matmul 187 / 207). The layer API's steps of 784-512-512-10
# (1024) and the 4096-wide network took 8% and 12% less time than at 64 MFLOP a tile (the
# value until the 16th session). More tiles than cores would only even out threads of
# unequal speed, and a busy core is the thread governors' job (fastnn_governor.pxd).
_cfg.tile_flops = 4.0e9
_cfg.min_tile_rows = 64
_cfg.min_tile_cols = 64
# at most 16 tiles: enough for 16 threads; caps tile_cores on bigger machines, and tile_flops'
# count for products of 128 GFLOP or more. (Measured when tiles were ~64 MFLOP:)
# One thread, X (256 x 4096) @ W (4096 x 4096) per tile: 128 x 128 tiles ~93 GFLOP/s, 256 x 256
# ~108 (each tile packs its row panel of X and column panel of W: smaller tiles pack more);
# the 4096-4096-4096-1000 (256) step took 7% less time (float64 9.5%) than with 64 tiles.
_cfg.max_tiles = 16
# Set once at import (fastnn._threads: FASTNN_TILE_CORES, else the machine's CPU count).
# OpenBLAS's result for an output element depends on the extent of the tile it is computed in,
# so the tiles may follow the machine but never the thread count.
_cfg.tile_cores = 2
_cfg.max_tile_elems = 65536
# A dx tile that the layer below takes straight in (relu, leaky relu, none: dx_direct) needs no
# float scratch of its size, so its bound is larger (dx_tile_bound): fewer tiles, each packing
# the weights again. On the Intel Xeon kind, 784-512-512-10 (1024)'s second-layer dx went from
# eight tiles to two, 2.19 -> 1.96 ms, and its step 13.9 -> 13.5 ms (StepPlan.time_phases, 7
# rounds); the 4096-wide network's step 1.6% faster (bench/NOTES.md). Sigmoid, tanh and prelu
# keep max_tile_elems and their scratch (one tile a thread).
_cfg.max_tile_elems_direct = 262144
_cfg.serial_flops = 4.0e6
_cfg.row_block_elems = 16384
_cfg.thin = 4
# A batch is cut into row chunks only when each keeps at least chunk_min_rows rows (so from
# 2 * chunk_min_rows rows on). A chunk on another thread reads the weights the other core just
# updated and adds into gradients it just wrote, so a short chunk costs more in moving cache
# lines between cores than it saves. On the Intel Xeon kind (2 CPUs, bench/NOTES.md, *Row
# chunks of at least 64 rows*), every small network on fewer than 128 rows ran faster unchunked
# (2 threads, 7-9 interleaved rounds): 64-64-64-10 (32) 28.4 -> 19.1 us a step, (64) 41.4 ->
# 31.9, 32-128-10 (64) 39.0 -> 22.8, 2-100-3 (96) 14.5 -> 13.8; from 128 rows (two chunks of
# 64) the chunks won or tied on most: 64-64-64-10 (128) 51.8 against 57.2, 100-100-10 (128)
# 55.9 against 68.5, 2-100-3 (300) 29.7 against 38.6. (It was 16 on the Zen 4 kind, where two
# 16-row chunks took 64-64-64-10 (32) from 26.6 to 23.8 us.) Shape only, like the chunks.
_cfg.chunk_min_rows = 64
_cfg.chunk_rows_more = 128
_cfg.max_chunks = 16
# A forward product at least this many times deeper than its larger output side runs in two
# parts of its inner dimension (forward_plan). 3072-100-10, batch 200, 2 threads: the first
# layer's forward 627-639 us as two 104-row tiles, 559-572 us as two parts; the step 5-6%
# faster. 784-512-512-10 (128), whose products are 1-1.5x deeper than wide, gained nothing
# there with k_split = 1 (1996 against 2001 us per step; before the static tile schedule and
# the updates inside the backward pass), so the bar is well above them ...
_cfg.k_split = 4.0
# ... and one at least as deep as its larger output side when it is worth two tiles on a
# 2-CPU plan (forward_plan: its parts are the halves of W's rows that the same threads
# updated). On an Intel Xeon (2 CPUs, AVX-512, 2 MB of L2 a core; bench/NOTES.md) it took
# 784-512-512-10 (128)'s step from 2216 to 2095 us (bench/tile_params.py k_split_pair, 9
# interleaved rounds; its first two forwards 0.54 -> 0.49 and 0.38 -> 0.35 ms),
# 1000-300-10 (100) and 256-256-10 (64) 9-10% faster, and the 4096-wide network (its
# forwards in parts now) the same; 784-512-512-10 (1024) stays below the bar.
_cfg.k_split_pair = 1.0
# A weight gradient planned as two row tiles (a 2-CPU plan) runs as two halves of the batch,
# each thread its own rows of x and of the gradient (dw_in_halves), from 512 rows and up to
# 2**21 elements of dw. On an Intel Xeon (2 CPUs, AVX-512, bench/NOTES.md, *The weight gradient
# in halves of the batch*), two threads' sgemm calls after a pass that wrote the gradient's
# rows half and half, row tiles / halves in ms (the same runs): 784 x 512 over 1024 rows
# 3.31-3.56 / 3.09-3.21, 512 x 512 over 1024 2.31-2.37 / 2.12-2.18, over 512 rows 1.69 / 1.56
# and 1.18 / 1.06; over 256 rows no gain (0.83 / 0.80, 0.57 / 0.56); 4096 x 4096 over 256
# rows 31.6 / 34.5 and over 1024 114 / 117 (each half adds into the whole of dw once more).
# The layer API's 784-512-512-10 (1024) step 13.79 -> 13.43 ms (bench/tile_params.py).
_cfg.dw_halves_rows = 512
_cfg.dw_halves_elems = 2097152
# Thin products cut under the small-matrix kernels' bar (make_plan): set at import where the
# BLAS has them (fastnn/_blas.py, with thin = 0), else 0. 1e6 multiply-adds: SciPy's OpenBLAS
# 0.3.30 took a 96 x 10 (inner 1024) call at its small-matrix speed and a 104 x 10 at its
# packing one, in float32 and float64 alike (bench/NOTES.md).
_cfg.small_mnk = 0.0


def config_address():
    """Address of the shared DenseConfig (for fastnn._kernels.network; not public API)."""
    return <size_t>&_cfg


def register_blas_thread_control(size_t set_addr, size_t get_addr):
    """Give the kernels the BLAS library's set/get-num-threads functions (addresses found by
    fastnn._blas at import). While any fastnn product runs, the BLAS runs single-threaded:
    fastnn does the threading itself, over fixed tiles. Both addresses, or neither (0, 0: no
    control): the kernels call the getter whenever they hold the setter. (Raw addresses, as
    ctypes takes them: this private hook trusts its one caller to give functions.)"""
    if (set_addr == 0) != (get_addr == 0):
        raise ValueError("register_blas_thread_control needs both functions' addresses or neither, "
                         f"got set={set_addr:#x}, get={get_addr:#x}")
    _cfg.blas_set = <set_threads_fn>set_addr
    _cfg.blas_get = <get_threads_fn>get_addr


def blas_thread_control():
    return _cfg.blas_set != NULL


def blas_users():
    """The fastnn calls now running products that hold the BLAS at one thread (for tests)."""
    return _cfg.blas_users


def blas_after_fork():
    """In a forked child (fastnn._threads' fork hook): the products that other Python threads
    of the parent were running never finish here, so the BLAS thread count saved when the
    first of them started is given back now, as the last of them would have (else the BLAS
    stayed at one thread for the child's life)."""
    if _cfg.blas_set != NULL and _cfg.blas_users > 0:
        _cfg.blas_users = 0
        if _cfg.blas_saved != 1:
            _cfg.blas_set(_cfg.blas_saved)


def tile_params():
    return dict(tile_flops=_cfg.tile_flops, min_tile_rows=_cfg.min_tile_rows,
                min_tile_cols=_cfg.min_tile_cols, max_tiles=_cfg.max_tiles,
                tile_cores=_cfg.tile_cores, max_tile_elems=_cfg.max_tile_elems,
                serial_flops=_cfg.serial_flops, row_block_elems=_cfg.row_block_elems,
                thin=_cfg.thin, chunk_min_rows=_cfg.chunk_min_rows,
                chunk_rows_more=_cfg.chunk_rows_more, max_chunks=_cfg.max_chunks,
                k_split=_cfg.k_split, k_split_pair=_cfg.k_split_pair,
                max_tile_elems_direct=_cfg.max_tile_elems_direct, small_mnk=_cfg.small_mnk,
                dw_halves_rows=_cfg.dw_halves_rows, dw_halves_elems=_cfg.dw_halves_elems)


def set_tile_params(tile_flops=None, min_tile_rows=None, min_tile_cols=None, max_tiles=None,
                    serial_flops=None, row_block_elems=None, thin=None, max_tile_elems=None,
                    chunk_min_rows=None, chunk_rows_more=None, max_chunks=None, tile_cores=None,
                    k_split=None, k_split_pair=None, max_tile_elems_direct=None, small_mnk=None,
                    dw_halves_rows=None, dw_halves_elems=None):
    """Tuning hook for bench/ (not public API); tile_cores is also set once at import. Every
    value is checked (finite numbers, ints; a bad one named) before any is set; ints are
    clamped to [their least, 2**30]."""
    given = dict(tile_flops=tile_flops, min_tile_rows=min_tile_rows, min_tile_cols=min_tile_cols,
                 max_tiles=max_tiles, serial_flops=serial_flops, row_block_elems=row_block_elems,
                 thin=thin, max_tile_elems=max_tile_elems, chunk_min_rows=chunk_min_rows,
                 chunk_rows_more=chunk_rows_more, max_chunks=max_chunks, tile_cores=tile_cores,
                 k_split=k_split, k_split_pair=k_split_pair,
                 max_tile_elems_direct=max_tile_elems_direct, small_mnk=small_mnk,
                 dw_halves_rows=dw_halves_rows, dw_halves_elems=dw_halves_elems)
    from fastnn._validation import check_scalar
    v = {}
    for name, value in given.items():
        if value is None:
            continue
        if name in ("tile_flops", "serial_flops", "k_split", "k_split_pair", "small_mnk"):
            v[name] = check_scalar(value, name)   # (finite; clamped below where they must be)
        else:
            if isinstance(value, bool):
                raise TypeError(f"set_tile_params: {name} must be an int, got bool")
            try:
                value = operator.index(value)
            except TypeError:
                raise TypeError(f"set_tile_params: {name} must be an int, "
                                f"got {type(value).__name__}") from None
            v[name] = min(max(value, 0 if name in ("thin", "chunk_min_rows", "dw_halves_rows")
                              else 1), 2**30)
    if "tile_flops" in v:
        _cfg.tile_flops = max(1.0, v["tile_flops"])
    if "min_tile_rows" in v:
        _cfg.min_tile_rows = v["min_tile_rows"]
    if "min_tile_cols" in v:
        _cfg.min_tile_cols = v["min_tile_cols"]
    if "max_tiles" in v:
        _cfg.max_tiles = v["max_tiles"]
    if "serial_flops" in v:
        _cfg.serial_flops = v["serial_flops"]
    if "row_block_elems" in v:
        _cfg.row_block_elems = v["row_block_elems"]
    if "thin" in v:
        _cfg.thin = v["thin"]
    if "max_tile_elems" in v:
        _cfg.max_tile_elems = v["max_tile_elems"]
    if "max_tile_elems_direct" in v:
        _cfg.max_tile_elems_direct = v["max_tile_elems_direct"]
    if "chunk_min_rows" in v:
        _cfg.chunk_min_rows = v["chunk_min_rows"]
    if "chunk_rows_more" in v:
        _cfg.chunk_rows_more = v["chunk_rows_more"]
    if "tile_cores" in v:
        _cfg.tile_cores = 1 << v["tile_cores"].bit_length() - 1   # a power of two
    if "max_chunks" in v:
        _cfg.max_chunks = 1 << v["max_chunks"].bit_length() - 1   # a power of two
    if "k_split" in v:
        _cfg.k_split = max(0.0, v["k_split"])
    if "k_split_pair" in v:
        _cfg.k_split_pair = max(0.0, v["k_split_pair"])
    if "small_mnk" in v:
        _cfg.small_mnk = max(0.0, v["small_mnk"])
    if "dw_halves_rows" in v:
        _cfg.dw_halves_rows = v["dw_halves_rows"]
    if "dw_halves_elems" in v:
        _cfg.dw_halves_elems = v["dw_halves_elems"]


def plan(Py_ssize_t r, Py_ssize_t c, Py_ssize_t k, bint dx=False, bint batch=False,
         bint chunks=True, bint direct=False):
    """(tile_rows, tile_cols, tiles_down, tiles_across) for an r x c x k product (for tests);
    dx: the plan of an input-gradient product (tiles bounded by max_tile_elems, or with
    direct by max_tile_elems_direct: the layer below takes dx straight in, dx_tile_bound);
    batch: the output rows are the batch (a forward or dx product: row chunks apply to small
    layers); chunks=False: as fastnn.functional cuts it (no row chunks, unbounded dx tiles)."""
    cdef DenseConfig cfg = _snapshot(2 if (chunks and direct) else chunks)
    cdef Py_ssize_t ch = chunk_rows(&cfg, r, c, k) if (batch or dx) else 0
    cdef Plan p = make_plan(&cfg, r, c, k, cfg.max_tile_elems if dx else 0, ch, not dx)
    return (p.tr, p.tc, p.nr, p.nc)


def dw_halves_of(Py_ssize_t N, Py_ssize_t D, Py_ssize_t M, bint chunks=True):
    """Whether the weight gradient of a layer N x D -> M runs in halves of the batch
    (dw_in_halves; chunks as in plan). For tests."""
    cdef DenseConfig cfg = _snapshot(chunks)
    cdef Plan pw = make_plan(&cfg, D, M, N)
    return bool(dw_in_halves(&cfg, pw, chunk_rows(&cfg, N, D, M), N, D, M))


def forward_plan_of(Py_ssize_t N, Py_ssize_t M, Py_ssize_t D, bint chunks=True):
    """(tile_rows, tile_cols, tiles_down, tiles_across, parts, part_depth) of the forward
    product N x M with inner D, as dense_forward cuts it (for tests; chunks as in plan)."""
    cdef DenseConfig cfg = _snapshot(chunks)
    cdef Plan p = forward_plan(&cfg, N, M, D)
    return (p.tr, p.tc, p.nr, p.nc, p.kb, p.kd)


def dx_scratch_of(Py_ssize_t N, Py_ssize_t D, Py_ssize_t M, int op_below, Py_ssize_t itemsize,
                  int n_threads):
    """Scratch elements the step kernel holds for the dx product of a layer N x D -> M over a
    layer below with activation op_below, on n_threads (dx_scratch_need). For tests."""
    cdef DenseConfig cfg = _snapshot(1)
    return dx_scratch_need(&cfg, N, D, M, op_below, itemsize, n_threads)


def takes_dx_direct(int op):
    """Whether a layer with activation `op` takes the input gradient of the layer above
    straight in (dx_direct: its dx tiles have the larger bound, dx_tile_bound)."""
    return bool(dx_direct(op))


def layer_chunk_rows(Py_ssize_t N, Py_ssize_t D, Py_ssize_t M):
    """Rows per chunk of a layer N x D -> M (0: it does not run in chunks). For tests/bench."""
    return chunk_rows(&_cfg, N, D, M)


def gemm_seconds(r, c, k, trans_a=False, trans_b=False, reps=1, dtype=np.float32,
                 accumulate=False, concurrent=1):
    """Time the kernels' own product (gemm in fastnn_dense.pxd: one BLAS call, or one gemv per
    output row or column for a thin product) of C = op(A) @ op(B), C r x c, inner k, with the
    BLAS held to one thread: reps calls back to back, without the GIL. Returns (seconds per
    call, C, A, B); A and B as stored (A is k x r when trans_a, B is c x k when trans_b),
    filled from a fixed seed.

    accumulate: each call adds its product into C (beta = 1), so C ends as reps times the
    product (what the tests count the calls with); otherwise each call overwrites C.
    concurrent: that many OpenMP threads make the reps calls at the same time, each into a C
    of its own (C is then concurrent x r x c); seconds per call is the wall time over reps.
    This shows what calls cost one another (OpenBLAS serializes part of each call: bench/NOTES.md).
    Without OpenMP the threads' calls run one after another.

    For bench/ceiling.py and its tests; not public API. reps calls are not interruptible."""
    cdef Py_ssize_t r_, c_, k_, n, nt
    if dtype is None:
        raise TypeError("dtype must be float32 or float64, got None")
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from e
    if dt != np.float32 and dt != np.float64:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    for name, v in (("trans_a", trans_a), ("trans_b", trans_b), ("accumulate", accumulate)):
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    from fastnn._validation import check_int
    vals = {name: check_int(v, name, below=below)
            for name, v, below in (("r", r, 2**31), ("c", c, 2**31), ("k", k, 2**31),
                                   ("reps", reps, 2**31), ("concurrent", concurrent, 257))}
    if max(vals["r"] * vals["k"], vals["k"] * vals["c"],
           vals["r"] * vals["c"] * vals["concurrent"]) > 2**31 - 1:
        raise ValueError("r, c, k and concurrent give an array of more than 2**31 - 1 elements")
    r_, c_, k_, n, nt = vals["r"], vals["c"], vals["k"], vals["reps"], vals["concurrent"]
    rng = np.random.default_rng(0)
    A = rng.standard_normal((k_, r_) if trans_a else (r_, k_)).astype(dt)
    B = rng.standard_normal((c_, k_) if trans_b else (k_, c_)).astype(dt)
    C = np.zeros((nt, r_, c_), dt)
    blas_enter(&_cfg)
    try:
        t0 = time.perf_counter()
        if dt == np.float32:
            _gemm_loop[float](A, B, C, bool(trans_a), bool(trans_b), r_, c_, k_, n,
                              bool(accumulate), <int>nt)
        else:
            _gemm_loop[double](A, B, C, bool(trans_a), bool(trans_b), r_, c_, k_, n,
                               bool(accumulate), <int>nt)
        t1 = time.perf_counter()
    finally:
        blas_exit(&_cfg)
    return (t1 - t0) / n, (C[0] if nt == 1 else C), A, B


cdef void _gemm_calls(const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                      floating *C, bint trans_a, bint trans_b, Py_ssize_t r, Py_ssize_t c,
                      Py_ssize_t k, Py_ssize_t reps, bint acc) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(reps):
        gemm(trans_a, trans_b, r, c, k, A, lda, B, ldb, C, c, _cfg.thin, acc)


cdef void _gemm_loop(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, :, ::1] C,
                     bint trans_a, bint trans_b, Py_ssize_t r, Py_ssize_t c, Py_ssize_t k,
                     Py_ssize_t reps, bint acc, int nt) noexcept:
    cdef int t
    with nogil:
        if nt == 1:
            _gemm_calls(&A[0, 0], A.shape[1], &B[0, 0], B.shape[1], &C[0, 0, 0], trans_a,
                        trans_b, r, c, k, reps, acc)
        else:
            fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
            for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                _gemm_calls(&A[0, 0], A.shape[1], &B[0, 0], B.shape[1], &C[t, 0, 0], trans_a,
                            trans_b, r, c, k, reps, acc)


cdef inline DenseConfig _snapshot(int chunks) noexcept:
    """The configuration one call runs with. `chunks` (1) asks for the layer API's (and the
    network step kernel's) cut, and 2 for that cut of a layer whose input gradient the layer
    below takes straight in (its dx tiles bounded by max_tile_elems_direct, as the kernel
    bounds them: dx_tile_bound); without it (0, fastnn.functional), small layers are not cut
    into row chunks (chunk_rows in fastnn_dense.pxd), and input-gradient tiles are not
    bounded by max_tile_elems: that bound keeps the step kernel's per-thread dx scratch tile
    small, and fastnn.functional writes dx straight into its result. (3072-100-10, batch 200: the first
    layer's dx, 200 x 3072 with inner 100, in 16 tiles of 200 x 192 or 2 of 200 x 1536; its
    affine_relu_backward 1568 against 1364 us.)"""
    cdef DenseConfig cfg = _cfg
    if not chunks:
        cfg.chunk_min_rows = 0
        cfg.max_tile_elems = 0
    elif chunks == 2:
        cfg.max_tile_elems = dx_tile_bound(&cfg, FNN_RELU)
    return cfg


def dense_forward(int op, const floating[:, ::1] x, const floating[:, ::1] w,
                  const floating[::1] b, floating[:, ::1] y, floating[:, ::1] z,
                  double alpha, const floating[::1] avec, int n_threads, int chunks=0):
    """y = act(x @ w + b). For leaky relu and prelu (which need the pre-activation in backward)
    z receives x @ w + b; otherwise z may be None. avec: prelu's per-unit alpha, else None.
    x (N, D), w (D, M), b (M,), y and z (N, M); D >= 1.

    chunks: 1 (or True) cuts the products as the network step kernel does (_snapshot): a
    small layer runs in row chunks, and dx tiles are bounded (the layer API asks for this, so
    that a model trained layer by layer gets the whole-step kernel's numbers; fastnn.functional
    does not, 0: the chunks cost it a few BLAS calls and buy nothing on one thread); 2 also
    bounds the backward's dx tiles as for a layer below that takes them straight in (the
    forward is cut as with 1)."""
    if chunks < 0 or chunks > 2:
        raise ValueError(f"dense_forward: chunks must be 0, 1 or 2, got {chunks}")
    cdef DenseConfig cfg = _snapshot(chunks)
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], M = w.shape[1]
    cdef bint keep = keeps_pre(op)
    cdef floating *zp = NULL
    cdef const floating *ap = NULL
    if w.shape[0] != D or b.shape[0] != M or y.shape[0] != N or y.shape[1] != M:
        raise ValueError("dense_forward: shape mismatch")
    if keep:
        if z is None or z.shape[0] != N or z.shape[1] != M:
            raise ValueError("dense_forward: z is required for this activation")
    if op == FNN_PRELU:
        if avec is None or avec.shape[0] != M:
            raise ValueError("dense_forward: prelu needs one alpha per unit")
    if N == 0 or M == 0:
        return
    if D == 0:
        raise ValueError("dense_forward: D must be >= 1 (the wrapper handles D == 0)")
    if op == FNN_PRELU:
        ap = &avec[0]      # (taken only now: M >= 1)
    if keep:
        zp = &z[0, 0]
    _forward_call(&cfg, op, &x[0, 0], &w[0, 0], &b[0], &y[0, 0], zp, N, D, M, alpha, ap,
                  n_threads, chunks)


cdef int _forward_call(const DenseConfig *cfg, int op, const floating *x, const floating *w,
                       const floating *b, floating *y, floating *z, Py_ssize_t N, Py_ssize_t D,
                       Py_ssize_t M, double alpha, const floating *ap, int n_threads,
                       int chunks) except -1:
    """dense_forward's call of the kernel, on checked buffers (N, D, M >= 1): the partial of a
    deep product, the call governor, the BLAS held at one thread (dense_forward and
    forward_fast)."""
    cdef floating *ws = NULL
    cdef Py_ssize_t wse = forward_ws_elems(cfg, N, D, M)   # a deep product's partial (forward_plan)
    cdef GovCall gc
    if wse > 0:
        ws = <floating *>malloc(wse * sizeof(floating))
        if ws == NULL:
            raise MemoryError()
    n_threads = gov_begin(&gc, _sites, _dynamic,
                          gov_key(0, op * 2 + (chunks != 0), N, D, M * 16 + sizeof(floating)),
                          n_threads)
    blas_enter(&_cfg)
    try:
        with nogil:
            dense_forward_raw(cfg, op, x, w, b, y, z, N, D, M, alpha, ap, ws, n_threads)
    finally:
        blas_exit(&_cfg)
        free(ws)
    gov_end(&gc)
    return 0


cdef Py_ssize_t _INT32_MAX = 2**31 - 1


cdef inline bint _layer_dims(object x, object w, Py_ssize_t *N, Py_ssize_t *D,
                             Py_ssize_t *M):
    """The fast paths' shared shape check: x (N, D) and w (D, M), D >= 1, each side at most
    2**31 - 1; False for any other shapes (the caller declines the call)."""
    xs = x.shape
    ws = w.shape
    if len(<tuple>xs) != 2 or len(<tuple>ws) != 2:
        return False
    N[0] = xs[0]
    D[0] = xs[1]
    M[0] = ws[1]
    return (D[0] != 0 and ws[0] == D[0] and N[0] <= _INT32_MAX and D[0] <= _INT32_MAX
            and M[0] <= _INT32_MAX)


def forward_fast(int op, x, w, b, double alpha, int n_threads, int chunks=0):
    """fastnn.functional's common forward, checked and run in compiled code: x (N, D), w (D, M)
    and b (M,) plain C-contiguous ndarrays of one native float dtype, D >= 1, every side at most
    2**31 - 1, op any activation but prelu. Returns (y, z): y = act(x @ w + b) and z = x @ w + b
    for leaky relu (None otherwise), new arrays, with dense_forward's numbers and governor
    site; or None, with nothing allocated or computed, for any other call (the checked path in
    fastnn/functional/dense.py converts, or names the problem). The Python wrapper's checks and
    the fused-type dispatch cost about as much as a small layer's product (bench/NOTES.md,
    forty-second session)."""
    cdef Views v
    cdef Py_ssize_t N, D, M
    cdef bint f32, keep
    cdef void *xp
    cdef void *wp
    cdef void *bp
    cdef void *yp
    cdef void *zp = NULL
    cdef DenseConfig cfg
    if op == FNN_PRELU or chunks < 0 or chunks > 2:
        return None
    dt = plain_float_dtype(x)
    if dt is None or plain_float_dtype(w) is not dt or plain_float_dtype(b) is not dt:
        return None
    f32 = dt is _float32
    if not _layer_dims(x, w, &N, &D, &M) or (<object>b).shape != (M,):
        return None
    keep = keeps_pre(op)
    v.held = 0
    try:
        xp = take(&v, x, False)
        wp = take(&v, w, False) if xp != NULL else NULL
        bp = take(&v, b, False) if wp != NULL else NULL
        if bp == NULL:
            return None
        y = _empty((N, M), dtype=dt)
        z = _empty((N, M), dtype=dt) if keep else None
        if N == 0 or M == 0:
            return (y, z)
        yp = take(&v, y, True)
        if keep:
            zp = take(&v, z, True)
        cfg = _snapshot(chunks)
        if f32:
            _forward_call[float](&cfg, op, <const float *>xp, <const float *>wp,
                                 <const float *>bp, <float *>yp, <float *>zp, N, D, M, alpha,
                                 NULL, n_threads, chunks)
        else:
            _forward_call[double](&cfg, op, <const double *>xp, <const double *>wp,
                                  <const double *>bp, <double *>yp, <double *>zp, N, D, M,
                                  alpha, NULL, n_threads, chunks)
        return (y, z)
    finally:
        release_all(&v)


def dense_backward(int op, const floating[:, ::1] dout, const floating[:, ::1] saved,
                   const floating[:, ::1] x, const floating[:, ::1] w,
                   floating[:, ::1] dx, floating[:, ::1] dw, floating[::1] db,
                   floating[:, ::1] dz, double alpha, const floating[::1] avec,
                   floating[::1] dalpha, int n_threads, int chunks=0):
    """Gradients of y = act(x @ w + b):
        dz = dout * act'(saved)          (dz may be None for the identity: dz = dout)
        db = sum_rows dz, dalpha = sum_rows dout * min(pre, 0) (prelu only)
        dx = dz @ w.T (skipped when dx is None), dw = x.T @ dz
    `saved` is the forward output (relu, sigmoid, tanh) or pre-activation (leaky, prelu).
    chunks: as in dense_forward (pass what the forward was given); 2: also, the layer below
    takes dx straight in (the layer API's Sequential knows: _snapshot)."""
    if chunks < 0 or chunks > 2:
        raise ValueError(f"dense_backward: chunks must be 0, 1 or 2, got {chunks}")
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], M = w.shape[1]
    cdef bint ident = op == FNN_IDENTITY
    cdef floating *dxp = NULL
    cdef floating *dzp = NULL
    cdef floating *dap = NULL
    cdef floating *dwp = NULL
    cdef const floating *sp = NULL
    cdef const floating *ap = NULL
    cdef const floating *xp = NULL
    cdef const floating *wp = NULL
    cdef DenseConfig cfg = _snapshot(chunks)   # one snapshot: the workspaces and the kernel agree
    if (dout.shape[0] != N or dout.shape[1] != M or w.shape[0] != D or dw.shape[0] != D
            or dw.shape[1] != M or db.shape[0] != M):
        raise ValueError("dense_backward: shape mismatch")
    if dx is not None and (dx.shape[0] != N or dx.shape[1] != D):
        raise ValueError("dense_backward: dx shape mismatch")
    if not ident:
        if saved is None or saved.shape[0] != N or saved.shape[1] != M:
            raise ValueError("dense_backward: saved shape mismatch")
        if dz is None or dz.shape[0] != N or dz.shape[1] != M:
            raise ValueError("dense_backward: dz is required for this activation")
    if op == FNN_PRELU:
        if avec is None or avec.shape[0] != M or dalpha is None or dalpha.shape[0] != M:
            raise ValueError("dense_backward: prelu needs alpha and dalpha per unit")
    if N == 0 or M == 0:
        # Sums over an empty batch (or no units) are zero.
        dw[:, :] = 0
        if dx is not None:
            dx[:, :] = 0
        db[:] = 0
        if op == FNN_PRELU:
            dalpha[:] = 0
        return
    if D > 0:
        xp = &x[0, 0]
        wp = &w[0, 0]
        dwp = &dw[0, 0]
        if dx is not None:
            dxp = &dx[0, 0]
    if not ident:
        sp = &saved[0, 0]
        dzp = &dz[0, 0]
    if op == FNN_PRELU:
        ap = &avec[0]
        dap = &dalpha[0]
    _backward_call(&cfg, op, &dout[0, 0], sp, xp, wp, dxp, dwp, &db[0], dzp, alpha, ap, dap,
                   N, D, M, n_threads, chunks, dx is not None)


cdef int _backward_call(const DenseConfig *cfg, int op, const floating *dout,
                        const floating *sp, const floating *xp, const floating *wp,
                        floating *dxp, floating *dwp, floating *dbp, floating *dzp,
                        double alpha, const floating *ap, floating *dap, Py_ssize_t N,
                        Py_ssize_t D, Py_ssize_t M, int n_threads, int chunks,
                        bint has_dx) except -1:
    """dense_backward's call of the kernel, on checked buffers (N, M >= 1; dxp NULL: no input
    gradient; has_dx: the call asked for one, which picks its governor site): its workspaces, the call governor, the BLAS held at one thread (dense_backward
    and backward_fast)."""
    cdef Py_ssize_t rb = bias_rows_per_block(cfg, N, D, M)
    cdef floating *partial
    cdef floating *apartial
    cdef floating *wslots
    cdef GovCall gc
    # workspaces for the bias (and prelu slope) partial sums (each block zeroes its own row)
    # and for a chunked layer's weight-gradient partials; malloc is cheaper than NumPy
    # allocations on the small calls where it matters
    partial = <floating *>malloc(backward_blocks(N, rb) * M * sizeof(floating))
    apartial = <floating *>malloc((backward_blocks(N, rb) if op == FNN_PRELU else 1) * M
                                  * sizeof(floating))
    wslots = <floating *>malloc(max(wslot_elems(cfg, N, D, M), 1) * sizeof(floating))
    if partial == NULL or apartial == NULL or wslots == NULL:
        free(partial)
        free(apartial)
        free(wslots)
        raise MemoryError()
    n_threads = gov_begin(&gc, _sites, _dynamic,
                          gov_key(1, op * 8 + chunks * 2 + has_dx, N, D,
                                  M * 16 + sizeof(floating)), n_threads)
    blas_enter(&_cfg)
    try:
        with nogil:
            dense_backward_raw(cfg, op, dout, sp, xp, wp, dxp, dwp, dbp, dzp, alpha, ap, dap,
                               partial, apartial, wslots, rb, N, D, M, n_threads)
    finally:
        blas_exit(&_cfg)
        free(partial)
        free(apartial)
        free(wslots)
    gov_end(&gc)
    return 0


def backward_fast(int op, dout, saved, x, w, bint need_dx, double alpha, int n_threads,
                  int chunks=0):
    """fastnn.functional's common backward, checked and run in compiled code (the cache
    itself is checked before, by the Python wrapper): dout (N, M), x (N, D), w (D, M) and, but
    for the identity, saved (N, M) plain C-contiguous ndarrays of one native float dtype,
    N, D, M >= 1 and at most 2**31 - 1, op any activation but prelu. Returns (dx, dw, db), new
    arrays (dx None without need_dx), with dense_backward's numbers and governor site; or
    None, with nothing allocated or computed, for any other call (the wrapper's other paths
    take it). See forward_fast."""
    cdef Views v
    cdef Py_ssize_t N, D, M
    cdef bint f32, ident = op == FNN_IDENTITY
    cdef void *gp
    cdef void *sp = NULL
    cdef void *xp
    cdef void *wp
    cdef void *dxp = NULL
    cdef void *dwp
    cdef void *dbp
    cdef void *dzp = NULL
    cdef DenseConfig cfg
    if op == FNN_PRELU or chunks < 0 or chunks > 2:
        return None
    dt = plain_float_dtype(x)
    if (dt is None or plain_float_dtype(dout) is not dt or plain_float_dtype(w) is not dt
            or (not ident and plain_float_dtype(saved) is not dt)):
        return None
    f32 = dt is _float32
    if (not _layer_dims(x, w, &N, &D, &M) or N == 0 or M == 0
            or (<object>dout).shape != (N, M)
            or (not ident and (<object>saved).shape != (N, M))):
        return None
    v.held = 0
    try:
        gp = take(&v, dout, False)
        xp = take(&v, x, False) if gp != NULL else NULL
        wp = take(&v, w, False) if xp != NULL else NULL
        if wp == NULL:
            return None
        if not ident:
            sp = take(&v, saved, False)
            if sp == NULL:
                return None
        dx = _empty((N, D), dtype=dt) if need_dx else None
        dw = _empty((D, M), dtype=dt)
        db = _empty(M, dtype=dt)
        dz = None if ident else _empty((N, M), dtype=dt)
        if need_dx:
            dxp = take(&v, dx, True)
        dwp = take(&v, dw, True)
        dbp = take(&v, db, True)
        if not ident:
            dzp = take(&v, dz, True)
        cfg = _snapshot(chunks)
        if f32:
            _backward_call[float](&cfg, op, <const float *>gp, <const float *>sp,
                                  <const float *>xp, <const float *>wp, <float *>dxp,
                                  <float *>dwp, <float *>dbp, <float *>dzp, alpha, NULL, NULL,
                                  N, D, M, n_threads, chunks, need_dx)
        else:
            _backward_call[double](&cfg, op, <const double *>gp, <const double *>sp,
                                   <const double *>xp, <const double *>wp, <double *>dxp,
                                   <double *>dwp, <double *>dbp, <double *>dzp, alpha, NULL,
                                   NULL, N, D, M, n_threads, chunks, need_dx)
        return (dx, dw, db)
    finally:
        release_all(&v)


def parallel_seen():
    """Whether this module ran a parallel region with more than one thread (fork safety:
    fastnn/_threads.py)."""
    return fnn_parallel_seen() != 0
