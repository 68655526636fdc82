"""The layer API (fastnn.layers), loss objects (fastnn.losses) and optimizers
(fastnn.optimizers): gradients, modes, semantics, argument checking.

Tolerances, and why they are what they are:

- numerical gradients (float64 layers, central differences, h = 1e-5): truncation ~h**2 = 1e-10,
  rounding ~eps * |sum(f * dout)| / h ~ 1e-10 for these sizes; rtol 1e-6 / atol 1e-8 leave a wide
  margin while any wrong formula (or a parameter that is not read live) is off by O(1).
- loss objects call the same kernel as their functional twin: bitwise equality.
- optimizers (float64) against the NumPy reference formulas: the kernels do the same arithmetic,
  possibly contracted into FMAs, so a few ulp per step over 3 steps: rtol 1e-12 (~4500 eps).
"""
import numpy as np
import pytest

import fastnn
import fastnn.functional as F
from fastnn import (SGD, Adam, BinaryCrossEntropy, BinaryHinge, Dense, Dropout, GaussianNoise,
                    LeakyReLU, Maxout, MeanSquaredError, MulticlassHinge, PReLU, ReLU, RMSProp,
                    Sequential, Sigmoid, SoftmaxCrossEntropy, Tanh)
from fastnn.losses import get_loss
from fastnn.reference import activations as RA
from fastnn.reference import dense as RD
from fastnn.reference import losses as RL
from fastnn.reference import optim as RO

from conftest import assert_same_bits, assert_thread_invariant, numerical_gradient

F64 = np.float64
GRAD_TOL = dict(rtol=1e-6, atol=1e-8)


# ============================================================================ helpers
def check_layer_gradients(layer, x, forward=None, rng=None):
    """Analytic backward of ``layer`` at ``x`` against central differences, wrt the input and
    every entry of ``layer.params`` (perturbed in place: the layer must read them live)."""
    if forward is None:
        def forward(inp):
            return layer.forward(inp)
    rng = rng if rng is not None else np.random.default_rng(0)
    x = np.array(x, dtype=F64)
    out = forward(x)
    assert out.dtype == F64
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout.copy())
    assert dx.shape == x.shape and dx.dtype == F64
    grads = {k: np.array(v, copy=True) for k, v in layer.grads.items()}
    assert set(grads) == set(layer.params)

    num_dx = numerical_gradient(lambda xx: forward(xx), x, dout)
    np.testing.assert_allclose(dx, num_dx, **GRAD_TOL, err_msg="dx")
    for name, p in layer.params.items():
        num = numerical_gradient(lambda _: forward(x), p, dout)
        assert grads[name].shape == p.shape
        np.testing.assert_allclose(grads[name], num, **GRAD_TOL, err_msg=f"d{name}")
        # the check must be able to fail: a parameter with a zero gradient would pass trivially
        assert np.any(num != 0), f"{name} has a zero numerical gradient: not read live?"
    return dx, grads


# ============================================================================ gradients
DENSE_ACTIVATIONS = [None, "linear", "relu", "sigmoid", "tanh", "leaky_relu", "prelu"]


@pytest.mark.parametrize("activation", DENSE_ACTIVATIONS)
def test_dense_gradients(activation, rng):
    layer = Dense(6, 5, activation=activation, dtype=F64, seed=3,
                  alpha=0.2 if activation in ("leaky_relu",) else None)
    layer.params["b"][...] = rng.standard_normal(5) * 0.1
    if activation == "prelu":
        # learnable, one slope per unit: make them distinct so a mix-up of units shows
        layer.params["alpha"][...] = rng.uniform(-0.5, 0.5, 5)
        assert layer.params["alpha"].shape == (5,)
    x = rng.standard_normal((8, 6))
    check_layer_gradients(layer, x, rng=rng)


def test_dense_gradients_multidim_input(rng):
    """x of shape (N, d1, d2) is flattened row-wise; dx comes back in x's shape."""
    layer = Dense(6, 4, activation="tanh", dtype=F64, seed=1)
    x = rng.standard_normal((5, 2, 3))
    dx, _ = check_layer_gradients(layer, x, rng=rng)
    assert dx.shape == (5, 2, 3)
    np.testing.assert_array_equal(layer.forward(x), layer.forward(x.reshape(5, 6)))


@pytest.mark.parametrize("make", [ReLU, Sigmoid, Tanh, lambda dtype: LeakyReLU(0.1, dtype=dtype)],
                         ids=["relu", "sigmoid", "tanh", "leaky_relu"])
def test_activation_layer_gradients(make, rng):
    layer = make(dtype=F64)
    assert layer.params == {}
    x = rng.standard_normal((7, 4))
    check_layer_gradients(layer, x, rng=rng)


