// Batch norm's four passes over NCHW activations, for a range of channels
// over every image (include/CQARepFloat.h gives the arithmetic). The vector
// paths are compiled per function with target(...) (target_isa.h).
//
// Every path gives the bits of the Swift loops in QARepKernels'
// ChannelReductions.swift, the reference: a plane's sums keep 16 interleaved
// partial sums, add the lanes in order from -0, then the tail one value at
// a time; products are a multiply then an add (never fused: the pragma
// below stops the compiler from contracting them); per-image sums are added
// into doubles in image order. The maps are elementwise, so their tails may
// run in masked vectors.
//
// Planes under 16 values (the 2x2 and 1x1 stages of a 28x28 model)
// leave the lanes empty and the tail does all the work. On AVX-512 their
// sums run across 16 channels at once, one gathered vector per plane
// position, which keeps each channel's order.

#include "CQARepFloat.h"

#include "target_isa.h"

#pragma STDC FP_CONTRACT OFF

// MARK: - Portable (the tails of the vector paths)

/// Swift's `SIMD16<Float>.sum()`: the lanes in order, from -0.
static inline float lane_sum(const float *lanes) {
    float r = -0.0f;
    for (int k = 0; k < 16; k++) r += lanes[k];
    return r;
}

static inline float relu_masked(const float *g, const float *relu_output, int64_t i) {
    return relu_output ? (relu_output[i] > 0 ? g[i] : 0.0f) : g[i];
}

/// A plane's sums from index i on, one value at a time, after the lanes gave (a, b).
static inline void sums_tail(const float *x, int64_t i, int64_t plane, float a, float b, float *sum, float *squares) {
    for (; i < plane; i++) {
        const float v = x[i];
        a += v;
        b += v * v;
    }
    *sum = a; *squares = b;
}

/// `sums_tail` of the backward sums of g' and g' * xhat.
static inline void gradient_sums_tail(const float *g, const float *x, const float *relu_output, int64_t i, int64_t plane,
                                      float mean, float inv_std, float a, float b, float *sum_g, float *sum_gh) {
    for (; i < plane; i++) {
        const float gv = relu_masked(g, relu_output, i);
        a += gv;
        b += gv * ((x[i] - mean) * inv_std);
    }
    *sum_g = a; *sum_gh = b;
}

static void plane_sums(const float *x, int64_t plane, float *sum, float *squares) {
    float s[16] = {0}, ss[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= plane; i += 16)
        for (int k = 0; k < 16; k++) {
            const float v = x[i + k];
            s[k] += v;
            ss[k] += v * v;
        }
    sums_tail(x, i, plane, lane_sum(s), lane_sum(ss), sum, squares);
}

static void plane_gradient_sums(const float *g, const float *x, const float *relu_output, int64_t plane, float mean,
                                float inv_std, float *sum_g, float *sum_gh) {
    float s[16] = {0}, d[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= plane; i += 16)
        for (int k = 0; k < 16; k++) {
            const float gv = relu_masked(g, relu_output, i + k), h = (x[i + k] - mean) * inv_std;
            s[k] += gv;
            d[k] += gv * h;
        }
    gradient_sums_tail(g, x, relu_output, i, plane, mean, inv_std, lane_sum(s), lane_sum(d), sum_g, sum_gh);
}

static void normalize_portable(const float *x, int64_t n, float mean, float inv_std, float gamma, float beta, int relu,
                               float *y) {
    for (int64_t i = 0; i < n; i++) {
        const float v = ((x[i] - mean) * inv_std) * gamma + beta;
        // Swift's max(v, 0) in the reference's tail: +0 for -0, NaN for NaN.
        y[i] = relu ? (0.0f >= v ? 0.0f : v) : v;
    }
}

static void input_gradient_portable(const float *g, const float *x, const float *relu_output, int64_t n, float mean,
                                    float inv_std, float scale, float mean_g, float mean_gh, float *dx) {
    for (int64_t i = 0; i < n; i++)
        dx[i] += scale * (relu_masked(g, relu_output, i) - mean_g - ((x[i] - mean) * inv_std) * mean_gh);
}

