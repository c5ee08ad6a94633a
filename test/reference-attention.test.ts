import { describe, expect, it } from 'vitest';
import { distanceSpan, type AttentionOptions, type AttentionShape, type PositionBias } from '../src/backend/backend.ts';
import { biasValue } from '../src/backend/reference-attention.ts';
import { ReferenceBackend, referenceGemm } from '../src/backend/reference.ts';
import { alibiDistanceTable } from '../src/pe/distance-table.ts';
import { hypeDistanceTable } from '../src/pe/hype/table.ts';
import { Rng } from '../src/util/rng.ts';
import { maxRelativeGradError, sampleIndices } from './helpers/gradcheck.ts';

const backend = new ReferenceBackend();

function randn(rng: Rng, n: number, std = 1): Float64Array {
  const a = new Float64Array(n);
  rng.fillNormal(a, std);
  return a;
}

function sizes(s: AttentionShape) {
  return {
    q: s.batch * s.heads * s.lq * s.headDim,
    k: s.batch * s.kvHeads * s.lk * s.headDim,
    v: s.batch * s.kvHeads * s.lk * s.valueDim,
    o: s.batch * s.heads * s.lq * s.valueDim,
  };
}

/**
 * Textbook attention, a second independent formulation: build the full [Lq, Lk] score matrix per (b, h) with
 * K and V repeated per query head, then softmax row by row.
 */
