"""Sequential (fastnn.model): fusion of Dense + activation layers, structure and summary,
inference, training (train_step, fit and its history, progress lines, reproducibility,
non-finite stops, thread invariance) and safe save/load.

Exactness, and why:

- A Dense followed by an activation layer runs the same fused kernel as Dense(activation=...):
  bitwise equal. Running the two layers one by one (product + bias, then the element-wise
  activation) does the same roundings in the same order (the epilogue applies the activation
  to the rounded pre-activation, and the backward GEMMs see the same dz), so it is bitwise equal
  too; PReLU's shared slope gradient is the same fixed-order sum of per-unit partials.
- predict(batch_size=k) is NOT bitwise equal to one call: GEMM blocking depends on the number of
  rows (the design allows results to depend on the problem shape, not on threads). In float64
  the difference is a few ulp: rtol 1e-12 (scaled to the largest score).
- Training runs are bitwise identical for 1, 2, 3 and 16 threads, and for equal seeds.
"""
import copy
import io
import json
import os
import re
import zipfile

import numpy as np
import pytest

import fastnn.model as fmodel
from fastnn import (SGD, Adam, BinaryCrossEntropy, BinaryHinge, Dense, Dropout, GaussianNoise,
                    LeakyReLU, Maxout, MeanSquaredError, MulticlassHinge, PReLU, ReLU, RMSProp,
                    Sequential, Sigmoid, SoftmaxCrossEntropy, Tanh, load_model)

from fastnn.losses import get_loss

from conftest import (LayerPathIdentity, MANY_THREADS, THREAD_COUNTS, assert_same_bits, assert_thread_invariant,
                      openmp_workers_started)

F32, F64 = np.float32, np.float64


# ============================================================================ data
def spiral(n_per_class=100, classes=3, seed=0):
    """The course's 2-D spiral (CS231n "Neural Networks Case Study")."""
    r = np.random.default_rng(seed)
    X = np.zeros((n_per_class * classes, 2))
    y = np.zeros(n_per_class * classes, dtype=np.int64)
    for j in range(classes):
        ix = slice(n_per_class * j, n_per_class * (j + 1))
        radius = np.linspace(0.0, 1.0, n_per_class)
        theta = np.linspace(j * 4, (j + 1) * 4, n_per_class) + r.standard_normal(n_per_class) * 0.2
        X[ix] = np.c_[radius * np.sin(theta), radius * np.cos(theta)]
        y[ix] = j
    return X, y


def blobs(n=200, seed=0):
    """Two well separated Gaussian blobs in 2-D, labels {0, 1}."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 2, n)
    X = r.standard_normal((n, 2)) * 0.5 + np.where(y[:, None] == 1, 1.5, -1.5)
    return X, y


def param_copies(model):
    return [p.data.copy() for p in model.parameters()]


def assert_params_equal(model, copies):
    params = model.parameters()
    assert len(params) == len(copies)
    for p, c in zip(params, copies):
        assert_same_bits(p.data, c, what=f"{p!r}")


# ============================================================================ fusion
ACTS = {
    "relu": (lambda m, dt: ReLU(dtype=dt), {}),
    "sigmoid": (lambda m, dt: Sigmoid(dtype=dt), {}),
    "tanh": (lambda m, dt: Tanh(dtype=dt), {}),
    "leaky_relu": (lambda m, dt: LeakyReLU(0.15, dtype=dt), {"alpha": 0.15}),
    "prelu-shared": (lambda m, dt: PReLU(1, init=0.3, dtype=dt), {"alpha": 0.3}),
    "prelu-per-unit": (lambda m, dt: PReLU(m, init=0.3, dtype=dt), {"alpha": 0.3}),
}


@pytest.mark.parametrize("shape", [(9, 7, 5), (300, 257, 130)], ids=["small", "tiled"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("act", list(ACTS))
def test_dense_plus_activation_layer_is_fused(act, dtype, shape, rng):
    n, d, m = shape
    make_act, kw = ACTS[act]
    activation = act.split("-")[0]
    X = rng.standard_normal((n, d)).astype(dtype)
    dout = rng.standard_normal((n, m)).astype(dtype)
    W = (rng.standard_normal((d, m)) / np.sqrt(d)).astype(dtype)
    b = (rng.standard_normal(m) * 0.1).astype(dtype)
    alpha = rng.uniform(-0.4, 0.6, m).astype(dtype) if act == "prelu-per-unit" else None

    def dense(activation=None, **extra):
        layer = Dense(d, m, activation=activation, dtype=dtype, seed=0, **extra)
        layer.params["W"][...] = W
        layer.params["b"][...] = b
        return layer

    # 1) the fused reference: Dense(activation=...)
    ref = dense(activation, **kw)
    if alpha is not None:
        ref.params["alpha"][...] = alpha
    out_ref = ref.forward(X)
    dx_ref = ref.backward(dout)

    # 2) Sequential(Dense, Act): must run fused (the activation layer's own forward is never called)
    lin, act_layer = dense(), make_act(m, dtype)
    if alpha is not None:
        act_layer.params["alpha"][...] = alpha

    def not_fused(*a, **k):
        raise AssertionError("Sequential ran the activation layer separately instead of fusing it")

    act_layer.forward = not_fused
    model = Sequential(lin, act_layer)
    out = model.forward(X)
    dx = model.backward(dout)
    assert_same_bits(out, out_ref, what="fused output")
    assert_same_bits(dx, dx_ref, what="fused dx")
    assert_same_bits(lin.grads["W"], ref.grads["W"], what="fused dW")
    assert_same_bits(lin.grads["b"], ref.grads["b"], what="fused db")
    assert "alpha" not in lin.grads  # a PReLU slope gradient belongs to the PReLU layer
    if act == "prelu-per-unit":
        assert_same_bits(act_layer.grads["alpha"], ref.grads["alpha"], what="fused dalpha")
    elif act == "prelu-shared":
        assert act_layer.grads["alpha"].shape == (1,)
        assert_same_bits(act_layer.grads["alpha"][0], ref.grads["alpha"].sum(dtype=dtype),
                         what="fused shared dalpha")

    # 3) unfused: each layer's own forward/backward, one after the other
    lin2, act2 = dense(), make_act(m, dtype)
    if alpha is not None:
        act2.params["alpha"][...] = alpha
    z = lin2.forward(X)
    out2 = act2.forward(z)
    dz = act2.backward(dout)
    dx2 = lin2.backward(dz)
    assert_same_bits(out2, out_ref, what="unfused output")
    assert_same_bits(dx2, dx_ref, what="unfused dx")
    assert_same_bits(lin2.grads["W"], ref.grads["W"], what="unfused dW")
    assert_same_bits(lin2.grads["b"], ref.grads["b"], what="unfused db")
    if "prelu" in act:
        assert_same_bits(act2.grads["alpha"], act_layer.grads["alpha"], what="unfused dalpha")


def test_dense_with_activation_then_activation_layer_applies_both(rng):
    """Dense(activation='tanh') followed by Sigmoid is not fused away: sigmoid(tanh(z))."""
    X = rng.standard_normal((6, 4))
    d = Dense(4, 3, activation="tanh", dtype=F64, seed=1)
    model = Sequential(d, Sigmoid(dtype=F64))
    z = X @ d.params["W"] + d.params["b"]
    np.testing.assert_allclose(model.forward(X), 1 / (1 + np.exp(-np.tanh(z))), rtol=1e-14)


def test_fused_prelu_reads_alpha_live(rng):
    """The PReLU layer's slope is read at every forward, also when fused."""
    X = rng.standard_normal((5, 3))
    p = PReLU(4, dtype=F64)
    model = Sequential(Dense(3, 4, dtype=F64, seed=0), p)
    a = model.forward(X)
    p.params["alpha"][...] = 0.9
    b = model.forward(X)
    neg = a < 0
    assert neg.any()
    np.testing.assert_allclose(b[neg], a[neg] / 0.25 * 0.9, rtol=1e-14)
    np.testing.assert_array_equal(b[~neg], a[~neg])


# ============================================================================ structure
def test_summary_3_4_2():
    model = Sequential(Dense(3, 4, activation="relu"), Dense(4, 2))
    expected = [3 * 4 + 4, 4 * 2 + 2]
    assert sum(expected) == 26
    assert [sum(p.data.size for p in layer.parameters()) for layer in model.layers] == expected
    text = model.summary()
    assert isinstance(text, str)
    _check_summary_rows(text, model, expected)
    assert re.search(r"Total params:\s*26\b", text)
    assert model.num_params == 26


def test_summary_3_4_4_1_with_activation_layers():
    model = Sequential(Dense(3, 4), ReLU(), Dense(4, 4), Tanh(), Dense(4, 1))
    expected = [3 * 4 + 4, 0, 4 * 4 + 4, 0, 4 * 1 + 1]
    assert sum(expected) == 41
    assert [sum(p.data.size for p in layer.parameters()) for layer in model.layers] == expected
    text = model.summary()
    _check_summary_rows(text, model, expected)
    assert re.search(r"Total params:\s*41\b", text)
    assert sum(p.data.size for p in model.parameters()) == 41


def test_summary_names_a_dense_layers_activation_and_groups_thousands():
    """A Dense row says its activation ("Dense, relu"); counts are written with thousands
    separators (2,020), as the total is."""
    model = Sequential(Dense(100, 20, activation="relu"), Dense(20, 2))
    text = model.summary()
    rows = [line for line in text.splitlines() if line.startswith("Dense")]
    assert len(rows) == 2
    assert rows[0].startswith("Dense, relu") and rows[0].split()[-1] == "2,020", rows[0]
    assert not rows[1].startswith("Dense,") and rows[1].split()[-1] == "42", rows[1]


def _check_summary_rows(text, model, counts):
    """One row per layer, in order, naming its type and ending with its parameter count."""
    lines = text.splitlines()
    pos = 0
    for layer, count in zip(model.layers, counts):
        name = type(layer).__name__
        while pos < len(lines) and not lines[pos].startswith(name):
            pos += 1
        assert pos < len(lines), f"no row for {name} in\n{text}"
        assert lines[pos].split()[-1] == f"{count:,}", lines[pos]
        pos += 1


def test_parameters_order_and_identity():
    d1, pr, mx, d2 = Dense(3, 5), PReLU(5), Maxout(5, 4, pieces=3), Dense(4, 2)
    model = Sequential(d1, pr, Dropout(0.1), mx, d2)
    params = model.parameters()
    owners = [(d1, "W"), (d1, "b"), (pr, "alpha"), (mx, "W"), (mx, "b"), (d2, "W"), (d2, "b")]
    assert len(params) == len(owners)
    for p, (layer, name) in zip(params, owners):
        assert p.data is layer.params[name]
        assert p.grad is layer.grads[name]
        assert p.grad.shape == p.data.shape
    assert [p.data.shape for p in params] == [(3, 5), (5,), (5,), (5, 4, 3), (4, 3), (4, 2), (2,)]
    assert model.num_params == sum(p.data.size for p in params)


def test_sequential_construction_errors():
    with pytest.raises(ValueError, match="at least one layer"):
        Sequential()
    with pytest.raises(TypeError, match="layer 1"):
        Sequential(Dense(3, 4), "relu")
    with pytest.raises(ValueError, match="4"):
        Sequential(Dense(3, 4), Dense(5, 2))


# ============================================================================ inference and modes
def _noisy_model(dtype=F32):
    return Sequential(GaussianNoise(0.3, seed=1, dtype=dtype), Dense(6, 16, activation="relu", seed=2, dtype=dtype),
                      Dropout(0.5, seed=3, dtype=dtype), Dense(16, 3, seed=4, dtype=dtype))


def test_predict_is_deterministic_and_equals_forward_eval(rng):
    model = _noisy_model()
    X = rng.standard_normal((20, 6))
    p1 = model.predict(X)
    p2 = model.predict(X)
    assert_same_bits(p1, p2)
    assert_same_bits(p1, model.forward(X, training=False))
    assert p1.dtype == np.float32 and p1.shape == (20, 3)
    # predict does not change the mode: the model is still in training mode afterwards
    assert all(layer.training for layer in model.layers)
    assert not np.array_equal(model.forward(X), p1)


def test_eval_and_train_modes(rng):
    model = _noisy_model()
    X = rng.standard_normal((20, 6))
    assert model.eval() is model
    a, b = model.forward(X), model.forward(X)
    assert_same_bits(a, b)
    assert_same_bits(a, model.predict(X))
    model.train()
    c, d = model.forward(X), model.forward(X)
    assert not np.array_equal(c, d)
    assert not np.array_equal(c, a)
    # the noise-free network with Dropout/GaussianNoise removed gives the eval output
    plain = Sequential(model.layers[1], model.layers[3])
    assert_same_bits(plain.forward(X), a)


@pytest.mark.parametrize("batch_size", [1, 7, 32, 99, 100, 1000])
def test_predict_in_batches(batch_size, rng):
    model = Sequential(Dense(5, 64, activation="tanh", dtype=F64, seed=0), Dropout(0.5, dtype=F64),
                       Dense(64, 3, dtype=F64, seed=1))
    X = rng.standard_normal((100, 5))
    full = model.predict(X)
    parts = model.predict(X, batch_size=batch_size)
    assert parts.shape == full.shape and parts.dtype == full.dtype
    np.testing.assert_allclose(parts, full, rtol=1e-12, atol=1e-12 * np.abs(full).max())


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-5, ValueError), (2.5, TypeError), ("8", TypeError)])
def test_predict_batch_size_validated(bad, exc, rng):
    model = Sequential(Dense(5, 3))
    with pytest.raises(exc, match="batch_size"):
        model.predict(rng.standard_normal((4, 5)), batch_size=bad)


def test_evaluate_matches_loss_on_predictions(rng):
    X, y = spiral(30)
    model = Sequential(Dense(2, 10, activation="relu", seed=0), Dropout(0.5, seed=1), Dense(10, 3, seed=2))
    ev = model.evaluate(X, y)
    scores = model.predict(X)
    loss, _ = SoftmaxCrossEntropy()(scores, y)
    assert ev["loss"] == loss
    assert ev["accuracy"] == np.mean(np.argmax(scores, 1) == y)


# ============================================================================ training
def test_train_step_returns_float_and_decreases_loss(rng):
    X, y = spiral(30)
    model = Sequential(Dense(2, 32, activation="relu", seed=0), Dense(32, 3, seed=1))
    opt = SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = [model.train_step(X, y, SoftmaxCrossEntropy(), opt) for _ in range(30)]
    assert all(type(v) is float for v in losses)
    assert losses[0] == pytest.approx(np.log(3), rel=0.3)
    assert losses[-1] < 0.7 * losses[0]
    # the value is the loss of the forward pass before the update
    before = model.forward(X, training=True)
    value = model.train_step(X, y, "softmax", opt)
    assert value == SoftmaxCrossEntropy()(before, y)[0]


def test_fit_spiral(capsys):
    X, y = spiral(100)
    model = Sequential(Dense(2, 100, activation="relu", seed=0), Dense(100, 3, seed=1))
    epochs = 100
    history = model.fit(X, y, loss=SoftmaxCrossEntropy(), optimizer=Adam(model.parameters(), lr=0.01),
                        epochs=epochs, batch_size=32, seed=0)
    assert set(history) == {"loss", "accuracy", "samples_per_s"}
    assert all(len(v) == epochs for v in history.values())
    assert history["loss"][-1] < 0.25 * history["loss"][0]
    assert history["accuracy"][-1] >= 0.9
    assert all(s > 0 for s in history["samples_per_s"])
    assert model.evaluate(X, y)["accuracy"] >= 0.95

    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert len(lines) == epochs
    for i, line in enumerate(lines, 1):
        assert f"epoch {i}/{epochs}" in line
        assert "samples/s" in line
        assert f"{history['loss'][i - 1]:.4f}" in line


def test_fit_validation_data(capsys):
    X, y = spiral(60, seed=1)
    Xv, yv = spiral(20, seed=2)
    model = Sequential(Dense(2, 50, activation="relu", seed=0), Dense(50, 3, seed=1))
    history = model.fit(X, y, optimizer=Adam(model.parameters(), lr=0.01), epochs=4, batch_size=30,
                        validation_data=(Xv, yv), seed=1, verbose=False)
    assert set(history) == {"loss", "accuracy", "samples_per_s", "val_loss", "val_accuracy"}
    assert all(len(v) == 4 for v in history.values())
    ev = model.evaluate(Xv, yv)
    assert history["val_loss"][-1] == ev["loss"]
    assert history["val_accuracy"][-1] == ev["accuracy"]
    assert capsys.readouterr().out == ""  # verbose=False prints nothing


def test_fit_argument_errors(rng):
    X, y = spiral(10)
    model = Sequential(Dense(2, 3))
    with pytest.raises(ValueError, match="epochs"):
        model.fit(X, y, epochs=0)
    with pytest.raises(TypeError, match="batch_size"):
        model.fit(X, y, batch_size=2.0)
    with pytest.raises(ValueError, match="y"):
        model.fit(X, y[:-1])
    with pytest.raises(ValueError, match="validation_data"):
        model.fit(X, y, validation_data=X)
    with pytest.raises(ValueError, match="loss"):
        model.fit(X, y, loss="nope")


def _reproducible_model(dropout_seed=7):
    return Sequential(Dense(2, 40, activation="relu", seed=1), Dropout(0.3, seed=dropout_seed),
                      Dense(40, 40, activation="tanh", seed=2), GaussianNoise(0.1, seed=3), Dense(40, 3, seed=4))


def test_fit_is_reproducible_with_seeds():
    X, y = spiral(50)
    runs = []
    for fit_seed in (5, 5, 6):
        model = _reproducible_model()
        hist = model.fit(X, y, optimizer=SGD(model.parameters(), lr=0.1, momentum=0.9), epochs=3,
                         batch_size=16, seed=fit_seed, verbose=False)
        runs.append((param_copies(model), hist["loss"]))
    for a, b in zip(runs[0][0], runs[1][0]):
        assert_same_bits(a, b, what="same seeds")
    assert runs[0][1] == runs[1][1]
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0][0], runs[2][0])), "fit's seed has no effect"


def test_fit_nan_input_stops_and_keeps_last_parameters(rng):
    """A NaN in X stops fit with a RuntimeWarning naming epoch and step; the parameters keep
    their last finite values (the failing batch does not update them)."""
    X, y = spiral(20)
    X = X.copy()
    X[25, 1] = np.nan  # batch 3 of 10 rows, without shuffling
    model = Sequential(Dense(2, 8, activation="relu", seed=0), Dense(8, 3, seed=1))
    twin = Sequential(Dense(2, 8, activation="relu", seed=0), Dense(8, 3, seed=1))
    with pytest.warns(RuntimeWarning, match=r"epoch 1, step 3") as record:
        history = model.fit(X, y, optimizer=SGD(model.parameters(), lr=0.1), epochs=3, batch_size=10,
                            shuffle=False, verbose=False)
    assert "stopped" in history and "epoch 1, step 3" in history["stopped"]
    assert str(record[0].message) == history["stopped"]
    assert history["loss"] == []
    # the twin runs the two good steps by hand
    opt = SGD(twin.parameters(), lr=0.1)
    for k in range(2):
        twin.train_step(X[10 * k:10 * (k + 1)], y[10 * k:10 * (k + 1)], "softmax", opt)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert np.all(np.isfinite(p.data))
        assert_same_bits(p.data, q.data)


def test_fit_absurd_learning_rate_stops(capsys):
    X, y = spiral(30)
    model = Sequential(Dense(2, 30, activation="relu", seed=0), Dense(30, 3, seed=1))
    with pytest.warns(RuntimeWarning, match=r"epoch \d+, step \d+") as record:
        history = model.fit(X, y, optimizer=SGD(model.parameters(), lr=1e30), epochs=20, batch_size=10)
    assert "stopped" in history
    m = re.search(r"epoch (\d+), step (\d+)", history["stopped"])
    assert m and str(record[0].message) == history["stopped"]
    assert len(history["loss"]) == int(m.group(1)) - 1  # the stopping epoch is not recorded
    assert history["stopped"] in capsys.readouterr().out


def test_fit_binary_cross_entropy():
    X, y = blobs()
    model = Sequential(Dense(2, 8, activation="tanh", seed=0), Dense(8, 1, seed=1))
    history = model.fit(X, y, loss=BinaryCrossEntropy(), optimizer=Adam(model.parameters(), lr=0.05),
                        epochs=15, batch_size=20, seed=0, verbose=False)
    assert history["loss"][-1] < 0.3 * history["loss"][0]
    ev = model.evaluate(X, y, loss="logistic")
    assert ev["accuracy"] >= 0.95
    pred = (model.predict(X)[:, 0] > 0).astype(int)
    assert ev["accuracy"] == np.mean(pred == y)


def test_fit_binary_hinge():
    X, y01 = blobs(seed=1)
    y = 2 * y01 - 1  # labels -1, +1
    model = Sequential(Dense(2, 1, seed=0))
    history = model.fit(X, y, loss=BinaryHinge(), optimizer=SGD(model.parameters(), lr=0.05), epochs=15,
                        batch_size=20, seed=0, verbose=False)
    assert history["loss"][-1] < 0.3 * history["loss"][0]
    assert history["accuracy"][-1] >= 0.95
    ev = model.evaluate(X, y, loss=BinaryHinge())
    assert ev["accuracy"] >= 0.95
    assert ev["accuracy"] == np.mean(np.where(model.predict(X)[:, 0] > 0, 1, -1) == y)


def test_fit_multiclass_hinge():
    X, y = spiral(50)
    model = Sequential(Dense(2, 64, activation="relu", seed=0), Dense(64, 3, seed=1))
    history = model.fit(X, y, loss=MulticlassHinge(), optimizer=Adam(model.parameters(), lr=0.01),
                        epochs=40, batch_size=25, seed=0, verbose=False)
    assert history["loss"][-1] < 0.3 * history["loss"][0]
    assert model.evaluate(X, y, loss="svm")["accuracy"] >= 0.9


def test_fit_regression_mse():
    r = np.random.default_rng(3)
    X = np.linspace(-1, 1, 200)[:, None]
    y = np.sin(3 * X) + 0.01 * r.standard_normal(X.shape)
    model = Sequential(Dense(1, 32, activation="tanh", seed=0), Dense(32, 1, seed=1))
    history = model.fit(X, y, loss=MeanSquaredError(), optimizer=Adam(model.parameters(), lr=0.02),
                        epochs=60, batch_size=20, seed=0, verbose=False)
    assert set(history) == {"loss", "samples_per_s"}
    assert history["loss"][-1] < 0.05 * history["loss"][0]
    ev = model.evaluate(X, y, loss="mse")
    assert set(ev) == {"loss"} and ev["loss"] < 0.01
    np.testing.assert_allclose(ev["loss"], 0.5 * np.mean((model.predict(X).astype(F64) - y) ** 2), rtol=1e-5)


@pytest.mark.parametrize("regularized", [False, True], ids=["dense-only", "dropout"])
def test_training_is_thread_invariant(regularized):
    r = np.random.default_rng(0)
    X = r.standard_normal((256, 256)).astype(F32)
    y = r.integers(0, 10, 256)
    # the products of this network are big enough to be split into several tiles
    from fastnn._kernels import dense as _kd
    tiles = _kd.plan(256, 512, 512)
    assert tiles[2] * tiles[3] > 1

    def run():
        extra = [Dropout(0.2, seed=2)] if regularized else []
        model = Sequential(Dense(256, 512, activation="relu", seed=1), *extra,
                           Dense(512, 512, seed=3), PReLU(512), Dense(512, 10, seed=4))
        opt = Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        losses = [model.train_step(X, y, "softmax", opt) for _ in range(20)]
        return losses, param_copies(model)

    losses, _ = assert_thread_invariant(run)
    assert losses[-1] < losses[0]


class _MySGD(SGD):
    """A user's optimizer subclass: same update rule as SGD."""


class _MyAdam(Adam):
    pass


class _MyRMSProp(RMSProp):
    pass


def _targets(kind, r, n, dtype):
    if kind == "classes":
        return r.integers(0, 10, n)
    if kind == "01":
        return r.integers(0, 2, n)
    if kind == "pm1":
        return r.choice([-1, 1], n)
    return r.standard_normal((n, 1)).astype(dtype)


@pytest.mark.parametrize("variant", ["subclassed-optimizer", "dropout-0"])
@pytest.mark.parametrize("opt", ["sgd", "nesterov", "rmsprop", "adam"])
@pytest.mark.parametrize("loss,kind", [("softmax", "classes"), ("svm", "classes"), ("logistic", "01"),
                                       ("binary_hinge", "pm1"), ("mse", "real")])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_training_equivalent_variants(dtype, loss, kind, opt, variant):
    """Training with a built-in optimizer on a plain Dense stack gives bitwise the same run as
    with an optimizer subclass, or with an identity layer inserted: equivalent models train
    identically whatever path the implementation takes (the LayerPathIdentity twin
    trains layer by layer, with the optimizer's own step: each update rule of the whole-step
    kernel is checked against it)."""
    r = np.random.default_rng(1)
    X = r.standard_normal((96, 24)).astype(dtype)
    y = _targets(kind, r, 96, dtype)
    out = 10 if kind == "classes" else 1
    runs = []
    for alternative in (False, True):
        mid = [LayerPathIdentity(dtype)] if alternative and variant == "dropout-0" else []
        model = Sequential(Dense(24, 40, activation="relu", seed=1, dtype=dtype), *mid,
                           Dense(40, 30, seed=2, dtype=dtype), PReLU(30, dtype=dtype),
                           Dense(30, out, seed=3, dtype=dtype))
        cls = {"sgd": (SGD, _MySGD), "nesterov": (SGD, _MySGD), "rmsprop": (RMSProp, _MyRMSProp),
               "adam": (Adam, _MyAdam)}[opt][int(alternative and variant != "dropout-0")]
        kw = {"sgd": dict(lr=0.05, momentum=0.9), "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
              "rmsprop": dict(lr=1e-3), "adam": dict(lr=1e-3)}[opt]
        optimizer = cls(model.parameters(), weight_decay=1e-3, **kw)
        losses = [model.train_step(X, y, loss, optimizer) for _ in range(5)]
        runs.append((losses, param_copies(model)))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        assert_same_bits(a, b)


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_a_step_set_on_the_optimizer_object_is_called_by_train_step_and_fit(cls):
    """opt.step = wrapper (one that clips or logs): the whole-step kernel updated the
    parameters itself and never called it, on train_step's and fit's steps, while the layer
    path called it. Now every step calls it, before and after a compiled step was built for
    that optimizer, and the numbers are the kernel's; without it the kernel runs again."""
    r = np.random.default_rng(4)
    X = r.standard_normal((16, 6)).astype(F32)
    y = r.integers(0, 3, 16)

    def make():
        model = Sequential(Dense(6, 8, activation="relu", seed=1), Dense(8, 3, seed=2))
        return model, cls(model.parameters(), lr=0.05)
    model, opt = make()
    twin, twin_opt = make()
    calls = []
    real = opt.step

    def wrapper():
        calls.append(1)
        real()
    losses = [model.train_step(X, y, "softmax", opt)]   # (a compiled step, built and hot)
    opt.step = wrapper
    losses += [model.train_step(X, y, "softmax", opt) for _ in range(3)]
    assert len(calls) == 3
    model.fit(X, y, loss="softmax", optimizer=opt, epochs=2, batch_size=8, seed=0, verbose=0)
    assert len(calls) == 7
    del opt.step
    losses.append(model.train_step(X, y, "softmax", opt))
    assert len(calls) == 7
    twin_losses = [twin.train_step(X, y, "softmax", twin_opt) for _ in range(4)]
    twin.fit(X, y, loss="softmax", optimizer=twin_opt, epochs=2, batch_size=8, seed=0,
             verbose=0)
    twin_losses.append(twin.train_step(X, y, "softmax", twin_opt))
    assert losses == twin_losses
    for a, b in zip(param_copies(model), param_copies(twin)):
        assert_same_bits(a, b)


