/**
 * WebGpuBackend (the Backend interface on the GPU, lavapipe here and in CI) against the reference backend, member by
 * member: memory (allocate zeroed, upload at offsets, ranged reads, statistics as fp64, refusals), the tensor ops
 * the seam added (copyRows, fill, addInto, splitQkv/mergeQkv and heads <-> tokens, also with head row strides,
 * globalNorm, clipByNorm, countNonFinite, gateForward/gateBackward), the cross-entropy mean into a statistics slot, gemm, attention with a distance table handle
 * (biasGrad false skips dTable) and the refusals (scoreAttention, a dense bias, fp64).
 * Inputs are rounded to f32 before either side sees them, so the memory ops must agree EXACTLY, and each arithmetic
 * op within its own f32 bound (U32 = 2^-24), stated where used.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { distanceSpan, type AttentionShape } from '../src/backend/backend.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { WebGpuBackend, type GpuHandle } from '../src/backend/webgpu/backend.ts';
import { HypeError } from '../src/errors.ts';
import { Rng } from '../src/util/rng.ts';
import { gpu, maxAbs, maxAbsDiff, randn, U32 } from './helpers/webgpu.ts';

let be: WebGpuBackend;
beforeAll(async () => {
  be = new WebGpuBackend(await gpu());
}, 60_000);

const ref = new ReferenceBackend();
const rng = new Rng(77);
/** Values exactly representable in f32 (so a copy must reproduce them bit for bit). */
const f32s = (n: number, std = 1) => Float64Array.from(Float32Array.from(randn(rng, n, std)));
const put = (x: ArrayLike<number>): GpuHandle => {
  const h = be.allocate('float32', x.length);
  be.upload(x, h);
  return h;
};
const get = (h: GpuHandle) => be.read(h);

describe('memory members', () => {
  it('allocate is zeroed, upload writes at an offset, read returns a range; stats come back as fp64', async () => {
    const h = be.allocate('float32', 10, 'a test tensor');
    expect(be.sizeOf(h)).toBe(10);
    expect(be.dtypeOf(h)).toBe('float32');
    expect(be.hostView(h)).toBeNull();
    expect(be.residence).toBe('device');
    expect(Array.from(await be.read(h))).toEqual(new Array(10).fill(0));
    be.upload([1.5, -2, 3], h, 4);
    expect(Array.from(await be.read(h, 3, 5))).toEqual([0, 1.5, -2, 3, 0]);
    const s = be.allocateStats(3);
    be.upload([0.1, 2, 3], s);
    const got = await be.read(s);
    expect(got).toBeInstanceOf(Float64Array);
    expect(got[0]).toBe(Math.fround(0.1)); // the device's widest float is f32: stated, not hidden
    const ints = be.allocateInt(4);
    be.uploadInt(Int32Array.of(3, 1, 4, 1), ints);
    expect(Array.from((await be.ctx.download(ints)) as Int32Array)).toEqual([3, 1, 4, 1]);
    for (const t of [h, s, ints]) be.release(t);
  });

  it('refuses fp64 storage, out-of-range transfers and released handles with a HypeError', async () => {
    expect(() => be.allocate('float64', 4)).toThrow(/float32 only/);
    const h = be.allocate('float32', 4);
    expect(() => be.upload([1, 2, 3], h, 2)).toThrow(HypeError);
    await expect(be.read(h, 2, 3)).rejects.toThrow(HypeError);
    be.release(h);
    expect(() => be.fill(h, 1, 0, 4)).toThrow(/released/);
    expect(() => be.release(h)).toThrow(/released/);
    const huge = be.ctx.limits.maxStorageBufferBindingSize / 4 + 1;
    expect(() => be.allocate('float32', huge)).toThrow(/maxStorageBufferBindingSize/);
  });
});

