"""Fully connected classifiers with the course's model interface, on the fused kernels.

A model here is the duck type that the course's ``Solver`` (and :class:`fastnn.Solver`) drives:

- ``model.params``: a dict of NumPy arrays, one per learnable parameter (``W1``, ``b1``, ...);
- ``model.loss(X)`` returns the class scores, an array of shape (N, C);
- ``model.loss(X, y)`` returns ``(loss, grads)``: the softmax loss averaged over the batch plus
  ``0.5 * reg * sum(W**2)`` for every weight matrix (biases are not regularized), and a dict
  with the same keys as ``params`` holding the gradient of that loss (``dW`` includes
  ``reg * W``).

Parameters are looked up in ``self.params`` on every call and never cached, so a numerical
gradient check that perturbs ``model.params['W1']`` in place, or a solver that swaps in new
arrays, is seen by the next call. The compute dtype is the dtype of the parameters: ``X`` is
cast to it (a float64 model stays float64 end to end, which gradient checks need).

Weights start as ``weight_scale * np.random.randn(...)`` (drawn in float64, W1 first, then cast
to the model's dtype) and biases as zeros, as in the course. Where the draws come from:

- ``TwoLayerNet(input_dim, hidden_dim, num_classes, weight_scale, reg, dtype=np.float64,
  seed=None)``: the course's class has neither ``dtype`` nor ``seed`` and is float64, so fastnn's
  default dtype is float64 too. With ``seed=None`` (the default) the weights come from NumPy's
  global random state, exactly the course's numbers after the same ``np.random.seed``. ``seed``
  is a fastnn extension: an int draws the weights from a private
  ``np.random.default_rng(seed)`` and leaves the global state alone.
- ``FullyConnectedNet(..., dtype=np.float32, seed=None)``: as in the course, the weights ALWAYS
  come from NumPy's global random state (``np.random.seed(231)`` then
  ``FullyConnectedNet(..., seed=123)`` gives the course's weights), and ``seed`` only goes into
  ``dropout_param['seed']`` (the dropout masks).
"""
import math
import numbers

import numpy as np

from fastnn._validation import (check_float_dtype, check_int, check_scalar, check_seed, class_labels,
                                too_many_entries)
from fastnn.functional import dropout as _fdrop
from fastnn.init import scaled_draws

from fastnn.functional import (
    affine_backward,
    affine_forward,
    affine_relu_backward,
    affine_relu_forward,
    dropout_backward,
    dropout_forward,
    softmax_loss,
)

__all__ = ["TwoLayerNet", "FullyConnectedNet"]


# ----------------------------------------------------------------------------- helpers


class _Normal:
    """Standard normal draws in float64, from a private generator or the global state."""

    def __init__(self, seed):
        self._rng = None if seed is None else np.random.default_rng(seed)

    def __call__(self, n):
        """The next n draws (np.random.randn's stream, with the global state)."""
        if self._rng is None:
            return np.random.standard_normal(n)
        return self._rng.standard_normal(n)


def _init_layers(dims, weight_scale, dtype, seed):
    """Params W1..WL (dims[i], dims[i+1]) as ``weight_scale * randn`` and zero biases b1..bL.

    Draws are made in float64 and rounded once to ``dtype``, so a float32 model and a float64
    model built with the same seed start from the same point (up to that rounding)."""
    for i in range(len(dims) - 1):
        if too_many_entries((dims[i], dims[i + 1])):
            raise ValueError(f"W{i + 1} of shape ({dims[i]}, {dims[i + 1]}) has too many entries "
                             "for an array")
    randn = _Normal(seed)
    params = {}
    for i in range(len(dims) - 1):
        params[f"W{i + 1}"] = scaled_draws(randn, (dims[i], dims[i + 1]), weight_scale, dtype)
        params[f"b{i + 1}"] = np.zeros(dims[i + 1], dtype=dtype)
    return params


def _model_dtype(params):
    w = params.get("W1")
    if isinstance(w, np.ndarray) and w.dtype in (np.float32, np.float64):
        return w.dtype
    return np.dtype(np.float64)


