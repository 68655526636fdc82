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
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xshape", [(5, 12), (4, 3, 2, 2), (1, 7)], ids=str)
def test_course_affine_backward_takes_fastnn_caches(dtype, xshape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xshape).astype(dtype)
    d = int(np.prod(xshape[1:]))
    w = rng.standard_normal((d, 6)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    dout = rng.standard_normal((xshape[0], 6)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)

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


def test_relu_layer_keeps_no_input():
    """The course's relu_forward cache holds x; the ReLU layer's backward reads the output
    only, so the layer drops x (one activation less held between forward and backward)."""
    from fastnn import ReLU

    layer = ReLU()
    layer.forward(np.ones((4, 3), np.float32))
    assert layer._cache.x is None
    np.testing.assert_array_equal(layer.backward(np.ones((4, 3), np.float32)), np.ones((4, 3)))


def test_relu_cache_of_a_list_compares_like_its_array():
    _, cache = F.relu_forward([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(cache > 0, [False, False, True])
    np.testing.assert_array_equal(cache < 0, [True, False, False])
