/** headsToTokens / tokensToHeads: the layout moves attention and the PaTH factor network share. */
import { describe, expect, it } from 'vitest';
import { headsToTokens, tokensToHeads } from '../src/tensor.ts';

describe('head layout', () => {
  const [B, H, L, D] = [2, 3, 4, 5];
  // Entry (b, h, t, d) of the head-major array holds the number bhtd (one digit each), so every move is checkable.
  const heads = new Float64Array(B * H * L * D);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let t = 0; t < L; t++)
        for (let d = 0; d < D; d++) heads[((b * H + h) * L + t) * D + d] = 1000 * b + 100 * h + 10 * t + d;

  it('puts head h of token t at columns h D .. h D + D - 1 of row (b, t)', () => {
    const tokens = new Float32Array(B * L * H * D);
    headsToTokens(heads, tokens, B, H, L, D);
    for (let b = 0; b < B; b++)
      for (let t = 0; t < L; t++)
        for (let h = 0; h < H; h++)
          for (let d = 0; d < D; d++) {
            expect(tokens[(b * L + t) * H * D + h * D + d]).toBe(1000 * b + 100 * h + 10 * t + d);
          }
  });

  it('tokensToHeads undoes it exactly', () => {
    const tokens = new Float64Array(heads.length);
    const back = new Float64Array(heads.length);
    headsToTokens(heads, tokens, B, H, L, D);
    tokensToHeads(tokens, back, B, H, L, D);
    expect(Array.from(back)).toEqual(Array.from(heads));
  });
});
