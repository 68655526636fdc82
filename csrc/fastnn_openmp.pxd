# The OpenMP helper every kernel module cimports. Declarations only (no runtime module);
# the header provides serial fallbacks, so kernels compile with and without OpenMP.
cdef extern from "fastnn_omp.h" nogil:
    int FNN_HAVE_OPENMP
    int fnn_omp_get_max_threads()
    void fnn_omp_set_num_threads(int n)
    int fnn_omp_get_thread_num()
    int fnn_omp_get_num_threads()   # in a parallel region: its team's size
    int fnn_omp_version()
    double fnn_wtime()     # seconds (OpenMP's wall clock; 0.0 without OpenMP)
    int fnn_turn_load(volatile int *turn)
    void fnn_wait_above(volatile int *counter, int value)
    void fnn_turn_wait(volatile int *turn, int want)
    void fnn_turn_pass(volatile int *turn, int value)
    int fnn_count_add(volatile int *counter)   # returns the count before
    void fnn_note_parallel()
    long fnn_parallel_count()
    int fnn_parallel_seen()


cdef inline int effective_threads(Py_ssize_t work, Py_ssize_t min_work_per_thread, int n_threads,
                                  Py_ssize_t blocks=0) noexcept nogil:
    """Threads worth starting for `work` units: 1 below the measured threshold, never more
    than one per `min_work_per_thread` units, never more than asked for, and (blocks > 0)
    never more than the `blocks` the work is cut into (a thread without a block only waits)."""
    cdef Py_ssize_t t
    if n_threads <= 1 or FNN_HAVE_OPENMP == 0 or work < 2 * min_work_per_thread:
        return 1
    t = work // min_work_per_thread
    if t > n_threads:
        t = n_threads
    if 0 < blocks < t:
        t = blocks
    return <int>t


# Element-wise work is split into chunks of FNN_CHUNK elements, fixed by the size only (never by
# the thread count): chunk c of n covers [c * FNN_CHUNK, c * FNN_CHUNK + chunk_len(c, n)).
cdef enum:
    FNN_CHUNK = 16384


cdef inline Py_ssize_t chunk_count(Py_ssize_t n) noexcept nogil:
    return (n + FNN_CHUNK - 1) // FNN_CHUNK


cdef inline Py_ssize_t chunk_len(Py_ssize_t c, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t m = n - c * FNN_CHUNK
    return FNN_CHUNK if m > FNN_CHUNK else m
