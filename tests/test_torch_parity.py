"""fastnn against PyTorch's autograd (CPU), when PyTorch is installed; skipped cleanly if not.

Forward values and every gradient of the fused dense sandwiches, the activations and the
losses are compared in float64, where both libraries should agree to rounding: sums of at
most ~40 terms here, so within ~1e-14 of the largest magnitude; rtol 1e-12 leaves room for
another BLAS's summation order and still catches any float32 step (~1e-7).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastnn.functional as F  # noqa: E402

RTOL = 1e-12


def _close(a, b, what):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= RTOL * scale, f"{what}: max error {err:.3e} > {RTOL * scale:.3e}"


def _t(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


ACTS = {
    "relu": (F.affine_relu_forward, F.affine_relu_backward, lambda z: torch.relu(z), ()),
    "sigmoid": (F.affine_sigmoid_forward, F.affine_sigmoid_backward, torch.sigmoid, ()),
    "tanh": (F.affine_tanh_forward, F.affine_tanh_backward, torch.tanh, ()),
    "leaky_relu": (F.affine_leaky_relu_forward, F.affine_leaky_relu_backward,
                   lambda z: torch.nn.functional.leaky_relu(z, 0.1), (0.1,)),
}


@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("shape", [(7, 13, 5), (64, 40, 30)])
def test_affine_sandwich_matches_autograd(act, shape):
    rng = np.random.default_rng(3)
    n, d, m = shape
    x, w, b = rng.standard_normal((n, d)), rng.standard_normal((d, m)) * 0.3, rng.standard_normal(m)
    dout = rng.standard_normal((n, m))
    fwd, bwd, tact, extra = ACTS[act]
    out, cache = fwd(x, w, b, *extra)
    dx, dw, db = bwd(dout, cache)
    tx, tw, tb = _t(x), _t(w), _t(b)
    tout = tact(tx @ tw + tb)
    tout.backward(torch.tensor(dout))
    _close(out, tout.detach().numpy(), f"{act} out")
    _close(dx, tx.grad.numpy(), f"{act} dx")
    _close(dw, tw.grad.numpy(), f"{act} dw")
    _close(db, tb.grad.numpy(), f"{act} db")


def test_affine_prelu_matches_autograd():
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((11, 6)), rng.standard_normal((6, 9)), rng.standard_normal(9)
    alpha = rng.uniform(0.05, 0.5, 9)
    dout = rng.standard_normal((11, 9))
    out, cache = F.affine_prelu_forward(x, w, b, alpha)
    dx, dw, db, dalpha = F.affine_prelu_backward(dout, cache)
    tx, tw, tb, ta = _t(x), _t(w), _t(b), _t(alpha)
    tout = torch.nn.functional.prelu(tx @ tw + tb, ta)
    tout.backward(torch.tensor(dout))
    for mine, theirs, what in ((out, tout.detach(), "out"), (dx, tx.grad, "dx"), (dw, tw.grad, "dw"),
                               (db, tb.grad, "db"), (dalpha, ta.grad, "dalpha")):
        _close(mine, theirs.numpy(), f"prelu {what}")


def test_softmax_loss_matches_cross_entropy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 10)) * 4
    y = rng.integers(0, 10, 50)
    loss, dx = F.softmax_loss(x, y)
    tx = _t(x)
    tl = torch.nn.functional.cross_entropy(tx, torch.tensor(y))
    tl.backward()
    _close(loss, tl.item(), "loss")
    _close(dx, tx.grad.numpy(), "dx")


def test_svm_loss_matches_multi_margin():
    """torch's multi_margin_loss averages each row over the C classes; the course's SVM loss
    sums over them, so it is C times torch's."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((40, 7))
    y = rng.integers(0, 7, 40)
    loss, dx = F.svm_loss(x, y)
    tx = _t(x)
    tl = torch.nn.functional.multi_margin_loss(tx, torch.tensor(y), margin=1.0) * 7
    tl.backward()
    _close(loss, tl.item(), "loss")
    _close(dx, tx.grad.numpy(), "dx")


def test_logistic_loss_matches_bce_with_logits():
    rng = np.random.default_rng(7)
    x = rng.standard_normal(60) * 5
    y = rng.integers(0, 2, 60)
    loss, dx = F.logistic_loss(x, y)
    tx = _t(x)
    tl = torch.nn.functional.binary_cross_entropy_with_logits(tx, torch.tensor(y, dtype=torch.float64))
    tl.backward()
    _close(loss, tl.item(), "loss")
    _close(dx, tx.grad.numpy(), "dx")


def test_mse_loss_matches_half_sum_over_rows():
    """fastnn's loss is 0.5 * sum / N; torch's mean is sum / (N * D): a factor D / 2."""
    rng = np.random.default_rng(8)
    x, t = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    loss, dx = F.mse_loss(x, t)
    tx = _t(x)
    tl = torch.nn.functional.mse_loss(tx, torch.tensor(t)) * 4 / 2
    tl.backward()
    _close(loss, tl.item(), "loss")
    _close(dx, tx.grad.numpy(), "dx")
