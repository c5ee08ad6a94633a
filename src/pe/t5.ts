/**
 * T5 relative position bias (Raffel et al. 2020): the signed distance is mapped to one of numBuckets
 * log-spaced buckets (t5-buckets.ts) and each head adds its own learned scalar per bucket to the logits:
 *   bias(h, D) = table[h, bucket(-D)].
 * Reaches the kernel as a distance table [H, span] (distance-table.ts); the gradient by distance it returns is
 * summed per bucket into the bucket table's grad.
 *
 * Choices the paper leaves open or that differ by context here: bucketing follows the attention's mask by default
 * (causal attention -> causal bucketing as in T5's decoder, otherwise bidirectional as in its encoder; option
 * bucketing forces one); defaults numBuckets 32, maxDistance 128 as in T5; the table is initialised
 * N(0, modelDim^-1) (standard deviation modelDim^-1/2, as T5's reference initialisation); logits keep the explicit
 * 1/sqrt(d) scale of every encoding here (T5 folds it into its initialisation); one table for all layers of a model
 * by default, as T5 (SPEC section 10; HF: only layer 0 has it), or one per layer with sharing 'per-layer' (what
 * configs saved before the option existed used).
 */
import { distanceSpan } from '../backend/backend.ts';
import { check } from '../errors.ts';
import type { Rng } from '../util/rng.ts';
import {
  sharedParam,
  type AttendContext,
  type EncodingDims,
  type EncodingFactory,
  type LayerSharing,
  type Param,
  type PositionalEncoding,
} from './encoding.ts';
import { checkQk, denseLogitGrid, scaledDot } from './attention-plumbing.ts';
import { buildDistanceTable, forEachDistanceGrad, geometryOf, tableAttention } from './distance-table.ts';
import { checkT5BucketOptions, t5Bucket } from './t5-buckets.ts';
import { createParam } from './params.ts';
import { checkSharing, defineEncoding } from './options.ts';

export interface T5Options {
  numBuckets: number;
  maxDistance: number;
  /** 'auto': causal bucketing for causal attention, bidirectional otherwise. */
  bucketing: 'auto' | 'causal' | 'bidirectional';
  /** Standard deviation of the table's normal initialisation; 0 (the default) means modelDim^-1/2. */
  initStd: number;
  /** 'shared': one table for every layer of a model (T5); 'per-layer': one per block. */
  sharing: LayerSharing;
}

export const t5Encoding: EncodingFactory<T5Options> = defineEncoding<T5Options>({
  name: 't5',
  description: 'T5 relative bias (Raffel et al. 2020): log-bucketed distance -> learned per-head scalar',
  sites: ['score-bias'],
  defaults: { numBuckets: 32, maxDistance: 128, bucketing: 'auto', initStd: 0, sharing: 'shared' },
  savedDefaults: { sharing: 'per-layer' },
  sizeKeys: ['numBuckets'],
  create(dims: EncodingDims, options: Partial<T5Options>, rng: Rng): PositionalEncoding {
    const numBuckets = options.numBuckets ?? 32;
    const maxDistance = options.maxDistance ?? 128;
    const bucketing = options.bucketing ?? 'auto';
    const initStd = options.initStd || 1 / Math.sqrt(dims.modelDim);
    const sharing = options.sharing ?? 'shared';
    checkSharing('t5', sharing);
    check(
      bucketing === 'auto' || bucketing === 'causal' || bucketing === 'bidirectional',
      'argument',
      `t5 bucketing must be 'auto', 'causal' or 'bidirectional', got '${bucketing}'`,
    );
    if (bucketing !== 'causal') checkT5BucketOptions(numBuckets, maxDistance, true);
    if (bucketing !== 'bidirectional') checkT5BucketOptions(numBuckets, maxDistance, false);
    check(Number.isFinite(initStd) && initStd >= 0, 'argument', `t5 initStd must be >= 0, got ${initStd}`);
    const H = dims.heads;
    const make = (): Param => {
      const p = createParam('relative_bias', [H, numBuckets], false);
      rng.fillNormal(p.data, initStd);
      return p;
    };
    const table = sharing === 'shared' ? sharedParam(dims, 'relative_bias', make) : make();
    const values = table.data as Float64Array;

    const bidirectionalFor = (ctx: AttendContext): boolean =>
      bucketing === 'auto' ? !ctx.causal : bucketing === 'bidirectional';
    const checkHeads = (ctx: AttendContext): void =>
      check(ctx.shape.heads === H, 'shape', `t5 was built for ${H} heads but attention has ${ctx.shape.heads}`);

    return {
      name: 't5',
      sites: ['score-bias'],
      params: [table],
      maxLength: Infinity,
      attend(ctx, { q, k, v }) {
        checkHeads(ctx);
        const bidirectional = bidirectionalFor(ctx);
        const geometry = geometryOf(ctx);
        // One bucket per distance (index D + lk - 1), shared by every head.
        const bucketOf = Int32Array.from(
          { length: distanceSpan(ctx.shape.lq, ctx.shape.lk, ctx.queryOffset) },
          (_, j) => t5Bucket(ctx.shape.lk - 1 - j, bidirectional, numBuckets, maxDistance),
        );
        const bucket = (D: number) => bucketOf[D + ctx.shape.lk - 1]!;
        const run = tableAttention(
          ctx,
          q,
          k,
          v,
          buildDistanceTable(geometry, (h, D) => values[h * numBuckets + bucket(D)]!),
        );
        return {
          out: run.out,
          backward(dOut) {
            const { dq, dk, dv, dTable } = run.backward(dOut);
            // T5's chain rule: each distance's gradient goes to the bucket that distance reads.
            forEachDistanceGrad(dTable, geometry, (h, D, x) => {
              table.grad[h * numBuckets + bucket(D)]! += x;
            });
            return { dq, dk, dv };
          },
        };
      },
      denseLogits(ctx, { q, k }, scale) {
        checkQk(ctx, q, k);
        checkHeads(ctx);
        const bidirectional = bidirectionalFor(ctx);
        return denseLogitGrid(
          ctx,
          (b, h, kvh, i, l, D) =>
            scaledDot(ctx, q, k, scale, b, h, kvh, i, l) +
            values[h * numBuckets + t5Bucket(-D, bidirectional, numBuckets, maxDistance)]!,
        );
      },
    };
  },
});
