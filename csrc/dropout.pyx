# fastnn._kernels.dropout: inverted dropout with masks from a counter-based hash, and Gaussian
# noise from the same hash (Box-Muller: fastnn_simd.h, fnn_normal_pair).
#
# Element i of a call is kept when hash(seed, i) / 2**32 falls below the keep probability, so the mask
# depends on the seed and the element's index only: identical for any thread count, and
# regenerated in backward from the seed instead of being stored.
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport ceil
from libc.stdint cimport uint32_t

from fastnn_openmp cimport (FNN_CHUNK, chunk_count, chunk_len,
                            fnn_note_parallel, fnn_parallel_seen)
from fastnn_dropout cimport (fnn_dropout_f32, fnn_dropout_f64, fnn_dropout_inplace_f32,
                             fnn_dropout_inplace_f64, fnn_noise_f32, fnn_noise_f64,
                             NOISE_CHUNK, reg_threads)


cpdef unsigned long long noise_key(unsigned long long seed) noexcept:
    """The hash key the noise of `seed` uses: the splitmix64 output for state `seed` (a
    bijection of 64-bit values), so that noise and a dropout mask given the same seed (a
    GaussianNoise and a Dropout layer seeded alike draw the same seeds) come from unrelated
    keys (mask_key: with one key for both, the noise of a kept element had the sign of its
    mask's hash)."""
    return _mix64(seed + 0x9e3779b97f4a7c15ULL)


cpdef unsigned long long mask_key(unsigned long long seed) noexcept:
    """The hash key a dropout mask of `seed` uses: the seed xor a constant through
    splitmix64's finaliser (another bijection than noise_key's). The hash takes the key's
    low word plus the element index times 0x9E3779B9, so with the seed itself as the key two
    seeds of one high word whose low words differ by k * 0x9E3779B9 gave the same mask
    shifted by k elements (seeds 0 and 227: by 732,539 elements, a quarter of a million-element
    mask alike); mixed, any structure between seeds is gone from the keys."""
    return _mix64(seed ^ 0x6a09e667f3bcc908ULL)


cdef inline unsigned long long _mix64(unsigned long long z) noexcept nogil:
    """splitmix64's finaliser: a bijection of 64-bit values in which every input bit moves
    every output bit."""
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL
    return z ^ (z >> 31)

include "fastnn_sites.pxi"


cpdef uint32_t keep_limit(double p) noexcept:
    """The largest kept hash for keep probability p in (0, 1]: an element whose 32-bit hash h
    has h <= keep_limit(p) is kept, so the keep rate is ceil(p * 2**32) / 2**32, within 2**-32
    of p (a 24-bit threshold kept 2 / 2**24 = 1.19e-7 of the units for p = 1e-7: 19% more than
    the 1 / p scale assumes). (dropout_apply refuses p outside (0, 1].)"""
    cdef double t = ceil(p * 4294967296.0)
    if t >= 4294967296.0:
        return 4294967295u
    return <uint32_t>t - 1 if t >= 1.0 else 0


cdef inline void _dropout_span(const floating *x, floating *y, Py_ssize_t n, uint32_t first,
                               uint32_t limit, uint32_t lo, uint32_t hi, floating scale,
                               bint inplace) noexcept nogil:
    if inplace:
        if floating is float:
            fnn_dropout_inplace_f32(y, n, first, limit, lo, hi, scale)
        else:
            fnn_dropout_inplace_f64(y, n, first, limit, lo, hi, scale)
    elif floating is float:
        fnn_dropout_f32(x, y, n, first, limit, lo, hi, scale)
    else:
        fnn_dropout_f64(x, y, n, first, limit, lo, hi, scale)


