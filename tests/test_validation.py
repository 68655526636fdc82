"""Argument checking of every public entry point: fastnn.functional, the fastnn.optim rules, the
loss objects, the layers, Sequential's methods and the thread controls.

The rules under test are the ones written in fastnn/_validation.py and the README ("Rules the API
keeps"):

- bad input raises ValueError or TypeError whose message names the argument (checked here with
  ``name in str(exc)``): wrong ndim/shape, mismatched operands, unsupported dtypes (complex,
  object, str, datetime, None), labels of the wrong type, sign, range or count, dropout
  probabilities outside (0, 1], bad modes, alpha of the wrong length, widths <= 0, dimensions
  above the BLAS limit of 2**31 - 1 (without allocating anything), garbage caches, thread
  counts <= 0 or not ints;
- int and bool arrays (and nested lists) are converted to float64; float16 to float32; a call
  that mixes float32 and float64 operands computes in float64; layers convert to their dtype;
  the update rules keep w's dtype (they write w in place);
- read-only, Fortran-ordered, strided and negative-stride arrays give bitwise the results of a
  C-contiguous copy, and no input is ever written (the update rules' w and state are the one
  documented exception);
- empty batches work where the result is defined (element-wise kernels, affine and the layers
  with N = 0) and raise where it is not (losses: the mean over no rows);
- NaN and Inf flow through like NumPy.
"""
import os
import re
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest

import fastnn
import fastnn.functional as F
import fastnn.optim as O
from fastnn import (Adam, BinaryCrossEntropy, BinaryHinge, Dense, Dropout, GaussianNoise, LeakyReLU, Maxout,
                    MeanSquaredError, MulticlassHinge, PReLU, ReLU, RMSProp, SGD, Sequential, Sigmoid,
                    SoftmaxCrossEntropy, Tanh)
from fastnn.reference import losses as RL
from fastnn.reference import optim as RO

from conftest import assert_same_bits, result_leaves
from kernel_specs import with_layout

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
BAD_ERRORS = (ValueError, TypeError)


def raises_naming(exc, name, fn, *args, **kwargs):
    """fn(*args, **kwargs) raises ``exc`` and its message names ``name``."""
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert name in msg, f"the message {msg!r} does not name {name!r}"
    return info.value


def assert_same_results(a, b, what):
    """The numbers and arrays of two results (caches skipped) bitwise equal."""
    la, lb = result_leaves(a, skip_other=True), result_leaves(b, skip_other=True)
    assert len(la) == len(lb), f"{what}: {len(la)} vs {len(lb)} outputs"
    for i, (x, y) in enumerate(zip(la, lb)):
        assert_same_bits(x, y, what=f"{what}: output {i}")


# ============================================================================ the call table
def _n(rng, shape, dtype=F64, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


class Call:
    """One public function and how to call it: ``build(rng, dtype)`` returns the positional
    arguments (running the forward first for a backward); ``operands`` maps the float-array
    arguments to their positions; ``promotes``: a float32/float64 mix computes in float64."""

    def __init__(self, name, fn, build, operands, kind="functional", promotes=True):
        self.name = name
        self.fn = fn
        self.build = build
        self.operands = operands
        self.kind = kind
        self.promotes = promotes

    def args(self, dtype=F64):
        """The same arguments on every call (a seed per call name)."""
        return self.build(np.random.default_rng(zlib.crc32(self.name.encode())), np.dtype(dtype))

    def __repr__(self):
        return self.name


def _act_fwd(kind):
    extra = {"leaky_relu": lambda rng, dt: [0.1], "prelu": lambda rng, dt: [_n(rng, 5, dt, 0.5)]}.get(
        kind, lambda rng, dt: [])
    return lambda rng, dt: [_n(rng, (4, 5), dt, 3.0)] + extra(rng, dt)


def _dense_fwd(act):
    def build(rng, dt):
        args = [_n(rng, (4, 2, 3), dt), _n(rng, (6, 5), dt, 0.4), _n(rng, 5, dt)]
        if act == "leaky_relu":
            args.append(0.1)
        elif act == "prelu":
            args.append(_n(rng, 5, dt, 0.5))
        return args
    return build


def _maxout_fwd(rng, dt):
    return [_n(rng, (4, 6), dt), _n(rng, (6, 3, 2), dt, 0.4), _n(rng, (3, 2), dt)]


def _backward(fwd_name, build_fwd, dout_shape):
    def build(rng, dt):
        out, cache = getattr(F, fwd_name)(*build_fwd(rng, dt))
        return [_n(rng, dout_shape, dt), cache]
    return build


def _loss_build(kind):
    def build(rng, dt):
        if kind == "multiclass":
            return [_n(rng, (4, 5), dt, 2.0), rng.integers(0, 5, 4)]
        if kind == "binary01":
            return [_n(rng, 4, dt, 2.0), rng.integers(0, 2, 4)]
        if kind == "binarypm":
            return [_n(rng, (4, 1), dt, 2.0), rng.choice([-1, 1], 4)]
        return [_n(rng, (4, 3), dt), _n(rng, (4, 3), dt)]
    return build


def _optim_build(rule):
    def build(rng, dt):
        return [_n(rng, (3, 4), dt), _n(rng, (3, 4), dt), None]
    return build


CALLS = []
for _k in ("relu", "leaky_relu", "sigmoid", "tanh", "prelu"):
    _ops = {"x": 0, "alpha": 1} if _k == "prelu" else {"x": 0}
    CALLS.append(Call(f"{_k}_forward", getattr(F, f"{_k}_forward"), _act_fwd(_k), _ops))
    CALLS.append(Call(f"{_k}_backward", getattr(F, f"{_k}_backward"),
                      _backward(f"{_k}_forward", _act_fwd(_k), (4, 5)), {"dout": 0}))
CALLS.append(Call("maxout_reduce_forward", F.maxout_reduce_forward,
                  lambda rng, dt: [_n(rng, (4, 3, 2), dt)], {"z": 0}))
CALLS.append(Call("maxout_reduce_backward", F.maxout_reduce_backward,
                  _backward("maxout_reduce_forward", lambda rng, dt: [_n(rng, (4, 3, 2), dt)], (4, 3)),
                  {"dout": 0}, promotes=False))  # the cache holds indices only
for _a in (None, "relu", "leaky_relu", "sigmoid", "tanh", "prelu"):
    _base = "affine" if _a is None else f"affine_{_a}"
    _ops = {"x": 0, "w": 1, "b": 2}
    if _a == "prelu":
        _ops["alpha"] = 3
    CALLS.append(Call(f"{_base}_forward", getattr(F, f"{_base}_forward"), _dense_fwd(_a), _ops))
    CALLS.append(Call(f"{_base}_backward", getattr(F, f"{_base}_backward"),
                      _backward(f"{_base}_forward", _dense_fwd(_a), (4, 5)), {"dout": 0}))
CALLS.append(Call("maxout_forward", F.maxout_forward, _maxout_fwd, {"x": 0, "w": 1, "b": 2}))
CALLS.append(Call("maxout_backward", F.maxout_backward, _backward("maxout_forward", _maxout_fwd, (4, 3)),
                  {"dout": 0}))
_LOSS_KIND = {"softmax_loss": "multiclass", "svm_loss": "multiclass", "logistic_loss": "binary01",
              "binary_svm_loss": "binarypm", "mse_loss": "regression"}
_LOSS_CLASS = {"softmax_loss": SoftmaxCrossEntropy, "svm_loss": MulticlassHinge,
               "logistic_loss": BinaryCrossEntropy, "binary_svm_loss": BinaryHinge,
               "mse_loss": MeanSquaredError}
for _name, _kind in _LOSS_KIND.items():
    _ops = {"x": 0, "y": 1} if _kind == "regression" else {"x": 0}
    CALLS.append(Call(_name, getattr(F, _name), _loss_build(_kind), _ops))
    CALLS.append(Call(_LOSS_CLASS[_name].__name__, _LOSS_CLASS[_name](), _loss_build(_kind), _ops, kind="loss"))
_DROP_FWD = lambda rng, dt: [_n(rng, (4, 5), dt), {"p": 0.7, "mode": "train", "seed": 3}]  # noqa: E731
_NOISE_FWD = lambda rng, dt: [_n(rng, (4, 5), dt), 0.5, "train", 3]  # noqa: E731
CALLS.append(Call("dropout_forward", F.dropout_forward, _DROP_FWD, {"x": 0}))
CALLS.append(Call("dropout_backward", F.dropout_backward, _backward("dropout_forward", _DROP_FWD, (4, 5)),
                  {"dout": 0}, promotes=False))  # the cache holds a seed only
CALLS.append(Call("gaussian_noise_forward", F.gaussian_noise_forward, _NOISE_FWD, {"x": 0}))
CALLS.append(Call("gaussian_noise_backward", F.gaussian_noise_backward,
                  _backward("gaussian_noise_forward", _NOISE_FWD, (4, 5)), {"dout": 0}, promotes=False))
for _r in ("sgd", "sgd_momentum", "nesterov_momentum", "rmsprop", "adam"):
    CALLS.append(Call(_r, getattr(O, _r), _optim_build(_r), {"w": 0, "dw": 1}, kind="optim", promotes=False))

BY_NAME = {c.name: c for c in CALLS}
assert len(BY_NAME) == len(CALLS)
OPERAND_CASES = [(c, op) for c in CALLS for op in c.operands]
OPERAND_IDS = [f"{c.name}-{op}" for c, op in OPERAND_CASES]


def test_call_table_covers_the_public_api():
    public = set(F.__all__) if hasattr(F, "__all__") else {n for n in dir(F) if not n.startswith("_")
                                                           and callable(getattr(F, n))}
    public = {n for n in public if n.endswith(("_forward", "_backward", "_loss"))}
    assert public <= set(BY_NAME), sorted(public - set(BY_NAME))
    assert set(O.__all__) <= set(BY_NAME)


# ============================================================================ dtypes
def _bad_dtype(a, kind):
    a = np.asarray(a)
    if kind == "complex":
        return a.astype(np.complex128)
    if kind == "object":
        return a.astype(object)
    if kind == "str":
        return a.astype(str)
    if kind == "datetime":
        return np.zeros(a.shape, dtype="datetime64[s]")
    if kind == "timedelta":
        return np.zeros(a.shape, dtype="timedelta64[s]")
    if kind == "pylist-of-str":
        return np.asarray(a).astype(str).tolist()
    if kind == "None":
        return None
    raise AssertionError(kind)


BAD_DTYPES = ["complex", "object", "str", "datetime", "timedelta", "pylist-of-str", "None"]


@pytest.mark.parametrize("kind", BAD_DTYPES)
@pytest.mark.parametrize("call,operand", OPERAND_CASES, ids=OPERAND_IDS)
def test_unsupported_dtype_raises_typeerror_naming_the_operand(call, operand, kind):
    args = call.args()
    args[call.operands[operand]] = _bad_dtype(args[call.operands[operand]], kind)
    raises_naming(TypeError, operand, call.fn, *args)


def _integer_valued(a, kind):
    """(the operand as ``kind``, the same values as float64)."""
    a = np.asarray(a)
    if kind == "bool":
        v = a > 0
    elif kind == "uint8":
        v = np.round(np.abs(a) * 3)
    else:
        v = np.round(a * 3)
    v = v + 0.0  # no -0.0: an integer has no sign of zero
    return v.astype(kind), v.astype(np.float64)


@pytest.mark.parametrize("kind", ["int64", "int32", "uint8", "bool"])
@pytest.mark.parametrize("call,operand", OPERAND_CASES, ids=OPERAND_IDS)
def test_int_and_bool_operands_are_converted_to_float64(call, operand, kind):
    """The documented rule: bool and integer arrays compute as float64 (np.tanh's rule); the
    result equals the call with the same values given as float64, bit for bit."""
    args, ref_args = call.args(), call.args()
    i = call.operands[operand]
    args[i], ref_args[i] = _integer_valued(args[i], kind)
    got = call.fn(*args)
    want = call.fn(*ref_args)
    for leaf in result_leaves(got, skip_other=True):
        if leaf.dtype.kind == "f":
            assert leaf.dtype == F64, f"{call}: {kind} {operand} gave a {leaf.dtype} result"
    assert_same_results(got, want, f"{call} with {kind} {operand}")


@pytest.mark.parametrize("call,operand", OPERAND_CASES, ids=OPERAND_IDS)
def test_nested_lists_work(call, operand):
    args, ref_args = call.args(), call.args()
    i = call.operands[operand]
    args[i] = np.asarray(args[i]).tolist()
    assert_same_results(call.fn(*args), call.fn(*ref_args), f"{call} with {operand} as a list")


@pytest.mark.parametrize("call,operand", [c for c in OPERAND_CASES if c[0].promotes],
                         ids=[i for c, i in zip(OPERAND_CASES, OPERAND_IDS) if c[0].promotes])
def test_mixed_float32_float64_computes_in_float64(call, operand):
    """One operand float32, the others float64 (for a backward: float32 dout on a float64
    cache): the result is float64 and equals the all-float64 call on the same values."""
    args, ref_args = call.args(), call.args()
    i = call.operands[operand]
    v32 = np.asarray(args[i]).astype(np.float32)
    args[i] = v32
    ref_args[i] = v32.astype(np.float64)
    if len(call.operands) == 1 and not call.name.endswith("_backward"):
        # a single operand: float32 stays float32 (nothing to promote against)
        for leaf in result_leaves(call.fn(*args), skip_other=True):
            if leaf.dtype.kind == "f" and leaf.ndim:
                assert leaf.dtype == F32
        return
    got = call.fn(*args)
    for leaf in result_leaves(got, skip_other=True):
        if leaf.dtype.kind == "f" and leaf.ndim:
            assert leaf.dtype == F64, f"{call}: float32 {operand} gave a {leaf.dtype} result"
    assert_same_results(got, call.fn(*ref_args), f"{call} with float32 {operand}")


@pytest.mark.parametrize("call", [c for c in CALLS if c.name.endswith("_backward") and c.promotes], ids=repr)
def test_float64_dout_on_float32_cache_computes_in_float64(call):
    args32 = call.args(F32)
    dout = args32[0].astype(np.float64)
    res = call.fn(dout, args32[1])
    for leaf in result_leaves(res, skip_other=True):
        if leaf.dtype.kind == "f" and leaf.ndim:
            assert leaf.dtype == F64
    # the float32 call on the same (float32-exact) dout agrees to float32 precision
    for a, b in zip(result_leaves(res, skip_other=True),
                    result_leaves(call.fn(args32[0], args32[1]), skip_other=True)):
        np.testing.assert_allclose(a, b.astype(np.float64), rtol=1e-5, atol=1e-6)


def test_float16_and_big_endian_operands():
    rng = np.random.default_rng(1)
    x = _n(rng, (4, 5), F32)
    y16, _ = F.relu_forward(x.astype(np.float16))
    assert y16.dtype == F32
    xb = x.astype(">f8")
    ybe, _ = F.tanh_forward(xb)
    assert ybe.dtype == F64
    assert_same_bits(ybe, F.tanh_forward(x.astype(np.float64))[0])


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "nesterov_momentum", "rmsprop", "adam"])
def test_update_rules_keep_the_dtype_of_w(rule):
    """The rules update w in place, so dw (and any state) is converted to w's dtype."""
    rng = np.random.default_rng(2)
    w = _n(rng, (3, 4), F32)
    dw = _n(rng, (3, 4), F64)
    w_ref = w.copy()
    nw, cfg = getattr(O, rule)(w, dw, None)
    assert nw is w and nw.dtype == F32
    nw_ref, _ = getattr(O, rule)(w_ref, dw.astype(np.float32), None)
    assert_same_bits(nw, nw_ref)
    for key in ("velocity", "cache", "m", "v"):
        if key in cfg:
            assert cfg[key].dtype == F32


