/**
 * The decoder-only byte-level transformer: token embedding (+ an embedding-site position signal if the encoding
 * has one), N pre-LayerNorm blocks (multi-head causal attention through the positional encoding, GELU MLP), a final
 * LayerNorm and the output head tied to the embedding.
 *
 * Forward and backward are written out per layer (llm.c style; the block's forward is block.ts, shared with cached
 * decoding and ONNX export): every activation the backward needs lives in a buffer allocated once per (batch, length) shape and
 * reused by later steps of that shape. Parameters, activations, gradients and statistics are tensors of the
 * Backend (handles: typed arrays on host backends), and all arithmetic and data movement is a backend op (gemm,
 * attention via the encoding, the layer and tensor ops of layers.ts): nothing on the hot path reads a tensor.
 *
 * Row-major layouts: token activations [B, L, C] (rows = B * L tokens); attention tensors [B, H, L, D] as in
 * backend.ts. Parameter gradients ACCUMULATE; call zeroGrad() before each backward you want on its own.
 */
import type { AttentionShape, Backend } from '../backend/backend.ts';
import { HypeError, check } from '../errors.ts';
import type { AttendResult, EncodingFactory, OperandWidths, Param, PositionalEncoding } from '../pe/encoding.ts';
import { getEncodingFactory } from '../pe/registry.ts';
import { dtypeOf, type FloatArray } from '../tensor.ts';
import { Rng } from '../util/rng.ts';
import { allocateBlockBuffers, blockBackward, blockForward, blockOperandWidths, type BlockBuffers } from './block.ts';
import type { ModelConfig } from './config.ts';
import {
  allocateParams,
  initialiseParams,
  listParams,
  mapParams,
  ModelParam,
  qkvWidth,
  renamedParam,
  type TransformerParams,
} from './parameters.ts';

const ATTENTION_SITES = new Set(['qk-transform', 'score-bias', 'score-rescale', 'data-dependent']);

/** Slots of Transformer.stats: the mean loss, then two the trainer fills so that one read returns all three. */
export const STAT_LOSS = 0;
export const STAT_GRAD_NORM = 1;
export const STAT_NON_FINITE_LOGITS = 2;
const STAT_SLOTS = 3;

interface BlockActivations<T> extends BlockBuffers<T> {
  attend: AttendResult<T> | null;
}

/** Every buffer one (batch, length) shape needs, forward and backward, allocated through the backend. */
class Activations<T, I> {
  readonly rows: number;
  /** res[0] = embeddings, res[i + 1] = output of block i. */
  readonly res: T[];
  readonly blocks: BlockActivations<T>[];
  readonly lnf: T;
  readonly lnfMean: T;
  readonly lnfRstd: T;
  readonly logits: T;
  readonly losses: T;
  readonly targets: I;
  readonly tokens: I;
  // Gradient scratch, shared by all layers (the backward walks them one at a time).
  readonly dRes: T;
  readonly dLn: T;
  readonly dWide: T;
  readonly dAtt: T;
  readonly dHeads: T;
  readonly dQkv: T;
  readonly dLogits: T;

  constructor(
    cfg: ModelConfig,
    be: Backend<T, I>,
    readonly batch: number,
    readonly length: number,
    /** The encodings' widened operand layout of q, k, v and attention's output (block.ts), or null. */
    readonly widths: OperandWidths | null,
  ) {
    const N = batch * length;
    this.rows = N;
    const C = cfg.width;
    const F = cfg.mlpWidth;
    const Q = qkvWidth(cfg);
    const a = (n: number) => be.allocate(cfg.dtype, n, 'an activation');
    this.res = Array.from({ length: cfg.layers + 1 }, () => a(N * C));
    this.blocks = Array.from({ length: cfg.layers }, () => ({
      ...allocateBlockBuffers(cfg, be, N, widths),
      attend: null,
    }));
    this.lnf = a(N * C);
    this.lnfMean = a(N);
    this.lnfRstd = a(N);
    this.logits = a(N * cfg.vocab);
    this.losses = a(N);
    this.targets = be.allocateInt(N, 'the targets');
    this.tokens = be.allocateInt(N, 'the tokens');
    this.dRes = a(N * C);
    this.dLn = a(N * C);
    this.dWide = a(N * F);
    this.dAtt = a(N * C);
    this.dHeads = a(N * cfg.heads * (widths?.v ?? C / cfg.heads));
    this.dQkv = a(N * Q);
    this.dLogits = a(N * cfg.vocab);
  }

