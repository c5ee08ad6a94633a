import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { runTrainVision } from '../src/cli/train-vision.ts';
import { existsSync } from 'node:fs';
import { writeReport } from '../src/study/run.ts';
import { runVision, visionPlan } from '../src/study/vision.ts';
import { loadFashionMnist } from '../src/vision/idx.ts';
import { evaluateAccuracy, VisionRun } from '../src/vision/train.ts';
import { Rng } from '../src/util/rng.ts';

/** A fashion-mnist/ folder of n random 8x8 images whose class is which half (top or bottom) is brighter. */
function syntheticData(n: number): string {
  const root = mkdtempSync(join(tmpdir(), 'hype-vision-'));
  const dir = join(root, 'fashion-mnist');
  mkdirSync(dir);
  const rng = new Rng(5);
  const write = (prefix: string) => {
    const px = Buffer.alloc(16 + n * 64);
    px.writeUInt32BE(0x803, 0);
    px.writeUInt32BE(n, 4);
    px.writeUInt32BE(8, 8);
    px.writeUInt32BE(8, 12);
    const lab = Buffer.alloc(8 + n);
    lab.writeUInt32BE(0x801, 0);
    lab.writeUInt32BE(n, 4);
    for (let i = 0; i < n; i++) {
      const c = rng.int(2);
      lab[8 + i] = c;
      for (let p = 0; p < 64; p++) px[16 + i * 64 + p] = p < 32 === (c === 0) ? 200 : rng.int(60);
    }
    writeFileSync(join(dir, `${prefix}-images-idx3-ubyte.gz`), gzipSync(px));
    writeFileSync(join(dir, `${prefix}-labels-idx1-ubyte.gz`), gzipSync(lab));
  };
  write('train');
  write('t10k');
  return root;
}

const model = { kind: 'vit', image: 8, patch: 4, classes: 2, width: 8, layers: 1, heads: 2, mlpWidth: 16 };

describe('vision training', () => {
  const dataDir = syntheticData(64);
  const data = loadFashionMnist(join(dataDir, 'fashion-mnist'), 'train');

  it('a run interrupted and resumed from its checkpoint reproduces the uninterrupted one exactly', async () => {
    const be = new ReferenceBackend();
    const train = { data: dataDir, steps: 6, batch: 4, lr: 1e-2, warmup: 2, checkpointEvery: 3, seed: 2 };
    const cfg = { ...model, pe: { name: 'hype-2d', options: {} } };
    const a = join(mkdtempSync(join(tmpdir(), 'hype-vrun-')), 'a');
    await VisionRun.start(a, cfg, train, be, data).run();
    const b = join(mkdtempSync(join(tmpdir(), 'hype-vrun-')), 'b');
    const first = VisionRun.start(b, cfg, train, be, data);
    const stopped = await first.run({ shouldStop: () => first.step === 3 });
    expect(stopped).toMatchObject({ step: 3, interrupted: true });
    const resumed = VisionRun.resume(b, be, data);
    expect(resumed.step).toBe(3);
    await resumed.run();
    const losses = (dir: string) =>
      readFileSync(join(dir, 'losses.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).loss);
    expect(losses(b)).toEqual(losses(a));
    expect(losses(a)).toHaveLength(6);
  });

  it('the study experiment trains, grades at a larger grid and writes its report section', async () => {
    const out = mkdtempSync(join(tmpdir(), 'hype-vstudy-'));
    const plan = {
      ...visionPlan(),
      encodings: ['hype-2d', 'hype-flat'],
      seeds: [1, 2],
      model: { width: 8, layers: 1, heads: 2, mlpWidth: 16, patch: 4, image: 8 },
      budget: { steps: 4, batch: 4, lr: 1e-2, warmup: 1 },
      evalSides: [8, 12],
      evalImages: 16,
    };
    const env = { backend: new ReferenceBackend(), workDir: join(out, 'runs'), dataDir, log: () => {} };
    // classes = 10 in the study's models: the synthetic labels 0/1 are valid classes among them.
    expect(await runVision(env, out, plan)).toEqual({ total: 4, computed: 4 });
    expect(await runVision(env, out, plan)).toEqual({ total: 4, computed: 0 });
    await writeReport(out);
    const report = readFileSync(join(out, 'report.md'), 'utf8');
    expect(report).toMatch(/## vision: Fashion-MNIST accuracy/);
    expect(report).toMatch(/\| hype-2d \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \|/);
    expect(report).toMatch(/accuracy at 3x3: hype-2d .* vs hype-flat .*paired difference over 2 seeds/);
  });

  it('grades every image once and counts hits', () => {
    const run = VisionRun.start(
      join(mkdtempSync(join(tmpdir(), 'hype-vrun-')), 'c'),
      { ...model, pe: { name: 'none', options: {} } },
      { data: dataDir, steps: 1, batch: 2 },
      new ReferenceBackend(),
      data,
    );
    const r = evaluateAccuracy(run.model, data, 12, 10, 3);
    expect(r.total).toBe(10);
    expect(r.grid).toBe(3);
    expect(r.correct).toBe(r.hits.reduce((s, h) => s + h, 0));
  });

  it('hype train-vision trains, checkpoints and grades from the command line flags', async () => {
    const runDir = join(mkdtempSync(join(tmpdir(), 'hype-tv-')), 'run');
    const base = { dataDir: join(dataDir, 'fashion-mnist'), backend: 'reference', quiet: true, evalImages: 8 };
    await runTrainVision({ ...base, pe: 'rope-2d', steps: 2, batch: 2, width: 8, heads: 2, mlpWidth: 8, runDir });
    expect(existsSync(join(runDir, 'checkpoints', 'latest.json'))).toBe(true);
    await runTrainVision({ ...base, pe: 'rope-2d', resume: runDir, steps: 3, evalSides: '12' });
    expect(readFileSync(join(runDir, 'losses.jsonl'), 'utf8').trim().split('\n')).toHaveLength(3);
  });
});
