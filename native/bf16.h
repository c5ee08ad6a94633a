// bf16 operands with fp32 accumulation: the register kernel every bf16 product here is built from, and the runtime
// choice between the AVX512-BF16 instruction (vdpbf16ps: two bf16 multiply-adds per fp32 lane) and a portable
// fallback doing fp32 arithmetic on the same bf16 values. HYPE_NO_BF16=1 in the environment forces the fallback
// (read on every call, so one process can compare the two).
//
// Layout ("pairs"): a bf16 operand is consumed two reduction steps at a time, as 32-bit words holding
// (x[2p], x[2p+1]) in the low and high halves, the layout vdpbf16ps reads. The kernel computes
//   C[r][j] = (accumulate ? C[r][j] : 0) + alpha * sum_p sum_t A_t(r, p) B_t(p, j)
// for r < R rows and j < 16 NV columns, where A's word (r, p) is at a + r*rs + p*ks (u16 units, so a row-major
// bf16 matrix with an even row length is read in place) and B is a packed panel whose row p holds the pair words of
// its columns (ldb words apart).
#pragma once
#include <cstdint>
#include <cstring>

#include "simd.h"

namespace hype {

constexpr int BF_COLS = 16;                  // columns per kernel vector group (one zmm of fp32 lanes)
constexpr int BF_NV = 4;                     // vector groups per panel
constexpr int BF_PANEL = BF_COLS * BF_NV;    // 64 columns per packed panel
constexpr int BF_RMAX = 6;

/** True when the AVX512-BF16 kernel runs: the CPU has it and HYPE_NO_BF16 is not set to a non-empty, non-0 value. */
bool bf16Fast();
/** The CPU has AVX512-BF16 (and this build contains the kernel that uses it), whatever the environment says. */
bool bf16Supported();

/** fp32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN. Bit-exact with vcvtneps2bf16 on normals. */
inline uint16_t bf16Round(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
inline float bf16Value(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
/** The word (lo, hi) of two bf16 values. */
inline uint32_t bf16Pair(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }

typedef uint32_t vu __attribute__((vector_size(VL * sizeof(uint32_t))));

/** Vector form of bf16Round on fp32 lanes, returning the rounded values' fp32 bit patterns (low 16 bits zero). */
inline vi bf16RoundBits(vf x) {
  const vi u = (vi)x;
  const vi r = (u + 0x7fff + ((u >> 16) & 1)) & int32_t(0xffff0000u);
  return x != x ? (u | 0x400000) & int32_t(0xffff0000u) : r;
}
typedef uint16_t vh __attribute__((vector_size(VL * sizeof(uint16_t))));
/** The bf16 bits of fp32 lanes, rounded (VL contiguous bf16 values). */
inline vh bf16Narrow(vf x) { return __builtin_convertvector((vu)bf16RoundBits(x) >> 16, vh); }

/** Words (lo, hi) from two fp32 vectors, each rounded to bf16. */
inline vi bf16PackPairs(vf lo, vf hi) {
  return (vi)((vu)bf16RoundBits(lo) >> 16) | bf16RoundBits(hi);
}

/**
 * C[m x nv*16] (+)= alpha * A B over all rows m (blocked by BF_RMAX), kp pair steps, on the AVX512-BF16 kernel when
 * `fast` (the value of bf16Fast(), read once per top-level call: it consults the environment) or the fallback.
 * C's rows have stride ldc and must hold whole 16-column groups.
 */
void bf16PanelProduct(bool fast, long m, int nv, const uint16_t* A, long rs, long ks, long kp, const uint32_t* B,
                      long ldb, float* C, long ldc, float alpha, bool accumulate);

/** out[i] = bf16Round(x[i]) for i < n, vectorised and spread over the pool. */
void toBf16Bits(const float* x, uint16_t* out, long n);

/**
 * Row-major C = alpha op(A) op(B) + beta C with bf16 A and B, fp32 C; beta = 0 overwrites, as BLAS. Each operand
 * (SA, SB) is bf16 bits (uint16_t) or fp32 values (float) rounded to bf16 (bf16Round) as they are packed: the same
 * products either way. Instantiated for the four combinations.
 */
template <typename SA, typename SB>
void sgemmBf16(bool transA, bool transB, long m, long n, long k, float alpha, const SA* A, long lda, const SB* B,
               long ldb, float beta, float* C, long ldc);

}  // namespace hype
