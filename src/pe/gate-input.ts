/**
 * What the content-dependent concat encodings (fox.ts, hype-gated.ts) share: the check of the block input they read,
 * x [B, Lk, C] (C = modelDim), against the attention call, their zero-initialised gate parameters, and the scalar
 * functions of their gates, written to neither overflow nor lose precision at large |z|.
 */
import { check } from '../errors.ts';
import type { FloatArray } from '../tensor.ts';
import type { AttendContext, AttendInputs, EncodingDims, Param } from './encoding.ts';

/**
 * x after checking the heads, that x exists and is [B, Lk, C], and that it covers the queries' positions
 * (queryOffset + Lq <= Lk, as in a model, where the keys include the queries); `why` says what reads x.
 */
export function checkBlockInput(
  name: string,
  why: string,
  dims: EncodingDims,
  ctx: AttendContext,
  inputs: AttendInputs,
): FloatArray {
  const s = ctx.shape;
  const { heads, kvHeads, modelDim } = dims;
  check(
    s.heads === heads && s.kvHeads === kvHeads,
    'shape',
    `${name}: built for ${heads} heads / ${kvHeads} kv heads, called with ${s.heads} / ${s.kvHeads}; create it with the model's sizes`,
  );
  check(
    ctx.queryOffset >= 0 && ctx.queryOffset + s.lq <= s.lk,
    'argument',
    `${name}: queries at positions ${ctx.queryOffset}..${ctx.queryOffset + s.lq - 1} need x at their own ` +
      `position, but x covers 0..${s.lk - 1}; use 0 <= queryOffset <= Lk - Lq`,
  );
  const x = inputs.x;
  check(x !== undefined, 'argument', `${name}: ${why} read the block input; pass inputs.x [B, Lk, C]`);
  check(
    x.length === s.batch * s.lk * modelDim,
    'shape',
    `${name}: x has ${x.length} elements but [B, Lk, C] = [${s.batch}, ${s.lk}, ${modelDim}] needs ${s.batch * s.lk * modelDim}`,
  );
  return x;
}

/** A zero-filled gate parameter (no weight decay: decay would pull the gate to a fixed value). */
export function gateParam(name: string, shape: number[]): Param {
  const n = shape.reduce((a, b) => a * b, 1);
  return { name, shape, data: new Float64Array(n), grad: new Float64Array(n), decay: false };
}

export function sigmoid(z: number): number {
  return z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z));
}

/** log sigmoid(z) = -softplus(-z). */
export function logSigmoid(z: number): number {
  return z >= 0 ? -Math.log1p(Math.exp(-z)) : z - Math.log1p(Math.exp(z));
}

export function softplus(z: number): number {
  return z > 0 ? z + Math.log1p(Math.exp(-z)) : Math.log1p(Math.exp(z));
}

/** Per head or group g: |w_g| over the rows of a [G, C] gate weight. */
export function rowNorms(w: FloatArray, rows: number): number[] {
  const C = w.length / rows;
  return Array.from({ length: rows }, (_, g) => Math.hypot(...w.subarray(g * C, (g + 1) * C)));
}
