/**
 * The tiny one-layer attention model that WebGPU training is checked on, in Node (test/webgpu-train-step.test.ts)
 * and in a browser (test/webgpu-browser.test.ts): embedding [V, C] -> layer norm -> q, k, v projections [C, C] ->
 * head split [1, H, T, D] -> causal fused attention -> head merge -> output projection [C, V] -> softmax
 * cross-entropy, its whole backward and AdamW, run as GPU kernels (gpuTrain) and in fp64 with the reference kernels
 * (referenceTrain). Browser-safe: nothing here imports a Node built-in, so the browser page bundles it as is.
 */
import type { GpuContext, GpuTensor } from '../../src/backend/webgpu/context.ts';
import { gpuGemm } from '../../src/backend/webgpu/gemm.ts';
import { gpuAttentionBackward, gpuAttentionForward } from '../../src/backend/webgpu/attention.ts';
import * as G from '../../src/backend/webgpu/layers.ts';
import * as R from '../../src/backend/layers.ts';
import { referenceGemm } from '../../src/backend/reference.ts';
import { referenceAttentionBackward, referenceAttentionForward } from '../../src/backend/reference-attention.ts';
import { headsToTokens, tokensToHeads } from '../../src/tensor.ts';
import { Rng } from '../../src/util/rng.ts';

export const [T, C, H, V] = [8, 16, 2, 11];
const D = C / H;
const shape = { batch: 1, heads: H, kvHeads: H, lq: T, lk: T, headDim: D, valueDim: D };
const attn = { causal: true, scale: 1 / Math.sqrt(D) };
const hyper = (step: number) => ({ lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step });
export const NAMES = ['emb', 'gamma', 'beta', 'wq', 'wk', 'wv', 'wo'] as const;
export type Name = (typeof NAMES)[number];
export type Params = Record<Name, Float64Array>;

export const tokens = Int32Array.from({ length: T }, (_, i) => (i * 5 + 1) % V);
export const targets = Int32Array.from({ length: T }, (_, i) => (i * 3 + 2) % V);

function normals(rng: Rng, n: number, std = 1): Float64Array {
  const a = new Float64Array(n);
  rng.fillNormal(a, std);
  return a;
}

/** Seeded initial parameters. */
export function initParams(seed = 2024): Params {
  const rng = new Rng(seed);
  return {
    emb: normals(rng, V * C),
    gamma: Float64Array.from({ length: C }, () => 1 + 0.1 * rng.normal()),
    beta: normals(rng, C, 0.1),
    wq: normals(rng, C * C, 1 / Math.sqrt(C)),
    wk: normals(rng, C * C, 1 / Math.sqrt(C)),
    wv: normals(rng, C * C, 1 / Math.sqrt(C)),
    wo: normals(rng, C * V, 1 / Math.sqrt(C)),
  };
}

const mapParams = <T>(f: (n: Name) => T) => Object.fromEntries(NAMES.map((n) => [n, f(n)])) as Record<Name, T>;

/** One step in fp64 with the reference kernels, updating p, m, v in place; returns the loss before the update. */
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
  const g = mapParams((n) => new Float64Array(p[n].length));
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

/** `steps` AdamW steps in fp64 from p0 (left untouched): the loss before each step and the final parameters. */
export function referenceTrain(p0: Params, steps: number): { losses: number[]; params: Params } {
  const p = mapParams((n) => Float64Array.from(p0[n]));
  const m = mapParams((n) => new Float64Array(p0[n].length));
  const v = mapParams((n) => new Float64Array(p0[n].length));
  const losses: number[] = [];
  for (let step = 1; step <= steps; step++) losses.push(referenceStep(p, m, v, step));
  return { losses, params: p };
}

/**
 * The same steps as GPU kernels chained on the queue; each step reads back only its mean loss (ctx.download is the
 * only path from GPU memory to JavaScript, so a caller can count read-backs by wrapping it). Returns the losses and
 * the parameters as GPU tensors (the caller downloads what it checks).
 */
export async function gpuTrain(
  ctx: GpuContext,
  p0: Params,
  steps: number,
): Promise<{ losses: number[]; params: Record<Name, GpuTensor> }> {
  const P = mapParams((n) => ctx.upload(p0[n]));
  const M = mapParams((n) => ctx.zeros([p0[n].length]));
  const Vs = mapParams((n) => ctx.zeros([p0[n].length]));
  const tok = G.uploadTokens(ctx, tokens, V);
  const tgt = G.uploadTokens(ctx, targets, V);
  const losses: number[] = [];
  for (let step = 1; step <= steps; step++) {
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
    const [lossRows, loss] = [ctx.empty([T]), ctx.empty([1])];
    G.gpuSoftmaxCrossEntropyForward(ctx, logits, tgt, lossRows, loss, T, V);
    G.gpuSoftmaxCrossEntropyBackward(ctx, logits, tgt, logits, T, V, 1 / T); // in place: logits become dLogits
    const g = mapParams((n) => ctx.zeros([p0[n].length]));
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
    losses.push((await ctx.download(loss))[0]!);
    ctx.release(x, h, mean, rstd, q, k, v, f.out, f.lse, a, logits, lossRows, loss, da, daH, b.dq, b.dk, b.dv);
    ctx.release(dh, dt, dx, ...Object.values(g));
  }
  ctx.release(tok, tgt, ...Object.values(M), ...Object.values(Vs));
  return { losses, params: P };
}
