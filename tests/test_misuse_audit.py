"""Misuse found by the eighteenth session's audits, which used to compute something else, take
gigabytes, or fail with an error naming nothing:

- a model file whose parameter arrays have a zero-byte dtype (any shape in no bytes: the
  layer was built, gigabytes, before the dtype was refused; test_serialization);
- an optimizer listing a parameter twice (updated twice per step), and Optimizer.step with a
  gradient of another shape, dtype or type (applied in the wrong layout, or raising half way
  through the step after earlier parameters were updated);
- Sequential's default-init re-draw of a Dense's W replaced by None, deleted, or frozen
  read-only; a missing params entry at predict (KeyError);
- a training step whose X is the model's own parameter or gradient array (the step wrote it
  while it still read X: other numbers, and on two threads a race);
- Solver, dataset, model and gradcheck arguments that gave NumPy's errors or MemoryError.

And by the twenty-eighth session's (the tests at the end):

- optimizer state edited to share memory with other state, a parameter or a gradient (Adam's
  m and v one array: NaN weights; the kernels write state in place while they read the rest);
- Adam's t set beyond float range (OverflowError, and t moved), FullyConnectedNet's
  dropout_keep_ratio of 10**400 (OverflowError), a model's reg set after construction to a
  negative, NaN or None value (taken, or an error naming nothing);
- dropout and noise modes given as arrays, a ragged course mask, rel_error of shapes that do
  not broadcast, a dtype spec NumPy refuses with ValueError, and grad_check_sparse with an f
  returning a complex number (all NumPy's errors, or a silent answer).
"""
import numpy as np
import pytest

import fastnn
from fastnn import SGD, Adam, Dense, ReLU, RMSProp, Sequential
from fastnn import datasets as D
from fastnn import functional as F
from fastnn import gradcheck as G
from fastnn._kernels import network as kn

F32 = np.float32


def _net(seed=0):
    return Sequential(Dense(5, 7, activation="relu", seed=seed), Dense(7, 3, seed=seed + 1))


def _data(n=16, d=5, c=3, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, d)).astype(F32), r.integers(0, c, n)


def _with_grads(model):
    X, y = _data()
    model.forward(X, training=True)
    model.backward(np.ones((X.shape[0], 3), F32))
    return model


# -- optimizers

def test_an_optimizer_refuses_a_parameter_listed_twice():
    shared = Dense(5, 7, activation="relu", seed=0)
    a = Sequential(shared, Dense(7, 3, seed=1))
    b = Sequential(shared, Dense(7, 2, seed=2))
    for make in (SGD, Adam, RMSProp):
        with pytest.raises(ValueError, match=r"params\[4\] \(W of Dense.*listed twice"):
            make(a.parameters() + b.parameters())
    opt = SGD(a.parameters())
    with pytest.raises(ValueError, match="listed twice"):
        opt.params = a.parameters() + a.parameters()[:1]   # (checked when set, like lr)
    assert len(opt.params) == 4
    opt.params = a.parameters() + b.parameters()[2:]   # each once: taken
    assert len(opt.params) == 6


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1), lambda p: SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: RMSProp(p), lambda p: Adam(p)],
                         ids=["sgd", "momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("bad, error, match", [
    (np.arange(21, dtype=F32).reshape(3, 7), ValueError, r"shape \(7, 3\) and dtype float32, got \(3, 7\)"),
    (np.zeros((7, 3), np.float64), ValueError, "dtype float32, got .* float64"),
    (None, TypeError, "gradient of parameter W must be a numpy.ndarray, got NoneType"),
    ("delete", ValueError, "grads has no entry 'W'"),
], ids=["transposed", "float64", "none", "missing"])
def test_optimizer_step_checks_every_gradient_before_any_update(make, bad, error, match):
    """The last layer's W gradient is bad: the step raises naming it, and no parameter, state
    or step count changed (the first layer's parameters come first in the list)."""
    model = _with_grads(_net())
    opt = make(model.parameters())
    last = model.layers[1]
    if isinstance(bad, str):
        del last.grads["W"]
    else:
        last.grads["W"] = bad
    before = [p.data.copy() for p in opt.params[:2]]
    with pytest.raises(error, match=match):
        opt.step()
    assert all(np.array_equal(p.data, b) for p, b in zip(opt.params[:2], before))
    # (state made for the parameters checked before the bad one is fresh state: zeros)
    assert all(not a.any() for st in opt.state.values() for a in st)
    assert getattr(opt, "t", 0) == 0
    last.grads["W"] = np.zeros((7, 3), F32)
    opt.step()   # mended: it steps
    assert not np.array_equal(opt.params[0].data, before[0])


