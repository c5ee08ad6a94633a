/**
 * The second round's comparisons at a glance: a forest plot of paired differences (one row per comparison "a vs b",
 * one panel per measure), each the mean over shared seeds with its 95% t interval, so (1) and (3) of the round's
 * questions read off one picture. Every panel is oriented the same way: left of 0 means a is better (bits per byte
 * and error rates as a - b, accuracies as b - a). A comparison with fewer than two shared seeds has no interval and
 * is left out of its panel (the text says so). Input: the study cells (round-two-report.ts's ReportInput).
 */
import type { TopLevelSpec } from 'vega-lite';
import type { Sample } from './compare.ts';
import { meanInterval } from './stats.ts';

export interface ForestMeasure {
  /** Panel title, e.g. "lm tinyshakespeare 16x (bits per byte)". */
  name: string;
  /** The samples of an encoding for this measure, one per seed. */
  samples(encoding: string): Sample[];
  lowerBetter: boolean;
}

export interface ForestRow {
  comparison: string;
  measure: string;
  /** Mean paired difference, oriented so that negative = the first encoding better. */
  mean: number;
  lo: number;
  hi: number;
  seeds: number;
  verdict: 'first better' | 'first worse' | 'no difference detected';
}

/** The rows of the forest plot: every comparison and measure with at least two shared seeds. */
export function forestRows(pairs: readonly (readonly [string, string])[], measures: ForestMeasure[]): ForestRow[] {
  const rows: ForestRow[] = [];
  for (const [a, b] of pairs) {
    for (const m of measures) {
      const sb = m.samples(b);
      const sign = m.lowerBetter ? 1 : -1;
      const diffs = m.samples(a).flatMap((x) => {
        const y = sb.find((z) => z.seed === x.seed);
        return y ? [sign * (x.value - y.value)] : [];
      });
      if (diffs.length < 2) continue;
      const { mean, halfWidth } = meanInterval(diffs);
      rows.push({
        comparison: `${a} vs ${b}`,
        measure: m.name,
        mean,
        lo: mean - halfWidth,
        hi: mean + halfWidth,
        seeds: diffs.length,
        verdict:
          mean + halfWidth < 0 ? 'first better' : mean - halfWidth > 0 ? 'first worse' : 'no difference detected',
      });
    }
  }
  return rows;
}

/** The vega-lite spec of the forest plot (one panel per measure, each with its own x scale). */
export function forestSpec(rows: ForestRow[], comparisons: string[], measures: string[], title: string): TopLevelSpec {
  const y = {
    field: 'comparison',
    type: 'nominal' as const,
    title: null,
    sort: comparisons,
    axis: { labelLimit: 260 },
  };
  const x = { type: 'quantitative' as const, title: 'paired difference (negative: first encoding better)' };
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: title,
      subtitle: [
        'mean paired difference over shared seeds with its 95% t interval; bits per byte and error as a - b,',
        'accuracy as b - a, so left of 0 is always "a better"; rows with fewer than 2 shared seeds are left out',
      ],
      anchor: 'start',
    },
    data: { values: rows },
    facet: { field: 'measure', type: 'nominal', title: null, sort: measures },
    columns: 3,
    resolve: { scale: { x: 'independent' } },
    spec: {
      width: 220,
      height: 16 * comparisons.length,
      layer: [
        {
          mark: { type: 'rule', color: '#888', strokeDash: [4, 3] },
          encoding: { x: { datum: 0, type: 'quantitative' } },
        },
        {
          mark: { type: 'rule', strokeWidth: 1.5 },
          encoding: { y, x: { ...x, field: 'lo' }, x2: { field: 'hi' }, color: verdictColour },
        },
        {
          mark: { type: 'point', filled: true, size: 40 },
          encoding: { y, x: { ...x, field: 'mean' }, color: verdictColour },
        },
      ],
    },
  } as TopLevelSpec;
}

const verdictColour = {
  field: 'verdict',
  type: 'nominal' as const,
  title: null,
  legend: { labelLimit: 200 },
  scale: {
    domain: ['first better', 'no difference detected', 'first worse'],
    range: ['#1b7837', '#777777', '#c51b7d'],
  },
};
