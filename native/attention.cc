// Flash-style attention on CPU: tiles of queries and keys, online softmax, O(L) memory, forward and backward
// (probabilities recomputed from lse). Every product runs through the register kernel of microkernel.h.
//
// Position bias depends only on the distance D = i + queryOffset - l, so for a tile pair it takes at most
// (rows + cols - 1) distinct values: we evaluate them once per tile pair into a short "diagonal" vector (in fp64,
// then rounded) and add one unaligned vector load per logit vector. The causal mask rides in the same vector
// (-inf for D < 0), so masking costs nothing extra. In the backward, dS summed along the same diagonals gives the
// gradients of every bias parameter with O(rows + cols) work per tile pair.
//
// HyPE uses the tile-local exponent scheme (SPEC section 4): with D = D0 + s inside a tile pair,
// e^{+-mu D} = E+- * e^{+-mu s}, where E+- = e^{+-mu D0} is one scalar pair per tile pair and e^{+-mu s} comes from a
// per-head table whose exponents are bounded by the tile size; a = (tau/2)(e^{mu D} - e^{-mu D}).
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "microkernel.h"
#include "pool.h"

namespace hype {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int BQ = PANEL;   // forward: queries per tile (the vectorised direction)
constexpr int BK = 64;      // forward: keys per tile
constexpr int BKB = PANEL;  // backward: keys per tile (vectorised)
constexpr int BQB = 64;     // backward: query rows per block
constexpr int DIAG = 256;   // >= max(BQ + BK, BQB + BKB)

long roundUp(long x, long m) { return (x + m - 1) / m * m; }

/** Evaluates the bias of one head along a diagonal run D(t) = D0 + sgn * t, and folds diagonal sums of dS into
 * parameter gradients. Per-head tables (HyPE's tile-local exponentials) are built once per head. */
class HeadBias {
 public:
  explicit HeadBias(const AttentionParams& p)
      : p_(p),
        lo_(p.causal ? std::max<long>(0, p.queryOffset - (p.lk - 1)) : p.queryOffset - (p.lk - 1)),
        hi_(p.queryOffset + p.lq - 1) {
    if (p.bias.kind == kBiasHype) tables_.resize(size_t(p.bias.pairs) * 2 * DIAG);
  }

  void setHead(long h) {
    h_ = h;
    if (p_.bias.kind != kBiasHype) return;
    for (int k = 0; k < p_.bias.pairs; k++) {
      const double mu = p_.bias.mu[h * p_.bias.pairs + k];
      double* up = &tables_[size_t(k) * 2 * DIAG];
      double* dn = up + DIAG;
      for (int s = 0; s < DIAG; s++) {
        up[s] = std::exp(mu * s);  // exponents bounded by the tile size, whatever the sequence length
        dn[s] = std::exp(-mu * s);
      }
    }
  }

  /** out[t] = bias(D0 + sgn t) for t < n, with -inf where causal masks (D < 0); 0 outside the reachable range. */
  void fill(long D0, int sgn, int n, bool causal, float* out) const {
    const BiasSpec& b = p_.bias;
    for (int t = 0; t < n; t++) out[t] = 0.0f;
    switch (b.kind) {
      case kBiasAlibi: {
        const double s = b.slopes[h_];
        for (int t = 0; t < n; t++) {
          const long D = D0 + sgn * t;
          if (D >= lo_ && D <= hi_) out[t] = float(-s * double(D < 0 ? -D : D));
        }
        break;
      }
      case kBiasHype: {
        long A;
        if (!anchor(D0, sgn, n, A)) break;
        for (int k = 0; k < b.pairs; k++) {
          const long j = h_ * b.pairs + k;
          const double half = 0.5 * b.tau[j];
          const double ep = std::exp(b.mu[j] * double(A)), em = std::exp(-b.mu[j] * double(A));  // E+ and E-
          for (int t = 0; t < n; t++) {
            const long D = D0 + sgn * t;
            if (D < lo_ || D > hi_) continue;
            const long s = D - A;
            out[t] += float(half * (ep * pos(k, s) - em * pos(k, -s)));
          }
        }
        break;
      }
      case kBiasTable: {
        for (int t = 0; t < n; t++) {
          const long D = D0 + sgn * t;
          if (D >= lo_ && D <= hi_) out[t] = float(b.values[h_ * b.buckets + b.bucketOf[D + p_.lk - 1]]);
        }
        break;
      }
      default:
        break;
    }
    if (causal)
      for (int t = 0; t < n; t++)
        if (D0 + sgn * t < 0) out[t] = kNegInf;
  }

