/**
 * Kernels chain on the GPU: three AdamW steps of a one-layer attention model (embedding -> layer norm -> q, k, v
 * projections -> head split -> causal fused attention -> head merge -> output projection -> softmax cross-entropy,
 * and the whole backward) run with only the mean loss read back per step, and buffers recycled through the pool.
 * The same steps in fp64 with the reference kernels give the expected losses. Bound: each step's loss carries f32
 * rounding of about (C + T + V) U32 relative; AdamW's first steps normalise gradients (update ~ lr sign(g)), which
 * passes gradient rounding into the parameters only through entries whose gradient is near its own rounding error;
 * with random initialisation none is, so the losses agree to well within 1e-4 relative over three steps.
 */
import { beforeAll, expect, it } from 'vitest';
import type { GpuContext, GpuTensor } from '../src/backend/webgpu/context.ts';
import { gpuGemm } from '../src/backend/webgpu/gemm.ts';
import { gpuAttentionBackward, gpuAttentionForward } from '../src/backend/webgpu/attention.ts';
import * as G from '../src/backend/webgpu/layers.ts';
import * as R from '../src/backend/layers.ts';
import { referenceGemm } from '../src/backend/reference.ts';
import { referenceAttentionBackward, referenceAttentionForward } from '../src/backend/reference-attention.ts';
import { headsToTokens, tokensToHeads } from '../src/tensor.ts';
import { Rng } from '../src/util/rng.ts';
import { gpu, randn } from './helpers/webgpu.ts';

let ctx: GpuContext;
beforeAll(async () => {
  ctx = await gpu();
}, 60_000);

const [T, C, H, V] = [8, 16, 2, 11];
const D = C / H;
const shape = { batch: 1, heads: H, kvHeads: H, lq: T, lk: T, headDim: D, valueDim: D };
const attn = { causal: true, scale: 1 / Math.sqrt(D) };
const hyper = (step: number) => ({ lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step });
const NAMES = ['emb', 'gamma', 'beta', 'wq', 'wk', 'wv', 'wo'] as const;
type Params = Record<(typeof NAMES)[number], Float64Array>;

function init(): Params {
  const rng = new Rng(2024);
  return {
    emb: randn(rng, V * C),
    gamma: Float64Array.from({ length: C }, () => 1 + 0.1 * rng.normal()),
    beta: randn(rng, C, 0.1),
    wq: randn(rng, C * C, 1 / Math.sqrt(C)),
    wk: randn(rng, C * C, 1 / Math.sqrt(C)),
    wv: randn(rng, C * C, 1 / Math.sqrt(C)),
    wo: randn(rng, C * V, 1 / Math.sqrt(C)),
  };
}

const tokens = Int32Array.from({ length: T }, (_, i) => (i * 5 + 1) % V);
const targets = Int32Array.from({ length: T }, (_, i) => (i * 3 + 2) % V);

