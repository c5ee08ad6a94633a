/**
 * Per-layer storage of a KV cache on a backend (host arrays or device handles): keys (raw, or already transformed
 * by the encoding's cachedAttention hook), values and, for data-dependent encodings (PaTH), the block inputs x, for
 * positions 0 .. length - 1.
 *
 * Buffers are allocated once for the whole generation (capacity = the planned number of positions) in the layout
 * [B, Hkv, capacity, width]; appends and reads are strided copies (backend copyRows), so nothing leaves a device.
 * `keys()` / `values()` hand attention a FRESH contiguous [B, Hkv, length, width] tensor the caller releases
 * (O(length) per step, the same order as the attention itself).
 */
import type { Backend } from '../backend/backend.ts';
import { check } from '../errors.ts';
import type { DType, FloatArray } from '../tensor.ts';

export class LayerCache<T = FloatArray, I = Int32Array> {
  private readonly k: T;
  private readonly v: T;
  private readonly x: T | null;
  length = 0;

  constructor(
    private readonly be: Backend<T, I>,
    readonly batch: number,
    readonly kvHeads: number,
    readonly capacity: number,
    readonly keyWidth: number,
    readonly valueDim: number,
    private readonly dtype: DType,
    /** Model width C when block inputs must be kept (data-dependent encodings); 0 otherwise. */
    readonly inputWidth = 0,
  ) {
    this.k = be.allocate(dtype, batch * kvHeads * capacity * keyWidth, 'the KV cache');
    this.v = be.allocate(dtype, batch * kvHeads * capacity * valueDim, 'the KV cache');
    this.x = inputWidth > 0 ? be.allocate(dtype, batch * capacity * inputWidth, 'the KV cache') : null;
  }

  /** Appends n positions: keys [B, Hkv, n, keyWidth], values [B, Hkv, n, valueDim], x [B, n, C] if kept. */
  append(keys: T, values: T, n: number, x?: T): void {
    const { be, batch: B, kvHeads: Hkv, capacity: cap, keyWidth: kw, valueDim: dv } = this;
    check(
      this.length + n <= cap,
      'length',
      `the KV cache holds ${cap} positions and has ${this.length}; appending ${n} more overflows it (plan a longer generation)`,
    );
    check(be.sizeOf(keys) === B * Hkv * n * kw, 'shape', `cached keys: expected ${B * Hkv * n * kw} values`);
    check(be.sizeOf(values) === B * Hkv * n * dv, 'shape', `cached values: expected ${B * Hkv * n * dv} values`);
    be.copyRows(keys, 0, n * kw, this.k, this.length * kw, cap * kw, B * Hkv, n * kw);
    be.copyRows(values, 0, n * dv, this.v, this.length * dv, cap * dv, B * Hkv, n * dv);
    if (this.x) {
      const C = this.inputWidth;
      check(x !== undefined && be.sizeOf(x) === B * n * C, 'shape', 'this cache keeps block inputs: pass x [B, n, C]');
      be.copyRows(x, 0, n * C, this.x, this.length * C, cap * C, B, n * C);
    }
    this.length += n;
  }

  keys(): T {
    return this.gather(this.k, this.kvHeads, this.keyWidth);
  }

  values(): T {
    return this.gather(this.v, this.kvHeads, this.valueDim);
  }

  /** Block inputs [B, length, C], or undefined when not kept. */
  inputs(): T | undefined {
    return this.x ? this.gather(this.x, 1, this.inputWidth) : undefined;
  }

  /** Frees the cache's tensors (a device's memory; a no-op on host). */
  release(): void {
    for (const t of [this.k, this.v, ...(this.x ? [this.x] : [])]) this.be.release(t);
  }

  private gather(buf: T, heads: number, width: number): T {
    const groups = this.batch * heads;
    const rowLen = this.length * width;
    const out = this.be.allocate(this.dtype, groups * rowLen, 'the KV cache');
    this.be.copyRows(buf, 0, this.capacity * width, out, 0, rowLen, groups, rowLen);
    return out;
  }
}
