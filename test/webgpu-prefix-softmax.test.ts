/**
 * The WebGPU prefix-masked row softmax (attention over explicit scores) against layers.ts prefixSoftmaxRows in fp64:
 * rows longer than the 64-invocation workgroup, partial and empty prefixes, -Infinity entries, a row with no finite
 * visible entry, and +Infinity / NaN (whose rows the reference makes NaN). Its backward against the fp64 formula,
 * and that formula against central differences of the fp64 forward.
 *
 * Bounds (f32, U32 = 2^-24): x - max carries U32 (|x| + |max|) absolute error from rounding, WGSL's exp adds at most
 * 3 + 2 |x - max| ulp, the row sum n U32 relative and the division one more; so each probability is within
 * U32 (n + 6 A + 8) p of the reference, A the row's largest finite |x|. The backward from f32-rounded p and dp: the
 * dot product of n terms carries (n + 2) U32 sum|p dp|, the rest two roundings: within
 * 2 (n + 4) U32 p (|dp| + sum|p dp|).
 */
import { beforeAll, expect, it } from 'vitest';
import { HypeError } from '../src/errors.ts';
import type { GpuContext } from '../src/backend/webgpu/context.ts';
import { gpuPrefixSoftmaxRows, gpuPrefixSoftmaxRowsBackward, uploadVisible } from '../src/backend/webgpu/layers.ts';
import { prefixSoftmaxRows } from '../src/backend/layers.ts';
import { Rng } from '../src/util/rng.ts';
import { gpu, randn, U32 } from './helpers/webgpu.ts';

let ctx: GpuContext;
beforeAll(async () => {
  ctx = await gpu();
}, 60_000);

const cols = 100;
// Rows: full, partial, empty, with -Infinity entries, all visible entries -Infinity, +Infinity, NaN, long partial.
const visible = Int32Array.from([100, 37, 0, 50, 20, 30, 10, 99]);
const rows = visible.length;

function scores(): Float64Array {
  const x = randn(new Rng(7), rows * cols, 3);
  for (const j of [0, 5, 49]) x[3 * cols + j] = -Infinity;
  for (let j = 0; j < 20; j++) x[4 * cols + j] = -Infinity;
  x[5 * cols + 12] = Infinity;
  x[6 * cols + 3] = NaN;
  x[1 * cols + 60] = Infinity; // beyond the prefix: ignored
  return x;
}

/** Backward in fp64: dx = p (dp - sum p dp) on the first n entries, 0 after. */
function backward(p: Float64Array, dp: Float64Array): Float64Array {
  const dx = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let dot = 0;
    for (let j = 0; j < visible[r]!; j++) dot += p[o + j]! * dp[o + j]!;
    for (let j = 0; j < visible[r]!; j++) dx[o + j] = p[o + j]! * (dp[o + j]! - dot);
  }
  return dx;
}

it('forward matches prefixSoftmaxRows in fp64, infinities and NaN included', async () => {
  const x = scores();
  const want = Float64Array.from(x);
  prefixSoftmaxRows(want, rows, cols, visible);
  const gx = ctx.upload(x);
  const gvis = uploadVisible(ctx, visible, cols);
  gpuPrefixSoftmaxRows(ctx, gx, rows, cols, gvis);
  const got = await ctx.download(gx);
  let worst = 0;
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let A = 0;
    for (let j = 0; j < visible[r]!; j++) if (Number.isFinite(x[o + j]!)) A = Math.max(A, Math.abs(x[o + j]!));
    for (let j = 0; j < cols; j++) {
      const [g, w] = [got[o + j]!, want[o + j]!];
      if (Number.isNaN(w)) {
        expect(g, `row ${r} col ${j}`).toBeNaN();
        continue;
      }
      const bound = U32 * (visible[r]! + 6 * A + 8) * w;
      if (w === 0) expect(g, `row ${r} col ${j}`).toBe(0);
      else worst = Math.max(worst, Math.abs(g - w) / bound);
    }
  }
  expect(worst).toBeLessThanOrEqual(1);
  // The special rows did what the reference does: row 4 all 0, rows 5 and 6 NaN on the prefix, row 2 all 0.
  expect([...got.subarray(4 * cols, 5 * cols)].every((v) => v === 0)).toBe(true);
  expect(Number.isNaN(got[5 * cols]!) && Number.isNaN(got[6 * cols + 9]!) && got[6 * cols + 10] === 0).toBe(true);
  ctx.release(gx, gvis);
});

it('backward matches p (dp - sum p dp) in fp64, which matches central differences of the fp64 forward', async () => {
  const rng = new Rng(11);
  const x = randn(rng, rows * cols, 2); // finite scores: gradients are defined everywhere
  for (let j = 0; j < 20; j++) x[4 * cols + j] = -Infinity;
  const p = Float64Array.from(x);
  prefixSoftmaxRows(p, rows, cols, visible);
  const dp = randn(rng, rows * cols);
  const want = backward(p, dp);

  // The formula against central differences of L(x) = sum dp * softmax(x) (fp64), on sampled entries.
  const loss = (xx: Float64Array) => {
    const q = Float64Array.from(xx);
    prefixSoftmaxRows(q, rows, cols, visible);
    let s = 0;
    for (let i = 0; i < q.length; i++) s += q[i]! * dp[i]!;
    return s;
  };
  const h = 1e-5;
  for (const i of [0, 55, 1 * cols + 3, 1 * cols + 36, 3 * cols + 10, 7 * cols + 98, 7 * cols + 99, 4 * cols + 30]) {
    const [up, dn] = [Float64Array.from(x), Float64Array.from(x)];
    up[i] = up[i]! + h;
    dn[i] = dn[i]! - h;
    const fd = (loss(up) - loss(dn)) / (2 * h);
    expect(Math.abs(fd - want[i]!), `entry ${i}`).toBeLessThanOrEqual(1e-8);
  }

  const [gp, gdp, gdx] = [ctx.upload(p), ctx.upload(dp), ctx.upload(new Float32Array(rows * cols).fill(NaN))];
  const gvis = uploadVisible(ctx, visible, cols);
  gpuPrefixSoftmaxRowsBackward(ctx, gp, gdp, gdx, rows, cols, gvis);
  const got = await ctx.download(gdx);
  let worst = 0;
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let sp = 0;
    for (let j = 0; j < visible[r]!; j++) sp += Math.abs(p[o + j]! * dp[o + j]!);
    for (let j = 0; j < cols; j++) {
      if (j >= visible[r]!) {
        expect(got[o + j], `row ${r} col ${j}`).toBe(0); // overwritten, NaN gone
        continue;
      }
      const bound = 2 * (visible[r]! + 4) * U32 * p[o + j]! * (Math.abs(dp[o + j]!) + sp) + 1e-45;
      worst = Math.max(worst, Math.abs(got[o + j]! - want[o + j]!) / bound);
    }
  }
  expect(worst).toBeLessThanOrEqual(1);
  ctx.release(gp, gdp, gdx, gvis);
});

it('refuses a visible count outside [0, cols] before upload', () => {
  expect(() => uploadVisible(ctx, Int32Array.from([3, 101]), cols)).toThrow(HypeError);
  expect(() => uploadVisible(ctx, Int32Array.from([-1]), cols)).toThrow(/visible -1 at row 0 is outside \[0, 100\]/);
});
