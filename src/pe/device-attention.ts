/**
 * What a device-portable encoding needs beyond the backend's attention (backend.ts, HANDLES.md):
 *   UploadCache            host data of fixed position terms (distance tables, concat columns), uploaded once per
 *                          geometry and backend and kept for later calls (a few geometries, least recent evicted
 *                          and released);
 *   concatAttentionOnBackend  the concat route over handles: Qhat = [Q, colsQ, 0...], Khat = [K, colsK, 0...] assembled
 *                          by strided copies, attention at an explicit scale, dQ and dK sliced back the same way;
 *   widenedConcatAttention the same route over operands the caller already holds widened (AttendInputs.widths:
 *                          encoding.ts): the columns are written into the caller's buffers, fixed ones once per
 *                          buffer and geometry, and nothing is copied or sliced per call.
 * Shapes: q [B, H, Lq, d], k [B, Hkv, Lk, d], v [B, Hkv, Lk, dv]; colsQ [H * Lq, w] and colsK [Hkv * Lk, w] (one
 * batch entry: fixed position columns are the same for every batch entry). Widened: q [B, H, Lq, dp], k [B, Hkv,
 * Lk, dp], v [B, Hkv, Lk, dvp] with per-batch-entry tails [H * Lq, dp - d], [Hkv * Lk, dp - d] (the columns, then
 * zero padding) and, when dvp > dv, [Hkv * Lk, dvp - dv] (zeros).
 */
import type { AttentionOptions, Backend } from '../backend/backend.ts';
import { check } from '../errors.ts';
import type { DType } from '../tensor.ts';
import type { AttendContext, AttendInputs, AttendResult, OperandWidths } from './encoding.ts';

/**
 * A widened buffer's tail rows [rows, width] from source columns [rows, w] (w <= width): each row's w columns times
 * `scale`, then zeros (the padding up to the widened head dim). Built in fp64 on the host, rounded once by the upload.
 */
export function widenedTail(cols: Float64Array, rows: number, w: number, width: number, scale = 1): Float64Array {
  const out = new Float64Array(rows * width);
  // Element loops, not a view per row: w is a few columns and rows run to B H L (a view each costs more than its copy).
  for (let r = 0; r < rows; r++) for (let c = 0; c < w; c++) out[r * width + c] = cols[r * w + c]! * scale;
  return out;
}

/** The handles of a few geometries' uploaded data, per backend (module comment). */
export class UploadCache {
  private readonly byBackend = new WeakMap<object, Map<string, unknown[]>>();

  constructor(private readonly capacity = 4) {}

  /** The handles of build()'s arrays for `key` on `be` (dtype `dtype`), uploading them on first use. */
  get<T, I>(be: Backend<T, I>, key: string, dtype: DType, build: () => ArrayLike<number>[]): T[] {
    let entries = this.byBackend.get(be);
    if (!entries) this.byBackend.set(be, (entries = new Map()));
    const hit = entries.get(key);
    if (hit) {
      entries.delete(key); // most recent last
      entries.set(key, hit);
      return hit as T[];
    }
    const handles = build().map((data) => {
      const t = be.allocate(dtype, data.length, 'an uploaded position term');
      be.upload(data, t);
      return t;
    });
    entries.set(key, handles);
    if (entries.size > this.capacity) {
      const [oldKey, old] = entries.entries().next().value as [string, T[]];
      entries.delete(oldKey);
      for (const t of old) be.release(t);
    }
    return handles;
  }
}

/**
 * A geometry's cache key: everything a fixed position term of one call depends on (not the batch size: tables and
 * columns are per batch entry).
 */
export function geometryKey<T, I>(ctx: AttendContext<T, I>): string {
  const { heads, kvHeads, lq, lk, headDim, valueDim } = ctx.shape;
  const key = [heads, kvHeads, lq, lk, headDim, valueDim, ctx.queryOffset, ctx.causal].join(',');
  return ctx.grid ? `${key};${ctx.grid.join('x')}` : key;
}

