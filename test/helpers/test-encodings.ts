/**
 * Two minimal encodings for model and trainer tests that must not depend on which registry entries exist:
 * position-free attention, and attention with a learnable ALiBi-form slope per head (a parameter whose gradient
 * comes from the backend's dTable through ALiBi's chain rule, exercising the per-block encoding path).
 */
import { alibiDistanceTable, alibiSlopeGrads, geometryOf, tableAttention } from '../../src/pe/distance-table.ts';
import type { EncodingFactory, PositionalEncoding } from '../../src/pe/encoding.ts';

export const testNoPE: EncodingFactory<object> = {
  name: 'test-nope',
  description: 'test only: no position signal',
  sites: ['none'],
  defaults: {},
  create(): PositionalEncoding {
    return {
      name: 'test-nope',
      sites: ['none'],
      params: [],
      maxLength: Infinity,
      attend(ctx, { q, k, v }) {
        const opts = { causal: ctx.causal, scale: 1 / Math.sqrt(ctx.shape.headDim), queryOffset: ctx.queryOffset };
        const { out, lse } = ctx.backend.attentionForward(ctx.shape, q, k, v, opts);
        return {
          out,
          backward: (dOut) => ctx.backend.attentionBackward(ctx.shape, q, k, v, out, lse, dOut, opts),
        };
      },
      denseLogits() {
        throw new Error('not needed in model tests');
      },
    };
  },
};

export const testLearnedSlopes: EncodingFactory<object> = {
  name: 'test-slopes',
  description: 'test only: ALiBi-form bias with learnable per-head slopes',
  sites: ['score-bias'],
  defaults: {},
  create(dims, _options, rng): PositionalEncoding {
    const slopes = new Float64Array(dims.heads);
    for (let h = 0; h < dims.heads; h++) slopes[h] = 0.25 + 0.5 * rng.uniform();
    const grad = new Float64Array(dims.heads);
    return {
      name: 'test-slopes',
      sites: ['score-bias'],
      params: [{ name: 'slopes', shape: [dims.heads], data: slopes, grad, decay: false }],
      maxLength: Infinity,
      attend(ctx, { q, k, v }) {
        const geometry = geometryOf(ctx);
        const run = tableAttention(ctx, q, k, v, alibiDistanceTable(slopes, geometry));
        return {
          out: run.out,
          backward(dOut) {
            const g = run.backward(dOut);
            const dSlopes = alibiSlopeGrads(g.dTable, geometry);
            for (let h = 0; h < grad.length; h++) grad[h] += dSlopes[h]!;
            return { dq: g.dq, dk: g.dk, dv: g.dv };
          },
        };
      },
      denseLogits() {
        throw new Error('not needed in model tests');
      },
    };
  },
};
