/**
 * The layer operations a transformer step needs, declared once (LayerOps, TensorOps below) and implemented here for
 * host tensors: layer norm, GELU, softmax cross-entropy, AdamW, embedding gather/scatter, bias add/reduction, the
 * prefix-masked row softmax of the explicit-logit attention, and the small tensor ops that keep a model's hot path
 * off host arrays (strided copy, fill, add, head split/merge, global gradient norm and clipping, a non-finite count,
 * the gate activations of content-dependent encodings with their running sum).
 * Plain loops over typed arrays in the arrays' own dtype (fp64 or fp32), every sum carried in a JS double; no
 * allocation per element.
 *
 * Conventions shared by every function here:
 * - sizes are explicit (rows x width, row-major, contiguous);
 * - forward outputs are overwritten;
 * - parameter gradients (dGamma, dBeta, dTable, dBias) are ACCUMULATED (+=): the trainer zeroes them once per
 *   step, so several uses of one parameter (the tied embedding) simply add up;
 * - input gradients say per function whether they overwrite or accumulate (layer norm accumulates into the
 *   residual stream, so a pre-LN block needs no separate residual-add backward);
 * - a scalar result a device must keep (the mean loss, the gradient norm, a count) goes into a slot of a
 *   statistics tensor (Backend.allocateStats), never only a return value the caller would have to wait for.
 *
 * LayerOps and TensorOps are generic over the backend's tensor handle T and int tensor I (backend.ts); for host
 * backends T = FloatArray and I = Int32Array, and these functions are their implementation (NativeBackend runs the
 * LayerOps in native/ for fp32, and these TensorOps, which move memory and are not worth a kernel on a CPU).
 */
import { headsToTokens, tokensToHeads, type FloatArray } from '../tensor.ts';

/**
 * out = (x - mean) * rstd * gamma + beta per row, with mean and variance (biased, 1/width) over the row and
 * rstd = 1 / sqrt(var + eps). mean and rstd (length rows) are saved for the backward.
 */
export function layerNormForward(
  x: FloatArray,
  gamma: FloatArray,
  beta: FloatArray,
  out: FloatArray,
  mean: FloatArray,
  rstd: FloatArray,
  rows: number,
  width: number,
  eps: number,
): void {
  for (let r = 0; r < rows; r++) {
    const o = r * width;
    let s = 0;
    for (let j = 0; j < width; j++) s += x[o + j]!;
    const mu = s / width;
    let v = 0;
    for (let j = 0; j < width; j++) {
      const d = x[o + j]! - mu;
      v += d * d;
    }
    const rs = 1 / Math.sqrt(v / width + eps);
    for (let j = 0; j < width; j++) out[o + j] = (x[o + j]! - mu) * rs * gamma[j]! + beta[j]!;
    mean[r] = mu;
    rstd[r] = rs;
  }
}

/**
 * Layer-norm backward. dx is ACCUMULATED (+=), dGamma and dBeta too. With xhat = (x - mean) rstd and
 * g = dOut * gamma: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
 */
export function layerNormBackward(
  dOut: FloatArray,
  x: FloatArray,
  gamma: FloatArray,
  mean: FloatArray,
  rstd: FloatArray,
  dx: FloatArray,
  dGamma: FloatArray,
  dBeta: FloatArray,
  rows: number,
  width: number,
): void {
  for (let r = 0; r < rows; r++) {
    const o = r * width;
    const mu = mean[r]!;
    const rs = rstd[r]!;
    let sumG = 0;
    let sumGX = 0;
    for (let j = 0; j < width; j++) {
      const xhat = (x[o + j]! - mu) * rs;
      const g = dOut[o + j]! * gamma[j]!;
      sumG += g;
      sumGX += g * xhat;
    }
    const meanG = sumG / width;
    const meanGX = sumGX / width;
    for (let j = 0; j < width; j++) {
      const xhat = (x[o + j]! - mu) * rs;
      const dy = dOut[o + j]!;
      dGamma[j] += dy * xhat;
      dBeta[j] += dy;
      dx[o + j] += rs * (dy * gamma[j]! - meanG - xhat * meanGX);
    }
  }
}

// GELU, tanh approximation (as GPT-2): gelu(x) = 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3), c = sqrt(2 / pi).
// Evaluated through the identity 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)): one exp is about a third cheaper than
// Math.tanh in V8, and exp(-2u) overflowing to Infinity for very negative x gives the right limit (0).
const GELU_C = Math.sqrt(2 / Math.PI);
const GELU_A = 0.044715;

