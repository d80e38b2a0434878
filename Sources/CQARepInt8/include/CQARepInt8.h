// Integer GEMM for QARep's INT8 engine: int16 x int16 -> int32, exact.
//
// Operands (prepared by QARepKernels, IntegerGEMM.swift and QuantizedConvolution.swift):
//   weights   int8 [O, K'] widened to int16, packed [ceil(O/16)][K'/2][16][2]:
//             for each pair (k, k+1), 16 output channels, each as the pair.
//             K' is even; channel and K padding is zero.
//   source    activations `x_q - z_x` as int16. Pixel p reads `taps` segments
//             of `segment` (even) contiguous values, segment t at
//             source + pixel_offsets[p] + tap_offsets[t]; segments concatenated
//             give the pixel's K' values in the weights' k order. A plain GEMM
//             is one tap over a [N, K'] pixel-major matrix; a convolution is
//             kh taps (window rows) of kw * (channels rounded up to even)
//             values in a zero-padded NHWC copy of the input (implicit GEMM,
//             no im2col).
// The micro-tile is 16 channels x 6 pixels: per pair of k, two weight loads,
// six 32-bit broadcasts of (x[k], x[k+1]) and twelve vpmaddwd into 12 int32
// accumulators. |x| <= 255 and |w| <= 128 keep pair sums far below 2^31 and
// the dot product below 2^31 for K' <= 65,793: nothing saturates or wraps.
#ifndef CQAREP_INT8_H
#define CQAREP_INT8_H

#include <stdint.h>
#include "CQARepRuns.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Output channels of one micro-tile (the packing's channel block).
#define QAREP_I8_MR 16
/// Pixels of one micro-tile.
#define QAREP_I8_NR 6

/// Where the int32 accumulators go. With `multiplier == NULL` they are stored
/// raw as int32 (`bias` still added when not NULL). Otherwise each becomes
/// clamp(roundeven((double)(acc + bias[o]) * (double)multiplier[o]) + zero_point, min, max)
/// stored as int8 (`output_signed != 0`) or uint8. Pixel j of channel o lands
/// at element (j / plane) * image_stride + o * channel_stride + j % plane.
/// With `pixel_offsets` set (codes only), pixel j's channels are instead
/// consecutive bytes from pixel_offsets[j], each code XORed with `flip`: the
/// NHWC bytes of the next layer's VNNI input (flip 0x80 turns an int8 code
/// into code + 128). With `pixel_offsets` and `output_int16` set, pixel j's
/// channels are instead consecutive int16 from element pixel_offsets[j], each
/// `code - zero_point`: the next layer's padded int16 input (qarep_i8_gemm only).
typedef struct {
    const int32_t *bias;
    const float *multiplier;
    int32_t zero_point, min, max;
    int32_t output_signed;
    void *output;
    int64_t plane, channel_stride, image_stride;
    const int64_t *pixel_offsets;
    int32_t flip;
    int32_t output_int16;
} qarep_i8_epilogue;

/// The activation operand (see above). Offsets count int16 elements.
typedef struct {
    const int16_t *source;
    const int64_t *tap_offsets;
    int64_t taps;
    int64_t segment;
} qarep_i8_source;

/// The activation operand of the VNNI kernel: unsigned bytes (see
/// qarep_u8_to_padded_nhwc), `segment` a multiple of 4. Offsets count bytes.
typedef struct {
    const uint8_t *source;
    const int64_t *tap_offsets;
    int64_t taps;
    int64_t segment;
} qarep_u8_source;

/// 1 when the CPU runs AVX2 (checked once, with __builtin_cpu_supports).
int qarep_i8_avx2_available(void);

/// 1 when the CPU runs AVX-512 F, BW and VNNI (checked once).
int qarep_i8_vnni512_available(void);

/// 1 when the CPU runs AMX-TILE and AMX-INT8 (with AVX-512 VNNI) and Linux
/// granted this process the tile state (asked once, on the first call).
int qarep_i8_amx_available(void);

