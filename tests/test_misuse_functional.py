"""fastnn.functional / optim / gradcheck cases found by the twelfth session's audit:

- an infinite weight stays infinite under every update rule without weight decay, as in the
  course's rules (it became NaN: the kernels computed dw + 0 * w), in the functional rules
  and the layer API's optimizers (the whole-step kernel calls the same update kernels);
- out= given as an np.matrix (always 2-D), or in the other byte order, is refused naming out
  with a message that says what is wrong (an np.memmap works);
- a weight matrix resized in place between forward and backward is named as such (dout was
  blamed), a damaged slope in a cache is named, and a 0-d PReLU slope array is read live at
  backward like a 1-D one;
- rel_error refuses complex input (it dropped the imaginary part).

And by the twentieth session's audit:

- a masked array (numpy.ma) with masked entries is refused naming the argument (its mask was
  dropped and the values under it computed with: a masked 1e6 score gave a loss of 999999);
- a PReLU slope of shape (1,) (PyTorch's nn.PReLU() weight) is one slope shared by every
  feature, dalpha of shape (1,); a NaN scalar slope flows through as a NaN slope array did
  (it raised: the slope is a parameter, like w);
- the class and binary losses check the labels against x's shape before converting x (a
  broadcast x of a huge shape with the wrong labels was copied: MemoryError).

And by the twenty-second session's: a masked 0-d hyper-parameter (a learning rate, dropout's
p, a leaky slope) was read as the value under its mask.

And by the twenty-fifth session's:

- the affine forwards' fast path allocated their output (N x outputs of w) before comparing w's
  rows and b with x: a small x and w of the wrong shapes asked for 74.5 GiB (MemoryError);
- mse_loss with a list x, dropout_backward and affine_relu_backward with the course's caches
  converted a huge broadcast y, mask or relu_cache before comparing its shape;
- grad_check_sparse took a complex, object, string or masked analytic_grad (errors that did
  not name it, or masked entries read as data), and eval_numerical_gradient_array blamed df
  when f returned None;
- a DenseCache made without __init__ raised AttributeError in the backward functions.

And by a later audit of huge broadcast views (a view of a fine shape, copied before another
argument was compared with it: MemoryError): prelu_forward's x before alpha, the element-wise
forwards' x before out, and the update rules' w before a dw given as a list (or of a dtype
none takes).
"""
import numpy as np
import pytest

import fastnn
import fastnn.functional as F
import fastnn.gradcheck as G
import fastnn.optim as O
import fastnn.reference.activations as RA
import fastnn.reference.optim as RO

RULES = ["sgd", "sgd_momentum", "nesterov_momentum", "rmsprop", "adam"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", RULES)
def test_an_infinite_weight_stays_infinite_without_weight_decay(rule, dtype):
    w = np.array([np.inf, -np.inf, 1.0, -2.0] * 5, dtype=dtype)   # (past the SIMD width)
    dw = np.linspace(-1, 1, w.size).astype(dtype)
    got, cfg = getattr(O, rule)(w.copy(), dw, {"learning_rate": 0.1})
    want, want_cfg = getattr(RO, rule)(w.copy(), dw, {"learning_rate": 0.1})
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for key in ("velocity", "cache", "m", "v"):
        if key in cfg:
            assert not np.isnan(cfg[key]).any(), key


@pytest.mark.parametrize("make", [lambda p: fastnn.SGD(p, lr=0.1),
                                  lambda p: fastnn.SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: fastnn.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda p: fastnn.RMSProp(p, lr=0.1),
                                  lambda p: fastnn.Adam(p, lr=0.1)],
                         ids=["sgd", "momentum", "nesterov", "rmsprop", "adam"])
def test_an_infinite_weight_stays_infinite_in_the_layer_apis_optimizers(make):
    """(The whole-step kernel updates through the same kernels, update_span; a forward pass
    through an infinite weight cannot stay finite, so the optimizers are stepped directly.)"""
    model = fastnn.Sequential(fastnn.Dense(4, 3, seed=0))
    W = model.layers[0].params["W"]
    W[0, :] = np.inf
    W[1, :] = -np.inf
    model.layers[0].grads["W"][...] = 0.5
    opt = make(model.parameters())
    opt.step()
    assert np.isposinf(W[0]).all() and np.isneginf(W[1]).all()
    assert np.isfinite(W[2:]).all()
    for st in opt.state.values():
        for a in st:
            assert not np.isnan(a).any()


def test_out_may_not_be_an_np_matrix_but_a_memmap_works(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 3))
    with pytest.warns(PendingDeprecationWarning):
        m = np.matrix(np.empty((2, 3)))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray, not an np.matrix"):
        F.relu_forward(x, out=m)
    with pytest.raises(TypeError, match="not an np.matrix"):
        F.tanh_backward(x, F.tanh_forward(x)[1], out=m)
    mm = np.memmap(tmp_path / "out.bin", np.float64, "w+", shape=(2, 3))
    got = F.relu_forward(x, out=mm)[0]
    assert got is mm
    np.testing.assert_array_equal(np.asarray(mm), np.maximum(x, 0))


