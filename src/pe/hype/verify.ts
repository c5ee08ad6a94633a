/**
 * The maths of `hype verify` (the command is src/cli/verify.ts): the numerics of HyPE's concat route, measured, next to the figures of SPEC sections 3-4.
 *   1. overflow limits on x = |mu| (L - 1): predicted from the format maximum (numerics/overflow.ts) and measured by
 *      emulating the unguarded route;
 *   2. max abs error of the bias recovered through the concat route vs the exact fp64 sinh bias, for d in {64, 128},
 *      L = 128 .. 65,536 and mu L = 0.25 .. 16, operands in fp32, fp16, bf16, fp32 accumulation (how the route is
 *      emulated and sampled: pe/hype/precision.ts);
 *   3. the presets against ALiBi (H = 8, d = 64, L = 2048, window m D <= 20, SPEC section 3);
 *   4. split columns (SPEC section 8): plain (2 columns per pair) vs split (6) in bf16 and fp16, for the presets'
 *      extreme heads (recency at m = 1/2 and 1/256, paper) and SPEC's rows, d in {64, 128}, L up to 65,536;
 *   5. a check list: each SPEC figure, ours, their ratio, and whether they agree within a factor of two.
 */
import { floatFormat } from '../../numerics/float-formats.ts';
import { concatNanX, concatXLimit } from '../../numerics/overflow.ts';
import { presetSpec } from './encoding.ts';
import {
  DEFAULT_SAMPLING,
  NARROW_FORMATS,
  alibiDeviation,
  bestMuAlibiDeviation,
  measuredOverflowX,
  recoveredBiasError,
  sampleRows,
  type NarrowFormat,
  type Sampling,
} from './precision.ts';

export interface VerifySettings {
  dims: number[];
  lengths: number[];
  muL: number[];
  sampling: Sampling;
}

export const DEFAULT_VERIFY: VerifySettings = {
  dims: [64, 128],
  lengths: [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536],
  muL: [0.25, 0.5, 1, 2, 4, 8, 16],
  sampling: DEFAULT_SAMPLING,
};

interface LimitRow {
  format: NarrowFormat;
  d: number;
  predicted: { infUncentred: number; nanUncentred: number; infCentred: number };
  measured: { infUncentred: number; nanUncentred: number; infCentred: number; nanCentred: number };
}

interface ResolutionRow {
  d: number;
  length: number;
  muL: number;
  /** x = mu (L - 1), the largest |mu D| in the window. */
  x: number;
  sampledRows: number;
  formats: Record<NarrowFormat, { maxAbsError: number | null; k: number | null }>;
}

interface PresetRow {
  preset: string;
  note: string;
  perHead: {
    head: number;
    slope: number;
    mu: number | null;
    exact: number | null;
    fp32: number | null;
    fp16: number | null;
    bf16: number | null;
  }[];
}

interface CheckRow {
  claim: string;
  spec: string;
  measured: string;
  ratio: number;
  withinFactor2: boolean;
}

/** SPEC section 8's independent check: [format, L, slope m, mu L, plain error, split error] at d = 64, centred. */
export const SPEC8_TABLE: readonly (readonly ['bf16' | 'fp16', number, number, number, number, number])[] = [
  ['bf16', 512, 1 / 2, 0.5, 2.58, 7.1e-3],
  ['bf16', 2048, 1 / 2, 0.5, 11.2, 3.0e-2],
  ['bf16', 2048, 1 / 16, 2.0, 1.28, 4.0e-3],
  ['bf16', 2048, 1 / 256, 0.5, 9.7e-2, 2.8e-4],
  ['bf16', 8192, 1 / 2, 0.5, 44.5, 0.129],
  ['bf16', 8192, 1 / 256, 2.0, 0.335, 1.1e-3],
  ['fp16', 2048, 1 / 2, 0.5, 1.35, 4.9e-4],
  ['fp16', 8192, 1 / 2, 0.5, 5.7, 2.1e-3],
  ['fp16', 8192, 1 / 256, 2.0, 4.2e-2, 1.7e-5],
];

