"""Layers in the style of Keras/PyTorch, over the same kernels as fastnn.functional.

Every layer has ``forward(x)``, ``backward(dout)``, a train/eval mode, and ``params`` / ``grads``
dicts of NumPy arrays: the live arrays, updated in place by optimizers and by ``backward``.
A layer with parameters computes in its ``dtype`` (float32 by default, float64 for gradient
checks); inputs are converted to it. The layers without parameters (activations, dropout,
noise) have ``dtype=None`` by default and compute in their input's float dtype (integers in
float64); PReLU, which has a slope parameter, is float32 by default like Dense.
"""
import math
import numbers

import numpy as np

from fastnn._kernels import activations as _ka
from fastnn._validation import (CheckedSettings, as_float_array, check_float_dtype, check_int,
                                check_scalar, float_dtype_of, numeric_array, too_many_entries)
from fastnn.functional import activations as _fa
from fastnn.functional import dense as _fd
from fastnn.functional import dropout as _fdrop
from fastnn.init import get_initializer

__all__ = ["Parameter", "Layer", "Dense", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "PReLU",
           "Maxout", "Dropout", "GaussianNoise", "ACTIVATIONS"]

# activation name -> (kernel op code, activation layer class name)
ACTIVATIONS = {
    None: _ka.IDENTITY, "linear": _ka.IDENTITY, "relu": _ka.RELU, "sigmoid": _ka.SIGMOID,
    "tanh": _ka.TANH, "leaky_relu": _ka.LEAKY_RELU, "prelu": _ka.PRELU,
}


def _check_dtype(dtype):
    return check_float_dtype(dtype)


def _digest(a):
    import hashlib

    return (a.shape, a.dtype.str, hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest())


def _dtype_name(dtype):
    return None if dtype is None else dtype.name


def _param_dtype(dtype):
    """The dtype of a layer with parameters: float32 or float64, never None."""
    if dtype is None:
        raise TypeError("dtype must be float32 or float64 for a layer with parameters, got None")
    return dtype


def _check_weight_size(*dims):
    """A weight array of shape `dims` must be one NumPy can allocate (its initializers draw
    in float64: 8 bytes an entry), else a ValueError naming the sizes."""
    if too_many_entries(dims):
        raise ValueError(f"in_features x out_features{' x pieces' if len(dims) == 3 else ''} = "
                         f"{' x '.join(map(str, dims))} is too many weights for an array")


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.random.SeedSequence))):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if isinstance(seed, numbers.Integral) and seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return seed


def _initial_weights(init, shape, rng, dtype, also=None):
    """init(shape, rng, dtype) (a weight_init), checked: real, finite, of exactly that shape
    (or of the shape `also`, reshaped to `shape`: Maxout's (in, out, pieces)), and copied: the
    layer trains its weights in place, and must not train an array the caller's initializer
    returned and may hold (nor share one with another layer made by the same initializer)."""
    arr = numeric_array(init(shape, rng, dtype), "weight_init's result", kinds="fiu")
    if also is not None and arr.shape == tuple(also):
        arr = arr.reshape(shape)
    if arr.shape != tuple(shape):
        raise ValueError(f"weight_init returned shape {arr.shape}, expected {tuple(shape)}"
                         + (f" or {tuple(also)}" if also is not None else ""))
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError("weight_init returned NaN or Inf")
    with np.errstate(over="ignore"):
        weights = np.array(arr, dtype=dtype, order="C")   # (a copy, whatever its dtype)
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"weight_init returned values beyond the range of {np.dtype(dtype).name}")
    return weights


class Parameter:
    """One learnable array of a layer: ``data`` is the live array (``layer.params[name]``),
    ``grad`` its gradient. ``decay`` says whether weight decay applies (weights, not biases)."""

    __slots__ = ("_layer", "_name", "_decay")

    def __init__(self, layer, name, decay):
        self._layer, self._name, self._decay = layer, name, bool(decay)

    def __reduce_ex__(self, protocol):
        # (__slots__ and no __dict__: protocols 0 and 1 need the arguments; 2 and up the default)
        if protocol < 2:
            return (type(self), (self._layer, self._name, self._decay))
        return super().__reduce_ex__(protocol)

    # read-only: a compiled training step is built for what a Parameter names (and an
    # optimizer's state is keyed by it); to train something else, make a new Parameter
    @property
    def layer(self):
        return self._layer

    @property
    def name(self):
        return self._name

    @property
    def decay(self):
        return self._decay

    @property
    def key(self):
        """(id(layer), name): what tells this parameter from any other while its layer lives.
        Optimizer state is keyed by it, and a parameter listed twice is found by it."""
        return (id(self._layer), self._name)

    @property
    def data(self):
        return self.layer.params[self.name]

    @property
    def grad(self):
        return self.layer.grads[self.name]

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        where = f"{type(self.layer).__name__}.{self.name}"
        try:
            data = self.data
        except (KeyError, TypeError):   # (params edited: the entry is gone, or not a dict)
            return f"Parameter({where}, missing from the layer's params)"
        return f"Parameter({where}, shape={np.shape(data)}, dtype={getattr(data, 'dtype', type(data).__name__)})"


