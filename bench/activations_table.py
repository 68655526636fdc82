#!/usr/bin/env python3
"""Activation kernels at memory-bound size: fastnn vs NumPy's best formulation, GB/s.

    python3 bench/activations_table.py [--size N] [--rounds R] [--markdown]

For every kernel (relu, leaky_relu, sigmoid, tanh, prelu per feature, maxout_reduce), forward
and backward, on N float32 elements (default 16M = 4096 x 4096), this measures in ONE process,
interleaved (every round times every variant once, in a shuffled order), the median of R rounds:

- fastnn.functional allocating its result, and with ``out=`` (where the API has it), with its
  default thread count, and its best variant again on one thread (``fastnn.threads(1)``),
  which separates the kernel's own speed from what the second thread adds;
- several NumPy formulations, allocating and writing preallocated buffers (``out=``); each
  candidate is checked against the fastnn result first, and the fastest of each policy is
  "NumPy best";
- a copy of the same N floats (``np.copyto`` and ``np.negative(out=)``, one thread, and two
  threads on halves) as the memory-bandwidth reference.

GB/s counts the bytes the ideal kernel reads + writes (forward 8 B/element, backward 12;
maxout: z, out, and an int8 argmax), whatever the implementation really moves. Speedup is
NumPy time / fastnn time with the same allocation policy; "best vs best" compares the fastest
fastnn variant with the fastest NumPy variant of either policy. On a shared, noisy machine only
the ratios of this run mean anything (never compare absolute GB/s across runs). A round during
which other processes used more than ``--max-other`` cores (from /proc/stat) is re-run, and the
header says how disturbed the kept rounds were: with another process busy on one of 2 cores,
2-thread OpenMP kernels lose most of their speed (they wait for the descheduled thread).
"""
import argparse
import concurrent.futures
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import OtherLoad, header_lines, loadavg, now  # noqa: E402  (also puts the repo on sys.path)

import fastnn  # noqa: E402,F401
from fastnn import bench as fb  # noqa: E402
from fastnn import functional as F  # noqa: E402
from fastnn.reference import activations as R  # noqa: E402

ALPHA = 0.01      # leaky_relu
PIECES = 2        # maxout pieces
DT = np.float32


