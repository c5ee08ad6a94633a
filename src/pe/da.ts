/**
 * DA-Transformer, distance-aware attention (Wu, Wu and Huang, NAACL 2021, the method section):
 *
 *   R_h(i, l)    = w_h * |p_i - l|                                   p_i = i + queryOffset; per-head weight w_h
 *   Rhat_h(i, l) = (1 + exp(v_h)) / (1 + exp(v_h - R_h(i, l)))       learnable sigmoid, per-head v_h
 *   logit(i, l)  = scale * ReLU(q_i . k_l) * Rhat_h(i, l)            attention = softmax over l of the logits
 *
 * Rhat(0) = 1 (no change at distance 0), it tends to 0 for w_h < 0 (local heads) and is bounded by 1 + exp(v_h)
 * for w_h > 0 (long-range heads). Normalisation: the paper divides the rescaled, ReLU-clipped scores by sqrt(d)
 * and applies the usual softmax to them (not a plain renormalisation of ReLU(q.k) Rhat); we implement that. As a
 * consequence a key with q.k <= 0 gets logit 0, not probability 0. Choices the paper leaves open or that we fix:
 * - causal masking for language modelling (the paper's tasks are bidirectional; both are offered);
 * - initialisation: w_h evenly spaced in [-weightInit, +weightInit] across heads (0 for one head), so the model
 *   starts with both local and long-range heads as the paper motivates; v_h = sigmoidInit (0: bound 2);
 * - ReLU'(0) = 0; per query head parameters, so grouped-query attention needs nothing special;
 * - Rhat is evaluated as (1 + e^v) * sigmoid(R - v), which is the same function but cannot overflow to inf/inf.
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
import { kvHeadOf, visibleEnd, ScratchPool, type ExplicitHooks, type MaskSpec } from '../backend/score-attention.ts';
import { gemmFor } from '../backend/reference.ts';
import { checkAttendInputs, createParam, type Param64 } from './params.ts';
import { asDtype, allocate, dtypeOf, type FloatArray } from '../tensor.ts';
import { attentionScale } from './attention-plumbing.ts';
import { defineEncoding } from './options.ts';

export interface DaOptions {
  /** Heads start with w_h evenly spaced in [-weightInit, weightInit]. */
  weightInit: number;
  /** Initial v_h of every head (the rescale is bounded by 1 + exp(v_h)). */
  sigmoidInit: number;
}

const DEFAULTS: DaOptions = { weightInit: 0.1, sigmoidInit: 0 };

function sigmoid(z: number): number {
  if (z >= 0) return 1 / (1 + Math.exp(-z));
  const e = Math.exp(z);
  return e / (1 + e);
}

/**
 * S = scale q.k of one (batch, head) -> scale ReLU(q.k) Rhat(|p_i - l|) in place over the visible keys, with
 * Rhat read from rescale[at + distance]; keys l <= p_i are at distance p_i - l, later ones at l - p_i. A plain
 * function of its arguments (not a closure) so the loop keeps everything in registers.
 */
function rescaleLogits(S: FloatArray, rescale: Float64Array, at: number, lq: number, lk: number, mask: MaskSpec) {
  for (let i = 0; i < lq; i++) {
    const p = i + mask.queryOffset;
    const end = visibleEnd(mask, i, lk);
    const split = Math.max(0, Math.min(end, p + 1));
    const row = i * lk;
    const back = at + p; // rescale index of key l <= p is back - l
    // max(x, 0) rather than a branch: the sign of q.k is random, a branch would mispredict half the time.
    for (let l = 0; l < split; l++) S[row + l] = Math.max(S[row + l]!, 0) * rescale[back - l]!;
    const ahead = at - p; // and of key l > p, ahead + l
    for (let l = split; l < end; l++) S[row + l] = Math.max(S[row + l]!, 0) * rescale[ahead + l]!;
  }
}

