/**
 * hype-gated (HyPE with a per-query amplitude softplus(w.x + b) as concat columns): attend against the fp64 dense
 * reference (s * tau sinh(mu D) from the definition), every gradient (q, k, v, x, the gate's w and b, HyPE's tau and
 * mu or slope and mu) against central finite differences, the identity at initialisation (s = 1: plain HyPE), the
 * report hook, split vs plain columns in emulated bf16, and refusals. Cached decoding: generate-cache.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { BF16, roundTo } from '../src/numerics/float-formats.ts';
import { GATE_BIAS_INIT, hypeGatedFactory } from '../src/pe/hype-gated.ts';
import { hypeEncoding } from '../src/pe/hype/encoding.ts';
import type { PositionalEncoding } from '../src/pe/encoding.ts';
import { Rng } from '../src/util/rng.ts';
import {
  bf16ColumnErrors,
  blockInputGradError,
  contextFor,
  randomInputsWithX,
  forwardError,
  gradientErrors,
  shapeOf,
  standardCases,
  worst,
} from './helpers/encoding-checks.ts';

const C = 6;
const dims = { heads: 4, kvHeads: 2, headDim: 8, modelDim: C, trainLength: 16 };
// A short window and a strong curvature, so the bias is several logits and sinh's curvature is visible at L = 8.
const strong = { lengthExtra: 8, curvature: 1 };

const withX = (shape: ReturnType<typeof shapeOf>, seed: number) => randomInputsWithX(shape, seed, C);

/** Gates that vary: w ~ N(0, 0.5^2), b around the init, so s spans ~0.2 .. 3 across queries and heads. */
function randomiseGate(enc: PositionalEncoding, seed: number): void {
  const w = enc.params.find((p) => p.name === 'hype-gated.w')!;
  const b = enc.params.find((p) => p.name === 'hype-gated.b')!;
  new Rng(seed).fillNormal(w.data, 0.5);
  new Rng(seed + 1).fillNormal(b.data, 0.5);
}

