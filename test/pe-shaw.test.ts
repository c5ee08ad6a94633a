import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import { HypeError } from '../src/errors.ts';
import type { AttendContext } from '../src/pe/encoding.ts';
import { shawFactory, type ShawEncoding } from '../src/pe/shaw.ts';
import {
  Rng,
  gradientErrors,
  randomArray,
  randomInputs,
  relativeMaxError,
  softmaxTimesValues,
} from './helpers/pe-explicit.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';

/** The fp64-capable reference backend the encodings run on here. */
const REFERENCE = new ReferenceBackend();

const dims = { heads: 4, kvHeads: 2, headDim: 5, modelDim: 20, trainLength: 16 };

function setup(causal: boolean, lq: number, lk: number, queryOffset: number, seed = 1, clip = 3) {
  const rng = new Rng(seed);
  // Larger-than-default tables so the relative terms matter as much as q.k in the checks.
  const enc = shawFactory.create(dims, { clip, initStd: 0.7 }, rng) as ShawEncoding;
  const shape: AttentionShape = { batch: 2, heads: 4, kvHeads: 2, lq, lk, headDim: 5, valueDim: 5 };
  const ctx: AttendContext = { backend: REFERENCE, shape, causal, queryOffset };
  return { rng, enc, shape, ctx, inputs: randomInputs(rng, shape) };
}

const cases = [
  { name: 'causal, square', causal: true, lq: 9, lk: 9, off: 0 },
  { name: 'causal, decoding tail (queryOffset = Lk - Lq)', causal: true, lq: 4, lk: 10, off: 6 },
  { name: 'bidirectional', causal: false, lq: 8, lk: 9, off: 0 },
];

