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
