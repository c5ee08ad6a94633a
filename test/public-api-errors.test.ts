/**
 * Regression tests for library calls that used to fail with an engine error (a stack overflow, "Cannot read
 * properties of undefined", "Invalid typed array length") or a silent NaN instead of one HypeError (issue 16, item 9
 * and what a search of the other exports found).
 */
import { freemem } from 'node:os';
import { describe, expect, it } from 'vitest';
import { FP16, floatFormat, hype, roundArray, roundTo, zeros } from '../src/index.ts';
import { allocate } from '../src/tensor.ts';
import { refusal } from './helpers/refusal.ts';

describe('public API errors', () => {
  it('hype() with a million heads builds (its ALiBi slopes once overflowed the stack)', () => {
    const h = hype({ preset: 'recency', heads: 2 ** 20, kvHeads: 1, headDim: 8, lengthExtra: 64 });
    expect(h.spec.tau.length).toBe(2 ** 20);
    expect(Number.isFinite(h.spec.tau[2 ** 20 - 1]!)).toBe(true);
  });

  it("augment with format 'fp8' is one HypeError listing the formats", () => {
    const h = hype({ preset: 'recency', heads: 2, kvHeads: 2, headDim: 4, lengthExtra: 64 });
    const shape = { batch: 1, heads: 2, kvHeads: 2, lq: 3, lk: 3, headDim: 4, valueDim: 4 };
    const e = refusal(() => h.augment(shape, new Float32Array(24), new Float32Array(24), { format: 'fp8' as never }));
    expect(e.message).toMatch(/fp8.*fp64, fp32, fp16, bf16/);
  });

  it('float formats: an unknown name or a name where the format object belongs is refused, not NaN', () => {
    expect(refusal(() => floatFormat('fp8' as never)).message).toMatch(/unknown float format "fp8"/);
    expect(refusal(() => roundTo('fp16' as never, 1.5)).message).toMatch(/pass floatFormat\('fp16'\)/);
    expect(refusal(() => roundArray(undefined as never, new Float32Array(2))).message).toMatch(/float format/);
    expect(refusal(() => roundArray(FP16, [1, 2] as never)).message).toMatch(/Float32Array or Float64Array/);
    expect(roundTo(floatFormat('fp16'), 1 + 2 ** -12)).toBe(1); // the right call still rounds
  });

  it('zeros and allocate refuse sizes no array or no memory can hold, naming the size', () => {
    expect(refusal(() => zeros([1e6, 1e6]), 'memory').message).toMatch(
      /a tensor of shape \[1000000,1000000\]: 1000000000000 elements \(7450\.6 GiB\)/,
    );
    expect(refusal(() => zeros([2, -1]), 'shape').message).toMatch(/non-negative integers/);
    expect(refusal(() => allocate('float32', 1.5, 'x'), 'shape').message).toMatch(/x: 1.5 elements/);
    // Below the engine's limit but past the memory free (32 GiB; where more is free, the check has nothing to do).
    if (freemem() < 2 ** 35) {
      expect(refusal(() => allocate('float64', 2 ** 32, 'a big table'), 'memory').message).toMatch(
        /a big table: 32\.0 GiB .* more than the .* of memory free/,
      );
    }
    expect(zeros([2, 3], 'float32').data).toBeInstanceOf(Float32Array);
  });
});
