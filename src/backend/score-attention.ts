/**
 * Attention over explicit scores: the backend's engine for encodings whose position terms do not fit a distance
 * table (Transformer-XL, Shaw, DA-Transformer, PaTH). The encoding turns the content scores of one (batch, head)
 * into its logits through hooks; everything else lives here: the causal mask and query offsets, grouped-query
 * head mapping, the masked row softmax, the value product, and the backward to dLogits (handed back to the
 * encoding's own chain rule), dq, dk and dv. O(Lq * Lk) memory per (batch, head) — not a fused kernel.
 *
 * Two paths. scoreAttention() (what Backend.scoreAttention runs, with that backend's gemm and prefix softmax for
 * fp32 work and plain fp64-summing loops for fp64) does every O(Lq Lk D) product as a gemm per (batch, head); its
 * arithmetic has the dtype of the inputs. explicitAttentionForward/Backward take finished fp64 logits and work in
 * fp64 throughout (the plain path, and the test oracle for the softmax). Outputs and input gradients are stored in
 * the dtype of the tensors they belong to (Float32Array in -> Float32Array out). Layouts and positions follow
 * backend.ts: q [B, H, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv]; query row i sits at i + queryOffset.
 */
import type {
  AttentionShape,
  Backend,
  ExplicitAttention,
  ExplicitHooks,
  Lease,
  ScoreAttentionOptions,
  ScratchBuffers,
} from './backend.ts';

export type { ExplicitAttention, ExplicitHooks, Lease, ScoreAttentionOptions, ScratchBuffers } from './backend.ts';
import type { LayerOps } from './layers.ts';
import { check } from '../errors.ts';
import { checkArray, checkFiniteTensor, validateShape } from './validate.ts';
import { allocate, asDtype, dtypeOf, type DType, type FloatArray } from '../tensor.ts';

/** The mask and positions of one attention call. */
export interface MaskSpec {
  causal: boolean;
  queryOffset: number;
}

/** Whether key row l is visible to query row i (causal: the key is not ahead of the query). */
export function keyVisible(mask: MaskSpec, i: number, l: number): boolean {
  return !mask.causal || l <= i + mask.queryOffset;
}

/** Key/value head read by query head h under grouped-query attention. */
export function kvHeadOf(shape: AttentionShape, h: number): number {
  return Math.floor(h / (shape.heads / shape.kvHeads));
}

/** A finished explicit attention: outputs and the probabilities the backward needs. */
export interface ExplicitForward {
  /** [B, H, Lq, Dv] in the dtype of v. */
  out: FloatArray;
  /** [B, H, Lq, Lk]; exactly 0 at masked entries and on rows that see no key. */
  probs: Float64Array;
}

/**
 * Row-wise softmax of logits [B, H, Lq, Lk] under the mask, then out = P V. Entries the mask hides are ignored,
 * whatever the logits hold there. A row with no visible key gets P = 0 and out = 0 (backend.ts convention).
 */
export function explicitAttentionForward(
  shape: AttentionShape,
  mask: MaskSpec,
  logits: Float64Array,
  vInput: FloatArray,
): ExplicitForward {
  const { batch: B, heads: H, lq, lk, valueDim: dv } = shape;
  const v = asFloat64(vInput);
  check(logits.length === B * H * lq * lk, 'shape', `logits must be [B, H, Lq, Lk] = ${B * H * lq * lk} elements`);
  const probs = new Float64Array(B * H * lq * lk);
  const out = allocate(dtypeOf(vInput), B * H * lq * dv);
  const acc = new Float64Array(dv);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const vBase = (b * shape.kvHeads + kvHeadOf(shape, h)) * lk * dv;
      for (let i = 0; i < lq; i++) {
        const row = ((b * H + h) * lq + i) * lk;
        let max = -Infinity;
        for (let l = 0; l < lk; l++) if (keyVisible(mask, i, l)) max = Math.max(max, logits[row + l]!);
        if (max === -Infinity) continue; // no visible key (or every logit -Infinity): P = 0, out = 0
        let sum = 0;
        for (let l = 0; l < lk; l++) {
          if (!keyVisible(mask, i, l)) continue;
          const e = Math.exp(logits[row + l]! - max);
          probs[row + l] = e;
          sum += e;
        }
        acc.fill(0);
        for (let l = 0; l < lk; l++) {
          const p = (probs[row + l]! /= sum);
          if (p === 0) continue;
          const vRow = vBase + l * dv;
          for (let c = 0; c < dv; c++) acc[c]! += p * v[vRow + c]!;
        }
        out.set(acc, ((b * H + h) * lq + i) * dv);
      }
    }
  }
  return { out, probs };
}

