/**
 * A low-rank logit bias delivered by concatenation (SPEC section 9): a_il = sum_c x_c(i) y_c(l) rides on an
 * unmodified kernel as r extra columns of Q and K,
 *   Qhat = [Q, sqrt(d) x, 0...]   Khat = [K, y, 0...]   scale 1/sqrt(d)   =>   logits = q.k / sqrt(d) + a.
 * Shapes: q [B, H, Lq, d], k [B, Hkv, Lk, d], v [B, Hkv, Lk, dv]; query columns x [B, H, Lq, r], key columns
 * y [B, Hkv, Lk, r] (fp64, per batch entry, so content-dependent biases fit too). In bf16/fp16 each column is split
 * into hi/lo parts by the one split-columns helper (src/numerics/split-columns.ts, SPEC section 8), three operand
 * columns per source column. Used by ALiBi's concat route (alibi-route.ts); HyPE builds its own eta columns
 * (hype/core.ts) on the same helper.
 */
import type { AttentionOptions } from '../backend/backend.ts';
import { check } from '../errors.ts';
import { floatFormat, roundTo } from '../numerics/float-formats.ts';
import { expandColumns, foldColumnGrads, padMultiple, slotsPerColumn } from '../numerics/split-columns.ts';
import type { DType, FloatArray } from '../tensor.ts';
import { widenedConcatAttention, widenedTail } from './device-attention.ts';
import type { AttendContext, AttendInputs, OperandWidths } from './encoding.ts';
import { columnPlan, padColumns, sliceColumns } from './hype/core.ts';
import type { AugmentOptions } from './hype/core.ts';

/** Operand precision of the concat route: the options HyPE's concat route takes, with the same meaning. */
export type ConcatPrecisionOptions = Pick<AugmentOptions, 'format' | 'precision' | 'columns'> & {
  /** Pad the head dims to a multiple of this (kernels like 4 or 8). */
  multiple?: number;
};

export interface ConcatBiasResult {
  out: FloatArray;
  /** dq, dk, dv and the gradients of the source columns, dx [B, H, Lq, r] and dy [B, Hkv, Lk, r]. */
  backward(dOut: FloatArray): { dq: FloatArray; dk: FloatArray; dv: FloatArray; dx: Float64Array; dy: Float64Array };
  /** Ends the call (no backward after it): its widened q and k become free for a later call of the same geometry. */
  dispose(): void;
}

/** Attention with the bias x . y through ctx.backend on augmented operands (module comment). */
export function concatBiasAttention(
  ctx: AttendContext,
  inputs: AttendInputs,
  x: Float64Array,
  y: Float64Array,
  r: number,
  opts: ConcatPrecisionOptions,
): ConcatBiasResult {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = ctx.shape;
  const { q, k, v } = inputs;
  check(
    x.length === B * H * lq * r && y.length === B * Hkv * lk * r,
    'shape',
    () => `concat bias: columns of ${x.length} and ${y.length} values do not fit ${r} per query and key row`,
  );
  if (inputs.widths) return widenedConcatBias(ctx, inputs, x, y, r, opts);
  const multiple = padMultiple(opts.multiple, 'concat bias');
  const plan = columnPlan(opts, q instanceof Float64Array ? 'fp64' : 'fp32');
  const format = floatFormat(opts.format ?? (q instanceof Float64Array ? 'fp64' : 'fp32'));
  const sqrtD = Math.sqrt(d);
  const w = r * slotsPerColumn(plan.split !== null);
  const dp = Math.ceil((d + w) / multiple) * multiple;
  const dvp = Math.ceil(dv / multiple) * multiple;
  const xs = expandColumns(
    x.map((value) => value * sqrtD),
    B * H * lq,
    r,
    'query',
    plan.split,
  );
  const ys = expandColumns(y, B * Hkv * lk, r, 'key', plan.split);
  const qHat = widened(q, B * H * lq, d, dp, w);
  const kHat = widened(k, B * Hkv * lk, d, dp, w);
  placeColumns(qHat, xs, B * H * lq, w, dp, d);
  placeColumns(kHat, ys, B * Hkv * lk, w, dp, d);
  const vHat = dvp === dv ? v : padColumns(v, B * Hkv * lk, dv, dvp, q);
  const operands = [qHat, kHat, vHat];
  if (format.name === 'fp16' || format.name === 'bf16') {
    for (let a = 0; a < 3; a++) operands[a] = operands[a]!.map((value) => roundTo(format, value));
  }
  const [qo, ko, vo] = operands as [FloatArray, FloatArray, FloatArray];
  const shape = { ...ctx.shape, headDim: dp, valueDim: dvp };
  const attn: AttentionOptions = {
    causal: ctx.causal,
    scale: 1 / sqrtD,
    bias: { kind: 'none' },
    queryOffset: ctx.queryOffset,
  };
  const fwd = ctx.backend.attentionForward(shape, qo, ko, vo, attn);
  const rows = B * H * lq;
  let disposed = false;
  return {
    out: dvp === dv ? fwd.out : sliceColumns(fwd.out, rows, dvp, dv),
    backward(dOut) {
      const dOutHat = dvp === dv ? dOut : padColumns(dOut, rows, dv, dvp);
      const g = ctx.backend.attentionBackward(shape, qo, ko, vo, fwd.out, fwd.lse, dOutHat, attn);
      const split = plan.split !== null;
      const dx = foldColumnGrads(g.dq, rows, r, 'query', split, dp, d, sqrtD);
      const dy = foldColumnGrads(g.dk, B * Hkv * lk, r, 'key', split, dp, d);
      return {
        dq: narrowInPlace(g.dq, rows, dp, d),
        dk: narrowInPlace(g.dk, B * Hkv * lk, dp, d),
        dv: dvp === dv ? g.dv : narrowInPlace(g.dv, B * Hkv * lk, dvp, dv),
        dx,
        dy,
      };
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      spare(qHat, B * H * lq, d, dp);
      spare(kHat, B * Hkv * lk, d, dp);
    },
  };
}

