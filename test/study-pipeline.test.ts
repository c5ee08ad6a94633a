import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { countCorrect } from '../src/study/cell.ts';
import type { LmConfig, LmResult } from '../src/study/experiments.ts';
import { quickPlan, type StudyPlan } from '../src/study/plan.ts';
import { aboveChance, buildReport, compareValues, type ReportInput } from '../src/study/report.ts';
import { runStudy, writeReport } from '../src/study/run.ts';
import type { CellRecord } from '../src/study/store.ts';
import { flipFlopSequence } from '../src/study/tasks/flipflop.ts';
import { Rng } from '../src/util/rng.ts';

const root = mkdtempSync(join(tmpdir(), 'hype-study-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A tiny plan: every experiment, three encodings (learned to exercise its length refusal), a few steps. */
function tinyPlan(): StudyPlan {
  const tiny = { width: 16, layers: 1, heads: 2, mlpWidth: 32 };
  const budget = { steps: 3, batch: 2, lr: 1e-3, warmup: 1 };
  return {
    ...quickPlan(),
    seeds: [1],
    encodings: ['none', 'learned', 'hype-recency'],
    lm: { corpora: ['tinyshakespeare'], trainLength: 8, multipliers: [1, 2, 4], evalBytes: 256, model: tiny, budget },
    flipflop: { trainLength: 16, multipliers: [1], evalSequences: 4, model: tiny, budget },
    recall: { trainLength: 80, multipliers: [1, 2], evalSequences: 3, model: tiny, budget },
    precision: { encodings: ['hype-recency'], formats: ['fp32', 'bf16'], corpus: 'tinyshakespeare' },
  };
}

const dataDir = join(root, 'data');
const outDir = join(root, 'out');
const workDir = join(root, 'work');
const logs: string[] = [];

function study(log: string[]) {
  return runStudy({
    experiment: 'all',
    quick: true,
    outDir,
    workDir,
    dataDir,
    backend: new ReferenceBackend(),
    plan: tinyPlan(),
    log: (s) => log.push(s),
  });
}

beforeAll(async () => {
  mkdirSync(join(dataDir, 'tinyshakespeare'), { recursive: true });
  const line = 'First Citizen:\nBefore we proceed any further, hear me speak.\n';
  writeFileSync(join(dataDir, 'tinyshakespeare', 'input.txt'), line.repeat(60));
  await study(logs);
}, 60_000);

const cellFiles = (exp: string) => readdirSync(join(outDir, exp, 'cells')).filter((f) => f.endsWith('.json'));

describe('hype study pipeline (tiny configuration)', () => {
  it('writes results JSON per cell, a Markdown report and SVG plots', () => {
    expect(cellFiles('lm')).toHaveLength(3);
    expect(cellFiles('flipflop')).toHaveLength(3);
    expect(cellFiles('recall')).toHaveLength(3);
    expect(cellFiles('precision')).toHaveLength(2);
    const cell = JSON.parse(readFileSync(join(outDir, 'lm', 'cells', cellFiles('lm')[0]!), 'utf8'));
    expect(cell.config.experiment).toBe('lm');
    expect(cell.result.versions.node).toBe(process.version);
    expect(cell.result.train.steps).toBe(3);
    expect(cell.seconds).toBeGreaterThan(0);
    const report = readFileSync(join(outDir, 'report.md'), 'utf8');
    expect(report).toContain('QUICK VERSION');
    expect(report).toContain('## lm: length extrapolation');
    expect(report).toMatch(/\| none \| \d\.\d{3} \| \d\.\d{3} \| \d\.\d{3} \|/);
    for (const f of ['lm-bits-per-byte.svg', 'flipflop-errors.svg', 'recall-accuracy.svg', 'precision-cost.svg']) {
      expect(readFileSync(join(outDir, 'plots', f), 'utf8')).toMatch(/^<svg/);
    }
  });

  it("records learned positions past their table as 'cannot evaluate' with the encoding's own error", () => {
    const cells = cellFiles('lm').map((f) => JSON.parse(readFileSync(join(outDir, 'lm', 'cells', f), 'utf8')));
    const learned = cells.find((c) => c.config.encoding === 'learned');
    expect(learned.result.evals[0]).toMatchObject({ multiplier: 1, ok: true });
    for (const e of learned.result.evals.slice(1)) {
      expect(e.ok).toBe(false);
      expect(e.reason).toMatch(/length (16|32) exceeds the learned encoding's maximum 8/);
      expect(e).not.toHaveProperty('bitsPerByte');
    }
    const report = readFileSync(join(outDir, 'report.md'), 'utf8');
    expect(report).toMatch(/\| learned \| \d\.\d{3} \| cannot evaluate \| cannot evaluate \|/);
  });

  it('resumes: a second run recomputes nothing and leaves every cell untouched', async () => {
    const stamp = (exp: string) => cellFiles(exp).map((f) => statSync(join(outDir, exp, 'cells', f)).mtimeMs);
    const before = ['lm', 'flipflop', 'recall', 'precision'].map(stamp);
    const again: string[] = [];
    await study(again);
    expect(again.filter((l) => /training|\[\d+\//.test(l))).toEqual([]);
    expect(['lm', 'flipflop', 'recall', 'precision'].map(stamp)).toEqual(before);
    const meta = JSON.parse(readFileSync(join(outDir, 'study.json'), 'utf8'));
    expect(meta.invocations.slice(-4).map((i: { cellsRun: number }) => i.cellsRun)).toEqual([0, 0, 0, 0]);
    expect(meta.invocations.slice(0, 4).map((i: { cellsRun: number }) => i.cellsRun)).toEqual([3, 3, 3, 2]);
  }, 30_000);
});

describe('flip-flop grading', () => {
  it("counts only the read bits: the prediction at each 'r', however wrong the other positions are", () => {
    const rng = new Rng(3);
    const L = 64;
    const seqs = [flipFlopSequence(rng, L, 0.5), flipFlopSequence(rng, L, 0.5)];
    const V = 256;
    const logits = new Float32Array(seqs.length * L * V);
    const reads = seqs.reduce((n, s) => n + [...s.bytes].filter((b, t) => t % 2 === 0 && b === 114).length, 0);
    // Every position predicts a wrong byte, except the read positions, which predict the right bit.
    seqs.forEach((s, i) => {
      for (let t = 0; t < L; t++) logits[(i * L + t) * V + 7] = 1;
      for (const t of s.graded) logits[(i * L + t) * V + s.bytes[t + 1]!] = 5;
    });
    expect(countCorrect(logits, V, seqs, L)).toEqual({ correct: reads, graded: reads });
    // And the reverse: everything right but the reads gives zero correct.
    logits.fill(0);
    seqs.forEach((s, i) => {
      for (let t = 0; t + 1 < L; t++) logits[(i * L + t) * V + s.bytes[t + 1]!] = 1;
      for (const t of s.graded) logits[(i * L + t) * V + (s.bytes[t + 1]! ^ 1)] = 5;
    });
    expect(countCorrect(logits, V, seqs, L)).toEqual({ correct: 0, graded: reads });
  });
});

describe('report generator (from given results)', () => {
  const model = { width: 16, layers: 1, heads: 2, mlpWidth: 32 };
  const budget = { steps: 3, batch: 2, lr: 1e-3, warmup: 1 };
  function lmCell(encoding: string, seed: number, bpb: number[]): CellRecord<LmConfig, LmResult> {
    const config: LmConfig = {
      experiment: 'lm',
      corpus: 'tinyshakespeare',
      encoding,
      pe: { name: encoding, options: {} },
      seed,
      trainLength: 8,
      model,
      budget,
      multipliers: [1, 2],
      evalBytes: 0,
    };
    const result = {
      train: { steps: 3, seconds: 1, finalLoss: 2, parameters: 10, runDir: 'x' },
      evals: bpb.map((v, i) => ({
        multiplier: i + 1,
        length: 8 * (i + 1),
        ok: true as const,
        bitsPerByte: v,
        scored: 9,
      })),
      backend: 'reference',
      evalSeconds: 0,
    } as unknown as LmResult;
    return { key: `${encoding}${seed}`, config, result, finishedAt: '', seconds: 1 };
  }
  const input = (cells: CellRecord<LmConfig, LmResult>[]): ReportInput => ({
    meta: null,
    lm: cells,
    flipflop: [],
    recall: [],
    precision: [],
  });

  it('answers with a negative result when the intervals say so', () => {
    const cells = [1, 2, 3].flatMap((s) => [
      lmCell('alibi', s, [2.0 + 0.01 * s, 1.9 + 0.01 * s]),
      lmCell('hype-recency', s, [2.0 + 0.01 * s, 2.6 + 0.01 * s]),
    ]);
    const { markdown } = buildReport(input(cells));
    expect(markdown).toContain('tinyshakespeare: no — hype-recency is worse at 2x (non-overlapping intervals).');
    expect(markdown).toMatch(/2x L: bits per byte: hype-recency 2\.620 ± 0\.025 \(3 seeds\) vs alibi 1\.920 ± 0\.025/);
    expect(markdown).toContain('the 95% intervals do not overlap: hype-recency is worse.');
  });

  it('refuses to report from a folder without results', async () => {
    await expect(writeReport(join(root, 'empty'))).rejects.toThrow(/no study results in/);
  });

  it('says "no difference detected" when intervals overlap, and refuses to judge a single seed', () => {
    const overlap = [1, 2, 3].flatMap((s) => [
      lmCell('alibi', s, [2.0 + 0.05 * s, 1.9 + 0.05 * s]),
      lmCell('hype-recency', s, [2.01 + 0.05 * s, 1.92 + 0.05 * s]),
    ]);
    expect(buildReport(input(overlap)).markdown).toContain(
      'tinyshakespeare: yes, as far as 3 seeds can tell: the intervals overlap at every length past L.',
    );
    const single = [lmCell('alibi', 1, [2, 1.9]), lmCell('hype-recency', 1, [2, 2.6])];
    const md = buildReport(input(single)).markdown;
    expect(md).toContain('tinyshakespeare: one seed, so no verdict');
    expect(md).toContain('one seed only, so there is no interval and this difference is not evidence either way.');
    expect(compareValues([1], [2])).toBe('single-seed');
    // Beating chance needs more than the 95% binomial margin: 0.5 + 1.645 * 0.05 = 0.582 at 100 trials.
    expect(aboveChance(59, 100, 0.5)).toBe(true);
    expect(aboveChance(58, 100, 0.5)).toBe(false);
    expect(aboveChance(0, 0, 0.1)).toBe(false);
    expect(compareValues([], [2])).toBe('missing');
  });
});

describe('trainer data sources', () => {
  it('a generator-fed run resumes bit for bit and refuses a different generator', async () => {
    const { TrainingRun } = await import('../src/train/trainer.ts');
    const { generatorSource } = await import('../src/train/source.ts');
    const { parseModelConfig } = await import('../src/model/config.ts');
    const cfg = parseModelConfig({ width: 8, layers: 1, heads: 2, mlpWidth: 16, trainLength: 16, pe: 'alibi' });
    const src = (p: number) =>
      generatorSource(`flipflop:p_i=${p}`, (rng, n) => flipFlopSequence(rng, n + (n % 2), p).bytes);
    const train = { steps: 4, batch: 2, warmup: 1, checkpointEvery: 2 };
    const be = new ReferenceBackend();
    const straight = TrainingRun.start(join(root, 'gen-a'), cfg, train, be, { source: src(0.8) });
    const all = (await straight.run(), readFileSync(join(root, 'gen-a', 'losses.jsonl'), 'utf8'));
    const first = TrainingRun.start(join(root, 'gen-b'), cfg, train, be, { source: src(0.8) });
    await first.run({ stopAfter: 2 });
    expect(() => TrainingRun.resume(join(root, 'gen-b'), be, { source: src(0.5) })).toThrow(/data source/);
    await TrainingRun.resume(join(root, 'gen-b'), be, { source: src(0.8) }).run();
    const losses = (s: string) =>
      s
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).loss);
    expect(losses(readFileSync(join(root, 'gen-b', 'losses.jsonl'), 'utf8'))).toEqual(losses(all));
  });
});
