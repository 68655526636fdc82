"""fastnn.solver.Solver: the course's training loop, keyword arguments and checkpoints."""
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import fastnn.optim
from conftest import assert_same_bits, course_optim_rules
from fastnn.models import FullyConnectedNet, TwoLayerNet
from fastnn.solver import Solver, load_checkpoint


# ----------------------------------------------------------------------------- fixtures
def _data(n_train=60, n_val=30, dim=6, classes=3, seed=0):
    """Gaussian blobs, one per class, so a small net learns something in a few epochs."""
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.standard_normal((classes, dim))

    def draw(n):
        y = rng.integers(0, classes, size=n)
        return (centers[y] + rng.standard_normal((n, dim))).astype(np.float32), y

    X_train, y_train = draw(n_train)
    X_val, y_val = draw(n_val)
    return {"X_train": X_train, "y_train": y_train, "X_val": X_val, "y_val": y_val}


@pytest.fixture(autouse=True)
def _global_numpy_state():
    """Each test starts from the same np.random state (the unseeded Solvers and models draw
    from it) and leaves the state as it found it."""
    state = np.random.get_state()
    np.random.seed(20240607)
    yield
    np.random.set_state(state)


def _model(seed=0, **kw):
    """A small FullyConnectedNet with the weights of ``np.random.seed(seed)`` (it draws them from
    np.random, as the course's does); the global state is restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return FullyConnectedNet([16], input_dim=6, num_classes=3, weight_scale=0.1, seed=seed, **kw)
    finally:
        np.random.set_state(state)


class ScriptedModel:
    """A model whose validation accuracy follows a script over the training steps.

    One parameter ``t`` counts the steps (its gradient is -1, so ``sgd`` with learning rate 1
    adds 1 per step). On the validation rows (labels all 0) it gets ``accuracy(t)`` right."""

    def __init__(self, n_val=10, peak=4):
        self.params = {"t": np.zeros(1)}
        self.n_val = n_val
        self.peak = peak

    def accuracy(self, t):
        return max(0, self.n_val - 2 * abs(int(round(t)) - self.peak)) / self.n_val

    def loss(self, X, y=None):
        if y is not None:
            return 1.0 / (1.0 + self.params["t"][0]), {"t": np.array([-1.0])}
        n_right = int(round(self.accuracy(self.params["t"][0]) * self.n_val))
        idx = X[:, 0].astype(int)  # row ids in [0, n_val)
        scores = np.zeros((len(X), 2))
        scores[:, 1] = np.where(idx < n_right, -1.0, 1.0)
        return scores


def _scripted_data(n_val=10, n_train=5):
    ids = np.arange(n_val, dtype=np.float64)[:, None]
    return {"X_train": np.zeros((n_train, 1)), "y_train": np.zeros(n_train, dtype=int),
            "X_val": ids, "y_val": np.zeros(n_val, dtype=int)}


# ----------------------------------------------------------------------------- arguments
def test_unrecognized_kwargs_raise_naming_them():
    with pytest.raises(ValueError, match="bogus.*learnin_rate|learnin_rate.*bogus"):
        Solver(_model(), _data(), bogus=1, learnin_rate=0.1)


@pytest.mark.parametrize("rule", ["sgdd", "Adam", "", "__init__", 3])
def test_unknown_update_rule_raises(rule):
    with pytest.raises(ValueError, match="update_rule"):
        Solver(_model(), _data(), update_rule=rule)


def test_update_rule_callable_is_used():
    calls = []

    def rule(w, dw, config):
        calls.append(config.get("tag"))
        return w, config

    solver = Solver(_model(), _data(), update_rule=rule, optim_config={"tag": "x"},
                    num_epochs=1, batch_size=30, verbose=False, seed=0)
    solver.train()
    n_params = 2 * 2
    assert calls == ["x"] * (n_params * 2)  # 2 iterations per epoch, 4 parameters


@pytest.mark.parametrize(
    "kwargs, word",
    [({"batch_size": 0}, "batch_size"), ({"num_epochs": -1}, "num_epochs"),
     ({"lr_decay": -0.5}, "lr_decay"), ({"print_every": 0}, "print_every"),
     ({"num_train_samples": 0}, "num_train_samples"), ({"seed": -3}, "seed"),
     # a minibatch larger than any index array could be (it is drawn with replacement, so a
     # batch above the training rows is fine): OverflowError or NumPy's unnamed errors before
     ({"batch_size": 10**30}, "batch_size"), ({"batch_size": 2**63}, "batch_size"),
     ({"batch_size": 2**60}, "batch_size")],
)
def test_bad_values_raise(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Solver(_model(), _data(), **kwargs)


def test_bad_data_raises():
    data = _data()
    del data["y_val"]
    with pytest.raises(ValueError, match="y_val"):
        Solver(_model(), data)
    data = _data()
    data["y_train"] = data["y_train"][:-1]
    with pytest.raises(ValueError, match="X_train"):
        Solver(_model(), data)
    with pytest.raises(TypeError, match="data"):
        Solver(_model(), [1, 2])


def test_defaults_are_the_course_ones():
    s = Solver(_model(), _data())
    assert s.update_rule is fastnn.optim.sgd
    assert (s.lr_decay, s.batch_size, s.num_epochs, s.num_train_samples, s.num_val_samples,
            s.checkpoint_name, s.print_every, s.verbose) == (1.0, 100, 10, 1000, None, None, 10, True)
    assert s.optim_config == {}


# ----------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("n_train, batch_size, epochs, per_epoch",
                         [(60, 20, 4, 3), (61, 20, 3, 3), (10, 100, 3, 1)])
def test_history_lengths(n_train, batch_size, epochs, per_epoch):
    solver = Solver(_model(), _data(n_train=n_train), batch_size=batch_size, num_epochs=epochs,
                    verbose=False, seed=1)
    solver.train()
    assert solver.epoch == epochs
    assert len(solver.loss_history) == epochs * per_epoch
    # after the first iteration and at the end of every epoch (one check when the first
    # iteration is also the end of the first epoch)
    checks = epochs + 1 if per_epoch > 1 else epochs
    assert len(solver.train_acc_history) == checks
    assert len(solver.val_acc_history) == checks
    assert all(0.0 <= a <= 1.0 for a in solver.train_acc_history + solver.val_acc_history)
    assert all(isinstance(v, float) for v in solver.loss_history)


@pytest.mark.parametrize("decay", [0.5, 0.0])   # (0: the rate is 0 after the first epoch, as in
def test_learning_rate_decays_once_per_epoch(decay):   # the course's Solver)
    seen = []

    def rule(w, dw, config):
        seen.append(config["learning_rate"])
        return fastnn.optim.sgd(w, dw, config)

    lr, per_epoch, epochs = 0.05, 3, 4
    solver = Solver(_model(), _data(n_train=60), update_rule=rule, optim_config={"learning_rate": lr},
                    lr_decay=decay, batch_size=20, num_epochs=epochs, verbose=False, seed=0)
    solver.train()
    n_params = 4
    expected = [lr * decay ** (it // per_epoch) for it in range(per_epoch * epochs) for _ in range(n_params)]
    np.testing.assert_allclose(seen, expected, rtol=1e-15)
    for config in solver.optim_configs.values():
        assert config["learning_rate"] == pytest.approx(lr * decay ** epochs, rel=1e-15)


def test_optim_config_copied_per_parameter_and_left_alone():
    user_config = {"learning_rate": 1e-2, "momentum": 0.5}
    solver = Solver(_model(), _data(), update_rule="sgd_momentum", optim_config=user_config,
                    lr_decay=0.9, num_epochs=2, batch_size=30, verbose=False, seed=0)
    solver.train()
    assert user_config == {"learning_rate": 1e-2, "momentum": 0.5}
    configs = solver.optim_configs
    assert set(configs) == {"W1", "b1", "W2", "b2"}
    assert len({id(c) for c in configs.values()}) == 4
    for name, config in configs.items():
        assert config["velocity"].shape == solver.model.params[name].shape
        assert config["momentum"] == 0.5


# ----------------------------------------------------------------------------- best params
def test_best_params_restored_not_last():
    model = ScriptedModel(n_val=10, peak=4)
    solver = Solver(model, _scripted_data(), update_rule="sgd", optim_config={"learning_rate": 1.0},
                    batch_size=1, num_epochs=2, num_train_samples=None, verbose=False, seed=0)
    solver.train()
    # 5 iterations per epoch: checks after steps 1, 5 and 10, i.e. at t = 1, 5, 10
    np.testing.assert_allclose(solver.val_acc_history, [model.accuracy(t) for t in (1, 5, 10)])
    assert solver.best_val_acc == max(solver.val_acc_history) == model.accuracy(5)
    # the update rule wrote into the parameter array after step 5: best_params must be a copy
    assert solver.best_params["t"][0] == 5.0
    assert model.params["t"][0] == 5.0
    assert model.params["t"] is not solver.best_params["t"]


def test_best_params_restored_real_model():
    data = _data(seed=3)
    model = _model(seed=3)
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-2},
                    num_epochs=6, batch_size=20, verbose=False, seed=3)
    solver.train()
    assert set(model.params) == set(solver.best_params)
    for k, v in solver.best_params.items():
        assert_same_bits(model.params[k], v, what=k)
        assert model.params[k] is not v
    assert solver.check_accuracy(data["X_val"], data["y_val"]) == solver.best_val_acc
    assert solver.best_val_acc == max(solver.val_acc_history)
    # training again from the restored point does not disturb the stored copies
    saved = {k: v.copy() for k, v in solver.best_params.items()}
    solver._step()
    for k in saved:
        assert_same_bits(solver.best_params[k], saved[k], what=k)


def test_first_check_keeps_params_even_at_zero_accuracy():
    model = ScriptedModel(n_val=10, peak=100)  # accuracy 0 for every t seen here
    solver = Solver(model, _scripted_data(n_train=10), optim_config={"learning_rate": 1.0},
                    batch_size=5, num_epochs=2, verbose=False, seed=0)
    solver.train()
    assert solver.val_acc_history == [0.0, 0.0, 0.0]
    assert set(model.params) == {"t"}  # never replaced by an empty dict
    assert model.params["t"][0] == 1.0


# ----------------------------------------------------------------------------- accuracy
def test_check_accuracy_counts_argmax_hits():
    model = ScriptedModel(n_val=10, peak=0)
    data = _scripted_data()
    solver = Solver(model, data, verbose=False, seed=0)
    for t in range(6):
        model.params["t"][0] = t
        for bs in (1, 3, 100):
            assert solver.check_accuracy(data["X_val"], data["y_val"], batch_size=bs) == model.accuracy(t)


def test_check_accuracy_subsamples():
    model = ScriptedModel(n_val=10, peak=2)  # 6 of the 10 rows right
    data = _scripted_data()
    solver = Solver(model, data, verbose=False, seed=0)
    model.params["t"][0] = 0.0
    accs = {solver.check_accuracy(data["X_val"], data["y_val"], num_samples=5) for _ in range(30)}
    assert accs <= {k / 5 for k in range(6)}
    assert len(accs) > 1  # different random subsets


@pytest.mark.parametrize("seed", [None, 3])
def test_check_accuracy_subsample_is_the_courses(seed):
    """More rows than num_samples: the rows scored are the course's
    ``np.random.choice(N, num_samples)`` (WITH replacement), one call, so np.random is left
    where the course's check_accuracy leaves it; with a Solver seed the same call goes to the
    private generator."""
    data = _data(n_val=30)
    X, y = data["X_val"], data["y_val"]
    solver = Solver(_model(), data, verbose=False, seed=seed)
    pred = np.argmax(solver.model.loss(X), axis=1)
    for num_samples in (5, 29):
        np.random.seed(17)
        draw = np.random if seed is None else np.random.default_rng(seed)
        mask = draw.choice(30, num_samples)
        expected = np.mean(pred[mask] == y[mask])
        expected_next = np.random.rand()
        np.random.seed(17)
        if seed is not None:
            solver._rng = np.random.default_rng(seed)
        assert solver.check_accuracy(X, y, num_samples=num_samples) == expected
        assert np.random.rand() == expected_next
    # with a few repeated rows among 29 draws of 30 (a draw without replacement has none)
    assert len(set(mask.tolist())) < 29
    # num_samples of N or more: every row once, and nothing drawn (the course subsamples only
    # when N > num_samples)
    for num_samples in (30, 31):
        np.random.seed(17)
        expected_next = np.random.rand()
        np.random.seed(17)
        private = solver._rng.bit_generator.state if seed is not None else None
        assert solver.check_accuracy(X, y, num_samples=num_samples) == np.mean(pred == y)
        assert np.random.rand() == expected_next
        if seed is not None:
            assert solver._rng.bit_generator.state == private


# ----------------------------------------------------------------------------- rules
@pytest.mark.parametrize("rule, state", [
    ("sgd", set()), ("sgd_momentum", {"velocity"}), ("nesterov_momentum", {"velocity"}),
    ("rmsprop", {"cache"}), ("adam", {"m", "v", "t"}),
])
def test_each_update_rule_trains(rule, state):
    assert rule in fastnn.optim.__all__
    data = _data(seed=4)
    model = _model(seed=4)
    before = {k: v.copy() for k, v in model.params.items()}
    lr = 1e-2 if rule in ("rmsprop", "adam") else 5e-2
    solver = Solver(model, data, update_rule=rule, optim_config={"learning_rate": lr},
                    num_epochs=5, batch_size=20, verbose=False, seed=4)
    solver.train()
    assert solver.update_rule is getattr(fastnn.optim, rule)
    for k, config in solver.optim_configs.items():
        assert state <= set(config), (k, set(config))
    if rule == "adam":
        assert all(c["t"] == 15 for c in solver.optim_configs.values())
    assert np.isfinite(solver.loss_history).all()
    assert np.mean(solver.loss_history[-3:]) < 0.5 * solver.loss_history[0]
    assert any(not np.array_equal(before[k], model.params[k]) for k in before)
    assert solver.best_val_acc > 0.6  # well-separated blobs


# ----------------------------------------------------------------------------- randomness
def test_seed_makes_runs_identical():
    histories = []
    for _ in range(2):
        solver = Solver(_model(seed=5), _data(), num_epochs=3, batch_size=10, verbose=False, seed=7,
                        num_train_samples=20)
        solver.train()
        histories.append((solver.loss_history, solver.train_acc_history))
    assert histories[0] == histories[1]
    other = Solver(_model(seed=5), _data(), num_epochs=3, batch_size=10, verbose=False, seed=8)
    other.train()
    assert other.loss_history != histories[0][0]


def test_seed_none_uses_global_numpy_state_and_seed_leaves_it_alone():
    runs = []
    for _ in range(2):
        np.random.seed(11)
        solver = Solver(_model(seed=5), _data(), num_epochs=2, batch_size=10, verbose=False)
        solver.train()
        runs.append(solver.loss_history)
    assert runs[0] == runs[1]

    np.random.seed(11)
    expected_next = np.random.rand()
    np.random.seed(11)
    Solver(_model(seed=5), _data(), num_epochs=2, batch_size=10, verbose=False, seed=1).train()
    assert np.random.rand() == expected_next


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoints_are_npz_and_json_without_pickle(tmp_path):
    model = ScriptedModel()
    prefix = tmp_path / "run" / "net"
    prefix.parent.mkdir()
    solver = Solver(model, _scripted_data(n_train=5), update_rule="sgd",
                    optim_config={"learning_rate": 1.0}, batch_size=1, num_epochs=3,
                    lr_decay=0.5, checkpoint_name=str(prefix), verbose=False, seed=0)
    solver.train()

    names = sorted(p.name for p in prefix.parent.iterdir())
    assert names == sorted(f"net_epoch_{e}.{ext}" for e in range(4) for ext in ("npz", "json"))
    for e in range(4):
        npz = prefix.parent / f"net_epoch_{e}.npz"
        with zipfile.ZipFile(npz) as zf:
            assert zf.namelist() == ["t.npy"]
        with np.load(npz, allow_pickle=False) as f:
            # epoch 0 is written after the first step, epoch e after 5 * e steps; the step
            # size halves after every epoch (lr_decay)
            assert f["t"].tolist() == [[1.0, 5.0, 7.5, 8.75][e]]
        with open(prefix.parent / f"net_epoch_{e}.json", encoding="utf-8") as fh:
            info = json.load(fh)
        assert info["format"] == "fastnn-solver-checkpoint"
        assert info["epoch"] == e
        assert info["params_file"] == f"net_epoch_{e}.npz"
        assert info["param_names"] == ["t"]
        assert info["update_rule"] == "sgd"
        assert info["lr_decay"] == 0.5
        assert info["batch_size"] == 1 and info["num_epochs"] == 3
        assert info["optim_config"] == {"learning_rate": 1.0}
        assert len(info["train_acc_history"]) == len(info["val_acc_history"]) == e + 1
        assert info["loss_history"] == solver.loss_history[:max(1, 5 * e)]
        assert info["val_acc_history"] == solver.val_acc_history[:e + 1]

    params, info = load_checkpoint(str(prefix) + "_epoch_2.npz")
    assert params["t"].tolist() == [7.5] and info["epoch"] == 2
    params, info = load_checkpoint(str(prefix) + "_epoch_3.json")
    assert params["t"].tolist() == [8.75] and info["epoch"] == 3


def test_checkpoint_of_a_real_model_round_trips(tmp_path):
    model = _model(seed=2)
    solver = Solver(model, _data(), num_epochs=1, batch_size=60, verbose=False, seed=0,
                    checkpoint_name=str(tmp_path / "fc"))
    solver.train()
    params, info = load_checkpoint(tmp_path / "fc_epoch_1")
    assert set(params) == {"W1", "b1", "W2", "b2"}
    for k, v in params.items():  # best after a single step is that step's params: both equal
        assert_same_bits(v, model.params[k], what=k)


def _checkpoint_pair(tmp_path, info=None, npz=None, json_text=None):
    """ck.json (info as JSON, or json_text verbatim) and, when npz is given, ck.npz with those
    arrays (or those raw bytes)."""
    base = {"format": "fastnn-solver-checkpoint", "version": 1, "params_file": "ck.npz",
            "param_names": ["W1"]}
    with open(tmp_path / "ck.json", "w", encoding="utf-8") as fh:
        fh.write(json_text if json_text is not None else json.dumps(dict(base, **(info or {}))))
    if isinstance(npz, bytes):
        (tmp_path / "ck.npz").write_bytes(npz)
    elif npz is not None:
        np.savez(tmp_path / "ck.npz", **npz)
    return tmp_path / "ck.json"


@pytest.mark.parametrize("case", [
    "missing", "json-list", "deep-json", "not-utf8", "no-params-file", "absolute-params-file",
    "dotdot-params-file", "dot-params-file", "names-not-list", "missing-name", "truncated-npz",
    "empty-npz-file", "npy-not-npz", "object-array", "non-npy-member", "compressed",
])
def test_load_checkpoint_refuses_bad_files_with_valueerror(tmp_path, case):
    """Every way a checkpoint can be missing, foreign, truncated or crafted is a ValueError;
    the arrays come only from the JSON file's own directory; nothing is unpickled."""
    good = {"W1": np.ones(2)}
    outside = tmp_path.parent / f"outside_{case}.npz"
    np.savez(outside, W1=np.ones(2))
    sub = tmp_path / "dir"
    sub.mkdir()
    if case == "missing":
        path = sub / "nope.json"
    elif case == "json-list":
        path = _checkpoint_pair(sub, json_text="[1]", npz=good)
    elif case == "deep-json":
        path = _checkpoint_pair(sub, json_text="[" * 100000 + "]" * 100000, npz=good)
    elif case == "not-utf8":
        path = _checkpoint_pair(sub, json_text="", npz=good)
        path.write_bytes(b"\xff\xfe{")
    elif case == "no-params-file":
        path = _checkpoint_pair(sub, {"params_file": None}, npz=good)
    elif case == "absolute-params-file":
        path = _checkpoint_pair(sub, {"params_file": str(outside)}, npz=good)
    elif case == "dotdot-params-file":
        path = _checkpoint_pair(sub, {"params_file": os.path.join("..", "..", outside.name)}, npz=good)
    elif case == "dot-params-file":
        path = _checkpoint_pair(sub, {"params_file": "."}, npz=good)
    elif case == "names-not-list":
        path = _checkpoint_pair(sub, {"param_names": "W1"}, npz=good)
    elif case == "missing-name":
        path = _checkpoint_pair(sub, {"param_names": ["W1", "b1"]}, npz=good)
    elif case == "truncated-npz":
        np.savez(sub / "full.npz", **good)
        path = _checkpoint_pair(sub, npz=(sub / "full.npz").read_bytes()[:60])
    elif case == "empty-npz-file":
        path = _checkpoint_pair(sub, npz=b"")
    elif case == "npy-not-npz":
        path = _checkpoint_pair(sub)
        np.save(sub / "ck.npy", np.ones(2))
        os.replace(sub / "ck.npy", sub / "ck.npz")
    elif case == "compressed":
        path = _checkpoint_pair(sub)
        np.savez_compressed(sub / "ck.npz", **good)
    elif case == "object-array":
        path = _checkpoint_pair(sub, npz={"W1": np.array([{"a": 1}], dtype=object)})
    else:  # a zip member that is not a .npy file
        path = _checkpoint_pair(sub)
        with zipfile.ZipFile(sub / "ck.npz", "w") as zf:
            zf.writestr("W1", b"not an array")
    with pytest.raises(ValueError):
        load_checkpoint(path)


