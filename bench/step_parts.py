#!/usr/bin/env python3
"""One training step beside its parts: where a step's time goes at each thread count.

    python3 bench/step_parts.py [--threads 1,2,16] [--batches 128,1024] [--dims 784,512,512,10]
                                [--rounds R] [--min-time S] [--no-torch] [--json F]
    python3 bench/step_parts.py --quick      # small sizes, 1-2 threads: a smoke run

Written for the many-core question in README (*Thread scaling on many cores*): on 16 threads
fastnn's compiled 784-512-512-10 step took 1.6x and 2.4x the sum of its own kernels called
one by one, while on a 2-core machine's 2 threads the ratio was 0.99-1.13. For each batch
size and thread count T this times, interleaved in each of R rounds (medians reported, ms per
call, float32):

- ``step``: the layer API's compiled step (``Sequential.train_step``, softmax loss, SGD);
- ``layer path``: the same step through the layer-by-layer path (a loss class of the user's
  own takes it), the way a model the whole-step kernel does not cover trains;
- the parts: each layer's forward (``fwd1`` ...), the loss, each layer's backward (``bwd3`` ...,
  the first layer's without its input gradient) and the SGD updates, as the private kernels
  the step is made of, on preallocated arrays, with the layer API's cut of the products (the
  same tiles as the step); ``parts`` is their sum;
- ``torch``: the same step in PyTorch (when installed) on T threads.

Then, in the same rounds, the compiled step once more with its phases timed from inside
(``StepPlan.time_phases``: a clock read at each phase's end): each phase's time per step,
grouped as the parts are (a layer's backward: its bias sums, weight-gradient product and dx
product, which also applies the activation derivative of the layer below, where the part
applies its own), beside the part's time, and ``rest``, the step's time outside those phases
(the label check, the BLAS's thread setting; a small network's chunks, which run every phase
in one parallel region, are all ``rest``). A phase slower than its part suggests work the
step does cold (its inputs just written by other threads, or out of cache) that the part,
called again and again on the same arrays, does hot.

Before timing, the parts take one step from the model's starting weights, and it is checked
against the compiled step's first one: the same loss, the same bits in every weight and bias
gradient, and the same bits in the updated parameters (the same kernels and tiles must give
them). So the parts time the step's own work, backward and update included. The layer path's
first loss is checked too. Nothing here is a pass/fail test.
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
from fastnn._kernels import activations as ka  # noqa: E402
from fastnn._kernels import dense as kd  # noqa: E402
from fastnn._kernels import losses as kl  # noqa: E402
from fastnn._kernels import optim as ko  # noqa: E402

F32 = np.float32
LR = 1e-3   # (fastnn.bench's steps)


class _LayerPathLoss(fastnn.SoftmaxCrossEntropy):
    """The softmax loss as a class of the user's own: the model steps layer by layer."""


class _Parts:
    """The step's kernels one by one on preallocated arrays, from the model's starting
    weights (copies: the timed updates move them a little, as the step's do)."""

    def __init__(self, model, X, y):
        self.X, self.y = X, np.ascontiguousarray(y, dtype=np.intp)
        dense = [layer for layer in model.layers if isinstance(layer, fastnn.Dense)]
        self.W = [layer.params["W"].copy() for layer in dense]
        self.b = [layer.params["b"].copy() for layer in dense]
        n, L = X.shape[0], len(self.W)
        self.ops = [ka.RELU] * (L - 1) + [ka.IDENTITY]   # (fastnn.bench's networks)
        self.out = [np.empty((n, w.shape[1]), F32) for w in self.W]
        self.dout = [np.empty((n, w.shape[1]), F32) for w in self.W]   # layer l's incoming gradient
        self.dz = [np.empty((n, w.shape[1]), F32) for w in self.W]
        # (NaN until a part writes them: a part left out cannot pass the check by chance)
        self.dW = [np.full_like(w, np.nan) for w in self.W]
        self.db = [np.full_like(v, np.nan) for v in self.b]
        self.flat = [(w.reshape(-1), g.reshape(-1)) for w, g in zip(self.W, self.dW)]
        self.flat += list(zip(self.b, self.db))

    def _input(self, l):
        return self.X if l == 0 else self.out[l - 1]

    def calls(self, T):
        """{name: callable} in the step's order, each on T threads."""
        L = len(self.W)
        c = {}
        for l in range(L):
            c[f"fwd{l + 1}"] = (lambda l=l: kd.dense_forward(
                self.ops[l], self._input(l), self.W[l], self.b[l], self.out[l], None, 0.0, None, T, True))
        c["loss"] = lambda: kl.class_loss(kl.SOFTMAX, self.out[-1], self.y, self.dout[-1], T)
        for l in range(L - 1, -1, -1):
            ident = self.ops[l] == ka.IDENTITY
            # (2: the layer below takes dx straight in, so its tiles are the step's: the
            # layer path's cut, dense.pyx _snapshot)
            cut = 2 if l > 0 and kd.takes_dx_direct(self.ops[l - 1]) else 1
            c[f"bwd{l + 1}"] = (lambda l=l, ident=ident, cut=cut: kd.dense_backward(
                self.ops[l], self.dout[l], self.out[l], self._input(l), self.W[l],
                self.dout[l - 1] if l > 0 else None, self.dW[l], self.db[l],
                None if ident else self.dz[l], 0.0, None, None, T, cut))
        c["update"] = lambda: [ko.update(ko.SGD, w, g, None, None, LR, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, T)
                               for w, g in self.flat]
        return c

    def step_once(self, T):
        """Every part once, in the step's order; returns the loss (before the update)."""
        value = None
        for name, fn in self.calls(T).items():
            out = fn()
            if name == "loss":
                value = out
        return float(value)


