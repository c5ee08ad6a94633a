/**
 * Central finite differences for gradient checks. In fp64 with step h the truncation error is O(h^2 f''') and the
 * rounding error O(eps |f| / h); h ~ 1e-5 balances them to ~1e-10 relative, well inside the 1e-6 we assert.
 */
import type { FloatArray } from '../../src/tensor.ts';

/** d loss / d x[i] by central differences, restoring x[i] afterwards. */
export function centralDifference(loss: () => number, x: FloatArray, i: number, h = 1e-5): number {
  const x0 = x[i]!;
  x[i] = x0 + h;
  const up = loss();
  x[i] = x0 - h;
  const down = loss();
  x[i] = x0;
  return (up - down) / (2 * h);
}

/**
 * Compares an analytic gradient with central differences at `indices` (all entries when omitted) and returns the
 * worst error relative to the largest gradient magnitude compared (so tiny entries are judged on the tensor's scale).
 */
export function maxRelativeGradError(
  loss: () => number,
  x: FloatArray,
  analytic: ArrayLike<number>,
  indices?: readonly number[],
  h = 1e-5,
): number {
  const idx = indices ?? Array.from({ length: x.length }, (_, i) => i);
  let worst = 0;
  let scale = 0;
  for (const i of idx) scale = Math.max(scale, Math.abs(analytic[i]!));
  for (const i of idx) {
    const numeric = centralDifference(loss, x, i, h);
    const err = Math.abs(numeric - analytic[i]!) / Math.max(scale, 1e-12);
    worst = Math.max(worst, err);
  }
  return worst;
}

/** A fixed sample of indices into an array of length n (all of them when n <= count). */
export function sampleIndices(n: number, count: number, seed = 1): number[] {
  if (n <= count) return Array.from({ length: n }, (_, i) => i);
  const out = new Set<number>();
  let s = seed >>> 0 || 1;
  while (out.size < count) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.add(s % n);
  }
  return [...out];
}
