"""fastnn.gradcheck: the course's gradient_check.py helpers.

Central differences have truncation error h**2 * f''' / 6 (zero for the quadratics used here:
their third derivative vanishes) and rounding error ~ eps * |f| / h ~ 1e-10 for |f| ~ 10:
rtol 1e-7 with atol 1e-8 is a wide margin, while a wrong formula is off by O(1).
"""
import random

import numpy as np
import pytest

from fastnn import gradcheck as G

from conftest import assert_same_bits


def _quadratic(rng, shape):
    """f(x) = 0.5 * sum(a * x**2) + sum(c * x) + 3, gradient a * x + c."""
    a = rng.uniform(0.5, 2.0, shape)
    c = rng.standard_normal(shape)

    def f(x):
        return 0.5 * np.sum(a * x * x) + np.sum(c * x) + 3.0

    return f, (lambda x: a * x + c)


# ============================================================================ rel_error
def test_rel_error_definition():
    """max |x - y| / max(1e-8, |x| + |y|), element by element."""
    x = np.array([1.0, 2.0, -3.0, 0.0])
    y = np.array([1.0, 2.2, -3.0, 0.0])
    assert G.rel_error(x, y) == pytest.approx(0.2 / 4.2, rel=1e-15)
    assert G.rel_error(x, x) == 0.0
    assert G.rel_error(np.zeros(3), np.zeros(3)) == 0.0
    # the floor of the denominator: two tiny numbers are compared absolutely
    assert G.rel_error(np.array([1e-12]), np.array([-1e-12])) == pytest.approx(2e-12 / 1e-8, rel=1e-12)
    # opposite signs: the largest possible value, 1
    assert G.rel_error(np.array([1.0]), np.array([-1.0])) == 1.0
    # the maximum over elements, not the mean
    assert G.rel_error([1.0, 1.0, 1.0], [1.0, 1.0, 3.0]) == pytest.approx(0.5, rel=1e-15)
    assert isinstance(G.rel_error(x, y), float)


def test_rel_error_is_symmetric_and_accepts_scalars_and_float32(rng):
    a = rng.standard_normal((4, 5))
    b = a + 1e-3 * rng.standard_normal((4, 5))
    assert G.rel_error(a, b) == G.rel_error(b, a)
    assert G.rel_error(2.0, 2.0) == 0.0
    assert G.rel_error(a.astype(np.float32), b) == pytest.approx(G.rel_error(a.astype(np.float32).astype(np.float64), b))


# ============================================================================ eval_numerical_gradient
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 4), (2, 3, 2)], ids=str)
def test_eval_numerical_gradient_quadratic(shape, rng):
    f, grad = _quadratic(rng, shape)
    x = rng.standard_normal(shape)
    x0 = x.copy()
    num = G.eval_numerical_gradient(f, x, verbose=False)
    assert num.shape == x.shape and num.dtype == x.dtype
    np.testing.assert_allclose(num, grad(x0), rtol=1e-7, atol=1e-8)
    assert_same_bits(x, x0, what="x after eval_numerical_gradient")


def test_eval_numerical_gradient_perturbs_in_place(rng):
    """The course helper reaches parameters read live: f may ignore its argument and read x."""
    f0, grad = _quadratic(rng, (5,))
    x = rng.standard_normal(5)
    x0 = x.copy()
    num = G.eval_numerical_gradient(lambda _: f0(x), x, verbose=False)
    np.testing.assert_allclose(num, grad(x0), rtol=1e-7, atol=1e-8)
    assert_same_bits(x, x0)


def test_eval_numerical_gradient_step_h(rng):
    """A cubic has truncation error h**2 * f''' / 6 per entry: it grows with h as it should."""
    x = np.array([0.5, -1.0, 2.0])

    def f(v):
        return float(np.sum(v ** 3))

    exact = 3 * x ** 2
    for h in (1e-2, 1e-3):
        num = G.eval_numerical_gradient(f, x, verbose=False, h=h)
        np.testing.assert_allclose(num - exact, np.full(3, h * h), rtol=1e-5)


def test_eval_numerical_gradient_verbose_prints(rng, capsys):
    f, _ = _quadratic(rng, (2, 2))
    G.eval_numerical_gradient(f, rng.standard_normal((2, 2)), verbose=True)
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    G.eval_numerical_gradient(f, rng.standard_normal((2, 2)), verbose=False)
    assert capsys.readouterr().out == ""


