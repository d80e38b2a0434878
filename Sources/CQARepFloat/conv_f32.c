// Float implicit-GEMM convolution; include/CQARepFloat.h describes the operands.
//
// The AVX2 and AVX-512 code is compiled per function with target(...), so the
// rest of the file, the portable loops included, stays baseline x86-64 and
// runs on any CPU; qarep_f32_best_isa() decides at run time.
//
// Micro-tiles: 16 channels (one weight block) by NR pixels, the accumulators
// in registers. Per reduction index: the block's 16 weights are loaded once,
// each pixel's input value is broadcast and multiplied into its accumulator.
// AVX2 holds 16 channels in two ymm registers by 6 pixels (12 accumulators);
// AVX-512 takes two blocks at once, 32 channels in two zmm registers by 8
// pixels (16 accumulators), and one block by 8 pixels for an odd last block.

#include "CQARepFloat.h"

#include <math.h>
#include <string.h>

#include "target_isa.h"

#define MR QAREP_F32_MR

int qarep_f32_best_isa(void) {
#if QAREP_X86
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) cached = QAREP_ISA_AVX512;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) cached = QAREP_ISA_AVX2;
        else cached = QAREP_ISA_PORTABLE;
    }
    return cached;
#else
    return QAREP_ISA_PORTABLE;
#endif
}

int qarep_cpu_has_avx512_skx(void) {
#if QAREP_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512cd");
#else
    return 0;
#endif
}

// One finished value: bias, ReLU.
static inline float finish(float acc, const float *bias, int64_t o, int relu) {
    float v = bias ? acc + bias[o] : acc;
    return relu && v < 0 ? 0 : v;
}

// MARK: - Portable

#define PORTABLE_NR 4

static void tile_portable(const float *w, int64_t w_tap, const float *const a[PORTABLE_NR], int count, int rows,
                          int64_t o0, const qarep_f32_source *s, const qarep_f32_epilogue *e, const int64_t *out) {
    float t[PORTABLE_NR][MR];
    memset(t, 0, sizeof t);
    for (int64_t tap = 0; tap < s->taps; tap++) {
        const int64_t off = s->tap_offsets[tap];
        const float *wt = w + tap * w_tap;
        for (int64_t k = 0; k < s->segment; k++)
            for (int p = 0; p < PORTABLE_NR; p++) {
                const float x = a[p][off + k];
                for (int r = 0; r < MR; r++) t[p][r] = fmaf(wt[k * MR + r], x, t[p][r]);
            }
    }
    for (int p = 0; p < count; p++)
        for (int r = 0; r < rows; r++)
            e->output[out[p] + (o0 + r) * e->channel_stride] = finish(t[p][r], e->bias, o0 + r, e->relu);
}

// MARK: - AVX2

#if QAREP_X86
#define AVX2_NR 6

// Bias, ReLU and the stores of a 16-channel by `count`-pixel tile: pixel p's
// channels o0 ..< o0 + rows go to e->output + out[p] + channel * channel_stride.
AVX2 static inline __attribute__((always_inline)) void
store_avx2(const __m256 lo[AVX2_NR], const __m256 hi[AVX2_NR], int count, int rows, int64_t o0,
           const qarep_f32_epilogue *e, const int64_t *out) {
    __m256 b0 = _mm256_setzero_ps(), b1 = b0;
    if (e->bias) {
        float padded[MR] = {0};
        memcpy(padded, e->bias + o0, sizeof(float) * (size_t)rows);
        b0 = _mm256_loadu_ps(padded);
        b1 = _mm256_loadu_ps(padded + 8);
    }
    const __m256 zero = _mm256_setzero_ps();
    for (int p = 0; p < count; p++) {
        __m256 v0 = _mm256_add_ps(lo[p], b0), v1 = _mm256_add_ps(hi[p], b1);
        if (e->relu) { v0 = _mm256_max_ps(v0, zero); v1 = _mm256_max_ps(v1, zero); }
        float *dst = e->output + out[p] + o0 * e->channel_stride;
        if (e->channel_stride == 1 && rows == MR) {
            _mm256_storeu_ps(dst, v0);
            _mm256_storeu_ps(dst + 8, v1);
        } else {
            float t[MR];
            _mm256_storeu_ps(t, v0);
            _mm256_storeu_ps(t + 8, v1);
            for (int r = 0; r < rows; r++) dst[r * e->channel_stride] = t[r];
        }
    }
}

