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
 * logits[i, l] = scale * (q_i . k_l) + bias(h, i, l)   -- the scale is always explicit (HyPE needs 1/sqrt(d), not
 * 1/sqrt(d + 2)); there is no default.
 *
 * A backend owns its tensors (HANDLES.md in the repository's notes is the contract in prose): every member takes
 * handles of the backend's tensor type T (and I for token ids), allocated through it. Host backends (reference,
 * native) have T = FloatArray, I = Int32Array: the handle IS the typed array, with no copy. A device backend
 * (WebGPU) holds device buffers; data crosses only through upload/uploadInt (host -> backend) and read
 * (backend -> host, asynchronous), so a whole training step runs with one read: the statistics (loss, gradient
 * norm) it reports.
 */
import type { DType, FloatArray } from '../tensor.ts';
import type { LayerOps, TensorOps } from './layers.ts';

/**
 * Position terms reach attention as data: a per-head table over the signed distance D (no kernel knows an
 * encoding). With span = queryOffset + Lq + Lk - 1 (the distances -(Lk - 1) .. queryOffset + Lq - 1):
 *   table [H, span] (H = query heads), row-major;   bias(h, i, l) = table[h * span + (D + Lk - 1)].
 * Encodings build their tables in fp64 (the fp32 kernels round each value once) and own the chain rule from
 * dTable to their parameters. Only distances some visible pair can have are read; without a causal mask the table
 * must cover every distance, so queryOffset must be >= 0 there.
 */
export type PositionBias<T = FloatArray> =
  | { kind: 'none' }
  /**
   * Host backends take a host array (fp64 or fp32) straight from the encoding. A device backend takes a handle:
   * the encoding uploads its fp64 table once per geometry (Backend.upload rounds it to the handle's dtype) and,
   * when its parameters are fixed, caches the handle for later calls of that geometry (distance-table.ts).
   */
  | { kind: 'distance'; table: T }
  /** A stored bias [heads, Lq, Lk] with heads = 1 (broadcast) or H. Reference backend only: the test oracle. */
  | { kind: 'dense'; bias: T; heads: number };

export type PositionBiasKind = PositionBias['kind'];

/**
 * The gradient of the position term: for 'distance', dTable [H, span] in the table's layout, where
 * dTable[h, D + Lk - 1] = sum of dLogit[h, i, l] over the visible pairs at distance D (summed in fp64).
 */
export type PositionBiasGrad<T = FloatArray> =
  | { kind: 'none' }
  /** Host backends: a Float64Array (sums in fp64). A device backend: a handle in its widest float. */
  | { kind: 'distance'; table: GradTable<T> }
  | { kind: 'dense'; bias: GradTable<T> };

/** The handle type of a bias gradient: Float64Array on host backends, the backend's handle otherwise. */
export type GradTable<T> = T extends FloatArray ? Float64Array : T;

/** Number of signed distances a distance table covers (its row length): queryOffset + Lq + Lk - 1, at least 0. */
export function distanceSpan(lq: number, lk: number, queryOffset: number = lk - lq): number {
  return Math.max(0, queryOffset + lq + lk - 1);
}

export interface AttentionShape {
  batch: number;
  heads: number;
  kvHeads: number;
  lq: number;
  lk: number;
  headDim: number;
  valueDim: number;
}

export interface AttentionOptions<T = FloatArray> {
  causal: boolean;
  /** Softmax scale applied to q.k before the bias. Required: pass 1/sqrt(d) of the ORIGINAL head dim for HyPE. */
  scale: number;
  bias?: PositionBias<T>;
  /** Absolute position of query row 0; default lk - lq. */
  queryOffset?: number;
  /**
   * Whether the backward must return the bias gradient (default true). An encoding with fixed position terms
   * passes false, and the backend may skip the dTable sums (then dBias is { kind: 'none' }).
   */
  biasGrad?: boolean;
  /**
   * Mixed precision (autocast.ts): 'bf16' rounds q, k, v (and dOut in the backward) to bf16 and computes as the
   * bf16 kernels do (bf16.ts: fp32 accumulation and softmax statistics, probabilities and dS rounded to bf16);
   * tensors stay fp32 handles and results are fp32. Default 'fp32'. A backend without bf16 kernels refuses 'bf16'.
   */
  operands?: Precision;
}

/** The operand precision of matmuls and attention: 'fp32', or 'bf16' operands with fp32 accumulation. */
export type Precision = 'fp32' | 'bf16';

/** Fresh handles owned by the caller (release() them on a device when done; host backends need nothing). */
export interface AttentionForward<T = FloatArray> {
  out: T;
  lse: T;
}

