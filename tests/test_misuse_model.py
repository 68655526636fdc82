"""Misuse of the layer API, model files and Solver checkpoints that used to pass silently, compute
something else, or fail with an error naming nothing (found by the twelfth session's audits):

- files: a model or checkpoint file whose zip directory names an array many times (each entry
  was read again: minutes of loading from a few KB), a checkpoint asking for a name twice, a
  path that is not a regular file (a FIFO blocked forever, /dev/zero read until memory ran
  out), a version that is a bool or a float, a layer type that is not a string;
- save: parameters that load would refuse (NaN, replaced by an object array: np.savez would
  have pickled it), and a target that is a symbolic link (it stays a link);
- training: an optimizer of another model's parameters (nothing trained, the other model
  decayed), an empty optimizer, gradient arrays that share memory, a layer listed twice;
- layers: a Dense subclass with its own forward (the fused kernels bypassed it), a ReLU
  subclass after a Dense (KeyError), params / grads replaced by something that is not a dict,
  a missing entry, an np.matrix;
- optimizer hyper-parameters set after construction (now checked on every assignment).

And by the twentieth session's audit:

- a PReLU layer's slope replaced by something of the wrong shape or type (IndexError on the
  layer path, or a silently used first entry; train_step named it);
- layer settings assigned after construction: Dense.activation (the layer went on computing
  the old one while save recorded the new one) is read-only; Dense.alpha, LeakyReLU.alpha,
  Dropout.p and GaussianNoise.std are checked when set (a negative std was taken);
- fit left every layer in training mode (a model put in eval mode before fit applied dropout
  in forward after it);
- fit given the optimizer class instead of an object failed after the first forward pass;
- float labels 0.0 / 1.0 for the binary losses were refused (PyTorch's BCE takes only floats);
- a masked X or y lost its mask (its masked entries were trained on).

And by the twenty-second session's audit (the tests at the end of this file):

- a binary loss on a model of several outputs, MSE targets of another shape in evaluate, an
  input of the wrong width and an empty batch were named as the loss's or the first layer's
  ``x``, not as the model's scores or its ``X``;
- fit(verbose="no") printed and SGD(nesterov="no") turned Nesterov on;
- save into a missing folder named its hidden temporary file, save("") the current folder,
  and save replaced a read-only file (renaming needs only the folder's permission).

And by the twenty-fifth session's audit:

- save wrote files that loading refuses: a layer's params missing an entry or holding one
  more, or a W whose shape its description (get_config: in_features edited) does not give;
- MSE targets of a wrong shape given as a huge broadcast view were converted (copied: a
  MemoryError) before their shape was compared, in train_step, fit and evaluate;
- an optimizer's state is keyed by (id(layer), name) and outlived its layer: a layer made
  later at the dead one's id took its momentum (a silent wrong first step), and the state of
  every model an optimizer had trained stayed (it grew without bound);
- a layer's sizes (Dense's and Maxout's in_features, out_features, pieces; PReLU's
  num_parameters) could be set after construction: the compiled step trained on while the
  layer path refused X (they are read-only now, like Dense.activation);
- params or grads replaced by something that is not a dict, or an entry deleted, raised
  AttributeError or KeyError in predict, forward, evaluate, load, summary, parameters,
  zero_grad, step and a Parameter's repr; an optimizer's state could be set to a non-dict.

And by a later audit of huge broadcast views (converted, a MemoryError, before the shape check
that refuses them): fit, evaluate and train_step converted X before comparing y's length with
its rows (fit's X_val too); the layers' backward converted dout before comparing its shape
(ReLU, Sigmoid, Tanh, LeakyReLU, PReLU, Maxout, Dropout, GaussianNoise, and Dense for a dout
of another dtype than the layer's: Sequential.backward too); PReLU's forward converted x
before comparing its features with the slopes.
"""
import json
import os
import stat
import threading
import zipfile

import numpy as np
import pytest

import fastnn
import fastnn.functional as F
from fastnn import SGD, Adam, Dense, ReLU, RMSProp, Sequential, load_model
from fastnn.solver import load_checkpoint

from conftest import LayerPathIdentity

F32 = np.float32


def _data(n=16, d=5, c=3, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, d)).astype(F32), r.integers(0, c, n)


def _net(seed=0):
    return Sequential(Dense(5, 7, activation="relu", seed=seed), Dense(7, 3, seed=seed + 1))


# ------------------------------------------------------------------------------------ files
def _with_repeated_entry(src, dst, member, copies):
    """dst: src with `copies` more central-directory entries for `member`, all pointing at its
    one stored copy (a few dozen bytes each)."""
    raw = open(src, "rb").read()
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo(member)
    eocd = raw.rindex(b"PK\x05\x06")
    cd_size, cd_offset = np.frombuffer(raw[eocd + 12:eocd + 20], "<u4")
    entries = raw[cd_offset:cd_offset + cd_size]
    # the member's own central-directory record (each record: a signature, 46 bytes, its
    # name, extra field and comment)
    pos = 0
    record = None
    while pos < len(entries):
        assert entries[pos:pos + 4] == b"PK\x01\x02", "not a central-directory record"
        name_len, extra_len, comment_len = np.frombuffer(entries[pos + 28:pos + 34], "<u2")
        end = pos + 46 + name_len + extra_len + comment_len
        if entries[pos + 46:pos + 46 + name_len].decode() == info.filename:
            record = entries[pos:end]
        pos = end
    assert record is not None
    new_cd = entries + record * copies
    n_entries = int(np.frombuffer(raw[eocd + 10:eocd + 12], "<u2")[0]) + copies
    eocd_rec = bytearray(raw[eocd:])
    eocd_rec[8:10] = np.array([n_entries], "<u2").tobytes()
    eocd_rec[10:12] = np.array([n_entries], "<u2").tobytes()
    eocd_rec[12:16] = np.array([len(new_cd)], "<u4").tobytes()
    with open(dst, "wb") as f:
        f.write(raw[:cd_offset] + new_cd + bytes(eocd_rec))


def test_a_model_file_naming_an_array_twice_is_refused(tmp_path):
    src, dst = tmp_path / "m.npz", tmp_path / "dup.npz"
    _net().save(src)
    _with_repeated_entry(src, dst, "0.W.npy", 3)
    with zipfile.ZipFile(dst) as zf:   # (the file is what the test means: one name, 4 entries)
        assert [i.filename for i in zf.infolist()].count("0.W.npy") == 4
    with pytest.raises(ValueError, match="two entries named '0.W.npy'"):
        load_model(dst)
    with pytest.raises(ValueError, match="two entries named"):
        _net().load(dst)
    load_model(src)   # the original still loads


def _checkpoint(tmp_path, **changes):
    np.savez(tmp_path / "ck_epoch_1.npz", W1=np.zeros((3, 3), F32))
    info = {"format": "fastnn-solver-checkpoint", "version": 1, "params_file": "ck_epoch_1.npz",
            "param_names": ["W1"]}
    info.update(changes)
    (tmp_path / "ck_epoch_1.json").write_text(json.dumps(info))
    return tmp_path / "ck_epoch_1.json"


def test_a_checkpoint_asking_for_a_name_twice_is_refused(tmp_path):
    params, _ = load_checkpoint(_checkpoint(tmp_path))
    assert list(params) == ["W1"]
    with pytest.raises(ValueError, match="param_names names a parameter twice"):
        load_checkpoint(_checkpoint(tmp_path, param_names=["W1"] * 50))


@pytest.mark.parametrize("version", [True, 1.0, "1", None, 2])
def test_a_checkpoint_version_must_be_the_int_this_fastnn_reads(tmp_path, version):
    with pytest.raises(ValueError, match="checkpoint version"):
        load_checkpoint(_checkpoint(tmp_path, version=version))


def _unblock_later(fifo):
    """Should a reader wait on the FIFO (the bug), open its other end after a few seconds so
    that the test fails instead of hanging."""
    def writer():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:   # no reader waiting (the fix): nothing to unblock
            return
        os.close(fd)

    timer = threading.Timer(5.0, writer)
    timer.daemon = True
    timer.start()
    return timer


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_not_waited_on(tmp_path):
    for name, load in (("m.npz", load_model), ("ck.json", load_checkpoint)):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        timer = _unblock_later(fifo)
        try:
            with pytest.raises(ValueError, match="not a regular file"):
                load(fifo)
        finally:
            timer.cancel()


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_a_device_is_refused(tmp_path):
    """(/dev/zero, which never ends, was read until memory ran out; /dev/null is the harmless
    device of the same kind to test with.)"""
    with pytest.raises(ValueError, match="not a regular file"):
        load_model("/dev/null")
    os.symlink("/dev/null", tmp_path / "ck_epoch_1.json")
    with pytest.raises(ValueError, match="not a regular file"):
        load_checkpoint(tmp_path / "ck_epoch_1.json")
    os.unlink(tmp_path / "ck_epoch_1.json")
    path = _checkpoint(tmp_path)
    os.unlink(tmp_path / "ck_epoch_1.npz")
    os.symlink("/dev/null", tmp_path / "ck_epoch_1.npz")
    with pytest.raises(ValueError, match="not a regular file"):
        load_checkpoint(path)