/** One step in fp64 with the reference kernels; returns the loss before the update. */
function referenceStep(p: Params, m: Params, v: Params, step: number): number {
  const x = new Float64Array(T * C);
  R.embeddingForward(p.emb, tokens, x, T, C, V);
  const h = new Float64Array(T * C);
  const mean = new Float64Array(T);
  const rstd = new Float64Array(T);
  R.layerNormForward(x, p.gamma, p.beta, h, mean, rstd, T, C, 1e-5);
  const proj = (w: Float64Array) => {
    const out = new Float64Array(T * C);
    referenceGemm(false, false, T, C, C, 1, h, C, w, C, 0, out, C);
    const heads = new Float64Array(T * C);
    tokensToHeads(out, heads, 1, H, T, D);
    return heads;
  };
  const [q, k, vv] = [proj(p.wq), proj(p.wk), proj(p.wv)];
  const f = referenceAttentionForward(shape, q!, k!, vv!, attn);
  const a = new Float64Array(T * C);
  headsToTokens(f.out, a, 1, H, T, D);
  const logits = new Float64Array(T * V);
  referenceGemm(false, false, T, V, C, 1, a, C, p.wo, V, 0, logits, V);
  const loss = R.softmaxCrossEntropyForward(logits, targets, new Float64Array(T), T, V);
  const dl = new Float64Array(T * V);
  R.softmaxCrossEntropyBackward(logits, targets, dl, T, V, 1 / T);
  const g = Object.fromEntries(NAMES.map((n) => [n, new Float64Array(p[n].length)])) as Params;
  referenceGemm(true, false, C, V, T, 1, a, C, dl, V, 0, g.wo, V);
  const da = new Float64Array(T * C);
  referenceGemm(false, true, T, C, V, 1, dl, V, p.wo, V, 0, da, C);
  const daH = new Float64Array(T * C);
  tokensToHeads(da, daH, 1, H, T, D);
  const b = referenceAttentionBackward(shape, q!, k!, vv!, f.out, f.lse, daH, attn);
  const dh = new Float64Array(T * C);
  for (const [dHeads, w, gw] of [
    [b.dq, p.wq, g.wq],
    [b.dk, p.wk, g.wk],
    [b.dv, p.wv, g.wv],
  ] as const) {
    const dt = new Float64Array(T * C);
    headsToTokens(dHeads, dt, 1, H, T, D);
    referenceGemm(true, false, C, C, T, 1, h, C, dt, C, 0, gw, C);
    referenceGemm(false, true, T, C, C, 1, dt, C, w, C, 1, dh, C);
  }
  const dx = new Float64Array(T * C);
  R.layerNormBackward(dh, x, p.gamma, mean, rstd, dx, g.gamma, g.beta, T, C);
  R.embeddingBackward(dx, tokens, g.emb, T, C);
  for (const n of NAMES) R.adamwStep(p[n], g[n], m[n], v[n], p[n].length, hyper(step));
  return loss;
}