export interface AttentionGrads<T = FloatArray> {
  dq: T;
  dk: T;
  dv: T;
  dBias: PositionBiasGrad<T>;
}

// Attention over explicit scores (Backend.scoreAttention; the engine is score-attention.ts).

/**
 * What an encoding adds to the plain content attention, called once per (batch b, query head h, kv head kh).
 * Row-major views of one (b, h): S, P, dLogits are [Lq, Lk]; dq, out, dOut are [Lq, D or Dv]; dk is [Lk, D] of kv
 * head kh (shared by the heads of its group: add into it). Only the visible entries of S/dLogits are ever read.
 */
export interface ExplicitHooks {
  /** S holds scale * q_i . k_l (unless ownScores); turn it into this encoding's logits (visible entries only). */
  logits(b: number, h: number, kh: number, s: FloatArray): void;
  /** The encoding writes every visible logit itself: skip the q.k products (PaTH's walk). */
  ownScores?: boolean;
  /** out_i += the encoding's value-side term, given the probabilities P (Shaw's relative values). */
  valueTerm?(b: number, h: number, p: FloatArray, out: FloatArray): void;
  /** dP += the encoding's own per-pair term of dLoss/dP (the value-side term's), given P and dOut. */
  extraDProbs?(b: number, h: number, p: FloatArray, dOut: FloatArray, dP: FloatArray): void;
  /**
   * Given dLogits (masked entries 0), accumulate the encoding's parameter gradients and its own terms of dq and
   * dk, and leave in dLogits the gradient G of the plain scores q_i . k_l up to the returned factor alpha: the
   * caller then adds dq += alpha G K and dk += alpha G^T Q (nothing when alpha is 0).
   */
  backward(b: number, h: number, kh: number, dLogits: FloatArray, dq: FloatArray, dk: FloatArray): number;
}

export interface ExplicitAttention<T = FloatArray> {
  /** [B, H, Lq, Dv] in the dtype of v. */
  out: T;
  backward(dOut: T): { dq: T; dk: T; dv: T };
}

/** The mask, positions and scale of one Backend.scoreAttention call. */
export interface ScoreAttentionOptions {
  causal: boolean;
  /** Absolute position of query row 0 (keys start at position 0). */
  queryOffset: number;
  /** Multiplies q_i . k_l in the content scores S the logits hook receives. */
  scale: number;
  /**
   * Reusable O(Lq Lk) buffers of the caller (one pool per encoding instance): the probabilities are leased from
   * it, and a backward whose lease a later call took over is refused. Without one, they are allocated per call.
   */
  scratch?: ScratchBuffers;
}

/** A buffer handed out by ScratchBuffers; valid() until the pool hands the same buffer out again. */
export interface Lease {
  array: FloatArray;
  valid(): boolean;
}

/** Reusable work buffers of one caller, by name and dtype (score-attention.ts ScratchPool). */
export interface ScratchBuffers {
  take(name: string, dtype: DType, n: number): Lease;
}

/** Where a backend's tensors live: 'host' means T = FloatArray and I = Int32Array (the handle is the array). */
export type Residence = 'host' | 'device';

// ---- The Householder walk (Backend.householderWalk): one member, kept in its own block -------------------------

/**
 * What Backend.householderWalk keeps for its backward. backward adds (never overwrites) dLoss/dq into dq, dLoss/dk
 * into dk (both the dtype of q and k), and dLoss/dw, dLoss/dbeta into dw, dbeta (laid out like w, beta), given
 * dLogits [B, H, Lq, Lk] in the dtype of q (only the visible entries, key position <= query position, are read).
 */
export interface HouseholderWalk {
  backward(dLogits: FloatArray, dq: FloatArray, dk: FloatArray, dw: Float64Array, dbeta: Float64Array): void;
}

/**
 * Every member is required: memory, gemm, fused attention forward and backward, attention over explicit scores, and
 * every layer and tensor operation of LayerOps and TensorOps (layers.ts declares each op's signature once; the
 * reference implements them there, the native backend in native/). Models, decoders, trainers and encodings call
 * the backend they were given, never a fallback. All members are synchronous (they enqueue work on a device) except
 * read, the one way data leaves a backend.
 */
export interface Backend<T = FloatArray, I = Int32Array> extends LayerOps<T, I>, TensorOps<T> {
  readonly name: string;
  /** 'host': handles are typed arrays (T = FloatArray, I = Int32Array); 'device': opaque handles. */
  readonly residence: Residence;