// The reference's normalize runs 16 lanes, then the tail; ReLU differs on -0
// between the two (the lanes keep it), so a vector path must split a plane
// where the reference does.
static void normalize_plane_portable(const float *x, int64_t plane, float mean, float inv_std, float gamma, float beta,
                                     int relu, float *y) {
    int64_t i = 0;
    for (; i + 16 <= plane; i += 16)
        for (int k = 0; k < 16; k++) {
            const float v = ((x[i + k] - mean) * inv_std) * gamma + beta;
            y[i + k] = relu && v < 0 ? 0.0f : v;
        }
    normalize_portable(x + i, plane - i, mean, inv_std, gamma, beta, relu, y + i);
}

// MARK: - AVX2 (16 lanes as two ymm)

#if QAREP_X86
AVX2 static float hsum_avx2(__m256 lo, __m256 hi) {
    float lanes[16];
    _mm256_storeu_ps(lanes, lo);
    _mm256_storeu_ps(lanes + 8, hi);
    return lane_sum(lanes);
}

AVX2 static void plane_sums_avx2(const float *x, int64_t plane, float *sum, float *squares) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, q0 = s0, q1 = s0;
    int64_t i = 0;
    for (; i + 16 <= plane; i += 16) {
        const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        s0 = _mm256_add_ps(s0, v0); s1 = _mm256_add_ps(s1, v1);
        q0 = _mm256_add_ps(q0, _mm256_mul_ps(v0, v0)); q1 = _mm256_add_ps(q1, _mm256_mul_ps(v1, v1));
    }
    sums_tail(x, i, plane, i ? hsum_avx2(s0, s1) : 0.0f, i ? hsum_avx2(q0, q1) : 0.0f, sum, squares);
}

AVX2 static __m256 masked_gradient_avx2(const float *g, const float *relu_output, int64_t i) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    if (!relu_output) return gv;
    return _mm256_and_ps(gv, _mm256_cmp_ps(_mm256_loadu_ps(relu_output + i), _mm256_setzero_ps(), _CMP_GT_OQ));
}

AVX2 static void plane_gradient_sums_avx2(const float *g, const float *x, const float *relu_output, int64_t plane,
                                          float mean, float inv_std, float *sum_g, float *sum_gh) {
    const __m256 vm = _mm256_set1_ps(mean), vi = _mm256_set1_ps(inv_std);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, d0 = s0, d1 = s0;
    int64_t i = 0;
    for (; i + 16 <= plane; i += 16) {
        const __m256 g0 = masked_gradient_avx2(g, relu_output, i), g1 = masked_gradient_avx2(g, relu_output, i + 8);
        const __m256 h0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vi);
        const __m256 h1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm), vi);
        s0 = _mm256_add_ps(s0, g0); s1 = _mm256_add_ps(s1, g1);
        d0 = _mm256_add_ps(d0, _mm256_mul_ps(g0, h0)); d1 = _mm256_add_ps(d1, _mm256_mul_ps(g1, h1));
    }
    gradient_sums_tail(g, x, relu_output, i, plane, mean, inv_std, i ? hsum_avx2(s0, s1) : 0.0f,
                       i ? hsum_avx2(d0, d1) : 0.0f, sum_g, sum_gh);
}

AVX2 static void normalize_plane_avx2(const float *x, int64_t plane, float mean, float inv_std, float gamma,
                                      float beta, int relu, float *y) {
    const __m256 vm = _mm256_set1_ps(mean), vi = _mm256_set1_ps(inv_std), vg = _mm256_set1_ps(gamma);
    const __m256 vb = _mm256_set1_ps(beta), zero = _mm256_setzero_ps();
    int64_t i = 0;
    // Whole 16-lane blocks as the reference runs them, two ymm each.
    for (; i + 16 <= plane; i += 16)
        for (int64_t h = i; h < i + 16; h += 8) {
            __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + h), vm), vi), vg), vb);
            if (relu) v = _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
            _mm256_storeu_ps(y + h, v);
        }
    normalize_portable(x + i, plane - i, mean, inv_std, gamma, beta, relu, y + i);
}

