/**
 * THE transformer block, forward: one pre-LayerNorm block, used by training (Transformer.forward, the vision
 * transformer's forward) and by cached decoding (CachedDecoder.step), which differ only in where attention gets its
 * keys and values (and whether it is causal),
 *   ln1 = LN(x);  q, k, v = split(ln1 Wqkv + bqkv);  att = merge(attention(q, k, v, ln1))
 *   mid = x + att Wo + bo;  ln2 = LN(mid);  out = mid + gelu(ln2 W1 + b1) W2 + b2
 * and by ONNX export (interop/onnx-export.ts), which runs the same function over graph-building ops. `block` is
 * written once over BlockOps; blockForward runs it on a backend. Host row-major layouts: token activations [B, L, C]
 * (rows = B * L); q [B, H, L, D], k and v [B, Hkv, L, D]; attention's output [B, H, L, D]. With an encoding's
 * widened operands (OperandWidths, encoding.ts) the head rows of q and k hold `qk` values and those of v and of
 * attention's output (and its gradient) `v`, of which the block writes and reads the first D. Every buffer is the
 * caller's (Transformer keeps them for its backward; the decoder allocates per step). blockBackward is its
 * gradient, shared by both trained models (language and vision).
 */
import type { Backend } from '../backend/backend.ts';
import type { AttendResult, OperandWidths, Param, PositionalEncoding } from '../pe/encoding.ts';
import type { ModelConfig } from './config.ts';
import { qkvWidth, type BlockParams, type ModelParam } from './parameters.ts';

/** Every activation a block's forward writes (its backward reads them back). */
export interface BlockBuffers<T> {
  ln1: T;
  ln1Mean: T;
  ln1Rstd: T;
  qkv: T;
  q: T;
  k: T;
  v: T;
  /** Attention output back in token layout [B, L, C]. */
  att: T;
  /** Residual stream after the attention half of the block. */
  resMid: T;
  ln2: T;
  ln2Mean: T;
  ln2Rstd: T;
  /** MLP pre-activation and its GELU. */
  fc: T;
  fcAct: T;
}

/**
 * The widened operand layout every block's encoding asks for (operandWidths), or null when one asks for none or
 * they differ (then the blocks pass plain rows, which every encoding takes).
 */
export function blockOperandWidths<T, I>(
  cfg: ModelConfig,
  encodings: readonly PositionalEncoding<T, I>[],
): OperandWidths | null {
  const all = encodings.map((e) => e.operandWidths?.(cfg.dtype) ?? null);
  const first = all[0] ?? null;
  return first && all.every((w) => w?.qk === first.qk && w.v === first.v) ? first : null;
}

/** Allocates a block's buffers for `rows` tokens through the backend (q, k, v widened when `widths` says so). */
export function allocateBlockBuffers<T, I>(
  cfg: ModelConfig,
  be: Backend<T, I>,
  rows: number,
  widths: OperandWidths | null = null,
): BlockBuffers<T> {
  const a = (n: number) => be.allocate(cfg.dtype, n, 'an activation');
  const N = rows;
  const C = cfg.width;
  const D = C / cfg.heads;
  return {
    ln1: a(N * C),
    ln1Mean: a(N),
    ln1Rstd: a(N),
    qkv: a(N * qkvWidth(cfg)),
    q: a(N * cfg.heads * (widths?.qk ?? D)),
    k: a(N * cfg.kvHeads * (widths?.qk ?? D)),
    v: a(N * cfg.kvHeads * (widths?.v ?? D)),
    att: a(N * C),
    resMid: a(N * C),
    ln2: a(N * C),
    ln2Mean: a(N),
    ln2Rstd: a(N),
    fc: a(N * cfg.mlpWidth),
    fcAct: a(N * cfg.mlpWidth),
  };
}

/**
 * Attention inside a block: given the new rows' q [B, H, L, D], k, v [B, Hkv, L, D] and the normed input ln1
 * [B, L, C], returns the output [B, H, L, D] (training: the encoding's attend; decoding: over the cache).
 * (A graph implementation of BlockOps may keep other layouts: ONNX export's are [B, L, heads * D] throughout.)
 */
export type BlockAttention<T> = (q: T, k: T, v: T, ln1: T) => T;

/**
 * The operations a block is made of, over values V (backend handles on the host; graph value names in ONNX
 * export) and parameters ModelParam<W>. `into` names the BlockBuffers slot (or xOut, 'out') a host implementation
 * writes; a graph implementation ignores it.
 */
