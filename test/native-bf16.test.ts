/**
 * The native bf16 kernels (gemm, fused attention forward and backward) on randomised shapes, three ways:
 *  - against fp64 on the unrounded fp32 inputs, with bounds from bf16's unit roundoff U = 2^-8 (each input and each
 *    internally rounded probability or dS carries a relative error <= U) and the reduction lengths;
 *  - against the fp64 emulation of the same bf16 arithmetic (src/backend/bf16.ts) on the same bf16 inputs, where
 *    only fp32 effects remain: accumulation (n terms: <= (n + c) 2^-24 of the sum of |terms|) and, when an fp32
 *    value lands within its error of a bf16 rounding boundary, a one-ulp (2^-7) flip of one rounded term;
 *  - the AVX512-BF16 kernel against the fp32 fallback (HYPE_NO_BF16=1): the same bound twice (each path is within it
 *    of the emulation).
 * Backward is checked against the fp64 reference gradient (referenceAttentionBackward, itself checked against
 * finite differences in reference-attention.test.ts) on the bf16-rounded inputs and the same out and lse, where the
 * difference is the rounding of P and dS (U of each term) plus the fp32 effects above.
 */
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import type { AttentionOptions, AttentionShape, PositionBias } from '../src/backend/backend.ts';
import {
  bf16KernelInfo,
  emulateAttentionBackwardBf16,
  emulateAttentionForwardBf16,
  emulateGemmBf16,
  fromBf16,
  nativeAttentionBackwardBf16,
  nativeAttentionForwardBf16,
  nativeGemmBf16,
  toBf16,
  type Magnitudes,
} from '../src/backend/bf16.ts';
import { loadNativeAddon, nativeLoadError } from '../src/backend/native.ts';
import { referenceAttentionBackward, referenceAttentionForward } from '../src/backend/reference-attention.ts';
import { HypeError } from '../src/errors.ts';
import { roundToBf16 } from '../src/numerics/float-formats.ts';
import { Rng } from '../src/util/rng.ts';

const addon = loadNativeAddon();
if (!addon && process.env.CI === 'true') throw new Error(`native addon missing in CI: ${nativeLoadError()}`);
const suite = addon ? describe : describe.skip;

const U = 2 ** -8; // bf16 unit roundoff (8-bit significand, round to nearest)
const E = 2 ** -24; // fp32 unit roundoff
const FLIP = 2 ** -7; // one bf16 ulp, relative

function uniform(rng: Rng, n: number, amp = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng.uniform() * 2 - 1) * amp;
  return a;
}
const maxAbs = (a: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
};

/** Runs fn with the fp32 fallback forced (HYPE_NO_BF16=1, read by the addon on every call). */
function onFallback<T>(fn: () => T): T {
  process.env.HYPE_NO_BF16 = '1';
  try {
    return fn();
  } finally {
    delete process.env.HYPE_NO_BF16;
  }
}

/** Every element within its tolerance; the message names the first failure. */
function expectWithin(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number) => number) {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < got.length; i++) {
    if (got[i] === want[i]) continue; // also -Infinity (an lse with no visible key) on both sides
    const err = Math.abs(got[i]! - want[i]!);
    if (!(err <= tol(i))) {
      expect.fail(`${what}[${i}]: got ${got[i]}, want ${want[i]}, error ${err} > tolerance ${tol(i)}`);
    }
  }
}

/** fp32 accumulation of n terms plus up to `flips` one-ulp flips of the largest rounded term (bounded by the sum). */
const fp32Tol = (m: Magnitudes, n: number, flips: number) => (i: number) =>
  (n + 8) * E * m.absSum[i]! + FLIP * Math.min(m.absSum[i]!, flips * m.maxTerm[i]!);

afterEach(() => {
  delete process.env.HYPE_NO_BF16;
});

