/**
 * HoPE, High-frequency rotary Position Encoding (Chen et al. 2024, arXiv 2410.21216): RoPE that keeps only its
 * high-frequency components and makes the others position-independent.
 *
 * Threshold rule used here: with RoPE's frequencies theta_j = base^(-2j/d) over the whole head dim and the
 * training length L, a component is high-frequency iff it completes at least one full period within the training
 * length, theta_j * L >= 2 pi (wavelength 2 pi / theta_j <= L). Components with theta_j * L < 2 pi — the slow ones
 * the paper finds turn into the "activated" components behind the U-shaped attention, and the lowest ones that
 * settle into near-constant patterns — are not rotated at all: those head dims contribute a plain, position-free
 * dot product q_c k_c (kept, not dropped, so the head keeps its full width for content).
 *
 * Source note: the rule follows the paper's abstract (low-frequency components "replaced with position-independent
 * ones", "retaining only high-frequency signals") and independent descriptions of the method, which state the
 * threshold as theta_j >= 2 pi / L; the full paper text could not be consulted when this was written, so check the
 * threshold against its method section before citing exact numbers.
 *
 * Choices made here where the abstract and secondary descriptions leave room: the boundary case theta_j L = 2 pi
 * counts as high-frequency; the threshold length is the training length (option cutoffLength overrides it); pairs
 * are adjacent dims as in rope.ts; if no component reaches the threshold (tiny L), HoPE degenerates to NoPE
 * rather than silently keeping a component the rule rejects.
 */
import { check } from '../errors.ts';
import type { EncodingDims, EncodingFactory, PositionalEncoding } from './encoding.ts';
import { ropeFrequencies } from './rope.ts';
import { rotaryAttend, rotaryCachedAttention, rotaryDenseLogits } from './rotary.ts';
import { defineEncoding } from './options.ts';

export interface HopeOptions {
  /** RoPE frequency base. */
  base: number;
  /** The length that decides which components are high-frequency. 0 (the default) means the training length. */
  cutoffLength: number;
}

/** RoPE's full-width frequencies with every component slower than one period per cutoffLength removed. */
export function hopeFrequencies(headDim: number, base: number, cutoffLength: number): Float64Array {
  const all = ropeFrequencies(headDim, base, 1);
  // Frequencies fall with j, so the high-frequency components are a prefix.
  let kept = 0;
  while (kept < all.length && all[kept]! * cutoffLength >= 2 * Math.PI) kept++;
  return all.slice(0, kept);
}

export const hopeEncoding: EncodingFactory<HopeOptions> = defineEncoding<HopeOptions>({
  name: 'hope',
  description: 'HoPE (Chen et al. 2024): RoPE keeping only components with a full period within the training length',
  sites: ['qk-transform'],
  defaults: { base: 10000, cutoffLength: 0 },
  create(dims: EncodingDims, options: Partial<HopeOptions>): PositionalEncoding {
    const base = options.base ?? 10000;
    const cutoff = options.cutoffLength || dims.trainLength;
    check(Number.isFinite(base) && base > 1, 'argument', `hope base must be a finite number > 1, got ${base}`);
    check(
      Number.isFinite(cutoff) && cutoff >= 1,
      'argument',
      `hope needs a training length >= 1 for its frequency threshold, got ${cutoff}`,
    );
    const freqs = hopeFrequencies(dims.headDim, base, cutoff);
    return {
      name: 'hope',
      sites: ['qk-transform'],
      params: [],
      maxLength: Infinity,
      attend: (ctx, inputs) => rotaryAttend(ctx, inputs, freqs),
      denseLogits: (ctx, inputs, scale) => rotaryDenseLogits(ctx, inputs, scale, freqs),
      cachedAttention: () => rotaryCachedAttention(dims.headDim, freqs),
    };
  },
});
