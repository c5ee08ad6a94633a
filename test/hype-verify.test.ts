/**
 * The measurements behind `hype verify`: the emulated concat route overflows exactly where the closed-form limits
 * say, its rounding error sits at the unit-roundoff scale SPEC section 4 predicts, and the command's report holds
 * the tables and the SPEC comparison.
 */
import { describe, expect, it } from 'vitest';
import { formatReport, runVerify } from '../src/pe/hype/verify.ts';
import { BF16, FP16, FP32 } from '../src/numerics/float-formats.ts';
import { measuredOverflowX, recoveredBiasError, sampleRows } from '../src/pe/hype/precision.ts';
import { concatXLimit } from '../src/numerics/overflow.ts';

describe('concat-route numerics', () => {
  it('the emulated route first overflows exactly at the predicted limits', () => {
    for (const [name, fmt] of [
      ['fp16', FP16],
      ['bf16', BF16],
      ['fp32', FP32],
    ] as const) {
      for (const centred of [false, true]) {
        const predicted = concatXLimit(fmt, 4, centred).muMax;
        const measured = measuredOverflowX(name, 64, centred, 256).inf;
        expect(Math.abs(measured / predicted - 1)).toBeLessThan(1e-3);
      }
    }
  });

  it('recovered-bias error is k u cosh(x) with k of order one (fp16, bf16), and refusals come back as null', () => {
    const L = 256;
    const rows = sampleRows(L, { fullPairs: 1e9, rows: 2 });
    for (const [format, u] of [
      ['fp16', 2 ** -11],
      ['bf16', 2 ** -8],
    ] as const) {
      for (const muL of [1, 4]) {
        const x = (muL * (L - 1)) / L;
        const r = recoveredBiasError({ d: 64, length: L, tau: 1, mu: muL / L, format, rows });
        const k = r.maxAbsError! / (u * Math.cosh(x));
        expect(k).toBeGreaterThan(0.3);
        expect(k).toBeLessThan(3);
        expect(r.pairs).toBe((L * (L + 1)) / 2);
      }
    }
    const refused = recoveredBiasError({ d: 64, length: L, tau: 1, mu: 12 / L, format: 'fp16', shift: 'none', rows });
    expect(refused.maxAbsError).toBeNull();
    expect(refused.refused).toContain('overflow fp16');
    const centred = recoveredBiasError({ d: 64, length: L, tau: 1, mu: 12 / L, format: 'fp16', rows });
    expect(centred.maxAbsError).toBeGreaterThan(0);
  });

  it('samples the last 32 rows plus evenly spaced ones when a window is too big to visit whole', () => {
    const rows = sampleRows(65536, { fullPairs: 1000, rows: 4 });
    expect(rows).toContain(0);
    expect(rows).toContain(65535);
    expect(rows).toContain(65504);
    expect(rows.length).toBe(4 + 32 - 1);
  });
});

describe('hype verify report', () => {
  it('holds the limits, the error grid, the ALiBi comparison and the SPEC checks', () => {
    const report = runVerify({ dims: [64], lengths: [128], muL: [0.5, 16], sampling: { fullPairs: 0, rows: 4 } });
    expect(report.resolution.length).toBe(2);
    expect(report.limits.length).toBe(6);
    expect(report.alibi.presets.map((p) => p.preset)).toEqual([
      'paper',
      'recency c=0.25',
      'recency c=0.5 (default)',
      'recency c=1',
      'best mu',
    ]);
    const text = formatReport(report);
    expect(text).toContain('1. Overflow limits');
    expect(text).toContain('4. Split columns');
    expect(text).toContain('5. Against SPEC.md');
    // lengths [128] are below the split table's 512, so its rows are empty, but SPEC 8's checks are always measured.
    expect(report.split.length).toBe(0);
    const spec8 = report.checks.filter((c) => c.claim.startsWith('SPEC 8:'));
    expect(spec8.length).toBe(18);
    expect(spec8.every((c) => c.withinFactor2)).toBe(true);
    const fp16Limit = report.checks.find((c) => c.claim.startsWith('fp16 operands overflow (inf), d = 64'))!;
    expect(fp16Limit.withinFactor2).toBe(true);
    expect(JSON.parse(JSON.stringify(report)).checks.length).toBe(report.checks.length);
  });
});