  /** Frees every buffer (a device's memory; nothing on host backends). */
  release(be: Backend<T, I>): void {
    for (const b of this.blocks) {
      b.attend?.dispose?.();
      for (const [key, t] of Object.entries(b)) if (key !== 'attend') be.release(t as T);
    }
    for (const t of [...this.res, this.lnf, this.lnfMean, this.lnfRstd, this.logits, this.losses]) be.release(t);
    for (const t of [this.dRes, this.dLn, this.dWide, this.dAtt, this.dHeads, this.dQkv, this.dLogits]) be.release(t);
    be.release(this.targets);
    be.release(this.tokens);
  }
}

export interface TransformerOptions {
  /** Use this factory instead of looking cfg.pe.name up in the registry (tests of encodings not registered). */
  encodingFactory?: EncodingFactory<object>;
}

/**
 * T and I are the backend's tensor handles (FloatArray and Int32Array on host backends, the default). On a device
 * backend every parameter, activation, gradient and the statistics live there; the hot path (zeroGrad, forward,
 * backward) only calls backend ops, and the one host transfer per forward is the upload of its tokens and targets.
 */
export class Transformer<T = FloatArray, I = Int32Array> {
  readonly params: TransformerParams<T>;
  /** The encoding instance of each block's attention (the same object for all blocks when it has no params). */
  readonly blockEncodings: PositionalEncoding<T, I>[];
  /** The instance whose `embed` runs on the embeddings, if the encoding acts there. */
  readonly embeddingEncoding: PositionalEncoding<T, I> | null;
  /**
   * Statistics [STAT_SLOTS] on the backend: slot STAT_LOSS holds the mean loss of the last forward with targets;
   * the trainer writes the gradient norm and the non-finite logit count into the others, so that one read returns
   * all three.
   */
  readonly stats: T;
  private readonly allParams: Param<T>[];
  private acts: Activations<T, I> | null = null;
  private hasTargets = false;
  private readonly headDim: number;

  constructor(
    readonly config: ModelConfig,
    readonly backend: Backend<T, I>,
    options: TransformerOptions = {},
  ) {
    this.headDim = config.width / config.heads;
    const rng = new Rng(config.seed);
    const host = allocateParams(config);
    initialiseParams(host, config, rng);
    this.params = onBackend(host, backend);
    this.stats = backend.allocateStats(STAT_SLOTS);

    const factory = options.encodingFactory ?? getEncodingFactory(config.pe.name);
    const dims = encodingDims(config);
    const create = () => portableOn(backend, factory.create(dims, config.pe.options as never, rng));
    const actsInAttention = factory.sites.some((s) => ATTENTION_SITES.has(s));
    const actsOnEmbeddings = factory.sites.includes('embedding');
    const peParams: Param<T>[] = [];
    if (actsInAttention) {
      // Each block gets its own instance (its own slopes, tables, ...); an embedding site gets one more. Block
      // instances may share parameters (T5's table, XL's u and v, as the references do): listed once, under the
      // first block that holds them, and their gradients summed over the blocks by accumulation.
      this.embeddingEncoding = actsOnEmbeddings ? create() : null;
      const blockDims = { ...dims, shared: new Map<string, Param>() };
      this.blockEncodings = Array.from({ length: config.layers }, () =>
        portableOn(backend, factory.create(blockDims, config.pe.options as never, rng)),
      );
    } else {
      // Embedding-only or position-free: one instance, whose attend() is plain attention, serves every block.
      const one = create();
      this.embeddingEncoding = actsOnEmbeddings ? one : null;
      this.blockEncodings = Array.from({ length: config.layers }, () => one);
    }
    if (this.embeddingEncoding) {
      for (const p of this.embeddingEncoding.params) peParams.push(renamedParam(p, `pe.${p.name}`));
    }
    if (actsInAttention) {
      const listed = new Set<Param<T>>();
      this.blockEncodings.forEach((enc, i) => {
        for (const p of enc.params) {
          if (listed.has(p)) continue;
          listed.add(p);
          peParams.push(renamedParam(p, `blocks.${i}.attn.pe.${p.name}`));
        }
      });
    } else if (!this.embeddingEncoding) {
      for (const p of this.blockEncodings[0]!.params) peParams.push(renamedParam(p, `pe.${p.name}`));
    }
    this.allParams = [...listParams(this.params), ...peParams];
    const seen = new Set<string>();
    for (const p of this.allParams) {
      check(!seen.has(p.name), 'argument', `two parameters are both named '${p.name}'; encodings must name theirs`);
      seen.add(p.name);
    }
  }

