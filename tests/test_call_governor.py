"""The call governor (csrc/fastnn_governor.pxd, gov_begin / gov_end; fastnn.set_dynamic): the
kernel calls of fastnn.functional, the layers and the optimizers, each kind and shape with a
governor of its own.

The governor's decisions are tested with simulated times in test_governor.py; here, that each
kernel module asks it for the count, runs the count it gives (the module's count of parallel
regions shows it), gets the same bits for any count, reports its calls' times, leaves calls
too small for threads alone, and stays off while dynamic is off."""
import time

import numpy as np
import pytest

import fastnn
import fastnn.functional as F
import fastnn.optim as O
from fastnn._kernels import _config
from fastnn._kernels import activations as _ka
from fastnn._kernels import dense as _kd
from fastnn._kernels import dropout as _kdr
from fastnn._kernels import losses as _kl
from fastnn._kernels import optim as _ko

from conftest import run_child

OPENMP = _config.openmp_enabled()
MODULES = (_ka, _kd, _kdr, _kl, _ko)
SITES = 128   # GOV_SITES (fastnn_governor.pxd)

pytestmark = pytest.mark.skipif(not OPENMP, reason="one thread without OpenMP: nothing to govern")


@pytest.fixture(autouse=True)
def _fresh_sites():
    for m in MODULES:
        m.clear_sites()
    yield
    for m in MODULES:
        m.clear_sites()


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 512)).astype(np.float32)
    w = (rng.standard_normal((512, 512)) * 0.05).astype(np.float32)
    b = rng.standard_normal(512).astype(np.float32)
    big = rng.standard_normal(1 << 19).astype(np.float32)     # 4x the element-wise threshold
    scores = rng.standard_normal((4096, 64)).astype(np.float32)
    labels = rng.integers(0, 64, 4096)
    return x, w, b, big, scores, labels


def _dense_backward(x, w, b, big, scores, labels):
    out, cache = F.affine_relu_forward(x, w, b)
    return F.affine_relu_backward(np.ones_like(out), cache)


def _layer_without_dx(x, w, b, big, scores, labels):
    """The layer path: products cut as the step kernel cuts them, no input gradient."""
    layer = fastnn.Dense(512, 512, activation="relu", seed=1)
    out = layer.forward(x, training=True)
    layer.backward(np.ones_like(out), need_dx=False)
    return out, layer.grads["W"].copy(), layer.grads["b"].copy()


def _relu_both(x, w, b, big, scores, labels):
    out, cache = F.relu_forward(big)
    return out, F.relu_backward(big[::-1].copy(), cache)


def _prelu_both(x, w, b, big, scores, labels):
    z = big.reshape(1024, 512)
    out, cache = F.prelu_forward(z, np.full(512, 0.1, np.float32))
    return (out,) + tuple(F.prelu_backward(z[::-1].copy(), cache))


def _maxout_both(x, w, b, big, scores, labels):
    z = big.reshape(1024, 256, 2)
    out, cache = F.maxout_reduce_forward(z)
    return out, F.maxout_reduce_backward(out * 2, cache)


def _adam(x, w, b, big, scores, labels):
    config = {"learning_rate": 0.1}
    w1, config = O.adam(big.copy(), big, config)
    return w1, config["m"], config["v"]


# Each case: (the module, a call whose every kernel call is in that module and worth threads
# at 2 threads, what it returns as arrays)
CASES = {
    "dense_forward": (_kd, lambda x, w, b, big, s, y: F.affine_relu_forward(x, w, b)[0]),
    "dense_backward": (_kd, _dense_backward),
    "layer_without_dx": (_kd, _layer_without_dx),
    "activation": (_ka, lambda x, w, b, big, s, y: F.relu_forward(big)[0]),
    "activation_backward": (_ka, _relu_both),
    "prelu": (_ka, _prelu_both),
    "maxout": (_ka, _maxout_both),
    "dropout": (_kdr, lambda x, w, b, big, s, y:
                F.dropout_forward(big, {"p": 0.5, "mode": "train", "seed": 7})[0]),
    "loss": (_kl, lambda x, w, b, big, s, y: F.softmax_loss(s, y)),
    "target_loss": (_kl, lambda x, w, b, big, s, y: F.mse_loss(s, s[::-1].copy())),
    "update": (_ko, lambda x, w, b, big, s, y: O.sgd(big.copy(), big, {"learning_rate": 0.1})[0]),
    "update_adam": (_ko, _adam),
    # fit's guard on the layer path (model._grad_is_finite): a large gradient's check on the
    # model's thread count
    "finite_check": (_ko, lambda x, w, b, big, s, y:
                     np.asarray(_ko.all_finite(big, fastnn.get_num_threads()))),
}


