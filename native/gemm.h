#pragma once

namespace hype {

/** C = beta C over m rows of n (stride ldc), on the pool; beta = 0 writes zeros (no NaN from 0 * inf), 1 is a no-op. */
void scaleRows(long m, long n, float beta, float* C, long ldc);

/** Row-major C = alpha op(A) op(B) + beta C (beta = 0 overwrites C, as BLAS does). Multithreaded on the pool. */
void sgemm(bool transA, bool transB, long m, long n, long k, float alpha, const float* A, long lda, const float* B,
           long ldb, float beta, float* C, long ldc);

}  // namespace hype