@pytest.mark.parametrize("case,why", [
    ("complex", "'W1' has dtype complex128"), ("int", "'W1' has dtype int64"),
    ("bool", "'W1' has dtype bool"), ("str", "'W1' has dtype <U3"),
    ("float16", "'W1' has dtype float16"), ("extra-array", "arrays it should not: 'b1'"),
    ("json-nan", "NaN is not a JSON number"), ("json-infinity", "-Infinity is not a JSON number"),
    ("json-repeated-key", "'param_names' is given twice"),
])
def test_load_checkpoint_checks_what_it_returns(tmp_path, case, why):
    """load_checkpoint returned the arrays as they were stored: complex, int, bool or str
    arrays, and arrays param_names does not list; and its JSON took NaN and Infinity (which
    Solver never writes) and a key given twice (the last one kept). The arrays must be real
    float32 / float64 arrays, exactly the ones param_names lists (NaN and Inf values load:
    test_load_checkpoint_returns_float_arrays_as_stored)."""
    arrays = {"complex": {"W1": np.zeros(2, np.complex128)}, "int": {"W1": np.arange(3)},
              "bool": {"W1": np.ones(2, bool)}, "str": {"W1": np.array(["abc"])},
              "float16": {"W1": np.ones(2, np.float16)},
              "extra-array": {"W1": np.ones(2), "b1": np.ones(2)}}.get(case, {"W1": np.ones(2)})
    good = '{"format": "fastnn-solver-checkpoint", "version": 1, "params_file": "ck.npz", ' \
           '"param_names": ["W1"]'
    text = {"json-nan": good + ', "best_val_acc": NaN}',
            "json-infinity": good + ', "loss_history": [1.0, -Infinity]}',
            "json-repeated-key": good + ', "param_names": ["b1"]}'}.get(case)
    path = _checkpoint_pair(tmp_path, npz=arrays, json_text=text)
    with pytest.raises(ValueError, match=why) as info:
        load_checkpoint(path)
    assert "ck.npz" in str(info.value) or "ck.json" in str(info.value)