def _rewrite_meta(src, dst, edit):
    from fastnn.model import _META_KEY
    with np.load(src) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays[_META_KEY].tobytes().decode())
    edit(meta)
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(dst, **arrays)


@pytest.mark.parametrize("version", [True, 1.0])
def test_a_model_file_version_must_be_an_int(tmp_path, version):
    _net().save(tmp_path / "m.npz")
    _rewrite_meta(tmp_path / "m.npz", tmp_path / "v.npz", lambda m: m.update(version=version))
    with pytest.raises(ValueError, match="format version"):
        load_model(tmp_path / "v.npz")


@pytest.mark.parametrize("kind", [["Dense"], {"Dense": 1}, 3])
def test_a_layer_type_that_is_not_a_string_is_a_value_error(tmp_path, kind):
    _net().save(tmp_path / "m.npz")
    _rewrite_meta(tmp_path / "m.npz", tmp_path / "t.npz", lambda m: m["layers"][0].update(type=kind))
    with pytest.raises(ValueError, match="layer 0 has an unknown description"):
        load_model(tmp_path / "t.npz")


def test_a_model_file_without_layers_names_the_file(tmp_path):
    _net().save(tmp_path / "m.npz")
    from fastnn.model import _META_KEY
    with np.load(tmp_path / "m.npz") as npz:
        meta = json.loads(npz[_META_KEY].tobytes().decode())
    meta["layers"] = []
    np.savez(tmp_path / "e.npz", **{_META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    with pytest.raises(ValueError, match="e.npz: its layers do not make a model"):
        load_model(tmp_path / "e.npz")


# ------------------------------------------------------------------------------------- save
def test_save_refuses_what_load_would_refuse_and_writes_nothing(tmp_path):
    model = _net()
    model.layers[0].params["b"][2] = np.nan
    with pytest.raises(ValueError, match=r"layer 0 \(Dense\) parameter b holds NaN"):
        model.save(tmp_path / "nan.npz")
    model = _net()
    model.layers[1].params["W"] = np.empty((7, 3), dtype=object)
    with pytest.raises(TypeError, match=r"layer 1 \(Dense\) parameter W must be a float32 or "
                                        "float64 array, got object"):
        model.save(tmp_path / "obj.npz")
    model = _net()
    model.layers[1].params["b"] = np.zeros(3, np.float64)
    with pytest.raises(ValueError, match=r"parameter b must have shape \(3,\) and dtype float32"):
        model.save(tmp_path / "f64.npz")
    assert os.listdir(tmp_path) == []


def test_save_does_not_check_gradients(tmp_path):
    """A model whose gradient arrays were dropped for inference (a broadcast zero, read-only
    and not contiguous) still saves: gradients are not part of the file."""
    model = _net()
    for layer in model.layers:
        for name, g in layer.grads.items():
            layer.grads[name] = np.broadcast_to(np.float32(0), g.shape)
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(load_model(tmp_path / "m.npz").layers[0].params["W"],
                                  model.layers[0].params["W"])


def test_save_never_pickles(tmp_path, monkeypatch):
    """Every member is written with allow_pickle=False (an object array that got past the
    checks would be an error, not a pickle)."""
    import fastnn._files as ffiles
    seen = []
    real = np.lib.format.write_array

    def spy(fp, array, version=None, allow_pickle=True, pickle_kwargs=None):
        seen.append(allow_pickle)
        return real(fp, array, version, allow_pickle, pickle_kwargs)

    monkeypatch.setattr(ffiles.np.lib.format, "write_array", spy)
    _net().save(tmp_path / "m.npz")
    assert seen and not any(seen)
    with open(tmp_path / "o.npz", "wb") as f, pytest.raises(ValueError, match="allow_pickle"):
        ffiles.write_npz(f, {"a": np.array([object()])})


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_save_through_a_symbolic_link_keeps_the_link(tmp_path):
    target = tmp_path / "real" / "m.npz"
    target.parent.mkdir()
    _net(seed=1).save(target)
    link = tmp_path / "link.npz"
    os.symlink(target, link)
    model = _net(seed=2)
    model.save(link)
    assert stat.S_ISLNK(os.lstat(link).st_mode)
    np.testing.assert_array_equal(load_model(target).layers[0].params["W"],
                                  model.layers[0].params["W"])
    assert sorted(os.listdir(target.parent)) == ["m.npz"]


# --------------------------------------------------------------------------------- training
def test_an_optimizer_of_another_models_parameters_is_refused():
    X, y = _data()
    a, b = _net(seed=0), _net(seed=1)
    before = [p.data.copy() for p in b.parameters()]
    opt = SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for step in (lambda: a.train_step(X, y, "softmax", opt),
                 lambda: a.fit(X, y, optimizer=opt, epochs=1, batch_size=8, verbose=False)):
        with pytest.raises(ValueError, match="none of this model.s parameters"):
            step()
    for p, q in zip(b.parameters(), before):   # the other model was not touched either
        np.testing.assert_array_equal(p.data, q)
    # a subset of the model's own parameters is fine (the rest stay frozen)
    first = a.layers[0]
    frozen = first.params["W"].copy()
    a.train_step(X, y, "softmax", SGD([p for p in a.parameters() if p.layer is not first], lr=0.1))
    np.testing.assert_array_equal(first.params["W"], frozen)


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
                                  lambda ps: Adam(ps, lr=0.01, weight_decay=0.01)],
                         ids=["momentum", "adam"])