/**
 * Backward of explicitAttentionForward: dP = dOut V^T (+ extraDProbs, for encodings whose value side adds its
 * own per-pair term), dLogits = P * (dP - rowsum(P * dP)), dV = P^T dOut (summed over the query heads of a group).
 * dLogits is 0 wherever P is 0 (masked entries included).
 */
export function explicitAttentionBackward(
  shape: AttentionShape,
  probs: Float64Array,
  vInput: FloatArray,
  dOutInput: FloatArray,
  extraDProbs?: Float64Array,
): { dLogits: Float64Array; dv: FloatArray } {
  const { batch: B, heads: H, lq, lk, valueDim: dv } = shape;
  const v = asFloat64(vInput);
  const dOut = asFloat64(dOutInput);
  check(
    dOut.length === B * H * lq * dv,
    'shape',
    `dOut has ${dOut.length} elements but [B, H, Lq, Dv] needs ${B * H * lq * dv}; pass the gradient of out`,
  );
  const dLogits = new Float64Array(B * H * lq * lk);
  const dvAcc = new Float64Array(v.length);
  const dP = new Float64Array(lk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const vBase = (b * shape.kvHeads + kvHeadOf(shape, h)) * lk * dv;
      for (let i = 0; i < lq; i++) {
        const row = ((b * H + h) * lq + i) * lk;
        const oRow = ((b * H + h) * lq + i) * dv;
        let weighted = 0;
        for (let l = 0; l < lk; l++) {
          const p = probs[row + l]!;
          if (p === 0) {
            dP[l] = 0;
            continue;
          }
          const vRow = vBase + l * dv;
          let s = extraDProbs ? extraDProbs[row + l]! : 0;
          for (let c = 0; c < dv; c++) {
            const g = dOut[oRow + c]!;
            s += g * v[vRow + c]!;
            dvAcc[vRow + c]! += p * g;
          }
          dP[l] = s;
          weighted += p * s;
        }
        for (let l = 0; l < lk; l++) dLogits[row + l] = probs[row + l]! * (dP[l]! - weighted);
      }
    }
  }
  return { dLogits, dv: toDtypeOf(vInput, dvAcc) };
}

/**
 * The fp64 view the loops work on: the array itself when it already is fp64, else an fp64 copy. Keeping every
 * inner loop on one array type also keeps it monomorphic (mixed Float32/Float64 access is several times slower).
 */
export function asFloat64(a: FloatArray): Float64Array {
  return a instanceof Float64Array ? a : Float64Array.from(a);
}

/** Copies an fp64 accumulator into a fresh array of the same dtype as `like`. */
export function toDtypeOf(like: FloatArray, values: Float64Array): FloatArray {
  const out = allocate(dtypeOf(like), values.length);
  out.set(values);
  return out;
}

// ------------------------------------------------------------------------------------------------------------
// The fast path: the same maths per (batch, head), with every O(Lq Lk D) product as one gemm.

/** End (exclusive) of the visible keys of query row i: keys 0 .. end - 1 are visible, the rest masked. */
export function visibleEnd(mask: MaskSpec, i: number, lk: number): number {
  if (!mask.causal) return lk;
  return Math.max(0, Math.min(lk, i + mask.queryOffset + 1));
}

