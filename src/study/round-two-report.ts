/**
 * The study's second round (issue 19) in the report, from the cells' JSON alone: which encodings it adds (setup
 * lines) and its four questions, each answered by paired (per-seed) 95% intervals: (1) learned HyPE against learned
 * ALiBi, (2) where hype-sc's curvature goes when it may move at a fixed slope, (3) whether a content-dependent concat
 * bias (hype-gated, FoX) closes the gap to Transformer-XL and PaTH, (4) training time against ALiBi. A comparison
 * with fewer than two shared seeds says how many seeds exist so far instead of judging.
 */
import { alibiSlopes } from '../pe/alibi-slopes.ts';
import type { Chart } from '../plot/charts.ts';
import { aboveChance, sentence, type Sample } from './compare.ts';
import type { FlipflopConfig, FlipflopResult, LmConfig, LmResult, RecallConfig, RecallResult } from './experiments.ts';
import { COST_FILE, costRecordLines, type CostRecord } from './cost.ts';
import { forestRows, forestSpec, type ForestMeasure } from './round-two-chart.ts';
import type { CellRecord } from './store.ts';
import { ALL_ENCODINGS, ROUND_TWO_ENCODINGS } from './plan.ts';
import { formatInterval, meanInterval } from './stats.ts';

const uniq = <T>(xs: T[]) => [...new Set(xs)];
const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const k = s.length >> 1;
  return s.length % 2 ? s[k]! : (s[k - 1]! + s[k]!) / 2;
};
const RECALL_CHANCE = 0.1;

/** What this section reads of the report's input (report.ts's ReportInput satisfies it). */
export interface ReportInput {
  meta: { plan: { seeds: number[] } } | null;
  lm: CellRecord<LmConfig, LmResult>[];
  flipflop: CellRecord<FlipflopConfig, FlipflopResult>[];
  recall: CellRecord<RecallConfig, RecallResult>[];
  cost?: CostRecord | null;
}

/** Bits per byte of `enc` on `corpus` at multiplier `mult`, one sample per seed. */
function bpbSamples(cells: ReportInput['lm'], corpus: string, enc: string, mult: number): Sample[] {
  return cells.flatMap((c) => {
    if (c.config.corpus !== corpus || c.config.encoding !== enc) return [];
    const e = c.result.evals.find((x) => x.multiplier === mult);
    return e && e.ok ? [{ seed: c.config.seed, value: e.bitsPerByte }] : [];
  });
}
/** The command that measures step time on an idle machine (the cells' own seconds come from a loaded one). */
export const ROUND_TWO_BENCH = `npm run bench:explicit -- --only ${ROUND_TWO_ENCODINGS.join(',')} --rounds 3`;

/** Setup lines naming the second round's encodings and which variant the t5 and xl rows are. */
export function roundTwoSetupLines(): string[] {
  return [
    '- Second round (issue 19): alibi-learned (ALiBi with trained log-slopes, started at the reference slopes: the ' +
      'control for hype-learned); hype-sc (hype-learned in slope-curvature coordinates, slope m = -tau mu and ' +
      'curvature mu both trained, so the curvature can move at a fixed slope); fox (the Forgetting Transformer bias ' +
      'F_i - F_l, F the cumulative sum of log sigmoid(w . x + b), one forget gate per KV head reading the block input, ' +
      'as two concat columns on the unmodified kernel); hype-gated (hype-learned whose query columns are scaled by ' +
      'a per-query, per-head amplitude s = softplus(w . x + b) of the block input, started at s = 1); t5-shared and xl-shared (one T5 table, one XL u/v for all layers: the references\u2019 choice). The rows ' +
      't5 and xl are the per-layer variant (each layer its own table, its own u/v).',
  ];
}

