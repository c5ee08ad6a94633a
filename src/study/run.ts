/**
 * `hype study` as a library call: run the chosen experiments' unfinished cells, then regenerate the report (and,
 * when asked, a RESULTS.md elsewhere) from the results JSON alone.
 */
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { parsePrecision } from '../backend/autocast.ts';
import type { Backend, Precision } from '../backend/backend.ts';
import { HypeError } from '../errors.ts';
import { renderSvg, writeSvgFile } from '../plot/render.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { Claim, withClaim } from '../util/claim.ts';
import { makeDirs, makeWritableDir } from '../util/fs-safe.ts';
import { encodingRunsOnDevice } from '../model/transformer.ts';
import { PRECISION_ON_HOST, studyModelConfig, type StudyEnv } from './cell.ts';
import {
  flipflopConfigs,
  lmConfigs,
  precisionConfigs,
  recallConfigs,
  runFlipflop,
  runLm,
  runNameOf,
  runPrecision,
  runRecall,
} from './experiments.ts';
import {
  ALL_ENCODINGS,
  EXPERIMENTS,
  fullPlan,
  peChoice,
  quickPlan,
  type CorpusName,
  type Experiment,
  type StudyPlan,
} from './plan.ts';
import { buildReport, readMeta, readResults, type Chart, type StudyMeta } from './report.ts';
import { readCellFile } from './store.ts';
import type { VisionRecord } from './vision.ts';
import { visionSection } from './vision-report.ts';
import { StudyProgress } from './progress.ts';
import { cellKey } from './store.ts';
import type { QueuedCell } from './queue.ts';

type StudyConfig = QueuedCell['config'];
import { versions } from './versions.ts';

export interface StudyOptions {
  experiment: Experiment | 'all';
  quick: boolean;
  outDir: string;
  workDir: string;
  dataDir: string;
  /** Host (native, reference) or device (webgpu: lm, flipflop and recall of device-portable encodings). */
  backend: Backend<unknown, unknown>;
  /** Seeds 1..n instead of the plan's. */
  seeds?: number;
  /** Study encoding names instead of the plan's. */
  encodings?: string[];
  /** lm corpora instead of the plan's. */
  corpora?: string[];
  /** The lm cells' training precision (default fp32: the stored cells); 'bf16' makes new cells (LmConfig). */
  precision?: Precision;
  /**
   * Study encodings whose cells (and training runs) are deleted and computed again: cells are keyed by their
   * configuration, not by the code, so after a fix to an encoding its old cells must be recomputed explicitly.
   */
  recompute?: string[];
  /** Replaces the quick/full plan (tests use a tiny one). */
  plan?: StudyPlan;
  /** redis://host:port[/db]: the cells run as jobs on this queue, computed by `hype worker`s (see queue.ts). */
  queue?: string;
  /** With `queue`: the coordinator's live progress table (queueTable), redrawn at every poll; default on a terminal. */
  live?: (table: string) => void;
  log?: (line: string) => void;
}

export function planFor(
  o: Pick<StudyOptions, 'quick' | 'seeds' | 'encodings' | 'corpora' | 'precision' | 'plan'>,
): StudyPlan {
  const plan = structuredClone(o.plan ?? (o.quick ? quickPlan() : fullPlan()));
  // fp32 leaves the plan as it was, so study.json's plan keeps its shape; every other value is checked.
  if (o.precision !== undefined && parsePrecision(o.precision) !== 'fp32') plan.lm.precision = o.precision;
  if (o.seeds !== undefined) {
    if (!Number.isInteger(o.seeds) || o.seeds < 1) {
      throw new HypeError('argument', `--seeds must be a positive integer, got ${o.seeds}`);
    }
    plan.seeds = Array.from({ length: o.seeds }, (_, i) => i + 1);
  }
  if (o.encodings !== undefined) {
    if (o.encodings.length === 0) throw new HypeError('argument', '--encodings must name at least one encoding');
    o.encodings.forEach(peChoice); // refuses unknown names before any work starts
    plan.encodings = [...o.encodings];
  }
  if (o.corpora !== undefined) {
    const known: CorpusName[] = ['tinyshakespeare', 'wikitext2'];
    for (const c of o.corpora) {
      if (!(known as string[]).includes(c)) {
        throw new HypeError('argument', `unknown corpus '${c}'; choose from: ${known.join(', ')}`);
      }
    }
    if (o.corpora.length === 0) throw new HypeError('argument', '--corpora must name at least one corpus');
    plan.lm.corpora = [...(o.corpora as CorpusName[])];
  }
  return plan;
}

