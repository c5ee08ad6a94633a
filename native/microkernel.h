// The one register-blocked inner kernel every matrix product here is built from:
//   C[r][v] = (accumulate ? C[r][v] : 0) + alpha * sum_k A[r*rs + k*ks] * B[k*ldb + v*VL .. +VL)
// for r < R rows and v < NV vectors. A is read one scalar at a time (broadcast), so it may be any strided view of
// a row-major tensor (rows, or columns when transposed) with any length; B is a packed panel whose rows are whole
// vectors. R x NV accumulators stay in registers for the whole k loop (R*NV + NV + 1 <= the register file).
#pragma once
#include "simd.h"

namespace hype {

#if defined(__AVX512F__)
constexpr int NVMAX = 4;  // 6 x 4 accumulators + 4 panel vectors + 1 broadcast = 29 of 32 zmm registers
#else
constexpr int NVMAX = 2;  // 6 x 2 + 2 + 1 = 15 of 16 ymm/xmm registers
#endif
constexpr int RMAX = 6;
constexpr int PANEL = NVMAX * VL;  // floats per packed panel row: 64 with AVX-512, 16 with AVX2

template <int R, int NV>
inline void microKernel(const float* __restrict A, long rs, long ks, long kdim, const float* __restrict B, long ldb,
                        float* __restrict C, long ldc, float alpha, bool accumulate) {
  vf acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) acc[r][v] = vf{};
  const float* a = A;
  const float* b = B;
  for (long k = 0; k < kdim; k++) {
    vf bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) bv[v] = load(b + v * VL);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      const vf ar = splat(a[r * rs]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; v++) acc[r][v] += ar * bv[v];
    }
    a += ks;
    b += ldb;
  }
  const vf al = splat(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
      float* c = C + r * ldc + v * VL;
      store(c, accumulate ? load(c) + al * acc[r][v] : al * acc[r][v]);
    }
}

/** Dispatches rows (1..RMAX) and vectors (1..NVMAX) to the matching instantiation. */
void microKernelAny(int rows, int nv, const float* A, long rs, long ks, long kdim, const float* B, long ldb, float* C,
                    long ldc, float alpha, bool accumulate);

/**
 * C[m x nv*VL] (+)= alpha * A B over all rows m, blocked by RMAX rows: A[i*rs + k*ks], B packed with row stride ldb.
 * C's rows have stride ldc and must hold whole vectors (callers pad their scratch to vector multiples).
 */
void panelProduct(long m, int nv, const float* A, long rs, long ks, long kdim, const float* B, long ldb, float* C,
                  long ldc, float alpha, bool accumulate);

}  // namespace hype
