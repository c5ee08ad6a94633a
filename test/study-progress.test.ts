/** What `hype study` prints while it runs: the plan up front, each cell's place and time left, and how it ended. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { doneLine } from '../src/cli/study.ts';
import { buildProgram } from '../src/cli/main.ts';
import { flipflopConfigs, lmConfigs, precisionConfigs, recallConfigs } from '../src/study/experiments.ts';
import { QUICK_STUDY_MINUTES, quickPlan } from '../src/study/plan.ts';
import { cellCost, formatDuration, queueTable, StudyProgress, type PlannedCell } from '../src/study/progress.ts';

const plan = quickPlan();
const quickCells = (): PlannedCell[] =>
  [
    ...lmConfigs(plan, plan.encodings),
    ...flipflopConfigs(plan, plan.encodings),
    ...recallConfigs(plan, plan.encodings),
    ...precisionConfigs(plan, plan.encodings),
  ].map((cell) => ({ cell, finished: false }));

describe('study progress', () => {
  it('states the whole quick plan up front: 21 cells by experiment', () => {
    const p = new StudyProgress(quickCells(), () => {});
    expect(p.planLine()).toBe(
      'plan: 21 cells (lm 5, flipflop 5, recall 5, precision 6); none finished yet, 21 to compute',
    );
    const half = quickCells().map((c, i) => ({ ...c, finished: i < 5 }));
    expect(new StudyProgress(half, () => {}).planLine()).toMatch(/; 5 finished already, 16 to compute$/);
    const all = quickCells().map((c) => ({ ...c, finished: true }));
    expect(new StudyProgress(all, () => {}).planLine()).toMatch(/; all finished already, nothing to compute$/);
  });

  it("numbers each cell, shows the time elapsed and, after the first cell, the time left from the cells' costs", () => {
    const cells = quickCells().slice(0, 3);
    let clock = 0;
    const lines: string[] = [];
    const p = new StudyProgress(
      cells,
      (l) => lines.push(l),
      () => clock,
    );
    p.cellStarted(cells[0]!.cell, 'first');
    clock = 10_000; // the first cell took 10 s
    p.cellStarted(cells[1]!.cell, 'second');
    const [c0, c1, c2] = cells.map((c) => cellCost(c.cell));
    const left = (10 / c0!) * (c1! + c2!);
    expect(lines[0]).toBe('[1/3] first | 0 s elapsed, time left: known after the first cell');
    expect(lines[1]).toBe(`[2/3] second | 10 s elapsed, about ${formatDuration(left)} left`);
    expect(p.computed).toBe(2);
  });

  it('weighs cells by their work: rounding emulation costs more than fp32, PaTH more than ALiBi', () => {
    const prec = precisionConfigs(plan, plan.encodings);
    const cost = (f: string) => cellCost(prec.find((c) => c.format === f)!);
    expect(cost('bf16')).toBeGreaterThan(cost('fp32'));
    const [alibi] = lmConfigs(plan, ['alibi']);
    const [path] = lmConfigs(plan, ['path']);
    expect(cellCost(path!)).toBeGreaterThan(cellCost(alibi!));
  });

  it('formats durations in s, min and h', () => {
    expect([5, 65, 3725].map(formatDuration)).toEqual(['5 s', '1 min 05 s', '1 h 02 min']);
  });

  it('says when a rerun had nothing to compute instead of "done in 0.0 minutes"', () => {
    expect(doneLine('hype study all --quick', 'results/quick', 21, 0, 2)).toBe(
      'hype study all --quick: nothing to compute, all 21 cells of this plan were already finished in ' +
        'results/quick/; the report was regenerated from them (--recompute <encodings> computes cells again)',
    );
    expect(doneLine('hype study lm', 'out', 21, 4, 75)).toBe(
      'hype study lm: done, 4 of 21 cells computed in 1 min 15 s (the other 17 were already finished)',
    );
  });
});

describe('the quick study time', () => {
  it('is one figure, quoted alike by --help and the README', () => {
    const study = buildProgram().commands.find((c) => c.name() === 'study')!;
    expect(study.helpInformation().replace(/\s+/g, ' ')).toContain(`about ${QUICK_STUDY_MINUTES} minutes`);
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const quoted = [...readme.matchAll(/~(\d+(?:\.\d+)?) min/g)].map((m) => Number(m[1]));
    expect(quoted.length).toBeGreaterThan(0);
    expect(quoted.every((m) => m === QUICK_STUDY_MINUTES)).toBe(true);
  });
});

describe("the queue coordinator's live table", () => {
  it("lists running jobs with worker, step and a time left from each job's own step rate", () => {
    const t = queueTable(
      [
        { label: 'lm tinyshakespeare alibi seed 1', worker: 'w1', step: 500, steps: 2000, seconds: 60 },
        { label: 'flipflop none seed 2', worker: 'w2', step: 0, steps: 0, seconds: 1 },
      ],
      { done: 3, total: 10, waiting: 5, failed: 1, elapsed: 125, eta: 'about 9 min left' },
    );
    const lines = t.split('\n');
    expect(lines[0]).toBe('queue: 3/10 done (1 failed), 2 running, 5 waiting | 2 min 05 s elapsed, about 9 min left');
    expect(lines[1]).toMatch(/^ {2}cell +worker +step +time left$/);
    // 500 of 2000 steps in 60 s: 1500 more take 180 s.
    expect(lines[2]).toMatch(/^ {2}lm tinyshakespeare alibi seed 1 +w1 +500\/2000 +3 min 00 s$/);
    expect(lines[3]).toMatch(/flipflop none seed 2 +w2 +starting +-$/);
    expect(queueTable([], { done: 0, total: 2, waiting: 2, failed: 0, elapsed: 0, eta: '?' })).toBe(
      'queue: 0/2 done, 0 running, 2 waiting | 0 s elapsed, ?',
    );
  });
});
