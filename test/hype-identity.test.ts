/**
 * The HyPE identity (SPEC section 1, paper eqs 10/13) on random Q, K, V in fp64: attention over the augmented
 * Qhat, Khat with no bias equals attention over Q, K with the exact sinh bias added as a dense tensor.
 * Tolerance: fp64 with |tau| ~ 1 and |mu D| <= ~2 gives errors of a few eps (SPEC measured <= 4e-16); 1e-12 leaves
 * room for the sum over L keys yet fails on any real mistake (a wrong sign, scale or column is >= 1e-3).
 */
import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { augment, coordinate, exactBias, type HypeSpec } from '../src/pe/hype/core.ts';
import { Rng } from '../src/util/rng.ts';

const backend = new ReferenceBackend();

function randn(rng: Rng, n: number): Float64Array {
  const a = new Float64Array(n);
  rng.fillNormal(a);
  return a;
}

function spec1d(H: number, Hkv: number, d: number, tau: number[], mu: number[], T = 1): HypeSpec {
  return {
    heads: H,
    kvHeads: Hkv,
    headDim: d,
    grid: [],
    termAxis: Array(T).fill(0),
    tau: Float64Array.from(tau),
    mu: Float64Array.from(mu),
  };
}

/** Independent dense bias [H, Lq, Lk] from a plain coordinate function (not the library's). */
function denseBias(
  spec: HypeSpec,
  lq: number,
  lk: number,
  offset: number,
  coords: (n: number) => number[],
): Float64Array {
  const T = spec.termAxis.length;
  const out = new Float64Array(spec.heads * lq * lk);
  for (let h = 0; h < spec.heads; h++) {
    for (let i = 0; i < lq; i++) {
      const xq = coords(i + offset);
      for (let l = 0; l < lk; l++) {
        const xk = coords(l);
        let a = 0;
        for (let t = 0; t < T; t++) {
          const ax = spec.termAxis[t]!;
          a += spec.tau[h * T + t]! * Math.sinh(spec.mu[h * T + t]! * (xq[ax]! - xk[ax]!));
        }
        out[(h * lq + i) * lk + l] = a;
      }
    }
  }
  return out;
}

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let err = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    err = Math.max(err, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return err / scale;
}

interface Case {
  spec: HypeSpec;
  shape: AttentionShape;
  causal: boolean;
  coords: (n: number) => number[];
  queryOffset?: number;
  shift?: 'centre' | 'none';
}

/** Runs both sides of the identity; returns the relative errors of the outputs and of the logits' bias part. */
function identityErrors(c: Case, seed: number, scaleOverride?: number) {
  const rng = new Rng(seed);
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = c.shape;
  const q = randn(rng, B * H * lq * d);
  const k = randn(rng, B * Hkv * lk * d);
  const v = randn(rng, B * Hkv * lk * dv);
  const offset = c.queryOffset ?? lk - lq;
  const aug = augment(c.spec, c.shape, q, k, { v, queryOffset: offset, shift: c.shift });
  const scale = scaleOverride ?? aug.scale;
  const viaConcat = backend.attentionForward(aug.shape, aug.qHat, aug.kHat, aug.vHat!, {
    causal: c.causal,
    scale,
    queryOffset: offset,
  });
  const bias = denseBias(c.spec, lq, lk, offset, c.coords);
  const viaDense = backend.attentionForward(c.shape, q, k, v, {
    causal: c.causal,
    scale: 1 / Math.sqrt(d),
    bias: { kind: 'dense', bias, heads: H },
    queryOffset: offset,
  });
  // Logit identity for batch 0, head 0 (and the last head): (Qhat.Khat - Q.K)/sqrt(d) = a.
  const dp = aug.shape.headDim;
  const group = H / Hkv;
  const recovered: number[] = [];
  const exact: number[] = [];
  for (const h of [0, H - 1]) {
    const g = Math.floor(h / group);
    for (let i = 0; i < lq; i += Math.max(1, Math.floor(lq / 64))) {
      for (let l = 0; l < lk; l += Math.max(1, Math.floor(lk / 64))) {
        let hat = 0;
        let plain = 0;
        for (let j = 0; j < dp; j++) hat += aug.qHat[(h * lq + i) * dp + j]! * aug.kHat[(g * lk + l) * dp + j]!;
        for (let j = 0; j < d; j++) plain += q[(h * lq + i) * d + j]! * k[(g * lk + l) * d + j]!;
        recovered.push((hat - plain) / Math.sqrt(d));
        exact.push(bias[(h * lq + i) * lk + l]!);
      }
    }
  }
  return { out: maxRel(viaConcat.out, viaDense.out), logits: maxRel(recovered, exact) };
}

