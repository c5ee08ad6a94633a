/**
 * Input validation shared by every backend. It runs before any kernel (and before native code, which must never
 * see an input it could misread), and each refusal is one HypeError that names the problem, where it is, and the fix.
 */
import { check, HypeError } from '../errors.ts';
import { dtypeOf, type FloatArray } from '../tensor.ts';
import { distanceSpan, type AttentionOptions, type AttentionShape, type PositionBias } from './backend.ts';

/** Largest head (and value) dim any backend accepts. */
export const MAX_HEAD_DIM = 65536;

/** Largest |bias| accepted, per dtype: fp32 kernels add it to logits, so it must stay far inside the fp32 range. */
/** The largest finite float32. */
const FP32_MAX = 3.4028234663852886e38;

export const BIAS_LIMIT = { float32: 1e30, float64: 1e300 } as const;

const BIAS_KINDS = ['none', 'distance', 'dense'] as const;

function isFloatArray(x: unknown): x is FloatArray {
  return x instanceof Float32Array || x instanceof Float64Array;
}

function positiveInt(x: unknown, what: string): void {
  check(
    typeof x === 'number' && Number.isInteger(x) && x >= 1,
    'shape',
    () => `${what} must be a positive integer, got ${String(x)}`,
  );
}

/**
 * Finds the first NaN/Inf in a Float32Array (-Infinity allowed on request), or -1. A backend may supply a fast one
 * (the native addon's SIMD scan: a JS loop costs ~5-20 ns per element, as much as the attention itself at L ~ 1k);
 * the refusal is still built here.
 */
export type FiniteScanner = (data: Float32Array, allowNegInf: boolean) => number;

/** Refuses the first NaN or +/-Inf, naming the tensor and the multi-index where it sits. */
export function checkFiniteTensor(
  data: ArrayLike<number>,
  what: string,
  dims: readonly number[],
  allowNegInf = false,
  scan?: FiniteScanner,
): void {
  let start = 0;
  if (scan && data instanceof Float32Array) {
    start = scan(data, allowNegInf);
    if (start < 0) return;
  }
  for (let i = start; i < data.length; i++) {
    const x = data[i]!;
    if (Number.isFinite(x) || (allowNegInf && x === -Infinity)) continue;
    const idx: number[] = [];
    let rest = i;
    for (let a = dims.length - 1; a >= 0; a--) {
      idx.unshift(rest % dims[a]!);
      rest = Math.floor(rest / dims[a]!);
    }
    throw new HypeError(
      'non-finite',
      `${what} holds ${x} at index [${idx.join(', ')}] (flat ${i}); every value must be finite — check the ` +
        `upstream computation (a diverging loss, a too-high learning rate, or uninitialised memory)`,
    );
  }
}

export function checkArray(x: unknown, what: string, length: number, dims: string): void {
  check(isFloatArray(x), 'argument', `${what} must be a Float32Array or Float64Array`);
  check(
    x.length === length,
    'shape',
    () => `${what} has ${x.length} elements but the shape needs ${dims} = ${length}; pass a tensor of that layout`,
  );
}

/** The shape object itself: positive integer sizes and whole KV-head groups. */
export function validateShape(shape: AttentionShape): void {
  check(typeof shape === 'object' && shape !== null, 'argument', 'attention shape must be an object');
  positiveInt(shape.batch, 'shape.batch');
  positiveInt(shape.heads, 'shape.heads');
  positiveInt(shape.kvHeads, 'shape.kvHeads');
  positiveInt(shape.lq, 'shape.lq');
  positiveInt(shape.lk, 'shape.lk');
  positiveInt(shape.headDim, 'shape.headDim');
  positiveInt(shape.valueDim, 'shape.valueDim');
  // One limit for every backend (the native kernels' per-thread tiles are sized by the head dims).
  for (const [x, what] of [
    [shape.headDim, 'headDim'],
    [shape.valueDim, 'valueDim'],
  ] as const) {
    check(
      x <= MAX_HEAD_DIM,
      'shape',
      () => `shape.${what} is ${x}, above the supported ${MAX_HEAD_DIM}; split the heads (more heads, smaller dims)`,
    );
  }
  check(
    shape.heads % shape.kvHeads === 0,
    'shape',
    () =>
      `heads (${shape.heads}) must be a multiple of kvHeads (${shape.kvHeads}); for grouped-query attention ` +
      `choose kvHeads dividing heads`,
  );
}

