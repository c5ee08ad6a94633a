/**
 * The native layer operations (native/layers.cc via NativeBackend) against the TypeScript references (layers.ts)
 * on the same fp32 inputs, forward and backward, at odd sizes, widths that are not a multiple of the vector width,
 * and sizes large enough to be split across the pool.
 *
 * Tolerances are first-order fp32 error bounds computed per element in fp64 from the inputs, with u = 2^-24:
 * - a sum of n terms in VL vector lanes has each term pass through at most ceil(n / VL) + 2 VL additions, so its
 *   error is at most (ceil(n / VL) + 2 VL) u sum|terms| (Higham's gamma_n);
 * - the kernel's exp (simd.h) has relative error below 3u, and its argument's rounding adds u |argument|;
 *   exp underflows to exactly 0 below -87 and the pool flushes subnormals, hence absolute terms of
 *   exp(-87) ~ 1.65e-38 and FLT_MIN ~ 1.18e-38 times the factor that multiplies them;
 * - the reference rounds each fp64 result to fp32 once (u |result|), and where it accumulates into an fp32
 *   array row by row (dGamma, dBeta) it rounds at every row, so its own error there is rows * u * sum|terms|.
 * An indexing or formula mistake shows as an O(1) relative error, orders of magnitude above these bounds.
 */
import { describe, expect, it } from 'vitest';
import { referenceLayerOps as ref, type LayerOps } from '../src/backend/layers.ts';
import {
  checkNativeAddon,
  tryLoadAddon,
  loadNativeAddon,
  NATIVE_ABI,
  NativeBackend,
  nativeLoadError,
} from '../src/backend/native.ts';
import { HypeError } from '../src/errors.ts';
import { Rng } from '../src/util/rng.ts';

const addon = loadNativeAddon();
if (!addon) {
  // In CI the addon must build: a missing addon fails the suite there instead of silently skipping it.
  if (process.env.CI === 'true') throw new Error(`native addon missing in CI: ${nativeLoadError()}`);
  console.warn(`SKIPPING native layer tests: the addon is not built (${nativeLoadError()}); run \`npm rebuild\``);
}
const suite = addon ? describe : describe.skip;

const u = 2 ** -24;
const FLT_MIN = 1.1754943508222875e-38;
const EXP_FLOOR = Math.exp(-87);
const VL = addon?.vectorWidth ?? 16;
/** Longest chain of fp32 additions a term goes through in a vector-lane sum of n terms. */
const kSum = (n: number) => Math.ceil(n / VL) + 2 * VL;

const rng = new Rng(20261126);
function normal(n: number, std = 1, shift = 0): Float32Array {
  const a = new Float32Array(n);
  rng.fillNormal(a, std);
  for (let i = 0; i < n; i++) a[i] += shift;
  return a;
}
function ints(n: number, bound: number): Int32Array {
  return Int32Array.from({ length: n }, () => rng.int(bound));
}

/** Expects |got - want| <= tol elementwise, naming the first violation. */
function expectWithin(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number) => number) {
  expect(got.length).toBe(want.length);
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!);
    const t = tol(i);
    if (!(err <= t)) throw new Error(`${what}[${i}]: native ${got[i]} vs reference ${want[i]} (|err| ${err} > ${t})`);
    worst = Math.max(worst, t > 0 ? err / t : 0);
  }
  if (process.env.HYPE_TOL_REPORT) console.log(`${what}: ${worst.toExponential(2)} of the bound`);
  return worst;
}

// Row shapes: a single element, widths below, at and above the vector width, a width with a tail after full
// vectors, and sizes that the kernels split into several pool tasks (more than 16384 floats).
const ROW_SHAPES: [number, number][] = [
  [1, 1],
  [3, 7],
  [5, VL],
  [4, VL + 3],
  [37, 2 * VL + 5],
  [130, 256],
  [67, 257],
];

