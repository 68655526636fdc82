"""Optimizers over a model's parameters, PyTorch-style: ``opt = SGD(model.parameters(), lr=0.1)``,
then ``opt.step()`` after each backward. Each step runs the fused update kernel of
fastnn.optim in place on every parameter.

L2 regularization ("gradual forgetting") is ``weight_decay``: the gradient used is
``grad + weight_decay * W``. It applies to weight matrices (the course's L2 on W), not to
biases or PReLU slopes.
"""
import numpy as np

from fastnn import optim as _optim
from fastnn._kernels import optim as _ko
from fastnn._validation import check_scalar
from fastnn.layers import Parameter

__all__ = ["Optimizer", "SGD", "RMSProp", "Adam"]


class Optimizer:
    def __init__(self, params, lr, weight_decay):
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"params must be an iterable of Parameters (model.parameters()), "
                            f"got {type(params).__name__}") from None
        if not params:
            raise ValueError("params is empty: pass model.parameters() of a model with learnable layers")
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"params must be Parameter objects (from model.parameters()), got {type(p).__name__}")
        self.params = params
        self.lr = self._positive(lr, "lr")
        wd = check_scalar(weight_decay, "weight_decay")
        if wd < 0:
            raise ValueError(f"weight_decay must be >= 0, got {wd}")
        self.weight_decay = wd
        self.state = {}

    @staticmethod
    def _positive(value, name, allow_zero=False):
        return check_scalar(value, name, lo=0.0, lo_open=not allow_zero)

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0

    def _slots(self, p, n):
        key = (id(p.layer), p.name)
        data = p.data
        st = self.state.get(key)
        if st is None or st[0].shape != data.shape or st[0].dtype != data.dtype:
            st = [np.zeros_like(data) for _ in range(n)]
            self.state[key] = st
        return st

    def _update(self, rule, p, s1=None, s2=None, h1=0.0, h2=0.0, eps=0.0, c1=1.0, c2=1.0):
        w = p.data
        if not (w.flags.c_contiguous and w.flags.writeable):
            raise ValueError(f"parameter {p.name} must be a writeable C-contiguous array")
        wd = self.weight_decay if p.decay else 0.0
        _optim._run(rule, w, p.grad, s1, s2, self.lr, h1, h2, eps, c1, c2, wd)


class SGD(Optimizer):
    """SGD with optional momentum and Nesterov momentum (the course's formulas)."""

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum = self._positive(momentum, "momentum", allow_zero=True)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")

    def step(self):
        for p in self.params:
            if self.momentum == 0:
                self._update(_ko.SGD, p)
            else:
                (v,) = self._slots(p, 1)
                self._update(_ko.NESTEROV if self.nesterov else _ko.MOMENTUM, p, v, h1=self.momentum)


class RMSProp(Optimizer):
    def __init__(self, params, lr=0.01, decay_rate=0.99, eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.decay_rate = check_scalar(decay_rate, "decay_rate", lo=0.0, hi=1.0, hi_open=True)
        self.eps = self._positive(eps, "eps", allow_zero=True)

    def step(self):
        for p in self.params:
            (c,) = self._slots(p, 1)
            self._update(_ko.RMSPROP, p, c, h1=self.decay_rate, eps=self.eps)


class Adam(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(check_scalar(b, "betas", lo=0.0, hi=1.0, hi_open=True) for b in betas)
        self.eps = self._positive(eps, "eps", allow_zero=True)
        self.t = 0

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1.0 - b1**self.t, 1.0 - b2**self.t
        for p in self.params:
            m, v = self._slots(p, 2)
            self._update(_ko.ADAM, p, m, v, h1=b1, h2=b2, eps=self.eps, c1=c1, c2=c2)