_NO_SHAPES = {}   # (a layer without _add_param's record: never written to)


class Layer:
    """Base class. Subclasses set ``self.params`` / ``self.grads`` and implement ``forward``,
    ``backward``, ``output_features`` and ``get_config``. ``output_features(in_features)``
    returns the width of the layer's output rows for input rows of that width; the model
    passes None where the input width is not known (the base class keeps the width)."""

    _decay = ()

    def __init__(self, dtype=np.float32):
        # None: a layer without parameters computes in its input's dtype.
        self.dtype = None if dtype is None else _check_dtype(dtype)
        self.training = True
        self.params = {}
        self.grads = {}
        self._shapes = {}   # each parameter's shape, as _add_param made it
        self._cache = None

    def _drop_cache(self):
        """Forget what the last forward kept for backward (a model's training step calls this
        when the step is done). A layer class of your own that keeps its own state under that
        name (a read-only property, say) is left alone."""
        try:
            self._cache = None
        except (AttributeError, TypeError):
            pass

    # -- modes
    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def _is_training(self, training):
        return self.training if training is None else bool(training)

    # -- parameters
    def parameters(self):
        params = self.params
        if not isinstance(params, dict):
            raise self._missing(())   # (a TypeError naming params)
        return [Parameter(self, k, k in self._decay) for k in params]

    def _weights(self):
        """(params['W'], params['b']) of a Dense or Maxout layer, or the error naming a missing
        entry (_missing)."""
        try:
            return self.params["W"], self.params["b"]
        except (KeyError, TypeError):
            raise self._missing(("W", "b")) from None

    def _raise_reshaped(self):
        """Raise the ValueError check_arrays gives for the first params entry replaced by an
        array of another shape than the layer made it with, naming the entry; return if there
        is none. Asked only after a kernel refused the layer's arrays (nothing on the way of a
        good call): the kernel's error names its own argument, ``b`` for a Dense's W of
        another width. An entry that is not an array is left to the kernel's conversion."""
        params = self.params
        if not isinstance(params, dict):
            return
        for name, want in self.__dict__.get("_shapes", _NO_SHAPES).items():
            value = params.get(name)
            if type(value) is np.ndarray and value.shape != want:
                raise ValueError(f"{type(self).__name__}.params[{name!r}] must have shape "
                                 f"{want}, got {value.shape}") from None

    def _missing(self, names):
        """The error for a params that lacks one of `names` (a ValueError naming the entry),
        or is not a dict (a TypeError): users may edit params; the arrays themselves are
        checked where they are used."""
        params = self.params
        if not isinstance(params, dict):
            return TypeError(f"{type(self).__name__}.params must be a dict, got {type(params).__name__}")
        missing = next((n for n in names if n not in params), names[0])
        return ValueError(f"{type(self).__name__}.params has no entry {missing!r}")

    @property
    def num_params(self):
        params = self.params
        if not isinstance(params, dict):
            raise self._missing(())   # (a TypeError naming params)
        return int(sum(np.size(v) for v in params.values()))

    def _add_param(self, name, value):
        value = np.ascontiguousarray(value, dtype=self.dtype)
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)
        self.__dict__.setdefault("_shapes", {})[name] = value.shape   # (also without Layer.__init__)

    def check_arrays(self):
        """Every params / grads entry (which users may replace) is still what the kernels use:
        float32/float64 ndarrays, C-contiguous, each gradient of its parameter's dtype and
        shape and writeable (the kernels write gradients; parameters only the optimizer, which
        checks the ones it updates, so a frozen layer's may be read-only). A parameter made by
        _add_param also keeps the layer's dtype and its shape. Else a TypeError or ValueError
        naming the entry. (~1 us per parameter: the layer path runs it every step, the
        whole-step kernel when it builds its plan.)"""
        params = self.params
        if type(params) is not dict or type(self.grads) is not dict:   # (dict subclasses pass)
            if not (isinstance(params, dict) and isinstance(self.grads, dict)):
                kind, d = (("params", params) if not isinstance(params, dict)
                           else ("grads", self.grads))
                raise TypeError(f"{type(self).__name__}.{kind} must be a dict of arrays, got "
                                f"{type(d).__name__}")
        shapes = self.__dict__.get("_shapes", _NO_SHAPES)
        if len(params) < len(shapes):
            missing = [name for name in shapes if name not in params]
            if missing:
                raise ValueError(f"{type(self).__name__}.params has no entry {missing[0]!r}")
        if not params:
            return
        dt = getattr(self, "dtype", None)
        for name, value in params.items():
            grad = self.grads.get(name)
            own = name in shapes and dt is not None   # made by _add_param: the layer's dtype
            if not (type(value) is np.ndarray and type(grad) is np.ndarray
                    and value.dtype == grad.dtype and value.shape == grad.shape
                    and (value.dtype == dt if own else value.dtype.char in "fd")
                    and (not own or value.shape == shapes[name])
                    and value.flags.c_contiguous and grad.flags.c_contiguous
                    and grad.flags.writeable):
                self._explain_arrays(name, dt if own else None, shapes.get(name))

    def _explain_arrays(self, name, dtype, shape):
        value = self.params[name]
        for kind, arr in (("params", value), ("grads", self.grads.get(name))):
            what = f"{type(self).__name__}.{kind}[{name!r}]"
            if type(arr) is not np.ndarray:   # (a subclass, np.matrix, changes what @ means)
                raise TypeError(f"{what} must be a numpy.ndarray (not a subclass), got {type(arr).__name__}")
            want = dtype if dtype is not None else (value.dtype if kind == "grads" else None)
            if want is not None and arr.dtype != want:
                raise TypeError(f"{what} must have dtype {np.dtype(want).name}"
                                f"{' (the layer' + chr(39) + 's)' if dtype is not None else ''}, got {arr.dtype}")
            if arr.dtype.char not in "fd":
                raise TypeError(f"{what} must be float32 or float64, got {arr.dtype}")
            want_shape = shape if shape is not None else (value.shape if kind == "grads" else None)
            if want_shape is not None and arr.shape != want_shape:
                raise ValueError(f"{what} must have shape {want_shape}, got {arr.shape}")
            if not arr.flags.c_contiguous:
                raise ValueError(f"{what} must be C-contiguous")
            if kind == "grads" and not arr.flags.writeable:
                raise ValueError(f"{what} must be writeable (the backward pass writes it)")
        raise ValueError(f"{type(self).__name__}.params[{name!r}] and its gradient are not "
                         "arrays the kernels can use")   # (not reached: a case above named it)

    def _input(self, x):
        return as_float_array(x, "x", self.dtype)

    def _need_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._cache

    def output_features(self, in_features):
        return in_features

    def _infer(self, x):
        """forward in inference mode, keeping nothing in the layer (no cache for backward):
        what Sequential.predict runs, so that predictions in one thread never disturb a
        training step of the same model in another. (The fastnn layers override it.)"""
        return self.forward(x, training=False)

    def get_config(self):
        return {}

    def __repr__(self):
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({cfg})"


