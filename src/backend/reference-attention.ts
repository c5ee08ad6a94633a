/**
 * Plain multi-head attention, written for clarity: the oracle every other kernel is tested against.
 *
 * It materialises one row of logits at a time (O(Lk) scratch), so it is slow but easy to audit. The arithmetic
 * follows the arrays it is given: Float64Array inputs are computed in fp64 throughout; Float32Array inputs store
 * every intermediate (logits, probabilities, outputs, gradients) in fp32, with each dot product summed in a JS
 * double and rounded once on store. Layouts, positions and the distance table are defined in backend.ts. Inputs are
 * validated by the caller (ReferenceBackend, via validate.ts, the same checks the native backend runs).
 */
import { allocate, dtypeOf, type FloatArray } from '../tensor.ts';
import {
  distanceSpan,
  type AttentionForward,
  type AttentionGrads,
  type AttentionOptions,
  type AttentionShape,
  type PositionBias,
  type PositionBiasGrad,
} from './backend.ts';

/** The position bias of query head h at (query row i, key row l), where D = i + queryOffset - l. */
export function biasValue(
  bias: PositionBias,
  shape: AttentionShape,
  h: number,
  i: number,
  l: number,
  D: number,
): number {
  switch (bias.kind) {
    case 'none':
      return 0;
    case 'distance': // queryOffset = D - i + l fixes the table's row length
      return bias.table[h * distanceSpan(shape.lq, shape.lk, D - i + l) + D + shape.lk - 1]!;
    case 'dense': {
      const hb = bias.heads === 1 ? 0 : h;
      return bias.bias[(hb * shape.lq + i) * shape.lk + l]!;
    }
  }
}

/** Adds g = dLogit at (h, i, l, D) into the gradient accumulator (fp64). */
function accumulateBiasGrad(
  grad: PositionBiasGrad,
  shape: AttentionShape,
  h: number,
  i: number,
  l: number,
  D: number,
  span: number,
  g: number,
): void {
  switch (grad.kind) {
    case 'none':
      return;
    case 'distance':
      grad.table[h * span + D + shape.lk - 1]! += g;
      return;
    case 'dense': {
      const hb = grad.bias.length === shape.lq * shape.lk ? 0 : h;
      grad.bias[(hb * shape.lq + i) * shape.lk + l]! += g;
      return;
    }
  }
}

function zeroBiasGrad(bias: PositionBias): PositionBiasGrad {
  switch (bias.kind) {
    case 'none':
      return { kind: 'none' };
    case 'distance':
      return { kind: 'distance', table: new Float64Array(bias.table.length) };
    case 'dense':
      return { kind: 'dense', bias: new Float64Array(bias.bias.length) };
  }
}

/** Shared loop structure: for every (b, h, i), the logits row and the visible key range. */
function forEachRow(
  shape: AttentionShape,
  q: FloatArray,
  k: FloatArray,
  opts: AttentionOptions,
  row: FloatArray,
  visit: (b: number, h: number, kvh: number, i: number) => void,
): void {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d } = shape;
  const bias = opts.bias ?? { kind: 'none' };
  const offset = opts.queryOffset ?? lk - lq;
  const group = H / Hkv;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / group);
      const qBase = (b * H + h) * lq * d;
      const kBase = (b * Hkv + kvh) * lk * d;
      for (let i = 0; i < lq; i++) {
        for (let l = 0; l < lk; l++) {
          const D = i + offset - l;
          if (opts.causal && D < 0) {
            row[l] = -Infinity;
            continue;
          }
          let dot = 0;
          for (let c = 0; c < d; c++) dot += q[qBase + i * d + c]! * k[kBase + l * d + c]!;
          row[l] = opts.scale * dot + biasValue(bias, shape, h, i, l, D);
        }
        visit(b, h, kvh, i);
      }
    }
  }
}

