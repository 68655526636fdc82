"""Course code mixed with fastnn: a course backward function (written here in plain NumPy, as
the course's layers.py / layer_utils.py have them) fed the cache of fastnn's forward gives the
numbers of fastnn's own backward. Students keep their own layers.py for the parts fastnn does
not have and import some functions from fastnn, so forwards and backwards from the two meet."""
import numpy as np
import pytest

import fastnn.functional as F


# ----------------------------------------------------------------------------- the course's code
def course_affine_backward(dout, cache):
    x, w, b = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    db = np.sum(dout, axis=0)
    return dx, dw, db


def course_relu_backward(dout, cache):
    dx, x = None, cache
    dx = dout * (x > 0)
    return dx


def course_relu_backward_masked(dout, cache):
    x = cache
    dx = dout.copy()
    dx[x <= 0] = 0
    return dx


def course_relu_backward_where(dout, cache):
    return np.where(np.asarray(cache) > 0, dout, 0)


def course_relu_backward_lt(dout, cache):
    x = cache
    dx = dout.copy()
    dx[x < 0] = 0      # (keeps dout where x == 0: another subgradient)
    return dx


def course_relu_backward_ge(dout, cache):
    return dout * (cache >= 0)


def course_relu_backward_where_lt(dout, cache):
    return np.where(cache < 0, 0, dout)


def course_affine_relu_backward(dout, cache):
    fc_cache, relu_cache = cache
    da = course_relu_backward(dout, relu_cache)
    return course_affine_backward(da, fc_cache)


# ----------------------------------------------------------------------------- tests
def _affine_problem(seed, dtype, xshape, m=6):
    """x (xshape), w, b, dout of an affine layer with m outputs, and the tolerance for dtype."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal((int(np.prod(xshape[1:])), m)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    dout = rng.standard_normal((xshape[0], m)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    return x, w, b, dout, tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xshape", [(5, 12), (4, 3, 2, 2), (1, 7)], ids=str)
def test_course_affine_backward_takes_fastnn_caches(dtype, xshape):
    x, w, b, dout, tol = _affine_problem(0, dtype, xshape)

    _, cache = F.affine_forward(x, w, b)
    ours = F.affine_backward(dout, cache)
    theirs = course_affine_backward(dout, cache)
    assert theirs[0].shape == xshape
    for a, c in zip(ours, theirs):
        np.testing.assert_allclose(c, a, **tol)

    # the fused sandwich: (fc_cache, relu_cache), relu_cache's > 0 is the course's a > 0
    x[0].reshape(-1)[:3] = 0   # (exact zeros of the pre-activation are rare; the mask is tested below)
    _, cache = F.affine_relu_forward(x, w, b)
    ours = F.affine_relu_backward(dout, cache)
    theirs = course_affine_relu_backward(dout, cache)
    for a, c in zip(ours, theirs):
        np.testing.assert_allclose(c, a, **tol)


ALL_RELU_BACKWARDS = [course_relu_backward, course_relu_backward_masked, course_relu_backward_where,
                      course_relu_backward_lt, course_relu_backward_ge, course_relu_backward_where_lt]


@pytest.mark.parametrize("course_bwd", ALL_RELU_BACKWARDS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_course_relu_backward_takes_fastnn_relu_cache(course_bwd, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 9)).astype(dtype)
    x[0, :4] = [0.0, -0.0, np.nan, np.inf]   # (exact zeros: where > / >= and < / <= differ)
    dout = rng.standard_normal(x.shape).astype(dtype)
    _, cache = F.relu_forward(x)
    got = course_bwd(dout, cache)
    want = course_bwd(dout, x)     # the course's own cache: the input
    np.testing.assert_array_equal(got, want)
    # (the masked variant keeps dout where x is NaN; fastnn's is the dout * (x > 0) one)
    np.testing.assert_array_equal(F.relu_backward(dout, cache), course_relu_backward(dout, x))


def test_other_caches_say_they_are_fastnn_own():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((4, 5))
    b = np.zeros(5)
    for fwd in (F.affine_sigmoid_forward, F.affine_tanh_forward, F.affine_leaky_relu_forward):
        _, cache = fwd(x, w, b)
        with pytest.raises(TypeError, match="fastnn's own"):
            course_affine_relu_backward(np.ones((3, 5)), cache)
    _, cache = F.maxout_forward(x, rng.standard_normal((4, 5, 2)), np.zeros((5, 2)))
    with pytest.raises(TypeError, match="fastnn's own"):
        course_affine_backward(np.ones((3, 5)), cache)
    _, cache = F.sigmoid_forward(x)
    with pytest.raises(TypeError):
        course_relu_backward(np.ones((3, 4)), cache)
    with pytest.raises(TypeError, match="fastnn's own"):
        np.asarray(cache)


@pytest.mark.parametrize("course_bwd", ALL_RELU_BACKWARDS, ids=lambda f: f.__name__)
def test_fused_relu_cache_is_the_courses_pre_activation(course_bwd):
    """affine_relu_forward's fused kernel keeps the ReLU's output, not the pre-activation a:
    unpacked by course code, its relu_cache is a computed with NumPy as the course computes it,
    so every formulation of the course's relu_backward gives the course's numbers, also where
    a is exactly 0 (where > / >= and < / <= differ, which the output alone cannot show)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5))
    x[0] = 0.0   # a row of zeros: its pre-activation is exactly b = 0
    w = rng.standard_normal((5, 4))
    b = np.zeros(4)
    a = x.reshape(x.shape[0], -1).dot(w) + b   # the course's affine_forward
    dout = rng.standard_normal((6, 4))
    _, cache = F.affine_relu_forward(x, w, b)
    _, relu_cache = cache
    assert isinstance(relu_cache, np.ndarray)
    np.testing.assert_array_equal(course_bwd(dout, relu_cache), course_bwd(dout, a))