def test_an_optimizer_over_two_models_that_share_a_layer_trains_each_with_its_own_batch(make):
    """One optimizer may hold parameters of several models. A step of one model updates that
    model's parameters only, as PyTorch's step skips a parameter that the backward since
    zero_grad() gave no gradient: a.train_step stepped b's head too, with the gradient b's
    last step left (and its momentum). a's parameters come out as with an optimizer of its
    own (a check of the subset step's numbers: the old code gave them too, since b's head
    never feeds a's loss); b's head is left bit for bit (what failed before); fit's check of
    the gradients looks at a's only (b's NaN gradient stopped it before)."""
    X, y = _data()
    shared = Dense(5, 7, activation="relu", seed=0)
    a = Sequential(shared, Dense(7, 3, seed=1))
    b = Sequential(shared, Dense(7, 2, seed=2))
    opt = make(a.parameters() + b.parameters()[2:])
    twin = Sequential(Dense(5, 7, activation="relu", seed=0), Dense(7, 3, seed=1))
    twin_opt = make(twin.parameters())
    W = shared.params["W"].copy()
    for step in range(3):
        b.train_step(X, y % 2, "softmax", opt)
        head = [p.data.copy() for p in b.parameters()[2:]]
        a.train_step(X, y, "softmax", opt)
        for p, before in zip(b.parameters()[2:], head):
            np.testing.assert_array_equal(p.data, before)
        assert not np.array_equal(shared.params["W"], W)
    # a alone, from b's weights of the shared layer at each step: as a twin with its own
    # optimizer, when b does not step in between
    twin.layers[0].params["W"][...] = shared.params["W"]
    twin.layers[0].params["b"][...] = shared.params["b"]
    twin.layers[1].params["W"][...] = a.layers[1].params["W"]
    twin.layers[1].params["b"][...] = a.layers[1].params["b"]
    opt.state.clear()
    if hasattr(opt, "t"):
        opt.t = twin_opt.t = 0
    for step in range(3):
        assert a.train_step(X, y, "softmax", opt) == twin.train_step(X, y, "softmax", twin_opt)
    for p, q in zip(a.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    # b's head holding a non-finite gradient does not stop a's fit
    b.layers[1].grads["W"][...] = np.nan
    history = a.fit(X, y, loss="softmax", optimizer=opt, epochs=1, batch_size=len(X), seed=0,
                    verbose=0)
    assert np.isfinite(history["loss"]).all() and len(history["loss"]) == 1


class _Block(fastnn.Layer):
    """A layer of the caller's own made of two Dense layers (its parameters are theirs)."""

    def __init__(self):
        super().__init__()
        self.inner = [Dense(5, 6, activation="tanh", seed=7), Dense(6, 4, seed=8)]

    def parameters(self):
        return [p for layer in self.inner for p in layer.parameters()]

    def forward(self, x, training=None):
        for layer in self.inner:
            x = layer.forward(x, training)
        return x

    def backward(self, dout, need_dx=True):
        dout = self.inner[1].backward(dout)
        return self.inner[0].backward(dout, need_dx=need_dx)

    def output_features(self, in_features):
        return 4

    def get_config(self):
        return {}


def test_a_layer_of_layers_trains_with_the_models_optimizer():
    X, y = _data()
    model = Sequential(_Block(), Dense(4, 3, seed=9))
    opt = SGD(model.parameters(), lr=0.1)
    W = model.layers[0].inner[0].params["W"].copy()
    model.train_step(X, y, "softmax", opt)
    assert not np.array_equal(model.layers[0].inner[0].params["W"], W)


def test_an_optimizer_with_its_parameters_removed_is_refused():
    X, y = _data()
    model = _net()
    opt = Adam(model.parameters())
    opt.params.clear()
    with pytest.raises(ValueError, match="no parameters"):
        model.train_step(X, y, "softmax", opt)


@pytest.mark.parametrize("share", ["grad-grad", "grad-param", "view"])
def test_gradients_sharing_memory_are_refused_on_both_paths(share):
    X, y = _data(300)
    for layer_path in (False, True):
        model = _net()
        l0, l1 = model.layers
        if share == "grad-grad":
            l1.grads["b"] = l0.grads["b"][:3]
        elif share == "grad-param":
            l1.grads["W"] = l1.params["W"]
        else:
            l0.grads["b"] = l0.grads["W"][0]
        if layer_path:
            model._compilable = False
        before = [p.data.copy() for p in model.parameters()]
        with pytest.raises(ValueError, match="shares memory with"):
            model.train_step(X, y, "softmax", SGD(model.parameters(), lr=0.1))
        for p, q in zip(model.parameters(), before):
            np.testing.assert_array_equal(p.data, q)


def test_parameters_may_share_memory_with_each_other():
    """Only gradients are written by the kernels: two layers reading one weight array train
    (the same on both paths)."""
    X, y = _data()
    losses = []
    for layer_path in (False, True):
        model = Sequential(Dense(5, 5, activation="tanh", seed=0), Dense(5, 5, seed=1))
        model.layers[1].params["W"] = model.layers[0].params["W"]
        if layer_path:
            model._compilable = False
        losses.append([model.train_step(X, y, "softmax", SGD(model.parameters(), lr=0.1))
                       for _ in range(3)])
    assert losses[0] == losses[1]


def test_one_activation_object_used_twice_trains_as_two():
    """A parameterless activation fused into the Dense before it keeps nothing: using one
    ReLU object twice trains exactly as two do, on both paths (and with an identity layer in
    the stack that puts the model on the layer path)."""
    X, y = _data()
    for dropout in (False, True):
        runs = []
        for shared in (True, False):
            act = ReLU()
            acts = (act, act) if shared else (ReLU(), ReLU())
            layers = [Dense(5, 8, seed=1), acts[0], Dense(8, 8, seed=2), acts[1], Dense(8, 3, seed=3)]
            if dropout:
                layers.insert(2, LayerPathIdentity())
            model = Sequential(*layers)
            opt = SGD(model.parameters(), lr=0.1)
            runs.append([model.train_step(X, y, "softmax", opt) for _ in range(3)])
        assert runs[0] == runs[1]


def test_a_layer_listed_twice_is_refused_for_training_but_predicts_and_saves(tmp_path):
    X, y = _data()
    layer = Dense(5, 5, activation="tanh", seed=0)
    model = Sequential(layer, layer)
    want = model.predict(X)
    model.save(tmp_path / "twice.npz")
    # (stored at each place: the loaded model predicts the same with two equal layers)
    np.testing.assert_array_equal(load_model(tmp_path / "twice.npz").predict(X), want)
    assert [p.name for p in model.parameters()] == ["W", "b"]   # (each once, as in PyTorch)
    assert model.num_params == layer.num_params == 30
    with pytest.raises(ValueError, match="layer 1 is layer 0 again"):
        model.train_step(X, y % 5, "softmax", SGD(model.parameters(), lr=0.1))


def test_arrays_checked_apart_are_not_kept_alive():
    import gc
    import weakref
    X, y = _data()
    model = _net()
    opt = SGD(model.parameters(), lr=0.1)
    model._compilable = False   # (the layer path: the plan of the other would hold them)
    model.train_step(X, y, "softmax", opt)
    old = weakref.ref(model.layers[0].grads["W"])
    model.layers[0].grads["W"] = np.zeros_like(model.layers[0].grads["W"])
    gc.collect()
    assert old() is None
    model.train_step(X, y, "softmax", opt)   # (and the replacement is checked)


# ----------------------------------------------------------------------------------- layers
class _Doubled(Dense):
    def forward(self, x, training=None):
        return 2 * super().forward(x, training)


def test_a_dense_subclass_with_its_own_forward_is_not_fused_away():
    X, _ = _data()
    plain = Sequential(Dense(5, 4, seed=3), ReLU())
    doubled = Sequential(_Doubled(5, 4, seed=3), ReLU())
    np.testing.assert_allclose(doubled.predict(X), 2 * plain.predict(X), rtol=1e-6)
    np.testing.assert_allclose(doubled.forward(X), 2 * plain.forward(X), rtol=1e-6)


def test_a_relu_subclass_after_a_dense_builds():
    class MyReLU(fastnn.ReLU):
        pass

    class MyLeaky(fastnn.LeakyReLU):
        pass

    X, _ = _data()
    for act, ref in ((MyReLU(), ReLU()), (MyLeaky(0.2), fastnn.LeakyReLU(0.2))):
        mine = Sequential(Dense(5, 4, seed=3), act, Dense(4, 2, seed=4))
        theirs = Sequential(Dense(5, 4, seed=3), ref, Dense(4, 2, seed=4))
        np.testing.assert_allclose(mine.predict(X), theirs.predict(X), rtol=1e-6)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("damage, error, match", [
    (lambda layer: layer.params.pop("b"), ValueError, r"Dense.params has no entry 'b'"),
    (lambda layer: setattr(layer, "params", None), TypeError, r"Dense.params must be a dict"),
    (lambda layer: setattr(layer, "grads", [1]), TypeError, r"Dense.grads must be a dict"),
    (lambda layer: layer.params.update(W=np.matrix(layer.params["W"])), TypeError,
     r"Dense.params\['W'\] must be a numpy.ndarray \(not a subclass\), got matrix"),
])
def test_damaged_layer_dicts_are_named(damage, error, match):
    X, y = _data()
    for layer_path in (False, True):
        model = _net()
        opt = SGD(model.parameters(), lr=0.1)
        model.train_step(X, y, "softmax", opt)   # (a plan is built: then the damage)
        damage(model.layers[0])
        if layer_path:
            model._compilable = False
        with pytest.raises(error, match=match):
            model.train_step(X, y, "softmax", opt)


def test_custom_layers_with_dict_subclasses_and_extra_gradients_train():
    from collections import OrderedDict

    class Scale(fastnn.Layer):
        def __init__(self, n):
            super().__init__()
            self.params = OrderedDict(s=np.ones(n, F32))
            self.grads = OrderedDict(s=np.zeros(n, F32), note=None)   # (an extra of its own)

        def forward(self, x, training=None):
            self._x = x
            return x * self.params["s"]

        def backward(self, dout, need_dx=True):
            self.grads["s"][...] = (dout * self._x).sum(axis=0)
            return dout * self.params["s"]

        def output_features(self, in_features):
            return in_features

        def get_config(self):
            return {}

    X, y = _data()
    model = Sequential(Dense(5, 3, seed=0), Scale(3))
    model.train_step(X, y, "softmax", SGD(model.parameters(), lr=0.1))
    assert not np.array_equal(model.layers[1].params["s"], np.ones(3, F32))


# ------------------------------------------------------------------------ optimizer settings
def _setting_id(v):
    if isinstance(v, str):
        return v
    if isinstance(v, type):
        return v.__name__
    return "make" if callable(v) else repr(v)[:12]


@pytest.mark.parametrize("make, name, bad, error", [
    (lambda p: SGD(p), "lr", "x", TypeError),
    (lambda p: SGD(p), "lr", 10 ** 400, ValueError),
    (lambda p: SGD(p), "lr", float("nan"), ValueError),
    (lambda p: SGD(p), "lr", -0.1, ValueError),
    (lambda p: SGD(p, momentum=0.9, nesterov=True), "momentum", 0.0, ValueError),
    (lambda p: SGD(p), "nesterov", True, ValueError),
    (lambda p: SGD(p), "weight_decay", -1.0, ValueError),
    (lambda p: SGD(p), "momentum", "0.9", TypeError),
    (lambda p: RMSProp(p), "decay_rate", 1.0, ValueError),
    (lambda p: RMSProp(p), "eps", float("inf"), ValueError),
    (lambda p: Adam(p), "betas", (0.9,), ValueError),
    (lambda p: Adam(p), "betas", (0.9, 1.5), ValueError),
    (lambda p: Adam(p), "t", -1, ValueError),
    (lambda p: Adam(p), "t", 1.5, TypeError),
], ids=_setting_id)
def test_optimizer_settings_are_checked_when_set(make, name, bad, error):
    model = _net()
    opt = make(model.parameters())
    good = getattr(opt, name)
    with pytest.raises(error, match=name if name != "nesterov" else "momentum > 0"):
        setattr(opt, name, bad)
    assert getattr(opt, name) == good   # unchanged
    X, y = _data()
    model.train_step(X, y, "softmax", opt)   # and still trains


def test_a_learning_rate_of_zero_is_allowed():
    """(A warm-up or a schedule's end: as in PyTorch, and in fastnn.optim.)"""
    X, y = _data()
    model = _net()
    before = [p.data.copy() for p in model.parameters()]
    opt = SGD(model.parameters(), lr=0.0)
    model.train_step(X, y, "softmax", opt)
    for p, q in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, q)
    opt.lr = 0.1
    opt.lr = 0
    assert opt.lr == 0.0