def _arrays(result):
    items = result if isinstance(result, tuple) else (result,)
    return [np.asarray(a).tobytes() for a in items]


def _timed_sites(module):
    return [s for s in module.governed_sites() if not s["serial"]]


@pytest.mark.parametrize("case", list(CASES))
def test_calls_run_the_governors_count_and_the_same_bits(case):
    """A call asks its site for the count and runs what it is given: forced to 1 thread it
    starts no parallel region, to 2 or 3 it does; the numbers are the same bits every time."""
    module, call = CASES[case]
    data = _data()
    fastnn.set_dynamic(True)
    with fastnn.threads(3):
        want = _arrays(call(*data))             # the first call: the full count
        sites = _timed_sites(module)
        assert sites and all(s["last"] == 3 and s["limit"] == 3 for s in sites)
        for count in (1, 2, 3, 1):
            module.set_sites_current(count)
            before = module.parallel_regions()
            got = _arrays(call(*data))
            started = module.parallel_regions() - before
            assert all(s["last"] == count for s in _timed_sites(module)), count
            assert (started == 0) if count == 1 else (started > 0), (count, started)
            assert got == want, count


@pytest.mark.parametrize("case", list(CASES))
def test_with_dynamic_off_calls_are_not_governed(case):
    module, call = CASES[case]
    data = _data()
    fastnn.set_dynamic(False)
    with fastnn.threads(2):
        before = module.parallel_regions()
        call(*data)
        assert module.parallel_regions() > before     # the full count, threads started
    assert module.governed_sites() == []
    fastnn.set_dynamic(True)
    with fastnn.threads(2):
        call(*data)
    assert _timed_sites(module)


def test_one_thread_is_not_governed():
    fastnn.set_dynamic(True)
    with fastnn.threads(1):
        F.affine_relu_forward(*_data()[:3])
    assert _kd.governed_sites() == []


def test_a_call_too_small_for_threads_is_marked_serial_and_keeps_its_count():
    """Given 2 threads, a call that starts no parallel region never will: its site is marked
    serial, and its calls are counted but not timed (no probes, always the full count)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    w = rng.standard_normal((3, 5)).astype(np.float32)
    b = np.zeros(5, np.float32)
    fastnn.set_dynamic(True)
    with fastnn.threads(2):
        for _ in range(50):
            F.affine_forward(x, w, b)
    (site,) = _kd.governed_sites()
    assert site["serial"] and site["calls"] == 50 and site["last"] == 2 and site["probes"] == 0


def test_a_serial_site_is_timed_again_once_its_calls_start_threads():
    """A site marked serial whose call starts a parallel region after all (a threshold was
    lowered by a tuning hook) is timed again."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 64)).astype(np.float32)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    b = np.zeros(64, np.float32)
    fastnn.set_dynamic(True)
    saved = {k: _kd.tile_params()[k] for k in ("serial_flops", "min_tile_rows", "min_tile_cols")}
    with fastnn.threads(2):
        F.affine_forward(x, w, b)
        assert [s["serial"] for s in _kd.governed_sites()] == [True]
        try:
            _kd.set_tile_params(serial_flops=1.0, min_tile_rows=8, min_tile_cols=8)
            before = _kd.parallel_regions()
            F.affine_forward(x, w, b)
            assert _kd.parallel_regions() > before
            assert [s["serial"] for s in _kd.governed_sites()] == [False]
            _kd.set_sites_current(1)
            before = _kd.parallel_regions()
            F.affine_forward(x, w, b)
            assert _kd.parallel_regions() == before   # the governor's count again
        finally:
            _kd.set_tile_params(**saved)


