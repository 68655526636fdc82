"""fastnn.models: TwoLayerNet and FullyConnectedNet (the course's model duck type).

The oracle for losses and gradients is a plain-NumPy network written below, independent of the
kernels; numerical gradients come from fastnn.gradcheck on float64 models.
"""
import numpy as np
import pytest

from conftest import assert_same_bits, assert_thread_invariant, openmp_workers_started
from fastnn.functional import dropout_forward
from fastnn.gradcheck import eval_numerical_gradient, rel_error
from fastnn.models import FullyConnectedNet, TwoLayerNet
from fastnn.solver import Solver

GRAD_TOL = 1e-6  # float64 centered differences with h = 1e-5


@pytest.fixture(autouse=True)
def _global_numpy_state():
    """FullyConnectedNet draws its weights from np.random, as the course's does: each test starts
    from the same global state (order-independent), and leaves the state as it found it."""
    state = np.random.get_state()
    np.random.seed(20240607)
    yield
    np.random.set_state(state)


def _fc_net(*args, init_seed, **kwargs):
    """A FullyConnectedNet whose weights come from ``np.random.seed(init_seed)`` (its own
    ``seed`` argument is for dropout only); the global state is restored afterwards."""
    state = np.random.get_state()
    np.random.seed(init_seed)
    try:
        return FullyConnectedNet(*args, **kwargs)
    finally:
        np.random.set_state(state)


