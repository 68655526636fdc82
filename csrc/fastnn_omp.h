/* fastnn: the one place that touches the OpenMP runtime.
 * Compiles with and without OpenMP; without it every query answers "one thread". */
#ifndef FASTNN_OMP_H
#define FASTNN_OMP_H

#if defined(_MSC_VER)
#include <intrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#define FNN_HAVE_OPENMP 1
static inline int fnn_omp_get_max_threads(void) { return omp_get_max_threads(); }
static inline void fnn_omp_set_num_threads(int n) { omp_set_num_threads(n); }
static inline int fnn_omp_get_thread_num(void) { return omp_get_thread_num(); }
static inline int fnn_omp_get_num_threads(void) { return omp_get_num_threads(); }
static inline int fnn_omp_version(void) { return _OPENMP; }
static inline double fnn_wtime(void) { return omp_get_wtime(); }
#else
#define FNN_HAVE_OPENMP 0
static inline int fnn_omp_get_max_threads(void) { return 1; }
static inline void fnn_omp_set_num_threads(int n) { (void)n; }
static inline int fnn_omp_get_thread_num(void) { return 0; }
static inline int fnn_omp_get_num_threads(void) { return 1; }
static inline int fnn_omp_version(void) { return 0; }
static inline double fnn_wtime(void) { return 0.0; }   /* (one thread: nothing to time) */
#endif

/* fnn_note_parallel runs just before each parallel region of more than one thread. It sets
 * the flag fnn_parallel_seen reads (fork safety: once such a region has run, GCC's OpenMP
 * runtime has worker threads, which a fork() child lacks, so fastnn keeps a forked child on one
 * thread; fastnn/_threads.py) and counts the regions for the call governor
 * (fastnn_governor.pxd's gov_begin / gov_end: a call given several threads that starts none
 * is not timed). One flag and count per extension module (static); Python asks each one.
 * Relaxed atomic increments: kernels called from several Python threads at once (the GIL
 * released) may start regions at the same time. (The count may wrap; only its changes are
 * read.) */
static int fnn_parallel_flag = 0;
#if defined(_MSC_VER)
static volatile long fnn_parallel_regions = 0;
static inline long fnn_parallel_count(void)
{ return _InterlockedCompareExchange(&fnn_parallel_regions, 0, 0); }
static inline void fnn_note_parallel(void)
{ fnn_parallel_flag = 1; _InterlockedIncrement(&fnn_parallel_regions); }
#else
static long fnn_parallel_regions = 0;
static inline long fnn_parallel_count(void)
{ return __atomic_load_n(&fnn_parallel_regions, __ATOMIC_RELAXED); }
static inline void fnn_note_parallel(void)
{ fnn_parallel_flag = 1; __atomic_fetch_add(&fnn_parallel_regions, 1, __ATOMIC_RELAXED); }
#endif
static inline int fnn_parallel_seen(void) { return fnn_parallel_flag; }

/* Turns between threads (the step kernel's row chunks add their weight-gradient products into
 * one buffer in chunk order): fnn_turn_wait spins until *turn == want, then sees every write
 * made before the fnn_turn_pass(turn, want) that set it (acquire / release; MSVC: interlocked
 * operations, full barriers on x64 and ARM64 alike). After a few thousand spins it yields the
 * CPU, for a machine whose other core is busy or a thread count above the core count. */
#if defined(_MSC_VER)
static inline int fnn_turn_load(volatile int *p)
{ return (int)_InterlockedCompareExchange((volatile long *)p, 0, 0); }
static inline void fnn_turn_pass(volatile int *p, int v)
{ _InterlockedExchange((volatile long *)p, (long)v); }
#else
static inline int fnn_turn_load(volatile int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fnn_turn_pass(volatile int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
#endif
#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
#include <immintrin.h>
#define FNN_SPIN_PAUSE() _mm_pause()
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define FNN_SPIN_PAUSE() __asm__ __volatile__("yield")
#else
#define FNN_SPIN_PAUSE() ((void)0)
#endif
#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#define FNN_SPIN_YIELD() SwitchToThread()
#else
#include <sched.h>
#define FNN_SPIN_YIELD() sched_yield()
#endif
/* fnn_count_add adds 1 to a counter shared by threads and returns the value before: what the
 * step kernel's threads use to count the chunks done with a layer and to take parameters to
 * update, one each (acquire and release: a thread that sees the count sees every write made
 * before each increment it counts). */
#if defined(_MSC_VER)
static inline int fnn_count_add(volatile int *p)
{ return (int)_InterlockedExchangeAdd((volatile long *)p, 1); }
#else
static inline int fnn_count_add(volatile int *p)
{ return __atomic_fetch_add(p, 1, __ATOMIC_ACQ_REL); }
#endif
/* one step of a spin-wait: a pause for the first few thousand, then yield the CPU */
static inline void fnn_spin(int *spins)
{
    if (*spins < 4096) { (*spins)++; FNN_SPIN_PAUSE(); }
    else FNN_SPIN_YIELD();
}
static inline void fnn_turn_wait(volatile int *p, int want)
{
    int spins = 0;
    while (fnn_turn_load(p) != want)
        fnn_spin(&spins);
}

/* fnn_wait_above spins, as fnn_turn_wait does, until *p > v. */
static inline void fnn_wait_above(volatile int *p, int v)
{
    int spins = 0;
    while (fnn_turn_load(p) <= v)
        fnn_spin(&spins);
}

#endif /* FASTNN_OMP_H */
