/**
 * WebGpuBackend: the Backend interface (backend.ts, layers.ts) over GPU-resident tensors, residence 'device'.
 * A float handle (GpuHandle) is an f32 GPUBuffer of n values; an int handle (GpuIntHandle) an i32 one (token ids,
 * targets). Shapes are the sizes each op is given (row-major, contiguous), exactly as on the host backends.
 *
 * Data crosses only through upload/uploadInt (queued writes) and read (the one asynchronous member: a copy to a
 * mappable buffer, awaited). Every other member enqueues kernels and returns at once; the queue keeps them in order.
 * Statistics tensors are f32 (WebGPU has no f64 storage) and come back from read as a Float64Array.
 * Buffers are pooled by size (release returns one to the pool; a training step that allocates the same shapes every
 * step reuses them) and pipelines are compiled once per kernel and tile shape (context.ts).
 * Browser-safe: nothing here imports a Node built-in; Node gets its GPU object from node.ts.
 */
/// <reference types="webgpu" />
import { HypeError } from '../../errors.ts';
import type { DType, FloatArray } from '../../tensor.ts';
import type {
  AttentionForward,
  AttentionGrads,
  AttentionOptions,
  AttentionShape,
  Backend,
  ExplicitAttention,
  ExplicitHooks,
  HouseholderWalk,
  ScoreAttentionOptions,
} from '../backend.ts';
import type { AdamWHyper, GateFn } from '../layers.ts';
import { gpuAttentionBackward, gpuAttentionForward, type GpuAttentionOptions } from './attention.ts';
import { acquireGpu, GpuContext, type AcquireOptions, type GpuTensor } from './context.ts';
import { gpuGemm } from './gemm.ts';
import * as L from './layers.ts';
import * as T from './tensor-ops.ts';

/** A float tensor on the GPU: an f32 buffer of `size` values. */
export interface GpuHandle extends GpuTensor {
  readonly dtype: 'f32';
  /** A statistics tensor (allocateStats): read returns it as a Float64Array. */
  readonly stats: boolean;
  released: boolean;
}

/** An int32 tensor on the GPU (token ids, targets). */
export interface GpuIntHandle extends GpuTensor {
  readonly dtype: 'i32';
  released: boolean;
}

function adopt(t: GpuTensor, stats = false): GpuHandle {
  return { buffer: t.buffer, shape: t.shape, dtype: 'f32', size: t.size, stats, released: false };
}

export class WebGpuBackend implements Backend<GpuHandle, GpuIntHandle> {
  readonly name = 'webgpu';
  readonly residence = 'device' as const;

  constructor(readonly ctx: GpuContext) {}

  /** A backend on `gpu` (navigator.gpu in a browser; node.ts in Node), or one HypeError naming the fix. */
  static async create(gpu: GPU | undefined | null, opts: AcquireOptions = {}): Promise<WebGpuBackend> {
    return new WebGpuBackend(await acquireGpu(gpu, opts));
  }

  /** The adapter, as its driver names it (vendor, architecture, device). */
  get description(): string {
    return this.ctx.description;
  }

  /** Frees every pooled buffer and the device; the backend cannot be used afterwards. */
  destroy(): void {
    this.ctx.destroy();
  }

  // ------------------------------------------------------------------------------------------------ memory

  private elements(n: number, what: string): void {
    if (!(Number.isSafeInteger(n) && n >= 0))
      throw new HypeError('shape', `${what}: ${n} elements requested; use a non-negative integer count`);
    const max = this.ctx.limits.maxStorageBufferBindingSize;
    if (n * 4 > max)
      throw new HypeError(
        'device',
        `${what}: ${n} values need ${n * 4} bytes, beyond this adapter's maxStorageBufferBindingSize (${max} bytes); ` +
          'use a smaller batch, model or sequence length',
      );
  }

  allocate(dtype: DType, n: number, what = 'a tensor'): GpuHandle {
    if (dtype !== 'float32')
      throw new HypeError(
        'argument',
        `${what}: the webgpu backend stores float32 only (WebGPU has no ${dtype}); use dtype float32, or the ` +
          'reference backend for float64',
      );
    this.elements(n, what);
    return adopt(this.ctx.zeros([n]));
  }

  allocateInt(n: number, what = 'an int tensor'): GpuIntHandle {
    this.elements(n, what);
    const t = this.ctx.zeros([n], 'i32');
    return { buffer: t.buffer, shape: t.shape, dtype: 'i32', size: t.size, released: false };
  }

