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
 * - u and v are shared by every layer of a model, W_R is per layer, as in the reference code (SPEC section 10);
 *   sharing 'per-layer' gives each block its own u and v (what configs saved before the option existed used);
 * - scale = 1/sqrt(head dim), multiplying all four terms (the reference code scales the summed score);
 * - bidirectional use evaluates the sinusoid at negative distances too (it is defined there); no memory segment
 *   (recurrence) — the study trains fixed windows, and a cache is just keys at positions < queryOffset.
 * attend() computes (q_i + v_h) . r_t for every distance t of the call as one gemm per (batch, head) and adds it to
 * the logits by distance (the "relative shift"), on the backend's attention over explicit scores.
 */
import { check } from '../errors.ts';
import type { Rng } from '../util/rng.ts';
import {
  sharedParam,
  type AttendContext,
  type AttendInputs,
  type AttendResult,
  type EncodingDims,
  type EncodingFactory,
  type LayerSharing,
  type Param,
  type PositionalEncoding,
} from './encoding.ts';
import { kvHeadOf, rowBlocks, visibleEnd, ScratchPool, type ExplicitHooks } from '../backend/score-attention.ts';
import { gemmFor } from '../backend/reference.ts';
import { addInto, checkAttendInputs, createParam, type Param64 } from './params.ts';
import { asDtype, allocate, dtypeOf, type DType, type FloatArray } from '../tensor.ts';
import { attentionScale } from './attention-plumbing.ts';
import { checkSharing, defineEncoding } from './options.ts';

export interface XlOptions {
  /** Size dR of the sinusoid R (even); 0 means the model width. */
  posDim: number;
  /** Base of the sinusoid's geometric frequencies. */
  base: number;
  /** Standard deviation of the normal initialisation of u, v and W_R. */
  initStd: number;
  /** 'shared': one u and v for every layer of a model (the reference); 'per-layer': one per block. */
  sharing: LayerSharing;
}

