// Integer GEMM kernels; include/CQARepInt8.h describes the operands.
//
// The AVX2 code is compiled per function with target("avx2"), so the rest of
// the file, the portable fallback included, stays baseline x86-64 and runs on
// any CPU; qarep_i8_avx2_available() decides at run time.

#include "CQARepInt8.h"

#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define QAREP_X86 1
#define AVX2 __attribute__((target("avx2")))
#define VNNI512 __attribute__((target("avx512f,avx512bw,avx512vnni,avx2")))
#define AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vnni,avx2")))
#else
#define QAREP_X86 0
#endif

#define MR QAREP_I8_MR
#define NR QAREP_I8_NR

int qarep_i8_avx2_available(void) {
#if QAREP_X86
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return cached;
#else
    return 0;
#endif
}

int qarep_i8_vnni512_available(void) {
#if QAREP_X86
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vnni") ? 1 : 0;
    }
    return cached;
#else
    return 0;
#endif
}

int qarep_i8_amx_available(void) {
#if QAREP_X86 && defined(__linux__)
    static int cached = -1;
    if (cached < 0) {
        unsigned a = 0, b = 0, c = 0, d = 0;
        // CPUID.(7, 0):EDX bit 24 is AMX-TILE, bit 25 AMX-INT8.
        const int cpu = qarep_i8_vnni512_available() && __get_cpuid_count(7, 0, &a, &b, &c, &d)
                        && (d >> 24 & 1) && (d >> 25 & 1);
        // Linux hands out the 8 KiB of tile state only to a process that asks
        // (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); a kernel without AMX support refuses.
        cached = cpu && syscall(SYS_arch_prctl, 0x1023, 18) == 0 ? 1 : 0;
    }
    return cached;
#else
    return 0;
#endif
}

// MARK: - Requantization. requantize1 does the same IEEE operations in the
// same order as QARepKernels.requantize: the Double product, roundeven, + zero
// point, clamp. The vector versions clamp before rounding, which gives the
// same codes (see requantize4).

static inline int32_t wrapping_add(int32_t a, int32_t b) {
    return (int32_t)((uint32_t)a + (uint32_t)b);
}

static inline int32_t requantize1(int32_t acc, double m, double z, double lo, double hi) {
    double d = __builtin_roundeven((double)acc * m) + z;
    d = d < lo ? lo : d;
    d = d > hi ? hi : d;
    return (int32_t)d;
}

static inline void store_code(void *out, int64_t index, int32_t q, int out_signed) {
    if (out_signed) ((int8_t *)out)[index] = (int8_t)q;
    else ((uint8_t *)out)[index] = (uint8_t)q;
}

static void requantize_scalar(const int32_t *acc, int64_t count, int32_t bias, float multiplier,
                              int32_t zero_point, int32_t min, int32_t max, void *out, int out_signed) {
    const double m = multiplier, z = zero_point, lo = min, hi = max;
    for (int64_t i = 0; i < count; i++)
        store_code(out, i, requantize1(wrapping_add(acc[i], bias), m, z, lo, hi), out_signed);
}

#if QAREP_X86
// Four lanes of requantize1, each with its own multiplier, returning the code
// minus the zero point. The clamp to [lo, hi] after adding z is a clamp to
// [lo - z, hi - z] before rounding (rounding is monotone and keeps those
// integer bounds), so the zero point is added to the narrowed codes as an
// integer, after: five double operations instead of six, same results. The
// rounded value is integral and inside the bounds, so the conversion is exact.
AVX2 static inline __m128i requantize4(__m128i v, __m256d m, __m256d lo_z, __m256d hi_z) {
    __m256d d = _mm256_mul_pd(_mm256_cvtepi32_pd(v), m);
    d = _mm256_min_pd(_mm256_max_pd(d, lo_z), hi_z);
    return _mm256_cvtpd_epi32(_mm256_round_pd(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// 16 biased accumulators to 16 codes minus the zero point as int16, channels
// 0-7 in w[0] and 8-15 in w[1]. They lie in [lo - z, hi - z], inside int16, so
// the packs only narrow.
AVX2 static inline void requantize16_centered(__m256i a, __m256i b, const __m256d m[4], __m256d lo_z, __m256d hi_z,
                                              __m128i w[2]) {
    __m128i r0 = requantize4(_mm256_castsi256_si128(a), m[0], lo_z, hi_z);
    __m128i r1 = requantize4(_mm256_extracti128_si256(a, 1), m[1], lo_z, hi_z);
    __m128i r2 = requantize4(_mm256_castsi256_si128(b), m[2], lo_z, hi_z);
    __m128i r3 = requantize4(_mm256_extracti128_si256(b, 1), m[3], lo_z, hi_z);
    w[0] = _mm_packs_epi32(r0, r1);
    w[1] = _mm_packs_epi32(r2, r3);
}

// 16 biased accumulators to 16 codes, one byte each (z16: the zero point in
// every int16 lane). Codes lie in the 8-bit range, so the packs only narrow.
AVX2 static inline __m128i requantize16(__m256i a, __m256i b, const __m256d m[4], __m256d lo_z, __m256d hi_z,
                                        __m128i z16, int out_signed) {
    __m128i w[2];
    requantize16_centered(a, b, m, lo_z, hi_z, w);
    w[0] = _mm_add_epi16(w[0], z16);
    w[1] = _mm_add_epi16(w[1], z16);
    return out_signed ? _mm_packs_epi16(w[0], w[1]) : _mm_packus_epi16(w[0], w[1]);
}

AVX2 static void requantize_avx2(const int32_t *acc, int64_t count, int32_t bias, float multiplier,
                                 int32_t zero_point, int32_t min, int32_t max, void *out, int out_signed) {
    const __m256d m1 = _mm256_set1_pd(multiplier), m[4] = {m1, m1, m1, m1};
    const __m256d lo_z = _mm256_set1_pd(min - zero_point), hi_z = _mm256_set1_pd(max - zero_point);
    const __m128i z16 = _mm_set1_epi16((short)zero_point);
    const __m256i b = _mm256_set1_epi32(bias);
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m256i a0 = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(acc + i)), b);
        __m256i a1 = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(acc + i + 8)), b);
        _mm_storeu_si128((__m128i *)((uint8_t *)out + i), requantize16(a0, a1, m, lo_z, hi_z, z16, out_signed));
    }
    requantize_scalar(acc + i, count - i, bias, multiplier, zero_point, min, max, (uint8_t *)out + i, out_signed);
}
#endif