def test_optimizer_settings_set_later_are_used():
    X, y = _data()
    runs = []
    for later in (False, True):
        model = _net()
        opt = SGD(model.parameters(), lr=0.5 if not later else 0.01, momentum=0.0)
        if later:
            opt.lr = np.float32(0.5)   # (a NumPy scalar, as a schedule may compute it)
        runs.append([model.train_step(X, y, "softmax", opt) for _ in range(3)])
        assert type(opt.lr) is float
    assert runs[0] == runs[1]


def test_course_models_name_X_when_its_width_is_wrong():
    from fastnn.models import FullyConnectedNet, TwoLayerNet

    for net in (TwoLayerNet(input_dim=4, hidden_dim=5, num_classes=3),
                FullyConnectedNet([5], input_dim=4, num_classes=3)):
        with pytest.raises(ValueError, match=r"X must have 4 features per row \(W1 has 4 rows\)"):
            net.loss(np.zeros((6, 5)))
        assert net.loss(np.zeros((6, 2, 2))).shape == (6, 3)   # (N, d1, ..., dk) flattened


def test_get_loss_takes_stand_ins_of_a_loss():
    """A Loss class without fn of its own (a test's mock) is not the base class's nothing."""
    from unittest import mock

    from fastnn.losses import SoftmaxCrossEntropy, get_loss

    stand_in = mock.create_autospec(SoftmaxCrossEntropy, instance=True)
    assert get_loss(stand_in) is stand_in
    magic = mock.MagicMock(spec=fastnn.losses.Loss)
    assert get_loss(magic) is magic


@pytest.mark.parametrize("shape, want", [(5, (5,)), ((), ()), (np.array([3, 4]), (3, 4)),
                                         ([2, 3], (2, 3)), ((np.int64(2), 3), (2, 3))])
@pytest.mark.parametrize("init", ["he_normal", "xavier_normal", "scaled"])
def test_initializers_take_what_numpy_takes_as_a_size(init, shape, want):
    from fastnn import init as I

    fn = I.scaled_normal(0.1) if init == "scaled" else getattr(I, init)
    rng = np.random.default_rng(0)
    out = fn(shape, rng)
    assert out.shape == want and out.dtype == np.float32
    if want:   # (a 0-d draw is a NumPy scalar: native byte order)
        assert fn(shape, rng, dtype=">f8").dtype == np.dtype(">f8")
    for bad, exc in ((-1, ValueError), (2.5, TypeError), ("3", TypeError)):
        with pytest.raises(exc, match="shape"):
            fn(bad, rng)
    for bad in ("U3", np.int32, np.float16):
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            fn(shape, rng, dtype=bad)


@pytest.mark.parametrize("value, exc", [(np.float32(0.1), TypeError), (np.array([], F32), ValueError),
                                        (np.array([0.1, 0.9], F32), ValueError),
                                        (np.array([[0.1]], F32), ValueError), ([0.1], TypeError)])
def test_a_replaced_prelu_slope_is_named_on_every_path(value, exc):
    x = -np.ones((2, 3), F32)
    for run in (lambda m: m.layers[0].forward(x), lambda m: m.forward(x), lambda m: m.predict(x),
                lambda m: m.train_step(x, np.zeros(2, int), "softmax", SGD(m.parameters()))):
        model = Sequential(fastnn.PReLU())
        model.layers[0].params["alpha"] = value
        with pytest.raises(exc, match=r"PReLU\.params\['alpha'\]"):
            run(model)


def test_layer_settings_are_checked_when_set():
    d = Dense(3, 2, activation="leaky_relu", seed=0)
    with pytest.raises(AttributeError):
        d.activation = "relu"
    assert d.activation == "leaky_relu" and d.get_config()["activation"] == "leaky_relu"
    for layer, name, bad, exc in ((d, "alpha", "a", TypeError), (d, "alpha", np.nan, ValueError),
                                  (fastnn.LeakyReLU(), "alpha", None, TypeError),
                                  (fastnn.Dropout(0.5), "p", 1.0, ValueError),
                                  (fastnn.Dropout(0.5), "p", -0.1, ValueError),
                                  (fastnn.GaussianNoise(0.1), "std", -1.0, ValueError)):
        before = getattr(layer, name)
        with pytest.raises(exc, match=rf"^{type(layer).__name__}\.{name}"):
            setattr(layer, name, bad)
        assert getattr(layer, name) == before
    # a good value is taken, and the whole-step kernel and the layer path use it
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(F32)
    d.alpha = 0.3
    z = x @ d.params["W"] + d.params["b"]
    np.testing.assert_allclose(d.forward(x), np.where(z > 0, z, np.float32(0.3) * z), rtol=1e-6)
    # the whole-step kernel's plan picks up an alpha set after it was built: its steps give
    # the numbers of a model built with that alpha
    y = np.arange(6) % 2
    models = [Sequential(Dense(3, 4, activation="leaky_relu", alpha=a, seed=0), fastnn.LeakyReLU(b),
                         Dense(4, 2, seed=1)) for a, b in ((0.01, 0.01), (0.3, 0.2))]
    first = models[0].train_step(x, y, "softmax", SGD(models[0].parameters(), lr=0.1))
    models[0].layers[0].alpha, models[0].layers[1].alpha = 0.3, 0.2
    models[1].train_step(x, y, "softmax", SGD(models[1].parameters(), lr=0.1))
    for m in models:
        m.layers[0].params["W"][...] = models[1].layers[0].params["W"]   # (same start)
        m.layers[2].params["W"][...] = models[1].layers[2].params["W"]
        m.layers[0].params["b"][...] = 0
        m.layers[2].params["b"][...] = 0
    got = [m.train_step(x, y, "softmax", SGD(m.parameters(), lr=0.1)) for m in models]
    assert got[0] == got[1] and np.isfinite(first)
    np.testing.assert_array_equal(models[0].layers[0].params["W"], models[1].layers[0].params["W"])
    drop = fastnn.Dropout(0.5, seed=0)
    drop.p = 0.0
    np.testing.assert_array_equal(drop.forward(x), x)
    noise = fastnn.GaussianNoise(0.1, seed=0)
    noise.std = 0.0
    np.testing.assert_array_equal(noise.forward(x), x)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh"])
def test_a_slope_set_on_a_dense_without_one_is_refused(activation):
    """The constructor refuses alpha for an activation without a slope; set later, it was
    kept and never used (a relu Dense stayed a relu). A slope layer still takes one."""
    d = Dense(3, 2, activation=activation, seed=0, dtype=np.float64)
    before = d.alpha
    x = np.random.default_rng(0).standard_normal((4, 3))
    out = d.forward(x)
    with pytest.raises(ValueError, match=rf"^Dense\.alpha .*activation {activation!r} has none"):
        d.alpha = 0.2
    assert d.alpha == before and "alpha" not in d.get_config()
    np.testing.assert_array_equal(d.forward(x), out)
    with pytest.raises(TypeError, match=r"^Dense\.alpha"):   # (the value's own check first)
        d.alpha = "a"
    for sloped in ("leaky_relu", "prelu"):
        s = Dense(3, 2, activation=sloped, seed=0)
        s.alpha = 0.2
        assert s.alpha == 0.2 and s.get_config()["alpha"] == 0.2
    # a copy and a pickle keep the check (it is the class's)
    import copy
    import pickle
    for c in (copy.deepcopy(d), pickle.loads(pickle.dumps(d))):
        with pytest.raises(ValueError, match=r"^Dense\.alpha"):
            c.alpha = 0.2


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fit_leaves_each_layer_in_the_mode_it_found(mode):
    X, y = _data()
    model = Sequential(Dense(5, 7, activation="relu", seed=0), fastnn.Dropout(0.5, seed=1), Dense(7, 3, seed=2))
    getattr(model, mode)()
    model.layers[1].train(mode != "train")   # a mix: the dropout layer in the other mode
    want = [layer.training for layer in model.layers]
    model.fit(X, y, epochs=1, batch_size=8, verbose=False, seed=0)
    assert [layer.training for layer in model.layers] == want


    class Boom(fastnn.SoftmaxCrossEntropy):
        """(a loss class of the caller's own: fit steps on the layer path) raising on its
        second batch, after fit has put the layers in training mode"""
        calls = 0

        def __call__(self, scores, y):
            type(self).calls += 1
            if type(self).calls == 2:
                raise RuntimeError("boom")
            return super().__call__(scores, y)

    with pytest.raises(RuntimeError, match="boom"):
        model.fit(X, y, loss=Boom(), epochs=1, batch_size=8, verbose=False, seed=0)
    assert Boom.calls == 2
    assert [layer.training for layer in model.layers] == want   # (a failed fit too)


