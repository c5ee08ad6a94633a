/**
 * The study's report, generated from its results JSON only: tables (mean ± 95% interval over seeds), the findings
 * (each question answered from the numbers, with its verdict computed from the intervals, never assumed) and the
 * charts. `hype study report` rewrites the Markdown and SVGs from whatever cells exist, so a partial study reports
 * what it has and says what is missing.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { TopLevelSpec } from 'vega-lite';
import { lineChartSpec, listText, type Chart, type LinePoint } from '../plot/charts.ts';
import { presetSpec } from '../pe/hype/encoding.ts';
import { meanInterval } from './stats.ts';
import { markdownTable, type Observation } from './table.ts';
import type {
  FlipflopConfig,
  FlipflopResult,
  LengthEval,
  LmConfig,
  LmResult,
  PrecisionConfig,
  PrecisionResult,
  RecallConfig,
  RecallResult,
} from './experiments.ts';
import { ALL_ENCODINGS, ROUND_TWO_ENCODINGS } from './plan.ts';
import { COST_FILE, readCost, type CostRecord } from './cost.ts';
import { roundTwoSection, roundTwoSetupLines } from './round-two-report.ts';
import { bf16Section } from './bf16-report.ts';
import { aboveChance, compareSamples, fmt, sentence, values, type Sample } from './compare.ts';
import { FLIPFLOP_TASK } from './tasks/flipflop.ts';
import { RECALL_TASK } from './tasks/recall.ts';
import { readCellFile, type CellRecord } from './store.ts';
import { HypeError } from '../errors.ts';
import { readJsonFile } from '../util/fs-safe.ts';
import type { PrecisionFormat, StudyPlan } from './plan.ts';
import type { Versions } from './versions.ts';

export interface StudyMeta {
  plan: StudyPlan;
  versions: Versions;
  backend: string;
  cpus: number;
  /** One entry per `hype study` invocation that ran cells in this folder. */
  invocations: { experiment: string; started: string; seconds: number; cellsRun: number }[];
}

export interface ReportInput {
  meta: StudyMeta | null;
  /** The fp32 lm cells: every lm table and finding reads these. */
  lm: CellRecord<LmConfig, LmResult>[];
  /** lm cells trained in bf16 mixed precision: only their own section compares them with the fp32 ones. */
  lmBf16?: CellRecord<LmConfig, LmResult>[];
  flipflop: CellRecord<FlipflopConfig, FlipflopResult>[];
  recall: CellRecord<RecallConfig, RecallResult>[];
  precision: CellRecord<PrecisionConfig, PrecisionResult>[];
  /** The cost measurement beside the cells (<dir>/cost.json, study/cost.ts), when one was made. */
  cost?: CostRecord | null;
}

export type { Chart } from '../plot/charts.ts';

/** Published flip-flop error rates (PaTH paper, Table 1), in percent. */
export const PUBLISHED_FLIPFLOP: Record<string, { id: number; 'ood-sparse': number; 'ood-dense': number }> = {
  rope: { id: 6.9, 'ood-sparse': 40.3, 'ood-dense': 0.01 },
  path: { id: 0, 'ood-sparse': 0.0001, 'ood-dense': 0 },
};

/** A change of bits per byte from 1x to the longest length within this counts as flat (declared, not fitted). */
export const FLAT_BPB = 0.1;
/** A rise beyond this counts as blowing up. */
export const BLOWUP_BPB = 1;

const ORDER = ALL_ENCODINGS;

/** Reads a results folder: <dir>/study.json and <dir>/<experiment>/cells/*.json. */
export function readResults(dir: string): ReportInput {
  const cells = <C, R>(exp: string): CellRecord<C, R>[] => {
    const d = join(dir, exp, 'cells');
    if (!existsSync(d)) return [];
    return readdirJson<CellRecord<C, R>>(d);
  };
  const metaPath = join(dir, 'study.json');
  const lm = cells<LmConfig, LmResult>('lm');
  return {
    meta: readMeta(metaPath),
    lm: lm.filter((c) => c.config.precision === undefined),
    lmBf16: lm.filter((c) => c.config.precision === 'bf16'),
    // Cells of an earlier task format answer a different question; only the current format is reported.
    flipflop: cells<FlipflopConfig, FlipflopResult>('flipflop').filter((c) => c.config.task === FLIPFLOP_TASK),
    recall: cells<RecallConfig, RecallResult>('recall').filter((c) => c.config.task === RECALL_TASK),
    precision: cells('precision'),
    cost: readCost(join(dir, COST_FILE)),
  };
}

function readdirJson<T>(dir: string): T[] {
  // Sorted by file name (the cell key) so the report does not depend on directory order.
  const names = readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort();
  return names.map((f) => readCellFile(join(dir, f)) as T);
}

/** study.json of a results folder, or null if there is none yet; a corrupt one is refused with the way out. */
export function readMeta(metaPath: string): StudyMeta | null {
  if (!existsSync(metaPath)) return null;
  const fix = 'delete it (the next study run rewrites it; only the invocation log is lost)';
  const m = readJsonFile(metaPath, 'study metadata', fix) as StudyMeta;
  if (typeof m !== 'object' || m === null || !Array.isArray(m.invocations)) {
    throw new HypeError('io', `study metadata '${metaPath}' has no invocations list; ${fix}`);
  }
  return m;
}

// ---------------------------------------------------------------------------------------------- comparisons

export { aboveChance, compareSamples, compareValues, sentence, type Sample, type Verdict } from './compare.ts';

/** A sentence listing which cells learned the task (beat chance), so tables at chance are read as such. */
/** Which cells learned the task at all, by encoding: the ones at chance are named, seed by seed. */
function learnedNote(cells: { encoding: string; seed: number; learned: boolean }[], what: string): string {
  const no = cells.filter((c) => !c.learned);
  if (no.length === 0) return `Every cell beats chance on ${what} (95% binomial margin).`;
  const atChance = sortEnc(uniq(no.map((c) => c.encoding))).map((enc) => {
    const seeds = no.filter((c) => c.encoding === enc).map((c) => c.seed);
    const of = cells.filter((c) => c.encoding === enc).length;
    return `${enc} (seed${seeds.length === 1 ? '' : 's'} ${seeds.sort((a, b) => a - b).join(', ')} of ${of})`;
  });
  return (
    `Every other cell beats chance on ${what} (95% binomial margin). At chance: ${atChance.join('; ')} — at this ` +
    "budget those models did not learn the task; they are still in the means above, so an encoding's mean mixes " +
    'seeds that learned with seeds that did not.'
  );
}

// ------------------------------------------------------------------------------------------------ accessors

export function bpbSamples(
  cells: CellRecord<LmConfig, LmResult>[],
  corpus: string,
  enc: string,
  mult: number,
): Sample[] {
  const out: Sample[] = [];
  for (const c of cells) {
    if (c.config.corpus !== corpus || c.config.encoding !== enc) continue;
    const e = c.result.evals.find((x) => x.multiplier === mult);
    if (e && e.ok) out.push({ seed: c.config.seed, value: e.bitsPerByte });
  }
  return out;
}

function bpbAt(cells: CellRecord<LmConfig, LmResult>[], corpus: string, enc: string, mult: number): number[] {
  return values(bpbSamples(cells, corpus, enc, mult));
}

