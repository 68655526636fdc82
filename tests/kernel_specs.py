"""Every compiled kernel as one uniform spec, for test_opinfo.py (a dtype x layout x size x
threads matrix) and test_properties.py (hypothesis): how to build inputs, how to run fastnn on
them, and how to compare the result with the NumPy reference (fastnn.reference).

A spec's inputs are a dict of named values (arrays, labels, scalars). ``spec.prepare(inp)`` returns
the inputs the comparison is well defined for (dense kernels: ``dout`` zeroed where the
pre-activation sits on a kink, or two maxout pieces tie, within rounding), ``spec.run(inp)`` the
fastnn results as a dict, and ``spec.check(inp, out)`` compares them with the reference.

Tolerances are those of the per-kernel test files, where they are derived:

- element-wise ReLU / Leaky ReLU / PReLU forward and dx, maxout's max, dropout: one rounding at
  most, the reference's own: exact (NaN where the reference has NaN).
- sigmoid/tanh forward: float32 within 4 ulp of the float64 function rounded to float32; float64
  within 4 ulp or 1e-15 relative of the float64 reference (test_activations.py).
- sigmoid/tanh backward: ``eps * |dout| + 2 ulp(result)`` (test_activations.py).
- PReLU dalpha: the summation bound ``(n + 1) * eps * sum|terms|`` around the float64 truth.
- dense products: ``rtol * scale`` with the magnitude bound of the product as scale, rtol 1e-5
  (float32) / 1e-12 (float64) (test_dense.py); kinks and ties masked out of dout with a margin
  of 1e-4 of the scale. Two terms the per-kernel files' data never reach, found by the
  property tests: gradual underflow (each rounding of a product, bias add or dz can lose half
  the smallest subnormal: a floor of a few subnormals per summed term), and for sigmoid/tanh
  the rounding error of z carried into dz = dout * act'(z) through act''
  (``|act''| * (K + 2) * eps * (|x| @ |w| + |b|)``, which matters when z cancels).
- losses: ``rtol * (1 + max|x|)`` for the loss (``1 + max|x - y|**2`` for MSE) and
  ``rtol * max|dx|`` for dx (test_losses.py); for softmax/logistic dx = (p - onehot) / N the
  terms are of magnitude 1 / N, which is the scale when p - 1 cancels.
- update rules: ``rtol * scale``, scale the largest term that enters the result (|w|, the
  step, mu * |v| and lr * |dw| for w; the state's decayed old value and its increment for the
  state; test_optim.py), plus for RMSProp/Adam the underflow of ``lr * dw`` divided by
  ``sqrt(state) + epsilon``.

Non-finite values: the fastnn result must be NaN exactly where the reference is NaN and carry the
same infinities; only finite entries are compared against the tolerance.
"""
import numpy as np

import fastnn.functional as F
import fastnn.optim as O
from fastnn.reference import activations as RA
from fastnn.reference import dense as RD
from fastnn.reference import dropout as RDrop
from fastnn.reference import losses as RL
from fastnn.reference import optim as RO

from conftest import ulp_distance, ulp_of as _ulp_of

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
RTOL = {F32: 1e-5, F64: 1e-12}
F32_MAXULP = 4
F64_MAXULP = 4
F64_RTOL = 1e-15
KINK_MARGIN = 1e-4
# "large": enough work for 3 threads in every kernel (the element-wise kernels, losses and update
# rules start a thread per 65,536 ReLU-element units; products need the small tiles that
# test_opinfo.py sets, as test_dense.py does, to be cut into 4 or more tiles)
LARGE_2D = (521, 509)


# ============================================================================ helpers
def f64(a):
    return np.asarray(a, dtype=np.float64)


def rows(x):
    """x as (N, D) (reshape(N, -1) is ambiguous for N = 0)."""
    x = np.asarray(x)
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))


def max0(a):
    a = np.asarray(a, dtype=np.float64)
    return float(np.max(a)) if a.size else 0.0


def _first(mask):
    return np.unravel_index(int(np.argmax(mask)), mask.shape) if mask.ndim else ()


def assert_nonfinite_match(got, ref, what):
    """NaN exactly where ``ref`` is NaN, the same infinities; returns the mask of finite refs."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    g, r = f64(got), f64(ref)
    bad = np.isnan(g) != np.isnan(r)
    if bad.any():
        i = _first(bad)
        raise AssertionError(f"{what}: NaN mismatch at {i}: got {got[i]!r}, reference {ref[i]!r}")
    inf = np.isinf(r)
    bad = inf & (g != r)
    if bad.any():
        i = _first(bad)
        raise AssertionError(f"{what}: infinity mismatch at {i}: got {got[i]!r}, reference {ref[i]!r}")
    fin = np.isfinite(r)
    bad = fin & ~np.isfinite(g)
    if bad.any():
        i = _first(bad)
        raise AssertionError(f"{what}: non-finite at {i}: got {got[i]!r}, reference {ref[i]!r}")
    return fin


def assert_within(got, ref, tol, what):
    """|got - ref| <= tol (broadcast) on finite entries, non-finite entries as the reference's."""
    fin = assert_nonfinite_match(got, ref, what)
    with np.errstate(invalid="ignore"):
        err = np.abs(f64(got) - f64(ref))
    tol = np.broadcast_to(f64(tol), err.shape)
    bad = fin & ~(err <= tol)
    if bad.any():
        i = _first(bad)
        raise AssertionError(
            f"{what}: {int(np.count_nonzero(bad))} entries out of tolerance; first at {i}: got "
            f"{np.asarray(got)[i]!r}, reference {np.asarray(ref)[i]!r}, error {err[i]:.3g} > {tol[i]:.3g}")


