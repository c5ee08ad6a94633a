/**
 * Backend.householderWalk: the native kernel (native/householder.cc) against the reference's plain loops
 * (src/backend/householder-walk.ts), logits and every gradient, over windows of several chunks, decoding offsets,
 * grouped-query heads, odd head dims, both dtypes; and the refusals. The reference itself is checked against the
 * explicit matrix-product logits and central differences in pe-path.test.ts and pe-path-chunked.test.ts.
 *
 * Tolerances. In fp64 both backends compute everything in fp64 from the same inputs and round each output once,
 * so they differ only by fp64 reassociation (sums in another order, FMA): a few hundred times 2^-53 of the
 * tensor's largest entry over walks of <= 32 factors and D <= 32 terms; 1e-12 bounds it. In fp32 the walks are
 * still fp64 but the native cross-chunk products run in fp32 (as the fp32 path always has): see fp32Bound. The
 * measured errors are a few u = 2^-24 of the largest entry, against bounds of 64 u to 320 u here.
 */
import { describe, expect, it } from 'vitest';
import type { AttentionShape, Backend } from '../src/backend/backend.ts';
import { WALK_CHUNK } from '../src/backend/householder-walk.ts';
import { loadNativeAddon, NativeBackend, nativeLoadError } from '../src/backend/native.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { HypeError } from '../src/errors.ts';
import { allocate, type DType, type FloatArray } from '../src/tensor.ts';
import { Rng } from '../src/util/rng.ts';

const addon = loadNativeAddon();
if (!addon && process.env.CI === 'true') throw new Error(`native addon missing in CI: ${nativeLoadError()}`);
const suite = addon ? describe : describe.skip;

const reference = new ReferenceBackend();
const C = WALK_CHUNK;

interface Case {
  name: string;
  batch: number;
  heads: number;
  kvHeads: number;
  lq: number;
  lk: number;
  off: number;
  D: number;
}

const CASES: Case[] = [
  { name: 'one chunk', batch: 2, heads: 2, kvHeads: 2, lq: 20, lk: 20, off: 0, D: 8 },
  { name: 'four chunks and a ragged one', batch: 2, heads: 2, kvHeads: 2, lq: 4 * C + 5, lk: 4 * C + 5, off: 0, D: 16 },
  { name: 'grouped-query heads (4 on 2)', batch: 1, heads: 4, kvHeads: 2, lq: 3 * C, lk: 3 * C, off: 0, D: 8 },
  {
    name: 'decoding tail (queryOffset inside a chunk)',
    batch: 2,
    heads: 2,
    kvHeads: 1,
    lq: 9,
    lk: 3 * C + 4,
    off: 3 * C - 5,
    D: 8,
  },
  { name: 'one cached query', batch: 1, heads: 2, kvHeads: 2, lq: 1, lk: 2 * C + 3, off: 2 * C + 2, D: 8 },
  { name: 'queries short of the last keys', batch: 1, heads: 2, kvHeads: 2, lq: 2 * C + 3, lk: 3 * C, off: 20, D: 32 },
  { name: 'odd head dim', batch: 1, heads: 1, kvHeads: 1, lq: 2 * C + 7, lk: 2 * C + 7, off: 0, D: 3 },
];

/** Random inputs; w rows of unit length and beta in (0, 2), as PaTH's factor network makes them. */
function inputs(c: Case, dtype: DType, seed: number) {
  const rng = new Rng(seed);
  const fill = (n: number) => {
    const a = allocate(dtype, n);
    for (let i = 0; i < n; i++) a[i] = rng.uniform() * 2 - 1;
    return a;
  };
  const shape: AttentionShape = { ...c, headDim: c.D, valueDim: 1 };
  const kvRows = c.batch * c.kvHeads * c.lk;
  const w = new Float64Array(kvRows * c.D);
  for (let t = 0; t < kvRows; t++) {
    let sq = 0;
    for (let d = 0; d < c.D; d++) sq += (w[t * c.D + d] = rng.uniform() * 2 - 1) ** 2;
    for (let d = 0; d < c.D; d++) w[t * c.D + d]! /= Math.sqrt(sq);
  }
  const beta = Float64Array.from({ length: kvRows }, () => 2 * rng.uniform());
  const LL = c.batch * c.heads * c.lq * c.lk;
  return {
    shape,
    q: fill(c.batch * c.heads * c.lq * c.D),
    k: fill(kvRows * c.D),
    w,
    beta,
    dLogits: fill(LL),
    // Starting gradients, to see that backward adds to them.
    dq: fill(c.batch * c.heads * c.lq * c.D),
    dk: fill(kvRows * c.D),
    dw: Float64Array.from(fill(kvRows * c.D)),
    dbeta: Float64Array.from(fill(kvRows)),
  };
}

const SENTINEL = 12345;

/** Logits (masked entries left at SENTINEL) and the gradients added to the starting ones, on one backend. */
function run(backend: Backend, c: Case, dtype: DType, seed = 1) {
  const x = inputs(c, dtype, seed);
  const logits = allocate(dtype, x.dLogits.length).fill(SENTINEL);
  const walk = backend.householderWalk(x.shape, c.off, 0.6, x.q, x.k, x.w, x.beta, logits);
  walk.backward(x.dLogits, x.dq, x.dk, x.dw, x.dbeta);
  return { logits, dq: x.dq, dk: x.dk, dw: x.dw, dbeta: x.dbeta };
}