/** out = gelu(x) (tanh approximation), n elements. out may alias x. */
export function geluForward(x: FloatArray, out: FloatArray, n: number): void {
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    out[i] = v / (1 + Math.exp(-2 * GELU_C * (v + GELU_A * v * v * v)));
  }
}

/**
 * dx = dOut * gelu'(x) (OVERWRITES dx; dx may alias dOut). x is the GELU's input. With s = 0.5 (1 + tanh(u)):
 * gelu'(x) = s + x * 2 s (1 - s) * u'(x), u'(x) = c (1 + 3 * 0.044715 x^2).
 */
export function geluBackward(x: FloatArray, dOut: FloatArray, dx: FloatArray, n: number): void {
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    const s = 1 / (1 + Math.exp(-2 * GELU_C * (v + GELU_A * v * v * v)));
    const du = GELU_C * (1 + 3 * GELU_A * v * v);
    dx[i] = dOut[i]! * (s + 2 * v * s * (1 - s) * du);
  }
}

/**
 * Per-row loss = logsumexp(logits_r) - logits_r[target_r] (natural log), written to `losses` (length rows).
 * Returns the mean loss over rows, and writes it to meanOut[meanIndex] when meanOut is given (the form a device
 * backend supports: it returns NaN). Targets outside [0, vocab) are a programming error and throw.
 */
export function softmaxCrossEntropyForward(
  logits: FloatArray,
  targets: Int32Array,
  losses: FloatArray,
  rows: number,
  vocab: number,
  meanOut?: FloatArray,
  meanIndex = 0,
): number {
  let total = 0;
  for (let r = 0; r < rows; r++) {
    const o = r * vocab;
    const t = targets[r]!;
    if (!(t >= 0 && t < vocab)) throw new RangeError(`target ${t} at row ${r} is outside [0, ${vocab})`);
    let max = -Infinity;
    for (let j = 0; j < vocab; j++) if (logits[o + j]! > max) max = logits[o + j]!;
    let s = 0;
    for (let j = 0; j < vocab; j++) s += Math.exp(logits[o + j]! - max);
    const loss = max + Math.log(s) - logits[o + t]!;
    losses[r] = loss;
    total += loss;
  }
  const mean = total / rows;
  if (meanOut) meanOut[meanIndex] = mean;
  return mean;
}

/**
 * dLogits = (softmax(logits) - onehot(target)) * dLoss for every row (OVERWRITES; dLogits may alias logits).
 * dLoss is the gradient of the final objective with respect to each row's loss (1 / rows for a mean).
 */
export function softmaxCrossEntropyBackward(
  logits: FloatArray,
  targets: Int32Array,
  dLogits: FloatArray,
  rows: number,
  vocab: number,
  dLoss: number,
): void {
  for (let r = 0; r < rows; r++) {
    const o = r * vocab;
    let max = -Infinity;
    for (let j = 0; j < vocab; j++) if (logits[o + j]! > max) max = logits[o + j]!;
    // One exp per entry: park exp(logit - max) in dLogits (same index, so aliasing logits is safe), then scale.
    let s = 0;
    for (let j = 0; j < vocab; j++) {
      const e = Math.exp(logits[o + j]! - max);
      dLogits[o + j] = e;
      s += e;
    }
    const scale = dLoss / s;
    for (let j = 0; j < vocab; j++) dLogits[o + j] = dLogits[o + j]! * scale;
    const t = targets[r]!;
    dLogits[o + t] = dLogits[o + t]! - dLoss;
  }
}

/**
 * Row softmax over a prefix of each row, in place: row r of x [rows, cols] becomes the softmax of its first
 * visible[r] entries (max-subtracted, the sum carried in a double), followed by zeros. A row with visible 0, or whose
 * visible entries are all -Infinity, becomes all zeros (a query that sees no key attends to nothing). A NaN or
 * +Infinity among the visible entries makes the visible part NaN. visible[r] outside [0, cols] throws.
 */
