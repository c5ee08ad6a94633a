/**
 * WebGPU layer operations against the fp64 references in src/backend/layers.ts (and the head permutations in
 * tensor.ts), on lavapipe in CI. Bounds from f32 arithmetic (U32 = 2^-24): inputs are rounded once; a sum of n
 * terms errs by at most about n U32 times the sum of magnitudes; pointwise ops (GELU, AdamW) by a few U32 relative,
 * with the GELU exponent's own rounding (U32 |z|) carried through the gate's derivative (at most 1/4). Each bound is
 * stated where it is used; accumulate-into semantics are checked by starting outputs from non-zero values.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { GpuContext, GpuTensor } from '../src/backend/webgpu/context.ts';
import * as G from '../src/backend/webgpu/layers.ts';
import * as R from '../src/backend/layers.ts';
import { headsToTokens, tokensToHeads } from '../src/tensor.ts';
import { HypeError } from '../src/errors.ts';
import { Rng } from '../src/util/rng.ts';
import { gpu, maxAbs, maxAbsDiff, randn, U32 } from './helpers/webgpu.ts';

let ctx: GpuContext;
beforeAll(async () => {
  ctx = await gpu();
}, 60_000);

const rng = new Rng(5);
const up = (x: Float64Array | Int32Array) => ctx.upload(x);
const down = (t: GpuTensor) => ctx.download(t);

/** Worst |got - want| / bound over entries (<= 1 passes). */
function ratio(got: ArrayLike<number>, want: ArrayLike<number>, bound: (i: number) => number): number {
  expect(got.length).toBe(want.length);
  let w = 0;
  for (let i = 0; i < got.length; i++) w = Math.max(w, Math.abs(got[i]! - want[i]!) / bound(i));
  return w;
}

describe('layer norm', () => {
  it('forward and backward (dx, dGamma, dBeta accumulate)', async () => {
    const rows = 5;
    const width = 70;
    const x = randn(rng, rows * width, 2);
    const gamma = randn(rng, width);
    const beta = randn(rng, width);
    const out = new Float64Array(rows * width);
    const mean = new Float64Array(rows);
    const rstd = new Float64Array(rows);
    R.layerNormForward(x, gamma, beta, out, mean, rstd, rows, width, 1e-5);
    const [gx, gg, gb] = [x, gamma, beta].map(up) as [GpuTensor, GpuTensor, GpuTensor];
    const [go, gm, gr] = [ctx.empty([rows, width]), ctx.empty([rows]), ctx.empty([rows])];
    G.gpuLayerNormForward(ctx, gx, gg, gb, go, gm, gr, rows, width, 1e-5);
    // Mean and variance are sums of width terms; out inherits that relative error times |xhat gamma| + |beta|.
    const tolOut = 8 * width * U32 * maxAbs(out);
    expect(maxAbsDiff(await down(go), out)).toBeLessThanOrEqual(tolOut);
    expect(maxAbsDiff(await down(gm), mean)).toBeLessThanOrEqual(8 * width * U32 * maxAbs(x));
    expect(ratio(await down(gr), rstd, (i) => 8 * width * U32 * rstd[i]!)).toBeLessThanOrEqual(1);

    const dOut = randn(rng, rows * width);
    const dx = randn(rng, rows * width);
    const dG = randn(rng, width);
    const dB = randn(rng, width);
    const [gdo, gdx, gdG, gdB] = [dOut, dx, dG, dB].map(up) as GpuTensor[];
    G.gpuLayerNormBackward(ctx, gdo!, gx, gg, gm, gr, gdx!, gdG!, gdB!, rows, width);
    R.layerNormBackward(dOut, x, gamma, mean, rstd, dx, dG, dB, rows, width);
    expect(maxAbsDiff(await down(gdx!), dx)).toBeLessThanOrEqual(16 * width * U32 * maxAbs(dx) * maxAbs(rstd));
    expect(maxAbsDiff(await down(gdG!), dG)).toBeLessThanOrEqual(16 * (rows + width) * U32 * maxAbs(dG));
    expect(maxAbsDiff(await down(gdB!), dB)).toBeLessThanOrEqual(8 * rows * U32 * maxAbs(dB));
  });
});