suite('native layer ops match the references (fp32)', () => {
  const backend = new NativeBackend();
  const nat: LayerOps = backend;

  it('every layer op is the backend own (not the reference fallback)', () => {
    for (const key of Object.keys(ref) as (keyof LayerOps)[]) {
      expect(typeof backend[key], key).toBe('function');
      expect(nat[key], key).not.toBe(ref[key]);
    }
  });

  it.each(ROW_SHAPES)('layerNormForward rows=%i width=%i', (rows, width) => {
    const x = normal(rows * width, 1.5, 0.5);
    const gamma = normal(width, 0.5, 1);
    const beta = normal(width, 0.3);
    const eps = 1e-5;
    const outs = [0, 1].map(() => ({
      out: new Float32Array(rows * width),
      mean: new Float32Array(rows),
      rstd: new Float32Array(rows),
    }));
    const [n, r] = outs as [(typeof outs)[0], (typeof outs)[0]];
    nat.layerNormForward(x, gamma, beta, n.out, n.mean, n.rstd, rows, width, eps);
    ref.layerNormForward(x, gamma, beta, r.out, r.mean, r.rstd, rows, width, eps);
    const K = kSum(width);
    const tolMean: number[] = [];
    const tolRstd: number[] = [];
    const tolOut: number[] = [];
    for (let i = 0; i < rows; i++) {
      const o = i * width;
      let sAbs = 0;
      let s = 0;
      for (let j = 0; j < width; j++) {
        sAbs += Math.abs(x[o + j]!);
        s += x[o + j]!;
      }
      const mu = s / width;
      let v = 0;
      for (let j = 0; j < width; j++) v += (x[o + j]! - mu) ** 2;
      const rs = 1 / Math.sqrt(v / width + eps);
      const dMu = (K + 2) * u * (sAbs / width); // error of the fp32 mean
      // The variance's relative error: the sum of squares (K + 3) u, plus the mean's error, second order.
      const relVar = (K + 3) * u + (v > 0 ? (width * dMu * dMu) / v : 0);
      const relRs = relVar / 2 + 4 * u;
      tolMean.push(dMu + u * Math.abs(mu));
      tolRstd.push(relRs * rs);
      for (let j = 0; j < width; j++) {
        const g = gamma[j]!;
        const xhat = (x[o + j]! - mu) * rs;
        const out = xhat * g + beta[j]!;
        tolOut.push(
          Math.abs(g) * rs * (dMu + u * Math.abs(x[o + j]! - mu)) +
            Math.abs(g * xhat) * (relRs + 4 * u) +
            u * (Math.abs(beta[j]!) + 2 * Math.abs(out)),
        );
      }
    }
    expectWithin('mean', n.mean, r.mean, (i) => tolMean[i]!);
    expectWithin('rstd', n.rstd, r.rstd, (i) => tolRstd[i]!);
    expectWithin('out', n.out, r.out, (i) => tolOut[i]!);
  });

  it.each(ROW_SHAPES)('layerNormBackward rows=%i width=%i (dx, dGamma, dBeta accumulate)', (rows, width) => {
    const x = normal(rows * width, 1.5, 0.5);
    const gamma = normal(width, 0.5, 1);
    const beta = normal(width, 0.3);
    const mean = new Float32Array(rows);
    const rstd = new Float32Array(rows);
    ref.layerNormForward(x, gamma, beta, new Float32Array(rows * width), mean, rstd, rows, width, 1e-5);
    const dOut = normal(rows * width);
    const dx0 = normal(rows * width, 0.1);
    const dg0 = normal(width, 0.1);
    const db0 = normal(width, 0.1);
    const run = (ops: LayerOps) => {
      const dx = dx0.slice();
      const dGamma = dg0.slice();
      const dBeta = db0.slice();
      ops.layerNormBackward(dOut, x, gamma, mean, rstd, dx, dGamma, dBeta, rows, width);
      return { dx, dGamma, dBeta };
    };
    const n = run(nat);
    const r = run(ref);
    const K = kSum(width);
    const tolDx: number[] = [];
    const absGX = new Float64Array(width);
    const absDy = new Float64Array(width);
    for (let i = 0; i < rows; i++) {
      const o = i * width;
      const mu = mean[i]!;
      const rs = rstd[i]!;
      let sG = 0;
      let sGX = 0;
      let aG = 0;
      let aGX = 0;
      for (let j = 0; j < width; j++) {
        const xhat = (x[o + j]! - mu) * rs;
        const g = dOut[o + j]! * gamma[j]!;
        sG += g;
        sGX += g * xhat;
        aG += Math.abs(g);
        aGX += Math.abs(g * xhat);
        absGX[j] += Math.abs(dOut[o + j]! * xhat);
        absDy[j] += Math.abs(dOut[o + j]!);
      }
      const meanG = sG / width;
      const meanGX = sGX / width;
      const eG = ((K + 2) * u * aG) / width;
      const eGX = ((K + 5) * u * aGX) / width;
      for (let j = 0; j < width; j++) {
        const xhat = (x[o + j]! - mu) * rs;
        const dyg = Math.abs(dOut[o + j]! * gamma[j]!);
        tolDx.push(
          rs * (eG + Math.abs(xhat) * eGX + 5 * u * (dyg + Math.abs(meanG) + Math.abs(xhat * meanGX))) +
            2 * u * Math.abs(r.dx[o + j]!),
        );
      }
    }
    expectWithin('dx', n.dx, r.dx, (i) => tolDx[i]!);
    // The reference rounds dGamma/dBeta to fp32 after every row; the kernel sums in double.
    expectWithin('dGamma', n.dGamma, r.dGamma, (j) => (rows + 4) * u * (Math.abs(dg0[j]!) + absGX[j]!));
    expectWithin('dBeta', n.dBeta, r.dBeta, (j) => (rows + 2) * u * (Math.abs(db0[j]!) + absDy[j]!));
  });

  // GELU inputs: normal values plus the far tails, where exp(-2u) overflows in the reference and the kernel
  // switches to exp(+2u) (outputs round to +-0 or to x).
  const geluInput = (n: number) => {
    const x = normal(n, 2);
    const tails = [-100, -30, -12, -9.9, -5, -0.7518, 0, 1e-30, -1e-30, 5, 12, 30, 100];
    for (let i = 0; i < Math.min(n, tails.length); i++) x[(i * 7919) % n] = tails[i]!;
    return x;
  };
  const geluT = (v: number) => 2 * Math.sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v);

  it.each([1, 7, VL - 1, VL + 1, 1000, 70001])('geluForward n=%i', (n) => {
    const x = geluInput(n);
    const got = new Float32Array(n);
    const want = new Float32Array(n);
    nat.geluForward(x, got, n);
    ref.geluForward(x, want, n);
    expectWithin('gelu', got, want, (i) => {
      const v = x[i]!;
      const t = geluT(v);
      return (6 * Math.abs(t) + 10) * u * Math.abs(want[i]!) + Math.abs(v) * (EXP_FLOOR + FLT_MIN) + FLT_MIN;
    });
    // In place (out aliases x) gives the same bits.
    const inPlace = x.slice();
    nat.geluForward(inPlace, inPlace, n);
    expect(inPlace).toEqual(got);
  });

  it.each([1, 7, VL - 1, VL + 1, 1000, 70001])('geluBackward n=%i', (n) => {
    const x = geluInput(n);
    const dOut = normal(n);
    const got = new Float32Array(n);
    const want = new Float32Array(n);
    nat.geluBackward(x, dOut, got, n);
    ref.geluBackward(x, dOut, want, n);
    const c = Math.sqrt(2 / Math.PI);
    expectWithin('dGelu', got, want, (i) => {
      const v = x[i]!;
      const t = geluT(v);
      const s = 1 / (1 + Math.exp(-t));
      const sq = s * (1 - s);
      const dt = 2 * c * (1 + 3 * 0.044715 * v * v);
      const g = Math.abs(dOut[i]!);
      return (
        (12 * Math.abs(t) + 24) * u * g * (s + Math.abs(v * sq * dt)) +
        2 * u * Math.abs(want[i]!) +
        2 * g * (1 + Math.abs(v) * dt) * (EXP_FLOOR + FLT_MIN) +
        FLT_MIN
      );
    });
    // dx aliasing dOut gives the same bits.
    const inPlace = dOut.slice();
    nat.geluBackward(x, inPlace, inPlace, n);
    expect(inPlace).toEqual(got);
  });

  it.each(ROW_SHAPES)('biasAdd and biasBackward rows=%i width=%i', (rows, width) => {
    const y0 = normal(rows * width);
    const bias = normal(width);
    const a = y0.slice();
    const b = y0.slice();
    nat.biasAdd(a, bias, rows, width);
    ref.biasAdd(b, bias, rows, width);
    expect(a).toEqual(b); // one fp32 addition per element on both sides
    const d0 = normal(width, 0.1);
    const dn = d0.slice();
    const dr = d0.slice();
    nat.biasBackward(y0, dn, rows, width);
    ref.biasBackward(y0, dr, rows, width);
    // Both sum in double and round once; they differ only by double summation order, so by at most one fp32 ulp.
    expectWithin('dBias', dn, dr, (j) => {
      let s = Math.abs(d0[j]!);
      for (let i = 0; i < rows; i++) s += Math.abs(y0[i * width + j]!);
      return 2 * u * Math.abs(dr[j]!) + rows * 2 ** -52 * s;
    });
  });

  const CE_SHAPES: [number, number, number][] = [
    [1, 1, 0],
    [3, 5, 0],
    [4, VL + 3, 40],
    [9, 256, 0],
    [300, 257, -20],
  ];

  it.each(CE_SHAPES)('softmaxCrossEntropy rows=%i vocab=%i (logit shift %i)', (rows, vocab, shift) => {
    const logits = normal(rows * vocab, 3, shift);
    if (rows * vocab > 10) logits[5] = -200; // an entry whose exp underflows
    const targets = ints(rows, vocab);
    const ln = new Float32Array(rows);
    const lr = new Float32Array(rows);
    const meanN = nat.softmaxCrossEntropyForward(logits, targets, ln, rows, vocab);
    const meanR = ref.softmaxCrossEntropyForward(logits, targets, lr, rows, vocab);
    const K = kSum(vocab);
    const relS: number[] = [];
    const tolLoss: number[] = [];
    for (let i = 0; i < rows; i++) {
      let m = -Infinity;
      for (let j = 0; j < vocab; j++) m = Math.max(m, logits[i * vocab + j]!);
      let s = 0;
      let spread = 0;
      for (let j = 0; j < vocab; j++) {
        const d = logits[i * vocab + j]! - m;
        s += Math.exp(d);
        spread += Math.exp(d) * Math.abs(d);
      }
      // Relative error of the fp32 sum of exps: each term's argument rounding and exp error, then the sum.
      relS.push((K + 3) * u + (u * spread) / s);
      tolLoss.push(relS[i]! + 3 * u * Math.abs(lr[i]!) + vocab * FLT_MIN);
    }
    expectWithin('loss', ln, lr, (i) => tolLoss[i]!);
    const meanTol = tolLoss.reduce((a, b) => a + b, 0) / rows + 2 * u * Math.abs(meanR);
    expect(Math.abs(meanN - meanR)).toBeLessThanOrEqual(meanTol);

    const dLoss = 1 / rows;
    const gn = new Float32Array(rows * vocab);
    const gr = new Float32Array(rows * vocab);
    nat.softmaxCrossEntropyBackward(logits, targets, gn, rows, vocab, dLoss);
    ref.softmaxCrossEntropyBackward(logits, targets, gr, rows, vocab, dLoss);
    expectWithin('dLogits', gn, gr, (k) => {
      const i = Math.floor(k / vocab);
      let m = -Infinity;
      for (let j = 0; j < vocab; j++) m = Math.max(m, logits[i * vocab + j]!);
      const p = Math.abs(gr[k]! + (k - i * vocab === targets[i] ? dLoss : 0)) / dLoss; // the softmax entry
      const d = Math.abs(logits[k]! - m);
      return (
        dLoss * p * (u * d + 6 * u + relS[i]!) +
        2 * u * Math.abs(gr[k]!) +
        u * dLoss +
        dLoss * (EXP_FLOOR + FLT_MIN) +
        FLT_MIN
      );
    });
    // dLogits aliasing logits gives the same bits.
    const inPlace = logits.slice();
    nat.softmaxCrossEntropyBackward(inPlace, targets, inPlace, rows, vocab, dLoss);
    expect(inPlace).toEqual(gn);
  });

  it.each([
    [1, 0.1],
    [VL + 5, 0],
    [70001, 0.1],
  ])('adamwStep n=%i weightDecay=%f', (n, weightDecay) => {
    const p0 = normal(n);
    const g = normal(n, 0.01);
    const m0 = normal(n, 0.01);
    const v0 = normal(n, 1e-4).map(Math.abs);
    const h = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay, step: 5 };
    const run = (ops: LayerOps) => {
      const [p, m, v] = [p0.slice(), m0.slice(), v0.slice()];
      ops.adamwStep(p, g, m, v, n, h);
      return { p, m, v };
    };
    const a = run(nat);
    const b = run(ref);
    const c1 = 1 - h.beta1 ** h.step;
    const c2 = 1 - h.beta2 ** h.step;
    const eM = (i: number) => 3 * u * (Math.abs(h.beta1 * m0[i]!) + Math.abs((1 - h.beta1) * g[i]!));
    const eV = (i: number) => 4 * u * (h.beta2 * v0[i]! + (1 - h.beta2) * g[i]! * g[i]!);
    expectWithin('m', a.m, b.m, (i) => eM(i) + u * Math.abs(b.m[i]!));
    expectWithin('v', a.v, b.v, (i) => eV(i) + u * Math.abs(b.v[i]!));
    expectWithin('param', a.p, b.p, (i) => {
      const mi = h.beta1 * m0[i]! + (1 - h.beta1) * g[i]!;
      const vi = h.beta2 * v0[i]! + (1 - h.beta2) * g[i]! * g[i]!;
      const den = Math.sqrt(vi / c2) + h.eps;
      const upd = mi / c1 / den;
      // d upd = dm / (c1 den) + |upd| (dv / (2 v) + 6u) (rounded constants, sqrt, division, product).
      const dUpd = eM(i) / c1 / den + Math.abs(upd) * (vi > 0 ? eV(i) / (2 * vi) : 0) + Math.abs(upd) * 6 * u;
      return (
        h.lr * (dUpd + u * Math.abs(upd)) + 3 * u * h.lr * weightDecay * Math.abs(p0[i]!) + 3 * u * Math.abs(b.p[i]!)
      );
    });
  });

  it.each([
    [1, 1, 1],
    [50, 7, 3],
    [700, 129, 256],
  ])(
    'embedding forward/backward n=%i width=%i vocab=%i (exact: copies and same-order fp32 adds)',
    (n, width, vocab) => {
      const table = normal(vocab * width);
      const tokens = ints(n, vocab); // repeats included: the backward must add, not overwrite
      const a = new Float32Array(n * width);
      const b = new Float32Array(n * width);
      nat.embeddingForward(table, tokens, a, n, width, vocab);
      ref.embeddingForward(table, tokens, b, n, width, vocab);
      expect(a).toEqual(b);
      const dOut = normal(n * width);
      const d0 = normal(vocab * width, 0.1);
      const da = d0.slice();
      const db = d0.slice();
      nat.embeddingBackward(dOut, tokens, da, n, width);
      ref.embeddingBackward(dOut, tokens, db, n, width);
      expect(da).toEqual(db);
    },
  );
});