# ----------------------------------------------------------------------------- oracle
def numpy_net_loss(params, X, y, reg, num_layers, masks=None):
    """Plain-NumPy {affine - relu - [mask]} x (L-1) - affine - softmax + 0.5*reg*sum(W**2).

    ``masks[i]`` (optional) multiplies the output of hidden layer i + 1 (an inverted-dropout
    mask already divided by the keep probability). Returns (loss, grads) in float64."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    h = np.asarray(X, dtype=np.float64).reshape(X.shape[0], -1)
    acts, pre = [h], []
    for i in range(1, num_layers):
        z = h @ p[f"W{i}"] + p[f"b{i}"]
        pre.append(z)
        h = np.maximum(z, 0.0)
        if masks is not None:
            h = h * masks[i - 1]
        acts.append(h)
    scores = h @ p[f"W{num_layers}"] + p[f"b{num_layers}"]

    n = scores.shape[0]
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(n), y].mean()
    dscores = np.exp(log_probs)
    dscores[np.arange(n), y] -= 1.0
    dscores /= n

    grads = {}
    dh = dscores
    for i in range(num_layers, 0, -1):
        grads[f"W{i}"] = acts[i - 1].T @ dh + reg * p[f"W{i}"]
        grads[f"b{i}"] = dh.sum(axis=0)
        if i > 1:
            dh = dh @ p[f"W{i}"].T
            if masks is not None:
                dh = dh * masks[i - 2]
            dh = dh * (pre[i - 2] > 0)
    loss += 0.5 * reg * sum(np.sum(p[f"W{i}"] ** 2) for i in range(1, num_layers + 1))
    return loss, grads


def _problem(rng, n=4, input_shape=(3, 5), num_classes=7):
    X = rng.standard_normal((n,) + input_shape)
    y = rng.integers(0, num_classes, size=n)
    return X, y


def _randomize_biases(model, rng, scale=0.1):
    """Non-zero biases, so that a test would notice biases being regularized."""
    for k in model.params:
        if k.startswith("b"):
            model.params[k][...] = scale * rng.standard_normal(model.params[k].shape)


def _check_all_gradients(model, X, y, h=1e-5):
    """Every analytic gradient against centered differences (fastnn.gradcheck, float64).

    The course criterion is rel_error < 1e-6 elementwise. An entry whose true gradient is tiny
    (|g| ~ 1e-6 while the largest is ~0.1) cannot meet it with h = 1e-5 however correct the
    code is: each loss value carries a rounding error of a few ulp of |loss|, which the centered
    difference divides by 2h. So an entry also passes when it is within that rounding floor,
    8 * eps * max(|loss|, 1) / h (about 4e-10 here, far below any real gradient bug)."""
    loss, grads = model.loss(X, y)
    assert set(grads) == set(model.params)
    floor = 8 * np.finfo(np.float64).eps * max(abs(loss), 1.0) / h
    for name in sorted(model.params):
        assert grads[name].shape == model.params[name].shape
        assert grads[name].dtype == np.float64

        def f(_):
            return model.loss(X, y)[0]

        numeric = eval_numerical_gradient(f, model.params[name], verbose=False, h=h)
        analytic = grads[name]
        diff = np.abs(numeric - analytic)
        ok = (diff <= GRAD_TOL * (np.abs(numeric) + np.abs(analytic))) | (diff <= floor)
        assert ok.all(), (f"{name}: rel_error {rel_error(numeric, analytic):.3e}, "
                          f"{np.count_nonzero(~ok)} entries off, worst abs diff {diff.max():.3e}")
        assert np.abs(analytic).max() > 1e3 * floor  # the gradient is not all below the floor
    return loss


# ----------------------------------------------------------------------------- construction
def test_two_layer_params_keys_shapes_and_init():
    D, H, C = 200, 100, 10
    model = TwoLayerNet(input_dim=D, hidden_dim=H, num_classes=C, weight_scale=0.03, seed=0)
    assert set(model.params) == {"W1", "b1", "W2", "b2"}
    assert model.params["W1"].shape == (D, H)
    assert model.params["b1"].shape == (H,)
    assert model.params["W2"].shape == (H, C)
    assert model.params["b2"].shape == (C,)
    assert not model.params["b1"].any() and not model.params["b2"].any()
    # weight_scale * randn: 20000 draws, so the sample std is within a few percent of 0.03
    assert abs(model.params["W1"].std() / 0.03 - 1.0) < 0.05
    assert abs(model.params["W1"].mean()) < 0.03 * 0.05


def test_fully_connected_params_keys_and_shapes():
    model = FullyConnectedNet([5, 6, 7], input_dim=4, num_classes=3, weight_scale=0.5, seed=1)
    assert model.num_layers == 4
    dims = [4, 5, 6, 7, 3]
    assert set(model.params) == {f"{k}{i}" for k in "Wb" for i in range(1, 5)}
    for i in range(1, 5):
        assert model.params[f"W{i}"].shape == (dims[i - 1], dims[i])
        assert model.params[f"b{i}"].shape == (dims[i],)
        assert not model.params[f"b{i}"].any()
        assert model.params[f"W{i}"].any()
    assert model.bn_params == []   # (the course's class has it, empty without normalization)


@pytest.mark.parametrize("cls", ["two", "fc"])
def test_dtype_default_float32_and_float64_honored(cls, rng):
    def build(**kw):
        if cls == "two":
            return TwoLayerNet(input_dim=15, hidden_dim=8, num_classes=4, **kw)
        return FullyConnectedNet([8, 6], input_dim=15, num_classes=4, **kw)

    X, y = _problem(rng, n=5, input_shape=(15,), num_classes=4)
    # the defaults are the course's: TwoLayerNet (no dtype argument there) is float64,
    # FullyConnectedNet's dtype defaults to float32
    default = np.float64 if cls == "two" else np.float32
    for kw, dt in (({}, default), ({"dtype": np.float64}, np.float64), ({"dtype": "float32"}, np.float32),
                   ({"dtype": "float64"}, np.float64)):
        model = build(seed=3, **kw)
        for name, arr in model.params.items():
            assert arr.dtype == dt, name
        # a float64 X does not promote a float32 model, and int X is accepted
        assert model.loss(X).dtype == dt
        assert model.loss(X.astype(np.int64)).dtype == dt
        loss, grads = model.loss(X, y)
        assert np.isfinite(loss)
        for name, g in grads.items():
            assert g.dtype == dt, name
    with pytest.raises(TypeError, match="dtype"):
        build(dtype=np.int32)


def test_two_layer_seed_is_a_private_generator():
    """TwoLayerNet's seed (a fastnn extension: the course's class has none) draws from a
    private generator: the same seed gives the same weights, another seed others, and the
    global state is not touched."""
    np.random.seed(5)
    expected_next = np.random.rand()
    np.random.seed(5)
    t1 = TwoLayerNet(6, 5, 3, seed=7)
    assert np.random.rand() == expected_next
    t2 = TwoLayerNet(6, 5, 3, seed=7)
    for k in t1.params:
        assert_same_bits(t1.params[k], t2.params[k], what=k)
    assert not np.array_equal(t1.params["W1"], TwoLayerNet(6, 5, 3, seed=8).params["W1"])
    # float32 and float64 models with one seed start from the same (rounded) draws
    t32 = TwoLayerNet(6, 5, 3, seed=7, dtype=np.float32)
    assert_same_bits(t1.params["W1"].astype(np.float32), t32.params["W1"])


def _course_weights(dims, weight_scale, dtype):
    """The course's initialization, written out: ``weight_scale * np.random.randn`` per layer
    from the global state (W1 first), zero biases, then every array cast to ``dtype``."""
    params = {}
    for i in range(len(dims) - 1):
        params[f"W{i + 1}"] = weight_scale * np.random.randn(dims[i], dims[i + 1])
        params[f"b{i + 1}"] = np.zeros(dims[i + 1])
    return {k: v.astype(dtype) for k, v in params.items()}


def test_two_layer_default_is_the_course_float64_init():
    """TwoLayerNet() after np.random.seed(0) has the course's float64 weights, bit for bit, and
    leaves np.random where the course's constructor does."""
    np.random.seed(0)
    expected = _course_weights([5, 50, 7], 1e-1, np.float64)
    expected_next = np.random.rand()
    np.random.seed(0)
    model = TwoLayerNet(input_dim=5, hidden_dim=50, num_classes=7, weight_scale=1e-1)
    assert np.random.rand() == expected_next
    assert set(model.params) == set(expected)
    for k in expected:
        assert_same_bits(model.params[k], expected[k], what=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("seed", [None, 123, 124])
def test_fully_connected_weights_come_from_np_random_whatever_the_seed(seed, dtype):
    """As in the course: the weights are drawn from np.random even when seed is given (seed
    only goes into dropout_param['seed']), so np.random.seed(231) then
    FullyConnectedNet(..., seed=123) gives the course's weights and leaves the same state."""
    np.random.seed(231)
    expected = _course_weights([15, 20, 30, 10], 5e-2, dtype)
    expected_next = np.random.rand()
    for keep in (1, 0.5):
        np.random.seed(231)
        model = FullyConnectedNet([20, 30], input_dim=15, num_classes=10, weight_scale=5e-2,
                                  dtype=dtype, seed=seed, dropout_keep_ratio=keep)
        assert np.random.rand() == expected_next
        for k in expected:
            assert_same_bits(model.params[k], expected[k], what=k)
        if keep == 1:
            assert model.dropout_param == {}
        elif seed is None:
            assert model.dropout_param == {"mode": "train", "p": 0.5}
        else:
            assert model.dropout_param == {"mode": "train", "p": 0.5, "seed": seed}


def test_seed_none_follows_global_numpy_state():
    np.random.seed(123)
    a = TwoLayerNet(6, 5, 3)
    np.random.seed(123)
    b = TwoLayerNet(6, 5, 3)
    np.random.seed(124)
    c = TwoLayerNet(6, 5, 3)
    assert_same_bits(a.params["W1"], b.params["W1"])
    assert not np.array_equal(a.params["W1"], c.params["W1"])


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
def test_normalization_not_implemented(norm):
    with pytest.raises(NotImplementedError, match="normalization"):
        FullyConnectedNet([4], input_dim=3, num_classes=2, normalization=norm)


@pytest.mark.parametrize("norm", [False, 1, float("nan"), "batch", ["batchnorm"]], ids=repr)
def test_normalization_that_is_no_option_of_the_courses_is_a_valueerror(norm):
    """(Every value but None raised NotImplementedError, also ones that name no option.)"""
    with pytest.raises(ValueError, match="^normalization must be None"):
        FullyConnectedNet([4], input_dim=3, num_classes=2, normalization=norm)


def test_a_0d_first_weight_is_named_not_an_indexerror():
    """(params['W1'] replaced by a 0-d array: IndexError from the input check.)"""
    for model in (TwoLayerNet(6, 5, 3, seed=0), FullyConnectedNet([5], input_dim=6, num_classes=3)):
        model.params["W1"] = np.array(1.0)
        with pytest.raises(ValueError, match=r"^params\['W1'\] must be 2-D"):
            model.loss(np.ones((2, 6)))


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        ({"hidden_dims": [4, 0]}, ValueError, "hidden_dims"),
        ({"hidden_dims": [4, 2.5]}, TypeError, "hidden_dims"),
        ({"hidden_dims": 4}, TypeError, "hidden_dims"),
        ({"dropout_keep_ratio": 0.0}, ValueError, "dropout_keep_ratio"),
        ({"dropout_keep_ratio": 1.5}, ValueError, "dropout_keep_ratio"),
        ({"reg": -1.0}, ValueError, "reg"),
        ({"input_dim": 0}, ValueError, "input_dim"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**64}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_fully_connected_argument_validation(kwargs, exc, word):
    args = {"hidden_dims": [4], "input_dim": 3, "num_classes": 2}
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        FullyConnectedNet(**args)


@pytest.mark.parametrize("make", [lambda: TwoLayerNet(4, 3, 2),
                                  lambda: FullyConnectedNet([3], input_dim=4, num_classes=2,
                                                            dropout_keep_ratio=0.5, seed=0)],
                         ids=["two", "fc"])
def test_a_batch_without_rows_or_with_other_labels_is_named_as_the_models_arguments(make):
    """The model's arguments are X and y; the loss inside named the scores x ('y must have 3
    labels (one per row of x)')."""
    model = make()
    with pytest.raises(ValueError, match=r"^X must hold at least one row"):
        model.loss(np.zeros((0, 4)), np.zeros(0, int))
    assert model.loss(np.zeros((0, 4))).shape == (0, 2)   # (scores of no rows, as before)
    for y in (np.zeros(2, int), [0, 1]):
        with pytest.raises(ValueError, match=r"^y must have 3 labels \(one per row of X\), got 2$"):
            model.loss(np.zeros((3, 4)), y)
    with pytest.raises(ValueError, match=r"^y must be 1-D"):   # (softmax_loss's own checks)
        model.loss(np.zeros((3, 4)), np.zeros((3, 2), int))
    with pytest.raises(TypeError, match=r"^y must hold integer class labels"):   # (first)
        model.loss(np.zeros((3, 4)), np.zeros(2))


def test_two_layer_argument_validation():
    with pytest.raises(ValueError, match="hidden_dim"):
        TwoLayerNet(3, 0, 2)
    with pytest.raises(TypeError, match="num_classes"):
        TwoLayerNet(3, 4, 2.0)
    with pytest.raises(ValueError, match="weight_scale"):
        TwoLayerNet(3, 4, 2, weight_scale=-1.0)


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_shape_dtype_and_multidim_input(dtype, rng):
    X = rng.standard_normal((6, 2, 3, 4))  # D = 24, flattened row-wise like affine_forward
    for model in (TwoLayerNet(24, 9, 5, dtype=dtype, seed=0),
                  FullyConnectedNet([9, 8], input_dim=24, num_classes=5, dtype=dtype, seed=0)):
        scores = model.loss(X)
        assert scores.shape == (6, 5)
        assert scores.dtype == dtype
        flat = model.loss(X.reshape(6, 24))
        assert_same_bits(scores, flat)


def test_loss_does_not_modify_inputs(rng):
    model = FullyConnectedNet([6], input_dim=5, num_classes=3, dtype=np.float64, seed=0,
                              dropout_keep_ratio=0.5, reg=0.1)
    X, y = _problem(rng, n=4, input_shape=(5,), num_classes=3)
    X0, y0 = X.copy(), y.copy()
    before = {k: v.copy() for k, v in model.params.items()}
    model.loss(X, y)
    model.loss(X)
    assert_same_bits(X, X0)
    assert_same_bits(y, y0)
    for k in before:
        assert_same_bits(model.params[k], before[k], what=k)


@pytest.mark.parametrize("num_classes", [2, 10, 37])
def test_initial_loss_is_log_num_classes(num_classes, rng):
    # With tiny weights and zero biases every score is ~0, the softmax is uniform, and the
    # cross-entropy of the true class is -log(1 / C) = log(C).
    X = rng.standard_normal((50, 30))
    y = rng.integers(0, num_classes, size=50)
    for model in (TwoLayerNet(30, 20, num_classes, weight_scale=1e-6, seed=1),
                  FullyConnectedNet([20, 20], input_dim=30, num_classes=num_classes,
                                    weight_scale=1e-6, seed=1)):
        loss, _ = model.loss(X, y)
        assert loss == pytest.approx(np.log(num_classes), rel=1e-5)


def test_params_read_live(rng):
    model = TwoLayerNet(5, 4, 3, dtype=np.float64, weight_scale=0.5, seed=0)
    X, _ = _problem(rng, n=3, input_shape=(5,), num_classes=3)
    s0 = model.loss(X)
    model.params["b2"][1] += 2.0  # in place, as a gradient check does
    s1 = model.loss(X)
    np.testing.assert_allclose(s1 - s0, np.tile([0.0, 2.0, 0.0], (3, 1)), atol=1e-12)
    model.params["W2"] = np.zeros_like(model.params["W2"])  # swapped, as a solver does
    np.testing.assert_array_equal(model.loss(X), np.tile(model.params["b2"], (3, 1)))


# ----------------------------------------------------------------------------- against NumPy
@pytest.mark.parametrize("reg", [0.0, 0.37])
def test_two_layer_matches_numpy_reference_float64(reg, rng):
    model = TwoLayerNet(15, 12, 6, weight_scale=0.3, reg=reg, dtype=np.float64, seed=5)
    _randomize_biases(model, rng)
    X, y = _problem(rng, n=9, input_shape=(3, 5), num_classes=6)
    loss, grads = model.loss(X, y)
    ref_loss, ref_grads = numpy_net_loss(model.params, X, y, reg, 2)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for k in model.params:
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_two_layer_matches_numpy_reference_float32(rng):
    model = TwoLayerNet(15, 12, 6, weight_scale=0.3, reg=0.2, seed=5)
    _randomize_biases(model, rng)
    X, y = _problem(rng, n=9, input_shape=(15,), num_classes=6)
    loss, grads = model.loss(X, y)
    # the oracle gets the same float32 inputs, computed in float64
    ref_loss, ref_grads = numpy_net_loss(model.params, X.astype(np.float32), y, 0.2, 2)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for k in model.params:
        scale = np.abs(ref_grads[k]).max()
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-4, atol=1e-5 * scale, err_msg=k)


