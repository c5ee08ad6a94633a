/**
 * ALiBi (Press et al. 2021): no position in q or k; each head h adds a fixed linear penalty to the logits,
 *   bias(h, D) = -m_h |D|,   D = i - l,
 * with the reference slopes m_h of alibi-slopes.ts (2^-1 .. 2^-8 for 8 heads, interleaved for other counts).
 * Reaches the kernel as a distance table [H, span] (distance-table.ts), never as an L x L tensor.
 *
 * Choices the paper leaves open: the slopes are fixed (not trained), as in the paper; without a causal mask the
 * penalty is symmetric in |D| (the paper defines only the causal case).
 */
import { check } from '../errors.ts';
import type { AttendContext, EncodingDims, EncodingFactory, PositionalEncoding } from './encoding.ts';
import { alibiSlopes } from './alibi-slopes.ts';
import { checkQk, denseLogitGrid, scaledDot } from './attention-plumbing.ts';
import { alibiDistanceTable, geometryOf, tableAttention } from './distance-table.ts';
import { defineEncoding } from './options.ts';

export type AlibiOptions = Record<string, never>;

export const alibiEncoding: EncodingFactory<AlibiOptions> = defineEncoding<AlibiOptions>({
  name: 'alibi',
  description: 'ALiBi (Press et al. 2021): fixed per-head linear distance penalty -m_h |D|, reference slopes',
  sites: ['score-bias'],
  defaults: {},
  create(dims: EncodingDims): PositionalEncoding {
    const slopes = alibiSlopes(dims.heads);
    const checkHeads = (ctx: AttendContext): void =>
      check(
        ctx.shape.heads === slopes.length,
        'shape',
        `alibi was built for ${slopes.length} heads but attention has ${ctx.shape.heads}; build it with heads = ${ctx.shape.heads}`,
      );
    return {
      name: 'alibi',
      sites: ['score-bias'],
      params: [],
      maxLength: Infinity,
      attend(ctx, { q, k, v }) {
        checkHeads(ctx);
        const run = tableAttention(ctx, q, k, v, alibiDistanceTable(slopes, geometryOf(ctx)));
        return {
          out: run.out,
          backward(dOut) {
            const { dq, dk, dv } = run.backward(dOut); // the slopes are fixed: their gradient is dropped
            return { dq, dk, dv };
          },
        };
      },
      denseLogits(ctx, { q, k }, scale) {
        checkQk(ctx, q, k);
        checkHeads(ctx);
        return denseLogitGrid(
          ctx,
          (b, h, kvh, i, l, D) => scaledDot(ctx, q, k, scale, b, h, kvh, i, l) - slopes[h]! * Math.abs(D),
        );
      },
    };
  },
});
