# fastnn._kernels.stepcall: the Python side of the layer API's whole-step kernel, compiled.
#
# Sequential.train_step on a small network spends about as long in Python around the kernel
# call (the plan cache's checks, the optimizer's settings, the labels) as the kernel spends on
# the network's arithmetic. These are those functions of fastnn/model.py, written here so that
# they run without the interpreter's frames and bytecode: the same checks in the same order,
# the same results (tests/test_sequential.py runs the shortcut against the full path).
# fastnn/model.py imports them; nothing here imports fastnn.model.
import numpy as np

from fastnn import _threads
from fastnn._kernels import network as _kn
from fastnn._validation import int_labels as _int_labels, mse_targets_as as _mse_targets_as
from fastnn.optimizers import Optimizer as _Optimizer, RMSProp as _RMSProp, SGD as _SGD

from fastnn_losses cimport LOSS_MSE
from fastnn_optim cimport RULE_SGD, RULE_MOMENTUM, RULE_NESTEROV, RULE_RMSPROP, RULE_ADAM

include "fastnn_fastpath.pxi"   # (_ndarray, _float32, plain_intp_dtype)
cdef object _signature_matches = _kn.signature_matches
cdef object _ArraysChanged = _kn.ArraysChanged
cdef object _InputOverlaps = _kn.InputOverlaps
cdef tuple _NO_DRAWS = (None, None)
cdef object _own_step = _Optimizer.step


cpdef int rule_of(optimizer) except -1:
    """The update-rule kernel code an optimizer runs now."""
    if isinstance(optimizer, _SGD):
        if optimizer.momentum == 0:
            return RULE_SGD
        return RULE_NESTEROV if optimizer.nesterov else RULE_MOMENTUM
    if isinstance(optimizer, _RMSProp):
        return RULE_RMSPROP
    return RULE_ADAM


cpdef dtype_of(layers):
    """The dtype of the first of `layers` (an iterable) that has one, else float32."""
    for layer in layers:
        dt = layer.dtype
        if dt is not None:
            return dt
    return _float32


cpdef bint entry_matches(layers, cached, optimizer) except -1:
    """Whether a plan-cache entry (signature, step, weak reference to its optimizer; or None)
    still describes the model whose layer list is `layers`, and `optimizer`: the same optimizer
    object, no array replaced, the same rule (network.signature_matches)."""
    if cached is None or cached[2]() is not optimizer:
        return False
    try:
        return _signature_matches(cached[0], layers, optimizer, rule_of(optimizer))
    except (TypeError, AttributeError):
        return False   # params / grads replaced by what is not a dict: a rebuild names it


cpdef hot_entry(model, X, loss, optimizer):
    """The cache entry of the model's last hit (model._hot) when X has its shape and dtype,
    `loss` its loss type, and the entry is still valid for `optimizer` (entry_matches), else
    None: the shortcut of Sequential._compiled_step and of train_step."""
    hot = model._hot
    if hot is not None and X.shape == hot[1] and X.dtype is hot[2] and type(loss) is hot[0][2]:
        cached = model._compiled.get(hot[0])
        if entry_matches(model._layers, cached, optimizer):
            return cached
    return None


