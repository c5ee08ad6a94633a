/**
 * The four experiments of `hype study`. Each is a grid of cells (encoding x seed x ...); a cell trains one model
 * and grades it, and its result (config, numbers, timings, versions) is stored by ResultStore as soon as it exists,
 * so a study can be interrupted and resumed at any point without recomputing a finished cell.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Precision } from '../backend/backend.ts';
import { check, HypeError } from '../errors.ts';
import type { Transformer } from '../model/transformer.ts';
import { findEncodingFactory } from '../pe/registry.ts';
import { generatorSource, windowSource, type BatchSource } from '../train/source.ts';
import { Rng } from '../util/rng.ts';
import {
  bitsPerByte,
  gradeTask,
  positionReport,
  reloadWithPeOptions,
  startPositionReport,
  studyModelConfig,
  trainModel,
  unlessTooLong,
  type Outcome,
  type StudyEnv,
  type TrainSummary,
} from './cell.ts';
import {
  peChoice,
  type CorpusName,
  type Experiment,
  type ModelShape,
  type PeChoice,
  type PrecisionFormat,
  type StudyPlan,
  type TrainBudget,
} from './plan.ts';
import { cellKey, ResultStore, type CellRecord } from './store.ts';
import type { StudyCell } from './progress.ts';
import { FLIPFLOP_MIXES, FLIPFLOP_TASK, flipFlopSequence, type FlipFlopMix } from './tasks/flipflop.ts';
import { RECALL_TASK, recallSequence } from './tasks/recall.ts';
import { versions, type Versions } from './versions.ts';

interface TrainedCellBase {
  encoding: string;
  pe: PeChoice;
  seed: number;
  trainLength: number;
  model: ModelShape;
  budget: TrainBudget;
}

export interface LmConfig extends TrainedCellBase {
  experiment: 'lm';
  corpus: CorpusName;
  multipliers: number[];
  evalBytes: number;
  /**
   * 'bf16': trained (and scored) in bf16 mixed precision. Absent for fp32, so the fp32 cells keep the keys they
   * were stored under (an absent key is left out of the hash, store.ts).
   */
  precision?: 'bf16';
}

export type LengthEval<T> = { multiplier: number; length: number } & Outcome<T>;

export interface LmResult {
  /** The training and scoring precision (absent in cells stored before the field existed: those are fp32). */
  precision?: Precision;
  train: TrainSummary;
  data: { train: string; eval: string; trainBytes: number; evalBytes: number; trainSha256: string; evalSha256: string };
  /** Held-out bits per byte per length, scored in the cell's precision (bf16 cells: under the same autocast). */
  evals: LengthEval<{ bitsPerByte: number; scored: number }>[];
  /**
   * bf16 cells only: the same trained weights scored in fp32, so a gap to the fp32 cell splits into what bf16
   * training changed and what bf16 scoring adds.
   */
  fp32Evals?: LengthEval<{ bitsPerByte: number; scored: number }>[];
  /** Trained HyPE tau/mu (hype-learned; in units of their initial magnitude), by parameter name. */
  hypeParams?: Record<string, number[]>;
  positionParams?: PositionParams;
  backend: string;
  versions: Versions;
  evalSeconds: number;
}

/**
 * The trained position parameters of encodings that have them (PositionalEncoding.report), by name with the block
 * prefix, e.g. blocks.0.attn.pe.slope (ALiBi learned, HyPE), .curvature (HyPE: mu * L_extra), .gate.sMean (FoX
 * and gated HyPE gate summaries; gate statistics over the cell's evaluation passes). Absent in cells computed before
 * the field existed and for encodings without trained position parameters.
 */
export type PositionParams = Record<string, number[]>;

export interface FlipflopConfig extends TrainedCellBase {
  experiment: 'flipflop';
  /** The byte format of the task (part of the cell key, so a format change starts new cells). */
  task: typeof FLIPFLOP_TASK;
  evalSequences: number;
}

