/**
 * The WebGPU device, its limits, GPU-resident tensors and the compiled-pipeline cache. One code path for Node and
 * browsers: the caller hands in a `GPU` object (`navigator.gpu` in a browser; in Node, `create([])` from the `webgpu`
 * package, see node.ts). Nothing here imports a Node built-in.
 *
 * A GpuTensor is a GPUBuffer plus shape and dtype (row-major, contiguous). Kernels read and write GpuTensors and
 * chain on the GPU queue; only `download` returns to JavaScript. Released tensors go back to a pool keyed by byte
 * size, so a training step that allocates the same shapes every step reuses the same buffers.
 *
 * Submission: kernels, clears and copies are recorded into one open command encoder (dispatches share one compute
 * pass; WebGPU makes each dispatch its own usage scope, so a kernel sees the writes of the one before it) and
 * submitted together when something must reach the queue timeline in order: a read (`download`, `sync`), a host
 * write into a tensor (`queue.writeBuffer` runs before any later submit, so the kernels recorded before it are
 * submitted first), or a full uniform arena. Each recorded dispatch's uniforms get their own aligned slot of one
 * arena buffer, filled on the host and written once, right before the batch's submit; the arena is reused by the
 * next batch, whose write is ordered after that submit on the queue timeline. A training step is thus a few
 * submits (one per host write and read) instead of one per kernel, and allocates no buffer after its first.
 *
 * Errors: kernels are enqueued synchronously; WebGPU reports validation errors asynchronously, so every pipeline
 * creation, bind group and batch submit runs inside an error scope whose result `sync()` (and therefore `download`)
 * awaits and turns into a HypeError.
 */
/// <reference types="webgpu" />
import { HypeError } from '../../errors.ts';

// WebGPU's usage and map-mode flags are fixed by the specification; spelled out here so this module does not
// depend on the GPUBufferUsage global (absent in Node unless the caller installs the `webgpu` globals).
export const USAGE = { MAP_READ: 1, COPY_SRC: 4, COPY_DST: 8, UNIFORM: 64, STORAGE: 128 } as const;
const MAP_MODE_READ = 1;
/** Bytes of a batch's uniform arena: at the usual 256-byte slot alignment, 1024 dispatches per submit at most. */
const ARENA_BYTES = 256 * 1024;

export const LAVAPIPE_FIX =
  'install a WebGPU adapter: in Node, Mesa 25 lavapipe (software Vulkan, from bookworm-backports) plus the `webgpu` ' +
  'package, exactly as .ci/system-deps does (run `bash .ci/system-deps` as root), or a GPU driver with Vulkan; in a ' +
  'browser, one with WebGPU enabled (Chromium: --enable-unsafe-webgpu)';

/** f16 is storage only (kernels accumulate in f32); it needs the adapter's shader-f16 feature. */
export type GpuDType = 'f32' | 'f16' | 'i32';

const F32 = new Float32Array(1);
const F32_BITS = new Uint32Array(F32.buffer);

/** IEEE binary16 bits of x (via f32, round to nearest even); values beyond the f16 range become +-Infinity. */
export function f16Bits(x: number): number {
  F32[0] = x;
  const b = F32_BITS[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++; // a carry into the exponent is the correct rounding
  return sign | half;
}

/** The number IEEE binary16 bits h stand for. */
export function f16Value(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

const bytesPer = (dtype: GpuDType) => (dtype === 'f16' ? 2 : 4);

export interface GpuTensor {
  readonly buffer: GPUBuffer;
  readonly shape: readonly number[];
  readonly dtype: GpuDType;
  /** Number of elements (product of shape). */
  readonly size: number;
}

export interface AcquireOptions {
  powerPreference?: GPUPowerPreference;
}

function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) {
    if (!Number.isInteger(s) || s < 0) throw new HypeError('shape', `shape [${shape}] must hold non-negative integers`);
    n *= s;
  }
  return n;
}