export interface StudyOutcome {
  plan: StudyPlan;
  /** Path of the regenerated report. */
  report: string;
  /** Cells in the plan, those an earlier run had finished, and those this run computed. */
  total: number;
  finishedBefore: number;
  computed: number;
}

export async function runStudy(o: StudyOptions): Promise<StudyOutcome> {
  const plan = planFor(o);
  const log = o.log ?? ((s: string) => process.stderr.write(s + '\n'));
  const env: StudyEnv = { backend: o.backend, workDir: o.workDir, dataDir: o.dataDir, log };
  if (o.queue !== undefined) (await import('./queue.ts')).parseQueueUrl(o.queue); // refused before anything is written
  const chosen: Experiment[] = o.experiment === 'all' ? [...EXPERIMENTS] : [o.experiment];
  // The queue's coordinator computes nothing (each worker checks its own backend's cells).
  if (o.queue === undefined) checkDevicePlan(o.backend, plan, o.experiment);
  makeWritableDir(o.outDir, 'the results folder (--out)');
  makeWritableDir(o.workDir, 'the training-runs folder (--work-dir)');
  const metaPath = join(o.outDir, 'study.json');
  const meta: StudyMeta = {
    plan,
    versions: versions(),
    backend: o.backend.name,
    cpus: availableParallelism(),
    invocations: [],
  };
  // Written before any cell runs, so a study cut off mid-way still reports its plan and versions. Another study
  // process may share this folder (e.g. lm and the tasks side by side): each update re-reads the file under its
  // claim, so no process's invocations are lost.
  await updateMeta(metaPath, (old) => ({ ...meta, invocations: old?.invocations ?? [] }));
  if (o.recompute && o.recompute.length > 0) {
    o.recompute.forEach(peChoice);
    for (const exp of chosen) await forget(o, plan, exp, new Set(o.recompute), log);
  }
  // The whole run's cells up front, so the user sees the plan and each cell its place in it and the time left.
  const progress = new StudyProgress(
    chosen.flatMap((exp) =>
      configsOf(plan, exp).map((cell) => ({
        cell,
        finished: existsSync(join(o.outDir, exp, 'cells', `${cellKey(cell)}.json`)),
      })),
    ),
    log,
  );
  env.progress = progress;
  progress.announce();
  if (o.queue !== undefined) {
    const { report, written } = await runQueued(o, o.queue, plan, chosen, (inv) =>
      updateMeta(metaPath, (old) => ({ ...meta, invocations: [...(old?.invocations ?? []), inv] })),
    );
    return { plan, report, total: progress.total, finishedBefore: progress.finishedBefore, computed: written };
  }
  for (const exp of chosen) {
    const t0 = performance.now();
    const started = new Date().toISOString();
    const before = cellsIn(o.outDir, exp);
    if (exp === 'lm') await runLm(env, o.outDir, lmConfigs(plan, plan.encodings));
    else if (exp === 'flipflop') await runFlipflop(env, o.outDir, flipflopConfigs(plan, plan.encodings));
    else if (exp === 'recall') await runRecall(env, o.outDir, recallConfigs(plan, plan.encodings));
    else {
      const configs = precisionConfigs(plan, plan.encodings);
      if (configs.length === 0) log(`precision: none of ${plan.precision.encodings.join(', ')} selected; skipped`);
      await runPrecision(env, o.outDir, configs);
    }
    const cellsRun = cellsIn(o.outDir, exp) - before;
    const invocation = { experiment: exp, started, seconds: (performance.now() - t0) / 1000, cellsRun };
    await updateMeta(metaPath, (old) => ({ ...meta, invocations: [...(old?.invocations ?? []), invocation] }));
  }
  const report = await writeReport(o.outDir);
  return { plan, report, total: progress.total, finishedBefore: progress.finishedBefore, computed: progress.computed };
}

/**
 * The chosen experiments' cells as jobs on the queue at `url`, all at once (workers take them in plan order); their
 * results are written here as they arrive, then the report. Cells that failed on every attempt are named in one
 * error after the report of the others is written.
 */