describe('tensor ops match the host versions', () => {
  it('copyRows (strided, padded columns, within one tensor), fill (NaN too) and addInto (and x += x)', async () => {
    const src = f32s(6 * 7);
    const dst = f32s(5 * 9);
    const [gs, gd] = [put(src), put(dst)];
    be.copyRows(gs, 3, 7, gd, 2, 9, 4, 5);
    ref.copyRows(src, 3, 7, dst, 2, 9, 4, 5);
    expect(Array.from(await get(gd))).toEqual(Array.from(dst));
    // Contiguous rows (stride = width) take the queue's buffer copy instead of a kernel.
    be.copyRows(gs, 1, 6, gd, 30, 6, 2, 6);
    ref.copyRows(src, 1, 6, dst, 30, 6, 2, 6);
    expect(Array.from(await get(gd))).toEqual(Array.from(dst));
    // Source and destination in one tensor, apart; overlapping ranges are refused (the host's row-by-row result
    // there depends on the row order).
    be.copyRows(gd, 0, 9, gd, 27, 9, 2, 6);
    ref.copyRows(dst, 0, 9, dst, 27, 9, 2, 6);
    expect(Array.from(await get(gd))).toEqual(Array.from(dst));
    expect(() => be.copyRows(gd, 0, 9, gd, 4, 9, 3, 6)).toThrow(/overlap/);
    be.fill(gd, NaN, 1, 3);
    be.fill(gd, -Infinity, 10, 2);
    be.fill(gd, 0.25, 20, 5);
    ref.fill(dst, NaN, 1, 3);
    ref.fill(dst, -Infinity, 10, 2);
    ref.fill(dst, 0.25, 20, 5);
    expect(Array.from(await get(gd))).toEqual(Array.from(dst));
    // One f32 add of two f32 values is correctly rounded on both sides (the host adds in fp64, then rounds once
    // into its Float32Array — here the host side is fp64, so round it the same way).
    const a = f32s(300);
    const b = f32s(300);
    const [ga, gb] = [put(a), put(b)];
    be.addInto(ga, gb, 300);
    be.addInto(gb, gb, 250);
    ref.addInto(a, b, 300);
    ref.addInto(b, b, 250);
    expect(Array.from(await get(ga))).toEqual(Array.from(Float32Array.from(a)));
    expect(Array.from(await get(gb))).toEqual(Array.from(Float32Array.from(b)));
    for (const t of [gs, gd, ga, gb]) be.release(t);
  });

  it('splitQkv / mergeQkv (grouped-query heads) and headsToTokens / tokensToHeads are exact', async () => {
    const [B, L, H, Hkv, D] = [2, 5, 4, 2, 3];
    const qkv = f32s(B * L * (H + 2 * Hkv) * D);
    const q = new Float64Array(B * H * L * D);
    const k = new Float64Array(B * Hkv * L * D);
    const v = new Float64Array(B * Hkv * L * D);
    ref.splitQkv(qkv, q, k, v, B, L, H, Hkv, D);
    const gq = be.allocate('float32', q.length);
    const gk = be.allocate('float32', k.length);
    const gv = be.allocate('float32', v.length);
    const gqkv = put(qkv);
    be.splitQkv(gqkv, gq, gk, gv, B, L, H, Hkv, D);
    expect(Array.from(await get(gq))).toEqual(Array.from(q));
    expect(Array.from(await get(gk))).toEqual(Array.from(k));
    expect(Array.from(await get(gv))).toEqual(Array.from(v));
    const back = put(f32s(qkv.length)); // garbage: mergeQkv overwrites all of it
    be.mergeQkv(gq, gk, gv, back, B, L, H, Hkv, D);
    expect(Array.from(await get(back))).toEqual(Array.from(qkv));
    expect(() => be.splitQkv(gqkv, gq, gq, gv, B, L, H, Hkv, D)).toThrow(/distinct/);

    const x = f32s(B * H * L * D);
    const tok = new Float64Array(x.length);
    const heads = new Float64Array(x.length);
    ref.headsToTokens(x, tok, B, H, L, D);
    ref.tokensToHeads(tok, heads, B, H, L, D);
    const [gx, gt, gh] = [put(x), be.allocate('float32', x.length), be.allocate('float32', x.length)];
    be.headsToTokens(gx, gt, B, H, L, D);
    be.tokensToHeads(gt, gh, B, H, L, D);
    expect(Array.from(await get(gt))).toEqual(Array.from(tok));
    expect(Array.from(await get(gh))).toEqual(Array.from(x));
    for (const t of [gq, gk, gv, gqkv, back, gx, gt, gh]) be.release(t);
  });

  it('the same four with head row strides (widened operands) agree with the reference exactly', async () => {
    const [B, L, H, Hkv, D, qkS, vS] = [2, 5, 4, 2, 3, 7, 4];
    const qkv = f32s(B * L * (H + 2 * Hkv) * D);
    // Both sides start from the same garbage: the columns past D must keep it.
    const [q0, k0, v0] = [f32s(B * H * L * qkS), f32s(B * Hkv * L * qkS), f32s(B * Hkv * L * vS)];
    const [q, k, v] = [q0.slice(), k0.slice(), v0.slice()];
    ref.splitQkv(qkv, q, k, v, B, L, H, Hkv, D, qkS, vS);
    const [gq, gk, gv, gqkv] = [put(q0), put(k0), put(v0), put(qkv)];
    be.splitQkv(gqkv, gq, gk, gv, B, L, H, Hkv, D, qkS, vS);
    expect(Array.from(await get(gq))).toEqual(Array.from(q));
    expect(Array.from(await get(gk))).toEqual(Array.from(k));
    expect(Array.from(await get(gv))).toEqual(Array.from(v));
    const back = put(f32s(qkv.length));
    be.mergeQkv(gq, gk, gv, back, B, L, H, Hkv, D, qkS, vS);
    expect(Array.from(await get(back))).toEqual(Array.from(qkv));
    expect(() => be.splitQkv(gqkv, gq, gk, gv, B, L, H, Hkv, D, D - 1, vS)).toThrow(/at least D/);

    const tok = f32s(B * L * H * D);
    const h0 = f32s(B * H * L * vS);
    const heads = h0.slice();
    ref.tokensToHeads(tok, heads, B, H, L, D, vS);
    const tokBack = new Float64Array(tok.length);
    ref.headsToTokens(heads, tokBack, B, H, L, D, vS);
    const [gt, gh, gb] = [put(tok), put(h0), be.allocate('float32', tok.length)];
    be.tokensToHeads(gt, gh, B, H, L, D, vS);
    be.headsToTokens(gh, gb, B, H, L, D, vS);
    expect(Array.from(await get(gh))).toEqual(Array.from(heads));
    expect(Array.from(await get(gb))).toEqual(Array.from(tokBack));
    for (const t of [gq, gk, gv, gqkv, back, gt, gh, gb]) be.release(t);
  });

  it('globalNorm over several tensors, clipByNorm with the factor on the device, countNonFinite', async () => {
    // Sizes cross the 4096-value workgroup chunk so both reduction passes do work.
    const xs = [f32s(5000), f32s(17, 3), f32s(9000, 0.1)];
    const gs = xs.map(put);
    const stats = be.allocateStats(4);
    be.globalNorm(gs, stats, 1);
    const want = new Float64Array(4);
    ref.globalNorm(xs, want, 1);
    // A sum of positive squares: each term errs by U32 (fma), each of the <= 64 + 6 + 3 + 6 sequential and tree
    // additions on any path by U32 relative; the square root halves it. 100 U32 relative covers it.
    const norm = (await be.read(stats))[1]!;
    expect(Math.abs(norm - want[1]!)).toBeLessThanOrEqual(100 * U32 * want[1]!);

    // clip below the norm: every value scales by clip / norm (norm as the device holds it, an f32), two roundings.
    const clip = norm / 3;
    be.clipByNorm(gs, stats, 1, clip);
    const f = clip / Math.fround(norm);
    for (let t = 0; t < xs.length; t++) {
      const got = await get(gs[t]!);
      const exp = xs[t]!.map((v) => v * f);
      expect(maxAbsDiff(got, exp)).toBeLessThanOrEqual(3 * U32 * maxAbs(exp));
    }
    // clip above the norm, clip 0, and a non-finite norm leave the tensors alone.
    const before = await get(gs[1]!);
    be.clipByNorm(gs, stats, 1, 1e6);
    be.clipByNorm(gs, stats, 1, 0);
    be.fill(stats, Infinity, 2, 1);
    be.clipByNorm(gs, stats, 2, 1e-3);
    be.fill(stats, NaN, 3, 1);
    be.clipByNorm(gs, stats, 3, 1e-3);
    expect(Array.from(await get(gs[1]!))).toEqual(Array.from(before));

    const x = f32s(9000);
    x[0] = NaN;
    x[4095] = Infinity;
    x[4096] = -Infinity;
    x[8999] = NaN;
    const gx = put(x);
    be.countNonFinite(gx, 9000, stats, 0);
    be.countNonFinite(gx, 4096, stats, 2);
    const counts = await be.read(stats);
    expect([counts[0], counts[2]]).toEqual([4, 2]);
    for (const t of [...gs, gx, stats]) be.release(t);
  });

  it('cross-entropy writes its mean into a statistics slot and returns NaN (a device never answers at once)', async () => {
    const [rows, vocab] = [6, 11];
    const logits = f32s(rows * vocab, 2);
    const targets = Int32Array.from({ length: rows }, (_, i) => (i * 7) % vocab);
    const gl = put(logits);
    const gt = be.allocateInt(rows);
    be.uploadInt(targets, gt);
    const losses = be.allocate('float32', rows);
    const stats = be.allocateStats(3);
    expect(be.softmaxCrossEntropyForward(gl, gt, losses, rows, vocab, stats, 2)).toBeNaN();
    const want = ref.softmaxCrossEntropyForward(logits, targets, new Float64Array(rows), rows, vocab);
    // logsumexp over vocab terms (relative vocab U32 of the sum) plus the max and logit roundings, then a mean.
    const got = await be.read(stats);
    expect(got[0]).toBe(0);
    expect(Math.abs(got[2]! - want)).toBeLessThanOrEqual(8 * vocab * U32 * (maxAbs(logits) + 1));
    for (const t of [gl, gt, losses, stats]) be.release(t);
  });

  it('gemm through the backend (transposes, accumulate) and a refusal when C aliases an operand', async () => {
    const [m, n, k] = [9, 7, 13];
    const a = f32s(k * m);
    const b = f32s(n * k);
    const c = f32s(m * n);
    const [ga, gb, gc] = [put(a), put(b), put(c)];
    be.gemm(true, true, m, n, k, 0.5, ga, m, gb, k, 1, gc, n);
    ref.gemm(true, true, m, n, k, 0.5, a, m, b, k, 1, c, n);
    // k products and sums: k U32 times the sum of |terms|, plus the beta term's rounding.
    expect(maxAbsDiff(await get(gc), c)).toBeLessThanOrEqual(2 * k * U32 * (maxAbs(a) * maxAbs(b) * k + maxAbs(c)));
    expect(() => be.gemm(false, false, 3, 3, 3, 1, gc, 3, gb, 3, 0, gc, 3)).toThrow(/must not share/);
    for (const t of [ga, gb, gc]) be.release(t);
  });

  it('gateForward / gateBackward: log sigmoid and softplus, elementwise and as a re-centred running sum', async () => {
    // WGSL's log is accurate to 2^-21 absolute on [0.5, 2] and exp to 3 + 2|z| ulps, so one activation is off by
    // <= 2^-21 + (2 max|z| + 8) U32 |y|; a running sum of LEN of them adds LEN such errors and LEN f32 additions
    // (<= LEN U32 sum|y|). The backward: sigmoid (<= (2 max|z| + 8) U32 relative) times suffix sums of <= LEN terms
    // (<= (LEN + 2) U32 sum|dOut|), |sigmoid| <= 1. Checked against the host's fp64 op on the same f32 inputs.
    const [OUTER, LEN, INNER] = [3, 40, 5];
    const n = OUTER * LEN * INNER;
    const x = f32s(n, 3);
    const dOut = f32s(n);
    const zMax = maxAbs(x);
    const [gx, gd] = [put(x), put(dOut)];
    const out = be.allocate('float32', n);
    const dx = be.allocate('float32', n);
    for (const fn of ['logSigmoid', 'softplus'] as const)
      for (const origin of [-1, 0, 17, LEN - 1]) {
        const want = new Float64Array(n);
        ref.gateForward(x, want, OUTER, LEN, INNER, fn, origin);
        be.gateForward(gx, out, OUTER, LEN, INNER, fn, origin);
        const y = new Float64Array(n);
        ref.gateForward(x, y, OUTER, LEN, INNER, fn, -1);
        const one = 2 ** -21 + (2 * zMax + 8) * U32 * maxAbs(y);
        const fwdBound = origin < 0 ? one : LEN * one + LEN * U32 * LEN * maxAbs(y);
        expect(maxAbsDiff(await get(out), want)).toBeLessThanOrEqual(fwdBound);
        const wantDx = new Float64Array(n);
        ref.gateBackward(x, dOut, wantDx, OUTER, LEN, INNER, fn, origin);
        be.gateBackward(gx, gd, dx, OUTER, LEN, INNER, fn, origin);
        const terms = origin < 0 ? 1 : LEN;
        const bwdBound = (2 * zMax + 8 + 2 * (terms + 2)) * U32 * terms * maxAbs(dOut);
        expect(maxAbsDiff(await get(dx), wantDx)).toBeLessThanOrEqual(bwdBound);
      }
    // dx may be dOut (in place), as on the host.
    const inPlace = put(dOut);
    be.gateBackward(gx, inPlace, inPlace, OUTER, LEN, INNER, 'logSigmoid', 17);
    be.gateBackward(gx, gd, dx, OUTER, LEN, INNER, 'logSigmoid', 17);
    expect(Array.from(await get(inPlace))).toEqual(Array.from(await get(dx)));
    expect(() => be.gateForward(gx, gx, OUTER, LEN, INNER, 'softplus', -1)).toThrow(HypeError);
    expect(() => be.gateForward(gx, out, OUTER, LEN, INNER, 'softplus', LEN)).toThrow(/origin/);
    expect(() => be.gateForward(gx, out, OUTER, LEN, INNER, 'tanh' as never, -1)).toThrow(/gate function/);
    for (const t of [gx, gd, out, dx, inPlace]) be.release(t);
  });
});

