"""Sequential: a stack of layers with training, evaluation, a summary and safe save/load."""
import io
import json
import math
import numbers
import os
import sys
import threading
import time
import warnings
import weakref

import numpy as np

from fastnn._files import atomic_write, write_npz
from fastnn._validation import (as_float_array, binary_targets, check_flag, check_int, check_rows,
                                check_seed, class_labels, float_dtype_of, fs_path, int_labels,
                                mse_targets_as, name_list, no_repeated_keys, open_regular,
                                read_npz, refuse_masked)
from fastnn.layers import (ACTIVATIONS, LAYER_TYPES, Dense, Dropout, GaussianNoise, Layer,
                           LeakyReLU, PReLU, ReLU, Sigmoid, Tanh, described_param_shapes)
from fastnn import _threads
from fastnn.losses import (BinaryCrossEntropy, BinaryHinge, MeanSquaredError, MulticlassHinge,
                           SoftmaxCrossEntropy, get_loss)
from fastnn._kernels import activations as _ka
from fastnn._kernels import dense as _kd
from fastnn._kernels import losses as _kl
from fastnn._kernels import network as _kn
from fastnn._kernels import optim as _ko
from fastnn._kernels import stepcall as _sc
from fastnn.optimizers import SGD, Adam, Optimizer, RMSProp, own_step

__all__ = ["Sequential", "load_model"]

_FORMAT = "fastnn.Sequential"
_FORMAT_VERSION = 1
_META_KEY = "__fastnn__"

_FUSABLE = {ReLU: _ka.RELU, Sigmoid: _ka.SIGMOID, Tanh: _ka.TANH, LeakyReLU: _ka.LEAKY_RELU,
            PReLU: _ka.PRELU}


class _Unit:
    """One step of the forward plan: a layer, or a Dense fused with the activation after it.
    dx_direct: the unit is a Dense whose input gradient the Dense unit below (past any Dropout
    or GaussianNoise) takes straight in (a ReLU, leaky ReLU or no activation), so that its dx
    tiles are bounded as the whole-step kernel bounds them there (dx_tile_bound in
    csrc/fastnn_dense.pxd; Sequential._build sets it)."""

    __slots__ = ("layer", "act", "dx_direct")

    def __init__(self, layer, act=None, dx_direct=False):
        self.layer, self.act, self.dx_direct = layer, act, dx_direct

    def __reduce_ex__(self, protocol):
        # (__slots__ and no __dict__: protocols 0 and 1 need the arguments; 2 and up the default)
        if protocol < 2:
            return (type(self), (self.layer, self.act, getattr(self, "dx_direct", False)))
        return super().__reduce_ex__(protocol)

    def forward(self, x, training):
        layer, act = self.layer, self.act
        if act is None:
            if self.dx_direct:   # (a Dense: _dx_direct_below)
                return layer._own_forward(x, dx_direct=True)
            return layer.forward(x, training=training)
        x = layer._check_x(x)
        op = _FUSABLE[type(act)]
        prelu_alpha = act._alpha_arg(layer.out_features) if op == _ka.PRELU else None
        return layer._fused_forward(x, op, getattr(act, "alpha", 0.0), prelu_alpha, act,
                                    dx_direct=self.dx_direct)

    def backward(self, dout, need_dx):
        return self.layer.backward(dout, need_dx=need_dx)

    def infer(self, x):
        """forward in inference mode without keeping anything in the layers (predict)."""
        layer, act = self.layer, self.act
        if act is None:
            if type(layer) in _INFER_TYPES:
                return layer._infer(x)
            return layer.forward(x, training=False)   # a layer class of the caller's own
        x = layer._check_x(x)
        op = _FUSABLE[type(act)]
        prelu_alpha = act._alpha_arg(layer.out_features) if op == _ka.PRELU else None
        return layer._fused_forward(x, op, getattr(act, "alpha", 0.0), prelu_alpha, act, keep=False)


def _dx_direct_below(units):
    """Set each unit's dx_direct: a Dense unit (the class itself, as the whole-step kernel
    takes it; a subclass keeps its own forward) whose nearest unit below, past Dropout and
    GaussianNoise layers (which the kernel runs between its Dense layers; their subclasses
    too, as the tests' layer-path twins put them there), is a Dense unit with a ReLU, leaky
    ReLU or no activation: the kernel's op of the layer below (_CompiledStep) decides
    dx_direct there."""
    below = None   # the op of the nearest Dense unit so far, or None
    for unit in units:
        layer, act = unit.layer, unit.act
        if isinstance(layer, _REGULARIZERS) and act is None:
            unit.dx_direct = False
            continue
        dense = type(layer) is Dense
        unit.dx_direct = dense and below in _DIRECT_OPS
        below = (_FUSABLE[type(act)] if act is not None else layer._op) if dense else None


# the activations whose layer takes the input gradient of the layer above straight in: the
# kernels' own rule (dx_direct in csrc/fastnn_dense.pxd), not a copy of it
_DIRECT_OPS = frozenset(op for op in set(ACTIVATIONS.values()) if _kd.takes_dx_direct(op))


# the layer types whose _infer is their forward(training=False) without its stored state
_INFER_TYPES = frozenset(LAYER_TYPES.values())


def _infer(units, X):
    for unit in units:
        X = unit.infer(X)
    return X


_RELU_NAMES = {ReLU: "relu", LeakyReLU: "leaky_relu", PReLU: "prelu"}


def _relu_name(layer):
    """The activation name of a ReLU-family layer, also of a subclass of one."""
    return next(_RELU_NAMES[c] for c in type(layer).__mro__ if c in _RELU_NAMES)


