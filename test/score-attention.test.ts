/**
 * Backend.scoreAttention on its own, for every backend: an encoding-like additive score term E [B, H, Lq, Lk] and
 * a value-side term (out_i[0] += sum_l P_il c_il) reach it through the hooks, and the result is compared with a
 * plain fp64 masked softmax written here (softmaxTimesValues), under causal masks, query offsets (decoding tails,
 * a row that sees no key), grouped-query heads and Lq != Lk. Gradients of q, k, v and E (the dLogits handed back to
 * the encoding) are checked against central differences in fp64.
 */
import { describe, expect, it } from 'vitest';
import type { AttentionShape, Backend } from '../src/backend/backend.ts';
import { loadBackend } from '../src/backend/index.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { ScratchPool, type ExplicitHooks } from '../src/backend/score-attention.ts';
import { HypeError } from '../src/errors.ts';
import { Rng } from '../src/util/rng.ts';
import type { FloatArray } from '../src/tensor.ts';
import { maxRelativeGradError } from './helpers/gradcheck.ts';
import { dotAll, randomArray, relativeMaxError, softmaxTimesValues } from './helpers/pe-explicit.ts';

interface Case {
  name: string;
  shape: AttentionShape;
  causal: boolean;
  queryOffset: number;
}

const CASES: Case[] = [
  {
    name: 'causal, GQA 4:2, Lq = Lk',
    shape: { batch: 2, heads: 4, kvHeads: 2, lq: 7, lk: 7, headDim: 3, valueDim: 2 },
    causal: true,
    queryOffset: 0,
  },
  {
    name: 'causal decoding tail (Lq < Lk, offset Lk - Lq)',
    shape: { batch: 1, heads: 2, kvHeads: 1, lq: 3, lk: 8, headDim: 4, valueDim: 3 },
    causal: true,
    queryOffset: 5,
  },
  {
    name: 'causal, offset -2 (the first rows see no key)',
    shape: { batch: 1, heads: 2, kvHeads: 2, lq: 6, lk: 6, headDim: 2, valueDim: 2 },
    causal: true,
    queryOffset: -2,
  },
  {
    name: 'bidirectional, GQA 3:1, Lq != Lk',
    shape: { batch: 1, heads: 3, kvHeads: 1, lq: 4, lk: 6, headDim: 3, valueDim: 2 },
    causal: false,
    queryOffset: 2,
  },
];

const visible = (c: Case, i: number, l: number) => !c.causal || l <= i + c.queryOffset;

/** The inputs of one call: q, k, v, the score term E and the value-side coefficients C (both [B, H, Lq, Lk]). */
function inputs(c: Case, seed: number) {
  const s = c.shape;
  const rng = new Rng(seed);
  const n = s.batch * s.heads * s.lq * s.lk;
  return {
    q: randomArray(rng, s.batch * s.heads * s.lq * s.headDim),
    k: randomArray(rng, s.batch * s.kvHeads * s.lk * s.headDim),
    v: randomArray(rng, s.batch * s.kvHeads * s.lk * s.valueDim),
    e: randomArray(rng, n),
    c: randomArray(rng, n, 0.5),
  };
}

/**
 * Hooks of a made-up encoding: logits = S + E on the visible entries (masked ones are set to NaN, which the
 * backend must never read), out_i[0] += sum_l P_il C_il, dP_il += dOut_i[0] C_il; the backward records dLogits
 * into dE and leaves the content part to the backend (alpha = scale).
 */