describe('attention through the backend', () => {
  const shape: AttentionShape = { batch: 2, heads: 4, kvHeads: 2, lq: 6, lk: 6, headDim: 8, valueDim: 8 };
  const span = distanceSpan(6, 6);

  it('matches the reference with a distance-table handle; biasGrad false returns no dBias', async () => {
    const q = f32s(2 * 4 * 6 * 8);
    const k = f32s(2 * 2 * 6 * 8);
    const v = f32s(2 * 2 * 6 * 8);
    const table = f32s(4 * span, 0.5);
    const dOut = f32s(2 * 4 * 6 * 8);
    const [gq, gk, gv, gtab, gdo] = [q, k, v, table, dOut].map(put) as GpuHandle[];
    const opts = { causal: true, scale: 1 / Math.sqrt(8) };
    const f = be.attentionForward(shape, gq!, gk!, gv!, { ...opts, bias: { kind: 'distance', table: gtab! } });
    const rf = ref.attentionForward(shape, q, k, v, { ...opts, bias: { kind: 'distance', table } });
    // Bounds as test/webgpu-kernels.test.ts: the softmax and P V sums carry about (D + Lk) U32 relative.
    const tol = (x: ArrayLike<number>) => 32 * (8 + 6) * U32 * Math.max(1, maxAbs(x));
    expect(maxAbsDiff(await get(f.out), rf.out)).toBeLessThanOrEqual(tol(rf.out));
    const g = be.attentionBackward(shape, gq!, gk!, gv!, f.out, f.lse, gdo!, {
      ...opts,
      bias: { kind: 'distance', table: gtab! },
    });
    const rg = ref.attentionBackward(shape, q, k, v, rf.out, rf.lse, dOut, {
      ...opts,
      bias: { kind: 'distance', table },
    });
    expect(maxAbsDiff(await get(g.dq), rg.dq)).toBeLessThanOrEqual(tol(rg.dq));
    expect(maxAbsDiff(await get(g.dk), rg.dk)).toBeLessThanOrEqual(tol(rg.dk));
    expect(maxAbsDiff(await get(g.dv), rg.dv)).toBeLessThanOrEqual(tol(rg.dv));
    expect(g.dBias.kind).toBe('distance');
    expect(rg.dBias.kind).toBe('distance');
    if (g.dBias.kind === 'distance' && rg.dBias.kind === 'distance')
      expect(maxAbsDiff(await get(g.dBias.table), rg.dBias.table)).toBeLessThanOrEqual(
        tol(rg.dBias.table) * 2 * 6, // a dTable entry sums up to B * Lq dLogits
      );
    const g2 = be.attentionBackward(shape, gq!, gk!, gv!, f.out, f.lse, gdo!, {
      ...opts,
      bias: { kind: 'distance', table: gtab! },
      biasGrad: false,
    });
    expect(g2.dBias).toEqual({ kind: 'none' });
    expect(Array.from(await get(g2.dq))).toEqual(Array.from(await get(g.dq))); // the same kernels otherwise
    for (const t of [gq, gk, gv, gtab, gdo, f.out, f.lse, g.dq, g.dk, g.dv, g2.dq, g2.dk, g2.dv]) be.release(t!);
  });

  it('refuses attention over explicit scores, the Householder walk and a dense bias, naming the way out', () => {
    const t = be.allocate('float32', 2 * 4 * 6 * 8);
    const hooks = { logits() {}, backward: () => 0 };
    expect(() => be.scoreAttention(shape, t, t, t, { causal: true, queryOffset: 0, scale: 1 }, hooks)).toThrow(
      /runs on host backends/,
    );
    expect(() =>
      be.attentionForward(shape, t, t, t, { causal: true, scale: 1, bias: { kind: 'dense', bias: t, heads: 1 } }),
    ).toThrow(/dense position bias/);
    expect(() => be.householderWalk()).toThrow(/runs on host backends/);
    be.release(t);
  });
});

