import { describe, expect, it } from 'vitest';
import { ropeEncoding, ropeFrequencies } from '../src/pe/rope.ts';
import { rotateRows } from '../src/pe/rotary.ts';
import { hopeEncoding } from '../src/pe/hope.ts';
import { noneEncoding } from '../src/pe/none.ts';
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
const variants = [
  { label: 'full rotary, base 10000', options: {} },
  { label: 'half rotary, base 100', options: { rotaryFraction: 0.5, base: 100 } },
];

describe('rope', () => {
  for (const { label, options } of variants) {
    const enc = ropeEncoding.create(dims, options, new Rng(1));
    // fp64 both sides; rotation and dot products of O(1) values: rounding ~1e-15, asserted at 1e-12.
    it.each(standardCases())(`${label}: attend matches the relative-form dense logits: $label`, (c) => {
      expect(forwardError(enc, contextFor(c.shape, c.causal, c.queryOffset), randomInputs(c.shape, 21))).toBeLessThan(
        1e-12,
      );
    });
    it.each(standardCases())(`${label}: gradients match finite differences: $label`, (c) => {
      const ctx = contextFor(c.shape, c.causal, c.queryOffset);
      expect(worst(gradientErrors(enc, ctx, randomInputs(c.shape, 22)))).toBeLessThan(1e-6);
    });
    it(`${label}: is shift-invariant`, () => {
      expect(shiftedLogitsChange(enc, shapeOf({ lq: 5, lk: 5 }), true, 13)).toBeLessThan(1e-12);
      expect(shiftedLogitsChange(enc, shapeOf({ lq: 4, lk: 6 }), false, 1000)).toBeLessThan(1e-11);
    });
  }

  it('logits of one fixed query and key vector depend only on i - l', () => {
    const shape = shapeOf({ batch: 1, heads: 1, kvHeads: 1, lq: 9, lk: 9 });
    const rng = new Rng(4);
    const qv = Array.from({ length: 8 }, () => rng.normal());
    const kv = Array.from({ length: 8 }, () => rng.normal());
    const q = new Float64Array(9 * 8).map((_, j) => qv[j % 8]!);
    const k = new Float64Array(9 * 8).map((_, j) => kv[j % 8]!);
    const ctx = contextFor(shape, false, 0);
    const enc = ropeEncoding.create(dims, {}, rng);
    const logits = enc.denseLogits(ctx, { q, k, v: new Float64Array(9 * 5) }, 1);
    // The rotated vectors attend() hands the backend give the same dot products as the relative form.
    const qr = rotateRows(q, 1, 9, 8, 0, ropeFrequencies(8, 10000, 1), 1);
    const kr = rotateRows(k, 1, 9, 8, 0, ropeFrequencies(8, 10000, 1), 1);
    const seen = new Map<number, number>();
    for (let i = 0; i < 9; i++) {
      for (let l = 0; l < 9; l++) {
        let dot = 0;
        for (let c = 0; c < 8; c++) dot += qr[i * 8 + c]! * kr[l * 8 + c]!;
        expect(Math.abs(dot - logits[i * 9 + l]!)).toBeLessThan(1e-13);
        const first = seen.get(i - l);
        if (first === undefined) seen.set(i - l, dot);
        else expect(Math.abs(dot - first)).toBeLessThan(1e-13);
      }
    }
    // Not trivially constant: distinct distances give distinct logits.
    expect(Math.abs(seen.get(0)! - seen.get(3)!)).toBeGreaterThan(1e-3);
  });

  it('rotates pair j of a unit vector at position p by the angle p * base^(-2j/r), leaving unrotated dims alone', () => {
    const freqs = ropeFrequencies(8, 100, 0.5); // r = 4: two pairs, frequencies 1 and 100^(-1/2)
    expect(Array.from(freqs)).toEqual([1, 0.1]);
    const x = new Float64Array([1, 0, 1, 0, 0.3, -0.7, 0.25, 2]);
    const y = rotateRows(x, 1, 1, 8, 5, freqs, 1);
    expect(y[0]).toBeCloseTo(Math.cos(5), 15);
    expect(y[1]).toBeCloseTo(Math.sin(5), 15);
    expect(y[2]).toBeCloseTo(Math.cos(0.5), 15);
    expect(y[3]).toBeCloseTo(Math.sin(0.5), 15);
    expect(Array.from(y.subarray(4))).toEqual([0.3, -0.7, 0.25, 2]);
    const back = rotateRows(y, 1, 1, 8, 5, freqs, -1);
    for (let c = 0; c < 8; c++) expect(Math.abs(back[c]! - x[c]!)).toBeLessThan(1e-15);
  });

  it('actually encodes position (differs from NoPE) and the base matters', () => {
    const shape = shapeOf({ lq: 6, lk: 6 });
    const ctx = contextFor(shape, true, 0);
    const inputs = randomInputs(shape, 9);
    const rope = ropeEncoding.create(dims, {}, new Rng(0)).attend(ctx, inputs).out;
    const rope2 = ropeEncoding.create(dims, { base: 500 }, new Rng(0)).attend(ctx, inputs).out;
    const nope = noneEncoding.create(dims, {}, new Rng(0)).attend(ctx, inputs).out;
    const diff = (a: ArrayLike<number>, b: ArrayLike<number>): number =>
      Math.max(...Array.from(a, (x, i) => Math.abs(x - b[i]!)));
    expect(diff(rope, nope)).toBeGreaterThan(1e-3);
    expect(diff(rope, rope2)).toBeGreaterThan(1e-3);
  });

  it('refuses a rotary fraction that rotates nothing or exceeds 1', () => {
    expect(() => ropeEncoding.create(dims, { rotaryFraction: 0.1 }, new Rng(0))).toThrow(/rotates no pair/);
    expect(() => ropeEncoding.create(dims, { rotaryFraction: 1.5 }, new Rng(0))).toThrow(/\(0, 1\]/);
  });
});

describe('rope and hope in fp32', () => {
  it('keep the dtype and agree with fp64 to fp32 rounding', () => {
    const shape = shapeOf({ lq: 6, lk: 6 });
    const ctx = contextFor(shape, true, 0);
    const in64 = randomInputs(shape, 77);
    const in32 = { q: Float32Array.from(in64.q), k: Float32Array.from(in64.k), v: Float32Array.from(in64.v) };
    for (const enc of [ropeEncoding.create(dims, {}, new Rng(0)), hopeEncoding.create(dims, {}, new Rng(0))]) {
      const r32 = enc.attend(ctx, in32);
      const r64 = enc.attend(ctx, in64);
      expect(r32.out).toBeInstanceOf(Float32Array);
      const g32 = r32.backward(new Float32Array(r32.out.length).fill(1));
      expect(g32.dq).toBeInstanceOf(Float32Array);
      expect(g32.dk).toBeInstanceOf(Float32Array);
      // fp32 unit roundoff 6e-8 times O(d + L) accumulated roundings on O(1) values (inputs rounded to fp32 too).
      let worstErr = 0;
      for (let i = 0; i < r64.out.length; i++) worstErr = Math.max(worstErr, Math.abs(r32.out[i]! - r64.out[i]!));
      expect(worstErr).toBeLessThan(2e-6);
      expect(worstErr).toBeGreaterThan(0); // it really ran in fp32
    }
  });
});
