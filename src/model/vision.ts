/**
 * A small vision transformer (ViT) on the same pieces as the language model (transformer.ts): images [B, S, S] are
 * cut into P x P patches (a G x G grid, G = S / P: 7 x 7 for 28 x 28 images and P = 4), each patch is embedded by a
 * linear layer [P*P, C] (+ an embedding-site position signal: learned-2d, sincos-2d), N = G^2 tokens run through
 * pre-LayerNorm blocks with BIDIRECTIONAL multi-head attention through the positional encoding (which receives the
 * grid in AttendContext.grid) and a GELU MLP, a final LayerNorm, MEAN POOLING over the tokens (no class token: a
 * class token would need a position of its own, and mean pooling works unchanged on any grid), and a linear
 * classification head [C, classes] with softmax cross-entropy.
 *
 * The blocks are the language model's own (block.ts: blockForward with the encoding's bidirectional attend as the
 * attention, blockBackward), as are the linear layers and parameter layout (parameters.ts: the token table `wte`
 * [P*P, C] is the patch projection here); the patch embedding, pooling and head are written out here through the
 * Backend. Any image side that is a multiple of P works; the grid follows it.
 *
 * Layouts: images [B, S, S]; patches [B, N, P*P]; tokens [B, N, C]; attention [B, H, N, D] (backend.ts).
 * Parameter gradients ACCUMULATE; call zeroGrad() before each backward you want on its own.
 */
import type { AttentionShape, Backend } from '../backend/backend.ts';
import { check, HypeError } from '../errors.ts';
import type { AttendResult, EncodingFactory, OperandWidths, Param, PositionalEncoding } from '../pe/encoding.ts';
import { getVisionEncoding } from '../pe/vision/registry.ts';
import { allocate, type DType, type FloatArray } from '../tensor.ts';
import { Rng } from '../util/rng.ts';
import type { ModelConfig } from './config.ts';
import {
  allocateParams,
  initialiseParams,
  listParams,
  ModelParam,
  renamedParam,
  type TransformerParams,
} from './parameters.ts';
import {
  allocateBlockBuffers,
  blockBackward,
  blockOperandWidths,
  blockForward,
  linearBackward,
  linearForward,
  type BlockBuffers,
} from './block.ts';

export interface VisionConfig {
  /** Marks a vision model's config (run folders and checkpoints say which model they hold). */
  kind: 'vit';
  /** Training image side S (pixels); evaluation may use any multiple of `patch`. */
  image: number;
  patch: number;
  classes: number;
  width: number;
  layers: number;
  heads: number;
  mlpWidth: number;
  /** A vision encoding (pe/vision/registry.ts) and its options. */
  pe: { name: string; options: Record<string, unknown> };
  dtype: DType;
  layerNormEps: number;
  initStd: number;
  seed: number;
}

export const VISION_DEFAULTS: VisionConfig = {
  kind: 'vit',
  image: 28,
  patch: 4,
  classes: 10,
  width: 64,
  layers: 2,
  heads: 4,
  mlpWidth: 128,
  pe: { name: 'none', options: {} },
  dtype: 'float32',
  layerNormEps: 1e-5,
  initStd: 0.02,
  seed: 1,
};

/** Fills defaults and refuses unknown keys or bad values (one HypeError naming the key). */
export function parseVisionConfig(raw: unknown): VisionConfig {
  check(
    typeof raw === 'object' && raw !== null && !Array.isArray(raw),
    'argument',
    'a vision config must be an object',
  );
  const keys = Object.keys(VISION_DEFAULTS);
  for (const k of Object.keys(raw)) {
    check(keys.includes(k), 'argument', `vision config has no key '${k}'; its keys are ${keys.join(', ')}`);
  }
  const c = { ...VISION_DEFAULTS, ...(raw as Partial<VisionConfig>) };
  check(c.kind === 'vit', 'argument', `vision config kind must be 'vit', got ${JSON.stringify(c.kind)}`);
  for (const k of ['image', 'patch', 'classes', 'width', 'layers', 'heads', 'mlpWidth', 'seed'] as const) {
    const v = c[k];
    check(Number.isInteger(v) && v > 0, 'argument', `vision config '${k}' must be a positive integer, got ${v}`);
  }
  check(c.image % c.patch === 0, 'argument', `image side ${c.image} must be a multiple of the patch size ${c.patch}`);
  check(c.width % c.heads === 0, 'argument', `width ${c.width} must be a multiple of heads ${c.heads}`);
  check(c.dtype === 'float32' || c.dtype === 'float64', 'argument', `dtype must be float32 or float64, got ${c.dtype}`);
  check(c.layerNormEps > 0 && c.initStd > 0, 'argument', 'layerNormEps and initStd must be positive');
  check(
    typeof c.pe === 'object' && typeof c.pe.name === 'string',
    'argument',
    'vision config pe must be { name, options }',
  );
  const pe = { name: c.pe.name, options: { ...(c.pe.options ?? {}) } };
  getVisionEncoding(pe.name).checkOptions?.(pe.options);
  return { ...c, pe };
}

