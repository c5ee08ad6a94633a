/**
 * One study cell's machinery: train a model (or pick up its finished or interrupted run folder), and grade it.
 * Training goes through the trainer's TrainingRun with a BatchSource, so a cell killed mid-training resumes from
 * its last checkpoint, and a cell whose model is needed again (precision re-evaluates the lm models) reuses it.
 */
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Backend, Precision } from '../backend/backend.ts';
import { check, HypeError } from '../errors.ts';
import { parseModelConfig, type ModelConfig } from '../model/config.ts';
import { Transformer } from '../model/transformer.ts';
import { hasCheckpoint, loadCheckpoint, restoreWeights } from '../train/checkpoint.ts';
import { checkLogits, evaluateHeldOutAsync } from '../train/evaluate.ts';
import type { BatchSource } from '../train/source.ts';
import { readLossLog, TrainingRun } from '../train/trainer.ts';
import type { PositionalEncoding } from '../pe/encoding.ts';
import type { FloatArray } from '../tensor.ts';
import { withClaim, type Claim } from '../util/claim.ts';
import type { StudyProgress } from './progress.ts';
import type { TaskSequence } from './tasks/task.ts';
import type { ModelShape, PeChoice, TrainBudget } from './plan.ts';

export interface StudyEnv {
  /**
   * Any backend: host (native, reference) or device (webgpu). Every number a cell reports leaves the backend through
   * its asynchronous read (on host backends that read resolves at once with a copy of the same values).
   */
  backend: Backend<unknown, unknown>;
  /** Folder of the cells' training runs (checkpoints; large, not part of the results). */
  workDir: string;
  /** Folder holding tinyshakespeare/ and wikitext-2/. */
  dataDir: string;
  log: (line: string) => void;
  /** Announces each cell with its place in the run and the time left (absent: a plain log line). */
  progress?: StudyProgress;
  /** Called after every training step (a queue worker reports it as the job's progress). */
  onStep?: (step: number, steps: number) => void;
}

export interface TrainSummary {
  steps: number;
  /** Wall-clock seconds of all training steps (summed over resumptions). */
  seconds: number;
  /** Mean training loss (nats per byte) over the last 5% of steps. */
  finalLoss: number;
  parameters: number;
  runDir: string;
}

/** Each distinct encoding instance of the model's blocks with its parameter-name prefix (as Transformer names them). */
function reportingEncodings<T, I>(model: Transformer<T, I>): [string, PositionalEncoding<T, I>][] {
  const encs = model.blockEncodings;
  if (encs.every((e) => e === encs[0])) return encs[0]?.report ? [['pe', encs[0]]] : [];
  return encs.flatMap((e, i): [string, PositionalEncoding<T, I>][] => (e.report ? [[`blocks.${i}.attn.pe`, e]] : []));
}

/**
 * Starts a cell's evaluation for the position report: encodings that summarise their forward passes (gates) forget
 * those of training, so positionReport describes the evaluation data.
 */
export function startPositionReport<T, I>(model: Transformer<T, I>): void {
  for (const [, enc] of reportingEncodings(model)) enc.report!();
}

/**
 * The trained position parameters of every encoding that reports them (PositionalEncoding.report), named
 * `<block prefix>.<name>` (e.g. blocks.0.attn.pe.slope); undefined when the encoding reports nothing.
 */
export function positionReport<T, I>(model: Transformer<T, I>): Record<string, number[]> | undefined {
  const out: Record<string, number[]> = {};
  for (const [prefix, enc] of reportingEncodings(model))
    for (const [name, values] of Object.entries(enc.report!())) out[`${prefix}.${name}`] = values;
  return Object.keys(out).length > 0 ? out : undefined;
}

export function studyModelConfig(shape: ModelShape, pe: PeChoice, trainLength: number, seed: number): ModelConfig {
  return parseModelConfig({ ...shape, kvHeads: shape.heads, pe, trainLength, seed, dtype: 'float32' });
}

/**
 * Trains `config` for `budget` on `source`, in run folder workDir/runName: a finished run is loaded, an interrupted
 * one resumed from its checkpoint, anything else started afresh. The run folder is claimed for the whole time
 * (workDir/runName.lock): a process needing a run another live process is training (precision reuses the lm runs)
 * waits for it, and a folder without a checkpoint is only discarded while holding its claim, i.e. when the
 * process that wrote it is dead. `precision` applies to a fresh run; a resumed one keeps its checkpoint's.
 */