suite('bf16 conversion', () => {
  it('rounds fp32 to bf16 bits to nearest even, natively and in JS, as roundToBf16 does', () => {
    const words = Uint32Array.of(
      0x00000000,
      0x80000000,
      0x7f800000,
      0xff800000, // zeros, infinities
      0x3f808000,
      0x3f818000,
      0x3f808001,
      0x3f807fff, // ties to even (down, up), just above and below a tie
      0x7f7fffff,
      0x7f7f8000,
      0xff7fffff, // past bf16's largest value: overflow to +-Infinity
      0x00008000,
      0x00018000,
      0x00000001,
      0x807fffff, // subnormals: ties, the smallest, the largest
      0x7fc00000,
      0x7f800001,
      0xffffffff, // NaNs (a payload only in the low half must stay NaN)
    );
    const rng = new Rng(7);
    const x = new Float32Array(words.length + 5000);
    new Uint32Array(x.buffer).set(words);
    for (let i = words.length; i < x.length; i++)
      x[i] = (rng.uniform() - 0.5) * 2 ** Math.floor(rng.uniform() * 60 - 30);
    const native = toBf16(x);
    const js = toBf16(x, { native: false });
    expect(Array.from(native)).toEqual(Array.from(js));
    const back = fromBf16(native);
    for (let i = 0; i < x.length; i++) {
      if (Number.isNaN(x[i]!)) expect(back[i], `NaN at ${i}`).toBeNaN();
      else expect(back[i], `element ${i} (${x[i]})`).toBe(roundToBf16(x[i]!));
    }
    // The gemm rounds fp32 operands as it packs them (vector body and scalar tails, both operands, every layout):
    // C over the special values equals C over toBf16's bits. k = 1 makes C = op(A) op(B) elementwise products.
    for (const k of [1, 2, 5]) {
      const m = 40;
      const n = 70; // a ragged panel and a vector tail
      const a32 = x.slice(0, m * k);
      const b32 = x.slice(100, 100 + k * n);
      for (const [transA, transB] of [false, true].flatMap((x) => [false, true].map((y) => [x, y] as const))) {
        const [lda, ldb] = [transA ? m : k, transB ? k : n];
        const gemm = (a: Float32Array | Uint16Array, b: Float32Array | Uint16Array) => {
          const c = new Float32Array(m * n);
          nativeGemmBf16(transA, transB, m, n, k, 1, a, lda, b, ldb, 0, c, n);
          return c;
        };
        expect(gemm(a32, b32), `k ${k} transA ${transA} transB ${transB}`).toEqual(gemm(toBf16(a32), toBf16(b32)));
      }
    }
  });
});

