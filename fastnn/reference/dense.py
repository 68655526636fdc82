"""NumPy reference for the dense kernels (fastnn/_kernels/dense), course conventions."""
import numpy as np

from fastnn.reference import activations as act


def _rows(x):
    """x as (N, D), D = prod(x.shape[1:]) spelled out: reshape(N, -1) fails for N = 0."""
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))


def affine_forward(x, w, b):
    out = _rows(x) @ w + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    x, w, b = cache
    x2 = _rows(x)
    dx = (dout @ w.T).reshape(x.shape)
    dw = x2.T @ dout
    db = dout.sum(axis=0)
    return dx, dw, db


def compose_sandwich(aff_fwd, aff_bwd, act_fwd, act_bwd):
    """affine_<act>_forward/backward made of an affine pair and an activation pair, the way
    the course's layer_utils does it (also used by bench/ to time fastnn's unfused layers)."""

    def forward(x, w, b, *args):
        a, fc_cache = aff_fwd(x, w, b)
        out, act_cache = act_fwd(a, *args)
        return out, (fc_cache, act_cache)

    def backward(dout, cache):
        fc_cache, act_cache = cache
        da = act_bwd(dout, act_cache)
        if isinstance(da, tuple):  # prelu: (da, dalpha)
            da, dalpha = da
            return aff_bwd(da, fc_cache) + (dalpha,)
        return aff_bwd(da, fc_cache)

    return forward, backward


def _sandwich(name):
    forward, backward = compose_sandwich(affine_forward, affine_backward,
                                         getattr(act, f"{name}_forward"), getattr(act, f"{name}_backward"))
    forward.__name__ = f"affine_{name}_forward"
    backward.__name__ = f"affine_{name}_backward"
    return forward, backward


affine_relu_forward, affine_relu_backward = _sandwich("relu")
affine_leaky_relu_forward, affine_leaky_relu_backward = _sandwich("leaky_relu")
affine_sigmoid_forward, affine_sigmoid_backward = _sandwich("sigmoid")
affine_tanh_forward, affine_tanh_backward = _sandwich("tanh")
affine_prelu_forward, affine_prelu_backward = _sandwich("prelu")


def maxout_forward(x, w, b):
    """out[n, m] = max_p (x[n] @ w[:, m, p] + b[m, p]); w (D, M, k), b (M, k)."""
    x2 = _rows(x)
    z = np.einsum("nd,dmk->nmk", x2, w) + b
    out, red_cache = act.maxout_reduce_forward(z)
    return out, (x, w, b, red_cache)


def maxout_backward(dout, cache):
    x, w, b, red_cache = cache
    x2 = _rows(x)
    dz = act.maxout_reduce_backward(dout, red_cache)
    dx = np.einsum("nmk,dmk->nd", dz, w).reshape(x.shape)
    dw = np.einsum("nd,nmk->dmk", x2, dz)
    db = dz.sum(axis=0)
    return dx, dw, db
