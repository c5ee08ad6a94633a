/**
 * Images into model inputs: a batch of images [B, S, S] as normalised floats (pixel / 255 mapped to [-1, 1]),
 * optionally resized to another side length first (the vision transformer cuts them into patches itself:
 * patchify in model/vision.ts).
 *
 * Resizing is bilinear with PyTorch's align_corners=False convention (the same taps as learned-2d's table resize):
 * an upsampled test image shows the same garment at a finer patch grid (the study's larger-grid evaluation).
 */
import { check } from '../errors.ts';
import { axisTaps } from '../pe/vision/learned-2d.ts';
import type { ImageSet } from './idx.ts';

/** Pixel 0..255 -> [-1, 1]. */
export function normalisePixel(p: number): number {
  return p / 127.5 - 1;
}

/**
 * Images `indices` of `set` as floats [B, side, side] (normalised), bilinearly resized when side differs from the
 * set's size. Square images only (Fashion-MNIST's are 28 x 28).
 */
export function imageBatch(set: ImageSet, indices: ArrayLike<number>, side: number, out?: Float32Array): Float32Array {
  const { rows: R, cols: C } = set;
  check(R === C, 'shape', `images must be square to resize by one side length, got ${R} x ${C}`);
  check(Number.isInteger(side) && side >= 1, 'argument', `image side must be a positive integer, got ${side}`);
  const B = indices.length;
  const dst = out ?? new Float32Array(B * side * side);
  check(dst.length === B * side * side, 'shape', `output holds ${dst.length} values, expected B*side*side`);
  const taps = side === R ? null : axisTaps(R, side);
  for (let b = 0; b < B; b++) {
    const idx = indices[b]!;
    check(Number.isInteger(idx) && idx >= 0 && idx < set.count, 'argument', `image index ${idx} is outside the set`);
    const src = idx * R * C;
    for (let y = 0; y < side; y++) {
      for (let x = 0; x < side; x++) {
        let v: number;
        if (!taps) v = set.pixels[src + y * C + x]!;
        else {
          const wy = taps.w[y]!;
          const wx = taps.w[x]!;
          const row = (r: number) =>
            (1 - wx) * set.pixels[src + r * C + taps.lo[x]!]! + wx * set.pixels[src + r * C + taps.hi[x]!]!;
          v = (1 - wy) * row(taps.lo[y]!) + wy * row(taps.hi[y]!);
        }
        dst[(b * side + y) * side + x] = normalisePixel(v);
      }
    }
  }
  return dst;
}
