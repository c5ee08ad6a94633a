/**
 * The whole byte-level transformer as an ONNX graph whose attention is onnxruntime's own fused
 * com.microsoft MultiHeadAttention: tokens int64 [batch, length] -> logits float32 [batch, length, 256], batch and
 * length symbolic. Each block is the model's own block function (model/block.ts's `block`) run over graph-building
 * ops, so the graph follows Transformer.forward op for op:
 *   Gather (token embedding) -> per block: LayerNormalization, MatMul + Add (fused qkv), Split, the encoding's
 *   attention, MatMul + Add (projection), residual Add, LayerNormalization, MatMul + Add, GELU (tanh
 *   approximation, as ours), MatMul + Add, residual Add -> final LayerNormalization -> MatMul with the transposed
 *   embedding (tied head: one initializer serves the Gather and the head).
 *
 * Attention is the encoding's own (its toOnnx hook, built from this module's primitives: plain attention, an ALiBi
 * style linear bias, rotation, augmented columns); the hooks of the encodings that have one (all causal,
 * MultiHeadAttention with unidirectional = 1):
 *   none   plain MultiHeadAttention, scale 1/sqrt(d).
 *   rope   q and k rotated in the graph (adjacent pairs (2j, 2j+1) as src/pe/rotary.ts, angles position * theta_j
 *          from src/pe/rope.ts's frequencies), then plain MultiHeadAttention.
 *   alibi  MultiHeadAttention with an attention_bias input -m_h |i - l| computed in the graph.
 *   hype   Q and K augmented in the graph with the eta columns (onnx-attention.ts's hypeAugment: Concat, optional
 *          zero padding), NO bias input, no custom operator, and the kernel's scale set to 1/sqrt(d) of the
 *          ORIGINAL head dim (the kernel's default 1/sqrt(d + 2 + pad) would be wrong: SPEC section 4).
 * Grouped-query attention repeats each KV head for its query heads in the graph (MultiHeadAttention wants equal
 * head counts). Weights are written as float32 (an fp64 model is rounded once at export), or with precision 'fp16'
 * as float16: then every activation, MultiHeadAttention's q, k, v included, is float16 (positions, rotations, ALiBi's
 * bias and HyPE's eta columns are computed in float32 and cast), and the logits are cast back to float32. In fp16
 * HyPE appends split columns by default (6 per pair, SPEC section 8; 'plain' = 2 rounded columns, for comparison),
 * pads the head dim to a multiple of 8 unless told otherwise, and pads V to the same width (sliced off after
 * attention) because onnxruntime's WebGPU flash attention requires equal q/k and v head sizes. HyPE's kernel route
 * exports through the concat form (the same function). GELU is composed from primitives so opset 17 suffices (onnxruntime
 * 1.30 also accepts opset 20's Gelu with approximate = 'tanh', which would fuse it).
 */
import { check, HypeError } from '../errors.ts';
import { block, type BlockOps } from '../model/block.ts';
import type { Transformer } from '../model/transformer.ts';
import type { OnnxAttention, OnnxAttentionBuilder } from '../pe/encoding.ts';
import {
  alibiBiasTensor,
  constOf,
  type GraphPrecision,
  hypeAugment,
  multiHeadAttention,
  padValueHeads,
  sliceValueHeads,
  toPrecision,
} from './onnx-attention.ts';
import { OnnxGraph } from './onnx-graph.ts';
import { OnnxDataType } from './onnx-proto.ts';
import type { FloatArray } from '../tensor.ts';

/**
 * The registered encodings whose instances have a toOnnx hook (for messages and documentation; the exporter asks
 * the hook itself, and a test keeps this list equal to the registry's).
 */
export const ONNX_ENCODINGS = ['none', 'rope', 'alibi', 'hype'] as const;

