/**
 * Associative recall over long contexts (the retrieval setting where HoPE argues that long-term decay hurts):
 * a fixed number of key-value records scattered through filler, then queries for keys seen earlier. Only the value
 * bytes that answer a query are graded.
 *
 * Layout (bytes): `records` records `kV`, k a lowercase letter (distinct within a sequence) and V a digit, placed at
 * random points of a run of '.' filler; then `queries` queries `?kV` for keys drawn from the records, where the
 * byte V after k is graded (chance: 10%). This is the induction-head form of recall (find the earlier k, copy the
 * byte after it), which a two-layer model can learn within a CPU budget. The record count stays fixed as the length
 * grows, so evaluating beyond the training length spreads the same records over a longer context: the distance
 * between a query and its record grows, which is what separates encodings that decay with distance from those that
 * do not.
 */
import { check } from '../../errors.ts';
import type { Rng } from '../../util/rng.ts';
import type { TaskSequence } from './task.ts';

export interface RecallOptions {
  length: number;
  /** Records stored before the queries (at most 26: keys are distinct letters). */
  records?: number;
  queries?: number;
}

export const RECALL_DEFAULTS = { records: 16, queries: 16 } as const;
/** The task's format as recorded in each cell's configuration (a format change starts new cells). */
export const RECALL_TASK = `induction:records=${RECALL_DEFAULTS.records},queries=${RECALL_DEFAULTS.queries}`;

const a = 'a'.charCodeAt(0);
const DOT = '.'.charCodeAt(0);
const QUERY = '?'.charCodeAt(0);
const ZERO = '0'.charCodeAt(0);

export function recallSequence(rng: Rng, o: RecallOptions): TaskSequence {
  const records = o.records ?? RECALL_DEFAULTS.records;
  const queries = o.queries ?? RECALL_DEFAULTS.queries;
  check(
    Number.isInteger(records) && records >= 1 && records <= 26,
    'argument',
    `recall records must be an integer in [1, 26] (keys are distinct letters), got ${records}`,
  );
  check(Number.isInteger(queries) && queries >= 1, 'argument', `recall queries must be a positive integer`);
  const queryBytes = 3 * queries;
  const minimum = queryBytes + 2 * records;
  check(
    Number.isInteger(o.length) && o.length >= minimum,
    'argument',
    `recall length ${o.length} is too short for ${records} records and ${queries} queries; use at least ${minimum}`,
  );
  const bytes = new Uint8Array(o.length).fill(DOT);
  // Distinct keys: a partial Fisher-Yates shuffle of the alphabet.
  const alphabet = Array.from({ length: 26 }, (_, i) => a + i);
  for (let i = 0; i < records; i++) {
    const j = i + rng.int(26 - i);
    [alphabet[i], alphabet[j]] = [alphabet[j]!, alphabet[i]!];
  }
  const keys = alphabet.slice(0, records);
  const values = keys.map(() => rng.int(10));
  // Record start offsets: choose `records` gaps summing to the filler budget (uniform over compositions by sorting
  // uniform cut points), so records land anywhere in the prefix.
  const filler = o.length - queryBytes - 2 * records;
  const cuts = Array.from({ length: records }, () => rng.int(filler + 1)).sort((x, y) => x - y);
  for (let r = 0; r < records; r++) {
    const t = cuts[r]! + 2 * r;
    bytes[t] = keys[r]!;
    bytes[t + 1] = ZERO + values[r]!;
  }
  const graded: number[] = [];
  let t = o.length - queryBytes;
  for (let q = 0; q < queries; q++) {
    const r = rng.int(records);
    bytes[t++] = QUERY;
    graded.push(t); // predicting the value from the key's position
    bytes[t++] = keys[r]!;
    bytes[t++] = ZERO + values[r]!;
  }
  return { bytes, graded: Int32Array.from(graded) };
}
