"""Property tests (hypothesis) of every kernel against the NumPy reference: small shapes (empty
ones included), values that include huge magnitudes (+-1e30 for the element-wise kernels and the
maxout reduction, where every result is defined and finite or a clean infinity; +-1e4 for losses;
+-1e3 for products and update rules, whose float32 results would otherwise overflow), tiny ones
(1e-30, the smallest normal, subnormals, signed zeros) and, where NumPy defines the result, NaN and
+-Inf. The comparisons and tolerances are those of kernel_specs.py (the per-kernel test files').

Example counts come from the hypothesis profile (registered in tests/conftest.py):

- default (``fastnn-default``): 25 examples per property, derandomized (the same examples on
  every run), a few seconds in all;
- ``slow``: 10,000 examples per property:
  ``python -m pytest tests/test_properties.py --hypothesis-profile=slow`` or
  ``FASTNN_HYPOTHESIS_PROFILE=slow python -m pytest tests/test_properties.py``.
"""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from conftest import assert_same_bits  # noqa: E402
from kernel_specs import (CHUNKED_DENSE, DENSE, ELEMENTWISE, LOSSES, OPTIM, DenseSpec, DropoutSpec,  # noqa: E402
                          MaxoutReduceSpec, PReLUSpec, assert_nonfinite_match, fresh)

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def run_unwritten(spec, inp):
    """spec.run(inp), checking that no input array was written (bit for bit: NaN payloads
    and signed zeros too)."""
    before = {k: v.copy() for k, v in inp.items() if isinstance(v, np.ndarray)}
    out = spec.run(inp)
    for k, v in before.items():
        assert_same_bits(inp[k], v, what=f"{spec}: input {k} was modified")
    return out


def run_and_check(spec, inp):
    """Run fastnn (on copies for the update rules, which write w and their state in place),
    check that no other input was written, and compare with the reference."""
    out = spec.run(fresh(inp)) if spec.family == "optim" else run_unwritten(spec, inp)
    spec.check(inp, out)
    return out


# ============================================================================ strategies
def _exact(v, dtype):
    """v as the nearest value of dtype, as a Python float (hypothesis bounds must be exact)."""
    return float(np.asarray(v, dtype=dtype))


def values(dtype, huge, nonfinite=False):
    """Floats of ``dtype``: anywhere in [-huge, huge], the common range [-10, 10], and the
    special values: +-huge, 1e-30, the smallest normal, subnormals, signed zeros, +-1 (and NaN,
    +-Inf when ``nonfinite``)."""
    dtype = np.dtype(dtype)
    fi = np.finfo(dtype)
    width = 32 if dtype == np.float32 else 64
    specials = [0.0, -0.0, 1.0, -1.0, huge, -huge, 1e-30, -1e-30, float(fi.tiny), -float(fi.tiny),
                float(fi.smallest_subnormal), -float(fi.smallest_subnormal), 3 * float(fi.smallest_subnormal)]
    if nonfinite:
        specials += [np.nan, np.inf, -np.inf]
    specials = [_exact(v, dtype) for v in specials]
    h = _exact(huge, dtype)
    parts = [st.floats(-h, h, width=width, allow_nan=False, allow_infinity=False),
             st.floats(-10, 10, width=width, allow_nan=False, allow_infinity=False),
             st.sampled_from(specials)]
    return st.one_of(*parts)


def arrays(dtype, shape, huge, nonfinite=False):
    return hnp.arrays(dtype, shape, elements=values(dtype, huge, nonfinite))


small_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)


def _last(shape):
    return shape[-1] if len(shape) else 1