describe('GELU', () => {
  it('forward and backward, including in place, over [-12, 12]', async () => {
    const n = 300;
    const x = Float64Array.from({ length: n }, (_, i) => -12 + (24 * i) / (n - 1));
    const dOut = randn(rng, n);
    const gx = up(x);
    const out = ctx.empty([n]);
    G.gpuGeluForward(ctx, gx, out, n);
    const want = new Float64Array(n);
    R.geluForward(x, want, n);
    // gelu = x s(z), z = c (x + a x^3): |d gelu| <= |x| (2 U32 + |dz| / 4) + ... with |dz| <= 4 U32 |z|.
    const z = (v: number) => Math.abs(2 * 0.7978845608028654 * (v + 0.044715 * v * v * v));
    const bound = (i: number) => 8 * U32 * (1 + Math.min(z(x[i]!), 80)) * (Math.abs(x[i]!) + 1e-30);
    expect(ratio(await down(out), want, bound)).toBeLessThanOrEqual(1);
    const gd = up(dOut);
    G.gpuGeluBackward(ctx, gx, gd, gd, n); // in place on dOut, as layers.ts allows
    const dx = new Float64Array(n);
    R.geluBackward(x, dOut, dx, n);
    expect(ratio(await down(gd), dx, (i) => bound(i) * 4 * Math.abs(dOut[i]!) + 1e-30)).toBeLessThanOrEqual(1);
    G.gpuGeluForward(ctx, gx, gx, n); // in place
    expect(ratio(await down(gx), want, bound)).toBeLessThanOrEqual(1);
  });
});

describe('bias, embedding, head split/merge, sum of squares', () => {
  it('bias add and bias gradient (accumulates)', async () => {
    const rows = 9;
    const width = 300;
    const out = randn(rng, rows * width);
    const bias = randn(rng, width);
    const g = up(out);
    G.gpuBiasAdd(ctx, g, up(bias), rows, width);
    R.biasAdd(out, bias, rows, width);
    expect(maxAbsDiff(await down(g), out)).toBeLessThanOrEqual(2 * U32 * maxAbs(out));
    const dB = randn(rng, width);
    const gdB = up(dB);
    G.gpuBiasBackward(ctx, g, gdB, rows, width);
    R.biasBackward(out, dB, rows, width);
    expect(maxAbsDiff(await down(gdB), dB)).toBeLessThanOrEqual((rows + 2) * U32 * (rows + 1) * maxAbs(out));
  });

  it('embedding gather and scatter-add with repeated tokens', async () => {
    const vocab = 7;
    const width = 33;
    const n = 20;
    const table = randn(rng, vocab * width);
    const tokens = Int32Array.from({ length: n }, (_, i) => (i * 3) % vocab);
    const gt = G.uploadTokens(ctx, tokens, vocab);
    const out = ctx.empty([n, width]);
    G.gpuEmbeddingForward(ctx, up(table), gt, out, n, width, vocab);
    const want = new Float64Array(n * width);
    R.embeddingForward(table, tokens, want, n, width, vocab);
    expect(maxAbsDiff(await down(out), want)).toBeLessThanOrEqual(U32 * maxAbs(want)); // a copy of rounded values
    const dOut = randn(rng, n * width);
    const dT = randn(rng, vocab * width);
    const gdT = up(dT);
    G.gpuEmbeddingBackward(ctx, up(dOut), gt, gdT, n, width, vocab);
    R.embeddingBackward(dOut, tokens, dT, n, width);
    expect(maxAbsDiff(await down(gdT), dT)).toBeLessThanOrEqual((n + 2) * U32 * (n + 1) * maxAbs(dOut));
    expect(() => G.uploadTokens(ctx, Int32Array.of(1, 7), vocab)).toThrow(HypeError);
  });

  it('head split and merge are exact permutations (inverse of each other)', async () => {
    const [B, H, L, D] = [2, 3, 5, 4];
    const x = randn(rng, B * L * H * D);
    const heads = new Float64Array(x.length);
    tokensToHeads(x, heads, B, H, L, D);
    const gx = up(x);
    const gh = ctx.empty([B, H, L, D]);
    G.gpuSplitHeads(ctx, gx, gh, B, H, L, D);
    expect(await down(gh)).toEqual(Float32Array.from(heads));
    const back = ctx.empty([B, L, H * D]);
    G.gpuMergeHeads(ctx, gh, back, B, H, L, D);
    const tokens = new Float64Array(x.length);
    headsToTokens(heads, tokens, B, H, L, D);
    expect(await down(back)).toEqual(Float32Array.from(tokens));
  });

  it('sum of squares accumulates across tensors (gradient norm)', async () => {
    const a = randn(rng, 10000);
    const b = randn(rng, 37);
    const acc = ctx.zeros([1]);
    G.gpuSumSquares(ctx, up(a), a.length, acc);
    G.gpuSumSquares(ctx, up(b), b.length, acc);
    let want = 0;
    for (const v of [...a, ...b]) want += v * v;
    const got = (await down(acc))[0]!;
    expect(Math.abs(got - want)).toBeLessThanOrEqual(4 * (4096 + 64) * U32 * want);
  });
});

