/**
 * Dense row-major arrays with a shape. Deliberately minimal: kernels take typed arrays plus explicit sizes, and
 * this type only carries the pair around and checks it.
 */
import { check } from './errors.ts';

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

export function allocate(dtype: DType, n: number): FloatArray {
  return dtype === 'float64' ? new Float64Array(n) : new Float32Array(n);
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
  return tensor(allocate(dtype, numel(shape)), shape);
}

export function shapeString(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/** Throws a shape error unless `t` has exactly `rank` dimensions. */
export function expectRank(t: Tensor, rank: number, what: string): void {
  check(t.shape.length === rank, 'shape', () => `${what} must have ${rank} dimensions, got ${shapeString(t.shape)}`);
}
