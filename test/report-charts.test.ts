/**
 * The study's charts and `hype show --compare`, checked on what reaches the SVG: every series visible (its own
 * panel scale where magnitudes differ by orders, a note where lines coincide), ticks where the data are, the chance
 * line the subtitle names, titles that say how many seeds, and 95% interval bands only where seeds > 1.
 */
import { describe, expect, it } from 'vitest';
import { parseEncodingRequest, profileSpec } from '../src/cli/show.ts';
import { coincidentGroups, lineChartSpec, type LinePoint } from '../src/plot/charts.ts';
import { renderSvg } from '../src/plot/render.ts';
import type * as Exp from '../src/study/experiments.ts';
import { quickPlan, STUDY_ENCODINGS, type PrecisionFormat } from '../src/study/plan.ts';
import { buildReport, type Chart, type ReportInput, type StudyMeta } from '../src/study/report.ts';
import type { CellRecord } from '../src/study/store.ts';
import { RECALL_TASK } from '../src/study/tasks/recall.ts';

const model = { width: 16, layers: 1, heads: 2, mlpWidth: 32 };
const budget = { steps: 3, batch: 2, lr: 1e-3, warmup: 1 };
const record = <C, R>(key: string, config: C, result: R): CellRecord<C, R> => ({
  key,
  config,
  result,
  finishedAt: '',
  seconds: 1,
});

function lmConfig(encoding: string, seed: number, multipliers = [1, 2, 4]): Exp.LmConfig {
  const pe = STUDY_ENCODINGS[encoding]!;
  return {
    experiment: 'lm',
    corpus: 'tinyshakespeare',
    encoding,
    pe,
    seed,
    trainLength: 64,
    model,
    budget,
    multipliers,
    evalBytes: 0,
  };
}

/** Bits per byte at 1x, 2x, 4x ... of a training length of 64. */
const bpbEvals = (bpb: number[]) =>
  bpb.map((v, i) => ({ multiplier: 2 ** i, length: 64 * 2 ** i, ok: true as const, bitsPerByte: v, scored: 9 }));

function lmCell(encoding: string, seed: number, bpb: number[]): CellRecord<Exp.LmConfig, Exp.LmResult> {
  return record(`${encoding}${seed}`, lmConfig(encoding, seed), {
    evals: bpbEvals(bpb),
    train: { steps: 3, seconds: 1, finalLoss: 2, parameters: 10, runDir: 'x' },
  } as unknown as Exp.LmResult);
}

/** A recall cell of the quick plan's shape: trained at 96, graded at 1x..8x (96..768). */
function recallCell(encoding: string, seed: number, acc: number[]): CellRecord<Exp.RecallConfig, Exp.RecallResult> {
  const config: Exp.RecallConfig = {
    experiment: 'recall',
    task: RECALL_TASK,
    encoding,
    pe: STUDY_ENCODINGS[encoding]!,
    seed,
    trainLength: 96,
    model,
    budget,
    multipliers: [1, 2, 4, 8],
    evalSequences: 200,
  };
  const evals = acc.map((a, i) => ({
    multiplier: 2 ** i,
    length: 96 * 2 ** i,
    ok: true as const,
    correct: Math.round(200 * a),
    graded: 200,
    accuracy: a,
  }));
  return record(`${encoding}${seed}`, config, { evals } as unknown as Exp.RecallResult);
}

function precisionCell(encoding: string, format: PrecisionFormat, bpb: number[]) {
  const config: Exp.PrecisionConfig = { experiment: 'precision', lm: lmConfig(encoding, 1, [1, 2, 4, 8]), format };
  return record(`${encoding}${format}`, config, { evals: bpbEvals(bpb) } as unknown as Exp.PrecisionResult);
}

const input = (parts: Partial<ReportInput>): ReportInput => ({
  meta: null,
  lm: [],
  flipflop: [],
  recall: [],
  precision: [],
  ...parts,
});

const chart = (charts: Chart[], file: string) => charts.find((c) => c.file === file)!.spec;
const texts = (svg: string): string[] => [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]!);
/** All the text an SVG shows (multi-line titles are tspans), entities decoded. */
const allText = (svg: string): string =>
  svg
    .replace(/<[^>]*>/g, '\n')
    .replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>');
/** Vertical extent (pixels) of every drawn line, from the paths vega writes for 'line mark's. */
function lineExtents(svg: string): number[] {
  return [...svg.matchAll(/aria-roledescription="line mark" d="([^"]*)"/g)].map((m) => {
    const ys = [...m[1]!.matchAll(/[ML][-\d.e]+,([-\d.e]+)/g)].map((p) => Number(p[1]));
    return Math.max(...ys) - Math.min(...ys);
  });
}

const QUICK = ['none', 'rope', 'alibi', 'hype-recency', 'hype-paper'];

/** study.json of a quick study on `backend`. */
const quickMeta = (backend: string) =>
  ({
    plan: quickPlan(),
    versions: { package: '0', commit: null, node: 'v20' },
    backend,
    cpus: 2,
    invocations: [],
  }) as unknown as StudyMeta;

