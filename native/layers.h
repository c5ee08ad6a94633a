// Row and elementwise layer operations of a training step (layer norm, GELU, bias, softmax cross-entropy, AdamW,
// embedding, and the prefix-masked row softmax of explicit-logit attention), fp32, vectorised through simd.h and
// spread over rows on the shared pool (N-API glue: bindings.cc). Same formulas and the same
// overwrite/accumulate conventions as src/backend/layers.ts, which is their reference and test oracle.
#pragma once
#include <cstdint>

namespace hype {

/** out = (x - mean) rstd gamma + beta per row; mean and rstd (length rows) saved for the backward. */
void layerNormForward(const float* x, const float* gamma, const float* beta, float* out, float* mean, float* rstd,
                      long rows, long width, float eps);
/** dx += rstd (g - mean(g) - xhat mean(g xhat)) with g = dOut gamma; dGamma += sum dOut xhat; dBeta += sum dOut. */
void layerNormBackward(const float* dOut, const float* x, const float* gamma, const float* mean, const float* rstd,
                       float* dx, float* dGamma, float* dBeta, long rows, long width);
/** out = x sigmoid(2u), u = c (x + 0.044715 x^3) (GELU, tanh form); out may alias x. */
void geluForward(const float* x, float* out, long n);
/** dx = dOut gelu'(x) (overwrites; dx may alias dOut). */
void geluBackward(const float* x, const float* dOut, float* dx, long n);
/** out[r, :] += bias for every row. */
void biasAdd(float* out, const float* bias, long rows, long width);
/** dBias += column sums of dOut, accumulated in double. */
void biasBackward(const float* dOut, float* dBias, long rows, long width);
/** losses[r] = logsumexp(row r) - logits[r, target]; returns their mean. Targets must be in range (checked). */
double softmaxCrossEntropyForward(const float* logits, const int32_t* targets, float* losses, long rows, long vocab);
/** dLogits = (softmax - onehot) dLoss (overwrites; may alias logits). */
void softmaxCrossEntropyBackward(const float* logits, const int32_t* targets, float* dLogits, long rows, long vocab,
                                 float dLoss);
/**
 * In place: row r becomes the softmax of its first visible[r] entries followed by zeros; a row with visible 0 or
 * only -inf there becomes zeros, one with NaN or +inf there NaN. visible[r] must be in [0, cols] (checked).
 */
void prefixSoftmaxRows(float* x, long rows, long cols, const int32_t* visible);

struct AdamWScalars {
  double lr, beta1, beta2, eps, weightDecay;
  double step;  // 1-based, for bias correction
};
/** One decoupled AdamW step in place on param, m and v. */
void adamwStep(float* param, const float* grad, float* m, float* v, long n, const AdamWScalars& h);
/** out[r, :] = table[tokens[r], :]. Tokens must be in range (checked). */
void embeddingForward(const float* table, const int32_t* tokens, float* out, long n, long width);
/** dTable[tokens[r], :] += dOut[r, :]. */
void embeddingBackward(const float* dOut, const int32_t* tokens, float* dTable, long n, long width);

/**
 * The head layout move of splitQkv / mergeQkv (layers.ts): tokens [B, L, (H + 2 Hkv) D] <-> q [B, H, L, D], k and v
 * [B, Hkv, L, D], whose head rows have stride qkStride (q, k) and vStride (v) >= D; only their first D columns move.
 * toHeads: tokens -> q, k, v (splitQkv); else q, k, v -> tokens (mergeQkv, overwrites tokens). With Hkv = 0 it is
 * tokensToHeads / headsToTokens. A pure copy: bit-exact.
 */
void headLayout(float* tokens, float* q, float* k, float* v, long B, long L, long H, long Hkv, long D, long qkStride,
                long vStride, bool toHeads);

}  // namespace hype
