"""The update rules (fastnn.optim) against the NumPy reference (fastnn.reference.optim) and
against the course's formulas evaluated here in float64: values over several steps, defaults
and config keys, in-place semantics, weight decay, thread invariance, argument checking.

Tolerances: each step does a handful of roundings per element (the kernel may contract a
multiply-add into an FMA, NumPy never does), so after a few steps parameters and states agree to
a few eps of their magnitude. They are compared with ``rtol * scale``, scale the largest
magnitude of the reference's value so far (over elements and steps: a result that came out of a
cancellation, w - update or mu * v - lr * dw, carries the error of its terms): rtol 1e-12 in
float64, 1e-5 in float32. A wrong formula moves w by a sizeable fraction of one step
(``learning_rate * |dw|`` >= 1e-3 here, against a tolerance of ~4e-5 in float32).
"""
import numpy as np
import pytest

import fastnn.optim as O
from fastnn.reference import optim as R

from conftest import assert_same_bits, assert_thread_invariant, course_optim_rules, openmp_workers_started

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
RULES = ["sgd", "sgd_momentum", "nesterov_momentum", "rmsprop", "adam"]
STATE = {"sgd": [], "sgd_momentum": ["velocity"], "nesterov_momentum": ["velocity"],
         "rmsprop": ["cache"], "adam": ["m", "v"]}
# the course's defaults
DEFAULTS = {
    "sgd": {"learning_rate": 1e-2},
    "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.9},
    "nesterov_momentum": {"learning_rate": 1e-2, "momentum": 0.9},
    "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8},
    "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
}
CUSTOM = {
    "sgd": {"learning_rate": 0.05},
    "sgd_momentum": {"learning_rate": 0.03, "momentum": 0.5},
    "nesterov_momentum": {"learning_rate": 0.03, "momentum": 0.7},
    "rmsprop": {"learning_rate": 0.02, "decay_rate": 0.9, "epsilon": 1e-6},
    "adam": {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-6},
}


def _maxabs(a):
    a = np.asarray(a, dtype=np.float64)
    return float(np.max(np.abs(a))) if a.size else 0.0


def assert_close_to(got, ref, dtype, what, scale=None):
    """|got - ref| <= rtol * scale; scale defaults to max|ref| (pass a larger one where the
    result came out of a cancellation: the rounding errors scale with the terms, not the sum)."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}"
    if got.size == 0:
        return
    scale = max(_maxabs(ref), scale or 0.0)
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    tol = RTOL[np.dtype(dtype)] * scale
    assert err <= tol, f"{what}: error {err:.3g} > {tol:.3g}"


def _steps(rule, w0, grads, config=None, ref_grads=None, ref_config=None):
    """Run fastnn and the reference side by side over the gradient list; compare after each.
    ref_config (default: config) is the reference's starting config.

    Scales are running maxima over the steps of |w| and of each state: w_new = w - update and
    v_new = mu * v - lr * dw can cancel, and then the error is relative to the terms (both at
    most the running maximum), not to the small result.

    From the second step on, the state arrays in config are the ones the first step returned,
    updated in place (fastnn owns them: the fast path, no copy per step)."""
    scales = {"w": _maxabs(w0)}
    w = w0.copy()
    rw = w0.copy()
    cfg = None if config is None else dict(config)
    ref_config = config if ref_config is None else ref_config
    rcfg = None if ref_config is None else dict(ref_config)
    ref_grads = grads if ref_grads is None else ref_grads
    owned = None
    for step, (dw, rdw) in enumerate(zip(grads, ref_grads)):
        rdw = rdw(rw) if callable(rdw) else rdw
        given = cfg
        nw, cfg = getattr(O, rule)(w, dw, cfg)
        assert given is None or cfg is given, "the config dict passed in is returned"
        assert nw is w, "a C-contiguous float w is updated in place and returned"
        if owned is None:
            owned = {key: cfg[key] for key in STATE[rule]}
        for key in STATE[rule]:
            assert cfg[key] is owned[key], f"{rule}: config['{key}'] replaced at step {step + 1}"
        rw, rcfg = getattr(R, rule)(rw, rdw, rcfg)
        scales["w"] = max(scales["w"], _maxabs(rw))
        assert_close_to(w, rw, w0.dtype, f"{rule} w after step {step + 1}", scales["w"])
        for key in STATE[rule]:
            scales[key] = max(scales.get(key, 0.0), _maxabs(rcfg[key]))
            assert_close_to(cfg[key], rcfg[key], w0.dtype, f"{rule} {key} after step {step + 1}", scales[key])
        if rule == "adam":
            assert cfg["t"] == rcfg["t"] == step + 1 + (config or {}).get("t", 0)
    return w, cfg


# ============================================================================ vs reference
@pytest.mark.parametrize("shape", [(1,), (7, 13), (3, 4, 5), (100_001,)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule", RULES)
def test_matches_reference_over_steps(rule, dtype, shape, rng):
    w0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(5)]
    _steps(rule, w0, grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule", RULES)
def test_custom_hyperparameters(rule, dtype, rng):
    w0 = rng.standard_normal((11, 17)).astype(dtype)
    grads = [rng.standard_normal(w0.shape).astype(dtype) for _ in range(4)]
    config = dict(CUSTOM[rule])
    if rule == "adam":
        config["t"] = 7
    _, cfg = _steps(rule, w0, grads, config)
    for key, value in CUSTOM[rule].items():
        assert cfg[key] == value, f"{key} was changed"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule", RULES)
def test_weight_decay_is_l2_on_the_gradient(rule, dtype, rng):
    """config['weight_decay'] = wd uses dw + wd * w (w before the step)."""
    wd = 0.1
    w0 = rng.standard_normal((9, 8)).astype(dtype)
    grads = [rng.standard_normal(w0.shape).astype(dtype) for _ in range(4)]
    ref_grads = [lambda rw, g=g: g + dtype(wd) * rw for g in grads]
    w, cfg = _steps(rule, w0, grads, {"weight_decay": wd}, ref_grads)
    assert cfg["weight_decay"] == wd
    # and it matters: without it the result is different
    w_plain, _ = _steps(rule, w0, grads)
    assert np.max(np.abs(w - w_plain)) > 1e-5


def test_empty_w(rng):
    for rule in RULES:
        w = np.zeros((0, 3))
        nw, cfg = getattr(O, rule)(w, np.zeros((0, 3)))
        assert nw is w and nw.shape == (0, 3)


# ============================================================================ defaults and config
@pytest.mark.parametrize("rule", RULES)
def test_course_defaults_after_first_call(rule, rng):
    w = rng.standard_normal((4, 5))
    dw = rng.standard_normal((4, 5))
    _, config = getattr(O, rule)(w, dw)           # config=None
    assert isinstance(config, dict)
    for key, value in DEFAULTS[rule].items():
        assert key in config, f"{rule}: missing config['{key}']"
        assert config[key] == value, f"{rule}: config['{key}'] = {config[key]!r}, course default {value!r}"
    for key in STATE[rule]:
        assert isinstance(config[key], np.ndarray)
        assert config[key].shape == w.shape and config[key].dtype == w.dtype
    if rule == "adam":
        assert config["t"] == 1, "Adam increments t before using it: 1 after the first call"
    extra = set(config) - set(DEFAULTS[rule]) - set(STATE[rule]) - {"t"}
    assert not extra, f"unexpected config keys {extra}"  # weight_decay only when given


@pytest.mark.parametrize("rule", RULES)
def test_given_config_dict_is_filled_in_and_returned(rule, rng):
    w = rng.standard_normal(6)
    config = {"learning_rate": 0.5}
    _, returned = getattr(O, rule)(w, np.ones(6), config)
    assert returned is config, "the course's rules setdefault on the caller's dict and return it"
    assert config["learning_rate"] == 0.5
    for key, value in DEFAULTS[rule].items():
        if key != "learning_rate":
            assert config[key] == value


def test_adam_t_counts_calls(rng):
    w = rng.standard_normal(5)
    config = None
    for expected in (1, 2, 3):
        _, config = O.adam(w, rng.standard_normal(5), config)
        assert config["t"] == expected
    _, config = O.adam(w, np.ones(5), {"t": 41})
    assert config["t"] == 42


# ============================================================================ known answers
def _course_arrays():
    """The course notebook's inputs: np.linspace over an N x D grid."""
    N, D = 4, 5
    w = np.linspace(-0.4, 0.6, num=N * D).reshape(N, D)
    dw = np.linspace(-0.6, 0.4, num=N * D).reshape(N, D)
    a = np.linspace(0.6, 0.9, num=N * D).reshape(N, D)
    b = np.linspace(0.7, 0.5, num=N * D).reshape(N, D)
    return w, dw, a, b


