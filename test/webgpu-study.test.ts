/**
 * `hype study --backend webgpu` (lavapipe here and in CI): a tiny lm cell trained and scored on the device agrees
 * with the native backend's (same cell key, numbers within f32 roundoff); a flip-flop cell runs there too and grading
 * on the device counts what the native model predicts; the queue's worker computes a cell on the device as the local
 * run does; what a device cannot run (host-only encodings, precision) is refused before any work with one error
 * naming what does run there; the CLI's study and worker take --backend webgpu. */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import { loadBackend } from '../src/backend/index.ts';
import { WebGpuBackend } from '../src/backend/webgpu/backend.ts';
import { HypeError } from '../src/errors.ts';
import { gradeTask } from '../src/study/cell.ts';
import type { TaskSequence } from '../src/study/tasks/task.ts';
import { loadRunModel } from '../src/train/trainer.ts';
import { Rng } from '../src/util/rng.ts';
import type { FlipflopResult, LmResult } from '../src/study/experiments.ts';
import { quickPlan, type StudyPlan } from '../src/study/plan.ts';
import { runWorker } from '../src/study/queue.ts';
import { runStudy, type StudyOptions } from '../src/study/run.ts';
import { closedPort, startRedis } from './helpers/redis.ts';
import { gpu } from './helpers/webgpu.ts';

const root = mkdtempSync(join(tmpdir(), 'hype-webgpu-study-'));
const dataDir = join(root, 'data');
mkdirSync(join(dataDir, 'tinyshakespeare'), { recursive: true });
writeFileSync(
  join(dataDir, 'tinyshakespeare', 'input.txt'),
  'First Citizen:\nBefore we proceed any further, hear me speak.\n'.repeat(60),
);

let be: WebGpuBackend;
let redis: { url: string; stop: () => Promise<void> } | undefined;
beforeAll(async () => {
  be = new WebGpuBackend(await gpu());
}, 60_000);
afterAll(async () => {
  await redis?.stop();
  rmSync(root, { recursive: true, force: true });
});

function tinyPlan(encodings = ['hype-recency']): StudyPlan {
  const tiny = { width: 16, layers: 1, heads: 2, mlpWidth: 32 };
  const budget = { steps: 3, batch: 2, lr: 1e-3, warmup: 1 };
  return {
    ...quickPlan(),
    seeds: [1],
    encodings,
    lm: { corpora: ['tinyshakespeare'], trainLength: 8, multipliers: [1, 2], evalBytes: 256, model: tiny, budget },
    flipflop: { trainLength: 16, multipliers: [1], evalSequences: 4, model: tiny, budget },
  };
}

function study(name: string, o: Partial<StudyOptions> & Pick<StudyOptions, 'experiment' | 'backend'>) {
  return runStudy({
    quick: true,
    outDir: join(root, name),
    workDir: join(root, `${name}-work`),
    dataDir,
    plan: tinyPlan(),
    log: () => {},
    ...o,
  });
}

/** The one cell of an experiment's results folder: its key (file name) and record. */
function onlyCell<R>(out: string, exp: string): { key: string; result: R } {
  const dir = join(out, exp, 'cells');
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  expect(files).toHaveLength(1);
  return { key: files[0]!, result: JSON.parse(readFileSync(join(dir, files[0]!), 'utf8')).result as R };
}