AVX2 static void tile_avx2(const float *w, int64_t w_tap, const float *const a[AVX2_NR], int count, int rows,
                           int64_t o0, const qarep_f32_source *s, const qarep_f32_epilogue *e, const int64_t *out) {
    __m256 lo[AVX2_NR], hi[AVX2_NR];
    for (int p = 0; p < AVX2_NR; p++) lo[p] = hi[p] = _mm256_setzero_ps();
    for (int64_t tap = 0; tap < s->taps; tap++) {
        const int64_t off = s->tap_offsets[tap];
        const float *a0 = a[0] + off, *a1 = a[1] + off, *a2 = a[2] + off;
        const float *a3 = a[3] + off, *a4 = a[4] + off, *a5 = a[5] + off;
        const float *wk = w + tap * w_tap;
        for (int64_t k = 0; k < s->segment; k++, wk += MR) {
            const __m256 w0 = _mm256_loadu_ps(wk), w1 = _mm256_loadu_ps(wk + 8);
#define QAREP_STEP(p, ap)                                      \
            {                                                  \
                const __m256 b = _mm256_broadcast_ss(ap + k);  \
                lo[p] = _mm256_fmadd_ps(w0, b, lo[p]);         \
                hi[p] = _mm256_fmadd_ps(w1, b, hi[p]);         \
            }
            QAREP_STEP(0, a0) QAREP_STEP(1, a1) QAREP_STEP(2, a2)
            QAREP_STEP(3, a3) QAREP_STEP(4, a4) QAREP_STEP(5, a5)
#undef QAREP_STEP
        }
    }
    store_avx2(lo, hi, count, rows, o0, e, out);
}

// MARK: - AVX-512

#define AVX512_NR 8

