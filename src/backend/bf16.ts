/**
 * bf16 operands on the CPU: conversion between fp32 and bf16 bits (Uint16Array, the top half of each fp32 word),
 * the native bf16 kernels (native/bf16.cc, native/attention.cc: AVX512-BF16 where the CPU has it, otherwise fp32
 * arithmetic on the same bf16 values; HYPE_NO_BF16=1 forces the latter), and a reference emulation in fp64 that
 * rounds at exactly the points the kernels do, for tests.
 *
 * Shapes and layouts are those of backend.ts: gemm is row-major C[m, n] (fp32) = alpha op(A) op(B) + beta C with
 * bf16 A, B; attention takes bf16 q [B, H, Lq, d], k [B, Hkv, Lk, d], v [B, Hkv, Lk, dv] and (backward) dOut
 * [B, H, Lq, dv], returns fp32 out, lse and fp32 gradients, and adds the position term ('none' or a 'distance'
 * table) in fp32. Accumulation, softmax statistics and position terms are fp32; probabilities (forward and
 * backward) and dS are rounded to bf16 before the products that consume them.
 *
 * These functions do not go through the Backend interface: a mixed-precision backend would hold bf16 tensors
 * (Uint16Array) and call them where its fp32 twin calls the addon's fp32 kernels. Each operand may instead be an fp32
 * tensor (Float32Array), which the addon rounds to bf16 as it packs it (gemm) or into a buffer it keeps (attention):
 * the same bits as toBf16, without a fresh bf16 copy per call. Mixed precision (autocast.ts) passes its fp32 tensors so.
 */
import { HypeError, check } from '../errors.ts';
import { roundToBf16 } from '../numerics/float-formats.ts';
import type { FloatArray } from '../tensor.ts';
import type { AttentionForward, AttentionGrads, AttentionOptions, AttentionShape, PositionBias } from './backend.ts';
import { registerHostBf16 } from './bf16-hooks.ts';
import { biasValue } from './reference-attention.ts';
import { kernelParams, loadNativeAddon, nativeLoadError, type NativeAddon } from './native.ts';
import {
  checkAttentionLse,
  checkFiniteTensor,
  validateGemmOutput,
  validateOptions,
  validateShape,
} from './validate.ts';

/** A bf16 operand of the native kernels: its bits, or fp32 values the addon rounds to bf16 (round to nearest even). */
export type Bf16Operand = Uint16Array | Float32Array;

/** The addon's bf16 entry points (native/bindings.cc). */
export interface NativeBf16Kernels {
  gemmBf16(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Bf16Operand,
    lda: number,
    b: Bf16Operand,
    ldb: number,
    beta: number,
    c: Float32Array,
    ldc: number,
  ): void;
  attentionForwardBf16(
    params: object,
    q: Bf16Operand,
    k: Bf16Operand,
    v: Bf16Operand,
    out: Float32Array,
    lse: Float32Array,
  ): void;
  attentionBackwardBf16(
    params: object,
    q: Bf16Operand,
    k: Bf16Operand,
    v: Bf16Operand,
    out: Float32Array,
    lse: Float32Array,
    dOut: Bf16Operand,
    dq: Float32Array,
    dk: Float32Array,
    dv: Float32Array,
    dTable: Float64Array | null,
  ): void;
  bf16Info(): { supported: boolean; fast: boolean };
  /** The first index whose bf16 value is NaN/Inf (for fp32 values: whose rounding to bf16 is), or -1. */
  firstNonFiniteBf16(x: Bf16Operand): number;
  toBf16(x: Float32Array, bits: Uint16Array): void;
}

/** The loaded addon's bf16 kernels, or one HypeError saying why they are unavailable. */
export function bf16Kernels(): NativeAddon & NativeBf16Kernels {
  const addon = loadNativeAddon() as (NativeAddon & Partial<NativeBf16Kernels>) | null;
  if (!addon) {
    throw new HypeError(
      'native',
      `the native addon is not available (${nativeLoadError()}); rebuild with \`npm rebuild\``,
    );
  }
  for (const name of [
    'gemmBf16',
    'attentionForwardBf16',
    'attentionBackwardBf16',
    'bf16Info',
    'firstNonFiniteBf16',
    'toBf16',
  ] as const) {
    if (typeof addon[name] !== 'function') {
      throw new HypeError('native', `the native addon is a stale build (no ${name}); rebuild it with \`npm rebuild\``);
    }
  }
  return addon as NativeAddon & NativeBf16Kernels;
}