function hooks(c: Case, e: FloatArray, cv: FloatArray, dE: Float64Array, scale: number): ExplicitHooks {
  const { heads: H, lq, lk, valueDim: dv } = c.shape;
  const at = (b: number, h: number) => (b * H + h) * lq * lk;
  return {
    logits: (b, h, _kh, S) => {
      for (let i = 0; i < lq; i++)
        for (let l = 0; l < lk; l++)
          S[i * lk + l] = visible(c, i, l) ? S[i * lk + l]! + e[at(b, h) + i * lk + l]! : NaN;
    },
    valueTerm: (b, h, P, out) => {
      for (let i = 0; i < lq; i++) {
        let acc = 0;
        for (let l = 0; l < lk; l++) acc += P[i * lk + l]! * cv[at(b, h) + i * lk + l]!;
        out[i * dv] = out[i * dv]! + acc;
      }
    },
    extraDProbs: (b, h, _P, dOut, dP) => {
      for (let i = 0; i < lq; i++)
        for (let l = 0; l < lk; l++) dP[i * lk + l] = dP[i * lk + l]! + dOut[i * dv]! * cv[at(b, h) + i * lk + l]!;
    },
    backward: (b, h, _kh, dS) => {
      for (let j = 0; j < lq * lk; j++) dE[at(b, h) + j] = dS[j]!;
      return scale;
    },
  };
}

/** The fp64 oracle: logits = scale q.k + E (masked: -Infinity), softmax, P V, plus the value-side term. */
function oracle(c: Case, x: ReturnType<typeof inputs>, scale: number): Float64Array {
  const s = c.shape;
  const { heads: H, kvHeads: Hkv, lq, lk, headDim: D, valueDim: dv } = s;
  const logits = new Float64Array(s.batch * H * lq * lk);
  for (let b = 0; b < s.batch; b++)
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / (H / Hkv));
      for (let i = 0; i < lq; i++)
        for (let l = 0; l < lk; l++) {
          const j = ((b * H + h) * lq + i) * lk + l;
          let dot = 0;
          for (let d = 0; d < D; d++)
            dot += x.q[((b * H + h) * lq + i) * D + d]! * x.k[((b * Hkv + kh) * lk + l) * D + d]!;
          logits[j] = visible(c, i, l) ? scale * dot + x.e[j]! : -Infinity;
        }
    }
  const { probs, out } = softmaxTimesValues(s, logits, x.v);
  for (let r = 0; r < s.batch * H * lq; r++)
    for (let l = 0; l < lk; l++) out[r * dv]! += probs[r * lk + l]! * x.c[r * lk + l]!;
  return out;
}

const SCALE = 0.6;
// The native backend when built (its sgemm and prefix row softmax), and the reference one (the same calls in TS).
const BACKENDS: Backend[] = [new ReferenceBackend(), loadBackend('auto')];
if (BACKENDS[1]!.name === BACKENDS[0]!.name) BACKENDS.pop();

