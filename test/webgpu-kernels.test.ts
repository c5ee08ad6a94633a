/**
 * WebGPU gemm and fused attention (forward and backward, with distance-table gradients) against the fp64 reference,
 * on whatever adapter Dawn finds (lavapipe in CI). Shapes are tiny: lavapipe runs about 1 GFLOP/s and JIT-compiles
 * each pipeline on first use.
 *
 * Tolerances come from f32 arithmetic: each input is rounded once (relative U32) and every sum of n terms carries at
 * most about n * U32 relative error of the sum of magnitudes (Higham's gamma_n). For gemm that bound is computed per
 * entry from |A||B|. For attention the chain is dot product (length d) -> exp/log (a few U32) -> normalisation and
 * P V (length Lk) -> in the backward dP (length dv), dS, then sums over Lk (dq), over queries and grouped heads (dk,
 * dv) or over the batch and the queries on one diagonal (dTable). We bound each result by
 * 8 * n * U32 * max|reference| with n the total reduction length along its chain; 8 covers the exp/log steps and the
 * factor two of dS = P (dP - delta). A wrong index or a missing term gives errors of order max|reference|.
 */
import { build } from 'esbuild';
import { beforeAll, describe, expect, it } from 'vitest';
import { HypeError } from '../src/errors.ts';
import { acquireGpu, f16Bits, f16Value, type GpuContext } from '../src/backend/webgpu/context.ts';
import { gpuGemm } from '../src/backend/webgpu/gemm.ts';
import { gpuGeluForward } from '../src/backend/webgpu/layers.ts';
import { gpuAddInto } from '../src/backend/webgpu/tensor-ops.ts';
import { gpuAttentionBackward, gpuAttentionForward } from '../src/backend/webgpu/attention.ts';
import { referenceGemm } from '../src/backend/reference.ts';
import { referenceAttentionBackward, referenceAttentionForward } from '../src/backend/reference-attention.ts';
import type { PositionBias } from '../src/backend/backend.ts';
import { Rng } from '../src/util/rng.ts';
import { gpu, maxAbs, maxAbsDiff, randn, U32 } from './helpers/webgpu.ts';
import { attentionErrors, attentionInputs, type AttentionCase } from './helpers/webgpu-attention-check.ts';
import { maxRelativeGradError, sampleIndices } from './helpers/gradcheck.ts';
import { acquireNodeGpu } from '../src/backend/webgpu/node.ts';

let ctx: GpuContext;
beforeAll(async () => {
  ctx = await gpu();
}, 60_000);

describe('device acquisition', () => {
  it('the backend bundles for the browser: no Node built-in and no `webgpu` package reachable from it', async () => {
    const r = await build({
      entryPoints: ['src/backend/webgpu/index.ts'],
      bundle: true,
      platform: 'browser',
      format: 'esm',
      write: false,
      logLevel: 'silent',
    });
    expect(r.errors).toEqual([]);
    expect(r.outputFiles[0]!.text).not.toMatch(/from\s*["'](node:|webgpu["'])/);
    expect(r.outputFiles[0]!.text).toMatch(/workgroupBarrier/); // the kernels are in it
  });

  it('refuses a missing GPU object with one error naming the lavapipe fix', async () => {
    const err = await acquireGpu(undefined).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HypeError);
    expect((err as HypeError).code).toBe('device');
    expect((err as HypeError).message).toMatch(/lavapipe.*\.ci\/system-deps/);
  });

  it('refuses an adapter-less GPU the same way', async () => {
    const fake = { requestAdapter: async () => null } as unknown as GPU;
    const err = await acquireGpu(fake).catch((e: unknown) => e);
    expect((err as HypeError).message).toMatch(/no WebGPU adapter was found.*lavapipe/);
  });

  it('finds an adapter here (lavapipe in CI)', () => {
    expect(ctx.limits.maxStorageBufferBindingSize).toBeGreaterThan(0);
  });

  it('a kernel WebGPU rejects surfaces as one HypeError at the next read-back, and the device stays usable', async () => {
    const t = ctx.upload(new Float32Array([1, 2]));
    const pipe = ctx.pipeline('broken-for-test', () => 'this is not WGSL');
    expect(() => ctx.dispatch(pipe, 'broken', new ArrayBuffer(16), [t], [1, 1, 1])).not.toThrow();
    const err = await ctx.download(t).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HypeError);
    expect((err as HypeError).message).toMatch(/WebGPU rejected a kernel/);
    expect(Array.from(await ctx.download(t))).toEqual([1, 2]);
  });
});