/** Requests an adapter and a device from `gpu`, or throws one HypeError naming the fix. */
export async function acquireGpu(gpu: GPU | undefined | null, opts: AcquireOptions = {}): Promise<GpuContext> {
  if (!gpu) throw new HypeError('device', `WebGPU is not available here (no GPU object); ${LAVAPIPE_FIX}`);
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter(opts.powerPreference ? { powerPreference: opts.powerPreference } : undefined);
  } catch (e) {
    throw new HypeError('device', `requesting a WebGPU adapter failed (${String(e)}); ${LAVAPIPE_FIX}`);
  }
  if (!adapter) throw new HypeError('device', `no WebGPU adapter was found; ${LAVAPIPE_FIX}`);
  // Ask for the adapter's own limits, not the spec defaults: storage bindings and workgroup memory matter here.
  const l = adapter.limits;
  const requiredLimits: Record<string, number> = {
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxBufferSize: l.maxBufferSize,
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
  };
  const requiredFeatures: GPUFeatureName[] = adapter.features.has('shader-f16') ? ['shader-f16'] : [];
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
  return new GpuContext(gpu, device, adapter.info, [...adapter.features]);
}

export class GpuContext {
  readonly limits: GPUSupportedLimits;
  readonly description: string;
  /** Whether f16 storage tensors are available (the adapter's shader-f16 feature, enabled on this device). */
  readonly hasF16: boolean;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly pool = new Map<number, GPUBuffer[]>();
  /** Staging (map-read) buffers by size, reused across reads. */
  private readonly stagingPool = new Map<number, GPUBuffer[]>();
  private pending: Promise<GPUError | null>[] = [];
  private lost: string | null = null;
  /** The batch being recorded (null: nothing recorded since the last submit) and its open compute pass. */
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  /** The uniform arena (created on first use), its host image for the batch being recorded, and the bytes used. */
  private arena: GPUBuffer | null = null;
  private readonly arenaHost = new Uint8Array(ARENA_BYTES);
  private arenaUsed = 0;
  /** Submits so far (the tests count them). */
  submits = 0;
  /** false: submit every kernel on its own, as before batching (bench:webgpu's side-by-side row only). */
  batching = true;

  constructor(
    /** Held so the GPU instance outlives its device (Dawn tears its threads down when the instance is collected). */
    readonly gpu: GPU,
    readonly device: GPUDevice,
    info: GPUAdapterInfo,
    /** What the adapter offers (shader-f16, subgroups, ...), whether or not this device enabled it. */
    readonly adapterFeatures: readonly string[] = [],
  ) {
    this.limits = device.limits;
    this.hasF16 = device.features.has('shader-f16');
    this.description = [info.vendor, info.architecture, info.device, info.description].filter((s) => s).join(' ');
    void device.lost.then((e) => {
      this.lost = e.message || e.reason || 'unknown reason';
    });
  }

  /** Throws unless the device is alive. */
  private alive(): void {
    if (this.lost !== null)
      throw new HypeError('device', `the WebGPU device was lost (${this.lost}); restart from the last checkpoint`);
  }

  // ---------------------------------------------------------------- tensors

  private buffer(bytes: number): GPUBuffer {
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    const free = this.pool.get(size);
    if (free && free.length > 0) return free.pop()!;
    if (size > this.limits.maxBufferSize)
      throw new HypeError(
        'device',
        `a ${size}-byte tensor exceeds this adapter's maxBufferSize (${this.limits.maxBufferSize} bytes); use smaller shapes`,
      );
    return this.device.createBuffer({ size, usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST });
  }

  /** An uninitialised tensor (contents are whatever the pooled buffer held; zero it if that matters). */
  empty(shape: readonly number[], dtype: GpuDType = 'f32'): GpuTensor {
    this.alive();
    if (dtype === 'f16' && !this.hasF16)
      throw new HypeError(
        'device',
        "f16 tensors need the adapter's shader-f16 feature, which this adapter lacks; use f32",
      );
    const size = numel(shape);
    return { buffer: this.buffer(size * bytesPer(dtype)), shape: [...shape], dtype, size };
  }

  zeros(shape: readonly number[], dtype: GpuDType = 'f32'): GpuTensor {
    const t = this.empty(shape, dtype);
    this.clear(t);
    return t;
  }

  /** Sets every element to 0 (recorded in the batch, in order with the kernels). */
  clear(t: GpuTensor): void {
    this.alive();
    this.commands().clearBuffer(t.buffer, 0, t.buffer.size);
  }

  // ---------------------------------------------------------------- batching

  /** The open command encoder, outside any compute pass (for clears and copies). */
  private commands(): GPUCommandEncoder {
    this.pass?.end();
    this.pass = null;
    return (this.encoder ??= this.device.createCommandEncoder());
  }