describe('shaw (relative key and value embeddings)', () => {
  for (const c of cases) {
    it(`forward equals softmax(dense logits) (V + aV) — ${c.name}`, () => {
      const { enc, shape, ctx, inputs } = setup(c.causal, c.lq, c.lk, c.off);
      const scale = 1 / Math.sqrt(shape.headDim);
      const logits = enc.denseLogits(ctx, inputs, scale);
      const { probs, out } = softmaxTimesValues(shape, logits, inputs.v);
      const valueTerm = enc.denseValueTerm(ctx, probs);
      const expected = out.map((x, i) => x + valueTerm[i]!);
      const got = enc.attend(ctx, inputs).out;
      expect(relativeMaxError(got, expected)).toBeLessThan(1e-13);
      // The value term is not negligible here, so this comparison really tests it.
      expect(relativeMaxError(out, expected)).toBeGreaterThan(1e-3);
    });

    it(`gradients of q, k, v, aK, aV match central differences — ${c.name}`, () => {
      const { rng, enc, shape, ctx, inputs } = setup(c.causal, c.lq, c.lk, c.off, 2);
      const weights = randomArray(rng, shape.batch * shape.heads * shape.lq * shape.valueDim);
      const errs = gradientErrors(enc, ctx, inputs, weights, 30);
      expect(Object.keys(errs)).toEqual(['q', 'k', 'v', 'shaw.aK', 'shaw.aV']);
      for (const [name, e] of Object.entries(errs)) expect(e, name).toBeLessThan(1e-6);
    });
  }

  it('the table gradients cover every used row (the small-clip case hits both clipped edges)', () => {
    const { rng, enc, shape, ctx, inputs } = setup(false, 9, 9, 0, 3, 2);
    const res = enc.attend(ctx, inputs);
    res.backward(randomArray(rng, shape.batch * shape.heads * shape.lq * shape.valueDim));
    for (let m = 0; m < 5; m++) {
      const row = Array.from(enc.keyTable.grad.subarray(m * 5, m * 5 + 5));
      expect(row.some((g) => g !== 0)).toBe(true);
    }
  });

  it('is shift-invariant: moving every position by c (queries behind a key prefix) leaves the logits unchanged', () => {
    const c = 5;
    const a = setup(true, 6, 6, 0, 4);
    const scale = 0.4;
    const base = a.enc.denseLogits(a.ctx, a.inputs, scale);
    // The same queries and keys, now at positions c.., behind c extra keys at 0..c-1.
    const shape: AttentionShape = { ...a.shape, lk: 6 + c };
    const k = new Float64Array(shape.batch * shape.kvHeads * shape.lk * shape.headDim);
    const v = new Float64Array(shape.batch * shape.kvHeads * shape.lk * shape.valueDim);
    const prefix = new Rng(9);
    for (let bh = 0; bh < shape.batch * shape.kvHeads; bh++) {
      for (let l = 0; l < shape.lk; l++) {
        for (let d = 0; d < 5; d++) {
          k[(bh * shape.lk + l) * 5 + d] = l < c ? prefix.normal() : a.inputs.k[(bh * 6 + l - c) * 5 + d]!;
          v[(bh * shape.lk + l) * 5 + d] = l < c ? prefix.normal() : a.inputs.v[(bh * 6 + l - c) * 5 + d]!;
        }
      }
    }
    const shifted = a.enc.denseLogits({ ...a.ctx, shape, queryOffset: c }, { q: a.inputs.q, k, v }, scale);
    for (let row = 0; row < shape.batch * shape.heads * 6; row++) {
      for (let l = 0; l < 6; l++) expect(shifted[row * shape.lk + c + l]).toBe(base[row * 6 + l]);
    }
  });

  it('causal attention never looks ahead: changing a future key and value changes no earlier row', () => {
    const { enc, shape, ctx, inputs } = setup(true, 8, 8, 0, 5);
    const before = enc.attend(ctx, inputs).out;
    const last = shape.lk - 1;
    for (let bh = 0; bh < shape.batch * shape.kvHeads; bh++) {
      for (let d = 0; d < 5; d++) {
        inputs.k[(bh * shape.lk + last) * 5 + d]! += 3;
        inputs.v[(bh * shape.lk + last) * 5 + d]! -= 2;
      }
    }
    const after = enc.attend(ctx, inputs).out;
    for (let bh = 0; bh < shape.batch * shape.heads; bh++) {
      for (let i = 0; i < shape.lq; i++) {
        for (let d = 0; d < 5; d++) {
          const at = (bh * shape.lq + i) * 5 + d;
          if (i < last) expect(after[at]).toBe(before[at]);
        }
      }
      // ...while the last row, which does see that key, changes.
      expect(after[(bh * shape.lq + last) * 5]).not.toBe(before[(bh * shape.lq + last) * 5]);
    }
  });

  it('fp32 inputs give fp32 outputs within fp32 rounding of the fp64 result', () => {
    const { enc, ctx, inputs } = setup(true, 7, 7, 0, 6);
    const f64 = enc.attend(ctx, inputs).out;
    const f32in = { q: Float32Array.from(inputs.q), k: Float32Array.from(inputs.k), v: Float32Array.from(inputs.v) };
    const f32 = enc.attend(ctx, f32in).out;
    expect(f32).toBeInstanceOf(Float32Array);
    // Inputs rounded to fp32 (relative 6e-8) move logits and outputs by a few units of that.
    expect(relativeMaxError(f32, f64)).toBeLessThan(1e-5);
  });

  it('refuses bad options and mismatched shapes with a HypeError naming the fix', () => {
    expect(() => shawFactory.create(dims, { clip: -1 }, new Rng(1))).toThrow(/clip/);
    const { enc, ctx, inputs } = setup(true, 4, 4, 0);
    const bad = { ...inputs, k: inputs.k.subarray(1) };
    expect(() => enc.attend(ctx, bad)).toThrow(HypeError);
    const v4 = new Float64Array(2 * 2 * 4 * 4);
    expect(() => enc.attend({ ...ctx, shape: { ...ctx.shape, valueDim: 4 } }, { ...inputs, v: v4 })).toThrow(
      /head dim/,
    );
  });
});
