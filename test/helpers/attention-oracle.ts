/**
 * A plain fp64 attention oracle (forward and backward, per-head bias over signed distance D), written apart from
 * src/backend so the backends are checked against arithmetic they do not share, and the rounding-error budget of a
 * kernel computing in a format with unit roundoff u, derived below.
 *
 * Layouts as in src/backend/backend.ts: q [B, H, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv], out/dOut
 * [B, H, Lq, Dv], lse [B, H, Lq]; the bias gradient is dTable [H, span] indexed by D + Lk - 1 (CONTRACT's table).
 *
 * Error budget. A logit s = scale q.k + bias computed in a format with unit roundoff u (any summation order) is off
 * by at most (d + 2) u Lambda, Lambda = the largest |scale| sum_x |q_x k_x| + |bias| over visible pairs (leaving out
 * keys whose probability stays below 2^-60 even after that error, exp((d + 2) u Lambda_il) p_il < 2^-60: they move
 * no output by a representable amount, and steep biases make such far keys' logits huge); storing lse
 * adds u |lse|. So every probability is off by a relative rho = 2 eps + (Lk + 8) u, eps = (d + 2) u Lambda + u |lse|,
 * (2 eps: the logit and the normaliser; Lk + 8: the sum of Lk exponentials and a few roundings). Each output entry is
 * a sum of at most Lk + d + Dv rounded products of such terms, so it is off by at most
 * (rho + (Lk + d + Dv + 8) u) times its cancellation-free magnitude (the same sum with every term made positive:
 * sum_l P |v| for out, |scale| sum_l P (|dP| + |delta|) |k| for dq, ...). The budget is that bound times 2 (for the
 * second-order terms the first-order bound drops); lse's is 2 (eps + (Lk + 8) u (1 + |lse|)). A kernel that mixes
 * in a masked key, drops a NaN or mis-indexes a head is off by the magnitude itself, far outside the budget
 * whenever the logits are moderate (rho << 1).
 */
import type { AttentionShape } from '../../src/backend/backend.ts';

export interface OracleCase {
  shape: AttentionShape;
  causal: boolean;
  scale: number;
  queryOffset: number;
  /** Bias of query head h at distance D (may be -Infinity: the key is masked), or null for none. */
  bias: ((h: number, D: number) => number) | null;
  q: ArrayLike<number>;
  k: ArrayLike<number>;
  v: ArrayLike<number>;
  dOut: ArrayLike<number>;
}

export type OracleTensor = 'out' | 'lse' | 'dq' | 'dk' | 'dv' | 'dTable';

export interface OracleResult {
  values: Record<OracleTensor, Float64Array>;
  /** Cancellation-free magnitude of each tensor (max over entries). */
  magnitude: Record<OracleTensor, number>;
  /** Lambda of the header: the largest |scale| sum |q k| + |bias| over visible pairs. */
  logitBound: number;
  span: number;
}

export function spanOf(shape: AttentionShape, queryOffset: number): number {
  return queryOffset + shape.lq + shape.lk - 1;
}