suite('native bf16 gemm', () => {
  it('reports the kernel in use, and HYPE_NO_BF16 forces the fallback', () => {
    const info = bf16KernelInfo();
    expect(info.fast).toBe(info.supported);
    expect(onFallback(() => bf16KernelInfo().fast)).toBe(false);
  });

  it('matches fp64 on fp32 inputs, the bf16 emulation, and the fallback (random shapes, transposes, strides)', () => {
    fc.assert(
      fc.property(
        fc.record({
          m: fc.integer({ min: 1, max: 100 }),
          n: fc.integer({ min: 1, max: 150 }),
          k: fc.oneof(fc.integer({ min: 1, max: 80 }), fc.integer({ min: 500, max: 1100 })),
          transA: fc.boolean(),
          transB: fc.boolean(),
          padA: fc.integer({ min: 0, max: 3 }),
          padB: fc.integer({ min: 0, max: 3 }),
          alpha: fc.constantFrom(1, -0.5, 2),
          beta: fc.constantFrom(0, 1, 0.5),
          seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        }),
        ({ m, n, k, transA, transB, padA, padB, alpha, beta, seed }) => {
          const rng = new Rng(seed);
          const lda = (transA ? m : k) + padA;
          const ldb = (transB ? k : n) + padB;
          const a32 = uniform(rng, (transA ? k : m) * lda);
          const b32 = uniform(rng, (transB ? n : k) * ldb);
          const c0 = uniform(rng, m * n);
          const [a, b] = [toBf16(a32), toBf16(b32)];
          const run = () => {
            const c = c0.slice();
            nativeGemmBf16(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, n);
            return c;
          };
          const fast = run();
          const slow = onFallback(run);
          // fp32 operands are rounded as the kernel packs them: the same bits as toBf16, so the same C exactly.
          const fused = (x: Float32Array | Uint16Array, y: Float32Array | Uint16Array) => {
            const c = c0.slice();
            nativeGemmBf16(transA, transB, m, n, k, alpha, x, lda, y, ldb, beta, c, n);
            return c;
          };
          expect(fused(a32, b32)).toEqual(fast);
          expect(fused(a, b32)).toEqual(fast);
          expect(fused(a32, b)).toEqual(fast);
          expect(onFallback(() => fused(a32, b32))).toEqual(slow);
          if (beta === 0) {
            // beta = 0 overwrites whatever C held, NaN included (the kernel stores instead of zeroing and adding).
            const c = new Float32Array(m * n).fill(NaN);
            nativeGemmBf16(transA, transB, m, n, k, alpha, a32, lda, b32, ldb, 0, c, n);
            expect(c).toEqual(fast);
          }
          const emu = emulateGemmBf16(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c0, n);
          // Native vs emulation: fp32 accumulation of k products (exact in fp32) plus rounding C and beta C.
          const tight = (i: number) => (k + 4) * E * (emu.mag.absSum[i]! + Math.abs(beta * c0[i]!));
          expectWithin('bf16 gemm vs emulation', fast, emu.c, tight);
          expectWithin('fallback gemm vs emulation', slow, emu.c, tight);
          expectWithin('bf16 gemm vs fallback', fast, slow, (i) => 2 * tight(i));
          // vs fp64 on the fp32 inputs: each product a b carries |a~ b~ - a b| <= (2U + U^2) |a b|.
          const exact = new Float64Array(m * n);
          for (let i = 0; i < m; i++)
            for (let j = 0; j < n; j++) {
              let s = 0;
              for (let kk = 0; kk < k; kk++)
                s += a32[transA ? kk * lda + i : i * lda + kk]! * b32[transB ? j * ldb + kk : kk * ldb + j]!;
              exact[i * n + j] = alpha * s + (beta === 0 ? 0 : beta * c0[i * n + j]!);
            }
          expectWithin('bf16 gemm vs fp64', fast, exact, (i) => (2 * U + U * U) * 1.01 * emu.mag.absSum[i]! + tight(i));
        },
      ),
      { numRuns: 25, seed: 18 },
    );
  });

  it('an exactly cancelling sum is +0 whatever alpha and C held, as 0 + alpha * sum gives', () => {
    for (const alpha of [1, -1])
      for (const fill of [-0, NaN, 5]) {
        const c = new Float32Array(3).fill(fill);
        // Row i of A is (1, -1) scaled; B's column is (1, 1): every product pair cancels exactly.
        nativeGemmBf16(
          false,
          false,
          3,
          1,
          2,
          alpha,
          Float32Array.of(1, -1, 2, -2, 0, -0),
          2,
          Float32Array.of(1, 1),
          1,
          0,
          c,
          1,
        );
        for (const x of c) expect(Object.is(x, 0), `alpha ${alpha}, C filled with ${fill}: ${x}`).toBe(true);
      }
  });

  it('refuses bad operands with one clear error', () => {
    const c = new Float32Array(4);
    const bits = new Uint16Array(4);
    const f64 = new Float64Array(4) as unknown as Uint16Array;
    expect(() => nativeGemmBf16(false, false, 2, 2, 2, 1, f64, 2, bits, 2, 0, c, 2)).toThrow(
      /A must be a Uint16Array of bf16 bits or a Float32Array/,
    );
    expect(() => nativeGemmBf16(false, false, 2, 2, 3, 1, bits, 3, bits, 2, 0, c, 2)).toThrow(HypeError);
    expect(() => nativeGemmBf16(false, false, 2, 2, 2, 1, bits, 1, bits, 2, 0, c, 2)).toThrow(/leading/);
  });
});

interface Case {
  shape: AttentionShape;
  opts: AttentionOptions;
  q32: Float32Array;
  k32: Float32Array;
  v32: Float32Array;
  g32: Float32Array;
}

const HEAD_DIMS = [1, 2, 3, 8, 16, 31, 64, 66, 70, 72];
const caseArb = fc
  .record({
    batch: fc.integer({ min: 1, max: 2 }),
    kvHeads: fc.integer({ min: 1, max: 2 }),
    group: fc.integer({ min: 1, max: 2 }),
    lq: fc.integer({ min: 1, max: 100 }),
    lk: fc.integer({ min: 1, max: 140 }),
    d: fc.constantFrom(...HEAD_DIMS),
    dv: fc.constantFrom(...HEAD_DIMS),
    causal: fc.boolean(),
    bias: fc.constantFrom('none', 'distance'),
    offset: fc.constantFrom('default', 'zero', 'ahead'),
    amp: fc.constantFrom(1, 3),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
  })
  .map((r): Case => {
    const rng = new Rng(r.seed);
    const heads = r.kvHeads * r.group;
    const shape: AttentionShape = {
      batch: r.batch,
      heads,
      kvHeads: r.kvHeads,
      lq: r.lq,
      lk: r.lk,
      headDim: r.d,
      valueDim: r.dv,
    };
    // A distance table without the causal mask needs queryOffset >= 0 (every distance must have an entry).
    const queryOffset =
      r.offset === 'zero'
        ? 0
        : r.offset === 'ahead'
          ? r.lk + 5
          : r.bias === 'distance' && !r.causal
            ? Math.max(0, r.lk - r.lq)
            : undefined;
    const qo = queryOffset ?? r.lk - r.lq;
    const span = Math.max(0, qo + r.lq + r.lk - 1);
    const bias: PositionBias =
      r.bias === 'distance'
        ? { kind: 'distance', table: Float64Array.from(uniform(rng, heads * span, 2)) }
        : { kind: 'none' };
    const opts: AttentionOptions = { causal: r.causal, scale: r.amp / Math.sqrt(r.d), queryOffset, bias };
    return {
      shape,
      opts,
      q32: uniform(rng, r.batch * heads * r.lq * r.d),
      k32: uniform(rng, r.batch * r.kvHeads * r.lk * r.d),
      v32: uniform(rng, r.batch * r.kvHeads * r.lk * r.dv),
      g32: uniform(rng, r.batch * heads * r.lq * r.dv),
    };
  });

