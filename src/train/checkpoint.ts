/**
 * Checkpoints: everything needed to continue a run bit for bit, never half-written.
 *
 * Layout inside a run folder:
 *   checkpoints/step-00000100/model.safetensors      weights (names as Transformer.parameters(); metadata: config)
 *   checkpoints/step-00000100/optimizer.safetensors  AdamW moments m.<name>, v.<name> in each parameter's dtype
 *   checkpoints/step-00000100/state.json             step, RNG state, model + train config, corpus hash,
 *                                                    and the size and SHA-256 of both tensor files
 *   checkpoints/latest.json                          {"step", "dir"}: the commit point
 *
 * A checkpoint is written into a temporary folder, flushed, renamed into place, and only then published by
 * atomically replacing latest.json; a crash at any moment leaves the previous checkpoint intact and current.
 * Loading verifies the hashes, the safetensors structure, and that names, shapes and dtypes match the model.
 * Tensors leave the model's backend here: host backends are read in place (saveCheckpoint), a device backend is
 * read back first (saveCheckpointAsync); restoring uploads into the backend's tensors.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Backend } from '../backend/backend.ts';
import { HypeError, check } from '../errors.ts';
import { decodeSafetensors, encodeSafetensors, type SafeFile, type TensorToWrite } from '../interop/safetensors.ts';
import { canonicalJson, parseModelConfig, type ModelConfig } from '../model/config.ts';
import type { Param } from '../pe/encoding.ts';
import type { FloatArray } from '../tensor.ts';
import { syncDirectory, writeFileAtomic } from '../util/atomic-file.ts';
import type { Rng } from '../util/rng.ts';
import { parseTrainConfig, type TrainConfig } from './config.ts';
import type { AdamW } from './optimizer.ts';

export const CHECKPOINT_FORMAT = 'hype-checkpoint-1';

/**
 * What a checkpoint needs of a model: its JSON config, its backend and its named parameters. The language model
 * (Transformer, config ModelConfig) and the vision model (VisionTransformer, VisionConfig) both are one.
 */
export interface CheckpointModel<T = FloatArray, I = Int32Array, M = ModelConfig> {
  readonly config: M;
  readonly backend: Backend<T, I>;
  parameters(): readonly Param<T>[];
}

/** Parses a saved model config (refusing what it does not understand); the language model's by default. */
export type ModelConfigParser<M> = (raw: unknown) => M;

const parseSavedModelConfig: ModelConfigParser<ModelConfig> = (raw) => parseModelConfig(raw, { saved: true });
const defaultParser = <M>() => parseSavedModelConfig as ModelConfigParser<unknown> as ModelConfigParser<M>;

export interface CheckpointState<M = ModelConfig> {
  format: string;
  step: number;
  optimizerStep: number;
  rng: { words: number[]; spare: number | null };
  model: M;
  train: TrainConfig;
  corpus: { bytes: number; sha256: string };
  backend: string;
  files: Record<string, { bytes: number; sha256: string }>;
}

export interface LoadedCheckpoint<M = ModelConfig> {
  dir: string;
  state: CheckpointState<M>;
  weights: SafeFile;
  optimizer: SafeFile;
}

const MODEL_FILE = 'model.safetensors';
const OPTIMIZER_FILE = 'optimizer.safetensors';
const STATE_FILE = 'state.json';
const LATEST = 'latest.json';

export function checkpointsDir(runDir: string): string {
  return join(runDir, 'checkpoints');
}

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

function paramTensors<T>(params: readonly Param<T>[], arrays: readonly FloatArray[], prefix = ''): TensorToWrite[] {
  return params.map((p, i) => ({ name: prefix + p.name, shape: p.shape, data: arrays[i]! }));
}

export interface SaveArgs<T = FloatArray, I = Int32Array, M = ModelConfig> {
  model: CheckpointModel<T, I, M>;
  optimizer: AdamW<T, I>;
  rng: Rng;
  step: number;
  train: TrainConfig;
  corpus: { bytes: number; sha256: string };
}

