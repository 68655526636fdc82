"""Optimizers over a model's parameters, PyTorch-style: ``opt = SGD(model.parameters(), lr=0.1)``,
then ``opt.step()`` after each backward. Each step runs the fused update kernel of
fastnn.optim in place on every parameter.

L2 regularization ("gradual forgetting") is ``weight_decay``: the gradient used is
``grad + weight_decay * W``. It applies to weight matrices (the course's L2 on W), not to
biases or PReLU slopes.
"""
import copy
import warnings
import weakref

import numpy as np

from fastnn import optim as _optim
from fastnn._kernels import network as _kn
from fastnn._kernels import optim as _ko
from fastnn._validation import CheckedSettings, check_flag, check_int, check_scalar
from fastnn.layers import Parameter

__all__ = ["Optimizer", "SGD", "RMSProp", "Adam"]


def _fits(a, data):
    """State array `a` was made for parameter array `data` (its shape and dtype)."""
    return isinstance(a, np.ndarray) and a.shape == data.shape and a.dtype == data.dtype


def _check_params(params):
    """params as a list of Parameters, each naming a different (layer, name), else a TypeError
    or ValueError naming it. The same parameter twice would be updated twice per step (two
    models sharing a layer: a.parameters() + b.parameters() lists its parameters twice)."""
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"params must be an iterable of Parameters (model.parameters()), "
                        f"got {type(params).__name__}") from None
    if not params:
        raise ValueError("params is empty: pass model.parameters() of a model with learnable layers")
    seen = set()
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"params must be Parameter objects (from model.parameters()), got {type(p).__name__}")
        key = p.key
        if key in seen:
            raise ValueError(f"params[{i}] ({p.name} of {type(p.layer).__name__} at {id(p.layer):#x}) "
                             "is listed twice: each step would update it twice (list a layer "
                             "shared by several models once)")
        seen.add(key)
    return params


def _id_key(key):
    """Whether a state key has the shape of the keys _slots makes: (id(layer), name)."""
    return type(key) is tuple and len(key) == 2 and type(key[0]) is int and type(key[1]) is str


def _check_state(state):
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict (keyed by Parameter.key), got {type(state).__name__}")
    return state


def _entry(p, kind):
    """p's array in its layer's params or grads (kind), or the error naming what is missing."""
    d = getattr(p.layer, kind)
    if not isinstance(d, dict):
        raise TypeError(f"parameter {p.name}: {type(p.layer).__name__}.{kind} must be a dict of "
                        f"arrays, got {type(d).__name__}")
    try:
        return d[p.name]
    except KeyError:
        raise ValueError(f"parameter {p.name}: {type(p.layer).__name__}.{kind} has no entry "
                         f"{p.name!r}") from None


def _data_of(p):
    return _entry(p, "params")


def _grad_of(p):
    return _entry(p, "grads")


class _Watch:
    """An optimizer's watch over the layers its state is keyed by, (id(layer), name). When one
    of them is collected, its id is free: a layer made later may be given it, and took the
    dead layer's state (a silent wrong start), and the optimizer held the state of every model
    it had trained. A finalizer per key notes the key (from whatever thread the collector runs
    in) and the optimizer drops its state at its next use (Optimizer._prune), never while
    other code may be iterating the state. Nothing else holds such a key: a Parameter, which
    an optimizer's params hold, keeps its layer alive. The watch ends with its optimizer."""

    __slots__ = ("fins", "dead", "__weakref__")

    def __init__(self):
        self.fins = {}   # state key -> its layer's finalizer (None: no weak references)
        self.dead = []   # keys whose layers were collected, not yet dropped


def _noted_dead(watch_ref, key):
    """weakref.finalize's callback when the layer of state key `key` is collected."""
    watch = watch_ref()
    if watch is not None:
        watch.dead.append(key)


def _end_watch(fins):
    """weakref.finalize's callback when an optimizer is collected: its finalizers on layers
    that live on are detached (a long-lived model trained by many optimizers kept one per
    parameter of each)."""
    for fin in list(fins.values()):
        if fin is not None:
            fin.detach()
    fins.clear()


