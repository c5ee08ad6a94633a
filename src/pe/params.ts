/**
 * What the encodings with their own trainable tensors share: fp64 parameters (createParam), adding a work-dtype
 * gradient into one (addInto), and the shape check of an attend() call's inputs (checkAttendInputs). Layouts
 * follow backend.ts: q [B, H, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv].
 */
import { check } from '../errors.ts';
import { allocate, type FloatArray } from '../tensor.ts';
import type { AttendContext, AttendInputs, Param } from './encoding.ts';

/** Refuses inputs whose sizes do not match the shape, or a shape that is not an attention shape. */
export function checkAttendInputs(ctx: AttendContext, inputs: AttendInputs, who: string): void {
  const s = ctx.shape;
  for (const [key, value] of Object.entries(s)) {
    check(
      Number.isInteger(value) && value > 0,
      'shape',
      `${who}: shape.${key} = ${value} must be a positive integer; pass the real attention sizes`,
    );
  }
  check(
    s.heads % s.kvHeads === 0,
    'shape',
    `${who}: heads (${s.heads}) must be a multiple of kvHeads (${s.kvHeads}) for grouped-query attention`,
  );
  check(
    Number.isInteger(ctx.queryOffset),
    'argument',
    `${who}: queryOffset = ${ctx.queryOffset} must be an integer (the absolute position of query row 0)`,
  );
  const want = (name: string, got: number, n: number, layout: string): void =>
    check(got === n, 'shape', `${who}: ${name} has ${got} elements but ${layout} needs ${n}; check the layout`);
  // Widened operands (AttendInputs.widths) hold rows of the widths the encoding asked for.
  const dqk = inputs.widths?.qk ?? s.headDim;
  const dv = inputs.widths?.v ?? s.valueDim;
  want(
    'q',
    inputs.q.length,
    s.batch * s.heads * s.lq * dqk,
    `[B, H, Lq, D] = [${s.batch}, ${s.heads}, ${s.lq}, ${dqk}]`,
  );
  want(
    'k',
    inputs.k.length,
    s.batch * s.kvHeads * s.lk * dqk,
    `[B, Hkv, Lk, D] = [${s.batch}, ${s.kvHeads}, ${s.lk}, ${dqk}]`,
  );
  want(
    'v',
    inputs.v.length,
    s.batch * s.kvHeads * s.lk * dv,
    `[B, Hkv, Lk, Dv] = [${s.batch}, ${s.kvHeads}, ${s.lk}, ${dv}]`,
  );
}

/** Adds `src` into the fp64 parameter gradient `grad` (src is a work array of either dtype). */
export function addInto(grad: Float64Array, src: FloatArray): void {
  for (let j = 0; j < grad.length; j++) grad[j]! += src[j]!;
}

/** A trainable tensor whose data and gradient are fp64 (what these encodings create and compute on). */
export type Param64 = Param & { readonly data: Float64Array; readonly grad: Float64Array };

/**
 * A zero-initialised trainable tensor (fp64 data and gradient); a size no array can hold (an option such as a
 * clip distance of 1e9) is one HypeError naming the parameter and its shape.
 */
export function createParam(name: string, shape: readonly number[], decay: boolean): Param64 {
  let n = 1;
  for (const s of shape) n *= s;
  const what = `parameter ${name} [${shape.join(', ')}]`;
  const data = allocate('float64', n, what) as Float64Array;
  return {
    name,
    shape: [...shape],
    data,
    grad: allocate('float64', n, `the gradient of ${what}`) as Float64Array,
    decay,
  };
}
