/**
 * What a device-portable encoding needs beyond the backend's attention (backend.ts, HANDLES.md):
 *   UploadCache            host data of fixed position terms (distance tables, concat columns), uploaded once per
 *                          geometry and backend and kept for later calls (a few geometries, least recent evicted
 *                          and released);
 *   concatAttentionOnBackend  the concat route over handles: Qhat = [Q, colsQ, 0...], Khat = [K, colsK, 0...] assembled
 *                          by strided copies, attention at an explicit scale, dQ and dK sliced back the same way.
 * Shapes: q [B, H, Lq, d], k [B, Hkv, Lk, d], v [B, Hkv, Lk, dv]; colsQ [H * Lq, w] and colsK [Hkv * Lk, w] (one
 * batch entry: fixed position columns are the same for every batch entry).
 */
import type { AttentionOptions, Backend } from '../backend/backend.ts';
import type { DType } from '../tensor.ts';
import type { AttendContext, AttendInputs, AttendResult } from './encoding.ts';

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
  return [heads, kvHeads, lq, lk, headDim, valueDim, ctx.queryOffset, ctx.causal].join(',');
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
  if (cols) {
    const { t, perBatch, w, batch } = cols;
    for (let b = 0; b < batch; b++) be.copyRows(t, 0, w, out, b * perBatch * to + from, to, perBatch, w);
  }
  return out;
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
  const opts: AttentionOptions<T> = {
    causal: ctx.causal,
    scale: 1 / Math.sqrt(d),
    bias: { kind: 'none' },
    queryOffset: ctx.queryOffset,
  };
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