def test_relu_layer_keeps_its_output_not_its_input():
    """relu_forward's cache is x (the course's); the ReLU layer keeps the output instead, which
    the layer above holds anyway, and its backward gives dout * (x > 0) from it."""
    from fastnn import ReLU

    layer = ReLU()
    x = np.array([[-1.0, 0.0, 2.0, np.nan]], np.float32)
    out = layer.forward(x)
    assert layer._cache.saved is out
    np.testing.assert_array_equal(layer.backward(np.ones((1, 4), np.float32)), [[0, 0, 1, 0]])


def test_relu_cache_of_a_list_is_the_converted_array():
    _, cache = F.relu_forward([-1.0, 0.0, 2.0])
    assert isinstance(cache, np.ndarray) and cache.dtype == np.float64
    np.testing.assert_array_equal(cache, [-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(course_relu_backward(np.ones(3), cache), [0, 0, 1])


# ----------------------------------------------------------------------------- more course code
def course_affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1).dot(w) + b
    return out, (x, w, b)


def course_relu_forward(x):
    return np.maximum(0, x), x


def course_affine_relu_forward(x, w, b):
    a, fc_cache = course_affine_forward(x, w, b)
    out, relu_cache = course_relu_forward(a)
    return out, (fc_cache, relu_cache)


def course_dropout_forward(x, dropout_param):
    p, mode = dropout_param["p"], dropout_param["mode"]
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])
    mask = None
    if mode == "train":
        mask = (np.random.rand(*x.shape) < p) / p
        out = x * mask
    else:
        out = x
    return out.astype(x.dtype, copy=False), (dropout_param, mask)


def course_dropout_backward(dout, cache):
    dropout_param, mask = cache
    return dout * mask if dropout_param["mode"] == "train" else dout


def course_relu_backward_shape(dout, cache):
    x = cache
    dx = np.zeros(x.shape, dtype=x.dtype)
    dx[x > 0] = 1
    return dx * dout


