/**
 * Transformer-XL relative attention (Dai et al. 2019, section 3.3: the relative score A^rel as terms (a)-(d)):
 *
 *   logit(i, l) = scale * [ (q_i + u_h) . k_l  +  (q_i + v_h) . (W_R R_{p_i - l}) ]        p_i = i + queryOffset
 *
 * (a) + (c) are the content terms with the global content bias u; (b) + (d) the position terms with the global
 * position bias v. R_s is the fixed sinusoid of the signed distance s = p_i - l (query minus key; s >= 0 for past
 * keys), laid out as in the paper's code: [sin(s w_0) .. sin(s w_{dR/2-1}), cos(s w_0) .. cos(s w_{dR/2-1})] with
 * w_c = base^(-2c/dR). Choices the paper leaves open or that we fix:
 * - shapes: u, v [H, D] per query head (as the reference implementation's r_w_bias / r_r_bias); W_R [Hkv, D, dR]
 *   per key/value head, because W_R is the key-side projection of positions (the paper's W_{k,R}), so query heads
 *   that share keys under grouped-query attention share it too; with H = Hkv this is the paper exactly;
 * - dR (posDim) = the model width by default, as in the paper, where R has the embedding size;
 * - initialisation N(0, initStd^2) with initStd = 0.02 for u, v and W_R (the reference code's init_std);
 * - scale = 1/sqrt(head dim), multiplying all four terms (the reference code scales the summed score);
 * - bidirectional use evaluates the sinusoid at negative distances too (it is defined there); no memory segment
 *   (recurrence) — the study trains fixed windows, and a cache is just keys at positions < queryOffset.
 */
import { check } from '../errors.ts';
import type { Rng } from '../util/rng.ts';
import type {
  AttendContext,
  AttendInputs,
  AttendResult,
  EncodingDims,
  EncodingFactory,
  Param,
  PositionalEncoding,
} from './encoding.ts';
import {
  asFloat64,
  checkAttendInputs,
  createParam,
  explicitAttentionBackward,
  explicitAttentionForward,
  keyVisible,
  kvHeadOf,
  toDtypeOf,
  type Param64,
} from './explicit-attention.ts';
import { attentionScale } from './attention-plumbing.ts';

export interface XlOptions {
  /** Size dR of the sinusoid R (even); 0 means the model width. */
  posDim: number;
  /** Base of the sinusoid's geometric frequencies. */
  base: number;
  /** Standard deviation of the normal initialisation of u, v and W_R. */
  initStd: number;
}

const DEFAULTS: XlOptions = { posDim: 0, base: 10000, initStd: 0.02 };

/** R_s: the sinusoid of signed distance s, [sin(s w_c) for c < dR/2, then cos(s w_c)]. */
export function relativeSinusoid(s: number, posDim: number, base: number, out: Float64Array, at = 0): void {
  const half = posDim / 2;
  for (let c = 0; c < half; c++) {
    const angle = s * Math.pow(base, (-2 * c) / posDim);
    out[at + c] = Math.sin(angle);
    out[at + half + c] = Math.cos(angle);
  }
}

export class XlEncoding implements PositionalEncoding {
  readonly name = 'xl';
  readonly sites = ['score-bias'] as const;
  readonly maxLength = Infinity;
  readonly params: readonly Param[];
  /** Global content bias u [H, D]. */
  readonly u: Param64;
  /** Global position bias v [H, D]. */
  readonly v: Param64;
  /** Position projection W_R [Hkv, D, dR]. */
  readonly wR: Param64;

  constructor(
    readonly dims: EncodingDims,
    readonly posDim: number,
    readonly base: number,
  ) {
    this.u = createParam('xl.u', [dims.heads, dims.headDim], false);
    this.v = createParam('xl.v', [dims.heads, dims.headDim], false);
    this.wR = createParam('xl.wR', [dims.kvHeads, dims.headDim, posDim], false);
    this.params = [this.u, this.v, this.wR];
  }

