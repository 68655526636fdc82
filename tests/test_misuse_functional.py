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
    for alpha in (np.array(0.5), np.full(3, 0.5)):
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
