/**
 * One fused-attention case (shape, mask, query offset, distance table) checked against the fp64 reference, shared by
 * the WebGPU kernel tests in Node and the browser test: seeded inputs, the reference forward and backward, and each
 * GPU result's error divided by its f32 bound (pass: every ratio <= 1).
 *
 * Bound (see test/webgpu-kernels.test.ts): each result carries at most 8 * n * U32 * max|reference|, n the total
 * reduction length along its chain (dot product d -> softmax over Lk -> P V; backward dP over dv, then sums over Lk,
 * over the queries of the grouped heads, or over the batch and queries on one diagonal for dTable); 8 covers the
 * exp/log steps and the factor two of dS = P (dP - delta). A wrong index or a missing term errs by ~max|reference|.
 */
import type { AttentionShape, PositionBias } from '../../src/backend/backend.ts';
import { referenceAttentionBackward, referenceAttentionForward } from '../../src/backend/reference-attention.ts';
import { Rng } from '../../src/util/rng.ts';
import { maxAbs, maxAbsDiff, randn, U32 } from './webgpu.ts';

export interface AttentionCase {
  name: string;
  shape: AttentionShape;
  causal: boolean;
  queryOffset?: number;
  table: boolean;
}

export interface AttentionInputs {
  q: Float64Array;
  k: Float64Array;
  v: Float64Array;
  dOut: Float64Array;
  /** Distance table [H, span] (used only when the case has one). */
  table: Float64Array;
  opts: { causal: boolean; scale: number; queryOffset: number };
}

/** What a GPU run returns (any array-like of numbers: typed arrays in Node, plain arrays from a browser). */
export interface AttentionResults {
  out: ArrayLike<number>;
  lse: ArrayLike<number>;
  dq: ArrayLike<number>;
  dk: ArrayLike<number>;
  dv: ArrayLike<number>;
  dTable?: ArrayLike<number>;
}

/** Seeded inputs for a case (the seed is the name's length, as the kernel tests always used). */
export function attentionInputs(c: AttentionCase): AttentionInputs {
  const rng = new Rng(c.name.length);
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = c.shape;
  const queryOffset = c.queryOffset ?? lk - lq;
  const span = queryOffset + lq + lk - 1;
  return {
    q: randn(rng, B * H * lq * d),
    k: randn(rng, B * Hkv * lk * d),
    v: randn(rng, B * Hkv * lk * dv),
    dOut: randn(rng, B * H * lq * dv),
    table: randn(rng, H * span, 0.5),
    opts: { causal: c.causal, scale: 1 / Math.sqrt(d), queryOffset },
  };
}

/**
 * Each result's max error over its bound, and the rows where the reference's lse is -Infinity (a query that sees no
 * key) but the GPU's is not: those must be exactly -Infinity with out 0.
 */
export function attentionErrors(
  c: AttentionCase,
  x: AttentionInputs,
  got: AttentionResults,
): { ratios: Record<string, number>; emptyRowMismatches: number } {
  const s = c.shape;
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = s;
  const bias: PositionBias = c.table ? { kind: 'distance', table: x.table } : { kind: 'none' };
  const ref = referenceAttentionForward(s, x.q, x.k, x.v, { ...x.opts, bias });
  const refG = referenceAttentionBackward(s, x.q, x.k, x.v, ref.out, ref.lse, x.dOut, { ...x.opts, bias });
  const tol = (n: number, r: ArrayLike<number>) => 8 * n * U32 * Math.max(maxAbs(r), 1e-30);
  const group = H / Hkv;
  const finite = (a: ArrayLike<number>) => Array.from(a).filter(Number.isFinite);
  const ratios: Record<string, number> = {
    out: maxAbsDiff(got.out, ref.out) / tol(d + lk, ref.out),
    lse: maxAbsDiff(got.lse, ref.lse) / tol(d + lk, finite(ref.lse)),
    dq: maxAbsDiff(got.dq, refG.dq) / tol(d + dv + 2 * lk, refG.dq),
    dk: maxAbsDiff(got.dk, refG.dk) / tol(d + dv + lk + group * lq, refG.dk),
    dv: maxAbsDiff(got.dv, refG.dv) / tol(d + lk + group * lq, refG.dv),
  };
  if (c.table) {
    if (!got.dTable) throw new Error(`${c.name}: the GPU returned no dTable`);
    const want = (refG.dBias as { table: Float64Array }).table;
    ratios.dTable = maxAbsDiff(got.dTable, want) / tol(d + dv + lk + B * lq, want);
  }
  let emptyRowMismatches = 0;
  for (let r = 0; r < ref.lse.length; r++)
    if (ref.lse[r] === -Infinity && got.lse[r] !== -Infinity) emptyRowMismatches++;
  return { ratios, emptyRowMismatches };
}
