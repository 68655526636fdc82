# The buffers of plain NumPy arrays, for the compiled fast paths of fastnn.functional and
# fastnn.optim (activations.pyx and dense.pyx forward_fast / backward_fast, losses.pyx
# class_loss_fast, optim.pyx rule_fast). Those take a call only when every array is already
# what the kernel reads, so they need each array's memory, not a typed memoryview: a fused def
# function with memoryview arguments dispatches on its arguments' types and builds a
# memoryview for each, which costs about a microsecond a call (bench/NOTES.md, forty-second
# session).
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS,
                             PyBUF_WRITABLE)

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
        raise RuntimeError("fastnn_buffers.take: too many views")
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