def test_a_step_set_on_the_optimizer_class_is_called_by_train_step(monkeypatch):
    """The same for a step() set on the class itself (SGD.step = wrapper): the whole-step
    kernel updated without it (a reviewer's find); every step now calls it."""
    r = np.random.default_rng(5)
    X = r.standard_normal((16, 6)).astype(F32)
    y = r.integers(0, 3, 16)
    model = Sequential(Dense(6, 8, activation="relu", seed=1), Dense(8, 3, seed=2))
    opt = SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        model.train_step(X, y, "softmax", opt)   # (a compiled step, built, then hot)
    assert model._hot is not None
    calls = []
    real = SGD.step

    def wrapper(self):
        calls.append(1)
        real(self)
    monkeypatch.setattr(SGD, "step", wrapper)
    for _ in range(3):
        model.train_step(X, y, "softmax", opt)
    assert len(calls) == 3


def test_mse_float64_targets_same_run_either_way():
    """Targets are converted to the model's dtype on both paths (the whole-step kernel and the
    layer-by-layer path), so a float32 model trains the same way whatever the optimizer class."""
    r = np.random.default_rng(2)
    X = r.standard_normal((64, 8)).astype(F32)
    y = r.standard_normal((64, 1))  # float64 targets for a float32 model
    runs = []
    for cls in (SGD, _MySGD):
        model = Sequential(Dense(8, 16, activation="tanh", seed=1), Dense(16, 1, seed=2))
        optimizer = cls(model.parameters(), lr=0.05)
        runs.append([model.train_step(X, y, "mse", optimizer) for _ in range(3)] + param_copies(model))
    assert runs[0][:3] == runs[1][:3]
    for a, b in zip(runs[0][3:], runs[1][3:]):
        assert_same_bits(a, b)


# ============================================================================ save / load
def _save_model(seed=0):
    return Sequential(Dense(4, 6, activation="prelu", seed=seed), Dropout(0.25), Dense(6, 5, seed=seed + 1),
                      LeakyReLU(0.05), Maxout(5, 3, pieces=2, seed=seed + 2), Tanh(), PReLU(3),
                      Dense(3, 2, activation="sigmoid", seed=seed + 3))


def _perturb(model, seed):
    r = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] = r.standard_normal(p.shape)


def test_save_load_round_trip(tmp_path, rng):
    model = _save_model()
    _perturb(model, 1)  # PReLU slopes and biases away from their initial values
    X = rng.standard_normal((7, 4))
    path = tmp_path / "model.npz"
    model.save(path)
    assert os.listdir(tmp_path) == ["model.npz"]

    other = _save_model(seed=10)
    assert not np.array_equal(other.parameters()[0].data, model.parameters()[0].data)
    assert other.load(path) is other
    for p, q in zip(model.parameters(), other.parameters()):
        assert_same_bits(q.data, p.data)
    assert_same_bits(other.predict(X), model.predict(X))

    rebuilt = load_model(str(path))
    assert [type(l) for l in rebuilt.layers] == [type(l) for l in model.layers]
    assert [l.get_config() for l in rebuilt.layers] == [l.get_config() for l in model.layers]
    for p, q in zip(model.parameters(), rebuilt.parameters()):
        assert_same_bits(q.data, p.data)
    assert_same_bits(rebuilt.predict(X), model.predict(X))


def test_save_load_float64(tmp_path, rng):
    model = Sequential(Dense(3, 4, activation="tanh", dtype=F64, seed=0), Dense(4, 2, dtype=F64, seed=1))
    _perturb(model, 2)
    path = tmp_path / "m64.npz"
    model.save(path)
    rebuilt = load_model(path)
    assert rebuilt.dtype == F64
    for p, q in zip(model.parameters(), rebuilt.parameters()):
        assert_same_bits(q.data, p.data)


def _arrays(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _write_npz(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _expect_rejected(model, path):
    before = param_copies(model)
    with pytest.raises(ValueError):
        model.load(path)
    assert_params_equal(model, before)
    with pytest.raises(ValueError):
        load_model(path)


@pytest.fixture
def saved(tmp_path):
    """(model, path, arrays) of a saved model, and a target model with other parameters."""
    src = _save_model()
    _perturb(src, 3)
    path = tmp_path / "src.npz"
    src.save(path)
    target = _save_model(seed=20)
    return target, path, _arrays(path)


def test_load_other_architecture(tmp_path):
    small = Sequential(Dense(4, 6, activation="relu", seed=0), Dense(6, 2, seed=1))
    path = tmp_path / "small.npz"
    small.save(path)
    target = _save_model()
    before = param_copies(target)
    with pytest.raises(ValueError, match="architecture"):
        target.load(path)
    assert_params_equal(target, before)
    # the same layers with another width, and another activation
    for other in (Sequential(Dense(4, 7, activation="relu"), Dense(7, 2)),
                  Sequential(Dense(4, 6, activation="tanh"), Dense(6, 2))):
        before = param_copies(other)
        with pytest.raises(ValueError):
            other.load(path)
        assert_params_equal(other, before)


@pytest.mark.parametrize("cut", [0, 10, 0.5, -1, -22])
def test_load_truncated_file(saved, tmp_path, cut):
    target, path, _ = saved
    raw = path.read_bytes()
    n = int(len(raw) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(raw) + cut)
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(raw[:n])
    _expect_rejected(target, bad)


def test_load_corrupted_bytes(saved, tmp_path):
    target, path, _ = saved
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(raw))
    _expect_rejected(target, bad)


def test_load_garbage_and_missing(saved, tmp_path):
    target, _, _ = saved
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    _expect_rejected(target, garbage)
    text = tmp_path / "text.npz"
    text.write_text("not a model\n")
    _expect_rejected(target, text)
    npy = tmp_path / "array.npy"
    np.save(npy, np.arange(5.0))
    _expect_rejected(target, npy)
    _expect_rejected(target, tmp_path / "does-not-exist.npz")
    _expect_rejected(target, tmp_path)  # a directory


def test_load_npz_without_metadata(saved, tmp_path):
    target, _, arrays = saved
    del arrays["__fastnn__"]
    bad = tmp_path / "nometa.npz"
    _write_npz(bad, arrays)
    _expect_rejected(target, bad)


@pytest.mark.parametrize("meta", [b"{not json", json.dumps({"format": "other", "version": 1, "layers": []}).encode(),
                                  json.dumps({"format": "fastnn.Sequential", "version": 99, "layers": []}).encode(),
                                  json.dumps([1, 2]).encode()],
                         ids=["json", "format", "version", "list"])
def test_load_bad_metadata(saved, tmp_path, meta):
    target, _, arrays = saved
    arrays["__fastnn__"] = np.frombuffer(meta, dtype=np.uint8)
    bad = tmp_path / "badmeta.npz"
    _write_npz(bad, arrays)
    _expect_rejected(target, bad)


_PICKLE_RAN = []


def _pickle_payload():
    _PICKLE_RAN.append(True)
    return 0.0


class _Evil:
    def __reduce__(self):
        return (_pickle_payload, ())


def test_load_never_unpickles(saved, tmp_path):
    target, _, arrays = saved
    key = "7.W"  # the last Dense's weights: (3, 2)
    assert arrays[key].shape == (3, 2)
    arrays[key] = np.array([[_Evil(), _Evil()]] * 3, dtype=object)
    bad = tmp_path / "pickled.npz"
    _write_npz(bad, arrays)  # np.savez pickles object arrays
    _PICKLE_RAN.clear()
    _expect_rejected(target, bad)
    assert _PICKLE_RAN == [], "fastnn unpickled data from a model file"
    # the payload is live: loading with pickles allowed would have run it
    with np.load(bad, allow_pickle=True) as f:
        f[key]
    assert _PICKLE_RAN, "the crafted file does not carry a working pickle payload"
    _PICKLE_RAN.clear()


@pytest.mark.parametrize("change", ["dtype", "shape", "missing", "extra", "nan"])
def test_load_wrong_array(saved, tmp_path, change):
    target, _, arrays = saved
    key = "7.b"  # the last array: earlier ones would already be written by a non-staged load
    if change == "dtype":
        arrays[key] = arrays[key].astype(np.float64)
    elif change == "shape":
        arrays[key] = np.concatenate([arrays[key], arrays[key]])
    elif change == "missing":
        del arrays[key]
    elif change == "extra":
        arrays["8.W"] = np.zeros((2, 2), np.float32)
    elif change == "nan":
        arrays[key] = np.full_like(arrays[key], np.nan)
    bad = tmp_path / f"{change}.npz"
    _write_npz(bad, arrays)
    _expect_rejected(target, bad)


def test_load_transposed_weights(saved, tmp_path):
    target, _, arrays = saved
    arrays["2.W"] = np.ascontiguousarray(arrays["2.W"].T)  # (5, 6) instead of (6, 5)
    bad = tmp_path / "transposed.npz"
    _write_npz(bad, arrays)
    _expect_rejected(target, bad)


def _npy_bytes(a):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("raw_key", ["__fastnn__", "0.W"])
def test_load_zip_member_that_is_not_npy(saved, tmp_path, raw_key):
    """np.load returns a zip member without the .npy format as raw bytes: rejected as well."""
    target, _, arrays = saved
    bad = tmp_path / "raw.npz"
    with zipfile.ZipFile(bad, "w") as z:
        for k, v in arrays.items():
            if k == raw_key:
                z.writestr(k, v.tobytes())  # no .npy header
            else:
                z.writestr(k + ".npy", _npy_bytes(v))
    _expect_rejected(target, bad)


def test_load_array_header_claiming_huge_shape(saved, tmp_path):
    """An .npy header may claim any shape; the allocation failure is a ValueError too."""
    target, _, arrays = saved
    bad = tmp_path / "huge.npz"
    with zipfile.ZipFile(bad, "w") as z:
        for k, v in arrays.items():
            if k == "0.W":
                hdr = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    hdr, {"descr": "<f4", "fortran_order": False, "shape": (2**45,)})
                z.writestr(k + ".npy", hdr.getvalue() + bytes(64))
            else:
                z.writestr(k + ".npy", _npy_bytes(v))
    _expect_rejected(target, bad)


@pytest.mark.parametrize("edit", ["unknown-type", "bad-config", "too-big-for-numpy", "too-big-for-memory",
                                  "config-not-dict"])
