/**
 * The training loop: random windows from the corpus, one step each (step.ts: forward, backward, global-norm
 * clipping and AdamW on the backend, one read-back), warmup and cosine decay, a loss log and checkpoints. All randomness after initialisation comes from one seeded Rng whose
 * state is checkpointed, so a resumed run reproduces the uninterrupted one bit for bit (on the same backend).
 *
 * Run folder: run.json (configs, versions), losses.jsonl (one line per step), evals.jsonl (the periodic held-out
 * evaluations, when asked for), checkpoints/ (see checkpoint.ts).
 */
import { appendFileSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { withPrecision } from '../backend/autocast.ts';
import type { Backend } from '../backend/backend.ts';
import { HypeError, check } from '../errors.ts';
import { canonicalJson, parseModelConfig, type ModelConfig } from '../model/config.ts';
import { Transformer, type TransformerOptions } from '../model/transformer.ts';
import { findEncodingFactory } from '../pe/registry.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { checkFolderPath, makeWritableDir, readJsonFile } from '../util/fs-safe.ts';
import type { FloatArray } from '../tensor.ts';
import { Rng } from '../util/rng.ts';
import {
  hasCheckpoint,
  loadCheckpoint,
  restoreOptimizer,
  restoreWeights,
  saveCheckpoint,
  saveCheckpointAsync,
  splitCheckpointPath,
  type SaveArgs,
} from './checkpoint.ts';
import { checkSchedule, learningRate, parseTrainConfig, type TrainConfig } from './config.ts';
import { checkWindowFits, loadCorpus, type ByteCorpus } from './corpus.ts';
import { checkOutputs, evaluateHeldOut, evaluateHeldOutAsync, type EvalOptions, type EvalResult } from './evaluate.ts';
import { checkMemory, trainingBytes } from './memory.ts';
import { AdamW } from './optimizer.ts';
import { trainingStep } from './step.ts';
import { windowSource, type BatchSource } from './source.ts';

export interface StepRecord {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  /** Wall-clock seconds of this step. */
  seconds: number;
}

/** A periodic held-out evaluation (appended to evals.jsonl). */
export interface EvalRecord {
  step: number;
  /** Mean loss per held-out byte, nats (the training loss's unit). */
  valLoss: number;
  bitsPerByte: number;
  /** Held-out bytes scored (non-overlapping windows of the training length). */
  scored: number;
  seconds: number;
}

export interface RunControl<T = FloatArray, I = Int32Array> {
  /** Called after every step. */
  onStep?: (r: StepRecord, run: TrainingRun<T, I>) => void;
  /**
   * Evaluate on the held-out split every this many steps and after the last one (0 or absent: never), as
   * nanoGPT's eval_interval. Evaluation reads the model only, so the training trajectory is unchanged.
   */
  evalInterval?: number;
  /** Held-out bytes each evaluation scores: the first N of the split, the same bytes every time (default 16384). */
  evalBytes?: number;
  /** Called after each periodic evaluation. */
  onEval?: (r: EvalRecord, run: TrainingRun<T, I>) => void;
  /** Polled between steps; true stops after the current step and writes a checkpoint (SIGINT). */
  shouldStop?: () => boolean;
  /** Stop (with a checkpoint) once this step is reached, before `steps`. */
  stopAfter?: number;
}

export interface RunSummary {
  step: number;
  finished: boolean;
  interrupted: boolean;
  lastLoss: number;
  checkpoint: string | null;
}

/** Options of start/resume besides the model's: `source` replaces the corpus (task sequences, another split). */
export interface DataOptions {
  /** Batches from this source instead of windows of train.data; the run records source.id as its data. */
  source?: BatchSource;
}

/** The corpus record of a run fed by a BatchSource (no held-out split: the caller evaluates on its own data). */
function sourceCorpus(source: BatchSource): ByteCorpus {
  return {
    path: source.id,
    bytes: source.bytes,
    sha256: source.sha256,
    train: new Uint8Array(0),
    val: new Uint8Array(0),
  };
}

/** Options of resume(): what the caller expects of the run, and what it may change. */
export type ResumeOptions = TransformerOptions &
  DataOptions & {
    expectModel?: ModelConfig;
    expectTrain?: Partial<TrainConfig>;
    dataOverride?: string;
    /** A new total step count (the schedule is stretched to it). */
    steps?: number;
    /** An earlier checkpoint to resume from instead of the latest (its folder name). */
    checkpoint?: string;
  };

const RUN_FILE = 'run.json';
const LOSSES_FILE = 'losses.jsonl';
const EVALS_FILE = 'evals.jsonl';
/** 128 windows of 128 bytes: about the forward cost of five training steps of 8 x 128. */
export const DEFAULT_EVAL_BYTES = 16384;

/**
 * A run on any backend: T and I are its tensor handles (FloatArray and Int32Array on host backends, the default).
 * On a device backend the step reads back its statistics only, evaluation and checkpoints read back what they
 * write, and the start-up probe is left to the first step (whose checks are the same).
 */
export class TrainingRun<T = FloatArray, I = Int32Array> {
  readonly tokens: Int32Array;
  readonly targets: Int32Array;
  /** Where batches come from: windows of corpus.train unless a source was given. */
  readonly source: BatchSource;
  /** True when resume() found no checkpoint and started the run over from its run.json. */
  restarted = false;

  private constructor(
    readonly runDir: string,
    readonly model: Transformer<T, I>,
    readonly train: TrainConfig,
    readonly corpus: ByteCorpus,
    readonly optimizer: AdamW<T, I>,
    private rng: Rng,
    public step: number,
    source?: BatchSource,
  ) {
    this.source = source ?? windowSource(corpus.path, corpus.train, corpus.sha256);
    const n = train.batch * model.config.trainLength;
    this.tokens = new Int32Array(n);
    this.targets = new Int32Array(n);
  }

  /**
   * A fresh run in `runDir` (which must not already hold a run). Everything that can refuse the run is checked
   * before the folder is created: the configs, the corpus, the memory a step needs, the folder path, and one
   * forward pass of the model on a batch of the training shape (an encoding refusing its options or overflowing
   * its dtype, non-finite logits at initialisation). So a refused run leaves nothing behind.
   */
  static start<T = FloatArray, I = Int32Array>(
    runDir: string,
    modelConfig: ModelConfig,
    trainInput: Partial<TrainConfig>,
    backend: Backend<T, I>,
    options: TransformerOptions & DataOptions = {},
  ): TrainingRun<T, I> {
    checkFolderPath(runDir, 'run folder');
    check(
      !existsSync(join(runDir, RUN_FILE)),
      'argument',
      `'${runDir}' already holds a run; pass --resume ${runDir} to continue it, or choose another --run-dir`,
    );
    return TrainingRun.fresh(runDir, modelConfig, trainInput, backend, options);
  }

  /** start() without the "already holds a run" check: also restarts a run that never wrote a checkpoint. */
  private static fresh<T, I>(
    runDir: string,
    modelConfig: ModelConfig,
    trainInput: Partial<TrainConfig>,
    backend: Backend<T, I>,
    options: TransformerOptions & DataOptions & { expectSha256?: string },
  ): TrainingRun<T, I> {
    const { source } = options;
    const train = parseTrainConfig(source ? { ...trainInput, data: source.id } : trainInput);
    checkSchedule(train);
    // Stored absolute, so `hype eval` and `--resume` work from any folder (the SHA-256 still guards the content).
    if (!source) train.data = resolve(train.data);
    const L = modelConfig.trainLength;
    checkMemory(
      trainingBytes(modelConfig, train.batch * L),
      `training ${train.batch} windows of ${L} bytes per step`,
      'lower --batch or --length (or the model size)',
    );
    const corpus = source ? sourceCorpus(source) : loadCorpus(train.data, train.valFraction);
    if (options.expectSha256 !== undefined) {
      check(
        corpus.sha256 === options.expectSha256,
        'checkpoint',
        `corpus '${corpus.path}' differs from the one run '${runDir}' was started on (SHA-256 mismatch); ` +
          'pass the original file with --data',
      );
    }
    if (!source) checkWindowFits(corpus.train, L, 'training', train.data);
    const be = precisionBackend(backend, train, modelConfig);
    const model = new Transformer(modelConfig, be, options);
    probe(model, train.batch, L);
    makeWritableDir(runDir, 'run folder');
    const run = new TrainingRun(
      runDir,
      model,
      train,
      corpus,
      new AdamW(model.parameters(), be),
      new Rng(train.seed),
      0,
      source,
    );
    writeFileAtomic(
      join(runDir, RUN_FILE),
      JSON.stringify(
        {
          model: modelConfig,
          train,
          corpus: { path: train.data, bytes: corpus.bytes, sha256: corpus.sha256 },
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
    rmSync(join(runDir, EVALS_FILE), { force: true }); // a restarted run's evaluations start over too
    return run;
  }

  /**
   * Continues the run in `runDir` from its latest checkpoint (or from `checkpoint`, a folder name under
   * checkpoints/ such as step-00000100). `expect` (the configs the caller would have used) must match the
   * checkpoint's where given; `dataOverride` points at the corpus if it moved (its hash must match). A run that
   * was cut off before its first checkpoint (run.json but no checkpoint) starts again from step 0 with the
   * configs of its run.json: it lost nothing but those few steps, and is otherwise a dead end.
   */
  static resume<T = FloatArray, I = Int32Array>(
    runDir: string,
    backend: Backend<T, I>,
    options: ResumeOptions = {},
  ): TrainingRun<T, I> {
    if (options.checkpoint === undefined && !hasCheckpoint(runDir) && existsSync(join(runDir, RUN_FILE))) {
      return TrainingRun.restart(runDir, backend, options);
    }
    const ck = loadCheckpoint(runDir, options.checkpoint);
    const { state } = ck;
    if (options.expectModel && canonicalJson(options.expectModel) !== canonicalJson(state.model)) {
      throw new HypeError(
        'checkpoint',
        `the model options differ from the checkpoint's in '${ck.dir}' (mismatched checkpoint); ` +
          'resume without model options, or start a new run',
      );
    }
    const train = { ...state.train };
    if (options.steps !== undefined && options.steps !== train.steps) {
      // Extending (or shortening) a run is allowed; the cosine schedule then spans the new total.
      check(
        Number.isInteger(options.steps) && options.steps >= state.step,
        'argument',
        `cannot resume at step ${state.step} with a total of ${options.steps} steps; pass --steps >= ${state.step}`,
      );
      train.steps = options.steps;
      checkSchedule(train);
    }
    checkSameTrain(options.expectTrain, state.train, 'the checkpoint');
    const { source } = options;
    const corpus = source ? sourceCorpus(source) : loadCorpus(options.dataOverride ?? train.data, train.valFraction);
    check(
      corpus.sha256 === state.corpus.sha256,
      'checkpoint',
      source
        ? `data source '${source.id}' differs from the one the checkpoint was trained on ('${train.data}'); ` +
            'resume with the original source'
        : `corpus '${corpus.path}' differs from the one the checkpoint was trained on (SHA-256 mismatch); ` +
            'pass the original file with --data',
    );
    const be = precisionBackend(backend, train, state.model);
    const model = new Transformer(state.model, be, options);
    restoreWeights(model, ck.weights, `checkpoint '${ck.dir}'`);
    const opt = new AdamW(model.parameters(), be);
    restoreOptimizer(opt, ck.optimizer, state.optimizerStep);
    const run = new TrainingRun(runDir, model, train, corpus, opt, Rng.fromState(state.rng), state.step, source);
    run.truncateLog(LOSSES_FILE);
    run.truncateLog(EVALS_FILE);
    return run;
  }

  /** resume() of a run folder with run.json and no checkpoint: the same run from step 0. */
  private static restart<T, I>(runDir: string, backend: Backend<T, I>, options: ResumeOptions): TrainingRun<T, I> {
    const saved = readJsonFile(join(runDir, RUN_FILE), 'run record', 'delete the run folder and start a new run') as {
      model?: unknown;
      train?: unknown;
      corpus?: { sha256?: unknown };
    };
    let model: ModelConfig;
    let train: TrainConfig;
    try {
      model = parseModelConfig(saved.model, { saved: true });
      train = parseTrainConfig(saved.train);
    } catch (err) {
      throw new HypeError(
        'checkpoint',
        `run record '${join(runDir, RUN_FILE)}' holds an invalid configuration (${(err as Error).message}); ` +
          'delete the run folder and start a new run',
      );
    }
    if (options.expectModel && canonicalJson(options.expectModel) !== canonicalJson(model)) {
      throw new HypeError(
        'checkpoint',
        `the model options differ from those of run '${runDir}' (mismatched run); ` +
          'resume without model options, or start a new run',
      );
    }
    checkSameTrain(options.expectTrain, train, `run '${runDir}'`);
    const sha = typeof saved.corpus?.sha256 === 'string' ? saved.corpus.sha256 : undefined;
    const input = {
      ...train,
      ...(options.steps !== undefined ? { steps: options.steps } : {}),
      ...(options.dataOverride !== undefined ? { data: options.dataOverride } : {}),
    };
    const run = TrainingRun.fresh(runDir, model, input, backend, { ...options, expectSha256: sha });
    run.restarted = true;
    return run;
  }

  /** Records logged after the checkpoint belong to a run that was cut off; they are replayed, so drop them. */
  private truncateLog(file: string): void {
    const path = join(this.runDir, file);
    if (file === EVALS_FILE && !existsSync(path)) return;
    const kept = existsSync(path)
      ? readFileSync(path, 'utf8')
          .split('\n')
          .filter((line) => {
            if (!line.trim()) return false;
            try {
              return (JSON.parse(line) as StepRecord).step <= this.step;
            } catch {
              return false; // a line cut short by a kill
            }
          })
      : [];
    writeFileAtomic(path, kept.map((l) => l + '\n').join(''));
  }

  /**
   * One optimisation step (step.ts: forward, backward, clipping and AdamW on the backend, then one read of the loss
   * and gradient norm); returns its record (also appended to losses.jsonl).
   */
  async trainStep(): Promise<StepRecord> {
    const t0 = performance.now();
    const { model, train } = this;
    const L = model.config.trainLength;
    this.source.fill(this.rng, train.batch, L, this.tokens, this.targets);
    const lr = learningRate(train, this.step + 1);
    const { loss, gradNorm } = await trainingStep(model, this.optimizer, train, {
      tokens: this.tokens,
      targets: this.targets,
      batch: train.batch,
      length: L,
      lr,
      where: `at step ${this.step + 1}`,
    });
    this.step++;
    const rec: StepRecord = { step: this.step, loss, lr, gradNorm, seconds: (performance.now() - t0) / 1000 };
    appendFileSync(join(this.runDir, LOSSES_FILE), JSON.stringify(rec) + '\n');
    return rec;
  }

  /**
   * Loss on the first `bytes` bytes of the held-out split, in non-overlapping windows of the training length (the
   * same bytes at every call, so successive evaluations are comparable); appended to evals.jsonl.
   */
  evaluateHeldOut(bytes = DEFAULT_EVAL_BYTES): EvalRecord {
    const t0 = performance.now();
    const r = evaluateHeldOut(this.hostModel('evaluateHeldOut()'), ...this.heldOutArgs(bytes));
    return this.evalRecord(r, t0);
  }

  /** evaluateHeldOut() on any backend (the held-out losses are read back). */
  async evaluateHeldOutAsync(bytes = DEFAULT_EVAL_BYTES): Promise<EvalRecord> {
    const t0 = performance.now();
    return this.evalRecord(await evaluateHeldOutAsync(this.model, ...this.heldOutArgs(bytes)), t0);
  }

  private heldOutArgs(bytes: number): [Uint8Array, number, EvalOptions] {
    const L = this.model.config.trainLength;
    this.checkHeldOut(bytes);
    const val = this.corpus.val.subarray(0, Math.max(L + 1, Math.min(bytes, this.corpus.val.length)));
    return [val, L, { batch: this.train.batch }];
  }

  /** The model as host-typed, for the synchronous paths (host backends only). */
  private hostModel(what: string): Transformer {
    check(
      this.model.backend.residence === 'host',
      'argument',
      `${what} reads host arrays, which backend '${this.model.backend.name}' does not hold; use its async form`,
    );
    return this.model as unknown as Transformer;
  }

  private evalRecord(r: EvalResult, t0: number): EvalRecord {
    const rec: EvalRecord = {
      step: this.step,
      valLoss: r.nats,
      bitsPerByte: r.bitsPerByte,
      scored: r.scored,
      seconds: (performance.now() - t0) / 1000,
    };
    appendFileSync(join(this.runDir, EVALS_FILE), JSON.stringify(rec) + '\n');
    return rec;
  }

  /** Refuses a held-out evaluation this run cannot do (before training starts, not after the first interval). */
  private checkHeldOut(bytes: number): void {
    const L = this.model.config.trainLength;
    check(
      this.corpus.val.length >= L + 1,
      'argument',
      `periodic evaluation needs a held-out split of at least ${L + 1} bytes, and this run's data ` +
        `('${this.corpus.path}') has ${this.corpus.val.length}; raise --val-fraction or pass --eval-interval 0`,
    );
    check(Number.isInteger(bytes) && bytes >= 1, 'argument', `--eval-bytes must be a positive integer, got ${bytes}`);
  }

  /** Writes a checkpoint of the current step (host backends; checkpointAsync on any). */
  checkpoint(): string {
    return saveCheckpoint(this.runDir, this.saveArgs());
  }

  /** checkpoint() on any backend: a device's tensors are read back first. */
  checkpointAsync(): Promise<string> {
    return this.model.backend.residence === 'host'
      ? Promise.resolve(this.checkpoint())
      : saveCheckpointAsync(this.runDir, this.saveArgs());
  }

  private saveArgs(): SaveArgs<T, I> {
    return {
      model: this.model,
      optimizer: this.optimizer,
      rng: this.rng,
      step: this.step,
      train: this.train,
      corpus: { bytes: this.corpus.bytes, sha256: this.corpus.sha256 },
    };
  }

  /**
   * Trains to `train.steps` (or control.stopAfter), checkpointing every checkpointEvery steps and at the end.
   * Yields to the event loop between steps so signals (SIGINT) are seen; a stop request finishes the current
   * step, writes a checkpoint and returns.
   */
  async run(control: RunControl<T, I> = {}): Promise<RunSummary> {
    const end = Math.min(this.train.steps, control.stopAfter ?? Infinity);
    let lastLoss = NaN;
    let checkpoint: string | null = null;
    let interrupted = false;
    let savedAt = hasCheckpoint(this.runDir) ? this.step : -1;
    const every = control.evalInterval ?? 0;
    check(
      Number.isInteger(every) && every >= 0,
      'argument',
      `--eval-interval must be a whole number of steps (0 = never), got ${every}`,
    );
    if (every > 0) this.checkHeldOut(control.evalBytes ?? DEFAULT_EVAL_BYTES);
    while (this.step < end) {
      const rec = await this.trainStep();
      lastLoss = rec.loss;
      control.onStep?.(rec, this);
      if (every > 0 && (this.step % every === 0 || this.step === this.train.steps)) {
        const host = this.model.backend.residence === 'host';
        control.onEval?.(
          host ? this.evaluateHeldOut(control.evalBytes) : await this.evaluateHeldOutAsync(control.evalBytes),
          this,
        );
      }
      if (this.train.checkpointEvery > 0 && this.step % this.train.checkpointEvery === 0) {
        checkpoint = await this.checkpointAsync();
        savedAt = this.step;
      }
      await new Promise<void>((r) => setImmediate(r));
      if (control.shouldStop?.()) {
        interrupted = true;
        break;
      }
    }
    if (savedAt !== this.step) checkpoint = await this.checkpointAsync();
    return { step: this.step, finished: this.step >= this.train.steps, interrupted, lastLoss, checkpoint };
  }
}

/** The per-step records of a run folder, in order. */
export function readLossLog(runDir: string): StepRecord[] {
  const path = join(runDir, LOSSES_FILE);
  if (!existsSync(path)) return [];
  const lines = readFileSync(path, 'utf8').split('\n');
  return lines.flatMap((l, i) => {
    if (!l.trim()) return [];
    try {
      return [JSON.parse(l) as StepRecord];
    } catch {
      throw new HypeError(
        'io',
        `loss log '${path}' has a malformed line ${i + 1}; resume the run (--resume drops lines past its ` +
          'checkpoint) or delete the broken line',
      );
    }
  });
}

/**
 * Rebuilds the trained model of a run folder from its latest checkpoint, or of the checkpoint folder `path` names
 * (<run>/checkpoints/step-N), for eval, generation and export.
 */
export function loadRunModel<T = FloatArray, I = Int32Array>(
  path: string,
  backend: Backend<T, I>,
  options: TransformerOptions = {},
) {
  const { runDir, checkpoint } = splitCheckpointPath(path);
  const ck = loadCheckpoint(runDir, checkpoint);
  const model = new Transformer(ck.state.model, backend, options);
  restoreWeights(model, ck.weights, `checkpoint '${ck.dir}'`);
  return { model, state: ck.state, dir: ck.dir };
}

/**
 * The backend a run computes on: `backend` itself for fp32, its bf16 autocasting view for mixed precision
 * (autocast.ts; parameters, gradients and AdamW state stay fp32, so checkpoints hold fp32 masters).
 */
function precisionBackend<T, I>(backend: Backend<T, I>, train: TrainConfig, model: ModelConfig): Backend<T, I> {
  check(
    train.precision === 'fp32' || model.dtype === 'float32',
    'argument',
    `--precision ${train.precision} needs a float32 model (this one is ${model.dtype}); pass --dtype float32`,
  );
  if (train.precision !== 'fp32') {
    // The encoding says whether its position terms survive bf16 operands (a concat route needs split columns).
    const why = findEncodingFactory(model.pe.name)?.bf16Refusal?.(model.pe.options) ?? null;
    check(why === null, 'argument', () => why!);
  }
  return withPrecision(backend, train.precision);
}

/** Compares the training options a caller gave with those of a run (or checkpoint), refusing a difference. */
function checkSameTrain(expect: Partial<TrainConfig> | undefined, saved: TrainConfig, what: string): void {
  for (const [k, v] of Object.entries(expect ?? {})) {
    const was = (saved as unknown as Record<string, unknown>)[k];
    if (v !== undefined && canonicalJson(v) !== canonicalJson(was)) {
      throw new HypeError(
        'checkpoint',
        `training option '${k}' = ${JSON.stringify(v)} differs from ${what}'s ${JSON.stringify(was)} ` +
          '(mismatched checkpoint); resume without it, or start a new run',
      );
    }
  }
}

/**
 * One forward pass on zeros of the training shape, before the run folder exists: whatever the first step would
 * refuse for the configuration alone (encoding options checked at the first call, an fp16 overflow, a NaN at
 * initialisation) is refused here instead. Parameters, optimizer and RNG are untouched, so the run is unchanged.
 */
function probe<T, I>(m: Transformer<T, I>, batch: number, length: number): void {
  // A device's first step makes the same checks on its one read (step.ts); the probe is the host's early refusal.
  if (m.backend.residence !== 'host') return;
  const model = m as unknown as Transformer;
  const zeros = new Int32Array(batch * length);
  const loss = model.forward(zeros, zeros, batch, length);
  checkOutputs(model, loss, 'at initialisation (before step 1)', 'check the model and encoding options');
}