@pytest.mark.parametrize("num_parameters", [1, 4])
@pytest.mark.parametrize("shape", [(7, 4), (3, 2, 4)], ids=["2d", "3d"])
def test_prelu_gradients(num_parameters, shape, rng):
    layer = PReLU(num_parameters, dtype=F64)
    np.testing.assert_array_equal(layer.params["alpha"], np.full(num_parameters, 0.25))
    layer.params["alpha"][...] = rng.uniform(-0.5, 0.5, num_parameters)
    x = rng.standard_normal(shape)
    _, grads = check_layer_gradients(layer, x, rng=rng)
    assert grads["alpha"].shape == (num_parameters,)


def test_prelu_per_feature_rejects_other_width(rng):
    layer = PReLU(4, dtype=F64)
    with pytest.raises(ValueError, match="4"):
        layer.forward(rng.standard_normal((3, 5)))


def test_maxout_gradients(rng):
    layer = Maxout(5, 3, pieces=3, dtype=F64, seed=2)
    assert layer.params["W"].shape == (5, 3, 3)
    assert layer.params["b"].shape == (3, 3)
    layer.params["b"][...] = rng.standard_normal((3, 3)) * 0.1
    x = rng.standard_normal((6, 5))
    check_layer_gradients(layer, x, rng=rng)
    # the value is the max over pieces of the affine maps
    z = np.einsum("nd,dmp->nmp", x, layer.params["W"]) + layer.params["b"]
    np.testing.assert_allclose(layer.forward(x), z.max(axis=2), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, F64])
def test_maxout_backward_fills_its_gradients_in_place_and_can_skip_dx(dtype, rng):
    """As a first layer (need_dx=False) Maxout computes no input gradient; its weight and bias
    gradients are written into its own grads arrays, equal to the functional backward's."""
    layer = Maxout(5, 3, pieces=2, dtype=dtype, seed=2)
    x = rng.standard_normal((7, 5)).astype(dtype)
    dout = rng.standard_normal((7, 3)).astype(dtype)
    W_grad, b_grad = layer.grads["W"], layer.grads["b"]
    layer.forward(x)
    assert layer.backward(dout, need_dx=False) is None
    assert layer.grads["W"] is W_grad and layer.grads["b"] is b_grad
    _, cache = F.maxout_forward(x, layer.params["W"], layer.params["b"])
    dx, dw, db = F.maxout_backward(dout, cache)
    assert_same_bits(W_grad, dw)
    assert_same_bits(b_grad, db)
    layer.forward(x)
    assert_same_bits(layer.backward(dout), dx)


def test_dropout_gradients_fixed_seed_train_mode(rng):
    p = 0.3
    layer = Dropout(p, seed=11, dtype=F64)
    assert layer.training

    def forward(inp):
        layer.reseed(5)  # the same mask on every call, as a gradient check needs
        return layer.forward(inp)

    x = rng.standard_normal((20, 30))
    dx, _ = check_layer_gradients(layer, x, forward=forward, rng=rng)
    out = forward(x)
    dropped = out == 0
    # p is the probability of DROPPING (Keras/PyTorch); kept units are scaled by 1 / (1 - p)
    frac = dropped.mean()
    assert abs(frac - p) < 0.06, frac  # 600 Bernoulli(0.3): sd ~0.019
    np.testing.assert_allclose(out[~dropped], x[~dropped] / (1 - p), rtol=1e-15)
    # the backward mask is the forward mask
    np.testing.assert_array_equal(dx == 0, dropped)


def test_dropout_draws_a_new_mask_per_call(rng):
    layer = Dropout(0.5, seed=1, dtype=F64)
    x = rng.standard_normal((10, 10)) + 5
    a, b = layer.forward(x), layer.forward(x)
    assert not np.array_equal(a == 0, b == 0)


def test_gaussian_noise_gradients_and_value(rng):
    layer = GaussianNoise(0.5, seed=4, dtype=F64)

    def forward(inp):
        layer.reseed(9)
        return layer.forward(inp)

    x = rng.standard_normal((6, 5))
    dx, _ = check_layer_gradients(layer, x, forward=forward, rng=rng)
    noise = forward(x) - x
    assert np.std(noise) > 0.2 and np.std(noise) < 0.8
    np.testing.assert_allclose(noise, forward(np.zeros_like(x)), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, F64], ids=["f32", "f64"])