export interface OnnxExportOptions {
  /**
   * HyPE's softmax scale: 'explicit' (right) sets 1/sqrt(d); 'kernel-default' leaves the attribute out so the
   * kernel uses 1/sqrt(augmented head dim) — wrong, offered only to measure how wrong.
   */
  hypeScale?: 'explicit' | 'kernel-default';
  /**
   * HyPE: pad the augmented head dim with zero columns to a multiple of this (default: the encoding's option in
   * fp32, 8 in fp16).
   */
  padMultiple?: number;
  /** Element type of weights and activations (default fp32); logits are float32 either way. */
  precision?: GraphPrecision;
  /** HyPE in fp16: 'split' (default) hi/lo columns, or 'plain' (2 rounded columns per pair: the bias blurs). */
  columns?: 'plain' | 'split';
}

/** The largest --pad accepted: FlashAttention-style kernels take head dims <= 256, so a multiple above that only wastes. */
export const MAX_PAD_MULTIPLE = 256;

export interface OnnxExport {
  bytes: Uint8Array;
  /** What the graph contains, for the CLI's summary and the README. */
  summary: {
    encoding: string;
    layers: number;
    heads: number;
    headDim: number;
    /** Head dim MultiHeadAttention sees for Q and K (HyPE: d + 2 pairs + padding). */
    qkHeadDim: number;
    scale: number | 'kernel default';
    attentionBias: boolean;
    opset: number;
    precision: GraphPrecision;
    /** HyPE: 'plain' or 'split' columns; null for other encodings. */
    columns: 'plain' | 'split' | null;
  };
}

const OPSET = 17;
const GELU_C = Math.sqrt(2 / Math.PI);
const GELU_A = 0.044715;

