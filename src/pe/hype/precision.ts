/**
 * Measurements behind `hype verify`: how well the concat route recovers HyPE's bias when its operands are stored in
 * fp32, fp16 or bf16, where it overflows, and how close the presets come to ALiBi.
 *
 * The emulated route: eta^Q and eta^K come from the library (buildEta, so the overflow guard and the default
 * centring apply), are rounded to the operand format, multiplied in fp32 (exact for fp16/bf16 operands: 22 and 16
 * significant bits fit fp32's 24), summed in fp32, and scaled by fp32(1/sqrt(d)), as a fused kernel with fp32
 * accumulation does. Q and K content columns are zero, so they add exact zeros and are skipped: the figures isolate
 * the position bias (with content, the usual dot-product rounding comes on top). The error is against the exact
 * fp64 bias tau sinh(mu D).
 *
 * Sampling: every causal pair (l <= i) is visited while L(L+1)/2 <= `fullPairs`; beyond that, the last 32 query
 * rows (which between them see every distance D, the largest included) plus `rows` evenly spaced rows (first and
 * last included), each with all its keys. The maximum over a sample is a lower bound of the true maximum; since
 * the error grows with D like cosh(mu D), and the last rows contain every D, it is a close one.
 */
import { HypeError } from '../../errors.ts';
import { alibiSlopes } from '../alibi-slopes.ts';
import { buildEta, type HypeShift, type HypeSpec } from './core.ts';
import { floatFormat, roundTo, type FloatFormat, type FloatFormatName } from '../../numerics/float-formats.ts';
import { expandColumns } from '../../numerics/split-columns.ts';

export type NarrowFormat = Extract<FloatFormatName, 'fp32' | 'fp16' | 'bf16'>;
export const NARROW_FORMATS: readonly NarrowFormat[] = ['fp32', 'fp16', 'bf16'];

export interface Sampling {
  fullPairs: number;
  rows: number;
}

export const DEFAULT_SAMPLING: Sampling = { fullPairs: 2_200_000, rows: 64 };

/** Query rows to visit for a causal L x L window (see the module comment). */
export function sampleRows(length: number, sampling: Sampling): number[] {
  if ((length * (length + 1)) / 2 <= sampling.fullPairs) return Array.from({ length }, (_, i) => i);
  const rows = new Set<number>();
  for (let j = 0; j < sampling.rows; j++) rows.add(Math.round((j * (length - 1)) / (sampling.rows - 1)));
  for (let j = 1; j <= 32; j++) rows.add(length - j);
  return [...rows].sort((a, b) => a - b);
}

function oneHead(d: number, tau: number, mu: number): HypeSpec {
  return {
    heads: 1,
    kvHeads: 1,
    headDim: d,
    grid: [],
    termAxis: [0],
    tau: Float64Array.from([tau]),
    mu: Float64Array.from([mu]),
  };
}

function roundEach(fmt: FloatFormat, src: Float64Array, stride: number, offset: number, n: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = roundTo(fmt, src[i * stride + offset]!);
  return out;
}

export interface RecoveredBias {
  /** Largest |recovered - exact| over the visited pairs, or null when the guard refused the configuration. */
  maxAbsError: number | null;
  /** The guard's message when refused. */
  refused?: string;
  pairs: number;
}

/**
 * Max abs error of the bias recovered through the concat route, causal window of a length-L sequence, one head.
 * `maxDistance` limits the window to D <= maxDistance (default: all); `reference(D)` replaces the exact sinh bias
 * as the target (the ALiBi comparison passes -m D).
 */
