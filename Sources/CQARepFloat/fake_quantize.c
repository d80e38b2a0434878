// Fake quantization (quantize, then dequantize) of float runs that share one
// scale; include/CQARepFloat.h gives the arithmetic. The vector paths are
// compiled per function with target(...) (target_isa.h).

#include "CQARepFloat.h"

#include <math.h>

#include "target_isa.h"

// The reference and the tail of the vector paths.

static void fake_quantize_portable(const float *x, int64_t n, float scale, float zero_point, float qmin, float qmax,
                                   float *out, _Bool *in_range) {
    for (int64_t i = 0; i < n; i++) {
        const float level = rintf(x[i] / scale) + zero_point;
        if (isnan(level)) { out[i] = NAN; if (in_range) in_range[i] = 1; continue; }
        if (in_range) in_range[i] = !(level < qmin || level > qmax);
        const float clamped = level < qmin ? qmin : (level > qmax ? qmax : level);
        out[i] = scale * (clamped - zero_point);
    }
}

#if QAREP_X86
AVX2 static void fake_quantize_avx2(const float *x, int64_t n, float scale, float zero_point, float qmin, float qmax,
                                    float *out, _Bool *in_range) {
    const __m256 vs = _mm256_set1_ps(scale), vz = _mm256_set1_ps(zero_point);
    const __m256 lo = _mm256_set1_ps(qmin), hi = _mm256_set1_ps(qmax), nan = _mm256_set1_ps(NAN);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 q = _mm256_div_ps(_mm256_loadu_ps(x + i), vs);
        const __m256 level = _mm256_add_ps(_mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz);
        const __m256 clamped = _mm256_min_ps(_mm256_max_ps(level, lo), hi);
        __m256 y = _mm256_mul_ps(vs, _mm256_sub_ps(clamped, vz));
        y = _mm256_blendv_ps(y, nan, _mm256_cmp_ps(level, level, _CMP_UNORD_Q));
        _mm256_storeu_ps(out + i, y);
        if (in_range) {
            const __m256 out_of_range = _mm256_or_ps(_mm256_cmp_ps(level, lo, _CMP_LT_OQ), _mm256_cmp_ps(level, hi, _CMP_GT_OQ));
            const int bits = _mm256_movemask_ps(out_of_range);
            for (int k = 0; k < 8; k++) in_range[i + k] = !((bits >> k) & 1);
        }
    }
    fake_quantize_portable(x + i, n - i, scale, zero_point, qmin, qmax, out + i, in_range ? in_range + i : NULL);
}

AVX512 static void fake_quantize_avx512(const float *x, int64_t n, float scale, float zero_point, float qmin, float qmax,
                                        float *out, _Bool *in_range) {
    const __m512 vs = _mm512_set1_ps(scale), vz = _mm512_set1_ps(zero_point);
    const __m512 lo = _mm512_set1_ps(qmin), hi = _mm512_set1_ps(qmax), nan = _mm512_set1_ps(NAN);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 q = _mm512_div_ps(_mm512_loadu_ps(x + i), vs);
        const __m512 level = _mm512_add_ps(_mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz);
        const __m512 clamped = _mm512_min_ps(_mm512_max_ps(level, lo), hi);
        const __m512 y = _mm512_mul_ps(vs, _mm512_sub_ps(clamped, vz));
        _mm512_storeu_ps(out + i, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(level, level, _CMP_UNORD_Q), y, nan));
        if (in_range) {
            const __mmask16 out_of_range = _mm512_cmp_ps_mask(level, lo, _CMP_LT_OQ) | _mm512_cmp_ps_mask(level, hi, _CMP_GT_OQ);
            const __m128i bytes = _mm512_cvtepi32_epi8(_mm512_maskz_set1_epi32((__mmask16)~out_of_range, 1));
            _mm_storeu_si128((__m128i *)(in_range + i), bytes);
        }
    }
    fake_quantize_portable(x + i, n - i, scale, zero_point, qmin, qmax, out + i, in_range ? in_range + i : NULL);
}
#endif

void qarep_f32_fake_quantize(const float *x, int64_t n, float scale, float zero_point, float qmin, float qmax,
                             float *out, _Bool *in_range, int isa) {
#if QAREP_X86
    if (isa == QAREP_ISA_AVX512) { fake_quantize_avx512(x, n, scale, zero_point, qmin, qmax, out, in_range); return; }
    if (isa == QAREP_ISA_AVX2) { fake_quantize_avx2(x, n, scale, zero_point, qmin, qmax, out, in_range); return; }
#endif
    fake_quantize_portable(x, n, scale, zero_point, qmin, qmax, out, in_range);
}
