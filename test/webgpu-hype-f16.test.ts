/**
 * HyPE's split columns (SPEC section 8, src/numerics/split-columns.ts) through the WebGPU fused attention with f16
 * storage and f32 accumulation, on an adapter with shader-f16 (lavapipe offers it; an adapter without it must
 * refuse f16 tensors with a HypeError naming the feature, checked instead).
 *
 * Setup: recency preset at L_extra = 1024 (|tau| up to ~1000, so the bias is a small difference of large products),
 * q, k, v already f16 values. h.augment(..., { format: 'fp16' }) gives Qhat, Khat, Vhat whose every value is an f16
 * (the split hi/lo columns, 6 per pair). The oracle is fp64 attention on the same f16 content q, k, v with HyPE's
 * exact bias as a distance table (hypeDistanceTable, fp64).
 *
 * Bounds. Split columns: the bias is exact to O(u16^2 |eta_q eta_k|) ~ 2^-22 * 1000 ~ 2.4e-4 in the logits, plus
 * the f32 accumulation of products up to ~1000 in size over d + 6 columns, (d + 6) U32 * 1000 ~ 1.3e-3 at worst
 * (random signs make it far smaller). A logit error e moves the output by at most e * 2 max|v| (softmax Lipschitz in
 * the max norm), so out must agree within (2.4e-4 + 1.3e-3) * 2 * max|v|: 3.1e-3 max|v|. Plain fp16 columns round
 * each product to u16 |eta_q eta_k| ~ 0.5 in the logits: the split route must beat them by far (measured both).
 * Gradients: dq and dk come back through HyPE's own chain rule (h.backward) and match the oracle's dq, dk within
 * the same logit error times the dLogit scale (bounded here by 4 max|v| max|dOut| per logit, summed over Lk keys
 * with weights P summing to 1: 3.1e-3 * 2 max|dOut| max|k| and likewise).
 */
import { beforeAll, expect, it } from 'vitest';
import { distanceSpan, type AttentionShape } from '../src/backend/backend.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { gpuAttentionBackward, gpuAttentionForward } from '../src/backend/webgpu/attention.ts';
import { f16Bits, f16Value, type GpuContext } from '../src/backend/webgpu/context.ts';
import { hypeDistanceTable } from '../src/pe/hype/table.ts';
import { hype } from '../src/pe/hype/encoding.ts';
import { Rng } from '../src/util/rng.ts';
import { gpu, maxAbs, maxAbsDiff, randn } from './helpers/webgpu.ts';

let ctx: GpuContext;
beforeAll(async () => {
  ctx = await gpu();
}, 60_000);

const [B, H, Hkv, L, d] = [1, 4, 2, 48, 16];
const shape: AttentionShape = { batch: B, heads: H, kvHeads: Hkv, lq: L, lk: L, headDim: d, valueDim: d };
const half = (x: number) => f16Value(f16Bits(x));

it('split f16 columns through the f16 fused attention recover the exact HyPE bias (forward and gradients)', async () => {
  if (!ctx.hasF16) {
    expect(() => ctx.empty([1], 'f16')).toThrow(/shader-f16/);
    throw new Error(`this adapter (${ctx.description}) has no shader-f16: the f16 route cannot be checked here`);
  }
  const rng = new Rng(16);
  const q = randn(rng, B * H * L * d).map(half);
  const k = randn(rng, B * Hkv * L * d).map(half);
  const v = randn(rng, B * Hkv * L * d).map(half);
  const dOut = randn(rng, B * H * L * d).map(half);
  const h = hype({ preset: 'recency', heads: H, kvHeads: Hkv, headDim: d, lengthExtra: 1024 });

  // The oracle: fp64 attention on the same f16 content with the exact bias as a table.
  const ref = new ReferenceBackend();
  const g = { heads: H, lq: L, lk: L, queryOffset: 0, causal: true };
  const table = hypeDistanceTable(h.spec.tau, h.spec.mu, h.spec.termAxis.length, g);
  expect(table.length).toBe(H * distanceSpan(L, L, 0));
  const opts = { causal: true, scale: 1 / Math.sqrt(d), queryOffset: 0 };
  const want = ref.attentionForward(shape, q, k, v, { ...opts, bias: { kind: 'distance', table } });
  const wantG = ref.attentionBackward(shape, q, k, v, want.out, want.lse, dOut, {
    ...opts,
    bias: { kind: 'distance', table },
  });

  const errors: Record<string, number> = {};
  for (const columns of ['split', 'plain'] as const) {
    const aug = h.augment(shape, q, k, { v, format: 'fp16', columns, queryOffset: 0 });
    expect(aug.columns.split).toBe(columns === 'split' ? 'fp16' : null);
    for (const x of [aug.qHat, aug.kHat, aug.vHat!]) for (const y of x) expect(half(y)).toBe(y); // all f16 values
    const [gq, gk, gv] = [aug.qHat, aug.kHat, aug.vHat!].map((x) => ctx.upload(x, undefined, 'f16'));
    const f = gpuAttentionForward(ctx, aug.shape, gq!, gk!, gv!, { causal: true, scale: aug.scale, queryOffset: 0 });
    const out = await ctx.download(f.out);
    errors[columns] = maxAbsDiff(out, want.out);
    if (columns === 'split') {
      expect(maxAbsDiff(out, want.out)).toBeLessThanOrEqual(3.1e-3 * maxAbs(v));
      const gdo = ctx.upload(dOut, undefined, 'f16');
      const gr = gpuAttentionBackward(ctx, aug.shape, gq!, gk!, gv!, f.out, f.lse, gdo, {
        causal: true,
        scale: aug.scale,
        queryOffset: 0,
      });
      const [dqHat, dkHat, dv] = [await ctx.download(gr.dq), await ctx.download(gr.dk), await ctx.download(gr.dv)];
      const back = h.backward(aug, Float64Array.from(dqHat), Float64Array.from(dkHat));
      const tolQ = 3.1e-3 * 2 * maxAbs(dOut) * maxAbs(k) * maxAbs(v);
      const tolK = 3.1e-3 * 2 * maxAbs(dOut) * maxAbs(q) * maxAbs(v) * (H / Hkv);
      expect(maxAbsDiff(back.dq, wantG.dq)).toBeLessThanOrEqual(tolQ);
      expect(maxAbsDiff(back.dk, wantG.dk)).toBeLessThanOrEqual(tolK);
      errors.dq = maxAbsDiff(back.dq, wantG.dq);
      errors.dk = maxAbsDiff(back.dk, wantG.dk);
      // dv does not see the bias beyond P: the same logit error bound, times max|dOut| per key, summed over H/Hkv heads
      expect(maxAbsDiff(dv.subarray(0, wantG.dv.length), wantG.dv)).toBeLessThanOrEqual(
        3.1e-3 * 2 * maxAbs(dOut) * L * (H / Hkv),
      );
    }
  }
  // Split columns are what makes f16 usable at this |tau|: plain f16 columns are off by orders of magnitude more.
  expect(errors.plain!).toBeGreaterThan(20 * errors.split!);
  console.log(
    `f16 HyPE on ${ctx.description}: max |out error| split ${errors.split!.toExponential(2)}, plain ` +
      `${errors.plain!.toExponential(2)}; dq ${errors.dq!.toExponential(2)}, dk ${errors.dk!.toExponential(2)}`,
  );
}, 60_000);