  /** grads += sum_t g[t] * d bias(D0 + sgn t) / d params (entries outside the reachable range carry g = 0). */
  void accumulate(long D0, int sgn, int n, const float* g, double* gSlopes, double* gTau, double* gMu,
                  double* gValues) const {
    const BiasSpec& b = p_.bias;
    switch (b.kind) {
      case kBiasAlibi: {
        double s = 0;
        for (int t = 0; t < n; t++) {
          const long D = D0 + sgn * t;
          if (g[t] != 0.0f && D >= lo_ && D <= hi_) s += double(g[t]) * double(D < 0 ? -D : D);
        }
        gSlopes[h_] -= s;
        break;
      }
      case kBiasHype: {
        long A;
        if (!anchor(D0, sgn, n, A)) break;
        for (int k = 0; k < b.pairs; k++) {
          const long j = h_ * b.pairs + k;
          const double ep = std::exp(b.mu[j] * double(A)), em = std::exp(-b.mu[j] * double(A));
          double st = 0, sm = 0;
          for (int t = 0; t < n; t++) {
            const long D = D0 + sgn * t;
            if (g[t] == 0.0f || D < lo_ || D > hi_) continue;
            const double epos = ep * pos(k, D - A), eneg = em * pos(k, A - D);  // e^{mu D}, e^{-mu D}
            st += double(g[t]) * 0.5 * (epos - eneg);                           // d a / d tau = sinh(mu D)
            sm += double(g[t]) * double(D) * 0.5 * (epos + eneg);               // d a / d mu = tau D cosh(mu D)
          }
          gTau[j] += st;
          gMu[j] += b.tau[j] * sm;
        }
        break;
      }
      case kBiasTable: {
        for (int t = 0; t < n; t++) {
          const long D = D0 + sgn * t;
          if (g[t] != 0.0f && D >= lo_ && D <= hi_) gValues[h_ * b.buckets + b.bucketOf[D + p_.lk - 1]] += double(g[t]);
        }
        break;
      }
      default:
        break;
    }
  }

 private:
  /** e^{mu_k s} for |s| < DIAG from the per-head tables. */
  double pos(int k, long s) const {
    const double* up = &tables_[size_t(k) * 2 * DIAG];
    return s >= 0 ? up[s] : up[DIAG - s];
  }
  /** The tile's anchor distance: the run's middle, clamped into the reachable range (false if none reachable). */
  bool anchor(long D0, int sgn, int n, long& A) const {
    const long a = D0, z = D0 + sgn * (n - 1);
    const long runLo = std::min(a, z), runHi = std::max(a, z);
    if (runHi < lo_ || runLo > hi_ || lo_ > hi_) return false;
    A = std::min(std::max((runLo + runHi) / 2, lo_), hi_);
    return true;
  }

  const AttentionParams& p_;
  long lo_, hi_;  // distances that any visible (query, key) pair can have
  long h_ = 0;
  std::vector<double> tables_;
};

}  // namespace