class Optimizer(CheckedSettings):
    def __init__(self, params, lr, weight_decay):
        self.params = params
        self.lr = lr
        self.weight_decay = weight_decay
        self.state = {}

    # The hyper-parameters are checked whenever they are set (CheckedSettings).
    _CHECKS = {
        "params": _check_params,
        "lr": lambda v: check_scalar(v, "lr", lo=0.0),   # (0: a schedule's warm-up or end)
        "weight_decay": lambda v: check_scalar(v, "weight_decay", lo=0.0),
        "state": _check_state,
    }

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "params" or name == "state":
            self._prune()
            self._watch_held()

    _watch_ = None   # its _Watch, made by the first _watch (a copy, a pickle: their own)

    def _watch(self, key, layer):
        """Watch `layer`, whose state is state[key] (_Watch)."""
        watch = self.__dict__.get("_watch_")
        if watch is None:
            watch = self.__dict__["_watch_"] = _Watch()
            weakref.finalize(self, _end_watch, watch.fins).atexit = False
        try:
            fin = weakref.finalize(layer, _noted_dead, weakref.ref(watch), key)
            fin.atexit = False
        except TypeError:
            fin = None   # a layer class without weak references: its state stays (as before)
        watch.fins[key] = fin

    def _prune(self):
        """Drop the state of the watched layers collected since (_Watch)."""
        watch = self._watch_
        if watch is None or not watch.dead:
            return
        st = self.__dict__.get("state")
        while True:
            try:
                key = watch.dead.pop()
            except IndexError:   # (none left; another thread may have taken the last)
                return
            watch.fins.pop(key, None)
            if isinstance(st, dict):
                st.pop(key, None)

    def _watch_held(self):
        """Watch the layer of each state entry of a parameter in params that is not watched
        yet: state that came other than through _slots (a copy's, a pickle's, an assignment)."""
        st = self.__dict__.get("state")
        params = self.__dict__.get("params")
        if not isinstance(st, dict) or not st or not params:
            return
        for p in params:
            key = p.key
            watch = self._watch_
            if key in st and (watch is None or key not in watch.fins):
                self._watch(key, p.layer)

    # pickle / copy.deepcopy: the state is keyed by (id(layer), name), which a copy does not
    # keep, so those entries travel with their parameter's position in params and are keyed
    # again by the copy's layers (before, a copy found no state and started from zeros, or
    # took another layer's whose new id was an old one's). Such entries of parameters the
    # optimizer no longer holds are dropped; keys of other shapes (a subclass's own) travel as
    # they are. copy.copy shares the state, as it shares params.
    def __getstate__(self):
        self._prune()
        state = self.__dict__.copy()
        state.pop("_watch_", None)   # (the copy watches its own layers)
        st = self.state
        if isinstance(st, dict):
            where = {p.key: k for k, p in enumerate(self.params)}
            kept = copy.copy(st)   # (a dict subclass stays one)
            kept.clear()
            kept.update((key, value) for key, value in st.items() if key in where or not _id_key(key))
            state["state"] = kept
            state["_state_positions"] = [(key, where[key]) for key in kept if key in where]
        return state

    def __setstate__(self, state):
        state = dict(state)
        positions = state.pop("_state_positions", None)
        self.__dict__.update(state)   # (values checked when they were set)
        st = self.state
        if not isinstance(st, dict):
            return
        if positions is None and any(_id_key(key) for key in st):
            # pickled by a fastnn before positions travelled: its layers' ids are gone
            warnings.warn("this optimizer was pickled by an older fastnn: its state cannot be "
                          "matched to its parameters and starts afresh", RuntimeWarning, stacklevel=2)
        moved = dict(positions or ())
        params = self.params
        fresh = copy.copy(st)
        fresh.clear()
        for key, value in st.items():
            k = moved.get(key)
            if k is not None and 0 <= k < len(params):
                fresh[params[k].key] = value
            elif not _id_key(key):
                fresh[key] = value
        self.__dict__["state"] = fresh
        self._watch_held()

    def __copy__(self):
        dup = object.__new__(type(self))
        dup.__dict__.update(self.__dict__)
        # it watches for itself the state it shares: the layers of its params, and the others
        # this optimizer watches (taken out of params, alive), whose state may outlive it
        watch = dup.__dict__.pop("_watch_", None)
        dup._watch_held()
        if watch is not None:
            for key, fin in list(watch.fins.items()):
                alive = fin.peek() if fin is not None else None
                if alive is not None and (dup._watch_ is None or key not in dup._watch_.fins):
                    dup._watch(key, alive[0])
        return dup

    def step(self):
        """Update every parameter the optimizer holds with the gradient it holds now."""
        self._step(None)

    def _step(self, only):
        """step() over the parameters whose key is in `only` (None: all of them).
        Sequential.train_step passes its model's own when the optimizer also holds other
        models' parameters, which this batch gave no gradient (model._own_part)."""
        raise NotImplementedError

    def zero_grad(self):
        for p in self.params:
            g = _grad_of(p)
            if not isinstance(g, np.ndarray):   # (as step names it)
                raise TypeError(f"the gradient of parameter {p.name} must be a numpy.ndarray, "
                                f"got {type(g).__name__}")
            g[...] = 0

    def _slots(self, p, n, data=None):
        """The n state arrays of parameter p (SGD's velocity; RMSProp's cache; Adam's m, v):
        made (zeros) for a parameter without state, and remade for one whose state was made
        for an array of another shape or dtype (the parameter was replaced). State that is not
        a list of n writeable C-contiguous arrays of the parameter's shape and dtype (edited by
        hand) raises a TypeError or ValueError naming it, before any update."""
        key = p.key
        watch = self._watch_
        if watch is None or key not in watch.fins or watch.dead:
            self._prune()
            if watch is None or key not in watch.fins:
                self._watch(key, p.layer)
        if data is None:
            data = p.data
        st = self.state.get(key)
        if type(st) is list and len(st) == n:   # (the state this method makes: the fast path)
            shape, dtype = data.shape, data.dtype
            s0 = st[0]
            if type(s0) is np.ndarray and s0.shape == shape and s0.dtype == dtype and _optim._writable(s0):
                if n == 1:
                    return st
                s1 = st[1]
                if type(s1) is np.ndarray and s1.shape == shape and s1.dtype == dtype and _optim._writable(s1):
                    return st
        return self._remade_slots(key, p, data, st, n)

    def _remade_slots(self, key, p, data, st, n):
        what = f"{type(self).__name__}.state[{key!r}] (the state of {p!r})"
        if st is not None:
            if not isinstance(st, (list, tuple)):
                raise TypeError(f"{what} must be a list of {n} arrays, got {type(st).__name__}")
            if len(st) != n:
                raise ValueError(f"{what} must hold {n} array{'s' if n > 1 else ''}, got {len(st)}")
            for k, a in enumerate(st):
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{what} entry {k} must be a numpy.ndarray, got {type(a).__name__}")
            if all(_fits(a, data) for a in st):
                for k, a in enumerate(st):
                    if not _optim._writable(a):   # (the update kernels write it in place)
                        raise ValueError(f"{what} entry {k} must be a writeable C-contiguous array")
                return st   # (a tuple, or an ndarray subclass: taken as before)
            if _fits(st[0], data):   # the first fits: not a replaced parameter's
                k = next(k for k, a in enumerate(st) if not _fits(a, data))
                raise ValueError(f"{what} entry {k} must have the parameter's shape {data.shape} "
                                 f"and dtype {data.dtype}, got {st[k].shape} and {st[k].dtype}")
        st = [np.zeros_like(data) for _ in range(n)]
        self.state[key] = st
        return st

    def _update(self, rule, p, w, g, s1=None, s2=None, h1=0.0, h2=0.0, eps=0.0, c1=1.0, c2=1.0):
        wd = self.weight_decay if p.decay else 0.0
        _optim._run(rule, w, g, s1, s2, self.lr, h1, h2, eps, c1, c2, wd)

    def _prepared(self, n, only=None):
        """(parameter, its array, its gradient, its n state arrays) for every parameter (whose
        key is in `only`, when given), all checked before the first update: a step that
        raises has updated nothing. A gradient
        that shares memory with a parameter (its own or another's, which an update before its
        own would change) is read from a copy, as fastnn.optim's rules do."""
        work = []
        add, slots = work.append, self._slots
        for p in self.params:
            if only is not None and p.key not in only:
                continue
            w, g = _data_of(p), _grad_of(p)
            if not isinstance(w, np.ndarray):
                raise TypeError(f"parameter {p.name} must be a numpy.ndarray, got {type(w).__name__}")
            if not _optim._writable(w):
                raise ValueError(f"parameter {p.name} must be a writeable C-contiguous array")
            if type(g) is not np.ndarray or g.shape != w.shape or g.dtype != w.dtype:
                if not isinstance(g, np.ndarray):
                    raise TypeError(f"the gradient of parameter {p.name} must be a numpy.ndarray, "
                                    f"got {type(g).__name__}")
                if g.shape != w.shape or g.dtype != w.dtype:
                    raise ValueError(f"the gradient of parameter {p.name} must have its shape "
                                     f"{w.shape} and dtype {w.dtype}, got {g.shape} and {g.dtype}")
            add([p, w, g, slots(p, n, w) if n else None])
        if n:
            self._check_state_apart(work)
        for k in _kn.meeting([item[2] for item in work], [item[1] for item in work]):
            work[k][2] = work[k][2].copy()
        return work

    def _check_state_apart(self, work):
        """ValueError naming a state array that shares memory with another state array, a
        parameter or a gradient (state edited by hand: ``state[k][1] = state[k][0]``). The
        update writes each state array in place while it reads the others, so shared memory
        would give wrong numbers. work: (parameter, its array, its gradient, its state arrays)
        for every parameter (_prepared's, or the compiled step's build). Parameters may share
        memory with each other (tied weights) and gradients with parameters (read from a copy
        then): only pairs with a state array count."""
        n = len(work)
        arrays = [item[1] for item in work] + [item[2] for item in work]
        for item in work:
            arrays.extend(item[3])
        pair = _kn.meeting_pair(arrays, [False] * (2 * n) + [True] * (len(arrays) - 2 * n))
        if pair is None:
            return

        def name(k):   # (arrays[k]: a parameter, a gradient, or a state array)
            if k < 2 * n:
                p = work[k % n][0]
                return f"parameter {p.name}" if k < n else f"the gradient of parameter {p.name}"
            k -= 2 * n
            for p, _, _, slots in work:
                if k < len(slots):
                    return f"{type(self).__name__}.state[{p.key!r}] entry {k} (the state of {p!r})"
                k -= len(slots)

        i, j = pair   # (j is a state array's: they come last)
        raise ValueError(f"{name(j)} shares memory with {name(i)}: each state array must be its own")


