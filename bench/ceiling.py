#!/usr/bin/env python3
"""How fast a training step can be on this machine with this BLAS: the floors under the step
targets (README, "How fast a step can be here").

    python3 bench/ceiling.py [--rounds R] [--min-time S] [--threads T] [--large] [--no-torch]

A step of a fully connected network is mostly matrix products, and fastnn hands each of them to
SciPy's BLAS (no GEMM of its own). So no implementation that computes a step's products with this
BLAS on T cores can take less than:

- peak: the step's FLOPs at T times the one-core rate of a 2048 x 2048 x 2048 product (the most
  one core does with this BLAS);
- products: the step's products, each timed whole (the whole batch, one BLAS call) on one
  thread, summed and divided by T: every product at the rate the BLAS has at its own shape,
  the work shared perfectly, and nothing else (element-wise passes, the loss, the update,
  Python) costing anything. Cutting a product into tiles for T threads does not make its
  packing cheaper, so at these sizes this is close to a bound too; for the small networks it
  is not (a tiny product's fixed cost is paid again by each tile), and their real floor is
  higher.

The layer API's step computes every layer's forward and weight gradient and the input gradient
of every layer above the first. The course-style step (fastnn.functional, as the NumPy
reference) also computes the first layer's input gradient, which course code throws away.

The script times, interleaved and as medians of R rounds (as `python -m fastnn bench`), the
layer API's step, the course-style functional step, the NumPy reference step and PyTorch's
(when installed), and prints for each network the two bounds and the largest speedup each
allows against NumPy and PyTorch, beside what fastnn reaches and the README's target. A target
above the "peak" speedup cannot be met by any implementation that computes these products with
this BLAS on these cores, the NumPy reference included.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import header_lines, now  # noqa: E402  (also puts the repo on sys.path)

# (layer widths, batch, layer API target vs NumPy, vs PyTorch, functional target vs NumPy):
# the targets of the README's step table (None: a roofline target, not a speedup)
NETWORKS = [
    ((2, 100, 3), 300, 5.0, None, 1.2),
    ((64, 64, 64, 10), 32, 5.0, None, 1.2),
    ((3072, 100, 10), 200, 1.4, 1.4, 1.2),
    ((784, 512, 512, 10), 128, 1.4, 1.4, 1.2),
    ((784, 512, 512, 10), 1024, None, None, 1.2),
]
LARGE = [((4096, 4096, 4096, 1000), 256, None, None, None)]


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


def one_thread_seconds(shape, min_time):
    """A product's seconds per call on one thread: gemm_seconds, enough calls back to back to
    fill min_time (after one call that also warms up)."""
    from fastnn._kernels import dense as _kd

    r, c, k, ta, tb = shape
    per = _kd.gemm_seconds(r, c, k, ta, tb, 1)[0]
    reps = max(1, int(min_time / max(per, 1e-9)))
    return _kd.gemm_seconds(r, c, k, ta, tb, reps)[0]


def bounds(products, seconds, peak_rate, threads):
    """(flops, peak bound, products bound) in seconds of a step's products, given each product
    shape's one-thread seconds and the one-core peak rate (FLOP/s)."""
    flops = product_flops(products)
    return flops, flops / (peak_rate * threads), sum(seconds[p] for p in products) / threads


def _fmt_ms(s):
    ms = s * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _x(v):
    return "" if v is None else f"{v:.2f}x"