def test_optimizer_step_takes_a_non_contiguous_gradient_of_the_right_shape():
    model = _with_grads(_net())
    twin = _with_grads(_net())
    g = model.layers[0].grads["W"]
    model.layers[0].grads["W"] = np.asfortranarray(g)
    SGD(model.parameters(), lr=0.1).step()
    SGD(twin.parameters(), lr=0.1).step()
    assert all(np.array_equal(p.data, q.data) for p, q in zip(model.parameters(), twin.parameters()))


# -- layers

@pytest.mark.parametrize("how", ["none", "list", "delete", "frozen"])
def test_sequential_leaves_a_replaced_default_W_for_the_step_to_name(how):
    """Dense + ReLU re-draws a default-initialized W with He; a W that is not the layer's
    writeable array of its shape is left as it is (frozen: kept), and the step names it."""
    X, y = _data()
    d = Dense(5, 7, seed=0)
    W = d.params["W"]
    if how == "none":
        d.params["W"] = None
    elif how == "list":
        d.params["W"] = W.tolist()
    elif how == "delete":
        del d.params["W"]
    else:
        W.flags.writeable = False
    m = Sequential(d, ReLU(), Dense(7, 3, seed=1))
    if how == "frozen":
        assert d.params["W"] is W and np.array_equal(W, Dense(5, 7, seed=0).params["W"])
        m.predict(X)   # (a frozen layer predicts; training it is refused, naming it)
        with pytest.raises(ValueError, match="parameter W must be a writeable"):
            m.train_step(X, y, "softmax", SGD(m.parameters()))
        return
    with pytest.raises((TypeError, ValueError), match=r"params\['W'\]|params has no entry 'W'"):
        m.train_step(X, y, "softmax", SGD(m.parameters()))
    if how == "list":   # (predict takes what fastnn.functional takes: a list converts)
        np.testing.assert_allclose(m.predict(X), np.maximum(X @ W, 0) @ m.layers[2].params["W"],
                                   rtol=1e-5, atol=1e-6)
        return
    with pytest.raises((TypeError, ValueError), match=r"\bw\b|params has no entry 'W'"):
        m.predict(X)


def test_the_default_W_of_a_writeable_array_is_still_redrawn_with_he():
    m = Sequential(Dense(50, 40, seed=3), ReLU())
    xavier = Dense(50, 40, seed=3).params["W"]
    he = fastnn.init.get_initializer(None, "relu")((50, 40), np.random.default_rng(3), F32)
    assert np.array_equal(m.layers[0].params["W"], he) and not np.array_equal(xavier, he)


@pytest.mark.parametrize("layer, name", [(Dense(5, 3), "W"), (Dense(5, 3), "b"),
                                         (fastnn.Maxout(5, 3), "W"), (fastnn.PReLU(), "alpha")])
def test_predict_names_a_missing_parameter_entry(layer, name):
    X, _ = _data()
    m = Sequential(Dense(5, 5), layer) if name == "alpha" else Sequential(layer)
    del layer.params[name]
    with pytest.raises(ValueError, match=f"{type(layer).__name__}.params has no entry '{name}'"):
        m.predict(X)