/** Host copies of what a checkpoint holds: the parameters, then the AdamW moments, in parameter order. */
interface HostState {
  params: FloatArray[];
  m: FloatArray[];
  v: FloatArray[];
}

/**
 * Writes and publishes a checkpoint for `step`; returns its folder. Older ones beyond keepCheckpoints are removed.
 * Host backends only (their tensors are read in place); saveCheckpointAsync serves every backend.
 */
export function saveCheckpoint<T, I, M>(runDir: string, a: SaveArgs<T, I, M>): string {
  const be = a.model.backend;
  const view = (t: T): FloatArray => {
    const v = be.hostView(t);
    check(
      v !== null,
      'argument',
      `backend '${be.name}' keeps its tensors off the host; save the checkpoint with saveCheckpointAsync`,
    );
    return v;
  };
  const params = a.model.parameters();
  return writeCheckpoint(runDir, a, {
    params: params.map((p) => view(p.data)),
    m: a.optimizer.m.map(view),
    v: a.optimizer.v.map(view),
  });
}

/** saveCheckpoint on any backend: every parameter and moment is read back first (what leaves the backend). */
export async function saveCheckpointAsync<T, I, M>(runDir: string, a: SaveArgs<T, I, M>): Promise<string> {
  const be = a.model.backend;
  const read = (ts: readonly T[]) => Promise.all(ts.map((t) => be.read(t)));
  const host = {
    params: await read(a.model.parameters().map((p) => p.data)),
    m: await read(a.optimizer.m),
    v: await read(a.optimizer.v),
  };
  return writeCheckpoint(runDir, a, host);
}