def main(argv=None):
    import fastnn
    from fastnn import bench as fb
    from fastnn._kernels import dense as _kd

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians)")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement")
    ap.add_argument("--threads", type=int, default=None, help="cores T (default: fastnn's threads)")
    ap.add_argument("--large", action="store_true", help="also the 4096-4096-4096-1000 (256) network")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--quick", action="store_true",
                    help="one round, short measurements, the two small networks (a smoke run)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.min_time <= 0:
        ap.error("--min-time must be positive")
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be at least 1")
        fastnn.set_num_threads(args.threads)
    networks = NETWORKS + (LARGE if args.large else [])
    if args.quick:
        args.rounds, args.min_time, networks = 1, 0.002, NETWORKS[:2]
    threads = fastnn.get_num_threads()
    torch = None
    if not args.no_torch:
        try:
            import torch as _torch

            _torch.set_num_threads(threads)
            torch = _torch
        except ImportError:
            torch = None

    started = now()
    print("\n".join(header_lines(started=started)))
    print(f"PyTorch: {torch.__version__ if torch else 'not used'}; T = {threads} cores; "
          f"{args.rounds} rounds of {args.min_time} s measurements")
    print("\nfloat32, ms per step; 'most' = the largest speedup a bound allows (peak / products)")

    rows, best = [], 0.0
    for dims, n, t_np, t_torch, t_func in networks:
        runners, *_ = fb._make_runners(dims, n, np.float32, torch)
        layer_p = step_products(dims, n, False)
        func_p = step_products(dims, n, True)
        shapes = sorted(set(func_p))
        times = {k: [] for k in runners}
        ptimes = {p: [] for p in shapes}
        peaks = []
        settle = 0.0 if args.quick else fb.SETTLE
        # the steps, the products one by one and the 2048^3 rate, side by side in each round
        for _ in range(args.rounds):
            for k, fn in runners.items():
                time.sleep(settle)
                times[k].append(fb._time(fn, args.min_time))
            time.sleep(settle)
            for p in shapes:
                ptimes[p].append(one_thread_seconds(p, args.min_time / len(shapes)))
            peaks.append(_kd.gemm_seconds(2048, 2048, 2048)[0])
        med = {k: float(np.median(v)) for k, v in times.items()}
        seconds = {p: float(np.median(v)) for p, v in ptimes.items()}
        # the one-core peak: the 2048^3 product's rate, or a product's of the step if higher
        peak_rate = max([2.0 * 2048**3 / float(np.median(peaks))]
                        + [2.0 * r * c * k / seconds[(r, c, k, a, b)] for r, c, k, a, b in shapes])
        best = max(best, peak_rate)
        rows.append((dims, n, t_np, t_torch, t_func, med, peak_rate,
                     bounds(layer_p, seconds, peak_rate, threads),
                     bounds(func_p, seconds, peak_rate, threads)))

    head = (f"{'network (batch)':<26}{'GFLOP':>7}{'peak':>8}{'products':>10}{'fastnn':>9}"
            f"{'numpy':>9}{'torch':>9}   {'vs numpy: most':>17}{'fastnn':>8}{'target':>8}"
            f"   {'vs torch: most':>17}{'fastnn':>8}{'target':>8}")
    print("\nlayer API step (Sequential.train_step)")
    print(head)
    for dims, n, t_np, t_torch, _, med, _, (fl, pk, pr), _ in rows:
        name = "-".join(map(str, dims)) + f" ({n})"
        tt = med.get("torch")
        line = (f"{name:<26}{fl / 1e9:>7.3f}{_fmt_ms(pk):>8}{_fmt_ms(pr):>10}"
                f"{_fmt_ms(med['fastnn']):>9}{_fmt_ms(med['numpy']):>9}"
                f"{_fmt_ms(tt) if tt else '':>9}   "
                f"{_x(med['numpy'] / pk) + ' / ' + _x(med['numpy'] / pr):>17}"
                f"{_x(med['numpy'] / med['fastnn']):>8}{_x(t_np):>8}   ")
        if tt:
            line += (f"{_x(tt / pk) + ' / ' + _x(tt / pr):>17}"
                     f"{_x(tt / med['fastnn']):>8}{_x(t_torch):>8}")
        print(line, flush=True)
    print("\ncourse-style step with fastnn.functional (the first layer's dx included)")
    print(f"{'network (batch)':<26}{'GFLOP':>7}{'peak':>8}{'products':>10}{'functional':>11}"
          f"{'numpy':>9}   {'vs numpy: most':>17}{'functional':>11}{'target':>8}")
    for dims, n, _, _, t_func, med, _, _, (fl, pk, pr) in rows:
        name = "-".join(map(str, dims)) + f" ({n})"
        print(f"{name:<26}{fl / 1e9:>7.3f}{_fmt_ms(pk):>8}{_fmt_ms(pr):>10}"
              f"{_fmt_ms(med['functional']):>11}{_fmt_ms(med['numpy']):>9}   "
              f"{_x(med['numpy'] / pk) + ' / ' + _x(med['numpy'] / pr):>17}"
              f"{_x(med['numpy'] / med['functional']):>11}{_x(t_func):>8}", flush=True)
    print(f"\none-core peak (the best of the 2048^3 product and the steps' own): "
          f"{best / 1e9:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
