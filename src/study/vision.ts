/**
 * Study experiment `vision` (issue 21, the paper's section 3.4 evaluated): a small ViT (model/vision.ts) per image
 * encoding and seed, trained on Fashion-MNIST at 28 x 28 (a 7 x 7 patch grid), graded on the first `evalImages`
 * test images at the training resolution and at larger grids by upsampling the test images bilinearly (40 x 40 ->
 * 10 x 10 patches, 56 x 56 -> 14 x 14; 42 x 42 would not divide into 4 x 4 patches). The same garment then covers
 * more patches: relative encodings see longer distances than in training, absolute ones positions they never saw
 * (learned-2d is resized bilinearly, sincos-2d extrapolates).
 *
 * Cells are keyed by their whole configuration (store.ts) and resumable (the training runs checkpoint); a seed
 * fixes both the initial weights and the training batches, so cells of one seed are compared pairwise.
 */
import { join } from 'node:path';
import type { Backend } from '../backend/backend.ts';
import { HypeError } from '../errors.ts';
import { parseVisionConfig, type VisionConfig } from '../model/vision.ts';
import { getVisionEncoding } from '../pe/vision/registry.ts';
import { hasCheckpoint } from '../train/checkpoint.ts';
import { withClaim } from '../util/claim.ts';
import { loadFashionMnist, type ImageSet } from '../vision/idx.ts';
import { discardUncheckpointed, evaluateAccuracy, VisionRun } from '../vision/train.ts';
import { readLossLog } from '../train/trainer.ts';
import type { PeChoice, TrainBudget } from './plan.ts';
import { ResultStore, type CellRecord } from './store.ts';
import { versions, type Versions } from './versions.ts';

/** The image encodings of the study, in the order cells are computed (the questions first). */
export const VISION_ENCODINGS = [
  'hype-2d',
  'hype-flat',
  'hype-2d-sym',
  'rope-2d',
  'alibi-2d',
  'none',
  'learned-2d',
  'sincos-2d',
] as const;

export interface VisionPlan {
  encodings: string[];
  seeds: number[];
  model: { width: number; layers: number; heads: number; mlpWidth: number; patch: number; image: number };
  budget: TrainBudget;
  /** Test image sides (the first is the training side). */
  evalSides: number[];
  /** Test images graded at each side: the first N of the official test split. */
  evalImages: number;
}

/**
 * The plan: ~1.5 minutes of training per cell on ONE native thread (800 steps of 64 images, about 0.85 epoch of the
 * 60,000 training images; 60-110 ms a step measured on this machine, more under load) plus the grading.
 */
export function visionPlan(): VisionPlan {
  return {
    encodings: [...VISION_ENCODINGS],
    seeds: [1, 2, 3],
    model: { width: 64, layers: 2, heads: 4, mlpWidth: 128, patch: 4, image: 28 },
    budget: { steps: 800, batch: 64, lr: 2e-3, warmup: 50 },
    evalSides: [28, 40, 56],
    evalImages: 3000,
  };
}

export interface VisionCellConfig {
  experiment: 'vision';
  data: 'fashion-mnist';
  encoding: string;
  pe: PeChoice;
  seed: number;
  model: VisionPlan['model'];
  budget: TrainBudget;
  evalSides: number[];
  evalImages: number;
  resize: 'bilinear';
}

export interface VisionCellResult {
  train: { steps: number; seconds: number; finalLoss: number; parameters: number; runDir: string };
  evals: { side: number; grid: number; correct: number; total: number; accuracy: number }[];
  backend: string;
  versions: Versions;
  evalSeconds: number;
}

export type VisionRecord = CellRecord<VisionCellConfig, VisionCellResult>;

export function visionConfigs(plan: VisionPlan): VisionCellConfig[] {
  for (const e of plan.encodings) getVisionEncoding(e); // refuses unknown names before any work
  return plan.encodings.flatMap((encoding) =>
    plan.seeds.map((seed) => ({
      experiment: 'vision' as const,
      data: 'fashion-mnist' as const,
      encoding,
      pe: { name: encoding, options: {} },
      seed,
      model: plan.model,
      budget: plan.budget,
      evalSides: plan.evalSides,
      evalImages: plan.evalImages,
      resize: 'bilinear' as const,
    })),
  );
}

