/**
 * How the study report compares two encodings' measurements: per-seed samples, paired 95% intervals (compareSamples),
 * the sentence that states a comparison and its verdict, and the binomial test of "learned the task". Pure functions
 * of numbers, shared by the report's sections (report.ts, round-two-report.ts, vision-report.ts).
 */
import { formatInterval, meanInterval } from './stats.ts';

export const fmt = (x: number, d = 3) => x.toFixed(d);
/** A signed difference; tiny ones in exponent form so they do not print as a misleading 0.000. */
const fmtSmall = (x: number) => (x !== 0 && Math.abs(x) < 5e-4 ? x.toExponential(1) : fmt(x));
const signed = (x: number) => (x >= 0 ? '+' : '') + (x !== 0 && Math.abs(x) < 5e-4 ? x.toExponential(1) : fmt(x));

/** "mean ± half-width (n seeds)" or "mean (1 seed)". */
function describe(values: readonly number[], digits = 3): string {
  const m = meanInterval(values);
  return `${formatInterval(m, digits)} (${m.n} seed${m.n === 1 ? '' : 's'})`;
}

export type Verdict = 'lower' | 'higher' | 'overlap' | 'single-seed' | 'missing';

/**
 * How `a` stands against `b`: lower/higher when their 95% intervals do not overlap, 'overlap' when they do (no
 * difference detected at this number of seeds), 'single-seed' when either has one value (no interval exists).
 */
export function compareValues(a: readonly number[], b: readonly number[]): Verdict {
  if (a.length === 0 || b.length === 0) return 'missing';
  if (a.length < 2 || b.length < 2) return 'single-seed';
  const ma = meanInterval(a);
  const mb = meanInterval(b);
  if (ma.mean + ma.halfWidth < mb.mean - mb.halfWidth) return 'lower';
  if (ma.mean - ma.halfWidth > mb.mean + mb.halfWidth) return 'higher';
  return 'overlap';
}

/** One measurement of one seed. */
export interface Sample {
  seed: number;
  value: number;
}

/**
 * Compares a with b. When they share two or more seeds, the comparison is PAIRED over those seeds: cells of one seed
 * share the initial weights and the training batches (the seed drives both), so the per-seed differences remove
 * most of the seed-to-seed spread; lower/higher then mean that the 95% interval of the mean difference excludes 0.
 * Otherwise it falls back to compareValues (non-overlapping intervals).
 */
export function compareSamples(a: readonly Sample[], b: readonly Sample[]): { verdict: Verdict; paired: boolean } {
  const diffs = pairedDiffs(a, b);
  if (diffs.length < 2) return { verdict: compareValues(values(a), values(b)), paired: false };
  const m = meanInterval(diffs);
  const verdict = m.mean - m.halfWidth > 0 ? 'higher' : m.mean + m.halfWidth < 0 ? 'lower' : 'overlap';
  return { verdict, paired: true };
}

export const values = (xs: readonly Sample[]) => xs.map((x) => x.value);
/** a - b for every seed both have (the seeds they share). */
function pairedDiffs(a: readonly Sample[], b: readonly Sample[]): number[] {
  const out: number[] = [];
  for (const x of a) {
    const y = b.find((z) => z.seed === x.seed);
    if (y) out.push(x.value - y.value);
  }
  return out;
}

/** One sentence comparing a metric of two encodings; `lowerBetter` picks the words. */
export function sentence(
  nameA: string,
  a: Sample[],
  nameB: string,
  b: Sample[],
  metric: string,
  lowerBetter: boolean,
): string {
  const { verdict: v, paired } = compareSamples(a, b);
  if (v === 'missing') return `${metric}: no results for ${a.length === 0 ? nameA : nameB} yet.`;
  const diff = meanInterval(values(a)).mean - meanInterval(values(b)).mean;
  const base = `${metric}: ${nameA} ${describe(values(a))} vs ${nameB} ${describe(values(b))}`;
  if (v === 'single-seed') {
    return `${base} (difference ${signed(diff)}); one seed only, so there is no interval and this difference is not evidence either way.`;
  }
  if (paired) {
    const d = meanInterval(pairedDiffs(a, b));
    const what = `paired difference over ${d.n} seeds ${signed(d.mean)} ± ${fmtSmall(d.halfWidth)}`;
    if (v === 'overlap') return `${base}; ${what}: its 95% interval includes 0, so no difference is detected.`;
    return `${base}; ${what}: its 95% interval excludes 0, so ${nameA} is ${(v === 'lower') === lowerBetter ? 'better' : 'worse'}.`;
  }
  if (v === 'overlap') {
    return `${base} (difference ${signed(diff)}); the 95% intervals overlap, so no difference is detected at this number of seeds.`;
  }
  const better = (v === 'lower') === lowerBetter;
  return `${base} (difference ${signed(diff)}); the 95% intervals do not overlap: ${nameA} is ${better ? 'better' : 'worse'}.`;
}

/**
 * Whether `correct` of `graded` beats guessing at rate `chance` by more than a 95% binomial margin (normal
 * approximation, one-sided z = 1.645). A cell that does not has not learned the task at its budget.
 */
export function aboveChance(correct: number, graded: number, chance: number): boolean {
  if (graded === 0) return false;
  return correct / graded > chance + 1.645 * Math.sqrt((chance * (1 - chance)) / graded);
}