export function recoveredBiasError(o: {
  d: number;
  length: number;
  tau: number;
  mu: number;
  format: NarrowFormat;
  shift?: HypeShift;
  rows: readonly number[];
  maxDistance?: number;
  reference?: (D: number) => number;
  /** The accumulator: fp32 (default, as fused kernels) or fp64 (to separate operand rounding from the rest). */
  accumulate?: 'fp32' | 'fp64';
  /** 'plain' (default): 2 operand columns; 'split': 6, hi/lo in the format (SPEC section 8, split-columns.ts). */
  columns?: 'plain' | 'split';
}): RecoveredBias {
  const { d, length: L, tau, mu } = o;
  const fmt = floatFormat(o.format);
  let eta;
  try {
    eta = buildEta(oneHead(d, tau, mu), { lq: L, lk: L, shift: o.shift ?? 'centre' }, fmt);
  } catch (e) {
    if (e instanceof HypeError && e.code === 'overflow') return { maxAbsError: null, refused: e.message, pairs: 0 };
    throw e;
  }
  // Operand columns per row: 2 plain, or 6 split ([hi, hi, lo] per query column, [hi, lo, hi] per key column).
  const split = o.columns === 'split' ? o.format : null;
  const w = split ? 6 : 2;
  const qCols = expandColumns(eta.etaQ, L, 2, 'query', split);
  const kCols = expandColumns(eta.etaK, L, 2, 'key', split);
  const q = Array.from({ length: w }, (_, c) => roundEach(fmt, qCols, w, c, L));
  const k = Array.from({ length: w }, (_, c) => roundEach(fmt, kCols, w, c, L));
  const maxD = Math.min(o.maxDistance ?? L - 1, L - 1);
  const target = new Float64Array(maxD + 1);
  for (let D = 0; D <= maxD; D++) target[D] = o.reference ? o.reference(D) : tau * Math.sinh(mu * D);
  const wide = o.accumulate === 'fp64';
  const scale = wide ? 1 / Math.sqrt(d) : Math.fround(1 / Math.sqrt(d));
  const f = wide ? (v: number) => v : Math.fround;
  let worst = 0;
  let pairs = 0;
  const qi = new Float64Array(w);
  for (const i of o.rows) {
    for (let c = 0; c < w; c++) qi[c] = q[c]![i]!;
    for (let l = Math.max(0, i - maxD); l <= i; l++) {
      // Products of two fp16/bf16 values are exact in fp32; the sum runs left to right in the accumulator.
      let dot = f(qi[0]! * k[0]![l]!);
      for (let c = 1; c < w; c++) dot = f(dot + f(qi[c]! * k[c]![l]!));
      const logit = f(dot * scale);
      const err = Math.abs(logit - target[i - l]!);
      // NaN compares false: catch it explicitly (the guard should have made this impossible).
      if (!(err <= worst)) worst = Number.isNaN(err) ? NaN : err;
      if (Number.isNaN(worst)) return { maxAbsError: NaN, pairs };
    }
    pairs += i - Math.max(0, i - maxD) + 1;
  }
  return { maxAbsError: worst, pairs };
}

/**
 * The smallest x = |mu| (L - 1) at which the UNGUARDED concat route (eta built from the formulas, rounded to the
 * format, fp32 products and sum) first gives a non-finite logit, and the first NaN, found by bisection over the
 * rows and columns that hold the extreme positions. This measures what the guard prevents.
 */
export function measuredOverflowX(
  format: NarrowFormat,
  d: number,
  centred: boolean,
  length = 1024,
): { inf: number; nan: number } {
  const fmt = floatFormat(format);
  const L = length;
  const c = centred ? (L - 1) / 2 : 0;
  const amp = Math.sqrt(d) / 2;
  const f = Math.fround;
  const edge = [0, 1, Math.floor(L / 2), L - 2, L - 1];
  const status = (x: number): { bad: boolean; nan: boolean } => {
    const mu = x / (L - 1);
    const q0 = new Float64Array(L);
    const q1 = new Float64Array(L);
    const k0 = new Float64Array(L);
    const k1 = new Float64Array(L);
    for (let n = 0; n < L; n++) {
      const p = n - c;
      q0[n] = roundTo(fmt, amp * Math.exp(-mu * p));
      q1[n] = roundTo(fmt, amp * Math.exp(mu * p));
      k0[n] = roundTo(fmt, -Math.exp(mu * p));
      k1[n] = roundTo(fmt, Math.exp(-mu * p));
    }
    let bad = false;
    let nan = false;
    const visit = (i: number, l: number) => {
      const s = f(f(q0[i]! * k0[l]!) + f(q1[i]! * k1[l]!));
      if (!Number.isFinite(s)) bad = true;
      if (Number.isNaN(s)) nan = true;
    };
    for (const i of edge) for (let l = 0; l < L; l++) visit(i, l);
    for (const l of edge) for (let i = 0; i < L; i++) visit(i, l);
    return { bad, nan };
  };
  const bisect = (pred: (x: number) => boolean) => {
    let lo = 0;
    let hi = 400;
    for (let it = 0; it < 50; it++) {
      const mid = (lo + hi) / 2;
      if (pred(mid)) hi = mid;
      else lo = mid;
    }
    return hi;
  };
  return { inf: bisect((x) => status(x).bad), nan: bisect((x) => status(x).nan) };
}

