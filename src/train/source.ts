/**
 * Where training batches come from. The training loop asks a BatchSource to fill tokens/targets [batch, length];
 * a corpus gives random windows of its bytes, a generator gives freshly generated task sequences (flip-flop,
 * associative recall, ...). All randomness is drawn from the run's Rng, so a resumed run replays the same batches.
 */
import { createHash } from 'node:crypto';
import { check } from '../errors.ts';
import type { Rng } from '../util/rng.ts';
import { sampleWindows } from './corpus.ts';

export interface BatchSource {
  /** Names the data in run.json and checkpoints (a corpus path, or a task description). */
  readonly id: string;
  /** Identity of the data: a resumed run must be given a source with the same hash. */
  readonly sha256: string;
  /** Size of the underlying data in bytes (0 for an unbounded generator). */
  readonly bytes: number;
  /** Fills tokens and targets [batch, length] (row b predicts targets[b, t] from tokens[b, 0..t]). */
  fill(rng: Rng, batch: number, length: number, tokens: Int32Array, targets: Int32Array): void;
}

const sha256Of = (data: Uint8Array | string) => createHash('sha256').update(data).digest('hex');

/** Random windows of `data` (uniform start, next-byte targets): what the corpus trainer has always done. */
export function windowSource(id: string, data: Uint8Array, sha256 = sha256Of(data)): BatchSource {
  return {
    id,
    sha256,
    bytes: data.length,
    fill: (rng, batch, length, tokens, targets) => sampleWindows(data, batch, length, rng, tokens, targets),
  };
}

/**
 * One generated sequence per row: `generate(rng, n)` must return at least n = length + 1 bytes; the first
 * length + 1 are used (tokens = s[0..length), targets = s[1..length]). `id` must describe the generator and all its
 * settings, since it is the source's identity on resume.
 */
export function generatorSource(id: string, generate: (rng: Rng, n: number) => Uint8Array): BatchSource {
  return {
    id,
    sha256: sha256Of(`generator:${id}`),
    bytes: 0,
    fill: (rng, batch, length, tokens, targets) => {
      for (let b = 0; b < batch; b++) {
        const s = generate(rng, length + 1);
        check(
          s.length >= length + 1,
          'argument',
          `data generator '${id}' returned ${s.length} bytes for a window of ${length} + 1; it must return at least ` +
            'the number of bytes asked for',
        );
        const o = b * length;
        for (let t = 0; t < length; t++) {
          tokens[o + t] = s[t]!;
          targets[o + t] = s[t + 1]!;
        }
      }
    },
  };
}