def own_step(optimizer):
    """Whether optimizer's step() is Optimizer's own, with no step set on the object or on its
    class (a wrapper that clips or logs): only then may a model's step run the update
    without calling it (the whole-step kernel) or update a subset of its parameters
    (Optimizer._step)."""
    return type(optimizer).step is Optimizer.step and "step" not in getattr(optimizer, "__dict__", ())


class SGD(Optimizer):
    """SGD with optional momentum and Nesterov momentum (the course's formulas)."""

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum
        self.nesterov = nesterov

    _CHECKS = dict(Optimizer._CHECKS, momentum=lambda v: check_scalar(v, "momentum", lo=0.0),
                   nesterov=lambda v: check_flag(v, "nesterov"))   # ("no" would be True)

    def __setattr__(self, name, value):
        if name in ("momentum", "nesterov"):
            value = self._CHECKS[name](value)
            state = self.__dict__
            nesterov = value if name == "nesterov" else state.get("nesterov", False)
            momentum = value if name == "momentum" else state.get("momentum", 0.0)
            if nesterov and momentum == 0:
                raise ValueError("nesterov=True needs momentum > 0")
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _step(self, only):
        if self.momentum == 0:
            for p, w, g, _ in self._prepared(0, only):
                self._update(_ko.SGD, p, w, g)
        else:
            rule = _ko.NESTEROV if self.nesterov else _ko.MOMENTUM
            for p, w, g, (v,) in self._prepared(1, only):
                self._update(rule, p, w, g, v, h1=self.momentum)