export function referenceAttentionForward(
  shape: AttentionShape,
  q: FloatArray,
  k: FloatArray,
  v: FloatArray,
  opts: AttentionOptions,
): AttentionForward {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, valueDim: dv } = shape;
  const dtype = dtypeOf(q);
  const out = allocate(dtype, B * H * lq * dv);
  const lse = allocate(dtype, B * H * lq);
  // Logits and probabilities live in the working dtype: a Float32Array rounds each one as it is stored.
  const row = allocate(dtype, lk);
  const p = allocate(dtype, lk);
  forEachRow(shape, q, k, opts, row, (b, h, kvh, i) => {
    let max = -Infinity;
    for (let l = 0; l < lk; l++) max = Math.max(max, row[l]!);
    const r = (b * H + h) * lq + i;
    if (max === -Infinity) {
      lse[r] = -Infinity; // no visible key: output stays 0
      return;
    }
    let sum = 0;
    for (let l = 0; l < lk; l++) {
      p[l] = Math.exp(row[l]! - max);
      sum += p[l]!;
    }
    lse[r] = max + Math.log(sum);
    for (let l = 0; l < lk; l++) p[l] = p[l]! / sum;
    const vBase = (b * Hkv + kvh) * lk * dv;
    for (let c = 0; c < dv; c++) {
      let acc = 0;
      for (let l = 0; l < lk; l++) acc += p[l]! * v[vBase + l * dv + c]!;
      out[r * dv + c] = acc;
    }
  });
  return { out, lse };
}

/**
 * Backward from the forward's `out` and `lse`: P = exp(logits - lse), dP = dOut V^T,
 * dS = P (dP - rowsum(dOut * out)), dq = scale dS K, dk = scale dS^T Q, dv = P^T dOut, dBias from dS.
 */
export function referenceAttentionBackward(
  shape: AttentionShape,
  q: FloatArray,
  k: FloatArray,
  v: FloatArray,
  out: FloatArray,
  lse: FloatArray,
  dOut: FloatArray,
  opts: AttentionOptions,
): AttentionGrads {
  const bias = opts.bias ?? { kind: 'none' };
  const { heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  const dtype = dtypeOf(q);
  const dq = allocate(dtype, q.length);
  const dk = allocate(dtype, k.length);
  const dv_ = allocate(dtype, v.length);
  const dBias = zeroBiasGrad(bias);
  const offset = opts.queryOffset ?? lk - lq;
  const span = distanceSpan(lq, lk, offset);
  const row = allocate(dtype, lk);
  const p = allocate(dtype, lk);
  const ds = allocate(dtype, lk);
  forEachRow(shape, q, k, opts, row, (b, h, kvh, i) => {
    const r = (b * H + h) * lq + i;
    if (lse[r] === -Infinity) return;
    const qBase = (b * H + h) * lq * d;
    const kBase = (b * Hkv + kvh) * lk * d;
    const vBase = (b * Hkv + kvh) * lk * dv;
    let delta = 0;
    for (let c = 0; c < dv; c++) delta += dOut[r * dv + c]! * out[r * dv + c]!;
    for (let l = 0; l < lk; l++) {
      p[l] = Math.exp(row[l]! - lse[r]!);
      let dp = 0;
      for (let c = 0; c < dv; c++) dp += dOut[r * dv + c]! * v[vBase + l * dv + c]!;
      ds[l] = p[l]! * (dp - delta);
    }
    for (let l = 0; l < lk; l++) {
      const pl = p[l]!;
      const g = ds[l]!;
      if (pl === 0 && g === 0) continue;
      for (let c = 0; c < dv; c++) dv_[vBase + l * dv + c] = dv_[vBase + l * dv + c]! + pl * dOut[r * dv + c]!;
      for (let c = 0; c < d; c++) {
        dq[qBase + i * d + c] = dq[qBase + i * d + c]! + opts.scale * g * k[kBase + l * d + c]!;
        dk[kBase + l * d + c] = dk[kBase + l * d + c]! + opts.scale * g * q[qBase + i * d + c]!;
      }
      accumulateBiasGrad(dBias, shape, h, i, l, i + offset - l, span, g);
    }
  });
  return { dq, dk, dv: dv_, dBias };
}