describe('gemm', () => {
  const rng = new Rng(11);
  for (const [transA, transB] of [
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ] as const) {
    it(`matches the fp64 reference within the f32 bound (transA ${transA}, transB ${transB})`, async () => {
      // Odd sizes cross tile edges; leading dims exceed the widths; beta accumulates.
      const m = 37;
      const n = 45;
      const k = 21;
      const lda = (transA ? m : k) + 3;
      const ldb = (transB ? k : n) + 2;
      const ldc = n + 5;
      const a = randn(rng, (transA ? k : m) * lda);
      const b = randn(rng, (transB ? n : k) * ldb);
      const c = randn(rng, m * ldc);
      const alpha = 0.75;
      const beta = -0.5;
      const ga = ctx.upload(a);
      const gb = ctx.upload(b);
      const gc = ctx.upload(c);
      gpuGemm(ctx, transA, transB, m, n, k, alpha, ga, gb, beta, gc, { lda, ldb, ldc });
      const got = await ctx.download(gc);
      const want = Float64Array.from(c);
      referenceGemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, want, ldc);
      // Per-entry bound: gamma_{k+4} (|alpha| |A||B| + |beta C|) (k products, input rounding, alpha, beta, store).
      const absA = a.map(Math.abs);
      const absB = b.map(Math.abs);
      const mag = new Float64Array(m * ldc);
      referenceGemm(transA, transB, m, n, k, Math.abs(alpha), absA, lda, absB, ldb, 0, mag, ldc);
      let worst = 0;
      for (let i = 0; i < m; i++)
        for (let j = 0; j < n; j++) {
          const x = i * ldc + j;
          const bound = (k + 4) * U32 * (mag[x]! + Math.abs(beta * c[x]!)) * 1.01;
          worst = Math.max(worst, Math.abs(got[x]! - want[x]!) / bound);
        }
      expect(worst).toBeLessThanOrEqual(1);
      // Padding columns of C (j >= n) are untouched.
      for (let i = 0; i < m; i++)
        for (let j = n; j < ldc; j++) expect(got[i * ldc + j]).toBe(Math.fround(c[i * ldc + j]!));
      ctx.release(ga, gb, gc);
    });
  }

  it('beta = 0 overwrites NaN in C; batched offsets and strides address each matrix', async () => {
    const m = 5;
    const n = 6;
    const k = 7;
    const batch = 3;
    const a = randn(rng, 4 + batch * m * k);
    const b = randn(rng, batch * k * n);
    const ga = ctx.upload(a);
    const gb = ctx.upload(b);
    const gc = ctx.upload(new Float32Array(batch * m * n).fill(NaN));
    gpuGemm(ctx, false, false, m, n, k, 1, ga, gb, 0, gc, {
      lda: k,
      ldb: n,
      ldc: n,
      offA: 4,
      batch,
      strideA: m * k,
      strideB: k * n,
      strideC: m * n,
    });
    const got = await ctx.download(gc);
    for (let z = 0; z < batch; z++) {
      const want = new Float64Array(m * n);
      referenceGemm(false, false, m, n, k, 1, a.subarray(4 + z * m * k), k, b.subarray(z * k * n), n, 0, want, n);
      const bound = (k + 4) * U32 * maxAbs(want) * k;
      expect(maxAbsDiff(got.subarray(z * m * n, (z + 1) * m * n), want)).toBeLessThanOrEqual(bound);
    }
  });

  it('refuses a layout that reads past a tensor', () => {
    const t = ctx.upload(new Float32Array(10));
    expect(() => gpuGemm(ctx, false, false, 4, 4, 4, 1, t, t, 0, t, { lda: 4, ldb: 4, ldc: 4 })).toThrow(HypeError);
  });
});

