/**
 * The native backend against the fp64 reference: a seeded subset of the randomised sweep (the full 1,000-per-mode
 * sweep is `npm run sweep`), HyPE three ways, gemm, threads, and every refusal. Error metric and tolerance (2e-5 of
 * the output scale) are defined in scripts/sweep-attention.ts.
 */
import { describe, expect, it } from 'vitest';
import type { AttentionOptions, AttentionShape, PositionBias } from '../src/backend/backend.ts';
import { loadBackend } from '../src/backend/index.ts';
import { loadNativeAddon, NativeBackend, nativeLoadError, type NativeAddon } from '../src/backend/native.ts';
import { referenceGemm, ReferenceBackend } from '../src/backend/reference.ts';
import { HypeError } from '../src/errors.ts';
import { alibiDistanceTable } from '../src/pe/distance-table.ts';
import { hypeDistanceTable } from '../src/pe/hype/table.ts';
import { Rng } from '../src/util/rng.ts';
import {
  compareCase,
  describeCase,
  MODES,
  outputScales,
  randomCase,
  relativeError,
  TOLERANCE,
  type SweepCase,
} from '../scripts/sweep-attention.ts';

const addon = loadNativeAddon();
if (!addon) {
  // In CI the addon must build: a missing addon fails the suite there instead of silently skipping it.
  if (process.env.CI === 'true') throw new Error(`native addon missing in CI: ${nativeLoadError()}`);
  console.warn(`SKIPPING native tests: the addon is not built (${nativeLoadError()}); run \`npm rebuild\``);
}
const suite = addon ? describe : describe.skip;

const reference = new ReferenceBackend();
const f64 = (a: Float32Array) => Float64Array.from(a);

function uniform(rng: Rng, n: number, amp = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng.uniform() * 2 - 1) * amp;
  return a;
}

