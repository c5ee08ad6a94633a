#pragma once
#include <cstdint>

namespace hype {

/**
 * The position term as data (src/backend/backend.ts): a per-head table over the signed distance D, row length
 * span = queryOffset + Lq + Lk - 1, bias(h, D) = table[h * span + D + Lk - 1], given in fp64 or fp32 (one of the
 * pointers set; both null: no position term). The bindings check that it covers every reachable distance.
 */
struct DistanceBias {
  const double* f64 = nullptr;
  const float* f32 = nullptr;
  long span = 0;
  bool any() const { return f64 != nullptr || f32 != nullptr; }
  double at(long h, long index) const { return f64 ? f64[h * span + index] : double(f32[h * span + index]); }
};

struct AttentionParams {
  long batch, heads, kvHeads, lq, lk, d, dv;
  bool causal;
  float scale;
  long queryOffset;
  DistanceBias bias;
};

void attentionForward(const AttentionParams& p, const float* q, const float* k, const float* v, float* out,
                      float* lse);

/** dq, dk, dv overwritten; dTable ([H, span] like the table, fp64) accumulates the gradient by distance. */
void attentionBackward(const AttentionParams& p, const float* q, const float* k, const float* v, const float* out,
                       const float* lse, const float* dout, float* dq, float* dk, float* dv, double* dTable);

/**
 * bf16 operands (bf16 bits: q [B,H,Lq,d], k [B,Hkv,Lk,d], v [B,Hkv,Lk,dv]) with fp32 accumulation, softmax
 * statistics and position terms; out and lse in fp32 as above. Probabilities are rounded to bf16 before P V.
 */
void attentionForwardBf16(const AttentionParams& p, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                          float* out, float* lse);

/** As attentionBackward with bf16 q, k, v and dOut (out, lse from the forward in fp32); P and dS rounded to bf16. */
void attentionBackwardBf16(const AttentionParams& p, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                           const float* out, const float* lse, const uint16_t* dout, float* dq, float* dk, float* dv,
                           double* dTable);

}  // namespace hype
