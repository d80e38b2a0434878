// Border runs, shared by the float (CQARepFloat) and integer (CQARepInt8)
// convolution kernels: on a small map most windows overlap the zero
// padding, and a pixel in the top row of a 3x3 convolution, padding 1,
// reads nothing from tap row 0. QARepKernels' BorderTapRuns orders a
// layer's pixels by border class and cuts them into runs; the kernels
// multiply each run's pixels by its part of the window only.
#ifndef CQAREP_RUNS_H
#define CQAREP_RUNS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Output pixels in runs that read only part of each window. Run i holds
/// the pixels from ends[i - 1] (0 for the first) to ends[i], counted in the
/// full pixel list the caller cut its call from, and reads tap rows
/// rows[2i] ..< rows[2i + 1] and window columns cols[2i] ..< cols[2i + 1];
/// a segment is `columns` window columns of segment / columns values each.
/// Skipped terms are products with zero padding: the sums are those of the
/// whole window (float: up to the sign of an exact zero).
typedef struct {
    int64_t count;
    const int64_t *ends;
    const int32_t *rows;
    const int32_t *cols;
    int64_t columns;
} qarep_tap_runs;

/// One run's share of a kernel call.
typedef struct {
    int64_t lo, hi;          // the call's pixels in the run, lo ..< hi, counted from the call's first
    int64_t row0, taps;      // the tap rows read: row0 ..< row0 + taps
    int64_t offset, segment; // the values read of each tap row: offset ..< offset + segment
} qarep_tap_run_slice;

/// How many runs `runs` has; NULL stands for one run of every pixel reading
/// its whole window.
int64_t qarep_tap_run_count(const qarep_tap_runs *runs);

/// Run r's share of a call over pixels first_pixel ..< first_pixel +
/// pixel_count of a convolution whose windows are `taps` tap rows of
/// `segment` values; 0 when the call has none of the run's pixels.
int qarep_slice_tap_run(const qarep_tap_runs *runs, int64_t r, int64_t first_pixel, int64_t pixel_count,
                        int64_t taps, int64_t segment, qarep_tap_run_slice *slice);

#ifdef __cplusplus
}
#endif

#endif