# ============================================================================ element-wise
@pytest.mark.parametrize("spec", ELEMENTWISE, ids=repr)
@given(data=st.data())
def test_elementwise_matches_reference(spec, data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = data.draw(small_shapes, label="shape")
    inp = {"x": data.draw(arrays(dtype, shape, 1e30, nonfinite=True), label="x"),
           "dout": data.draw(arrays(dtype, shape, 1e30, nonfinite=True), label="dout")}
    if spec.kind == "leaky_relu":
        inp["alpha"] = data.draw(st.floats(-2, 2) | st.sampled_from([0.0, 0.01, 1.0]), label="alpha")
    run_and_check(spec, inp)


@given(data=st.data())
def test_prelu_matches_reference(data):
    spec = PReLUSpec()
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = data.draw(small_shapes, label="shape")
    d = _last(shape)
    vector = data.draw(st.booleans(), label="per-feature alpha")
    if vector:
        alpha = data.draw(hnp.arrays(dtype, (d,), elements=st.floats(-2, 2, width=32)), label="alpha")
    else:
        alpha = data.draw(st.floats(-2, 2), label="alpha")
    # dout up to 1e4: dout * x stays finite in float32 for |x| up to 1e30, so the dalpha sums are
    # defined (an overflowing float32 partial sum would be inf where the truth is finite)
    inp = {"x": data.draw(arrays(dtype, shape, 1e30, nonfinite=True), label="x"), "alpha": alpha,
           "dout": data.draw(arrays(dtype, shape, 1e4), label="dout")}
    run_and_check(spec, inp)


@given(data=st.data())
def test_maxout_reduce_matches_reference(data):
    spec = MaxoutReduceSpec()
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = data.draw(hnp.array_shapes(min_dims=3, max_dims=3, min_side=0, max_side=5)
                      .filter(lambda s: s[2] >= 1), label="shape")
    inp = {"z": data.draw(arrays(dtype, shape, 1e30, nonfinite=True), label="z"),
           "dout": data.draw(arrays(dtype, shape[:2], 1e30, nonfinite=True), label="dout")}
    run_and_check(spec, inp)


# ============================================================================ dense
def _dense_inputs(data, spec, nonfinite):
    # each operand's dtype is drawn: mixed float32/float64 operands compute in float64
    dts = [data.draw(st.sampled_from(DTYPES), label=f"{k} dtype") for k in ("x", "w", "b")]
    n = data.draw(st.integers(0, getattr(spec, "n_max", 5)), label="N")
    feat = data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=2), label="x.shape[1:]")
    d = int(np.prod(feat))
    m = data.draw(st.integers(0, 5), label="M")
    huge = 1e3
    x = data.draw(arrays(dts[0], (n, *feat), huge, nonfinite=nonfinite), label="x")
    if isinstance(spec, DenseSpec):
        w = data.draw(arrays(dts[1], (d, m), huge), label="w")
        b = data.draw(arrays(dts[2], (m,), huge), label="b")
    else:  # maxout
        k = data.draw(st.integers(1, 3), label="pieces")
        w = data.draw(arrays(dts[1], (d, m, k), huge), label="w")
        b = data.draw(arrays(dts[2], (m, k), huge), label="b")
    dt = np.result_type(*dts)
    inp = {"x": x, "w": w, "b": b, "dout": data.draw(arrays(dt, (n, m), huge), label="dout")}
    if isinstance(spec, DenseSpec) and spec.act == "leaky_relu":
        inp["alpha"] = data.draw(st.floats(-2, 2), label="alpha")
    elif isinstance(spec, DenseSpec) and spec.act == "prelu":
        inp["alpha"] = data.draw(hnp.arrays(dt, (m,), elements=st.floats(-2, 2, width=32)), label="alpha")
    return spec.prepare(inp)


@pytest.mark.parametrize("spec", DENSE + CHUNKED_DENSE, ids=repr)
@given(data=st.data())
def test_dense_matches_reference(spec, data):
    inp = _dense_inputs(data, spec, nonfinite=False)
    run_and_check(spec, inp)


@pytest.mark.parametrize("spec", DENSE + CHUNKED_DENSE, ids=repr)
@given(data=st.data())
def test_dense_nonfinite_propagates_like_numpy(spec, data):
    """NaN and +-Inf in x: NaN and infinities exactly where the NumPy reference, evaluated in the
    computation dtype, has them. (The dtype matters: in float32 a gradient term can underflow to
    0, and then inf * 0 is NaN where float64 would give an infinity.)"""
    inp = _dense_inputs(data, spec, nonfinite=True)
    out = run_unwritten(spec, inp)
    dt = np.result_type(inp["x"].dtype, inp["w"].dtype, inp["b"].dtype)
    x, w, b, dout = (np.asarray(inp[k], dtype=dt) for k in ("x", "w", "b", "dout"))
    from fastnn.reference import dense as RD

    with np.errstate(all="ignore"):
        if isinstance(spec, DenseSpec):
            args = spec.ref_args(inp, dt)
            if spec.act == "prelu":
                args = (args[0].astype(dt),)
            rout, rcache = getattr(RD, spec._base() + "_forward")(x, w, b, *args)
            rgrads = getattr(RD, spec._base() + "_backward")(dout, rcache)
        else:
            rout, rcache = RD.maxout_forward(x, w, b)
            rgrads = RD.maxout_backward(dout, rcache)
    note(f"out {out['out']!r}")
    assert_nonfinite_match(out["out"], rout, f"{spec} forward")
    for k, r in zip(("dx", "dw", "db"), rgrads):
        assert_nonfinite_match(out[k], r, f"{spec} {k}")