function cannotEvaluate(evals: readonly LengthEval<object>[], mult: number): string | null {
  const e = evals.find((x) => x.multiplier === mult);
  return e && !e.ok ? e.reason : null;
}

const uniq = <T>(xs: T[]) => [...new Set(xs)];
/** Seeds and encodings present in the results (a folder may hold several invocations' cells). */
const seedsOf = (input: ReportInput) =>
  uniq([...input.lm, ...input.flipflop, ...input.recall].map((c) => c.config.seed)).sort((a, b) => a - b);
/**
 * The seeds in words: one list when every experiment has the same ones, else per experiment, naming the encodings
 * that have more seeds than the rest (recall runs extra seeds for some encodings: its variance is large).
 */
function seedsInWords(input: ReportInput): string {
  const exps: [string, { config: { seed: number; encoding: string } }[]][] = [
    ['lm', input.lm],
    ['flip-flop', input.flipflop],
    ['recall', input.recall],
  ];
  const lists = exps
    .filter(([, cells]) => cells.length > 0)
    .map(([name, cells]) => {
      const seeds = uniq(cells.map((c) => c.config.seed)).sort((a, b) => a - b);
      const count = (e: string) => uniq(cells.filter((c) => c.config.encoding === e).map((c) => c.config.seed)).length;
      const encs = sortEnc(uniq(cells.map((c) => c.config.encoding)));
      const full = encs.filter((e) => count(e) === seeds.length);
      const fewer = encs.filter((e) => count(e) < seeds.length);
      // Name the shorter list: the encodings with every seed, or those with fewer.
      const extra =
        fewer.length === 0
          ? ''
          : full.length <= fewer.length
            ? ` for ${full.join(', ')} (fewer for the others)`
            : ` (fewer for ${fewer.join(', ')})`;
      return { name, seeds, extra };
    });
  if (lists.every((l) => l.seeds.join() === lists[0]!.seeds.join() && l.extra === '')) {
    return `seeds ${seedsOf(input).join(', ')}`;
  }
  return lists.map((l) => `${l.name} seeds ${l.seeds.join(', ')}${l.extra}`).join('; ');
}

const encodingsOf = (input: ReportInput) =>
  sortEnc(uniq([...input.lm, ...input.flipflop, ...input.recall].map((c) => c.config.encoding)));

/**
 * A chart point from the values of one (series, x) over seeds: their mean, and the 95% interval as a band where
 * two or more seeds gave a value (the tables' mean ± half-width), clipped to `range` (what the quantity can be:
 * with 3 seeds t = 4.3, and an accuracy's interval easily passes 100%).
 */
export function meanPoint(
  p: Omit<LinePoint, 'y' | 'lo' | 'hi'>,
  values: readonly number[],
  scale = 1,
  range: readonly [number, number] = [-Infinity, Infinity],
): LinePoint & { n: number } {
  const m = meanInterval(values);
  const clip = (v: number) => Math.min(range[1], Math.max(range[0], v));
  const band = m.n > 1 ? { lo: clip(scale * (m.mean - m.halfWidth)), hi: clip(scale * (m.mean + m.halfWidth)) } : {};
  return { ...p, y: scale * m.mean, ...band, n: m.n };
}

/** Percentages (accuracy, error rate) lie in 0..100. */
export const PERCENT: [number, number] = [0, 100];

/** What a chart's values are: "1 seed", "mean of 3 seeds, 95% interval bands", or a mix. */
export function seedPhrase(counts: readonly number[]): string {
  const ns = uniq([...counts]).sort((a, b) => a - b);
  if (ns.length === 0) return 'no results';
  if (ns.length === 1 && ns[0] === 1) return '1 seed, no interval';
  if (ns.length === 1) return `mean of ${ns[0]} seeds, 95% interval bands`;
  return `mean of ${ns[0]}-${ns[ns.length - 1]} seeds; 95% interval bands where 2 or more`;
}

const sortEnc = (xs: string[]) => [...xs].sort((a, b) => rank(a) - rank(b));
const rank = (e: string) => (ORDER.indexOf(e) < 0 ? ORDER.length : ORDER.indexOf(e));

// --------------------------------------------------------------------------------------------------- report

/**
 * The report as Markdown plus its charts. `plotsRel` is where the charts live relative to the Markdown file;
 * `source`, when the file lives outside the results folder, names that folder (relative) and the command.
 */
export function buildReport(
  input: ReportInput,
  plotsRel = 'plots',
  source?: { dir: string; command: string },
): { markdown: string; charts: Chart[] } {
  const out: string[] = [];
  const charts: Chart[] = [];
  const meta = input.meta;
  const quick = meta?.plan.quick ?? false;
  out.push(`# HyPE study: results${quick ? ' (QUICK VERSION)' : ''}`, '');
  out.push(
    source
      ? `_Generated by \`${source.command}\` from the results JSON in \`${source.dir}/\`; do not edit by hand — ` +
          'rerun the command instead._'
      : '_Generated by `hype study report` from the results JSON in this folder; do not edit by hand — rerun the ' +
          'command instead._',
    '',
  );
  if (quick) {
    out.push(
      '**This is the quick version** (`hype study ... --quick`): small models and a short training budget' +
        (seedsOf(input).length === 1 ? ', one seed' : `, up to ${seedsOf(input).length} seeds`) +
        `, ${encodingsOf(input).length} encodings. It shows the pipeline end to end and gives a first look at ` +
        'small scale; it is weak evidence at best. Run `hype study all` for the full study (bigger models, longer ' +
        'training, several seeds, every encoding).',
      '',
    );
  }
  out.push(...setupSection(input), '');
  out.push(...findingsSection(input), '');
  out.push(...roundTwoSection(input, charts, plotsRel), '');
  out.push(...lmSection(input, charts, plotsRel), '');
  out.push(...flipflopSection(input, charts, plotsRel), '');
  out.push(...recallSection(input, charts, plotsRel), '');
  out.push(...precisionSection(input, charts, plotsRel), '');
  out.push(...bf16Section(input.lm, input.lmBf16 ?? []), '');
  return {
    markdown:
      out
        .join('\n')
        .replace(/\n{3,}/g, '\n\n')
        .trimEnd() + '\n',
    charts,
  };
}

