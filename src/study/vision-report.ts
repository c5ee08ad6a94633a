/**
 * The `vision` section of the study report, from its cells' JSON alone: the setup, the issue's three questions
 * answered by paired (per-seed) comparisons, the accuracy table (mean ± 95% interval over seeds) at every grid,
 * published Fashion-MNIST figures for context, and one chart (accuracy against the patch grid).
 */
import { lineChartSpec } from '../plot/charts.ts';
import { meanPoint, PERCENT, seedPhrase, sentence, type Chart, type Sample } from './report.ts';
import { formatInterval, meanInterval } from './stats.ts';
import { VISION_ENCODINGS, type VisionRecord } from './vision.ts';

const uniq = <T>(xs: T[]) => [...new Set(xs)];
const order = (e: string) => {
  const i = (VISION_ENCODINGS as readonly string[]).indexOf(e);
  return i < 0 ? VISION_ENCODINGS.length : i;
};

/** Accuracy (%) of `enc` at patch grid `grid`, one sample per seed. */
function accuracy(cells: readonly VisionRecord[], enc: string, grid: number): Sample[] {
  return cells.flatMap((c) => {
    if (c.config.encoding !== enc) return [];
    const e = c.result.evals.find((x) => x.grid === grid);
    return e ? [{ seed: c.config.seed, value: 100 * e.accuracy }] : [];
  });
}

/** Published test accuracies (%) from the dataset authors' README (its benchmark table, submitted, untested by them). */
const HUMAN = 83.5;
const MLP = 90.0;
const SMALL_CNN = 92.5;
const PUBLISHED: readonly [string, number][] = [
  ['Human performance (crowd-sourced, non-experts; 1000 test images, majority of 3 labels)', HUMAN],
  ['MLP 256-128-64, no preprocessing', MLP],
  ['2 conv layers + max pooling (Keras), no preprocessing', 87.6],
  ['2 conv layers, < 100K parameters, no preprocessing', SMALL_CNN],
  ['ResNet18 with augmentation', 94.9],
  ['WRN40-4 (8.9M parameters) with augmentation', 96.7],
];

