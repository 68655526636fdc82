"""NumPy reference for the dropout kernel: the same counter-based mask, computed in NumPy."""
import numpy as np

_M1, _M2, _GOLDEN = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35), np.uint32(0x9E3779B9)


def _fmix32(h):
    h = h ^ (h >> np.uint32(16))
    h = h * _M1
    h = h ^ (h >> np.uint32(13))
    h = h * _M2
    return h ^ (h >> np.uint32(16))


def keep_hashes(n, seed):
    """The 32-bit hash of each of n elements' counters under a 64-bit seed (uint32, n): what
    keep_mask compares with the keep limit."""
    seed = int(seed)
    lo, hi = np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)
    i = np.arange(n, dtype=np.uint32)
    with np.errstate(over="ignore"):
        return _fmix32(_fmix32(i * _GOLDEN + lo) ^ hi)


def keep_mask(n, p, seed):
    """Boolean keep-mask of n elements for keep probability p and a 64-bit seed."""
    h = keep_hashes(n, seed)
    # kept when h / 2**32 < p, i.e. h <= ceil(p * 2**32) - 1 (the keep rate is then within 2**-32
    # of p, so the 1 / p scale leaves the mean unbiased even for tiny p)
    limit = min((1 << 32) - 1, int(np.ceil(p * float(1 << 32))) - 1)
    return h <= np.uint32(limit)


def dropout_forward(x, p, seed):
    """Inverted dropout with keep probability p: ``x * mask / p``."""
    mask = keep_mask(x.size, p, seed).reshape(x.shape)
    return np.where(mask, x * x.dtype.type(1.0 / p), x.dtype.type(0)), mask


def dropout_backward(dout, p, mask):
    return np.where(mask, dout * dout.dtype.type(1.0 / p), dout.dtype.type(0))
