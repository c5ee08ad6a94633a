/**
 * NoPE: no positional encoding at all. Order reaches the model only through the causal mask (a query sees a
 * prefix whose size grows with its position): the baseline every other encoding is compared with.
 */
import type { EncodingFactory, PositionalEncoding } from './encoding.ts';
import { plainAttend, plainDenseLogits } from './attention-plumbing.ts';
import { defineEncoding } from './options.ts';

export type NoneOptions = Record<string, never>;

export const noneEncoding: EncodingFactory<NoneOptions> = defineEncoding<NoneOptions>({
  name: 'none',
  description: 'NoPE: no position signal; causal masking is the only source of order',
  sites: ['none'],
  defaults: {},
  create(): PositionalEncoding {
    return {
      name: 'none',
      sites: ['none'],
      params: [],
      maxLength: Infinity,
      portable: true,
      attend: plainAttend,
      denseLogits: plainDenseLogits,
      toOnnx: (b) => ({ out: b.attention(b.q, b.k, b.v), qkHeadDim: b.headDim, attentionBias: false, columns: null }),
    };
  },
});
