import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import { explicitAttentionBackward, explicitAttentionForward, keyVisible } from '../src/backend/score-attention.ts';
import { maxRelativeGradError } from './helpers/gradcheck.ts';
import { Rng, dotAll, randomArray, relativeMaxError, softmaxTimesValues } from './helpers/pe-explicit.ts';

const shape: AttentionShape = { batch: 2, heads: 4, kvHeads: 2, lq: 5, lk: 7, headDim: 1, valueDim: 3 };
const n = shape.batch * shape.heads * shape.lq * shape.lk;

describe('explicit attention helper (softmax of given logits, P V, and the backward)', () => {
  it('matches an independent masked softmax and ignores whatever masked entries hold', () => {
    const rng = new Rng(1);
    const mask = { causal: true, queryOffset: 2 };
    const logits = randomArray(rng, n, 2);
    const v = randomArray(rng, shape.batch * shape.kvHeads * shape.lk * shape.valueDim);
    const masked = Float64Array.from(logits);
    const reference = Float64Array.from(logits);
    for (let bh = 0; bh < shape.batch * shape.heads; bh++) {
      for (let i = 0; i < shape.lq; i++) {
        for (let l = 0; l < shape.lk; l++) {
          if (keyVisible(mask, i, l)) continue;
          masked[(bh * shape.lq + i) * shape.lk + l] = NaN; // must never be read
          reference[(bh * shape.lq + i) * shape.lk + l] = -Infinity;
        }
      }
    }
    const got = explicitAttentionForward(shape, mask, masked, v);
    const want = softmaxTimesValues(shape, reference, v);
    expect(relativeMaxError(got.out, want.out)).toBeLessThan(1e-14);
    expect(relativeMaxError(got.probs, want.probs)).toBeLessThan(1e-14);
  });

  it('rows that see no key give out = 0 and pass no gradient', () => {
    const rng = new Rng(2);
    const mask = { causal: true, queryOffset: -2 }; // rows 0 and 1 sit before every key
    const logits = randomArray(rng, n);
    const v = randomArray(rng, shape.batch * shape.kvHeads * shape.lk * shape.valueDim);
    const fwd = explicitAttentionForward(shape, mask, logits, v);
    const dOut = randomArray(rng, fwd.out.length);
    const { dLogits } = explicitAttentionBackward(shape, fwd.probs, v, dOut);
    for (let bh = 0; bh < shape.batch * shape.heads; bh++) {
      for (const i of [0, 1]) {
        for (let c = 0; c < shape.valueDim; c++) expect(fwd.out[(bh * shape.lq + i) * shape.valueDim + c]).toBe(0);
        for (let l = 0; l < shape.lk; l++) expect(dLogits[(bh * shape.lq + i) * shape.lk + l]).toBe(0);
      }
      expect(fwd.out[(bh * shape.lq + 2) * shape.valueDim]).not.toBe(0);
    }
  });

  for (const causal of [true, false]) {
    it(`dLogits (with an extra per-pair term) and dV (summed over each kv group) match central differences — ${causal ? 'causal' : 'bidirectional'}`, () => {
      const rng = new Rng(3);
      const mask = { causal, queryOffset: 1 };
      const logits = randomArray(rng, n);
      const v = randomArray(rng, shape.batch * shape.kvHeads * shape.lk * shape.valueDim);
      const weights = randomArray(rng, shape.batch * shape.heads * shape.lq * shape.valueDim);
      const extra = randomArray(rng, n); // loss gains sum(P * extra), as Shaw's value term does
      const loss = () => {
        const f = explicitAttentionForward(shape, mask, logits, v);
        return dotAll(f.out, weights) + dotAll(f.probs, extra);
      };
      const fwd = explicitAttentionForward(shape, mask, logits, v);
      const g = explicitAttentionBackward(shape, fwd.probs, v, weights, extra);
      expect(maxRelativeGradError(loss, logits, g.dLogits)).toBeLessThan(1e-6);
      expect(maxRelativeGradError(loss, v, g.dv)).toBeLessThan(1e-6);
    });
  }
});