async function runQueued(
  o: StudyOptions,
  url: string,
  plan: StudyPlan,
  chosen: Experiment[],
  record: (inv: { experiment: Experiment; started: string; seconds: number; cellsRun: number }) => Promise<void>,
): Promise<{ report: string; written: number }> {
  const { runQueuedCells } = await import('./queue.ts'); // BullMQ is loaded only by those who use the queue
  let log = o.log ?? ((s: string) => process.stderr.write(s + '\n'));
  // On a terminal (and no caller-supplied log), progress is a table redrawn in place; finished and failed cells are
  // still printed as lines above it.
  let live = o.live;
  let endLive = () => {};
  if (!live && o.log === undefined && process.stderr.isTTY) {
    const { createLogUpdate } = await import('log-update');
    const view = createLogUpdate(process.stderr);
    live = view;
    log = (s: string) => {
      view.clear();
      process.stderr.write(s + '\n');
    };
    endLive = () => view.done();
  }
  const t0 = performance.now();
  const started = new Date().toISOString();
  const before = chosen.map((exp) => cellsIn(o.outDir, exp));
  const cells = chosen.flatMap((experiment) => configsOf(plan, experiment).map((config) => ({ experiment, config })));
  const again = new Set(o.recompute ?? []);
  const { written, failed } = await runQueuedCells({
    url,
    cells,
    outDir: o.outDir,
    dataDir: o.dataDir,
    log,
    ...(live ? { live } : {}),
    recompute: ({ config: c }) => again.has(c.experiment === 'precision' ? c.lm.encoding : c.encoding),
  }).finally(endLive);
  for (const [i, experiment] of chosen.entries()) {
    const cellsRun = cellsIn(o.outDir, experiment) - before[i]!;
    await record({ experiment, started, seconds: (performance.now() - t0) / 1000, cellsRun });
  }
  const finished = EXPERIMENTS.some((exp) => cellsIn(o.outDir, exp) > 0);
  const report = finished ? await writeReport(o.outDir) : join(o.outDir, 'report.md');
  if (failed.length > 0) {
    throw new HypeError(
      'io',
      `${failed.length} cell(s) failed on every attempt (the report covers the others):\n` +
        failed.map((f) => `  ${f.label}: ${f.reason}`).join('\n') +
        '\nfix the cause and run the same command again: finished cells are kept, failed ones are tried again',
    );
  }
  return { report, written };
}

/**
 * A device backend runs the lm, flipflop and recall cells of device-portable encodings (HANDLES.md); anything else
 * is refused here, before a folder is written or a device buffer allocated, in one error naming what does run there.
 */
export function checkDevicePlan(
  backend: Pick<Backend<unknown, unknown>, 'residence' | 'name'>,
  plan: StudyPlan,
  experiment: Experiment | 'all',
) {
  if (backend.residence === 'host') return;
  const all = experiment === 'all';
  const chosen: Experiment[] = all ? [...EXPERIMENTS] : [experiment];
  if (chosen.includes('precision')) {
    throw new HypeError(
      'argument',
      PRECISION_ON_HOST(backend.name) + (all ? "; 'all' includes precision: run lm, flipflop and recall by name" : ''),
    );
  }
  const shape = plan[chosen[0] as 'lm' | 'flipflop' | 'recall'];
  const runs = (e: string) => encodingRunsOnDevice(studyModelConfig(shape.model, peChoice(e), shape.trainLength, 1));
  const hostOnly = plan.encodings.filter((e) => !runs(e));
  if (hostOnly.length > 0) {
    throw new HypeError(
      'argument',
      `study encoding${hostOnly.length === 1 ? '' : 's'} ${hostOnly.join(', ')} run${hostOnly.length === 1 ? 's' : ''} ` +
        `on host backends only (their position terms are computed over host arrays); on backend '${backend.name}' ` +
        `the study runs ${ALL_ENCODINGS.filter(runs).join(', ')}: pass --encodings with those, or use --backend ` +
        'native or reference',
    );
  }
}

/** Every cell of `exp` in the plan, in the order the experiment runs them. */
function configsOf(plan: StudyPlan, exp: Experiment): StudyConfig[] {
  if (exp === 'lm') return lmConfigs(plan, plan.encodings);
  if (exp === 'flipflop') return flipflopConfigs(plan, plan.encodings);
  if (exp === 'recall') return recallConfigs(plan, plan.encodings);
  return precisionConfigs(plan, plan.encodings);
}

async function updateMeta(metaPath: string, f: (old: StudyMeta | null) => StudyMeta): Promise<void> {
  await withClaim(metaPath, 'study metadata', () => {
    writeFileAtomic(metaPath, JSON.stringify(f(readMeta(metaPath)), null, 1) + '\n');
  });
}

/**
 * Deletes the cells of `exp` (in this plan) whose encoding is in `encodings`, with their training runs; refuses
 * (before deleting anything of that cell) one another live process is computing.
 */
