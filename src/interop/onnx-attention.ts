/**
 * Attention subgraphs for export, built so that onnxruntime's own fused com.microsoft MultiHeadAttention does the
 * work. HyPE needs no bias input and no custom operator: its eta columns are computed from positions inside the
 * graph and concatenated to Q and K (SPEC section 1), and the kernel is given scale 1/sqrt(d) of the ORIGINAL head
 * dim (SPEC section 4: its default would be 1/sqrt(d + 2n)). Sequence length stays symbolic, so one exported model
 * serves every length.
 *
 * Half precision (SPEC section 8): in an fp16 graph the eta columns are still computed in fp32 from the positions,
 * then either rounded once to fp16 ('plain', 2 columns per pair: the bias blurs by ~|tau| u16) or split into
 * hi = fp16(x), lo = fp16(x - hi) laid out as numerics/split-columns.ts's expandColumns does (query [hi, hi, lo],
 * key [hi, lo, hi] per column: 6 columns per pair), so a kernel with exact fp16 products and fp32 accumulation
 * recovers the bias to O(|tau| u16^2). The split is the same arithmetic as splitColumns, done by Cast nodes at run
 * time because the sequence length is symbolic (tests compare the two).
 *
 * Tensors use MultiHeadAttention's layout: q, k [B, L, H * d], v [B, L, H * dv].
 */
import type { OnnxGraph } from './onnx-graph.ts';
import { OnnxDataType } from './onnx-proto.ts';

/** The element type of an exported graph's activations and weights. */
export type GraphPrecision = 'fp32' | 'fp16';

/** A float constant in the graph's element type. */
export function constOf(
  g: OnnxGraph,
  precision: GraphPrecision,
  data: ArrayLike<number>,
  dims: readonly number[],
  name?: string,
): string {
  return precision === 'fp16' ? g.constFloat16(data, dims, name) : g.constFloat(data, dims, name);
}

/** Casts a float32 tensor to the graph's element type (a no-op for fp32). */
export function toPrecision(g: OnnxGraph, precision: GraphPrecision, x: string): string {
  return precision === 'fp16' ? g.op('Cast', [x], { to: OnnxDataType.FLOAT16 }) : x;
}

export interface HypeGraphParams {
  heads: number;
  headDim: number;
  /** Per head and pair, row-major [heads, pairs]: a = sum_k tau_hk sinh(mu_hk (i - l)). */
  mu: ArrayLike<number>;
  tau: ArrayLike<number>;
  pairs: number;
  /** Position shift c: a number, or 'center' for c = (L - 1) / 2 of the running length (SPEC section 4). */
  shift: number | 'center';
  /** Pad the augmented head dim with zero columns up to a multiple of this (1 = no padding). */
  padMultiple?: number;
  /** Element type of q, k and of the columns appended (default fp32). */
  precision?: GraphPrecision;
  /** fp16 only: 'split' (default there) for hi/lo columns, 'plain' for the 2 rounded columns per pair. */
  columns?: 'plain' | 'split';
}

/** Positions 0 .. L-1 minus the shift, as float [L], where L is the length of `x` [B, L, *]. */
export function shiftedPositions(g: OnnxGraph, x: string, shift: number | 'center'): string {
  const shape = g.op('Shape', [x]);
  const lenI = g.op('Gather', [shape, g.constInt64([1], [])], { axis: 0 });
  const len = g.op('Cast', [lenI], { to: 1 });
  const pos = g.op('Range', [g.constFloat([0], []), len, g.constFloat([1], [])]);
  const c =
    shift === 'center'
      ? g.op('Mul', [g.op('Sub', [len, g.constFloat([1], [])]), g.constFloat([0.5], [])])
      : g.constFloat([shift], []);
  return g.op('Sub', [pos, c]);
}

/** Interleaves a and b [1, L, H, n] into [1, L, H, 2n] as (a_0, b_0, a_1, b_1, ...). */
function interleavePairs(g: OnnxGraph, a: string, b: string, heads: number, pairs: number): string {
  const axis = g.constInt64([4]);
  const stacked = g.op('Concat', [g.op('Unsqueeze', [a, axis]), g.op('Unsqueeze', [b, axis])], { axis: 4 });
  return g.op('Reshape', [stacked, g.constInt64([1, -1, heads, 2 * pairs])]);
}

