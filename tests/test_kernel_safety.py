"""Crashes found by the twenty-fifth session's fuzzing of the compiled kernels (each of these
tests ended the interpreter with a segmentation fault, or a refused call left a null pointer
for the next one to follow):

- a training step whose labels y share memory with a gradient array: the labels were checked,
  then read again after a row chunk's backward pass had written that gradient over them, and
  used as indexes (public: Sequential.train_step);
- the loss kernels index the scores with each label again at its use, after the check, without
  the GIL: a label that changed meanwhile (another thread writing y, or y aliasing dx in the
  private kernel) read and wrote outside the row. Now such a row gets a NaN loss instead;
- StepPlan took None for a layer's b, dW or db (a null pointer the step followed), and
  register_blas_thread_control took a setter without a getter;
- StepPlan.step was marked busy only after its buffers grew: a second step let in meanwhile
  swapped them under the first (a use after free);
- PReLU and maxout kernels started as many threads as asked, whatever their blocks of work.
"""
import os
import threading

import numpy as np
import pytest

import fastnn
from fastnn._kernels import dense as kd
from fastnn._kernels import losses as kl
from fastnn._kernels import network as kn


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer", [0, 1])
def test_labels_that_share_memory_with_a_gradient_train_as_a_copy_would(dtype, layer):
    """y is a view of a layer's weight gradient (valid labels, all 0, at the call): the step
    reads labels from a copy, as it reads X (the layer path computes the loss before any
    gradient is written)."""
    n = 64

    def fresh():
        model = fastnn.Sequential(fastnn.Dense(16, 16, activation="relu", seed=0, dtype=dtype),
                                  fastnn.Dense(16, 10, seed=1, dtype=dtype))
        return model, fastnn.SGD(model.parameters(), lr=0.1)

    X = np.random.default_rng(0).standard_normal((n, 16)).astype(dtype)
    model, opt = fresh()
    ref, ref_opt = fresh()
    y0 = np.zeros(n, np.intp)
    model.train_step(X, y0, "softmax", opt)      # (builds the compiled step)
    ref.train_step(X, y0, "softmax", ref_opt)
    g = model.layers[layer].grads["W"]
    g[...] = 0
    y = g.view(np.intp).reshape(-1)[:n]
    loss = model.train_step(X, y, "softmax", opt)
    want = ref.train_step(X, y0, "softmax", ref_opt)
    assert loss == want
    for a, b in zip(model.parameters(), ref.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("kind", [kl.SOFTMAX, kl.SVM])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_loss_kernel_never_indexes_with_a_label_changed_since_its_check(kind, dtype):
    """(Private kernel.) y is a view of dx: the labels pass the check (all 0), and the rows'
    gradients, written as the kernel goes, then read as labels far out of range. Those rows'
    losses and gradients are NaN (the non-finite guard sees them); nothing outside a row is
    read or written (a segmentation fault before)."""
    x = np.random.default_rng(0).standard_normal((64, 3)).astype(dtype)
    dx = np.zeros((64 + 8, 3), dtype)   # (rows beyond the 64 the kernel writes: must stay 0)
    y = dx.reshape(-1).view(np.intp)[:64]
    loss = kl.class_loss(kind, x, y, dx[:64], 1)
    assert np.isnan(loss)
    nan_rows = np.isnan(dx[:64]).all(axis=1)
    assert nan_rows.sum() > 32 and not np.isnan(dx[:64][~nan_rows]).any()
    np.testing.assert_array_equal(dx[64:], 0)


def test_softmax_loss_under_a_thread_that_writes_y_never_crashes():
    """Another Python thread writes y while fastnn.functional.softmax_loss runs (the kernel
    reads y without the GIL): each call raises at the check, or returns (a NaN loss where a
    label was out of range at its use); it crashed within a second before."""
    n, c = 20000, 10
    x = np.random.default_rng(0).standard_normal((n, c))
    y = np.zeros(n, np.intp)
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            y[n - 1] = 10**12
            y[n - 1] = 0

    t = threading.Thread(target=flip, daemon=True)
    t.start()
    outcomes = set()
    try:
        for _ in range(300):
            try:
                loss, _ = fastnn.functional.softmax_loss(x, y)
                outcomes.add("nan" if np.isnan(loss) else "ok")
            except ValueError:
                outcomes.add("refused")
    finally:
        stop.set()
        t.join()
    assert outcomes <= {"ok", "nan", "refused"}


def _layers(dtype=np.float32):
    rng = np.random.default_rng(0)
    layers, params = [], []
    for d, m, op in ((3, 5, 1), (5, 4, 0)):
        W = rng.standard_normal((d, m)).astype(dtype)
        b = np.zeros(m, dtype)
        layers.append(dict(W=W, b=b, dW=np.zeros_like(W), db=np.zeros_like(b), op=op,
                           alpha=0.0))
        params += [(W, layers[-1]["dW"], None, None, True), (b, layers[-1]["db"], None, None, False)]
    return layers, params


@pytest.mark.parametrize("key", ["b", "dW", "db"])
@pytest.mark.parametrize("layer", [0, 1])
def test_a_step_plan_refuses_a_missing_array(key, layer):
    from fastnn._kernels import optim as ko
    layers, params = _layers()
    layers[layer][key] = None
    with pytest.raises(ValueError, match="an array every step uses is None"):
        kn.StepPlan(np.float32, 6, kl.SOFTMAX, layers, params, ko.SGD)


@pytest.mark.parametrize("which", [0, 1])
def test_a_step_plan_refuses_a_missing_parameter_or_gradient(which):
    from fastnn._kernels import optim as ko
    layers, params = _layers()
    entry = list(params[0])
    entry[which] = None
    params[0] = tuple(entry)
    with pytest.raises(ValueError, match="an array every step uses is None"):
        kn.StepPlan(np.float32, 6, kl.SOFTMAX, layers, params, ko.SGD)


@pytest.mark.parametrize("addrs", [(1, 0), (0, 1)])
def test_the_blas_thread_hook_takes_both_functions_or_neither(addrs):
    before = kd.blas_thread_control()
    with pytest.raises(ValueError, match="both functions' addresses or neither"):
        kd.register_blas_thread_control(*addrs)
    assert kd.blas_thread_control() == before
    # (and the kernels still run with the control they had)
    x = np.ones((4, 3), np.float32)
    out, _ = fastnn.functional.affine_forward(x, np.ones((3, 2), np.float32), np.zeros(2, np.float32))
    np.testing.assert_array_equal(out, 3.0)


def test_a_step_that_lets_another_in_while_it_grows_its_buffers_finds_it_refused(monkeypatch):
    """The plan was marked busy only after its buffers grew, and growing them allocates (the
    collector may run there, and another thread take the GIL): a second step on the same plan
    then ran and swapped the buffers under the first (a use after free). Here the allocation
    itself tries that second step: it must be refused, and the first step's numbers must be a
    lone step's."""
    from fastnn._kernels import optim as ko
    X = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    y = (np.arange(6) % 4).astype(np.intp)
    layers, params = _layers()
    plan = kn.StepPlan(np.float32, 6, kl.SOFTMAX, layers, params, ko.SGD)
    ref_layers, ref_params = _layers()
    ref = kn.StepPlan(np.float32, 6, kl.SOFTMAX, ref_layers, ref_params, ko.SGD)
    want = ref.step(X, y, None, 0.1, 0, 0, 0, 1, 1, 0, 2)
    seen = []
    real_empty = np.empty

    def empty(*args, **kwargs):   # (the plan's buffers are NumPy arrays it makes on demand)
        if not seen:
            seen.append("tried")
            try:
                plan.step(X, y, None, 0.1, 0, 0, 0, 1, 1, 0, 1)
                seen.append("ran")
            except RuntimeError as exc:
                seen.append(str(exc))
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(np, "empty", empty)
    got = plan.step(X, y, None, 0.1, 0, 0, 0, 1, 1, 0, 2)   # (first step: its buffers grow)
    monkeypatch.undo()
    assert seen == ["tried", "StepPlan.step is already running on this plan in another thread"]
    assert got == want
    for a, b in zip(params, ref_params):
        np.testing.assert_array_equal(a[0], b[0])




def _os_threads():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="counts the process's "
                    "threads in /proc/self/status (Linux)")
