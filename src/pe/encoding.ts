/**
 * The one interface every positional encoding implements, so the model, the CLI and the study treat all twelve
 * alike. An encoding may act at several sites; the model asks `sites` and calls the matching hooks.
 *
 * Layouts follow backend.ts: q [B, H, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv]; token activations
 * x [B, L, C] (C = model width). Positions follow backend.ts too (query row i is at i + queryOffset).
 *
 * Tensors are the backend's handles (T; FloatArray on host backends, where every encoding runs). An encoding that
 * sets `portable` runs on a device backend too: its attend touches tensors only through backend ops, and host data
 * (distance tables, fixed columns) reaches the device by Backend.upload, once per geometry when fixed. The model
 * refuses an encoding without `portable` on a device backend with one clear error (model/transformer.ts).
 */
import type { AttentionShape, Backend } from '../backend/backend.ts';
import type { DType, FloatArray } from '../tensor.ts';
import type { Rng } from '../util/rng.ts';

export type EncodingSite =
  | 'embedding' // adds a position signal to the token embeddings (sinusoidal, learned)
  | 'qk-transform' // transforms q and k before the dot product (rope, hope)
  | 'score-bias' // adds a bias to the logits (alibi, t5, hype, xl, shaw, da's relative part)
  | 'score-rescale' // rescales the logits (da)
  | 'data-dependent' // depends on token content, not only positions (path)
  | 'none';

/** A trainable tensor owned by an encoding. `grad` is accumulated (+=) by backward calls; the trainer zeroes it. */
export interface Param<T = FloatArray> {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: T;
  readonly grad: T;
  /** Whether AdamW applies weight decay (off by default for position parameters). */
  readonly decay: boolean;
}

/** Everything an attention call needs besides the tensors. */
export interface AttendContext<T = FloatArray, I = Int32Array> {
  backend: Backend<T, I>;
  shape: AttentionShape;
  causal: boolean;
  /** Absolute position of query row 0 (see backend.ts); keys start at position 0. */
  queryOffset: number;
  /**
   * The token grid [rows, cols] of image patches (row-major: token n sits at row floor(n / cols), column n % cols),
   * for the 2-D encodings of src/pe/vision/; sequences leave it out and 1-D encodings ignore it.
   */
  grid?: readonly number[];
}

export interface AttendInputs<T = FloatArray> {
  q: T;
  k: T;
  v: T;
  /** The block's (normed) input activations [B, Lk, C], for data-dependent encodings (PaTH); others ignore it. */
  x?: T;
  /**
   * Present when q, k and v come in the widened layout the encoding asked for (PositionalEncoding.operandWidths):
   * head rows of `qk` (q, k) and `v` values, of which the caller wrote the first headDim (valueDim).
   */
  widths?: OperandWidths;
}

/**
 * Row widths of attention operands in head layout, wider than the head dims: q [B, H, Lq, qk], k [B, Hkv, Lk, qk],
 * v [B, Hkv, Lk, v] (PositionalEncoding.operandWidths).
 */
export interface OperandWidths {
  qk: number;
  v: number;
}

/** A finished forward pass, holding what its backward needs. */
export interface AttendResult<T = FloatArray> {
  /**
   * [B, H, Lq, Dv] (rows of AttendInputs.widths.v with widened inputs), a handle the caller may read until the next
   * attend of this encoding instance.
   */
  out: T;
  /**
   * Accumulates parameter gradients into `params[*].grad` and returns input gradients (dx only if x was used), as
   * fresh handles (the caller adds dx into its own gradient); dOut, dq, dk and dv in the widened layout when the
   * inputs came in it.
   */
  backward(dOut: T): { dq: T; dk: T; dv: T; dx?: T };
  /** Frees what the forward kept for its backward (a device's handles); the model calls it when it drops a result. */
  dispose?(): void;
}

export interface PositionalEncoding<T = FloatArray, I = Int32Array> {
  readonly name: string;
  readonly sites: readonly EncodingSite[];
  readonly params: readonly Param<T>[];
  /** Longest absolute position + 1 the encoding can represent (absolute encodings), or Infinity. */
  readonly maxLength: number;
  /**
   * True when attend (and embed) run on any backend's handles through backend ops alone: none, ALiBi and HyPE with
   * fixed parameters in fp32 (kernel and concat routes). Absent: host backends only.
   */
  readonly portable?: boolean;

  /**
   * 'embedding' site: x [B, L, C] += position signal for positions offset .. offset + L - 1 (on a patch grid, the
   * grid's cells in row-major order; 2-D encodings need `grid`, as AttendContext.grid).
   */
  embed?(x: T, batch: number, length: number, width: number, offset: number, grid?: readonly number[]): void;
  /** Accumulates the gradient of the embedding-site parameters from dx (dx itself passes through unchanged). */
  embedBackward?(dx: T, batch: number, length: number, width: number, offset: number, grid?: readonly number[]): void;

