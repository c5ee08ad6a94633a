/**
 * The native backend: the N-API addon built from native/ by `npm install` (flash-style attention forward and
 * backward adding a per-head distance table, a blocked sgemm, and every layer op), multithreaded on one persistent
 * pool. The addon is checked at load (checkNativeAddon): a stale build is an error there, never a silent
 * per-call fallback.
 *
 * A host backend: its tensor handles are the typed arrays themselves (host-memory.ts), and its memory movement
 * (copies, head split/merge, norms) is the TypeScript of layers.ts.
 * fp32 only: Float64Array inputs are refused (use the reference backend for fp64), except by scoreAttention,
 * whose fp64 work runs on the reference loops, and householderWalk, whose kernel takes either dtype. Every call is validated in
 * TypeScript (validate.ts, native-layers.ts) before native code runs; native/bindings.cc only re-checks what
 * protects memory. The 'dense' bias is a test oracle, not a kernel feature: this
 * backend delegates it to the reference implementation (fp32, O(L^2) time), so results stay correct but slow.
 * The layer operations (layer norm, GELU, bias, cross-entropy, AdamW, embedding, the prefix-masked row softmax) run
 * natively for fp32 tensors and pass fp64 ones to the references (native-layers.ts), because some encodings keep
 * fp64 parameters.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HypeError } from '../errors.ts';
import { allocate, dtypeOf, type FloatArray } from '../tensor.ts';
import type {
  AttentionForward,
  AttentionGrads,
  AttentionOptions,
  AttentionShape,
  Backend,
  HouseholderWalk,
  PositionBias,
  PositionBiasGrad,
} from './backend.ts';
import { hostBf16 } from './bf16-hooks.ts';
import { HostBackendBase } from './host-memory.ts';
import { validateHouseholderWalk, validateWalkBackward, WALK_CHUNK, walkStateSizes } from './householder-walk.ts';
import { referenceLayerOps, type LayerOps } from './layers.ts';
import { nativeLayerOps, type NativeLayerKernels } from './native-layers.ts';
import { ReferenceBackend, referenceScoreKernels } from './reference.ts';
import { scoreAttention, type ExplicitAttention, type ScoreKernels } from './score-attention.ts';
import {
  checkAttentionLse,
  validateAttentionBackward,
  validateAttentionForward,
  validateGemm,
  validateGemmOutput,
  validateThreads,
  type FiniteScanner,
} from './validate.ts';

/** The kernel interface version this code expects; native/bindings.cc exports its own as `abi`. */
export const NATIVE_ABI = 5;

/** The addon's raw surface (native/bindings.cc). */
export interface NativeAddon extends NativeLayerKernels {
  abi: number;
  setThreads(n: number): number;
  firstNonFinite(data: Float32Array, allowNegInf: boolean): number;
  threads(): number;
  vectorWidth: number;
  gemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    beta: number,
    c: Float32Array,
    ldc: number,
  ): void;
  attentionForward(
    params: object,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    out: Float32Array,
    lse: Float32Array,
  ): void;
  attentionBackward(
    params: object,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    out: Float32Array,
    lse: Float32Array,
    dOut: Float32Array,
    dq: Float32Array,
    dk: Float32Array,
    dv: Float32Array,
    dTable: Float64Array | null,
  ): void;
  householderWalkForward(
    params: object,
    q: FloatArray,
    k: FloatArray,
    w: Float64Array,
    beta: Float64Array,
    logits: FloatArray,
    ...state: WalkStateArrays
  ): void;
  householderWalkBackward(
    params: object,
    q: FloatArray,
    k: FloatArray,
    w: Float64Array,
    beta: Float64Array,
    dLogits: FloatArray,
    ...rest: [...WalkStateArrays, dq: FloatArray, dk: FloatArray, dw: Float64Array, dbeta: Float64Array]
  ): void;
}

/** What a Householder walk keeps for its backward: kHat, zs, u in the dtype of q and k, ys in fp64. */
type WalkStateArrays = [kHat: FloatArray, zs: FloatArray, u: FloatArray, ys: Float64Array];