AVX512 static inline void store_avx512(__m512 v, __m512 bias, __mmask16 mask, int relu, float *dst, int64_t cs, int rows) {
    v = _mm512_add_ps(v, bias);
    if (relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
    if (cs == 1) {
        _mm512_mask_storeu_ps(dst, mask, v);
    } else {
        float t[MR];
        _mm512_storeu_ps(t, v);
        for (int r = 0; r < rows; r++) dst[r * cs] = t[r];
    }
}

AVX512 static void tile_avx512(const float *w, int64_t w_tap, const float *const a[AVX512_NR], int count, int rows,
                               int64_t o0, const qarep_f32_source *s, const qarep_f32_epilogue *e, const int64_t *out) {
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    for (int64_t tap = 0; tap < s->taps; tap++) {
        const int64_t off = s->tap_offsets[tap];
        const float *a0 = a[0] + off, *a1 = a[1] + off, *a2 = a[2] + off;
        const float *a3 = a[3] + off, *a4 = a[4] + off, *a5 = a[5] + off;
        const float *a6 = a[6] + off, *a7 = a[7] + off;
        const float *wk = w + tap * w_tap;
        for (int64_t k = 0; k < s->segment; k++, wk += MR) {
            const __m512 wv = _mm512_loadu_ps(wk);
            c0 = _mm512_fmadd_ps(wv, _mm512_set1_ps(a0[k]), c0);
            c1 = _mm512_fmadd_ps(wv, _mm512_set1_ps(a1[k]), c1);
            c2 = _mm512_fmadd_ps(wv, _mm512_set1_ps(a2[k]), c2);
            c3 = _mm512_fmadd_ps(wv, _mm512_set1_ps(a3[k]), c3);
            c4 = _mm512_fmadd_ps(wv, _mm512_set1_ps(a4[k]), c4);
            c5 = _mm512_fmadd_ps(wv, _mm512_set1_ps(a5[k]), c5);
            c6 = _mm512_fmadd_ps(wv, _mm512_set1_ps(a6[k]), c6);
            c7 = _mm512_fmadd_ps(wv, _mm512_set1_ps(a7[k]), c7);
        }
    }
    const __mmask16 mask = (__mmask16)((1u << rows) - 1);
    const __m512 bias = e->bias ? _mm512_maskz_loadu_ps(mask, e->bias + o0) : _mm512_setzero_ps();
    const __m512 acc[AVX512_NR] = {c0, c1, c2, c3, c4, c5, c6, c7};
    for (int p = 0; p < count; p++)
        store_avx512(acc[p], bias, mask, e->relu, e->output + out[p] + o0 * e->channel_stride, e->channel_stride, rows);
}

// Two weight blocks (32 channels) by 8 pixels: two weight loads and eight
// broadcasts feed sixteen FMAs, fewer loads per FMA than the AVX2 tile at
// twice the width. Used while two blocks remain.
#define AVX512_WIDE_NR 8

AVX512 static void tile_avx512_wide(const float *w, int64_t w_tap, int64_t block_size,
                                    const float *const a[AVX512_WIDE_NR], int count, int rows1, int64_t o0,
                                    const qarep_f32_source *s, const qarep_f32_epilogue *e, const int64_t *out) {
    __m512 lo[AVX512_WIDE_NR], hi[AVX512_WIDE_NR];
    for (int p = 0; p < AVX512_WIDE_NR; p++) lo[p] = hi[p] = _mm512_setzero_ps();
    for (int64_t tap = 0; tap < s->taps; tap++) {
        const int64_t off = s->tap_offsets[tap];
        const float *a0 = a[0] + off, *a1 = a[1] + off, *a2 = a[2] + off;
        const float *a3 = a[3] + off, *a4 = a[4] + off, *a5 = a[5] + off;
        const float *a6 = a[6] + off, *a7 = a[7] + off;
        const float *wk = w + tap * w_tap;
        for (int64_t k = 0; k < s->segment; k++, wk += MR) {
            const __m512 w0 = _mm512_loadu_ps(wk), w1 = _mm512_loadu_ps(wk + block_size);
#define QAREP_STEP(p, ap)                                   \
            {                                               \
                const __m512 b = _mm512_set1_ps(ap[k]);     \
                lo[p] = _mm512_fmadd_ps(w0, b, lo[p]);      \
                hi[p] = _mm512_fmadd_ps(w1, b, hi[p]);      \
            }
            QAREP_STEP(0, a0) QAREP_STEP(1, a1) QAREP_STEP(2, a2)
            QAREP_STEP(3, a3) QAREP_STEP(4, a4) QAREP_STEP(5, a5)
            QAREP_STEP(6, a6) QAREP_STEP(7, a7)
#undef QAREP_STEP
        }
    }
    const __mmask16 mask1 = (__mmask16)((1u << rows1) - 1);
    const __m512 bias0 = e->bias ? _mm512_loadu_ps(e->bias + o0) : _mm512_setzero_ps();
    const __m512 bias1 = e->bias ? _mm512_maskz_loadu_ps(mask1, e->bias + o0 + MR) : _mm512_setzero_ps();
    const int64_t cs = e->channel_stride;
    for (int p = 0; p < count; p++) {
        float *dst = e->output + out[p] + o0 * cs;
        store_avx512(lo[p], bias0, (__mmask16)0xFFFF, e->relu, dst, cs, MR);
        store_avx512(hi[p], bias1, mask1, e->relu, dst + MR * cs, cs, rows1);
    }
}

// Reductions of at most QAREP_F32_SHORT_K values (a grey image's first
// layer: 3 taps of 3 floats) leave a tile little to do per pixel, so this
// path turns the loops around: a block's K weight vectors stay in registers
// for every pixel, and each pixel reads its K inputs through a per-index
// offset table. Eight pixels at a time keep eight FMA chains in flight. The
// sum is the same as the tile's: zero, then one FMA per index in k order.
#define SHORT_NR 8

AVX512 static inline __attribute__((always_inline)) void
short_block_avx512(const float *w, const int K, const int64_t *k_offsets, const float *source,
                   const int64_t *pixel_offsets, int64_t pixel_count, int rows, int64_t o0,
                   const qarep_f32_epilogue *e) {
    __m512 wv[QAREP_F32_SHORT_K];
    int64_t off[QAREP_F32_SHORT_K];
#pragma clang loop unroll(full)
    for (int k = 0; k < K; k++) { wv[k] = _mm512_loadu_ps(w + k * MR); off[k] = k_offsets[k]; }
    const __mmask16 mask = (__mmask16)((1u << rows) - 1);
    const __m512 bias = e->bias ? _mm512_maskz_loadu_ps(mask, e->bias + o0) : _mm512_setzero_ps();
    const int64_t *out = e->pixel_offsets;
    float *const dst0 = e->output + o0 * e->channel_stride;
    for (int64_t p0 = 0; p0 < pixel_count; p0 += SHORT_NR) {
        const int count = pixel_count - p0 < SHORT_NR ? (int)(pixel_count - p0) : SHORT_NR;
        // A partial group repeats its last pixel; the copies are not stored.
        const float *a[SHORT_NR];
        for (int p = 0; p < SHORT_NR; p++) a[p] = source + pixel_offsets[p0 + (p < count ? p : count - 1)];
        __m512 acc[SHORT_NR];
        for (int p = 0; p < SHORT_NR; p++) acc[p] = _mm512_setzero_ps();
#pragma clang loop unroll(full)
        for (int k = 0; k < K; k++)
            for (int p = 0; p < SHORT_NR; p++) acc[p] = _mm512_fmadd_ps(wv[k], _mm512_set1_ps(a[p][off[k]]), acc[p]);
        for (int p = 0; p < count; p++)
            store_avx512(acc[p], bias, mask, e->relu, dst0 + out[p0 + p], e->channel_stride, rows);
    }
}

// One instance per K of an instruction set's short-window block, and the
// table of them: the K loop unrolled into straight-line code (on AVX-512 the
// weight vectors in registers).
typedef void (*short_kernel)(const float *, const int64_t *, const float *, const int64_t *, int64_t, int, int64_t,
                             const qarep_f32_epilogue *);
#define QAREP_SHORT_INSTANCE(ISA, ATTR, K)                                                                    \
    ATTR static void short_##ISA##_##K(const float *w, const int64_t *k_offsets, const float *source,         \
                                       const int64_t *pixel_offsets, int64_t pixel_count, int rows, int64_t o0, \
                                       const qarep_f32_epilogue *e) {                                         \
        short_block_##ISA(w, K, k_offsets, source, pixel_offsets, pixel_count, rows, o0, e);                  \
    }