def test_fastnn_dynamic_0_at_import_reaches_every_module():
    code = ("import numpy as np, fastnn, fastnn.functional as F\n"
            "from fastnn._kernels import activations, dense, dropout, losses, optim\n"
            "x = np.ones((256, 512), np.float32); w = np.ones((512, 512), np.float32)\n"
            "with fastnn.threads(2):\n"
            "    F.affine_relu_forward(x, w, np.ones(512, np.float32))\n"
            "    F.relu_forward(np.ones(1 << 19, np.float32))\n"
            "modules = (activations, dense, dropout, losses, optim)\n"
            "print(sum(len(m.governed_sites()) for m in modules))\n")
    for value, want in (("0", "0"), ("1", "2")):
        proc = run_child({"FASTNN_DYNAMIC": value}, code)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[-1] == want, value


def test_each_kind_and_shape_has_its_own_site():
    x, w, b = _data()[:3]
    fastnn.set_dynamic(True)
    with fastnn.threads(2):
        F.affine_relu_forward(x, w, b)
        F.affine_relu_forward(x, w, b)
        F.affine_forward(x, w, b)            # another activation
        F.affine_relu_forward(x[:128], w, b)   # another batch size
        F.affine_relu_forward(x.astype(np.float64), w, b)   # another dtype
    sites = _kd.governed_sites()
    assert sorted(s["calls"] for s in sites) == [1, 1, 1, 2]
    assert len({s["key"] for s in sites}) == 4


@pytest.mark.parametrize("case", list(CASES))
def test_calls_report_their_times_and_probes_start(case):
    """Each completed call's time reaches its site's governor: after two windows (4 calls and
    10 ms each) it starts its first probe, as the step's governor does."""
    module, call = CASES[case]
    data = _data()
    fastnn.set_dynamic(True)
    with fastnn.threads(2):
        # (each case's calls take 0.1-5 ms: the two windows take well under a second; 10 s
        # leaves room for a slow machine, and ends the loop if the probe never starts)
        end = time.perf_counter() + 10.0
        while time.perf_counter() < end:
            call(*data)
            sites = _timed_sites(module)
            if sites and all(s["probes"] >= 1 for s in sites):
                break
    assert sites and all(s["probes"] >= 1 and s["calls"] >= 8 for s in sites)


def test_a_new_thread_count_starts_the_site_afresh():
    x, w, b = _data()[:3]
    fastnn.set_dynamic(True)
    with fastnn.threads(2):
        F.affine_relu_forward(x, w, b)
        _kd.set_sites_current(1)
        F.affine_relu_forward(x, w, b)
        assert _kd.governed_sites()[0]["last"] == 1
    with fastnn.threads(3):
        F.affine_relu_forward(x, w, b)
    (site,) = _kd.governed_sites()
    assert site["limit"] == 3 and site["last"] == 3 and site["current"] == 3


def test_shapes_that_share_a_home_slot_keep_their_sites():
    """40 kinds and shapes in a table of 128: some share a home slot (by their hash), and each
    still keeps a site of its own (the next free slots), so none is taken over."""
    fastnn.set_dynamic(True)
    with fastnn.threads(2):
        for _ in range(2):
            for n in range(1, 41):
                w = np.ones(n, np.float32)
                O.sgd(w, w, {"learning_rate": 0.5})
    sites = _ko.governed_sites()
    assert len(sites) == 40 and all(s["calls"] == 2 for s in sites)


def test_more_shapes_than_sites_take_slots_over():
    """More kinds and shapes than the table holds: sites are taken over (what they learned is
    lost), nothing else happens, and the newest shape has its site."""
    rng = np.random.default_rng(2)
    fastnn.set_dynamic(True)
    with fastnn.threads(2):
        for n in range(1, 3 * SITES):
            w = rng.standard_normal(n).astype(np.float32)
            O.sgd(w, w, {"learning_rate": 0.5})
    sites = _ko.governed_sites()
    assert 0 < len(sites) <= SITES
    assert all(s["calls"] == 1 for s in sites)
    w = np.ones(1 << 18, np.float32)
    with fastnn.threads(2):
        for _ in range(3):
            O.sgd(w, w, {"learning_rate": 0.5})
    assert any(s["calls"] == 3 and not s["serial"] for s in _ko.governed_sites())


