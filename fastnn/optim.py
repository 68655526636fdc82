"""Update rules with the course's interface: ``next_w, config = rule(w, dw, config)``.

Each rule runs one fused, threaded pass that updates ``w`` IN PLACE and returns it as
``next_w`` (the course's Solver stores ``next_w`` back into the model, so both conventions
work). State (``velocity``, ``cache``, ``m``, ``v``) lives in ``config`` as arrays of w's shape and
dtype, created on the first call. When ``w`` cannot be updated in place (not a C-contiguous
float32/float64 ndarray in native byte order, an ndarray subclass such as ``np.memmap``, or
read-only) a new array is returned and ``w`` is left alone.

State arrays are updated in place too, but only those fastnn.optim allocated itself (it keeps a
weak, identity-based registry of them): a state array the caller put into ``config`` is copied on
first use, the copy (which fastnn then owns) goes into the returned config, and the caller's
array is never written. So the arrays of a returned config are updated in place by the next
call with that config (copy them, e.g. ``copy.deepcopy(config)``, to keep a snapshot). A state
array that shares memory with ``w``, ``dw`` or another state array of the same call is replaced
by a copy, and a ``dw`` that shares memory with ``w`` is copied before ``w`` is updated, so
aliased arguments give the reference's numbers.

Defaults are the course's: sgd/sgd_momentum/nesterov_momentum/rmsprop ``learning_rate=1e-2``,
``momentum=0.9``, ``decay_rate=0.99``, ``epsilon=1e-8``; adam ``learning_rate=1e-3``,
``beta1=0.9``, ``beta2=0.999``, ``epsilon=1e-8``, and ``t`` incremented before it is used.
Beyond the course, a ``weight_decay`` key adds L2 weight decay: the gradient used is
``dw + wd * w``. It is read when the caller puts it into ``config`` and is never added when absent
(0 then), so the returned config has exactly the course's keys. Adam's ``t`` may be any finite
real >= 0 (a float, as read back from JSON, too): an int stays an int and a float becomes
``t + 1.0``.
"""
import numbers
import weakref

import numpy as np

from fastnn import _threads
from fastnn._kernels import optim as _ko
from fastnn._validation import as_float_array, check_same_shape, check_scalar, float_dtype_of

__all__ = ["sgd", "sgd_momentum", "nesterov_momentum", "rmsprop", "adam"]


def _writable(a):
    """The update kernels can write array `a` in place (w or a state array)."""
    flags = a.flags
    return flags.c_contiguous and flags.writeable


def _target(w, dw, config=None, states=()):
    """The array to update in place: w itself when possible, else a contiguous float copy
    (made once dw is known to have w's shape: a huge broadcast w is refused, not copied; a
    dw that is not an array, a list, is converted for its shape, after w's dtype is checked
    as w's conversion checks it; and so are the arrays config holds under `states`, the
    rule's state, with the error _state gives them)."""
    if type(w) is np.ndarray and w.dtype.char in "fd" and w.dtype.isnative and _writable(w):
        return w
    if isinstance(w, np.ndarray):
        if isinstance(dw, np.ndarray):
            check_same_shape(dw, "dw", w, "w")
            dt = float_dtype_of(w, "w")
            float_dtype_of(dw, "dw")   # (its TypeError too before the copy, as _grad names it)
        else:
            dt = float_dtype_of(w, "w")
            # (only its shape is used: _grad converts dw again, to w's dtype)
            check_same_shape(as_float_array(dw, "dw"), "dw", w, "w")
        for key in states:
            s = config.get(key)
            if isinstance(s, np.ndarray) and s.shape != w.shape:   # (raises, naming it)
                as_float_array(s, f"config['{key}']", dt, shape=w.shape,
                               shape_text=f"the shape of w {w.shape}")
    return as_float_array(w, "w").copy()


def _grad(dw, w):
    """dw as a contiguous array of w's dtype and shape, never sharing memory with w (the kernel
    writes w while it reads dw: overlapping views of one buffer would read updated values)."""
    if not (type(dw) is np.ndarray and dw.dtype is w.dtype and dw.shape == w.shape and dw.flags.c_contiguous):
        dw = as_float_array(dw, "dw", w.dtype, shape=w.shape, shape_text=f"the shape of w {w.shape}")
    if _may_share(dw, w):
        dw = dw.copy()
    return dw


def _config(config):
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict or None, got {type(config).__name__}")
    return config


