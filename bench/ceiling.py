#!/usr/bin/env python3
"""How fast a training step can be on this machine with this BLAS: the floors under the step
targets (README, "How fast a step can be here").

    python3 bench/ceiling.py [--rounds R] [--min-time S] [--threads T] [--large] [--no-torch]
    python3 bench/ceiling.py --quick      # a smoke run: one short round, the small networks

A step of a fully connected network is mostly matrix products, and fastnn hands each of them to
SciPy's BLAS (no GEMM of its own). Two floors under the time of a step that computes its
products with this BLAS, with the kernels it runs now (OPENBLAS_CORETYPE), on T cores:

- peak: the step's FLOPs at T times the best one-core rate measured in the run (a 2048^3
  product, or any of the networks' own products if faster). No code can run the products
  faster than the cores' best rate with these kernels, so this one holds for any way of
  cutting the work, up to the noise of that measured rate.
- products: the step's products, each timed whole (the whole batch, one BLAS call) on one
  thread, summed and divided by T: every product at the rate the BLAS has at its own shape,
  the work shared perfectly, and nothing else (element-wise passes, the loss, the update,
  Python) costing anything. Cutting a product into tiles for T threads does not make its
  packing cheaper, so for the large networks this is close to a floor too. For the small
  networks it is not: each tile pays a tiny product's fixed cost again, so their real floor
  is higher. (Thin products take fastnn's own gemv path, as in the kernels.)

Both floors use the fastest round of each measurement (a floor should be optimistic); the steps
use the median of the rounds, as `python -m fastnn bench`.

The layer API's step computes every layer's forward and weight gradient and the input gradient
of every layer above the first (as PyTorch's, whose input needs no gradient). The course-style
step (fastnn.functional, as the NumPy reference) also computes the first layer's input
gradient, which course code throws away.

For each network the script times, interleaved in each of R rounds, the layer API's step, the
course-style functional step, the NumPy reference step, PyTorch's (when installed), each of the
step's products on one thread and the 2048^3 product; then it prints the two floors, the largest
speedup each allows against NumPy and PyTorch ("most": their step time over the floor), what
fastnn reaches and the README's target. Last, for T >= 2, what the products of one row chunk
of 64-64-64-10 (64 rows, the shortest the step cuts: chunk_min_rows) cost on one thread alone
and with T threads making the same calls at once.
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import cpus, header_lines, now  # noqa: E402  (also puts the repo on sys.path)

# (layer widths, batch, layer API target vs NumPy, vs PyTorch, functional target vs NumPy):
# the targets (README, "Where the targets stand"; None: a roofline target, not a speedup)
NETWORKS = [
    ((2, 100, 3), 300, 5.0, None, 1.2),
    ((64, 64, 64, 10), 32, 5.0, None, 1.2),
    ((3072, 100, 10), 200, 1.4, 1.4, 1.2),
    ((784, 512, 512, 10), 128, 1.4, 1.4, 1.2),
    ((784, 512, 512, 10), 1024, None, None, 1.2),
]
LARGE = [((4096, 4096, 4096, 1000), 256, None, None, None)]
PEAK = (2048, 2048, 2048, False, False)


def step_products(dims, n, first_dx):
    """The products of one training step of a dense network, as gemm_seconds arguments
    (r, c, k, trans_a, trans_b): per layer D -> M its forward x @ W (n x M, inner D), its weight
    gradient x.T @ dz (D x M, inner n) and, above the first layer (or for every layer with
    first_dx), its input gradient dz @ W.T (n x D, inner M)."""
    out = []
    for i, (d, m) in enumerate(zip(dims[:-1], dims[1:])):
        out.append((n, m, d, False, False))
        out.append((d, m, n, True, False))
        if i > 0 or first_dx:
            out.append((n, d, m, False, True))
    return out


def product_flops(products):
    return sum(2.0 * r * c * k for r, c, k, _, _ in products)


def one_thread_seconds(shape, min_time, concurrent=1):
    """A product's seconds per call on one thread (or with `concurrent` threads making the
    calls at once): gemm_seconds, enough calls back to back to fill min_time, after one call
    that also warms up."""
    from fastnn._kernels import dense as _kd

    r, c, k, ta, tb = shape
    per = _kd.gemm_seconds(r, c, k, ta, tb, 1)[0]   # (one thread: a parallel region's start
    reps = max(1, int(min_time / max(per, 1e-9)))   # would make the count too small)
    return _kd.gemm_seconds(r, c, k, ta, tb, reps, concurrent=concurrent)[0]


def floors(products, seconds, peak_rate, threads):
    """(flops, peak floor, products floor), the floors in seconds, of a step's products given
    each product shape's one-thread seconds and the one-core peak rate (FLOP/s)."""
    flops = product_flops(products)
    return flops, flops / (peak_rate * threads), sum(seconds[p] for p in products) / threads


