// The Householder walk's forward and backward (algorithm and notation: src/backend/householder-walk.ts, whose
// reference these loops follow step by step). The walks (each query's inside its chunk, the carried keys, the
// chunk products and their adjoints) run in fp64 whatever the dtype T of q and k. The cross-chunk products (walk
// states times carried keys, states moved over a chunk, and their backward) run in T: in fp32 on the register-
// blocked microkernel every sgemm here is built from, in fp64 on a plain blocked loop. Every other inner loop
// runs over the head dimension and is written once; `omp simd` lets the compiler vectorise its sums.
// Threads: the forward runs one task per (batch, kv head) for the carried keys and chunk products, then one per
// (batch, head); the backward one per (batch, kv head), which owns that kv head's rows of dk, dw and dbeta and
// runs the heads of its group in turn (no two tasks write the same entry, so results do not depend on threads).
#include "householder.h"

#include <algorithm>
#include <vector>

#include "microkernel.h"
#include "pool.h"

namespace hype {
namespace {

template <typename A, typename B>
inline double dot(const A* a, const B* b, long n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (long i = 0; i < n; i++) s += double(a[i]) * double(b[i]);
  return s;
}

/** v += c x over n entries. */
template <typename X>
inline void axpy(double* v, double c, const X* x, long n) {
#pragma omp simd
  for (long i = 0; i < n; i++) v[i] += c * double(x[i]);
}

/** v <- H v = v - beta (w . v) w; returns w . v before the update. */
inline double applyFactor(double* v, const double* w, double beta, long D) {
  const double wv = dot(w, v, D);
  axpy(v, -beta * wv, w, D);
  return wv;
}

/** The chunk's last position for a position j. */
inline long chunkEnd(long j, long C) { return j - j % C + C - 1; }

/** The first query row whose position lies past chunk J. */
inline long firstRowPast(long J, const WalkParams& p) { return std::max(0L, (J + 1) * p.chunk - p.queryOffset); }

/** Padding buffers of the fp32 product (the microkernel reads and writes whole vectors). */
struct Pad {
  std::vector<float> b, c;
};

/**
 * C = alpha A B (+ C when accumulating) for an m x kdim A read at A[i * ars + k * aks] (any strided view, so A^T
 * is free), a row-major kdim x n B (row stride ldb) and C (row stride ldc). fp32: the register-blocked microkernel,
 * with B and C padded to whole vectors when n is not a multiple of the vector width.
 */
void product(long m, long n, long kdim, double alpha, const float* A, long ars, long aks, const float* B, long ldb,
             float* C, long ldc, bool accumulate, Pad& pad) {
  if (m <= 0 || n <= 0) return;
  const long np = (n + VL - 1) / VL * VL;
  if (np != n) {
    pad.b.assign(kdim * np, 0.0f);
    for (long k = 0; k < kdim; k++) std::copy(B + k * ldb, B + k * ldb + n, pad.b.data() + k * np);
    pad.c.resize(m * np);
    B = pad.b.data();
    ldb = np;
  }
  for (long c0 = 0; c0 < np; c0 += PANEL) {
    const int nv = int(std::min<long>(PANEL, np - c0) / VL);
    if (np == n)
      panelProduct(m, nv, A, ars, aks, kdim, B + c0, ldb, C + c0, ldc, float(alpha), accumulate);
    else
      panelProduct(m, nv, A, ars, aks, kdim, B + c0, ldb, pad.c.data() + c0, np, float(alpha), false);
  }
  if (np != n)
    for (long i = 0; i < m; i++)
      for (long j = 0; j < n; j++) C[i * ldc + j] = (accumulate ? C[i * ldc + j] : 0.0f) + pad.c[i * np + j];
}

/** The same in fp64: each run of 32 columns of a row accumulates in registers over the whole k loop. */
void product(long m, long n, long kdim, double alpha, const double* A, long ars, long aks, const double* B, long ldb,
             double* C, long ldc, bool accumulate, Pad&) {
  constexpr long NB = 32;
  for (long i = 0; i < m; i++) {
    const double* a = A + i * ars;
    double* c = C + i * ldc;
    for (long c0 = 0; c0 < n; c0 += NB) {
      const long nb = std::min(NB, n - c0);
      double acc[NB] = {};
      for (long k = 0; k < kdim; k++) {
        const double ak = a[k * aks];
        const double* b = B + k * ldb + c0;
#pragma omp simd
        for (long j = 0; j < nb; j++) acc[j] += ak * b[j];
      }
      for (long j = 0; j < nb; j++) c[c0 + j] = alpha * acc[j] + (accumulate ? c[c0 + j] : 0.0);
    }
  }
}

/** dst (cols x rows) = src^T for a rows x cols row-major src. */
template <typename T>
void transpose(const T* src, long rows, long cols, T* dst) {
  for (long r = 0; r < rows; r++)
    for (long c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
}

/** Rows z_i^T <- z_i^T U for m rows of z (U row-major D x D); tmp holds m x D. */
template <typename T>
void moveStates(T* z, long m, const T* U, long D, T* tmp, Pad& pad) {
  product(m, D, D, 1.0, z, D, 1, U, D, tmp, D, false, pad);
  std::copy(tmp, tmp + m * D, z);
}

/** kHat_j = H_e ... H_{j+1} k_j for the keys j < end of the kv head whose rows start at base; v is D scratch. */
template <typename T>
void carryKeys(const WalkParams& p, long base, long end, const T* k, const double* w, const double* beta, T* kHat,
               double* v) {
  const long D = p.d;
  for (long j = 0; j < end; j++) {
    for (long d = 0; d < D; d++) v[d] = double(k[(base + j) * D + d]);
    for (long t = j + 1; t <= chunkEnd(j, p.chunk); t++) applyFactor(v, w + (base + t) * D, beta[base + t], D);
    for (long d = 0; d < D; d++) kHat[(base + j) * D + d] = T(v[d]);
  }
}

/**
 * U = H_{s+n-1} ... H_s (stored in T) from P_t = P_{t-1} - beta_t w_t y_t^T, y_t = P_{t-1}^T w_t (kept in ys,
 * indexed like w); P is D x D fp64 scratch.
 */
template <typename T>
void chunkProduct(T* U, double* ys, const double* w, const double* beta, long s, long n, long D, double* P) {
  std::fill(P, P + D * D, 0.0);
  for (long d = 0; d < D; d++) P[d * D + d] = 1;
  for (long t = s; t < s + n; t++) {
    const double* wt = w + t * D;
    double* y = ys + t * D;
    std::fill(y, y + D, 0.0);
    for (long a = 0; a < D; a++) axpy(y, wt[a], P + a * D, D);
    for (long a = 0; a < D; a++) axpy(P + a * D, -beta[t] * wt[a], y, D);
  }
  for (long j = 0; j < D * D; j++) U[j] = T(P[j]);
}

/** The adjoint of chunkProduct given dU (see the reference); X, xy, xw, v are fp64 scratch (D^2, D, D, D). */
template <typename T>
void chunkProductBackward(const T* dU, const double* ys, const double* w, const double* beta, long s, long n, long D,
                          double* dw, double* dbeta, double* X, double* xy, double* xw, double* v) {
  for (long j = 0; j < D * D; j++) X[j] = double(dU[j]);
  for (long t = s + n - 1; t >= s; t--) {
    const double* wt = w + t * D;
    const double bt = beta[t];
    for (long a = 0; a < D; a++) xy[a] = dot(X + a * D, ys + t * D, D);
    std::fill(xw, xw + D, 0.0);
    for (long a = 0; a < D; a++) axpy(xw, wt[a], X + a * D, D);
    dbeta[t] -= dot(wt, xy, D);
    std::copy(xw, xw + D, v);
    for (long u = s; u < t; u++) applyFactor(v, w + u * D, beta[u], D);
    for (long a = 0; a < D; a++) dw[t * D + a] -= bt * (xy[a] + v[a]);
    for (long a = 0; a < D; a++) axpy(X + a * D, -bt * wt[a], xw, D);
  }
}

/** The adjoint of carryKeys given dkHat (local rows j < end); adds into dkAcc (local rows), dw and dbeta. */
template <typename T>
void carryKeysBackward(const WalkParams& p, long base, long end, const T* dkHat, const T* k, const double* w,
                       const double* beta, double* dkAcc, double* dw, double* dbeta, double* states, double* vw,
                       double* a) {
  const long D = p.d;
  for (long j = 0; j < end; j++) {
    const long e = chunkEnd(j, p.chunk);
    double* v = a;  // the replay runs in a, which then restarts as the adjoint
    for (long d = 0; d < D; d++) v[d] = double(k[(base + j) * D + d]);
    for (long t = j + 1; t <= e; t++) {
      std::copy(v, v + D, states + (t - j - 1) * D);
      vw[t - j - 1] = applyFactor(v, w + (base + t) * D, beta[base + t], D);
    }
    for (long d = 0; d < D; d++) a[d] = double(dkHat[j * D + d]);
    for (long t = e; t > j; t--) {
      const double* wt = w + (base + t) * D;
      const double* st = states + (t - j - 1) * D;
      const double bt = beta[base + t], xt = vw[t - j - 1];
      const double wa = dot(wt, a, D);
      dbeta[base + t] -= xt * wa;
      double* dwt = dw + (base + t) * D;
#pragma omp simd
      for (long d = 0; d < D; d++) {
        dwt[d] -= bt * (xt * a[d] + wa * st[d]);
        a[d] -= bt * wa * wt[d];
      }
    }
    axpy(dkAcc + j * D, 1.0, a, D);
  }
}

/** Logits of one (batch, head): the intra-chunk walks, then chunk by chunk downwards through kHat and U. */
template <typename T>
void headLogits(const WalkParams& p, long b, long h, const T* q, const T* k, const double* w, const double* beta,
                T* logits, const WalkState<T>& st, T* z, T* tmp, T* kT, double* r, Pad& pad) {
  const long D = p.d, C = p.chunk, lq = p.lq, lk = p.lk, last = p.lastChunk();
  const long base = (b * p.kvHeads + h / (p.heads / p.kvHeads)) * lk;
  const long qBase = (b * p.heads + h) * lq * D;
  T* S = logits + (b * p.heads + h) * lq * lk;
  for (long i = 0; i < lq; i++) {
    const long pos = i + p.queryOffset, start = pos - pos % C;
    for (long d = 0; d < D; d++) r[d] = double(q[qBase + i * D + d]);
    for (long l = pos; l >= start; l--) {
      S[i * lk + l] = T(p.scale * dot(r, k + (base + l) * D, D));
      if (l > 0) applyFactor(r, w + (base + l) * D, beta[base + l], D);
    }
    for (long d = 0; d < D; d++) z[i * D + d] = T(r[d]);  // the state at the end of the chunk below
  }
  if (last == 0) return;
  std::copy(z, z + lq * D, st.zs + qBase);
  for (long J = last - 1; J >= 0; J--) {
    const long r0 = firstRowPast(J, p), s0 = J * C;
    // logits[i, s0 + c] = scale z_i . kHat_{s0 + c}: the states times the chunk's carried keys transposed.
    transpose(st.kHat + (base + s0) * D, C, D, kT);
    product(lq - r0, C, D, p.scale, z + r0 * D, D, 1, kT, C, S + r0 * lk + s0, lk, false, pad);
    if (J > 0) moveStates(z + r0 * D, lq - r0, st.u + ((base / lk) * last + J) * D * D, D, tmp, pad);
  }
}

/** Scratch of one backward task: the cross-chunk buffers in T, the walks' in fp64. */
template <typename T>
struct BackScratch {
  std::vector<T> z, chain, dz, tmp, dU, uT, dkHat;
  std::vector<double> dkAcc, dqAcc, states, wr, a, row, X, xy, xw, v;
  Pad pad;
  explicit BackScratch(const WalkParams& p) {
    const long D = p.d, last = p.lastChunk();
    z.resize(p.lq * D);
    chain.resize(std::max(1L, last) * p.lq * D);
    dz.resize(p.lq * D);
    tmp.resize(p.lq * D);
    dU.resize(std::max(1L, last) * D * D);
    uT.resize(D * D);
    dkHat.resize(std::max(1L, last * p.chunk) * D);
    dkAcc.resize(p.lk * D);
    dqAcc.resize(p.lq * D);
    states.resize(p.chunk * D);
    wr.resize(p.chunk);
    for (auto* x : {&a, &row, &xy, &xw, &v}) x->resize(D);
    X.resize(D * D);
  }
};

/**
 * One head's share of the backward: the cross-chunk products (dZ, and dU_J and dkHat summed into the task's
 * accumulators, whose adjoints run once per kv head), then every query's intra-chunk walk adjoint from dz.
 */
template <typename T>
void headBackward(const WalkParams& p, long b, long h, const T* q, const T* k, const double* w, const double* beta,
                  const T* dLogits, const WalkState<T>& st, double* dw, double* dbeta, BackScratch<T>& s) {
  const long D = p.d, C = p.chunk, lq = p.lq, lk = p.lk, last = p.lastChunk();
  const long base = (b * p.kvHeads + h / (p.heads / p.kvHeads)) * lk;
  const long qBase = (b * p.heads + h) * lq * D;
  const T* dS = dLogits + (b * p.heads + h) * lq * lk;
  T* dz = s.dz.data();
  std::fill(s.dz.begin(), s.dz.end(), T(0));
  if (last > 0) {
    // The forward chain again, keeping every Z_J: Z_{J-1} = Z_J U_J on the rows past chunk J - 1.
    T* z = s.z.data();
    std::copy(st.zs + qBase, st.zs + qBase + lq * D, z);
    for (long J = last - 1; J >= 0; J--) {
      const long r0 = firstRowPast(J, p);
      std::copy(z + r0 * D, z + lq * D, s.chain.data() + (J * lq + r0) * D);
      if (J > 0) moveStates(z + r0 * D, lq - r0, st.u + ((base / lk) * last + J) * D * D, D, s.tmp.data(), s.pad);
    }
    // Chunks upwards; rows of dz below r0(J) are final once chunk J is reached.
    for (long J = 0; J < last; J++) {
      const long r0 = firstRowPast(J, p), s0 = J * C, m = lq - r0;
      const T* zJ = s.chain.data() + (J * lq + r0) * D;
      if (J > 0) {
        // dU_J += Z_J^T dZ_{J-1} and dZ_J = dZ_{J-1} U_J^T, over the rows past chunk J.
        product(D, D, m, 1.0, zJ, 1, D, dz + r0 * D, D, s.dU.data() + J * D * D, D, true, s.pad);
        transpose(st.u + ((base / lk) * last + J) * D * D, D, D, s.uT.data());
        moveStates(dz + r0 * D, m, s.uT.data(), D, s.tmp.data(), s.pad);
      }
      // The logits against chunk J: dZ_J += scale dS_J kHat_J and dkHat_J += scale dS_J^T Z_J.
      product(m, D, C, p.scale, dS + r0 * lk + s0, lk, 1, st.kHat + (base + s0) * D, D, dz + r0 * D, D, true, s.pad);
      product(C, D, m, p.scale, dS + r0 * lk + s0, 1, lk, zJ, D, s.dkHat.data() + s0 * D, D, true, s.pad);
    }
  }
  // Every query's walk inside its own chunk: replay (states r_l and w_l . r_l), then the adjoint upwards.
  double* a = s.a.data();
  double* r = s.row.data();
  for (long i = 0; i < lq; i++) {
    const long pos = i + p.queryOffset, start = pos - pos % C;
    for (long d = 0; d < D; d++) r[d] = double(q[qBase + i * D + d]);
    for (long l = pos; l >= start; l--) {
      std::copy(r, r + D, s.states.data() + (l - start) * D);
      if (l > 0) s.wr[l - start] = applyFactor(r, w + (base + l) * D, beta[base + l], D);
    }
    for (long d = 0; d < D; d++) a[d] = start > 0 ? double(dz[i * D + d]) : 0.0;
    for (long l = start; l <= pos; l++) {
      const double* wl = w + (base + l) * D;
      const double* rl = s.states.data() + (l - start) * D;
      if (l > 0) {
        const double wa = dot(wl, a, D), rw = s.wr[l - start], bl = beta[base + l];
        dbeta[base + l] -= rw * wa;
        double* dwl = dw + (base + l) * D;
#pragma omp simd
        for (long d = 0; d < D; d++) {
          dwl[d] -= bl * (rw * a[d] + wa * rl[d]);
          a[d] -= bl * wa * wl[d];
        }
      }
      const double g = p.scale * double(dS[i * lk + l]);
      axpy(a, g, k + (base + l) * D, D);
      axpy(s.dkAcc.data() + l * D, g, rl, D);
    }
    axpy(s.dqAcc.data() + i * D, 1.0, a, D);
  }
}

}  // namespace

template <typename T>
void householderWalkForward(const WalkParams& p, const T* q, const T* k, const double* w, const double* beta,
                            T* logits, const WalkState<T>& st) {
  const long last = p.lastChunk(), D = p.d, C = p.chunk;
  Pool& pool = Pool::instance();
  if (last > 0) {
    pool.run(p.batch * p.kvHeads, [&](long bk, int) {
      const long base = bk * p.lk;
      std::vector<double> P(D * D);
      carryKeys(p, base, last * C, k, w, beta, st.kHat, P.data());
      for (long J = 1; J < last; J++)
        chunkProduct(st.u + (bk * last + J) * D * D, st.ys, w, beta, base + J * C, C, D, P.data());
    });
  }
  pool.run(p.batch * p.heads, [&](long bh, int) {
    std::vector<T> z(p.lq * D), tmp(p.lq * D), kT(D * C);
    std::vector<double> r(D);
    Pad pad;
    headLogits(p, bh / p.heads, bh % p.heads, q, k, w, beta, logits, st, z.data(), tmp.data(), kT.data(), r.data(),
               pad);
  });
}

template <typename T>
void householderWalkBackward(const WalkParams& p, const T* q, const T* k, const double* w, const double* beta,
                             const T* dLogits, const WalkState<T>& st, T* dq, T* dk, double* dw, double* dbeta) {
  const long last = p.lastChunk(), D = p.d, C = p.chunk, group = p.heads / p.kvHeads;
  Pool::instance().run(p.batch * p.kvHeads, [&](long bk, int) {
    BackScratch<T> s(p);
    const long b = bk / p.kvHeads, kh = bk % p.kvHeads, base = bk * p.lk;
    for (long h = kh * group; h < (kh + 1) * group; h++) {
      std::fill(s.dqAcc.begin(), s.dqAcc.end(), 0.0);
      headBackward(p, b, h, q, k, w, beta, dLogits, st, dw, dbeta, s);
      T* dqh = dq + (b * p.heads + h) * p.lq * D;
      for (long j = 0; j < p.lq * D; j++) dqh[j] = T(double(dqh[j]) + s.dqAcc[j]);
    }
    // The adjoints of the chunk products and carried keys are linear in dU and dkHat: once for the whole group.
    for (long J = 1; J < last; J++)
      chunkProductBackward(s.dU.data() + J * D * D, st.ys, w, beta, base + J * C, C, D, dw, dbeta, s.X.data(),
                           s.xy.data(), s.xw.data(), s.v.data());
    if (last > 0)
      carryKeysBackward(p, base, last * C, s.dkHat.data(), k, w, beta, s.dkAcc.data(), dw, dbeta, s.states.data(),
                        s.wr.data(), s.a.data());
    T* dkb = dk + base * D;
    for (long j = 0; j < p.lk * D; j++) dkb[j] = T(double(dkb[j]) + s.dkAcc[j]);
  });
}

template void householderWalkForward<float>(const WalkParams&, const float*, const float*, const double*,
                                            const double*, float*, const WalkState<float>&);
template void householderWalkForward<double>(const WalkParams&, const double*, const double*, const double*,
                                             const double*, double*, const WalkState<double>&);
template void householderWalkBackward<float>(const WalkParams&, const float*, const float*, const double*,
                                             const double*, const float*, const WalkState<float>&, float*, float*,
                                             double*, double*);
template void householderWalkBackward<double>(const WalkParams&, const double*, const double*, const double*,
                                              const double*, const double*, const WalkState<double>&, double*,
                                              double*, double*, double*);

}  // namespace hype