/** The position-bias spec: a known kind, and a table of the right type and length that the kernel can add. */
export function validateBias(
  bias: PositionBias,
  shape: AttentionShape,
  opts: AttentionOptions,
  dtype: 'float32' | 'float64',
): void {
  check(
    typeof bias === 'object' && bias !== null && (BIAS_KINDS as readonly string[]).includes(bias.kind),
    'argument',
    () =>
      `unknown position bias kind ${JSON.stringify((bias as { kind?: unknown })?.kind)}; ` +
      `use one of ${BIAS_KINDS.map((k) => `'${k}'`).join(', ')} (encodings pass their terms as a distance table)`,
  );
  const { heads: H, lq, lk } = shape;
  const qo = opts.queryOffset ?? lk - lq;
  switch (bias.kind) {
    case 'none':
      return;
    case 'dense':
      check(
        bias.heads === 1 || bias.heads === H,
        'shape',
        () => `dense bias heads must be 1 (broadcast) or ${H}, got ${bias.heads}`,
      );
      checkArray(bias.bias, 'dense bias', bias.heads * lq * lk, 'heads*Lq*Lk');
      checkFiniteTensor(bias.bias, 'dense bias', [bias.heads, lq, lk]);
      return;
    case 'distance':
      break;
  }
  const span = distanceSpan(lq, lk, qo);
  check(
    isFloatArray(bias.table),
    'argument',
    'the distance table must be a Float64Array or Float32Array ([heads, queryOffset + Lq + Lk - 1])',
  );
  check(
    bias.table.length === H * span,
    'shape',
    () =>
      `the distance table has ${bias.table.length} values but needs heads * (queryOffset + Lq + Lk - 1) = ` +
      `${H} * ${span} = ${H * span} (one row per query head, one entry per distance D from -(Lk - 1))`,
  );
  check(
    opts.causal || qo >= 0,
    'argument',
    () =>
      `a distance table without a causal mask needs queryOffset >= 0 (got ${qo}): distances below -(Lk - 1) ` +
      `have no entry; pass queryOffset >= 0 or causal: true`,
  );
  const dHi = qo + lq - 1;
  const dLo = opts.causal ? Math.max(0, qo - (lk - 1)) : qo - (lk - 1);
  if (dLo > dHi) return; // nothing visible: the table is never read
  // Every reachable entry: no NaN, nothing above the dtype's limit (a large positive bias would overflow the
  // logits). Large negative values, down to -Infinity, only drive probabilities to exactly 0 (steep recency at long
  // L); the nearest reachable distance must stay finite, so every query row keeps its closest key.
  const limit = BIAS_LIMIT[dtype];
  const nearest = Math.min(Math.max(0, dLo), dHi);
  for (let h = 0; h < H; h++) {
    const row = h * span + lk - 1;
    for (let D = dLo; D <= dHi; D++) {
      const x = bias.table[row + D]!;
      if (x <= limit && (D !== nearest || x >= -limit)) continue;
      throw new HypeError(
        Number.isNaN(x) ? 'non-finite' : 'overflow',
        `the distance table holds ${x} for head ${h} at distance ${D} (flat index ${row + D}); entries must be ` +
          `<= ${limit} (the ${dtype} logits' range), not NaN, and finite at the nearest distance ${nearest} — ` +
          `reduce the encoding's amplitude or slope (HyPE: mu or |tau|), or the sequence length (Lq = ${lq}, ` +
          `Lk = ${lk})`,
      );
    }
  }
}