def test_load_model_rejects_bad_architecture(saved, tmp_path, edit):
    _, _, arrays = saved
    meta = json.loads(arrays["__fastnn__"].tobytes().decode())
    entry = meta["layers"][0]
    if edit == "unknown-type":
        entry["type"] = "Conv2D"
    elif edit == "bad-config":
        entry["config"]["in_features"] = -4
    elif edit == "too-big-for-numpy":  # 2**62 elements: numpy refuses the shape
        entry["config"]["in_features"] = entry["config"]["out_features"] = 2**31 - 1
    elif edit == "too-big-for-memory":  # 2**48 elements: 1-2 PiB, beyond any address space
        entry["config"]["in_features"] = entry["config"]["out_features"] = 2**24
    else:
        entry["config"] = [1, 2]
    arrays["__fastnn__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    bad = tmp_path / "arch.npz"
    _write_npz(bad, arrays)
    with pytest.raises(ValueError, match="layer 0"):
        load_model(bad)


def test_save_is_atomic(tmp_path, monkeypatch):
    first = _save_model()
    _perturb(first, 4)
    path = tmp_path / "model.npz"
    first.save(path)
    original = path.read_bytes()

    def failing_write(file, arrays):
        file.write(b"PK\x03\x04 partial archive")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(fmodel, "write_npz", failing_write)
    second = _save_model(seed=30)
    with pytest.raises(OSError, match="simulated"):
        second.save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.npz"], "a temporary file was left behind"
    assert path.read_bytes() == original
    rebuilt = load_model(path)
    for p, q in zip(first.parameters(), rebuilt.parameters()):
        assert_same_bits(q.data, p.data)
    # and a failing first save leaves nothing at all
    monkeypatch.setattr(fmodel, "write_npz", failing_write)
    with pytest.raises(OSError):
        second.save(tmp_path / "new.npz")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.npz"]


def test_save_overwrites(tmp_path):
    path = tmp_path / "m.npz"
    a, b = _save_model(seed=0), _save_model(seed=50)
    a.save(path)
    b.save(path)
    rebuilt = load_model(path)
    for p, q in zip(b.parameters(), rebuilt.parameters()):
        assert_same_bits(q.data, p.data)
    assert os.listdir(tmp_path) == ["m.npz"]


# ============================================================================ the step kernel's backward
# Without a PReLU below the last layer, the whole-step kernel writes each layer's input gradient,
# tile by tile through a per-thread scratch tile, over the activation buffer of the layer below
# (which its weight gradient has already read): no N x width gradient buffer. The tiles and the
# element-wise formulas are those of the layer-by-layer path, so the numbers are too.
FUSED_HIDDEN = {
    "relu": lambda dt: [ReLU(dtype=dt)],
    "leaky_relu": lambda dt: [LeakyReLU(0.1, dtype=dt)],
    # a negative slope flips the sign of negative inputs: the derivative must come from the
    # pre-activation's sign, never from the output's
    "leaky_relu_negative": lambda dt: [LeakyReLU(-0.3, dtype=dt)],
    "sigmoid": lambda dt: [Sigmoid(dtype=dt)],
    "tanh": lambda dt: [Tanh(dtype=dt)],
    "identity": lambda dt: [],
}
# (batch, widths): one tile per product; several tiles (threads share the dx tiles, each with
# its own scratch), with products whose small inner dimension splits them by max_tile_elems;
# a small network on a batch of several row chunks (the whole step runs chunk by chunk), each
# chunk's weight-gradient products into a partial of its own; the same on two chunks of 64
# rows, where the 80-input layer's chunks take turns adding theirs into the gradient instead
# (more inputs than chunk rows: dw_in_turns), the others keep partials; four chunks (on 1, 2
# or 3 threads) that all take turns; turns on a 3-output layer (one gemv per column:
# Plan.thin, with the BLAS's beta = 1); a deep first layer whose forward runs in two parts of
# its inner dimension (forward_plan), its partial in the weight-gradient workspace, below a
# layer in row chunks; a deep output layer with 3 outputs (its parts through gemv); and a
# tiled network with a narrow hidden layer (12,480 outputs)
FUSED_SIZES = {"small": (13, (5, 7, 6, 3)), "tiled": (1200, (96, 512, 384, 10)),
               "chunked": (601, (5, 40, 30, 3)), "chunked-turns": (128, (5, 80, 30, 3)),
               "chunked-4-turns": (600, (200, 8, 3)), "chunked-thin-turns": (128, (20, 80, 3)),
               "deep": (128, (3072, 16, 10)), "deep-thin-last": (256, (20, 4096, 3)),
               "tiled-narrow": (96, (300, 130, 10))}


def _fused_model(hidden, widths, dtype, dropout0=False):
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(Dense(a, b, seed=10 + i, dtype=dtype))
        if i < len(widths) - 2:
            layers += FUSED_HIDDEN[hidden](dtype)
            if dropout0 and i == 0:
                layers.append(LayerPathIdentity(dtype))  # an identity that forces the layer path
    return Sequential(*layers)


def _train_runs(model, X, y, loss, steps=4):
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    losses = [model.train_step(X, y, loss, opt) for _ in range(steps)]
    return losses, param_copies(model), opt


def _kernel_against_layer_path(hidden, n, widths, dtype, seed):
    """Four steps of the whole-step kernel and of its twin on the layer path (an identity
    layer the kernel does not take), on one batch: the same losses and parameter bits.
    Returns the kernel's plan (a _CompiledStep)."""
    r = np.random.default_rng(seed)
    X = r.standard_normal((n, widths[0])).astype(dtype)
    y = r.integers(0, widths[-1], n)
    model = _fused_model(hidden, widths, dtype)
    losses, params, opt = _train_runs(model, X, y, "softmax")
    plan = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
    assert plan is not None
    twin = _fused_model(hidden, widths, dtype, dropout0=True)
    twin_losses, twin_params, topt = _train_runs(twin, X, y, "softmax")
    assert twin._compiled_step(X, SoftmaxCrossEntropy(), topt) is None  # the layer path
    assert losses == twin_losses
    for a, b in zip(params, twin_params):
        assert_same_bits(a, b)
    return plan


@pytest.mark.parametrize("size", list(FUSED_SIZES))
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("hidden", list(FUSED_HIDDEN))
def test_step_kernel_fused_backward_matches_the_layer_path(hidden, dtype, size):
    n, widths = FUSED_SIZES[size]
    plan = _kernel_against_layer_path(hidden, n, widths, dtype, seed=3)
    assert plan.plan.fused_backward
    assert (plan.plan.chunk_rows > 0) == size.startswith("chunked")


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("hidden", ["relu", "leaky_relu", "sigmoid", "identity"])
def test_step_kernel_chunks_with_dx_tiles_in_columns_match_the_layer_path(hidden, dtype):
    """A network run chunk by chunk whose dx tiles are cut into columns too (tile bounds set
    low; the chunked networks of FUSED_SIZES have one column tile a chunk): each chunk's
    column tiles, then its bias sums over the whole rows, give the layer path's bits for
    every kind of layer below (sign bits, the pre-activation, the scratch tile, nothing)."""
    from fastnn._kernels import dense as _kd

    n, widths = 128, (5, 200, 30, 3)
    saved = _kd.tile_params()
    _kd.set_tile_params(max_tile_elems_direct=2048, max_tile_elems=2048, min_tile_cols=16)
    try:
        assert [_kd.layer_chunk_rows(n, a, b) for a, b in zip(widths[:-1], widths[1:])] == [64] * 3
        tr, tc, nr, nc = _kd.plan(n, widths[1], widths[2], dx=True, direct=hidden != "sigmoid")
        assert tr == 64 and nc >= 3, (tr, tc, nr, nc)   # (a chunk's rows, in column tiles)
        plan = _kernel_against_layer_path(hidden, n, widths, dtype, seed=8)
        assert plan.plan.chunk_rows == 64
    finally:
        _kd.set_tile_params(**saved)


def test_step_kernel_fused_backward_shapes_are_multi_tile():
    """The "tiled" size really cuts the dx products into several tiles (so 2 and 3 threads run
    them in parallel, each with its own scratch tile), including the one whose small inner
    dimension (10 classes) is split by max_tile_elems alone."""
    from fastnn._kernels import dense as _kd

    n, widths = FUSED_SIZES["tiled"]
    params = _kd.tile_params()
    for d, m in zip(widths[1:-1], widths[2:]):
        tr, tc, nr, nc = _kd.plan(n, d, m, dx=True)   # dx of the layer d -> m: (n x d), inner m
        assert nr * nc >= 2, (d, m)
        # and worth threads: product_threads (csrc/fastnn_dense.pxd) runs tiles in parallel
        # from 2 * serial_flops
        assert 2.0 * n * d * m >= 2 * params["serial_flops"], (d, m)
    # the last layer's dx: more tiles than its flops alone would give (plan without the bound)
    d, m = widths[-2], widths[-1]
    tr, tc, nr, nc = _kd.plan(n, d, m, dx=True)
    assert n * d > params["max_tile_elems"] and tr * tc <= params["max_tile_elems"]
    assert nr * nc > np.prod(_kd.plan(n, d, m)[2:]), (nr, nc, _kd.plan(n, d, m))


def _tiled_training_is_thread_invariant(hidden, seed, steps, dtype=F32, size="tiled",
                                        threads=THREAD_COUNTS):
    """Trains the "tiled" network (or another of FUSED_SIZES, or size = (n, widths)) at 1, 2, 3
    and 16 threads (or `threads`); asserts the same bits, returns (widths, X, y, (losses, params))."""
    n, widths = FUSED_SIZES[size] if isinstance(size, str) else size
    r = np.random.default_rng(seed)
    X = r.standard_normal((n, widths[0])).astype(dtype)
    y = r.integers(0, widths[-1], n)

    def run():
        losses, params, _ = _train_runs(_fused_model(hidden, widths, dtype), X, y, "softmax", steps=steps)
        return losses, params

    return widths, X, y, assert_thread_invariant(run, threads=threads)


@pytest.mark.parametrize("hidden,dtype", [("relu", F32), ("relu", F64), ("leaky_relu", F32),
                                          ("tanh", F32), ("sigmoid", F32), ("identity", F32)])
def test_step_kernel_fused_backward_is_thread_invariant(hidden, dtype):
    """Each way a dx tile reaches the activations below (relu: straight in, its signs kept as
    bits in the thread's scratch; leaky relu and none: straight in, no scratch; tanh and
    sigmoid: through the thread's scratch tile), on tiles shared by 2 and 3 threads."""
    _tiled_training_is_thread_invariant(hidden, seed=4, steps=3, dtype=dtype)


@pytest.mark.parametrize("size,deep", [("deep", 0), ("deep-thin-last", 1)])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_step_kernel_with_a_deep_layer_is_thread_invariant(dtype, size, deep):
    """The "deep" networks: one layer's forward runs in two parts of the inner dimension
    (shared by 2 threads), summed into the output, the same for 1, 2, 3 and 16 threads; below a
    layer in row chunks, or as a 3-output layer (the gemv path in each part)."""
    from fastnn._kernels import dense as _kd

    n, widths = FUSED_SIZES[size]
    saved = _kd.tile_params()
    # (no cut of thin products for the small-matrix kernels, which would take the 3-output
    # layer's forward before its parts: test_step_kernel_with_thin_products_cut_small)
    _kd.set_tile_params(small_mnk=0)
    try:
        assert _kd.forward_plan_of(n, widths[deep + 1], widths[deep])[4] == 2
        if size == "deep":
            assert _kd.layer_chunk_rows(n, widths[1], widths[2]) > 0
        else:   # (gemv in each part, unless the BLAS has small-matrix kernels: thin = 0)
            assert widths[-1] <= _kd.tile_params()["thin"] or _kd.tile_params()["thin"] == 0
        _tiled_training_is_thread_invariant("relu", seed=6, steps=3, dtype=dtype, size=size)
    finally:
        _kd.set_tile_params(**saved)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_step_kernel_with_thin_products_cut_small(dtype):
    """With the small-matrix cut (small_mnk): "deep-thin-last"'s 3-output layer runs its
    forward in four row tiles instead of two parts of its inner dimension, and its weight
    gradient in tiles under the bar too; the whole-step kernel the same for 1, 2, 3 and 16
    threads."""
    from fastnn._kernels import dense as _kd

    n, widths = FUSED_SIZES["deep-thin-last"]
    saved = _kd.tile_params()
    _kd.set_tile_params(small_mnk=1e6)
    try:
        tr, tc, nr, nc, kb, _ = _kd.forward_plan_of(n, widths[2], widths[1])
        assert (nr * nc, kb) == (4, 1) and tr * tc * widths[1] <= 1e6
        tr, tc, nr, nc = _kd.plan(widths[1], widths[2], n)   # (the weight gradient, 4096 x 3)
        assert nr * nc > 2 and tr * tc * n <= 1e6
        _tiled_training_is_thread_invariant("relu", seed=6, steps=3, dtype=dtype,
                                            size="deep-thin-last")
    finally:
        _kd.set_tile_params(**saved)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_step_kernel_with_a_layer_in_parts_for_two_tiles(dtype, two_core_tiles):
    """On a 2-CPU plan "tiled-narrow"'s first layer (96 rows, 300 deep, 130 wide: two tiles'
    worth, below k_split's bar) runs in two parts by k_split_pair: the whole-step kernel the
    same for 1, 2, 3 and 16 threads; and with k_split_pair switched between the steps of one
    plan (the partial's workspace sized anew each step), the same bits as the layer path
    switched alike."""
    _kd = two_core_tiles
    n, widths = FUSED_SIZES["tiled-narrow"]
    p = _kd.tile_params()
    assert p["k_split_pair"] * max(n, widths[1]) <= widths[0] < p["k_split"] * max(n, widths[1])
    assert _kd.forward_plan_of(n, widths[1], widths[0])[4] == 2
    _tiled_training_is_thread_invariant("relu", seed=6, steps=3, dtype=dtype, size="tiled-narrow")
    r = np.random.default_rng(5)
    X = r.standard_normal((n, widths[0])).astype(dtype)
    y = r.integers(0, widths[-1], n)
    runs = []
    for twin in (False, True):
        model = _fused_model("relu", widths, dtype, dropout0=twin)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for pair in (p["k_split_pair"], 0.0, p["k_split_pair"], 0.0, p["k_split_pair"]):
            _kd.set_tile_params(k_split_pair=pair)
            losses.append(model.train_step(X, y, SoftmaxCrossEntropy(), opt))
        assert (model._compiled_step(X, SoftmaxCrossEntropy(), opt) is None) == twin
        runs.append((losses, param_copies(model)))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        assert_same_bits(a, b)


# On a 2-CPU plan, 601 rows: the first layer's weight gradient in halves of the batch (a layer
# without dx), or the second's (whose dx the layer path computes in the same call)
HALVES_NETS = {"first": (601, (200, 96, 10), 0), "hidden": (601, (200, 256, 96, 10), 1)}


@pytest.mark.parametrize("net", list(HALVES_NETS))
@pytest.mark.parametrize("hidden", ["relu", "tanh"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_step_kernel_with_a_weight_gradient_in_halves(dtype, hidden, net, two_core_tiles):
    """One layer of the network computes its weight gradient in halves of the batch
    (dw_in_halves; the others do not): the whole-step kernel the same for 1, 2, 3 and 16
    threads and the same bits as the layer path (where the hidden layer's call also computes
    its dx), and that layer's weights in other bits than with dw_halves_rows = 0 (its row
    tiles), for which the same holds."""
    _kd = two_core_tiles
    n, widths, at = HALVES_NETS[net]
    assert [_kd.dw_halves_of(n, a, b) for a, b in zip(widths[:-1], widths[1:])] == [
        i == at for i in range(len(widths) - 1)]
    runs = []
    for rows in (_kd.tile_params()["dw_halves_rows"], 0):
        _kd.set_tile_params(dw_halves_rows=rows)
        runs.append(_tiled_training_is_thread_invariant(hidden, seed=6, steps=3, dtype=dtype,
                                                        size=(n, widths))[3])
        _kernel_against_layer_path(hidden, n, widths, dtype, seed=3)
    (halves_losses, halves_params), (tile_losses, tile_params) = runs
    np.testing.assert_allclose(halves_losses, tile_losses, rtol=1e-4 if dtype == F32 else 1e-12)
    assert not np.array_equal(halves_params[2 * at], tile_params[2 * at])   # that layer's W


def test_dx_tiles_over_a_layer_that_takes_them_straight_in_are_bounded_higher(two_core_tiles):
    """A dx tile that the layer below takes straight in (ReLU, leaky ReLU, none: dx_direct, no
    float scratch of its size) is bounded by max_tile_elems_direct, one that passes through
    sigmoid's, tanh's or PReLU's per-thread scratch by max_tile_elems: the step kernel's
    scratch over a tanh layer is one small tile a thread, over a ReLU layer the sign bits of
    the larger tiles; fastnn.functional's dx tiles are bounded by neither; with the direct
    bound set to the other, the plans are the old ones."""
    from fastnn._kernels import activations as _ka

    _kd = two_core_tiles   # (a 2-CPU machine's tiles: more CPUs cut this dx finer than either bound)
    p = _kd.tile_params()
    small, big = p["max_tile_elems"], p["max_tile_elems_direct"]
    n, d, m = FUSED_SIZES["tiled"][0], 512, 384   # (the "tiled" network's second layer's dx)
    tr, tc, nr, nc = _kd.plan(n, d, m, dx=True)
    trd, tcd, nrd, ncd = _kd.plan(n, d, m, dx=True, direct=True)
    assert tr * tc <= small < trd * tcd <= big and 1 < nrd * ncd < nr * nc
    free = _kd.plan(n, d, m, dx=True, chunks=False)
    assert free == _kd.plan(n, d, m, dx=True, chunks=False, direct=True) and free[0] * free[1] > big
    for op in (_ka.TANH, _ka.SIGMOID, _ka.PRELU):
        assert _kd.dx_scratch_of(n, d, m, op, 4, 2) == 2 * tr * tc
    assert _kd.dx_scratch_of(n, d, m, _ka.RELU, 4, 2) == 2 * -(-trd // 32) * tcd
    assert _kd.dx_scratch_of(n, d, m, _ka.RELU, 8, 2) == 2 * -(-trd // 64) * tcd
    assert _kd.dx_scratch_of(n, d, m, _ka.LEAKY_RELU, 4, 2) == _kd.dx_scratch_of(n, d, m, _ka.IDENTITY, 4, 2) == 0
    _kd.set_tile_params(max_tile_elems_direct=small)
    assert _kd.plan(n, d, m, dx=True, direct=True) == (tr, tc, nr, nc)
    assert _kd.dx_scratch_of(n, d, m, _ka.RELU, 4, 2) == 2 * -(-tr // 32) * tc
    # (the cut a call asks for: 0, 1 or 2, nothing else)
    x, w, b = np.ones((3, 4), F32), np.ones((4, 2), F32), np.ones(2, F32)
    y = np.empty((3, 2), F32)
    for bad in (-1, 3):
        with pytest.raises(ValueError, match="chunks"):
            _kd.dense_forward(_ka.IDENTITY, x, w, b, y, None, 0.0, None, 1, bad)
        with pytest.raises(ValueError, match="chunks"):
            _kd.dense_backward(_ka.IDENTITY, y, None, x, w, None, np.empty((4, 2), F32),
                               np.empty(2, F32), None, 0.0, None, None, 1, bad)


def test_sequential_marks_the_dense_layers_whose_dx_the_layer_below_takes_straight_in():
    """The layer path cuts a Dense layer's dx tiles as the step kernel does: by the larger
    bound where the nearest Dense below, past Dropout and GaussianNoise, has a ReLU, leaky ReLU
    or no activation (its forward's cache says so to its backward), by the smaller one
    elsewhere and under the first."""
    model = Sequential(Dense(6, 8), ReLU(), Dropout(0.5), Dense(8, 7), Sigmoid(),
                       GaussianNoise(0.1), Dense(7, 5, activation="leaky_relu"),
                       Dense(5, 4, activation="tanh"), Dense(4, 3), Dense(3, 2, activation="prelu"),
                       Dense(2, 2), Dense(2, 3, activation="relu"), Dense(3, 2), PReLU(), Dense(2, 2))
    units = model._units
    assert [type(u.layer).__name__ for u in units][:4] == ["Dense", "Dropout", "Dense", "GaussianNoise"]
    assert [u.dx_direct for u in units] == [False, False, True, False, False, True, False, True,
                                            False, True, True, False]
    model.forward(np.random.default_rng(0).standard_normal((5, 6)), training=True)
    for u in units:
        if isinstance(u.layer, Dense):
            assert u.layer._cache[0].chunks == (2 if u.dx_direct else 1)


def test_dense_marks_survive_pickling_and_skip_dense_subclasses():
    """The dx_direct marks come back with a pickled model (any protocol, and a pickle made
    before units carried them), and a Dense subclass is never marked: its own forward runs
    (the kernel never takes it, so nothing needs its dx cut as the kernel's)."""
    import pickle

    calls = []

    class MyDense(Dense):
        def forward(self, x, training=None):
            calls.append(1)
            return super().forward(x, training)

    mine = Sequential(Dense(4, 5, activation="relu"), Dense(5, 3), MyDense(3, 2))
    assert [u.dx_direct for u in mine._units] == [False, True, False]
    x = np.ones((2, 4), F32)
    mine.forward(x, training=True)
    assert calls == [1]
    model = Sequential(Dense(4, 5, activation="relu"), Dense(5, 3, activation="tanh"), Dense(3, 2))
    assert [u.dx_direct for u in model._units] == [False, True, False]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(model, protocol=protocol))
        assert [u.dx_direct for u in again._units] == [False, True, False], protocol
    for u in model._units:
        del u.dx_direct   # (as a pickle from before the marks holds its units)
    again = pickle.loads(pickle.dumps(model))
    assert [u.dx_direct for u in again._units] == [False, True, False]
    assert_same_bits(again.forward(x, training=False), Sequential(*again.layers).forward(x, training=False))


def test_many_core_tiles_cut_mid_size_products_finer(many_core_tiles):
    """On a machine with more CPUs the products get more tiles, each keeping serial_flops of
    work; products below two tiles' worth keep theirs; the 2-CPU plan is the one measured."""
    _kd = many_core_tiles
    serial = _kd.tile_params()["serial_flops"]
    for r, c, k in [(128, 512, 784), (128, 512, 512), (1024, 512, 784)]:   # forward products
        tr, tc, nr, nc = _kd.plan(r, c, k, batch=True)
        assert nr * nc == 16 and 2.0 * tr * tc * k >= serial * 0.9, (r, c, k)
    assert _kd.plan(128, 10, 512, batch=True)[2:] == (2, 1)   # 1.3 MFLOP: as before
    _kd.set_tile_params(tile_cores=2)
    assert _kd.plan(128, 512, 784, batch=True)[2:] == (1, 2)
    # one tile per core below 2 * tile_cores * tile_flops (16 GFLOP here; the 4096-wide
    # network's 256-row products are 8.6 GFLOP), more from there
    assert _kd.plan(1024, 512, 784, batch=True)[2:] == (2, 1)
    assert _kd.plan(256, 4096, 4096, batch=True)[2:] == (1, 2)
    assert 2.0 * 2048 * 2048 * 1900 < 4 * _kd.tile_params()["tile_flops"] <= 2.0 * 2048**3
    assert _kd.plan(2048, 2048, 1900, batch=True)[2:] == (2, 1)
    assert _kd.plan(2048, 2048, 2048, batch=True)[2:] == (2, 2)
    assert _kd.plan(4096, 4096, 4096, batch=True)[2:] == (4, 4)


@pytest.mark.parametrize("hidden", ["relu", "leaky_relu"])
def test_step_kernel_on_many_core_tiles(hidden, many_core_tiles):
    """With tiles sized for 16 CPUs (more, smaller tiles than this machine's plan): the
    whole-step kernel still equals the layer path bitwise and is the same for 1, 2, 3 and 16
    threads, and for the 4 and 7 (16 tiles shared unevenly) such a machine also runs."""
    n, widths = FUSED_SIZES["tiled"]
    _kd = many_core_tiles
    assert _kd.plan(n, widths[1], widths[0], batch=True)[2:] == (8, 2)   # 16 tiles, not 2
    _kd.set_tile_params(tile_cores=2)
    assert _kd.plan(n, widths[1], widths[0], batch=True)[2:] == (2, 1)
    _kd.set_tile_params(tile_cores=16)
    widths, X, y, (losses, params) = _tiled_training_is_thread_invariant(
        hidden, seed=5, steps=2, threads=tuple(sorted(set(THREAD_COUNTS + MANY_THREADS))))
    twin = _fused_model(hidden, widths, F32, dropout0=True)
    twin_losses, twin_params, _ = _train_runs(twin, X, y, "softmax", steps=2)
    assert losses == twin_losses
    for a, b in zip(params, twin_params):
        assert_same_bits(a, b)


def test_step_kernel_on_16_chunks_and_many_threads(many_core_tiles):
    """The "chunked" network on a batch of 16 row chunks, at the thread counts a 16-CPU machine
    runs: 16 threads (a chunk each), 7 (chunks shared unevenly) and 4 give one thread's bits.
    (Chunk rows do not follow the CPU count; the 16-tile plan is the test above.)"""
    n, widths = 2432, FUSED_SIZES["chunked"][1]
    rows = many_core_tiles.layer_chunk_rows(n, widths[0], widths[1])
    assert rows > 0 and -(-n // rows) == 16
    _tiled_training_is_thread_invariant("relu", seed=8, steps=2, size=(n, widths), threads=MANY_THREADS)


# ============================================================================ the step kernel in row chunks
# A small network (every layer's forward product below serial_flops) on a batch of several row
# chunks runs its whole step chunk by chunk, a chunk per thread, in one parallel region:
# forward, loss and backward of each chunk's rows, then the gradients summed over the chunks
# in chunk order. The layer path cuts those layers' products, bias sums and loss blocks the
# same way, so the numbers are the same (FUSED_SIZES["chunked"] above, and below).
def test_chunked_sizes_are_what_they_claim():
    from fastnn._kernels import dense as _kd

    n, widths = FUSED_SIZES["chunked"]
    ch = _kd.layer_chunk_rows(n, widths[0], widths[1])
    assert 0 < ch and -(-n // ch) >= 3 and n % ch != 0   # 3+ chunks (sums in a given order), the last shorter
    for d, m in zip(widths[:-1], widths[1:]):
        assert _kd.layer_chunk_rows(n, d, m) == ch   # every layer: the same chunks
        assert _kd.plan(n, m, d, batch=True)[0::2] == (ch, -(-n // ch))   # forward: a row per chunk
        assert _kd.plan(n, d, m, dx=True)[0::2] == (ch, -(-n // ch))      # dx too
    n2, w2 = FUSED_SIZES["tiled"]
    assert _kd.layer_chunk_rows(n2, w2[0], w2[1]) == 0   # a big layer never runs in chunks
    assert _kd.layer_chunk_rows(13, 5, 7) == 0           # nor a batch too small to cut
    saved = _kd.tile_params()
    try:
        _kd.set_tile_params(max_chunks=1)                # the tuning hook's "at most one chunk"
        assert _kd.layer_chunk_rows(n, widths[0], widths[1]) == 0
    finally:
        _kd.set_tile_params(**saved)


def _compiled_matches_layerwise(run):
    """run() trains with the whole-step kernel and returns (losses, params, grads); run(twin=True)
    the same model with an identity Dropout (the layer path). The first is the same at 1, 2, 3
    and 16 threads, and bitwise the second's."""
    compiled = assert_thread_invariant(run)
    layerwise = run(twin=True)
    assert compiled[0] == layerwise[0]
    for a, b in zip(compiled[1] + compiled[2], layerwise[1] + layerwise[2]):
        assert_same_bits(a, b)


def _chunked_model(out, dtype, prelu_out=False):
    # prelu_out: the last layer's per-unit slopes have their own partial sums over the chunks
    return [Dense(5, 40, activation="relu", seed=1, dtype=dtype),
            Dense(40, 30, activation="tanh", seed=2, dtype=dtype),
            Dense(30, out, activation="prelu" if prelu_out else None, seed=3, dtype=dtype)]


@pytest.mark.parametrize("prelu_out", [False, True], ids=["linear", "prelu-out"])
@pytest.mark.parametrize("loss,kind", [("softmax", "classes"), ("svm", "classes"), ("logistic", "01"),
                                       ("binary_hinge", "pm1"), ("mse", "real")])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_chunked_step_matches_the_layer_path_for_every_loss(dtype, loss, kind, prelu_out):
    """The compiled step in chunks, at 1, 2, 3 and 16 threads (so its parallel region runs even on
    a one-core machine), against the layer path: bitwise, losses, parameters, gradients."""
    n = FUSED_SIZES["chunked"][0]
    r = np.random.default_rng(11)
    X = r.standard_normal((n, 5)).astype(dtype)
    y = _targets(kind, r, n, dtype)
    out = 10 if kind == "classes" else 1

    def run(twin=False):
        layers = _chunked_model(out, dtype, prelu_out)
        if twin:
            layers.insert(1, LayerPathIdentity(dtype))   # an identity that forces the layer path
        model = Sequential(*layers)
        opt = Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
        losses = [model.train_step(X, y, loss, opt) for _ in range(4)]
        step = model._compiled_step(X, get_loss(loss), opt)
        if twin:
            assert step is None
        else:
            assert step is not None and step.plan.chunk_rows > 0
        return losses, param_copies(model), [p.grad.copy() for p in model.parameters()]

    _compiled_matches_layerwise(run)


def test_chunked_sizes_take_turns_where_they_claim():
    """The "chunked-*turns" sizes really have layers with more inputs than chunk rows (whose
    chunks take turns), "chunked-4-turns" four chunks, and "chunked" none."""
    from fastnn._kernels import dense as _kd

    for size, nch in (("chunked-turns", 2), ("chunked-4-turns", 4), ("chunked-thin-turns", 2)):
        n, widths = FUSED_SIZES[size]
        chunks = {_kd.plan(n, b, a, batch=True)[0] for a, b in zip(widths[:-1], widths[1:])}
        assert len(chunks) == 1, chunks
        ch = chunks.pop()
        assert -(-n // ch) == nch and any(d > ch for d in widths[:-1]), (size, ch)
    n, widths = FUSED_SIZES["chunked"]   # partials only
    assert all(d <= _kd.plan(n, widths[1], widths[0], batch=True)[0] for d in widths[:-1])


@pytest.mark.parametrize("size", ["chunked", "chunked-turns", "chunked-4-turns", "chunked-thin-turns"])
def test_chunked_step_is_thread_invariant_and_shares_its_chunks(size):
    n, widths = FUSED_SIZES[size]
    r = np.random.default_rng(12)
    X = r.standard_normal((n, widths[0])).astype(F32)
    y = r.integers(0, widths[-1], n)

    def run():
        losses, params, _ = _train_runs(_fused_model("relu", widths, F32), X, y, "softmax", steps=3)
        return losses, params

    assert_thread_invariant(run)
    # the chunks really go to several threads (so the invariance above is not one thread's)
    setup = f"""
        from fastnn import Dense, Sequential, SGD
        r = np.random.default_rng(0)
        X = r.standard_normal(({n}, {widths[0]})).astype(np.float32)
        y = r.integers(0, {widths[-1]}, {n})
        model = Sequential(*[Dense(a, b, activation="relu", seed=1)
                             for a, b in zip({widths[:-1]}, {widths[1:]})])
        opt = SGD(model.parameters(), lr=0.01)
    """
    started = openmp_workers_started(setup, "model.train_step(X, y, 'softmax', opt)")
    assert started is None or started >= 1, started


def test_many_chunks_in_turns_on_a_few_threads():
    """Sixteen chunks whose layers all take turns, on 1, 2, 3 and 5 threads (several chunks
    per thread, more threads than this machine's cores): the same bits every time, no hang."""
    from fastnn._kernels import dense as _kd

    saved = _kd.tile_params()
    _kd.set_tile_params(chunk_rows_more=8)
    try:
        n, widths = 256, (40, 24, 3)
        assert _kd.plan(n, widths[1], widths[0], batch=True)[:3:2] == (16, 16)   # 16 x 16 rows
        r = np.random.default_rng(16)
        X = r.standard_normal((n, widths[0])).astype(F32)
        y = r.integers(0, widths[-1], n)

        def run():
            losses, params, _ = _train_runs(_fused_model("relu", widths, F32), X, y, "softmax",
                                            steps=6)
            return losses, params

        assert_thread_invariant(run, threads=(1, 2, 3, 5))
    finally:
        _kd.set_tile_params(**saved)


@pytest.mark.parametrize("size", ["chunked", "chunked-turns"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_chunked_step_with_and_without_the_guard_matches_the_layer_path(dtype, size):
    """fit's guarded steps run the chunks' backward in a second parallel region, once the loss
    is known to be finite; the unguarded ones run forward and backward in one: alternating the
    two on one plan gives the layer path's numbers, bitwise, with partials and with turns."""
    n = FUSED_SIZES[size][0]
    r = np.random.default_rng(14)
    X = r.standard_normal((n, 5)).astype(dtype)
    y = r.integers(0, 10, n)

    def run(twin=False):
        layers = _chunked_model(10, dtype)
        if twin:
            layers.insert(1, LayerPathIdentity(dtype))   # an identity that forces the layer path
        model = Sequential(*layers)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        out = []
        for guard in (False, True, True, False, True):
            value, _, stopped = model._step(X, y, SoftmaxCrossEntropy(), opt, skip_nonfinite=guard)
            assert not stopped
            out.append(value)
        step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
        assert (step is None) == twin and (twin or step.plan.chunk_rows > 0)
        return out, param_copies(model), [p.grad.copy() for p in model.parameters()]

    _compiled_matches_layerwise(run)


@pytest.mark.parametrize("size", ["chunked", "chunked-turns"])
@pytest.mark.parametrize("bad", ["nan-loss", "nan-gradient"])
def test_chunked_step_guard_stops_before_any_update(bad, size):
    """fit's guard on a chunked step: a non-finite loss leaves the parameters and the
    gradients as they were (the chunks' backward, which writes the gradients, runs only once
    the loss is known to be finite); a finite loss with non-finite gradients leaves the
    parameters. With partials and with chunks in turns."""
    n = FUSED_SIZES[size][0]
    r = np.random.default_rng(13)
    X = r.standard_normal((n, 5)).astype(F32)
    y = r.integers(0, 10, n)
    model = Sequential(*_chunked_model(10, F32))
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train_step(X, y, "softmax", opt)   # gradients and velocities of a good step
    assert model._compiled_step(X, SoftmaxCrossEntropy(), opt).plan.chunk_rows > 0
    params = param_copies(model)
    grads = [p.grad.copy() for p in model.parameters()]
    state = [a.copy() for v in opt.state.values() for a in v]
    Xbad = X.copy()
    if bad == "nan-loss":
        Xbad[n // 3 * 2, 1] = np.nan   # a row in a later chunk
    else:
        Xbad[n // 3 * 2, 1] = np.inf
        model.layers[0].params["W"][1, :] = -1.0   # relu(-inf) = 0: a finite loss, inf * 0 in x.T @ dz
        params = param_copies(model)
    value, _, stopped = model._step(Xbad, y, SoftmaxCrossEntropy(), opt, skip_nonfinite=True)
    assert stopped
    assert np.isfinite(value) == (bad == "nan-gradient")
    for a, b in zip(param_copies(model), params):
        assert_same_bits(a, b)
    for a, b in zip([a for v in opt.state.values() for a in v], state):
        assert_same_bits(a, b)
    if bad == "nan-loss":
        for p, g in zip(model.parameters(), grads):
            assert_same_bits(p.grad, g)
    else:
        assert not all(np.all(np.isfinite(p.grad)) for p in model.parameters())


def test_step_kernel_with_a_prelu_hidden_layer_keeps_the_gradient_buffers():
    """A PReLU below the last layer needs its incoming gradient for the slope gradient: that
    network's plan takes the buffered backward (tested against the layer path in
    test_training_equivalent_variants)."""
    X = np.random.default_rng(5).standard_normal((8, 4)).astype(F32)
    y = np.arange(8) % 3
    model = Sequential(Dense(4, 6, seed=1), PReLU(6), Dense(6, 3, seed=2))
    opt = SGD(model.parameters(), lr=0.1)
    model.train_step(X, y, "softmax", opt)
    assert not model._compiled_step(X, SoftmaxCrossEntropy(), opt).plan.fused_backward


def test_step_memory_is_parameters_gradients_and_activations():
    """What the layer API's step holds beyond parameters and gradients (its buffers, counted by
    tracemalloc during the first step) is within 10% of the activations backward reads, for
    a network large enough that the per-step constants do not matter. (Before the fused
    backward it held two more batch x 512 gradient buffers: 145%.)"""
    from fastnn.bench import step_memory

    import fastnn
    r = np.random.default_rng(6)
    X = r.standard_normal((1024, 784)).astype(F32)
    y = r.integers(0, 10, 1024)
    model = Sequential(Dense(784, 512, activation="relu", seed=1), Dense(512, 512, activation="relu", seed=2),
                       Dense(512, 10, seed=3))
    opt = SGD(model.parameters(), lr=1e-3)
    with fastnn.threads(2):
        held, need, per_step = step_memory(model, X, y, opt, SoftmaxCrossEntropy())
    assert held <= 1.10 * need, (held, need)
    assert per_step < 16384  # buffers are reused: only small Python objects per step


def test_fit_steps_that_count_allocate_no_more_than_steps_that_do_not():
    """fit's steps count the right predictions (count=True) into a buffer the plan makes
    once; a step that counts makes no more Python objects than one that does not. (Until the
    thirty-sixth session each such step took the buffer's address through ndarray.ctypes:
    ~0.2 KB of objects and ~1-2 us a step.)"""
    import tracemalloc

    r = np.random.default_rng(7)
    X = r.standard_normal((64, 5)).astype(F32)
    y = r.integers(0, 3, 64)
    model = Sequential(Dense(5, 16, activation="relu", seed=1), Dense(16, 3, seed=2))
    opt = SGD(model.parameters(), lr=0.01)
    loss = SoftmaxCrossEntropy()
    for _ in range(5):
        for count in (False, True):
            model._step(X, y, loss, opt, skip_nonfinite=True, count=count)
            assert (model._compiled_step(X, loss, opt).plan.correct >= 0) == count
    peaks = {False: 0, True: 0}
    tracemalloc.start()
    try:
        for _ in range(20):
            for count in (False, True):
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                model._step(X, y, loss, opt, skip_nonfinite=True, count=count)
                peaks[count] = max(peaks[count], tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    assert peaks[True] <= peaks[False] + 64, peaks


@pytest.mark.parametrize("special", ["ties", "nan"])
@pytest.mark.parametrize("last", [None, "tanh"], ids=["scores-in-place", "scores-kept"])
@pytest.mark.parametrize("n", [12, 300], ids=["whole", "chunked"])
@pytest.mark.parametrize("loss,kind", [("softmax", "classes"), ("svm", "classes"), ("logistic", "01"),
                                       ("binary_hinge", "pm1")])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_step_counts_right_predictions_as_predict_labels(dtype, loss, kind, n, last, special):
    """fit's accuracy: the whole-step kernel counts, in its loss pass, the rows whose scores
    predict their label (it may write dscores over the scores, so nothing reads them after
    the step). The count is the one of loss.predict_labels on the scores: a third of the rows
    have all scores 0 (ties: the first class; binary: 0 predicts 0 or -1), or, with "nan",
    a NaN in class 1 only (np.argmax: the first NaN; binary: NaN > 0 is False). Chunked or
    not, scores in place or kept (a tanh output), and the layer path gives the same count."""
    r = np.random.default_rng(5)
    out = 10 if kind == "classes" else 1
    X = r.standard_normal((n, 3)).astype(dtype)
    X[: n // 3] = 0          # relu(0 @ W1 + 0) = 0: every score of these rows is 0 (b2 = 0) ...
    y = _targets(kind, r, n, dtype)
    # two in three of their labels are what those scores predict, the others another label
    pred = {"classes": 0 if special == "ties" else 1, "01": 0, "pm1": -1}[kind]
    right = np.arange(n // 3) % 3 != 2
    y[: n // 3] = np.where(right, pred, {"classes": 2, "01": 1, "pm1": 1}[kind])
    lossf = get_loss(loss)

    def build(twin):
        layers = [Dense(3, 6, activation="relu", seed=1, dtype=dtype),
                  Dense(6, out, activation=last, seed=2, dtype=dtype)]
        for layer in layers:
            layer.params["b"][...] = 0
        if special == "nan":
            layers[1].params["W"][0, min(1, out - 1)] = np.inf   # ... or NaN (0 * inf) there
        if twin:
            layers.insert(1, LayerPathIdentity(dtype))   # an identity that forces the layer path
        return Sequential(*layers)

    counts = []
    for twin in (False, True):
        model = build(twin)
        opt = SGD(model.parameters(), lr=1e-3)
        expected = int(np.sum(lossf.predict_labels(model.predict(X)) == y))
        value, correct, stopped = model._step(X, y, lossf, opt, skip_nonfinite=True, count=True)
        assert correct == expected
        assert stopped == (special == "nan")
        counts.append(correct)
        step = model._compiled_step(X, lossf, opt)
        if twin:
            assert step is None
        else:
            assert step.plan.scores_in_place == (last is None)
            assert (step.plan.chunk_rows > 0) == (n == 300)
            # without count the kernel counts nothing
            assert model._step(X, y, lossf, opt, skip_nonfinite=True)[1] is None
            assert step.plan.correct == -1
    assert counts[0] == counts[1]
    # (the special rows' predictions are the ones above)
    special_rows = lossf.predict_labels(build(False).predict(X[: n // 3])) == y[: n // 3]
    assert np.array_equal(special_rows, right)


@pytest.mark.parametrize("compiled", [True, False], ids=["kernel", "layer-path"])
def test_fit_epoch_loss_weighs_each_batch_by_its_rows(compiled):
    """An epoch's loss is the mean over its rows, whatever the batches: with a learning rate of
    zero and a partial last batch (10 rows in batches of 4), it is evaluate's loss."""
    r = np.random.default_rng(12)
    X = r.standard_normal((10, 4))
    y = r.integers(0, 3, 10)
    layers = [Dense(4, 8, activation="relu", dtype=F64, seed=1), Dense(8, 3, dtype=F64, seed=2)]
    if not compiled:
        layers.insert(1, LayerPathIdentity(F64))
    model = Sequential(*layers)
    opt = SGD(model.parameters(), lr=0.0)
    history = model.fit(X, y, optimizer=opt, epochs=1, batch_size=4, shuffle=False, verbose=False)
    assert history["loss"][0] == pytest.approx(model.evaluate(X, y)["loss"], rel=1e-13)
    assert (model._compiled_step(X[:4], SoftmaxCrossEntropy(), opt) is not None) == compiled


def test_step_memory_counts_the_activations_in_bytes():
    """bench.step_memory's need: parameters and gradients plus every layer's N x outputs
    activations, in bytes of the model's dtype (float64 doubles float32's activations)."""
    from fastnn.bench import step_memory

    for dtype in (F32, F64):
        model = Sequential(Dense(5, 7, activation="relu", seed=0, dtype=dtype), Dense(7, 3, seed=1, dtype=dtype))
        X = np.random.default_rng(0).standard_normal((11, 5)).astype(dtype)
        y = np.arange(11) % 3
        _, need, _ = step_memory(model, X, y, SGD(model.parameters(), lr=0.1), SoftmaxCrossEntropy())
        params = sum(2 * p.data.nbytes for p in model.parameters())
        assert need == params + 11 * (7 + 3) * np.dtype(dtype).itemsize


def test_step_memory_rounds_report_the_median_build(monkeypatch):
    """bench.step_memory(rounds=k) builds and measures the plan k times: held is the median of
    the rounds' (each a full first step: parameters, gradients and the plan's buffers at
    least), per_step the largest; python -m fastnn bench reports every round in its JSON
    (held_bytes_rounds) and the median as the memory column. rounds must be an int >= 1."""
    from fastnn import bench

    model = Sequential(Dense(5, 7, activation="relu", seed=0), Dense(7, 3, seed=1))
    X = np.random.default_rng(0).standard_normal((11, 5)).astype(F32)
    y = np.arange(11) % 3
    opt = SGD(model.parameters(), lr=0.1)
    held, need, per_step, helds = bench.step_memory_rounds(model, X, y, opt, SoftmaxCrossEntropy(), 3)
    assert len(helds) == 3 and held == int(np.median(helds))
    assert min(helds) >= need > 0 and per_step >= 0
    # the rounds' figures, given: the median, not the first or the largest
    fake = iter([(1500, 10), (900, 10), (1200, 30)])
    real = bench.tracemalloc

    class FakeTrace:
        start = stop = reset_peak = staticmethod(lambda *a: None)
        _calls = []

        @classmethod
        def get_traced_memory(cls):
            cls._calls.append(1)
            k = len(cls._calls) % 3
            if k == 1:
                cls._round = next(fake)
                return (0, 0)                          # base
            if k == 2:
                return (0, cls._round[0])              # (current, the first step's peak)
            return (0, cls._round[1])                  # the later step's peak

    monkeypatch.setattr(bench, "tracemalloc", FakeTrace)
    params = sum(2 * p.data.nbytes for p in model.parameters())
    held, _, per_step = bench.step_memory(model, X, y, opt, SoftmaxCrossEntropy(), rounds=3)
    monkeypatch.setattr(bench, "tracemalloc", real)
    assert held == params + 1200 and per_step == 30
    for bad, exc in ((0, ValueError), (-1, ValueError), (2.0, TypeError), ("3", TypeError)):
        with pytest.raises(exc, match="rounds"):
            bench.step_memory(model, X, y, opt, SoftmaxCrossEntropy(), rounds=bad)
    rows = bench.run(networks=[((5, 7, 3), 11)], rounds=2, min_time=0.001, use_torch=False,
                     stream=io.StringIO())
    assert len(rows[0]["held_bytes_rounds"]) == 2
    assert rows[0]["held_bytes"] == int(np.median(rows[0]["held_bytes_rounds"]))


def test_fit_without_an_optimizer_trains_with_sgds_defaults():
    """fit(optimizer=None) is fit with SGD(model.parameters()): bitwise the same run."""
    X, y = spiral(20)
    runs = []
    for make in (lambda m: None, lambda m: SGD(m.parameters())):
        model = Sequential(Dense(2, 16, activation="relu", seed=0), Dense(16, 3, seed=1))
        history = model.fit(X, y, optimizer=make(model), epochs=2, batch_size=16, seed=3, verbose=False)
        runs.append((history["loss"], param_copies(model)))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        assert_same_bits(a, b)


def test_an_activation_of_another_dtype_is_not_fused_into_the_dense_before_it(rng):
    """Sequential(Dense(float32), Tanh(dtype=float64)) predicts as its layers do one by one:
    the Dense in float32, the activation in float64 (fusing them would compute tanh in
    float32)."""
    X = rng.standard_normal((7, 5)).astype(F32)
    model = Sequential(Dense(5, 4, seed=0), Tanh(dtype=F64))
    expected = X
    for layer in model.layers:
        expected = layer.forward(expected)
    out = model.predict(X)
    assert out.dtype == expected.dtype == F64
    assert_same_bits(out, expected)


@pytest.mark.parametrize("compiled", [True, False], ids=["kernel", "layer-path"])
def test_fit_accuracy_is_the_share_of_right_predictions(compiled):
    """With a learning rate too small to move the scores, an epoch's accuracy is the share of
    rows whose scores predict their label (the compiled step counts them in its loss pass)."""
    r = np.random.default_rng(9)
    X = r.standard_normal((100, 4)).astype(F32)
    y = r.integers(0, 5, 100)
    layers = [Dense(4, 16, activation="relu", seed=3), Dense(16, 5, seed=4)]
    if not compiled:
        layers.insert(1, LayerPathIdentity())
    model = Sequential(*layers)
    before = float(np.mean(np.argmax(model.predict(X), 1) == y))
    opt = SGD(model.parameters(), lr=1e-30)
    history = model.fit(X, y, optimizer=opt, epochs=1, batch_size=32, shuffle=False,
                        verbose=False)
    assert history["accuracy"][0] == before
    assert (model._compiled_step(X[:32], SoftmaxCrossEntropy(), opt) is not None) == compiled


SMALL_STEPS = {"2-100-3 (300)": ((2, 100, 3), 300), "64-64-64-10 (32)": ((64, 64, 64, 10), 32)}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("hidden", ["relu", None])
@pytest.mark.parametrize("net", list(SMALL_STEPS))
def test_small_step_memory_is_within_what_the_step_must_hold(net, hidden, threads):
    """A small network's step holds at most 10% more than what the step must hold (issue 5's
    target), in row chunks (2-100-3 (300)) or on a batch too small to cut (64-64-64-10 (32):
    chunks keep at least chunk_min_rows rows): no float dx scratch tile per thread (below a
    relu or no activation the backward pass writes each dx tile straight over the
    activations, relu's derivative kept as bits first); for layers with more inputs than
    chunk rows, no weight-gradient partial per chunk (those chunks add their products into
    the gradients in turns, in chunk order); no dscores buffer (the loss writes them over
    the scores) and no per-row losses (sums of groups of 8 rows). 2-100-3 (300) held 205%
    with the scratch tile, as large there as its hidden activation, and 113-114% with the
    dscores and the rows' losses; 64-64-64-10 (32), in two chunks then, 148% with its second
    chunk's 36 KB partial. Now 108-110% and 108% (float32): the rest is the relu bits,
    (2-100-3, whose layers have fewer inputs than chunk rows) the second chunk's small
    partials, and Python objects."""
    from fastnn.bench import step_memory

    import fastnn
    from fastnn._kernels import dense as _kd
    widths, n = SMALL_STEPS[net]
    r = np.random.default_rng(7)
    X = r.standard_normal((n, widths[0])).astype(F32)
    y = r.integers(0, widths[-1], n)
    layers = [Dense(a, b, activation=hidden if i < len(widths) - 2 else None, seed=i)
              for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
    model = Sequential(*layers)
    opt = SGD(model.parameters(), lr=1e-3)
    with fastnn.threads(threads):
        held, need, _ = step_memory(model, X, y, opt, SoftmaxCrossEntropy())
        chunked = model._compiled_step(X, SoftmaxCrossEntropy(), opt).plan.chunk_rows > 0
    assert chunked == (n >= 2 * _kd.tile_params()["chunk_min_rows"])
    assert held <= 1.10 * need, (held, need)


@pytest.mark.parametrize("widths", [(80, 80, 80, 10), (16, 80, 80, 10)],
                         ids=["in-chunks-region", "second-region"])
@pytest.mark.parametrize("optimizer", ["sgd-momentum", "adam"])
def test_chunked_step_shares_its_updates_with_the_same_numbers(optimizer, widths):
    """A chunked step of a network with chunk_update_min_elems parameter elements or more
    shares its updates among the chunks' threads on 2 threads (network.pyx): in the chunks'
    own parallel region when every layer's chunks take turns (80-80-80-10: more inputs than
    chunk rows; `updates_in_chunks`), else a parameter per task in one more parallel region
    per step (16-80-80-10, whose first layer keeps partials). The losses and parameters are
    bitwise those of the serial updates, of the layer path, and of 1 and 3 threads; below the
    bound (2-100-3's 603 elements) the updates stay serial."""
    import fastnn
    from fastnn import _threads
    from fastnn._kernels import _config as _kconfig
    from fastnn._kernels import network as kn

    n, steps = 128, 3
    in_region = widths[0] > 64   # (64-row chunks: a layer takes turns when it has more inputs)
    elems = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    assert elems >= kn.chunk_update_min_elems() > 2 * 100 + 100 + 100 * 3 + 3
    r = np.random.default_rng(11)
    X = r.standard_normal((n, widths[0])).astype(F32)
    y = r.integers(0, widths[-1], n)

    def run(min_elems, threads, dropout0=False):
        model = _fused_model("relu", widths, F32, dropout0=dropout0)
        opt = (SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
               if optimizer == "sgd-momentum" else Adam(model.parameters(), lr=1e-3))
        old = kn.chunk_update_min_elems(min_elems)
        try:
            with _threads._dynamic_set(False), fastnn.threads(threads):
                model.train_step(X, y, "softmax", opt)   # builds the step
                before = kn.parallel_regions()
                losses = [model.train_step(X, y, "softmax", opt) for _ in range(steps)]
                regions = kn.parallel_regions() - before
        finally:
            kn.chunk_update_min_elems(old)
        plan = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
        return losses, param_copies(model), regions, plan

    default = kn.chunk_update_min_elems()
    shared = run(default, 2)
    assert shared[3] is not None and shared[3].plan.chunk_rows == 64
    serial = run(2**40, 2)
    # (without OpenMP every count is 1 thread: no step shares anything)
    openmp = _kconfig.openmp_enabled()
    extra = steps if openmp and not in_region else 0
    assert shared[2] - serial[2] == extra, (shared[2], serial[2])
    assert shared[3].plan.updates_in_chunks == (openmp and in_region)
    assert not serial[3].plan.updates_in_chunks
    one = run(default, 1)
    assert one[2] == 0 and not one[3].plan.updates_in_chunks
    layer_path = run(default, 2, dropout0=True)
    assert layer_path[3] is None
    # the last chunk held back until another thread has taken a parameter to update: the
    # updates must wait until every chunk is done with their layer
    old = kn.hold_last_chunk(True)
    try:
        held = run(default, 2)
    finally:
        kn.hold_last_chunk(old)
    for other in (serial, layer_path, one, run(default, 3), held):
        assert other[0] == shared[0]
        for a, b in zip(other[1], shared[1]):
            assert_same_bits(a, b)


@pytest.mark.parametrize("widths,tie", [((80, 80, 80, 10), "W"), ((16, 80, 80, 10), "b")],
                         ids=["in-chunks-region", "second-region"])
def test_tied_parameters_are_updated_one_after_the_other(widths, tie):
    """Two layers reading one array (Parameters may share memory) have it updated by one
    parameter after the other. Shared among threads (a parameter per task, or in the chunks'
    parallel region), two threads could take both at once, or update one while another layer
    still reads it: a chunked step of such a model updates serially (no region for the
    updates), with the numbers of 1 thread and of the layer path. (Before the seventeenth
    session two threads could update 16-64-64-10's tied biases at once; the networks are wider
    now, so that every layer of the first has more inputs than its chunks' 64 rows.)"""
    import fastnn
    from fastnn import _threads
    from fastnn._kernels import _config as _kconfig
    from fastnn._kernels import network as kn

    n, steps = 128, 4
    openmp = _kconfig.openmp_enabled()
    r = np.random.default_rng(12)
    X = r.standard_normal((n, widths[0])).astype(F32)
    y = r.integers(0, widths[-1], n)

    def run(threads, tied=True, compilable=True):
        model = _fused_model("relu", widths, F32)
        if tied:   # (layers 0 and 2: the Dense layers 80 -> 80 / the two 80-unit biases)
            model.layers[2].params[tie] = model.layers[0].params[tie]
        model._compilable = compilable
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        with _threads._dynamic_set(False), fastnn.threads(threads):
            model.train_step(X, y, "softmax", opt)
            before = kn.parallel_regions()
            losses = [model.train_step(X, y, "softmax", opt) for _ in range(steps)]
            regions = kn.parallel_regions() - before
        return losses, param_copies(model), regions, model._compiled_step(X, SoftmaxCrossEntropy(), opt)

    untied = run(2, tied=False)   # (the control: these updates are shared)
    assert untied[3].plan.updates_in_chunks == (openmp and tie == "W")
    assert untied[2] == (steps * (1 if tie == "W" else 2) if openmp else 0)
    two = run(2)
    assert two[3] is not None and two[3].plan.chunk_rows == 64
    assert not two[3].plan.updates_in_chunks
    assert two[2] == (steps if openmp else 0)   # the chunks' region only
    for other in (run(1), run(2, compilable=False)):
        assert other[0] == two[0]
        for a, b in zip(other[1], two[1]):
            assert_same_bits(a, b)


_EARLY_RULES = {"sgd": lambda ps: SGD(ps, lr=0.05),
                "momentum-decay": lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
                "rmsprop": lambda ps: RMSProp(ps, lr=0.01),
                "adam-decay": lambda ps: Adam(ps, lr=0.01, weight_decay=0.01)}


@pytest.mark.parametrize("rule", list(_EARLY_RULES))
def test_tiled_step_updates_each_layer_once_its_backward_is_done(rule):
    """A step on the tiled path (not in chunks) updates each layer's W and b in the fused
    backward pass, right after its dx product (the last to read W): updates_in_backward.
    fit's guarded step, which must see every gradient first, updates them all at the end.
    Alternating the two on one plan gives the layer path's numbers, bitwise, on 1, 2, 3 and
    16 threads, with each rule's state and weight decay."""
    n, widths = FUSED_SIZES["tiled"]
    r = np.random.default_rng(21)
    X = r.standard_normal((n, widths[0])).astype(F32)
    y = r.integers(0, widths[-1], n)

    def run(twin=False):
        model = _fused_model("relu", widths, F32)
        if twin:
            model = Sequential(*model.layers[:1], LayerPathIdentity(F32), *model.layers[1:])
        opt = _EARLY_RULES[rule](model.parameters())
        out, early = [], []
        for guard in (False, True, False, False, True):
            value, _, stopped = model._step(X, y, SoftmaxCrossEntropy(), opt, skip_nonfinite=guard)
            assert not stopped
            out.append(value)
            step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
            assert (step is None) == twin
            if not twin:
                assert step.plan.chunk_rows == 0 and step.plan.fused_backward
                early.append(step.plan.updates_in_backward)
        assert early == ([] if twin else [True, False, True, True, False])
        return out, param_copies(model), [p.grad.copy() for p in model.parameters()]

    _compiled_matches_layerwise(run)


def test_tied_parameters_are_updated_after_the_backward():
    """Two Dense layers reading one W (Parameters may share memory): the first update of it
    in the backward pass would change the W the layer below still reads for its dx. Such a
    plan updates at the end of the step, with the layer path's numbers; the control, untied,
    updates in the backward pass."""
    import fastnn

    n, widths = 600, (40, 64, 64, 64, 10)
    r = np.random.default_rng(22)
    X = r.standard_normal((n, widths[0])).astype(F32)
    y = r.integers(0, widths[-1], n)

    def run(tied=True, compilable=True):
        model = _fused_model("relu", widths, F32)
        dense = [layer for layer in model.layers if isinstance(layer, Dense)]
        if tied:   # (the two 64 -> 64 layers: the upper one's dx reads what both update)
            dense[2].params["W"] = dense[1].params["W"]
        model._compilable = compilable
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        with fastnn.threads(2):
            losses = [model.train_step(X, y, "softmax", opt) for _ in range(3)]
        step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
        return losses, param_copies(model), step

    untied = run(tied=False)
    assert untied[2].plan.chunk_rows == 0 and untied[2].plan.updates_in_backward
    tied = run()
    assert tied[2] is not None and tied[2].plan.chunk_rows == 0
    assert not tied[2].plan.updates_in_backward
    layer_path = run(compilable=False)
    assert layer_path[2] is None
    assert tied[0] == layer_path[0]
    for a, b in zip(tied[1], layer_path[1]):
        assert_same_bits(a, b)


def test_chunk_update_min_elems_checks_its_value():
    from fastnn._kernels import network as kn

    old = kn.chunk_update_min_elems()
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(ValueError, match="chunk_update_min_elems"):
            kn.chunk_update_min_elems(bad)
    assert kn.chunk_update_min_elems() == old
    old = kn.hold_last_chunk()
    for bad in (1, "yes", None.__class__):
        with pytest.raises(ValueError, match="hold_last_chunk"):
            kn.hold_last_chunk(bad)
    assert kn.hold_last_chunk() == old is False


def test_dx_tile_bound_leaves_other_products_alone():
    """max_tile_elems bounds the tiles of input-gradient products only: forward and weight
    gradient products keep the flop-based tiling."""
    from fastnn._kernels import dense as _kd

    bound = _kd.tile_params()["max_tile_elems"]
    assert _kd.plan(4096, 4096, 4096) == _kd.plan(4096, 4096, 4096, dx=False)
    tr, tc, nr, nc = _kd.plan(4096, 4096, 4096)
    assert nr * nc == _kd.tile_params()["max_tiles"] and tr * tc > bound
    tr, tc, nr, nc = _kd.plan(1024, 512, 10, dx=True)
    assert tr * tc <= bound and nr * nc >= 1024 * 512 // bound


def test_functional_dx_tiles_are_not_bounded():
    """The bound is for the step kernel's per-thread dx scratch tile: the layer API (which must
    give the step kernel's numbers) keeps it, fastnn.functional (which writes dx straight
    into its result) cuts dx products by their flops alone. 3072-100-10's first layer: 16
    tiles against 2."""
    from fastnn._kernels import dense as _kd

    saved = _kd.tile_params()
    _kd.set_tile_params(tile_cores=2)   # (the plan measured; 16-CPU tiles are smaller anyway)
    try:
        bound = _kd.tile_params()["max_tile_elems"]
        tr, tc, nr, nc = _kd.plan(200, 3072, 100, dx=True)
        assert tr * tc <= bound and nr * nc >= 200 * 3072 // bound
        assert _kd.plan(200, 3072, 100, dx=True, chunks=False) == _kd.plan(200, 3072, 100)
        tr, tc, nr, nc = _kd.plan(200, 3072, 100, dx=True, chunks=False)
        assert tr * tc > bound and nr * nc == 2
    finally:
        _kd.set_tile_params(**saved)


def test_train_step_fast_paths_keep_every_check():
    """train_step's fast paths (an X or y already as the kernel takes it, a step already built
    for this batch size) skip only work whose outcome is known: a wrong width still gets the
    layer path's error, and a 3-D X, a strided X, int32, strided or list labels and a Loss
    object give the numbers of the plain case, bit for bit."""
    from fastnn._validation import int_labels

    r = np.random.default_rng(3)
    X = r.standard_normal((40, 2)).astype(F32)
    y = r.integers(0, 3, 40)

    def model():
        m = Sequential(Dense(2, 5, activation="relu", seed=0), Dense(5, 3, seed=1))
        return m, SGD(m.parameters(), lr=0.1)

    m0, o0 = model()
    want = [m0.train_step(X, y, "softmax", o0) for _ in range(3)]
    wide = np.zeros((40, 4), F32)
    wide[:, ::2] = X
    ylong = np.zeros(80, np.intp)
    ylong[::2] = y
    variants = {"3-D X": (X.reshape(40, 2, 1), y, "softmax"), "strided X": (wide[:, ::2], y, "softmax"),
                "int32 y": (X, y.astype(np.int32), "softmax"), "strided y": (X, ylong[::2], "softmax"),
                "list y": (X, y.tolist(), "softmax"), "Loss object": (X, y, SoftmaxCrossEntropy())}
    for what, (Xv, yv, loss) in variants.items():
        m, o = model()
        got = [m.train_step(Xv, yv, loss, o) for _ in range(3)]
        assert got == want, what
        for a, b in zip(param_copies(m), param_copies(m0)):
            assert_same_bits(a, b, what)
        with pytest.raises(ValueError, match=r"must have shape \(N, 2\), got \(40, 3\)"):
            m.train_step(np.ones((40, 3), F32), y, "softmax", o)   # after a built step
    # a model whose step the kernel does not cover (an optimizer over some parameters only:
    # the failed build is remembered) takes the layer path on every step
    m, _ = model()
    part = SGD(m.parameters()[:2], lr=0.1)
    assert np.isfinite([m.train_step(X, y, "softmax", part) for _ in range(3)]).all()
    assert m._compiled_step(X, SoftmaxCrossEntropy(), part) is None
    assert int_labels(y, 40) is y                      # already what the kernel takes
    strided = ylong[::2]
    copied = int_labels(strided, 40)                   # strided: a contiguous copy
    assert copied is not strided and copied.flags.c_contiguous and np.array_equal(copied, y)
    with pytest.raises(ValueError, match="shape"):
        int_labels(y, 41)


def _train_steps_in_two_threads(model, X, y, opt):
    """One train_step in each of two Python threads, started together; their losses."""
    import threading

    start = threading.Barrier(2)
    losses, errors = [], []

    def one_step():
        try:
            start.wait()
            losses.append(model.train_step(X, y, "softmax", opt))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=one_step) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return losses


def test_concurrent_first_train_steps_share_one_plan():
    """Two Python threads making a model's first train_step at once build one plan between
    them (the build is locked and looked up again), so their steps run one after the other:
    the result is that of two steps in a row, bitwise. Each thread used to build its own plan
    (its own lock), and the two steps then ran at once on the same parameters (about one
    trial in six differed, with a short switch interval)."""
    import sys

    r = np.random.default_rng(0)
    X = r.standard_normal((512, 64)).astype(F32)
    y = np.arange(512) % 10

    def make():
        m = Sequential(Dense(64, 256, activation="relu", seed=0), Dense(256, 10, seed=1))
        return m, SGD(m.parameters(), lr=0.1)

    m0, o0 = make()
    want_losses = sorted(m0.train_step(X, y, "softmax", o0) for _ in range(2))
    want = param_copies(m0)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for trial in range(40):
            m, o = make()
            losses = _train_steps_in_two_threads(m, X, y, o)
            assert sorted(losses) == want_losses, trial
            for a, b in zip(param_copies(m), want):
                assert_same_bits(a, b, f"trial {trial}")
            assert len(m._compiled) == 1
    finally:
        sys.setswitchinterval(interval)


def test_concurrent_train_steps_on_one_model_run_one_after_the_other():
    """Two Python threads calling train_step on the same model (the whole-step kernel, one set
    of buffers) are serialized: the result is that of two steps in a row, bitwise (both steps
    use the same batch, so the order does not matter)."""
    r = np.random.default_rng(7)
    X = r.standard_normal((256, 128)).astype(F32)
    y = r.integers(0, 10, 256)

    def make():
        model = Sequential(Dense(128, 512, activation="relu", seed=1), Dense(512, 10, seed=2))
        return model, SGD(model.parameters(), lr=0.05, momentum=0.9)

    serial, sopt = make()
    for _ in range(2):
        serial.train_step(X, y, "softmax", sopt)
    for _ in range(5):
        model, opt = make()
        model.train_step(X, y, "softmax", opt)  # builds the plan: both threads then share it
        twin, topt = make()
        twin.train_step(X, y, "softmax", topt)
        _train_steps_in_two_threads(model, X, y, opt)
        for _ in range(2):
            twin.train_step(X, y, "softmax", topt)
        for p, q in zip(model.parameters(), twin.parameters()):
            assert_same_bits(p.data, q.data)


def _swap(container, key):
    container[key] = container[key].copy()


SIGNATURE_CHANGES = {
    "nothing": lambda m, opt: None,
    "weights replaced": lambda m, opt: _swap(m.layers[2].params, "W"),
    "bias gradient replaced": lambda m, opt: _swap(m.layers[0].grads, "b"),
    "slope changed": lambda m, opt: setattr(m.layers[1], "alpha", 0.5),
    "momentum off (another update rule)": lambda m, opt: setattr(opt, "momentum", 0.0),
    "optimizer state replaced": lambda m, opt: _swap(next(iter(opt.state.values())), 0),
    "optimizer state dropped": lambda m, opt: opt.state.popitem(),
    "optimizer parameters reordered": lambda m, opt: opt.params.reverse(),
    "a parameter added": lambda m, opt: m.layers[2].params.__setitem__("extra", np.zeros(2, F32)),
    "a gradient added (an array where a slope was)":
        lambda m, opt: m.layers[0].grads.__setitem__("extra", np.zeros(2, F32)),
    "a gradient removed (an array where a slope is due)":
        lambda m, opt: m.layers[0].grads.pop("b"),
    "an optimizer parameter dropped": lambda m, opt: opt.params.pop(),
    "a layer without parameters removed": lambda m, opt: m.layers.pop(1),   # the LeakyReLU
}


@pytest.mark.parametrize("change", list(SIGNATURE_CHANGES))
def test_compiled_step_signature_check_agrees_with_the_signature(change):
    """The compiled check each step makes (network.signature_matches) says "unchanged" exactly
    when _CompiledStep.signature_of still gives the plan's signature; a plan whose arrays were
    replaced is rebuilt, and the step then updates the new arrays."""
    from fastnn._kernels import network as kn
    from fastnn.model import _CompiledStep, _rule_of

    r = np.random.default_rng(11)
    X = r.standard_normal((64, 5)).astype(F32)
    y = r.integers(0, 3, 64)
    model = Sequential(Dense(5, 8, seed=1), LeakyReLU(0.2), Dense(8, 3, seed=2))
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train_step(X, y, "softmax", opt)
    step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
    assert step is not None
    sig, old = list(step.signature), model.layers[2].params["W"]
    before = old.copy()
    SIGNATURE_CHANGES[change](model, opt)
    now = _CompiledStep.signature_of(model, opt)
    # the same objects slot by slot (arrays by identity: == would compare their elements),
    # the slopes and the rule by value
    same = len(now) == len(sig) and all(
        a is b or (not isinstance(a, np.ndarray) and not isinstance(b, np.ndarray) and a == b)
        for a, b in zip(now, sig))
    assert same == (change == "nothing")
    assert kn.signature_matches(sig, model.layers, opt, _rule_of(opt)) == same
    if change == "weights replaced":
        model.train_step(X, y, "softmax", opt)
        assert model._compiled_step(X, SoftmaxCrossEntropy(), opt) is not step
        assert_same_bits(old, before)                                   # left alone
        assert not np.array_equal(model.layers[2].params["W"], before)  # trained
    if change == "a layer without parameters removed":
        # and the model now runs the stack without it (it used to keep the fused LeakyReLU)
        import copy

        fresh = Sequential(*copy.deepcopy(list(model.layers)))
        assert_same_bits(model.predict(X), fresh.predict(X))
        loss = model.train_step(X, y, "softmax", opt)
        assert loss == fresh.train_step(X, y, "softmax", SGD(fresh.parameters(), lr=0.1))
        assert model._compiled_step(X, SoftmaxCrossEntropy(), opt) is not step


def test_step_plan_refuses_a_thread_count_below_one():
    X = np.random.default_rng(8).standard_normal((2048, 64)).astype(F32)
    y = np.arange(2048) % 64
    model = Sequential(Dense(64, 256, activation="relu", seed=1), Dense(256, 256, activation="relu", seed=2),
                       Dense(256, 64, seed=3))
    opt = SGD(model.parameters(), lr=0.01)
    model.train_step(X, y, "softmax", opt)
    plan = model._compiled_step(X, SoftmaxCrossEntropy(), opt).plan
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n_threads"):
            plan.step(X, y.astype(np.intp), None, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, bad)


def test_parameters_are_read_only():
    """A compiled step and an optimizer's state are built for what a Parameter names."""
    p = Sequential(Dense(3, 2, seed=0)).parameters()[0]
    for attr, value in (("layer", None), ("name", "b"), ("decay", False)):
        with pytest.raises(AttributeError):
            setattr(p, attr, value)
    assert (p.name, p.decay) == ("W", True)


FUSED_EDGE_MODELS = {
    "one-layer": lambda extra: [Dense(4, 6, seed=1), *extra],
    "prelu-last": lambda extra: [Dense(4, 5, activation="tanh", seed=1), *extra, Dense(5, 6, seed=2), PReLU(6)],
    "sigmoid-last": lambda extra: [Dense(4, 5, activation="relu", seed=1), *extra,
                                   Dense(5, 6, activation="sigmoid", seed=2)],
    "leaky-chain": lambda extra: [Dense(4, 5, seed=1), LeakyReLU(0.2), *extra, Dense(5, 7, seed=2),
                                  LeakyReLU(0.3), Dense(7, 6, seed=3)],
}


@pytest.mark.parametrize("name", list(FUSED_EDGE_MODELS))
def test_step_kernel_fused_backward_edge_networks(name):
    """The fused backward with one layer only (no dx at all), a PReLU or sigmoid on the last
    layer (its dz is formed in the dscores buffer), and leaky ReLUs that keep their
    pre-activations: bitwise the layer path's run, with Adam and MSE."""
    r = np.random.default_rng(9)
    X = r.standard_normal((50, 4)).astype(F32)
    Y = r.standard_normal((50, 6)).astype(F32)
    runs = []
    for extra in ([], [LayerPathIdentity()]):
        model = Sequential(*FUSED_EDGE_MODELS[name](extra))
        opt = Adam(model.parameters(), lr=1e-2)
        losses = [model.train_step(X, Y, "mse", opt) for _ in range(4)]
        step = model._compiled_step(X, MeanSquaredError(), opt)
        assert (step is not None and step.plan.fused_backward) == (not extra)
        runs.append((losses, param_copies(model)))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        assert_same_bits(a, b)


# path -> (model, batch, the phases that path times); "guard" is fit's guarded step
_PHASE_PATHS = {
    "fused": (lambda: _fused_model("relu", (96, 512, 384, 10), F32), 1200,
              {"fwd1", "fwd2", "fwd3", "loss", "bias1", "bias2", "bias3", "dw1", "dw2", "dw3",
               "dx2", "dx3", "update", "labels", "blas", "step"}),
    "chunked": (lambda: _fused_model("relu", (5, 40, 30, 3), F32), 601,
                {"chunks", "sum", "update", "labels", "blas", "step"}),
    "chunked-guard": (lambda: _fused_model("relu", (5, 40, 30, 3), F32), 601,
                      {"chunks", "sum", "guard", "update", "labels", "blas", "step"}),
    # every layer's chunks take turns and the updates are shared: they run in the chunks'
    # parallel region (_run_updating)
    "updating": (lambda: _fused_model("relu", (80, 80, 80, 10), F32), 128,
                 {"chunks", "labels", "blas", "step"}),
    "buffers": (lambda: Sequential(Dense(6, 9, seed=1), PReLU(9), Dense(9, 4, seed=2)), 700,
                {"fwd1", "fwd2", "loss", "bwd1", "bwd2", "update", "labels", "blas", "step"}),
    "guard": (lambda: _fused_model("relu", (96, 512, 384, 10), F32), 1200,
              {"fwd1", "fwd2", "fwd3", "loss", "bias1", "bias2", "bias3", "dw1", "dw2", "dw3",
               "dx2", "dx3", "guard", "update", "labels", "blas", "step"}),
}


@pytest.mark.parametrize("path", list(_PHASE_PATHS))
def test_step_phase_times_account_for_the_step(path):
    """StepPlan.time_phases (bench/step_parts.py's view inside the step): steps timed phase by
    phase give the same bits as untimed ones; the phases that the step's path runs are timed
    and no others; they lie inside the step's own time; switched off, no step is added.
    Without OpenMP there is no clock: every time is 0."""
    import fastnn
    from fastnn._kernels import _config as _kconfig

    make, n, timed = _PHASE_PATHS[path]
    r = np.random.default_rng(8)
    runs = []
    for phases in (False, True):
        model = make()
        widths = [layer.in_features for layer in model.layers if isinstance(layer, Dense)]
        X = r.standard_normal((n, widths[0])).astype(F32) if not runs else runs[0][2]
        y = r.integers(0, model.layers[-1].out_features, n) if not runs else runs[0][3]
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        guard = path.endswith("guard")
        with fastnn.threads(2):
            losses = [model._step(X, y, SoftmaxCrossEntropy(), opt, skip_nonfinite=guard)[0]]
            plan = model._compiled_step(X, SoftmaxCrossEntropy(), opt).plan
            assert plan.phase_times() is None
            plan.time_phases(phases)
            for _ in range(3):
                losses.append(model._step(X, y, SoftmaxCrossEntropy(), opt, skip_nonfinite=guard)[0])
            plan.time_phases(False)
            model._step(X, y, SoftmaxCrossEntropy(), opt, skip_nonfinite=guard)
        runs.append((losses, param_copies(model), X, y, plan))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        assert_same_bits(a, b)
    assert (runs[1][4].chunk_rows > 0) == path.startswith(("chunked", "updating"))
    # (without OpenMP a step runs one thread: its updates never run in the chunks' region)
    openmp = _kconfig.openmp_enabled()
    assert runs[1][4].updates_in_chunks == (path == "updating" and openmp)
    assert runs[1][4].fused_backward == (path != "buffers")
    ph = runs[1][4].phase_times()
    assert ph.pop("steps") == 3   # (the step after time_phases(False) is not counted)
    if not openmp:
        assert set(ph.values()) == {0.0}
        return
    assert {k for k, v in ph.items() if v > 0} == timed, ph
    assert all(v >= 0 for v in ph.values())
    inside = sum(v for k, v in ph.items() if k not in ("step", "blas"))
    assert inside <= ph["step"] * (1 + 1e-9) + 1e-12, (inside, ph["step"])


def test_step_phases_are_not_switched_under_a_running_step():
    """time_phases while a step runs on the plan in another thread (the step releases the GIL)
    is refused: that step writes through the phase pointer it was switched with."""
    import threading
    import time

    import fastnn

    r = np.random.default_rng(2)
    model = _fused_model("relu", (96, 512, 384, 10), F32)
    X = r.standard_normal((1200, 96)).astype(F32)
    y = r.integers(0, 10, 1200)
    opt = SGD(model.parameters(), lr=1e-3)
    model.train_step(X, y, "softmax", opt)
    plan = model._compiled_step(X, SoftmaxCrossEntropy(), opt).plan
    done = threading.Event()

    def steps():
        with fastnn.threads(2):
            while not done.is_set():
                model.train_step(X, y, "softmax", opt)

    worker = threading.Thread(target=steps)
    worker.start()
    refused, i = 0, 0
    # (until 3 refusals or 30 s, with a short sleep between the calls so that the worker gets
    # back into a step: a fixed count of calls, ~1 ms in all, could all fall between steps when
    # the machine paused the worker)
    deadline = time.monotonic() + 30
    try:
        while refused < 3 and time.monotonic() < deadline:
            try:
                plan.time_phases(i % 2 == 0)
            except RuntimeError as e:
                assert "a step is running" in str(e)
                refused += 1
            i += 1
            time.sleep(0.0005)
    finally:
        done.set()
        worker.join()
    assert refused >= 3
    plan.time_phases(False)   # (no step running now: accepted)


# ============================================================================ changing model.layers
def _stack_base():
    return Sequential(Dense(4, 6, seed=1), Tanh(), Dense(6, 6, seed=2), Dense(6, 3, seed=3))


# name -> (the model before, the change, whether the changed model trains: a layer listed twice
# shares its backward cache between its two places)
LAYER_LIST_CHANGES = {
    "append": (lambda: Sequential(Dense(4, 3, seed=1)),
               lambda m: (m.layers.append(ReLU()), m.layers.append(Dense(3, 2, seed=2))), True),
    "extend": (lambda: Sequential(Dense(4, 3, seed=1)),
               lambda m: m.layers.extend([LeakyReLU(0.1), Dense(3, 2, seed=2)]), True),
    "iadd": (lambda: Sequential(Dense(4, 3, seed=1)),
             lambda m: m.layers.__iadd__([Sigmoid(), Dense(3, 2, seed=2)]), True),
    "plus-assign": (_stack_base, lambda m: setattr(m, "layers", m.layers + [PReLU(3)]), True),
    "pop": (lambda: Sequential(Dense(4, 6, seed=1), LeakyReLU(0.5), Dense(6, 3, seed=2)),
            lambda m: m.layers.pop(1), True),
    "pop-last": (_stack_base, lambda m: m.layers.pop(), True),
    "remove": (_stack_base, lambda m: m.layers.remove(m.layers[1]), True),
    "delitem": (_stack_base, lambda m: m.layers.__delitem__(2), True),
    "insert": (_stack_base, lambda m: m.layers.insert(3, ReLU()), True),
    "insert-layer-path": (_stack_base, lambda m: m.layers.insert(1, Dropout(0.5, seed=3)), True),
    "setitem": (_stack_base, lambda m: m.layers.__setitem__(1, Sigmoid()), True),
    "setitem-dense": (_stack_base, lambda m: m.layers.__setitem__(2, Dense(6, 6, activation="relu", seed=7)), True),
    "setitem-slice": (_stack_base, lambda m: m.layers.__setitem__(slice(1, 3), [Maxout(6, 6, seed=5)]), True),
    "reverse": (lambda: Sequential(Dense(4, 4, seed=1), Tanh(), Dense(4, 4, seed=2)),
                lambda m: m.layers.reverse(), True),
    "sort": (lambda: Sequential(Dense(4, 4, seed=1), Tanh(), Dense(4, 4, seed=2)),
             lambda m: m.layers.sort(key=lambda layer: isinstance(layer, Tanh)), True),
    "imul": (lambda: Sequential(Dense(4, 4, activation="tanh", seed=1)), lambda m: m.layers.__imul__(2), False),
    "reassign": (_stack_base, lambda m: setattr(m, "layers", [Dense(4, 5, seed=4), ReLU(), Dense(5, 3, seed=5)]),
                 True),
    "reassign-tuple": (_stack_base, lambda m: setattr(m, "layers", (m.layers[0], m.layers[3 - 1], m.layers[3])),
                       True),
}


def _changed_and_fresh(name, train_first):
    """The model of LAYER_LIST_CHANGES[name] (trained a step first or not) after the change, and
    a Sequential freshly built from copies of its layers as they are right after the change."""
    import copy

    make, change, _ = LAYER_LIST_CHANGES[name]
    model = make()
    X0 = np.random.default_rng(0).standard_normal((9, 4)).astype(F32)
    if train_first:
        out = model.predict(X0).shape[1]
        model.train_step(X0, np.arange(9) % out, "softmax", SGD(model.parameters(), lr=0.1))
    change(model)
    fresh = Sequential(*copy.deepcopy(list(model.layers)))
    return model, fresh


@pytest.mark.parametrize("train_first", [False, True], ids=["fresh", "trained"])
@pytest.mark.parametrize("name", list(LAYER_LIST_CHANGES))
def test_a_changed_layer_list_runs_as_a_fresh_model_of_its_layers(name, train_first, tmp_path):
    """model.layers is a list users may change; forward, predict, train_step (whole-step kernel
    and layer path), fit, summary and save/load then all run the changed stack, bitwise as a
    Sequential built from (copies of) the same layers. (forward, predict and train_step used to
    keep running the stack the constructor saw, while parameters(), summary() and save() used
    the list: a saved and reloaded model predicted differently from the one saved.)"""
    r = np.random.default_rng(5)
    X = r.standard_normal((24, 4)).astype(F32)
    model, fresh = _changed_and_fresh(name, train_first)
    assert_same_bits(model.predict(X), fresh.predict(X))
    assert_same_bits(model.forward(X, training=False), fresh.forward(X, training=False))
    assert model.summary() == fresh.summary()
    assert [p.shape for p in model.parameters()] == [p.shape for p in fresh.parameters()]
    assert_params_equal(model, param_copies(fresh))
    assert model._compilable == fresh._compilable
    trains = LAYER_LIST_CHANGES[name][2]
    if trains:
        out = fresh.predict(X).shape[1]
        y = r.integers(0, out, 24)
        for layer_path in (False, True):
            pair = list(_changed_and_fresh(name, train_first))
            for m in pair:
                m.parameters()   # (the changed model rebuilds its plan at its first use)
                if layer_path:
                    m._compilable = False
            opts = [Adam(m.parameters(), lr=1e-2) for m in pair]
            losses = [[m.train_step(X, y, "softmax", o) for _ in range(3)] for m, o in zip(pair, opts)]
            assert losses[0] == losses[1], layer_path
            assert_params_equal(pair[0], param_copies(pair[1]))
            compiled = [any(v[1] is not None for v in m._compiled.values()) for m in pair]
            assert compiled[0] == compiled[1] == (pair[1]._compilable and not layer_path)
            hist = [m.fit(X, y, optimizer=o, epochs=2, batch_size=8, seed=3, verbose=False)
                    for m, o in zip(pair, opts)]
            assert hist[0]["loss"] == hist[1]["loss"]
            assert_params_equal(pair[0], param_copies(pair[1]))
        model = pair[0]
    path = str(tmp_path / "changed.npz")
    model.save(path)
    loaded = load_model(path)
    assert_same_bits(loaded.predict(X), model.predict(X))
    if len({id(layer) for layer in model.layers}) == len(model.layers):
        assert loaded.summary() == model.summary()
    else:   # a file holds each entry's weights: the loaded layers are apart, counted each
        rows = [line for line in model.summary().splitlines() if not line.startswith("Total")]
        assert [line for line in loaded.summary().splitlines() if not line.startswith("Total")] == rows
        assert loaded.num_params == sum(layer.num_params for layer in model.layers) > model.num_params
    _perturb(model, 9)
    model.load(path)
    assert_same_bits(model.predict(X), loaded.predict(X))


def test_a_changed_layer_list_is_validated_at_its_next_use(tmp_path):
    """A change that leaves a stack the constructor would refuse raises the constructor's own
    error at the next use (and at every use until the list is fixed), before anything runs;
    the fixed list then runs."""
    r = np.random.default_rng(6)
    X = r.standard_normal((8, 4)).astype(F32)
    y = r.integers(0, 3, 8)
    uses = {
        "predict": lambda m, opt: m.predict(X),
        "forward": lambda m, opt: m.forward(X),
        "train_step": lambda m, opt: m.train_step(X, y, "softmax", opt),
        "fit": lambda m, opt: m.fit(X, y, optimizer=opt, epochs=1, verbose=False),
        "evaluate": lambda m, opt: m.evaluate(X, y),
        "summary": lambda m, opt: m.summary(),
        "parameters": lambda m, opt: m.parameters(),
        "save": lambda m, opt: m.save(tmp_path / "m.npz"),
        "dtype": lambda m, opt: m.dtype,
    }
    bad = {
        "widths": (lambda m: m.layers.append(Dense(5, 2)), lambda layers: Sequential(*layers),
                   ValueError, "expects 5 input features, got 3"),
        "not a layer": (lambda m: m.layers.insert(1, "relu"), lambda layers: Sequential(*layers),
                        TypeError, "layer 1 must be a fastnn layer, got str"),
        "empty": (lambda m: m.layers.clear(), lambda layers: Sequential(*layers), ValueError, "at least one layer"),
        "prelu slopes": (lambda m: m.layers.__setitem__(1, PReLU(4)), lambda layers: Sequential(*layers),
                         ValueError, "PReLU has 4 slopes"),
    }
    for what, (change, construct, exc, match) in bad.items():
        model = Sequential(Dense(4, 6, seed=1), Tanh(), Dense(6, 3, seed=2))
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        model.train_step(X, y, "softmax", opt)
        arrays = [layer.params[k] for layer in model.layers for k in layer.params]
        before = [a.copy() for a in arrays]
        change(model)
        with pytest.raises(exc, match=match):
            construct(list(model.layers))   # what the constructor says
        for use, call in uses.items():
            with pytest.raises(exc, match=match):
                call(model, opt)
            for a, b in zip(arrays, before):
                assert_same_bits(a, b, use)
        model.layers = [Dense(4, 6, seed=1), Tanh(), Dense(6, 3, seed=2)]
        model.train_step(X, y, "softmax", SGD(model.parameters(), lr=0.1))   # fixed: runs
    model = Sequential(Dense(4, 3))
    for value in (5, None, Dense(4, 3)):
        with pytest.raises(TypeError, match="layers must be a list of fastnn layers"):
            model.layers = value
    assert model.predict(X).shape == (8, 3)


def test_copies_and_pickles_of_a_model_have_their_own_lock_and_layer_list():
    """copy.deepcopy and pickle work before and after training with the whole-step kernel (a
    compiled plan and the model's lock are not copied: the copy makes its own), and copy.copy
    too; a copy trains on as the original does, and changing a copy's layer list leaves the
    original alone."""
    import copy
    import pickle

    r = np.random.default_rng(7)
    X = r.standard_normal((16, 4)).astype(F32)
    y = r.integers(0, 3, 16)
    model = Sequential(Dense(4, 6, activation="relu", seed=1), Dense(6, 3, seed=2))
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    for dup in copies:
        assert_same_bits(dup.predict(X), model.predict(X))
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train_step(X, y, "softmax", opt)
    assert model._compiled
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model)), copy.copy(model)]
    for dup in copies:
        assert dup._lock is not model._lock and dup.layers is not model.layers
        assert type(dup.layers) is type(model.layers)
        assert_same_bits(dup.predict(X), model.predict(X))
    want = model.predict(X)
    copies[0].layers.append(ReLU())
    copies[2].layers.pop()
    assert_same_bits(model.predict(X), want)
    assert copies[2].predict(X).shape == (16, 6)
    assert pickle.loads(pickle.dumps(model.layers)).__class__ is list
    # a deep copy trains on as the original (its optimizer state copied over)
    deep = copy.deepcopy(model)
    deep_opt = SGD(deep.parameters(), lr=0.1, momentum=0.9)
    deep_opt.state = {(id(p.layer), p.name): [v.copy() for v in opt.state[(id(q.layer), q.name)]]
                      for p, q in zip(deep.parameters(), model.parameters())}
    for _ in range(2):
        assert model.train_step(X, y, "softmax", opt) == deep.train_step(X, y, "softmax", deep_opt)
    assert deep._compiled
    assert_params_equal(deep, param_copies(model))


def test_a_dense_followed_by_a_relu_after_a_list_change_gets_he_initialization():
    """As in the constructor: a Dense whose weights are still its default draw gets the He draw
    of Dense(..., activation="relu") once a ReLU-family layer follows it; trained weights are
    kept."""
    X = np.ones((2, 4), F32)
    model = Sequential(Dense(4, 3, seed=1))
    xavier = model.layers[0].params["W"].copy()
    model.layers.append(LeakyReLU(0.1))
    model.predict(X)
    he = Dense(4, 3, activation="leaky_relu", seed=1).params["W"]
    assert not np.array_equal(he, xavier)
    assert_same_bits(model.layers[0].params["W"], he)
    trained = Sequential(Dense(4, 3, seed=1))
    trained.train_step(X, [0, 1], "softmax", SGD(trained.parameters(), lr=0.1))
    kept = trained.layers[0].params["W"].copy()
    trained.layers.append(ReLU())
    trained.predict(X)
    assert_same_bits(trained.layers[0].params["W"], kept)


# ============================================================================ MSE targets of shape (N,)
def _regressor(layer_path, outputs=1):
    model = Sequential(Dense(3, 8, activation="tanh", seed=1), Dense(8, outputs, seed=2))
    model._compilable = not layer_path   # (False: the layer path, as for a model the kernel does not run)
    return model


def test_mse_targets_of_shape_n_for_one_output_on_both_paths_and_evaluate():
    """A single-output regressor takes MSE targets of shape (N,) as (N, 1) everywhere: the
    whole-step kernel, the layer path (train_step and fit) and evaluate, bitwise as (N, 1)
    targets. (The kernel took them; the layer path and evaluate raised "y must have the shape
    of x (32, 1)".) Two outputs still refuse (N,) targets on both paths."""
    r = np.random.default_rng(12)
    X = r.standard_normal((32, 3)).astype(F32)
    y = r.standard_normal(32).astype(F32)
    runs = {}
    for layer_path in (False, True):
        for shape in ("n", "n1"):
            model = _regressor(layer_path)
            opt = Adam(model.parameters(), lr=1e-2)
            t = y if shape == "n" else y[:, None]
            losses = [model.train_step(X, t, "mse", opt) for _ in range(3)]
            hist = model.fit(X, t, loss="mse", optimizer=opt, epochs=2, batch_size=8, seed=0, verbose=False)
            ev = model.evaluate(X, t, loss="mse")
            assert (any(v[1] is not None for v in model._compiled.values())) == (not layer_path)
            runs[layer_path, shape] = (losses, hist["loss"], ev, param_copies(model))
    base = runs[False, "n1"]
    for key, run in runs.items():
        assert run[:3] == base[:3], key
        for a, b in zip(run[3], base[3]):
            assert_same_bits(a, b, str(key))
    assert y.shape == (32,)   # (the caller's targets are left as they were)
    for layer_path in (False, True):
        two = _regressor(layer_path, outputs=2)
        opt = SGD(two.parameters(), lr=0.1)
        with pytest.raises(ValueError, match=r"^y must have the shape"):
            two.train_step(X, y, "mse", opt)
        with pytest.raises(ValueError, match=r"^y must have the shape"):
            two.evaluate(X, y, loss="mse")


# ============================================================================ fit checks everything first
def _fit_case_model(loss, layer_path):
    outputs = 1 if loss in ("logistic", "binary_hinge", "mse") else 3
    model = Sequential(Dense(4, 8, activation="relu", seed=1), Dropout(0.2, seed=5), Dense(8, outputs, seed=2))
    if layer_path:
        model._compilable = False   # (the Dropout alone runs inside the kernel)
    else:
        model.layers.pop(1)
    return model


_R16 = np.random.default_rng(16)
_FX = _R16.standard_normal((64, 4)).astype(F32)
_FY = {"softmax": _R16.integers(0, 3, 64), "svm": _R16.integers(0, 3, 64), "logistic": _R16.integers(0, 2, 64),
       "binary_hinge": _R16.integers(0, 2, 64) * 2 - 1, "mse": _R16.standard_normal((64, 1)).astype(F32)}


def _with(y, i, value):
    y = np.array(y, copy=True)
    y[i] = value
    return y


# name -> (loss, X, y, validation_data, exception, message)
FIT_UP_FRONT = {
    "label out of range": ("softmax", _FX, _with(_FY["softmax"], 37, 5), None, ValueError,
                           r"^y\[37\] = 5 is not a valid label for this loss \(labels must be in \[0, 3\)\)"),
    "negative label": ("svm", _FX, _with(_FY["svm"], 50, -1), None, ValueError, r"^y\[50\] = -1 is not a valid"),
    "logistic label 2": ("logistic", _FX, _with(_FY["logistic"], 40, 2), None, ValueError,
                         r"^y\[40\] = 2 is not a valid label .*\{0, 1\}"),
    "hinge label 0": ("binary_hinge", _FX, _with(_FY["binary_hinge"], 63, 0), None, ValueError,
                      r"^y\[63\] = 0 is not a valid label .*\{-1, 1\}"),
    "float class labels": ("softmax", _FX, _FY["softmax"].astype(F64), None, TypeError,
                           r"^y must hold integer class labels"),
    "bool class labels": ("softmax", _FX, _FY["softmax"] > 0, None, TypeError, r"^y must hold integer class labels"),
    "mse targets of another width": ("mse", _FX, np.zeros((64, 2), F32), None, ValueError,
                                     r"^y must have the shape of the scores \(64, 1\)"),
    "mse complex targets": ("mse", _FX, np.zeros((64, 1), complex), None, TypeError, r"^y\b"),
    "y_val too short": ("softmax", _FX, _FY["softmax"], (_FX, _FY["softmax"][:10]), ValueError,
                        r"^y_val must have 64 entries \(one per row of X_val\)"),
    "y_val None": ("softmax", _FX, _FY["softmax"], (_FX, None), TypeError, r"^y_val must be an array"),
    "y_val label out of range": ("softmax", _FX, _FY["softmax"], (_FX[:20], _with(_FY["softmax"][:20], 7, 3)),
                                 ValueError, r"^y_val\[7\] = 3 is not a valid label"),
    "y_val floats": ("svm", _FX, _FY["svm"], (_FX, _FY["svm"] + 0.5), TypeError, r"^y_val must hold integer"),
    "y_val logistic label": ("logistic", _FX, _FY["logistic"], (_FX, _with(_FY["logistic"], 3, -1)), ValueError,
                             r"^y_val\[3\] = -1 is not a valid label"),
    "y_val mse width": ("mse", _FX, _FY["mse"], (_FX, np.zeros((64, 3), F32)), ValueError,
                        r"^y_val must have the shape of the scores \(64, 1\)"),
    "X_val width": ("softmax", _FX, _FY["softmax"], (_FX[:, :2], _FY["softmax"]), ValueError,
                    r"^X_val must have shape \(N, 4\), got \(64, 2\)"),
    "X_val 1-D": ("softmax", _FX, _FY["softmax"], (_FX[0], _FY["softmax"][:4]), ValueError,
                  r"^X_val must have shape \(N, 4\), got \(4,\)"),
    "X_val empty": ("softmax", _FX, _FY["softmax"], (_FX[:0], _FY["softmax"][:0]), ValueError, r"^X_val is empty"),
    "X_val complex": ("softmax", _FX, _FY["softmax"], (_FX.astype(complex), _FY["softmax"]), TypeError, r"^X_val"),
}


@pytest.mark.parametrize("layer_path", [False, True], ids=["kernel", "layer-path"])
@pytest.mark.parametrize("case", list(FIT_UP_FRONT))
def test_fit_refuses_bad_targets_and_validation_data_before_it_trains(case, layer_path):
    """fit checks all of y for its loss (not one mini-batch at a time) and validation_data
    (X_val's shape, y_val's length and labels) before the first step: the error names y or
    X_val / y_val, with the index into the caller's array, and nothing was trained (parameters,
    optimizer state and step count, the dropout draws) on either path. (A bad label in a later
    mini-batch used to raise after the earlier ones trained, naming its index in the batch,
    "y[5] = 5" for y[37]; bad validation data was found after a whole epoch, naming x / y.)"""
    loss, X, y, val, exc, match = FIT_UP_FRONT[case]
    model = _fit_case_model(loss, layer_path)
    twin = _fit_case_model(loss, layer_path)
    before = param_copies(model)
    opt = Adam(model.parameters(), lr=1e-2)
    X0, y0 = X.copy(), np.array(y, copy=True)
    with pytest.raises(exc, match=match):
        model.fit(X, y, loss=loss, optimizer=opt, epochs=2, batch_size=16, shuffle=False,
                  validation_data=val, verbose=False)
    assert_params_equal(model, before)
    assert opt.t == 0 and not opt.state
    assert_same_bits(X, X0)
    assert_same_bits(np.asarray(y), y0)
    # the same run as an untouched model's from here on (dropout drew nothing)
    good = _FY[loss]
    h = [m.fit(_FX, good, loss=loss, optimizer=Adam(m.parameters(), lr=1e-2), epochs=1, batch_size=16,
               shuffle=False, verbose=False) for m in (model, twin)]
    assert h[0]["loss"] == h[1]["loss"]
    assert_params_equal(model, param_copies(twin))


@pytest.mark.parametrize("layer_path", [False, True], ids=["kernel", "layer-path"])
def test_train_step_still_checks_its_labels(layer_path):
    """The per-step checks stay (train_step has no fit to check for it): a bad label raises
    before the step updates anything, on both paths, naming the label, its index and the
    labels the loss takes (the kernel's message named the first two only)."""
    for loss, bad, valid in (("softmax", 3, r"\[0, 3\)"), ("svm", -1, r"\[0, 3\)"),
                             ("logistic", 2, r"\{0, 1\}"), ("binary_hinge", 0, r"\{-1, 1\}")):
        model = _fit_case_model(loss, layer_path)
        before = param_copies(model)
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        match = (rf"^y must hold labels (in|from) {valid}, got {bad} \(at index 5\)$" if layer_path
                 else rf"^y\[5\] = {bad} is not a valid label for this loss \(labels must be in {valid}\)$")
        with pytest.raises(ValueError, match=match):
            model.train_step(_FX[:16], _with(_FY[loss][:16], 5, bad), loss, opt)
        assert_params_equal(model, before)


# ============================================================================ optimizer state edited by hand
def _last_key(opt):
    return list(opt.state)[-1]   # (the last parameter's: a step that raised there had updated the others)


# name -> (optimizer, the edit, exception, message; None: the state is remade and the step runs)
BAD_STATE = {
    "adam one entry": (lambda m: Adam(m.parameters(), lr=1e-2), lambda o, k: o.state.__setitem__(k, o.state[k][:1]),
                       ValueError,
                       r"^Adam\.state\[.*\] \(the state of Parameter\(Dense\.b, shape=\(3,\).*\) must hold 2 arrays, "
                       r"got 1"),
    "adam no entry": (lambda m: Adam(m.parameters(), lr=1e-2), lambda o, k: o.state.__setitem__(k, []),
                      ValueError, r"must hold 2 arrays, got 0"),
    "adam three entries": (lambda m: Adam(m.parameters(), lr=1e-2),
                           lambda o, k: o.state[k].append(o.state[k][0].copy()), ValueError,
                           r"must hold 2 arrays, got 3"),
    "momentum two entries": (lambda m: SGD(m.parameters(), lr=0.1, momentum=0.9),
                             lambda o, k: o.state[k].append(o.state[k][0].copy()), ValueError,
                             r"^SGD\.state\[.*must hold 1 array, got 2"),
    "adam v of another shape": (lambda m: Adam(m.parameters(), lr=1e-2),
                                lambda o, k: o.state.__setitem__(k, [o.state[k][0], np.zeros(4, F32)]), ValueError,
                                r"entry 1 must have the parameter's shape"),
    "adam v float64": (lambda m: Adam(m.parameters(), lr=1e-2),
                       lambda o, k: o.state[k].__setitem__(1, o.state[k][1].astype(F64)), ValueError,
                       r"entry 1 must have the parameter's shape .* and dtype float32"),
    "adam v a list": (lambda m: Adam(m.parameters(), lr=1e-2),
                      lambda o, k: o.state[k].__setitem__(1, o.state[k][1].tolist()), TypeError,
                      r"entry 1 must be a numpy\.ndarray, got list"),
    "rmsprop state an int": (lambda m: RMSProp(m.parameters(), lr=1e-2), lambda o, k: o.state.__setitem__(k, 3),
                             TypeError, r"^RMSProp\.state\[.*must be a list of 1 arrays, got int"),
    # made for a replaced parameter of another shape: remade from zeros, as before
    "adam m of another shape": (lambda m: Adam(m.parameters(), lr=1e-2),
                                lambda o, k: o.state.__setitem__(k, [np.zeros(4, F32), np.zeros(4, F32)]), None, None),
    "tuple state": (lambda m: SGD(m.parameters(), lr=0.1, momentum=0.9),
                    lambda o, k: o.state.__setitem__(k, tuple(o.state[k])), None, None),
}


@pytest.mark.parametrize("layer_path", [False, True], ids=["kernel", "layer-path"])
@pytest.mark.parametrize("case", list(BAD_STATE))
def test_optimizer_state_edited_by_hand(case, layer_path):
    """State that is not a list of the rule's arrays of the parameter's shape and dtype (an
    Adam state of one entry was an IndexError at `slots[1]` in the kernel's build, and "not
    enough values to unpack" on the layer path) is a ValueError or TypeError naming the
    state, the same on both paths, raised before anything is updated (Adam's step count
    included); state made for a parameter of another shape is remade, as before."""
    make_opt, edit, exc, match = BAD_STATE[case]
    r = np.random.default_rng(17)
    X = r.standard_normal((16, 4)).astype(F32)
    y = r.integers(0, 3, 16)
    model = Sequential(Dense(4, 5, activation="relu", seed=1), Dense(5, 3, seed=2))
    model._compilable = not layer_path
    opt = make_opt(model)
    model.train_step(X, y, "softmax", opt)
    edit(opt, _last_key(opt))
    before, t = param_copies(model), getattr(opt, "t", None)
    if exc is None:
        model.train_step(X, y, "softmax", opt)
        st = opt.state[_last_key(opt)]
        assert all(a.shape == (3,) for a in st)
        return
    for _ in range(2):   # (and again: the failed build is not a plan that runs)
        with pytest.raises(exc, match=match):
            model.train_step(X, y, "softmax", opt)
        assert_params_equal(model, before)
        assert getattr(opt, "t", None) == t
    with pytest.raises(exc, match=match):
        opt.step()   # the optimizer on its own
    assert_params_equal(model, before)
    assert getattr(opt, "t", None) == t
    opt.state.clear()   # fixed: trains again
    model.train_step(X, y, "softmax", opt)
    assert not np.array_equal(model.parameters()[0].data, before[0])


def test_a_layer_list_changed_while_a_step_builds_its_kernel_is_followed_by_the_next_step():
    """A change to model.layers that lands while a step holds the model's lock (here: made
    from inside the optimizer while the whole-step kernel is built, as another thread could)
    does not get folded into that build: the step finishes on the stack it started with, and
    the next one runs the new stack (a nested rebuild used to leave the old kernel cached
    under the new stack's signature, training ReLU while predict ran Tanh)."""
    import copy

    X = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    y = np.arange(16) % 3
    model = Sequential(Dense(4, 8, seed=0), ReLU(), Dense(8, 3, seed=1))
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    calls = []

    def slots(p, n, data=None):
        if not calls:
            calls.append(p)
            model.layers[1] = Tanh()     # "another thread", during the build
        return SGD._slots(opt, p, n, data)

    opt._slots = slots
    model.train_step(X, y, "softmax", opt)
    del opt._slots
    assert calls and model.layers.changed, "the change must stay pending for the next use"
    # the next step: the Tanh stack's loss, before its update, on both paths
    fresh = copy.deepcopy(model)
    want = fresh.evaluate(X, y)["loss"]
    assert [type(u.act).__name__ for u in fresh._units][:1] == ["Tanh"]
    assert model.train_step(X, y, "softmax", opt) == pytest.approx(want, rel=1e-6)


def test_predict_between_forward_and_backward_leaves_the_backward_alone():
    """predict keeps nothing in the layers: forward(X1), then predict(X2) of another batch
    size, then backward gives bitwise the gradients of forward(X1) then backward alone (every
    layer kind, fused and unfused)."""
    rng = np.random.default_rng(4)
    X1 = rng.standard_normal((6, 5)).astype(np.float32)
    X2 = rng.standard_normal((9, 5)).astype(np.float32)
    dout = rng.standard_normal((6, 3)).astype(np.float32)

    def make():
        return Sequential(Dense(5, 8, seed=0), ReLU(), Dense(8, 8, seed=1), Tanh(),
                          Maxout(8, 6, pieces=2, seed=2), PReLU(6), Dense(6, 3, seed=3),
                          Sigmoid(), Dense(3, 3, seed=4))

    grads = []
    for with_predict in (False, True):
        model = make()
        model.forward(X1, training=True)
        if with_predict:
            model.predict(X2)
        dx = model.backward(dout)
        grads.append([dx] + [p.grad.copy() for p in model.parameters()])
    for a, b in zip(*grads):
        assert_same_bits(a, b, what="a predict between forward and backward changed the backward")


# ============================================================================ memory held
def _mlp(seed=0, dims=(20, 32, 32, 4)):
    layers = []
    for i in range(len(dims) - 1):
        layers.append(Dense(dims[i], dims[i + 1], activation="relu" if i < len(dims) - 2 else None,
                            seed=seed + i))
    return Sequential(*layers)


def test_a_dropped_optimizer_frees_its_plan_and_state():
    """A model keeps whole-step plans per optimizer; an optimizer the user drops is freed with
    its state and the plan's buffers (the cache held it strongly: up to 4 dead optimizers)."""
    import gc
    import weakref

    model = _mlp()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 20)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    refs = []
    for k in range(3):
        opt = Adam(model.parameters(), lr=1e-3)
        model.train_step(X, y, "softmax", opt)
        assert model._compiled_step(X, SoftmaxCrossEntropy(), opt) is not None  # the kernel ran
        state = [a for slots in opt.state.values() for a in slots]
        assert state
        refs.append((weakref.ref(opt), [weakref.ref(a) for a in state]))
        del opt, state
        gc.collect()
        assert len(model._compiled) == 0
    for opt_ref, state_refs in refs:
        assert opt_ref() is None and all(r() is None for r in state_refs)
    # and a model still trains with a new optimizer afterwards, on the kernel
    opt = SGD(model.parameters(), lr=0.1)
    model.train_step(X, y, "softmax", opt)
    assert len(model._compiled) == 1


def test_plan_cache_drops_the_least_recently_used():
    """At most 4 plans; a fifth drops the least recently used one, not all of them."""
    model = _mlp()
    opt = SGD(model.parameters(), lr=0.01)
    loss = SoftmaxCrossEntropy()
    rng = np.random.default_rng(1)
    batches = {n: (rng.standard_normal((n, 20)).astype(np.float32), rng.integers(0, 4, n))
               for n in (8, 9, 10, 11, 12)}
    for n in (8, 9, 10, 11):
        model.train_step(*batches[n], loss, opt)
    plans = {n: model._compiled_step(batches[n][0], loss, opt) for n in (8, 9, 10, 11)}
    assert all(p is not None for p in plans.values())
    model.train_step(*batches[8], loss, opt)      # 8 is now the most recently used; 9 the least
    model.train_step(*batches[12], loss, opt)     # a fifth batch size
    assert sorted(k[0] for k in model._compiled) == [8, 10, 11, 12]
    for n in (8, 10, 11):
        assert model._compiled_step(batches[n][0], loss, opt) is plans[n]   # kept, not rebuilt


def test_the_step_shortcut_returns_no_other_plan():
    """A repeated step skips building the cache key (Sequential._compiled_step's shortcut to
    the last hit), but never runs a plan made for another loss or another optimizer: an SVM
    step after softmax steps on the same batch computes the SVM loss, and a second optimizer
    over the very same Parameter objects (so the same signature) gets a plan of its own."""
    from fastnn.functional import softmax_loss, svm_loss

    model = _mlp()
    rng = np.random.default_rng(5)
    X = rng.standard_normal((16, 20)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    params = model.parameters()
    opt = SGD(params, lr=0.05)
    for _ in range(2):
        model.train_step(X, y, "softmax", opt)
    assert model._hot is not None   # the next step of this kind takes the shortcut
    step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
    assert step is not None and model._compiled_step(X, SoftmaxCrossEntropy(), opt) is step
    for loss, fn in (("svm", svm_loss), ("softmax", softmax_loss), ("svm", svm_loss)):
        want = fn(model.predict(X), y)[0]
        got = model.train_step(X, y, loss, opt)
        assert got == pytest.approx(want, rel=1e-5), loss
    other = SGD(params, lr=0.05)
    model.train_step(X, y, "svm", other)
    assert len(model._compiled) == 3   # (softmax, opt), (svm, opt), (svm, other)
    plans = {id(o): model._compiled_step(X, MulticlassHinge(), o) for o in (opt, other)}
    assert None not in plans.values() and plans[id(opt)] is not plans[id(other)]
    for o in (opt, other, opt):
        model.train_step(X, y, "svm", o)
        assert model._compiled_step(X, MulticlassHinge(), o) is plans[id(o)]


def test_the_step_shortcut_keeps_the_plan_cache_in_lru_order():
    """Steps through the shortcut do not reorder the plan cache, so the shortcut's entry must
    be its most recently used one: a hit on another entry that returns no step (an optimizer
    over part of the model, whose build failed and is remembered as such) moves that entry
    last and must not leave the shortcut pointing at the first. Then new batch sizes evict
    the partial optimizer's entry, not the plan in use (found by a reviewer of this change)."""
    model = _mlp()
    loss = SoftmaxCrossEntropy()
    rng = np.random.default_rng(6)
    batches = {n: (rng.standard_normal((n, 20)).astype(np.float32), rng.integers(0, 4, n))
               for n in (8, 9, 10, 16)}
    full = SGD(model.parameters(), lr=0.01)
    part = SGD(model.layers[-1].parameters(), lr=0.01)   # the whole-step kernel refuses it
    X, y = batches[16]
    for opt in (full, full, part, full, part, full):
        model.train_step(X, y, loss, opt)
    step = model._compiled_step(X, loss, full)
    assert step is not None and model._compiled_step(X, loss, part) is None
    model.train_step(X, y, loss, full)
    for n in (8, 9, 10):
        model.train_step(*batches[n], loss, full)
    assert sorted((k[0], k[1] == id(full)) for k in model._compiled) == [
        (8, True), (9, True), (10, True), (16, True)]
    assert model._compiled_step(X, loss, full) is step   # kept, not rebuilt

def _front_dropout_mlp(seed=0):
    return Sequential(Dropout(0.8, seed=seed + 9), *_mlp(seed).layers)


def _inner_dropout_mlp(seed=0):
    return Sequential(Dense(20, 32, activation="relu", seed=seed), Dropout(0.7, seed=seed + 9),
                      Dense(32, 4, seed=seed + 1))


def _replace_W(model, opt, X, y, loss):
    model.layers[0].params["W"] = model.layers[0].params["W"].copy()
    return X, y, loss, opt


def _set_layer_dtype(model, opt, X, y, loss):
    for layer in model.layers:
        layer.dtype = np.dtype(np.float64)
    return X, y, loss, opt


def _read_only_W(model, opt, X, y, loss):
    model.layers[0].params["W"].flags.writeable = False
    return X, y, loss, opt


# name -> (the model, what changes before the third step: (model, opt, X, y, loss) -> the
# step's (X, y, loss, opt), made on both twins alike); the changes whose step is refused:
STEP_SHORTCUT_REFUSED = {"W read-only": "parameter W", "layers' dtype set": "float64",
                         "optimizer's step hidden": "optimizer must be a fastnn optimizer",
                         "labels too few": r"y must have shape \(16,\), got \(15,\)",
                         "label out of range": r"y\[\d+\] = 4 is not a valid label"}
STEP_SHORTCUT_CHANGES = {
    "nothing": (_mlp, lambda m, o, X, y, loss: (X, y, loss, o)),
    "X float64": (_mlp, lambda m, o, X, y, loss: (X.astype(np.float64), y, loss, o)),
    "X Fortran order": (_mlp, lambda m, o, X, y, loss: (np.asfortranarray(X), y, loss, o)),
    "X a list": (_mlp, lambda m, o, X, y, loss: (X.tolist(), y, loss, o)),
    "X other rows": (_mlp, lambda m, o, X, y, loss: (X[:12], y[:12], loss, o)),
    "loss by name": (_mlp, lambda m, o, X, y, loss: (X, y, "softmax", o)),
    "another loss": (_mlp, lambda m, o, X, y, loss: (X, y, MulticlassHinge(), o)),
    "another optimizer": (_mlp, lambda m, o, X, y, loss: (X, y, loss,
                                                          SGD(m.parameters(), lr=0.02))),
    "W replaced": (_mlp, _replace_W),
    "W read-only": (_mlp, _read_only_W),
    "layer list changed": (_mlp, lambda m, o, X, y, loss: (m.layers.append(Tanh()),
                                                           (X, y, loss, o))[1]),
    # (the same parameters in the same places: only the layer list's change flag tells)
    "activation replaced": (lambda: Sequential(Dense(20, 32, seed=0), ReLU(), Dense(32, 4, seed=1)),
                            lambda m, o, X, y, loss: (m.layers.__setitem__(1, Tanh()),
                                                      (X, y, loss, o))[1]),
    "layers' dtype set": (_mlp, _set_layer_dtype),
    "optimizer's step hidden": (_mlp, lambda m, o, X, y, loss: (setattr(o, "step", None),
                                                                (X, y, loss, o))[1]),
    "labels int32": (_mlp, lambda m, o, X, y, loss: (X, y.astype(np.int32), loss, o)),
    "labels strided": (_mlp, lambda m, o, X, y, loss: (X, np.repeat(y, 2)[::2], loss, o)),
    "labels too few": (_mlp, lambda m, o, X, y, loss: (X, y[:-1], loss, o)),
    "label out of range": (_mlp, lambda m, o, X, y, loss: (X, np.where(y == 0, 4, y), loss, o)),
    "dropout in front": (_front_dropout_mlp, lambda m, o, X, y, loss: (X, y, loss, o)),
    "dropout inside": (_inner_dropout_mlp, lambda m, o, X, y, loss: (X, y, loss, o)),
}


def _cache_state(model, opts):
    """A model's plan cache and shortcut, comparable between twins: each key as (batch, which
    of `opts` by position, loss type), in the cache's order, and _hot likewise."""
    which = {id(o): i for i, o in enumerate(opts)}
    keys = [(k[0], which.get(k[1]), k[2]) for k in model._compiled]
    hot = model._hot
    return keys, (None if hot is None else
                  ((hot[0][0], which.get(hot[0][1]), hot[0][2]), hot[1], hot[2]))


def _shortcut_twins(make, steps, optimizer=None, loss=None, targets=None):
    """Train two twins of `make()` on the same batches, one with train_step's shortcut and one
    without it (its _shortcut answering None: the full path, _compiled_step's own shortcut
    included), `steps(k, model, opt, X, y, loss)` giving step k's (X, y, loss, opt). Returns
    both runs' per-step records: the loss or (error type, message), the parameters' and the
    optimizer state's copies, and the cache state (_cache_state)."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((16, 20)).astype(np.float32)
    y = rng.integers(0, 4, 16) if targets is None else targets(rng)
    runs = []
    for shortcut in (True, False):
        model = make()
        if not shortcut:
            model._shortcut = lambda X, y, loss, optimizer: None
        opt = (optimizer or (lambda ps: SGD(ps, lr=0.05, momentum=0.9)))(model.parameters())
        opts = [opt]
        got = []
        for k in range(4):
            Xk, yk, lk, ok = steps(k, model, opt, X, y, loss or SoftmaxCrossEntropy())
            if ok not in opts:
                opts.append(ok)
            try:
                got.append(model.train_step(Xk, yk, lk, ok))
            except (TypeError, ValueError) as e:
                got.append((type(e), str(e)))
            got.append([p.data.copy() for p in model.parameters()]
                       + [a.copy() for st in opt.state.values() for a in st]
                       + [np.array(getattr(opt, "t", 0))])
            got.append(_cache_state(model, opts))
        runs.append((got, model))
    return runs


def _same_runs(runs, what):
    for a, b in zip(runs[0][0], runs[1][0]):
        if isinstance(a, list):
            assert len(a) == len(b), what
            for u, v in zip(a, b):
                assert_same_bits(u, v, what=what)
        else:
            assert a == b, what


@pytest.mark.parametrize("change", list(STEP_SHORTCUT_CHANGES))
def test_train_step_shortcut_gives_the_full_paths_results(change):
    """train_step's shortcut (a step like the last cache hit: Sequential._shortcut) against
    the full path (a twin whose _shortcut answers None), after two steps and a change between
    them and the third: the same losses or the same error, the same parameter bits and the
    same plan cache and shortcut after every step, for changes the shortcut must see (X's
    dtype, order, type or rows, the loss, the optimizer or its step method, a replaced or
    read-only array, the layer list, the layers' dtype, the labels) and for models it must
    leave to the full path (a dropout in front or inside, whose masks are drawn in Python).
    Without a change, the shortcut is what runs, for a loss object or its name: neither
    train_step's checks of X and the optimizer nor _compiled_step."""
    make, change_fn = STEP_SHORTCUT_CHANGES[change]

    def steps(k, model, opt, X, y, loss):
        return change_fn(model, opt, X, y, loss) if k == 2 else (X, y, loss, opt)

    runs = _shortcut_twins(make, steps)
    third = runs[0][0][6]   # (the third step's loss or error: three records a step)
    if change in STEP_SHORTCUT_REFUSED:
        assert isinstance(third, tuple) and re.search(STEP_SHORTCUT_REFUSED[change], third[1]), third
    else:
        assert isinstance(third, float) and np.isfinite(third), third
    _same_runs(runs, change)
    if change == "nothing":
        model = runs[0][1]
        rng = np.random.default_rng(3)
        X = rng.standard_normal((16, 20)).astype(np.float32)
        y = rng.integers(0, 4, 16)
        opt = SGD(model.parameters(), lr=0.05)
        model.train_step(X, y, "softmax", opt)
        model.train_step(X, y, "softmax", opt)
        assert model._hot is not None

        def refuse(*args, **kwargs):
            raise AssertionError("the full path ran")

        model._check_X = model._compiled_step = refuse
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fmodel, "_check_optimizer", refuse)
            for loss in (SoftmaxCrossEntropy(), "softmax"):   # (the shortcut: none called)
                model.train_step(X, y, loss, opt)


@pytest.mark.parametrize("rule", ["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize("loss", ["softmax", "logistic", "mse"])
def test_train_step_shortcut_for_each_rule_and_kind_of_loss(rule, loss):
    """The shortcut against the full path for each update rule the kernel runs (Adam counts
    its steps through it) and for a multiclass, a binary and a regression loss: the same
    losses, parameters, optimizer state and step count, and the same plan cache, step by step."""
    outputs = {"softmax": 4, "logistic": 1, "mse": 3}[loss]
    targets = {"softmax": lambda r: r.integers(0, 4, 16),
               "logistic": lambda r: r.integers(0, 2, 16),
               "mse": lambda r: r.standard_normal((16, 3)).astype(np.float32)}[loss]
    optimizer = {"sgd": lambda ps: SGD(ps, lr=0.05, momentum=0.9),
                 "adam": lambda ps: Adam(ps, lr=1e-2),
                 "rmsprop": lambda ps: RMSProp(ps, lr=1e-2)}[rule]
    runs = _shortcut_twins(lambda: _mlp(dims=(20, 32, 32, outputs)),
                           lambda k, m, o, X, y, lo: (X, y, loss, o), optimizer, targets=targets)
    assert all(isinstance(v, float) for v in runs[0][0][::3])
    _same_runs(runs, (rule, loss))
    assert runs[0][1]._hot is not None   # (the shortcut's steps ran)


@pytest.mark.parametrize("which", ["X", "y", "both"])
def test_unpickled_batches_take_the_train_step_shortcut(which):
    """Arrays that pickle.loads built (as multiprocessing passes batches) hold dtype objects
    equal to NumPy's own but not the same: the shortcut, which compares them by identity,
    declined every such X into the full path (6.6-7.7 us a step against 3.5 on a small
    network; such labels went through int_labels' checks). Such a batch now takes the
    shortcut, with the plain batch's numbers, and the caller's arrays are left as they were
    (the "y" case passed before too: it guards the labels' new direct route)."""
    import pickle
    from fastnn._kernels import stepcall
    r = np.random.default_rng(8)
    X = r.standard_normal((16, 6)).astype(F32)
    y = r.integers(0, 3, 16)
    runs = []
    for unpickled in (False, True):
        model = Sequential(Dense(6, 8, activation="relu", seed=1), Dense(8, 3, seed=2))
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses, took = [], []
        for step in range(4):
            Xs, ys = X.copy(), y.copy()
            if unpickled:
                if which in ("X", "both"):
                    Xs = pickle.loads(pickle.dumps(Xs))
                    assert Xs.dtype is not X.dtype
                if which in ("y", "both"):
                    ys = pickle.loads(pickle.dumps(ys))
                    assert ys.dtype is not y.dtype
            if step < 2:
                losses.append(model.train_step(Xs, ys, "softmax", opt))
            else:   # (the plan is hot from the second step: the shortcut's own answer)
                value = stepcall.train_step(model, Xs, ys, fmodel._NAMED_LOSSES["softmax"], opt)
                took.append(value is not None)
                losses.append(value)
            assert_same_bits(Xs, X)
            assert_same_bits(ys, y)
        assert took == [True, True]
        runs.append((losses, param_copies(model)))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        assert_same_bits(a, b)


def test_train_step_shortcut_holds_the_models_lock():
    """A step through the shortcut waits for the model's lock, as the full path's does: while
    another thread holds it, the step does not run; once it is released, the step does. The
    shortcut is asked again under the lock (another thread may have moved it meanwhile)."""
    import threading
    import time

    model = _mlp()
    rng = np.random.default_rng(4)
    X = rng.standard_normal((16, 20)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    opt = SGD(model.parameters(), lr=0.05)
    loss = SoftmaxCrossEntropy()
    model.train_step(X, y, loss, opt)
    model.train_step(X, y, loss, opt)
    assert model._hot is not None
    before = [p.data.copy() for p in model.parameters()]
    done = threading.Event()
    worker = threading.Thread(target=lambda: (model.train_step(X, y, loss, opt), done.set()))
    with model._lock:
        worker.start()
        assert not done.wait(0.3)   # (held: the step waits)
        for p, b in zip(model.parameters(), before):
            assert_same_bits(p.data, b)
    assert done.wait(30)
    worker.join()
    assert any(not np.array_equal(p.data, b) for p, b in zip(model.parameters(), before))
    # the shortcut is asked again under the lock: a step that found a softmax step last,
    # then waited while another thread's SVM steps moved the shortcut to the SVM plan (same
    # batch, same optimizer), computes the softmax loss, not the SVM plan's
    from fastnn.functional import softmax_loss

    hinge = MulticlassHinge()
    for other in (hinge, hinge, loss, loss):
        model.train_step(X, y, other, opt)
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("loss", model.train_step(X, y, loss, opt)))
    with model._lock:
        worker.start()
        time.sleep(0.3)   # (the worker has read the shortcut and waits for the lock)
        model.train_step(X, y, hinge, opt)
        model.train_step(X, y, hinge, opt)
        assert model._hot[0][2] is MulticlassHinge
        want = softmax_loss(model.predict(X), y)[0]
    worker.join(30)
    assert out["loss"] == pytest.approx(want, rel=1e-5)


def test_layer_path_steps_keep_no_activations():
    """After a step on the layer path (a layer type the whole-step kernel does not take) no
    layer holds its backward cache: the model does not keep a batch's activations alive, nor
    pickle them."""
    import pickle

    model = Sequential(Dense(20, 64, activation="relu", seed=0), Dropout(0.5, seed=1),
                       LayerPathIdentity(), Dense(64, 4, seed=2))
    rng = np.random.default_rng(2)
    X = rng.standard_normal((256, 20)).astype(np.float32)
    y = rng.integers(0, 4, 256)
    opt = SGD(model.parameters(), lr=0.01)
    fresh = len(pickle.dumps(model))
    model.train_step(X, y, "softmax", opt)
    assert model._compiled_step(X, SoftmaxCrossEntropy(), opt) is None   # the layer path ran
    assert all(layer._cache is None for layer in model.layers)
    model.fit(X, y, epochs=1, batch_size=100, optimizer=opt, verbose=False, seed=0)
    assert all(layer._cache is None for layer in model.layers)
    assert len(pickle.dumps(model)) < fresh + 4096   # the parameters, not 256 rows of activations
    # forward / backward called by the user still keep what backward needs
    model.forward(X)
    model.backward(np.ones((256, 4), np.float32))


def test_fit_gathers_batches_into_one_buffer():
    """fit gathers each batch into one reused buffer: no batch-sized copy per step on top of it
    (the traced peak of a second fit stays well below two batches)."""
    import tracemalloc

    model = Sequential(Dense(2000, 4, seed=0))   # X's rows dwarf the activations
    rng = np.random.default_rng(3)
    X = rng.standard_normal((1000, 2000)).astype(np.float32)
    y = rng.integers(0, 4, 1000)
    opt = SGD(model.parameters(), lr=0.01)
    model.fit(X, y, epochs=1, batch_size=256, optimizer=opt, verbose=False, seed=0)
    # 1000 = 3 * 256 + 232: the small 232-row plan stays for the next fit call
    assert sorted(k[0] for k in model._compiled) == [232, 256]
    batch = 256 * 2000 * 4
    tracemalloc.start()
    try:
        model.fit(X, y, epochs=2, batch_size=256, optimizer=opt, verbose=False, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one batch buffer and the permutation; a copy per step would add a second batch while the
    # previous one is still held
    assert peak < 1.5 * batch, (peak, batch)


@pytest.mark.parametrize("front", ["dropout", "noise"])
def test_a_kernel_front_allocates_no_batch_per_step(front):
    """A front the kernel runs writes into the plan's own input buffer, reused step after
    step: a later step allocates no batch-sized array (the front run in Python before the
    kernel allocated its output, X's size, each step: the check below fails that way)."""
    import tracemalloc

    first = Dropout(0.2, seed=3) if front == "dropout" else GaussianNoise(0.1, seed=3)
    model = Sequential(first, Dense(2000, 4, seed=0))   # X's rows dwarf the rest
    rng = np.random.default_rng(3)
    X = rng.standard_normal((256, 2000)).astype(np.float32)
    y = rng.integers(0, 4, 256)
    opt = SGD(model.parameters(), lr=0.01)
    model.train_step(X, y, "softmax", opt)
    (entry,) = model._compiled.values()
    assert entry[1].front is first and entry[1].plan.input_kind == (1 if front == "dropout" else 2)
    tracemalloc.start()
    try:
        for _ in range(3):
            model.train_step(X, y, "softmax", opt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes // 20, (peak, X.nbytes)


def test_fit_drops_a_large_partial_batch_plan():
    """The plan fit builds for a partial last batch goes when fit returns when its activations
    are large (the full batch's stays); a batch size fit did not build is left alone."""
    model = Sequential(Dense(300, 1200, activation="relu", seed=0), Dense(1200, 4, seed=1))
    rng = np.random.default_rng(4)
    X = rng.standard_normal((1000, 300)).astype(np.float32)
    y = rng.integers(0, 4, 1000)
    opt = SGD(model.parameters(), lr=0.01)
    model.fit(X, y, epochs=2, batch_size=256, optimizer=opt, verbose=False, seed=0)
    assert [k[0] for k in model._compiled] == [256]   # 232 rows x 1204 units x 4 B > 1 MiB
    model.train_step(X[:232], y[:232], "softmax", opt)
    model.fit(X, y, epochs=1, batch_size=256, optimizer=opt, verbose=False, seed=0)
    assert sorted(k[0] for k in model._compiled) == [232, 256]


@pytest.mark.parametrize("front", [None, "dropout", "noise"])
def test_fit_counts_the_front_buffer_of_a_partial_batch_plan(front):
    """A front the kernel runs (one Dropout or GaussianNoise) gives the plan a copy of the
    input: with a wide input and a narrow stack, that copy makes a partial batch's plan large
    (232 rows x 2000 inputs x 4 B > 1 MiB), and fit drops it; without it the plan is small
    (232 x 4 x 4 B) and stays."""
    layers = {None: [], "dropout": [Dropout(0.1, seed=3)], "noise": [GaussianNoise(0.1, seed=3)]}
    model = Sequential(*layers[front], Dense(2000, 4, seed=1))
    rng = np.random.default_rng(4)
    X = rng.standard_normal((1000, 2000)).astype(np.float32)
    y = rng.integers(0, 4, 1000)
    opt = SGD(model.parameters(), lr=0.01)
    model.fit(X, y, epochs=1, batch_size=256, optimizer=opt, verbose=False, seed=0)
    kept = sorted(k[0] for k in model._compiled)
    assert kept == ([232, 256] if front is None else [256])
    assert all(type(entry[1]).__name__ == "_CompiledStep" for entry in model._compiled.values())


def test_a_layer_of_your_own_with_a_read_only_cache_attribute_still_trains():
    """Steps drop the layers' backward caches when done; a layer class of your own that keeps
    its own state under that name (here a read-only property) is left alone, and the step's
    result is not replaced by an error from that clean-up."""
    from fastnn import Layer

    class Twice(Layer):
        def __init__(self):   # (not Layer.__init__, which sets _cache)
            self.dtype, self.training, self.params, self.grads, self._shapes = None, True, {}, {}, {}

        @property
        def _cache(self):
            return "mine"

        def forward(self, x, training=None):
            return 2 * x

        def backward(self, dout, need_dx=True):
            return 2 * dout

    model = Sequential(Dense(5, 3, seed=0), Twice())
    rng = np.random.default_rng(5)
    X = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    loss = model.train_step(X, y, "softmax", SGD(model.parameters(), lr=0.1))
    assert np.isfinite(loss)
    assert model.layers[1]._cache == "mine" and model.layers[0]._cache is None


@pytest.mark.parametrize("first", ["relu", "dropout", "noise", "prelu"])
def test_backward_without_the_input_gradient_computes_none(first, monkeypatch):
    """Sequential.backward(need_dx=False) said it returned None, but a model with a
    parameterless layer in front (input noise or dropout, say) returned that gradient: the
    Dense above it computed its input gradient (a product as large as its weight gradient's)
    and the front layer passed it on. Now the lowest layer with parameters computes none and
    the layers below it do not run; the gradients are the same bits. (The layer-path training
    step asks for no input gradient: this is its backward.)"""
    make_first = {"relu": lambda: ReLU(), "dropout": lambda: Dropout(0.3, seed=1),
                  "noise": lambda: GaussianNoise(0.2, seed=2), "prelu": lambda: PReLU(6)}[first]
    X = np.random.default_rng(0).standard_normal((9, 6)).astype(F32)
    grads, outs = [], []
    for need_dx in (True, False):
        model = Sequential(make_first(), Dense(6, 5, activation="relu", seed=3), Dense(5, 4, seed=4))
        s = model.forward(X, training=True)
        calls = []
        real = Dense.backward

        def spy(self, dout, need_dx=True, _real=real, _calls=calls):
            _calls.append((self.in_features, need_dx))
            return _real(self, dout, need_dx=need_dx)

        monkeypatch.setattr(Dense, "backward", spy)
        if not need_dx and first != "prelu":
            monkeypatch.setattr(type(model.layers[0]), "backward",
                                lambda *a, **k: pytest.fail("the front layer ran"))
        outs.append(model.backward(np.ones_like(s), need_dx=need_dx))
        monkeypatch.undo()
        grads.append([g.copy() for layer in model.layers for g in layer.grads.values()])
        if not need_dx:
            assert calls == [(5, True), (6, first == "prelu")]
    assert isinstance(outs[0], np.ndarray) and outs[0].shape == X.shape and outs[1] is None
    for a, b in zip(*grads):
        assert_same_bits(a, b)


# ============================================================================ input noise and dropout in front
# fastnn's parameterless layers in front of the first Dense (input noise, input dropout, an
# activation) run in Python before the whole-step kernel, which trains the Dense stack above
# them; before, one such layer sent the whole step down the layer path. Their draws are the
# layer path's, in the same order, so the numbers are too.
FRONTS = {"noise": lambda dt: [GaussianNoise(0.3, seed=5, dtype=dt)],
          "dropout": lambda dt: [Dropout(0.25, seed=6)],
          "relu-dropout-noise": lambda dt: [ReLU(), Dropout(0.4, seed=7, dtype=dt),
                                            GaussianNoise(0.1, seed=8)]}


def _front_model(front, widths, dtype, twin=False):
    """FRONTS[front] on a Dense stack (relu, tanh); twin: the same model on the layer path (not
    by an identity Dropout(0) inserted: fit would reseed it, drawing from its shuffling rng)."""
    layers = FRONTS[front](dtype)
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        act = (None, "relu", "tanh")[min(i + 1, 2)] if i < len(widths) - 2 else None
        layers.append(Dense(a, b, activation=act, seed=20 + i, dtype=dtype))
    model = Sequential(*layers)
    if twin:
        model._compilable = False   # (as for a model the kernel does not run)
    return model


@pytest.mark.parametrize("size", ["small", "chunked", "tiled"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("front", list(FRONTS))
def test_front_layers_run_before_the_whole_step_kernel(front, dtype, size):
    """A model with input noise or dropout in front trains on the whole-step kernel, bitwise
    as on the layer path (losses, parameters, gradients), the same at 1, 2, 3 and 16 threads,
    and its front layers keep no cache once the step is done."""
    n, widths = FUSED_SIZES[size]
    r = np.random.default_rng(4)
    X = r.standard_normal((n, widths[0])).astype(dtype)
    X.flags.writeable = False   # (a front inside the kernel reads X only)
    y = r.integers(0, widths[-1], n)
    X0 = X.copy()

    def run(twin=False):
        model = _front_model(front, widths, dtype, twin)
        opt = Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
        losses = [model.train_step(X, y, "softmax", opt) for _ in range(3)]
        step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
        assert (step is None) == twin
        assert_same_bits(X, X0)
        if not twin:
            assert (step.plan.chunk_rows > 0) == size.startswith("chunked")
            # one dropout or noise layer in front runs inside the kernel, longer fronts first
            assert step.plan.input_kind == {"noise": 2, "dropout": 1}.get(front, 0)
        assert all(getattr(layer, "_cache", None) is None for layer in model.layers)
        return losses, param_copies(model), [p.grad.copy() for p in model.parameters()]

    _compiled_matches_layerwise(run)


def test_front_layers_fit_and_refused_labels_as_on_the_layer_path():
    """fit (reseeded, its accuracy counted by the kernel) gives the layer path's history and
    parameters; a step refused for a bad label has drawn the front's numbers on both paths (the
    layer path draws them in its forward, before the loss sees the label), so the steps after
    it agree too."""
    X, y = spiral(40)
    runs = []
    for twin in (False, True):
        model = _front_model("relu-dropout-noise", (2, 24, 16, 3), F32, twin)
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        hist = model.fit(X, y, optimizer=opt, epochs=3, batch_size=40, seed=3, verbose=False)
        bad = y[:40].copy()
        bad[7] = 3
        with pytest.raises(ValueError, match="y"):
            model.train_step(X[:40], bad, "softmax", opt)
        after = model.train_step(X[:40], y[:40], "softmax", opt)
        assert (model._compiled_step(X[:40].astype(F32), SoftmaxCrossEntropy(), opt) is None) == twin
        runs.append((hist["loss"], hist["accuracy"], after, param_copies(model)))
    assert runs[0][:3] == runs[1][:3]
    for a, b in zip(runs[0][3], runs[1][3]):
        assert_same_bits(a, b)


def test_a_front_layer_of_another_dtype_takes_the_layer_path():
    """A front layer that converts to another dtype than the Dense stack's (float64 input noise
    on a float32 stack), built so or set so after a compiled step, leaves the step to the layer
    path, which converts, before anything is drawn: the same numbers as a model built that
    way."""
    r = np.random.default_rng(2)
    X = r.standard_normal((32, 6)).astype(F32)
    y = r.integers(0, 4, 32)

    def stack(noise_dtype):
        return Sequential(GaussianNoise(0.2, seed=1, dtype=noise_dtype),
                          Dense(6, 8, activation="relu", seed=2), Dense(8, 4, seed=3))

    built = stack(F64)
    assert not built._compilable
    for compiled_first in (False, True):
        changed = stack(None)
        assert changed._compilable
        copt = SGD(changed.parameters(), lr=0.1)
        if compiled_first:
            changed.train_step(X, y, "softmax", copt)
            assert changed._compiled_step(X, SoftmaxCrossEntropy(), copt) is not None
        changed.layers[0].dtype = np.dtype(F64)
        # the reference: a copy (the noise's generator state too) that the kernel never runs
        twin = copy.deepcopy(changed)
        twin._compilable = False
        others = (twin,) if compiled_first else (twin, built)   # (built: the same start)
        values = [m.train_step(X, y, "softmax", SGD(m.parameters(), lr=0.1))
                  for m in (changed,) + others]
        assert values == [values[0]] * len(values)
        for other in others:
            for a, b in zip(param_copies(changed), param_copies(other)):
                assert_same_bits(a, b)


@pytest.mark.parametrize("what", ["grad", "adam-state"])
def test_a_changed_array_refused_before_the_front_draws(what):
    """An array the compiled plan holds, made read-only after a step: the layer path refuses it
    (a gradient in its array check, before the forward; optimizer state in the update, after
    it), and the front path does the same, drawing exactly what the layer path draws: the plan
    asks (StepPlan.check_arrays) before the front layers run. Once the array is writeable
    again, both models take the same next step."""
    r = np.random.default_rng(0)
    X = r.standard_normal((32, 6)).astype(F32)
    y = r.integers(0, 4, 32)
    losses, params = [], []
    for twin in (False, True):
        model = _front_model("relu-dropout-noise", (6, 8, 4), F32, twin)
        opt = Adam(model.parameters(), lr=1e-2)
        model.train_step(X, y, "softmax", opt)
        arr = (model.layers[3].grads["W"] if what == "grad"
               else next(iter(opt.state.values()))[0])
        arr.flags.writeable = False
        with pytest.raises(ValueError):
            model.train_step(X, y, "softmax", opt)
        arr.flags.writeable = True
        losses.append([model.train_step(X, y, "softmax", opt) for _ in range(2)])
        assert (model._compiled_step(X, SoftmaxCrossEntropy(), opt) is None) == twin
        params.append(param_copies(model))
    assert losses[0] == losses[1]
    for a, b in zip(*params):
        assert_same_bits(a, b)


@pytest.mark.parametrize("front", ["none", "kernel", "python"])
def test_a_step_that_falls_to_the_layer_path_after_its_draws_draws_once(front, monkeypatch):
    """The kernel refuses a step after its layers have drawn their seeds (an array changed
    between StepPlan.check_arrays and the step: another Python thread) and no plan can be
    built again: the layer path takes that step with the seeds already drawn, so it computes
    what the kernel would have, and each generator stands where one step leaves it. A model
    on the layer path from the start takes the same steps, bitwise, before and after."""
    from fastnn._kernels import network as kn
    r = np.random.default_rng(12)
    X = r.standard_normal((40, 6)).astype(F32)
    y = r.integers(0, 3, 40)
    results = []
    for twin in (False, True):
        fronts = {"none": [], "kernel": [Dropout(0.25, seed=60)],
                  "python": [Dropout(0.25, seed=60), GaussianNoise(0.2, seed=61)]}
        model = Sequential(*fronts[front], Dense(6, 16, activation="relu", seed=1),
                           Dropout(0.4, seed=62), Dense(16, 12, activation="tanh", seed=2),
                           GaussianNoise(0.3, seed=63), Dense(12, 3, seed=3))
        if twin:
            model._compilable = False   # (as for a model the kernel does not run)
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses = [model.train_step(X, y, "softmax", opt)]
        if not twin:
            compiled = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
            assert compiled.plan.hidden_kinds == (1, 2)
            assert (compiled.front is not None) == (front == "kernel")
            refused = []

            def refuse(*args, **kwargs):
                refused.append(True)
                raise kn.ArraysChanged("changed by another thread (test)")

            def no_plan(X, loss, optimizer):
                model._compiled.clear()
                return None

            monkeypatch.setattr(compiled, "run", refuse)
            monkeypatch.setattr(model, "_rebuilt_step", no_plan)
        losses.append(model.train_step(X, y, "softmax", opt))
        if not twin:
            assert refused == [True]
            monkeypatch.undo()
            assert all(layer._drawn is None for layer in model.layers
                       if isinstance(layer, (Dropout, GaussianNoise)))
        losses += [model.train_step(X, y, "softmax", opt) for _ in range(2)]
        if not twin:
            assert model._compiled_step(X, SoftmaxCrossEntropy(), opt) is not None
        results.append((losses, param_copies(model)))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        assert_same_bits(a, b)


def test_seeds_handed_to_a_layer_path_that_fails_are_dropped(monkeypatch):
    """The same fallback, the layer path raising before any layer ran: the seeds handed over
    are dropped with the step (as the layer path's own draws are when it fails), and the
    next step draws from the generators, as a model on the layer path whose step failed at
    the same point does."""
    from fastnn._kernels import network as kn
    r = np.random.default_rng(13)
    X = r.standard_normal((24, 5)).astype(F32)
    y = r.integers(0, 3, 24)
    results = []
    for twin in (False, True):
        model = Sequential(Dropout(0.3, seed=70), Dense(5, 9, activation="relu", seed=1),
                           GaussianNoise(0.2, seed=71), Dense(9, 3, seed=2))
        if twin:
            model._compilable = False
        opt = SGD(model.parameters(), lr=0.1)
        losses = [model.train_step(X, y, "softmax", opt)]
        noisy = [layer for layer in model.layers if isinstance(layer, (Dropout, GaussianNoise))]
        # the failed step: each generator has moved one draw (the kernel's draws, or the
        # layer path's own before it failed)
        if twin:
            for layer in noisy:
                layer._rng.integers(0, 2**63 - 1)
        else:
            compiled = model._compiled_step(X, SoftmaxCrossEntropy(), opt)

            def refuse(*args, **kwargs):
                raise kn.ArraysChanged("changed by another thread (test)")

            def no_plan(X, loss, optimizer):
                model._compiled.clear()
                return None

            def fails(*args, **kwargs):
                assert [layer._drawn is not None for layer in noisy] == [True, True]
                raise RuntimeError("the layer path failed (test)")

            monkeypatch.setattr(compiled, "run", refuse)
            monkeypatch.setattr(model, "_rebuilt_step", no_plan)
            monkeypatch.setattr(model, "_layer_step", fails)
            with pytest.raises(RuntimeError, match="layer path failed"):
                model.train_step(X, y, "softmax", opt)
            monkeypatch.undo()
            assert [layer._drawn for layer in noisy] == [None, None]
        losses += [model.train_step(X, y, "softmax", opt) for _ in range(2)]
        results.append((losses, param_copies(model)))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        assert_same_bits(a, b)


def test_dropout_and_noise_pickled_before_handed_seeds_train():
    """A Dropout or GaussianNoise pickled before layers kept a handed-over seed (no _drawn in
    its state) loads and trains, on the kernel and on the layer path, as one pickled now."""
    import pickle

    X = np.random.default_rng(3).standard_normal((16, 6)).astype(F32)
    y = np.arange(16) % 3
    for layer_path in (False, True):
        model = Sequential(GaussianNoise(0.1, seed=5), Dense(6, 16, activation="relu", seed=1),
                           Dropout(0.4, seed=62), Dense(16, 3, seed=3))
        fresh = pickle.loads(pickle.dumps(model))
        aged = pickle.loads(pickle.dumps(model))
        for layer in aged.layers:
            layer.__dict__.pop("_drawn", None)
        assert not any("_drawn" in vars(layer) for layer in aged.layers)
        values = []
        for m in (aged, fresh):
            if layer_path:
                m._compilable = False
            opt = SGD(m.parameters(), lr=0.1)
            values.append([m.train_step(X, y, "softmax", opt) for _ in range(2)])
            assert (m._compiled_step(X, SoftmaxCrossEntropy(), opt) is None) == layer_path
        assert values[0] == values[1]
        for a, b in zip(param_copies(aged), param_copies(fresh)):
            assert_same_bits(a, b)
        assert aged.layers[0].forward(X, training=True).shape == X.shape


def test_a_front_dtype_set_after_the_build_builds_no_plan_per_step():
    """A front layer's dtype set to another than the stack's after a compiled step: the model's
    dtype follows it, so each step's X is of that dtype, and the plan of the stack's dtype was
    built and dropped at every step (the step then took the layer path anyway). Now no plan
    is built while it lasts, and the first step back on the stack's dtype builds one again."""
    r = np.random.default_rng(1)
    X = r.standard_normal((16, 6)).astype(F32)
    y = r.integers(0, 4, 16)
    model = Sequential(GaussianNoise(0.2, seed=1), Dense(6, 8, activation="relu", seed=2),
                       Dense(8, 4, seed=3))
    opt = SGD(model.parameters(), lr=0.1)
    model.train_step(X, y, "softmax", opt)
    assert len(model._compiled) == 1
    model.layers[0].dtype = np.dtype(F64)
    builds = []
    real = fmodel._CompiledStep.__init__

    def counting(self, *args):
        builds.append(1)
        real(self, *args)
    fmodel._CompiledStep.__init__ = counting
    try:
        for _ in range(3):
            assert np.isfinite(model.train_step(X, y, "softmax", opt))
        assert builds == [] and not model._compiled
        model.layers[0].dtype = None
        model.train_step(X, y, "softmax", opt)
        assert builds == [1] and model._compiled_step(X, SoftmaxCrossEntropy(), opt) is not None
    finally:
        fmodel._CompiledStep.__init__ = real


def test_a_model_pickled_before_front_layers_trains():
    """A Sequential pickled before the front layers ran ahead of the kernel has no _front in
    its state: it loads and trains (an AttributeError at the first step before), as the same
    model pickled now."""
    import pickle

    X = np.random.default_rng(2).standard_normal((8, 6)).astype(F32)
    y = np.arange(8) % 4
    model = Sequential(Dense(6, 8, activation="relu", seed=2), Dense(8, 4, seed=3))
    old = model.__getstate__()
    del old["_front"]
    aged = Sequential.__new__(Sequential)
    aged.__setstate__(old)
    fresh = pickle.loads(pickle.dumps(model))
    values = [m.train_step(X, y, "softmax", SGD(m.parameters(), lr=0.1)) for m in (aged, fresh)]
    assert values[0] == values[1]
    for a, b in zip(param_copies(aged), param_copies(fresh)):
        assert_same_bits(a, b)


# ============================================================================ dropout between Dense layers
# A Dropout between two Dense layers runs inside the whole-step kernel: the kernel keeps its
# output (act * mask / keep) for the layer above, and its backward goes into the dx tiles
# before the activation derivative below. Its seed is drawn in Python from the layer's
# generator, as Dropout.forward draws it, so the numbers are the layer path's.
def _hidden_model(widths, dtype, hidden="relu", ps=(0.3, 0.5), front=False, twin=False,
                  noise=False):
    """Dense layers of widths with FUSED_HIDDEN[hidden] activations and a Dropout(ps[i]) after
    each hidden one (ps cycled); noise: a GaussianNoise(ps[i]) instead after the first hidden
    layer and every second one after it; front: input dropout and noise in front as well;
    twin: the same model on the layer path."""
    layers = [Dropout(0.2, seed=40), GaussianNoise(0.1, seed=41)] if front else []
    n = len(widths) - 1
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(Dense(a, b, seed=30 + i, dtype=dtype))
        if i < n - 1:
            layers += FUSED_HIDDEN[hidden](dtype)
            kind = GaussianNoise if noise and i % 2 == 0 else Dropout
            layers.append(kind(ps[i % len(ps)], seed=50 + i, dtype=dtype if i % 2 else None))
    model = Sequential(*layers)
    if twin:
        model._compilable = False
    return model


HIDDEN_SIZES = ["small", "chunked", "chunked-turns", "chunked-4-turns", "tiled", "deep"]
# (tiled-narrow: a hidden layer of 12,480 elements on the tiled path, whose noise takes a
# second thread in chunks of NOISE_CHUNK, where one of FNN_CHUNK would hold it all)


@pytest.mark.parametrize("width,threaded", [(85, False), (86, True), (130, True)])
def test_hidden_noise_of_two_noise_chunks_takes_a_thread_in_the_kernel(width, threaded):
    """On the tiled path the kernel's hidden noise runs in chunks of 4096 values on a second
    thread from 8192 values on (NOISE_CHUNK, NOISE_COST): a step with the noise on starts one
    parallel region more than the same step with std 0 when the layer holds 96 x 86 = 8256
    values or more, none more at 96 x 85 = 8160 (a chunk of 16384 would hold all three)."""
    import fastnn
    from fastnn import _threads
    from fastnn._kernels import _config as _kconfig
    from fastnn._kernels import network as kn

    n = 96
    r = np.random.default_rng(17)
    X = r.standard_normal((n, 300)).astype(F32)
    y = r.integers(0, 10, n)
    model = Sequential(Dense(300, width, activation="relu", seed=1), GaussianNoise(0.3, seed=2),
                       Dense(width, 10, seed=3))
    opt = SGD(model.parameters(), lr=0.01)
    regions = {}
    with _threads._dynamic_set(False), fastnn.threads(2):
        for std in (0.3, 0.0, 0.3):
            model.layers[1].std = std
            model.train_step(X, y, "softmax", opt)
            before = kn.parallel_regions()
            model.train_step(X, y, "softmax", opt)
            regions[std] = kn.parallel_regions() - before
    step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
    assert step is not None and step.plan.chunk_rows == 0 and step.plan.hidden_kinds == (2,)
    more = 1 if threaded and _kconfig.openmp_enabled() else 0
    assert regions[0.3] == regions[0.0] + more, regions


@pytest.mark.parametrize("size", HIDDEN_SIZES)
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("hidden", list(FUSED_HIDDEN))
def test_hidden_dropout_runs_inside_the_whole_step_kernel(hidden, dtype, size):
    """Dense stacks with a Dropout after every hidden layer train on the whole-step kernel,
    over the whole batch, in row chunks (with the updates in the chunks' region) and in tiles,
    bitwise as on the layer path (losses, parameters, gradients) at 1, 2, 3 and 16 threads,
    for every fusable hidden activation."""
    n, widths = FUSED_SIZES[size]
    r = np.random.default_rng(6)
    X = r.standard_normal((n, widths[0])).astype(dtype)
    y = r.integers(0, widths[-1], n)

    def run(twin=False):
        model = _hidden_model(widths, dtype, hidden, twin=twin)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        losses = [model.train_step(X, y, "softmax", opt) for _ in range(3)]
        step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
        assert (step is None) == twin
        if not twin:
            assert step.plan.dropout_layers == tuple(range(len(widths) - 2))
            assert step.plan.hidden_kinds == (1,) * (len(widths) - 2)
            assert (step.plan.chunk_rows > 0) == size.startswith("chunked")
        assert all(getattr(layer, "_cache", None) is None for layer in model.layers)
        return losses, param_copies(model), [p.grad.copy() for p in model.parameters()]

    _compiled_matches_layerwise(run)


@pytest.mark.parametrize("size", HIDDEN_SIZES + ["tiled-narrow"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("hidden", ["relu", "leaky_relu_negative", "tanh"])
def test_hidden_noise_runs_inside_the_whole_step_kernel(hidden, dtype, size):
    """GaussianNoise between two Dense layers (and Dropout between the next two, on the deeper
    stacks) trains on the whole-step kernel: the layer above reads the noisy output, the
    gradient passes through the noise unchanged to the activation derivative below (taken
    from the noise-free activations), bitwise as on the layer path at 1, 2, 3 and 16
    threads, over the whole batch, in row chunks and in tiles."""
    n, widths = FUSED_SIZES[size]
    r = np.random.default_rng(16)
    X = r.standard_normal((n, widths[0])).astype(dtype)
    y = r.integers(0, widths[-1], n)

    def run(twin=False):
        model = _hidden_model(widths, dtype, hidden, ps=(0.4, 0.3), twin=twin, noise=True)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        losses = [model.train_step(X, y, "softmax", opt) for _ in range(3)]
        step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
        assert (step is None) == twin
        if not twin:
            assert step.plan.hidden_kinds == tuple(2 if i % 2 == 0 else 1
                                                   for i in range(len(widths) - 2))
            assert (step.plan.chunk_rows > 0) == size.startswith("chunked")
        assert all(getattr(layer, "_cache", None) is None for layer in model.layers)
        return losses, param_copies(model), [p.grad.copy() for p in model.parameters()]

    _compiled_matches_layerwise(run)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("width", [7, 41])
def test_hidden_noise_over_an_odd_width_in_row_chunks(width, dtype):
    """Row chunks over an odd width start the noise's spans inside its pairs (row r's first
    element is r * width): the layer path's numbers still, bitwise. A reviewer found float64
    gradients an ulp off here, from a multiply-add the compiler fused in one branch of the
    noise kernel and not in its loop (csrc/fastnn_simd.h, FNN_NO_CONTRACT)."""
    r = np.random.default_rng(21)
    X = r.standard_normal((601, 5)).astype(dtype)
    y = r.integers(0, 3, 601)

    def run(twin=False):
        model = Sequential(Dense(5, width, activation="relu", seed=1, dtype=dtype),
                           GaussianNoise(0.5, seed=2), Dense(width, 3, seed=3, dtype=dtype))
        if twin:
            model._compilable = False
        opt = SGD(model.parameters(), lr=0.05)
        losses = [model.train_step(X, y, "softmax", opt) for _ in range(3)]
        step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
        assert (step is None) == twin
        if not twin:
            assert step.plan.chunk_rows > 0
        return losses, param_copies(model), [p.grad.copy() for p in model.parameters()]

    _compiled_matches_layerwise(run)


@pytest.mark.parametrize("size", ["small", "chunked", "tiled"])
@pytest.mark.parametrize("kind", ["dropout", "noise"])
def test_hidden_layers_with_a_front_and_a_changed_setting(kind, size):
    """Input dropout and noise in front and dropouts (kind "noise": a GaussianNoise, then a
    Dropout) between the layers, with Adam: the layer path's numbers, also after the first
    hidden layer's p or std is set to 0 (no draw: it passes its input on, inside the kernel
    too) and to another value between steps (read at each step)."""
    n, widths = FUSED_SIZES[size]
    if kind == "noise" and len(widths) < 4:
        widths = widths[:1] + (24,) + widths[1:]   # (room for a Dropout above the noise)
    r = np.random.default_rng(8)
    X = r.standard_normal((n, widths[0])).astype(F32)
    y = r.integers(0, widths[-1], n)
    layer_type, name, values = ((Dropout, "p", (0.4, 0.0, 0.7)) if kind == "dropout" else
                                (GaussianNoise, "std", (0.4, 0.0, 1.5)))

    def run(twin=False):
        model = _hidden_model(widths, F32, "tanh" if kind == "dropout" else "relu", ps=(0.4,),
                              front=True, twin=twin, noise=kind == "noise")
        first = [layer for layer in model.layers[2:] if type(layer) is layer_type][0]
        opt = Adam(model.parameters(), lr=1e-2)
        losses = []
        for v in values:
            setattr(first, name, v)
            losses += [model.train_step(X, y, "softmax", opt) for _ in range(2)]
        step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
        assert (step is None) == twin
        if not twin and kind == "noise":
            assert step.plan.hidden_kinds[:2] == (2, 1)
        return losses, param_copies(model), [p.grad.copy() for p in model.parameters()]

    _compiled_matches_layerwise(run)


@pytest.mark.parametrize("noise", [False, True], ids=["dropout", "noise-and-dropout"])
@pytest.mark.parametrize("loss,kind", [("svm", "classes"), ("logistic", "01"), ("mse", "real")])
def test_hidden_dropout_fit_guard_and_refused_labels_as_on_the_layer_path(loss, kind, noise):
    """fit (reseeded, under the guard that checks the loss before the backward pass, its
    accuracy counted by the kernel) gives the layer path's history and parameters; a step
    refused for a bad label has drawn the dropouts' seeds on both paths (the layer path
    draws them in its forward, before the loss sees the label)."""
    r = np.random.default_rng(3)
    X = r.standard_normal((120, 5)).astype(F32)
    y = _targets(kind, r, 120, F32)
    out = 10 if kind == "classes" else 1
    runs = []
    for twin in (False, True):
        model = _hidden_model((5, 40, 30, out), F32, "relu", twin=twin, noise=noise)
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
        hist = model.fit(X, y, optimizer=opt, loss=loss, epochs=2, batch_size=60, seed=3,
                         verbose=False)
        hist = (hist["loss"], hist.get("accuracy"))
        if kind != "real":
            bad = y[:60].copy()
            bad[7] = 10 if kind == "classes" else 2
            with pytest.raises(ValueError, match="y"):
                model.train_step(X[:60], bad, loss, opt)
        after = model.train_step(X[:60], y[:60], loss, opt)
        assert (model._compiled_step(X[:60], get_loss(loss), opt) is None) == twin
        runs.append((hist, after, param_copies(model)))
    assert runs[0][:2] == runs[1][:2]
    for a, b in zip(runs[0][2], runs[1][2]):
        assert_same_bits(a, b)


@pytest.mark.parametrize("kind", ["dropout", "noise"])
def test_a_hidden_layer_inside_the_kernel_seen_from_outside(kind):
    """What the kernel's hidden dropout or noise does, seen from outside: with one hidden
    layer of identity units and W2 = I, the scores are the hidden layer's output through the
    layer as fastnn.functional computes it from the drawn seed. A dropout's kept units are
    scaled by 1 / keep, the dropped are 0, and the first layer's weight gradient is that of
    the kept units only; a noise adds N(0, std^2) and passes the gradient on unchanged."""
    import fastnn.functional as F

    r = np.random.default_rng(0)
    X = r.standard_normal((50, 8))
    y = r.integers(0, 8, 50)
    middle = Dropout(0.5, seed=9) if kind == "dropout" else GaussianNoise(0.7, seed=9)
    model = Sequential(Dense(8, 8, seed=1, dtype=F64), middle, Dense(8, 8, seed=2, dtype=F64))
    model.layers[2].params["W"][...] = np.eye(8)
    model.layers[2].params["b"][...] = 0
    seed = int(np.random.default_rng(9).integers(0, 2**63 - 1))   # the layer's first draw
    hidden = X @ model.layers[0].params["W"] + model.layers[0].params["b"]
    if kind == "dropout":
        scores, _ = F.dropout_forward(hidden, {"p": 0.5, "mode": "train", "seed": seed})
        passed = (scores != 0) * 2.0
        assert 0.3 < (scores != 0).mean() < 0.7
    else:
        scores, _ = F.gaussian_noise_forward(hidden, 0.7, "train", seed)
        passed = 1.0
        assert 0.5 < np.std(scores - hidden) < 0.9
    value, dscores = F.softmax_loss(scores, y)
    opt = SGD(model.parameters(), lr=0.0)
    assert model.train_step(X, y, "softmax", opt) == pytest.approx(value, rel=1e-14)
    step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
    assert step is not None and step.plan.hidden_kinds == ((1,) if kind == "dropout" else (2,))
    np.testing.assert_allclose(model.layers[0].grads["W"], X.T @ (dscores * passed),
                               rtol=1e-12, atol=1e-15)


def test_hidden_dropout_where_the_kernel_does_not_take_it():
    """A Dropout or GaussianNoise above a per-unit PReLU hidden layer (the buffers path has
    neither), two in a row, one above the last Dense or one of another dtype than the stack:
    the model is not compiled (no plan is built to be refused) and trains layer by layer,
    the same run twice."""
    r = np.random.default_rng(5)
    X = r.standard_normal((32, 6)).astype(F32)
    y = r.integers(0, 4, 32)
    cases = {
        "prelu": lambda: [Dense(6, 8, activation="prelu", seed=1), Dropout(0.3, seed=2),
                          Dense(8, 4, seed=3)],
        "two": lambda: [Dense(6, 8, activation="relu", seed=1), Dropout(0.3, seed=2),
                        Dropout(0.2, seed=4), Dense(8, 4, seed=3)],
        "last": lambda: [Dense(6, 8, activation="relu", seed=1), Dense(8, 4, seed=3),
                         Dropout(0.3, seed=2)],
        "dtype": lambda: [Dense(6, 8, activation="relu", seed=1), Dropout(0.3, seed=2, dtype=F64),
                          Dense(8, 4, seed=3)],
        "prelu-noise": lambda: [Dense(6, 8, seed=1), PReLU(8), GaussianNoise(0.3, seed=2),
                                Dense(8, 4, seed=3)],
        "noise-then-dropout": lambda: [Dense(6, 8, activation="relu", seed=1),
                                       GaussianNoise(0.3, seed=2), Dropout(0.2, seed=4),
                                       Dense(8, 4, seed=3)],
        "last-noise": lambda: [Dense(6, 8, activation="relu", seed=1), Dense(8, 4, seed=3),
                               GaussianNoise(0.3, seed=2)],
        "noise-dtype": lambda: [Dense(6, 8, activation="relu", seed=1),
                                GaussianNoise(0.3, seed=2, dtype=F64), Dense(8, 4, seed=3)],
    }
    for name, make in cases.items():
        runs = []
        for twin in (False, True):
            model = Sequential(*make())
            assert not model._compilable, name   # (decided at the build: no plan is made)
            opt = SGD(model.parameters(), lr=0.1)
            runs.append(([model.train_step(X, y, "softmax", opt) for _ in range(2)],
                         param_copies(model)))
            assert model._compiled_step(X, SoftmaxCrossEntropy(), opt) is None, name
        assert runs[0][0] == runs[1][0], name
        for a, b in zip(runs[0][1], runs[1][1]):
            assert_same_bits(a, b, name)


# StepPlan.step's drops cases per plan: a Dropout between two layers; a GaussianNoise, then a
# Dropout. Each (drops, error), and an entry the plan must accept.
_DROPS_CASES = {
    "dropout": ((Dropout(0.5, seed=2),), (0,), (1,), [
        ([], ValueError), ([None, None], ValueError), ([(0.0, 1)], ValueError),
        ([(1.5, 1)], ValueError), ([(float("nan"), 1)], ValueError),
        ([(0.5, -1)], ValueError), ([(0.5, 2**64)], ValueError),
        ([(0.5, 1.0)], TypeError), ([(0.5, True)], TypeError),
        ([0.5], TypeError), ([(0.5, 1, 2)], TypeError)], [(0.5, 7)]),
    "noise-then-dropout": ((GaussianNoise(0.5, seed=2), Dense(6, 5, activation="tanh", seed=3),
                            Dropout(0.5, seed=4)), (0, 1), (2, 1), [
        ([(0.0, 1), None], ValueError), ([(-1.0, 1), None], ValueError),
        ([(float("inf"), 1), None], ValueError), ([(float("nan"), 1), None], ValueError),
        ([None, (1.5, 1)], ValueError),   # (a keep probability for the dropout)
        ([("0.5", 1), None], TypeError), ([(True, 1), None], TypeError),
        ([(0.5, 1.0), None], TypeError), ([None], ValueError)],
        [(1.5, 7), (0.5, 8)]),   # (a std above 1 is a std, not a keep probability)
}


@pytest.mark.parametrize("case", list(_DROPS_CASES))
def test_step_plan_drops_are_checked(case):
    """StepPlan.step's drops (a dropout's (keep, seed), a noise's (std, seed), or None, one
    per layer of dropout_layers) are checked before anything runs: a wrong count, a keep
    probability outside (0, 1] or NaN, a std that is not finite and positive, a keep or std
    that is not a real number, a seed that is not an int or not in [0, 2**64) are refused
    naming drops, and the plan's parameters are untouched; a valid entry is taken."""
    middle, layers, kinds, bad, good = _DROPS_CASES[case]
    width = 6 if len(middle) == 1 else 5
    model = Sequential(Dense(4, 6, activation="relu", seed=1), *copy.deepcopy(middle),
                       Dense(width, 3, seed=5))
    X = np.random.default_rng(0).standard_normal((10, 4)).astype(F32)
    y = np.arange(10) % 3
    opt = SGD(model.parameters(), lr=0.1)
    model.train_step(X, y, "softmax", opt)
    plan = model._compiled_step(X, SoftmaxCrossEntropy(), opt).plan
    assert plan.dropout_layers == layers and plan.hidden_kinds == kinds
    before = param_copies(model)
    args = (X, y.astype(np.intp), None, 0.1, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1)
    for drops, err in bad:
        with pytest.raises(err, match="drops"):
            plan.step(*args, drops=drops)
    for a, b in zip(before, param_copies(model)):
        assert_same_bits(a, b)
    plan.step(*args, drops=good)


@pytest.mark.parametrize("size", ["small", "chunked", "tiled"])
@pytest.mark.parametrize("front", ["dropout", "noise"])
def test_a_front_inside_the_kernel_reads_its_settings_each_step(front, size):
    """A front Dropout or GaussianNoise inside the kernel, with dropouts between the layers:
    its p or std is read at each step (0: no draw, X goes in as it is), as on the layer path,
    bitwise, on a float64 stack and at 1-16 threads."""
    n, widths = FUSED_SIZES[size]
    r = np.random.default_rng(12)
    X = r.standard_normal((n, widths[0]))
    y = r.integers(0, widths[-1], n)

    def run(twin=False):
        model = _hidden_model(widths, F64, "sigmoid", ps=(0.25,), twin=twin)
        layer = Dropout(0.3, seed=60) if front == "dropout" else GaussianNoise(0.2, seed=60)
        model.layers.insert(0, layer)
        if twin:
            model._build()   # (the layer list changed: the build sets _compilable again)
            model._compilable = False
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for v in (0.3, 0.0, 0.6):
            setattr(layer, "p" if front == "dropout" else "std", v)
            losses += [model.train_step(X, y, "softmax", opt) for _ in range(2)]
        step = model._compiled_step(X, SoftmaxCrossEntropy(), opt)
        assert (step is None) == twin
        if not twin:
            assert step.plan.input_kind == (1 if front == "dropout" else 2)
        return losses, param_copies(model), [p.grad.copy() for p in model.parameters()]

    _compiled_matches_layerwise(run)


def test_step_plan_front_is_checked():
    """StepPlan.step's front ((keep or std, seed) or None) is checked before anything runs:
    for a plan without an input layer, a keep probability outside (0, 1], a std that is not
    finite and positive, a seed that is not an int in [0, 2**64), refused naming front."""
    X = np.random.default_rng(0).standard_normal((10, 4)).astype(F32)
    y = np.arange(10) % 3
    plans = {}
    for name, first in (("none", []), ("dropout", [Dropout(0.5, seed=1)]),
                        ("noise", [GaussianNoise(0.5, seed=1)])):
        model = Sequential(*first, Dense(4, 6, activation="relu", seed=1), Dense(6, 3, seed=3))
        opt = SGD(model.parameters(), lr=0.1)
        model.train_step(X, y, "softmax", opt)
        plans[name] = (model, model._compiled_step(X, SoftmaxCrossEntropy(), opt).plan)
    assert [p.input_kind for _, p in plans.values()] == [0, 1, 2]
    args = (X, y.astype(np.intp), None, 0.1, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1)
    cases = [("none", (0.5, 1), ValueError), ("dropout", (0.0, 1), ValueError),
             ("dropout", (1.5, 1), ValueError), ("noise", (0.0, 1), ValueError),
             ("noise", (float("inf"), 1), ValueError), ("noise", (float("nan"), 1), ValueError),
             ("dropout", (0.5, -1), ValueError), ("noise", (0.5, 2**64), ValueError),
             ("dropout", (0.5, 1.0), TypeError), ("noise", [0.5, 1], TypeError),
             ("dropout", (0.5,), TypeError), ("noise", ("0.5", 1), TypeError),
             ("dropout", (None, 1), TypeError), ("dropout", (True, 1), TypeError)]
    for name, front, err in cases:
        model, plan = plans[name]
        before = param_copies(model)
        with pytest.raises(err, match="front"):
            plan.step(*args, front=front)
        for a, b in zip(before, param_copies(model)):
            assert_same_bits(a, b)