/** out's rows b * perBatch .. (b + 1) * perBatch - 1, columns from .. from + w - 1, = t [perBatch, w], for each b. */
function copyPerBatch<T, I>(
  be: Backend<T, I>,
  t: T,
  w: number,
  out: T,
  perBatch: number,
  batch: number,
  from: number,
  to: number,
) {
  for (let b = 0; b < batch; b++) be.copyRows(t, 0, w, out, b * perBatch * to + from, to, perBatch, w);
}

/**
 * [x, cols, 0...]: x's rows of width `from` widened to `to` in a fresh zeroed tensor; `cols` (w columns for
 * perBatch rows, the same for each of `batch` entries) are copied in after x's columns.
 */
export function widenRows<T, I>(
  be: Backend<T, I>,
  x: T,
  rows: number,
  from: number,
  to: number,
  cols?: { t: T; perBatch: number; w: number; batch: number },
): T {
  const out = be.allocate(be.dtypeOf(x), rows * to, 'an augmented attention operand');
  be.copyRows(x, 0, from, out, 0, to, rows, from);
  if (cols) copyPerBatch(be, cols.t, cols.w, out, cols.perBatch, cols.batch, from, to);
  return out;
}

/** A concat route's kernel options: no bias (it rides in the columns), logits scaled by 1/sqrt(d) of the call. */
function concatOptions<T, I>(ctx: AttendContext<T, I>): AttentionOptions<T> {
  return {
    causal: ctx.causal,
    scale: 1 / Math.sqrt(ctx.shape.headDim),
    bias: { kind: 'none' },
    queryOffset: ctx.queryOffset,
  };
}

/**
 * The concat route on handles (module comment): w bias columns per head row, head dims padded to a multiple of
 * `multiple`, logits scaled by 1/sqrt(d) of the original head dim. The columns carry no gradient (fixed terms).
 */
export function concatAttentionOnBackend<T, I>(
  ctx: AttendContext<T, I>,
  inputs: AttendInputs<T>,
  colsQ: T,
  colsK: T,
  w: number,
  multiple: number,
): AttendResult<T> {
  const be = ctx.backend;
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = ctx.shape;
  const dtype = be.dtypeOf(inputs.q);
  const dp = Math.ceil((d + w) / multiple) * multiple;
  const dvp = Math.ceil(dv / multiple) * multiple;
  const rowsQ = B * H * lq;
  const rowsK = B * Hkv * lk;
  const widen = (x: T, rows: number, from: number, to: number, cols?: { t: T; perBatch: number }): T =>
    widenRows(be, x, rows, from, to, cols && { ...cols, w, batch: B });
  const narrow = (x: T, rows: number, from: number, to: number): T => {
    const out = be.allocate(dtype, rows * to, 'an attention gradient');
    be.copyRows(x, 0, from, out, 0, to, rows, to);
    return out;
  };
  const qHat = widen(inputs.q, rowsQ, d, dp, { t: colsQ, perBatch: H * lq });
  const kHat = widen(inputs.k, rowsK, d, dp, { t: colsK, perBatch: Hkv * lk });
  const vHat = dvp === dv ? inputs.v : widen(inputs.v, rowsK, dv, dvp);
  const shape = { ...ctx.shape, headDim: dp, valueDim: dvp };
  const opts = concatOptions(ctx);
  const fwd = be.attentionForward(shape, qHat, kHat, vHat, opts);
  const out = dvp === dv ? fwd.out : narrow(fwd.out, rowsQ, dvp, dv);
  return {
    out,
    backward(dOut) {
      const dOutHat = dvp === dv ? dOut : widen(dOut, rowsQ, dv, dvp);
      const g = be.attentionBackward(shape, qHat, kHat, vHat, fwd.out, fwd.lse, dOutHat, opts);
      const grads = {
        dq: narrow(g.dq, rowsQ, dp, d),
        dk: narrow(g.dk, rowsK, dp, d),
        dv: dvp === dv ? g.dv : narrow(g.dv, rowsK, dvp, dv),
      };
      for (const t of [g.dq, g.dk, ...(dvp === dv ? [] : [g.dv, dOutHat])]) be.release(t);
      return grads;
    },
    dispose() {
      for (const t of [qHat, kHat, fwd.out, fwd.lse, ...(dvp === dv ? [] : [vHat, out])]) be.release(t);
    },
  };
}