function expectHypeError(fn: () => unknown, code: HypeError['code'], pattern: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected a HypeError matching ${pattern}`).toBeInstanceOf(HypeError);
  expect((caught as HypeError).code).toBe(code);
  expect((caught as HypeError).message).toMatch(pattern);
}

suite('native attention vs the fp64 reference', () => {
  const native = new NativeBackend({ threads: 2 });

  // Small limits keep the fp64 reference fast; lengths up to 300 still span several 64-wide tiles.
  for (const mode of MODES) {
    it(`random sweep subset: ${mode}`, () => {
      for (let n = 0; n < 14; n++) {
        const c = randomCase(7, mode, n, { maxL: 300, maxWork: 6e6 });
        const errors = compareCase(native, reference, c);
        for (const [t, e] of Object.entries(errors)) {
          expect(e, `${t} of ${describeCase(c)}`).toBeLessThanOrEqual(TOLERANCE);
        }
      }
    });
  }

  it('covers multi-tile GQA shapes with odd head dims (66, 130) and explicit query offsets', () => {
    const rng = new Rng(3);
    const shapes: [AttentionShape, AttentionOptions][] = [
      [
        { batch: 1, heads: 4, kvHeads: 2, lq: 150, lk: 270, headDim: 66, valueDim: 66 },
        {
          causal: true,
          scale: 1 / Math.sqrt(64),
          bias: {
            kind: 'distance',
            table: alibiDistanceTable(Float64Array.of(0.5, 0.25, 0.1, 0), {
              heads: 4,
              lq: 150,
              lk: 270,
              queryOffset: 120,
              causal: true,
            }),
          },
        },
      ],
      [
        { batch: 2, heads: 2, kvHeads: 1, lq: 130, lk: 129, headDim: 130, valueDim: 33 },
        { causal: false, scale: 0.09, queryOffset: 5 },
      ],
      [
        { batch: 1, heads: 1, kvHeads: 1, lq: 200, lk: 100, headDim: 1, valueDim: 260 },
        { causal: true, scale: 0.7, queryOffset: -40 }, // the first 40 queries see no key: out 0, lse -Infinity
      ],
    ];
    for (const [shape, opts] of shapes) {
      const c: SweepCase = {
        shape,
        opts,
        q: uniform(rng, shape.batch * shape.heads * shape.lq * shape.headDim, 2),
        k: uniform(rng, shape.batch * shape.kvHeads * shape.lk * shape.headDim, 2),
        v: uniform(rng, shape.batch * shape.kvHeads * shape.lk * shape.valueDim),
        dOut: uniform(rng, shape.batch * shape.heads * shape.lq * shape.valueDim),
      };
      for (const [t, e] of Object.entries(compareCase(native, reference, c))) {
        expect(e, `${t} of ${describeCase(c)}`).toBeLessThanOrEqual(TOLERANCE);
      }
    }
  });

  it('gives empty rows out = 0 and lse = -Infinity, and zero gradients from them', () => {
    const shape: AttentionShape = { batch: 1, heads: 1, kvHeads: 1, lq: 6, lk: 4, headDim: 3, valueDim: 2 };
    const rng = new Rng(5);
    const q = uniform(rng, 18);
    const k = uniform(rng, 12);
    const v = uniform(rng, 8);
    const opts = { causal: true, scale: 0.5, queryOffset: -2 };
    const { out, lse } = native.attentionForward(shape, q, k, v, opts);
    expect(Array.from(lse.subarray(0, 2))).toEqual([-Infinity, -Infinity]);
    expect(Array.from(out.subarray(0, 4))).toEqual([0, 0, 0, 0]);
    expect(Number.isFinite(lse[2]!)).toBe(true);
    const g = native.attentionBackward(shape, q, k, v, out, lse, uniform(rng, 12), opts);
    expect(Array.from(g.dq.subarray(0, 6))).toEqual([0, 0, 0, 0, 0, 0]);
  });

  it('HyPE by concatenated columns on the none kernel == HyPE as a distance table == dense-bias reference', () => {
    const rng = new Rng(11);
    const [B, H, L, d, pairs] = [2, 3, 200, 64, 2];
    const tau = Float64Array.from({ length: H * pairs }, (_, j) => (j % 2 ? 0.8 : -40 * (j + 1)));
    const mu = Float64Array.from({ length: H * pairs }, (_, j) => (j % 2 ? 1 / L : (0.5 + j) / L));
    const q = uniform(rng, B * H * L * d, 1.7);
    const k = uniform(rng, B * H * L * d, 1.7);
    const v = uniform(rng, B * H * L * d);
    const scale = 1 / Math.sqrt(d);
    for (const causal of [true, false]) {
      const shape: AttentionShape = { batch: B, heads: H, kvHeads: H, lq: L, lk: L, headDim: d, valueDim: d };
      const bias: PositionBias = {
        kind: 'distance',
        table: hypeDistanceTable(tau, mu, pairs, { heads: H, lq: L, lk: L, queryOffset: 0, causal }),
      };
      const inKernel = native.attentionForward(shape, q, k, v, { causal, scale, bias });
      // SPEC section 1: Qhat = [Q, (tau sqrt(d)/2) e^{-mu p}, (tau sqrt(d)/2) e^{mu p}], Khat = [K, -e^{mu p'},
      // e^{-mu p'}] per pair, so Qhat.Khat / sqrt(d) = Q.K / sqrt(d) + sum tau sinh(mu (p - p')). Scale stays 1/sqrt(d).
      const dh = d + 2 * pairs;
      const qh = new Float32Array(B * H * L * dh);
      const kh = new Float32Array(B * H * L * dh);
      for (let bh = 0; bh < B * H; bh++) {
        const h = bh % H;
        for (let i = 0; i < L; i++) {
          for (let c = 0; c < d; c++) {
            qh[(bh * L + i) * dh + c] = q[(bh * L + i) * d + c]!;
            kh[(bh * L + i) * dh + c] = k[(bh * L + i) * d + c]!;
          }
          for (let p = 0; p < pairs; p++) {
            const j = h * pairs + p;
            const amp = (tau[j]! * Math.sqrt(d)) / 2;
            qh[(bh * L + i) * dh + d + 2 * p] = amp * Math.exp(-mu[j]! * i);
            qh[(bh * L + i) * dh + d + 2 * p + 1] = amp * Math.exp(mu[j]! * i);
            kh[(bh * L + i) * dh + d + 2 * p] = -Math.exp(mu[j]! * i);
            kh[(bh * L + i) * dh + d + 2 * p + 1] = Math.exp(-mu[j]! * i);
          }
        }
      }
      const concat = native.attentionForward({ ...shape, headDim: dh }, qh, kh, v, { causal, scale });
      const dense = new Float64Array(H * L * L);
      for (let h = 0; h < H; h++)
        for (let i = 0; i < L; i++)
          for (let l = 0; l < L; l++) {
            let a = 0;
            for (let p = 0; p < pairs; p++) a += tau[h * pairs + p]! * Math.sinh(mu[h * pairs + p]! * (i - l));
            dense[(h * L + i) * L + l] = a;
          }
      const ref = reference.attentionForward(shape, f64(q), f64(k), f64(v), {
        causal,
        scale,
        bias: { kind: 'dense', bias: dense, heads: H },
      });
      const c: SweepCase = { shape, opts: { causal, scale, bias }, q, k, v, dOut: v };
      const outScale = outputScales(c).out!;
      expect(relativeError(inKernel.out, ref.out, outScale)).toBeLessThanOrEqual(TOLERANCE);
      // The concat route rounds e^{mu p} columns to fp32; at mu L <= 2.5 that costs ~u cosh(mu L) per logit.
      expect(relativeError(concat.out, ref.out, outScale)).toBeLessThanOrEqual(TOLERANCE);
      expect(relativeError(concat.out, inKernel.out, outScale)).toBeLessThanOrEqual(TOLERANCE);
    }
  });

  it('keeps steep HyPE recency exact in fp32 at mu L = 120 (fp64 distance table), where fp32 concat columns overflow', () => {
    const rng = new Rng(13);
    const [L, d] = [1536, 16];
    const mu = Float64Array.of(120 / L); // e^{mu p} reaches e^120, beyond fp32's e^88
    const tau = Float64Array.of(-0.25 / mu[0]!); // ALiBi-like slope 1/4 near the diagonal
    const shape: AttentionShape = { batch: 1, heads: 1, kvHeads: 1, lq: L, lk: L, headDim: d, valueDim: d };
    const q = uniform(rng, L * d);
    const k = uniform(rng, L * d);
    const v = uniform(rng, L * d);
    const table = hypeDistanceTable(tau, mu, 1, { heads: 1, lq: L, lk: L, queryOffset: 0, causal: true });
    const opts: AttentionOptions = { causal: true, scale: 0.25, bias: { kind: 'distance', table } };
    const got = native.attentionForward(shape, q, k, v, opts);
    const ref = reference.attentionForward(shape, f64(q), f64(k), f64(v), opts);
    const outScale = outputScales({ shape, opts, q, k, v, dOut: v }).out!;
    expect(relativeError(got.out, ref.out, outScale)).toBeLessThanOrEqual(TOLERANCE);
    // The same bias through concatenated fp32 columns (uncentred, c = 0): e^{mu p} overflows to Infinity.
    const dh = d + 2;
    const qh = new Float32Array(L * dh);
    const kh = new Float32Array(L * dh);
    const amp = (tau[0]! * Math.sqrt(d)) / 2;
    for (let i = 0; i < L; i++) {
      for (let c = 0; c < d; c++) {
        qh[i * dh + c] = q[i * d + c]! * Math.sqrt(d) * 0.25;
        kh[i * dh + c] = k[i * d + c]!;
      }
      qh[i * dh + d] = amp * Math.exp(-mu[0]! * i);
      qh[i * dh + d + 1] = amp * Math.exp(mu[0]! * i);
      kh[i * dh + d] = -Math.exp(mu[0]! * i);
      kh[i * dh + d + 1] = Math.exp(-mu[0]! * i);
    }
    // So the concat route cannot even be run: the validator refuses the non-finite column instead of returning NaN.
    expectHypeError(
      () => native.attentionForward({ ...shape, headDim: dh }, qh, kh, v, { causal: true, scale: 1 / Math.sqrt(d) }),
      'non-finite',
      /q holds -?Infinity/,
    );
  });

  it("delegates the reference-only 'dense' bias to the reference implementation", () => {
    const rng = new Rng(17);
    const shape: AttentionShape = { batch: 1, heads: 2, kvHeads: 1, lq: 9, lk: 11, headDim: 5, valueDim: 4 };
    const [q, k, v] = [uniform(rng, 90), uniform(rng, 55), uniform(rng, 44)];
    const bias: PositionBias = { kind: 'dense', bias: uniform(rng, 2 * 99), heads: 2 };
    const opts = { causal: true, scale: 0.4, bias };
    const got = native.attentionForward(shape, q, k, v, opts);
    const want = reference.attentionForward(shape, q, k, v, opts);
    expect(Array.from(got.out)).toEqual(Array.from(want.out));
    const dOut = uniform(rng, 72);
    const g = native.attentionBackward(shape, q, k, v, got.out, got.lse, dOut, opts);
    expect(g.dBias.kind).toBe('dense');
  });

  it('agrees across thread counts (1 and 2 threads)', () => {
    const c = randomCase(21, 'hype', 3, { maxL: 400, maxWork: 2e7 });
    const one = new NativeBackend({ threads: 1 });
    const a = one.attentionForward(c.shape, c.q, c.k, c.v, c.opts);
    const ga = one.attentionBackward(c.shape, c.q, c.k, c.v, a.out, a.lse, c.dOut, c.opts);
    const two = new NativeBackend({ threads: 2 });
    expect(two.threads).toBe(2);
    const b = two.attentionForward(c.shape, c.q, c.k, c.v, c.opts);
    const gb = two.attentionBackward(c.shape, c.q, c.k, c.v, b.out, b.lse, c.dOut, c.opts);
    // Forward tiles and dK/dV are computed by one thread each: bit-identical. Bias gradients sum per-thread
    // partials in fp64, so only their last bits may differ.
    expect(Array.from(b.out)).toEqual(Array.from(a.out));
    expect(Array.from(gb.dk)).toEqual(Array.from(ga.dk));
    const ta = (ga.dBias as { table: Float64Array }).table;
    const tb = (gb.dBias as { table: Float64Array }).table;
    for (let j = 0; j < ta.length; j++) expect(tb[j]!).toBeCloseTo(ta[j]!, 6);
  });
});

suite('native sgemm vs the reference gemm', () => {
  const native = new NativeBackend({ threads: 2 });
  it('matches for transposes, strides, alpha/beta and ragged sizes', () => {
    const rng = new Rng(23);
    const sizes: [number, number, number][] = [
      [1, 1, 1],
      [7, 13, 5],
      [64, 64, 64],
      [100, 70, 300],
      [129, 515, 33],
      [3, 600, 257],
    ];
    for (const [m, n, k] of sizes) {
      for (const [ta, tb] of [
        [false, false],
        [true, false],
        [false, true],
        [true, true],
      ] as const) {
        const lda = (ta ? m : k) + 3;
        const ldb = (tb ? k : n) + 1;
        const ldc = n + 2;
        const a = uniform(rng, (ta ? k : m) * lda);
        const b = uniform(rng, (tb ? n : k) * ldb);
        const c0 = uniform(rng, m * ldc);
        for (const [alpha, beta] of [
          [1, 0],
          [0.5, 1],
          [-2, 0.25],
        ]) {
          const got = c0.slice();
          native.gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, got, ldc);
          const want = f64(c0);
          referenceGemm(ta, tb, m, n, k, alpha, f64(a), lda, f64(b), ldb, beta, want, ldc);
          // fp32 products summed over k terms: error <= k u sum|a||b| ~ k * 6e-8 * k / 3; scale by sqrt(k) sum.
          let worst = 0;
          for (let i = 0; i < m; i++)
            for (let j = 0; j < ldc; j++) {
              const idx = i * ldc + j;
              if (j >= n) {
                expect(got[idx]).toBe(c0[idx]); // padding between rows untouched
                continue;
              }
              worst = Math.max(worst, Math.abs(got[idx]! - want[idx]!));
            }
          expect(worst, `m=${m} n=${n} k=${k} ta=${ta} tb=${tb}`).toBeLessThanOrEqual(2e-6 * (Math.abs(alpha) * k + 1));
        }
      }
    }
  });
});

suite('bad input: one clear HypeError before native code runs', () => {
  const native = new NativeBackend({ threads: 2 });
  const shape: AttentionShape = { batch: 1, heads: 2, kvHeads: 1, lq: 4, lk: 5, headDim: 3, valueDim: 2 };
  const rng = new Rng(29);
  const q = uniform(rng, 24);
  const k = uniform(rng, 15);
  const v = uniform(rng, 10);
  const ok: AttentionOptions = { causal: true, scale: 0.5 };
  const fwd = (o: Partial<AttentionOptions> = {}, s: Partial<AttentionShape> = {}, qq = q, kk = k, vv = v) =>
    native.attentionForward({ ...shape, ...s }, qq, kk, vv, { ...ok, ...o });

  it('refuses fp64 arrays with the fix', () => {
    expectHypeError(
      () => native.attentionForward(shape, f64(q), k, v, ok),
      'argument',
      /fp32.*Float64Array.*reference/,
    );
    expectHypeError(
      () =>
        native.gemm(
          false,
          false,
          1,
          1,
          1,
          1,
          new Float64Array(1),
          1,
          new Float32Array(1),
          1,
          0,
          new Float32Array(1),
          1,
        ),
      'argument',
      /fp32/,
    );
  });

  it('refuses mismatched shapes and head dims', () => {
    expectHypeError(() => fwd({}, {}, q.subarray(1)), 'shape', /q has 23 elements.*B\*H\*Lq\*D = 24/);
    expectHypeError(() => fwd({}, { headDim: 4 }), 'shape', /q has 24 elements/);
    expectHypeError(() => fwd({}, { kvHeads: 3, heads: 2 }), 'shape', /multiple of kvHeads/);
    expectHypeError(() => fwd({}, { headDim: 0 }), 'shape', /headDim must be a positive integer/);
    expectHypeError(() => fwd({}, { lq: 2.5 }), 'shape', /lq must be a positive integer/);
    expectHypeError(() => fwd({}, {}, q, k, v.subarray(2)), 'shape', /v has 8 elements/);
  });

  it('reports where a non-finite value sits', () => {
    const bad = k.slice();
    bad[1 * 3 + 2] = NaN;
    expectHypeError(() => fwd({}, {}, q, bad), 'non-finite', /k holds NaN at index \[0, 0, 1, 2\]/);
    const inf = q.slice();
    inf[23] = -Infinity;
    expectHypeError(() => fwd({}, {}, inf), 'non-finite', /q holds -Infinity at index \[0, 1, 3, 2\]/);
    const { out, lse } = fwd();
    const dOut = new Float32Array(out.length);
    dOut[3] = Infinity;
    expectHypeError(
      () => native.attentionBackward(shape, q, k, v, out, lse, dOut, ok),
      'non-finite',
      /dOut holds Infinity/,
    );
  });

  it('finds non-finite values anywhere through the native scan (vector blocks, tail, lse rules)', () => {
    const big: AttentionShape = { batch: 1, heads: 2, kvHeads: 2, lq: 37, lk: 37, headDim: 33, valueDim: 33 };
    const n = 2 * 37 * 33;
    const x = uniform(rng, n);
    for (const at of [1000, n - 1, 0]) {
      const bad = x.slice();
      bad[at] = NaN;
      const h = Math.floor(at / (37 * 33));
      const i = Math.floor((at % (37 * 33)) / 33);
      const c = at % 33;
      expectHypeError(
        () => native.attentionForward(big, x, x, bad, ok),
        'non-finite',
        new RegExp(`v holds NaN at index \\[0, ${h}, ${i}, ${c}\\] \\(flat ${at}\\)`),
      );
    }
    const { out, lse } = native.attentionForward(big, x, x, x, ok);
    const badLse = lse.slice();
    badLse[70] = NaN;
    expectHypeError(() => native.attentionBackward(big, x, x, x, out, badLse, out, ok), 'non-finite', /lse holds NaN/);
    badLse[70] = -Infinity; // a row that saw no key: allowed
    expect(() => native.attentionBackward(big, x, x, x, out, badLse, out, ok)).not.toThrow();
  });

  it('refuses bad options', () => {
    expectHypeError(() => fwd({ scale: NaN }), 'argument', /scale must be a finite number/);
    expectHypeError(() => fwd({ scale: undefined as unknown as number }), 'argument', /scale/);
    expectHypeError(() => fwd({ causal: 1 as unknown as boolean }), 'argument', /causal/);
    expectHypeError(() => fwd({ queryOffset: 0.5 }), 'argument', /queryOffset must be an integer/);
  });

  it('refuses unknown or malformed biases', () => {
    expectHypeError(
      () => fwd({ bias: { kind: 'rope' } as unknown as PositionBias }),
      'argument',
      /unknown position bias kind "rope"/,
    );
    // shape: H = 2, Lq = 4, Lk = 5, default offset 1: span = 1 + 4 + 5 - 1 = 9; causal distances 0 .. 4.
    const table = (f: (j: number) => number = () => 0) => Float64Array.from({ length: 18 }, (_, j) => f(j));
    expectHypeError(
      () => fwd({ bias: { kind: 'distance', table: new Float64Array(17) } }),
      'shape',
      /distance table has 17 values but needs .* = 2 \* 9 = 18/,
    );
    expectHypeError(
      () => fwd({ bias: { kind: 'distance', table: new Int32Array(18) as unknown as Float64Array } }),
      'argument',
      /Float64Array or Float32Array/,
    );
    // Row 1, distance 2 sits at 9 + 2 + 4 = 15.
    expectHypeError(
      () => fwd({ bias: { kind: 'distance', table: table((j) => (j === 15 ? NaN : 0)) } }),
      'non-finite',
      /holds NaN for head 1 at distance 2 \(flat index 15\)/,
    );
    expectHypeError(
      () => fwd({ bias: { kind: 'distance', table: table((j) => (j === 15 ? 1e31 : 0)) } }),
      'overflow',
      /holds 1e\+31 for head 1 at distance 2.*float32/,
    );
    // -Infinity far away only zeroes a probability; at the nearest distance (0, index 9 + 0 + 4) it would empty rows.
    expect(() => fwd({ bias: { kind: 'distance', table: table((j) => (j === 15 ? -Infinity : 0)) } })).not.toThrow();
    expectHypeError(
      () => fwd({ bias: { kind: 'distance', table: table((j) => (j === 13 ? -Infinity : 0)) } }),
      'overflow',
      /holds -Infinity for head 1 at distance 0/,
    );
    // Unreachable (masked) distances are never read, whatever they hold.
    expect(() => fwd({ bias: { kind: 'distance', table: table((j) => (j % 9 < 4 ? NaN : 0)) } })).not.toThrow();
    expectHypeError(
      () => fwd({ causal: false, queryOffset: -1, bias: { kind: 'distance', table: new Float64Array(14) } }),
      'argument',
      /queryOffset >= 0/,
    );
  });

  it('refuses bad thread counts, gemm strides and backend names', () => {
    expectHypeError(() => new NativeBackend({ threads: 0 }), 'argument', /threads must be an integer from 1/);
    expectHypeError(() => native.setThreads(2.5), 'argument', /threads/);
    const a = new Float32Array(6);
    expectHypeError(() => native.gemm(false, false, 2, 2, 3, 1, a, 2, a, 2, 0, new Float32Array(4), 2), 'shape', /lda/);
    expectHypeError(
      () => native.gemm(false, false, 3, 2, 3, 1, a, 3, a, 2, 0, new Float32Array(6), 2),
      'shape',
      /A has 6/,
    );
    expectHypeError(
      () => native.gemm(false, false, 2, 2, 3, 1, a, 3, a, 2, 0, new Float32Array(3), 2),
      'shape',
      /C has 3/,
    );
    expectHypeError(() => loadBackend('gpu' as 'auto'), 'argument', /unknown backend "gpu"/);
    expect(loadBackend('native').name).toBe('native');
    expect(loadBackend('reference').name).toBe('reference');
  });

  it('never crashes the process when the addon itself is called with wrong arguments', () => {
    const raw = addon as NativeAddon;
    const p = {
      batch: 1,
      heads: 1,
      kvHeads: 1,
      lq: 4,
      lk: 4,
      headDim: 2,
      valueDim: 2,
      causal: true,
      scale: 1,
      queryOffset: 0,
      table: null,
    };
    const small = new Float32Array(3);
    expect(() => raw.attentionForward(p, small, small, small, small, small)).toThrow(/q has 3 elements, needs 8/);
    const eight = new Float32Array(8);
    const table = new Float64Array(3);
    expect(() => raw.attentionForward({ ...p, table }, eight, eight, eight, eight, eight)).toThrow(
      /table has 3 elements, needs 7/,
    );
    const pos = { ...p, causal: false, queryOffset: -1, table: new Float64Array(6) };
    expect(() => raw.attentionForward(pos, eight, eight, eight, eight, eight)).toThrow(/queryOffset >= 0/);
    expect(() => raw.gemm(false, false, 4, 4, 4, 1, small, 4, small, 4, 0, small, 4)).toThrow(/A has 3 elements/);
    expect(() => raw.setThreads(-1)).toThrow(/thread count/);
    expect(() => raw.firstNonFinite(new Float64Array(3) as unknown as Float32Array, false)).toThrow(/Float32Array/);
  });
});
