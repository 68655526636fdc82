/* fastnn: vectorizable element-wise math.
 *
 * A loop that calls scalar libm expf/tanhf per element runs ~25x slower than NumPy's own
 * SIMD code (shared/PERFORMANCE.md). The activations here are instead written with basic
 * IEEE operations only (add, mul, div, compare-select, integer bit tricks), which GCC and
 * clang auto-vectorize. Each span function is compiled for several x86-64 levels
 * (baseline SSE2, x86-64-v3 = AVX2+FMA, x86-64-v4 = AVX-512) and the best one is picked at
 * load time (GCC target_clones), so a portable wheel still uses AVX-512 where it exists.
 *
 * Semantics kept: NaN propagates, +-Inf saturate correctly, subnormal results are produced
 * (not flushed). No -ffast-math is needed or used.
 *
 * Accuracy (tests/test_activations.py measures it):
 *   exp on (-inf, 0]: Cody-Waite reduction to |r| <= ln2/2, Taylor expm1(r) to r^7 (float)
 *   or r^13 (double); sigmoid and tanh are built on it. float32 within a few ulp of a
 *   correctly rounded result, float64 within ~1e-15 relative.
 *
 * Every span function takes contiguous, non-overlapping arrays (restrict).
 */
#ifndef FASTNN_SIMD_H
#define FASTNN_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(FASTNN_NO_CLONES) && (__GNUC__ >= 9)
#  define FNN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#  define FNN_SIMD_DISPATCH 1
#else
#  define FNN_CLONES
#  define FNN_SIMD_DISPATCH 0
#endif

#if defined(_MSC_VER)
#  define FNN_RESTRICT __restrict
#else
#  define FNN_RESTRICT __restrict__
#endif

/* A helper inlined into each caller, whatever the compiler's own estimate (the loss's row
 * loops, made once per fixed row length). */
#if defined(_MSC_VER)
#  define FNN_ALWAYS_INLINE static __forceinline
#elif defined(__GNUC__)
#  define FNN_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#  define FNN_ALWAYS_INLINE static inline
#endif

/* No multiply-add fused into one rounding (GCC's -ffp-contract=fast, its default, fuses them
 * where it sees fit, and what it sees differs between the vectorized loop and a scalar branch
 * of the same function: the noise of one element came out an ulp apart in float64 depending
 * on where its span started). For the functions whose every element must be the same bits
 * however the array is cut. Clang fuses only within one expression (the same everywhere);
 * MSVC does not fuse by default. */
#if defined(__GNUC__) && !defined(__clang__)
#  define FNN_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#  define FNN_NO_CONTRACT
#endif

/* Name of the SIMD path the dispatcher picks on this CPU (mirrors target_clones order). */
static inline const char *fnn_simd_path(void)
{
#if FNN_SIMD_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
    if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2+FMA)";
    return "x86-64 baseline (SSE2)";
#elif defined(__AVX512F__)
    return "compile-time AVX-512";
#elif defined(__AVX2__)
    return "compile-time AVX2";
#elif defined(__aarch64__)
    return "aarch64 NEON (compile-time)";
#else
    return "compiler auto-vectorization (compile-time baseline)";
#endif
}

/* ---------------------------------------------------------------- bit helpers */
static inline float fnn_bits_to_f32(int32_t i) { float f; memcpy(&f, &i, sizeof f); return f; }
static inline int32_t fnn_f32_to_bits(float f) { int32_t i; memcpy(&i, &f, sizeof i); return i; }
static inline double fnn_bits_to_f64(int64_t i) { double f; memcpy(&f, &i, sizeof f); return f; }
/* One read of a label (an index the caller checked before, in memory another thread may write
 * or an output may alias): volatile, so that the compiler keeps the value it checks at its use
 * and never reads the label again in between. */
static inline ptrdiff_t fnn_load_label(const ptrdiff_t *p) { return *(const volatile ptrdiff_t *)p; }
static inline int64_t fnn_f64_to_bits(double f) { int64_t i; memcpy(&i, &f, sizeof i); return i; }

/* Rounding by adding 1.5 * 2^(mantissa bits): the integer lands in the low mantissa bits. */
#define FNN_MAGIC_F32 12582912.0f            /* 1.5 * 2^23 */
#define FNN_MAGIC_F64 6755399441055744.0     /* 1.5 * 2^52 */

/* 2^k for an integral-valued kf in [-126, 127] (float) / [-1022, 1023] (double). */
static inline float fnn_pow2_f32(float kf)
{
    int32_t k = fnn_f32_to_bits(kf + FNN_MAGIC_F32) - fnn_f32_to_bits(FNN_MAGIC_F32);
    return fnn_bits_to_f32((k + 127) << 23);
}
static inline double fnn_pow2_f64(double kf)
{
    int64_t k = fnn_f64_to_bits(kf + FNN_MAGIC_F64) - fnn_f64_to_bits(FNN_MAGIC_F64);
    return fnn_bits_to_f64((k + 1023) * (int64_t)4503599627370496LL); /* << 52 */
}

/* expm1(r) for |r| <= ln2/2 by its Taylor series, written as r + r^2 * p(r). */
static inline float fnn_expm1_reduced_f32(float r)
{
    float p = 1.98412698e-4f;               /* 1/5040 */
    p = p * r + 1.38888889e-3f;             /* 1/720 */
    p = p * r + 8.33333333e-3f;             /* 1/120 */
    p = p * r + 4.16666667e-2f;             /* 1/24 */
    p = p * r + 1.66666667e-1f;             /* 1/6 */
    p = p * r + 0.5f;
    return r + (r * r) * p;
}
static inline double fnn_expm1_reduced_f64(double r)
{
    double p = 1.6059043836821613e-10;      /* 1/13! */
    p = p * r + 2.08767569878681e-09;       /* 1/12! */
    p = p * r + 2.505210838544172e-08;      /* 1/11! */
    p = p * r + 2.755731922398589e-07;      /* 1/10! */
    p = p * r + 2.7557319223985893e-06;     /* 1/9! */
    p = p * r + 2.48015873015873e-05;       /* 1/8! */
    p = p * r + 1.984126984126984e-04;      /* 1/7! */
    p = p * r + 1.388888888888889e-03;      /* 1/6! */
    p = p * r + 8.333333333333333e-03;      /* 1/5! */
    p = p * r + 4.166666666666666e-02;      /* 1/4! */
    p = p * r + 1.666666666666667e-01;      /* 1/3! */
    p = p * r + 0.5;
    return r + (r * r) * p;
}

/* exp(x) for x <= 0 (NaN propagates, -inf -> 0, subnormal results kept).
 * 2^k is applied in two halves so that k down to -150 / -1077 needs no special case. */