#define QAREP_SHORT_KERNELS(ISA, ATTR)                                                                        \
    QAREP_SHORT_INSTANCE(ISA, ATTR, 1) QAREP_SHORT_INSTANCE(ISA, ATTR, 2) QAREP_SHORT_INSTANCE(ISA, ATTR, 3)  \
    QAREP_SHORT_INSTANCE(ISA, ATTR, 4) QAREP_SHORT_INSTANCE(ISA, ATTR, 5) QAREP_SHORT_INSTANCE(ISA, ATTR, 6)  \
    QAREP_SHORT_INSTANCE(ISA, ATTR, 7) QAREP_SHORT_INSTANCE(ISA, ATTR, 8) QAREP_SHORT_INSTANCE(ISA, ATTR, 9)  \
    QAREP_SHORT_INSTANCE(ISA, ATTR, 10) QAREP_SHORT_INSTANCE(ISA, ATTR, 11) QAREP_SHORT_INSTANCE(ISA, ATTR, 12) \
    QAREP_SHORT_INSTANCE(ISA, ATTR, 13) QAREP_SHORT_INSTANCE(ISA, ATTR, 14) QAREP_SHORT_INSTANCE(ISA, ATTR, 15) \
    QAREP_SHORT_INSTANCE(ISA, ATTR, 16)                                                                       \
    static const short_kernel short_kernels_##ISA[QAREP_F32_SHORT_K + 1] = {                                  \
        NULL, short_##ISA##_1, short_##ISA##_2, short_##ISA##_3, short_##ISA##_4, short_##ISA##_5,            \
        short_##ISA##_6, short_##ISA##_7, short_##ISA##_8, short_##ISA##_9, short_##ISA##_10,                 \
        short_##ISA##_11, short_##ISA##_12, short_##ISA##_13, short_##ISA##_14, short_##ISA##_15,             \
        short_##ISA##_16,                                                                                     \
    };
QAREP_SHORT_KERNELS(avx512, AVX512)

// The same path on AVX2, in the tile's shape (16 channels in two ymm halves
// by 6 pixels): a block's 2K weight vectors do not fit in 16 registers, so
// they are loaded per step as in the tile, but the unrolled reduction reads
// each pixel's K inputs straight through the offset table instead of taking
// a copy of every patch first. Same sums as the tile's, in the same order.
AVX2 static inline __attribute__((always_inline)) void
short_block_avx2(const float *w, const int K, const int64_t *k_offsets, const float *source,
                 const int64_t *pixel_offsets, int64_t pixel_count, int rows, int64_t o0,
                 const qarep_f32_epilogue *e) {
    int64_t off[QAREP_F32_SHORT_K];
#pragma clang loop unroll(full)
    for (int k = 0; k < K; k++) off[k] = k_offsets[k];
    for (int64_t p0 = 0; p0 < pixel_count; p0 += AVX2_NR) {
        const int count = pixel_count - p0 < AVX2_NR ? (int)(pixel_count - p0) : AVX2_NR;
        // A partial group repeats its last pixel; the copies are not stored.
        const float *a[AVX2_NR];
        for (int p = 0; p < AVX2_NR; p++) a[p] = source + pixel_offsets[p0 + (p < count ? p : count - 1)];
        __m256 lo[AVX2_NR], hi[AVX2_NR];
        for (int p = 0; p < AVX2_NR; p++) lo[p] = hi[p] = _mm256_setzero_ps();
#pragma clang loop unroll(full)
        for (int k = 0; k < K; k++) {
            const __m256 w0 = _mm256_loadu_ps(w + k * MR), w1 = _mm256_loadu_ps(w + k * MR + 8);
            for (int p = 0; p < AVX2_NR; p++) {
                const __m256 b = _mm256_broadcast_ss(a[p] + off[k]);
                lo[p] = _mm256_fmadd_ps(w0, b, lo[p]);
                hi[p] = _mm256_fmadd_ps(w1, b, hi[p]);
            }
        }
        store_avx2(lo, hi, count, rows, o0, e, e->pixel_offsets + p0);
    }
}