describe('hype-gated', () => {
  const parametrisations = ['tau-mu', 'slope-curvature'] as const;
  for (const parametrisation of parametrisations) {
    // fp64 both sides (~1e-15); asserted at 1e-12. Gradients: central differences in fp64 (gradcheck.ts), 1e-6.
    it.each(standardCases())(
      `${parametrisation}: attend = dense reference, every gradient = finite differences: $label`,
      (c) => {
        const enc = hypeGatedFactory.create(
          { ...dims, kvHeads: c.shape.kvHeads },
          { ...strong, parametrisation },
          new Rng(3),
        );
        randomiseGate(enc, 5);
        const ctx = contextFor(c.shape, c.causal, c.queryOffset);
        const inputs = withX(c.shape, 41);
        expect(forwardError(enc, ctx, inputs)).toBeLessThan(1e-12);
        const errors = gradientErrors(enc, ctx, inputs);
        const first = parametrisation === 'tau-mu' ? 'hype.tau' : 'hype.slope';
        expect(Object.keys(errors)).toEqual([
          'q',
          'k',
          'v',
          `param ${first}`,
          'param hype.mu',
          'param hype-gated.w',
          'param hype-gated.b',
        ]);
        expect(worst(errors)).toBeLessThan(1e-6);
        expect(blockInputGradError(enc, ctx, inputs)).toBeLessThan(1e-6);
      },
    );
  }

  it('starts as plain HyPE: s = softplus(log(e - 1)) = 1, outputs and tau/mu gradients equal hype learned', () => {
    expect(Math.log1p(Math.exp(GATE_BIAS_INIT))).toBeCloseTo(1, 15);
    const shape = shapeOf({ lq: 6, lk: 6 });
    const ctx = contextFor(shape, true, 0);
    const inputs = withX(shape, 7);
    const gated = hypeGatedFactory.create(dims, strong, new Rng(1));
    const plain = hypeEncoding.create(dims, { preset: 'learned', ...strong }, new Rng(1));
    const a = gated.attend(ctx, inputs);
    const b = plain.attend(ctx, inputs);
    // Same arithmetic up to the columns' 1/sqrt(d) * sqrt(d) round trip and s's last bit: ~1e-15.
    for (let j = 0; j < a.out.length; j++) expect(Math.abs(a.out[j]! - b.out[j]!)).toBeLessThan(1e-13);
    const dOut = new Float64Array(a.out.length).fill(0.5);
    a.backward(dOut);
    b.backward(dOut);
    for (const name of ['hype.tau', 'hype.mu']) {
      const ga = gated.params.find((p) => p.name === name)!.grad;
      const gb = plain.params.find((p) => p.name === name)!.grad;
      for (let j = 0; j < ga.length; j++)
        expect(Math.abs(ga[j]! - gb[j]!)).toBeLessThan(1e-12 * (1 + Math.abs(gb[j]!)));
    }
    // w = 0 at init, but its gradient is not: the gate can learn from the first step.
    const dw = gated.params.find((p) => p.name === 'hype-gated.w')!.grad;
    expect(Math.max(...Array.from(dw, Math.abs))).toBeGreaterThan(1e-6);
  });

  it('report: HyPE slope/curvature and the gate values seen since the last report', () => {
    const shape = shapeOf({ lq: 5, lk: 5 });
    const enc = hypeGatedFactory.create(dims, strong, new Rng(1));
    randomiseGate(enc, 2);
    const inputs = withX(shape, 3);
    const ctx = contextFor(shape, true, 0);
    const logits = enc.denseLogits(ctx, inputs, 0); // scale 0: the logits are the bias s * tau sinh(mu D)
    enc.attend(ctx, inputs);
    const r = enc.report!();
    expect(r.curvature).toEqual([1, 1, 1, 1]);
    expect(r.slope!.map((m) => m.toFixed(12))).toEqual([0.25, 0.0625, 0.015625, 0.00390625].map((m) => m.toFixed(12)));
    // s of query i, head h recovered from its logit at D = 1: bias = s tau sinh(mu).
    const tau = r.tau!;
    const mu = r.mu!;
    for (let h = 0; h < 4; h++) {
      const s: number[] = [];
      for (let bI = 0; bI < 2; bI++)
        for (let i = 1; i < 5; i++) s.push(logits[((bI * 4 + h) * 5 + i) * 5 + i - 1]! / (tau[h]! * Math.sinh(mu[h]!)));
      // Row 0 has no D = 1 key; its s enters the stats too, so compare min/max bounds and the count-weighted mean.
      expect(r['gate.sMin']![h]!).toBeLessThanOrEqual(Math.min(...s) + 1e-12);
      expect(r['gate.sMax']![h]!).toBeGreaterThanOrEqual(Math.max(...s) - 1e-12);
      expect(r['gate.sStd']![h]!).toBeGreaterThan(0);
    }
    expect(enc.report!()['gate.sMean']).toEqual([]); // reset by the previous report
  });

  it('split columns beat plain ones in emulated bf16', () => {
    // L = 256, recency slopes up to 1/2 over a 256 window: |s tau| ~ m L_extra / c ~ 256 for the steepest head, so
    // a bf16 column (u = 2^-9) is off by O(0.5) logits; split ones by O(u^2) of that. q, k zero and v bf16-exact,
    // so only the columns' rounding differs from the fp64 route.
    const L = 256;
    const shape = shapeOf({ batch: 1, heads: 2, kvHeads: 2, lq: L, lk: L, valueDim: 4 });
    const ctx = contextFor(shape, true, 0);
    const x = new Float64Array(L * C);
    new Rng(2).fillNormal(x, 0.3);
    const v = new Float64Array(2 * L * 4);
    new Rng(3).fillNormal(v);
    const inputs = {
      q: new Float64Array(2 * L * 8),
      k: new Float64Array(2 * L * 8),
      v: v.map((t) => roundTo(BF16, t)),
      x,
    };
    const make = (o: object) => {
      const enc = hypeGatedFactory.create({ ...dims, heads: 2, kvHeads: 2 }, { lengthExtra: L, ...o }, new Rng(4));
      randomiseGate(enc, 6);
      return enc;
    };
    const { plain, split } = bf16ColumnErrors(make, ctx, inputs);
    console.log(`[hype-gated bf16] max output error plain ${plain.toExponential(2)}, split ${split.toExponential(2)}`);
    expect(split).toBeLessThan(plain / 10);
  });

  it('refuses a missing x, queries beyond x, a grid and the kernel route', () => {
    const enc = hypeGatedFactory.create(dims, {}, new Rng(1));
    const shape = shapeOf({ lq: 4, lk: 4 });
    const inputs = withX(shape, 1);
    expect(() => enc.attend(contextFor(shape, true, 0), { ...inputs, x: undefined })).toThrow(/pass inputs.x/);
    expect(() => enc.attend(contextFor(shape, true, 2), inputs)).toThrow(/queryOffset <= Lk - Lq/);
    expect(() => hypeGatedFactory.create(dims, { route: 'kernel' } as never, new Rng(1))).toThrow(/no option 'route'/);
    expect(() => hypeGatedFactory.create(dims, { grid: [2, 2] } as never, new Rng(1))).toThrow(/no option 'grid'/);
  });
});
