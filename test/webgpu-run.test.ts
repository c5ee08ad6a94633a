/**
 * A training run on the WebGPU backend (lavapipe here and in CI), through TrainingRun as `hype train --backend
 * webgpu` drives it: periodic held-out evaluation and checkpoints read back from the device, a resume from a
 * checkpoint reproduces the uninterrupted run's losses bit for bit (the kernels are deterministic: fixed-parameter
 * encodings skip the atomic dTable sums), held-out evaluation (sliding windows, per-token losses read back) agrees
 * with the native backend's on the same checkpoint, and a device lost mid-run stops the run with one HypeError while the last
 * checkpoint stays intact and loadable. Also: auto never picks webgpu, and the CLI refuses it where it cannot run.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { runGenerate } from '../src/cli/generate.ts';
import { loadBackend } from '../src/backend/index.ts';
import { WebGpuBackend } from '../src/backend/webgpu/backend.ts';
import { acquireNodeGpu } from '../src/backend/webgpu/node.ts';
import { HypeError } from '../src/errors.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { loadCheckpoint } from '../src/train/checkpoint.ts';
import { evaluateHeldOut, evaluateHeldOutAsync } from '../src/train/evaluate.ts';
import { loadRunModel, readLossLog, TrainingRun } from '../src/train/trainer.ts';
import { gpu } from './helpers/webgpu.ts';

const root = mkdtempSync(join(tmpdir(), 'hype-webgpu-run-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const corpusPath = join(root, 'corpus.txt');
const words = ['the', 'quick', 'brown', 'fox', 'jumps', 'over', 'a', 'lazy', 'dog', 'and', 'runs', 'far', 'away'];
let text = '';
for (let i = 0; text.length < 20000; i++) text += words[(i * 7 + (i >> 3)) % words.length] + (i % 11 ? ' ' : '.\n');
writeFileSync(corpusPath, text);

const model = parseModelConfig({
  width: 16,
  layers: 2,
  heads: 2,
  trainLength: 16,
  pe: { name: 'hype', options: { preset: 'recency' } },
  seed: 3,
});
const train = {
  data: corpusPath,
  batch: 2,
  steps: 10,
  warmup: 2,
  lr: 3e-3,
  checkpointEvery: 4,
  keepCheckpoints: 3,
  seed: 5,
};

let be: WebGpuBackend;
beforeAll(async () => {
  be = new WebGpuBackend(await gpu());
}, 60_000);

describe('TrainingRun on webgpu', () => {
  it('trains, evaluates and checkpoints; a resume reproduces the losses bit for bit', async () => {
    const whole = join(root, 'whole');
    const evals: number[] = [];
    const run = TrainingRun.start(whole, model, train, be);
    const s = await run.run({ evalInterval: 5, evalBytes: 256, onEval: (e) => evals.push(e.valLoss) });
    expect(s.finished).toBe(true);
    const losses = readLossLog(whole).map((r) => r.loss);
    expect(losses.length).toBe(10);
    expect(losses[9]).toBeLessThan(losses[0]!);
    expect(evals.length).toBe(2);
    expect(evals.every(Number.isFinite)).toBe(true);
    // The checkpoint holds what the device held: the weights read back equal the saved ones.
    const ck = loadCheckpoint(whole);
    expect(ck.state.step).toBe(10);
    const p = run.model.parameters()[0]!;
    expect(Array.from(ck.weights.tensors.get(p.name)!.data)).toEqual(Array.from(await be.read(p.data)));

    const resumed = TrainingRun.resume(whole, be, { checkpoint: 'step-00000004' });
    expect(resumed.step).toBe(4);
    await resumed.run();
    expect(readLossLog(whole).map((r) => r.loss)).toEqual(losses);

    // Held-out evaluation of the device-trained checkpoint, on the device and on the native backend (both f32):
    // each window's loss is a sum of f32 reductions of length at most F + L + V, so the mean per-byte loss agrees
    // to about (F + L + V) U32 relative (< 2e-5); 1e-4 relative is the bound.
    const val = run.corpus.val.subarray(0, 600);
    const onGpu = await evaluateHeldOutAsync(loadRunModel(whole, be).model, val, 16, { stride: 8 });
    const onCpu = evaluateHeldOut(loadRunModel(whole, loadBackend('native', { threads: 1 })).model, val, 16, {
      stride: 8,
    });
    expect(onGpu.scored).toBe(onCpu.scored);
    expect(Math.abs(onGpu.nats - onCpu.nats)).toBeLessThanOrEqual(1e-4 * onCpu.nats);

    // `hype generate --backend webgpu` (KV cache on the device) continues a prompt greedily as native does (the
    // logit-level bound is in webgpu-generate.test.ts).
    const flags = {
      prompt: 'the quick',
      tokens: '16',
      temperature: '0',
      topK: '0',
      seed: '1',
      cache: true,
      quiet: true,
    };
    const stdout = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      const onGpuText = await runGenerate(whole, { ...flags, backend: 'webgpu' });
      const onCpuText = await runGenerate(whole, { ...flags, backend: 'native', threads: '1' });
      expect([...onGpuText]).toEqual([...onCpuText]);
    } finally {
      stdout.mockRestore();
    }
  }, 120_000);

  it('a device lost mid-run stops the run with one HypeError; the last checkpoint stays intact', async () => {
    // A device of its own: destroying it must not take the other tests' device along.
    const own = new WebGpuBackend(await acquireNodeGpu());
    const dir = join(root, 'lost');
    const run = TrainingRun.start(dir, model, train, own);
    const err = await run
      .run({
        onStep: (r) => {
          if (r.step === 6) own.ctx.device.destroy(); // after the step-4 checkpoint, before step 7's read
        },
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HypeError);
    expect((err as HypeError).code).toBe('device');
    expect((err as HypeError).message).toMatch(/device was lost/);
    expect((err as HypeError).message).toMatch(/last checkpoint/);
    const ck = loadCheckpoint(dir); // verifies hashes and structure
    expect(ck.state.step).toBe(4);
    expect(readLossLog(dir).length).toBe(6);
    // The run resumes from it on a fresh device.
    const resumed = TrainingRun.resume(dir, be);
    expect(resumed.step).toBe(4);
    await resumed.run({ stopAfter: 5 });
    expect(resumed.step).toBe(5);
  }, 120_000);
});

describe('choosing webgpu', () => {
  it('auto never picks webgpu; webgpu is asked for by name and is asynchronous', async () => {
    expect(loadBackend('auto').name).not.toBe('webgpu');
    const p = loadBackend('webgpu');
    expect(p).toBeInstanceOf(Promise);
    const b = await p;
    expect(b.residence).toBe('device');
    b.destroy();
  });

  it("loadBackend('webgpu') takes a browser's navigator.gpu; no adapter there is one HypeError naming the fix", async () => {
    const g = globalThis as { navigator?: unknown };
    const saved = Object.getOwnPropertyDescriptor(g, 'navigator');
    Object.defineProperty(g, 'navigator', { value: { gpu: { requestAdapter: async () => null } }, configurable: true });
    try {
      const err = await loadBackend('webgpu').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(HypeError);
      expect((err as HypeError).code).toBe('device');
      expect((err as HypeError).message).toMatch(/no WebGPU adapter was found.*lavapipe.*--enable-unsafe-webgpu/);
    } finally {
      if (saved) Object.defineProperty(g, 'navigator', saved);
      else delete g.navigator;
    }
  });
});