def test_fit_given_the_optimizer_class_says_so_before_training():
    X, y = _data()
    model = _net()
    W = model.layers[0].params["W"].copy()
    with pytest.raises(TypeError, match="optimizer .* the class Adam"):
        model.fit(X, y, optimizer=Adam, epochs=1, verbose=False)
    with pytest.raises(TypeError, match="the class SGD"):
        model.train_step(X, y, "softmax", SGD)
    np.testing.assert_array_equal(model.layers[0].params["W"], W)


@pytest.mark.parametrize("loss, labels", [("logistic", (0, 1)), ("binary_hinge", (-1, 1))])
def test_binary_losses_train_on_float_labels_as_on_integer_ones(loss, labels):
    r = np.random.default_rng(0)
    X = r.standard_normal((24, 5)).astype(F32)
    yi = np.where(X[:, 0] > 0, labels[1], labels[0])
    results = []
    for y in (yi, yi.astype(np.float64), yi.astype(F32).reshape(-1, 1)):
        model = Sequential(Dense(5, 4, activation="relu", seed=0), Dense(4, 1, seed=1))
        opt = SGD(model.parameters(), lr=0.1)
        hist = model.fit(X, y, loss=loss, epochs=2, batch_size=8, verbose=False, seed=0)
        step = model.train_step(X, y, loss, opt)   # (the whole-step kernel's labels)
        results.append((hist["loss"], step, model.layers[0].params["W"].copy()))
    for got in results[1:]:
        assert got[0] == results[0][0] and got[1] == results[0][1]
        np.testing.assert_array_equal(got[2], results[0][2])
    bad = yi.astype(np.float64)
    bad[5] = 0.5
    model = Sequential(Dense(5, 1, seed=0))
    with pytest.raises(ValueError, match=r"y must hold .*0\.5 \(at index 5\)"):
        model.fit(X, bad, loss=loss, verbose=False)
    with pytest.raises(ValueError, match=r"y must hold .*0\.5 \(at index 5\)"):
        model.train_step(X, bad, loss, SGD(model.parameters()))
    with pytest.raises(TypeError, match="y must hold integer class labels"):
        Sequential(Dense(5, 2, seed=0)).fit(X, yi.astype(np.float64), verbose=False)   # (multiclass)


def test_a_masked_X_or_y_with_masked_entries_is_refused():
    X, y = _data()
    model = _net()
    mX = np.ma.array(X, mask=np.zeros(X.shape, bool))
    my = np.ma.array(y, mask=np.zeros(y.shape, bool))
    mX.mask[3, 1] = True
    my.mask[2] = True
    opt = SGD(model.parameters())
    W = model.layers[0].params["W"].copy()
    for run, name in ((lambda: model.fit(mX, y, verbose=False), "X"), (lambda: model.fit(X, my, verbose=False), "y"),
                      (lambda: model.train_step(mX, y, "softmax", opt), "X"),
                      (lambda: model.train_step(X, my, "softmax", opt), "y"),
                      (lambda: model.predict(mX), "X"), (lambda: model.evaluate(X, my), "y")):
        with pytest.raises(TypeError, match=rf"^{name} is a masked array with masked entries"):
            run()
    np.testing.assert_array_equal(model.layers[0].params["W"], W)


def test_layers_with_checked_settings_pickle_and_copy_with_the_state_they_always_had():
    """Dense.activation / alpha, LeakyReLU.alpha, Dropout.p and GaussianNoise.std are checked
    in __setattr__ and stay plain attributes, so a layer's pickled state has the layout it had
    before they were checked (pickles made then load), and pickle and copy restore it without
    running the checks (a Dense's activation, fixed once set, is restored all the same)."""
    import copy
    import pickle

    X, y = _data()
    model = Sequential(Dense(5, 7, activation="relu", seed=0), fastnn.Dropout(0.3, seed=1),
                       fastnn.GaussianNoise(0.2, seed=2), Dense(7, 3, activation="leaky_relu", seed=3),
                       fastnn.LeakyReLU(0.2))
    want = model.predict(X)
    for layer, names in zip(model.layers, (("activation", "alpha"), ("p",), ("std",),
                                           ("activation", "alpha"), ("alpha",))):
        assert all(name in layer.__dict__ for name in names)   # (the state's layout)
    copies = [pickle.loads(pickle.dumps(model, protocol=proto))
              for proto in range(pickle.HIGHEST_PROTOCOL + 1)] + [copy.deepcopy(model)]
    for back in copies:
        assert back.layers[0].activation == "relu" and back.layers[3].alpha == 0.01
        assert back.layers[1].p == 0.3 and back.layers[2].std == 0.2 and back.layers[4].alpha == 0.2
        np.testing.assert_array_equal(back.predict(X), want)
        assert np.isfinite(back.train_step(X, y, "softmax", SGD(back.parameters())))
        assert "relu" in repr(back)
        with pytest.raises(AttributeError, match="fixed at construction"):
            back.layers[0].activation = "tanh"
        with pytest.raises(ValueError, match=r"^Dropout\.p"):
            back.layers[1].p = 1.0


# -- the twenty-second session's audit

@pytest.mark.parametrize("loss", ["logistic", "binary_hinge"])
def test_a_binary_loss_on_a_model_of_many_outputs_names_the_models_scores(loss):
    """A binary loss on a model with two outputs was refused as "x must have shape (N,) or
    (N, 1)": the loss's own argument, not the X the user passed. fit refuses it before the
    first step, and train_step and evaluate name the scores too."""
    X, _ = _data()
    y = np.arange(len(X)) % 2
    model = Sequential(Dense(5, 2))
    before = [p.data.copy() for p in model.parameters()]
    calls = (lambda: model.fit(X, y, loss=loss, verbose=False),
             lambda: model.train_step(X, y, loss, SGD(model.parameters())),
             lambda: model.evaluate(X, y, loss=loss))
    for call in calls:
        with pytest.raises(ValueError, match=r"one score per row, but the model's scores have "
                                             r"shape \(16, 2\)"):
            call()
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, b)   # (nothing trained)


def test_mse_targets_of_another_shape_are_named_against_the_scores_in_evaluate():
    X, _ = _data()
    model = Sequential(Dense(5, 2))
    with pytest.raises(ValueError, match=r"^y must have the shape of the scores \(16, 2\), got \(16, 3\)"):
        model.evaluate(X, np.zeros((16, 3)), loss="mse")
    with pytest.raises(ValueError, match=r"^y must have the shape of the scores \(16, 2\), got \(16, 3\)"):
        model.train_step(X, np.zeros((16, 3)), "mse", SGD(model.parameters()))
    assert np.isfinite(model.evaluate(X, np.zeros((16, 2)), loss="mse")["loss"])


class _Proj(fastnn.Layer):
    """A layer of the caller's own that maps 10 features to 5 (no parameters), leaving
    output_features as the base class has it."""

    def __init__(self):
        super().__init__()
        self.params, self.grads = {}, {}

    def forward(self, x, training=None):
        return np.ascontiguousarray(np.asarray(x, F32)[:, ::2])

    def backward(self, dout, need_dx=True):
        dx = np.zeros((dout.shape[0], 10), dout.dtype)
        dx[:, ::2] = dout
        return dx


class _PairBCE(fastnn.losses.Loss):
    """A loss of the caller's own with a binary accuracy kind on two scores per row."""
    accuracy_kind = "binary01"

    @staticmethod
    def fn(scores, y):
        return F.logistic_loss(scores[:, 0] - scores[:, 1], y)[0], None

    def __call__(self, scores, y):
        value, _ = type(self).fn(scores, y)
        return value, np.zeros_like(scores)

    def predict_labels(self, scores):
        return (scores[:, 0] > scores[:, 1]).astype(np.int64)


