"""Save/load robustness beyond tests/test_sequential.py (which covers round trips, the atomic
rename under a failing archive write, truncated/corrupt/garbage files, bad metadata, pickles, wrong
arrays and bad architectures):

- a process killed (SIGKILL) while it writes a model never leaves a truncated model at the
  target path: the previous file is intact and loads;
- a failure at any later stage of save (fsync, the rename, a KeyboardInterrupt) leaves the old
  file and no temporary file;
- every truncation and every single-byte corruption of a file is either rejected with a
  ValueError, with the model unchanged, or (a byte the format does not use) loads exactly the saved
  parameters: never a different model;
- files of another dtype or architecture are rejected; a metadata entry that is a pickle is
  never unpickled;
- concurrent saves to one path leave one complete model; str, bytes and pathlib paths work.
"""
import os
import pathlib
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastnn
import fastnn._files as ffiles
import fastnn.model as fmodel
from fastnn import SGD, Dense, Dropout, LeakyReLU, Maxout, PReLU, Sequential, Tanh, load_model

from conftest import assert_same_bits


def _model(seed=0, dtype=np.float32):
    return Sequential(Dense(4, 6, activation="prelu", seed=seed, dtype=dtype), Dropout(0.25),
                      Dense(6, 5, seed=seed + 1, dtype=dtype), LeakyReLU(0.05),
                      Maxout(5, 3, pieces=2, seed=seed + 2, dtype=dtype), Tanh(), PReLU(3, dtype=dtype),
                      Dense(3, 2, activation="sigmoid", seed=seed + 3, dtype=dtype))


def _perturb(model, seed):
    r = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] = r.standard_normal(p.shape)
    return model


def _params(model):
    return [p.data.copy() for p in model.parameters()]


def _assert_params(model, params, what=""):
    got = [p.data for p in model.parameters()]
    assert len(got) == len(params)
    for a, b in zip(got, params):
        assert_same_bits(a, b, what=what)


def _expect_rejected(model, path):
    before = _params(model)
    with pytest.raises(ValueError):
        model.load(path)
    _assert_params(model, before, "a rejected load changed the model")
    with pytest.raises(ValueError):
        load_model(path)


@pytest.fixture
def saved(tmp_path):
    src = _perturb(_model(), 1)
    path = tmp_path / "model.npz"
    src.save(path)
    return src, path


# ============================================================================ interrupted writes
_SLOW_SAVE = r"""
import os, sys, time
import numpy as np
import fastnn.model
from fastnn import Dense, Sequential

path, want = sys.argv[1], int(sys.argv[2])
real_write = fastnn.model.write_npz
written = [0]

class Slow:
    # a file that stops in the middle of the write, once `want` bytes are written, and waits
    # there for the parent's kill (so the kill lands mid-write however busy the machine is)
    def __init__(self, f):
        self.f = f
    def write(self, b):
        mv = memoryview(b)
        for i in range(0, len(mv), 1 << 16):
            piece = mv[i:i + (1 << 16)]
            self.f.write(piece)
            self.f.flush()
            written[0] += len(piece)
            if written[0] >= want:
                print("reached", flush=True)
                time.sleep(600)
        return len(mv)
    def __getattr__(self, name):
        return getattr(self.f, name)

def slow_write(file, arrays):
    return real_write(Slow(file), arrays)

fastnn.model.write_npz = slow_write
model = Sequential(Dense(1000, 1000, seed=5), Dense(1000, 500, seed=6))   # ~6 MB
print("saving", flush=True)
model.save(path)
print("saved", flush=True)
"""


def _temp_files(directory):
    return [f for f in os.listdir(directory) if f.startswith(".fastnn-")]


@pytest.mark.parametrize("when", ["early", "middle", "late"])
def test_killed_mid_write_leaves_the_old_model(tmp_path, saved, when):
    src, path = saved
    original = path.read_bytes()
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    want = {"early": 1, "middle": 2_000_000, "late": 5_000_000}[when]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(path), str(want)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving"
        # the child stops once it has written `want` bytes (of a ~6 MB model) and waits to be
        # killed; "saved" here would be a save that wrote less than that
        assert proc.stdout.readline().strip() == "reached", "the save finished before it could be interrupted"
        # bytes written so far: to a temporary file, or (a non-atomic save) to the target
        sizes = [os.path.getsize(tmp_path / t) for t in _temp_files(tmp_path) if (tmp_path / t).exists()]
        if path.exists() and path.stat().st_size != len(original):
            sizes.append(path.stat().st_size)
        assert max(sizes, default=-1) >= want, "no file of the save grew"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    # the target is the old model, complete; the partial write is only in a temporary file
    assert path.read_bytes() == original
    _assert_params(load_model(path), _params(src))
    leftovers = _temp_files(tmp_path)
    assert leftovers, "the kill came after the rename: the test did not interrupt anything"
    for t in leftovers:
        _expect_rejected(_model(seed=9), tmp_path / t)  # and the partial file is not a model
    # a later save over the same path works and replaces the model completely
    other = _perturb(_model(seed=3), 7)
    other.save(path)
    _assert_params(load_model(path), _params(other))


