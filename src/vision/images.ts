/**
 * Images into model inputs: a batch of images [B, S, S] as normalised floats (pixel / 255 mapped to [-1, 1]),
 * optionally resized to another side length first, and the patch layout the vision transformer embeds,
 * [B, S, S] -> [B, N, P*P] with N = (S/P)^2 patches in row-major grid order (patch (gy, gx) is token gy * S/P + gx;
 * inside a patch, pixels are row-major too).
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

/** images [B, S, S] -> patches [B, N, P*P] (N = (S/P)^2, row-major grid and row-major pixels inside a patch). */
export function patchify(
  images: Float32Array | Float64Array,
  B: number,
  S: number,
  P: number,
  out: Float32Array | Float64Array,
): void {
  check(S % P === 0, 'shape', `image side ${S} is not a multiple of the patch size ${P}; resize to a multiple of ${P}`);
  const G = S / P;
  check(out.length === B * G * G * P * P, 'shape', `patch buffer holds ${out.length} values, expected B*N*P*P`);
  for (let b = 0; b < B; b++)
    for (let gy = 0; gy < G; gy++)
      for (let gx = 0; gx < G; gx++) {
        const o = ((b * G + gy) * G + gx) * P * P;
        for (let py = 0; py < P; py++)
          for (let px = 0; px < P; px++) out[o + py * P + px] = images[(b * S + gy * P + py) * S + gx * P + px]!;
      }
}
