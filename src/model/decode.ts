/**
 * Incremental decoding for generation. `CachedDecoder` runs the same block function as Transformer.forward
 * (block.ts), for new tokens only, on any backend: every layer keeps its keys and values (src/model/kv-cache.ts), so a step costs O(length) in
 * attention and O(1) everywhere else. On a device backend the cache, the activations and the logits stay on the
 * device; what leaves it per step is the new tokens' logits [B, n, vocab] (stepAsync's one read), and what enters is
 * the new tokens (and, for HyPE's concat route, the position columns of the new rows only). `RecomputeDecoder` is the same interface done the slow way (the whole
 * sequence through Transformer.forward each step): the reference the cache is tested against, and `--no-cache`.
 * `step` is synchronous and host-only (it returns the logits as a host view); `stepAsync` works on every backend.
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
import type { FloatArray } from '../tensor.ts';
import { LayerCache } from './kv-cache.ts';
import { allocateBlockBuffers, blockForward } from './block.ts';
import type { Transformer } from './transformer.ts';

/** Feeds tokens and returns next-token logits. */
export interface Decoder {
  readonly batch: number;
  /** Positions consumed so far. */
  readonly length: number;
  /** Feeds n new tokens per sequence (tokens [B, n]); returns their logits [B, n, vocab]. Host backends only. */
  step(tokens: Int32Array, n: number): FloatArray;
  /** step() on any backend: the new tokens' logits are read back (the one transfer out of a step). */
  stepAsync(tokens: Int32Array, n: number): Promise<FloatArray>;
}

/** Refuses a generation that would pass the model's (absolute encodings') maximum length. */
export function checkGenerationLength<T, I>(model: Transformer<T, I>, positions: number): void {
  if (positions > model.maxLength) {
    throw new HypeError(
      'length',
      `generating ${positions} positions (prompt + new tokens) exceeds the ${model.config.pe.name} encoding's ` +
        `maximum length ${model.maxLength}; ask for fewer tokens (--tokens) or a shorter prompt, or use a model ` +
        'with a relative encoding (rope, alibi, t5, hype) that has no maximum',
    );
  }
}

function checkStep(tokens: Int32Array, batch: number, n: number, used: number, capacity: number, vocab: number): void {
  check(Number.isInteger(n) && n >= 1, 'shape', `a decoding step needs n >= 1 new tokens, got ${n}`);
  check(tokens.length === batch * n, 'shape', `tokens has ${tokens.length} entries, expected batch * n = ${batch * n}`);
  check(
    used + n <= capacity,
    'length',
    `this decoder was planned for ${capacity} positions and has used ${used}; ${n} more do not fit (plan more)`,
  );
  // A device may assume ids in range (HANDLES.md), so they are checked here, on the host.
  for (const t of tokens) check(t >= 0 && t < vocab, 'argument', `token id ${t} is outside [0, ${vocab})`);
}

/** The host view of a step's logits, or the HypeError naming stepAsync. */
function hostLogits<T, I>(be: Backend<T, I>, logits: T): FloatArray {
  const view = be.hostView(logits);
  if (view === null) {
    throw new HypeError(
      'argument',
      `step() returns host arrays, which backend '${be.name}' does not hold; use stepAsync() (generateAsync), ` +
        'which reads the logits back',
    );
  }
  return view;
}

export class CachedDecoder<T = FloatArray, I = Int32Array> implements Decoder {
  private readonly caches: LayerCache<T, I>[];
  private readonly hooks: (CachedAttention<T, I> | null)[];
  private readonly backend: Backend<T, I>;
  private readonly headDim: number;

