#!/usr/bin/env python3
"""Training steps under different values of one tuning parameter of the dense kernels.

    python3 bench/tile_params.py [PARAM] [--values V1,V2,...] [--rounds R]

PARAM is a key of ``fastnn._kernels.dense.tile_params()`` (``DenseConfig`` in
csrc/fastnn_dense.pxd); the two this script was written for:

- ``thin`` (default; values 0,2,4,8,16): a dense layer with one to a few outputs (a binary
  classifier, the course's 3-class toy), or the weight gradient of a layer with a few inputs
  (2-D data), makes products with very few output rows or columns. OpenBLAS's sgemm packs both
  operands for its blocked kernel, which at these shapes costs more than the arithmetic; one
  sgemv per output row or column reads each operand once and packs nothing. ``thin`` is the
  largest row or column count that takes the gemv path; 0 turns it off.
- ``chunk_min_rows`` (0 turns chunks off) and ``chunk_rows_more``: how a small network's batch
  is cut into row chunks, which the whole-step kernel runs a chunk per thread (chunk_rows in
  csrc/fastnn_dense.pxd). Try ``chunk_min_rows --values 0,16,64`` and
  ``chunk_rows_more --values 32,64,128,256``.
- ``tile_flops`` and ``max_tiles`` with ``--large`` (``tile_flops --values 64e6,4e9``,
  ``max_tiles --values 64,16``): the work each tile beyond one per core must keep, and how
  many tiles a product may have. More, smaller tiles even out threads of unequal speed but
  each packs its panels of both operands again; only the networks ``--large`` adds
  (784-512-512-10 on 1024 rows, 4096-4096-4096-1000) have products big enough to see
  ``tile_flops`` (64 MFLOP cuts them into 8 and 16 tiles, 4 GFLOP into 2). ``max_tiles``
  moves nothing at 4 GFLOP a tile (none of these products reaches 16 GFLOP); it reproduces
  the older measurement (16 against 64) with tiles of 64 MFLOP.
- ``k_split`` (0 turns parts off): a forward product whose inner dimension is at least this many
  times its larger output side runs in two parts of that dimension (forward_plan in
  csrc/fastnn_dense.pxd); 3072-100-10's first layer is the one here.
- ``max_tile_elems_direct`` (with ``--large``): the most outputs a dx tile may hold when the layer
  below takes it straight in (ReLU, leaky ReLU, none), against ``max_tile_elems`` for a tile
  that passes through sigmoid's or tanh's per-thread scratch; only dx products of more than
  65,536 outputs see it (784-512-512-10 on 1024 rows, the 4096-wide network).
- ``small_mnk`` (with ``--large``; 0 turns it off): a product with an output side of 16 or less
  and more multiply-adds than this is cut into tiles under it, which OpenBLAS's small-matrix
  kernels take without packing (set at import where the BLAS has them); the 10-wide last
  layer of 784-512-512-10 on 1024 rows (``small_mnk --values 0,1e6 --large``).
- ``k_split_pair`` (0: only ``k_split``): a lower bar of the same kind for a product worth two
  tiles on a 2-CPU plan (a value at or above ``k_split`` changes nothing); 784-512-512-10's
  first two layers on 128 rows (``k_split_pair --values 0,1``).
- ``dw_halves_rows`` (with ``--large``; 0 turns it off) and ``dw_halves_elems``: a weight
  gradient planned as two row tiles (a 2-CPU plan) over a batch of at least that many rows,
  and of at most that many elements, runs as two halves of the batch, each thread its own
  rows (dw_in_halves in csrc/fastnn_dense.pxd); only 784-512-512-10 on 1024 rows has such
  products here (``dw_halves_rows --values 0,512 --large``).

For each value this times, interleaved and as the median of R rounds, a training step
(``Sequential.train_step``: forward, loss, backward, SGD update, all in the whole-step kernel)
of small and not-so-small networks, float32, and prints microseconds per step. These choices
depend on the shapes only, so any value keeps results independent of the thread count;
different values give results that differ in the last bits (another summation order).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import header_lines, now  # noqa: E402  (also puts the repo on sys.path)
import fastnn  # noqa: E402
from fastnn import bench as fb  # noqa: E402

# (layer widths, batch, binary): 2-D inputs, 1-3 outputs, small networks on batches of
# several chunks, and wider layers as a control
NETWORKS = [
    ((2, 100, 3), 300, False),
    ((2, 100, 3), 1000, False),
    ((2, 100, 1), 300, True),
    ((20, 50, 2), 1000, False),
    ((4, 8, 8, 1), 64, True),
    ((64, 64, 64, 10), 32, False),
    ((64, 64, 64, 10), 256, False),
    ((3072, 100, 10), 200, False),
    ((784, 512, 512, 10), 128, False),
]
LARGE = [((784, 512, 512, 10), 1024, False), ((4096, 4096, 4096, 1000), 256, False)]


def _model(dims, n, binary, seed=0):
    from fastnn import SGD, Dense, Sequential
    from fastnn.losses import BinaryCrossEntropy, SoftmaxCrossEntropy

    rng = np.random.default_rng(seed)
    layers = [Dense(a, b, activation="relu" if i < len(dims) - 2 else None, seed=i)
              for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]
    model = Sequential(*layers)
    X = rng.standard_normal((n, dims[0])).astype(np.float32)
    y = rng.integers(0, 2 if binary else dims[-1], n)
    loss = BinaryCrossEntropy() if binary else SoftmaxCrossEntropy()
    return model, X, y, loss, SGD(model.parameters(), lr=1e-4)


def _time(f, min_time):
    f()
    reps, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        t = time.perf_counter() - t0
        if t >= min_time:
            return t / reps
        reps *= 2


def main(argv=None):
    from fastnn._kernels import dense as _kd

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("param", nargs="?", default="thin", help="the parameter to vary (default: thin)")
    ap.add_argument("--rounds", type=fb.positive_int, default=7)
    ap.add_argument("--values", default="0,2,4,8,16", help="values to compare")
    ap.add_argument("--min-time", type=fb.positive_seconds, default=0.05, help="seconds per measurement")
    ap.add_argument("--large", action="store_true",
                    help="also 784-512-512-10 (1024) and 4096-4096-4096-1000 (256) (~0.25 s a "
                         "step here)")
    args = ap.parse_args(argv)
    fastnn.set_dynamic(False)   # every step on the full thread count (no governor probes)
    saved = _kd.tile_params()
    if args.param not in saved:
        ap.error(f"unknown parameter {args.param!r}; one of {', '.join(sorted(saved))}")
    try:
        values = [type(saved[args.param])(v) for v in args.values.split(",")]
    except ValueError:
        ap.error(f"--values: expected comma-separated {type(saved[args.param]).__name__}s, got {args.values!r}")
    if any(not (0 <= v < float("inf")) for v in values):   # (negative, NaN or Inf: refused)
        ap.error(f"--values: expected finite values >= 0, got {args.values!r}")
    for v in values:   # (the hook clamps some, rounds tile_cores to a power of two)
        try:
            _kd.set_tile_params(**{args.param: v})
            took = _kd.tile_params()[args.param]
        except (TypeError, ValueError, OverflowError) as exc:
            ap.error(f"--values: {args.param} = {format(v, 'g')}: {exc}")
        finally:
            _kd.set_tile_params(**saved)
        if took != v:
            ap.error(f"--values: {args.param} = {format(v, 'g')} runs as {format(took, 'g')}; "
                     "give values it takes as they are")
    label = {"thin": "thin", "chunk_min_rows": "min", "chunk_rows_more": "more"}.get(args.param, "v")
    started = now()
    print("\n".join(header_lines(started=started)))
    print(f"\ntraining step, float32, microseconds (median of {args.rounds} interleaved rounds)")
    print(f"{args.param} (now {format(saved[args.param], 'g')})")
    print(f"{'network (batch)':28s}" + "".join(f"{label + '=' + format(v, 'g'):>11s}" for v in values))
    try:
        for dims, n, binary in NETWORKS + (LARGE if args.large else []):
            model, X, y, loss, opt = _model(dims, n, binary)
            times = {v: [] for v in values}
            for _ in range(args.rounds):
                for v in values:
                    _kd.set_tile_params(**{args.param: v})
                    times[v].append(_time(lambda: model.train_step(X, y, loss, opt), args.min_time))
            name = "-".join(map(str, dims)) + f" ({n})" + (" binary" if binary else "")
            print(f"{name:28s}" + "".join(f"{np.median(times[v]) * 1e6:11.1f}" for v in values), flush=True)
    finally:
        _kd.set_tile_params(**saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
