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

#include "bf16.h"
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


inline float valueOf(float x) { return x; }
inline float valueOf(uint16_t x) { return bf16Value(x); }

/** delta_i = dOut_i . out_i (the softmax-backward row term), once per query row; dOut fp32 or bf16 bits. */
template <typename G>
std::vector<float> rowDeltas(const AttentionParams& p, const float* out, const G* dout, Pool& pool) {
  const long rows = p.lq, dv = p.dv;
  std::vector<float> delta(checkedSize(p.batch * p.heads, rows));
  pool.run(p.batch * p.heads, [&](long bh, int) {
    for (long i = 0; i < rows; i++) {
      const float* o = out + (bh * rows + i) * dv;
      const G* go = dout + (bh * rows + i) * dv;
      double s = 0;
      for (long c = 0; c < dv; c++) s += double(o[c]) * double(valueOf(go[c]));
      delta[size_t(bh * rows + i)] = float(s);
    }
  });
  return delta;
}

/**
 * The backward's work split and its gradient accumulators, shared by the fp32 and bf16 kernels. Work units own a
 * (batch, kv head) and a run of key tiles, so dK and dV are written exactly once. With few (batch, kv head) pairs
 * the key range is split into chunks, each with a private dQ accumulator (rows of dPad floats) summed at the end.
 * Per thread and head, G[D] sums dS over pairs at distance D; the table gradient follows from it at the end.
 */
class BackwardWork {
 public:
  BackwardWork(const AttentionParams& p, const DistanceTable& table, long keyTiles, long dPad, int threads)
      : p_(p), table_(table), dPad_(dPad), T_(threads), group_(p.heads / p.kvHeads) {
    const long pairs = p.batch * p.kvHeads;
    chunks_ = pairs >= 2 * T_ ? 1 : std::min(keyTiles, (4 * T_ + pairs - 1) / pairs);
    units_ = pairs * chunks_;
    keyTiles_ = keyTiles;
    dqPerUnit_ = group_ * p.lq * dPad;
    dqAcc_.resize(checkedSize(chunks_ == 1 ? T_ : units_, dqPerUnit_));
    gLen_ = p.bias.any() ? table.length() : 0;
    gByDistance_.assign(checkedSize(T_ * p.heads, gLen_), 0.0);
  }
  long units() const { return units_; }
  /** Unit u: its (batch, kv head) pair and key tiles [kt0, kt1). */
  void unit(long u, long* pair, long* kt0, long* kt1) const {
    const long chunk = u % chunks_;
    *pair = u / chunks_;
    *kt0 = chunk * keyTiles_ / chunks_;
    *kt1 = (chunk + 1) * keyTiles_ / chunks_;
  }
  /** The zeroed dQ accumulator of unit u on this thread ([group, Lq, dPad]). */
  float* dq(long u, int thread) {
    float* x = dqAcc_.data() + (chunks_ == 1 ? thread : u) * dqPerUnit_;
    std::fill(x, x + dqPerUnit_, 0.0f);
    return x;
  }
  /** Adds one tile's diagonal sums (gdiag[t]: distance Delta + QB - 1 - t, over QB + W - 1 of them), zeroes them. */
  void addDiagonals(int thread, long h, long Delta, long QB, long W, float* gdiag) {
    double* G = gByDistance_.data() + (size_t(thread) * p_.heads + h) * gLen_ + (Delta + QB - 1 - table_.base());
    for (long t = 0; t < QB + W - 1; t++) G[-t] += double(gdiag[t]);
    std::fill(gdiag, gdiag + DIAG, 0.0f);
  }
  /** Stores dK = scale dK^T, dV = dV^T ([c][W] tiles) for keys l0 .. l0 + nk of a pair. */
  void storeKeyGrads(long pair, long l0, long nk, long W, const float* dKT, const float* dVT, float* dk,
                     float* dv) const {
    const long d = p_.d, dvd = p_.dv;
    float* dkb = dk + (pair * p_.lk + l0) * d;
    float* dvb = dv + (pair * p_.lk + l0) * dvd;
    for (long j = 0; j < nk; j++) {
      for (long c = 0; c < d; c++) dkb[j * d + c] = p_.scale * dKT[c * W + j];
      for (long c = 0; c < dvd; c++) dvb[j * dvd + c] = dVT[c * W + j];
    }
  }
  /** At the end of a unit: with one chunk per pair its dQ is complete and is stored here. */
  void storeUnitDq(long pair, const float* acc, float* dq) const {
    if (chunks_ != 1) return;
    const long b = pair / p_.kvHeads, kvh = pair % p_.kvHeads, Lq = p_.lq, d = p_.d;
    for (long hl = 0; hl < group_; hl++) {
      float* dqb = dq + ((b * p_.heads + kvh * group_ + hl) * Lq) * d;
      const float* a = acc + hl * Lq * dPad_;
      for (long i = 0; i < Lq; i++)
        for (long c = 0; c < d; c++) dqb[i * d + c] = p_.scale * a[i * dPad_ + c];
    }
  }
  /** After all units: dQ summed over chunks (when split), and the table gradient summed over threads. */
  void finish(Pool& pool, float* dq, double* dTable) {
    const long H = p_.heads, Hkv = p_.kvHeads, Lq = p_.lq, d = p_.d;
    if (chunks_ > 1) {
      pool.run(p_.batch * H, [&](long bh, int) {
        const long b = bh / H, h = bh % H, kvh = h / group_, hl = h % group_;
        float* dqb = dq + bh * Lq * d;
        for (long i = 0; i < Lq; i++)
          for (long c = 0; c < d; c++) {
            float s = 0;
            for (long ch = 0; ch < chunks_; ch++)
              s += dqAcc_[size_t(((b * Hkv + kvh) * chunks_ + ch) * dqPerUnit_ + (hl * Lq + i) * dPad_ + c)];
            dqb[i * d + c] = p_.scale * s;
          }
      });
    }
    if (p_.bias.any()) {
      pool.run(H, [&](long h, int) {
        std::vector<double> G(size_t(gLen_), 0.0);
        for (int t = 0; t < T_; t++) {
          const double* src = gByDistance_.data() + (size_t(t) * H + h) * gLen_;
          for (long x = 0; x < gLen_; x++) G[size_t(x)] += src[x];
        }
        table_.gradients(h, G.data(), dTable);
      });
    }
  }