static inline float fnn_exp_nonpos_f32(float x)
{
    const float lo = -104.0f;                       /* exp(lo) rounds to 0 */
    float xc = (x >= lo) ? x : lo;                  /* NaN -> lo, restored below */
    float kf = (xc * 1.44269504088896341f + FNN_MAGIC_F32) - FNN_MAGIC_F32;
    float r = xc - kf * 0.693145751953125f;         /* ln2, high part (exact product) */
    r = r - kf * 1.428606765330187e-06f;            /* ln2, low part */
    float q = fnn_expm1_reduced_f32(r);
    float k1 = (kf * 0.5f + FNN_MAGIC_F32) - FNN_MAGIC_F32;
    float y = ((1.0f + q) * fnn_pow2_f32(k1)) * fnn_pow2_f32(kf - k1);
    return (x == x) ? y : x;
}
static inline double fnn_exp_nonpos_f64(double x)
{
    const double lo = -746.0;
    double xc = (x >= lo) ? x : lo;
    double kf = (xc * 1.4426950408889634 + FNN_MAGIC_F64) - FNN_MAGIC_F64;
    double r = xc - kf * 6.93147180369123816490e-01;
    r = r - kf * 1.90821492927058770002e-10;
    double q = fnn_expm1_reduced_f64(r);
    double k1 = (kf * 0.5 + FNN_MAGIC_F64) - FNN_MAGIC_F64;
    double y = ((1.0 + q) * fnn_pow2_f64(k1)) * fnn_pow2_f64(kf - k1);
    return (x == x) ? y : x;
}

/* expm1(x) for x <= 0: accurate near 0 (no 1 - 1 cancellation). */
static inline float fnn_expm1_nonpos_f32(float x)
{
    const float lo = -30.0f;                        /* expm1(lo) rounds to -1 */
    float xc = (x >= lo) ? x : lo;
    float kf = (xc * 1.44269504088896341f + FNN_MAGIC_F32) - FNN_MAGIC_F32;
    float r = xc - kf * 0.693145751953125f;
    r = r - kf * 1.428606765330187e-06f;
    float q = fnn_expm1_reduced_f32(r);
    float s = fnn_pow2_f32(kf);                     /* k = 0 gives exactly q */
    float y = s * q + (s - 1.0f);
    return (x == x) ? y : x;
}
static inline double fnn_expm1_nonpos_f64(double x)
{
    const double lo = -80.0;
    double xc = (x >= lo) ? x : lo;
    double kf = (xc * 1.4426950408889634 + FNN_MAGIC_F64) - FNN_MAGIC_F64;
    double r = xc - kf * 6.93147180369123816490e-01;
    r = r - kf * 1.90821492927058770002e-10;
    double q = fnn_expm1_reduced_f64(r);
    double s = fnn_pow2_f64(kf);
    double y = s * q + (s - 1.0);
    return (x == x) ? y : x;
}

/* log(x) for a positive normal x, written with basic operations so that a loop over many x
 * vectorizes (the softmax loss takes one per row: libm's log, a call, cost ~5 ns a row, most
 * of a 3-class row's loss). +Inf and NaN give x. Not for zero, negative or subnormal x (the
 * loss's row sums are at least 1).
 * x = 2^k m with m in [sqrt(2)/2, sqrt(2)): adding 0x95f62 to the high word carries a
 * mantissa at or above sqrt(2)'s into the exponent, and the mantissa is then rebased on
 * sqrt(2)/2's exponent. log(m) = log1p(f), f = m - 1, through s = f / (2 + f), where
 * log1p(f) = f - f^2/2 + s (f^2/2 + R(s^2)), R the degree-7 minimax polynomial of the classic
 * fdlibm log (its coefficients Lg1..Lg7), and k ln2 is added in two parts (ln2_hi exact in
 * k * ln2_hi). k becomes a double through the bits of 2^52 + k, with no integer conversion
 * (none for 64-bit lanes below AVX-512). Against glibc's log on 4.2 million x in [1, 10],
 * [1, 1 + 1e-6] and [1, e^700]: at most 1 ulp apart, 4% of them by 1 ulp. */
FNN_ALWAYS_INLINE double fnn_log_pos_f64(double x)
{
    uint64_t u, mb, kb;
    double m, f, s, z, w, t1, t2, hf, k, r;
    memcpy(&u, &x, sizeof u);
    u += 0x00095f6200000000ull;
    kb = (u >> 52) | 0x4330000000000000ull;       /* the bits of 2^52 + (k + 1023) */
    memcpy(&k, &kb, sizeof k);
    k -= 4503599627370496.0 + 1023.0;
    mb = (u & 0x000fffffffffffffull) + 0x3fe6a09e00000000ull;
    memcpy(&m, &mb, sizeof m);
    f = m - 1.0;
    hf = 0.5 * f * f;
    s = f / (2.0 + f);
    z = s * s;
    w = z * z;
    t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01
                                              + w * 1.531383769920937332e-01));
    t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01
                                              + w * (1.818357216161805012e-01
                                                     + w * 1.479819860511658591e-01)));
    r = k * 6.93147180369123816490e-01
        - ((hf - (s * (hf + t1 + t2) + k * 1.90821492927058770002e-10)) - f);
    return (x <= 1.7976931348623157e308) ? r : x;
}

/* ---------------------------------------------------------------- activations */
/* sigmoid(x) = 1 / (1 + e^-x), evaluated through e = exp(-|x|) so it never overflows
 * and stays accurate (relative) in both tails. */
static inline float fnn_sigmoid1_f32(float x)
{
    float e = fnn_exp_nonpos_f32(-fabsf(x));
    float d = 1.0f / (1.0f + e);
    return (x >= 0.0f) ? d : e * d;
}
static inline double fnn_sigmoid1_f64(double x)
{
    double e = fnn_exp_nonpos_f64(-fabs(x));
    double d = 1.0 / (1.0 + e);
    return (x >= 0.0) ? d : e * d;
}
/* tanh(|x|) = -t / (2 + t) with t = expm1(-2|x|); sign restored by copysign. */
static inline float fnn_tanh1_f32(float x)
{
    float t = fnn_expm1_nonpos_f32(-2.0f * fabsf(x));
    return copysignf(-t / (2.0f + t), x);
}
static inline double fnn_tanh1_f64(double x)
{
    double t = fnn_expm1_nonpos_f64(-2.0 * fabs(x));
    return copysign(-t / (2.0 + t), x);
}

/* prelu's alpha comes in as an argument, so avec[i] is read for every element: inside the ?:
 * (`v > 0 ? v : avec[i] * v`) the load is conditional, and without masked loads (baseline
 * SSE2) GCC 12 leaves such a loop scalar. Same operations and operand order as the formulas
 * they replace (bwd: g * (s > 0 ? 1 : a)); v3 and v4 compile to the same results, NaN bits
 * included. */
