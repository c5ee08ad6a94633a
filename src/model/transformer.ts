/**
 * The decoder-only byte-level transformer: token embedding (+ an embedding-site position signal if the encoding
 * has one), N pre-LayerNorm blocks (multi-head causal attention through the positional encoding, GELU MLP), a final
 * LayerNorm and the output head tied to the embedding.
 *
 * Forward and backward are written out per layer (llm.c style): every activation the backward needs lives in a
 * buffer allocated once per (batch, length) shape and reused by later steps of that shape; heavy arithmetic goes
 * through the Backend (gemm, attention via the encoding, and the layer ops of layers.ts).
 *
 * Row-major layouts: token activations [B, L, C] (rows = B * L tokens); attention tensors [B, H, L, D] as in
 * backend.ts. Parameter gradients ACCUMULATE; call zeroGrad() before each backward you want on its own.
 */
import type { AttentionShape, Backend } from '../backend/backend.ts';
import type { LayerOps } from '../backend/layers.ts';
import { HypeError, check } from '../errors.ts';
import type { AttendResult, EncodingFactory, Param, PositionalEncoding } from '../pe/encoding.ts';
import { getEncodingFactory } from '../pe/registry.ts';
import { allocate, headsToTokens, tokensToHeads, type FloatArray } from '../tensor.ts';
import { Rng } from '../util/rng.ts';
import type { ModelConfig } from './config.ts';
import {
  allocateParams,
  initialiseParams,
  listParams,
  qkvWidth,
  renamedParam,
  type BlockParams,
  type TransformerParams,
} from './parameters.ts';

const ATTENTION_SITES = new Set(['qk-transform', 'score-bias', 'score-rescale', 'data-dependent']);

interface BlockActivations {
  ln1: FloatArray;
  ln1Mean: FloatArray;
  ln1Rstd: FloatArray;
  qkv: FloatArray;
  q: FloatArray;
  k: FloatArray;
  v: FloatArray;
  /** Attention output back in token layout [B, L, C]. */
  att: FloatArray;
  attend: AttendResult | null;
  /** Residual stream after the attention half of the block. */
  resMid: FloatArray;
  ln2: FloatArray;
  ln2Mean: FloatArray;
  ln2Rstd: FloatArray;
  /** MLP pre-activation and its GELU. */
  fc: FloatArray;
  fcAct: FloatArray;
}

/** Every buffer one (batch, length) shape needs, forward and backward. */
class Activations {
  readonly rows: number;
  /** res[0] = embeddings, res[i + 1] = output of block i. */
  readonly res: FloatArray[];
  readonly blocks: BlockActivations[];
  readonly lnf: FloatArray;
  readonly lnfMean: FloatArray;
  readonly lnfRstd: FloatArray;
  readonly logits: FloatArray;
  readonly losses: FloatArray;
  readonly targets: Int32Array;
  readonly tokens: Int32Array;
  // Gradient scratch, shared by all layers (the backward walks them one at a time).
  readonly dRes: FloatArray;
  readonly dLn: FloatArray;
  readonly dWide: FloatArray;
  readonly dAtt: FloatArray;
  readonly dHeads: FloatArray;
  readonly dQkv: FloatArray;
  readonly dLogits: FloatArray;

  constructor(
    cfg: ModelConfig,
    readonly batch: number,
    readonly length: number,
  ) {
    const N = batch * length;
    this.rows = N;
    const C = cfg.width;
    const F = cfg.mlpWidth;
    const Q = qkvWidth(cfg);
    const D = C / cfg.heads;
    const a = (n: number) => allocate(cfg.dtype, n);
    this.res = Array.from({ length: cfg.layers + 1 }, () => a(N * C));
    this.blocks = Array.from({ length: cfg.layers }, () => ({
      ln1: a(N * C),
      ln1Mean: a(N),
      ln1Rstd: a(N),
      qkv: a(N * Q),
      q: a(N * cfg.heads * D),
      k: a(N * cfg.kvHeads * D),
      v: a(N * cfg.kvHeads * D),
      att: a(N * C),
      attend: null,
      resMid: a(N * C),
      ln2: a(N * C),
      ln2Mean: a(N),
      ln2Rstd: a(N),
      fc: a(N * F),
      fcAct: a(N * F),
    }));
    this.lnf = a(N * C);
    this.lnfMean = a(N);
    this.lnfRstd = a(N);
    this.logits = a(N * cfg.vocab);
    this.losses = a(N);
    this.targets = new Int32Array(N);
    this.tokens = new Int32Array(N);
    this.dRes = a(N * C);
    this.dLn = a(N * C);
    this.dWide = a(N * F);
    this.dAtt = a(N * C);
    this.dHeads = a(N * C);
    this.dQkv = a(N * Q);
    this.dLogits = a(N * cfg.vocab);
  }
}