/** The columns a widened concat route writes into the caller's operands (module comment). */
export interface WidenedColumns<T> {
  /** The encoding instance writing them: a buffer another instance wrote into gets its columns written afresh. */
  owner: object;
  /**
   * Same key, same columns (fixed position terms: the geometry, geometryKey): a buffer that holds this owner's
   * columns of this key is left as it is. null: the columns change from call to call (trained terms); they are
   * written at every call and the tails released afterwards.
   */
  key: string | null;
  /** The per-batch-entry tails of q, k and, when v is padded, v (module comment). */
  tails(): readonly T[];
  /** The tails hold every batch entry's rows, not one entry's (content-dependent columns: fox, hype-gated). */
  batched?: boolean;
}

/** What each widened buffer holds beyond the caller's columns: the owner and key of its last write. */
const written = new WeakMap<object, { owner: object; key: string }>();

/**
 * The concat route over widened operands (module comment): writes the tails where a buffer lacks them, runs the
 * kernel on the widened tensors at scale 1/sqrt(d) and returns out, dq, dk, dv in the widened layout.
 * `columnGrads` receives dQhat and dKhat before they are returned (trained columns take their gradient there).
 */
export function widenedConcatAttention<T, I>(
  ctx: AttendContext<T, I>,
  inputs: AttendInputs<T>,
  expected: OperandWidths,
  columns: WidenedColumns<T>,
  columnGrads?: (dqHat: T, dkHat: T) => void,
): AttendResult<T> {
  const be = ctx.backend;
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = ctx.shape;
  const widths = inputs.widths;
  check(
    widths !== undefined && widths.qk === expected.qk && widths.v === expected.v,
    'shape',
    () =>
      `widened attention operands have rows of ${widths?.qk} (q, k) and ${widths?.v} (v) values, but this ` +
      `encoding asked for ${expected.qk} and ${expected.v}; allocate them with its operandWidths()`,
  );
  const { qk: dp, v: dvp } = expected;
  const targets: [T, number, number, number][] = [
    [inputs.q, H * lq, d, dp],
    [inputs.k, Hkv * lk, d, dp],
  ];
  if (dvp > dv) targets.push([inputs.v, Hkv * lk, dv, dvp]);
  // A buffer's record names the batch size too: a larger batch in the same buffer has rows never written.
  const key = columns.key === null ? null : `${columns.key};${B}`;
  const stale = targets
    .map((target, i) => ({ target, i }))
    .filter(({ target: [t] }) => {
      const w = written.get(t as object);
      return key === null || w?.owner !== columns.owner || w.key !== key;
    });
  if (stale.length > 0) {
    const tails = columns.tails();
    for (const { target, i } of stale) {
      const [t, perBatch, from, to] = target;
      if (columns.batched) be.copyRows(tails[i]!, 0, to - from, t, from, to, B * perBatch, to - from);
      else copyPerBatch(be, tails[i]!, to - from, t, perBatch, B, from, to);
      if (key !== null) written.set(t as object, { owner: columns.owner, key });
      else written.delete(t as object);
    }
    if (key === null) for (const t of tails) be.release(t);
  }
  const shape = { ...ctx.shape, headDim: dp, valueDim: dvp };
  const opts = concatOptions(ctx);
  const fwd = be.attentionForward(shape, inputs.q, inputs.k, inputs.v, opts);
  return {
    out: fwd.out,
    backward(dOut) {
      const g = be.attentionBackward(shape, inputs.q, inputs.k, inputs.v, fwd.out, fwd.lse, dOut, opts);
      columnGrads?.(g.dq, g.dk);
      return { dq: g.dq, dk: g.dk, dv: g.dv };
    },
    dispose() {
      be.release(fwd.out);
      be.release(fwd.lse);
    },
  };
}
