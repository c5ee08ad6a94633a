/**
 * alibi-learned (trained log-slopes) and ALiBi's concat route (two linear columns per head, SPEC section 9):
 * forward against the fp64 dense reference, every gradient (q, k, v, log-slopes) against central finite
 * differences, the concat route against the in-kernel route in fp64 and fp32, and split vs plain columns in
 * emulated bf16.
 */
import { describe, expect, it } from 'vitest';
import { alibiEncoding } from '../src/pe/alibi.ts';
import { alibiLearnedEncoding } from '../src/pe/alibi-learned.ts';
import { alibiColumns } from '../src/pe/alibi-route.ts';
import { alibiSlopes } from '../src/pe/alibi-slopes.ts';
import { BF16, roundTo } from '../src/numerics/float-formats.ts';
import { expandColumns } from '../src/numerics/split-columns.ts';
import { Rng } from '../src/util/rng.ts';
import {
  contextFor,
  forwardError,
  gradientErrors,
  randomInputs,
  shapeOf,
  standardCases,
  worst,
} from './helpers/encoding-checks.ts';

const dims = { heads: 4, kvHeads: 2, headDim: 8, modelDim: 32, trainLength: 16 };
const causalCases = standardCases().filter((c) => c.causal);

describe('alibi-learned', () => {
  it('starts at the reference slopes, stored as log-slopes without weight decay', () => {
    const enc = alibiLearnedEncoding.create(dims, {}, new Rng(1));
    expect(enc.params.map((p) => p.name)).toEqual(['alibi.logSlope']);
    expect(enc.params[0]!.decay).toBe(false);
    expect(Array.from(enc.params[0]!.data, Math.exp)).toEqual(
      Array.from(alibiSlopes(4)).map((m) => expect.closeTo(m, 15)),
    );
  });

  // fp64 both sides: rounding ~1e-15, asserted at 1e-12. Log-slopes moved off the reference so a slope/log-slope
  // mix-up would show.
  for (const route of ['kernel', 'concat'] as const) {
    const cases = route === 'kernel' ? standardCases() : causalCases;
    it.each(cases)(`route ${route}: attend matches dense logits, gradients match finite differences: $label`, (c) => {
      const enc = alibiLearnedEncoding.create(dims, { route }, new Rng(1));
      enc.params[0]!.data.forEach((s, h, a) => (a[h] = s + 0.3 * (h - 1.5)));
      const ctx = contextFor(c.shape, c.causal, c.queryOffset);
      expect(forwardError(enc, ctx, randomInputs(c.shape, 81))).toBeLessThan(1e-12);
      // central differences at h = 1e-5 in fp64: ~1e-10 relative (gradcheck.ts); 1e-6 asserted
      const errors = gradientErrors(enc, ctx, randomInputs(c.shape, 82));
      expect(Object.keys(errors)).toContain('param alibi.logSlope');
      expect(worst(errors)).toBeLessThan(1e-6);
    });
  }

  it('accumulates slope gradients across calls and refuses options of the other route', () => {
    const enc = alibiLearnedEncoding.create(dims, {}, new Rng(1));
    const c = causalCases[0]!;
    const ctx = contextFor(c.shape, true, c.queryOffset);
    const inputs = randomInputs(c.shape, 3);
    const dOut = new Float64Array(c.shape.batch * c.shape.heads * c.shape.lq * c.shape.valueDim).fill(1);
    enc.attend(ctx, inputs).backward(dOut);
    const once = Float64Array.from(enc.params[0]!.grad);
    expect(once.some((g) => g !== 0)).toBe(true);
    enc.attend(ctx, inputs).backward(dOut);
    enc.params[0]!.grad.forEach((g, h) => expect(g).toBeCloseTo(2 * once[h]!, 12));
    expect(() => alibiLearnedEncoding.create(dims, { format: 'bf16' }, new Rng(1))).toThrow(/route=concat/);
    expect(() => alibiLearnedEncoding.create(dims, { route: 'fused' as 'kernel' }, new Rng(1))).toThrow(
      /'kernel' or 'concat'/,
    );
  });
});