def test_the_model_level_checks_leave_layers_and_losses_of_the_callers_own_alone():
    """The width check knows the input width only through fastnn's layers: a layer of the
    caller's own in front of the first Dense may change the width (it was refused as "X must
    have shape (N, 5)"). And the binary-scores check is for fastnn's binary losses: a Loss of
    the caller's own with a binary accuracy kind takes what it takes."""
    X = np.random.default_rng(0).standard_normal((8, 10)).astype(F32)
    y = np.arange(8) % 3
    model = Sequential(_Proj(), Dense(5, 3, seed=1))
    assert model.predict(X).shape == (8, 3) and model.forward(X).shape == (8, 3)
    assert np.isfinite(model.train_step(X, y, "softmax", SGD(model.parameters())))
    assert len(model.fit(X, y, epochs=1, verbose=False)["loss"]) == 1
    assert model.in_features is None
    pair = Sequential(Dense(10, 2, seed=2))
    assert np.isfinite(pair.train_step(X, y % 2, _PairBCE(), SGD(pair.parameters())))
    assert 0.0 <= pair.evaluate(X, y % 2, loss=_PairBCE())["accuracy"] <= 1.0
    # through fastnn's width-keeping layers the width is known, and checked by name
    for first in (ReLU(), fastnn.Dropout(0.5, seed=0), fastnn.GaussianNoise(0.1, seed=0)):
        with pytest.raises(ValueError, match=r"^X must have shape \(N, 5\)"):
            Sequential(first, Dense(5, 3)).predict(X)


def test_an_input_of_the_wrong_width_is_named_as_the_models_X():
    """A batch of the wrong width was named as the first layer's ``x``; the model's methods
    take ``X`` (and fit's validation data ``X_val``)."""
    X, y = _data()
    wide = np.ones((16, 6), F32)
    model = _net()
    calls = {"predict": lambda: model.predict(wide), "forward": lambda: model.forward(wide),
             "evaluate": lambda: model.evaluate(wide, y),
             "train_step": lambda: model.train_step(wide, y, "softmax", SGD(model.parameters())),
             "fit": lambda: model.fit(wide, y, verbose=False),
             "1-D": lambda: model.predict(np.ones(5, F32))}
    for what, call in calls.items():
        with pytest.raises(ValueError, match=r"^X must have shape \(N, 5\)"):
            call()
    with pytest.raises(ValueError, match=r"^X_val must have shape \(N, 5\)"):
        model.fit(X, y, verbose=False, validation_data=(wide, y))
    assert model.predict(X.reshape(16, 5, 1)).shape == (16, 3)   # (rows flattened, as Dense)


@pytest.mark.parametrize("verbose,exc", [("no", TypeError), (None, TypeError), (1.0, TypeError),
                                         (-1, ValueError)])
def test_fit_verbose_is_a_bool_or_a_level(verbose, exc, capsys):
    """fit(verbose="no") printed (any truthy value did); a bool or an int level >= 0 now."""
    X, y = _data()
    model = _net()
    with pytest.raises(exc, match="verbose"):
        model.fit(X, y, epochs=1, verbose=verbose)
    for level, prints in ((0, False), (np.int64(0), False), (False, False), (2, True), (True, True)):
        model.fit(X, y, epochs=1, verbose=level)
        assert ("epoch 1/1" in capsys.readouterr().out) == prints, level


@pytest.mark.parametrize("value", ["no", np.array([1, 0]), 0.5, None])
def test_sgd_nesterov_is_a_flag(value):
    """nesterov was taken through bool(): "no" turned Nesterov on, and an array gave NumPy's
    ambiguous-truth error naming nothing."""
    model = _net()
    with pytest.raises(TypeError, match="nesterov"):
        SGD(model.parameters(), momentum=0.9, nesterov=value)
    opt = SGD(model.parameters(), momentum=0.9, nesterov=1)
    assert opt.nesterov is True
    with pytest.raises(TypeError, match="nesterov"):
        opt.nesterov = value
    assert opt.nesterov is True


def test_save_into_a_missing_folder_names_the_folder_not_a_temporary_file(tmp_path):
    """The error named the hidden temporary file save writes first
    ('.../.fastnn-<hex>.tmp'), a name the user never gave."""
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError) as info:
        _net().save(missing / "m.npz")
    assert info.value.filename == str(missing) and ".tmp" not in str(info.value)
    assert not missing.exists()


@pytest.mark.parametrize("path", ["", b""])
def test_an_empty_path_is_refused_by_name(path):
    """save("") reported the current folder as "a folder, not a file"."""
    model = _net()
    with pytest.raises(ValueError, match="path must name a file"):
        model.save(path)
    with pytest.raises(ValueError, match="path must name a file"):
        model.load(path)
    with pytest.raises(ValueError, match="path must name a file"):
        load_model(path)


def test_save_does_not_replace_a_file_it_may_not_write(tmp_path, monkeypatch):
    """save renames a new file over the target, which needs only the folder's permission: a
    read-only model file was replaced where open(path, "w") (np.save) refuses it. The check
    is os.access (root may write any file, so this test stands in for a non-root user)."""
    path = tmp_path / "m.npz"
    path.write_bytes(b"old")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(path)
                        else real_access(p, mode, **kw))
    with pytest.raises(PermissionError) as info:
        _net().save(path)
    assert info.value.filename == str(path) and "read-only" in str(info.value)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.npz"]
    monkeypatch.setattr(os, "access", real_access)
    _net().save(path)
    assert load_model(path) is not None


def test_a_huge_broadcast_X_of_the_wrong_width_is_refused_before_it_is_copied():
    """(Converted to the model's dtype first: a 0-byte view of 2**40 rows became a MemoryError.)"""
    model = _net()
    huge = np.broadcast_to(np.float64(1.0), (2**40, 6))
    for call in (lambda: model.predict(huge), lambda: model.forward(huge),
                 lambda: model.evaluate(huge, np.zeros(1, int)),
                 lambda: model.train_step(huge, [0], "softmax", SGD(model.parameters()))):
        with pytest.raises(ValueError, match=r"^X must have shape \(N, 5\)"):
            call()


def test_a_huge_broadcast_X_that_a_first_prelu_cannot_take_is_refused_before_it_is_copied():
    """A model whose input reaches a PReLU with a slope per feature before any Dense: no
    width to check, so X was converted (a copy of a 0-byte view: TiBs, MemoryError) before
    the PReLU layer compared its features. Its last axis is checked first now."""
    huge = np.broadcast_to(np.float64(1.0), (2**40, 6))
    for model in (Sequential(fastnn.PReLU(5)), Sequential(ReLU(), fastnn.PReLU(5)),
                  Sequential(fastnn.Dropout(0.5), fastnn.PReLU(5), Dense(5, 2, seed=0))):
        for call in (lambda: model.predict(huge), lambda: model.forward(huge),
                     lambda: model.evaluate(huge, np.zeros(1, int)),
                     lambda: model.train_step(huge, [0], "softmax", SGD(model.parameters()))):
            with pytest.raises(ValueError, match=r"^X must have (5 features in its last axis|shape \(N, 5\))"):
                call()
    # what they take is unchanged: a PReLU's features are the last axis; one shared slope
    # takes any width
    assert Sequential(fastnn.PReLU(5)).forward(np.ones((2, 3, 5), F32)).shape == (2, 3, 5)
    assert Sequential(fastnn.PReLU()).forward(np.ones((2, 7), F32)).shape == (2, 7)


def _huge(*shape, dtype=np.float64):
    return np.broadcast_to(np.zeros((), dtype), shape)   # (0 bytes; a copy: TiBs)


@pytest.mark.parametrize("loss, y, outputs", [
    ("softmax", np.zeros(3, int), 3), ("svm", [0, 1, 2], 3), ("logistic", np.zeros(3, int), 1),
    ("binary_hinge", np.ones((3, 1), int), 1), ("mse", np.zeros((3, 2), F32), 2),
    ("mse", np.zeros(3), 1)], ids=["softmax", "svm-list", "logistic", "binary_hinge-column",
                                    "mse", "mse-single-output"])
def test_a_huge_broadcast_X_with_too_few_labels_is_refused_before_it_is_copied(loss, y, outputs):
    """X of the right width, but y too short for it: X (a 0-byte view of 2**38 rows) was
    converted to the model's dtype before y's length was compared with its rows (MemoryError).
    The X_val of fit's validation_data too."""
    X = _huge(2**38, 5)
    for opt_cls in (SGD, _SGDLayerPath):
        model = Sequential(Dense(5, outputs, seed=0))
        with pytest.raises(ValueError, match=r"^y must have"):
            model.train_step(X, y, loss, opt_cls(model.parameters()))
    model = Sequential(Dense(5, outputs, seed=0))
    with pytest.raises(ValueError, match=r"^y must have 274877906944 entries \(one per row of X\)"):
        model.evaluate(X, y, loss=loss)
    with pytest.raises(ValueError, match=r"^y must have 274877906944 entries \(one per row of X\)"):
        model.fit(X, y, loss=loss, optimizer=SGD(model.parameters()), verbose=False)
    Xs, ys = np.ones((3, 5), F32), np.asarray(y)
    with pytest.raises(ValueError, match=r"^y_val must have 274877906944 entries \(one per row of X_val\)"):
        model.fit(Xs, ys, loss=loss, optimizer=SGD(model.parameters()), verbose=False,
                  validation_data=(X, y))
    # (X's dtype is still named before its labels, as for a small X)
    X = _huge(2**38, 5, dtype=np.complex128)
    for call in (lambda: model.evaluate(X, y, loss=loss), lambda: model.fit(X, y, loss=loss, verbose=False),
                 lambda: model.train_step(X, y, loss, SGD(model.parameters()))):
        with pytest.raises(TypeError, match=r"^X must be a float32 or float64 array"):
            call()