# ============================================================================ eval_numerical_gradient_array
@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 3, 4)], ids=str)
def test_eval_numerical_gradient_array_linear_map(shape, rng):
    """f(x) = A @ x.ravel() (reshaped): the gradient of sum(f(x) * df) is A.T @ df."""
    n = int(np.prod(shape))
    A = rng.standard_normal((6, n))
    x = rng.standard_normal(shape)
    x0 = x.copy()
    df = rng.standard_normal(6)
    num = G.eval_numerical_gradient_array(lambda v: A @ v.reshape(-1), x, df)
    assert num.shape == x.shape
    np.testing.assert_allclose(num, (A.T @ df).reshape(shape), rtol=1e-7, atol=1e-8)
    assert_same_bits(x, x0, what="x after eval_numerical_gradient_array")


def test_eval_numerical_gradient_array_elementwise(rng):
    """f(x) = x**2 element-wise returns an array that aliases nothing: gradient 2 x df."""
    x = rng.standard_normal((3, 4))
    df = rng.standard_normal((3, 4))
    num = G.eval_numerical_gradient_array(lambda v: v ** 2, x, df)
    np.testing.assert_allclose(num, 2 * x * df, rtol=1e-7, atol=1e-8)


def test_eval_numerical_gradient_array_function_returning_its_input(rng):
    """f may return x itself (a view that the perturbation changes afterwards): the helper must
    copy each output before perturbing again. Gradient of sum(x * df) is df."""
    x = rng.standard_normal((4, 3))
    x0 = x.copy()
    df = rng.standard_normal((4, 3))
    num = G.eval_numerical_gradient_array(lambda v: v, x, df)
    np.testing.assert_allclose(num, df, rtol=1e-7, atol=1e-8)
    assert_same_bits(x, x0)


# ============================================================================ empty x
EMPTY_SHAPES = [(0,), (0, 3), (3, 0, 2)]


def _never_called(*_):
    raise AssertionError("f was called for an empty x")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
def test_eval_numerical_gradient_empty_x(shape, dtype, capsys):
    """An empty x has an empty gradient of its shape and of the dtype a non-empty x of that
    dtype gets (it used to raise NumPy's "Iteration of zero-sized operands is not enabled");
    f is called once (the course's first ``fx = f(x)``, 2n + 1 calls for n = 0) and nothing
    is printed."""
    x = np.zeros(shape, dtype)
    nonempty = G.eval_numerical_gradient(lambda v: float(np.sum(v)), np.ones(2, dtype), verbose=False)
    calls = []
    num = G.eval_numerical_gradient(lambda v: calls.append(v) or 0.0, x, verbose=True)
    assert len(calls) == 1 and calls[0] is x
    assert isinstance(num, np.ndarray) and num is not x
    assert num.shape == shape and num.dtype == nonempty.dtype == dtype
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
def test_eval_numerical_gradient_array_empty_x(shape, dtype):
    x = np.zeros(shape, dtype)
    nonempty = G.eval_numerical_gradient_array(lambda v: 2 * v, np.ones(2, dtype), np.ones(2))
    num = G.eval_numerical_gradient_array(_never_called, x, np.zeros(shape))
    assert isinstance(num, np.ndarray) and num is not x
    assert num.shape == shape and num.dtype == nonempty.dtype == dtype


def test_empty_x_still_checked():
    """The argument checks come first: an empty int x or a bad h is refused as before."""
    for fn, extra in ((G.eval_numerical_gradient, ()), (G.eval_numerical_gradient_array, (np.zeros(0),))):
        with pytest.raises(TypeError, match=r"\bx\b"):
            fn(_never_called, np.zeros(0, dtype=np.int64), *extra)
        with pytest.raises(ValueError, match=r"\bh\b"):
            fn(_never_called, np.zeros(0), *extra, h=0.0)


# ============================================================================ grad_check_sparse
def test_grad_check_sparse_correct_gradient(rng, capsys):
    f, grad = _quadratic(rng, (10, 8))
    x = rng.standard_normal((10, 8))
    x0 = x.copy()
    random.seed(0)
    errors = G.grad_check_sparse(f, x, grad(x), num_checks=12)
    assert isinstance(errors, list) and len(errors) == 12
    assert max(errors) < 1e-7
    assert len(capsys.readouterr().out.strip().splitlines()) == 12
    assert_same_bits(x, x0, what="x after grad_check_sparse")