static inline float fnn_prelu_fwd1_f32(float v, float a) { return (v > 0.0f) ? v : a * v; }
static inline double fnn_prelu_fwd1_f64(double v, double a) { return (v > 0.0) ? v : a * v; }
static inline float fnn_prelu_bwd1_f32(float g, float s, float a)
{ float m = (s > 0.0f) ? 1.0f : a; return g * m; }
static inline double fnn_prelu_bwd1_f64(double g, double s, double a)
{ double m = (s > 0.0) ? 1.0 : a; return g * m; }

/* ---------------------------------------------------------------- op-coded span functions
 * One op code per activation, shared by the standalone activation kernels and the fused
 * dense epilogues (csrc/fastnn_ops.pxd mirrors these numbers). The switch on the op sits
 * outside each loop, so every case is a plain loop the compiler vectorizes.
 *
 * NaN rules follow NumPy: relu = np.maximum(x, 0) keeps NaN and maps -0.0 to +0.0; backward
 * multiplies dout by the derivative, so NaN/Inf in dout behave as in `dout * (x > 0)`.
 *
 * `saved` in backward is the forward OUTPUT for relu, sigmoid and tanh, and the forward
 * INPUT (pre-activation) for leaky relu and prelu. `avec` holds prelu's per-feature alpha
 * (indexed like the span), `alpha` leaky relu's scalar.
 *
 * tanh's derivative is (1 - t)(1 + t), not 1 - t*t: near |t| = 1 the latter cancels, and
 * whether the compiler fuses t*t into the subtraction (an FMA on the AVX2/AVX-512 clones, not
 * on the baseline one) changed the result by hundreds of ulp. The product form is within 2 ulp
 * of the exact value on every path, and has no multiply-add to fuse, so every path gives the
 * same bits. */
enum { FNN_IDENTITY = 0, FNN_RELU = 1, FNN_LEAKY = 2, FNN_SIGMOID = 3, FNN_TANH = 4, FNN_PRELU = 5 };

#define FNN_FWD_IDENTITY(SFX, T, v, i) (v)
#define FNN_FWD_RELU(SFX, T, v, i)     (((v) <= (T)0) ? (T)0 : (v))
#define FNN_FWD_LEAKY(SFX, T, v, i)    (((v) > (T)0) ? (v) : alpha * (v))
#define FNN_FWD_SIGMOID(SFX, T, v, i)  fnn_sigmoid1_##SFX(v)
#define FNN_FWD_TANH(SFX, T, v, i)     fnn_tanh1_##SFX(v)
#define FNN_FWD_PRELU(SFX, T, v, i)    fnn_prelu_fwd1_##SFX(v, avec[i])

#define FNN_BWD_IDENTITY(SFX, T, g, s, i) (g)
#define FNN_BWD_RELU(SFX, T, g, s, i)     ((g) * (((s) > (T)0) ? (T)1 : (T)0))
#define FNN_BWD_LEAKY(SFX, T, g, s, i)    ((g) * (((s) > (T)0) ? (T)1 : alpha))
#define FNN_BWD_SIGMOID(SFX, T, g, s, i)  (((g) * (s)) * ((T)1 - (s)))
#define FNN_BWD_TANH(SFX, T, g, s, i)     ((g) * (((T)1 - (s)) * ((T)1 + (s))))
#define FNN_BWD_PRELU(SFX, T, g, s, i)    fnn_prelu_bwd1_##SFX(g, s, avec[i])

#define FNN_SWITCH_OP(op, LOOP, SFX, T)                                 \
    switch (op) {                                                       \
    case FNN_RELU:    LOOP(FNN_FWD_RELU, FNN_BWD_RELU, SFX, T); break;   \
    case FNN_LEAKY:   LOOP(FNN_FWD_LEAKY, FNN_BWD_LEAKY, SFX, T); break; \
    case FNN_SIGMOID: LOOP(FNN_FWD_SIGMOID, FNN_BWD_SIGMOID, SFX, T); break; \
    case FNN_TANH:    LOOP(FNN_FWD_TANH, FNN_BWD_TANH, SFX, T); break;   \
    case FNN_PRELU:   LOOP(FNN_FWD_PRELU, FNN_BWD_PRELU, SFX, T); break; \
    default:          LOOP(FNN_FWD_IDENTITY, FNN_BWD_IDENTITY, SFX, T); break; \
    }

/* y = act(x) */
#define FNN_LOOP_FWD(F, B, SFX, T) \
    for (ptrdiff_t i = 0; i < n; i++) y[i] = F(SFX, T, x[i], i)
/* y = act(y + b), in place (the dense epilogue on a GEMM result) */
#define FNN_LOOP_BIAS_FWD(F, B, SFX, T) \
    for (ptrdiff_t i = 0; i < n; i++) { T v = y[i] + b[i]; y[i] = F(SFX, T, v, i); }
/* z = z + b; y = act(z) (keeps the pre-activation for leaky relu / prelu backward) */
#define FNN_LOOP_BIAS_KEEP(F, B, SFX, T) \
    for (ptrdiff_t i = 0; i < n; i++) { T v = z[i] + b[i]; z[i] = v; y[i] = F(SFX, T, v, i); }
/* dx = dout * act'(saved) */
#define FNN_LOOP_BWD(F, B, SFX, T) \
    for (ptrdiff_t i = 0; i < n; i++) dx[i] = B(SFX, T, dout[i], saved[i], i)
/* dx = dout * act'(saved); acc += dx (a bias-gradient partial sum) */
#define FNN_LOOP_BWD_ACC(F, B, SFX, T) \
    for (ptrdiff_t i = 0; i < n; i++) { T g = B(SFX, T, dout[i], saved[i], i); dx[i] = g; acc[i] += g; }

/* ---------------------------------------------------------------- counter-based random bits
 * Dropout masks come from a stateless hash of (seed, element index): element i's draw does not
 * depend on how the array is split over threads, and forward and backward regenerate the same
 * mask from the seed instead of storing it. Two rounds of the murmur3 finalizer over 32-bit
 * lanes (vectorizes with SSE4.1/AVX2/AVX-512; fastnn/reference/dropout.py has the same in NumPy). */