/** Which kernel the bf16 calls run on now: the CPU's AVX512-BF16 ('fast') or the fp32 fallback. */
export function bf16KernelInfo(): { supported: boolean; fast: boolean } {
  return bf16Kernels().bf16Info();
}

// ----------------------------------------------------------------------------------------------- conversion

/**
 * fp32 -> bf16 bits, round to nearest even (what vcvtneps2bf16 does on normal numbers); NaN stays a quiet NaN.
 * Integer arithmetic on the fp32 encoding, so the same result as roundToBf16 for every fp32 input; on the addon's
 * vector loop when it is loaded (`native: false` forces this loop, the addon's test oracle).
 */
export function toBf16(x: Float32Array | ArrayLike<number>, opts: { native?: boolean } = {}): Uint16Array {
  const src = x instanceof Float32Array ? x : Float32Array.from(x);
  const out = new Uint16Array(src.length);
  const addon = opts.native === false ? null : (loadNativeAddon() as Partial<NativeBf16Kernels> | null);
  if (addon?.toBf16) {
    addon.toBf16(src, out);
    return out;
  }
  const words = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < words.length; i++) {
    const u = words[i]!;
    out[i] = (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x40 : (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** bf16 bits -> their exact fp32 values. */
export function fromBf16(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const words = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) words[i] = bits[i]! << 16;
  return out;
}

/** The fp32 values rounded to bf16 (still fp32): what a bf16 tensor holds. */
export function roundedToBf16(x: Float32Array): Float32Array {
  return fromBf16(toBf16(x));
}

// ----------------------------------------------------------------------------------------------- validation

function checkBits(x: unknown, what: string, length: number, dims: string): asserts x is Bf16Operand {
  check(
    x instanceof Uint16Array || x instanceof Float32Array,
    'argument',
    `${what} must be a Uint16Array of bf16 bits (convert with toBf16) or a Float32Array to round`,
  );
  check(
    x.length === length,
    'shape',
    () => `${what} has ${x.length} elements but the shape needs ${dims} = ${length}; pass a tensor of that layout`,
  );
}

/**
 * The first NaN/Inf among bf16 bits (exponent field all ones, found by the addon's scan), refused with its index; an
 * fp32 operand is refused where its bf16 rounding is NaN/Inf.
 */
function checkFiniteBits(x: Bf16Operand, what: string): void {
  const i = bf16Kernels().firstNonFiniteBf16(x);
  if (i < 0) return;
  const nan = x instanceof Float32Array ? Number.isNaN(x[i]) : (x[i]! & 0x7f) !== 0;
  throw new HypeError(
    'non-finite',
    `${what} holds ${nan ? 'NaN' : 'Infinity'} at flat index ${i}; every value must be finite — check ` +
      `the upstream computation (an fp32 value beyond bf16's range rounds to Infinity)`,
  );
}

function checkF32(x: unknown, what: string, length: number, dims: string): asserts x is Float32Array {
  check(x instanceof Float32Array, 'argument', `${what} must be a Float32Array`);
  check(x.length === length, 'shape', () => `${what} has ${x.length} elements but the shape needs ${dims} = ${length}`);
}

function params(shape: AttentionShape, opts: AttentionOptions) {
  const bias = opts.bias ?? { kind: 'none' };
  check(
    bias.kind !== 'dense',
    'argument',
    "the bf16 attention kernels take the position term as a 'distance' table (or none), not a dense bias",
  );
  return kernelParams(shape, opts, bias);
}

function validateAttentionBits(
  shape: AttentionShape,
  q: Bf16Operand,
  k: Bf16Operand,
  v: Bf16Operand,
  opts: AttentionOptions,
) {
  validateShape(shape);
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  checkBits(q, 'q', B * H * lq * d, 'B*H*Lq*D');
  checkBits(k, 'k', B * Hkv * lk * d, 'B*Hkv*Lk*D');
  checkBits(v, 'v', B * Hkv * lk * dv, 'B*Hkv*Lk*Dv');
  validateOptions(opts, shape, 'float32');
  checkFiniteBits(q, 'q');
  checkFiniteBits(k, 'k');
  checkFiniteBits(v, 'v');
}

// ------------------------------------------------------------------------------------------- native kernels

/** C = alpha op(A) op(B) + beta C with bf16 A and B (bits, or fp32 rounded) and fp32 C, accumulated in fp32. */
export function nativeGemmBf16(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Bf16Operand,
  lda: number,
  b: Bf16Operand,
  ldb: number,
  beta: number,
  c: Float32Array,
  ldc: number,
): void {
  for (const [x, what] of [
    [m, 'm'],
    [n, 'n'],
    [k, 'k'],
    [lda, 'lda'],
    [ldb, 'ldb'],
  ] as const)
    check(Number.isInteger(x) && x >= 0, 'shape', () => `gemm ${what} must be a non-negative integer, got ${x}`);
  check(Number.isFinite(alpha) && Number.isFinite(beta), 'argument', 'gemm alpha and beta must be finite');
  for (const [x, what] of [
    [a, 'A'],
    [b, 'B'],
  ] as const)
    check(
      x instanceof Uint16Array || x instanceof Float32Array,
      'argument',
      `bf16 gemm ${what} must be a Uint16Array of bf16 bits or a Float32Array to round`,
    );
  check(c instanceof Float32Array, 'argument', 'bf16 gemm C must be a Float32Array');
  check(
    lda >= (transA ? m : k) && ldb >= (transB ? k : n),
    'shape',
    () =>
      `gemm leading dimensions are shorter than their rows (lda ${lda}, ldb ${ldb}); pass each row stride as stored`,
  );
  const aNeed = m === 0 || k === 0 ? 0 : transA ? (k - 1) * lda + m : (m - 1) * lda + k;
  const bNeed = n === 0 || k === 0 ? 0 : transB ? (n - 1) * ldb + k : (k - 1) * ldb + n;
  check(a.length >= aNeed, 'shape', () => `gemm A has ${a.length} elements, needs at least ${aNeed}`);
  check(b.length >= bNeed, 'shape', () => `gemm B has ${b.length} elements, needs at least ${bNeed}`);
  validateGemmOutput(m, n, c, ldc);
  bf16Kernels().gemmBf16(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/** Fused attention forward on bf16 q, k, v (bits, or fp32 rounded): fp32 out [B, H, Lq, dv] and lse [B, H, Lq]. */
export function nativeAttentionForwardBf16(
  shape: AttentionShape,
  q: Bf16Operand,
  k: Bf16Operand,
  v: Bf16Operand,
  opts: AttentionOptions,
): AttentionForward & { out: Float32Array; lse: Float32Array } {
  validateAttentionBits(shape, q, k, v, opts);
  const rows = shape.batch * shape.heads * shape.lq;
  const out = new Float32Array(rows * shape.valueDim);
  const lse = new Float32Array(rows);
  bf16Kernels().attentionForwardBf16(params(shape, opts), q, k, v, out, lse);
  checkAttentionLse(lse, shape, opts, (x, allowNegInf) => bf16Kernels().firstNonFinite(x, allowNegInf));
  return { out, lse };
}

/** Fused attention backward on bf16 q, k, v, dOut (bits, or fp32 rounded) and the forward's fp32 out, lse. */
export function nativeAttentionBackwardBf16(
  shape: AttentionShape,
  q: Bf16Operand,
  k: Bf16Operand,
  v: Bf16Operand,
  out: Float32Array,
  lse: Float32Array,
  dOut: Bf16Operand,
  opts: AttentionOptions,
): AttentionGrads & { dq: Float32Array; dk: Float32Array; dv: Float32Array } {
  validateAttentionBits(shape, q, k, v, opts);
  const { batch: B, heads: H, lq, valueDim: dv } = shape;
  checkF32(out, 'out', B * H * lq * dv, 'B*H*Lq*Dv');
  checkF32(lse, 'lse', B * H * lq, 'B*H*Lq');
  checkBits(dOut, 'dOut', B * H * lq * dv, 'B*H*Lq*Dv');
  checkFiniteBits(dOut, 'dOut');
  const kernels = bf16Kernels();
  const scan = (x: Float32Array, allowNegInf: boolean) => kernels.firstNonFinite(x, allowNegInf);
  checkFiniteTensor(out, 'out', [B, H, lq, dv], false, scan);
  checkFiniteTensor(lse, 'lse', [B, H, lq], true, scan);
  const bias = opts.bias ?? { kind: 'none' };
  const dq = new Float32Array(q.length);
  const dk = new Float32Array(k.length);
  const dvOut = new Float32Array(v.length);
  const dTable = bias.kind === 'distance' ? new Float64Array(bias.table.length) : null;
  kernels.attentionBackwardBf16(params(shape, opts), q, k, v, out, lse, dOut, dq, dk, dvOut, dTable);
  return { dq, dk, dv: dvOut, dBias: dTable ? { kind: 'distance', table: dTable } : { kind: 'none' } };
}

// ------------------------------------------------------------------------------------ reference emulation

/**
 * Each result of the emulation comes with, per element, the sum of the absolute values of the terms it adds and
 * the largest such term: what a test needs to bound fp32 accumulation error and one-ulp bf16 rounding flips.
 */
export interface Magnitudes {
  absSum: Float64Array;
  maxTerm: Float64Array;
}

function magnitudes(n: number): Magnitudes {
  return { absSum: new Float64Array(n), maxTerm: new Float64Array(n) };
}
function addTerm(m: Magnitudes, i: number, term: number): void {
  const a = Math.abs(term);
  m.absSum[i]! += a;
  if (a > m.maxTerm[i]!) m.maxTerm[i] = a;
}

/** fp64 C = alpha op(A) op(B) + beta C over the bf16 values (every product and sum exact to fp64). */
export function emulateGemmBf16(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Uint16Array,
  lda: number,
  b: Uint16Array,
  ldb: number,
  beta: number,
  c: Float32Array,
  ldc: number,
): { c: Float64Array; mag: Magnitudes } {
  const av = fromBf16(a);
  const bv = fromBf16(b);
  const out = new Float64Array(m * n);
  const mag = magnitudes(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let kk = 0; kk < k; kk++) {
        const t = av[transA ? kk * lda + i : i * lda + kk]! * bv[transB ? j * ldb + kk : kk * ldb + j]!;
        s += t;
        addTerm(mag, i * n + j, alpha * t);
      }
      out[i * n + j] = alpha * s + (beta === 0 ? 0 : beta * c[i * ldc + j]!);
    }
  return { c: out, mag };
}

/** The logits of query row i of head h (fp32 scale, fp32-rounded position term, -Infinity where masked). */
function logitRow(
  shape: AttentionShape,
  opts: AttentionOptions,
  qv: Float32Array,
  kv: Float32Array,
  b: number,
  h: number,
  i: number,
  row: Float64Array,
): void {
  const { heads: H, kvHeads: Hkv, lq, lk, headDim: d } = shape;
  const kvh = Math.floor(h / (H / Hkv));
  const qo = opts.queryOffset ?? lk - lq;
  const bias: PositionBias = opts.bias ?? { kind: 'none' };
  const scale = Math.fround(opts.scale);
  const qBase = ((b * H + h) * lq + i) * d;
  for (let l = 0; l < lk; l++) {
    const D = i + qo - l;
    if (opts.causal && D < 0) {
      row[l] = -Infinity;
      continue;
    }
    let dot = 0;
    const kBase = ((b * Hkv + kvh) * lk + l) * d;
    for (let c = 0; c < d; c++) dot += qv[qBase + c]! * kv[kBase + c]!;
    row[l] = scale * dot + Math.fround(biasValue(bias, shape, h, i, l, D));
  }
}

/**
 * The bf16 forward in fp64: P~ = bf16(exp(s - c)) with c = ln2 ceil(max s / ln2) (the kernel's power-of-two grid,
 * so its tiling does not change any rounding), out = sum P~ v / sum P~, lse = c + log sum P~.
 */
export function emulateAttentionForwardBf16(
  shape: AttentionShape,
  q: Uint16Array,
  k: Uint16Array,
  v: Uint16Array,
  opts: AttentionOptions,
): { out: Float64Array; lse: Float64Array; mag: Magnitudes; maxWeight: Float64Array } {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, valueDim: dv } = shape;
  const [qv, kv, vv] = [fromBf16(q), fromBf16(k), fromBf16(v)];
  const out = new Float64Array(B * H * lq * dv);
  const lse = new Float64Array(B * H * lq);
  const maxWeight = new Float64Array(B * H * lq); // the row's largest normalised probability
  const mag = magnitudes(out.length);
  const row = new Float64Array(lk);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const vBase = (b * Hkv + Math.floor(h / (H / Hkv))) * lk * dv;
      for (let i = 0; i < lq; i++) {
        const r = (b * H + h) * lq + i;
        logitRow(shape, opts, qv, kv, b, h, i, row);
        let max = -Infinity;
        for (let l = 0; l < lk; l++) max = Math.max(max, row[l]!);
        if (max === -Infinity) {
          lse[r] = -Infinity;
          continue;
        }
        const c = Math.LN2 * Math.ceil(max / Math.LN2);
        let sum = 0;
        for (let l = 0; l < lk; l++) sum += row[l] = roundToBf16(Math.exp(row[l]! - c));
        lse[r] = c + Math.log(sum);
        for (let l = 0; l < lk; l++) maxWeight[r] = Math.max(maxWeight[r]!, row[l]! / sum);
        for (let x = 0; x < dv; x++) {
          let acc = 0;
          for (let l = 0; l < lk; l++) {
            const t = (row[l]! * vv[vBase + l * dv + x]!) / sum;
            acc += t;
            addTerm(mag, r * dv + x, t);
          }
          out[r * dv + x] = acc;
        }
      }
    }
  return { out, lse, mag, maxWeight };
}

/**
 * The bf16 backward in fp64 from the given out and lse: P = exp(s - lse), dV = bf16(P)^T dOut, dP = dOut V^T,
 * dS = P (dP - rowsum(dOut out)), dQ = scale bf16(dS) K, dK = scale bf16(dS)^T Q, dTable from dS unrounded.
 */
export function emulateAttentionBackwardBf16(
  shape: AttentionShape,
  q: Uint16Array,
  k: Uint16Array,
  v: Uint16Array,
  out: Float32Array,
  lse: Float32Array,
  dOut: Uint16Array,
  opts: AttentionOptions,
): {
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
  dTable: Float64Array | null;
  mag: { dq: Magnitudes; dk: Magnitudes; dv: Magnitudes; dTable: Magnitudes | null };
} {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  const [qv, kv, vv, gv] = [fromBf16(q), fromBf16(k), fromBf16(v), fromBf16(dOut)];
  const bias = opts.bias ?? { kind: 'none' };
  const qo = opts.queryOffset ?? lk - lq;
  const span = Math.max(0, qo + lq + lk - 1);
  const scale = Math.fround(opts.scale);
  const dq = new Float64Array(q.length);
  const dk = new Float64Array(k.length);
  const dV = new Float64Array(v.length);
  const dTable = bias.kind === 'distance' ? new Float64Array(bias.table.length) : null;
  const mag = {
    dq: magnitudes(dq.length),
    dk: magnitudes(dk.length),
    dv: magnitudes(dV.length),
    dTable: dTable ? magnitudes(dTable.length) : null,
  };
  const row = new Float64Array(lk);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / (H / Hkv));
      for (let i = 0; i < lq; i++) {
        const r = (b * H + h) * lq + i;
        if (lse[r] === -Infinity) continue;
        logitRow(shape, opts, qv, kv, b, h, i, row);
        let delta = 0;
        for (let x = 0; x < dv; x++) delta += gv[r * dv + x]! * out[r * dv + x]!;
        for (let l = 0; l < lk; l++) {
          if (row[l] === -Infinity) continue;
          const p = Math.exp(row[l]! - lse[r]!);
          const vBase = ((b * Hkv + kvh) * lk + l) * dv;
          const kBase = ((b * Hkv + kvh) * lk + l) * d;
          let dp = 0;
          for (let x = 0; x < dv; x++) dp += gv[r * dv + x]! * vv[vBase + x]!;
          const ds = p * (dp - delta);
          const pb = roundToBf16(p);
          const dsb = roundToBf16(ds);
          for (let x = 0; x < dv; x++) {
            const t = pb * gv[r * dv + x]!;
            dV[vBase + x]! += t;
            addTerm(mag.dv, vBase + x, t);
          }
          for (let c = 0; c < d; c++) {
            const tq = scale * dsb * kv[kBase + c]!;
            dq[r * d + c]! += tq;
            addTerm(mag.dq, r * d + c, tq);
            const tk = scale * dsb * qv[r * d + c]!;
            dk[kBase + c]! += tk;
            addTerm(mag.dk, kBase + c, tk);
          }
          if (dTable && mag.dTable) {
            const at = h * span + i + qo - l + lk - 1;
            dTable[at]! += ds;
            addTerm(mag.dTable, at, ds);
          }
        }
      }
    }
  return { dq, dk, dv: dV, dTable, mag };
}