# ============================================================================ layouts, read-only
@pytest.mark.parametrize("layout", ["F", "strided", "negstride", "readonly", "bigendian"])
@pytest.mark.parametrize("call", CALLS, ids=repr)
def test_layouts_give_the_same_bits_and_inputs_are_never_written(call, layout):
    args, ref_args = call.args(), call.args()
    laid = list(args)
    positions = list(call.operands.values())
    if call.kind in ("functional", "loss") and len(args) > 1 and isinstance(args[1], np.ndarray) \
            and args[1].dtype.kind == "i":
        positions.append(1)  # labels too
    for i in positions:
        laid[i] = with_layout(args[i], layout)
    before = {i: np.array(laid[i], copy=True) for i in positions}
    got = call.fn(*laid)
    want = call.fn(*ref_args)
    assert_same_results(got, want, f"{call} with {layout} operands")
    for i in positions:
        if call.kind == "optim" and i == 0:
            # w: updated in place only when it is a writeable C-contiguous float array
            if laid[0].flags.c_contiguous and laid[0].flags.writeable:
                continue
            assert got[0] is not laid[0]
        assert_same_bits(laid[i], before[i], what=f"{call}: argument {i} was written ({layout})")


@pytest.mark.parametrize("call", [c for c in CALLS if c.kind != "optim"], ids=repr)
def test_inputs_never_written(call):
    """Writeable C-contiguous inputs (the case a kernel could write through) are unchanged,
    and a cache can be used twice with the same result."""
    args = call.args()
    copies = [np.array(a, copy=True) if isinstance(a, np.ndarray) else None for a in args]
    first = call.fn(*args)
    for a, c in zip(args, copies):
        if c is not None:
            assert_same_bits(a, c, what=f"{call}: an input was written")
    assert_same_results(call.fn(*args), first, f"{call} called twice")


# ============================================================================ shapes
def _args_with(name, i, value):
    args = BY_NAME[name].args()
    args[i] = value(args) if callable(value) else value
    return BY_NAME[name], args


SHAPE_ERRORS = [
    # (call, argument position, bad value, exception, name in the message)
    ("affine_forward", 0, np.ones(6), ValueError, "w"),             # x 1-D: D = 1 row of w
    ("affine_forward", 0, np.float64(1.0), ValueError, "x"),        # 0-d x: no batch axis
    ("affine_forward", 1, np.ones(6), ValueError, "w"),
    ("affine_forward", 1, np.ones((6, 5, 1)), ValueError, "w"),
    ("affine_forward", 1, np.ones((7, 5)), ValueError, "w"),
    ("affine_forward", 2, np.ones((1, 5)), ValueError, "b"),
    ("affine_forward", 2, np.ones(4), ValueError, "b"),
    ("affine_relu_forward", 1, np.ones((5, 6)), ValueError, "w"),
    ("affine_prelu_forward", 3, np.ones(4), ValueError, "alpha"),   # one per unit: 5
    ("affine_prelu_forward", 3, np.ones((5, 1)), ValueError, "alpha"),
    ("affine_prelu_forward", 3, np.ones(6), ValueError, "alpha"),
    ("prelu_forward", 1, np.ones(4), ValueError, "alpha"),          # one per feature: 5
    ("prelu_forward", 1, np.ones((1, 5)), ValueError, "alpha"),
    ("prelu_forward", 1, [0.1] * 6, ValueError, "alpha"),
    ("maxout_forward", 1, np.ones((6, 3)), ValueError, "w"),
    ("maxout_forward", 2, np.ones(3), ValueError, "b"),
    ("maxout_forward", 2, np.ones((2, 3)), ValueError, "b"),
    ("maxout_reduce_forward", 0, np.ones((4, 3)), ValueError, "z"),
    ("maxout_reduce_forward", 0, np.ones((4, 3, 2, 1)), ValueError, "z"),
    ("maxout_reduce_forward", 0, np.ones((4, 3, 0)), ValueError, "z"),
    ("softmax_loss", 0, np.ones(4), ValueError, "x"),
    ("softmax_loss", 0, np.ones((4, 5, 1)), ValueError, "x"),
    ("softmax_loss", 0, np.ones((4, 0)), ValueError, "x"),
    ("svm_loss", 0, np.ones((4,)), ValueError, "x"),
    ("logistic_loss", 0, np.ones((4, 2)), ValueError, "x"),
    ("logistic_loss", 0, np.ones((4, 1, 1)), ValueError, "x"),
    ("binary_svm_loss", 0, np.ones((4, 3)), ValueError, "x"),
    ("mse_loss", 1, np.ones((4, 2)), ValueError, "y"),
    ("mse_loss", 1, np.ones((3, 3)), ValueError, "y"),
    ("mse_loss", 0, np.ones((4, 3, 1)), ValueError, "x"),
    ("relu_backward", 0, np.ones((4, 4)), ValueError, "dout"),
    ("sigmoid_backward", 0, np.ones(20), ValueError, "dout"),
    ("tanh_backward", 0, np.ones((5, 4)), ValueError, "dout"),
    ("leaky_relu_backward", 0, np.ones((4, 5, 1)), ValueError, "dout"),
    ("prelu_backward", 0, np.ones((4, 6)), ValueError, "dout"),
    ("maxout_reduce_backward", 0, np.ones((4, 2)), ValueError, "dout"),
    ("affine_backward", 0, np.ones((4, 6)), ValueError, "dout"),
    ("affine_backward", 0, np.ones((3, 5)), ValueError, "dout"),
    ("affine_backward", 0, np.ones(20), ValueError, "dout"),
    ("affine_relu_backward", 0, np.ones((4, 5, 1)), ValueError, "dout"),
    ("affine_prelu_backward", 0, np.ones((5, 5)), ValueError, "dout"),
    ("maxout_backward", 0, np.ones((4, 2)), ValueError, "dout"),
    ("dropout_backward", 0, np.ones((4, 6)), ValueError, "dout"),
    ("gaussian_noise_backward", 0, np.ones((5, 5)), ValueError, "dout"),
    ("sgd", 1, np.ones((4, 3)), ValueError, "dw"),
    ("adam", 1, np.ones(12), ValueError, "dw"),
    ("rmsprop", 1, np.ones((3, 4, 1)), ValueError, "dw"),
]


@pytest.mark.parametrize("name,i,value,exc,word", SHAPE_ERRORS,
                         ids=[f"{n}-{i}-{np.shape(v)}" for n, i, v, _, _ in SHAPE_ERRORS])
def test_wrong_shapes_name_the_argument(name, i, value, exc, word):
    call, args = _args_with(name, i, value)
    raises_naming(exc, word, call.fn, *args)


@pytest.mark.parametrize("pieces", [0, 128, 1000])
def test_maxout_pieces_out_of_range(pieces):
    raises_naming(ValueError, "w", F.maxout_forward, np.ones((4, 6)), np.ones((6, 3, pieces)), np.ones((3, pieces)))


@pytest.mark.parametrize("rule,key", [("sgd_momentum", "velocity"), ("nesterov_momentum", "velocity"),
                                      ("rmsprop", "cache"), ("adam", "m"), ("adam", "v")])
def test_update_rule_state_of_the_wrong_shape_or_dtype(rule, key):
    w, dw = np.ones((3, 4)), np.ones((3, 4))
    raises_naming(ValueError, f"config['{key}']", getattr(O, rule), w, dw, {key: np.zeros((4, 3))})
    raises_naming(TypeError, f"config['{key}']", getattr(O, rule), w, dw, {key: np.zeros((3, 4), complex)})
    assert_same_bits(w, np.ones((3, 4)))  # nothing was updated


CONFIG_ERRORS = [
    ("sgd", [1, 2], TypeError, "config"),
    ("sgd", {"learning_rate": "0.1"}, TypeError, "learning_rate"),
    ("sgd", {"learning_rate": float("nan")}, ValueError, "learning_rate"),
    ("sgd", {"learning_rate": None}, TypeError, "learning_rate"),
    ("sgd", {"weight_decay": -1.0}, ValueError, "weight_decay"),
    ("sgd_momentum", {"momentum": -0.1}, ValueError, "momentum"),
    ("nesterov_momentum", {"momentum": float("inf")}, ValueError, "momentum"),
    ("rmsprop", {"decay_rate": 1.5}, ValueError, "decay_rate"),
    ("rmsprop", {"epsilon": -1e-8}, ValueError, "epsilon"),
    ("adam", {"beta1": 1.0}, ValueError, "beta1"),
    ("adam", {"beta2": -0.5}, ValueError, "beta2"),
    ("adam", {"t": -1}, ValueError, "config['t']"),
    ("adam", {"t": float("nan")}, ValueError, "config['t']"),
    ("adam", {"t": True}, TypeError, "config['t']"),
    ("sgd", {"learning_rate": -1.0}, ValueError, "learning_rate"),
    ("sgd_momentum", {"learning_rate": -1e-3}, ValueError, "learning_rate"),
    ("rmsprop", {"learning_rate": -1.0}, ValueError, "learning_rate"),
    ("adam", {"learning_rate": -1.0}, ValueError, "learning_rate"),
    ("sgd", {"learning_rate": 10**400}, ValueError, "learning_rate"),
    ("adam", {"beta1": 10**400}, ValueError, "beta1"),
    ("adam", {"beta2": 2.0}, ValueError, "beta2"),
]


@pytest.mark.parametrize("rule,config,exc,word", CONFIG_ERRORS, ids=[f"{r}-{w}" for r, _, _, w in CONFIG_ERRORS])
def test_update_rule_config_errors(rule, config, exc, word):
    w = np.ones(5)
    before = dict(config) if isinstance(config, dict) else None
    raises_naming(exc, word, getattr(O, rule), w, np.ones(5), config)
    assert_same_bits(w, np.ones(5))
    if before is not None:   # a refused call leaves config as it was (no defaults, no state)
        assert config.keys() == before.keys(), (before, config)


@pytest.mark.parametrize("rule", O.__all__)
def test_update_rule_with_the_wrong_dw_leaves_config_alone(rule):
    config = {}
    raises_naming(ValueError, "dw", getattr(O, rule), np.ones(5), np.ones(4), config)
    assert config == {}
    O.sgd(np.ones(5), np.ones(5), config)   # and a good call still fills in the defaults
    assert config["learning_rate"] == 1e-2


def test_zero_learning_rate_is_allowed_in_the_course_rules():
    w = np.ones(5)
    for rule in O.__all__:
        w2, _ = getattr(O, rule)(w, np.ones(5), {"learning_rate": 0.0})
        assert_same_bits(w2, np.ones(5))


# ============================================================================ labels
MULTICLASS_LABELS = [
    (np.array([0.0, 1.0, 2.0, 3.0]), TypeError),          # float labels, even whole ones
    (np.array([0, 1, -1, 2]), ValueError),                # negative
    (np.array([0, 1, 5, 2]), ValueError),                 # == C
    (np.array([0, 1, 2**40, 2]), ValueError),             # far out of range
    (np.array([0, 1, 2]), ValueError),                    # wrong count
    (np.array([0, 1, 2, 3, 4]), ValueError),
    (np.array([[0], [1], [2], [3]]), ValueError),         # 2-D
    (np.array([True, False, True, True]), TypeError),     # bool is not a class index
    (np.array(["0", "1", "2", "3"]), TypeError),
    (None, TypeError),
    (np.array([0, 1, 2, 3], dtype=np.uint64), None),      # unsigned ints are fine
    ([0, 1, 2, 3], None),                                 # and lists
]


@pytest.mark.parametrize("loss", ["softmax_loss", "svm_loss", "SoftmaxCrossEntropy", "MulticlassHinge"])
@pytest.mark.parametrize("y,exc", MULTICLASS_LABELS, ids=[f"y{i}" for i in range(len(MULTICLASS_LABELS))])
def test_multiclass_labels(loss, y, exc):
    call = BY_NAME[loss]
    x = call.args()[0]
    if exc is None:
        assert_same_results(call.fn(x, y), call.fn(x, np.array([0, 1, 2, 3])), f"{loss} labels {y!r}")
    else:
        raises_naming(exc, "y", call.fn, x, y)