def assert_exact(got, ref, what):
    """Equal values (NaN where the reference has NaN; +0 and -0 count as equal)."""
    assert_within(got, ref, 0.0, what)


def assert_ulp_or_rel(got, ref, maxulp, rtol, what):
    """Within ``maxulp`` ulp or ``rtol`` relative of ``ref`` (same dtype)."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    fin = assert_nonfinite_match(got, ref, what)
    d = ulp_distance(got, ref)
    with np.errstate(invalid="ignore"):
        rel_ok = np.abs(f64(got) - f64(ref)) <= rtol * np.abs(f64(ref))
    bad = fin & (d > maxulp) & ~rel_ok
    if bad.any():
        i = _first(bad)
        raise AssertionError(f"{what}: {int(np.count_nonzero(bad))} entries more than {maxulp} ulp away; first "
                             f"at {i}: got {got[i]!r}, reference {ref[i]!r} ({int(d[i])} ulp)")


def _dtype_of(*arrays):
    return np.result_type(*[np.asarray(a).dtype for a in arrays])


def _quiet():
    return np.errstate(all="ignore")


def ulp_of(x):
    """conftest.ulp_of without the overflow warning for infinities (their spacing is NaN)."""
    with _quiet():
        return _ulp_of(x)


def finite_part(a):
    """a (as float64) with its NaN and infinities replaced by 0: magnitudes for error bounds.
    An output that comes out finite involved only finite terms (a NaN or an infinity poisons
    every sum it enters, even times 0), so bounds from the finite parts cover it."""
    a = f64(a)
    return np.where(np.isfinite(a), a, 0.0)


def _subnormal_floor(dtype, k):
    """Absolute error a sum of k products can pick up from gradual underflow."""
    return (k + 2) * float(np.finfo(dtype).smallest_subnormal)


def _kinked(rng, shape, dtype):
    """Inputs of scale 3 with every 7th element exactly at the ReLU family's kink (0)."""
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    if x.size:
        x.reshape(-1)[::7] = 0
    return x


def _zero_dout_where(inp, mask):
    """inp with dout set to 0 where mask holds (a copy; inp itself when mask is empty): those
    elements then contribute nothing to any gradient, whichever branch the kernel took."""
    if not mask.any():
        return inp
    inp = dict(inp)
    dout = np.array(inp["dout"], copy=True)
    dout[mask] = 0
    inp["dout"] = dout
    return inp


class Spec:
    """Base: name, family, the array inputs (the keys a layout is applied to)."""

    name = None
    family = None
    arrays = ()

    def prepare(self, inp):
        return inp

    def __repr__(self):
        return self.name


# ============================================================================ element-wise
class Elementwise(Spec):
    family = "elementwise"
    arrays = ("x", "dout")

    def __init__(self, kind, alpha=None):
        self.kind = kind
        self.alpha = alpha
        self.name = kind if alpha is None else f"{kind}_a{alpha}"
        self.exact = kind in ("relu", "leaky_relu")

    def _alpha(self, inp):
        return inp.get("alpha", 0.01 if self.alpha is None else self.alpha)

    def shapes(self, size):
        return {"empty": (0, 7), "one": (1, 1), "prime": (7, 13), "large": LARGE_2D}[size]

    def make(self, rng, dtype, size):
        shape = self.shapes(size)
        return {"x": _kinked(rng, shape, dtype), "dout": rng.standard_normal(shape).astype(dtype)}

    def run(self, inp):
        fwd = getattr(F, self.kind + "_forward")
        bwd = getattr(F, self.kind + "_backward")
        if self.kind == "leaky_relu":
            y, cache = fwd(inp["x"], self._alpha(inp))
        else:
            y, cache = fwd(inp["x"])
        return {"y": y, "dx": bwd(inp["dout"], cache)}

    def _ref_fwd(self, x, alpha):
        with _quiet():
            if self.kind == "leaky_relu":
                return RA.leaky_relu_forward(x, alpha)[0]
            return getattr(RA, self.kind + "_forward")(x)[0]

    def _ref_bwd(self, dout, x, y, alpha):
        with _quiet():
            if self.kind == "relu":
                return RA.relu_backward(dout, x)
            if self.kind == "leaky_relu":
                return RA.leaky_relu_backward(dout, (x, alpha))
            return getattr(RA, self.kind + "_backward")(dout, y)

    def check(self, inp, out):
        x, dout = np.asarray(inp["x"]), np.asarray(inp["dout"])
        alpha = self._alpha(inp)
        y, dx = out["y"], out["dx"]
        dt = x.dtype
        assert y.dtype == dt and y.shape == x.shape, (y.dtype, y.shape)
        assert dx.dtype == _dtype_of(dout, x) and dx.shape == x.shape, (dx.dtype, dx.shape)
        if self.exact:
            assert_exact(y, self._ref_fwd(x, alpha), f"{self.name} forward")
            assert_exact(dx, self._ref_bwd(dout, x, y, alpha), f"{self.name} backward")
            return
        truth = self._ref_fwd(f64(x), alpha).astype(dt)
        if dt == F32:
            assert_ulp_or_rel(y, truth, F32_MAXULP, 0.0, f"{self.name} forward float32")
        else:
            assert_ulp_or_rel(y, truth, F64_MAXULP, F64_RTOL, f"{self.name} forward float64")
        # backward from the same saved output y (test_activations.py)
        ref = self._ref_bwd(f64(dout), f64(x), f64(y), alpha).astype(dx.dtype)
        tol = np.finfo(dx.dtype).eps * np.abs(f64(dout)) + 2 * f64(ulp_of(ref))
        assert_within(dx, ref, tol, f"{self.name} backward")


