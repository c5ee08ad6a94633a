import { describe, expect, it } from 'vitest';
import { alibiEncoding } from '../src/pe/alibi.ts';
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
const enc = alibiEncoding.create(dims, {}, new Rng(1));

/** The per-head bias the encoding adds: logits of all-zero q and k at scale 1, query at position Lk - 1. */
function biasRow(heads: number, lk: number): number[][] {
  const e = alibiEncoding.create({ ...dims, heads, kvHeads: 1 }, {}, new Rng(0));
  const shape = shapeOf({ batch: 1, heads, kvHeads: 1, lq: 1, lk });
  const zero = { q: new Float64Array(heads * 8), k: new Float64Array(lk * 8), v: new Float64Array(0) };
  const logits = e.denseLogits(contextFor(shape, true, lk - 1), zero, 1);
  return Array.from({ length: heads }, (_, h) => Array.from(logits.subarray(h * lk, (h + 1) * lk)));
}

describe('alibi', () => {
  it('uses the reference slopes: 8 heads 2^-1 .. 2^-8; 12 heads add the odd entries of the 16-head list', () => {
    // Closed form: H a power of two -> m_h = 2^(-8 h / H), h = 1..H. For 12: the 8-head slopes, then entries
    // 1, 3, 5, 7 of the 16-head list 2^(-h/2): 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    const expected8 = [1, 2, 3, 4, 5, 6, 7, 8].map((e) => 2 ** -e);
    const expected12 = [...expected8, 2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5];
    for (const [heads, expected] of [
      [8, expected8],
      [12, expected12],
    ] as const) {
      const rows = biasRow(heads, 5);
      for (let h = 0; h < heads; h++) {
        // key at distance D = 4 - l behind the query: bias -m_h D, computed in one multiplication
        for (let l = 0; l < 5; l++) expect(rows[h]![l]).toBe(-expected[h]! * (4 - l) + 0); // + 0: -0 -> +0
      }
    }
  });

  // fp64 both sides: rounding ~1e-15, asserted at 1e-12.
  it.each(standardCases())('attend (kernel alibi bias) matches dense logits: $label', (c) => {
    expect(forwardError(enc, contextFor(c.shape, c.causal, c.queryOffset), randomInputs(c.shape, 71))).toBeLessThan(
      1e-12,
    );
  });

  it.each(standardCases())('gradients match finite differences: $label', (c) => {
    const ctx = contextFor(c.shape, c.causal, c.queryOffset);
    expect(worst(gradientErrors(enc, ctx, randomInputs(c.shape, 72)))).toBeLessThan(1e-6);
  });

  it('is shift-invariant, and without a causal mask the penalty is symmetric in |D|', () => {
    expect(shiftedLogitsChange(enc, shapeOf({ lq: 5, lk: 5 }), true, 50)).toBeLessThan(1e-12);
    expect(shiftedLogitsChange(enc, shapeOf({ lq: 4, lk: 7 }), false, 50)).toBeLessThan(1e-12);
    const shape = shapeOf({ batch: 1, heads: 4, kvHeads: 1, lq: 5, lk: 5 });
    const zero = { q: new Float64Array(4 * 5 * 8), k: new Float64Array(5 * 8), v: new Float64Array(0) };
    const logits = enc.denseLogits(contextFor(shape, false, 0), zero, 1);
    for (let h = 0; h < 4; h++)
      for (let i = 0; i < 5; i++)
        for (let l = 0; l < 5; l++) expect(logits[(h * 5 + i) * 5 + l]).toBe(logits[(h * 5 + l) * 5 + i]);
  });

  it('has no trainable parameters and refuses a head count it was not built for', () => {
    expect(enc.params).toEqual([]);
    const shape = shapeOf({ lq: 3, lk: 3, heads: 8, kvHeads: 2 });
    expect(() => enc.attend(contextFor(shape, true), randomInputs(shape, 1))).toThrow(/built for 4 heads/);
  });
});
