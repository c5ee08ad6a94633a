/**
 * `hype train --pe <name> [options]`: trains a byte-level model on a text file and writes a run folder
 * (run.json, losses.jsonl, checkpoints/). `--resume <run>` continues a run from its latest checkpoint with the
 * same losses an uninterrupted run would have produced (`--resume <run>/checkpoints/step-N`: from that one; a run
 * cut off before its first checkpoint starts over). Ctrl-C or SIGTERM finishes the current step, writes a
 * checkpoint and exits; a second one exits at once (the previous checkpoint stays valid).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { type Command, Option } from 'commander';
import type { Backend } from '../backend/backend.ts';
import { loadBackend } from '../backend/index.ts';
import { HypeError } from '../errors.ts';
import { parseModelConfig, type ModelConfig } from '../model/config.ts';
import { parseEncodingOptions } from '../pe/options.ts';
import { encodingNames, parseEncodingSpec } from '../pe/registry.ts';
import type { DType } from '../tensor.ts';
import type { TrainConfig } from '../train/config.ts';
import { checkpointsDir, splitCheckpointPath } from '../train/checkpoint.ts';
import { DEFAULT_CORPUS } from '../train/corpus.ts';
import { DEFAULT_EVAL_BYTES, TrainingRun } from '../train/trainer.ts';
import { Claim, claimStaleMs } from '../util/claim.ts';
import { checkFolderPath, readJsonFile } from '../util/fs-safe.ts';
import { progressBar } from './progress.ts';

/**
 * The compute backend a command asked for: 'auto' (native when built, else reference; always reference for a
 * float64 model, which the fp32 native kernels refuse), 'native' or 'reference'; `threads` (a --threads flag's
 * text) sets the native worker pool.
 */
export async function chooseBackend(name: string, threads?: string, dtype?: DType): Promise<Backend> {
  if (name === 'webgpu') {
    throw new HypeError(
      'argument',
      '--backend webgpu runs `hype train`, `hype eval`, `hype generate`, `hype study` and `hype worker` only (this ' +
        'command reads host arrays); use --backend native or reference here',
    );
  }
  if (name !== 'auto' && name !== 'native' && name !== 'reference') {
    throw new HypeError('argument', `unknown backend '${name}'; choose auto, native, reference or webgpu`);
  }
  const n = threads === undefined ? undefined : Number(threads);
  if (n !== undefined && !(Number.isInteger(n) && n >= 1)) {
    throw new HypeError('argument', `--threads must be a positive integer, got '${threads}'`);
  }
  return loadBackend(name === 'auto' && dtype === 'float64' ? 'reference' : name, { threads: n });
}

/**
 * chooseBackend, or with 'webgpu' a WebGPU device (asked for by name only: auto never picks it), for the commands
 * that run on every backend (train, eval, generate, study, worker). No adapter: one HypeError naming the fix.
 */
export async function chooseAnyBackend(
  name: string,
  threads?: string,
  dtype?: DType,
): Promise<Backend<unknown, unknown>> {
  if (name !== 'webgpu') return chooseBackend(name, threads, dtype);
  return loadBackend('webgpu');
}

/**
 * The model dtype of a run folder, from its run.json or else its latest checkpoint's state (undefined when neither
 * reads: loading the run then says why).
 */
export function runDtype(path: string): DType | undefined {
  const { runDir } = splitCheckpointPath(path);
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const read = (file: string) => readJsonFile(file, 'run file', '') as any;
  try {
    return read(join(runDir, 'run.json')).model.dtype;
  } catch {
    try {
      const latest = read(join(checkpointsDir(runDir), 'latest.json')) as { dir: string };
      return read(join(checkpointsDir(runDir), latest.dir, 'state.json')).model.dtype;
    } catch {
      return undefined;
    }
  }
}

/** The --backend and --threads options every computing command shares. */
export function addBackendOptions(cmd: Command): Command {
  return cmd
    .option(
      '--backend <name>',
      'compute backend: auto (native when built, reference for float64 models), native, reference, or webgpu ' +
        '(train, eval and generate: a WebGPU device, float32 only; never chosen by auto)',
      'auto',
    )
    .option('--threads <n>', 'native backend worker threads (default: all cores)');
}

interface TrainFlags {
  pe?: string;
  peOptions?: string;
  modelConfig?: string;
  width?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  mlpWidth?: number;
  length?: number;
  dtype?: string;
  data?: string;
  valFraction?: number;
  batch?: number;
  steps?: number;
  lr?: number;
  minLr?: number;
  warmup?: number;
  weightDecay?: number;
  clip?: number;
  decayAll?: boolean;
  seed?: number;
  checkpointEvery?: number;
  keepCheckpoints?: number;
  precision?: string;
  runDir?: string;
  name?: string;
  resume?: string;
  backend: string;
  threads?: string;
  evalInterval?: number;
  evalBytes?: number;
  quiet?: boolean;
}