/** Options: causal flag, explicit finite scale, integer query offset, and the bias. */
export function validateOptions(opts: AttentionOptions, shape: AttentionShape, dtype: 'float32' | 'float64'): void {
  check(typeof opts === 'object' && opts !== null, 'argument', 'attention options must be an object');
  check(typeof opts.causal === 'boolean', 'argument', 'options.causal must be true or false');
  check(
    typeof opts.scale === 'number' && Number.isFinite(opts.scale),
    'argument',
    () => `options.scale must be a finite number (usually 1/sqrt(headDim)), got ${String(opts.scale)}`,
  );
  // fp32 kernels hold the scale in fp32: one past its range would be Infinity there (0 * Infinity = NaN gradients).
  check(
    dtype === 'float64' || Math.abs(opts.scale) <= FP32_MAX,
    'overflow',
    () =>
      `options.scale ${opts.scale} is beyond the float32 range (|scale| <= ${FP32_MAX}) of float32 attention; ` +
      `use a smaller scale (usually 1/sqrt(headDim)) or float64 inputs on the reference backend`,
  );
  if (opts.queryOffset !== undefined) {
    check(
      Number.isInteger(opts.queryOffset) && Math.abs(opts.queryOffset) <= 2 ** 40,
      'argument',
      () => `options.queryOffset must be an integer position, got ${String(opts.queryOffset)}`,
    );
  }
  validateBias(opts.bias ?? { kind: 'none' }, shape, opts, dtype);
}

/** Everything attentionForward reads. Returns the common dtype of q, k, v. */
export function validateAttentionForward(
  shape: AttentionShape,
  q: FloatArray,
  k: FloatArray,
  v: FloatArray,
  opts: AttentionOptions,
  scan?: FiniteScanner,
): 'float32' | 'float64' {
  validateShape(shape);
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  checkArray(q, 'q', B * H * lq * d, 'B*H*Lq*D');
  checkArray(k, 'k', B * Hkv * lk * d, 'B*Hkv*Lk*D');
  checkArray(v, 'v', B * Hkv * lk * dv, 'B*Hkv*Lk*Dv');
  const dtype = dtypeOf(q);
  check(
    dtypeOf(k) === dtype && dtypeOf(v) === dtype,
    'argument',
    `q, k and v must share one dtype (got ${dtype}, ${dtypeOf(k)}, ${dtypeOf(v)}); convert them first`,
  );
  validateOptions(opts, shape, dtype);
  checkFiniteTensor(q, 'q', [B, H, lq, d], false, scan);
  checkFiniteTensor(k, 'k', [B, Hkv, lk, d], false, scan);
  checkFiniteTensor(v, 'v', [B, Hkv, lk, dv], false, scan);
  return dtype;
}

/** Everything attentionBackward reads: the forward's inputs plus out, lse (may hold -Infinity) and dOut. */
export function validateAttentionBackward(
  shape: AttentionShape,
  q: FloatArray,
  k: FloatArray,
  v: FloatArray,
  out: FloatArray,
  lse: FloatArray,
  dOut: FloatArray,
  opts: AttentionOptions,
  scan?: FiniteScanner,
): 'float32' | 'float64' {
  const dtype = validateAttentionForward(shape, q, k, v, opts, scan);
  const { batch: B, heads: H, lq, valueDim: dv } = shape;
  checkArray(out, 'out', B * H * lq * dv, 'B*H*Lq*Dv');
  checkArray(lse, 'lse', B * H * lq, 'B*H*Lq');
  checkArray(dOut, 'dOut', B * H * lq * dv, 'B*H*Lq*Dv');
  check(
    dtypeOf(out) === dtype && dtypeOf(lse) === dtype && dtypeOf(dOut) === dtype,
    'argument',
    'out, lse and dOut must have the same dtype as q, k and v',
  );
  checkFiniteTensor(out, 'out', [B, H, lq, dv], false, scan);
  checkFiniteTensor(lse, 'lse', [B, H, lq], true, scan);
  checkFiniteTensor(dOut, 'dOut', [B, H, lq, dv], false, scan);
  return dtype;
}

/**
 * After a forward: inputs were finite, so a NaN or +Infinity in lse means the fp32 (or fp64) logits overflowed
 * (scale * q.k beyond the dtype's range). So does lse = -Infinity on a row that sees at least one key: validation
 * keeps the nearest visible distance's bias finite, so only a finite logit rounded past the dtype's lowest value
 * (e.g. scale 1e10 with |q|, |k| ~ 1e15) can make every visible key look masked — the kernels would otherwise return
 * that row as out = 0 silently. Refused here, once per row and outside the kernels' inner loops.
 */