void qarep_i8_requantize(const int32_t *acc, int64_t count, int32_t bias, float multiplier,
                         int32_t zero_point, int32_t min, int32_t max,
                         void *output, int output_signed, int use_avx2) {
#if QAREP_X86
    if (use_avx2) {
        requantize_avx2(acc, count, bias, multiplier, zero_point, min, max, output, output_signed);
        return;
    }
#endif
    requantize_scalar(acc, count, bias, multiplier, zero_point, min, max, output, output_signed);
}

// MARK: - Micro-kernels: t[p][r] = sum_k w[o0 + r, k] * x[pixel p, k]

static void tile_scalar(const int16_t *w, int64_t w_tap, const int16_t *const a[NR], const qarep_i8_source *s,
                        int32_t t[NR][MR]) {
    memset(t, 0, sizeof(int32_t) * NR * MR);
    const int64_t pairs = s->segment / 2;
    for (int64_t tap = 0; tap < s->taps; tap++) {
        const int64_t off = s->tap_offsets[tap];
        const int16_t *wt = w + tap * w_tap;
        for (int64_t cc = 0; cc < pairs; cc++) {
            const int16_t *wk = wt + cc * 2 * MR;
            for (int p = 0; p < NR; p++) {
                const int32_t x0 = a[p][off + 2 * cc], x1 = a[p][off + 2 * cc + 1];
                for (int r = 0; r < MR; r++) t[p][r] += wk[2 * r] * x0 + wk[2 * r + 1] * x1;
            }
        }
    }
}

#if QAREP_X86
// The AVX2 tiles' twelve accumulators, c<pixel><half>, to t[pixel][channel].
#define QAREP_STORE_TILE(t)                                                                          \
    _mm256_storeu_si256((__m256i *)t[0], c00); _mm256_storeu_si256((__m256i *)(t[0] + 8), c01);     \
    _mm256_storeu_si256((__m256i *)t[1], c10); _mm256_storeu_si256((__m256i *)(t[1] + 8), c11);     \
    _mm256_storeu_si256((__m256i *)t[2], c20); _mm256_storeu_si256((__m256i *)(t[2] + 8), c21);     \
    _mm256_storeu_si256((__m256i *)t[3], c30); _mm256_storeu_si256((__m256i *)(t[3] + 8), c31);     \
    _mm256_storeu_si256((__m256i *)t[4], c40); _mm256_storeu_si256((__m256i *)(t[4] + 8), c41);     \
    _mm256_storeu_si256((__m256i *)t[5], c50); _mm256_storeu_si256((__m256i *)(t[5] + 8), c51);

AVX2 static void tile_avx2(const int16_t *w, int64_t w_tap, const int16_t *const a[NR], const qarep_i8_source *s,
                           int32_t t[NR][MR]) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const int64_t pairs = s->segment / 2;
    for (int64_t tap = 0; tap < s->taps; tap++) {
        const int64_t off = s->tap_offsets[tap];
        const int16_t *a0 = a[0] + off, *a1 = a[1] + off, *a2 = a[2] + off;
        const int16_t *a3 = a[3] + off, *a4 = a[4] + off, *a5 = a[5] + off;
        const int16_t *wt = w + tap * w_tap;
        for (int64_t cc = 0; cc < pairs; cc++) {
            // Channels 0-7 and 8-15, each lane the (k, k+1) weight pair.
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wt + cc * 2 * MR));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wt + cc * 2 * MR + 16));
            int32_t x;
#define QAREP_STEP(ap, lo, hi)                                          \
            memcpy(&x, ap + 2 * cc, sizeof x);                          \
            {                                                           \
                const __m256i b = _mm256_set1_epi32(x);                 \
                lo = _mm256_add_epi32(lo, _mm256_madd_epi16(w0, b));    \
                hi = _mm256_add_epi32(hi, _mm256_madd_epi16(w1, b));    \
            }
            QAREP_STEP(a0, c00, c01)
            QAREP_STEP(a1, c10, c11)
            QAREP_STEP(a2, c20, c21)
            QAREP_STEP(a3, c30, c31)
            QAREP_STEP(a4, c40, c41)
            QAREP_STEP(a5, c50, c51)
#undef QAREP_STEP
        }
    }
    QAREP_STORE_TILE(t)
}
#endif