suite('native layer ops: validation and dtype dispatch', () => {
  const nat: LayerOps = new NativeBackend();

  it('refuses short arrays, bad sizes, out-of-range ids and non-finite scalars with a HypeError before native code', () => {
    const x = new Float32Array(12);
    const cases: [() => unknown, RegExp][] = [
      [() => nat.geluForward(x, new Float32Array(11), 12), /out has 11 elements but 12/],
      [() => nat.biasAdd(x, new Float32Array(4), 3, 4.5), /width must be a positive integer/],
      [() => nat.layerNormForward(x, x, x, x, x, x, 3, 4, NaN), /eps must be finite/],
      [
        () => nat.softmaxCrossEntropyForward(x, Int32Array.of(0, 4, 1), new Float32Array(3), 3, 4),
        /target 4 at row 1 is outside \[0, 4\)/,
      ],
      [() => nat.embeddingForward(x, Int32Array.of(-1), x, 1, 4, 3), /token -1 at row 0/],
      [
        () => nat.embeddingBackward(x, Int32Array.of(3), new Float32Array(12), 1, 4),
        /token 3 at row 0 is outside \[0, 3\)/,
      ],
      [
        () =>
          nat.adamwStep(x, x, x, x, 12, { lr: Infinity, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0, step: 1 }),
        /lr must be a finite number/,
      ],
      [() => nat.softmaxCrossEntropyBackward(x, Int32Array.of(0, 1, 2), x, 3, 4, NaN), /dLoss must be a finite/],
    ];
    for (const [call, message] of cases) {
      const before = x.slice();
      expect(call).toThrow(HypeError);
      expect(call).toThrow(message);
      expect(x).toEqual(before); // nothing half-written
    }
  });

  it('fp64 tensors (and fp64 encoding parameters in the optimizer) go to the reference, bit for bit', () => {
    const n = 37;
    const p = Float64Array.from({ length: n }, (_, i) => Math.sin(i));
    const g = Float64Array.from({ length: n }, (_, i) => Math.cos(i) * 1e-2);
    const h = { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1, step: 3 };
    const a = { p: p.slice(), m: new Float64Array(n), v: new Float64Array(n) };
    const b = { p: p.slice(), m: new Float64Array(n), v: new Float64Array(n) };
    nat.adamwStep(a.p, g, a.m, a.v, n, h);
    ref.adamwStep(b.p, g, b.m, b.v, n, h);
    expect(a).toEqual(b);
    const outA = new Float64Array(n);
    const outB = new Float64Array(n);
    nat.geluForward(p, outA, n);
    ref.geluForward(p, outB, n);
    expect(outA).toEqual(outB);
  });
});

