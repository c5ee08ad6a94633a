/**
 * PaTH attention (Yang et al. 2025, arXiv 2505.16381): position encoded by accumulated, data-dependent
 * Householder-like factors. For a query at position p and a key at position j <= p:
 *
 *   logit(p, j) = scale * q_p^T H_p H_{p-1} ... H_{j+1} k_j,     H_t = I - beta_t w_t w_t^T
 *
 * (the paper's A_ij ∝ exp(k_j^T (prod_{s=j+1}^{i} H_s) q_i) — the same number, since every H_t is symmetric; the
 * key's own factor H_j is not applied, the query's H_p is). The factors come from the block input x_t:
 *
 *   w_t    = normalise(silu(shortconv(x_t W_w)))     per key/value head; W_w [Hkv, C, D]
 *   beta_t = 2 * sigmoid(x_t . w_beta + b_beta)      in (0, 2), so H_t may have a negative eigenvalue
 *
 * Algorithm: the logits and their backward are the backend's Householder walk (Backend.householderWalk; the
 * maths and the reference loops are in src/backend/householder-walk.ts, the tuned kernel in native/householder.cc):
 * each query walks back over the keys of its own chunk, carrying r = q_p and applying one factor per step
 * (r <- r - beta_t (w_t . r) w_t), and earlier chunks are reached by matrix products of the walk states with keys
 * carried to their chunk's end. path-attention.ts joins the walk to the backend's attention over explicit scores
 * (softmax, P V and their backward); the factor network's projections run as gemms (the backend's sgemm for fp32),
 * and its backward takes dw, dbeta down to dx here.
 *
 * Choices the paper leaves open or that we fix (the released layer in flash-linear-attention was read for facts):
 * - W_w is a full-rank projection [Hkv, C, D]; the released layer uses a rank-32 factorisation when H = Hkv
 *   (a parameter saving; the full-rank map contains every rank-32 one);
 * - the short convolution is causal and depthwise over time, kernel 3, no bias, followed by SiLU — the paper names
 *   a short convolution and L2 normalisation, the SiLU is the released layer's convolution default; shortConv =
 *   false gives w_t = normalise(x_t W_w);
 * - normalise(s) = s / sqrt(|s|^2 + 1e-6) (the released l2-norm's epsilon: a zero s gives H_t = I, not NaN);
 * - w_t and beta_t are per key/value head, shared by the query heads of a group (as in the released layer);
 * - initialisation: W_w and w_beta ~ N(0, initStd^2), initStd = 0.02; b_beta = betaBias = 0 (beta = 1 at start);
 *   conv taps ~ U(-1/sqrt(3), 1/sqrt(3)) (PyTorch's default for that convolution);
 * - scale = 1/sqrt(head dim); no forget gate (that is the separate PaTH-FoX variant);
 * - causal only: the product runs from the key forward to the query, and bidirectional use is refused. Queries
 *   must sit at positions the keys cover (queryOffset >= 0 and queryOffset + Lq <= Lk), since H_p needs x_p.
 */
import type { Backend } from '../backend/backend.ts';
import { gemmFor, referenceGemm } from '../backend/reference.ts';
import { check } from '../errors.ts';
import { allocate, asDtype, dtypeOf, headsToTokens, tokensToHeads, type FloatArray } from '../tensor.ts';
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
import { kvHeadOf, ScratchPool } from '../backend/score-attention.ts';
import { addInto, checkAttendInputs, createParam, type Param64 } from './params.ts';
import { attentionScale } from './attention-plumbing.ts';
import { pathAttention, type PathFactors } from './path-attention.ts';
import { defineEncoding } from './options.ts';

export interface PathOptions {
  /** Causal depthwise convolution (kernel convSize) + SiLU before the normalisation, as in the released layer. */
  shortConv: boolean;
  convSize: number;
  /** Standard deviation of the normal initialisation of W_w and w_beta. */
  initStd: number;
  /** Initial b_beta (0 gives beta = 1 everywhere at the start). */
  betaBias: number;
}

const DEFAULTS: PathOptions = { shortConv: true, convSize: 3, initStd: 0.02, betaBias: 0 };

/** The epsilon inside the normalisation sqrt(|s|^2 + eps). */
export const PATH_NORM_EPS = 1e-6;