def test_out_in_the_other_byte_order_says_so():
    x = np.ones(5)
    other = np.empty(5, dtype=np.dtype(np.float64).newbyteorder())
    with pytest.raises(TypeError, match="not in the machine's byte order"):
        F.relu_forward(x, out=other)
    with pytest.raises(TypeError, match="out must have dtype float64, got float32"):
        F.relu_forward(x, out=np.empty(5, np.float32))


@pytest.mark.parametrize("new_shape", [(4, 6), (6, 5), (6, 3)])
def test_w_resized_between_forward_and_backward_is_named(new_shape):
    r = np.random.default_rng(0)
    x, w, b = r.standard_normal((5, 6)), r.standard_normal((6, 4)), r.standard_normal(4)
    for fwd, bwd in ((F.affine_forward, F.affine_backward),
                     (F.affine_relu_forward, F.affine_relu_backward)):
        w2 = w.copy()
        out, cache = fwd(x, w2, b)
        w2.resize(new_shape, refcheck=False)
        with pytest.raises(ValueError, match=r"w changed shape since forward: expected \(6, 4\)"):
            bwd(np.ones((5, 4)), cache)


@pytest.mark.parametrize("bad", ["a", None, float("nan"), True])
def test_a_damaged_leaky_slope_is_named(bad):
    r = np.random.default_rng(0)
    x = r.standard_normal((3, 4))
    _, cache = F.leaky_relu_forward(x)
    cache.alpha = bad
    with pytest.raises(ValueError, match="cache is damaged or not from leaky_relu_forward"):
        F.leaky_relu_backward(np.ones((3, 4)), cache)
    w, b = r.standard_normal((4, 2)), r.standard_normal(2)
    _, cache = F.affine_leaky_relu_forward(x, w, b)
    cache.alpha = bad
    with pytest.raises(ValueError, match="cache is damaged or not from affine_leaky_relu_forward"):
        F.affine_leaky_relu_backward(np.ones((3, 2)), cache)


def test_a_damaged_maxout_shape_is_named():
    _, cache = F.maxout_reduce_forward(np.random.default_rng(0).standard_normal((2, 3, 2)))
    cache.alpha = (2, 3, 2.5)
    with pytest.raises(ValueError, match="cache is damaged or not from maxout_reduce_forward"):
        F.maxout_reduce_backward(np.ones((2, 3)), cache)


def test_a_0d_prelu_slope_array_is_read_live_like_a_1d_one():
    r = np.random.default_rng(0)
    x, dout = r.standard_normal((4, 3)), r.standard_normal((4, 3))
    for alpha in (np.array(0.5), np.full(3, 0.5), np.array([0.5])):   # (1,): one shared slope
        _, cache = F.prelu_forward(x, alpha)
        alpha[...] = 9.0
        dx, dalpha = F.prelu_backward(dout, cache)
        want_dx, want_dalpha = RA.prelu_backward(dout, RA.prelu_forward(x, alpha)[1])
        np.testing.assert_allclose(dx, want_dx, rtol=1e-12)
        np.testing.assert_allclose(dalpha, want_dalpha, rtol=1e-12)
        assert np.shape(dalpha) == alpha.shape
    w, b = r.standard_normal((3, 2)), r.standard_normal(2)
    a = np.array(0.5)
    _, cache = F.affine_prelu_forward(x, w, b, a)
    a[()] = 9.0
    z = x @ w + b
    want_dw = x.T @ (np.ones((4, 2)) * np.where(z > 0, 1.0, 9.0))
    np.testing.assert_allclose(F.affine_prelu_backward(np.ones((4, 2)), cache)[1], want_dw,
                               rtol=1e-12)


