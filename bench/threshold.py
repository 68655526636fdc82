#!/usr/bin/env python3
"""Where does a second thread start to pay for the element-wise activation kernels?

    python3 bench/threshold.py [--rounds R] [--margin M] [--cold] [--markdown]

For sizes from 1K to 1M elements (geometric, half-octave steps) this times
``fastnn._kernels.activations.forward/backward`` called directly on preallocated float32
arrays with ``n_threads=1`` and ``n_threads=2``, interleaved, median of R rounds (each
round times a batch of back-to-back calls, so the OpenMP worker is "hot": spinning, as
inside a training loop). While it runs, ``set_min_work_per_thread(1)`` makes the kernel
really use 2 threads at every size; the original value is restored afterwards.

The hot sweep runs ``--repeat`` times per op (at different moments: the machine is shared
and noisy) and t1, t2 are the medians over the sweeps. The crossover of an op is the smallest
measured size from which on (at every larger size too) the 2-thread call is at least
``--margin`` times faster than the 1-thread call. The kernel decides with
``effective_threads(work, MIN_WORK_PER_THREAD, n)`` (csrc/fastnn_openmp.pxd): parallel when
``work >= 2 * MIN_WORK_PER_THREAD``, with work = n * OP_COST[op] forward and n * 2 backward,
so from the crossovers it derives MIN_WORK_PER_THREAD and OP_COST weights (in whole ReLU
elements, and in half elements for finer integer weights), then measures every op again
exactly at the size where the current and each proposed constant set make it go parallel.

``--cold`` also measures single calls separated by an idle gap (``--gap-ms``), so the OpenMP
worker has gone to sleep and must be woken: the cost a kernel pays when it runs between
long stretches of other work.

Finally it measures the per-call cost of ``fastnn.functional.relu_forward`` on a 32x64
float32 array against ``np.maximum`` (the small-call overhead), in microseconds.
"""
import argparse
import math
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import OtherLoad, header_lines, loadavg, now  # noqa: E402  (also puts the repo on sys.path)

import fastnn  # noqa: E402
from fastnn import bench as fb  # noqa: E402
from fastnn import functional as F  # noqa: E402
from fastnn._kernels import activations as K  # noqa: E402

DT = np.float32


def opcode(name):
    """The kernel's op code by name (module constant, or the older ``Op`` enum)."""
    if hasattr(K, name):
        return int(getattr(K, name))
    return int(getattr(K.Op, name))


# (label, direction, op name); forward cost weight comes from the kernel's OP_COST
OPS = [
    ("relu fwd", "fwd", "RELU"),
    ("leaky fwd", "fwd", "LEAKY_RELU"),
    ("tanh fwd", "fwd", "TANH"),
    ("sigmoid fwd", "fwd", "SIGMOID"),
    ("relu bwd", "bwd", "RELU"),
    ("sigmoid bwd", "bwd", "SIGMOID"),
]
# The kernel's current weights, for the "parallel from" column (keep in sync with csrc/activations.pyx).
CURRENT_OP_COST = {"RELU": 1, "LEAKY_RELU": 1, "TANH": 6, "SIGMOID": 6}
CURRENT_BWD_COST = 2


def sizes(lo=1024, hi=1 << 20):
    out = []
    k = 0
    while True:
        n = int(round(lo * 2 ** (k / 2) / 16)) * 16
        if n > hi:
            break
        out.append(n)
        k += 1
    return out


def make_call(direction, op, n, nt, arrays):
    x, y, dout, dx = (a[:n] for a in arrays)
    if direction == "fwd":
        return lambda: K.forward(op, x, y, 0.0, nt)
    return lambda: K.backward(op, dout, y, dx, 0.0, nt)


