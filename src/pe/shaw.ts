/**
 * Shaw et al. 2018, "Self-Attention with Relative Position Representations" (section 3: the edge-aware output
 * and compatibility, with a^K_ij = w^K_clip(j-i,k), a^V_ij = w^V_clip(j-i,k)):
 *
 *   logit(i, l) = scale * q_i . (k_l + aK[clip(l - p_i, K)])        p_i = i + queryOffset (absolute position)
 *   out_i       = sum_l P(i, l) * (v_l + aV[clip(l - p_i, K)])      clip(x, K) = max(-K, min(K, x))
 *
 * aK [2K+1, D] and aV [2K+1, Dv] are learned edge embeddings indexed by the clipped signed distance key minus
 * query (the paper's j - i); row K is distance 0. Choices the paper leaves open or that we fix:
 * - clip K = 16 by default (the paper's ablation found results stable once K >= 2; any K >= 0 is accepted);
 * - one table shared by all heads, as in the paper (its efficient implementation shares them across heads),
 *   so grouped-query attention works unchanged; the value embeddings have the value dim, which must equal the
 *   head dim the encoding was built for;
 * - initialisation N(0, initStd^2), initStd = 0.02 (the paper does not state one);
 * - scale = 1/sqrt(head dim), applied to both key terms (the paper divides e_ij by sqrt(d_z));
 * - causal masking for language modelling (only distances -K..0 are then used); bidirectional as in the paper.
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

export interface ShawOptions {
  /** Largest relative distance with its own embedding; farther keys share the edge embedding. */
  clip: number;
  /** Standard deviation of the normal initialisation of both tables. */
  initStd: number;
}

const DEFAULTS: ShawOptions = { clip: 16, initStd: 0.02 };

export class ShawEncoding implements PositionalEncoding {
  readonly name = 'shaw';
  readonly sites = ['score-bias'] as const;
  readonly maxLength = Infinity;
  readonly params: readonly Param[];
  /** aK [2K+1, D]: relative key embeddings. */
  readonly keyTable: Param64;
  /** aV [2K+1, D]: relative value embeddings (value dim = head dim). */
  readonly valueTable: Param64;

  constructor(
    readonly dims: EncodingDims,
    readonly clip: number,
  ) {
    const rows = 2 * clip + 1;
    this.keyTable = createParam('shaw.aK', [rows, dims.headDim], false);
    this.valueTable = createParam('shaw.aV', [rows, dims.headDim], false);
    this.params = [this.keyTable, this.valueTable];
  }

  /** Table row of the clipped signed distance key - query. */
  row(queryPos: number, keyPos: number): number {
    const d = keyPos - queryPos;
    return Math.max(-this.clip, Math.min(this.clip, d)) + this.clip;
  }

  private checkCall(ctx: AttendContext, inputs: AttendInputs): void {
    checkAttendInputs(ctx, inputs, 'shaw');
    const s = ctx.shape;
    check(
      s.headDim === this.dims.headDim && s.valueDim === this.dims.headDim,
      'shape',
      `shaw: built for head dim ${this.dims.headDim} (keys and values), got headDim ${s.headDim} and valueDim ` +
        `${s.valueDim}; create the encoding with the model's head dim`,
    );
  }