/** "2 of 3 seeds" wording of a comparison's coverage; S is the number of seeds the plan runs. */
function pairLine(
  label: string,
  a: string,
  sa: Sample[],
  b: string,
  sb: Sample[],
  metric: string,
  lowerBetter: boolean,
  S: number,
): string {
  const missing = [a, b].filter((_, i) => [sa, sb][i]!.length === 0);
  if (missing.length > 0) return `  - ${label}: no cells for ${missing.join(' and ')} yet (0 of ${S} seeds).`;
  const shared = sa.filter((x) => sb.some((y) => y.seed === x.seed)).length;
  if (shared === 0)
    return `  - ${label}: no seed in common yet (${a}: ${sa.length}, ${b}: ${sb.length} of ${S} seeds).`;
  if (shared < 2) {
    const x = sa.find((p) => sb.some((q) => q.seed === p.seed))!;
    const y = sb.find((q) => q.seed === x.seed)!;
    return (
      `  - ${label}: 1 of ${S} seeds so far: no interval (${metric}, seed ${x.seed}: ${a} ${x.value.toFixed(3)}, ` +
      `${b} ${y.value.toFixed(3)}; not evidence either way).`
    );
  }
  const partial = shared < S ? ` (${shared} of ${S} seeds so far.)` : '';
  return `  - ${label}: ${sentence(a, sa, b, sb, metric, lowerBetter)}${partial}`;
}

const flipSamples = (input: ReportInput, enc: string, mix: 'id' | 'ood-sparse' | 'ood-dense'): Sample[] =>
  input.flipflop
    .filter((c) => c.config.encoding === enc)
    .map((c) => ({ seed: c.config.seed, value: 100 * c.result.mixes[mix].errorRate }));

const recallSamples = (input: ReportInput, enc: string, mult: number): Sample[] =>
  input.recall
    .filter((c) => c.config.encoding === enc)
    .flatMap((c) =>
      c.result.evals.flatMap((e) =>
        e.multiplier === mult && e.ok ? [{ seed: c.config.seed, value: 100 * e.accuracy }] : [],
      ),
    );

/**
 * Recall per encoding: how many seeds learned the task at 1x (beat chance by a 95% binomial margin), and separately
 * the accuracy of those that did at 1x and at the longest length, so a failed seed does not hide in a mean.
 */
export function recallLearnedLine(input: ReportInput, enc: string, S: number): string {
  const cells = input.recall.filter((c) => c.config.encoding === enc);
  if (cells.length === 0) return `  - recall, ${enc}: no cells yet (0 of ${S} seeds).`;
  const learned = cells.filter((c) => {
    const e = c.result.evals.find((x) => x.multiplier === 1);
    return e !== undefined && e.ok && aboveChance(e.correct, e.graded, RECALL_CHANCE);
  });
  const longest = Math.max(...cells[0]!.config.multipliers);
  const acc = (mult: number) =>
    learned.flatMap((c) =>
      c.result.evals.filter((e) => e.multiplier === mult && e.ok).map((e) => (e.ok ? 100 * e.accuracy : 0)),
    );
  const of = `${learned.length} of ${cells.length} seed${cells.length === 1 ? '' : 's'} run`;
  const head = `  - recall, ${enc}: learned the task at 1x in ${of}${cells.length < S ? ` (${S} planned)` : ''}`;
  if (learned.length === 0) return `${head}.`;
  const show = (v: number[]) => (v.length ? formatInterval(meanInterval(v), 1) : 'cannot evaluate');
  return `${head}; accuracy of those that did: ${show(acc(1))}% at 1x, ${show(acc(longest))}% at ${longest}x.`;
}

/** Every measure of a comparison as a paired line (pairMeasures), with a line where an experiment has no cells. */
function allPairs(
  input: ReportInput,
  a: string,
  b: string,
  S: number,
  mixes: readonly ('id' | 'ood-sparse' | 'ood-dense')[],
) {
  const lines = pairMeasures(input, mixes).map((m) =>
    pairLine(m.label, a, m.samples(a), b, m.samples(b), m.metric, m.lowerBetter, S),
  );
  if (input.lm.length === 0) lines.unshift('  - lm: no cells yet.');
  if (input.recall.length === 0) lines.push('  - recall: no cells yet.');
  return lines;
}

/** A trained cell as the parameter summaries read it. */
interface ParamCell {
  config: { encoding: string; model: { heads: number }; pe: { options: Record<string, unknown> } };
  result: { positionParams?: Record<string, number[]> };
}
const byExperiment = (input: ReportInput): [string, ParamCell[]][] => [
  ['lm', input.lm],
  ['flip-flop', input.flipflop],
  ['recall', input.recall],
];
const spread = (xs: number[], d = 2) =>
  `median ${median(xs).toFixed(d)} (range ${Math.min(...xs).toFixed(d)} to ${Math.max(...xs).toFixed(d)})`;
