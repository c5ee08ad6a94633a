/**
 * Checks every positional encoding must pass, shared by the test/pe-*.test.ts files: attend() against an
 * independent fp64 softmax over the encoding's dense logits, and every input and parameter gradient against
 * central finite differences. All tensors are Float64Array and the backend is the ReferenceBackend.
 */
import type { AttentionShape } from '../../src/backend/backend.ts';
import { ReferenceBackend } from '../../src/backend/reference.ts';
import type { AttendContext, AttendInputs, PositionalEncoding } from '../../src/pe/encoding.ts';
import { Rng } from '../../src/util/rng.ts';
import { maxRelativeGradError, sampleIndices } from './gradcheck.ts';

export function shapeOf(p: Partial<AttentionShape> & { lq: number; lk: number }): AttentionShape {
  return { batch: 2, heads: 4, kvHeads: 2, headDim: 8, valueDim: 5, ...p };
}

export function contextFor(shape: AttentionShape, causal: boolean, queryOffset = shape.lk - shape.lq): AttendContext {
  return { backend: new ReferenceBackend(), shape, causal, queryOffset };
}

export function randomInputs(shape: AttentionShape, seed: number, std = 1): AttendInputs {
  const rng = new Rng(seed);
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  const q = new Float64Array(B * H * lq * d);
  const k = new Float64Array(B * Hkv * lk * d);
  const v = new Float64Array(B * Hkv * lk * dv);
  rng.fillNormal(q, std);
  rng.fillNormal(k, std);
  rng.fillNormal(v, 1);
  return { q, k, v };
}

/** randomInputs plus a block input x [B, Lk, C] ~ N(0, 1), for encodings that read content (fox, hype-gated). */
export function randomInputsWithX(shape: AttentionShape, seed: number, C: number): AttendInputs & { x: Float64Array } {
  const x = new Float64Array(shape.batch * shape.lk * C);
  new Rng(seed + 100).fillNormal(x);
  return { ...randomInputs(shape, seed), x };
}

/** d loss / d x of a content-reading encoding against central differences (loss = sum(out * W), W ~ N(0, 1)). */
export function blockInputGradError(
  enc: PositionalEncoding,
  ctx: AttendContext,
  inputs: AttendInputs & { x: Float64Array },
): number {
  const W = new Float64Array(ctx.shape.batch * ctx.shape.heads * ctx.shape.lq * ctx.shape.valueDim);
  new Rng(9).fillNormal(W);
  const loss = () => Array.from(enc.attend(ctx, inputs).out).reduce((a, o, j) => a + o * W[j]!, 0);
  const dx = enc.attend(ctx, inputs).backward(W).dx!;
  return maxRelativeGradError(loss, inputs.x, dx, sampleIndices(inputs.x.length, 40));
}

/**
 * Max |out - fp64 out| of a concat encoding in emulated bf16 with plain and with split columns; `make` builds the
 * encoding from the precision options (the same parameters each time).
 */
export function bf16ColumnErrors(
  make: (options: object) => PositionalEncoding,
  ctx: AttendContext,
  inputs: AttendInputs,
): { plain: number; split: number } {
  const exact = make({}).attend(ctx, inputs).out;
  const err = (columns: 'plain' | 'split') => {
    const out = make({ format: 'bf16', columns }).attend(ctx, inputs).out;
    return Array.from(out).reduce((m, o, j) => Math.max(m, Math.abs(o - exact[j]!)), 0);
  };
  return { plain: err('plain'), split: err('split') };
}

/** softmax(logits) V in fp64, written independently of any backend; a row with no visible key gives 0. */
export function softmaxTimesV(logits: Float64Array, v: Float64Array, shape: AttentionShape): Float64Array {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, valueDim: dv } = shape;
  const out = new Float64Array(B * H * lq * dv);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / (H / Hkv));
      for (let i = 0; i < lq; i++) {
        const row = Array.from(logits.subarray(((b * H + h) * lq + i) * lk, ((b * H + h) * lq + i + 1) * lk));
        const max = Math.max(...row);
        if (max === -Infinity) continue;
        const w = row.map((x) => Math.exp(x - max));
        const sum = w.reduce((a, x) => a + x, 0);
        for (let c = 0; c < dv; c++) {
          let acc = 0;
          for (let l = 0; l < lk; l++) acc += (w[l]! / sum) * v[((b * Hkv + kvh) * lk + l) * dv + c]!;
          out[((b * H + h) * lq + i) * dv + c] = acc;
        }
      }
    }
  }
  return out;
}