  /** Every trainable tensor: model tensors first (fixed order), then the encoding's, named for checkpoints. */
  parameters(): readonly Param<T>[] {
    return this.allParams;
  }

  parameterCount(): number {
    let n = 0;
    for (const p of this.allParams) n += this.backend.sizeOf(p.data);
    return n;
  }

  /** Longest sequence every encoding instance can represent. */
  get maxLength(): number {
    let m = Infinity;
    for (const e of [...this.blockEncodings, ...(this.embeddingEncoding ? [this.embeddingEncoding] : [])]) {
      m = Math.min(m, e.maxLength);
    }
    return m;
  }

  zeroGrad(): void {
    const be = this.backend;
    for (const p of this.allParams) be.fill(p.grad, 0, 0, be.sizeOf(p.grad));
  }

  private activations(batch: number, length: number): Activations<T, I> {
    if (!this.acts || this.acts.batch !== batch || this.acts.length !== length) {
      this.acts?.release(this.backend);
      this.acts = null; // let the old shape's buffers go before allocating the new ones
      const widths = blockOperandWidths(this.config, this.blockEncodings);
      this.acts = new Activations(this.config, this.backend, batch, length, widths);
    }
    return this.acts;
  }

  /** Per-token losses (nats) of the last forward with targets, [B * L]. A view: valid until the next forward. */
  tokenLosses(): FloatArray {
    check(this.acts !== null && this.hasTargets, 'argument', 'tokenLosses() needs a forward pass with targets first');
    return this.hostArray(this.acts.losses, 'tokenLosses()');
  }

  /** Logits [B * L, 256] of the last forward. A view: valid until the next forward. */
  logits(): FloatArray {
    check(this.acts !== null, 'argument', 'logits() needs a forward pass first');
    return this.hostArray(this.acts.logits, 'logits()');
  }

  /** The logits [B * L, 256] of the last forward as a handle of the backend (no transfer). */
  logitsHandle(): T {
    check(this.acts !== null, 'argument', 'logitsHandle() needs a forward pass first');
    return this.acts.logits;
  }

  /** The per-token losses [B * L] of the last forward with targets as a handle of the backend (no transfer). */
  lossesHandle(): T {
    check(this.acts !== null && this.hasTargets, 'argument', 'lossesHandle() needs a forward pass with targets first');
    return this.acts.losses;
  }

  /** A host view of a backend tensor: host backends only (the synchronous accessors). */
  private hostArray(t: T, what: string): FloatArray {
    const view = this.backend.hostView(t);
    if (view === null) {
      throw new HypeError(
        'argument',
        `${what} returns host arrays, which backend '${this.backend.name}' does not hold; read the tensor with ` +
          'backend.read() (asynchronous), or use a host backend (native, reference)',
      );
    }
    return view;
  }

  /**
   * Runs the model on tokens [B, L] (byte values). With targets [B, L], computes per-token cross-entropy and
   * returns the mean (nats); without, returns NaN and leaves only the logits. Host backends (the loss is read from
   * the statistics without waiting); on any backend, forwardAsync() or enqueueForward() + a read of `stats`.
   */
  forward(tokens: Int32Array, targets: Int32Array | null, batch: number, length: number): number {
    this.enqueueForward(tokens, targets, batch, length);
    return targets ? this.hostArray(this.stats, 'forward()')[STAT_LOSS]! : NaN;
  }