export function prefixSoftmaxRows(x: FloatArray, rows: number, cols: number, visible: Int32Array): void {
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    const n = visible[r]!;
    if (!(n >= 0 && n <= cols)) throw new RangeError(`visible ${n} at row ${r} is outside [0, ${cols}]`);
    const end = o + n;
    x.fill(0, end, o + cols);
    let max = -Infinity;
    for (let j = o; j < end; j++) max = Math.max(max, x[j]!);
    if (max === -Infinity) {
      x.fill(0, o, end);
      continue;
    }
    let sum = 0;
    for (let j = o; j < end; j++) {
      const e = Math.exp(x[j]! - max);
      x[j] = e;
      sum += e;
    }
    for (let j = o; j < end; j++) x[j] = x[j]! / sum;
  }
}

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay coefficient (0 for parameters that are not decayed). */
  weightDecay: number;
  /** 1-based step number, for bias correction. */
  step: number;
}

/**
 * One AdamW step on n entries, in place on param, m and v:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  mhat = m / (1 - b1^t);  vhat = v / (1 - b2^t)
 *   param -= lr * (mhat / (sqrt(vhat) + eps) + weightDecay * param)
 * The decay multiplies the parameter, not the gradient (decoupled, Loshchilov & Hutter), and is scaled by lr.
 */
export function adamwStep(param: FloatArray, grad: FloatArray, m: FloatArray, v: FloatArray, n: number, h: AdamWHyper) {
  const c1 = 1 - Math.pow(h.beta1, h.step);
  const c2 = 1 - Math.pow(h.beta2, h.step);
  const { lr, beta1, beta2, eps, weightDecay } = h;
  for (let i = 0; i < n; i++) {
    const g = grad[i]!;
    const mi = beta1 * m[i]! + (1 - beta1) * g;
    const vi = beta2 * v[i]! + (1 - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const p = param[i]!;
    param[i] = p - lr * (mi / c1 / (Math.sqrt(vi / c2) + eps) + weightDecay * p);
  }
}

/** out[r, :] = table[tokens[r], :] for n tokens. Token ids outside the table throw. */
export function embeddingForward(
  table: FloatArray,
  tokens: Int32Array,
  out: FloatArray,
  n: number,
  width: number,
  vocab: number,
): void {
  for (let r = 0; r < n; r++) {
    const t = tokens[r]!;
    if (!(t >= 0 && t < vocab)) throw new RangeError(`token ${t} at row ${r} is outside [0, ${vocab})`);
    const src = t * width;
    const dst = r * width;
    for (let j = 0; j < width; j++) out[dst + j] = table[src + j]!;
  }
}

/** dTable[tokens[r], :] += dOut[r, :] (ACCUMULATES). */
export function embeddingBackward(dOut: FloatArray, tokens: Int32Array, dTable: FloatArray, n: number, width: number) {
  for (let r = 0; r < n; r++) {
    const dst = tokens[r]! * width;
    const src = r * width;
    for (let j = 0; j < width; j++) dTable[dst + j] += dOut[src + j]!;
  }
}

/** out[r, j] += bias[j] for every row. */
export function biasAdd(out: FloatArray, bias: FloatArray, rows: number, width: number): void {
  for (let r = 0; r < rows; r++) {
    const o = r * width;
    for (let j = 0; j < width; j++) out[o + j] += bias[j]!;
  }
}

/** dBias[j] += sum over rows of dOut[r, j] (ACCUMULATES). Column sums carried in doubles. */
export function biasBackward(dOut: FloatArray, dBias: FloatArray, rows: number, width: number): void {
  // Sum in a double scratch row so fp32 gradients do not round at every row.
  const acc = new Float64Array(width);
  for (let r = 0; r < rows; r++) {
    const o = r * width;
    for (let j = 0; j < width; j++) acc[j] += dOut[o + j]!;
  }
  for (let j = 0; j < width; j++) dBias[j] += acc[j]!;
}

// Tensor ops: memory movement and reductions, so a model never indexes a tensor itself (a device backend runs them
// where its tensors live). Offsets and sizes are in elements.

/** dst[dstOffset + r * dstStride + j] = src[srcOffset + r * srcStride + j] for r < rows, j < width (OVERWRITES). */
export function copyRows(
  src: FloatArray,
  srcOffset: number,
  srcStride: number,
  dst: FloatArray,
  dstOffset: number,
  dstStride: number,
  rows: number,
  width: number,
): void {
  if (rows === 0 || width === 0) return;
  if ((srcStride === width && dstStride === width) || rows === 1) {
    const n = rows === 1 ? width : rows * width;
    dst.set(src.subarray(srcOffset, srcOffset + n), dstOffset);
    return;
  }
  if (width <= 8 && src.buffer !== dst.buffer) {
    // A few values per row (concat columns): element copies beat a view per row; distinct buffers cannot overlap.
    for (let r = 0; r < rows; r++) {
      const s = srcOffset + r * srcStride;
      const d = dstOffset + r * dstStride;
      for (let j = 0; j < width; j++) dst[d + j] = src[s + j]!;
    }
    return;
  }
  for (let r = 0; r < rows; r++) {
    const s = srcOffset + r * srcStride;
    dst.set(src.subarray(s, s + width), dstOffset + r * dstStride);
  }
}

/** x[offset .. offset + n) = value. */
export function fill(x: FloatArray, value: number, offset: number, n: number): void {
  x.fill(value, offset, offset + n);
}

/** dst[i] += src[i] for i < n (the residual add, and input gradients that reach one tensor two ways). */
export function addInto(dst: FloatArray, src: FloatArray, n: number): void {
  // One loop per dtype pair in use: a loop that sees both array kinds runs ~1.6x slower in V8 (polymorphic loads).
  if (dst instanceof Float32Array && src instanceof Float32Array) addF32(dst, src, n);
  else for (let j = 0; j < n; j++) dst[j] += src[j]!;
}

function addF32(dst: Float32Array, src: Float32Array, n: number): void {
  for (let j = 0; j < n; j++) dst[j]! += src[j]!;
}

/**
 * qkv [B, L, (H + 2 Hkv) D] (each head's D columns contiguous) -> q [B, H, L, D], k and v [B, Hkv, L, D]. The
 * head rows of q and k may be wider than D (row stride qkStride), those of v too (vStride): only their first D
 * columns are written, the others keep their values (an encoding's widened operands, encoding.ts).
 */
export function splitQkv(
  qkv: FloatArray,
  q: FloatArray,
  k: FloatArray,
  v: FloatArray,
  B: number,
  L: number,
  H: number,
  Hkv: number,
  D: number,
  qkStride = D,
  vStride = D,
): void {
  const Q = (H + 2 * Hkv) * D;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < L; t++) {
      const row = (b * L + t) * Q;
      for (let h = 0; h < H; h++) {
        const dst = ((b * H + h) * L + t) * qkStride;
        const src = row + h * D;
        for (let d = 0; d < D; d++) q[dst + d] = qkv[src + d]!;
      }
      for (let h = 0; h < Hkv; h++) {
        const dstK = ((b * Hkv + h) * L + t) * qkStride;
        const dstV = ((b * Hkv + h) * L + t) * vStride;
        const srcK = row + (H + h) * D;
        const srcV = row + (H + Hkv + h) * D;
        for (let d = 0; d < D; d++) {
          k[dstK + d] = qkv[srcK + d]!;
          v[dstV + d] = qkv[srcV + d]!;
        }
      }
    }
  }
}

