/**
 * A minimal embedding -> attention pipeline for absolute encodings: token activations x [B, L, C] get the
 * encoding's position signal, then each head reads its own C/H slice as both query and key (identity
 * projections), so position effects on the logits are visible without a model.
 */
import type { AttentionShape } from '../../src/backend/backend.ts';
import type { PositionalEncoding } from '../../src/pe/encoding.ts';
import { ReferenceBackend } from '../../src/backend/reference.ts';

/** The fp64-capable reference backend the encodings run on here. */
const REFERENCE = new ReferenceBackend();

/** x [B, L, C] -> [B, H, L, C/H]. */
export function splitHeads(x: Float64Array, B: number, L: number, H: number, d: number): Float64Array {
  const out = new Float64Array(B * H * L * d);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < L; t++)
      for (let h = 0; h < H; h++)
        for (let c = 0; c < d; c++) out[((b * H + h) * L + t) * d + c] = x[(b * L + t) * H * d + h * d + c]!;
  return out;
}

/** The adjoint of splitHeads: [B, H, L, d] -> [B, L, C], accumulated into dx. */
export function mergeHeadsInto(
  g: ArrayLike<number>,
  dx: Float64Array,
  B: number,
  L: number,
  H: number,
  d: number,
): void {
  for (let b = 0; b < B; b++)
    for (let t = 0; t < L; t++)
      for (let h = 0; h < H; h++)
        for (let c = 0; c < d; c++) dx[(b * L + t) * H * d + h * d + c]! += g[((b * H + h) * L + t) * d + c]!;
}

/** Logits of the pipeline for tokens x at positions offset .. offset + L - 1 (all heads read their own slice). */
export function pipelineLogits(
  enc: PositionalEncoding,
  x: Float64Array,
  shape: AttentionShape,
  offset: number,
): Float64Array {
  const { batch: B, heads: H, lq: L, headDim: d } = shape;
  const xe = Float64Array.from(x);
  enc.embed!(xe, B, L, H * d, offset);
  const qk = splitHeads(xe, B, L, H, d);
  const ctx = { backend: REFERENCE, shape, causal: true, queryOffset: 0 };
  return enc.denseLogits(ctx, { q: qk, k: qk, v: new Float64Array(0) }, 1 / Math.sqrt(d));
}