def _fmt_ms(s):
    ms = s * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _x(v):
    return "" if v is None else f"{v:.2f}x"


def _most(t, pk, pr):
    return _x(t / pk) + " / " + _x(t / pr)


def _blas_limit(n):
    """A context holding every BLAS (NumPy's too, threadpoolctl) to n threads, or a null
    context without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("(threadpoolctl not installed: NumPy's BLAS keeps its own thread count)")
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def measure(networks, rounds, min_time, torch, settle):
    """Per network: the steps' median times, and each product's and the 2048^3 product's
    fastest one-thread time, interleaved in each round."""
    from fastnn import bench as fb

    out = []
    for dims, n, t_np, t_torch, t_func in networks:
        runners, *_ = fb._make_runners(dims, n, np.float32, torch)
        shapes = sorted(set(step_products(dims, n, True)) | {PEAK})
        times = {k: [] for k in runners}
        ptimes = {p: [] for p in shapes}
        for _ in range(rounds):
            for k, fn in runners.items():
                time.sleep(settle)
                times[k].append(fb._time(fn, min_time))
            time.sleep(settle)
            for p in shapes:
                ptimes[p].append(one_thread_seconds(p, min_time / len(shapes)))
        med = {k: float(np.median(v)) for k, v in times.items()}
        fastest = {p: float(np.min(v)) for p, v in ptimes.items()}
        out.append((dims, n, t_np, t_torch, t_func, med, fastest))
    return out


def main(argv=None):
    import fastnn
    from fastnn import bench as fb
    from fastnn._kernels import dense as _kd

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=fb.positive_int, default=5, help="interleaved rounds (medians)")
    ap.add_argument("--min-time", type=fb.positive_seconds, default=0.2, help="seconds per measurement")
    ap.add_argument("--threads", type=fb.positive_int, default=None,
                    help="cores T (default: fastnn's threads); NumPy's BLAS and PyTorch get T too")
    ap.add_argument("--large", action="store_true", help="also the 4096-4096-4096-1000 (256) network")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: one round, short measurements, the two small networks "
                         "(overrides --rounds, --min-time and --large)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.min_time <= 0:
        ap.error("--min-time must be positive")
    if args.threads is not None and args.threads > 256:
        ap.error("--threads: at most 256 (the concurrent products this script times)")
    networks = NETWORKS + (LARGE if args.large else [])
    if args.quick:
        args.rounds, args.min_time, networks = 1, 0.002, NETWORKS[:2]
    if args.threads is not None:
        fastnn.set_num_threads(args.threads)
    fastnn.set_dynamic(False)   # every step on exactly T threads (no governor probes)
    threads = fastnn.get_num_threads()
    torch = None
    if not args.no_torch:
        try:
            import torch as _torch

            _torch.set_num_threads(threads)
            torch = _torch
        except Exception:   # not installed, or a broken install: run without it
            torch = None

    print("\n".join(header_lines(started=now())))
    print(f"PyTorch: {torch.__version__ if torch else 'not used'}; T = {threads} cores; "
          f"{args.rounds} rounds of {args.min_time} s measurements")
    if threads > cpus():
        print(f"WARNING: T = {threads} threads on {cpus()} CPUs: the floors assume T cores")
    if not _kd.blas_thread_control():
        print("WARNING: fastnn found no thread control for SciPy's BLAS, so the one-thread "
              "timings may have run on several threads: the floors are not floors")
    with _blas_limit(threads):   # (NumPy's BLAS gets T threads too, as the help says)
        data = measure(networks, args.rounds, args.min_time, torch,
                       0.0 if args.quick else fb.SETTLE)
    # the one-core peak: the best rate of any product measured, the 2048^3 one included
    peak_rate = max(2.0 * r * c * k / t for *_, fastest in data
                    for (r, c, k, _, _), t in fastest.items())
    print(f"one-core peak (the best rate of any product measured): {peak_rate / 1e9:.1f} GFLOP/s; "
          f"T cores at that rate: {threads * peak_rate / 1e9:.0f} GFLOP/s")
    print("\nfloat32, ms per step; 'most' = the largest speedup a floor allows (peak / products)")

    print("\nlayer API step (Sequential.train_step)")
    print(f"{'network (batch)':<26}{'GFLOP':>7}{'peak':>8}{'products':>10}{'fastnn':>9}"
          f"{'numpy':>9}{'torch':>9}   {'vs numpy: most':>17}{'fastnn':>8}{'target':>8}"
          f"   {'vs torch: most':>17}{'fastnn':>8}{'target':>8}")
    for dims, n, t_np, t_torch, _, med, fastest in data:
        fl, pk, pr = floors(step_products(dims, n, False), fastest, peak_rate, threads)
        tt = med.get("torch")
        line = (f"{'-'.join(map(str, dims)) + f' ({n})':<26}{fl / 1e9:>7.3f}{_fmt_ms(pk):>8}"
                f"{_fmt_ms(pr):>10}{_fmt_ms(med['fastnn']):>9}{_fmt_ms(med['numpy']):>9}"
                f"{_fmt_ms(tt) if tt else '':>9}   {_most(med['numpy'], pk, pr):>17}"
                f"{_x(med['numpy'] / med['fastnn']):>8}{_x(t_np):>8}")
        if tt:
            line += f"   {_most(tt, pk, pr):>17}{_x(tt / med['fastnn']):>8}{_x(t_torch):>8}"
        print(line, flush=True)

    print("\ncourse-style step with fastnn.functional (the first layer's dx included)")
    print(f"{'network (batch)':<26}{'GFLOP':>7}{'peak':>8}{'products':>10}{'functional':>11}"
          f"{'numpy':>9}   {'vs numpy: most':>17}{'functional':>11}{'target':>8}")
    for dims, n, _, _, t_func, med, fastest in data:
        fl, pk, pr = floors(step_products(dims, n, True), fastest, peak_rate, threads)
        print(f"{'-'.join(map(str, dims)) + f' ({n})':<26}{fl / 1e9:>7.3f}{_fmt_ms(pk):>8}"
              f"{_fmt_ms(pr):>10}{_fmt_ms(med['functional']):>11}{_fmt_ms(med['numpy']):>9}   "
              f"{_most(med['numpy'], pk, pr):>17}{_x(med['numpy'] / med['functional']):>11}"
              f"{_x(t_func):>8}", flush=True)

    if threads >= 2:
        # what the small step's calls cost each other: T threads calling at the same time
        rows = _kd.tile_params()["chunk_min_rows"] or 64
        print(f"\n64-64-64-10, the products of one {rows}-row chunk: us per call on one thread "
              f"alone / with {threads} threads making the same calls at once (fastest of "
              f"{args.rounds})")
        total = [0.0, 0.0]
        for p in step_products((64, 64, 64, 10), rows, False):
            alone = min(one_thread_seconds(p, args.min_time / 8) for _ in range(args.rounds))
            both = min(one_thread_seconds(p, args.min_time / 8, threads)
                       for _ in range(args.rounds))
            total[0] += alone
            total[1] += both
            print(f"  {p[0]:>4} x {p[1]:<4} inner {p[2]:<4}{' (x.T)' if p[3] else '':<7}"
                  f"{' (w.T)' if p[4] else '':<7}{alone * 1e6:>7.2f} / {both * 1e6:.2f}")
        print(f"  all eight{'':>26}{total[0] * 1e6:>7.2f} / {total[1] * 1e6:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
