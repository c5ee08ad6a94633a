/**
 * Learned absolute positions (GPT-2 style): a trained table P [maxLength, C] whose row t is added to the token
 * embedding at position t. It cannot say anything about a position it has no row for, so past maxLength it
 * refuses with a 'length' error instead of inventing a value.
 *
 * Choices GPT-2 leaves to the implementation: the table is initialised N(0, 0.02^2) (the width GPT-2-style code
 * uses for its embeddings; option initStd); it is excluded from weight decay like every position parameter here;
 * maxLength defaults to the training length.
 */
import { check, HypeError } from '../errors.ts';
import type { Rng } from '../util/rng.ts';
import type { EncodingDims, EncodingFactory, Param, PositionalEncoding } from './encoding.ts';
import { plainAttend, plainDenseLogits } from './attention-plumbing.ts';
import { createParam } from './params.ts';
import { defineEncoding } from './options.ts';

export interface LearnedOptions {
  /** Rows in the table: the longest sequence (offset + length) accepted. 0 (the default) means the training length. */
  maxLength: number;
  /** Standard deviation of the normal initialisation. */
  initStd: number;
}

function checkCovered(maxLength: number, offset: number, length: number): void {
  if (offset + length > maxLength) {
    throw new HypeError(
      'length',
      `learned positions cover positions 0..${maxLength - 1} (maxLength ${maxLength}) but this sequence needs ` +
        `positions ${offset}..${offset + length - 1} (length ${offset + length}); train with maxLength >= ` +
        `${offset + length}, or use a relative encoding (rope, alibi, t5, hype) that has no maximum`,
    );
  }
}

export const learnedEncoding: EncodingFactory<LearnedOptions> = defineEncoding<LearnedOptions>({
  name: 'learned',
  description: 'learned absolute position table added to the embeddings (GPT-2 style), fixed maximum length',
  sites: ['embedding'],
  defaults: { maxLength: 0, initStd: 0.02 },
  sizeKeys: ['maxLength'],
  create(dims: EncodingDims, options: Partial<LearnedOptions>, rng: Rng): PositionalEncoding {
    const maxLength = options.maxLength || dims.trainLength;
    const initStd = options.initStd ?? 0.02;
    check(
      Number.isInteger(maxLength) && maxLength >= 1,
      'argument',
      `learned maxLength must be an integer >= 1, got ${maxLength}`,
    );
    check(initStd >= 0 && Number.isFinite(initStd), 'argument', `learned initStd must be >= 0, got ${initStd}`);
    const width = dims.modelDim;
    const table: Param = createParam('positions', [maxLength, width], false);
    rng.fillNormal(table.data, initStd);
    const checkCall = (x: ArrayLike<number>, batch: number, length: number, w: number, offset: number): void => {
      check(w === width, 'shape', `learned positions were built for width ${width} but got width ${w}`);
      check(x.length === batch * length * w, 'shape', `activations have ${x.length} elements, expected B*L*C`);
      check(Number.isInteger(offset) && offset >= 0, 'argument', `position offset must be an integer >= 0`);
      checkCovered(maxLength, offset, length);
    };
    return {
      name: 'learned',
      sites: ['embedding'],
      params: [table],
      maxLength,
      embed(x, batch, length, w, offset) {
        checkCall(x, batch, length, w, offset);
        for (let b = 0; b < batch; b++) {
          for (let t = 0; t < length; t++) {
            const row = (offset + t) * w;
            const at = (b * length + t) * w;
            for (let c = 0; c < w; c++) x[at + c] = x[at + c]! + table.data[row + c]!;
          }
        }
      },
      embedBackward(dx, batch, length, w, offset) {
        checkCall(dx, batch, length, w, offset);
        for (let b = 0; b < batch; b++) {
          for (let t = 0; t < length; t++) {
            const row = (offset + t) * w;
            const at = (b * length + t) * w;
            for (let c = 0; c < w; c++) table.grad[row + c] = table.grad[row + c]! + dx[at + c]!;
          }
        }
      },
      attend: plainAttend,
      denseLogits: plainDenseLogits,
    };
  },
});