function setupSection(input: ReportInput): string[] {
  const m = input.meta;
  const lines = ['## Setup', ''];
  if (!m) {
    lines.push('No study.json in this folder: the plan and versions are read from the cells alone.');
    return lines;
  }
  const p = m.plan;
  const all = [...input.lm, ...input.flipflop, ...input.recall, ...input.precision];
  const trainSeconds = all.reduce((s, c) => s + c.seconds, 0);
  const commits = uniq(
    all.map(
      (c) =>
        (c.result.versions?.commit ?? 'unknown').slice(0, 7) +
        (c.result.versions?.commit?.endsWith('+dirty') ? '+dirty' : ''),
    ),
  );
  lines.push(
    `- Plan: ${p.quick ? 'quick' : 'full'}; results for ${seedsInWords(input)}; encodings ` +
      `${encodingsOf(input).join(', ')} (a table entry without ± has a single seed).`,
    `- Code: package ${m.versions.package}, commit ${m.versions.commit ?? 'unknown'}, Node ${m.versions.node}; ` +
      `backend ${m.backend}; ${m.cpus} CPU cores.${mixedBackends(all, m.backend)}`,
    `- Cells were computed at commit${commits.length === 1 ? '' : 's'} ${commits.join(', ')} (each cell records its ` +
      "own; a finished cell is not recomputed when the code changes — 'hype study <experiment> --recompute " +
      "<encodings>' does that).",
    `- Cells finished: lm ${input.lm.length}, flip-flop ${input.flipflop.length}, recall ${input.recall.length}, ` +
      `precision ${input.precision.length}; ${(trainSeconds / 60).toFixed(1)} minutes of cell time in all.`,
    `- lm: byte-level models (width ${p.lm.model.width}, ${p.lm.model.layers} layers, ${p.lm.model.heads} heads) ` +
      `trained at L = ${p.lm.trainLength} for ${p.lm.budget.steps} steps of ${p.lm.budget.batch} windows ` +
      `(peak lr ${p.lm.budget.lr}); bits per byte at ${p.lm.multipliers.map((x) => `${x}x`).join(', ')} L in ` +
      `non-overlapping windows (as in the ALiBi paper) on ${p.lm.evalBytes > 0 ? `the first ${p.lm.evalBytes} bytes of ` : ''}` +
      'the held-out split. Corpora: ' +
      [
        p.lm.corpora.includes('tinyshakespeare') ? 'Tiny Shakespeare (first 90% trains, last 10% held out)' : '',
        p.lm.corpora.includes('wikitext2')
          ? "WikiText-2 — **only WikiText-2's validation and test files are available here, so its models train on " +
            'valid.txt (1.1 MB) and are scored on test.txt**; the usual train split (11 MB) is not used'
          : '',
      ]
        .filter(Boolean)
        .join('; ') +
      (p.lm.corpora.includes('wikitext2') ? '.' : ' (WikiText-2 is in the full plan only).'),
    `- flip-flop: ${p.flipflop.model.layers} layer, ${p.flipflop.model.heads} heads, width ${p.flipflop.model.width} ` +
      `(the PaTH paper's Table 1 model), trained on the in-distribution mix (p_i = 0.8) at length ` +
      `${p.flipflop.trainLength} for ${p.flipflop.budget.steps} steps of ${p.flipflop.budget.batch} sequences, ` +
      `next-byte loss on every byte; graded on ${p.flipflop.evalSequences} fresh sequences per mix, only at the read ` +
      "bits (the argmax prediction made at each 'r'). A write or ignore is one byte carrying its bit ('w'/'W', " +
      "'i'/'I'), a read is 'r' then its answer: with the instruction and its bit as separate bytes a one-layer " +
      'model cannot tell a written bit from an ignored one, and every encoding sits at chance. Scaled down from the ' +
      'published setting (far longer sequences and training) to fit this machine.',
    "- recall: needle retrieval (one digit at a random point of random lowercase letters, then a query '?' " +
      'answered by that digit; the needle stays single as the length grows, so it lies further from the query), ' +
      'width ' +
      `${p.recall.model.width}, ${p.recall.model.layers} layers, trained at L = ${p.recall.trainLength} for ` +
      `${p.recall.budget.steps} steps; accuracy of the answer digit on ${p.recall.evalSequences} sequences per ` +
      `length at ${p.recall.multipliers.map((x) => `${x}x`).join(', ')} L.`,
    `- precision: the trained lm models of ${p.precision.encodings.join(', ')} on ${p.precision.corpus} ` +
      `re-evaluated with their attention operands in ${p.precision.formats.join(', ')} (emulated: values rounded, ` +
      "products and sums in fp32). bf16 and fp16 round the concat route's operands Qhat, Khat, Vhat, the two " +
      'plain bias columns per pair included; bf16-split and fp16-split do the same with split columns (SPEC ' +
      'section 8: each bias column as hi/lo parts, six columns per pair, no kernel change; their cost is paired ' +
      "with the same reloaded model's fp32 evaluation); bf16-kernel runs the same model on the kernel route " +
      "(ALiBi's way: Q, K, V rounded to bf16, the bias computed and added in fp32).",
  );
  if (ROUND_TWO_ENCODINGS.some((e) => plannedEncodings(input).has(e))) lines.push(...roundTwoSetupLines());
  return lines;
}

function lmSection(input: ReportInput, charts: Chart[], plotsRel: string): string[] {
  const lines = ['## lm: length extrapolation (bits per byte, lower is better)', ''];
  if (input.lm.length === 0) return [...lines, 'No lm cells yet.'];
  const corpora = uniq(input.lm.map((c) => c.config.corpus));
  const points: (LinePoint & { n: number })[] = [];
  for (const corpus of corpora) {
    const cells = input.lm.filter((c) => c.config.corpus === corpus);
    const L = cells[0]!.config.trainLength;
    const obs: Observation[] = [];
    const reasons = new Map<string, string>();
    for (const c of cells) {
      for (const e of c.result.evals) {
        if (e.ok) obs.push({ row: c.config.encoding, column: e.length, value: e.bitsPerByte });
        else reasons.set(`${c.config.encoding}\u0000${e.length}`, e.reason);
      }
    }
    lines.push(`### ${corpus} (trained at L = ${L})`, '');
    lines.push(
      markdownTable(obs, {
        rowHeader: 'encoding',
        columnHeader: (x) => `${x} (${Number(x) / L}x)`,
        rowOrder: ORDER,
        emptyCell: (r, col) => (reasons.has(`${r}\u0000${col}`) ? 'cannot evaluate' : '—'),
      }),
      '',
    );
    const why = [...reasons.entries()][0];
    if (why) {
      lines.push(`"cannot evaluate": the model refuses that length rather than inventing positions (${why[1]}).`, '');
    }
    for (const enc of sortEnc(uniq(cells.map((c) => c.config.encoding)))) {
      for (const mult of uniq(cells.flatMap((c) => c.config.multipliers))) {
        const v = bpbAt(cells, corpus, enc, mult);
        if (v.length > 0) points.push(meanPoint({ x: mult * L, series: enc, facet: corpus }, v));
      }
    }
  }
  charts.push({
    file: 'lm-bits-per-byte.svg',
    spec: lineChartSpec({
      title: `Bits per byte vs evaluation length (${seedPhrase(points.map((p) => p.n))})`,
      subtitle: ['non-overlapping windows, lower is better; an encoding missing at a length cannot evaluate there'],
      points,
      xTitle: 'evaluation length (bytes)',
      yTitle: 'bits per byte',
      yUnit: 'bits per byte',
      seriesTitle: 'encoding',
      facetTitle: 'corpus',
      facetColumns: 2,
      width: 300,
      height: 220,
      seriesOrder: sortEnc(uniq(points.map((p) => p.series))),
      xScale: 'log2',
      // Bits per byte vary over a narrow band: starting at zero would flatten every curve.
      yZero: false,
    }),
  });
  lines.push(`![bits per byte vs length](${plotsRel}/lm-bits-per-byte.svg)`, '');
  const trainRows = sortEnc(uniq(input.lm.map((c) => c.config.encoding)));
  const t: Observation[] = [];
  for (const c of input.lm) {
    t.push({
      row: c.config.encoding,
      column: `${c.config.corpus} final train loss`,
      value: c.result.train.finalLoss / Math.LN2,
    });
    t.push({ row: c.config.encoding, column: `${c.config.corpus} minutes`, value: c.seconds / 60 });
  }
  lines.push('Training: final training loss (bits per byte, mean of the last 5% of steps) and cell wall time.', '');
  lines.push(markdownTable(t, { rowHeader: 'encoding', rowOrder: trainRows, digits: 2 }));
  return lines;
}