  private checkCall(ctx: AttendContext, inputs: AttendInputs): void {
    checkAttendInputs(ctx, inputs, 'xl');
    const s = ctx.shape;
    check(
      s.heads === this.dims.heads && s.kvHeads === this.dims.kvHeads && s.headDim === this.dims.headDim,
      'shape',
      `xl: built for ${this.dims.heads} heads / ${this.dims.kvHeads} kv heads / head dim ${this.dims.headDim}, ` +
        `called with ${s.heads} / ${s.kvHeads} / ${s.headDim}; create the encoding with the model's sizes`,
    );
  }

  attend(ctx: AttendContext, inputs: AttendInputs): AttendResult {
    this.checkCall(ctx, inputs);
    const s = ctx.shape;
    const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: D } = s;
    const dR = this.posDim;
    const scale = attentionScale(s);
    const q = asFloat64(inputs.q);
    const k = asFloat64(inputs.k);
    const v = inputs.v;
    const mask = { causal: ctx.causal, queryOffset: ctx.queryOffset };

    // Every signed distance p - l of this call, smallest first: sMin = queryOffset - (Lk - 1).
    const sMin = ctx.queryOffset - (lk - 1);
    const nS = lq + lk - 1;
    const sinusoids = new Float64Array(nS * dR);
    for (let t = 0; t < nS; t++) relativeSinusoid(sMin + t, dR, this.base, sinusoids, t * dR);
    // Position keys r[kh, t] = W_R[kh] R_{sMin + t}.
    const r = new Float64Array(Hkv * nS * D);
    const W = this.wR.data;
    for (let kh = 0; kh < Hkv; kh++) {
      for (let t = 0; t < nS; t++) {
        for (let d = 0; d < D; d++) {
          r[(kh * nS + t) * D + d] = dot(W, (kh * D + d) * dR, sinusoids, t * dR, dR);
        }
      }
    }

    const qu = new Float64Array(lq * D);
    const qv = new Float64Array(lq * D);
    const fillBiased = (b: number, h: number): void => {
      const qBase = (b * H + h) * lq * D;
      for (let i = 0; i < lq; i++) {
        for (let d = 0; d < D; d++) {
          qu[i * D + d] = q[qBase + i * D + d]! + this.u.data[h * D + d]!;
          qv[i * D + d] = q[qBase + i * D + d]! + this.v.data[h * D + d]!;
        }
      }
    };

