/**
 * Sinusoidal absolute positions (Vaswani et al. 2017), added to the token embeddings:
 *   PE(pos, 2i) = sin(pos / base^(2i/C)),   PE(pos, 2i+1) = cos(pos / base^(2i/C)),   base = 10000.
 * Fixed, parameter-free and defined at every position, so it never refuses a length (whether a model trained on
 * short sequences uses it well at long ones is a question for the study, not a limit of the encoding).
 *
 * Choices the paper leaves open: sin/cos are interleaved per dimension pair as in the paper's formula (some code
 * concatenates all sines then all cosines; the set of features is the same, only the order differs); for an odd
 * width the last dimension carries a sine only.
 *
 * Amplitude: the paper multiplies token embeddings (initialised at std C^-1/2) by sqrt(C), so token and position
 * signals enter at comparable size. Our models keep GPT-2's small embedding initialisation (std 0.02) unscaled, and
 * a unit-amplitude sinusoid would then swamp the tokens (measured: a small model stayed worse than no positional
 * encoding at all). So inside a model the default amplitude is sqrt(2) * embeddingStd, which gives each position
 * feature the RMS of a token-embedding feature, the paper's balance; outside a model (no embeddingStd) it is 1.
 * The `amplitude` option overrides either.
 */
import { check } from '../errors.ts';
import type { EncodingDims, EncodingFactory, PositionalEncoding } from './encoding.ts';
import { plainAttend, plainDenseLogits } from './attention-plumbing.ts';
import { defineEncoding } from './options.ts';

export interface SinusoidalOptions {
  /** Wavelength base: dimension pair i has angular frequency base^(-2i/C). */
  base: number;
  /** Peak value of each sine/cosine; default sqrt(2) * the model's embedding init std (1 outside a model). */
  amplitude: number;
}

/** PE(pos, c) for model width C. */
export function sinusoidalValue(pos: number, c: number, width: number, base: number): number {
  const pair = Math.floor(c / 2);
  const angle = pos * Math.pow(base, (-2 * pair) / width);
  return c % 2 === 0 ? Math.sin(angle) : Math.cos(angle);
}

export const sinusoidalEncoding: EncodingFactory<SinusoidalOptions> = defineEncoding<SinusoidalOptions>({
  name: 'sinusoidal',
  description: 'absolute sinusoidal positions added to the embeddings (Vaswani et al. 2017)',
  sites: ['embedding'],
  defaults: { base: 10000, amplitude: 0 },
  create(dims: EncodingDims, options: Partial<SinusoidalOptions>): PositionalEncoding {
    const base = options.base ?? 10000;
    check(Number.isFinite(base) && base > 1, 'argument', `sinusoidal base must be a finite number > 1, got ${base}`);
    const amplitude = options.amplitude || (dims.embeddingStd ? Math.SQRT2 * dims.embeddingStd : 1);
    check(
      Number.isFinite(amplitude) && amplitude > 0,
      'argument',
      `sinusoidal amplitude must be a finite number > 0, got ${amplitude}`,
    );
    const width = dims.modelDim;
    return {
      name: 'sinusoidal',
      sites: ['embedding'],
      params: [],
      maxLength: Infinity,
      embed(x, batch, length, w, offset) {
        check(w === width, 'shape', `sinusoidal was built for width ${width} but embed() got width ${w}`);
        check(x.length === batch * length * w, 'shape', `x has ${x.length} elements, expected B*L*C`);
        check(Number.isInteger(offset) && offset >= 0, 'argument', `position offset must be an integer >= 0`);
        for (let t = 0; t < length; t++) {
          for (let c = 0; c < w; c++) {
            const pe = amplitude * sinusoidalValue(offset + t, c, w, base);
            for (let b = 0; b < batch; b++) x[(b * length + t) * w + c] = x[(b * length + t) * w + c]! + pe;
          }
        }
      },
      embedBackward() {
        // No parameters: the gradient passes through to the token embeddings unchanged.
      },
      attend: plainAttend,
      denseLogits: plainDenseLogits,
    };
  },
});
