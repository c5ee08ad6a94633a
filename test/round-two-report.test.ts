// The second round's report section (issue 19) from synthetic cells: every number below is worked out by hand in
// the comments, so a wrong verdict, count or ratio fails here.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HypeError } from '../src/errors.ts';
import { buildReport, type ReportInput, type StudyMeta } from '../src/study/report.ts';
import { fullPlan } from '../src/study/plan.ts';
import type {
  FlipflopConfig,
  FlipflopResult,
  LmConfig,
  LmResult,
  RecallConfig,
  RecallResult,
} from '../src/study/experiments.ts';
import { readCost, type CostRecord } from '../src/study/cost.ts';
import { forestRows } from '../src/study/round-two-chart.ts';
import type { CellRecord } from '../src/study/store.ts';
import { FLIPFLOP_TASK } from '../src/study/tasks/flipflop.ts';
import { RECALL_TASK } from '../src/study/tasks/recall.ts';

const model = { width: 16, layers: 1, heads: 2, mlpWidth: 32 };
const budget = { steps: 3, batch: 2, lr: 1e-3, warmup: 1 };
const base = { pe: { name: 'x', options: {} }, trainLength: 8, model, budget };
const train = (seconds: number) => ({ steps: 3, seconds, finalLoss: 2, parameters: 10, runDir: 'x' });

function lm(encoding: string, seed: number, bpb: [number, number], seconds = 10, params?: Record<string, number[]>) {
  const config: LmConfig = {
    ...base,
    experiment: 'lm',
    corpus: 'tinyshakespeare',
    encoding,
    seed,
    multipliers: [1, 16],
    evalBytes: 0,
  };
  const result = {
    train: train(seconds),
    evals: bpb.map((v, i) => ({
      multiplier: [1, 16][i]!,
      length: 8 * [1, 16][i]!,
      ok: true,
      bitsPerByte: v,
      scored: 9,
    })),
    ...(params ? { positionParams: params } : {}),
    backend: 'reference',
    evalSeconds: 0,
  } as unknown as LmResult;
  return { key: `${encoding}${seed}`, config, result, finishedAt: '', seconds } as CellRecord<LmConfig, LmResult>;
}

function flip(encoding: string, seed: number, oodDense: number, params?: Record<string, number[]>) {
  const seconds = 10;
  const config = { ...base, experiment: 'flipflop', task: FLIPFLOP_TASK, encoding, seed, evalSequences: 1 };
  const mix = (errors: number) => ({ pIgnore: 0.8, errors, graded: 1000, errorRate: errors / 1000 });
  const mixes = { id: mix(0), 'ood-sparse': mix(0), 'ood-dense': mix(oodDense) };
  const result = { train: train(seconds), mixes, ...(params ? { positionParams: params } : {}) };
  return { key: `f${encoding}${seed}`, config, result, finishedAt: '', seconds } as unknown as CellRecord<
    FlipflopConfig,
    FlipflopResult
  >;
}

function recall(encoding: string, seed: number, correct: [number, number]) {
  const config = { ...base, experiment: 'recall', task: RECALL_TASK, encoding, seed, multipliers: [1, 16] };
  const evals = correct.map((c, i) => ({
    multiplier: [1, 16][i]!,
    length: 8 * [1, 16][i]!,
    ok: true,
    correct: c,
    graded: 100,
    accuracy: c / 100,
  }));
  return {
    key: `r${encoding}${seed}`,
    config,
    result: { train: train(10), evals },
    finishedAt: '',
    seconds: 10,
  } as unknown as CellRecord<RecallConfig, RecallResult>;
}