const ATTENTION_SITES = new Set(['qk-transform', 'score-bias', 'score-rescale', 'data-dependent']);

/** The language model's config with this model's sizes, for the shared parameter layout (vocab = patch pixels). */
function blockConfig(cfg: VisionConfig): ModelConfig {
  const G = cfg.image / cfg.patch;
  return {
    vocab: cfg.patch * cfg.patch,
    width: cfg.width,
    layers: cfg.layers,
    heads: cfg.heads,
    kvHeads: cfg.heads,
    mlpWidth: cfg.mlpWidth,
    pe: cfg.pe,
    trainLength: G * G,
    dtype: cfg.dtype,
    layerNormEps: cfg.layerNormEps,
    initStd: cfg.initStd,
    seed: cfg.seed,
  };
}

interface BlockActs extends BlockBuffers<FloatArray> {
  attend: AttendResult | null;
}

/** Every buffer one (batch, grid) shape needs. */
class Acts {
  readonly patches: FloatArray;
  readonly res: FloatArray[];
  readonly blocks: BlockActs[];
  readonly lnf: FloatArray;
  readonly lnfMean: FloatArray;
  readonly lnfRstd: FloatArray;
  readonly pooled: FloatArray;
  readonly logits: FloatArray;
  readonly losses: FloatArray;
  readonly labels: Int32Array;
  readonly dRes: FloatArray;
  readonly dLn: FloatArray;
  readonly dWide: FloatArray;
  readonly dAtt: FloatArray;
  readonly dHeads: FloatArray;
  readonly dQkv: FloatArray;
  readonly dPooled: FloatArray;
  readonly dLogits: FloatArray;
  readonly dPatches: FloatArray;

  constructor(
    cfg: VisionConfig,
    be: Backend,
    readonly batch: number,
    readonly grid: number,
    /** The blocks' widened operand layout (block.ts blockOperandWidths), or null for plain rows. */
    readonly widths: OperandWidths | null,
  ) {
    const N = batch * grid * grid;
    const { width: C, mlpWidth: F, patch: P } = cfg;
    const a = (n: number) => allocate(cfg.dtype, n);
    this.patches = a(N * P * P);
    this.res = Array.from({ length: cfg.layers + 1 }, () => a(N * C));
    const base = blockConfig(cfg);
    this.blocks = Array.from({ length: cfg.layers }, () => ({
      ...allocateBlockBuffers(base, be, N, widths),
      attend: null,
    }));
    this.lnf = a(N * C);
    this.lnfMean = a(N);
    this.lnfRstd = a(N);
    this.pooled = a(batch * C);
    this.logits = a(batch * cfg.classes);
    this.losses = a(batch);
    this.labels = new Int32Array(batch);
    this.dRes = a(N * C);
    this.dLn = a(N * C);
    this.dWide = a(N * F);
    this.dAtt = a(N * C);
    this.dHeads = a(N * cfg.heads * (widths?.v ?? C / cfg.heads));
    this.dQkv = a(N * 3 * C);
    this.dPooled = a(batch * C);
    this.dLogits = a(batch * cfg.classes);
    this.dPatches = a(N * P * P);
  }
}

export interface VisionOptions {
  /** Use this factory instead of looking cfg.pe.name up in the vision registry (tests). */
  encodingFactory?: EncodingFactory<object>;
}

export class VisionTransformer {
  readonly params: TransformerParams;
  readonly patchBias: ModelParam;
  readonly headWeight: ModelParam;
  readonly headBias: ModelParam;
  readonly blockEncodings: PositionalEncoding[];
  readonly embeddingEncoding: PositionalEncoding | null;
  private readonly allParams: Param[];
  private acts: Acts | null = null;
  private hasLabels = false;
  private readonly headDim: number;

