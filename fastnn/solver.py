"""Minibatch training for course-style models: ``Solver(model, data, **kwargs).train()``.

The keyword arguments and the training schedule are those of the course's Solver, so code
written for it runs unchanged:

- ``data`` is a dict (or another mapping: an ``np.load`` of an .npz) with ``X_train``, ``y_train``,
  ``X_val``, ``y_val``;
- ``model`` has a ``params`` dict of arrays and ``loss(X, y=None)`` (scores without labels,
  ``(loss, grads)`` with them), like :class:`fastnn.models.TwoLayerNet`; a model that
  breaks this (scores not of shape (N, C), a gradient missing for a parameter, a loss that
  is not a number) gets a TypeError or ValueError that says what ``model.loss`` returned;
- each iteration draws ``batch_size`` training rows WITH replacement, computes the loss and
  gradients, and applies the update rule to every parameter with its own config dict (each one
  starts as a copy of ``optim_config``), storing ``next_w`` back into ``model.params``;
- an epoch is ``max(num_train // batch_size, 1)`` iterations; after each epoch the learning
  rate of every parameter is multiplied by ``lr_decay``;
- train and validation accuracy are measured after the first iteration, at the end of every
  epoch and after the last iteration; the parameters with the best validation accuracy are
  kept (as copies) in ``best_params`` and put into ``model.params`` when ``train`` returns.

Keyword arguments: ``update_rule`` ('sgd'; the name of a rule in :mod:`fastnn.optim` or a
callable ``rule(w, dw, config) -> (next_w, config)``), ``optim_config`` ({}), ``lr_decay`` (1.0),
``batch_size`` (100), ``num_epochs`` (10), ``num_train_samples`` (1000), ``num_val_samples``
(None: all), ``checkpoint_name`` (None), ``print_every`` (10), ``verbose`` (True) and, beyond the
course, ``seed`` (None).

Random draws are the course's, call for call: each step draws its minibatch with
``np.random.choice(num_train, batch_size)``, and each accuracy check on more rows than
``num_train_samples`` / ``num_val_samples`` draws its subsample with
``np.random.choice(N, num_samples)`` (WITH replacement, as the course does), in the course's
order. So with ``seed=None`` and the same ``np.random.seed`` (and a model that draws the same
numbers), the minibatches, accuracies and loss history are the course Solver's. With an int
``seed`` the same calls go to a private ``np.random.default_rng(seed)`` instead, and the global
state is left alone.

Checkpoints (no pickle anywhere). With ``checkpoint_name='run/net'`` every accuracy check writes
two files (each through a temporary file in the same folder, renamed when complete; a write that
fails part-way, e.g. on a full disk, removes the temporary file and raises):

- ``run/net_epoch_<E>.npz``: one array per model parameter, stored under the parameter's name
  (``W1.npy``, ``b1.npy``, ... inside the zip); read it with
  ``np.load(path, allow_pickle=False)``;
- ``run/net_epoch_<E>.json``: a JSON object with ``format`` ("fastnn-solver-checkpoint"),
  ``version`` (1), ``epoch``, ``params_file`` (the .npz file name), ``param_names``,
  ``update_rule`` (the rule's name), ``optim_config`` (its JSON-representable entries),
  ``lr_decay``, ``batch_size``, ``num_epochs``, ``num_train_samples``, ``num_val_samples``,
  ``seed``, ``best_val_acc``, ``loss_history``, ``train_acc_history`` and ``val_acc_history``.

:func:`load_checkpoint` reads both back. Optimizer state (momentum buffers, Adam moments) is not
saved, as in the course.
"""
import collections.abc
import copy
import json
import math
import numbers
import os

import numpy as np

from fastnn import optim as _optim
from fastnn._files import atomic_write, check_writable, write_npz
from fastnn._validation import (check_int, fs_path, int_labels, no_repeated_keys, numeric_array,
                                open_regular, read_npz, too_many_entries)