def test_class_label_range_check_names_the_first_bad_label():
    """class_labels' compiled range check (for labels already a contiguous intp array) finds
    the first label outside [0, C), as the NumPy expression does, and the error names it and
    its index; labels in range come back as the caller's own array (no copy)."""
    from fastnn._kernels import losses as kl
    from fastnn._validation import class_labels
    rng = np.random.default_rng(5)
    C = 7
    for n in (0, 1, 2, 9, 64, 1000):
        for _ in range(20):
            y = rng.integers(0, C, n).astype(np.intp)
            if n and rng.random() < 0.8:
                for i in rng.choice(n, size=rng.integers(1, min(n, 3) + 1), replace=False):
                    y[i] = rng.choice([-1, C, C + 1, -2**62, 2**62, np.iinfo(np.intp).min,
                                       np.iinfo(np.intp).max])
            bad = np.flatnonzero((y < 0) | (y >= C))
            want = int(bad[0]) if bad.size else -1
            assert kl.first_bad_class_label(y, C) == want, (y, want)
            if want < 0:
                assert class_labels(y, n, C) is y
            else:
                with pytest.raises(ValueError, match=rf"y must hold labels in \[0, {C}\), "
                                                     rf"got {y[want]} \(at index {want}\)"):
                    class_labels(y, n, C)
    y = np.array([0, 1, 2, 3, 4, 5], dtype=np.intp)
    assert kl.first_bad_class_label(y, 6) == -1 and kl.first_bad_class_label(y, 5) == 5
    assert kl.first_bad_class_label(y, 0) == 0
    # a strided or non-intp array takes the checked path, with the same answers
    for given, n in ((y[::2], 3), (y.astype(np.int32), 6)):
        got = class_labels(given, n, 6)
        assert got.dtype == np.intp and got.flags.c_contiguous
        np.testing.assert_array_equal(got, given)


BINARY_LABELS = {
    "logistic_loss": [(np.array([0, 1, 2, 1]), ValueError), (np.array([0, -1, 1, 1]), ValueError),
                      (np.array([0.0, 0.5, 1.0, 0.0]), ValueError), (np.array([0j, 1, 1, 0]), TypeError),
                      (np.array([0, 1, 1]), ValueError),
                      (None, TypeError), (np.array([0, 1, 1, 0, 1]), ValueError)],
    "binary_svm_loss": [(np.array([0, 1, -1, 1]), ValueError), (np.array([2, 1, -1, 1]), ValueError),
                        (np.array([1.0, -1.0, np.nan, 1.0]), ValueError), (np.array([1, -1]), ValueError),
                        (np.array(["a", "b", "c", "d"]), TypeError)],
}


@pytest.mark.parametrize("loss,y,exc", [(n, y, e) for n, cases in BINARY_LABELS.items() for y, e in cases],
                         ids=[f"{n}-{i}" for n, cases in BINARY_LABELS.items() for i in range(len(cases))])
def test_binary_labels(loss, y, exc):
    call = BY_NAME[loss]
    x = call.args()[0]
    raises_naming(exc, "y", call.fn, x, y)


@pytest.mark.parametrize("loss,y", [
    ("logistic_loss", np.array([0, 1, 2**64 - 1, 1], dtype=np.uint64)),  # -1 once cast to intp
    ("binary_svm_loss", np.array([1, 2**64 - 1, 1, 1], dtype=np.uint64)),
    ("logistic_loss", np.array([0, 1, 2**32 + 1, 1])),                   # 1 in the low 32 bits
    ("binary_svm_loss", np.array([1, -1, 2**63 - 1, 1])),
])
def test_binary_labels_out_of_range_integers(loss, y):
    """Labels are checked on their full value (a cast that wraps is no way in), and the error
    reports the label as given."""
    call = BY_NAME[loss]
    x = call.args()[0]
    bad = [v for v in y.tolist() if v not in ((0, 1) if loss == "logistic_loss" else (-1, 1))][0]
    with pytest.raises(ValueError, match=f"y.*got {bad}"):
        call.fn(x, y)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint8, np.int64])
def test_binary_labels_of_any_integer_dtype(dtype):
    x = np.array([0.5, -1.0, 2.0, 0.1])
    for fn, y in ((F.logistic_loss, [1, 0, 1, 1]), (F.binary_svm_loss, [1, -1, 1, 1])):
        if dtype == np.uint8 and fn is F.binary_svm_loss:
            continue
        assert_same_results(fn(x, np.array(y, dtype=dtype)), fn(x, np.array(y)), f"{fn.__name__} {dtype}")
        # a non-contiguous label array
        assert_same_results(fn(x, np.repeat(np.array(y, dtype=dtype), 2)[::2]), fn(x, np.array(y)),
                            "strided labels")


def test_binary_bool_labels_are_0_1():
    x = np.array([0.5, -1.0, 2.0])
    assert_same_results(F.logistic_loss(x, np.array([True, False, True])), F.logistic_loss(x, np.array([1, 0, 1])),
                        "bool labels")


# ============================================================================ dropout, noise, alpha
DROPOUT_PARAMS = [
    ({"p": 0}, ValueError, "p"), ({"p": 0.0}, ValueError, "p"), ({"p": -0.2}, ValueError, "p"),
    ({"p": 1.0000001}, ValueError, "p"), ({"p": 1.5}, ValueError, "p"), ({"p": float("nan")}, ValueError, "p"),
    ({"p": float("inf")}, ValueError, "p"), ({"p": "0.5"}, TypeError, "p"), ({"p": None}, TypeError, "p"),
    ({"p": True}, TypeError, "p"), ({"p": np.array([0.5, 0.5])}, TypeError, "p"), ({}, ValueError, "p"),
    ({"p": 0.5, "mode": "eval"}, ValueError, "mode"), ({"p": 0.5, "mode": None}, ValueError, "mode"),
    ({"p": 0.5, "mode": "TRAIN"}, ValueError, "mode"),
    ({"p": 0.5, "seed": -1}, ValueError, "seed"), ({"p": 0.5, "seed": 2**64}, ValueError, "seed"),
    ({"p": 0.5, "seed": 1.5}, TypeError, "seed"), ({"p": 0.5, "seed": "3"}, TypeError, "seed"),
    ({"p": 0.5, "seed": True}, TypeError, "seed"),
]


@pytest.mark.parametrize("param,exc,word", DROPOUT_PARAMS,
                         ids=[f"{i}-{w}" for i, (_, _, w) in enumerate(DROPOUT_PARAMS)])
def test_dropout_param_errors(param, exc, word):
    raises_naming(exc, word, F.dropout_forward, np.ones((3, 4)), param)


@pytest.mark.parametrize("bad", [None, [("p", 0.5)], 0.5, "p=0.5"])
def test_dropout_param_must_be_a_dict(bad):
    raises_naming(TypeError, "dropout_param", F.dropout_forward, np.ones((3, 4)), bad)


@pytest.mark.parametrize("p", [1.0, 0.5, 2.0**-16, np.float32(0.25), np.array(0.75)])
def test_dropout_valid_p(p):
    out, cache = F.dropout_forward(np.ones((3, 4)), {"p": p, "seed": 1})
    assert out.shape == (3, 4) and np.all((out == 0) | (out == np.float64(1.0) / float(p)))


NOISE_ERRORS = [((-0.1,), {}, ValueError, "std"), ((float("nan"),), {}, ValueError, "std"),
                (("1",), {}, TypeError, "std"), ((0.1,), {"mode": "eval"}, ValueError, "mode"),
                ((0.1,), {"mode": "train", "seed": "x"}, TypeError, "seed")]


@pytest.mark.parametrize("args,kwargs,exc,word", NOISE_ERRORS,
                         ids=[w + str(i) for i, (_, _, _, w) in enumerate(NOISE_ERRORS)])
def test_gaussian_noise_errors(args, kwargs, exc, word):
    raises_naming(exc, word, F.gaussian_noise_forward, np.ones((3, 4)), *args, **kwargs)


@pytest.mark.parametrize("fn", ["leaky_relu_forward", "affine_leaky_relu_forward"])
@pytest.mark.parametrize("alpha,exc", [(float("nan"), ValueError), (float("inf"), ValueError), ("0.1", TypeError),
                                       (None, TypeError), (np.ones(5), TypeError), (1j, TypeError)])
def test_leaky_alpha_errors(fn, alpha, exc):
    call = BY_NAME[fn]
    args = call.args()[:-1]
    raises_naming(exc, "alpha", call.fn, *args, alpha)


@pytest.mark.parametrize("fn", ["prelu_forward", "affine_prelu_forward"])
@pytest.mark.parametrize("alpha,exc", [(np.ones(2), ValueError), ("0.1", TypeError), (None, TypeError),
                                       (np.ones(5, complex), TypeError)])
def test_prelu_alpha_errors(fn, alpha, exc):
    call = BY_NAME[fn]
    args = call.args()[:-1]
    raises_naming(exc, "alpha", call.fn, *args, alpha)


# ============================================================================ BLAS limits
_OVERFLOW_SCRIPT = r"""
import os, resource, sys
# 3 GiB of address space: a kernel that copied a huge broadcast operand (or allocated an output
# for it) would get a MemoryError instead of the expected ValueError. (Not under AddressSanitizer,
# whose shadow memory reserves terabytes of address space; there a huge allocation fails anyway.)
if "libasan" not in os.environ.get("LD_PRELOAD", ""):
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
import numpy as np
import fastnn.functional as F
from numpy.lib.stride_tricks import as_strided

def huge(shape, dtype=np.float64):
    return np.broadcast_to(np.zeros((), dtype), shape)

def fake_contiguous(shape, dtype=np.float64):
    # A C-contiguous, read-only view of a huge shape over an 8-element buffer: any kernel that
    # read it would read far out of bounds (this process would crash), so only a check made
    # before any kernel call passes.
    base = np.zeros(8, dtype)
    itemsize = base.itemsize
    strides, acc = [], itemsize
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    v = as_strided(base, shape=shape, strides=tuple(reversed(strides)), writeable=False)
    assert v.flags.c_contiguous
    return v

B = 2**31
cases = {
    "N": lambda: F.affine_forward(np.empty((B, 0)), np.empty((0, 3)), np.zeros(3)),
    "N-relu": lambda: F.affine_relu_forward(huge((B, 1)), np.ones((1, 3)), np.zeros(3)),
    "D": lambda: F.affine_forward(np.empty((0, B)), np.empty((B, 0)), np.zeros(0)),
    "D-product": lambda: F.affine_forward(huge((1, 2**16, 2**16)), huge((2**32, 1)), np.zeros(1)),
    "D-product-3": lambda: F.affine_tanh_forward(huge((2, 2**11, 2**10, 2**10)), huge((2**31, 2)), np.zeros(2)),
    "M": lambda: F.affine_forward(np.ones((2, 1)), huge((1, B)), huge((B,))),
    "M-float32": lambda: F.affine_sigmoid_forward(np.ones((2, 1), np.float32), huge((1, B), np.float32),
                                                 huge((B,), np.float32)),
    "M-prelu": lambda: F.affine_prelu_forward(np.ones((2, 1)), huge((1, B)), huge((B,)), 0.25),
    "M-leaky": lambda: F.affine_leaky_relu_forward(np.ones((2, 1)), huge((1, B)), huge((B,)), 0.1),
    "maxout-M*k": lambda: F.maxout_forward(np.ones((2, 1)), huge((1, 2**25, 64)), huge((2**25, 64))),
    "maxout-D": lambda: F.maxout_forward(huge((1, B)), huge((B, 2, 2)), np.zeros((2, 2))),
    # C-contiguous operands (the fast path that skips conversions)
    "N-contiguous": lambda: F.affine_relu_forward(fake_contiguous((B, 1)), np.ones((1, 2)), np.zeros(2)),
    "D-contiguous": lambda: F.affine_forward(fake_contiguous((1, B)), fake_contiguous((B, 1)), np.zeros(1)),
    "M-contiguous": lambda: F.affine_forward(np.ones((1, 1)), fake_contiguous((1, B)), fake_contiguous((B,))),
    "M-contiguous-f32": lambda: F.affine_leaky_relu_forward(np.ones((1, 1), np.float32),
                                                           fake_contiguous((1, B), np.float32),
                                                           fake_contiguous((B,), np.float32), 0.1),
}
for name, fn in cases.items():
    try:
        fn()
        print(name, "no-error", "")
    except BaseException as exc:
        print(name, type(exc).__name__, str(exc).replace("\n", " ")[:200])
    sys.stdout.flush()
"""


