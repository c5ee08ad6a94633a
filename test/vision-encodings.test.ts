import { describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import type { AttendContext } from '../src/pe/encoding.ts';
import { bilinearTaps } from '../src/pe/vision/learned-2d.ts';
import { getVisionEncoding, visionEncodingNames } from '../src/pe/vision/registry.ts';
import { Rng } from '../src/util/rng.ts';
import { forwardError, gradientErrors, randomInputs, shapeOf, worst } from './helpers/encoding-checks.ts';
import { maxRelativeGradError } from './helpers/gradcheck.ts';
import { refusal } from './helpers/refusal.ts';

const dims = { heads: 4, kvHeads: 2, headDim: 8, modelDim: 32, trainLength: 6, trainGrid: [2, 3] };

function gridContext(grid: [number, number], causal = false): AttendContext {
  const L = grid[0] * grid[1];
  return { backend: new ReferenceBackend(), shape: shapeOf({ lq: L, lk: L }), causal, queryOffset: 0, grid };
}

const attentionEncodings = ['alibi-2d', 'hype-2d', 'hype-2d-sym', 'hype-flat', 'rope-2d', 'none'];

describe('2-D encodings, attention site', () => {
  // fp64 on both sides (reference backend vs independent softmax of the dense logits): rounding ~1e-15.
  it.each(attentionEncodings)(
    '%s: attend matches its dense fp64 logits, on the training grid and a larger one',
    (n) => {
      const enc = getVisionEncoding(n).create(dims, {}, new Rng(1));
      for (const grid of [
        [2, 3],
        [3, 4],
      ] as [number, number][]) {
        const ctx = gridContext(grid);
        expect(forwardError(enc, ctx, randomInputs(ctx.shape, 5))).toBeLessThan(1e-12);
      }
    },
  );

  // Central differences in fp64 with h = 1e-5: ~1e-10 relative (gradcheck.ts); asserted at 1e-6.
  it.each(attentionEncodings)('%s: gradients of q, k, v and parameters match finite differences', (n) => {
    const enc = getVisionEncoding(n).create(dims, {}, new Rng(1));
    // Move trained parameters off their initial values so a gradient that ignores them cannot pass by symmetry.
    const rng = new Rng(9);
    for (const p of enc.params)
      for (let j = 0; j < p.data.length; j++) p.data[j] = p.data[j]! * (0.7 + 0.6 * rng.uniform());
    const ctx = gridContext([3, 3]);
    expect(worst(gradientErrors(enc, ctx, randomInputs(ctx.shape, 6)))).toBeLessThan(1e-6);
  });

  it('2-D biases depend on (dy, dx) and the flattened one does not: a row step is not a column step', () => {
    const zeroInputs = (ctx: AttendContext) => ({
      q: new Float64Array(ctx.shape.batch * ctx.shape.heads * ctx.shape.lq * 8),
      k: new Float64Array(ctx.shape.batch * ctx.shape.kvHeads * ctx.shape.lk * 8),
      v: new Float64Array(0),
    });
    const ctx = gridContext([3, 3]);
    const L = 9;
    // query cell 4 (centre); key 1 is one row up, key 3 one column left: 2-D symmetric forms treat them alike.
    for (const [n, same] of [
      ['alibi-2d', true],
      ['hype-2d-sym', true],
      ['hype-flat', false],
    ] as const) {
      const logits = getVisionEncoding(n).create(dims, {}, new Rng(1)).denseLogits(ctx, zeroInputs(ctx), 1);
      const up = logits[4 * L + 1]!;
      const left = logits[4 * L + 3]!;
      expect(Math.abs(up - left) < 1e-12).toBe(same);
    }
    // The antisymmetric form: bias(i, l) = -bias(l, i).
    const anti = getVisionEncoding('hype-2d').create(dims, {}, new Rng(1)).denseLogits(ctx, zeroInputs(ctx), 1);
    expect(anti[4 * L + 1]!).toBeCloseTo(-anti[1 * L + 4]!, 12);
    expect(Math.abs(anti[4 * L + 1]!)).toBeGreaterThan(1e-3);
  });

  it('refuses a call without a grid, or a grid that does not match the tokens, with the fix', () => {
    for (const n of ['alibi-2d', 'hype-2d', 'rope-2d', 'hype-2d-sym']) {
      const enc = getVisionEncoding(n).create(dims, {}, new Rng(1));
      const ctx = gridContext([2, 3]);
      const inputs = randomInputs(ctx.shape, 1);
      expect(refusal(() => enc.attend({ ...ctx, grid: undefined }, inputs)).message).toMatch(/patch grid/);
      expect(refusal(() => enc.attend({ ...ctx, grid: [3, 3] }, inputs), 'shape').message).toMatch(/9 cells/);
    }
    expect(
      refusal(() => getVisionEncoding('hype-2d').create({ ...dims, trainGrid: undefined }, {}, new Rng(1))).message,
    ).toMatch(/trainGrid/);
    expect(refusal(() => getVisionEncoding('rope-3d')).message).toMatch(/choose one of/);
  });
});

describe('2-D encodings, embedding site', () => {
  it('learned-2d: the training grid adds the table, other grids its bilinear resize; refused with resize none', () => {
    const enc = getVisionEncoding('learned-2d').create(dims, {}, new Rng(2));
    const table = enc.params[0]!.data;
    const x = new Float64Array(6 * 32);
    enc.embed!(x, 1, 6, 32, 0, [2, 3]);
    expect(Array.from(x)).toEqual(Array.from(table));
    // Upsampling 2x3 -> 4x6 (align_corners False): output column 1 sits at source 0.25 -> 0.75 col0 + 0.25 col1.
    const taps = bilinearTaps([2, 3], [4, 6]);
    const y = new Float64Array(24 * 32);
    enc.embed!(y, 1, 24, 32, 0, [4, 6]);
    for (const c of [0, 17]) expect(y[1 * 32 + c]).toBeCloseTo(0.75 * table[c]! + 0.25 * table[32 + c]!, 12);
    for (let n = 0; n < 24; n++) {
      let s = 0;
      for (let t = 0; t < 4; t++) s += taps.weights[n * 4 + t]!;
      expect(s).toBeCloseTo(1, 12);
    }
    const fixed = getVisionEncoding('learned-2d').create(dims, { resize: 'none' }, new Rng(2));
    expect(refusal(() => fixed.embed!(y, 1, 24, 32, 0, [4, 6]), 'length').message).toMatch(/resize 'bilinear'/);
  });

  it('learned-2d: embedBackward is the gradient of sum(embed(x) * W) on a resized grid', () => {
    const enc = getVisionEncoding('learned-2d').create(dims, {}, new Rng(2));
    const p = enc.params[0]!;
    const w = new Float64Array(2 * 12 * 32);
    new Rng(4).fillNormal(w);
    const loss = () => {
      const x = new Float64Array(w.length);
      enc.embed!(x, 2, 12, 32, 0, [3, 4]);
      return x.reduce((s, v, j) => s + v * w[j]!, 0);
    };
    p.grad.fill(0);
    enc.embedBackward!(w, 2, 12, 32, 0, [3, 4]);
    expect(maxRelativeGradError(loss, p.data, p.grad)).toBeLessThan(1e-6);
  });

  it('sincos-2d: the first half codes the row, the second the column', () => {
    const enc = getVisionEncoding('sincos-2d').create({ ...dims, modelDim: 8 }, { amplitude: 1 }, new Rng(0));
    const x = new Float64Array(6 * 8);
    enc.embed!(x, 1, 6, 8, 0, [2, 3]);
    // cell 5 = (y 1, x 2): channel 0 = sin(1), channel 4 = sin(2) (frequency 1 for the first pair of each half)
    expect(x[5 * 8]).toBeCloseTo(Math.sin(1), 14);
    expect(x[5 * 8 + 1]).toBeCloseTo(Math.cos(1), 14);
    expect(x[5 * 8 + 4]).toBeCloseTo(Math.sin(2), 14);
    expect(x[5 * 8 + 5]).toBeCloseTo(Math.cos(2), 14);
  });

  it('every vision encoding is listed', () => {
    expect(visionEncodingNames().sort()).toEqual(
      ['alibi-2d', 'hype-2d', 'hype-2d-sym', 'hype-flat', 'learned-2d', 'none', 'rope-2d', 'sincos-2d'].sort(),
    );
  });
});