  private computePass(): GPUComputePassEncoder {
    return (this.pass ??= (this.encoder ??= this.device.createCommandEncoder()).beginComputePass());
  }

  /**
   * Submits what has been recorded (nothing if nothing was). Called before anything that must follow the recorded
   * work on the queue timeline; callers outside this class need it only before their own queue operations.
   */
  flush(): void {
    if (this.encoder === null) return;
    this.pass?.end();
    this.pass = null;
    const enc = this.encoder;
    this.encoder = null;
    if (this.arenaUsed > 0) this.device.queue.writeBuffer(this.arena!, 0, this.arenaHost.buffer, 0, this.arenaUsed);
    this.arenaUsed = 0;
    this.device.pushErrorScope('validation');
    this.device.queue.submit([enc.finish()]);
    this.pending.push(this.device.popErrorScope());
    this.submits++;
  }

  /** Dispatches one batch holds at most (uniform slots of the arena). */
  get batchCapacity(): number {
    return Math.floor(ARENA_BYTES / this.limits.minUniformBufferOffsetAlignment);
  }

  /** Copies host data to a new tensor: Float32Array/Float64Array -> f32 (fp64 rounds once), Int32Array -> i32. */
  upload(
    data: Float32Array | Float64Array | Int32Array | readonly number[],
    shape?: readonly number[],
    as?: 'f16',
  ): GpuTensor {
    const s = shape ?? [data.length];
    const dtype: GpuDType = data instanceof Int32Array ? 'i32' : (as ?? 'f32');
    const t = this.empty(s, dtype);
    if (t.size !== data.length)
      throw new HypeError('shape', `upload: ${data.length} values do not fill shape [${s}] (${t.size} elements)`);
    this.write(t, data);
    return t;
  }

  /** Overwrites a tensor's contents from the host. */
  write(t: GpuTensor, data: Float32Array | Float64Array | Int32Array | readonly number[]): void {
    this.alive();
    if (data.length !== t.size)
      throw new HypeError('shape', `write: ${data.length} values for a tensor of ${t.size} elements`);
    if (t.dtype === 'f16') {
      const bits = new Uint16Array(t.size + (t.size % 2)); // writeBuffer copies whole 4-byte words
      for (let i = 0; i < t.size; i++) {
        bits[i] = f16Bits(data[i]!);
        if ((bits[i]! & 0x7c00) === 0x7c00 && Number.isFinite(data[i]!))
          throw new HypeError('overflow', `value ${data[i]} at index ${i} is beyond the f16 range (65504); use f32`);
      }
      this.flush(); // the kernels recorded so far read the old contents
      if (bits.length > 0) this.device.queue.writeBuffer(t.buffer, 0, bits.buffer, 0, bits.byteLength);
      return;
    }
    this.writeRange(t, 0, data);
  }

  /**
   * Reads a tensor back (the only way data returns to JavaScript); also surfaces any pending GPU error. f16 tensors
   * come back widened to a Float32Array (exactly). `offset` and `n` select elements [offset, offset + n) of an f32
   * or i32 tensor (default: all of it). The copy is enqueued before this returns, so the values are those after
   * every kernel enqueued earlier. A device lost before or during the read rejects with a HypeError.
   */
  async download(t: GpuTensor, offset = 0, n = t.size - offset): Promise<Float32Array | Int32Array> {
    this.alive();
    if (!(Number.isSafeInteger(offset) && Number.isSafeInteger(n) && offset >= 0 && n >= 0 && offset + n <= t.size))
      throw new HypeError('shape', `read: ${n} values at offset ${offset} do not fit a tensor of ${t.size}`);
    if (t.dtype === 'f16' && (offset !== 0 || n !== t.size))
      throw new HypeError('argument', 'read: an f16 tensor is read whole (offset 0, all values)');
    const bytes = Math.ceil((n * bytesPer(t.dtype)) / 4) * 4;
    const size = Math.max(4, bytes);
    const staging =
      this.stagingPool.get(size)?.pop() ?? this.device.createBuffer({ size, usage: USAGE.MAP_READ | USAGE.COPY_DST });
    let reusable = false;
    if (bytes > 0) this.commands().copyBufferToBuffer(t.buffer, offset * bytesPer(t.dtype), staging, 0, bytes);
    this.flush();
    let copy: ArrayBuffer;
    try {
      await this.sync();
      await staging.mapAsync(MAP_MODE_READ);
      copy = staging.getMappedRange().slice(0, bytes);
      staging.unmap();
      reusable = true;
    } catch (e) {
      if (e instanceof HypeError) throw e;
      // mapAsync rejects when the device goes away under it (destroyed, driver reset): say so, not Dawn's words.
      throw new HypeError(
        'device',
        `the WebGPU device was lost during a read (${this.lost ?? String(e)}); restart from the last checkpoint`,
      );
    } finally {
      // An unmapped staging buffer serves the next read of this size (a training step reads the same one each step).
      if (reusable) pushPool(this.stagingPool, size, staging);
      else staging.destroy();
    }
    if (t.dtype === 'f16') return Float32Array.from(new Uint16Array(copy, 0, n), f16Value);
    return t.dtype === 'i32' ? new Int32Array(copy) : new Float32Array(copy);
  }

