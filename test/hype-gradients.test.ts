/**
 * Backward of the concat route: dQ, dK, dtau and dmu (SPEC section 5) through the reference attention, against
 * central finite differences of the same fp64 loss (relative error <= 1e-6, test/helpers/gradcheck.ts), with plain
 * columns and with split columns (SPEC section 8).
 *
 * Split columns are checked two ways. Split at fp32 granularity (hi/lo in fp32, arithmetic in fp64) the loss is
 * smooth to ~u_fp32^2 = 3.6e-15 relative, so central differences of the split loss itself apply at 1e-6. Split in
 * bf16 the hi part jumps by an ulp as a parameter moves (lo compensates to ~u^2 = 1.5e-5 relative of each product),
 * which finite differences cannot follow; there the split's gradients are compared with central differences of
 * the exact (plain fp64) loss, and they may differ by what the split leaves of the bias: ~u_bf16^2 times the
 * products (|tau| sqrt(d) / 2 e^{|mu| L} < 5 here), ~1e-4 of the gradients' scale; the bound is 1e-3.
 */
import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { augment, augmentBackward, type AugmentOptions, type HypeSpec } from '../src/pe/hype/core.ts';
import { Rng } from '../src/util/rng.ts';
import { maxRelativeGradError, sampleIndices } from './helpers/gradcheck.ts';

const backend = new ReferenceBackend();

function randn(rng: Rng, n: number, std = 1): Float64Array {
  const a = new Float64Array(n);
  rng.fillNormal(a, std);
  return a;
}

const LAYOUTS: { label: string; opts: AugmentOptions; width: number; tolerance: number; exactLoss: boolean }[] = [
  { label: 'plain columns', opts: {}, width: 2, tolerance: 1e-6, exactLoss: false },
  { label: 'split columns (fp32 hi/lo)', opts: { columns: 'split' }, width: 6, tolerance: 1e-6, exactLoss: false },
  { label: 'split columns (bf16 hi/lo)', opts: { precision: 'bf16' }, width: 6, tolerance: 1e-3, exactLoss: true },
];