@pytest.mark.parametrize("make, match", [
    (lambda: Dense(2**30, 2**30), r"in_features x out_features = 1073741824 x 1073741824"),
    (lambda: fastnn.Maxout(2**30, 2**30, pieces=8), r"x pieces = 1073741824 x 1073741824 x 8"),
    (lambda: fastnn.models.FullyConnectedNet([2**40], input_dim=5), r"hidden_dims\[0\] must be below 2\*\*31"),
    (lambda: fastnn.models.FullyConnectedNet([2**30], input_dim=2**30), r"W1 of shape \(1073741824, 1073741824\)"),
    (lambda: fastnn.models.TwoLayerNet(2**31, 2, 3), r"input_dim must be below 2\*\*31"),
])
def test_weights_too_large_for_an_array_are_refused_naming_the_sizes(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- a training step's input that is the model's own array

def _deep(seed=0, widths=(64, 64, 64, 10)):
    a, b, c, d = widths
    return Sequential(Dense(a, b, activation="relu", seed=seed),
                      Dense(b, c, activation="relu", seed=seed + 1), Dense(c, d, seed=seed + 2))


# The first two tests below step on a batch of 128 rows, which runs in two row chunks of 64
# (a batch under 2 * chunk_min_rows rows runs unchunked). Every layer of the first one's
# network has more inputs than that, so their chunks take turns and the step updates in the
# chunks' own parallel region, where the race that test looks for would be.
CHUNKED_BATCH = 128


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("compiled", [True, False], ids=["whole-step", "layer-path"])
@pytest.mark.parametrize("source", ["W1", "dW1", "velocity W1"])
def test_a_step_on_the_models_own_array_computes_what_it_would_on_a_copy(source, compiled, threads):
    """X is the second layer's weights, their gradient or their velocity (128 x 96: a batch of
    128 rows, in two row chunks), which the step writes while it still reads X: it steps on a
    copy, as NumPy copies overlapping operands. The gradient is written before X's last read
    on every path, so those cases fail without the copy every time. Weights and state are
    written by the updates: only on the whole-step path with the updates in the chunks'
    region, on two or three threads, can one come before X's last read (a race these cases
    catch only when the timing allows; one thread or the layer path updates after all
    reads)."""
    from fastnn._kernels import dense as _kd

    n, widths = CHUNKED_BATCH, (96, CHUNKED_BATCH, 96, 10)   # (X: W1, 128 x 96)
    assert [_kd.layer_chunk_rows(n, a, b) for a, b in zip(widths[:-1], widths[1:])] == [64] * 3
    y = np.arange(n) % 10
    runs = []
    for alias in (False, True):
        m = _deep(widths=widths)
        m._compilable = compiled
        opt = SGD(m.parameters(), lr=0.1, momentum=0.9)
        m.layers[1].grads["W"][...] = np.random.default_rng(1).standard_normal(widths[1:3])
        losses = []
        with fastnn.threads(threads):
            for _ in range(3):
                if source == "W1":
                    arr = m.layers[1].params["W"]
                elif source == "dW1":
                    arr = m.layers[1].grads["W"]
                else:
                    arr = opt.state.get((id(m.layers[1]), "W"), [m.layers[1].params["W"]])[0]
                losses.append(m.train_step(arr if alias else arr.copy(), y, "softmax", opt))
        runs.append((losses, [p.data.copy() for p in m.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.parametrize("threads", [1, 2])
def test_mse_targets_that_are_a_gradient_are_read_as_a_copy(threads):
    """The targets are the last layer's weight gradient (128 x 10), on a batch of 128 rows in
    two row chunks: the second chunk's loss would read them after the first chunk's backward
    wrote that gradient."""
    from fastnn._kernels import dense as _kd

    n, widths = CHUNKED_BATCH, (64, 64, CHUNKED_BATCH, 10)   # (the targets: dW2, 128 x 10)
    assert [_kd.layer_chunk_rows(n, a, b) for a, b in zip(widths[:-1], widths[1:])] == [64] * 3
    X = np.random.default_rng(0).standard_normal((n, widths[0])).astype(F32)
    runs = []
    for alias in (False, True):
        m = _deep(widths=widths)
        m.layers[2].grads["W"][...] = np.random.default_rng(2).standard_normal(widths[2:])
        opt = SGD(m.parameters(), lr=0.01)
        with fastnn.threads(threads):
            losses = []
            for _ in range(3):
                t = m.layers[2].grads["W"]
                losses.append(m.train_step(X, t if alias else t.copy(), "mse", opt))
        runs.append((losses, [p.data.copy() for p in m.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_the_manual_loop_reads_an_input_or_dout_that_is_a_gradient_as_a_copy():
    """model.forward(X) / model.backward(dout) with X the second layer's weight gradient, or
    dout the last layer's: backward writes them before it reads X or dout for the last time."""
    for which in ("X", "dout"):
        res = []
        for alias in (False, True):
            m = _deep()
            m.layers[1].grads["W"][...] = np.random.default_rng(1).standard_normal((64, 64))
            m.layers[2].grads["W"][...] = np.random.default_rng(2).standard_normal((64, 10))
            X = np.random.default_rng(0).standard_normal((64, 64)).astype(F32)
            d = np.ones((64, 10), F32)
            if which == "X":
                X = m.layers[1].grads["W"] if alias else m.layers[1].grads["W"].copy()
            else:
                d = m.layers[2].grads["W"] if alias else m.layers[2].grads["W"].copy()
            m.forward(X, training=True)
            dx = m.backward(d)
            res.append([dx] + [g.copy() for layer in m.layers for g in layer.grads.values()])
        assert all(np.array_equal(a, b) for a, b in zip(*res)), which


@pytest.mark.parametrize("how", ["own", "other"])
def test_optimizer_step_reads_a_gradient_that_is_a_parameter_as_a_copy(how):
    """A gradient that is (part of) its own parameter, shifted by one entry, or another
    parameter's array that is updated before it: the update uses the gradient as it was."""
    a, b = Dense(8, 8, seed=0), Dense(8, 8, seed=1)
    if how == "own":
        buf = np.zeros(65, F32)
        buf[1:] = a.params["W"].ravel()
        a.params["W"], a.grads["W"] = buf[1:].reshape(8, 8), buf[:64].reshape(8, 8)
        G = a.grads["W"].copy()
    else:
        a.grads["W"] = G = np.full((8, 8), 0.25, F32)
        b.grads["W"] = a.params["W"]   # (b's W is updated after a's: it reads a's W as it was)
        G2 = a.params["W"].copy()
    W0 = [a.params["W"].copy(), b.params["W"].copy()]
    SGD(a.parameters() + b.parameters(), lr=0.5).step()
    assert np.array_equal(a.params["W"], W0[0] - np.float32(0.5) * G)
    if how == "other":
        assert np.array_equal(b.params["W"], W0[1] - np.float32(0.5) * G2)


def test_meeting_lists_the_arrays_that_meet_any_other():
    a = np.zeros((10, 10))
    assert kn.meeting([a[:2], a[5:], np.zeros(3), None, a[2:3, 5]], [a[2:5]]) == [4]
    assert kn.meeting([a[:2], a[5:], a[9, :3], a[9, 4:]], [a[2:5], a[:, 3]]) == [0, 1, 2]
    assert kn.meeting([a[2:3]], [a[::-1][7:8]]) == [0] and kn.meeting([], [a]) == []
    assert kn.meeting([a], []) == [] and kn.meeting([a[:0]], [a]) == []


def test_shares_bytes_compares_the_extents_of_any_strides():
    a = np.zeros((10, 10))
    assert kn.shares_bytes(a[2:4], [None, a])
    assert not kn.shares_bytes(a[:5], [a[5:]])
    assert kn.shares_bytes(a[::-1][:4], [a[:7]]) and not kn.shares_bytes(a[::-1][:3], [a[:7]])
    assert kn.shares_bytes(a[:, 3], [a[9, :3]]) and not kn.shares_bytes(a[:, 3], [a[9, 4:]])
    assert not kn.shares_bytes(a[:0], [a]) and not kn.shares_bytes(a, [a[3:3]])
    assert not kn.shares_bytes(a, [np.zeros(3), "not an array"])


# -- other arguments

@pytest.mark.parametrize("call, error, match", [
    (lambda: D.circle(10, noise=1e39, seed=0), ValueError, "noise = 1e\\+39 takes points to "),
    (lambda: D.spiral(10, noise=1e308, seed=0), ValueError, "noise = 1e\\+308 takes points to "),
    (lambda: D.spiral(n_per_class=10**12), ValueError, r"n_per_class must be below 2\*\*31"),
    (lambda: D.spiral(n_per_class=2**20, n_classes=2**12), ValueError, "n_per_class \\* n_classes"),
    (lambda: D.circle(10**13), ValueError, r"n must be below 2\*\*31"),
    (lambda: D.regression_1d(10**13), ValueError, r"n must be below 2\*\*31"),
    (lambda: D.circle(inner=np.array(["ring", "disk"])), ValueError, "inner must be 'ring' or 'disk'"),
    (lambda: G.eval_numerical_gradient(None, np.ones(2), verbose=False), TypeError, "f must be a callable"),
    (lambda: G.eval_numerical_gradient_array(3, np.ones(2), np.ones(2)), TypeError, "f must be a callable"),
    (lambda: G.grad_check_sparse("f", np.ones(2), np.ones(2)), TypeError, "f must be a callable"),
    (lambda: G.eval_numerical_gradient(lambda a: a, np.ones(2), verbose=False), TypeError,
     "f must return a number"),
])
def test_arguments_that_gave_numpys_errors_name_themselves(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_datasets_within_range_are_unchanged_by_the_range_check():
    X, y = D.circle(40, noise=0.3, seed=2)
    assert np.isfinite(X).all() and X.dtype == F32 and y.shape == (40,)
    X64, _ = D.spiral(7, noise=1e300, seed=1, dtype=np.float64)   # (sin of a huge angle)
    assert np.isfinite(X64).all()


@pytest.mark.parametrize("kw, error, match", [
    ({"lr_decay": 10**400}, ValueError, "lr_decay must be a finite number"),
    ({"verbose": np.array([1, 2])}, TypeError, "verbose must be a bool"),
])
def test_solver_arguments_that_gave_numpys_errors_name_themselves(kw, error, match):
    from fastnn.models import TwoLayerNet

    r = np.random.default_rng(0)
    data = dict(X_train=r.standard_normal((20, 5)), y_train=r.integers(0, 3, 20),
                X_val=r.standard_normal((6, 5)), y_val=r.integers(0, 3, 6))
    with pytest.raises(error, match=match):
        fastnn.Solver(TwoLayerNet(5, 7, 3), data, **kw)


@pytest.mark.parametrize("k", [0, 128, 200, -1, 2**40])
def test_a_maxout_reduce_cache_with_pieces_out_of_range_is_refused(k):
    _, cache = F.maxout_reduce_forward(np.ones((2, 3, 4)))
    cache.alpha = (2, 3, k)
    with pytest.raises(ValueError, match="cache is damaged"):
        F.maxout_reduce_backward(np.ones((2, 3)), cache)


# -- fit, Solver, demo (the second round of audits)

class _OwnSGD:
    """An optimizer of the caller's own: a step() over the model's parameters, no params."""

    def __init__(self, model, lr):
        self.model, self.lr = model, lr

    def step(self):
        for p in self.model.parameters():
            p.data[...] -= self.lr * p.grad


def test_fit_takes_an_optimizer_of_the_callers_own_as_train_step_does():
    X, y = _data(n=24)
    a, b = _net(), _net()
    a.fit(X, y, optimizer=_OwnSGD(a, 0.1), epochs=2, batch_size=8, shuffle=False, verbose=False)
    opt = _OwnSGD(b, 0.1)
    for _ in range(2):
        for i in range(0, 24, 8):
            b.train_step(X[i:i + 8], y[i:i + 8], "softmax", opt)
    assert all(np.array_equal(p.data, q.data) for p, q in zip(a.parameters(), b.parameters()))
    X[3, 1] = np.nan   # (its stop check reads the model's gradients)
    with pytest.warns(RuntimeWarning, match="training stopped"):
        a.fit(X, y, optimizer=_OwnSGD(a, 0.1), epochs=1, batch_size=8, verbose=False)


def test_fit_warns_where_it_was_called():
    X, y = _data(n=16)
    X[0, 0] = np.inf
    with pytest.warns(RuntimeWarning, match="training stopped") as record:
        _net().fit(X, y, epochs=1, batch_size=8, verbose=False)
    assert record[0].filename == __file__


@pytest.mark.parametrize("bad", ["no", 2, -1, 0.0, None, np.array([True])])
def test_fit_refuses_a_shuffle_that_is_not_a_bool(bad):
    X, y = _data()
    with pytest.raises(TypeError, match="shuffle must be a bool"):
        _net().fit(X, y, shuffle=bad, verbose=False)


def test_fit_takes_a_shuffle_of_0_or_1_as_a_bool():
    """As set_dynamic: a bool, np.bool_, or the int 0 or 1 (argparse's type=int, configs)."""
    X, y = _data()
    runs = {}
    for flag in (False, np.bool_(False), 0, True, 1, np.int64(1)):
        m = _net()
        m.fit(X, y, shuffle=flag, epochs=2, batch_size=4, seed=3, verbose=False)
        runs[flag] = [p.data.copy() for p in m.parameters()]
    for group in ((False, np.bool_(False), 0), (True, 1, np.int64(1))):
        for flag in group[1:]:
            assert all(np.array_equal(a, b) for a, b in zip(runs[group[0]], runs[flag]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[False], runs[True]))


def test_solver_names_a_column_of_training_labels():
    from fastnn.models import TwoLayerNet

    r = np.random.default_rng(0)
    data = dict(X_train=r.standard_normal((20, 5)), y_train=r.integers(0, 3, (20, 1)),
                X_val=r.standard_normal((6, 5)), y_val=r.integers(0, 3, (6, 1)))
    with pytest.raises(ValueError, match=r"data\['y_train'\] must be 1-D"):
        fastnn.Solver(TwoLayerNet(5, 7, 3), data)
    data["y_train"] = data["y_train"][:, 0]   # (a column of validation labels is taken)
    fastnn.Solver(TwoLayerNet(5, 7, 3), data, num_epochs=1, verbose=False).train()


@pytest.mark.parametrize("bad", [None, 3, ["out"]])
def test_demo_names_an_out_dir_that_is_not_a_path(bad):
    from fastnn import demo

    with pytest.raises(TypeError, match="out_dir must be a folder path"):
        demo.run(out_dir=bad, steps=1)


# -- copies (the third round of audits)

_COPIES = {"deepcopy": lambda obj: __import__("copy").deepcopy(obj)}
_COPIES.update({f"pickle{k}": (lambda obj, k=k: __import__("pickle").loads(
    __import__("pickle").dumps(obj, protocol=k))) for k in range(6)})


@pytest.mark.parametrize("how", sorted(_COPIES))
@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda p: RMSProp(p, lr=0.01), lambda p: Adam(p, lr=0.01)],
                         ids=["momentum", "nesterov", "rmsprop", "adam"])
def test_a_copied_model_and_optimizer_train_on_as_the_originals(make, how):
    """The optimizer's state (keyed by id(layer), which a copy does not keep) travels with
    the copy: the copied pair's next steps are the original pair's, bit for bit."""
    X, y = _data()
    model = _net()
    opt = make(model.parameters())
    for _ in range(3):
        model.train_step(X, y, "softmax", opt)
    dup, dup_opt = _COPIES[how]((model, opt))
    assert len(dup_opt.state) == len(opt.state) == 4
    for _ in range(3):
        assert model.train_step(X, y, "softmax", opt) == dup.train_step(X, y, "softmax", dup_opt)
    assert all(np.array_equal(p.data, q.data) for p, q in zip(model.parameters(), dup.parameters()))
    assert getattr(dup_opt, "t", 0) == getattr(opt, "t", 0)


def test_a_copied_optimizers_state_is_its_own_layers_once_the_originals_are_gone():
    """Unpickled after the originals were freed, a new layer may get an old layer's id: each
    copied layer still gets the state of its own position, and stale entries are dropped."""
    import gc
    import pickle

    X, y = _data()
    model = Sequential(Dense(5, 7, activation="relu", seed=0), Dense(7, 7, activation="relu", seed=1),
                       Dense(7, 7, activation="relu", seed=2), Dense(7, 3, seed=3))
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train_step(X, y, "softmax", opt)
    opt.state[(12345, "W")] = [np.zeros(3, F32)]   # (a parameter it no longer holds)
    want = [opt.state[(id(p.layer), p.name)][0].copy() for p in opt.params]
    blob = pickle.dumps((model, opt))
    del model, opt
    gc.collect()
    for _ in range(5):
        dup, dup_opt = pickle.loads(blob)
        assert len(dup_opt.state) == len(want) == 8
        got = [dup_opt.state[(id(p.layer), p.name)][0] for p in dup_opt.params]
        assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_a_copy_of_a_model_with_a_pending_list_change_holds_its_rebuilt_weights():
    """A Dense at its default draw (no seed) followed by a ReLU inserted since the last use:
    the copy holds the He re-draw its original makes, not a draw of its own."""
    X, _ = _data()
    for how in sorted(_COPIES):
        model = Sequential(Dense(5, 8), Dense(8, 3))
        model.layers.insert(1, ReLU())
        dup = _COPIES[how](model)
        assert np.array_equal(dup.predict(X), model.predict(X)), how


# -- layers and losses used directly (the fourth round of audits)

def test_maxout_names_an_input_of_the_wrong_width_as_dense_does():
    for layer in (fastnn.Maxout(5, 4), Dense(5, 4)):
        for x in (np.ones((6, 3), F32), np.ones(5, F32)):
            with pytest.raises(ValueError, match=r"x must have shape \(N, 5\)"):
                layer.forward(x)
            with pytest.raises(ValueError, match=r"^X must have shape \(N, 5\)"):
                Sequential(layer).predict(x)   # (the model's argument: X)


@pytest.mark.parametrize("layer", [Dense(3, 4), Dense(3, 4, activation="tanh"), fastnn.Maxout(3, 4),
                                   fastnn.PReLU(), ReLU(dtype=F32)], ids=repr)
def test_a_float32_layer_gives_a_float32_dx_for_a_float64_dout(layer):
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(F32)
    out = layer.forward(x)
    d64 = np.random.default_rng(1).standard_normal(out.shape)
    dx = layer.backward(d64)
    want = layer.backward(d64.astype(F32))
    assert dx.dtype == F32 and np.array_equal(dx, want)


@pytest.mark.parametrize("loss, bad", [
    ("softmax", np.ones(4)), ("softmax", np.ones((4, 1, 1))), ("softmax", np.ones((4, 0))),
    ("logistic", np.ones((4, 3))), ("binary_hinge", np.ones((4, 2))), ("logistic", np.ones((4, 1, 1))),
])
def test_predict_labels_refuses_scores_of_another_shape(loss, bad):
    from fastnn.losses import get_loss

    with pytest.raises(ValueError, match=r"scores must have shape"):
        get_loss(loss).predict_labels(bad)


def test_predict_labels_of_good_scores():
    from fastnn.losses import get_loss

    s = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -1.0]])
    assert get_loss("softmax").predict_labels(s).tolist() == [2, 0]
    col = np.array([[0.5], [-0.1], [0.0]])
    assert get_loss("logistic").predict_labels(col).tolist() == [1, 0, 0]
    assert get_loss("binary_hinge").predict_labels(col[:, 0]).tolist() == [1, -1, -1]
    assert get_loss("mse").predict_labels(s) is None


class _OwnAdam(Adam):
    """An optimizer subclass with state of its own beside the base class's."""

    def step(self):
        self.state[("steps", "taken")] = self.state.get(("steps", "taken"), 0) + 1
        super().step()


@pytest.mark.parametrize("how", ["deepcopy", "pickle2", "pickle0"])
def test_a_copied_optimizer_keeps_a_subclasss_own_state_and_drops_stale_entries(how):
    X, y = _data()
    model = _net()
    opt = _OwnAdam(model.parameters(), lr=0.01)
    model._compilable = False   # (the layer path calls the subclass's step)
    for _ in range(2):
        model.train_step(X, y, "softmax", opt)
    opt.state[(12345, "W")] = [np.zeros(3, F32)]   # (a parameter it no longer holds)
    dup, dup_opt = _COPIES[how]((model, opt))
    dup._compilable = False
    assert type(dup_opt) is _OwnAdam and dup_opt.state[("steps", "taken")] == 2
    assert len(dup_opt.state) == 5
    for _ in range(2):
        assert model.train_step(X, y, "softmax", opt) == dup.train_step(X, y, "softmax", dup_opt)


def test_copy_copy_of_an_optimizer_shares_its_state_as_it_shares_params():
    import copy

    X, y = _data()
    model = _net()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    twin = copy.copy(opt)
    assert twin.state is opt.state and twin.params is opt.params
    model.train_step(X, y, "softmax", twin)
    assert len(opt.state) == 4


def test_an_optimizer_pickled_before_positions_travelled_starts_afresh_with_a_warning():
    import pickle

    X, y = _data()
    model = _net()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train_step(X, y, "softmax", opt)
    old = dict(opt.__dict__)   # (what an older fastnn pickled: the state under layer ids)
    dup = object.__new__(SGD)
    with pytest.warns(RuntimeWarning, match="older fastnn"):
        dup.__setstate__(pickle.loads(pickle.dumps(old)))
    assert dup.state == {}


class _Tagged(fastnn.layers.Parameter):
    __slots__ = ()


def test_a_parameter_subclass_pickles_as_itself():
    import pickle

    p = _Tagged(Dense(2, 3), "W", True)
    for protocol in range(6):
        q = pickle.loads(pickle.dumps(p, protocol=protocol))
        assert type(q) is _Tagged and q.name == "W" and q.decay and q.shape == (2, 3)


def test_predict_labels_of_a_custom_accuracy_kind_is_none():
    from fastnn.losses import SoftmaxCrossEntropy

    class Mine(SoftmaxCrossEntropy):
        accuracy_kind = "ranking"

    assert Mine().predict_labels(np.ones((3, 1))) is None


# ------------------------------------------------------------------ twenty-eighth session

STATE_EDITS = {
    # (state index, what it is made to share memory with)
    "m and v one array": lambda st, p: st.__setitem__(1, st[0]),
    "v a view of m": lambda st, p: st.__setitem__(1, st[0][...]),
    "m the parameter": lambda st, p: st.__setitem__(0, p.data),
    "v the gradient": lambda st, p: st.__setitem__(1, p.grad),
}


@pytest.mark.parametrize("edit", list(STATE_EDITS))
@pytest.mark.parametrize("how", ["train_step", "step"])
def test_state_sharing_memory_is_refused_naming_it(edit, how):
    X, y = _data()
    model = _net()
    opt = Adam(model.parameters(), lr=0.01)
    model.train_step(X, y, "softmax", opt)
    p = model.parameters()[0]
    STATE_EDITS[edit](opt.state[p.key], p)
    before = [q.data.copy() for q in model.parameters()]
    t = opt.t
    with pytest.raises(ValueError, match=r"Adam\.state\[.*\] entry [01] .* shares memory with "
                                         r"(Adam\.state\[.*\] entry 0|parameter W|the gradient of parameter W)"):
        if how == "train_step":
            model.train_step(X, y, "softmax", opt)
        else:
            opt.step()
    assert opt.t == t
    for q, old in zip(model.parameters(), before):
        np.testing.assert_array_equal(q.data, old)


@pytest.mark.parametrize("rule", ["momentum", "rmsprop"])
def test_one_slot_state_sharing_another_parameters_is_refused(rule):
    X, y = _data()
    model = _net()
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9) if rule == "momentum" else \
        RMSProp(model.parameters(), lr=0.01)
    model.train_step(X, y, "softmax", opt)
    w1, b1 = model.parameters()[:2]
    opt.state[b1.key][0] = w1.data.reshape(-1)[:b1.data.size]   # (b's shape, W's memory)
    with pytest.raises(ValueError, match=r"shares memory with parameter W"):
        model.train_step(X, y, "softmax", opt)
    # the state made by the optimizer itself is apart: steps run
    fresh = SGD(model.parameters(), lr=0.01, momentum=0.9) if rule == "momentum" else \
        RMSProp(model.parameters(), lr=0.01)
    model.train_step(X, y, "softmax", fresh)
    fresh.step()


def test_meeting_pair_finds_a_pair_that_shares_bytes_with_a_flagged_array():
    a = np.zeros(10)
    b = np.zeros(10)
    T, F_ = True, False
    assert kn.meeting_pair([a, b, np.zeros(3)], [T, T, T]) is None
    assert kn.meeting_pair([a, b, a[5:]], [F_, F_, T]) == (0, 2)
    assert kn.meeting_pair([a, b, a[5:]], [F_, F_, F_]) is None   # (unflagged pairs may meet)
    assert kn.meeting_pair([a, a[2:], b], [F_, F_, T]) is None    # (tied parameters)
    assert kn.meeting_pair([a[:5], b, a[5:]], [T, T, T]) is None   # (adjacent, not overlapping)
    assert kn.meeting_pair([a, b[::2], b[1::2]], [F_, F_, T]) == (1, 2)   # (extents meet)
    assert kn.meeting_pair([b[3:4], a, a[:0], b], [T, F_, T, F_]) == (0, 3)   # (no bytes: apart)
    assert kn.meeting_pair([], []) is None
    assert kn.meeting_pair([a, object(), a], [T, T, T]) == (0, 2)   # (no buffer: meets nothing)
    with pytest.raises(ValueError, match="one entry per array"):
        kn.meeting_pair([a, b], [T])
    # many arrays apart, then one that meets the first: found (sorted extents, not all pairs)
    many = [np.zeros(4) for _ in range(3000)]
    assert kn.meeting_pair(many, [True] * 3000) is None
    assert kn.meeting_pair(many + [many[0][1:]], [False] * 3000 + [True]) == (0, 3000)


def test_adam_t_beyond_float_range_is_refused_and_nothing_moves():
    X, y = _data()
    model = _net()
    opt = Adam(model.parameters())
    with pytest.raises(ValueError, match=r"t must be below 2\*\*1023, got an integer of 1101 bits$"):
        opt.t = 2**1100
    assert opt.t == 0
    opt.t = 2**1023 - 1   # (the largest taken: its steps' beta ** t are finite)
    model.train_step(X, y, "softmax", opt)
    opt.step()
    assert opt.t == 2**1023 + 1


def test_fully_connected_net_dropout_ratio_beyond_float_range_is_refused():
    with pytest.raises(ValueError, match="dropout_keep_ratio"):
        fastnn.FullyConnectedNet([4], 6, 3, dropout_keep_ratio=10**400)


@pytest.mark.parametrize("cls", ["TwoLayerNet", "FullyConnectedNet"])
@pytest.mark.parametrize("reg,error", [(-1.0, ValueError), (float("nan"), ValueError),
                                       (None, TypeError), ("0.1", TypeError)])
def test_a_reg_set_after_construction_is_checked_at_the_loss(cls, reg, error):
    r = np.random.default_rng(0)
    X, y = r.standard_normal((4, 6)), r.integers(0, 3, 4)
    net = fastnn.TwoLayerNet(6, 5, 3, seed=0) if cls == "TwoLayerNet" else \
        fastnn.FullyConnectedNet([5], 6, 3, seed=0)
    net.reg = reg   # (course code sets it so: net.reg = 0.5)
    with pytest.raises(error, match="reg"):
        net.loss(X, y)
    assert net.loss(X).shape == (4, 3)   # (scores alone do not read reg)
    net.reg = 0.25
    loss, _ = net.loss(X, y)
    net.reg = 0.0
    assert loss > net.loss(X, y)[0]


def test_dropout_and_noise_modes_given_as_arrays_are_refused_naming_them():
    x = np.ones((3, 4))
    modes = np.array(["train", "test"])
    with pytest.raises(ValueError, match=r"dropout_param\['mode'\] must be 'train' or 'test'"):
        F.dropout_forward(x, {"p": 0.5, "mode": modes})
    with pytest.raises(ValueError, match=r"^mode must be 'train' or 'test'"):
        F.gaussian_noise_forward(x, 0.1, mode=modes)
    with pytest.raises(ValueError, match=r"cache's dropout_param\['mode'\]"):
        F.dropout_backward(x, ({"mode": modes, "p": 0.5}, np.ones((3, 4))))
    with pytest.raises(TypeError, match="gaussian_noise_forward"):
        F.gaussian_noise_backward(x, (np.array(["gaussian_noise", "x"]), (3, 4)))
    # a NumPy string is a string
    out, _ = F.dropout_forward(x, {"p": 0.5, "mode": np.str_("test")})
    np.testing.assert_array_equal(out, x)


def test_a_ragged_course_mask_is_refused_naming_it():
    with pytest.raises(ValueError, match="cache's mask"):
        F.dropout_backward(np.ones((2, 1)), ({"mode": "train", "p": 0.5}, [[1.0], [1.0, 2.0]]))


def test_rel_error_of_shapes_that_do_not_broadcast_names_them():
    with pytest.raises(ValueError, match=r"x and y .* got \(3,\) and \(4,\)"):
        G.rel_error(np.ones(3), np.ones(4))
    assert G.rel_error(np.ones((2, 3)), np.ones(3)) == 0.0   # (broadcasting, as NumPy's)


@pytest.mark.parametrize("spec", [("f4", -1), ("f4", (2, -3))])
def test_a_dtype_spec_numpy_refuses_with_valueerror_is_a_named_typeerror(spec):
    with pytest.raises(TypeError, match="dtype must be np.float32 or np.float64"):
        Dense(3, 2, dtype=spec)


def test_grad_check_sparse_refuses_a_complex_f():
    with pytest.raises(TypeError, match="f must return a number .*complex"):
        G.grad_check_sparse(lambda x: complex(x.sum(), 1), np.ones(3), np.ones(3), 1)