const ADDON_FUNCTIONS = [
  'setThreads',
  'firstNonFinite',
  'threads',
  'gemm',
  'attentionForward',
  'attentionBackward',
  'householderWalkForward',
  'householderWalkBackward',
  ...(Object.keys(referenceLayerOps) as (keyof LayerOps)[]),
] as const;

/**
 * The addon as loaded, checked: a build from other sources (a checkout updated without `npm rebuild`) has another
 * kernel interface version or lacks kernels, and is an error here, at load, never a per-call fallback.
 */
export function checkNativeAddon(addon: unknown): NativeAddon {
  const a = addon as Partial<Record<string, unknown>>;
  const missing = ADDON_FUNCTIONS.filter((name) => typeof a?.[name] !== 'function');
  const problems: string[] = [];
  if (a?.abi !== NATIVE_ABI) problems.push(`kernel interface ${String(a?.abi)} where this code needs ${NATIVE_ABI}`);
  if (missing.length > 0) problems.push(`no ${missing.join(', ')}`);
  if (problems.length > 0) {
    throw new HypeError(
      'native',
      `the native addon is a stale build (${problems.join('; ')}); rebuild it with \`npm rebuild\` ` +
        `(or use loadBackend('reference'))`,
    );
  }
  return addon as NativeAddon;
}

let cached: { addon: NativeAddon | null; error: string } | undefined;

/** The package root: the nearest folder above this module holding binding.gyp (src/ or dist/src/ layouts). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'binding.gyp'))) return dir;
    dir = dirname(dir);
  }
  return dirname(dirname(dirname(fileURLToPath(import.meta.url))));
}

/**
 * The addon `load` returns, checked (checkNativeAddon), or null with the reason: a missing build (load throws) and
 * a stale one are both an error here, at load.
 */
export function tryLoadAddon(load: () => unknown): { addon: NativeAddon | null; error: string } {
  try {
    return { addon: checkNativeAddon(load()), error: '' };
  } catch (e) {
    return { addon: null, error: e instanceof Error ? e.message.split('\n')[0]! : String(e) };
  }
}

/** Loads the addon once; null (with the reason in `nativeLoadError()`) when it was not built or is stale. */
export function loadNativeAddon(): NativeAddon | null {
  cached ??= tryLoadAddon(() => {
    const require = createRequire(import.meta.url);
    const build = require('node-gyp-build') as (dir: string) => NativeAddon;
    return build(packageRoot());
  });
  return cached.addon;
}

export function nativeLoadError(): string {
  loadNativeAddon();
  return cached!.error;
}

/** Narrows to Float32Array or refuses with the fix (this backend computes in fp32 only). */
function f32(a: FloatArray, name: string): Float32Array {
  if (a instanceof Float32Array) return a;
  throw new HypeError(
    'argument',
    `the native backend computes in fp32 but ${name} is a ${(a as object)?.constructor?.name ?? typeof a}; pass ` +
      `Float32Array tensors, or use the reference backend (loadBackend('reference')) for fp64`,
  );
}

/** The kernels' parameter object (native/bindings.cc readParams) for a shape, options and a non-dense bias. */
export function kernelParams(
  shape: AttentionShape,
  opts: AttentionOptions,
  bias: Exclude<PositionBias, { kind: 'dense' }>,
) {
  return {
    batch: shape.batch,
    heads: shape.heads,
    kvHeads: shape.kvHeads,
    lq: shape.lq,
    lk: shape.lk,
    headDim: shape.headDim,
    valueDim: shape.valueDim,
    causal: opts.causal,
    scale: opts.scale,
    queryOffset: opts.queryOffset ?? shape.lk - shape.lq,
    // [H, span] by distance, fp64 or fp32 (the kernel rounds each value to fp32 once); null: no position term.
    table: bias.kind === 'distance' ? bias.table : null,
  };
}

export interface NativeOptions {
  /** Worker threads for every native call (the pool is shared process-wide). Default: all available cores. */
  threads?: number;
}