def _elementwise(f, *arrays):
    """Apply a scalar formula with Python floats, element by element (independent of NumPy's
    vectorized arithmetic and of the reference module)."""
    flat = [a.reshape(-1).tolist() for a in arrays]
    results = [f(*vals) for vals in zip(*flat)]
    outs = list(zip(*results)) if isinstance(results[0], tuple) else [results]
    return [np.array(o).reshape(arrays[0].shape) for o in outs]


def _assert_known(got, expected, what):
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * np.max(np.abs(expected)), err_msg=what)


def test_known_answer_sgd():
    w, dw, _, _ = _course_arrays()
    (expected,) = _elementwise(lambda w_, g: w_ - 1e-3 * g, w, dw)
    next_w, _ = O.sgd(w.copy(), dw, {"learning_rate": 1e-3})
    _assert_known(next_w, expected, "sgd next_w")


def test_known_answer_sgd_momentum():
    w, dw, v, _ = _course_arrays()
    lr, mu = 1e-3, 0.9

    def step(w_, g, v_):
        v_new = mu * v_ - lr * g
        return w_ + v_new, v_new

    expected_w, expected_v = _elementwise(step, w, dw, v)
    next_w, config = O.sgd_momentum(w.copy(), dw, {"learning_rate": lr, "velocity": v.copy()})
    _assert_known(next_w, expected_w, "sgd_momentum next_w")
    _assert_known(config["velocity"], expected_v, "sgd_momentum velocity")


def test_known_answer_nesterov_momentum():
    w, dw, v, _ = _course_arrays()
    lr, mu = 1e-3, 0.9

    def step(w_, g, v_):
        v_new = mu * v_ - lr * g
        return w_ - mu * v_ + (1 + mu) * v_new, v_new

    expected_w, expected_v = _elementwise(step, w, dw, v)
    next_w, config = O.nesterov_momentum(w.copy(), dw, {"learning_rate": lr, "velocity": v.copy()})
    _assert_known(next_w, expected_w, "nesterov next_w")
    _assert_known(config["velocity"], expected_v, "nesterov velocity")


def test_known_answer_rmsprop():
    w, dw, cache, _ = _course_arrays()
    lr, decay, eps = 1e-2, 0.99, 1e-8

    def step(w_, g, c):
        c_new = decay * c + (1 - decay) * g * g
        return w_ - lr * g / (c_new ** 0.5 + eps), c_new

    expected_w, expected_c = _elementwise(step, w, dw, cache)
    next_w, config = O.rmsprop(w.copy(), dw, {"learning_rate": lr, "cache": cache.copy()})
    _assert_known(next_w, expected_w, "rmsprop next_w")
    _assert_known(config["cache"], expected_c, "rmsprop cache")


