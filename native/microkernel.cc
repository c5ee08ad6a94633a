#include "microkernel.h"

#include <algorithm>

namespace hype {

template <int R>
static void byVectors(int nv, const float* A, long rs, long ks, long kdim, const float* B, long ldb, float* C,
                      long ldc, float alpha, bool accumulate) {
  switch (nv) {
    case 1: microKernel<R, 1>(A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
#if defined(__AVX512F__)
    case 2: microKernel<R, 2>(A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
    case 3: microKernel<R, 3>(A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
    case 4: microKernel<R, 4>(A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
    default:  // 5 or 6 (callers never ask for more than NVWIDE)
      // Wide panels hold at most 4 rows of accumulators: larger row counts go in two calls.
      if (nv == 5) microKernel<(R < 4 ? R : 4), 5>(A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate);
      else microKernel<(R < 4 ? R : 4), 6>(A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate);
      if (R > 4) microKernelAny(R - 4, nv, A + 4 * rs, rs, ks, kdim, B, ldb, C + 4 * ldc, ldc, alpha, accumulate);
      break;
#else
    default: microKernel<R, 2>(A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
#endif
  }
}

void microKernelAny(int rows, int nv, const float* A, long rs, long ks, long kdim, const float* B, long ldb, float* C,
                    long ldc, float alpha, bool accumulate) {
  switch (rows) {
    case 1: byVectors<1>(nv, A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
    case 2: byVectors<2>(nv, A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
    case 3: byVectors<3>(nv, A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
    case 4: byVectors<4>(nv, A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
    case 5: byVectors<5>(nv, A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
    default: byVectors<6>(nv, A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
  }
}

void panelProduct(long m, int nv, const float* A, long rs, long ks, long kdim, const float* B, long ldb, float* C,
                  long ldc, float alpha, bool accumulate) {
  long i = 0;
  if (nv > NVMAX) {
    for (; i < m; i += 4)
      microKernelAny(int(std::min<long>(4, m - i)), nv, A + i * rs, rs, ks, kdim, B, ldb, C + i * ldc, ldc, alpha,
                     accumulate);
    return;
  }
  for (; i + RMAX <= m; i += RMAX)
    byVectors<RMAX>(nv, A + i * rs, rs, ks, kdim, B, ldb, C + i * ldc, ldc, alpha, accumulate);
  if (i < m) microKernelAny(int(m - i), nv, A + i * rs, rs, ks, kdim, B, ldb, C + i * ldc, ldc, alpha, accumulate);
}

}  // namespace hype