/** dst[row * stride + offset + c] = cols[row * w + c]: a few columns per row, a plain loop (no per-row views). */
function placeColumns(dst: FloatArray, cols: Float64Array, rows: number, w: number, stride: number, offset: number) {
  for (let row = 0; row < rows; row++) for (let c = 0; c < w; c++) dst[row * stride + offset + c] = cols[row * w + c]!;
}

/**
 * The first `to` columns of rows of width `from`, compacted in place inside x (a fresh gradient this module owns:
 * no copy, no allocation); returns the leading view of rows * to values.
 */
function narrowInPlace(x: FloatArray, rows: number, from: number, to: number): FloatArray {
  for (let r = 1; r < rows; r++) x.copyWithin(r * to, r * from, r * from + to);
  return x.subarray(0, rows * to);
}

/**
 * Widened q/k buffers of disposed calls, per dtype and geometry, for the next call (a model's forward disposes the
 * previous step's result first, so each layer reuses its own pair instead of allocating ~B H L (d + w) values per
 * step). A spare buffer is handed out only once; every column is rewritten by the
 * call that takes it (the padding is zeroed again).
 */
const SPARE_PER_GEOMETRY = 8;
const SPARE_GEOMETRIES = 4; // least recent dropped (decoding changes Lk every step)
const spares = new Map<string, FloatArray[]>();

const spareKey = (x: FloatArray, rows: number, from: number, to: number) =>
  `${x instanceof Float64Array ? 64 : 32},${rows},${from},${to}`;

/**
 * x's rows of width `from` at the start of rows of width `to`, in a spare buffer when one fits: one bulk copy, then
 * the rows moved into place from the last (no per-row views). Columns [from, from + w) hold leftovers: the caller
 * writes them; the padding [from + w, to) is zeroed here.
 */
function widened(x: FloatArray, rows: number, from: number, to: number, w: number): FloatArray {
  const out =
    spares.get(spareKey(x, rows, from, to))?.pop() ??
    (x instanceof Float64Array ? new Float64Array(rows * to) : new Float32Array(rows * to));
  out.set(x.subarray(0, rows * from));
  for (let r = rows - 1; r >= 1; r--) out.copyWithin(r * to, r * from, (r + 1) * from);
  if (to > from + w) for (let r = 0; r < rows; r++) out.fill(0, r * to + from + w, (r + 1) * to);
  return out;
}

