/**
 * Position terms as data: each encoding's table builder and chain rule (dTable -> its parameters) against fp64
 * central differences through the reference backend, and the layout contract (entry D + Lk - 1 of a row of span
 * queryOffset + Lq + Lk - 1) against the reference's per-logit definition. Tolerance 1e-6 relative: fp64 central
 * differences with h = 1e-5 carry ~1e-10 (helpers/gradcheck.ts), so any real chain-rule error shows far above it.
 */
import { describe, expect, it } from 'vitest';
import { distanceSpan, type AttentionShape } from '../src/backend/backend.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import {
  alibiDistanceTable,
  alibiSlopeGrads,
  buildDistanceTable,
  type DistanceGeometry,
} from '../src/pe/distance-table.ts';
import { hypeDistanceTable, hypeTableGrads } from '../src/pe/hype/table.ts';
import { Rng } from '../src/util/rng.ts';
import { maxRelativeGradError } from './helpers/gradcheck.ts';

const backend = new ReferenceBackend();

function randn(rng: Rng, n: number, std = 1): Float64Array {
  const a = new Float64Array(n);
  rng.fillNormal(a, std);
  return a;
}

interface Case {
  name: string;
  shape: AttentionShape;
  causal: boolean;
  queryOffset: number;
}

const cases: Case[] = [
  {
    name: 'causal, square, GQA 4/2',
    shape: { batch: 2, heads: 4, kvHeads: 2, lq: 6, lk: 6, headDim: 3, valueDim: 2 },
    causal: true,
    queryOffset: 0,
  },
  {
    name: 'causal, 3 queries after 5 cached keys',
    shape: { batch: 1, heads: 2, kvHeads: 2, lq: 3, lk: 8, headDim: 4, valueDim: 3 },
    causal: true,
    queryOffset: 5,
  },
  {
    name: 'bidirectional, queries at 2 over 7 keys',
    shape: { batch: 1, heads: 3, kvHeads: 1, lq: 4, lk: 7, headDim: 2, valueDim: 2 },
    causal: false,
    queryOffset: 2,
  },
];

/** loss = sum(out * w) of reference attention in fp64 with the table `table()` builds from the parameters. */
function setup(c: Case, seed: number) {
  const rng = new Rng(seed);
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = c.shape;
  const q = randn(rng, B * H * lq * d);
  const k = randn(rng, B * Hkv * lk * d);
  const v = randn(rng, B * Hkv * lk * dv);
  const w = randn(rng, B * H * lq * dv);
  const g: DistanceGeometry = { heads: H, lq, lk, queryOffset: c.queryOffset, causal: c.causal };
  const run = (table: Float64Array) => {
    const opts = {
      causal: c.causal,
      scale: 0.7,
      queryOffset: c.queryOffset,
      bias: { kind: 'distance', table } as const,
    };
    const f = backend.attentionForward(c.shape, q, k, v, opts);
    let loss = 0;
    for (let i = 0; i < f.out.length; i++) loss += f.out[i]! * w[i]!;
    const grads = backend.attentionBackward(c.shape, q, k, v, f.out, f.lse, w, opts);
    if (grads.dBias.kind !== 'distance') throw new Error('expected a distance-table gradient');
    return { loss, dTable: grads.dBias.table };
  };
  return { rng, g, run };
}

