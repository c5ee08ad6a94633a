/**
 * Associative recall over long contexts (the retrieval setting where HoPE argues that long-term decay hurts):
 * a sequence of key-value records separated by filler, then queries for keys seen earlier. Only the value bytes
 * that answer a query are graded.
 *
 * Layout (bytes): records `K=V;` with K a key of `keyLength` lowercase letters and V one digit, each followed by a
 * random run of filler bytes '.', until the context budget is used; then queries `?K=V` for keys drawn from the
 * records, where the byte V after '=' is graded. Keys are distinct within a sequence, so every answer is
 * determined. Evaluating at lengths beyond training stretches the filler and the number of records.
 */
import { check } from '../../errors.ts';
import type { Rng } from '../../util/rng.ts';
import type { TaskSequence } from './task.ts';

export interface RecallOptions {
  length: number;
  keyLength?: number;
  queries?: number;
  /** Mean number of filler bytes after each record. */
  meanFiller?: number;
}

const a = 'a'.charCodeAt(0);

export function recallSequence(rng: Rng, o: RecallOptions): TaskSequence {
  const keyLength = o.keyLength ?? 3;
  const queries = o.queries ?? 4;
  const meanFiller = o.meanFiller ?? 4;
  const queryBytes = queries * (keyLength + 3);
  const recordBytes = keyLength + 3;
  check(
    o.length >= queryBytes + recordBytes * queries,
    'argument',
    `recall length ${o.length} is too short for ${queries} queries; use at least ${queryBytes + recordBytes * queries}`,
  );
  const bytes = new Uint8Array(o.length).fill('.'.charCodeAt(0));
  const keys: string[] = [];
  const values: number[] = [];
  const seen = new Set<string>();
  let t = 0;
  const budget = o.length - queryBytes;
  while (t + recordBytes <= budget) {
    let key: string;
    do {
      key = '';
      for (let c = 0; c < keyLength; c++) key += String.fromCharCode(a + rng.int(26));
    } while (seen.has(key));
    seen.add(key);
    const v = rng.int(10);
    for (let c = 0; c < keyLength; c++) bytes[t++] = key.charCodeAt(c);
    bytes[t++] = '='.charCodeAt(0);
    bytes[t++] = '0'.charCodeAt(0) + v;
    bytes[t++] = ';'.charCodeAt(0);
    keys.push(key);
    values.push(v);
    t += Math.min(budget - t, rng.int(2 * meanFiller + 1)); // filler stays '.'
  }
  check(
    keys.length >= queries,
    'argument',
    `recall length ${o.length} holds only ${keys.length} records; make it longer`,
  );
  const graded: number[] = [];
  t = budget;
  for (let q = 0; q < queries; q++) {
    const j = rng.int(keys.length);
    bytes[t++] = '?'.charCodeAt(0);
    for (let c = 0; c < keyLength; c++) bytes[t++] = keys[j]!.charCodeAt(c);
    bytes[t] = '='.charCodeAt(0);
    graded.push(t++); // predicting the value from the '=' position
    bytes[t++] = '0'.charCodeAt(0) + values[j]!;
  }
  return { bytes, graded: Int32Array.from(graded) };
}
