/* fastnn: a panel of a matrix copied transposed, for the dx products (dx_gemm in
 * fastnn_dense.pxd), which run untransposed on a copy of the weights' rows.
 *
 * dst[m * ldd + j] = src[j * lds + m] for j < rows, m < cols. A plain loop moves one element a
 * cycle or slower (each store, or each load, to another line); GCC does not vectorize it. On
 * x86-64 Linux with AVX (checked at run time: a portable wheel runs the plain loop where it is
 * missing) whole 8 x 8 (float) or 4 x 4 (double) blocks go through registers: a 64 x 64 float
 * panel in 0.27 us instead of 0.9-1.8 us (measured on the Xeon kind, bench/NOTES.md). A copy,
 * so the result is the same bits either way.
 */
#ifndef FASTNN_TRANSPOSE_H
#define FASTNN_TRANSPOSE_H

#include <stddef.h>

/* (where fastnn_simd.h dispatches at run time too: GCC on x86-64 Linux; clang, MSVC and other
 * CPUs get the plain loops) */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(FASTNN_NO_CLONES)
#  include <immintrin.h>
#  define FNN_TR_AVX 1
#else
#  define FNN_TR_AVX 0
#endif

#define FNN_TR_PLAIN(src, rows, cols, lds, dst, ldd, j0, m0)                                \
    for (ptrdiff_t j_ = (j0); j_ < (rows); j_++)                                            \
        for (ptrdiff_t m_ = (m0); m_ < (cols); m_++)                                        \
            (dst)[m_ * (ldd) + j_] = (src)[j_ * (lds) + m_];

#if FNN_TR_AVX
/* 8 x 8 floats at src (rows lds apart) into dst (rows ldd apart), transposed */
__attribute__((target("avx"))) static inline void fnn_t8_f32(const float *src, ptrdiff_t lds,
                                                              float *dst, ptrdiff_t ldd)
{
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + lds);
    __m256 r2 = _mm256_loadu_ps(src + 2 * lds), r3 = _mm256_loadu_ps(src + 3 * lds);
    __m256 r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds);
    __m256 r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(dst + ldd, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(s3, s7, 0x31));
}

/* 4 x 4 doubles likewise */
__attribute__((target("avx"))) static inline void fnn_t4_f64(const double *src, ptrdiff_t lds,
                                                              double *dst, ptrdiff_t ldd)
{
    __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + lds);
    __m256d r2 = _mm256_loadu_pd(src + 2 * lds), r3 = _mm256_loadu_pd(src + 3 * lds);
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(dst + ldd, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(dst + 2 * ldd, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(dst + 3 * ldd, _mm256_permute2f128_pd(t1, t3, 0x31));
}

/* The whole rows x cols copy: B x B blocks through `BLOCK`, the columns and rows left over
 * (fewer than B) by the plain loops. */
#define FNN_DEFINE_TRANSPOSE_AVX(T, SFX, B, BLOCK)                                          \
__attribute__((target("avx"))) static void fnn_transpose_avx_##SFX(                        \
    const T *src, ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t lds, T *dst, ptrdiff_t ldd)    \
{                                                                                           \
    ptrdiff_t j0 = 0, m0;                                                                   \
    for (; j0 + (B) <= rows; j0 += (B)) {                                                   \
        for (m0 = 0; m0 + (B) <= cols; m0 += (B))                                           \
            BLOCK(src + j0 * lds + m0, lds, dst + m0 * ldd + j0, ldd);                      \
        FNN_TR_PLAIN(src, j0 + (B), cols, lds, dst, ldd, j0, m0)                            \
    }                                                                                       \
    FNN_TR_PLAIN(src, rows, cols, lds, dst, ldd, j0, 0)                                     \
}
FNN_DEFINE_TRANSPOSE_AVX(float, f32, 8, fnn_t8_f32)
FNN_DEFINE_TRANSPOSE_AVX(double, f64, 4, fnn_t4_f64)
#endif

/* Whether the copies below go through AVX registers here (else they are plain loops, and
 * dx_gemm takes them for fewer layers: fastnn_dense.pxd). */
static inline int fnn_transpose_fast(void)
{
#if FNN_TR_AVX
    return __builtin_cpu_supports("avx") ? 1 : 0;
#else
    return 0;
#endif
}

#if FNN_TR_AVX
#  define FNN_TR_TRY_AVX(SFX)                                                               \
    if (fnn_transpose_fast()) {                                                             \
        fnn_transpose_avx_##SFX(src, rows, cols, lds, dst, ldd);                            \
        return;                                                                             \
    }
#else
#  define FNN_TR_TRY_AVX(SFX)
#endif

/* dst[m * ldd + j] = src[j * lds + m] for j < rows, m < cols (see the top of this file) */
#define FNN_DEFINE_TRANSPOSE(T, SFX)                                                        \
static inline void fnn_transpose_##SFX(const T *src, ptrdiff_t rows, ptrdiff_t cols,       \
                                       ptrdiff_t lds, T *dst, ptrdiff_t ldd)                \
{                                                                                           \
    FNN_TR_TRY_AVX(SFX)                                                                     \
    FNN_TR_PLAIN(src, rows, cols, lds, dst, ldd, 0, 0)                                      \
}
FNN_DEFINE_TRANSPOSE(float, f32)
FNN_DEFINE_TRANSPOSE(double, f64)

#endif /* FASTNN_TRANSPOSE_H */