@pytest.mark.parametrize("stage", ["fsync", "replace", "chmod", "keyboard-interrupt"])
def test_failure_at_any_stage_keeps_the_old_file_and_cleans_up(tmp_path, saved, monkeypatch, stage):
    src, path = saved
    original = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(f"{stage} failed (simulated)")

    if stage == "fsync":
        monkeypatch.setattr(ffiles.os, "fsync", boom)
    elif stage == "replace":
        monkeypatch.setattr(ffiles.os, "replace", boom)
    elif stage == "chmod":
        monkeypatch.setattr(ffiles.os, "chmod", boom)
    else:
        real = fmodel.write_npz

        def interrupted(file, arrays):
            real(file, arrays)
            raise KeyboardInterrupt

        monkeypatch.setattr(fmodel, "write_npz", interrupted)
    other = _perturb(_model(seed=4), 8)
    with pytest.raises(KeyboardInterrupt if stage == "keyboard-interrupt" else OSError):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert _temp_files(tmp_path) == [], "a temporary file was left behind"
    _assert_params(load_model(path), _params(src))


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ffiles.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("no (simulated)")))
    with pytest.raises(OSError):
        _model().save(tmp_path / "new.npz")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_save_to_a_directory_fails_cleanly(tmp_path):
    target = tmp_path / "adir"
    target.mkdir()
    with pytest.raises(OSError):
        _model().save(target)
    assert sorted(os.listdir(tmp_path)) == ["adir"] and os.listdir(target) == []


# ============================================================================ damaged files
def test_every_truncation_is_rejected(saved, tmp_path):
    _, path = saved
    raw = path.read_bytes()
    target = _perturb(_model(seed=20), 2)
    bad = tmp_path / "cut.npz"
    cuts = sorted(set(np.linspace(0, len(raw) - 1, 48).astype(int)) | set(range(len(raw) - 30, len(raw))))
    for cut in cuts:
        bad.write_bytes(raw[:cut])
        _expect_rejected(target, bad)


def test_single_byte_corruptions_never_load_a_different_model(saved, tmp_path):
    """Flip every byte of the first and last 256 (headers, the zip directory, the metadata) and
    a spread of bytes in between (the arrays): each file is either rejected (model unchanged) or
    loads exactly the saved parameters."""
    src, path = saved
    raw = path.read_bytes()
    want = _params(src)
    target = _perturb(_model(seed=21), 3)
    bad = tmp_path / "flip.npz"
    positions = sorted(set(range(min(256, len(raw)))) | set(range(max(0, len(raw) - 256), len(raw)))
                       | set(np.linspace(0, len(raw) - 1, 200).astype(int)))
    loaded = rejected = 0
    for pos in positions:
        corrupt = bytearray(raw)
        corrupt[pos] ^= 0x5A
        bad.write_bytes(bytes(corrupt))
        before = _params(target)
        try:
            target.load(bad)
        except ValueError:
            rejected += 1
            _assert_params(target, before, f"rejected load at byte {pos} changed the model")
        else:
            loaded += 1
            _assert_params(target, want, f"byte {pos} flipped: a different model was loaded")
            _perturb(target, pos)  # next round starts from other values again
    assert rejected > 0 and loaded + rejected == len(positions)


def test_other_dtype_is_rejected(tmp_path):
    path = tmp_path / "f64.npz"
    _perturb(_model(dtype=np.float64), 1).save(path)
    target = _model(dtype=np.float32)
    before = _params(target)
    with pytest.raises(ValueError, match="architecture"):
        target.load(path)
    _assert_params(target, before)
    assert load_model(path).dtype == np.float64


def test_pickled_metadata_is_never_unpickled(saved, tmp_path):
    _, path = saved
    ran = []

    class Evil:
        def __reduce__(self):
            return (ran.append, (True,))

    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["__fastnn__"] = np.array([Evil()], dtype=object)
    bad = tmp_path / "evil.npz"
    with open(bad, "wb") as fh:
        np.savez(fh, **arrays)
    _expect_rejected(_model(seed=5), bad)
    assert ran == []


@pytest.mark.parametrize("kind", ["str", "bytes", "pathlib"])
def test_path_types(tmp_path, kind):
    model = _perturb(_model(), 6)
    p = tmp_path / "m.npz"
    path = {"str": str(p), "bytes": os.fsencode(str(p)), "pathlib": pathlib.Path(p)}[kind]
    model.save(path)
    _assert_params(load_model(path), _params(model))
    other = _model(seed=11)
    other.load(path)
    _assert_params(other, _params(model))


def test_concurrent_saves_leave_one_complete_model(tmp_path):
    path = tmp_path / "shared.npz"
    models = [_perturb(Sequential(Dense(300, 300, seed=i), Dense(300, 10, seed=i)), 100 + i) for i in range(6)]
    barrier = threading.Barrier(len(models))
    errors = []

    def save(m):
        try:
            barrier.wait()
            for _ in range(3):
                m.save(path)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    loaded = load_model(path)
    got = _params(loaded)
    assert any(all(np.array_equal(a, b) for a, b in zip(got, _params(m))) for m in models)
    assert _temp_files(tmp_path) == []


