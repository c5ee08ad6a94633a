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
import { kvHeadOf, visibleEnd, ScratchPool, type ExplicitHooks } from '../backend/score-attention.ts';
import { gemmFor } from '../backend/reference.ts';
import { addInto, checkAttendInputs, createParam, type Param64 } from './params.ts';
import { asDtype, allocate, dtypeOf, type FloatArray } from '../tensor.ts';
import { attentionScale } from './attention-plumbing.ts';
import { defineEncoding } from './options.ts';

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
  /** Reused O(L^2) work buffers (see ScratchPool): a backward must come before this encoding's next attend(). */
  private readonly scratch = new ScratchPool();
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
    const K = this.clip;
    const rows = 2 * K + 1;
    const scale = attentionScale(s);
    const qo = ctx.queryOffset;
    const work =
      inputs.q instanceof Float32Array && inputs.k instanceof Float32Array && inputs.v instanceof Float32Array
        ? 'float32'
        : 'float64';
    const q = asDtype(inputs.q, work);
    const gemm = gemmFor(ctx.backend, q);
    const aK = asDtype(this.keyTable.data, work);
    const aV = asDtype(this.valueTable.data, work);
    const mask = { causal: ctx.causal, queryOffset: qo };
    // Tables [B, H, Lq, 2K+1] over every (batch, head), so each product with aK or aV is one gemm per call:
    // q_i . aK[m] (forward) then dOut_i . aV[m] (backward); P bucketed by table row; scale * dLogits bucketed.
    const BHL = B * H * lq;
    const byRow = allocate(work, BHL * rows);
    const bucketedP = allocate(work, BHL * rows);
    const bucketedG = allocate(work, BHL * rows);
    const tableOf = (t: FloatArray, b: number, h: number) =>
      t.subarray((b * H + h) * lq * rows, (b * H + h + 1) * lq * rows);
    const dKeyTable = allocate(work, rows * D);
    const dValueTable = allocate(work, rows * dv);

    /**
     * Runs `visit(row, l, m)` over the visible keys l of query row i with their table row m = clip(l - p_i) + K,
     * in three runs (clipped below, the diagonal band, clipped above) so no clip happens per key.
     */
    const bands = (i: number): [number, number, number] => {
      const p = i + qo;
      const end = visibleEnd(mask, i, lk);
      const lowEnd = Math.max(0, Math.min(end, p - K + 1)); // l <= p - K: m = 0
      const bandEnd = Math.max(lowEnd, Math.min(end, p + K)); // l < p + K: m = l - p + K; then m = 2K
      return [lowEnd, bandEnd, end];
    };
    /** perRow[i, m] = alpha * sum of src[i, l] over the visible keys l in bucket m (src is [Lq, Lk]). */
    const bucketRows = (src: FloatArray, alpha: number, perRow: FloatArray): void => {
      perRow.fill(0);
      for (let i = 0; i < lq; i++) {
        const [lowEnd, bandEnd, end] = bands(i);
        const row = i * lk;
        const at = i * rows;
        const shift = K - (i + qo);
        let low = 0;
        for (let l = 0; l < lowEnd; l++) low += src[row + l]!;
        let high = 0;
        for (let l = bandEnd; l < end; l++) high += src[row + l]!;
        perRow[at] = perRow[at]! + alpha * low;
        for (let l = lowEnd; l < bandEnd; l++) perRow[at + l + shift] = perRow[at + l + shift]! + alpha * src[row + l]!;
        perRow[at + 2 * K] = perRow[at + 2 * K]! + alpha * high;
      }
    };
    /** dst[i, l] += perRow[i, m(i, l)] over the visible keys. */
    const gatherRows = (dst: FloatArray, perRow: FloatArray): void => {
      for (let i = 0; i < lq; i++) {
        const [lowEnd, bandEnd, end] = bands(i);
        const row = i * lk;
        const at = i * rows;
        const shift = K - (i + qo);
        const first = perRow[at]!;
        const last = perRow[at + 2 * K]!;
        for (let l = 0; l < lowEnd; l++) dst[row + l] = dst[row + l]! + first;
        for (let l = lowEnd; l < bandEnd; l++) dst[row + l] = dst[row + l]! + perRow[at + l + shift]!;
        for (let l = bandEnd; l < end; l++) dst[row + l] = dst[row + l]! + last;
      }
    };
    const hooks: ExplicitHooks = {
      // logit += scale q_i . aK[m(i, l)]
      logits: (b, h, _kh, S) => gatherRows(S, tableOf(byRow, b, h)),
      // out_i += sum_m (sum of P over the keys in bucket m) aV[m]: bucket here, one gemm after the core
      valueTerm: (b, h, P) => bucketRows(P, 1, tableOf(bucketedP, b, h)),
      // dP(i, l) += dOut_i . aV[m(i, l)]
      extraDProbs: (b, h, _P, _dOut, dP) => gatherRows(dP, tableOf(byRow, b, h)),
      // dq_i += sum_m G[i, m] aK[m] and d aK[m] += sum_i G[i, m] q_i, G = scale * dLogits bucketed: after the core
      backward: (b, h, _kh, dS) => {
        bucketRows(dS, scale, tableOf(bucketedG, b, h));
        return scale;
      },
    };
    gemm(false, true, BHL, rows, D, scale, q, D, aK, D, 0, byRow, rows);
    const core = ctx.backend.scoreAttention(
      ctx.shape,
      q,
      inputs.k,
      inputs.v,
      { causal: ctx.causal, queryOffset: ctx.queryOffset, scale, scratch: this.scratch },
      hooks,
    );
    gemm(false, false, BHL, dv, rows, 1, bucketedP, rows, aV, dv, 1, core.out, dv);
    return {
      out: core.out,
      backward: (dOutInput) => {
        const dOut = asDtype(dOutInput, work);
        // d aV[m] = sum_i (bucketed P)[i, m] dOut_i; the table dOut_i . aV[m] for extraDProbs.
        gemm(true, false, rows, dv, BHL, 1, bucketedP, rows, dOut, dv, 0, dValueTable, dv);
        gemm(false, true, BHL, rows, dv, 1, dOut, dv, aV, dv, 0, byRow, rows);
        const g = core.backward(dOut);
        gemm(false, false, BHL, D, rows, 1, bucketedG, rows, aK, D, 1, g.dq, D);
        gemm(true, false, rows, D, BHL, 1, bucketedG, rows, q, D, 0, dKeyTable, D);
        addInto(this.keyTable.grad, dKeyTable);
        addInto(this.valueTable.grad, dValueTable);
        return { dq: asDtype(g.dq, dtypeOf(inputs.q)), dk: g.dk, dv: g.dv };
      },
    };
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

export const shawFactory: EncodingFactory<ShawOptions> = defineEncoding<ShawOptions>({
  name: 'shaw',
  description: 'Shaw et al. 2018: learned relative key and value embeddings of the clipped distance (clip K)',
  sites: ['score-bias'],
  defaults: DEFAULTS,
  sizeKeys: ['clip'],
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
});
