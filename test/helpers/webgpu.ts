/**
 * Shared by the WebGPU tests: the device (lavapipe here and in CI; a missing adapter FAILS with the HypeError that
 * names the fix, never skips), seeded inputs, and f32 error bounds.
 */
import { acquireNodeGpu } from '../../src/backend/webgpu/node.ts';
import type { GpuContext } from '../../src/backend/webgpu/context.ts';
import { Rng } from '../../src/util/rng.ts';

let shared: Promise<GpuContext> | null = null;

/** One device per test file (acquiring one costs ~0.3 s). */
export function gpu(): Promise<GpuContext> {
  shared ??= acquireNodeGpu();
  return shared;
}

/** f32 unit roundoff. */
export const U32 = 2 ** -24;

export function randn(rng: Rng, n: number, std = 1): Float64Array {
  const a = new Float64Array(n);
  rng.fillNormal(a, std);
  return a;
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

/** Largest |a - b| over entries, treating equal infinities as exact. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let e = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x === y) continue;
    e = Math.max(e, Math.abs(x - y));
    if (Number.isNaN(x) || Number.isNaN(y)) return NaN;
  }
  return e;
}
