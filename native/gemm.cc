// Blocked sgemm in the GotoBLAS shape: op(B) is packed into kc x PANEL panels (shared by all threads, L2-sized),
// op(A) is read in place through strides (its mc x kc block stays in L2 across the panels), and the register
// kernel in microkernel.h does the arithmetic. Tasks are (row block, panel) pairs claimed dynamically.
#include "gemm.h"

#include <algorithm>
#include <vector>

#include "microkernel.h"
#include "pool.h"

namespace hype {

namespace {
constexpr long KC = 256;
constexpr long NC = 8 * 64;  // a multiple of PANEL on every target
constexpr long MC = 96;      // a multiple of RMAX
}  // namespace

void scaleRows(long m, long n, float beta, float* C, long ldc) {
  if (beta == 1.0f) return;
  Pool::instance().run((m + MC - 1) / MC, [&](long t, int) {
    for (long i = t * MC; i < std::min(m, (t + 1) * MC); i++) {
      float* c = C + i * ldc;
      if (beta == 0.0f)
        std::fill(c, c + n, 0.0f);
      else
        for (long j = 0; j < n; j++) c[j] *= beta;
    }
  });
}

void sgemm(bool transA, bool transB, long m, long n, long k, float alpha, const float* A, long lda, const float* B,
           long ldb, float beta, float* C, long ldc) {
  if (m <= 0 || n <= 0) return;
  Pool& pool = Pool::instance();
  const long rowBlocks = (m + MC - 1) / MC;
  scaleRows(m, n, beta, C, ldc);
  if (k <= 0 || alpha == 0.0f) return;

  // Scratch kept per calling thread and grown, never shrunk: zero-filling a fresh KC x NC panel (512 KB) cost ~10 us,
  // more than the arithmetic of the small products the explicit encodings issue by the thousand.
  static thread_local std::vector<float> packedStore, edgeStore;
  const size_t packedNeed = size_t(KC) * size_t(std::min(NC, (n + PANEL - 1) / PANEL * PANEL));
  const size_t edgeNeed = size_t(pool.size()) * MC * PANEL;  // per-thread tile for a ragged last panel
  if (packedStore.size() < packedNeed) packedStore.resize(packedNeed);
  if (edgeStore.size() < edgeNeed) edgeStore.resize(edgeNeed);
  float* const packed = packedStore.data();
  float* const edge = edgeStore.data();
  for (long jc = 0; jc < n; jc += NC) {
    const long nc = std::min(NC, n - jc);
    const long panels = (nc + PANEL - 1) / PANEL;
    for (long pc = 0; pc < k; pc += KC) {
      const long kc = std::min(KC, k - pc);
      pool.run(panels, [&](long p, int) {
        float* dst = packed + p * KC * PANEL;
        const long j0 = jc + p * PANEL;
        const long w = std::min<long>(PANEL, n - j0);
        for (long kk = 0; kk < kc; kk++) {
          float* row = dst + kk * PANEL;
          if (transB)
            for (long j = 0; j < w; j++) row[j] = B[(j0 + j) * ldb + pc + kk];
          else
            std::copy(B + (pc + kk) * ldb + j0, B + (pc + kk) * ldb + j0 + w, row);
          std::fill(row + w, row + PANEL, 0.0f);
        }
      });
      const long rs = transA ? 1 : lda, ks = transA ? lda : 1;
      pool.run(rowBlocks * panels, [&](long t, int thread) {
        const long ib = t / panels, p = t % panels;
        const long i0 = ib * MC, mc = std::min(MC, m - i0);
        const long j0 = jc + p * PANEL;
        const long w = std::min<long>(PANEL, n - j0);
        const float* a = transA ? A + pc * lda + i0 : A + i0 * lda + pc;
        const float* bp = packed + p * KC * PANEL;
        if (w == PANEL) {
          panelProduct(mc, NVMAX, a, rs, ks, kc, bp, PANEL, C + i0 * ldc + j0, ldc, alpha, true);
        } else {
          float* tile = edge + size_t(thread) * MC * PANEL;
          const int nv = int((w + VL - 1) / VL);
          panelProduct(mc, nv, a, rs, ks, kc, bp, PANEL, tile, PANEL, alpha, false);
          for (long i = 0; i < mc; i++)
            for (long j = 0; j < w; j++) C[(i0 + i) * ldc + j0 + j] += tile[i * PANEL + j];
        }
      });
    }
  }
}

}  // namespace hype