# ============================================================================ losses
@pytest.mark.parametrize("spec", LOSSES, ids=repr)
@given(data=st.data())
def test_loss_matches_reference(spec, data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    n = data.draw(st.integers(1, 6), label="N")
    if spec.kind in ("multiclass", "regression"):
        shape = (n, data.draw(st.integers(1, 6), label="C"))
    else:
        shape = data.draw(st.sampled_from([(n,), (n, 1)]), label="shape")
    x = data.draw(arrays(dtype, shape, 1e4), label="x")
    if spec.kind == "multiclass":
        y = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, shape[1] - 1)), label="y")
    elif spec.kind == "binary01":
        y = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 1)), label="y")
    elif spec.kind == "binarypm":
        y = data.draw(hnp.arrays(np.int64, (n,), elements=st.sampled_from([-1, 1])), label="y")
    else:
        y = data.draw(arrays(dtype, shape, 1e4), label="y")
    inp = {"x": x, "y": y}
    run_and_check(spec, inp)


# ============================================================================ dropout
@given(data=st.data())
def test_dropout_matches_reference(data):
    spec = DropoutSpec()
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = data.draw(small_shapes, label="shape")
    inp = {"x": data.draw(arrays(dtype, shape, 1e30, nonfinite=True), label="x"),
           "dout": data.draw(arrays(dtype, shape, 1e30, nonfinite=True), label="dout"),
           "p": data.draw(st.floats(1e-3, 1.0) | st.sampled_from([1.0, 0.5, 2.0**-16]), label="p"),
           "seed": data.draw(st.integers(0, 2**64 - 1), label="seed")}
    run_and_check(spec, inp)


# ============================================================================ update rules
@pytest.mark.parametrize("spec", OPTIM, ids=repr)
@given(data=st.data())
def test_update_rule_matches_reference(spec, data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=6), label="shape")
    # Hyperparameters: 0 or float32-normal values. (A decay rate below float32's smallest normal
    # is rounded by a float32 kernel, as NumPy's float32 arithmetic rounds a Python float operand;
    # the float64 comparison would then measure that rounding, not the kernel.)
    def rate(hi):
        return st.just(0.0) | st.floats(1e-30, hi)

    hyper = {"learning_rate": data.draw(st.floats(1e-4, 1.0), label="learning_rate")}
    if spec.rule in ("sgd_momentum", "nesterov_momentum"):
        hyper["momentum"] = data.draw(rate(0.99), label="momentum")
    elif spec.rule == "rmsprop":
        hyper["decay_rate"] = data.draw(rate(0.999), label="decay_rate")
        hyper["epsilon"] = data.draw(st.floats(1e-8, 1e-4), label="epsilon")
    elif spec.rule == "adam":
        hyper["beta1"] = data.draw(rate(0.99), label="beta1")
        hyper["beta2"] = data.draw(rate(0.9999), label="beta2")
        hyper["epsilon"] = data.draw(st.floats(1e-8, 1e-4), label="epsilon")
        hyper["t"] = data.draw(st.integers(0, 100), label="t")
    inp = {"w": data.draw(arrays(dtype, shape, 1e3), label="w"),
           "dw": data.draw(arrays(dtype, shape, 1e3, nonfinite=True), label="dw"), "hyper": hyper}
    for key in spec.state:
        s = data.draw(arrays(dtype, shape, 1e3), label=key)
        inp[key] = np.abs(s) if key in ("cache", "v") else s
    run_and_check(spec, inp)


# ============================================================================ special-value grids
# Deterministic complements to the properties above: every pair of special values, whatever the
# examples the default profile happens to draw.
def _specials(dtype, huge=1e30, nonfinite=True, extreme=True):
    fi = np.finfo(dtype)
    v = [0.0, -0.0, 1.0, -1.0, 0.5, -2.0, huge, -huge, 1e-30, -1e-30, float(fi.tiny), -float(fi.tiny),
         float(fi.smallest_subnormal), -float(fi.smallest_subnormal)]
    if extreme:
        v += [float(fi.max), -float(fi.max)]
    if nonfinite:
        v += [np.nan, np.inf, -np.inf]
    return np.array(v, dtype=dtype)


def _pairs(a, b):
    """Two arrays holding every pair (a[i], b[j])."""
    x, y = np.meshgrid(a, b, indexing="ij")
    return x.reshape(-1).copy(), y.reshape(-1).copy()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("spec", ELEMENTWISE + [DropoutSpec()], ids=repr)