def _model_file(tmp_path, layers, arrays=None, name="crafted.npz"):
    """A model file with the given layer descriptions and arrays, written by hand."""
    import json

    from fastnn.model import _FORMAT, _FORMAT_VERSION, _META_KEY

    meta = {"format": _FORMAT, "version": _FORMAT_VERSION, "layers": layers}
    out = tmp_path / name
    np.savez(out, **{_META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8)}, **(arrays or {}))
    return out


@pytest.mark.parametrize("entry,arrays", [
    ({"type": "PReLU", "config": {"num_parameters": 2**30}}, {}),
    ({"type": "PReLU", "config": {"num_parameters": 2**30}}, {"0.alpha": np.zeros(3, np.float32)}),
    ({"type": "Maxout", "config": {"in_features": 2000, "out_features": 2000, "pieces": 127}},
     {"0.W": np.zeros((2, 2, 2), np.float32), "0.b": np.zeros((2, 2), np.float32)}),
    ({"type": "Dense", "config": {"in_features": 2**20, "out_features": 2**11, "activation": "prelu"}},
     {"0.W": np.zeros((2**20, 1), np.float32)}),
    ({"type": "Dense", "config": {"in_features": 4, "out_features": 3, "activation": "prelu"}},
     {"0.W": np.zeros((4, 3), np.float32), "0.b": np.zeros(3, np.float32)}),   # no alpha
    ({"type": "Dense", "config": {"in_features": "4", "out_features": 3}}, {}),
    ({"type": "Maxout", "config": {"in_features": 2, "out_features": 2, "pieces": 500}}, {}),
    # arrays of a zero-byte dtype have any shape in no bytes: the shapes agree, the dtype not
    ({"type": "Dense", "config": {"in_features": 2**12, "out_features": 2**12}},
     {"0.W": np.empty((2**12, 2**12), "V0"), "0.b": np.empty(2**12, "V0")}),
    ({"type": "Maxout", "config": {"in_features": 2**9, "out_features": 2**9, "pieces": 64}},
     {"0.W": np.empty((2**9, 2**9, 64), "V0"), "0.b": np.zeros((2**9, 64), np.float32)}),
    ({"type": "Dense", "config": {"in_features": 4, "out_features": 3}},
     {"0.W": np.zeros((4, 3), np.int64), "0.b": np.zeros(3, np.float32)}),
], ids=["prelu-huge-no-array", "prelu-huge-small-array", "maxout-huge", "dense-huge",
        "dense-prelu-missing-alpha", "dense-str-width", "maxout-pieces", "dense-huge-zero-byte",
        "maxout-huge-zero-byte", "dense-int-weights"])
def test_a_described_layer_is_checked_against_the_stored_arrays_before_it_is_built(
        tmp_path, entry, arrays, monkeypatch):
    """A crafted description of a huge layer costs nothing: load_model compares the shapes the
    description gives with the file's arrays before any layer allocates its parameters."""
    import fastnn.layers as layers_mod

    path = _model_file(tmp_path, [entry], arrays)
    built = []
    for name, cls in list(layers_mod.LAYER_TYPES.items()):
        monkeypatch.setitem(layers_mod.LAYER_TYPES, name,
                            lambda *a, _cls=cls, **k: built.append(_cls) or _cls(*a, **k))
    with pytest.raises(ValueError, match=r"layer 0 \(" + entry["type"]):
        load_model(path)
    assert built == [], "a layer was built before its description was checked"


def test_described_param_shapes_match_every_layer_type():
    """described_param_shapes (what load_model checks before building) gives exactly the
    parameters every layer type has, so a new layer type cannot slip past it."""
    from fastnn.layers import LAYER_TYPES, described_param_shapes

    examples = {"Dense": [dict(in_features=3, out_features=4, activation=a)
                          for a in (None, "relu", "leaky_relu", "prelu")],
                "PReLU": [dict(num_parameters=1), dict(num_parameters=5)],
                "Maxout": [dict(in_features=3, out_features=4), dict(in_features=3, out_features=4, pieces=5)]}
    for name, cls in LAYER_TYPES.items():
        for cfg in examples.get(name, [{}]):
            layer = cls(**cfg)
            want = {k: v.shape for k, v in layer.params.items()}
            assert described_param_shapes(name, layer.get_config()) == want, (name, cfg)


def test_deeply_nested_metadata_is_a_valueerror(tmp_path):
    path = tmp_path / "deep.npz"
    np.savez(path, __fastnn__=np.frombuffer(("[" * 100000 + "]" * 100000).encode(), np.uint8))
    _expect_rejected(_model(seed=5), path)