def _fed(layer, x):
    layer.forward(x)
    return layer


@pytest.mark.parametrize("make, shape", [
    (lambda: _fed(ReLU(), np.ones((4, 5), F32)), (2**38, 5)),
    (lambda: _fed(fastnn.Sigmoid(), np.ones((4, 5), F32)), (2**38, 5)),
    (lambda: _fed(fastnn.Tanh(), np.ones((4, 5), F32)), (2**38, 5)),
    (lambda: _fed(fastnn.LeakyReLU(), np.ones((4, 5), F32)), (2**38, 5)),
    (lambda: _fed(fastnn.PReLU(5), np.ones((4, 5), F32)), (2**38, 5)),
    (lambda: _fed(fastnn.PReLU(), np.ones((4, 5), F32)), (2**38, 5)),
    (lambda: _fed(fastnn.Maxout(5, 3, 2, seed=0), np.ones((4, 5), F32)), (2**38, 3)),
    (lambda: _fed(fastnn.Dropout(0.5, seed=0), np.ones((4, 5), F32)), (2**38, 5)),
    (lambda: _fed(fastnn.Dropout(0.0), np.ones((4, 5), F32)), (2**38, 5)),
    (lambda: _fed(fastnn.GaussianNoise(0.1, seed=0), np.ones((4, 5), F32)), (2**38, 5)),
    (lambda: _fed(Dense(5, 3, seed=0), np.ones((4, 5), F32)), (2**38, 3)),
    (lambda: _fed(Dense(5, 3, activation="relu", seed=0), np.ones((4, 5), F32)), (2**38, 3)),
    (lambda: _fed(Dense(5, 3, activation="prelu", seed=0), np.ones((4, 5), F32)), (2**38, 3)),
    (lambda: _fed(Sequential(Dense(5, 3, seed=0)), np.ones((4, 5), F32)), (2**38, 3)),
    (lambda: _fed(Sequential(Dense(5, 3, seed=0), ReLU()), np.ones((4, 5), F32)), (2**38, 3)),
    (lambda: _fed(Sequential(Dense(5, 4, seed=0), fastnn.Maxout(4, 3, seed=0), fastnn.Dropout(0.5)),
                  np.ones((4, 5), F32)), (2**38, 3)),
], ids=["relu", "sigmoid", "tanh", "leaky_relu", "prelu", "prelu-shared", "maxout", "dropout",
        "dropout-p0", "gaussian_noise", "dense", "dense-relu", "dense-prelu", "sequential",
        "sequential-fused", "sequential-maxout-dropout"])
def test_a_huge_broadcast_dout_of_the_wrong_shape_is_refused_before_it_is_copied(make, shape):
    """A layer's backward converted dout to the layer's dtype (a float64 view for a float32
    layer: a copy) before its shape was compared with the forward output's (MemoryError)."""
    layer = make()
    with pytest.raises(ValueError, match=r"^dout must have"):
        layer.backward(_huge(*shape))
    with pytest.raises(TypeError, match=r"^dout must be a float32 or float64 array"):
        layer.backward(_huge(*shape, dtype=np.complex64))   # (its dtype named first, as before)


def test_a_huge_broadcast_x_with_more_features_than_prelu_slopes_is_refused_before_it_is_copied():
    layer = fastnn.PReLU(3)
    for call in (layer.forward, layer._infer):
        with pytest.raises(ValueError, match=r"^PReLU has 3 slopes but x has 5 features"):
            call(_huge(2**38, 5))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.layers[0].params.pop("b"), r"missing \['b'\]"),
    (lambda m: m.layers[0].params.__setitem__("extra", np.zeros(2, F32)), r"got also \['extra'\]"),
    (lambda m: m.layers[2].params.pop("alpha"), r"missing \['alpha'\]"),
    # (in_features is read-only; an edit of the instance dict goes around that)
    (lambda m: m.layers[0].__dict__.__setitem__("in_features", 4),
     r"W has shape \(5, 2\), but the layer's description gives \(4, 2\)"),
], ids=["missing", "extra", "prelu-alpha", "in_features-edited"])
def test_save_refuses_what_load_model_would_refuse(tmp_path, edit, match):
    """(save wrote these files, and load_model then refused them.)"""
    model = Sequential(Dense(5, 2, seed=0), ReLU(), fastnn.PReLU(2))
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    edit(model)
    with pytest.raises(ValueError, match=match):
        model.save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.npz"]


class _SGDLayerPath(SGD):
    """(an optimizer subclass: the model steps on the layer path, not the compiled step)"""


@pytest.mark.parametrize("shape", [(2**40, 3), (4, 2**40)], ids=["rows", "columns"])
def test_huge_broadcast_mse_targets_of_the_wrong_shape_are_refused_before_they_are_copied(shape):
    X = np.ones((4, 5), F32)
    y = np.broadcast_to(np.float64(0.0), shape)   # (0 bytes; a copy: 12-24 TiB)
    for opt_cls in (SGD, _SGDLayerPath):
        model = Sequential(Dense(5, 3, seed=0))
        with pytest.raises(ValueError, match=r"^y must have"):
            model.train_step(X, y, "mse", opt_cls(model.parameters()))
    model = Sequential(Dense(5, 3, seed=0))
    with pytest.raises(ValueError, match=r"^y must have"):
        model.evaluate(X, y, loss="mse")
    with pytest.raises(ValueError, match=r"^y must have"):
        model.fit(X, y, loss="mse", optimizer=SGD(model.parameters()), verbose=False)
    with pytest.raises(ValueError, match=r"^y_val must have"):
        model.fit(X, np.zeros((4, 3), F32), loss="mse", optimizer=SGD(model.parameters()),
                  verbose=False, validation_data=(X, y))


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: RMSProp(ps), lambda ps: Adam(ps)],
                         ids=["momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("path", ["compiled", "layers"])
def test_an_optimizers_state_goes_with_its_layer(make, path):
    """State is keyed by (id(layer), name): a layer made after another was collected may get
    its id, and took its state (a silent wrong first step)."""
    import gc
    X, y = _data()
    old = Sequential(Dense(5, 3, seed=0))
    opt = make(old.parameters())
    if path == "layers":
        opt.__class__ = type("Sub", (type(opt),), {})   # (a subclass: the layer path)
    old.train_step(X, y, "softmax", opt)
    gone = [p.key for p in old.parameters()]
    assert all(k in opt.state for k in gone)
    kept = Sequential(Dense(5, 3, seed=1))
    opt.params = kept.parameters() + old.parameters()
    old.train_step(X, y, "softmax", opt)
    kept.train_step(X, y, "softmax", opt)
    # a layer taken out of params but alive keeps its state (trained again later, it goes on)
    opt.params = kept.parameters()
    gc.collect()
    assert all(k in opt.state for k in gone)
    del old
    gc.collect()
    # (dropped at the optimizer's next use, never while other code may iterate its state)
    kept.train_step(X, y, "softmax", opt)
    assert not any(k in opt.state for k in gone)
    assert set(opt.state) == {p.key for p in kept.parameters()}
    # the same for a copy (its own watch over the state it holds) and a pickled one
    import copy
    import pickle
    dups = [copy.deepcopy(opt)] + ([pickle.loads(pickle.dumps(opt))] if path == "compiled" else [])
    for dup in dups:   # (the layer path's subclass is local to this test: not picklable)
        fresh = Sequential(Dense(5, 3, seed=2))
        dup.params = fresh.parameters()
        fresh.train_step(X, y, "softmax", dup)
        keys = [p.key for p in fresh.parameters()]
        assert all(k in dup.state for k in keys)
        dup.params = kept.parameters()   # (its Parameters held fresh's layer alive)
        del fresh
        gc.collect()
        dup.params = kept.parameters()
        assert not any(k in dup.state for k in keys)


def test_a_new_layer_never_starts_from_a_dead_layers_state():
    """The case as it met users: one optimizer, a fresh model per trial. The first step of
    each must equal a fresh optimizer's (CPython soon gives a new Dense a dead one's id)."""
    X, y = _data()
    opt = SGD(Sequential(Dense(5, 3)).parameters(), lr=0.1, momentum=0.9)
    for _ in range(30):
        model = Sequential(Dense(5, 3, seed=0))
        opt.params = model.parameters()
        model.train_step(X, y, "softmax", opt)
        ref = Sequential(Dense(5, 3, seed=0))
        ref.train_step(X, y, "softmax", SGD(ref.parameters(), lr=0.1, momentum=0.9))
        np.testing.assert_array_equal(model.layers[0].params["W"], ref.layers[0].params["W"])
        del ref
    assert len(opt.state) == 2


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "copy", "assigned"])
def test_state_an_optimizer_did_not_make_is_watched_too(how):
    """State that came by a copy, a pickle or an assignment, never stepped by the optimizer
    that holds it, must go with its layers as well (it was never watched)."""
    import copy
    import gc
    import pickle
    X, y = _data()
    model = Sequential(Dense(5, 3, seed=0))
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train_step(X, y, "softmax", opt)
    if how == "deepcopy":
        model, dup = copy.deepcopy((model, opt))
    elif how == "pickle":
        model, dup = pickle.loads(pickle.dumps((model, opt)))
    elif how == "copy":
        dup = copy.copy(opt)   # (shares the state; the original goes first)
    else:
        dup = SGD(model.parameters(), lr=0.1, momentum=0.9)
        dup.state = dict(opt.state)
    del opt
    keys = [p.key for p in model.parameters()]
    assert all(k in dup.state for k in keys)
    other = Sequential(Dense(5, 3, seed=1))
    dup.params = other.parameters()   # (before any step of dup: nothing went through _slots)
    del model
    gc.collect()
    other.train_step(X, y, "softmax", dup)
    assert not any(k in dup.state for k in keys)


