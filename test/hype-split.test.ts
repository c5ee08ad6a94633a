/**
 * Split columns (SPEC section 8, src/numerics/split-columns.ts) on HyPE's concat route: the split itself, the layout
 * identity in fp64 for every HyPE form, the recovered-bias error in emulated bf16/fp16 against SPEC's table, and the
 * refusals. Gradients through the split are in hype-gradients.test.ts.
 */
import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import { HypeError } from '../src/errors.ts';
import { BF16, FP16, roundTo } from '../src/numerics/float-formats.ts';
import { splitColumns } from '../src/numerics/split-columns.ts';
import { augment, exactBias, type AugmentOptions, type HypeSpec } from '../src/pe/hype/core.ts';
import { hypeEncoding } from '../src/pe/hype/encoding.ts';
import { recoveredBiasError, sampleRows } from '../src/pe/hype/precision.ts';
import { SPEC8_TABLE } from '../src/pe/hype/verify.ts';
import { Rng } from '../src/util/rng.ts';

function thrown(f: () => unknown): HypeError {
  try {
    f();
  } catch (e) {
    if (e instanceof HypeError) return e;
    throw e;
  }
  throw new Error('expected a HypeError');
}

describe('splitColumns', () => {
  for (const fmt of [BF16, FP16]) {
    it(`${fmt.name}: hi and lo are ${fmt.name} values and hi + lo = x to u^2 |x|`, () => {
      const rng = new Rng(5);
      // |x| >= 2^-4 (bf16) or 1 (fp16): lo = round(x - hi) then loses at most half a subnormal spacing, far below
      // u^2 |x|; the top magnitude stays below each format's max.
      const [e0, e1] = fmt === BF16 ? [-4, 12] : [0, 14];
      const x = Float64Array.from(
        { length: 2000 },
        () => (rng.uniform() < 0.5 ? -1 : 1) * 2 ** (e0 + rng.uniform() * (e1 - e0)),
      );
      const { hi, lo } = splitColumns(x, fmt.name as 'bf16' | 'fp16');
      let worst = 0;
      let loNonZero = 0;
      for (let j = 0; j < x.length; j++) {
        expect(roundTo(fmt, hi[j]!)).toBe(hi[j]);
        expect(roundTo(fmt, lo[j]!)).toBe(lo[j]);
        worst = Math.max(worst, Math.abs(x[j]! - hi[j]! - lo[j]!) / Math.abs(x[j]!));
        if (lo[j] !== 0) loNonZero++;
      }
      expect(worst).toBeLessThanOrEqual(fmt.unitRoundoff ** 2);
      expect(loNonZero).toBeGreaterThan(1900); // the lo part carries real information
    });
  }
});

interface FormCase {
  name: string;
  spec: HypeSpec;
  lq: number;
  lk: number;
  queryOffset?: number;
  opts: AugmentOptions;
}

function spec(heads: number, kvHeads: number, grid: number[], termAxis: number[], scale: number): HypeSpec {
  const T = termAxis.length;
  const tau = Float64Array.from({ length: heads * T }, (_, j) => (j % 2 ? -1 : 1) * (3 + j) * 40);
  const mu = new Float64Array(heads * T);
  const group = heads / kvHeads;
  for (let h = 0; h < heads; h++) for (let t = 0; t < T; t++) mu[h * T + t] = scale * (1 + Math.floor(h / group) + t);
  return { heads, kvHeads, headDim: 8, grid, termAxis, tau, mu };
}

const FORMS: FormCase[] = [
  { name: 'per-head, 1-D, centred', spec: spec(4, 4, [], [0], 0.02), lq: 24, lk: 24, opts: {} },
  { name: 'uncentred (shift none)', spec: spec(2, 2, [], [0], 0.02), lq: 20, lk: 20, opts: { shift: 'none' } },
  { name: 'stacking (two pairs on one axis)', spec: spec(2, 2, [], [0, 0], 0.015), lq: 20, lk: 20, opts: {} },
  { name: 'GQA (4 query heads, 2 KV heads)', spec: spec(4, 2, [], [0], 0.02), lq: 16, lk: 16, opts: {} },
  { name: '2-D grid 4 x 5', spec: spec(2, 2, [4, 5], [0, 1], 0.1), lq: 20, lk: 20, opts: {} },
  { name: '3-D grid 2 x 3 x 4', spec: spec(2, 1, [2, 3, 4], [0, 1, 2], 0.1), lq: 24, lk: 24, opts: {} },
  { name: 'padded to a multiple of 8', spec: spec(2, 2, [], [0], 0.02), lq: 12, lk: 12, opts: { multiple: 8 } },
  { name: 'cache step (lq < lk, query offset)', spec: spec(2, 2, [], [0], 0.02), lq: 3, lk: 17, opts: {} },
];