def test_a_compressed_archive_is_refused_before_it_is_inflated(saved, tmp_path):
    """Sequential.save writes stored (uncompressed) members; a deflated member, which could
    inflate ~1000-fold, is refused without being read."""
    model, path = saved
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, **arrays)
    with pytest.raises(ValueError, match="compressed"):
        load_model(packed)
    with pytest.raises(ValueError, match="compressed"):
        model.load(packed)
    # the same arrays stored: loads
    stored = tmp_path / "stored.npz"
    np.savez(stored, **arrays)
    _assert_params(load_model(stored), _params(model))


@pytest.mark.parametrize("how", ["one-member-deflated", "corrupt-deflate-stream"])
def test_any_compressed_member_is_refused_before_anything_is_read(saved, tmp_path, how):
    """One deflated member among stored ones is enough; and it is refused before any member is
    read (a corrupt deflate stream would otherwise raise zlib.error from the read)."""
    import zipfile

    model, path = saved
    out = tmp_path / f"{how}.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        names = src.namelist()
        target = [n for n in names if n != "__fastnn__.npy"][-1]
        for name in names:
            data = src.read(name)
            dst.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if name == target else zipfile.ZIP_STORED)
    if how == "corrupt-deflate-stream":
        raw = bytearray(out.read_bytes())
        with zipfile.ZipFile(out) as zf:
            info = zf.getinfo(target)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        for i in range(start + 2, start + min(info.compress_size, 40)):
            raw[i] ^= 0x5A
        out.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="compressed"):
        load_model(out)
    with pytest.raises(ValueError, match="compressed"):
        model.load(out)


# ============================================================================ loading into a model that cannot take it
def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("layer,name", [(0, "W"), (4, "W"), (6, "alpha"), (7, "b")])
def test_load_into_a_frozen_layer_names_it_and_changes_nothing(saved, layer, name):
    """A layer frozen as the README says (its arrays replaced by read-only copies) cannot take a
    load: the error names the layer and the parameter, and no parameter changed, also none of
    the layers before it (load used to write the arrays in order and fail at the frozen one with
    NumPy's "assignment destination is read-only", naming nothing)."""
    _src, path = saved
    model = _perturb(_model(), 2)
    frozen = model.layers[layer]
    frozen.params[name] = _read_only(frozen.params[name])
    before = _params(model)
    kind = type(frozen).__name__
    with pytest.raises(ValueError, match=rf"^cannot load .*: layer {layer} \({kind}\) parameter {name} is read-only; "
                                         r"nothing was loaded$"):
        model.load(path)
    _assert_params(model, before, "a failed load changed the model")
    frozen.params[name] = frozen.params[name].copy()   # writeable again: loads
    model.load(path)
    _assert_params(model, _params(_src), "the load after unfreezing")


def test_load_into_a_parameter_that_is_not_an_array_names_it(saved):
    _src, path = saved
    model = _perturb(_model(), 3)
    before = _params(model)
    model.layers[2].params["b"] = model.layers[2].params["b"].tolist()
    with pytest.raises(TypeError, match=r"layer 2 \(Dense\) parameter b must be a numpy\.ndarray, got list"):
        model.load(path)
    model.layers[2].params["b"] = np.asarray(model.layers[2].params["b"], dtype=np.float32)
    _assert_params(model, before, "a failed load changed the model")


def test_load_waits_for_a_training_step_in_another_thread(tmp_path):
    """load writes the parameters under the model's lock: a training step running meanwhile in
    another thread ends before the load writes, or starts after it, never half way through."""
    def steady(seed):
        model = _perturb(_model(), seed)
        model.layers.pop(1)   # (no dropout: the same step in any model)
        return model

    path = steady(1).save(tmp_path / "steady.npz")
    X = np.random.default_rng(3).standard_normal((400, 4)).astype(np.float32)
    y = np.random.default_rng(4).integers(0, 2, 400)
    ref = steady(2).load(path)
    loaded = _params(ref)   # a step, then the load
    ref.train_step(X, y, "softmax", SGD(ref.parameters(), lr=0.05))
    after_step = _params(ref)   # the load, then a step
    model = steady(2)
    opt = SGD(model.parameters(), lr=0.05)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for trial in range(10):
            model.load(steady(5 + trial).save(tmp_path / "other.npz"))
            go = threading.Barrier(2)
            t = threading.Thread(target=lambda: (go.wait(), model.train_step(X, y, "softmax", opt)))
            t.start()
            go.wait()
            model.load(path)
            t.join()
            got = _params(model)
            assert any(all(a.tobytes() == b.tobytes() for a, b in zip(got, want))
                       for want in (loaded, after_step)), trial
    finally:
        sys.setswitchinterval(interval)


