/**
 * A byte corpus: any UTF-8 text file, read whole, split into a training part and a held-out tail, and cut into
 * random training windows. Tokens are the file's bytes (vocab 256), so a user's own corpus works unchanged.
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:buffer';
import { readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { HypeError, check } from '../errors.ts';
import { describeFsError } from '../util/fs-safe.ts';
import type { Rng } from '../util/rng.ts';
import { availableMemory, formatBytes } from './memory.ts';

/** The default corpus, relative to the project root (the working directory). */
export const DEFAULT_CORPUS = '../shared/data/tinyshakespeare/input.txt';

export interface ByteCorpus {
  /** The path as given (relative paths resolve against the working directory). */
  path: string;
  bytes: number;
  sha256: string;
  train: Uint8Array;
  /** The held-out tail: the last `valFraction` of the file. */
  val: Uint8Array;
}

export function loadCorpus(path: string, valFraction: number): ByteCorpus {
  check(
    Number.isFinite(valFraction) && valFraction > 0 && valFraction < 1,
    'argument',
    `the held-out fraction must be in (0, 1), got ${valFraction}`,
  );
  const full = resolve(process.cwd(), path);
  let data: Buffer;
  try {
    const st = statSync(full);
    if (st.isDirectory()) {
      throw new HypeError('io', `corpus '${path}' is a directory; pass a text file with --data <file>`);
    }
    // A device (/dev/zero), pipe or socket has no end to read to; the corpus is read whole, so refuse it up front.
    if (!st.isFile()) {
      throw new HypeError(
        'io',
        `corpus '${path}' is not a regular file (a device, pipe or socket); pass a text file with --data <file>`,
      );
    }
    const limit = Math.min(constants.MAX_LENGTH, availableMemory());
    if (st.size > limit) {
      throw new HypeError(
        'io',
        `corpus '${path}' has ${formatBytes(st.size)}; it is read whole into memory, where at most ` +
          `${formatBytes(limit)} fits; pass a smaller file (a slice of it) with --data`,
      );
    }
    data = readFileSync(full);
  } catch (err) {
    if (err instanceof HypeError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : describeFsError(err);
    throw new HypeError('io', `cannot read corpus '${path}' (${why}); pass an existing UTF-8 text file with --data`);
  }
  check(data.length > 0, 'io', `corpus '${path}' is empty; pass a non-empty UTF-8 text file with --data`);
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(data);
  } catch {
    throw new HypeError(
      'io',
      `corpus '${path}' is not valid UTF-8 text (at byte ${firstInvalidUtf8(data)}); convert it to UTF-8 first`,
    );
  }
  const nVal = Math.floor(data.length * valFraction);
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.length);
  return {
    path,
    bytes: data.length,
    sha256: createHash('sha256').update(data).digest('hex'),
    train: bytes.subarray(0, data.length - nVal),
    val: bytes.subarray(data.length - nVal),
  };
}

/** Byte offset of the first malformed UTF-8 sequence (for the error message). */
function firstInvalidUtf8(b: Uint8Array): number {
  let i = 0;
  while (i < b.length) {
    const c = b[i]!;
    const n = c < 0x80 ? 1 : c >= 0xc2 && c < 0xe0 ? 2 : c >= 0xe0 && c < 0xf0 ? 3 : c >= 0xf0 && c < 0xf5 ? 4 : 0;
    if (n === 0 || i + n > b.length) return i;
    for (let j = 1; j < n; j++) if ((b[i + j]! & 0xc0) !== 0x80) return i;
    i += n;
  }
  return i;
}

/** Refuses a split too short to hold one window of `length` tokens plus its next-byte target. */
export function checkWindowFits(part: Uint8Array, length: number, what: string, path: string): void {
  check(
    part.length >= length + 1,
    'io',
    `the ${what} part of corpus '${path}' has ${part.length} bytes, fewer than one window of ${length} + 1; ` +
      'use a larger file or a shorter --length',
  );
}

/**
 * Fills tokens/targets [batch, length] with random windows of `data`: row b is data[s .. s+length) and its
 * targets data[s+1 .. s+length+1], with s uniform over every valid start. Consumes exactly `batch` draws.
 */
export function sampleWindows(
  data: Uint8Array,
  batch: number,
  length: number,
  rng: Rng,
  tokens: Int32Array,
  targets: Int32Array,
): void {
  const starts = data.length - length; // valid s: 0 .. data.length - length - 1
  check(starts >= 1, 'io', `corpus part of ${data.length} bytes cannot hold a window of ${length} + 1`);
  for (let b = 0; b < batch; b++) {
    const s = rng.int(starts);
    const o = b * length;
    for (let t = 0; t < length; t++) {
      tokens[o + t] = data[s + t]!;
      targets[o + t] = data[s + t + 1]!;
    }
  }
}

/** Entropy (nats per byte) of the byte histogram of `data`: the loss of the best context-free predictor. */
export function unigramEntropy(data: Uint8Array): number {
  const counts = new Float64Array(256);
  for (let i = 0; i < data.length; i++) counts[data[i]!]++;
  let h = 0;
  for (const c of counts) {
    if (c > 0) {
      const p = c / data.length;
      h -= p * Math.log(p);
    }
  }
  return h;
}