static inline uint32_t fnn_fmix32(uint32_t h)
{
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    return h;
}
static inline uint32_t fnn_hash_index(uint32_t i, uint32_t seed_lo, uint32_t seed_hi)
{
    return fnn_fmix32(fnn_fmix32(i * 0x9e3779b9u + seed_lo) ^ seed_hi);
}
/* keep element i when its 32-bit hash, as a fraction of 2^32, is below p: hash <= limit =
 * ceil(p * 2^32) - 1 (p = 1 keeps everything; dropout.pyx keep_limit). x[i] is read on every element, not
 * under the ?:, where it would be a masked load at v3/v4 (slower) and leave the baseline
 * loop scalar. */
#define FNN_DEFINE_SPANS_DROPOUT(T, SFX)                                                      \
FNN_CLONES static void fnn_dropout_##SFX(const T *FNN_RESTRICT x, T *FNN_RESTRICT y,          \
        ptrdiff_t n, uint32_t first, uint32_t limit, uint32_t seed_lo, uint32_t seed_hi,       \
        T scale)                                                                              \
{ for (ptrdiff_t i = 0; i < n; i++) {                                                         \
      uint32_t u = fnn_hash_index(first + (uint32_t)i, seed_lo, seed_hi);                     \
      T xi = x[i]; y[i] = (u <= limit) ? xi * scale : (T)0; } }                               \
/* the same over y in place (x = y: restrict pointers must not alias) */                      \
FNN_CLONES static void fnn_dropout_inplace_##SFX(T *FNN_RESTRICT y, ptrdiff_t n,               \
        uint32_t first, uint32_t limit, uint32_t seed_lo, uint32_t seed_hi, T scale)          \
{ for (ptrdiff_t i = 0; i < n; i++) {                                                         \
      uint32_t u = fnn_hash_index(first + (uint32_t)i, seed_lo, seed_hi);                     \
      T yi = y[i]; y[i] = (u <= limit) ? yi * scale : (T)0; } }

/* ---------------------------------------------------------------- counter-based Gaussian noise
 * y = x + std * z, z ~ N(0, 1) by Box-Muller from the same hash as the dropout masks, under a
 * key of its own (dropout.pyx noise_key: the seed through splitmix64): the two
 * elements 2k and 2k + 1 share the hashes h1 = hash(2k), h2 = hash(2k + 1) and take
 * z = R cos(theta) and z = R sin(theta), R = sqrt(-2 log u1), u1 = (h1 + 1) / 2^32 in (0, 1]
 * (so |z| <= sqrt(64 ln 2) = 6.66), theta = 2 pi u2, u2 = h2 / 2^32. Element i's value depends on
 * (seed, i) only: any thread count, any split of the array gives the same numbers.
 * Computed in double for both dtypes, with basic operations only, so the loop vectorizes, and
 * none fused into a multiply-add (FNN_NO_CONTRACT): the same bits on every path and CPU build:
 * fnn_log_pos_f64 above, and sin and cos of theta reduced without error: theta = (pi/2) t,
 * t = h2 / 2^30, t = q + d / 2^30 with q the nearest integer (from the bits of h2) and
 * |d| <= 2^29, so r = d * (pi/2) / 2^30 is in [-pi/4, pi/4], where the minimax polynomials of
 * fdlibm's __kernel_sin and __kernel_cos (their coefficients S1..S6, C1..C6) are within about
 * an ulp. The quadrant q, less one for the sine, picks +-sin r or +-cos r.
 * fastnn/reference/dropout.py computes the same in NumPy with libm's log, cos and sin. */
FNN_ALWAYS_INLINE void fnn_normal_pair(uint32_t even, uint32_t seed_lo, uint32_t seed_hi,
                                         double *zc, double *zs)
{
    uint32_t h1 = fnn_hash_index(even, seed_lo, seed_hi);
    uint32_t h2 = fnn_hash_index(even | 1u, seed_lo, seed_hi);
    uint32_t q = ((h2 >> 29) + 1u) >> 1;              /* nearest integer to h2 / 2^30: 0..4 */
    int32_t d = (int32_t)(h2 - (q << 30));            /* in [-2^29, 2^29) (q << 30 wraps at 4) */
    double r = (double)d * 1.4629180792671596e-09;    /* (pi/2) / 2^30 */
    double z = r * r;
    double sr = r + r * z * (-1.66666666666666324348e-01 + z * (8.33333333332248946124e-03
                + z * (-1.98412698298579493134e-04 + z * (2.75573137070700676789e-06
                + z * (-2.50507602534068634195e-08 + z * 1.58969099521155010221e-10)))));
    double cr = 1.0 - 0.5 * z + z * z * (4.16666666666666019037e-02 + z * (-1.38888888888741095749e-03
                + z * (2.48015872894767294178e-05 + z * (-2.75573143513906633035e-07
                + z * (2.08757232129817482790e-09 + z * -1.13596475577881948265e-11)))));
    /* cos(k pi/2 + r) for k = 0..3: cos r, -sin r, -cos r, sin r; the sine is k = q - 1 */
    uint32_t kc = q & 3u, ks = (q - 1u) & 3u;
    double c = (kc & 1u) ? sr : cr, s = (ks & 1u) ? sr : cr;
    c = ((kc + 1u) & 2u) ? -c : c;
    s = ((ks + 1u) & 2u) ? -s : s;
    double u1 = ((double)h1 + 1.0) * 2.3283064365386963e-10;   /* 2^-32 */
    double radius = sqrt(-2.0 * fnn_log_pos_f64(u1));
    *zc = radius * c;
    *zs = radius * s;
}
/* One pair at a time (a pair's log, square root and polynomials serve both its elements); an
 * odd first element (a span starting inside a pair) and an odd last one take their half. */
#define FNN_DEFINE_SPANS_NOISE(T, SFX)                                                        \
FNN_CLONES FNN_NO_CONTRACT static void fnn_noise_##SFX(const T *FNN_RESTRICT x,              \
        T *FNN_RESTRICT y,                                                                    \
        ptrdiff_t n, uint32_t first, double std, uint32_t seed_lo, uint32_t seed_hi)          \
{ ptrdiff_t i = 0; double zc, zs;                                                             \
  if (n > 0 && (first & 1u)) {                                                                \
      fnn_normal_pair(first - 1u, seed_lo, seed_hi, &zc, &zs);                                \
      y[0] = x[0] + (T)(std * zs); i = 1; }                                                   \
  for (; i + 1 < n; i += 2) {                                                                 \
      fnn_normal_pair(first + (uint32_t)i, seed_lo, seed_hi, &zc, &zs);                       \
      y[i] = x[i] + (T)(std * zc); y[i + 1] = x[i + 1] + (T)(std * zs); }                     \
  if (i < n) {                                                                                \
      fnn_normal_pair(first + (uint32_t)i, seed_lo, seed_hi, &zc, &zs);                       \
      y[i] = x[i] + (T)(std * zc); } }

#define FNN_SQRT_f32 sqrtf
#define FNN_SQRT_f64 sqrt