export class DaEncoding implements PositionalEncoding {
  readonly name = 'da';
  readonly sites = ['score-rescale'] as const;
  readonly maxLength = Infinity;
  readonly params: readonly Param[];
  /** Reused O(L^2) work buffers (see ScratchPool): a backward must come before this encoding's next attend(). */
  private readonly scratch = new ScratchPool();
  /** Per-head distance weight w [H]. */
  readonly weight: Param64;
  /** Per-head sigmoid parameter v [H]. */
  readonly sigmoidParam: Param64;

  constructor(readonly dims: EncodingDims) {
    this.weight = createParam('da.w', [dims.heads], false);
    this.sigmoidParam = createParam('da.v', [dims.heads], false);
    this.params = [this.weight, this.sigmoidParam];
  }

  private checkCall(ctx: AttendContext, inputs: AttendInputs): void {
    checkAttendInputs(ctx, inputs, 'da');
    for (let h = 0; h < this.dims.heads; h++) {
      const w = this.weight.data[h]!;
      const v = this.sigmoidParam.data[h]!;
      check(
        Number.isFinite(w) && Number.isFinite(Math.exp(v)),
        'overflow',
        `da: head ${h} has w = ${w}, v = ${v}; w must be finite and exp(v) must not overflow (v < 709): ` +
          'lower the learning rate or restore a checkpoint',
      );
    }
    check(
      ctx.shape.heads === this.dims.heads,
      'shape',
      `da: built for ${this.dims.heads} heads, called with ${ctx.shape.heads}; create it with the model's head count`,
    );
  }

  attend(ctx: AttendContext, inputs: AttendInputs): AttendResult {
    this.checkCall(ctx, inputs);
    const s = ctx.shape;
    const { heads: H, kvHeads: Hkv, lq, lk, headDim: D } = s;
    const scale = attentionScale(s);
    const w = this.weight.data;
    const sv = this.sigmoidParam.data;

    // Rescale factors depend only on (head, distance): tabulate them, with their derivatives, once per call.
    const maxDist = Math.max(Math.abs(ctx.queryOffset + lq - 1), Math.abs(ctx.queryOffset - (lk - 1)), lk - 1) + 1;
    const rescale = new Float64Array(H * maxDist);
    const dRescaleDw = new Float64Array(H * maxDist);
    const dRescaleDv = new Float64Array(H * maxDist);
    for (let h = 0; h < H; h++) {
      const amp = 1 + Math.exp(sv[h]!);
      for (let dist = 0; dist < maxDist; dist++) {
        const sg = sigmoid(w[h]! * dist - sv[h]!);
        const f = amp * sg;
        rescale[h * maxDist + dist] = f;
        dRescaleDw[h * maxDist + dist] = amp * sg * (1 - sg) * dist;
        dRescaleDv[h * maxDist + dist] = (amp - 1) * sg - amp * sg * (1 - sg);
      }
    }

    const qo = ctx.queryOffset;
    const mask = { causal: ctx.causal, queryOffset: qo };
    const work = inputs.q instanceof Float32Array && inputs.k instanceof Float32Array ? 'float32' : 'float64';
    const q = asDtype(inputs.q, work);
    const k = asDtype(inputs.k, work);
    const gemm = gemmFor(ctx.backend, q);
    let dots: FloatArray | null = null; // q.k of one (batch, head), recomputed in the backward

    const hooks: ExplicitHooks = {
      // S = scale q.k -> scale ReLU(q.k) Rhat(h, |p_i - l|); keys l <= p_i have distance p_i - l, later ones l - p_i.
      logits: (_b, h, _kh, S) => rescaleLogits(S, rescale, h * maxDist, lq, lk, mask),
      // dLogits -> G = scale dLogits Rhat where q.k > 0 (ReLU passes nothing elsewhere), plus dw_h and dv_h.
      backward: (b, h, kh, dS) => {
        const qv = q.subarray((b * H + h) * lq * D, (b * H + h + 1) * lq * D);
        const kv = k.subarray((b * Hkv + kh) * lk * D, (b * Hkv + kh + 1) * lk * D);
        dots ??= allocate(work, lq * lk);
        gemm(false, true, lq, lk, D, 1, qv, D, kv, D, 0, dots, lk);
        const base = h * maxDist;
        let gw = 0;
        let gv = 0;
        for (let i = 0; i < lq; i++) {
          const p = i + qo;
          const end = visibleEnd(mask, i, lk);
          const row = i * lk;
          for (let l = 0; l < end; l++) {
            const qk = dots[row + l]!;
            const g = scale * dS[row + l]!;
            if (g === 0 || !(qk > 0)) {
              dS[row + l] = 0;
              continue;
            }
            const at = base + (l <= p ? p - l : l - p);
            gw += g * qk * dRescaleDw[at]!;
            gv += g * qk * dRescaleDv[at]!;
            dS[row + l] = g * rescale[at]!;
          }
        }
        this.weight.grad[h]! += gw;
        this.sigmoidParam.grad[h]! += gv;
        return 1;
      },
    };
    const core = ctx.backend.scoreAttention(
      ctx.shape,
      q,
      k,
      inputs.v,
      { causal: ctx.causal, queryOffset: ctx.queryOffset, scale, scratch: this.scratch },
      hooks,
    );
    return {
      out: core.out,
      backward: (dOut) => {
        const g = core.backward(dOut);
        return { dq: asDtype(g.dq, dtypeOf(inputs.q)), dk: asDtype(g.dk, dtypeOf(inputs.k)), dv: g.dv };
      },
    };
  }

