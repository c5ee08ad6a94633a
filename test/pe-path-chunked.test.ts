/**
 * PaTH's chunked backward (the backend's Householder walk, src/backend/householder-walk.ts): windows of several
 * PATH_CHUNK chunks, so that the gradients run through the cross-chunk products, the chain Z_{J-1} = Z_J U_J, the
 * adjoints of chunkProduct and carryKeys, and the intra-chunk walk started from dZ; queries decoding at
 * queryOffset > 0 (the first query inside a chunk); and kv heads shared by several query heads (dk, dw and dbeta
 * summed over a group).
 */
import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import type { AttendContext } from '../src/pe/encoding.ts';
import { PATH_CHUNK, pathAttention } from '../src/pe/path-attention.ts';
import { pathFactory, type PathEncoding } from '../src/pe/path.ts';
import { maxRelativeGradError } from './helpers/gradcheck.ts';
import {
  Rng,
  dotAll,
  gradientErrors,
  randomArray,
  randomInputs,
  relativeMaxError,
  softmaxTimesValues,
} from './helpers/pe-explicit.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';

/** The fp64-capable reference backend the encodings run on here. */
const REFERENCE = new ReferenceBackend();

const C = 5;

/** Indices of every vector entry (width per position) at the positions given, for rows [rows, positions]. */
function entriesAt(rows: number, lk: number, width: number, positions: readonly number[]): number[] {
  const out: number[] = [];
  for (let r = 0; r < rows; r++) {
    for (const p of positions) for (let d = 0; d < width; d++) out.push((r * lk + p) * width + d);
  }
  return out;
}

// Three or four chunks; with queryOffset > 0 the first query sits inside a chunk (not on its boundary).
const cases = [
  { name: 'three full chunks and a ragged one', lq: 3 * PATH_CHUNK + 7, lk: 3 * PATH_CHUNK + 7, off: 0 },
  { name: 'decoding tail across chunks (queryOffset > 0)', lq: PATH_CHUNK + 9, lk: 3 * PATH_CHUNK + 2, off: 57 },
  { name: 'queries short of the last keys', lq: 2 * PATH_CHUNK + 3, lk: 3 * PATH_CHUNK, off: 20 },
  // An odd head dimension: the two-row passes of the chunk products end on a single row.
  { name: 'odd head dimension', lq: 2 * PATH_CHUNK + 6, lk: 2 * PATH_CHUNK + 6, off: 0, D: 3 },
];

describe('path: chunked backward over windows of several chunks', () => {
  for (const c of cases) {
    const D = c.D ?? 4;
    const shape: AttentionShape = { batch: 1, heads: 4, kvHeads: 2, lq: c.lq, lk: c.lk, headDim: D, valueDim: 3 };
    const ctx: AttendContext = { backend: REFERENCE, shape, causal: true, queryOffset: c.off };
    const dims = { heads: 4, kvHeads: 2, headDim: D, modelDim: C, trainLength: 16 };

    it(`encoding: forward equals the dense reference, gradients match central differences — ${c.name}`, () => {
      const rng = new Rng(31);
      // initStd 0.5: the factors vary strongly with x, so every gradient path carries weight.
      const enc = pathFactory.create(dims, { initStd: 0.5, betaBias: 0.3 }, rng) as PathEncoding;
      const inputs = randomInputs(rng, shape, C);
      const logits = enc.denseLogits(ctx, inputs, 1 / Math.sqrt(D));
      expect(
        relativeMaxError(enc.attend(ctx, inputs).out, softmaxTimesValues(shape, logits, inputs.v).out),
      ).toBeLessThan(1e-13);
      const weights = randomArray(rng, shape.heads * c.lq * shape.valueDim);
      const errs = gradientErrors(enc, ctx, inputs, weights, 48);
      expect(Object.keys(errs)).toEqual(['q', 'k', 'v', 'x', 'path.wW', 'path.conv', 'path.wBeta', 'path.bBeta']);
      for (const [name, e] of Object.entries(errs)) expect(e, name).toBeLessThan(1e-6);
    });

    it(`core: dq, dk, dw and dbeta at every chunk's edges and middle match central differences — ${c.name}`, () => {
      const rng = new Rng(32);
      const { lq, lk } = c;
      const q = randomArray(rng, 4 * lq * D);
      const k = randomArray(rng, 2 * lk * D);
      const v = randomArray(rng, 2 * lk * 3);
      const w = randomArray(rng, 2 * lk * D, 0.6); // not normalised: the core takes any w
      const beta = Float64Array.from({ length: 2 * lk }, () => 2 * rng.uniform());
      const weights = randomArray(rng, 4 * lq * 3);
      const grads = pathAttention(shape, c.off, q, k, v, { w, beta }, 0.7, REFERENCE).backward(weights);
      const loss = () => dotAll(pathAttention(shape, c.off, q, k, v, { w, beta }, 0.7, REFERENCE).out, weights);
      // Key positions: both sides of every chunk boundary, a middle position of each chunk, and the last key a
      // query sees; query rows: the first, both sides of the boundaries past queryOffset, and the last.
      const last = c.off + lq - 1;
      const keyPositions = [0, 1, 15, 31, 32, 33, 47, 63, 64, 65, 80, 95, last].filter((p) => p <= last);
      const rowPositions = [c.off, 31, 32, 63, 64, 65, last].filter((p) => p >= c.off && p <= last);
      const rows = rowPositions.map((p) => p - c.off);
      for (const [name, x, g, idx] of [
        ['q', q, grads.dq, entriesAt(4, lq, D, rows)],
        ['k', k, grads.dk, entriesAt(2, lk, D, keyPositions)],
        ['w', w, grads.dw, entriesAt(2, lk, D, keyPositions)],
        ['beta', beta, grads.dbeta, entriesAt(2, lk, 1, keyPositions)],
      ] as const) {
        expect(maxRelativeGradError(loss, x, g, idx), name).toBeLessThan(1e-6);
      }
      // Keys and factors past the last query are never used: their gradients are exactly zero.
      for (let p = last + 1; p < lk; p++) {
        for (let kh = 0; kh < 2; kh++) {
          expect(grads.dbeta[kh * lk + p]).toBe(0);
          for (let d = 0; d < D; d++) expect(grads.dk[(kh * lk + p) * D + d]).toBe(0);
        }
      }
    });
  }
});