describe('softmax cross-entropy', () => {
  it('per-row losses, their mean on the GPU, and the gradient in place over the logits', async () => {
    const rows = 6;
    const vocab = 131;
    const logits = randn(rng, rows * vocab, 3);
    const targets = Int32Array.from({ length: rows }, (_, i) => (i * 29) % vocab);
    const gl = up(logits);
    const gt = G.uploadTokens(ctx, targets, vocab);
    const losses = ctx.empty([rows]);
    const mean = ctx.empty([1]);
    G.gpuSoftmaxCrossEntropyForward(ctx, gl, gt, losses, mean, rows, vocab);
    const want = new Float64Array(rows);
    const wantMean = R.softmaxCrossEntropyForward(logits, targets, want, rows, vocab);
    // logsumexp: a sum of vocab exps (relative vocab U32) plus |max| and |logit| rounding.
    const tol = 8 * vocab * U32 * (maxAbs(logits) + 1);
    expect(maxAbsDiff(await down(losses), want)).toBeLessThanOrEqual(tol);
    expect(Math.abs((await down(mean))[0]! - wantMean)).toBeLessThanOrEqual(tol);
    G.gpuSoftmaxCrossEntropyBackward(ctx, gl, gt, gl, rows, vocab, 1 / rows);
    const d = new Float64Array(rows * vocab);
    R.softmaxCrossEntropyBackward(logits, targets, d, rows, vocab, 1 / rows);
    expect(maxAbsDiff(await down(gl), d)).toBeLessThanOrEqual(8 * vocab * U32 * (maxAbs(logits) + 1) * maxAbs(d));
  });
});

describe('AdamW', () => {
  it('three steps match the reference (m, v, param), decay scaled by lr', async () => {
    const n = 1000;
    const p = randn(rng, n);
    const m = new Float64Array(n);
    const v = new Float64Array(n);
    const [gp, gm, gv] = [p, m, v].map(up) as GpuTensor[];
    for (let step = 1; step <= 3; step++) {
      const g = randn(rng, n);
      const h = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step };
      G.gpuAdamWStep(ctx, gp!, up(g), gm!, gv!, n, h);
      R.adamwStep(p, g, m, v, n, h);
    }
    // m and v are short sums (3 steps, a few roundings each) that may cancel: bound by 16 U32 of the tensor's
    // magnitude. The update lr mhat / sqrt(vhat) is about 8 U32 relative per step; params carry three of them.
    expect(maxAbsDiff(await down(gm!), m)).toBeLessThanOrEqual(16 * U32 * maxAbs(m));
    expect(maxAbsDiff(await down(gv!), v)).toBeLessThanOrEqual(16 * U32 * maxAbs(v));
    expect(maxAbsDiff(await down(gp!), p)).toBeLessThanOrEqual(3 * 16 * U32 * (maxAbs(p) + 3 * 1e-2 * 10));
  });
});