 private:
  const AttentionParams& p_;
  const DistanceTable& table_;
  long dPad_;
  int T_;
  long group_, chunks_ = 1, units_ = 0, keyTiles_ = 0, dqPerUnit_ = 0, gLen_ = 0;
  std::vector<float> dqAcc_;
  std::vector<double> gByDistance_;
};

/**
 * The forward's last step for a query tile: out = O^T / l (O^T: [dv][W]) and lse = m mUnit + log l per query; a
 * query that saw no key (m = -inf) gets out = 0 and lse = -inf.
 */
inline void storeRows(const float* OT, long W, const float* m, float mUnit, const float* l, long nq, long dv,
                      float* ob, float* lb) {
  for (long j = 0; j < nq; j++) {
    if (m[j] == kNegInf) {
      lb[j] = kNegInf;
      for (long c = 0; c < dv; c++) ob[j * dv + c] = 0.0f;
      continue;
    }
    const float inv = 1.0f / l[j];
    lb[j] = m[j] * mUnit + std::log(l[j]);
    for (long c = 0; c < dv; c++) ob[j * dv + c] = OT[c * W + j] * inv;
  }
}

/**
 * Adds the position term and the causal mask to a forward tile S^T [nk key rows x BK_COLS query columns] (row stride
 * NV * VL) whose (query 0, key 0) is at distance Delta: D = Delta + j - r.
 */
