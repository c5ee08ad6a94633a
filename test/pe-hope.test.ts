import { describe, expect, it } from 'vitest';
import { hopeEncoding, hopeFrequencies } from '../src/pe/hope.ts';
import { noneEncoding } from '../src/pe/none.ts';
import { ropeEncoding, ropeFrequencies } from '../src/pe/rope.ts';
import { Rng } from '../src/util/rng.ts';
import {
  contextFor,
  forwardError,
  gradientErrors,
  randomInputs,
  shapeOf,
  shiftedLogitsChange,
  standardCases,
  worst,
} from './helpers/encoding-checks.ts';

// headDim 8: RoPE frequencies 1, 0.1, 0.01, 0.001; with L = 64 the threshold 2 pi / 64 = 0.098 keeps two pairs.
const dims = { heads: 4, kvHeads: 2, headDim: 8, modelDim: 32, trainLength: 64 };
const enc = hopeEncoding.create(dims, {}, new Rng(1));

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('hope', () => {
  it('keeps exactly the components that complete a full period within the training length', () => {
    for (const [d, L] of [
      [8, 64],
      [64, 512],
      [128, 2048],
      [64, 16],
    ] as const) {
      const all = ropeFrequencies(d, 10000, 1);
      const kept = hopeFrequencies(d, 10000, L);
      expect(Array.from(kept)).toEqual(Array.from(all.subarray(0, kept.length)));
      for (const f of kept) expect(f * L).toBeGreaterThanOrEqual(2 * Math.PI);
      if (kept.length < all.length) expect(all[kept.length]! * L).toBeLessThan(2 * Math.PI);
      expect(kept.length).toBeLessThan(all.length); // with base 10000 these lengths all drop some components
    }
    expect(hopeFrequencies(8, 10000, 64).length).toBe(2);
  });

  // fp64 both sides: rounding ~1e-15, asserted at 1e-12.
  it.each(standardCases())('attend matches the dense logits: $label', (c) => {
    expect(forwardError(enc, contextFor(c.shape, c.causal, c.queryOffset), randomInputs(c.shape, 31))).toBeLessThan(
      1e-12,
    );
  });

  it.each(standardCases())('gradients match finite differences: $label', (c) => {
    const ctx = contextFor(c.shape, c.causal, c.queryOffset);
    expect(worst(gradientErrors(enc, ctx, randomInputs(c.shape, 32)))).toBeLessThan(1e-6);
  });

  it('is shift-invariant', () => {
    expect(shiftedLogitsChange(enc, shapeOf({ lq: 5, lk: 5 }), true, 40)).toBeLessThan(1e-12);
  });

  it('removed components are position-independent and kept ones are not', () => {
    const shape = shapeOf({ batch: 1, heads: 1, kvHeads: 1, lq: 10, lk: 10 });
    const ctx = contextFor(shape, false, 0);
    const one = (dimsOn: number[]): Float64Array =>
      new Float64Array(10 * 8).map((_, j) => (dimsOn.includes(j % 8) ? 1 : 0));
    const v = new Float64Array(10 * 5);
    const single = hopeEncoding.create({ ...dims, heads: 1, kvHeads: 1 }, {}, new Rng(0));
    // Content only in pairs 2 and 3 (removed): every logit equals the plain dot product, 2.
    const low = single.denseLogits(ctx, { q: one([4, 5, 6, 7]), k: one([4, 6]), v }, 1);
    for (const x of low) expect(x).toBe(2);
    // Content in dim 2 (pair 1, kept, frequency 0.1): the logit is cos(0.1 D).
    const high = single.denseLogits(ctx, { q: one([2]), k: one([2]), v }, 1);
    for (let i = 0; i < 10; i++) {
      for (let l = 0; l < 10; l++) expect(Math.abs(high[i * 10 + l]! - Math.cos(0.1 * (i - l)))).toBeLessThan(1e-15);
    }
  });

  it('is RoPE when every component passes the threshold and NoPE when none does', () => {
    const shape = shapeOf({ lq: 6, lk: 6 });
    const ctx = contextFor(shape, true, 0);
    const inputs = randomInputs(shape, 8);
    const allKept = hopeEncoding.create(dims, { cutoffLength: 1e9 }, new Rng(0)).attend(ctx, inputs).out;
    const noneKept = hopeEncoding.create(dims, { cutoffLength: 2 }, new Rng(0)).attend(ctx, inputs).out;
    const rope = ropeEncoding.create(dims, {}, new Rng(0)).attend(ctx, inputs).out;
    const nope = noneEncoding.create(dims, {}, new Rng(0)).attend(ctx, inputs).out;
    const hope = enc.attend(ctx, inputs).out;
    expect(maxDiff(allKept, rope)).toBe(0);
    expect(maxDiff(noneKept, nope)).toBe(0);
    expect(maxDiff(hope, rope)).toBeGreaterThan(1e-4);
    expect(maxDiff(hope, nope)).toBeGreaterThan(1e-4);
  });
});