class PReLUSpec(Spec):
    family = "prelu"
    arrays = ("x", "alpha", "dout")
    name = "prelu"

    def shapes(self, size):
        return {"empty": (0, 7), "one": (1, 1), "prime": (7, 13), "large": LARGE_2D}[size]

    def make(self, rng, dtype, size):
        shape = self.shapes(size)
        x = _kinked(rng, shape, dtype)
        return {"x": x, "alpha": rng.uniform(-0.5, 1.5, shape[-1]).astype(dtype),
                "dout": rng.standard_normal(shape).astype(dtype)}

    def run(self, inp):
        y, cache = F.prelu_forward(inp["x"], inp["alpha"])
        dx, dalpha = F.prelu_backward(inp["dout"], cache)
        return {"y": y, "dx": dx, "dalpha": dalpha}

    def check(self, inp, out):
        x, dout, alpha = np.asarray(inp["x"]), np.asarray(inp["dout"]), inp["alpha"]
        vector = isinstance(alpha, np.ndarray) and alpha.ndim > 0
        dt = _dtype_of(x, alpha) if vector else x.dtype
        assert out["y"].dtype == dt and out["y"].shape == x.shape
        with _quiet():
            ry, rcache = RA.prelu_forward(x.astype(dt), np.asarray(alpha).astype(dt) if vector else alpha)
            rdx, _ = RA.prelu_backward(dout.astype(dt), rcache)
        # (a 0-d x with a one-element alpha vector: the reference broadcasts to shape (1,))
        assert_exact(out["y"], ry.reshape(x.shape), "prelu forward")
        assert_exact(out["dx"], rdx.reshape(x.shape), "prelu dx")
        dalpha = np.asarray(out["dalpha"])
        assert dalpha.shape == np.shape(alpha) and dalpha.dtype == dt
        d = x.shape[-1] if x.ndim else 1
        with _quiet():
            terms = f64(dout) * np.where(x > 0, 0.0, f64(x))
        t2 = terms.reshape(-1, d) if terms.size else np.zeros((0, d))
        with _quiet():
            if vector:
                truth = t2.sum(axis=0)
                bound = (t2.shape[0] + 1) * np.finfo(dt).eps * np.abs(t2).sum(axis=0)
            else:
                truth = t2.sum()
                bound = (t2.size + 1) * np.finfo(dt).eps * np.abs(t2).sum()
        truth = truth.astype(dt)
        bound = bound + 2 * f64(ulp_of(truth))
        assert_within(dalpha, truth, bound, "prelu dalpha")


class MaxoutReduceSpec(Spec):
    family = "maxout_reduce"
    arrays = ("z", "dout")
    name = "maxout_reduce"

    def shapes(self, size):
        return {"empty": (0, 5, 3), "one": (1, 1, 1), "prime": (7, 11, 3), "large": (521, 101, 5)}[size]

    def make(self, rng, dtype, size):
        shape = self.shapes(size)
        return {"z": rng.standard_normal(shape).astype(dtype),
                "dout": rng.standard_normal(shape[:2]).astype(dtype)}

    def run(self, inp):
        out, cache = F.maxout_reduce_forward(inp["z"])
        return {"out": out, "dz": F.maxout_reduce_backward(inp["dout"], cache)}

    def check(self, inp, out):
        z, dout = np.asarray(inp["z"]), np.asarray(inp["dout"])
        assert out["out"].dtype == z.dtype and out["out"].shape == z.shape[:2]
        assert out["dz"].shape == z.shape
        ro, rc = RA.maxout_reduce_forward(z)
        assert_exact(out["out"], ro, "maxout_reduce forward")
        assert_exact(out["dz"], RA.maxout_reduce_backward(dout, rc), "maxout_reduce backward")


