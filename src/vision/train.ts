/**
 * Training and grading the vision transformer, with the language model's trainer pieces: TrainConfig and its
 * warmup + cosine schedule, AdamW with global-norm clipping, and the same checkpoints (checkpoint.ts: weights,
 * optimizer moments and the sampler's RNG state, so a resumed run reproduces the uninterrupted one bit for bit on
 * the same backend). Each step draws `batch` training images uniformly with replacement from one seeded Rng.
 *
 * Run folder: run.json (configs, data hash), losses.jsonl (one line per step), checkpoints/ (checkpoint.ts).
 */
import { createHash } from 'node:crypto';
import { appendFileSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Backend } from '../backend/backend.ts';
import { check, checkFinite, HypeError } from '../errors.ts';
import { canonicalJson } from '../model/config.ts';
import { parseVisionConfig, VisionTransformer, type VisionConfig } from '../model/vision.ts';
import {
  hasCheckpoint,
  loadCheckpoint,
  restoreOptimizer,
  restoreWeights,
  saveCheckpoint,
} from '../train/checkpoint.ts';
import { checkSchedule, learningRate, parseTrainConfig, type TrainConfig } from '../train/config.ts';
import { AdamW, clipGradients } from '../train/optimizer.ts';
import type { StepRecord } from '../train/trainer.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { checkFolderPath, makeWritableDir } from '../util/fs-safe.ts';
import { Rng } from '../util/rng.ts';
import type { ImageSet } from './idx.ts';
import { imageBatch } from './images.ts';

const RUN_FILE = 'run.json';
const LOSSES_FILE = 'losses.jsonl';

/** SHA-256 of a set's pixels and labels (what a resumed run must be trained on). */
export function imageSetHash(set: ImageSet): string {
  return createHash('sha256').update(set.pixels).update(set.labels).digest('hex');
}

function checkImageSize(cfg: VisionConfig, set: ImageSet, what: string): void {
  check(
    set.rows === cfg.image && set.cols === cfg.image,
    'shape',
    `${what} has ${set.rows} x ${set.cols} images but the model is configured for ${cfg.image} x ${cfg.image}; ` +
      `pass --image ${set.rows} or other data`,
  );
}

export class VisionRun {
  private readonly images: Float32Array;
  private readonly labels: Int32Array;
  private readonly indices: Int32Array;

  private constructor(
    readonly runDir: string,
    readonly model: VisionTransformer,
    readonly train: TrainConfig,
    readonly data: ImageSet,
    readonly dataHash: string,
    readonly optimizer: AdamW,
    private rng: Rng,
    public step: number,
  ) {
    const B = train.batch;
    const S = model.config.image;
    this.images = new Float32Array(B * S * S);
    this.labels = new Int32Array(B);
    this.indices = new Int32Array(B);
  }

  /** A fresh run in `runDir` (which must not hold one); the configs and one forward pass are checked first. */
  static start(
    runDir: string,
    modelInput: unknown,
    trainInput: Partial<TrainConfig>,
    backend: Backend,
    data: ImageSet,
  ): VisionRun {
    checkFolderPath(runDir, 'run folder');
    check(
      !existsSync(join(runDir, RUN_FILE)),
      'argument',
      `'${runDir}' already holds a run; pass --resume ${runDir} to continue it, or choose another --run-dir`,
    );
    const modelConfig = parseVisionConfig(modelInput);
    const train = parseTrainConfig({ ...trainInput, data: resolve(trainInput.data ?? '.') });
    checkSchedule(train);
    checkImageSize(modelConfig, data, `data '${train.data}'`);
    const model = new VisionTransformer(modelConfig, backend);
    const hash = imageSetHash(data);
    const run = new VisionRun(
      runDir,
      model,
      train,
      data,
      hash,
      new AdamW(model.parameters(), backend),
      new Rng(train.seed),
      0,
    );
    // Probe: one forward on a batch of the training shape refuses a broken encoding before anything is written.
    run.fillBatch(new Rng(train.seed));
    const probe = model.forward(run.images, run.labels, train.batch, modelConfig.image);
    check(Number.isFinite(probe), 'non-finite', `the initial loss is ${probe}; check the model options`);
    makeWritableDir(runDir, 'run folder');
    writeFileAtomic(
      join(runDir, RUN_FILE),
      JSON.stringify(
        {
          model: modelConfig,
          train,
          data: { path: train.data, images: data.count, sha256: hash },
          parameters: model.parameterCount(),
          backend: backend.name,
          node: process.version,
          created: new Date().toISOString(),
        },
        null,
        1,
      ) + '\n',
    );
    writeFileAtomic(join(runDir, LOSSES_FILE), '');
    return run;
  }

  /** Continues the run in `runDir` from its latest checkpoint; `steps` stretches the schedule to a new total. */
  static resume(runDir: string, backend: Backend, data: ImageSet, opts: { steps?: number } = {}): VisionRun {
    const ck = loadCheckpoint<VisionConfig>(runDir, undefined, parseVisionConfig);
    const { state } = ck;
    const train = { ...state.train };
    if (opts.steps !== undefined && opts.steps !== train.steps) {
      check(
        Number.isInteger(opts.steps) && opts.steps >= state.step,
        'argument',
        `cannot resume at step ${state.step} with a total of ${opts.steps} steps; pass --steps >= ${state.step}`,
      );
      train.steps = opts.steps;
      checkSchedule(train);
    }
    const hash = imageSetHash(data);
    check(
      hash === state.corpus.sha256,
      'checkpoint',
      `the training images differ from those run '${runDir}' was trained on (SHA-256 mismatch); pass the original data`,
    );
    const model = new VisionTransformer(state.model, backend);
    restoreWeights(model, ck.weights, `checkpoint '${ck.dir}'`, parseVisionConfig);
    const opt = new AdamW(model.parameters(), backend);
    restoreOptimizer(opt, ck.optimizer, state.optimizerStep);
    const run = new VisionRun(runDir, model, train, data, hash, opt, Rng.fromState(state.rng), state.step);
    run.truncateLog();
    return run;
  }