def test_dimensions_above_the_blas_limit_raise_valueerror_without_allocating():
    """N, D (x.shape[1:] multiplied out) and M (for maxout M * pieces) must stay below 2**31 for
    BLAS's int arguments; larger ones are ValueErrors naming the dimension, raised before any
    operand is copied or any output allocated (run under a 3 GiB address-space limit, with
    broadcast operands that take no memory)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["FASTNN_NUM_THREADS"] = "1"
    env["OPENBLAS_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, "-c", _OVERFLOW_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [ln.split(" ", 2) for ln in res.stdout.strip().splitlines()]
    assert len(lines) == 15, res.stdout + res.stderr
    wrong = [" ".join(ln) for ln in lines if ln[1] != "ValueError" or "2**31" not in ln[2]]
    assert not wrong, "\n".join(wrong)
    named = {"N": "N", "N-relu": "N", "D": "D", "D-product": "D", "D-product-3": "D", "maxout-D": "D",
             "N-contiguous": "N", "D-contiguous": "D"}
    for name, what, msg in lines:
        if name in named:
            assert msg.startswith(named[name] + " "), msg
        else:
            assert "outputs" in msg, msg


def test_layer_widths_above_the_blas_limit():
    raises_naming(ValueError, "in_features", Dense, 2**31, 1)
    raises_naming(ValueError, "out_features", Dense, 1, 2**31)
    raises_naming(ValueError, "out_features", Maxout, 1, 2**31)


# ============================================================================ garbage caches
BACKWARDS = [c for c in CALLS if c.name.endswith("_backward")]
GARBAGE = [None, (), ("relu", np.ones((4, 5))), [np.ones((4, 5))], {"x": np.ones((4, 5))}, np.float64(1.0),
           "cache", 42]


@pytest.mark.parametrize("garbage", GARBAGE, ids=lambda g: type(g).__name__)
@pytest.mark.parametrize("call", BACKWARDS, ids=repr)
def test_garbage_cache_raises_naming_cache(call, garbage):
    dout = call.args()[0]
    if call.name == "relu_backward" and isinstance(garbage, np.ndarray):
        return  # relu_backward accepts the course's raw input array as its cache
    raises_naming(BAD_ERRORS, "cache", call.fn, dout, garbage)


@pytest.mark.parametrize("other", BACKWARDS, ids=repr)
@pytest.mark.parametrize("call", BACKWARDS, ids=repr)
def test_another_functions_cache_is_rejected(call, other):
    """A cache from another forward (even one whose arrays have matching shapes) is an error,
    never a silent result."""
    if call.name == other.name:
        return
    dout = call.args()[0]
    cache = other.args()[1]
    raises_naming(BAD_ERRORS, "cache", call.fn, dout, cache)


def _array_slots(cache):
    """(attribute path, array) for every array a cache holds, recursively."""
    found = []

    def visit(obj, path, depth):
        if depth > 3:
            return
        if isinstance(obj, np.ndarray):
            found.append((path, obj))
        elif isinstance(obj, tuple):
            for i, v in enumerate(obj):
                visit(v, path + (i,), depth + 1)
        elif hasattr(type(obj), "__slots__"):
            for s in type(obj).__slots__:
                visit(getattr(obj, s, None), path + (s,), depth + 1)

    visit(cache, (), 0)
    return found


def _replace(cache, path, value):
    """A copy of the cache chain along ``path`` with the array at ``path`` replaced."""
    import copy

    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(cache, tuple):
        items = list(cache)
        items[head] = _replace(cache[head], rest, value)
        return tuple(items)
    new = copy.copy(cache)
    setattr(new, head, _replace(getattr(cache, head), rest, value))
    return new


def _corruptions(a):
    return {"extra-row": np.zeros((a.shape[0] + 1,) + a.shape[1:], a.dtype) if a.ndim else np.zeros(2),
            "1-D": np.zeros(a.size + 3, a.dtype),
            "3-D": np.zeros((2, 2, 2), a.dtype),
            "None": None,
            "float-labels": np.zeros(a.shape, np.float64)}


CORRUPT_CASES = []
for _c in BACKWARDS:
    _cache = _c.args()[1]
    for _path, _arr in _array_slots(_cache):
        for _kind in _corruptions(_arr):
            if _kind == "float-labels" and _arr.dtype.kind == "f":
                continue
            CORRUPT_CASES.append((_c, _path, _kind))


@pytest.mark.parametrize("call,path,kind", CORRUPT_CASES,
                         ids=[f"{c.name}-{'.'.join(map(str, p))}-{k}" for c, p, k in CORRUPT_CASES])
def test_cache_with_replaced_arrays_raises(call, path, kind):
    """Every array inside a cache replaced by one of the wrong shape (or None): a ValueError or
    TypeError that names the cache (or dout, or w, when the mismatch is against them), never a
    crash, an IndexError, or a silent result."""
    dout, cache = call.args()
    arr = dict(_array_slots(cache))[path]
    bad = _replace(cache, path, _corruptions(arr)[kind])
    try:
        call.fn(dout, bad)
    except BAD_ERRORS as exc:
        msg = str(exc)
        assert any(w in msg for w in ("cache", "dout", "w ", "alpha")), f"the message {msg!r} names no argument"
    else:
        # only arrays that backward does not read may be replaced without an error (and the
        # caller's live PReLU slopes, which are optional: None means a scalar alpha)
        assert path[-1] in _UNREAD.get(call.name, ()) or (path == ("alpha_src",) and kind == "None"), \
            f"{call}: a corrupt cache ({path} {kind}) was accepted"


# arrays some caches keep that their backward does not read (the bias: it has no gradient input)
_UNREAD = {"affine_backward": ("b", "saved"), "affine_relu_backward": ("b",), "affine_leaky_relu_backward": ("b",),
           "affine_sigmoid_backward": ("b",), "affine_tanh_backward": ("b",), "affine_prelu_backward": ("b",),
           "maxout_backward": ("b", "w")}  # maxout keeps w as (D, M * k) for its forward only


# ============================================================================ threads
@pytest.mark.parametrize("fn", [fastnn.set_num_threads, fastnn.threads])
@pytest.mark.parametrize("n,exc", [(0, ValueError), (-1, ValueError), (-(2**40), ValueError), (2**31, ValueError),
                                   (2**64, ValueError), (1.5, TypeError),
                                   (2.0, TypeError), ("2", TypeError), (None, TypeError), (True, TypeError),
                                   ([2], TypeError), (np.float64(2), TypeError)])
def test_thread_count_errors(fn, n, exc):
    before = fastnn.get_num_threads()
    with pytest.raises(exc) as info:
        with fn(n) if fn is fastnn.threads else _noop(fn(n)):
            pass
    assert "n " in str(info.value) or str(info.value).startswith("n must"), str(info.value)
    assert fastnn.get_num_threads() == before


class _noop:
    def __init__(self, _):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("value", ["0", "-3", "two", "1.5", "2,4"])
def test_invalid_fastnn_num_threads_names_the_variable(value):
    env = dict(os.environ, FASTNN_NUM_THREADS=value)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", "import fastnn"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode != 0
    assert "ValueError" in res.stderr and "FASTNN_NUM_THREADS" in res.stderr


def test_numpy_integer_thread_count_accepted():
    from fastnn._kernels import _config

    expected = 2 if _config.openmp_enabled() else 1  # a serial build always runs 1 thread
    with fastnn.threads(np.int64(2)):
        assert fastnn.get_num_threads() == expected and type(fastnn.get_num_threads()) is int


# ============================================================================ empty batches
@pytest.mark.parametrize("call", [c for c in CALLS if c.kind != "loss" and not c.name.endswith("_loss")], ids=repr)
def test_empty_batch_works_where_defined(call):
    """N = 0: every function but the losses returns empty results of the right shapes (and
    zero gradients for the parameters)."""
    name = call.name
    fwd = name.replace("_backward", "_forward")
    fcall = BY_NAME.get(fwd, call)
    args = fcall.args()
    if fcall.kind == "optim":
        args[0], args[1] = np.zeros((0, 4)), np.zeros((0, 4))
    else:
        a0 = np.asarray(args[0])
        args[0] = np.zeros((0,) + a0.shape[1:])
    res = fcall.fn(*args)
    out = res[0]
    assert out.shape[0] == 0
    if name.endswith("_backward"):
        grads = call.fn(np.zeros(out.shape), res[1])
        grads = grads if isinstance(grads, tuple) else (grads,)
        assert grads[0].shape == np.shape(args[0])
        for g, like in zip(grads[1:], args[1:]):
            assert np.shape(g) == np.shape(like) and not np.any(g), f"{name}: nonzero gradient of an empty batch"


@pytest.mark.parametrize("call", [c for c in CALLS if c.name.endswith("_loss") or c.kind == "loss"], ids=repr)
def test_losses_refuse_an_empty_batch(call):
    x, y = call.args()
    raises_naming(ValueError, "x", call.fn, np.asarray(x)[:0], np.asarray(y)[:0])


# ============================================================================ NaN / Inf
@pytest.mark.parametrize("name", list(_LOSS_KIND))
def test_loss_nan_and_inf_like_the_numpy_reference(name):
    """NaN scores give a NaN loss; +-Inf scores give what the NumPy formulas give (NaN or Inf),
    never a silent finite number."""
    call = BY_NAME[name]
    x, y = call.args()
    for bad in (np.nan, np.inf, -np.inf):
        xb = np.array(x, copy=True)
        xb.reshape(-1)[1] = bad
        loss, dx = call.fn(xb, y)
        with np.errstate(all="ignore"):
            ref_loss, ref_dx = getattr(RL, name)(xb, y)
        assert np.isnan(loss) == np.isnan(ref_loss), (bad, loss, ref_loss)
        if np.isinf(ref_loss):
            assert loss == ref_loss, (bad, loss, ref_loss)
        elif np.isfinite(ref_loss):
            assert np.isfinite(loss) and abs(loss - ref_loss) <= 1e-12 * (1 + np.max(np.abs(xb[np.isfinite(xb)]))), \
                (bad, loss, ref_loss)


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "nesterov_momentum", "rmsprop", "adam"])
def test_update_rules_nan_and_inf_like_the_numpy_reference(rule):
    w = np.linspace(-1, 1, 6)
    dw = np.array([np.nan, np.inf, -np.inf, 0.5, -0.5, 0.0])
    got, _ = getattr(O, rule)(w.copy(), dw, None)
    with np.errstate(all="ignore"):
        ref, _ = getattr(RO, rule)(w.copy(), dw, None)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(got[np.isinf(ref)], ref[np.isinf(ref)])


def test_gaussian_noise_keeps_nan_and_inf():
    x = np.array([np.nan, np.inf, -np.inf, 1.0])
    out, _ = F.gaussian_noise_forward(x, 0.5, "train", 7)
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == -np.inf and np.isfinite(out[3])


# ============================================================================ layers
def _layers():
    return [
        ("Dense", lambda: Dense(6, 4, seed=0), (5, 6)),
        ("Dense-relu", lambda: Dense(6, 4, activation="relu", seed=0), (5, 6)),
        ("Dense-prelu-f64", lambda: Dense(6, 4, activation="prelu", dtype=np.float64, seed=0), (5, 6)),
        ("Dense-4d-input", lambda: Dense(6, 4, seed=0), (5, 2, 3)),
        ("ReLU", lambda: ReLU(), (5, 6)),
        ("Sigmoid-f32", lambda: Sigmoid(dtype=np.float32), (5, 6)),
        ("Tanh", lambda: Tanh(), (5, 6)),
        ("LeakyReLU", lambda: LeakyReLU(0.2), (5, 6)),
        ("PReLU", lambda: PReLU(6), (5, 6)),
        ("PReLU-shared", lambda: PReLU(), (5, 6)),
        ("Maxout", lambda: Maxout(6, 3, pieces=2, seed=0), (5, 6)),
        ("Dropout", lambda: Dropout(0.3, seed=1), (5, 6)),
        ("GaussianNoise", lambda: GaussianNoise(0.2, seed=1), (5, 6)),
    ]


LAYERS = _layers()
LAYER_IDS = [n for n, _, _ in LAYERS]


def _layer_run(make, x, dout=None):
    layer = make()
    out = layer.forward(x)
    d = np.ones(out.shape) if dout is None else dout
    dx = layer.backward(d)
    return out, dx, [g.copy() for g in layer.grads.values()]


@pytest.mark.parametrize("kind", BAD_DTYPES)
@pytest.mark.parametrize("name,make,shape", LAYERS, ids=LAYER_IDS)
def test_layer_bad_dtypes(name, make, shape, kind):
    x = np.random.default_rng(0).standard_normal(shape)
    layer = make()
    raises_naming(TypeError, "x", layer.forward, _bad_dtype(x, kind))
    out = layer.forward(x)
    raises_naming(TypeError, "dout", layer.backward, _bad_dtype(np.ones(out.shape), kind))


@pytest.mark.parametrize("kind", ["int64", "uint8", "bool", "list", "float16"])
@pytest.mark.parametrize("name,make,shape", LAYERS, ids=LAYER_IDS)
def test_layer_inputs_converted_to_the_layer_dtype(name, make, shape, kind):
    rng = np.random.default_rng(0)
    vals = np.round(3 * rng.standard_normal(shape))
    if kind == "list":
        x = vals.tolist()
    elif kind == "float16":
        x = vals.astype(np.float16)
    else:
        x, vals = _integer_valued(vals / 3, kind)
    layer = make()
    dt = layer.dtype or (F32 if kind == "float16" else F64)
    got = _layer_run(make, x)
    want = _layer_run(make, np.asarray(vals, dtype=dt))
    assert got[0].dtype == dt
    assert_same_results(got, want, f"{name} with {kind} input")


@pytest.mark.parametrize("layout", ["F", "strided", "negstride", "readonly", "bigendian"])
@pytest.mark.parametrize("name,make,shape", LAYERS, ids=LAYER_IDS)
def test_layer_layouts_and_inputs_never_written(name, make, shape, layout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    probe = make().forward(x)
    dout = rng.standard_normal(probe.shape).astype(np.float32)
    xl, dl = with_layout(x, layout), with_layout(dout, layout)
    xc, dc = xl.copy(), dl.copy()
    assert_same_results(_layer_run(make, xl, dl), _layer_run(make, x, dout), f"{name} {layout}")
    assert_same_bits(xl, xc)
    assert_same_bits(dl, dc)


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=LAYER_IDS)
def test_layer_empty_batch(name, make, shape):
    layer = make()
    x = np.zeros((0,) + shape[1:], np.float32)
    out = layer.forward(x)
    assert out.shape[0] == 0
    dx = layer.backward(np.zeros(out.shape, np.float32))
    assert dx.shape == x.shape
    for k, g in layer.grads.items():
        assert not np.any(g), f"{name}: grads[{k!r}] nonzero after an empty batch"


LAYER_SHAPE_ERRORS = [
    ("Dense", lambda: Dense(6, 4), np.ones((5, 7)), "x"),
    ("Dense-1d", lambda: Dense(6, 4), np.ones(6), "x"),
    ("Dense-0d", lambda: Dense(1, 4), np.float64(1.0), "x"),
    ("Maxout", lambda: Maxout(6, 3), np.ones((5, 5)), "x"),
    ("PReLU", lambda: PReLU(6), np.ones((5, 5)), "x"),
]


@pytest.mark.parametrize("name,make,x,word", LAYER_SHAPE_ERRORS, ids=[n for n, _, _, _ in LAYER_SHAPE_ERRORS])
def test_layer_wrong_input_shape(name, make, x, word):
    raises_naming(ValueError, word, make().forward, x)


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=LAYER_IDS)
def test_layer_wrong_dout_shape(name, make, shape):
    layer = make()
    out = layer.forward(np.ones(shape, np.float32))
    raises_naming(ValueError, "dout", layer.backward, np.ones((out.shape[0] + 1,) + out.shape[1:]))


LAYER_CTOR_ERRORS = [
    (lambda: Dense(3, 2, dtype=None), TypeError, "dtype"),
    (lambda: Maxout(3, 2, dtype=None), TypeError, "dtype"),
    (lambda: PReLU(2, dtype=None), TypeError, "dtype"),
    (lambda: Dense(3, 2, dtype=np.complex64), TypeError, "dtype"),
    (lambda: Dense(np.int64(0), 2), ValueError, "in_features"),
    (lambda: Dense(3, -(2**63)), ValueError, "out_features"),
    (lambda: Dense(3, None), TypeError, "out_features"),
    (lambda: Dense(3, 2, activation="leaky_relu", alpha=float("inf")), ValueError, "alpha"),
    (lambda: Maxout(3, 2, pieces=-1), ValueError, "pieces"),
    (lambda: PReLU(-3), ValueError, "num_parameters"),
    (lambda: PReLU(2, init=float("nan")), ValueError, "init"),
    (lambda: LeakyReLU(None), TypeError, "alpha"),
    (lambda: Dropout(None), TypeError, "p"),
    (lambda: GaussianNoise(float("inf")), ValueError, "std"),
]


@pytest.mark.parametrize("make,exc,word", LAYER_CTOR_ERRORS,
                         ids=[f"{i}-{w}" for i, (_, _, w) in enumerate(LAYER_CTOR_ERRORS)])
def test_layer_constructor_errors(make, exc, word):
    raises_naming(exc, word, make)


# ============================================================================ Sequential
def _compiled_model():
    """Dense layers only: train_step runs the whole-step kernel."""
    return Sequential(Dense(3, 4, seed=0), ReLU(), Dense(4, 3, seed=1))


def _dropout_model():
    """A Dropout between the Dense layers: train_step runs the whole-step kernel, which
    applies it."""
    return Sequential(Dense(3, 4, seed=0), ReLU(), Dropout(0.25, seed=2), Dense(4, 3, seed=1))


def _layerwise_model():
    """The same model forced onto the layer path: train_step runs layer by layer."""
    model = _dropout_model()
    model._compilable = False
    return model


MODELS = [("compiled", _compiled_model), ("dropout", _dropout_model),
          ("layerwise", _layerwise_model)]
X6 = np.random.default_rng(5).standard_normal((6, 3)).astype(np.float32)


@pytest.mark.parametrize("name,make", MODELS, ids=[m[0] for m in MODELS])
def test_the_models_take_the_path_they_are_named_for(name, make):
    model = make()
    opt = SGD(model.parameters(), lr=0.1)
    model.train_step(X6, np.arange(6) % 3, "softmax", opt)
    assert (model._compiled_step(X6, SoftmaxCrossEntropy(), opt) is None) == (name == "layerwise")

TRAIN_LABELS = [
    ("float", "softmax", np.arange(6.0) % 3, TypeError),
    ("negative", "softmax", np.array([0, 1, -1, 2, 0, 1]), ValueError),
    ("out-of-range", "softmax", np.array([0, 1, 3, 2, 0, 1]), ValueError),
    ("wrong-count", "softmax", np.array([0, 1, 2, 0, 1]), ValueError),
    ("bool", "softmax", np.array([True, False] * 3), TypeError),
    ("str", "svm", np.array(list("abcdef")), TypeError),
    ("None", "softmax", None, TypeError),
    ("2-D", "svm", np.zeros((6, 2), int), ValueError),
    ("column", "softmax", np.zeros((6, 1), int), ValueError),   # class labels are 1-D
    ("mse-wrong-shape", "mse", np.zeros((6, 2)), ValueError),
    ("mse-complex", "mse", np.zeros((6, 3), complex), TypeError),
]


@pytest.mark.parametrize("label_case", TRAIN_LABELS, ids=[c[0] for c in TRAIN_LABELS])
@pytest.mark.parametrize("mname,make", MODELS, ids=[m for m, _ in MODELS])
def test_train_step_label_errors_same_on_both_paths(mname, make, label_case):
    """The whole-step kernel and the layer-by-layer path refuse the same labels with the same
    exception type, naming y, and leave every parameter as it was."""
    _, loss, y, exc = label_case
    model = make()
    before = [p.data.copy() for p in model.parameters()]
    opt = Adam(model.parameters(), lr=0.1)
    raises_naming(exc, "y", model.train_step, X6, y, loss, opt)
    for p, b in zip(model.parameters(), before):
        assert_same_bits(p.data, b)
    assert opt.t == 0


SEQ_ERRORS = [
    ("forward-complex", lambda m: m.forward(np.ones((2, 3), complex)), TypeError, "X"),
    ("forward-None", lambda m: m.forward(None), TypeError, "X"),
    ("forward-features", lambda m: m.forward(np.ones((2, 4))), ValueError, "X must have shape"),
    ("forward-scalar", lambda m: m.forward(1.0), ValueError, "X"),
    ("backward-shape", lambda m: (m.forward(X6), m.backward(np.ones((6, 4))))[1], ValueError, "dout"),
    ("backward-dtype", lambda m: (m.forward(X6), m.backward(np.ones((6, 3), object)))[1], TypeError, "dout"),
    ("predict-batch-0", lambda m: m.predict(X6, batch_size=0), ValueError, "batch_size"),
    ("predict-batch-float", lambda m: m.predict(X6, batch_size=2.5), TypeError, "batch_size"),
    ("train_step-loss", lambda m: m.train_step(X6, np.zeros(6, int), "crossentropy", SGD(m.parameters())),
     ValueError, "loss"),
    ("train_step-optimizer-str", lambda m: m.train_step(X6, np.zeros(6, int), "softmax", "sgd"), TypeError,
     "optimizer"),
    ("train_step-optimizer-None", lambda m: m.train_step(X6, np.zeros(6, int), "softmax", None), TypeError,
     "optimizer"),
    ("train_step-X-features", lambda m: m.train_step(np.ones((6, 2)), np.zeros(6, int), "softmax",
                                                     SGD(m.parameters())), ValueError, "X must have shape"),
    ("train_step-empty", lambda m: m.train_step(X6[:0], np.zeros(0, int), "softmax", SGD(m.parameters())),
     ValueError, "X must hold"),
    ("fit-epochs-0", lambda m: m.fit(X6, np.zeros(6, int), epochs=0, verbose=False), ValueError, "epochs"),
    ("fit-epochs-float", lambda m: m.fit(X6, np.zeros(6, int), epochs=1.0, verbose=False), TypeError, "epochs"),
    ("fit-batch-neg", lambda m: m.fit(X6, np.zeros(6, int), batch_size=-1, verbose=False), ValueError, "batch_size"),
    ("fit-validation", lambda m: m.fit(X6, np.zeros(6, int), validation_data=X6, verbose=False), ValueError,
     "validation_data"),
    ("fit-optimizer", lambda m: m.fit(X6, np.zeros(6, int), optimizer="adam", verbose=False), TypeError,
     "optimizer"),
    ("fit-empty", lambda m: m.fit(X6[:0], np.zeros(0, int), verbose=False), ValueError, "X"),
    ("fit-y-count", lambda m: m.fit(X6, np.zeros(5, int), verbose=False), ValueError, "y"),
    ("fit-y-None", lambda m: m.fit(X6, None, verbose=False), TypeError, "y"),
    ("evaluate-y-count", lambda m: m.evaluate(X6, np.zeros(7, int)), ValueError, "y"),
    ("evaluate-empty", lambda m: m.evaluate(X6[:0], np.zeros(0, int)), ValueError, "X must hold"),
    ("evaluate-loss", lambda m: m.evaluate(X6, np.zeros(6, int), loss=3), TypeError, "loss"),
    ("evaluate-loss-name", lambda m: m.evaluate(X6, np.zeros(6, int), loss="softmaxx"), ValueError,
     "loss"),
    ("evaluate-labels", lambda m: m.evaluate(X6, np.full(6, 9)), ValueError, "y"),
    ("save-None", lambda m: m.save(None), TypeError, "path"),
    ("load-None", lambda m: m.load(None), TypeError, "path"),
    ("load-missing", lambda m: m.load("/nonexistent/dir/model.npz"), ValueError, "/nonexistent/dir/model.npz"),
]


@pytest.mark.parametrize("case", SEQ_ERRORS, ids=[c[0] for c in SEQ_ERRORS])
@pytest.mark.parametrize("mname,make", MODELS, ids=[m for m, _ in MODELS])
def test_sequential_method_errors(mname, make, case):
    _, fn, exc, word = case
    model = make()
    before = [p.data.copy() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raises_naming(exc, word, fn, model)
    for p, b in zip(model.parameters(), before):
        assert_same_bits(p.data, b)


SEQ_CTOR_ERRORS = [
    (lambda: Sequential(), ValueError, "layer"),
    (lambda: Sequential(3), TypeError, "layer 0"),
    (lambda: Sequential(Dense(3, 4), "relu"), TypeError, "layer 1"),
    (lambda: Sequential([Dense(3, 4), None]), TypeError, "layer 1"),
    (lambda: Sequential(Dense(3, 4), Dense(5, 2)), ValueError, "5"),
    (lambda: Sequential(Dense(3, 4), PReLU(5)), ValueError, "PReLU"),
    (lambda: Sequential(Dense(3, 4), Maxout(3, 2)), ValueError, "Maxout"),
]


@pytest.mark.parametrize("make,exc,word", SEQ_CTOR_ERRORS, ids=[str(i) for i in range(len(SEQ_CTOR_ERRORS))])
def test_sequential_constructor_errors(make, exc, word):
    raises_naming(exc, word, make)


@pytest.mark.parametrize("mname,make", MODELS, ids=[m for m, _ in MODELS])
def test_sequential_inputs_never_written_and_layouts(mname, make):
    """train_step, fit, predict and evaluate with read-only / Fortran / strided inputs: the
    results of C-contiguous copies, and the caller's arrays untouched."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((12, 3)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    for layout in ("readonly", "F", "strided", "negstride", "bigendian"):
        Xl, yl = with_layout(X, layout), with_layout(y, layout)
        Xc, yc = Xl.copy(), yl.copy()
        runs = []
        for Xa, ya in ((Xl, yl), (X, y)):
            model = make()
            opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
            losses = [model.train_step(Xa, ya, "softmax", opt) for _ in range(2)]
            hist = model.fit(Xa, ya, optimizer=opt, epochs=2, batch_size=5, seed=3, verbose=False)
            runs.append((losses, hist["loss"], model.predict(Xa), model.evaluate(Xa, ya)["loss"],
                         [p.data.copy() for p in model.parameters()]))
        assert_same_results(runs[0], runs[1], f"{mname} {layout}")
        assert_same_bits(Xl, Xc)
        assert_same_bits(yl, yc)


