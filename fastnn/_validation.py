"""Argument checking shared by every public function.

The rules (documented in the README):
- float32 and float64 arrays are used as they are (a copy is made only when the array is not
  C-contiguous); float16 is computed in float32.
- bool and integer arrays, and nested lists of numbers, are converted to float64, as NumPy's
  ufuncs do for ``np.tanh`` or ``np.exp``.
- complex, object, string, datetime and other arrays raise TypeError naming the argument.
- a masked array (``numpy.ma``) with masked entries raises TypeError: the kernels would read
  the values under the mask as data.
- when operands of one call mix float32 and float64, the call computes in float64
  (NumPy's promotion rule, ``np.result_type``).
"""
import contextlib
import math
import numbers
import os
import stat
import struct
import zipfile

import numpy as np

from fastnn._kernels.losses import first_bad_class_label as _first_bad_class_label

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _describe(x):
    if isinstance(x, np.ndarray):
        return f"array of dtype {x.dtype} and shape {x.shape}"
    return f"{type(x).__name__}"


class CheckedSettings:
    """Settings that are checked whenever they are set, in the constructor or later (a
    learning-rate schedule, a hand edit): ``_CHECKS`` maps a name to ``check(value) -> value``
    (a TypeError or ValueError naming it), so a bad value raises at the assignment, before
    anything uses it; a check that needs the object is the name of its method, called as
    ``self.<name>(value)``. Reading stays a plain attribute lookup (the whole-step kernel reads
    a Dense layer's alpha on every step; a property cost 0.17 us a step at 64-64-64-10 (32)),
    and pickle and copy restore the instance dict as it was, without the checks."""

    __slots__ = ()
    _CHECKS = {}

    def __setattr__(self, name, value):
        check = self._CHECKS.get(name)
        if check is not None:
            value = getattr(self, check)(value) if type(check) is str else check(value)
        object.__setattr__(self, name, value)


def refuse_masked(x, name):
    """A TypeError naming ``name`` when ``x`` is a numpy.ma.MaskedArray with masked entries:
    converting it to an array (as every kernel does) drops the mask, so the values under it
    would be computed with as data. One with nothing masked is its data."""
    if isinstance(x, np.ma.MaskedArray) and np.ma.is_masked(x):
        raise TypeError(f"{name} is a masked array with masked entries, which fastnn would read as "
                        f"data: pass {name}.filled(value), or drop the masked rows")


def float_dtype_of(x, name):
    """The computation dtype for operand ``x`` (float32 or float64) or a TypeError."""
    if isinstance(x, np.ndarray):
        if type(x) is not np.ndarray:
            refuse_masked(x, name)
        dt = x.dtype
    elif x is None:
        raise TypeError(f"{name} must be an array of floats, got None")
    else:
        try:
            dt = np.asarray(x).dtype
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be an array of floats, got {type(x).__name__}: {exc}") from None
    if dt.kind == "f" and not dt.isnative:
        dt = dt.newbyteorder("=")  # a big-endian float64 is still a float64: convert it
    if dt in _FLOATS:
        return dt
    if dt == np.float16:
        return np.dtype(np.float32)
    if dt.kind in "biu":
        return np.dtype(np.float64)
    raise TypeError(
        f"{name} must be a float32 or float64 array (int and bool are converted), "
        f"got {_describe(x) if isinstance(x, np.ndarray) else 'dtype ' + str(dt)}"
    )


def as_float_array(x, name, dtype=None, shape=None, shape_text=None):
    """``x`` as a C-contiguous float32/float64 array (never a view the kernel could write
    into the caller's data through: kernels only read their inputs). With ``shape``, it must
    have that shape (ValueError: "{name} must have {shape_text}", by default "shape ..."),
    checked on an array before it is converted too, so that a huge broadcast view of the
    wrong shape is refused rather than copied."""
    if shape is not None:
        shape = tuple(shape)
        if isinstance(x, np.ndarray):
            _check_shape(x, name, shape, shape_text)
    if dtype is None:
        dtype = float_dtype_of(x, name)
    else:
        float_dtype_of(x, name)  # still reject complex/object/str
    try:
        # np.asarray(order="C") rather than np.ascontiguousarray: the latter turns a 0-d
        # input into shape (1,), so relu_forward(3.0) would not have the shape of its input.
        arr = np.asarray(x, dtype=dtype, order="C")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} could not be converted to a {np.dtype(dtype).name} array: {exc}") from None
    if shape is not None:
        _check_shape(arr, name, shape, shape_text)
    return arr


