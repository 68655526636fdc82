# The compiled fast paths of fastnn.functional and fastnn.optim (activations.pyx and dense.pyx
# forward_fast / backward_fast, losses.pyx class_loss_fast, optim.pyx rule_fast) and of
# train_step's shortcut (stepcall.pyx: the labels' dtype), included by those modules after
# `import numpy as np`. A fast path takes a call only when every array is
# already what the kernel reads, so it needs each array's memory, not a typed memoryview: a
# fused def function with memoryview arguments dispatches on its arguments' types and builds a
# memoryview for each, which costs about a microsecond a call (bench/NOTES.md, forty-second
# session). (An include, not a pxd, for the module variables below, as fastnn_sites.pxi.)
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS,
                             PyBUF_WRITABLE)

cdef object _ndarray = np.ndarray
cdef object _float32 = np.dtype(np.float32)
cdef object _float64 = np.dtype(np.float64)
cdef object _empty = np.empty


cdef object _float32_type = type(_float32)
cdef object _float64_type = type(_float64)
cdef object _intp_dtype = np.dtype(np.intp)
cdef object _intp_type = type(_intp_dtype)


cdef inline bint plain_intp_dtype(object dt):
    """Whether dt is intp's own dtype object, or an equal copy (pickle.loads's) of the same
    class in native byte order: class labels the kernels read as they are."""
    return dt is _intp_dtype or (type(dt) is _intp_type and dt.isnative)


cdef inline object plain_float_dtype(object a):
    """float32's or float64's own dtype object when a is a plain ndarray (no subclass) of
    native float32 or float64, else None: the first check of every fast path. Most arrays
    hold NumPy's own dtype object (an identity test); an array that pickle.loads built (as
    multiprocessing passes arrays) holds an equal copy, which counts when it is of the same
    dtype class and native byte order (another byte order, float16 or an integer dtype is
    None). The fast paths compare the returned objects by identity."""
    if type(a) is not _ndarray:
        return None
    dt = (<object>a).dtype
    if dt is _float32 or dt is _float64:
        return dt
    if type(dt) is _float32_type and dt.isnative:
        return _float32
    if type(dt) is _float64_type and dt.isnative:
        return _float64
    return None


cdef enum:
    FNN_MAX_VIEWS = 8   # the most arrays one fast path holds


cdef struct Views:
    Py_buffer view[FNN_MAX_VIEWS]
    int held


cdef inline void *take(Views *v, object a, bint writable) except? NULL:
    """The memory of ndarray `a` (C-contiguous; writeable when asked), held in v until
    release_all; NULL where NumPy refuses such a buffer (a strided or read-only array: the
    caller declines the call). The caller has checked a's type, dtype and shape."""
    if v.held >= FNN_MAX_VIEWS:
        raise RuntimeError("fastnn_fastpath.take: too many views")
    try:
        PyObject_GetBuffer(a, &v.view[v.held],
                           PyBUF_C_CONTIGUOUS | (PyBUF_WRITABLE if writable else 0))
    except (BufferError, ValueError, TypeError):
        return NULL
    v.held += 1
    return v.view[v.held - 1].buf


cdef inline void release_all(Views *v) noexcept:
    """Give back every buffer take() holds in v."""
    while v.held > 0:
        v.held -= 1
        PyBuffer_Release(&v.view[v.held])