def test_load_checkpoint_returns_float_arrays_as_stored(tmp_path):
    """Float arrays come back bit for bit, NaN and Inf too: a diverged run's checkpoint is
    Solver's own output (test_a_diverged_runs_checkpoint_loads_back)."""
    arrays = {"W1": np.arange(6, dtype=np.float32).reshape(2, 3), "b1": np.float64(0.5),
              "W2": np.zeros((0, 4)), "b2": np.array([np.nan, -np.inf, np.inf], np.float32)}
    path = _checkpoint_pair(tmp_path, {"param_names": list(arrays), "best_val_acc": 0.25},
                            npz=arrays)
    params, info = load_checkpoint(path)
    assert list(params) == list(arrays) and info["best_val_acc"] == 0.25
    for k, v in arrays.items():
        assert params[k].dtype == v.dtype and params[k].shape == np.shape(v)
        assert_same_bits(params[k], np.asarray(v), what=k)


def test_a_diverged_runs_checkpoint_loads_back(tmp_path):
    """A learning rate that makes the run diverge leaves NaN or Inf in the parameters, and
    Solver checkpoints them as they are: load_checkpoint gives them back, bit for bit."""
    model = _model(seed=2)
    solver = Solver(model, _data(), num_epochs=2, batch_size=60, verbose=False, seed=0,
                    optim_config={"learning_rate": 1e300}, checkpoint_name=str(tmp_path / "fc"))
    with np.errstate(all="ignore"):
        solver.train()
    params, _ = load_checkpoint(tmp_path / "fc_epoch_2")
    assert not all(np.isfinite(v).all() for v in params.values())   # (it diverged)
    with np.load(tmp_path / "fc_epoch_2.npz", allow_pickle=False) as stored:
        assert sorted(stored.files) == sorted(params)
        for k, v in params.items():
            assert_same_bits(v, stored[k], what=k)