const int = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new HypeError('argument', `expected an integer, got '${v}'`);
  return n;
};
const num = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new HypeError('argument', `expected a number, got '${v}'`);
  return n;
};

function readJson(path: string, what: string): unknown {
  return readJsonFile(path, what, 'pass a JSON file');
}

/** Model config from --model-config (a JSON file) overlaid with explicit flags; undefined if nothing was given. */
export function modelConfigFrom(f: TrainFlags): Record<string, unknown> {
  const base = f.modelConfig ? (readJson(f.modelConfig, 'model config') as Record<string, unknown>) : {};
  const out: Record<string, unknown> = { ...base };
  const set = (k: string, v: unknown) => {
    if (v !== undefined) out[k] = v;
  };
  if (f.pe !== undefined || f.peOptions !== undefined) {
    const basePe = (typeof base.pe === 'object' && base.pe) || {};
    // --pe takes `name` or `name:options`, --pe-options the options alone; both in either syntax (pe/options.ts).
    const named = f.pe !== undefined ? parseEncodingSpec(f.pe) : undefined;
    const inline = f.pe?.includes(':') ? named!.options : undefined;
    const flagged = f.peOptions !== undefined ? parseEncodingOptions(f.peOptions) : undefined;
    for (const key of Object.keys(flagged ?? {})) {
      if (inline && Object.hasOwn(inline, key)) {
        throw new HypeError(
          'argument',
          `encoding option '${key}' is given in both --pe and --pe-options; give it once`,
        );
      }
    }
    out.pe = {
      ...basePe,
      ...(named ? { name: named.name } : {}),
      ...(inline || flagged ? { options: { ...inline, ...flagged } } : {}),
    };
  }
  set('width', f.width);
  set('layers', f.layers);
  set('heads', f.heads);
  set('kvHeads', f.kvHeads);
  set('mlpWidth', f.mlpWidth);
  set('trainLength', f.length);
  set('dtype', f.dtype);
  set('seed', f.seed);
  return out;
}

function trainConfigFrom(f: TrainFlags): Partial<TrainConfig> {
  const out: Partial<TrainConfig> = {};
  const entries: [keyof TrainConfig, unknown][] = [
    ['data', f.data],
    ['valFraction', f.valFraction],
    ['batch', f.batch],
    ['steps', f.steps],
    ['lr', f.lr],
    ['minLr', f.minLr],
    ['warmup', f.warmup],
    ['weightDecay', f.weightDecay],
    ['clip', f.clip],
    ['decayAll', f.decayAll],
    ['seed', f.seed],
    ['checkpointEvery', f.checkpointEvery],
    ['keepCheckpoints', f.keepCheckpoints],
    ['precision', f.precision],
  ];
  for (const [k, v] of entries) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}

function timestamp(): string {
  return new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').replace(/\..*$/, '');
}

/**
 * `hype train` claims its run folder (util/claim.ts) so that two processes never train one run: a second
 * --resume of a run being trained is refused, and a run cut off before its first checkpoint is only restarted
 * when no live process is writing it. The claim of a killed process goes stale after TRAIN_CLAIM_STALE_MS.
 */
const TRAIN_CLAIM_STALE_MS = () => Math.min(claimStaleMs(), 10_000);

export async function runTrain(f: TrainFlags): Promise<void> {
  const dtype = f.resume ? runDtype(f.resume) : ((f.dtype ?? modelConfigFrom(f).dtype) as DType | undefined);
  const backend = await chooseAnyBackend(f.backend, f.threads, dtype);
  let runDir: string;
  let modelConfig: ModelConfig | undefined;
  if (f.resume) {
    runDir = splitCheckpointPath(f.resume).runDir;
  } else {
    if (!f.pe && !f.modelConfig) {
      throw new HypeError(
        'argument',
        `missing --pe <name> (the positional encoding), e.g. 'hype train --pe hype'; one of: ${encodingNames().join(', ')}`,
      );
    }
    modelConfig = parseModelConfig(modelConfigFrom(f));
    runDir = f.runDir ?? join('runs', `${f.name ?? modelConfig.pe.name}-${timestamp()}`);
  }
  checkFolderPath(runDir, 'run folder');
  // A --resume of a folder that does not exist is refused by the trainer; no claim (nor its parent) is made for it.
  if (f.resume && !existsSync(runDir)) return trainClaimed(f, backend, runDir, modelConfig);
  const stale = TRAIN_CLAIM_STALE_MS();
  const claim = await Claim.takeWithin(runDir, 'training run', stale + 2000, stale, () =>
    process.stderr.write(
      `hype train: '${runDir}' is claimed by another process; waiting up to ${(stale + 2000) / 1000} s in case ` +
        'that process was killed\n',
    ),
  );
  if (!claim) {
    throw new HypeError(
      'argument',
      `run folder '${runDir}' is being trained by another live hype process; let it finish (or stop it with ` +
        'Ctrl-C, which checkpoints) before resuming it, or choose another --run-dir',
    );
  }
  try {
    await trainClaimed(f, backend, runDir, modelConfig, claim);
  } finally {
    await claim.release();
  }
}