export interface FlipflopResult {
  train: TrainSummary;
  mixes: Record<FlipFlopMix, { pIgnore: number; errors: number; graded: number; errorRate: number }>;
  positionParams?: PositionParams;
  backend: string;
  versions: Versions;
  evalSeconds: number;
}

export interface RecallConfig extends TrainedCellBase {
  experiment: 'recall';
  task: typeof RECALL_TASK;
  multipliers: number[];
  evalSequences: number;
}

export interface RecallResult {
  train: TrainSummary;
  evals: LengthEval<{ correct: number; graded: number; accuracy: number }>[];
  positionParams?: PositionParams;
  backend: string;
  versions: Versions;
  evalSeconds: number;
}

export interface PrecisionConfig {
  experiment: 'precision';
  /** The lm cell whose trained model is re-evaluated. */
  lm: LmConfig;
  format: PrecisionFormat;
}

export interface PrecisionResult {
  evals: LengthEval<{ bitsPerByte: number; scored: number }>[];
  /**
   * Split formats only: the same reloaded model evaluated in fp32 right before, so their cost is paired with the
   * very model they ran on even when the lm run had to be re-trained for this cell.
   */
  fp32Evals?: LengthEval<{ bitsPerByte: number; scored: number }>[];
  backend: string;
  versions: Versions;
  evalSeconds: number;
}

export type AnyRecord = CellRecord<
  LmConfig | FlipflopConfig | RecallConfig | PrecisionConfig,
  LmResult | FlipflopResult | RecallResult | PrecisionResult
>;

export function storeFor<C, R>(
  outDir: string,
  experiment: Experiment,
  log?: (line: string) => void,
): ResultStore<C, R> {
  return new ResultStore<C, R>(join(outDir, experiment), log);
}

// ---------------------------------------------------------------------------------------------------- data

