"""NumPy reference for the dropout and noise kernels: the same counter-based masks and normal
draws, computed in NumPy."""
import numpy as np

_M1, _M2, _GOLDEN = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35), np.uint32(0x9E3779B9)


def _fmix32(h):
    h = h ^ (h >> np.uint32(16))
    h = h * _M1
    h = h ^ (h >> np.uint32(13))
    h = h * _M2
    return h ^ (h >> np.uint32(16))


def keep_hashes(n, seed):
    """The 32-bit hash of each of n elements' counters under a 64-bit key (uint32, n): under
    mask_key(seed), what keep_mask compares with the keep limit; under noise_key(seed), the
    noise's draws."""
    seed = int(seed)
    lo, hi = np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)
    i = np.arange(n, dtype=np.uint32)
    with np.errstate(over="ignore"):
        return _fmix32(_fmix32(i * _GOLDEN + lo) ^ hi)


def _mix64(z):
    m = (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def mask_key(seed):
    """The hash key of a dropout mask for a 64-bit seed: the seed xor 0x6A09E667F3BCC908
    through splitmix64's finaliser (noise_key's is the seed plus splitmix64's increment)."""
    return _mix64(int(seed) ^ 0x6A09E667F3BCC908)


def mask_hashes(n, seed):
    """The hashes a dropout mask of n elements under `seed` compares with its keep limit."""
    return keep_hashes(n, mask_key(seed))


def keep_mask(n, p, seed):
    """Boolean keep-mask of n elements for keep probability p and a 64-bit seed."""
    h = mask_hashes(n, seed)
    # kept when h / 2**32 < p, i.e. h <= ceil(p * 2**32) - 1 (the keep rate is then within 2**-32
    # of p, so the 1 / p scale biases the mean by at most 2**-32 / p relative: the public
    # functions take p from 2**-16 on, fastnn.functional.dropout.MIN_KEEP)
    limit = min((1 << 32) - 1, int(np.ceil(p * float(1 << 32))) - 1)
    return h <= np.uint32(limit)


def dropout_forward(x, p, seed):
    """Inverted dropout with keep probability p: ``x * mask / p``."""
    mask = keep_mask(x.size, p, seed).reshape(x.shape)
    return np.where(mask, x * x.dtype.type(1.0 / p), x.dtype.type(0)), mask


def dropout_backward(dout, p, mask):
    return np.where(mask, dout * dout.dtype.type(1.0 / p), dout.dtype.type(0))


def noise_key(seed):
    """The hash key of the noise for a 64-bit seed: splitmix64's output for state `seed`, so
    that noise and a dropout mask given the same seed are unrelated."""
    return _mix64((int(seed) + 0x9E3779B97F4A7C15) & ((1 << 64) - 1))


def standard_normals(n, seed):
    """The standard normal draw of each of n elements under a 64-bit seed (float64, n), as the
    noise kernel makes it: elements 2k and 2k + 1 share the hashes h1 of counter 2k and h2 of
    counter 2k + 1 (keep_hashes under noise_key(seed)), and take R cos(theta) and R sin(theta),
    R = sqrt(-2 log u1), u1 = (h1 + 1) / 2**32, theta = 2 pi h2 / 2**32 (Box-Muller)."""
    h = keep_hashes(n + (n & 1), noise_key(seed))
    h1 = h[0::2].astype(np.float64)
    h2 = h[1::2].astype(np.float64)
    radius = np.sqrt(-2.0 * np.log((h1 + 1.0) * 2.0**-32))
    theta = (2.0 * np.pi * 2.0**-32) * h2
    z = np.empty(n + (n & 1))
    z[0::2] = radius * np.cos(theta)
    z[1::2] = radius * np.sin(theta)
    return z[:n]


def gaussian_noise_forward(x, std, seed):
    """Input noise ``x + std * z`` with z = standard_normals(x.size, seed), the product rounded
    to x's dtype before the sum."""
    z = standard_normals(x.size, seed).reshape(x.shape)
    return x + (float(std) * z).astype(x.dtype)