  /** Steps logged after the checkpoint belong to a run that was cut off; they are replayed, so drop them. */
  private truncateLog(): void {
    const path = join(this.runDir, LOSSES_FILE);
    const kept = existsSync(path)
      ? readFileSync(path, 'utf8')
          .split('\n')
          .filter((line) => {
            try {
              return line.trim() !== '' && (JSON.parse(line) as StepRecord).step <= this.step;
            } catch {
              return false;
            }
          })
      : [];
    writeFileAtomic(path, kept.map((l) => l + '\n').join(''));
  }

  private fillBatch(rng: Rng): void {
    for (let b = 0; b < this.indices.length; b++) this.indices[b] = rng.int(this.data.count);
    imageBatch(this.data, this.indices, this.model.config.image, this.images);
    for (let b = 0; b < this.indices.length; b++) this.labels[b] = this.data.labels[this.indices[b]!]!;
  }

  trainStep(): StepRecord {
    const t0 = performance.now();
    const { model, train } = this;
    this.fillBatch(this.rng);
    model.zeroGrad();
    const loss = model.forward(this.images, this.labels, train.batch, model.config.image);
    const where = `at step ${this.step + 1}`;
    if (!Number.isFinite(loss)) {
      throw new HypeError('non-finite', `${where}: the loss is ${loss}; lower the learning rate (--lr)`);
    }
    model.backward();
    let gradNorm: number;
    try {
      gradNorm = clipGradients(model.parameters(), train.clip);
    } catch (err) {
      if (err instanceof HypeError) throw new HypeError(err.code, `${where}: ${err.message}`);
      throw err;
    }
    const lr = learningRate(train, this.step + 1);
    this.optimizer.update(train, lr);
    this.step++;
    const rec: StepRecord = { step: this.step, loss, lr, gradNorm, seconds: (performance.now() - t0) / 1000 };
    appendFileSync(join(this.runDir, LOSSES_FILE), JSON.stringify(rec) + '\n');
    return rec;
  }

  checkpoint(): string {
    return saveCheckpoint(this.runDir, {
      model: this.model,
      optimizer: this.optimizer,
      rng: this.rng,
      step: this.step,
      train: this.train,
      corpus: { bytes: this.data.count, sha256: this.dataHash },
    });
  }

  /** Trains to train.steps (checkpoints every checkpointEvery steps and at the end); shouldStop ends early. */
  async run(control: { onStep?: (r: StepRecord) => void; shouldStop?: () => boolean } = {}) {
    let savedAt = hasCheckpoint(this.runDir) ? this.step : -1;
    let interrupted = false;
    while (this.step < this.train.steps) {
      const rec = this.trainStep();
      control.onStep?.(rec);
      if (this.train.checkpointEvery > 0 && this.step % this.train.checkpointEvery === 0) {
        this.checkpoint();
        savedAt = this.step;
      }
      await new Promise<void>((r) => setImmediate(r));
      if (control.shouldStop?.()) {
        interrupted = true;
        break;
      }
    }
    if (savedAt !== this.step) this.checkpoint();
    return { step: this.step, finished: this.step >= this.train.steps, interrupted };
  }
}

export interface AccuracyResult {
  /** Image side fed to the model (the set's images resized bilinearly when it differs). */
  side: number;
  /** Patch grid side (side / patch). */
  grid: number;
  correct: number;
  total: number;
  accuracy: number;
  /** Per image, whether the prediction was right (1) or not (0): the pairing of the study's statistics. */
  hits: Uint8Array;
}

/** Accuracy on the first `count` images of `set`, resized to `side` (bilinear), in batches of `batch`. */
export function evaluateAccuracy(
  model: VisionTransformer,
  set: ImageSet,
  side: number,
  count = set.count,
  batch = 100,
): AccuracyResult {
  check(
    Number.isInteger(count) && count >= 1 && count <= set.count,
    'argument',
    `cannot grade ${count} of ${set.count} images`,
  );
  const hits = new Uint8Array(count);
  let correct = 0;
  for (let start = 0; start < count; start += batch) {
    const n = Math.min(batch, count - start);
    const idx = Int32Array.from({ length: n }, (_, j) => start + j);
    const x = imageBatch(set, idx, side);
    model.forward(x, null, n, side);
    checkFinite(model.logits(), `the logits on test images ${start}..${start + n - 1}`);
    const pred = model.predictions();
    for (let j = 0; j < n; j++) {
      if (pred[j] === set.labels[start + j]) {
        hits[start + j] = 1;
        correct++;
      }
    }
  }
  return { side, grid: side / model.config.patch, correct, total: count, accuracy: correct / count, hits };
}

/** The model configs of a run folder's checkpoint are compared by their canonical JSON (study cells reuse runs). */
export function sameVisionConfig(a: VisionConfig, b: VisionConfig): boolean {
  return canonicalJson(a) === canonicalJson(b);
}

/** Deletes a run folder that never reached a checkpoint (its process died early). */
export function discardUncheckpointed(runDir: string): void {
  if (existsSync(runDir) && !hasCheckpoint(runDir)) rmSync(runDir, { recursive: true, force: true });
}