const noise = [0.02, -0.01, 0];
const cells: ReportInput = {
  meta: null,
  lm: [
    ...[1, 2, 3].flatMap((s) => [
      lm('hype-learned', s, [2.0 + 0.01 * s, 2.1]),
      lm('alibi-learned', s, [2.1 + 0.01 * s + noise[s - 1]!, 2.1], 20, {
        // Trained slopes 3x and 1x the reference slopes 1/16, 1/256, in every seed.
        'blocks.0.attn.pe.slope': [3 / 16, 1 / 256],
      }),
      lm('alibi', s, [2.2, 2.2], 10),
    ]),
    // hype-sc: seed 1 only. Start slopes for 2 heads are 1/16 and 1/256 (ALiBi's), start curvature 0.5.
    lm('hype-sc', 1, [2.0, 2.0], 30, {
      'blocks.0.attn.pe.slope': [2 / 16, 4 / 256],
      'blocks.0.attn.pe.curvature': [0.25, 1.0],
    }),
  ],
  flipflop: [
    ...[1, 2, 3].flatMap((s) => [
      flip('fox', s, 0, { 'pe.gate.wNorm': [1, 2], 'pe.gate.b': [0, 0] }),
      flip('alibi', s, 200 + 10 * s + [5, -5, 0][s - 1]!),
    ]),
    flip('hype-learned', 1, 5),
    flip('hype-gated', 1, 0, {
      'pe.gate.sMean': [1, 3],
      'pe.gate.sStd': [0.5, 1.5],
      'pe.gate.sMin': [0.1, 0.2],
      'pe.gate.sMax': [2, 6],
    }),
  ],
  recall: [
    // fox learns at 1x in seeds 1 and 2 (90/100, 80/100); seed 3 is at chance (10/100).
    recall('fox', 1, [90, 40]),
    recall('fox', 2, [80, 20]),
    recall('fox', 3, [10, 10]),
  ],
  precision: [],
};