def _changes(name):
    """A list method that marks the list changed once it ran (even when it raised half way:
    ``extend`` from a failing iterator), so that its model rebuilds what it derives from it."""
    method = getattr(list, name)

    def changing(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self.changed = True   # (after the change: a rebuild that ran meanwhile is redone)

    changing.__name__ = changing.__qualname__ = name
    changing.__doc__ = method.__doc__
    return changing


class _LayerList(list):
    """``Sequential.layers``: a plain list of the model's layers that records being changed.
    Its model checks ``changed`` (one attribute read) before it runs, and rebuilds its forward
    plan (fusions, the whole-step kernels) from the list when it is set, validating it as the
    constructor does."""

    __slots__ = ("changed",)

    def __init__(self, layers=()):
        super().__init__(layers)
        self.changed = False

    def __reduce_ex__(self, protocol):
        return (list, (list(self),))   # pickled (or copied) on its own: a plain list


for _name in ("append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse",
              "__setitem__", "__delitem__", "__iadd__", "__imul__"):
    setattr(_LayerList, _name, _changes(_name))
del _name

# train_step's losses given by name (Loss objects hold no state)
_NAMED_LOSSES = {name: get_loss(name) for name in ("softmax", "svm", "logistic", "binary_hinge", "mse")}

_LOSS_KINDS = {SoftmaxCrossEntropy: _kl.SOFTMAX, MulticlassHinge: _kl.SVM,
               BinaryCrossEntropy: _kl.LOGISTIC, BinaryHinge: _kl.BINARY_HINGE,
               MeanSquaredError: _kl.MSE}

# Sequential._check_X's default for y: no labels to compare with X's rows (None is a y, refused)
_NO_LABELS = object()


def _grad_is_finite(grad):
    """True if a gradient array holds no Inf or NaN (fit's guard on the layer path)."""
    if grad.flags.c_contiguous and grad.dtype in (np.float32, np.float64):
        return _ko.all_finite(grad.reshape(-1), _threads._num_threads)
    return bool(np.isfinite(grad).all())


# the parameterless layers the whole-step kernel runs itself: in front of the Dense stack (one
# of them) and between two Dense layers (_kernel_front, Sequential._build)
_REGULARIZERS = (Dropout, GaussianNoise)


def _kernel_front(front):
    """The layer of a model's front (Sequential._front) that the whole-step kernel runs over
    X: a front of one Dropout or one GaussianNoise, else None (longer fronts run in Python)."""
    return front[0] if len(front) == 1 and type(front[0]) in _REGULARIZERS else None


def _setting(layer):
    """A Dropout's (keep probability, seed) or a GaussianNoise's (std, seed) for one step of
    the kernel, the seed drawn from the layer's generator as its forward draws it; None when
    it passes its input on (p = 0 or std = 0: no draw)."""
    if type(layer) is Dropout:
        if layer.p == 0.0:
            return None
        return (1.0 - layer.p, layer._next_seed())
    if layer.std == 0.0:
        return None
    return (float(layer.std), layer._next_seed())


class _CompiledStep:
    """A whole training step (forward, loss, backward, updates) as one kernel call, for a
    Sequential made of Dense layers with fused activations, after any parameterless layers in
    front (Sequential._front: one Dropout or GaussianNoise runs inside the kernel, over X;
    longer fronts run in Python first, and the plan trains the Dense stack on their output,
    of X's shape and dtype). Built once per batch size, loss and
    optimizer; it refers to the live parameter, gradient and optimizer-state arrays, and is
    rebuilt when any of them is replaced."""

    def __init__(self, model, n, loss, optimizer):
        # (not the optimizer itself: the model's cache holds it weakly, so that a dropped
        # optimizer frees its state and this plan; run() gets it from the step)
        self.opt_type = type(optimizer)
        layers = []
        drops = []
        stack = model._units[len(model._front):]   # (the front: over X, in the kernel or before it)
        for unit in stack:
            dense, act = unit.layer, unit.act
            if type(dense) in _REGULARIZERS:
                # between two Dense units (_build): the plan keeps its output, and each step
                # gets its mask or noise (Sequential._step draws the seeds, as the layer's
                # forward does)
                layers[-1]["dropout" if type(dense) is Dropout else "noise"] = True
                drops.append(dense)
                continue
            op, alpha, avec, dalpha = dense._op, dense.alpha, None, None
            if act is not None:
                op = _FUSABLE[type(act)]
                alpha = getattr(act, "alpha", 0.0)
            if op == _ka.PRELU:
                owner = act if act is not None else dense
                avec, dalpha = owner.params["alpha"], owner.grads["alpha"]
            layers.append(dict(W=dense.params["W"], b=dense.params["b"], dW=dense.grads["W"],
                               db=dense.grads["b"], op=op, alpha=alpha, avec=avec, dalpha=dalpha))
        self.drops = tuple(drops)   # the Dropout and GaussianNoise layers inside the stack, bottom up
        # a front of one Dropout or GaussianNoise runs inside the kernel too, over X (into a
        # buffer of the plan's: X is not written); longer fronts run in Python first
        self.front = _kernel_front(model._front)
        input_kind = (0 if self.front is None else 1 if type(self.front) is Dropout else 2)
        self.rule = _rule_of(optimizer)
        nslots = {_ko.SGD: 0, _ko.MOMENTUM: 1, _ko.NESTEROV: 1, _ko.RMSPROP: 1, _ko.ADAM: 2}[self.rule]
        params, work = [], []
        for p in optimizer.params:
            try:
                slots = optimizer._slots(p, nslots) if nslots else []
            except ValueError:
                st = optimizer.state.get(p.key)
                if isinstance(st, (list, tuple)) and any(
                        isinstance(a, np.ndarray) and not a.flags.writeable for a in st):
                    # read-only state, as a read-only parameter (StepPlan's ArraysChanged):
                    # not a build to remember as refused (_compiled_step), or the model
                    # would train layer by layer for good once it is writeable again
                    raise _kn.ArraysChanged(f"{type(optimizer).__name__}.state[{p.key!r}] "
                                            "is read-only") from None
                raise
            params.append((p.data, p.grad, slots[0] if nslots else None,
                           slots[1] if nslots == 2 else None, p.decay))
            work.append((p, p.data, p.grad, slots))
        if nslots:
            # (a ValueError: no plan; the layer path's optimizer step names the state array)
            optimizer._check_state_apart(work)
        self.loss_kind = _LOSS_KINDS[type(loss)]
        self.binary = self.loss_kind in (_kl.LOGISTIC, _kl.BINARY_HINGE)
        self.fan_in = layers[0]["W"].shape[0]
        # (the dtype of the stack this plan is built from: model.dtype would rebuild the model
        # here, under its lock, should its layer list have changed meanwhile)
        self.dtype = _dtype_of(unit.layer for unit in stack)
        self.plan = _kn.StepPlan(self.dtype, n, self.loss_kind, layers, params, self.rule,
                                 input_kind)
        self.signature = self.signature_of(model, optimizer)

    @staticmethod
    def signature_of(model, optimizer):
        """Everything the plan was built from and does not re-read on each step: every array it
        points to and the optimizer's parameter objects (the objects themselves, compared by
        identity: held here, none can be freed and its address taken by a new one; a cache
        entry, a refused build's too, keeps them until it is dropped or replaced), its update
        rule, and the fixed activation slopes. A plan whose signature changed is rebuilt. (Each
        step checks it with the compiled twin of this function, network.signature_matches.)"""
        sig = [_rule_of(optimizer)]
        add, extend = sig.append, sig.extend
        for layer in model._layers:
            extend(layer.params.values())
            extend(layer.grads.values())
            add(getattr(layer, "alpha", None))
        for st in optimizer.state.values():
            if isinstance(st, (list, tuple)):
                extend(st)
            else:
                add(st)   # (not state the optimizer made: _slots names it at the build)
        extend(optimizer.params)
        return sig

    def draw(self):
        """This step's settings of the layers that run inside the kernel, (front, drops) for
        StepPlan.step: the front layer's and those of the Dropout and GaussianNoise layers
        inside the stack (_setting), in the layers' order (that of their draws on the layer
        path)."""
        f = self.front
        return (None if f is None else _setting(f)), [_setting(layer) for layer in self.drops]

    def run(self, model, X, y, opt, skip_nonfinite=False, count=False, draws=(None, None)):
        """One step on this plan's buffers with `opt`, the optimizer it was built for, and the
        settings `draws` (draw()) of the layers inside it; the caller holds the model's lock
        (Sequential._step), so one step at a time runs on them and on the parameters, whatever
        the Python thread. Returns (loss, correct or None, stopped). (Compiled: stepcall.run,
        which train_step's shortcut calls directly.)"""
        return _sc.run(self, X, y, opt, skip_nonfinite, count, draws)


# fit drops the plan it built for a partial last batch when that batch's activations take at
# least this many bytes (estimated as rows x the layers' widths x the item size).
_KEEP_PLAN_BYTES = 1 << 20

# The whole-step kernels a model keeps: one per (batch size, optimizer, loss type) in use, each
# with its activation buffers. fit with a partial last batch uses two (it drops the second when
# it returns, if large: _KEEP_PLAN_BYTES); more than this many in turn are rebuilt as they come
# back.
_MAX_PLANS = 4


def _plan_dropper(model):
    """The callback of the weak reference a cache entry holds to its optimizer: drops that
    entry (and so its plan) from the model's cache when the optimizer is collected. It holds the
    model weakly too (no reference cycle), and may run in any thread (only atomic dict calls)."""
    model_ref = weakref.ref(model)

    def drop(opt_ref):
        model = model_ref()
        if model is not None:
            cache = model._compiled
            for key, entry in list(cache.items()):
                if entry[2] is opt_ref:
                    cache.pop(key, None)
    return drop


# the update-rule kernel code an optimizer runs now (compiled, as _dtype_of)
_rule_of = _sc.rule_of


def _check_apart(layers, units):
    """ValueError naming a layer that runs twice in a training step (listed twice, other than
    a parameterless activation fused into the Dense before it, which keeps nothing), or a
    gradient that shares memory with another gradient or with a parameter. (Parameters may
    share memory with each other: they are only read.) The arrays are C-contiguous (checked
    first), so each spans [start, start + nbytes)."""
    places = {}   # id(layer) -> its first two positions in layers (one pass: linear in the layers)
    for i, layer in enumerate(layers):
        at = places.setdefault(id(layer), [])
        if len(at) < 2:
            at.append(i)

    def index(obj, nth):
        return places[id(obj)][nth]

    seen = set()
    for unit in units:
        for layer in (unit.layer, unit.act):
            if layer is None or (layer is unit.act and not layer.params):
                continue
            if id(layer) in seen:
                raise ValueError(f"layer {index(layer, 1)} is layer {index(layer, 0)} again: to "
                                 "be trained, a layer with parameters or a backward cache can "
                                 "appear once in a model (its cache and gradients are its own)")
            seen.add(id(layer))
    spans = []
    for unit in units:
        for layer in (unit.layer, unit.act):
            if layer is None:
                continue
            i = index(layer, 0)
            for name, value in layer.params.items():
                for kind, a in (("params", value), ("grads", layer.grads[name])):
                    if a.nbytes:
                        start = a.__array_interface__["data"][0]
                        spans.append((start, start + a.nbytes, kind == "grads",
                                      f"layer {i} ({type(layer).__name__}) {kind}[{name!r}]"))
    spans.sort(key=lambda sp: sp[0])
    end_any = end_grad = -1
    what_any = what_grad = None
    for start, end, is_grad, what in spans:
        other = what_any if is_grad and start < end_any else (
            what_grad if start < end_grad else None)
        if other is not None:
            raise ValueError(f"{what} shares memory with {other}: every gradient needs memory "
                             "of its own (the backward pass writes it)")
        if end > end_any:
            end_any, what_any = end, what
        if is_grad and end > end_grad:
            end_grad, what_grad = end, what


def _fusable(dense, act):
    # (a Dense subclass of the caller's own whose forward or backward differs would be
    # bypassed by the fused kernels: it runs on its own, as the other layer classes do)
    if (not isinstance(dense, Dense) or type(dense).forward is not Dense.forward
            or type(dense).backward is not Dense.backward
            or dense.activation is not None or type(act) not in _FUSABLE):
        return False
    if act.dtype is not None and dense.dtype != act.dtype:
        return False
    if isinstance(act, PReLU) and act.num_parameters not in (1, dense.out_features):
        return False
    return True


# the dtype of the first of some layers that has one, else float32 (compiled: train_step's
# shortcut asks it every step)
_dtype_of = _sc.dtype_of


# Every live model, for the fork hook below (weakly: the set keeps none alive).
_models = weakref.WeakSet()


class _FitModes:
    """fit's layer modes: training mode while it runs, and afterwards each layer in the mode
    it was in (a model put in eval mode before fit is in eval mode after it, as PyTorch users
    expect). Fits of one model running at once in several threads share one record,
    ``model._fit_record`` = (the modes the first found, the fits running), under _fit_lock:
    the first saves the modes and the last to finish puts them back. (Each fit's own save and
    restore left the model in training mode when a second fit started after the first's
    train() and ended after the first had put eval back.)

    fit calls enter() and exit() inside one try / finally, and exit() closes only a fit that
    enter() recorded: an interrupt (KeyboardInterrupt) anywhere leaves no fit on the record.
    _fit_lock is held for a few list operations only, never across a step, so that a fit
    ending beside another does not wait (interruptibly) for the other's step."""

    __slots__ = ("model", "ident")

    def __init__(self, model):
        self.model = model
        self.ident = threading.get_ident()

    def enter(self):
        model = self.model
        with _fit_lock:
            record = model._fit_record
            if record is None:
                record = model._fit_record = (
                    [(layer, getattr(layer, "training", True)) for layer in model._layers], [])
            record[1].append(self)
        model.train()

    def exit(self):
        model = self.model
        with _fit_lock:
            record = model._fit_record
            if record is None or not any(fit is self for fit in record[1]):
                return   # (not recorded: enter() was interrupted before it)
            _close_fit(model, record, self)


def _close_fit(model, record, fit):
    """Drop `fit` from the model's record (the caller holds _fit_lock); the last to go puts
    the modes back."""
    record[1][:] = [f for f in record[1] if f is not fit]
    if not record[1]:
        model._fit_record = None
        for layer, mode in record[0]:
            layer.train(mode)


_fit_lock = threading.Lock()


def _new_lock(model):
    """A new lock for `model` (Sequential's _lock), which the fork hook can then replace."""
    _models.add(model)
    return threading.RLock()


def _after_fork_in_child():
    """A model's lock held by another Python thread of the parent when it forked (a training
    step running there) is never released in the child, which has no such thread: a step or
    forward on that model would wait forever. Such a model gets a new lock, and drops its
    compiled steps (the one that was running is marked busy, and its buffers are half
    written); its arrays are what they were at the fork, as all of the process's memory is.
    A lock this thread can take is left as it is: free, or held by this very thread (a fork
    from inside a step, which goes on in the child). Likewise the fits of other threads
    running at the fork end in the child at once (_FitModes)."""
    global _fit_lock
    _fit_lock = threading.Lock()   # (another thread of the parent may have held it)
    me = threading.get_ident()
    for model in list(_models):
        record = model._fit_record
        if record is not None:
            # the fits of the parent's other threads never end here (those threads were not
            # copied): closed now, the modes put back when none of this thread's remains
            for fit in [f for f in record[1] if f.ident != me]:
                _close_fit(model, record, fit)
        lock = model._lock
        if lock.acquire(blocking=False):
            lock.release()
            continue
        model._lock = threading.RLock()
        model._compiled = {}
        model._hot = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _verbosity(verbose):
    """fit's ``verbose`` as a bool: a bool, or a level (an int >= 0, printing above 0)."""
    if isinstance(verbose, (bool, np.bool_)):
        return bool(verbose)
    if isinstance(verbose, numbers.Integral):
        if verbose < 0:
            raise ValueError(f"verbose must be a bool or an int >= 0, got {verbose}")
        return verbose > 0
    raise TypeError(f"verbose must be a bool or an int >= 0, got {type(verbose).__name__} {verbose!r}")


def _refuse_binary_scores(loss, shape):
    raise ValueError(f"{type(loss).__name__} takes one score per row, but the model's scores "
                     f"have shape {shape}: end the model with a single output unit")


def _targets_for(loss, scores, y, dtype):
    """y as loss(scores, y) takes it, or a ValueError worded for the model's scores: fastnn's
    binary losses need scores (N,) or (N, 1); MSE targets (in the model's dtype, as the kernel
    takes them) need the scores' shape (mse_targets). A Loss class of the caller's own
    checks what it takes."""
    kind = _LOSS_KINDS.get(type(loss))
    if kind in (_kl.LOGISTIC, _kl.BINARY_HINGE):
        if not (scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1)):
            _refuse_binary_scores(loss, scores.shape)
    elif isinstance(loss, MeanSquaredError):
        y = mse_targets_as(y, scores.shape, dtype)
    return y


