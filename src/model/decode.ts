/**
 * Incremental decoding for generation. `CachedDecoder` runs the same block function as Transformer.forward
 * (block.ts), for new tokens only, on host backends: every layer keeps its keys and values (src/model/kv-cache.ts), so a step costs O(length) in
 * attention and O(1) everywhere else. `RecomputeDecoder` is the same interface done the slow way (the whole
 * sequence through Transformer.forward each step): the reference the cache is tested against, and `--no-cache`.
 *
 * What each encoding's cache holds (decided per encoding, see PositionalEncoding.cachedAttention):
 * - rope, hope: keys rotated at their absolute positions (a key's rotation never changes).
 * - hype (concat route): Khat = [K, eta^K] with eta^K at absolute positions under one shift fixed for the whole
 *   generation (SPEC section 6, fixed-shift policy; no rebasing needed).
 * - none, alibi, t5, hype (kernel route), xl, shaw, da: raw k and v; attention gets queryOffset = cache length,
 *   from which their position terms are exact.
 * - learned, sinusoidal: raw k and v; the embedding-site signal is added at the new tokens' absolute positions
 *   (learned refuses positions past its table).
 * - path: raw k, v AND the block inputs x, because PaTH's transform of a key depends on every token between the
 *   key and the query: no per-key cached form exists, so its walk-back product is recomputed at each step (exact,
 *   but O(length * d^2) per query rather than O(length * d)).
 */
import type { AttentionShape, Backend } from '../backend/backend.ts';
import { HypeError, check } from '../errors.ts';
import type { CachedAttention } from '../pe/encoding.ts';
import { allocate, type FloatArray } from '../tensor.ts';
import { LayerCache } from './kv-cache.ts';
import { allocateBlockBuffers, blockForward } from './block.ts';
import type { Transformer } from './transformer.ts';

/** Feeds tokens and returns next-token logits. */
export interface Decoder {
  readonly batch: number;
  /** Positions consumed so far. */
  readonly length: number;
  /** Feeds n new tokens per sequence (tokens [B, n]); returns their logits [B, n, vocab]. */
  step(tokens: Int32Array, n: number): FloatArray;
}

/** Refuses a generation that would pass the model's (absolute encodings') maximum length. */
export function checkGenerationLength(model: Transformer, positions: number): void {
  if (positions > model.maxLength) {
    throw new HypeError(
      'length',
      `generating ${positions} positions (prompt + new tokens) exceeds the ${model.config.pe.name} encoding's ` +
        `maximum length ${model.maxLength}; ask for fewer tokens (--tokens) or a shorter prompt, or use a model ` +
        'with a relative encoding (rope, alibi, t5, hype) that has no maximum',
    );
  }
}

function checkStep(tokens: Int32Array, batch: number, n: number, used: number, capacity: number): void {
  check(Number.isInteger(n) && n >= 1, 'shape', `a decoding step needs n >= 1 new tokens, got ${n}`);
  check(tokens.length === batch * n, 'shape', `tokens has ${tokens.length} entries, expected batch * n = ${batch * n}`);
  check(
    used + n <= capacity,
    'length',
    `this decoder was planned for ${capacity} positions and has used ${used}; ${n} more do not fit (plan more)`,
  );
}

export class CachedDecoder implements Decoder {
  private readonly caches: LayerCache[];
  private readonly hooks: (CachedAttention | null)[];
  private readonly backend: Backend;
  private readonly headDim: number;

  constructor(
    readonly model: Transformer,
    readonly batch: number,
    /** Positions the generation will reach (prompt + new tokens): sizes the cache and fixes HyPE's shift. */
    readonly capacity: number,
  ) {
    check(Number.isInteger(batch) && batch >= 1, 'argument', `batch must be a positive integer, got ${batch}`);
    check(
      Number.isInteger(capacity) && capacity >= 1,
      'argument',
      `the planned length must be a positive integer, got ${capacity}`,
    );
    checkGenerationLength(model, capacity);
    check(
      model.backend.residence === 'host',
      'argument',
      `cached decoding works on host arrays, which backend '${model.backend.name}' does not hold; generate with a ` +
        'host backend (native, reference)',
    );
    const cfg = model.config;
    this.backend = model.backend;
    this.headDim = cfg.width / cfg.heads;
    const plan = { batch, maxPositions: capacity, dtype: cfg.dtype };
    this.hooks = model.blockEncodings.map((enc) => enc.cachedAttention?.(plan) ?? null);
    this.caches = model.blockEncodings.map((enc, i) => {
      const keyWidth = this.hooks[i]?.keyWidth ?? this.headDim;
      const keepsInputs = enc.sites.includes('data-dependent');
      return new LayerCache(
        batch,
        cfg.kvHeads,
        capacity,
        keyWidth,
        this.headDim,
        cfg.dtype,
        keepsInputs ? cfg.width : 0,
      );
    });
  }

