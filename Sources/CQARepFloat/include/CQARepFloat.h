// Float convolution kernels for QARep: an implicit GEMM on a zero-padded
// NHWC copy of the input, with bias and ReLU fused into the store.
//
// Operands (prepared by QARepKernels, FloatConvolution.swift):
//   weights   float [O, C, kh, kw] packed [ceil(O/16)][kh][kw][C][16]: for
//             each reduction index k = (i, j, c), the 16 channels of a block
//             side by side (one 512-bit or two 256-bit loads). Channels past
//             O are zero.
//   source    the padded NHWC input. Pixel p reads `taps` segments of
//             `segment` contiguous floats, segment t at
//             source + pixel_offsets[p] + tap_offsets[t]; for a convolution a
//             segment is one window row, kw * C values, and there are kh.
// Each output value is bias[o] + sum over k of w[o, k] * x[p, k], summed in
// k order with one fused multiply-add per term on every path, then ReLU'd if
// asked. The three paths may differ in the last bits only through FMA versus
// separate multiply and add in the portable loops.
#ifndef CQAREP_FLOAT_H
#define CQAREP_FLOAT_H

#include <stdint.h>
#include "CQARepRuns.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Output channels of one packed weight block.
#define QAREP_F32_MR 16

/// Instruction sets of the kernels, chosen at run time.
enum {
    QAREP_ISA_PORTABLE = 0,
    QAREP_ISA_AVX2 = 1,    // AVX2 + FMA
    QAREP_ISA_AVX512 = 2,  // AVX-512 F
};

/// The widest instruction set this CPU runs (checked once).
int qarep_f32_best_isa(void);

/// 1 when the CPU runs the AVX-512 subset of Skylake-SP and later (F, BW,
/// DQ, VL, CD): what OpenBLAS's SkylakeX kernels need.
int qarep_cpu_has_avx512_skx(void);

/// The activation operand. Offsets count floats.
typedef struct {
    const float *source;
    const int64_t *tap_offsets;
    int64_t taps;
    int64_t segment;
} qarep_f32_source;

/// Where results go: value (pixel p, channel o) is stored at
/// output[pixel_offsets[p] + o * channel_stride] (channel_stride 1 for NHWC,
/// the plane for NCHW). `bias` may be NULL.
typedef struct {
    const float *bias;
    int32_t relu;
    float *output;
    const int64_t *pixel_offsets;
    int64_t channel_stride;
} qarep_f32_epilogue;

/// Longest reduction (taps * segment) of the short-window path.
#define QAREP_F32_SHORT_K 16

/// 1 when qarep_f32_conv runs a convolution of this window shape on `isa`
/// straight from the padded input, however short its segments: AVX-512 and
/// AVX2 unroll a reduction of at most QAREP_F32_SHORT_K values and read each
/// pixel's inputs through an offset table. Otherwise (the portable loops)
/// segments shorter than a vector are better gathered into patch rows first.
int qarep_f32_reads_short_windows(int64_t taps, int64_t segment, int isa);

/// Pixels of one micro-tile on `isa` (a run shorter than this leaves lanes idle).
int qarep_f32_tile_pixels(int isa);

/// All `out_channels` outputs of `pixel_count` pixels; pixel p reads
/// source->source + pixel_offsets[p] and is stored at
/// epilogue->pixel_offsets[p]. `isa` must be one the CPU runs. With `runs`
/// (CQARepRuns.h; NULL: every pixel reads its whole window), pixel p is
/// pixel first_pixel + p of the list `runs` counts in.
void qarep_f32_conv(const float *weights, int64_t out_channels, const qarep_f32_source *source,
                    const int64_t *pixel_offsets, int64_t pixel_count,
                    const qarep_f32_epilogue *epilogue, const qarep_tap_runs *runs, int64_t first_pixel,
                    int isa);

/// NCHW floats of images first_image ..< first_image + images to a
/// zero-padded NHWC copy [N][H + 2 pad][W + 2 pad][C].
void qarep_f32_to_padded_nhwc(const float *input, int64_t first_image, int64_t images, int64_t channels,
                              int64_t height, int64_t width, int64_t pad, float *output);