AVX2 static void input_gradient_plane_avx2(const float *g, const float *x, const float *relu_output, int64_t plane,
                                           float mean, float inv_std, float scale, float mean_g, float mean_gh,
                                           float *dx) {
    const __m256 vm = _mm256_set1_ps(mean), vi = _mm256_set1_ps(inv_std), vs = _mm256_set1_ps(scale);
    const __m256 vg = _mm256_set1_ps(mean_g), vh = _mm256_set1_ps(mean_gh);
    int64_t i = 0;
    for (; i + 8 <= plane; i += 8) {
        const __m256 gv = masked_gradient_avx2(g, relu_output, i);
        const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vi);
        const __m256 t = _mm256_sub_ps(_mm256_sub_ps(gv, vg), _mm256_mul_ps(h, vh));
        _mm256_storeu_ps(dx + i, _mm256_add_ps(_mm256_loadu_ps(dx + i), _mm256_mul_ps(vs, t)));
    }
    input_gradient_portable(g + i, x + i, relu_output ? relu_output + i : 0, plane - i, mean, inv_std, scale, mean_g,
                            mean_gh, dx + i);
}

// MARK: - AVX-512

AVX512 static float hsum_avx512(__m512 v) {
    float lanes[16];
    _mm512_storeu_ps(lanes, v);
    return lane_sum(lanes);
}

AVX512 static void plane_sums_avx512(const float *x, int64_t plane, float *sum, float *squares) {
    __m512 s = _mm512_setzero_ps(), q = s;
    int64_t i = 0;
    for (; i + 16 <= plane; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        s = _mm512_add_ps(s, v);
        q = _mm512_add_ps(q, _mm512_mul_ps(v, v));
    }
    sums_tail(x, i, plane, i ? hsum_avx512(s) : 0.0f, i ? hsum_avx512(q) : 0.0f, sum, squares);
}

AVX512 static __m512 masked_gradient_avx512(const float *g, const float *relu_output, int64_t i) {
    const __m512 gv = _mm512_loadu_ps(g + i);
    if (!relu_output) return gv;
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(relu_output + i), _mm512_setzero_ps(), _CMP_GT_OQ), gv);
}

AVX512 static void plane_gradient_sums_avx512(const float *g, const float *x, const float *relu_output, int64_t plane,
                                              float mean, float inv_std, float *sum_g, float *sum_gh) {
    const __m512 vm = _mm512_set1_ps(mean), vi = _mm512_set1_ps(inv_std);
    __m512 s = _mm512_setzero_ps(), d = s;
    int64_t i = 0;
    for (; i + 16 <= plane; i += 16) {
        const __m512 gv = masked_gradient_avx512(g, relu_output, i);
        const __m512 h = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vi);
        s = _mm512_add_ps(s, gv);
        d = _mm512_add_ps(d, _mm512_mul_ps(gv, h));
    }
    gradient_sums_tail(g, x, relu_output, i, plane, mean, inv_std, i ? hsum_avx512(s) : 0.0f,
                       i ? hsum_avx512(d) : 0.0f, sum_g, sum_gh);
}

/// Adds 16 floats to 16 doubles at `acc`.
AVX512 static void add_to_doubles(double *acc, __m512 v) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    _mm512_storeu_pd(acc, _mm512_add_pd(_mm512_loadu_pd(acc), _mm512_cvtps_pd(_mm512_castps512_ps256(v))));
    _mm512_storeu_pd(acc + 8, _mm512_add_pd(_mm512_loadu_pd(acc + 8), _mm512_cvtps_pd(hi)));
}

/// One image's planes under 16 values, 16 channels at once: lane j adds
/// channel c + j's plane in order, from +0 (what the reference's empty lanes
/// sum to), then into its double. Returns the first channel left over.
AVX512 static int64_t small_plane_sums_avx512(const float *image, int64_t plane, int64_t first, int64_t count,
                                              double *sums, double *squares) {
    const __m512i lane = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)plane));
    int64_t c = first;
    for (; c + 16 <= first + count; c += 16) {
        const float *base = image + c * plane;
        __m512 a = _mm512_setzero_ps(), b = a;
        for (int64_t p = 0; p < plane; p++) {
            const __m512 v = _mm512_i32gather_ps(lane, base + p, 4);
            a = _mm512_add_ps(a, v);
            b = _mm512_add_ps(b, _mm512_mul_ps(v, v));
        }
        add_to_doubles(sums + c, a);
        add_to_doubles(squares + c, b);
    }
    return c;
}

