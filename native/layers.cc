// Layer operations (see layers.h). Reductions along a row (sums, maxima) use explicit vectors from simd.h, because
// the compiler may not reorder float sums on its own; the purely elementwise loops are written plainly with
// __restrict and left to the auto-vectoriser. Work is split into contiguous row ranges on the shared pool, and
// cross-row reductions (dGamma, dBeta, dBias) use a FIXED row partition with one double partial per range, summed
// in order afterwards, so results do not depend on the thread count or on which thread ran which range.
#include "layers.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "pool.h"
#include "simd.h"
#if defined(__AVX__) && !defined(HYPE_FORCE_SCALAR)
#include <immintrin.h>
#endif

namespace hype {
namespace {

// About this many floats of work per task: enough to amortise a pool wake-up (a few microseconds), small enough
// that both cores get several tasks on the training shapes.
constexpr long kGrain = 16384;
// Rows per partial in cross-row reductions (fixed, so the summation order is fixed).
constexpr long kReduceRows = 64;

inline float hsum(vf a) {
  float s = 0;
  for (int j = 0; j < VL; j++) s += a[j];
  return s;
}
inline float hmax(vf a) {
  float m = a[0];
  for (int j = 1; j < VL; j++) m = std::max(m, a[j]);
  return m;
}

// Square root per lane. Written out because a plain std::sqrt loop does not vectorise (it may have to set errno).
inline vf vsqrt(vf x) {
#if defined(__AVX512F__) && !defined(HYPE_FORCE_SCALAR)
  // Zero-masked form with every lane selected: the unmasked one passes _mm512_undefined_ps() as its passthrough.
  return (vf)_mm512_maskz_sqrt_ps(__mmask16(0xFFFF), (__m512)x);
#elif defined(__AVX__) && !defined(HYPE_FORCE_SCALAR)
  return (vf)_mm256_sqrt_ps((__m256)x);
#else
  vf r;
  for (int j = 0; j < VL; j++) r[j] = std::sqrt(x[j]);
  return r;
#endif
}

/** Runs body(r0, r1) over [0, rows) in contiguous ranges of about kGrain floats (at least one row). */
void forRows(long rows, long width, const std::function<void(long, long)>& body) {
  if (rows <= 0) return;
  const long perTask = std::max(1L, kGrain / std::max(1L, width));
  const long tasks = (rows + perTask - 1) / perTask;
  Pool::instance().run(tasks, [&](long t, int) { body(t * perTask, std::min(rows, (t + 1) * perTask)); });
}

/** Sum of x[0..n) in fp32 vector lanes (two accumulators), then across lanes. */
inline float rowSum(const float* x, long n) {
  vf a0 = vf{}, a1 = vf{};
  long j = 0;
  for (; j + 2 * VL <= n; j += 2 * VL) {
    a0 += load(x + j);
    a1 += load(x + j + VL);
  }
  for (; j + VL <= n; j += VL) a0 += load(x + j);
  float s = hsum(a0 + a1);
  for (; j < n; j++) s += x[j];
  return s;
}

// GELU constants, as in layers.ts: gelu(x) = x s, s = sigmoid(2u) = 0.5 (1 + tanh u), u = c (x + a x^3).
constexpr double kGeluC = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kGeluA = 0.044715;

// The logistic s = 1 / (1 + exp(-t)) and q = 1 - s, with t = 2u, both without cancellation or overflow: with
// e = exp(-|t|) in (0, 1], s = 1/(1+e) and q = e/(1+e) for t >= 0, mirrored for t < 0. exp underflows to exactly
// 0 below -87 (simd.h), so s or q is then exactly 0, as in the reference's limit.
struct Logistic {
  vf s, q;
};
inline Logistic logistic2u(vf v) {
  const vf t = v * float(2 * kGeluC) + (v * v * v) * float(2 * kGeluC * kGeluA);
  const vf at = t < 0 ? -t : t;
  const vf e = vexp(-at);
  const vf r = 1.0f / (1.0f + e);
  const vf er = e * r;
  return {t >= 0 ? r : er, t >= 0 ? er : r};
}
inline void logistic2u(float v, float& s, float& q) {
  vf x = splat(v);
  Logistic l = logistic2u(x);
  s = l.s[0];
  q = l.q[0];
}

}  // namespace

void layerNormForward(const float* x, const float* gamma, const float* beta, float* out, float* mean, float* rstd,
                      long rows, long width, float eps) {
  forRows(rows, width, [&](long r0, long r1) {
    for (long r = r0; r < r1; r++) {
      const float* xr = x + r * width;
      float* o = out + r * width;
      const float mu = rowSum(xr, width) / float(width);
      vf a0 = vf{}, a1 = vf{};
      long j = 0;
      for (; j + 2 * VL <= width; j += 2 * VL) {
        const vf d0 = load(xr + j) - mu, d1 = load(xr + j + VL) - mu;
        a0 += d0 * d0;
        a1 += d1 * d1;
      }
      for (; j + VL <= width; j += VL) {
        const vf d = load(xr + j) - mu;
        a0 += d * d;
      }
      float v = hsum(a0 + a1);
      for (; j < width; j++) v += (xr[j] - mu) * (xr[j] - mu);
      const float rs = float(1.0 / std::sqrt(double(v) / double(width) + double(eps)));
      // out may alias x: every element is read before it is written, at the same index.
      for (long c = 0; c < width; c++) o[c] = (xr[c] - mu) * rs * gamma[c] + beta[c];
      mean[r] = mu;
      rstd[r] = rs;
    }
  });
}

void layerNormBackward(const float* dOut, const float* x, const float* gamma, const float* mean, const float* rstd,
                       float* dx, float* dGamma, float* dBeta, long rows, long width) {
  if (rows <= 0) return;
  const long parts = (rows + kReduceRows - 1) / kReduceRows;
  std::vector<double> partial(size_t(parts * 2 * width), 0.0);
  Pool::instance().run(parts, [&](long p, int) {
    double* __restrict pg = partial.data() + p * 2 * width;
    double* __restrict pb = pg + width;
    const long r1 = std::min(rows, (p + 1) * kReduceRows);
    for (long r = p * kReduceRows; r < r1; r++) {
      // dx may alias dOut (as in the reference): each element is read before it is written, at the same index.
      const float* xr = x + r * width;
      const float* dy = dOut + r * width;
      float* d = dx + r * width;
      const float mu = mean[r], rs = rstd[r];
      vf sg0 = vf{}, sgx0 = vf{};
      long j = 0;
      for (; j + VL <= width; j += VL) {
        const vf xhat = (load(xr + j) - mu) * rs;
        const vf g = load(dy + j) * load(gamma + j);
        sg0 += g;
        sgx0 += g * xhat;
      }
      float sumG = hsum(sg0), sumGX = hsum(sgx0);
      for (; j < width; j++) {
        const float xhat = (xr[j] - mu) * rs, g = dy[j] * gamma[j];
        sumG += g;
        sumGX += g * xhat;
      }
      const float meanG = sumG / float(width), meanGX = sumGX / float(width);
      for (long c = 0; c < width; c++) {
        const float xhat = (xr[c] - mu) * rs;
        d[c] += rs * (dy[c] * gamma[c] - meanG - xhat * meanGX);
        pg[c] += double(dy[c] * xhat);
        pb[c] += double(dy[c]);
      }
    }
  });
  for (long c = 0; c < width; c++) {
    double g = 0, b = 0;
    for (long p = 0; p < parts; p++) {
      g += partial[size_t(p * 2 * width + c)];
      b += partial[size_t(p * 2 * width + width + c)];
    }
    dGamma[c] = float(double(dGamma[c]) + g);
    dBeta[c] = float(double(dBeta[c]) + b);
  }
}

void geluForward(const float* x, float* out, long n) {
  forRows(n, 1, [&](long i0, long i1) {
    long i = i0;
    for (; i + VL <= i1; i += VL) {
      const vf v = load(x + i);
      store(out + i, v * logistic2u(v).s);
    }
    for (; i < i1; i++) {
      float s, q;
      logistic2u(x[i], s, q);
      out[i] = x[i] * s;
    }
  });
}

void geluBackward(const float* x, const float* dOut, float* dx, long n) {
  // gelu'(x) = s + x s (1 - s) dt/dx with t = 2u: dt/dx = 2c (1 + 3 a x^2).
  const float k0 = float(2 * kGeluC), k2 = float(2 * kGeluC * 3 * kGeluA);
  forRows(n, 1, [&](long i0, long i1) {
    long i = i0;
    for (; i + VL <= i1; i += VL) {
      const vf v = load(x + i);
      const Logistic l = logistic2u(v);
      const vf dt = k0 + k2 * (v * v);
      store(dx + i, load(dOut + i) * (l.s + v * (l.s * l.q) * dt));
    }
    for (; i < i1; i++) {
      float s, q;
      const float v = x[i];
      logistic2u(v, s, q);
      dx[i] = dOut[i] * (s + v * (s * q) * (k0 + k2 * (v * v)));
    }
  });
}

void biasAdd(float* out, const float* bias, long rows, long width) {
  forRows(rows, width, [&](long r0, long r1) {
    for (long r = r0; r < r1; r++) {
      float* __restrict o = out + r * width;
      const float* __restrict b = bias;
      for (long c = 0; c < width; c++) o[c] += b[c];
    }
  });
}

void biasBackward(const float* dOut, float* dBias, long rows, long width) {
  if (rows <= 0) return;
  const long parts = (rows + kReduceRows - 1) / kReduceRows;
  std::vector<double> partial(size_t(parts * width), 0.0);
  Pool::instance().run(parts, [&](long p, int) {
    double* __restrict acc = partial.data() + p * width;
    const long r1 = std::min(rows, (p + 1) * kReduceRows);
    for (long r = p * kReduceRows; r < r1; r++) {
      const float* __restrict d = dOut + r * width;
      for (long c = 0; c < width; c++) acc[c] += double(d[c]);
    }
  });
  for (long c = 0; c < width; c++) {
    double s = 0;
    for (long p = 0; p < parts; p++) s += partial[size_t(p * width + c)];
    dBias[c] = float(double(dBias[c]) + s);
  }
}

namespace {
/** max over the row and sum of exp(x - max), in vector lanes. */
inline void rowMaxSumExp(const float* x, long n, float& maxOut, float& sumOut) {
  float m = -INFINITY;
  long j = 0;
  if (n >= VL) {
    vf vm = load(x);
    for (j = VL; j + VL <= n; j += VL) vm = vmax(vm, load(x + j));
    m = hmax(vm);
  }
  for (; j < n; j++) m = std::max(m, x[j]);
  vf acc = vf{};
  j = 0;
  for (; j + VL <= n; j += VL) acc += vexp(load(x + j) - m);
  float s = hsum(acc);
  for (; j < n; j++) s += vexp(splat(x[j] - m))[0];
  maxOut = m;
  sumOut = s;
}
}  // namespace

double softmaxCrossEntropyForward(const float* logits, const int32_t* targets, float* losses, long rows, long vocab) {
  forRows(rows, vocab, [&](long r0, long r1) {
    for (long r = r0; r < r1; r++) {
      const float* xr = logits + r * vocab;
      float m, s;
      rowMaxSumExp(xr, vocab, m, s);
      losses[r] = float(double(m) + std::log(double(s)) - double(xr[targets[r]]));
    }
  });
  double total = 0;
  for (long r = 0; r < rows; r++) total += losses[r];
  return total / double(rows);
}

void softmaxCrossEntropyBackward(const float* logits, const int32_t* targets, float* dLogits, long rows, long vocab,
                                 float dLoss) {
  forRows(rows, vocab, [&](long r0, long r1) {
    for (long r = r0; r < r1; r++) {
      const float* xr = logits + r * vocab;
      float* d = dLogits + r * vocab;
      float m, s;
      rowMaxSumExp(xr, vocab, m, s);
      // Recomputing the exps (rather than parking them) keeps this correct when dLogits aliases logits.
      const float scale = dLoss / s;
      long j = 0;
      for (; j + VL <= vocab; j += VL) store(d + j, vexp(load(xr + j) - m) * scale);
      for (; j < vocab; j++) d[j] = vexp(splat(xr[j] - m))[0] * scale;
      d[targets[r]] -= dLoss;
    }
  });
}

namespace {
typedef double vd __attribute__((vector_size(VL * sizeof(double))));

inline bool anyLane(vi m) {
  bool any = false;
  for (int j = 0; j < VL; j++) any |= m[j] != 0;
  return any;
}

// exp(x - m) for x <= m. The fp32 difference s = x - m is rounded by up to half an ulp of |s| (up to 87), which
// would cost |s| u of relative accuracy; TwoSum recovers the rounding error t exactly, and
// exp(s + t) = exp(s) (1 + t) to second order. Where s < -87 the exp is 0 anyway, and t may be NaN there (x = -inf,
// or an overflowing difference), so it is dropped.
inline vf expDiff(vf x, vf m) {
  const vf nm = -m;
  const vf s = x + nm;
  const vf bp = s - x;
  const vf t = (x - (s - bp)) + (nm - bp);
  const vf e = vexp(s);
  return e + e * (s > -88.0f ? t : vf{});
}
}  // namespace

void prefixSoftmaxRows(float* x, long rows, long cols, const int32_t* visible) {
  forRows(rows, cols, [&](long r0, long r1) {
    for (long r = r0; r < r1; r++) {
      float* xr = x + r * cols;
      const long n = visible[r];
      std::fill(xr + n, xr + cols, 0.0f);
      if (n == 0) continue;
      // The max, and whether a NaN is among the entries (vmax would drop it).
      vf vm = splat(-INFINITY);
      vi nan = vi{};
      long j = 0;
      for (; j + VL <= n; j += VL) {
        const vf v = load(xr + j);
        vm = vmax(vm, v);
        nan |= v != v;
      }
      float m = hmax(vm);
      bool bad = anyLane(nan);
      for (; j < n; j++) {
        m = std::max(m, xr[j]);
        bad |= xr[j] != xr[j];
      }
      // As the reference: nothing to attend to gives zeros; NaN or +inf gives NaN (inf - inf in the reference).
      if (!bad && m == -INFINITY) {
        std::fill(xr, xr + n, 0.0f);
        continue;
      }
      if (bad || m == INFINITY) {
        std::fill(xr, xr + n, NAN);
        continue;
      }
      // The exps are parked in the row and summed in double lanes.
      const vf vmx = splat(m);
      vd acc = vd{};
      j = 0;
      for (; j + VL <= n; j += VL) {
        const vf e = expDiff(load(xr + j), vmx);
        store(xr + j, e);
        acc += __builtin_convertvector(e, vd);
      }
      double sum = 0;
      for (int k = 0; k < VL; k++) sum += acc[k];
      for (; j < n; j++) {
        const float e = expDiff(splat(xr[j]), vmx)[0];
        xr[j] = e;
        sum += double(e);
      }
      // sum >= 1: the max entry contributes exp(0) = 1.
      const float inv = float(1.0 / sum);
      j = 0;
      for (; j + VL <= n; j += VL) store(xr + j, load(xr + j) * inv);
      for (; j < n; j++) xr[j] *= inv;
    }
  });
}

void adamwStep(float* param, const float* grad, float* m, float* v, long n, const AdamWScalars& h) {
  const float b1 = float(h.beta1), b2 = float(h.beta2), ob1 = float(1 - h.beta1), ob2 = float(1 - h.beta2);
  const float ic1 = float(1 / (1 - std::pow(h.beta1, h.step)));
  const float ic2 = float(1 / (1 - std::pow(h.beta2, h.step)));
  const float lr = float(h.lr), lrwd = float(h.lr * h.weightDecay), eps = float(h.eps);
  // One body for vectors and the scalar tail (a scalar is a splat vector whose lane 0 is kept).
  auto update = [&](vf gi, vf mi, vf vi, vf pi, vf& mo, vf& vo, vf& po) {
    mo = b1 * mi + ob1 * gi;
    vo = b2 * vi + ob2 * (gi * gi);
    po = pi - lr * (mo * ic1 / (vsqrt(vo * ic2) + eps)) - lrwd * pi;
  };
  forRows(n, 1, [&](long i0, long i1) {
    long i = i0;
    for (; i + VL <= i1; i += VL) {
      vf mo, vo, po;
      update(load(grad + i), load(m + i), load(v + i), load(param + i), mo, vo, po);
      store(m + i, mo);
      store(v + i, vo);
      store(param + i, po);
    }
    for (; i < i1; i++) {
      vf mo, vo, po;
      update(splat(grad[i]), splat(m[i]), splat(v[i]), splat(param[i]), mo, vo, po);
      m[i] = mo[0];
      v[i] = vo[0];
      param[i] = po[0];
    }
  });
}

void embeddingForward(const float* table, const int32_t* tokens, float* out, long n, long width) {
  forRows(n, width, [&](long r0, long r1) {
    for (long r = r0; r < r1; r++) std::copy_n(table + long(tokens[r]) * width, width, out + r * width);
  });
}

void embeddingBackward(const float* dOut, const int32_t* tokens, float* dTable, long n, long width) {
  // Rows may share a token, so rows cannot be split across threads; columns can, but this pass is tiny (one add
  // per activation) and memory-bound, so it stays on the calling thread.
  for (long r = 0; r < n; r++) {
    float* __restrict dst = dTable + long(tokens[r]) * width;
    const float* __restrict src = dOut + r * width;
    for (long c = 0; c < width; c++) dst[c] += src[c];
  }
}

void headLayout(float* tokens, float* q, float* k, float* v, long B, long L, long H, long Hkv, long D, long qkStride,
                long vStride, bool toHeads) {
  const long width = (H + 2 * Hkv) * D, rows = B * L;
  if (rows <= 0 || width <= 0) return;
  const size_t bytes = size_t(D) * sizeof(float);
  // A copy moves a float in well under a nanosecond, far less work than the row ops above, so a task gets kCopyGrain
  // floats: small moves run inline on the caller (Pool::run with one task), large ones still split across threads.
  constexpr long kCopyGrain = 1L << 16;
  const long perTask = std::max(1L, kCopyGrain / width);
  const long tasks = (rows + perTask - 1) / perTask;
  Pool::instance().run(tasks, [&](long task, int) {
    const long r1 = std::min(rows, (task + 1) * perTask);
    for (long r = task * perTask; r < r1; r++) {
      const long b = r / L, t = r - b * L;
      float* row = tokens + r * width;
      for (long h = 0; h < H + 2 * Hkv; h++) {
        float* head;
        if (h < H) {
          head = q + ((b * H + h) * L + t) * qkStride;
        } else if (h < H + Hkv) {
          head = k + ((b * Hkv + h - H) * L + t) * qkStride;
        } else {
          head = v + ((b * Hkv + h - H - Hkv) * L + t) * vStride;
        }
        if (toHeads) {
          std::memcpy(head, row + h * D, bytes);
        } else {
          std::memcpy(row + h * D, head, bytes);
        }
      }
    }
  });
}

}  // namespace hype
