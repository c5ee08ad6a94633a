import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import { daFactory, type DaEncoding } from '../src/pe/da.ts';
import type { AttendContext } from '../src/pe/encoding.ts';
import { getEncodingFactory } from '../src/pe/registry.ts';
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
  const enc = daFactory.create(dims, { weightInit: 0.6 }, rng) as DaEncoding;
  // Distinct sigmoid parameters per head so both derivatives are exercised away from symmetric points.
  enc.sigmoidParam.data.set([0.3, -0.4, 1.1, -1.5]);
  const shape: AttentionShape = { batch: 2, heads: 4, kvHeads: 2, lq, lk, headDim: 4, valueDim: 3 };
  const ctx: AttendContext = { backend: REFERENCE, shape, causal, queryOffset };
  return { rng, enc, shape, ctx, inputs: randomInputs(rng, shape) };
}

const cases = [
  { name: 'causal, square', causal: true, lq: 8, lk: 8, off: 0 },
  { name: 'causal, decoding tail', causal: true, lq: 3, lk: 9, off: 6 },
  { name: 'bidirectional', causal: false, lq: 7, lk: 6, off: 0 },
];

describe('da (DA-Transformer distance-aware rescaling)', () => {
  it('initialises per-head weights evenly in [-weightInit, weightInit] and v = sigmoidInit', () => {
    const enc = daFactory.create(dims, {}, new Rng(1)) as DaEncoding;
    expect(Array.from(enc.weight.data)).toEqual([-0.1, -0.1 / 3, 0.1 / 3, 0.1].map((x) => expect.closeTo(x, 15)));
    expect(Array.from(enc.sigmoidParam.data)).toEqual([0, 0, 0, 0]);
  });

  it('dense logits: ReLU clips negative scores to 0, distance 0 is not rescaled, far keys obey the bounds', () => {
    const { enc, shape, inputs } = setup(false, 1, 40, 0);
    const ctx: AttendContext = { backend: REFERENCE, shape, causal: false, queryOffset: 0 };
    const logits = enc.denseLogits(ctx, inputs, 1);
    for (let b = 0; b < shape.batch; b++) {
      for (let h = 0; h < shape.heads; h++) {
        const kh = Math.floor(h / 2);
        const wh = enc.weight.data[h]!;
        const bound = 1 + Math.exp(enc.sigmoidParam.data[h]!);
        for (let l = 0; l < shape.lk; l++) {
          let qk = 0;
          for (let d = 0; d < 4; d++) qk += inputs.q[(b * 4 + h) * 4 + d]! * inputs.k[((b * 2 + kh) * 40 + l) * 4 + d]!;
          const logit = logits[(b * 4 + h) * 40 + l]!;
          if (qk <= 0) expect(logit).toBe(0);
          else if (l === 0) expect(logit).toBeCloseTo(qk, 14);
          else if (wh < 0) expect(logit / qk).toBeLessThan(1);
          else expect(logit / qk).toBeLessThan(bound);
        }
      }
    }
  });

  for (const c of cases) {
    it(`forward equals softmax(dense logits) V — ${c.name}`, () => {
      const { enc, shape, ctx, inputs } = setup(c.causal, c.lq, c.lk, c.off);
      const logits = enc.denseLogits(ctx, inputs, 1 / Math.sqrt(shape.headDim));
      const expected = softmaxTimesValues(shape, logits, inputs.v).out;
      expect(relativeMaxError(enc.attend(ctx, inputs).out, expected)).toBeLessThan(1e-13);
    });

    it(`gradients of q, k, v, w, v-param match central differences — ${c.name}`, () => {
      const { rng, enc, shape, ctx, inputs } = setup(c.causal, c.lq, c.lk, c.off, 2);
      const weights = randomArray(rng, shape.batch * shape.heads * shape.lq * shape.valueDim);
      const errs = gradientErrors(enc, ctx, inputs, weights, 30);
      expect(Object.keys(errs)).toEqual(['q', 'k', 'v', 'da.w', 'da.v']);
      for (const [name, e] of Object.entries(errs)) expect(e, name).toBeLessThan(1e-6);
    });
  }

  it('is shift-invariant: moving every position by c leaves the logits unchanged', () => {
    const c = 5;
    for (const causal of [true, false]) {
      const a = setup(causal, 6, 6, 0, 4);
      const base = a.enc.denseLogits(a.ctx, a.inputs, 0.5);
      const s = withKeyPrefix(a.shape, a.inputs, c, 12);
      const ctx = { ...a.ctx, shape: s.shape, queryOffset: c };
      const shifted = a.enc.denseLogits(ctx, s.inputs, 0.5);
      for (let row = 0; row < a.shape.batch * a.shape.heads * 6; row++) {
        for (let l = 0; l < 6; l++) expect(shifted[row * s.shape.lk + c + l]).toBe(base[row * 6 + l]);
      }
      const expected = softmaxTimesValues(s.shape, a.enc.denseLogits(ctx, s.inputs, 0.5), s.inputs.v).out;
      expect(relativeMaxError(a.enc.attend(ctx, s.inputs).out, expected)).toBeLessThan(1e-13);
    }
  });

  it('causal attention never looks ahead', () => {
    const { enc, shape, ctx, inputs } = setup(true, 8, 8, 0, 5);
    const before = enc.attend(ctx, inputs).out;
    perturbLastKey(shape, inputs);
    expect(lookAheadViolation(shape, 0, before, enc.attend(ctx, inputs).out)).toBeNull();
  });

  it('is registered, and refuses bad options and mismatched head counts', () => {
    expect(getEncodingFactory('da')).toBe(daFactory);
    expect(() => daFactory.create(dims, { sigmoidInit: 1000 }, new Rng(1))).toThrow(/sigmoidInit/);
    const enc = daFactory.create({ ...dims, heads: 2 }, {}, new Rng(1));
    const { ctx, inputs } = setup(true, 4, 4, 0);
    expect(() => enc.attend(ctx, inputs)).toThrow(/built for 2 heads/);
    const ok = setup(true, 4, 4, 0);
    ok.enc.sigmoidParam.data[1] = 800;
    expect(() => ok.enc.attend(ok.ctx, ok.inputs)).toThrow(/overflow/);
  });
});