__all__ = ["Solver", "load_checkpoint"]

CHECKPOINT_FORMAT = "fastnn-solver-checkpoint"
CHECKPOINT_VERSION = 1

_DEFAULTS = {
    "update_rule": "sgd",
    "optim_config": None,
    "lr_decay": 1.0,
    "batch_size": 100,
    "num_epochs": 10,
    "num_train_samples": 1000,
    "num_val_samples": None,
    "checkpoint_name": None,
    "print_every": 10,
    "verbose": True,
    "seed": None,
}


def _jsonable(value):
    """``value`` if JSON stores it faithfully (a finite number, str, bool or None), else None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        return v if np.isfinite(v) else None
    return None


class Solver:
    """Trains a model with minibatch gradient descent; see the module docstring."""

    def __init__(self, model, data, **kwargs):
        unknown = sorted(set(kwargs) - set(_DEFAULTS))
        if unknown:
            raise ValueError(f"Unrecognized arguments {', '.join(unknown)}; "
                             f"known ones are {', '.join(sorted(_DEFAULTS))}")
        opts = dict(_DEFAULTS)
        opts.update(kwargs)

        if not hasattr(model, "params") or not callable(getattr(model, "loss", None)):
            raise TypeError("model must have a params dict and a loss(X, y=None) method")
        if not isinstance(model.params, collections.abc.MutableMapping):
            raise TypeError(f"model.params must be a dict of parameter arrays, got "
                            f"{type(model.params).__name__}")
        self.model = model

        if not isinstance(data, collections.abc.Mapping):
            # (any mapping: the course's Solver only reads data["X_train"] and the others, so
            # np.load's NpzFile of a saved dataset works there)
            raise TypeError(f"data must be a dict (or another mapping), got {type(data).__name__}")
        missing = [k for k in ("X_train", "y_train", "X_val", "y_val") if k not in data]
        if missing:
            raise ValueError(f"data is missing {', '.join(missing)}")
        arrays = {}
        for key in ("X_train", "y_train", "X_val", "y_val"):
            # arrays as given (the course's Solver keeps them); lists and the like as arrays,
            # since batches are taken by fancy indexing
            value = numeric_array(data[key], f"data['{key}']")
            if value.ndim < 1:
                raise ValueError(f"data['{key}'] must have a sample axis, got shape {value.shape}")
            arrays[key] = value
        self.X_train, self.y_train = arrays["X_train"], arrays["y_train"]
        self.X_val, self.y_val = arrays["X_val"], arrays["y_val"]
        for xs, ys, what in ((self.X_train, self.y_train, "train"), (self.X_val, self.y_val, "val")):
            if len(xs) != len(ys):
                raise ValueError(f"X_{what} has {len(xs)} rows but y_{what} has {len(ys)} labels")
            # integer, (N,) or for y_val a column (N, 1): compared with (N,) predictions, a
            # column would broadcast to an N x N table (their range: at the first accuracy
            # check). y_train's batches go to the model's loss, which takes (N,) labels only.
            int_labels(ys, len(ys), allow_bool=False, name=f"data['y_{what}']",
                       what="integer class labels", allow_column=what == "val")
        if len(self.X_train) == 0:
            raise ValueError("X_train must hold at least one sample")
        if len(self.X_val) == 0:
            raise ValueError("data['X_val'] must hold at least one sample (the validation accuracy)")
        if self.X_val.shape[1:] != self.X_train.shape[1:]:
            raise ValueError(f"data['X_val'] must have rows of X_train's shape {self.X_train.shape[1:]}, "
                             f"got {self.X_val.shape[1:]}")

        rule = opts["update_rule"]
        if isinstance(rule, str):
            if rule not in _optim.__all__:
                raise ValueError(f'Invalid update_rule "{rule}": fastnn.optim has '
                                 f"{', '.join(_optim.__all__)}")
            self.update_rule = getattr(_optim, rule)
        elif callable(rule):
            self.update_rule = rule
        else:
            raise ValueError(f"update_rule must be a rule name or a callable, got {rule!r}")
        self._rule_name = rule if isinstance(rule, str) else getattr(rule, "__name__", repr(rule))

        optim_config = opts["optim_config"]
        if optim_config is None:
            optim_config = {}
        if not isinstance(optim_config, collections.abc.Mapping):
            raise TypeError(f"optim_config must be a dict (or another mapping), got "
                            f"{type(optim_config).__name__}")
        if not isinstance(optim_config, dict):
            # (a read-only mapping, which each parameter's config is copied from as a dict,
            # as the course's Solver copies its items)
            optim_config = dict(optim_config)
        self.optim_config = optim_config

        lr_decay = opts["lr_decay"]
        try:   # (0 is allowed, as a learning rate of 0 is: the course's Solver takes it)
            ok = (not isinstance(lr_decay, bool) and isinstance(lr_decay, numbers.Real)
                  and math.isfinite(lr_decay) and lr_decay >= 0)
        except OverflowError:   # (an int beyond float's range: 10**400)
            ok = False
        if not ok:
            raise ValueError(f"lr_decay must be a finite number >= 0, got {lr_decay!r}")
        self.lr_decay = float(lr_decay)
        self.batch_size = check_int(opts["batch_size"], "batch_size")
        # (a minibatch is drawn with replacement, so it may exceed the training rows, but its
        # int64 index array must be one NumPy can make)
        if too_many_entries((self.batch_size,)):
            raise ValueError(f"batch_size must be below 2**60 (the most entries of an 8-byte array), "
                             f"got {self.batch_size}")
        self.num_epochs = check_int(opts["num_epochs"], "num_epochs")
        self.num_train_samples = check_int(opts["num_train_samples"], "num_train_samples", allow_none=True)
        self.num_val_samples = check_int(opts["num_val_samples"], "num_val_samples", allow_none=True)
        self.print_every = check_int(opts["print_every"], "print_every")
        try:
            self.verbose = bool(opts["verbose"])
        except (TypeError, ValueError) as exc:   # (an array of several values)
            raise TypeError(f"verbose must be a bool, got {type(opts['verbose']).__name__}: {exc}") from None

        name = opts["checkpoint_name"]
        if name is not None and not isinstance(name, (str, os.PathLike)):
            raise TypeError(f"checkpoint_name must be a path prefix (str) or None, got {type(name).__name__}")
        # (a path-like object whose path is bytes: as str, since the names are built from it)
        self.checkpoint_name = None if name is None else os.fsdecode(os.fspath(name))
        if self.checkpoint_name is not None:
            if "\0" in self.checkpoint_name:   # (checked now, not at the first checkpoint)
                raise ValueError(f"checkpoint_name {self.checkpoint_name!r} holds a NUL character")
            folder = os.path.dirname(self.checkpoint_name) or os.curdir   # ("dir/" names dir)
            if not os.path.isdir(folder):   # (checked now, not after the first epoch)
                raise ValueError(f"checkpoint_name {self.checkpoint_name!r}: no folder {folder!r}")
            _check_param_names(model.params)   # (now too, not after the first epoch)

        seed = opts["seed"]
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be None or a non-negative int, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self._rng = None if seed is None else np.random.default_rng(self.seed)

        self._reset()

    # ------------------------------------------------------------------------- internals
    def _reset(self):
        """Fresh histories and one optimizer config per parameter (copied from optim_config)."""
        self.epoch = 0
        self.best_val_acc = 0.0
        self.best_params = {}
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []
        self.optim_configs = {p: copy.deepcopy(self.optim_config) for p in self.model.params}

    def _choice(self, n, size):
        """``size`` indices into ``range(n)``, drawn WITH replacement: the course's
        ``np.random.choice(n, size)``, or the same call on the private generator of ``seed``."""
        if self._rng is None:
            return np.random.choice(n, size)
        return self._rng.choice(n, size)

    def _step(self):
        """One minibatch update of every parameter."""
        idx = self._choice(len(self.X_train), self.batch_size)
        X_batch = self.X_train[idx]
        y_batch = self.y_train[idx]

        out = self.model.loss(X_batch, y_batch)
        if (not isinstance(out, (tuple, list)) or len(out) != 2
                or not isinstance(out[1], collections.abc.Mapping)):
            raise TypeError(f"model.loss(X, y) must return (loss, grads), grads a dict of "
                            f"gradients by parameter name; got {_kind(out)}")
        loss, grads = out
        try:
            loss = float(loss)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"model.loss(X, y) returned a loss that is not a number: "
                            f"{_kind(loss)} ({exc})") from None
        params = self.model.params
        names = list(params)
        for name in names:   # (all checked before the step records or updates anything)
            if name not in grads:
                raise ValueError(f"model.loss(X, y) returned no gradient for the parameter "
                                 f"{name!r} of model.params")
            # (a course rule would broadcast a smaller gradient into the parameter: sizes must
            # match, and the gradient broadcast to the parameter's shape, as a number does for
            # a one-element parameter)
            try:
                gs, ps = np.shape(grads[name]), np.shape(params[name])
            except ValueError:   # (a ragged list: the update rule names it)
                continue
            try:
                same = math.prod(gs) == math.prod(ps) and np.broadcast_shapes(gs, ps) == ps
            except ValueError:
                same = False
            if not same:
                raise ValueError(f"model.loss(X, y) returned a gradient of shape {gs} for the "
                                 f"parameter {name!r} of model.params, of shape {ps}")
        self.loss_history.append(loss)

        for name in names:
            config = self.optim_configs.get(name)
            if config is None:  # (a deep copy per step and parameter only the first time)
                config = copy.deepcopy(self.optim_config)
            next_w, next_config = self.update_rule(params[name], grads[name], config)
            params[name] = next_w
            self.optim_configs[name] = next_config

    def _save_checkpoint(self):
        if self.checkpoint_name is None:
            return
        _check_param_names(self.model.params)   # (a key set since the constructor's check)
        stem = f"{self.checkpoint_name}_epoch_{self.epoch}"
        npz_path, json_path = stem + ".npz", stem + ".json"

        # (atomic_write: a temporary file renamed when complete, removed if writing fails;
        # the JSON file's path is checked first, so that a JSON file that cannot be replaced
        # does not leave new arrays beside an old description of them)
        check_writable(json_path)
        with atomic_write(npz_path) as f:
            write_npz(f, self.model.params)

        meta = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "params_file": os.path.basename(npz_path),
            "param_names": list(self.model.params),
            "update_rule": self._rule_name,
            "optim_config": {k: _jsonable(v) for k, v in self.optim_config.items()
                             if _jsonable(v) is not None},
            "lr_decay": self.lr_decay,
            "batch_size": self.batch_size,
            "num_epochs": self.num_epochs,
            "num_train_samples": self.num_train_samples,
            "num_val_samples": self.num_val_samples,
            "seed": self.seed,
            "best_val_acc": self.best_val_acc,
            "loss_history": [_jsonable(v) for v in self.loss_history],
            "train_acc_history": list(self.train_acc_history),
            "val_acc_history": list(self.val_acc_history),
        }
        with atomic_write(json_path, text=True) as fh:
            json.dump(meta, fh, indent=1)
        if self.verbose:
            print(f'Saving checkpoint to "{npz_path}" and "{json_path}"')

    # ------------------------------------------------------------------------- public
    def check_accuracy(self, X, y, num_samples=None, batch_size=100):
        """Fraction of rows of ``X`` whose highest score is the label in ``y``.

        With ``num_samples`` set and fewer than the rows of ``X``, ``num_samples`` rows drawn
        WITH replacement (the course's ``np.random.choice(N, num_samples)``) are scored. Scores
        are computed ``batch_size`` rows at a time.
        ``y`` holds integer class labels, (N,) or a column (N, 1), each a column of the scores."""
        return self._accuracy(X, y, num_samples, batch_size, "y")

    def _accuracy(self, X, y, num_samples, batch_size, name):
        num_samples = check_int(num_samples, "num_samples", allow_none=True)
        batch_size = check_int(batch_size, "batch_size")
        X = X if isinstance(X, np.ndarray) else np.asarray(X)
        y = np.asarray(y)
        if X.ndim < 1:
            raise ValueError(f"X must have a sample axis, got shape {X.shape}")
        n = len(X)
        if n == 0:
            raise ValueError("X must hold at least one sample")
        if y.ndim < 1 or len(y) != n:
            raise ValueError(f"{name} must hold one label per row of X ({n}), got shape {y.shape}")
        y = int_labels(y, n, allow_bool=False, name=name, what="integer class labels")
        if num_samples is not None and n > num_samples:
            idx = self._choice(n, num_samples)
            X, y = X[idx], y[idx]
            n = num_samples

        preds = []
        classes = None
        for start in range(0, n, batch_size):
            rows = min(batch_size, n - start)
            scores = self.model.loss(X[start:start + batch_size])
            shape = np.shape(scores)
            if len(shape) != 2 or shape[0] != rows or shape[1] < 1:
                raise ValueError(f"model.loss(X) must return scores of shape (N, C), one row of "
                                 f"class scores per row of X; got shape {shape} for {rows} rows")
            classes = shape[1]
            preds.append(np.argmax(scores, axis=1))
        bad = (y < 0) | (y >= classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name}[{i}] = {y[i]} is not a class of the model's {classes} scores")
        return float(np.mean(np.concatenate(preds) == y))

    def train(self):
        """Run ``num_epochs`` epochs; afterwards ``model.params`` holds the best parameters."""
        num_train = len(self.X_train)
        per_epoch = max(num_train // self.batch_size, 1)
        total = self.num_epochs * per_epoch

        for t in range(total):
            self._step()
            if self.verbose and t % self.print_every == 0:
                print(f"(Iteration {t + 1} / {total}) loss: {self.loss_history[-1]:f}")

            end_of_epoch = (t + 1) % per_epoch == 0
            if end_of_epoch:
                self.epoch += 1
                for config in self.optim_configs.values():
                    if "learning_rate" in config:
                        config["learning_rate"] *= self.lr_decay

            if t == 0 or t == total - 1 or end_of_epoch:
                if type(self).check_accuracy is Solver.check_accuracy:
                    # (errors then name the data key rather than check_accuracy's y)
                    train_acc = self._accuracy(self.X_train, self.y_train, self.num_train_samples,
                                               100, "data['y_train']")
                    val_acc = self._accuracy(self.X_val, self.y_val, self.num_val_samples, 100,
                                             "data['y_val']")
                else:   # a subclass's own check_accuracy, called as the course's Solver does
                    train_acc = self.check_accuracy(self.X_train, self.y_train,
                                                    num_samples=self.num_train_samples)
                    val_acc = self.check_accuracy(self.X_val, self.y_val,
                                                  num_samples=self.num_val_samples)
                self.train_acc_history.append(train_acc)
                self.val_acc_history.append(val_acc)
                self._save_checkpoint()
                if self.verbose:
                    print(f"(Epoch {self.epoch} / {self.num_epochs}) "
                          f"train acc: {train_acc:f}; val_acc: {val_acc:f}")
                if not self.best_params or val_acc > self.best_val_acc:
                    self.best_val_acc = val_acc
                    self.best_params = {k: np.array(v, copy=True) for k, v in self.model.params.items()}

        # Copies again: fastnn's update rules write into the parameter arrays, so the model
        # must not share arrays with best_params if training continues.
        self.model.params = {k: v.copy() for k, v in self.best_params.items()}


def load_checkpoint(path):
    """Read a checkpoint written by :class:`Solver`: ``path`` is either file of the pair (or the
    common stem). Returns ``(params, info)``: a dict of arrays and the JSON dict. A missing,
    truncated or foreign file raises ValueError, and so does a JSON file whose ``params_file``
    names another .npz than the pair's (a pair renamed or copied under another name: which
    arrays were meant is not known); nothing is unpickled."""
    path = fs_path(path)
    stem = path
    for ext in (".npz", ".json"):
        if path.endswith(ext):
            stem = path[:-len(ext)]
    try:
        with open_regular(stem + ".json", text=True) as fh:
            # (what Solver writes: no key twice, no NaN or Infinity, which json.dump would
            # write as constants that are not JSON)
            info = json.load(fh, object_pairs_hook=no_repeated_keys, parse_constant=_no_constant)
    except OSError as exc:
        raise ValueError(f"cannot read checkpoint {stem}.json: {exc}") from None
    except (ValueError, RecursionError) as exc:  # bad JSON or text (UnicodeDecodeError), nesting
        raise ValueError(f"{stem}.json is not a fastnn solver checkpoint "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{stem}.json is not a fastnn solver checkpoint")
    version = info.get("version")
    if type(version) is not int or version != CHECKPOINT_VERSION:
        raise ValueError(f"{stem}.json has checkpoint version {version!r}, this fastnn reads "
                         f"{CHECKPOINT_VERSION}")
    name = info.get("params_file")
    names = info.get("param_names")
    # the arrays sit beside the JSON file: a bare file name, never a path elsewhere
    if (not isinstance(name, str) or name in ("", ".", "..") or os.path.basename(name) != name
            or "/" in name or "\\" in name):
        raise ValueError(f"{stem}.json: params_file must be the file name of the .npz beside it, "
                         f"got {name!r}")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{stem}.json: param_names must be a list of names, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{stem}.json: param_names names a parameter twice")
    npz = stem + ".npz"
    if name != os.path.basename(npz):
        raise ValueError(f"{stem}.json describes the arrays in {name!r}, not those in "
                         f"{os.path.basename(npz)!r} beside it: the checkpoint was renamed or "
                         "copied (Solver names both files of a pair after the same stem)")
    what = f"{npz} (a checkpoint's arrays)"
    params = read_npz(npz, what, "Solver", names=names)
    # real floats, as fastnn's models hold; NaN and Inf load as stored (a diverged run's
    # checkpoint is Solver's own output, which it writes as the parameters are)
    for key, value in params.items():
        if value.dtype not in (np.float32, np.float64):
            raise ValueError(f"{what}: array {key!r} has dtype {value.dtype}, expected float32 "
                             "or float64")
    return params, info


def _check_param_names(params):
    """A checkpoint stores the parameters by name, in a JSON list and an .npz archive:
    model.params' keys must be strings that an archive entry can be named after
    (load_checkpoint reads nothing else back)."""
    for key in params:
        if not isinstance(key, str) or "\0" in key or not _utf8(key):   # (NUL: no .npz name)
            raise ValueError(f"checkpoint_name is set, and checkpoints store parameters by name: "
                             f"model.params' keys must be str in UTF-8 without NUL characters, got "
                             f"{key!r}")


def _utf8(text):
    """Whether text encodes as UTF-8 (an .npz entry's name must; a lone surrogate does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value):
    """A short description of what a user's model returned, for an error message."""
    if isinstance(value, (tuple, list)):
        kinds = ", ".join(type(v).__name__ for v in value[:3])
        return f"a {type(value).__name__} of {len(value)} ({kinds})"
    return type(value).__name__


def _no_constant(name):
    """json.load's parse_constant: NaN, Infinity and -Infinity are refused."""
    raise ValueError(f"{name} is not a JSON number")