def _dout_as(dout, dtype, shape_of, cache, kind=None, shape_text="shape {}", intact=None):
    """A backward's dout as an array of the layer's dtype (None: its own float dtype), as
    as_float_array makes it. An array that is not used as it is has its shape compared with
    ``shape_of(cache, kind)`` (what the backward compares it with; None: not known) before it
    is converted, so that a huge broadcast view of another shape is refused, not copied: the
    backward's own ValueError (``shape_text`` formatted with the shape), after dout's dtype's
    TypeError (as its conversion names that first), and only when ``intact(cache)`` (what the
    backward checks before dout's shape) holds: a damaged cache is named by the backward, as
    before. (An array used as it is is returned as it is: the backward compares its shape.)"""
    if type(dout) is np.ndarray:
        dt = dout.dtype
        if (dt is dtype or (dtype is None and dt.char in "fd" and dt.isnative)) and dout.flags.c_contiguous:
            return dout   # (what as_float_array returns for it)
    if isinstance(dout, np.ndarray):
        shape = shape_of(cache, kind)
        if shape is not None and dout.shape != shape:
            float_dtype_of(dout, "dout")
            if intact is None or intact(cache):
                raise ValueError(f"dout must have {shape_text.format(shape)}, got {dout.shape}")
    return as_float_array(dout, "dout", dtype)


def _given_shape(shape, kind=None):
    """(_dout_as's shape_of for a shape known already)"""
    return shape


def _pass_through_shape(layer, kind=None):
    """The forward output's shape of a layer that passes dout through (None before forward)."""
    return getattr(layer, "_shape", None)


def _dropout_shape(cache, kind=None):
    """The shape a Dropout cache records, or None when it is not a DropoutCache."""
    return getattr(cache, "shape", None) if isinstance(cache, _fdrop.DropoutCache) else None


def _saved_shape(cache, kind):
    """The shape of the array an activation's cache of `kind` saved (what its backward
    compares dout with), or None when `cache` is not such a cache (the backward names it)."""
    if isinstance(cache, _fa.ActivationCache) and cache.kind == kind and isinstance(cache.saved, np.ndarray):
        return cache.saved.shape
    return None


def _passes(check, *args):
    """Whether check(*args) raises no ValueError (a damaged cache, for _dout_as's intact)."""
    try:
        check(*args)
    except ValueError:
        return False
    return True


def _leaky_slope_intact(cache):
    return _passes(_fa._check_slope, cache, "leaky_relu")


def _dropout_cache_intact(cache):
    return _passes(_fdrop._cache_params, cache)