# The state arrays fastnn.optim allocated itself, as id -> weak reference (ndarrays are not
# hashable, so no WeakSet; a plain dict of weakrefs is ~5x faster to look up than a
# WeakValueDictionary): only these are updated in place. An entry goes when its array dies, so
# a reused id never matches (the lookup also checks identity).
_owned = {}
# np.may_share_memory without its __array_function__ dispatch (every array compared here is a
# plain ndarray; the dispatch is half the cost of a call). The arrays are C-contiguous, so the
# bounds check is exact: their bounds overlap only when they share memory.
_may_share = getattr(np.may_share_memory, "_implementation", np.may_share_memory)


def _own(a):
    """Register `a`, an array fastnn.optim allocated (so it owns its memory), as its own."""
    key = id(a)
    _owned[key] = weakref.ref(a, lambda _, key=key: _owned.pop(key, None))
    return a


def _is_owned(a):
    ref = _owned.get(id(a))
    return ref is not None and ref() is a


def _state(config, key, w, *others):
    """config[key] as a contiguous, writeable array of w's dtype and shape that fastnn owns and
    that shares no memory with w or with `others` (dw and the call's other state arrays):
    config[key] itself when it is such an array, else a registered copy (zeros when absent).
    Not yet stored in config (_commit does that once every check has passed)."""
    s = config.get(key)
    if s is None:
        return _own(np.zeros_like(w))
    if (_is_owned(s) and (s.dtype is w.dtype or s.dtype == w.dtype) and s.shape == w.shape
            and _writable(s)):
        for other in (w,) + others:
            # s owns its memory (fastnn allocated it), so an array that owns its memory too
            # overlaps it only by being it: the memory check is for views (base not None)
            if other is s or (other.base is not None and _may_share(s, other)):
                return _own(s.copy())
        return s
    # (the shape checked before a copy too: a huge broadcast view is refused, not copied)
    a = as_float_array(s, f"config['{key}']", w.dtype, shape=w.shape,
                       shape_text=f"the shape of w {w.shape}")
    if a is s or not a.flags.owndata:  # the caller's memory (the array itself or a view of it)
        a = a.copy()
    return _own(a)


def _hyper(config, defaults, key, default, lo=None, hi=None, lo_open=False):
    """config[key] (default if absent) checked. The default is noted in `defaults`; _commit
    writes it into config once every check has passed, so a refused call leaves config as
    it was."""
    defaults[key] = default
    return check_scalar(config.get(key, default), f"config['{key}']", lo=lo, hi=hi, lo_open=lo_open)


def _weight_decay(config):
    """config['weight_decay'], checked, or 0.0 when absent: a fastnn extension, so unlike the
    course's hyperparameters it is not written into config (the course's rules have no such
    key)."""
    return _hyper(config, {}, "weight_decay", 0.0, lo=0.0)


def _adam_step_count(config):
    """config['t'] + 1 (config['t'] absent: 0). t may be any finite real >= 0, as the course's
    ``config['t'] += 1`` takes it (a 0-d array too, as the other hyperparameters); an int
    stays an int (a Python int), a float becomes a float."""
    t = config.get("t", 0)
    if type(t) is np.ndarray and t.ndim == 0 and t.dtype.kind in "iuf":
        t = t[()]   # (its NumPy scalar: checked below as one)
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"config['t'] must be a non-negative number (the step count), "
                        f"got {type(t).__name__} {t!r}")
    if isinstance(t, numbers.Integral):
        t = int(t)
        if t < 0:
            raise ValueError(f"config['t'] must be >= 0 (the step count), got {t}")
        if t >= 2**1023:   # (beta ** t would raise OverflowError)
            raise ValueError(f"config['t'] must be finite as a float, got an integer of "
                             f"{t.bit_length()} bits")
        return t + 1
    try:
        t = float(t)
    except (OverflowError, ValueError):
        raise ValueError(f"config['t'] must be a finite number >= 0, got {t!r}") from None
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"config['t'] must be a finite number >= 0, got {t}")
    return t + 1.0


def _commit(config, defaults, **state):
    """After every check: the course's rules leave their defaults in config (setdefault) and
    their state arrays."""
    for key, value in defaults.items():
        config.setdefault(key, value)
    config.update(state)


def _run(rule, w, dw, s1, s2, lr, h1=0.0, h2=0.0, eps=0.0, c1=1.0, c2=1.0, wd=0.0):
    _ko.update(rule, w.reshape(-1), dw.reshape(-1),
               None if s1 is None else s1.reshape(-1), None if s2 is None else s2.reshape(-1),
               lr, h1, h2, eps, c1, c2, wd, _threads._num_threads)
    return w