export interface LmData {
  trainName: string;
  evalName: string;
  train: Uint8Array;
  eval: Uint8Array;
  trainSha256: string;
  evalSha256: string;
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function readBytes(env: StudyEnv, rel: string): Uint8Array {
  const path = resolve(env.dataDir, rel);
  try {
    return new Uint8Array(readFileSync(path));
  } catch {
    throw new HypeError(
      'io',
      `cannot read '${join(env.dataDir, rel)}'; pass the folder holding tinyshakespeare/ and wikitext-2/ with --data-dir`,
    );
  }
}

/**
 * Tiny Shakespeare: the first 90% trains, the last 10% is held out (the trainer's default split). WikiText-2: only
 * its validation and test files are available here, so the model trains on valid.txt and is scored on test.txt.
 */
export function loadLmData(env: StudyEnv, corpus: CorpusName): LmData {
  if (corpus === 'tinyshakespeare') {
    const all = readBytes(env, 'tinyshakespeare/input.txt');
    const cut = all.length - Math.floor(all.length * 0.1);
    const train = all.subarray(0, cut);
    const ev = all.subarray(cut);
    return {
      trainName: 'tinyshakespeare/input.txt (first 90%)',
      evalName: 'tinyshakespeare/input.txt (last 10%)',
      train,
      eval: ev,
      trainSha256: sha256(train),
      evalSha256: sha256(ev),
    };
  }
  const train = readBytes(env, 'wikitext-2/valid.txt');
  const ev = readBytes(env, 'wikitext-2/test.txt');
  return {
    trainName: 'wikitext-2/valid.txt',
    evalName: 'wikitext-2/test.txt',
    train,
    eval: ev,
    trainSha256: sha256(train),
    evalSha256: sha256(ev),
  };
}

// ---------------------------------------------------------------------------------------------------- cells

export function lmConfigs(plan: StudyPlan, encodings: readonly string[]): LmConfig[] {
  const bf16 = plan.lm.precision === 'bf16';
  const out: LmConfig[] = [];
  for (const seed of plan.seeds)
    for (const corpus of plan.lm.corpora)
      for (const encoding of encodings)
        out.push({
          experiment: 'lm',
          corpus,
          encoding,
          pe: bf16 ? bf16PeChoice(encoding) : peChoice(encoding),
          seed,
          trainLength: plan.lm.trainLength,
          model: plan.lm.model,
          budget: plan.lm.budget,
          multipliers: plan.lm.multipliers,
          evalBytes: plan.lm.evalBytes,
          ...(bf16 ? { precision: 'bf16' as const } : {}),
        });
  return out;
}

/**
 * A study encoding as it trains under bf16 mixed precision: unchanged where its position terms survive bf16
 * operands (no position, kernel routes with an fp32 table); a concat route gets columns built for bf16
 * (precision 'bf16': hi/lo split columns, SPEC section 8), never its fp32 columns rounded. One that its encoding
 * still refuses (EncodingFactory.bf16Refusal) is refused here, before any training.
 */
export function bf16PeChoice(study: string): PeChoice {
  const pe = peChoice(study);
  const refusal = findEncodingFactory(pe.name)?.bf16Refusal;
  if (!refusal || refusal(pe.options) === null) return pe;
  const split: PeChoice = { name: pe.name, options: { ...pe.options, precision: 'bf16' } };
  const why = refusal(split.options);
  check(why === null, 'argument', () => `study encoding '${study}' cannot train in bf16: ${why}`);
  return split;
}

/** The training run folder (under workDir) of a cell that trains a model. */
export function runNameOf(c: LmConfig | FlipflopConfig | RecallConfig): string {
  return c.experiment === 'lm'
    ? `lm-${c.corpus}-${c.encoding}-s${c.seed}${c.precision ? `-${c.precision}` : ''}-${cellKey(c)}`
    : `${c.experiment}-${c.encoding}-s${c.seed}-${cellKey(c)}`;
}
const lmRunName = (c: LmConfig) => runNameOf(c);

async function trainLm(env: StudyEnv, c: LmConfig, data: LmData) {
  const config = studyModelConfig(c.model, c.pe, c.trainLength, c.seed);
  const source = windowSource(data.trainName, data.train, data.trainSha256);
  return trainModel(env, lmRunName(c), config, c.budget, c.seed, source, lmLabel(c), c.precision ?? 'fp32');
}

/** "lm tinyshakespeare alibi seed 1", with " bf16" for a bf16 cell. */
const lmLabel = (c: LmConfig) => `lm ${c.corpus} ${c.encoding} seed ${c.seed}${c.precision ? ` ${c.precision}` : ''}`;

function evalData(data: LmData, evalBytes: number): Uint8Array {
  return evalBytes > 0 ? data.eval.subarray(0, Math.min(evalBytes, data.eval.length)) : data.eval;
}

export async function runLm(env: StudyEnv, outDir: string, configs: readonly LmConfig[]) {
  const store = storeFor<LmConfig, LmResult>(outDir, 'lm', env.log);
  const cache = new Map<CorpusName, LmData>();
  const dataOf = (c: CorpusName) => cache.get(c) ?? cache.set(c, loadLmData(env, c)).get(c)!;
  return store.runAll(configs, async (c, i, pending) => {
    cellStarted(env, c, lmLabel(c), i, pending);
    return computeLm(env, c, dataOf(c.corpus));
  });
}

/** One lm cell: train (or pick up) its model, then score the held-out split at each length. */
export async function computeLm(env: StudyEnv, c: LmConfig, data: LmData): Promise<LmResult> {
  const { model, train } = await trainLm(env, c, data);
  const t0 = performance.now();
  startPositionReport(model);
  const ev = evalData(data, c.evalBytes);
  const score = (m: Transformer<unknown, unknown>) =>
    lengthEvals(c.multipliers, c.trainLength, (length) => bitsPerByte(m, ev, length));
  const evals = await score(model); // the run's model computes in the run's precision
  env.log(`${lmLabel(c)}: ${describeBpb(evals)}`);
  // A bf16 cell's weights (fp32 masters) scored again on the plain backend.
  const fp32Evals = c.precision ? await score(reloadWithPeOptions(train.runDir, env.backend, {})) : undefined;
  if (fp32Evals) env.log(`${lmLabel(c)}, scored in fp32: ${describeBpb(fp32Evals)}`);
  const positionParams = positionReport(model);
  const hypeParams: Record<string, number[]> = {};
  for (const p of model.parameters()) {
    if (/(^|\.)hype\.(tau|mu)$/.test(p.name)) hypeParams[p.name] = Array.from(await env.backend.read(p.data));
  }
  return {
    precision: c.precision ?? 'fp32',
    train,
    data: {
      train: data.trainName,
      eval: data.evalName,
      trainBytes: data.train.length,
      evalBytes: ev.length,
      trainSha256: data.trainSha256,
      evalSha256: data.evalSha256,
    },
    evals,
    ...(fp32Evals ? { fp32Evals } : {}),
    ...(Object.keys(hypeParams).length > 0 ? { hypeParams } : {}),
    ...(positionParams ? { positionParams } : {}),
    backend: env.backend.name,
    versions: versions(),
    evalSeconds: (performance.now() - t0) / 1000,
  };
}

/**
 * One evaluation per length multiplier, in order (a device backend runs one at a time); a length an encoding cannot
 * represent becomes "cannot evaluate" (unlessTooLong).
 */
async function lengthEvals<T extends object>(
  multipliers: readonly number[],
  trainLength: number,
  f: (length: number) => Promise<T>,
): Promise<LengthEval<T>[]> {
  const out: LengthEval<T>[] = [];
  for (const m of multipliers) {
    const length = m * trainLength;
    out.push({ multiplier: m, length, ...(await unlessTooLong(() => f(length))) });
  }
  return out;
}

/** "held-out bits per byte at length 64: 3.176, 128: 3.168, ...". */
function describeBpb(evals: LengthEval<{ bitsPerByte: number }>[]): string {
  const each = evals.map((e) => `${e.length}: ${e.ok ? e.bitsPerByte.toFixed(3) : 'cannot evaluate'}`);
  return `held-out bits per byte at length ${each.join(', ')}`;
}

/** Announces a cell: through the study's progress (place in the run, time left) or, without one, a plain line. */
function cellStarted(env: StudyEnv, c: StudyCell, label: string, i: number, pending: number): void {
  if (env.progress) env.progress.cellStarted(c, label);
  else env.log(`[${i + 1}/${pending}] ${label}`);
}

export function precisionConfigs(plan: StudyPlan, encodings: readonly string[]): PrecisionConfig[] {
  const chosen = plan.precision.encodings.filter((e) => encodings.includes(e));
  // The fp32 lm models are the ones re-evaluated, whatever precision the plan's own lm cells train in.
  const lmPlan = { ...plan, lm: { ...plan.lm, corpora: [plan.precision.corpus], precision: undefined } };
  const out: PrecisionConfig[] = [];
  for (const lm of lmConfigs(lmPlan, chosen))
    for (const format of plan.precision.formats) out.push({ experiment: 'precision', lm, format });
  return out;
}

/**
 * The HyPE options a precision format stands for. Plain bf16/fp16 name their columns explicitly, so the cells
 * recorded before split columns became the half-precision default keep their meaning.
 */
export function precisionPeOptions(format: PrecisionFormat): Record<string, unknown> {
  switch (format) {
    case 'bf16-kernel':
      return { route: 'kernel', format: 'bf16' };
    case 'bf16':
    case 'fp16':
      return { format, columns: 'plain' };
    case 'bf16-split':
      return { format: 'bf16', columns: 'split' };
    case 'fp16-split':
      return { format: 'fp16', columns: 'split' };
    case 'fp32':
      return { format: 'fp32' };
  }
}

/**
 * Re-evaluates the lm model of `c.lm` with its attention operands held as `c.format` says (PrecisionFormat;
 * emulated: values rounded, arithmetic and accumulation in fp32). The model is the lm cell's run if it exists;
 * otherwise it is trained here exactly as the lm cell would (same seed, same data, same steps).
 */
export async function runPrecision(env: StudyEnv, outDir: string, configs: readonly PrecisionConfig[]) {
  const store = storeFor<PrecisionConfig, PrecisionResult>(outDir, 'precision', env.log);
  return store.runAll(configs, async (c, i, pending) => {
    cellStarted(env, c, `precision ${c.lm.encoding} seed ${c.lm.seed} ${c.format}`, i, pending);
    return computePrecision(env, c, loadLmData(env, c.lm.corpus));
  });
}

/** One precision cell: the lm cell's model (trained here if missing) evaluated with rounded operands. */
export async function computePrecision(env: StudyEnv, c: PrecisionConfig, data: LmData): Promise<PrecisionResult> {
  const { train } = await trainLm(env, c.lm, data);
  const t0 = performance.now();
  const ev = evalData(data, c.lm.evalBytes);
  const evaluate = (options: Record<string, unknown>) => {
    const model = reloadWithPeOptions(train.runDir, env.backend, options);
    return lengthEvals(c.lm.multipliers, c.lm.trainLength, (length) => bitsPerByte(model, ev, length));
  };
  const split = c.format === 'bf16-split' || c.format === 'fp16-split';
  const fp32Evals = split ? await evaluate({ format: 'fp32' }) : undefined;
  const evals = await evaluate(precisionPeOptions(c.format));
  env.log(`precision ${c.lm.encoding} ${c.format}: ${describeBpb(evals)}`);
  const seconds = (performance.now() - t0) / 1000;
  return { evals, fp32Evals, backend: env.backend.name, versions: versions(), evalSeconds: seconds };
}

function taskConfigs<K extends 'flipflop' | 'recall'>(plan: StudyPlan, encodings: readonly string[], k: K) {
  const p = plan[k];
  const out: (TrainedCellBase & { evalSequences: number })[] = [];
  for (const seed of plan.seeds)
    for (const encoding of encodings)
      out.push({
        encoding,
        pe: peChoice(encoding),
        seed,
        trainLength: p.trainLength,
        model: p.model,
        budget: p.budget,
        evalSequences: p.evalSequences,
      });
  return out;
}

export function flipflopConfigs(plan: StudyPlan, encodings: readonly string[]): FlipflopConfig[] {
  return taskConfigs(plan, encodings, 'flipflop').map((c) => ({ experiment: 'flipflop', task: FLIPFLOP_TASK, ...c }));
}

export function recallConfigs(plan: StudyPlan, encodings: readonly string[]): RecallConfig[] {
  return taskConfigs(plan, encodings, 'recall').map((c) => ({
    experiment: 'recall',
    task: RECALL_TASK,
    ...c,
    multipliers: plan.recall.multipliers,
  }));
}

/** Flip-flop training data: the in-distribution mix. */
const flipflopSource = () =>
  generatorSource(`flipflop:${FLIPFLOP_TASK}:p_i=${FLIPFLOP_MIXES.id}`, (rng, n) =>
    flipFlopSequence(rng, Math.max(3, n), FLIPFLOP_MIXES.id).bytes.subarray(0, n),
  );

/** Evaluation sets use their own fixed seeds, shared by every cell, so all encodings face the same sequences. */
const EVAL_SEED = 0x5eed;

export async function runFlipflop(env: StudyEnv, outDir: string, configs: readonly FlipflopConfig[]) {
  const store = storeFor<FlipflopConfig, FlipflopResult>(outDir, 'flipflop', env.log);
  return store.runAll(configs, async (c, i, pending) => {
    cellStarted(env, c, `flipflop ${c.encoding} seed ${c.seed}`, i, pending);
    return computeFlipflop(env, c);
  });
}

/**
 * What a flip-flop or recall cell does around its grading: train on `source` (resuming a run of the same name),
 * grade the trained model with the encodings' position reports collecting over the grading passes, and return the
 * grading's fields with those every task cell has.
 */
async function taskCell<G extends object>(
  env: StudyEnv,
  c: FlipflopConfig | RecallConfig,
  source: BatchSource,
  grade: (model: Transformer<unknown, unknown>) => Promise<G>,
): Promise<G & Omit<FlipflopResult, 'mixes'>> {
  const config = studyModelConfig(c.model, c.pe, c.trainLength, c.seed);
  const label = `${c.experiment} ${c.encoding} seed ${c.seed}`;
  const { model, train } = await trainModel(env, runNameOf(c), config, c.budget, c.seed, source, label);
  const t0 = performance.now();
  startPositionReport(model);
  const graded = await grade(model);
  const positionParams = positionReport(model);
  return {
    train,
    ...graded,
    ...(positionParams ? { positionParams } : {}),
    backend: env.backend.name,
    versions: versions(),
    evalSeconds: (performance.now() - t0) / 1000,
  };
}

/** One flip-flop cell: train on the in-distribution mix, grade the read bits of each mix. */
export async function computeFlipflop(env: StudyEnv, c: FlipflopConfig): Promise<FlipflopResult> {
  return taskCell(env, c, flipflopSource(), async (model) => {
    const mixes = {} as FlipflopResult['mixes'];
    for (const [j, mix] of (Object.keys(FLIPFLOP_MIXES) as FlipFlopMix[]).entries()) {
      const rng = new Rng(EVAL_SEED + j);
      const p = FLIPFLOP_MIXES[mix];
      const seqs = Array.from({ length: c.evalSequences }, () => flipFlopSequence(rng, c.trainLength + 1, p));
      const g = await gradeTask(model, seqs, c.trainLength);
      mixes[mix] = { pIgnore: p, errors: g.graded - g.correct, graded: g.graded, errorRate: 1 - g.correct / g.graded };
    }
    env.log(
      `flipflop ${c.encoding} seed ${c.seed}: error on the read bits ` +
        Object.entries(mixes)
          .map(([m, r]) => `${m} ${(100 * r.errorRate).toFixed(2)}% (${r.errors}/${r.graded})`)
          .join(', '),
    );
    return { mixes };
  });
}

const recallSource = () => generatorSource(`recall:${RECALL_TASK}`, (rng, n) => recallSequence(rng, n).bytes);

export async function runRecall(env: StudyEnv, outDir: string, configs: readonly RecallConfig[]) {
  const store = storeFor<RecallConfig, RecallResult>(outDir, 'recall', env.log);
  return store.runAll(configs, async (c, i, pending) => {
    cellStarted(env, c, `recall ${c.encoding} seed ${c.seed}`, i, pending);
    return computeRecall(env, c);
  });
}

/** One recall cell: train on recall sequences, grade the answers at each length. */
export async function computeRecall(env: StudyEnv, c: RecallConfig): Promise<RecallResult> {
  return taskCell(env, c, recallSource(), async (model) => {
    const evals = await lengthEvals(c.multipliers, c.trainLength, async (length) => {
      const rng = new Rng(EVAL_SEED + length);
      const seqs = Array.from({ length: c.evalSequences }, () => recallSequence(rng, length + 1));
      const g = await gradeTask(model, seqs, length);
      return { ...g, accuracy: g.correct / g.graded };
    });
    env.log(
      `recall ${c.encoding} seed ${c.seed}: answer accuracy at length ` +
        evals.map((e) => `${e.length}: ${e.ok ? (100 * e.accuracy).toFixed(1) + '%' : 'cannot evaluate'}`).join(', '),
    );
    return { evals };
  });
}