/** The two kernels the engine runs its fp32 or fp64 work on. */
export type ScoreKernels = Pick<Backend, 'gemm'> & Pick<LayerOps, 'prefixSoftmaxRows'>;

/**
 * Attention with explicit logits, fast path: per (batch, head), S = scale Q K^T (gemm), the encoding's hook
 * turns S into its logits, masked row softmax in place, out = P V (gemm) + the hook's value term. The backward
 * runs dP = dOut V^T, dLogits = P (dP - rowsum(P dP)), dV += P^T dOut, dQ += alpha G K, dK += alpha G^T Q as gemms.
 * Work arrays have the dtype of q (fp32 when q, k and v all are, else fp64), and `kernels(dtype)` gives the gemm
 * and row softmax for it; P [B, H, Lq, Lk] is kept for the backward, plus O(Lq Lk) scratch for one (batch, head).
 */
export function scoreAttention(
  kernels: (dtype: DType) => ScoreKernels,
  shape: AttentionShape,
  qInput: FloatArray,
  kInput: FloatArray,
  vInput: FloatArray,
  opts: ScoreAttentionOptions,
  hooks: ExplicitHooks,
): ExplicitAttention {
  validateScoreAttention(shape, qInput, kInput, vInput, opts);
  const s = shape;
  const { scale, scratch: pool } = opts;
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: D, valueDim: dv } = s;
  const dtype: DType =
    qInput instanceof Float32Array && kInput instanceof Float32Array && vInput instanceof Float32Array
      ? 'float32'
      : 'float64';
  const q = asDtype(qInput, dtype);
  const k = asDtype(kInput, dtype);
  const v = asDtype(vInput, dtype);
  const ops = kernels(dtype);
  const gemm = ops.gemm.bind(ops);
  const mask: MaskSpec = { causal: opts.causal, queryOffset: opts.queryOffset };
  const group = H / Hkv;
  const LL = lq * lk;
  // Every entry of P is written below (the products, the hooks, then the softmax, which zeroes what the mask
  // hides), so a pooled buffer needs no clearing.
  const lease = pool ? pool.take('probs', dtype, B * H * LL) : null;
  const probs = lease ? lease.array : allocate(dtype, B * H * LL);
  const out = allocate(dtype, B * H * lq * dv);
  // Causal row blocks: rows i0 .. i1 - 1 see keys 0 .. keysOf(i1 - 1) - 1 at most, so products skip the rest.
  const blocks = rowBlocks(mask, lq, lk);
  const views = (b: number, h: number) => {
    const kh = Math.floor(h / group);
    const bh = b * H + h;
    const kAt = (b * Hkv + kh) * lk;
    return {
      kh,
      P: probs.subarray(bh * LL, (bh + 1) * LL),
      qv: q.subarray(bh * lq * D, (bh + 1) * lq * D),
      kv: k.subarray(kAt * D, (kAt + lk) * D),
      vv: v.subarray(kAt * dv, (kAt + lk) * dv),
    };
  };
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const { kh, P, qv, kv } = views(b, h);
      for (const [i0, i1, n] of hooks.ownScores ? [] : blocks)
        gemm(false, true, i1 - i0, n, D, scale, qv.subarray(i0 * D), D, kv, D, 0, P.subarray(i0 * lk), lk);
      hooks.logits(b, h, kh, P);
    }
  }
  softmaxAllRows(probs, B * H, lq, lk, mask, ops);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const { P, vv } = views(b, h);
      const o = out.subarray((b * H + h) * lq * dv, (b * H + h + 1) * lq * dv);
      for (const [i0, i1, n] of blocks)
        gemm(false, false, i1 - i0, dv, n, 1, P.subarray(i0 * lk), lk, vv, dv, 0, o.subarray(i0 * dv), dv);
      hooks.valueTerm?.(b, h, P, o);
    }
  }
  // The logits come from the encoding's own terms (parameters, sinusoids, content products), which no input check
  // bounds: one that overflows turns its row into NaN, and a finite forward can still overflow in the backward. A
  // scan of the results (small beside the O(B H Lq Lk D) products) makes that one error naming where it happened.
  checkFiniteTensor(out, `attention over explicit logits (${dtype}): out`, [B, H, lq, dv]);

  const backward = (dOutInput: FloatArray) => {
    check(
      dOutInput.length === B * H * lq * dv,
      'shape',
      `dOut has ${dOutInput.length} elements but [B, H, Lq, Dv] needs ${B * H * lq * dv}; pass the gradient of out`,
    );
    check(
      lease === null || lease.valid(),
      'argument',
      'explicit attention: a later attend() of the same encoding reused the probabilities this backward needs; ' +
        'call backward() before the next attend() of that encoding (as the model does)',
    );
    const dOut = asDtype(dOutInput, dtype);
    const dq = allocate(dtype, q.length);
    const dk = allocate(dtype, k.length);
    const dV = allocate(dtype, v.length);
    const dS = allocate(dtype, LL);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        const { kh, P, qv, kv, vv } = views(b, h);
        const bh = b * H + h;
        const kAt = (b * Hkv + kh) * lk;
        const go = dOut.subarray(bh * lq * dv, (bh + 1) * lq * dv);
        const dqv = dq.subarray(bh * lq * D, (bh + 1) * lq * D);
        const dkv = dk.subarray(kAt * D, (kAt + lk) * D);
        const dvv = dV.subarray(kAt * dv, (kAt + lk) * dv);
        for (const [i0, i1, n] of blocks) {
          const m = i1 - i0;
          gemm(false, true, m, n, dv, 1, go.subarray(i0 * dv), dv, vv, dv, 0, dS.subarray(i0 * lk), lk);
          gemm(true, false, n, dv, m, 1, P.subarray(i0 * lk), lk, go.subarray(i0 * dv), dv, 1, dvv, dv);
        }
        hooks.extraDProbs?.(b, h, P, go, dS);
        softmaxBackwardRows(P, dS, lq, lk, mask);
        const alpha = hooks.backward(b, h, kh, dS, dqv, dkv);
        for (const [i0, i1, n] of alpha === 0 ? [] : blocks) {
          const m = i1 - i0;
          const g = dS.subarray(i0 * lk);
          gemm(false, false, m, D, n, alpha, g, lk, kv, D, 1, dqv.subarray(i0 * D), D);
          gemm(true, false, n, D, m, alpha, g, lk, qv.subarray(i0 * D), D, 1, dkv, D);
        }
      }
    }
    checkFiniteTensor(dq, `attention over explicit logits (${dtype}): dq`, [B, H, lq, D]);
    checkFiniteTensor(dk, `attention over explicit logits (${dtype}): dk`, [B, Hkv, lk, D]);
    checkFiniteTensor(dV, `attention over explicit logits (${dtype}): dv`, [B, Hkv, lk, dv]);
    return {
      dq: asDtype(dq, dtypeOf(qInput)),
      dk: asDtype(dk, dtypeOf(kInput)),
      dv: asDtype(dV, dtypeOf(vInput)),
    };
  };
  return { out: asDtype(out, dtypeOf(vInput)), backward };
}