void attentionForward(const AttentionParams& p, const float* q, const float* k, const float* v, float* out,
                      float* lse) {
  const long B = p.batch, H = p.heads, Lq = p.lq, Lk = p.lk, d = p.d, dv = p.dv, qo = p.queryOffset;
  const long group = H / p.kvHeads;
  const long nqt = (Lq + BQ - 1) / BQ;
  const bool hasBias = p.bias.kind != kBiasNone;
  Pool& pool = Pool::instance();
  const int T = pool.size();
  // Per-thread scratch: packed scaled Q^T [d x BQ], logits/probabilities S^T [BK x BQ], O^T [dv x BQ].
  const long perThread = d * BQ + BK * BQ + dv * BQ + DIAG + 2 * BQ;
  std::vector<float> scratch(size_t(T) * perThread);
  std::vector<HeadBias> biases;
  for (int t = 0; t < T; t++) biases.emplace_back(p);

  // Heaviest tiles first (late query tiles see the most keys when causal), so the pool's tail stays short.
  pool.run(B * H * nqt, [&](long task, int thread) {
    const long qt = nqt - 1 - task / (B * H);
    const long bh = task % (B * H);
    const long b = bh / H, h = bh % H;
    const long i0 = qt * BQ, nq = std::min<long>(BQ, Lq - i0);
    float* QT = scratch.data() + thread * perThread;
    float* ST = QT + d * BQ;
    float* OT = ST + BK * BQ;
    float* diag = OT + dv * BQ;
    float* m = diag + DIAG;
    float* l = m + BQ;
    HeadBias& bias = biases[size_t(thread)];
    if (hasBias) bias.setHead(h);

    const float* qb = q + ((b * H + h) * Lq + i0) * d;
    for (long c = 0; c < d; c++) {
      float* row = QT + c * BQ;
      for (long j = 0; j < nq; j++) row[j] = qb[j * d + c] * p.scale;
      for (long j = nq; j < BQ; j++) row[j] = 0.0f;
    }
    std::fill(OT, OT + dv * BQ, 0.0f);
    for (int j = 0; j < BQ; j++) {
      m[j] = kNegInf;
      l[j] = 0.0f;
    }
    const long kvh = h / group;
    const float* kb = k + (b * p.kvHeads + kvh) * Lk * d;
    const float* vb = v + (b * p.kvHeads + kvh) * Lk * dv;
    const long lEnd = p.causal ? std::min(Lk, i0 + nq + qo) : Lk;  // keys beyond the last query's position: masked

    for (long l0 = 0; l0 < lEnd; l0 += BK) {
      const long nk = std::min<long>(BK, lEnd - l0);
      panelProduct(nk, NVMAX, kb + l0 * d, d, 1, d, QT, BQ, ST, BQ, 1.0f, false);
      const long Delta = i0 + qo - l0;  // D at (query 0, key 0) of the tile; D = Delta + j - r
      if (hasBias || (p.causal && Delta - (nk - 1) < 0)) {
        bias.fill(Delta - (BK - 1), 1, BQ + BK - 1, p.causal, diag);
        for (long r = 0; r < nk; r++) {
          float* s = ST + r * BQ;
          const float* dg = diag + (BK - 1) - r;
          for (int vv = 0; vv < NVMAX; vv++) store(s + vv * VL, load(s + vv * VL) + load(dg + vv * VL));
        }
      }
      // Online softmax down the key rows (each column is one query: no horizontal reductions).
      vf mx[NVMAX], msafe[NVMAX], sum[NVMAX];
      for (int vv = 0; vv < NVMAX; vv++) mx[vv] = splat(kNegInf);
      for (long r = 0; r < nk; r++)
        for (int vv = 0; vv < NVMAX; vv++) mx[vv] = vmax(mx[vv], load(ST + r * BQ + vv * VL));
      for (int vv = 0; vv < NVMAX; vv++) {
        const vf mold = load(m + vv * VL);
        const vf mnew = vmax(mold, mx[vv]);
        msafe[vv] = mnew == splat(kNegInf) ? vf{} : mnew;  // a column that has seen nothing keeps weight 0
        const vf alpha = vexp(mold - msafe[vv]);
        store(m + vv * VL, mnew);
        store(l + vv * VL, load(l + vv * VL) * alpha);
        for (long c = 0; c < dv; c++) store(OT + c * BQ + vv * VL, load(OT + c * BQ + vv * VL) * alpha);
        sum[vv] = vf{};
      }
      for (long r = 0; r < nk; r++) {
        float* s = ST + r * BQ;
        for (int vv = 0; vv < NVMAX; vv++) {
          const vf e = vexp(load(s + vv * VL) - msafe[vv]);
          store(s + vv * VL, e);
          sum[vv] += e;
        }
      }
      for (int vv = 0; vv < NVMAX; vv++) store(l + vv * VL, load(l + vv * VL) + sum[vv]);
      // O^T += V^T P^T: rows are value dims, broadcasting V[l][c] straight from the row-major tensor.
      panelProduct(dv, NVMAX, vb + l0 * dv, 1, dv, nk, ST, BQ, OT, BQ, 1.0f, true);
    }

    float* ob = out + ((b * H + h) * Lq + i0) * dv;
    float* lb = lse + (b * H + h) * Lq + i0;
    for (long j = 0; j < nq; j++) {
      if (m[j] == kNegInf) {
        lb[j] = kNegInf;  // no visible key: output 0
        for (long c = 0; c < dv; c++) ob[j * dv + c] = 0.0f;
        continue;
      }
      const float inv = 1.0f / l[j];
      lb[j] = m[j] + std::log(l[j]);
      for (long c = 0; c < dv; c++) ob[j * dv + c] = OT[c * BQ + j] * inv;
    }
  });
}