def test_gaussian_noise_layer_draws_a_kernel_seed_per_call(dtype, rng):
    """Each training call takes one seed from the layer's generator (as Dropout does) and the
    kernel's noise for it: the reference's x + std * z for that seed, a new one each call."""
    from fastnn.reference import dropout as RDO

    layer = GaussianNoise(0.4, seed=21, dtype=dtype)
    seeds = np.random.default_rng(21)
    x = rng.standard_normal((33, 17)).astype(dtype)
    outs = [layer.forward(x) for _ in range(2)]
    for out in outs:
        ref = RDO.gaussian_noise_forward(x, 0.4, int(seeds.integers(0, 2**63 - 1)))
        assert out.dtype == dtype
        np.testing.assert_allclose(out, ref, rtol=0, atol=8 * np.finfo(dtype).eps * np.abs(ref).max())
    assert not np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("layer", [Dropout(0.5, seed=1), GaussianNoise(1.0, seed=1)],
                         ids=["dropout", "noise"])
def test_regularizers_off_in_eval_mode(layer, rng):
    x = rng.standard_normal((8, 9)).astype(np.float32)
    assert layer.eval() is layer and not layer.training
    np.testing.assert_array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.backward(x), x)
    # a per-call override wins over the mode
    assert not np.array_equal(layer.forward(x, training=True), x)
    layer.train()
    assert layer.training
    assert not np.array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="before forward"):
        Dense(3, 2).backward(np.ones((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        Tanh().backward(np.ones((1, 2), np.float32))


def test_dense_rejects_wrong_width(rng):
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        Dense(3, 2).forward(rng.standard_normal((4, 5)))


def test_dense_parameters_and_defaults():
    d = Dense(3, 4, seed=0)
    assert d.dtype == np.float32 and d.params["W"].dtype == np.float32
    assert d.params["W"].shape == (3, 4) and d.params["b"].shape == (4,)
    np.testing.assert_array_equal(d.params["b"], 0)
    ps = d.parameters()
    assert [p.name for p in ps] == ["W", "b"]
    assert ps[0].data is d.params["W"] and ps[0].grad is d.grads["W"]
    assert [p.decay for p in ps] == [True, False]
    # seeded initialization is reproducible, and the seed matters
    np.testing.assert_array_equal(Dense(3, 4, seed=0).params["W"], d.params["W"])
    assert not np.array_equal(Dense(3, 4, seed=1).params["W"], d.params["W"])


@pytest.mark.parametrize("activation,scale", [("relu", 2.0 / 400), ("leaky_relu", 2.0 / 400),
                                              ("prelu", 2.0 / 400), ("tanh", 2.0 / 600),
                                              ("sigmoid", 2.0 / 600), (None, 2.0 / 600)])
def test_default_initialization(activation, scale):
    """He for the ReLU family (leaky and parametric ReLU too), Xavier/Glorot otherwise: the
    variance of W."""
    w = Dense(400, 200, activation=activation, seed=0, dtype=F64).params["W"]
    assert abs(w.var() / scale - 1) < 0.03  # 80000 samples: relative sd of the variance ~0.005


@pytest.mark.parametrize("block", [7, 1 << 20], ids=["blocks-of-7", "default-block"])
def test_initializers_give_the_numbers_of_one_draw(monkeypatch, block):
    """The initializers draw in blocks (scaled_draws); the weights, and the generator's state
    after them, are those of the one draw (rng.standard_normal(shape) * scale).astype(dtype)
    they replace, for a Generator and the legacy RandomState, in both dtypes; and the course
    models' weights are still weight_scale * np.random.randn(...) from the global state."""
    import fastnn.init as I
    from fastnn.models import FullyConnectedNet

    monkeypatch.setattr(I, "_DRAW_BLOCK", block)
    cases = [(I.he_normal, lambda s: np.sqrt(2.0 / max(1, s[0] if s else 1))),
             (I.xavier_normal, lambda s: np.sqrt(2.0 / max(1, (s[0] if s else 1) + int(np.prod(s[1:]))))),
             (I.scaled_normal(0.03), lambda s: 0.03)]
    for init, scale in cases:
        for make in (lambda: np.random.default_rng(4), lambda: np.random.RandomState(4)):
            for dt in (np.float32, np.float64):
                for shape in ((), (0, 5), (13,), (9, 8), (40, 3, 2)):
                    ours, theirs = make(), make()
                    w = init(shape, ours, dt)
                    want = (theirs.standard_normal(shape) * scale(shape)).astype(dt)
                    assert w.shape == want.shape and w.dtype == want.dtype
                    assert_same_bits(w, want)
                    assert ours.standard_normal() == theirs.standard_normal()   # same state after
    state = np.random.get_state()
    try:
        for dt in (np.float32, np.float64):
            np.random.seed(5)
            model = FullyConnectedNet([20, 9], input_dim=7, num_classes=4, weight_scale=0.05,
                                      dtype=dt)
            np.random.seed(5)
            for name, (a, b) in zip(("W1", "W2", "W3"), ((7, 20), (20, 9), (9, 4))):
                assert_same_bits(model.params[name], (0.05 * np.random.randn(a, b)).astype(dt))
    finally:
        np.random.set_state(state)


def test_an_initializer_holds_one_block_of_draws_beyond_the_weight():
    """The whole float64 draw was alive beside the float32 result: 3x the weight (48 MiB
    for this 2048 x 2048 one, 16 MiB). Now the weight and one block of draws (24 MiB)."""
    import tracemalloc

    import fastnn.init as I

    tracemalloc.start()
    try:
        for init in (I.he_normal, I.xavier_normal, I.scaled_normal(0.01)):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            w = init((2048, 2048), np.random.default_rng(0), np.float32)
            peak = tracemalloc.get_traced_memory()[1] - base
            assert peak <= w.nbytes + 8 * I._DRAW_BLOCK + (1 << 20), (init, peak, w.nbytes)
            del w
    finally:
        tracemalloc.stop()


def test_layer_defaults_are_the_documented_ones():
    """LeakyReLU's slope is the functional API's and the reference's default (0.01), Maxout
    has 2 pieces, GaussianNoise's std is 0.1: each layer built without them equals one built
    with them."""
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    assert LeakyReLU().alpha == 0.01
    np.testing.assert_array_equal(LeakyReLU(dtype=F64).forward(x), RA.leaky_relu_forward(x)[0])
    assert Maxout(3, 4, seed=0).params["W"].shape == (3, 4, 2)
    np.testing.assert_array_equal(Maxout(3, 4, seed=0).params["W"], Maxout(3, 4, pieces=2, seed=0).params["W"])
    assert GaussianNoise().std == 0.1
    z = np.zeros((4, 6), np.float32)
    np.testing.assert_array_equal(GaussianNoise(seed=3).forward(z, training=True),
                                  GaussianNoise(0.1, seed=3).forward(z, training=True))


@pytest.mark.parametrize("make", [lambda: Dense(3, 2, activation="prelu", alpha=0.1, dtype=F64),
                                  lambda: Dense(3, 2, activation="leaky_relu", alpha=0.2, dtype=F64),
                                  lambda: PReLU(2, init=0.5, dtype=F64),
                                  lambda: Maxout(3, 2, pieces=3, dtype=F64)],
                         ids=["dense-prelu", "dense-leaky", "prelu", "maxout"])
def test_get_config_rebuilds_the_layer(make):
    """type(layer)(**layer.get_config()) is the same layer (what load_model rebuilds from):
    its configuration, its parameters' shapes and a slope's initial values."""
    layer = make()
    twin = type(layer)(**layer.get_config())
    assert twin.get_config() == layer.get_config()
    for k in layer.params:
        assert twin.params[k].shape == layer.params[k].shape
    if "alpha" in layer.params:
        np.testing.assert_array_equal(twin.params["alpha"], layer.params["alpha"])


@pytest.mark.parametrize("make,ref", [(lambda: LeakyReLU(0.2, dtype=F64), lambda x: RA.leaky_relu_forward(x, 0.2)[0]),
                                      (lambda: PReLU(1, init=0.5, dtype=F64), lambda x: RA.prelu_forward(x, 0.5)[0])],
                         ids=["leaky_relu", "prelu"])
def test_a_standalone_activations_predict_uses_its_slope(make, ref):
    """Sequential(activation).predict, the inference path, uses the layer's own slope as its
    forward does (not the default one)."""
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    layer = make()
    np.testing.assert_array_equal(Sequential(layer).predict(x), ref(x))
    np.testing.assert_array_equal(layer.forward(x, training=False), ref(x))


def test_prelu_backward_writes_its_gradient_not_adds_it(rng):
    """As every layer's backward: the gradient of this backward, not a sum over calls."""
    layer = PReLU(3, dtype=F64)
    x = rng.standard_normal((5, 3))
    d = rng.standard_normal((5, 3))
    layer.forward(x)
    layer.backward(d)
    first = layer.grads["alpha"].copy()
    layer.forward(x)
    layer.backward(d)
    np.testing.assert_array_equal(layer.grads["alpha"], first)
    assert np.any(first != 0)


def test_maxout_backward_fills_a_gradient_array_of_another_dtype(rng):
    """A float64 grads['W'] put in place of a float32 Maxout's still receives the gradient."""
    layer = Maxout(3, 2, pieces=2, seed=0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    d = rng.standard_normal((4, 2)).astype(np.float32)
    layer.forward(x)
    layer.backward(d)
    want = layer.grads["W"].copy()
    layer.grads["W"] = np.zeros(layer.params["W"].shape, F64)
    layer.forward(x)
    layer.backward(d)
    np.testing.assert_allclose(layer.grads["W"], want, rtol=1e-6)
    assert np.any(want != 0)


def test_dense_prelu_defaults_are_a_prelu_layers():
    """Dense(activation='prelu') is Dense followed by PReLU(out_features) with PReLU's default
    slope (0.25, PyTorch's) and the ReLU family's He weights: the same W as Dense('relu') of
    that seed, and the same outputs as the slope applied by the reference."""
    x = np.random.default_rng(4).standard_normal((6, 5))
    fused = Dense(5, 3, activation="prelu", dtype=F64, seed=7)
    assert fused.alpha == PReLU().init == 0.25
    np.testing.assert_array_equal(fused.params["alpha"], np.full(3, PReLU().init))
    np.testing.assert_array_equal(fused.params["W"], Dense(5, 3, activation="relu", dtype=F64, seed=7).params["W"])
    z, _ = RD.affine_forward(x, fused.params["W"], fused.params["b"])
    np.testing.assert_allclose(fused.forward(x), RA.prelu_forward(z, 0.25)[0], rtol=1e-14, atol=1e-15)


def test_dense_thread_invariant(rng):
    """Fused forward and backward on a shape large enough for the threaded kernels."""
    x = rng.standard_normal((256, 300)).astype(np.float32)
    dout = rng.standard_normal((256, 520)).astype(np.float32)

    def run():
        layer = Dense(300, 520, activation="prelu", seed=1)
        out = layer.forward(x)
        dx = layer.backward(dout)
        return out, dx, [g.copy() for g in layer.grads.values()]

    assert_thread_invariant(run)


# ============================================================================ constructor checks
BAD_ARGS = [
    (lambda: Dense(0, 3), ValueError, "in_features"),
    (lambda: Dense(-2, 3), ValueError, "in_features"),
    (lambda: Dense(3, 0), ValueError, "out_features"),
    (lambda: Dense(3.0, 2), TypeError, "in_features"),
    (lambda: Dense(3, "2"), TypeError, "out_features"),
    (lambda: Dense(True, 2), TypeError, "in_features"),
    (lambda: Dense(3, 2, activation="relu6"), ValueError, "activation"),
    (lambda: Dense(3, 2, activation="ReLU"), ValueError, "activation"),
    (lambda: Dense(3, 2, dtype=np.int32), TypeError, "dtype"),
    (lambda: Dense(3, 2, dtype=np.float16), TypeError, "dtype"),
    (lambda: Dense(3, 2, dtype="float33"), TypeError, "dtype"),
    (lambda: Dense(3, 2, seed=1.5), TypeError, "seed"),
    (lambda: Dense(3, 2, seed="7"), TypeError, "seed"),
    (lambda: Dense(3, 2, seed=-1), ValueError, "seed"),
    (lambda: Dense(3, 2, weight_init="uniform-ish"), ValueError, "weight_init"),
    (lambda: Dense(3, 2, activation="leaky_relu", alpha="0.1"), TypeError, "alpha"),
    # a slope for an activation without one (it would be ignored: leaky_relu was meant)
    (lambda: Dense(3, 2, activation="relu", alpha=0.2), ValueError, "activation 'relu' has none"),
    (lambda: Dense(3, 2, alpha=0.01), ValueError, "activation None has none"),
    (lambda: Dense(3, 2, activation="linear", alpha=0.2), ValueError, "alpha"),
    (lambda: Dense(3, 2, activation="sigmoid", alpha=0.2), ValueError, "alpha"),
    (lambda: Dense(3, 2, activation="tanh", alpha=0.0), ValueError, "alpha"),
    (lambda: Maxout(0, 2), ValueError, "in_features"),
    (lambda: Maxout(2, 0), ValueError, "out_features"),
    (lambda: Maxout(2, 2, pieces=0), ValueError, "pieces"),
    (lambda: Maxout(2, 2, pieces=2.0), TypeError, "pieces"),
    (lambda: Maxout(2, 2, pieces=128), ValueError, "pieces"),
    (lambda: Maxout(2, 2, seed=0.5), TypeError, "seed"),
    (lambda: PReLU(0), ValueError, "num_parameters"),
    (lambda: PReLU(1.0), TypeError, "num_parameters"),
    (lambda: PReLU(init="a"), TypeError, "init"),
    (lambda: LeakyReLU("a"), TypeError, "alpha"),
    (lambda: LeakyReLU(float("nan")), ValueError, "alpha"),
    (lambda: ReLU(dtype=np.int64), TypeError, "dtype"),
    (lambda: Sigmoid(dtype="complex128"), TypeError, "dtype"),
    (lambda: Dropout(1.0), ValueError, "p"),
    (lambda: Dropout(1.5), ValueError, "p"),
    (lambda: Dropout(-0.1), ValueError, "p"),
    (lambda: Dropout(float("nan")), ValueError, "p"),
    (lambda: Dropout("0.5"), TypeError, "p"),
    (lambda: Dropout(0.5, seed=0.5), TypeError, "seed"),
    (lambda: Dropout(0.5, seed="x"), TypeError, "seed"),
    (lambda: Dropout(0.5, seed=-3), ValueError, "seed"),
    (lambda: GaussianNoise(-0.1), ValueError, "std"),
    (lambda: GaussianNoise("a"), TypeError, "std"),
    (lambda: GaussianNoise(0.1, seed=2.5), TypeError, "seed"),
]


@pytest.mark.parametrize("make,exc,name", BAD_ARGS, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD_ARGS)])
def test_constructor_validation(make, exc, name):
    with pytest.raises(exc) as info:
        make()
    assert name in str(info.value)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.999])