  /** forward() on any backend: the loss is read back (the one transfer out of a forward). */
  async forwardAsync(tokens: Int32Array, targets: Int32Array | null, batch: number, length: number): Promise<number> {
    this.enqueueForward(tokens, targets, batch, length);
    return targets ? (await this.backend.read(this.stats, STAT_LOSS, 1))[0]! : NaN;
  }

  /**
   * The forward pass without reading anything back: uploads tokens and targets, and with targets leaves the mean
   * loss in stats[STAT_LOSS].
   */
  enqueueForward(tokens: Int32Array, targets: Int32Array | null, batch: number, length: number): void {
    check(
      Number.isInteger(batch) && batch > 0 && Number.isInteger(length) && length > 0,
      'shape',
      `batch (${batch}) and length (${length}) must be positive integers`,
    );
    check(tokens.length === batch * length, 'shape', `tokens has ${tokens.length} entries, expected B*L`);
    check(targets === null || targets.length === batch * length, 'shape', 'targets must have B*L entries');
    if (length > this.maxLength) {
      throw new HypeError(
        'length',
        `sequence length ${length} exceeds the ${this.config.pe.name} encoding's maximum ${this.maxLength}; ` +
          'evaluate at a shorter length or use a relative encoding',
      );
    }
    const cfg = this.config;
    const be = this.backend;
    if (be.residence === 'device') {
      // Host backends check ids inside the gather and the loss; a device trusts them, so they are checked here.
      checkIds(tokens, cfg.vocab, 'token');
      if (targets) checkIds(targets, cfg.vocab, 'target');
    }
    const A = this.activations(batch, length);
    const N = A.rows;
    const C = cfg.width;
    be.uploadInt(tokens, A.tokens);
    if (targets) be.uploadInt(targets, A.targets);
    this.hasTargets = targets !== null;

    be.embeddingForward(this.params.wte.data, A.tokens, A.res[0]!, N, C, cfg.vocab);
    this.embeddingEncoding?.embed?.(A.res[0]!, batch, length, C, 0);

    const shape = this.attentionShape(batch, length);
    for (let i = 0; i < cfg.layers; i++) {
      const X = A.blocks[i]!;
      const attention = (q: T, k: T, v: T, x: T) => {
        X.attend?.dispose?.();
        const ctx = { backend: be, shape, causal: true, queryOffset: 0 };
        X.attend = this.blockEncodings[i]!.attend(ctx, { q, k, v, x, ...(A.widths ? { widths: A.widths } : {}) });
        return X.attend.out;
      };
      blockForward(be, cfg, this.params.blocks[i]!, X, A.res[i]!, A.res[i + 1]!, batch, length, attention, A.widths);
    }
    const last = A.res[cfg.layers]!;
    const { lnfWeight, lnfBias, wte } = this.params;
    be.layerNormForward(last, lnfWeight.data, lnfBias.data, A.lnf, A.lnfMean, A.lnfRstd, N, C, cfg.layerNormEps);
    // Tied head: logits = lnf wte^T.
    be.gemm(false, true, N, cfg.vocab, C, 1, A.lnf, C, wte.data, C, 0, A.logits, cfg.vocab);
    if (targets) be.softmaxCrossEntropyForward(A.logits, A.targets, A.losses, N, cfg.vocab, this.stats, STAT_LOSS);
  }

