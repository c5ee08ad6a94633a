import { describe, expect, it } from 'vitest';
import { HypeError } from '../src/errors.ts';
import { learnedEncoding } from '../src/pe/learned.ts';
import { Rng } from '../src/util/rng.ts';
import { maxRelativeGradError, sampleIndices } from './helpers/gradcheck.ts';
import { mergeHeadsInto, pipelineLogits, splitHeads } from './helpers/absolute-pipeline.ts';
import {
  contextFor,
  forwardError,
  gradientErrors,
  randomInputs,
  standardCases,
  worst,
} from './helpers/encoding-checks.ts';

const dims = { heads: 4, kvHeads: 4, headDim: 8, modelDim: 32, trainLength: 12 };

describe('learned', () => {
  it('is a [maxLength, C] trained table, maxLength defaulting to the training length', () => {
    const enc = learnedEncoding.create(dims, {}, new Rng(1));
    expect(enc.maxLength).toBe(12);
    expect(enc.params.map((p) => [p.name, p.shape])).toEqual([['positions', [12, 32]]]);
    expect(learnedEncoding.create(dims, { maxLength: 40 }, new Rng(1)).maxLength).toBe(40);
  });

  it('adds row offset + t of the table to token t', () => {
    const enc = learnedEncoding.create(dims, {}, new Rng(2));
    const table = enc.params[0]!.data;
    const x = new Float64Array(2 * 3 * 32).map((_, i) => i * 0.01);
    const x0 = Float64Array.from(x);
    enc.embed!(x, 2, 3, 32, 9);
    for (let b = 0; b < 2; b++)
      for (let t = 0; t < 3; t++)
        for (let c = 0; c < 32; c++)
          expect(x[(b * 3 + t) * 32 + c]).toBe(x0[(b * 3 + t) * 32 + c]! + table[(9 + t) * 32 + c]!);
  });

  // The attention itself is plain: fp64 rounding ~1e-15, asserted at 1e-12.
  it.each(standardCases())('attend matches dense logits: $label', (c) => {
    const enc = learnedEncoding.create({ ...dims, kvHeads: c.shape.kvHeads }, {}, new Rng(3));
    expect(forwardError(enc, contextFor(c.shape, c.causal, c.queryOffset), randomInputs(c.shape, 51))).toBeLessThan(
      1e-12,
    );
  });

  it.each(standardCases())('attention input gradients match finite differences: $label', (c) => {
    const enc = learnedEncoding.create(dims, {}, new Rng(3));
    const ctx = contextFor(c.shape, c.causal, c.queryOffset);
    // The table acts before attention, so attend() leaves its gradient at 0 and the finite difference agrees.
    expect(worst(gradientErrors(enc, ctx, randomInputs(c.shape, 52)))).toBeLessThan(1e-6);
  });

  it('table gradient through embed -> attention -> loss matches finite differences', () => {
    const enc = learnedEncoding.create(dims, { maxLength: 10, initStd: 0.5 }, new Rng(4));
    const table = enc.params[0]!;
    const B = 2;
    const L = 6;
    const offset = 3;
    const shape = { batch: B, heads: 4, kvHeads: 4, lq: L, lk: L, headDim: 8, valueDim: 3 };
    const ctx = contextFor(shape, true, 0);
    const rng = new Rng(5);
    const x = new Float64Array(B * L * 32);
    const v = new Float64Array(B * 4 * L * 3);
    const w = new Float64Array(B * 4 * L * 3);
    rng.fillNormal(x);
    rng.fillNormal(v);
    rng.fillNormal(w);
    const forward = () => {
      const xe = Float64Array.from(x);
      enc.embed!(xe, B, L, 32, offset);
      const qk = splitHeads(xe, B, L, 4, 8);
      return enc.attend(ctx, { q: qk, k: qk, v });
    };
    const loss = (): number => {
      const out = forward().out;
      let s = 0;
      for (let i = 0; i < out.length; i++) s += out[i]! * w[i]!;
      return s;
    };
    table.grad.fill(0);
    const g = forward().backward(w);
    const dx = new Float64Array(x.length);
    mergeHeadsInto(g.dq, dx, B, L, 4, 8);
    mergeHeadsInto(g.dk, dx, B, L, 4, 8);
    enc.embedBackward!(dx, B, L, 32, offset);
    // Rows before the offset and past offset + L never took part: their gradient is exactly 0.
    for (let c = 0; c < 3 * 32; c++) expect(table.grad[c]).toBe(0);
    for (let c = 9 * 32; c < 10 * 32; c++) expect(table.grad[c]).toBe(0);
    expect(maxRelativeGradError(loss, table.data, table.grad, sampleIndices(table.data.length, 80, 9))).toBeLessThan(
      1e-6,
    );
  });

  it('refuses positions past maxLength with a length error naming the length, the maximum and the fix', () => {
    const enc = learnedEncoding.create(dims, { maxLength: 8 }, new Rng(6));
    const x = new Float64Array(1 * 5 * 32);
    let err: unknown;
    try {
      enc.embed!(x, 1, 5, 32, 4); // positions 4..8: one past the table
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(HypeError);
    expect((err as HypeError).code).toBe('length');
    expect((err as HypeError).message).toMatch(/0\.\.7 \(maxLength 8\)/);
    expect((err as HypeError).message).toMatch(/length 9/);
    expect((err as HypeError).message).toMatch(/maxLength >= 9/);
    expect(x.every((v) => v === 0)).toBe(true); // nothing half-written
    expect(() => enc.embedBackward!(x, 1, 5, 32, 4)).toThrow(HypeError);
    expect(() => enc.embed!(x, 1, 5, 32, 3)).not.toThrow(); // positions 3..7 fit exactly
  });

  it('is absolute: the same tokens give different logits when every position moves by c', () => {
    const enc = learnedEncoding.create(dims, { maxLength: 20, initStd: 0.5 }, new Rng(7));
    const shape = { batch: 1, heads: 4, kvHeads: 4, lq: 6, lk: 6, headDim: 8, valueDim: 8 };
    const x = new Float64Array(6 * 32);
    new Rng(8).fillNormal(x);
    const a = pipelineLogits(enc, x, shape, 0);
    const b = pipelineLogits(enc, x, shape, 7);
    let change = 0;
    for (let i = 0; i < a.length; i++) if (a[i] !== -Infinity) change = Math.max(change, Math.abs(a[i]! - b[i]!));
    expect(change).toBeGreaterThan(0.1);
  });
});
