// Per-function instruction sets for the float kernels (private to this
// target): vector code is compiled with target(...) attributes, so the rest
// of each file stays baseline x86-64 and qarep_f32_best_isa() picks a path
// at run time.
#ifndef CQAREP_FLOAT_TARGET_ISA_H
#define CQAREP_FLOAT_TARGET_ISA_H

#if defined(__x86_64__)
#include <immintrin.h>
#define QAREP_X86 1
#define AVX2 __attribute__((target("avx2,fma")))
#define AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define QAREP_X86 0
#endif

#endif