def test_known_answer_adam():
    w, dw, m, v = _course_arrays()
    lr, b1, b2, eps, t = 1e-2, 0.9, 0.999, 1e-8, 5 + 1   # the notebook passes t=5

    def step(w_, g, m_, v_):
        m_new = b1 * m_ + (1 - b1) * g
        v_new = b2 * v_ + (1 - b2) * g * g
        mt = m_new / (1 - b1 ** t)
        vt = v_new / (1 - b2 ** t)
        return w_ - lr * mt / (vt ** 0.5 + eps), m_new, v_new

    expected_w, expected_m, expected_v = _elementwise(step, w, dw, m, v)
    next_w, config = O.adam(w.copy(), dw, {"learning_rate": lr, "m": m.copy(), "v": v.copy(), "t": 5})
    _assert_known(next_w, expected_w, "adam next_w")
    _assert_known(config["m"], expected_m, "adam m")
    _assert_known(config["v"], expected_v, "adam v")
    assert config["t"] == 6


@pytest.mark.parametrize("beta2,decay", [(0.999, 0.99), (0.9999, 0.999)])
def test_float32_moment_coefficients_are_accurate(beta2, decay):
    """One step from zero state: Adam's v = (1 - beta2) * g**2 and RMSProp's cache =
    (1 - decay_rate) * g**2, with the coefficient rounded to float32 once (the reference's
    float32 result), not computed from beta2 rounded to float32 (1 - fl32(0.999) is 1.3e-5 off)."""
    g = np.array([1.0, 2.0, 3.0, 0.5, 1e-3], dtype=np.float32)
    g2 = g.astype(np.float64) ** 2
    _, cfg = O.rmsprop(np.zeros(5, np.float32), g, {"decay_rate": decay})
    rtol = 4 * np.finfo(np.float32).eps    # the coefficient, g * g and their product: 3 roundings
    np.testing.assert_allclose(cfg["cache"], (1 - decay) * g2, rtol=rtol)
    _, cfg = O.adam(np.zeros(5, np.float32), g, {"beta2": beta2})
    np.testing.assert_allclose(cfg["v"], (1 - beta2) * g2, rtol=rtol)


# ============================================================================ in place or not
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule", RULES)
def test_in_place_on_contiguous_float_w(rule, dtype, rng):
    w = rng.standard_normal((6, 7)).astype(dtype)
    dw = rng.standard_normal((6, 7)).astype(dtype)
    w_before = w.copy()
    dw_before = dw.copy()
    expected, _ = getattr(R, rule)(w_before, dw)
    next_w, config = getattr(O, rule)(w, dw)
    assert next_w is w
    assert next_w.dtype == dtype
    assert_close_to(w, expected, dtype, f"{rule} in place")
    assert not np.array_equal(w, w_before)
    assert_same_bits(dw, dw_before, what="dw after the update")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule", RULES)
def test_dw_of_the_other_dtype_updates_in_w_dtype(rule, dtype, rng):
    """A dw of the other float dtype: the update runs in w's dtype, in place (README), the
    same bits as with dw converted to w's dtype first, and the caller's dw is unchanged."""
    other = np.float64 if dtype == np.float32 else np.float32
    w = rng.standard_normal((6, 7)).astype(dtype)
    dw = (rng.standard_normal((6, 7)) / 3).astype(other)
    dw_before = dw.copy()
    want, want_cfg = getattr(O, rule)(w.copy(), dw.astype(dtype))
    got, cfg = getattr(O, rule)(w, dw)
    assert got is w and got.dtype == dtype
    assert_same_bits(got, want, what=f"{rule}, dw {np.dtype(other)}")
    for key in set(cfg) & set(STATE[rule]):
        assert cfg[key].dtype == dtype
        assert_same_bits(cfg[key], want_cfg[key], what=key)
    assert_same_bits(dw, dw_before, what="dw after the update")


def _not_in_place_cases(rng):
    base = rng.standard_normal((6, 8))
    ro = base[:, :4].copy()
    ro.flags.writeable = False
    return {
        "fortran": np.asfortranarray(base[:, :4]),
        "column_slice": base[:, ::2],
        "negative_stride": base[::-1, :4],
        "int64": rng.integers(-5, 5, (6, 4)),
        "read_only": ro,
        "list": base[:, :4].tolist(),
        "float32_fortran": np.asfortranarray(base[:, :4].astype(np.float32)),
    }


@pytest.mark.parametrize("case", list(_not_in_place_cases(np.random.default_rng(0))))
@pytest.mark.parametrize("rule", RULES)
def test_new_array_when_w_cannot_be_updated_in_place(rule, case, rng):
    w = _not_in_place_cases(rng)[case]
    w_before = np.array(w, copy=True)
    dw = rng.standard_normal((6, 4))
    next_w, config = getattr(O, rule)(w, dw)
    assert next_w is not w
    assert isinstance(next_w, np.ndarray) and next_w.flags.c_contiguous
    assert_same_bits(np.asarray(w), w_before, what="w that cannot be updated in place")
    dtype = np.float32 if np.asarray(w).dtype == np.float32 else np.float64
    assert next_w.dtype == dtype
    w_float = np.ascontiguousarray(w_before, dtype=dtype)
    expected, _ = getattr(R, rule)(w_float, dw.astype(dtype))
    assert_close_to(next_w, expected, dtype, f"{rule} new array")
    for key in STATE[rule]:
        assert config[key].shape == (6, 4) and config[key].dtype == dtype


# ============================================================================ state arrays
# The update rules write into w (the documented exception) and into the state arrays fastnn
# itself allocated; a state array the caller put into config is copied on first use, and any
# aliasing between w, dw and the state arrays of one call is broken by a copy.
STATEFUL = [rule for rule in RULES if STATE[rule]]


