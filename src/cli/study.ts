/**
 * `hype study <lm|flipflop|recall|precision|all> [--quick]`: the experimental evaluation of HyPE against every
 * peer encoding (see src/study/). Resumable: rerunning the same command computes only the cells not finished.
 * `hype study report [--out dir] [--to RESULTS.md]` regenerates the report from the results JSON alone.
 */
import type { Command } from 'commander';
import { loadBackend, type BackendName } from '../backend/index.ts';
import { parsePrecision } from '../backend/autocast.ts';
import { HypeError } from '../errors.ts';
import { EXPERIMENTS, QUICK_STUDY_MINUTES, type Experiment } from '../study/plan.ts';
import { formatDuration } from '../study/progress.ts';
import { checkDevicePlan, planFor, runStudy, writeReport } from '../study/run.ts';
import { runVision, visionConfigs, visionPlan } from '../study/vision.ts';
import { checkFolderPath, makeWritableDir } from '../util/fs-safe.ts';
import { chooseAnyBackend } from './train.ts';

interface StudyFlags {
  quick?: boolean;
  out?: string;
  to?: string;
  seeds?: string;
  encodings?: string;
  corpora?: string;
  precision?: string;
  recompute?: string;
  dataDir: string;
  workDir: string;
  backend: string;
  threads?: string;
  queue?: string;
}

const CHOICES = [...EXPERIMENTS, 'vision', 'all', 'report'] as const;

/** --backend of `hype study` and `hype worker`: webgpu only when named (auto never picks it). */
export const STUDY_BACKENDS = ['auto', 'native', 'reference', 'webgpu'];

export const defaultOutDir = (quick: boolean) => (quick ? 'results/quick' : 'results/full');

export function positiveInt(s: string | undefined, flag: string): number | undefined {
  if (s === undefined) return undefined;
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new HypeError('argument', `${flag} must be a positive integer, got '${s}'`);
  return n;
}

export async function runStudyCommand(what: string, f: StudyFlags): Promise<void> {
  if (!(CHOICES as readonly string[]).includes(what)) {
    throw new HypeError('argument', `unknown study '${what}'; choose one of: ${CHOICES.join(', ')}`);
  }
  const outDir = f.out ?? defaultOutDir(Boolean(f.quick));
  if (what === 'report') {
    const path = await writeReport(outDir, f.to);
    process.stdout.write(`hype study report: wrote ${path}${f.to ? ` and ${f.to}` : ''} from ${outDir}\n`);
    return;
  }
  if (!STUDY_BACKENDS.includes(f.backend)) {
    throw new HypeError('argument', `unknown backend '${f.backend}'; choose ${STUDY_BACKENDS.join(', ')}`);
  }
  if (what === 'vision') {
    if (f.backend === 'webgpu') {
      throw new HypeError(
        'argument',
        '`hype study vision` trains its image models on host arrays; use --backend auto, native or reference ' +
          '(lm, flipflop and recall run on webgpu)',
      );
    }
    return runVisionCommand(outDir, f);
  }
  const seeds = positiveInt(f.seeds, '--seeds');
  const encodings = f.encodings
    ?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const corpora = f.corpora
    ?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const precision = f.precision === undefined ? undefined : parsePrecision(f.precision);
  if (precision === 'bf16' && what !== 'lm') {
    throw new HypeError(
      'argument',
      `--precision bf16 trains the lm cells only; run 'hype study lm --precision bf16' (got '${what}')`,
    );
  }
  if (precision === 'bf16' && f.backend === 'webgpu') {
    throw new HypeError(
      'argument',
      '--precision bf16 needs bf16 kernels, which the webgpu backend does not have; use --backend auto, native or ' +
        'reference',
    );
  }
  const plan = planFor({ quick: Boolean(f.quick), seeds, encodings, corpora, precision }); // refuses bad flags first
  checkFolderPath(outDir, 'the results folder (--out)');
  checkFolderPath(f.workDir, 'the training-runs folder (--work-dir)');
  // What a device cannot run is refused before a folder is made or the device is acquired (runStudy checks again
  // for library callers).
  if (f.queue === undefined && f.backend === 'webgpu') {
    checkDevicePlan({ residence: 'device', name: 'webgpu' }, plan, what as Experiment | 'all');
  }
  const backend = await chooseAnyBackend(f.backend, f.threads);
  makeWritableDir(outDir, 'the results folder (--out)');
  makeWritableDir(f.workDir, 'the training-runs folder (--work-dir)');
  const scope = `${plan.encodings.length} encoding${plan.encodings.length === 1 ? '' : 's'}, ${plan.seeds.length} seed${plan.seeds.length === 1 ? '' : 's'}`;
  const banner = f.quick
    ? `QUICK VERSION: small models, short training (${scope}) — a first look, not the full study`
    : `FULL STUDY (${scope}): resumable, may run for hours`;
  process.stderr.write(
    `hype study ${what}: ${banner}\nhype study: results go to ${outDir}/ (backend ${backend.name})\n`,
  );
  const t0 = performance.now();
  const { report, total, computed } = await runStudy({
    experiment: what as Experiment | 'all',
    quick: Boolean(f.quick),
    outDir,
    workDir: f.workDir,
    dataDir: f.dataDir,
    backend,
    seeds,
    encodings,
    corpora,
    precision,
    recompute: f.recompute
      ?.split(',')
      .map((s) => s.trim())
      .filter(Boolean),
    queue: f.queue,
  });
  const name = `hype study ${what}${f.quick ? ' --quick (QUICK VERSION)' : ''}`;
  process.stdout.write(
    `${doneLine(name, outDir, total, computed, (performance.now() - t0) / 1000)}\n` +
      `  outputs: ${outDir}/ (results JSON per cell, study.json, plots/*.svg)\n  report:  ${report}\n`,
  );
}