/** Every value of the position parameters whose name ends with `suffix`, over an encoding's cells. */
const paramValues = (cells: ParamCell[], suffix: string) =>
  cells.flatMap((c) =>
    Object.entries(c.result.positionParams ?? {}).flatMap(([name, v]) => (name.endsWith(suffix) ? v : [])),
  );

/** alibi-learned's trained slopes over their starts (the reference slopes), per experiment: the control's movement. */
export function alibiSlopeLines(input: ReportInput): string[] {
  const lines: string[] = [];
  for (const [exp, all] of byExperiment(input)) {
    const ratios = all
      .filter((c) => c.config.encoding === 'alibi-learned')
      .flatMap((c) => {
        const start = alibiSlopes(c.config.model.heads);
        return Object.entries(c.result.positionParams ?? {}).flatMap(([name, v]) =>
          name.endsWith('pe.slope') ? v.map((x, h) => x / start[h % start.length]!) : [],
        );
      });
    if (ratios.length > 0) {
      lines.push(
        `  - alibi-learned's trained slopes, ${exp}: ${spread(ratios)} times the reference slopes (${ratios.length} heads x layers x seeds).`,
      );
    }
  }
  return lines;
}

/**
 * What the content-dependent gates did, per experiment: hype-gated's per-query amplitude s (1 everywhere would be
 * hype-learned; a spread within a head means the bias reads content) and FoX's forget gate at a zero input,
 * sigmoid(b) (1 = no forgetting), with its weight norm |w| (0 = no dependence on content).
 */
export function gateLines(input: ReportInput): string[] {
  const lines: string[] = [];
  for (const [exp, all] of byExperiment(input)) {
    const gated = all.filter((c) => c.config.encoding === 'hype-gated');
    const mean = paramValues(gated, 'gate.sMean');
    const std = paramValues(gated, 'gate.sStd');
    if (mean.length > 0) {
      lines.push(
        `  - hype-gated's amplitude s, ${exp}: per-head mean ${spread(mean)}, per-head standard deviation over ` +
          `queries ${spread(std)}; s over all queries from ${Math.min(...paramValues(gated, 'gate.sMin')).toFixed(3)} ` +
          `to ${Math.max(...paramValues(gated, 'gate.sMax')).toFixed(2)}.`,
      );
    }
    const fox = all.filter((c) => c.config.encoding === 'fox');
    const b = paramValues(fox, 'gate.b');
    if (b.length > 0) {
      lines.push(
        `  - fox's forget gate, ${exp}: sigmoid(b) ${spread(b.map((x) => 1 / (1 + Math.exp(-x))))}, |w| ` +
          `${spread(paramValues(fox, 'gate.wNorm'))} (per KV head x layer x seed).`,
      );
    }
  }
  return lines;
}

/**
 * hype-sc's trained slope and curvature against their starts (the reference ALiBi slopes; the preset's curvature
 * mu L_extra, 0.5 unless the options set it), per experiment over heads x layers x seeds.
 */