describe('second-round report section', () => {
  const md = buildReport(cells).markdown;

  it('names the new encodings in the setup and the per-layer rows as the variant', () => {
    // No study.json: the setup is read from the cells, so only the findings section carries the round.
    expect(md).toContain('## Second round (issue 19)');
    const withMeta = buildReport({
      ...cells,
      meta: {
        plan: fullPlan(),
        versions: { package: '0', commit: 'abc', node: '20' } as StudyMeta['versions'],
        backend: 'reference',
        cpus: 2,
        invocations: [],
      },
    }).markdown;
    expect(withMeta).toContain('The rows t5 and xl are the per-layer variant');
    expect(withMeta).toContain('alibi-learned (ALiBi with trained log-slopes');
  });

  it('judges hype-learned against alibi-learned by the paired interval', () => {
    // alibi-learned at 1x: 2.13, 2.11, 2.13 (sd 0.01155, half-width 4.303 * 0.01155 / sqrt 3 = 0.029). Paired
    // differences -0.12, -0.09, -0.10: mean -0.1033, sd 0.01528, half-width 4.303 * 0.01528 / sqrt 3 = 0.038.
    expect(md).toContain(
      '    - lm tinyshakespeare, 1x L: bits per byte: hype-learned 2.020 ± 0.025 (3 seeds) vs alibi-learned 2.123 ± ' +
        '0.029 (3 seeds); paired difference over 3 seeds -0.103 ± 0.038: its 95% interval excludes 0, so ' +
        'hype-learned is better.',
    );
    // The verdicts gathered: 16x has equal values in every seed (difference 0 ± 0); flip-flop has one hype-learned
    // seed and no alibi-learned cell, recall neither encoding.
    expect(md).toContain(
      '    - In short: hype-learned better on lm tinyshakespeare 1x; no difference detected on lm tinyshakespeare ' +
        '16x; not judged yet (fewer than 2 shared seeds) flip-flop id, flip-flop ood-dense, recall 1x, recall 16x.',
    );
  });

  it('says how many seeds exist when there are too few for an interval, and which cells are missing', () => {
    expect(md).toContain(
      '    - lm tinyshakespeare, 1x L: 1 of 3 seeds so far: no interval (bits per byte, seed 1: hype-sc 2.000, ' +
        'alibi-learned 2.130; not evidence either way).',
    );
    expect(md).toContain('    - flip-flop id: no cells for hype-sc and alibi-learned yet (0 of 3 seeds).');
    expect(md).toContain('  - recall: no hype-sc cells yet.');
  });

  it("reports where hype-sc's slope and curvature went against their starts", () => {
    // Slope ratios 2 and 4 (median 3); curvature ratios 0.5 (toward 0) and 2 (away), median 1.25.
    expect(md).toContain(
      '  - lm (2 heads x layers x seeds, 1 cell): trained slope 3.00x its start (median; range 2.00x to 4.00x); ' +
        'trained curvature 1.25x its start (median; range 0.50x to 2.00x). Curvature moved toward 0 (flatter, more ' +
        'ALiBi-like) in 1, away from 0 (more bent) in 1 of 2 heads.',
    );
  });

  it('compares fox with alibi on flip-flop ood-dense and counts recall seeds that learned apart from accuracy', () => {
    // alibi's ood-dense errors 21.5, 21.5, 23.0 %: paired differences -21.5, -21.5, -23.0: mean -22.0, sd 0.866,
    // half-width 4.3027 * 0.8660 / sqrt 3 = 2.151.
    expect(md).toContain(
      '    - flip-flop ood-dense: error %: fox 0.000 ± 0.000 (3 seeds) vs alibi 22.000 ± 2.151 (3 seeds); paired ' +
        'difference over 3 seeds -22.000 ± 2.151: its 95% interval excludes 0, so fox is better.',
    );
    // Learned seeds 1, 2: accuracy 85 ± 12.706 * 7.071 / sqrt 2 = 63.5 at 1x, 30 ± 127.1 at 16x.
    expect(md).toContain(
      '  - recall, fox: learned the task at 1x in 2 of 3 seeds run; accuracy of those that did: 85.0 ± 63.5% at 1x, ' +
        '30.0 ± 127.1% at 16x.',
    );
    expect(md).toContain('    - recall 1x L: no cells for xl yet (0 of 3 seeds).');
  });

  it('takes the recall seeds some encodings have beyond the plan, without calling the others partial', () => {
    // fox gets seeds 4 and 5 (both learn: 100/100, 16x 50 and 60) and xl seeds 1-4, while the plan (and lm, flip-
    // flop) runs 3.
    const more = buildReport({
      ...cells,
      recall: [
        ...cells.recall,
        recall('fox', 4, [100, 50]),
        recall('fox', 5, [100, 60]),
        ...[1, 2, 3, 4].map((s) => recall('xl', s, [100, 20])),
      ],
    }).markdown;
    expect(more).toContain('(the plan runs 3; recall runs up to 5 for xl, fox, its seed variance being large)');
    expect(more).toContain('  - recall, fox: learned the task at 1x in 4 of 5 seeds run;');
    expect(more).toContain('  - recall, xl: learned the task at 1x in 4 of 4 seeds run;');
    // fox - xl at 1x over seeds 1-4: -10, -20, -90, 0; four shared seeds are not "so far" against a plan of 3.
    expect(more).toMatch(
      / {4}- recall 1x L: .*paired difference over 4 seeds -30\.000 .*so no difference is detected\.\n/,
    );
    expect(more).toContain('Evidence: 3 seeds (recall: up to 5),');
  });

  it("reports alibi-learned's slopes and what the content gates learned", () => {
    // Ratios 3, 1 in each of 3 seeds: median 2 of {1, 1, 1, 3, 3, 3}.
    expect(md).toContain(
      "  - alibi-learned's trained slopes, lm: median 2.00 (range 1.00 to 3.00) times the reference slopes (6 heads " +
        'x layers x seeds).',
    );
    expect(md).toContain(
      "  - hype-gated's amplitude s, flip-flop: per-head mean median 2.00 (range 1.00 to 3.00), per-head standard " +
        'deviation over queries median 1.00 (range 0.50 to 1.50); s over all queries from 0.100 to 6.00.',
    );
    // sigmoid(0) = 0.5; |w| 1 and 2 in each of 3 seeds: median 1.5.
    expect(md).toContain(
      "  - fox's forget gate, flip-flop: sigmoid(b) median 0.50 (range 0.50 to 0.50), |w| median 1.50 (range 1.00 to " +
        '2.00) (per KV head x layer x seed).',
    );
    // hype-gated vs hype-learned on flip-flop: seed 1 only (5 errors of 1000 = 0.5%).
    expect(md).toContain(
      '    - flip-flop ood-dense: 1 of 3 seeds so far: no interval (error %, seed 1: hype-gated 0.000, hype-learned ' +
        '0.500; not evidence either way).',
    );
  });

  it('answers the cost question from the benchmark record, not from cell seconds', () => {
    // No cost.json: the section says how to make one and why the cells' seconds are not used.
    expect(md).toContain(
      '`npm run bench:explicit -- --only alibi-learned,hype-sc,fox,hype-gated,t5-shared,xl-shared --rounds 3 ' +
        '--json <folder>/cost.json`',
    );
    expect(md).toContain('a resumed cell records only the seconds after its checkpoint');
    expect(md).not.toContain('lm 2.00x');
    // A record: alibi 80 ms (eval 10 ms); fox 84 ms = 1.05x (within 5%), hype-gated 92 ms = 1.15x (15% over),
    // eval 15 ms = 1.50x; hype-sc has no eval column; xl-shared is missing.
    const row = (encoding: string, trainMs: number, evalMs: number | null) => ({
      encoding,
      trainMs,
      evalMs,
      trainCalls: 10,
      evalCalls: 10,
    });
    const cost: CostRecord = {
      bench: 'explicit-encodings',
      measuredAt: '2026-12-05T10:00:00.000Z',
      versions: { node: 'v20', package: '0', commit: 'abcdef0123' },
      threads: 2,
      rounds: 3,
      minSeconds: 3,
      cpus: 2,
      loadAverage: [0.1, 0.4],
      shape: { width: 128, layers: 2, heads: 4, mlpWidth: 512, trainLength: 128, batch: 16, evalLength: 2048 },
      rows: [row('alibi', 80, 10), row('fox', 84, 10), row('hype-gated', 92, 15), row('hype-sc', 80, null)],
    };
    const withCost = buildReport({ ...cells, cost }).markdown;
    expect(withCost).toContain('(2026-12-05, code abcdef0)');
    expect(withCost).toContain('alibi: 80.0 ms per step, 10.0 ms per evaluation.');
    expect(withCost).toContain(
      '  - fox: training step 84.0 ms, 1.05x alibi (within 5% of alibi); evaluation 10.0 ms, 1.00x.',
    );
    expect(withCost).toContain(
      '  - hype-gated: training step 92.0 ms, 1.15x alibi (15% over alibi: more than 5%); evaluation 15.0 ms, 1.50x.',
    );
    expect(withCost).toContain('  - hype-sc: training step 80.0 ms, 1.00x alibi (within 5% of alibi).');
    expect(withCost).toContain('  - xl-shared: not in this measurement.');
    const dirty = { ...cost, versions: { ...cost.versions, commit: 'abcdef0123+dirty' } };
    expect(buildReport({ ...cells, cost: dirty }).markdown).toContain(
      '(2026-12-05, code abcdef0 with uncommitted changes)',
    );
  });

  it('says that one-layer flip-flop makes sharing the identity, and names the code behind cells that differ', () => {
    const withCommit = (c: ReturnType<typeof flip>, commit: string) =>
      ({ ...c, result: { ...c.result, versions: { commit } } }) as typeof c;
    const md1 = buildReport({
      ...cells,
      flipflop: [
        ...cells.flipflop,
        ...[1, 2].flatMap((s) => [withCommit(flip('t5-shared', s, 7), 'aaaaaaa1'), withCommit(flip('t5', s, 7), 'b1')]),
        withCommit(flip('xl-shared', 1, 3), 'ccccccc9'),
        withCommit(flip('xl', 1, 4), 'ddddddd9'),
      ],
    }).markdown;
    expect(md1).toContain('t5-shared and t5 have identical error counts in 2 of 2 seeds.');
    expect(md1).toContain(
      'xl-shared and xl have identical error counts in 0 of 1 seeds (differing cells were computed by different ' +
        'code: seed 1: xl-shared at ccccccc, xl at ddddddd).',
    );
    expect(md1).toContain('flip-flop ood-dense: error %: t5-shared 0.700');
  });

  it('leaves the section out when no second-round encoding has a cell', () => {
    const md0 = buildReport({
      ...cells,
      lm: cells.lm.filter((c) => c.config.encoding === 'alibi'),
      flipflop: [],
      recall: [],
    }).markdown;
    expect(md0).not.toContain('Second round');
  });
});