/* ---------------------------------------------------------------- update rules (in place)
 * g = dw + wd * w is the gradient with weight decay (L2, "gradual forgetting"); without decay
 * (wd = 0) it is dw itself, not dw + 0 * w, which an infinite weight would turn into NaN where
 * the course's rules keep it infinite (the branch is loop-invariant: -O3 hoists it). Coefficients
 * like 1 - beta2 arrive precomputed in double and rounded once: computing 1 - 0.999f in float
 * would be off by 5e-5 relative. */
#define FNN_DECAYED(i) (wd != 0 ? dw[i] + wd * w[i] : dw[i])
#define FNN_DEFINE_SPANS_OPTIM(T, SFX)                                                        \
FNN_CLONES static void fnn_sgd_##SFX(T *FNN_RESTRICT w, const T *FNN_RESTRICT dw, ptrdiff_t n, \
        T lr, T wd)                                                                           \
{ for (ptrdiff_t i = 0; i < n; i++) { T g = FNN_DECAYED(i); w[i] -= lr * g; } }            \
FNN_CLONES static void fnn_momentum_##SFX(T *FNN_RESTRICT w, const T *FNN_RESTRICT dw,        \
        T *FNN_RESTRICT v, ptrdiff_t n, T lr, T mu, T wd)                                     \
{ for (ptrdiff_t i = 0; i < n; i++) { T g = FNN_DECAYED(i);                                \
      T vi = mu * v[i] - lr * g; v[i] = vi; w[i] += vi; } }                                   \
FNN_CLONES static void fnn_nesterov_##SFX(T *FNN_RESTRICT w, const T *FNN_RESTRICT dw,        \
        T *FNN_RESTRICT v, ptrdiff_t n, T lr, T mu, T wd)                                     \
{ for (ptrdiff_t i = 0; i < n; i++) { T g = FNN_DECAYED(i);                                \
      T vp = v[i]; T vi = mu * vp - lr * g; v[i] = vi; w[i] += -mu * vp + ((T)1 + mu) * vi; } } \