export function visionSection(cells: readonly VisionRecord[], plotsRel: string): { lines: string[]; charts: Chart[] } {
  const lines: string[] = [];
  if (cells.length === 0) return { lines, charts: [] };
  const encs = uniq(cells.map((c) => c.config.encoding)).sort((a, b) => order(a) - order(b));
  const grids = uniq(cells.flatMap((c) => c.result.evals.map((e) => e.grid))).sort((a, b) => a - b);
  const seeds = uniq(cells.map((c) => c.config.seed)).sort((a, b) => a - b);
  const c0 = cells[0]!.config;
  const trainGrid = c0.model.image / c0.model.patch;
  const sides = c0.evalSides;
  const secs = cells.map((c) => c.result.train.seconds);
  const params = uniq(cells.map((c) => c.result.train.parameters)).sort((a, b) => a - b);
  const evalSecs = cells.map((c) => c.result.evalSeconds);
  const minutes = (s: number) => (s / 60).toFixed(1);

  lines.push('## vision: Fashion-MNIST accuracy at the training grid and larger ones (%, higher is better)', '');
  lines.push(
    `- Model: a ViT with ${c0.model.patch}x${c0.model.patch} patches (${trainGrid}x${trainGrid} grid at ` +
      `${c0.model.image}x${c0.model.image}), linear patch embedding, width ${c0.model.width}, ${c0.model.layers} ` +
      `bidirectional pre-LN blocks, ${c0.model.heads} heads, MLP ${c0.model.mlpWidth}, mean pooling (no class ` +
      `token), linear head; ${params.length === 1 ? params[0] : `${params[0]} to ${params[params.length - 1]}`} ` +
      'parameters (the encodings differ by their own).',
    `- Training: ${c0.budget.steps} steps of ${c0.budget.batch} images drawn uniformly from the 60,000 training ` +
      `images (about ${((c0.budget.steps * c0.budget.batch) / 60000).toFixed(2)} epoch), AdamW, peak lr ` +
      `${c0.budget.lr}, warmup ${c0.budget.warmup}, cosine to lr/10, no augmentation; one native thread per cell: ` +
      `${minutes(Math.min(...secs))}-${minutes(Math.max(...secs))} minutes of training and ` +
      `${minutes(Math.min(...evalSecs))}-${minutes(Math.max(...evalSecs))} of grading per cell on a shared 2-core ` +
      'machine.',
    `- Grading: the first ${c0.evalImages} test images at ${sides.map((s) => `${s}x${s}`).join(', ')} pixels ` +
      `(${sides.map((s) => `${s / c0.model.patch}x${s / c0.model.patch}`).join(', ')} patch grids), upsampled ` +
      `${c0.resize} (align_corners false). A larger grid shows the same garment over more patches: relative ` +
      'encodings see longer distances than in training, learned-2d is resized bilinearly (the ViT practice), ' +
      'sincos-2d meets coordinates it never saw. Each patch also holds less of the garment (a 4x4 patch of a ' +
      '56x56 image is 2x2 original pixels), a change of content every encoding meets: `none` has no positions at ' +
      'all, so its drop measures that content shift alone. (4x4 patches need a side divisible by 4: 40x40, not ' +
      '42x42.)',
    `- Encodings (pe/vision/): ${encs.join(', ')}. HyPE forms train tau and mu (the learned preset, ALiBi-like ` +
      'start); alibi-2d keeps ALiBi\u2019s fixed slopes; rope-2d is axial with base 100.',
    `- Seeds: ${seeds.join(', ')}; a seed fixes the initial weights and the training batches, so encodings are ` +
      'compared by their per-seed (paired) differences, as in the rest of this report.',
    '',
  );

  lines.push('### Findings (computed from the numbers below)', '');
  const big = grids[grids.length - 1]!;
  const at = (g: number) => `${g}x${g}`;
  const q = (title: string, pairs: [string, string][]) => {
    lines.push(`**${title}**`, '');
    for (const [a, b] of pairs) {
      if (!encs.includes(a) || !encs.includes(b)) {
        lines.push(`- ${a} vs ${b}: not computed yet.`);
        continue;
      }
      for (const g of grids) {
        lines.push(`- ${sentence(a, accuracy(cells, a, g), b, accuracy(cells, b, g), `accuracy at ${at(g)}`, false)}`);
      }
    }
    lines.push('');
  };
  q('1. Does 2-D HyPE beat 1-D HyPE on the flattened patch index (the paper: N-D matters)?', [
    ['hype-2d', 'hype-flat'],
  ]);
  q('2. Does the antisymmetric form hurt in a bidirectional model, and does the symmetric form fix it?', [
    ['hype-2d', 'none'],
    ['hype-2d-sym', 'hype-2d'],
    ['hype-2d-sym', 'none'],
  ]);
  q(`3. HyPE's forms against axial RoPE and 2-D ALiBi, at ${at(trainGrid)} and as the grid grows to ${at(big)}`, [
    ['hype-2d', 'rope-2d'],
    ['hype-2d', 'alibi-2d'],
    ['hype-2d-sym', 'rope-2d'],
    ['hype-2d-sym', 'alibi-2d'],
  ]);

  lines.push(`### Accuracy (%; mean ± 95% interval over seeds; ${c0.evalImages} test images per grid)`, '');
  lines.push(`| encoding | ${grids.map((g) => `${at(g)} grid`).join(' | ')} | final train loss | seeds |`);
  lines.push(`| --- | ${grids.map(() => '---').join(' | ')} | --- | --- |`);
  for (const e of encs) {
    const mine = cells.filter((c) => c.config.encoding === e);
    const row = grids.map((g) => formatInterval(meanInterval(accuracy(cells, e, g).map((s) => s.value)), 1));
    const loss = formatInterval(meanInterval(mine.map((c) => c.result.train.finalLoss)), 3);
    lines.push(`| ${e} | ${row.join(' | ')} | ${loss} | ${mine.length} |`);
  }
  lines.push('');

  lines.push(
    'For context, published Fashion-MNIST test accuracies (the benchmark table of the dataset authors\u2019 README, ' +
      'github.com/zalandoresearch/fashion-mnist; submitted results, which the authors note they have not verified; ' +
      'full training runs, where the budget here is under one epoch):',
    '',
    '| model | test accuracy (%) |',
    '| --- | --- |',
    ...PUBLISHED.map(([m, a]) => `| ${m} | ${a.toFixed(1)} |`),
    '',
  );
  const best = Math.max(...encs.map((e) => meanInterval(accuracy(cells, e, trainGrid).map((s) => s.value)).mean));
  lines.push(
    `The best budgeted encoding here averages ${best.toFixed(1)}% at the training grid: ` +
      `${(HUMAN - best).toFixed(1)} points below the README's non-expert humans, ${(MLP - best).toFixed(1)} below ` +
      `its MLP and ${(SMALL_CNN - best).toFixed(1)} below its small CNN. A sub-epoch, 70K-parameter ViT without ` +
      'augmentation compares encodings; it is not a competitive classifier.',
    '',
  );

  const points = encs.flatMap((e) =>
    grids.map((g) =>
      meanPoint(
        { x: g, series: e },
        accuracy(cells, e, g).map((s) => s.value),
        1,
        PERCENT,
      ),
    ),
  );
  const chart: Chart = {
    file: 'vision-accuracy.svg',
    spec: lineChartSpec({
      title: 'Fashion-MNIST accuracy against the patch grid (trained at 7x7)',
      subtitle: [`test images upsampled bilinearly; ${seedPhrase(points.map((p) => p.n))}`],
      points,
      xTitle: 'patch grid side',
      yTitle: 'test accuracy (%)',
      seriesTitle: 'encoding',
      seriesOrder: encs,
      yZero: false,
      yUnit: '%',
    }),
  };
  lines.push(`![Fashion-MNIST accuracy against the patch grid](${plotsRel}/${chart.file})`, '');
  return { lines, charts: [chart] };
}
