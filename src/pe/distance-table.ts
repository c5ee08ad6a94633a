/**
 * Position terms as data (backend.ts): an encoding whose logit term is a function f(h, D) of the query head and the
 * signed distance D = (i + queryOffset) - l builds a table [H, span] of it in fp64, the backend adds it inside its
 * attention tiles, and the backward returns dTable [H, span] (the sum of dLogit over the pairs at each distance),
 * from which the encoding applies its own chain rule in O(H * span). span = queryOffset + Lq + Lk - 1; entry
 * D + Lk - 1 of a row holds distance D. Only distances some visible pair can have are evaluated (the rest stay 0
 * and are never read), so f need not be defined, or finite, elsewhere.
 */
import { distanceSpan, type PositionBias } from '../backend/backend.ts';
import { check } from '../errors.ts';
import type { FloatArray } from '../tensor.ts';
import { backendAttention } from './attention-plumbing.ts';
import type { AttendContext } from './encoding.ts';

/** Where a distance table lives: heads, the query/key lengths and offset, and whether the mask hides D < 0. */
export interface DistanceGeometry {
  heads: number;
  lq: number;
  lk: number;
  queryOffset: number;
  causal: boolean;
}

export function geometryOf<T, I>(ctx: AttendContext<T, I>): DistanceGeometry {
  const { heads, lq, lk } = ctx.shape;
  return { heads, lq, lk, queryOffset: ctx.queryOffset, causal: ctx.causal };
}

/** The distances visible pairs can have, [lo, hi] (empty when lo > hi). */
export function reachableDistances(g: DistanceGeometry): [number, number] {
  const hi = g.queryOffset + g.lq - 1;
  const lo = g.queryOffset - (g.lk - 1);
  return [g.causal ? Math.max(0, lo) : lo, hi];
}

/** table[h * span + D + lk - 1] = f(h, D) in fp64 over the reachable distances (0 elsewhere). */
export function buildDistanceTable(g: DistanceGeometry, f: (h: number, D: number) => number): Float64Array {
  const span = distanceSpan(g.lq, g.lk, g.queryOffset);
  const table = new Float64Array(g.heads * span);
  const [lo, hi] = reachableDistances(g);
  // Below -(lk - 1) there is no entry: only a non-causal negative offset reaches there (the backend refuses it).
  for (let h = 0; h < g.heads; h++)
    for (let D = Math.max(lo, 1 - g.lk); D <= hi; D++) table[h * span + D + g.lk - 1] = f(h, D);
  return table;
}

/** Calls visit(h, D, dTable entry) for every reachable distance whose gradient is non-zero. */
export function forEachDistanceGrad(
  dTable: Float64Array,
  g: DistanceGeometry,
  visit: (h: number, D: number, grad: number) => void,
): void {
  const span = distanceSpan(g.lq, g.lk, g.queryOffset);
  check(
    dTable.length === g.heads * span,
    'shape',
    () => `dTable has ${dTable.length} values, the geometry needs ${g.heads} x ${span}`,
  );
  const [lo, hi] = reachableDistances(g);
  for (let h = 0; h < g.heads; h++) {
    for (let D = Math.max(lo, 1 - g.lk); D <= hi; D++) {
      const x = dTable[h * span + D + g.lk - 1]!;
      if (x !== 0) visit(h, D, x);
    }
  }
}

export interface TableAttention {
  out: FloatArray;
  backward(dOut: FloatArray): { dq: FloatArray; dk: FloatArray; dv: FloatArray; dTable: Float64Array };
}

/** Attention through ctx.backend with the distance table `table` as the position term. */
export function tableAttention(
  ctx: AttendContext,
  q: FloatArray,
  k: FloatArray,
  v: FloatArray,
  table: Float64Array | Float32Array,
): TableAttention {
  const bias: PositionBias = { kind: 'distance', table };
  const run = backendAttention(ctx, q, k, v, bias);
  return {
    out: run.out,
    backward(dOut) {
      const { dq, dk, dv, dBias } = run.backward(dOut);
      check(
        dBias.kind === 'distance',
        'native',
        () => `backend ${ctx.backend.name} returned a '${dBias.kind}' gradient for a distance table`,
      );
      return { dq, dk, dv, dTable: dBias.table };
    },
  };
}

/** ALiBi's term -slopes[h] |D|. */
export function alibiDistanceTable(slopes: Float64Array, g: DistanceGeometry): Float64Array {
  return buildDistanceTable(g, (h, D) => -slopes[h]! * Math.abs(D));
}

/** d loss / d slopes[h] = -sum_D dTable[h, D] |D| (ALiBi's chain rule). */
export function alibiSlopeGrads(dTable: Float64Array, g: DistanceGeometry): Float64Array {
  const out = new Float64Array(g.heads);
  forEachDistanceGrad(dTable, g, (h, D, x) => {
    out[h]! -= x * Math.abs(D);
  });
  return out;
}