def _maxout_cache_intact(cache):
    """What maxout_backward checks of its cache before dout's shape, as a bool."""
    extra = cache.extra
    if not (isinstance(extra, tuple) and len(extra) == 2 and isinstance(extra[0], _fa.ActivationCache)):
        return False
    return _passes(_fa._maxout_reduce_cache, extra[0])


_FORWARD_OUTPUT = "the shape of the forward output {}"   # (the functional backwards' words)


# ----------------------------------------------------------------------------- Dense
def _fixed_activation(layer, value):
    raise AttributeError(f"{type(layer).__name__}.activation is fixed at construction (the fused "
                         "kernel is chosen then): build a new layer instead")


def _fixed_size_message(cls_name, name):
    return (f"{cls_name}.{name} is fixed at construction (the parameters' shapes follow it): "
            "build a new layer instead")


def _fixed_size(name):
    """A read-only size of a layer (Maxout's in_features, out_features, pieces; PReLU's
    num_parameters), kept in the instance dict under its own name (the layout pickles have).
    Its parameters' shapes follow it, and the model's checks and a saved file's description
    read it: set later, the two training paths disagreed (the whole-step kernel goes by W's
    shape) and save wrote a file that load_model refused. (Dense, whose sizes the layer path
    reads on every forward, refuses them in its _CHECKS instead: a plain attribute reads in a
    quarter of a property's time.)"""
    def get(layer):
        try:
            return layer.__dict__[name]
        except KeyError:   # (an instance made without __init__)
            raise AttributeError(name) from None

    def refuse(layer, value):
        raise AttributeError(_fixed_size_message(type(layer).__name__, name))
    return property(get, refuse, doc=f"{name}, as given at construction (fixed).")


def _refused_size(cls_name, name):
    """A _CHECKS entry that refuses every assignment of a size (see _fixed_size)."""
    def check(value):
        raise AttributeError(_fixed_size_message(cls_name, name))
    return check


_SLOPED = (_ka.LEAKY_RELU, _ka.PRELU)   # the activations with a slope alpha


def _no_slope(name, activation, alpha):
    """The ValueError for a slope given to a Dense whose activation has none."""
    return ValueError(f"{name} is the slope of activation 'leaky_relu' or 'prelu'; activation "
                      f"{activation!r} has none (got alpha={alpha!r})")


