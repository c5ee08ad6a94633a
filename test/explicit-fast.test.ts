/**
 * The gemm path of the explicit-logit encodings (Backend.scoreAttention, src/backend/score-attention.ts) beyond what each
 * encoding's own tests reach: windows longer than one row block (ROW_BLOCK rows), and fp32 work on a real backend
 * (the backend's sgemm and row softmax) against the fp64 path.
 */
import { describe, expect, it } from 'vitest';
import type { AttentionShape, Backend } from '../src/backend/backend.ts';
import { loadBackend } from '../src/backend/index.ts';
import { HypeError } from '../src/errors.ts';
import type { AttendContext, AttendInputs, PositionalEncoding } from '../src/pe/encoding.ts';
import { ROW_BLOCK } from '../src/backend/score-attention.ts';
import { getEncodingFactory } from '../src/pe/registry.ts';
import {
  Rng,
  gradientErrors,
  randomArray,
  randomInputs,
  relativeMaxError,
  softmaxTimesValues,
} from './helpers/pe-explicit.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';

/** The fp64-capable reference backend the encodings run on here. */
const REFERENCE = new ReferenceBackend();

const ENCODINGS = ['xl', 'shaw', 'da', 'path'] as const;
const MODEL_DIM = 8;

function makeEncoding(name: (typeof ENCODINGS)[number], heads: number, kvHeads: number, D: number, seed: number) {
  const dims = { heads, kvHeads, headDim: D, modelDim: MODEL_DIM, trainLength: 16 };
  // Larger-than-default parameters so the position terms move the logits as much as q.k does.
  const options: Record<string, Record<string, number>> = {
    xl: { posDim: 6, initStd: 0.5 },
    shaw: { clip: 5, initStd: 0.5 },
    da: { weightInit: 0.05 },
    path: { initStd: 0.3 },
  };
  return getEncodingFactory(name).create(dims, options[name]!, new Rng(seed));
}

function inputsFor(name: string, rng: Rng, shape: AttentionShape): AttendInputs {
  return randomInputs(rng, shape, name === 'path' ? MODEL_DIM : undefined);
}

/** Every parameter gradient of `enc` after one backward, concatenated (the encoding's own gradients). */
function paramGrads(enc: PositionalEncoding): Float64Array[] {
  return enc.params.map((p) => Float64Array.from(p.grad));
}

describe('explicit attention, gemm path: windows of several row blocks (fp64)', () => {
  const L = ROW_BLOCK + 44; // two blocks, the second ragged
  for (const name of ENCODINGS) {
    const shape: AttentionShape = { batch: 1, heads: 2, kvHeads: 1, lq: L, lk: L, headDim: 4, valueDim: 4 };
    const ctx: AttendContext = { backend: REFERENCE, shape, causal: true, queryOffset: 0 };

    it(`${name}: forward equals softmax(dense logits) V at L = ${L}`, () => {
      const rng = new Rng(11);
      const enc = makeEncoding(name, 2, 1, 4, 3);
      const inputs = inputsFor(name, rng, shape);
      const logits = enc.denseLogits(ctx, inputs, 1 / Math.sqrt(shape.headDim));
      const { probs, out } = softmaxTimesValues(shape, logits, inputs.v);
      if (name === 'shaw') {
        const term = (
          enc as unknown as { denseValueTerm(c: AttendContext, p: Float64Array): Float64Array }
        ).denseValueTerm(ctx, probs);
        for (let j = 0; j < out.length; j++) out[j]! += term[j]!;
      }
      expect(relativeMaxError(enc.attend(ctx, inputs).out, out)).toBeLessThan(1e-13);
    });

    it(`${name}: gradients match central differences at L = ${L}`, () => {
      const rng = new Rng(12);
      const enc = makeEncoding(name, 2, 1, 4, 4);
      const inputs = inputsFor(name, rng, shape);
      const weights = randomArray(rng, shape.batch * shape.heads * shape.lq * shape.valueDim);
      const errs = gradientErrors(enc, ctx, inputs, weights, 12);
      for (const [param, e] of Object.entries(errs)) expect(e, param).toBeLessThan(1e-6);
    });
  }
});