# fastnn's layers that keep their input's width (an input width is known through them)
_KEEPS_WIDTH = frozenset({ReLU, Sigmoid, Tanh, LeakyReLU, PReLU, Dropout, GaussianNoise})
# fastnn's layers without parameters (those that keep the width, but PReLU and its slopes):
# their backward only passes the gradient on
_NO_PARAMS = _KEEPS_WIDTH - {PReLU}


def _in_features_of(layers):
    """The width of the model's input rows: the first Dense's or Maxout's in_features when
    only fastnn layers that keep their input's width (activations, dropout, noise) come before
    it, else None (unknown: no such layer, or a layer of another kind before it, which may
    set a width of its own)."""
    for layer in layers:
        if hasattr(layer, "in_features"):
            return layer.in_features
        if type(layer) not in _KEEPS_WIDTH:
            return None
    return None


def _first_slopes_of(layers):
    """The slope count of a PReLU layer with one slope per feature that the model's input
    reaches with its width unchanged (only such layers before it), else None. That layer
    takes inputs whose last axis has that many features (PReLU._check_features_first)."""
    for layer in layers:
        if type(layer) is PReLU:
            return layer.num_parameters if layer.num_parameters != 1 else None
        if type(layer) not in _KEEPS_WIDTH:
            return None
    return None


def _feature_trace(layers):
    """Each layer's output feature count (None where it keeps its input's), checking that
    the counts chain (the ValueError of the layer that does not take its input's)."""
    feats, trace = _in_features_of(layers), []
    for layer in layers:
        feats = layer.output_features(feats)
        trace.append(feats)
    return trace