# ----------------------------------------------------------------------------- data
def shape_for(n):
    d = 4096 if n >= 4096 * 4 else max(PIECES, n)
    d -= d % PIECES
    return (n // d, d)


class Data:
    def __init__(self, n):
        self.shape = shape_for(n)
        rows, d = self.shape
        self.n = rows * d
        rng = np.random.default_rng(2024)
        self.x = rng.standard_normal(self.shape, dtype=DT)
        self.dout = rng.standard_normal(self.shape, dtype=DT)
        self.buf = np.empty(self.shape, DT)
        self.buf2 = np.empty(self.shape, DT)
        self.mask = np.empty(self.shape, np.bool_)
        self.alpha_vec = np.linspace(0.05, 0.3, d, dtype=DT)
        self.a = DT(ALPHA)
        # saved forward outputs (what each backward reads)
        self.relu_y = np.maximum(self.x, 0)
        self.sig_y = F.sigmoid_forward(self.x)[0]
        self.tanh_y = np.tanh(self.x)
        self.caches = {
            "relu": F.relu_forward(self.x)[1],
            "leaky_relu": F.leaky_relu_forward(self.x, ALPHA)[1],
            "sigmoid": F.sigmoid_forward(self.x)[1],
            "tanh": F.tanh_forward(self.x)[1],
            "prelu": F.prelu_forward(self.x, self.alpha_vec)[1],
        }
        # maxout: z has the same number of elements, (rows, d // PIECES, PIECES)
        self.z = self.x.reshape(rows, d // PIECES, PIECES)
        self.mdout = rng.standard_normal((rows, d // PIECES), dtype=DT)
        self.mcache = F.maxout_reduce_forward(self.z)[1]
        self.m_idx64 = np.argmax(self.z, axis=-1)
        self.m_idx8 = self.m_idx64.astype(np.int8)
        self.m_out = np.empty((rows, d // PIECES), DT)
        self.m_arg = np.empty((rows, d // PIECES), np.intp)
        self.m_mask = np.empty(self.z.shape, np.bool_)
        self.m_dz = np.empty(self.z.shape, DT)
        self.pieces = np.arange(PIECES, dtype=np.int8)
        self.dalpha = np.empty(d, DT)

    def nbytes(self, kernel, direction):
        if kernel == "maxout_reduce":
            units = self.n // PIECES
            return 4 * self.n + 5 * units
        return (8 if direction == "fwd" else 12) * self.n


# ----------------------------------------------------------------------------- NumPy formulations
def _maxout_fwd_loop(z, out=None, arg=None):
    """General-k maxout reduce as k-1 vectorized passes over the pieces."""
    if out is None:
        out = z[..., 0].copy()
    else:
        np.copyto(out, z[..., 0])
    arg = arg if arg is not None else np.empty(out.shape, np.intp)
    arg[...] = 0
    for p in range(1, z.shape[-1]):
        m = z[..., p] > out
        np.copyto(out, z[..., p], where=m)
        arg[m] = p
    return out, arg


def _prelu_bwd_minimum(dout, x, a):
    dx = np.where(x > 0, dout, a * dout)
    dalpha = np.einsum("ij,ij->j", dout, np.minimum(x, 0))
    return dx, dalpha


def _prelu_bwd_out(d):
    np.minimum(d.x, 0, out=d.buf2)
    dalpha = np.einsum("ij,ij->j", d.dout, d.buf2, out=d.dalpha)
    np.multiply(d.dout, d.alpha_vec, out=d.buf)
    np.copyto(d.buf, d.dout, where=np.greater(d.x, 0, out=d.mask))
    return d.buf, dalpha


def _prelu_bwd_out_sum(d):
    np.minimum(d.x, 0, out=d.buf2)
    np.multiply(d.buf2, d.dout, out=d.buf2)
    dalpha = np.sum(d.buf2, axis=0, out=d.dalpha)
    np.multiply(d.dout, d.alpha_vec, out=d.buf)
    np.copyto(d.buf, d.dout, where=np.greater(d.x, 0, out=d.mask))
    return d.buf, dalpha


def _sig_tanh_out(d):
    b = np.multiply(d.x, 0.5, out=d.buf)
    np.tanh(b, out=b)
    np.multiply(b, 0.5, out=b)
    return np.add(b, 0.5, out=b)


def _sig_bwd_out(d):
    b = np.subtract(1, d.sig_y, out=d.buf)
    np.multiply(b, d.sig_y, out=b)
    return np.multiply(b, d.dout, out=b)


def _tanh_bwd_out(d):
    b = np.multiply(d.tanh_y, d.tanh_y, out=d.buf)
    np.subtract(1, b, out=b)
    return np.multiply(d.dout, b, out=b)


def _tanh_bwd_out_fma(d):
    # 1 - t^2 = (1 - t)(1 + t): same pass count, kept to see which NumPy runs faster
    b = np.subtract(1, d.tanh_y, out=d.buf)
    b2 = np.add(1, d.tanh_y, out=d.buf2)
    np.multiply(b, b2, out=b)
    return np.multiply(d.dout, b, out=b)


def _leaky_fwd_out(d):
    b = np.multiply(d.x, d.a, out=d.buf)
    return np.maximum(d.x, b, out=b)


def _leaky_bwd_out(d):
    b = np.multiply(d.dout, d.a, out=d.buf)
    np.copyto(b, d.dout, where=np.greater(d.x, 0, out=d.mask))
    return b


def _prelu_fwd_out(d):
    b = np.multiply(d.x, d.alpha_vec, out=d.buf)
    np.copyto(b, d.x, where=np.greater(d.x, 0, out=d.mask))
    return b


def _maxout_bwd_onehot(d):
    return (d.m_idx64[..., None] == np.arange(PIECES)) * d.mdout[..., None]


def _maxout_bwd_onehot_out(d):
    np.equal(d.m_idx8[..., None], d.pieces, out=d.m_mask)
    return np.multiply(d.m_mask, d.mdout[..., None], out=d.m_dz)


def _maxout_bwd_loop_out(d):
    for p in range(PIECES):
        np.multiply(d.m_idx8 == p, d.mdout, out=d.m_dz[..., p])
    return d.m_dz


def _one_thread(fn):
    def run():
        with fastnn.threads(1):
            return fn()
    return run


def variants(d):
    """{(kernel, direction): [(impl, policy, label, fn), ...]}; impl is 'fastnn' or 'numpy',
    policy 'alloc' or 'out'."""
    c = d.caches
    V = {}
    V["relu", "fwd"] = [
        ("fastnn", "alloc", "F.relu_forward(x)", lambda: F.relu_forward(d.x)[0]),
        ("fastnn", "out", "F.relu_forward(x, out=buf)", lambda: F.relu_forward(d.x, out=d.buf)[0]),
        ("numpy", "alloc", "np.maximum(x, 0)", lambda: np.maximum(d.x, 0)),
        ("numpy", "alloc", "x * (x > 0)", lambda: d.x * (d.x > 0)),
        ("numpy", "out", "np.maximum(x, 0, out=buf)", lambda: np.maximum(d.x, 0, out=d.buf)),
    ]
    V["relu", "bwd"] = [
        ("fastnn", "alloc", "F.relu_backward(dout, cache)", lambda: F.relu_backward(d.dout, c["relu"])),
        ("fastnn", "out", "F.relu_backward(dout, cache, out=buf)",
         lambda: F.relu_backward(d.dout, c["relu"], out=d.buf)),
        ("numpy", "alloc", "dout * (y > 0)", lambda: d.dout * (d.relu_y > 0)),
        ("numpy", "alloc", "np.where(y > 0, dout, 0)", lambda: np.where(d.relu_y > 0, d.dout, DT(0))),
        ("numpy", "out", "np.multiply(dout, y > 0, out=buf)",
         lambda: np.multiply(d.dout, d.relu_y > 0, out=d.buf)),
        ("numpy", "out", "np.multiply(dout, np.greater(y, 0, out=mask), out=buf)",
         lambda: np.multiply(d.dout, np.greater(d.relu_y, 0, out=d.mask), out=d.buf)),
    ]
    V["leaky_relu", "fwd"] = [
        ("fastnn", "alloc", "F.leaky_relu_forward(x)", lambda: F.leaky_relu_forward(d.x, ALPHA)[0]),
        ("fastnn", "out", "F.leaky_relu_forward(x, out=buf)",
         lambda: F.leaky_relu_forward(d.x, ALPHA, out=d.buf)[0]),
        ("numpy", "alloc", "np.where(x > 0, x, a * x)", lambda: np.where(d.x > 0, d.x, d.a * d.x)),
        ("numpy", "alloc", "np.maximum(x, a * x)", lambda: np.maximum(d.x, d.a * d.x)),
        ("numpy", "out", "np.maximum(x, np.multiply(x, a, out=buf), out=buf)", lambda: _leaky_fwd_out(d)),
    ]
    V["leaky_relu", "bwd"] = [
        ("fastnn", "alloc", "F.leaky_relu_backward(dout, cache)",
         lambda: F.leaky_relu_backward(d.dout, c["leaky_relu"])),
        ("fastnn", "out", "F.leaky_relu_backward(dout, cache, out=buf)",
         lambda: F.leaky_relu_backward(d.dout, c["leaky_relu"], out=d.buf)),
        ("numpy", "alloc", "dout * np.where(x > 0, 1, a)",
         lambda: d.dout * np.where(d.x > 0, DT(1), d.a)),
        ("numpy", "alloc", "np.where(x > 0, dout, a * dout)",
         lambda: np.where(d.x > 0, d.dout, d.a * d.dout)),
        ("numpy", "out", "multiply(dout, a, out=buf); copyto(buf, dout, where=greater(x, 0, out=mask))",
         lambda: _leaky_bwd_out(d)),
    ]
    V["sigmoid", "fwd"] = [
        ("fastnn", "alloc", "F.sigmoid_forward(x)", lambda: F.sigmoid_forward(d.x)[0]),
        ("fastnn", "out", "F.sigmoid_forward(x, out=buf)", lambda: F.sigmoid_forward(d.x, out=d.buf)[0]),
        ("numpy", "alloc", "reference sigmoid (stable, np.where)", lambda: R.sigmoid(d.x)),
        ("numpy", "alloc", "sigmoid_naive(x) (4 ufuncs, 1 temp)", lambda: R.sigmoid_naive(d.x)),
        ("numpy", "alloc", "1 / (1 + np.exp(-x))", lambda: _silent(lambda: 1 / (1 + np.exp(-d.x)))),
        ("numpy", "alloc", "0.5 * np.tanh(0.5 * x) + 0.5", lambda: 0.5 * np.tanh(0.5 * d.x) + 0.5),
        ("numpy", "out", "sigmoid_naive(x, out=buf)", lambda: R.sigmoid_naive(d.x, out=d.buf)),
        ("numpy", "out", "tanh form, 4 ufuncs into buf", lambda: _sig_tanh_out(d)),
    ]
    V["sigmoid", "bwd"] = [
        ("fastnn", "alloc", "F.sigmoid_backward(dout, cache)", lambda: F.sigmoid_backward(d.dout, c["sigmoid"])),
        ("fastnn", "out", "F.sigmoid_backward(dout, cache, out=buf)",
         lambda: F.sigmoid_backward(d.dout, c["sigmoid"], out=d.buf)),
        ("numpy", "alloc", "dout * y * (1 - y)", lambda: d.dout * d.sig_y * (1 - d.sig_y)),
        ("numpy", "alloc", "dout * (y - y * y)", lambda: d.dout * (d.sig_y - d.sig_y * d.sig_y)),
        ("numpy", "out", "3 ufuncs into buf", lambda: _sig_bwd_out(d)),
    ]
    V["tanh", "fwd"] = [
        ("fastnn", "alloc", "F.tanh_forward(x)", lambda: F.tanh_forward(d.x)[0]),
        ("fastnn", "out", "F.tanh_forward(x, out=buf)", lambda: F.tanh_forward(d.x, out=d.buf)[0]),
        ("numpy", "alloc", "np.tanh(x)", lambda: np.tanh(d.x)),
        ("numpy", "out", "np.tanh(x, out=buf)", lambda: np.tanh(d.x, out=d.buf)),
    ]
    V["tanh", "bwd"] = [
        ("fastnn", "alloc", "F.tanh_backward(dout, cache)", lambda: F.tanh_backward(d.dout, c["tanh"])),
        ("fastnn", "out", "F.tanh_backward(dout, cache, out=buf)",
         lambda: F.tanh_backward(d.dout, c["tanh"], out=d.buf)),
        ("numpy", "alloc", "dout * (1 - t * t)", lambda: d.dout * (1 - d.tanh_y * d.tanh_y)),
        ("numpy", "out", "3 ufuncs into buf", lambda: _tanh_bwd_out(d)),
        ("numpy", "out", "dout * (1 - t) * (1 + t), 4 ufuncs into 2 bufs", lambda: _tanh_bwd_out_fma(d)),
    ]
    V["prelu", "fwd"] = [
        ("fastnn", "alloc", "F.prelu_forward(x, alpha)", lambda: F.prelu_forward(d.x, d.alpha_vec)[0]),
        ("numpy", "alloc", "np.where(x > 0, x, alpha * x)",
         lambda: np.where(d.x > 0, d.x, d.alpha_vec * d.x)),
        ("numpy", "out", "multiply(x, alpha, out=buf); copyto(buf, x, where=greater(x, 0, out=mask))",
         lambda: _prelu_fwd_out(d)),
    ]
    V["prelu", "bwd"] = [
        ("fastnn", "alloc", "F.prelu_backward(dout, cache)", lambda: F.prelu_backward(d.dout, c["prelu"])),
        ("numpy", "alloc", "reference (2 np.where, sum)",
         lambda: R.prelu_backward(d.dout, (d.x, d.alpha_vec))),
        ("numpy", "alloc", "np.where + einsum(dout, minimum(x, 0))",
         lambda: _prelu_bwd_minimum(d.dout, d.x, d.alpha_vec)),
        ("numpy", "out", "into buffers, einsum for dalpha", lambda: _prelu_bwd_out(d)),
        ("numpy", "out", "into buffers, sum(axis=0) for dalpha", lambda: _prelu_bwd_out_sum(d)),
    ]
    V["maxout_reduce", "fwd"] = [
        ("fastnn", "alloc", "F.maxout_reduce_forward(z)", lambda: _out_and_index(F.maxout_reduce_forward(d.z))),
        ("numpy", "alloc", "reference (argmax + take_along_axis)",
         lambda: _out_and_index(R.maxout_reduce_forward(d.z))),
        ("numpy", "alloc", "z.max(-1), z.argmax(-1)", lambda: (d.z.max(-1), d.z.argmax(-1))),
        ("numpy", "alloc", "loop over pieces (compare, copyto where)", lambda: _maxout_fwd_loop(d.z)),
        ("numpy", "out", "loop over pieces into buffers",
         lambda: _maxout_fwd_loop(d.z, d.m_out, d.m_arg)),
    ]
    V["maxout_reduce", "bwd"] = [
        ("fastnn", "alloc", "F.maxout_reduce_backward(dout, cache)",
         lambda: F.maxout_reduce_backward(d.mdout, d.mcache)),
        ("numpy", "alloc", "reference (zeros + put_along_axis)",
         lambda: R.maxout_reduce_backward(d.mdout, (d.m_idx64, d.z.shape))),
        ("numpy", "alloc", "(idx[..., None] == arange(k)) * dout[..., None]", lambda: _maxout_bwd_onehot(d)),
        ("numpy", "out", "np.multiply(np.equal(idx8[..., None], arange(k), out=mask), dout[..., None], out=dz)",
         lambda: _maxout_bwd_onehot_out(d)),
        ("numpy", "out", "per piece: np.multiply(idx8 == p, dout, out=dz[..., p])",
         lambda: _maxout_bwd_loop_out(d)),
    ]
    # fastnn on one thread (its best policy), to separate kernel quality from threading
    for key, vs in V.items():
        f = [v for v in vs if v[0] == "fastnn"]
        impl, policy, label, fn = f[-1]
        vs.insert(len(f), ("fastnn", "1t", label + " [1 thread]", _one_thread(fn)))
    return V


def _out_and_index(result):
    """(out, winning piece) from either maxout_reduce_forward's (out, cache)."""
    out, cache = result
    return out, (cache.saved if hasattr(cache, "saved") else cache[0])


def _silent(f):
    with np.errstate(over="ignore"):
        return f()


# ----------------------------------------------------------------------------- checking
def _as_tuple(r):
    return tuple(r) if isinstance(r, tuple) else (r,)


def check(kernel, direction, label, got, want):
    got, want = _as_tuple(got), _as_tuple(want)
    for i, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g)
        w = np.asarray(w)
        if g.shape != w.shape:
            raise AssertionError(f"{kernel} {direction} [{label}] output {i}: shape {g.shape} != {w.shape}")
        if g.dtype.kind in "iu" or w.dtype.kind in "iu":
            ok = np.array_equal(g, w)
        elif kernel == "prelu" and i == 1:   # dalpha: a sum of thousands of terms
            ok = np.allclose(g, w, rtol=1e-3, atol=1e-3 * float(np.abs(w).max()))
        else:
            ok = np.allclose(g, w, rtol=1e-5, atol=1e-6)
        if not ok:
            raise AssertionError(f"{kernel} {direction} [{label}] output {i} differs from fastnn's")


# ----------------------------------------------------------------------------- timing
_pool = None


def on_2threads(f, dst, src):
    """f(dst_half, src_half) on the two halves, one of them on a persistent helper thread
    (NumPy releases the GIL): what two cores can stream."""
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    h = src.shape[0] // 2
    fut = _pool.submit(f, dst[:h], src[:h])
    f(dst[h:], src[h:])
    fut.result()


def _ufunc_copy(dst, src):
    np.negative(src, out=dst)  # a copy through a ufunc: ordinary (not streaming) stores


def measure(d, rounds, seed=0, max_other=0.3, max_attempts_factor=3):
    """Interleaved rounds; a round during which other processes used more than `max_other`
    cores is re-run (up to max_attempts_factor * rounds rounds in all), and the `rounds`
    least disturbed rounds are kept."""
    V = variants(d)
    entries = []  # (key, impl, policy, label, fn)
    for key, vs in V.items():
        for impl, policy, label, fn in vs:
            entries.append((key, impl, policy, label, fn))
    dst = np.empty_like(d.x)
    copies = [
        ("out", "np.copyto(dst, x), 1 thread", lambda: np.copyto(dst, d.x)),
        ("out", "np.negative(x, out=dst), 1 thread", lambda: _ufunc_copy(dst, d.x)),
        ("alloc", "x.copy(), 1 thread", lambda: d.x.copy()),
        ("out2", "np.copyto on halves, 2 threads", lambda: on_2threads(np.copyto, dst, d.x)),
        ("out2", "np.negative(out=) on halves, 2 threads", lambda: on_2threads(_ufunc_copy, dst, d.x)),
    ]
    for policy, label, fn in copies:
        entries.append((("copy", ""), "ref", policy, label, fn))

    # warm-up + correctness: every NumPy candidate must match fastnn's result
    for key, vs in V.items():
        want = None
        for impl, policy, label, fn in vs:
            r = fn()
            if impl == "fastnn" and want is None:
                want = tuple(np.array(a, copy=True) for a in _as_tuple(r))
            elif want is not None:
                check(key[0], key[1], label, r, want)
    for e in entries[-len(copies):]:
        e[4]()

    rounds_data = []  # (other-load in cores, [time per entry])
    order = list(range(len(entries)))
    rng = random.Random(seed)
    attempts = 0
    while attempts < max_attempts_factor * rounds:
        attempts += 1
        rng.shuffle(order)
        t = [0.0] * len(entries)
        with OtherLoad() as other:
            for i in order:
                fn = entries[i][4]
                t0 = time.perf_counter()
                r = fn()
                t1 = time.perf_counter()
                del r
                t[i] = t1 - t0
        load = other.cores if other.cores is not None else 0.0
        rounds_data.append((load, t))
        if sum(1 for ld, _ in rounds_data if ld <= max_other) >= rounds:
            break
    # the R least disturbed rounds
    kept = sorted(rounds_data, key=lambda lt: lt[0])[:rounds]
    stats = {"attempts": attempts, "kept": len(kept), "max_other": max_other,
             "kept_load_max": max(ld for ld, _ in kept), "kept_load_mean": sum(ld for ld, _ in kept) / len(kept)}
    times = {i: [t[i] for _, t in kept] for i in range(len(entries))}
    results = []
    for i, (key, impl, policy, label, _) in enumerate(entries):
        results.append({"kernel": key[0], "dir": key[1], "impl": impl, "policy": policy,
                        "label": label, "median": float(np.median(times[i])),
                        "min": float(np.min(times[i]))})
    return results, stats


# ----------------------------------------------------------------------------- report
KERNEL_ORDER = ("relu", "leaky_relu", "sigmoid", "tanh", "prelu", "maxout_reduce")


def summarize(d, results):
    by = {}
    for r in results:
        by.setdefault((r["kernel"], r["dir"], r["impl"], r["policy"]), []).append(r)

    def best(kernel, direction, impl, policy):
        rs = by.get((kernel, direction, impl, policy), [])
        return min(rs, key=lambda r: r["median"]) if rs else None

    rows = []
    for k in KERNEL_ORDER:
        for dr in ("fwd", "bwd"):
            nb = d.nbytes(k, dr)
            fa, fo = best(k, dr, "fastnn", "alloc"), best(k, dr, "fastnn", "out")
            f1 = best(k, dr, "fastnn", "1t")
            na, no = best(k, dr, "numpy", "alloc"), best(k, dr, "numpy", "out")
            fbest = min([r for r in (fa, fo) if r], key=lambda r: r["median"])
            nbest = min([r for r in (na, no) if r], key=lambda r: r["median"])
            rows.append({
                "kernel": k, "dir": dr, "bytes": nb,
                "fa": fa, "fo": fo, "f1": f1, "na": na, "no": no, "fbest": fbest, "nbest": nbest,
            })
    copy1 = min(by[("copy", "", "ref", "out")], key=lambda r: r["median"])
    copy_alloc = by[("copy", "", "ref", "alloc")][0]
    copy2 = min(by[("copy", "", "ref", "out2")], key=lambda r: r["median"])
    return rows, copy1, copy_alloc, copy2


def gbps(nbytes, r):
    return nbytes / r["median"] / 1e9 if r else None


def fmt(v, spec="{:.1f}"):
    return "n/a" if v is None else spec.format(v)


def report(d, results, args, header, markdown):
    rows, copy1, copy_alloc, copy2 = summarize(d, results)
    copy_bytes = 8 * d.n
    c1, c2, ca = gbps(copy_bytes, copy1), gbps(copy_bytes, copy2), gbps(copy_bytes, copy_alloc)
    out = []
    if markdown:
        out.append("### Activation kernels, float32, {:,} elements ({}x{})".format(d.n, *d.shape))
        out.append("")
        for line in header:
            out.append(f"- {line}")
        out.append("")
        out.append("| kernel | pass | fastnn GB/s | fastnn out= GB/s | fastnn 1 thread GB/s | NumPy best GB/s "
                   "| NumPy best out= GB/s | speedup (alloc) | speedup (out=) | best vs best |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    else:
        out.append("Activation kernels, float32, {:,} elements ({}x{})".format(d.n, *d.shape))
        out.extend("  " + h for h in header)
        out.append("")
        out.append(f"{'kernel':<14}{'pass':<5}{'fastnn':>9}{'fnn out=':>10}{'fnn 1T':>9}{'np best':>9}{'np out=':>9}"
                   f"{'x alloc':>9}{'x out=':>8}{'x best':>8}   (GB/s; speedup = NumPy time / fastnn time)")
    for r in rows:
        nb = r["bytes"]
        sa = r["na"]["median"] / r["fa"]["median"] if r["fa"] and r["na"] else None
        so = r["no"]["median"] / r["fo"]["median"] if r["fo"] and r["no"] else None
        sb = r["nbest"]["median"] / r["fbest"]["median"]
        vals = [gbps(nb, r["fa"]), gbps(nb, r["fo"]), gbps(nb, r["f1"]), gbps(nb, r["na"]), gbps(nb, r["no"])]
        if markdown:
            out.append(f"| {r['kernel']} | {r['dir']} | " + " | ".join(fmt(v) for v in vals)
                       + f" | {fmt(sa, '{:.2f}x')} | {fmt(so, '{:.2f}x')} | {fmt(sb, '{:.2f}x')} |")
        else:
            out.append(f"{r['kernel']:<14}{r['dir']:<5}" + "".join(f"{fmt(v):>9}" for v in vals[:1])
                       + f"{fmt(vals[1]):>10}" + "".join(f"{fmt(v):>9}" for v in vals[2:])
                       + f"{fmt(sa, '{:.2f}x'):>9}{fmt(so, '{:.2f}x'):>8}{fmt(sb, '{:.2f}x'):>8}")
    # copy reference and ReLU-family share of it
    notes = [
        f"Copy reference (8 B/element, the faster of np.copyto and np.negative(out=)): 1 thread "
        f"{c1:.1f} GB/s, 2 threads {c2:.1f} GB/s; x.copy() (allocating) {ca:.1f} GB/s. "
        f"Best copy: {max(c1, c2):.1f} GB/s.",
    ]
    for k in ("relu", "leaky_relu", "prelu"):
        for dr in ("fwd", "bwd"):
            r = next(r for r in rows if r["kernel"] == k and r["dir"] == dr)
            g = gbps(r["bytes"], r["fbest"])
            notes.append(f"{k} {dr} (fastest fastnn variant, {g:.1f} GB/s): {100 * g / max(c1, c2):.0f}% of "
                         f"the best copy bandwidth ({100 * g / c1:.0f}% of 1-thread, {100 * g / c2:.0f}% of "
                         f"2-thread copy).")
    out.append("")
    for n in notes:
        out.append(("- " if markdown else "") + n)
    # every formulation
    out.append("")
    if markdown:
        out.append("<details><summary>Every formulation measured (median of "
                   f"{args.rounds} interleaved rounds)</summary>")
        out.append("")
        out.append("| kernel | pass | impl | policy | formulation | ms | GB/s |")
        out.append("| --- | --- | --- | --- | --- | ---: | ---: |")
    else:
        out.append(f"Every formulation (median of {args.rounds} interleaved rounds):")
    for r in results:
        nb = copy_bytes if r["kernel"] == "copy" else d.nbytes(r["kernel"], r["dir"])
        g = nb / r["median"] / 1e9
        if markdown:
            out.append(f"| {r['kernel']} | {r['dir']} | {r['impl']} | {r['policy']} | `{r['label']}` "
                       f"| {1e3 * r['median']:.2f} | {g:.1f} |")
        else:
            out.append(f"  {r['kernel']:<14}{r['dir']:<4}{r['impl']:<7}{r['policy']:<6}"
                       f"{1e3 * r['median']:9.2f} ms {g:7.1f} GB/s  {r['label']}")
    if markdown:
        out.append("")
        out.append("</details>")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096 * 4096, help="elements per array (default 16M)")
    p.add_argument("--rounds", type=fb.positive_int, default=9,
                   help="interleaved rounds; medians are reported")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")
    p.add_argument("--max-other", type=fb.nonnegative_float, default=0.3,
                   help="re-run a round if other processes used more than this many cores (default 0.3)")
    args = p.parse_args(argv)
    if not PIECES <= args.size < 2**31:   # (several arrays of that many elements are made)
        p.error(f"--size must be from {PIECES} to 2**31 - 1, got {args.size}")

    fastnn.set_dynamic(False)   # the kernels on exactly the counts timed (no governor probes)
    load_before, started = loadavg(), now()
    d = Data(args.size)
    t0 = time.perf_counter()
    results, st = measure(d, args.rounds, max_other=args.max_other)
    elapsed = time.perf_counter() - t0
    header = header_lines([
        f"medians of {st['kept']} interleaved rounds (the least disturbed of {st['attempts']} run; rounds "
        f"during which other processes used > {st['max_other']:g} cores are re-run); measuring took "
        f"{elapsed:.0f} s",
        f"CPU used by other processes in the kept rounds: mean {st['kept_load_mean']:.2f}, "
        f"max {st['kept_load_max']:.2f} cores (load average before/after: {load_before} / {loadavg()})",
    ], started=started)
    print(report(d, results, args, header, args.markdown))


if __name__ == "__main__":
    main()