  get length(): number {
    return this.caches[0]?.length ?? 0;
  }

  /** Whether layer i stores transformed keys (true) or raw keys (false). */
  cachesTransformedKeys(layer: number): boolean {
    return this.hooks[layer] !== null;
  }

  step(tokens: Int32Array, n: number): FloatArray {
    const B = this.batch;
    const pos0 = this.length;
    checkStep(tokens, B, n, pos0, this.capacity);
    const { model, backend: be } = this;
    const cfg = model.config;
    const { width: C, heads: H, kvHeads: Hkv, dtype } = cfg;
    const D = this.headDim;
    const N = B * n;
    const P = model.params;

    let x = allocate(dtype, N * C);
    be.embeddingForward(P.wte.data, tokens, x, N, C, cfg.vocab);
    model.embeddingEncoding?.embed?.(x, B, n, C, pos0);

    const X = allocateBlockBuffers(cfg, be, N);
    for (let i = 0; i < cfg.layers; i++) {
      const hook = this.hooks[i]!;
      const cache = this.caches[i]!;
      const xOut = allocate(dtype, N * C);
      blockForward(be, cfg, P.blocks[i]!, X, x, xOut, B, n, (q, k, v, ln) => {
        cache.append(hook ? hook.cacheKeys(k, B, n, pos0) : k, v, n, ln);
        const shape: AttentionShape = {
          batch: B,
          heads: H,
          kvHeads: Hkv,
          lq: n,
          lk: cache.length,
          headDim: D,
          valueDim: D,
        };
        const ctx = { backend: be, shape, causal: true, queryOffset: pos0 };
        return hook
          ? hook.attend(ctx, q, cache.keys(), cache.values())
          : model.blockEncodings[i]!.attend(ctx, { q, k: cache.keys(), v: cache.values(), x: cache.inputs() }).out;
      });
      x = xOut;
    }
    const { ln1: ln, ln1Mean: mean, ln1Rstd: rstd } = X;
    be.layerNormForward(x, P.lnfWeight.data, P.lnfBias.data, ln, mean, rstd, N, C, cfg.layerNormEps);
    const logits = allocate(dtype, N * cfg.vocab);
    be.gemm(false, true, N, cfg.vocab, C, 1, ln, C, P.wte.data, C, 0, logits, cfg.vocab);
    return logits;
  }
}

/** No cache: the whole sequence through Transformer.forward at every step (reference and `--no-cache`). */
export class RecomputeDecoder implements Decoder {
  private readonly history: Int32Array;
  private used = 0;

  constructor(
    readonly model: Transformer,
    readonly batch: number,
    readonly capacity: number,
  ) {
    checkGenerationLength(model, capacity);
    this.history = new Int32Array(batch * capacity);
  }

  get length(): number {
    return this.used;
  }

  step(tokens: Int32Array, n: number): FloatArray {
    const B = this.batch;
    checkStep(tokens, B, n, this.used, this.capacity);
    const L = this.used + n;
    const seq = new Int32Array(B * L);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < this.used; t++) seq[b * L + t] = this.history[b * this.capacity + t]!;
      for (let t = 0; t < n; t++) {
        seq[b * L + this.used + t] = tokens[b * n + t]!;
        this.history[b * this.capacity + this.used + t] = tokens[b * n + t]!;
      }
    }
    this.used = L;
    this.model.forward(seq, null, B, L);
    const all = this.model.logits();
    const V = this.model.config.vocab;
    const out = allocate(this.model.config.dtype, B * n * V);
    for (let b = 0; b < B; b++) out.set(all.subarray((b * L + L - n) * V, (b * L + L) * V), b * n * V);
    return out;
  }
}