class Sequential:
    """A feed-forward stack of layers.

    A Dense layer (without its own activation) followed by ReLU, Sigmoid, Tanh, LeakyReLU or
    PReLU runs as one fused kernel call, exactly as ``Dense(..., activation=...)`` does, when
    the activation computes in the Dense's dtype: one of another dtype (``Tanh(dtype=...)``,
    or a float32 ``PReLU()``, its default, after a float64 Dense) runs on its own, in its own
    dtype, as its forward alone would.
    """

    # (key, X shape, X dtype) of the compiled step the last cache hit returned, or None: the
    # shortcut of _compiled_step. Plain values, no plan: a dropped entry is not kept alive.
    _hot = None
    # the layers' modes the first of the fits running now found, and those fits (_FitModes);
    # a class default, so that a model pickled before it fits
    _fit_record = None

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        # One lock per model, held for a whole training step (either path: train_step, fit's
        # steps), forward / backward, a plan build or rebuild, save's and load's arrays: steps
        # from several Python threads run one after the other on the shared parameters,
        # optimizer state, layer caches and plan buffers. (predict takes it only to rebuild a
        # changed layer list: it keeps nothing in the layers.) Reentrant: a custom optimizer's
        # step(), run inside the step, may still call forward or parameters().
        self._lock = _new_lock(self)
        self._compiled = {}
        self._apart_checked = []   # weak references to the arrays _check_arrays last found apart
        self._layers = _LayerList(layers)
        self._build()   # (validates now: the constructor raises for a bad stack)

    # ------------------------------------------------------------------ structure
    @property
    def layers(self):
        """The layers, a list that may be changed (append, insert, pop, item assignment, ...)
        or replaced (``model.layers = [...]``): the model then runs the new stack from its next
        use on, as ``Sequential(*model.layers)`` would, and a stack the constructor would
        refuse raises its error there."""
        return self._layers

    @layers.setter
    def layers(self, value):
        if value is self._layers:   # (model.layers += [...] assigns the changed list back)
            value.changed = True
            return
        if isinstance(value, Layer) or not hasattr(value, "__iter__"):
            raise TypeError(f"layers must be a list of fastnn layers, got {type(value).__name__}")
        new = _LayerList(value)
        new.changed = True
        self._layers = new

    def _build(self):
        """Derive the forward plan from the layer list: validate it (the constructor's errors),
        give a Dense followed by a ReLU-family layer the default He initialization (while its
        weights are the untouched default draw), fuse Dense + activation pairs, and drop every
        whole-step kernel built for the previous stack. The caller holds the lock (or is the
        constructor)."""
        listed = self._layers
        listed.changed = False   # first: a change made while this runs marks the list again
        try:
            layers = tuple(listed)
            for i, layer in enumerate(layers):
                if not isinstance(layer, Layer):
                    raise TypeError(f"layer {i} must be a fastnn layer, got {type(layer).__name__}")
            if not layers:
                raise ValueError("Sequential needs at least one layer")
            # Validate the chain of feature counts now, not at the first batch.
            _feature_trace(layers)
            for i in range(len(layers) - 1):
                # Dense + ReLU-family layer: the default initialization is He, as for
                # Dense(..., activation="relu") (Xavier/Glorot stays for the others).
                if isinstance(layers[i], Dense) and isinstance(layers[i + 1], (ReLU, LeakyReLU, PReLU)):
                    layers[i]._default_init_for(_relu_name(layers[i + 1]))
            units = []
            i = 0
            while i < len(layers):
                if i + 1 < len(layers) and _fusable(layers[i], layers[i + 1]):
                    units.append(_Unit(layers[i], layers[i + 1]))
                    i += 2
                else:
                    units.append(_Unit(layers[i]))
                    i += 1
            _dx_direct_below(units)
        except BaseException:
            listed.changed = True   # still to do: the next use raises again
            raise
        self._units = units
        # fastnn's parameterless layers in front (input noise or dropout, say) run before the
        # Dense stack: one Dropout or GaussianNoise inside the whole-step kernel, a longer
        # front in Python first. The step's backward never reaches them (no input gradient is
        # wanted), so nothing else of theirs is needed. Not when one computes in another
        # dtype than the stack (a conversion).
        front = 0
        while (front < len(units) - 1 and units[front].act is None
               and type(units[front].layer) in _NO_PARAMS):
            front += 1
        stack = units[front:]
        stack_dtype = _dtype_of(u.layer for u in stack)
        self._front = tuple(u.layer for u in units[:front])
        # Dropout or GaussianNoise between two Dense units runs inside the kernel (its seeds
        # drawn in Python: _CompiledStep.draw); not with a prelu hidden layer (the kernel's
        # backward through buffers has none: such a model trains layer by layer)
        hidden = tuple(u.layer for u in stack if type(u.layer) in _REGULARIZERS)
        self._compilable = (all(layer.dtype is None or layer.dtype == stack_dtype
                                for layer in self._front + hidden)
                            and not (hidden and any(
                                isinstance(u.act, PReLU)
                                or (type(u.layer) is Dense and u.layer._op == _ka.PRELU)
                                for u in stack[:-1]))
                            and all((type(u.layer) is Dense
                                     and (u.act is None or not isinstance(u.act, PReLU)
                                          or u.act.num_parameters > 1))
                                    or (type(u.layer) in _REGULARIZERS
                                        and 0 < i < len(stack) - 1
                                        and type(stack[i - 1].layer) is Dense
                                        and type(stack[i + 1].layer) is Dense)
                                    for i, u in enumerate(stack)))
        self._compiled = {}

    def _sync(self):
        """Rebuild the forward plan if the layer list changed since it was built (callers check
        ``self._layers.changed`` first: one attribute read on the hot paths). Not from inside an
        operation that holds the lock (a custom optimizer or loss calling model.parameters()
        during a step): that operation runs on the plan it started with, and the next one
        rebuilds (the list stays marked changed)."""
        if self._lock._is_owned():
            return
        with self._lock:
            if self._layers.changed:
                self._build()

    def __getstate__(self):
        # pickle / copy.deepcopy / copy.copy: no lock, no compiled plans (rebuilt when needed);
        # the copy gets its own lock and its own layer list. (The arrays are read after this
        # returns, so a copy taken while another thread trains the model may hold a step
        # part-way, as predict may; save() is the consistent snapshot.) A layer list changed
        # since the last use is rebuilt first, so that the copy holds what that rebuild drew
        # (a Dense's He re-draw), not a draw of its own: the copy waits for a step running in
        # another thread, as any use does. A list the rebuild refuses stays pending (it raises
        # again at the copy's first use, as at the original's).
        if self._layers.changed:
            try:
                self._sync()
            except Exception:
                pass
        state = self.__dict__.copy()
        del state["_lock"]
        state["_compiled"] = {}
        state.pop("_hot", None)
        state.pop("_fit_record", None)   # (a copy taken during a fit runs none of it)
        state.pop("_apart_checked", None)   # (weak references: a copy's arrays are others)
        state["_layers"] = list(self._layers)
        state["_layers_changed"] = self._layers.changed
        return state

    def __setstate__(self, state):
        state = dict(state)
        changed = state.pop("_layers_changed", True)
        layers = state.pop("_layers", None)
        if layers is None:
            layers = state.pop("layers")   # pickled before layers became a property
        self.__dict__.update(state)
        self._lock = _new_lock(self)
        self._compiled = {}
        self._apart_checked = []
        self._layers = _LayerList(layers)
        self._layers.changed = changed
        # pickled before the front layers ran ahead of the whole-step kernel: none do (that
        # pickle's _compilable was computed so)
        self.__dict__.setdefault("_front", ())
        if not changed and "_units" in self.__dict__:
            # (pickled before the units carried dx_direct, or by protocol 0 or 1 from a build
            # that lost it: marked again, as _build marks them)
            _dx_direct_below(self._units)

    @property
    def dtype(self):
        """The dtype of the first layer that has one (float32 if none does)."""
        if self._layers.changed:
            self._sync()
        return _dtype_of(self._layers)

    @property
    def in_features(self):
        if self._layers.changed:
            self._sync()
        return _in_features_of(self._layers)

    def _feature_trace(self):
        return _feature_trace(self._layers)

    def parameters(self):
        """Every learnable array, as Parameter objects (``.data`` the live array, ``.grad``),
        each once: a layer object listed twice gives its parameters once, as PyTorch's
        ``parameters()`` does (an optimizer refuses a parameter listed twice)."""
        if self._layers.changed:
            self._sync()
        seen = set()
        out = []
        for layer in self._layers:
            for p in layer.parameters():
                key = p.key
                if key not in seen:
                    seen.add(key)
                    out.append(p)
        return out

    @property
    def num_params(self):
        if self._layers.changed:
            self._sync()
        # (each layer object once, as parameters() lists its parameters)
        return sum(layer.num_params for layer in {id(layer): layer for layer in self._layers}.values())

    def train(self, mode=True):
        if self._layers.changed:
            self._sync()
        for layer in self._layers:
            layer.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def summary(self):
        """The text of a table of layers, output shapes and parameter counts."""
        if self._layers.changed:
            self._sync()
        rows = [("Layer (type)", "Output shape", "Params")]
        for layer, feats in zip(self._layers, self._feature_trace()):
            extra = ""
            if isinstance(layer, Dense) and layer.activation:
                extra = f", {layer.activation}"
            name = f"{type(layer).__name__}{extra}"
            rows.append((name, f"(None, {feats})" if feats is not None else "(same)", f"{layer.num_params:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        line = "-" * (sum(widths) + 6)
        out = [line, "  ".join(rows[0][c].ljust(widths[c]) for c in range(3)), line]
        for r in rows[1:]:
            out.append("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2])]))
        out += [line, f"Total params: {self.num_params:,}", f"dtype: {self.dtype.name}", line]
        return "\n".join(out)

    def __repr__(self):
        return "Sequential(\n" + "\n".join(f"  {layer!r}" for layer in self.layers) + "\n)"

    # ------------------------------------------------------------------ compute
    def _check_X(self, X, name="X", hot=False, y=_NO_LABELS, loss=None, optimizer=None):
        """X (or X_val: `name`) as an array of the model's dtype with a batch axis and rows of
        the model's input width (_check_width; an array's checked before it is converted, so
        that a huge broadcast view is refused, not copied). ``hot`` (train_step): an X that is
        already such an array skips the width check, which its compiled step makes (and its
        layer path). ``y`` (fit, evaluate, and train_step with its ``loss`` and
        ``optimizer``): X's labels or targets, whose rows are compared with those of an array
        X to be converted before it is converted too (as _labels, or train_step's
        _check_step_label_rows, checks them), so that a huge broadcast view with too few
        labels is refused, not copied; the callers check them again after."""
        dtype = _dtype_of(self._layers)   # (the callers rebuilt a changed layer list first)
        if type(X) is np.ndarray and X.dtype is dtype and X.ndim >= 1 and X.flags.c_contiguous:
            # what as_float_array returns for it (a training step's fast path)
            return X if hot else self._check_width(X, name)
        given = X
        if isinstance(given, np.ndarray):
            self._check_width(given, name)
            if y is not _NO_LABELS and given.ndim >= 1 and given.shape[0]:
                float_dtype_of(given, name)   # (X's TypeError first, as its conversion raises it)
                if hot:
                    self._check_step_label_rows(given, y, loss, optimizer)
                else:
                    self._labels(y, given.shape[0], "y" + name[1:], name)   # (X: y, X_val: y_val)
        X = as_float_array(X, name, dtype)
        if X.dtype is not dtype and X.dtype == dtype:
            # an equal dtype object of X's own (pickle.loads makes one): a view with the
            # model's, which the compiled step's checks compare by identity (else every step
            # of such an X took the full path)
            X = X.view(dtype)
        if X.ndim < 1:
            raise ValueError(f"{name} must have a batch axis, got a scalar")
        if not isinstance(given, np.ndarray):
            self._check_width(X, name)
        return X

    def _check_step_label_rows(self, X, y, loss, optimizer):
        """train_step's labels (or targets) ``y`` refused before the array X (of at least one
        row) is converted when their number is not X's rows, as the step's own checks would
        refuse them after: the compiled step's (_CompiledStep.run) where the step is
        compiled, else the loss's (the layer path). Only when y's first axis does not have
        X's rows, and for fastnn's losses (a Loss class of the caller's own checks what it
        takes, in the step)."""
        kind = _LOSS_KINDS.get(type(loss))
        if kind is None:
            return
        n = X.shape[0]
        try:
            rows = np.shape(y)[:1]   # (an array's shape; a list, small, is converted)
        except (TypeError, ValueError):   # (a ragged list: the step's checks name it)
            return
        if rows == (n,):
            return
        # (each check below raises: a y of another number of rows is refused by all of them)
        out = self._feature_trace()[-1]   # the scores' width (None: not known)
        dtype = _dtype_of(self._layers)
        if kind == _kl.MSE:
            if out is not None:
                mse_targets_as(y, (n, out), dtype)   # (both paths: _targets_for, run)
            return
        binary = kind in (_kl.LOGISTIC, _kl.BINARY_HINGE)
        if binary and out is not None and out != 1:
            _refuse_binary_scores(loss, (n, out))   # (both: the compiled step is not built)
        if self._compilable and type(optimizer) in (SGD, RMSProp, Adam) and X.ndim == 2:
            int_labels(y, n, allow_bool=binary, allow_column=binary, allow_float=binary)
        elif binary:
            binary_targets(y, n, (0, 1) if kind == _kl.LOGISTIC else (-1, 1), dtype)
        else:
            class_labels(y, n, out)

    def _check_width(self, X, name="X"):
        """ValueError naming `name` unless X's rows have the first layer's input width (each
        row flattened, as Dense takes it), and, where a PReLU with a slope per feature comes
        first, the last axis its slope count. Before any layer runs, which would name its own
        input ``x``; a stack without Dense, Maxout or such PReLU layers takes any width."""
        d = _in_features_of(self._layers)
        if d is not None and (X.ndim < 2 or math.prod(X.shape[1:]) != d):
            raise ValueError(f"{name} must have shape (N, {d}), got {X.shape}")
        p = _first_slopes_of(self._layers)
        if p is not None and X.ndim >= 1 and X.shape[-1] != p:   # (0-d: _check_X names it)
            raise ValueError(f"{name} must have {p} features in its last axis (the slopes of "
                             f"its first PReLU layer), got shape {X.shape}")
        return X

    def forward(self, X, training=None):
        """Scores for X. ``training`` overrides the layers' train/eval mode for this call.
        Each layer keeps what its backward needs (call ``backward`` next); a training step of
        the same model in another thread waits for it, and it for the step. What a layer keeps
        can be the array it returned (an activation's output, from which its derivative is
        computed; the scores when the last layer has an activation): change a copy, not the
        returned scores in place, before ``backward``, or the gradients change with them
        (PyTorch raises an error there; NumPy code cannot tell)."""
        with self._lock:
            if self._layers.changed:
                self._build()
            return self._forward(self._off_grads(self._check_X(X)), training)

    def _forward(self, X, training, start=0):
        out = X
        for unit in self._units[start:]:
            out = unit.forward(out, training)
        return out

    def backward(self, dout, need_dx=True):
        """Backpropagate ``dout`` (the gradient of the loss wrt the scores); fills every layer's
        ``grads`` (overwriting them, as the course's code does: PyTorch would add to them) and
        returns the gradient wrt the input (None when ``need_dx`` is False: then no layer
        computes it, nor runs only to pass it on, as fastnn's parameterless layers below the
        lowest layer with parameters would)."""
        with self._lock:
            if self._layers.changed:
                self._build()
            self._check_arrays()
            return self._backward(self._off_grads(dout), need_dx)

    def _off_grads(self, a):
        """`a` (a batch, or the gradient of the scores), or a copy of it when it shares memory
        with a gradient array that backward writes before its last read of `a` (the model's
        own gradient passed as the input: NumPy's rule for overlapping operands, a copy)."""
        grads = (g for layer in self._layers for g in _grads_of(layer))
        return a.copy() if _kn.shares_bytes(a, grads) else a

    def _check_arrays(self):
        """Every layer's params / grads entries, named if one was replaced by something the
        kernels cannot use (Layer.check_arrays); also a layer that would run twice in a step
        (_check_apart) or a gradient that shares memory with another gradient or a parameter
        (the whole-step kernel and the layer path would then compute different things, and
        neither what the layers mean)."""
        layers = self._layers
        for layer in layers:
            layer.check_arrays()
        # checked again only when an array was replaced (weak references: the arrays checked
        # last are not kept alive, and one that is gone counts as replaced)
        units = self._units
        if not _kn.arrays_unchanged(self._apart_checked, units):
            _check_apart(layers, units)
            self._apart_checked = [weakref.ref(a) for a in _kn.trained_arrays(units)]

    def _backward(self, dout, need_dx):
        units = self._units
        stop = 0
        if not need_dx:
            # the units below the lowest one with parameters (fastnn's parameterless layers:
            # input noise or dropout in front, say) would only pass on the input gradient,
            # which is not wanted: that unit computes no input gradient, and they do not run
            while (stop < len(units) - 1 and units[stop].act is None
                   and type(units[stop].layer) in _NO_PARAMS):
                stop += 1
        d = dout
        for k in range(len(units) - 1, stop - 1, -1):
            d = units[k].backward(d, need_dx=need_dx or k > stop)
        return d if need_dx else None

    def predict(self, X, batch_size=None):
        """Scores in inference mode (dropout and noise off), optionally in batches. The fastnn
        layers keep nothing from it (no backward caches): predictions may run in several
        threads at once, also beside a training step of the same model, which they leave
        undisturbed (the weights they read may then be half way through that step's update)."""
        if self._layers.changed:
            self._sync()
        X = self._check_X(X)
        if batch_size is not None:
            batch_size = check_int(batch_size, "batch_size")
        units = self._units   # (one plan for every part, should the layer list change meanwhile)
        if batch_size is None or X.shape[0] <= batch_size:
            return _infer(units, X)
        parts = [_infer(units, X[i:i + batch_size]) for i in range(0, X.shape[0], batch_size)]
        return np.concatenate(parts, axis=0)

    def _labels(self, y, n, name="y", rows="X"):
        if y is None:
            raise TypeError(f"{name} must be an array of targets, got None")
        refuse_masked(y, name)
        y = np.asarray(y)
        if y.ndim < 1 or y.shape[0] != n:
            raise ValueError(f"{name} must have {n} entries (one per row of {rows}), got shape {y.shape}")
        return y

    def _check_targets(self, loss, y, n, name, out):
        """fit's check of all of its targets (or validation targets) before anything trains:
        what a step of either path would refuse in some mini-batch, refused up front, with the
        index into ``y`` itself. ``out``: the model's output features (None: not known before
        a forward, as for a stack without Dense or Maxout layers; the steps check the range)."""
        kind = _LOSS_KINDS.get(type(loss))
        if kind is None:
            return   # a Loss class of the caller's own: its steps check what it takes
        if kind == _kl.MSE:
            if out is not None:
                mse_targets_as(y, (n, out), _dtype_of(self._layers), name)
            else:
                as_float_array(y, name, _dtype_of(self._layers))
            return
        binary = kind in (_kl.LOGISTIC, _kl.BINARY_HINGE)
        if binary and out is not None and out != 1:
            _refuse_binary_scores(loss, (n, out))
        if not binary and np.asarray(y).dtype.kind == "f":   # (the hint the class losses give)
            raise TypeError(f"{name} must hold integer class labels, got dtype {np.asarray(y).dtype} "
                            f"(cast with {name}.astype(int) if the values are whole numbers)")
        labels = int_labels(y, n, allow_bool=binary, name=name,
                            what="integer labels" if binary else "integer class labels",
                            allow_column=binary, allow_float=binary)
        if kind == _kl.LOGISTIC:
            bad, valid = (labels != 0) & (labels != 1), "{0, 1}"
        elif kind == _kl.BINARY_HINGE:
            bad, valid = (labels != -1) & (labels != 1), "{-1, 1}"
        elif out is None:
            return
        else:
            bad, valid = (labels < 0) | (labels >= out), f"[0, {out})"
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name}[{i}] = {labels[i]} is not a valid label for this loss "
                             f"(labels must be in {valid})")

    def train_step(self, X, y, loss, optimizer):
        """One step of SGD-style training on the batch (X, y); returns the loss as a float.
        The step runs in training mode whatever the model's mode (Dropout drops after
        eval() too, as Keras's train_on_batch), and updates only this model's parameters of
        an optimizer that also holds other models'. Steps on one model from several Python
        threads run one after the other."""
        if type(loss) is str and loss in _NAMED_LOSSES:
            loss = _NAMED_LOSSES[loss]   # (stateless; one instance per name, not one per step)
        # the step of the last cache hit again (same batch shape and dtype, loss type,
        # optimizer, nothing changed since): the checks below and _step's would all pass and
        # find that step, so only what could have changed since is asked, compiled
        # (stepcall.train_step; None: not that step, nothing ran)
        value = self._shortcut(X, y, loss, optimizer)
        if value is not None:
            return value
        _check_optimizer(optimizer)
        if type(loss) not in _LOSS_KINDS:   # (fastnn's own: what get_loss would return)
            loss = get_loss(loss)
        if self._layers.changed:
            self._sync()
        # (positional: no cost on the fast path, an X that is already the model's array)
        value, _, _ = self._step(self._check_X(X, "X", True, y, loss, optimizer), y, loss, optimizer)
        return value

    # train_step's shortcut, (X, y, loss, optimizer) -> the step's loss or None (a method: the
    # compiled function binds as one; tests give a twin model one that answers None)
    _shortcut = _sc.train_step

    def _compiled_step(self, X, loss, optimizer):
        """The cached whole-step kernel for this batch, or None when the model, loss or
        optimizer is not one it covers (then the layer-by-layer path runs)."""
        if not own_step(optimizer):
            # a step() set on the optimizer object itself (a wrapper that clips or logs), or
            # on its class: the kernel would update without calling it; the layer path calls
            # it (the shortcut, stepcall.train_step, declines an object's own step too, and
            # finds no step built for the other)
            return None
        # the step of the last cache hit, for the same X shape and dtype and loss type: the
        # checks of _valid_entry without building the key (~0.5 us of a small network's
        # step). That entry is the most recently used already: a hit that returns a step
        # sets _hot, moving any entry to the end of the cache (_valid_entry) or adding one
        # (_remember) clears it, and dropping others does not reorder the cache.
        cached = _sc.hot_entry(self, X, loss, optimizer)
        if cached is not None:
            return cached[1]
        if X.ndim != 2 or X.shape[0] == 0:
            return None
        key = (X.shape[0], id(optimizer), type(loss))
        cached = self._valid_entry(key, optimizer)
        if cached is not None:
            # built before and still valid (its build checked the model, loss and optimizer
            # types); None if that build failed, or for an X of another width
            step = cached[1]
            if step is None or step.plan.is_double == (X.dtype.itemsize == 8):
                if step is None or X.shape[1] != step.fan_in:
                    return None
                self._hot = (key, X.shape, X.dtype)
                return step
            # a plan of the other dtype: the layers' dtype was changed on arrays it holds;
            # build again, which checks the arrays against the layers (and names one)
            self._compiled.pop(key, None)
        if not self._compilable or type(loss) not in _LOSS_KINDS or type(optimizer) not in (SGD, RMSProp, Adam):
            return None
        if X.shape[1] != _in_features_of(self._layers):
            return None
        if self._front and X.dtype != _dtype_of(u.layer for u in self._units[len(self._front):]):
            # a front layer's dtype set since the build (the model's dtype follows it): a
            # plan would be built and dropped at every step, each taking the layer path
            return None
        self._check_arrays()   # (a build: the first step, or something was replaced)
        with self._lock:
            # (_step holds it already; a direct call takes it here, and looks up again what
            # a step in another thread may have built meanwhile)
            cached = self._valid_entry(key, optimizer)
            if cached is not None:
                return cached[1]
            step = None
            mine = {p.key for layer in self._layers for p in layer.parameters()}
            theirs = [p.key for p in optimizer.params]
            if len(theirs) == len(mine) and set(theirs) == mine:
                try:
                    step = _CompiledStep(self, X.shape[0], loss, optimizer)
                except _kn.ArraysChanged:
                    # a read-only parameter or state array: the layer path refuses it, naming
                    # it; not remembered, so that the next step builds once it is writeable
                    return None
                except ValueError:
                    step = None  # something the kernel does not take: the layer path decides
            # (a failed build is remembered too, until the signature changes; building may add
            # optimizer state, so the signature is the one taken after it)
            self._remember(key, step.signature if step is not None else
                           _CompiledStep.signature_of(self, optimizer), step, optimizer)
            return step

    def _remember(self, key, signature, step, optimizer):
        """Cache a step (or a refused build: None) under key = (batch size, id(optimizer), loss
        type). At most _MAX_PLANS entries, the least recently used dropped first. An entry holds
        its optimizer weakly and goes when the optimizer is collected, so a model does not keep
        a dropped optimizer's state, nor the plan's buffers, alive."""
        cache = self._compiled
        self._hot = None   # (_compiled_step's shortcut holds only entries found valid since)
        cache.pop(key, None)
        # (a snapshot of the keys: an optimizer's callback may drop entries meanwhile)
        for old in list(cache)[:max(0, len(cache) - _MAX_PLANS + 1)]:
            cache.pop(old, None)
        cache[key] = (signature, step, weakref.ref(optimizer, _plan_dropper(self)))

    def _valid_entry(self, key, optimizer):
        """The cache entry (signature, step, weak reference to the optimizer) for key while it
        still describes the model and optimizer (the same optimizer object, no array replaced,
        the same rule), else None. A hit becomes the most recently used entry."""
        cache = self._compiled
        cached = cache.get(key)
        if not _sc.entry_matches(self._layers, cached, optimizer):
            return None
        if len(cache) > 1 and cache.pop(key, None) is not None:
            cache[key] = cached   # the most recently used now
            self._hot = None   # (_compiled_step's shortcut: see there)
        return cached

    def _step(self, X, y, loss, optimizer, skip_nonfinite=False, count=False):
        """One step; returns (loss, correct, stopped). With ``skip_nonfinite`` (fit), a
        non-finite loss or gradient stops the step before any update (``stopped`` True), so the
        parameters keep their last finite values. With ``count`` and a classification loss,
        ``correct`` is the number of rows whose scores (before the update) predict their label
        as ``loss.predict_labels`` does, else None. (The whole-step kernel counts them in its
        loss pass: it may write the loss gradient over the scores.)

        The whole step runs under the model's lock, on both paths: steps from several Python
        threads (any batch size, optimizer or loss) run one after the other."""
        with self._lock:
            if self._layers.changed:
                self._build()
            compiled = self._compiled_step(X, loss, optimizer)
            if compiled is None:
                return self._layer_step(X, y, loss, optimizer, skip_nonfinite, count)
            front = self._front
            if not front and not compiled.drops:
                return self._compiled_run(compiled, X, y, loss, optimizer, skip_nonfinite, count)
            dtype = compiled.dtype
            if X.dtype != dtype or any(layer.dtype is not None and layer.dtype != dtype
                                       for layer in front + compiled.drops):
                # (a dtype set on a layer since the build: a conversion, which is the layer
                # path's to make, decided before anything is drawn)
                return self._layer_step(X, y, loss, optimizer, skip_nonfinite, count)
            try:
                # what the kernel would refuse, asked before the front draws: a plan whose
                # arrays changed is rebuilt, or the layer path takes the step (or its check
                # names a bad array) with nothing drawn, as when it runs from the start
                compiled.plan.check_arrays()
            except _kn.ArraysChanged:
                compiled = self._rebuilt_step(X, loss, optimizer)
                if compiled is None:
                    return self._layer_step(X, y, loss, optimizer, skip_nonfinite, count)
            try:
                # the front layers' forward (unless the kernel runs the front) and the seeds of
                # the layers inside the kernel (their draws, in the layer path's order), then
                # the kernel on the front's output, which has X's shape and dtype
                if compiled.front is None:
                    for layer in front:
                        X = layer.forward(X, training=True)
                    X = np.ascontiguousarray(X)
                return self._compiled_run(compiled, X, y, loss, optimizer, skip_nonfinite, count,
                                          0 if compiled.front is not None else len(front),
                                          compiled.draw())
            finally:
                for layer in front:
                    layer._drop_cache()

    def _rebuilt_step(self, X, loss, optimizer):
        """_compiled_step after its plan for this batch refused arrays changed since its build
        (ArraysChanged): built again from the arrays as they are now, or None (the layer
        path), or the ValueError of _check_arrays naming a bad one."""
        self._compiled.pop((X.shape[0], id(optimizer), type(loss)), None)
        return self._compiled_step(X, loss, optimizer)

    def _compiled_run(self, compiled, X, y, loss, optimizer, skip_nonfinite, count, start=0,
                      draws=(None, None)):
        """_step on its whole-step kernel, for X the output of the front layers (units before
        `start`, which have run, or X itself when the kernel runs the front), with the
        settings `draws` of the layers inside the kernel (_CompiledStep.draw)."""
        try:
            value, correct, stopped = compiled.run(self, X, y, optimizer, skip_nonfinite, count,
                                                   draws)
        except _kn.ArraysChanged:
            # an array the plan holds was made read-only or reshaped in place since it was
            # built (nothing ran): build again from the arrays as they are now, or take the
            # layer path, whose checks name a bad one
            inside = (compiled.front, compiled.drops)   # (the layers draws are of)
            compiled = self._rebuilt_step(X, loss, optimizer)
            if compiled is None:
                # the layers inside the kernel have drawn this step's seeds: their forward on
                # the layer path takes those (_next_seed) instead of drawing again
                return self._layer_step_drawn(X, y, loss, optimizer, skip_nonfinite, count,
                                              start, inside, draws)
            value, correct, stopped = compiled.run(self, X, y, optimizer, skip_nonfinite, count,
                                                   draws)
        return float(value), correct, stopped

    def _layer_step_drawn(self, X, y, loss, optimizer, skip_nonfinite, count, start, inside,
                          draws):
        """_layer_step for a step whose seeds the kernel's layers drew (draws, _CompiledStep.draw,
        of the layers `inside`: the kernel's front and drops) before it fell to the layer
        path: each layer's forward takes its drawn seed, so the generators stand where one
        step leaves them and the masks are those the kernel would have used. A seed the step
        does not use (it stopped before that layer) is dropped with it."""
        front, drops = inside
        layers = ([] if front is None else [front]) + list(drops)
        settings = [draws[0]] if front is not None else []
        settings += list(draws[1] or ())
        for layer, setting in zip(layers, settings):
            if setting is not None:
                layer._drawn = setting[1]
        try:
            return self._layer_step(X, y, loss, optimizer, skip_nonfinite, count, start)
        finally:
            for layer in layers:
                layer._drawn = None

    def _layer_step(self, X, y, loss, optimizer, skip_nonfinite, count, start=0):
        """_step layer by layer (the caller holds the lock), from unit `start` on (X: the
        output of the units before it, which have run). The layers' backward caches go
        when the step is done, as autograd frees what a backward pass used: the model does not
        keep its last batch's activations alive (nor pickle them), and the next step's forward
        does not allocate while they are still held."""
        try:
            return self._layer_step_run(X, y, loss, optimizer, skip_nonfinite, count, start)
        finally:
            for layer in self._layers:
                layer._drop_cache()

    def _layer_step_run(self, X, y, loss, optimizer, skip_nonfinite, count, start):
        self._check_arrays()   # before any kernel
        _check_trains(optimizer, self)
        X = self._off_grads(self._check_width(X))
        check_rows(X.shape[0], "X")   # (the loss would name its own x: the scores)
        scores = self._forward(X, True, start)
        y = _targets_for(loss, scores, y, _dtype_of(self._layers))
        value, dscores = loss(scores, y)
        correct = None
        if count and loss.accuracy_kind is not None:
            pred = loss.predict_labels(scores)
            correct = int(np.sum(pred == np.asarray(y).reshape(len(pred), -1)[:, 0]))
        if skip_nonfinite and not np.isfinite(value):
            return float(value), correct, True
        self._backward(dscores, need_dx=False)   # (checked the arrays above)
        # (an optimizer of the caller's own may hold no params: the model's gradients then)
        params = getattr(optimizer, "params", None)
        if params is None:
            params = self.parameters()
        only = _own_part(optimizer, self)
        if only is not None:
            params = [p for p in params if p.key in only]
        if skip_nonfinite and not all(_grad_is_finite(p.grad) for p in params):
            return float(value), correct, True
        if only is None:
            optimizer.step()
        else:
            optimizer._step(only)
        return float(value), correct, False

    def evaluate(self, X, y, loss="softmax", batch_size=None):
        """``{"loss": ..., "accuracy": ...}`` in inference mode (accuracy for classifiers)."""
        loss = get_loss(loss)
        if self._layers.changed:
            self._sync()
        X = self._check_X(X, "X", False, y)
        check_rows(X.shape[0], "X")   # (the loss would name its own x: the scores)
        y = self._labels(y, X.shape[0])
        scores = self.predict(X, batch_size=batch_size)
        value, _ = loss(scores, _targets_for(loss, scores, y, _dtype_of(self._layers)))
        result = {"loss": float(value)}
        pred = loss.predict_labels(scores)
        if pred is not None:
            result["accuracy"] = float(np.mean(pred == np.asarray(y).reshape(-1)))
        return result

    def fit(self, X, y, loss="softmax", optimizer=None, epochs=10, batch_size=32, shuffle=True,
            validation_data=None, seed=None, verbose=True):
        """Train for ``epochs`` passes over (X, y) in mini-batches. Prints one progress line per
        epoch (loss, accuracy where it applies, samples/s) and returns the history, a dict of
        per-epoch lists. A non-finite loss or gradient stops training before that step updates
        anything, with a warning that names the epoch and step; the history then has
        ``"stopped"`` set to that message. The layers train in training mode (dropout and
        noise on) and are left in the mode each had before the call. ``verbose``: a bool, or a
        verbosity level (an int >= 0; any level above 0 prints).

        Everything is checked before the first step: the arguments, every label (or target) of
        ``y`` for the loss, and ``validation_data`` (X_val's shape, y_val's length and labels),
        so a bad one raises before anything trains."""
        from fastnn.optimizers import SGD

        loss = get_loss(loss)
        if self._layers.changed:
            self._sync()
        X = self._check_X(X, "X", False, y)
        y = self._labels(y, X.shape[0])
        n = X.shape[0]
        if n == 0:
            raise ValueError("X is empty: nothing to train on")
        epochs = check_int(epochs, "epochs")
        batch_size = check_int(batch_size, "batch_size")
        shuffle = check_flag(shuffle, "shuffle")   # ("no" would shuffle)
        verbose = _verbosity(verbose)   # ("no" would print)
        rng = _fit_rng(seed)
        if optimizer is None:
            optimizer = SGD(self.parameters(), lr=0.01)
        _check_optimizer(optimizer)
        out = self._feature_trace()[-1]   # the scores' width (None: unknown before a forward)
        self._check_targets(loss, y, n, "y", out)   # all of y: the steps check only their batch
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            # checked and converted once here, before the first epoch, not after it
            X_val = self._check_X(validation_data[0], "X_val", False, validation_data[1])
            n_val = X_val.shape[0]
            if n_val == 0:
                raise ValueError("X_val is empty: the validation loss over no rows is undefined")
            y_val = self._labels(validation_data[1], n_val, "y_val", "X_val")
            self._check_targets(loss, y_val, n_val, "y_val", out)
            validation_data = (X_val, y_val)
        if seed is not None:
            for layer in self._layers:
                if isinstance(layer, _REGULARIZERS):
                    layer.reseed(int(rng.integers(0, 2**63 - 1)))
        classify = loss.accuracy_kind is not None
        history = {"loss": [], "samples_per_s": []}
        if classify:
            history["accuracy"] = []
        if validation_data is not None:
            history["val_loss"] = []
            if classify:
                history["val_accuracy"] = []
        modes = _FitModes(self)   # (training mode; the layers' own modes back afterwards)
        try:
            modes.enter()
            return self._fit_run(X, y, loss, optimizer, epochs, batch_size, shuffle,
                                 validation_data, verbose, rng, classify, history, n)
        finally:
            modes.exit()

    def _fit_run(self, X, y, loss, optimizer, epochs, batch_size, shuffle, validation_data,
                 verbose, rng, classify, history, n):
        """fit after its checks, in training mode: its buffers, its epochs, and the plan of a
        partial last batch dropped afterwards when large."""
        # One batch buffer for every step (a partial last batch uses its first rows), gathered
        # into by ndarray.take: no batch-sized allocation per step. mode="clip": with "raise"
        # take buffers its output anyway (the indices are in range). (Positional arguments to
        # the method: np.take with keywords costs more than the gather of a small batch.)
        rows = min(batch_size, n)
        xbuf = np.empty((rows,) + X.shape[1:], X.dtype)
        ybuf = np.empty((rows,) + y.shape[1:], y.dtype)
        # a plan fit builds for a partial last batch is dropped when it returns, when its
        # activations are large (kept, it would hold a second set of them; rebuilding it costs
        # little beside steps of that size); a small one stays for the next fit call
        partial = n % batch_size if n > batch_size else 0
        partial_key = (partial, id(optimizer), type(loss))
        widths = last = 0
        for layer in self._layers:
            # (a Dropout or GaussianNoise inside the stack: one more buffer of its width)
            last = getattr(layer, "out_features", last)
            widths += getattr(layer, "out_features", 0) + (
                last if type(layer) in _REGULARIZERS else 0)
        if _kernel_front(self._front) is not None:
            widths += int(np.prod(X.shape[1:]))   # (its copy of the input, the front's output)
        drop_partial = (partial and partial_key not in self._compiled
                        and partial * widths * X.dtype.itemsize >= _KEEP_PLAN_BYTES)
        try:
            return self._fit_epochs(X, y, loss, optimizer, epochs, batch_size, shuffle,
                                    validation_data, verbose, rng, classify, history, xbuf, ybuf)
        finally:
            if drop_partial:
                with self._lock:
                    self._compiled.pop(partial_key, None)

    def _fit_epochs(self, X, y, loss, optimizer, epochs, batch_size, shuffle, validation_data,
                    verbose, rng, classify, history, xbuf, ybuf):
        """fit's loop over epochs and batches, after its checks."""
        n = X.shape[0]
        full = len(xbuf)
        xlast, ylast = xbuf[:n % full], ybuf[:n % full]   # a partial last batch's rows
        for epoch in range(1, epochs + 1):
            order = rng.permutation(n) if shuffle else np.arange(n)
            t0 = time.perf_counter()
            total, correct = 0.0, 0
            for step, start in enumerate(range(0, n, batch_size), 1):
                idx = order[start:start + batch_size]
                m = len(idx)
                xb = X.take(idx, 0, xbuf if m == full else xlast, "clip")
                yb = y.take(idx, 0, ybuf if m == full else ylast, "clip")
                value, hits, stopped = self._step(xb, yb, loss, optimizer, skip_nonfinite=True,
                                                  count=classify)
                if stopped:
                    what = (f"the loss became {value}" if not np.isfinite(value) else
                            f"the gradients became non-finite (loss {value:.6g})")
                    msg = (f"training stopped: {what} at epoch {epoch}, step {step} "
                           f"(try a smaller learning rate, or check the inputs for NaN/Inf)")
                    # (at fit's caller: here, _fit_run, fit, the caller)
                    warnings.warn(msg, RuntimeWarning, stacklevel=4)
                    if verbose:
                        print(msg, file=sys.stdout)
                    history["stopped"] = msg
                    return history
                total += value * len(idx)
                if classify:
                    correct += hits
            elapsed = time.perf_counter() - t0
            history["loss"].append(total / n)
            history["samples_per_s"].append(n / elapsed if elapsed > 0 else float("inf"))
            parts = [f"epoch {epoch}/{epochs}", f"loss {total / n:.4f}"]
            if classify:
                history["accuracy"].append(correct / n)
                parts.append(f"acc {correct / n:.4f}")
            if validation_data is not None:
                ev = self.evaluate(validation_data[0], validation_data[1], loss=loss)
                history["val_loss"].append(ev["loss"])
                parts.append(f"val_loss {ev['loss']:.4f}")
                if classify:
                    history["val_accuracy"].append(ev["accuracy"])
                    parts.append(f"val_acc {ev['accuracy']:.4f}")
            parts.append(f"{history['samples_per_s'][-1]:,.0f} samples/s")
            if verbose:
                print(" - ".join(parts), file=sys.stdout, flush=True)
        return history

    # ------------------------------------------------------------------ save / load
    def _architecture(self):
        """The layers' descriptions as a model file stores them: [{"type": <class name>,
        "config": <get_config()>}], each config as JSON gives it back (tuples as lists, int
        keys as strings), so that save writes, and load compares a file with, the same thing.
        A config that a file cannot hold (not a dict; a value JSON has no form for, such as an
        array or a NumPy scalar other than float64; NaN, which never equals what a file
        reads back; two keys JSON would write as one) raises, naming the layer."""
        out = []
        for i, layer in enumerate(self._layers):
            config = layer.get_config()
            what = f"layer {i} ({type(layer).__name__}) get_config()"
            if not isinstance(config, dict):
                raise TypeError(f"{what} must return a dict (a model file stores it), got "
                                f"{type(config).__name__}")
            try:
                text = json.dumps(config)
                stored = json.loads(text, object_pairs_hook=no_repeated_keys,
                                    parse_constant=float)
            except TypeError as exc:   # (a value or key JSON cannot write)
                raise TypeError(f"{what} must return a dict of JSON values (a model file "
                                f"stores it): {exc}") from None
            except (ValueError, RecursionError) as exc:   # (a cycle, a repeated key)
                raise ValueError(f"{what} must return a dict of JSON values (a model file "
                                 f"stores it): {exc}") from None
            # (two reads, each NaN a float object of its own, differ only where NaN != NaN)
            if json.loads(text, parse_constant=float) != stored:
                raise ValueError(f"{what} holds NaN, which a model file cannot compare with "
                                 "the model's own description")
            out.append({"type": type(layer).__name__, "config": stored})
        return out

    def save(self, path):
        """Write the architecture and every parameter to ``path`` (an .npz file, never a pickle).
        Parameters that loading would refuse (NaN or Inf, not float32/float64, not the layer's
        shape or dtype) raise before anything is written, as does a layer whose get_config()
        is not a dict of JSON values (_architecture); gradients are not saved. The file is
        written to a temporary name and renamed (over the file a symbolic link names, which
        stays a link; never over what is not a regular file), so a crash never leaves a
        truncated model at ``path``. A training step of the model in another thread waits
        while the arrays are written (the file holds the weights between two steps). A layer
        object listed twice is stored at each place: the model load_model builds has two
        layers with equal parameters there (the same predictions; they are no longer one)."""
        path = fs_path(path)
        with atomic_write(path) as f:
            with self._lock:
                if self._layers.changed:
                    self._build()
                meta = {"format": _FORMAT, "version": _FORMAT_VERSION, "layers": self._architecture()}
                arrays = {_META_KEY: np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
                for i, layer in enumerate(self._layers):
                    for name, value in _params_to_save(i, layer):
                        arrays[f"{i}.{name}"] = value
                write_npz(f, arrays)
        return path

    def load(self, path):
        """Load parameters saved by ``save`` into this model. The file must describe the same
        architecture; a mismatched, truncated or corrupt file raises ValueError and leaves the
        model unchanged, as does a parameter array that cannot be written (a frozen layer's
        read-only copy: the error names it). Nothing is unpickled. A training step of the model
        in another thread waits while the arrays are written."""
        meta, arrays = _read_model_file(path)
        with self._lock:
            if self._layers.changed:
                self._build()
            return self._load_locked(path, meta, arrays)

    def _load_locked(self, path, meta, arrays):
        if meta["layers"] != self._architecture():
            raise ValueError(
                f"{path} holds a different architecture:\n  file:  {_describe(meta['layers'])}\n"
                f"  model: {_describe(self._architecture())}"
            )
        staged = []
        for i, layer in enumerate(self._layers):
            if not isinstance(layer.params, dict):
                raise TypeError(f"cannot load {path}: layer {i} ({type(layer).__name__}) params "
                                f"must be a dict of arrays, got {type(layer.params).__name__}; "
                                "nothing was loaded")
            for name, value in layer.params.items():
                key = f"{i}.{name}"
                what = f"layer {i} ({type(layer).__name__}) parameter {name}"
                if not isinstance(value, np.ndarray):
                    raise TypeError(f"cannot load {path}: {what} must be a numpy.ndarray, "
                                    f"got {type(value).__name__}; nothing was loaded")
                if not value.flags.writeable:
                    raise ValueError(f"cannot load {path}: {what} is read-only; nothing was loaded")
                if key not in arrays:
                    raise ValueError(f"{path} is missing the array {key!r}")
                a = arrays[key]
                if a.shape != value.shape or a.dtype != value.dtype:
                    raise ValueError(f"{path}: array {key!r} has shape {a.shape} and dtype {a.dtype}, "
                                     f"expected {value.shape} and {value.dtype}")
                if not np.all(np.isfinite(a)):
                    raise ValueError(f"{path}: array {key!r} holds NaN or Inf")
                staged.append((value, a))
        expected = {f"{i}.{name}" for i, layer in enumerate(self._layers) for name in layer.params}
        extra = set(arrays) - expected
        if extra:
            raise ValueError(f"{path} has unexpected arrays: {name_list(sorted(extra))}")
        for value, a in staged:  # everything checked: now write
            value[...] = a
        return self


def _params_to_save(i, layer):
    """(name, array) of layer i's parameters, each one that loading would accept: what it
    would refuse (not a float32/float64 array, another shape or dtype than the layer's, NaN or
    Inf; for fastnn's layer types, other names or shapes than the layer's description gives)
    raises before anything is written. (Gradients are not saved, nor checked.)"""
    what = f"layer {i} ({type(layer).__name__})"
    params = layer.params
    if not isinstance(params, dict):
        raise TypeError(f"{what} params must be a dict of arrays, got {type(params).__name__}")
    shapes = layer.__dict__.get("_shapes", {})
    dt = getattr(layer, "dtype", None)
    described = None
    cls = type(layer).__name__
    if LAYER_TYPES.get(cls) is type(layer):
        # what load_model reads the file by: the parameters the layer's description (its
        # get_config, which the file stores) gives, exactly those names and shapes
        try:
            described = described_param_shapes(cls, layer.get_config())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} has a description that loading would refuse: {exc}") from None
        missing = [name for name in described if name not in params]
        extra = [name for name in params if name not in described]
        if missing or extra:
            raise ValueError(f"{what} params must hold exactly {sorted(described)} (what its "
                             f"description gives: loading would refuse the file), "
                             + (f"missing {missing}" if missing else f"got also {extra}"))
    out = []
    for name, value in params.items():
        if not isinstance(value, np.ndarray) or value.dtype.char not in "fd":
            raise TypeError(f"{what} parameter {name} must be a float32 or float64 array, got "
                            f"{value.dtype if isinstance(value, np.ndarray) else type(value).__name__}")
        if name in shapes and dt is not None and (value.shape != shapes[name] or value.dtype != dt):
            raise ValueError(f"{what} parameter {name} must have shape {shapes[name]} and dtype "
                             f"{np.dtype(dt).name} (the layer's), got {value.shape} and {value.dtype}")
        if described is not None and value.shape != described[name]:
            raise ValueError(f"{what} parameter {name} has shape {value.shape}, but the layer's "
                             f"description gives {described[name]}: loading would refuse the file")
        if not np.isfinite(value).all():
            raise ValueError(f"{what} parameter {name} holds NaN or Inf: loading would refuse "
                             "the file")
        out.append((name, value))
    return out


def _describe(layers):
    return ", ".join(f"{entry.get('type')}({entry.get('config')})" for entry in layers)


def _fit_rng(seed):
    """fit's random source: np.random.default_rng(seed) for what it takes (None, an int >= 0,
    a sequence of them, a SeedSequence or Generator), errors naming seed; a scalar is checked
    as every seed is (check_seed: bools, floats and negative ints refused)."""
    if not isinstance(seed, (list, tuple, np.ndarray, np.random.SeedSequence,
                             np.random.BitGenerator, np.random.Generator)):
        check_seed(seed)
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"seed must be an int, a SeedSequence, a Generator or None: {exc}") from None


