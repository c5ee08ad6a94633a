/**
 * Plumbing shared by encodings whose attention is one backend call (plain, score-bias or rotated q/k): the
 * softmax scale they use, the call itself with its backward, and a loop over every logit for dense references.
 */
import type { AttentionOptions, AttentionShape, PositionBias, PositionBiasGrad } from '../backend/backend.ts';
import { check } from '../errors.ts';
import type { FloatArray } from '../tensor.ts';
import type { AttendContext, AttendInputs, AttendResult } from './encoding.ts';

/**
 * The softmax scale every encoding here uses: 1/sqrt(d) of the head dim the caller passes. AttendContext carries
 * no scale, so attend() and the dense reference must agree on this one definition.
 */
export function attentionScale(shape: AttentionShape): number {
  return 1 / Math.sqrt(shape.headDim);
}

export interface BackendAttention<T = FloatArray> {
  out: T;
  backward(dOut: T): { dq: T; dk: T; dv: T; dBias: PositionBiasGrad<T> };
  /** Releases out and lse (a device's memory; nothing on host backends). */
  dispose(): void;
}

/** One forward through ctx.backend with `bias`, keeping what the backward needs (any backend's handles). */
export function backendAttention<T, I>(
  ctx: AttendContext<T, I>,
  q: T,
  k: T,
  v: T,
  bias: PositionBias<T>,
  biasGrad = true,
): BackendAttention<T> {
  const opts: AttentionOptions<T> = {
    causal: ctx.causal,
    scale: attentionScale(ctx.shape),
    bias,
    queryOffset: ctx.queryOffset,
    ...(biasGrad ? {} : { biasGrad: false }),
  };
  const { out, lse } = ctx.backend.attentionForward(ctx.shape, q, k, v, opts);
  return {
    out,
    backward: (dOut) => ctx.backend.attentionBackward(ctx.shape, q, k, v, out, lse, dOut, opts),
    dispose() {
      ctx.backend.release(out);
      ctx.backend.release(lse);
    },
  };
}

/** Adds `src` into `dst` element by element (parameter gradients accumulate across calls). */
export function accumulateInto(dst: FloatArray, src: ArrayLike<number>): void {
  check(dst.length === src.length, 'shape', `gradient of length ${src.length} cannot accumulate into ${dst.length}`);
  for (let i = 0; i < dst.length; i++) dst[i] = dst[i]! + src[i]!;
}

/**
 * Builds the dense [B, H, Lq, Lk] fp64 logits by asking `logit` for every visible entry; masked entries (causal,
 * D < 0) are -Infinity. `logit` receives the query head h, its kv head, the rows i and l, and D = i + offset - l.
 */
export function denseLogitGrid(
  ctx: AttendContext,
  logit: (b: number, h: number, kvh: number, i: number, l: number, D: number) => number,
): Float64Array {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk } = ctx.shape;
  check(Hkv >= 1 && H % Hkv === 0, 'shape', `heads (${H}) must be a multiple of kvHeads (${Hkv})`);
  const group = H / Hkv;
  const out = new Float64Array(B * H * lq * lk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / group);
      for (let i = 0; i < lq; i++) {
        for (let l = 0; l < lk; l++) {
          const D = i + ctx.queryOffset - l;
          out[((b * H + h) * lq + i) * lk + l] = ctx.causal && D < 0 ? -Infinity : logit(b, h, kvh, i, l, D);
        }
      }
    }
  }
  return out;
}

/** Checks q and k against the context's shape before a dense reference reads them. */
export function checkQk(ctx: AttendContext, q: FloatArray, k: FloatArray): void {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d } = ctx.shape;
  check(q.length === B * H * lq * d, 'shape', `q has ${q.length} elements, expected B*H*Lq*D = ${B * H * lq * d}`);
  check(
    k.length === B * Hkv * lk * d,
    'shape',
    `k has ${k.length} elements, expected B*Hkv*Lk*D = ${B * Hkv * lk * d}`,
  );
}

/** scale * (q_i . k_l) for query head h of batch b and its kv head, straight from the [B, H, L, D] layouts. */
export function scaledDot(
  ctx: AttendContext,
  q: FloatArray,
  k: FloatArray,
  scale: number,
  b: number,
  h: number,
  kvh: number,
  i: number,
  l: number,
): number {
  const { heads: H, kvHeads: Hkv, lq, lk, headDim: d } = ctx.shape;
  const qBase = ((b * H + h) * lq + i) * d;
  const kBase = ((b * Hkv + kvh) * lk + l) * d;
  let dot = 0;
  for (let c = 0; c < d; c++) dot += q[qBase + c]! * k[kBase + c]!;
  return scale * dot;
}

/** A backend attention as an encoding's result, dropping the bias gradient (fixed or absent position terms). */
export function fixedTermResult<T>(run: BackendAttention<T>): AttendResult<T> {
  return {
    out: run.out,
    backward(dOut) {
      const { dq, dk, dv } = run.backward(dOut);
      return { dq, dk, dv };
    },
    dispose: run.dispose,
  };
}

/** Attention with no position term (NoPE, and absolute encodings whose signal already sits in q and k). */
export function plainAttend<T, I>(ctx: AttendContext<T, I>, inputs: AttendInputs<T>): AttendResult<T> {
  return fixedTermResult(backendAttention(ctx, inputs.q, inputs.k, inputs.v, { kind: 'none' }));
}

/** The dense reference of plainAttend: scale * q.k with the causal mask, nothing else. */
export function plainDenseLogits(ctx: AttendContext, inputs: AttendInputs, scale: number): Float64Array {
  const { q, k } = inputs;
  checkQk(ctx, q, k);
  return denseLogitGrid(ctx, (b, h, kvh, i, l) => scaledDot(ctx, q, k, scale, b, h, kvh, i, l));
}