def test_save_beside_a_training_step_writes_the_weights_before_or_after_it(tmp_path):
    """save reads the parameters under the model's lock: a file saved while another thread
    trains the model holds the weights before that step or after it, never half of each."""
    def steady(seed):
        model = _perturb(_model(), seed)
        model.layers.pop(1)   # (no dropout: the same step in any model)
        return model

    X = np.random.default_rng(3).standard_normal((400, 4)).astype(np.float32)
    y = np.random.default_rng(4).integers(0, 2, 400)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for trial in range(10):
            model, ref = steady(trial), steady(trial)
            opt = SGD(model.parameters(), lr=0.05)
            before = _params(ref)
            ref.train_step(X, y, "softmax", SGD(ref.parameters(), lr=0.05))
            after = _params(ref)
            go = threading.Barrier(2)
            t = threading.Thread(target=lambda: (go.wait(), model.train_step(X, y, "softmax", opt)))
            t.start()
            go.wait()
            path = model.save(tmp_path / "during.npz")
            t.join()
            got = _params(load_model(path))
            assert any(all(a.tobytes() == b.tobytes() for a, b in zip(got, want)) for want in (before, after)), trial
    finally:
        sys.setswitchinterval(interval)


def test_load_model_reads_the_file_once(saved, monkeypatch):
    """load_model checks the arrays it read against the description, builds the layers and
    fills them from those arrays: it used to read and parse the whole file a second time
    (through Sequential.load), doubling its peak memory."""
    import fastnn.model as fm

    src, path = saved
    calls = []
    real = fm._read_model_file

    def counting(p):
        calls.append(p)
        return real(p)

    monkeypatch.setattr(fm, "_read_model_file", counting)
    model = load_model(path)
    assert len(calls) == 1
    _assert_params(model, _params(src))


@pytest.mark.parametrize("code", ["EINVAL", "ENOTSUP"])
def test_save_where_the_file_system_has_no_fsync(tmp_path, monkeypatch, code):
    """fsync refused as unsupported (some network and FUSE file systems) does not fail a save:
    the file is written and renamed; any other fsync error still fails it (the stage test)."""
    import errno

    def unsupported(fd):
        raise OSError(getattr(errno, code), f"fsync: {code} (simulated)")

    src = _perturb(_model(), 2)
    monkeypatch.setattr(ffiles.os, "fsync", unsupported)
    path = tmp_path / "m.npz"
    src.save(path)
    monkeypatch.undo()
    _assert_params(load_model(path), _params(src))
    assert _temp_files(tmp_path) == []


# ============================================================================ a model of many layers
def test_the_check_that_no_layer_runs_twice_is_linear_in_the_layers(monkeypatch):
    """A file of 100,000 parameterless layers loaded in a second, but its first training step
    took minutes: _check_apart found each layer's position with a pass over the whole list."""
    class Counting(list):
        passes = 0

        def __iter__(self):
            Counting.passes += 1
            return super().__iter__()

    model = Sequential(Dense(4, 2, seed=0), *[Tanh() for _ in range(3000)])
    X = np.ones((8, 4), np.float32)
    model.train_step(X, np.arange(8) % 2, "softmax", SGD(model.parameters(), lr=0.1))
    fmodel._check_apart(Counting(model._layers), model._units)
    assert Counting.passes <= 2
    # and the error a layer listed twice gives is as it was
    d = Dense(2, 2, seed=1)
    twice = Sequential(Dense(4, 2, seed=0), d, Tanh(), d)
    with pytest.raises(ValueError, match="layer 3 is layer 1 again"):
        twice.train_step(X, np.arange(8) % 2, "softmax", SGD(twice.parameters(), lr=0.1))


# ============================================================================ saving to a folder's path
def test_save_to_a_path_ending_in_a_separator_is_refused(tmp_path):
    """save("m.npz/") wrote m.npz (os.path.realpath drops the separator), which
    load_model("m.npz/") cannot read: the path names a folder, as open() takes it."""
    target = str(tmp_path / "m.npz") + os.sep
    with pytest.raises(IsADirectoryError) as info:
        _model().save(target)
    assert info.value.filename == target
    assert os.listdir(tmp_path) == []



class _Described(fastnn.Layer):
    """A parameterless layer of a user's own whose get_config() returns `config`."""

    def __init__(self, config):
        super().__init__(None)
        self.config = config

    def forward(self, x, training=False):
        return 2 * x

    def backward(self, dout):
        return 2 * dout

    def output_features(self, in_features):
        return in_features

    def get_config(self):
        return self.config


def test_a_description_with_tuples_and_int_keys_loads_back_into_its_model(tmp_path):
    """JSON stores a tuple as a list and an int key as a string: load compared the file's
    description with the model's own as given, and refused the file save had just written."""
    model = Sequential(Dense(3, 4, seed=1), _Described({"shape": (1, 2), 7: "seven", "k": 2.5,
                                                        "hi": float("inf"), "lo": -float("inf")}))
    path = str(tmp_path / "m.npz")
    model.save(path)
    W = model.layers[0].params["W"].copy()
    model.layers[0].params["W"][...] = 0
    model.load(path)
    assert_same_bits(model.layers[0].params["W"], W)


