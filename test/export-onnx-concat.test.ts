/**
 * ONNX export of the encodings with trained or content-dependent concat terms (alibi-learned, alibi route=concat,
 * HyPE in slope-curvature coordinates, FoX, gated HyPE): the exported model run by onnxruntime-node on CPU against
 * our forward pass. Concat routes carry their position term as appended Q/K columns on onnxruntime's unmodified
 * com.microsoft MultiHeadAttention (no attention_bias input; checked on the graph).
 *
 * Trained parameters are moved away from their initial values before export (and the move is checked to be visible
 * in the logits), so a graph that used the initial values would fail.
 *
 * Tolerance, as test/export-onnx.test.ts: ours fp64, onnxruntime fp32 with weights rounded once; logits O(1-10), so
 * fp32 roundoff through two layers leaves ~1e-6..1e-5, bound 1e-4. The concat columns add ~ u |q col| |k col| per
 * logit: ALiBi's m L / 2 <= 6 here, FoX's |F| <= L |log sigmoid| ~ 24 * 2 (not centred in the graph), HyPE's
 * u |tau| sqrt(d)/2 e^{|mu p|} e^{|mu p'|} with tau and mu moved up to 2.25x and 1.5x: ~ 1e-5 at most (measured
 * 4e-6..4e-5). Dropping the gate or the CumSum from the graph (checked by hand) gives differences of 4..8.
 * fp16 graphs (split columns; gates computed in fp32 from the fp16 activations) must stay within 2x the no-position
 * model's error against the fp64 forward (the fp16 floor, as test/export-onnx-fp16.test.ts): measured 0.9x..1.5x.
 */
import { describe, expect, it } from 'vitest';
import { exportOnnx } from '../src/interop/onnx-export.ts';
import { decodeModel } from '../src/interop/onnx-proto.ts';
import type { Transformer } from '../src/model/transformer.ts';
import { Rng } from '../src/util/rng.ts';
import { compare, randomTokens, savedModel } from './helpers/onnx-compare.ts';

/** Applies `move` to every encoding parameter whose name ends with a key of it; returns the largest logit change. */
function moveParams(model: Transformer, move: Record<string, (x: number, j: number) => number>): number {
  const tokens = randomTokens(2, 24, 31);
  model.forward(tokens, null, 2, 24);
  const before = Float64Array.from(model.logits());
  let moved = 0;
  for (const p of model.parameters()) {
    for (const [suffix, f] of Object.entries(move)) {
      if (p.name.endsWith(`.pe.${suffix}`)) {
        p.data.forEach((x, j) => (p.data[j] = f(x, j)));
        moved++;
      }
    }
  }
  expect(moved).toBeGreaterThan(0); // the names matched
  model.forward(tokens, null, 2, 24);
  return Math.max(...model.logits().map((x, j) => Math.abs(x - before[j]!)));
}

/** The MultiHeadAttention nodes: input counts and the scale attribute. */
function attentionNodes(bytes: Uint8Array) {
  const graph = decodeModel(bytes).graph as {
    node: { opType: string; input: string[]; attribute: { name: string; f?: number }[] }[];
  };
  return graph.node
    .filter((n) => n.opType === 'MultiHeadAttention')
    .map((n) => ({ inputs: n.input.length, scale: n.attribute.find((a) => a.name === 'scale')?.f }));
}

const gaussian = (seed: number, std: number) => {
  const rng = new Rng(seed);
  return (x: number) => x + std * rng.normal();
};

