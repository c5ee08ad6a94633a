/**
 * The study's second round (issue 19): the new study encodings join the full plan without changing a stored cell's
 * key (every cell under results/ is still found by the plan that made it), and the position report every cell now
 * stores (PositionalEncoding.report through the model's blocks).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { alibiSlopes } from '../src/pe/alibi-slopes.ts';
import { getEncodingFactory } from '../src/pe/registry.ts';
import { positionReport, startPositionReport } from '../src/study/cell.ts';
import { flipflopConfigs, lmConfigs, precisionConfigs, recallConfigs } from '../src/study/experiments.ts';
import {
  ALL_ENCODINGS,
  fullPlan,
  peChoice,
  ROUND_TWO_ENCODINGS,
  STUDY_ENCODINGS,
  type StudyPlan,
} from '../src/study/plan.ts';
import { cellKey } from '../src/study/store.ts';

function plannedKeys(plan: StudyPlan, recallSeeds = plan.seeds): Map<string, Set<string>> {
  const e = ALL_ENCODINGS;
  return new Map([
    // The lm cells in fp32 and, made by `--precision bf16`, in bf16 mixed precision.
    [
      'lm',
      new Set(
        [plan, { ...plan, lm: { ...plan.lm, precision: 'bf16' as const } }].flatMap((p) =>
          lmConfigs(p, e).map(cellKey),
        ),
      ),
    ],
    ['flipflop', new Set(flipflopConfigs(plan, e).map(cellKey))],
    ['recall', new Set(recallConfigs({ ...plan, seeds: recallSeeds }, e).map(cellKey))],
    ['precision', new Set(precisionConfigs(plan, e).map(cellKey))],
  ]);
}

describe('study plan, second round', () => {
  it('the new encodings are study encodings of the full plan, each a valid registry choice', () => {
    for (const name of ROUND_TWO_ENCODINGS) {
      expect(ALL_ENCODINGS).toContain(name);
      const pe = peChoice(name);
      getEncodingFactory(pe.name).checkOptions?.(pe.options);
    }
    expect(fullPlan().encodings).toEqual(ALL_ENCODINGS);
    expect(STUDY_ENCODINGS['hype-sc']!.options).toMatchObject({ parametrisation: 'slope-curvature', train: 'both' });
  });

  it('every stored cell under results/ is still found by the plan that made it (its key is unchanged)', () => {
    let found = 0;
    for (const set of ['full', 'small']) {
      const metaPath = join('results', set, 'study.json');
      if (!existsSync(metaPath)) continue;
      const stored = (JSON.parse(readFileSync(metaPath, 'utf8')) as { plan: StudyPlan }).plan;
      // The full set was made by fullPlan() (less the new encodings); the small one by its recorded plan, run once
      // per corpus (study.json keeps the last invocation's).
      if (set === 'full') expect({ ...fullPlan(), encodings: stored.encodings }).toEqual(stored);
      const small = { ...stored, lm: { ...stored.lm, corpora: ['tinyshakespeare', 'wikitext2'] } } as StudyPlan;
      // The full set's recall also ran seeds 4 and 5 (`hype study recall --seeds 5`).
      const keys = set === 'full' ? plannedKeys(fullPlan(), [1, 2, 3, 4, 5]) : plannedKeys(small);
      for (const [experiment, planned] of keys) {
        const dir = join('results', set, experiment, 'cells');
        if (!existsSync(dir)) continue;
        for (const f of readdirSync(dir).filter((n) => n.endsWith('.json'))) {
          const rec = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { key: string };
          expect(planned.has(rec.key), `${set}/${experiment}/${f}`).toBe(true);
          found++;
        }
      }
    }
    expect(found).toBeGreaterThan(300); // 222 full + 102 small cells at the time of writing
  });

  it('the new encodings are new cells: no stored key is theirs', () => {
    const plan = fullPlan();
    const stored = new Set(
      lmConfigs(
        plan,
        ALL_ENCODINGS.filter((e) => !ROUND_TWO_ENCODINGS.includes(e)),
      ).map(cellKey),
    );
    const fresh = lmConfigs(plan, ROUND_TWO_ENCODINGS).map(cellKey);
    expect(fresh).toHaveLength(ROUND_TWO_ENCODINGS.length * 2 * 3);
    for (const k of fresh) expect(stored.has(k)).toBe(false);
    expect(new Set(fresh).size).toBe(fresh.length);
  });
});

describe('position report', () => {
  const backend = new ReferenceBackend();
  const model = (pe: string, options: Record<string, unknown> = {}) =>
    new Transformer(
      parseModelConfig({
        width: 16,
        layers: 2,
        heads: 2,
        mlpWidth: 32,
        trainLength: 16,
        dtype: 'float64',
        seed: 3,
        pe: { name: pe, options },
      }),
      backend,
    );
  const tokens = Int32Array.from({ length: 16 }, (_, i) => (i * 37) % 256);

  it('alibi-learned: each block its slopes exp(logSlope); none and fixed alibi: nothing', () => {
    const m = model('alibi-learned');
    const r = positionReport(m)!;
    expect(Object.keys(r)).toEqual(['blocks.0.attn.pe.slope', 'blocks.1.attn.pe.slope']);
    const logSlope = m.parameters().find((p) => p.name === 'blocks.1.attn.pe.alibi.logSlope')!;
    expect(r['blocks.1.attn.pe.slope']).toEqual(Array.from(logSlope.data, Math.exp));
    expect(positionReport(model('none'))).toBeUndefined();
    expect(positionReport(model('alibi'))).toBeUndefined();
  });

  it('hype slope-curvature: tau, mu, slope = -tau mu and curvature mu * L_extra (0.5 at the start)', () => {
    const r = positionReport(model('hype', { preset: 'learned', parametrisation: 'slope-curvature' }))!;
    expect(r['blocks.0.attn.pe.curvature']).toEqual([0.5, 0.5]);
    expect(r['blocks.0.attn.pe.slope']!.map((m) => m.toFixed(12))).toEqual(
      Array.from(alibiSlopes(2), (m) => m.toFixed(12)),
    );
  });

  it('hype-gated: gate statistics of the passes since startPositionReport (s = 1 at init: mean 1, spread 0)', () => {
    const m = model('hype-gated');
    m.forward(tokens, null, 1, 16);
    startPositionReport(m);
    expect(positionReport(m)!['blocks.0.attn.pe.gate.sMean']).toEqual([]); // nothing since the start
    m.forward(tokens, null, 1, 16);
    const r = positionReport(m)!;
    for (const h of [0, 1]) {
      expect(r['blocks.1.attn.pe.gate.sMean']![h]).toBeCloseTo(1, 14);
      expect(r['blocks.1.attn.pe.gate.sStd']![h]).toBeLessThan(1e-7); // sqrt of a rounding-level variance
    }
    expect(r['blocks.0.attn.pe.gate.wNorm']).toEqual([0, 0]);
    expect(Object.keys(r)).toContain('blocks.0.attn.pe.curvature'); // HyPE's own report comes along
  });

  it('fox: gate weight norms and biases per KV head', () => {
    const r = positionReport(model('fox'))!;
    expect(r['blocks.0.attn.pe.gate.b']).toEqual([0, 0]);
    expect(r['blocks.0.attn.pe.gate.wNorm']!.every((n) => n > 0)).toBe(true);
  });
});