def dropout_apply(const floating[::1] x, floating[::1] y, double p, unsigned long long seed,
                  int n_threads):
    """y = x * mask / p with mask from (seed, index). Works for forward (x = input) and backward
    (x = dout): both see the same mask. At most 2**32 elements per call."""
    cdef Py_ssize_t n = x.shape[0], c, start, nchunks
    cdef uint32_t limit
    cdef bint inplace
    cdef unsigned long long key = mask_key(seed)
    cdef uint32_t lo = <uint32_t>(key & 0xffffffffu), hi = <uint32_t>(key >> 32)
    cdef floating scale = <floating>(1.0 / p)
    cdef int nt
    cdef GovCall gc
    if not (0.0 < p <= 1.0):
        raise ValueError(f"dropout_apply: p must be in (0, 1], got {p}")
    limit = keep_limit(p)
    if y.shape[0] != n:
        raise ValueError("dropout_apply: shape mismatch")
    if n > 4294967295:
        raise ValueError("dropout supports at most 2**32 - 1 elements per call")
    if n == 0:
        return
    n_threads = gov_begin(&gc, _sites, _dynamic, gov_key(0, n, sizeof(floating), 0, 0), n_threads)
    nchunks = chunk_count(n)
    nt = reg_threads(n, False, n_threads)
    inplace = <const void *>&x[0] == <void *>&y[0]   # (the course's mask, made over ones:
                                                    # restrict pointers must not alias)
    with nogil:
        if nt <= 1:  # (the mask is a function of the element index: one span is the same)
            _dropout_span(&x[0], &y[0], n, 0, limit, lo, hi, scale, inplace)
        else:
            fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                start = c * FNN_CHUNK
                _dropout_span(&x[start], &y[start], chunk_len(c, n), <uint32_t>start, limit,
                              lo, hi, scale, inplace)
    gov_end(&gc)


def noise_apply(const floating[::1] x, floating[::1] y, double std, unsigned long long seed,
                int n_threads, Py_ssize_t first=0):
    """y = x + std * z, z standard normal from (noise_key(seed), index) (fastnn_simd.h,
    fnn_normal_pair):
    the same numbers for any thread count. x[0] is element `first` of the counter sequence
    (the noise of a part of a larger array: the callers pass 0). std finite and >= 0 (the
    callers check it). At most 2**32 - 1 elements per call, as dropout_apply."""
    cdef Py_ssize_t n = x.shape[0], c, start, m, nchunks
    cdef unsigned long long key = noise_key(seed)
    cdef uint32_t lo = <uint32_t>(key & 0xffffffffu), hi = <uint32_t>(key >> 32)
    cdef uint32_t base
    cdef int nt
    cdef GovCall gc
    if not (0.0 <= std < float("inf")):
        raise ValueError(f"noise_apply: std must be finite and >= 0, got {std}")
    if y.shape[0] != n:
        raise ValueError("noise_apply: shape mismatch")
    if first < 0 or first > 4294967295 - n:   # (not n + first: a first near 2**63 wraps)
        raise ValueError("Gaussian noise supports at most 2**32 - 1 elements per call")
    if n == 0:
        return
    base = <uint32_t>first
    n_threads = gov_begin(&gc, _sites, _dynamic, gov_key(1, n, sizeof(floating), 0, 0), n_threads)
    nchunks = (n + NOISE_CHUNK - 1) // NOISE_CHUNK
    nt = reg_threads(n, True, n_threads)
    with nogil:
        if nt <= 1:
            if floating is float:
                fnn_noise_f32(&x[0], &y[0], n, base, std, lo, hi)
            else:
                fnn_noise_f64(&x[0], &y[0], n, base, std, lo, hi)
        else:
            fnn_note_parallel()   # (see fastnn_omp.h: fork safety)
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                start = c * NOISE_CHUNK
                m = min(<Py_ssize_t>NOISE_CHUNK, n - start)
                if floating is float:
                    fnn_noise_f32(&x[start], &y[start], m, base + <uint32_t>start, std, lo, hi)
                else:
                    fnn_noise_f64(&x[start], &y[start], m, base + <uint32_t>start, std, lo, hi)
    gov_end(&gc)


def parallel_seen():
    """Whether this module ran a parallel region with more than one thread (fork safety:
    fastnn/_threads.py)."""
    return fnn_parallel_seen() != 0
