/**
 * Flip-flop language (Liu et al. 2023, "Exposing Attention Glitches with Flip-Flop Language Modeling"), as used
 * in the PaTH paper's Table 1. A sequence alternates instructions and bits: `w b` writes bit b, `r b` reads (b must
 * equal the last written bit), `i b` is a distractor with a random bit. Sequences start with a write and end with
 * a read. The mix is set by the probability of `i`; reads and writes share the rest equally:
 *   in-distribution  p_i = 0.8   (training)
 *   OOD sparse       p_i = 0.98  (long gaps between a write and its read)
 *   OOD dense        p_i = 0.1   (many reads and writes)
 * Only the bit after each `r` is determined by the context, so only those positions are graded.
 *
 * Bytes: instructions 'w', 'r', 'i'; bits '0', '1'. Length counts bytes (2 per instruction), as the paper
 * counts tokens.
 */
import { check } from '../../errors.ts';
import type { Rng } from '../../util/rng.ts';
import type { TaskSequence } from './task.ts';

export const FLIPFLOP_MIXES = { id: 0.8, 'ood-sparse': 0.98, 'ood-dense': 0.1 } as const;
export type FlipFlopMix = keyof typeof FLIPFLOP_MIXES;

const W = 'w'.charCodeAt(0);
const R = 'r'.charCodeAt(0);
const I = 'i'.charCodeAt(0);
const ZERO = '0'.charCodeAt(0);

export function flipFlopSequence(rng: Rng, length: number, pIgnore: number): TaskSequence {
  check(
    Number.isInteger(length) && length >= 4 && length % 2 === 0,
    'argument',
    `flip-flop length must be an even integer >= 4, got ${length}`,
  );
  check(pIgnore >= 0 && pIgnore < 1, 'argument', `flip-flop p_i must be in [0, 1), got ${pIgnore}`);
  const pairs = length / 2;
  const bytes = new Uint8Array(length);
  const graded: number[] = [];
  let memory = 0;
  for (let j = 0; j < pairs; j++) {
    let op: number;
    if (j === 0) op = W;
    else if (j === pairs - 1) op = R;
    else {
      const u = rng.uniform();
      op = u < pIgnore ? I : u < pIgnore + (1 - pIgnore) / 2 ? W : R;
    }
    let bit: number;
    if (op === R) {
      bit = memory;
      graded.push(2 * j); // the prediction made at the 'r' byte is the read bit
    } else {
      bit = rng.uniform() < 0.5 ? 0 : 1;
      if (op === W) memory = bit;
    }
    bytes[2 * j] = op;
    bytes[2 * j + 1] = ZERO + bit;
  }
  return { bytes, graded: Int32Array.from(graded) };
}