@pytest.mark.parametrize("bad", [np.array([1j]), np.array(["a"]), [None]])
def test_rel_error_refuses_what_is_not_real(bad):
    with pytest.raises(TypeError, match="must hold real numbers"):
        G.rel_error(bad, np.ones(1))
    with pytest.raises(TypeError, match="y must hold real numbers"):
        G.rel_error(np.ones(1), bad)
    assert G.rel_error(np.array([1.0, 2.0]), [1, 2]) == 0.0


def _masked(a, where):
    m = np.zeros(np.shape(a), bool)
    m[where] = True
    return np.ma.array(a, mask=m)


@pytest.mark.parametrize("call, name", [
    (lambda mk: F.softmax_loss(mk(np.array([[1.0, 2.0, 1e6]]), (0, 2)), np.array([0])), "x"),
    (lambda mk: F.softmax_loss(np.ones((2, 3)), mk(np.array([0, 1]), 1)), "y"),
    (lambda mk: F.logistic_loss(np.ones(2), mk(np.array([0, 1]), 1)), "y"),
    (lambda mk: F.mse_loss(mk(np.array([1.0, 100.0]), 1), np.array([1.0, 0.0])), "x"),
    (lambda mk: F.mse_loss(np.array([1.0, 100.0]), mk(np.array([1.0, 0.0]), 1)), "y"),
    (lambda mk: F.relu_forward(mk(np.array([-1.0, 5.0, np.nan]), 2)), "x"),
    (lambda mk: F.affine_relu_forward(mk(np.ones((2, 3)), (0, 1)), np.ones((3, 2)), np.zeros(2)), "x"),
    (lambda mk: F.affine_forward(np.ones((2, 3)), mk(np.ones((3, 2)), (1, 1)), np.zeros(2)), "w"),
    (lambda mk: F.dropout_forward(mk(np.ones(4), 0), {"p": 0.5, "mode": "train", "seed": 1}), "x"),
    (lambda mk: O.sgd(mk(np.ones(3), 1), np.ones(3)), "w"),
    (lambda mk: O.adam(np.ones(3), mk(np.ones(3), 1)), "dw"),
    # a masked 0-d hyper-parameter (its value under the mask was used)
    (lambda mk: O.sgd(np.ones(3), np.ones(3), {"learning_rate": mk(np.array(0.5), ())}),
     r"config\['learning_rate'\]"),
    (lambda mk: F.dropout_forward(np.ones(4), {"p": mk(np.array(0.5), ()), "mode": "train", "seed": 1}),
     r"dropout_param\['p'\]"),
    (lambda mk: F.leaky_relu_forward(-np.ones(2), mk(np.array(0.5), ())), "alpha"),
], ids=["softmax-x", "softmax-y", "logistic-y", "mse-x", "mse-y", "relu", "affine_relu-x",
        "affine-w", "dropout", "sgd-w", "adam-dw", "sgd-lr-0d", "dropout-p-0d", "leaky-alpha-0d"])
def test_a_masked_array_with_masked_entries_is_refused_naming_it(call, name):
    with pytest.raises(TypeError, match=rf"^{name} is a masked array with masked entries"):
        call(_masked)
    # one with nothing masked is its data
    got, want = call(lambda a, where: np.ma.array(a)), call(lambda a, where: a)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        if isinstance(w, (np.ndarray, float)):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_scalar_prelu_slope_flows_through_like_a_slope_array(bad):
    x = np.array([[-2.0, 0.0, 3.0], [1.0, -0.5, -1.0]])
    dout = np.ones_like(x)
    for alpha in (bad, np.full(3, bad), np.array([bad])):
        out, cache = F.prelu_forward(x, alpha)
        with np.errstate(invalid="ignore"):   # (the reference's inf * 0)
            want = RA.prelu_forward(x, alpha)[0]
        np.testing.assert_array_equal(out, want)
        dx, dalpha = F.prelu_backward(dout, cache)
        np.testing.assert_array_equal(dx, RA.prelu_backward(dout, (x, alpha))[0])
        assert np.shape(dalpha) == np.shape(alpha)
        w, b = np.eye(3), np.zeros(3)
        np.testing.assert_array_equal(F.affine_prelu_forward(x, w, b, alpha)[0], want)