  // Memory. Handles are valid until release(); a released handle must not be used again.
  /** A zeroed float tensor of n values. A backend without fp64 storage refuses 'float64' with a HypeError. */
  allocate(dtype: DType, n: number, what?: string): T;
  /** A zeroed int32 tensor of n values (token ids, targets). */
  allocateInt(n: number, what?: string): I;
  /**
   * A zeroed tensor of n statistics (the mean loss, the gradient norm, counts): fp64 on host backends, so a
   * statistic carries what a JS double would; a device's widest float otherwise.
   */
  allocateStats(n: number): T;
  /** host -> backend: dst[offset .. offset + src.length) = src, each value rounded to dst's dtype. */
  upload(src: ArrayLike<number>, dst: T, offset?: number): void;
  /** host -> backend for int tensors: dst[0 .. src.length) = src. */
  uploadInt(src: Int32Array, dst: I): void;
  /**
   * backend -> host, ASYNCHRONOUS: a fresh host array (the handle's dtype; fp64 for statistics) holding
   * src[offset .. offset + n) once every operation enqueued before this call has finished. Default: all of src.
   */
  read(src: T, offset?: number, n?: number): Promise<FloatArray>;
  /** The handle's storage itself on a host backend (no copy: writes go through), null on a device backend. */
  hostView(t: T): FloatArray | null;
  /** The number of values a handle holds. */
  sizeOf(t: T): number;
  /** The dtype a handle was allocated with. */
  dtypeOf(t: T): DType;
  /** Frees a handle's storage now (host backends: nothing; the garbage collector does it). */
  release(t: T | I): void;

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
    a: T,
    lda: number,
    b: T,
    ldb: number,
    beta: number,
    c: T,
    ldc: number,
  ): void;

  /**
   * gemm with A and B rounded to bf16 (round to nearest even) and the products accumulated in fp32 (bf16.ts): the
   * matmul of mixed-precision training. A, B and C are fp32 handles. A backend without bf16 kernels refuses it.
   */
  gemmBf16(...a: Parameters<Backend<T, I>['gemm']>): void;
  attentionForward(shape: AttentionShape, q: T, k: T, v: T, opts: AttentionOptions<T>): AttentionForward<T>;

  /** dq, dk, dv and the bias-parameter gradients, recomputing probabilities from q, k and lse. */
  attentionBackward(
    shape: AttentionShape,
    q: T,
    k: T,
    v: T,
    out: T,
    lse: T,
    dOut: T,
    opts: AttentionOptions<T>,
  ): AttentionGrads<T>;

  /**
   * Attention over explicit scores, for encodings that must form their logits (score-attention.ts): this backend
   * computes S = scale q.k, the encoding's hooks turn S into its logits (and may add a value-side term), and the
   * backend owns the mask, grouped-query heads, softmax, P V and the backward, handing dLogits to the encoding's
   * chain rule. Work is fp32 when q, k and v all are, else fp64 (on every backend). The hooks work on host arrays:
   * a device backend refuses this member with a HypeError until the seam admits relative terms as kernel inputs
   * (the encodings that need it are host-only, and the model refuses them on a device first: HANDLES.md).
   */
  scoreAttention(
    shape: AttentionShape,
    q: T,
    k: T,
    v: T,
    opts: ScoreAttentionOptions,
    hooks: ExplicitHooks,
  ): ExplicitAttention<T>;

  // ---- The Householder walk --------------------------------------------------------------------------------
  /**
   * Causal logits through accumulated Householder-like factors H_t = I - beta_t w_t w_t^T (one per kv head and
   * position): for query row i at position p = i + queryOffset and key l <= p,
   *   logits[b, h, i, l] = scale * q_i^T H_p H_{p-1} ... H_{l+1} k_l        (kv head kh of h, as in GQA)
   * written into logits [B, H, Lq, Lk] at the visible entries only (the rest are left as they were). q [B, H, Lq,
   * D], k [B, Hkv, Lk, D] and logits share one dtype (fp32 or fp64); w [B, Hkv, Lk, D] and beta [B, Hkv, Lk] are
   * fp64. Needs 0 <= queryOffset and queryOffset + Lq <= Lk (H_p needs a factor at the query's own position).
   * The returned object keeps what the backward needs (O(B H Lq D + B Hkv Lk D) memory, not O(Lq Lk)).
   * Host arrays (PaTH, the one caller, is a host-only encoding): a device backend refuses this member with a
   * HypeError, as it does scoreAttention.
   */
  householderWalk(
    shape: AttentionShape,
    queryOffset: number,
    scale: number,
    q: FloatArray,
    k: FloatArray,
    w: Float64Array,
    beta: Float64Array,
    logits: FloatArray,
  ): HouseholderWalk;
}
