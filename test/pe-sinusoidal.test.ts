import { describe, expect, it } from 'vitest';
import { sinusoidalEncoding } from '../src/pe/sinusoidal.ts';
import { Rng } from '../src/util/rng.ts';
import { pipelineLogits } from './helpers/absolute-pipeline.ts';
import {
  contextFor,
  forwardError,
  gradientErrors,
  randomInputs,
  standardCases,
  worst,
} from './helpers/encoding-checks.ts';

const dims = { heads: 4, kvHeads: 2, headDim: 8, modelDim: 32, trainLength: 16 };
const enc = sinusoidalEncoding.create(dims, {}, new Rng(1));

describe('sinusoidal', () => {
  it('adds sin(pos / 10000^(2i/C)) to even and cos(...) to odd dims, at any offset, in every batch row', () => {
    const B = 2;
    const L = 5;
    const C = 32;
    const x = new Float64Array(B * L * C).fill(0.5);
    enc.embed!(x, B, L, C, 1_000_000);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < L; t++) {
        for (let i = 0; i < C / 2; i++) {
          const angle = (1_000_000 + t) / 10000 ** ((2 * i) / C);
          // The angle (~1e6) is formed two ways (pos * base^-e vs pos / base^e): each rounds to ~|angle| eps.
          const tol = 4 * angle * Number.EPSILON;
          expect(Math.abs(x[(b * L + t) * C + 2 * i]! - (0.5 + Math.sin(angle)))).toBeLessThan(tol);
          expect(Math.abs(x[(b * L + t) * C + 2 * i + 1]! - (0.5 + Math.cos(angle)))).toBeLessThan(tol);
        }
      }
    }
  });

  it('inside a model, sizes each feature to the token embeddings (amplitude sqrt(2) * embeddingStd); option overrides', () => {
    const C = 32;
    const at = (options: { amplitude?: number }, embeddingStd?: number) => {
      const e = sinusoidalEncoding.create({ ...dims, ...(embeddingStd ? { embeddingStd } : {}) }, options, new Rng(1));
      const x = new Float64Array(C);
      e.embed!(x, 1, 1, C, 7);
      return x;
    };
    const unit = at({});
    const inModel = at({}, 0.02);
    const explicit = at({ amplitude: 3 }, 0.02);
    let rms = 0;
    for (let c = 0; c < C; c++) {
      expect(inModel[c]).toBeCloseTo(Math.SQRT2 * 0.02 * unit[c]!, 15);
      expect(explicit[c]).toBeCloseTo(3 * unit[c]!, 14);
      rms += inModel[c]! ** 2;
    }
    // sin^2 + cos^2 = 1 per pair, so the RMS over features is exactly amplitude / sqrt(2) = 0.02.
    expect(Math.sqrt(rms / C)).toBeCloseTo(0.02, 12);
    expect(() => at({ amplitude: -1 })).toThrow(/amplitude must be a finite number > 0/);
  });

  it('PE(p) . PE(p + k) depends on k only (sum of cos(k w_i)), the property the paper chose it for', () => {
    const C = 32;
    const pe = (p: number): Float64Array => {
      const x = new Float64Array(C);
      enc.embed!(x, 1, 1, C, p);
      return x;
    };
    const dot = (a: Float64Array, b: Float64Array): number => a.reduce((s, v, i) => s + v * b[i]!, 0);
    for (const k of [1, 5, 40]) {
      const expected = Array.from({ length: C / 2 }, (_, i) => Math.cos(k / 10000 ** ((2 * i) / C))).reduce(
        (s, v) => s + v,
        0,
      );
      for (const p of [0, 17, 999]) expect(Math.abs(dot(pe(p), pe(p + k)) - expected)).toBeLessThan(1e-9);
    }
  });

  // fp64 both sides: rounding ~1e-15, asserted at 1e-12.
  it.each(standardCases())('attend (plain, positions live in the embeddings) matches dense logits: $label', (c) => {
    expect(forwardError(enc, contextFor(c.shape, c.causal, c.queryOffset), randomInputs(c.shape, 41))).toBeLessThan(
      1e-12,
    );
  });

  it.each(standardCases())('attention gradients match finite differences: $label', (c) => {
    const ctx = contextFor(c.shape, c.causal, c.queryOffset);
    expect(worst(gradientErrors(enc, ctx, randomInputs(c.shape, 42)))).toBeLessThan(1e-6);
  });

  it('has no parameters and leaves dx untouched in the backward', () => {
    expect(enc.params).toEqual([]);
    const dx = new Float64Array(2 * 3 * 32).map((_, i) => i);
    const copy = Float64Array.from(dx);
    enc.embedBackward!(dx, 2, 3, 32, 4);
    expect(dx).toEqual(copy);
  });

  it('is absolute: the same tokens give different logits when every position moves by c', () => {
    const shape = { batch: 1, heads: 4, kvHeads: 4, lq: 6, lk: 6, headDim: 8, valueDim: 8 };
    const x = new Float64Array(6 * 32);
    new Rng(5).fillNormal(x);
    const a = pipelineLogits(enc, x, shape, 0);
    const b = pipelineLogits(enc, x, shape, 7);
    let change = 0;
    for (let i = 0; i < a.length; i++) if (a[i] !== -Infinity) change = Math.max(change, Math.abs(a[i]! - b[i]!));
    expect(change).toBeGreaterThan(0.1);
  });

  it('refuses a width it was not built for', () => {
    expect(() => enc.embed!(new Float64Array(2 * 16), 1, 2, 16, 0)).toThrow(/width 32/);
  });
});
