"""``python -m fastnn demo``: the course notes' figures, made by training real networks.

1. Capacity: one hidden layer of 3, 6 and 20 ReLU units on a noisy 2-D three-arm spiral. More units
   carve more complicated decision regions; 20 units fit the training noise (over-fitting).
2. Regularization: 20 units with L2 strength 0.001, 0.01 and 0.1 (weight decay, the notes'
   "gradual forgetting"): stronger L2 gives a smoother boundary.
3. Universal approximation: one hidden layer with a linear output fitting a 1-D function.

It prints what it trained, train and held-out accuracy, where the figures are, and how long
the training took with fastnn against the same steps in the plain-NumPy reference.
"""
import argparse
import os
import sys
import time

import numpy as np

import fastnn
from fastnn import datasets
from fastnn._files import atomic_write, check_writable
from fastnn._validation import check_int
from fastnn.reference import dense as ref_dense
from fastnn.reference import losses as ref_losses


def _net(hidden, n_in, n_out, seed, activation="relu"):
    return fastnn.Sequential(
        fastnn.Dense(n_in, hidden, activation=activation, seed=seed),
        fastnn.Dense(hidden, n_out, seed=seed + 1),
    )


def _train(model, X, y, steps, lr, l2, loss):
    opt = fastnn.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=l2)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_step(X, y, loss, opt)
    return time.perf_counter() - t0


def _numpy_reference_train(model_template, X, y, steps, lr, l2):
    """The same full-batch training (softmax loss, L2, SGD with momentum 0.9) in plain NumPy."""
    W1 = model_template.layers[0].params["W"].copy()
    b1 = model_template.layers[0].params["b"].copy()
    W2 = model_template.layers[1].params["W"].copy()
    b2 = model_template.layers[1].params["b"].copy()
    params = [W1, b1, W2, b2]
    vel = [np.zeros_like(p) for p in params]
    t0 = time.perf_counter()
    for _ in range(steps):
        h, c1 = ref_dense.affine_relu_forward(X, W1, b1)
        s, c2 = ref_dense.affine_forward(h, W2, b2)
        _, ds = ref_losses.softmax_loss(s, y)
        dh, dW2, db2 = ref_dense.affine_backward(ds, c2)
        _, dW1, db1 = ref_dense.affine_relu_backward(dh, c1)
        grads = [dW1 + l2 * W1, db1, dW2 + l2 * W2, db2]
        for p, v, g in zip(params, vel, grads):
            v *= 0.9
            v -= lr * g
            p += v
    return time.perf_counter() - t0


def _grid(X, steps=250):
    lo, hi = X.min(axis=0) - 0.25, X.max(axis=0) + 0.25
    xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], steps), np.linspace(lo[1], hi[1], steps))
    return xx, yy, np.c_[xx.ravel(), yy.ravel()].astype(X.dtype)


def _save_figure(plt, fig, path):
    """fig as a PNG at path, written to a temporary file renamed over path once complete
    (savefig itself writes in place: a full disk or an interrupt left a truncated figure
    where the last run's was), then closed; an OSError names path (atomic_write)."""
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=90)
    finally:
        plt.close(fig)


def _plot_regions(plt, ax, model, X, y, title):
    xx, yy, G = _grid(X)
    regions = np.argmax(model.predict(G), axis=1).reshape(xx.shape)
    ax.contourf(xx, yy, regions, alpha=0.35, levels=[-0.5, 0.5, 1.5, 2.5], colors=["#d62728", "#1f77b4", "#2ca02c"])
    ax.scatter(X[:, 0], X[:, 1], c=np.array(["#d62728", "#1f77b4", "#2ca02c"])[y], s=12, edgecolors="k", linewidths=0.3)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


# the figures run() writes (checked before anything trains)
_FIGURES = ("capacity.png", "regularization.png", "universal_approximation.png")


