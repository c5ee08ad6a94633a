/**
 * Input validation shared by every backend. It runs before any kernel (and before native code, which must never
 * see an input it could misread), and each refusal is one HypeError that names the problem, where it is, and the fix.
 */
import { check, HypeError } from '../errors.ts';
import { dtypeOf, type FloatArray } from '../tensor.ts';
import type { AttentionOptions, AttentionShape, PositionBias } from './backend.ts';

/** Largest |bias| accepted, per dtype: fp32 kernels add it to logits, so it must stay far inside the fp32 range. */
const BIAS_LIMIT = { float32: 1e30, float64: 1e300 } as const;

const BIAS_KINDS = ['none', 'alibi', 'hype', 'table', 'dense'] as const;

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

function checkArray(x: unknown, what: string, length: number, dims: string): void {
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
  check(
    shape.heads % shape.kvHeads === 0,
    'shape',
    () =>
      `heads (${shape.heads}) must be a multiple of kvHeads (${shape.kvHeads}); for grouped-query attention ` +
      `choose kvHeads dividing heads`,
  );
}

/** The bias of head h at distance D (the definition in backend.ts; table/dense are handled elsewhere). */
function analyticBias(bias: PositionBias, h: number, D: number): number[] {
  if (bias.kind === 'alibi') return [-bias.slopes[h]! * Math.abs(D)];
  if (bias.kind !== 'hype') return [0];
  const terms: number[] = [];
  for (let k = 0; k < bias.pairs; k++) {
    const j = h * bias.pairs + k;
    terms.push(bias.tau[j]! * Math.sinh(bias.mu[j]! * D));
  }
  return terms;
}

/**
 * Where the bias leaves the range a kernel can represent. A large POSITIVE bias would overflow the logits (refused);
 * a large negative one only drives probabilities to exactly 0, which is what steep recency slopes at long L mean,
 * so it is accepted as long as the nearest reachable distance (where alibi and hype are smallest) stays in range.
 */
function biasOutOfRange(
  bias: PositionBias,
  heads: number,
  dLo: number,
  dHi: number,
  limit: number,
): string | undefined {
  if (bias.kind === 'table') {
    for (let i = 0; i < bias.values.length; i++)
      if (Math.abs(bias.values[i]!) > limit) return `table value ${bias.values[i]} at index ${i}`;
    return undefined;
  }
  const nearest = Math.min(Math.max(0, dLo), dHi);
  for (let h = 0; h < heads; h++) {
    const what =
      bias.kind === 'hype'
        ? `hype head ${h} (mu = ${bias.mu[h * bias.pairs]}, tau = ${bias.tau[h * bias.pairs]})`
        : `alibi head ${h} (slope ${bias.kind === 'alibi' ? bias.slopes[h] : ''})`;
    for (const D of [dLo, dHi]) {
      // sinh and |D| grow with |D|, so the extreme positive terms sit at the ends of the range.
      const positive = analyticBias(bias, h, D).reduce((acc, t) => acc + Math.max(0, t), 0);
      if (!(positive <= limit)) return `${what} reaches +${positive} at distance ${D}`;
    }
    const near = analyticBias(bias, h, nearest).reduce((acc, t) => acc + t, 0);
    if (!(Math.abs(near) <= limit)) return `${what} is ${near} already at distance ${nearest}`;
  }
  return undefined;
}

/** The position-bias spec: a known kind, parameter arrays of the right type, length and range. */
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
      `use one of ${BIAS_KINDS.map((k) => `'${k}'`).join(', ')}`,
  );
  const { heads: H, lq, lk } = shape;
  const qo = opts.queryOffset ?? lk - lq;
  const f64 = (x: unknown, what: string, n: number) => {
    check(x instanceof Float64Array, 'argument', `${what} must be a Float64Array`);
    check(x.length === n, 'shape', () => `${what} has ${x.length} values, needs ${n}`);
    checkFiniteTensor(x, what, [n]);
  };
  switch (bias.kind) {
    case 'none':
      return;
    case 'alibi':
      f64(bias.slopes, 'alibi slopes', H);
      break;
    case 'hype':
      check(
        Number.isInteger(bias.pairs) && bias.pairs >= 1,
        'argument',
        () => `hype pairs must be a positive integer, got ${bias.pairs}`,
      );
      f64(bias.tau, 'hype tau', H * bias.pairs);
      f64(bias.mu, 'hype mu', H * bias.pairs);
      for (let j = 0; j < bias.mu.length; j++) {
        // The tile-local scheme tabulates e^{mu s} for |s| < 256 in fp64; |mu| <= 2 keeps that far from overflow.
        check(
          Math.abs(bias.mu[j]!) <= 2,
          'argument',
          () =>
            `hype mu[${j}] = ${bias.mu[j]} is steeper than supported (|mu| <= 2: sinh(2 D) already spans e^2 per ` +
            `token); HyPE curvatures are ~1/L — use a smaller mu`,
        );
      }
      break;
    case 'table': {
      check(
        Number.isInteger(bias.buckets) && bias.buckets >= 1,
        'argument',
        () => `table buckets must be a positive integer, got ${bias.buckets}`,
      );
      f64(bias.values, 'table values', H * bias.buckets);
      check(bias.bucketOf instanceof Int32Array, 'argument', 'table bucketOf must be an Int32Array');
      const need = qo + lq + lk - 1;
      check(
        bias.bucketOf.length === need,
        'shape',
        () =>
          `table bucketOf has ${bias.bucketOf.length} entries but must cover every distance: ` +
          `queryOffset + Lq + Lk - 1 = ${need}`,
      );
      check(
        opts.causal || qo >= 0,
        'argument',
        `a non-causal table bias needs queryOffset >= 0 (distances below -(Lk-1) have no bucketOf entry)`,
      );
      for (let t = 0; t < bias.bucketOf.length; t++) {
        const b = bias.bucketOf[t]!;
        check(
          b >= 0 && b < bias.buckets,
          'argument',
          () => `table bucketOf[${t}] = ${b} is outside [0, ${bias.buckets}); fix the bucketing function`,
        );
      }
      break;
    }
    case 'dense':
      check(
        bias.heads === 1 || bias.heads === H,
        'shape',
        () => `dense bias heads must be 1 (broadcast) or ${H}, got ${bias.heads}`,
      );
      checkArray(bias.bias, 'dense bias', bias.heads * lq * lk, 'heads*Lq*Lk');
      checkFiniteTensor(bias.bias, 'dense bias', [bias.heads, lq, lk]);
      return;
  }
  const dHi = qo + lq - 1;
  const dLo = opts.causal ? Math.max(0, qo - (lk - 1)) : qo - (lk - 1);
  if (dLo > dHi) return; // nothing visible: the bias is never evaluated
  const where = biasOutOfRange(bias, H, dLo, dHi, BIAS_LIMIT[dtype]);
  check(
    where === undefined,
    'overflow',
    () =>
      `the ${bias.kind} bias leaves the ${dtype} range (|bias| <= ${BIAS_LIMIT[dtype]}): ${where}, with ` +
      `Lq = ${lq}, Lk = ${lk}; reduce mu or |tau| (HyPE), the slope, or the sequence length`,
  );
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