/**
 * Said when the cells were not all computed on the backend the metadata names (a results folder another backend
 * added to): every backend trains the same fp32 models, so quality numbers differ only by roundoff-level drift (as
 * between native and reference, like a different seed's noise but smaller); wall times compare within a backend only.
 */
function mixedBackends(cells: { result: { backend: string } }[], named: string): string {
  const counts = new Map<string, number>();
  for (const c of cells) counts.set(c.result.backend, (counts.get(c.result.backend) ?? 0) + 1);
  if ([...counts.keys()].every((b) => b === named)) return '';
  const each = [...counts].map(([b, n]) => `${b} (${n})`).join(', ');
  return (
    ` Cells by backend: ${each}; every backend trains the same fp32 models, so quality numbers agree up to ` +
    'roundoff-level drift, but cell wall times compare only between cells of one backend.'
  );
}

function flipflopSection(input: ReportInput, charts: Chart[], plotsRel: string): string[] {
  const lines = ['## flip-flop: error rate on the read bits (%, lower is better)', ''];
  if (input.flipflop.length === 0) return [...lines, 'No flip-flop cells yet.'];
  const mixes = ['id', 'ood-sparse', 'ood-dense'] as const;
  const obs: Observation[] = [];
  const bars: Bar[] = [];
  for (const c of input.flipflop) {
    for (const m of mixes) obs.push({ row: c.config.encoding, column: m, value: 100 * c.result.mixes[m].errorRate });
  }
  lines.push(markdownTable(obs, { rowHeader: 'encoding', rowOrder: ORDER, columnOrder: mixes, digits: 2 }), '');
  const graded = mixes.map((m) => `${m} ${input.flipflop[0]!.result.mixes[m].graded}`).join(', ');
  const learned = input.flipflop.map((c) => {
    const r = c.result.mixes.id;
    return {
      encoding: c.config.encoding,
      seed: c.config.seed,
      learned: aboveChance(r.graded - r.errors, r.graded, 0.5),
    };
  });
  lines.push(learnedNote(learned, 'the in-distribution reads (chance: 50% error)'), '');
  lines.push(
    `Graded read bits per cell: ${graded} (the resolution of a rate is 1 / that count; the published rates come ` +
      'from far larger evaluation sets).',
    '',
    'Published (PaTH paper, Table 1; their length and budget, not ours):',
    '',
    '| encoding | id | ood-sparse | ood-dense |',
    '| --- | ---: | ---: | ---: |',
    ...Object.entries(PUBLISHED_FLIPFLOP).map(
      ([e, r]) => `| ${e} (published) | ${r.id} | ${r['ood-sparse']} | ${r['ood-dense']} |`,
    ),
    '',
  );
  for (const enc of sortEnc(uniq(input.flipflop.map((c) => c.config.encoding)))) {
    for (const m of mixes) {
      const v = input.flipflop.filter((c) => c.config.encoding === enc).map((c) => 100 * c.result.mixes[m].errorRate);
      const p = meanPoint({ x: 0, series: enc }, v, 1, PERCENT);
      bars.push({ encoding: enc, mix: m, error: p.y, lo: p.lo, hi: p.hi, n: p.n });
    }
  }
  charts.push({ file: 'flipflop-errors.svg', spec: barSpec(bars) });
  lines.push(`![flip-flop error rates](${plotsRel}/flipflop-errors.svg)`);
  return lines;
}

interface Bar {
  encoding: string;
  mix: string;
  /** Mean error rate (%) over seeds, and its 95% interval where two or more seeds exist. */
  error: number;
  lo?: number;
  hi?: number;
  n: number;
}

/** Recall chance: the answer is one digit of ten. */
const RECALL_CHANCE = 0.1;

/** Flip-flop chance: a guessed read bit is wrong half the time. */
const FLIPFLOP_CHANCE_ERROR = 50;

function barSpec(values: Bar[]): TopLevelSpec {
  const x = {
    field: 'encoding',
    type: 'nominal' as const,
    title: null,
    sort: sortEnc(uniq(values.map((v) => v.encoding))),
  };
  const y = { type: 'quantitative' as const, title: 'error rate (%)' };
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: `Flip-flop: error rate on the read bits (${seedPhrase(values.map((v) => v.n)).replace('bands', 'bars')})`,
      subtitle: [`lower is better; chance = ${FLIPFLOP_CHANCE_ERROR}% error (a guessed bit)`],
      anchor: 'start',
    },
    // The bars are named on the axis; colour only sets HyPE apart from its peers (one colour per encoding
    // would repeat the 10-colour palette across 14 bars).
    data: { values: values.map((v) => ({ ...v, family: v.encoding.startsWith('hype') ? 'HyPE' : 'peer' })) },
    facet: { field: 'mix', type: 'nominal', title: 'instruction mix', sort: ['id', 'ood-sparse', 'ood-dense'] },
    columns: 3,
    spec: {
      width: 200,
      height: 180,
      layer: [
        {
          mark: 'bar',
          encoding: {
            x,
            y: { ...y, field: 'error' },
            color: { field: 'family', type: 'nominal', title: null, sort: ['peer', 'HyPE'] },
          },
        },
        {
          transform: [{ filter: 'isFinite(datum.lo) && isFinite(datum.hi)' }],
          mark: { type: 'rule', color: 'black', strokeWidth: 1 },
          encoding: { x, y: { ...y, field: 'lo' }, y2: { field: 'hi' } },
        },
        {
          // One row per panel: the chance rule drawn once, not once per bar.
          transform: [{ filter: `datum.encoding === ${JSON.stringify(values[0]?.encoding ?? '')}` }],
          mark: { type: 'rule', strokeDash: [5, 4], color: '#555' },
          encoding: { y: { ...y, datum: FLIPFLOP_CHANCE_ERROR } },
        },
      ],
    },
  };
}