class Dense(CheckedSettings, Layer):
    """Fully connected layer ``act(x @ W + b)``, W of shape (in_features, out_features).

    activation: None/"linear", "relu", "sigmoid", "tanh", "leaky_relu" (slope ``alpha``) or
    "prelu" (a learnable slope per unit, ``params["alpha"]``, initialized to ``alpha``);
    ``alpha`` with another activation raises ValueError. The product, bias and activation run
    as one fused kernel call.
    weight_init: None (He for the ReLU family, Xavier/Glorot otherwise), "he", "xavier",
    "glorot", a number (the course's ``weight_scale * randn``) or ``f(shape, rng, dtype)``.
    """

    _decay = ("W",)
    _CHECKS = {"alpha": "_check_alpha",
               "in_features": _refused_size("Dense", "in_features"),
               "out_features": _refused_size("Dense", "out_features")}

    def __init__(self, in_features, out_features, activation=None, weight_init=None,
                 dtype=np.float32, seed=None, alpha=None):
        super().__init__(_param_dtype(dtype))
        self.__dict__["in_features"] = check_int(in_features, "in_features", below=2**31)
        self.__dict__["out_features"] = check_int(out_features, "out_features", below=2**31)
        _check_weight_size(self.in_features, self.out_features)
        if activation is not None and not isinstance(activation, str):
            raise TypeError(f"activation must be a str or None, got {type(activation).__name__}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {[a for a in ACTIVATIONS if a]} or None, got {activation!r}")
        self.__dict__["activation"] = None if activation == "linear" else activation
        self._op = ACTIVATIONS[activation]
        if alpha is None:
            alpha = 0.25 if activation == "prelu" else 0.01
        elif self._op not in _SLOPED:
            # (a slope the layer would not use: activation="relu", alpha=0.2 meant leaky_relu)
            raise _no_slope("alpha", activation, alpha)
        self.alpha = check_scalar(alpha, "alpha")
        self.seed = _check_seed(seed)
        self.weight_init = weight_init
        init = get_initializer(weight_init, self.activation)
        rng = np.random.default_rng(seed)
        self._add_param("W", _initial_weights(init, (self.in_features, self.out_features), rng, self.dtype))
        # With the default initializer and no activation of its own, a Sequential that puts a
        # ReLU-family layer after this one re-draws W with He (see _default_init_for).
        self._default_init_W = _digest(self.params["W"]) if weight_init is None else None
        self._add_param("b", np.zeros(self.out_features))
        if self._op == _ka.PRELU:
            self._add_param("alpha", np.full(self.out_features, self.alpha))

    def _check_alpha(self, value):
        """A slope set after construction: only a layer with a slope has one to change (on a
        relu or linear Dense it would be kept and never used). The constructor's first
        assignment, checked against the activation there, passes."""
        value = check_scalar(value, "Dense.alpha")
        if "alpha" in self.__dict__ and self.__dict__.get("_op") not in _SLOPED:
            raise _no_slope("Dense.alpha", self.activation, value)
        return value

    # read-only; kept in the instance dict under its own name (the layout pickles have)
    activation = property(lambda self: self.__dict__["activation"], _fixed_activation,
                          doc="The activation's name as given at construction (fixed); None for a "
                              "linear layer (activation None or 'linear').")

    def output_features(self, in_features):
        if in_features is not None and in_features != self.in_features:
            raise ValueError(f"Dense expects {self.in_features} input features, got {in_features}")
        return self.out_features

    def _default_init_for(self, activation):
        """Re-draw W with the default initializer of `activation` (the activation layer that
        follows in a Sequential), if W is still the untouched default draw. Anything else in
        params['W'] is left as it is: a read-only W (a frozen layer) keeps its values, and one
        that is missing or not an array is named by the model's checks when it trains or
        predicts."""
        if self._default_init_W is None or self.activation is not None:
            return
        W = self.params.get("W") if isinstance(self.params, dict) else None
        if (type(W) is not np.ndarray or W.shape != (self.in_features, self.out_features)
                or W.dtype != self.dtype or not W.flags.writeable):
            return
        if _digest(W) != self._default_init_W:
            return  # the caller has set the weights: keep them
        init = get_initializer(None, activation)
        W[...] = init(W.shape, np.random.default_rng(self.seed), self.dtype)
        self._default_init_W = None

    def _check_x(self, x):
        if isinstance(x, np.ndarray):
            self._check_x_shape(x.shape)   # before the conversion: a huge view is not copied
        x = self._input(x)
        self._check_x_shape(x.shape)
        return x

    def _check_x_shape(self, shape):
        if len(shape) < 2 or math.prod(shape[1:]) != self.in_features:
            raise ValueError(f"x must have shape (N, {self.in_features}), got {shape}")

    def forward(self, x, training=None):
        return self._own_forward(x)

    def _infer(self, x):
        return self._own_forward(x, keep=False)

    def _own_forward(self, x, keep=True, dx_direct=False):
        """The forward with this layer's own activation (_fused_forward's keep and dx_direct)."""
        return self._fused_forward(self._check_x(x), self._op, self.alpha, self._own_slopes(),
                                   None, keep=keep, dx_direct=dx_direct)

    def _own_slopes(self):
        """params['alpha'] (a prelu Dense's slopes) or None; None too when params is not a dict,
        which _fused_forward's _weights then names."""
        params = self.params
        if not isinstance(params, dict):
            return None
        a = params.get("alpha")
        if type(a) is np.ndarray and a.shape != (self.out_features,):
            # (a shared (1,) slope would pass the kernel, and its gradient be broadcast into
            # grads['alpha']): named, after a reshaped W or b, as check_arrays orders them
            self._raise_reshaped()
        return a

    def _fused_forward(self, x, op, alpha, prelu_alpha, act_layer, keep=True, dx_direct=False):
        """Forward with activation `op` fused in (its own, or a following activation layer's);
        ``keep`` False: no cache kept for backward (inference). dx_direct: the layer below
        takes this layer's input gradient straight in (Sequential's _Unit.dx_direct), and the
        backward cuts it in the tiles the whole-step kernel uses there."""
        # (cut as the whole-step kernel cuts its products: a small layer in row chunks,
        # bounded dx tiles; the same numbers whichever way a model trains)
        W, b = self._weights()
        try:
            out, cache = _fd._forward(op, x, W, b, alpha,
                                      prelu_alpha if op == _ka.PRELU else None,
                                      chunks=2 if dx_direct else 1)
        except ValueError:
            self._raise_reshaped()   # (a params entry of another shape, named as the layer's)
            raise
        if keep:
            self._cache = (cache, act_layer)
        return out

    def backward(self, dout, need_dx=True):
        cache, act_layer = self._need_cache()
        if type(dout) is not np.ndarray or dout.dtype != self.dtype:   # (as the other layers)
            if isinstance(dout, np.ndarray):
                # its shape before it is converted (a huge broadcast view is refused, not
                # copied), after what the backward checks first: dout's dtype and the cache
                float_dtype_of(dout, "dout")
                _fd._check_cache(cache, cache.op, "dense")
                n, _, m = _fd._check_cache_arrays(cache, cache.op, "dense")
                dout = _dout_as(dout, self.dtype, _given_shape, (n, m))
            else:
                dout = as_float_array(dout, "dout", self.dtype)
        res = _fd._backward(cache.op, dout, cache, "dense", need_dx=need_dx,
                            dw=self.grads["W"], db=self.grads["b"])
        if cache.op == _ka.PRELU:
            dx, dw, db, dalpha = res
            owner = act_layer if act_layer is not None else self
            owner.grads["alpha"][...] = dalpha
        else:
            dx, dw, db = res
        if dw is not self.grads["W"]:
            self.grads["W"][...] = dw
        if db is not self.grads["b"]:
            self.grads["b"][...] = db
        return dx

    def get_config(self):
        cfg = {"in_features": self.in_features, "out_features": self.out_features,
               "activation": self.activation, "dtype": self.dtype.name}
        if self.activation in ("leaky_relu", "prelu"):
            cfg["alpha"] = self.alpha
        return cfg