  /**
   * Optional "widened operands" request, for encodings that append columns to q and k (concat routes): the row
   * widths it wants q, k and v in for a model of `dtype` (null: plain rows). A caller that honours it (the
   * transformer) allocates its head-layout buffers with these row widths, writes only the first headDim (valueDim)
   * columns of each row, keeps the buffers from call to call and passes AttendInputs.widths. The other columns
   * belong to the encoding: it writes them itself, fixed ones once per buffer and geometry, so no call copies q or
   * k. attend's `out` and backward's dq, dk, dv then come in the same widened layout (the caller reads their first
   * columns), and backward's dOut too (its extra columns zero, as a zeroed buffer the caller never writes them in).
   */
  operandWidths?(dtype: DType): OperandWidths | null;

  /** Attention with this encoding's position terms (kernels via ctx.backend where the bias menu allows). */
  attend(ctx: AttendContext<T, I>, inputs: AttendInputs<T>): AttendResult<T>;

  /**
   * The dense fp64 reference for tests: the full logits [B, H, Lq, Lk] this encoding produces for q and k
   * (scale and position terms included, masked entries = -Infinity). Written for clarity, O(L^2).
   */
  denseLogits(ctx: AttendContext, inputs: AttendInputs, scale: number): Float64Array;

  /**
   * Optional KV-cache hook (forward only, for generation): keys kept in the cache already transformed, e.g. RoPE's
   * rotated keys or HyPE's augmented columns, for a generation that will reach `plan.maxPositions` positions.
   * Return null (or omit the hook) to have the cache store raw k and v and call attend() with queryOffset = cache
   * length, which is exact for every encoding whose position terms come from queryOffset (src/model/kv-cache.ts).
   */
  cachedAttention?(plan: CachePlan<T, I>): CachedAttention<T, I> | null;

  /**
   * Optional: the trained position parameters worth recording with a study cell, in readable units (e.g. ALiBi's
   * slopes, HyPE's slope and curvature), as named lists, and for large or content-dependent parts a summary (e.g.
   * a gate's weight norms and the spread of its values over the forward passes since the previous report, which
   * this call resets). Encodings without trained position parameters omit it.
   */
  report?(): Record<string, number[]>;

  /**
   * Optional ONNX emission of this encoding's attention (src/interop/onnx-export.ts): the exporter hands over the
   * block's q, k, v values and a builder, and the hook returns the attention output. Export refuses an encoding
   * without it (its position terms have no graph form there).
   */
  toOnnx?(b: OnnxAttentionBuilder): OnnxAttention;
}

/**
 * What the ONNX exporter offers an encoding's toOnnx hook: graph values by name ([batch, length, heads * D], k and
 * v already repeated to every query head), graph-building primitives for position terms described as data, and a
 * few plain nodes (op, constants) to assemble content-dependent concat columns. Column values are float32 whatever
 * the graph's precision; the primitives cast them.
 */
export interface OnnxAttentionBuilder {
  readonly heads: number;
  readonly headDim: number;
  readonly precision: 'fp32' | 'fp16';
  readonly q: string;
  readonly k: string;
  readonly v: string;
  /** The block's normed input [batch, length, modelDim] (graph precision), the x q, k, v were projected from. */
  readonly x: string;
  /**
   * float32 [batch, length, rows]: fn(weight[r] . x_i + bias[r]) for each row r of weight [rows, modelDim] (weights
   * rounded to float32 once); cumulative sums it over positions 0 .. i (a CumSum node).
   */
  gate(p: {
    weight: ArrayLike<number>;
    bias: ArrayLike<number>;
    rows: number;
    fn: 'logSigmoid' | 'softplus';
    cumulative?: boolean;
  }): string;
  /** float32 [1, length, 1, 1]: positions 0 .. length - 1 minus the centre (length - 1) / 2. */
  positions(): string;
  /** One default-domain node (Concat, Mul, Gather, Unsqueeze, ...) for assembling columns; returns its output. */
  op(type: string, inputs: readonly string[], attrs?: Record<string, number | number[]>): string;
  constFloat(data: ArrayLike<number>, dims: readonly number[]): string;
  constInt64(data: readonly number[], dims?: readonly number[]): string;
  /**
   * Causal attention with the bias sum_j query[b, i, h, j] key[b, l, h, j] carried as r appended Q/K columns per head
   * (SPEC section 9) on unmodified MultiHeadAttention at scale 1/sqrt(headDim): query, key float32
   * [batch or 1, length, heads, r], in logit units. Padding and fp16 split columns follow the exporter's options.
   */
  columnAttention(query: string, key: string, r: number, multiple: number): OnnxAttention;
  /** Causal MultiHeadAttention at scale 1/sqrt(headDim), plus -slopes[h] |i - l| when slopes are given. */
  attention(q: string, k: string, v: string, opts?: { linearSlopes?: Float64Array }): string;
  /** Rotates pairs of x's head columns by position * freqs (the rotary transform). */
  rotate(x: string, freqs: Float64Array): string;
  /**
   * Attention with the bias sum_t tau[h, t] sinh(mu[h, t] D) carried as augmented q/k columns (SPEC section 9), per
   * the exporter's options (scale, padding, column precision).
   */
  hyperbolicAttention(p: {
    tau: Float64Array;
    mu: Float64Array;
    pairs: number;
    shift: 'centre' | 'none';
    /** The encoding's own padding multiple (the exporter's option overrides it). */
    multiple: number;
    /** Optional per-query amplitude float32 [batch, length, heads] multiplying each head's eta^Q columns. */
    queryScale?: string;
  }): OnnxAttention;
}