export interface BlockOps<V, W> {
  layerNorm(x: V, w: ModelParam<W>, b: ModelParam<W>, into: 'ln1' | 'ln2'): V;
  /** x W + b for W [in, out] (shapes from the parameters), plus `residual` when given. */
  linear(x: V, w: ModelParam<W>, b: ModelParam<W>, into: 'qkv' | 'resMid' | 'fc' | 'out', residual?: V): V;
  /** The fused projection's columns -> q, k, v in attention's layout. */
  splitQkv(qkv: V): [V, V, V];
  /** Attention's output -> token layout [B, L, C]. */
  headsToTokens(o: V): V;
  /** GELU, tanh approximation. */
  gelu(x: V): V;
}

/** THE block (module comment): returns block(x), x unchanged. Host and graph implementations of `ops` run it. */
export function block<V, W>(ops: BlockOps<V, W>, P: BlockParams<W>, x: V, attention: BlockAttention<V>): V {
  const ln1 = ops.layerNorm(x, P.ln1Weight, P.ln1Bias, 'ln1');
  const [q, k, v] = ops.splitQkv(ops.linear(ln1, P.qkvWeight, P.qkvBias, 'qkv'));
  const att = ops.headsToTokens(attention(q, k, v, ln1));
  const mid = ops.linear(att, P.projWeight, P.projBias, 'resMid', x);
  const ln2 = ops.layerNorm(mid, P.ln2Weight, P.ln2Bias, 'ln2');
  const fc = ops.gelu(ops.linear(ln2, P.fcWeight, P.fcBias, 'fc'));
  return ops.linear(fc, P.fcProjWeight, P.fcProjBias, 'out', mid);
}

/**
 * The block on a backend: xOut = block(xIn) for B sequences of L new tokens, every activation written into X
 * (training keeps them for its backward); xIn is left unchanged. `widths`: X's operand layout (allocateBlockBuffers).
 */
export function blockForward<T, I>(
  be: Backend<T, I>,
  cfg: ModelConfig,
  P: BlockParams<T>,
  X: BlockBuffers<T>,
  xIn: T,
  xOut: T,
  B: number,
  L: number,
  attention: BlockAttention<T>,
  widths: OperandWidths | null = null,
): void {
  block(new HostBlockOps(be, cfg, X, xOut, B, L, widths), P, xIn, attention);
}

/** BlockOps as backend calls into the caller's buffers (the calls the block made before it was generic). */
class HostBlockOps<T, I> implements BlockOps<T, T> {
  /** Token rows, B * L. */
  private readonly N: number;

  constructor(
    private readonly be: Backend<T, I>,
    private readonly cfg: ModelConfig,
    private readonly X: BlockBuffers<T>,
    private readonly xOut: T,
    private readonly B: number,
    private readonly L: number,
    private readonly widths: OperandWidths | null,
  ) {
    this.N = B * L;
  }

  layerNorm(x: T, w: ModelParam<T>, b: ModelParam<T>, into: 'ln1' | 'ln2'): T {
    const X = this.X;
    const [out, mean, rstd] = into === 'ln1' ? [X.ln1, X.ln1Mean, X.ln1Rstd] : [X.ln2, X.ln2Mean, X.ln2Rstd];
    this.be.layerNormForward(x, w.data, b.data, out, mean, rstd, this.N, this.cfg.width, this.cfg.layerNormEps);
    return out;
  }

  linear(x: T, w: ModelParam<T>, b: ModelParam<T>, into: 'qkv' | 'resMid' | 'fc' | 'out', residual?: T): T {
    const y = into === 'out' ? this.xOut : this.X[into];
    const [nIn, nOut] = w.shape as [number, number];
    const n = this.N * nOut;
    if (residual !== undefined) this.be.copyRows(residual, 0, n, y, 0, n, 1, n);
    linearForward(this.be, x, w.data, b.data, y, this.N, nIn, nOut, residual === undefined ? 0 : 1);
    return y;
  }

  splitQkv(qkv: T): [T, T, T] {
    const { X, cfg, widths } = this;
    const D = cfg.width / cfg.heads;
    this.be.splitQkv(qkv, X.q, X.k, X.v, this.B, this.L, cfg.heads, cfg.kvHeads, D, widths?.qk, widths?.v);
    return [X.q, X.k, X.v];
  }

  headsToTokens(o: T): T {
    const cfg = this.cfg;
    const D = cfg.width / cfg.heads;
    this.be.headsToTokens(o, this.X.att, this.B, cfg.heads, this.L, D, this.widths?.v);
    return this.X.att;
  }

