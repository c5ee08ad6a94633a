// The bf16 register kernels (AVX512-BF16 and the portable fp32 fallback), the runtime choice between them, and the
// blocked bf16 gemm built on them in the shape of gemm.cc: op(B) packed into pair panels shared by all threads,
// op(A) packed once per reduction block into pair words, row blocks x panels claimed dynamically from the pool.
// Operands are bf16 bits or fp32 values rounded while packing (vectorised), so mixed precision never makes a bf16
// copy of a tensor: the packing pass it needs anyway is the conversion.
#include "bf16.h"

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "gemm.h"
#include "pool.h"

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 10 || defined(__clang__))
#include <immintrin.h>
#define HYPE_HAVE_BF16_KERNEL 1
#endif

namespace hype {

namespace {

inline uint32_t word(const uint16_t* p) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

#if defined(HYPE_HAVE_BF16_KERNEL)
// Compiled for AVX512-BF16 whatever -march says; only called after the CPU check.
template <int R, int NV>
__attribute__((target("avx512f,avx512bf16"))) void fastKernel(const uint16_t* __restrict A, long rs, long ks,
                                                               long kp, const uint32_t* __restrict B, long ldb,
                                                               float* __restrict C, long ldc, float alpha,
                                                               bool accumulate) {
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
  const uint16_t* a = A;
  const uint32_t* b = B;
  for (long p = 0; p < kp; p++) {
    __m512bh bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) bv[v] = (__m512bh)_mm512_loadu_si512(b + v * BF_COLS);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(int(word(a + r * rs)));
#pragma GCC unroll 8
      for (int v = 0; v < NV; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], ar, bv[v]);
    }
    a += ks;
    b += ldb;
  }
  const __m512 al = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
      float* c = C + r * ldc + v * BF_COLS;
      const __m512 x = _mm512_mul_ps(al, acc[r][v]);
      _mm512_storeu_ps(c, accumulate ? _mm512_add_ps(_mm512_loadu_ps(c), x) : x);
    }
}
#endif

// The fallback: the same pair words widened to fp32 (a shift or a mask), multiplied and added in fp32.
constexpr int GV = BF_COLS / VL > 0 ? BF_COLS / VL : 1;  // fp32 vectors per 16-column group
template <int R, int NV>
void portableKernel(const uint16_t* __restrict A, long rs, long ks, long kp, const uint32_t* __restrict B, long ldb,
                    float* __restrict C, long ldc, float alpha, bool accumulate) {
  constexpr int NG = NV * GV;
  vf acc[R][NG];
  for (int r = 0; r < R; r++)
    for (int g = 0; g < NG; g++) acc[r][g] = vf{};
  const uint16_t* a = A;
  const uint32_t* b = B;
  for (long p = 0; p < kp; p++) {
    vf lo[NG], hi[NG];
    for (int g = 0; g < NG; g++) {
      vi w;
      std::memcpy(&w, b + g * VL, sizeof w);
      lo[g] = (vf)(w << 16);
      hi[g] = (vf)(w & int32_t(0xffff0000u));
    }
    for (int r = 0; r < R; r++) {
      const uint32_t w = word(a + r * rs);
      const vf alo = splat(bf16Value(uint16_t(w))), ahi = splat(bf16Value(uint16_t(w >> 16)));
      for (int g = 0; g < NG; g++) acc[r][g] += alo * lo[g] + ahi * hi[g];
    }
    a += ks;
    b += ldb;
  }
  for (int r = 0; r < R; r++)
    for (int g = 0; g < NG; g++) {
      float* c = C + r * ldc + g * VL;
      store(c, accumulate ? load(c) + alpha * acc[r][g] : alpha * acc[r][g]);
    }
}

using KernelFn = void (*)(const uint16_t*, long, long, long, const uint32_t*, long, float*, long, float, bool);

template <int R, int NV>
struct FastK {
#if defined(HYPE_HAVE_BF16_KERNEL)
  static constexpr KernelFn fn = &fastKernel<R, NV>;
#else
  static constexpr KernelFn fn = &portableKernel<R, NV>;
#endif
};
template <int R, int NV>
struct PortableK {
  static constexpr KernelFn fn = &portableKernel<R, NV>;
};