def _own_part(optimizer, model):
    """The keys of model's parameters when a step of model must update only those of the
    optimizer's: a fastnn optimizer (its class's own step(), none set on the object) that also
    holds parameters of other models (one optimizer over two models that share layers). Their
    gradients are not this batch's: as PyTorch's step skips a parameter that the backward
    since zero_grad() gave no gradient, they are left as they are (no update, no momentum,
    no weight decay). None: optimizer.step() updates all it holds."""
    if not isinstance(optimizer, Optimizer) or not own_step(optimizer):
        return None
    # (the usual case first, without building the model's parameters: every parameter's
    # layer is one of the model's own layers)
    layers = {id(layer) for layer in model._layers}
    if all(id(getattr(p, "layer", None)) in layers for p in optimizer.params):
        return None
    mine = {p.key for p in model.parameters()}   # (layers of a layer of the caller's own)
    for p in optimizer.params:
        if p.key not in mine:
            return mine
    return None


def _check_trains(optimizer, model):
    """ValueError when a fastnn optimizer would train nothing of `model`: it holds no
    parameter, or none of the model's (one made from another model's parameters() would leave
    this one as it is, and step the other with stale gradients). Other parameters beside the
    model's are the caller's choice (one optimizer over two models that share layers, as in
    PyTorch: a step of one model leaves them alone, _own_part); a subset of the model's
    trains it and leaves the rest frozen."""
    if not isinstance(optimizer, Optimizer):
        return   # an object of the caller's own with a step() method: its own business
    params = optimizer.params
    layers = model._layers
    for p in params:   # (the usual case: the first parameter's layer is in the list)
        owner = getattr(p, "layer", None)
        for layer in layers:
            if layer is owner:
                return
    if not params:
        raise ValueError("optimizer has no parameters to update (its params list is empty)")
    # layers of a layer of the caller's own (its parameters() gives theirs)
    mine = {p.key for p in model.parameters()}
    if not any((id(getattr(p, "layer", None)), getattr(p, "name", None)) in mine for p in params):
        raise ValueError("optimizer holds none of this model's parameters, so it would train "
                         "nothing: make it from this model's parameters()")