# ----------------------------------------------------------------------------- activations
class _Activation(Layer):
    op = None
    name = None

    def forward(self, x, training=None):
        out, cache = getattr(_fa, f"{self.name}_forward")(self._input(x))
        # relu_forward's cache is its input (the course's); the layer keeps the output instead,
        # which the next layer holds anyway (the same mask: x > 0 exactly where relu(x) > 0)
        self._cache = cache if isinstance(cache, _fa.ActivationCache) else _fa.ActivationCache("relu", out)
        return out

    def _infer(self, x):
        return getattr(_fa, f"{self.name}_forward")(self._input(x))[0]

    def backward(self, dout, need_dx=True):
        dout = _dout_as(dout, self.dtype, _saved_shape, self._cache, self.name, _FORWARD_OUTPUT)
        return getattr(_fa, f"{self.name}_backward")(dout, self._need_cache())

    def __init__(self, dtype=None):
        super().__init__(dtype)

    def get_config(self):
        return {"dtype": _dtype_name(self.dtype)}


class ReLU(_Activation):
    """``max(x, 0)``."""
    op, name = _ka.RELU, "relu"


class Sigmoid(_Activation):
    """The logistic function ``1 / (1 + exp(-x))``."""
    op, name = _ka.SIGMOID, "sigmoid"


class Tanh(_Activation):
    """The hyperbolic tangent ``tanh(x)``."""
    op, name = _ka.TANH, "tanh"


class LeakyReLU(CheckedSettings, Layer):
    """``x if x > 0 else alpha * x`` with a fixed slope ``alpha``."""

    _CHECKS = {"alpha": lambda v: check_scalar(v, "LeakyReLU.alpha")}

    op = _ka.LEAKY_RELU

    def __init__(self, alpha=0.01, dtype=None):
        super().__init__(dtype)
        self.alpha = check_scalar(alpha, "alpha")

    def forward(self, x, training=None):
        out, self._cache = _fa.leaky_relu_forward(self._input(x), self.alpha)
        return out

    def _infer(self, x):
        return _fa.leaky_relu_forward(self._input(x), self.alpha)[0]

    def backward(self, dout, need_dx=True):
        dout = _dout_as(dout, self.dtype, _saved_shape, self._cache, "leaky_relu", _FORWARD_OUTPUT,
                        _leaky_slope_intact)
        return _fa.leaky_relu_backward(dout, self._need_cache())

    def get_config(self):
        return {"alpha": self.alpha, "dtype": _dtype_name(self.dtype)}


class PReLU(Layer):
    """Parametric ReLU with a learnable slope: one shared (``num_parameters=1``) or one per
    feature (``num_parameters=features``), initialized to ``init`` (0.25, as in PyTorch)."""

    op = _ka.PRELU

    def __init__(self, num_parameters=1, init=0.25, dtype=np.float32):
        super().__init__(_param_dtype(dtype))
        self.__dict__["num_parameters"] = check_int(num_parameters, "num_parameters", below=2**31)
        self.init = check_scalar(init, "init")
        self._add_param("alpha", np.full(self.num_parameters, self.init))

    num_parameters = _fixed_size("num_parameters")

    def _alpha_arg(self, features):
        try:
            a = self.params["alpha"]
        except (KeyError, TypeError):
            raise self._missing(("alpha",)) from None
        if not (type(a) is np.ndarray and a.shape == (self.num_parameters,)):
            # (replaced by the caller: named as train_step names it, not an IndexError)
            self._explain_arrays("alpha", self.dtype, (self.num_parameters,))
        if self.num_parameters == 1:
            return a[0]
        if features != self.num_parameters:
            raise ValueError(f"PReLU has {self.num_parameters} slopes but x has {features} features")
        return a

    def _check_features_first(self, x):
        """An array x whose features the slopes do not fit refused before it is converted (a
        huge broadcast view is not copied): _alpha_arg's errors, after x's dtype's."""
        if isinstance(x, np.ndarray) and self.num_parameters != 1 and (
                x.shape[-1] if x.ndim else 1) != self.num_parameters:
            float_dtype_of(x, "x")
            self._alpha_arg(x.shape[-1] if x.ndim else 1)   # (raises)

    def forward(self, x, training=None):
        self._check_features_first(x)
        x = self._input(x)
        out, self._cache = _fa.prelu_forward(x, self._alpha_arg(x.shape[-1] if x.ndim else 1))
        return out

    def _infer(self, x):
        self._check_features_first(x)
        x = self._input(x)
        return _fa.prelu_forward(x, self._alpha_arg(x.shape[-1] if x.ndim else 1))[0]

    def backward(self, dout, need_dx=True):
        dout = _dout_as(dout, self.dtype, _saved_shape, self._cache, "prelu",
                        "the shape of the forward input {}")
        dx, dalpha = _fa.prelu_backward(dout, self._need_cache())
        self.grads["alpha"][...] = dalpha
        return dx

    def output_features(self, in_features):
        if in_features is not None and self.num_parameters not in (1, in_features):
            raise ValueError(f"PReLU has {self.num_parameters} slopes but its input has {in_features} features")
        return in_features

    def get_config(self):
        return {"num_parameters": self.num_parameters, "init": self.init, "dtype": self.dtype.name}