def test_dropout_accepts_valid_p(p):
    assert Dropout(p).p == p


# ============================================================================ losses
def _multiclass(rng, dtype):
    return rng.standard_normal((13, 5)).astype(dtype), rng.integers(0, 5, 13)


def _binary01(rng, dtype):
    return rng.standard_normal((13, 1)).astype(dtype), rng.integers(0, 2, 13)


def _binary_pm1(rng, dtype):
    return rng.standard_normal(13).astype(dtype), rng.choice([-1, 1], 13)


def _regression(rng, dtype):
    return rng.standard_normal((13, 2)).astype(dtype), rng.standard_normal((13, 2)).astype(dtype)


LOSSES = [
    (SoftmaxCrossEntropy, F.softmax_loss, RL.softmax_loss, _multiclass, ("softmax", "cross_entropy")),
    (MulticlassHinge, F.svm_loss, RL.svm_loss, _multiclass, ("svm", "hinge")),
    (BinaryCrossEntropy, F.logistic_loss, RL.logistic_loss, _binary01, ("logistic", "binary_cross_entropy")),
    (BinaryHinge, F.binary_svm_loss, RL.binary_svm_loss, _binary_pm1, ("binary_hinge",)),
    (MeanSquaredError, F.mse_loss, RL.mse_loss, _regression, ("mse",)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls,fn,ref,data,names", LOSSES, ids=[c[0].__name__ for c in LOSSES])
def test_loss_object_equals_functional(cls, fn, ref, data, names, dtype, rng):
    x, y = data(rng, dtype)
    loss, dx = cls()(x, y)
    floss, fdx = fn(x, y)
    assert loss == floss
    assert_same_bits(dx, fdx, what="dscores")
    assert dx.shape == x.shape and dx.dtype == x.dtype
    # and it is the right loss (not merely the same function twice): the NumPy reference
    rloss, rdx = ref(x.astype(F64), y)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, rloss, rtol=tol)
    np.testing.assert_allclose(dx, rdx, rtol=tol, atol=tol * np.abs(rdx).max())
    for name in names:   # (the class itself: BinaryHinge is a MulticlassHinge too)
        assert type(get_loss(name)) is cls, name
    assert type(get_loss(cls)) is cls


def test_get_loss_rejects_unknown():
    with pytest.raises(ValueError, match="loss"):
        get_loss("cross-entropy-ish")


def test_loss_predict_labels():
    s = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    np.testing.assert_array_equal(SoftmaxCrossEntropy().predict_labels(s), [1, 0])
    b = np.array([[0.5], [-0.2], [0.0]])
    np.testing.assert_array_equal(BinaryCrossEntropy().predict_labels(b), [1, 0, 0])
    np.testing.assert_array_equal(BinaryHinge().predict_labels(b.ravel()), [1, -1, -1])
    assert MeanSquaredError().predict_labels(b) is None


# ============================================================================ optimizers
def _opt_model():
    """float64 layers with weights, biases, a PReLU slope vector and a Maxout weight."""
    return Sequential(Dense(5, 4, dtype=F64, seed=1), PReLU(4, dtype=F64),
                      Maxout(4, 3, pieces=2, dtype=F64, seed=2), Dense(3, 2, activation="tanh", dtype=F64, seed=3))


OPTIMIZERS = [
    ("sgd", lambda ps, wd: SGD(ps, lr=0.1, weight_decay=wd), RO.sgd, {"learning_rate": 0.1}),
    ("momentum", lambda ps, wd: SGD(ps, lr=0.05, momentum=0.8, weight_decay=wd), RO.sgd_momentum,
     {"learning_rate": 0.05, "momentum": 0.8}),
    ("nesterov", lambda ps, wd: SGD(ps, lr=0.05, momentum=0.7, nesterov=True, weight_decay=wd),
     RO.nesterov_momentum, {"learning_rate": 0.05, "momentum": 0.7}),
    ("rmsprop", lambda ps, wd: RMSProp(ps, lr=0.01, decay_rate=0.9, eps=1e-6, weight_decay=wd), RO.rmsprop,
     {"learning_rate": 0.01, "decay_rate": 0.9, "epsilon": 1e-6}),
    ("adam", lambda ps, wd: Adam(ps, lr=0.02, betas=(0.8, 0.95), eps=1e-7, weight_decay=wd), RO.adam,
     {"learning_rate": 0.02, "beta1": 0.8, "beta2": 0.95, "epsilon": 1e-7}),
]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["nodecay", "decay"])
@pytest.mark.parametrize("name,make,rule,config", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_optimizer_matches_reference(name, make, rule, config, weight_decay, rng):
    model = _opt_model()
    params = model.parameters()
    assert [p.name for p in params] == ["W", "b", "alpha", "W", "b", "W", "b"]
    decays = [p.name == "W" for p in params]  # weight decay on weight matrices only
    assert [p.decay for p in params] == decays
    for p in params:
        p.data[...] = rng.standard_normal(p.shape)
    opt = make(params, weight_decay)
    expected = [p.data.copy() for p in params]
    configs = [dict(config) for _ in params]
    for step in range(3):
        for p in params:
            p.grad[...] = rng.standard_normal(p.shape)
        for i, p in enumerate(params):
            g = p.grad + weight_decay * expected[i] if decays[i] else p.grad.copy()
            expected[i], configs[i] = rule(expected[i], g, configs[i])
        opt.step()
        for i, p in enumerate(params):
            np.testing.assert_allclose(p.data, expected[i], rtol=1e-12, atol=1e-15,
                                       err_msg=f"{name} step {step + 1}, parameter {i} ({p.name})")


@pytest.mark.parametrize("name,make,rule,config", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_weight_decay_changes_weights_not_biases(name, make, rule, config, rng):
    """Same data and gradients, with and without weight decay: only W differs."""
    results = []
    for wd in (0.0, 0.3):
        model = _opt_model()
        params = model.parameters()
        r = np.random.default_rng(5)
        for p in params:
            p.data[...] = r.standard_normal(p.shape)
        opt = make(params, wd)
        for _ in range(2):
            for p in params:
                p.grad[...] = r.standard_normal(p.shape)
            opt.step()
        results.append([p.data.copy() for p in params])
    for p, a, b in zip(params, *results):
        if p.name == "W":
            assert not np.allclose(a, b), "weight decay had no effect on W"
        else:
            assert_same_bits(a, b, what=f"{p.name} must not be decayed")


def test_zero_grad_zeros_grads_in_place(rng):
    model = _opt_model()
    params = model.parameters()
    arrays = [p.grad for p in params]
    for g in arrays:
        g[...] = rng.standard_normal(g.shape)
    SGD(params, lr=0.1).zero_grad()
    for p, g in zip(params, arrays):
        assert p.grad is g
        np.testing.assert_array_equal(g, 0)


def test_optimizer_reads_live_grads(rng):
    """Gradients written by backward after the optimizer was built are the ones it uses."""
    model = Sequential(Dense(3, 2, dtype=F64, seed=0))
    opt = SGD(model.parameters(), lr=0.5)
    W0 = model.layers[0].params["W"].copy()
    x = rng.standard_normal((4, 3))
    model.forward(x)
    model.backward(np.ones((4, 2)))
    opt.step()
    np.testing.assert_allclose(model.layers[0].params["W"], W0 - 0.5 * x.sum(0)[:, None] * np.ones((1, 2)),
                               rtol=1e-14)


def test_adam_t_increments(rng):
    model = _opt_model()
    opt = Adam(model.parameters())
    assert opt.t == 0
    for k in range(1, 4):
        opt.step()
        assert opt.t == k


def test_optimizer_defaults():
    ps = _opt_model().parameters()
    sgd = SGD(ps)
    assert (sgd.lr, sgd.momentum, sgd.nesterov, sgd.weight_decay) == (0.01, 0.0, False, 0.0)
    rms = RMSProp(ps)
    assert (rms.lr, rms.decay_rate, rms.eps, rms.weight_decay) == (0.01, 0.99, 1e-8, 0.0)
    adam = Adam(ps)
    assert adam.lr == 1e-3 and adam.betas == (0.9, 0.999) and adam.eps == 1e-8


@pytest.mark.parametrize("name,make,rule", [
    ("sgd", lambda ps: SGD(ps), RO.sgd),
    ("momentum", lambda ps: SGD(ps, momentum=0.9), RO.sgd_momentum),   # (SGD's default is 0)
    ("rmsprop", lambda ps: RMSProp(ps), RO.rmsprop),
    ("adam", lambda ps: Adam(ps), RO.adam),
], ids=["sgd", "momentum", "rmsprop", "adam"])
def test_optimizer_defaults_step_like_the_course_rules(name, make, rule, rng):
    """An optimizer made with its defaults updates as the course's rule with the course's
    defaults (an empty config): the same learning rate, decay, betas and epsilon. Tiny
    gradients make epsilon count."""
    params = _opt_model().parameters()
    for p in params:
        p.data[...] = rng.standard_normal(p.shape)
    opt = make(params)
    expected = [p.data.copy() for p in params]
    configs = [{} for _ in params]
    for step, scale in enumerate((1.0, 1e-7, 1.0)):
        for p in params:
            p.grad[...] = scale * rng.standard_normal(p.shape)
        for i, p in enumerate(params):
            expected[i], configs[i] = rule(expected[i], p.grad.copy(), configs[i])
        opt.step()
        for i, p in enumerate(params):
            np.testing.assert_allclose(p.data, expected[i], rtol=1e-12, atol=1e-15,
                                       err_msg=f"{name} step {step + 1}, parameter {i} ({p.name})")


BAD_OPT = [
    (lambda ps: SGD(ps, lr=-1), ValueError, "lr"),
    (lambda ps: SGD(ps, lr=-0.1), ValueError, "lr"),
    (lambda ps: SGD(ps, lr="0.1"), TypeError, "lr"),
    (lambda ps: SGD(ps, lr=float("nan")), ValueError, "lr"),
    (lambda ps: SGD(ps, lr=float("inf")), ValueError, "lr"),
    (lambda ps: SGD(ps, momentum=-0.5), ValueError, "momentum"),
    (lambda ps: SGD(ps, momentum="0.9"), TypeError, "momentum"),
    (lambda ps: SGD(ps, nesterov=True), ValueError, "nesterov"),
    (lambda ps: SGD(ps, weight_decay=-1e-4), ValueError, "weight_decay"),
    (lambda ps: SGD(ps, weight_decay=None), TypeError, "weight_decay"),
    (lambda ps: RMSProp(ps, decay_rate=1.0), ValueError, "decay_rate"),
    (lambda ps: RMSProp(ps, decay_rate=-0.1), ValueError, "decay_rate"),
    (lambda ps: RMSProp(ps, eps=-1e-8), ValueError, "eps"),
    (lambda ps: RMSProp(ps, lr=-1e-9), ValueError, "lr"),
    (lambda ps: Adam(ps, betas=(0.9,)), ValueError, "betas"),
    (lambda ps: Adam(ps, betas=0.9), ValueError, "betas"),
    (lambda ps: Adam(ps, betas=(1.0, 0.999)), ValueError, "betas"),
    (lambda ps: Adam(ps, betas=(0.9, "x")), TypeError, "betas"),
    (lambda ps: Adam(ps, eps=-1.0), ValueError, "eps"),
    (lambda ps: Adam(ps, lr=-1e-3), ValueError, "lr"),
    (lambda ps: SGD([], lr=0.1), ValueError, "params"),
    (lambda ps: SGD([np.zeros(3)], lr=0.1), TypeError, "params"),
    (lambda ps: Adam(iter([]),), ValueError, "params"),
]


@pytest.mark.parametrize("make,exc,name", BAD_OPT, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD_OPT)])
def test_optimizer_validation(make, exc, name):
    ps = _opt_model().parameters()
    with pytest.raises(exc) as info:
        make(ps)
    assert name in str(info.value)


def test_optimizer_accepts_generator():
    model = _opt_model()
    opt = SGD(p for p in model.parameters())
    assert len(opt.params) == len(model.parameters())


def test_fastnn_exports_layer_api():
    for name in ["Dense", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "PReLU", "Maxout", "Dropout",
                 "GaussianNoise", "Sequential", "SGD", "RMSProp", "Adam", "SoftmaxCrossEntropy",
                 "MulticlassHinge", "BinaryCrossEntropy", "BinaryHinge", "MeanSquaredError", "load_model"]:
        assert hasattr(fastnn, name) and name in fastnn.__all__