export class NativeBackend extends HostBackendBase implements Backend {
  readonly name: string = 'native';
  private readonly addon: NativeAddon;
  private readonly reference = new ReferenceBackend();
  /** The addon's SIMD finite scan: validation stays in TypeScript, only the search for a NaN/Inf is native. */
  private readonly scan: FiniteScanner;
  /** The layer ops over the addon's kernels (native-layers.ts: fp32 natively, other dtypes on the references). */
  private readonly layers: LayerOps;

  constructor(opts: NativeOptions = {}) {
    super();
    const addon = loadNativeAddon();
    if (!addon) {
      throw new HypeError(
        'native',
        `the native addon is not available (${nativeLoadError()}); rebuild it with \`npm rebuild\` (needs g++ ` +
          `and make), or use loadBackend('reference')`,
      );
    }
    this.addon = addon;
    this.scan = (data, allowNegInf) => addon.firstNonFinite(data, allowNegInf);
    this.layers = nativeLayerOps(addon);
    this.setThreads(opts.threads ?? availableParallelism());
  }

  layerNormForward(...a: Parameters<LayerOps['layerNormForward']>): void {
    this.layers.layerNormForward(...a);
  }
  layerNormBackward(...a: Parameters<LayerOps['layerNormBackward']>): void {
    this.layers.layerNormBackward(...a);
  }
  geluForward(...a: Parameters<LayerOps['geluForward']>): void {
    this.layers.geluForward(...a);
  }
  geluBackward(...a: Parameters<LayerOps['geluBackward']>): void {
    this.layers.geluBackward(...a);
  }
  softmaxCrossEntropyForward(...a: Parameters<LayerOps['softmaxCrossEntropyForward']>): number {
    return this.layers.softmaxCrossEntropyForward(...a);
  }
  softmaxCrossEntropyBackward(...a: Parameters<LayerOps['softmaxCrossEntropyBackward']>): void {
    this.layers.softmaxCrossEntropyBackward(...a);
  }
  prefixSoftmaxRows(...a: Parameters<LayerOps['prefixSoftmaxRows']>): void {
    this.layers.prefixSoftmaxRows(...a);
  }
  adamwStep(...a: Parameters<LayerOps['adamwStep']>): void {
    this.layers.adamwStep(...a);
  }
  embeddingForward(...a: Parameters<LayerOps['embeddingForward']>): void {
    this.layers.embeddingForward(...a);
  }
  embeddingBackward(...a: Parameters<LayerOps['embeddingBackward']>): void {
    this.layers.embeddingBackward(...a);
  }
  biasAdd(...a: Parameters<LayerOps['biasAdd']>): void {
    this.layers.biasAdd(...a);
  }
  biasBackward(...a: Parameters<LayerOps['biasBackward']>): void {
    this.layers.biasBackward(...a);
  }

  /** Resizes the process-wide native thread pool. */
  setThreads(threads: number): void {
    this.addon.setThreads(validateThreads(threads));
  }

  get threads(): number {
    return this.addon.threads();
  }