describe('HyPE concat-route gradients vs central differences', () => {
  for (const { name, grid, termAxis, L, causal } of [
    { name: '1-D, stacked pairs (n = 2), GQA, causal', grid: [], termAxis: [0, 0], L: 14, causal: true },
    { name: '1-D, one pair, bidirectional', grid: [], termAxis: [0], L: 11, causal: false },
    { name: '2-D grid 3 x 4, bidirectional', grid: [3, 4], termAxis: [0, 1], L: 12, causal: false },
  ])
    for (const layout of LAYOUTS) {
      it(`${name}, ${layout.label}`, () => {
        const rng = new Rng(31);
        const H = 4;
        const Hkv = grid.length ? 4 : 2;
        const T = termAxis.length;
        const d = 3;
        const shape: AttentionShape = { batch: 2, heads: H, kvHeads: Hkv, lq: L, lk: L, headDim: d, valueDim: 2 };
        const q = randn(rng, 2 * H * L * d);
        const k = randn(rng, 2 * Hkv * L * d);
        const v = randn(rng, 2 * Hkv * L * 2);
        const w = randn(rng, 2 * H * L * 2); // loss = sum(w * out)
        // tau of both signs, |mu| (L-1) up to ~1.5 so cosh terms matter; mu lives per KV group (GQA shares it).
        const tau = Float64Array.from({ length: H * T }, () => rng.normal());
        const muGroup = Float64Array.from({ length: Hkv * T }, () => (rng.uniform() - 0.5) * (3 / L));
        const group = H / Hkv;
        const spec = (): HypeSpec => {
          const mu = new Float64Array(H * T);
          for (let h = 0; h < H; h++)
            for (let t = 0; t < T; t++) mu[h * T + t] = muGroup[Math.floor(h / group) * T + t]!;
          return { heads: H, kvHeads: Hkv, headDim: d, grid, termAxis, tau, mu };
        };
        const forward = (columns: AugmentOptions = layout.opts) => {
          const s = spec();
          const aug = augment(s, shape, q, k, { v, multiple: 4, ...columns });
          const opts = { causal, scale: aug.scale };
          const f = backend.attentionForward(aug.shape, aug.qHat, aug.kHat, aug.vHat!, opts);
          return { s, aug, opts, f };
        };
        const loss = () => {
          const { f, aug } = forward(layout.exactLoss ? {} : layout.opts);
          const dvp = aug.shape.valueDim;
          let sum = 0;
          for (let r = 0; r < 2 * H * L; r++) for (let c = 0; c < 2; c++) sum += w[r * 2 + c]! * f.out[r * dvp + c]!;
          return sum;
        };
        const { s, aug, opts, f } = forward();
        expect(aug.shape.headDim).toBe(Math.ceil((d + layout.width * T) / 4) * 4);
        const dvp = aug.shape.valueDim;
        const dOut = new Float64Array(2 * H * L * dvp);
        for (let r = 0; r < 2 * H * L; r++) for (let c = 0; c < 2; c++) dOut[r * dvp + c] = w[r * 2 + c]!;
        const g = backend.attentionBackward(aug.shape, aug.qHat, aug.kHat, aug.vHat!, f.out, f.lse, dOut, opts);
        const grads = augmentBackward(s, aug, g.dq, g.dk);
        expect(grads.dq.length).toBe(q.length);
        expect(grads.dk.length).toBe(k.length);
        const tol = layout.tolerance;
        expect(maxRelativeGradError(loss, q, grads.dq, sampleIndices(q.length, 40))).toBeLessThan(tol);
        expect(maxRelativeGradError(loss, k, grads.dk, sampleIndices(k.length, 40))).toBeLessThan(tol);
        expect(maxRelativeGradError(loss, tau, grads.dtau)).toBeLessThan(tol);
        expect(maxRelativeGradError(loss, muGroup, grads.dmu, undefined, 1e-7)).toBeLessThan(tol);
        // The gradients are not trivially small: the checks above compare real signals.
        expect(Math.max(...Array.from(grads.dtau, Math.abs))).toBeGreaterThan(1e-3);
        expect(Math.max(...Array.from(grads.dmu, Math.abs))).toBeGreaterThan(1e-2);
      });
    }

  it('dtau and dmu match the logit-space formulas of SPEC section 5 (dtau = -sqrt(d) sum P sinh(mu (l - i)))', () => {
    // With P = dLoss/d(Qhat Khat^T) chosen directly, Qhat/Khat gradients are P Khat and P^T Qhat.
    const rng = new Rng(32);
    const L = 9;
    const d = 4;
    const spec: HypeSpec = {
      heads: 1,
      kvHeads: 1,
      headDim: d,
      grid: [],
      termAxis: [0],
      tau: Float64Array.from([-1.7]),
      mu: Float64Array.from([0.13]),
    };
    const shape: AttentionShape = { batch: 1, heads: 1, kvHeads: 1, lq: L, lk: L, headDim: d, valueDim: d };
    const aug = augment(spec, shape, randn(rng, L * d), randn(rng, L * d), { shift: 'none' });
    const P = randn(rng, L * L);
    const dp = aug.shape.headDim;
    const dqHat = new Float64Array(L * dp);
    const dkHat = new Float64Array(L * dp);
    for (let i = 0; i < L; i++) {
      for (let l = 0; l < L; l++) {
        for (let c = 0; c < dp; c++) {
          dqHat[i * dp + c] += P[i * L + l]! * aug.kHat[l * dp + c]!;
          dkHat[l * dp + c] += P[i * L + l]! * aug.qHat[i * dp + c]!;
        }
      }
    }
    const grads = augmentBackward(spec, aug, dqHat, dkHat);
    let dtau = 0;
    let dmu = 0;
    for (let i = 0; i < L; i++) {
      for (let l = 0; l < L; l++) {
        dtau -= Math.sqrt(d) * P[i * L + l]! * Math.sinh(0.13 * (l - i));
        dmu -= -1.7 * Math.sqrt(d) * P[i * L + l]! * (l - i) * Math.cosh(0.13 * (l - i));
      }
    }
    expect(Math.abs(grads.dtau[0]! - dtau)).toBeLessThan(1e-12 * Math.abs(dtau));
    expect(Math.abs(grads.dmu[0]! - dmu)).toBeLessThan(1e-12 * Math.abs(dmu));
  });
});