async function forget(
  o: StudyOptions,
  plan: StudyPlan,
  exp: Experiment,
  encodings: Set<string>,
  log: (s: string) => void,
) {
  const trained =
    exp === 'lm'
      ? lmConfigs(plan, plan.encodings)
      : exp === 'flipflop'
        ? flipflopConfigs(plan, plan.encodings)
        : exp === 'recall'
          ? recallConfigs(plan, plan.encodings)
          : [];
  let n = 0;
  for (const c of trained.filter((x) => encodings.has(x.encoding))) {
    n += await removeClaimed(join(o.outDir, exp, 'cells', `${cellKey(c)}.json`), join(o.workDir, runNameOf(c)));
  }
  if (exp === 'precision') {
    // Precision re-evaluates the lm models: forget their cells and the lm runs they reuse.
    for (const c of precisionConfigs(plan, plan.encodings).filter((x) => encodings.has(x.lm.encoding))) {
      n += await removeClaimed(join(o.outDir, exp, 'cells', `${cellKey(c)}.json`), join(o.workDir, runNameOf(c.lm)));
    }
  }
  log(`${exp}: recomputing ${n} finished cell${n === 1 ? '' : 's'} of ${[...encodings].join(', ')}`);
}

/** Removes a cell file and its run folder, holding both claims; 1 if the cell file existed. */
async function removeClaimed(cellPath: string, runDir: string): Promise<number> {
  const claims: Claim[] = [];
  try {
    for (const [path, what] of [
      [cellPath, 'study cell'],
      [runDir, 'training run'],
    ] as const) {
      const claim = await Claim.tryTake(path, what);
      if (!claim) {
        throw new HypeError(
          'argument',
          `cannot recompute ${what} '${path}': another live process is working on it; ` +
            'pass --recompute once it has finished',
        );
      }
      claims.push(claim);
    }
    rmSync(runDir, { recursive: true, force: true });
    if (!existsSync(cellPath)) return 0;
    rmSync(cellPath);
    return 1;
  } finally {
    for (const c of claims) await c.release();
  }
}

/** The vision experiment's finished cells in the folder (sorted by key, so the report is stable). */
function readVisionCells(outDir: string): VisionRecord[] {
  const d = join(outDir, 'vision', 'cells');
  if (!existsSync(d)) return [];
  return readdirSync(d)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => readCellFile<VisionRecord['config'], VisionRecord['result']>(join(d, f)));
}

/** Finished cells of `exp` in the folder (to tell how many an invocation computed). */
function cellsIn(outDir: string, exp: Experiment): number {
  const d = join(outDir, exp, 'cells');
  return existsSync(d) ? readdirSync(d).filter((f) => f.endsWith('.json')).length : 0;
}

/**
 * Writes <outDir>/report.md and <outDir>/plots/*.svg from the results JSON; with `to`, also writes that Markdown
 * file (e.g. RESULTS.md at the repository root) with its plot links pointing into <outDir>/plots.
 */
export async function writeReport(outDir: string, to?: string): Promise<string> {
  if (existsSync(outDir) && !statSync(outDir).isDirectory()) {
    throw new HypeError('io', `results folder '${outDir}' is a file, not a folder; pass the results folder with --out`);
  }
  if (to !== undefined) {
    if (to.trim() === '' || (existsSync(to) && statSync(to).isDirectory())) {
      throw new HypeError(
        'argument',
        `--to '${to}' is a folder or empty; pass a Markdown file path such as RESULTS.md`,
      );
    }
    makeDirs(dirname(to) || '.', 'the folder of --to');
  }
  const input = readResults(outDir);
  const vision = readVisionCells(outDir);
  if (input.lm.length + input.flipflop.length + input.recall.length + input.precision.length + vision.length === 0) {
    throw new HypeError(
      'io',
      `no study results in '${outDir}'; run 'hype study <experiment>' first, or pass the results folder with --out`,
    );
  }
  // The vision experiment's section follows the language-model report (study/vision-report.ts).
  const withVision = (r: { markdown: string; charts: Chart[] }, plotsRel: string) => {
    const v = visionSection(vision, plotsRel);
    return { markdown: [r.markdown.trimEnd(), '', ...v.lines].join('\n'), charts: [...r.charts, ...v.charts] };
  };
  const { markdown, charts } = withVision(buildReport(input, 'plots'), 'plots');
  for (const c of charts) writeSvgFile(join(outDir, 'plots', c.file), await renderSvg(c.spec));
  const reportPath = join(outDir, 'report.md');
  writeFileAtomic(reportPath, markdown);
  if (to) {
    const rel = relative(dirname(to), join(outDir, 'plots')).split('\\').join('/') || '.';
    const dir = relative(dirname(to), outDir).split('\\').join('/') || '.';
    const command = `hype study report --out ${dir} --to ${basename(to)}`;
    writeFileAtomic(to, withVision(buildReport(input, rel, { dir, command }), rel).markdown);
  }
  return reportPath;
}