// u8 x s8 on AVX2: vpmaddubsw multiplies the 4 activation bytes by each
// channel's 4 weights and sums adjacent products into int16 with saturation,
// vpmaddwd by ones sums the two int16 into the channel's int32 lane. The
// VNNI packing is what it reads: one ymm is 8 channels' 4 weights. Exact
// only for activation bytes up to 127 (qarep_u8s8_gemm's contract): an
// int16 sum is then at most 2 * 127 * 128 = 32,512 < 2^15. Per 4 k, two
// weight loads and six broadcasts feed 24 multiplies of 16 products each.
#if QAREP_X86
AVX2 static void tile_avx2_u7(const int8_t *w, int64_t w_tap, const uint8_t *const a[NR], const qarep_u8_source *s,
                              int32_t t[NR][MR]) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t tap = 0; tap < s->taps; tap++) {
        const int64_t off = s->tap_offsets[tap];
        const uint8_t *a0 = a[0] + off, *a1 = a[1] + off, *a2 = a[2] + off;
        const uint8_t *a3 = a[3] + off, *a4 = a[4] + off, *a5 = a[5] + off;
        const int8_t *wk = w + tap * w_tap;
        for (int64_t k = 0; k < s->segment; k += 4, wk += 4 * MR) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)wk);
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wk + 32));
            int32_t x;
#define QAREP_STEP(ap, lo, hi)                                                                  \
            memcpy(&x, ap + k, sizeof x);                                                       \
            {                                                                                   \
                const __m256i b = _mm256_set1_epi32(x);                                         \
                lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w0), ones)); \
                hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w1), ones)); \
            }
            QAREP_STEP(a0, c00, c01)
            QAREP_STEP(a1, c10, c11)
            QAREP_STEP(a2, c20, c21)
            QAREP_STEP(a3, c30, c31)
            QAREP_STEP(a4, c40, c41)
            QAREP_STEP(a5, c50, c51)
#undef QAREP_STEP
        }
    }
    QAREP_STORE_TILE(t)
}
#undef QAREP_STORE_TILE
#endif

// u8 x s8 micro-kernels (AVX-512 VNNI). vpdpbusd multiplies 4 unsigned bytes
// of the activation by 4 signed bytes of a weight and adds the four products
// to an int32 lane: no intermediate is narrowed, so the sum is exact. Weights
// are packed [K''/4][16][4] per block (64 bytes: one zmm), the activation's
// 4 bytes are broadcast to every lane.
#if QAREP_X86
VNNI512 static inline void store_acc16_vnni(int32_t *t, __m512i v) { _mm512_storeu_si512((void *)t, v); }

VNNI512 static void tile_vnni(const int8_t *w, const uint8_t *const a[NR], const qarep_u8_source *s,
                              int32_t t[NR][MR]) {
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
    for (int64_t tap = 0; tap < s->taps; tap++) {
        const int64_t off = s->tap_offsets[tap];
        const uint8_t *a0 = a[0] + off, *a1 = a[1] + off, *a2 = a[2] + off;
        const uint8_t *a3 = a[3] + off, *a4 = a[4] + off, *a5 = a[5] + off;
        const int8_t *wk = w + tap * s->segment * MR;
        for (int64_t k = 0; k < s->segment; k += 4, wk += 4 * MR) {
            const __m512i wv = _mm512_loadu_si512((const void *)wk);
            int32_t x;
#define QAREP_STEP(ap, c) memcpy(&x, ap + k, sizeof x); c = _mm512_dpbusd_epi32(c, _mm512_set1_epi32(x), wv);
            QAREP_STEP(a0, c0) QAREP_STEP(a1, c1) QAREP_STEP(a2, c2)
            QAREP_STEP(a3, c3) QAREP_STEP(a4, c4) QAREP_STEP(a5, c5)
#undef QAREP_STEP
        }
    }
    store_acc16_vnni(t[0], c0); store_acc16_vnni(t[1], c1); store_acc16_vnni(t[2], c2);
    store_acc16_vnni(t[3], c3); store_acc16_vnni(t[4], c4); store_acc16_vnni(t[5], c5);
}

// Two blocks (32 channels) at once: two weight loads and six broadcasts feed
// twelve vpdpbusd.
VNNI512 static void tile_vnni_wide(const int8_t *w, int64_t block_bytes, const uint8_t *const a[NR],
                                   const qarep_u8_source *s, int32_t t0[NR][MR], int32_t t1[NR][MR]) {
    __m512i l0 = _mm512_setzero_si512(), l1 = l0, l2 = l0, l3 = l0, l4 = l0, l5 = l0;
    __m512i h0 = l0, h1 = l0, h2 = l0, h3 = l0, h4 = l0, h5 = l0;
    for (int64_t tap = 0; tap < s->taps; tap++) {
        const int64_t off = s->tap_offsets[tap];
        const uint8_t *a0 = a[0] + off, *a1 = a[1] + off, *a2 = a[2] + off;
        const uint8_t *a3 = a[3] + off, *a4 = a[4] + off, *a5 = a[5] + off;
        const int8_t *wk = w + tap * s->segment * MR;
        for (int64_t k = 0; k < s->segment; k += 4, wk += 4 * MR) {
            const __m512i w0 = _mm512_loadu_si512((const void *)wk);
            const __m512i w1 = _mm512_loadu_si512((const void *)(wk + block_bytes));
            int32_t x;
#define QAREP_STEP(ap, lo, hi)                      \
            memcpy(&x, ap + k, sizeof x);           \
            {                                       \
                const __m512i b = _mm512_set1_epi32(x); \
                lo = _mm512_dpbusd_epi32(lo, b, w0);   \
                hi = _mm512_dpbusd_epi32(hi, b, w1);   \
            }
            QAREP_STEP(a0, l0, h0) QAREP_STEP(a1, l1, h1) QAREP_STEP(a2, l2, h2)
            QAREP_STEP(a3, l3, h3) QAREP_STEP(a4, l4, h4) QAREP_STEP(a5, l5, h5)
#undef QAREP_STEP
        }
    }
    store_acc16_vnni(t0[0], l0); store_acc16_vnni(t0[1], l1); store_acc16_vnni(t0[2], l2);
    store_acc16_vnni(t0[3], l3); store_acc16_vnni(t0[4], l4); store_acc16_vnni(t0[5], l5);
    store_acc16_vnni(t1[0], h0); store_acc16_vnni(t1[1], h1); store_acc16_vnni(t1[2], h2);
    store_acc16_vnni(t1[3], h3); store_acc16_vnni(t1[4], h4); store_acc16_vnni(t1[5], h5);
}
#endif

