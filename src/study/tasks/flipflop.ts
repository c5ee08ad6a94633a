/**
 * Flip-flop language (Liu et al. 2023, "Exposing Attention Glitches with Flip-Flop Language Modeling"), as used
 * in the PaTH paper's Table 1. A sequence is a stream of instructions: write b stores bit b, ignore b is a
 * distractor carrying a random bit, read must be answered with the last written bit. Sequences start with a write
 * and end with a read. The mix is set by the probability of ignore; reads and writes share the rest equally:
 *   in-distribution  p_i = 0.8   (training)
 *   OOD sparse       p_i = 0.98  (long gaps between a write and its read)
 *   OOD dense        p_i = 0.1   (many reads and writes)
 * Only the bit after each read is determined by the context, so only those positions are graded.
 *
 * Bytes. A write or an ignore is ONE byte carrying both the instruction and its bit: `w`/`W` write 0/1, `i`/`I`
 * ignore 0/1. A read is `r` followed by the answer byte `0`/`1`. Tokenising the instruction and its bit
 * separately (`w 1`) would make the task unsolvable for the paper's one-layer model: a lone bit byte cannot tell
 * whether a write or an ignore came before it without a second layer to pass that along, so every one-layer model
 * would sit at chance whatever its position encoding. With fused tokens, one layer can attend from `r` to the most
 * recent write, which is the retrieval the task measures (and the one position encodings differ on).
 */
import { check } from '../../errors.ts';
import type { Rng } from '../../util/rng.ts';
import type { TaskSequence } from './task.ts';

export const FLIPFLOP_MIXES = { id: 0.8, 'ood-sparse': 0.98, 'ood-dense': 0.1 } as const;
export type FlipFlopMix = keyof typeof FLIPFLOP_MIXES;
/** The task's format as recorded in each cell's configuration (a format change starts new cells). */
export const FLIPFLOP_TASK = 'fused-instruction-bytes';

const WRITE = ['w'.charCodeAt(0), 'W'.charCodeAt(0)] as const;
const IGNORE = ['i'.charCodeAt(0), 'I'.charCodeAt(0)] as const;
const READ = 'r'.charCodeAt(0);
const ZERO = '0'.charCodeAt(0);

/** A flip-flop sequence of exactly `length` bytes (>= 3: a write, then a read and its answer). */
export function flipFlopSequence(rng: Rng, length: number, pIgnore: number): TaskSequence {
  check(Number.isInteger(length) && length >= 3, 'argument', `flip-flop length must be an integer >= 3, got ${length}`);
  check(pIgnore >= 0 && pIgnore < 1, 'argument', `flip-flop p_i must be in [0, 1), got ${pIgnore}`);
  const bytes = new Uint8Array(length);
  const graded: number[] = [];
  const bit = () => (rng.uniform() < 0.5 ? 0 : 1);
  let memory = bit();
  bytes[0] = WRITE[memory];
  let t = 1;
  const read = () => {
    graded.push(t); // the prediction made at the `r` byte is the read bit
    bytes[t++] = READ;
    bytes[t++] = ZERO + memory;
  };
  while (t < length - 2) {
    const u = rng.uniform();
    // A read needs two bytes and the sequence's closing read needs the last two, so a read drawn with exactly
    // three bytes left becomes an ignore; this touches at most one instruction per sequence.
    if (u >= pIgnore + (1 - pIgnore) / 2 && length - t > 3) read();
    else if (u >= pIgnore && u < pIgnore + (1 - pIgnore) / 2) {
      memory = bit();
      bytes[t++] = WRITE[memory];
    } else bytes[t++] = IGNORE[bit()];
  }
  read();
  return { bytes, graded: Int32Array.from(graded) };
}