@pytest.mark.parametrize("mname,make", MODELS, ids=[m for m, _ in MODELS])
def test_sequential_empty_batch_forward_and_backward(mname, make):
    model = make()
    out = model.forward(np.zeros((0, 3), np.float32))
    assert out.shape == (0, 3)
    assert model.predict(np.zeros((0, 3))).shape == (0, 3)
    assert model.backward(np.zeros((0, 3), np.float32)).shape == (0, 3)


# ============================================================================ optimizers, losses
OPT_CTOR_ERRORS = [
    (lambda ps: SGD(ps, lr=float("nan")), ValueError, "lr"),
    (lambda ps: SGD(ps, lr=None), TypeError, "lr"),
    (lambda ps: SGD(ps, momentum=float("inf")), ValueError, "momentum"),
    (lambda ps: RMSProp(ps, decay_rate="0.9"), TypeError, "decay_rate"),
    (lambda ps: RMSProp(ps, eps=float("nan")), ValueError, "eps"),
    (lambda ps: Adam(ps, betas=(0.9, 1.0)), ValueError, "betas"),
    (lambda ps: Adam(ps, betas=(-0.1, 0.9)), ValueError, "betas"),
    (lambda ps: Adam(ps, betas=None), ValueError, "betas"),
    (lambda ps: Adam(ps, weight_decay=float("nan")), ValueError, "weight_decay"),
    (lambda ps: Adam(None), TypeError, "params"),
    (lambda ps: SGD([ps[0], "bias"]), TypeError, "params"),
]


@pytest.mark.parametrize("make,exc,word", OPT_CTOR_ERRORS, ids=[str(i) for i in range(len(OPT_CTOR_ERRORS))])
def test_optimizer_constructor_errors(make, exc, word):
    raises_naming(exc, word, make, _compiled_model().parameters())


@pytest.mark.parametrize("bad, exc", [("softmaxx", ValueError), (None, TypeError), (3, TypeError),
                                      (SoftmaxCrossEntropy.fn, TypeError)])
def test_unknown_loss_names_loss(bad, exc):
    """An unknown name is a ValueError, anything else that is not a loss a TypeError (the
    Python convention: the wrong type of argument)."""
    from fastnn.losses import get_loss

    raises_naming(exc, "loss", get_loss, bad)


def test_the_base_loss_class_is_refused():
    from fastnn.losses import Loss, get_loss

    for bad in (Loss, Loss()):
        raises_naming(TypeError, "computes nothing", get_loss, bad)