// MARK: - Epilogue

// Per-block copies of the channel parameters, zero-padded to 16 lanes, made
// once per call.
typedef struct {
    int64_t o0;
    int rows;
    int32_t bias[MR];
    double multiplier[MR];
} block_params;

static void prepare_block(block_params *b, int64_t o0, int64_t out_channels, const qarep_i8_epilogue *e) {
    b->o0 = o0;
    b->rows = out_channels - o0 < MR ? (int)(out_channels - o0) : MR;
    for (int r = 0; r < MR; r++) {
        b->bias[r] = r < b->rows && e->bias ? e->bias[o0 + r] : 0;
        b->multiplier[r] = r < b->rows && e->multiplier ? (double)e->multiplier[o0 + r] : 0;
    }
}

// Output element of channel 0 for each pixel of a tile, found with one
// division per tile; `contiguous` when the pixels are consecutive in one image.
typedef struct {
    int64_t base[NR];
    int count, contiguous;
} tile_pixels;

static void locate_pixels(const qarep_i8_epilogue *e, int64_t first, int count, tile_pixels *tp) {
    tp->count = count;
    if (e->pixel_offsets) {
        tp->contiguous = 0;
        for (int q = 0; q < count; q++) tp->base[q] = e->pixel_offsets[first + q];
        return;
    }
    int64_t n = first / e->plane, p = first - n * e->plane;
    tp->count = count;
    tp->contiguous = p + count <= e->plane;
    for (int q = 0; q < count; q++) {
        tp->base[q] = n * e->image_stride + p;
        if (++p == e->plane) { p = 0; n++; }
    }
}

static void store_raw(const int32_t t[NR][MR], const block_params *b, const tile_pixels *tp,
                      const qarep_i8_epilogue *e) {
    int32_t *out = (int32_t *)e->output + b->o0 * e->channel_stride;
    for (int q = 0; q < tp->count; q++)
        for (int r = 0; r < b->rows; r++)
            out[tp->base[q] + r * e->channel_stride] = wrapping_add(t[q][r], b->bias[r]);
}

static void store_tile_scalar(const int32_t t[NR][MR], const block_params *b, const tile_pixels *tp,
                              const qarep_i8_epilogue *e) {
    if (!e->multiplier) { store_raw(t, b, tp, e); return; }
    const double z = e->zero_point, lo = e->min, hi = e->max;
    const int64_t cs = e->pixel_offsets ? 1 : e->channel_stride, o = b->o0 * cs;
    for (int q = 0; q < tp->count; q++)
        for (int r = 0; r < b->rows; r++) {
            int32_t code = requantize1(wrapping_add(t[q][r], b->bias[r]), b->multiplier[r], z, lo, hi);
            if (e->output_int16) ((int16_t *)e->output)[o + tp->base[q] + r] = (int16_t)(code - e->zero_point);
            else store_code(e->output, o + tp->base[q] + r * cs, code ^ e->flip, e->output_signed);
        }
}

#if QAREP_X86
// Six consecutive pixels' codes (16 channels each) transposed to one 8-byte
// row per channel, pixels in the low six bytes.
AVX2 static inline void transpose6x16(const __m128i v[NR], uint64_t rows[MR]) {
    const __m128i z = _mm_setzero_si128();
    const __m128i a01l = _mm_unpacklo_epi8(v[0], v[1]), a01h = _mm_unpackhi_epi8(v[0], v[1]);
    const __m128i a23l = _mm_unpacklo_epi8(v[2], v[3]), a23h = _mm_unpackhi_epi8(v[2], v[3]);
    const __m128i a45l = _mm_unpacklo_epi8(v[4], v[5]), a45h = _mm_unpackhi_epi8(v[4], v[5]);
    const __m128i half[2][3] = {{a01l, a23l, a45l}, {a01h, a23h, a45h}};
    for (int h = 0; h < 2; h++) {  // channels 0-7, then 8-15
        const __m128i b03l = _mm_unpacklo_epi16(half[h][0], half[h][1]);  // 4 channels x pixels 0-3
        const __m128i b03h = _mm_unpackhi_epi16(half[h][0], half[h][1]);
        const __m128i b47l = _mm_unpacklo_epi16(half[h][2], z);           // 4 channels x pixels 4-7
        const __m128i b47h = _mm_unpackhi_epi16(half[h][2], z);
        const __m128i c[4] = {_mm_unpacklo_epi32(b03l, b47l), _mm_unpackhi_epi32(b03l, b47l),
                              _mm_unpacklo_epi32(b03h, b47h), _mm_unpackhi_epi32(b03h, b47h)};
        for (int i = 0; i < 4; i++) {
            rows[8 * h + 2 * i] = (uint64_t)_mm_cvtsi128_si64(c[i]);
            rows[8 * h + 2 * i + 1] = (uint64_t)_mm_extract_epi64(c[i], 1);
        }
    }
}