# ============================================================================ dense
class DenseSpec(Spec):
    """affine_forward/backward or one fused affine_<act>_forward/backward."""

    family = "dense"

    def __init__(self, act, alpha=None):
        self.act = act
        self.alpha = alpha  # leaky: a float; prelu: "vector" (one per unit)
        self.name = "affine" if act is None else f"affine_{act}"
        self.arrays = ("x", "w", "b", "dout") + (("alpha",) if act == "prelu" else ())

    @property
    def kinked(self):
        return self.act in ("relu", "leaky_relu", "prelu")

    def shapes(self, size):
        return {"empty": (0, 7, 5), "one": (1, 1, 1), "prime": (7, 13, 11), "large": (257, 131, 127)}[size]

    def make(self, rng, dtype, size):
        n, d, m = self.shapes(size)
        inp = {"x": rng.standard_normal((n, d)).astype(dtype),
               "w": (rng.standard_normal((d, m)) / np.sqrt(d)).astype(dtype),
               "b": (0.5 * rng.standard_normal(m)).astype(dtype),
               "dout": rng.standard_normal((n, m)).astype(dtype)}
        if self.act == "prelu":
            inp["alpha"] = rng.uniform(-0.5, 1.5, m).astype(dtype)
        elif self.act == "leaky_relu":
            inp["alpha"] = 0.2 if self.alpha is None else self.alpha
        return inp

    def _args(self, inp):
        return (inp["alpha"],) if self.act in ("leaky_relu", "prelu") else ()

    def ref_args(self, inp, dt):
        """The activation's argument for the float64 reference: the slope as the kernel uses it,
        rounded to the computation dtype (as fastnn.reference does: ``x.dtype.type(alpha)``)."""
        if self.act == "leaky_relu":
            return (float(np.asarray(inp["alpha"], dtype=dt)),)
        if self.act == "prelu":
            return (f64(np.asarray(inp["alpha"], dtype=dt)),)
        return ()

    def _base(self):
        return "affine" if self.act is None else f"affine_{self.act}"

    @staticmethod
    def pre_activation(inp):
        """x @ w + b in float64 and its magnitude bound |x| @ |w| + |b| (from the finite parts)."""
        x2 = rows(f64(inp["x"]))
        w, b = f64(inp["w"]), f64(inp["b"])
        with _quiet():
            return x2 @ w + b, np.abs(rows(finite_part(inp["x"]))) @ np.abs(finite_part(w)) + np.abs(finite_part(b))

    def prepare(self, inp):
        if not self.kinked:
            return inp
        z, zabs = self.pre_activation(inp)
        # within rounding of the kink: KINK_MARGIN of the magnitude, or gradual underflow
        dt = _dtype_of(inp["x"], inp["w"], inp["b"])
        floor = _subnormal_floor(dt, max(1, int(np.prod(np.shape(inp["x"])[1:], dtype=np.int64))))
        with _quiet():
            near = ~(np.abs(z) > KINK_MARGIN * zabs + floor)
        return _zero_dout_where(inp, near)

    def _call(self, inp):
        """(out, grads) of fastnn.functional's forward and backward."""
        out, cache = getattr(F, self._base() + "_forward")(inp["x"], inp["w"], inp["b"], *self._args(inp))
        return out, getattr(F, self._base() + "_backward")(inp["dout"], cache)

    def run(self, inp):
        out, grads = self._call(inp)
        res = {"out": out, "dx": grads[0], "dw": grads[1], "db": grads[2]}
        if self.act == "prelu":
            res["dalpha"] = grads[3]
        return res

    def slope(self, inp):
        if self.act not in ("leaky_relu", "prelu"):
            return 1.0
        return max(1.0, float(np.max(np.abs(f64(inp["alpha"])), initial=0.0)))

    def check(self, inp, out):
        x, w, b, dout = (np.asarray(inp[k]) for k in ("x", "w", "b", "dout"))
        ops = [x, w, b] + ([inp["alpha"]] if self.act == "prelu" else [])
        dt = _dtype_of(*ops)
        n, m = x.shape[0], w.shape[1]
        k = int(np.prod(x.shape[1:], dtype=np.int64))
        rtol = RTOL[dt]
        s = self.slope(inp)
        assert out["out"].dtype == dt and out["out"].shape == (n, m)
        for g, like, nm in ((out["dx"], x, "dx"), (out["dw"], w, "dw"), (out["db"], b, "db")):
            assert g.dtype == dt and g.shape == like.shape, f"{nm}: {g.dtype} {g.shape}"
        with _quiet():
            rout, rcache = getattr(RD, self._base() + "_forward")(f64(x), f64(w), f64(b), *self.ref_args(inp, dt))
            rgrads = getattr(RD, self._base() + "_backward")(f64(dout), rcache)
        _, zabs = self.pre_activation(inp)
        ad = np.abs(finite_part(dout))
        x2a = rows(np.abs(finite_part(x)))
        wa = np.abs(finite_part(w))
        # gradual underflow: each rounding of a product, of the bias add and of dz (at most two
        # per entry) can lose half the smallest subnormal, which no relative bound covers
        sub = float(np.finfo(dt).smallest_subnormal)
        floor_out = s * sub * (k + 2)
        floor_dx = sub * (m + 2 + 2 * max0(wa.sum(axis=1)))
        floor_dw = sub * (n + 2 + 2 * max0(x2a.sum(axis=0)))
        floor_db = sub * (2 * n + 2)
        scale = max(max0(zabs) * s, max0(np.abs(finite_part(rout))))
        assert_within(out["out"], rout.astype(dt), rtol * scale + floor_out, f"{self.name} forward")
        # sigmoid and tanh: dz = dout * act'(z) also carries the product's rounding error in z
        # through act'' (|tanh''| <= 0.77, |sigmoid''| <= 0.097): the worst case of a K-term sum,
        # (K + 2) * eps * (|x| @ |w| + |b|), matters when z cancels from large terms
        curv = {"tanh": 0.77, "sigmoid": 0.097}.get(self.act, 0.0)
        with _quiet():
            ex_dx = ex_dw = ex_db = 0.0
            if curv:
                dz_extra = curv * ad * (k + 2) * np.finfo(dt).eps * zabs
                ex_dx, ex_dw, ex_db = max0(dz_extra @ wa.T), max0(x2a.T @ dz_extra), max0(dz_extra.sum(axis=0))
            assert_within(out["dx"], rgrads[0].astype(dt), rtol * s * max0(ad @ wa.T) + ex_dx + floor_dx,
                          f"{self.name} dx")
            assert_within(out["dw"], rgrads[1].astype(dt), rtol * s * max0(x2a.T @ ad) + ex_dw + floor_dw,
                          f"{self.name} dw")
            assert_within(out["db"], rgrads[2].astype(dt), rtol * s * max0(ad.sum(axis=0)) + ex_db + floor_db,
                          f"{self.name} db")
            if self.act == "prelu":
                terms = (ad * zabs).sum(axis=0)
                floor_da = sub * ((k + 2) * max0(ad.sum(axis=0)) + n + 2)
                assert_within(out["dalpha"], rgrads[3].astype(dt), rtol * max0(terms) + floor_da,
                              f"{self.name} dalpha")