  allocateStats(n: number): GpuHandle {
    this.elements(n, 'a statistics tensor');
    return adopt(this.ctx.zeros([n]), true);
  }

  upload(src: ArrayLike<number>, dst: GpuHandle, offset = 0): void {
    this.ctx.writeRange(live(dst, 'upload'), offset, src);
  }

  uploadInt(src: Int32Array, dst: GpuIntHandle): void {
    this.ctx.writeRange(live(dst, 'uploadInt'), 0, src);
  }

  async read(src: GpuHandle, offset = 0, n = src.size - offset): Promise<FloatArray> {
    const got = (await this.ctx.download(live(src, 'read'), offset, n)) as Float32Array;
    return src.stats ? Float64Array.from(got) : got;
  }

  hostView(_t: GpuHandle): FloatArray | null {
    return null;
  }

  sizeOf(t: GpuHandle): number {
    return t.size;
  }

  dtypeOf(_t: GpuHandle): DType {
    return 'float32';
  }

  release(t: GpuHandle | GpuIntHandle): void {
    live(t, 'release');
    t.released = true;
    this.ctx.release(t);
  }

  // ------------------------------------------------------------------------------------------------ gemm, attention

  gemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: GpuHandle,
    lda: number,
    b: GpuHandle,
    ldb: number,
    beta: number,
    c: GpuHandle,
    ldc: number,
  ): void {
    if (live(c, 'gemm C').buffer === live(a, 'gemm A').buffer || c.buffer === live(b, 'gemm B').buffer)
      throw new HypeError('argument', 'gemm: C must not share its tensor with A or B; write into a separate tensor');
    gpuGemm(this.ctx, transA, transB, m, n, k, alpha, a, b, beta, c, { lda, ldb, ldc });
  }

  /** Mixed precision needs bf16 kernels, which this backend does not have yet: refused, never computed in fp32. */
  gemmBf16(): void {
    throw noBf16();
  }

  private attentionOptions(opts: AttentionOptions<GpuHandle>): GpuAttentionOptions {
    if (opts.operands === 'bf16') throw noBf16();
    const o: GpuAttentionOptions = { causal: opts.causal, scale: opts.scale, gradTable: opts.biasGrad !== false };
    if (opts.queryOffset !== undefined) o.queryOffset = opts.queryOffset;
    const bias = opts.bias ?? { kind: 'none' };
    if (bias.kind === 'dense')
      throw new HypeError(
        'argument',
        'a dense position bias is a test oracle of the reference backend; on webgpu pass a distance table',
      );
    if (bias.kind === 'distance') o.table = live(bias.table, 'the distance table');
    return o;
  }

  attentionForward(
    shape: AttentionShape,
    q: GpuHandle,
    k: GpuHandle,
    v: GpuHandle,
    opts: AttentionOptions<GpuHandle>,
  ): AttentionForward<GpuHandle> {
    const o = this.attentionOptions(opts);
    const r = gpuAttentionForward(this.ctx, shape, live(q, 'q'), live(k, 'k'), live(v, 'v'), o);
    return { out: adopt(r.out), lse: adopt(r.lse) };
  }

  attentionBackward(
    shape: AttentionShape,
    q: GpuHandle,
    k: GpuHandle,
    v: GpuHandle,
    out: GpuHandle,
    lse: GpuHandle,
    dOut: GpuHandle,
    opts: AttentionOptions<GpuHandle>,
  ): AttentionGrads<GpuHandle> {
    const o = this.attentionOptions(opts);
    const g = gpuAttentionBackward(
      this.ctx,
      shape,
      live(q, 'q'),
      live(k, 'k'),
      live(v, 'v'),
      live(out, 'out'),
      live(lse, 'lse'),
      live(dOut, 'dOut'),
      o,
    );
    return {
      dq: adopt(g.dq),
      dk: adopt(g.dk),
      dv: adopt(g.dv),
      dBias: g.dTable ? { kind: 'distance', table: adopt(g.dTable) } : { kind: 'none' },
    };
  }

  scoreAttention(
    _shape: AttentionShape,
    _q: GpuHandle,
    _k: GpuHandle,
    _v: GpuHandle,
    _opts: ScoreAttentionOptions,
    _hooks: ExplicitHooks,
  ): ExplicitAttention<GpuHandle> {
    throw new HypeError(
      'argument',
      'attention over explicit scores runs on host backends (its encoding hooks read host arrays); use ' +
        '--backend native or reference for this encoding, or a device-portable one (none, alibi, hype with a fixed preset)',
    );
  }

  householderWalk(): HouseholderWalk {
    throw new HypeError(
      'argument',
      "PaTH's Householder walk runs on host backends (it reads host arrays); use --backend native or reference for " +
        'this encoding, or a device-portable one (none, alibi, hype with a fixed preset)',
    );
  }

  // ------------------------------------------------------------------------------------------------ layer ops

  layerNormForward(
    x: GpuHandle,
    gamma: GpuHandle,
    beta: GpuHandle,
    out: GpuHandle,
    mean: GpuHandle,
    rstd: GpuHandle,
    rows: number,
    width: number,
    eps: number,
  ): void {
    L.gpuLayerNormForward(this.ctx, ...lives(x, gamma, beta, out, mean, rstd), rows, width, eps);
  }

  layerNormBackward(
    dOut: GpuHandle,
    x: GpuHandle,
    gamma: GpuHandle,
    mean: GpuHandle,
    rstd: GpuHandle,
    dx: GpuHandle,
    dGamma: GpuHandle,
    dBeta: GpuHandle,
    rows: number,
    width: number,
  ): void {
    L.gpuLayerNormBackward(this.ctx, ...lives(dOut, x, gamma, mean, rstd, dx, dGamma, dBeta), rows, width);
  }

  geluForward(x: GpuHandle, out: GpuHandle, n: number): void {
    L.gpuGeluForward(this.ctx, ...lives(x, out), n);
  }

  geluBackward(x: GpuHandle, dOut: GpuHandle, dx: GpuHandle, n: number): void {
    L.gpuGeluBackward(this.ctx, ...lives(x, dOut, dx), n);
  }

  /** Writes the per-row losses and (meanOut given) their mean into meanOut[meanIndex]; returns NaN (a device). */
  softmaxCrossEntropyForward(
    logits: GpuHandle,
    targets: GpuIntHandle,
    losses: GpuHandle,
    rows: number,
    vocab: number,
    meanOut?: GpuHandle,
    meanIndex = 0,
  ): number {
    const mean = meanOut ? live(meanOut, 'meanOut') : undefined;
    L.gpuSoftmaxCrossEntropyForward(
      this.ctx,
      live(logits, 'logits'),
      live(targets, 'targets'),
      live(losses, 'losses'),
      mean,
      rows,
      vocab,
      meanIndex,
    );
    return NaN;
  }

  softmaxCrossEntropyBackward(
    logits: GpuHandle,
    targets: GpuIntHandle,
    dLogits: GpuHandle,
    rows: number,
    vocab: number,
    dLoss: number,
  ): void {
    L.gpuSoftmaxCrossEntropyBackward(
      this.ctx,
      live(logits, 'logits'),
      live(targets, 'targets'),
      live(dLogits, 'dLogits'),
      rows,
      vocab,
      dLoss,
    );
  }

  prefixSoftmaxRows(x: GpuHandle, rows: number, cols: number, visible: GpuIntHandle): void {
    L.gpuPrefixSoftmaxRows(this.ctx, live(x, 'x'), rows, cols, live(visible, 'visible'));
  }

  adamwStep(param: GpuHandle, grad: GpuHandle, m: GpuHandle, v: GpuHandle, n: number, h: AdamWHyper): void {
    L.gpuAdamWStep(this.ctx, ...lives(param, grad, m, v), n, h);
  }

  embeddingForward(table: GpuHandle, tokens: GpuIntHandle, out: GpuHandle, n: number, width: number, vocab: number) {
    L.gpuEmbeddingForward(this.ctx, live(table, 'table'), live(tokens, 'tokens'), live(out, 'out'), n, width, vocab);
  }

  embeddingBackward(dOut: GpuHandle, tokens: GpuIntHandle, dTable: GpuHandle, n: number, width: number): void {
    const vocab = width > 0 ? Math.floor(dTable.size / width) : 0;
    L.gpuEmbeddingBackward(
      this.ctx,
      live(dOut, 'dOut'),
      live(tokens, 'tokens'),
      live(dTable, 'dTable'),
      n,
      width,
      vocab,
    );
  }

  biasAdd(out: GpuHandle, bias: GpuHandle, rows: number, width: number): void {
    L.gpuBiasAdd(this.ctx, ...lives(out, bias), rows, width);
  }

  biasBackward(dOut: GpuHandle, dBias: GpuHandle, rows: number, width: number): void {
    L.gpuBiasBackward(this.ctx, ...lives(dOut, dBias), rows, width);
  }

  // ------------------------------------------------------------------------------------------------ tensor ops

  copyRows(
    src: GpuHandle,
    srcOffset: number,
    srcStride: number,
    dst: GpuHandle,
    dstOffset: number,
    dstStride: number,
    rows: number,
    width: number,
  ): void {
    T.gpuCopyRows(
      this.ctx,
      live(src, 'src'),
      srcOffset,
      srcStride,
      live(dst, 'dst'),
      dstOffset,
      dstStride,
      rows,
      width,
    );
  }

  fill(x: GpuHandle, value: number, offset: number, n: number): void {
    T.gpuFill(this.ctx, live(x, 'fill'), value, offset, n);
  }

  addInto(dst: GpuHandle, src: GpuHandle, n: number): void {
    T.gpuAddInto(this.ctx, ...lives(dst, src), n);
  }

  splitQkv(
    qkv: GpuHandle,
    q: GpuHandle,
    k: GpuHandle,
    v: GpuHandle,
    B: number,
    L: number,
    H: number,
    Hkv: number,
    D: number,
    qkStride = D,
    vStride = D,
  ) {
    T.gpuSplitQkv(this.ctx, ...lives(qkv, q, k, v), B, L, H, Hkv, D, qkStride, vStride);
  }

  mergeQkv(
    dq: GpuHandle,
    dk: GpuHandle,
    dv: GpuHandle,
    dqkv: GpuHandle,
    B: number,
    L: number,
    H: number,
    Hkv: number,
    D: number,
    qkStride = D,
    vStride = D,
  ) {
    T.gpuMergeQkv(this.ctx, ...lives(dq, dk, dv, dqkv), B, L, H, Hkv, D, qkStride, vStride);
  }

  headsToTokens(x: GpuHandle, out: GpuHandle, B: number, H: number, L: number, D: number, stride = D): void {
    gpuHeadsToTokens(this.ctx, ...lives(x, out), B, H, L, D, stride);
  }

  tokensToHeads(x: GpuHandle, out: GpuHandle, B: number, H: number, L: number, D: number, stride = D): void {
    gpuTokensToHeads(this.ctx, ...lives(x, out), B, H, L, D, stride);
  }

  globalNorm(tensors: readonly GpuHandle[], out: GpuHandle, outIndex: number): void {
    T.gpuGlobalNorm(this.ctx, lives(...tensors), live(out, 'out'), outIndex);
  }

  clipByNorm(tensors: readonly GpuHandle[], norm: GpuHandle, normIndex: number, clip: number): void {
    T.gpuClipByNorm(this.ctx, lives(...tensors), live(norm, 'norm'), normIndex, clip);
  }

  countNonFinite(x: GpuHandle, n: number, out: GpuHandle, outIndex: number): void {
    T.gpuCountNonFinite(this.ctx, live(x, 'x'), n, live(out, 'out'), outIndex);
  }

  gateForward(x: GpuHandle, out: GpuHandle, outer: number, len: number, inner: number, fn: GateFn, origin: number) {
    T.gpuGate(this.ctx, live(x, 'x'), null, live(out, 'out'), [outer, len, inner], fn, origin);
  }

  gateBackward(
    x: GpuHandle,
    dOut: GpuHandle,
    dx: GpuHandle,
    outer: number,
    len: number,
    inner: number,
    fn: GateFn,
    origin: number,
  ) {
    T.gpuGate(this.ctx, ...lives(x, dOut, dx), [outer, len, inner], fn, origin);
  }
}

const gpuHeadsToTokens = L.gpuMergeHeads;
const gpuTokensToHeads = L.gpuSplitHeads;

/** The handle itself, unless it was released (then one HypeError: using freed memory is a caller bug). */
function live<H extends GpuHandle | GpuIntHandle>(t: H, what: string): H {
  if (t.released)
    throw new HypeError('argument', `${what}: this tensor was released; allocate a new one instead of reusing it`);
  return t;
}

function lives<H extends GpuHandle[]>(...ts: H): H {
  for (const t of ts) live(t, 'an operand');
  return ts;
}

function noBf16(): HypeError {
  return new HypeError(
    'argument',
    'bf16 mixed precision runs on the CPU backends (native, reference); on webgpu train with --precision fp32',
  );
}