/** The eta^Q and eta^K columns [1, L, H, 2 * pairs] for the length of `x` (SPEC section 1, stacked per section 6). */
export function hypeEtaColumns(g: OnnxGraph, x: string, p: HypeGraphParams): { etaQ: string; etaK: string } {
  const { heads, pairs } = p;
  const pos = g.op('Reshape', [shiftedPositions(g, x, p.shift), g.constInt64([1, -1, 1, 1])]);
  const muX = g.op('Mul', [pos, g.constFloat(p.mu, [1, 1, heads, pairs])]);
  const ePos = g.op('Exp', [muX]);
  const eNeg = g.op('Exp', [g.op('Neg', [muX])]);
  const amp = Array.from({ length: heads * pairs }, (_, j) => (p.tau[j]! * Math.sqrt(p.headDim)) / 2);
  const ampT = g.constFloat(amp, [1, 1, heads, pairs]);
  const etaQ = interleavePairs(g, g.op('Mul', [ampT, eNeg]), g.op('Mul', [ampT, ePos]), heads, pairs);
  const etaK = interleavePairs(g, g.op('Neg', [ePos]), eNeg, heads, pairs);
  return { etaQ, etaK };
}

/** x [B, L, H*d] ++ eta [B or 1, L, H, e] per head (+ zero padding) -> [B, L, H*(d+e+pad)]. */
function appendPerHead(
  g: OnnxGraph,
  x: string,
  eta: string,
  heads: number,
  headDim: number,
  extra: number,
  pad: number,
  precision: GraphPrecision,
): string {
  const x4 = g.op('Reshape', [x, g.constInt64([0, 0, heads, headDim])]);
  const shape = g.op('Shape', [x4]);
  const bl = g.op('Slice', [shape, g.constInt64([0]), g.constInt64([2])]);
  const etaShape = g.op('Concat', [bl, g.constInt64([heads, extra])], { axis: 0 });
  const parts = [x4, g.op('Expand', [eta, etaShape])];
  if (pad > 0) {
    const padShape = g.op('Concat', [bl, g.constInt64([heads, pad])], { axis: 0 });
    parts.push(g.op('Expand', [constOf(g, precision, [0], [1, 1, 1, 1]), padShape]));
  }
  const cat = g.op('Concat', parts, { axis: 3 });
  return g.op('Reshape', [cat, g.constInt64([0, 0, heads * (headDim + extra + pad)])]);
}

/** Qhat, Khat for MultiHeadAttention and the head size they have (queryScale: see HypeGraphParams). */
export function hypeAugment(
  g: OnnxGraph,
  q: string,
  k: string,
  p: HypeGraphParams & { queryScale?: string },
): { qHat: string; kHat: string; width: number } {
  const eta = hypeEtaColumns(g, q, p);
  // A per-query amplitude s [B, L, H] multiplies every eta^Q column of its head (gated HyPE).
  const etaQ = p.queryScale ? g.op('Mul', [eta.etaQ, g.op('Unsqueeze', [p.queryScale, g.constInt64([3])])]) : eta.etaQ;
  return augmentColumns(g, q, k, etaQ, eta.etaK, 2 * p.pairs, p);
}

export interface ColumnGraphParams {
  heads: number;
  headDim: number;
  padMultiple?: number;
  precision?: GraphPrecision;
  columns?: 'plain' | 'split';
}

/**
 * q, k [B, L, H * d] with float32 columns cq, ck [B or 1, L, H, r] appended per head (the query columns already in
 * kernel units, i.e. times sqrt(d)), in the graph's precision: rounded once, or in fp16 split into hi/lo parts
 * (3r columns), then zero padding to the multiple. Qhat . Khat = q . k + cq . ck (+ O(u16^2) when split).
 */
export function augmentColumns(
  g: OnnxGraph,
  q: string,
  k: string,
  cq: string,
  ck: string,
  r: number,
  p: ColumnGraphParams,
): { qHat: string; kHat: string; width: number } {
  const precision = p.precision ?? 'fp32';
  const split = precision === 'fp16' && (p.columns ?? 'split') === 'split';
  const extra = (split ? 3 : 1) * r;
  const m = p.padMultiple ?? 1;
  const pad = (m - ((p.headDim + extra) % m)) % m;
  const cols = (x: string, side: 'query' | 'key') =>
    split ? splitHalfColumns(g, x, side, p.heads, r) : toPrecision(g, precision, x);
  return {
    qHat: appendPerHead(g, q, cols(cq, 'query'), p.heads, p.headDim, extra, pad, precision),
    kHat: appendPerHead(g, k, cols(ck, 'key'), p.heads, p.headDim, extra, pad, precision),
    width: p.headDim + extra + pad,
  };
}

