// Border runs; include/CQARepRuns.h describes them.
#include "CQARepRuns.h"

int64_t qarep_tap_run_count(const qarep_tap_runs *runs) { return runs ? runs->count : 1; }

int qarep_slice_tap_run(const qarep_tap_runs *runs, int64_t r, int64_t first_pixel, int64_t pixel_count,
                        int64_t taps, int64_t segment, qarep_tap_run_slice *slice) {
    if (!runs) {
        *slice = (qarep_tap_run_slice){0, pixel_count, 0, taps, 0, segment};
        return pixel_count > 0;
    }
    int64_t lo = (r > 0 ? runs->ends[r - 1] : 0) - first_pixel, hi = runs->ends[r] - first_pixel;
    if (lo < 0) lo = 0;
    if (hi > pixel_count) hi = pixel_count;
    if (lo >= hi) return 0;
    const int64_t channels = segment / runs->columns, row0 = runs->rows[2 * r], col0 = runs->cols[2 * r];
    *slice = (qarep_tap_run_slice){lo, hi, row0, runs->rows[2 * r + 1] - row0,
                                   col0 * channels, (runs->cols[2 * r + 1] - col0) * channels};
    return 1;
}
