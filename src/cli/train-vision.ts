/**
 * `hype train-vision --pe <2-D encoding>`: trains the small vision transformer (model/vision.ts) on Fashion-MNIST
 * and reports its test accuracy at the training resolution and, with --eval-sides, at upsampled ones (bilinear).
 * Writes a run folder like `hype train` (run.json, losses.jsonl, checkpoints/); `--resume <run>` continues one bit
 * for bit; Ctrl-C / SIGTERM finishes the step and writes a checkpoint.
 */
import { join } from 'node:path';
import type { Command } from 'commander';
import { HypeError } from '../errors.ts';
import { splitEncodingSpec } from '../pe/registry.ts';
import { getVisionEncoding, visionEncodingNames } from '../pe/vision/registry.ts';
import { loadFashionMnist } from '../vision/idx.ts';
import { evaluateAccuracy, VisionRun } from '../vision/train.ts';
import { progressBar } from './progress.ts';
import { addBackendOptions, chooseBackend } from './train.ts';

interface VisionFlags {
  pe: string;
  dataDir: string;
  width?: number;
  layers?: number;
  heads?: number;
  mlpWidth?: number;
  patch?: number;
  batch?: number;
  steps?: number;
  lr?: number;
  minLr?: number;
  warmup?: number;
  seed?: number;
  checkpointEvery?: number;
  runDir?: string;
  resume?: string;
  evalImages?: number;
  evalSides?: string;
  backend: string;
  threads?: string;
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

export async function runTrainVision(f: VisionFlags): Promise<void> {
  const dir = f.dataDir;
  const train = loadFashionMnist(dir, 'train');
  const test = loadFashionMnist(dir, 'test');
  const backend = await chooseBackend(f.backend, f.threads);
  let run: VisionRun;
  if (f.resume) {
    run = VisionRun.resume(f.resume, backend, train, { steps: f.steps });
  } else {
    const pe = splitEncodingSpec(f.pe);
    getVisionEncoding(pe.name);
    const model = Object.fromEntries(
      Object.entries({ width: f.width, layers: f.layers, heads: f.heads, mlpWidth: f.mlpWidth, patch: f.patch }).filter(
        ([, v]) => v !== undefined,
      ),
    );
    const trainCfg = Object.fromEntries(
      Object.entries({
        steps: f.steps ?? 800,
        batch: f.batch ?? 64,
        lr: f.lr ?? 2e-3,
        minLr: f.minLr ?? (f.lr ?? 2e-3) / 10,
        warmup: f.warmup,
        seed: f.seed,
        checkpointEvery: f.checkpointEvery ?? 200,
        data: dir,
      }).filter(([, v]) => v !== undefined),
    );
    const runDir = f.runDir ?? join('runs', `vision-${pe.name}-${new Date().toISOString().replace(/[:.]/g, '-')}`);
    run = VisionRun.start(runDir, { ...model, image: train.rows, pe, seed: f.seed ?? 1 }, trainCfg, backend, train);
  }
  let stop = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stop) process.exit(sig === 'SIGTERM' ? 143 : 130);
    stop = true;
    process.stderr.write(`\nhype train-vision: ${sig}: finishing this step and writing a checkpoint\n`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const bar = f.quiet ? null : progressBar('train-vision', '| loss {loss}');
  bar?.start(run.train.steps, run.step, { loss: '-' });
  try {
    const summary = await run.run({
      shouldStop: () => stop,
      onStep: (r) => bar?.update(r.step, { loss: r.loss.toFixed(3) }),
    });
    bar?.stop();
    if (summary.interrupted) {
      process.stdout.write(`stopped at step ${summary.step}; resume with --resume ${run.runDir}\n`);
      return;
    }
  } finally {
    bar?.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  const sides = [run.model.config.image, ...(f.evalSides ?? '').split(',').filter(Boolean).map(int)];
  for (const side of sides) {
    const r = evaluateAccuracy(run.model, test, side, f.evalImages ?? test.count);
    process.stdout.write(
      `test accuracy at ${side}x${side} (${r.grid}x${r.grid} patches): ${(100 * r.accuracy).toFixed(2)}% ` +
        `(${r.correct}/${r.total})\n`,
    );
  }
  process.stdout.write(`run folder: ${run.runDir}\n`);
}

export function registerTrainVision(program: Command): void {
  const cmd = program
    .command('train-vision')
    .description(
      'train a small vision transformer (4x4 patches, mean pooling) on Fashion-MNIST with a 2-D positional ' +
        'encoding; prints test accuracy (also at upsampled sides with --eval-sides)',
    )
    .option('--pe <name>', `image encoding, name[:key=value...]: ${visionEncodingNames().join(', ')}`, 'hype-2d')
    .option('--data-dir <dir>', 'folder with the four Fashion-MNIST IDX files (gzip)', '../shared/data/fashion-mnist')
    .option('--width <n>', 'model width (default 64)', int)
    .option('--layers <n>', 'transformer blocks (default 2)', int)
    .option('--heads <n>', 'attention heads (default 4)', int)
    .option('--mlp-width <n>', 'MLP hidden width (default 128)', int)
    .option('--patch <n>', 'patch side in pixels; the image side must be a multiple (default 4)', int)
    .option('--batch <n>', 'images per step (default 64)', int)
    .option('--steps <n>', 'optimisation steps (default 800, about 0.85 epoch)', int)
    .option('--lr <f>', 'peak learning rate (default 2e-3)', num)
    .option('--min-lr <f>', 'final learning rate of the cosine decay (default lr / 10)', num)
    .option('--warmup <n>', 'linear warmup steps (default 50)', int)
    .option('--seed <n>', 'seed of the initialisation and the batch sampler (default 1)', int)
    .option('--checkpoint-every <n>', 'write a checkpoint every N steps (default 200)', int)
    .option('--run-dir <dir>', 'run folder (default runs/vision-<encoding>-<timestamp>)')
    .option('--resume <run>', 'continue the run in this folder from its latest checkpoint')
    .option('--eval-images <n>', 'test images graded (default all 10,000)', int)
    .option('--eval-sides <list>', 'also grade at these image sides, upsampled bilinearly, e.g. 40,56', undefined)
    .option('--quiet', 'no progress bar');
  addBackendOptions(cmd).action(async (flags: VisionFlags) => runTrainVision(flags));
}