  gemm(
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
    ldc: number,
  ): void {
    // Finiteness of A and B is not checked here (an O(mk + kn) JS pass per call): NaN propagates as in BLAS and
    // cannot make the kernel misbehave; sizes and strides are what native code must be able to trust.
    validateGemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c);
    validateGemmOutput(m, n, c, ldc);
    this.addon.gemm(transA, transB, m, n, k, alpha, f32(a, 'A'), lda, f32(b, 'B'), ldb, beta, f32(c, 'C'), ldc);
  }

  gemmBf16(...a: Parameters<Backend['gemmBf16']>): void {
    hostBf16().gemm(true, ...a);
  }

  attentionForward(
    shape: AttentionShape,
    q: FloatArray,
    k: FloatArray,
    v: FloatArray,
    opts: AttentionOptions,
  ): AttentionForward {
    for (const [x, name] of [
      [q, 'q'],
      [k, 'k'],
      [v, 'v'],
    ] as const)
      f32(x, name);
    validateAttentionForward(shape, q, k, v, opts, this.scan);
    if (opts.operands === 'bf16') return hostBf16().forward(true, shape, q, k, v, opts);
    const bias = opts.bias ?? { kind: 'none' };
    if (bias.kind === 'dense') return this.reference.attentionForward(shape, q, k, v, opts);
    const rows = shape.batch * shape.heads * shape.lq;
    const out = new Float32Array(rows * shape.valueDim);
    const lse = new Float32Array(rows);
    this.addon.attentionForward(kernelParams(shape, opts, bias), f32(q, 'q'), f32(k, 'k'), f32(v, 'v'), out, lse);
    checkAttentionLse(lse, shape, opts, this.scan);
    return { out, lse };
  }

  attentionBackward(
    shape: AttentionShape,
    q: FloatArray,
    k: FloatArray,
    v: FloatArray,
    out: FloatArray,
    lse: FloatArray,
    dOut: FloatArray,
    opts: AttentionOptions,
  ): AttentionGrads {
    const arrays = { q, k, v, out, lse, dOut };
    for (const [name, x] of Object.entries(arrays)) f32(x, name);
    validateAttentionBackward(shape, q, k, v, out, lse, dOut, opts, this.scan);
    if (opts.operands === 'bf16') return hostBf16().backward(true, shape, q, k, v, out, lse, dOut, opts);
    const bias = opts.bias ?? { kind: 'none' };
    if (bias.kind === 'dense') return this.reference.attentionBackward(shape, q, k, v, out, lse, dOut, opts);
    const dq = new Float32Array(q.length);
    const dk = new Float32Array(k.length);
    const dv = new Float32Array(v.length);
    const dBias: PositionBiasGrad =
      bias.kind === 'distance' ? { kind: 'distance', table: new Float64Array(bias.table.length) } : { kind: 'none' };
    this.addon.attentionBackward(
      kernelParams(shape, opts, bias),
      f32(q, 'q'),
      f32(k, 'k'),
      f32(v, 'v'),
      f32(out, 'out'),
      f32(lse, 'lse'),
      f32(dOut, 'dOut'),
      dq,
      dk,
      dv,
      dBias.kind === 'distance' ? dBias.table : null,
    );
    return { dq, dk, dv, dBias };
  }

  /** fp32 work on the native sgemm and prefix row softmax; fp64 work (some encodings keep fp64) on the loops. */
  scoreAttention(...a: Parameters<Backend['scoreAttention']>): ExplicitAttention {
    return scoreAttention((dtype): ScoreKernels => (dtype === 'float32' ? this : referenceScoreKernels), ...a);
  }

  // ---- The Householder walk: native/householder.cc, fp32 or fp64, threaded over heads.
  householderWalk(...args: Parameters<Backend['householderWalk']>): HouseholderWalk {
    validateHouseholderWalk(...args);
    const [shape, queryOffset, scale, q, k, w, beta, logits] = args;
    const { batch, heads, kvHeads, lq, lk, headDim } = shape;
    const params = { batch, heads, kvHeads, lq, lk, headDim, queryOffset, scale, chunk: WALK_CHUNK };
    const sizes = walkStateSizes(shape, queryOffset);
    const dtype = dtypeOf(q);
    const state: WalkStateArrays = [
      allocate(dtype, sizes.kHat),
      allocate(dtype, sizes.zs),
      allocate(dtype, sizes.u),
      new Float64Array(sizes.ys),
    ];
    this.addon.householderWalkForward(params, q, k, w, beta, logits, ...state);
    return {
      backward: (dLogits, dq, dk, dw, dbeta) => {
        validateWalkBackward(shape, q, dLogits, dq, dk, dw, dbeta);
        this.addon.householderWalkBackward(params, q, k, w, beta, dLogits, ...state, dq, dk, dw, dbeta);
      },
    };
  }
}

/** True when the addon is built and loadable. */
export function nativeAvailable(): boolean {
  return loadNativeAddon() !== null;
}