const DEFAULTS: XlOptions = { posDim: 0, base: 10000, initStd: 0.02, sharing: 'shared' };

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
  /** Reused O(L^2) work buffers (see ScratchPool): a backward must come before this encoding's next attend(). */
  private readonly scratch = new ScratchPool();
  private sinusoidCache: { key: string; table: FloatArray } | null = null;
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
    sharing: LayerSharing = 'per-layer',
    init: (p: Param64) => void = () => {},
  ) {
    // Each parameter is initialised as it is made, in the order u, v, W_R, so a shared u and v are drawn once.
    const make = (name: string, shape: number[]) => (): Param64 => {
      const p = createParam(name, shape, false);
      init(p);
      return p;
    };
    const uv = (name: string): Param64 => {
      const m = make(name, [dims.heads, dims.headDim]);
      return sharing === 'shared' ? (sharedParam(dims, name, m) as Param64) : m();
    };
    this.u = uv('xl.u');
    this.v = uv('xl.v');
    this.wR = make('xl.wR', [dims.kvHeads, dims.headDim, posDim])();
    this.params = [this.u, this.v, this.wR];
  }

  /** Rows R_{sLo} .. R_{sLo + nT - 1}, kept for the next call with the same distances (they are fixed). */
  private sinusoidTable(sLo: number, nT: number, dtype: DType): FloatArray {
    const key = `${sLo}:${nT}:${dtype}`;
    if (this.sinusoidCache?.key !== key) {
      const table = allocate(dtype, nT * this.posDim);
      const R = new Float64Array(this.posDim);
      for (let t = 0; t < nT; t++) {
        relativeSinusoid(sLo + t, this.posDim, this.base, R);
        table.set(R, t * this.posDim);
      }
      this.sinusoidCache = { key, table };
    }
    return this.sinusoidCache.table;
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
    const { heads: H, kvHeads: Hkv, lq, lk, headDim: D } = s;
    const dR = this.posDim;
    const scale = attentionScale(s);
    const qo = ctx.queryOffset;
    const work = inputs.q instanceof Float32Array && inputs.k instanceof Float32Array ? 'float32' : 'float64';
    const q = asDtype(inputs.q, work);
    const k = asDtype(inputs.k, work);
    const gemm = gemmFor(ctx.backend, q);

    // Signed distances s = p_i - l of this call: sMin = queryOffset - (Lk - 1) .. sMax = queryOffset + Lq - 1; a
    // causal call only ever sees s >= 0. Table row t holds distance sLo + t.
    const sMax = qo + lq - 1;
    const sLo = ctx.causal ? Math.max(0, qo - (lk - 1)) : qo - (lk - 1);
    const nT = Math.max(0, sMax - sLo + 1);
    const sinusoids = this.sinusoidTable(sLo, nT, work);
    // Position keys r[kh, t] = W_R[kh] R_{sLo + t}: one gemm per kv head, [nT, dR] x [D, dR]^T.
    const W = asDtype(this.wR.data, work);
    const r = this.scratch.take('xl.r', work, Hkv * nT * D).array; // every row is written just below
    for (let kh = 0; kh < Hkv; kh++) {
      const rk = r.subarray(kh * nT * D, (kh + 1) * nT * D);
      gemm(false, true, nT, D, dR, 1, sinusoids, dR, W.subarray(kh * D * dR, (kh + 1) * D * dR), dR, 0, rk, D);
    }
    const u = this.u.data;
    const vb = this.v.data;
    const mask = { causal: ctx.causal, queryOffset: qo };

    const qv = allocate(work, lq * D); // q_i + v_h of the current head
    // pos[i, t] = scale (q_i + v_h) . r_t; in the backward, scale * dLogits[i, l] moved to its distance's column.
    const pos = this.scratch.take('xl.pos', work, lq * nT).array;
    const uk = new Float64Array(lk);
    const colSums = new Float64Array(Math.max(lk, nT));
    const fillQv = (b: number, h: number): void => {
      const qAt = (b * H + h) * lq * D;
      for (let i = 0; i < lq; i++) for (let d = 0; d < D; d++) qv[i * D + d] = q[qAt + i * D + d]! + vb[h * D + d]!;
    };
    // In row i, key l sits at table row t = c_i - l with c_i = i + queryOffset - sLo.
    const rowShift = (i: number) => i + qo - sLo;
    let dr = allocate(work, 0); // the backward's dLoss/dr, sized there
    // Row blocks of the position products: causal rows i0 .. i1 - 1 only reach table rows below c_{i1-1} + 1.
    const posBlocks = rowBlocks(mask, lq, lk).map(([i0, i1]): [number, number, number] => [
      i0,
      i1,
      ctx.causal ? Math.min(nT, rowShift(i1 - 1) + 1) : nT,
    ]);

    const hooks: ExplicitHooks = {
      logits: (b, h, kh, S) => {
        fillQv(b, h);
        const rk = r.subarray(kh * nT * D, (kh + 1) * nT * D);
        for (const [i0, i1, n] of posBlocks) {
          gemm(false, true, i1 - i0, n, D, scale, qv.subarray(i0 * D), D, rk, D, 0, pos.subarray(i0 * nT), nT);
        }
        const kAt = (b * Hkv + kh) * lk * D;
        for (let l = 0; l < lk; l++) {
          let acc = 0;
          for (let d = 0; d < D; d++) acc += u[h * D + d]! * k[kAt + l * D + d]!;
          uk[l] = scale * acc;
        }
        for (let i = 0; i < lq; i++) {
          const end = visibleEnd(mask, i, lk);
          const row = i * lk;
          const posAt = i * nT + rowShift(i);
          for (let l = 0; l < end; l++) S[row + l] = S[row + l]! + uk[l]! + pos[posAt - l]!;
        }
      },
      backward: (b, h, kh, dS, dq, dk) => {
        // Position side: G[i, t] = scale dLogits[i, l] for the key at distance t; dq += G r, dr += G^T (q + v),
        // dv-bias += sum_i (G r)_i.
        pos.fill(0);
        for (let i = 0; i < lq; i++) {
          const end = visibleEnd(mask, i, lk);
          const row = i * lk;
          const posAt = i * nT + rowShift(i);
          for (let l = 0; l < end; l++) pos[posAt - l] = scale * dS[row + l]!;
        }
        if (nT > 0) {
          const rk = r.subarray(kh * nT * D, (kh + 1) * nT * D);
          const drk = dr.subarray(kh * nT * D, (kh + 1) * nT * D);
          fillQv(b, h);
          for (const [i0, i1, n] of posBlocks) {
            const g = pos.subarray(i0 * nT);
            gemm(false, false, i1 - i0, D, n, 1, g, nT, rk, D, 1, dq.subarray(i0 * D), D);
            gemm(true, false, n, D, i1 - i0, 1, g, nT, qv.subarray(i0 * D), D, 1, drk, D);
          }
          colSums.fill(0);
          for (let i = 0; i < lq; i++) for (let t = 0; t < nT; t++) colSums[t]! += pos[i * nT + t]!;
          for (let t = 0; t < nT; t++) {
            const g = colSums[t]!;
            if (g === 0) continue;
            for (let d = 0; d < D; d++) this.v.grad[h * D + d]! += g * rk[t * D + d]!;
          }
        }
        // Content bias: dk_l += c_l u_h and du_h += sum_l c_l k_l, with c_l = scale * sum_i dLogits[i, l].
        const kAt = (b * Hkv + kh) * lk * D;
        colSums.fill(0);
        for (let i = 0; i < lq; i++) {
          const end = visibleEnd(mask, i, lk);
          for (let l = 0; l < end; l++) colSums[l]! += dS[i * lk + l]!;
        }
        for (let l = 0; l < lk; l++) {
          const c = scale * colSums[l]!;
          if (c === 0) continue;
          for (let d = 0; d < D; d++) {
            dk[l * D + d] = dk[l * D + d]! + c * u[h * D + d]!;
            this.u.grad[h * D + d]! += c * k[kAt + l * D + d]!;
          }
        }
        return scale;
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

    const backward = (dOut: FloatArray) => {
      dr = allocate(work, r.length);
      const g = core.backward(dOut);
      // dW_R[kh] += dr[kh]^T [R_t]: [D, nT] x [nT, dR].
      const dW = allocate(work, D * dR);
      for (let kh = 0; kh < Hkv; kh++) {
        if (nT === 0) break;
        gemm(true, false, D, dR, nT, 1, dr.subarray(kh * nT * D, (kh + 1) * nT * D), D, sinusoids, dR, 0, dW, dR);
        addInto(this.wR.grad.subarray(kh * D * dR, (kh + 1) * D * dR), dW);
      }
      return { dq: asDtype(g.dq, dtypeOf(inputs.q)), dk: asDtype(g.dk, dtypeOf(inputs.k)), dv: g.dv };
    };
    return { out: core.out, backward };
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

export const xlFactory: EncodingFactory<XlOptions> = defineEncoding<XlOptions>({
  name: 'xl',
  description: 'Transformer-XL relative attention: sinusoidal R of the distance, learned W_R and u/v biases',
  sites: ['score-bias'],
  defaults: DEFAULTS,
  savedDefaults: { sharing: 'per-layer' },
  sizeKeys: ['posDim'],
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
    checkSharing('xl', o.sharing);
    return new XlEncoding(dims, posDim, o.base, o.sharing, (p) => rng.fillNormal(p.data, o.initStd));
  },
});