/** The split table's configurations: the presets' extreme heads (H = 8, L_extra = L) and SPEC's other rows. */
const SPLIT_CONFIGS: readonly { label: string; m: number | null; muL: number }[] = [
  { label: 'recency, m = 1/2 (steepest head)', m: 1 / 2, muL: 0.5 },
  { label: 'recency, m = 1/256 (flattest head)', m: 1 / 256, muL: 0.5 },
  { label: 'm = 1/16, mu L = 2', m: 1 / 16, muL: 2 },
  { label: 'm = 1/256, mu L = 2', m: 1 / 256, muL: 2 },
  { label: 'paper (tau = 1, mu L = 1)', m: null, muL: 1 },
];

type HalfFormat = 'bf16' | 'fp16';
const HALF_FORMATS: readonly HalfFormat[] = ['bf16', 'fp16'];

interface SplitRow {
  d: number;
  length: number;
  config: string;
  tau: number;
  mu: number;
  /** Max abs bias error (logits), null where the guard refuses the format. */
  formats: Record<HalfFormat, { plain: number | null; split: number | null }>;
}

export interface VerifyReport {
  settings: VerifySettings;
  limits: LimitRow[];
  resolution: ResolutionRow[];
  split: SplitRow[];
  alibi: { heads: number; d: number; length: number; window: number; presets: PresetRow[] };
  checks: CheckRow[];
  seconds: number;
}

function limitsTable(): LimitRow[] {
  const rows: LimitRow[] = [];
  for (const format of NARROW_FORMATS) {
    for (const d of [64, 128]) {
      const amp = Math.sqrt(d) / 2;
      const fmt = floatFormat(format);
      const unc = measuredOverflowX(format, d, false);
      const cen = measuredOverflowX(format, d, true);
      rows.push({
        format,
        d,
        predicted: {
          infUncentred: concatXLimit(fmt, amp, false).muMax,
          nanUncentred: concatNanX(fmt),
          infCentred: concatXLimit(fmt, amp, true).muMax,
        },
        measured: { infUncentred: unc.inf, nanUncentred: unc.nan, infCentred: cen.inf, nanCentred: cen.nan },
      });
    }
  }
  return rows;
}

function resolutionTable(s: VerifySettings, onRow?: () => void): ResolutionRow[] {
  const rows: ResolutionRow[] = [];
  for (const d of s.dims) {
    for (const L of s.lengths) {
      const sample = sampleRows(L, s.sampling);
      for (const muL of s.muL) {
        const mu = muL / L;
        const x = mu * (L - 1);
        const formats = {} as ResolutionRow['formats'];
        for (const format of NARROW_FORMATS) {
          const r = recoveredBiasError({ d, length: L, tau: 1, mu, format, rows: sample });
          const u = floatFormat(format).unitRoundoff;
          formats[format] = {
            maxAbsError: r.maxAbsError,
            k: r.maxAbsError === null ? null : r.maxAbsError / (u * Math.cosh(x)),
          };
        }
        rows.push({ d, length: L, muL, x, sampledRows: sample.length, formats });
        onRow?.();
      }
    }
  }
  return rows;
}

function alibiTable(sampling: Sampling) {
  const heads = 8;
  const d = 64;
  const length = 2048;
  const window = 20;
  const presets: PresetRow[] = [];
  const fromSpec = (preset: 'paper' | 'recency', curvature: number, note: string, label: string) => {
    const spec = presetSpec({ preset, heads, kvHeads: heads, headDim: d, lengthExtra: length, curvature });
    const perHead = alibiDeviation({ heads, d, length, window, tau: spec.tau, mu: spec.mu, sampling }).map((r) => ({
      head: r.head,
      slope: r.slope,
      mu: r.mu,
      exact: r.exact,
      ...r.formats,
    }));
    presets.push({ preset: label, note, perHead });
  };
  fromSpec('paper', 1, 'tau = +1, mu = 1/L: the opposite sign of ALiBi', 'paper');
  for (const c of [0.25, 0.5, 1]) {
    fromSpec(
      'recency',
      c,
      `mu = ${c}/L_extra for every head, tau = -m/mu`,
      `recency c=${c}${c === 0.5 ? ' (default)' : ''}`,
    );
  }
  const best = bestMuAlibiDeviation({ heads, d, length, window, sampling });
  const perHead: PresetRow['perHead'] = [];
  for (let h = 0; h < heads; h++) {
    const mine = best.filter((b) => b.head === h);
    const pick = (f: NarrowFormat) => mine.find((b) => b.format === f)!;
    perHead.push({
      head: h,
      slope: pick('fp32').slope,
      mu: null, // differs per format: see bestCurvatures
      exact: null,
      fp32: pick('fp32').deviation,
      fp16: pick('fp16').deviation,
      bf16: pick('bf16').deviation,
    });
  }
  presets.push({
    preset: 'best mu',
    note: 'per head and format, the best c = mu D_max on a grid 1e-3 .. 2 (how SPEC section 3 measured)',
    perHead,
  });
  return { heads, d, length, window, presets, bestCurvatures: best };
}