def _plan_of(model):
    """The StepPlan of the model's one compiled step (after its first step)."""
    plans = [entry[1].plan for entry in model._compiled.values() if entry[1] is not None]
    if len(plans) != 1:
        raise SystemExit(f"step_parts: expected one compiled step, found {len(plans)}")
    return plans[0]


def _grouped_phases(ph, part_names):
    """StepPlan.phase_times() (seconds over ph["steps"] steps) as ms per step, grouped by the
    parts' names, plus "timed step" (the whole step, its BLAS setting included) and "rest"."""
    per = 1e3 / ph["steps"]
    out = {}
    for name in part_names:
        if name.startswith("bwd"):
            l = name[3:]
            keys = [f"bias{l}", f"dw{l}", f"dx{l}", f"bwd{l}"]
        else:
            keys = [name]
        out[name] = sum(ph.get(k, 0.0) for k in keys) * per
    out["timed step"] = (ph["step"] + ph["blas"]) * per
    out["rest"] = out["timed step"] - sum(out[k] for k in part_names)
    return out


def _check_same_step(parts, model, first, step_first, lp_first, n):
    """Exit unless the parts' first step is the compiled step's (and the layer path's loss)."""
    dense = [layer for layer in model.layers if isinstance(layer, fastnn.Dense)]
    problems = []
    if not np.isclose(first, step_first, rtol=1e-5, atol=0.0):
        problems.append(f"loss {first!r} against the step's {step_first!r}")
    if not np.isclose(lp_first, step_first, rtol=1e-5, atol=0.0):
        problems.append(f"the layer path's loss {lp_first!r} against the step's {step_first!r}")
    for i, layer in enumerate(dense):
        pairs = (("dW", parts.dW[i], layer.grads["W"]), ("db", parts.db[i], layer.grads["b"]),
                 ("W", parts.W[i], layer.params["W"]), ("b", parts.b[i], layer.params["b"]))
        for key, mine, theirs in pairs:
            if not np.array_equal(mine, theirs):
                problems.append(f"layer {i + 1}'s {key}")
    if problems:
        raise SystemExit(f"step_parts: the parts' first step differs from the compiled step's "
                         f"(batch {n}): {'; '.join(problems)}. They do not time the same work")


