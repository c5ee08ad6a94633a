/**
 * What the content-dependent concat encodings (fox.ts, hype-gated.ts) share: the check of the block input they read,
 * x [B, Lk, C] (C = modelDim), against the attention call, their zero-initialised gate parameters, and the gate
 * projection z [B, n, G] = x w^T + b (w [G, C], b [G]) with its backward as backend gemms
 * over all rows at once.
 */
import type { Backend } from '../backend/backend.ts';
import { gemmFor } from '../backend/reference.ts';
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

/** Per head or group g: |w_g| over the rows of a [G, C] gate weight. */
export function rowNorms(w: FloatArray, rows: number): number[] {
  const C = w.length / rows;
  return Array.from({ length: rows }, (_, g) => Math.hypot(...w.subarray(g * C, (g + 1) * C)));
}

/**
 * Rows [off, off + n) of each batch entry of x [B, Lk, C] projected onto the G gate rows of w [G, C], plus b [G]:
 * z [B, n, G] = x w^T + b, through the backend's gemm (the native sgemm for fp32 x; fp64 loops for fp64 x, see
 * gemmFor). fp32 x: w is rounded to fp32 and the C products are summed in fp32, so |z - z_fp64| <= ~(C + 1) u
 * sum_c |w_c x_c| (u = 2^-24) plus the bias add; the activations downstream are evaluated in fp64 from z.
 * Returns z in fp64 (one value per row and gate: the cheap per-element work stays in doubles).
 */
export function projectGates(
  be: Backend,
  x: FloatArray,
  w: Param,
  b: Param,
  B: number,
  lk: number,
  off: number,
  n: number,
): Float64Array {
  const [G, C] = w.shape as [number, number];
  const gemm = gemmFor(be, x);
  const wx = like(x, G * C);
  wx.set(w.data);
  const zx = like(x, B * n * G);
  forRowBlocks(B, lk, off, n, (xRow, zRow, rows) =>
    gemm(false, true, rows, G, C, 1, x.subarray(xRow * C), C, wx, C, 0, zx.subarray(zRow * G), G),
  );
  const z = new Float64Array(B * n * G);
  for (let i = 0; i < B * n; i++) for (let g = 0; g < G; g++) z[i * G + g] = zx[i * G + g]! + b.data[g]!;
  return z;
}

/**
 * projectGates' backward: given dz [B, n, G] (fp64), ACCUMULATES w.grad += dz^T x and b.grad += sum dz, and returns
 * dx [B, Lk, C] = dz w (zero outside the projected rows) in x's dtype. For fp32 x dz is rounded to fp32 and the
 * B n products of each w.grad entry are summed in fp32 (the same as every weight gradient of the model).
 */
export function projectGatesBackward(
  be: Backend,
  x: FloatArray,
  w: Param,
  b: Param,
  dz: Float64Array,
  B: number,
  lk: number,
  off: number,
  n: number,
): FloatArray {
  const [G, C] = w.shape as [number, number];
  const gemm = gemmFor(be, x);
  for (let i = 0; i < B * n; i++) for (let g = 0; g < G; g++) b.grad[g]! += dz[i * G + g]!;
  const dzx = like(x, B * n * G);
  dzx.set(dz);
  const wx = like(x, G * C);
  wx.set(w.data);
  const dw = like(x, G * C);
  const dx = like(x, B * lk * C);
  forRowBlocks(B, lk, off, n, (xRow, zRow, rows) => {
    const dzRows = dzx.subarray(zRow * G);
    gemm(true, false, G, C, rows, 1, dzRows, G, x.subarray(xRow * C), C, 1, dw, C);
    gemm(false, false, rows, C, G, 1, dzRows, G, wx, C, 0, dx.subarray(xRow * C), C);
  });
  for (let i = 0; i < G * C; i++) w.grad[i]! += dw[i]!;
  return dx;
}

/** A zeroed array of x's dtype. */
function like(x: FloatArray, n: number): FloatArray {
  return x instanceof Float64Array ? new Float64Array(n) : new Float32Array(n);
}

/** The contiguous row blocks of rows [off, off + n) of each of B entries of Lk rows: one block when they cover all. */
function forRowBlocks(
  B: number,
  lk: number,
  off: number,
  n: number,
  f: (xRow: number, zRow: number, rows: number) => void,
): void {
  if (n === lk) f(0, 0, B * n);
  else for (let bi = 0; bi < B; bi++) f(bi * lk + off, bi * n, n);
}
