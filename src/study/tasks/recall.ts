/**
 * Needle retrieval over long contexts (the retrieval setting where HoPE argues that long-term decay hurts): one
 * digit hidden at a uniformly random point of a haystack of random lowercase letters, and a closing query '?'
 * whose answer is that digit. Only the answer is graded (chance: 10%).
 *
 * Retrieval is one attention hop (the query matches the only digit by content), so what separates encodings is
 * whether their position terms let that match win at a distance: a recency bias (ALiBi, HyPE-recency) must be
 * overcome by a content logit learned at the training length, and positions beyond training (RoPE, learned,
 * sinusoidal) may break the match outright. Evaluating beyond the training length keeps one needle, so its distance
 * from the query grows with the length.
 *
 * The keyed form (records `kV` and queries `?kV`, an induction head over two layers) was tried first: no encoding
 * got above chance within this machine's budget (6,000 steps at width 64), so the study uses the one-hop form.
 */
import { check } from '../../errors.ts';
import type { Rng } from '../../util/rng.ts';
import type { TaskSequence } from './task.ts';

/** The task's format as recorded in each cell's configuration (a format change starts new cells). */
export const RECALL_TASK = 'needle:one-digit-in-letters';

const a = 'a'.charCodeAt(0);
const QUERY = '?'.charCodeAt(0);
const ZERO = '0'.charCodeAt(0);

export function recallSequence(rng: Rng, length: number): TaskSequence {
  check(
    Number.isInteger(length) && length >= 3,
    'argument',
    `recall length must be an integer >= 3 (a needle, the query and its answer), got ${length}`,
  );
  const bytes = new Uint8Array(length);
  const haystack = length - 2;
  for (let t = 0; t < haystack; t++) bytes[t] = a + rng.int(26);
  const value = rng.int(10);
  bytes[rng.int(haystack)] = ZERO + value;
  bytes[haystack] = QUERY;
  bytes[haystack + 1] = ZERO + value;
  return { bytes, graded: Int32Array.from([haystack]) };
}