class MaxoutSpec(Spec):
    family = "dense"
    name = "maxout"
    arrays = ("x", "w", "b", "dout")

    def shapes(self, size):
        return {"empty": (0, 7, 5, 2), "one": (1, 1, 1, 1), "prime": (7, 13, 5, 3),
                "large": (257, 67, 61, 2)}[size]

    def make(self, rng, dtype, size):
        n, d, m, k = self.shapes(size)
        return {"x": rng.standard_normal((n, d)).astype(dtype),
                "w": (rng.standard_normal((d, m, k)) / np.sqrt(d)).astype(dtype),
                "b": (0.5 * rng.standard_normal((m, k))).astype(dtype),
                "dout": rng.standard_normal((n, m)).astype(dtype)}

    @staticmethod
    def pieces(inp):
        x2 = rows(f64(inp["x"]))
        w, b = f64(inp["w"]), f64(inp["b"])
        with _quiet():
            z = np.einsum("nd,dmk->nmk", x2, w) + b
            zabs = (np.einsum("nd,dmk->nmk", np.abs(rows(finite_part(inp["x"]))), np.abs(finite_part(w)))
                    + np.abs(finite_part(b)))
        return z, zabs

    def prepare(self, inp):
        z, zabs = self.pieces(inp)
        if z.shape[2] < 2 or z.size == 0:
            return inp
        top2 = np.sort(z, axis=2)[..., -2:]
        dt = _dtype_of(inp["x"], inp["w"], inp["b"])
        floor = 2 * _subnormal_floor(dt, max(1, int(np.prod(np.shape(inp["x"])[1:], dtype=np.int64))))
        with _quiet():
            tie = ~(top2[..., 1] - top2[..., 0] > KINK_MARGIN * zabs.max(axis=2) + floor)
        return _zero_dout_where(inp, tie)

    def run(self, inp):
        out, cache = F.maxout_forward(inp["x"], inp["w"], inp["b"])
        dx, dw, db = F.maxout_backward(inp["dout"], cache)
        return {"out": out, "dx": dx, "dw": dw, "db": db}

    def check(self, inp, out):
        x, w, b, dout = (np.asarray(inp[k]) for k in ("x", "w", "b", "dout"))
        dt = _dtype_of(x, w, b)
        n, d = rows(x).shape
        _, m, k = w.shape
        rtol = RTOL[dt]
        sub = float(np.finfo(dt).smallest_subnormal)
        assert out["out"].dtype == dt and out["out"].shape == (n, m)
        with _quiet():
            rout, rcache = RD.maxout_forward(f64(x), f64(w), f64(b))
            rdx, rdw, rdb = RD.maxout_backward(f64(dout), rcache)
        z, zabs = self.pieces(inp)
        assert_within(out["out"], rout.astype(dt),
                      rtol * max(max0(zabs), max0(np.abs(finite_part(rout)))) + sub * (d + 2), "maxout forward")
        ad = np.abs(finite_part(dout))
        x2a = rows(np.abs(finite_part(x)))
        wa = np.abs(finite_part(w)).reshape(d, m * k)
        # dz has one nonzero (= dout) per unit: bound with |dout| spread over every piece
        adz = np.repeat(ad, k, axis=1)
        assert_within(out["dx"], rdx.astype(dt), rtol * max0(adz @ wa.T) + sub * (m * k + 2), "maxout dx")
        assert_within(out["dw"], rdw.astype(dt), rtol * max0(x2a.T @ adz) + sub * (n + 2), "maxout dw")
        assert_within(out["db"], rdb.astype(dt), rtol * max0(ad.sum(axis=0)) + sub * (n + 2), "maxout db")