@pytest.mark.parametrize("loss, x, y", [
    (F.softmax_loss, np.broadcast_to(1.0, (2**20, 2**20)), np.zeros(3, int)),
    (F.svm_loss, np.broadcast_to(np.float32(1.0), (2**20, 2**20)), np.zeros(3, int)),
    (F.logistic_loss, np.broadcast_to(1.0, (2**36,)), np.zeros(3, int)),
    (F.binary_svm_loss, np.broadcast_to(1.0, (2**36, 1)), np.ones(3, int)),
], ids=["softmax", "svm", "logistic", "binary_svm"])
def test_losses_check_the_labels_before_copying_a_huge_x(loss, x, y):
    """(x would take 8 TiB or 512 GiB: a copy of it raised MemoryError.)"""
    with pytest.raises(ValueError, match=r"^y must have"):
        loss(x, y)


_HUGE = np.broadcast_to(np.float32(1.0), (2**40,))   # (a copy: 4-8 TiB, a MemoryError)
_X34 = np.ones((3, 4))


@pytest.mark.parametrize("call, name", [
    (lambda: F.relu_backward(_HUGE, _X34), "dout"),
    (lambda: F.sigmoid_backward(_HUGE, F.sigmoid_forward(_X34)[1]), "dout"),
    (lambda: F.tanh_backward(_HUGE, F.tanh_forward(_X34)[1]), "dout"),
    (lambda: F.leaky_relu_backward(_HUGE, F.leaky_relu_forward(_X34)[1]), "dout"),
    (lambda: F.prelu_forward(_X34, _HUGE), "alpha"),
    (lambda: F.prelu_backward(_HUGE, F.prelu_forward(_X34, 0.1)[1]), "dout"),
    (lambda: F.maxout_reduce_forward(np.broadcast_to(1.0, (2, 2, 2**40))), "z"),
    (lambda: F.maxout_reduce_backward(_HUGE, F.maxout_reduce_forward(np.ones((2, 3, 2)))[1]), "dout"),
    (lambda: F.maxout_backward(_HUGE, F.maxout_forward(_X34, np.ones((4, 2, 3)), np.zeros((2, 3)))[1]),
     "dout"),
    (lambda: F.dropout_backward(_HUGE, F.dropout_forward(_X34, {"p": 0.5, "mode": "train", "seed": 1})[1]),
     "dout"),
    (lambda: F.gaussian_noise_backward(_HUGE, F.gaussian_noise_forward(_X34, 0.1, seed=1)[1]), "dout"),
    (lambda: O.sgd(_HUGE, np.ones(3)), "dw"),
    (lambda: O.adam(np.ones(3), np.ones(3), {"m": _HUGE}), r"config\['m'\]"),
    (lambda: O.rmsprop(np.ones(3), np.ones(3), {"cache": _HUGE}), r"config\['cache'\]"),
    (lambda: F.relu_backward(np.ones((4, 3)), np.broadcast_to(1.0, (2**40, 3))), "dout"),
    (lambda: F.mse_loss([[1.0, 2.0]], np.broadcast_to(1.0, (2**40, 3))), "y"),
    (lambda: F.mse_loss(np.broadcast_to(1.0, (2**40, 3)), [[1.0, 2.0]]), "y"),
    (lambda: F.dropout_backward(np.ones(3), ({"p": 0.5, "mode": "train"}, _HUGE)), "dout"),
    (lambda: F.dropout_backward([1.0, 2.0], ({"p": 0.5, "mode": "train"}, _HUGE)), "dout"),
    (lambda: F.affine_relu_backward(np.ones((3, 2)), ((_X34, np.ones((4, 2)), np.ones(2)),
                                                      np.broadcast_to(1.0, (2**40, 2)))),
     "cache's relu_cache"),
    # the affine forwards' fast path (2-D x, w, b of one dtype): its output, 2**31 - 1 rows
    # by the 2**31 - 1 outputs of this w, was allocated before w's rows were compared with x
    # ("array is too big", a ValueError that names nothing)
    *[(lambda fw=fw: fw(np.broadcast_to(1.0, (2**31 - 1, 3)), np.broadcast_to(1.0, (4, 2**31 - 1)),
                        np.broadcast_to(1.0, (2**31 - 1,))), "w")
      for fw in (F.affine_forward, F.affine_relu_forward, F.affine_sigmoid_forward,
                 F.affine_tanh_forward, F.affine_leaky_relu_forward)],
], ids=["relu", "sigmoid", "tanh", "leaky_relu", "prelu-alpha", "prelu", "maxout_reduce",
        "maxout_reduce_backward", "maxout_backward", "dropout", "gaussian_noise", "sgd-w",
        "adam-m", "rmsprop-cache", "relu-course-cache", "mse-list-x", "mse-list-y", "dropout-course-mask",
        "dropout-course-list-dout", "affine_relu-course-relu_cache", "affine-fast",
        "affine_relu-fast", "affine_sigmoid-fast", "affine_tanh-fast", "affine_leaky_relu-fast"])