export interface TransformerOptions {
  /** Use this factory instead of looking cfg.pe.name up in the registry (tests of encodings not registered). */
  encodingFactory?: EncodingFactory<object>;
}

export class Transformer {
  readonly params: TransformerParams;
  /** The encoding instance of each block's attention (the same object for all blocks when it has no params). */
  readonly blockEncodings: PositionalEncoding[];
  /** The instance whose `embed` runs on the embeddings, if the encoding acts there. */
  readonly embeddingEncoding: PositionalEncoding | null;
  private readonly allParams: Param[];
  private readonly ops: LayerOps;
  private acts: Activations | null = null;
  private hasTargets = false;
  private readonly headDim: number;

  constructor(
    readonly config: ModelConfig,
    readonly backend: Backend,
    options: TransformerOptions = {},
  ) {
    this.ops = backend;
    this.headDim = config.width / config.heads;
    const rng = new Rng(config.seed);
    this.params = allocateParams(config);
    initialiseParams(this.params, config, rng);

    const factory = options.encodingFactory ?? getEncodingFactory(config.pe.name);
    const dims = {
      heads: config.heads,
      kvHeads: config.kvHeads,
      headDim: this.headDim,
      modelDim: config.width,
      trainLength: config.trainLength,
      embeddingStd: config.initStd,
    };
    const create = () => factory.create(dims, config.pe.options as never, rng);
    const actsInAttention = factory.sites.some((s) => ATTENTION_SITES.has(s));
    const actsOnEmbeddings = factory.sites.includes('embedding');
    const peParams: Param[] = [];
    if (actsInAttention) {
      // Each block gets its own instance (its own slopes, tables, ...); an embedding site gets one more. Block
      // instances may share parameters (T5's table, XL's u and v, as the references do): listed once, under the
      // first block that holds them, and their gradients summed over the blocks by accumulation.
      this.embeddingEncoding = actsOnEmbeddings ? create() : null;
      const blockDims = { ...dims, shared: new Map<string, Param>() };
      this.blockEncodings = Array.from({ length: config.layers }, () =>
        factory.create(blockDims, config.pe.options as never, rng),
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
      const listed = new Set<Param>();
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
  parameters(): readonly Param[] {
    return this.allParams;
  }

  parameterCount(): number {
    let n = 0;
    for (const p of this.allParams) n += p.data.length;
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
    for (const p of this.allParams) p.grad.fill(0);
  }

  private activations(batch: number, length: number): Activations {
    if (!this.acts || this.acts.batch !== batch || this.acts.length !== length) {
      this.acts = null; // let the old shape's buffers go before allocating the new ones
      this.acts = new Activations(this.config, batch, length);
    }
    return this.acts;
  }

  /** Per-token losses (nats) of the last forward with targets, [B * L]. A view: valid until the next forward. */
  tokenLosses(): FloatArray {
    check(this.acts !== null && this.hasTargets, 'argument', 'tokenLosses() needs a forward pass with targets first');
    return this.acts.losses;
  }

  /** Logits [B * L, 256] of the last forward. A view: valid until the next forward. */
  logits(): FloatArray {
    check(this.acts !== null, 'argument', 'logits() needs a forward pass first');
    return this.acts.logits;
  }

  /**
   * Runs the model on tokens [B, L] (byte values). With targets [B, L], computes per-token cross-entropy and
   * returns the mean (nats); without, returns NaN and leaves only the logits.
   */
  forward(tokens: Int32Array, targets: Int32Array | null, batch: number, length: number): number {
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
    const ops = this.ops;
    const be = this.backend;
    const A = this.activations(batch, length);
    const N = A.rows;
    const C = cfg.width;
    const F = cfg.mlpWidth;
    const Q = qkvWidth(cfg);
    A.tokens.set(tokens);
    if (targets) A.targets.set(targets);
    this.hasTargets = targets !== null;

    ops.embeddingForward(this.params.wte.data, A.tokens, A.res[0]!, N, C, cfg.vocab);
    this.embeddingEncoding?.embed?.(A.res[0]!, batch, length, C, 0);

    const shape = this.attentionShape(batch, length);
    for (let i = 0; i < cfg.layers; i++) {
      const P = this.params.blocks[i]!;
      const X = A.blocks[i]!;
      const xIn = A.res[i]!;
      ops.layerNormForward(xIn, P.ln1Weight.data, P.ln1Bias.data, X.ln1, X.ln1Mean, X.ln1Rstd, N, C, cfg.layerNormEps);
      linearForward(be, ops, X.ln1, P.qkvWeight.data, P.qkvBias.data, X.qkv, N, C, Q, 0);
      this.splitHeads(X.qkv, X.q, X.k, X.v, batch, length);
      X.attend = this.blockEncodings[i]!.attend(
        { backend: be, shape, causal: true, queryOffset: 0 },
        { q: X.q, k: X.k, v: X.v, x: X.ln1 },
      );
      headsToTokens(X.attend.out, X.att, batch, this.config.heads, length, this.headDim);
      X.resMid.set(xIn);
      linearForward(be, ops, X.att, P.projWeight.data, P.projBias.data, X.resMid, N, C, C, 1);
      ops.layerNormForward(
        X.resMid,
        P.ln2Weight.data,
        P.ln2Bias.data,
        X.ln2,
        X.ln2Mean,
        X.ln2Rstd,
        N,
        C,
        cfg.layerNormEps,
      );
      linearForward(be, ops, X.ln2, P.fcWeight.data, P.fcBias.data, X.fc, N, C, F, 0);
      ops.geluForward(X.fc, X.fcAct, N * F);
      const xOut = A.res[i + 1]!;
      xOut.set(X.resMid);
      linearForward(be, ops, X.fcAct, P.fcProjWeight.data, P.fcProjBias.data, xOut, N, F, C, 1);
    }
    const last = A.res[cfg.layers]!;
    const { lnfWeight, lnfBias, wte } = this.params;
    ops.layerNormForward(last, lnfWeight.data, lnfBias.data, A.lnf, A.lnfMean, A.lnfRstd, N, C, cfg.layerNormEps);
    // Tied head: logits = lnf wte^T.
    be.gemm(false, true, N, cfg.vocab, C, 1, A.lnf, C, wte.data, C, 0, A.logits, cfg.vocab);
    if (!targets) return NaN;
    return ops.softmaxCrossEntropyForward(A.logits, A.targets, A.losses, N, cfg.vocab);
  }

  /**
   * Gradient of the mean loss of the last forward with respect to every parameter, ACCUMULATED into `grad`.
   * Walks the forward in reverse, layer by layer.
   */
  backward(): void {
    const A = this.acts;
    check(A !== null && this.hasTargets, 'argument', 'backward() needs a forward pass with targets first');
    const cfg = this.config;
    const ops = this.ops;
    const be = this.backend;
    const N = A.rows;
    const C = cfg.width;
    const F = cfg.mlpWidth;
    const Q = qkvWidth(cfg);
    const V = cfg.vocab;
    const { wte, lnfWeight, lnfBias } = this.params;

    ops.softmaxCrossEntropyBackward(A.logits, A.targets, A.dLogits, N, V, 1 / N);
    // logits = lnf wte^T: d lnf = dLogits wte; d wte += dLogits^T lnf.
    be.gemm(false, false, N, C, V, 1, A.dLogits, V, wte.data, C, 0, A.dLn, C);
    be.gemm(true, false, V, C, N, 1, A.dLogits, V, A.lnf, C, 1, wte.grad, C);
    A.dRes.fill(0);
    const last = A.res[cfg.layers]!;
    ops.layerNormBackward(
      A.dLn,
      last,
      lnfWeight.data,
      A.lnfMean,
      A.lnfRstd,
      A.dRes,
      lnfWeight.grad,
      lnfBias.grad,
      N,
      C,
    );

    for (let i = cfg.layers - 1; i >= 0; i--) {
      const P: BlockParams = this.params.blocks[i]!;
      const X = A.blocks[i]!;
      // dRes holds d loss / d res[i+1]; the residual path passes it straight to resMid, and then to res[i].
      // MLP: res[i+1] = resMid + gelu(ln2 W1 + b1) W2 + b2.
      linearBackward(be, ops, X.fcAct, P.fcProjWeight, P.fcProjBias, A.dRes, A.dWide, N, F, C);
      ops.geluBackward(X.fc, A.dWide, A.dWide, N * F);
      linearBackward(be, ops, X.ln2, P.fcWeight, P.fcBias, A.dWide, A.dLn, N, C, F);
      ops.layerNormBackward(
        A.dLn,
        X.resMid,
        P.ln2Weight.data,
        X.ln2Mean,
        X.ln2Rstd,
        A.dRes,
        P.ln2Weight.grad,
        P.ln2Bias.grad,
        N,
        C,
      );
      // Attention: resMid = res[i] + merge(attend(split(ln1 Wqkv + bqkv))) Wo + bo.
      linearBackward(be, ops, X.att, P.projWeight, P.projBias, A.dRes, A.dAtt, N, C, C);
      tokensToHeads(A.dAtt, A.dHeads, A.batch, this.config.heads, A.length, this.headDim);
      const g = X.attend!.backward(A.dHeads);
      this.mergeQkvGrads(g.dq, g.dk, g.dv, A.dQkv, N);
      linearBackward(be, ops, X.ln1, P.qkvWeight, P.qkvBias, A.dQkv, A.dLn, N, C, Q);
      if (g.dx) for (let j = 0; j < N * C; j++) A.dLn[j] += g.dx[j]!;
      ops.layerNormBackward(
        A.dLn,
        A.res[i]!,
        P.ln1Weight.data,
        X.ln1Mean,
        X.ln1Rstd,
        A.dRes,
        P.ln1Weight.grad,
        P.ln1Bias.grad,
        N,
        C,
      );
    }
    this.embeddingEncoding?.embedBackward?.(A.dRes, A.batch, A.length, C, 0);
    ops.embeddingBackward(A.dRes, A.tokens, wte.grad, N, C);
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

  /** qkv [B, L, (H + 2 Hkv) D] -> q [B, H, L, D], k and v [B, Hkv, L, D]. */
  private splitHeads(qkv: FloatArray, q: FloatArray, k: FloatArray, v: FloatArray, B: number, L: number): void {
    const { heads: H, kvHeads: Hkv } = this.config;
    const D = this.headDim;
    const Q = (H + 2 * Hkv) * D;
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < L; t++) {
        const row = (b * L + t) * Q;
        for (let h = 0; h < H; h++) {
          const dst = ((b * H + h) * L + t) * D;
          const src = row + h * D;
          for (let d = 0; d < D; d++) q[dst + d] = qkv[src + d]!;
        }
        for (let h = 0; h < Hkv; h++) {
          const dst = ((b * Hkv + h) * L + t) * D;
          const srcK = row + (H + h) * D;
          const srcV = row + (H + Hkv + h) * D;
          for (let d = 0; d < D; d++) {
            k[dst + d] = qkv[srcK + d]!;
            v[dst + d] = qkv[srcV + d]!;
          }
        }
      }
    }
  }

  /** The inverse of splitHeads for the gradients: dq, dk, dv -> dqkv [B, L, (H + 2 Hkv) D] (overwritten). */
  private mergeQkvGrads(dq: FloatArray, dk: FloatArray, dv: FloatArray, dqkv: FloatArray, N: number): void {
    const { heads: H, kvHeads: Hkv } = this.config;
    const D = this.headDim;
    const Q = (H + 2 * Hkv) * D;
    const L = this.acts!.length;
    for (let r = 0; r < N; r++) {
      const b = Math.floor(r / L);
      const t = r - b * L;
      const row = r * Q;
      for (let h = 0; h < H; h++) {
        const src = ((b * H + h) * L + t) * D;
        for (let d = 0; d < D; d++) dqkv[row + h * D + d] = dq[src + d]!;
      }
      for (let h = 0; h < Hkv; h++) {
        const src = ((b * Hkv + h) * L + t) * D;
        for (let d = 0; d < D; d++) {
          dqkv[row + (H + h) * D + d] = dk[src + d]!;
          dqkv[row + (H + Hkv + h) * D + d] = dv[src + d]!;
        }
      }
    }
  }
}

/** y = beta y + x W + b for x [N, in], W [in, out] (every linear layer of the model; decoding reuses it). */
export function linearForward(
  be: Backend,
  ops: LayerOps,
  x: FloatArray,
  w: FloatArray,
  b: FloatArray,
  y: FloatArray,
  N: number,
  nIn: number,
  nOut: number,
  beta: 0 | 1,
): void {
  be.gemm(false, false, N, nOut, nIn, 1, x, nIn, w, nOut, beta, y, nOut);
  ops.biasAdd(y, b, N, nOut);
}

/** For y = x W + b: W.grad += x^T dy, b.grad += colsum(dy), dx = dy W^T (dx OVERWRITTEN). */
export function linearBackward(
  be: Backend,
  ops: LayerOps,
  x: FloatArray,
  w: Param,
  b: Param,
  dy: FloatArray,
  dx: FloatArray,
  N: number,
  nIn: number,
  nOut: number,
): void {
  be.gemm(true, false, nIn, nOut, N, 1, x, nIn, dy, nOut, 1, w.grad, nOut);
  ops.biasBackward(dy, b.grad, N, nOut);
  be.gemm(false, true, N, nIn, nOut, 1, dy, nOut, w.data, nOut, 0, dx, nIn);
}