describe('recall chart', () => {
  const oneSeed = input({
    recall: QUICK.map((e, i) => recallCell(e, 1, [1, 0.9 - 0.1 * i, 0.6 - 0.1 * i, 0.3])),
  });

  it('puts its ticks at the lengths evaluated (96..768), not at powers of two around them', async () => {
    const svg = await renderSvg(chart(buildReport(oneSeed).charts, 'recall-accuracy.svg'));
    const labels = texts(svg);
    for (const t of ['96', '192', '384', '768']) expect(labels).toContain(t);
    for (const t of ['64', '128', '1024', '1,024']) expect(labels).not.toContain(t);
  });

  it('draws the chance line its subtitle names', async () => {
    const spec = chart(buildReport(oneSeed).charts, 'recall-accuracy.svg');
    expect(JSON.stringify(spec)).toContain('chance = 10%');
    const svg = await renderSvg(spec);
    expect(svg).toContain('aria-roledescription="rule mark"');
    expect(texts(svg)).toContain('chance 10%');
  });

  it('says "1 seed" with one seed and draws no band; with 3 seeds, the mean and 95% interval bands', async () => {
    const single = await renderSvg(chart(buildReport(oneSeed).charts, 'recall-accuracy.svg'));
    expect(allText(single)).toMatch(/\(1 seed, no interval\)/);
    expect(single).not.toMatch(/mean over seeds/);
    expect(single).not.toContain('aria-roledescription="area mark"');
    const three = input({
      recall: [1, 2, 3].flatMap((s) => QUICK.map((e) => recallCell(e, s, [1, 0.8 + 0.05 * s, 0.5, 0.3 - 0.05 * s]))),
    });
    const svg = await renderSvg(chart(buildReport(three).charts, 'recall-accuracy.svg'));
    expect(allText(svg)).toMatch(/\(mean of 3 seeds, 95% interval bands\)/);
    expect(svg.match(/aria-roledescription="area mark"/g)).toHaveLength(QUICK.length);
  });
});

