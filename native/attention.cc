// Flash-style attention on CPU: tiles of queries and keys, online softmax, O(L) memory, forward and backward
// (probabilities recomputed from lse). Every product runs through the register kernel of microkernel.h.
//
// The position term arrives as data: a per-head table over the distance D = i + queryOffset - l (attention.h). We lay
// it out once per call into padded rows (DistanceTable), so a tile pair's biases are one pointer into it and each
// logit vector gets one unaligned vector load and add. The causal mask rides in the same vector (-inf for D < 0); on
// tiles crossing the diagonal it is applied by selection, not addition, so an overflowing logit (+inf) can never
// turn a masked key into NaN or weight. In the backward, dS summed along the tile's diagonals accumulates into a
// per-head gradient by distance, returned to the caller as dTable.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
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

/** a * b as a buffer size, refusing (std::length_error, reported by the bindings) a product that would overflow. */
size_t checkedSize(long a, long b) {
  long r = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r) || r > (1L << 53))
    throw std::length_error("a scratch buffer size overflows (" + std::to_string(a) + " x " + std::to_string(b) + ")");
  return size_t(r);
}

/**
 * The caller's distance table laid out for the tiles: one padded fp32 row per head covering every distance a tile
 * can touch (the reachable range plus tile overhang), so tile pairs read a pointer into it. Distances outside the
 * reachable range hold 0, and with a causal mask every D < 0 holds -inf, so the mask costs nothing either. A
 * reversed copy serves the backward, whose rows run along decreasing D.
 */
class DistanceTable {
 public:
  DistanceTable(const AttentionParams& p, Pool& pool)
      : p_(p),
        lo_(p.causal ? std::max<long>(0, p.queryOffset - (p.lk - 1)) : p.queryOffset - (p.lk - 1)),
        hi_(p.queryOffset + p.lq - 1),
        base_(p.queryOffset - p.lk - 2 * DIAG),
        len_(p.lq + p.lk + 4 * DIAG),
        rows_(p.bias.any() ? p.heads : 1) {
    if (!p.bias.any() && !p.causal) return;
    fwd_.assign(checkedSize(rows_, len_), 0.0f);
    rev_.resize(fwd_.size());
    pool.run(rows_, [&](long h, int) {
      float* row = fwd_.data() + h * len_;
      if (p_.bias.any())
        for (long D = lo_; D <= hi_; D++) row[D - base_] = float(p_.bias.at(h, D + p_.lk - 1));
      if (p_.causal)
        for (long D = base_; D < std::min(0L, base_ + len_); D++) row[D - base_] = kNegInf;
      float* rrow = rev_.data() + h * len_;
      for (long x = 0; x < len_; x++) rrow[x] = row[len_ - 1 - x];
    });
  }

  /** ptr[t] = bias(h, D0 + t). */
  const float* increasing(long h, long D0) const { return fwd_.data() + row(h) * len_ + (D0 - base_); }
  /** ptr[t] = bias(h, D0 - t). */
  const float* decreasing(long h, long D0) const {
    return rev_.data() + row(h) * len_ + (len_ - 1 - (D0 - base_));
  }
  long base() const { return base_; }
  long length() const { return len_; }

  /** dTable[h, D + Lk - 1] += G[D - base] over the reachable distances (G: one head's gradient by distance). */
  void gradients(long h, const double* G, double* dTable) const {
    for (long D = lo_; D <= hi_; D++) dTable[h * p_.bias.span + D + p_.lk - 1] += G[D - base_];
  }

 private:
  long row(long h) const { return rows_ == 1 ? 0 : h; }

  const AttentionParams& p_;
  long lo_, hi_;     // distances some visible (query, key) pair can have
  long base_, len_;  // the table covers D in [base, base + len): the reachable range plus tile overhang
  long rows_;
  std::vector<float> fwd_, rev_;
};

}  // namespace