export async function trainModel(
  env: StudyEnv,
  runName: string,
  config: ModelConfig,
  budget: TrainBudget,
  seed: number,
  source: BatchSource,
  label: string,
  precision: Precision = 'fp32',
): Promise<{ model: Transformer<unknown, unknown>; train: TrainSummary }> {
  const runDir = join(env.workDir, runName);
  return withClaim(
    runDir,
    'training run',
    (claim) => trainClaimed(env, runDir, config, { ...budget, precision }, seed, source, label, claim),
    () => env.log(`${label}: another process is training this run; waiting for it`),
  );
}

async function trainClaimed(
  env: StudyEnv,
  runDir: string,
  config: ModelConfig,
  budget: TrainBudget & { precision: Precision },
  seed: number,
  source: BatchSource,
  label: string,
  claim: Claim,
): Promise<{ model: Transformer<unknown, unknown>; train: TrainSummary }> {
  let run: TrainingRun<unknown, unknown>;
  if (hasCheckpoint(runDir)) {
    run = TrainingRun.resume(runDir, env.backend, { source, expectModel: config });
  } else {
    // Written by a process killed before its first checkpoint (we hold the claim, so it is not running).
    if (existsSync(runDir)) rmSync(runDir, { recursive: true, force: true });
    run = TrainingRun.start(
      runDir,
      config,
      {
        steps: budget.steps,
        batch: budget.batch,
        lr: budget.lr,
        minLr: budget.lr / 10,
        warmup: budget.warmup,
        seed,
        checkpointEvery: Math.max(100, Math.ceil(budget.steps / 5)),
        keepCheckpoints: 1,
        precision: budget.precision,
      },
      env.backend,
      { source },
    );
  }
  if (run.step < run.train.steps) {
    env.log(`${label}: training ${run.train.steps} steps${run.step > 0 ? ` (resuming at ${run.step})` : ''}`);
    const every = Math.max(1, Math.round(run.train.steps / 4));
    await run.run({
      onStep: (r) => {
        // A claim lost mid-training (this process stalled past the stale limit) stops at once, writing nothing more.
        claim.check();
        env.onStep?.(r.step, run.train.steps);
        if (r.step % every === 0) {
          env.log(`${label}: step ${r.step}/${run.train.steps}, training loss ${r.loss.toFixed(3)} nats per byte`);
        }
      },
    });
    claim.check();
  }
  const log = readLossLog(runDir);
  const tail = log.slice(-Math.max(1, Math.floor(log.length / 20)));
  return {
    model: run.model,
    train: {
      steps: run.step,
      seconds: log.reduce((s, r) => s + r.seconds, 0),
      finalLoss: tail.reduce((s, r) => s + r.loss, 0) / tail.length,
      parameters: run.model.parameterCount(),
      runDir,
    },
  };
}

/** Why the precision experiment refuses a device backend (its operand formats are emulated on the host). */
export const PRECISION_ON_HOST = (backend: string) =>
  `the precision experiment rounds attention operands to bf16/fp16 on the host, which backend '${backend}' cannot ` +
  'do; run precision with --backend native or reference (lm, flipflop and recall run on webgpu)';

/**
 * The finished model of a run folder rebuilt with extra encoding options (e.g. an operand format): the checkpoint
 * restores into a model of its own configuration, whose parameters are then copied, name by name, into the model
 * built with the changed options (the options change how attention runs, not what is trained).
 */
export function reloadWithPeOptions(
  runDir: string,
  anyBackend: Backend<unknown, unknown>,
  extra: Record<string, unknown>,
): Transformer {
  if (anyBackend.residence !== 'host') throw new HypeError('argument', PRECISION_ON_HOST(anyBackend.name));
  const backend = anyBackend as Backend; // 'host' promises typed arrays (HANDLES.md)
  const ck = loadCheckpoint(runDir);
  const cfg = ck.state.model;
  const trained = new Transformer(cfg, backend);
  restoreWeights(trained, ck.weights, `checkpoint '${ck.dir}'`);
  const model = new Transformer(
    { ...cfg, pe: { name: cfg.pe.name, options: { ...cfg.pe.options, ...extra } } },
    backend,
  );
  const from = trained.parameters();
  const to = model.parameters();
  check(
    from.length === to.length && from.every((p, i) => p.name === to[i]!.name && p.data.length === to[i]!.data.length),
    'argument',
    `encoding options ${JSON.stringify(extra)} change the parameters of '${runDir}'s model; they cannot be applied ` +
      'to a trained model',
  );
  from.forEach((p, i) => to[i]!.data.set(p.data));
  return model;
}