/**
 * The inverse of splitQkv, for the gradients: dq, dk, dv -> dqkv [B, L, (H + 2 Hkv) D] (OVERWRITTEN), reading the
 * first D columns of head rows of stride qkStride (dq, dk) and vStride (dv).
 */
export function mergeQkv(
  dq: FloatArray,
  dk: FloatArray,
  dv: FloatArray,
  dqkv: FloatArray,
  B: number,
  L: number,
  H: number,
  Hkv: number,
  D: number,
  qkStride = D,
  vStride = D,
): void {
  const Q = (H + 2 * Hkv) * D;
  for (let r = 0; r < B * L; r++) {
    const b = Math.floor(r / L);
    const t = r - b * L;
    const row = r * Q;
    for (let h = 0; h < H; h++) {
      const src = ((b * H + h) * L + t) * qkStride;
      for (let d = 0; d < D; d++) dqkv[row + h * D + d] = dq[src + d]!;
    }
    for (let h = 0; h < Hkv; h++) {
      const srcK = ((b * Hkv + h) * L + t) * qkStride;
      const srcV = ((b * Hkv + h) * L + t) * vStride;
      for (let d = 0; d < D; d++) {
        dqkv[row + (H + h) * D + d] = dk[srcK + d]!;
        dqkv[row + (H + Hkv + h) * D + d] = dv[srcV + d]!;
      }
    }
  }
}

/**
 * out[outIndex] = sqrt(sum over every tensor of sum x_i^2), the global L2 norm of a list of tensors (gradients),
 * accumulated in one double over the tensors in order.
 */
export function globalNorm(tensors: readonly FloatArray[], out: FloatArray, outIndex: number): void {
  let s = 0;
  for (const g of tensors) for (let i = 0; i < g.length; i++) s += g[i]! * g[i]!;
  out[outIndex] = Math.sqrt(s);
}