function sigmoid(z: number): number {
  if (z >= 0) return 1 / (1 + Math.exp(-z));
  const e = Math.exp(z);
  return e / (1 + e);
}

export class PathEncoding implements PositionalEncoding {
  readonly name = 'path';
  readonly sites = ['data-dependent'] as const;
  readonly maxLength = Infinity;
  readonly params: readonly Param[];
  /** Reused O(L^2) work buffers (see ScratchPool): a backward must come before this encoding's next attend(). */
  private readonly scratch = new ScratchPool();
  /** W_w [Hkv, C, D]: projection of x to the (pre-normalisation) factor directions. */
  readonly wProj: Param64;
  /** Depthwise causal convolution taps [Hkv, D, convSize] (absent without shortConv); tap m reads x_{t-K+1+m}. */
  readonly conv: Param64 | null;
  /** w_beta [Hkv, C] and b_beta [Hkv]: beta_t = 2 sigmoid(x_t . w_beta + b_beta). */
  readonly betaWeight: Param64;
  readonly betaBias: Param64;

  constructor(
    readonly dims: EncodingDims,
    readonly convSize: number,
    shortConv: boolean,
  ) {
    const { kvHeads: Hkv, modelDim: C, headDim: D } = dims;
    this.wProj = createParam('path.wW', [Hkv, C, D], true);
    this.conv = shortConv ? createParam('path.conv', [Hkv, D, convSize], false) : null;
    this.betaWeight = createParam('path.wBeta', [Hkv, C], true);
    this.betaBias = createParam('path.bBeta', [Hkv], false);
    this.params = this.conv
      ? [this.wProj, this.conv, this.betaWeight, this.betaBias]
      : [this.wProj, this.betaWeight, this.betaBias];
  }

  private checkCall(ctx: AttendContext, inputs: AttendInputs): FloatArray {
    checkAttendInputs(ctx, inputs, 'path');
    const s = ctx.shape;
    const { heads, kvHeads, headDim, modelDim } = this.dims;
    check(
      s.heads === heads && s.kvHeads === kvHeads && s.headDim === headDim,
      'shape',
      `path: built for ${heads} heads / ${kvHeads} kv heads / head dim ${headDim}, called with ${s.heads} / ` +
        `${s.kvHeads} / ${s.headDim}; create the encoding with the model's sizes`,
    );
    check(
      ctx.causal,
      'argument',
      'path: PaTH is defined for causal attention only (its factors accumulate from each key forward to the ' +
        'query); call it with causal: true',
    );
    check(
      ctx.queryOffset >= 0 && ctx.queryOffset + s.lq <= s.lk,
      'argument',
      `path: queries at positions ${ctx.queryOffset}..${ctx.queryOffset + s.lq - 1} need factors up to their own ` +
        `position, but x and the keys cover 0..${s.lk - 1}; use 0 <= queryOffset <= Lk - Lq`,
    );
    const x = inputs.x;
    check(
      x !== undefined,
      'argument',
      'path: PaTH is data-dependent and needs the block input x [B, Lk, C]; pass inputs.x',
    );
    check(
      x.length === s.batch * s.lk * modelDim,
      'shape',
      `path: x has ${x.length} elements but [B, Lk, C] = [${s.batch}, ${s.lk}, ${modelDim}] needs ` +
        `${s.batch * s.lk * modelDim}; pass the block's normed input`,
    );
    return x;
  }