  /**
   * Gradient of the mean loss of the last forward with respect to every parameter, ACCUMULATED into `grad`.
   * Walks the forward in reverse, layer by layer; backend ops only (nothing is read back).
   */
  backward(): void {
    const A = this.acts;
    check(A !== null && this.hasTargets, 'argument', 'backward() needs a forward pass with targets first');
    const cfg = this.config;
    const be = this.backend;
    const N = A.rows;
    const C = cfg.width;
    const V = cfg.vocab;
    const { wte, lnfWeight, lnfBias } = this.params;

    be.softmaxCrossEntropyBackward(A.logits, A.targets, A.dLogits, N, V, 1 / N);
    // logits = lnf wte^T: d lnf = dLogits wte; d wte += dLogits^T lnf.
    be.gemm(false, false, N, C, V, 1, A.dLogits, V, wte.data, C, 0, A.dLn, C);
    be.gemm(true, false, V, C, N, 1, A.dLogits, V, A.lnf, C, 1, wte.grad, C);
    be.fill(A.dRes, 0, 0, N * C);
    const last = A.res[cfg.layers]!;
    be.layerNormBackward(A.dLn, last, lnfWeight.data, A.lnfMean, A.lnfRstd, A.dRes, lnfWeight.grad, lnfBias.grad, N, C);

    for (let i = cfg.layers - 1; i >= 0; i--) {
      const X = A.blocks[i]!;
      blockBackward(be, cfg, this.params.blocks[i]!, X, X.attend!, A.res[i]!, A.dRes, A, A.batch, A.length, A.widths);
    }
    this.embeddingEncoding?.embedBackward?.(A.dRes, A.batch, A.length, C, 0);
    be.embeddingBackward(A.dRes, A.tokens, wte.grad, N, C);
  }

  private attentionShape(batch: number, length: number): AttentionShape {
    const D = this.headDim;
    return {
      batch,
      heads: this.config.heads,
      kvHeads: this.config.kvHeads,
      lq: length,
      lk: length,
      headDim: D,
      valueDim: D,
    };
  }
}

/**
 * The initialised host parameters as the backend's tensors: the arrays themselves on a host backend (no copy), an
 * upload of each on a device (the only upload of weights in a model's life, besides restoring a checkpoint).
 */
function onBackend<T, I>(host: TransformerParams, be: Backend<T, I>): TransformerParams<T> {
  if (be.residence === 'host') return host as unknown as TransformerParams<T>;
  return mapParams(host, (p) => {
    const data = be.allocate(dtypeOf(p.data), p.data.length, p.name);
    be.upload(p.data, data);
    return new ModelParam(p.name, p.shape, p.decay, data, be.allocate(be.dtypeOf(data), p.data.length, p.name));
  });
}

/**
 * The encoding as the backend's kind: any encoding on a host backend; on a device only one that declares itself
 * portable (attend through backend ops, no host parameters), else one clear refusal.
 */
function portableOn<T, I>(be: Backend<T, I>, enc: PositionalEncoding): PositionalEncoding<T, I> {
  if (be.residence === 'device' && !devicePortable(enc)) {
    throw new HypeError(
      'argument',
      `encoding '${enc.name}' runs on host backends only (reference, native): its position terms are computed ` +
        `over host arrays, which backend '${be.name}' does not hold; train it with --backend native or reference, ` +
        'or use a device-portable encoding (none, alibi, hype with a fixed preset in fp32)',
    );
  }
  return enc as unknown as PositionalEncoding<T, I>;
}

const devicePortable = (enc: PositionalEncoding) => enc.portable === true && enc.params.length === 0;

/** The sizes an encoding factory builds an instance for. */
function encodingDims(config: ModelConfig) {
  return {
    heads: config.heads,
    kvHeads: config.kvHeads,
    headDim: config.width / config.heads,
    modelDim: config.width,
    trainLength: config.trainLength,
    embeddingStd: config.initStd,
  };
}

/**
 * Whether a device backend can run `config`'s encoding (the test the constructor applies), judged on one instance
 * built on the host: lets a caller refuse a whole plan before it allocates anything on a device.
 */
export function encodingRunsOnDevice(config: ModelConfig): boolean {
  const enc = getEncodingFactory(config.pe.name).create(encodingDims(config), config.pe.options as never, new Rng(0));
  return devicePortable(enc);
}

function checkIds(ids: Int32Array, vocab: number, what: string): void {
  for (let r = 0; r < ids.length; r++) {
    const t = ids[r]!;
    if (!(t >= 0 && t < vocab)) {
      throw new HypeError(
        'argument',
        `${what} ${t} at row ${r} is outside [0, ${vocab}); ${what}s must be byte values`,
      );
    }
  }
}
