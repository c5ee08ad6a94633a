/**
 * Small, independent fp64 oracles for the encoding tests that assemble logits explicitly (xl, shaw, da, path):
 * a plain masked softmax and P V written without the library, a fixed random loss, and the gradient-check loop.
 */
import type { AttentionShape } from '../../src/backend/backend.ts';
import type { AttendContext, AttendInputs, PositionalEncoding } from '../../src/pe/encoding.ts';
import type { FloatArray } from '../../src/tensor.ts';
import { Rng } from '../../src/util/rng.ts';
import { maxRelativeGradError, sampleIndices } from './gradcheck.ts';

export function randomArray(rng: Rng, n: number, std = 1): Float64Array {
  const a = new Float64Array(n);
  rng.fillNormal(a, std);
  return a;
}

export function randomInputs(rng: Rng, s: AttentionShape, withX?: number): AttendInputs {
  const inputs: AttendInputs = {
    q: randomArray(rng, s.batch * s.heads * s.lq * s.headDim),
    k: randomArray(rng, s.batch * s.kvHeads * s.lk * s.headDim),
    v: randomArray(rng, s.batch * s.kvHeads * s.lk * s.valueDim),
  };
  if (withX !== undefined) inputs.x = randomArray(rng, s.batch * s.lk * withX);
  return inputs;
}

/** Softmax over each row of logits [B, H, Lq, Lk] (-Infinity = masked), then P V; rows with no key give 0. */
export function softmaxTimesValues(
  s: AttentionShape,
  logits: Float64Array,
  v: ArrayLike<number>,
): { probs: Float64Array; out: Float64Array } {
  const probs = new Float64Array(logits.length);
  const out = new Float64Array(s.batch * s.heads * s.lq * s.valueDim);
  const group = s.heads / s.kvHeads;
  for (let b = 0; b < s.batch; b++) {
    for (let h = 0; h < s.heads; h++) {
      for (let i = 0; i < s.lq; i++) {
        const row = ((b * s.heads + h) * s.lq + i) * s.lk;
        const finite = Array.from(logits.subarray(row, row + s.lk)).filter((x) => x !== -Infinity);
        if (finite.length === 0) continue;
        const max = Math.max(...finite);
        let z = 0;
        for (let l = 0; l < s.lk; l++) z += Math.exp(logits[row + l]! - max);
        for (let l = 0; l < s.lk; l++) {
          const p = Math.exp(logits[row + l]! - max) / z;
          probs[row + l] = p;
          const kh = Math.floor(h / group);
          for (let c = 0; c < s.valueDim; c++) {
            out[((b * s.heads + h) * s.lq + i) * s.valueDim + c]! +=
              p * v[((b * s.kvHeads + kh) * s.lk + l) * s.valueDim + c]!;
          }
        }
      }
    }
  }
  return { probs, out };
}

/** Largest |a - b| relative to the largest |b| (so the check is judged on the tensor's own scale). */
export function relativeMaxError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let err = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    err = Math.max(err, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return err / Math.max(scale, 1e-300);
}

export function dotAll(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

/**
 * Worst central-difference error of every input gradient (q, k, v and x when present) and every parameter
 * gradient of `enc`, for the scalar loss sum(out * weights). At most `samples` entries per tensor are probed.
 */
export function gradientErrors(
  enc: PositionalEncoding,
  ctx: AttendContext,
  inputs: AttendInputs,
  weights: Float64Array,
  samples = 24,
): Record<string, number> {
  for (const p of enc.params) p.grad.fill(0);
  const res = enc.attend(ctx, inputs);
  const grads = res.backward(weights);
  const loss = (): number => dotAll(enc.attend(ctx, inputs).out, weights);
  const errors: Record<string, number> = {};
  const probe = (name: string, x: FloatArray, analytic: ArrayLike<number>): void => {
    errors[name] = maxRelativeGradError(loss, x, analytic, sampleIndices(x.length, samples, name.length + 7));
  };
  probe('q', inputs.q, grads.dq);
  probe('k', inputs.k, grads.dk);
  probe('v', inputs.v, grads.dv);
  if (inputs.x) {
    if (!grads.dx) throw new Error('backward returned no dx although x was given');
    probe('x', inputs.x, grads.dx);
  }
  for (const p of enc.params) probe(p.name, p.data, Float64Array.from(p.grad));
  return errors;
}

export { Rng };

/**
 * The same queries and keys moved c positions later, behind c random extra keys (and x rows) at 0..c-1: the
 * shifted call uses queryOffset = original + c and Lk = original + c.
 */
export function withKeyPrefix(
  s: AttentionShape,
  inputs: AttendInputs,
  c: number,
  seed: number,
  width?: number,
): { shape: AttentionShape; inputs: AttendInputs } {
  const rng = new Rng(seed);
  const shape = { ...s, lk: s.lk + c };
  const prefixRows = (src: ArrayLike<number>, groups: number, rowLen: number): Float64Array => {
    const out = new Float64Array(groups * shape.lk * rowLen);
    for (let g = 0; g < groups; g++) {
      for (let l = 0; l < shape.lk; l++) {
        for (let d = 0; d < rowLen; d++) {
          out[(g * shape.lk + l) * rowLen + d] = l < c ? rng.normal() : src[(g * s.lk + l - c) * rowLen + d]!;
        }
      }
    }
    return out;
  };
  const shifted: AttendInputs = {
    q: inputs.q,
    k: prefixRows(inputs.k, s.batch * s.kvHeads, s.headDim),
    v: prefixRows(inputs.v, s.batch * s.kvHeads, s.valueDim),
  };
  if (inputs.x && width !== undefined) shifted.x = prefixRows(inputs.x, s.batch, width);
  return { shape, inputs: shifted };
}

/** Adds noise to the last key row of k and v (and x, when given with its width), in place. */
export function perturbLastKey(s: AttentionShape, inputs: AttendInputs, width?: number): void {
  const last = s.lk - 1;
  for (let g = 0; g < s.batch * s.kvHeads; g++) {
    for (let d = 0; d < s.headDim; d++) inputs.k[(g * s.lk + last) * s.headDim + d]! += 1.5;
    for (let d = 0; d < s.valueDim; d++) inputs.v[(g * s.lk + last) * s.valueDim + d]! -= 2;
  }
  if (inputs.x && width !== undefined) {
    for (let b = 0; b < s.batch; b++) for (let d = 0; d < width; d++) inputs.x[(b * s.lk + last) * width + d]! += 1;
  }
}

/**
 * After perturbLastKey: rows whose query sits before the last key must be bit-for-bit unchanged; the row at the
 * last key's position must change (so the perturbation is real). Returns a description of the first violation.
 */
export function lookAheadViolation(
  s: AttentionShape,
  queryOffset: number,
  before: ArrayLike<number>,
  after: ArrayLike<number>,
): string | null {
  const last = s.lk - 1;
  for (let bh = 0; bh < s.batch * s.heads; bh++) {
    for (let i = 0; i < s.lq; i++) {
      const p = i + queryOffset;
      let changed = false;
      for (let d = 0; d < s.valueDim; d++) {
        const at = (bh * s.lq + i) * s.valueDim + d;
        if (after[at] !== before[at]) changed = true;
      }
      if (p < last && changed) return `row ${i} (position ${p}) of head-batch ${bh} saw the future key`;
      if (p === last && !changed) return `row ${i} at the perturbed position did not change: the test is vacuous`;
    }
  }
  return null;
}