// Stores a tile's codes (16 channels of each pixel, already requantized):
// NHWC bytes, or NCHW planes.
AVX2 static void store_codes_avx2(const __m128i codes[NR], const block_params *b, const tile_pixels *tp,
                                  const qarep_i8_epilogue *e) {
    if (e->pixel_offsets) {
        // NHWC: a pixel's 16 channels are 16 consecutive bytes.
        uint8_t *out = (uint8_t *)e->output + b->o0;
        const __m128i flip = _mm_set1_epi8((char)e->flip);
        for (int q = 0; q < tp->count; q++) {
            const __m128i v = _mm_xor_si128(codes[q], flip);
            if (b->rows == MR) {
                _mm_storeu_si128((__m128i *)(out + tp->base[q]), v);
            } else {
                uint8_t bytes[MR];
                _mm_storeu_si128((__m128i *)bytes, v);
                memcpy(out + tp->base[q], bytes, (size_t)b->rows);
            }
        }
        return;
    }
    uint8_t *out = (uint8_t *)e->output + b->o0 * e->channel_stride;
    if (tp->count == NR && tp->contiguous) {
        // The common case: six bytes per channel plane instead of 96 byte stores.
        uint64_t rows[MR];
        transpose6x16(codes, rows);
        uint8_t *dst = out + tp->base[0];
        for (int r = 0; r < b->rows; r++, dst += e->channel_stride) {
            const uint32_t lo4 = (uint32_t)rows[r];
            const uint16_t hi2 = (uint16_t)(rows[r] >> 32);
            memcpy(dst, &lo4, 4);
            memcpy(dst + 4, &hi2, 2);
        }
        return;
    }
    for (int q = 0; q < tp->count; q++) {
        uint8_t bytes[MR];
        _mm_storeu_si128((__m128i *)bytes, codes[q]);
        for (int r = 0; r < b->rows; r++) out[tp->base[q] + r * e->channel_stride] = bytes[r];
    }
}

AVX2 static void store_tile_avx2(const int32_t t[NR][MR], const block_params *b, const tile_pixels *tp,
                                 const qarep_i8_epilogue *e) {
    if (!e->multiplier) { store_raw(t, b, tp, e); return; }
    const __m256d lo_z = _mm256_set1_pd(e->min - e->zero_point), hi_z = _mm256_set1_pd(e->max - e->zero_point);
    const __m128i z16 = _mm_set1_epi16((short)e->zero_point);
    __m256d m[4];
    for (int i = 0; i < 4; i++) m[i] = _mm256_loadu_pd(b->multiplier + 4 * i);
    const __m256i b0 = _mm256_loadu_si256((const __m256i *)b->bias);
    const __m256i b1 = _mm256_loadu_si256((const __m256i *)(b->bias + 8));
    if (e->output_int16) {
        // The next layer's int16 input: code - zero point, 16 channels in 32 bytes.
        int16_t *out = (int16_t *)e->output + b->o0;
        for (int q = 0; q < tp->count; q++) {
            __m256i a0 = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)t[q]), b0);
            __m256i a1 = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(t[q] + 8)), b1);
            __m128i w[2];
            requantize16_centered(a0, a1, m, lo_z, hi_z, w);
            int16_t *dst = out + tp->base[q];
            if (b->rows == MR) {
                _mm_storeu_si128((__m128i *)dst, w[0]);
                _mm_storeu_si128((__m128i *)(dst + 8), w[1]);
            } else {
                int16_t values[MR];
                _mm_storeu_si128((__m128i *)values, w[0]);
                _mm_storeu_si128((__m128i *)(values + 8), w[1]);
                memcpy(dst, values, sizeof(int16_t) * (size_t)b->rows);
            }
        }
        return;
    }
    __m128i codes[NR];
    for (int q = 0; q < tp->count; q++) {
        __m256i a0 = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)t[q]), b0);
        __m256i a1 = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(t[q] + 8)), b1);
        codes[q] = requantize16(a0, a1, m, lo_z, hi_z, z16, e->output_signed);
    }
    store_codes_avx2(codes, b, tp, e);
}

// Eight lanes of requantize1 in one register: the same Double product and
// round-to-nearest-even. The clamp to [lo, hi] after adding z is a clamp to
// [lo - z, hi - z] before rounding (rounding is monotone and keeps integers),
// so one conversion with the rounding mode embedded rounds, and the zero
// point is an integer add: four double operations instead of six.
VNNI512 static inline __m256i requantize8(__m256i v, __m512d m, __m512d lo_z, __m512d hi_z, __m256i z) {
    __m512d d = _mm512_mul_pd(_mm512_cvtepi32_pd(v), m);
    d = _mm512_min_pd(_mm512_max_pd(d, lo_z), hi_z);
    return _mm256_add_epi32(_mm512_cvt_roundpd_epi32(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), z);
}