def test_element_wise_kernels_start_no_more_threads_than_blocks_of_work():
    """With the per-thread work threshold at its least (a tuning hook), PReLU and maxout gave
    OpenMP every thread asked for (2000 for two blocks of rows): under a memory limit its
    runtime ended the process ('Thread creation failed')."""
    from fastnn._kernels import activations as ka
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 64)).astype(np.float32)
    alpha = np.full(64, 0.1, np.float32)
    z = rng.standard_normal((300, 64, 2)).astype(np.float32)
    want_out = np.empty_like(x)
    ka.prelu_forward(x, alpha, want_out, 1)
    old = ka.min_work_per_thread()
    before = _os_threads()
    out, dx, dalpha = np.empty_like(x), np.empty_like(x), np.empty_like(alpha)
    mo, am, dz = np.empty((300, 64), np.float32), np.empty((300, 64), np.int8), np.empty_like(z)
    try:
        ka.set_min_work_per_thread(1)
        ka.prelu_forward(x, alpha, out, 400)
        ka.prelu_backward(np.ones_like(x), x, alpha, dx, dalpha, 400)
        ka.maxout_reduce_forward(z, mo, am, 400)
        ka.maxout_reduce_backward(np.ones_like(mo), am, dz, 400)
    finally:
        ka.set_min_work_per_thread(old)
    assert _os_threads() - before < 40
    np.testing.assert_array_equal(out, want_out)