/** `hype study vision`: the image experiment (study/vision.ts), then the report regenerated with its section. */
async function runVisionCommand(outDir: string, f: StudyFlags): Promise<void> {
  const plan = visionPlan();
  const seeds = positiveInt(f.seeds, '--seeds');
  if (seeds !== undefined) plan.seeds = Array.from({ length: seeds }, (_, i) => i + 1);
  const encodings = f.encodings
    ?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (encodings) plan.encodings = encodings;
  visionConfigs(plan); // refuses unknown encodings before any work
  checkFolderPath(outDir, 'the results folder (--out)');
  checkFolderPath(f.workDir, 'the training-runs folder (--work-dir)');
  makeWritableDir(outDir, 'the results folder (--out)');
  makeWritableDir(f.workDir, 'the training-runs folder (--work-dir)');
  const backend = loadBackend(f.backend as BackendName, { threads: positiveInt(f.threads, '--threads') });
  process.stderr.write(
    `hype study vision: ${plan.encodings.length} encodings x ${plan.seeds.length} seeds on Fashion-MNIST, ` +
      `${plan.budget.steps} steps of ${plan.budget.batch} images per cell; results go to ${outDir}/vision/ ` +
      `(backend ${backend.name})\n`,
  );
  const t0 = performance.now();
  const { total, computed } = await runVision(
    { backend, workDir: f.workDir, dataDir: f.dataDir, log: (l) => process.stderr.write(`${l}\n`) },
    outDir,
    plan,
  );
  const report = await writeReport(outDir, f.to);
  process.stdout.write(
    `${doneLine('hype study vision', outDir, total, computed, (performance.now() - t0) / 1000)}\n  report:  ${report}\n`,
  );
}

/** The closing line: how many cells were computed and in what time, or that every cell was already finished. */
export function doneLine(name: string, outDir: string, total: number, computed: number, seconds: number): string {
  if (computed === 0) {
    return (
      `${name}: nothing to compute, all ${total} cells of this plan were already finished in ${outDir}/; the ` +
      'report was regenerated from them (--recompute <encodings> computes cells again)'
    );
  }
  const rest = computed < total ? ` (the other ${total - computed} were already finished)` : '';
  return `${name}: done, ${computed} of ${total} cells computed in ${formatDuration(seconds)}${rest}`;
}

export function registerStudy(program: Command): void {
  program
    .command('study')
    .description(
      'run the study (lm, flipflop, recall, precision, vision or all; resumable) or regenerate its report; ' +
        'vision: a small ViT per 2-D encoding on Fashion-MNIST (about 2 minutes per cell on one thread)',
    )
    .argument('<what>', `one of ${CHOICES.join(', ')}`)
    .option(
      '--quick',
      `the quick version: a few encodings, one seed, short training (about ${QUICK_STUDY_MINUTES} minutes on 2 idle cores)`,
    )
    .option('--out <dir>', 'results folder (default results/quick with --quick, else results/full)')
    .option('--to <file>', "with 'report': also write this Markdown file (e.g. RESULTS.md)")
    .option('--seeds <n>', "seeds 1..n (default: the plan's: 1 quick, 3 full)")
    .option('--encodings <list>', "comma-separated study encodings (default: the plan's)")
    .option('--corpora <list>', "lm corpora: tinyshakespeare, wikitext2 (default: the plan's)")
    .option(
      '--precision <p>',
      'lm cells: fp32 (default, the stored cells) or bf16 mixed precision (new cells, scored against the fp32 ones ' +
        'of the same seed in the report)',
    )
    .option(
      '--recompute <list>',
      'delete and recompute the cells (and training runs) of these encodings, e.g. after fixing one',
    )
    .option('--data-dir <dir>', 'folder holding tinyshakespeare/, wikitext-2/ and fashion-mnist/', '../shared/data')
    .option('--work-dir <dir>', 'folder for the training runs (checkpoints)', 'runs/study')
    .option(
      '--backend <name>',
      'compute backend: auto, native, reference, or webgpu (lm, flipflop and recall of device-portable encodings)',
      'auto',
    )
    .option('--threads <n>', 'native backend threads (default: all cores)')
    .option('--queue <url>', "redis://host:port[/db]: run the cells as jobs for 'hype worker's on other machines")
    .action(async (what: string, flags: StudyFlags) => runStudyCommand(what, flags));
}