  constructor(
    readonly config: VisionConfig,
    readonly backend: Backend,
    options: VisionOptions = {},
  ) {
    const cfg = config;
    check(
      backend.residence !== 'device',
      'argument',
      `the vision transformer runs on host backends (native, reference); backend '${backend.name}' keeps its ` +
        'tensors on a device, which this model does not support yet',
    );
    this.headDim = cfg.width / cfg.heads;
    const rng = new Rng(cfg.seed);
    const base = blockConfig(cfg);
    this.params = allocateParams(base);
    initialiseParams(this.params, base, rng);
    const p = (name: string, shape: number[], decay: boolean) => ModelParam.host(name, shape, cfg.dtype, decay);
    this.patchBias = p('patch.bias', [cfg.width], false);
    this.headWeight = p('head.weight', [cfg.width, cfg.classes], true);
    this.headBias = p('head.bias', [cfg.classes], false);
    rng.fillNormal(this.headWeight.data, cfg.initStd);

    const factory = options.encodingFactory ?? getVisionEncoding(cfg.pe.name);
    const G = cfg.image / cfg.patch;
    const dims = {
      heads: cfg.heads,
      kvHeads: cfg.heads,
      headDim: this.headDim,
      modelDim: cfg.width,
      trainLength: G * G,
      trainGrid: [G, G],
      embeddingStd: cfg.initStd,
    };
    const inAttention = factory.sites.some((s) => ATTENTION_SITES.has(s));
    const onEmbeddings = factory.sites.includes('embedding');
    // One instance per block (own parameters; also keeps explicit-score scratch per block), one for the embeddings.
    this.embeddingEncoding = onEmbeddings ? factory.create(dims, cfg.pe.options as never, rng) : null;
    this.blockEncodings = Array.from({ length: cfg.layers }, () => factory.create(dims, cfg.pe.options as never, rng));
    const model = listParams(this.params).map((q) => (q === this.params.wte ? renamedParam(q, 'patch.weight') : q));
    const pe: Param[] = [];
    if (this.embeddingEncoding) for (const q of this.embeddingEncoding.params) pe.push(renamedParam(q, `pe.${q.name}`));
    if (inAttention) {
      this.blockEncodings.forEach((enc, i) => {
        for (const q of enc.params) pe.push(renamedParam(q, `blocks.${i}.attn.pe.${q.name}`));
      });
    }
    this.allParams = [...model, this.patchBias, this.headWeight, this.headBias, ...pe];
  }

  parameters(): readonly Param[] {
    return this.allParams;
  }

  parameterCount(): number {
    return this.allParams.reduce((n, q) => n + q.data.length, 0);
  }

  zeroGrad(): void {
    for (const q of this.allParams) q.grad.fill(0);
  }

  /** Logits [B, classes] of the last forward (a view, valid until the next forward). */
  logits(): FloatArray {
    check(this.acts !== null, 'argument', 'logits() needs a forward pass first');
    return this.acts.logits;
  }

  /** Index of the largest logit per image of the last forward. */
  predictions(): Int32Array {
    const A = this.acts;
    check(A !== null, 'argument', 'predictions() needs a forward pass first');
    const K = this.config.classes;
    return Int32Array.from({ length: A.batch }, (_, b) => {
      let best = 0;
      for (let j = 1; j < K; j++) if (A.logits[b * K + j]! > A.logits[b * K + best]!) best = j;
      return best;
    });
  }

  private activations(batch: number, grid: number): Acts {
    if (!this.acts || this.acts.batch !== batch || this.acts.grid !== grid) {
      this.acts = null;
      const widths = blockOperandWidths(blockConfig(this.config), this.blockEncodings);
      this.acts = new Acts(this.config, this.backend, batch, grid, widths);
    }
    return this.acts;
  }