export function exportOnnx(model: Transformer, options: OnnxExportOptions = {}): OnnxExport {
  const cfg = model.config;
  const pe = cfg.pe.name;
  if (!model.blockEncodings.every((enc) => enc.toOnnx)) {
    throw new HypeError(
      'argument',
      `ONNX export supports the encodings ${ONNX_ENCODINGS.join(', ')}; this run uses '${pe}' (its position terms ` +
        'have no MultiHeadAttention form here); export a run trained with one of those',
    );
  }
  const precision = options.precision ?? 'fp32';
  check(
    precision === 'fp32' || precision === 'fp16',
    'argument',
    `ONNX export: precision must be fp32 or fp16, got ${JSON.stringify(precision)}`,
  );
  const columns = options.columns ?? 'split';
  check(
    columns === 'plain' || columns === 'split',
    'argument',
    `ONNX export: columns must be 'plain' or 'split', got ${JSON.stringify(columns)}`,
  );
  if (options.padMultiple !== undefined) checkPadMultiple(options.padMultiple);
  const { width: C, heads: H, kvHeads: Hkv, layers, vocab: V } = cfg;
  const D = C / H;
  const g = new OnnxGraph(`hype-${pe}`);
  const cf = (data: ArrayLike<number>, dims: readonly number[], name?: string) =>
    constOf(g, precision, data, dims, name);
  const tokens = g.input('tokens', ['batch', 'length'], OnnxDataType.INT64);
  const P = model.params;
  const wte = cf(P.wte.data, [V, C], 'wte');
  let x = g.op('Gather', [wte, tokens], { axis: 0 });

  // What the summary reports of the encoding's attention (the last block's, the same for every block).
  let facts: OnnxAttention = { out: '', qkHeadDim: D, attentionBias: false, columns: null };
  let scale: number | 'kernel default' = 1 / Math.sqrt(D);

  const layerNorm = (input: string, w: ArrayLike<number>, b: ArrayLike<number>) =>
    g.op('LayerNormalization', [input, cf(w, [C]), cf(b, [C])], { axis: -1, epsilon: cfg.layerNormEps }, ['epsilon']);
  // The model's block function (model/block.ts) over graph-building ops: values are [batch, length, columns].
  const ops: BlockOps<string, FloatArray> = {
    layerNorm: (input, w, b) => layerNorm(input, w.data, b.data),
    linear(input, w, b, _into, residual) {
      const y = g.op('Add', [g.op('MatMul', [input, cf(w.data, w.shape)]), cf(b.data, b.shape)]);
      return residual === undefined ? y : g.op('Add', [residual, y]);
    },
    splitQkv(qkv) {
      const [q, k, v] = g.node('Split', [qkv, g.constInt64([H * D, Hkv * D, Hkv * D])], { axis: 2 }, { outputs: 3 });
      return [q!, k!, v!];
    },
    // MultiHeadAttention already returns token layout.
    headsToTokens: (o) => o,
    gelu: (input) => gelu(g, input, precision),
  };

  for (let i = 0; i < layers; i++) {
    x = block(ops, P.blocks[i]!, x, (q0, k0, v0) => {
      const builder: OnnxAttentionBuilder = {
        heads: H,
        headDim: D,
        precision,
        q: q0,
        k: repeatKvHeads(g, k0, H, Hkv, D),
        v: repeatKvHeads(g, v0, H, Hkv, D),
        attention(q, k, v, o) {
          const bias = o?.linearSlopes ? toPrecision(g, precision, alibiBiasTensor(g, q0, o.linearSlopes)) : undefined;
          return multiHeadAttention(g, q, k, v, {
            heads: H,
            scale: 1 / Math.sqrt(D),
            causal: true,
            ...(bias ? { attentionBias: bias } : {}),
          });
        },
        rotate: (t, freqs) => rotate(g, t, H, D, freqs, precision),
        hyperbolicAttention(p) {
          const aug = hypeAugment(g, q0, builder.k, {
            heads: H,
            headDim: D,
            tau: p.tau,
            mu: p.mu,
            pairs: p.pairs,
            shift: p.shift === 'centre' ? 'center' : 0,
            padMultiple: options.padMultiple ?? (precision === 'fp16' ? 8 : p.multiple),
            precision,
            columns,
          });
          if (options.hypeScale === 'kernel-default') scale = 'kernel default';
          // fp16 targets GPU flash kernels, which need V as wide as Q and K (padValueHeads); fp32 stays as it was.
          const vWidth = precision === 'fp16' ? aug.width : D;
          const wide = multiHeadAttention(g, aug.qHat, aug.kHat, padValueHeads(g, builder.v, H, D, vWidth, precision), {
            heads: H,
            causal: true,
            ...(options.hypeScale === 'kernel-default' ? {} : { scale: 1 / Math.sqrt(D) }),
          });
          return {
            out: sliceValueHeads(g, wide, H, D, vWidth),
            qkHeadDim: aug.width,
            attentionBias: false,
            columns: precision === 'fp16' ? columns : 'plain',
          };
        },
      };
      facts = model.blockEncodings[i]!.toOnnx!(builder);
      return facts.out;
    });
  }
  const lnf = layerNorm(x, P.lnfWeight.data, P.lnfBias.data);
  const head = g.op('MatMul', [lnf, g.op('Transpose', [wte], { perm: [1, 0] })]);
  g.node(precision === 'fp16' ? 'Cast' : 'Identity', [head], precision === 'fp16' ? { to: OnnxDataType.FLOAT } : {}, {
    names: ['logits'],
  });
  g.output('logits', ['batch', 'length', V]);
  return {
    bytes: g.toBytes({ opset: OPSET, microsoft: true }),
    summary: {
      encoding: pe,
      layers,
      heads: H,
      headDim: D,
      qkHeadDim: facts.qkHeadDim,
      scale,
      attentionBias: facts.attentionBias,
      opset: OPSET,
      precision,
      columns: facts.columns,
    },
  };
}

/** Refuses a pad multiple that is not an integer in [1, MAX_PAD_MULTIPLE]. */
export function checkPadMultiple(m: number): void {
  check(
    Number.isInteger(m) && m >= 1 && m <= MAX_PAD_MULTIPLE,
    'argument',
    `the head-dim pad multiple must be an integer from 1 to ${MAX_PAD_MULTIPLE} (kernels want 4 or 8), got ${m}`,
  );
}

