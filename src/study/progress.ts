/**
 * What `hype study` tells its user while it runs: the whole plan up front (cells per experiment, how many are
 * already finished), then before each cell its place in the run, the time elapsed and an estimate of the time left,
 * and at the end whether anything was computed at all.
 *
 * The estimate weighs each cell by a rough cost model (multiply-adds of training and evaluation, with per-encoding
 * factors measured in the full study) and scales it by the seconds the cells of this run have taken so far, so it
 * needs one finished cell before it can say anything.
 */
import type { ModelShape, TrainBudget } from './plan.ts';

/**
 * What the cost model reads of a cell's configuration (experiments.ts's configs have these fields; declared here,
 * not imported, so that cell.ts -> progress.ts -> experiments.ts -> cell.ts is no import cycle).
 */
interface TrainedCell {
  experiment: 'lm' | 'flipflop' | 'recall';
  encoding: string;
  trainLength: number;
  model: ModelShape;
  budget: TrainBudget;
  /** lm and recall: evaluation lengths as multiples of trainLength. */
  multipliers?: number[];
  /** lm: held-out bytes scored per length (0 = all). */
  evalBytes?: number;
  /** flipflop and recall: evaluation sequences per mix or length. */
  evalSequences?: number;
}
type LmCell = TrainedCell & { experiment: 'lm'; multipliers: number[]; evalBytes: number };
interface PrecisionCell {
  experiment: 'precision';
  lm: LmCell;
  format: string;
}
export type StudyCell = TrainedCell | PrecisionCell;

/** Byte-level models: the output layer maps width -> 256. */
const VOCAB = 256;
/**
 * Seconds per multiply-add of training relative to evaluation: the backward pass, the optimiser and small batches.
 * Calibrated on measured cells: training over evaluation seconds is about 8.5 for the full plan's lm cells and about
 * 5 for the quick plan's, where this model (with 4) predicts 7.4 and 4.5.
 */
const TRAIN_FACTOR = 4;
/** Encodings slower than the fused kernel, as measured per lm cell in the full study. */
const ENCODING_FACTOR: Record<string, number> = { path: 4, xl: 1.5, 'xl-shared': 1.5, shaw: 1.5, da: 1.5 };
/** Rounded operands are emulated (round, then compute in fp32): 5-7x an fp32 evaluation (full plan), 4-10x (quick). */
const ROUNDED_FACTOR = 6;
/** Held-out bytes assumed when a plan scores the whole split (evalBytes 0). */
const WHOLE_SPLIT_BYTES = 1 << 20;

/** Multiply-adds of one token's forward pass at context length L (projections, MLP, attention, output layer). */
function perToken(m: ModelShape, length: number): number {
  return m.layers * (4 * m.width * m.width + 2 * m.width * m.mlpWidth + 2 * length * m.width) + VOCAB * m.width;
}

const sum = (xs: number[]) => xs.reduce((s, x) => s + x, 0);

/** The relative cost of one cell (arbitrary units; only ratios matter). */
export function cellCost(c: StudyCell): number {
  if (c.experiment === 'precision') {
    // The lm model is trained by the lm cell (or once, by the first format that needs it): evaluation only.
    return (c.format === 'fp32' ? 1 : ROUNDED_FACTOR) * lmEvalCost(c.lm);
  }
  const f = ENCODING_FACTOR[c.encoding] ?? 1;
  const L = c.trainLength;
  const train = TRAIN_FACTOR * c.budget.steps * c.budget.batch * L * perToken(c.model, L);
  const sequences = c.evalSequences ?? 0;
  let evaluation: number;
  if (c.experiment === 'lm') {
    evaluation = lmEvalCost({ ...c, experiment: 'lm', multipliers: c.multipliers ?? [1], evalBytes: c.evalBytes ?? 0 });
  } else if (c.experiment === 'flipflop') {
    evaluation = 3 * sequences * L * perToken(c.model, L); // three mixes
  } else {
    evaluation = sum((c.multipliers ?? [1]).map((m) => sequences * m * L * perToken(c.model, m * L)));
  }
  return f * (train + evaluation);
}

function lmEvalCost(c: LmCell): number {
  const bytes = c.evalBytes > 0 ? c.evalBytes : WHOLE_SPLIT_BYTES;
  return (
    (ENCODING_FACTOR[c.encoding] ?? 1) * sum(c.multipliers.map((m) => bytes * perToken(c.model, m * c.trainLength)))
  );
}