function range(values: (number | null)[]): [number, number] | null {
  const v = values.filter((x): x is number => x !== null && Number.isFinite(x));
  return v.length ? [Math.min(...v), Math.max(...v)] : null;
}

function median(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
}

function checksAgainstSpec(
  limits: LimitRow[],
  resolution: ResolutionRow[],
  alibi: ReturnType<typeof alibiTable>,
): CheckRow[] {
  const checks: CheckRow[] = [];
  const add = (claim: string, spec: number, measured: number, specText = spec.toPrecision(3)) => {
    const ratio = measured / spec;
    checks.push({
      claim,
      spec: specText,
      measured: measured.toPrecision(3),
      ratio,
      withinFactor2: ratio >= 0.5 && ratio <= 2,
    });
  };
  const lim = (f: NarrowFormat, d: number) => limits.find((r) => r.format === f && r.d === d)!.measured;
  add('fp16 operands overflow (inf), d = 64, uncentred: x', 9.7, lim('fp16', 64).infUncentred);
  add('fp16 operands overflow (inf), d = 128, uncentred: x', 9.36, lim('fp16', 128).infUncentred);
  add('fp16 NaN (inf - inf), uncentred: x', 11.09, lim('fp16', 64).nanUncentred);
  add('fp16 centred limit (fp32 accumulation), d = 64: x', 19.4, lim('fp16', 64).infCentred);
  add('bf16 limit, d = 64: x', 87, lim('bf16', 64).infUncentred, '~87');
  add('fp32 limit, d = 64: x', 87, lim('fp32', 64).infUncentred, '~87');
  for (const f of NARROW_FORMATS) {
    const ks = resolution.map((r) => r.formats[f].k).filter((k): k is number => k !== null);
    if (ks.length)
      add(`resolution constant k in err = k u cosh(mu L), ${f} (median over the grid)`, 1.2, median(ks), '~1.2');
  }
  const at = (f: NarrowFormat) =>
    resolution.find((r) => r.d === 64 && r.length === 2048 && r.muL === 1)?.formats[f].maxAbsError ?? null;
  const bf = at('bf16');
  if (bf !== null) add('bf16 recovered-bias error at mu = 1/L, L = 2048, d = 64 (logits)', 5.5e-3, bf, '~5.5e-3');
  const f32 = at('fp32');
  if (f32 !== null) add('fp32 recovered-bias error at mu = 1/L, L = 2048, d = 64 (logits)', 1e-7, f32, '~1e-7');
  // SPEC's fp32 figure matches operand rounding alone; fp32 products and sums round at the same u and add to it.
  const wide = recoveredBiasError({
    d: 64,
    length: 2048,
    tau: 1,
    mu: 1 / 2048,
    format: 'fp32',
    rows: sampleRows(2048, DEFAULT_SAMPLING),
    accumulate: 'fp64',
  }).maxAbsError;
  if (wide !== null)
    add('the same, fp32 operands but fp64 products and sums (operand rounding only)', 1e-7, wide, '~1e-7');
  const best = alibi.presets.find((p) => p.preset === 'best mu')!;
  const specRanges: Record<NarrowFormat, [number, number]> = {
    fp32: [1.2e-4, 3.7e-4],
    fp16: [0.04, 0.16],
    bf16: [0.14, 0.57],
  };
  for (const f of NARROW_FORMATS) {
    const r = range(best.perHead.map((h) => h[f]));
    if (!r) continue;
    add(`ALiBi vs recency (best mu), ${f}, smallest head deviation`, specRanges[f][0], r[0]);
    add(`ALiBi vs recency (best mu), ${f}, largest head deviation`, specRanges[f][1], r[1]);
  }
  return checks;
}