// The VNNI path's epilogue: half the requantization instructions of the
// AVX2 one. Codes lie inside the 8-bit range, so truncating each int32 lane
// to its low byte gives the int8 or uint8 code.
VNNI512 static void store_tile_avx512(const int32_t t[NR][MR], const block_params *b, const tile_pixels *tp,
                                      const qarep_i8_epilogue *e) {
    if (!e->multiplier) { store_raw(t, b, tp, e); return; }
    const __m512d lo_z = _mm512_set1_pd(e->min - e->zero_point), hi_z = _mm512_set1_pd(e->max - e->zero_point);
    const __m256i z = _mm256_set1_epi32(e->zero_point);
    const __m512d m0 = _mm512_loadu_pd(b->multiplier), m1 = _mm512_loadu_pd(b->multiplier + 8);
    const __m512i bias = _mm512_loadu_si512((const void *)b->bias);
    __m128i codes[NR];
    for (int q = 0; q < tp->count; q++) {
        const __m512i a = _mm512_add_epi32(_mm512_loadu_si512((const void *)t[q]), bias);
        const __m256i r0 = requantize8(_mm512_castsi512_si256(a), m0, lo_z, hi_z, z);
        const __m256i r1 = requantize8(_mm512_extracti64x4_epi64(a, 1), m1, lo_z, hi_z, z);
        codes[q] = _mm512_cvtepi32_epi8(_mm512_inserti64x4(_mm512_castsi256_si512(r0), r1, 1));
    }
    store_codes_avx2(codes, b, tp, e);
}
#endif

// The operands of either packing: int16 weights and `x - z` (pairs of k), or
// int8 weights and unsigned bytes (quads of k). Offsets count elements.
typedef struct {
    const void *weights;
    int64_t block_bytes;      // one 16-channel block of packed weights
    const void *source;
    int64_t element_bytes;    // 2 (int16) or 1 (uint8)
    const int64_t *tap_offsets;
    int64_t taps, segment;
    const qarep_tap_runs *runs;  // NULL: every pixel reads its whole window
} operands;

// MARK: - AMX

#if QAREP_X86
// The tile configuration (palette 1): every tile 16 rows of 64 bytes.
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t columns[16];
    uint8_t rows[16];
} amx_config;

// 32 pixels by 32 channels per step with AMX tiles: tmm4 and tmm5 hold 16
// pixels each, 64 bytes of k per row (the pixels' activations gathered into
// rows as long as the padded reduction); tmm6 and tmm7 hold 64 k of 16 channels,
// which is 1 KiB of the VNNI packing as it stands ([k/4][16][4]); tdpbusd
// adds u8 x s8 products into the int32 tiles tmm0-3 exactly as vpdpbusd does.
// The VNNI epilogue then requantizes six pixels at a time.
AMX static void drive_amx(const operands *op, int64_t blocks, const block_params *params, const int64_t *pixel_offsets,
                          int64_t first_pixel, int64_t pixel_count, const qarep_i8_epilogue *e) {
    const int64_t kp = op->block_bytes / MR;  // the padded reduction: a block is [kp/4][16][4]
    // 64 bytes of slack after the last row: the copies below store whole vectors.
    uint8_t *a = aligned_alloc(64, (size_t)(32 * kp + 64));
    if (!a) abort();
    int32_t c[4][16][MR] __attribute__((aligned(64)));
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) { cfg.columns[i] = 64; cfg.rows[i] = 16; }
    _tile_loadconfig(&cfg);
    const uint8_t *source = op->source;
    const int8_t *weights = op->weights;
    for (int64_t p0 = 0; p0 < pixel_count; p0 += 32) {
        const int count = pixel_count - p0 < 32 ? (int)(pixel_count - p0) : 32;
        // Rows past the last pixel repeat it; their sums are not stored. Each
        // tap's segment is copied in whole 64-byte stores, the last load
        // masked to the segment: what a store writes past the segment is
        // overwritten by the next tap, or lands in the row's padding, where
        // the weights are zero, so it adds nothing.
        for (int r = 0; r < (count > 16 ? 32 : 16); r++) {
            const uint8_t *window = source + pixel_offsets[p0 + (r < count ? r : count - 1)];
            uint8_t *row = a + r * kp;
            for (int64_t tap = 0; tap < op->taps; tap++) {
                const uint8_t *src = window + op->tap_offsets[tap];
                uint8_t *dst = row + tap * op->segment;
                for (int64_t i = 0; i < op->segment; i += 64) {
                    const int64_t left = op->segment - i;
                    const __mmask64 m = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
                    _mm512_storeu_si512((void *)(dst + i), _mm512_maskz_loadu_epi8(m, src + i));
                }
            }
        }
        for (int64_t blk = 0; blk < blocks; blk += 2) {
            const int8_t *b0 = weights + blk * op->block_bytes;
            const int8_t *b1 = blk + 1 < blocks ? b0 + op->block_bytes : b0;
            _tile_zero(0); _tile_zero(1);
            if (count > 16) {
                _tile_zero(2); _tile_zero(3);
                for (int64_t kc = 0; kc < kp; kc += 64) {
                    _tile_loadd(4, a + kc, kp);
                    _tile_loadd(5, a + 16 * kp + kc, kp);
                    _tile_loadd(6, b0 + kc * MR, 64);
                    _tile_loadd(7, b1 + kc * MR, 64);
                    _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7);
                    _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
                }
                _tile_stored(2, c[2], 64); _tile_stored(3, c[3], 64);
            } else {
                // 16 pixels or fewer: one activation tile.
                for (int64_t kc = 0; kc < kp; kc += 64) {
                    _tile_loadd(4, a + kc, kp);
                    _tile_loadd(6, b0 + kc * MR, 64);
                    _tile_loadd(7, b1 + kc * MR, 64);
                    _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7);
                }
            }
            _tile_stored(0, c[0], 64); _tile_stored(1, c[1], 64);
            for (int q0 = 0; q0 < count;) {
                // Groups of at most NR pixels that stay inside one 16-pixel tile.
                const int half = q0 / 16, row = q0 % 16;
                int n = count - q0 < NR ? count - q0 : NR;
                if (row + n > 16) n = 16 - row;
                tile_pixels tp;
                locate_pixels(e, first_pixel + p0 + q0, n, &tp);
                store_tile_avx512((const int32_t (*)[MR])c[2 * half][row], &params[blk], &tp, e);
                if (blk + 1 < blocks) store_tile_avx512((const int32_t (*)[MR])c[2 * half + 1][row], &params[blk + 1], &tp, e);
                q0 += n;
            }
        }
    }
    _tile_release();
    free(a);
}
#endif