it('three training steps on the GPU read back only the loss and match the fp64 reference', async () => {
  const p0 = init();
  const up = (x: Float64Array) => ctx.upload(x);
  const P = Object.fromEntries(NAMES.map((n) => [n, up(p0[n])])) as Record<(typeof NAMES)[number], GpuTensor>;
  const M = Object.fromEntries(NAMES.map((n) => [n, ctx.zeros([p0[n].length])])) as typeof P;
  const Vs = Object.fromEntries(NAMES.map((n) => [n, ctx.zeros([p0[n].length])])) as typeof P;
  const tok = G.uploadTokens(ctx, tokens, V);
  const tgt = G.uploadTokens(ctx, targets, V);
  const gpuLosses: number[] = [];
  // Count every read-back the step makes (download is the only path from GPU memory to JavaScript).
  let downloads = 0;
  const download = ctx.download.bind(ctx);
  ctx.download = (t) => {
    downloads++;
    return download(t);
  };
  for (let step = 1; step <= 3; step++) {
    const x = ctx.empty([T, C]);
    G.gpuEmbeddingForward(ctx, P.emb, tok, x, T, C, V);
    const [h, mean, rstd] = [ctx.empty([T, C]), ctx.empty([T]), ctx.empty([T])];
    G.gpuLayerNormForward(ctx, x, P.gamma, P.beta, h, mean, rstd, T, C, 1e-5);
    const proj = (w: GpuTensor) => {
      const out = ctx.empty([T, C]);
      gpuGemm(ctx, false, false, T, C, C, 1, h, w, 0, out, { lda: C, ldb: C, ldc: C });
      const heads = ctx.empty([1, H, T, D]);
      G.gpuSplitHeads(ctx, out, heads, 1, H, T, D);
      ctx.release(out);
      return heads;
    };
    const [q, k, v] = [proj(P.wq), proj(P.wk), proj(P.wv)];
    const f = gpuAttentionForward(ctx, shape, q, k, v, attn);
    const a = ctx.empty([T, C]);
    G.gpuMergeHeads(ctx, f.out, a, 1, H, T, D);
    const logits = ctx.empty([T, V]);
    gpuGemm(ctx, false, false, T, V, C, 1, a, P.wo, 0, logits, { lda: C, ldb: V, ldc: V });
    const [losses, loss] = [ctx.empty([T]), ctx.empty([1])];
    G.gpuSoftmaxCrossEntropyForward(ctx, logits, tgt, losses, loss, T, V);
    G.gpuSoftmaxCrossEntropyBackward(ctx, logits, tgt, logits, T, V, 1 / T); // in place: logits become dLogits
    const g = Object.fromEntries(NAMES.map((n) => [n, ctx.zeros([p0[n].length])])) as typeof P;
    gpuGemm(ctx, true, false, C, V, T, 1, a, logits, 0, g.wo, { lda: C, ldb: V, ldc: V });
    const da = ctx.empty([T, C]);
    gpuGemm(ctx, false, true, T, C, V, 1, logits, P.wo, 0, da, { lda: V, ldb: V, ldc: C });
    const daH = ctx.empty([1, H, T, D]);
    G.gpuSplitHeads(ctx, da, daH, 1, H, T, D);
    const b = gpuAttentionBackward(ctx, shape, q, k, v, f.out, f.lse, daH, attn);
    const dh = ctx.zeros([T, C]);
    const dt = ctx.empty([T, C]);
    for (const [dHeads, w, gw] of [
      [b.dq, P.wq, g.wq],
      [b.dk, P.wk, g.wk],
      [b.dv, P.wv, g.wv],
    ] as const) {
      G.gpuMergeHeads(ctx, dHeads, dt, 1, H, T, D);
      gpuGemm(ctx, true, false, C, C, T, 1, h, dt, 0, gw, { lda: C, ldb: C, ldc: C });
      gpuGemm(ctx, false, true, T, C, C, 1, dt, w, 1, dh, { lda: C, ldb: C, ldc: C });
    }
    const dx = ctx.zeros([T, C]);
    G.gpuLayerNormBackward(ctx, dh, x, P.gamma, mean, rstd, dx, g.gamma, g.beta, T, C);
    G.gpuEmbeddingBackward(ctx, dx, tok, g.emb, T, C, V);
    for (const n of NAMES) G.gpuAdamWStep(ctx, P[n], g[n], M[n], Vs[n], p0[n].length, hyper(step));
    gpuLosses.push((await ctx.download(loss))[0]!);
    ctx.release(x, h, mean, rstd, q, k, v, f.out, f.lse, a, logits, losses, loss, da, daH, b.dq, b.dk, b.dv);
    ctx.release(dh, dt, dx, ...Object.values(g));
  }
  ctx.download = download;
  expect(downloads).toBe(3); // one scalar per step left the GPU

  const m0 = Object.fromEntries(NAMES.map((n) => [n, new Float64Array(p0[n].length)])) as Params;
  const v0 = Object.fromEntries(NAMES.map((n) => [n, new Float64Array(p0[n].length)])) as Params;
  const refLosses = [1, 2, 3].map((step) => referenceStep(p0, m0, v0, step));
  for (let i = 0; i < 3; i++) expect(Math.abs(gpuLosses[i]! - refLosses[i]!)).toBeLessThanOrEqual(1e-4 * refLosses[i]!);
  expect(refLosses[2]).toBeLessThan(refLosses[0]!); // the steps do train
  // The parameters after three steps agree too (read back once here, after the run).
  const emb = await ctx.download(P.emb);
  let worst = 0;
  for (let i = 0; i < emb.length; i++) worst = Math.max(worst, Math.abs(emb[i]! - p0.emb[i]!));
  expect(worst).toBeLessThanOrEqual(1e-4);
});