def batch_time(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def calibrate(fn, target=5e-4):
    fn()
    reps = 1
    while True:
        t = batch_time(fn, reps)
        if t * reps >= target or reps >= 1 << 16:
            return max(reps, 3)
        reps = max(reps * 2, int(math.ceil(target / max(t, 1e-9))))


def measure_hot(ops, ns, rounds, arrays, seed=0):
    """{(label, n): (t1, t2)} medians of per-call times, threads 1 and 2 interleaved."""
    rng = random.Random(seed)
    res = {}
    for label, direction, opname in ops:
        op = opcode(opname)
        for n in ns:
            f1 = make_call(direction, op, n, 1, arrays)
            f2 = make_call(direction, op, n, 2, arrays)
            reps = calibrate(f1)
            f2()
            t1s, t2s = [], []
            for _ in range(rounds):
                if rng.random() < 0.5:
                    t1s.append(batch_time(f1, reps))
                    t2s.append(batch_time(f2, reps))
                else:
                    t2s.append(batch_time(f2, reps))
                    t1s.append(batch_time(f1, reps))
            res[label, n] = (float(np.median(t1s)), float(np.median(t2s)))
    return res


def measure_cold(ops, ns, rounds, arrays, gap_s, seed=1):
    """Single calls, each after an idle gap (time.sleep) long enough for the worker to sleep."""
    rng = random.Random(seed)
    res = {}
    for label, direction, opname in ops:
        op = opcode(opname)
        for n in ns:
            f = {1: make_call(direction, op, n, 1, arrays), 2: make_call(direction, op, n, 2, arrays)}
            ts = {1: [], 2: []}
            for _ in range(rounds):
                order = [1, 2] if rng.random() < 0.5 else [2, 1]
                for nt in order:
                    time.sleep(gap_s)
                    t0 = time.perf_counter()
                    f[nt]()
                    ts[nt].append(time.perf_counter() - t0)
            res[label, n] = (float(np.median(ts[1])), float(np.median(ts[2])))
    return res


def least_disturbed(run, max_other, attempts):
    """Run `run()` until other processes used at most `max_other` cores meanwhile (at most
    `attempts` times); returns (the least disturbed result, its other-load in cores)."""
    best = None
    for _ in range(attempts):
        with OtherLoad() as other:
            res = run()
        load = other.cores if other.cores is not None else 0.0
        if best is None or load < best[1]:
            best = (res, load)
        if load <= max_other:
            break
        time.sleep(1.0)
    return best


def crossover(ns, res, label, margin):
    """Smallest n from which on every measured size has t1 / t2 >= margin (None if never)."""
    cross = None
    for n in reversed(ns):
        t1, t2 = res[label, n]
        if t1 / t2 >= margin:
            cross = n
        else:
            break
    return cross


def current_parallel_from(direction, opname, min_work):
    cost = CURRENT_OP_COST[opname] if direction == "fwd" else CURRENT_BWD_COST
    return parallel_from(cost, min_work)


def parallel_from(cost, min_work):
    """Smallest n with n * cost >= 2 * min_work (effective_threads' test)."""
    return int(math.ceil(2 * min_work / cost))


def propose(cross, scale):
    """Integer weights in units of 1/scale of a ReLU-forward element. MIN_WORK_PER_THREAD comes
    from the relu forward crossover, each forward op's weight from its own crossover, and the
    one backward weight (the kernel has one for all ops) from the LATEST backward crossover.
    Weights are rounded to the nearest integer; `verify` then measures each op exactly where the
    proposal makes it go parallel."""
    base = cross.get("relu fwd")
    if base is None:
        return None
    min_work = scale * base // 2
    fwd, bwd = {}, []
    for label, direction, opname in OPS:
        c = cross.get(label)
        if c is None:
            continue
        w = max(1, int(round(2 * min_work / c)))
        if direction == "fwd":
            fwd[opname] = w
        else:
            bwd.append(w)
    return {"min_work": min_work, "fwd": fwd, "bwd": min(bwd) if bwd else None}


def schemes_for(cross, orig):
    out = [("now", {"min_work": orig, "fwd": dict(CURRENT_OP_COST), "bwd": CURRENT_BWD_COST})]
    for scale in (1, 2):
        pr = propose(cross, scale)
        if pr is not None:
            out.append((f"proposed, unit 1/{scale} relu element" if scale > 1 else "proposed", pr))
    return out


def scheme_points(schemes):
    """{(op label, n)} where some scheme makes an op go parallel."""
    pts = set()
    for _, sc in schemes:
        for label, direction, opname in OPS:
            w = sc["fwd"].get(opname) if direction == "fwd" else sc["bwd"]
            if w is not None:
                p0 = parallel_from(w, sc["min_work"])
                if p0 <= 1 << 22:
                    pts.add((label, p0))
    return pts


def evaluate_schemes(schemes, verified, md):
    """Where each constant set makes the kernel go parallel, with t1/t2 measured right there."""
    out = ["Where each constant set makes the kernel go parallel, and t1/t2 measured at exactly that "
           "size (below 1: the second thread makes the call slower):"]
    for name, sc in schemes:
        fw = ", ".join(f"{k}={v}" for k, v in sc["fwd"].items())
        out.append(("" if not md else "- ") + f"{name}: MIN_WORK_PER_THREAD = {sc['min_work']}, "
                   f"forward OP_COST {fw}; backward weight {sc['bwd']}")
        for label, direction, opname in OPS:
            w = sc["fwd"].get(opname) if direction == "fwd" else sc["bwd"]
            if w is None:
                continue
            p0 = parallel_from(w, sc["min_work"])
            if (label, p0) in verified:
                t1, t2 = verified[label, p0]
                rs = f"t1/t2 = {t1 / t2:.2f} ({1e6 * t1:.1f} / {1e6 * t2:.1f} us)"
            else:
                rs = "not measured"
            out.append(("    " if not md else "    - ") + f"{label:<12} parallel from {p0:>8}: {rs}")
    return out


def small_call_overhead(rounds):
    """Per-call microseconds at 32x64 float32, interleaved batches, medians."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64), dtype=DT)
    buf = np.empty_like(x)
    xf, bf = x.reshape(-1), buf.reshape(-1)
    relu = opcode("RELU")
    cands = [
        ("fastnn.functional.relu_forward(x)", lambda: F.relu_forward(x)),
        ("fastnn.functional.relu_forward(x, out=buf)", lambda: F.relu_forward(x, out=buf)),
        ("np.maximum(x, 0)", lambda: np.maximum(x, 0)),
        ("np.maximum(x, 0, out=buf)", lambda: np.maximum(x, 0, out=buf)),
        ("kernel only: _kernels.activations.forward(RELU, x, out, 0.0, 2)",
         lambda: K.forward(relu, xf, bf, 0.0, 2)),
        ("empty Python call (baseline)", lambda: None),
    ]
    reps = 2000
    ts = {i: [] for i in range(len(cands))}
    order = list(range(len(cands)))
    r = random.Random(2)
    for _ in range(rounds):
        r.shuffle(order)
        for i in order:
            ts[i].append(batch_time(cands[i][1], reps))
    return [(label, 1e6 * float(np.median(ts[i]))) for i, (label, _) in enumerate(cands)]


def fmt_n(n):
    return f"{n / 1024:.0f}K" if n < 1 << 20 else f"{n / (1 << 20):.0f}M"


def sweep_report(ns, hot, cold, cross, orig, args, md):
    """The sweep tables (hot, cold) and the crossovers, as lines."""
    lines = [""]
    if md:
        lines.append("Speedup of 2 threads over 1 (t1 / t2), back-to-back calls (worker hot):")
        lines.append("")
        lines.append("| elements | " + " | ".join(f"{o[0]} t1 us" for o in OPS[:1]) + " | "
                     + " | ".join(o[0] for o in OPS) + " |")
        lines.append("| ---: | ---: | " + " | ".join("---:" for _ in OPS) + " |")
    else:
        lines.append("Speedup of 2 threads over 1 (t1/t2), back-to-back calls (worker hot); "
                     "t1/t2 in microseconds per call:")
        lines.append(f"{'elements':>9}" + "".join(f"{o[0]:>26}" for o in OPS))
    for n in ns:
        if md:
            t1r = hot[OPS[0][0], n][0]
            lines.append(f"| {n} | {1e6 * t1r:.1f} | "
                         + " | ".join(f"{hot[o[0], n][0] / hot[o[0], n][1]:.2f}" for o in OPS) + " |")
        else:
            cells = []
            for o in OPS:
                t1, t2 = hot[o[0], n]
                cells.append(f"{t1 / t2:5.2f} ({1e6 * t1:7.1f}/{1e6 * t2:7.1f})")
            lines.append(f"{n:>9}" + "".join(f"{c:>26}" for c in cells))

    if cold is not None:
        cold_ns = sorted({k[1] for k in cold})
        lines.append("")
        lines.append(f"Cold single calls (each after a {args.gap_ms:g} ms idle gap): t1/t2, and t1/t2 in us")
        if md:
            lines.append("")
            lines.append("| elements | " + " | ".join(o[0] for o in OPS) + " |")
            lines.append("| ---: | " + " | ".join("---:" for _ in OPS) + " |")
        for n in cold_ns:
            cells = []
            for o in OPS:
                t1, t2 = cold[o[0], n]
                cells.append(f"{t1 / t2:.2f} ({1e6 * t1:.1f}/{1e6 * t2:.1f})")
            if md:
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            else:
                lines.append(f"{n:>9}" + "".join(f"{c:>26}" for c in cells))

    # crossovers and the constants they imply
    lines.append("")
    lines.append(f"Crossover (smallest size from which 2 threads are >= {args.margin:g}x faster at every "
                 f"larger measured size), and where the kernel now goes parallel:")
    if md:
        lines.append("")
        lines.append("| op | crossover (hot) | " + ("crossover (cold) | " if cold else "")
                     + "kernel parallel from (now) |")
        lines.append("| --- | ---: | " + ("---: | " if cold else "") + "---: |")
    for label, direction, opname in OPS:
        c = cross[label]
        cc = crossover(sorted({k[1] for k in cold}), cold, label, args.margin) if cold else None
        now_from = current_parallel_from(direction, opname, orig)
        cs = "none <= 1M" if c is None else str(c)
        ccs = ("none <= 1M" if cc is None else str(cc)) if cold else None
        if md:
            lines.append(f"| {label} | {cs} | " + (f"{ccs} | " if cold else "") + f"{now_from} |")
        else:
            lines.append(f"  {label:<12} hot {cs:>10}" + (f"   cold {ccs:>10}" if cold else "")
                         + f"   kernel now parallel from {now_from}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=fb.positive_int, default=15, help="interleaved rounds per size (median)")
    p.add_argument("--margin", type=fb.nonnegative_float, default=1.15,
                   help="2 threads must be this many times faster (default 1.15)")
    p.add_argument("--cold", action="store_true", help="also measure single calls after an idle gap")
    p.add_argument("--gap-ms", type=fb.nonnegative_float, default=20.0,
                   help="idle gap before each cold call (ms; at most 10000)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--max-other", type=fb.nonnegative_float, default=0.3,
                   help="re-run a sweep if other processes used more than this many cores (default 0.3)")
    p.add_argument("--attempts", type=fb.positive_int, default=4, help="at most this many tries per sweep (default 4)")
    p.add_argument("--scheme", action="append", default=[], metavar="MIN,RELU,LEAKY,TANH,SIGMOID,BWD",
                   help="also verify this constant set: MIN_WORK_PER_THREAD, the forward OP_COST of relu, "
                        "leaky_relu, tanh, sigmoid, and the backward weight (repeatable)")
    p.add_argument("--verify-only", action="store_true",
                   help="skip the sweeps: only measure where the current and --scheme sets go parallel")
    p.add_argument("--repeat", type=fb.positive_int, default=2,
                   help="independent hot sweeps per op, at different times; t1 and t2 are the medians "
                        "over them (default 2)")
    args = p.parse_args(argv)
    if args.gap_ms > 10000:   # (slept before every cold call)
        p.error(f"--gap-ms must be at most 10000, got {args.gap_ms:g}")
    fastnn.set_dynamic(False)   # the kernels on exactly the counts timed (no governor probes)
    extra_schemes = []
    for spec in args.scheme:
        try:
            mw, relu, leaky, tanh, sig, bwd = (int(v) for v in spec.split(","))
        except ValueError:
            p.error(f"--scheme wants 6 comma-separated integers, got {spec!r}")
        if min(mw, relu, leaky, tanh, sig, bwd) < 1:   # (a work per thread and costs, divided by)
            p.error(f"--scheme wants 6 integers >= 1, got {spec!r}")
        extra_schemes.append((f"--scheme {spec}", {
            "min_work": mw, "fwd": {"RELU": relu, "LEAKY_RELU": leaky, "TANH": tanh, "SIGMOID": sig},
            "bwd": bwd}))
    if args.verify_only:
        args.repeat, args.cold = 0, False

    ns = sizes()
    nmax = ns[-1]
    rng = np.random.default_rng(7)
    x = rng.standard_normal(nmax, dtype=DT)
    y = np.tanh(x)            # a valid saved output for every op's backward
    dout = rng.standard_normal(nmax, dtype=DT)
    dx = np.empty(nmax, DT)
    arrays = (x, np.empty(nmax, DT), dout, dx)
    bwd_arrays = (x, y, dout, dx)

    orig = K.min_work_per_thread()
    load_before, started = loadavg(), now()
    t0 = time.perf_counter()
    hot, cold, loads, sweeps = {}, None, {}, []
    try:
        K.set_min_work_per_thread(1)
        for rep in range(args.repeat):
            sweep = {}
            for op in OPS:
                arr = bwd_arrays if op[1] == "bwd" else arrays
                res, ld = least_disturbed(lambda: measure_hot([op], ns, args.rounds, arr, seed=rep),
                                          args.max_other, args.attempts)
                sweep.update(res)
                loads[f"hot#{rep + 1}", op[0]] = ld
            sweeps.append(sweep)
        for key in (sweeps[0] if sweeps else {}):
            hot[key] = (float(np.median([sw[key][0] for sw in sweeps])),
                        float(np.median([sw[key][1] for sw in sweeps])))
        cross = {label: crossover(ns, hot, label, args.margin) if sweeps else None for label, _, _ in OPS}
        schemes = schemes_for(cross, orig) + extra_schemes
        verified = {}
        for label, n in sorted(scheme_points(schemes)):
            direction, opname = next((d, o) for lb, d, o in OPS if lb == label)
            arr = bwd_arrays if direction == "bwd" else arrays
            if n > arr[0].shape[0]:
                continue
            res, ld = least_disturbed(
                lambda: measure_hot([(label, direction, opname)], [n], 2 * args.rounds, arr, seed=99),
                args.max_other, args.attempts)
            verified.update(res)
            loads["verify", f"{label}@{n}"] = ld
        if args.cold:
            cold_ns = [n for n in ns if n >= 4096][::2]
            cold = {}
            for op in OPS:
                arr = bwd_arrays if op[1] == "bwd" else arrays
                res, ld = least_disturbed(
                    lambda: measure_cold([op], cold_ns, max(7, args.rounds // 2), arr, args.gap_ms / 1e3),
                    args.max_other, args.attempts)
                cold.update(res)
                loads["cold", op[0]] = ld
    finally:
        K.set_min_work_per_thread(orig)
    overhead, ld = least_disturbed(lambda: small_call_overhead(max(9, args.rounds)), args.max_other, args.attempts)
    loads["overhead", ""] = ld
    assert K.min_work_per_thread() == orig
    elapsed = time.perf_counter() - t0

    md = args.markdown
    lines = []
    hdr = header_lines([
        f"{args.rounds} interleaved rounds per size, medians"
        + (f"; hot t1/t2: medians over {len(sweeps)} sweeps" if sweeps else " (verification only, 2x rounds)")
        + "; "
        f"took {elapsed:.0f} s; load average "
        f"before/after: {load_before} / {loadavg()}",
        "CPU used by other processes while each sweep ran (cores; a sweep above "
        f"{args.max_other:g} is re-run, up to {args.attempts} times, keeping the least disturbed): "
        + ", ".join(f"{k[0]} {k[1]}: {v:.2f}".replace(" :", ":") for k, v in loads.items()),
        f"kernel MIN_WORK_PER_THREAD = {orig} (set to 1 during the sweep, restored); CHUNK = {K.CHUNK} "
        f"elements per prange chunk, so below {K.CHUNK + 1} elements the second thread has no chunk",
    ], started=started)
    if md:
        lines.append("### Threading threshold of the element-wise kernels (float32)")
        lines.append("")
        lines.extend(f"- {h}" for h in hdr)
    else:
        lines.append("Threading threshold of the element-wise kernels (float32)")
        lines.extend("  " + h for h in hdr)
    if sweeps:
        lines.extend(sweep_report(ns, hot, cold, cross, orig, args, md))
    lines.append("")
    lines.extend(evaluate_schemes(schemes, verified, md))
    lines.append("")
    lines.append("Small-call overhead, 32x64 float32, microseconds per call (median of interleaved batches):")
    if md:
        lines.append("")
        lines.append("| call | us |")
        lines.append("| --- | ---: |")
    for label, us in overhead:
        lines.append(f"| `{label}` | {us:.2f} |" if md else f"  {us:6.2f} us  {label}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
