/**
 * Attention over logits assembled explicitly, for the encodings whose position terms do not fit a kernel bias
 * (Transformer-XL, Shaw, DA-Transformer, PaTH). The encoding fills an L x L logit matrix per (batch, head); this
 * module owns everything after that: the mask, the softmax, the weighted sum of values, and the backward to
 * dLogits and dV. O(Lq * Lk) memory per (batch, head) — a clear reference path, not a fused kernel.
 *
 * Arithmetic is fp64 throughout (logits, probabilities, sums); outputs and input gradients are stored in the
 * dtype of the tensors they belong to (Float32Array in -> Float32Array out). Layouts and positions follow
 * backend.ts: q [B, H, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv]; query row i sits at i + queryOffset.
 */
import type { AttentionShape } from '../backend/backend.ts';
import { check } from '../errors.ts';
import { allocate, dtypeOf, type FloatArray } from '../tensor.ts';
import type { AttendContext, AttendInputs, Param } from './encoding.ts';

/** The mask and positions of one attention call. */
export interface MaskSpec {
  causal: boolean;
  queryOffset: number;
}

/** Whether key row l is visible to query row i (causal: the key is not ahead of the query). */
export function keyVisible(mask: MaskSpec, i: number, l: number): boolean {
  return !mask.causal || l <= i + mask.queryOffset;
}

/** Key/value head read by query head h under grouped-query attention. */
export function kvHeadOf(shape: AttentionShape, h: number): number {
  return Math.floor(h / (shape.heads / shape.kvHeads));
}

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
  want(
    'q',
    inputs.q.length,
    s.batch * s.heads * s.lq * s.headDim,
    `[B, H, Lq, D] = [${s.batch}, ${s.heads}, ${s.lq}, ${s.headDim}]`,
  );
  want(
    'k',
    inputs.k.length,
    s.batch * s.kvHeads * s.lk * s.headDim,
    `[B, Hkv, Lk, D] = [${s.batch}, ${s.kvHeads}, ${s.lk}, ${s.headDim}]`,
  );
  want(
    'v',
    inputs.v.length,
    s.batch * s.kvHeads * s.lk * s.valueDim,
    `[B, Hkv, Lk, Dv] = [${s.batch}, ${s.kvHeads}, ${s.lk}, ${s.valueDim}]`,
  );
}

/** A finished explicit attention: outputs and the probabilities the backward needs. */
export interface ExplicitForward {
  /** [B, H, Lq, Dv] in the dtype of v. */
  out: FloatArray;
  /** [B, H, Lq, Lk]; exactly 0 at masked entries and on rows that see no key. */
  probs: Float64Array;
}

/**
 * Row-wise softmax of logits [B, H, Lq, Lk] under the mask, then out = P V. Entries the mask hides are ignored,
 * whatever the logits hold there. A row with no visible key gets P = 0 and out = 0 (backend.ts convention).
 */
export function explicitAttentionForward(
  shape: AttentionShape,
  mask: MaskSpec,
  logits: Float64Array,
  vInput: FloatArray,
): ExplicitForward {
  const { batch: B, heads: H, lq, lk, valueDim: dv } = shape;
  const v = asFloat64(vInput);
  check(logits.length === B * H * lq * lk, 'shape', `logits must be [B, H, Lq, Lk] = ${B * H * lq * lk} elements`);
  const probs = new Float64Array(B * H * lq * lk);
  const out = allocate(dtypeOf(vInput), B * H * lq * dv);
  const acc = new Float64Array(dv);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const vBase = (b * shape.kvHeads + kvHeadOf(shape, h)) * lk * dv;
      for (let i = 0; i < lq; i++) {
        const row = ((b * H + h) * lq + i) * lk;
        let max = -Infinity;
        for (let l = 0; l < lk; l++) if (keyVisible(mask, i, l)) max = Math.max(max, logits[row + l]!);
        if (max === -Infinity) continue; // no visible key (or every logit -Infinity): P = 0, out = 0
        let sum = 0;
        for (let l = 0; l < lk; l++) {
          if (!keyVisible(mask, i, l)) continue;
          const e = Math.exp(logits[row + l]! - max);
          probs[row + l] = e;
          sum += e;
        }
        acc.fill(0);
        for (let l = 0; l < lk; l++) {
          const p = (probs[row + l]! /= sum);
          if (p === 0) continue;
          const vRow = vBase + l * dv;
          for (let c = 0; c < dv; c++) acc[c]! += p * v[vRow + c]!;
        }
        out.set(acc, ((b * H + h) * lq + i) * dv);
      }
    }
  }
  return { out, probs };
}