# ============================================================================ fit on a NaN loss
@pytest.mark.parametrize("bad", ["nan-loss", "nan-gradient"])
@pytest.mark.parametrize("opt_name", ["sgd", "sgd-momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("mname,make", MODELS, ids=[m for m, _ in MODELS])
def test_fit_stops_on_nan_loss_naming_the_step_and_keeps_the_state(mname, make, opt_name, bad, capsys):
    """A non-finite loss, or a finite loss with non-finite gradients, stops fit with a
    RuntimeWarning (and a printed line) naming the epoch and step, on both training paths and
    for every optimizer: the parameters and the optimizer state (Adam's step count included)
    are those after the last good step, exactly what a twin model reaches by running the good
    steps by hand.

    nan-gradient: an Inf input can leave the loss finite (every weight on the Inf feature is
    -1, so the ReLU maps the row's -inf pre-activations to 0) while the weight gradient
    x.T @ dz is NaN (inf * 0); the step that would write NaN into the parameters is the one
    to stop at."""
    make_opt = {"sgd": lambda ps: SGD(ps, lr=0.05),
                "sgd-momentum": lambda ps: SGD(ps, lr=0.05, momentum=0.9),
                "rmsprop": lambda ps: RMSProp(ps, lr=0.01),
                "adam": lambda ps: Adam(ps, lr=0.01)}[opt_name]
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 3)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model, twin = make(), make()
    # batch 3 (rows 20-29), no shuffling
    if bad == "nan-loss":
        X[27, 2] = np.nan
    else:
        X[27, 2] = np.inf
        for m in (model, twin):
            m.layers[0].params["W"][2, :] = -1.0
        assert np.isfinite(model.evaluate(X[20:30], y[20:30])["loss"])  # the case it claims
    opt, topt = make_opt(model.parameters()), make_opt(twin.parameters())
    with pytest.warns(RuntimeWarning) as record:
        history = model.fit(X, y, optimizer=opt, epochs=2, batch_size=10, shuffle=False, seed=0, verbose=True)
    msg = history.get("stopped")
    assert msg is not None and "epoch 1, step 3" in msg, msg
    assert ("gradients" in msg) == (bad == "nan-gradient"), msg
    assert any(str(r.message) == msg for r in record)
    assert msg in capsys.readouterr().out
    assert history["loss"] == []
    # the twin: the same seeds for its dropout, the two good steps by hand
    for layer in twin.layers:
        if isinstance(layer, Dropout):
            layer.reseed(int(np.random.default_rng(0).integers(0, 2**63 - 1)))
    for k in range(2):
        twin.train_step(X[10 * k:10 * k + 10], y[10 * k:10 * k + 10], "softmax", topt)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert np.all(np.isfinite(p.data))
        assert_same_bits(p.data, q.data, what=f"{p}")
    if opt_name == "adam":
        assert opt.t == topt.t == 2, (opt.t, topt.t)
    assert len(opt.state) == len(topt.state) == (0 if opt_name == "sgd" else len(opt.params))
    for p, q in zip(opt.params if opt.state else [], topt.params):
        for a, b in zip(opt.state[(id(p.layer), p.name)], topt.state[(id(q.layer), q.name)]):
            assert_same_bits(a, b, what="optimizer state")


def _guard_case(case, path):
    """A one-unit MSE model and a batch where exactly one thing is not finite:
    inf-loss: float64, W = 1e200, so the loss is 0.5 * 1e400 = inf while every gradient is
    1e200, finite; last-gradient: float32 PReLU, W = -1e30, so only the slope's gradient
    (dout * z = 2.5e29 * 1e30), the model's last parameter, overflows to inf. A Dropout(0)
    after the layer makes fit train layer by layer."""
    dtype = np.float64 if case == "inf-loss" else np.float32
    dense = Dense(1, 1, activation=None if case == "inf-loss" else "prelu", dtype=dtype, seed=0)
    dense.params["W"][...] = 1e200 if case == "inf-loss" else -1e30
    model = Sequential(dense, *([Dropout(0.0, dtype=dtype)] if path == "layerwise" else []))
    return model, np.ones((1, 1), dtype), np.zeros((1, 1), dtype)


@pytest.mark.parametrize("path", ["compiled", "layerwise"])
@pytest.mark.parametrize("case", ["inf-loss", "last-gradient"])
def test_fit_stops_when_only_the_loss_or_only_the_last_gradient_is_not_finite(case, path):
    """The guard checks the loss for infinities as well as NaN, and every parameter's
    gradient, the last one's too: fit stops before the step's update, parameters untouched."""
    model, X, y = _guard_case(case, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = model.forward(X, training=True)
        value, dscores = MeanSquaredError()(scores, y)
        model.backward(dscores)
    grads_finite = [bool(np.all(np.isfinite(p.grad))) for p in model.parameters()]
    if case == "inf-loss":   # (the case is what it claims)
        assert value == np.inf and all(grads_finite)
    else:
        assert np.isfinite(value) and grads_finite == [True] * (len(grads_finite) - 1) + [False]
    before = [p.data.copy() for p in model.parameters()]
    opt = SGD(model.parameters(), lr=1e-3)
    with pytest.warns(RuntimeWarning, match="epoch 1, step 1"):
        history = model.fit(X, y, loss="mse", optimizer=opt, epochs=1, batch_size=1, shuffle=False,
                            verbose=False)
    assert "epoch 1, step 1" in history["stopped"] and history["loss"] == []
    for p, b in zip(model.parameters(), before):
        assert_same_bits(p.data, b, what=f"{p}")
    assert (model._compiled_step(X, MeanSquaredError(), opt) is not None) == (path == "compiled")


@pytest.mark.parametrize("mname,make", MODELS, ids=[m for m, _ in MODELS])
def test_fit_stops_on_nan_regression_target(mname, make):
    model = make()
    X = np.random.default_rng(1).standard_normal((12, 3))
    Y = np.random.default_rng(2).standard_normal((12, 3))
    Y[7, 0] = np.nan
    with pytest.warns(RuntimeWarning, match=r"epoch 1, step 2"):
        history = model.fit(X, Y, loss="mse", epochs=3, batch_size=5, shuffle=False, verbose=False)
    assert "epoch 1, step 2" in history["stopped"]
    for p in model.parameters():
        assert np.all(np.isfinite(p.data))




@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_plan_checks_the_targets_shape_itself(dtype):
    """The whole-step kernel reads N x C regression targets through a pointer: a targets array
    of another shape is refused by StepPlan.step itself, not only by the model in front of it,
    and X of the wrong shape too. Read-only inputs are taken as they are (const views)."""
    from fastnn.losses import get_loss
    from fastnn._kernels import network

    model = Sequential(Dense(3, 4, activation="relu", seed=0, dtype=dtype), Dense(4, 2, seed=1, dtype=dtype))
    opt = SGD(model.parameters(), lr=0.1)
    X = np.random.default_rng(0).standard_normal((5, 3)).astype(dtype)
    Y = np.zeros((5, 2), dtype)
    model.train_step(X, Y, "mse", opt)
    plan = model._compiled_step(X, get_loss("mse"), opt).plan
    assert isinstance(plan, network.StepPlan)
    args = (0.1, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1)
    for bad in (np.zeros((4, 2), dtype), np.zeros((5, 1), dtype), np.zeros((5, 3), dtype)):
        with pytest.raises(ValueError, match="targets"):
            plan.step(X, None, bad, *args)
    with pytest.raises(ValueError, match="X"):
        plan.step(X[:4], None, Y, *args)
    # targets it cannot read, and X refused after the targets' buffer was taken: each named,
    # and no buffer left held (a held one keeps a reference to its array)
    other = np.float64 if dtype == np.float32 else np.float32
    cases = [(X, Y.astype(other), ValueError, "targets must be a 2-d array"),
             (X, np.asfortranarray(np.ones((5, 2), dtype)), ValueError,
              "targets must be a C-contiguous array"),
             (X, Y.ravel(), ValueError, "targets must be a 2-d array"),
             (X, Y.tolist(), TypeError, "targets must be a 2-d array"),
             (X.astype(other), Y, ValueError, "X must be a 2-d array"),
             (np.asfortranarray(X), Y, ValueError, "X must be a C-contiguous array")]
    for bad_x, bad_t, exc, msg in cases:
        refs = sys.getrefcount(bad_x), sys.getrefcount(bad_t)
        with pytest.raises(exc, match=msg):
            plan.step(bad_x, None, bad_t, *args)
        assert (sys.getrefcount(bad_x), sys.getrefcount(bad_t)) == refs, msg
    with pytest.raises(ValueError, match="regression targets"):
        plan.step(X, None, None, *args)
    Xr, Yr = X.copy(), Y.copy()
    Xr.setflags(write=False)
    Yr.setflags(write=False)
    assert np.isfinite(plan.step(Xr, None, Yr, *args))


@pytest.mark.parametrize("mname,make", MODELS, ids=[m for m, _ in MODELS])
@pytest.mark.parametrize("loss", ["binary_hinge", "logistic", "softmax"])
def test_train_step_labels_beyond_intp_are_refused(mname, make, loss):
    """uint64 labels an intp cannot hold are refused on both training paths (a cast to intp
    would turn 2**64 - 1 into -1, a valid binary hinge label), naming the label as given."""
    X = np.random.default_rng(3).standard_normal((8, 3)).astype(np.float32)
    model = make()
    if loss != "softmax":
        model = Sequential(*model.layers[:-1], Dense(4, 1, seed=1))
    ok = {"binary_hinge": 1, "logistic": 1, "softmax": 2}[loss]
    y = np.array([ok, 2**64 - 1] * 4, dtype=np.uint64)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="18446744073709551615"):
        model.train_step(X, y, loss, SGD(model.parameters(), lr=0.1))
    for p, b in zip(model.parameters(), before):
        assert_same_bits(p.data, b)


def test_integer_labels_beyond_intp_say_why_they_are_refused():
    """"y must hold integer labels, got 9223372036854775808" named an integer as not one (the
    whole-step path's message for a uint64 label an intp cannot hold); the message now says
    what is wrong with it. A float that is not whole keeps the plain message."""
    from fastnn._validation import int_labels
    with pytest.raises(ValueError, match=r"^y must hold integer labels, got 9223372036854775808 "
                                         rf"\(at index 2\), outside the range of {np.dtype(np.intp)}"):
        int_labels(np.array([0, 1, 2**63], np.uint64), 3)
    with pytest.raises(ValueError, match=r"^y must hold integer labels, got 0.5 \(at index 1\)$"):
        int_labels(np.array([0.0, 0.5]), 2, allow_float=True)


# ============================================================================ found by an audit
@pytest.mark.parametrize("fn", [F.affine_forward, F.affine_relu_forward, F.affine_sigmoid_forward,
                                F.affine_tanh_forward, F.affine_leaky_relu_forward])
def test_zero_d_w_names_w(fn):
    raises_naming(ValueError, "w", fn, np.ones((4, 5)), np.array(2.0), np.ones(3))


@pytest.mark.parametrize("make", [
    lambda: F.leaky_relu_forward(np.ones(3), 10**400),
    lambda: F.dropout_forward(np.ones(3), {"p": 10**400, "mode": "train", "seed": 0}),
    lambda: SGD(Sequential(Dense(5, 3)).parameters(), lr=10**400),
    lambda: Dense(3, 2, weight_init=10**400),
    lambda: Dense(3, 2, activation="leaky_relu", alpha=-(10**400)),
], ids=["leaky-alpha", "dropout-p", "SGD-lr", "weight_init", "Dense-alpha"])
def test_integers_beyond_float_range_are_valueerrors(make):
    with pytest.raises(ValueError, match="finite"):
        make()


@pytest.mark.parametrize("init,exc,word", [
    (lambda shape, rng, dt: np.zeros((7, 7)), ValueError, "weight_init returned shape"),
    (lambda shape, rng, dt: np.zeros(shape[::-1]), ValueError, "weight_init returned shape"),
    (lambda shape, rng, dt: np.zeros(shape, np.complex128), TypeError, "real"),
    (lambda shape, rng, dt: np.full(shape, np.inf), ValueError, "NaN or Inf"),
    # finite in float64, beyond float32 (the layers' default dtype): W was inf
    (lambda shape, rng, dt: np.full(shape, 1e300), ValueError, "beyond the range of float32"),
    (lambda shape, rng, dt: None, TypeError, "weight_init"),
    (float("inf"), ValueError, "weight_scale"),
    (float("nan"), ValueError, "weight_scale"),
])
@pytest.mark.parametrize("layer", ["Dense", "Maxout"])
def test_weight_init_results_are_checked(layer, init, exc, word):
    raises_naming(exc, word, {"Dense": Dense, "Maxout": Maxout}[layer], 3, 2, weight_init=init)


@pytest.mark.parametrize("name", ["he_normal", "xavier_normal", "scaled"])
def test_initializers_name_a_bad_rng(name):
    import fastnn.init as I

    init = I.scaled_normal(0.1) if name == "scaled" else getattr(I, name)
    raises_naming(TypeError, "rng", init, (2, 3), 0)
    assert init((2, 3), np.random.default_rng(0)).shape == (2, 3)


def test_maxout_weight_init_may_return_in_out_pieces():
    w = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    layer = Maxout(3, 2, pieces=4, weight_init=lambda shape, rng, dt: w)
    assert_same_bits(layer.params["W"], w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer", ["Dense", "Maxout"])
def test_weight_init_result_is_copied_not_trained_in_place(layer, dtype):
    """The array a weight_init of the caller's own returns becomes the layer's weights as a
    copy, whatever its dtype: before, one already of the layer's dtype (and C-contiguous) was
    kept as it was, so training changed the caller's array, two layers made by one initializer
    shared their weights, and a read-only one could not train."""
    shape = (3, 2 * (2 if layer == "Maxout" else 1))
    w0 = np.linspace(-0.5, 0.5, shape[0] * shape[1]).astype(dtype).reshape(shape)
    keep = w0.copy()
    w0.flags.writeable = False if dtype == np.float64 else True

    def make():
        if layer == "Maxout":
            return Maxout(3, 2, pieces=2, weight_init=lambda s, r, t: w0, dtype=dtype)
        return Dense(3, 2, weight_init=lambda s, r, t: w0, dtype=dtype)

    a, b = make(), make()
    for lay in (a, b):
        assert not np.shares_memory(lay.params["W"], w0)
        assert lay.params["W"].flags.writeable and lay.params["W"].flags.c_contiguous
        assert_same_bits(lay.params["W"].reshape(shape), keep)
    model = Sequential(a, Dense(2, 2, dtype=dtype))
    model.train_step(np.ones((4, 3), dtype), [0, 1, 0, 1], "softmax", SGD(model.parameters(), lr=0.5))
    assert not np.array_equal(a.params["W"].reshape(shape), keep)   # (it trained)
    assert_same_bits(w0, keep)
    assert_same_bits(b.params["W"].reshape(shape), keep)


BAD_STATES = [("adam", {"v": np.ones(4)}), ("adam", {"m": np.ones(4)}), ("adam", {"m": np.ones(5), "v": np.ones(6)}),
              ("rmsprop", {"cache": np.ones((5, 1))}), ("sgd_momentum", {"velocity": np.ones(6)}),
              ("nesterov_momentum", {"velocity": np.ones(4)})]


@pytest.mark.parametrize("rule,config", BAD_STATES, ids=[f"{r}-{'-'.join(c)}" for r, c in BAD_STATES])
def test_update_rule_with_a_bad_state_leaves_config_alone(rule, config):
    config = {k: v.copy() for k, v in config.items()}
    before = {k: v.copy() for k, v in config.items()}
    bad = next(k for k, v in config.items() if v.shape != (5,))
    raises_naming(ValueError, f"config['{bad}']", getattr(O, rule), np.ones(5), np.ones(5), config)
    assert config.keys() == before.keys()
    for k in config:
        assert_same_bits(config[k], before[k])


def test_shapes_are_checked_before_huge_views_are_copied():
    """A wrong-shaped broadcast view of a huge shape is refused by its shape, not copied into
    a MemoryError."""
    huge = np.broadcast_to(np.float64(1.0), (4, 2**40))
    _, cache = F.affine_forward(np.ones((4, 5)), np.ones((5, 3)), np.ones(3))
    raises_naming(ValueError, "dout", F.affine_backward, np.broadcast_to(1.0, (2**40, 3)), cache)
    raises_naming(ValueError, "dw", O.sgd, np.ones((4, 5)), np.broadcast_to(0.0, (2**40,)))
    raises_naming(ValueError, "x", Dense(5, 3, dtype=np.float64).forward, huge)
    raises_naming(ValueError, "y", F.mse_loss, np.ones((4, 3)), np.broadcast_to(0.0, (2**40, 3)))


def test_mse_loss_of_zero_outputs_is_the_references():
    x, y = np.zeros((4, 0)), np.zeros((4, 0))
    loss, dx = F.mse_loss(x, y)
    rloss, rdx = RL.mse_loss(x, y)
    assert loss == rloss == 0.0 and dx.shape == rdx.shape == (4, 0)


@pytest.mark.parametrize("seed,exc", [(-1, ValueError), ("x", TypeError), (1.5, TypeError),
                                      (True, TypeError), ([1, -2], TypeError)])
def test_fit_checks_its_seed(seed, exc):
    model = Sequential(Dense(5, 3))
    raises_naming(exc, "seed", model.fit, np.ones((4, 5)), np.zeros(4, int), seed=seed, verbose=False)


def test_fit_takes_what_default_rng_takes():
    def run(seed):
        model = Sequential(Dense(5, 3, seed=0), Dropout(0.5), Dense(3, 2, seed=1))
        r = np.random.default_rng(3)
        model.fit(r.standard_normal((8, 5)), r.integers(0, 2, 8), epochs=2, batch_size=4, seed=seed,
                  verbose=False)
        return [p.data.copy() for p in model.parameters()]

    ref = run(7)
    for seed in (np.int64(7), np.random.SeedSequence(7), np.random.default_rng(7)):
        for a, b in zip(run(seed), ref):
            assert_same_bits(a, b)
    run([1, 2])


def test_gradcheck_arguments():
    from fastnn import gradcheck as G

    f = lambda a: float(np.sum(a ** 2))   # noqa: E731
    for fn, extra in ((G.eval_numerical_gradient, {"verbose": False}), (G.eval_numerical_gradient_array, None),
                      (G.grad_check_sparse, None)):
        def call(x, h=1e-5, fn=fn, extra=extra):
            if fn is G.eval_numerical_gradient:
                return fn(f, x, h=h, **extra)
            if fn is G.eval_numerical_gradient_array:
                return fn(lambda a: a * 2, x, np.ones_like(x), h=h)
            return fn(f, x, 2 * x, num_checks=2, h=h)
        raises_naming(ValueError, "h", call, np.ones(3), 0.0)
        raises_naming(ValueError, "h", call, np.ones(3), float("nan"))
        raises_naming(TypeError, "x", call, np.ones(3, int))
        raises_naming(TypeError, "x", call, np.ones(3, np.float16))
        raises_naming(TypeError, "x", call, [1.0, 2.0])
        ro = np.ones(3)
        ro.flags.writeable = False
        raises_naming(ValueError, "x", call, ro)
    raises_naming(ValueError, "analytic_grad", G.grad_check_sparse, f, np.ones(3), np.ones(4))
    assert G.rel_error(np.zeros(0), np.zeros(0)) == 0.0


def test_solver_data_and_check_accuracy_arguments():
    from fastnn.models import TwoLayerNet
    from fastnn.solver import Solver

    r = np.random.default_rng(0)
    X, y = r.standard_normal((10, 4)), r.integers(0, 3, 10)
    data = {"X_train": X.tolist(), "y_train": y.tolist(), "X_val": X, "y_val": y}
    solver = Solver(TwoLayerNet(4, 5, 3, seed=0), data, num_epochs=1, batch_size=5, verbose=False)
    assert isinstance(solver.X_train, np.ndarray) and solver.X_train.shape == (10, 4)
    solver.train()
    raises_naming(TypeError, "data['X_train']",
                  Solver, TwoLayerNet(4, 5, 3), dict(data, X_train=[{"a": 1}] * 10), verbose=False)
    raises_naming(ValueError, "data['y_val']", Solver, TwoLayerNet(4, 5, 3), dict(data, y_val=3), verbose=False)
    raises_naming(ValueError, "y", solver.check_accuracy, X, y[:7])
    raises_naming(ValueError, "y", solver.check_accuracy, X, y[:7], num_samples=5)
    raises_naming(ValueError, "data['X_val']", Solver, TwoLayerNet(4, 5, 3), dict(data, X_val=np.float64(1)),
                  verbose=False)
    # (N, 1) targets of a duck-typed model train as before (the accuracy means little there)
    assert 0.0 <= solver.check_accuracy(X, y[:, None]) <= 1.0
    assert 0.0 <= solver.check_accuracy(X.tolist(), y, num_samples=5) <= 1.0


REPLACED = [
    ("params", "W", lambda: np.ones((5, 2)), TypeError, "dtype float32"),
    ("params", "W", lambda: np.asfortranarray(np.ones((5, 2), np.float32)), ValueError, "C-contiguous"),
    ("params", "W", lambda: np.ones((5, 3), np.float32), ValueError, "shape (5, 2)"),
    ("params", "b", lambda: [0.0, 0.0], TypeError, "ndarray"),
    ("grads", "W", lambda: np.zeros((5, 2)), TypeError, "dtype float32"),
    ("grads", "W", lambda: np.zeros((2, 5), np.float32), ValueError, "shape (5, 2)"),
    ("grads", "b", lambda: None, TypeError, "ndarray"),
    ("grads", "W", lambda: _read_only(np.zeros((5, 2), np.float32)), ValueError, "writeable"),
    ("grads", "b", lambda: np.zeros(4, np.float32)[::2], ValueError, "C-contiguous"),
]


def _read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("kind,name,make,exc,word", REPLACED,
                         ids=[f"{k}-{n}-{w}" for k, n, _, _, w in REPLACED])
@pytest.mark.parametrize("path", ["compiled", "layerwise", "backward"])
def test_a_replaced_param_or_grad_is_named(path, kind, name, make, exc, word):
    """A params / grads entry replaced by something the kernels cannot write gets an error
    naming it, on either training path and in backward, before anything is updated."""
    layers = [Dense(5, 2, seed=0)] + ([Dropout(0.25, seed=1)] if path == "layerwise" else [])
    model = Sequential(*layers)
    opt = SGD(model.parameters(), lr=0.1)
    x, y = np.ones((4, 5), np.float32), np.array([0, 1, 0, 1])
    model.train_step(x, y, "softmax", opt)   # a first step with the layer's own arrays
    if path == "backward":
        model.forward(x)
    getattr(model.layers[0], kind)[name] = make()
    kept = {k: v.copy() for k, v in model.layers[0].params.items() if isinstance(v, np.ndarray)}
    if path == "backward":
        e = raises_naming(exc, f"Dense.{kind}['{name}']", model.backward, np.ones((4, 2), np.float32))
    else:
        e = raises_naming(exc, f"Dense.{kind}['{name}']", model.train_step, x, y, "softmax", opt)
    assert word in str(e)
    for k, v in kept.items():
        assert_same_bits(model.layers[0].params[k], v)


def test_replaced_arrays_are_checked_before_the_step_kernel_is_built(monkeypatch):
    """The whole-step path names a bad entry itself, before it builds a plan (not by failing
    to build one and leaving it to the layer path)."""
    import fastnn.model as model_mod

    built = []
    real = model_mod._CompiledStep
    monkeypatch.setattr(model_mod, "_CompiledStep", lambda *a, **k: built.append(1) or real(*a, **k))
    model = Sequential(Dense(5, 2, seed=0))
    opt = SGD(model.parameters(), lr=0.1)
    x, y = np.ones((4, 5), np.float32), np.array([0, 1, 0, 1])
    model.train_step(x, y, "softmax", opt)
    assert built == [1]
    model.layers[0].grads["W"] = np.zeros((5, 2))
    raises_naming(TypeError, "Dense.grads['W']", model.train_step, x, y, "softmax", opt)
    assert built == [1]


@pytest.mark.parametrize("path", ["compiled", "layerwise"])
def test_a_frozen_layer_with_read_only_params_still_trains_the_others(path):
    """Parameters are written only by the optimizer (which checks the ones it updates): a layer
    frozen by making its arrays read-only, and left out of the optimizer, is fine."""
    model = Sequential(Dense(5, 4, seed=0), ReLU(), Dense(4, 2, seed=1))
    if path == "layerwise":
        model._compilable = False
    frozen = {k: _read_only(v.copy()) for k, v in model.layers[0].params.items()}
    model.layers[0].params.update(frozen)
    last = model.layers[-1]
    before = last.params["W"].copy()
    model.train_step(np.ones((4, 5), np.float32), np.array([0, 1, 0, 1]), "softmax",
                     SGD(last.parameters(), lr=0.5))
    assert not np.array_equal(last.params["W"], before)
    for k, v in frozen.items():
        assert model.layers[0].params[k] is v


def test_check_arrays_takes_layers_of_their_own():
    """A Layer subclass that skips Layer.__init__, or has no dtype of its own and sets its
    params itself (in either float dtype), passes; its gradients must match its params."""
    from fastnn import Layer

    class Bare(Layer):
        def __init__(self):
            self.params, self.grads = {}, {}

    Bare().check_arrays()

    class Scale(Layer):
        def __init__(self, dtype):
            super().__init__(None)
            self.params = {"s": np.ones(3, dtype)}
            self.grads = {"s": np.zeros(3, dtype)}

    for dt in (np.float32, np.float64):
        Scale(dt).check_arrays()
    layer = Scale(np.float32)
    layer.grads["s"] = np.zeros(3)
    raises_naming(TypeError, "Scale.grads['s']", layer.check_arrays)
    layer.grads["s"] = np.zeros(4, np.float32)
    raises_naming(ValueError, "Scale.grads['s']", layer.check_arrays)
    layer.params["s"] = np.ones(3, np.int64)
    raises_naming(TypeError, "Scale.params['s']", layer.check_arrays)


@pytest.mark.parametrize("field,value", [("seed", -1), ("seed", 2**64), ("seed", 1.5), ("seed", None),
                                         ("p", 0.0), ("p", float("nan")), ("mode", "eval")])
def test_an_edited_dropout_cache_is_refused(field, value):
    x = np.ones((3, 4))
    _, cache = F.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 1})
    setattr(cache, field, value)
    raises_naming(ValueError, "cache", F.dropout_backward, np.ones((3, 4)), cache)


