import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { runStudyCommand } from '../src/cli/study.ts';
import { HypeError } from '../src/errors.ts';
import { columnPlan } from '../src/pe/hype/core.ts';
import { findEncodingFactory } from '../src/pe/registry.ts';
import { BF16_BPB_TOLERANCE, bf16Section } from '../src/study/bf16-report.ts';
import { bf16PeChoice, lmConfigs, type LmConfig, type LmResult } from '../src/study/experiments.ts';
import { peChoice, quickPlan, type StudyPlan } from '../src/study/plan.ts';
import { readResults } from '../src/study/report.ts';
import { planFor, runStudy } from '../src/study/run.ts';
import { cellKey, type CellRecord } from '../src/study/store.ts';

const root = mkdtempSync(join(tmpdir(), 'hype-study-bf16-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const ENCODINGS = ['none', 'alibi', 'hype-learned'];

describe('hype study lm --precision', () => {
  it("fp32 keeps the stored cells' keys; bf16 makes new cells that name their precision", () => {
    const committed = join('results', 'full', 'lm', 'cells');
    const fp32 = (precision?: 'fp32') =>
      lmConfigs(planFor({ quick: false, encodings: ENCODINGS, corpora: ['tinyshakespeare'], precision }), ENCODINGS);
    for (const c of [...fp32(), ...fp32('fp32')]) {
      expect(c.precision).toBeUndefined();
      // The full plan's fp32 cells of these encodings (3 seeds) are committed: the same configs must find them.
      expect(existsSync(join(committed, `${cellKey(c)}.json`)), `${c.encoding} seed ${c.seed}`).toBe(true);
    }
    const bf16 = lmConfigs(
      planFor({ quick: false, encodings: ENCODINGS, corpora: ['tinyshakespeare'], precision: 'bf16' }),
      ENCODINGS,
    );
    expect(bf16).toHaveLength(9);
    const keys = new Set(fp32().map(cellKey));
    for (const c of bf16) {
      expect(c.precision).toBe('bf16');
      expect(keys.has(cellKey(c))).toBe(false);
    }
  });

  it('under bf16 hype-learned builds split columns; alibi (kernel route) and none are unchanged', () => {
    const hype = bf16PeChoice('hype-learned');
    expect(hype).toEqual({ name: 'hype', options: { preset: 'learned', precision: 'bf16' } });
    // The layout the encoding builds from these options on fp32 arrays: hi/lo split columns for bf16 operands.
    expect(columnPlan(hype.options, 'fp32').split).toBe('bf16');
    expect(findEncodingFactory('hype')!.bf16Refusal!(hype.options)).toBeNull();
    // The fp32 choice itself (plain columns) is what the trainer would refuse under bf16.
    expect(findEncodingFactory('hype')!.bf16Refusal!(peChoice('hype-learned').options)).toMatch(/split/);
    expect(bf16PeChoice('alibi')).toBe(peChoice('alibi'));
    expect(bf16PeChoice('none')).toBe(peChoice('none'));
  });

  it('refuses a bad precision, and bf16 for experiments other than lm, before any work', async () => {
    const flags = { dataDir: root, workDir: join(root, 'w0'), backend: 'reference', out: join(root, 'o0') };
    await expect(runStudyCommand('lm', { ...flags, precision: 'fp16' })).rejects.toThrow(/unknown precision "fp16"/);
    await expect(runStudyCommand('flipflop', { ...flags, precision: 'bf16' })).rejects.toThrow(
      /--precision bf16 trains the lm cells only/,
    );
    await expect(runStudyCommand('lm', { ...flags, backend: 'webgpu', precision: 'bf16' })).rejects.toThrow(
      /--precision bf16 needs bf16 kernels, which the webgpu backend does not have/,
    );
    expect(existsSync(join(root, 'o0'))).toBe(false);
  });

  it('a tiny bf16 cell trains, records its precision and both scorings, and only its own section reads it', async () => {
    const dataDir = join(root, 'data');
    mkdirSync(join(dataDir, 'tinyshakespeare'), { recursive: true });
    const line = 'First Citizen:\nBefore we proceed any further, hear me speak.\n';
    writeFileSync(join(dataDir, 'tinyshakespeare', 'input.txt'), line.repeat(60));
    const plan: StudyPlan = {
      ...quickPlan(),
      seeds: [1],
      encodings: ['hype-learned'],
      lm: {
        corpora: ['tinyshakespeare'],
        trainLength: 8,
        multipliers: [1, 2],
        evalBytes: 256,
        model: { width: 16, layers: 1, heads: 2, mlpWidth: 32 },
        budget: { steps: 3, batch: 2, lr: 1e-3, warmup: 1 },
      },
    };
    const outDir = join(root, 'out');
    const common = { experiment: 'lm' as const, quick: true, outDir, dataDir, backend: new ReferenceBackend(), plan };
    const log: string[] = [];
    await runStudy({ ...common, workDir: join(root, 'work'), log: (s) => log.push(s) });
    await runStudy({ ...common, workDir: join(root, 'work'), precision: 'bf16', log: (s) => log.push(s) });
    const files = readdirSync(join(outDir, 'lm', 'cells')).filter((f) => f.endsWith('.json'));
    expect(files).toHaveLength(2);
    const cells = files.map(
      (f) => JSON.parse(readFileSync(join(outDir, 'lm', 'cells', f), 'utf8')) as CellRecord<LmConfig, LmResult>,
    );
    const bf16 = cells.find((c) => c.config.precision === 'bf16')!;
    const fp32 = cells.find((c) => c.config.precision === undefined)!;
    expect(fp32.result.precision).toBe('fp32');
    expect(fp32.result.fp32Evals).toBeUndefined();
    expect(bf16.result.precision).toBe('bf16');
    expect(bf16.config.pe.options).toEqual({ preset: 'learned', precision: 'bf16' });
    expect(bf16.result.train.runDir).toMatch(/lm-tinyshakespeare-hype-learned-s1-bf16-[0-9a-f]{16}$/);
    expect(bf16.result.train.steps).toBe(3);
    expect(bf16.result.evals.map((e) => e.ok && Number.isFinite(e.bitsPerByte))).toEqual([true, true]);
    expect(bf16.result.fp32Evals!.map((e) => e.multiplier)).toEqual([1, 2]);
    // The same weights scored under bf16 and in fp32 differ (rounded operands), but by far less than a bit per byte.
    const [b, f] = [bf16.result.evals[0]!, bf16.result.fp32Evals![0]!];
    expect(b.ok && f.ok && b.bitsPerByte !== f.bitsPerByte && Math.abs(b.bitsPerByte - f.bitsPerByte) < 0.1).toBe(true);
    expect(log.some((l) => /lm tinyshakespeare hype-learned seed 1 bf16: held-out bits per byte/.test(l))).toBe(true);
    const input = readResults(outDir);
    expect(input.lm.map((c) => c.key)).toEqual([fp32.key]);
    expect(input.lmBf16!.map((c) => c.key)).toEqual([bf16.key]);
    const report = readFileSync(join(outDir, 'report.md'), 'utf8');
    expect(report).toContain('## bf16 mixed precision against fp32');
    expect(report).toMatch(/\| tinyshakespeare \| hype-learned \| 1 \| \d\.\d{4} \| \d\.\d{4} \| [+−]\d\.\d{4} \|/);
  }, 60_000);
});

describe('the bf16 report section', () => {
  const cell = (precision: 'bf16' | undefined, seed: number, bpb: [number, number], enc = 'alibi') =>
    ({
      key: `${enc}-${seed}-${precision ?? 'fp32'}`,
      config: {
        experiment: 'lm',
        corpus: 'tinyshakespeare',
        encoding: enc,
        pe: peChoice(enc),
        seed,
        trainLength: 128,
        model: { width: 128, layers: 2, heads: 4, mlpWidth: 512 },
        budget: { steps: 2000, batch: 16, lr: 2e-3, warmup: 100 },
        multipliers: [1, 4, 16],
        evalBytes: 1000,
        ...(precision ? { precision } : {}),
      },
      result: {
        evals: [
          { multiplier: 1, length: 128, ok: true, bitsPerByte: bpb[0], scored: 1000 },
          { multiplier: 4, length: 512, ok: true, bitsPerByte: 9, scored: 1000 },
          { multiplier: 16, length: 2048, ok: true, bitsPerByte: bpb[1], scored: 1000 },
        ],
      },
    }) as unknown as CellRecord<LmConfig, LmResult>;

  it("says 'not run' without bf16 cells", () => {
    expect(bf16Section([cell(undefined, 1, [2.4, 2.4])], []).join('\n')).toMatch(/Not run: no bf16 lm cells/);
  });

  it('pairs by seed at 1x and the longest length, judges each pair against the tolerance, names the unpaired', () => {
    expect(BF16_BPB_TOLERANCE).toBe(0.02);
    const text = bf16Section(
      [cell(undefined, 1, [2.4, 2.3]), cell(undefined, 2, [2.5, 2.6])],
      [cell('bf16', 2, [2.53, 2.6]), cell('bf16', 1, [2.41, 2.29]), cell('bf16', 3, [2.4, 2.4])],
    ).join('\n');
    expect(text).toContain(
      '| tinyshakespeare | alibi | 1 | 2.4000 | 2.4100 | +0.0100 | 2.3000 | 2.2900 | −0.0100 | yes |',
    );
    expect(text).toContain(
      '| tinyshakespeare | alibi | 2 | 2.5000 | 2.5300 | +0.0300 | 2.6000 | 2.6000 | +0.0000 | **no** |',
    );
    expect(text.indexOf('| alibi | 1 |')).toBeLessThan(text.indexOf('| alibi | 2 |'));
    expect(text).toContain('1 of 2 pairs (alibi; seeds 1, 2) are within 0.02');
    expect(text).toMatch(/largest \|difference\| is 0\.0300/);
    expect(text).toContain('No fp32 cell of the same plan for: tinyshakespeare alibi seed 3');
    // Differences +0.03 and +0.01 at 1x: mean 0.02, sd 0.01414, t(1) = 12.706 -> half-width 0.1271.
    expect(text).toContain('mean ± 95% interval at 1x / 16x: alibi 0.0200 ± 0.1271 / -0.0050 ± 0.0635 (2 seeds)');
    expect(text).toContain(
      "the fp32 cells' spread across seeds (max − min) at 1x / 16x: alibi 0.1000 / 0.3000 (2 seeds)",
    );
  });

  it('an fp32 cell of another plan (budget) is no partner', () => {
    const other = cell(undefined, 1, [2.4, 2.3]);
    other.config.budget = { ...other.config.budget, steps: 400 };
    expect(bf16Section([other], [cell('bf16', 1, [2.4, 2.3])]).join('\n')).toMatch(/No fp32 cell of the same plan/);
  });

  it('a length that cannot be evaluated is shown as such and not judged', () => {
    const b = cell('bf16', 1, [2.4, 2.3], 'none');
    b.result.evals[2] = { multiplier: 16, length: 2048, ok: false, reason: 'too long' };
    const text = bf16Section([cell(undefined, 1, [2.4, 2.3], 'none')], [b]).join('\n');
    expect(text).toContain('| 2.3000 | cannot evaluate | — | — |');
    expect(text).toContain('No pair has bits per byte at both lengths, so none is judged.');
  });

  it('a HypeError names an encoding that cannot train in bf16 at all', () => {
    expect(() => bf16PeChoice('no-such')).toThrow(HypeError);
  });
});