/**
 * Reusable work buffers of one encoding instance (one slot per name and dtype, grown when a call needs more). A
 * forward that allocates its O(Lq Lk) buffers afresh pays for paging in new memory every call (at L = 2048 that
 * is 16 MiB per (batch, head), and it cost about a third of an evaluation forward); taking them from the pool
 * avoids it. Handing a slot out again invalidates the previous lease, so a stale result refuses its backward
 * instead of reading overwritten numbers. The pool keeps the largest buffer each slot has needed.
 */
export class ScratchPool implements ScratchBuffers {
  private readonly slots = new Map<string, { buffer: FloatArray; generation: number }>();

  take(name: string, dtype: DType, n: number): Lease {
    const key = `${name}:${dtype}`;
    let slot = this.slots.get(key);
    if (slot === undefined || slot.buffer.length < n) {
      slot = { buffer: allocate(dtype, n), generation: 0 };
      this.slots.set(key, slot);
    }
    const held = slot;
    const generation = ++held.generation;
    return {
      array: held.buffer.subarray(0, n),
      valid: () => this.slots.get(key) === held && held.generation === generation,
    };
  }
}

/** Rows per block of the blocked products: a training window (L = 128) stays one block. */
export const ROW_BLOCK = 256;

/**
 * [i0, i1, n] per block of ROW_BLOCK query rows: n = the keys any row of the block sees (all Lk unless causal).
 * Blocks whose rows see no key are left out.
 */
