#include <cblas.h>
// OpenBLAS extension: the thread count the library uses (deterministic runs pin it).
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
// glibc's allocator tuning (mallopt): BLAS-sized buffers stay mapped between steps (QARepKernels.MemoryTuning).
#include <malloc.h>