/** The oracle's fp64 results; u is the unit roundoff of the kernel checked (it decides which keys count in Lambda). */
export function attentionOracle(c: OracleCase, u: number): OracleResult {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = c.shape;
  const qo = c.queryOffset;
  const span = Math.max(spanOf(c.shape, qo), 0);
  const group = H / Hkv;
  const out = new Float64Array(B * H * lq * dv);
  const lse = new Float64Array(B * H * lq);
  const dq = new Float64Array(B * H * lq * d);
  const dk = new Float64Array(B * Hkv * lk * d);
  const dv_ = new Float64Array(B * Hkv * lk * dv);
  const dTable = new Float64Array(H * span);
  const mag = { out: 0, lse: 0, dq: 0, dk: new Float64Array(dk.length), dv: new Float64Array(dv_.length) };
  const dTableMag = new Float64Array(H * span);
  let logitBound = 0;
  const s = new Float64Array(lk);
  const lambda = new Float64Array(lk);
  const p = new Float64Array(lk);
  const dp = new Float64Array(lk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / group);
      const qBase = (b * H + h) * lq * d;
      const kBase = (b * Hkv + kvh) * lk * d;
      const vBase = (b * Hkv + kvh) * lk * dv;
      for (let i = 0; i < lq; i++) {
        const r = (b * H + h) * lq + i;
        let max = -Infinity;
        for (let l = 0; l < lk; l++) {
          const D = i + qo - l;
          const bias = c.causal && D < 0 ? -Infinity : c.bias ? c.bias(h, D) : 0;
          if (bias === -Infinity) {
            s[l] = -Infinity;
            continue;
          }
          let dot = 0;
          let absDot = 0;
          for (let x = 0; x < d; x++) {
            const t = c.q[qBase + i * d + x]! * c.k[kBase + l * d + x]!;
            dot += t;
            absDot += Math.abs(t);
          }
          s[l] = c.scale * dot + bias;
          lambda[l] = Math.abs(c.scale) * absDot + Math.abs(bias);
          max = Math.max(max, s[l]!);
        }
        if (max === -Infinity) {
          lse[r] = -Infinity;
          continue;
        }
        let sum = 0;
        for (let l = 0; l < lk; l++) sum += p[l] = Math.exp(s[l]! - max);
        lse[r] = max + Math.log(sum);
        mag.lse = Math.max(mag.lse, Math.abs(lse[r]!), Math.abs(max));
        let delta = 0;
        let deltaMag = 0;
        for (let l = 0; l < lk; l++) {
          p[l] = p[l]! / sum;
          // log p_il taken from the logits, so it does not underflow where p_il does
          if (s[l] !== -Infinity && (d + 2) * u * lambda[l]! + (s[l]! - lse[r]!) >= -60 * Math.LN2) {
            logitBound = Math.max(logitBound, lambda[l]!);
          }
          let t = 0;
          for (let x = 0; x < dv; x++) t += c.dOut[r * dv + x]! * c.v[vBase + l * dv + x]!;
          dp[l] = t;
          delta += p[l]! * t;
          deltaMag += p[l]! * Math.abs(t);
        }
        for (let x = 0; x < dv; x++) {
          let acc = 0;
          let accMag = 0;
          for (let l = 0; l < lk; l++) {
            acc += p[l]! * c.v[vBase + l * dv + x]!;
            accMag += p[l]! * Math.abs(c.v[vBase + l * dv + x]!);
          }
          out[r * dv + x] = acc;
          mag.out = Math.max(mag.out, accMag);
        }
        for (let x = 0; x < d; x++) {
          let acc = 0;
          let accMag = 0;
          for (let l = 0; l < lk; l++) {
            const ds = p[l]! * (dp[l]! - delta);
            const dsMag = p[l]! * (Math.abs(dp[l]!) + deltaMag);
            acc += c.scale * ds * c.k[kBase + l * d + x]!;
            accMag += Math.abs(c.scale) * dsMag * Math.abs(c.k[kBase + l * d + x]!);
          }
          dq[qBase + i * d + x] = acc;
          mag.dq = Math.max(mag.dq, accMag);
        }
        for (let l = 0; l < lk; l++) {
          if (p[l] === 0) continue;
          const ds = p[l]! * (dp[l]! - delta);
          const dsMag = p[l]! * (Math.abs(dp[l]!) + deltaMag);
          for (let x = 0; x < d; x++) {
            const j = kBase + l * d + x;
            dk[j] = dk[j]! + c.scale * ds * c.q[qBase + i * d + x]!;
            mag.dk[j] = mag.dk[j]! + Math.abs(c.scale) * dsMag * Math.abs(c.q[qBase + i * d + x]!);
          }
          for (let x = 0; x < dv; x++) {
            const j = vBase + l * dv + x;
            dv_[j] = dv_[j]! + p[l]! * c.dOut[r * dv + x]!;
            mag.dv[j] = mag.dv[j]! + p[l]! * Math.abs(c.dOut[r * dv + x]!);
          }
          const t = h * span + (i + qo - l) + lk - 1;
          dTable[t] = dTable[t]! + ds;
          dTableMag[t] = dTableMag[t]! + dsMag;
        }
      }
    }
  }
  const maxOf = (a: Float64Array) => a.reduce((m, x) => Math.max(m, x), 0);
  return {
    values: { out, lse, dq, dk, dv: dv_, dTable },
    magnitude: {
      out: mag.out,
      lse: mag.lse,
      dq: mag.dq,
      dk: maxOf(mag.dk),
      dv: maxOf(mag.dv),
      dTable: maxOf(dTableMag),
    },
    logitBound,
    span,
  };
}

/**
 * The absolute error budget of each tensor for a kernel with unit roundoff u (header). Two terms extend the header's
 * bound below the normal range, where kernels may flush subnormals to zero (the native addon sets FTZ and DAZ):
 * the scale itself is held in the kernel's format, so it is off by a relative uScale = max(u, eta / |scale|), eta
 * the format's smallest normal (uScale = 1 when the scale is flushed to 0), which moves every logit by
 * uScale Lambda and dq, dk by uScale of their size; and every operation may lose eta absolutely (a flushed result),
 * at most Lk + d + Dv + 8 of them per entry.
 */
export function errorBudget(c: OracleCase, o: OracleResult, u: number): Record<OracleTensor, number> {
  const { lk, headDim: d, valueDim: dv } = c.shape;
  const eta = u === 2 ** -24 ? 2 ** -126 : 2 ** -1022;
  const scale = Math.abs(c.scale);
  const uScale = scale === 0 ? 0 : Math.min(1, Math.max(u, eta / scale));
  const ops = lk + d + dv + 8;
  const eps = ((d + 2) * u + uScale) * o.logitBound + u * o.magnitude.lse + ops * eta;
  const rho = 2 * eps + (lk + 8) * u;
  const rel = 2 * (rho + ops * u);
  const under = 2 * ops * eta;
  return {
    out: rel * o.magnitude.out + under,
    lse: 2 * (eps + (lk + 8) * u * (1 + o.magnitude.lse)) + under,
    dq: (rel + 2 * uScale) * o.magnitude.dq + under,
    dk: (rel + 2 * uScale) * o.magnitude.dk + under,
    dv: rel * o.magnitude.dv + under,
    dTable: rel * o.magnitude.dTable + under,
  };
}

/**
 * The first entry of `got` outside `budget` of `want` (-Infinity must match exactly; any other non-finite value
 * is a failure), as a message, or null when all agree.
 */
export function firstDisagreement(
  what: string,
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  budget: number,
): string | null {
  if (got.length !== want.length) return `${what}: ${got.length} entries, expected ${want.length}`;
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!;
    const w = want[i]!;
    if (w === -Infinity || g === -Infinity) {
      if (g !== w) return `${what}[${i}] = ${g}, expected ${w}`;
      continue;
    }
    if (!Number.isFinite(g) || !(Math.abs(g - w) <= budget)) {
      return `${what}[${i}] = ${g}, expected ${w} within ${budget.toExponential(2)}`;
    }
  }
  return null;
}