# ============================================================================ losses
class LossSpec(Spec):
    family = "loss"
    name = None

    def __init__(self, name, kind):
        self.name = name
        self.kind = kind  # multiclass, binary01, binarypm, regression
        self.arrays = ("x", "y")

    def shapes(self, size):
        if self.kind in ("multiclass", "regression"):
            return {"empty": (0, 5), "one": (1, 1), "prime": (7, 13), "large": (2053, 127)}[size]
        return {"empty": (0,), "one": (1,), "prime": (13,), "large": (65537,)}[size]

    def make(self, rng, dtype, size):
        shape = self.shapes(size)
        x = (2 * rng.standard_normal(shape)).astype(dtype)
        return {"x": x, "y": self.labels(rng, shape, dtype)}

    def labels(self, rng, shape, dtype):
        n = shape[0]
        if self.kind == "multiclass":
            return rng.integers(0, shape[1], n)
        if self.kind == "binary01":
            return rng.integers(0, 2, n)
        if self.kind == "binarypm":
            return rng.choice([-1, 1], n)
        return rng.standard_normal(shape).astype(dtype)

    def run(self, inp):
        loss, dx = getattr(F, self.name)(inp["x"], inp["y"])
        return {"loss": loss, "dx": dx}

    def scale(self, x, y):
        with _quiet():
            if self.kind == "regression":
                return 1.0 + max0((f64(x) - f64(y)) ** 2)
            return 1.0 + max0(np.abs(f64(x)))

    def check(self, inp, out):
        x, y = np.asarray(inp["x"]), np.asarray(inp["y"])
        dt = _dtype_of(x, y) if self.kind == "regression" else x.dtype
        loss, dx = out["loss"], out["dx"]
        assert type(loss) is float, type(loss)
        assert dx.dtype == dt and dx.shape == x.shape
        yy = f64(y) if self.kind == "regression" else y
        with _quiet():
            ref_loss, ref_dx = getattr(RL, self.name)(f64(x), yy)
        scale = self.scale(x, y)
        assert_within(np.float64(loss), np.float64(ref_loss), RTOL[dt] * scale, f"{self.name} loss")
        if self.name in ("svm_loss", "binary_svm_loss"):
            # dx is an indicator of margin > 0: decided on margins rounded in x's dtype, as the
            # reference evaluated in that dtype does (the float64 margins may differ in sign
            # within a rounding of 0)
            with _quiet():
                ref_dx = getattr(RL, self.name)(x, y)[1]
        ref_dx = ref_dx.astype(dt)
        dscale = max0(np.abs(f64(ref_dx))[np.isfinite(ref_dx)])
        if self.name in ("softmax_loss", "logistic_loss"):
            # dx = (p - onehot) / N: p and the label are terms of magnitude up to 1, and p - 1
            # cancels for a confident prediction: the rounding errors are relative to 1 / N
            dscale = max(dscale, 1.0 / x.shape[0])
        assert_within(dx, ref_dx, RTOL[dt] * dscale, f"{self.name} dx")


# ============================================================================ dropout
class DropoutSpec(Spec):
    family = "dropout"
    name = "dropout"
    arrays = ("x", "dout")

    def shapes(self, size):
        return {"empty": (0, 7), "one": (1, 1), "prime": (7, 13), "large": LARGE_2D}[size]

    def make(self, rng, dtype, size):
        shape = self.shapes(size)
        return {"x": rng.standard_normal(shape).astype(dtype), "dout": rng.standard_normal(shape).astype(dtype),
                "p": float(rng.uniform(0.2, 0.9)), "seed": int(rng.integers(0, 2**63))}

    def run(self, inp):
        out, cache = F.dropout_forward(inp["x"], {"p": inp["p"], "mode": "train", "seed": inp["seed"]})
        return {"out": out, "dx": F.dropout_backward(inp["dout"], cache)}

    def check(self, inp, out):
        x, dout = np.asarray(inp["x"]), np.asarray(inp["dout"])
        assert out["out"].dtype == x.dtype and out["out"].shape == x.shape
        with _quiet():
            ref, mask = RDrop.dropout_forward(x, inp["p"], inp["seed"])
            rdx = RDrop.dropout_backward(dout, inp["p"], mask)
        assert_exact(out["out"], ref, "dropout forward")
        assert_exact(out["dx"], rdx, "dropout backward")