def _check_shape(arr, name, shape, shape_text):
    if arr.shape != shape:
        raise ValueError(f"{name} must have {shape_text or f'shape {shape}'}, got {arr.shape}")


def common_dtype(*named):
    """The float dtype shared by several operands: ``common_dtype(("dout", dout), ("x", x))``."""
    dts = [float_dtype_of(x, name) for name, x in named]
    if all(dt is dts[0] for dt in dts):
        return dts[0]  # the common case, without np.result_type's cost
    return np.result_type(*dts)


def check_ndim(arr, name, ndim):
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")


def check_same_shape(a, a_name, b, b_name):
    if a.shape != b.shape:
        raise ValueError(f"{a_name} must have the shape of {b_name} {b.shape}, got {a.shape}")


def check_int(value, name, minimum=1, below=None, allow_none=False):
    """An int argument (count, width, batch size, ...) >= minimum (and < below), returned as a
    Python int; bool is refused; None passes through with allow_none."""
    if value is None and allow_none:
        return None
    what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}{' or None' if allow_none else ''}, "
                        f"got {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value}")
    if below is not None and value >= below:
        power = below.bit_length() - 1
        limit = f"2**{power}" if below == 1 << power else str(below)
        got = str(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
        raise ValueError(f"{name} must be below {limit}, got {got}")
    return value


def too_many_entries(shape):
    """Whether an array of `shape` drawn in float64 (8 bytes an entry, as the weight
    initializers draw) would be beyond what NumPy can allocate: a ValueError for the caller to
    name its sizes, not NumPy's own error."""
    return math.prod(shape) > (2**63 - 1) // 8


def check_rows(n, name, what="row"):
    """ValueError naming `name` when a batch has no rows (n == 0): the mean loss over an empty
    batch is undefined (the losses' x, the model's X)."""
    if n == 0:
        raise ValueError(f"{name} must hold at least one {what}: the mean loss over an empty batch "
                         "is undefined")


def check_flag(value, name):
    """A switch argument as a bool: a bool (np.bool_ too) or the int 0 or 1, else a TypeError
    naming `name` (a str such as "no" would be true)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be a bool (or 0 or 1), got {type(value).__name__} {value!r}")


def check_scalar(value, name, allow_nan=False, lo=None, hi=None, lo_open=False, hi_open=False):
    """A real number argument as a float: finite (unless allow_nan), and within [lo, hi] when
    bounds are given (lo_open / hi_open exclude the bound itself)."""
    if type(value) is not float or not (allow_nan or value - value == 0.0):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
                refuse_masked(value, name)   # (a masked 0-d array: the value under the mask)
                value = value.item()
            else:
                raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
        try:
            value = float(value)
        except OverflowError:   # an int beyond float's range (10**400)
            raise ValueError(f"{name} must be finite, got an integer of "
                             f"{int(value).bit_length()} bits") from None
        if not allow_nan and not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    below = lo is not None and (value < lo or (lo_open and value == lo))
    above = hi is not None and (value > hi or (hi_open and value == hi))
    if below or above:
        if lo is not None and hi is not None:
            want = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        elif lo is not None:
            want = f"{'>' if lo_open else '>='} {lo}"
        else:
            want = f"{'<' if hi_open else '<='} {hi}"
        raise ValueError(f"{name} must be {want}, got {value}")
    return value


def out_array(out, shape, dtype, *inputs):
    """A caller-provided output buffer, checked, or a new one. ``inputs`` are the arrays the
    kernel reads, and the caller's arrays they were converted from (anything that is not an
    ndarray is skipped): the buffer may not overlap any of them."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if isinstance(out, np.matrix):   # (always 2-D: it cannot be written as a flat array)
        raise TypeError("out must be a numpy.ndarray, not an np.matrix")
    if out.dtype != dtype:
        got = out.dtype.name
        if out.dtype.newbyteorder("=") == dtype:
            got = f"{out.dtype.str} (not in the machine's byte order)"
        raise TypeError(f"out must have dtype {np.dtype(dtype).name}, got {got}")
    if out.shape != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    for arr in inputs:
        if isinstance(arr, np.ndarray) and np.may_share_memory(out, arr) and _shares(out, arr):
            raise ValueError("out must not overlap the input arrays")
    return out