def test_load_checkpoint_path_type():
    with pytest.raises(TypeError, match="path"):
        load_checkpoint(3)


def test_verbose_prints_progress(capsys):
    Solver(_model(), _data(), num_epochs=2, batch_size=20, print_every=2, seed=0).train()
    out = capsys.readouterr().out
    assert "(Iteration 1 / 6) loss:" in out
    assert "(Iteration 3 / 6) loss:" in out and "(Iteration 2 / 6)" not in out
    assert "(Epoch 2 / 2) train acc:" in out
    Solver(_model(), _data(), num_epochs=1, verbose=False, seed=0).train()
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- duck type
def test_course_style_loop_drives_models_like_solver():
    """A loop written the way the course's Solver is (np.random.choice, model.params,
    model.loss, an update rule per parameter, next_w stored back, argmax accuracy) trains the
    fastnn models, and gives exactly the losses of fastnn.Solver on the same minibatches."""
    data = _data(n_train=60)
    for make in (lambda: TwoLayerNet(6, 16, 3, weight_scale=0.1, seed=9),
                 lambda: FullyConnectedNet([16, 12], input_dim=6, num_classes=3, weight_scale=0.1, seed=9)):
        np.random.seed(3)  # (FullyConnectedNet draws its weights from np.random)
        model = make()
        configs = {p: {"learning_rate": 0.05} for p in model.params}
        np.random.seed(21)
        course_losses = []
        for _ in range(12):
            idx = np.random.choice(60, 20)
            loss, grads = model.loss(data["X_train"][idx], data["y_train"][idx])
            course_losses.append(loss)
            for p, w in model.params.items():
                next_w, next_config = fastnn.optim.sgd(w, grads[p], configs[p])
                model.params[p] = next_w
                configs[p] = next_config
        scores = model.loss(data["X_val"])
        course_acc = np.mean(np.argmax(scores, axis=1) == data["y_val"])
        assert course_losses[-1] < course_losses[0]
        assert course_acc > 1 / 3

        np.random.seed(3)
        model2 = make()
        np.random.seed(21)
        solver = Solver(model2, data, optim_config={"learning_rate": 0.05}, batch_size=20,
                        num_epochs=4, num_train_samples=None, verbose=False)
        solver.train()
        assert solver.loss_history == [float(v) for v in course_losses]


