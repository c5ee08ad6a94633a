/**
 * Training end to end on the WebGPU backend (lavapipe here and in CI): the Transformer and the training step
 * (src/train/step.ts) over GPU handles, against the same steps on the native backend (f32 on the CPU), for the
 * device-portable encodings none, ALiBi and HyPE (preset recency, concat and kernel routes).
 *
 * Transfers: every read, upload and uploadInt is counted per step. After the first step (which uploads the distance
 * tables an encoding caches per geometry) a step moves exactly its tokens and targets in (two uploadInt) and reads
 * exactly one tensor out: the model's statistics [loss, gradient norm, non-finite logit count]. Buffers and
 * pipelines: after the first step a step creates no GPU buffer (tensors, uniforms and the read's staging buffer all
 * come from pools) and compiles no pipeline.
 *
 * Bound on the losses: both backends run f32 from the same initial parameters (uploaded from one fp64 init, rounded
 * once). They differ only in summation order: every reduction of length K (gemm depth C or F, attention over L
 * keys, softmax over V = 256) errs by at most about K U32 relative, so one forward's loss agrees to about
 * (F + L + V) U32 ~ 2e-5 relative, and the gradients likewise. AdamW's update is lr * m / sqrt(v), a smooth function
 * of the gradient except where m is near 0; over 12 steps at lr 3e-3 the parameters drift apart by at most a few
 * times that relative error of the update, which moves the loss by far less than 1e-4. Bound: 1e-4 * loss per step
 * (measured here: under 2e-7 relative). The losses must also fall (the steps train).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../src/backend/backend.ts';
import { loadBackend } from '../src/backend/index.ts';
import { WebGpuBackend } from '../src/backend/webgpu/backend.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { STAT_GRAD_NORM, Transformer } from '../src/model/transformer.ts';
import { TRAIN_DEFAULTS } from '../src/train/config.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { trainingStep } from '../src/train/step.ts';
import { Rng } from '../src/util/rng.ts';
import { gpu } from './helpers/webgpu.ts';

let gpuBackend: WebGpuBackend;
beforeAll(async () => {
  gpuBackend = new WebGpuBackend(await gpu());
}, 60_000);

const STEPS = 12;
const [B, L] = [2, 16];
const train = { ...TRAIN_DEFAULTS, lr: 3e-3, warmup: 0, clip: 1 };

interface Transfers {
  reads: unknown[];
  uploads: number;
  uploadInts: number;
  buffers: number;
  pipelines: number;
  /** Queue submits (webgpu): kernels are batched between host writes and reads (context.ts). */
  submits: number;
}

/** Counts the backend's transfers (its memory members that move data) until the returned function is called. */
function countTransfers<T, I>(be: Backend<T, I>, log: Transfers): () => void {
  const { read, upload, uploadInt } = be;
  be.read = (src, offset, n) => {
    log.reads.push(src);
    return read.call(be, src, offset, n);
  };
  be.upload = (src, dst, offset) => {
    log.uploads++;
    upload.call(be, src, dst, offset);
  };
  be.uploadInt = (src, dst) => {
    log.uploadInts++;
    uploadInt.call(be, src, dst);
  };
  if (!(be instanceof WebGpuBackend)) return () => Object.assign(be, { read, upload, uploadInt });
  const device = be.ctx.device;
  const ctx = be.ctx;
  const submits0 = ctx.submits;
  const { createBuffer, createComputePipeline } = device;
  device.createBuffer = (d) => {
    log.buffers++;
    return createBuffer.call(device, d);
  };
  device.createComputePipeline = (d) => {
    log.pipelines++;
    return createComputePipeline.call(device, d);
  };
  return () => {
    Object.assign(be, { read, upload, uploadInt });
    Object.assign(device, { createBuffer, createComputePipeline });
    log.submits = ctx.submits - submits0;
  };
}

async function trainRun<T, I>(be: Backend<T, I>, pe: { name: string; options: Record<string, unknown> }) {
  const cfg = parseModelConfig({ width: 32, layers: 2, heads: 4, kvHeads: 2, mlpWidth: 64, trainLength: L, pe });
  const model = new Transformer(cfg, be);
  const opt = new AdamW(model.parameters(), be);
  const rng = new Rng(11);
  const losses: number[] = [];
  const perStep: Transfers[] = [];
  for (let s = 0; s < STEPS; s++) {
    // Bytes from a small alphabet with structure (a repeating pattern plus noise), so the loss can fall quickly.
    const seq = Int32Array.from({ length: B * L + 1 }, (_, i) => 97 + ((i * 3) % 7) + (rng.uniform() < 0.2 ? 1 : 0));
    const log: Transfers = { reads: [], uploads: 0, uploadInts: 0, buffers: 0, pipelines: 0, submits: 0 };
    const restore = countTransfers(be, log);
    const r = await trainingStep(model, opt, train, {
      tokens: seq.subarray(0, B * L),
      targets: seq.subarray(1),
      batch: B,
      length: L,
      lr: train.lr,
      where: `at step ${s}`,
    });
    restore();
    expect(Number.isFinite(r.gradNorm) && r.gradNorm > 0).toBe(true);
    losses.push(r.loss);
    perStep.push(log);
  }
  return { losses, perStep, model };
}

const ENCODINGS = [
  { name: 'none', options: {} },
  { name: 'alibi', options: {} },
  { name: 'alibi', options: { route: 'concat' } }, // widened operands: columns written once per buffer
  { name: 'hype', options: { preset: 'recency' } },
  { name: 'hype', options: { preset: 'recency', route: 'kernel' } },
];

describe('training on webgpu matches native, with one read per step', () => {
  for (const pe of ENCODINGS) {
    it(`${pe.name} ${JSON.stringify(pe.options)}: ${STEPS} steps`, async () => {
      const g = await trainRun(gpuBackend, pe);
      const n = await trainRun(loadBackend('native', { threads: 1 }), pe);
      let worst = 0;
      for (let s = 0; s < STEPS; s++) {
        expect(Math.abs(g.losses[s]! - n.losses[s]!), `step ${s}`).toBeLessThanOrEqual(1e-4 * n.losses[s]!);
        worst = Math.max(worst, Math.abs(g.losses[s]! - n.losses[s]!) / n.losses[s]!);
      }
      console.log(
        `${pe.name} ${JSON.stringify(pe.options)}: worst relative loss difference webgpu vs native ` +
          `over ${STEPS} steps ${worst.toExponential(2)} (loss ${n.losses[0]!.toFixed(3)} -> ${n.losses[STEPS - 1]!.toFixed(3)})`,
      );
      expect(g.losses[STEPS - 1]).toBeLessThan(g.losses[0]! - 0.3);

      // Transfers: after the first step, tokens and targets in, the statistics out, nothing else.
      for (let s = 1; s < STEPS; s++) {
        const t = g.perStep[s]!;
        expect({ ...t, reads: t.reads.length }, `step ${s}`).toEqual({
          reads: 1,
          uploads: 0,
          uploadInts: 2,
          buffers: 0,
          pipelines: 0,
          // Kernels are batched (context.ts): the token upload submits the gradients' zeroing recorded before it,
          // the read everything else: forward, backward, norm, clip and every AdamW update in one command buffer.
          submits: 2,
        });
        expect(t.reads[0]).toBe(g.model.stats);
      }
      expect(g.perStep[0]!.reads).toEqual([g.model.stats]);
      // The statistics carry the gradient norm too (losses.jsonl logs it).
      const stats = await gpuBackend.read(g.model.stats);
      expect(stats[STAT_GRAD_NORM]).toBeGreaterThan(0);
    }, 60_000);
  }
});