# ============================================= the whole-step kernel's own guards (tenth session)
def _plan(dtype=np.float32, rule="sgd", n=6):
    """A StepPlan built from arrays of our own, with its arrays: (plan, layers, params, X, y)."""
    from fastnn._kernels import activations as ka, losses as kl, network as kn, optim as ko

    rng = np.random.default_rng(7)
    layers, params = [], []
    for i, (a, b) in enumerate([(3, 5), (5, 4)]):
        W = rng.standard_normal((a, b)).astype(dtype)
        bias = rng.standard_normal(b).astype(dtype)
        dW, db = np.zeros_like(W), np.zeros_like(bias)
        layers.append(dict(W=W, b=bias, dW=dW, db=db, op=ka.RELU if i == 0 else ka.IDENTITY,
                           alpha=0.0, avec=None, dalpha=None))
        for data, grad in ((W, dW), (bias, db)):
            state = np.zeros_like(data) if rule == "momentum" else None
            params.append((data, grad, state, None, data is W))
    code = ko.MOMENTUM if rule == "momentum" else ko.SGD
    plan = kn.StepPlan(dtype, n, kl.SOFTMAX, layers, params, code)
    X = rng.standard_normal((n, 3)).astype(dtype)
    y = (np.arange(n) % 4).astype(np.intp)
    return plan, layers, params, X, y


_STEP_ARGS = (0.1, 0.9, 0.0, 0.0, 1.0, 1.0, 0.0, 1)