# ----------------------------------------------------------------- labels checked (tenth session)
def test_a_column_of_validation_labels_gives_the_accuracy_of_the_1d_labels():
    """y_val as a column (N, 1): compared with the (N,) predictions it broadcast to an N x N
    table, whose mean was reported as the accuracy (and picked the best parameters)."""
    data = _data()
    runs = []
    for column in (False, True):
        d = dict(data)
        if column:
            d["y_val"] = d["y_val"][:, None]
        solver = Solver(_model(), d, num_epochs=2, batch_size=20, verbose=False, seed=0)
        solver.train()
        runs.append((solver.val_acc_history, solver.check_accuracy(d["X_val"], d["y_val"])))
    assert runs[0] == runs[1]
    # and check_accuracy itself against the predictions, for a column
    solver = Solver(_model(), data, verbose=False, seed=0)
    pred = np.argmax(solver.model.loss(data["X_val"]), axis=1)
    assert solver.check_accuracy(data["X_val"], data["y_val"][:, None]) == np.mean(pred == data["y_val"])


@pytest.mark.parametrize("key,value,exc,words", [
    ("y_val", lambda d: d["y_val"] + 100, ValueError, "data['y_val'][0]"),
    ("y_val", lambda d: -d["y_val"] - 1, ValueError, "data['y_val'][0]"),
    ("y_val", lambda d: d["y_val"].astype(np.float64), TypeError, "data['y_val']"),
    ("y_val", lambda d: np.stack([d["y_val"]] * 2, axis=1), ValueError, "data['y_val']"),
    ("y_train", lambda d: d["y_train"].astype(np.float32), TypeError, "data['y_train']"),
    ("X_val", lambda d: d["X_val"][:, :4], ValueError, "data['X_val']"),
])
def test_solver_names_bad_labels_and_validation_rows(key, value, exc, words):
    """Validation labels outside the model's classes (accepted before, as wrong answers),
    float or 2-D labels, and X_val rows of another shape than X_train's are refused with the
    data key named: the shapes and dtypes when the Solver is made, the label range at the
    first accuracy check (the classes are the scores' columns)."""
    data = _data()
    before = {k: v.copy() for k, v in data.items()}
    data[key] = value(data)
    with pytest.raises(exc) as info:
        Solver(_model(), data, num_epochs=1, verbose=False, seed=0).train()
    assert words in str(info.value)
    for k in ("X_train", "y_train") if key != "y_train" else ("X_train",):
        assert_same_bits(data[k], before[k])


def test_check_accuracy_refuses_labels_outside_the_scores():
    data = _data()
    solver = Solver(_model(), data, verbose=False, seed=0)
    with pytest.raises(ValueError, match=r"^y\[2\] = 3 is not a class"):
        y = data["y_val"].copy()
        y[2] = 3
        solver.check_accuracy(data["X_val"], y)


def test_checkpoint_folder_is_checked_when_the_solver_is_made(tmp_path):
    """A checkpoint_name in a folder that does not exist is refused at once, naming it (it
    failed with FileNotFoundError after the first epoch had trained)."""
    with pytest.raises(ValueError, match="checkpoint_name"):
        Solver(_model(), _data(), checkpoint_name=str(tmp_path / "missing" / "ck"), verbose=False)
    Solver(_model(), _data(), checkpoint_name=str(tmp_path / "ck"), verbose=False)


def test_a_nul_in_checkpoint_name_is_refused_when_the_solver_is_made(tmp_path):
    """It passed the folder check (the NUL is in the file name) and failed at the first
    checkpoint, after an epoch had trained, with open()'s 'embedded null byte'."""
    with pytest.raises(ValueError, match="checkpoint_name .* NUL"):
        Solver(_model(), _data(), checkpoint_name=str(tmp_path / "ck\0x"), verbose=False)


class _Duck(ScriptedModel):
    """ScriptedModel with its loss's output for training (y given) or scoring replaced."""

    def __init__(self, train=None, scores=None):
        super().__init__()
        self.train_out, self.scores_out = train, scores

    def loss(self, X, y=None):
        out = super().loss(X, y)
        if y is not None:
            return out if self.train_out is None else self.train_out(out)
        return out if self.scores_out is None else self.scores_out(out)


@pytest.mark.parametrize("model,error,words", [
    (_Duck(train=lambda out: out[0]), TypeError, "must return (loss, grads)"),
    (_Duck(train=lambda out: (out[0], out[1], None)), TypeError, "must return (loss, grads)"),
    (_Duck(train=lambda out: (out[0], [out[1]["t"]])), TypeError, "must return (loss, grads)"),
    (_Duck(train=lambda out: (out[0], {})), ValueError, "no gradient for the parameter 't'"),
    (_Duck(train=lambda out: ("x", out[1])), TypeError, "loss that is not a number"),
    (_Duck(train=lambda out: (None, out[1])), TypeError, "loss that is not a number"),
    (_Duck(scores=lambda s: s[:, 0]), ValueError, "scores of shape (N, C)"),
    (_Duck(scores=lambda s: s[1:]), ValueError, "scores of shape (N, C)"),
    (_Duck(scores=lambda s: s[:, :0]), ValueError, "scores of shape (N, C)"),
], ids=["loss-alone", "three-values", "grads-a-list", "grad-missing", "loss-a-str", "loss-none",
        "scores-1d", "scores-a-row-short", "scores-no-class"])
def test_a_model_that_breaks_the_solver_protocol_is_named(model, error, words):
    """A model of the user's own whose loss() returns something else than the course's
    protocol: (loss, grads) for a batch with labels, (N, C) scores without. These raised
    IndexError, KeyError or NumPy's errors about broadcasting or unpacking."""
    solver = Solver(model, _scripted_data(), num_epochs=1, batch_size=5, verbose=False)
    with pytest.raises(error) as info:
        solver.train()
    assert "model.loss(X" in str(info.value) and words in str(info.value)