template <int NV, int KB>
void addForwardBias(const DistanceTable& table, const AttentionParams& p, long h, long Delta, long nk, bool hasBias,
                    float* ST) {
  constexpr int W = NV * VL;
  const bool diagonal = p.causal && Delta - (nk - 1) < 0;
  if (!hasBias && !diagonal) return;
  const float* run = table.increasing(h, Delta - (KB - 1));  // run[t] = bias(Delta - (KB - 1) + t)
  for (long r = 0; r < nk; r++) {
    float* s = ST + r * W;
    const float* dg = run + (KB - 1) - r;
    if (diagonal) {
      for (int vv = 0; vv < NV; vv++) {
        const vf b = load(dg + vv * VL);
        store(s + vv * VL, b == splat(kNegInf) ? b : load(s + vv * VL) + b);
      }
    } else {
      for (int vv = 0; vv < NV; vv++) store(s + vv * VL, load(s + vv * VL) + load(dg + vv * VL));
    }
  }
}

/**
 * The softmax backward of one tile in place: S [nq x BKB_COLS] holds scale q.k, dP holds dOut.v; on return S holds
 * P = exp(S + bias - lse) and dP holds dS = P (dP - delta). With a position term, dS is also summed along the
 * tile's diagonals into gdiag (gdiag[t]: distance Delta + QB - 1 - t; QB: the query block).
 */
template <int NV, int QB>
void softmaxBackwardTile(const DistanceTable& table, const AttentionParams& p, long h, long Delta, long nq, long nk,
                         bool hasBias, const float* lseH, const float* deltaH, float* S, float* dP, float* gdiag) {
  constexpr int W = NV * VL;
  const vf col = iota();
  const bool diagonal = p.causal && Delta - (W - 1) < 0;
  const bool useDiag = hasBias || diagonal;
  const float* run = useDiag ? table.decreasing(h, Delta + (QB - 1)) : nullptr;  // bias(Delta+QB-1-t)
  for (long ii = 0; ii < nq; ii++) {
    const float lsei = lseH[ii];
    const vf lv = splat(lsei == kNegInf ? std::numeric_limits<float>::infinity() : lsei);
    const vf dl = splat(deltaH[ii]);
    float* s = S + ii * W;
    float* dp = dP + ii * W;
    const float* dg = run + (QB - 1) - ii;
    float* gd = gdiag + (QB - 1) - ii;
    for (int vv = 0; vv < NV; vv++) {
      vf x = load(s + vv * VL);
      if (diagonal) {
        const vf bv = load(dg + vv * VL);
        x = bv == splat(kNegInf) ? bv : x + bv;
      } else if (useDiag) {
        x += load(dg + vv * VL);
      }
      if (nk < W) x = col + float(vv * VL) < splat(float(nk)) ? x : splat(kNegInf);
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
}

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
      addForwardBias<NVMAX, BK>(table, p, h, i0 + qo - l0, nk, hasBias, ST);
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

    storeRows(OT, BQ, m, 1.0f, l, nq, dv, out + ((b * H + h) * Lq + i0) * dv, lse + (b * H + h) * Lq + i0);
  });
}

void attentionBackward(const AttentionParams& p, const float* q, const float* k, const float* v, const float* out,
                       const float* lse, const float* dout, float* dq, float* dk, float* dv_, double* dTable) {
  const long H = p.heads, Hkv = p.kvHeads, Lq = p.lq, Lk = p.lk, d = p.d, dv = p.dv, qo = p.queryOffset;
  const long group = H / Hkv;
  const long dPad = roundUp(d, VL);
  const long nkt = (Lk + BKB - 1) / BKB;
  const bool hasBias = p.bias.any();
  Pool& pool = Pool::instance();
  const int T = pool.size();

  const std::vector<float> delta = rowDeltas(p, out, dout, pool);

  const DistanceTable table(p, pool);
  BackwardWork work(p, table, nkt, dPad, T);

  const long perThread = d * BKB + dv * BKB + BKB * dPad + d * BKB + dv * BKB + 2 * BQB * BKB + 2 * DIAG;
  std::vector<float> scratch(checkedSize(T, perThread));
  pool.run(work.units(), [&](long u, int thread) {
    long pair = 0, kt0 = 0, kt1 = 0;
    work.unit(u, &pair, &kt0, &kt1);
    const long b = pair / Hkv, kvh = pair % Hkv;
    float* KT = scratch.data() + thread * perThread;
    float* VT = KT + d * BKB;
    float* Kp = VT + dv * BKB;
    float* dKT = Kp + BKB * dPad;
    float* dVT = dKT + d * BKB;
    float* S = dVT + dv * BKB;  // P after the exponent
    float* dP = S + BQB * BKB;  // dS after the softmax backward
    float* gdiag = dP + BQB * BKB;
    float* dQ = work.dq(u, thread);
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
          softmaxBackwardTile<NVMAX, BQB>(table, p, h, Delta, nq, nk, hasBias, lseH + i0, deltaH + i0, S, dP, gdiag);
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
          if (hasBias) work.addDiagonals(thread, h, Delta, BQB, BKB, gdiag);
        }
      }
      work.storeKeyGrads(pair, l0, nk, BKB, dKT, dVT, dk, dv_);
    }
    work.storeUnitDq(pair, dQ, dq);
  });
  work.finish(pool, dq, dTable);
}