def _state_values(rule, shape, dtype, rng):
    """Caller-made state: any sign for velocity and m, positive for cache and v (square roots)."""
    return {key: (np.abs(rng.standard_normal(shape)) + 0.1 if key in ("cache", "v")
                  else rng.standard_normal(shape)).astype(dtype)
            for key in STATE[rule]}


def _check_step(rule, w, dw, config, what):
    """One fastnn step against the reference run first, on copies of the same values (the
    reference never writes its inputs, so no aliasing changes its numbers). The scale is the
    largest input magnitude: the error of each result is relative to its terms."""
    def snapshot(a):
        return np.array(a, copy=True) if isinstance(a, np.ndarray) else a

    rconfig = {k: snapshot(v) for k, v in config.items()}
    arrays = [w, dw] + [v for v in rconfig.values() if isinstance(v, np.ndarray)]
    scale = max(_maxabs(a) for a in arrays)
    rw, rcfg = getattr(R, rule)(snapshot(w), snapshot(dw), rconfig)
    nw, cfg = getattr(O, rule)(w, dw, config)
    dtype = np.asarray(w).dtype
    assert_close_to(nw, rw, dtype, f"{what}: {rule} next_w", scale)
    for key in STATE[rule]:
        assert_close_to(cfg[key], rcfg[key], dtype, f"{what}: {rule} {key}", scale)
    return nw, cfg


