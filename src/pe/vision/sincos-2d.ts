/**
 * 2-D sinusoidal absolute positions (the fixed 2-D sin-cos embedding of MAE-style ViTs): the first half of the model
 * width carries the 1-D sinusoidal code (sinusoidal.ts) of the patch's row y, the second half that of its column x,
 * added to the patch embeddings x [B, L, C] (L = rows * cols, row-major cells). Attention itself is plain.
 *
 * Choices: integer cell coordinates on any grid (a larger test grid reaches coordinates never seen in training: no
 * rescaling, so this measures the absolute code's extrapolation); amplitude sqrt(2) x the model's embedding init std
 * as 1-D sinusoidal; C must be even (odd widths have no half for each axis).
 */
import { check } from '../../errors.ts';
import { plainAttend, plainDenseLogits } from '../attention-plumbing.ts';
import type { EncodingFactory, PositionalEncoding } from '../encoding.ts';
import { defineEncoding } from '../options.ts';
import { sinusoidalValue } from '../sinusoidal.ts';
import { cellOf, embedGridOf } from './grid.ts';

export interface Sincos2dOptions {
  base: number;
  /** Peak value; 0 (default) means sqrt(2) * the model's embedding init std (1 outside a model). */
  amplitude: number;
}

export const sincos2dEncoding: EncodingFactory<Sincos2dOptions> = defineEncoding<Sincos2dOptions>({
  name: 'sincos-2d',
  description: '2-D sinusoidal absolute positions: half the width codes the patch row, half its column',
  sites: ['embedding'],
  defaults: { base: 10000, amplitude: 0 },
  create(dims, options): PositionalEncoding {
    const base = options.base ?? 10000;
    check(Number.isFinite(base) && base > 1, 'argument', `sincos-2d base must be a finite number > 1, got ${base}`);
    const amplitude = options.amplitude || (dims.embeddingStd ? Math.SQRT2 * dims.embeddingStd : 1);
    check(Number.isFinite(amplitude) && amplitude > 0, 'argument', `sincos-2d amplitude must be > 0, got ${amplitude}`);
    const width = dims.modelDim;
    check(width % 2 === 0, 'argument', `sincos-2d needs an even model width (half per axis), got ${width}`);
    const half = width / 2;
    return {
      name: 'sincos-2d',
      sites: ['embedding'],
      params: [],
      maxLength: Infinity,
      embed(x, batch, length, w, offset, gridIn) {
        const grid = embedGridOf(gridIn, length, offset, 'sincos-2d');
        check(w === width, 'shape', `sincos-2d was built for width ${width} but embed() got width ${w}`);
        check(x.length === batch * length * w, 'shape', `x has ${x.length} elements, expected B*L*C`);
        for (let n = 0; n < length; n++) {
          const cell = cellOf(grid, n);
          for (let c = 0; c < w; c++) {
            const axis = c < half ? 0 : 1;
            const pe = amplitude * sinusoidalValue(cell[axis]!, c - axis * half, half, base);
            for (let b = 0; b < batch; b++) x[(b * length + n) * w + c] = x[(b * length + n) * w + c]! + pe;
          }
        }
      },
      embedBackward() {
        // No parameters: the gradient passes through to the patch embeddings unchanged.
      },
      attend: plainAttend,
      denseLogits: plainDenseLogits,
    };
  },
});