  attend(ctx: AttendContext, inputs: AttendInputs): AttendResult {
    this.checkCall(ctx, inputs);
    const s = ctx.shape;
    const { batch: B, heads: H, lq, lk, headDim: D, valueDim: dv } = s;
    const rows = 2 * this.clip + 1;
    const scale = attentionScale(s);
    const q = asFloat64(inputs.q);
    const k = asFloat64(inputs.k);
    const v = inputs.v;
    const aK = this.keyTable.data;
    const aV = this.valueTable.data;
    const mask = { causal: ctx.causal, queryOffset: ctx.queryOffset };

    // q_i . aK[m] once per (query, table row), then each logit needs one lookup.
    const qa = new Float64Array(lq * rows);
    const logits = new Float64Array(B * H * lq * lk);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        const qBase = (b * H + h) * lq * D;
        const kBase = (b * s.kvHeads + kvHeadOf(s, h)) * lk * D;
        for (let i = 0; i < lq; i++) {
          for (let m = 0; m < rows; m++) qa[i * rows + m] = dot(q, qBase + i * D, aK, m * D, D);
        }
        for (let i = 0; i < lq; i++) {
          const p = i + ctx.queryOffset;
          const row = ((b * H + h) * lq + i) * lk;
          for (let l = 0; l < lk; l++) {
            if (!keyVisible(mask, i, l)) continue;
            logits[row + l] = scale * (dot(q, qBase + i * D, k, kBase + l * D, D) + qa[i * rows + this.row(p, l)]!);
          }
        }
      }
    }
    const fwd = explicitAttentionForward(s, mask, logits, v);
    const probs = fwd.probs;

    // Value term: out_i += sum_m (sum of P over the keys in bucket m) aV[m].
    const out = fwd.out;
    const bucketP = new Float64Array(rows);
    const term = new Float64Array(dv);
    for (let bh = 0; bh < B * H; bh++) {
      for (let i = 0; i < lq; i++) {
        this.bucketSums(probs, (bh * lq + i) * lk, i + ctx.queryOffset, lk, bucketP);
        term.fill(0);
        for (let m = 0; m < rows; m++) {
          const w = bucketP[m]!;
          if (w === 0) continue;
          for (let c = 0; c < dv; c++) term[c]! += w * aV[m * dv + c]!;
        }
        const oRow = (bh * lq + i) * dv;
        for (let c = 0; c < dv; c++) out[oRow + c]! += term[c]!;
      }
    }

    const backward = (dOutInput: Float64Array | Float32Array) => {
      const dOut = asFloat64(dOutInput);
      // dP gains dOut_i . aV[row(i, l)] from the value term.
      const extra = new Float64Array(probs.length);
      const dOa = new Float64Array(rows);
      for (let bh = 0; bh < B * H; bh++) {
        for (let i = 0; i < lq; i++) {
          const oRow = (bh * lq + i) * dv;
          for (let m = 0; m < rows; m++) dOa[m] = dot(dOut, oRow, aV, m * dv, dv);
          const p = i + ctx.queryOffset;
          const row = (bh * lq + i) * lk;
          for (let l = 0; l < lk; l++) if (probs[row + l] !== 0) extra[row + l] = dOa[this.row(p, l)]!;
          // d aV[m] = sum over keys in bucket m of P * dOut_i
          this.bucketSums(probs, row, p, lk, bucketP);
          for (let m = 0; m < rows; m++) {
            const w = bucketP[m]!;
            if (w === 0) continue;
            for (let c = 0; c < dv; c++) this.valueTable.grad[m * dv + c]! += w * dOut[oRow + c]!;
          }
        }
      }
      const { dLogits, dv: dV } = explicitAttentionBackward(s, probs, v, dOut, extra);

      const dq = new Float64Array(q.length);
      const dk = new Float64Array(k.length);
      const bucketG = new Float64Array(rows);
      for (let b = 0; b < B; b++) {
        for (let h = 0; h < H; h++) {
          const qBase = (b * H + h) * lq * D;
          const kBase = (b * s.kvHeads + kvHeadOf(s, h)) * lk * D;
          for (let i = 0; i < lq; i++) {
            const row = ((b * H + h) * lq + i) * lk;
            const qRow = qBase + i * D;
            const p = i + ctx.queryOffset;
            bucketG.fill(0);
            for (let l = 0; l < lk; l++) {
              const g = scale * dLogits[row + l]!;
              if (g === 0) continue;
              bucketG[this.row(p, l)]! += g;
              const kRow = kBase + l * D;
              for (let c = 0; c < D; c++) {
                dq[qRow + c]! += g * k[kRow + c]!;
                dk[kRow + c]! += g * q[qRow + c]!;
              }
            }
            for (let m = 0; m < rows; m++) {
              const g = bucketG[m]!;
              if (g === 0) continue;
              for (let c = 0; c < D; c++) {
                dq[qRow + c]! += g * aK[m * D + c]!;
                this.keyTable.grad[m * D + c]! += g * q[qRow + c]!;
              }
            }
          }
        }
      }
      return { dq: toDtypeOf(inputs.q, dq), dk: toDtypeOf(inputs.k, dk), dv: dV };
    };
    return { out, backward };
  }

  /** sums[m] = sum of probs[row + l] over the keys l whose clipped distance falls in table row m. */
  private bucketSums(probs: Float64Array, row: number, queryPos: number, lk: number, sums: Float64Array): void {
    sums.fill(0);
    for (let l = 0; l < lk; l++) {
      const pr = probs[row + l]!;
      if (pr !== 0) sums[this.row(queryPos, l)]! += pr;
    }
  }

  denseLogits(ctx: AttendContext, inputs: AttendInputs, scale: number): Float64Array {
    this.checkCall(ctx, inputs);
    const s = ctx.shape;
    const { q, k } = inputs;
    const D = s.headDim;
    const out = new Float64Array(s.batch * s.heads * s.lq * s.lk).fill(-Infinity);
    for (let b = 0; b < s.batch; b++) {
      for (let h = 0; h < s.heads; h++) {
        const kh = kvHeadOf(s, h);
        for (let i = 0; i < s.lq; i++) {
          const p = i + ctx.queryOffset;
          for (let l = 0; l < s.lk; l++) {
            if (ctx.causal && l > p) continue;
            const m = Math.max(-this.clip, Math.min(this.clip, l - p)) + this.clip;
            let e = 0;
            for (let c = 0; c < D; c++) {
              const keyWithEdge = k[((b * s.kvHeads + kh) * s.lk + l) * D + c]! + this.keyTable.data[m * D + c]!;
              e += q[((b * s.heads + h) * s.lq + i) * D + c]! * keyWithEdge;
            }
            out[((b * s.heads + h) * s.lq + i) * s.lk + l] = scale * e;
          }
        }
      }
    }
    return out;
  }

  /**
   * The value-side term the logits cannot show, for tests: sum_l probs(i, l) aV[clip(l - p_i)] as [B, H, Lq, Dv],
   * given probabilities [B, H, Lq, Lk]. out = probs V + this term.
   */
  denseValueTerm(ctx: AttendContext, probs: Float64Array): Float64Array {
    const s = ctx.shape;
    const dv = s.valueDim;
    const out = new Float64Array(s.batch * s.heads * s.lq * dv);
    for (let bh = 0; bh < s.batch * s.heads; bh++) {
      for (let i = 0; i < s.lq; i++) {
        const p = i + ctx.queryOffset;
        for (let l = 0; l < s.lk; l++) {
          const pr = probs[(bh * s.lq + i) * s.lk + l]!;
          const m = Math.max(-this.clip, Math.min(this.clip, l - p)) + this.clip;
          for (let c = 0; c < dv; c++) out[(bh * s.lq + i) * dv + c]! += pr * this.valueTable.data[m * dv + c]!;
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

export const shawFactory: EncodingFactory<ShawOptions> = {
  name: 'shaw',
  description: 'Shaw et al. 2018: learned relative key and value embeddings of the clipped distance (clip K)',
  sites: ['score-bias'],
  defaults: DEFAULTS,
  create(dims: EncodingDims, options: Partial<ShawOptions>, rng: Rng): ShawEncoding {
    const o = { ...DEFAULTS, ...options };
    check(
      Number.isInteger(o.clip) && o.clip >= 0,
      'argument',
      `shaw: clip = ${o.clip} must be a non-negative integer (the largest distance with its own embedding, e.g. 16)`,
    );
    check(
      Number.isFinite(o.initStd) && o.initStd >= 0,
      'argument',
      `shaw: initStd = ${o.initStd} must be a finite non-negative number (e.g. 0.02)`,
    );
    check(
      Number.isInteger(dims.headDim) && dims.headDim > 0,
      'argument',
      `shaw: headDim = ${dims.headDim} must be a positive integer`,
    );
    const enc = new ShawEncoding(dims, o.clip);
    rng.fillNormal(enc.keyTable.data, o.initStd);
    rng.fillNormal(enc.valueTable.data, o.initStd);
    return enc;
  },
};