// ------------------------------------------------------------------------------------------------------ bf16
//
// The same tiling with bf16 operands in the pair layout of bf16.h and fp32 accumulation, softmax statistics and
// position terms. Probabilities and dS are rounded to bf16 before the products that consume them (as FlashAttention
// does in bf16). In the forward, the running maximum is kept on the grid ln2 * Z (m = ln2 * ceil(max / ln2)), so each
// rescale is an exact power of two and rounding commutes with it: every probability is rounded exactly as
// bf16(exp(s - c)) for one per-row constant c, whatever the tiling, which the reference emulation
// (src/backend/bf16.ts) reproduces.

namespace {

constexpr int NVB = BF_PANEL / VL > 0 ? BF_PANEL / VL : 1;  // fp32 vectors per 64-column tile row
// Reduction depths: keys per forward tile and query rows per backward block. Twice the fp32 kernel's, so each bf16
// product runs 64 pair steps between loading and storing its accumulators (the same depth as the fp32 kernel's).
constexpr int BKF = 128;
constexpr int BQF = 128;
static_assert(BF_PANEL + BKF <= DIAG && BQF + BF_PANEL <= DIAG, "the distance table's margins cover the bf16 tiles");

/**
 * A buffer of at least n elements kept by the calling thread across calls (grown, never shrunk, contents
 * unspecified): the bf16 kernels' per-call copies would otherwise page-fault fresh memory on every call.
 */
template <typename T>
T* kept(std::vector<T>& store, size_t n) {
  if (store.size() < n) store.resize(n);
  return store.data();
}

/** Row-major bf16 rows of length n, each padded with zeros to np (a no-copy view when n == np). */
const uint16_t* paddedRows(const uint16_t* x, long rows, long n, long np, std::vector<uint16_t>& store, Pool& pool) {
  if (n == np) return x;
  uint16_t* dst = kept(store, checkedSize(rows, np));
  pool.run((rows + 255) / 256, [&](long t, int) {
    for (long r = t * 256; r < std::min(rows, (t + 1) * 256); r++) {
      std::copy(x + r * n, x + r * n + n, dst + r * np);
      std::fill(dst + r * np + n, dst + (r + 1) * np, uint16_t(0));
    }
  });
  return dst;
}

/**
 * Pair words along the sequence: out[g][p][c] = (x[g][2p][c], x[g][2p+1][c]) for g < groups (each L rows of n),
 * p < ceil(L / 2); the missing row of an odd L is zero.
 */
const uint32_t* sequencePairs(const uint16_t* x, long groups, long L, long n, std::vector<uint32_t>& store,
                              Pool& pool) {
  const long Lp = (L + 1) / 2;
  uint32_t* out = kept(store, checkedSize(checkedSize(groups, Lp), n));
  pool.run(groups, [&](long g, int) {
    const uint16_t* src = x + g * L * n;
    uint32_t* dst = out + g * Lp * n;
    for (long p = 0; p < Lp; p++)
      for (long c = 0; c < n; c++)
        dst[p * n + c] = bf16Pair(src[2 * p * n + c], 2 * p + 1 < L ? src[(2 * p + 1) * n + c] : uint16_t(0));
  });
  return out;
}

/** A panel of pair words from rows of pair words: dst[p][j] = row j's word p (rows: stride ld u16), zero for j >= n. */
void transposePairs(const uint16_t* rows, long ld, long n, long kp, uint32_t* dst) {
  for (long p = 0; p < kp; p++) {
    uint32_t* d = dst + p * BF_PANEL;
    for (long j = 0; j < n; j++) std::memcpy(d + j, rows + j * ld + 2 * p, 4);
    std::fill(d + n, d + BF_PANEL, 0u);
  }
}

/** Pair words down the rows of an fp32 tile (row stride BF_PANEL): dst[p][j] = (x[2p][j], x[2p+1][j]) rounded. */
void rowPairs(const float* x, long rows, uint32_t* dst) {
  for (long p = 0; p < (rows + 1) / 2; p++) {
    const float* a = x + 2 * p * BF_PANEL;
    for (int v = 0; v < NVB; v++) {
      const vf lo = load(a + v * VL), hi = 2 * p + 1 < rows ? load(a + BF_PANEL + v * VL) : vf{};
      const vi w = bf16PackPairs(lo, hi);
      std::memcpy(dst + p * BF_PANEL + v * VL, &w, sizeof w);
    }
  }
}

/** 2^n for integer-valued n (exact; 0 below the normal range; NaN stays NaN). */
inline vf exp2Int(vf n) {
  const vf c = n < splat(-127.0f) ? splat(-127.0f) : (n > splat(127.0f) ? splat(127.0f) : n);
  const vf r = (vf)((__builtin_convertvector(c, vi) + 127) << 23);
  return n != n ? n : (n < splat(-126.0f) ? vf{} : r);
}

/** ceil(x) lane-wise for the exponent grid (|x| clamped to 2^30; -inf and NaN pass through). */
inline vf ceilGrid(vf x) {
  const vf c = x < splat(-1e9f) ? splat(-1e9f) : (x > splat(1e9f) ? splat(1e9f) : x);
  vf t = __builtin_convertvector(__builtin_convertvector(c, vi), vf);
  t = t < c ? t + 1.0f : t;
  return x != x || x == splat(kNegInf) ? x : t;
}

constexpr float kLn2 = 0.693147180559945309f;
constexpr float kLog2e = 1.44269504088896341f;

}  // namespace