function modelConfigOf(c: VisionCellConfig): VisionConfig {
  return parseVisionConfig({ kind: 'vit', ...c.model, classes: 10, pe: c.pe, seed: c.seed, dtype: 'float32' });
}

export interface VisionEnv {
  backend: Backend;
  workDir: string;
  /** Folder holding fashion-mnist/. */
  dataDir: string;
  log: (line: string) => void;
}

/** Trains (or resumes, or reloads) one cell's model and grades it. */
export async function computeVisionCell(
  env: VisionEnv,
  c: VisionCellConfig,
  data: { train: ImageSet; test: ImageSet },
): Promise<VisionCellResult> {
  const runDir = join(env.workDir, `vision-${c.encoding}-s${c.seed}`);
  const label = `vision ${c.encoding} seed ${c.seed}`;
  return withClaim(
    runDir,
    'training run',
    async () => {
      discardUncheckpointed(runDir);
      const run = hasCheckpoint(runDir)
        ? VisionRun.resume(runDir, env.backend, data.train)
        : VisionRun.start(
            runDir,
            modelConfigOf(c),
            {
              data: join(env.dataDir, 'fashion-mnist'),
              steps: c.budget.steps,
              batch: c.budget.batch,
              lr: c.budget.lr,
              minLr: c.budget.lr / 10,
              warmup: c.budget.warmup,
              seed: c.seed,
              checkpointEvery: Math.max(100, Math.ceil(c.budget.steps / 4)),
              keepCheckpoints: 1,
            },
            env.backend,
            data.train,
          );
      const every = Math.max(1, Math.round(run.train.steps / 4));
      if (run.step < run.train.steps) env.log(`${label}: training ${run.train.steps} steps from step ${run.step}`);
      await run.run({
        onStep: (r) => {
          if (r.step % every === 0) env.log(`${label}: step ${r.step}, loss ${r.loss.toFixed(3)}`);
        },
      });
      const log = readLossLog(runDir);
      const tail = log.slice(Math.floor(log.length * 0.95));
      const t0 = performance.now();
      const evals = c.evalSides.map((side) => {
        const r = evaluateAccuracy(run.model, data.test, side, c.evalImages);
        env.log(`${label}: ${side}x${side} (${r.grid}x${r.grid} patches) accuracy ${(100 * r.accuracy).toFixed(2)}%`);
        return { side, grid: r.grid, correct: r.correct, total: r.total, accuracy: r.accuracy };
      });
      return {
        train: {
          steps: run.step,
          seconds: log.reduce((s, r) => s + r.seconds, 0),
          finalLoss: tail.reduce((s, r) => s + r.loss, 0) / Math.max(1, tail.length),
          parameters: run.model.parameterCount(),
          runDir,
        },
        evals,
        backend: env.backend.name,
        versions: versions(),
        evalSeconds: (performance.now() - t0) / 1000,
      };
    },
    () => env.log(`${label}: another process is training this run; waiting for it`),
  );
}

/** Runs every unfinished cell of `plan` into outDir/vision/cells; returns the cells computed and the total. */
export async function runVision(
  env: VisionEnv,
  outDir: string,
  plan: VisionPlan,
): Promise<{ total: number; computed: number }> {
  const store = new ResultStore<VisionCellConfig, VisionCellResult>(join(outDir, 'vision'), env.log);
  const configs = visionConfigs(plan);
  const todo = configs.filter((c) => !store.has(c));
  if (todo.length === 0) return { total: configs.length, computed: 0 };
  let data: { train: ImageSet; test: ImageSet };
  try {
    const dir = join(env.dataDir, 'fashion-mnist');
    data = { train: loadFashionMnist(dir, 'train'), test: loadFashionMnist(dir, 'test') };
  } catch (e) {
    if (e instanceof HypeError) {
      throw new HypeError(e.code, `${e.message} (the vision study reads fashion-mnist/ under --data-dir)`);
    }
    throw e;
  }
  let i = 0;
  for (const c of todo) {
    i++;
    env.log(`vision cell ${i}/${todo.length}: ${c.encoding} seed ${c.seed}`);
    const t0 = performance.now();
    const result = await computeVisionCell(env, c, data);
    store.put(c, result, (performance.now() - t0) / 1000);
  }
  return { total: configs.length, computed: todo.length };
}