def test_a_missing_gradient_is_found_before_any_parameter_is_updated():
    model = _Duck(train=lambda out: (out[0], {"t": out[1]["t"]}))
    model.params = {"t": np.zeros(1), "u": np.ones(2)}
    solver = Solver(model, _scripted_data(), num_epochs=1, batch_size=5, verbose=False,
                    optim_config={"learning_rate": 1.0})
    with pytest.raises(ValueError, match="no gradient for the parameter 'u'"):
        solver.train()
    assert model.params["t"][0] == 0 and solver.loss_history == []


@pytest.mark.parametrize("rule", ["sgd", "course-sgd"])
def test_a_gradient_of_another_shape_is_found_before_any_parameter_is_updated(rule):
    """A course rule (w -= lr * dw) would broadcast a (2,) gradient into a (2, 2) weight;
    fastnn's rules refused it after the parameters before it were updated, naming only dw."""
    update = "sgd" if rule == "sgd" else course_optim_rules()["sgd"]
    # ((2,) into "u" of shape (2, 2) broadcasts; (4,) and (1, 2, 2) have its size and do not)
    for bad in (np.ones(3), np.ones(2), np.ones(4), np.ones((1, 2, 2))):
        model = _Duck(train=lambda out, bad=bad: (out[0], {"t": out[1]["t"], "u": bad}))
        model.params = {"t": np.zeros(1), "u": np.ones((2, 2))}
        solver = Solver(model, _scripted_data(), num_epochs=1, batch_size=5, verbose=False,
                        update_rule=update, optim_config={"learning_rate": 1.0})
        with pytest.raises(ValueError, match=r"model\.loss\(X, y\) returned a gradient of shape "
                           rf"{re.escape(str(bad.shape))} for the parameter 'u' .* \(2, 2\)"):
            solver.train()
        assert model.params["t"][0] == 0 and solver.loss_history == []
        np.testing.assert_array_equal(model.params["u"], np.ones((2, 2)))


def test_a_number_for_a_one_element_parameters_gradient_trains_with_a_course_rule():
    """The shape check refuses gradients of another size; a number (a float, a 0-d array)
    for a parameter of shape (1,) is one element, and a course rule (w -= lr * dw) trains it."""
    for grad in (-1.0, np.array(-1.0), np.float32(-1.0)):
        model = _Duck(train=lambda out, grad=grad: (out[0], {"t": grad}))
        solver = Solver(model, _scripted_data(), num_epochs=2, batch_size=5, verbose=False,
                        update_rule=course_optim_rules()["sgd"], optim_config={"learning_rate": 1.0})
        solver.train()
        assert model.params["t"].shape == (1,) and model.params["t"][0] == solver.best_params["t"][0]
        assert len(solver.loss_history) == 2


@pytest.mark.parametrize("key", [0, ("W", 1), "a\0b", "W\udcff"],
                         ids=["int", "tuple", "nul", "lone-surrogate"])
def test_checkpoints_need_parameter_names_they_can_store(tmp_path, key):
    """Checkpoints store the parameters by name (a JSON list, .npz entries): a key that is
    not a str was written and then refused by load_checkpoint, and a NUL in one made an
    archive it could not read. Refused when the solver is made, and at a checkpoint for a
    key added since; without checkpoint_name such keys train as before."""
    def make():
        model = _Duck(train=lambda out: (out[0], {key: np.zeros(1), **out[1]}))
        model.params = {key: np.zeros(1), **model.params}
        return model
    with pytest.raises(ValueError, match="checkpoint_name .* keys must be str"):
        Solver(make(), _scripted_data(), checkpoint_name=str(tmp_path / "ck"), verbose=False)
    assert os.listdir(tmp_path) == []
    Solver(make(), _scripted_data(), num_epochs=1, batch_size=5, verbose=False).train()
    model = _Duck(train=lambda out: (out[0], {key: np.zeros(1), **out[1]}))
    solver = Solver(model, _scripted_data(), num_epochs=1, batch_size=5, verbose=False,
                    checkpoint_name=str(tmp_path / "ck"))
    model.params[key] = np.zeros(1)
    with pytest.raises(ValueError, match="checkpoint_name .* keys must be str"):
        solver.train()
    assert os.listdir(tmp_path) == []
    # names an archive can hold, odd as they are, come back
    model = _Duck(train=lambda out: (out[0], {"": np.zeros(1), "a.npy": np.zeros(1), **out[1]}))
    model.params = {"": np.zeros(1), "a.npy": np.zeros(1), **model.params}
    Solver(model, _scripted_data(), num_epochs=1, batch_size=5, verbose=False,
           checkpoint_name=str(tmp_path / "ok")).train()
    params, info = load_checkpoint(str(tmp_path / "ok_epoch_1"))
    assert sorted(params) == sorted(model.params) == sorted(info["param_names"])


def test_a_parameter_named_like_another_s_member_comes_back_as_saved(tmp_path):
    """Parameters "W" and "W.npy" are the members W.npy and W.npy.npy: load_checkpoint read
    "W.npy" as NumPy's NpzFile looks it up, the member W.npy, and returned W's array for it."""
    shapes = {"W": (2, 2), "W.npy": (3,), "W.npy.npy": (1, 4)}
    model = _Duck(train=lambda out: (out[0], {**{k: np.zeros(s) for k, s in shapes.items()},
                                              **out[1]}))
    model.params = {**{k: np.full(s, float(i + 2)) for i, (k, s) in enumerate(shapes.items())},
                    **model.params}
    Solver(model, _scripted_data(), num_epochs=1, batch_size=5, verbose=False,
           checkpoint_name=str(tmp_path / "ck")).train()
    params, _ = load_checkpoint(str(tmp_path / "ck_epoch_1.npz"))
    for key in shapes:
        assert_same_bits(params[key], model.params[key])


def test_a_renamed_checkpoint_is_refused_not_read_from_the_other_file(tmp_path):
    """A pair copied under another stem still names its first .npz inside its JSON:
    load_checkpoint("best.npz") returned the arrays of ck_epoch_1.npz (rewritten by a later
    run), not those of best.npz. Which arrays were meant is not known: a ValueError naming
    both files, whichever file of the pair (or the stem) is given."""
    import shutil

    def run(value):
        model = ScriptedModel()
        model.params = {k: np.full_like(v, value) for k, v in model.params.items()}
        Solver(model, _scripted_data(), num_epochs=1, batch_size=5, verbose=False,
               optim_config={"learning_rate": 0.0}, checkpoint_name=str(tmp_path / "ck")).train()
    run(1.0)
    for ext in (".npz", ".json"):
        shutil.copy(tmp_path / f"ck_epoch_1{ext}", tmp_path / f"best{ext}")
    run(2.0)
    for given in ("best.npz", "best.json", "best"):
        with pytest.raises(ValueError, match="describes the arrays in 'ck_epoch_1.npz', not "
                                             "those in 'best.npz'"):
            load_checkpoint(str(tmp_path / given))
    params, _ = load_checkpoint(str(tmp_path / "ck_epoch_1.npz"))   # (its own pair: the new run)
    assert all(np.all(v == 2.0) for v in params.values())
    with pytest.raises(ValueError, match="path must name a file, got a path with a NUL"):
        load_checkpoint(str(tmp_path / "ck\0_epoch_1"))


