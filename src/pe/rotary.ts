/**
 * Rotation machinery shared by rope and hope. Pairing convention: ADJACENT pairs, as in the RoFormer paper —
 * pair j is head dims (2j, 2j+1), rotated by the angle pos * freqs[j]:
 *   x'_{2j} = x_{2j} cos(a) - x_{2j+1} sin(a),   x'_{2j+1} = x_{2j} sin(a) + x_{2j+1} cos(a).
 * Pairs at or beyond freqs.length (and a frequency of exactly 0) are left unrotated, which is how partial rotary
 * and HoPE's position-independent components are expressed. (GPT-NeoX pairs dim j with j + d/2 instead; the two
 * conventions are the same encoding up to a fixed permutation of head dims, which learned projections absorb.)
 *
 * Queries sit at positions queryOffset + i and keys at l (backend.ts), so q'_i . k'_l = q_i^T R((l - i')theta) k_l
 * depends on positions only through D = i' - l: the dense reference below is written in that relative form, not by
 * rotating, so the test compares two different derivations.
 */
import type { FloatArray } from '../tensor.ts';
import { allocate, dtypeOf } from '../tensor.ts';
import type { AttendContext, AttendInputs, AttendResult, CachedAttention } from './encoding.ts';
import { backendAttention, checkQk, denseLogitGrid } from './attention-plumbing.ts';

/**
 * Rotates pair j (dims 2j, 2j + 1) of row r of every group of x [groups, rows, d] by angle(r, j), for j < pairs;
 * a null angle leaves the pair as it is. Returns a fresh copy. The one rotation loop of 1-D and 2-D RoPE.
 */
export function rotatePairs(
  x: FloatArray,
  groups: number,
  rows: number,
  d: number,
  pairs: number,
  angle: (r: number, j: number) => number | null,
): FloatArray {
  const out = allocate(dtypeOf(x), x.length);
  out.set(x);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < pairs; j++) {
      const a = angle(r, j);
      if (a === null) continue;
      const c = Math.cos(a);
      const s = Math.sin(a);
      for (let g = 0; g < groups; g++) {
        const at = (g * rows + r) * d + 2 * j;
        const x0 = x[at]!;
        const x1 = x[at + 1]!;
        out[at] = x0 * c - x1 * s;
        out[at + 1] = x0 * s + x1 * c;
      }
    }
  }
  return out;
}

/**
 * Rotates every row of x [groups, rows, d]; row r of each group sits at position firstPos + r. sign -1 applies
 * the inverse rotation (the transpose), which is how gradients flow back through the forward rotation.
 */
export function rotateRows(
  x: FloatArray,
  groups: number,
  rows: number,
  d: number,
  firstPos: number,
  freqs: Float64Array,
  sign: 1 | -1,
): FloatArray {
  const pairs = Math.min(freqs.length, Math.floor(d / 2));
  return rotatePairs(x, groups, rows, d, pairs, (r, j) => {
    const f = freqs[j]!;
    return f === 0 ? null : sign * (firstPos + r) * f;
  });
}

/** Attention on rotated q and k through ctx.backend (bias 'none'); the backward rotates dq and dk back. */
export function rotaryAttend(ctx: AttendContext, inputs: AttendInputs, freqs: Float64Array): AttendResult {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d } = ctx.shape;
  checkQk(ctx, inputs.q, inputs.k);
  const qr = rotateRows(inputs.q, B * H, lq, d, ctx.queryOffset, freqs, 1);
  const kr = rotateRows(inputs.k, B * Hkv, lk, d, 0, freqs, 1);
  const run = backendAttention(ctx, qr, kr, inputs.v, { kind: 'none' });
  return {
    out: run.out,
    backward(dOut) {
      const g = run.backward(dOut);
      return {
        dq: rotateRows(g.dq, B * H, lq, d, ctx.queryOffset, freqs, -1),
        dk: rotateRows(g.dk, B * Hkv, lk, d, 0, freqs, -1),
        dv: g.dv,
      };
    },
  };
}

/**
 * KV cache for rotary encodings: keys are stored rotated at their absolute positions (a key's rotation never
 * changes), so each decoding step rotates only its new queries and keys.
 */
export function rotaryCachedAttention(headDim: number, freqs: Float64Array): CachedAttention {
  return {
    keyWidth: headDim,
    // k [B, Hkv, n, d]: B * Hkv groups of n rows.
    cacheKeys: (k, _batch, n, first) => rotateRows(k, k.length / (n * headDim), n, headDim, first, freqs, 1),
    attend(ctx, q, cachedK, v) {
      const { batch: B, heads: H, lq, headDim: d } = ctx.shape;
      const qr = rotateRows(q, B * H, lq, d, ctx.queryOffset, freqs, 1);
      return backendAttention(ctx, qr, cachedK, v, { kind: 'none' }).out;
    },
  };
}

/**
 * Dense fp64 logits in relative form: per rotated pair, (q0 k0 + q1 k1) cos(D f) + (q0 k1 - q1 k0) sin(D f);
 * every other dim contributes its plain product q_c k_c.
 */
export function rotaryDenseLogits(
  ctx: AttendContext,
  inputs: AttendInputs,
  scale: number,
  freqs: Float64Array,
): Float64Array {
  const { q, k } = inputs;
  checkQk(ctx, q, k);
  const { heads: H, kvHeads: Hkv, lq, lk, headDim: d } = ctx.shape;
  const pairs = Math.min(freqs.length, Math.floor(d / 2));
  return denseLogitGrid(ctx, (b, h, kvh, i, l, D) => {
    const qb = ((b * H + h) * lq + i) * d;
    const kb = ((b * Hkv + kvh) * lk + l) * d;
    let s = 0;
    for (let j = 0; j < pairs; j++) {
      const q0 = q[qb + 2 * j]!;
      const q1 = q[qb + 2 * j + 1]!;
      const k0 = k[kb + 2 * j]!;
      const k1 = k[kb + 2 * j + 1]!;
      const phi = D * freqs[j]!;
      s += (q0 * k0 + q1 * k1) * Math.cos(phi) + (q0 * k1 - q1 * k0) * Math.sin(phi);
    }
    for (let c = 2 * pairs; c < d; c++) s += q[qb + c]! * k[kb + c]!;
    return scale * s;
  });
}