describe('submission batching (context.ts)', () => {
  it('kernels are submitted together; a host write into a tensor runs after the kernels recorded before it', async () => {
    const ctx = be.ctx;
    const x = put([1, 2, 3, 4]);
    const before = be.allocate('float32', 4);
    const after = be.allocate('float32', 4);
    await be.read(x); // settle the set-up's submits
    const s0 = ctx.submits;
    be.addInto(before, x, 4); // recorded, not submitted: it must still see x = 1..4
    be.upload([10, 20, 30, 40], x); // forces the recorded kernel out first
    be.addInto(after, x, 4);
    expect(Array.from(await get(before))).toEqual([1, 2, 3, 4]);
    expect(Array.from(await get(after))).toEqual([10, 20, 30, 40]);
    expect(ctx.submits - s0).toBe(3); // the recorded kernel before the upload, then one per read
  });

  it('each recorded dispatch keeps its own uniforms until its batch runs, past the batch capacity', async () => {
    const ctx = be.ctx;
    const n = 2 * ctx.batchCapacity + 100; // more fills than two batches hold: two forced submits, then the read's
    const w = be.allocate('float32', n);
    await be.read(w);
    const s0 = ctx.submits;
    for (let i = 0; i < n; i++) be.fill(w, i * 0.5, i, 1); // the same kernel, other uniforms each time
    expect(ctx.submits - s0).toBe(2);
    expect(Array.from(await get(w))).toEqual(Array.from({ length: n }, (_, i) => i * 0.5));
    expect(ctx.submits - s0).toBe(3);
  });
});