def test_grad_check_sparse_wrong_gradient(rng):
    f, grad = _quadratic(rng, (10, 8))
    x = rng.standard_normal((10, 8))
    wrong = grad(x) * 1.5 + 0.1
    random.seed(1)
    errors = G.grad_check_sparse(f, x, wrong, num_checks=10)
    assert len(errors) == 10
    assert min(errors) > 1e-2


def test_grad_check_sparse_relative_error_of_tiny_gradients(capsys):
    """The error reported is the course's |n - a| / max(1e-12, |n| + |a|): for gradients of
    1e-10 and 2e-10 that is 1/3 (a larger floor would call them close)."""
    slope = 1e-10
    x = np.zeros(3)
    errors = G.grad_check_sparse(lambda v: slope * float(np.sum(v)), x, np.full(3, 2 * slope),
                                 num_checks=4)
    assert errors == pytest.approx([1 / 3] * 4, rel=1e-4)
    errors = G.grad_check_sparse(lambda v: 0.0, x, np.zeros(3), num_checks=2)
    assert errors == [0.0, 0.0]


def test_grad_check_sparse_is_random_like_the_course(rng):
    """Entries are drawn with Python's random module, so random.seed makes it repeatable."""
    f, grad = _quadratic(rng, (50, 50))
    x = rng.standard_normal((50, 50))
    # a gradient that is wrong in one column only: the errors depend on which entries are drawn
    g = grad(x)
    g[:, 7] += 1.0
    random.seed(5)
    a = G.grad_check_sparse(f, x, g, num_checks=30)
    random.seed(5)
    b = G.grad_check_sparse(f, x, g, num_checks=30)
    assert a == b
    random.seed(6)
    c = G.grad_check_sparse(f, x, g, num_checks=30)
    assert c != a
    # entries of column 7 (wrong) and elsewhere (right) are both drawn
    assert min(a) < 1e-7 < 1e-2 < max(a)


# ============================================================================ the course's calls
def _course_eval_numerical_gradient(f, x, h=1e-5):
    """The course's gradient_check.eval_numerical_gradient (verbose=False), in plain NumPy."""
    f(x)  # the course: fx = f(x), evaluated first (its value unused)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        oldval = x[ix]
        x[ix] = oldval + h
        fxph = f(x)
        x[ix] = oldval - h
        fxmh = f(x)
        x[ix] = oldval
        grad[ix] = (fxph - fxmh) / (2 * h)
        it.iternext()
    return grad


def _course_eval_numerical_gradient_array(f, x, df, h=1e-5):
    """The course's gradient_check.eval_numerical_gradient_array, in plain NumPy."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        oldval = x[ix]
        x[ix] = oldval + h
        pos = f(x).copy()
        x[ix] = oldval - h
        neg = f(x).copy()
        x[ix] = oldval
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
        it.iternext()
    return grad


def _course_grad_check_sparse(f, x, analytic_grad, num_checks=10, h=1e-5):
    """The course's gradient_check.grad_check_sparse (without its printing)."""
    for _ in range(num_checks):
        ix = tuple([random.randrange(m) for m in x.shape])
        oldval = x[ix]
        x[ix] = oldval + h
        f(x)
        x[ix] = oldval - h
        f(x)
        x[ix] = oldval


def _recording(f):
    """f, recording each call's argument (a copy) and drawing one np.random number per call,
    as a model with unseeded dropout does."""
    seen = []

    def g(x):
        seen.append(np.array(x, copy=True))
        return f(x) + 0.0 * np.random.rand()
    return g, seen


@pytest.mark.parametrize("shape", [(1,), (3,), (2, 3)], ids=str)
def test_eval_numerical_gradient_calls_f_as_the_course_does(shape, rng):
    """f(x) once at the unperturbed point first, then f(x + h), f(x - h) per entry: the same
    2n + 1 calls, with the same arguments in the same order, as the course's helper; an f that
    draws random numbers leaves np.random where the course's leaves it."""
    f0, _ = _quadratic(rng, shape)
    x = rng.standard_normal(shape)
    runs = []
    for helper in (_course_eval_numerical_gradient,
                   lambda f, x: G.eval_numerical_gradient(f, x, verbose=False)):
        f, seen = _recording(f0)
        np.random.seed(0)
        grad = helper(f, x.copy())
        runs.append((grad, seen, np.random.rand()))
    (ref, ref_seen, ref_next), (got, seen, nxt) = runs
    assert len(seen) == len(ref_seen) == 2 * x.size + 1
    for a, b in zip(seen, ref_seen):
        assert_same_bits(a, b)
    assert nxt == ref_next
    assert_same_bits(got, ref)