def test_shapes_are_checked_before_a_huge_broadcast_view_is_copied(call, name):
    """A 0-byte broadcast view of the wrong shape was converted (copied) before its shape
    was compared, a MemoryError (or, where memory is overcommitted, a process killed while
    it filled the copy) instead of a ValueError naming the argument."""
    with pytest.raises(ValueError, match=rf"^{name} must (have|be)"):
        call()


_HUGE_X = np.broadcast_to(1.0, (2**40, 3))   # (a copy: 24 TiB, a MemoryError)
_ELEMENTWISE = [F.relu_forward, F.sigmoid_forward, F.tanh_forward, F.leaky_relu_forward]
_RULE_STATES = [("sgd_momentum", "velocity"), ("nesterov_momentum", "velocity"),
                ("rmsprop", "cache"), ("adam", "m"), ("adam", "v")]


@pytest.mark.parametrize("call, exc, name", [
    (lambda: F.prelu_forward(_HUGE_X, np.ones(5)), ValueError, "alpha"),
    (lambda: F.prelu_forward(_HUGE_X, [1.0, 2.0]), ValueError, "alpha"),
    (lambda: F.prelu_forward(np.broadcast_to(np.float32(1.0), (2**40, 3)), np.ones(5)), ValueError,
     "alpha"),
    *[(lambda fw=fw: fw(_HUGE_X, out=np.empty(3)), ValueError, "out") for fw in _ELEMENTWISE],
    *[(lambda fw=fw: fw(_HUGE_X, out=[0.0, 0.0, 0.0]), TypeError, "out") for fw in _ELEMENTWISE],
    *[(lambda rule=rule: getattr(O, rule)(_HUGE, [1.0, 2.0]), ValueError, "dw") for rule in RULES],
    (lambda: O.adam(_HUGE, np.broadcast_to(np.complex64(1), (2**40,))), TypeError, "dw"),
    # the rule's state in config, of another shape (w and dw fine: both the huge view)
    *[(lambda rule=rule, key=key: getattr(O, rule)(_HUGE, _HUGE, {key: np.zeros(3)}), ValueError,
       rf"config\['{key}'\]") for rule, key in _RULE_STATES],
], ids=["prelu-alpha-array", "prelu-alpha-list", "prelu-float32-x",
        *[f"{fw.__name__}-out" for fw in _ELEMENTWISE],
        *[f"{fw.__name__}-out-list" for fw in _ELEMENTWISE],
        *[f"{rule}-list-dw" for rule in RULES], "adam-complex-dw",
        *[f"{rule}-state-{key}" for rule, key in _RULE_STATES]])
def test_a_huge_broadcast_view_is_checked_against_the_other_arguments_before_it_is_copied(
        call, exc, name):
    """The huge view itself had a fine shape, but another argument did not fit it (prelu's
    alpha, the element-wise forwards' out, an update rule's dw given as a list, or its state
    in config), or had a dtype no rule takes: the view was converted (copied) before that was
    compared, a MemoryError instead of the error naming that argument."""
    with pytest.raises(exc, match=rf"^{name} must (have|be)"):
        call()


@pytest.mark.parametrize("forward, backward", [
    (F.leaky_relu_forward, F.leaky_relu_backward),
    (lambda x: F.affine_leaky_relu_forward(x, np.eye(4), np.zeros(4)), F.affine_leaky_relu_backward),
])
def test_a_cache_slope_beyond_float_range_is_a_damaged_cache(forward, backward):
    """(math.isfinite of an int beyond float's range raised OverflowError.)"""
    out, cache = forward(-np.ones((2, 4)))
    cache.alpha = 10**400
    with pytest.raises(ValueError, match="cache is damaged"):
        backward(np.ones((2, 4)), cache)


@pytest.mark.parametrize("field, value", [
    ("chunks", 2**40), ("chunks", "a"), ("chunks", 5), ("chunks", -1), ("alpha", 10**400),
    ("alpha", None), ("alpha", "0.1"), ("x_shape", (4, -1, -6)), ("x_shape", (4, 6, 0.5)),
    ("x_shape", (4, 6.0))])