/** [B, L, Hkv * D] -> [B, L, H * D], each KV head repeated for the H / Hkv query heads that read it. */
function repeatKvHeads(g: OnnxGraph, x: string, H: number, Hkv: number, D: number): string {
  if (H === Hkv) return x;
  const x5 = g.op('Reshape', [x, g.constInt64([0, 0, Hkv, 1, D])]);
  const shape = g.op('Shape', [x5]);
  const bl = g.op('Slice', [shape, g.constInt64([0]), g.constInt64([2])]);
  const target = g.op('Concat', [bl, g.constInt64([Hkv, H / Hkv, D])], { axis: 0 });
  return g.op('Reshape', [g.op('Expand', [x5, target]), g.constInt64([0, 0, H * D])]);
}

/**
 * RoPE in the graph for x [B, L, H * D] at positions 0 .. L - 1: x' = x * cos + swap(x) * sin_signed, where swap
 * exchanges the dims of each pair (2j, 2j+1) and sin_signed is -sin on 2j, +sin on 2j+1 (rotary.ts's rotation);
 * dims past the rotated pairs get angle 0 (cos 1, sin 0): unrotated.
 */
function rotate(g: OnnxGraph, x: string, H: number, D: number, freqs: Float64Array, precision: GraphPrecision): string {
  const pairs = Math.min(freqs.length, Math.floor(D / 2));
  const freqPerDim = Array.from({ length: D }, (_, c) => (c < 2 * pairs ? freqs[Math.floor(c / 2)]! : 0));
  const signs = Array.from({ length: D }, (_, c) => (c < 2 * pairs ? (c % 2 === 0 ? -1 : 1) : 0));
  const perm = Array.from({ length: D }, (_, c) => (c < 2 * pairs ? c ^ 1 : c));
  const shape = g.op('Shape', [x]);
  const len = g.op('Cast', [g.op('Gather', [shape, g.constInt64([1], [])], { axis: 0 })], { to: OnnxDataType.FLOAT });
  const pos = g.op('Reshape', [
    g.op('Range', [g.constFloat([0], []), len, g.constFloat([1], [])]),
    g.constInt64([-1, 1]),
  ]);
  const angle = g.op('Mul', [pos, g.constFloat(freqPerDim, [1, D])]);
  const cos = toPrecision(g, precision, g.op('Reshape', [g.op('Cos', [angle]), g.constInt64([1, -1, 1, D])]));
  const sin = toPrecision(
    g,
    precision,
    g.op('Reshape', [g.op('Mul', [g.op('Sin', [angle]), g.constFloat(signs, [1, D])]), g.constInt64([1, -1, 1, D])]),
  );
  const x4 = g.op('Reshape', [x, g.constInt64([0, 0, H, D])]);
  const swapped = g.op('Gather', [x4, g.constInt64(perm)], { axis: 3 });
  const out = g.op('Add', [g.op('Mul', [x4, cos]), g.op('Mul', [swapped, sin])]);
  return g.op('Reshape', [out, g.constInt64([0, 0, H * D])]);
}

/** GELU, tanh approximation, from primitive ops: 0.5 x (1 + tanh(c (x + 0.044715 x^3))), exactly ours. */
function gelu(g: OnnxGraph, x: string, precision: GraphPrecision): string {
  const c = (v: number) => constOf(g, precision, [v], []);
  const x3 = g.op('Mul', [g.op('Mul', [x, x]), x]);
  const inner = g.op('Mul', [g.op('Add', [x, g.op('Mul', [x3, c(GELU_A)])]), c(GELU_C)]);
  const onePlus = g.op('Add', [g.op('Tanh', [inner]), c(1)]);
  return g.op('Mul', [g.op('Mul', [x, onePlus]), c(0.5)]);
}