def _bad_plan_inputs(dtype):
    """(case, X, y, exception, the message's start): inputs StepPlan.step refuses, naming the
    argument, before it computes or writes anything."""
    other = np.float64 if dtype == np.float32 else np.float32
    rng = np.random.default_rng(3)
    X = rng.standard_normal((6, 3)).astype(dtype)
    y = (np.arange(6) % 4).astype(np.intp)
    wide = rng.standard_normal((6, 6)).astype(dtype)
    cases = [
        ("X of the other float dtype", X.astype(other), y, ValueError, "X must be a 2-d array"),
        ("X as ints of its item size", X.view(np.int32 if dtype == np.float32 else np.int64), y,
         ValueError, "X must be a 2-d array"),
        ("X 1-d", X.ravel(), y, ValueError, "X must be a 2-d array"),
        ("X 3-d", X.reshape(6, 3, 1), y, ValueError, "X must be a 2-d array"),
        ("X strided", wide[:, ::2], y, ValueError, "X must be a C-contiguous array"),
        ("X Fortran-ordered", np.asfortranarray(X), y, ValueError,
         "X must be a C-contiguous array"),
        ("X of datetimes", X.astype(np.int64).view("M8[s]"), y, ValueError,
         "X must be a C-contiguous array"),   # (NumPy exports no buffer for datetimes)
        ("X byte-swapped", X.astype(X.dtype.newbyteorder()), y, ValueError,
         "X must be a 2-d array"),
        ("X a list", X.tolist(), y, TypeError, "X must be a 2-d array"),
        ("X None", None, y, TypeError, "X must be a 2-d array"),
        ("labels int32", X, y.astype(np.int32), ValueError, "labels must be a 1-d intp array"),
        ("labels unsigned", X, y.astype(np.uint64), ValueError, "labels must be a 1-d intp"),
        ("labels float", X, y.astype(np.float64), ValueError, "labels must be a 1-d intp"),
        ("labels 2-d", X, y.reshape(6, 1), ValueError, "labels must be a 1-d intp array"),
        ("labels strided", X, np.repeat(y, 2)[::2], ValueError,
         "labels must be a C-contiguous array"),
        ("labels a list", X, y.tolist(), TypeError, "labels must be a 1-d intp array"),
        ("labels too few", X, y[:5], ValueError, "y must have 6 labels"),
        ("labels None", X, None, ValueError, "y must have 6 labels"),
    ]
    return cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_step_plan_refuses_inputs_it_cannot_read_naming_them(dtype):
    """StepPlan.step reads X and the labels through the buffer protocol (no typed memoryview,
    which made ~0.4 KB of Python objects a step): an input of another dtype, byte order, number
    of dimensions or layout, or no buffer at all, is a ValueError or TypeError naming it, before
    anything is computed or written; a read-only input is taken as it is."""
    plan, layers, params, X, y = _plan(dtype)
    before = [a.tobytes() for prm in params for a in prm[:2]]
    for name, bad_x, bad_y, exc, msg in _bad_plan_inputs(dtype):
        held = [a for a in (bad_x, bad_y) if a is not None]   # (None's count moves anyway)
        refs = [sys.getrefcount(a) for a in held]
        with pytest.raises(exc, match=msg):
            plan.step(bad_x, bad_y, None, *_STEP_ARGS)
        assert [a.tobytes() for prm in params for a in prm[:2]] == before, name
        # (a buffer taken and not released would hold a reference to its array)
        assert [sys.getrefcount(a) for a in held] == refs, name
    Xr, yr = X.copy(), y.copy()
    Xr.flags.writeable = yr.flags.writeable = False
    refs = sys.getrefcount(Xr), sys.getrefcount(yr)
    assert np.isfinite(plan.step(Xr, yr, None, *_STEP_ARGS))
    assert (sys.getrefcount(Xr), sys.getrefcount(yr)) == refs


def test_step_plan_step_makes_no_python_objects_per_input():
    """A step of a built plan allocates almost nothing in Python: the inputs are read through
    the buffer protocol. With typed memoryviews (X and the labels, ~0.2 KB each) this step's
    peak was 600 bytes, which tracemalloc counted in every step (bench.step_memory's per_step)
    and in the first step's held memory; now under 100."""
    import tracemalloc
    plan, layers, params, X, y = _plan(np.float32, n=300)
    for _ in range(3):
        plan.step(X, y, None, *_STEP_ARGS)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        plan.step(X, y, None, *_STEP_ARGS)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 256, peak


@pytest.mark.parametrize("overlap", ["none", "data", "state", "grad and state"])
def test_step_plan_finds_parameters_sharing_memory(overlap):
    """A chunked step's threads update parameters side by side only when no two parameters'
    arrays (data, gradient, optimizer state) share memory (StepPlan.params_apart): two tied
    arrays updated at once would race. Parameters may share memory (only the kernels'
    gradients must be apart, which fastnn.model checks); here the plan is built directly."""
    from fastnn._kernels import losses as kl, network as kn, optim as ko

    plan, layers, params, _, _ = _plan(rule="momentum")
    assert plan.params_apart
    params = [list(p) for p in params]
    b0, b1 = params[1], params[3]          # biases of 5 and 4 units
    if overlap == "data":
        b1[0] = b0[0][1:]                  # b1 reads and writes b0's last 4 entries
        layers[1]["b"] = b1[0]
    elif overlap == "state":
        b1[2] = b0[2][:4]                  # b1's velocity in b0's
    elif overlap == "grad and state":
        b1[2] = b0[1][:4]                  # b1's velocity in b0's gradient
    other = kn.StepPlan(np.float32, 6, kl.SOFTMAX, layers, [tuple(p) for p in params], ko.MOMENTUM)
    assert other.params_apart == (overlap == "none")


def test_step_plan_uninitialized_raises_not_crashes():
    """A StepPlan whose __init__ never ran, or raised, has no buffers: step refuses it with a
    RuntimeError instead of reading through NULL pointers (it used to crash the interpreter)."""
    from fastnn._kernels import network as kn

    X = np.zeros((2, 3), np.float32)
    y = np.zeros(2, np.intp)
    fresh = kn.StepPlan.__new__(kn.StepPlan)
    with pytest.raises(RuntimeError, match="not initialized"):
        fresh.step(X, y, None, *_STEP_ARGS)
    # nor are its phases timed: an array sized before __init__ knew the layers would be written
    # past by every step after it
    with pytest.raises(RuntimeError, match="not initialized"):
        fresh.time_phases(True)
    assert fresh.phase_times() is None
    plan, layers, params, _, _ = _plan()
    failed = kn.StepPlan.__new__(kn.StepPlan)
    with pytest.raises(ValueError, match="chain"):
        failed.__init__(np.float32, 2, 0, [layers[1], layers[0]], params, 0)
    with pytest.raises(RuntimeError, match="not initialized"):
        failed.step(X, y, None, *_STEP_ARGS)
    with pytest.raises(RuntimeError, match="not initialized"):
        failed.time_phases(True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("change", ["param read-only", "grad read-only", "state read-only",
                                    "param reshaped in place", "bias reshaped in place",
                                    "param as other dtype", "param as int of its size"])
def test_step_plan_refuses_arrays_changed_since_build(dtype, change):
    """The plan writes through pointers taken at build time. If one of the arrays users can
    reach (a parameter, its gradient, the optimizer's state) was made read-only, reshaped in
    place or viewed as a dtype of another size since, step raises ArraysChanged (a ValueError) before
    anything is computed or written, instead of writing into it or reading it with its old
    shape (fastnn.model then rebuilds the plan, whose checks name the array)."""
    from fastnn._kernels import network as kn

    plan, layers, params, X, y = _plan(dtype, rule="momentum")
    plan.step(X, y, None, *_STEP_ARGS)     # it runs as built
    W, dW, vW = params[0][0], params[0][1], params[0][2]
    if change == "param read-only":
        W.flags.writeable = False
    elif change == "grad read-only":
        dW.flags.writeable = False
    elif change == "state read-only":
        vW.flags.writeable = False
    elif change == "param reshaped in place":
        W.shape = (W.shape[1], W.shape[0])
    elif change == "bias reshaped in place":
        layers[0]["b"].shape = (1, layers[0]["b"].shape[0])
    elif change == "param as other dtype":
        W.dtype = np.float16 if dtype == np.float32 else np.float32   # (3, 10) of half the size
    else:
        W.dtype = np.int32 if dtype == np.float32 else np.int64       # the same shape and size
    before = [a.tobytes() for prm in params for a in prm[:3]]
    with pytest.raises(kn.ArraysChanged) as info:
        plan.step(X, y, None, *_STEP_ARGS)
    assert isinstance(info.value, ValueError)
    assert [a.tobytes() for prm in params for a in prm[:3]] == before, "the refused step wrote"


def test_class_loss_kernel_checks_its_labels():
    """The compiled class loss indexes the scores with the labels: called directly (the public
    losses check labels first), a label outside [0, C) is refused, not read out of bounds."""
    from fastnn._kernels import losses as kl

    x = np.zeros((3, 4), np.float32)
    dx = np.full_like(x, 7.0)
    for kind in (kl.SOFTMAX, kl.SVM):
        dx[...] = 7.0
        for bad in (-1, 4, 2**40):
            with pytest.raises(ValueError, match=r"y\[1\]"):
                kl.class_loss(kind, x, np.array([0, bad, 1], np.intp), dx, 1)
            assert (dx == 7.0).all()
        assert np.isfinite(kl.class_loss(kind, x, np.array([0, 3, 1], np.intp), dx, 1))


def _flip(model, opt, change):
    """Change, in place, an array of a trained model: what the whole-step kernel's plan holds."""
    dense = model.layers[0]
    if change == "W read-only":
        dense.params["W"].flags.writeable = False
    elif change == "grad read-only":
        dense.grads["W"].flags.writeable = False
    elif change == "state read-only":
        opt.state[next(iter(opt.state))][0].flags.writeable = False
    elif change == "W reshaped":
        dense.params["W"].shape = dense.params["W"].shape[::-1]
    elif change == "W as int32":
        dense.params["W"].dtype = np.int32
    elif change == "layer dtype":
        for layer in model.layers:
            if hasattr(layer, "dtype"):
                layer.dtype = np.dtype(np.float64)


@pytest.mark.parametrize("change", ["W read-only", "grad read-only", "state read-only",
                                    "W reshaped", "W as int32", "layer dtype"])
def test_arrays_changed_in_place_give_the_layer_paths_error(change):
    """A parameter, gradient or optimizer-state array changed in place after training started
    (flags, shape, the layers' dtype) meets the same error on the whole-step kernel as on the
    layer path, naming the array, and no parameter or state is written; the kernel used to write into the
    read-only array, or read it with its old shape. Once the change is undone, training goes
    on the whole-step kernel again, with the layer path's numbers."""
    results = {}
    for path in ("compiled", "layerwise"):
        model = Sequential(Dense(3, 4, seed=0), ReLU(), Dense(4, 3, seed=1))
        if path == "layerwise":
            model._compilable = False
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        y = np.array([0, 1, 2, 0, 1, 2])
        model.train_step(X6, y, "softmax", opt)
        if path == "compiled":
            assert model._compiled_step(X6, SoftmaxCrossEntropy(), opt) is not None
        _flip(model, opt, change)
        # (the gradients may be written: the layer path runs the backward pass before the
        # optimizer refuses a read-only parameter, and so does the kernel's fallback to it)
        before = [a.copy() for layer in model.layers for a in layer.params.values()] + [
            a.copy() for st in opt.state.values() for a in st]
        with pytest.raises(BAD_ERRORS) as info:
            model.train_step(X6, y, "softmax", opt)
        after = [a for layer in model.layers for a in layer.params.values()] + [
            a for st in opt.state.values() for a in st]
        for a, b in zip(after, before):
            assert_same_bits(a, b, what=f"{path}: the refused step wrote")
        results[path] = (type(info.value), re.sub(r"\(\d+, ", "(ID, ", str(info.value)))  # (state keys)
    assert results["compiled"] == results["layerwise"]
    assert any(word in results["compiled"][1] for word in ("W", "parameter", "state")), results


def test_flags_flipped_back_return_to_the_whole_step_kernel():
    """A parameter made read-only and writeable again: the refused step builds nothing that
    lasts, and the next steps run the whole-step kernel again, bitwise as the layer path."""
    y = np.array([0, 1, 2, 0, 1, 2])
    models = []
    for compiled in (True, False):
        model = Sequential(Dense(3, 4, seed=0), ReLU(), Dense(4, 3, seed=1))
        model._compilable = compiled
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        model.train_step(X6, y, "softmax", opt)
        W = model.layers[0].params["W"]
        W.flags.writeable = False
        with pytest.raises(ValueError, match="parameter W"):
            model.train_step(X6, y, "softmax", opt)
        W.flags.writeable = True
        for _ in range(3):
            model.train_step(X6, y, "softmax", opt)
        assert (model._compiled_step(X6, SoftmaxCrossEntropy(), opt) is not None) == compiled
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert_same_bits(a.data, b.data)


@pytest.mark.parametrize("make,exc,word", [
    (lambda: Dense(3, 4, activation=["relu"]), TypeError, "activation"),   # (was: unhashable type)
    (lambda: Dropout(0.5).reseed(-1), ValueError, "seed"),
    (lambda: Dropout(0.5).reseed(1.5), TypeError, "seed"),
    (lambda: GaussianNoise(0.1).reseed("x"), TypeError, "seed"),
    (lambda: Sequential(Dense(3, 2, seed=0)).evaluate(np.zeros((0, 3)), np.zeros(0, int)), ValueError, "X"),
])
def test_more_arguments_named(make, exc, word):
    """Found by the tenth session's audit: NumPy's or Python's own messages came through."""
    err = raises_naming(exc, word, make)
    assert "unhashable" not in str(err) and "SeedSequence" not in str(err)


def test_reseed_still_takes_none_and_ints():
    layer = Dropout(0.5, seed=1)
    x = np.ones((4, 8), np.float32)
    layer.reseed(7)
    a = layer.forward(x, training=True)
    layer.reseed(7)
    assert_same_bits(layer.forward(x, training=True), a)
    layer.reseed(None)


def test_initializers_refuse_an_overflowing_scale_and_a_shape_too_large_naming_them():
    """scaled_normal(1e39) gave float32 weights of +-Inf with only NumPy's RuntimeWarning (the
    layer API refused them, the public initializers did not), and a shape of 2**80 entries
    gave NumPy's 'array is too big', naming nothing (a reviewer's finds)."""
    from fastnn import init
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # (no RuntimeWarning on the way)
        with pytest.raises(ValueError, match=r"^weight_scale 1e\+39 times a normal draw "
                                             r"overflows float32"):
            init.scaled_normal(1e39)((3, 3), rng, np.float32)
        with pytest.raises(ValueError, match="weight_scale 1e\\+39"):
            Dense(3, 3, weight_init=1e39, seed=0)
        w = init.scaled_normal(1e37)((50, 50), np.random.default_rng(0), np.float32)
        assert np.isfinite(w).all() and np.abs(w).max() > 1e37
        assert np.isfinite(init.scaled_normal(1e39)((3, 3), rng, np.float64)).all()
    for make in (init.he_normal, init.xavier_normal, init.scaled_normal(0.01)):
        for shape in [(2**40, 2**40), (2**30, 2**30), (2**62, 4)]:
            with pytest.raises(ValueError, match=r"^shape \(.*\) has more entries than an array "
                                                 r"can hold"):
                make(shape, rng)