const seq = (n: number) => [n];

describe('HyPE identity (eq 10/13) in fp64', () => {
  for (const causal of [false, true]) {
    it(`1-D, multi-head with GQA, L = 1024, ${causal ? 'causal' : 'bidirectional'}`, () => {
      const L = 1024;
      // Per-head tau of both signs and sizes; mu shared per KV group (2 groups of 2), |mu| (L-1) up to 2.
      const spec = spec1d(4, 2, 4, [1, -0.5, 2, -1.5], [1 / L, 1 / L, -2 / L, -2 / L]);
      const shape = { batch: 1, heads: 4, kvHeads: 2, lq: L, lk: L, headDim: 4, valueDim: 3 };
      const e = identityErrors({ spec, shape, causal, coords: seq }, 11);
      expect(e.out).toBeLessThan(1e-12);
      expect(e.logits).toBeLessThan(1e-12);
    });
  }

  it('queries at an offset (decoding the last rows), batch 2, uncentred and centred give the same result', () => {
    const spec = spec1d(2, 2, 6, [0.7, -1.2], [0.03, 0.02]);
    const shape = { batch: 2, heads: 2, kvHeads: 2, lq: 5, lk: 90, headDim: 6, valueDim: 6 };
    for (const shift of ['centre', 'none'] as const) {
      const e = identityErrors({ spec, shape, causal: true, coords: seq, shift }, 12);
      expect(e.out).toBeLessThan(1e-12);
      expect(e.logits).toBeLessThan(1e-12);
    }
  });

  it('stacking n = 3 pairs adds their biases', () => {
    const L = 256;
    const spec = spec1d(2, 2, 4, [1, -0.3, 0.5, -2, 0.25, 1], [1 / L, 3 / L, -0.5 / L, 0.5 / L, 2 / L, 1 / L], 3);
    const shape = { batch: 1, heads: 2, kvHeads: 2, lq: L, lk: L, headDim: 4, valueDim: 4 };
    for (const causal of [false, true]) {
      const e = identityErrors({ spec, shape, causal, coords: seq }, 13);
      expect(e.out).toBeLessThan(1e-12);
      expect(e.logits).toBeLessThan(1e-12);
    }
  });

  it('2-D grid: one pair per axis, a = a_x + a_y', () => {
    const grid = [12, 20];
    const spec: HypeSpec = {
      heads: 2,
      kvHeads: 1,
      headDim: 4,
      grid,
      termAxis: [0, 1],
      tau: Float64Array.from([1, -0.5, -2, 0.8]),
      mu: Float64Array.from([0.1, 0.05, 0.1, 0.05]),
    };
    const shape = { batch: 1, heads: 2, kvHeads: 1, lq: 240, lk: 240, headDim: 4, valueDim: 4 };
    const coords = (n: number) => [Math.floor(n / 20), n % 20];
    for (const causal of [false, true]) {
      const e = identityErrors({ spec, shape, causal, coords }, 14);
      expect(e.out).toBeLessThan(1e-12);
      expect(e.logits).toBeLessThan(1e-12);
    }
  });

  it('3-D grid: one pair per axis', () => {
    const grid = [4, 6, 5];
    const spec: HypeSpec = {
      heads: 1,
      kvHeads: 1,
      headDim: 4,
      grid,
      termAxis: [0, 1, 2],
      tau: Float64Array.from([1, -0.5, 2]),
      mu: Float64Array.from([0.3, -0.2, 0.25]),
    };
    const shape = { batch: 1, heads: 1, kvHeads: 1, lq: 120, lk: 120, headDim: 4, valueDim: 2 };
    const coords = (n: number) => [Math.floor(n / 30), Math.floor(n / 5) % 6, n % 5];
    const e = identityErrors({ spec, shape, causal: false, coords }, 15);
    expect(e.out).toBeLessThan(1e-12);
    expect(e.logits).toBeLessThan(1e-12);
    expect([coordinate(grid, 77, 0), coordinate(grid, 77, 1), coordinate(grid, 77, 2)]).toEqual(coords(77));
  });

  it('1-D HyPE on the flattened index of a 2-D grid is a different (wrong) bias', () => {
    const grid = [12, 20];
    const two: HypeSpec = {
      heads: 1,
      kvHeads: 1,
      headDim: 4,
      grid,
      termAxis: [0, 1],
      tau: Float64Array.from([1, 1]),
      mu: Float64Array.from([0.1, 0.1]),
    };
    const flat = spec1d(1, 1, 4, [1], [0.1]);
    let worst = 0;
    for (let i = 0; i < 240; i++) {
      for (let l = 0; l < 240; l++)
        worst = Math.max(worst, Math.abs(exactBias(two, 0, i, l) - exactBias(flat, 0, i, l)));
    }
    // A key one row up is 20 flat steps but 1 grid step: sinh(2.0) vs sinh(0.1) already differ by 3.5.
    expect(worst).toBeGreaterThan(1);
    // And the attention outputs differ: the 2-D identity holds only with the 2-D coordinates.
    const shape = { batch: 1, heads: 1, kvHeads: 1, lq: 240, lk: 240, headDim: 4, valueDim: 4 };
    const wrong = identityErrors({ spec: flat, shape, causal: false, coords: (n) => [Math.floor(n / 20), n % 20] }, 16);
    expect(wrong.out).toBeGreaterThan(1e-3);
  });

  it('a softmax scale of 1/sqrt(d + 2) instead of 1/sqrt(d) is detected', () => {
    const spec = spec1d(2, 2, 8, [1, -1], [0.01, 0.01]);
    const shape = { batch: 1, heads: 2, kvHeads: 2, lq: 64, lk: 64, headDim: 8, valueDim: 8 };
    const right = identityErrors({ spec, shape, causal: true, coords: seq }, 17);
    const wrong = identityErrors({ spec, shape, causal: true, coords: seq }, 17, 1 / Math.sqrt(10));
    expect(right.out).toBeLessThan(1e-12);
    expect(wrong.out).toBeGreaterThan(1e-3);
  });
});