/**
 * Max over every (batch, head, query, key) of |recovered - exact| with fp64 dot products of the augmented rows,
 * relative to max(1, |exact|); with `u` also the largest ratio of that error to the split's bound (below).
 */
function identityError(c: FormCase, opts: AugmentOptions, u = 0): { err: number; width: number; ofBound: number } {
  const s = c.spec;
  const rng = new Rng(9);
  const B = 2;
  const shape: AttentionShape = {
    batch: B,
    heads: s.heads,
    kvHeads: s.kvHeads,
    lq: c.lq,
    lk: c.lk,
    headDim: s.headDim,
    valueDim: s.headDim,
  };
  const q = new Float64Array(B * s.heads * c.lq * s.headDim);
  const k = new Float64Array(B * s.kvHeads * c.lk * s.headDim);
  rng.fillNormal(q, 1);
  rng.fillNormal(k, 1);
  const aug = augment(s, shape, q, k, { ...c.opts, ...opts });
  const dp = aug.shape.headDim;
  const d = s.headDim;
  const offset = c.lk - c.lq;
  const T = s.termAxis.length;
  let err = 0;
  let ofBound = 0;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < s.heads; h++) {
      const g = Math.floor(h / (s.heads / s.kvHeads));
      for (let i = 0; i < c.lq; i++) {
        const qr = ((b * s.heads + h) * c.lq + i) * dp;
        for (let l = 0; l < c.lk; l++) {
          const kr = ((b * s.kvHeads + g) * c.lk + l) * dp;
          let dot = 0;
          let content = 0;
          for (let j = 0; j < dp; j++) dot += aug.qHat[qr + j]! * aug.kHat[kr + j]!;
          for (let j = 0; j < d; j++) content += aug.qHat[qr + j]! * aug.kHat[kr + j]!;
          // Per column the split delivers x_hi y_hi + x_hi y_lo + x_lo y_hi, off from x y by at most ~3 u^2 |x y|
          // (|lo| <= u |x| and |x - hi - lo| <= u^2 |x|; 3.1 covers the cross terms).
          let bound = 0;
          for (let col = 0; col < 2 * T; col++)
            bound += 3.1 * u * u * Math.abs(aug.qHat[qr + d + 3 * col]! * aug.kHat[kr + d + 3 * col]!);
          const expected = aug.scale * content + exactBias(s, h, i + offset, l);
          const e = Math.abs(aug.scale * dot - expected);
          err = Math.max(err, e / Math.max(1, Math.abs(expected)));
          if (u > 0) ofBound = Math.max(ofBound, e / (aug.scale * bound + 1e-12 * Math.max(1, Math.abs(expected))));
        }
      }
    }
  }
  return { err, width: dp, ofBound };
}

describe('split columns reproduce the bias in fp64, every HyPE form', () => {
  for (const c of FORMS) {
    it(c.name, () => {
      const T = c.spec.termAxis.length;
      const m = c.opts.multiple ?? 1;
      // Split at fp32 granularity: what is left, x_lo y_lo, is ~u_fp32^2 |x y| ~ 1e-15 relative.
      const fp32 = identityError(c, { columns: 'split' });
      expect(fp32.err).toBeLessThanOrEqual(1e-12);
      expect(fp32.width).toBe(Math.ceil((8 + 6 * T) / m) * m);
      // Split in bf16 and fp16 (values held in fp64): within the split's bound 3 u^2 |x y| per column, which a
      // wrong layout (a lo slot facing a lo slot, or a missing hi x lo term) would exceed by ~1/u.
      for (const fmt of [BF16, FP16]) {
        const r = identityError(c, { precision: fmt.name as 'bf16' | 'fp16' }, fmt.unitRoundoff);
        expect(r.ofBound).toBeLessThanOrEqual(1);
        expect(r.ofBound).toBeGreaterThan(1e-3); // the bound is not vacuous
      }
      // Plain columns in fp64 are exact as before: 2 columns per pair.
      const plain = identityError(c, {});
      expect(plain.err).toBeLessThanOrEqual(1e-12);
      expect(plain.width).toBe(Math.ceil((8 + 2 * T) / m) * m);
    });
  }
});

