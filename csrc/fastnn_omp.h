/* fastnn: the one place that touches the OpenMP runtime.
 * Compiles with and without OpenMP; without it every query answers "one thread". */
#ifndef FASTNN_OMP_H
#define FASTNN_OMP_H

#ifdef _OPENMP
#include <omp.h>
#define FNN_HAVE_OPENMP 1
static inline int fnn_omp_get_max_threads(void) { return omp_get_max_threads(); }
static inline void fnn_omp_set_num_threads(int n) { omp_set_num_threads(n); }
static inline int fnn_omp_get_thread_num(void) { return omp_get_thread_num(); }
static inline int fnn_omp_version(void) { return _OPENMP; }
#else
#define FNN_HAVE_OPENMP 0
static inline int fnn_omp_get_max_threads(void) { return 1; }
static inline void fnn_omp_set_num_threads(int n) { (void)n; }
static inline int fnn_omp_get_thread_num(void) { return 0; }
static inline int fnn_omp_version(void) { return 0; }
#endif

#endif /* FASTNN_OMP_H */