QAREP_SHORT_KERNELS(avx2, AVX2)
#undef QAREP_SHORT_KERNELS
#undef QAREP_SHORT_INSTANCE

// A whole convolution on the short-window path, block by block.
static void conv_short(const short_kernel kernels[QAREP_F32_SHORT_K + 1], const float *weights, int64_t out_channels,
                       const qarep_f32_source *s, const int64_t *pixel_offsets, int64_t pixel_count,
                       const qarep_f32_epilogue *e) {
    const int64_t k = s->taps * s->segment;
    int64_t k_offsets[QAREP_F32_SHORT_K];
    for (int64_t i = 0; i < k; i++) k_offsets[i] = s->tap_offsets[i / s->segment] + i % s->segment;
    const short_kernel kernel = kernels[k];
    for (int64_t o0 = 0; o0 < out_channels; o0 += MR) {
        const int rows = out_channels - o0 < MR ? (int)(out_channels - o0) : MR;
        kernel(weights + (o0 / MR) * k * MR, k_offsets, s->source, pixel_offsets, pixel_count, rows, o0, e);
    }
}
#endif

// MARK: - Driver

int qarep_f32_reads_short_windows(int64_t taps, int64_t segment, int isa) {
    return (isa == QAREP_ISA_AVX512 || isa == QAREP_ISA_AVX2) && taps * segment <= QAREP_F32_SHORT_K;
}

int qarep_f32_tile_pixels(int isa) {
#if QAREP_X86
    if (isa == QAREP_ISA_AVX512) return AVX512_NR;
    if (isa == QAREP_ISA_AVX2) return AVX2_NR;
#endif
    return PORTABLE_NR;
}

void qarep_f32_conv(const float *weights, int64_t out_channels, const qarep_f32_source *source,
                    const int64_t *pixel_offsets, int64_t pixel_count,
                    const qarep_f32_epilogue *epilogue, const qarep_tap_runs *runs, int64_t first_pixel,
                    int isa) {
    const int64_t w_tap = source->segment * MR, block_size = source->taps * w_tap;
    const int64_t blocks = (out_channels + MR - 1) / MR;
#if QAREP_X86
    if (!runs && qarep_f32_reads_short_windows(source->taps, source->segment, isa)) {
        conv_short(isa == QAREP_ISA_AVX512 ? short_kernels_avx512 : short_kernels_avx2, weights, out_channels, source,
                   pixel_offsets, pixel_count, epilogue);
        return;
    }
#endif
    const int nr = qarep_f32_tile_pixels(isa);
    const int64_t run_count = qarep_tap_run_count(runs);
    // Channel blocks in groups of about 256 KiB of weights, so a group stays
    // in L2 while the pixel tiles pass; a tile's inputs stay in L1 while the
    // group's blocks pass over them.
    int64_t group = (256 * 1024) / (block_size * (int64_t)sizeof(float));
    if (group < 1) group = 1;
    for (int64_t g0 = 0; g0 < blocks; g0 += group) {
        const int64_t g1 = g0 + group < blocks ? g0 + group : blocks;
        for (int64_t r = 0; r < run_count; r++) {
            // This call's pixels in run r, and the run's part of each window.
            qarep_tap_run_slice run;
            if (!qarep_slice_tap_run(runs, r, first_pixel, pixel_count, source->taps, source->segment, &run)) continue;
            const int64_t lo = run.lo, hi = run.hi;
            const qarep_f32_source part = {source->source + run.offset, source->tap_offsets + run.row0, run.taps,
                                           run.segment};
            const int64_t w_part = run.row0 * w_tap + run.offset * MR;
            for (int64_t p0 = lo; p0 < hi; p0 += nr) {
                const int count = hi - p0 < nr ? (int)(hi - p0) : nr;
                // A partial tile repeats its last pixel; the copies are not stored.
                const float *a[8];
                for (int p = 0; p < nr; p++) a[p] = part.source + pixel_offsets[p0 + (p < count ? p : count - 1)];
                const int64_t *out = epilogue->pixel_offsets + p0;
                for (int64_t blk = g0; blk < g1; blk++) {
                    const int64_t o0 = blk * MR;
                    const int rows = out_channels - o0 < MR ? (int)(out_channels - o0) : MR;
                    const float *w = weights + blk * block_size + w_part;
#if QAREP_X86
                    if (isa == QAREP_ISA_AVX512) {
                        if (blk + 1 < g1) {
                            const int rows1 = out_channels - o0 - MR < MR ? (int)(out_channels - o0 - MR) : MR;
                            tile_avx512_wide(w, w_tap, block_size, a, count, rows1, o0, &part, epilogue, out);
                            blk++;
                        } else {
                            tile_avx512(w, w_tap, a, count, rows, o0, &part, epilogue, out);
                        }
                        continue;
                    }
                    if (isa == QAREP_ISA_AVX2) { tile_avx2(w, w_tap, a, count, rows, o0, &part, epilogue, out); continue; }
#endif
                    tile_portable(w, w_tap, a, count, rows, o0, &part, epilogue, out);
                }
            }
        }
    }
}