# ============================================================================ update rules
_STATE = {"sgd": (), "sgd_momentum": ("velocity",), "nesterov_momentum": ("velocity",),
          "rmsprop": ("cache",), "adam": ("m", "v")}
_HYPER = {"sgd": {"learning_rate": 0.05},
          "sgd_momentum": {"learning_rate": 0.03, "momentum": 0.5},
          "nesterov_momentum": {"learning_rate": 0.03, "momentum": 0.7},
          "rmsprop": {"learning_rate": 0.02, "decay_rate": 0.9, "epsilon": 1e-6},
          "adam": {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-6, "t": 3}}


class OptimSpec(Spec):
    """One step of an update rule from a given state (every state array and hyperparameter is an
    input: ``config`` holds them). Compared with the reference evaluated in float64."""

    family = "optim"

    def __init__(self, rule):
        self.rule = rule
        self.name = rule
        self.state = _STATE[rule]
        self.arrays = ("w", "dw") + self.state

    def shapes(self, size):
        return {"empty": (0, 5), "one": (1,), "prime": (7, 13), "large": LARGE_2D}[size]

    def make(self, rng, dtype, size):
        shape = self.shapes(size)
        inp = {"w": rng.standard_normal(shape).astype(dtype), "dw": rng.standard_normal(shape).astype(dtype),
               "hyper": dict(_HYPER[self.rule])}
        for key in self.state:
            s = 0.1 * rng.standard_normal(shape)
            inp[key] = (np.abs(s) if key in ("cache", "v") else s).astype(dtype)
        return inp

    def config(self, inp):
        cfg = dict(inp["hyper"])
        for key in self.state:
            cfg[key] = inp[key]
        return cfg

    def run(self, inp):
        next_w, cfg = getattr(O, self.rule)(inp["w"], inp["dw"], self.config(inp))
        res = {"w": next_w}
        for key in self.state:
            res[key] = cfg[key]
        if self.rule == "adam":
            res["t"] = cfg["t"]
        return res

    def check(self, inp, out):
        w, dw = np.asarray(inp["w"]), np.asarray(inp["dw"])
        dt = w.dtype if w.dtype in (F32, F64) else F64
        rtol = RTOL[dt]
        cfg = {k: (f64(v) if isinstance(v, np.ndarray) else v) for k, v in self.config(inp).items()}
        with _quiet():
            rw, rcfg = getattr(RO, self.rule)(f64(w), f64(dw), cfg)
        h = inp["hyper"]
        g = np.abs(finite_part(dw))
        assert out["w"].dtype == dt and out["w"].shape == w.shape
        sub = float(np.finfo(dt).smallest_subnormal)
        with _quiet():
            step = np.abs(finite_part(rw) - finite_part(w))
            floor = 2 * f64(ulp_of(rw.astype(dt)))
            if self.rule in ("rmsprop", "adam"):
                # lr * dw (or m) rounded to the dtype can lose up to a subnormal spacing, and the
                # update divides it by sqrt(state) + epsilon, which may be tiny
                if self.rule == "rmsprop":
                    denom = np.sqrt(finite_part(rcfg["cache"])) + h["epsilon"]
                    amp = 1.0
                else:
                    c1 = 1 - h["beta1"] ** rcfg["t"]
                    denom = np.sqrt(finite_part(rcfg["v"]) / (1 - h["beta2"] ** rcfg["t"])) + h["epsilon"]
                    amp = max(1.0, h["learning_rate"] / c1)
                floor = floor + 4 * sub * amp * (1 + 1 / denom)
            # the magnitudes of the terms each result is summed from (a result that cancels
            # carries the rounding errors of its terms, test_optim.py)
            lr = h["learning_rate"]
            terms = [np.abs(finite_part(w)), step, np.abs(finite_part(rw))]
            if self.rule in ("sgd_momentum", "nesterov_momentum"):
                mu = h["momentum"]
                mv = mu * np.abs(finite_part(inp["velocity"]))
                terms += [mv, lr * g]
                if self.rule == "nesterov_momentum":
                    terms.append((1 + mu) * (mv + lr * g))
            scale = np.maximum.reduce(terms)
            assert_within(out["w"], rw.astype(dt), rtol * scale + floor, f"{self.rule} w")
            for key in self.state:
                old = np.abs(finite_part(inp[key]))
                if key == "velocity":
                    old, inc = h["momentum"] * old, lr * g
                elif key == "m":
                    old, inc = h["beta1"] * old, (1 - h["beta1"]) * g
                elif key == "cache":
                    old, inc = h["decay_rate"] * old, (1 - h["decay_rate"]) * g * g
                else:
                    old, inc = h["beta2"] * old, (1 - h["beta2"]) * g * g
                ref = rcfg[key]
                scale = np.maximum(np.maximum(old, inc), np.abs(finite_part(ref)))
                got = out[key]
                assert got.dtype == dt and got.shape == w.shape
                assert_within(got, ref.astype(dt), rtol * scale + 2 * f64(ulp_of(ref.astype(dt))),
                              f"{self.rule} {key}")
        if self.rule == "adam":
            assert out["t"] == rcfg["t"] == h.get("t", 0) + 1