/** max |a - b| / (rel |b| + abs max|b|) over the visible entries: <= 1 means within the bound. */
function boundRatio(a: FloatArray, b: FloatArray, rel: number, abs: number): number {
  let scale = 0;
  for (let i = 0; i < b.length; i++) if (b[i] !== SENTINEL) scale = Math.max(scale, Math.abs(b[i]!));
  let worst = 0;
  for (let i = 0; i < b.length; i++) {
    if (b[i] === SENTINEL) continue;
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / (rel * Math.abs(b[i]!) + abs * scale));
  }
  return worst;
}

/** Each logit entry is visible (written) iff key l <= query position i + off. */
function expectMask(logits: FloatArray, c: Case): void {
  let wrong = 0;
  for (let bh = 0; bh < c.batch * c.heads; bh++) {
    for (let i = 0; i < c.lq; i++) {
      for (let l = 0; l < c.lk; l++) {
        const masked = logits[(bh * c.lq + i) * c.lk + l] === SENTINEL;
        if (masked !== l > i + c.off) wrong++;
      }
    }
  }
  expect(wrong).toBe(0);
}

const FP32_U = 2 ** -24;

/**
 * fp32: the cross-chunk products run in fp32 (each sums at most D + C terms, error <= (D + C) u of its scale),
 * and a walk state passes through at most lastChunk of them (one move per chunk) plus the logit's own product.
 */
function fp32Bound(c: Case): number {
  const lastChunk = Math.floor((c.off + c.lq - 1) / C);
  return (lastChunk + 1) * (c.D + C) * FP32_U;
}

suite('Backend.householderWalk: native kernel vs the reference loops', () => {
  const native = new NativeBackend({ threads: 2 });
  const FP32_ULP = 2 ** -23;
  for (const c of CASES) {
    for (const dtype of ['float64', 'float32'] as const) {
      it(`${dtype}: logits, dq, dk, dw, dbeta agree — ${c.name}`, () => {
        const n = run(native, c, dtype);
        const r = run(reference, c, dtype);
        expectMask(n.logits, c);
        expectMask(r.logits, c);
        expect(n.logits).toBeInstanceOf(dtype === 'float32' ? Float32Array : Float64Array);
        const abs = dtype === 'float32' ? fp32Bound(c) : 1e-12;
        const rel = dtype === 'float32' ? FP32_ULP : 0;
        for (const key of ['logits', 'dq', 'dk', 'dw', 'dbeta'] as const) {
          const ratio = boundRatio(n[key], r[key], rel, abs);
          expect(ratio, key).toBeLessThanOrEqual(1);
        }
      });
    }
  }

  it('gives bitwise the same results on 1 and 2 threads (every task owns what it writes)', () => {
    const c = CASES[2]!;
    const one = new NativeBackend({ threads: 1 });
    const a = run(one, c, 'float32', 3);
    const two = new NativeBackend({ threads: 2 });
    const b = run(two, c, 'float32', 3);
    for (const key of ['logits', 'dq', 'dk', 'dw', 'dbeta'] as const) expect(a[key]).toEqual(b[key]);
  });

  it('refuses bad calls with one clear error, and the addon refuses short or overflowing buffers', () => {
    const c = CASES[0]!;
    const x = inputs(c, 'float32', 1);
    const logits = new Float32Array(x.dLogits.length);
    for (const backend of [native, reference]) {
      const call = (over: Partial<Record<string, unknown>>) => () =>
        backend.householderWalk(
          x.shape,
          (over.off as number) ?? 0,
          0.6,
          (over.q as FloatArray) ?? x.q,
          x.k,
          x.w,
          x.beta,
          (over.logits as FloatArray) ?? logits,
        );
      expect(call({ off: 1 })).toThrow(/queryOffset <= Lk - Lq/);
      expect(call({ off: 1 })).toThrow(HypeError);
      expect(call({ q: Float64Array.from(x.q) })).toThrow(/share the dtype of q/);
      expect(call({ logits: logits.subarray(1) })).toThrow(/logits has/);
      const walk = backend.householderWalk(x.shape, 0, 0.6, x.q, x.k, x.w, x.beta, logits);
      expect(() => walk.backward(x.dLogits, Float64Array.from(x.dq), x.dk, x.dw, x.dbeta)).toThrow(/dtype of q/);
    }
    // Below the TypeScript checks, the bindings protect memory on their own.
    const params = { batch: 2, heads: 2, kvHeads: 2, lq: 20, lk: 20, headDim: 8, queryOffset: 0, scale: 0.6, chunk: C };
    const none = new Float64Array(0);
    expect(() =>
      addon!.householderWalkForward(params, x.q, x.k, x.w, x.beta, logits.subarray(5), none, none, none, none),
    ).toThrow(/hype native: logits has/);
    const huge = { ...params, batch: 2 ** 40, heads: 2 ** 20, kvHeads: 1 };
    expect(() => addon!.householderWalkForward(huge, x.q, x.k, x.w, x.beta, logits, none, none, none, none)).toThrow(
      /size overflows/,
    );
    expect(() =>
      addon!.householderWalkForward(
        { ...params, queryOffset: 1 },
        x.q,
        x.k,
        x.w,
        x.beta,
        logits,
        none,
        none,
        none,
        none,
      ),
    ).toThrow(/queryOffset/);
  });
});
