#!/usr/bin/env python3
"""Thread scaling: element-wise kernels and 784-512-512-10 training steps at 1, 2, 4, ... threads,
fastnn beside PyTorch (when installed) and the NumPy reference, in one process.

    python3 bench/scaling.py [--threads 1,2,4,8,16] [--elements N] [--rounds R] [--json F]
    python3 bench/scaling.py --quick        # small sizes, 1-2 threads: a smoke run

Written for a many-core machine (the targets in PERFORMANCE.md: the 784-512-512-10 steps at
least as fast as PyTorch at 16 threads; element-wise kernels at 75 GB/s or more on 16 threads).
For every thread count T it measures the median of R rounds, each round timing every library
once (a library's worker threads get a pause to go idle before the next one starts):

- element-wise kernels on N float32 elements (default 64M, as the PERFORMANCE.md anchors),
  forward and backward of relu, sigmoid and tanh, each library writing into preallocated
  arrays: fastnn.functional with ``out=`` under ``fastnn.threads(T)``; PyTorch under
  ``torch.set_num_threads(T)`` (relu as ``clamp_min(x, 0, out=)``, the backward passes as
  ATen's ``threshold_backward``, ``sigmoid_backward`` and ``tanh_backward``). GB/s counts the
  bytes an ideal kernel moves: 8 per element forward, 12 backward. NumPy's element-wise work is
  single-threaded, so it is measured once (T = 1 row) as the anchor;
- NumPy's matmul rate (2048^2 float32) with its BLAS held to T threads (threadpoolctl);
- one training step (forward, softmax loss, backward, SGD update) of 784-512-512-10 at batch
  128 and 1024: fastnn's layer API (``Sequential.train_step``), PyTorch, and the NumPy reference
  step with its BLAS held to T threads.

Results are the same bits for every T (fastnn's kernels do not depend on the thread count);
only the times change. Nothing here is a pass/fail test: the tables go into the README.

fastnn cuts each product into tiles by its shape and by the CPU count it was imported on
(``FASTNN_TILE_CORES``), never by the thread count: OpenBLAS's result for an output element
depends on the extent of the tile it is computed in (up to 5e-5 apart in float32 here), so
tiles that followed the thread count would change the bits. ``--tile-cores 2`` times fastnn's
steps with the tiles of a 2-CPU machine as well (a 784-512-512-10 (128) product in 2 tiles
instead of 16): what sizing the tiles for the machine buys on many cores. On 2 cores here the
16-CPU tiles cost 20% at batch 128 and at 1024 (2.94 against 2.45 and 27.5 against 22.8 ms per
step, SkylakeX kernels; 14% and 5% when the 2-CPU plan still cut 1024's products into 8 tiles).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import cpus, header_lines, now, optional_torch  # noqa: E402  (also puts the repo on sys.path)

import fastnn  # noqa: E402
from fastnn import _threads  # noqa: E402
from fastnn import bench as fb  # noqa: E402
from fastnn import functional as F  # noqa: E402
from fastnn.reference import activations as R  # noqa: E402

KERNELS = ("relu", "sigmoid", "tanh")
STEP_DIMS = (784, 512, 512, 10)
STEP_BATCHES = (128, 1024)


def _median_time(fn, rounds, min_time):
    return float(np.median([fb._time(fn, min_time) for _ in range(rounds)]))


def _blas_limit(n):
    """A context holding NumPy's BLAS to n threads (threadpoolctl), or None without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n, user_api="blas")


class _Elementwise:
    """The kernels' inputs and outputs, allocated once, and one callable per (library, kernel,
    direction)."""

    def __init__(self, n, torch):
        rng = np.random.default_rng(0)
        self.n = n
        self.x = rng.standard_normal(n).astype(np.float32)
        self.g = rng.standard_normal(n).astype(np.float32)
        self.y = np.empty_like(self.x)
        self.caches = {k: getattr(F, f"{k}_forward")(self.x)[1] for k in KERNELS}
        self.calls = {}
        for k in KERNELS:
            fwd, bwd = getattr(F, f"{k}_forward"), getattr(F, f"{k}_backward")
            cache = self.caches[k]
            self.calls[("fastnn", k, "forward")] = lambda fwd=fwd: fwd(self.x, out=self.y)
            self.calls[("fastnn", k, "backward")] = lambda bwd=bwd, c=cache: bwd(self.g, c, out=self.y)
            rf, rb = getattr(R, f"{k}_forward"), getattr(R, f"{k}_backward")
            rcache = rf(self.x)[1]
            self.calls[("numpy", k, "forward")] = lambda rf=rf: rf(self.x)
            self.calls[("numpy", k, "backward")] = lambda rb=rb, c=rcache: rb(self.g, c)
        if torch is not None:
            aten = torch.ops.aten
            tx, tg, ty = torch.from_numpy(self.x), torch.from_numpy(self.g), torch.from_numpy(self.y)
            ts, tt = torch.sigmoid(tx), torch.tanh(tx)
            self.calls[("torch", "relu", "forward")] = lambda: torch.clamp_min(tx, 0.0, out=ty)
            self.calls[("torch", "sigmoid", "forward")] = lambda: torch.sigmoid(tx, out=ty)
            self.calls[("torch", "tanh", "forward")] = lambda: torch.tanh(tx, out=ty)
            self.calls[("torch", "relu", "backward")] = \
                lambda: aten.threshold_backward.grad_input(tg, tx, 0.0, grad_input=ty)
            self.calls[("torch", "sigmoid", "backward")] = \
                lambda: aten.sigmoid_backward.grad_input(tg, ts, grad_input=ty)
            self.calls[("torch", "tanh", "backward")] = \
                lambda: aten.tanh_backward.grad_input(tg, tt, grad_input=ty)

    def gbps(self, seconds, direction):
        return (8 if direction == "forward" else 12) * self.n / seconds / 1e9