  /** The factors w, beta for every (batch, kv head, position), and the backward from their gradients to dx. */
  factors(
    xInput: FloatArray,
    batch: number,
    lk: number,
    gemm: Backend['gemm'] = referenceGemm,
  ): PathFactors & { backward(dw: Float64Array, dbeta: Float64Array): FloatArray } {
    // The projections x W_w and x w_beta (and their backward) are gemms in the dtype of x (the backend's sgemm for
    // fp32 on a backend, else plain fp64 loops); the cheap per-position rest is fp64.
    const work = dtypeOf(xInput);
    const x = xInput;
    const { kvHeads: Hkv, modelDim: C, headDim: D } = this.dims;
    const K = this.convSize;
    // W_w with the heads side by side, [C, Hkv D]: every head's projection of every row is then one gemm.
    const HD = Hkv * D;
    const W = allocate(work, C * HD);
    headsToTokens(this.wProj.data, W, 1, Hkv, C, D);
    const wBeta = asDtype(this.betaWeight.data, work);
    const n = batch * Hkv * lk;
    const uRows = allocate(work, batch * lk * HD); // x_t W_w, [B, Lk, Hkv, D]
    gemm(false, false, batch * lk, HD, C, 1, x, C, W, HD, 0, uRows, HD);
    const u = allocate(work, n * D); // the same, [B, Hkv, Lk, D]
    tokensToHeads(uRows, u, batch, Hkv, lk, D);
    const zs = allocate(work, batch * lk * Hkv); // x_t . w_beta[h], [B, Lk, Hkv]
    gemm(false, true, batch * lk, Hkv, C, 1, x, C, wBeta, C, 0, zs, Hkv);
    const conv = this.conv ? this.conv.data : null;
    const bias = this.betaBias.data;
    // silu'(c) at each convolution output c, kept for the backward (unused without the convolution).
    const dsilu = new Float64Array(conv ? n * D : 0);
    const norm = new Float64Array(n);
    const w = new Float64Array(n * D); // holds the vector to normalise until its norm is known
    const beta = new Float64Array(n);
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < Hkv; h++) {
        const base = (b * Hkv + h) * lk;
        for (let t = 0; t < lk; t++) beta[base + t] = 2 * sigmoid(bias[h]! + zs[(b * lk + t) * Hkv + h]!);
        for (let t = 0; t < lk; t++) {
          const tAt = (base + t) * D;
          let sq = 0;
          for (let d = 0; d < D; d++) {
            let c = u[tAt + d]!;
            if (conv) {
              c = 0;
              for (let m = Math.max(0, K - 1 - t); m < K; m++) {
                c += conv[(h * D + d) * K + m]! * u[(base + t - (K - 1) + m) * D + d]!;
              }
              const sg = sigmoid(c);
              dsilu[tAt + d] = sg * (1 + c * (1 - sg));
              c *= sg;
            }
            w[tAt + d] = c;
            sq += c * c;
          }
          const nt = Math.sqrt(sq + PATH_NORM_EPS);
          norm[base + t] = nt;
          for (let d = 0; d < D; d++) w[tAt + d] = w[tAt + d]! / nt;
        }
      }
    }

    const backward = (dw: Float64Array, dbeta: Float64Array): FloatArray => {
      const dx = allocate(work, x.length);
      const du = new Float64Array(n * D); // dLoss/du, [B, Hkv, Lk, D]
      const convGrad = this.conv ? this.conv.grad : null;
      const dz = allocate(work, batch * lk * Hkv); // dLoss/dz, [B, Lk, Hkv]
      for (let b = 0; b < batch; b++) {
        for (let h = 0; h < Hkv; h++) {
          const base = (b * Hkv + h) * lk;
          for (let t = 0; t < lk; t++) {
            // beta = 2 sigmoid(z): dz = dbeta * 2 sigmoid(z) (1 - sigmoid(z)) = dbeta * beta (1 - beta / 2)
            const bt = beta[base + t]!;
            const g = dbeta[base + t]! * bt * (1 - bt / 2);
            dz[(b * lk + t) * Hkv + h] = g;
            this.betaBias.grad[h]! += g;
            // w = s / n: ds = (dw - w (w . dw)) / n
            const wAt = (base + t) * D;
            const wdw = dotAt(w, wAt, dw, wAt, D);
            const invNorm = 1 / norm[base + t]!;
            for (let d = 0; d < D; d++) {
              const ds = (dw[wAt + d]! - w[wAt + d]! * wdw) * invNorm;
              if (!conv || !convGrad) {
                du[wAt + d]! += ds;
                continue;
              }
              const dc = ds * dsilu[wAt + d]!;
              for (let m = Math.max(0, K - 1 - t); m < K; m++) {
                const uAt = (base + t - (K - 1) + m) * D + d;
                convGrad[(h * D + d) * K + m]! += dc * u[uAt]!;
                du[uAt]! += dc * conv[(h * D + d) * K + m]!;
              }
            }
          }
        }
      }
      // z = x w_beta^T: d w_beta += dz^T x, dx += dz w_beta.
      const dWBeta = allocate(work, Hkv * C);
      gemm(true, false, Hkv, C, batch * lk, 1, dz, Hkv, x, C, 0, dWBeta, C);
      addInto(this.betaWeight.grad, dWBeta);
      gemm(false, false, batch * lk, C, Hkv, 1, dz, Hkv, wBeta, C, 1, dx, C);
      // u = x W (heads side by side): dW = x^T du, dx += du W^T, with du as [B, Lk, Hkv, D].
      const duRows = allocate(work, batch * lk * HD);
      headsToTokens(du, duRows, batch, Hkv, lk, D);
      const dW = allocate(work, C * HD);
      gemm(true, false, C, HD, batch * lk, 1, x, C, duRows, HD, 0, dW, HD);
      gemm(false, true, batch * lk, C, HD, 1, duRows, HD, W, HD, 1, dx, C);
      const dWHeads = new Float64Array(C * HD); // back to W_w's layout [Hkv, C, D]
      tokensToHeads(dW, dWHeads, 1, Hkv, C, D);
      addInto(this.wProj.grad, dWHeads);
      return dx;
    };
    return { w, beta, backward };
  }

  attend(ctx: AttendContext, inputs: AttendInputs): AttendResult {
    const x = this.checkCall(ctx, inputs);
    const s = ctx.shape;
    const f = this.factors(x, s.batch, s.lk, gemmFor(ctx.backend, x));
    const core = pathAttention(
      s,
      ctx.queryOffset,
      inputs.q,
      inputs.k,
      inputs.v,
      f,
      attentionScale(s),
      ctx.backend,
      this.scratch,
    );
    return {
      out: core.out,
      backward: (dOut) => {
        const g = core.backward(dOut);
        const dx = f.backward(g.dw, g.dbeta);
        return { dq: asDtype(g.dq, dtypeOf(inputs.q)), dk: asDtype(g.dk, dtypeOf(inputs.k)), dv: g.dv, dx };
      },
    };
  }

  /**
   * Reference: the factors recomputed step by step, then for every pair the explicit D x D matrix
   * M(p, j) = H_p H_{p-1} ... H_{j+1} and the logit q^T M k. Per query, M is extended one factor at a time,
   * M(p, j) = M(p, j+1) H_{j+1}, where the product with H = I - beta w w^T is formed as M - beta (M w) w^T (the
   * same matrix product without materialising H; O(D^2) per factor so `hype show` stays quick).
   */
  denseLogits(ctx: AttendContext, inputs: AttendInputs, scale: number): Float64Array {
    const x = this.checkCall(ctx, inputs);
    const s = ctx.shape;
    const { w, beta } = this.referenceFactors(x, s.batch, s.lk);
    const D = s.headDim;
    const out = new Float64Array(s.batch * s.heads * s.lq * s.lk).fill(-Infinity);
    for (let b = 0; b < s.batch; b++) {
      for (let h = 0; h < s.heads; h++) {
        const kh = kvHeadOf(s, h);
        for (let i = 0; i < s.lq; i++) {
          const p = i + ctx.queryOffset;
          const M = identity(D);
          for (let j = p; j >= 0; j--) {
            if (j < p) timesFactor(M, w[b]![kh]![j + 1]!, beta[b]![kh]![j + 1]!);
            let e = 0;
            for (let r = 0; r < D; r++) {
              for (let c = 0; c < D; c++) {
                e +=
                  inputs.q[((b * s.heads + h) * s.lq + i) * D + r]! *
                  M[r * D + c]! *
                  inputs.k[((b * s.kvHeads + kh) * s.lk + j) * D + c]!;
              }
            }
            out[((b * s.heads + h) * s.lq + i) * s.lk + j] = scale * e;
          }
        }
      }
    }
    return out;
  }

  /** The factor network written out plainly: w[b][h][t] (a D-vector) and beta[b][h][t]. */
  private referenceFactors(x: FloatArray, batch: number, lk: number): { w: number[][][][]; beta: number[][][] } {
    const { kvHeads: Hkv, modelDim: C, headDim: D } = this.dims;
    const K = this.convSize;
    const xt = (b: number, t: number, c: number) => x[(b * lk + t) * C + c]!;
    const w: number[][][][] = [];
    const beta: number[][][] = [];
    for (let b = 0; b < batch; b++) {
      w.push([]);
      beta.push([]);
      for (let h = 0; h < Hkv; h++) {
        const proj = (t: number, d: number) => {
          let acc = 0;
          for (let c = 0; c < C; c++) acc += xt(b, t, c) * this.wProj.data[(h * C + c) * D + d]!;
          return acc;
        };
        const ws: number[][] = [];
        const bs: number[] = [];
        for (let t = 0; t < lk; t++) {
          const vec: number[] = [];
          for (let d = 0; d < D; d++) {
            if (!this.conv) {
              vec.push(proj(t, d));
              continue;
            }
            let conv = 0;
            for (let m = 0; m < K; m++) {
              if (t - (K - 1) + m >= 0) conv += this.conv.data[(h * D + d) * K + m]! * proj(t - (K - 1) + m, d);
            }
            vec.push(conv / (1 + Math.exp(-conv))); // SiLU
          }
          const len = Math.sqrt(vec.reduce((acc, e) => acc + e * e, 0) + PATH_NORM_EPS);
          ws.push(vec.map((e) => e / len));
          let z = this.betaBias.data[h]!;
          for (let c = 0; c < C; c++) z += xt(b, t, c) * this.betaWeight.data[h * C + c]!;
          bs.push(2 / (1 + Math.exp(-z)));
        }
        w[b]!.push(ws);
        beta[b]!.push(bs);
      }
    }
    return { w, beta };
  }
}