class Maxout(Layer):
    """Maxout units: ``out[n, m] = max_p (x[n] @ W[:, m, p] + b[m, p])``, W (in, out, pieces)."""

    _decay = ("W",)

    def __init__(self, in_features, out_features, pieces=2, weight_init=None, dtype=np.float32, seed=None):
        super().__init__(_param_dtype(dtype))
        self.__dict__["in_features"] = check_int(in_features, "in_features", below=2**31)
        self.__dict__["out_features"] = check_int(out_features, "out_features", below=2**31)
        self.__dict__["pieces"] = check_int(pieces, "pieces", below=2**31)
        if self.pieces > 127:
            raise ValueError(f"pieces must be at most 127, got {self.pieces}")
        _check_weight_size(self.in_features, self.out_features, self.pieces)
        self.seed = _check_seed(seed)
        init = get_initializer(weight_init, "linear")
        rng = np.random.default_rng(seed)
        w = _initial_weights(init, (self.in_features, self.out_features * self.pieces), rng, self.dtype,
                             also=(self.in_features, self.out_features, self.pieces))
        self._add_param("W", w.reshape(self.in_features, self.out_features, self.pieces))
        self._add_param("b", np.zeros((self.out_features, self.pieces)))

    in_features = _fixed_size("in_features")
    out_features = _fixed_size("out_features")
    pieces = _fixed_size("pieces")

    def output_features(self, in_features):
        if in_features is not None and in_features != self.in_features:
            raise ValueError(f"Maxout expects {self.in_features} input features, got {in_features}")
        return self.out_features

    # x's shape checked as Dense checks it (naming x and the width the layer takes)
    _check_x = Dense._check_x
    _check_x_shape = Dense._check_x_shape

    def forward(self, x, training=None):
        x = self._check_x(x)
        out, self._cache = self._maxout(x)
        return out

    def _infer(self, x):
        return self._maxout(self._check_x(x))[0]

    def _maxout(self, x):
        try:
            return _fd.maxout_forward(x, *self._weights())
        except ValueError:
            self._raise_reshaped()   # (as Dense's forward)
            raise

    def backward(self, dout, need_dx=True):
        W, b = self.grads["W"], self.grads["b"]
        dout = _dout_as(dout, self.dtype, _maxout_out_shape, self._cache, None, "shape {}",
                        _maxout_cache_intact)
        dx, dw, db = _fd._maxout_backward(dout, self._need_cache(), need_dx=need_dx, dw=W, db=b)
        if not np.may_share_memory(dw, W):  # (written in place unless the dtypes differ)
            W[...] = dw
        if not np.may_share_memory(db, b):
            b[...] = db
        return dx

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "pieces": self.pieces, "dtype": self.dtype.name}


def _maxout_out_shape(cache, kind=None):
    """The forward output's shape (N, units) a Maxout cache records (what its backward
    compares dout with), or None when `cache` is not an intact one (the backward names it)."""
    extra = getattr(cache, "extra", None) if isinstance(cache, _fd.DenseCache) else None
    if isinstance(extra, tuple) and len(extra) == 2:
        shape = extra[0].alpha if isinstance(extra[0], _fa.ActivationCache) else None
        if isinstance(shape, tuple) and len(shape) == 3:
            return shape[:2]
    return None


# ----------------------------------------------------------------------------- regularizers
def _check_pass_through(dout, layer):
    """A layer whose backward passes dout through: dout must have the forward output's shape."""
    shape = getattr(layer, "_shape", None)
    if shape is None:
        raise RuntimeError(f"{type(layer).__name__}.backward called before forward")
    if dout.shape != shape:
        raise ValueError(f"dout must have shape {shape}, got {dout.shape}")