def test_fully_connected_matches_numpy_reference(rng):
    model = FullyConnectedNet([10, 8, 7], input_dim=12, num_classes=5, reg=0.25,
                              weight_scale=0.4, dtype=np.float64, seed=2)
    _randomize_biases(model, rng)
    X, y = _problem(rng, n=6, input_shape=(12,), num_classes=5)
    loss, grads = model.loss(X, y)
    ref_loss, ref_grads = numpy_net_loss(model.params, X, y, 0.25, 4)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for k in model.params:
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-10, atol=1e-13, err_msg=k)
    scores = model.loss(X)
    h = X
    for i in range(1, 4):
        h = np.maximum(h @ model.params[f"W{i}"] + model.params[f"b{i}"], 0)
    np.testing.assert_allclose(scores, h @ model.params["W4"] + model.params["b4"], rtol=1e-12, atol=1e-14)


def test_fully_connected_dropout_matches_numpy_reference_with_mask(rng):
    keep, seed = 0.6, 11
    model = FullyConnectedNet([9, 8], input_dim=7, num_classes=4, dropout_keep_ratio=keep,
                              reg=0.1, weight_scale=0.5, dtype=np.float64, seed=seed)
    _randomize_biases(model, rng)
    X, y = _problem(rng, n=5, input_shape=(7,), num_classes=4)
    # The model passes dropout_param {'p': keep, 'seed': seed} to each hidden layer, so the
    # mask of a layer is what dropout_forward does to ones of that layer's shape.
    masks = [dropout_forward(np.ones((5, h)), {"p": keep, "mode": "train", "seed": seed})[0]
             for h in (9, 8)]
    assert (masks[0] == 0).any() and (masks[0] != 0).any()
    loss, grads = model.loss(X, y)
    ref_loss, ref_grads = numpy_net_loss(model.params, X, y, 0.1, 3, masks=masks)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for k in model.params:
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_dropout_is_identity_at_test_time_and_active_in_training(rng):
    drop = _fc_net([16, 16], input_dim=6, num_classes=3, dropout_keep_ratio=0.5,
                   weight_scale=0.5, dtype=np.float64, seed=4, init_seed=4)
    plain = _fc_net([16, 16], input_dim=6, num_classes=3, weight_scale=0.5,
                    dtype=np.float64, seed=4, init_seed=4)
    X, y = _problem(rng, n=8, input_shape=(6,), num_classes=3)
    for k in plain.params:
        assert_same_bits(drop.params[k], plain.params[k], what=k)
    assert_same_bits(drop.loss(X), plain.loss(X))
    assert drop.loss(X, y)[0] != plain.loss(X, y)[0]
    assert drop.dropout_param["mode"] == "train"
    drop.loss(X)
    assert drop.dropout_param["mode"] == "test"
    # with a seed the training mask is the same on every call (gradient checks need that)
    assert drop.loss(X, y)[0] == drop.loss(X, y)[0]