def _at_threads(lib, t, torch):
    """A context running `lib` on t threads."""
    import contextlib

    if lib == "fastnn":
        return fastnn.threads(t)
    if lib == "torch":
        @contextlib.contextmanager
        def torch_threads():
            before = torch.get_num_threads()
            torch.set_num_threads(t)
            try:
                yield
            finally:
                torch.set_num_threads(before)
        return torch_threads()
    return _blas_limit(t) or contextlib.nullcontext()


def _tiles(value):
    """A context running fastnn's products with tiles for `value` CPUs (None: as configured)."""
    import contextlib

    from fastnn._kernels import dense as kd

    @contextlib.contextmanager
    def tiles():
        saved = kd.tile_params()
        if value is not None:
            kd.set_tile_params(tile_cores=value)
        try:
            yield
        finally:
            kd.set_tile_params(**saved)
    return tiles()


def run(thread_counts, n, rounds, min_time, use_torch=True, batches=STEP_BATCHES, tile_cores=()):
    torch = optional_torch() if use_torch else None
    with _threads._dynamic_set(False):   # fastnn's steps on exactly the thread count timed
        return _run(thread_counts, n, rounds, min_time, torch, batches, tile_cores)


def _run(thread_counts, n, rounds, min_time, torch, batches, tile_cores):
    libs = ["fastnn"] + (["torch"] if torch is not None else [])
    ew = _Elementwise(n, torch)
    steps = {b: fb._make_runners(STEP_DIMS, b, np.float32, torch)[0] for b in batches}
    results = {"elementwise": [], "matmul": [], "steps": []}

    # NumPy's element-wise kernels run on one thread whatever T is: the anchor, once
    for k in KERNELS:
        for d in ("forward", "backward"):
            s = _median_time(ew.calls[("numpy", k, d)], rounds, min_time)
            results["elementwise"].append(dict(lib="numpy", kernel=k, direction=d, threads=1,
                                               gbps=ew.gbps(s, d)))
    for t in thread_counts:
        times = {}
        for _ in range(rounds):   # every library and kernel once per round
            for lib in libs:
                with _at_threads(lib, t, torch):
                    time.sleep(fb.SETTLE)
                    for k in KERNELS:
                        for d in ("forward", "backward"):
                            times.setdefault((lib, k, d), []).append(fb._time(ew.calls[(lib, k, d)], min_time))
        for (lib, k, d), v in times.items():
            results["elementwise"].append(dict(lib=lib, kernel=k, direction=d, threads=t,
                                               gbps=ew.gbps(float(np.median(v)), d)))
        with _at_threads("numpy", t, torch):
            results["matmul"].append(dict(threads=t, gflops=fb.matmul_rate(np.float32, rounds=rounds)))
        for b in batches:
            runners = steps[b]
            times = {}
            variants = [("fastnn", None)] + [(f"fastnn tile_cores={v}", v) for v in tile_cores]
            for _ in range(rounds):
                for name, value in variants:
                    with _at_threads("fastnn", t, torch), _tiles(value):
                        time.sleep(fb.SETTLE)
                        times.setdefault(name, []).append(fb._time(runners["fastnn"], min_time))
                for lib in ["numpy"] + (["torch"] if torch is not None else []):
                    with _at_threads(lib, t, torch):
                        time.sleep(fb.SETTLE)
                        times.setdefault(lib, []).append(fb._time(runners[lib], min_time))
            med = {lib: float(np.median(v)) for lib, v in times.items()}
            results["steps"].append(dict(batch=b, threads=t, ms={k: v * 1e3 for k, v in med.items()}))
        print(f"  {t} thread(s) done", file=sys.stderr, flush=True)
    return results