const cases: {
  label: string;
  pe: string;
  options: Record<string, unknown>;
  extra?: Record<string, unknown>;
  move?: Record<string, (x: number, j: number) => number>;
  concat: boolean;
}[] = [
  {
    label: 'alibi-learned (kernel route: attention_bias with the trained slopes)',
    pe: 'alibi-learned',
    options: {},
    move: { 'alibi.logSlope': (x, j) => x + 0.4 + 0.3 * j },
    concat: false,
  },
  {
    label: 'alibi-learned, route concat (trained slopes as columns)',
    pe: 'alibi-learned',
    options: { route: 'concat' },
    move: { 'alibi.logSlope': (x, j) => x + 0.4 + 0.3 * j },
    concat: true,
  },
  { label: 'alibi, route concat', pe: 'alibi', options: { route: 'concat' }, concat: true },
  {
    label: 'alibi, route concat, grouped-query (4 heads, 2 kv heads)',
    pe: 'alibi',
    options: { route: 'concat' },
    extra: { kvHeads: 2 },
    concat: true,
  },
  {
    label: 'hype learned, slope-curvature (trained slope and curvature)',
    pe: 'hype',
    options: { preset: 'learned', parametrisation: 'slope-curvature' },
    move: { 'hype.slope': (x, j) => x * (1.5 + 0.25 * j), 'hype.mu': (x, j) => x * (0.6 + 0.3 * j) },
    concat: true,
  },
  {
    label: 'fox (gate projection, log-sigmoid and CumSum in the graph)',
    pe: 'fox',
    options: { biasInit: 1 },
    move: { 'fox.w': gaussian(5, 0.5), 'fox.b': (x, j) => x + 0.5 * j },
    concat: true,
  },
  {
    label: 'fox, grouped-query (one gate per kv head)',
    pe: 'fox',
    options: {},
    extra: { kvHeads: 2 },
    move: { 'fox.w': gaussian(6, 0.5) },
    concat: true,
  },
  {
    label: 'hype-gated (per-query amplitude softplus(w.x + b) in the graph)',
    pe: 'hype-gated',
    options: {},
    move: { 'hype-gated.w': gaussian(7, 0.5), 'hype.tau': (x, j) => x * (1.5 + 0.25 * j) },
    concat: true,
  },
  {
    label: 'hype-gated, slope-curvature, grouped-query',
    pe: 'hype-gated',
    options: { parametrisation: 'slope-curvature' },
    extra: { kvHeads: 2 },
    move: { 'hype-gated.w': gaussian(8, 0.5), 'hype.mu': (x, j) => x * (0.6 + 0.3 * j) },
    concat: true,
  },
];

describe('ONNX export of trained and content-dependent concat encodings matches our logits', () => {
  for (const c of cases) {
    it(c.label, async () => {
      const { model } = savedModel(c.pe, c.options, c.extra ?? {});
      if (c.move) expect(moveParams(model, c.move)).toBeGreaterThan(1e-2); // visible, so the comparison can tell
      const { diff, size } = await compare(model);
      expect(size).toBeGreaterThan(1);
      expect(diff).toBeLessThanOrEqual(1e-4);
      const { bytes, summary } = exportOnnx(model);
      for (const n of attentionNodes(bytes)) {
        // Concat routes: q, k, v only (the term is in the columns), scale 1/sqrt(d) of the original head dim.
        expect(n.inputs).toBe(c.concat ? 3 : 6);
        expect(n.scale).toBeCloseTo(1 / Math.sqrt(8), 7);
      }
      expect(summary.attentionBias).toBe(!c.concat);
      if (c.concat) expect(summary.qkHeadDim).toBeGreaterThan(8);
      console.log(
        `[export-onnx-concat] ${c.label}: max |onnx - ours| = ${diff.toExponential(2)} (max |logit| ${size.toFixed(2)})`,
      );
    });
  }
});

describe('fp16 graphs of the concat encodings (split columns) stay at the fp16 floor', () => {
  it('alibi route concat, fox and hype-gated against the fp64 forward, beside the no-position model', async () => {
    const none = savedModel('none').model;
    const floor = (await compare(none, { precision: 'fp16' })).diff;
    expect(floor).toBeGreaterThan(1e-4); // fp16 really ran (fp32 would leave ~1e-6)
    const errors: Record<string, number> = {};
    for (const c of cases.filter((k) => k.concat && !k.extra)) {
      const { model } = savedModel(c.pe, c.options);
      if (c.move) moveParams(model, c.move);
      errors[c.label] = (await compare(model, { precision: 'fp16' })).diff;
    }
    console.log(
      `[export-onnx-concat] fp16, max |onnx - ours|: none ${floor.toExponential(2)}, ${JSON.stringify(errors)}`,
    );
    for (const e of Object.values(errors)) expect(e).toBeLessThanOrEqual(2 * floor);
  });
});