/// Accumulators of all `out_channels` for pixels first_pixel ..< first_pixel +
/// pixel_count, pixel first_pixel + p read at `pixel_offsets[p]`, stored by
/// the epilogue. `use_avx2` selects the AVX2 kernel (the caller checks
/// availability) or the portable loops; both give the same bits. With
/// `runs` (CQARepRuns.h; NULL: every pixel reads its whole window) pixel p
/// is pixel first_pixel + p of the list the runs count in. Runs are only for
/// a source whose skipped elements are arithmetic zero (int16 `x - z`, or
/// bytes whose zero code is 0): the sums are then exactly those of the whole
/// window. The AVX2 and portable kernels skip the border; VNNI and AMX read
/// the whole window, which is always right.
void qarep_i8_gemm(const int16_t *weights, int64_t out_channels, const qarep_i8_source *source,
                   const int64_t *pixel_offsets, int64_t first_pixel, int64_t pixel_count,
                   const qarep_i8_epilogue *epilogue, const qarep_tap_runs *runs, int use_avx2);

/// Kernels of qarep_u8s8_gemm.
#define QAREP_U8S8_VNNI 0
#define QAREP_U8S8_AMX 1
#define QAREP_U8S8_AVX2 2

/// The same contract as qarep_i8_gemm for the VNNI packing: weights int8
/// [ceil(O/16)][K''/4][16][4] (K'' = kh * kw * channels rounded up to 4,
/// then up to a multiple of 64 with zero weights: whole AMX tiles) and
/// unsigned activation bytes u, so the accumulator is sum w * u. The caller
/// folds `- u_zero * sum(w)` into the bias, which makes it sum w * (x_q - z_x)
/// exactly. `kernel`: QAREP_U8S8_VNNI (vpdpbusd; needs
/// qarep_i8_vnni512_available()), QAREP_U8S8_AMX (tdpbusd; needs
/// qarep_i8_amx_available()), or QAREP_U8S8_AVX2 (vpmaddubsw, then vpmaddwd
/// by ones; needs qarep_i8_avx2_available()). All give the same bits where
/// they are exact; AVX2's int16 pair sums saturate past 2^15 - 1, so it is
/// exact only when every activation byte the convolution reads is at most
/// 127 (a pair sum is then at most 2 * 127 * 128), which the caller ensures.
void qarep_u8s8_gemm(const int8_t *weights, int64_t out_channels, const qarep_u8_source *source,
                     const int64_t *pixel_offsets, int64_t first_pixel, int64_t pixel_count,
                     const qarep_i8_epilogue *epilogue, const qarep_tap_runs *runs, int kernel);

/// Requantizes `count` accumulators of one channel into 8-bit codes with the
/// epilogue's formula (`bias` and `multiplier` are scalars here).
void qarep_i8_requantize(const int32_t *acc, int64_t count, int32_t bias, float multiplier,
                         int32_t zero_point, int32_t min, int32_t max,
                         void *output, int output_signed, int use_avx2);

/// NCHW 8-bit codes (`input_signed`: int8, else uint8) of images
/// first_image ..< first_image + images to a zero-padded NHWC int16 copy
/// [N][H + 2 pad][W + 2 pad][padded_channels] of `x_q - zero_point`. Border
/// and channel padding are 0, i.e. real zero.
void qarep_i8_to_padded_nhwc(const void *input, int input_signed, int32_t zero_point,
                             int64_t first_image, int64_t images, int64_t channels, int64_t height,
                             int64_t width, int64_t pad, int64_t padded_channels, int16_t *output);

/// NCHW 8-bit codes of images first_image ..< first_image + images to the
/// VNNI kernel's zero-padded NHWC bytes [N][H + 2 pad][W + 2 pad][padded_channels]:
/// u = x_q + 128 for int8 codes (input_signed), x_q for uint8 codes. Border
/// and padding channels hold the code of real zero, zero_point (+ 128 when
/// signed).
void qarep_u8_to_padded_nhwc(const void *input, int input_signed, int32_t zero_point,
                             int64_t first_image, int64_t images, int64_t channels, int64_t height,
                             int64_t width, int64_t pad, int64_t padded_channels, uint8_t *output);

#ifdef __cplusplus
}
#endif

#endif