export function rowBlocks(mask: MaskSpec, lq: number, lk: number): [number, number, number][] {
  const blocks: [number, number, number][] = [];
  for (let i0 = 0; i0 < lq; i0 += ROW_BLOCK) {
    const i1 = Math.min(lq, i0 + ROW_BLOCK);
    const n = visibleEnd(mask, i1 - 1, lk);
    if (n > 0) blocks.push([i0, i1, n]);
  }
  return blocks;
}

/**
 * Masked row softmax in place over `count` matrices [Lq, Lk] stored back to back: each row over its visible keys
 * (the prefix visibleEnd gives), 0 at masked entries and on rows that see no key or whose visible logits are all
 * -Infinity, in one prefixSoftmaxRows call of the kernels for the work dtype (native for fp32 on the native
 * backend; the reference loop, whose arithmetic has the dtype of `probs`, otherwise).
 */
function softmaxAllRows(
  probs: FloatArray,
  count: number,
  lq: number,
  lk: number,
  mask: MaskSpec,
  ops: Pick<LayerOps, 'prefixSoftmaxRows'>,
): void {
  const visible = new Int32Array(count * lq);
  for (let i = 0; i < lq; i++) visible[i] = visibleEnd(mask, i, lk);
  for (let m = 1; m < count; m++) visible.copyWithin(m * lq, 0, lq);
  ops.prefixSoftmaxRows(probs, count * lq, lk, visible);
}

/** dP [Lq, Lk] -> dLogits = P (dP - rowsum(P dP)) in place; 0 at masked entries. */
function softmaxBackwardRows(P: FloatArray, dP: FloatArray, lq: number, lk: number, mask: MaskSpec): void {
  for (let i = 0; i < lq; i++) {
    const row = i * lk;
    const end = visibleEnd(mask, i, lk);
    let weighted = 0;
    for (let l = row; l < row + end; l++) weighted += P[l]! * dP[l]!;
    for (let l = row; l < row + end; l++) dP[l] = P[l]! * (dP[l]! - weighted);
    dP.fill(0, row + end, row + lk);
  }
}

/** Refuses a call whose shape, sizes, scale or query offset the engine cannot trust (one HypeError naming it). */
function validateScoreAttention(
  shape: AttentionShape,
  q: FloatArray,
  k: FloatArray,
  v: FloatArray,
  opts: ScoreAttentionOptions,
): void {
  validateShape(shape);
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  checkArray(q, 'q', B * H * lq * d, 'B*H*Lq*D');
  checkArray(k, 'k', B * Hkv * lk * d, 'B*Hkv*Lk*D');
  checkArray(v, 'v', B * Hkv * lk * dv, 'B*Hkv*Lk*Dv');
  check(
    Number.isInteger(opts.queryOffset),
    'argument',
    `attention over explicit scores: queryOffset = ${opts.queryOffset} must be an integer (the position of query row 0)`,
  );
  check(
    Number.isFinite(opts.scale),
    'argument',
    `attention over explicit scores: scale = ${opts.scale} must be a finite number (1/sqrt(head dim) as a rule)`,
  );
}