describe('explicit attention, gemm path: fp32 on a backend agrees with fp64', () => {
  // The native backend when built (its sgemm and row softmax), and the reference one (the same calls in TS).
  const backends: Backend[] = [loadBackend('auto'), loadBackend('reference')];
  if (backends[0]!.name === backends[1]!.name) backends.pop();
  const L = ROW_BLOCK + 44;
  const cases = [
    { name: `causal, two row blocks (L = ${L})`, causal: true, lq: L, lk: L, off: 0 },
    { name: 'causal, decoding tail', causal: true, lq: 24, lk: 90, off: 66 },
    { name: 'causal, first rows see no key', causal: true, lq: 20, lk: 20, off: -3 },
    { name: 'bidirectional', causal: false, lq: 21, lk: 19, off: 0 },
  ];
  for (const [name, c, backend] of ENCODINGS.flatMap((e) =>
    cases.flatMap((c) => backends.map((be) => [e, c, be] as const)),
  )) {
    if (name === 'path' && (!c.causal || c.off < 0 || c.off + c.lq > c.lk)) continue; // PaTH refuses these
    it(`${name}: ${c.name} (${backend.name} backend)`, () => {
      const shape: AttentionShape = {
        batch: 2,
        heads: 2,
        kvHeads: 1,
        lq: c.lq,
        lk: c.lk,
        headDim: 8,
        valueDim: 8,
      };
      const rng = new Rng(21);
      const inputs64 = inputsFor(name, rng, shape);
      // Round the fp64 inputs to fp32 first, so both runs see the same numbers and only the arithmetic differs.
      const round = (a: Float64Array | Float32Array | undefined) => (a ? Float64Array.from(Float32Array.from(a)) : a);
      const in64: AttendInputs = { q: round(inputs64.q)!, k: round(inputs64.k)!, v: round(inputs64.v)! };
      if (inputs64.x) in64.x = round(inputs64.x);
      const in32: AttendInputs = {
        q: Float32Array.from(in64.q),
        k: Float32Array.from(in64.k),
        v: Float32Array.from(in64.v),
      };
      if (in64.x) in32.x = Float32Array.from(in64.x);
      const dOut = Float64Array.from(Float32Array.from(randomArray(rng, shape.batch * shape.heads * c.lq * 8)));

      const enc = makeEncoding(name, 2, 1, 8, 5);
      const ctx64: AttendContext = { backend: REFERENCE, shape, causal: c.causal, queryOffset: c.off };
      const ctx32: AttendContext = { ...ctx64, backend };
      for (const p of enc.params) p.grad.fill(0);
      const r64 = enc.attend(ctx64, in64);
      const g64 = r64.backward(dOut);
      const p64 = paramGrads(enc);
      for (const p of enc.params) p.grad.fill(0);
      const r32 = enc.attend(ctx32, in32);
      const g32 = r32.backward(Float32Array.from(dOut));
      const p32 = paramGrads(enc);

      expect(r32.out).toBeInstanceOf(Float32Array);
      expect(g32.dq).toBeInstanceOf(Float32Array);
      // fp32 unit roundoff u = 2^-24. Each result is a chain of sums of at most n = Lk + Lq + D terms (q.k over D,
      // softmax and P V over Lk, the gradient sums over Lq), whose worst-case relative error is about n u; the
      // chain (logits -> probabilities -> products) multiplies that by a small constant, taken as 8 here.
      // Errors are judged relative to each tensor's largest entry.
      const tol = 8 * (c.lk + c.lq + shape.headDim) * 2 ** -24;
      expect(relativeMaxError(r32.out, r64.out), 'out').toBeLessThan(tol);
      expect(relativeMaxError(g32.dq, g64.dq), 'dq').toBeLessThan(tol);
      expect(relativeMaxError(g32.dk, g64.dk), 'dk').toBeLessThan(tol);
      expect(relativeMaxError(g32.dv, g64.dv), 'dv').toBeLessThan(tol);
      if (g64.dx) expect(relativeMaxError(g32.dx!, g64.dx), 'dx').toBeLessThan(tol);
      enc.params.forEach((p, j) => expect(relativeMaxError(p32[j]!, p64[j]!), p.name).toBeLessThan(tol));
    });
  }
});

describe('explicit attention: reused work buffers (ScratchPool)', () => {
  for (const name of ENCODINGS) {
    it(`${name}: calls of other sizes in between leave the results bit-identical to a fresh instance's`, () => {
      const run = (enc: PositionalEncoding, L: number, seed: number) => {
        const shape: AttentionShape = { batch: 1, heads: 2, kvHeads: 1, lq: L, lk: L, headDim: 4, valueDim: 4 };
        const ctx: AttendContext = { backend: REFERENCE, shape, causal: true, queryOffset: 0 };
        const rng = new Rng(seed);
        const inputs = inputsFor(name, rng, shape);
        for (const p of enc.params) p.grad.fill(0);
        const r = enc.attend(ctx, inputs);
        const g = r.backward(randomArray(rng, 2 * L * 4));
        return [r.out, g.dq, g.dk, g.dv, ...paramGrads(enc)];
      };
      const reused = makeEncoding(name, 2, 1, 4, 7);
      run(reused, ROW_BLOCK + 44, 1); // fills the pooled buffers with numbers of another call
      const afterLarger = run(reused, 33, 2);
      run(reused, 20, 3); // a smaller call takes a prefix of the same buffers
      const again = run(reused, 33, 2);
      const fresh = run(makeEncoding(name, 2, 1, 4, 7), 33, 2);
      for (const got of [afterLarger, again]) {
        got.forEach((t, j) => expect(Array.from(t), `tensor ${j}`).toEqual(Array.from(fresh[j]!)));
      }
    });

    it(`${name}: a result superseded by a later attend() refuses its backward`, () => {
      const shape: AttentionShape = { batch: 1, heads: 2, kvHeads: 1, lq: 6, lk: 6, headDim: 4, valueDim: 4 };
      const ctx: AttendContext = { backend: REFERENCE, shape, causal: true, queryOffset: 0 };
      const rng = new Rng(9);
      const enc = makeEncoding(name, 2, 1, 4, 8);
      const inputs = inputsFor(name, rng, shape);
      const first = enc.attend(ctx, inputs);
      const second = enc.attend(ctx, inputs);
      const dOut = randomArray(rng, 2 * 6 * 4);
      expect(() => first.backward(dOut)).toThrow(HypeError);
      expect(() => first.backward(dOut)).toThrow(/backward\(\) before the next attend\(\)/);
      expect(() => second.backward(dOut)).not.toThrow();
    });
  }
});