function writeCheckpoint<T, I, M>(runDir: string, a: SaveArgs<T, I, M>, host: HostState): string {
  const root = checkpointsDir(runDir);
  mkdirSync(root, { recursive: true });
  const name = `step-${String(a.step).padStart(8, '0')}`;
  const tmp = join(root, `.${name}.tmp-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  const params = a.model.parameters();
  const modelBytes = encodeSafetensors(paramTensors(params, host.params), {
    format: CHECKPOINT_FORMAT,
    config: JSON.stringify(a.model.config),
    step: String(a.step),
  });
  const optBytes = encodeSafetensors([...paramTensors(params, host.m, 'm.'), ...paramTensors(params, host.v, 'v.')]);
  const state: CheckpointState<M> = {
    format: CHECKPOINT_FORMAT,
    step: a.step,
    optimizerStep: a.optimizer.step,
    rng: a.rng.state(),
    model: a.model.config,
    train: a.train,
    corpus: a.corpus,
    backend: a.model.backend.name,
    files: {
      [MODEL_FILE]: { bytes: modelBytes.length, sha256: sha256(modelBytes) },
      [OPTIMIZER_FILE]: { bytes: optBytes.length, sha256: sha256(optBytes) },
    },
  };
  writeFileAtomic(join(tmp, MODEL_FILE), modelBytes);
  writeFileAtomic(join(tmp, OPTIMIZER_FILE), optBytes);
  writeFileAtomic(join(tmp, STATE_FILE), JSON.stringify(state, null, 1) + '\n');
  const final = join(root, name);
  // A folder of this name can only be a leftover of an earlier attempt at the same step (say, a run killed after
  // the rename but before publishing); latest.json never points at it unless it is complete, so replace it.
  rmSync(final, { recursive: true, force: true });
  renameSync(tmp, final);
  syncDirectory(root);
  writeFileAtomic(join(root, LATEST), JSON.stringify({ step: a.step, dir: name }) + '\n');
  pruneCheckpoints(root, name, a.train.keepCheckpoints);
  return final;
}

function pruneCheckpoints(root: string, current: string, keep: number): void {
  const entries = readdirSync(root);
  const steps = entries.filter((e) => /^step-\d+$/.test(e) && e !== current).sort();
  const excess = steps.length - (keep - 1);
  for (let i = 0; i < excess; i++) rmSync(join(root, steps[i]!), { recursive: true, force: true });
  for (const e of entries) {
    // Temporary folders and files of another (killed) process: never published, safe to remove.
    if (e.startsWith('.') && e.includes('.tmp-') && !e.includes(`.tmp-${process.pid}`)) {
      rmSync(join(root, e), { recursive: true, force: true });
    }
  }
}

export function hasCheckpoint(runDir: string): boolean {
  return existsSync(join(checkpointsDir(runDir), LATEST));
}

/** The checkpoint folders of a run (step-NNNNNNNN), oldest first; those not published may be incomplete. */
export function listCheckpoints(runDir: string): string[] {
  const root = checkpointsDir(runDir);
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((e) => /^step-\d+$/.test(e))
    .sort();
}

/**
 * A path naming a run folder, or one of its checkpoints (<run>/checkpoints/step-NNNNNNNN), as the run folder and
 * the checkpoint's name (undefined: the latest).
 */
export function splitCheckpointPath(path: string): { runDir: string; checkpoint?: string } {
  const name = basename(path);
  const parent = dirname(path);
  if (/^step-\d+$/.test(name) && basename(parent) === 'checkpoints')
    return { runDir: dirname(parent), checkpoint: name };
  return { runDir: path };
}

function refuse(where: string, problem: string, runDir: string, current?: string): never {
  const others = listCheckpoints(runDir).filter((c) => c !== current);
  const way =
    others.length > 0
      ? `resume from another with --resume ${join(checkpointsDir(runDir), others[others.length - 1]!)} ` +
        `(available: ${others.join(', ')}), or start a new run`
      : 'no other checkpoint is left in this run; start a new run';
  throw new HypeError('checkpoint', `checkpoint ${where} ${problem}; it is corrupt or from another version (${way})`);
}

/**
 * Reads the published checkpoint of a run (or the one in folder checkpoints/<name>) and verifies its integrity
 * (not yet its fit to a model).
 */
export function loadCheckpoint<M = ModelConfig>(
  runDir: string,
  name?: string,
  parseModel: ModelConfigParser<M> = defaultParser<M>(),
): LoadedCheckpoint<M> {
  const root = checkpointsDir(runDir);
  const latestPath = join(root, LATEST);
  let latest: { step?: unknown; dir?: unknown };
  if (name !== undefined) {
    check(
      /^step-\d+$/.test(name) && existsSync(join(root, name)),
      'io',
      () => `no checkpoint '${name}' in '${runDir}'; available: ${listCheckpoints(runDir).join(', ') || 'none'}`,
    );
    latest = { dir: name, step: Number(name.slice(5)) };
  } else {
    if (!existsSync(latestPath)) {
      throw new HypeError(
        'io',
        `no checkpoint in '${runDir}' (missing checkpoints/${LATEST}); pass a run folder written by 'hype train'`,
      );
    }
    try {
      latest = JSON.parse(readFileSync(latestPath, 'utf8'));
    } catch {
      refuse(`pointer '${latestPath}'`, 'is not valid JSON', runDir);
    }
    if (
      typeof latest !== 'object' ||
      latest === null ||
      typeof latest.dir !== 'string' ||
      !/^step-\d+$/.test(latest.dir)
    ) {
      refuse(`pointer '${latestPath}'`, 'names no checkpoint folder', runDir);
    }
  }
  const dir = join(root, latest.dir as string);
  const current = latest.dir as string;
  const fail: (where: string, problem: string) => never = (where, problem) => refuse(where, problem, runDir, current);
  let state: CheckpointState<M>;
  try {
    state = JSON.parse(readFileSync(join(dir, STATE_FILE), 'utf8'));
  } catch (err) {
    fail(`'${dir}'`, `has an unreadable ${STATE_FILE} (${(err as Error).message})`);
  }
  if (state.format !== CHECKPOINT_FORMAT) fail(`'${dir}'`, `has format ${JSON.stringify(state.format)}`);
  if (!Number.isInteger(state.step) || state.step !== latest.step) {
    fail(`'${dir}'`, `says step ${state.step} but ${LATEST} says ${latest.step}`);
  }
  const files: Record<string, SafeFile> = {};
  for (const f of [MODEL_FILE, OPTIMIZER_FILE]) {
    const want = state.files?.[f];
    if (!want) fail(`'${dir}'`, `does not list ${f}`);
    const path = join(dir, f);
    if (!existsSync(path)) fail(`'${dir}'`, `is missing ${f}`);
    const size = statSync(path).size;
    if (size !== want.bytes) fail(`file '${path}'`, `has ${size} bytes, expected ${want.bytes}`);
    const bytes = readFileSync(path);
    if (sha256(bytes) !== want.sha256) fail(`file '${path}'`, 'fails its SHA-256 check');
    files[f] = decodeSafetensors(bytes, path);
  }
  try {
    state.model = parseModel(state.model);
    state.train = parseTrainConfig(state.train);
  } catch (err) {
    fail(`'${dir}'`, `holds an invalid configuration (${(err as Error).message})`);
  }
  return { dir, state, weights: files[MODEL_FILE]!, optimizer: files[OPTIMIZER_FILE]! };
}

/** Copies (uploads) tensors into params' backend tensors, refusing any difference in names, shapes or dtypes. */
function restoreInto<T, I>(
  be: Backend<T, I>,
  file: SafeFile,
  params: readonly Param<T>[],
  targets: readonly T[],
  prefix: string,
  what: string,
) {
  const expected = new Set(params.map((p) => prefix + p.name));
  for (const name of file.tensors.keys()) {
    if (!expected.has(name)) {
      throw new HypeError('checkpoint', `${what} has a tensor '${name}' the model does not (mismatched checkpoint)`);
    }
  }
  params.forEach((p, i) => {
    const name = prefix + p.name;
    const t = file.tensors.get(name);
    check(t !== undefined, 'checkpoint', `${what} lacks tensor '${name}' (mismatched checkpoint)`);
    check(
      t.shape.length === p.shape.length && t.shape.every((s, j) => s === p.shape[j]),
      'checkpoint',
      `${what} tensor '${name}' has shape [${t.shape}], the model expects [${p.shape}] (mismatched checkpoint)`,
    );
    const target = targets[i]!;
    const want = be.dtypeOf(target) === 'float64' ? 'F64' : 'F32';
    check(
      t.dtype === want,
      'checkpoint',
      `${what} tensor '${name}' is ${t.dtype}, the model keeps ${want} (mismatched checkpoint)`,
    );
    be.upload(t.data, target);
  });
}

/** Loads checkpoint weights into a model built from the same configuration. */
export function restoreWeights<T, I, M = ModelConfig>(
  model: CheckpointModel<T, I, M>,
  weights: SafeFile,
  what = 'checkpoint',
  parseModel: ModelConfigParser<M> = defaultParser<M>(),
): void {
  const saved = weights.metadata.config;
  if (saved !== undefined) {
    let cfg: M;
    try {
      cfg = parseModel(JSON.parse(saved));
    } catch {
      throw new HypeError('checkpoint', `${what} carries an unreadable model config in its metadata`);
    }
    check(
      canonicalJson(cfg) === canonicalJson(model.config),
      'checkpoint',
      `${what} was trained with a different model configuration (mismatched checkpoint)`,
    );
  }
  const params = model.parameters();
  restoreInto(
    model.backend,
    weights,
    params,
    params.map((p) => p.data),
    '',
    what,
  );
}

export function restoreOptimizer<T, I>(opt: AdamW<T, I>, file: SafeFile, optimizerStep: number): void {
  const params = opt.params;
  const names = new Set([...params.map((p) => 'm.' + p.name), ...params.map((p) => 'v.' + p.name)]);
  for (const name of file.tensors.keys()) {
    check(names.has(name), 'checkpoint', `optimizer state has an unexpected tensor '${name}' (mismatched checkpoint)`);
  }
  const only = (prefix: string): SafeFile => ({
    metadata: {},
    tensors: new Map([...file.tensors].filter(([n]) => n.startsWith(prefix))),
  });
  restoreInto(opt.backend, only('m.'), params, opt.m, 'm.', 'optimizer state');
  restoreInto(opt.backend, only('v.'), params, opt.v, 'v.', 'optimizer state');
  opt.step = optimizerStep;
}