describe('distance tables: layout', () => {
  it('bias(h, i, l) = table[h * span + D + Lk - 1] with D = i + queryOffset - l (same logits as a dense bias)', () => {
    for (const c of cases) {
      const { rng, g, run } = setup(c, 1);
      const { heads: H, lq, lk } = c.shape;
      const span = distanceSpan(lq, lk, c.queryOffset);
      const table = buildDistanceTable(g, () => rng.uniform() * 2 - 1);
      expect(table.length).toBe(H * span);
      const dense = new Float64Array(H * lq * lk);
      for (let h = 0; h < H; h++)
        for (let i = 0; i < lq; i++)
          for (let l = 0; l < lk; l++) {
            const D = i + c.queryOffset - l;
            if (!c.causal || D >= 0) dense[(h * lq + i) * lk + l] = table[h * span + D + lk - 1]!;
          }
      const rand = new Rng(9);
      const [q, k, v] = [
        randn(rand, c.shape.batch * H * lq * c.shape.headDim),
        randn(rand, c.shape.batch * c.shape.kvHeads * lk * c.shape.headDim),
        randn(rand, c.shape.batch * c.shape.kvHeads * lk * c.shape.valueDim),
      ];
      const opts = { causal: c.causal, scale: 0.7, queryOffset: c.queryOffset };
      const viaTable = backend.attentionForward(c.shape, q, k, v, { ...opts, bias: { kind: 'distance', table } });
      const viaDense = backend.attentionForward(c.shape, q, k, v, {
        ...opts,
        bias: { kind: 'dense', bias: dense, heads: H },
      });
      expect(Array.from(viaTable.out)).toEqual(Array.from(viaDense.out));
      // Unreachable distances (below the causal mask) get exactly zero gradient.
      const { dTable } = run(table);
      const lo = c.causal ? Math.max(0, c.queryOffset - (lk - 1)) : c.queryOffset - (lk - 1);
      for (let h = 0; h < H; h++) for (let D = 1 - lk; D < lo; D++) expect(dTable[h * span + D + lk - 1]).toBe(0);
    }
  });
});

describe('distance tables: each encoding owns its chain rule (vs fp64 finite differences)', () => {
  for (const c of cases) {
    it(`the table itself: ${c.name}`, () => {
      const { rng, g, run } = setup(c, 2);
      const table = buildDistanceTable(g, () => rng.uniform() * 2 - 1);
      const { dTable } = run(table);
      expect(maxRelativeGradError(() => run(table).loss, table, dTable)).toBeLessThan(1e-6);
    });

    it(`ALiBi slopes: ${c.name}`, () => {
      const { g, run } = setup(c, 3);
      const slopes = Float64Array.from({ length: c.shape.heads }, (_, h) => 0.3 / (h + 1));
      const grads = alibiSlopeGrads(run(alibiDistanceTable(slopes, g)).dTable, g);
      const loss = () => run(alibiDistanceTable(slopes, g)).loss;
      expect(maxRelativeGradError(loss, slopes, grads)).toBeLessThan(1e-6);
    });

    it(`HyPE tau and mu (2 pairs, mixed signs): ${c.name}`, () => {
      const { rng, g, run } = setup(c, 4);
      const pairs = 2;
      const tau = randn(rng, c.shape.heads * pairs);
      const mu = Float64Array.from({ length: c.shape.heads * pairs }, () => (rng.uniform() - 0.5) * 0.6);
      const { dTable } = run(hypeDistanceTable(tau, mu, pairs, g));
      const { dtau, dmu } = hypeTableGrads(dTable, tau, mu, pairs, g);
      const loss = () => run(hypeDistanceTable(tau, mu, pairs, g)).loss;
      expect(maxRelativeGradError(loss, tau, dtau)).toBeLessThan(1e-6);
      expect(maxRelativeGradError(loss, mu, dmu)).toBeLessThan(1e-6);
    });
  }
});

describe('HyPE table in fp64', () => {
  it('equals tau sinh(mu D) and stays finite where sinh alone overflows fp64 but the product does not', () => {
    const g: DistanceGeometry = { heads: 1, lq: 3, lk: 3, queryOffset: 0, causal: true };
    const t = hypeDistanceTable(Float64Array.of(-0.7), Float64Array.of(0.3), 1, g);
    for (const D of [0, 1, 2]) expect(t[D + 2]).toBeCloseTo(-0.7 * Math.sinh(0.3 * D), 15);
    // sinh(720) = Infinity in fp64; 1e-10 sinh(720) = e^{720 - ln 2} 1e-10 = 9.9e301 is representable.
    const big = hypeDistanceTable(Float64Array.of(1e-10), Float64Array.of(360), 1, g);
    expect(Number.isFinite(big[4]!)).toBe(true);
    expect(big[4]! / Math.exp(720 - Math.LN2 + Math.log(1e-10))).toBeCloseTo(1, 12);
  });
});