/** "45 s", "3 min 05 s", "1 h 20 min". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}

export interface PlannedCell {
  cell: StudyCell;
  /** Finished by an earlier run (its result file exists): not computed again. */
  finished: boolean;
}

export class StudyProgress {
  private readonly t0: number;
  private readonly toCompute: number;
  private started = 0;
  private doneCost = 0;
  private running: number | null = null;
  private remainingCost: number;

  constructor(
    private readonly planned: readonly PlannedCell[],
    private readonly log: (line: string) => void,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.t0 = now();
    const open = planned.filter((p) => !p.finished);
    this.toCompute = open.length;
    this.remainingCost = sum(open.map((p) => cellCost(p.cell)));
  }

  /** Cells in the plan, and how many of them an earlier run already finished. */
  get total(): number {
    return this.planned.length;
  }
  get finishedBefore(): number {
    return this.planned.length - this.toCompute;
  }
  /** Cells this run has started (and, once it returns, computed). */
  get computed(): number {
    return this.started;
  }

  /** The plan in one line: "plan: 21 cells (lm 5, flipflop 5, recall 5, precision 6); none finished yet, 21 to compute". */
  planLine(): string {
    const counts = new Map<string, number>();
    for (const p of this.planned) counts.set(p.cell.experiment, (counts.get(p.cell.experiment) ?? 0) + 1);
    const parts = [...counts].map(([e, n]) => `${e} ${n}`).join(', ');
    const before = this.finishedBefore;
    const state =
      before === 0
        ? `none finished yet, ${this.toCompute} to compute`
        : this.toCompute === 0
          ? 'all finished already, nothing to compute'
          : `${before} finished already, ${this.toCompute} to compute`;
    return `plan: ${this.total} cell${this.total === 1 ? '' : 's'} (${parts}); ${state}`;
  }

  announce(): void {
    this.log(this.planLine());
  }

  /** Logs the start of a cell: "[3/21] lm tinyshakespeare alibi seed 1 | 1 min 10 s elapsed, about 4 min 20 s left". */
  cellStarted(cell: StudyCell, label: string): void {
    this.finishRunning();
    const cost = cellCost(cell);
    this.running = cost;
    this.started++;
    const elapsed = (this.now() - this.t0) / 1000;
    const eta =
      this.doneCost > 0
        ? `about ${formatDuration((elapsed / this.doneCost) * this.remainingCost)} left`
        : 'time left: known after the first cell';
    this.log(`[${this.started}/${this.toCompute}] ${label} | ${formatDuration(elapsed)} elapsed, ${eta}`);
  }

  private finishRunning(): void {
    if (this.running === null) return;
    this.doneCost += this.running;
    this.remainingCost = Math.max(0, this.remainingCost - this.running);
    this.running = null;
  }

  /** Seconds since the progress began. */
  elapsedSeconds(): number {
    return (this.now() - this.t0) / 1000;
  }
}

/** One running job of the queue coordinator's live table. */
export interface RunningJob {
  label: string;
  worker: string;
  /** Training steps done and planned (0 / 0 before the worker's first report). */
  step: number;
  steps: number;
  /** Seconds since a worker took the job. */
  seconds: number;
}

/**
 * The queue coordinator's live view: one summary line (done, running, waiting, elapsed, estimated time left) and a
 * table of the running jobs, each with its worker, step and its own time left extrapolated from its step rate.
 */
export function queueTable(
  jobs: readonly RunningJob[],
  s: { done: number; total: number; waiting: number; failed: number; elapsed: number; eta: string },
): string {
  const head = [
    `queue: ${s.done}/${s.total} done${s.failed ? ` (${s.failed} failed)` : ''}, ${jobs.length} running, ` +
      `${s.waiting} waiting | ${formatDuration(s.elapsed)} elapsed, ${s.eta}`,
  ];
  if (jobs.length === 0) return head.join('\n');
  const rows = [
    ['cell', 'worker', 'step', 'time left'],
    ...jobs.map((j) => [
      j.label,
      j.worker,
      j.steps > 0 ? `${j.step}/${j.steps}` : 'starting',
      j.step > 0 && j.steps > 0 ? formatDuration((j.seconds / j.step) * (j.steps - j.step)) : '-',
    ]),
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const line = (r: string[]) =>
    '  ' + r.map((x, c) => (c === 2 || c === 3 ? x.padStart(widths[c]!) : x.padEnd(widths[c]!))).join('  ');
  return [...head, ...rows.map(line)].join('\n');
}
