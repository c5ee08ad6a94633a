/**
 * A device backend for tests: the reference backend behind OPAQUE handles. Each handle is a Proxy that throws on
 * any property access (an index, .length, .set, .subarray, even .then), so code that treats a handle as a typed
 * array fails at once; the arrays live in a WeakMap only this backend reads. Every op refuses a host typed array
 * where a handle belongs (an encoding passing host data without upload). Transfers are counted: upload and
 * uploadInt (host -> backend) and read (backend -> host), the only ways across.
 */
import type { Backend, Residence } from '../../src/backend/backend.ts';
import { ReferenceBackend } from '../../src/backend/reference.ts';
import { HypeError } from '../../src/errors.ts';
import type { DType, FloatArray } from '../../src/tensor.ts';

declare const brand: unique symbol;
export type Opaque = { readonly [brand]: 'float' };
export type OpaqueInt = { readonly [brand]: 'int' };

export interface TransferCounts {
  uploads: number;
  uploadInts: number;
  reads: number;
  allocations: number;
}

const MEMBERS_WITH_HOST_DATA = new Set(['upload', 'uploadInt']);

export class OpaqueBackend {
  readonly name = 'opaque-test';
  readonly residence: Residence = 'device';
  readonly counts: TransferCounts = { uploads: 0, uploadInts: 0, reads: 0, allocations: 0 };
  private readonly store = new WeakMap<object, FloatArray | Int32Array>();
  private readonly made = new WeakSet<object>();
  private readonly ref = new ReferenceBackend();

  /** The backend, typed as what models see. */
  static create(): { backend: Backend<Opaque, OpaqueInt>; impl: OpaqueBackend } {
    const impl = new OpaqueBackend();
    return { backend: impl.asBackend(), impl };
  }

  reset(): void {
    Object.assign(this.counts, { uploads: 0, uploadInts: 0, reads: 0, allocations: 0 });
  }

  private wrap(a: FloatArray | Int32Array): object {
    const handle = new Proxy(Object.create(null) as object, {
      get(_t, key) {
        throw new Error(`a device handle was read like a host array (property ${String(key)})`);
      },
      set(_t, key) {
        throw new Error(`a device handle was written like a host array (property ${String(key)})`);
      },
      has(_t, key) {
        throw new Error(`a device handle was probed like a host array (property ${String(key)})`);
      },
      ownKeys() {
        throw new Error('a device handle was enumerated like a host object');
      },
    });
    this.store.set(handle, a);
    this.made.add(handle);
    return handle;
  }

  private unwrap(x: unknown, member: string): unknown {
    if (x === null || typeof x !== 'object') return x;
    const a = this.store.get(x);
    if (a) return a;
    if (this.made.has(x)) throw new Error(`${member} was given a handle after its release`);
    if (ArrayBuffer.isView(x)) {
      if (MEMBERS_WITH_HOST_DATA.has(member)) return x;
      throw new Error(`${member} was given a host ${x.constructor.name} where a device handle belongs`);
    }
    if (Array.isArray(x)) return x.map((e) => this.unwrap(e, member));
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(x)) out[k] = this.unwrap(v, member);
    return out;
  }

  /** Results of attention: typed arrays become fresh handles (deeply, through dBias). */
  private wrapResult(x: unknown): unknown {
    if (x === null || typeof x !== 'object') return x;
    if (x instanceof Float32Array || x instanceof Float64Array) return this.wrap(x);
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(x)) out[k] = this.wrapResult(v);
    return out;
  }

  private asBackend(): Backend<Opaque, OpaqueInt> {
    const ref = this.ref as unknown as Record<string, (...a: unknown[]) => unknown>;
    const be: Record<string, unknown> = { name: this.name, residence: this.residence };
    const ops = [
      'layerNormForward',
      'layerNormBackward',
      'geluForward',
      'geluBackward',
      'softmaxCrossEntropyForward',
      'softmaxCrossEntropyBackward',
      'prefixSoftmaxRows',
      'adamwStep',
      'embeddingForward',
      'embeddingBackward',
      'biasAdd',
      'biasBackward',
      'copyRows',
      'fill',
      'addInto',
      'splitQkv',
      'mergeQkv',
      'headsToTokens',
      'tokensToHeads',
      'globalNorm',
      'clipByNorm',
      'countNonFinite',
      'gateForward',
      'gateBackward',
      'gemm',
    ];
    for (const op of ops) {
      be[op] = (...args: unknown[]) => {
        const r = ref[op]!.apply(
          this.ref,
          args.map((a) => this.unwrap(a, op)),
        );
        return op === 'softmaxCrossEntropyForward' ? NaN : r; // a device has no host number to return
      };
    }
    for (const op of ['attentionForward', 'attentionBackward']) {
      be[op] = (...args: unknown[]) =>
        this.wrapResult(
          ref[op]!.apply(
            this.ref,
            args.map((a) => this.unwrap(a, op)),
          ),
        );
    }
    be.scoreAttention = () => {
      throw new HypeError('argument', 'attention over explicit scores runs on host backends');
    };
    be.allocate = (dtype: DType, n: number) => {
      this.counts.allocations++;
      return this.wrap(this.ref.allocate(dtype, n));
    };
    be.allocateInt = (n: number) => {
      this.counts.allocations++;
      return this.wrap(new Int32Array(n));
    };
    be.allocateStats = (n: number) => {
      this.counts.allocations++;
      return this.wrap(new Float64Array(n));
    };
    be.upload = (src: ArrayLike<number>, dst: object, offset = 0) => {
      this.counts.uploads++;
      (this.unwrap(dst, 'upload') as FloatArray).set(src, offset);
    };
    be.uploadInt = (src: Int32Array, dst: object) => {
      this.counts.uploadInts++;
      (this.unwrap(dst, 'uploadInt') as Int32Array).set(src);
    };
    be.read = (src: object, offset = 0, n?: number) => {
      this.counts.reads++;
      const a = this.unwrap(src, 'read') as FloatArray;
      return Promise.resolve(a.slice(offset, offset + (n ?? a.length - offset)));
    };
    be.hostView = () => null;
    be.sizeOf = (t: object) => (this.unwrap(t, 'sizeOf') as FloatArray).length;
    be.dtypeOf = (t: object) => this.ref.dtypeOf(this.unwrap(t, 'dtypeOf') as FloatArray);
    be.release = (t: object) => {
      if (!this.store.delete(t)) throw new Error('release of a handle that was already released (or never made)');
    };
    return be as unknown as Backend<Opaque, OpaqueInt>;
  }

  /** The array behind a handle, for the test's own checks after a run (not something a model can do). */
  peek(t: Opaque): FloatArray {
    return this.store.get(t as object) as FloatArray;
  }
}