FNN_CLONES static void fnn_rmsprop_##SFX(T *FNN_RESTRICT w, const T *FNN_RESTRICT dw,         \
        T *FNN_RESTRICT c, ptrdiff_t n, T lr, T decay, T one_m_decay, T eps, T wd)            \
{ for (ptrdiff_t i = 0; i < n; i++) { T g = FNN_DECAYED(i);                                \
      T ci = decay * c[i] + one_m_decay * (g * g); c[i] = ci;                                 \
      w[i] -= lr * g / (FNN_SQRT_##SFX(ci) + eps); } }                                                  \
FNN_CLONES static void fnn_adam_##SFX(T *FNN_RESTRICT w, const T *FNN_RESTRICT dw,            \
        T *FNN_RESTRICT m, T *FNN_RESTRICT v, ptrdiff_t n, T lr, T b1, T one_m_b1, T b2,      \
        T one_m_b2, T eps, T c1, T c2, T wd)                                                  \
{ for (ptrdiff_t i = 0; i < n; i++) { T g = FNN_DECAYED(i);                                \
      T mi = b1 * m[i] + one_m_b1 * g; T vi = b2 * v[i] + one_m_b2 * (g * g);                 \
      m[i] = mi; v[i] = vi;                                                                   \
      w[i] -= lr * (mi / c1) / (FNN_SQRT_##SFX(vi / c2) + eps); } }

/* Maxout's element-wise part over n units of k pieces each (z is n*k, unit-major): the max
 * and the winning piece (NaN wins, like np.max; the first of equal maxima, like np.argmax),
 * and its backward (the gradient goes to the winner). k == 2, the common case, has its own
 * branch-free loop that the compiler vectorizes. */
#define FNN_DEFINE_SPANS_MAXOUT(T, SFX)                                                       \
FNN_CLONES static void fnn_maxout_fwd_##SFX(const T *FNN_RESTRICT z, T *FNN_RESTRICT out,     \
        signed char *FNN_RESTRICT am, ptrdiff_t n, ptrdiff_t k)                               \
{ if (k == 2) {                                                                               \
      for (ptrdiff_t m = 0; m < n; m++) {                                                     \
          T a = z[2 * m], b = z[2 * m + 1];                                                   \
          int take_b = (b > a) | ((b != b) & (a == a));                                       \
          out[m] = take_b ? b : a; am[m] = (signed char)take_b; }                             \
  } else {                                                                                    \
      for (ptrdiff_t m = 0; m < n; m++) {                                                     \
          const T *zm = z + m * k; T best = zm[0]; int bp = 0;                                \
          for (ptrdiff_t p = 1; p < k; p++) {                                                 \
              T v = zm[p];                                                                    \
              if (v > best || (v != v && best == best)) { best = v; bp = (int)p; } }          \
          out[m] = best; am[m] = (signed char)bp; } } }                                       \
FNN_CLONES static void fnn_maxout_bwd_##SFX(const T *FNN_RESTRICT g,                          \
        const signed char *FNN_RESTRICT am, T *FNN_RESTRICT dz, ptrdiff_t n, ptrdiff_t k)     \
{ if (k == 2) {                                                                               \
      for (ptrdiff_t m = 0; m < n; m++) {                                                     \
          T v = g[m]; int w = am[m];                                                          \
          dz[2 * m] = (w == 0) ? v : (T)0; dz[2 * m + 1] = (w == 1) ? v : (T)0; }             \
  } else {                                                                                    \
      for (ptrdiff_t m = 0; m < n; m++)                                                       \
          for (ptrdiff_t p = 0; p < k; p++) dz[m * k + p] = (p == am[m]) ? g[m] : (T)0; } }

/* Softmax cross-entropy of `rows` rows of C scores (x, row-major) with their labels: each row's
 * loss goes to losses[i], and d receives (softmax - onehot) * inv_n; sums holds `rows` doubles
 * of workspace. Done for a block of rows at once so that the exponentials run as one
 * vectorized pass over rows * C elements, and the rows' logarithms and divisions as one over
 * the rows: per row, with the course's C = 3 or 10, a call per row cost more than the
 * arithmetic. Per element the operations are exp(x - max) (no overflow, the largest term is
 * 1), the row sum in double, and one scale by inv_n / sum. The max is a branch-free select (a
 * compare and branch per score mispredicts on scores in no order), which passes over a NaN
 * score; that score's exponential, and so the row's sum, loss and gradient, are NaN all the
 * same. x and d may be the same array (the step kernel writes dscores over the
 * scores): each row's x[label] - max is taken, into losses[i], before the row is written,
 * and nothing reads x after that.
 * The labels were checked before the call, but each is read at its use again (fnn_load_label)
 * and indexes only when it is in [0, C): another thread may write them meanwhile (the caller's
 * y, read without the GIL). A row whose label is out of range then gets a NaN loss and a NaN
 * gradient row (as svm_row's): wrong, as a race makes it, and visible to the non-finite guard,
 * never a read or write outside the row.
 * C = 2, 3 and 10 (a binary softmax, the course's spiral data, CIFAR-10) get loops of that
 * fixed length, unrolled: the loops' set-up cost more than their work. */
#define FNN_DEFINE_SPANS_LOSS(T, SFX)                                                         \
FNN_ALWAYS_INLINE void fnn_softmax_block_##SFX(const T *x, T *d, ptrdiff_t rows,              \
        ptrdiff_t C, const ptrdiff_t *FNN_RESTRICT labels, T inv_n,                          \
        double *FNN_RESTRICT losses, double *FNN_RESTRICT sums)                               \
{ for (ptrdiff_t i = 0; i < rows; i++) {                                                      \
      const T *xi = x + i * C; T *di = d + i * C; T m = xi[0];                                \
      ptrdiff_t y = fnn_load_label(labels + i);                                               \
      for (ptrdiff_t j = 1; j < C; j++) m = (xi[j] > m) ? xi[j] : m;                          \
      losses[i] = ((size_t)y < (size_t)C) ? (double)xi[y] - (double)m : (double)NAN;          \
      for (ptrdiff_t j = 0; j < C; j++) di[j] = xi[j] - m; }                                  \
  for (ptrdiff_t k = 0; k < rows * C; k++) d[k] = fnn_exp_nonpos_##SFX(d[k]);                 \
  for (ptrdiff_t i = 0; i < rows; i++) {                                                      \
      const T *di = d + i * C; double s = 0.0;                                                \
      for (ptrdiff_t j = 0; j < C; j++) s += (double)di[j];                                   \
      sums[i] = s; }                                                                          \
  for (ptrdiff_t i = 0; i < rows; i++) {                                                      \
      double s = sums[i];                                                                     \
      losses[i] = fnn_log_pos_f64(s) - losses[i];                                             \
      sums[i] = (double)inv_n / s; }                                                          \
  for (ptrdiff_t i = 0; i < rows; i++) {                                                      \
      T *di = d + i * C; T f = (T)sums[i]; ptrdiff_t y = fnn_load_label(labels + i);          \
      for (ptrdiff_t j = 0; j < C; j++) di[j] *= f;                                           \
      if ((size_t)y < (size_t)C) di[y] -= inv_n;                                              \
      else { losses[i] = (double)NAN; for (ptrdiff_t j = 0; j < C; j++) di[j] = (T)NAN; } } } \
FNN_CLONES static void fnn_softmax_rows_##SFX(const T *x, T *d,                               \
        ptrdiff_t rows, ptrdiff_t C, const ptrdiff_t *FNN_RESTRICT labels, T inv_n,          \
        double *FNN_RESTRICT losses, double *FNN_RESTRICT sums)                               \
{ if (C == 3) fnn_softmax_block_##SFX(x, d, rows, 3, labels, inv_n, losses, sums);           \
  else if (C == 10) fnn_softmax_block_##SFX(x, d, rows, 10, labels, inv_n, losses, sums);    \
  else if (C == 2) fnn_softmax_block_##SFX(x, d, rows, 2, labels, inv_n, losses, sums);      \
  else fnn_softmax_block_##SFX(x, d, rows, C, labels, inv_n, losses, sums); }

/* s = g * act'(s) in place on the saved output (the step kernel writes a layer's input gradient
 * into the activation buffer it no longer needs: relu, sigmoid and tanh save their output) */
#define FNN_LOOP_BWD_INTO_SAVED(F, B, SFX, T) \
    for (ptrdiff_t i = 0; i < n; i++) s[i] = B(SFX, T, g[i], s[i], i);

/* g = g * act'(saved) in place; acc += g (the step kernel's own gradient buffer) */
#define FNN_LOOP_BWD_ACC_INPLACE(F, B, SFX, T) \
    for (ptrdiff_t i = 0; i < n; i++) { T v = B(SFX, T, g[i], saved[i], i); g[i] = v; acc[i] += v; }

/* g = g * act'(saved) in place, saved apart (the step kernel's dz of a leaky relu layer, over
 * the output that layer's weight gradient has already read; saved is its pre-activation) */
#define FNN_LOOP_BWD_INPLACE(F, B, SFX, T) \
    for (ptrdiff_t i = 0; i < n; i++) g[i] = B(SFX, T, g[i], saved[i], i);

/* acc[0..W) += each of `rows` rows of v0 (ld apart), row after row: the columns' sums held
 * in registers over the rows (a loop over whole rows keeps them in memory, and each row's
 * adds wait for the last row's stores: 0.80 us for 150 rows of 100 floats against 0.56-0.66
 * this way, measured on the Xeon kind). Each element gets the same additions in the same
 * order as the plain loop, so the same bits. fnn_add_into_rows cuts a row into such blocks. */
#define FNN_DEFINE_ACC_COLS(T, SFX, W)                                                        \
FNN_ALWAYS_INLINE void fnn_acc_cols##W##_##SFX(const T *FNN_RESTRICT v0, ptrdiff_t ldv,       \
        ptrdiff_t rows, T *FNN_RESTRICT acc)                                                  \
{ T a[W];                                                                                     \
  for (int i = 0; i < W; i++) a[i] = acc[i];                                                  \
  for (ptrdiff_t r = 0; r < rows; r++) { const T *FNN_RESTRICT v = v0 + r * ldv;              \
      for (int i = 0; i < W; i++) a[i] += v[i]; }                                             \
  for (int i = 0; i < W; i++) acc[i] = a[i]; }
#define FNN_DEFINE_ACC_COLS_ALL(T, SFX)                                                       \
    FNN_DEFINE_ACC_COLS(T, SFX, 64) FNN_DEFINE_ACC_COLS(T, SFX, 16)                           \
    FNN_DEFINE_ACC_COLS(T, SFX, 8) FNN_DEFINE_ACC_COLS(T, SFX, 4)                             \
    FNN_DEFINE_ACC_COLS(T, SFX, 3) FNN_DEFINE_ACC_COLS(T, SFX, 2)                             \
    FNN_DEFINE_ACC_COLS(T, SFX, 1)
FNN_DEFINE_ACC_COLS_ALL(float, f32)
FNN_DEFINE_ACC_COLS_ALL(double, f64)

/* Spans over a block of `rows` rows of n elements, ld apart (a GEMM tile's rows, or a row block
 * of a backward pass), in one call: each row is the plain loop (FNN_LOOP_*), rows in order, so
 * sums into acc accumulate row by row as before. A call per row cost more than a short row's
 * work on the small networks. The dense epilogues: y = act(y + b), z = z + b with y = act(z),
 * acc += v (bias-gradient partials), s = g * act'(s) (the step kernel's dz over the saved
 * output), dx = dout * act'(saved). */
#define FNN_DEFINE_SPANS_ROWS(T, SFX)                                                         \
FNN_CLONES static void fnn_bias_act_fwd_rows_##SFX(int op, T *FNN_RESTRICT y0, ptrdiff_t ldy, \
        ptrdiff_t rows, const T *FNN_RESTRICT b, ptrdiff_t n, T alpha,                        \
        const T *FNN_RESTRICT avec)                                                           \
{ for (ptrdiff_t r = 0; r < rows; r++) { T *FNN_RESTRICT y = y0 + r * ldy;                    \
      FNN_SWITCH_OP(op, FNN_LOOP_BIAS_FWD, SFX, T) } }                                        \