def test_model_params_may_be_any_mutable_mapping_and_checkpoint_name_a_bytes_path(tmp_path):
    """As the course's Solver, which only indexes and assigns into model.params."""
    import collections

    class BytesPath:
        def __fspath__(self):
            return os.fsencode(str(tmp_path / "ck"))

    model = ScriptedModel()
    model.params = collections.UserDict(model.params)
    solver = Solver(model, _scripted_data(), num_epochs=1, batch_size=5, verbose=False,
                    checkpoint_name=BytesPath(), optim_config={"learning_rate": 1.0})
    solver.train()
    assert solver.checkpoint_name == str(tmp_path / "ck")
    assert sorted(os.listdir(tmp_path)) == ["ck_epoch_1.json", "ck_epoch_1.npz"]


def test_a_model_params_that_is_not_a_dict_is_refused_when_the_solver_is_made():
    model = ScriptedModel()
    model.params = [np.zeros(1)]
    with pytest.raises(TypeError, match="model.params must be a dict"):
        Solver(model, _scripted_data(), verbose=False)


def test_the_solver_protocol_takes_a_list_pair_and_a_loss_of_any_real_type():
    """As the course's Solver's `loss, grads = model.loss(X, y)`: a list of two unpacks too;
    a NumPy scalar or 0-d array is a loss."""
    for train in (lambda out: list(out), lambda out: (np.float32(out[0]), out[1]),
                  lambda out: (np.array(out[0]), out[1])):
        solver = Solver(_Duck(train=train), _scripted_data(), num_epochs=2, batch_size=5,
                        update_rule="sgd", optim_config={"learning_rate": 1.0}, verbose=False)
        solver.train()
        assert len(solver.loss_history) == 2 and all(type(v) is float for v in solver.loss_history)


def test_train_calls_a_subclass_check_accuracy_as_the_course_solver_does():
    """A Solver subclass that overrides check_accuracy (another metric, logging) is called by
    train, twice per accuracy check, as the course's Solver calls it."""
    calls = []

    class Logged(Solver):
        def check_accuracy(self, X, y, num_samples=None, batch_size=100):
            calls.append(len(X))
            return super().check_accuracy(X, y, num_samples=num_samples, batch_size=batch_size)

    data = _data()
    plain = Solver(_model(), data, num_epochs=2, batch_size=20, verbose=False, seed=0)
    plain.train()
    logged = Logged(_model(), data, num_epochs=2, batch_size=20, verbose=False, seed=0)
    logged.train()
    assert len(calls) == 2 * len(plain.val_acc_history) > 0
    assert logged.val_acc_history == plain.val_acc_history


def test_a_checkpoint_whose_json_file_cannot_be_replaced_writes_neither_file(tmp_path):
    """A checkpoint is an .npz and a .json file. The .json's path is checked before the
    arrays are written: the arrays were written first, so a .json that could not be
    replaced (here a folder of that name) left new arrays beside an old description."""
    stem = tmp_path / "ck"
    (tmp_path / "ck_epoch_1.json").mkdir()
    solver = Solver(_model(), _data(), num_epochs=1, batch_size=20, verbose=False, seed=0,
                    checkpoint_name=str(stem))
    with pytest.raises(IsADirectoryError) as info:
        solver.train()
    assert info.value.filename == str(tmp_path / "ck_epoch_1.json")
    left = sorted(os.listdir(tmp_path))
    assert "ck_epoch_1.npz" not in left and not [f for f in left if f.endswith(".tmp")], left