@pytest.mark.parametrize("form", ["array", "memoryview"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule", STATEFUL)
def test_callers_state_arrays_are_never_written(rule, dtype, form, rng):
    """Over several steps the caller's state arrays keep every bit (also when handed over as a
    memoryview of an array, which NumPy wraps without a copy); the returned config holds
    fastnn's copies, which later steps update in place; the numbers are the reference's."""
    shape = (5, 6)
    w0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(4)]
    given = _state_values(rule, shape, dtype, rng)
    before = {key: a.copy() for key, a in given.items()}
    config = {key: memoryview(a) if form == "memoryview" else a for key, a in given.items()}
    _, cfg = _steps(rule, w0, grads, config, ref_config=dict(before))
    for key in STATE[rule]:
        assert_same_bits(given[key], before[key], what=f"the caller's config['{key}']")
        assert not np.may_share_memory(cfg[key], given[key])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule", STATEFUL)
def test_owned_state_is_updated_in_place(rule, dtype, rng):
    """The speed path: the state arrays of the returned config are the same objects step after
    step (no copy per call), their values the reference's (checked by _steps), also over a
    long w (the threaded kernel)."""
    for shape in [(3, 4), (100_001,)]:
        w0 = rng.standard_normal(shape).astype(dtype)
        grads = [rng.standard_normal(shape).astype(dtype) for _ in range(4)]
        w = w0.copy()
        _, cfg = getattr(O, rule)(w, grads[0])
        states = {key: cfg[key] for key in STATE[rule]}
        for g in grads[1:]:
            _, returned = getattr(O, rule)(w, g, cfg)
            assert returned is cfg
            for key in STATE[rule]:
                assert cfg[key] is states[key], f"{rule}: config['{key}'] was replaced"
        _steps(rule, w0, grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_adam_with_one_array_for_m_and_v(dtype, rng):
    """config['m'] and config['v'] one array: the caller's (NaN before), or fastnn's own after
    a step (config['v'] = config['m']: m keeps its array, v gets a copy)."""
    shape = (4, 5)
    w = rng.standard_normal(shape).astype(dtype)
    z = np.abs(rng.standard_normal(shape)).astype(dtype)
    z_before = z.copy()
    _, cfg = _check_step("adam", w, rng.standard_normal(shape).astype(dtype), {"m": z, "v": z}, "caller's m is v")
    assert_same_bits(z, z_before, what="the caller's m/v array")
    assert cfg["m"] is not cfg["v"]
    for _ in range(2):
        m = cfg["m"]
        np.abs(m, out=m)   # in place, so still fastnn's array; v must be >= 0 (square root)
        cfg["v"] = m
        _, cfg = _check_step("adam", w, rng.standard_normal(shape).astype(dtype), cfg, "fastnn's m is v")
        assert cfg["m"] is m and cfg["v"] is not m


def _owned_config(rule, w, rng):
    """A config whose state arrays fastnn made (one step from zeros), all positive values."""
    scratch = w.copy()
    _, cfg = getattr(O, rule)(scratch, np.abs(rng.standard_normal(w.shape)).astype(w.dtype))
    for key in STATE[rule]:
        np.abs(cfg[key], out=cfg[key])
        cfg[key] += 0.5
    return cfg


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule", STATEFUL)
def test_state_aliasing_w(rule, dtype, rng):
    """A state array that is w: the caller's (config = {'velocity': w}), or fastnn's own
    (w is config['velocity'], or another view of its memory)."""
    shape = (6, 5)
    w = (np.abs(rng.standard_normal(shape)) + 0.5).astype(dtype)
    nw, cfg = _check_step(rule, w, rng.standard_normal(shape).astype(dtype),
                          {key: w for key in STATE[rule]}, "caller's state is w")
    assert nw is w
    for key in STATE[rule]:
        assert not np.may_share_memory(cfg[key], w)
    for view in ("itself", "a view"):
        cfg = _owned_config(rule, w, rng)
        for key in STATE[rule]:
            w_alias = cfg[key] if view == "itself" else cfg[key].view()
            nw, cfg = _check_step(rule, w_alias, rng.standard_normal(shape).astype(dtype), cfg,
                                  f"w is fastnn's {key} ({view})")
            assert nw is w_alias
            for k in STATE[rule]:
                assert not np.may_share_memory(cfg[k], w_alias)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule", STATEFUL)
def test_state_aliasing_dw(rule, dtype, rng):
    """A state array that is dw or overlaps it: the caller's (dw itself, or the other end of one
    buffer: the caller's buffer keeps every bit), or fastnn's own passed as dw."""
    shape = (6, 5)
    n = int(np.prod(shape))
    w = rng.standard_normal(shape).astype(dtype)
    buf = (np.abs(rng.standard_normal(n + 3)) + 0.5).astype(dtype)
    before = buf.copy()
    cases = {
        "dw itself": (buf[:n].reshape(shape), lambda: buf[:n].reshape(shape)),
        "overlapping dw": (buf[3:].reshape(shape), lambda: buf[:n].reshape(shape)),
    }
    for what, (dw, make_state) in cases.items():
        _check_step(rule, w, dw, {key: make_state() for key in STATE[rule]}, f"caller's state, {what}")
        assert_same_bits(buf, before, what=f"the caller's buffer ({what})")
    for key in STATE[rule]:
        cfg = _owned_config(rule, w, rng)
        _, cfg = _check_step(rule, w, cfg[key], cfg, f"fastnn's {key} is dw")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule", RULES)
def test_w_and_dw_overlapping_views(rule, dtype, rng):
    """w and dw views of one buffer (shifted either way, or dw is w): dw is read as it was
    before the update; w is updated in place."""
    n = 41
    for shift in (1, -1, 7, 0):
        buf = rng.standard_normal(n + abs(shift)).astype(dtype)
        if shift > 0:
            w, dw = buf[shift:], buf[:n]
        elif shift < 0:
            w, dw = buf[:n], buf[-shift:]
        else:
            w, dw = buf, buf
        nw, _ = _check_step(rule, w, dw, {}, f"w and dw shifted by {shift}")
        assert nw is w


# ============================================================================ threads
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule", RULES)
def test_threads_bitwise_identical(rule, dtype, rng):
    w0 = rng.standard_normal(1_000_003).astype(dtype)
    grads = [rng.standard_normal(w0.shape).astype(dtype) for _ in range(2)]

    def run():
        w = w0.copy()
        config = {"weight_decay": 0.01}
        for g in grads:
            w, config = getattr(O, rule)(w, g, config)
        return [w] + [config[k] for k in STATE[rule]]

    assert_thread_invariant(run)


def test_large_update_runs_parallel():
    started = openmp_workers_started(
        "import fastnn.optim as O\nw = np.ones(1_000_003)\ndw = np.ones(1_000_003)",
        "O.adam(w, dw)")
    if started is None:
        pytest.skip("OpenMP worker threads cannot be observed here")
    assert started == 2


# ============================================================================ errors
@pytest.mark.parametrize("rule", RULES)
def test_argument_errors(rule):
    fn = getattr(O, rule)
    w = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"\bdw\b"):
        fn(w, np.ones((4, 3)))
    with pytest.raises(TypeError, match=r"\bdw\b"):
        fn(w, np.ones((3, 4), complex))
    with pytest.raises(TypeError, match=r"\bw\b"):
        fn(np.ones((3, 4), complex), np.ones((3, 4)))
    with pytest.raises(TypeError, match="config"):
        fn(w, np.ones((3, 4)), [("learning_rate", 0.1)])
    with pytest.raises(TypeError, match="learning_rate"):
        fn(w, np.ones((3, 4)), {"learning_rate": "0.1"})
    with pytest.raises(ValueError, match="weight_decay"):
        fn(w, np.ones((3, 4)), {"weight_decay": -0.1})
    for key in STATE[rule]:
        with pytest.raises(ValueError, match=key):
            fn(w, np.ones((3, 4)), {key: np.zeros((4, 3))})
    assert np.all(w == 1), "w changed by a call that raised"


def test_hyperparameter_ranges():
    w, dw = np.ones(3), np.ones(3)
    with pytest.raises(ValueError, match="momentum"):
        O.sgd_momentum(w, dw, {"momentum": -0.5})
    with pytest.raises(ValueError, match="decay_rate"):
        O.rmsprop(w, dw, {"decay_rate": 1.5})
    with pytest.raises(ValueError, match="beta1"):
        O.adam(w, dw, {"beta1": 1.5})
    with pytest.raises(ValueError, match="beta"):
        O.adam(w, dw, {"beta1": 1.0})
    with pytest.raises(ValueError, match=r"\bt\b"):
        O.adam(w, dw, {"t": -1})


# ---------------------------------------------------------------- the finiteness check of fit
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_all_finite_kernel_matches_numpy(dtype):
    """fastnn._kernels.optim.all_finite (fit's guard before an update) says what
    np.isfinite(x).all() says, for every special value at every position of short arrays (the
    vector body and the scalar tail) and at the end of a long one."""
    from fastnn._kernels.optim import all_finite

    info = np.finfo(dtype)
    specials = [np.nan, -np.nan, np.inf, -np.inf, info.max, -info.max, info.tiny / 4, -0.0,
                info.smallest_normal]
    # a NaN with a payload and the sign bit set, made from bits
    bits = np.array([-1], dtype=np.int32 if dtype == np.float32 else np.int64)
    specials.append(bits.view(dtype)[0])
    rng = np.random.default_rng(0)
    for n in list(range(0, 40)) + [1000, 4097]:
        base = rng.standard_normal(n).astype(dtype)
        assert all_finite(base) is True
        for pos in sorted({0, n // 2, n - 1}) if n else []:
            for v in specials:
                x = base.copy()
                x[pos] = v
                want = bool(np.isfinite(x).all())
                assert all_finite(x) is want, (n, pos, v)
                assert_same_bits(x[pos:pos + 1], np.array([v], dtype=dtype))  # not written


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_all_finite_kernel_on_threads_finds_every_chunk(dtype):
    """On several threads the check reads a large array in update_raw's chunks, a run of them
    per thread: a NaN or an Inf in the first, a middle or the last chunk (or the array's last
    element) is found whatever the thread count, and a finite array passes; an array below
    the threads' threshold is read on one."""
    from fastnn._kernels import _config as _kconfig
    from fastnn._kernels.optim import all_finite, parallel_seen

    rng = np.random.default_rng(1)
    n = 5 * 65536 + 7   # (five threads' worth, and a short last chunk)
    base = rng.standard_normal(n).astype(dtype)
    for threads in (1, 2, 3, 16):
        assert all_finite(base, threads) is True
        for pos in (0, 16384 * 9 + 5, n // 2, n - 8, n - 1):
            for v in (np.nan, np.inf, -np.inf):
                x = base.copy()
                x[pos] = v
                assert all_finite(x, threads) is False, (threads, pos, v)
    small = base[:1000].copy()
    small[-1] = np.nan
    assert all_finite(small, 16) is False
    if _kconfig.openmp_enabled():
        assert parallel_seen()   # (the large calls above ran a region on several threads)


# ============================================================================ the course's config
@pytest.mark.parametrize("given", [None, {}, {"learning_rate": 0.5}], ids=["None", "empty", "lr"])
@pytest.mark.parametrize("rule", RULES)
def test_config_keys_are_the_courses(rule, given, rng):
    """The returned config has the keys the course's rule leaves (its setdefault defaults and
    its state), no weight_decay among them, over several steps; the course's values for the
    hyperparameters."""
    course = course_optim_rules()[rule]
    w = rng.standard_normal((3, 4))
    ref_cfg = None if given is None else dict(given)
    cfg = None if given is None else dict(given)
    for _ in range(3):
        dw = rng.standard_normal((3, 4))
        _, ref_cfg = course(w.copy(), dw, ref_cfg)
        _, cfg = getattr(O, rule)(w.copy(), dw, cfg)
        assert set(cfg) == set(ref_cfg)
        for key, value in ref_cfg.items():
            if not isinstance(value, np.ndarray):
                assert cfg[key] == value and type(cfg[key]) is type(value), key


@pytest.mark.parametrize("rule", RULES)
def test_weight_decay_kept_when_given(rule, rng):
    """A weight_decay key the caller puts in is read (and stays, with its value); 0 is the
    plain rule."""
    w = rng.standard_normal((3, 4))
    dw = rng.standard_normal((3, 4))
    w_plain, plain = getattr(O, rule)(w.copy(), dw, {})
    w_zero, zero = getattr(O, rule)(w.copy(), dw, {"weight_decay": 0.0})
    assert zero["weight_decay"] == 0.0 and set(zero) == set(plain) | {"weight_decay"}
    assert_same_bits(w_zero, w_plain)
    _, decayed = getattr(O, rule)(w.copy(), dw, {"weight_decay": 0.25})
    assert decayed["weight_decay"] == 0.25


@pytest.mark.parametrize("t, t_next", [
    (0, 1), (5, 6), (np.int64(5), 6), (5.0, 6.0), (np.float64(5.0), 6.0), (0.0, 1.0),
    (2.5, 3.5), (1e6, 1e6 + 1.0),
], ids=repr)
def test_adam_t_any_finite_real(t, t_next, rng):
    """config['t'] as the course's ``t += 1`` takes it: a float (read back from JSON, say) too.
    An int stays an int, a float becomes t + 1.0, and the step is the course's for that t."""
    course = course_optim_rules()["adam"]
    w = rng.standard_normal((4, 5))
    dw = rng.standard_normal((4, 5))
    m = rng.standard_normal((4, 5))
    v = rng.uniform(0.5, 1.0, (4, 5))
    ref_w, ref_cfg = course(w.copy(), dw, {"learning_rate": 1e-2, "m": m.copy(), "v": v.copy(), "t": t})
    got_w, cfg = O.adam(w.copy(), dw, {"learning_rate": 1e-2, "m": m.copy(), "v": v.copy(), "t": t})
    assert cfg["t"] == t_next == ref_cfg["t"]
    assert type(cfg["t"]) is type(t_next)
    assert_close_to(got_w, ref_w, np.float64, "w", scale=_maxabs(w))
    for key in ("m", "v"):
        assert_close_to(cfg[key], ref_cfg[key], np.float64, key)


@pytest.mark.parametrize("t, t_next", [
    (np.array(5), 6), (np.array(5, np.uint8), 6), (np.array(5.0), 6.0), (np.array(0.5), 1.5),
], ids=repr)
def test_adam_t_zero_d_array(t, t_next, rng):
    """A 0-d array t (the course's ``config['t'] += 1`` takes one, as fastnn's other
    hyperparameters do) counts as its number: the course's step, t + 1 as a Python int or
    float, and the caller's array unchanged (the course's += would change it)."""
    course = course_optim_rules()["adam"]
    w = rng.standard_normal((4, 5))
    dw = rng.standard_normal((4, 5))
    ref_w, ref_cfg = course(w.copy(), dw, {"learning_rate": 1e-2, "t": t.copy()})
    got_w, cfg = O.adam(w.copy(), dw, {"learning_rate": 1e-2, "t": t})
    assert cfg["t"] == t_next == ref_cfg["t"] and type(cfg["t"]) is type(t_next)
    assert t == t_next - 1
    assert_close_to(got_w, ref_w, np.float64, "w", scale=_maxabs(w))


def test_adam_t_float32_is_counted_in_float64(rng):
    """A float32 t becomes the Python float t + 1.0 (the bias corrections are computed in
    float64; NumPy would compute ``beta ** float32(t)`` in float32)."""
    w = rng.standard_normal(4)
    got, cfg = O.adam(w.copy(), np.ones(4), {"t": np.float32(5.0)})
    assert type(cfg["t"]) is float and cfg["t"] == 6.0
    ref, _ = O.adam(w.copy(), np.ones(4), {"t": 5.0})
    assert_same_bits(got, ref)


@pytest.mark.parametrize("t, exc", [
    (-1, ValueError), (-0.5, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    (-float("inf"), ValueError), (np.float64("nan"), ValueError), (2**1100, ValueError),
    (True, TypeError), (np.bool_(True), TypeError), ("5", TypeError), (None, TypeError),
    (np.array(True), TypeError), (np.array([5]), TypeError), (np.array(1 + 0j), TypeError),
    (np.array(-1), ValueError), (np.array(np.nan), ValueError), (1 + 0j, TypeError),
], ids=repr)
def test_adam_t_refused(t, exc):
    """NaN, infinite, negative, bool and non-numbers are refused naming config['t'], before
    anything changes."""
    w = np.ones(3)
    config = {"t": t}
    with pytest.raises(exc, match=r"config\['t'\]"):
        O.adam(w, np.ones(3), config)
    assert np.all(w == 1.0)
    assert set(config) == {"t"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_compiled_path_takes_only_what_the_checked_path_would_do_the_same(dtype, rng):
    """O.sgd runs its common case in compiled code (optim.rule_fast). It must take exactly the
    calls the checked path would run in place, with the same bits, and hand every other one to
    the checked path untouched (that path converts, copies dw or names the problem)."""
    from fastnn._kernels import optim as ko
    w0 = rng.standard_normal((7, 5)).astype(dtype)
    dw = rng.standard_normal((7, 5)).astype(dtype)
    # taken: the same bits as the checked path (a NumPy float lr forces that path) and as the
    # reference, in place, config returned as given
    w = w0.copy()
    cfg = {"learning_rate": 0.05}
    assert ko.rule_fast(ko.SGD, w, dw, cfg, None, None, 2) is True
    w_checked, _ = O.sgd(w0.copy(), dw, {"learning_rate": np.float64(0.05)})
    assert_same_bits(w, w_checked)
    w_ref, _ = R.sgd(w0.copy(), dw, {"learning_rate": 0.05})
    np.testing.assert_allclose(w, w_ref, rtol=1e-6 if dtype == np.float32 else 1e-15)
    w = w0.copy()
    out, cfg_out = O.sgd(w, dw, cfg)
    assert out is w and cfg_out is cfg and cfg == {"learning_rate": 0.05}
    assert_same_bits(w, w_checked)
    assert ko.rule_fast(ko.SGD, np.zeros(0, dtype), np.zeros(0, dtype), {"learning_rate": 0.1}, None,
                        None, 2) is True
    # declined, and nothing written
    ro = w0.copy()
    ro.flags.writeable = False
    other = np.float64 if dtype == np.float32 else np.float32
    declined = [
        (w0.copy(), dw, None),                                      # no config: defaults to add
        (w0.copy(), dw, {}),
        (w0.copy(), dw, {"learning_rate": 1}),                      # an int: checked path
        (w0.copy(), dw, {"learning_rate": np.float32(0.05)}),
        (w0.copy(), dw, {"learning_rate": float("nan")}),
        (w0.copy(), dw, {"learning_rate": float("inf")}),
        (w0.copy(), dw, {"learning_rate": -0.5}),
        (w0.copy(), dw, {"learning_rate": 0.05, "weight_decay": 0.0}),
        (w0.copy(), dw.astype(other), {"learning_rate": 0.05}),
        (w0.copy(), dw.reshape(5, 7), {"learning_rate": 0.05}),
        (w0.copy(), np.asfortranarray(dw), {"learning_rate": 0.05}),
        (np.asfortranarray(w0), dw, {"learning_rate": 0.05}),
        (ro, dw, {"learning_rate": 0.05}),
        (w0.astype(np.float16), dw.astype(np.float16), {"learning_rate": 0.05}),
        (np.ma.MaskedArray(w0.copy()), dw, {"learning_rate": 0.05}),   # a subclass
        (w0.copy(), dw.tolist(), {"learning_rate": 0.05}),
        (w0.astype(w0.dtype.newbyteorder()), dw, {"learning_rate": 0.05}),  # not native
    ]
    for w_, dw_, cfg_ in declined:
        before = np.array(w_, copy=True)
        assert ko.rule_fast(ko.SGD, w_, dw_, cfg_, None, None, 2) is False, (w_.dtype, type(dw_), cfg_)
        assert_same_bits(np.asarray(w_), before)
    # w and dw overlapping (the same array, or views of one buffer): declined, and the
    # checked path gives the reference's numbers from a copy of dw
    buf = rng.standard_normal(12).astype(dtype)
    same = buf.copy()
    for w_, dw_ in ((same, same), (buf[:8], buf[4:])):
        want = np.array(w_) - 0.05 * np.array(dw_)
        assert ko.rule_fast(ko.SGD, w_, dw_, {"learning_rate": 0.05}, None, None, 2) is False
        got, _ = O.sgd(w_, dw_, {"learning_rate": 0.05})
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule,keys", [("sgd_momentum", ("velocity",)),
                                       ("nesterov_momentum", ("velocity",)),
                                       ("rmsprop", ("cache",)), ("adam", ("m", "v"))])
def test_stateful_rules_compiled_path(rule, keys, dtype, rng):
    """From its second call on (the state arrays are fastnn's own by then) a rule with state
    runs compiled (optim.rule_fast): the same bits in w, the state and Adam's t as the checked
    path (which a NumPy float learning rate forces), step after step; and every call the
    checked path must fill in, copy, convert or refuse is declined with nothing written."""
    from fastnn._kernels import optim as ko
    code = {"sgd_momentum": ko.MOMENTUM, "nesterov_momentum": ko.NESTEROV,
            "rmsprop": ko.RMSPROP, "adam": ko.ADAM}[rule]
    fn = getattr(O, rule)
    w_fast = rng.standard_normal((6, 5)).astype(dtype)
    w_checked = w_fast.copy()
    cfg_fast = {"learning_rate": 0.01}
    cfg_checked = {"learning_rate": np.float64(0.01)}
    for step in range(4):
        dw = rng.standard_normal((6, 5)).astype(dtype)
        state = [cfg_fast.get(k) for k in keys]
        probe = [None if a is None else a.copy() for a in state] + [None] * (2 - len(keys))
        took = ko.rule_fast(code, w_fast.copy(), dw, dict(cfg_fast), *probe, 2)
        assert took is (step > 0), step     # (the first call allocates the state: checked path)
        out, cfg_fast = fn(w_fast, dw, cfg_fast)
        assert out is w_fast
        w_checked, cfg_checked = fn(w_checked, dw, cfg_checked)
        assert_same_bits(w_fast, w_checked)
        for k in keys:
            assert_same_bits(cfg_fast[k], cfg_checked[k])
            assert cfg_fast[k] is state[keys.index(k)] or step == 0   # updated in place
        if rule == "adam":
            assert cfg_fast["t"] == cfg_checked["t"] == step + 1 and type(cfg_fast["t"]) is int
    # declined: nothing written to w, the state or config
    base = dict(cfg_fast)
    s = [base[k] for k in keys]
    pad = [None] * (2 - len(keys))

    def declined(cfg=None, w=None, dw=None, states=None):
        cfg = dict(base) if cfg is None else cfg
        w = w_fast.copy() if w is None else w
        dw = np.ones_like(w_fast) if dw is None else dw
        states = s + pad if states is None else states
        before = ([np.array(w, copy=True)] + [np.array(a, copy=True) for a in states if a is not None],
                  dict(cfg))
        assert ko.rule_fast(code, w, dw, cfg, *states, 2) is False
        after = [np.asarray(w)] + [np.asarray(a) for a in states if a is not None]
        for a, b in zip(after, before[0]):
            assert_same_bits(a, b)
        # (config untouched: the same keys holding the same objects; NaN != NaN, so not ==)
        assert cfg.keys() == before[1].keys() and all(cfg[k] is before[1][k] for k in cfg)

    hyper = {"sgd_momentum": ["momentum"], "nesterov_momentum": ["momentum"],
             "rmsprop": ["decay_rate", "epsilon"], "adam": ["beta1", "beta2", "epsilon"]}[rule]
    for key in ["learning_rate"] + hyper:
        for bad in (None, 1, np.float64(0.5), float("nan"), float("inf"), -0.5, True):
            cfg = dict(base)
            if bad is None:
                del cfg[key]
            else:
                cfg[key] = bad
            declined(cfg)
    for key in ("decay_rate", "beta1", "beta2"):
        if key in hyper:
            declined({**base, key: 1.5})
    if rule == "adam":
        for t in (None, 2.0, -1, True, 2**60, np.int64(3)):
            cfg = dict(base)
            if t is None:
                del cfg["t"]
            else:
                cfg["t"] = t
            declined(cfg)
        declined({**base, "beta1": 1.0})                    # a bias correction of 0
        declined(states=[s[0], s[0]])                       # m and v one array
    declined({**base, "weight_decay": 0.0})
    declined(dw=s[0].copy().view(np.ma.MaskedArray))
    declined(dw=s[0])                                       # dw is the state
    same = w_fast.copy()
    declined(w=same, dw=same)                               # dw is w
    declined(dw=np.ones((5, 6), dtype))
    declined(dw=np.ones((6, 5), np.float32 if dtype == np.float64 else np.float64))
    mine = [np.zeros_like(a) for a in s]
    for i in range(len(s)):
        for bad in (s[i].astype(np.float32 if dtype == np.float64 else np.float64), s[i][:3],
                    np.asfortranarray(s[i]), None, list(s[i])):
            states = list(s) + pad
            states[i] = bad
            declined(states=states)
        ro = s[i].copy()
        ro.flags.writeable = False
        states = list(s) + pad
        states[i] = ro
        declined(states=states)
        states = list(s) + pad
        shared = mine[i]
        states[i] = shared
        declined(w=shared, states=states)                   # w and the state one array


@pytest.mark.parametrize("rule,keys", [("sgd", ()), ("sgd_momentum", ("velocity",)),
                                       ("nesterov_momentum", ("velocity",)),
                                       ("rmsprop", ("cache",)), ("adam", ("m", "v"))])
def test_plain_rule_calls_take_the_compiled_path(monkeypatch, rule, keys, rng):
    """The wiring: from the call on that config holds fastnn's own state arrays (sgd: from the
    first), a plain call never reaches the kernel's memoryview entry point update(); state
    arrays the caller put into config take the checked path, which copies them and leaves the
    caller's arrays alone."""
    from fastnn._kernels import optim as ko
    calls = []
    real = ko.update

    def counted(*args):
        calls.append(args[0])
        return real(*args)
    monkeypatch.setattr(O._ko, "update", counted)
    fn = getattr(O, rule)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    cfg = {"learning_rate": 0.01}
    for step in range(4):
        w, cfg = fn(w, rng.standard_normal((4, 3)).astype(np.float32), cfg)
    assert len(calls) == (1 if keys else 0), calls
    if keys:
        calls.clear()
        mine = {k: np.zeros((4, 3), np.float32) for k in keys}
        cfg2 = {**{k: v for k, v in cfg.items() if k not in keys}, **mine}
        w2, cfg2 = fn(w.copy(), np.ones((4, 3), np.float32), cfg2)
        assert len(calls) == 1
        for k in keys:
            assert cfg2[k] is not mine[k]
            np.testing.assert_array_equal(mine[k], 0.0)