/** An encoding's ONNX attention: the output value and the facts the export summary reports. */
export interface OnnxAttention {
  out: string;
  /** Head dim MultiHeadAttention sees for q and k. */
  qkHeadDim: number;
  attentionBias: boolean;
  /** Augmented-column encodings: 'plain' or 'split' columns; null otherwise. */
  columns: 'plain' | 'split' | null;
}

/** What a generation will need from a cache. */
export interface CachePlan<T = FloatArray, I = Int32Array> {
  /** The backend the cache lives on (a hook for host arrays only returns null, or refuses, on a device). */
  backend?: Backend<T, I>;
  batch: number;
  /** The dtype of the cached tensors (the model's). */
  dtype: DType;
  /** Positions 0 .. maxPositions - 1 will be used (prompt + generated tokens). */
  maxPositions: number;
}

/** An encoding's forward-only attention over cached, pre-transformed keys. */
export interface CachedAttention<T = FloatArray, I = Int32Array> {
  /** Width of one cached key row (the head dim after the encoding's transform). */
  readonly keyWidth: number;
  /**
   * The rows the cache stores for new raw keys k [B, Hkv, n, D] at absolute positions first .. first + n - 1: a
   * fresh tensor the caller releases once appended.
   */
  cacheKeys(k: T, batch: number, n: number, first: number): T;
  /**
   * out [B, H, Lq, Dv] for new raw queries q [B, H, Lq, D] at positions ctx.queryOffset + i, against every cached
   * key [B, Hkv, Lk, keyWidth] and value [B, Hkv, Lk, Dv]; ctx.shape describes the raw (untransformed) sizes.
   */
  attend(ctx: AttendContext<T, I>, q: T, cachedK: T, v: T): T;
}

/** Sizes an encoding is built for. */
export interface EncodingDims {
  heads: number;
  kvHeads: number;
  headDim: number;
  modelDim: number;
  /** The training length (some presets derive slopes from it). */
  trainLength: number;
  /** The training patch grid [rows, cols] of a vision model (2-D encodings size their tables and slopes by it). */
  trainGrid?: readonly number[];
  /**
   * Standard deviation of the model's token-embedding initialisation, so an absolute signal added to the
   * embeddings can be sized against them (sinusoidal). Absent outside a model.
   */
  embeddingStd?: number;
  /**
   * Within a model: the parameters its blocks' instances share (SPEC section 10: T5's table, XL's u and v). An
   * encoding that shares asks sharedParam for them; absent (a lone instance), every instance owns its own.
   */
  shared?: Map<string, Param>;
}

/** The model-wide parameter `name` (made by the first instance that asks), or a fresh one outside a model. */
export function sharedParam(dims: EncodingDims, name: string, make: () => Param): Param {
  if (!dims.shared) return make();
  let p = dims.shared.get(name);
  if (!p) dims.shared.set(name, (p = make()));
  return p;
}

/** Whether a block's instances share parameters: the option `sharing` of T5 and Transformer-XL. */
export type LayerSharing = 'shared' | 'per-layer';

export interface EncodingFactory<O extends object = Record<string, unknown>> {
  readonly name: string;
  readonly description: string;
  readonly sites: readonly EncodingSite[];
  readonly defaults: Readonly<O>;
  /**
   * Refuses option keys this encoding does not have and values of the wrong type (one HypeError naming the key and
   * the allowed keys); `create` runs it too. Factories built with defineEncoding (options.ts) have it.
   */
  readonly checkOptions?: (options: unknown) => void;
  /**
   * Options whose default changed after configs were saved without them: the value an absent key meant then. A model
   * config read back from disk gets these; a new one records the current default, so every config says which it
   * used (model/config.ts).
   */
  readonly savedDefaults?: Readonly<Partial<O>>;
  /**
   * Why a model with these options cannot train with bf16-rounded attention operands (mixed precision), naming the
   * fix; null or absent when it can. Concat routes whose bias columns are built for fp32 operands say so: rounding
   * them to bf16 would lose the bias to cancellation (SPEC section 8), while their split columns are exact.
   */
  readonly bf16Refusal?: (options: Partial<O>) => string | null;
  create(dims: EncodingDims, options: Partial<O>, rng: Rng): PositionalEncoding;
}