  /** Overwrites elements [offset, offset + data.length) of an f32 or i32 tensor from the host. */
  writeRange(t: GpuTensor, offset: number, data: ArrayLike<number>): void {
    this.alive();
    if (!(Number.isSafeInteger(offset) && offset >= 0 && offset + data.length <= t.size))
      throw new HypeError(
        'shape',
        `upload: ${data.length} values at offset ${offset} do not fit a tensor of ${t.size}`,
      );
    if (t.dtype === 'f16') throw new HypeError('argument', 'upload: f16 tensors are written whole (write)');
    if (data.length === 0) return;
    const host =
      t.dtype === 'i32'
        ? data instanceof Int32Array
          ? data
          : Int32Array.from(data)
        : data instanceof Float32Array
          ? data
          : Float32Array.from(data);
    this.flush(); // the kernels recorded so far read the old contents
    this.device.queue.writeBuffer(t.buffer, offset * 4, host.buffer, host.byteOffset, host.byteLength);
  }

  /** Copies n elements of one 4-byte tensor into another (distinct buffers), on the queue like a kernel. */
  copy(src: GpuTensor, srcOffset: number, dst: GpuTensor, dstOffset: number, n: number): void {
    this.alive();
    if (src.dtype === 'f16' || dst.dtype === 'f16' || src.buffer === dst.buffer)
      throw new HypeError('argument', 'copy: 4-byte tensors in two distinct buffers only');
    if (n === 0) return;
    this.commands().copyBufferToBuffer(src.buffer, srcOffset * 4, dst.buffer, dstOffset * 4, n * 4);
  }

  /** Throws unless the device is alive (every kernel enqueue checks this; exposed for callers that batch work). */
  ensureAlive(): void {
    this.alive();
  }

  async downloadF32(t: GpuTensor): Promise<Float32Array> {
    if (t.dtype !== 'f32') throw new HypeError('argument', 'downloadF32 needs an f32 tensor');
    return (await this.download(t)) as Float32Array;
  }

  /** Returns the tensor's buffer to the pool; the handle must not be used afterwards. */
  release(...ts: GpuTensor[]): void {
    for (const t of ts) pushPool(this.pool, t.buffer.size, t.buffer);
  }

  /** Waits for submitted work and throws the first validation or out-of-memory error it produced. */
  async sync(): Promise<void> {
    this.flush();
    const pending = this.pending;
    this.pending = [];
    await this.device.queue.onSubmittedWorkDone();
    for (const p of pending) {
      const err = await p;
      if (err) throw new HypeError('device', `WebGPU rejected a kernel: ${err.message}`);
    }
    this.alive();
  }

  destroy(): void {
    this.pass = null; // what was recorded and not submitted is dropped with the device
    this.encoder = null;
    this.arenaUsed = 0;
    this.arena?.destroy();
    this.arena = null;
    for (const pool of [this.pool, this.stagingPool]) {
      for (const list of pool.values()) for (const b of list) b.destroy();
      pool.clear();
    }
    this.pipelines.clear();
    this.device.destroy();
  }

  // ---------------------------------------------------------------- limits

  /** Refuses a storage binding larger than the adapter allows, naming the limit. */
  checkBinding(bytes: number, what: string): void {
    const max = this.limits.maxStorageBufferBindingSize;
    if (bytes > max)
      throw new HypeError(
        'device',
        `${what} needs a ${bytes}-byte storage binding but this adapter's maxStorageBufferBindingSize is ${max} bytes; ` +
          'split the batch or shorten the sequence',
      );
  }