def test_unseeded_dropout_follows_global_numpy_state(rng):
    model = FullyConnectedNet([16], input_dim=6, num_classes=3, dropout_keep_ratio=0.5,
                              weight_scale=0.5, dtype=np.float64, seed=None)
    assert "seed" not in model.dropout_param
    X, y = _problem(rng, n=8, input_shape=(6,), num_classes=3)
    np.random.seed(9)
    a = model.loss(X, y)[0]
    b = model.loss(X, y)[0]
    np.random.seed(9)
    assert model.loss(X, y)[0] == a
    assert a != b  # a fresh mask per call


@pytest.mark.parametrize("cls", ["two", "fc"])
def test_regularization_adds_exactly_half_reg_sum_w_squared(cls, rng):
    reg = 0.83
    if cls == "two":
        model = TwoLayerNet(10, 7, 4, weight_scale=0.4, dtype=np.float64, seed=0)
    else:
        model = FullyConnectedNet([7, 6], input_dim=10, num_classes=4, weight_scale=0.4,
                                  dtype=np.float64, seed=0)
    _randomize_biases(model, rng, scale=1.0)
    X, y = _problem(rng, n=5, input_shape=(10,), num_classes=4)
    model.reg = 0.0
    loss0, grads0 = model.loss(X, y)
    model.reg = reg
    loss1, grads1 = model.loss(X, y)
    weights = [k for k in model.params if k.startswith("W")]
    expected = 0.5 * reg * sum(np.sum(model.params[k] ** 2) for k in weights)
    assert loss1 - loss0 == pytest.approx(expected, rel=1e-12)
    for k in model.params:
        if k.startswith("W"):
            np.testing.assert_allclose(grads1[k] - grads0[k], reg * model.params[k], rtol=1e-12, atol=1e-15)
        else:  # biases are not regularized: their gradients do not change at all
            assert_same_bits(grads1[k], grads0[k], what=k)