# ============================================================================ the table
ELEMENTWISE = [Elementwise("relu"), Elementwise("leaky_relu", 0.2), Elementwise("sigmoid"), Elementwise("tanh")]
def layer_api_dense(act, x, w, b, alpha=None):
    """One fused dense layer the way the layer API runs it (fastnn.layers.Dense): a small layer
    in row chunks. act: None or an activation name; alpha: leaky relu's slope (a float) or
    prelu's slopes. Returns (out, cache) and the backward, a function of dout."""
    from fastnn._kernels import activations as _ka
    from fastnn.functional import dense as _fd

    op = getattr(_ka, (act or "identity").upper())
    if act == "prelu":
        out, cache = _fd._forward(op, x, w, b, prelu_alpha=alpha, chunks=True)
    else:
        out, cache = _fd._forward(op, x, w, b, float(alpha) if act == "leaky_relu" else 0.0, chunks=True)
    assert cache.chunks
    name = "affine" if act is None else f"affine_{act}"
    return (out, cache), lambda dout: _fd._backward(op, dout, cache, name)


class ChunkedDenseSpec(DenseSpec):
    """A DenseSpec run the way the layer API runs a small layer: in row chunks (each chunk's
    rows on their own, the weight and bias gradients summed over the chunks in chunk order).
    The chunk settings are lowered while it runs (chunks of 8+ rows from 8 rows up), so that
    property-test batches of a few dozen rows are cut."""

    n_max = 40

    def __init__(self, act, alpha=None):
        super().__init__(act, alpha)
        self.name = "chunked_" + self.name

    def _call(self, inp):
        from fastnn._kernels import dense as _kd

        saved = _kd.tile_params()
        _kd.set_tile_params(chunk_min_rows=4, chunk_rows_more=8)
        try:
            (out, _), backward = layer_api_dense(self.act, inp["x"], inp["w"], inp["b"], inp.get("alpha"))
            return out, backward(inp["dout"])
        finally:
            _kd.set_tile_params(**saved)


DENSE = [DenseSpec(None), DenseSpec("relu"), DenseSpec("leaky_relu", 0.2), DenseSpec("sigmoid"),
         DenseSpec("tanh"), DenseSpec("prelu", "vector"), MaxoutSpec()]
LOSSES = [LossSpec("softmax_loss", "multiclass"), LossSpec("svm_loss", "multiclass"),
          LossSpec("logistic_loss", "binary01"), LossSpec("binary_svm_loss", "binarypm"),
          LossSpec("mse_loss", "regression")]
OPTIM = [OptimSpec(r) for r in ("sgd", "sgd_momentum", "nesterov_momentum", "rmsprop", "adam")]
CHUNKED_DENSE = [ChunkedDenseSpec(None), ChunkedDenseSpec("relu"), ChunkedDenseSpec("leaky_relu", 0.2),
                 ChunkedDenseSpec("sigmoid"), ChunkedDenseSpec("tanh"), ChunkedDenseSpec("prelu", "vector")]
SPECS = ELEMENTWISE + [PReLUSpec(), MaxoutReduceSpec()] + DENSE + LOSSES + [DropoutSpec()] + OPTIM
BY_NAME = {s.name: s for s in SPECS}
assert len(BY_NAME) == len(SPECS)


# ============================================================================ layouts
LAYOUTS = ("C", "F", "strided", "negstride", "readonly")


def with_layout(a, layout):
    """An array with the values of ``a`` laid out in memory as ``layout`` says: "C" (a fresh
    C-contiguous copy), "F" (Fortran order), "strided" (every other element of a buffer twice as
    long in the last axis), "negstride" (negative strides on every axis), "readonly" (a C copy
    that cannot be written), "bigendian" (a byte-swapped copy)."""
    a = np.asarray(a)
    if layout == "C":
        return a.copy()
    if layout == "F":
        return np.array(a, order="F", copy=True)  # asfortranarray would not copy a 1-D array
    if layout == "strided":
        if a.ndim == 0:
            return a.copy()
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "negstride":
        return np.flip(np.flip(a).copy())
    if layout == "readonly":
        r = a.copy()
        r.flags.writeable = False
        return r
    if layout == "bigendian":
        return a.astype(a.dtype.newbyteorder(">"))
    raise AssertionError(layout)


def apply_layout(spec, inp, layout):
    out = dict(inp)
    for k in spec.arrays:
        if k in out and isinstance(out[k], np.ndarray):
            out[k] = with_layout(out[k], layout)
    return out


def fresh(inp):
    """A deep-enough copy of the inputs (update rules write w and their state in place)."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else dict(v) if isinstance(v, dict) else v)
            for k, v in inp.items()}