describe('Backend.scoreAttention against a plain fp64 masked softmax', () => {
  for (const c of CASES) {
    it(`reference, fp64: ${c.name} (agrees to fp64 rounding)`, () => {
      const x = inputs(c, 5);
      const dE = new Float64Array(x.e.length);
      const be = new ReferenceBackend();
      const opts = { causal: c.causal, queryOffset: c.queryOffset, scale: SCALE };
      const { out } = be.scoreAttention(c.shape, x.q, x.k, x.v, opts, hooks(c, x.e, x.c, dE, SCALE));
      expect(out).toBeInstanceOf(Float64Array);
      // A few dozen fp64 operations per entry: ~1e-15 relative; 1e-12 leaves room without hiding a real error.
      expect(relativeMaxError(out, oracle(c, x, SCALE))).toBeLessThan(1e-12);
      if (c.queryOffset < 0) {
        // Rows 0 .. -queryOffset - 1 see no key: out = 0 there (besides the value term, which P = 0 also zeroes).
        for (let j = 0; j < -c.queryOffset * c.shape.valueDim; j++) expect(out[j]).toBe(0);
      }
    });

    for (const be of BACKENDS) {
      it(`${be.name}, fp32: ${c.name} (agrees with the fp64 oracle to fp32 rounding)`, () => {
        const x = inputs(c, 6);
        const f = (a: Float64Array) => Float32Array.from(a);
        const x32 = { q: f(x.q), k: f(x.k), v: f(x.v), e: f(x.e), c: f(x.c) };
        const dE = new Float64Array(x.e.length);
        const opts = { causal: c.causal, queryOffset: c.queryOffset, scale: SCALE };
        const { out, backward } = be.scoreAttention(
          c.shape,
          x32.q,
          x32.k,
          x32.v,
          opts,
          hooks(c, x32.e, x32.c, dE, SCALE),
        );
        expect(out).toBeInstanceOf(Float32Array);
        // Oracle on the fp32-rounded inputs, so only the kernel's fp32 arithmetic differs: unit roundoff 6e-8
        // over sums of at most 8 terms of O(1) values (softmax, P V): 1e-5 relative is ~20x that bound.
        const back = (a: Float32Array) => Float64Array.from(a);
        const oracle32 = oracle(
          c,
          { q: back(x32.q), k: back(x32.k), v: back(x32.v), e: back(x32.e), c: back(x32.c) },
          SCALE,
        );
        expect(relativeMaxError(out, oracle32)).toBeLessThan(1e-5);
        const g = backward(new Float32Array(out.length).fill(1));
        for (const t of [g.dq, g.dk, g.dv]) expect(t).toBeInstanceOf(Float32Array);
      });
    }

    it(`reference, fp64: ${c.name}: dq, dk, dv and dLogits match central differences`, () => {
      const x = inputs(c, 7);
      const w = randomArray(new Rng(8), c.shape.batch * c.shape.heads * c.shape.lq * c.shape.valueDim);
      const be = new ReferenceBackend();
      const opts = { causal: c.causal, queryOffset: c.queryOffset, scale: SCALE };
      const scratch = new Float64Array(x.e.length);
      const loss = () =>
        dotAll(be.scoreAttention(c.shape, x.q, x.k, x.v, opts, hooks(c, x.e, x.c, scratch, SCALE)).out, w);
      const dE = new Float64Array(x.e.length);
      const g = be.scoreAttention(c.shape, x.q, x.k, x.v, opts, hooks(c, x.e, x.c, dE, SCALE)).backward(w);
      // fp64 central differences (h = 1e-5): ~1e-10 relative (gradcheck.ts); 1e-7 is far below any real error.
      expect(maxRelativeGradError(loss, x.q, g.dq)).toBeLessThan(1e-7);
      expect(maxRelativeGradError(loss, x.k, g.dk)).toBeLessThan(1e-7);
      expect(maxRelativeGradError(loss, x.v, g.dv)).toBeLessThan(1e-7);
      expect(maxRelativeGradError(loss, x.e, dE)).toBeLessThan(1e-7);
      // dLogits is 0 at every masked entry.
      const { lq, lk } = c.shape;
      for (let j = 0; j < dE.length; j++) {
        const i = Math.floor(j / lk) % lq;
        if (!visible(c, i, j % lk)) expect(dE[j]).toBe(0);
      }
    });
  }

  it('refuses inputs that do not match the shape, and a backward whose buffers a later call reused', () => {
    const c = CASES[0]!;
    const x = inputs(c, 9);
    const be = new ReferenceBackend();
    const dE = new Float64Array(x.e.length);
    const h = hooks(c, x.e, x.c, dE, SCALE);
    const opts = { causal: true, queryOffset: 0, scale: SCALE };
    expect(() => be.scoreAttention(c.shape, x.q.subarray(1), x.k, x.v, opts, h)).toThrow(HypeError);
    expect(() => be.scoreAttention(c.shape, x.q, x.k, x.v, { ...opts, queryOffset: 0.5 }, h)).toThrow(/queryOffset/);
    expect(() => be.scoreAttention({ ...c.shape, kvHeads: 3 }, x.q, x.k, x.v, opts, h)).toThrow(HypeError);
    const pool = new ScratchPool();
    const first = be.scoreAttention(c.shape, x.q, x.k, x.v, { ...opts, scratch: pool }, h);
    be.scoreAttention(c.shape, x.q, x.k, x.v, { ...opts, scratch: pool }, h);
    expect(() => first.backward(new Float64Array(first.out.length))).toThrow(/reused the probabilities/);
  });
});