/**
 * float32 columns x [B or 1, L, H, r] -> float16 [B or 1, L, H, 3r]: per column [hi, hi, lo] (query side) or [hi, lo, hi]
 * (key side) with hi = fp16(x), lo = fp16(x - hi), the layout of numerics/split-columns.ts's expandColumns.
 */
function splitHalfColumns(g: OnnxGraph, x: string, side: 'query' | 'key', heads: number, r: number): string {
  const hi = g.op('Cast', [x], { to: OnnxDataType.FLOAT16 });
  const rest = g.op('Sub', [x, g.op('Cast', [hi], { to: OnnxDataType.FLOAT })]);
  const lo = g.op('Cast', [rest], { to: OnnxDataType.FLOAT16 });
  const axis = g.constInt64([4]);
  const slots = (side === 'query' ? [hi, hi, lo] : [hi, lo, hi]).map((t) => g.op('Unsqueeze', [t, axis]));
  return g.op('Reshape', [g.op('Concat', slots, { axis: 4 }), g.constInt64([0, 0, heads, 3 * r])]);
}

/**
 * v [B, L, H * dv] zero-padded per head to [B, L, H * width]: onnxruntime's WebGPU flash attention runs only when
 * the value head size equals the query/key head size (CanApplyFlashAttention), so HyPE's wider Q, K need a wider V.
 */
export function padValueHeads(
  g: OnnxGraph,
  v: string,
  heads: number,
  dv: number,
  width: number,
  precision: GraphPrecision,
): string {
  if (width === dv) return v;
  const v4 = g.op('Reshape', [v, g.constInt64([0, 0, heads, dv])]);
  const bl = g.op('Slice', [g.op('Shape', [v4]), g.constInt64([0]), g.constInt64([2])]);
  const padShape = g.op('Concat', [bl, g.constInt64([heads, width - dv])], { axis: 0 });
  const zeros = g.op('Expand', [constOf(g, precision, [0], [1, 1, 1, 1]), padShape]);
  const cat = g.op('Concat', [v4, zeros], { axis: 3 });
  return g.op('Reshape', [cat, g.constInt64([0, 0, heads * width])]);
}

/** The inverse of padValueHeads on attention's output: [B, L, H * width] -> [B, L, H * dv]. */
export function sliceValueHeads(g: OnnxGraph, o: string, heads: number, dv: number, width: number): string {
  if (width === dv) return o;
  const o4 = g.op('Reshape', [o, g.constInt64([0, 0, heads, width])]);
  const kept = g.op('Slice', [o4, g.constInt64([0]), g.constInt64([dv]), g.constInt64([3])]);
  return g.op('Reshape', [kept, g.constInt64([0, 0, heads * dv])]);
}

/** ALiBi's bias [1, H, L, L] = -m_h |i - l|, computed in the graph from the length of `x` [B, L, *]. */
export function alibiBiasTensor(g: OnnxGraph, x: string, slopes: ArrayLike<number>): string {
  const pos = shiftedPositions(g, x, 0);
  const rows = g.op('Reshape', [pos, g.constInt64([1, 1, -1, 1])]);
  const cols = g.op('Reshape', [pos, g.constInt64([1, 1, 1, -1])]);
  const dist = g.op('Abs', [g.op('Sub', [rows, cols])]);
  const neg = Array.from(slopes, (m) => -m);
  return g.op('Mul', [dist, g.constFloat(neg, [1, neg.length, 1, 1])]);
}

export interface MhaOptions {
  heads: number;
  /** Softmax scale; omit to leave onnxruntime's default 1/sqrt(head size of q) (wrong for HyPE: tests show it). */
  scale?: number;
  causal: boolean;
  attentionBias?: string;
}

/** onnxruntime's fused com.microsoft MultiHeadAttention; returns [B, L, H * dv]. */
export function multiHeadAttention(g: OnnxGraph, q: string, k: string, v: string, o: MhaOptions): string {
  const attrs: Record<string, number> = { num_heads: o.heads, unidirectional: o.causal ? 1 : 0 };
  if (o.scale !== undefined) attrs.scale = o.scale;
  const inputs = [q, k, v];
  if (o.attentionBias) inputs.push('', '', o.attentionBias); // bias and key_padding_mask omitted
  return g.node('MultiHeadAttention', inputs, attrs, { domain: 'com.microsoft', floatAttrs: ['scale'] })[0]!;
}