def run(out_dir="fastnn_demo_output", steps=3000, seed=0, plots=True, stream=None):
    stream = sys.stdout if stream is None else stream   # (the one at call time: capsys, redirects)

    def say(*a):
        print(*a, file=stream, flush=True)

    plt = None
    if plots:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            say("matplotlib is not installed: no figures this time. Get them with\n"
                "    pip install matplotlib     (or, in fastnn's checkout: pip install \".[plot]\")\n"
                "The accuracies below are computed all the same.\n")
    seed = check_int(seed, "seed", minimum=0)
    steps = check_int(steps, "steps")
    if plots and not isinstance(out_dir, (str, bytes, os.PathLike)):
        raise TypeError(f"out_dir must be a folder path, got {type(out_dir).__name__}")
    if plt is not None:
        # the figures' folder now, not after every network has trained: made, and a file
        # made and removed in it (an existing folder may not be writable)
        try:
            os.makedirs(out_dir, exist_ok=True)
            for name in _FIGURES:   # (a file made there; an existing figure must be a writable file)
                check_writable(os.path.join(out_dir, name))
        except OSError as e:
            where = f": {e.filename}" if e.filename and e.filename != out_dir else ""
            raise ValueError(f"out_dir {out_dir!r}: cannot write figures there "
                             f"({e.strerror or e}{where})") from None
    say(f"fastnn {fastnn.__version__} demo: {fastnn.get_num_threads()} threads, seed {seed}\n")

    X, y = datasets.spiral(n_per_class=40, n_classes=3, noise=0.6, seed=seed)
    Xv, yv = datasets.spiral(n_per_class=300, n_classes=3, noise=0.6, seed=seed + 1)
    loss = fastnn.SoftmaxCrossEntropy()
    results = {}

    fast_time = ref_time = 0.0
    total_steps = 0

    def experiment(key, hidden, l2):
        nonlocal fast_time, ref_time, total_steps
        model = _net(hidden, 2, 3, seed=seed + 10)
        template = _net(hidden, 2, 3, seed=seed + 10)
        fast_time += _train(model, X, y, steps, lr=0.1, l2=l2, loss=loss)
        ref_time += _numpy_reference_train(template, X.astype(np.float32), y, steps, lr=0.1, l2=l2)
        total_steps += steps
        train_acc = model.evaluate(X, y)["accuracy"]
        val_acc = model.evaluate(Xv, yv)["accuracy"]
        results[key] = (model, train_acc, val_acc)
        return train_acc, val_acc

    say(f"1. Capacity: 2-D spiral, 3 classes, {len(X)} training points, one hidden ReLU layer,")
    say(f"   {steps} full-batch SGD steps (lr 0.1, momentum 0.9), held-out set of {len(Xv)} points")
    for hidden in (3, 6, 20):
        tr, va = experiment(("capacity", hidden), hidden, 0.0)
        say(f"   {hidden:3d} hidden units: train accuracy {tr:6.1%}   held-out {va:6.1%}")
    say("   More units carve more complex regions and fit the training points better; the gap\n"
        "   to the held-out accuracy grows as the extra capacity starts to fit the noise.\n")

    say("2. Regularization: 20 hidden units with L2 (weight decay) of strength lambda")
    for l2 in (0.001, 0.01, 0.1):
        tr, va = experiment(("l2", l2), 20, l2)
        say(f"   lambda {l2:<6g}: train accuracy {tr:6.1%}   held-out {va:6.1%}")
    say("   Stronger L2 shrinks the weights: a smoother boundary that fits the training set less\n"
        "   tightly.\n")

    Xr, yr = datasets.regression_1d(n=200, noise=0.05, seed=seed)
    reg = _net(50, 1, 1, seed=seed + 20, activation="tanh")
    opt = fastnn.Adam(reg.parameters(), lr=0.01)
    mse = fastnn.MeanSquaredError()
    before = reg.evaluate(Xr, yr, loss=mse)["loss"]
    t0 = time.perf_counter()
    for _ in range(3000):
        reg.train_step(Xr, yr, mse, opt)
    reg_time = time.perf_counter() - t0
    after = reg.evaluate(Xr, yr, loss=mse)["loss"]
    say("3. Universal approximation: one hidden layer of 50 tanh units and a linear output")
    say(f"   fitting a noisy sine: loss 0.5*MSE {before:.4f} -> {after:.4f} after 3000 Adam steps"
        f" ({reg_time:.2f} s)\n")

    say(f"Training time, {total_steps} steps of the six classifiers: fastnn {fast_time:.2f} s, "
        f"plain NumPy reference {ref_time:.2f} s ({ref_time / fast_time:.1f}x)")

    if plt is not None:
        files = []
        for name, keys, fmt in (("capacity.png", [("capacity", h) for h in (3, 6, 20)], "{} hidden units"),
                                ("regularization.png", [("l2", l) for l in (0.001, 0.01, 0.1)], "L2 lambda = {}")):
            fig, axes = plt.subplots(1, 3, figsize=(12, 4))
            for ax, key in zip(axes, keys):
                model, tr, va = results[key]
                _plot_regions(plt, ax, model, X, y, f"{fmt.format(key[1])}\ntrain {tr:.0%}, held-out {va:.0%}")
            fig.tight_layout()
            path = os.path.join(out_dir, name)
            _save_figure(plt, fig, path)
            files.append(path)
        fig, ax = plt.subplots(figsize=(6, 4))
        order = np.argsort(Xr[:, 0])
        grid = np.linspace(Xr.min(), Xr.max(), 400, dtype=Xr.dtype)[:, None]
        ax.scatter(Xr[order, 0], yr[order, 0], s=8, label="data")
        ax.plot(grid[:, 0], reg.predict(grid)[:, 0], "r-", label="network")
        ax.legend()
        ax.set_title("one hidden layer (50 tanh) + linear output")
        fig.tight_layout()
        path = os.path.join(out_dir, "universal_approximation.png")
        _save_figure(plt, fig, path)
        files.append(path)
        say("\nFigures:")
        for f in files:
            say(f"   {os.path.abspath(f)}")
    return {k: (v[1], v[2]) for k, v in results.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnn demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="fastnn_demo_output", help="folder for the PNG figures")
    parser.add_argument("--steps", type=int, default=3000, help="training steps per classifier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error("--steps must be positive")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if not args.no_plots and os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out!r} is a file, not a folder")
    try:
        run(out_dir=args.out, steps=args.steps, seed=args.seed, plots=not args.no_plots)
    except ValueError as e:
        if str(e).startswith("out_dir "):   # (checked before anything trains)
            parser.error(f"--out{str(e)[len('out_dir'):]}")
        raise
    return 0