function spare(x: FloatArray, rows: number, from: number, to: number): void {
  const key = spareKey(x, rows, from, to);
  const list = spares.get(key) ?? [];
  if (list.length < SPARE_PER_GEOMETRY) list.push(x);
  spares.delete(key); // most recent last
  spares.set(key, list);
  if (spares.size > SPARE_GEOMETRIES) spares.delete(spares.keys().next().value!);
}

/**
 * The row widths a concat bias of r source columns asks for (PositionalEncoding.operandWidths): q and k with room
 * for its operand columns, v padded to `multiple`; null with `format` (fp16/bf16 emulation rounds whole operands on
 * the host, so it takes plain rows).
 */
export function concatOperandWidths(
  opts: ConcatPrecisionOptions,
  r: number,
  d: number,
  dv: number,
  dtype: DType,
): OperandWidths | null {
  if (opts.format !== undefined) return null;
  const plan = columnPlan(opts, dtype === 'float64' ? 'fp64' : 'fp32');
  const multiple = padMultiple(opts.multiple, 'concat bias');
  const w = r * slotsPerColumn(plan.split !== null);
  return { qk: Math.ceil((d + w) / multiple) * multiple, v: Math.ceil(dv / multiple) * multiple };
}

/** Whose columns a widened buffer holds (device-attention.ts): content-dependent ones, rewritten at every call. */
const WIDENED_OWNER = {};

/**
 * concatBiasAttention over the caller's widened operands (AttendInputs.widths, concatOperandWidths): the columns
 * x sqrt(d) and y (split as in the plain route), then zero padding, are written into q's and k's rows past the head
 * dim at every call (widenedConcatAttention), and their gradients read from dQhat and dKhat. The kernel sees the
 * plain route's operands (the same fp64 columns rounded once), with no copy of q, k or their gradients; out, dq,
 * dk and dv come in the widened layout.
 */
function widenedConcatBias(
  ctx: AttendContext,
  inputs: AttendInputs,
  x: Float64Array,
  y: Float64Array,
  r: number,
  opts: ConcatPrecisionOptions,
): ConcatBiasResult {
  const be = ctx.backend;
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = ctx.shape;
  const dtype = be.dtypeOf(inputs.q);
  const expected = concatOperandWidths(opts, r, d, dv, dtype);
  check(
    expected !== null,
    'argument',
    'concat bias: fp16/bf16 emulation (format) takes plain q, k, v rows; pass them without widths',
  );
  const split = columnPlan(opts, dtype === 'float64' ? 'fp64' : 'fp32').split;
  const w = r * slotsPerColumn(split !== null);
  const sqrtD = Math.sqrt(d);
  const [rowsQ, rowsK] = [B * H * lq, B * Hkv * lk];
  const tail = (cols: Float64Array, rows: number, scale = 1) => widenedTail(cols, rows, w, expected.qk - d, scale);
  const upload = (data: Float64Array) => {
    const t = be.allocate(dtype, data.length, 'widened attention columns');
    be.upload(data, t);
    return t;
  };
  const columns = {
    owner: WIDENED_OWNER,
    key: null,
    batched: true,
    tails: () =>
      [
        // Unsplit columns go straight into the tail, scaled on the way (the same products as scaling first).
        split === null
          ? tail(x, rowsQ, sqrtD)
          : tail(
              expandColumns(
                x.map((value) => value * sqrtD),
                rowsQ,
                r,
                'query',
                split,
              ),
              rowsQ,
            ),
        split === null ? tail(y, rowsK) : tail(expandColumns(y, rowsK, r, 'key', split), rowsK),
        ...(expected.v > dv ? [new Float64Array(rowsK * (expected.v - dv))] : []),
      ].map(upload),
  };
  let grads: { dx: Float64Array; dy: Float64Array } | undefined;
  const run = widenedConcatAttention(ctx, inputs, expected, columns, (dqHat, dkHat) => {
    grads = {
      dx: foldColumnGrads(dqHat, rowsQ, r, 'query', split !== null, expected.qk, d, sqrtD),
      dy: foldColumnGrads(dkHat, rowsK, r, 'key', split !== null, expected.qk, d),
    };
  });
  return {
    out: run.out,
    backward(dOut) {
      const g = run.backward(dOut);
      return { dq: g.dq, dk: g.dk, dv: g.dv, ...grads! };
    },
    dispose: () => run.dispose?.(),
  };
}
