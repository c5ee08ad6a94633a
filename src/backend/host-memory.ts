/**
 * The memory members of a host backend (reference, native): a handle IS its typed array, so allocation is a
 * zeroed array, upload a copy into it, read a copy out of it (resolved at once) and hostView the array itself.
 * Shapes: flat tensors of n values; statistics tensors are fp64.
 */
import { HypeError } from '../errors.ts';
import { allocate as allocateArray, dtypeOf, MAX_ELEMENTS, type DType, type FloatArray } from '../tensor.ts';
import type { Backend } from './backend.ts';
import { hostTensorOps } from './layers.ts';

type HostMemory = Pick<
  Backend,
  | 'residence'
  | 'allocate'
  | 'allocateInt'
  | 'allocateStats'
  | 'upload'
  | 'uploadInt'
  | 'read'
  | 'hostView'
  | 'sizeOf'
  | 'dtypeOf'
  | 'release'
>;

function checkRange(n: number, offset: number, size: number, what: string): void {
  if (!(Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(n) && n >= 0 && offset + n <= size)) {
    throw new HypeError(
      'shape',
      `${what}: ${n} values at offset ${offset} do not fit a tensor of ${size}; pass a range inside the tensor`,
    );
  }
}

export const hostMemory: HostMemory = {
  residence: 'host',
  allocate: (dtype: DType, n: number, what?: string) => allocateArray(dtype, n, what),
  allocateInt(n: number, what = 'an int tensor'): Int32Array {
    if (!(Number.isSafeInteger(n) && n >= 0 && n <= MAX_ELEMENTS)) {
      throw new HypeError('shape', `${what}: ${n} elements requested; use a non-negative count below 2^32`);
    }
    return new Int32Array(n);
  },
  allocateStats: (n: number) => allocateArray('float64', n, 'a statistics tensor'),
  upload(src: ArrayLike<number>, dst: FloatArray, offset = 0): void {
    checkRange(src.length, offset, dst.length, 'upload');
    dst.set(src, offset);
  },
  uploadInt(src: Int32Array, dst: Int32Array): void {
    checkRange(src.length, 0, dst.length, 'uploadInt');
    dst.set(src);
  },
  read(src: FloatArray, offset = 0, n = src.length - offset): Promise<FloatArray> {
    checkRange(n, offset, src.length, 'read');
    return Promise.resolve(src.slice(offset, offset + n));
  },
  hostView: (t: FloatArray) => t,
  sizeOf: (t: FloatArray) => t.length,
  dtypeOf: (t: FloatArray) => dtypeOf(t),
  release(): void {},
};

/**
 * The members every host backend shares: memory (above) and the tensor ops of layers.ts. ReferenceBackend and
 * NativeBackend extend it and add their kernels.
 */
export abstract class HostBackendBase {
  readonly residence = 'host' as const;
  readonly allocate = hostMemory.allocate;
  readonly allocateInt = hostMemory.allocateInt;
  readonly allocateStats = hostMemory.allocateStats;
  readonly upload = hostMemory.upload;
  readonly uploadInt = hostMemory.uploadInt;
  readonly read = hostMemory.read;
  readonly hostView = hostMemory.hostView;
  readonly sizeOf = hostMemory.sizeOf;
  readonly dtypeOf = hostMemory.dtypeOf;
  readonly release = hostMemory.release;
  readonly copyRows = hostTensorOps.copyRows;
  readonly fill = hostTensorOps.fill;
  readonly addInto = hostTensorOps.addInto;
  readonly splitQkv = hostTensorOps.splitQkv;
  readonly mergeQkv = hostTensorOps.mergeQkv;
  readonly headsToTokens = hostTensorOps.headsToTokens;
  readonly tokensToHeads = hostTensorOps.tokensToHeads;
  readonly globalNorm = hostTensorOps.globalNorm;
  readonly clipByNorm = hostTensorOps.clipByNorm;
  readonly countNonFinite = hostTensorOps.countNonFinite;
  readonly gateForward = hostTensorOps.gateForward;
  readonly gateBackward = hostTensorOps.gateBackward;
}