def tables(results):
    lines = []
    threads = sorted({r["threads"] for r in results["matmul"]})
    libs = [lib for lib in ("fastnn", "torch") if any(r["lib"] == lib for r in results["elementwise"])]
    anchor = {(r["kernel"], r["direction"]): r["gbps"] for r in results["elementwise"] if r["lib"] == "numpy"}
    lines.append("Element-wise kernels, float32, GB/s (" + " / ".join(libs) + " at each thread count; "
                 "the NumPy reference (fastnn.reference) on one thread)")
    lines.append("")
    lines.append("| kernel | NumPy reference | " + " | ".join(f"{t} thr" for t in threads) + " |")
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in threads) + " |")
    for k in KERNELS:
        for d in ("forward", "backward"):
            cells = []
            for t in threads:
                v = [next(r["gbps"] for r in results["elementwise"]
                          if (r["lib"], r["kernel"], r["direction"], r["threads"]) == (lib, k, d, t))
                     for lib in libs]
                cells.append(" / ".join(f"{x:.1f}" for x in v))
            lines.append(f"| {k} {d} | {anchor[(k, d)]:.1f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("NumPy matmul 2048^2 float32, GFLOP/s: " +
                 ", ".join(f"{r['threads']} thr {r['gflops']:.0f}" for r in results["matmul"]))
    for b in sorted({r["batch"] for r in results["steps"]}):
        rows = [r for r in results["steps"] if r["batch"] == b]
        has_torch = "torch" in rows[0]["ms"]
        lines.append("")
        lines.append(f"Training step {'-'.join(map(str, STEP_DIMS))} ({b}), float32, ms")
        lines.append("")
        lines.append("| threads | fastnn | NumPy reference | " + ("PyTorch | fastnn vs PyTorch | " if has_torch else "")
                     + "fastnn vs NumPy |")
        lines.append("| ---: | ---: | ---: | " + ("---: | ---: | " if has_torch else "") + "---: |")
        for r in rows:
            ms = r["ms"]
            line = f"| {r['threads']} | {ms['fastnn']:.2f} | {ms['numpy']:.2f} | "
            if has_torch:
                line += f"{ms['torch']:.2f} | {ms['torch'] / ms['fastnn']:.2f}x | "
            lines.append(line + f"{ms['numpy'] / ms['fastnn']:.2f}x |")
        others = [k for k in rows[0]["ms"] if k.startswith("fastnn ")]
        if others:
            lines.append("")
            lines.append("fastnn with other tilings, ms: " + "; ".join(
                f"{r['threads']} thr: " + ", ".join(f"{k[7:]} {r['ms'][k]:.2f}" for k in others) for r in rows))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=fb.int_list(1, below=257), default=None,
                    help="comma-separated thread counts (default: 1, 2, 4, ... up to the cores here)")
    ap.add_argument("--elements", type=fb.positive_int, default=64 * 2**20,
                    help="elements per element-wise call")
    ap.add_argument("--rounds", type=fb.positive_int, default=5)
    ap.add_argument("--min-time", type=fb.positive_seconds, default=0.2, help="seconds per measurement")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--json", default=None, help="also write the results (and the header) as JSON")
    ap.add_argument("--tile-cores", type=fb.int_list(1), default=[],
                    help="comma-separated CPU counts to also size fastnn's tiles for and time its "
                         "steps with (e.g. 2: the tiles of a 2-CPU machine)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 1-2 threads, 64K elements, 1 round, batch 128 only")
    args = ap.parse_args(argv)
    bad = [t for t in args.tile_cores if t & (t - 1) or t > 2**30]
    if bad:   # (the tiles are sized for a power of two of CPUs: 3 would run as 2)
        ap.error(f"--tile-cores takes powers of two up to 2**30, got {bad[0]}")
    if args.quick and args.threads and not any(t <= 2 for t in args.threads):
        ap.error("--quick runs 1 or 2 threads: --threads names neither")
    out = fb.open_json(ap, args.json)
    if args.threads:
        thread_counts = args.threads
    else:
        thread_counts = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= cpus()]
    batches = STEP_BATCHES
    if args.quick:
        thread_counts = [t for t in thread_counts if t <= 2]
        args.elements, args.rounds, args.min_time, batches = 65536, 1, 0.005, (128,)
    started = now()
    head = header_lines(started=started)
    print("\n".join(head))
    print(f"threads {thread_counts}, {args.elements} elements, {args.rounds} rounds\n", flush=True)
    tile_cores = args.tile_cores
    results = run(thread_counts, args.elements, args.rounds, args.min_time,
                  use_torch=not args.no_torch, batches=batches, tile_cores=tile_cores)
    print(tables(results))
    if out is not None:
        out.dump(dict(header=head, elements=args.elements, rounds=args.rounds, **results), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
