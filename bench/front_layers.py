#!/usr/bin/env python3
"""A training step with input noise or dropout (on the input or between the layers), side by side.

    python3 bench/front_layers.py [--rounds R] [--min-time S] [--no-torch] [--json F]
    python3 bench/front_layers.py --quick      # small sizes, 1 round: a smoke run

A model whose first layers are fastnn's parameterless ones (``GaussianNoise``, ``Dropout``, an
activation) and whose rest is a Dense stack trains on the whole-step kernel: a front of one
``GaussianNoise`` or one ``Dropout`` runs inside the kernel (into a buffer of the plan's), a
longer front in Python before it (``Sequential._step``). A ``Dropout`` between two Dense layers
runs inside the kernel too. Their seeds are drawn in Python. Before 2026-12-01 any such layer
sent the whole step down the layer-by-layer path. For
each network and front (``noise``: ``GaussianNoise(0.1)``; ``dropout``: ``Dropout(0.2)``, on
the input; ``hidden``: ``Dropout(0.2)`` after each hidden layer, none on the input), interleaved
in each of R rounds (medians reported, ms per step, float32, softmax loss, plain SGD):

- ``fastnn``: ``Sequential.train_step`` of the model with the front layer (the kernel);
- ``layer path``: the same model on the layer-by-layer path (what ran before);
- ``no front``: the Dense stack alone on the kernel: what the front layer adds;
- ``numpy``: the NumPy reference step (``fastnn.bench``'s, without the first layer's input
  gradient, as the others), after the front in NumPy: ``X + std * N(0, 1)`` drawn by a
  ``Generator`` in float32, or the course's mask ``(rng.random(X.shape) < keep) / keep``
  (on the input, or on each hidden layer's output and its gradient);
- ``torch``: the same in PyTorch (``X + std * randn`` or ``nn.Dropout``), when installed.

The first step of ``fastnn`` and of ``layer path`` (two models from the same seeds) must give
the same loss, bitwise, or the script exits: the kernel trains the numbers the layer path
would. Nothing here is a pass/fail test.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import header_lines, now, optional_torch  # noqa: E402  (also puts the repo on sys.path)

import fastnn  # noqa: E402
from fastnn import bench as fb  # noqa: E402
from fastnn.reference import dense as RD  # noqa: E402
from fastnn.reference import losses as RL  # noqa: E402

F32 = np.float32
LR = 1e-3   # (fastnn.bench's steps)
STD, DROP = 0.1, 0.2
NETWORKS = [((2, 100, 3), 300), ((64, 64, 64, 10), 32), ((3072, 100, 10), 200),
            ((784, 512, 512, 10), 128)]
FRONTS = ("noise", "dropout", "hidden")


def _front_layer(front, seed):
    return fastnn.GaussianNoise(STD, seed=seed) if front == "noise" else fastnn.Dropout(DROP, seed=seed)


def _model(dims, front, start, layer_path=False):
    layers = [_front_layer(front, 7)] if front in ("noise", "dropout") else []
    L = len(dims) - 1
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layer = fastnn.Dense(a, b, activation="relu" if i < L - 1 else None, seed=i)
        layer.params["W"][...] = start[f"W{i}"]
        layer.params["b"][...] = start[f"b{i}"]
        layers.append(layer)
        if front == "hidden" and i < L - 1:
            layers.append(fastnn.Dropout(DROP, seed=8 + i))
    model = fastnn.Sequential(*layers)
    if layer_path:
        model._compilable = False   # (as for a model the kernel does not cover)
    return model


def _numpy_mask(rng):
    keep = 1.0 - DROP
    return lambda h: (rng.random(h.shape, dtype=F32) < keep) / F32(keep)


def _numpy_front(front, rng):
    keep = 1.0 - DROP
    if front == "hidden":
        return lambda X: X
    if front == "noise":
        def apply(X):
            return X + F32(STD) * rng.standard_normal(X.shape, dtype=F32)
    else:
        def apply(X):
            mask = (rng.random(X.shape, dtype=F32) < keep) / F32(keep)
            return X * mask
    return apply


def _runners(dims, n, front, torch):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((n, dims[0])).astype(F32)
    y = rng.integers(0, dims[-1], n)
    start = fb._params(dims, F32, 0)
    L = len(dims) - 1
    loss = fastnn.SoftmaxCrossEntropy()
    runners, models = {}, {}
    for name, kw in (("fastnn", dict(front=front)), ("layer path", dict(front=front, layer_path=True)),
                     ("no front", dict(front=None))):
        model = _model(dims, start=start, **kw)
        opt = fastnn.SGD(model.parameters(), lr=LR)
        models[name] = (model, opt)
        runners[name] = (lambda m=model, o=opt: m.train_step(X, y, loss, o))
    p = {k: v.copy() for k, v in start.items()}
    apply = _numpy_front(front, np.random.default_rng(7))
    hidden = _numpy_mask(np.random.default_rng(8)) if front == "hidden" else None
    runners["numpy"] = lambda: fb._course_step(RD, RL, fb._numpy_update, p, apply(X), y, L, LR,
                                               first_dx=False, hidden_mask=hidden)
    if torch is not None:
        mods = [torch.nn.Dropout(DROP)] if front == "dropout" else []
        tmodel = torch.nn.Sequential(*mods, *fb.torch_layers(
            torch, dims, start, F32, dropout=DROP if front == "hidden" else 0.0)).train()
        topt = torch.optim.SGD(tmodel.parameters(), lr=LR)
        tX, ty = torch.from_numpy(X), torch.from_numpy(y)
        lossfn = torch.nn.CrossEntropyLoss()

        def torch_step():
            topt.zero_grad()   # (PyTorch's default: fastnn.bench's torch step says why)
            inp = tX + STD * torch.randn_like(tX) if front == "noise" else tX
            out = lossfn(tmodel(inp), ty)
            out.backward()
            topt.step()
            return out.item()

        runners["torch"] = torch_step
    return runners, models, X


def run(networks, rounds, min_time, use_torch=True):
    torch = optional_torch() if use_torch else None
    rows = []
    for dims, n in networks:
        for front in FRONTS:
            runners, models, X = _runners(dims, n, front, torch)
            first = {k: runners[k]() for k in ("fastnn", "layer path")}
            if first["fastnn"] != first["layer path"]:
                sys.exit(f"{dims} ({n}), {front}: the kernel's first loss {first['fastnn']!r} is "
                         f"not the layer path's {first['layer path']!r}")
            model, opt = models["fastnn"]
            if model._compiled_step(X, fastnn.SoftmaxCrossEntropy(), opt) is None:
                sys.exit(f"{dims} ({n}), {front}: the model with the front layer took the layer path")
            times = {}
            for _ in range(rounds):
                for k, fn in runners.items():
                    time.sleep(fb.SETTLE)
                    times.setdefault(k, []).append(fb._time(fn, min_time))
            ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
            flagged, _ = fb.unsteady(times)
            rows.append(dict(network="-".join(map(str, dims)), batch=n, front=front, ms=ms,
                             ms_rounds={k: [t * 1e3 for t in v] for k, v in times.items()},
                             unsteady=flagged))
            print(f"  {rows[-1]['network']} ({n}), {front} done", file=sys.stderr, flush=True)
    return rows


def table(rows):
    names = [k for k in ("fastnn", "layer path", "no front", "numpy", "torch") if k in rows[0]["ms"]]
    vs = ["layer path", "numpy"] + (["torch"] if "torch" in names else [])
    lines = ["| network (batch) | front | " + " | ".join(names) + " | "
             + " | ".join(f"vs {k}" for k in vs) + " | front's cost |",
             "| --- | --- | " + " | ".join("---:" for _ in names + vs) + " | ---: |"]
    for r in rows:
        ms = r["ms"]
        cells = [f"{ms[k]:.3f}" + (" (unsteady)" if k in r["unsteady"] else "") for k in names]
        cells += [f"{ms[k] / ms['fastnn']:.2f}x" for k in vs]
        cells.append(f"{ms['fastnn'] / ms['no front'] - 1:+.0%}")
        lines.append(f"| {r['network']} ({r['batch']}) | {r['front']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=fb.positive_int, default=5)
    ap.add_argument("--min-time", type=fb.positive_seconds, default=0.1, help="seconds per measurement")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--json", default=None, help="also write the results (and the header) as JSON")
    ap.add_argument("--quick", action="store_true", help="a smoke run: a 20-32-5 network on 64 rows, 1 round")
    args = ap.parse_args(argv)
    out = fb.open_json(ap, args.json)
    networks = NETWORKS
    if args.quick:
        networks, args.rounds, args.min_time = [((20, 32, 5), 64)], 1, 0.005
    head = header_lines(started=now())
    print("\n".join(head))
    print(f"{args.rounds} rounds, float32, ms per step (medians)", flush=True)
    # every library on fastnn's thread count (fastnn without its governor), as fastnn.bench's
    # table: NumPy's BLAS (threadpoolctl) and PyTorch would otherwise take their own defaults
    nthreads = fastnn.get_num_threads()
    torch = optional_torch() if not args.no_torch else None
    with fb.every_library_on(nthreads, torch) as (_, blas):
        print(f"fastnn{' and PyTorch' if torch is not None else ''} on {nthreads} threads; "
              f"NumPy's BLAS on {blas if blas else 'its own count (threadpoolctl not installed)'}"
              "\n", flush=True)
        rows = run(networks, args.rounds, args.min_time, use_torch=torch is not None)
    print(table(rows))
    if out is not None:
        out.dump(dict(header=head, rounds=args.rounds, rows=rows), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