describe('the study on webgpu', () => {
  it('an lm cell agrees with the native backend within f32 roundoff under the same key; a flip-flop cell runs', async () => {
    const native = loadBackend('native', { threads: 1 });
    for (const experiment of ['lm', 'flipflop'] as const) {
      await study('gpu', { experiment, backend: be });
      await study('cpu', { experiment, backend: native });
    }
    const [lmGpu, lmCpu] = ['gpu', 'cpu'].map((d) => onlyCell<LmResult>(join(root, d), 'lm'));
    expect(lmGpu!.key).toBe(lmCpu!.key); // the backend is recorded in the result, never in the key
    expect(lmGpu!.result.backend).toBe('webgpu');
    expect(lmCpu!.result.backend).toBe('native');
    // Bound: both train the same fp32 model from the same initial weights on the same batches. Each step's
    // gradients differ by the kernels' f32 summation order, relatively about (B L + width + vocab) u ~ 2e-5; AdamW's
    // update m / (sqrt(v) + eps) is scale-free, so 3 steps of lr 1e-3 move the weights apart by at most
    // ~3 * 2 * 2e-5 * 1e-3 = 1.2e-7, far below the evaluation's own roundoff: each window's loss is a sum of f32
    // reductions of length at most width + L + vocab (< 300 here), so the mean agrees to about 300 u = 2e-5
    // relative. 1e-4 relative is the bound (as webgpu-run.test.ts uses for evaluation alone).
    const gpuEvals = lmGpu!.result.evals;
    const cpuEvals = lmCpu!.result.evals;
    expect(gpuEvals.map((e) => e.length)).toEqual([8, 16]);
    for (const [i, e] of gpuEvals.entries()) {
      const c = cpuEvals[i]!;
      if (!e.ok || !c.ok) throw new Error('both backends evaluate every length of a relative encoding');
      expect(e.scored).toBe(c.scored);
      expect(Math.abs(e.bitsPerByte - c.bitsPerByte)).toBeLessThanOrEqual(1e-4 * c.bitsPerByte);
    }
    expect(Math.abs(lmGpu!.result.train.finalLoss - lmCpu!.result.train.finalLoss)).toBeLessThanOrEqual(
      1e-4 * lmCpu!.result.train.finalLoss,
    );

    // Three steps teach flip-flop nothing (every read bit is wrong on both backends), so the cell shows only that
    // grading runs on the device and grades the same positions; the test below checks the grading itself.
    const [ffGpu, ffCpu] = ['gpu', 'cpu'].map((d) => onlyCell<FlipflopResult>(join(root, d), 'flipflop'));
    expect(ffGpu!.key).toBe(ffCpu!.key);
    expect(ffGpu!.result.backend).toBe('webgpu');
    for (const mix of ['id', 'ood-sparse', 'ood-dense'] as const) {
      expect(ffGpu!.result.mixes[mix].graded).toBeGreaterThan(0);
      expect(ffGpu!.result.mixes[mix].graded).toBe(ffCpu!.result.mixes[mix].graded);
    }
    // The report says the folder's cells came from one backend, and names it.
    expect(readFileSync(join(root, 'gpu', 'report.md'), 'utf8')).toContain('backend webgpu;');
  }, 240_000);

  it("grading on the device reads the logits back and counts the native backend's argmax as correct", async () => {
    // The flip-flop cell's trained run, loaded on both backends. Sequences whose last byte (only a target) is the
    // native model's prediction at the last position are all correct there; on the device too, unless a top-2
    // logit margin were below the backends' logit difference (~1e-5: f32 roundoff), which the margins printed on
    // failure would show. Shifting that byte makes every answer wrong on both.
    const runDir = join(
      root,
      'gpu-work',
      readdirSync(join(root, 'gpu-work')).find((d) => d.startsWith('flipflop'))!,
    );
    const onCpu = loadRunModel(runDir, loadBackend('native', { threads: 1 })).model;
    const onGpu = loadRunModel(runDir, be).model;
    const L = 16;
    const rng = new Rng(9);
    const seqs: TaskSequence[] = Array.from({ length: 12 }, () => ({
      bytes: Uint8Array.from({ length: L + 1 }, () => 48 + rng.int(40)),
      graded: Int32Array.of(L - 1),
    }));
    const tokens = new Int32Array(seqs.length * L);
    seqs.forEach((q, i) => tokens.set(q.bytes.subarray(0, L), i * L));
    onCpu.forward(tokens, null, seqs.length, L);
    const logits = onCpu.logits();
    const margins: number[] = [];
    seqs.forEach((q, i) => {
      const row = Array.from(logits.subarray((i * L + L - 1) * 256, (i * L + L) * 256));
      const best = row.indexOf(Math.max(...row));
      q.bytes[L] = best;
      margins.push(row[best]! - Math.max(...row.filter((_, v) => v !== best)));
    });
    expect(await gradeTask(onCpu, seqs, L)).toEqual({ correct: 12, graded: 12 });
    expect(await gradeTask(onGpu, seqs, L), `top-2 margins ${margins}`).toEqual({ correct: 12, graded: 12 });
    for (const q of seqs) q.bytes[L] = (q.bytes[L]! + 1) % 256;
    expect(await gradeTask(onGpu, seqs, L)).toEqual({ correct: 0, graded: 12 });
  }, 60_000);

  it('a queue worker on webgpu computes the cell the local webgpu run did, bit for bit', async () => {
    redis = await startRedis();
    let release: () => void = () => {};
    const worker = runWorker({
      url: `${redis.url}/1`,
      backend: be,
      dataDir,
      workDir: join(root, 'worker-work'),
      concurrency: 1,
      log: () => {},
      stop: new Promise<void>((r) => (release = r)),
    });
    try {
      await study('queued', { experiment: 'lm', backend: be, queue: `${redis.url}/1` });
    } finally {
      release();
      await worker;
    }
    const queued = onlyCell<LmResult>(join(root, 'queued'), 'lm');
    const local = onlyCell<LmResult>(join(root, 'gpu'), 'lm');
    expect(queued.key).toBe(local.key);
    expect(queued.result.backend).toBe('webgpu');
    // The kernels are deterministic (fixed-parameter encodings skip the atomic table-gradient sums).
    expect(queued.result.evals).toEqual(local.result.evals);
    expect(queued.result.train.finalLoss).toBe(local.result.train.finalLoss);
  }, 120_000);

  it('refuses host-only encodings and precision up front, naming what runs on webgpu', async () => {
    const err = await study('refused', { experiment: 'lm', backend: be, plan: tinyPlan(['rope', 'none']) }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(HypeError);
    expect((err as HypeError).message).toMatch(
      /study encoding rope runs on host backends only .* on backend 'webgpu' the study runs none, alibi, hype-paper, hype-recency: pass --encodings/,
    );
    const all = await study('refused', { experiment: 'all', backend: be }).catch((e: unknown) => e);
    expect(all).toBeInstanceOf(HypeError);
    expect((all as HypeError).message).toMatch(/precision experiment .*'all' includes precision/);
    expect(() => readdirSync(join(root, 'refused'))).toThrow(); // nothing was written
  });

  it('the CLI takes --backend webgpu for study and worker, and refuses a host-only encoding in one line', async () => {
    const hype = async (...args: string[]) => {
      const err: string[] = [];
      const se = vi.spyOn(process.stderr, 'write').mockImplementation((x) => (err.push(String(x)), true));
      process.exitCode = 0;
      try {
        await main(['node', 'hype', ...args]);
      } finally {
        se.mockRestore();
      }
      const code = process.exitCode;
      process.exitCode = 0;
      return { code, err: err.filter((l) => !/^Warning: maxDynamic/.test(l)).join('') };
    };
    const out = join(root, 'cli');
    const study = await hype('study', 'lm', '--backend', 'webgpu', '--encodings', 'rope', '--out', out);
    expect(study.code).toBe(2);
    expect(study.err).toMatch(/^hype: study encoding rope runs on host backends only .*\n$/);
    expect(() => readdirSync(out)).toThrow(); // refused before a folder was made
    // The worker gets past the backend (a device is acquired) to the queue, which is unreachable here.
    const url = `redis://127.0.0.1:${await closedPort()}`;
    const worker = await hype('worker', '--queue', url, '--backend', 'webgpu', '--work-dir', join(root, 'cli-work'));
    expect(worker.code).toBe(2);
    expect(worker.err).toMatch(/^hype: cannot reach Redis at /);
  }, 30_000);
});