def test_eval_numerical_gradient_array_and_grad_check_sparse_call_f_as_the_course_does(rng):
    """Neither has a first call: 2n calls for eval_numerical_gradient_array, 2 per check for
    grad_check_sparse (at the entries Python's random module picks), in the course's order."""
    x = rng.standard_normal((2, 3))
    df = rng.standard_normal((2, 3))
    runs = []
    for helper in (_course_eval_numerical_gradient_array, G.eval_numerical_gradient_array):
        f, seen = _recording(lambda v: v ** 2)
        np.random.seed(0)
        helper(f, x.copy(), df)
        runs.append((seen, np.random.rand()))
    (ref_seen, ref_next), (seen, nxt) = runs
    assert len(seen) == len(ref_seen) == 2 * x.size
    for a, b in zip(seen, ref_seen):
        assert_same_bits(a, b)
    assert nxt == ref_next

    runs = []
    for helper in (_course_grad_check_sparse, G.grad_check_sparse):
        f, seen = _recording(lambda v: float(np.sum(v ** 2)))
        np.random.seed(0)
        random.seed(4)
        helper(f, x.copy(), 2 * x, 5)
        runs.append((seen, np.random.rand(), random.random()))
    (ref_seen, ref_next, ref_py), (seen, nxt, py) = runs
    assert len(seen) == len(ref_seen) == 10
    for a, b in zip(seen, ref_seen):
        assert_same_bits(a, b)
    assert (nxt, py) == (ref_next, ref_py)


@pytest.mark.parametrize("df_shape", [(2,), (1,), (3, 1)], ids=str)
def test_eval_numerical_gradient_array_names_a_df_of_another_shape(df_shape, rng):
    """df must have the shape of f(x): a wrong one gave NumPy's broadcast error naming
    nothing, and one that broadcasts (shape (1,), a scalar) gave a gradient silently. x is
    left as it was."""
    x = rng.standard_normal(3)
    keep = x.copy()
    with pytest.raises(ValueError, match=r"^df must have the shape of f\(x\) \(3,\)"):
        G.eval_numerical_gradient_array(lambda v: 2 * v, x, np.ones(df_shape))
    assert_same_bits(x, keep)
    with pytest.raises(TypeError, match="^df"):
        G.eval_numerical_gradient_array(lambda v: 2 * v, x, "abc")
    np.testing.assert_allclose(G.eval_numerical_gradient_array(lambda v: 2 * v, x, np.ones(3)),
                               np.full(3, 2.0))
    for scalar in (3.0, np.array(3.0)):   # (the course's helper takes a number: df * sum(f))
        np.testing.assert_allclose(G.eval_numerical_gradient_array(lambda v: 2 * v, x, scalar),
                                   np.full(3, 6.0))


def test_grad_check_sparse_names_an_f_that_returns_an_array(rng, capsys):
    """An f returning an array (a forward output instead of the loss) failed with NumPy's
    "truth value of an array is ambiguous"."""
    x = rng.standard_normal(4)
    keep = x.copy()
    with pytest.raises(TypeError, match=r"^f must return a number .*shape \(4,\)"):
        G.grad_check_sparse(lambda v: 2 * v, x, np.ones(4), num_checks=2)
    assert_same_bits(x, keep)


@pytest.mark.parametrize("kind", [np.uint8, np.uint64, np.int8, np.bool_])
def test_integer_and_bool_values_of_f_are_differenced_as_numbers(kind):
    """f(x) = (x < 0), a step down at 0: the central difference over h = 1 is -0.5. Unsigned
    values wrapped (uint8 gave +127.5) and bools were refused by NumPy's subtraction with a
    message that did not name f; each helper now takes them as the numbers they are."""
    x = np.array([0.0, 2.0])
    df = np.ones(2)
    want = np.array([-0.5, 0.0])
    got = G.eval_numerical_gradient_array(lambda v: (v < 0).astype(kind), x, df, h=1.0)
    np.testing.assert_array_equal(got, want)
    got = G.eval_numerical_gradient(lambda v: kind(v[0] < 0), x, verbose=False, h=1.0)
    np.testing.assert_array_equal(got, want)
    errors = G.grad_check_sparse(lambda v: kind(v[0] < 0) + kind(v[1] < 0), x, want,
                               num_checks=4, h=1.0)
    assert errors == [0.0] * 4
    np.testing.assert_array_equal(x, [0.0, 2.0])