/// Weight gradient of the convolution whose padded NHWC input is `source`:
/// dwt[k][o] += sum over p of x[p, k] * dy[p * dy_stride + o], k the packed
/// reduction index (i, j, c). `dy` is pixel-major with `dy_stride` floats a
/// row, a multiple of 16, zero past the real channels; `dwt` is
/// [kh * kw * C][dy_stride]. Each value is summed in pixel order with one
/// fused multiply-add per term on every path.
void qarep_f32_weight_gradient(const float *dy, int64_t dy_stride, const qarep_f32_source *source,
                               const int64_t *pixel_offsets, int64_t pixel_count, float *dwt, int isa);

/// Each pixel's patch as one row of taps * segment floats: row j of
/// `patches` is the segments at source + pixel_offsets[j] + tap_offsets[t].
void qarep_f32_gather_patches(const qarep_f32_source *source, const int64_t *pixel_offsets, int64_t pixel_count,
                              float *patches);

/// NCHW `[N, C, P]` to pixel-major rows of `row_stride` floats, zero past C.
void qarep_f32_to_pixel_major(const float *input, int64_t batch, int64_t channels, int64_t plane,
                              int64_t row_stride, float *output);

/// Fake quantization of `n` floats with one scale (the simulation's quantize
/// then dequantize): level = rint(x[i] / scale) + zero_point (round half to
/// even, the division in float), out[i] = (clamp(level, qmin, qmax) -
/// zero_point) * scale, and, unless `in_range` is NULL, in_range[i] = whether
/// level lay in [qmin, qmax]. NaN gives NaN, counted in range. The bounds and
/// zero point are small integers, so float sums are exact wherever the
/// clamp does not decide. Every path gives the same bits.
void qarep_f32_fake_quantize(const float *x, int64_t n, float scale, float zero_point, float qmin, float qmax,
                             float *out, _Bool *in_range, int isa);

/// Batch norm's passes over NCHW `[batch, channels, plane]` floats, for the
/// channels first ..< first + count over every image (the caller shares
/// channels among threads). A plane's sums keep 16 interleaved partial sums
/// (x[i] in lane i % 16 while a whole 16 remains), add the lanes in order from
/// -0, then the tail in order; products are a multiply then an add; each
/// channel's per-plane sums are added into a double in image order. g' is g,
/// or 0 where `relu_output` (when not NULL) is not positive; xhat is
/// (x - mean[c]) * inv_std[c]. Every path gives the same bits.

/// sums[c] = sum of x, squares[c] = sum of x * x.
void qarep_f32_bn_sums(const float *x, int64_t batch, int64_t channels, int64_t plane, int64_t first, int64_t count,
                       double *sums, double *squares, int isa);

/// y = xhat * gamma[c] + beta[c], then ReLU when `relu` is not 0 (in the
/// 16-lane part a negative value becomes +0; in the tail every value that is
/// not above 0, -0 included, does; NaN stays NaN).
void qarep_f32_bn_normalize(const float *x, int64_t batch, int64_t channels, int64_t plane, int64_t first,
                            int64_t count, const float *mean, const float *inv_std, const float *gamma,
                            const float *beta, int relu, float *y, int isa);

/// sum_g[c] = sum of g', sum_gh[c] = sum of g' * xhat.
void qarep_f32_bn_gradient_sums(const float *g, const float *x, const float *relu_output, int64_t batch,
                                int64_t channels, int64_t plane, int64_t first, int64_t count, const float *mean,
                                const float *inv_std, double *sum_g, double *sum_gh, int isa);

/// dx += scale[c] * ((g' - mean_g[c]) - xhat * mean_gh[c]), the training-mode
/// input gradient.
void qarep_f32_bn_add_input_gradient(const float *g, const float *x, const float *relu_output, int64_t batch,
                                     int64_t channels, int64_t plane, int64_t first, int64_t count, const float *mean,
                                     const float *inv_std, const float *scale, const float *mean_g,
                                     const float *mean_gh, float *dx, int isa);

/// One spin-wait hint (`pause` on x86): lets a waiting thread yield the
/// core's pipeline to its sibling and saves power while it polls.
static inline void qarep_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#ifdef __cplusplus
}
#endif

#endif