void attentionForward(const AttentionParams& p, const float* q, const float* k, const float* v, float* out,
                      float* lse) {
  const long B = p.batch, H = p.heads, Lq = p.lq, Lk = p.lk, d = p.d, dv = p.dv, qo = p.queryOffset;
  const long group = H / p.kvHeads;
  const long nqt = (Lq + BQ - 1) / BQ;
  const bool hasBias = p.bias.any();
  Pool& pool = Pool::instance();
  const int T = pool.size();
  // Per-thread scratch: packed Q^T [d x BQ], logits/probabilities S^T [BK x BQ], O^T [dv x BQ].
  const long perThread = d * BQ + BK * BQ + dv * BQ + 2 * BQ;
  std::vector<float> scratch(checkedSize(T, perThread));
  const DistanceTable table(p, pool);

  // Head-major order, so the threads work through one head's keys and values together while they are in cache;
  // within a head the heaviest query tiles (latest, when causal) come first.
  pool.run(B * H * nqt, [&](long task, int thread) {
    const long bh = task / nqt;
    const long qt = nqt - 1 - task % nqt;
    const long b = bh / H, h = bh % H;
    const long i0 = qt * BQ, nq = std::min<long>(BQ, Lq - i0);
    float* QT = scratch.data() + thread * perThread;
    float* ST = QT + d * BQ;
    float* OT = ST + BK * BQ;
    float* m = OT + dv * BQ;
    float* l = m + BQ;
    const float* qb = q + ((b * H + h) * Lq + i0) * d;
    for (long c = 0; c < d; c++) {
      float* row = QT + c * BQ;
      for (long j = 0; j < nq; j++) row[j] = qb[j * d + c];
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
      // scale * (q . k) with the same summation order as the backward's recomputation, so both see bitwise the
      // same logits and P = exp(S - lse) there is consistent with this forward.
      panelProduct(nk, NVMAX, kb + l0 * d, d, 1, d, QT, BQ, ST, BQ, p.scale, false);
      const long Delta = i0 + qo - l0;  // D at (query 0, key 0) of the tile; D = Delta + j - r
      const bool diagonal = p.causal && Delta - (nk - 1) < 0;
      if (hasBias || diagonal) {
        const float* run = table.increasing(h, Delta - (BK - 1));  // run[t] = bias(Delta - (BK - 1) + t)
        for (long r = 0; r < nk; r++) {
          float* s = ST + r * BQ;
          const float* dg = run + (BK - 1) - r;
          if (diagonal) {
            for (int vv = 0; vv < NVMAX; vv++) {
              const vf b = load(dg + vv * VL);
              store(s + vv * VL, b == splat(kNegInf) ? b : load(s + vv * VL) + b);
            }
          } else {
            for (int vv = 0; vv < NVMAX; vv++) store(s + vv * VL, load(s + vv * VL) + load(dg + vv * VL));
          }
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
                       const float* lse, const float* dout, float* dq, float* dk, float* dv_, double* dTable) {
  const long B = p.batch, H = p.heads, Hkv = p.kvHeads, Lq = p.lq, Lk = p.lk, d = p.d, dv = p.dv, qo = p.queryOffset;
  const long group = H / Hkv;
  const long dPad = roundUp(d, VL);
  const long nkt = (Lk + BKB - 1) / BKB;
  const bool hasBias = p.bias.any();
  Pool& pool = Pool::instance();
  const int T = pool.size();

  // delta_i = dOut_i . out_i (the softmax-backward row term), once per query row.
  std::vector<float> delta(checkedSize(B * H, Lq));
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
  std::vector<float> dqAcc(checkedSize(chunks == 1 ? T : units, dqPerUnit));

  const DistanceTable table(p, pool);
  // Per thread and head: G[D] = sum of dS over pairs at distance D; parameter gradients follow from it at the end.
  const long gLen = hasBias ? table.length() : 0;
  std::vector<double> gByDistance(checkedSize(T * H, gLen), 0.0);

  const long perThread = d * BKB + dv * BKB + BKB * dPad + d * BKB + dv * BKB + 2 * BQB * BKB + 2 * DIAG;
  std::vector<float> scratch(checkedSize(T, perThread));
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
    float* gdiag = dP + BQB * BKB;
    float* dQ = dqAcc.data() + (chunks == 1 ? thread : u) * dqPerUnit;
    std::fill(dQ, dQ + dqPerUnit, 0.0f);
    std::fill(gdiag, gdiag + DIAG, 0.0f);
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
          const bool diagonal = p.causal && Delta - (BKB - 1) < 0;
          const bool useDiag = hasBias || diagonal;
          const float* run = useDiag ? table.decreasing(h, Delta + (BQB - 1)) : nullptr;  // bias(Delta+BQB-1-t)
          for (long ii = 0; ii < nq; ii++) {
            const float lsei = lseH[i0 + ii];
            const vf lv = splat(lsei == kNegInf ? std::numeric_limits<float>::infinity() : lsei);
            const vf dl = splat(deltaH[i0 + ii]);
            float* s = S + ii * BKB;
            float* dp = dP + ii * BKB;
            const float* dg = run + (BQB - 1) - ii;
            float* gd = gdiag + (BQB - 1) - ii;
            for (int vv = 0; vv < NVMAX; vv++) {
              vf x = load(s + vv * VL);
              if (diagonal) {
                const vf bv = load(dg + vv * VL);
                x = bv == splat(kNegInf) ? bv : x + bv;
              } else if (useDiag) {
                x += load(dg + vv * VL);
              }
              if (nk < BKB) x = col + float(vv * VL) < splat(float(nk)) ? x : splat(kNegInf);
              const vf pr = vexp(x - lv);
              vf ds = pr * (load(dp + vv * VL) - dl);
              // A masked key's dS is 0 whatever dP holds (dOut . v may overflow to inf for huge v, and 0 * inf is
              // NaN). Masked keys occur only on diagonal tiles (padding keys have v = 0), so other tiles skip this.
              if (diagonal) ds = x == splat(kNegInf) ? vf{} : ds;
              store(s + vv * VL, pr);
              store(dp + vv * VL, ds);
              if (hasBias) store(gd + vv * VL, load(gd + vv * VL) + ds);
            }
          }
          panelProduct(dv, NVMAX, gop, 1, dv, nq, S, BKB, dVT, BKB, 1.0f, true);
          panelProduct(d, NVMAX, qp, 1, d, nq, dP, BKB, dKT, BKB, 1.0f, true);
          float* dQrows = dQ + (hl * Lq + i0) * dPad;
          // dQ += dS K over whole vectors of the head dim in NVMAX-vector panels. A short tail (d = 66: 2 columns)
          // would waste most of a padded vector, so those columns are dot products of dS rows with rows of K^T.
          const long full = d / VL, tail = d - full * VL;
          const long vecs = tail > 0 && tail <= 4 ? full : dPad / VL;
          for (long cv = 0; cv < vecs; cv += NVMAX) {
            const int nv = int(std::min<long>(NVMAX, vecs - cv));
            panelProduct(nq, nv, dP, BKB, 1, nk, Kp + cv * VL, dPad, dQrows + cv * VL, dPad, 1.0f, true);
          }
          if (vecs == full) {
            for (long ii = 0; ii < nq; ii++) {
              const float* ds = dP + ii * BKB;
              for (long c = full * VL; c < d; c++) {
                const float* kc = KT + c * BKB;  // zero beyond nk, like dS
                vf acc = vf{};
                for (int j = 0; j < BKB; j += VL) acc += load(ds + j) * load(kc + j);
                float sum = 0;
                for (int x = 0; x < VL; x++) sum += acc[x];
                dQrows[ii * dPad + c] += sum;
              }
            }
          }
          if (hasBias) {
            // gdiag[t] holds the distance Delta + BQB - 1 - t.
            double* G = gByDistance.data() + (size_t(thread) * H + h) * gLen + (Delta + BQB - 1 - table.base());
            for (long t = 0; t < BQB + BKB - 1; t++) G[-t] += double(gdiag[t]);
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

  if (hasBias) {
    pool.run(H, [&](long h, int) {
      std::vector<double> G(size_t(gLen), 0.0);
      for (int t = 0; t < T; t++) {
        const double* src = gByDistance.data() + (size_t(t) * H + h) * gLen;
        for (long x = 0; x < gLen; x++) G[size_t(x)] += src[x];
      }
      table.gradients(h, G.data(), dTable);
    });
  }
}

}  // namespace hype