/** Per query row: scale * max over keys of sum |q||k| (bounds a logit's rounding error), and max |logit|. */
function logitMagnitudes(c: Case, q: Float32Array, k: Float32Array) {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d } = c.shape;
  const dot = new Float64Array(B * H * lq);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < lq; i++) {
        const qb = ((b * H + h) * lq + i) * d;
        let m = 0;
        for (let l = 0; l < lk; l++) {
          const kb = ((b * Hkv + Math.floor(h / (H / Hkv))) * lk + l) * d;
          let s = 0;
          for (let x = 0; x < d; x++) s += Math.abs(q[qb + x]! * k[kb + x]!);
          m = Math.max(m, s);
        }
        dot[(b * H + h) * lq + i] = Math.abs(c.opts.scale) * m;
      }
  const bias = c.opts.bias?.kind === 'distance' ? maxAbs(c.opts.bias.table) : 0;
  return { dot, bias };
}

suite('native bf16 attention', () => {
  it('forward and backward match the emulation, the fallback, and fp64 (random shapes, GQA, masks, tables)', () => {
    fc.assert(
      fc.property(caseArb, (c) => {
        const { shape, opts } = c;
        const { lq, lk, headDim: d, valueDim: dv } = shape;
        const [q, k, v, g] = [toBf16(c.q32), toBf16(c.k32), toBf16(c.v32), toBf16(c.g32)];
        const fwd = nativeAttentionForwardBf16(shape, q, k, v, opts);
        const fwdSlow = onFallback(() => nativeAttentionForwardBf16(shape, q, k, v, opts));
        // fp32 operands, rounded by the addon: the same bits, so the same results exactly.
        expect(nativeAttentionForwardBf16(shape, c.q32, c.k32, c.v32, opts)).toEqual(fwd);
        expect(nativeAttentionForwardBf16(shape, q, c.k32, v, opts)).toEqual(fwd);
        const emu = emulateAttentionForwardBf16(shape, q, k, v, opts);
        const vMax = maxAbs(c.v32);
        const rowOf = (i: number) => Math.floor(i / dv);

        // Forward vs emulation: fp32 sums of Lk terms (numerator and denominator) and flips of rounded weights
        // (at most 4 flips of the row's largest weight w, each moving out by 2^-7 w (|v| + |out|)).
        const outTol = (i: number) =>
          (2 * lk + 8) * E * (emu.mag.absSum[i]! + Math.abs(emu.out[i]!)) +
          FLIP * Math.min(1, 4 * emu.maxWeight[rowOf(i)]!) * (vMax + Math.abs(emu.out[i]!));
        const lseTol = (r: number) =>
          (2 * lk + 8) * E + 4 * E * Math.abs(emu.lse[r]!) + FLIP * Math.min(1, 4 * emu.maxWeight[r]!);
        expectWithin('out vs emulation', fwd.out, emu.out, outTol);
        expectWithin('lse vs emulation', fwd.lse, emu.lse, lseTol);
        expectWithin('out fast vs fallback', fwd.out, fwdSlow.out, (i) => 2 * outTol(i));
        expectWithin('lse fast vs fallback', fwd.lse, fwdSlow.lse, (r) => 2 * lseTol(r));

        // Forward vs fp64 on the fp32 inputs: rounding q and k moves each logit by <= dS = (2U + U^2) scale
        // sum |q||k|; with each weight's own rounding (U) every weight is off by a factor within
        // [e^-dS (1 - U), e^dS (1 + U)], so the normalised output moves by <= (e^2dS (1+U)/(1-U) - 1)(|v| + |out|),
        // and rounding v adds U |v|. lse moves by <= dS + U/(1-U).
        const ref = referenceAttentionForward(
          shape,
          Float64Array.from(c.q32),
          Float64Array.from(c.k32),
          Float64Array.from(c.v32),
          opts,
        );
        const mags = logitMagnitudes(c, c.q32, c.k32);
        const dS = (r: number) => (2 * U + U * U) * mags.dot[r]! * 1.01 + 4 * E * mags.bias;
        expectWithin('out vs fp64', fwd.out, ref.out, (i) => {
          const eta = Math.exp(2 * dS(rowOf(i))) * ((1 + U) / (1 - U)) - 1;
          return eta * (vMax + Math.abs(ref.out[i]!)) + U * vMax + outTol(i);
        });
        expectWithin('lse vs fp64', fwd.lse, ref.lse, (r) => dS(r) + U / (1 - U) + lseTol(r));

        // Backward (from the native forward's out and lse, as in training).
        const bwd = nativeAttentionBackwardBf16(shape, q, k, v, fwd.out, fwd.lse, g, opts);
        const bwdSlow = onFallback(() => nativeAttentionBackwardBf16(shape, q, k, v, fwd.out, fwd.lse, g, opts));
        expect(nativeAttentionBackwardBf16(shape, c.q32, c.k32, c.v32, fwd.out, fwd.lse, c.g32, opts)).toEqual(bwd);
        expect(
          onFallback(() => nativeAttentionBackwardBf16(shape, c.q32, c.k32, c.v32, fwd.out, fwd.lse, c.g32, opts)),
        ).toEqual(bwdSlow);
        const emb = emulateAttentionBackwardBf16(shape, q, k, v, fwd.out, fwd.lse, g, opts);
        // fp32 effects on dS = P (dP - delta): P from an fp32 logit (relative error epsP: the logit's sum of d
        // products, the bias, lse, and exp), and dP - delta summed over dv products each (absolute error A per
        // row, P A per key); then the products' own fp32 sums and flips of rounded P or dS.
        const [qv, kv] = [fromBf16(q), fromBf16(k)];
        const bm = logitMagnitudes(c, qv, kv);
        const epsP = 2 ** -20 + (d + 4) * E * maxAbs(bm.dot) + 4 * E * (bm.bias + maxAbs(fwd.lse) + maxAbs(bm.dot));
        const A = (dv + 4) * E * maxAbs(c.g32) * dv * (vMax + maxAbs(fwd.out));
        const scale = Math.abs(opts.scale);
        const gradTol = (m: Magnitudes, n: number, extra: number) => {
          const base = fp32Tol(m, n, 4);
          return (i: number) => base(i) + epsP * m.absSum[i]! + extra;
        };
        const dvTol = gradTol(emb.mag.dv, lq, 0);
        const dqTol = gradTol(emb.mag.dq, lk, scale * maxAbs(kv) * A);
        const dkTol = gradTol(emb.mag.dk, lq, scale * maxAbs(qv) * A * lq);
        expectWithin('dv vs emulation', bwd.dv, emb.dv, dvTol);
        expectWithin('dq vs emulation', bwd.dq, emb.dq, dqTol);
        expectWithin('dk vs emulation', bwd.dk, emb.dk, dkTol);
        expectWithin('dv fast vs fallback', bwd.dv, bwdSlow.dv, (i) => 2 * dvTol(i));
        expectWithin('dq fast vs fallback', bwd.dq, bwdSlow.dq, (i) => 2 * dqTol(i));
        expectWithin('dk fast vs fallback', bwd.dk, bwdSlow.dk, (i) => 2 * dkTol(i));
        let tableTol: ((i: number) => number) | null = null;
        if (emb.dTable && emb.mag.dTable && bwd.dBias.kind === 'distance') {
          // dS unrounded, summed over up to B Lq pairs per distance.
          tableTol = gradTol(emb.mag.dTable, shape.batch * lq + 64, A * shape.batch * lq);
          expectWithin('dTable vs emulation', bwd.dBias.table, emb.dTable, tableTol);
        }

        // vs the fp64 reference gradient on the bf16 inputs with the same out and lse: the reference does not
        // round P or dS, which moves each term by <= U of itself (dTable: no rounding).
        const ref64 = referenceAttentionBackward(
          shape,
          Float64Array.from(qv),
          Float64Array.from(kv),
          Float64Array.from(fromBf16(v)),
          Float64Array.from(fwd.out),
          Float64Array.from(fwd.lse),
          Float64Array.from(fromBf16(g)),
          opts,
        );
        const withRounding = (m: Magnitudes, t: (i: number) => number) => (i: number) => 1.01 * U * m.absSum[i]! + t(i);
        expectWithin('dv vs fp64', bwd.dv, ref64.dv, withRounding(emb.mag.dv, dvTol));
        expectWithin('dq vs fp64', bwd.dq, ref64.dq, withRounding(emb.mag.dq, dqTol));
        expectWithin('dk vs fp64', bwd.dk, ref64.dk, withRounding(emb.mag.dk, dkTol));
        if (tableTol && bwd.dBias.kind === 'distance' && ref64.dBias.kind === 'distance')
          expectWithin('dTable vs fp64', bwd.dBias.table, ref64.dBias.table, tableTol);
      }),
      { numRuns: 30, seed: 18 },
    );
  });

  it('emulates the kernels rounding: probabilities are bf16 values on a power-of-two grid', () => {
    // One query, keys with logits 0 and ln(1.5)+tiny: exp gives 1 and 1.5000x, which bf16 rounds to 1.5.
    const shape: AttentionShape = { batch: 1, heads: 1, kvHeads: 1, lq: 1, lk: 2, headDim: 1, valueDim: 1 };
    const q = toBf16([1]);
    const k = toBf16([0, roundToBf16(Math.log(1.5) + 0.001)]);
    const v = toBf16([0, 1]);
    const emu = emulateAttentionForwardBf16(shape, q, k, v, { causal: false, scale: 1 });
    const p1 = roundToBf16(Math.exp(fromBf16(k)[1]!) / 2); // on the grid c = ln2: both weights halve exactly
    expect(emu.out[0]).toBeCloseTo(p1 / (0.5 + p1), 12);
    expect(nativeAttentionForwardBf16(shape, q, k, v, { causal: false, scale: 1 }).out[0]).toBeCloseTo(emu.out[0]!, 6);
  });

  it('refuses bad operands with one clear error', () => {
    const shape: AttentionShape = { batch: 1, heads: 1, kvHeads: 1, lq: 2, lk: 2, headDim: 2, valueDim: 2 };
    const x = new Uint16Array(4);
    const opts = { causal: false, scale: 1 };
    expect(() => nativeAttentionForwardBf16(shape, new Float64Array(4) as unknown as Uint16Array, x, x, opts)).toThrow(
      /q must be a Uint16Array of bf16 bits .* or a Float32Array/,
    );
    expect(() => nativeAttentionForwardBf16(shape, new Uint16Array(3), x, x, opts)).toThrow(/B\*H\*Lq\*D/);
    expect(() => nativeAttentionForwardBf16(shape, Uint16Array.of(0, 0x7f80, 0, 0), x, x, opts)).toThrow(/Infinity/);
    // fp32 operands are refused where their bf16 rounding is not finite: beyond bf16's largest value (the fp32
    // 0x7f7f8000 and above round to Infinity), Infinity itself, NaN; the largest value rounding to a finite bf16 passes.
    const f32 = (bits: number) => new Float32Array(Uint32Array.of(0, 0, bits, 0).buffer);
    const y = new Float32Array(4);
    expect(() => nativeAttentionForwardBf16(shape, f32(0xff7f8000), y, y, opts)).toThrow(
      /q holds Infinity at flat index 2/,
    );
    expect(() => nativeAttentionForwardBf16(shape, y, f32(0x7f800000), y, opts)).toThrow(
      /k holds Infinity at flat index 2/,
    );
    expect(() => nativeAttentionForwardBf16(shape, y, y, f32(0x7fc00000), opts)).toThrow(/v holds NaN at flat index 2/);
    expect(nativeAttentionForwardBf16(shape, f32(0x7f7f7fff), y, y, opts).lse.every(Number.isFinite)).toBe(true);
    expect(() =>
      nativeAttentionForwardBf16(shape, x, x, x, {
        ...opts,
        bias: { kind: 'dense', heads: 1, bias: new Float64Array(4) },
      }),
    ).toThrow(/distance/);
    const f = nativeAttentionForwardBf16(shape, x, x, x, opts);
    expect(() =>
      nativeAttentionBackwardBf16(shape, x, x, x, f.out, f.lse, Uint16Array.of(0x7fc0, 0, 0, 0), opts),
    ).toThrow(/NaN/);
  });
});