def run(dims, batches, thread_counts, rounds, min_time, use_torch=True):
    torch = optional_torch() if use_torch else None
    rows = []
    with _threads._dynamic_set(False):   # every call on exactly the thread count timed
        for n in batches:
            runners, model, X, y, opt, _ = fb._make_runners(dims, n, F32, torch)
            parts = _Parts(model, X, y)
            lp_runners, lp_model, lp_X, lp_y, lp_opt, _ = fb._make_runners(dims, n, F32, None)
            lp_loss = _LayerPathLoss()
            calls = {"step": runners["fastnn"],
                     "layer path": lambda: lp_model.train_step(lp_X, lp_y, lp_loss, lp_opt)}
            with fastnn.threads(thread_counts[0]):
                first = parts.step_once(thread_counts[0])
                step_first = calls["step"]()   # (its loss is taken before its update)
                lp_first = calls["layer path"]()
            _check_same_step(parts, model, first, step_first, lp_first, n)
            plan = _plan_of(model)
            for t in thread_counts:
                part_calls = parts.calls(t)
                times, phases = {}, {}
                for _ in range(rounds):
                    with fastnn.threads(t):
                        time.sleep(fb.SETTLE)
                        for name, fn in list(calls.items()) + list(part_calls.items()):
                            times.setdefault(name, []).append(fb._time(fn, min_time))
                        plan.time_phases(True)
                        try:
                            fb._time(calls["step"], min_time)
                        finally:
                            plan.time_phases(False)
                        for k, v in _grouped_phases(plan.phase_times(), part_calls).items():
                            phases.setdefault(k, []).append(v)
                    if torch is not None:
                        before = torch.get_num_threads()
                        torch.set_num_threads(t)
                        try:
                            time.sleep(fb.SETTLE)
                            times.setdefault("torch", []).append(fb._time(runners["torch"], min_time))
                        finally:
                            torch.set_num_threads(before)
                ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
                ms["parts"] = sum(ms[k] for k in part_calls)
                rows.append(dict(batch=n, threads=t, ms=ms, parts=list(part_calls),
                                 phases={k: float(np.median(v)) for k, v in phases.items()}))
                print(f"  batch {n}, {t} thread(s) done", file=sys.stderr, flush=True)
    return rows


def table(dims, rows):
    lines = []
    for n in sorted({r["batch"] for r in rows}):
        sel = [r for r in rows if r["batch"] == n]
        parts = sel[0]["parts"]
        head = ["step", "layer path", "parts"] + (["torch"] if "torch" in sel[0]["ms"] else [])
        lines.append(f"Training step {'-'.join(map(str, dims))} ({n}), float32, ms per call")
        lines.append("")
        lines.append("| threads | " + " | ".join(head + ["step / parts"] + parts) + " |")
        lines.append("| ---: | " + " | ".join("---:" for _ in head + ["r"] + parts) + " |")
        for r in sel:
            ms = r["ms"]
            cells = [f"{ms[k]:.3f}" for k in head] + [f"{ms['step'] / ms['parts']:.2f}"]
            cells += [f"{ms[k]:.3f}" for k in parts]
            lines.append(f"| {r['threads']} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"Inside the compiled step ({n}): ms per step by phase "
                     "(StepPlan.time_phases), and over the part's time")
        lines.append("")
        lines.append("| threads | timed step | " + " | ".join(parts) + " | rest |")
        lines.append("| ---: | ---: | " + " | ".join("---:" for _ in parts) + " | ---: |")
        for r in sel:
            ph, ms = r["phases"], r["ms"]
            cells = [f"{ph['timed step']:.3f}"]
            cells += [f"{ph[k]:.3f} ({ph[k] / ms[k]:.2f})" if ms[k] > 0 else f"{ph[k]:.3f}"
                      for k in parts]
            cells.append(f"{ph['rest']:.3f}")
            lines.append(f"| {r['threads']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=fb.int_list(1, below=257), default=None,
                    help="comma-separated thread counts (default: 1, 2, 4, ... up to the cores here)")
    ap.add_argument("--batches", type=fb.int_list(1, below=2**20), default=[128, 1024])
    ap.add_argument("--dims", type=fb.int_list(1, below=2**16), default=[784, 512, 512, 10],
                    help="layer widths, input first (ReLU between layers, softmax loss)")
    ap.add_argument("--rounds", type=fb.positive_int, default=5)
    ap.add_argument("--min-time", type=fb.positive_seconds, default=0.1, help="seconds per measurement")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--json", default=None, help="also write the results (and the header) as JSON")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 1-2 threads, a 20-32-16-5 network on 64 rows, 1 round")
    args = ap.parse_args(argv)
    if len(args.dims) < 2 or args.dims[-1] < 2:
        ap.error("--dims: at least two widths, and at least 2 classes at the end")
    out = fb.open_json(ap, args.json)
    threads = args.threads or [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= cpus()]
    dims, batches = args.dims, args.batches
    if args.quick:
        if args.threads and not any(t <= 2 for t in args.threads):
            ap.error("--quick runs 1 or 2 threads: --threads names neither")
        threads = [t for t in threads if t <= 2] or [1]
        dims, batches, args.rounds, args.min_time = [20, 32, 16, 5], [64], 1, 0.005
    head = header_lines(started=now())
    print("\n".join(head))
    print(f"threads {threads}, batches {batches}, {args.rounds} rounds\n", flush=True)
    rows = run(dims, batches, threads, args.rounds, args.min_time, use_torch=not args.no_torch)
    print(table(dims, rows))
    if out is not None:
        out.dump(dict(header=head, dims=dims, rounds=args.rounds, rows=rows), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
