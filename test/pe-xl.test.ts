import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import { HypeError } from '../src/errors.ts';
import type { AttendContext } from '../src/pe/encoding.ts';
import { getEncodingFactory } from '../src/pe/registry.ts';
import { relativeSinusoid, xlFactory, type XlEncoding } from '../src/pe/xl.ts';
import {
  Rng,
  gradientErrors,
  lookAheadViolation,
  perturbLastKey,
  randomArray,
  randomInputs,
  relativeMaxError,
  softmaxTimesValues,
  withKeyPrefix,
} from './helpers/pe-explicit.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';

/** The fp64-capable reference backend the encodings run on here. */
const REFERENCE = new ReferenceBackend();

const dims = { heads: 4, kvHeads: 2, headDim: 4, modelDim: 16, trainLength: 16 };

function setup(causal: boolean, lq: number, lk: number, queryOffset: number, seed = 1) {
  const rng = new Rng(seed);
  // Larger-than-default parameters so u, v and W_R move the logits as much as q.k does.
  const enc = xlFactory.create(dims, { posDim: 6, initStd: 0.6 }, rng) as XlEncoding;
  const shape: AttentionShape = { batch: 2, heads: 4, kvHeads: 2, lq, lk, headDim: 4, valueDim: 3 };
  const ctx: AttendContext = { backend: REFERENCE, shape, causal, queryOffset };
  return { rng, enc, shape, ctx, inputs: randomInputs(rng, shape) };
}

const cases = [
  { name: 'causal, square', causal: true, lq: 8, lk: 8, off: 0 },
  { name: 'causal, decoding tail', causal: true, lq: 3, lk: 9, off: 6 },
  { name: 'bidirectional', causal: false, lq: 7, lk: 6, off: 0 },
];

describe('xl (Transformer-XL relative attention)', () => {
  it('uses the sinusoid layout [sin(s w_c), cos(s w_c)] with w_c = base^(-2c/dR)', () => {
    const R = new Float64Array(6);
    relativeSinusoid(3, 6, 10000, R);
    for (let c = 0; c < 3; c++) {
      const w = 1 / Math.pow(10000, (2 * c) / 6);
      expect(R[c]).toBe(Math.sin(3 * w));
      expect(R[3 + c]).toBe(Math.cos(3 * w));
    }
  });

  for (const c of cases) {
    it(`forward equals softmax(dense logits) V — ${c.name}`, () => {
      const { enc, shape, ctx, inputs } = setup(c.causal, c.lq, c.lk, c.off);
      const logits = enc.denseLogits(ctx, inputs, 1 / Math.sqrt(shape.headDim));
      const expected = softmaxTimesValues(shape, logits, inputs.v).out;
      expect(relativeMaxError(enc.attend(ctx, inputs).out, expected)).toBeLessThan(1e-13);
    });

    it(`gradients of q, k, v, u, v-bias, W_R match central differences — ${c.name}`, () => {
      const { rng, enc, shape, ctx, inputs } = setup(c.causal, c.lq, c.lk, c.off, 2);
      const weights = randomArray(rng, shape.batch * shape.heads * shape.lq * shape.valueDim);
      const errs = gradientErrors(enc, ctx, inputs, weights, 30);
      expect(Object.keys(errs)).toEqual(['q', 'k', 'v', 'xl.u', 'xl.v', 'xl.wR']);
      for (const [name, e] of Object.entries(errs)) expect(e, name).toBeLessThan(1e-6);
    });
  }

  it('dense reference: the position term really depends on the distance (W_R = 0 changes the logits)', () => {
    const { enc, ctx, inputs } = setup(true, 6, 6, 0);
    const withR = enc.denseLogits(ctx, inputs, 0.5);
    const saved = Float64Array.from(enc.wR.data);
    enc.wR.data.fill(0);
    const without = enc.denseLogits(ctx, inputs, 0.5);
    enc.wR.data.set(saved);
    expect(
      relativeMaxError(
        without.map((x) => (x === -Infinity ? 0 : x)),
        withR.map((x) => (x === -Infinity ? 0 : x)),
      ),
    ).toBeGreaterThan(1e-2);
  });

  it('is shift-invariant: moving every position by c (queries behind a key prefix) leaves the logits unchanged', () => {
    const c = 7;
    for (const causal of [true, false]) {
      const a = setup(causal, 6, 6, 0, 4);
      const base = a.enc.denseLogits(a.ctx, a.inputs, 0.5);
      const s = withKeyPrefix(a.shape, a.inputs, c, 11);
      const shifted = a.enc.denseLogits({ ...a.ctx, shape: s.shape, queryOffset: c }, s.inputs, 0.5);
      for (let row = 0; row < a.shape.batch * a.shape.heads * 6; row++) {
        for (let l = 0; l < 6; l++) {
          // Same value up to rounding: the sinusoid of the same distance is bit-identical, the sums are too.
          expect(shifted[row * s.shape.lk + c + l]).toBe(base[row * 6 + l]);
        }
      }
      // The fast path agrees with the reference at the shifted positions as well.
      const ctx = { ...a.ctx, shape: s.shape, queryOffset: c };
      const scaled = a.enc.denseLogits(ctx, s.inputs, 1 / Math.sqrt(4));
      const expected = softmaxTimesValues(s.shape, scaled, s.inputs.v).out;
      expect(relativeMaxError(a.enc.attend(ctx, s.inputs).out, expected)).toBeLessThan(1e-13);
    }
  });

  it('causal attention never looks ahead', () => {
    const { enc, shape, ctx, inputs } = setup(true, 8, 8, 0, 5);
    const before = enc.attend(ctx, inputs).out;
    perturbLastKey(shape, inputs);
    expect(lookAheadViolation(shape, 0, before, enc.attend(ctx, inputs).out)).toBeNull();
  });

  it('is registered, and refuses bad options and mismatched sizes with a HypeError', () => {
    expect(getEncodingFactory('xl')).toBe(xlFactory);
    expect(() => xlFactory.create(dims, { posDim: 5 }, new Rng(1))).toThrow(/even/);
    const enc = xlFactory.create(dims, {}, new Rng(1)) as XlEncoding;
    expect(enc.wR.shape).toEqual([2, 4, 16]); // posDim 0 -> model width
    const { ctx, inputs } = setup(true, 4, 4, 0);
    const wrongHeads = { ...ctx, shape: { ...ctx.shape, heads: 2, kvHeads: 2 } };
    expect(() => enc.attend(wrongHeads, { ...inputs, q: inputs.q.subarray(0, 2 * 2 * 4 * 4) })).toThrow(HypeError);
  });
});
