import { describe, expect, it } from 'vitest';
import { HypeError } from '../src/errors.ts';
import { t5Encoding } from '../src/pe/t5.ts';
import { t5Bucket } from '../src/pe/t5-buckets.ts';
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

const dims = { heads: 4, kvHeads: 2, headDim: 8, modelDim: 32, trainLength: 16 };

describe('t5 buckets (reference relative_position_bucket)', () => {
  // Expected values from the closed form: a half of n buckets has n/2 exact buckets, then
  // n/2 + floor(ln(dist / (n/2)) / ln(128 / (n/2)) * n/2), capped at n - 1. E.g. bidirectional n = 16:
  // dist 12 -> 8 + floor(ln 1.5 / ln 16 * 8) = 8 + 1; causal n = 32: dist 20 -> 16 + floor(ln 1.25 / ln 8 * 16) = 17.
  it('bidirectional, 32 buckets, max distance 128', () => {
    const expected: [number, number][] = [
      [0, 0],
      [-1, 1],
      [-7, 7],
      [-8, 8],
      [-11, 8],
      [-12, 9],
      [-16, 10],
      [-32, 12],
      [-64, 14],
      [-127, 15],
      [-128, 15],
      [-100000, 15],
      [1, 17],
      [8, 24],
      [16, 26],
      [127, 31],
      [100000, 31],
    ];
    for (const [rel, bucket] of expected) expect([rel, t5Bucket(rel, true, 32, 128)]).toEqual([rel, bucket]);
  });

  it('causal, 32 buckets, max distance 128', () => {
    const expected: [number, number][] = [
      [0, 0],
      [-1, 1],
      [-15, 15],
      [-16, 16],
      [-20, 17],
      [-32, 21],
      [-64, 26],
      [-127, 31],
      [-128, 31],
      [-100000, 31],
      [1, 0],
      [500, 0],
    ];
    for (const [rel, bucket] of expected) expect([rel, t5Bucket(rel, false, 32, 128)]).toEqual([rel, bucket]);
  });

  it('causal bucketing never looks ahead; bidirectional distinguishes direction; both are monotone in distance', () => {
    for (let r = 1; r < 400; r++) {
      expect(t5Bucket(r, false, 32, 128)).toBe(t5Bucket(0, false, 32, 128)); // ahead = here: no look-ahead signal
      expect(t5Bucket(r, true, 32, 128)).toBeGreaterThanOrEqual(16); // ahead: upper half
      expect(t5Bucket(-r, true, 32, 128)).toBeLessThan(16); // behind: lower half
      expect(t5Bucket(-r, false, 32, 128)).toBeGreaterThanOrEqual(t5Bucket(-(r - 1), false, 32, 128));
      expect(t5Bucket(-r, true, 32, 128)).toBeGreaterThanOrEqual(t5Bucket(-(r - 1), true, 32, 128));
    }
  });
});