  constructor(
    readonly model: Transformer<T, I>,
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
    const cfg = model.config;
    const be = model.backend;
    this.backend = be;
    this.headDim = cfg.width / cfg.heads;
    const plan = { batch, maxPositions: capacity, dtype: cfg.dtype, backend: be };
    this.hooks = model.blockEncodings.map((enc) => enc.cachedAttention?.(plan) ?? null);
    this.caches = model.blockEncodings.map((enc, i) => {
      const keyWidth = this.hooks[i]?.keyWidth ?? this.headDim;
      const keepsInputs = enc.sites.includes('data-dependent');
      return new LayerCache(
        be,
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
    return hostLogits(this.backend, this.enqueueStep(tokens, n));
  }

  async stepAsync(tokens: Int32Array, n: number): Promise<FloatArray> {
    const logits = this.enqueueStep(tokens, n);
    const out = await this.backend.read(logits);
    this.backend.release(logits);
    return out;
  }

  /** Frees the cache (a device's memory; a no-op on host). The decoder cannot step afterwards. */
  release(): void {
    for (const c of this.caches) c.release();
  }

  /** One step's work on the backend; returns the logits [B, n, vocab] as a fresh handle owned by the caller. */
  enqueueStep(tokens: Int32Array, n: number): T {
    const B = this.batch;
    const pos0 = this.length;
    const { model, backend: be } = this;
    const cfg = model.config;
    checkStep(tokens, B, n, pos0, this.capacity, cfg.vocab);
    const { width: C, heads: H, kvHeads: Hkv, dtype } = cfg;
    const D = this.headDim;
    const N = B * n;
    const P = model.params;
    const temporaries: T[] = [];
    const temp = (t: T): T => (temporaries.push(t), t);

    const ids = be.allocateInt(N, 'token ids');
    be.uploadInt(tokens, ids);
    let x = temp(be.allocate(dtype, N * C, 'an activation'));
    be.embeddingForward(P.wte.data, ids, x, N, C, cfg.vocab);
    model.embeddingEncoding?.embed?.(x, B, n, C, pos0);

    const X = allocateBlockBuffers(cfg, be, N);
    const results: { dispose?(): void }[] = [];
    for (let i = 0; i < cfg.layers; i++) {
      const hook = this.hooks[i]!;
      const cache = this.caches[i]!;
      const xOut = temp(be.allocate(dtype, N * C, 'an activation'));
      blockForward(be, cfg, P.blocks[i]!, X, x, xOut, B, n, (q, k, v, ln) => {
        cache.append(hook ? temp(hook.cacheKeys(k, B, n, pos0)) : k, v, n, ln);
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
        const [keys, values] = [temp(cache.keys()), temp(cache.values())];
        if (hook) return temp(hook.attend(ctx, q, keys, values));
        const inputs = cache.inputs();
        if (inputs !== undefined) temp(inputs);
        const r = model.blockEncodings[i]!.attend(ctx, { q, k: keys, v: values, x: inputs });
        results.push(r);
        return r.out;
      });
      x = xOut;
    }
    const { ln1: ln, ln1Mean: mean, ln1Rstd: rstd } = X;
    be.layerNormForward(x, P.lnfWeight.data, P.lnfBias.data, ln, mean, rstd, N, C, cfg.layerNormEps);
    const logits = be.allocate(dtype, N * cfg.vocab, 'logits');
    be.gemm(false, true, N, cfg.vocab, C, 1, ln, C, P.wte.data, C, 0, logits, cfg.vocab);
    // Everything but the logits goes back now (a device reuses the buffers; the queue keeps the order).
    for (const r of results) r.dispose?.();
    for (const t of [...temporaries, ...Object.values(X)]) be.release(t);
    be.release(ids);
    return logits;
  }
}

/** No cache: the whole sequence through Transformer.forward at every step (reference and `--no-cache`). */
export class RecomputeDecoder<T = FloatArray, I = Int32Array> implements Decoder {
  private readonly history: Int32Array;
  private used = 0;

  constructor(
    readonly model: Transformer<T, I>,
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
    const L = this.enqueue(tokens, n);
    const all = hostLogits(this.model.backend, this.model.logitsHandle());
    const V = this.model.config.vocab;
    const out = new (all instanceof Float64Array ? Float64Array : Float32Array)(this.batch * n * V);
    for (let b = 0; b < this.batch; b++) out.set(all.subarray((b * L + L - n) * V, (b * L + L) * V), b * n * V);
    return out;
  }

  async stepAsync(tokens: Int32Array, n: number): Promise<FloatArray> {
    const L = this.enqueue(tokens, n);
    const V = this.model.config.vocab;
    const rows = await Promise.all(
      Array.from({ length: this.batch }, (_, b) =>
        this.model.backend.read(this.model.logitsHandle(), (b * L + L - n) * V, n * V),
      ),
    );
    const out = new (rows[0] instanceof Float64Array ? Float64Array : Float32Array)(this.batch * n * V);
    rows.forEach((r, b) => out.set(r, b * n * V));
    return out;
  }

  /** Appends the new tokens to the history and runs the whole sequence forward; returns its length. */
  private enqueue(tokens: Int32Array, n: number): number {
    const B = this.batch;
    checkStep(tokens, B, n, this.used, this.capacity, this.model.config.vocab);
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
    this.model.enqueueForward(seq, null, B, L);
    return L;
  }
}
