/**
 * RoPE (Su et al. 2021, RoFormer): rotates query and key dimension pairs by an angle proportional to their
 * absolute position, so their dot product depends only on the distance D = i - l.
 *   theta_j = base^(-2j / r),  j = 0 .. r/2 - 1,  r = rotated dims;  pair j = head dims (2j, 2j+1) (see rotary.ts).
 *
 * Choices the paper leaves open: adjacent pairs as in the paper (not GPT-NeoX's half split); partial rotary
 * rotates the FIRST r = 2 floor(fraction * d / 2) head dims and leaves the rest as plain dot-product dims, with
 * the frequency exponent normalised by r (as GPT-NeoX does), so every fraction spans the same frequency range
 * 1 .. base^(-(r-2)/r); an odd head dim leaves its last dim unrotated.
 */
import { check } from '../errors.ts';
import type { EncodingDims, EncodingFactory, PositionalEncoding } from './encoding.ts';
import { rotaryAttend, rotaryCachedAttention, rotaryDenseLogits } from './rotary.ts';
import { defineEncoding } from './options.ts';

export interface RopeOptions {
  /** Frequency base (10000 in the paper). */
  base: number;
  /** Fraction of head dims rotated, in (0, 1]. */
  rotaryFraction: number;
}

/** The angular frequency of every rotated pair. */
export function ropeFrequencies(headDim: number, base: number, rotaryFraction: number): Float64Array {
  const pairs = Math.floor((rotaryFraction * headDim) / 2);
  const r = 2 * pairs;
  const freqs = new Float64Array(pairs);
  for (let j = 0; j < pairs; j++) freqs[j] = Math.pow(base, (-2 * j) / r);
  return freqs;
}

export const ropeEncoding: EncodingFactory<RopeOptions> = defineEncoding<RopeOptions>({
  name: 'rope',
  description: 'rotary position embedding (Su et al. 2021): rotates q/k pairs, base and rotary fraction configurable',
  sites: ['qk-transform'],
  defaults: { base: 10000, rotaryFraction: 1 },
  create(dims: EncodingDims, options: Partial<RopeOptions>): PositionalEncoding {
    const base = options.base ?? 10000;
    const fraction = options.rotaryFraction ?? 1;
    check(Number.isFinite(base) && base > 1, 'argument', `rope base must be a finite number > 1, got ${base}`);
    check(
      fraction > 0 && fraction <= 1,
      'argument',
      `rope rotaryFraction must be in (0, 1], got ${fraction} (use 'none' for no rotation)`,
    );
    const freqs = ropeFrequencies(dims.headDim, base, fraction);
    check(
      freqs.length >= 1,
      'argument',
      `rope rotaryFraction ${fraction} of head dim ${dims.headDim} rotates no pair; raise it to >= ${2 / dims.headDim}`,
    );
    return {
      name: 'rope',
      sites: ['qk-transform'],
      params: [],
      maxLength: Infinity,
      attend: (ctx, inputs) => rotaryAttend(ctx, inputs, freqs),
      denseLogits: (ctx, inputs, scale) => rotaryDenseLogits(ctx, inputs, scale, freqs),
      cachedAttention: () => rotaryCachedAttention(dims.headDim, freqs),
      // q and k rotated in the graph (adjacent pairs, angles position * freqs), then plain attention.
      toOnnx: (b) => ({
        out: b.attention(b.rotate(b.q, freqs), b.rotate(b.k, freqs), b.v),
        qkHeadDim: b.headDim,
        attentionBias: false,
        columns: null,
      }),
    };
  },
});