// MARK: - Driver

enum { KERNEL_SCALAR, KERNEL_AVX2, KERNEL_VNNI512, KERNEL_AMX, KERNEL_AVX2_BYTES };

static void drive(const operands *op, int64_t out_channels, const int64_t *pixel_offsets, int64_t first_pixel,
                  int64_t pixel_count, const qarep_i8_epilogue *epilogue, int kernel) {
    int32_t t[2][NR][MR] __attribute__((aligned(64)));
    const int64_t blocks = (out_channels + MR - 1) / MR;
    block_params *params = malloc(sizeof(block_params) * (size_t)blocks);
    if (!params) abort();
    for (int64_t blk = 0; blk < blocks; blk++) prepare_block(&params[blk], blk * MR, out_channels, epilogue);
#if QAREP_X86
    // AMX pays for its row gathering and tile set-up only on enough work:
    // two channel blocks (one would leave half of each step idle), four tiles
    // of reduction and 64 pixels. Measured with qarep bench on tiny and
    // a0-half: AMX everywhere ran tiny 10-35% slower than VNNI; with these
    // bounds every figure was faster. Smaller layers run the VNNI tile.
    if (kernel == KERNEL_AMX && blocks >= 2 && op->block_bytes / MR >= 256 && pixel_count >= 64) {
        drive_amx(op, blocks, params, pixel_offsets, first_pixel, pixel_count, epilogue);
        free(params);
        return;
    }
    if (kernel == KERNEL_AMX) kernel = KERNEL_VNNI512;
#endif
    // The VNNI tiles always read the whole window.
    const qarep_tap_runs *runs = kernel != KERNEL_VNNI512 ? op->runs : NULL;
    const int64_t run_count = qarep_tap_run_count(runs);
    const int64_t w_tap = op->segment * MR;
    const char *weights = op->weights;
    // Channel blocks in groups of about 128 KiB of weights, so a group stays
    // in L2 while the pixels pass; each tile's activations stay in L1 while
    // the group's blocks pass over them.
    int64_t group = (128 * 1024) / op->block_bytes;
    if (group < 1) group = 1;
    for (int64_t g0 = 0; g0 < blocks; g0 += group) {
        const int64_t g1 = g0 + group < blocks ? g0 + group : blocks;
        for (int64_t r = 0; r < run_count; r++) {
            // This call's pixels in run r, and the run's part of each window.
            qarep_tap_run_slice run;
            if (!qarep_slice_tap_run(runs, r, first_pixel, pixel_count, op->taps, op->segment, &run)) continue;
            const int64_t lo = run.lo, hi = run.hi;
            const char *source = (const char *)op->source + run.offset * op->element_bytes;
            const qarep_i8_source s16 = {(const int16_t *)source, op->tap_offsets + run.row0, run.taps, run.segment};
            const qarep_u8_source s8 = {(const uint8_t *)source, op->tap_offsets + run.row0, run.taps, run.segment};
            // Bytes into a block to the run's first tap row and column.
            const int64_t w_part = (run.row0 * w_tap + run.offset * MR) * op->element_bytes;
            for (int64_t p0 = lo; p0 < hi; p0 += NR) {
                const int count = hi - p0 < NR ? (int)(hi - p0) : NR;
                // A partial tile repeats its last pixel; the copies are not stored.
                const void *a[NR];
                for (int p = 0; p < NR; p++)
                    a[p] = source + pixel_offsets[p0 + (p < count ? p : count - 1)] * op->element_bytes;
                tile_pixels tp;
                locate_pixels(epilogue, first_pixel + p0, count, &tp);
                for (int64_t blk = g0; blk < g1; blk++) {
                    const void *w = weights + blk * op->block_bytes + w_part;
#if QAREP_X86
                    if (kernel == KERNEL_VNNI512) {
                        if (blk + 1 < g1) {
                            tile_vnni_wide(w, op->block_bytes, (const uint8_t *const *)a, &s8, t[0], t[1]);
                            store_tile_avx512(t[0], &params[blk], &tp, epilogue);
                            store_tile_avx512(t[1], &params[blk + 1], &tp, epilogue);
                            blk++;
                        } else {
                            tile_vnni(w, (const uint8_t *const *)a, &s8, t[0]);
                            store_tile_avx512(t[0], &params[blk], &tp, epilogue);
                        }
                        continue;
                    }
                    if (kernel == KERNEL_AVX2_BYTES) {
                        tile_avx2_u7(w, w_tap, (const uint8_t *const *)a, &s8, t[0]);
                        store_tile_avx2(t[0], &params[blk], &tp, epilogue);
                        continue;
                    }
                    if (kernel == KERNEL_AVX2) {
                        tile_avx2(w, w_tap, (const int16_t *const *)a, &s16, t[0]);
                        store_tile_avx2(t[0], &params[blk], &tp, epilogue);
                        continue;
                    }
#endif
                    tile_scalar(w, w_tap, (const int16_t *const *)a, &s16, t[0]);
                    store_tile_scalar(t[0], &params[blk], &tp, epilogue);
                }
            }
        }
    }
    free(params);
}