export interface AlibiHeadDeviation {
  head: number;
  slope: number;
  /** Largest distance in the window (m D <= window, D <= L - 1). */
  maxDistance: number;
  mu: number;
  /** Max |a_HyPE - (-m D)| over the window: exact fp64 (truncation only) and per format (null: refused). */
  exact: number;
  formats: Record<NarrowFormat, number | null>;
}

/** Max deviation from ALiBi per head for given per-head (tau, mu), over the causal window where m D <= window. */
export function alibiDeviation(o: {
  heads: number;
  d: number;
  length: number;
  window: number;
  tau: ArrayLike<number>;
  mu: ArrayLike<number>;
  sampling: Sampling;
  formats?: readonly NarrowFormat[];
}): AlibiHeadDeviation[] {
  const slopes = alibiSlopes(o.heads);
  const out: AlibiHeadDeviation[] = [];
  for (let h = 0; h < o.heads; h++) {
    const m = slopes[h]!;
    const tau = o.tau[h]!;
    const mu = o.mu[h]!;
    const maxDistance = Math.min(o.length - 1, Math.floor(o.window / m));
    let exact = 0;
    for (let D = 0; D <= maxDistance; D++) exact = Math.max(exact, Math.abs(tau * Math.sinh(mu * D) + m * D));
    const formats = { fp32: null, fp16: null, bf16: null } as Record<NarrowFormat, number | null>;
    const rows = sampleRows(o.length, o.sampling);
    for (const format of o.formats ?? NARROW_FORMATS) {
      formats[format] = recoveredBiasError({
        d: o.d,
        length: o.length,
        tau,
        mu,
        format,
        rows,
        maxDistance,
        reference: (D) => -m * D,
      }).maxAbsError;
    }
    out.push({ head: h, slope: m, maxDistance, mu, exact, formats });
  }
  return out;
}

/**
 * SPEC section 3's "best mu": per head and format, the curvature c = mu * maxDistance (geometric grid 1e-3 .. 2)
 * with the smallest max deviation from ALiBi, tau = -m / mu. Returns the best deviation per head and format.
 */
export function bestMuAlibiDeviation(o: {
  heads: number;
  d: number;
  length: number;
  window: number;
  sampling: Sampling;
  grid?: number;
}): { format: NarrowFormat; head: number; slope: number; curvature: number; deviation: number | null }[] {
  const slopes = alibiSlopes(o.heads);
  const n = o.grid ?? 25;
  const results: { format: NarrowFormat; head: number; slope: number; curvature: number; deviation: number | null }[] =
    [];
  for (const format of NARROW_FORMATS) {
    for (let h = 0; h < o.heads; h++) {
      const m = slopes[h]!;
      const maxDistance = Math.min(o.length - 1, Math.floor(o.window / m));
      let best: { curvature: number; deviation: number | null } = { curvature: NaN, deviation: null };
      for (let j = 0; j < n; j++) {
        const curvature = 1e-3 * (2 / 1e-3) ** (j / (n - 1));
        const mu = curvature / maxDistance;
        const e = recoveredBiasError({
          d: o.d,
          length: o.length,
          tau: -m / mu,
          mu,
          format,
          rows: sampleRows(o.length, o.sampling),
          maxDistance,
          reference: (D) => -m * D,
        }).maxAbsError;
        if (e !== null && (best.deviation === null || e < best.deviation)) best = { curvature, deviation: e };
      }
      results.push({ format, head: h, slope: m, ...best });
    }
  }
  return results;
}
