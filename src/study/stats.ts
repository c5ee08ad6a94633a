/** Summary statistics for results over seeds: mean and a two-sided 95% Student-t confidence interval. */

// Two-sided 95% quantiles t_{0.975, df} for df = 1..30; beyond that the normal 1.96 is within 2%.
const T975 = [
  12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.145, 2.131, 2.12, 2.11,
  2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06, 2.056, 2.052, 2.048, 2.045, 2.042,
];

export interface MeanInterval {
  mean: number;
  /** Half-width of the 95% interval (NaN with a single value: no spread can be estimated). */
  halfWidth: number;
  n: number;
}

export function meanInterval(values: readonly number[]): MeanInterval {
  const n = values.length;
  if (n === 0) return { mean: NaN, halfWidth: NaN, n };
  const mean = values.reduce((s, x) => s + x, 0) / n;
  if (n === 1) return { mean, halfWidth: NaN, n };
  const variance = values.reduce((s, x) => s + (x - mean) ** 2, 0) / (n - 1);
  const t = n - 1 <= T975.length ? T975[n - 2]! : 1.96;
  return { mean, halfWidth: (t * Math.sqrt(variance)) / Math.sqrt(n), n };
}

/** "1.234 ± 0.056" (or just the mean when the interval is undefined), with `digits` decimals. */
export function formatInterval(m: MeanInterval, digits = 3): string {
  if (!Number.isFinite(m.mean)) return String(m.mean);
  return Number.isNaN(m.halfWidth)
    ? m.mean.toFixed(digits)
    : `${m.mean.toFixed(digits)} ± ${m.halfWidth.toFixed(digits)}`;
}