export function checkAttentionLse(
  lse: FloatArray,
  shape: AttentionShape,
  opts: AttentionOptions,
  scan?: FiniteScanner,
): void {
  const { heads: H, lq, lk } = shape;
  let bad = -1;
  if (scan && lse instanceof Float32Array) bad = scan(lse, true);
  else for (let i = 0; i < lse.length && bad < 0; i++) if (!(lse[i]! < Infinity)) bad = i;
  if (bad < 0 && lk > 0) {
    // Row i sees key 0 unless the causal mask hides every key from it (i + queryOffset < 0).
    const qo = opts.queryOffset ?? lk - lq;
    const firstSeeing = opts.causal ? Math.min(lq, Math.max(0, -qo)) : 0;
    for (let r = 0; r < lse.length && bad < 0; r++) if (r % lq >= firstSeeing && lse[r] === -Infinity) bad = r;
  }
  if (bad < 0) return;
  throw new HypeError(
    'overflow',
    `attention logits overflowed ${dtypeOf(lse)} at batch ${Math.floor(bad / (H * lq))}, head ` +
      `${Math.floor(bad / lq) % H}, query row ${bad % lq} (log-sum-exp ${lse[bad]}): scale * q.k left the ` +
      `representable range (scale ${opts.scale}); reduce the scale or the magnitude of q and k (normalise them), ` +
      `or compute in fp64 on the reference backend`,
  );
}

/** gemm's sizes, strides and buffer lengths (row-major; op(A) m x k, op(B) k x n, C m x n). */
export function validateGemm(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: FloatArray,
  lda: number,
  b: FloatArray,
  ldb: number,
  beta: number,
  c: FloatArray,
): void {
  check(typeof transA === 'boolean' && typeof transB === 'boolean', 'argument', 'gemm transA/transB must be booleans');
  for (const [x, what] of [
    [m, 'm'],
    [n, 'n'],
    [k, 'k'],
    [lda, 'lda'],
    [ldb, 'ldb'],
  ] as const) {
    check(
      Number.isInteger(x) && x >= 0,
      'shape',
      () => `gemm ${what} must be a non-negative integer, got ${String(x)}`,
    );
  }
  check(Number.isFinite(alpha) && Number.isFinite(beta), 'argument', 'gemm alpha and beta must be finite');
  check(isFloatArray(a) && isFloatArray(b) && isFloatArray(c), 'argument', 'gemm A, B, C must be float arrays');
  check(
    lda >= (transA ? m : k) && ldb >= (transB ? k : n),
    'shape',
    () =>
      `gemm leading dimensions are shorter than their rows (lda ${lda} < ${transA ? m : k} or ldb ${ldb} < ` +
      `${transB ? k : n}); pass the row stride of each matrix as stored`,
  );
  const aNeed = m === 0 || k === 0 ? 0 : transA ? (k - 1) * lda + m : (m - 1) * lda + k;
  const bNeed = n === 0 || k === 0 ? 0 : transB ? (n - 1) * ldb + k : (k - 1) * ldb + n;
  check(a.length >= aNeed, 'shape', () => `gemm A has ${a.length} elements, needs at least ${aNeed}`);
  check(b.length >= bNeed, 'shape', () => `gemm B has ${b.length} elements, needs at least ${bNeed}`);
}

/** gemm's C buffer and stride. */
export function validateGemmOutput(m: number, n: number, c: FloatArray, ldc: number): void {
  check(Number.isInteger(ldc) && ldc >= n, 'shape', () => `gemm ldc (${ldc}) must be an integer >= n (${n})`);
  const cNeed = m === 0 || n === 0 ? 0 : (m - 1) * ldc + n;
  check(c.length >= cNeed, 'shape', () => `gemm C has ${c.length} elements, needs at least ${cNeed}`);
}

/** A worker thread count: an integer from 1 to 1024. */
export function validateThreads(threads: unknown): number {
  check(
    typeof threads === 'number' && Number.isInteger(threads) && threads >= 1 && threads <= 1024,
    'argument',
    () => `threads must be an integer from 1 to 1024, got ${String(threads)}; use os.availableParallelism()`,
  );
  return threads;
}