/**
 * Global-norm clipping with the norm left where globalNorm wrote it: when clip > 0 and norm[normIndex] > clip,
 * every tensor is scaled by clip / norm (in place). A non-finite norm leaves the tensors untouched (the caller
 * reads the norm back with the loss and stops the run).
 */
export function clipByNorm(tensors: readonly FloatArray[], norm: FloatArray, normIndex: number, clip: number): void {
  const n = norm[normIndex]!;
  if (!(clip > 0 && n > clip && Number.isFinite(n))) return;
  const scale = clip / n;
  for (const g of tensors) for (let i = 0; i < g.length; i++) g[i] *= scale;
}

/** out[outIndex] = the number of non-finite values among x[0 .. n) (NaN, +-Infinity). */
export function countNonFinite(x: FloatArray, n: number, out: FloatArray, outIndex: number): void {
  let bad = 0;
  for (let i = 0; i < n; i++) if (!Number.isFinite(x[i]!)) bad++;
  out[outIndex] = bad;
}

export function sigmoid(z: number): number {
  return z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z));
}

/** log sigmoid(z) = -softplus(-z), written to neither overflow nor lose precision at large |z|. */
export function logSigmoid(z: number): number {
  return z >= 0 ? -Math.log1p(Math.exp(-z)) : z - Math.log1p(Math.exp(z));
}

export function softplus(z: number): number {
  return z > 0 ? z + Math.log1p(Math.exp(-z)) : Math.log1p(Math.exp(z));
}

/** The activation of a gate (gateForward): log sigmoid (forget gates, fox) or softplus (amplitudes, hype-gated). */
export type GateFn = 'logSigmoid' | 'softplus';

const GATE: Record<GateFn, { f: (z: number) => number; df: (z: number) => number }> = {
  logSigmoid: { f: logSigmoid, df: (z) => sigmoid(-z) },
  softplus: { f: softplus, df: sigmoid },
};

/**
 * Gate activations over x [outer, len, inner], OVERWRITING out (same shape, not aliasing x): y = f(x) elementwise
 * when `origin` < 0; otherwise the running sum of y along len, re-centred at row `origin` (0 <= origin < len):
 *   out[o, t, j] = sum_{t' <= t} y[o, t', j] - sum_{t' <= origin} y[o, t', j]
 * (fox's F_t - F_origin: the sum is a difference of prefix sums, so centring changes only its rounding). Sums in
 * doubles; for fp32 out each value is rounded once.
 */
export function gateForward(
  x: FloatArray,
  out: FloatArray,
  outer: number,
  len: number,
  inner: number,
  fn: GateFn,
  origin: number,
): void {
  const { f } = GATE[fn];
  if (origin < 0) {
    for (let i = 0; i < outer * len * inner; i++) out[i] = f(x[i]!);
    return;
  }
  const acc = new Float64Array(len);
  for (let o = 0; o < outer; o++)
    for (let j = 0; j < inner; j++) {
      const base = o * len * inner + j;
      let s = 0;
      for (let t = 0; t < len; t++) acc[t] = s += f(x[base + t * inner]!);
      const centre = acc[origin]!;
      for (let t = 0; t < len; t++) out[base + t * inner] = acc[t]! - centre;
    }
}

/**
 * gateForward's backward, dx = d/dx sum(dOut * out), OVERWRITING dx (which may alias dOut): with g the gradient of
 * y, g = dOut elementwise, or for the running sum g[t'] = sum_{t >= t'} dOut[t] - [t' <= origin] sum_t dOut[t];
 * then dx = g f'(x) (log sigmoid' (z) = sigmoid(-z), softplus' = sigmoid).
 */
export function gateBackward(
  x: FloatArray,
  dOut: FloatArray,
  dx: FloatArray,
  outer: number,
  len: number,
  inner: number,
  fn: GateFn,
  origin: number,
): void {
  const { df } = GATE[fn];
  if (origin < 0) {
    for (let i = 0; i < outer * len * inner; i++) dx[i] = dOut[i]! * df(x[i]!);
    return;
  }
  for (let o = 0; o < outer; o++)
    for (let j = 0; j < inner; j++) {
      const base = o * len * inner + j;
      let total = 0;
      for (let t = 0; t < len; t++) total += dOut[base + t * inner]!;
      let g = 0;
      for (let t = len - 1; t >= 0; t--) {
        g += dOut[base + t * inner]!;
        const i = base + t * inner;
        dx[i] = (t <= origin ? g - total : g) * df(x[i]!);
      }
    }
}