def test_the_layers_and_their_optimizer_are_governed():
    """A model trained layer by layer (forward, backward, the optimizer's step) goes through
    the same kernels: its calls get sites, and it trains to the same bits as with dynamic off."""
    def train(dynamic):
        fastnn.set_dynamic(dynamic)
        rng = np.random.default_rng(4)
        model = fastnn.Sequential(fastnn.Dense(512, 512, activation="relu", seed=1),
                                  fastnn.Dense(512, 10, seed=2))
        opt = fastnn.SGD(model.parameters(), lr=0.01)
        loss = fastnn.SoftmaxCrossEntropy()
        X = rng.standard_normal((256, 512)).astype(np.float32)
        y = rng.integers(0, 10, 256)
        with fastnn.threads(2):
            for _ in range(3):
                value, dscores = loss(model.forward(X, training=True), y)
                model.backward(dscores)
                opt.step()
        return [p.data.tobytes() for p in model.parameters()]

    off = train(False)
    assert _kd.governed_sites() == [] and _ko.governed_sites() == []
    assert train(True) == off
    assert _timed_sites(_kd) and _ko.governed_sites()


def _window(module, key, seconds, calls=4):
    """One window of made-up call times (4 calls and at least 10 ms) on the count the site
    of `key` runs now; returns that count."""
    (site,) = [s for s in module.governed_sites() if s["key"] == key]
    running = site["probe"] if site["phase"] in (1, 3) else site["current"]   # try, again
    for _ in range(calls):
        assert module.site_record(key, running, seconds)
    return running


def _site(module, key):
    (site,) = [s for s in module.governed_sites() if s["key"] == key]
    return site


def _two_dense_sites():
    """The keys of two dense sites on 2 threads (two batch sizes), their governors afresh."""
    x, w, b = _data()[:3]
    fastnn.set_dynamic(True)
    with fastnn.threads(2):
        F.affine_relu_forward(x, w, b)
        F.affine_relu_forward(x[:128], w, b)
    _kd.set_sites_current(2)   # (afresh: the real calls' times are not in the windows)
    return tuple(sorted(s["key"] for s in _kd.governed_sites()))


def test_a_site_that_moves_makes_the_others_try_the_same_way():
    """When one site of a module moves (here from 2 threads to 1), the module's other sites on
    that count try it at the end of their next window, instead of waiting out the spacing of
    their probes; they move only if the try wins for them too. (Simulated times.)"""
    ka, kb = _two_dense_sites()
    # site B: two windows, then a probe of 1 thread that loses (twice as slow), so that its
    # next probe waits for ~64 windows
    for _ in range(2):
        assert _window(_kd, kb, 0.003) == 2
    assert _site(_kd, kb)["probe"] == 1
    assert _window(_kd, kb, 0.006) == 1
    assert _site(_kd, kb)["probe"] == 0 and _site(_kd, kb)["current"] == 2
    for _ in range(5):
        _window(_kd, kb, 0.003)
    assert _site(_kd, kb)["probe"] == 0           # still waiting
    # site A: two windows, then a decisively faster try of 1 thread: it moves
    for _ in range(2):
        assert _window(_kd, ka, 0.003) == 2
    assert _window(_kd, ka, 0.0011, calls=10) == 1
    assert _site(_kd, ka)["current"] == 1
    # B tries 1 thread after its next window, and stays when the try loses again
    assert _window(_kd, kb, 0.003) == 2
    assert _site(_kd, kb)["probe"] == 1
    assert _window(_kd, kb, 0.006) == 1
    assert _site(_kd, kb)["current"] == 2 and _site(_kd, kb)["probe"] == 0


def test_a_nudged_site_moves_when_the_try_wins_for_it():
    ka, kb = _two_dense_sites()
    for key in (kb, ka):
        for _ in range(2):
            _window(_kd, key, 0.003)
    _window(_kd, kb, 0.006)                       # B's try loses
    _window(_kd, ka, 0.0011, calls=10)            # A moves to 1
    _window(_kd, kb, 0.003)                       # B tries 1 at once
    assert _window(_kd, kb, 0.002, calls=5) == 1  # and wins (1.5x)
    assert _window(_kd, kb, 0.003) == 2           # its window back on 2
    assert _window(_kd, kb, 0.002, calls=5) == 1  # wins again: moves
    assert _site(_kd, kb)["current"] == 1