def test_two_layer_and_fully_connected_agree(rng):
    two = TwoLayerNet(8, 6, 3, weight_scale=0.5, reg=0.3, dtype=np.float64, seed=1)
    fc = FullyConnectedNet([6], input_dim=8, num_classes=3, reg=0.3, dtype=np.float64, seed=2)
    fc.params = {k: v.copy() for k, v in two.params.items()}
    X, y = _problem(rng, n=5, input_shape=(8,), num_classes=3)
    l1, g1 = two.loss(X, y)
    l2, g2 = fc.loss(X, y)
    assert l1 == l2
    for k in g1:
        assert_same_bits(g1[k], g2[k], what=k)


# big enough that products and element-wise passes use every thread (see the next test)
THREADED_NET = dict(hidden_dims=[300, 200], input_dim=192, num_classes=10)


def test_loss_and_gradients_thread_invariant(rng):
    model = FullyConnectedNet(**THREADED_NET, reg=0.1, weight_scale=0.1, dropout_keep_ratio=0.7, seed=3)
    X, y = _problem(rng, n=200, input_shape=(192,), num_classes=10)

    def run():
        loss, grads = model.loss(X, y)
        return [np.float64(loss)] + [grads[k] for k in sorted(grads)]

    assert_thread_invariant(run)