@pytest.mark.parametrize("config,error,why", [
    (["k", 2], TypeError, "must return a dict"),
    ({"k": float("nan")}, ValueError, "holds NaN"),
    ({"k": [1.0, {"deep": float("nan")}]}, ValueError, "holds NaN"),
    ({"k": np.float32(2)}, TypeError, "float32"),
    ({"a": np.ones(2)}, TypeError, "ndarray"),
    ({(1, 2): 3}, TypeError, "keys must be"),
    ({1: 2, "1": 3}, ValueError, "given twice"),   # (JSON writes both keys as "1")
], ids=["list", "nan", "nested-nan", "numpy-scalar", "array", "tuple-key", "key-twice-in-json"])
def test_a_description_a_file_cannot_hold_is_refused_by_save_naming_the_layer(tmp_path, config,
                                                                             error, why):
    """save wrote these (or failed inside json with no layer named); load then refused the
    file, or compared NaN unequal to itself. Now save names the layer and writes nothing.
    (Inf round-trips: JSON's Infinity reads back equal; the test above saves one.)"""
    path = tmp_path / "m.npz"
    with pytest.raises(error) as info:
        Sequential(Dense(3, 4), _Described(config)).save(str(path))
    assert "layer 1 (_Described) get_config()" in str(info.value) and why in str(info.value)
    assert os.listdir(tmp_path) == []

# ============================================================================ crafted archives and metadata
def _npy_bytes(payload):
    """A .npy file of a uint8 vector holding `payload`."""
    import io

    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": "|u1", "fortran_order": False,
                                             "shape": (len(payload),)})
    return b.getvalue() + payload


def _local_header(name, data):
    import struct
    import zlib

    n = name.encode()
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(data), len(data),
                       len(data), len(n), 0) + n


def _zip_of(body, entries):
    """`body` (the members' local headers and data), then a central directory listing
    `entries`: (name, data, offset of its local header in body)."""
    import struct
    import zlib

    cd = b""
    for name, data, off in entries:
        n = name.encode()
        cd += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, zlib.crc32(data),
                          len(data), len(data), len(n), 0, 0, 0, 0, 0, off) + n
    return body + cd + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                                   len(cd), len(body), 0)


def _quoted_overlap(names, payload, pad=0):
    """A stored .npz whose members overlap ("quoted overlap", the zip bomb of stored members):
    member k's data is a .npy vector whose bytes are members k+1.. (local headers and data), so
    reading every member reads the file's bytes over and over; `pad` zero bytes after them."""
    seg = None
    members = []
    for name in reversed(names):
        data = _npy_bytes(payload if seg is None else seg)
        seg = _local_header(name, data) + data
        members.append((name, data, seg))
    entries = [(name, data, len(seg) - len(own)) for name, data, own in reversed(members)]
    return _zip_of(seg + bytes(pad), entries)


_MODEL_NAMES = ["__fastnn__.npy", "0.W.npy", "0.b.npy", "1.W.npy", "1.b.npy", "2.W.npy"]


@pytest.mark.parametrize("how", ["quoted", "quoted-padded", "foreign-names"])
@pytest.mark.parametrize("loader", ["load_model", "Sequential.load", "load_checkpoint"])
def test_overlapping_members_are_refused_before_any_is_read(tmp_path, how, loader):
    """A stored archive whose members overlap (member k's data holding members k+1..N) made
    load_model read each byte of the file up to N times (~2 GB from a 10 MB file), before any
    check: the layout (members within the file, apart, their sizes summing to at most the
    file's) and the member names are now checked from the directory and the 30-byte local
    headers alone."""
    import json
    import tracemalloc

    from fastnn.solver import load_checkpoint

    names = _MODEL_NAMES if how != "foreign-names" else [f"q{k}.npy" for k in range(6)]
    if loader == "load_checkpoint":
        names = [n.replace("__fastnn__", "w") for n in names]
    raw = _quoted_overlap(names, bytes(1 << 18), pad=(1 << 18) * 30 if how == "quoted-padded" else 0)
    path = tmp_path / ("ck.npz" if loader == "load_checkpoint" else "bomb.npz")
    path.write_bytes(raw)
    if loader == "load_checkpoint":
        (tmp_path / "ck.json").write_text(json.dumps(
            {"format": "fastnn-solver-checkpoint", "version": 1, "params_file": "ck.npz",
             # (with foreign names: only the first one asked for, the others are extra)
             "param_names": [n[:-len(".npy")] for n in names][:1 if how == "foreign-names" else None]}))
    load = {"load_model": load_model, "Sequential.load": _model().load,
            "load_checkpoint": lambda p: load_checkpoint(tmp_path / "ck.json")}[loader]
    why = {"quoted": "more than the file", "quoted-padded": "overlap in the file",
           "foreign-names": "does not write" if loader != "load_checkpoint" else "should not"}[how]
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=why) as info:
            load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    # (the file read once, by load_model; the members overlapping it ~3.5 times over unchecked)
    assert peak < 1.5 * len(raw), peak


@pytest.mark.parametrize("entry", [1, "Dense", None, [], [1, 2], {"type": "Dense"},
                                   {"config": {}}, {"type": 1, "config": {}},
                                   {"type": "Dense", "config": []},
                                   {"type": "Tanh", "config": {}, "extra": 1}])
