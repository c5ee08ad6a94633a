import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { loadIdxPair } from '../src/vision/idx.ts';
import { patchify } from '../src/model/vision.ts';
import { imageBatch } from '../src/vision/images.ts';
import { refusal } from './helpers/refusal.ts';

/** An IDX file of unsigned bytes: magic 0x0800 + dims, big-endian sizes, then the values. */
function idx(sizes: number[], values: number[], magic = 0x800 + sizes.length): Buffer {
  const head = Buffer.alloc(4 + 4 * sizes.length);
  head.writeUInt32BE(magic, 0);
  sizes.forEach((s, i) => head.writeUInt32BE(s, 4 + 4 * i));
  return Buffer.concat([head, Buffer.from(values)]);
}

function files(images: Buffer, labels: Buffer, gzip = true): [string, string] {
  const dir = mkdtempSync(join(tmpdir(), 'hype-idx-'));
  const a = join(dir, 'images.gz');
  const b = join(dir, 'labels.gz');
  writeFileSync(a, gzip ? gzipSync(images) : images);
  writeFileSync(b, gzip ? gzipSync(labels) : labels);
  return [a, b];
}

const pixels = Array.from({ length: 2 * 4 * 4 }, (_, i) => i * 7);

describe('IDX loader', () => {
  it('reads gzip and plain files: sizes, pixels and labels', () => {
    for (const gzip of [true, false]) {
      const set = loadIdxPair(...files(idx([2, 4, 4], pixels), idx([2], [3, 9]), gzip));
      expect([set.count, set.rows, set.cols]).toEqual([2, 4, 4]);
      expect(Array.from(set.pixels)).toEqual(pixels);
      expect(Array.from(set.labels)).toEqual([3, 9]);
    }
  });

  it('refuses wrong magic, truncation, trailing bytes, count mismatch, bad labels and corrupt gzip, naming the file', () => {
    const cases: [[string, string], RegExp][] = [
      [files(idx([2, 4, 4], pixels, 0x801), idx([2], [0, 1])), /images\.gz: wrong magic number 0x00000801/],
      [files(idx([2, 4, 4], pixels), idx([2, 4, 4], pixels)), /labels\.gz: wrong magic number 0x00000803/],
      [files(idx([2, 4, 4], pixels.slice(0, 20)), idx([2], [0, 1])), /images\.gz: truncated: the header promises 32/],
      [files(idx([2, 4, 4], [...pixels, 1]), idx([2], [0, 1])), /images\.gz: 1 bytes after/],
      [files(idx([2, 4, 4], pixels), idx([3], [0, 1, 2])), /labels\.gz: 3 labels but .*images\.gz holds 2 images/],
      [files(idx([2, 4, 4], pixels), idx([2], [0, 10])), /label 10 at index 1 is not one of 0\.\.9/],
      [files(Buffer.from([1, 2]), idx([2], [0, 1]), false), /shorter than an IDX header/],
    ];
    for (const [[a, b], msg] of cases) expect(refusal(() => loadIdxPair(a, b), 'io').message).toMatch(msg);
    const [a, b] = files(idx([2, 4, 4], pixels), idx([2], [0, 1]));
    writeFileSync(a, gzipSync(idx([2, 4, 4], pixels)).subarray(0, 30));
    expect(refusal(() => loadIdxPair(a, b), 'io').message).toMatch(/images\.gz: corrupt or truncated gzip/);
    expect(refusal(() => loadIdxPair(a + '.missing', b), 'io').message).toMatch(/cannot read it \(ENOENT\)/);
  });
});

describe('image batches', () => {
  const set = loadIdxPair(...files(idx([2, 4, 4], pixels), idx([2], [0, 1])));

  it('normalises to [-1, 1] and upsamples bilinearly (align_corners false)', () => {
    const x = imageBatch(set, [1], 4);
    expect(x[0]).toBeCloseTo((16 * 7) / 127.5 - 1, 6);
    // 4 -> 8: output column 1 samples source 0.25 (0.75 col0 + 0.25 col1); output 0 clamps to source 0.
    const up = imageBatch(set, [0], 8);
    expect(up[0]).toBeCloseTo(-1, 6);
    expect(up[1]).toBeCloseTo((0.25 * 7) / 127.5 - 1, 6);
  });

  it('patchify lays patches out row-major, pixels row-major inside each', () => {
    const img = Float64Array.from({ length: 16 }, (_, i) => i); // 4x4, patch 2 -> 2x2 grid
    const out = new Float64Array(16);
    patchify(img, 1, 4, 2, out);
    expect(Array.from(out)).toEqual([0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]);
    expect(refusal(() => patchify(img, 1, 4, 3, new Float64Array(9)), 'shape').message).toMatch(
      /multiple of the patch/,
    );
  });
});