function recallSection(input: ReportInput, charts: Chart[], plotsRel: string): string[] {
  const lines = ['## recall: needle retrieval accuracy (%, higher is better)', ''];
  if (input.recall.length === 0) return [...lines, 'No recall cells yet.'];
  const L = input.recall[0]!.config.trainLength;
  const obs: Observation[] = [];
  const reasons = new Set<string>();
  const points: (LinePoint & { n: number })[] = [];
  for (const c of input.recall) {
    for (const e of c.result.evals) {
      if (e.ok) obs.push({ row: c.config.encoding, column: e.length, value: 100 * e.accuracy });
      else reasons.add(`${c.config.encoding}\u0000${e.length}`);
    }
  }
  lines.push(
    markdownTable(obs, {
      rowHeader: 'encoding',
      columnHeader: (x) => `${x} (${Number(x) / L}x)`,
      rowOrder: ORDER,
      digits: 1,
      emptyCell: (r, col) => (reasons.has(`${r}\u0000${col}`) ? 'cannot evaluate' : '—'),
    }),
    '',
    `Chance is ${100 * RECALL_CHANCE}% (one digit of ten).`,
    '',
  );
  const learned = input.recall.map((c) => {
    const e = c.result.evals.find((x) => x.multiplier === 1);
    const ok = e !== undefined && e.ok && aboveChance(e.correct, e.graded, RECALL_CHANCE);
    return { encoding: c.config.encoding, seed: c.config.seed, learned: ok };
  });
  lines.push(learnedNote(learned, 'recall at the training length'), '');
  for (const enc of sortEnc(uniq(input.recall.map((c) => c.config.encoding)))) {
    const cells = input.recall.filter((c) => c.config.encoding === enc);
    for (const mult of cells[0]!.config.multipliers) {
      const v = cells.flatMap((c) =>
        c.result.evals.filter((e) => e.multiplier === mult && e.ok).map((e) => (e.ok ? e.accuracy : 0)),
      );
      if (v.length > 0) points.push(meanPoint({ x: mult * L, series: enc, facet: enc }, v, 100, PERCENT));
    }
  }
  const encodings = sortEnc(uniq(points.map((p) => p.series)));
  // Several seeds give wide bands (t = 4.3 at 3 seeds); past a few encodings they would cover each other, so
  // each encoding then gets its own panel (one y scale for all, so panels still compare).
  const panels = encodings.length > 5 && points.some((p) => p.lo !== undefined);
  charts.push({
    file: 'recall-accuracy.svg',
    spec: lineChartSpec({
      title: `Needle retrieval accuracy vs evaluation length (${seedPhrase(points.map((p) => p.n))})`,
      subtitle: [
        `trained at L = ${L}; higher is better; chance = ${100 * RECALL_CHANCE}% (one digit of ten); an encoding ` +
          'missing at a length cannot evaluate there',
      ],
      points: panels ? points : points.map(({ facet: _, ...p }) => p),
      xTitle: 'evaluation length (bytes)',
      yTitle: 'accuracy (%)',
      yUnit: 'percentage points',
      seriesTitle: 'encoding',
      seriesOrder: encodings,
      xScale: 'log2',
      rules: [{ y: 100 * RECALL_CHANCE, label: `chance ${100 * RECALL_CHANCE}%` }],
      ...(panels ? { facetTitle: 'encoding', facetOrder: encodings, facetColumns: 5, width: 170, height: 110 } : {}),
    }),
  });
  lines.push(`![recall accuracy vs length](${plotsRel}/recall-accuracy.svg)`);
  return lines;
}

function precisionSection(input: ReportInput, charts: Chart[], plotsRel: string): string[] {
  const lines = ['## precision: HyPE with its attention operands rounded (bits per byte)', ''];
  if (input.precision.length === 0) return [...lines, 'No precision cells yet.'];
  const obs: Observation[] = [];
  const points: (LinePoint & { n: number })[] = [];
  const L = input.precision[0]!.config.lm.trainLength;
  const models = sortEnc(uniq(input.precision.map((c) => c.config.lm.encoding)));
  const formats = uniq(input.precision.map((c) => c.config.format))
    .filter((f) => f !== 'fp32')
    .sort((a, b) => formatRank(a) - formatRank(b));
  for (const c of input.precision) {
    for (const e of c.result.evals) {
      if (e.ok) obs.push({ row: `${c.config.lm.encoding} ${c.config.format}`, column: e.length, value: e.bitsPerByte });
    }
  }
  const precisionRows = precisionRowOrder(input);
  lines.push(
    markdownTable(obs, {
      rowHeader: 'model, operands',
      columnHeader: (x) => `${x} (${Number(x) / L}x)`,
      digits: 4,
      rowOrder: precisionRows,
    }),
    '',
  );
  const diffs = precisionDiffs(input);
  const dObs: Observation[] = diffs.flatMap((d) =>
    d.values.map((value) => ({ row: `${d.encoding} ${d.format} − fp32`, column: d.length, value })),
  );
  lines.push('Cost of rounding: the same model, rounded minus fp32 (paired by seed; positive = worse).', '');
  lines.push(
    markdownTable(dObs, {
      rowHeader: 'model, format',
      columnHeader: (x) => `${x} (${Number(x) / L}x)`,
      digits: 4,
      rowOrder: precisionRows.map((r) => `${r} − fp32`),
    }),
  );
  for (const d of diffs) {
    points.push(meanPoint({ x: d.length, series: d.format, facet: d.format, row: d.encoding }, d.values));
  }
  charts.push({
    file: 'precision-cost.svg',
    // One panel per model and format, each with its own y scale: the costs span 1e-6 to 2 bits per byte, so on
    // one shared scale every small cost would lie flat on zero under the large ones.
    spec: lineChartSpec({
      title: `HyPE operands rounded: bits per byte minus fp32 (${seedPhrase(points.map((p) => p.n))})`,
      subtitle: [
        'the same trained model, rounded minus fp32, paired by seed; positive = worse',
        'one panel per model (row) and format (column), each with its own y scale: read the axis before comparing',
      ],
      points,
      xTitle: 'evaluation length (bytes)',
      yTitle: 'Δ bits per byte',
      seriesTitle: 'format',
      seriesOrder: formats,
      facetTitle: 'format',
      facetOrder: formats,
      rowTitle: 'model',
      rowOrder: models,
      yScale: 'independent',
      width: 170,
      height: 110,
      xScale: 'log2',
      rules: [{ y: 0, label: 'no cost' }],
    }),
  });
  lines.push('', `![precision cost](${plotsRel}/precision-cost.svg)`);
  return lines;
}

const FORMAT_ORDER: PrecisionFormat[] = ['fp32', 'bf16', 'bf16-split', 'fp16', 'fp16-split', 'bf16-kernel'];
/** Known formats in FORMAT_ORDER, any other after them. */
const formatRank = (f: string) =>
  FORMAT_ORDER.includes(f as PrecisionFormat) ? FORMAT_ORDER.indexOf(f as PrecisionFormat) : FORMAT_ORDER.length;

/** Precision rows ('<model> <format>') in the published order: models as the encodings, then the formats. */
function precisionRowOrder(input: ReportInput): string[] {
  return sortEnc(uniq(input.precision.map((c) => c.config.lm.encoding))).flatMap((e) =>
    FORMAT_ORDER.map((f) => `${e} ${f}`),
  );
}

/**
 * Rounded-minus-fp32 bits per byte, paired by trained model: against the cell's own fp32 evaluation of the same
 * reloaded model when it has one (split formats), else the lm cell's fp32 precision cell.
 */