  /**
   * Runs the model on images [B, S, S] (normalised floats, S any multiple of the patch size). With labels [B],
   * returns the mean cross-entropy (nats); without, NaN (logits only).
   */
  forward(images: FloatArray, labels: Int32Array | null, batch: number, side: number): number {
    const cfg = this.config;
    check(Number.isInteger(batch) && batch > 0, 'shape', `batch must be a positive integer, got ${batch}`);
    if (!(Number.isInteger(side) && side > 0 && side % cfg.patch === 0)) {
      throw new HypeError(
        'shape',
        `image side ${side} is not a positive multiple of the patch size ${cfg.patch}; resize the images to a multiple`,
      );
    }
    check(images.length === batch * side * side, 'shape', `images has ${images.length} values, expected B*S*S`);
    check(labels === null || labels.length === batch, 'shape', `labels has ${labels?.length} entries, expected B`);
    const G = side / cfg.patch;
    const L = G * G;
    const A = this.activations(batch, G);
    const N = batch * L;
    const { width: C, heads: H } = cfg;
    const PP = cfg.patch * cfg.patch;
    const be = this.backend;
    const D = this.headDim;
    this.hasLabels = labels !== null;
    if (labels) A.labels.set(labels);

    patchify(images, batch, side, cfg.patch, A.patches);
    linearForward(be, A.patches, this.params.wte.data, this.patchBias.data, A.res[0]!, N, PP, C, 0);
    this.embeddingEncoding?.embed?.(A.res[0]!, batch, L, C, 0, [G, G]);

    const shape: AttentionShape = { batch, heads: H, kvHeads: H, lq: L, lk: L, headDim: D, valueDim: D };
    const base = blockConfig(cfg);
    for (let i = 0; i < cfg.layers; i++) {
      const X = A.blocks[i]!;
      // Bidirectional attention over the patch grid (the encoding reads the grid's shape from the context).
      blockForward(
        be,
        base,
        this.params.blocks[i]!,
        X,
        A.res[i]!,
        A.res[i + 1]!,
        batch,
        L,
        (q, k, v, x) => {
          X.attend = this.blockEncodings[i]!.attend(
            { backend: be, shape, causal: false, queryOffset: 0, grid: [G, G] },
            { q, k, v, x, ...(A.widths ? { widths: A.widths } : {}) },
          );
          return X.attend.out;
        },
        A.widths,
      );
    }
    const { lnfWeight, lnfBias } = this.params;
    be.layerNormForward(
      A.res[cfg.layers]!,
      lnfWeight.data,
      lnfBias.data,
      A.lnf,
      A.lnfMean,
      A.lnfRstd,
      N,
      C,
      cfg.layerNormEps,
    );
    // Mean pooling over the L tokens of each image.
    for (let b = 0; b < batch; b++) {
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let t = 0; t < L; t++) s += A.lnf[(b * L + t) * C + c]!;
        A.pooled[b * C + c] = s / L;
      }
    }
    linearForward(be, A.pooled, this.headWeight.data, this.headBias.data, A.logits, batch, C, cfg.classes, 0);
    if (!labels) return NaN;
    return be.softmaxCrossEntropyForward(A.logits, A.labels, A.losses, batch, cfg.classes);
  }

  /** Gradient of the last forward's mean loss with respect to every parameter, ACCUMULATED into `grad`. */
  backward(): void {
    const A = this.acts;
    check(A !== null && this.hasLabels, 'argument', 'backward() needs a forward pass with labels first');
    const cfg = this.config;
    const be = this.backend;
    const C = cfg.width;
    const B = A.batch;
    const L = A.grid * A.grid;
    const N = B * L;
    const { lnfWeight, lnfBias } = this.params;

    be.softmaxCrossEntropyBackward(A.logits, A.labels, A.dLogits, B, cfg.classes, 1 / B);
    linearBackward(be, A.pooled, this.headWeight, this.headBias, A.dLogits, A.dPooled, B, C, cfg.classes);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < L; t++) {
        for (let c = 0; c < C; c++) A.dLn[(b * L + t) * C + c] = A.dPooled[b * C + c]! / L;
      }
    }
    A.dRes.fill(0);
    be.layerNormBackward(
      A.dLn,
      A.res[cfg.layers]!,
      lnfWeight.data,
      A.lnfMean,
      A.lnfRstd,
      A.dRes,
      lnfWeight.grad,
      lnfBias.grad,
      N,
      C,
    );

    const base = blockConfig(cfg);
    for (let i = cfg.layers - 1; i >= 0; i--) {
      const X = A.blocks[i]!;
      blockBackward(be, base, this.params.blocks[i]!, X, X.attend!, A.res[i]!, A.dRes, A, B, L, A.widths);
    }
    this.embeddingEncoding?.embedBackward?.(A.dRes, B, L, C, 0, [A.grid, A.grid]);
    // The patch gradient itself is not needed (images are data); linearBackward writes it into scratch.
    linearBackward(be, A.patches, this.params.wte, this.patchBias, A.dRes, A.dPatches, N, cfg.patch * cfg.patch, C);
  }
}

/**
 * images [B, S, S] -> patches [B, N, P*P]: N = (S/P)^2 patches in row-major grid order (patch (gy, gx) is token
 * gy * S/P + gx), pixels row-major inside each patch.
 */
export function patchify(
  images: Float32Array | Float64Array,
  B: number,
  S: number,
  P: number,
  out: Float32Array | Float64Array,
): void {
  check(S % P === 0, 'shape', `image side ${S} is not a multiple of the patch size ${P}; resize to a multiple of ${P}`);
  const G = S / P;
  check(out.length === B * G * G * P * P, 'shape', `patch buffer holds ${out.length} values, expected B*N*P*P`);
  for (let b = 0; b < B; b++)
    for (let gy = 0; gy < G; gy++)
      for (let gx = 0; gx < G; gx++) {
        const o = ((b * G + gy) * G + gx) * P * P;
        for (let py = 0; py < P; py++)
          for (let px = 0; px < P; px++) out[o + py * P + px] = images[(b * S + gy * P + py) * S + gx * P + px]!;
      }
}