// ------------------------------------------------------------------- the Backend members on host arrays

/**
 * Backend.gemmBf16 on fp32 host arrays (autocast.ts): A and B rounded to bf16, by the native kernel as it packs them
 * (`native`), or up front for the fp64 emulation rounded once to fp32 (the reference backend). Both see the same
 * bf16 operands; they differ only by the kernel's fp32 accumulation.
 */
export function hostGemmBf16(
  native: boolean,
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
  const [af, bf, cf] = [fp32Result(a, 'A'), fp32Result(b, 'B'), fp32Result(c, 'C')];
  if (native) return nativeGemmBf16(transA, transB, m, n, k, alpha, af, lda, bf, ldb, beta, cf, ldc);
  validateGemmOutput(m, n, cf, ldc);
  const [ab, bb] = [toBf16(af, { native: false }), toBf16(bf, { native: false })];
  const r = emulateGemmBf16(transA, transB, m, n, k, alpha, ab, lda, bb, ldb, beta, cf, ldc);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) cf[i * ldc + j] = r.c[i * n + j]!;
}

/** Backend.attentionForward with opts.operands 'bf16' on fp32 host arrays (native kernel or emulation). */
export function hostAttentionForwardBf16(
  native: boolean,
  shape: AttentionShape,
  q: FloatArray,
  k: FloatArray,
  v: FloatArray,
  opts: AttentionOptions,
): AttentionForward {
  const [qf, kf, vf] = [fp32Result(q, 'q'), fp32Result(k, 'k'), fp32Result(v, 'v')];
  if (native) return nativeAttentionForwardBf16(shape, qf, kf, vf, opts);
  const [qb, kb, vb] = [qf, kf, vf].map((x) => toBf16(x, { native: false })) as [Uint16Array, Uint16Array, Uint16Array];
  validateAttentionBits(shape, qb, kb, vb, opts);
  const r = emulateAttentionForwardBf16(shape, qb, kb, vb, opts);
  const lse = Float32Array.from(r.lse);
  checkAttentionLse(lse, shape, opts);
  return { out: Float32Array.from(r.out), lse };
}