/**
 * The layer operations every Backend implements (the one declaration of their signatures; semantics in the
 * functions of the same name above). T is the backend's float tensor handle, I its int tensor (token ids).
 */
export interface LayerOps<T = FloatArray, I = Int32Array> {
  layerNormForward(x: T, gamma: T, beta: T, out: T, mean: T, rstd: T, rows: number, width: number, eps: number): void;
  layerNormBackward(
    dOut: T,
    x: T,
    gamma: T,
    mean: T,
    rstd: T,
    dx: T,
    dGamma: T,
    dBeta: T,
    rows: number,
    width: number,
  ): void;
  geluForward(x: T, out: T, n: number): void;
  geluBackward(x: T, dOut: T, dx: T, n: number): void;
  /** Host backends return the mean loss; every backend writes it to meanOut[meanIndex] when given (device: NaN). */
  softmaxCrossEntropyForward(
    logits: T,
    targets: I,
    losses: T,
    rows: number,
    vocab: number,
    meanOut?: T,
    meanIndex?: number,
  ): number;
  softmaxCrossEntropyBackward(logits: T, targets: I, dLogits: T, rows: number, vocab: number, dLoss: number): void;
  prefixSoftmaxRows(x: T, rows: number, cols: number, visible: I): void;
  adamwStep(param: T, grad: T, m: T, v: T, n: number, h: AdamWHyper): void;
  embeddingForward(table: T, tokens: I, out: T, n: number, width: number, vocab: number): void;
  embeddingBackward(dOut: T, tokens: I, dTable: T, n: number, width: number): void;
  biasAdd(out: T, bias: T, rows: number, width: number): void;
  biasBackward(dOut: T, dBias: T, rows: number, width: number): void;
}

/** The tensor ops every Backend implements (semantics in the functions of the same name above). */
export interface TensorOps<T = FloatArray> {
  copyRows(
    src: T,
    srcOffset: number,
    srcStride: number,
    dst: T,
    dstOffset: number,
    dstStride: number,
    rows: number,
    width: number,
  ): void;
  fill(x: T, value: number, offset: number, n: number): void;
  addInto(dst: T, src: T, n: number): void;
  /** Head rows of stride qkStride (q, k) and vStride (v), default D: widened operands (encoding.ts). */
  splitQkv(
    qkv: T,
    q: T,
    k: T,
    v: T,
    B: number,
    L: number,
    H: number,
    Hkv: number,
    D: number,
    qkStride?: number,
    vStride?: number,
  ): void;
  mergeQkv(
    dq: T,
    dk: T,
    dv: T,
    dqkv: T,
    B: number,
    L: number,
    H: number,
    Hkv: number,
    D: number,
    qkStride?: number,
    vStride?: number,
  ): void;
  /** Head rows of stride `stride` (default D) on the head side of both. */
  headsToTokens(x: T, out: T, B: number, H: number, L: number, D: number, stride?: number): void;
  tokensToHeads(x: T, out: T, B: number, H: number, L: number, D: number, stride?: number): void;
  globalNorm(tensors: readonly T[], out: T, outIndex: number): void;
  clipByNorm(tensors: readonly T[], norm: T, normIndex: number, clip: number): void;
  countNonFinite(x: T, n: number, out: T, outIndex: number): void;
  gateForward(x: T, out: T, outer: number, len: number, inner: number, fn: GateFn, origin: number): void;
  gateBackward(x: T, dOut: T, dx: T, outer: number, len: number, inner: number, fn: GateFn, origin: number): void;
}

/** The layer ops of the reference backend (and the fallback of the native one for non-fp32 tensors). */
export const referenceLayerOps: LayerOps = {
  layerNormForward,
  layerNormBackward,
  geluForward,
  geluBackward,
  softmaxCrossEntropyForward,
  softmaxCrossEntropyBackward,
  prefixSoftmaxRows,
  adamwStep,
  embeddingForward,
  embeddingBackward,
  biasAdd,
  biasBackward,
};

/** The tensor ops of every host backend (reference and native). */
export const hostTensorOps: TensorOps = {
  copyRows,
  fill,
  addInto,
  splitQkv,
  mergeQkv,
  headsToTokens,
  tokensToHeads,
  globalNorm,
  clipByNorm,
  countNonFinite,
  gateForward,
  gateBackward,
};