FNN_CLONES static void fnn_bias_act_keep_rows_##SFX(int op, T *FNN_RESTRICT z0,               \
        const T *FNN_RESTRICT b, T *FNN_RESTRICT y0, ptrdiff_t ld, ptrdiff_t rows,            \
        ptrdiff_t n, T alpha, const T *FNN_RESTRICT avec)                                     \
{ for (ptrdiff_t r = 0; r < rows; r++) {                                                      \
      T *FNN_RESTRICT z = z0 + r * ld; T *FNN_RESTRICT y = y0 + r * ld;                       \
      FNN_SWITCH_OP(op, FNN_LOOP_BIAS_KEEP, SFX, T) } }                                       \
FNN_CLONES static void fnn_add_into_rows_##SFX(const T *FNN_RESTRICT v0, ptrdiff_t ldv,       \
        ptrdiff_t rows, T *FNN_RESTRICT acc, ptrdiff_t n)                                     \
{ ptrdiff_t j = 0;                                                                            \
  for (; j + 64 <= n; j += 64) fnn_acc_cols64_##SFX(v0 + j, ldv, rows, acc + j);              \
  for (; j + 16 <= n; j += 16) fnn_acc_cols16_##SFX(v0 + j, ldv, rows, acc + j);              \
  if (j + 8 <= n) { fnn_acc_cols8_##SFX(v0 + j, ldv, rows, acc + j); j += 8; }                \
  if (j + 4 <= n) { fnn_acc_cols4_##SFX(v0 + j, ldv, rows, acc + j); j += 4; }                \
  if (n - j == 3) fnn_acc_cols3_##SFX(v0 + j, ldv, rows, acc + j);                            \
  else if (n - j == 2) fnn_acc_cols2_##SFX(v0 + j, ldv, rows, acc + j);                       \
  else if (n - j == 1) fnn_acc_cols1_##SFX(v0 + j, ldv, rows, acc + j); }                     \
FNN_CLONES static void fnn_act_bwd_into_saved_rows_##SFX(int op, const T *FNN_RESTRICT g0,    \
        ptrdiff_t ldg, T *FNN_RESTRICT s0, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t n,        \
        T alpha, const T *FNN_RESTRICT avec)                                                  \
{ for (ptrdiff_t r = 0; r < rows; r++) {                                                      \
      const T *FNN_RESTRICT g = g0 + r * ldg; T *FNN_RESTRICT s = s0 + r * lds;               \
      FNN_SWITCH_OP(op, FNN_LOOP_BWD_INTO_SAVED, SFX, T) } }                                  \
FNN_CLONES static void fnn_act_fwd_rows_##SFX(int op, const T *FNN_RESTRICT x0,              \
        T *FNN_RESTRICT y0, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n, T alpha,               \
        const T *FNN_RESTRICT avec)                                                           \
{ for (ptrdiff_t r = 0; r < rows; r++) {                                                      \
      const T *FNN_RESTRICT x = x0 + r * ld; T *FNN_RESTRICT y = y0 + r * ld;                 \
      FNN_SWITCH_OP(op, FNN_LOOP_FWD, SFX, T) } }                                             \
FNN_CLONES static void fnn_act_bwd_acc_rows_##SFX(int op, const T *FNN_RESTRICT dout0,        \
        const T *FNN_RESTRICT saved0, T *FNN_RESTRICT dx0, ptrdiff_t ld, ptrdiff_t rows,      \
        ptrdiff_t n, T alpha, const T *FNN_RESTRICT avec, T *FNN_RESTRICT acc)                \
{ for (ptrdiff_t r = 0; r < rows; r++) {                                                      \
      const T *FNN_RESTRICT dout = dout0 + r * ld; const T *FNN_RESTRICT saved = saved0 + r * ld; \
      T *FNN_RESTRICT dx = dx0 + r * ld;                                                      \
      FNN_SWITCH_OP(op, FNN_LOOP_BWD_ACC, SFX, T) } }                                         \
FNN_CLONES static void fnn_act_bwd_acc_inplace_rows_##SFX(int op, T *FNN_RESTRICT g0,         \
        const T *FNN_RESTRICT saved0, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n, T alpha,     \
        const T *FNN_RESTRICT avec, T *FNN_RESTRICT acc)                                      \
{ for (ptrdiff_t r = 0; r < rows; r++) {                                                      \
      T *FNN_RESTRICT g = g0 + r * ld; const T *FNN_RESTRICT saved = saved0 + r * ld;         \
      FNN_SWITCH_OP(op, FNN_LOOP_BWD_ACC_INPLACE, SFX, T) } }                                 \
FNN_CLONES static void fnn_act_bwd_inplace_rows_##SFX(int op, T *FNN_RESTRICT g0,             \
        ptrdiff_t ldg, const T *FNN_RESTRICT saved0, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t n, \
        T alpha, const T *FNN_RESTRICT avec)                                                  \
{ for (ptrdiff_t r = 0; r < rows; r++) {                                                      \
      T *FNN_RESTRICT g = g0 + r * ldg; const T *FNN_RESTRICT saved = saved0 + r * lds;       \
      FNN_SWITCH_OP(op, FNN_LOOP_BWD_INPLACE, SFX, T) } }                                     \
/* prelu's slope-gradient partial: aacc += dout * (saved > 0 ? 0 : saved) */                  \
FNN_CLONES static void fnn_prelu_alpha_acc_rows_##SFX(const T *FNN_RESTRICT dout0,            \
        const T *FNN_RESTRICT saved0, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n,              \
        T *FNN_RESTRICT aacc)                                                                 \
{ for (ptrdiff_t r = 0; r < rows; r++) {                                                      \
      const T *FNN_RESTRICT dout = dout0 + r * ld; const T *FNN_RESTRICT saved = saved0 + r * ld; \
      for (ptrdiff_t i = 0; i < n; i++) aacc[i] += dout[i] * ((saved[i] > (T)0) ? (T)0 : saved[i]); } } \