/** An evaluation either gives numbers or says honestly why it cannot (an encoding's maximum length). */
export type Outcome<T> = ({ ok: true } & T) | { ok: false; reason: string };

/** Runs `f`; a 'length' refusal (learned positions past their table) becomes "cannot evaluate" with its message. */
export async function unlessTooLong<T>(f: () => Promise<T>): Promise<Outcome<T>> {
  try {
    return { ok: true, ...(await f()) };
  } catch (err) {
    if (err instanceof HypeError && err.code === 'length') return { ok: false, reason: err.message };
    throw err;
  }
}

/**
 * Bits per byte on `data` in non-overlapping windows of `length` (as the ALiBi paper evaluates), on any backend: per
 * pass the statistics and the per-token losses are read back. On a host backend those are the very values the
 * synchronous evaluateHeldOut sums, in the same order, so host cells' numbers are unchanged.
 */
export async function bitsPerByte<T, I>(
  model: Transformer<T, I>,
  data: Uint8Array,
  length: number,
): Promise<{ bitsPerByte: number; scored: number }> {
  const r = await evaluateHeldOutAsync(model, data, length, { batch: Math.max(1, Math.floor(4096 / length)) });
  return { bitsPerByte: r.bitsPerByte, scored: r.scored };
}

/**
 * Counts correct predictions at the graded positions only: row r of `logits` [rows, vocab] holds the prediction
 * made at position t of sequence s (r = s * length + t); it is correct when its argmax is bytes[t + 1]. Every other
 * position is ignored, however wrong.
 */
export function countCorrect(
  logits: FloatArray,
  vocab: number,
  seqs: readonly TaskSequence[],
  length: number,
): { correct: number; graded: number } {
  let correct = 0;
  let graded = 0;
  seqs.forEach((s, i) => {
    for (const t of s.graded) {
      if (t >= length || t + 1 >= s.bytes.length) continue; // the prediction or its answer lies past the sequence
      const row = (i * length + t) * vocab;
      let best = 0;
      for (let v = 1; v < vocab; v++) if (logits[row + v]! > logits[row + best]!) best = v;
      graded++;
      if (best === s.bytes[t + 1]) correct++;
    }
  });
  return { correct, graded };
}

/**
 * Grades `model` on task sequences of `length + 1` bytes, in batches: the model reads the first `length` (its
 * window) and the last byte is only a target — the layout training windows have (generatorSource asks for
 * length + 1 bytes), so a task's closing query sits at the same absolute position in training and evaluation.
 * That matters for absolute encodings: a learned table that only ever saw the query at position L - 1 cannot be
 * graded with it at L - 2. Any backend: each batch's logits are read back (the argmax runs on the host).
 */
export async function gradeTask<T, I>(
  model: Transformer<T, I>,
  seqs: readonly TaskSequence[],
  length: number,
): Promise<{ correct: number; graded: number }> {
  const batch = Math.max(1, Math.floor(8192 / length));
  let correct = 0;
  let graded = 0;
  for (let s0 = 0; s0 < seqs.length; s0 += batch) {
    const part = seqs.slice(s0, s0 + batch);
    const tokens = new Int32Array(part.length * length);
    part.forEach((s, i) => {
      if (s.bytes.length !== length + 1) {
        throw new HypeError(
          'shape',
          `task sequence has ${s.bytes.length} bytes, expected ${length + 1} (a window of ${length} and its last target)`,
        );
      }
      tokens.set(s.bytes.subarray(0, length), i * length);
    });
    model.enqueueForward(tokens, null, part.length, length);
    const logits = await model.backend.read(model.logitsHandle());
    checkLogits(
      logits,
      model.config.vocab,
      `grading task sequences at length ${length}`,
      'the trained model is broken; recompute it',
    );
    const c = countCorrect(logits, model.config.vocab, part, length);
    correct += c.correct;
    graded += c.graded;
  }
  return { correct, graded };
}