void attentionForwardBf16(const AttentionParams& p, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                          float* out, float* lse) {
  const long B = p.batch, H = p.heads, Hkv = p.kvHeads, Lq = p.lq, Lk = p.lk, d = p.d, dv = p.dv, qo = p.queryOffset;
  const long group = H / Hkv;
  const long dP = roundUp(d, 2), kp = dP / 2, Lk2 = (Lk + 1) / 2;
  const long nqt = (Lq + BF_PANEL - 1) / BF_PANEL;
  const bool hasBias = p.bias.any();
  const bool fast = bf16Fast();
  Pool& pool = Pool::instance();
  const int T = pool.size();
  static thread_local std::vector<uint16_t> kStore;
  static thread_local std::vector<uint32_t> vStore, wordStore;
  static thread_local std::vector<float> floatStore;
  const uint16_t* kr = paddedRows(k, B * Hkv * Lk, d, dP, kStore, pool);
  const uint32_t* vPairs = sequencePairs(v, B * Hkv, Lk, dv, vStore, pool);
  // Per-thread scratch: Q^T pairs [kp x 64], P^T pairs [32 x 64]; S^T [64 x 64], O^T [dv x 64], m, l.
  const long wordsPer = kp * BF_PANEL + (BKF / 2) * BF_PANEL;
  const long floatsPer = BKF * BF_PANEL + dv * BF_PANEL + 2 * BF_PANEL;
  uint32_t* const wordScratch = kept(wordStore, checkedSize(T, wordsPer));
  float* const floatScratch = kept(floatStore, checkedSize(T, floatsPer));
  const DistanceTable table(p, pool);

  pool.run(B * H * nqt, [&](long task, int thread) {
    const long bh = task / nqt;
    const long qt = nqt - 1 - task % nqt;
    const long b = bh / H, h = bh % H;
    const long i0 = qt * BF_PANEL, nq = std::min<long>(BF_PANEL, Lq - i0);
    uint32_t* QT = wordScratch + thread * wordsPer;
    uint32_t* PT = QT + kp * BF_PANEL;
    float* ST = floatScratch + thread * floatsPer;
    float* OT = ST + BKF * BF_PANEL;
    float* m = OT + dv * BF_PANEL;  // the running maximum as an exponent n (max <= n ln2)
    float* l = m + BF_PANEL;
    const uint16_t* qb = q + ((b * H + h) * Lq + i0) * d;
    if (d == dP) {
      transposePairs(qb, d, nq, kp, QT);
    } else {
      for (long c = 0; c < kp; c++) {
        uint32_t* row = QT + c * BF_PANEL;
        for (long j = 0; j < nq; j++) row[j] = bf16Pair(qb[j * d + 2 * c], 2 * c + 1 < d ? qb[j * d + 2 * c + 1] : 0);
        std::fill(row + nq, row + BF_PANEL, 0u);
      }
    }
    std::fill(OT, OT + dv * BF_PANEL, 0.0f);
    std::fill(m, m + BF_PANEL, kNegInf);
    std::fill(l, l + BF_PANEL, 0.0f);
    const long kvh = h / group;
    const uint16_t* kb = kr + (b * Hkv + kvh) * Lk * dP;
    const uint32_t* vb = vPairs + (b * Hkv + kvh) * Lk2 * dv;
    const long lEnd = p.causal ? std::min(Lk, i0 + nq + qo) : Lk;

    for (long l0 = 0; l0 < lEnd; l0 += BKF) {
      const long nk = std::min<long>(BKF, lEnd - l0);
      bf16PanelProduct(fast, nk, BF_NV, kb + l0 * dP, dP, 2, kp, QT, BF_PANEL, ST, BF_PANEL, p.scale, false);
      addForwardBias<NVB, BKF>(table, p, h, i0 + qo - l0, nk, hasBias, ST);
      vf mx[NVB], shift[NVB], sum[NVB];
      for (int vv = 0; vv < NVB; vv++) mx[vv] = splat(kNegInf);
      for (long r = 0; r < nk; r++)
        for (int vv = 0; vv < NVB; vv++) mx[vv] = vmax(mx[vv], load(ST + r * BF_PANEL + vv * VL));
      for (int vv = 0; vv < NVB; vv++) {
        const vf mold = load(m + vv * VL);
        const vf mnew = vmax(mold, ceilGrid(mx[vv] * kLog2e));
        const vf msafe = mnew == splat(kNegInf) ? vf{} : mnew;  // a column that has seen nothing keeps weight 0
        const vf alpha = exp2Int(mold - msafe);
        shift[vv] = msafe * kLn2;
        store(m + vv * VL, mnew);
        store(l + vv * VL, load(l + vv * VL) * alpha);
        for (long c = 0; c < dv; c++) store(OT + c * BF_PANEL + vv * VL, load(OT + c * BF_PANEL + vv * VL) * alpha);
        sum[vv] = vf{};
      }
      // Probabilities of key rows r, r + 1 rounded to bf16 and packed straight into P^T's pair words.
      for (long r = 0; r < nk; r += 2) {
        const float* s = ST + r * BF_PANEL;
        for (int vv = 0; vv < NVB; vv++) {
          const vi lo = bf16RoundBits(vexp(load(s + vv * VL) - shift[vv]));
          const vi hi = r + 1 < nk ? bf16RoundBits(vexp(load(s + BF_PANEL + vv * VL) - shift[vv])) : vi{};
          sum[vv] += (vf)lo + (vf)hi;
          const vi w = (vi)((vu)lo >> 16) | hi;
          std::memcpy(PT + (r / 2) * BF_PANEL + vv * VL, &w, sizeof w);
        }
      }
      for (int vv = 0; vv < NVB; vv++) store(l + vv * VL, load(l + vv * VL) + sum[vv]);
      bf16PanelProduct(fast, dv, BF_NV, reinterpret_cast<const uint16_t*>(vb + (l0 / 2) * dv), 2, 2 * dv, (nk + 1) / 2, PT,
                       BF_PANEL, OT, BF_PANEL, 1.0f, true);
    }

    storeRows(OT, BF_PANEL, m, kLn2, l, nq, dv, out + ((b * H + h) * Lq + i0) * dv, lse + (b * H + h) * Lq + i0);
  });
}