_TooHardError = getattr(getattr(np, "exceptions", np), "TooHardError")


def _shares(out, arr):
    """Whether `arr` shares memory with `out` (a C-contiguous array whose bounds overlap
    arr's): certainly for a contiguous arr; for a strided one (a caller's array that was
    converted) the exact answer, a bounded search counting as yes when it gives up."""
    if arr.flags.c_contiguous or arr.flags.f_contiguous:
        return True
    try:
        return np.shares_memory(out, arr, max_work=10**5)
    except _TooHardError:
        return True


def class_labels(y, n, num_classes, name="y", rows="x"):
    """Integer class labels: 1-D, n of them (one per row of the array named `rows`), each in
    [0, num_classes). Returns an intp array."""
    if (type(y) is np.ndarray and _is_intp(y.dtype) and y.ndim == 1 and y.shape[0] == n
            and y.flags.c_contiguous):
        # already what the checks below return when its labels are in range (the common case:
        # one compiled pass over them; a bad one is named by the checks below)
        if _first_bad_class_label(y, num_classes) < 0:
            return y
    if y is None:
        raise TypeError(f"{name} must be an array of integer class labels, got None")
    refuse_masked(y, name)
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must hold integer class labels, got dtype {arr.dtype}"
            + (" (cast with y.astype(int) if the values are whole numbers)" if arr.dtype.kind == "f" else "")
        )
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with one label per row, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} must have {n} labels (one per row of {rows}), got {arr.shape[0]}")
    if n:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= num_classes:
            # (the first label out of range, by its index, as int_labels names a bad label)
            i = int(np.argmax((arr < 0) | (arr >= num_classes)))
            raise ValueError(f"{name} must hold labels in [0, {num_classes}), got {arr[i]} "
                             f"(at index {i})")
    return np.ascontiguousarray(arr, dtype=np.intp)


def beyond_intp(arr):
    """Index of the first integer label an intp cannot hold (a cast to intp would wrap it, so
    that 2**64 - 1 became -1), or -1. Only dtypes wider than intp, or unsigned ones as wide,
    are searched."""
    intp = np.dtype(np.intp)
    if arr.size == 0 or arr.dtype.kind not in "iu" or arr.dtype.itemsize < intp.itemsize or (
            arr.dtype.itemsize == intp.itemsize and arr.dtype.kind == "i"):
        return -1
    info = np.iinfo(intp)
    big = np.flatnonzero((arr > info.max) | (arr < info.min)) if arr.dtype.kind == "i" else \
        np.flatnonzero(arr > info.max)
    return int(big[0]) if big.size else -1


def _not_whole(arr):
    """Index of the first float label of the 1-D ``arr`` that is not a whole number an intp
    holds exactly (0.5, NaN, Inf, 1e300), or -1."""
    a = arr.astype(np.float64, copy=False)   # (float16's range ends below 2**52)
    with np.errstate(invalid="ignore"):
        whole = (np.trunc(a) == a) & (np.abs(a) <= 2.0**52)   # (NaN fails both, Inf the second)
    bad = np.flatnonzero(~whole)
    return int(bad[0]) if bad.size else -1


_INTP = np.dtype(np.intp)


def _is_intp(dt):
    """dt is intp's own dtype object, or an equal copy of the same class in native byte order
    (an array that pickle.loads built holds one)."""
    return dt is _INTP or (type(dt) is type(_INTP) and dt.isnative)