def test_loss_and_gradients_thread_invariant_runs_parallel():
    setup = ("from fastnn.models import FullyConnectedNet\n"
             f"m = FullyConnectedNet(**{THREADED_NET!r}, dropout_keep_ratio=0.7, seed=3)\n"
             "r = np.random.default_rng(0)\n"
             "X = r.standard_normal((200, 192)); y = r.integers(0, 10, 200)")
    started = openmp_workers_started(setup, "m.loss(X, y)", threads=3)
    if started is None:
        pytest.skip("OpenMP worker threads cannot be observed here")
    assert started == 2


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("reg", [0.0, 0.7])
def test_two_layer_numerical_gradients(reg, rng):
    model = TwoLayerNet(12, 10, 5, weight_scale=0.2, reg=reg, dtype=np.float64, seed=0)
    _randomize_biases(model, rng)
    X, y = _problem(rng, n=3, input_shape=(3, 4), num_classes=5)
    _check_all_gradients(model, X, y)


@pytest.mark.parametrize("hidden_dims", [[20], [20, 30]], ids=["1hidden", "2hidden"])
@pytest.mark.parametrize("keep", [1.0, 0.5], ids=["nodrop", "dropout"])
@pytest.mark.parametrize("reg", [0.0, 3.14])
def test_fully_connected_numerical_gradients(hidden_dims, keep, reg, rng):
    model = FullyConnectedNet(hidden_dims, input_dim=15, num_classes=10, dropout_keep_ratio=keep,
                              reg=reg, weight_scale=5e-2, dtype=np.float64, seed=123)
    _randomize_biases(model, rng, scale=0.05)
    X, y = _problem(rng, n=2, input_shape=(15,), num_classes=10)
    _check_all_gradients(model, X, y)


