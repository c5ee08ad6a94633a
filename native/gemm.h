#pragma once

namespace hype {

/** Row-major C = alpha op(A) op(B) + beta C (beta = 0 overwrites C, as BLAS does). Multithreaded on the pool. */
void sgemm(bool transA, bool transB, long m, long n, long k, float alpha, const float* A, long lda, const float* B,
           long ldb, float beta, float* C, long ldc);

}  // namespace hype