/** Plain and split max bias error of one configuration, both half formats. */
function plainAndSplit(d: number, L: number, tau: number, mu: number, sampling: Sampling): SplitRow['formats'] {
  const rows = sampleRows(L, sampling);
  const out = {} as SplitRow['formats'];
  for (const format of HALF_FORMATS) {
    const base = { d, length: L, tau, mu, format, rows };
    out[format] = {
      plain: recoveredBiasError({ ...base, columns: 'plain' }).maxAbsError,
      split: recoveredBiasError({ ...base, columns: 'split' }).maxAbsError,
    };
  }
  return out;
}

function splitTable(s: VerifySettings, onRow?: () => void): SplitRow[] {
  const rows: SplitRow[] = [];
  for (const d of s.dims) {
    for (const L of s.lengths.filter((x) => x >= 512)) {
      for (const c of SPLIT_CONFIGS) {
        const mu = c.muL / L;
        const tau = c.m === null ? 1 : -c.m / mu;
        rows.push({ d, length: L, config: c.label, tau, mu, formats: plainAndSplit(d, L, tau, mu, s.sampling) });
        onRow?.();
      }
    }
  }
  return rows;
}

/** SPEC section 8's rows, measured here at exactly its settings (d = 64), plain and split, for the check list. */
function spec8Checks(sampling: Sampling): CheckRow[] {
  const checks: CheckRow[] = [];
  for (const [format, L, m, muL, plain, split] of SPEC8_TABLE) {
    const mu = muL / L;
    const ours = plainAndSplit(64, L, -m / mu, mu, sampling)[format];
    for (const [layout, spec, measured] of [
      ['plain', plain, ours.plain],
      ['split', split, ours.split],
    ] as const) {
      if (measured === null) continue;
      const ratio = measured / spec;
      checks.push({
        claim: `SPEC 8: ${format} ${layout} columns, L = ${L}, m = 1/${1 / m}, mu L = ${muL}: max bias error`,
        spec: spec.toPrecision(3),
        measured: measured.toPrecision(3),
        ratio,
        withinFactor2: ratio >= 0.5 && ratio <= 2,
      });
    }
  }
  return checks;
}

export function runVerify(s: VerifySettings = DEFAULT_VERIFY, onRow?: () => void): VerifyReport {
  const start = Date.now();
  const limits = limitsTable();
  const resolution = resolutionTable(s, onRow);
  const split = splitTable(s, onRow);
  const alibi = alibiTable(s.sampling);
  const checks = [...checksAgainstSpec(limits, resolution, alibi), ...spec8Checks(s.sampling)];
  return { settings: s, limits, resolution, split, alibi, checks, seconds: (Date.now() - start) / 1000 };
}

const fmtNum = (x: number | null, digits = 2) =>
  x === null ? 'refused' : Number.isNaN(x) ? 'NaN' : x.toExponential(digits);

function pad(cells: string[], widths: number[]): string {
  return cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
}