def _grads_of(layer):
    """A layer's gradient arrays (none when its grads is not a dict: the checks name that)."""
    grads = getattr(layer, "grads", None)
    return grads.values() if isinstance(grads, dict) else ()


def _check_optimizer(optimizer):
    if isinstance(optimizer, type):   # (the class: its step is a function still wanting self)
        raise TypeError(f"optimizer must be an optimizer object, got the class {optimizer.__name__}: "
                        f"make one, e.g. {optimizer.__name__}(model.parameters(), lr=...)")
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError("optimizer must be a fastnn optimizer (SGD, RMSProp, Adam) or an object with a "
                        f"step() method, got {type(optimizer).__name__}")


_ZIP_SIGNATURE = b"PK\x03\x04"   # how every file Sequential.save writes begins (a zip local header)
_META_TOP_KEYS = ("format", "version", "layers")


def _model_key(key):
    """Whether `key` is an array name Sequential.save writes: the metadata, or
    "<layer index>.<parameter name>"."""
    index, dot, name = key.partition(".")
    return key == _META_KEY or (dot == "." and index.isdigit() and index.isascii() and name != "")


def _read_model_file(path):
    """(meta, arrays) from a fastnn model file, fully read and checked, or ValueError. Its
    first bytes are checked before the rest is read, so that a large file of something else
    is refused without being read."""
    path = fs_path(path)
    try:
        with open_regular(path) as buffered:
            f = buffered.raw   # (unbuffered: the rest is then read into one bytes object, not two)
            head = f.read(len(_ZIP_SIGNATURE))
            if head != _ZIP_SIGNATURE:
                raise ValueError(f"{path} is not a fastnn model file (it does not begin as a zip "
                                 f"archive: first bytes {head!r})")
            f.seek(0)
            raw = f.readall()
    except OSError as exc:
        raise ValueError(f"cannot read model file {path}: {exc}") from None
    except MemoryError:
        raise ValueError(f"cannot read model file {path}: out of memory reading it") from None
    arrays = read_npz(io.BytesIO(raw), f"{path} (a fastnn model file)", "Sequential.save",
                      key_ok=_model_key)
    del raw
    if _META_KEY not in arrays:
        raise ValueError(f"{path} is not a fastnn model file (no {_META_KEY!r} entry)")
    meta_arr = arrays.pop(_META_KEY)
    try:
        if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1:
            raise ValueError("bad metadata array")
        meta = json.loads(meta_arr.tobytes().decode("utf-8"), object_pairs_hook=no_repeated_keys)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # (RecursionError: nesting)
        raise ValueError(f"{path} has corrupt metadata: {type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or not isinstance(meta.get("layers"), list):
        raise ValueError(f"{path} is not a fastnn Sequential model file")
    if type(meta.get("version")) is not int or meta["version"] != _FORMAT_VERSION:
        raise ValueError(f"{path} has format version {meta.get('version')!r}, this fastnn reads "
                         f"{_FORMAT_VERSION!r} (an int)")
    unknown = [k for k in meta if k not in _META_TOP_KEYS]
    if unknown:
        raise ValueError(f"{path} has metadata entries this fastnn does not know: {name_list(unknown)}")
    for i, entry in enumerate(meta["layers"]):
        # (what Sequential.save writes: {"type": <class name>, "config": <its get_config()>})
        if (not isinstance(entry, dict) or sorted(entry) != ["config", "type"]
                or not isinstance(entry["type"], str) or not isinstance(entry["config"], dict)):
            raise ValueError(f"{path}: layer {i} has an unknown description {_short(entry)}")
    return meta, arrays


def _short(value, limit=200):
    """repr(value), cut to about `limit` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def load_model(path):
    """Build a Sequential from a file written by ``Sequential.save`` (architecture and weights)."""
    meta, arrays = _read_model_file(path)
    layers = []
    for i, entry in enumerate(meta["layers"]):
        if entry["type"] not in LAYER_TYPES:   # (_read_model_file checked the entry's form)
            raise ValueError(f"{path}: layer {i} has an unknown description {_short(entry)}")
        # Check the stored parameters against the shapes the description gives before building
        # anything, so a crafted description of a huge layer costs nothing: the layer then
        # allocates no more than the file's own arrays hold.
        try:
            shapes = described_param_shapes(entry["type"], entry["config"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: layer {i} ({entry['type']}) has a bad description: {exc}") from None
        for name, shape in shapes.items():
            stored = arrays.get(f"{i}.{name}")
            if stored is None or stored.shape != shape:
                raise ValueError(f"{path}: layer {i} ({entry['type']}) is described with {name} of "
                                 f"shape {shape} but its stored {name} has shape "
                                 f"{None if stored is None else stored.shape}")
            # (and holds its values: an array of a zero-byte dtype has any shape in no bytes)
            if stored.dtype not in (np.float32, np.float64):
                raise ValueError(f"{path}: layer {i} ({entry['type']}) stores {name} with dtype "
                                 f"{stored.dtype}, expected float32 or float64")
        try:
            layers.append(LAYER_TYPES[entry["type"]](**entry["config"]))
        except (TypeError, ValueError, MemoryError) as exc:
            raise ValueError(f"{path}: layer {i} ({entry['type']}) cannot be built: {exc}") from None
    try:
        model = Sequential(*layers)
    except (TypeError, ValueError) as exc:   # no layers, or layers whose sizes do not chain
        raise ValueError(f"{path}: its layers do not make a model: {exc}") from None
    with model._lock:   # (the arrays read above: the file is read once, not again by load)
        return model._load_locked(fs_path(path), meta, arrays)