async function trainClaimed<T, I>(
  f: TrainFlags,
  backend: Backend<T, I>,
  runDir: string,
  modelConfig: ModelConfig | undefined,
  claim?: Claim,
): Promise<void> {
  let run: TrainingRun<T, I>;
  if (f.resume) {
    const explicitModel = modelConfigFrom(f);
    const trainFlags = trainConfigFrom(f);
    const { data, steps, ...trainExpect } = trainFlags;
    // --resume takes a run folder (its latest checkpoint) or one checkpoint folder <run>/checkpoints/step-N.
    const { checkpoint } = splitCheckpointPath(f.resume);
    run = TrainingRun.resume(runDir, backend, {
      expectTrain: trainExpect,
      steps,
      dataOverride: data,
      checkpoint,
    });
    if (Object.keys(explicitModel).length > 0) {
      // Only the options given are compared: a full config rebuilt from them would add defaults.
      const saved = run.model.config as unknown as Record<string, unknown>;
      for (const [k, v] of Object.entries(explicitModel)) {
        const same =
          k === 'pe'
            ? JSON.stringify({ ...(saved.pe as object), ...(v as object) }) === JSON.stringify(saved.pe)
            : saved[k] === v;
        if (!same) {
          throw new HypeError(
            'checkpoint',
            `model option '${k}' = ${JSON.stringify(v)} differs from the checkpoint's ${JSON.stringify(saved[k])} ` +
              '(mismatched checkpoint); resume without it, or start a new run',
          );
        }
      }
    }
  } else {
    run = TrainingRun.start(runDir, modelConfig!, { data: DEFAULT_CORPUS, ...trainConfigFrom(f) }, backend);
  }

  if (run.step >= run.train.steps) {
    process.stdout.write(
      `run ${run.runDir} is already finished (step ${run.step}/${run.train.steps}); nothing to train. ` +
        `To train it further pass a larger total, e.g. --resume ${run.runDir} --steps ${run.train.steps * 2}\n`,
    );
    return;
  }
  const cfg = run.model.config;
  const tokensPerStep = run.train.batch * cfg.trainLength;
  const say = (s: string) => {
    if (!f.quiet) process.stderr.write(s + '\n');
  };
  say(
    `hype train: ${cfg.pe.name}, ${cfg.layers} layers x width ${cfg.width}, ${cfg.heads} heads, ` +
      `${run.model.parameterCount()} parameters, ${cfg.dtype} on ${run.model.backend.name}; ` +
      `${run.train.steps} steps of ${run.train.batch} x ${cfg.trainLength} bytes from '${run.corpus.path}' -> ${run.runDir}` +
      (run.step > 0 ? ` (resuming at step ${run.step})` : '') +
      (run.restarted ? ' (starting over: the run was cut off before its first checkpoint)' : ''),
  );

  // SIGINT (Ctrl-C) and SIGTERM (what job schedulers and containers send) both finish the step and checkpoint.
  let stopRequested = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopRequested) process.exit(sig === 'SIGTERM' ? 143 : 130);
    stopRequested = true;
    process.stderr.write(`\nhype train: ${sig}: finishing this step and writing a checkpoint (again to quit now)\n`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const bar = f.quiet ? null : progressBar('train', '| loss {loss} | {tps} tok/s');
  bar?.start(run.train.steps, run.step, { loss: '-', tps: '-' });
  let recent = 0;
  let recentSeconds = 0;
  let lastTrainLoss = NaN;
  try {
    const summary = await run.run({
      shouldStop: () => stopRequested,
      // The default interval applies only where the held-out split holds a window; an explicit one is checked.
      evalInterval: f.evalInterval ?? (run.corpus.val.length > cfg.trainLength ? 200 : 0),
      evalBytes: f.evalBytes,
      onEval: (e) => {
        // Clear the bar's line, print the evaluation, let the next update redraw the bar beneath it.
        if (!f.quiet) {
          process.stderr.write(
            `${process.stderr.isTTY ? '\r\x1b[K' : ''}step ${e.step}: train loss ${lastTrainLoss.toFixed(4)}, held-out loss ${e.valLoss.toFixed(4)} ` +
              `nats/byte (${e.bitsPerByte.toFixed(4)} bits/byte over ${e.scored} bytes)\n`,
          );
        }
      },
      onStep: (rec) => {
        // A claim lost (this process froze past the stale limit, another took the run over): stop, write nothing.
        claim?.check();
        lastTrainLoss = rec.loss;
        recent = 0.9 * recent + 0.1 * tokensPerStep;
        recentSeconds = 0.9 * recentSeconds + 0.1 * rec.seconds;
        bar?.update(rec.step, { loss: rec.loss.toFixed(4), tps: Math.round(recent / recentSeconds) });
      },
    });
    bar?.stop();
    process.stdout.write(
      `${summary.interrupted ? 'interrupted' : 'finished'} at step ${summary.step}/${run.train.steps}, ` +
        `loss ${summary.lastLoss.toFixed(4)}; checkpoint ${summary.checkpoint ?? '(unchanged)'}\n` +
        (summary.finished ? '' : `continue with: hype train --resume ${run.runDir}\n`),
    );
  } finally {
    bar?.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

export function registerTrain(program: Command): void {
  const cmd = program
    .command('train')
    .description('train a byte-level transformer with a positional encoding; writes a run folder')
    .option(
      '--pe <name>',
      `positional encoding, required for a new run: ${encodingNames().join(', ')}; ` +
        'options may follow as key=value pairs or JSON, e.g. hype:preset=recency',
    )
    .option(
      '--pe-options <options>',
      'encoding options as JSON or key=value pairs: \'{"preset":"recency"}\' or preset=recency:lengthExtra=4096',
    )
    .option('--model-config <file>', 'model config JSON (flags below override its keys)')
    .option('--width <n>', 'model width (default 128)', int)
    .option('--layers <n>', 'transformer blocks (default 4)', int)
    .option('--heads <n>', 'attention heads (default 4)', int)
    .option('--kv-heads <n>', 'key/value heads for grouped-query attention (default = heads)', int)
    .option('--mlp-width <n>', 'MLP hidden width (default 4 x width)', int)
    .option('--length <n>', 'training window length in bytes (default 128)', int)
    .addOption(
      new Option('--dtype <dtype>', 'parameter and activation dtype (default float32)').choices(['float32', 'float64']),
    )
    .option(
      '--data <file>',
      `UTF-8 text corpus (default ${DEFAULT_CORPUS}, relative to the working directory; the run stores it absolute)`,
    )
    .option('--val-fraction <f>', 'held-out tail of the corpus (default 0.1)', num)
    .option('--batch <n>', 'windows per step (default 8)', int)
    .option('--steps <n>', 'optimisation steps (default 1000)', int)
    .option('--lr <f>', 'peak learning rate (default 1e-3)', num)
    .option('--min-lr <f>', 'final learning rate of the cosine decay (default 1e-4)', num)
    .option('--warmup <n>', 'linear warmup steps, at most --steps (default 50, or --steps if fewer)', int)
    .option('--weight-decay <f>', 'AdamW decoupled weight decay on weights and embeddings (default 0.1)', num)
    .option('--decay-all', 'also decay norms, biases and encoding parameters')
    .option('--clip <f>', 'global gradient-norm clipping, 0 disables (default 1)', num)
    .option('--seed <n>', 'seed of the initialisation and the data sampler (default 1)', int)
    .option('--checkpoint-every <n>', 'write a checkpoint every N steps; 0 only at the end (default 100)', int)
    .option('--keep-checkpoints <n>', 'newest checkpoints to keep (default 2)', int)
    .option(
      '--precision <p>',
      'fp32 (default), or bf16 mixed precision as PyTorch autocast: bf16 matmul and attention operands (AVX512-BF16 ' +
        'on the native backend), fp32 accumulation, softmax statistics, layer norms, loss, master weights and AdamW',
    )
    .option(
      '--eval-interval <n>',
      'held-out loss every N steps and after the last, logged and written to evals.jsonl; 0 never (default 200 ' +
        'when the held-out split holds a window)',
      int,
    )
    .option(
      '--eval-bytes <n>',
      `held-out bytes each of those evaluations scores, the same ones each time (default ${DEFAULT_EVAL_BYTES})`,
      int,
    )
    .option('--run-dir <dir>', 'run folder (default runs/<name>-<timestamp>)')
    .option('--name <name>', 'run name used in the default folder (default: the encoding)')
    .option(
      '--resume <run>',
      'continue the run in this folder from its latest checkpoint (or pass <run>/checkpoints/step-N for that one)',
    )
    .option('--quiet', 'no progress output');
  addBackendOptions(cmd).action(async (flags: TrainFlags) => runTrain(flags));
}