/** Largest |attend().out - softmax(denseLogits) V| over all entries. */
export function forwardError(enc: PositionalEncoding, ctx: AttendContext, inputs: AttendInputs): number {
  const scale = 1 / Math.sqrt(ctx.shape.headDim);
  const got = enc.attend(ctx, inputs).out;
  const want = softmaxTimesV(enc.denseLogits(ctx, inputs, scale), inputs.v as Float64Array, ctx.shape);
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  return worst;
}

/**
 * Worst relative finite-difference error of the gradient of loss = sum(out * W) with respect to q, k, v and every
 * parameter of the encoding (sampled entries for large tensors). Returns one figure per tensor, by name.
 */
export function gradientErrors(
  enc: PositionalEncoding,
  ctx: AttendContext,
  inputs: AttendInputs,
  seed = 7,
  samples = 48,
): Record<string, number> {
  const outLen = ctx.shape.batch * ctx.shape.heads * ctx.shape.lq * ctx.shape.valueDim;
  const w = new Float64Array(outLen);
  new Rng(seed).fillNormal(w);
  const loss = (): number => {
    const out = enc.attend(ctx, inputs).out;
    let s = 0;
    for (let i = 0; i < outLen; i++) s += out[i]! * w[i]!;
    return s;
  };
  for (const p of enc.params) p.grad.fill(0);
  const grads = enc.attend(ctx, inputs).backward(w);
  const errors: Record<string, number> = {};
  for (const name of ['q', 'k', 'v'] as const) {
    const x = inputs[name];
    errors[name] = maxRelativeGradError(loss, x, grads[`d${name}`], sampleIndices(x.length, samples, seed));
  }
  for (const p of enc.params) {
    errors[`param ${p.name}`] = maxRelativeGradError(loss, p.data, p.grad, sampleIndices(p.data.length, samples, seed));
  }
  return errors;
}

/** The largest value of a record of errors (for one expect per case). */
export function worst(errors: Record<string, number>): number {
  return Math.max(...Object.values(errors));
}

/**
 * Moves every position by c: the same queries and keys, but c extra keys are put in front (so key l now sits at
 * l + c) and queryOffset grows by c. Returns the largest change of the logits between the original keys, which is
 * 0 (up to rounding) exactly when the encoding sees positions only through D = i - l.
 */
export function shiftedLogitsChange(
  enc: PositionalEncoding,
  shape: AttentionShape,
  causal: boolean,
  c: number,
  seed = 3,
): number {
  const base = contextFor(shape, causal, shape.lk - shape.lq);
  const inputs = randomInputs(shape, seed);
  const scale = 1 / Math.sqrt(shape.headDim);
  const before = enc.denseLogits(base, inputs, scale);

  const wide: AttentionShape = { ...shape, lk: shape.lk + c };
  const { batch: B, kvHeads: Hkv, lk, headDim: d, valueDim: dv } = shape;
  const k = new Float64Array(B * Hkv * wide.lk * d);
  const v = new Float64Array(B * Hkv * wide.lk * dv);
  new Rng(seed + 1).fillNormal(k);
  for (let g = 0; g < B * Hkv; g++) {
    k.set(inputs.k.subarray(g * lk * d, (g + 1) * lk * d), (g * wide.lk + c) * d);
    v.set(inputs.v.subarray(g * lk * dv, (g + 1) * lk * dv), (g * wide.lk + c) * dv);
  }
  const after = enc.denseLogits(contextFor(wide, causal, base.queryOffset + c), { q: inputs.q, k, v }, scale);

  let change = 0;
  const rows = B * shape.heads * shape.lq;
  for (let r = 0; r < rows; r++) {
    for (let l = 0; l < lk; l++) {
      const x = before[r * lk + l]!;
      const y = after[r * wide.lk + c + l]!;
      if (x === -Infinity && y === -Infinity) continue;
      change = Math.max(change, Math.abs(x - y));
    }
  }
  return change;
}

export interface AttentionCase {
  label: string;
  shape: AttentionShape;
  causal: boolean;
  queryOffset: number;
}

/** Causal and bidirectional, square and decode-like (fewer queries than keys), grouped-query and plain heads. */
export function standardCases(): AttentionCase[] {
  const square = shapeOf({ lq: 6, lk: 6 });
  const decode = shapeOf({ lq: 3, lk: 8, kvHeads: 4 });
  return [
    { label: 'causal, square, GQA 4/2', shape: square, causal: true, queryOffset: 0 },
    { label: 'causal, 3 queries after 5 cached keys, MHA', shape: decode, causal: true, queryOffset: 5 },
    { label: 'bidirectional, square, GQA 4/2', shape: square, causal: false, queryOffset: 0 },
  ];
}