def course_relu_backward_copy(dout, cache):
    x = cache.copy()
    x[x > 0] = 1
    x[x <= 0] = 0
    return dout * x


@pytest.mark.parametrize("course_bwd", [course_relu_backward_shape, course_relu_backward_copy],
                         ids=lambda f: f.__name__)
def test_relu_cache_is_the_input_as_in_the_course(course_bwd):
    """Course relu_backwards that use the cache as an array (x.shape, x.copy(), indexing)."""
    x = np.array([[-1.5, 0.0, 2.0, 3.0], [-0.0, 1e-30, -7.0, 0.5]])
    dout = np.arange(8.0).reshape(2, 4) + 1
    _, cache = F.relu_forward(x)
    assert cache is x    # (a float64 C-contiguous x needs no conversion: the very array)
    np.testing.assert_array_equal(course_bwd(dout, cache), course_bwd(dout, x))
    np.testing.assert_array_equal(F.relu_backward(dout, cache), course_bwd(dout, x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_affine_caches_index_like_the_courses_tuples(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 2)).astype(dtype)
    w = rng.standard_normal((4, 5)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    _, cache = F.affine_forward(x, w, b)
    assert len(cache) == 3
    np.testing.assert_array_equal(cache[0], x)
    assert cache[0].shape == x.shape and cache[1] is w and cache[-1] is b
    assert [c.shape for c in cache[:2]] == [x.shape, w.shape]
    with pytest.raises(IndexError):
        cache[3]
    _, cache = F.affine_relu_forward(x, w, b)
    assert len(cache) == 2
    fc, a = cache[0], cache[1]
    assert fc[1] is w and fc[2] is b
    np.testing.assert_allclose(a, x.reshape(3, 4) @ w + b, rtol=1e-5 if dtype == np.float32 else 1e-12)
    for fwd in (F.affine_sigmoid_forward, F.affine_tanh_forward):
        _, cache = fwd(x, w, b)
        with pytest.raises(TypeError, match="fastnn's own"):
            len(cache)
        with pytest.raises(TypeError, match="fastnn's own"):
            cache[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xshape", [(5, 12), (4, 3, 2, 2), (1, 7)], ids=str)
def test_fastnn_backward_takes_the_courses_affine_caches(dtype, xshape):
    """A course forward, then fastnn's backward: the course's own backward's numbers."""
    x, w, b, dout, tol = _affine_problem(5, dtype, xshape)
    b[:2] = 0.0
    x.reshape(x.shape[0], -1)[0] = 0.0   # a row whose pre-activation is exactly b: zeros in a
    before = [a.copy() for a in (x, w, b, dout)]

    _, cache = course_affine_forward(x, w, b)
    got = F.affine_backward(dout, cache)
    assert got[0].shape == xshape and all(g.dtype == dtype for g in got)
    for g, c in zip(got, course_affine_backward(dout, cache)):
        np.testing.assert_allclose(g, c, **tol)

    _, cache = course_affine_relu_forward(x, w, b)
    assert (cache[1] == 0).any()
    got = F.affine_relu_backward(dout, cache)
    for g, c in zip(got, course_affine_relu_backward(dout, cache)):
        np.testing.assert_allclose(g, c, **tol)
    # and the same numbers as fastnn's own cache (the mask a > 0 is relu(a) > 0)
    for g, c in zip(got, F.affine_relu_backward(dout, F.affine_relu_forward(x, w, b)[1])):
        np.testing.assert_allclose(g, c, **tol)
    for a, a0 in zip((x, w, b, dout), before):
        np.testing.assert_array_equal(a, a0)


def test_course_relu_cache_mask_is_exact_across_dtypes():
    """A float64 pre-activation below float32's range is still > 0 in the mask (converting it
    to float32 would flush it to 0); NaN counts as not > 0, as in dout * (a > 0)."""
    x = np.ones((1, 3), np.float32)
    w = np.ones((3, 4), np.float32)
    b = np.zeros(4, np.float32)
    a = np.array([[1e-50, -1e-50, np.nan, 2.0]])
    dout = np.ones((1, 4), np.float32)
    dx, dw, db = F.affine_relu_backward(dout, ((x, w, b), a))
    np.testing.assert_array_equal(db, [1, 0, 0, 1])


def test_course_affine_caches_that_do_not_fit_are_named():
    x, w, b = np.ones((2, 3)), np.ones((3, 4)), np.zeros(4)
    dout = np.ones((2, 4))
    with pytest.raises(TypeError, match="cache"):
        F.affine_backward(dout, (x, w))
    with pytest.raises(ValueError, match=r"cache.*w must have 3 rows"):
        F.affine_backward(dout, (x, np.ones((5, 4)), b))
    with pytest.raises(ValueError, match="cache.*b must have shape"):
        F.affine_backward(dout, (x, w, np.zeros(3)))
    with pytest.raises(TypeError, match="cache"):
        F.affine_relu_backward(dout, (x, w, b))
    with pytest.raises(TypeError, match="fc_cache"):
        F.affine_relu_backward(dout, ([x, w, b], np.ones((2, 4))))
    with pytest.raises(ValueError, match="relu_cache must have shape"):
        F.affine_relu_backward(dout, ((x, w, b), np.ones((2, 3))))
    with pytest.raises(ValueError, match="dout"):
        F.affine_backward(np.ones((2, 5)), (x, w, b))
    with pytest.raises(TypeError, match="cache"):
        F.affine_backward(dout, [x, w, b])   # (a list is no cache of either kind)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.3, 1.0])
def test_dropout_caches_both_ways(dtype, p):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((7, 11)).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    param = {"p": p, "mode": "train", "seed": 17}
    out, cache = F.dropout_forward(x, param)
    # fastnn's cache in the course's backward: the course's unpacking, fastnn's numbers
    got = course_dropout_backward(dout, cache)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, F.dropout_backward(dout, cache))
    param_back, mask = cache
    assert param_back == {"p": p, "mode": "train", "seed": 17} and mask.dtype == dtype
    np.testing.assert_array_equal(x * mask, out)   # the mask the forward applied
    assert len(cache) == 2 and cache[-1].shape == x.shape
    # the course's cache in fastnn's backward: the course's numbers
    state = np.random.get_state()
    try:
        _, ccache = course_dropout_forward(x, dict(param))
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(F.dropout_backward(dout, ccache), course_dropout_backward(dout, ccache))
    # 'test' mode: the course's mask is None, the gradient passes through
    _, cache = F.dropout_forward(x, {"p": p, "mode": "test"})
    assert cache[1] is None and cache[0]["mode"] == "test"
    np.testing.assert_array_equal(course_dropout_backward(dout, cache), dout)
    np.testing.assert_array_equal(F.dropout_backward(dout, ({"p": p, "mode": "test"}, None)), dout)


def test_course_dropout_caches_that_do_not_fit_are_named():
    dout = np.ones((2, 3))
    with pytest.raises(TypeError, match="cache"):
        F.dropout_backward(dout, (np.ones((2, 3)),))
    with pytest.raises(TypeError, match="cache"):
        F.dropout_backward(dout, ("train", np.ones((2, 3))))
    with pytest.raises(ValueError, match="mode"):
        F.dropout_backward(dout, ({"mode": "eval"}, np.ones((2, 3))))
    with pytest.raises(ValueError, match="shape"):
        F.dropout_backward(dout, ({"mode": "train"}, np.ones((3, 2))))
    with pytest.raises(TypeError, match="mask"):
        F.dropout_backward(dout, ({"mode": "train"}, None))


def test_star_import_binds_the_functions_only():
    ns = {}
    exec("from fastnn.functional import *", ns)
    names = {k for k in ns if not k.startswith("__")}
    assert {"affine_forward", "softmax_loss", "dropout_forward", "relu_backward"} <= names
    assert not {"activations", "dense", "dropout", "losses"} & names
    assert all(callable(ns[k]) for k in names)


def test_caches_are_true_whatever_their_length():
    """len() exists for course code that takes caches apart; a cache is still true (``if
    cache:``), also fastnn's own, which have no len()."""
    x, w, b = np.ones((2, 3)), np.ones((3, 4)), np.zeros(4)
    caches = [F.affine_forward(x, w, b)[1], F.affine_relu_forward(x, w, b)[1],
              F.affine_sigmoid_forward(x, w, b)[1], F.affine_leaky_relu_forward(x, w, b)[1],
              F.maxout_forward(x, np.ones((3, 4, 2)), np.zeros((4, 2)))[1],
              F.dropout_forward(x, {"p": 0.5, "seed": 1})[1]]
    assert all(bool(c) for c in caches)


def test_dropout_cache_slices_like_a_tuple():
    x = np.ones((3, 4))
    _, cache = F.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 3})
    whole = cache[:]
    assert len(whole) == 2 and whole[0]["seed"] == 3
    np.testing.assert_array_equal(whole[1], cache[1])
    assert cache[::-1][0] is not None and cache[-2] == whole[0]


