/**
 * Per-layer storage of a KV cache: keys (raw, or already transformed by the encoding's cachedAttention hook),
 * values and, for data-dependent encodings (PaTH), the block inputs x, for positions 0 .. length - 1.
 *
 * Buffers are allocated once for the whole generation (capacity = the planned number of positions) in the layout
 * [B, Hkv, capacity, width]; `keys()` / `values()` hand attention a contiguous [B, Hkv, length, width] array (a
 * view when B * Hkv = 1, else a copy: O(length) per step, the same order as the attention itself).
 */
import { check } from '../errors.ts';
import { allocate, type DType, type FloatArray } from '../tensor.ts';

export class LayerCache {
  private readonly k: FloatArray;
  private readonly v: FloatArray;
  private readonly x: FloatArray | null;
  length = 0;

  constructor(
    readonly batch: number,
    readonly kvHeads: number,
    readonly capacity: number,
    readonly keyWidth: number,
    readonly valueDim: number,
    dtype: DType,
    /** Model width C when block inputs must be kept (data-dependent encodings); 0 otherwise. */
    readonly inputWidth = 0,
  ) {
    this.k = allocate(dtype, batch * kvHeads * capacity * keyWidth);
    this.v = allocate(dtype, batch * kvHeads * capacity * valueDim);
    this.x = inputWidth > 0 ? allocate(dtype, batch * capacity * inputWidth) : null;
  }

  /** Appends n positions: keys [B, Hkv, n, keyWidth], values [B, Hkv, n, valueDim], x [B, n, C] if kept. */
  append(keys: FloatArray, values: FloatArray, n: number, x?: FloatArray): void {
    const { batch: B, kvHeads: Hkv, capacity: cap, keyWidth: kw, valueDim: dv } = this;
    check(
      this.length + n <= cap,
      'length',
      `the KV cache holds ${cap} positions and has ${this.length}; appending ${n} more overflows it (plan a longer generation)`,
    );
    check(keys.length === B * Hkv * n * kw, 'shape', `cached keys: expected ${B * Hkv * n * kw} values`);
    check(values.length === B * Hkv * n * dv, 'shape', `cached values: expected ${B * Hkv * n * dv} values`);
    for (let g = 0; g < B * Hkv; g++) {
      this.k.set(keys.subarray(g * n * kw, (g + 1) * n * kw), (g * cap + this.length) * kw);
      this.v.set(values.subarray(g * n * dv, (g + 1) * n * dv), (g * cap + this.length) * dv);
    }
    if (this.x) {
      const C = this.inputWidth;
      check(x !== undefined && x.length === B * n * C, 'shape', 'this cache keeps block inputs: pass x [B, n, C]');
      for (let b = 0; b < B; b++) this.x.set(x.subarray(b * n * C, (b + 1) * n * C), (b * cap + this.length) * C);
    }
    this.length += n;
  }

  keys(): FloatArray {
    return this.gather(this.k, this.kvHeads, this.keyWidth);
  }

  values(): FloatArray {
    return this.gather(this.v, this.kvHeads, this.valueDim);
  }

  /** Block inputs [B, length, C], or undefined when not kept. */
  inputs(): FloatArray | undefined {
    return this.x ? this.gather(this.x, 1, this.inputWidth) : undefined;
  }

  private gather(buf: FloatArray, heads: number, width: number): FloatArray {
    const groups = this.batch * heads;
    const rowLen = this.length * width;
    if (groups === 1) return buf.subarray(0, rowLen);
    const out = allocate(buf instanceof Float64Array ? 'float64' : 'float32', groups * rowLen);
    for (let g = 0; g < groups; g++)
      out.set(buf.subarray(g * this.capacity * width, g * this.capacity * width + rowLen), g * rowLen);
    return out;
  }
}