describe("emulated bf16/fp16: recovered-bias error vs SPEC section 8's table (d = 64, centred, fp32 accumulation)", () => {
  // SPEC8_TABLE: [format, L, slope m, mu L, plain, split], tau = -m / mu as the recency preset. SPEC's figures come
  // from an independent numpy check; ours must agree within a factor of two, and plain columns must be far worse.
  for (const [format, L, m, muL, specPlain, specSplit] of SPEC8_TABLE) {
    it(`${format}, L = ${L}, m = 1/${1 / m}, mu L = ${muL}`, () => {
      const mu = muL / L;
      const base = { d: 64, length: L, tau: -m / mu, mu, format, rows: sampleRows(L, { fullPairs: 200_000, rows: 8 }) };
      const split = recoveredBiasError({ ...base, columns: 'split' }).maxAbsError!;
      const plain = recoveredBiasError({ ...base, columns: 'plain' }).maxAbsError!;
      expect(split / specSplit).toBeGreaterThan(0.5);
      expect(split / specSplit).toBeLessThan(2);
      expect(plain / specPlain).toBeGreaterThan(0.5);
      expect(plain / specPlain).toBeLessThan(2);
      expect(plain).toBeGreaterThan(100 * specSplit);
    });
  }
});

describe('split columns: refusals', () => {
  const s = spec(2, 2, [], [0], 0.02);
  const shape: AttentionShape = { batch: 1, heads: 2, kvHeads: 2, lq: 4, lk: 4, headDim: 8, valueDim: 8 };
  const q = new Float32Array(2 * 4 * 8);
  const k = new Float32Array(2 * 4 * 8);

  it('an unknown precision names the allowed values', () => {
    const e = thrown(() => augment(s, shape, q, k, { precision: 'fp8' as 'fp16' }));
    expect(e.code).toBe('argument');
    expect(e.message).toMatch(/unknown precision "fp8".*fp32, bf16, fp16/);
  });

  it('a precision that contradicts the emulated format, and unknown columns, are refused', () => {
    expect(thrown(() => augment(s, shape, q, k, { format: 'fp16', precision: 'bf16' })).message).toMatch(
      /precision 'bf16' contradicts format 'fp16'/,
    );
    expect(thrown(() => augment(s, shape, q, k, { columns: 'both' as 'split' })).message).toMatch(
      /columns must be 'plain' or 'split'/,
    );
  });

  it('hi columns that overflow the format: one message naming mu, L, the format, the limit and a fix', () => {
    // fp16 eta^Q = (|tau| sqrt(d)/2) e^{|mu| |p|} must stay below 65504: |tau| = 120, mu = 0.6 over 24 positions.
    const big: HypeSpec = { ...s, tau: Float64Array.of(120, 120), mu: Float64Array.of(0.6, 0.6) };
    const wide: AttentionShape = { ...shape, lq: 24, lk: 24 };
    const e = thrown(() =>
      augment(big, wide, new Float32Array(2 * 24 * 8), new Float32Array(2 * 24 * 8), { precision: 'fp16' }),
    );
    expect(e.code).toBe('overflow');
    expect(e.message).toMatch(/overflow fp16/);
    expect(e.message).toMatch(/\|mu\| = 0\.6000/);
    expect(e.message).toMatch(/L = 24/);
    expect(e.message).toMatch(/exceeds the fp16 limit \|mu\| <= [0-9.]+/);
    expect(e.message).toMatch(/Fix: use \|mu\| <= /);
    // The same configuration fits fp32 operands: the guard checks the precision the columns are built for.
    expect(() => augment(big, wide, new Float32Array(2 * 24 * 8), new Float32Array(2 * 24 * 8))).not.toThrow();
  });

  it('the HyPE encoding refuses an unknown option key, naming it and the allowed keys', () => {
    const dims = { heads: 2, kvHeads: 2, headDim: 8, modelDim: 16, trainLength: 16 };
    const e = thrown(() => hypeEncoding.create(dims, { prest: 'paper' } as never, new Rng(1)));
    expect(e.code).toBe('argument');
    expect(e.message).toMatch(/hype has no option 'prest'/);
    expect(e.message).toMatch(/its options are preset, curvature, .*precision, columns/);
    expect(thrown(() => hypeEncoding.create(dims, { precision: 'fp8' } as never, new Rng(1))).message).toMatch(
      /unknown precision/,
    );
  });

  it('bf16 and fp16 formats default to split columns; fp32 keeps 2 plain columns per pair', () => {
    expect(augment(s, shape, q, k, { format: 'bf16' }).shape.headDim).toBe(8 + 6);
    expect(augment(s, shape, q, k, { format: 'fp16', multiple: 8 }).shape.headDim).toBe(16);
    expect(augment(s, shape, q, k, { format: 'bf16', columns: 'plain' }).shape.headDim).toBe(8 + 2);
    expect(augment(s, shape, q, k).shape.headDim).toBe(8 + 2);
  });
});