def _as_input(X, dtype, w1):
    """X as an array of `dtype`, of shape (N, d1, ..., dk) with d1 * ... * dk the rows of the
    first weight matrix w1 (named X here rather than as the product's x later)."""
    try:
        arr = np.asarray(X)
    except ValueError as exc:   # a ragged nested list
        raise ValueError(f"X must be an array of numbers: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"X must be an array of numbers, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"X must have shape (N, d1, ..., dk), got shape {arr.shape}")
    shape = getattr(w1, "shape", None)
    if shape is not None and len(shape) != 2:
        raise ValueError(f"params['W1'] must be 2-D (input features, hidden units), got shape "
                         f"{shape}")
    d = shape[0] if shape is not None else None
    if d is not None and math.prod(arr.shape[1:]) != d:
        raise ValueError(f"X must have {d} features per row (W1 has {d} rows), got shape "
                         f"{arr.shape}")
    return np.asarray(arr, dtype=dtype)


def _check_rows(X):
    """With labels: X holds rows, said as the model's argument (softmax_loss would name its
    scores x)."""
    if X.shape[0] == 0:
        raise ValueError("X must hold at least one row: the mean loss over an empty batch is "
                         "undefined")


def _add_l2(loss, grads, params, reg, num_layers):
    """Add ``0.5 * reg * sum(W**2)`` to the loss and ``reg * W`` to each weight gradient."""
    if reg == 0.0:
        return loss
    penalty = 0.0
    for i in range(1, num_layers + 1):
        w = params[f"W{i}"]
        penalty += float(np.sum(np.square(w, dtype=np.float64)))
        grads[f"W{i}"] += reg * w
    return loss + 0.5 * reg * penalty


# ----------------------------------------------------------------------------- models
def _current_reg(model, y):
    """The model's reg as a loss with labels uses it (None for scores only): checked on each
    such call, since course code sets ``model.reg`` after construction (``net.reg = 0.5``)."""
    return None if y is None else check_scalar(model.reg, "reg", lo=0.0)


class TwoLayerNet:
    """affine - relu - affine - softmax, with L2 regularization on the two weight matrices.

    Parameters: ``W1`` (D, H), ``b1`` (H,), ``W2`` (H, C), ``b2`` (C,), all of ``dtype``
    (float64 by default, as the course's class, which has no dtype argument). ``dtype`` and
    ``seed`` are fastnn extensions: ``seed=None`` draws the weights from ``np.random`` (the
    course's numbers), an int from a private ``np.random.default_rng(seed)``.
    """

    def __init__(self, input_dim=3 * 32 * 32, hidden_dim=100, num_classes=10,
                 weight_scale=1e-3, reg=0.0, dtype=np.float64, seed=None):
        input_dim = check_int(input_dim, "input_dim", below=2**31)
        hidden_dim = check_int(hidden_dim, "hidden_dim", below=2**31)
        num_classes = check_int(num_classes, "num_classes", below=2**31)
        weight_scale = check_scalar(weight_scale, "weight_scale", lo=0.0)
        self.reg = check_scalar(reg, "reg", lo=0.0)
        self.dtype = check_float_dtype(dtype)
        self.seed = check_seed(seed)
        self.params = _init_layers([input_dim, hidden_dim, num_classes], weight_scale,
                                   self.dtype, self.seed)

    def loss(self, X, y=None):
        """Scores (N, C) when ``y`` is None, else ``(loss, grads)``."""
        reg = _current_reg(self, y)
        p = self.params
        X = _as_input(X, _model_dtype(p), p.get("W1"))
        if y is not None:
            _check_rows(X)
        hidden, cache1 = affine_relu_forward(X, p["W1"], p["b1"])
        scores, cache2 = affine_forward(hidden, p["W2"], p["b2"])
        if y is None:
            return scores

        # (the labels named against X, the model's argument; softmax_loss takes them as they are)
        loss, dscores = softmax_loss(scores, class_labels(y, *scores.shape, rows="X"))
        grads = {}
        dhidden, grads["W2"], grads["b2"] = affine_backward(dscores, cache2)
        _, grads["W1"], grads["b1"] = affine_relu_backward(dhidden, cache1)
        loss = _add_l2(loss, grads, p, reg, 2)
        return loss, grads


