/**
 * Dense row-major arrays with a shape. Deliberately minimal: kernels take typed arrays plus explicit sizes, and
 * this type only carries the pair around and checks it.
 */
import { check, HypeError } from './errors.ts';

export type DType = 'float32' | 'float64';
export type FloatArray = Float32Array | Float64Array;

export interface Tensor<A extends FloatArray = FloatArray> {
  readonly data: A;
  readonly shape: readonly number[];
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

export function dtypeOf(a: FloatArray): DType {
  return a instanceof Float64Array ? 'float64' : 'float32';
}

/** The most elements one typed array may hold (Node 20's limit, 2^32; later Nodes allow more, memory permitting). */
export const MAX_ELEMENTS = 2 ** 32;

/**
 * A zeroed array of n elements, or one HypeError naming `what`, n and its size in bytes when n is not a valid length
 * or the memory cannot be had (instead of a bare RangeError from the engine).
 */
export function allocate(dtype: DType, n: number, what = 'an array'): FloatArray {
  check(
    Number.isSafeInteger(n) && n >= 0,
    'shape',
    () => `${what}: ${n} elements requested; an element count must be a non-negative integer`,
  );
  const bytes = n * (dtype === 'float64' ? 8 : 4);
  check(
    n <= MAX_ELEMENTS,
    'memory',
    () => `${what}: ${n} elements (${gib(bytes)}), more than one array can hold (${MAX_ELEMENTS}); use smaller sizes`,
  );
  if (bytes > LARGE) {
    const free = freeMemory();
    check(
      bytes <= free,
      'memory',
      () =>
        `${what}: ${gib(bytes)} (${n} ${dtype} values), more than the ${gib(free)} of memory free; use smaller ` +
        'sizes (an option or flag may be far larger than intended)',
    );
  }
  try {
    return dtype === 'float64' ? new Float64Array(n) : new Float32Array(n);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    throw new HypeError(
      'memory',
      `${what}: ${gib(bytes)} (${n} ${dtype} values) cannot be allocated; use smaller sizes`,
    );
  }
}

/** Allocations above this size are checked against free memory first (cheap enough at that size). */
const LARGE = 2 ** 26;

/**
 * Free memory in bytes where the runtime can tell (Node: os.freemem(), reached without a static import so this
 * module stays browser-safe), else Infinity. The engine itself refuses only sizes past its limits; below them an
 * absurd size (an option of 1e9) would be granted virtually by the OS and the process killed when it is touched.
 */
function freeMemory(): number {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process;
  const os = proc?.getBuiltinModule?.('node:os') as { freemem(): number } | undefined;
  return os ? os.freemem() : Infinity;
}

function gib(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

export function tensor<A extends FloatArray>(data: A, shape: readonly number[]): Tensor<A> {
  for (const s of shape)
    check(Number.isInteger(s) && s >= 0, 'shape', `shape [${shape}] must hold non-negative integers`);
  check(
    data.length === numel(shape),
    'shape',
    `data has ${data.length} elements but shape [${shape}] needs ${numel(shape)}`,
  );
  return { data, shape: [...shape] };
}

export function zeros(shape: readonly number[], dtype: DType = 'float64'): Tensor {
  for (const s of shape)
    check(Number.isInteger(s) && s >= 0, 'shape', `shape [${shape}] must hold non-negative integers`);
  return tensor(allocate(dtype, numel(shape), `a tensor of shape [${shape}]`), shape);
}

export function shapeString(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/** Throws a shape error unless `t` has exactly `rank` dimensions. */
export function expectRank(t: Tensor, rank: number, what: string): void {
  check(t.shape.length === rank, 'shape', () => `${what} must have ${rank} dimensions, got ${shapeString(t.shape)}`);
}

/**
 * Attention's head-major layout [B, H, L, D] -> the token layout [B, L, H D] (heads side by side in a row), into
 * `out`; values convert to `out`'s array type. Head rows may be wider than D (row stride `stride` >= D, e.g. an
 * encoding's widened operands): only their first D columns are read.
 */
export function headsToTokens(
  x: ArrayLike<number>,
  out: FloatArray,
  B: number,
  H: number,
  L: number,
  D: number,
  stride = D,
): void {
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < L; t++) {
        const src = ((b * H + h) * L + t) * stride;
        const dst = ((b * L + t) * H + h) * D;
        for (let d = 0; d < D; d++) out[dst + d] = x[src + d]!;
      }
    }
  }
}

/**
 * The token layout [B, L, H D] -> head-major [B, H, L, D], into `out` (the inverse of headsToTokens). With a row
 * stride > D, only the first D columns of each head row are written; the others keep their values.
 */
export function tokensToHeads(
  x: ArrayLike<number>,
  out: FloatArray,
  B: number,
  H: number,
  L: number,
  D: number,
  stride = D,
): void {
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < L; t++) {
      for (let h = 0; h < H; h++) {
        const src = ((b * L + t) * H + h) * D;
        const dst = ((b * H + h) * L + t) * stride;
        for (let d = 0; d < D; d++) out[dst + d] = x[src + d]!;
      }
    }
  }
}

/** The same numbers in an array of the given dtype (the array itself when it already has that dtype). */
export function asDtype(a: FloatArray, dtype: DType): FloatArray {
  if (dtypeOf(a) === dtype) return a;
  return dtype === 'float64' ? Float64Array.from(a) : Float32Array.from(a);
}