describe('cost record file', () => {
  it('is optional, and a malformed one is one clear error naming the file and the fix', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hype-cost-'));
    try {
      expect(readCost(join(dir, 'cost.json'))).toBeNull();
      writeFileSync(join(dir, 'cost.json'), '{ not json');
      expect(() => readCost(join(dir, 'cost.json'))).toThrow(/cost\.json is not JSON .*bench:explicit --json/);
      writeFileSync(join(dir, 'cost.json'), JSON.stringify({ bench: 'explicit-encodings', rows: [{ encoding: 'a' }] }));
      expect(() => readCost(join(dir, 'cost.json'))).toThrow(HypeError);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('forest plot of the paired differences', () => {
  it('orients every measure so that negative means the first encoding is better, and skips single-seed rows', () => {
    const S = (vals: number[]) => vals.map((value, i) => ({ seed: i + 1, value }));
    const bpb: Record<string, number[]> = { a: [2.0, 2.1, 2.2], b: [2.1, 2.3, 2.2], c: [2.0] };
    const acc: Record<string, number[]> = { a: [90, 80, 70], b: [60, 60, 60], c: [50] };
    const rows = forestRows(
      [
        ['a', 'b'],
        ['c', 'b'],
      ],
      [
        { name: 'bpb', samples: (e) => S(bpb[e]!), lowerBetter: true },
        { name: 'acc', samples: (e) => S(acc[e]!), lowerBetter: false },
      ],
    );
    // c shares one seed with b: no interval, no row.
    expect(rows.map((r) => `${r.comparison}/${r.measure}`)).toEqual(['a vs b/bpb', 'a vs b/acc']);
    // bpb a - b = -0.1, -0.2, 0: mean -0.1, sd 0.1, half-width 4.3027 * 0.1 / sqrt 3 = 0.2484: includes 0.
    expect(rows[0]!.mean).toBeCloseTo(-0.1, 12);
    expect(rows[0]!.hi - rows[0]!.mean).toBeCloseTo(0.24841, 4);
    expect(rows[0]!.verdict).toBe('no difference detected');
    // accuracy b - a = -30, -20, -10: mean -20, half-width 4.3027 * 10 / sqrt 3 = 24.84: includes 0 too.
    expect(rows[1]!.mean).toBeCloseTo(-20, 12);
    expect(rows[1]!.lo).toBeCloseTo(-44.841, 2);
    expect(rows[1]!.seeds).toBe(3);
  });

  it('is drawn into the report when a comparison has two seeds', () => {
    const report = buildReport(cells);
    expect(report.charts.map((c) => c.file)).toContain('round-two-differences.svg');
    expect(report.markdown).toContain('![second-round paired differences](plots/round-two-differences.svg)');
  });
});