class _Stochastic(Layer):
    """A layer that draws random numbers in training: its own Generator, seeded by ``seed``
    (``Sequential.fit(seed=...)`` reseeds it for a reproducible run)."""

    # a seed drawn for a step that then ran on the layer path (_next_seed); a class default,
    # so that a layer pickled before it existed trains
    _drawn = None

    def __init__(self, seed, dtype):
        super().__init__(dtype)
        self.seed = _check_seed(seed)
        self._rng = np.random.default_rng(seed)

    def reseed(self, seed):
        self._rng = np.random.default_rng(_check_seed(seed))
        self._drawn = None

    def _next_seed(self):
        """The seed of the next training call: one from the generator, or the one the
        whole-step kernel drew for a step it then handed to the layer path
        (Sequential._compiled_run), so that a step draws each seed once whichever path runs
        it."""
        seed = self._drawn
        if seed is None:
            return int(self._rng.integers(0, 2**63 - 1))
        self._drawn = None
        return seed

    def _infer(self, x):
        return self._input(x)   # off in inference mode (forward(x, training=False))


def _drop_probability(p, name):
    p = check_scalar(p, name)
    if not 0.0 <= p <= 1.0 - _fdrop.MIN_KEEP:   # (a unit kept with at least 2**-16)
        raise ValueError(f"{name} is the drop probability and must be in [0, 1 - 2**-16] (the "
                         f"mask's keep rate is exact to 2**-32 only), got {p}")
    return p


class Dropout(CheckedSettings, _Stochastic):
    """Inverted dropout. ``p`` is the probability of DROPPING a unit (Keras/PyTorch), so it
    keeps each with probability ``1 - p`` (the functional API's ``p``). Off in eval mode."""

    _CHECKS = {"p": lambda v: _drop_probability(v, "Dropout.p")}

    def __init__(self, p=0.5, seed=None, dtype=None):
        super().__init__(seed, dtype)
        self.p = _drop_probability(p, "p")   # (named as the argument here)

    def forward(self, x, training=None):
        x = self._input(x)
        self._shape = x.shape
        if not self._is_training(training) or self.p == 0.0:
            self._cache = None
            return x
        seed = self._next_seed()
        out, self._cache = _fdrop.dropout_forward(x, {"p": 1.0 - self.p, "mode": "train", "seed": seed})
        return out

    def backward(self, dout, need_dx=True):
        cache = self._cache
        if cache is None:
            dout = _dout_as(dout, self.dtype, _pass_through_shape, self)
            _check_pass_through(dout, self)
            return dout
        dout = _dout_as(dout, self.dtype, _dropout_shape, cache, None, "shape {}", _dropout_cache_intact)
        return _fdrop.dropout_backward(dout, cache)

    def get_config(self):
        return {"p": self.p, "dtype": _dtype_name(self.dtype)}


class GaussianNoise(CheckedSettings, _Stochastic):
    """Input noise: adds ``std * N(0, 1)`` in training, nothing in eval mode. Each training
    call takes a seed from the layer's generator; the kernel makes the noise from it
    (fastnn.functional.gaussian_noise_forward's)."""

    _CHECKS = {"std": lambda v: check_scalar(v, "GaussianNoise.std", lo=0.0)}

    def __init__(self, std=0.1, seed=None, dtype=None):
        super().__init__(seed, dtype)
        self.std = check_scalar(std, "std", lo=0.0)   # (named as the argument here)

    def forward(self, x, training=None):
        x = self._input(x)
        self._shape = x.shape
        if not self._is_training(training) or self.std == 0.0:
            return x
        seed = self._next_seed()   # (as Dropout's: the kernel makes the noise from it)
        return _fdrop._noise(x, self.std, seed)

    def backward(self, dout, need_dx=True):
        dout = _dout_as(dout, self.dtype, _pass_through_shape, self)
        _check_pass_through(dout, self)
        return dout

    def get_config(self):
        return {"std": self.std, "dtype": _dtype_name(self.dtype)}


def described_param_shapes(type_name, config):
    """{name: shape} of the parameters a layer of type `type_name` built from `config` (a
    ``get_config`` dict, as a model file stores it) would have, without building it (so
    without allocating them): load_model checks a file's arrays against these first. The
    sizes are checked as the constructors check them (TypeError / ValueError)."""
    if type_name in ("Dense", "Maxout"):
        d = check_int(config.get("in_features"), "in_features", below=2**31)
        m = check_int(config.get("out_features"), "out_features", below=2**31)
        if type_name == "Maxout":
            k = check_int(config.get("pieces", 2), "pieces", below=128)
            return {"W": (d, m, k), "b": (m, k)}
        shapes = {"W": (d, m), "b": (m,)}
        if config.get("activation") == "prelu":
            shapes["alpha"] = (m,)
        return shapes
    if type_name == "PReLU":
        return {"alpha": (check_int(config.get("num_parameters", 1), "num_parameters", below=2**31),)}
    return {}   # the other layer types hold no parameters


LAYER_TYPES = {cls.__name__: cls for cls in (Dense, ReLU, Sigmoid, Tanh, LeakyReLU, PReLU, Maxout, Dropout, GaussianNoise)}
