/**
 * IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed: a big-endian header (two zero bytes, a
 * type byte 0x08 = unsigned bytes, the number of dimensions), one uint32 size per dimension, then the values.
 * Images are idx3 [count, rows, cols], labels idx1 [count]. Every way a file can be wrong (missing, not gzip, wrong
 * magic, truncated, trailing bytes, label count != image count, a label outside the classes) is one HypeError
 * naming the file and the problem.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { HypeError } from '../errors.ts';

export interface ImageSet {
  /** Pixels [count, rows, cols], row-major, 0..255. */
  pixels: Uint8Array;
  /** Class of each image [count]. */
  labels: Uint8Array;
  count: number;
  rows: number;
  cols: number;
}

function fail(file: string, problem: string): never {
  throw new HypeError('io', `${file}: ${problem}`);
}

/** The raw bytes of `file`, gunzipped when they start with the gzip signature. */
function readMaybeGzip(file: string): Uint8Array {
  let raw: Buffer;
  try {
    raw = readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    fail(file, `cannot read it (${code ?? String(e)}); check the path (--data-dir)`);
  }
  if (raw.length >= 2 && raw[0] === 0x1f && raw[1] === 0x8b) {
    try {
      return new Uint8Array(gunzipSync(raw));
    } catch (e) {
      fail(file, `corrupt or truncated gzip data (${(e as Error).message}); download the file again`);
    }
  }
  return new Uint8Array(raw.buffer, raw.byteOffset, raw.length);
}

/** Parses an IDX file of unsigned bytes with `dims` dimensions: its sizes and its values (a view). */
export function parseIdx(bytes: Uint8Array, dims: number, file: string): { sizes: number[]; values: Uint8Array } {
  const header = 4 + 4 * dims;
  if (bytes.length < header) fail(file, `only ${bytes.length} bytes, shorter than an IDX header (${header} bytes)`);
  const magic = ((bytes[0]! << 24) | (bytes[1]! << 16) | (bytes[2]! << 8) | bytes[3]!) >>> 0;
  const want = 0x800 + dims;
  if (magic !== want) {
    fail(
      file,
      `wrong magic number 0x${magic.toString(16).padStart(8, '0')}, expected 0x${want.toString(16).padStart(8, '0')} ` +
        `(unsigned bytes, ${dims} dimension${dims > 1 ? 's' : ''}); is this the ${dims === 1 ? 'labels' : 'images'} file?`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const sizes = Array.from({ length: dims }, (_, d) => view.getUint32(4 + 4 * d));
  const n = sizes.reduce((a, b) => a * b, 1);
  const have = bytes.length - header;
  if (have < n) fail(file, `truncated: the header promises ${n} values [${sizes.join(', ')}] but ${have} follow`);
  if (have > n) fail(file, `${have - n} bytes after the ${n} values the header [${sizes.join(', ')}] promises`);
  return { sizes, values: bytes.subarray(header) };
}

/** Reads an images file and its labels file, checking that they agree and that every label is < classes. */
export function loadIdxPair(imagesFile: string, labelsFile: string, classes = 10): ImageSet {
  const img = parseIdx(readMaybeGzip(imagesFile), 3, imagesFile);
  const lab = parseIdx(readMaybeGzip(labelsFile), 1, labelsFile);
  const [count, rows, cols] = img.sizes as [number, number, number];
  if (lab.sizes[0] !== count) {
    fail(labelsFile, `${lab.sizes[0]} labels but ${imagesFile} holds ${count} images; the two files must pair up`);
  }
  if (count === 0 || rows === 0 || cols === 0) fail(imagesFile, `holds no pixels (sizes [${img.sizes.join(', ')}])`);
  for (let i = 0; i < count; i++) {
    if (lab.values[i]! >= classes)
      fail(labelsFile, `label ${lab.values[i]} at index ${i} is not one of 0..${classes - 1}`);
  }
  return { pixels: img.values, labels: lab.values, count, rows, cols };
}

export type FashionSplit = 'train' | 'test';

/** Fashion-MNIST's split from `dir` (the four files under their published names, gzip). */
export function loadFashionMnist(dir: string, split: FashionSplit): ImageSet {
  const prefix = split === 'train' ? 'train' : 't10k';
  return loadIdxPair(join(dir, `${prefix}-images-idx3-ubyte.gz`), join(dir, `${prefix}-labels-idx1-ubyte.gz`));
}

/** The ten Fashion-MNIST classes, by label. */
export const FASHION_CLASSES = [
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
] as const;
