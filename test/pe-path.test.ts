import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import { HypeError } from '../src/errors.ts';
import type { AttendContext } from '../src/pe/encoding.ts';
import { explicitAttentionForward } from '../src/backend/score-attention.ts';
import { pathAttention } from '../src/pe/path-attention.ts';
import { pathFactory, type PathEncoding } from '../src/pe/path.ts';
import { getEncodingFactory } from '../src/pe/registry.ts';
import { maxRelativeGradError, sampleIndices } from './helpers/gradcheck.ts';
import {
  Rng,
  dotAll,
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

const C = 6;
const dims = { heads: 4, kvHeads: 2, headDim: 4, modelDim: C, trainLength: 16 };

function setup(lq: number, lk: number, queryOffset: number, shortConv: boolean, seed = 1, betaBias = 0.3) {
  const rng = new Rng(seed);
  // initStd 0.5: the factors then vary strongly with x, so every gradient path carries weight.
  const enc = pathFactory.create(dims, { shortConv, initStd: 0.5, betaBias }, rng) as PathEncoding;
  const shape: AttentionShape = { batch: 2, heads: 4, kvHeads: 2, lq, lk, headDim: 4, valueDim: 3 };
  const ctx: AttendContext = { backend: REFERENCE, shape, causal: true, queryOffset };
  return { rng, enc, shape, ctx, inputs: randomInputs(rng, shape, C) };
}

/** scale * q.k for every causal pair, -Infinity elsewhere: the NoPE logits, computed here independently. */
function nopeLogits(shape: AttentionShape, q: ArrayLike<number>, k: ArrayLike<number>, off: number, scale: number) {
  const out = new Float64Array(shape.batch * shape.heads * shape.lq * shape.lk).fill(-Infinity);
  for (let b = 0; b < shape.batch; b++) {
    for (let h = 0; h < shape.heads; h++) {
      const kh = Math.floor(h / (shape.heads / shape.kvHeads));
      for (let i = 0; i < shape.lq; i++) {
        for (let l = 0; l <= i + off; l++) {
          let e = 0;
          for (let d = 0; d < shape.headDim; d++) {
            e +=
              q[((b * shape.heads + h) * shape.lq + i) * shape.headDim + d]! *
              k[((b * shape.kvHeads + kh) * shape.lk + l) * shape.headDim + d]!;
          }
          out[((b * shape.heads + h) * shape.lq + i) * shape.lk + l] = scale * e;
        }
      }
    }
  }
  return out;
}

const cases = [
  { name: 'with short convolution', lq: 7, lk: 7, off: 0, conv: true },
  { name: 'without short convolution', lq: 7, lk: 7, off: 0, conv: false },
  { name: 'decoding tail (queryOffset = Lk - Lq)', lq: 3, lk: 8, off: 5, conv: true },
];

describe('path (PaTH: accumulated data-dependent Householder-like factors)', () => {
  for (const c of cases) {
    it(`forward equals softmax(explicit matrix-product logits) V — ${c.name}`, () => {
      const { enc, shape, ctx, inputs } = setup(c.lq, c.lk, c.off, c.conv);
      const logits = enc.denseLogits(ctx, inputs, 1 / Math.sqrt(shape.headDim));
      const expected = softmaxTimesValues(shape, logits, inputs.v).out;
      expect(relativeMaxError(enc.attend(ctx, inputs).out, expected)).toBeLessThan(1e-13);
      // The factors matter: the same call without them (NoPE) differs clearly.
      const nope = softmaxTimesValues(shape, nopeLogits(shape, inputs.q, inputs.k, c.off, 0.5), inputs.v).out;
      expect(relativeMaxError(nope, expected)).toBeGreaterThan(1e-2);
    });

    it(`gradients of q, k, v, x and every factor parameter match central differences — ${c.name}`, () => {
      const { rng, enc, shape, ctx, inputs } = setup(c.lq, c.lk, c.off, c.conv, 2);
      const weights = randomArray(rng, shape.batch * shape.heads * shape.lq * shape.valueDim);
      const errs = gradientErrors(enc, ctx, inputs, weights, 24);
      const names = c.conv
        ? ['q', 'k', 'v', 'x', 'path.wW', 'path.conv', 'path.wBeta', 'path.bBeta']
        : ['q', 'k', 'v', 'x', 'path.wW', 'path.wBeta', 'path.bBeta'];
      expect(Object.keys(errs)).toEqual(names);
      for (const [name, e] of Object.entries(errs)) expect(e, name).toBeLessThan(1e-6);
    });
  }

  it('the core walk: gradients with respect to w and beta themselves match central differences', () => {
    const rng = new Rng(3);
    const shape: AttentionShape = { batch: 1, heads: 2, kvHeads: 1, lq: 6, lk: 6, headDim: 3, valueDim: 2 };
    const q = randomArray(rng, 2 * 6 * 3);
    const k = randomArray(rng, 6 * 3);
    const v = randomArray(rng, 6 * 2);
    const w = randomArray(rng, 6 * 3, 0.6); // not normalised: the core takes any w
    const beta = Float64Array.from({ length: 6 }, () => 2 * rng.uniform());
    const weights = randomArray(rng, 2 * 6 * 2);
    const grads = pathAttention(shape, 0, q, k, v, { w, beta }, 0.7, REFERENCE).backward(weights);
    const loss = () => dotAll(pathAttention(shape, 0, q, k, v, { w, beta }, 0.7, REFERENCE).out, weights);
    for (const [x, g] of [
      [q, grads.dq],
      [k, grads.dk],
      [w, grads.dw],
      [beta, grads.dbeta],
    ] as const) {
      expect(maxRelativeGradError(loss, x, g, sampleIndices(x.length, 40))).toBeLessThan(1e-6);
    }
    // beta_0 is never used (no key lies before position 0), so its gradient is exactly zero.
    expect(grads.dbeta[0]).toBe(0);
  });

  it('beta = 0 reduces to NoPE exactly (core with beta = 0, and the encoding with beta -> 2 sigmoid(-1000) = 0)', () => {
    const { enc, shape, ctx, inputs } = setup(7, 7, 0, true, 4, -1000);
    const scale = 1 / Math.sqrt(shape.headDim);
    const plain = nopeLogits(shape, inputs.q, inputs.k, 0, scale);
    // The dense reference's explicit product is exactly the identity: bit-identical logits.
    const dense = enc.denseLogits(ctx, inputs, scale);
    for (let j = 0; j < plain.length; j++) expect(dense[j]).toBe(plain[j]);
    // The walk leaves r = q untouched: bit-identical to attention over the plain logits.
    const reference = explicitAttentionForward(shape, { causal: true, queryOffset: 0 }, plain, inputs.v).out;
    expect(Array.from(enc.attend(ctx, inputs).out)).toEqual(Array.from(reference));
    const w = randomArray(new Rng(5), 2 * 2 * 7 * 4);
    const core = pathAttention(
      shape,
      0,
      inputs.q,
      inputs.k,
      inputs.v,
      { w, beta: new Float64Array(28) },
      scale,
      REFERENCE,
    );
    expect(Array.from(core.out)).toEqual(Array.from(reference));
    // ...and agrees with an independent softmax to rounding.
    expect(relativeMaxError(core.out, softmaxTimesValues(shape, plain, inputs.v).out)).toBeLessThan(1e-14);
  });

  it('depends on positions only through the tokens between key and query (prefixing tokens changes no pair)', () => {
    const c = 4;
    for (const conv of [false, true]) {
      const a = setup(6, 6, 0, conv, 6);
      const base = a.enc.denseLogits(a.ctx, a.inputs, 0.5);
      const s = withKeyPrefix(a.shape, a.inputs, c, 13, C);
      const shiftedCtx = { ...a.ctx, shape: s.shape, queryOffset: c };
      const shifted = a.enc.denseLogits(shiftedCtx, s.inputs, 0.5);
      // A pair (p, j) uses the factors j+1..p; the convolution makes factor t read x_{t-2..t}, so with it the
      // pairs whose factors all start at t >= 2 (j >= 1) are unaffected, and without it every pair is.
      const firstKey = conv ? 1 : 0;
      for (let row = 0; row < a.shape.batch * a.shape.heads * 6; row++) {
        for (let l = firstKey; l < 6; l++) {
          const expected = base[row * 6 + l]!;
          const got = shifted[row * s.shape.lk + c + l]!;
          if (expected === -Infinity) expect(got).toBe(-Infinity);
          else expect(Math.abs(got - expected)).toBeLessThanOrEqual(1e-14 * Math.max(1, Math.abs(expected)));
        }
      }
      const expected = softmaxTimesValues(s.shape, a.enc.denseLogits(shiftedCtx, s.inputs, 0.5), s.inputs.v).out;
      expect(relativeMaxError(a.enc.attend(shiftedCtx, s.inputs).out, expected)).toBeLessThan(1e-13);
    }
  });

  it('never looks ahead: changing the last key, value and token changes no earlier row', () => {
    const { enc, shape, ctx, inputs } = setup(8, 8, 0, true, 7);
    const before = enc.attend(ctx, inputs).out;
    perturbLastKey(shape, inputs, C);
    expect(lookAheadViolation(shape, 0, before, enc.attend(ctx, inputs).out)).toBeNull();
  });

  it('fp32 inputs give fp32 outputs and gradients within fp32 rounding of fp64', () => {
    const { rng, enc, ctx, inputs, shape } = setup(6, 6, 0, true, 8);
    const f32 = {
      q: Float32Array.from(inputs.q),
      k: Float32Array.from(inputs.k),
      v: Float32Array.from(inputs.v),
      x: Float32Array.from(inputs.x!),
    };
    const r64 = enc.attend(ctx, inputs);
    const r32 = enc.attend(ctx, f32);
    expect(r32.out).toBeInstanceOf(Float32Array);
    expect(relativeMaxError(r32.out, r64.out)).toBeLessThan(1e-5);
    const dOut = randomArray(rng, shape.batch * shape.heads * shape.lq * shape.valueDim);
    const g32 = r32.backward(dOut);
    const g64 = r64.backward(dOut);
    expect(g32.dx).toBeInstanceOf(Float32Array);
    expect(relativeMaxError(g32.dx!, g64.dx!)).toBeLessThan(1e-4);
  });

  it('is registered, and refuses bidirectional use, a missing x and queries past the keys', () => {
    expect(getEncodingFactory('path')).toBe(pathFactory);
    const { enc, ctx, inputs } = setup(4, 4, 0, true);
    expect(() => enc.attend({ ...ctx, causal: false }, inputs)).toThrow(/causal/);
    expect(() => enc.attend(ctx, { q: inputs.q, k: inputs.k, v: inputs.v })).toThrow(/inputs\.x/);
    expect(() => enc.attend({ ...ctx, queryOffset: 1 }, inputs)).toThrow(HypeError);
    expect(() => enc.attend(ctx, { ...inputs, x: inputs.x!.subarray(1) })).toThrow(/x has/);
    expect(() => pathFactory.create(dims, { convSize: 0 }, new Rng(1))).toThrow(/convSize/);
  });
});
