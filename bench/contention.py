#!/usr/bin/env python3
"""The training step on a busy machine: what the thread governors (fastnn.set_dynamic) buy,
and what they cost on a quiet one (README, "When the cores are busy").

    python3 bench/contention.py [--busy B] [--rounds R] [--min-time S] [--json F]
    python3 bench/contention.py --quick      # a smoke run: the small networks, short rounds

A parallel region ends when its last thread is done. When other processes keep the cores
busy, the scheduler pauses one of the step's threads now and then, and the others wait for it:
a small network's step on 2 threads then takes several times its time on 1. fastnn's layer
API step times itself and runs on fewer threads while fewer are faster (csrc/
fastnn_governor.pxd), and so does each kind and shape of kernel call made one by one (the
course-style step of fastnn.functional calls); the numbers are the same bits for any count.

For each network, first on the machine as it is ("quiet") and then with B CPU-bound
processes running beside it ("B busy"; default: half the CPUs, at least 1), the script times,
interleaved in each of R rounds:
- fastnn's layer API step with the governor (the default) on T threads (fastnn's count);
- the same step fixed on T threads (``fastnn.set_dynamic(False)``);
- the same step fixed on 1 thread;
- the course-style step of fastnn.functional calls, the same three ways;
- the NumPy reference step (its BLAS on the threads it has).
Each measurement is the mean step time over at least S seconds (default 1 s), so that it takes
in the governor's probes (a window on another count now and then) at their real rate; the
governor keeps what it learned from round to round, as in one long training run. Medians of
the rounds are reported, in microseconds per step, with the governor's count after the last
round.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import cpus, header_lines, now  # noqa: E402  (also puts the repo on sys.path)
import fastnn  # noqa: E402
from fastnn import bench as fb  # noqa: E402

NETWORKS = [((2, 100, 3), 300), ((64, 64, 64, 10), 32), ((3072, 100, 10), 200),
            ((784, 512, 512, 10), 128)]
VARIANTS = ("dynamic", "fixed", "one", "f_dynamic", "f_fixed", "f_one", "numpy")


def _start_busy(procs, count):
    """Start `count` CPU-bound Python processes (a bare loop each), each added to `procs` as
    it starts (so a failure leaves none running that the caller cannot stop)."""
    for _ in range(count):
        procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))


def _stop(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _plan_threads(model):
    """The thread count of the model's compiled step after its last step (None: no plan)."""
    for entry in model._compiled.values():   # (one batch size here: one plan)
        if entry[1] is not None:
            return entry[1].plan.step_threads
    return None


def _measure(dims, n, rounds, min_time, threads, settle):
    runners, model, *_ = fb._make_runners(list(dims), n, np.float32, None)
    ref = runners["numpy"]
    plans = {"dynamic": (True, threads), "fixed": (False, threads), "one": (False, 1)}
    plans.update({"f_" + k: v for k, v in plans.items()})
    fast = runners["fastnn"]
    fast()   # builds the compiled step
    times = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for v in VARIANTS:
            time.sleep(settle)   # (a library's idle worker threads spin a while: fb.SETTLE)
            if v == "numpy":
                times[v].append(fb._time(ref, min_time))
                continue
            dynamic, t = plans[v]
            fastnn.set_dynamic(dynamic)
            with fastnn.threads(t):
                times[v].append(fb._time(runners["functional" if v[:2] == "f_" else "fastnn"],
                                         min_time))
    fastnn.set_dynamic(True)
    at = None
    with fastnn.threads(threads):
        fast()
        at = _plan_threads(model)
    return {v: float(np.median(ts)) * 1e6 for v, ts in times.items()}, at


def run(networks, busy, rounds, min_time, settle=fb.SETTLE, stream=None):
    """The measurements (a list of dicts), each row printed to `stream` as it is done."""
    threads = fastnn.get_num_threads()
    previous = fastnn.get_dynamic()
    results = []
    try:
        for load in (0, busy):
            procs = []
            try:
                _start_busy(procs, load)
                time.sleep(0.2 if load else 0.0)
                for dims, n in networks:
                    med, at = _measure(dims, n, rounds, min_time, threads, settle)
                    results.append(dict(network="-".join(map(str, dims)), batch=n, busy=load,
                                        threads=threads, us=med, governor_threads=at))
                    if stream is not None:
                        print(_line(results[-1]), file=stream, flush=True)
            finally:
                _stop(procs)
    finally:
        fastnn.set_dynamic(previous)
    return results


HEAD = (f"{'':<32}{'layer API step':^41}{'functional step':^33}\n"
        f"{'network (batch)':<24}{'load':>8}{'governor':>10}{'fixed T':>10}{'1 thread':>10}"
        f"{'gov at':>8}{'governor':>11}{'fixed T':>10}{'1 thread':>10}{'numpy':>10}"
        f"{'layer: fixed T/gov':>20}{'functional: fixed T/gov':>25}\n"
        "(microseconds per step; 'gov at': the layer API step's governor's count after the last "
        "round)")


def _line(r):
    us = r["us"]
    load = "quiet" if r["busy"] == 0 else f"{r['busy']} busy"
    return (f"{r['network'] + ' (' + str(r['batch']) + ')':<24}{load:>8}"
            f"{us['dynamic']:>10.1f}{us['fixed']:>10.1f}{us['one']:>10.1f}"
            f"{r['governor_threads'] or '-':>8}"
            f"{us['f_dynamic']:>11.1f}{us['f_fixed']:>10.1f}{us['f_one']:>10.1f}"
            f"{us['numpy']:>10.1f}{us['fixed'] / us['dynamic']:>19.2f}x"
            f"{us['f_fixed'] / us['f_dynamic']:>24.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busy", type=fb.positive_int, default=max(1, cpus() // 2),
                    help="CPU-bound processes to run beside the steps (default: half the CPUs)")
    ap.add_argument("--rounds", type=fb.positive_int, default=5, help="interleaved rounds (medians)")
    ap.add_argument("--min-time", type=fb.positive_seconds, default=1.0,
                    help="seconds per measurement (long enough to take in the governor's probes)")
    ap.add_argument("--json", default=None, help="also write the results (and the header) as JSON")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: one round of 0.05 s measurements, the two small networks")
    args = ap.parse_args(argv)
    if args.busy > 4 * cpus():   # (each one spins a core until the run ends)
        ap.error(f"--busy must be at most 4x the CPUs here ({4 * cpus()}), got {args.busy}")
    out = fb.open_json(ap, args.json)
    networks = NETWORKS
    settle = fb.SETTLE
    if args.quick:
        networks, args.rounds, args.min_time, settle = NETWORKS[:2], 1, 0.05, 0.0
    started = now()
    head = header_lines(started=started)
    print("\n".join(head))
    print(f"float32; T = {fastnn.get_num_threads()} threads; {args.busy} busy process(es) in the "
          f"busy runs; {args.rounds} rounds of {args.min_time} s measurements\n", flush=True)
    print(HEAD, flush=True)
    results = run(networks, args.busy, args.rounds, args.min_time, settle, stream=sys.stdout)
    if out is not None:
        out.dump(dict(header=head, rounds=args.rounds, min_time=args.min_time, results=results),
                 indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
