/**
 * `hype eval <run> --lengths 128,256,...`: bits per byte and per-byte perplexity of a trained run on the held-out
 * split of its corpus, at each evaluation length. Windows are non-overlapping by default (as in the ALiBi paper:
 * every byte scored once, context restarting at each window); `--sliding [stride]` scores each byte with at least
 * L - stride bytes of context (stride defaults to L / 2). See src/train/evaluate.ts for the exact definitions.
 * Results print as a table and are saved to <run>/eval.json.
 */
import { join } from 'node:path';
import type { Command } from 'commander';
import { HypeError } from '../errors.ts';
import { splitCheckpointPath } from '../train/checkpoint.ts';
import { loadCorpus } from '../train/corpus.ts';
import { evaluateHeldOutAsync, type EvalResult } from '../train/evaluate.ts';
import { loadRunModel } from '../train/trainer.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { progressBar } from './progress.ts';
import { addBackendOptions, chooseAnyBackend, runDtype } from './train.ts';

interface EvalFlags {
  lengths?: string;
  sliding?: boolean | string;
  batch?: string;
  maxBytes?: string;
  data?: string;
  backend: string;
  threads?: string;
  quiet?: boolean;
}

function parseLengths(s: string): number[] {
  const parts = s.split(',').map((x) => x.trim());
  const out = parts.map(Number);
  if (parts.length === 0 || out.some((n) => !Number.isInteger(n) || n < 1)) {
    throw new HypeError('argument', `--lengths must be a comma-separated list of positive integers, got '${s}'`);
  }
  return out;
}

function positiveInt(s: string | undefined, flag: string): number | undefined {
  if (s === undefined) return undefined;
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new HypeError('argument', `${flag} must be a positive integer, got '${s}'`);
  return n;
}

/** The default evaluation lengths: the run's training length, doubled up to 16 times it. */
export function defaultLengths(trainLength: number): number[] {
  return [1, 2, 4, 8, 16].map((m) => m * trainLength);
}

export async function runEval(runDir: string, f: EvalFlags): Promise<EvalResult[]> {
  const requested = f.lengths === undefined ? undefined : parseLengths(f.lengths);
  const backend = await chooseAnyBackend(f.backend, f.threads, runDtype(runDir));
  const { model, state, dir } = loadRunModel(runDir, backend);
  const corpus = loadCorpus(f.data ?? state.train.data, state.train.valFraction);
  if (corpus.sha256 !== state.corpus.sha256) {
    throw new HypeError(
      'checkpoint',
      `corpus '${corpus.path}' is not the one the run trained on (SHA-256 ${corpus.sha256.slice(0, 12)}..., the ` +
        `run recorded ${state.corpus.sha256.slice(0, 12)}...), so its held-out split differs; pass the original ` +
        'file with --data',
    );
  }
  const maxBytes = positiveInt(f.maxBytes, '--max-bytes');
  const val = maxBytes ? corpus.val.subarray(0, Math.min(maxBytes, corpus.val.length)) : corpus.val;
  const batch = positiveInt(f.batch, '--batch') ?? 8;
  let lengths = requested;
  if (!lengths) {
    // The default doubles up to 16x the training length, keeping the lengths the held-out split has a window for.
    const all = defaultLengths(model.config.trainLength);
    lengths = all.filter((L) => val.length >= L + 1);
    if (lengths.length < all.length && !f.quiet) {
      process.stderr.write(
        `hype eval: skipping length ${all.slice(lengths.length).join(', ')}: the ${val.length} held-out bytes ` +
          'hold no window that long\n',
      );
    }
    if (lengths.length === 0) lengths = all.slice(0, 1); // evaluateHeldOut then says why it cannot
  }
  const results: EvalResult[] = [];
  for (const L of lengths) {
    let stride: number | undefined;
    if (f.sliding !== undefined && f.sliding !== false) {
      stride = f.sliding === true ? Math.max(1, Math.floor(L / 2)) : positiveInt(f.sliding, '--sliding');
    }
    const bar = f.quiet ? null : progressBar(`eval L=${L}`, 'windows');
    bar?.start(1, 0);
    try {
      results.push(
        await evaluateHeldOutAsync(model, val, L, {
          stride,
          batch,
          onProgress: (done, total) => {
            bar?.setTotal(total);
            bar?.update(done);
          },
        }),
      );
    } finally {
      bar?.stop();
    }
  }
  const lines = [
    `held-out bits per byte of ${runDir} (checkpoint ${dir}, step ${state.step}; ${val.length} held-out bytes)`,
    'length  windows  mode               scored     bits/byte  perplexity',
    ...results.map(
      (r) =>
        `${String(r.length).padEnd(8)}${String(r.windows).padEnd(9)}` +
        `${(r.mode === 'sliding' ? `sliding/${r.stride}` : r.mode).padEnd(19)}` +
        `${String(r.scored).padEnd(11)}${r.bitsPerByte.toFixed(4).padEnd(11)}${r.perplexity.toFixed(4)}`,
    ),
  ];
  process.stdout.write(lines.join('\n') + '\n');
  writeFileAtomic(
    join(splitCheckpointPath(runDir).runDir, 'eval.json'),
    JSON.stringify(
      { run: runDir, step: state.step, corpus: corpus.path, heldOutBytes: val.length, backend: backend.name, results },
      null,
      1,
    ) + '\n',
  );
  return results;
}

export function registerEval(program: Command): void {
  const cmd = program
    .command('eval')
    .description('bits per byte and perplexity of a trained run on its held-out split, at several lengths')
    .argument('<run>', 'run folder written by hype train')
    .option(
      '--lengths <list>',
      "comma-separated evaluation lengths, e.g. 128,256,512 (default: 1x, 2x, 4x, 8x and 16x the run's training length)",
    )
    .option(
      '--sliding [stride]',
      'sliding windows: score only the last <stride> bytes of each window (default stride L/2); ' +
        'default is non-overlapping windows',
    )
    .option('--batch <n>', 'windows per forward pass (default 8)')
    .option('--max-bytes <n>', 'evaluate only the first N held-out bytes (faster, noisier; default: all)')
    .option('--data <file>', "the corpus, if it moved since training (default: the run's; its SHA-256 must match)")
    .option('--quiet', 'no progress output');
  addBackendOptions(cmd).action(async (run: string, flags: EvalFlags) => {
    await runEval(run, flags);
  });
}