def test_a_collected_layer_never_changes_the_state_while_it_is_iterated():
    """The finalizers note dead layers; the state changes only at the optimizer's next use
    (a collection during a loop over opt.state raised 'dictionary changed size')."""
    import gc
    X, y = _data()
    model = Sequential(Dense(5, 3, seed=0))
    keep = Sequential(Dense(5, 3, seed=1))
    opt = SGD(model.parameters() + keep.parameters(), lr=0.1, momentum=0.9)
    model.train_step(X, y, "softmax", opt)
    keep.train_step(X, y, "softmax", opt)
    opt.params = keep.parameters()
    seen = []
    for key in opt.state:
        seen.append(key)
        if model is not None:
            model = None
            gc.collect()   # (the model's layers are collected here, mid-loop)
    assert len(seen) == 4 and len(opt.state) == 4
    keep.train_step(X, y, "softmax", opt)
    assert set(opt.state) == {p.key for p in keep.parameters()}


def test_zero_grad_names_what_is_wrong_with_a_gradient():
    model = Sequential(Dense(5, 3, seed=0))
    opt = SGD(model.parameters())
    model.layers[0].grads["W"] = None
    with pytest.raises(TypeError, match=r"^the gradient of parameter W must be a numpy.ndarray"):
        opt.zero_grad()
    model.layers[0].grads = None
    with pytest.raises(TypeError, match=r"Dense.grads must be a dict of arrays, got NoneType"):
        opt.zero_grad()


def test_the_watch_over_a_layers_state_ends_with_its_optimizer():
    """Many optimizers training one long-lived model (a search over learning rates) must not
    leave a finalizer per parameter each behind."""
    import gc
    import weakref

    def finalizers():
        gc.collect()
        # (type, not isinstance: isinstance reads __class__, on which some modules warn)
        return sum(type(o) is weakref.finalize for o in gc.get_objects())

    X, y = _data()
    model = Sequential(Dense(5, 3, seed=0), ReLU(), Dense(3, 3, seed=1))
    opt = Adam(model.parameters())
    model.train_step(X, y, "softmax", opt)
    del opt
    before = finalizers()
    for lr in np.linspace(0.01, 0.1, 20):
        opt = SGD(model.parameters(), lr=lr, momentum=0.9)
        model.train_step(X, y, "softmax", opt)
        assert len(opt.state) == 4
        del opt
    assert finalizers() <= before


@pytest.mark.parametrize("call", [
    lambda m, o, p: m.predict(np.ones((2, 5), F32)),
    lambda m, o, p: m.forward(np.ones((2, 5), F32)),
    lambda m, o, p: m.evaluate(np.ones((2, 5), F32), [0, 1]),
    lambda m, o, p: m.summary(),
    lambda m, o, p: m.parameters(),
    lambda m, o, p: m.load(p),
    lambda m, o, p: o.step(),
], ids=["predict", "forward", "evaluate", "summary", "parameters", "load", "step"])
def test_params_that_are_not_a_dict_are_named(tmp_path, call):
    model = Sequential(Dense(5, 3, seed=0))
    path = tmp_path / "m.npz"
    model.save(path)
    opt = SGD(model.parameters())
    model.layers[0].params = None
    with pytest.raises(TypeError, match=r"params must be a dict"):
        call(model, opt, path)


@pytest.mark.parametrize("make, names", [
    (lambda: Dense(5, 3, seed=0), ("in_features", "out_features")),
    (lambda: fastnn.Maxout(5, 3, 2, seed=0), ("in_features", "out_features", "pieces")),
    (lambda: fastnn.PReLU(3), ("num_parameters",)),
], ids=["Dense", "Maxout", "PReLU"])
def test_a_layers_sizes_are_fixed_at_construction(make, names):
    """Dense.in_features set after construction: the whole-step kernel trained on (it reads
    W's shape) while the layer path refused X, and save wrote a file load_model refused."""
    import copy
    import pickle
    layer = make()
    for name in names:
        before = getattr(layer, name)
        with pytest.raises(AttributeError, match=rf"{name} is fixed at construction"):
            setattr(layer, name, before + 1)
        assert getattr(layer, name) == before
        for dup in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            assert getattr(dup, name) == before
            with pytest.raises(AttributeError):
                setattr(dup, name, before + 1)


def test_grads_or_state_that_are_not_dicts_or_lack_an_entry_are_named():
    model = Sequential(Dense(5, 3, seed=0))
    opt = SGD(model.parameters(), momentum=0.9)
    p = model.parameters()[0]
    with pytest.raises(TypeError, match=r"^state must be a dict"):
        opt.state = None
    del model.layers[0].grads["W"]
    with pytest.raises(ValueError, match=r"grads has no entry 'W'"):
        opt.zero_grad()
    model.layers[0].grads = None
    with pytest.raises(TypeError, match=r"Dense.grads must be a dict"):
        opt.step()
    del model.layers[0].params["W"]
    assert repr(p) == "Parameter(Dense.W, missing from the layer's params)"


# ============================================================================ a parameter of another shape
_RESHAPED = {
    "dense W": (lambda: Dense(4, 5, seed=0), "W", (4, 6), r"Dense\.params\['W'\] must have shape \(4, 5\), got \(4, 6\)"),
    "dense b": (lambda: Dense(4, 5, seed=0), "b", (6,), r"Dense\.params\['b'\] must have shape \(5,\), got \(6,\)"),
    "prelu dense slopes": (lambda: Dense(4, 5, activation="prelu", seed=0), "alpha", (4,),
                           r"Dense\.params\['alpha'\] must have shape \(5,\), got \(4,\)"),
    # (a shared slope passes the kernel, whose backward would broadcast its gradient into
    # grads['alpha']: refused before the kernel runs)
    "prelu dense shared slope": (lambda: Dense(4, 5, activation="prelu", seed=0), "alpha", (1,),
                                 r"Dense\.params\['alpha'\] must have shape \(5,\), got \(1,\)"),
    "maxout W": (lambda: fastnn.Maxout(4, 5, pieces=2, seed=0), "W", (4, 5, 3),
                 r"Maxout\.params\['W'\] must have shape \(4, 5, 2\), got \(4, 5, 3\)"),
}


@pytest.mark.parametrize("call", ["predict", "forward", "evaluate", "train_step"])
@pytest.mark.parametrize("case", list(_RESHAPED))
def test_a_parameter_replaced_by_another_shape_is_named_on_every_path(case, call):
    """A params entry replaced by an array of another shape is named as the layer's entry by
    predict, forward and evaluate too, as train_step's checks name it (those paths passed it
    to the kernel, whose error named the kernel's argument: "b must have shape (6,), got (5,)"
    for a W of 6 columns)."""
    make, name, shape, match = _RESHAPED[case]
    layer = make()
    model = Sequential(layer, Dense(5, 3, seed=1))
    layer.params[name] = np.zeros(shape, np.float32)
    layer.grads[name] = np.zeros(shape, np.float32)
    X, y = np.ones((3, 4), np.float32), np.array([0, 1, 2])
    calls = {"predict": lambda: model.predict(X), "forward": lambda: model.forward(X),
             "evaluate": lambda: model.evaluate(X, y),
             "train_step": lambda: model.train_step(X, y, "softmax", SGD(model.parameters()))}
    with pytest.raises(ValueError, match="^" + match + "$"):
        calls[call]()
