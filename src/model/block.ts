/**
 * THE transformer block, forward: one pre-LayerNorm block as backend ops, used by training (Transformer.forward)
 * and by cached decoding (CachedDecoder.step), which differ only in where attention gets its keys and values:
 *   ln1 = LN(x);  q, k, v = split(ln1 Wqkv + bqkv);  att = merge(attention(q, k, v, ln1))
 *   mid = x + att Wo + bo;  ln2 = LN(mid);  out = mid + gelu(ln2 W1 + b1) W2 + b2
 * The ONNX exporter (interop/onnx-export.ts) writes the same sequence as graph nodes. Row-major layouts: token
 * activations [B, L, C] (rows = B * L); q [B, H, L, D], k and v [B, Hkv, L, D]; attention's output [B, H, L, D].
 * Every buffer is the caller's (Transformer keeps them for its backward; the decoder allocates per step).
 */
import type { Backend } from '../backend/backend.ts';
import type { ModelConfig } from './config.ts';
import { qkvWidth, type BlockParams } from './parameters.ts';

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

/** Allocates a block's buffers for `rows` tokens through the backend. */
export function allocateBlockBuffers<T, I>(cfg: ModelConfig, be: Backend<T, I>, rows: number): BlockBuffers<T> {
  const a = (n: number) => be.allocate(cfg.dtype, n, 'an activation');
  const N = rows;
  const C = cfg.width;
  const D = C / cfg.heads;
  return {
    ln1: a(N * C),
    ln1Mean: a(N),
    ln1Rstd: a(N),
    qkv: a(N * qkvWidth(cfg)),
    q: a(N * cfg.heads * D),
    k: a(N * cfg.kvHeads * D),
    v: a(N * cfg.kvHeads * D),
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
 */
export type BlockAttention<T> = (q: T, k: T, v: T, ln1: T) => T;

/** xOut = block(xIn) for B sequences of L new tokens (module comment); xIn is left unchanged. */
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
): void {
  const N = B * L;
  const C = cfg.width;
  const F = cfg.mlpWidth;
  const D = C / cfg.heads;
  be.layerNormForward(xIn, P.ln1Weight.data, P.ln1Bias.data, X.ln1, X.ln1Mean, X.ln1Rstd, N, C, cfg.layerNormEps);
  linearForward(be, X.ln1, P.qkvWeight.data, P.qkvBias.data, X.qkv, N, C, qkvWidth(cfg), 0);
  be.splitQkv(X.qkv, X.q, X.k, X.v, B, L, cfg.heads, cfg.kvHeads, D);
  const out = attention(X.q, X.k, X.v, X.ln1);
  be.headsToTokens(out, X.att, B, cfg.heads, L, D);
  be.copyRows(xIn, 0, N * C, X.resMid, 0, N * C, 1, N * C);
  linearForward(be, X.att, P.projWeight.data, P.projBias.data, X.resMid, N, C, C, 1);
  be.layerNormForward(X.resMid, P.ln2Weight.data, P.ln2Bias.data, X.ln2, X.ln2Mean, X.ln2Rstd, N, C, cfg.layerNormEps);
  linearForward(be, X.ln2, P.fcWeight.data, P.fcBias.data, X.fc, N, C, F, 0);
  be.geluForward(X.fc, X.fcAct, N * F);
  be.copyRows(X.resMid, 0, N * C, xOut, 0, N * C, 1, N * C);
  linearForward(be, X.fcAct, P.fcProjWeight.data, P.fcProjBias.data, xOut, N, F, C, 1);
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
