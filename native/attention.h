#pragma once
#include <cstdint>

namespace hype {

enum BiasKind { kBiasNone = 0, kBiasAlibi = 1, kBiasHype = 2, kBiasTable = 3 };

/** The position-bias menu of backend.ts, as raw parameter arrays (validated in TypeScript before we get here). */
struct BiasSpec {
  int kind = kBiasNone;
  const double* slopes = nullptr;  // alibi: [H]
  const double* tau = nullptr;     // hype: [H * pairs]
  const double* mu = nullptr;      // hype: [H * pairs]
  int pairs = 0;
  const double* values = nullptr;  // table: [H * buckets]
  int buckets = 0;
  const int32_t* bucketOf = nullptr;  // table: [queryOffset + Lq + Lk - 1], index D + Lk - 1
};

struct AttentionParams {
  long batch, heads, kvHeads, lq, lk, d, dv;
  bool causal;
  float scale;
  long queryOffset;
  BiasSpec bias;
};

/** Gradient outputs of the bias parameters (fp64, same layout as the parameters; null when not applicable). */
struct BiasGrads {
  double* slopes = nullptr;
  double* tau = nullptr;
  double* mu = nullptr;
  double* values = nullptr;
};

void attentionForward(const AttentionParams& p, const float* q, const float* k, const float* v, float* out,
                      float* lse);

void attentionBackward(const AttentionParams& p, const float* q, const float* k, const float* v, const float* out,
                       const float* lse, const float* dout, float* dq, float* dk, float* dv, const BiasGrads& g);

}  // namespace hype