/// `small_plane_sums_avx512` for the backward sums of g' and g' * xhat.
AVX512 static int64_t small_plane_gradient_sums_avx512(const float *g, const float *x, const float *relu_output,
                                                       int64_t plane, int64_t first, int64_t count, const float *mean,
                                                       const float *inv_std, double *sum_g, double *sum_gh) {
    const __m512i lane = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)plane));
    int64_t c = first;
    for (; c + 16 <= first + count; c += 16) {
        const __m512 vm = _mm512_loadu_ps(mean + c), vi = _mm512_loadu_ps(inv_std + c);
        const int64_t base = c * plane;
        __m512 a = _mm512_setzero_ps(), b = a;
        for (int64_t p = 0; p < plane; p++) {
            __m512 gv = _mm512_i32gather_ps(lane, g + base + p, 4);
            if (relu_output) {
                const __m512 r = _mm512_i32gather_ps(lane, relu_output + base + p, 4);
                gv = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, _mm512_setzero_ps(), _CMP_GT_OQ), gv);
            }
            const __m512 h = _mm512_mul_ps(_mm512_sub_ps(_mm512_i32gather_ps(lane, x + base + p, 4), vm), vi);
            a = _mm512_add_ps(a, gv);
            b = _mm512_add_ps(b, _mm512_mul_ps(gv, h));
        }
        add_to_doubles(sum_g + c, a);
        add_to_doubles(sum_gh + c, b);
    }
    return c;
}

AVX512 static void normalize_plane_avx512(const float *x, int64_t plane, float mean, float inv_std, float gamma,
                                          float beta, int relu, float *y) {
    const __m512 vm = _mm512_set1_ps(mean), vi = _mm512_set1_ps(inv_std), vg = _mm512_set1_ps(gamma);
    const __m512 vb = _mm512_set1_ps(beta), zero = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= plane; i += 16) {
        __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vi), vg), vb);
        if (relu) v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, zero);
        _mm512_storeu_ps(y + i, v);
    }
    if (i == plane) return;
    // The tail in one masked vector, with the reference tail's ReLU: 0 >= v ? +0 : v.
    const __mmask16 m = (__mmask16)((1u << (plane - i)) - 1);
    __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm), vi), vg), vb);
    if (relu) v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(zero, v, _CMP_GE_OQ), v, zero);
    _mm512_mask_storeu_ps(y + i, m, v);
}

AVX512 static void input_gradient_plane_avx512(const float *g, const float *x, const float *relu_output, int64_t plane,
                                               float mean, float inv_std, float scale, float mean_g, float mean_gh,
                                               float *dx) {
    const __m512 vm = _mm512_set1_ps(mean), vi = _mm512_set1_ps(inv_std), vs = _mm512_set1_ps(scale);
    const __m512 vg = _mm512_set1_ps(mean_g), vh = _mm512_set1_ps(mean_gh), zero = _mm512_setzero_ps();
    for (int64_t i = 0; i < plane; i += 16) {
        const __mmask16 m = plane - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (plane - i)) - 1);
        __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
        if (relu_output)
            gv = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m, relu_output + i), zero, _CMP_GT_OQ), gv);
        const __m512 h = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm), vi);
        const __m512 t = _mm512_sub_ps(_mm512_sub_ps(gv, vg), _mm512_mul_ps(h, vh));
        _mm512_mask_storeu_ps(dx + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dx + i), _mm512_mul_ps(vs, t)));
    }
}
#endif

// MARK: - Entry points
//
// Images outer, channels inner: a thread's channels of one image are one
// contiguous run, so every pass streams through memory in order (channel by
// channel, the planes of a 7x7 stage are 196-byte pieces a channel stride
// apart, which the prefetchers do not follow). Each channel's sums still
// add the images in order.

void qarep_f32_bn_sums(const float *x, int64_t batch, int64_t channels, int64_t plane, int64_t first, int64_t count,
                       double *sums, double *squares, int isa) {
    for (int64_t c = first; c < first + count; c++) sums[c] = squares[c] = 0;
    for (int64_t n = 0; n < batch; n++) {
        const float *image = x + n * channels * plane;
        int64_t c = first;
#if QAREP_X86
        if (isa == QAREP_ISA_AVX512 && plane < 16) c = small_plane_sums_avx512(image, plane, first, count, sums, squares);
#endif
        for (; c < first + count; c++) {
            const float *row = image + c * plane;
            float a, b;
#if QAREP_X86
            if (isa == QAREP_ISA_AVX512) plane_sums_avx512(row, plane, &a, &b);
            else if (isa == QAREP_ISA_AVX2) plane_sums_avx2(row, plane, &a, &b);
            else
#endif
                plane_sums(row, plane, &a, &b);
            sums[c] += (double)a;
            squares[c] += (double)b;
        }
    }
}