def test_a_layer_entry_that_is_not_a_layer_description_is_refused(tmp_path, entry):
    """Sequential.load used to raise AttributeError ('int' object has no attribute 'get') while
    it built its message for a layer entry that is not a dict; every entry is checked as a dict
    of "type" (a str) and "config" (a dict) by both loaders."""
    path = _model_file(tmp_path, [{"type": "Dense", "config": {"in_features": 4, "out_features": 6}},
                                  entry])
    for load in (load_model, Sequential(Dense(4, 6), Tanh()).load):
        with pytest.raises(ValueError, match=r"crafted\.npz: layer 1 has an unknown description"):
            load(path)


def _with_npy_header(src, dst, member, header_dict_text, data):
    import zipfile

    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    h = header_dict_text.encode("latin1")
    h += b" " * (64 - (10 + len(h) + 1) % 64) + b"\n"
    members[member] = b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + data
    with zipfile.ZipFile(dst, "w") as out:
        for n, d in members.items():
            out.writestr(n, d)


@pytest.mark.parametrize("shape", ["(True, 24)", "(24, False)", "(True,)", "(-1, 24)",
                                   "(1099511627776, 24)", "(4, 7)"])
def test_a_npy_header_shape_is_checked_before_the_array_is_read(tmp_path, shape):
    """A .npy header's shape passes NumPy's own check with bools in it ((True, 24)), and
    reading it then raised a bare "TypeError: an integer is required"; the shape must be ints
    (not bools), non-negative, and describe no more data than the member holds (NumPy
    allocates the described array before reading it)."""
    from fastnn.solver import load_checkpoint

    src, bad = tmp_path / "m.npz", tmp_path / "bad.npz"
    Sequential(Dense(4, 6, seed=0)).save(src)
    _with_npy_header(src, bad, "0.W.npy", "{'descr': '<f4', 'fortran_order': False, "
                                          f"'shape': {shape}, }}", bytes(96))
    for load in (load_model, Sequential(Dense(4, 6)).load):
        with pytest.raises(ValueError, match=r"bad\.npz .*(shape|describes)"):
            load(bad)
    ck = tmp_path / "ck"
    ck.mkdir()
    _with_npy_header(src, ck / "ck.npz", "0.W.npy", "{'descr': '<f4', 'fortran_order': False, "
                                                    f"'shape': {shape}, }}", bytes(96))
    import json
    (ck / "ck.json").write_text(json.dumps({"format": "fastnn-solver-checkpoint", "version": 1,
                                            "params_file": "ck.npz",
                                            "param_names": ["__fastnn__", "0.W", "0.b"]}))
    with pytest.raises(ValueError, match=r"ck\.npz .*(shape|describes)"):
        load_checkpoint(ck / "ck.json")


def test_a_member_whose_directory_claims_more_data_than_it_stores_is_refused(tmp_path):
    """A stored member's data size is given twice in the zip directory (compressed and
    uncompressed: for a stored member, one number); the layout check bounded the first, and
    the .npy header's data was measured against the second. A 1 KB file whose directory
    claimed 4 GiB for a member whose header describes 4 GiB made NumPy allocate it before it
    found the data missing."""
    import struct

    src, bad = tmp_path / "m.npz", tmp_path / "bad.npz"
    Sequential(Dense(4, 6, seed=0)).save(src)
    _with_npy_header(src, bad, "0.W.npy", "{'descr': '<f4', 'fortran_order': False, "
                                          "'shape': (178956960, 6), }", bytes(96))
    raw = bytearray(bad.read_bytes())
    # the central directory entry of 0.W.npy: its uncompressed size is at offset 24
    at = raw.index(b"PK\x01\x02")
    while raw[at + 46:at + 46 + len(b"0.W.npy")] != b"0.W.npy":
        at = raw.index(b"PK\x01\x02", at + 4)
    struct.pack_into("<I", raw, at + 24, 0xFFFFFFF0)
    bad.write_bytes(bytes(raw))
    peak = _peak_refusing(bad, (load_model, Sequential(Dense(4, 6)).load),
                          r"bad\.npz .*0\.W\.npy.* claims 4294967280")
    assert peak < 1 << 20, peak