// MARK: - Layout

// The transpose behind every NCHW -> NHWC copy: `rows` channel rows of
// `cols` pixels each (row i at src + i * src_stride) become pixel vectors,
//
//     pixel(j)[i] = src[i * src_stride + j],  pixel(j) = dst + (j / width) * dst_row_stride + (j % width) * dst_stride
//
// so one call moves a whole image plane into a padded NHWC buffer, whose
// image rows are `dst_row_stride` floats apart. AVX2 moves 8x8 tiles (8
// channels of 8 consecutive pixels, wherever the image rows break) with
// unpack and permute; the edges, and CPUs without AVX2, go element by element.
static void transpose_portable(const float *src, int64_t src_stride, int64_t rows, int64_t first_col, int64_t cols,
                               int64_t width, float *dst, int64_t dst_row_stride, int64_t dst_stride) {
    int64_t y = first_col / width, x = first_col % width;
    for (int64_t j = first_col; j < cols; j++) {
        float *to = dst + y * dst_row_stride + x * dst_stride;
        for (int64_t i = 0; i < rows; i++) to[i] = src[i * src_stride + j];
        if (++x == width) { x = 0; y++; }
    }
}

#if QAREP_X86
AVX2 static void transpose_avx2(const float *src, int64_t src_stride, int64_t rows, int64_t cols, int64_t width,
                                float *dst, int64_t dst_row_stride, int64_t dst_stride) {
    const int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
    int64_t y = 0, x = 0;  // pixel j's image row and column
    for (int64_t j = 0; j < c8; j += 8) {
        float *to[8];
        for (int k = 0; k < 8; k++) {
            to[k] = dst + y * dst_row_stride + x * dst_stride;
            if (++x == width) { x = 0; y++; }
        }
        for (int64_t i = 0; i < r8; i += 8) {
            __m256 r[8], t[8];
            for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(src + (i + k) * src_stride + j);
            for (int k = 0; k < 8; k += 2) {
                t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
                t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
            }
            for (int k = 0; k < 8; k += 4) {
                r[k] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
                r[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
                r[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
                r[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
            }
            for (int k = 0; k < 4; k++) {
                _mm256_storeu_ps(to[k] + i, _mm256_permute2f128_ps(r[k], r[k + 4], 0x20));
                _mm256_storeu_ps(to[k + 4] + i, _mm256_permute2f128_ps(r[k], r[k + 4], 0x31));
            }
        }
        for (int64_t i = r8; i < rows; i++)
            for (int k = 0; k < 8; k++) to[k][i] = src[i * src_stride + j + k];
    }
    transpose_portable(src, src_stride, rows, c8, cols, width, dst, dst_row_stride, dst_stride);
}
#endif

static void transpose(const float *src, int64_t src_stride, int64_t rows, int64_t cols, int64_t width,
                      float *dst, int64_t dst_row_stride, int64_t dst_stride) {
    if (rows == 1 && dst_stride == 1) {
        // One channel (a grey image): a copy, image row by image row.
        for (int64_t j = 0; j < cols; j += width)
            memcpy(dst + j / width * dst_row_stride, src + j, sizeof(float) * (size_t)(cols - j < width ? cols - j : width));
        return;
    }
#if QAREP_X86
    if (qarep_f32_best_isa() >= QAREP_ISA_AVX2) {
        transpose_avx2(src, src_stride, rows, cols, width, dst, dst_row_stride, dst_stride);
        return;
    }
#endif
    transpose_portable(src, src_stride, rows, 0, cols, width, dst, dst_row_stride, dst_stride);
}

void qarep_f32_to_padded_nhwc(const float *input, int64_t first_image, int64_t images, int64_t channels,
                              int64_t height, int64_t width, int64_t pad, float *output) {
    const int64_t hp = height + 2 * pad, wp = width + 2 * pad, c = channels, plane = height * width;
    for (int64_t n = first_image; n < first_image + images; n++) {
        float *img = output + n * hp * wp * c;
        memset(img, 0, sizeof(float) * (size_t)(pad * wp * c));
        memset(img + (pad + height) * wp * c, 0, sizeof(float) * (size_t)(pad * wp * c));
        for (int64_t y = 0; y < height; y++) {
            float *row = img + (y + pad) * wp * c;
            memset(row, 0, sizeof(float) * (size_t)(pad * c));
            memset(row + (pad + width) * c, 0, sizeof(float) * (size_t)(pad * c));
        }
        // The [C][H * W] plane to the interior's [H][W][C], whole, so the 8x8
        // tiles run across image rows (7-pixel rows would leave none).
        transpose(input + n * c * plane, plane, c, plane, width, img + (pad * wp + pad) * c, wp * c, c);
    }
}

// MARK: - Weight gradient
//
// dwt[k][o] += sum over pixels p of x[p, k] * dy[p][o]: the weight gradient of
// the convolution, with x read in place from the padded NHWC input (the
// forward pass's own buffer) and dy pixel-major with rows of `dy_stride`
// floats (zero past out_channels, a multiple of 16). Micro-tiles: 16 or 32
// channels of dy (the vector) by up to WG_NK (AVX-512, portable) or 6 (AVX2)
// reduction indices of one window row (the broadcasts); the pixel loop is the
// reduction, accumulators stay in registers across it. A narrower tile
// repeats its last index and drops the copies.

#define WG_NK 8

static void wg_tile_portable(const float *dy, int64_t dy_stride, int64_t lanes, const float *const *x, const int64_t *win,
                             int64_t count, int nk, float *dwt, int64_t dwt_stride) {
    for (int t = 0; t < nk; t++)
        for (int64_t r = 0; r < lanes; r++) {
            float acc = dwt[t * dwt_stride + r];
            for (int64_t p = 0; p < count; p++) acc = fmaf(x[t][win[p]], dy[p * dy_stride + r], acc);
            dwt[t * dwt_stride + r] = acc;
        }
}

#if QAREP_X86
AVX2 static void wg_tile_avx2(const float *dy, int64_t dy_stride, const float *const *x, const int64_t *win,
                              int64_t count, int nk, float *dwt, int64_t dwt_stride) {
    // 16 channels (two ymm) by 6 indices.
    __m256 lo[6], hi[6];
    const float *xs[6];
    for (int t = 0; t < 6; t++) {
        const int tt = t < nk ? t : nk - 1;
        xs[t] = x[tt];
        lo[t] = _mm256_loadu_ps(dwt + tt * dwt_stride);
        hi[t] = _mm256_loadu_ps(dwt + tt * dwt_stride + 8);
    }
    for (int64_t p = 0; p < count; p++) {
        const __m256 d0 = _mm256_loadu_ps(dy + p * dy_stride), d1 = _mm256_loadu_ps(dy + p * dy_stride + 8);
        const int64_t w = win[p];
        for (int t = 0; t < 6; t++) {
            const __m256 b = _mm256_broadcast_ss(xs[t] + w);
            lo[t] = _mm256_fmadd_ps(d0, b, lo[t]);
            hi[t] = _mm256_fmadd_ps(d1, b, hi[t]);
        }
    }
    for (int t = 0; t < nk; t++) {
        _mm256_storeu_ps(dwt + t * dwt_stride, lo[t]);
        _mm256_storeu_ps(dwt + t * dwt_stride + 8, hi[t]);
    }
}

AVX512 static void wg_tile_avx512(const float *dy, int64_t dy_stride, int wide, const float *const *x,
                                  const int64_t *win, int64_t count, int nk, float *dwt, int64_t dwt_stride) {
    // 32 channels (two zmm) by 8 indices, or 16 by 8 when `wide` is 0.
    __m512 lo[WG_NK], hi[WG_NK];
    const float *xs[WG_NK];
    for (int t = 0; t < WG_NK; t++) {
        const int tt = t < nk ? t : nk - 1;
        xs[t] = x[tt];
        lo[t] = _mm512_loadu_ps(dwt + tt * dwt_stride);
        hi[t] = wide ? _mm512_loadu_ps(dwt + tt * dwt_stride + 16) : _mm512_setzero_ps();
    }
    if (wide) {
        for (int64_t p = 0; p < count; p++) {
            const __m512 d0 = _mm512_loadu_ps(dy + p * dy_stride), d1 = _mm512_loadu_ps(dy + p * dy_stride + 16);
            const int64_t w = win[p];
            for (int t = 0; t < WG_NK; t++) {
                const __m512 b = _mm512_set1_ps(xs[t][w]);
                lo[t] = _mm512_fmadd_ps(d0, b, lo[t]);
                hi[t] = _mm512_fmadd_ps(d1, b, hi[t]);
            }
        }
    } else {
        for (int64_t p = 0; p < count; p++) {
            const __m512 d0 = _mm512_loadu_ps(dy + p * dy_stride);
            const int64_t w = win[p];
            for (int t = 0; t < WG_NK; t++) lo[t] = _mm512_fmadd_ps(d0, _mm512_set1_ps(xs[t][w]), lo[t]);
        }
    }
    for (int t = 0; t < nk; t++) {
        _mm512_storeu_ps(dwt + t * dwt_stride, lo[t]);
        if (wide) _mm512_storeu_ps(dwt + t * dwt_stride + 16, hi[t]);
    }
}
#endif

void qarep_f32_weight_gradient(const float *dy, int64_t dy_stride, const qarep_f32_source *source,
                               const int64_t *pixel_offsets, int64_t pixel_count, float *dwt, int isa) {
    // Pixels in chunks, so that a chunk's dy rows and input windows stay in
    // L1 while every (channel, index) tile passes over them: a tile reads a
    // cache line of each per pixel, 8 KiB for 64 pixels. At 256 (32 KiB,
    // all of Zen 3's L1) the AVX2 tile ran 17% longer on a0-half; at 32 the
    // accumulator loads and stores began to show.
    const int64_t chunk = 64;
    // Reduction indices per tile: AVX2's is 6 wide, and stepping it by 8
    // left a tile of 2 that computed 6 (a third of the work wasted on
    // segments of 3 x 24, 48 or 96 channels, all multiples of 6).
    const int step = isa == QAREP_ISA_AVX2 ? 6 : WG_NK;
    for (int64_t p0 = 0; p0 < pixel_count; p0 += chunk) {
        const int64_t count = pixel_count - p0 < chunk ? pixel_count - p0 : chunk;
        const float *d = dy + p0 * dy_stride;
        const int64_t *win = pixel_offsets + p0;
        for (int64_t tap = 0; tap < source->taps; tap++) {
            for (int64_t k0 = 0; k0 < source->segment; k0 += step) {
                const int nk = source->segment - k0 < step ? (int)(source->segment - k0) : step;
                const float *x[WG_NK];
                for (int t = 0; t < WG_NK; t++)
                    x[t] = source->source + source->tap_offsets[tap] + k0 + (t < nk ? t : nk - 1);
                float *rows = dwt + (tap * source->segment + k0) * dy_stride;
                for (int64_t o0 = 0; o0 < dy_stride;) {
#if QAREP_X86
                    if (isa == QAREP_ISA_AVX512) {
                        const int wide = o0 + 32 <= dy_stride;
                        wg_tile_avx512(d + o0, dy_stride, wide, x, win, count, nk, rows + o0, dy_stride);
                        o0 += wide ? 32 : 16;
                        continue;
                    }
                    if (isa == QAREP_ISA_AVX2) {
                        wg_tile_avx2(d + o0, dy_stride, x, win, count, nk, rows + o0, dy_stride);
                        o0 += 16;
                        continue;
                    }
#endif
                    wg_tile_portable(d + o0, dy_stride, 16, x, win, count, nk, rows + o0, dy_stride);
                    o0 += 16;
                }
            }
        }
    }
}

void qarep_f32_to_pixel_major(const float *input, int64_t batch, int64_t channels, int64_t plane,
                              int64_t row_stride, float *output) {
    for (int64_t n = 0; n < batch; n++) {
        float *rows = output + n * plane * row_stride;
        transpose(input + n * channels * plane, plane, channels, plane, plane, rows, plane * row_stride, row_stride);
        if (channels < row_stride)
            for (int64_t p = 0; p < plane; p++)
                memset(rows + p * row_stride + channels, 0, sizeof(float) * (size_t)(row_stride - channels));
    }
}

void qarep_f32_gather_patches(const qarep_f32_source *source, const int64_t *pixel_offsets, int64_t pixel_count,
                              float *patches) {
    const int64_t k = source->taps * source->segment;
    for (int64_t j = 0; j < pixel_count; j++)
        for (int64_t t = 0; t < source->taps; t++)
            memcpy(patches + j * k + t * source->segment, source->source + pixel_offsets[j] + source->tap_offsets[t],
                   sizeof(float) * (size_t)source->segment);
}