def int_labels(y, n, allow_bool=True, name="y", what="integer labels", allow_column=True,
               allow_float=False):
    """Integer (or bool) labels as a C-contiguous intp array of n entries, (n, 1) accepted
    with allow_column (binary labels, beside (n, 1) scores; class labels are 1-D, as
    class_labels wants them). Values an intp cannot hold are refused here (a cast would wrap
    2**64 - 1 to -1); the range a loss allows is checked by its kernel. With allow_float
    (binary labels: 0.0 / 1.0 targets, as PyTorch's BCE loss takes them and the NumPy
    reference computes with them), float labels that are whole numbers are taken too; 0.5,
    NaN or Inf is refused naming its index."""
    if (type(y) is np.ndarray and _is_intp(y.dtype) and y.ndim == 1 and y.shape[0] == n
            and y.flags.c_contiguous):
        # already what the checks below would return (a training step's fast path; the
        # compiled step call, csrc/stepcall.pyx, asks this same check before calling here)
        return y
    if y is None:
        raise TypeError(f"{name} must be an array of {what}, got None")
    refuse_masked(y, name)
    arr = np.asarray(y)
    if arr.dtype.kind not in ("iub" if allow_bool else "iu") and not (
            allow_float and arr.dtype.kind == "f"):
        raise TypeError(f"{name} must hold {what}, got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1 and allow_column:
        arr = arr[:, 0]
    if arr.ndim != 1 and not allow_column:
        raise ValueError(f"{name} must be 1-D with one label per row, got shape {arr.shape}")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.dtype.kind != "f":
        bad = beyond_intp(arr)
        if bad >= 0:   # (an integer all the same: say why it is refused)
            raise ValueError(f"{name} must hold {what}, got {arr[bad]} (at index {bad}), "
                             f"outside the range of {np.dtype(np.intp)}, which labels are held in")
    else:
        bad = _not_whole(arr)
        if bad >= 0:
            raise ValueError(f"{name} must hold {what}, got {arr[bad]} (at index {bad})")
    if arr.dtype != np.intp or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=np.intp)
    return arr


def mse_targets(t, shape, name="y"):
    """MSE targets (an array) for scores of `shape`: t itself, (N,) targets as (N, 1) for a
    single output (as the kernel takes them), else a ValueError naming `name` against the
    scores (the loss would name the scores as its own argument ``x``)."""
    if t.shape == shape:
        return t
    if len(shape) == 2 and shape[1] == 1 and t.shape == (shape[0],):
        return t.reshape(shape)
    raise ValueError(f"{name} must have the shape of the scores {shape}, got {t.shape}")


def mse_targets_as(y, shape, dtype, name="y"):
    """mse_targets of y as a float array of dtype. An array of another size than the scores
    is refused before it is converted (a broadcast view of a huge wrong shape is not copied);
    its size is compared, not its shape, so that (N,) targets are not reshaped twice."""
    if isinstance(y, np.ndarray) and y.size != math.prod(shape):
        mse_targets(y, shape, name)   # (raises)
    return mse_targets(as_float_array(y, name, dtype), shape, name)


def binary_targets(y, n, allowed, dtype, name="y"):
    """Binary labels (integer, bool, or floats that are whole numbers) with values in
    ``allowed`` ((0, 1) or (-1, 1)), as a float array of ``dtype``."""
    from fastnn._kernels import losses as _kl

    what = f"labels from {{{', '.join(map(str, sorted(allowed)))}}}"
    labels = int_labels(y, n, True, name, what, allow_float=True)
    kind = {(0, 1): _kl.LOGISTIC, (-1, 1): _kl.BINARY_HINGE}[tuple(sorted(allowed))]
    # checked and converted in one pass by the kernel (np.isin cost more than the loss itself
    # at course batch sizes)
    out = np.empty(n, dtype=dtype)
    bad = _kl.binary_targets(kind, labels, out)
    if bad >= 0:
        raise ValueError(f"{name} must hold {what}, got {labels[bad]} (at index {bad})")
    return out


def check_float_dtype(dtype, name="dtype"):
    """A dtype argument that must be float32 or float64 (as a NumPy dtype)."""
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):   # (ValueError: a malformed spec, e.g. ('f4', -1))
        raise TypeError(f"{name} must be np.float32 or np.float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{name} must be np.float32 or np.float64, got {dt}")
    return dt