void attentionBackward(const AttentionParams& p, const float* q, const float* k, const float* v, const float* out,
                       const float* lse, const float* dout, float* dq, float* dk, float* dv_, const BiasGrads& g) {
  const long B = p.batch, H = p.heads, Hkv = p.kvHeads, Lq = p.lq, Lk = p.lk, d = p.d, dv = p.dv, qo = p.queryOffset;
  const long group = H / Hkv;
  const long dPad = roundUp(d, VL);
  const long nkt = (Lk + BKB - 1) / BKB;
  const int kind = p.bias.kind;
  const bool hasBias = kind != kBiasNone;
  Pool& pool = Pool::instance();
  const int T = pool.size();

  // delta_i = dOut_i . out_i (the softmax-backward row term), once per query row.
  std::vector<float> delta(size_t(B * H * Lq));
  pool.run(B * H, [&](long bh, int) {
    for (long i = 0; i < Lq; i++) {
      const float* o = out + (bh * Lq + i) * dv;
      const float* go = dout + (bh * Lq + i) * dv;
      double s = 0;
      for (long c = 0; c < dv; c++) s += double(o[c]) * double(go[c]);
      delta[size_t(bh * Lq + i)] = float(s);
    }
  });

  // Work units own a (batch, kv head) and a run of key tiles, so dK and dV are written exactly once. With few
  // (batch, kv head) pairs the key range is split into chunks, each with a private dQ accumulator summed at the end.
  const long pairs = B * Hkv;
  const long chunks = pairs >= 2 * T ? 1 : std::min(nkt, (4 * T + pairs - 1) / pairs);
  const long units = pairs * chunks;
  const long dqPerUnit = group * Lq * dPad;
  std::vector<float> dqAcc(size_t(chunks == 1 ? T : units) * dqPerUnit);

  long nParam = 0;
  if (kind == kBiasAlibi) nParam = H;
  if (kind == kBiasHype) nParam = 2 * H * p.bias.pairs;
  if (kind == kBiasTable) nParam = H * p.bias.buckets;
  std::vector<double> paramGrad(size_t(T) * nParam, 0.0);

  const long perThread = d * BKB + dv * BKB + BKB * dPad + d * BKB + dv * BKB + 2 * BQB * BKB + 2 * DIAG;
  std::vector<float> scratch(size_t(T) * perThread);
  std::vector<HeadBias> biases;
  for (int t = 0; t < T; t++) biases.emplace_back(p);

  pool.run(units, [&](long u, int thread) {
    const long pair = u / chunks, chunk = u % chunks;
    const long b = pair / Hkv, kvh = pair % Hkv;
    const long kt0 = chunk * nkt / chunks, kt1 = (chunk + 1) * nkt / chunks;
    float* KT = scratch.data() + thread * perThread;
    float* VT = KT + d * BKB;
    float* Kp = VT + dv * BKB;
    float* dKT = Kp + BKB * dPad;
    float* dVT = dKT + d * BKB;
    float* S = dVT + dv * BKB;  // P after the exponent
    float* dP = S + BQB * BKB;  // dS after the softmax backward
    float* diag = dP + BQB * BKB;
    float* gdiag = diag + DIAG;
    float* dQ = dqAcc.data() + (chunks == 1 ? thread : u) * dqPerUnit;
    std::fill(dQ, dQ + dqPerUnit, 0.0f);
    std::fill(gdiag, gdiag + DIAG, 0.0f);
    double* pg = paramGrad.data() + thread * nParam;
    double* gSlopes = kind == kBiasAlibi ? pg : nullptr;
    double* gTau = kind == kBiasHype ? pg : nullptr;
    double* gMu = kind == kBiasHype ? pg + H * p.bias.pairs : nullptr;
    double* gValues = kind == kBiasTable ? pg : nullptr;
    HeadBias& bias = biases[size_t(thread)];
    const float* kb = k + pair * Lk * d;
    const float* vb = v + pair * Lk * dv;

    for (long kt = kt0; kt < kt1; kt++) {
      const long l0 = kt * BKB, nk = std::min<long>(BKB, Lk - l0);
      for (long c = 0; c < d; c++) {
        for (long j = 0; j < nk; j++) KT[c * BKB + j] = kb[(l0 + j) * d + c];
        for (long j = nk; j < BKB; j++) KT[c * BKB + j] = 0.0f;
      }
      for (long c = 0; c < dv; c++) {
        for (long j = 0; j < nk; j++) VT[c * BKB + j] = vb[(l0 + j) * dv + c];
        for (long j = nk; j < BKB; j++) VT[c * BKB + j] = 0.0f;
      }
      for (long j = 0; j < BKB; j++) {
        for (long c = 0; c < dPad; c++) Kp[j * dPad + c] = (j < nk && c < d) ? kb[(l0 + j) * d + c] : 0.0f;
      }
      std::fill(dKT, dKT + d * BKB, 0.0f);
      std::fill(dVT, dVT + dv * BKB, 0.0f);
      const vf col = iota();

      for (long hl = 0; hl < group; hl++) {
        const long h = kvh * group + hl;
        if (hasBias) bias.setHead(h);
        const long iStart = p.causal ? std::max<long>(0, l0 - qo) : 0;  // earlier queries see none of this tile
        const float* lseH = lse + (b * H + h) * Lq;
        const float* deltaH = delta.data() + (b * H + h) * Lq;
        for (long i0 = iStart; i0 < Lq; i0 += BQB) {
          const long nq = std::min<long>(BQB, Lq - i0);
          const float* qp = q + ((b * H + h) * Lq + i0) * d;
          const float* gop = dout + ((b * H + h) * Lq + i0) * dv;
          panelProduct(nq, NVMAX, qp, d, 1, d, KT, BKB, S, BKB, p.scale, false);
          panelProduct(nq, NVMAX, gop, dv, 1, dv, VT, BKB, dP, BKB, 1.0f, false);
          const long Delta = i0 + qo - l0;  // D = Delta + ii - jj
          const bool useDiag = hasBias || (p.causal && Delta - (BKB - 1) < 0);
          if (useDiag) bias.fill(Delta + (BQB - 1), -1, BQB + BKB - 1, p.causal, diag);
          for (long ii = 0; ii < nq; ii++) {
            const float lsei = lseH[i0 + ii];
            const vf lv = splat(lsei == kNegInf ? std::numeric_limits<float>::infinity() : lsei);
            const vf dl = splat(deltaH[i0 + ii]);
            float* s = S + ii * BKB;
            float* dp = dP + ii * BKB;
            const float* dg = diag + (BQB - 1) - ii;
            float* gd = gdiag + (BQB - 1) - ii;
            for (int vv = 0; vv < NVMAX; vv++) {
              vf x = load(s + vv * VL);
              if (useDiag) x += load(dg + vv * VL);
              if (nk < BKB) x = col + float(vv * VL) < splat(float(nk)) ? x : splat(kNegInf);
              const vf pr = vexp(x - lv);
              const vf ds = pr * (load(dp + vv * VL) - dl);
              store(s + vv * VL, pr);
              store(dp + vv * VL, ds);
              if (hasBias) store(gd + vv * VL, load(gd + vv * VL) + ds);
            }
          }
          panelProduct(dv, NVMAX, gop, 1, dv, nq, S, BKB, dVT, BKB, 1.0f, true);
          panelProduct(d, NVMAX, qp, 1, d, nq, dP, BKB, dKT, BKB, 1.0f, true);
          float* dQrows = dQ + (hl * Lq + i0) * dPad;
          for (long cb = 0; cb < dPad; cb += PANEL) {
            const int nv = int(std::min<long>(PANEL, dPad - cb) / VL);
            panelProduct(nq, nv, dP, BKB, 1, nk, Kp + cb, dPad, dQrows + cb, dPad, 1.0f, true);
          }
          if (hasBias) {
            bias.accumulate(Delta + (BQB - 1), -1, BQB + BKB - 1, gdiag, gSlopes, gTau, gMu, gValues);
            std::fill(gdiag, gdiag + DIAG, 0.0f);
          }
        }
      }
      float* dkb = dk + (pair * Lk + l0) * d;
      float* dvb = dv_ + (pair * Lk + l0) * dv;
      for (long j = 0; j < nk; j++) {
        for (long c = 0; c < d; c++) dkb[j * d + c] = p.scale * dKT[c * BKB + j];
        for (long c = 0; c < dv; c++) dvb[j * dv + c] = dVT[c * BKB + j];
      }
    }
    if (chunks == 1) {
      for (long hl = 0; hl < group; hl++) {
        float* dqb = dq + ((b * H + kvh * group + hl) * Lq) * d;
        const float* acc = dQ + hl * Lq * dPad;
        for (long i = 0; i < Lq; i++)
          for (long c = 0; c < d; c++) dqb[i * d + c] = p.scale * acc[i * dPad + c];
      }
    }
  });

  if (chunks > 1) {
    pool.run(B * H, [&](long bh, int) {
      const long b = bh / H, h = bh % H, kvh = h / group, hl = h % group;
      float* dqb = dq + bh * Lq * d;
      for (long i = 0; i < Lq; i++)
        for (long c = 0; c < d; c++) {
          float s = 0;
          for (long ch = 0; ch < chunks; ch++)
            s += dqAcc[size_t(((b * Hkv + kvh) * chunks + ch) * dqPerUnit + (hl * Lq + i) * dPad + c)];
          dqb[i * d + c] = p.scale * s;
        }
    });
  }

  for (long j = 0; j < nParam; j++) {
    double s = 0;
    for (int t = 0; t < T; t++) s += paramGrad[size_t(t) * nParam + j];
    if (kind == kBiasAlibi) g.slopes[j] = s;
    if (kind == kBiasHype) (j < H * p.bias.pairs ? g.tau[j] : g.mu[j - H * p.bias.pairs]) = s;
    if (kind == kBiasTable) g.values[j] = s;
  }
}

}  // namespace hype