class RMSProp(Optimizer):
    """RMSProp (the course's formula): ``cache = decay_rate * cache + (1 - decay_rate) * g**2``,
    then ``W -= lr * g / (sqrt(cache) + eps)``, with ``g`` the gradient (plus
    ``weight_decay * W`` for weight matrices)."""

    def __init__(self, params, lr=0.01, decay_rate=0.99, eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.decay_rate = decay_rate
        self.eps = eps

    _CHECKS = dict(Optimizer._CHECKS,
                   decay_rate=lambda v: check_scalar(v, "decay_rate", lo=0.0, hi=1.0, hi_open=True),
                   eps=lambda v: check_scalar(v, "eps", lo=0.0))

    def _step(self, only):
        for p, w, g, (c,) in self._prepared(1, only):
            self._update(_ko.RMSPROP, p, w, g, c, h1=self.decay_rate, eps=self.eps)


def _betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return tuple(check_scalar(b, "betas", lo=0.0, hi=1.0, hi_open=True) for b in betas)


class Adam(Optimizer):
    """Adam with bias correction (the course's formula): ``t`` counts steps from 1;
    ``m = b1 * m + (1 - b1) * g``, ``v = b2 * v + (1 - b2) * g**2``, then
    ``W -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``, with ``g`` the gradient
    (plus ``weight_decay * W`` for weight matrices) and ``(b1, b2) = betas``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.betas = betas
        self.eps = eps
        self.t = 0

    _CHECKS = dict(Optimizer._CHECKS, betas=_betas, eps=RMSProp._CHECKS["eps"],
                   # (below 2**1023: beta ** t of a larger int raises OverflowError)
                   t=lambda v: (v if type(v) is int and 0 <= v < 2**1023
                                else check_int(v, "t", minimum=0, below=2**1023)))

    def _step(self, only):
        work = self._prepared(2, only)   # (before t moves: a step that raises changes nothing)
        object.__setattr__(self, "t", self.t + 1)   # (an int already checked: no __setattr__)
        b1, b2 = self.betas
        c1, c2 = 1.0 - b1**self.t, 1.0 - b2**self.t
        for p, w, g, (m, v) in work:
            self._update(_ko.ADAM, p, w, g, m, v, h1=b1, h2=b2, eps=self.eps, c1=c1, c2=c2)