export function formatReport(r: VerifyReport): string {
  const out: string[] = [];
  out.push('HyPE verify: the concat route in fp32, fp16 and bf16 against the exact fp64 bias (SPEC sections 3-4)');
  out.push('');
  out.push(
    '1. Overflow limits on x = |mu| (L - 1), tau = 1, fp32 accumulation: predicted from the format max / measured',
  );
  out.push('   by emulating the route without the guard (L = 1024). The library refuses beyond the predicted limit.');
  const lw = [6, 5, 19, 19, 19, 14];
  out.push('   ' + pad(['format', 'd', 'inf, uncentred', 'NaN, uncentred', 'inf, centred', 'NaN, centred'], lw));
  for (const l of r.limits) {
    const pm = (p: number, m: number) => `${p.toFixed(2)} / ${m.toFixed(2)}`;
    out.push(
      '   ' +
        pad(
          [
            l.format,
            String(l.d),
            pm(l.predicted.infUncentred, l.measured.infUncentred),
            pm(l.predicted.nanUncentred, l.measured.nanUncentred),
            pm(l.predicted.infCentred, l.measured.infCentred),
            l.measured.nanCentred.toFixed(2),
          ],
          lw,
        ),
    );
  }
  out.push('');
  out.push(
    '2. Max abs error of the recovered bias (logits), tau = 1, centred positions, causal window; k = error / (u cosh x).',
  );
  out.push(
    `   Every causal pair while L(L+1)/2 <= ${r.settings.sampling.fullPairs}; beyond, the last 32 rows + ${r.settings.sampling.rows} evenly spaced rows, all keys each.`,
  );
  const rw = [4, 6, 5, 6, 5, 9, 5, 9, 5, 9, 5];
  out.push('   ' + pad(['d', 'L', 'mu L', 'x', 'rows', 'fp32', 'k', 'fp16', 'k', 'bf16', 'k'], rw));
  for (const row of r.resolution) {
    const cells = [String(row.d), String(row.length), String(row.muL), row.x.toFixed(2), String(row.sampledRows)];
    for (const f of NARROW_FORMATS) {
      const c = row.formats[f];
      cells.push(fmtNum(c.maxAbsError, 1), c.k === null ? '-' : c.k.toFixed(2));
    }
    out.push('   ' + pad(cells, rw));
  }
  out.push('');
  const a = r.alibi;
  out.push(
    `3. Presets vs ALiBi (-m_h D): max |a_HyPE - a_ALiBi| per head over the causal window m D <= ${a.window}, H = ${a.heads}, d = ${a.d}, L = ${a.length}.`,
  );
  out.push(
    '   "exact" is the fp64 truncation (m/mu)(sinh(mu D) - mu D); the formats add rounding. min .. max over heads.',
  );
  const aw = [24, 21, 21, 21, 21];
  out.push('   ' + pad(['preset', 'exact', 'fp32', 'fp16', 'bf16'], aw));
  for (const p of a.presets) {
    const span = (vals: (number | null)[]) => {
      const rr = range(vals);
      if (!rr) return vals.every((v) => v === null) ? 'refused' : '-';
      const refused = vals.filter((v) => v === null).length;
      return `${rr[0].toExponential(1)} .. ${rr[1].toExponential(1)}${refused ? ` (${refused} refused)` : ''}`;
    };
    out.push(
      '   ' +
        pad(
          [
            p.preset,
            p.preset === 'best mu' ? '-' : span(p.perHead.map((h) => h.exact)),
            span(p.perHead.map((h) => h.fp32)),
            span(p.perHead.map((h) => h.fp16)),
            span(p.perHead.map((h) => h.bf16)),
          ],
          aw,
        ),
    );
  }
  out.push('');
  out.push(
    '4. Split columns (SPEC section 8): max abs bias error (logits), plain (2 columns per pair) vs split (6: hi/lo',
  );
  out.push(
    '   parts), operands in bf16 / fp16, products exact, fp32 accumulation, centred; tau = -m / mu (paper: tau = 1).',
  );
  const sw = [4, 6, 35, 9, 9, 9, 7, 9, 9, 7];
  out.push('   ' + pad(['d', 'L', 'configuration', '|tau|', 'bf16', 'split', 'gain', 'fp16', 'split', 'gain'], sw));
  for (const row of r.split) {
    const cells = [String(row.d), String(row.length), row.config, Math.abs(row.tau).toPrecision(3)];
    for (const f of HALF_FORMATS) {
      const { plain, split } = row.formats[f];
      const gain = plain !== null && split !== null && split > 0 ? `${(plain / split).toFixed(0)}x` : '-';
      cells.push(fmtNum(plain, 1), fmtNum(split, 1), gain);
    }
    out.push('   ' + pad(cells, sw));
  }
  out.push('');
  out.push('5. Against SPEC.md (agreement within a factor of two):');
  const cw = [76, 9, 9, 6, 4];
  out.push('   ' + pad(['claim', 'SPEC', 'measured', 'ratio', 'ok'], cw));
  for (const c of r.checks) {
    out.push('   ' + pad([c.claim, c.spec, c.measured, c.ratio.toFixed(2), c.withinFactor2 ? 'yes' : 'NO'], cw));
  }
  out.push('');
  out.push(`(${r.seconds.toFixed(1)} s)`);
  return out.join('\n');
}
