/**
 * Kernels chain on the GPU: three AdamW steps of a one-layer attention model (embedding -> layer norm -> q, k, v
 * projections -> head split -> causal fused attention -> head merge -> output projection -> softmax cross-entropy,
 * and the whole backward) run with only the mean loss read back per step, and buffers recycled through the pool.
 * The same steps in fp64 with the reference kernels give the expected losses. Bound: each step's loss carries f32
 * rounding of about (C + T + V) U32 relative; AdamW's first steps normalise gradients (update ~ lr sign(g)), which
 * passes gradient rounding into the parameters only through entries whose gradient is near its own rounding error;
 * with random initialisation none is, so the losses agree to well within 1e-4 relative over three steps.
 */
import { beforeAll, expect, it } from 'vitest';
import type { GpuContext } from '../src/backend/webgpu/context.ts';
import { gpu } from './helpers/webgpu.ts';
import { gpuTrain, initParams, referenceTrain } from './helpers/webgpu-tiny-model.ts';

let ctx: GpuContext;
beforeAll(async () => {
  ctx = await gpu();
}, 60_000);

it('three training steps on the GPU read back only the loss and match the fp64 reference', async () => {
  const p0 = initParams();
  // Count every read-back the steps make (download is the only path from GPU memory to JavaScript).
  let downloads = 0;
  const download = ctx.download.bind(ctx);
  ctx.download = (t) => {
    downloads++;
    return download(t);
  };
  const run = await gpuTrain(ctx, p0, 3);
  ctx.download = download;
  expect(downloads).toBe(3); // one scalar per step left the GPU

  const ref = referenceTrain(p0, 3);
  for (let i = 0; i < 3; i++)
    expect(Math.abs(run.losses[i]! - ref.losses[i]!)).toBeLessThanOrEqual(1e-4 * ref.losses[i]!);
  expect(ref.losses[2]).toBeLessThan(ref.losses[0]!); // the steps do train
  // The parameters after three steps agree too (read back once here, after the run).
  const emb = await ctx.download(run.params.emb);
  let worst = 0;
  for (let i = 0; i < emb.length; i++) worst = Math.max(worst, Math.abs(emb[i]! - ref.params.emb[i]!));
  expect(worst).toBeLessThanOrEqual(1e-4);
});