describe('zero padding', () => {
  it('padding Qhat, Khat and V to a multiple of 8 gives bitwise identical outputs', () => {
    const rng = new Rng(21);
    const spec = spec1d(2, 1, 5, [1, -2], [0.02, 0.02]);
    const shape = { batch: 1, heads: 2, kvHeads: 1, lq: 40, lk: 40, headDim: 5, valueDim: 3 };
    const q = randn(rng, 2 * 40 * 5);
    const k = randn(rng, 40 * 5);
    const v = randn(rng, 40 * 3);
    const plain = augment(spec, shape, q, k, { v });
    const padded = augment(spec, shape, q, k, { v, multiple: 8 });
    expect(plain.shape.headDim).toBe(7);
    expect(padded.shape.headDim).toBe(8);
    expect(padded.shape.valueDim).toBe(8);
    const opts = { causal: true, scale: plain.scale };
    expect(padded.scale).toBe(plain.scale);
    const a = backend.attentionForward(plain.shape, plain.qHat, plain.kHat, plain.vHat!, opts);
    const b = backend.attentionForward(padded.shape, padded.qHat, padded.kHat, padded.vHat!, opts);
    for (let r = 0; r < 80; r++) {
      for (let c = 0; c < 8; c++) {
        if (c < 3) expect(b.out[r * 8 + c]).toBe(a.out[r * 3 + c]);
        else expect(b.out[r * 8 + c]).toBe(0);
      }
    }
    expect(Array.from(b.lse)).toEqual(Array.from(a.lse));
  });
});