def test_special_value_pairs_elementwise(spec, dtype):
    s = _specials(dtype)
    x, dout = _pairs(s, s)
    inp = {"x": x.reshape(-1, len(s)), "dout": dout.reshape(-1, len(s))}
    if spec.family == "dropout":
        inp.update(p=0.5, seed=12345)
    run_and_check(spec, inp)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("vector", [False, True], ids=["scalar-alpha", "vector-alpha"])
def test_special_value_pairs_prelu(dtype, vector):
    xs = _specials(dtype, extreme=False)
    ds = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, float(np.finfo(dtype).smallest_subnormal), np.nan], dtype)
    x, dout = _pairs(xs, ds)
    x, dout = x.reshape(len(xs), len(ds)), dout.reshape(len(xs), len(ds))
    alpha = np.linspace(-1.5, 1.5, len(ds)).astype(dtype) if vector else 0.3
    run_and_check(PReLUSpec(), {"x": x, "alpha": alpha, "dout": dout})


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_special_value_pairs_maxout_reduce(dtype):
    s = _specials(dtype)
    a, b = _pairs(s, s)
    z = np.stack([a, b], axis=-1).reshape(len(s), len(s), 2)
    run_and_check(MaxoutReduceSpec(), {"z": z, "dout": np.linspace(-2, 2, z.shape[0] * z.shape[1])
                                       .astype(dtype).reshape(z.shape[:2])})


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("spec", DENSE, ids=repr)
def test_special_values_through_dense(spec, dtype):
    s = _specials(dtype, extreme=False)
    n = len(s)
    x = np.stack([s, np.roll(s, 3)], axis=1)                  # (n, 2): every special in both columns
    m = 3
    if isinstance(spec, DenseSpec):
        w = np.array([[1.5, -0.5, 0.0], [0.25, 2.0, -1.0]], dtype)
        b = np.array([0.0, -1.0, 1e-30], dtype)
    else:
        w = np.array([[[1.5, -0.5], [0.0, 1.0], [2.0, -2.0]], [[0.25, 1.0], [-1.0, 0.5], [0.0, 0.0]]], dtype)
        b = np.zeros((m, 2), dtype)
    inp = {"x": x, "w": w, "b": b, "dout": np.linspace(-1, 1, n * m).astype(dtype).reshape(n, m)}
    if isinstance(spec, DenseSpec) and spec.act == "leaky_relu":
        inp["alpha"] = 0.2
    elif isinstance(spec, DenseSpec) and spec.act == "prelu":
        inp["alpha"] = np.array([0.1, -0.5, 1.5], dtype)
    run_and_check(spec, spec.prepare(inp))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("spec", LOSSES, ids=repr)
def test_special_value_pairs_losses(spec, dtype):
    s = _specials(dtype, huge=1e4, nonfinite=False, extreme=False)
    a, b = _pairs(s, s)
    n = a.size
    if spec.kind in ("multiclass", "regression"):
        x = np.stack([a, b], axis=1)
        y = (np.arange(n) % 2 if spec.kind == "multiclass" else np.stack([b, a], axis=1))
    else:
        x = a
        y = np.arange(n) % 2 if spec.kind == "binary01" else np.where(np.arange(n) % 2, 1, -1)
    run_and_check(spec, {"x": x, "y": y})


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("spec", OPTIM, ids=repr)
def test_special_value_pairs_update_rules(spec, dtype):
    ws = _specials(dtype, huge=1e3, nonfinite=False, extreme=False)
    gs = _specials(dtype, huge=1e3, extreme=False)
    w, dw = _pairs(ws, gs)
    inp = {"w": w, "dw": dw, "hyper": {"learning_rate": 0.1, "momentum": 0.9, "decay_rate": 0.9, "epsilon": 1e-8,
                                       "beta1": 0.9, "beta2": 0.999, "t": 2}}
    inp["hyper"] = {k: v for k, v in inp["hyper"].items() if k == "learning_rate" or
                    k in {"sgd_momentum": ("momentum",), "nesterov_momentum": ("momentum",),
                          "rmsprop": ("decay_rate", "epsilon"), "adam": ("beta1", "beta2", "epsilon", "t")}
                    .get(spec.rule, ())}
    for key in spec.state:
        inp[key] = np.abs(np.roll(w, 1)) if key in ("cache", "v") else np.roll(w, 2)
    run_and_check(spec, inp)
