#include "microkernel.h"

namespace hype {

template <int R>
static void byVectors(int nv, const float* A, long rs, long ks, long kdim, const float* B, long ldb, float* C,
                      long ldc, float alpha, bool accumulate) {
  switch (nv) {
    case 1: microKernel<R, 1>(A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
#if defined(__AVX512F__)
    case 2: microKernel<R, 2>(A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
    case 3: microKernel<R, 3>(A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
    default: microKernel<R, 4>(A, rs, ks, kdim, B, ldb, C, ldc, alpha, accumulate); break;
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
  for (; i + RMAX <= m; i += RMAX)
    byVectors<RMAX>(nv, A + i * rs, rs, ks, kdim, B, ldb, C + i * ldc, ldc, alpha, accumulate);
  if (i < m) microKernelAny(int(m - i), nv, A + i * rs, rs, ks, kdim, B, ldb, C + i * ldc, ldc, alpha, accumulate);
}

}  // namespace hype