void qarep_i8_gemm(const int16_t *weights, int64_t out_channels, const qarep_i8_source *source,
                   const int64_t *pixel_offsets, int64_t first_pixel, int64_t pixel_count,
                   const qarep_i8_epilogue *epilogue, const qarep_tap_runs *runs, int use_avx2) {
    const operands op = {weights, source->taps * source->segment * MR * 2, source->source, 2,
                         source->tap_offsets, source->taps, source->segment, runs};
    drive(&op, out_channels, pixel_offsets, first_pixel, pixel_count, epilogue, use_avx2 ? KERNEL_AVX2 : KERNEL_SCALAR);
}

void qarep_u8s8_gemm(const int8_t *weights, int64_t out_channels, const qarep_u8_source *source,
                     const int64_t *pixel_offsets, int64_t first_pixel, int64_t pixel_count,
                     const qarep_i8_epilogue *epilogue, const qarep_tap_runs *runs, int kernel) {
    // Each block's reduction is padded to a multiple of 64 bytes: whole AMX tiles.
    const int64_t padded = (source->taps * source->segment + 63) & ~(int64_t)63;
    const operands op = {weights, padded * MR, source->source, 1,
                         source->tap_offsets, source->taps, source->segment, runs};
    drive(&op, out_channels, pixel_offsets, first_pixel, pixel_count, epilogue,
          kernel == QAREP_U8S8_AMX ? KERNEL_AMX : kernel == QAREP_U8S8_AVX2 ? KERNEL_AVX2_BYTES : KERNEL_VNNI512);
}

// MARK: - Layout conversion

// One image row of channel c: dst[x * cp] = src[x] - z for x < width.
#define QAREP_COPY_ROW(T, src, dst)                                               \
    do {                                                                          \
        const T *s_ = (const T *)(src);                                           \
        for (int64_t x = 0; x < width; x++) (dst)[x * cp] = (int16_t)(s_[x] - z); \
    } while (0)

void qarep_i8_to_padded_nhwc(const void *input, int input_signed, int32_t zero_point,
                             int64_t first_image, int64_t images, int64_t channels, int64_t height,
                             int64_t width, int64_t pad, int64_t padded_channels, int16_t *output) {
    const int64_t hp = height + 2 * pad, wp = width + 2 * pad, cp = padded_channels, plane = height * width;
    const int16_t z = (int16_t)zero_point;
    for (int64_t n = first_image; n < first_image + images; n++) {
        int16_t *img = output + n * hp * wp * cp;
        // Border rows, border columns and padding channels are real zero.
        memset(img, 0, sizeof(int16_t) * pad * wp * cp);
        memset(img + (pad + height) * wp * cp, 0, sizeof(int16_t) * pad * wp * cp);
        for (int64_t y = 0; y < height; y++) {
            int16_t *row = img + (y + pad) * wp * cp;
            if (channels < cp || pad > 0) memset(row, 0, sizeof(int16_t) * wp * cp);
            const int64_t src = (n * channels * height + y) * width;  // channel 0 of row y
            int16_t *dst = row + pad * cp;
            for (int64_t c = 0; c < channels; c++) {
                if (input_signed) QAREP_COPY_ROW(int8_t, (const int8_t *)input + src + c * plane, dst + c);
                else QAREP_COPY_ROW(uint8_t, (const uint8_t *)input + src + c * plane, dst + c);
            }
        }
    }
}
#undef QAREP_COPY_ROW

// Unsigned bytes for the VNNI kernel: u = x_q + 128 for int8 codes, x_q for
// uint8 codes; borders and padding channels hold the code of real zero,
// zero_point (+ 128 when signed), so that every tap contributes x_q - z_x
// once the kernel's caller subtracts that code times the weight sum.
void qarep_u8_to_padded_nhwc(const void *input, int input_signed, int32_t zero_point,
                             int64_t first_image, int64_t images, int64_t channels, int64_t height,
                             int64_t width, int64_t pad, int64_t padded_channels, uint8_t *output) {
    const int64_t hp = height + 2 * pad, wp = width + 2 * pad, cp = padded_channels, plane = height * width;
    const uint8_t zero = (uint8_t)(zero_point + (input_signed ? 128 : 0));
    const uint8_t flip = input_signed ? 0x80 : 0;  // int8 + 128 as a byte: the sign bit flipped
    for (int64_t n = first_image; n < first_image + images; n++) {
        uint8_t *img = output + n * hp * wp * cp;
        memset(img, zero, (size_t)(pad * wp * cp));
        memset(img + (pad + height) * wp * cp, zero, (size_t)(pad * wp * cp));
        for (int64_t y = 0; y < height; y++) {
            uint8_t *row = img + (y + pad) * wp * cp;
            if (channels < cp || pad > 0) memset(row, zero, (size_t)(wp * cp));
            const uint8_t *src = (const uint8_t *)input + (n * channels * height + y) * width;
            uint8_t *dst = row + pad * cp;
            for (int64_t c = 0; c < channels; c++)
                for (int64_t x = 0; x < width; x++) dst[x * cp + c] = src[c * plane + x] ^ flip;
        }
    }
}
