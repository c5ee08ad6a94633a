/**
 * 1-D HyPE on the flattened patch index (token n = y * cols + x at position n): the form SPEC section 6 calls wrong,
 * kept to measure it. The bias tau_h sinh(mu_h (n_i - n_l)) mixes the axes: one row down (dn = cols) weighs like
 * cols steps to the right, and the last cell of a row neighbours the first cell of the next. Same learned preset,
 * slopes and concat route (2 columns) as 1-D HyPE, with mu = curvature / L (L = cells of the training grid).
 * Shapes: q [B, H, L, d], k [B, Hkv, L, d], v [B, Hkv, L, dv].
 */
import type { EncodingFactory } from '../encoding.ts';
import { defineEncoding } from '../options.ts';
import { learnedHypeOnPatches, type Hype2dOptions } from './hype-2d.ts';

export const hypeFlatEncoding: EncodingFactory<Hype2dOptions> = defineEncoding<Hype2dOptions>({
  name: 'hype-flat',
  description: '1-D HyPE on the flattened (row-major) patch index: one trained sinh pair, 2 concat columns',
  sites: ['score-bias'],
  defaults: { curvature: 0.5, train: 'both' },
  create: (dims, options, rng) => learnedHypeOnPatches('hype-flat', dims, options, rng, false),
});