FNN_CLONES static void fnn_act_bwd_rows_##SFX(int op, const T *FNN_RESTRICT dout0,            \
        ptrdiff_t ldg, const T *FNN_RESTRICT saved0, T *FNN_RESTRICT dx0, ptrdiff_t ld,       \
        ptrdiff_t rows, ptrdiff_t n, T alpha, const T *FNN_RESTRICT avec)                     \
{ for (ptrdiff_t r = 0; r < rows; r++) {                                                      \
      const T *FNN_RESTRICT dout = dout0 + r * ldg; const T *FNN_RESTRICT saved = saved0 + r * ld; \
      T *FNN_RESTRICT dx = dx0 + r * ld;                                                      \
      FNN_SWITCH_OP(op, FNN_LOOP_BWD, SFX, T) } }

/* relu's derivative as bits, so that the step kernel can write a layer's input gradient over
 * the relu output it no longer needs: bit (r % W) of bits[(r / W) * n + j] is s[r][j] > 0, with
 * W the bits of U, an unsigned integer as wide as T (rows interleaved, W to a word, so that
 * both loops run along a row in lanes as wide as T's and vectorize without narrowing); then
 * g = g * (bit ? 1 : 0), FNN_BWD_RELU's formula with the same operands. That 1 or +0 is made
 * from the bit by masking the bits of (T)1, not by converting the integer: there is no 64-bit
 * integer to double conversion below AVX-512, and GCC 12 left the double loop scalar on AVX2. */
#define FNN_DEFINE_RELU_MASK(T, SFX, U, W)                                                    \
FNN_CLONES static void fnn_relu_mask_rows_##SFX(const T *FNN_RESTRICT s0, ptrdiff_t lds,      \
        ptrdiff_t rows, ptrdiff_t n, void *bits_)                                             \
{ U *FNN_RESTRICT bits = (U *)bits_;                                                          \
  for (ptrdiff_t r = 0; r < rows; r++) {                                                      \
      const T *FNN_RESTRICT s = s0 + r * lds; U *FNN_RESTRICT b = bits + (r / W) * n;         \
      int e = (int)(r % W);                                                                   \
      if (e == 0) { for (ptrdiff_t j = 0; j < n; j++) b[j] = (U)(s[j] > (T)0); }              \
      else { for (ptrdiff_t j = 0; j < n; j++) b[j] |= (U)(s[j] > (T)0) << e; } } }           \
FNN_CLONES static void fnn_relu_bwd_mask_rows_##SFX(T *FNN_RESTRICT g0, ptrdiff_t ldg,        \
        ptrdiff_t rows, ptrdiff_t n, const void *bits_)                                       \
{ const U *FNN_RESTRICT bits = (const U *)bits_; T one_t = (T)1; U one;                       \
  memcpy(&one, &one_t, sizeof one);                                                           \
  for (ptrdiff_t r = 0; r < rows; r++) {                                                      \
      T *FNN_RESTRICT g = g0 + r * ldg; const U *FNN_RESTRICT b = bits + (r / W) * n;         \
      int e = (int)(r % W);                                                                   \
      for (ptrdiff_t j = 0; j < n; j++) {                                                     \
          U mb = ((U)0 - ((b[j] >> e) & 1u)) & one; T m; memcpy(&m, &mb, sizeof m);           \
          g[j] = g[j] * m; } } }

#define FNN_DEFINE_SPANS(T, SFX)                                                              \
FNN_CLONES static void fnn_act_fwd_##SFX(int op, const T *FNN_RESTRICT x, T *FNN_RESTRICT y,  \
        ptrdiff_t n, T alpha, const T *FNN_RESTRICT avec)                                     \
{ FNN_SWITCH_OP(op, FNN_LOOP_FWD, SFX, T) }                                                   \
FNN_CLONES static void fnn_act_bwd_##SFX(int op, const T *FNN_RESTRICT dout,                  \
        const T *FNN_RESTRICT saved, T *FNN_RESTRICT dx, ptrdiff_t n, T alpha,                \
        const T *FNN_RESTRICT avec)                                                           \
{ FNN_SWITCH_OP(op, FNN_LOOP_BWD, SFX, T) }


/* 1 if no element of x is Inf or NaN, else 0. With the sign bit cleared, a float's bits are
 * at least those of +Inf exactly when it is Inf or NaN, so the check is an unsigned max
 * reduction over the bit patterns, which the compiler vectorizes (a float compare would
 * need a branch per element, and a sum of x * 0 a serial chain of additions). */
#define FNN_DEFINE_ALL_FINITE(T, SFX, U, ABS_MASK, INF_BITS)                                  \
FNN_CLONES static int fnn_all_finite_##SFX(const T *FNN_RESTRICT x, ptrdiff_t n)              \
{ U acc = 0;                                                                                  \
  for (ptrdiff_t i = 0; i < n; i++) { U u; memcpy(&u, x + i, sizeof u); u &= ABS_MASK;        \
      acc = u > acc ? u : acc; }                                                              \
  return acc < INF_BITS; }
FNN_DEFINE_ALL_FINITE(float, f32, uint32_t, 0x7fffffffu, 0x7f800000u)
FNN_DEFINE_ALL_FINITE(double, f64, uint64_t, 0x7fffffffffffffffull, 0x7ff0000000000000ull)

FNN_DEFINE_SPANS_LOSS(float, f32)
FNN_DEFINE_SPANS_MAXOUT(float, f32)
FNN_DEFINE_SPANS_DROPOUT(float, f32)
FNN_DEFINE_SPANS_NOISE(float, f32)
FNN_DEFINE_SPANS_OPTIM(float, f32)
FNN_DEFINE_SPANS(float, f32)
FNN_DEFINE_SPANS_ROWS(float, f32)
FNN_DEFINE_RELU_MASK(float, f32, uint32_t, 32)
FNN_DEFINE_SPANS_LOSS(double, f64)
FNN_DEFINE_SPANS_MAXOUT(double, f64)
FNN_DEFINE_SPANS_DROPOUT(double, f64)
FNN_DEFINE_SPANS_NOISE(double, f64)
FNN_DEFINE_SPANS_OPTIM(double, f64)
FNN_DEFINE_SPANS(double, f64)
FNN_DEFINE_SPANS_ROWS(double, f64)
FNN_DEFINE_RELU_MASK(double, f64, uint64_t, 64)

#endif /* FASTNN_SIMD_H */