cpdef tuple run(compiled, X, y, opt, bint skip_nonfinite=False, bint count=False,
                tuple draws=_NO_DRAWS):
    """fastnn.model._CompiledStep.run: one step on the plan of `compiled` (a _CompiledStep)
    with `opt`, the optimizer it was built for, and the settings `draws` ((front, drops):
    _CompiledStep.draw) of the layers inside it. Returns (loss, correct or None, stopped).
    The caller holds the model's lock."""
    front, drops = draws
    plan = compiled.plan
    labels = targets = None
    if compiled.loss_kind == LOSS_MSE:
        targets = _mse_targets_as(y, plan.score_shape, compiled.dtype)
    else:
        # bool labels are 0/1: binary losses take them (as the functional losses do), the
        # multiclass ones refuse them like fastnn.functional.softmax_loss / svm_loss
        # (int_labels' arguments by position: y, n, allow_bool, name, what, allow_column,
        # allow_float). Labels that are already what int_labels returns (its own first
        # check, asked here: the call of a Python function from here costs ~0.1 us of a
        # small network's ~3 us of Python around its step) go in as they are.
        binary = compiled.binary
        n = X.shape[0]
        if (type(y) is _ndarray and plain_intp_dtype(y.dtype)
                and y.ndim == 1 and y.shape[0] == n and y.flags.c_contiguous):
            labels = y   # (intp's own dtype object, or pickle.loads's equal copy of it)
        else:
            labels = _int_labels(y, n, binary, "y", "integer labels", binary, binary)
    watch = opt._watch_
    if watch is not None and watch.dead:
        opt._prune()   # (the state of layers collected since: optimizers._Watch)
    # (Python floats, computed as fastnn/model.py's Python did: the same bits for Adam's
    # bias corrections, 1 - beta**t)
    h1 = h2 = eps = 0.0
    c1 = c2 = 1.0
    t = None
    cdef int rule = compiled.rule
    if rule == RULE_SGD:
        pass   # (plain SGD reads no more hyperparameters)
    elif rule == RULE_MOMENTUM or rule == RULE_NESTEROV:
        h1 = opt.momentum
    elif rule == RULE_RMSPROP:
        h1, eps = opt.decay_rate, opt.eps
    elif rule == RULE_ADAM:
        t = opt.t + 1   # (an int already checked; stored below once the kernel updated)
        h1, h2 = opt.betas
        eps = opt.eps
        c1, c2 = 1.0 - h1**t, 1.0 - h2**t
    updates = plan.updates
    try:
        try:
            value = plan.step(X, labels, targets, opt.lr, h1, h2, eps, c1, c2,
                              opt.weight_decay, _threads._num_threads, skip_nonfinite,
                              count, _threads._dynamic, drops, front)
        except _InputOverlaps:
            # X or y is (part of) a parameter, gradient or state array the step writes
            # while it still reads them: step on copies, as NumPy copies overlapping operands
            value = plan.step(X.copy(), None if labels is None else labels.copy(),
                              None if targets is None else targets.copy(),
                              opt.lr, h1, h2, eps, c1, c2, opt.weight_decay,
                              _threads._num_threads, skip_nonfinite, count, _threads._dynamic,
                              drops, front)
    finally:
        # Adam counts the step when the kernel updated (the plan counts that as the kernel
        # returns, before any Python code runs): not when an argument was refused or the
        # guard stopped the step, nor when an interrupt (KeyboardInterrupt) came before
        # the kernel ran; one that comes while it runs is raised as it returns, and this
        # runs first. (Counted before the kernel, t stayed one ahead when an interrupt
        # came right after the count.)
        if rule == RULE_ADAM and plan.updates != updates:
            object.__setattr__(opt, "t", t)   # (an int already checked: no __setattr__)
    correct = plan.correct
    return value, (correct if correct >= 0 else None), plan.stopped


def train_step(model, X, y, loss, optimizer):
    """Sequential.train_step's shortcut: the loss (a float) of one step on the cached step of
    the model's last cache hit (model._hot), when X has that hit's shape and dtype, is a
    C-contiguous ndarray, `loss` has its loss type, and train_step's checks and _step's would
    run that step as it is: no layer list changed, X already of the model's dtype, no front
    layer, no layer inside the kernel that draws, the entry still valid for `optimizer`
    (hot_entry), whose `step` is Optimizer's own (none set on the instance or its class).
    Else None, with nothing
    run: the full path then decides.

    The checks after the first are made again under the model's lock (another thread's step
    may have moved model._hot meanwhile). An entry holds only an optimizer that passed
    train_step's check, and is valid for that object alone."""
    hot = model._hot
    if (hot is None or type(X) is not _ndarray or X.shape != hot[1]
            or type(loss) is not hot[0][2] or not X.flags.c_contiguous):
        return None
    if X.dtype is not hot[2]:
        # an equal dtype object of X's own (pickle.loads makes one, as multiprocessing passes
        # batches): a view with the hit's, which the checks below compare by identity
        if type(X.dtype) is not type(hot[2]) or not X.dtype.isnative or X.dtype != hot[2]:
            return None
        X = X.view(hot[2])
    with model._lock:
        layers = model._layers
        if (layers.changed or model._front or dtype_of(layers) is not X.dtype
                or "step" in getattr(optimizer, "__dict__", ())
                or type(optimizer).step is not _own_step):
            # (a step() set on the optimizer object or its class: the layer path calls it;
            # fastnn.optimizers.own_step's test, written out here on the step's hot path)
            return None
        if model._hot is hot:
            # (still the hit checked above: hot_entry's checks of X and the loss hold)
            cached = model._compiled.get(hot[0])
            if not entry_matches(layers, cached, optimizer):
                return None
        else:
            cached = hot_entry(model, X, loss, optimizer)
        if cached is None:
            return None
        compiled = cached[1]
        if compiled is None or compiled.drops:
            return None
        try:
            value = run(compiled, X, y, optimizer)[0]
        except _ArraysChanged:
            # an array the plan holds was made read-only or reshaped in place since it was
            # built (nothing ran): Sequential._compiled_run builds again or takes the layer path
            return model._compiled_run(compiled, X, y, loss, optimizer, False, False)[0]
        return float(value)
