"""NumPy reference for the loss kernels (fastnn/_kernels/losses). Each returns (loss, dx),
averaged over the N rows, with no regularization inside."""
import numpy as np


def softmax_loss(x, y):
    shifted = x - x.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_z
    n = x.shape[0]
    loss = -log_probs[np.arange(n), y].sum() / n
    dx = np.exp(log_probs)
    dx[np.arange(n), y] -= 1
    dx /= n
    return float(loss), dx


def svm_loss(x, y):
    n = x.shape[0]
    correct = x[np.arange(n), y][:, None]
    margins = np.maximum(0, x - correct + 1)
    margins[np.arange(n), y] = 0
    loss = margins.sum() / n
    positive = (margins > 0).astype(x.dtype)
    positive[np.arange(n), y] = -positive.sum(axis=1)
    return float(loss), positive / n


def logistic_loss(x, y):
    shape = x.shape
    x = x.reshape(-1)
    y = np.asarray(y).reshape(-1).astype(x.dtype)
    n = x.shape[0]
    # max(x, 0) - x y per label: x = +-inf gives inf or 0, never inf - inf
    loss = (np.log1p(np.exp(-np.abs(x))) + np.where(y > 0.5, np.maximum(-x, 0), np.maximum(x, 0))).sum() / n
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
    s = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    # s - 1 as -sigmoid(-x) for the positives: no cancellation where s is close to 1
    g = np.where(y > 0.5, -np.where(x >= 0, e / (1 + e), 1 / (1 + e)), s)
    return float(loss), (g / n).astype(x.dtype).reshape(shape)


def binary_svm_loss(x, y):
    shape = x.shape
    x = x.reshape(-1)
    y = np.asarray(y).reshape(-1).astype(x.dtype)
    n = x.shape[0]
    margins = 1 - y * x
    loss = np.maximum(0, margins).sum() / n
    dx = np.where(margins > 0, -y, 0) / n
    return float(loss), dx.astype(x.dtype).reshape(shape)


def mse_loss(x, y):
    n = x.shape[0]
    diff = x - y
    return float(0.5 * (diff * diff).sum() / n), diff / n