function textbook(s: AttentionShape, q: Float64Array, k: Float64Array, v: Float64Array, o: AttentionOptions) {
  const off = o.queryOffset ?? s.lk - s.lq;
  const out = new Float64Array(sizes(s).o);
  for (let b = 0; b < s.batch; b++)
    for (let h = 0; h < s.heads; h++) {
      const g = Math.floor((h * s.kvHeads) / s.heads);
      const S: number[][] = [];
      for (let i = 0; i < s.lq; i++) {
        S.push([]);
        for (let l = 0; l < s.lk; l++) {
          const D = i + off - l;
          let dot = 0;
          for (let c = 0; c < s.headDim; c++)
            dot +=
              q[((b * s.heads + h) * s.lq + i) * s.headDim + c]! * k[((b * s.kvHeads + g) * s.lk + l) * s.headDim + c]!;
          S[i]!.push(
            o.causal && D < 0 ? -Infinity : o.scale * dot + biasValue(o.bias ?? { kind: 'none' }, s, h, i, l, D),
          );
        }
      }
      for (let i = 0; i < s.lq; i++) {
        const m = Math.max(...S[i]!);
        if (m === -Infinity) continue;
        const e = S[i]!.map((x) => Math.exp(x - m));
        const z = e.reduce((x, y) => x + y, 0);
        for (let c = 0; c < s.valueDim; c++) {
          let acc = 0;
          for (let l = 0; l < s.lk; l++) acc += (e[l]! / z) * v[((b * s.kvHeads + g) * s.lk + l) * s.valueDim + c]!;
          out[((b * s.heads + h) * s.lq + i) * s.valueDim + c] = acc;
        }
      }
    }
  return out;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function makeBiases(rng: Rng, s: AttentionShape): PositionBias[] {
  // Tables over every distance (non-causal geometry), so each serves the causal runs too.
  const g = { heads: s.heads, lq: s.lq, lk: s.lk, queryOffset: s.lk - s.lq, causal: false };
  const span = distanceSpan(s.lq, s.lk);
  const mu = Float64Array.from({ length: s.heads * 2 }, () => 0.05 + 0.1 * rng.uniform());
  return [
    { kind: 'none' },
    {
      kind: 'distance',
      table: alibiDistanceTable(
        Float64Array.from({ length: s.heads }, (_, h) => 0.5 / (h + 1)),
        g,
      ),
    },
    { kind: 'distance', table: hypeDistanceTable(randn(rng, s.heads * 2), mu, 2, g) },
    { kind: 'distance', table: randn(rng, s.heads * span) },
    { kind: 'dense', heads: s.heads, bias: randn(rng, s.heads * s.lq * s.lk) },
    { kind: 'dense', heads: 1, bias: randn(rng, s.lq * s.lk) },
  ];
}

const shapes: AttentionShape[] = [
  { batch: 2, heads: 4, kvHeads: 2, lq: 5, lk: 7, headDim: 3, valueDim: 2 },
  { batch: 1, heads: 2, kvHeads: 2, lq: 6, lk: 6, headDim: 4, valueDim: 4 },
  { batch: 1, heads: 3, kvHeads: 1, lq: 1, lk: 9, headDim: 5, valueDim: 3 },
];

describe('reference attention forward', () => {
  it('matches textbook attention for every bias kind, causal and not, with GQA', () => {
    const rng = new Rng(7);
    for (const s of shapes) {
      const n = sizes(s);
      const q = randn(rng, n.q);
      const k = randn(rng, n.k);
      const v = randn(rng, n.v);
      for (const bias of makeBiases(rng, s))
        for (const causal of [false, true]) {
          const opts = { causal, scale: 0.7, bias };
          const { out } = backend.attentionForward(s, q, k, v, opts);
          expect(maxAbsDiff(out, textbook(s, q, k, v, opts))).toBeLessThan(1e-13);
        }
    }
  });

  it('gives zero output and lse = -Infinity for a query that sees no key', () => {
    const s: AttentionShape = { batch: 1, heads: 1, kvHeads: 1, lq: 3, lk: 3, headDim: 2, valueDim: 2 };
    const rng = new Rng(3);
    const { out, lse } = backend.attentionForward(s, randn(rng, 6), randn(rng, 6), randn(rng, 6), {
      causal: true,
      scale: 1,
      queryOffset: -1, // row 0 sits before key 0
    });
    expect(lse[0]).toBe(-Infinity);
    expect([out[0], out[1]]).toEqual([0, 0]);
    expect(Number.isFinite(lse[1]!)).toBe(true);
  });

  it('ALiBi, HyPE and table biases equal their dense equivalents', () => {
    const rng = new Rng(11);
    const s = shapes[0]!;
    const n = sizes(s);
    const q = randn(rng, n.q);
    const k = randn(rng, n.k);
    const v = randn(rng, n.v);
    for (const bias of makeBiases(rng, s).filter((b) => b.kind !== 'dense' && b.kind !== 'none')) {
      const dense = new Float64Array(s.heads * s.lq * s.lk);
      for (let h = 0; h < s.heads; h++)
        for (let i = 0; i < s.lq; i++)
          for (let l = 0; l < s.lk; l++)
            dense[(h * s.lq + i) * s.lk + l] = biasValue(bias, s, h, i, l, i + s.lk - s.lq - l);
      const a = backend.attentionForward(s, q, k, v, { causal: true, scale: 0.5, bias }).out;
      const b = backend.attentionForward(s, q, k, v, {
        causal: true,
        scale: 0.5,
        bias: { kind: 'dense', heads: s.heads, bias: dense },
      }).out;
      expect(maxAbsDiff(a, b)).toBe(0);
    }
  });

  it('fp32 inputs agree with fp64 to fp32 accuracy', () => {
    const rng = new Rng(5);
    const s = shapes[0]!;
    const n = sizes(s);
    const q = randn(rng, n.q);
    const k = randn(rng, n.k);
    const v = randn(rng, n.v);
    const opts = { causal: true, scale: 0.6, bias: makeBiases(rng, s)[2]! };
    const ref = backend.attentionForward(s, q, k, v, opts).out;
    const f32 = backend.attentionForward(s, Float32Array.from(q), Float32Array.from(k), Float32Array.from(v), opts);
    expect(f32.out).toBeInstanceOf(Float32Array);
    // Inputs rounded to fp32 (2^-24 relative) and ~10 roundings on the way: 1e-5 on O(1) outputs is generous
    // against ~1e-6 expected, yet a wrong dtype path (e.g. fp16-like rounding, 1e-3) fails.
    const err = maxAbsDiff(ref, f32.out);
    expect(err).toBeLessThan(1e-5);
    expect(err).toBeGreaterThan(0);
  });
});

describe('reference attention backward', () => {
  it('matches central finite differences for q, k, v and every bias parameter', () => {
    const rng = new Rng(21);
    for (const s of shapes.slice(0, 2)) {
      const n = sizes(s);
      const q = randn(rng, n.q);
      const k = randn(rng, n.k);
      const v = randn(rng, n.v);
      const w = randn(rng, n.o); // loss = sum(out * w)
      for (const bias of makeBiases(rng, s))
        for (const causal of [false, true]) {
          const opts = { causal, scale: 0.8, bias };
          const loss = () => {
            const { out } = backend.attentionForward(s, q, k, v, opts);
            let acc = 0;
            for (let i = 0; i < out.length; i++) acc += out[i]! * w[i]!;
            return acc;
          };
          const f = backend.attentionForward(s, q, k, v, opts);
          const g = backend.attentionBackward(s, q, k, v, f.out, f.lse, w, opts);
          const tensors: [Float64Array, ArrayLike<number>][] = [
            [q, g.dq],
            [k, g.dk],
            [v, g.dv],
          ];
          if (bias.kind === 'distance' && g.dBias.kind === 'distance')
            tensors.push([bias.table as Float64Array, g.dBias.table]);
          if (bias.kind === 'dense' && g.dBias.kind === 'dense')
            tensors.push([bias.bias as Float64Array, g.dBias.bias]);
          expect(g.dBias.kind).toBe(bias.kind);
          for (const [x, grad] of tensors) {
            expect(maxRelativeGradError(loss, x, grad, sampleIndices(x.length, 24))).toBeLessThan(1e-6);
          }
        }
    }
  });
});

describe('reference gemm', () => {
  it('handles every transpose combination, strides, alpha and beta', () => {
    const rng = new Rng(2);
    const [m, n, k] = [4, 5, 3];
    const A = randn(rng, m * k);
    const B = randn(rng, k * n);
    const At = new Float64Array(k * m);
    const Bt = new Float64Array(n * k);
    for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) At[p * m + i] = A[i * k + p]!;
    for (let p = 0; p < k; p++) for (let j = 0; j < n; j++) Bt[j * k + p] = B[p * n + j]!;
    const C0 = randn(rng, m * n);
    const expected = new Float64Array(m * n);
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let p = 0; p < k; p++) acc += A[i * k + p]! * B[p * n + j]!;
        expected[i * n + j] = 2 * acc + 0.5 * C0[i * n + j]!;
      }
    for (const [ta, tb] of [
      [false, false],
      [true, false],
      [false, true],
      [true, true],
    ] as const) {
      const C = Float64Array.from(C0);
      referenceGemm(ta, tb, m, n, k, 2, ta ? At : A, ta ? m : k, tb ? Bt : B, tb ? k : n, 0.5, C, n);
      expect(maxAbsDiff(C, expected)).toBeLessThan(1e-14);
    }
    // A leading dimension larger than the row: C is a 4x5 window of a 4x7 buffer.
    const wide = new Float64Array(m * 7).fill(9);
    referenceGemm(false, false, m, n, k, 1, A, k, B, n, 0, wide, 7);
    expect(wide[5]).toBe(9);
    expect(wide[0]).toBeCloseTo((expected[0]! - 0.5 * C0[0]!) / 2, 14);
  });

  it('refuses a leading dimension smaller than the row', () => {
    expect(() =>
      referenceGemm(
        false,
        false,
        2,
        2,
        2,
        1,
        new Float64Array(4),
        1,
        new Float64Array(4),
        2,
        0,
        new Float64Array(4),
        2,
      ),
    ).toThrow(/leading dimension/);
  });
});