describe("alibi route 'concat' (two linear columns per head on an unmodified kernel)", () => {
  const kernel = alibiEncoding.create(dims, {}, new Rng(1));
  const concat = alibiEncoding.create(dims, { route: 'concat', multiple: 8 }, new Rng(1));

  it.each(causalCases)('equals the in-kernel ALiBi in fp64 to 1e-12: $label', (c) => {
    const ctx = contextFor(c.shape, true, c.queryOffset);
    const inputs = randomInputs(c.shape, 91);
    const a = concat.attend(ctx, inputs).out;
    const b = kernel.attend(ctx, inputs).out;
    let diff = 0;
    for (let j = 0; j < a.length; j++) diff = Math.max(diff, Math.abs(a[j]! - b[j]!));
    expect(diff).toBeLessThan(1e-12);
    expect(forwardError(concat, ctx, inputs)).toBeLessThan(1e-12);
    expect(worst(gradientErrors(concat, ctx, randomInputs(c.shape, 92)))).toBeLessThan(1e-6);
  });

  it('equals the in-kernel ALiBi in fp32 within fp32 rounding', () => {
    // L = 64, slope 1/2: columns up to |m (i - c)| sqrt(d) ~ 45 and |l - c| <= 32, so each bias is a sum of two
    // products of size ~1e3 rounded at u = 6e-8: ~1.2e-4 logits at worst, hence the output (convex weights of
    // |v| <= ~4) moves by < 4 * 1.2e-4 = 5e-4. The in-kernel route's own fp32 error is far smaller.
    const shape = shapeOf({ batch: 1, heads: 4, kvHeads: 2, lq: 64, lk: 64 });
    const ctx = contextFor(shape, true, 0);
    const f64 = randomInputs(shape, 93);
    const f32 = { q: Float32Array.from(f64.q), k: Float32Array.from(f64.k), v: Float32Array.from(f64.v) };
    const exact = kernel.attend(ctx, f64).out;
    const a = concat.attend(ctx, f32).out;
    const b = kernel.attend(ctx, f32).out;
    expect(a).toBeInstanceOf(Float32Array);
    let concatErr = 0;
    let kernelErr = 0;
    for (let j = 0; j < a.length; j++) {
      concatErr = Math.max(concatErr, Math.abs(a[j]! - exact[j]!));
      kernelErr = Math.max(kernelErr, Math.abs(b[j]! - exact[j]!));
    }
    expect(concatErr).toBeLessThan(5e-4);
    expect(kernelErr).toBeLessThan(5e-4);
  });

  it('split columns beat plain ones in emulated bf16 (bias recovered from the rounded columns)', () => {
    // L = 2048, 8 heads (slopes 1/2 .. 1/256): the operands rounded to bf16 (u = 2^-9), products exact and summed
    // in fp64, as a bf16 kernel with fp32 accumulation does. Plain: |m (i - c)| and |l - c| up to ~1e3 each carry a
    // relative error u, so the bias is off by up to ~m L u ~ 2 logits for m = 1/2. Split: O(u^2) relative; with
    // these power-of-two slopes and integer positions every column needs <= 16 significant bits, so hi + lo holds
    // it exactly and the split bias is exact (a trained slope would leave ~u^2 |m| L ~ 1e-2).
    const L = 2048;
    const H = 8;
    const shape = shapeOf({ batch: 1, heads: H, kvHeads: 1, lq: L, lk: L });
    const ctx = contextFor(shape, true, 0);
    const slopes = alibiSlopes(H);
    const { x, y } = alibiColumns(ctx, slopes);
    const err = (split: 'bf16' | null): number => {
      const xs = expandColumns(x, H * L, 2, 'query', split).map((v) => roundTo(BF16, v));
      const ys = expandColumns(y, L, 2, 'key', split).map((v) => roundTo(BF16, v));
      const w = split ? 6 : 2;
      let worstErr = 0;
      for (let h = 0; h < H; h++)
        for (let i = 0; i < L; i += 7)
          for (let l = 0; l <= i; l += 5) {
            let bias = 0;
            for (let s = 0; s < w; s++) bias += xs[(h * L + i) * w + s]! * ys[l * w + s]!;
            worstErr = Math.max(worstErr, Math.abs(bias + slopes[h]! * (i - l)));
          }
      return worstErr;
    };
    const plain = err(null);
    const split = err('bf16');
    console.log(`[alibi concat bf16] max bias error plain ${plain.toExponential(2)}, split ${split.toExponential(2)}`);
    expect(plain).toBeGreaterThan(0.5);
    expect(split).toBeLessThan(plain / 100);
  });

  it('split beats plain in emulated bf16 through attend (q = k = 0, bf16-exact values)', () => {
    const shape = shapeOf({ batch: 1, heads: 4, kvHeads: 1, lq: 512, lk: 512, headDim: 8, valueDim: 4 });
    const ctx = contextFor(shape, true, 0);
    const v = new Float64Array(512 * 4);
    new Rng(5).fillNormal(v);
    const inputs = {
      q: new Float64Array(4 * 512 * 8),
      k: new Float64Array(512 * 8),
      v: v.map((t) => roundTo(BF16, t)),
    };
    const exact = kernel.attend(ctx, inputs).out;
    const errOf = (columns: 'plain' | 'split'): number => {
      const enc = alibiEncoding.create(dims, { route: 'concat', format: 'bf16', columns }, new Rng(1));
      const out = enc.attend(ctx, inputs).out;
      let e = 0;
      for (let j = 0; j < out.length; j++) e = Math.max(e, Math.abs(out[j]! - exact[j]!));
      return e;
    };
    const plain = errOf('plain');
    const split = errOf('split');
    console.log(
      `[alibi concat bf16 attend] max output error plain ${plain.toExponential(2)}, split ${split.toExponential(2)}`,
    );
    expect(split).toBeLessThan(plain / 10);
  });

  it('refuses bidirectional attention with a clear error', () => {
    const c = standardCases().find((s) => !s.causal)!;
    expect(() => concat.attend(contextFor(c.shape, false, 0), randomInputs(c.shape, 1))).toThrow(/needs causal/);
  });
});