  gelu(x: T): T {
    this.be.geluForward(x, this.X.fcAct, this.N * this.cfg.mlpWidth);
    return this.X.fcAct;
  }
}

/** y = beta y + x W + b for x [N, in], W [in, out] (every linear layer of the model). */
export function linearForward<T, I>(
  be: Backend<T, I>,
  x: T,
  w: T,
  b: T,
  y: T,
  N: number,
  nIn: number,
  nOut: number,
  beta: 0 | 1,
): void {
  be.gemm(false, false, N, nOut, nIn, 1, x, nIn, w, nOut, beta, y, nOut);
  be.biasAdd(y, b, N, nOut);
}

/** For y = x W + b: W.grad += x^T dy, b.grad += colsum(dy), dx = dy W^T (dx OVERWRITTEN). */
export function linearBackward<T, I>(
  be: Backend<T, I>,
  x: T,
  w: Param<T>,
  b: Param<T>,
  dy: T,
  dx: T,
  N: number,
  nIn: number,
  nOut: number,
): void {
  be.gemm(true, false, nIn, nOut, N, 1, x, nIn, dy, nOut, 1, w.grad, nOut);
  be.biasBackward(dy, b.grad, N, nOut);
  be.gemm(false, true, N, nIn, nOut, 1, dy, nOut, w.data, nOut, 0, dx, nIn);
}

/** Gradient scratch a block's backward overwrites (shared by all layers: the backward walks them one at a time). */
export interface BlockGradBuffers<T> {
  /** [rows, C] */
  dLn: T;
  /** [rows, mlpWidth] */
  dWide: T;
  /** [rows, C] */
  dAtt: T;
  /** [B, H, L, D], rows of widths.v with widened operands (the extra columns stay zero: never written) */
  dHeads: T;
  /** [rows, qkvWidth] */
  dQkv: T;
}

/**
 * The block's gradient, the forward (blockForward) walked in reverse: on entry dRes holds d loss / d xOut, on exit
 * d loss / d xIn (the residual path passes it straight through, each half adds its own term); parameter gradients
 * ACCUMULATE. X holds that forward's activations and `attend` its attention (whose backward also accumulates the
 * encoding's parameter gradients); `widths` is X's operand layout, as in blockForward.
 */
export function blockBackward<T, I>(
  be: Backend<T, I>,
  cfg: ModelConfig,
  P: BlockParams<T>,
  X: BlockBuffers<T>,
  attend: AttendResult<T>,
  xIn: T,
  dRes: T,
  S: BlockGradBuffers<T>,
  B: number,
  L: number,
  widths: OperandWidths | null = null,
): void {
  const N = B * L;
  const C = cfg.width;
  const F = cfg.mlpWidth;
  const D = C / cfg.heads;
  // MLP: xOut = resMid + gelu(ln2 W1 + b1) W2 + b2.
  linearBackward(be, X.fcAct, P.fcProjWeight, P.fcProjBias, dRes, S.dWide, N, F, C);
  be.geluBackward(X.fc, S.dWide, S.dWide, N * F);
  linearBackward(be, X.ln2, P.fcWeight, P.fcBias, S.dWide, S.dLn, N, C, F);
  be.layerNormBackward(
    S.dLn,
    X.resMid,
    P.ln2Weight.data,
    X.ln2Mean,
    X.ln2Rstd,
    dRes,
    P.ln2Weight.grad,
    P.ln2Bias.grad,
    N,
    C,
  );
  // Attention: resMid = xIn + merge(attend(split(ln1 Wqkv + bqkv))) Wo + bo.
  linearBackward(be, X.att, P.projWeight, P.projBias, dRes, S.dAtt, N, C, C);
  be.tokensToHeads(S.dAtt, S.dHeads, B, cfg.heads, L, D, widths?.v);
  const g = attend.backward(S.dHeads);
  be.mergeQkv(g.dq, g.dk, g.dv, S.dQkv, B, L, cfg.heads, cfg.kvHeads, D, widths?.qk, widths?.v);
  linearBackward(be, X.ln1, P.qkvWeight, P.qkvBias, S.dQkv, S.dLn, N, C, qkvWidth(cfg));
  if (g.dx) be.addInto(S.dLn, g.dx, N * C);
  for (const t of [g.dq, g.dk, g.dv, ...(g.dx ? [g.dx] : [])]) be.release(t);
  be.layerNormBackward(
    S.dLn,
    xIn,
    P.ln1Weight.data,
    X.ln1Mean,
    X.ln1Rstd,
    dRes,
    P.ln1Weight.grad,
    P.ln1Bias.grad,
    N,
    C,
  );
}