export function curvatureLines(input: ReportInput): string[] {
  const lines: string[] = [];
  const groups = byExperiment(input);
  for (const [exp, all] of groups) {
    const cells = all.filter((c) => c.config.encoding === 'hype-sc');
    const slope: number[] = [];
    const curv: number[] = [];
    let toward = 0;
    let away = 0;
    let flipped = 0;
    for (const c of cells) {
      const p = c.result.positionParams ?? {};
      const start = alibiSlopes(c.config.model.heads);
      const c0 = typeof c.config.pe.options.curvature === 'number' ? c.config.pe.options.curvature : 0.5;
      for (const [name, s] of Object.entries(p)) {
        if (!name.endsWith('pe.slope')) continue;
        const k = p[name.replace(/slope$/, 'curvature')];
        if (!k || k.length !== s.length) continue;
        s.forEach((v, h) => slope.push(v / start[h % start.length]!));
        for (const v of k) {
          curv.push(v / c0);
          // Within 1% of the start counts as unchanged (neither way).
          if (v <= 0) flipped++;
          else if (v < 0.99 * c0) toward++;
          else if (v > 1.01 * c0) away++;
        }
      }
    }
    if (cells.length === 0) {
      lines.push(`  - ${exp}: no hype-sc cells yet.`);
      continue;
    }
    if (curv.length === 0) {
      lines.push(`  - ${exp}: the hype-sc cells store no trained slope/curvature (computed before positionParams).`);
      continue;
    }
    const r = (xs: number[]) =>
      `${median(xs).toFixed(2)}x its start (median; range ${Math.min(...xs).toFixed(2)}x to ${Math.max(...xs).toFixed(2)}x)`;
    lines.push(
      `  - ${exp} (${curv.length} heads x layers x seeds, ${cells.length} cell${cells.length === 1 ? '' : 's'}): ` +
        `trained slope ${r(slope)}; trained curvature ${r(curv)}. Curvature moved toward 0 (flatter, more ` +
        `ALiBi-like) in ${toward}, away from 0 (more bent) in ${away}` +
        (flipped ? `, to 0 or below in ${flipped}` : '') +
        (curv.length - toward - away - flipped > 0
          ? `, within 1% of its start in ${curv.length - toward - away - flipped}`
          : '') +
        ` of ${curv.length} heads.`,
    );
  }
  return lines;
}

/**
 * The cost question from the benchmark record beside the cells (study/cost.ts), or a line saying how to make one.
 * Cell training seconds are not used: cells run several at a time on shared cores, and a resumed cell counts only
 * the seconds after its checkpoint.
 */
export function costLines(input: ReportInput): string[] {
  const note =
    '  - Study cells\u2019 training seconds are not used here: the cells ran two at a time on a shared 2-core machine ' +
    'and a resumed cell records only the seconds after its checkpoint.';
  if (!input.cost) {
    return [
      `  - Not measured in this folder: run \`${ROUND_TWO_BENCH} --json <folder>/${COST_FILE}\` on an idle machine ` +
        'and regenerate the report.',
      note,
    ];
  }
  return [...costRecordLines(input.cost, ROUND_TWO_ENCODINGS), note];
}

/** The comparisons of questions 1-3, each "a vs b" paired by seed. */
const QUESTION_1_PAIRS = [
  ['hype-learned', 'alibi-learned'],
  ['hype-sc', 'alibi-learned'],
] as const;
const QUESTION_2_PAIRS = [['hype-sc', 'hype-learned']] as const;
const QUESTION_3_PAIRS = [
  ['hype-gated', 'xl'],
  ['hype-gated', 'path'],
  ['fox', 'xl'],
  ['fox', 'path'],
  ['fox', 'alibi'],
  ['hype-gated', 'hype-learned'],
] as const;
/**
 * The forest plot's rows, in the section's order. The sharing comparisons of question 5 stay in the text: t5's
 * spread past L (intervals of several bits per byte) would set every panel's scale.
 */
const FOREST_PAIRS = [...QUESTION_1_PAIRS, ...QUESTION_2_PAIRS, ...QUESTION_3_PAIRS];

/** A measure a comparison is judged on: its chart panel (name), its line label and metric in the text. */
interface PairMeasure extends ForestMeasure {
  label: string;
  metric: string;
}

/**
 * The measures a comparison is judged on: lm per corpus at 1x and the longest length (bits per byte), flip-flop by
 * `mixes` (error %), recall at 1x and the longest length (accuracy %).
 */
function pairMeasures(input: ReportInput, mixes: readonly ('id' | 'ood-sparse' | 'ood-dense')[]): PairMeasure[] {
  const measures: PairMeasure[] = [];
  for (const corpus of uniq(input.lm.map((c) => c.config.corpus))) {
    const longest = Math.max(
      ...input.lm.filter((c) => c.config.corpus === corpus).flatMap((c) => c.config.multipliers),
    );
    for (const m of uniq([1, longest])) {
      measures.push({
        name: `lm ${corpus} ${m}x (bits per byte)`,
        label: `lm ${corpus}, ${m}x L`,
        metric: 'bits per byte',
        samples: (e) => bpbSamples(input.lm, corpus, e, m),
        lowerBetter: true,
      });
    }
  }
  for (const mix of mixes) {
    measures.push({
      name: `flip-flop ${mix} (error %)`,
      label: `flip-flop ${mix}`,
      metric: 'error %',
      samples: (e) => flipSamples(input, e, mix),
      lowerBetter: true,
    });
  }
  const mults = uniq(input.recall.flatMap((c) => c.config.multipliers));
  for (const m of mults.length ? uniq([1, Math.max(...mults)]) : []) {
    measures.push({
      name: `recall ${m}x (accuracy %)`,
      label: `recall ${m}x L`,
      metric: 'accuracy %',
      samples: (e) => recallSamples(input, e, m),
      lowerBetter: false,
    });
  }
  return measures;
}