    const logits = new Float64Array(B * H * lq * lk);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        const kh = kvHeadOf(s, h);
        const kBase = (b * Hkv + kh) * lk * D;
        fillBiased(b, h);
        for (let i = 0; i < lq; i++) {
          const row = ((b * H + h) * lq + i) * lk;
          for (let l = 0; l < lk; l++) {
            if (!keyVisible(mask, i, l)) continue;
            const t = i + ctx.queryOffset - l - sMin;
            logits[row + l] = scale * (dot(qu, i * D, k, kBase + l * D, D) + dot(qv, i * D, r, (kh * nS + t) * D, D));
          }
        }
      }
    }
    const fwd = explicitAttentionForward(s, mask, logits, v);

    const backward = (dOut: Float64Array | Float32Array) => {
      const { dLogits, dv } = explicitAttentionBackward(s, fwd.probs, v, dOut);
      const dq = new Float64Array(q.length);
      const dk = new Float64Array(k.length);
      const dr = new Float64Array(r.length);
      for (let b = 0; b < B; b++) {
        for (let h = 0; h < H; h++) {
          const kh = kvHeadOf(s, h);
          const kBase = (b * Hkv + kh) * lk * D;
          const qBase = (b * H + h) * lq * D;
          fillBiased(b, h);
          for (let i = 0; i < lq; i++) {
            const row = ((b * H + h) * lq + i) * lk;
            for (let l = 0; l < lk; l++) {
              const g = scale * dLogits[row + l]!;
              if (g === 0) continue;
              const rAt = (kh * nS + (i + ctx.queryOffset - l - sMin)) * D;
              const kAt = kBase + l * D;
              for (let d = 0; d < D; d++) {
                dq[qBase + i * D + d]! += g * (k[kAt + d]! + r[rAt + d]!);
                dk[kAt + d]! += g * qu[i * D + d]!;
                this.u.grad[h * D + d]! += g * k[kAt + d]!;
                this.v.grad[h * D + d]! += g * r[rAt + d]!;
                dr[rAt + d]! += g * qv[i * D + d]!;
              }
            }
          }
        }
      }
      // dW_R[kh] += sum_t dr[kh, t] R_t^T
      for (let kh = 0; kh < Hkv; kh++) {
        for (let t = 0; t < nS; t++) {
          for (let d = 0; d < D; d++) {
            const g = dr[(kh * nS + t) * D + d]!;
            if (g === 0) continue;
            const wRow = (kh * D + d) * dR;
            for (let c = 0; c < dR; c++) this.wR.grad[wRow + c]! += g * sinusoids[t * dR + c]!;
          }
        }
      }
      return { dq: toDtypeOf(inputs.q, dq), dk: toDtypeOf(inputs.k, dk), dv };
    };
    return { out: fwd.out, backward };
  }

  denseLogits(ctx: AttendContext, inputs: AttendInputs, scale: number): Float64Array {
    this.checkCall(ctx, inputs);
    const s = ctx.shape;
    const D = s.headDim;
    const dR = this.posDim;
    const R = new Float64Array(dR);
    const out = new Float64Array(s.batch * s.heads * s.lq * s.lk).fill(-Infinity);
    for (let b = 0; b < s.batch; b++) {
      for (let h = 0; h < s.heads; h++) {
        const kh = kvHeadOf(s, h);
        for (let i = 0; i < s.lq; i++) {
          const p = i + ctx.queryOffset;
          for (let l = 0; l < s.lk; l++) {
            if (ctx.causal && l > p) continue;
            relativeSinusoid(p - l, dR, this.base, R);
            let content = 0;
            let position = 0;
            for (let d = 0; d < D; d++) {
              const qd = inputs.q[((b * s.heads + h) * s.lq + i) * D + d]!;
              const kd = inputs.k[((b * s.kvHeads + kh) * s.lk + l) * D + d]!;
              let rd = 0; // (W_R R_{p-l})_d
              for (let c = 0; c < dR; c++) rd += this.wR.data[(kh * D + d) * dR + c]! * R[c]!;
              content += (qd + this.u.data[h * D + d]!) * kd;
              position += (qd + this.v.data[h * D + d]!) * rd;
            }
            out[((b * s.heads + h) * s.lq + i) * s.lk + l] = scale * (content + position);
          }
        }
      }
    }
    return out;
  }
}

function dot(a: Float64Array, ao: number, b: Float64Array, bo: number, n: number): number {
  let s = 0;
  for (let c = 0; c < n; c++) s += a[ao + c]! * b[bo + c]!;
  return s;
}

export const xlFactory: EncodingFactory<XlOptions> = {
  name: 'xl',
  description: 'Transformer-XL relative attention: sinusoidal R of the distance, learned W_R and u/v biases',
  sites: ['score-bias'],
  defaults: DEFAULTS,
  create(dims: EncodingDims, options: Partial<XlOptions>, rng: Rng): XlEncoding {
    const o = { ...DEFAULTS, ...options };
    const posDim = o.posDim === 0 ? dims.modelDim : o.posDim;
    check(
      Number.isInteger(posDim) && posDim > 0 && posDim % 2 === 0,
      'argument',
      `xl: posDim = ${posDim} must be a positive even integer (sin and cos halves); set posDim, e.g. 64`,
    );
    check(Number.isFinite(o.base) && o.base > 1, 'argument', `xl: base = ${o.base} must be a number > 1 (e.g. 10000)`);
    check(
      Number.isFinite(o.initStd) && o.initStd >= 0,
      'argument',
      `xl: initStd = ${o.initStd} must be a finite non-negative number (e.g. 0.02)`,
    );
    check(
      dims.heads % dims.kvHeads === 0,
      'argument',
      `xl: heads (${dims.heads}) must be a multiple of kvHeads (${dims.kvHeads})`,
    );
    const enc = new XlEncoding(dims, posDim, o.base);
    for (const p of enc.params) rng.fillNormal(p.data, o.initStd);
    return enc;
  },
};