def test_checkpoint_name_ending_in_a_slash_names_its_folder(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_name"):
        Solver(_model(), _data(), checkpoint_name=str(tmp_path / "missing") + os.sep, verbose=False)


# ------------------------------------------------------- the course's random draws (audit)
_course_sgd = course_optim_rules()["sgd"]


def _course_check_accuracy(model, X, y, num_samples, draw, batch_size=100):
    """The course's Solver.check_accuracy: a subsample WITH replacement, then batches."""
    N = X.shape[0]
    if num_samples is not None and N > num_samples:
        mask = draw.choice(N, num_samples)
        N = num_samples
        X = X[mask]
        y = y[mask]
    num_batches = N // batch_size + (N % batch_size != 0)
    y_pred = [np.argmax(model.loss(X[i * batch_size:(i + 1) * batch_size]), axis=1)
              for i in range(num_batches)]
    return np.mean(np.hstack(y_pred) == y)


def _course_train(model, data, draw, update_rule, optim_config, lr_decay, batch_size, num_epochs,
                  num_train_samples, num_val_samples):
    """The course's Solver.train, written out (its draws made with ``draw.choice``)."""
    configs = {p: dict(optim_config) for p in model.params}
    loss_history, train_acc, val_acc = [], [], []
    num_train = data["X_train"].shape[0]
    per_epoch = max(num_train // batch_size, 1)
    total = num_epochs * per_epoch
    for t in range(total):
        batch_mask = draw.choice(num_train, batch_size)
        loss, grads = model.loss(data["X_train"][batch_mask], data["y_train"][batch_mask])
        loss_history.append(loss)
        for p, w in model.params.items():
            model.params[p], configs[p] = update_rule(w, grads[p], configs[p])
        epoch_end = (t + 1) % per_epoch == 0
        if epoch_end:
            for k in configs:
                configs[k]["learning_rate"] *= lr_decay
        if t == 0 or t == total - 1 or epoch_end:
            train_acc.append(_course_check_accuracy(model, data["X_train"], data["y_train"],
                                                    num_train_samples, draw))
            val_acc.append(_course_check_accuracy(model, data["X_val"], data["y_val"],
                                                  num_val_samples, draw))
    return loss_history, train_acc, val_acc


@pytest.mark.parametrize("seed", [None, 5])
@pytest.mark.parametrize("samples", [(100, None), (100, 20), (None, None)], ids=str)
def test_training_draws_the_courses_random_numbers(seed, samples):
    """The Solver makes the course Solver's random draws, call for call (minibatches, then the
    accuracy subsamples WITH replacement), so after the same np.random.seed the loss and
    accuracy histories are the course's exactly, and np.random ends where the course's leaves
    it. With a Solver seed the same calls go to np.random.default_rng(seed)."""
    num_train_samples, num_val_samples = samples
    data = _data(n_train=300, n_val=60, seed=6)
    data = {k: v.astype(np.float64) if k.startswith("X") else v for k, v in data.items()}
    kw = dict(optim_config={"learning_rate": 5e-2}, lr_decay=0.9, batch_size=50, num_epochs=3,
              num_train_samples=num_train_samples, num_val_samples=num_val_samples)

    np.random.seed(1)
    course_model = TwoLayerNet(6, 12, 3, weight_scale=0.1)
    np.random.seed(2)
    draw = np.random if seed is None else np.random.default_rng(seed)
    course = _course_train(course_model, data, draw, _course_sgd, **kw)
    course_next = np.random.rand()

    np.random.seed(1)
    model = TwoLayerNet(6, 12, 3, weight_scale=0.1)
    np.random.seed(2)
    solver = Solver(model, data, update_rule=_course_sgd, verbose=False, seed=seed, **kw)
    solver.train()
    assert np.random.rand() == course_next
    assert solver.loss_history == [float(v) for v in course[0]]
    assert solver.train_acc_history == [float(v) for v in course[1]]
    assert solver.val_acc_history == [float(v) for v in course[2]]


# ------------------------------------------------------- checkpoints that fail part-way
def _failing_part_way(file_arg, text, nbytes=100):
    """A writer (``np.lib.format.write_array(fh, a)``, file_arg 0, or ``json.dump(obj, fh)``,
    file_arg 1) that writes ``nbytes`` and then fails as a full disk does."""
    def write(*args, **kwargs):
        args[file_arg].write(" " * nbytes if text else b"\0" * nbytes)
        raise OSError(28, "No space left on device")
    return write


@pytest.mark.parametrize("which", ["npz", "json"])
def test_checkpoint_write_failing_part_way_leaves_no_temporary_file(tmp_path, monkeypatch, which):
    """A checkpoint whose writing fails part-way raises the error and leaves no temporary file;
    a file of that name written before is left as it was."""
    folder = tmp_path / "ck"
    folder.mkdir()
    old = folder / f"net_epoch_0.{which}"
    old.write_bytes(b"an older run's file")
    if which == "npz":
        monkeypatch.setattr(np.lib.format, "write_array", _failing_part_way(0, text=False))
    else:
        monkeypatch.setattr(json, "dump", _failing_part_way(1, text=True))
    solver = Solver(_model(), _data(), num_epochs=1, batch_size=20, verbose=False, seed=0,
                    checkpoint_name=str(folder / "net"))
    with pytest.raises(OSError, match="No space left"):
        solver.train()
    expected = {old.name} if which == "npz" else {old.name, "net_epoch_0.npz"}
    assert {p.name for p in folder.iterdir()} == expected
    assert old.read_bytes() == b"an older run's file"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_checkpoint_over_the_file_size_limit_leaves_no_temporary_file(tmp_path):
    """The audit's case: a file-size limit (like a full disk or a quota) stops the write of the
    parameters part-way; the error propagates and nothing is left in the folder. Run in a child
    process, which alone gets the limit."""
    code = textwrap.dedent(f"""
        import os, resource, signal
        import numpy as np
        from fastnn.models import TwoLayerNet
        from fastnn.solver import Solver
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() then fails with EFBIG
        rng = np.random.default_rng(0)
        X = rng.standard_normal((200, 300)); y = rng.integers(0, 10, 200)
        net = TwoLayerNet(input_dim=300, hidden_dim=256, num_classes=10, seed=0)  # ~600 KiB
        s = Solver(net, dict(X_train=X, y_train=y, X_val=X, y_val=y), num_epochs=1,
                   batch_size=100, verbose=False, checkpoint_name={str(tmp_path / "run")!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
        try:
            s.train()
        except OSError as exc:
            print("OSError", exc.errno)
    """)
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.optim.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["OSError", "27"]   # EFBIG
    assert sorted(os.listdir(tmp_path)) == []


def test_checkpoint_files_get_the_mode_a_plain_open_gives(tmp_path):
    """The temporary files are made owner-only (mkstemp); the checkpoint files that replace
    them get the mode open(path, 'w') would have given them."""
    (tmp_path / "plain").write_bytes(b"")
    want = os.stat(tmp_path / "plain").st_mode & 0o777
    Solver(_model(), _data(), num_epochs=1, batch_size=60, verbose=False, seed=0,
           checkpoint_name=str(tmp_path / "net")).train()
    for ext in ("npz", "json"):
        assert os.stat(tmp_path / f"net_epoch_1.{ext}").st_mode & 0o777 == want, ext


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc/self/fd")
def test_a_truncated_checkpoint_leaves_no_file_open(tmp_path):
    """NumPy takes over a zip file it is given by name before its zip parsing fails; the error's
    traceback then held the file open for as long as the exception lived. The file is opened
    and closed by fastnn now: kept exceptions hold no file."""
    np.savez(tmp_path / "full.npz", W1=np.zeros((100, 100)))
    raw = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "ck.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "ck.json").write_text(json.dumps(
        {"format": "fastnn-solver-checkpoint", "version": 1, "params_file": "ck.npz",
         "param_names": ["W1"]}))

    def open_on_it():
        target = os.path.realpath(tmp_path / "ck.npz")
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")) == target
            except OSError:
                pass
        return n

    kept = []
    for _ in range(5):
        with pytest.raises(ValueError, match="not readable") as info:
            load_checkpoint(tmp_path / "ck")
        kept.append(info.value)
    assert open_on_it() == 0


def test_data_and_optim_config_may_be_read_only_mappings(tmp_path):
    """The course's Solver only reads data's four arrays and iterates optim_config's items:
    np.load's NpzFile of a saved dataset and a MappingProxyType train there, and were refused
    here as not dicts (a reviewer's find). Either trains as the same data in dicts does."""
    import types
    data = _data()
    np.savez(tmp_path / "d.npz", **data)
    runs = []
    for as_mapping in (False, True):
        np.random.seed(0)
        model = _model()
        config = {"learning_rate": 0.1}
        with np.load(tmp_path / "d.npz") as npz:
            solver = Solver(model, npz if as_mapping else dict(data), update_rule="sgd",
                            optim_config=types.MappingProxyType(config) if as_mapping else config,
                            num_epochs=2, batch_size=10, verbose=False)
            solver.train()
        runs.append((solver.loss_history, {k: v.copy() for k, v in model.params.items()}))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        assert_same_bits(runs[0][1][k], runs[1][1][k])
    with pytest.raises(TypeError, match=r"^data must be a dict \(or another mapping\), got list"):
        Solver(_model(), [data], verbose=False)
    with pytest.raises(TypeError, match=r"^optim_config must be a dict \(or another mapping\)"):
        Solver(_model(), data, optim_config=[("learning_rate", 0.1)], verbose=False)