  denseLogits(ctx: AttendContext, inputs: AttendInputs, scale: number): Float64Array {
    this.checkCall(ctx, inputs);
    const s = ctx.shape;
    const D = s.headDim;
    const out = new Float64Array(s.batch * s.heads * s.lq * s.lk).fill(-Infinity);
    for (let b = 0; b < s.batch; b++) {
      for (let h = 0; h < s.heads; h++) {
        const kh = kvHeadOf(s, h);
        const wh = this.weight.data[h]!;
        const vh = this.sigmoidParam.data[h]!;
        for (let i = 0; i < s.lq; i++) {
          const p = i + ctx.queryOffset;
          for (let l = 0; l < s.lk; l++) {
            if (ctx.causal && l > p) continue;
            let qk = 0;
            for (let d = 0; d < D; d++) {
              qk +=
                inputs.q[((b * s.heads + h) * s.lq + i) * D + d]! *
                inputs.k[((b * s.kvHeads + kh) * s.lk + l) * D + d]!;
            }
            const R = wh * Math.abs(p - l);
            const Rhat = (1 + Math.exp(vh)) / (1 + Math.exp(vh - R)); // the paper's form, as written
            out[((b * s.heads + h) * s.lq + i) * s.lk + l] = scale * Math.max(qk, 0) * Rhat;
          }
        }
      }
    }
    return out;
  }
}

export const daFactory: EncodingFactory<DaOptions> = defineEncoding<DaOptions>({
  name: 'da',
  description: 'DA-Transformer: ReLU(q.k) rescaled by a learnable sigmoid of a per-head weighted distance',
  sites: ['score-rescale'],
  defaults: DEFAULTS,
  create(dims: EncodingDims, options: Partial<DaOptions>, _rng: Rng): DaEncoding {
    const o = { ...DEFAULTS, ...options };
    check(
      Number.isFinite(o.weightInit) && Number.isFinite(o.sigmoidInit) && Math.abs(o.sigmoidInit) < 700,
      'argument',
      `da: weightInit = ${o.weightInit} and sigmoidInit = ${o.sigmoidInit} must be finite (|sigmoidInit| < 700 ` +
        `so that exp(v) stays finite); e.g. weightInit 0.1, sigmoidInit 0`,
    );
    const enc = new DaEncoding(dims);
    const H = dims.heads;
    for (let h = 0; h < H; h++) {
      enc.weight.data[h] = H === 1 ? 0 : o.weightInit * ((2 * h) / (H - 1) - 1);
      enc.sigmoidParam.data[h] = o.sigmoidInit;
    }
    return enc;
  },
});