def _peak_refusing(path, loads, match):
    """tracemalloc's peak while each of `loads` refuses `path` with a ValueError matching
    `match`."""
    import tracemalloc

    tracemalloc.start()
    try:
        for load in loads:
            with pytest.raises(ValueError, match=match):
                load(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_file_that_does_not_begin_as_a_zip_archive_is_refused_unread(tmp_path):
    """load_model read the whole file before any check: a large file of zeros cost its size
    in memory before the ValueError. Its first bytes are checked first."""
    path = tmp_path / "zeros.npz"
    with open(path, "wb") as f:
        f.truncate(64 << 20)   # (sparse: 64 MiB of zeros that take no disk)
    peak = _peak_refusing(path, (load_model, _model().load), r"zeros\.npz is not a fastnn model file")
    assert peak < 1 << 20, peak


def test_running_out_of_memory_reading_a_model_file_is_a_valueerror(saved, monkeypatch):
    """(A huge file under a memory limit gave a bare MemoryError.)"""
    _src, path = saved
    real = fmodel.open_regular

    class Starved:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        @property
        def raw(self):
            return self

        def read(self, n=-1):
            if n is None or n < 0:
                raise MemoryError
            return self.f.read(n)

        def readall(self):
            raise MemoryError

        def seek(self, *args):
            return self.f.seek(*args)

    monkeypatch.setattr(fmodel, "open_regular", lambda p, *a: Starved(real(p, *a)))
    for load in (load_model, _model().load):
        with pytest.raises(ValueError, match=rf"cannot read model file {path}: out of memory"):
            load(path)


def _meta_text_file(tmp_path, edit):
    """The model file of Dense(4, 2) with its metadata JSON text changed by `edit(text)`."""
    from fastnn.model import _META_KEY

    src, dst = tmp_path / "m.npz", tmp_path / "edited.npz"
    Sequential(Dense(4, 2, seed=0)).save(src)
    with np.load(src) as npz:
        arrays = {k: npz[k] for k in npz.files}
    text = edit(arrays[_META_KEY].tobytes().decode())
    arrays[_META_KEY] = np.frombuffer(text.encode(), np.uint8)
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("edit,why", [
    (lambda t: t.replace('"type": "Dense"', '"type": "Conv2d", "type": "Dense"'), "'type' is given twice"),
    (lambda t: t.replace('"format":', '"format": "other", "format":'), "'format' is given twice"),
    (lambda t: t.replace('"in_features": 4', '"in_features": 4, "in_features": 4'), "given twice"),
    (lambda t: t[:-1] + ', "junk": 1}', "does not know: 'junk'"),
    (lambda t: t[:-1] + ', "Format": 1, "layers2": []}', "does not know: 'Format', 'layers2'"),
], ids=["layer-type", "format", "config", "extra-key", "extra-keys"])
def test_metadata_with_a_repeated_or_unknown_key_is_refused(tmp_path, edit, why):
    """json.loads keeps the last of two equal keys silently (a file could say one thing to
    another reader and another to fastnn), and unknown top-level entries were ignored."""
    path = _meta_text_file(tmp_path, edit)
    for load in (load_model, Sequential(Dense(4, 2)).load):
        with pytest.raises(ValueError, match=rf"edited\.npz .*{why}"):
            load(path)
    load_model(_meta_text_file(tmp_path, lambda t: t))   # (unedited: loads)


def test_unexpected_arrays_are_listed_briefly(saved, tmp_path):
    """The error for arrays the model does not have listed every name (30,000 in a crafted
    file): now the first five and a count."""
    model, path = saved
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update({f"0.extra{k:03d}": np.zeros(1, np.float32) for k in range(30)})
    crowded = tmp_path / "crowded.npz"
    np.savez(crowded, **arrays)
    for load in (load_model, _model().load):
        with pytest.raises(ValueError, match=r"crowded\.npz has unexpected arrays: '0\.extra000', "
                                             r"'0\.extra001', '0\.extra002', '0\.extra003', "
                                             r"'0\.extra004' and 25 more$"):
            load(crowded)


class _TwoNames(fastnn.Layer):
    """A layer of a user's own with parameters named "s" and "s.npy" (an .npz archive stores
    them as the members s.npy and s.npy.npy)."""

    def __init__(self, n=3):
        super().__init__(np.float32)
        self._add_param("s", np.full(n, 2.0))
        self._add_param("s.npy", np.full(n, 5.0))

    def forward(self, x, training=False):
        return x * self.params["s"] + self.params["s.npy"]

    def backward(self, dout, need_dx=True):
        return dout * self.params["s"]

    def output_features(self, in_features):
        return in_features

    def get_config(self):
        return {"n": 3}


def test_a_parameter_named_like_another_s_member_loads_its_own_array(tmp_path):
    """NumPy's NpzFile looks a key up as a member's whole name first: npz["s.npy"] is the
    member s.npy, which holds the parameter "s". load gave "s.npy" the array of "s" (the
    same shape: no error, other predictions); it reads each parameter's own member now."""
    model = Sequential(Dense(3, 3, seed=0), _TwoNames())
    model.layers[1].params["s"][...] = [1.5, 2.5, 3.5]
    path = str(tmp_path / "m.npz")
    model.save(path)
    other = Sequential(Dense(3, 3, seed=1), _TwoNames())
    other.load(path)
    for key in ("s", "s.npy"):
        assert_same_bits(other.layers[1].params[key], model.layers[1].params[key])
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert_same_bits(other.predict(X), model.predict(X))


@pytest.mark.parametrize("call", ["save", "load_model", "load"])
def test_a_path_with_a_nul_character_is_refused_naming_path(tmp_path, call):
    """The OS's calls refused it with a bare 'embedded null byte' that named no argument."""
    path = str(tmp_path / "m") + "\0.npz"
    with pytest.raises(ValueError, match="path must name a file, got a path with a NUL"):
        if call == "save":
            _model().save(path)
        elif call == "load_model":
            load_model(path)
        else:
            _model().load(path)
    assert os.listdir(tmp_path) == []