@pytest.mark.parametrize("name", ["affine", "affine_relu", "affine_tanh"])
def test_a_dense_cache_with_damaged_fields_is_named(name, field, value):
    """The fields a dense backward hands the kernels as C numbers (its cut of the products,
    the slope, which every activation's call takes) and the input shape dx is given: edited,
    they gave an OverflowError, a TypeError naming nothing, or NumPy's reshape error."""
    forward, backward = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")
    x = np.linspace(-1, 1, 24).reshape(4, 6)
    out, cache = forward(x, np.ones((6, 2)), np.ones(2))
    want = backward(np.ones((4, 2)), cache)
    setattr(cache, field, value)
    with pytest.raises(ValueError, match=f"cache is damaged or not from {name}_forward"):
        backward(np.ones((4, 2)), cache)
    out, cache = forward(x.reshape(4, 2, 3), np.ones((6, 2)), np.ones(2))
    got = backward(np.ones((4, 2)), cache)   # (a 3-D input's shape: dx comes back in it)
    assert got[0].shape == (4, 2, 3)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.reshape(b.shape), b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fw", [F.affine_forward, F.affine_relu_forward, F.affine_sigmoid_forward,
                                F.affine_tanh_forward, F.affine_leaky_relu_forward])
def test_the_fast_forward_compares_shapes_before_it_allocates(fw, dtype):
    """x (100000, 1) with a w of 2 rows (and 100000 outputs): the output the fast path made
    before the shapes were compared took 100000 x 100000 elements (a MemoryError, or where
    memory is overcommitted an allocation of 37-75 GiB that tracemalloc counts)."""
    import tracemalloc
    x = np.ones((100000, 1), dtype)
    for w, b, name in ((np.ones((2, 100000), dtype), np.ones(100000, dtype), "w"),
                       (np.ones((1, 100000), dtype), np.ones(99999, dtype), "b")):
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=rf"^{name} must have"):
                fw(x, w, b)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2**20, peak


@pytest.mark.parametrize("bad", [np.array(["a", "b", "c"]), np.array([None] * 3),
                                 np.ones(3, complex)], ids=["str", "object", "complex"])
def test_grad_check_sparse_refuses_an_analytic_grad_that_is_not_real(bad):
    x = np.ones(3)
    with pytest.raises(TypeError, match="^analytic_grad must hold real numbers"):
        G.grad_check_sparse(lambda a: float(np.sum(a ** 2)), x, bad, 2)
    masked = np.ma.masked_array([2.0, 2.0, 2.0], mask=[1, 1, 1])
    with pytest.raises(TypeError, match="^analytic_grad is a masked array"):
        G.grad_check_sparse(lambda a: float(np.sum(a ** 2)), x, masked, 2)
    np.testing.assert_array_equal(x, 1.0)
    # an int or bool gradient still works (real numbers)
    errs = G.grad_check_sparse(lambda a: float(np.sum(a ** 2)), x, np.full(3, 2), 2)
    assert max(errs) < 1e-8


@pytest.mark.parametrize("ret", [None, {}, "abc", 1j])
def test_eval_numerical_gradient_array_names_f_when_it_returns_no_real_numbers(ret):
    x = np.ones(3)
    with pytest.raises(TypeError, match="^f must return an array of real numbers or a number"):
        G.eval_numerical_gradient_array(lambda a: ret, x, np.ones(3))
    with pytest.raises(TypeError, match="^f must return an array of real numbers or a number"):
        G.eval_numerical_gradient_array(lambda a: ret, x, 1.0)
    np.testing.assert_array_equal(x, 1.0)


@pytest.mark.parametrize("name", ["affine", "affine_relu", "affine_sigmoid", "affine_tanh",
                                  "affine_leaky_relu", "affine_prelu", "maxout"])
def test_a_dense_cache_without_its_fields_is_refused(name):
    """A DenseCache made by __new__ (no __init__: none of its slots set) raised AttributeError."""
    _, cache = F.affine_forward(np.ones((4, 5)), np.ones((5, 3)), np.ones(3))
    empty = type(cache).__new__(type(cache))
    with pytest.raises((TypeError, ValueError), match="^cache"):
        getattr(F, name + "_backward")(np.ones((4, 3)), empty)
    with pytest.raises(TypeError, match="^cache's fc_cache"):
        F.affine_relu_backward(np.ones((4, 3)), (empty, np.ones((4, 3))))


def test_mse_loss_names_a_0d_x_before_comparing_shapes():
    with pytest.raises(ValueError, match=r"^x must have shape \(N,\)"):
        F.mse_loss(3.0, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^x must have shape \(N,\)"):
        F.mse_loss(np.float64(3.0), np.ones(2))