void attentionBackwardBf16(const AttentionParams& p, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                           const float* out, const float* lse, const uint16_t* dout, float* dq, float* dk, float* dv_,
                           double* dTable) {
  const long B = p.batch, H = p.heads, Hkv = p.kvHeads, Lq = p.lq, Lk = p.lk, d = p.d, dv = p.dv, qo = p.queryOffset;
  const long group = H / Hkv;
  const long dP = roundUp(d, 2), dvP = roundUp(dv, 2), dPad = roundUp(d, BF_COLS), Lq2 = (Lq + 1) / 2;
  const long nkt = (Lk + BF_PANEL - 1) / BF_PANEL;
  constexpr long W = BF_PANEL;  // keys per tile (the vectorised direction)
  const bool hasBias = p.bias.any();
  const bool fast = bf16Fast();
  Pool& pool = Pool::instance();
  const int T = pool.size();

  const std::vector<float> delta = rowDeltas(p, out, dout, pool);
  static thread_local std::vector<uint16_t> qStore, kStore, vStore, gStore;
  static thread_local std::vector<uint32_t> qPairStore, gPairStore, wordStore;
  static thread_local std::vector<float> floatStore;
  const uint16_t* qr = paddedRows(q, B * H * Lq, d, dP, qStore, pool);
  const uint16_t* kr = paddedRows(k, B * Hkv * Lk, d, dP, kStore, pool);
  const uint16_t* vr = paddedRows(v, B * Hkv * Lk, dv, dvP, vStore, pool);
  const uint16_t* gr = paddedRows(dout, B * H * Lq, dv, dvP, gStore, pool);
  const uint32_t* qPairs = sequencePairs(q, B * H, Lq, d, qPairStore, pool);
  const uint32_t* gPairs = sequencePairs(dout, B * H, Lq, dv, gPairStore, pool);

  const DistanceTable table(p, pool);
  BackwardWork work(p, table, nkt, dPad, T);

  // Per thread: K^T, V^T pairs [dP/2, dvP/2 x W]; K pairs along keys [W/2 x dPad]; P, dS pairs [BQF/2 x W];
  // dS rows as bf16 [BQF x W]; and fp32 dK^T, dV^T [d, dv x W], S, dP [BQF x W], gdiag.
  const long wordsPer = (dP / 2) * W + (dvP / 2) * W + (W / 2) * dPad + 2 * (BQF / 2) * W + BQF * W / 2;
  const long floatsPer = d * W + dv * W + 2 * BQF * W + 2 * DIAG;
  uint32_t* const wordScratch = kept(wordStore, checkedSize(T, wordsPer));
  float* const floatScratch = kept(floatStore, checkedSize(T, floatsPer));
  pool.run(work.units(), [&](long u, int thread) {
    long pair = 0, kt0 = 0, kt1 = 0;
    work.unit(u, &pair, &kt0, &kt1);
    const long b = pair / Hkv, kvh = pair % Hkv;
    uint32_t* KT = wordScratch + thread * wordsPer;
    uint32_t* VT = KT + (dP / 2) * W;
    uint32_t* Kk = VT + (dvP / 2) * W;
    uint32_t* PP = Kk + (W / 2) * dPad;
    uint32_t* SP = PP + (BQF / 2) * W;
    uint16_t* SR = reinterpret_cast<uint16_t*>(SP + (BQF / 2) * W);
    float* dKT = floatScratch + thread * floatsPer;
    float* dVT = dKT + d * W;
    float* S = dVT + dv * W;
    float* dPt = S + BQF * W;
    float* gdiag = dPt + BQF * W;
    float* dQ = work.dq(u, thread);
    std::fill(gdiag, gdiag + DIAG, 0.0f);
    const uint16_t* kb = kr + pair * Lk * dP;
    const uint16_t* vb = vr + pair * Lk * dvP;
    const uint16_t* kraw = k + pair * Lk * d;

    for (long kt = kt0; kt < kt1; kt++) {
      const long l0 = kt * W, nk = std::min<long>(W, Lk - l0), nkp = (nk + 1) / 2;
      transposePairs(kb + l0 * dP, dP, nk, dP / 2, KT);
      transposePairs(vb + l0 * dvP, dvP, nk, dvP / 2, VT);
      for (long j = 0; j < W / 2; j++)
        for (long c = 0; c < dPad; c++) {
          const bool in = c < d && 2 * j < nk;
          Kk[j * dPad + c] = in ? bf16Pair(kraw[(l0 + 2 * j) * d + c], 2 * j + 1 < nk ? kraw[(l0 + 2 * j + 1) * d + c] : 0) : 0;
        }
      std::fill(dKT, dKT + d * W, 0.0f);
      std::fill(dVT, dVT + dv * W, 0.0f);

      for (long hl = 0; hl < group; hl++) {
        const long h = kvh * group + hl;
        // Earlier queries see none of this tile; start on an even row so query pairs line up with qPairs.
        const long iStart = p.causal ? std::max<long>(0, l0 - qo) / 2 * 2 : 0;
        const float* lseH = lse + (b * H + h) * Lq;
        const float* deltaH = delta.data() + (b * H + h) * Lq;
        for (long i0 = iStart; i0 < Lq; i0 += BQF) {
          const long nq = std::min<long>(BQF, Lq - i0), nqp = (nq + 1) / 2;
          bf16PanelProduct(fast, nq, BF_NV, qr + ((b * H + h) * Lq + i0) * dP, dP, 2, dP / 2, KT, W, S, W, p.scale, false);
          bf16PanelProduct(fast, nq, BF_NV, gr + ((b * H + h) * Lq + i0) * dvP, dvP, 2, dvP / 2, VT, W, dPt, W, 1.0f, false);
          const long Delta = i0 + qo - l0;
          softmaxBackwardTile<NVB, BQF>(table, p, h, Delta, nq, nk, hasBias, lseH + i0, deltaH + i0, S, dPt, gdiag);
          rowPairs(S, nq, PP);
          rowPairs(dPt, nq, SP);
          for (long ii = 0; ii < nq; ii++)
            for (long j = 0; j < W; j += VL) {
              const vh bits = bf16Narrow(load(dPt + ii * W + j));
              std::memcpy(SR + ii * W + j, &bits, sizeof bits);
            }
          const uint32_t* gq = gPairs + ((b * H + h) * Lq2 + i0 / 2) * dv;
          const uint32_t* qq = qPairs + ((b * H + h) * Lq2 + i0 / 2) * d;
          bf16PanelProduct(fast, dv, BF_NV, reinterpret_cast<const uint16_t*>(gq), 2, 2 * dv, nqp, PP, W, dVT, W, 1.0f, true);
          bf16PanelProduct(fast, d, BF_NV, reinterpret_cast<const uint16_t*>(qq), 2, 2 * d, nqp, SP, W, dKT, W, 1.0f, true);
          float* dQrows = dQ + (hl * Lq + i0) * dPad;
          for (long cv = 0; cv < dPad / BF_COLS; cv += BF_NV) {
            const int nv = int(std::min<long>(BF_NV, dPad / BF_COLS - cv));
            bf16PanelProduct(fast, nq, nv, SR, W, 2, nkp, Kk + cv * BF_COLS, dPad, dQrows + cv * BF_COLS, dPad, 1.0f, true);
          }
          if (hasBias) work.addDiagonals(thread, h, Delta, BQF, W, gdiag);
        }
      }
      work.storeKeyGrads(pair, l0, nk, W, dKT, dVT, dk, dv_);
    }
    work.storeUnitDq(pair, dQ, dq);
  });
  work.finish(pool, dq, dTable);
}

}  // namespace hype