/** kernels[r-1][nv-1] for the given family. */
template <template <int, int> class K>
struct Kernels {
  KernelFn fn[BF_RMAX][BF_NV] = {
      {K<1, 1>::fn, K<1, 2>::fn, K<1, 3>::fn, K<1, 4>::fn}, {K<2, 1>::fn, K<2, 2>::fn, K<2, 3>::fn, K<2, 4>::fn},
      {K<3, 1>::fn, K<3, 2>::fn, K<3, 3>::fn, K<3, 4>::fn}, {K<4, 1>::fn, K<4, 2>::fn, K<4, 3>::fn, K<4, 4>::fn},
      {K<5, 1>::fn, K<5, 2>::fn, K<5, 3>::fn, K<5, 4>::fn}, {K<6, 1>::fn, K<6, 2>::fn, K<6, 3>::fn, K<6, 4>::fn},
  };
};
const Kernels<FastK> kFast;
const Kernels<PortableK> kPortable;

bool envForcesFallback() {
  const char* e = std::getenv("HYPE_NO_BF16");
  return e != nullptr && e[0] != '\0' && !(e[0] == '0' && e[1] == '\0');
}

}  // namespace

bool bf16Supported() {
#if defined(HYPE_HAVE_BF16_KERNEL)
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

bool bf16Fast() { return bf16Supported() && !envForcesFallback(); }

void bf16PanelProduct(bool fast, long m, int nv, const uint16_t* A, long rs, long ks, long kp, const uint32_t* B,
                      long ldb, float* C, long ldc, float alpha, bool accumulate) {
  const KernelFn(*fns)[BF_NV] = fast ? kFast.fn : kPortable.fn;
  const int v = std::max(1, std::min(nv, BF_NV)) - 1;
  long i = 0;
  for (; i + BF_RMAX <= m; i += BF_RMAX) fns[BF_RMAX - 1][v](A + i * rs, rs, ks, kp, B, ldb, C + i * ldc, ldc, alpha, accumulate);
  if (i < m) fns[m - i - 1][v](A + i * rs, rs, ks, kp, B, ldb, C + i * ldc, ldc, alpha, accumulate);
}

void toBf16Bits(const float* x, uint16_t* out, long n) {
  constexpr long kChunk = 1 << 16;
  Pool::instance().run((n + kChunk - 1) / kChunk, [&](long t, int) {
    const long i1 = std::min(n, (t + 1) * kChunk);
    long i = t * kChunk;
    for (; i + VL <= i1; i += VL) {
      const vh b = bf16Narrow(load(x + i));
      std::memcpy(out + i, &b, sizeof b);
    }
    for (; i < i1; i++) out[i] = bf16Round(x[i]);
  });
}

namespace {
constexpr long KC = 512;      // bf16 reduction steps per block (256 pairs: a 64 KiB panel, as in sgemm)
constexpr long NC = 8 * 64;   // columns per outer block, a multiple of BF_PANEL
constexpr long MC = 96;       // rows per task, a multiple of BF_RMAX

// Operand sources: bf16 bits taken as they are, or fp32 values rounded to bf16 as they are packed (the fused
// conversion of mixed precision: no bf16 copy of an fp32 tensor is ever made). Both give the same pair words.
template <typename S>
struct Source;
template <>
struct Source<uint16_t> {
  static uint16_t bits(uint16_t x) { return x; }
  /** VL pair words from VL values of a low row and of a high row. */
  static vi pairs(const uint16_t* lo, const uint16_t* hi) {
    vh l, h;
    std::memcpy(&l, lo, sizeof l);
    std::memcpy(&h, hi, sizeof h);
    return (vi)(__builtin_convertvector(l, vu) | (__builtin_convertvector(h, vu) << 16));
  }
  static vi pairs(const uint16_t* lo) {
    vh l;
    std::memcpy(&l, lo, sizeof l);
    return (vi)__builtin_convertvector(l, vu);
  }
  /** out[0..n) = the bits of x[0..n). */
  static void run(const uint16_t* x, uint16_t* out, long n) { std::memcpy(out, x, size_t(n) * sizeof(uint16_t)); }
};
template <>
struct Source<float> {
  static uint16_t bits(float x) { return bf16Round(x); }
  static vi pairs(const float* lo, const float* hi) { return bf16PackPairs(load(lo), load(hi)); }
  static vi pairs(const float* lo) { return (vi)((vu)bf16RoundBits(load(lo)) >> 16); }
  static void run(const float* x, uint16_t* out, long n) {
    long i = 0;
    for (; i + VL <= n; i += VL) {
      const vh b = bf16Narrow(load(x + i));
      std::memcpy(out + i, &b, sizeof b);
    }
    for (; i < n; i++) out[i] = bf16Round(x[i]);
  }
};

/**
 * dst[j] = the pair word (lo[j], hi[j]) for j < w, zero in [w, width); hi null: zero high halves (the missing step
 * of an odd reduction length).
 */
template <typename S>
void packPairRow(const S* lo, const S* hi, long w, uint32_t* dst, long width) {
  long j = 0;
  if (hi) {
    for (; j + VL <= w; j += VL) {
      const vi x = Source<S>::pairs(lo + j, hi + j);
      std::memcpy(dst + j, &x, sizeof x);
    }
    for (; j < w; j++) dst[j] = bf16Pair(Source<S>::bits(lo[j]), Source<S>::bits(hi[j]));
  } else {
    for (; j + VL <= w; j += VL) {
      const vi x = Source<S>::pairs(lo + j);
      std::memcpy(dst + j, &x, sizeof x);
    }
    for (; j < w; j++) dst[j] = Source<S>::bits(lo[j]);
  }
  std::fill(dst + w, dst + width, 0u);
}

}  // namespace

template <typename SA, typename SB>
void sgemmBf16(bool transA, bool transB, long m, long n, long k, float alpha, const SA* A, long lda, const SB* B,
               long ldb, float beta, float* C, long ldc) {
  if (m <= 0 || n <= 0) return;
  Pool& pool = Pool::instance();
  // beta = 0 with alpha > 0: the first reduction block stores its products instead of adding them to a zeroed C (a
  // pass over C saved). The same bits: an accumulator starts at +0 and a round-to-nearest sum is -0 only when every
  // term is, so alpha * acc is never -0 and 0 + alpha * acc == alpha * acc.
  const bool store = beta == 0.0f && alpha > 0.0f && k > 0;
  if (!store) scaleRows(m, n, beta, C, ldc);
  if (k <= 0 || alpha == 0.0f) return;
  const bool fast = bf16Fast();
  const long rowBlocks = (m + MC - 1) / MC;
  static thread_local std::vector<uint32_t> packedB, packedA;
  static thread_local std::vector<float> edgeStore;
  static thread_local std::vector<uint16_t> runStore;
  const long kcpMax = (std::min(KC, k) + 1) / 2;
  const size_t bNeed = size_t(kcpMax) * size_t(std::min(NC, (n + BF_PANEL - 1) / BF_PANEL * BF_PANEL));
  const size_t aNeed = size_t(kcpMax) * size_t(rowBlocks * MC);
  const size_t edgeNeed = size_t(pool.size()) * MC * BF_PANEL;
  const size_t runNeed = transB ? size_t(pool.size()) * size_t(2 * kcpMax) : 0;
  if (packedB.size() < bNeed) packedB.resize(bNeed);
  if (packedA.size() < aNeed) packedA.resize(aNeed);
  if (edgeStore.size() < edgeNeed) edgeStore.resize(edgeNeed);
  if (runStore.size() < runNeed) runStore.resize(runNeed);
  uint32_t* const pb = packedB.data();
  uint32_t* const pa = packedA.data();
  float* const edge = edgeStore.data();
  uint16_t* const runs = runStore.data();
  // op(A)'s block as the kernel reads it, word (i, p) at pa16 + i * aRs + p * aKs (u16 units): A's rows converted to
  // bits (a row's consecutive bits are its pair words), or, transposed, one row of words per pair step in each row
  // block (from two rows of A, contiguous over i: vector loads, no gather).
  const long aRs = transA ? 2 : 2 * kcpMax, aKs = transA ? 2 * MC : 2;
  for (long pc = 0; pc < k; pc += KC) {
    const long kc = std::min(KC, k - pc), kcp = (kc + 1) / 2;
    auto packA = [&](long t) {
      const long i0 = t * MC, mc = std::min(MC, m - i0);
      if (transA) {
        uint32_t* block = pa + i0 * kcpMax;
        for (long p = 0; p < kcp; p++) {
          const SA* lo = A + (pc + 2 * p) * lda + i0;
          packPairRow(lo, 2 * p + 1 < kc ? lo + lda : nullptr, mc, block + p * MC, mc);
        }
      } else {
        for (long i = i0; i < i0 + mc; i++) {
          uint16_t* row = reinterpret_cast<uint16_t*>(pa + i * kcpMax);
          Source<SA>::run(A + i * lda + pc, row, kc);
          if (kc & 1) row[kc] = 0;
        }
      }
    };
    for (long jc = 0; jc < n; jc += NC) {
      const long nc = std::min(NC, n - jc);
      const long panels = (nc + BF_PANEL - 1) / BF_PANEL;
      auto packB = [&](long q, int thread) {
        uint32_t* dst = pb + q * kcp * BF_PANEL;
        const long j0 = jc + q * BF_PANEL;
        const long w = std::min<long>(BF_PANEL, n - j0);
        if (!transB) {
          for (long p = 0; p < kcp; p++) {
            const SB* lo = B + (pc + 2 * p) * ldb + j0;
            packPairRow(lo, 2 * p + 1 < kc ? lo + ldb : nullptr, w, dst + p * BF_PANEL, BF_PANEL);
          }
          return;
        }
        // Column j of op(B) is row j of B: its bits, read as words, are the column's pair steps.
        uint16_t* run = runs + size_t(thread) * size_t(2 * kcpMax);
        for (long j = 0; j < w; j++) {
          Source<SB>::run(B + (j0 + j) * ldb + pc, run, kc);
          if (kc & 1) run[kc] = 0;
          for (long p = 0; p < kcp; p++) std::memcpy(dst + p * BF_PANEL + j, run + 2 * p, 4);
        }
        if (w < BF_PANEL)
          for (long p = 0; p < kcp; p++) std::fill(dst + p * BF_PANEL + w, dst + (p + 1) * BF_PANEL, 0u);
      };
      // op(A)'s block (once per reduction block) and op(B)'s panels packed by one pool run: one barrier, not two.
      const long aTasks = jc == 0 ? rowBlocks : 0;
      pool.run(aTasks + panels, [&](long t, int thread) {
        if (t < aTasks)
          packA(t);
        else
          packB(t - aTasks, thread);
      });
      pool.run(rowBlocks * panels, [&](long t, int thread) {
        const long ib = t / panels, q = t % panels;
        const long i0 = ib * MC, mc = std::min(MC, m - i0);
        const long j0 = jc + q * BF_PANEL;
        const long w = std::min<long>(BF_PANEL, n - j0);
        const uint16_t* a = reinterpret_cast<const uint16_t*>(pa + i0 * kcpMax);
        const uint32_t* bp = pb + q * kcp * BF_PANEL;
        const bool first = store && pc == 0;
        if (w == BF_PANEL) {
          bf16PanelProduct(fast, mc, BF_NV, a, aRs, aKs, kcp, bp, BF_PANEL, C + i0 * ldc + j0, ldc, alpha, !first);
        } else {
          float* tile = edge + size_t(thread) * MC * BF_PANEL;
          const int nv = int((w + BF_COLS - 1) / BF_COLS);
          bf16PanelProduct(fast, mc, nv, a, aRs, aKs, kcp, bp, BF_PANEL, tile, BF_PANEL, alpha, false);
          for (long i = 0; i < mc; i++) {
            float* c = C + (i0 + i) * ldc + j0;
            if (first)
              std::copy(tile + i * BF_PANEL, tile + i * BF_PANEL + w, c);
            else
              for (long j = 0; j < w; j++) c[j] += tile[i * BF_PANEL + j];
          }
        }
      });
    }
  }
}

#define HYPE_GEMM_BF16(SA, SB) \
  template void sgemmBf16(bool, bool, long, long, long, float, const SA*, long, const SB*, long, float, float*, long);
HYPE_GEMM_BF16(uint16_t, uint16_t)
HYPE_GEMM_BF16(float, uint16_t)
HYPE_GEMM_BF16(uint16_t, float)
HYPE_GEMM_BF16(float, float)
#undef HYPE_GEMM_BF16

}  // namespace hype