def check_seed(seed, name="seed"):
    """None or a non-negative int (returned as an int)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be None or a non-negative int, got {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"{name} must be None or a non-negative int, got {seed}")
    return seed


def fs_path(path, name="path"):
    """A file path argument as a str (a bytes path decoded as the OS does); ValueError for an
    empty one (which names no file: the folder it resolves to would be reported instead)."""
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}") from None
    if not path:
        raise ValueError(f"{name} must name a file, got an empty path")
    if "\0" in path:   # (the OS's calls would refuse it without naming the argument)
        raise ValueError(f"{name} must name a file, got a path with a NUL character: {path!r}")
    return path


def open_regular(path, text=False):
    """``path`` opened for reading (binary, or UTF-8 text), or OSError when it is not a regular
    file: a FIFO would block the reader forever and a device such as /dev/zero never ends.
    (Opened without blocking, so that a FIFO is refused instead of waited on.)"""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path!r} is not a regular file")
        return os.fdopen(fd, "r", encoding="utf-8") if text else os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_npz(source, what, writer, names=None, key_ok=None):
    """The arrays (all, or `names`) of an .npz archive that fastnn's `writer` wrote, never
    unpickled; anything else is a ValueError saying that `what` is not readable. Before any
    member's data is read, the archive's directory and headers are checked, so that what is
    read is no larger than the file:

    - fastnn stores its arrays uncompressed: a compressed member (which can inflate
      ~1000-fold) is refused;
    - every member is a .npy file, each name once, and the names are the expected ones:
      exactly `names` when given, else names that `key_ok(name)` accepts (when given);
    - the members' bytes (local header and data) lie within the file and do not overlap: a
      "quoted overlap" archive, whose member i holds members i+1..N in its data, would
      otherwise be read N times over (gigabytes from a few megabytes);
    - each .npy header (format 1.0 or 2.0) describes a shape of non-negative ints (not
      bools) and a dtype that is not an object dtype, whose data fit in the member: NumPy
      allocates an array of the described shape before it reads the data."""
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(source, (str, bytes, os.PathLike)):
                # opened here, so it is closed here even when NumPy's zip parsing fails after
                # it took the file over (the error's traceback would otherwise hold it open)
                source = stack.enter_context(open_regular(source))
            loaded = np.load(source, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy file
                raise ValueError("not an .npz archive")
            with loaded as npz:
                infos = npz.zip.infolist()
                packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
                if packed:
                    raise ValueError(f"it has compressed members ({packed[0]!r}): {writer} writes them "
                                     "uncompressed")
                # each name once: NumPy reads a member again for every entry of its name, so
                # a few bytes of repeated directory entries would make reading take hours
                members = [i.filename for i in infos]
                twice = _first_repeat(members)
                if twice is not None:
                    raise ValueError(f"it has two entries named {twice!r}")
                other = [m for m in members if not m.endswith(".npy")]
                if other:   # (NpzFile would return its bytes as they are)
                    raise ValueError(f"entry {other[0]!r} is not a .npy array")
                stored = [m[:-len(".npy")] for m in members]
                if names is not None:
                    twice = _first_repeat(names)
                    if twice is not None:
                        raise ValueError(f"the array {twice!r} is asked for twice")
                    have = set(stored)
                    missing = [k for k in names if k not in have]
                    if missing:
                        raise ValueError(f"no array {missing[0]!r} in it")
                    wanted = set(names)
                    extra = [k for k in stored if k not in wanted]
                    if extra:
                        raise ValueError(f"it has arrays it should not: {name_list(extra)}")
                    keys = list(names)
                else:
                    if key_ok is not None:
                        extra = [k for k in stored if not key_ok(k)]
                        if extra:
                            raise ValueError(f"it has entries {writer} does not write: {name_list(extra)}")
                    keys = stored
                _check_layout(npz.zip, infos)
                arrays = {}
                for k in keys:
                    info = npz.zip.getinfo(k + ".npy")
                    with npz.zip.open(info) as fh:
                        _check_npy_header(fh, info.file_size, k)
                    # (the member itself, not npz[k]: NpzFile looks a key up as a member's
                    # whole name first, so npz["W.npy"] would be the member W.npy, which holds
                    # the array named W, where the array named "W.npy" is W.npy.npy)
                    with npz.zip.open(info) as fh:
                        arrays[k] = np.lib.format.read_array(fh, allow_pickle=False)
            for k, v in arrays.items():
                if not isinstance(v, np.ndarray):  # NpzFile returns a non-.npy member as raw bytes
                    raise ValueError(f"entry {k!r} is not a .npy array")
    except (ValueError, TypeError, OSError, EOFError, KeyError, zipfile.BadZipFile,
            zipfile.LargeZipFile, RuntimeError, NotImplementedError, MemoryError) as exc:
        raise ValueError(f"{what} is not readable ({type(exc).__name__}: {exc})") from None
    return arrays


def name_list(names, shown=5):
    """`names` for an error message: the first `shown` of them (repr), and how many more."""
    names = list(names)
    text = ", ".join(repr(n) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


_LOCAL_HEADER = struct.Struct("<4s22xHH")   # a zip local file header: signature .. name and extra lengths


def _check_layout(zf, infos):
    """ValueError unless every member's bytes (its local header, name, extra field and data)
    lie within the file, no two members' bytes overlap, and the members' data sizes sum to at
    most the file's size: then reading every member reads each byte of the file at most once.
    Only the 30-byte local headers are read."""
    fp = zf.fp
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    spans = []
    total = 0
    for info in infos:
        fp.seek(info.header_offset)
        head = fp.read(_LOCAL_HEADER.size)
        if len(head) != _LOCAL_HEADER.size:
            raise ValueError(f"entry {info.filename!r} starts past the end of the file")
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(head)
        if signature != b"PK\x03\x04":
            raise ValueError(f"entry {info.filename!r} has no local header at offset {info.header_offset}")
        if info.file_size != info.compress_size:
            # (a stored member's data is its file: the directory's two sizes are one; the
            # larger, unchecked, would be what the .npy header's data is measured against)
            raise ValueError(f"entry {info.filename!r} is stored with {info.compress_size} bytes "
                             f"but its directory entry claims {info.file_size}")
        end = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
        if end > size:
            raise ValueError(f"entry {info.filename!r} runs past the end of the file ({end} > {size} bytes)")
        spans.append((info.header_offset, end, info.filename))
        total += info.compress_size
    if total > size:
        raise ValueError(f"its entries hold {total} bytes of data, more than the file's {size}")
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"entries {first!r} and {second!r} overlap in the file")


def _check_npy_header(fh, size, key):
    """ValueError unless the open member `fh` (of `size` bytes) starts with a .npy header of
    format 1.0 or 2.0 whose shape is a tuple of non-negative ints (bool is refused: NumPy's own
    check lets True through, and reshaping then fails with a bare TypeError), whose dtype holds
    no Python objects, and whose data fit in the member."""
    fmt = np.lib.format
    magic = fh.read(len(fmt.MAGIC_PREFIX) + 2)
    if not magic.startswith(fmt.MAGIC_PREFIX) or len(magic) != len(fmt.MAGIC_PREFIX) + 2:
        raise ValueError(f"entry {key!r} is not a .npy array")
    version = tuple(magic[len(fmt.MAGIC_PREFIX):])
    if version == (1, 0):
        shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
    else:
        raise ValueError(f"entry {key!r} is a .npy file of format version {version}, "
                         "not 1.0 or 2.0")
    if (type(shape) is not tuple or not all(type(n) is int for n in shape)
            or any(n < 0 for n in shape)):
        raise ValueError(f"entry {key!r} has a .npy header whose shape {shape!r} is not a tuple "
                         "of non-negative ints")
    if dtype.hasobject:
        raise ValueError(f"entry {key!r} holds Python objects (dtype {dtype}), which are never "
                         "unpickled")
    need = math.prod(shape) * dtype.itemsize
    have = size - fh.tell()
    if need > have:
        raise ValueError(f"entry {key!r} describes {need} bytes of data (shape {shape}, dtype "
                         f"{dtype}) but holds {have}")


def _first_repeat(items):
    """The first item that appeared before it in `items`, or None."""
    seen = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def no_repeated_keys(pairs):
    """json.loads' object_pairs_hook: the object as a dict, or ValueError for a key given twice
    (json.loads would keep the last one silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key!r} is given twice in one object")
            seen.add(key)
    return obj


def numeric_array(value, name, kinds="biuf"):
    """value as an ndarray (converted when it is not one) of a dtype kind in `kinds` (real
    numbers: bool, int, uint, float by default), else a TypeError naming `name`."""
    refuse_masked(value, name)
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be an array of real numbers: {exc}") from None
    if value.dtype.kind not in kinds:
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    return value