  /** Refuses a kernel whose workgroup memory exceeds the adapter's maxComputeWorkgroupStorageSize. */
  checkWorkgroupStorage(bytes: number, what: string): void {
    const max = this.limits.maxComputeWorkgroupStorageSize;
    if (bytes > max)
      throw new HypeError(
        'device',
        `${what} needs ${bytes} bytes of workgroup memory but this adapter's maxComputeWorkgroupStorageSize is ${max}`,
      );
  }

  /** Refuses a grid dimension beyond maxComputeWorkgroupsPerDimension. */
  checkGrid(groups: readonly number[], what: string): void {
    const max = this.limits.maxComputeWorkgroupsPerDimension;
    for (const g of groups)
      if (g > max)
        throw new HypeError(
          'device',
          `${what} needs ${g} workgroups along one dimension but this adapter's maxComputeWorkgroupsPerDimension ` +
            `is ${max}; use a smaller batch or fewer heads`,
        );
  }

  // ---------------------------------------------------------------- kernels

  /** The compute pipeline for `code` (entry point `main`), compiled once per key. */
  pipeline(key: string, code: () => string): GPUComputePipeline {
    let p = this.pipelines.get(key);
    if (!p) {
      this.device.pushErrorScope('validation');
      const module = this.device.createShaderModule({ code: code(), label: key });
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: key });
      this.pending.push(this.device.popErrorScope());
      this.pipelines.set(key, p);
    }
    return p;
  }

  /**
   * Records one dispatch in the batch: binding 0 is the dispatch's own slot of the uniform arena holding `uniforms`
   * (16-byte padded), bindings 1.. the tensors in order. Every tensor binding is checked against
   * maxStorageBufferBindingSize first.
   */
  dispatch(
    pipeline: GPUComputePipeline,
    what: string,
    uniforms: ArrayBuffer,
    tensors: readonly GpuTensor[],
    groups: readonly [number, number, number],
  ): void {
    this.alive();
    for (const t of tensors) this.checkBinding(t.buffer.size, what);
    this.checkGrid(groups, what);
    if (groups[0] === 0 || groups[1] === 0 || groups[2] === 0) return;
    const usize = Math.max(16, Math.ceil(uniforms.byteLength / 16) * 16);
    const align = this.limits.minUniformBufferOffsetAlignment;
    const span = Math.ceil(usize / align) * align;
    if (span > ARENA_BYTES)
      throw new HypeError('argument', `${what}: ${usize} bytes of uniforms exceed the arena (${ARENA_BYTES} bytes)`);
    if (this.arenaUsed + span > ARENA_BYTES) this.flush();
    this.arena ??= this.device.createBuffer({ size: ARENA_BYTES, usage: USAGE.UNIFORM | USAGE.COPY_DST });
    const offset = this.arenaUsed;
    this.arenaHost.set(new Uint8Array(uniforms), offset);
    this.arenaUsed += span;
    this.device.pushErrorScope('validation');
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: this.arena, offset, size: usize } }];
    tensors.forEach((t, i) => entries.push({ binding: i + 1, resource: { buffer: t.buffer } }));
    const bind = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
    this.pending.push(this.device.popErrorScope());
    const pass = this.computePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(groups[0], groups[1], groups[2]);
    if (!this.batching) this.flush();
  }
}

function pushPool(pool: Map<number, GPUBuffer[]>, size: number, b: GPUBuffer): void {
  const list = pool.get(size);
  if (list) list.push(b);
  else pool.set(size, [b]);
}

/** Packs uniform fields in declaration order: 'u' = u32, 'i' = i32, 'f' = f32 (4 bytes each). */
export function packUniforms(fields: readonly (readonly ['u' | 'i' | 'f', number])[]): ArrayBuffer {
  const buf = new ArrayBuffer(Math.max(16, Math.ceil((fields.length * 4) / 16) * 16));
  const view = new DataView(buf);
  fields.forEach(([kind, value], idx) => {
    if (kind === 'f') view.setFloat32(idx * 4, value, true);
    else if (kind === 'i') view.setInt32(idx * 4, value, true);
    else view.setUint32(idx * 4, value, true);
  });
  return buf;
}