def sgd(w, dw, config=None):
    """Vanilla SGD: ``w -= learning_rate * dw``."""
    if _ko.rule_fast(_ko.SGD, w, dw, config, None, None, _threads._num_threads):
        return w, config   # (the common case, checked and run in compiled code: csrc/optim.pyx)
    config, defaults = _config(config), {}
    lr = _hyper(config, defaults, "learning_rate", 1e-2, lo=0.0)
    wd = _weight_decay(config)
    w = _target(w, dw)
    dw = _grad(dw, w)
    _commit(config, defaults)
    return _run(_ko.SGD, w, dw, None, None, lr, wd=wd), config


def _fast(rule, w, dw, config, key1, key2=None):
    """The compiled update (optim.rule_fast) of a rule with state, when config already holds
    state arrays under key1 (and key2) that fastnn allocated (its registry: the one check
    compiled code does not make). True when it ran; the checked path does every other call."""
    if type(config) is not dict:
        return False
    s1 = config.get(key1)
    s2 = None if key2 is None else config.get(key2)
    if not (_is_owned(s1) and (key2 is None or _is_owned(s2))):
        return False
    return _ko.rule_fast(rule, w, dw, config, s1, s2, _threads._num_threads)


def _momentum(rule, w, dw, config):
    if _fast(rule, w, dw, config, "velocity"):
        return w, config
    config, defaults = _config(config), {}
    lr = _hyper(config, defaults, "learning_rate", 1e-2, lo=0.0)
    mu = _hyper(config, defaults, "momentum", 0.9, lo=0.0)
    wd = _weight_decay(config)
    w = _target(w, dw, config, ("velocity",))
    dw = _grad(dw, w)
    v = _state(config, "velocity", w, dw)
    _commit(config, defaults, velocity=v)
    return _run(rule, w, dw, v, None, lr, mu, wd=wd), config


def sgd_momentum(w, dw, config=None):
    """SGD with momentum: ``v = momentum * v - learning_rate * dw; w += v``."""
    return _momentum(_ko.MOMENTUM, w, dw, config)


def nesterov_momentum(w, dw, config=None):
    """Nesterov momentum: ``v = mu * v - lr * dw; w += -mu * v_prev + (1 + mu) * v``."""
    return _momentum(_ko.NESTEROV, w, dw, config)


def rmsprop(w, dw, config=None):
    """RMSProp: ``cache = decay_rate * cache + (1 - decay_rate) * dw**2;
    w -= learning_rate * dw / (sqrt(cache) + epsilon)``."""
    if _fast(_ko.RMSPROP, w, dw, config, "cache"):
        return w, config
    config, defaults = _config(config), {}
    lr = _hyper(config, defaults, "learning_rate", 1e-2, lo=0.0)
    decay = _hyper(config, defaults, "decay_rate", 0.99, lo=0.0, hi=1.0)
    eps = _hyper(config, defaults, "epsilon", 1e-8, lo=0.0)
    wd = _weight_decay(config)
    w = _target(w, dw, config, ("cache",))
    dw = _grad(dw, w)
    c = _state(config, "cache", w, dw)
    _commit(config, defaults, cache=c)
    return _run(_ko.RMSPROP, w, dw, c, None, lr, decay, eps=eps, wd=wd), config


def adam(w, dw, config=None):
    """Adam with bias correction; ``config['t']`` is incremented before it is used."""
    if _fast(_ko.ADAM, w, dw, config, "m", "v"):
        return w, config
    config, defaults = _config(config), {}
    lr = _hyper(config, defaults, "learning_rate", 1e-3, lo=0.0)
    b1 = _hyper(config, defaults, "beta1", 0.9, lo=0.0, hi=1.0)
    b2 = _hyper(config, defaults, "beta2", 0.999, lo=0.0, hi=1.0)
    eps = _hyper(config, defaults, "epsilon", 1e-8, lo=0.0)
    wd = _weight_decay(config)
    t = _adam_step_count(config)
    c1, c2 = 1.0 - b1**t, 1.0 - b2**t
    if c1 == 0.0 or c2 == 0.0:  # checked before config changes
        raise ValueError("config['beta1'] and config['beta2'] must be < 1")
    w = _target(w, dw, config, ("m", "v"))
    dw = _grad(dw, w)
    m = _state(config, "m", w, dw)
    v = _state(config, "v", w, dw, m)
    _commit(config, defaults, m=m, v=v)
    config["t"] = t
    return _run(_ko.ADAM, w, dw, m, v, lr, b1, b2, eps, c1, c2, wd), config