function identity(D: number): Float64Array {
  const m = new Float64Array(D * D);
  for (let d = 0; d < D; d++) m[d * D + d] = 1;
  return m;
}

/** M <- M (I - beta w w^T), in place: M - beta (M w) w^T. */
function timesFactor(M: Float64Array, w: number[], beta: number): void {
  const D = w.length;
  for (let r = 0; r < D; r++) {
    let mw = 0;
    for (let c = 0; c < D; c++) mw += M[r * D + c]! * w[c]!;
    for (let c = 0; c < D; c++) M[r * D + c]! -= beta * mw * w[c]!;
  }
}

export const pathFactory: EncodingFactory<PathOptions> = defineEncoding<PathOptions>({
  name: 'path',
  description: 'PaTH: data-dependent Householder-like factors I - beta w w^T accumulated between key and query',
  sites: ['data-dependent'],
  defaults: DEFAULTS,
  sizeKeys: ['convSize'],
  create(dims: EncodingDims, options: Partial<PathOptions>, rng: Rng): PathEncoding {
    const o = { ...DEFAULTS, ...options };
    check(
      Number.isInteger(o.convSize) && o.convSize >= 1,
      'argument',
      `path: convSize = ${o.convSize} must be a positive integer (the released layer uses 3)`,
    );
    check(
      Number.isFinite(o.initStd) && o.initStd >= 0 && Number.isFinite(o.betaBias),
      'argument',
      `path: initStd = ${o.initStd} must be finite and >= 0 and betaBias = ${o.betaBias} finite (e.g. 0.02, 0)`,
    );
    check(
      dims.heads % dims.kvHeads === 0 && dims.modelDim > 0,
      'argument',
      `path: heads (${dims.heads}) must be a multiple of kvHeads (${dims.kvHeads}) and modelDim positive`,
    );
    const enc = new PathEncoding(dims, o.convSize, o.shortConv);
    rng.fillNormal(enc.wProj.data, o.initStd);
    rng.fillNormal(enc.betaWeight.data, o.initStd);
    enc.betaBias.data.fill(o.betaBias);
    if (enc.conv) {
      const bound = 1 / Math.sqrt(o.convSize);
      for (let j = 0; j < enc.conv.data.length; j++) enc.conv.data[j] = (2 * rng.uniform() - 1) * bound;
    }
    return enc;
  },
});

function dotAt(a: Float64Array, ao: number, b: Float64Array, bo: number, n: number): number {
  let s = 0;
  for (let c = 0; c < n; c++) s += a[ao + c]! * b[bo + c]!;
  return s;
}