const cases: AttentionCase[] = [
  {
    name: 'bidirectional, GQA 4/2, d 8, default offset',
    shape: { batch: 2, heads: 4, kvHeads: 2, lq: 7, lk: 9, headDim: 8, valueDim: 8 },
    causal: false,
    table: false,
  },
  {
    name: 'causal, distance table, GQA 4/2, d 66 / dv 70, query offset 2',
    shape: { batch: 2, heads: 4, kvHeads: 2, lq: 6, lk: 11, headDim: 66, valueDim: 70 },
    causal: true,
    queryOffset: 2,
    table: true,
  },
  {
    name: 'causal with a negative offset (rows that see no key), table, d 16',
    shape: { batch: 1, heads: 2, kvHeads: 1, lq: 9, lk: 5, headDim: 16, valueDim: 16 },
    causal: true,
    queryOffset: -3,
    table: true,
  },
  {
    name: 'bidirectional, table, d 256, several tiles',
    shape: { batch: 1, heads: 2, kvHeads: 2, lq: 9, lk: 10, headDim: 256, valueDim: 256 },
    causal: false,
    queryOffset: 1,
    table: true,
  },
  {
    name: 'causal decoding step (lq 1), d 72, multi-head',
    shape: { batch: 3, heads: 2, kvHeads: 2, lq: 1, lk: 40, headDim: 72, valueDim: 72 },
    causal: true,
    table: true,
  },
];

describe('fused attention forward and backward vs the fp64 reference', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const x = attentionInputs(c);
      const s = c.shape;
      const [gq, gk, gv, gd] = [x.q, x.k, x.v, x.dOut].map((a) => ctx.upload(a));
      const gt = c.table ? ctx.upload(x.table) : undefined;
      const gopts = gt ? { ...x.opts, table: gt } : x.opts;
      const fwd = gpuAttentionForward(ctx, s, gq!, gk!, gv!, gopts);
      const grads = gpuAttentionBackward(ctx, s, gq!, gk!, gv!, fwd.out, fwd.lse, gd!, gopts);
      if (!c.table) expect(grads.dTable).toBeUndefined();
      const got = {
        out: await ctx.download(fwd.out),
        lse: await ctx.download(fwd.lse),
        dq: await ctx.download(grads.dq),
        dk: await ctx.download(grads.dk),
        dv: await ctx.download(grads.dv),
        dTable: grads.dTable && (await ctx.download(grads.dTable)),
      };
      const { ratios, emptyRowMismatches } = attentionErrors(c, x, got);
      for (const [name, e] of Object.entries(ratios)) expect(e, name).toBeLessThanOrEqual(1);
      // Rows that see no key: lse -Infinity, exactly as the reference (out 0 is inside the out bound).
      expect(emptyRowMismatches).toBe(0);
      ctx.release(gq!, gk!, gv!, gd!, fwd.out, fwd.lse, grads.dq, grads.dk, grads.dv);
    });
  }
});