# ----------------------------------------------------------------------------- training
def test_small_net_overfits_fifty_samples_with_solver():
    # 50 random points in 10-D with random labels: nothing to generalize, only to memorize, and
    # a 10-50-50-5 net has ample capacity for it.
    rng = np.random.default_rng(100)
    X = rng.standard_normal((150, 10))
    y = rng.integers(0, 5, size=150)
    data = {"X_train": X[:50], "y_train": y[:50], "X_val": X[50:], "y_val": y[50:]}
    model = FullyConnectedNet([50, 50], input_dim=10, num_classes=5, weight_scale=0.1, seed=0)
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-2},
                    batch_size=25, num_epochs=100, verbose=False, seed=0)
    solver.train()
    assert len(solver.loss_history) == 200
    assert solver.train_acc_history[0] < 0.9
    assert solver.train_acc_history[-1] == 1.0
    assert np.mean(solver.loss_history[-10:]) < 0.01 * solver.loss_history[0]


def test_two_layer_net_default_weight_scale_is_the_courses():
    """TwoLayerNet() draws its weights as weight_scale * randn with the course's default
    weight_scale = 1e-3 (the same weights as asking for 1e-3)."""
    default = TwoLayerNet(input_dim=50, hidden_dim=40, num_classes=10, seed=0)
    given = TwoLayerNet(input_dim=50, hidden_dim=40, num_classes=10, weight_scale=1e-3, seed=0)
    for k in ("W1", "W2"):
        assert_same_bits(default.params[k], given.params[k])
    assert abs(default.params["W1"].std() / 1e-3 - 1) < 0.05   # 2000 draws


@pytest.mark.parametrize("make", [lambda: TwoLayerNet(input_dim=6, hidden_dim=5, num_classes=3, seed=0),
                                  lambda: FullyConnectedNet([5], input_dim=6, num_classes=3, seed=0)],
                         ids=["two-layer", "fully-connected"])
def test_course_models_take_a_bool_input_as_numbers(make):
    """A bool X is an array of 0/1 numbers, as NumPy's products take it."""
    model = make()
    X = np.random.default_rng(0).random((4, 6)) > 0.5
    assert_same_bits(model.loss(X), model.loss(X.astype(np.float64)))