/**
 * Backward of explicitAttentionForward: dP = dOut V^T (+ extraDProbs, for encodings whose value side adds its
 * own per-pair term), dLogits = P * (dP - rowsum(P * dP)), dV = P^T dOut (summed over the query heads of a group).
 * dLogits is 0 wherever P is 0 (masked entries included).
 */
export function explicitAttentionBackward(
  shape: AttentionShape,
  probs: Float64Array,
  vInput: FloatArray,
  dOutInput: FloatArray,
  extraDProbs?: Float64Array,
): { dLogits: Float64Array; dv: FloatArray } {
  const { batch: B, heads: H, lq, lk, valueDim: dv } = shape;
  const v = asFloat64(vInput);
  const dOut = asFloat64(dOutInput);
  check(
    dOut.length === B * H * lq * dv,
    'shape',
    `dOut has ${dOut.length} elements but [B, H, Lq, Dv] needs ${B * H * lq * dv}; pass the gradient of out`,
  );
  const dLogits = new Float64Array(B * H * lq * lk);
  const dvAcc = new Float64Array(v.length);
  const dP = new Float64Array(lk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const vBase = (b * shape.kvHeads + kvHeadOf(shape, h)) * lk * dv;
      for (let i = 0; i < lq; i++) {
        const row = ((b * H + h) * lq + i) * lk;
        const oRow = ((b * H + h) * lq + i) * dv;
        let weighted = 0;
        for (let l = 0; l < lk; l++) {
          const p = probs[row + l]!;
          if (p === 0) {
            dP[l] = 0;
            continue;
          }
          const vRow = vBase + l * dv;
          let s = extraDProbs ? extraDProbs[row + l]! : 0;
          for (let c = 0; c < dv; c++) {
            const g = dOut[oRow + c]!;
            s += g * v[vRow + c]!;
            dvAcc[vRow + c]! += p * g;
          }
          dP[l] = s;
          weighted += p * s;
        }
        for (let l = 0; l < lk; l++) dLogits[row + l] = probs[row + l]! * (dP[l]! - weighted);
      }
    }
  }
  return { dLogits, dv: toDtypeOf(vInput, dvAcc) };
}

/**
 * The fp64 view the loops work on: the array itself when it already is fp64, else an fp64 copy. Keeping every
 * inner loop on one array type also keeps it monomorphic (mixed Float32/Float64 access is several times slower).
 */
export function asFloat64(a: FloatArray): Float64Array {
  return a instanceof Float64Array ? a : Float64Array.from(a);
}

/** Copies an fp64 accumulator into a fresh array of the same dtype as `like`. */
export function toDtypeOf(like: FloatArray, values: Float64Array): FloatArray {
  const out = allocate(dtypeOf(like), values.length);
  out.set(values);
  return out;
}

/** A trainable tensor whose data and gradient are fp64 (what these encodings create and compute on). */
export type Param64 = Param & { readonly data: Float64Array; readonly grad: Float64Array };

/** A zero-initialised trainable tensor (fp64 data and gradient). */
export function createParam(name: string, shape: readonly number[], decay: boolean): Param64 {
  let n = 1;
  for (const s of shape) n *= s;
  return { name, shape: [...shape], data: new Float64Array(n), grad: new Float64Array(n), decay };
}