describe('t5 encoding', () => {
  const far = {
    label: 'causal, 3 queries at 150 over 40 keys', // distances 111 .. 152: logarithmic buckets and the cap
    shape: shapeOf({ lq: 3, lk: 40 }),
    causal: true,
    queryOffset: 150,
  };
  const ahead = {
    label: 'bidirectional, 4 queries at 10 over 30 keys',
    shape: shapeOf({ lq: 4, lk: 30 }),
    causal: false,
    queryOffset: 10,
  };
  // With 8 buckets and max distance 20, every distance of the far case lands in the last bucket: the bias is then
  // one constant per head, the softmax ignores it and its true gradient is 0 (checked separately below).
  const variants = [
    { label: 'default 32/128', options: {}, cases: [...standardCases(), far, ahead] },
    { label: 'small 8/20', options: { numBuckets: 8, maxDistance: 20 }, cases: [...standardCases(), ahead] },
  ];
  for (const { label, options, cases } of variants) {
    const enc = t5Encoding.create(dims, options, new Rng(1));
    // fp64 both sides: rounding ~1e-15, asserted at 1e-12.
    it.each(cases)(`${label}: attend matches dense logits: $label`, (c) => {
      expect(forwardError(enc, contextFor(c.shape, c.causal, c.queryOffset), randomInputs(c.shape, 61))).toBeLessThan(
        1e-12,
      );
    });
    it.each(cases)(`${label}: q, k, v and table gradients match finite differences: $label`, (c) => {
      const errors = gradientErrors(
        enc,
        contextFor(c.shape, c.causal, c.queryOffset),
        randomInputs(c.shape, 62),
        7,
        160,
      );
      expect(Object.keys(errors)).toContain('param relative_bias');
      expect(worst(errors)).toBeLessThan(1e-6);
    });
    it(`${label}: is shift-invariant`, () => {
      expect(shiftedLogitsChange(enc, shapeOf({ lq: 5, lk: 5 }), true, 30)).toBeLessThan(1e-12);
      expect(shiftedLogitsChange(enc, shapeOf({ lq: 5, lk: 9 }), false, 300)).toBeLessThan(1e-12);
    });
  }

  it('a bias that is constant per head (all keys past maxDistance) gets a zero table gradient', () => {
    const enc = t5Encoding.create(dims, { numBuckets: 8, maxDistance: 20 }, new Rng(5));
    const table = enc.params[0]!;
    table.grad.fill(0);
    const out = enc.attend(contextFor(far.shape, true, far.queryOffset), randomInputs(far.shape, 6));
    out.backward(new Float64Array(out.out.length).map((_, j) => Math.cos(j)));
    // Per head the gradient is sum(dS) over rows = sum_i sum_l P (dP - delta) = 0 up to rounding of O(1) terms.
    for (let h = 0; h < 4; h++) {
      for (let bkt = 0; bkt < 7; bkt++) expect(table.grad[h * 8 + bkt]).toBe(0);
      expect(Math.abs(table.grad[h * 8 + 7]!)).toBeLessThan(1e-13);
    }
  });

  it('adds table[h, bucket] to the scaled dot product; the gradient reaches only buckets in use', () => {
    const enc = t5Encoding.create(dims, { numBuckets: 8, maxDistance: 20 }, new Rng(2));
    const table = enc.params[0]!;
    const shape = shapeOf({ lq: 4, lk: 4 });
    const ctx = contextFor(shape, true, 0);
    const zero = {
      q: new Float64Array(2 * 4 * 4 * 8),
      k: new Float64Array(2 * 2 * 4 * 8),
      v: new Float64Array(2 * 2 * 4 * 5),
    };
    const logits = enc.denseLogits(ctx, zero, 1);
    for (let h = 0; h < 4; h++)
      for (let i = 0; i < 4; i++)
        for (let l = 0; l <= i; l++) expect(logits[(h * 4 + i) * 4 + l]).toBe(table.data[h * 8 + (i - l)]);
    table.grad.fill(0);
    const inputs = randomInputs(shape, 3);
    enc.attend(ctx, inputs).backward(new Float64Array(2 * 4 * 4 * 5).fill(1).map((_, j) => Math.sin(j)));
    for (let h = 0; h < 4; h++) {
      for (let bkt = 0; bkt < 8; bkt++) {
        if (bkt >= 4)
          expect(table.grad[h * 8 + bkt]).toBe(0); // distances 0..3 use buckets 0..3 only
        else expect(table.grad[h * 8 + bkt]).not.toBe(0);
      }
    }
  });

  it('causal bucketing inside bidirectional attention gives keys ahead the D = 0 bias, whatever their distance', () => {
    const enc = t5Encoding.create(dims, { bucketing: 'causal' }, new Rng(4));
    const shape = shapeOf({ lq: 6, lk: 6 });
    const zero = { q: new Float64Array(2 * 4 * 6 * 8), k: new Float64Array(2 * 2 * 6 * 8), v: new Float64Array(0) };
    const logits = enc.denseLogits(contextFor(shape, false, 0), zero, 1);
    const table = enc.params[0]!.data;
    for (let h = 0; h < 4; h++)
      for (let i = 0; i < 6; i++)
        for (let l = i + 1; l < 6; l++) expect(logits[(h * 6 + i) * 6 + l]).toBe(table[h * 32]);
  });

  it('refuses unusable options and a head count it was not built for', () => {
    expect(() => t5Encoding.create(dims, { numBuckets: 2 }, new Rng(0))).toThrow(HypeError);
    expect(() => t5Encoding.create(dims, { maxDistance: 4 }, new Rng(0))).toThrow(/maxDistance/);
    expect(() => t5Encoding.create(dims, { bucketing: 'sideways' as never }, new Rng(0))).toThrow(/bucketing/);
    const enc = t5Encoding.create(dims, {}, new Rng(0));
    const shape = shapeOf({ lq: 3, lk: 3, heads: 2, kvHeads: 2 });
    expect(() => enc.attend(contextFor(shape, true), randomInputs(shape, 1))).toThrow(/4 heads/);
  });
});

describe('t5 in fp32', () => {
  it('runs on Float32 activations (the table stays fp64) and agrees with fp64 to fp32 rounding', () => {
    const enc = t5Encoding.create(dims, {}, new Rng(9));
    const shape = shapeOf({ lq: 5, lk: 5 });
    const ctx = contextFor(shape, true, 0);
    const in64 = randomInputs(shape, 78);
    const in32 = { q: Float32Array.from(in64.q), k: Float32Array.from(in64.k), v: Float32Array.from(in64.v) };
    const r32 = enc.attend(ctx, in32);
    expect(r32.out).toBeInstanceOf(Float32Array);
    const out64 = enc.attend(ctx, in64).out;
    let worstErr = 0;
    for (let i = 0; i < out64.length; i++) worstErr = Math.max(worstErr, Math.abs(r32.out[i]! - out64[i]!));
    // fp32 unit roundoff 6e-8 times O(d + L) roundings on O(1) values.
    expect(worstErr).toBeLessThan(2e-6);
    enc.params[0]!.grad.fill(0);
    r32.backward(new Float32Array(r32.out.length).fill(1));
    expect(enc.params[0]!.grad.some((g) => g !== 0)).toBe(true);
  });
});
