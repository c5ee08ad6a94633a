import { describe, expect, it } from 'vitest';
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
const enc = noneEncoding.create(dims, {}, new Rng(1));

describe('none (NoPE)', () => {
  // fp64 throughout; both sides sum O(L d) terms of size O(1): rounding ~1e-15, so 1e-12 leaves a wide margin.
  it.each(standardCases())('attend matches softmax(dense logits) V: $label', ({ shape, causal, queryOffset }) => {
    const ctx = contextFor(shape, causal, queryOffset);
    expect(forwardError(enc, ctx, randomInputs(shape, 11))).toBeLessThan(1e-12);
  });

  it.each(standardCases())('gradients match finite differences: $label', ({ shape, causal, queryOffset }) => {
    const ctx = contextFor(shape, causal, queryOffset);
    expect(worst(gradientErrors(enc, ctx, randomInputs(shape, 12)))).toBeLessThan(1e-6);
  });

  it('logits are the scaled dot product, masked exactly where the key is ahead of the query', () => {
    const shape = shapeOf({ lq: 4, lk: 6 });
    const ctx = contextFor(shape, true, 2);
    const inputs = randomInputs(shape, 5);
    const logits = noneEncoding.create(dims, {}, new Rng(0)).denseLogits(ctx, inputs, 0.5);
    const { lq, lk, headDim: d } = shape;
    for (let i = 0; i < lq; i++) {
      for (let l = 0; l < lk; l++) {
        // batch 0, head 3 reads kv head 1
        let dot = 0;
        for (let c = 0; c < d; c++) dot += inputs.q[(3 * lq + i) * d + c]! * inputs.k[(1 * lk + l) * d + c]!;
        const got = logits[(3 * lq + i) * lk + l]!;
        if (l > i + 2) expect(got).toBe(-Infinity);
        else expect(Math.abs(got - 0.5 * dot)).toBeLessThan(1e-14);
      }
    }
  });

  it('is shift-invariant (it sees no position at all)', () => {
    expect(shiftedLogitsChange(enc, shapeOf({ lq: 5, lk: 5 }), true, 7)).toBe(0);
  });
});