/** Backend.attentionBackward with opts.operands 'bf16' on fp32 host arrays (native kernel or emulation). */
export function hostAttentionBackwardBf16(
  native: boolean,
  shape: AttentionShape,
  q: FloatArray,
  k: FloatArray,
  v: FloatArray,
  out: FloatArray,
  lse: FloatArray,
  dOut: FloatArray,
  opts: AttentionOptions,
): AttentionGrads {
  const [qf, kf, vf, gf] = [fp32Result(q, 'q'), fp32Result(k, 'k'), fp32Result(v, 'v'), fp32Result(dOut, 'dOut')];
  const [o, s] = [fp32Result(out, 'out'), fp32Result(lse, 'lse')];
  const bits = (x: Float32Array) => toBf16(x, { native: false });
  const grads = native
    ? nativeAttentionBackwardBf16(shape, qf, kf, vf, o, s, gf, opts)
    : emulatedBackward(shape, bits(qf), bits(kf), bits(vf), o, s, bits(gf), opts);
  if (opts.biasGrad === false) grads.dBias = { kind: 'none' };
  return grads;
}

function emulatedBackward(
  shape: AttentionShape,
  q: Uint16Array,
  k: Uint16Array,
  v: Uint16Array,
  out: Float32Array,
  lse: Float32Array,
  dOut: Uint16Array,
  opts: AttentionOptions,
): AttentionGrads {
  validateAttentionBits(shape, q, k, v, opts);
  checkFiniteBits(dOut, 'dOut');
  const r = emulateAttentionBackwardBf16(shape, q, k, v, out, lse, dOut, opts);
  const dBias: AttentionGrads['dBias'] = r.dTable ? { kind: 'distance', table: r.dTable } : { kind: 'none' };
  return { dq: Float32Array.from(r.dq), dk: Float32Array.from(r.dk), dv: Float32Array.from(r.dv), dBias };
}

/** An fp32 operand or result (mixed precision keeps fp32 tensors; fp64 ones are refused). */
function fp32Result(x: FloatArray, what: string): Float32Array {
  check(
    x instanceof Float32Array,
    'argument',
    () => `bf16 mixed precision works on float32 tensors, but ${what} is ${x.constructor.name}; use a float32 model`,
  );
  return x as Float32Array;
}

registerHostBf16({ gemm: hostGemmBf16, forward: hostAttentionForwardBf16, backward: hostAttentionBackwardBf16 });