/** One line gathering a comparison's verdicts (the paired intervals of the lines above it). */
function inShort(input: ReportInput, a: string, b: string, mixes: readonly ('id' | 'ood-sparse' | 'ood-dense')[]) {
  const measures = pairMeasures(input, mixes);
  const rows = forestRows([[a, b]], measures);
  const bare = (name: string) => name.replace(/ \(.*\)$/, '');
  const on = (verdict: string) => rows.filter((r) => r.verdict === verdict).map((r) => bare(r.measure));
  const parts = [
    [`${a} better on`, on('first better')],
    [`${a} worse on`, on('first worse')],
    ['no difference detected on', on('no difference detected')],
    [
      'not judged yet (fewer than 2 shared seeds)',
      measures.filter((m) => !rows.some((r) => r.measure === m.name)).map((m) => bare(m.name)),
    ],
  ] as const;
  const said = parts.filter(([, xs]) => xs.length > 0).map(([what, xs]) => `${what} ${xs.join(', ')}`);
  return `    - In short: ${said.join('; ')}.`;
}

/** The forest plot of the section's comparisons (round-two-chart.ts), or null when no comparison has 2 seeds. */
function forestChart(input: ReportInput): Chart | null {
  const measures = pairMeasures(input, ['ood-dense']);
  const rows = forestRows(FOREST_PAIRS, measures);
  if (rows.length === 0) return null;
  const comparisons = FOREST_PAIRS.map(([a, b]) => `${a} vs ${b}`).filter((c) => rows.some((r) => r.comparison === c));
  return {
    file: 'round-two-differences.svg',
    spec: forestSpec(
      rows,
      comparisons,
      measures.map((m) => m.name).filter((n) => rows.some((r) => r.measure === n)),
      'Second round, questions 1-3: paired differences between encodings (per measure)',
    ),
  };
}