describe('f16 storage (f32 accumulation)', () => {
  it('f16 conversion: every finite half round-trips; other values round to nearest within half an ulp', () => {
    for (let h = 0; h < 0x10000; h++) {
      const x = f16Value(h);
      if (Number.isFinite(x) && !(x === 0 && h === 0x8000)) expect(f16Bits(x)).toBe(h);
    }
    expect(f16Bits(-0)).toBe(0x8000);
    const rng = new Rng(3);
    for (let i = 0; i < 2000; i++) {
      const x = rng.normal() * 2 ** (rng.int(40) - 25);
      const y = f16Value(f16Bits(x));
      const ulp = 2 ** Math.max(Math.floor(Math.log2(Math.abs(x))) - 10, -24);
      expect(Math.abs(y - x)).toBeLessThanOrEqual(ulp / 2 + 1e-300);
    }
  });

  it('attention forward and backward from f16 q, k, v, dOut match the fp64 reference on the same halves', async () => {
    if (!ctx.hasF16) {
      // An adapter without shader-f16 (SwiftShader, some browsers) must refuse f16 clearly instead.
      expect(() => ctx.empty([1], 'f16')).toThrow(/shader-f16/);
      return;
    }
    expect(() => ctx.upload([1e5], undefined, 'f16')).toThrow(/beyond the f16 range/);
    const rng = new Rng(16);
    const s = { batch: 2, heads: 4, kvHeads: 2, lq: 6, lk: 9, headDim: 66, valueDim: 70 };
    const half = (n: number) => randn(rng, n).map((x) => f16Value(f16Bits(x)));
    const q = half(2 * 4 * 6 * 66);
    const k = half(2 * 2 * 9 * 66);
    const v = half(2 * 2 * 9 * 70);
    const dOut = half(2 * 4 * 6 * 70);
    const opts = { causal: true, scale: 1 / Math.sqrt(66), queryOffset: 1 };
    const [gq, gk, gv, gd] = [q, k, v, dOut].map((x) => ctx.upload(x, undefined, 'f16'));
    expect(gq!.dtype).toBe('f16');
    expect(Array.from(await ctx.download(gq!))).toEqual(Array.from(q)); // halves are stored exactly
    const f = gpuAttentionForward(ctx, s, gq!, gk!, gv!, opts);
    const g = gpuAttentionBackward(ctx, s, gq!, gk!, gv!, f.out, f.lse, gd!, opts);
    const ref = referenceAttentionForward(s, q, k, v, opts);
    const refG = referenceAttentionBackward(s, q, k, v, ref.out, ref.lse, dOut, opts);
    // Inputs are exact halves, so only the f32 accumulation differs: the same bounds as the f32 cases.
    const tol = (n: number, r: ArrayLike<number>) => 8 * n * U32 * maxAbs(r);
    expect(maxAbsDiff(await ctx.download(f.out), ref.out)).toBeLessThanOrEqual(tol(66 + 9, ref.out));
    expect(maxAbsDiff(await ctx.download(g.dq), refG.dq)).toBeLessThanOrEqual(tol(66 + 70 + 18, refG.dq));
    expect(maxAbsDiff(await ctx.download(g.dk), refG.dk)).toBeLessThanOrEqual(tol(66 + 70 + 9 + 12, refG.dk));
    expect(maxAbsDiff(await ctx.download(g.dv), refG.dv)).toBeLessThanOrEqual(tol(66 + 9 + 12, refG.dv));
    // Mixing formats is refused.
    const q32 = ctx.upload(q);
    expect(() => gpuAttentionForward(ctx, s, q32, gk!, gv!, opts)).toThrow(/k must be an f32 tensor/);
  });
});

describe('GPU gradients against central differences of the fp64 forward', () => {
  it('dq, dk, dv and dTable (causal, GQA 4/2, table, d 12, offset 3)', async () => {
    const rng = new Rng(99);
    const s = { batch: 1, heads: 4, kvHeads: 2, lq: 5, lk: 7, headDim: 12, valueDim: 10 };
    const offset = 3;
    const span = offset + s.lq + s.lk - 1;
    const q = randn(rng, 4 * 5 * 12);
    const k = randn(rng, 2 * 7 * 12);
    const v = randn(rng, 2 * 7 * 10);
    const dOut = randn(rng, 4 * 5 * 10);
    const table = randn(rng, 4 * span, 0.5);
    const opts = { causal: true, scale: 1 / Math.sqrt(12), queryOffset: offset };
    // The scalar whose gradient the backward returns: sum(out * dOut), evaluated in fp64.
    const loss = () => {
      const bias: PositionBias = { kind: 'distance', table };
      const { out } = referenceAttentionForward(s, q, k, v, { ...opts, bias });
      let l = 0;
      for (let i = 0; i < out.length; i++) l += out[i]! * dOut[i]!;
      return l;
    };
    const [gq, gk, gv, gd, gt] = [q, k, v, dOut, table].map((x) => ctx.upload(x));
    const gopts = { ...opts, table: gt! };
    const f = gpuAttentionForward(ctx, s, gq!, gk!, gv!, gopts);
    const g = gpuAttentionBackward(ctx, s, gq!, gk!, gv!, f.out, f.lse, gd!, gopts);
    // f32 gradients (relative error ~ (d + dv + Lk + Lq) U32 ~ 2e-6) against fp64 differences (~1e-10).
    const pick = (n: number) => sampleIndices(n, 12, n);
    expect(maxRelativeGradError(loss, q, await ctx.download(g.dq), pick(q.length))).toBeLessThan(2e-5);
    expect(maxRelativeGradError(loss, k, await ctx.download(g.dk), pick(k.length))).toBeLessThan(2e-5);
    expect(maxRelativeGradError(loss, v, await ctx.download(g.dv), pick(v.length))).toBeLessThan(2e-5);
    expect(maxRelativeGradError(loss, table, await ctx.download(g.dTable!))).toBeLessThan(2e-5);
  });
});