class FullyConnectedNet:
    """{affine - relu - [dropout]} x (L - 1) - affine - softmax, with L2 on the weights.

    ``hidden_dims`` lists the widths of the L - 1 hidden layers; parameters are ``W1..WL`` and
    ``b1..bL``. ``dropout_keep_ratio`` is the probability of KEEPING a hidden unit (1 means no
    dropout). Dropout runs in 'train' mode when ``loss`` gets labels and in 'test' mode when it
    only returns scores. The weights always come from NumPy's global random state, as in the
    course, whatever ``seed`` is: ``seed`` (when given, and only with dropout) is stored in
    ``dropout_param['seed']``, so the dropout masks are the same on every call (the course's
    behaviour, which numerical gradient checks rely on). Batch and layer normalization are not
    part of fastnn: the course's ``normalization="batchnorm"`` or ``"layernorm"`` raises
    NotImplementedError, any other value but None a ValueError.
    """

    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10,
                 dropout_keep_ratio=1, normalization=None, reg=0.0, weight_scale=1e-2,
                 dtype=np.float32, seed=None):
        if normalization is not None:
            if not (isinstance(normalization, str) and normalization in ("batchnorm", "layernorm")):
                raise ValueError(f"normalization must be None (the course's 'batchnorm' and "
                                 f"'layernorm' are not part of fastnn), got {normalization!r}")
            raise NotImplementedError(
                f"normalization={normalization!r} is not supported: fastnn's FullyConnectedNet "
                "has no batch or layer normalization; pass normalization=None"
            )
        if isinstance(hidden_dims, (str, bytes)) or not hasattr(hidden_dims, "__iter__"):
            raise TypeError(f"hidden_dims must be a list of positive ints, got {type(hidden_dims).__name__}")
        hidden_dims = [check_int(h, f"hidden_dims[{i}]", below=2**31) for i, h in enumerate(hidden_dims)]
        input_dim = check_int(input_dim, "input_dim", below=2**31)
        num_classes = check_int(num_classes, "num_classes", below=2**31)
        weight_scale = check_scalar(weight_scale, "weight_scale", lo=0.0)
        if isinstance(dropout_keep_ratio, bool) or not isinstance(dropout_keep_ratio, numbers.Real):
            raise TypeError(f"dropout_keep_ratio must be a number in [2**-16, 1], got "
                            f"{dropout_keep_ratio!r}")
        try:
            keep = float(dropout_keep_ratio)
        except OverflowError:   # (an int beyond float's range: 10**400)
            keep = math.inf
        if not _fdrop.MIN_KEEP <= keep <= 1.0:   # (what dropout_forward takes)
            raise ValueError("dropout_keep_ratio is the probability of keeping a unit and must be "
                             f"in [2**-16, 1] (the mask's keep rate is exact to 2**-32 only), "
                             f"got {keep}")

        self.normalization = None
        self.use_dropout = keep != 1.0
        self.reg = check_scalar(reg, "reg", lo=0.0)
        self.num_layers = 1 + len(hidden_dims)
        self.dtype = check_float_dtype(dtype)
        self.seed = check_seed(seed)
        if self.seed is not None and self.seed >= 2**64:  # (dropout_param['seed']'s range)
            raise ValueError(f"seed must be below 2**64 (the dropout masks' seed), got {self.seed}")
        # the course: weights from np.random whatever the seed (it is for dropout only)
        self.params = _init_layers([input_dim] + hidden_dims + [num_classes], weight_scale,
                                   self.dtype, None)
        self.bn_params = []   # (the course's attribute; empty: no normalization here)
        self.dropout_param = {}
        if self.use_dropout:
            self.dropout_param = {"mode": "train", "p": keep}
            if self.seed is not None:
                self.dropout_param["seed"] = self.seed

    def loss(self, X, y=None):
        """Scores (N, C) when ``y`` is None, else ``(loss, grads)``."""
        reg = _current_reg(self, y)
        p = self.params
        L = self.num_layers
        X = _as_input(X, _model_dtype(p), p.get("W1"))
        if y is not None:
            _check_rows(X)
        mode = "test" if y is None else "train"
        if self.use_dropout:
            self.dropout_param["mode"] = mode

        caches = []
        out = X
        for i in range(1, L):
            out, c_aff = affine_relu_forward(out, p[f"W{i}"], p[f"b{i}"])
            c_drop = None
            if self.use_dropout:
                out, c_drop = dropout_forward(out, self.dropout_param)
            caches.append((c_aff, c_drop))
        scores, c_last = affine_forward(out, p[f"W{L}"], p[f"b{L}"])
        if mode == "test":
            return scores

        loss, dout = softmax_loss(scores, class_labels(y, *scores.shape, rows="X"))
        grads = {}
        dout, grads[f"W{L}"], grads[f"b{L}"] = affine_backward(dout, c_last)
        for i in range(L - 1, 0, -1):
            c_aff, c_drop = caches[i - 1]
            if c_drop is not None:
                dout = dropout_backward(dout, c_drop)
            dout, grads[f"W{i}"], grads[f"b{i}"] = affine_relu_backward(dout, c_aff)
        loss = _add_l2(loss, grads, p, reg, L)
        return loss, grads