describe('lm chart', () => {
  it('shows that two encodings lie on top of each other: distinct point shapes and a note naming them', async () => {
    const cells = [
      lmCell('none', 1, [3.2, 3.3, 3.5]),
      lmCell('hype-paper', 1, [3.2, 3.3, 3.5]), // the same values: the lines coincide
      lmCell('alibi', 1, [2.3, 2.3, 2.3]),
      lmCell('hype-recency', 1, [2.301, 2.301, 2.302]),
      lmCell('rope', 1, [2.4, 3.0, 4.0]),
    ];
    const svg = await renderSvg(chart(buildReport(input({ lm: cells })).charts, 'lm-bits-per-byte.svg'));
    const subtitle = allText(svg);
    expect(subtitle).toMatch(/drawn on top of each other \(\|difference\| <= 0 bits per byte\): none and hype-paper/);
    expect(subtitle).toMatch(
      /drawn on top of each other \(\|difference\| <= 0\.0020 bits per byte\): alibi and hype-recency/,
    );
    expect(subtitle.split('\n').filter((l) => l.startsWith('drawn on top'))).toHaveLength(2);
    // Every encoding's points carry their own shape, so one line's markers show around the other's.
    const shapes = new Set(
      [...svg.matchAll(/aria-roledescription="point" transform="[^"]*" d="([^"]*)"/g)].map((m) =>
        m[1]!.replace(/[-\d.]+/g, '#'),
      ),
    );
    expect(shapes.size).toBe(5);
  });

  it('finds coinciding series per panel and relative to the panel range', () => {
    const pts = (series: string, ys: number[], facet?: string): LinePoint[] =>
      ys.map((y, x) => ({ x, y, series, ...(facet ? { facet } : {}) }));
    const groups = coincidentGroups([
      ...pts('a', [0, 50, 100]),
      ...pts('b', [0.5, 50, 100]),
      ...pts('c', [10, 60, 90]),
    ]);
    expect(groups).toEqual([{ series: ['a', 'b'], panels: [''], maxDiff: 0.5 }]);
    // 0.5 is 50% of a panel whose values span 1: not drawn on top of each other there.
    expect(coincidentGroups([...pts('a', [0, 0.5, 1]), ...pts('b', [0.5, 1, 1])])).toEqual([]);
  });
});

describe('precision chart', () => {
  it('draws every series visibly, though the costs span 1e-5 to 1 bit per byte', async () => {
    const base = [3.1, 3.1, 3.1, 3.1];
    const cells = [
      precisionCell('hype-recency', 'fp32', base),
      precisionCell(
        'hype-recency',
        'bf16',
        base.map((v, i) => v + 1 + 0.1 * i),
      ),
      precisionCell(
        'hype-recency',
        'bf16-kernel',
        base.map((v, i) => v + 1e-5 * (i + 1)),
      ),
      precisionCell('hype-paper', 'fp32', base),
      precisionCell(
        'hype-paper',
        'bf16',
        base.map((v, i) => v - 2e-5 * i),
      ),
      precisionCell(
        'hype-paper',
        'bf16-kernel',
        base.map((v, i) => v + 3e-5 * i),
      ),
    ];
    const svg = await renderSvg(chart(buildReport(input({ precision: cells })).charts, 'precision-cost.svg'));
    const extents = lineExtents(svg);
    expect(extents).toHaveLength(4); // 2 models x 2 rounded formats
    // On one shared scale the three small costs would be flat lines (< 1 pixel); each panel has its own scale.
    for (const e of extents) expect(e).toBeGreaterThan(20);
    expect(texts(svg)).toContain('no cost');
  });
});

describe('hype show --compare', () => {
  const s = { length: 64, heads: 2, headDim: 8, trainLength: 64, seed: 0 };
  const requests = ['alibi', 'hype:preset=recency', 'hype:preset=paper'].map(parseEncodingRequest);

  it("gives each encoding its own panel and y scale, so the paper preset's small positive bias is visible", async () => {
    const spec = profileSpec(requests, s) as { title: { text: string }; resolve: { scale: { y: string } } };
    expect(spec.title.text).toBe('Position term per head: alibi, hype:preset=recency, hype:preset=paper');
    expect(spec.resolve.scale.y).toBe('independent');
    const svg = await renderSvg(spec as never);
    const extents = lineExtents(svg);
    expect(extents).toHaveLength(3 * 2);
    for (const e of extents.slice(4)) expect(e).toBeGreaterThan(50); // hype:preset=paper's two heads
    expect(allText(svg)).toMatch(/the same curves in every head .*: alibi and hype:preset=recency/);
  });

  it('refuses an encoding named twice', () => {
    expect(() => profileSpec(['alibi', 'rope', 'alibi'].map(parseEncodingRequest), s)).toThrow(
      /'alibi' is named twice/,
    );
  });

  it('keeps single-encoding plots as one panel with a line per head and a zero line', async () => {
    const svg = await renderSvg(lineChartSpec({ title: 't', points: [], xTitle: 'x', yTitle: 'y', seriesTitle: 's' }));
    expect(svg.startsWith('<svg')).toBe(true);
    const one = await renderSvg(profileSpec([parseEncodingRequest('hype:preset=paper')], s));
    expect(lineExtents(one)).toHaveLength(2);
    expect(texts(one)).toContain('0');
  });
});

describe('findings of a plan without every encoding', () => {
  it('reports only what the plan runs, names what it leaves out once, and numbers the findings in order', () => {
    const lm = QUICK.map((e, i) => lmCell(e, 1, [3 + 0.1 * i, 3.1 + 0.1 * i, 3.2]));
    const meta = quickMeta('reference');
    const { markdown } = buildReport(input({ meta, lm }));
    expect(markdown).not.toContain('no results for');
    expect(markdown).not.toMatch(/: not run\./);
    const omitted = markdown.match(/Not in this study's plan, so not in the findings: ([^\n]*)/g);
    expect(omitted).toEqual([
      "Not in this study's plan, so not in the findings: sinusoidal, learned, hope, xl, shaw, t5, da, path, " +
        'hype-learned, alibi-learned, hype-sc, fox, hype-gated, t5-shared and xl-shared (`hype study all` runs every ' +
        'encoding).',
    ]);
    const findings = markdown.slice(markdown.indexOf('## Findings'), markdown.indexOf('## lm'));
    const numbers = [...findings.matchAll(/^(\d+)\. /gm)].map((m) => Number(m[1]));
    expect(numbers).toEqual(numbers.map((_, i) => i + 1));
    expect(findings).toMatch(/by the thresholds of finding (\d+)/);
    const shape = Number(findings.match(/by the thresholds of finding (\d+)/)![1]);
    expect(findings).toMatch(new RegExp(`^${shape}\\. \\*\\*Does the ALiBi paper's shape reproduce`, 'm'));
  });
});

describe('cells of several backends', () => {
  it('the report lists the cells per backend when they are not all the one study.json names', () => {
    const meta = quickMeta('native');
    const cells = QUICK.map((e, i) => lmCell(e, 1, [3 + 0.1 * i, 3.1, 3.2]));
    const same = buildReport(
      input({ meta, lm: cells.map((c) => ({ ...c, result: { ...c.result, backend: 'native' } })) }),
    );
    expect(same.markdown).toContain('backend native; 2 CPU cores.\n');
    const onGpu = cells.map((c, i) => ({ ...c, result: { ...c.result, backend: i < 2 ? 'webgpu' : 'native' } }));
    expect(buildReport(input({ meta, lm: onGpu })).markdown).toMatch(
      /backend native; 2 CPU cores\. Cells by backend: webgpu \(2\), native \(\d+\); .*cell wall times compare only between cells of one backend\./,
    );
  });
});