describe('device loss', () => {
  it('every later call refuses with one clear error', async () => {
    const other = await acquireNodeGpu();
    const t = other.upload(new Float32Array(4));
    other.device.destroy();
    await other.device.lost;
    expect(() => other.upload(new Float32Array(4))).toThrow(/device was lost.*last checkpoint/);
    await expect(other.download(t)).rejects.toThrow(HypeError);
  });
});

describe('refusals before dispatch', () => {
  const shape = { batch: 1, heads: 2, kvHeads: 2, lq: 3, lk: 3, headDim: 8, valueDim: 8 };

  it('head dims above 256, GQA mismatches and wrong table sizes', () => {
    const t = ctx.zeros([1 * 2 * 3 * 300]);
    expect(() => gpuAttentionForward(ctx, { ...shape, headDim: 300 }, t, t, t, { causal: false, scale: 1 })).toThrow(
      /maximum of 256/,
    );
    const x = ctx.zeros([48]);
    expect(() => gpuAttentionForward(ctx, { ...shape, kvHeads: 3 }, x, x, x, { causal: false, scale: 1 })).toThrow(
      /multiple of kvHeads/,
    );
    const table = ctx.zeros([5]);
    expect(() => gpuAttentionForward(ctx, shape, x, x, x, { causal: true, scale: 1, table })).toThrow(
      /needs H \* span = 2 \* 5/,
    );
  });

  it('shapes beyond the adapter limits name the limit', () => {
    // A view of the same device with smaller advertised limits stands in for a smaller adapter.
    const small = Object.create(ctx) as GpuContext;
    const limits = {
      maxStorageBufferBindingSize: 64,
      maxComputeWorkgroupStorageSize: 4096,
      maxComputeWorkgroupsPerDimension: 65535,
      maxBufferSize: ctx.limits.maxBufferSize,
    };
    Object.defineProperty(small, 'limits', { value: limits });
    const big = ctx.zeros([100]);
    expect(() => gpuGemm(small, false, false, 10, 10, 1, 1, big, big, 0, big, { lda: 1, ldb: 10, ldc: 10 })).toThrow(
      /maxStorageBufferBindingSize is 64/,
    );
    // Layer and tensor ops bind through the same dispatch, which checks every storage binding before recording.
    expect(() => gpuGeluForward(small, big, big, 100)).toThrow(/maxStorageBufferBindingSize is 64/);
    expect(() => gpuAddInto(small, big, big, 100)).toThrow(/maxStorageBufferBindingSize is 64/);
    const d256 = { batch: 1, heads: 1, kvHeads: 1, lq: 1, lk: 1, headDim: 256, valueDim: 256 };
    const x = ctx.zeros([256]);
    expect(() => gpuAttentionForward(small, d256, x, x, x, { causal: false, scale: 1 })).toThrow(
      /maxComputeWorkgroupStorageSize is 4096/,
    );
  });
});