void qarep_f32_bn_normalize(const float *x, int64_t batch, int64_t channels, int64_t plane, int64_t first,
                            int64_t count, const float *mean, const float *inv_std, const float *gamma,
                            const float *beta, int relu, float *y, int isa) {
    for (int64_t n = 0; n < batch; n++)
        for (int64_t c = first; c < first + count; c++) {
            const int64_t base = (n * channels + c) * plane;
#if QAREP_X86
            if (isa == QAREP_ISA_AVX512) {
                normalize_plane_avx512(x + base, plane, mean[c], inv_std[c], gamma[c], beta[c], relu, y + base);
                continue;
            }
            if (isa == QAREP_ISA_AVX2) {
                normalize_plane_avx2(x + base, plane, mean[c], inv_std[c], gamma[c], beta[c], relu, y + base);
                continue;
            }
#endif
            normalize_plane_portable(x + base, plane, mean[c], inv_std[c], gamma[c], beta[c], relu, y + base);
        }
}

void qarep_f32_bn_gradient_sums(const float *g, const float *x, const float *relu_output, int64_t batch,
                                int64_t channels, int64_t plane, int64_t first, int64_t count, const float *mean,
                                const float *inv_std, double *sum_g, double *sum_gh, int isa) {
    for (int64_t c = first; c < first + count; c++) sum_g[c] = sum_gh[c] = 0;
    for (int64_t n = 0; n < batch; n++) {
        const int64_t image = n * channels * plane;
        const float *image_mask = relu_output ? relu_output + image : 0;
        int64_t c = first;
#if QAREP_X86
        if (isa == QAREP_ISA_AVX512 && plane < 16)
            c = small_plane_gradient_sums_avx512(g + image, x + image, image_mask, plane, first, count, mean, inv_std,
                                                 sum_g, sum_gh);
#endif
        for (; c < first + count; c++) {
            const int64_t base = image + c * plane;
            const float *mask = relu_output ? relu_output + base : 0;
            float a, b;
#if QAREP_X86
            if (isa == QAREP_ISA_AVX512)
                plane_gradient_sums_avx512(g + base, x + base, mask, plane, mean[c], inv_std[c], &a, &b);
            else if (isa == QAREP_ISA_AVX2)
                plane_gradient_sums_avx2(g + base, x + base, mask, plane, mean[c], inv_std[c], &a, &b);
            else
#endif
                plane_gradient_sums(g + base, x + base, mask, plane, mean[c], inv_std[c], &a, &b);
            sum_g[c] += (double)a;
            sum_gh[c] += (double)b;
        }
    }
}

void qarep_f32_bn_add_input_gradient(const float *g, const float *x, const float *relu_output, int64_t batch,
                                     int64_t channels, int64_t plane, int64_t first, int64_t count, const float *mean,
                                     const float *inv_std, const float *scale, const float *mean_g,
                                     const float *mean_gh, float *dx, int isa) {
    for (int64_t n = 0; n < batch; n++)
        for (int64_t c = first; c < first + count; c++) {
            const int64_t base = (n * channels + c) * plane;
            const float *mask = relu_output ? relu_output + base : 0;
#if QAREP_X86
            if (isa == QAREP_ISA_AVX512) {
                input_gradient_plane_avx512(g + base, x + base, mask, plane, mean[c], inv_std[c], scale[c], mean_g[c],
                                            mean_gh[c], dx + base);
                continue;
            }
            if (isa == QAREP_ISA_AVX2) {
                input_gradient_plane_avx2(g + base, x + base, mask, plane, mean[c], inv_std[c], scale[c], mean_g[c],
                                          mean_gh[c], dx + base);
                continue;
            }
#endif
            input_gradient_portable(g + base, x + base, mask, plane, mean[c], inv_std[c], scale[c], mean_g[c],
                                    mean_gh[c], dx + base);
        }
}
