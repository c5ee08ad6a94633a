// The Householder walk (src/backend/householder-walk.ts has the maths, the layouts and the reference): causal
// logits scale * q_i^T H_p ... H_{l+1} k_l through factors H_t = I - beta_t w_t w_t^T, and their backward.
#pragma once

namespace hype {

struct WalkParams {
  long batch, heads, kvHeads, lq, lk, d, queryOffset, chunk;
  double scale;
  /** Chunks below the last query's chunk: those reached by products. */
  long lastChunk() const { return (queryOffset + lq - 1) / chunk; }
};

/**
 * What the forward keeps for the backward, in the inputs' dtype T except ys (fp64): kHat and ys [B, Hkv, Lk, D]
 * (when lastChunk > 0, resp. > 1), zs [B, H, Lq, D] (lastChunk > 0), u [B, Hkv, lastChunk, D, D] (lastChunk > 1).
 */
template <typename T>
struct WalkState {
  T* kHat;
  T* zs;
  T* u;
  double* ys;
};

/** Writes the visible logits [B, H, Lq, Lk] (T = float or double, like q and k) and fills the state. */
template <typename T>
void householderWalkForward(const WalkParams& p, const T* q, const T* k, const double* w, const double* beta,
                            T* logits, const WalkState<T>& state);

/** Adds dLoss/dq, dk (T) and dLoss/dw, dbeta (fp64) given dLogits, from the forward's state. */
template <typename T>
void householderWalkBackward(const WalkParams& p, const T* q, const T* k, const double* w, const double* beta,
                             const T* dLogits, const WalkState<T>& state, T* dq, T* dk, double* dw, double* dbeta);

}  // namespace hype