/** The second round's findings (empty when no second-round encoding has a cell); its forest plot goes to `charts`. */
export function roundTwoSection(input: ReportInput, charts: Chart[] = [], plotsRel = 'plots'): string[] {
  const cells = [...input.lm, ...input.flipflop, ...input.recall];
  if (!cells.some((c) => ROUND_TWO_ENCODINGS.includes(c.config.encoding))) return [];
  // Without study.json: the seeds lm and flip-flop have (recall may run more, below).
  const seedCount = (xs: { config: { seed: number } }[]) => uniq(xs.map((c) => c.config.seed)).length;
  const S = input.meta?.plan.seeds.length ?? (seedCount([...input.lm, ...input.flipflop]) || seedCount(input.recall));
  // Recall may run more seeds than the plan for some encodings (its seed variance is large): a comparison covers
  // the seeds both sides have, and only fewer than the plan's count it calls partial.
  const recallSeeds = (e: string) => seedCount(input.recall.filter((c) => c.config.encoding === e));
  const recallEncs = uniq(input.recall.map((c) => c.config.encoding));
  const recallMax = Math.max(0, ...recallEncs.map(recallSeeds));
  const moreRecall = ALL_ENCODINGS.filter((e) => recallEncs.includes(e) && recallSeeds(e) > S); // in the plan's order
  const lines = ['## Second round (issue 19): learned controls, free curvature, content-dependent biases', ''];
  lines.push(
    `Each comparison is paired by seed over the seeds both encodings have (the plan runs ${S}` +
      (moreRecall.length > 0
        ? `; recall runs up to ${recallMax} for ${moreRecall.join(', ')}, its seed variance being large`
        : '') +
      '); "better"/"worse" means the 95% interval of the mean paired difference excludes 0. Where fewer than two ' +
      'seeds are shared the line says how many exist so far and gives no interval.',
    '',
  );
  const forest = forestChart(input);
  if (forest) {
    charts.push(forest);
    lines.push(`![second-round paired differences](${plotsRel}/${forest.file})`, '');
  }
  const dense: ('id' | 'ood-sparse' | 'ood-dense')[] = ['id', 'ood-dense'];
  lines.push('1. **Does learned HyPE beat learned ALiBi (does the hyperbola matter)?**');
  for (const [a, b] of QUESTION_1_PAIRS) {
    lines.push(`  - ${a} vs ${b}:`, ...allPairs(input, a, b, S, dense).map((l) => `  ${l}`));
    lines.push(inShort(input, a, b, dense));
  }
  lines.push(...['hype-learned', 'hype-sc', 'alibi-learned'].map((e) => recallLearnedLine(input, e, S)));
  lines.push(...alibiSlopeLines(input));
  lines.push('2. **Where does the curvature go when it may move on its own (hype-sc), and does it help?**');
  lines.push(...curvatureLines(input));
  for (const [a, b] of QUESTION_2_PAIRS) {
    lines.push(`  - ${a} vs ${b}:`, ...allPairs(input, a, b, S, dense).map((l) => `  ${l}`));
    lines.push(inShort(input, a, b, dense));
  }
  lines.push(
    '3. **Does a content-dependent concat bias (hype-gated, fox) close the gap to Transformer-XL (xl) and PaTH ' +
      '(path)?** (flip-flop ood-dense: recency biases such as ALiBi fail there, PaTH does not)',
  );
  for (const [a, b] of QUESTION_3_PAIRS) {
    lines.push(`  - ${a} vs ${b}:`, ...allPairs(input, a, b, S, ['ood-dense']).map((l) => `  ${l}`));
    lines.push(inShort(input, a, b, ['ood-dense']));
  }
  lines.push(...['hype-gated', 'fox', 'xl', 'path'].map((e) => recallLearnedLine(input, e, S)));
  lines.push(...gateLines(input));
  lines.push('4. **Cost: training step time relative to alibi** (the study issue expects a few percent)');
  lines.push(...costLines(input));
  lines.push('5. **Reference sharing: one T5 table and one XL u/v for all layers, against the per-layer variants**');
  for (const [a, b] of [
    ['t5-shared', 't5'],
    ['xl-shared', 'xl'],
  ] as const) {
    lines.push(
      `  - ${a} vs ${b} (per-layer variant):`,
      ...allPairs(input, a, b, S, ['id', 'ood-dense']).map((l) => `  ${l}`),
      ...oneLayerLines(input, a, b),
    );
  }
  return lines;
}

/**
 * Flip-flop's model has one layer, where sharing across layers changes nothing but the order parameters are drawn
 * in: say so, and whether the shared and per-layer cells' error counts agree seed for seed.
 */
function oneLayerLines(input: ReportInput, a: string, b: string): string[] {
  const cells = (enc: string) => input.flipflop.filter((c) => c.config.encoding === enc);
  if (cells(a).length === 0 || ![...cells(a), ...cells(b)].every((c) => c.config.model.layers === 1)) return [];
  const errors = (c: ReportInput['flipflop'][number]) =>
    Object.values(c.result.mixes)
      .map((m) => m.errors)
      .join(',');
  const commit = (c: ReportInput['flipflop'][number]) => c.result.versions?.commit?.slice(0, 7) ?? 'unknown';
  const paired = cells(a).flatMap((ca) => {
    const cb = cells(b).find((c) => c.config.seed === ca.config.seed);
    return cb ? [{ seed: ca.config.seed, same: errors(ca) === errors(cb), commits: [commit(ca), commit(cb)] }] : [];
  });
  const differing = paired.filter((p) => !p.same);
  const where = differing.map((p) => `seed ${p.seed}: ${a} at ${p.commits[0]}, ${b} at ${p.commits[1]}`);
  return [
    `    - flip-flop's model has 1 layer, so sharing across layers is the identity there: ${a} and ${b} have ` +
      `identical error counts in ${paired.length - differing.length} of ${paired.length} seeds` +
      (where.length ? ` (differing cells were computed by different code: ${where.join('; ')})` : '') +
      '.',
  ];
}