def test_course_sandwich_built_from_fastnn_pieces():
    """Course code whose layer_utils builds affine_relu from fastnn's affine_forward and
    relu_forward makes the cache (affine_forward's cache, a): fastnn's affine_relu_backward
    takes it, with the numbers of the course's own backward."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 2, 3))
    w = rng.standard_normal((6, 4))
    b = rng.standard_normal(4)
    dout = rng.standard_normal((5, 4))
    a, fc_cache = F.affine_forward(x, w, b)
    _, relu_cache = F.relu_forward(a)
    cache = (fc_cache, relu_cache)
    got = F.affine_relu_backward(dout, cache)
    for g, c in zip(got, course_affine_relu_backward(dout, cache)):
        np.testing.assert_allclose(g, c, rtol=1e-12, atol=1e-12)
    # a fastnn cache of another kind in fc_cache's place is named
    for other in (F.affine_sigmoid_forward(x, w, b)[1],
                  F.maxout_forward(x, np.ones((6, 4, 2)), np.zeros((4, 2)))[1]):
        with pytest.raises(TypeError, match="fc_cache"):
            F.affine_relu_backward(dout, (other, relu_cache))
    # a w resized since the forward is named as affine_backward names it
    w.resize((6, 3), refcheck=False)
    with pytest.raises(ValueError, match="w changed shape"):
        F.affine_relu_backward(dout, cache)


@pytest.mark.parametrize("mask", [np.array([[True, False, True]]), [[True, False, True]],
                                  np.array([[1, 0, 1]]), np.array([[1, 0, 1]], np.uint8)],
                         ids=["bool", "bool-list", "int", "uint8"])
def test_unscaled_dropout_masks_are_refused(mask):
    """A bool or integer mask (some course code keeps rand < p, or a binomial draw, and divides
    by p in both passes) has no scale: dout * mask would be 1 / p too small, silently.
    Refused, naming the mask."""
    with pytest.raises(TypeError, match="mask"):
        F.dropout_backward(np.ones((1, 3)), ({"p": 0.5, "mode": "train"}, mask))


def test_course_cache_errors_name_the_function():
    x, w, b = np.ones((2, 3)), np.ones((3, 4)), np.zeros(4)
    with pytest.raises(TypeError, match="affine_forward"):
        F.affine_backward(np.ones((2, 4)), (x, w))
    with pytest.raises(TypeError, match="affine_relu_forward"):
        F.affine_relu_backward(np.ones((2, 4)), (x, w, b))