suite('stale addon builds', () => {
  it('an addon with another kernel interface or missing kernels is an error at load, naming them', () => {
    expect(checkNativeAddon(addon)).toBe(addon);
    // An addon from older sources: today's object without two kernels, or with an older interface version.
    const stale: Record<string, unknown> = { ...addon! };
    delete stale.prefixSoftmaxRows;
    delete stale.geluBackward;
    let caught: unknown;
    try {
      checkNativeAddon(stale);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(HypeError);
    expect((caught as HypeError).code).toBe('native');
    expect((caught as HypeError).message).toMatch(/stale build \(no geluBackward, prefixSoftmaxRows\).*npm rebuild/);
    expect(() => checkNativeAddon({ ...addon!, abi: NATIVE_ABI - 1 })).toThrow(
      new RegExp(`stale build \\(kernel interface ${NATIVE_ABI - 1} where this code needs ${NATIVE_ABI}\\)`),
    );
    expect(() => checkNativeAddon(undefined)).toThrow(HypeError);
  });

  it('loading refuses a missing or stale build with the reason (no addon, so no per-call fallback is possible)', () => {
    expect(tryLoadAddon(() => addon)).toEqual({ addon, error: '' });
    const missing = tryLoadAddon(() => {
      throw new Error('No native build was found for platform=linux\n    loaded from: somewhere');
    });
    expect(missing).toEqual({ addon: null, error: 'No native build was found for platform=linux' });
    const stale = tryLoadAddon(() => ({ ...addon!, abi: NATIVE_ABI + 1 }));
    expect(stale.addon).toBeNull();
    expect(stale.error).toMatch(/stale build \(kernel interface/);
  });
});