function precisionDiffs(input: ReportInput) {
  const out: { encoding: string; format: string; length: number; values: number[] }[] = [];
  const key = (c: PrecisionConfig) => JSON.stringify(c.lm);
  const fp32 = new Map(input.precision.filter((c) => c.config.format === 'fp32').map((c) => [key(c.config), c]));
  for (const c of input.precision) {
    if (c.config.format === 'fp32') continue;
    const baseEvals = c.result.fp32Evals ?? fp32.get(key(c.config))?.result.evals;
    if (!baseEvals) continue;
    for (const e of c.result.evals) {
      const b = baseEvals.find((x) => x.length === e.length);
      if (!e.ok || !b || !b.ok) continue;
      let row = out.find(
        (r) => r.encoding === c.config.lm.encoding && r.format === c.config.format && r.length === e.length,
      );
      if (!row)
        out.push((row = { encoding: c.config.lm.encoding, format: c.config.format, length: e.length, values: [] }));
      row.values.push(e.bitsPerByte - b.bitsPerByte);
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------- findings

/**
 * The answer to "does HyPE survive bf16?": per model, the worst mean cost over the evaluation lengths of plain and
 * split columns, against the targets of the split-columns issue (bf16-split < 0.01, fp16-split < 0.002 bits per
 * byte at every length).
 */
function survivalLines(diffs: ReturnType<typeof precisionDiffs>): string[] {
  const targets: Record<string, number> = { 'bf16-split': 0.01, 'fp16-split': 0.002 };
  const worst = (enc: string, format: string) => {
    const rows = diffs.filter((d) => d.encoding === enc && d.format === format);
    if (rows.length === 0) return null;
    const means = rows.map((d) => meanInterval(d.values).mean);
    return { value: Math.max(...means), models: Math.min(...rows.map((d) => d.values.length)) };
  };
  const signed = (v: number) =>
    `${v >= 0 ? '+' : ''}${Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(1) : v.toFixed(4)}`;
  const lines: string[] = [];
  for (const enc of sortEnc(uniq(diffs.map((d) => d.encoding)))) {
    const parts: string[] = [];
    let meets = true;
    for (const [plain, split] of [
      ['bf16', 'bf16-split'],
      ['fp16', 'fp16-split'],
    ] as const) {
      const p = worst(enc, plain);
      const q = worst(enc, split);
      if (!q) continue;
      const ok = q.value < targets[split]!;
      meets &&= ok;
      parts.push(
        `${split} costs at most ${signed(q.value)} bits per byte at any length ` +
          `(${q.models} model${q.models === 1 ? '' : 's'}; ${ok ? 'meets' : 'misses'} the < ${targets[split]} target)` +
          (p ? `, plain ${plain} up to ${signed(p.value)}` : ''),
      );
    }
    if (parts.length)
      lines.push(`  - **Survival, ${enc}: ${meets ? 'yes' : 'not fully'}, with split columns.** ${parts.join('; ')}.`);
  }
  return lines;
}

function findingsSection(input: ReportInput): string[] {
  const lines = ['## Findings (computed from the numbers below)', ''];
  const count = (cells: { config: { seed: number } }[]) => uniq(cells.map((c) => c.config.seed)).length;
  const seeds = count([...input.lm, ...input.flipflop]) || count(input.recall);
  const recallMore = count(input.recall) > seeds ? ` (recall: up to ${count(input.recall)})` : '';
  lines.push(
    `Evidence: ${seeds} seed${seeds === 1 ? '' : 's'}${recallMore}, small byte-level models, short training on 2 CPU cores. ` +
      'Cells with the same seed share their initial weights and training batches, so two encodings are compared ' +
      'by their per-seed (paired) differences: "better"/"worse" means the 95% interval of the mean paired ' +
      'difference over the seeds both have excludes 0 (with fewer than two shared seeds: that the two 95% intervals do not overlap). With one seed no ' +
      'interval exists and differences are shown but not judged. Small-scale results may not carry over to large ' +
      'models.',
    '',
  );
  const corpora = uniq(input.lm.map((c) => c.config.corpus));
  const longest = (corpus: string) =>
    Math.max(...input.lm.filter((c) => c.config.corpus === corpus).flatMap((c) => c.config.multipliers));
  const lmPair = (a: string, b: string, mults: (corpus: string) => number[]) =>
    corpora.flatMap((corpus) =>
      mults(corpus).map(
        (m) =>
          `  - ${corpus}, ${m}x L: ` +
          sentence(a, bpbSamples(input.lm, corpus, a, m), b, bpbSamples(input.lm, corpus, b, m), 'bits per byte', true),
      ),
    );
  const ends = (corpus: string) => [1, longest(corpus)];
  // Findings are about the encodings this study runs; the ones its plan leaves out are named once, here.
  const planned = plannedEncodings(input);
  const has = (...encodings: string[]) => encodings.every((e) => planned.has(e));
  const omitted = ALL_ENCODINGS.filter((e) => !planned.has(e));
  if (omitted.length > 0) {
    lines.push(
      `Not in this study's plan, so not in the findings: ${listText(omitted)}` +
        (input.meta?.plan.quick ? ' (`hype study all` runs every encoding).' : '.'),
      '',
    );
  }
  let asked = 0;
  const ask = (question: string) => lines.push(`${++asked}. ${question}`);
  const pairs = (a: string, b: string, mults: (corpus: string) => number[]) => (has(a, b) ? lmPair(a, b, mults) : []);

  if (has('hype-recency', 'alibi')) {
    ask("**Does hype-recency match ALiBi's extrapolation?**");
    if (corpora.length === 0) lines.push('  - No lm results yet.');
    else {
      lines.push(...lmPair('hype-recency', 'alibi', (c) => uniq([1, 4, longest(c)]).filter((m) => m <= longest(c))));
      lines.push(...corpora.map((c) => '  - ' + extrapolationVerdict(input, c, 'hype-recency', 'alibi')));
    }
    lines.push(...flipRecallPair(input, 'hype-recency', 'alibi'));
  }
  if (has('hype-paper') && (has('hype-recency') || has('none'))) {
    ask('**Does hype-paper (the literal sign, rewarding distance) hurt?**');
    if (corpora.length === 0) lines.push('  - No lm results yet.');
    else lines.push(...pairs('hype-paper', 'hype-recency', ends), ...pairs('hype-paper', 'none', ends));
    if (has('hype-recency')) lines.push(...flipRecallPair(input, 'hype-paper', 'hype-recency'));
  }
  if (has('hype-learned', 'hype-recency')) {
    ask('**Does learning tau/mu help?**');
    if (corpora.length === 0) lines.push('  - No lm results yet.');
    else lines.push(...lmPair('hype-learned', 'hype-recency', ends));
    lines.push(...learnedParamLines(input));
    lines.push(...flipRecallPair(input, 'hype-learned', 'hype-recency'));
  }
  const newcomers = [
    ['path', 'PaTH'],
    ['hope', 'HoPE'],
  ].filter(([e]) => has(e!, 'rope'));
  if (newcomers.length > 0) {
    ask(
      `**How ${newcomers.length === 1 ? 'does' : 'do'} ${listText(newcomers.map(([, n]) => n!))} fare at this scale?**`,
    );
    if (corpora.length > 0) lines.push(...newcomers.flatMap(([e]) => lmPair(e!, 'rope', ends)));
    lines.push(...newcomers.flatMap(([e]) => flipRecallPair(input, e!, 'rope')));
  }
  ask('**What does bf16 cost HyPE, and does HyPE survive bf16?**');
  const diffs = precisionDiffs(input);
  if (diffs.length === 0) lines.push('  - No precision results yet.');
  const firstLm = input.precision[0]?.config.lm;
  if (firstLm) {
    // The scale of the recency preset's tau, from the preset itself: bias rounding error grows like |tau| u.
    const spec = presetSpec({
      preset: 'recency',
      heads: firstLm.model.heads,
      kvHeads: firstLm.model.heads,
      headDim: firstLm.model.width / firstLm.model.heads,
      lengthExtra: 16 * firstLm.trainLength,
    });
    const tauMax = Math.max(...Array.from(spec.tau, Math.abs));
    lines.push(
      `  - Context: the recency preset here has |tau| up to ${tauMax.toFixed(0)} (tau = -m/mu with mu = 0.5 / ` +
        `L_extra), and the concat route recovers the bias from products of order |tau|, so a unit roundoff u ` +
        `(bf16 2^-8, fp16 2^-11) blurs it by about |tau| u = ${(tauMax * 2 ** -8).toFixed(2)} (bf16) or ` +
        `${(tauMax * 2 ** -11).toFixed(2)} (fp16) logits (SPEC sections 3-4); the paper preset has |tau| = 1. ` +
        'The kernel route (bf16-kernel) adds the bias in fp32, so its rounding comes from Q and K alone. Split ' +
        'columns (bf16-split, fp16-split) carry each bias column as hi + lo, which leaves ~|tau| u^2 instead.',
    );
  }
  lines.push(...survivalLines(diffs));
  const present = new Set(diffs.map((d) => `${d.encoding} ${d.format}`));
  const groups = precisionRowOrder(input).filter((g) => present.has(g));
  for (const g of groups) {
    const rows = diffs.filter((d) => `${d.encoding} ${d.format}` === g).sort((a, b) => a.length - b.length);
    const n = Math.min(...rows.map((d) => d.values.length));
    const parts = rows.map((d) => {
      const m = meanInterval(d.values);
      const judged =
        m.n < 2 ? '' : Math.abs(m.mean) > m.halfWidth ? ' (interval excludes 0)' : ' (interval includes 0)';
      return `${d.length}: ${m.mean >= 0 ? '+' : ''}${m.mean.toExponential(2)}${judged}`;
    });
    lines.push(
      `  - ${g} operands minus fp32, bits per byte by evaluation length (${n < 2 ? 'one trained model' : `${n} trained models, paired`}): ` +
        parts.join(', ') +
        '.',
    );
  }
  ask(
    "**Does the ALiBi paper's shape reproduce** (sinusoidal and learned blow up past L, rotary and T5's bias degrade, ALiBi stays flat)?",
  );
  const shapeQuestion = asked;
  if (corpora.length === 0) lines.push('  - No lm results yet.');
  for (const corpus of corpora) {
    for (const enc of ['sinusoidal', 'learned', 'rope', 't5', 'alibi', 'hype-recency'].filter((e) => has(e))) {
      lines.push(`  - ${corpus}, ${enc}: ${shapeOf(input, corpus, enc)}`);
    }
  }
  ask(
    `**Which encodings extrapolate?** (every encoding, by the thresholds of finding ${shapeQuestion}; means over seeds)`,
  );
  if (corpora.length === 0) lines.push('  - No lm results yet.');
  lines.push(...corpora.map((c) => '  - ' + shapeSummary(input, c)));
  ask(
    '**How does the best HyPE compare with the best peer?** (per corpus and length, the HyPE variant and the ' +
      'other encoding with the lowest mean bits per byte)',
  );
  if (corpora.length === 0) lines.push('  - No lm results yet.');
  for (const corpus of corpora) {
    for (const m of ends(corpus)) {
      const hype = bestAt(input, corpus, m, (e) => e.startsWith('hype'));
      const peer = bestAt(input, corpus, m, (e) => !e.startsWith('hype'));
      if (!hype || !peer) continue;
      lines.push(
        `  - ${corpus}, ${m}x L: ` +
          sentence(
            hype,
            bpbSamples(input.lm, corpus, hype, m),
            peer,
            bpbSamples(input.lm, corpus, peer, m),
            'bits per byte',
            true,
          ),
      );
    }
  }
  return lines;
}

/** The encodings the study's plan includes, with any that have results (a folder may hold several plans' cells). */
function plannedEncodings(input: ReportInput): Set<string> {
  return new Set([
    ...(input.meta?.plan.encodings ?? []),
    ...encodingsOf(input),
    ...input.precision.map((c) => c.config.lm.encoding),
  ]);
}

/** The encoding (among those `which` accepts) with the lowest mean bits per byte at multiplier m, or null. */
function bestAt(input: ReportInput, corpus: string, m: number, which: (enc: string) => boolean): string | null {
  let best: { enc: string; mean: number } | null = null;
  for (const enc of sortEnc(uniq(input.lm.map((c) => c.config.encoding))).filter(which)) {
    const values = bpbAt(input.lm, corpus, enc, m);
    if (values.length === 0) continue;
    const mean = meanInterval(values).mean;
    if (!best || mean < best.mean) best = { enc, mean };
  }
  return best?.enc ?? null;
}

/**
 * What hype-learned did with tau and mu (relative units: both start at magnitude 1). When mu D stays small the bias
 * is ~ tau mu D, so the two are only identifiable through their product (the slope); the lines say how far each
 * moved, how far they moved apart, and the slope change.
 */
function learnedParamLines(input: ReportInput): string[] {
  const pairs: { tau: number; mu: number }[] = [];
  // hype-learned's cells only: hype-gated stores the same parameter names, but its bias is gated.
  for (const c of input.lm.filter((cell) => cell.config.encoding === 'hype-learned')) {
    const p = c.result.hypeParams ?? {};
    for (const [name, tau] of Object.entries(p)) {
      if (!name.endsWith('hype.tau')) continue;
      const mu = p[name.replace(/tau$/, 'mu')];
      if (!mu || mu.length !== tau.length) continue; // grouped-query mu: not paired per head here
      tau.forEach((t, i) => pairs.push({ tau: Math.abs(t), mu: Math.abs(mu[i]!) }));
    }
  }
  if (pairs.length === 0) return [];
  const range = (xs: number[]) => `${Math.min(...xs).toFixed(3)} to ${Math.max(...xs).toFixed(3)}`;
  const apart = Math.max(...pairs.map((p) => Math.abs(p.tau - p.mu)));
  return [
    `  - Trained |tau| and |mu| relative to the recency start (1 = unchanged), over ${pairs.length} heads x layers x ` +
      `seeds: |tau| ${range(pairs.map((p) => p.tau))}, |mu| ${range(pairs.map((p) => p.mu))}; largest ` +
      `| |tau| - |mu| | ${apart.toExponential(1)}. The effective ALiBi-like slope |tau mu| changed by a factor ` +
      `${range(pairs.map((p) => p.tau * p.mu))}.` +
      (apart < 1e-3
        ? ' tau and mu moved in lockstep: while mu D is small the bias is ~ tau mu D, whose gradients with respect ' +
          'to the two (in these units) are equal, so training learned the slope and not the curvature.'
        : ''),
  ];
}

/** How an encoding's bits per byte move from 1x to the longest length, classified by the declared thresholds. */
function shapeOf(input: ReportInput, corpus: string, enc: string): string {
  const cells = input.lm.filter((c) => c.config.corpus === corpus && c.config.encoding === enc);
  if (cells.length === 0) return 'not run.';
  const longest = Math.max(...cells[0]!.config.multipliers);
  const reason = cannotEvaluate(cells[0]!.result.evals, longest);
  if (reason) {
    const first = cells[0]!.result.evals.find((e) => !e.ok)!;
    return `cannot evaluate from ${first.multiplier}x L on (its table ends at L): the honest form of "blows up".`;
  }
  const { a, b, d, word, vsNone } = shapeNumbers(input, corpus, enc, longest);
  const caveat =
    vsNone > FLAT_BPB
      ? ` Caution: at 1x it is ${fmt(vsNone)} bits per byte worse than no positional encoding at all, so this model ` +
        'hardly trained and its curve says little about extrapolation.'
      : '';
  return `${fmt(a)} -> ${fmt(b)} bits per byte from 1x to ${longest}x (${d >= 0 ? '+' : ''}${fmt(d)}): ${word} (flat = within ±${FLAT_BPB}, blow-up = more than +${BLOWUP_BPB}).${caveat}`;
}

type Shape = 'improves' | 'stays flat' | 'degrades' | 'blows up';

/** Mean bits per byte at 1x (a) and at `longest` (b), the change classified by the declared thresholds, and 1x minus none's 1x. */
function shapeNumbers(input: ReportInput, corpus: string, enc: string, longest: number) {
  const a = meanInterval(bpbAt(input.lm, corpus, enc, 1)).mean;
  const b = meanInterval(bpbAt(input.lm, corpus, enc, longest)).mean;
  const d = b - a;
  const word: Shape =
    d > BLOWUP_BPB ? 'blows up' : d > FLAT_BPB ? 'degrades' : d < -FLAT_BPB ? 'improves' : 'stays flat';
  const none = bpbAt(input.lm, corpus, 'none', 1);
  const vsNone = none.length > 0 && enc !== 'none' ? a - meanInterval(none).mean : 0;
  return { a, b, d, word, vsNone };
}

/**
 * Every encoding of a corpus grouped by its 1x -> longest shape (the thresholds of shapeOf), each with its change and
 * its seed count, so the whole field's extrapolation reads in one line per corpus.
 */
function shapeSummary(input: ReportInput, corpus: string): string {
  const cells = input.lm.filter((c) => c.config.corpus === corpus);
  const longest = Math.max(...cells.flatMap((c) => c.config.multipliers));
  const groups = new Map<string, string[]>();
  const add = (group: string, item: string) => groups.set(group, [...(groups.get(group) ?? []), item]);
  for (const enc of sortEnc(uniq(cells.map((c) => c.config.encoding)))) {
    const own = cells.filter((c) => c.config.encoding === enc);
    if (cannotEvaluate(own[0]!.result.evals, longest)) {
      add('cannot evaluate past L', enc);
      continue;
    }
    const { d, word, vsNone } = shapeNumbers(input, corpus, enc, longest);
    const seeds = uniq(own.map((c) => c.config.seed)).length;
    const notes = [`${d >= 0 ? '+' : ''}${fmt(d, 2)}`, ...(seeds === 1 ? ['1 seed'] : [])];
    if (vsNone > FLAT_BPB) notes.push('barely trained: worse than none at 1x');
    add(word, `${enc} (${notes.join(', ')})`);
  }
  const order = ['improves', 'stays flat', 'degrades', 'blows up', 'cannot evaluate past L'];
  const parts = order.filter((g) => groups.has(g)).map((g) => `${g}: ${groups.get(g)!.join(', ')}`);
  return `${corpus}, bits per byte from 1x to ${longest}x L: ${parts.join('; ')}.`;
}

function extrapolationVerdict(input: ReportInput, corpus: string, a: string, b: string): string {
  const longest = Math.max(...input.lm.filter((c) => c.config.corpus === corpus).flatMap((c) => c.config.multipliers));
  const mults = [2, 4, 8, 16].filter((m) => m <= longest);
  const compared = mults.map((m) =>
    compareSamples(bpbSamples(input.lm, corpus, a, m), bpbSamples(input.lm, corpus, b, m)),
  );
  const verdicts = compared.map((c) => c.verdict);
  const how = compared.every((c) => c.paired)
    ? 'the 95% interval of the paired (same-seed) difference'
    : 'the 95% intervals';
  if (verdicts.includes('missing') || verdicts.length === 0) return `${corpus}: not both run yet, no verdict.`;
  if (verdicts.includes('single-seed')) {
    return `${corpus}: one seed, so no verdict; ${a}'s shape: ${shapeOf(input, corpus, a)} ${b}'s: ${shapeOf(input, corpus, b)}`;
  }
  if (verdicts.every((v) => v === 'overlap')) {
    return `${corpus}: yes, as far as ${meanInterval(bpbAt(input.lm, corpus, a, 1)).n} seeds can tell: at every length past L ${how} ${compared[0]!.paired ? 'includes 0' : 'overlap'}.`;
  }
  const worse = mults.filter((_, i) => verdicts[i] === 'higher');
  const better = mults.filter((_, i) => verdicts[i] === 'lower');
  return (
    `${corpus}: no — ${a} is ` +
    [
      worse.length ? `worse at ${worse.map((m) => `${m}x`).join(', ')}` : '',
      better.length ? `better at ${better.map((m) => `${m}x`).join(', ')}` : '',
    ]
      .filter(Boolean)
      .join(' and ') +
    ` (${how} ${compared.every((c) => c.paired) ? 'excludes 0' : 'do not overlap'}).`
  );
}

function flipRecallPair(input: ReportInput, a: string, b: string): string[] {
  const lines: string[] = [];
  const learnedFlip = (e: string) =>
    input.flipflop
      .filter((c) => c.config.encoding === e)
      .some((c) => aboveChance(c.result.mixes.id.graded - c.result.mixes.id.errors, c.result.mixes.id.graded, 0.5));
  const flipCells = (e: string) => input.flipflop.some((c) => c.config.encoding === e);
  if (flipCells(a) && flipCells(b)) {
    const none = [a, b].filter((e) => !learnedFlip(e));
    if (none.length > 0) {
      lines.push(
        `  - flip-flop: ${none.join(' and ')} did not beat chance on the in-distribution reads, so the flip-flop ` +
          'comparison below says nothing about the encodings at this budget.',
      );
    }
  }
  for (const m of ['id', 'ood-sparse', 'ood-dense'] as const) {
    const err = (e: string) =>
      input.flipflop
        .filter((c) => c.config.encoding === e)
        .map((c) => ({ seed: c.config.seed, value: 100 * c.result.mixes[m].errorRate }));
    const va = err(a);
    const vb = err(b);
    if (va.length && vb.length) lines.push(`  - flip-flop ${m}: ` + sentence(a, va, b, vb, 'error %', true));
  }
  const mults = uniq(input.recall.flatMap((c) => c.config.multipliers));
  for (const mult of mults) {
    const acc = (e: string) =>
      input.recall
        .filter((c) => c.config.encoding === e)
        .flatMap((c) =>
          c.result.evals
            .filter((x) => x.multiplier === mult && x.ok)
            .map((x) => ({ seed: c.config.seed, value: x.ok ? 100 * x.accuracy : 0 })),
        );
    const va = acc(a);
    const vb = acc(b);
    if (va.length && vb.length) lines.push(`  - recall at ${mult}x L: ` + sentence(a, va, b, vb, 'accuracy %', false));
  }
  return lines;
}
