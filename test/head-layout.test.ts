/**
 * headsToTokens / tokensToHeads: the layout moves attention and the PaTH factor network share; splitQkv / mergeQkv
 * and the head moves with a row stride, as widened operands (encoding.ts) use them.
 */
import { describe, expect, it } from 'vitest';
import { mergeQkv, splitQkv } from '../src/backend/layers.ts';
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

describe('head layout with a row stride (widened operands)', () => {
  const [B, L, H, Hkv, D] = [2, 3, 4, 2, 5];
  const [qkS, vS] = [8, 6];
  const Q = (H + 2 * Hkv) * D;
  const qkv = Float64Array.from({ length: B * L * Q }, (_, i) => i + 1);
  // Stride buffers start out holding a marker: the columns past D must keep it.
  const marked = (n: number) => new Float64Array(n).fill(-7);

  it('splitQkv writes the first D columns of each widened row and leaves the others; mergeQkv reads them back', () => {
    const [q, k, v] = [
      new Float64Array(B * H * L * D),
      new Float64Array(B * Hkv * L * D),
      new Float64Array(B * Hkv * L * D),
    ];
    splitQkv(qkv, q, k, v, B, L, H, Hkv, D);
    const [qw, kw, vw] = [marked(B * H * L * qkS), marked(B * Hkv * L * qkS), marked(B * Hkv * L * vS)];
    splitQkv(qkv, qw, kw, vw, B, L, H, Hkv, D, qkS, vS);
    for (const [plain, wide, S] of [
      [q, qw, qkS],
      [k, kw, qkS],
      [v, vw, vS],
    ] as const) {
      for (let r = 0; r < plain.length / D; r++) {
        expect(Array.from(wide.subarray(r * S, r * S + D))).toEqual(Array.from(plain.subarray(r * D, r * D + D)));
        expect(Array.from(wide.subarray(r * S + D, r * S + S))).toEqual(new Array(S - D).fill(-7));
      }
    }
    const back = marked(qkv.length);
    mergeQkv(qw, kw, vw, back, B, L, H, Hkv, D, qkS, vS);
    expect(Array.from(back)).toEqual(Array.from(qkv));
  });

  it('headsToTokens reads and tokensToHeads writes the first D columns of rows of the given stride', () => {
    const tokens = Float64Array.from({ length: B * L * H * D }, (_, i) => i + 1);
    const plain = new Float64Array(B * H * L * D);
    tokensToHeads(tokens, plain, B, H, L, D);
    const wide = marked(B * H * L * vS);
    tokensToHeads(tokens, wide, B, H, L, D, vS);
    for (let r = 0; r < B * H * L; r++) {
      expect(Array.from(wide.subarray(r * vS, r * vS + D))).toEqual(Array.from(plain.subarray(r * D, r * D + D)));
      expect(Array.from(wide.subarray(r * vS + D, (r + 1) * vS))).toEqual([-7]);
    }
    const back = new Float64Array(tokens.length);
    headsToTokens(wide, back, B, H, L, D, vS);
    expect(Array.from(back)).toEqual(Array.from(tokens));
  });
});
