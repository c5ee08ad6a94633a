/**
 * THE seam between models and kernels. Everything that does heavy arithmetic goes through a Backend; the
 * TypeScript reference (plain loops, fp64-capable, the test oracle) and the native addon implement the same
 * interface and must agree.
 *
 * Attention layout (row-major, contiguous):
 *   q   [B, H,   Lq, D]      k [B, Hkv, Lk, D]      v [B, Hkv, Lk, Dv]
 *   out [B, H,   Lq, Dv]     lse [B, H, Lq]  (natural-log sum of exp of the scaled, biased, masked logits)
 * Grouped-query attention: H % Hkv == 0 and query head h reads kv head floor(h / (H / Hkv)).
 *
 * Positions: query row i sits at absolute position i + queryOffset, key row l at position l. The default
 * queryOffset is Lk - Lq (queries are the last Lq positions, as when decoding with a cache). The signed distance
 * of a key behind a query is D = (i + queryOffset) - l (D >= 0 for past keys). Causal: key l is visible to
 * query i iff D >= 0. A query row that sees no key at all gets out = 0 and lse = -Infinity.
 *
 * logits[i, l] = scale * (q_i . k_l) + bias(h, D)   -- the scale is always explicit (HyPE needs 1/sqrt(d), not
 * 1/sqrt(d + 2)); there is no default.
 */
import type { FloatArray } from '../tensor.ts';
import type { LayerOps } from './layers.ts';

/** Position terms evaluated inside the attention tile loop; never stored as an L x L tensor (except 'dense'). */
export type PositionBias =
  | { kind: 'none' }
  /** ALiBi: bias = -slopes[h] * |D|. slopes has length H (query heads). */
  | { kind: 'alibi'; slopes: Float64Array }
  /**
   * HyPE computed directly: bias = sum_k tau[h*pairs+k] * sinh(mu[h*pairs+k] * D)  (= -tau sinh(mu (l - i)),
   * SPEC section 1). tau and mu have length H * pairs.
   */
  | { kind: 'hype'; tau: Float64Array; mu: Float64Array; pairs: number }
  /**
   * Table lookup by relative distance (T5 buckets and the like): bias = values[h * buckets + bucketOf[D + Lk - 1]].
   * bucketOf has length queryOffset + Lq + Lk - 1 (covering every D from -(Lk-1) to queryOffset + Lq - 1);
   * values has length H * buckets.
   */
  | { kind: 'table'; values: Float64Array; buckets: number; bucketOf: Int32Array }
  /** A stored bias [heads, Lq, Lk] with heads = 1 (broadcast) or H. Reference backend only: the test oracle. */
  | { kind: 'dense'; bias: FloatArray; heads: number };

export type PositionBiasKind = PositionBias['kind'];

/** Gradients of the bias parameters, same layout as the parameters themselves. */
export type PositionBiasGrad =
  | { kind: 'none' }
  | { kind: 'alibi'; slopes: Float64Array }
  | { kind: 'hype'; tau: Float64Array; mu: Float64Array }
  | { kind: 'table'; values: Float64Array }
  | { kind: 'dense'; bias: Float64Array };

export interface AttentionShape {
  batch: number;
  heads: number;
  kvHeads: number;
  lq: number;
  lk: number;
  headDim: number;
  valueDim: number;
}

export interface AttentionOptions {
  causal: boolean;
  /** Softmax scale applied to q.k before the bias. Required: pass 1/sqrt(d) of the ORIGINAL head dim for HyPE. */
  scale: number;
  bias?: PositionBias;
  /** Absolute position of query row 0; default lk - lq. */
  queryOffset?: number;
}

export interface AttentionForward {
  out: FloatArray;
  lse: FloatArray;
}

export interface AttentionGrads {
  dq: FloatArray;
  dk: FloatArray;
  dv: FloatArray;
  dBias: PositionBiasGrad;
}

/**
 * A backend may also provide any of the non-attention layer operations (layer norm, GELU, cross-entropy, AdamW,
 * embedding, bias); models call `layerOpsOf(backend)` (layers.ts), which falls back to the references there.
 */
export interface Backend extends Partial<LayerOps> {
  readonly name: string;
  /**
   * C = alpha * op(A) op(B) + beta * C, row-major; op(A) is m x k, op(B) is k x n, C is m x n with leading
   * dimensions lda, ldb, ldc (the row strides of A, B, C as stored).
   */
  gemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: FloatArray,
    lda: number,
    b: FloatArray,
    ldb: number,
    beta: number,
    c: FloatArray,
    ldc: number,
  ): void;

  attentionForward(
    shape: AttentionShape,
    q: FloatArray,
    k: FloatArray,
    v: FloatArray,
    opts: AttentionOptions,
  ): AttentionForward;

  /** dq, dk, dv and the bias-parameter gradients, recomputing probabilities from q, k and lse. */
  attentionBackward(
    shape: AttentionShape,
    q: FloatArray,
    k: FloatArray,
    v: FloatArray,
    out: FloatArray,
    lse: FloatArray,
    dOut: FloatArray,
    opts: AttentionOptions,
  ): AttentionGrads;
}
